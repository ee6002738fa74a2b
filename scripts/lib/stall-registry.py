#!/usr/bin/env python3
"""A registry that never answers in time: every request is held for STALL seconds
(default 60), then answered 404. For watching one pod's image pull hang while the
node's other pods start and its Lease is renewed (each pod has its own worker).
Logs one line per request to stdout. The lab's nodes reach it as the registry
`slow.local:5000` (a --registry-mirror to the lab network's gateway, port 5001).

    scripts/lib/stall-registry.py 172.30.0.1 5001
"""
import http.server
import os
import sys
import threading
import time

STALL = float(os.environ.get("STALL", "60"))


class Stall(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(f"{time.time():.3f} GET {self.path}", flush=True)
        time.sleep(STALL)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *_):
        pass


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    server = http.server.ThreadingHTTPServer((host, port), Stall)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
