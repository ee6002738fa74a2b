#!/usr/bin/env python3
"""Density benchmark (`scripts/bench density`), modelled on clusterloader2's density and
load tests. Prints numbers, writes results/density.json and results/density.svg, asserts
nothing.

It starts its own cluster on this machine, outside the docker lab: a fresh etcd, the
apiserver (controllers apart: `--controllers=false` and one `controller-manager`), and one
`agent --hollow N` process holding N hollow nodes (the real kubelet and proxy loops over
HTTP; a runtime, network and rule loader that touch nothing). Then, in namespace
`density`:

- Deployments of --replicas pods each, each with a Service selecting them, created at a
  fixed rate of --rate pods/s until there are nodes x --pods-per-node pods, spread over
  one namespace per 100 nodes (as clusterloader2's density test spreads them);
- pod startup latency (the SLI of Kubernetes' pod startup SLO): from a pod first seen by
  this script's watch to the watch showing it Running with every container started and a
  podIP (both ends seen through the same watch, so the watch's own delay cancels out);
  also from its creationTimestamp (whole seconds) to that;
- API call latency per verb, resource, subresource and scope: the 99th percentile of
  `apiserver_request_duration_seconds` over the load phase (the difference of two scrapes
  of /metrics, interpolated in buckets as Prometheus' histogram_quantile does);
- watch delivery lag: once a second this script patches ConfigMap `density/probe` with the
  time, and its own watch (one of N+1: every hollow kubelet watches ConfigMaps too) tells
  how long the event took to arrive;
- CPU (cores) and memory (RSS) of etcd, the apiserver, the controller-manager and the
  hollow nodes, sampled every 2 s.

SLOs checked (printed, not asserted): mutating calls p99 <= 1 s, LIST p99 <= 30 s (cluster
scope; 5 s in a namespace), single-object reads p99 <= 1 s, pod startup p99 <= 5 s.
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--nodes", type=int, default=500)
ap.add_argument("--pods-per-node", type=int, default=30)
ap.add_argument("--replicas", type=int, default=10, help="pods per Deployment (one Service each)")
ap.add_argument("--rate", type=float, default=20.0, help="pods per second (Deployments created at rate/replicas per second)")
ap.add_argument("--namespaces", type=int, default=0, help="namespaces the Deployments are spread over (default: one per 100 nodes, as clusterloader2's density test)")
ap.add_argument("--proxy-mode", default="iptables", choices=["iptables", "nftables"])
ap.add_argument("--proxies", type=int, default=50, help="hollow nodes that run a proxy (the first ones; 0..nodes). Each "
                "proxy decodes every EndpointSlice change: 500 of them cut the whole run's throughput on 2 cores")
ap.add_argument("--min-sync-ms", type=int, default=1000, help="hollow proxies' --min-sync-period-millis")
ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for every pod to run")
ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/cache/ownkube/target"), "release"))
ap.add_argument("--out", default="results")
args = ap.parse_args()

PORT, ETCD_PORT, PEER_PORT = 18080, 23791, 23801
API = f"http://127.0.0.1:{PORT}"
NS = "density"
TOTAL = args.nodes * args.pods_per_node
NAMESPACES = [f"density-{i}" for i in range(args.namespaces or max(1, args.nodes // 100))]
T0 = time.time()


def req(method, path, body=None, ctype="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(API + path, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p * len(xs) + 0.5)) - 1))] if xs else float("nan")


# ---- the cluster -----------------------------------------------------------------------
work = tempfile.mkdtemp(prefix="ownkube-density-")
procs = {}


def start(name, argv):
    log = open(os.path.join(work, f"{name}.log"), "w")
    procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))


def stop_all():
    for p in procs.values():
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_for(what, ok, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ok():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}; logs in {work}")


def start_cluster():
    start("etcd", ["etcd", "--name", "density", "--data-dir", os.path.join(work, "etcd"),
                   "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}", "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                   "--listen-peer-urls", f"http://127.0.0.1:{PEER_PORT}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{PEER_PORT}",
                   "--initial-cluster", f"density=http://127.0.0.1:{PEER_PORT}", "--quota-backend-bytes", str(8 << 30)])
    # A /12 of pod addresses: 4,096 node CIDRs of /24 (the default /16 holds only 256 nodes).
    cidr = "10.128.0.0/12"
    start("apiserver", [f"{args.bin}/apiserver", "--etcd-servers", f"http://127.0.0.1:{ETCD_PORT}", "--listen", f"127.0.0.1:{PORT}",
                        "--controllers=false", "--cluster-cidr", cidr])
    wait_for("the apiserver", lambda: urllib.request.urlopen(API + "/readyz", timeout=2).status == 200, 60)
    start("controller-manager", [f"{args.bin}/controller-manager", "--server", API])
    start("hollow-nodes", [f"{args.bin}/agent", "--hollow", str(args.nodes), "--apiserver", API, "--cluster-cidr", cidr,
                           "--state-dir", os.path.join(work, "agent"), "--proxy-mode", args.proxy_mode,
                           "--min-sync-period-millis", str(args.min_sync_ms), "--hollow-proxies", str(args.proxies)])

    def ready_nodes():
        _, nodes = req("GET", "/api/v1/nodes")
        return sum(1 for n in nodes["items"] for c in n.get("status", {}).get("conditions", [])
                   if c["type"] == "Ready" and c["status"] == "True")
    t = time.time()
    wait_for(f"{args.nodes} Ready nodes", lambda: ready_nodes() >= args.nodes, 600)
    return time.time() - t


# ---- samplers ----------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")
# "bench" is this script itself: its pod watch decodes every pod event, on the same 2 cores.
usage = {name: [] for name in ["etcd", "apiserver", "controller-manager", "hollow-nodes", "bench"]}


def sample_processes(stop):
    last = {}
    while not stop.is_set():
        now = time.time()
        for name in usage:
            pid = os.getpid() if name == "bench" else procs[name].pid if name in procs else None
            if pid is None:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / TICK
                with open(f"/proc/{pid}/status") as f:
                    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
            except (OSError, StopIteration):
                continue
            if name in last:
                t0, c0 = last[name]
                usage[name].append((now - T0, (cpu - c0) / (now - t0), rss))
            last[name] = (now, cpu)
        stop.wait(2)


pods = {}  # name -> {"seen": t, "created": creationTimestamp, "running": t}
progress = []  # (t, created, running)
lock = threading.Lock()


def running(p):
    st = p.get("status", {})
    cs = st.get("containerStatuses") or []
    return st.get("phase") == "Running" and st.get("podIP") and cs and all("running" in (c.get("state") or {}) for c in cs)


def watch_lines(path, query=""):
    """Yield watch events forever (reconnecting from the last resourceVersion)."""
    import requests
    rv = None
    while True:
        q = "watch=1&allowWatchBookmarks=true" + (f"&resourceVersion={rv}" if rv else "") + (f"&{query}" if query else "")
        try:
            with requests.get(f"{API}{path}?{q}", stream=True, timeout=(5, 600)) as r:
                for line in r.iter_lines():
                    if line:
                        ev = json.loads(line)
                        rv = ev["object"].get("metadata", {}).get("resourceVersion", rv)
                        yield time.time(), ev
        except Exception:
            time.sleep(0.5)


# Churn, for a load that only creates (issue "Density: pods are deleted"): every pod's
# owner, the live pods of each ReplicaSet (not deleted, not being deleted) and the most
# it ever had, against the most replicas it was ever asked for (in a load that only
# scales up, a ReplicaSet above those made a pod too many; comparing with the replicas
# of the moment would race the ReplicaSet watch against the pod watch), and every
# ReplicaSet made.
owner_of = {}  # pod name -> its controller's uid
live = {}  # ReplicaSet uid -> names of its live pods
most_live = {}  # ReplicaSet uid -> the most live pods it had at once
replicas_of = {}  # ReplicaSet uid -> the most spec.replicas it was asked for
deleted = {"marked": 0, "gone": 0}


def count_live(name, p, alive):
    """File a pod under its ReplicaSet; call with the lock held."""
    refs = [r for r in p["metadata"].get("ownerReferences") or [] if r.get("controller")]
    if not refs:
        return
    uid = owner_of.setdefault(name, refs[0]["uid"])
    pods_of = live.setdefault(uid, set())
    (pods_of.add if alive else pods_of.discard)(name)
    most_live[uid] = max(most_live.get(uid, 0), len(pods_of))


def watch_replicasets():
    for _, ev in watch_lines("/apis/apps/v1/replicasets", "labelSelector=group%3Ddensity"):
        rs = ev["object"]
        if ev["type"] in ("ADDED", "MODIFIED") and "uid" in rs.get("metadata", {}):
            with lock:
                uid = rs["metadata"]["uid"]
                replicas_of[uid] = max(replicas_of.get(uid, 0), (rs.get("spec") or {}).get("replicas", 1))


def watch_pods():
    from datetime import datetime
    for at, ev in watch_lines("/api/v1/pods", "labelSelector=group%3Ddensity"):
        if ev["type"] not in ("ADDED", "MODIFIED", "DELETED"):
            continue  # bookmarks and errors
        p = ev["object"]
        name = p["metadata"]["namespace"] + "/" + p["metadata"]["name"]
        if ev["type"] == "DELETED":
            with lock:
                deleted["gone"] += 1
                count_live(name, p, False)
            continue
        with lock:
            marked = bool(p["metadata"].get("deletionTimestamp"))
            if marked and not pods.get(name, {}).get("marked"):
                deleted["marked"] += 1
            count_live(name, p, not marked)
            rec = pods.setdefault(name, {"seen": at})
            rec["marked"] = marked
            if "created" not in rec:
                ts = p["metadata"].get("creationTimestamp")
                rec["created"] = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else at
            if "scheduled" not in rec and p.get("spec", {}).get("nodeName"):
                rec["scheduled"] = at
            if "running" not in rec and running(p):
                rec["running"] = at
                # When the kubelet says it started the containers (its clock, whole seconds).
                starts = [c["state"]["running"].get("startedAt") for c in p["status"]["containerStatuses"]]
                if all(starts):
                    rec["started"] = max(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in starts)


lags = []


def watch_probe():
    for at, ev in watch_lines(f"/api/v1/namespaces/{NS}/configmaps"):
        sent = (ev["object"].get("data") or {}).get("sent")
        if ev["type"] == "MODIFIED" and sent:
            lags.append((at - T0, at - float(sent)))


def probe_writer(stop):
    while not stop.is_set():
        req("PATCH", f"/api/v1/namespaces/{NS}/configmaps/probe", {"data": {"sent": repr(time.time())}}, "application/merge-patch+json")
        stop.wait(1)


def progress_sampler(stop):
    while not stop.is_set():
        with lock:
            progress.append((time.time() - T0, len(pods), sum(1 for r in pods.values() if "running" in r)))
        stop.wait(2)


# ---- the load ----------------------------------------------------------------------------
def deployment(i):
    name = f"density-{i:04d}"
    labels = {"app": name, "group": "density"}
    return name, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": args.replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"terminationGracePeriodSeconds": 1,
                                       "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                                       "ports": [{"containerPort": 8080}]}]}}}}


created = {"deployments": 0}


def create_load():
    count = (TOTAL + args.replicas - 1) // args.replicas
    every = args.replicas / args.rate
    started = time.time()
    for i in range(count):
        name, d = deployment(i)
        ns = NAMESPACES[i % len(NAMESPACES)]
        if i == count - 1 and TOTAL % args.replicas:
            d["spec"]["replicas"] = TOTAL % args.replicas
        code, body = req("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", d)
        created["deployments"] += code == 201
        if code != 201:
            print(f"deployment {name}: {code} {body}", file=sys.stderr)
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}
        code, body = req("POST", f"/api/v1/namespaces/{ns}/services", svc)
        if code != 201:
            print(f"service {name}: {code} {body}", file=sys.stderr)
        time.sleep(max(0, started + (i + 1) * every - time.time()))
    return time.time() - started


# ---- metrics -----------------------------------------------------------------------------
def scrape():
    text = urllib.request.urlopen(API + "/metrics", timeout=30).read().decode()
    buckets = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_duration_seconds_bucket{"):
            continue
        labels, value = line[len("apiserver_request_duration_seconds_bucket{"):].rsplit("} ", 1)
        kv = dict(part.split("=", 1) for part in labels.split(","))
        kv = {k: v.strip('"') for k, v in kv.items()}
        key = (kv["verb"], kv["resource"], kv["subresource"], kv["scope"])
        le = float("inf") if kv["le"] == "+Inf" else float(kv["le"])
        buckets.setdefault(key, {})[le] = float(value)
    return buckets


def quantile(q, buckets):
    """Prometheus' histogram_quantile: linear inside the bucket the rank falls in."""
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total == 0:
        return None
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le in les:
        n = buckets[le]
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 0)
        prev_le, prev_n = le, n
    return les[-2]


