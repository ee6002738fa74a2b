#!/usr/bin/env python3
"""scripts/bench dns: the cluster DNS's queries per second and latency, measured from a pod
(dns-bench, in the ownkube-dns image) through the kube-dns ClusterIP (10.96.0.10: the
proxy's UDP NAT, and both replicas) and straight at one DNS pod's IP. Prints a table and
writes results/dns.json. Asserts nothing. Needs the lab (scripts/lab up).
"""
import json
import os
import time
import urllib.request

API = "http://127.0.0.1:8080"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "/api/v1/namespaces/default/pods"


def api(path, method="GET", body=None, raw=False):
    req = urllib.request.Request(API + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
        return data.decode() if raw else json.loads(data or b"null")


def run(label, server, seconds, concurrency):
    name = f"dns-bench-{label.lower()}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": "Never", "containers": [{"name": "bench", "image": "localhost:5000/ownkube-dns:v1",
                    "command": ["/dns-bench", "--server", server, "--seconds", str(seconds),
                                "--concurrency", str(concurrency), "--label", label]}]}}
    api(NS, "POST", pod)
    deadline = time.time() + seconds + 120
    while api(f"{NS}/{name}").get("status", {}).get("phase") not in ("Succeeded", "Failed"):
        if time.time() > deadline:
            raise SystemExit(f"{name} did not finish")
        time.sleep(0.5)
    out = api(f"{NS}/{name}/log", raw=True).strip().splitlines()[-1]
    api(f"{NS}/{name}", "DELETE")
    return json.loads(out)


def main():
    slices = api("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices?labelSelector=kubernetes.io/service-name%3Dkube-dns")
    direct = sorted(e["addresses"][0] for s in slices["items"] for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready"))[0]
    rows = []
    for concurrency in (1, 8):
        rows.append(run(f"clusterip-c{concurrency}", "10.96.0.10:53", 5, concurrency))
        rows.append(run(f"direct-c{concurrency}", f"{direct}:53", 5, concurrency))
    print(f"{'path':<16} {'server':<18} {'conc':>4} {'qps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for r in rows:
        print(f"{r['label']:<16} {r['server']:<18} {r['concurrency']:>4} {r['qps']:>8.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['errors']:>6}")
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    with open(os.path.join(ROOT, "results", "dns.json"), "w") as f:
        json.dump({"rows": rows, "note": "direct: one of the two replicas; clusterip: both, through the proxy's NAT"}, f, indent=1)
    print("written: results/dns.json")


if __name__ == "__main__":
    main()
