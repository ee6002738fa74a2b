#!/usr/bin/env python3
"""Lab benchmark (run by `scripts/bench lab` against a lab that is up). Prints numbers,
writes results/lab.json, asserts nothing:

- pods: single pods one at a time (bare, and with probes and volumes), then bursts of 20 and 100 created together (image
  already on the nodes), creation -> Running with a podIP, p50/p99, each round beside the
  same number of `ctr run -d` started together on the same nodes (containerd directly),
  3 rounds of 20 and 2 of 100, interleaved, with the medians of the rounds; during the
  100-pod bursts, the longest gap between the nodes' Lease renewals;
- a Deployment scaled from 0 to 100 replicas (readiness probe every second): scale request
  -> each pod Ready, and -> its IP in the Service's Endpoints, p50/p99 and the last one;
- services: 20 NodePort services, creation -> NodeIP:nodePort answering on every node;
- requests/s through NodeIP:nodePort beside requests/s straight to a pod IP, both from
  inside node1 (the host has no route to pod IPs, and none is added).
"""
import json, os, statistics, subprocess, sys, threading, time, urllib.request

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
                     "containers": [{"name": "whoami", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]}}


def pod_with_probes_and_volumes(name, label):
    """`pod()` with what a real workload carries: readiness and liveness probes, a
    configMap volume, an emptyDir and an env var from the ConfigMap (made by main())."""
    p = pod(name, label)
    c = p["spec"]["containers"][0]
    c["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1}
    c["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5}
    c["env"] = [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "bench-config", "key": "greeting"}}}]
    c["volumeMounts"] = [{"name": "config", "mountPath": "/etc/bench"}, {"name": "scratch", "mountPath": "/scratch"}]
    p["spec"]["volumes"] = [{"name": "config", "configMap": {"name": "bench-config"}}, {"name": "scratch", "emptyDir": {}}]
    return p


class Watch:
    """Watches a path (?watch=1) and remembers, per key, when `pick(event)` first gave it
    (keys are names or IPs): the time is when the apiserver sent the change."""

    def __init__(self, path, pick):
        self.path, self.pick = path, pick
        self.seen, self.cond = {}, threading.Condition()
        self.ready = threading.Event()
        threading.Thread(target=self.loop, daemon=True).start()
        self.ready.wait(10)

    def loop(self):
        sep = "&" if "?" in self.path else "?"
        while True:
            try:
                rv = req("GET", self.path)["metadata"]["resourceVersion"]
                with urllib.request.urlopen(f"{API}{self.path}{sep}watch=1&resourceVersion={rv}", timeout=900) as r:
                    self.ready.set()
                    for line in r:
                        keys = self.pick(json.loads(line))
                        with self.cond:
                            for k in keys:
                                self.seen.setdefault(k, time.time())
                            self.cond.notify_all()
            except Exception:
                time.sleep(0.1)

    def wait(self, names, created, timeout=180):
        """Seconds from each name's creation time to when it was seen."""
        end = time.time() + timeout
        with self.cond:
            while not all(n in self.seen for n in names) and time.time() < end:
                self.cond.wait(max(0.0, end - time.time()))
            return {n: self.seen[n] - created[n] for n in names if n in self.seen}

    def wait_count(self, n, timeout=300):
        end = time.time() + timeout
        with self.cond:
            while len(self.seen) < n and time.time() < end:
                self.cond.wait(max(0.0, end - time.time()))
            return dict(self.seen)


def running_pods(ev):
    o = ev["object"]
    ok = ev["type"] != "DELETED" and o["status"].get("phase") == "Running" and o["status"].get("podIP")
    return [o["metadata"]["name"]] if ok else []


def ready_pods(ev):
    o = ev["object"]
    conds = o.get("status", {}).get("conditions", [])
    ok = ev["type"] != "DELETED" and any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
    return [o["metadata"]["name"]] if ok else []


def endpoint_ips(ev):
    if ev["type"] == "DELETED":
        return []
    return [a["ip"] for s in ev["object"].get("subsets") or [] for a in s.get("addresses") or []]