def api_latency(before, after):
    rows = []
    for key, b in after.items():
        a0 = before.get(key, {})
        diff = {le: n - a0.get(le, 0.0) for le, n in b.items()}
        count = diff[float("inf")]
        if count <= 0:
            continue
        verb, resource, sub, scope = key
        rows.append({"verb": verb, "resource": resource, "subresource": sub, "scope": scope, "count": int(count),
                     "p50_ms": quantile(0.5, diff) * 1000, "p99_ms": quantile(0.99, diff) * 1000})
    return sorted(rows, key=lambda r: -r["count"])


def slo_of(row):
    if row["verb"] in ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"):
        return "mutating", 1000
    if row["verb"] == "GET":
        return "read, one object", 1000
    return f"LIST, {row['scope']}", 30000 if row["scope"] == "cluster" else 5000


# ---- the chart ---------------------------------------------------------------------------
def svg(path, result):
    w, h, left, bottom = 900, 420, 60, 40
    t_end = max([t for t, _, _ in progress] + [1])
    ymax = max(TOTAL, 1)
    cmax = max([c for u in usage.values() for _, c, _ in u] + [2.0])
    x = lambda t: left + (w - left - 60) * t / t_end
    y = lambda v: h - bottom - (h - bottom - 30) * v / ymax
    yc = lambda v: h - bottom - (h - bottom - 30) * v / cmax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">ownkube density: {args.nodes} hollow nodes, {TOTAL} pods at {args.rate:g}/s; '
           f'pod startup p99 {result["pod_startup"]["p99_ms"]:.0f} ms</text>',
           f'<line x1="{left}" y1="{h-bottom}" x2="{w-60}" y2="{h-bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="30" x2="{left}" y2="{h-bottom}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-8}">seconds since start</text>',
           f'<text x="5" y="30">{ymax} pods</text>', f'<text x="{w-55}" y="30">{cmax:.1f} cores</text>']
    for i in range(0, 6):
        t = t_end * i / 5
        out.append(f'<text x="{x(t)-10:.0f}" y="{h-bottom+15}">{t:.0f}</text>')
    series = [("pods seen", [(t, c) for t, c, _ in progress], "#888", y),
              ("pods running", [(t, r) for t, _, r in progress], "#1a7f37", y)]
    colors = {"etcd": "#cf222e", "apiserver": "#0969da", "controller-manager": "#8250df", "hollow-nodes": "#bf8700", "bench": "#57606a"}
    for name, u in usage.items():
        series.append((f"{name} CPU (cores)", [(t, c) for t, c, _ in u], colors[name], yc))
    for i, (label, pts, color, scale) in enumerate(series):
        if pts:
            d = " ".join(f"{x(t):.1f},{scale(v):.1f}" for t, v in pts)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="{2 if scale is y else 1}" points="{d}"/>')
        out.append(f'<text x="{left+10}" y="{50+i*15}" fill="{color}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


# ---- the run -----------------------------------------------------------------------------
def churn_of():
    """What the load made and unmade, from the watches and the ReplicaSet controller's events."""
    deletes = 0
    for ns in NAMESPACES:
        _, evs = req("GET", f"/api/v1/namespaces/{ns}/events?fieldSelector=reason%3DSuccessfulDelete")
        deletes += sum(e.get("count") or 1 for e in (evs or {}).get("items", []))
    with lock:
        most_above = {u: n - replicas_of.get(u, 0) for u, n in most_live.items()}
        above = sorted(((n, u) for u, n in most_above.items() if n > 0), reverse=True)
        return {"deployments_created": created["deployments"], "replicasets_made": len(replicas_of), "pods_created": len(pods),
                "pods_marked_for_deletion": deleted["marked"], "pods_deleted": deleted["gone"],
                "replicaset_controller_deletes": deletes, "most_pods_above_replicas": max(most_above.values(), default=0),
                "replicasets_above_replicas": [{"uid": u, "above": n} for n, u in above]}


def main():
    print(f"density: {args.nodes} hollow nodes x {args.pods_per_node} pods = {TOTAL} pods in {len(NAMESPACES)} namespaces, Deployments of {args.replicas} "
          f"(one Service each) at {args.rate:g} pods/s; proxies on {args.proxies} nodes ({args.proxy_mode}, min sync {args.min_sync_ms} ms); work dir {work}")
    stop = threading.Event()
    threading.Thread(target=sample_processes, args=(stop,), daemon=True).start()
    nodes_secs = start_cluster()
    print(f"{args.nodes} nodes Ready in {nodes_secs:.1f} s")
    for ns in [NS] + NAMESPACES:
        req("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    req("POST", f"/api/v1/namespaces/{NS}/configmaps", {"metadata": {"name": "probe"}, "data": {}})
    for target in (watch_pods, watch_probe, watch_replicasets):
        threading.Thread(target=target, daemon=True).start()
    time.sleep(1)
    threading.Thread(target=probe_writer, args=(stop,), daemon=True).start()
    threading.Thread(target=progress_sampler, args=(stop,), daemon=True).start()
    before = scrape()
    load_start = time.time()
    create_secs = create_load()
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        with lock:
            done = sum(1 for r in pods.values() if "running" in r)
        if done >= TOTAL:
            break
        time.sleep(1)
    all_secs = time.time() - load_start
    after = scrape()
    stop.set()
    time.sleep(2)
    with lock:
        startup = [r["running"] - r["seen"] for r in pods.values() if "running" in r]
        from_created = [r["running"] - r["created"] for r in pods.values() if "running" in r]
        # The two halves of startup: the scheduler's (seen -> bound) and the kubelet's
        # (bound -> running), to tell which one a missed SLO is waiting on.
        to_bound = [r["scheduled"] - r["seen"] for r in pods.values() if "running" in r and "scheduled" in r]
        to_running = [r["running"] - r["scheduled"] for r in pods.values() if "running" in r and "scheduled" in r]
        # The kubelet's half split again at its own startedAt (whole seconds, rounded down, so
        # the first part reads up to 1 s short and the second up to 1 s long): the pod
        # worker's start, then its status write and the watch bringing it here.
        to_started = [r["started"] - r["scheduled"] for r in pods.values() if "started" in r and "scheduled" in r]
        to_seen = [r["running"] - r["started"] for r in pods.values() if "started" in r]
    rows = api_latency(before, after)
    churn = churn_of()
    result = {
        "churn": churn,
        "nodes": args.nodes, "pods": TOTAL, "namespaces": len(NAMESPACES), "pods_running": len(startup), "rate_pods_per_s": args.rate,
        "replicas_per_deployment": args.replicas, "proxy_mode": args.proxy_mode, "proxies": args.proxies, "proxy_min_sync_ms": args.min_sync_ms,
        "nodes_ready_s": nodes_secs, "create_phase_s": create_secs, "until_all_running_s": all_secs,
        "pod_startup": {"p50_ms": pct(startup, .5) * 1000, "p90_ms": pct(startup, .9) * 1000, "p99_ms": pct(startup, .99) * 1000},
        "pod_startup_seen_to_bound": {"p50_ms": pct(to_bound, .5) * 1000, "p90_ms": pct(to_bound, .9) * 1000, "p99_ms": pct(to_bound, .99) * 1000},
        "pod_startup_bound_to_running": {"p50_ms": pct(to_running, .5) * 1000, "p90_ms": pct(to_running, .9) * 1000,
                                         "p99_ms": pct(to_running, .99) * 1000},
        "pod_startup_bound_to_started": {"p50_ms": pct(to_started, .5) * 1000, "p90_ms": pct(to_started, .9) * 1000,
                                         "p99_ms": pct(to_started, .99) * 1000},
        "pod_startup_started_to_seen_running": {"p50_ms": pct(to_seen, .5) * 1000, "p90_ms": pct(to_seen, .9) * 1000,
                                                "p99_ms": pct(to_seen, .99) * 1000},
        "pod_startup_from_creation_timestamp": {"p50_ms": pct(from_created, .5) * 1000, "p99_ms": pct(from_created, .99) * 1000},
        "watch_lag": {"samples": len(lags), "p50_ms": pct([l for _, l in lags], .5) * 1000,
                      "p99_ms": pct([l for _, l in lags], .99) * 1000, "max_ms": max([l for _, l in lags] + [0]) * 1000},
        "api": rows,
        "processes": {n: {"cpu_cores_avg": sum(c for _, c, _ in u) / max(1, len(u)), "cpu_cores_max": max([c for _, c, _ in u] + [0]),
                          "rss_mib_max": max([m for _, _, m in u] + [0])} for n, u in usage.items()},
    }
    print(f"\nload: {TOTAL} pods created in {create_secs:.0f} s; {len(startup)} running after {all_secs:.0f} s")
    print(f"\n| SLI | p50 | p90 | p99 | SLO |\n|---|---|---|---|---|")
    ps = result["pod_startup"]
    print(f"| pod startup (watch: seen -> running) | {ps['p50_ms']:.0f} ms | {ps['p90_ms']:.0f} ms | {ps['p99_ms']:.0f} ms | "
          f"p99 <= 5 s: {'met' if ps['p99_ms'] <= 5000 else 'MISSED'} |")
    for label, key in (("scheduler: seen -> bound", "pod_startup_seen_to_bound"), ("kubelet: bound -> running", "pod_startup_bound_to_running"),
                       ("kubelet: bound -> startedAt (whole s: reads up to 1 s short)", "pod_startup_bound_to_started"),
                       ("status write + watch: startedAt -> seen (up to 1 s long)", "pod_startup_started_to_seen_running")):
        st = result[key]
        print(f"| &nbsp; of which {label} | {st['p50_ms']:.0f} ms | {st['p90_ms']:.0f} ms | {st['p99_ms']:.0f} ms | |")
    pc = result["pod_startup_from_creation_timestamp"]
    print(f"| pod startup (creationTimestamp, whole s -> running) | {pc['p50_ms']:.0f} ms | | {pc['p99_ms']:.0f} ms | |")
    c = churn
    print(f"\n| churn (a load that only creates) | count | expected |\n|---|---|---|")
    for label, key, want in (("Deployments created", "deployments_created", TOTAL // args.replicas),
                             ("ReplicaSets made", "replicasets_made", TOTAL // args.replicas),
                             ("pods created (distinct names)", "pods_created", TOTAL),
                             ("pods marked for deletion", "pods_marked_for_deletion", 0),
                             ("pods deleted (gone)", "pods_deleted", 0),
                             ("  of which the ReplicaSet controller deleted (SuccessfulDelete events)", "replicaset_controller_deletes", 0),
                             ("most pods a ReplicaSet had above its replicas", "most_pods_above_replicas", 0)):
        print(f"| {label} | {c[key]} | {want} |")
    if c["replicasets_above_replicas"]:
        print(f"ReplicaSets that went above their replicas: {c['replicasets_above_replicas'][:10]}")
    wl = result["watch_lag"]
    print(f"| watch delivery lag ({wl['samples']} probes, {args.nodes + 1} watchers) | {wl['p50_ms']:.1f} ms | | {wl['p99_ms']:.1f} ms | max {wl['max_ms']:.0f} ms |")
    print(f"\n| API call (verb resource/subresource, scope) | count | p50 ms | p99 ms | SLO |\n|---|---|---|---|---|")
    for r in rows:
        kind, limit = slo_of(r)
        name = r["resource"] + (f"/{r['subresource']}" if r["subresource"] else "")
        verdict = "met" if r["p99_ms"] <= limit else "MISSED"
        r["slo"] = f"{kind}: p99 <= {limit / 1000:g} s: {verdict}"
        print(f"| {r['verb']} {name} ({r['scope']}) | {r['count']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['slo']} |")
    print(f"\n| process | CPU avg (cores) | CPU max | RSS max (MiB) |\n|---|---|---|---|")
    for n, p in result["processes"].items():
        print(f"| {n} | {p['cpu_cores_avg']:.2f} | {p['cpu_cores_max']:.2f} | {p['rss_mib_max']:.0f} |")
    os.makedirs(args.out, exist_ok=True)
    result["progress"] = progress
    result["usage"] = usage
    with open(os.path.join(args.out, "density.json"), "w") as f:
        json.dump(result, f, indent=1)
    svg(os.path.join(args.out, "density.svg"), result)
    print(f"\nwrote {args.out}/density.json and {args.out}/density.svg")


try:
    main()
finally:
    stop_all()
    if os.environ.get("KEEP_DENSITY_DIR") != "1":
        shutil.rmtree(work, ignore_errors=True)
