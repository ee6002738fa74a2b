#!/usr/bin/env python3
"""Does a node's /debug/explain say what really happens? (scripts/e2e)

Asks NODE's agent, through the apiserver's node proxy, where a TCP connection from SRC to
DST:PORT goes; then opens N real connections with the client command given after `--`
(curl is appended with its arguments; the whoami pods answer
`HOSTNAME:.. IP:<pod ip> VERSION:.. CLIENT:<source ip>`) and compares: the pods that
answered must be exactly the explained destinations, and each pod must have seen the
source address the explanation gives it (masqueraded or not). With --rejected, every
explained outcome must be a rejection and the connection must be refused.

    explain-check.py --node node1 --src 172.30.0.1 --dst 172.30.0.11 --port 30011 -- curl
"""
import argparse
import collections
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request

p = argparse.ArgumentParser()
p.add_argument("--api", default="http://127.0.0.1:8080")
p.add_argument("--node", required=True)
p.add_argument("--src", required=True)
p.add_argument("--dst", required=True)
p.add_argument("--port", required=True, type=int)
p.add_argument("--n", type=int, default=60)
p.add_argument("--rejected", action="store_true")
p.add_argument("client", nargs="+", help="the command that runs curl, e.g. docker exec node1 curl")
a = p.parse_args()

q = urllib.parse.urlencode({"src": a.src, "dst": a.dst, "port": a.port, "proto": "tcp"})
url = f"{a.api}/api/v1/nodes/{a.node}/proxy/debug/explain?{q}"
with urllib.request.urlopen(url, timeout=30) as r:
    e = json.load(r)
paths = e["paths"]
target = f"http://{a.dst}:{a.port}/"

if a.rejected:
    verdicts = sorted({p["verdict"] for p in paths})
    rc = subprocess.run(a.client + ["-s", "-m", "3", "-o", "/dev/null", target]).returncode
    # curl: 7 = could not connect (refused); 28 would be a timeout.
    print(f"  explained: {verdicts}; curl exit code {rc}")
    sys.exit(0 if verdicts == ["rejected"] and rc == 7 else 1)

want = {p["destination"].rsplit(":", 1)[0]: p["source"] for p in paths if p["verdict"] == "delivered"}
got = collections.defaultdict(set)
failed = 0
for _ in range(a.n):
    out = subprocess.run(a.client + ["-s", "-m", "3", target], capture_output=True, text=True).stdout
    m = re.search(r"IP:(\S+) .*CLIENT:(\S+)", out)
    if not m:
        failed += 1
        continue
    got[m.group(1)].add(m.group(2))
print(f"  explained ({a.node}, {len(paths)} outcomes): " + ", ".join(f"{d} sees {s}" for d, s in sorted(want.items())))
print(f"  answered ({a.n} connections, {failed} failed): " + ", ".join(f"{d} saw {sorted(s)}" for d, s in sorted(got.items())))
ok = failed == 0 and len(want) == len(paths) and set(got) == set(want) and all(got[d] == {want[d]} for d in got)
sys.exit(0 if ok else 1)
