#!/usr/bin/env python3
"""Lab benchmark (run by `scripts/bench lab` against a lab that is up). Prints numbers,
asserts nothing:

- pods: 20 pods (image already on the nodes), creation -> Running with a podIP, p50/p99,
  beside `ctr run -d` of the same image on node1 in the same run (containerd directly);
- services: 20 NodePort services, creation -> NodeIP:nodePort answering on every node;
- requests/s through NodeIP:nodePort beside requests/s straight to a pod IP, both from
  inside node1 (the host has no route to pod IPs, and none is added).
"""
import json, subprocess, sys, time, urllib.request

API = "http://127.0.0.1:8080"
NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12"}
IMAGE = "localhost:5000/whoami:latest"


def req(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(API + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"null")


def pct(xs):
    xs = sorted(xs)
    at = lambda p: xs[min(len(xs) - 1, max(0, int(round(p * len(xs) + 0.5)) - 1))]
    return at(0.50) * 1000, at(0.99) * 1000


def pod(name, label):
    return {"metadata": {"name": name, "labels": {"app": label}},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "whoami", "image": IMAGE, "ports": [{"name": "http", "containerPort": 8080}]}]}}


def wait_running(names, created, timeout=180):
    done = {}
    end = time.time() + timeout
    while len(done) < len(names) and time.time() < end:
        for p in req("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dbench")["items"]:
            n = p["metadata"]["name"]
            if n in names and n not in done and p["status"].get("phase") == "Running" and p["status"].get("podIP"):
                done[n] = time.time() - created[n]
        time.sleep(0.02)
    return done


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True)


def main():
    # Warm up: the image on both nodes (pulled once), so the measured pods find it present.
    warm = [f"warm-{n}" for n in NODES]
    for n, node in zip(warm, NODES):
        p = pod(n, "bench")
        p["spec"]["nodeName"] = node
        req("POST", "/api/v1/namespaces/default/pods", p)
    wait_running(set(warm), {n: time.time() for n in warm})

    names = [f"bench-{i}" for i in range(20)]
    created = {}
    for n in names:
        created[n] = time.time()
        req("POST", "/api/v1/namespaces/default/pods", pod(n, "bench"))
    done = wait_running(set(names), created)
    p50, p99 = pct(list(done.values()))
    print(f"pod creation -> Running with podIP (20 pods, created back to back): p50 {p50:.0f} ms  p99 {p99:.0f} ms  ({len(done)}/20 Running)")

    ctr = []
    for i in range(20):
        t = time.time()
        r = sh("docker", "exec", "node1", "ctr", "-n", "k8s.io", "run", "-d", "--null-io", IMAGE, f"ctr-bench-{i}")
        ctr.append(time.time() - t)
        if r.returncode != 0:
            print("ctr run failed:", r.stderr.strip(), file=sys.stderr)
    c50, c99 = pct(ctr)
    print(f"ctr run -d of the same image on node1 (20 containers, one after another): p50 {c50:.0f} ms  p99 {c99:.0f} ms  -> ratio p50 {p50 / c50:.1f}x")
    for i in range(20):
        sh("docker", "exec", "node1", "ctr", "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", f"ctr-bench-{i}")
    time.sleep(1)
    for i in range(20):
        sh("docker", "exec", "node1", "ctr", "-n", "k8s.io", "task", "rm", "-f", f"ctr-bench-{i}")
        sh("docker", "exec", "node1", "ctr", "-n", "k8s.io", "container", "rm", f"ctr-bench-{i}")

    svc_times = []
    for i in range(20):
        t = time.time()
        s = req("POST", "/api/v1/namespaces/default/services",
                {"metadata": {"name": f"bench-{i}"}, "spec": {"type": "NodePort", "selector": {"app": "bench"}, "ports": [{"port": 80, "targetPort": "http"}]}})
        np = s["spec"]["ports"][0]["nodePort"]
        pending = set(NODES.values())
        while pending and time.time() - t < 60:
            for ip in list(pending):
                try:
                    with urllib.request.urlopen(f"http://{ip}:{np}/", timeout=1) as r:
                        if b"HOSTNAME:" in r.read():
                            pending.discard(ip)
                except Exception:
                    pass
            time.sleep(0.01)
        svc_times.append(time.time() - t)
    s50, s99 = pct(svc_times)
    print(f"service creation -> NodeIP:nodePort answering on every node (20 services): p50 {s50:.0f} ms  p99 {s99:.0f} ms")

    first = req("GET", "/api/v1/namespaces/default/pods/bench-0")
    pod_ip = first["status"]["podIP"]
    np = req("GET", "/api/v1/namespaces/default/services/bench-0")["spec"]["ports"][0]["nodePort"]
    direct = sh("docker", "exec", "node1", "ownkube-load", f"http://{pod_ip}:8080/", "3000", "4").stdout.strip()
    via = sh("docker", "exec", "node1", "ownkube-load", f"http://{NODES['node1']}:{np}/", "3000", "4").stdout.strip()
    print(f"straight to pod {pod_ip}:8080 from node1:   {direct}")
    print(f"through {NODES['node1']}:{np} (NodePort) from node1: {via}")
    rd, rv = float(direct.split()[0]), float(via.split()[0])
    print(f"NodePort / direct throughput ratio: {rv / rd:.2f}")

    for i in range(20):
        req("DELETE", f"/api/v1/namespaces/default/services/bench-{i}")
    for n in names + warm:
        req("DELETE", f"/api/v1/namespaces/default/pods/{n}?gracePeriodSeconds=0")


if __name__ == "__main__":
    main()
