#!/usr/bin/env python3
"""A client that never stops: GET / on each URL in turn, a fresh TCP connection every
time (so every request goes through the NodePort's NAT rules again), at most RATE
requests a second (default 100), until SIGTERM or SIGINT; then one JSON line: how many requests, how many failed (and the first few
errors), and how many answers each VERSION gave. Used by scripts/e2e to show that a
Service keeps answering while a Deployment replaces its pods.

    scripts/lib/traffic.py http://172.30.0.11:30001 http://172.30.0.12:30001 > out.json &
    ...; kill -TERM $!

Why a rate: thousands of new connections a second through a NodePort fill conntrack
with TIME_WAIT flows whose masqueraded source ports then collide with the kubelet's own
probe connections to the same pods; probes time out and liveness restarts healthy pods
(measured here at ~1,400 connections/s). A steady client is what a Service sees.
"""
import http.client
import json
import os
import re
import signal
import sys
import time
import urllib.parse

stop = False


def on_signal(*_):
    global stop
    stop = True


def get(url):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3)
    try:
        conn.request("GET", u.path or "/", headers={"Connection": "close"})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        if r.status != 200 or "HOSTNAME:" not in body:
            raise RuntimeError(f"HTTP {r.status}: {body[:80]!r}")
        m = re.search(r"VERSION:(\S+)", body)
        return m.group(1) if m else "?"
    finally:
        conn.close()


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    urls = sys.argv[1:]
    rate = float(os.environ.get("RATE", "100"))
    total, failed, errors, versions = 0, 0, [], {}
    start = time.monotonic()
    while not stop:
        pause = start + total / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        url = urls[total % len(urls)]
        total += 1
        try:
            v = get(url)
            versions[v] = versions.get(v, 0) + 1
        except Exception as e:  # every kind of failure counts: refused, reset, timeout, bad answer
            failed += 1
            if len(errors) < 5:
                at = time.strftime("%H:%M:%S", time.gmtime()) + f"{time.time() % 1:.2f}"[1:]
                errors.append(f"{time.monotonic() - start:.1f}s ({at} UTC) {url}: {e}")
    print(json.dumps({"requests": total, "failed": failed, "errors": errors, "versions": versions,
                      "seconds": round(time.monotonic() - start, 1)}))


if __name__ == "__main__":
    main()
