#!/usr/bin/env python3
"""scripts/bench memory: what one hostile request costs the apiserver in memory.

Starts a real etcd and the release apiserver as processes of their own (so that their
RSS is theirs alone), then sends, ten times each, a ConfigMap body of 200,000 keys
(~2.8 MB, refused as too large to store: 413) as JSON and as protobuf, and a 1.6 MB pod
too large for etcd (413). /proc/<pid>/status is read every 5 ms meanwhile: the idle RSS, the
peak over idle per body byte, and the RSS 5 s after the requests. Targets (issue
"Hardening II"): peak <= 20x the body size over idle; RSS after <= idle + 50 MB.
Prints a table and writes results/memory.json. Asserts nothing: it measures.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/cache/ownkube/target")
MB = 1024 * 1024
REQUESTS = int(os.environ.get("REQUESTS", "10"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """The highest RSS of a process since the last reset, read every 5 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def bodies(n_keys):
    """The same ConfigMap of n_keys keys as JSON and as protobuf (k8s\\0 + runtime.Unknown)."""
    data = {f"k{i:06d}": "v" for i in range(n_keys)}
    as_json = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": data}, separators=(",", ":")).encode()
    meta = field(1, b"big")  # ObjectMeta.name
    entries = b"".join(field(2, field(1, k.encode()) + field(2, v.encode())) for k, v in data.items())  # ConfigMap.data = 2
    cm = field(1, meta) + entries
    type_meta = field(1, b"v1") + field(2, b"ConfigMap")
    as_proto = b"k8s\x00" + field(1, type_meta) + field(2, cm)
    return as_json, as_proto


def post(url, body, ctype):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_until(f, secs, what):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if f():
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"bench memory: {what} did not come up")


def main():
    apiserver = os.path.join(TARGET, "release", "apiserver")
    if not os.path.exists(apiserver):
        sys.exit(f"bench memory: {apiserver} is missing (cargo build --release -p apiserver)")
    work = tempfile.mkdtemp(prefix="ownkube-bench-memory-")
    client, peer, api_port = free_port(), free_port(), free_port()
    etcd = subprocess.Popen(
        ["etcd", "--data-dir", f"{work}/etcd", "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = None
    try:
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1).status == 200, 30, "etcd")
        big_json, big_proto = bodies(200_000)
        # (a ConfigMap's data is limited to 1 MiB by validation; a pod's env values are not)
        etcd_refuses = json.dumps({"metadata": {"name": "toobig"}, "spec": {"containers": [{"name": "c", "image": "x", "env": [
            {"name": "BLOB", "value": "x" * (1600 * 1024)}]}]}}, separators=(",", ":")).encode()
        cases = [("200,000 keys, JSON", "configmaps", big_json, "application/json"),
                 ("200,000 keys, protobuf", "configmaps", big_proto, "application/vnd.kubernetes.protobuf"),
                 ("1.6 MB pod, too large", "pods", etcd_refuses, "application/json")]
        rows = []
        print(f"{'body':<28} {'bytes':>10} {'codes':>10} {'idle MB':>8} {'peak MB':>8} {'peak/body':>9} {'after MB':>9}")
        for name, resource, body, ctype in cases:
            # A fresh apiserver for each body, so that each row starts from the same idle.
            api = subprocess.Popen([apiserver, "--etcd-servers", f"http://127.0.0.1:{client}", "--listen", f"127.0.0.1:{api_port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{api_port}"
            wait_until(lambda: urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200, 30, "the apiserver")
            time.sleep(3)  # its controllers' first lists
            idle = rss_kib(api.pid)
            s = Sampler(api.pid)
            s.start()
            codes = sorted({post(f"{base}/api/v1/namespaces/default/{resource}", body, ctype) for _ in range(REQUESTS)})
            s.stop = True
            s.join()
            time.sleep(5)
            after = rss_kib(api.pid)
            api.terminate()
            api.wait()
            ratio = (s.peak - idle) * 1024 / len(body)
            row = {"body": name, "bytes": len(body), "codes": codes, "idle_mib": round(idle / 1024, 1),
                   "peak_mib": round(s.peak / 1024, 1), "peak_over_idle_per_body_byte": round(ratio, 1),
                   "after_mib": round(after / 1024, 1), "after_over_idle_mib": round((after - idle) / 1024, 1),
                   "targets_met": ratio <= 20 and (after - idle) / 1024 <= 50}
            rows.append(row)
            print(f"{name:<28} {len(body):>10} {','.join(map(str, codes)):>10} {row['idle_mib']:>8} {row['peak_mib']:>8} "
                  f"{row['peak_over_idle_per_body_byte']:>8}x {row['after_mib']:>9}  {'ok' if row['targets_met'] else 'OVER TARGET'}")
        os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
        with open(os.path.join(ROOT, "results", "memory.json"), "w") as f:
            json.dump({"benchmark": "memory", "requests_per_body": REQUESTS, "rows": rows}, f, indent=1)
    finally:
        for p in (api, etcd):
            if p and p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