def deployment_scale(results, n=100):
    """0 -> n replicas of a Deployment behind a Service: each pod Ready, each in Endpoints."""
    ns = "/apis/apps/v1/namespaces/default"
    req("POST", "/api/v1/namespaces/default/services",
        {"metadata": {"name": "scale"}, "spec": {"selector": {"app": "scale"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    tmpl = pod("x", "scale")
    tmpl["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1}
    req("POST", f"{ns}/deployments", {"metadata": {"name": "scale"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "scale"}},
        "template": {"metadata": {"labels": {"app": "scale"}}, "spec": tmpl["spec"]}}})
    ready = Watch("/api/v1/namespaces/default/pods?labelSelector=app%3Dscale", ready_pods)
    in_eps = Watch("/api/v1/namespaces/default/endpoints?fieldSelector=metadata.name%3Dscale", endpoint_ips)
    t0 = time.time()
    req("PUT", f"{ns}/deployments/scale/scale", {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "scale"}, "spec": {"replicas": n}})
    r = [t - t0 for t in ready.wait_count(n).values()]
    e = [t - t0 for t in in_eps.wait_count(n).values()]
    (r50, r99), (e50, e99) = pct(r), pct(e)
    print(f"deployment 0 -> {n} replicas: pod Ready p50 {r50:.0f} ms  p99 {r99:.0f} ms  last {max(r) * 1000:.0f} ms ({len(r)}/{n});"
          f"  in Endpoints p50 {e50:.0f} ms  p99 {e99:.0f} ms  last {max(e) * 1000:.0f} ms ({len(e)}/{n})")
    results["deployment_scale_0_to_100"] = {"ready_p50_ms": r50, "ready_p99_ms": r99, "ready_last_ms": max(r) * 1000, "ready": len(r),
                                            "endpoints_p50_ms": e50, "endpoints_p99_ms": e99, "endpoints_last_ms": max(e) * 1000}
    req("DELETE", f"{ns}/deployments/scale")
    req("DELETE", "/api/v1/namespaces/default/services/scale")
    end = time.time() + 120
    while req("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dscale")["items"] and time.time() < end:
        time.sleep(1)


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True)


def ctr_burst(n, r=0):
    """n `ctr run -d` started together, split over the nodes (round r); each successful
    one's own duration (a failed run is left out, and shows as fewer than n)."""
    per = {node: [i for i in range(n) if i % len(NODES) == k] for k, node in enumerate(NODES)}
    out = []
    def run(node, ids):
        script = " ".join(f"(t0=$(date +%s%N); ctr -n k8s.io run -d --null-io {IMAGE} ctr-{n}-{r}-{i} >/dev/null 2>&1 && echo $(( $(date +%s%N) - t0 ))) &" for i in ids) + " wait"
        done = sh("docker", "exec", node, "sh", "-c", script)
        out.extend(int(x) / 1e9 for x in done.stdout.split())
    threads = [threading.Thread(target=run, args=(node, ids)) for node, ids in per.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for node, ids in per.items():
        kill = " ".join(f"ctr -n k8s.io task kill -s SIGKILL ctr-{n}-{r}-{i};" for i in ids)
        rm = " ".join(f"ctr -n k8s.io task rm -f ctr-{n}-{r}-{i}; ctr -n k8s.io container rm ctr-{n}-{r}-{i};" for i in ids)
        sh("docker", "exec", node, "sh", "-c", f"{kill} sleep 1; {rm}")
    if len(out) < n:
        print(f"  ({n - len(out)} of {n} ctr run -d failed)")
    return pct(out) if out else (float("nan"), float("nan"))


def watch_leases():
    """Poll the nodes' Leases in the background; the returned function stops and gives
    the longest time between two renewals seen."""
    stop, gaps, last = threading.Event(), [0.0], {}
    def loop():
        while not stop.is_set():
            for node in NODES:
                l = req("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
                rt = (l or {}).get("spec", {}).get("renewTime")
                now = time.time()
                prev = last.get(node)
                if prev is None or prev[0] != rt:
                    if prev is not None:
                        gaps[0] = max(gaps[0], now - prev[1])
                    last[node] = (rt, now)
            time.sleep(0.2)
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    def done():
        stop.set()
        th.join()
        return gaps[0]
    return done


# Bursts and how many rounds of each: one round is the kubelet's burst, then the same
# number of `ctr run -d` at once. Rounds interleave the two because this machine's speed
# drifts by tens of percent within minutes; the medians of the rounds are the headline.
BURSTS = ((20, 3), (100, 2))


def kubelet_burst(running, burst, r):
    """burst pods created together; each one's creation -> Running with podIP, in s."""
    batch = [f"bench-{burst}-{r}-{i}" for i in range(burst)]
    created, threads = {}, []
    for n in batch:
        created[n] = time.time()
        th = threading.Thread(target=req, args=("POST", "/api/v1/namespaces/default/pods", pod(n, "bench")))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    done = running.wait(set(batch), created)
    return batch, list(done.values())


def burst_rounds(running, burst, rounds):
    """Interleaved rounds of a kubelet burst and a ctr burst; prints each and the medians."""
    per_round = []
    for r in range(rounds):
        lease_gaps = watch_leases() if burst == 100 else None
        batch, times = kubelet_burst(running, burst, r)
        p50, p99 = pct(times)
        c50, c99 = ctr_burst(burst, r)
        entry = {"p50_ms": p50, "p99_ms": p99, "running": len(times), "ctr_p50_ms": c50, "ctr_p99_ms": c99}
        line = f"burst of {burst} pods, round {r + 1}/{rounds} -> Running with podIP: p50 {p50:.0f} ms  p99 {p99:.0f} ms ({len(times)}/{burst});  {burst} ctr run -d together: p50 {c50:.0f} ms  p99 {c99:.0f} ms"
        if lease_gaps is not None:
            entry["longest_lease_gap_s"] = lease_gaps()
            line += f";  longest Lease renewal gap {entry['longest_lease_gap_s']:.1f} s"
        print(line)
        per_round.append(entry)
        for n in batch:
            req("DELETE", f"/api/v1/namespaces/default/pods/{n}?gracePeriodSeconds=0")
        time.sleep(5)
    med = lambda k: statistics.median(e[k] for e in per_round)
    summary = {k: med(k) for k in ("p50_ms", "p99_ms", "ctr_p50_ms", "ctr_p99_ms")}
    summary["running"] = min(e["running"] for e in per_round)
    if burst == 100:
        summary["longest_lease_gap_s"] = max(e["longest_lease_gap_s"] for e in per_round)
    summary["rounds"] = per_round
    print(f"burst of {burst} pods, median of {rounds} rounds: p50 {summary['p50_ms']:.0f} ms  p99 {summary['p99_ms']:.0f} ms;"
          f"  ctr run -d: p50 {summary['ctr_p50_ms']:.0f} ms  p99 {summary['ctr_p99_ms']:.0f} ms")
    return summary


def main():
    # When each bench pod was first seen Running with a podIP.
    running = Watch("/api/v1/namespaces/default/pods?labelSelector=app%3Dbench", running_pods)
    # Warm up: the image on both nodes (pulled once), so the measured pods find it present.
    warm = [f"warm-{n}" for n in NODES]
    for n, node in zip(warm, NODES):
        p = pod(n, "bench")
        p["spec"]["nodeName"] = node
        req("POST", "/api/v1/namespaces/default/pods", p)
    running.wait(set(warm), {n: time.time() for n in warm})

    results = {"benchmark": "lab", "pods": {}}
    # Single pods, one at a time: bare, then with probes and volumes.
    req("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "bench-config"}, "data": {"greeting": "hello"}})
    for key, make, what in (("single", pod, "bare"), ("single_with_probes_and_volumes", pod_with_probes_and_volumes,
                                                         "2 probes, configMap + emptyDir volumes, env from a ConfigMap")):
        single = []
        for i in range(10):
            n = f"{key.replace('_', '-')}-{i}"
            t = time.time()
            req("POST", "/api/v1/namespaces/default/pods", make(n, "bench"))
            single += list(running.wait({n}, {n: t}).values())
            req("DELETE", f"/api/v1/namespaces/default/pods/{n}?gracePeriodSeconds=0")
            time.sleep(1)  # its teardown is not the next pod's start
        s50, s99 = pct(single)
        print(f"single pod creation -> Running with podIP (10, one at a time; {what}): p50 {s50:.0f} ms  p99 {s99:.0f} ms")
        results["pods"][key] = {"p50_ms": s50, "p99_ms": s99, "n": len(single)}
    req("DELETE", "/api/v1/namespaces/default/configmaps/bench-config")
    time.sleep(2)

    for burst, rounds in BURSTS:
        results["pods"][f"burst_{burst}"] = burst_rounds(running, burst, rounds)
    deployment_scale(results)
    names = ["bench-0"]
    first = pod("bench-0", "bench")
    req("POST", "/api/v1/namespaces/default/pods", first)
    running.wait({"bench-0"}, {"bench-0": time.time()})

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

    results["service_to_nodeport"] = {"p50_ms": s50, "p99_ms": s99}
    results["requests_per_second"] = {"direct": rd, "nodeport": rv, "ratio": rv / rd}
    for i in range(20):
        req("DELETE", f"/api/v1/namespaces/default/services/bench-{i}")
    for n in names + warm:
        req("DELETE", f"/api/v1/namespaces/default/pods/{n}?gracePeriodSeconds=0")
    os.makedirs("results", exist_ok=True)
    with open("results/lab.json", "w") as f:
        json.dump(results, f, indent=2)
    print("wrote results/lab.json")


if __name__ == "__main__":
    main()
