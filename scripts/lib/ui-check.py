#!/usr/bin/env python3
"""The topology page (/ui/) in a real headless Chromium (scripts/e2e).

Opens http://127.0.0.1:8080/ui/ at 1280x800, speaks the DevTools protocol to it
(websocket-client, installed with the kubernetes Python client), and reads back what the
page shows (its `window.topology()`, which reads the page's own DOM). Checks that both
nodes, the given pods with their IPs and the Service with its NodePort are on it; creates
a pod, waits until it is shown, deletes it (grace period 0, so the API object goes at
once) and measures how long the page takes to drop it (must be under 2 s); clicks the
Service and waits for the node's packet explanation; writes a screenshot.

    ui-check.py --pods whoami-1,whoami-2,whoami-3,whoami-4 --service whoami --node-port 30001 --screenshot /tmp/ownkube-ui.png
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

API = "http://127.0.0.1:8080"


def browser(url):
    """Start headless Chromium on `url`; returns (process, DevTools websocket of the page)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        raise SystemExit("ui-check: no chromium (scripts/install-deps installs it)")
    profile = tempfile.mkdtemp(prefix="ownkube-ui-")
    proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,800",
                             f"--user-data-dir={profile}", "--remote-debugging-port=0", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = os.path.join(profile, "DevToolsActivePort")
    for _ in range(300):
        if os.path.exists(port_file) and open(port_file).read().strip():
            break
        time.sleep(0.1)
    port = open(port_file).read().split()[0]
    for _ in range(100):
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = [p for p in pages if p.get("type") == "page"]
        if page:
            return proc, websocket.create_connection(page[0]["webSocketDebuggerUrl"], timeout=30)
        time.sleep(0.1)
    raise SystemExit("ui-check: no page in the browser")


class Page:
    def __init__(self, ws):
        self.ws, self.id = ws, 0

    def call(self, method, **params):
        self.id += 1
        self.ws.send(json.dumps({"id": self.id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def topology(self):
        return self.js("window.topology ? window.topology() : null") or {"nodes": [], "pods": [], "services": [], "arrows": 0}


def until(what, f, secs):
    end = time.time() + secs
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"ui-check: FAIL: {what} (waited {secs} s)")


def api(method, path, body=None):
    req = urllib.request.Request(API + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def shoot(page, path):
    shot = page.call("Page.captureScreenshot", format="png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    print(f"  screenshot: {path}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pods", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--node-port", required=True)
    p.add_argument("--screenshot", default="/tmp/ownkube-ui.png")
    a = p.parse_args()
    want_pods = a.pods.split(",")
    ips = {x["metadata"]["name"]: x["status"].get("podIP") for x in api("GET", "/api/v1/namespaces/default/pods")["items"]}
    proc, ws = browser(f"{API}/ui/")
    try:
        page = Page(ws)
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)

        def shown():
            t = page.topology()
            pods = {x["name"]: x["ip"] for x in t["pods"]}
            svc = [s for s in t["services"] if s["name"] == a.service and a.node_port in s["nodePorts"].split(",")]
            veths = {x["name"]: "veth" in x["text"] for x in t["pods"]}
            bridges = t.get("bridges", [])
            ok = (set(t["nodes"]) >= {"node1", "node2"} and all(pods.get(n) and pods[n] == ips.get(n) and veths[n] for n in want_pods)
                  and svc and t["arrows"] >= len(want_pods) and len([b for b in bridges if "cni0" in b]) >= 2)
            return t if ok else None
        t = until("both nodes, the pods with their IPs, the Service with its NodePort and its arrows", shown, 20)
        print(f"  page shows nodes {t['nodes']}, {len(t['pods'])} pods, services {[s['name'] for s in t['services']]}, {t['arrows']} arrows")

        victim = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ui-victim", "labels": {"app": "ui-victim"}},
                  "spec": {"containers": [{"name": "whoami", "image": "localhost:5000/whoami:v1"}]}}
        api("POST", "/api/v1/namespaces/default/pods", victim)
        until("the new pod shown with its IP", lambda: any(x["name"] == "ui-victim" and x["ip"] for x in page.topology()["pods"]), 60)
        api("DELETE", "/api/v1/namespaces/default/pods/ui-victim", {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})
        t0 = time.time()
        until("the deleted pod gone from the page", lambda: not any(x["name"] == "ui-victim" for x in page.topology()["pods"]), 2)
        print(f"  a deleted pod left the page after {(time.time() - t0) * 1000:.0f} ms")

        shoot(page, a.screenshot)
        page.js(f"document.querySelector('.svc[data-name=\"{a.service}\"]').click()")
        until("the Service's packet explanation in the side panel",
              lambda: page.js("[...document.querySelectorAll('#detail pre.explain')].map(e => e.textContent).join('')").count("possible outcome") >= 2, 20)
        print("  clicking the Service shows each node's chains: " + "; ".join(page.js("[...document.querySelectorAll('#detail h4')].map(e => e.textContent)")))
        shoot(page, a.screenshot.replace(".png", "-service.png"))
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
