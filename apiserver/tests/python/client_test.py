"""The official Python client (`pip install kubernetes`) against ownkube: nodes, an
informer over ConfigMaps (list, then watch from the list's resourceVersion), the three
patch types and server-side apply, exec through stream() and port-forward.
Run by agent/tests/streams.rs:  SERVER=http://127.0.0.1:PORT POD=<busybox httpd pod> python3 client_test.py
"""
import os
import sys
import threading

from kubernetes import client, watch
from kubernetes.stream import portforward, stream

cfg = client.Configuration()
cfg.host = os.environ["SERVER"]
api = client.CoreV1Api(client.ApiClient(cfg))
pod = os.environ["POD"]
ns = "default"
failed = 0


def check(what, fn):
    global failed
    try:
        fn()
        print(f"ok   - {what}")
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the others
        failed += 1
        print(f"FAIL - {what}: {type(e).__name__}: {e}")


def nodes():
    items = api.list_node().items
    assert items, "no nodes"
    n = api.read_node(items[0].metadata.name)
    assert n.status.node_info.boot_id and n.status.node_info.machine_id, n.status.node_info


def informer():
    listed = api.list_namespaced_config_map(ns)
    rv = listed.metadata.resource_version
    api.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-informer"), data={"a": "1"}))
    seen = []
    for ev in watch.Watch().stream(api.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=5):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ("ADDED", "py-informer") in seen:
            break
    assert ("ADDED", "py-informer") in seen, seen


def patches():
    name = "py-patch"
    api.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"a": "1"}))
    api.patch_namespaced_config_map(name, ns, [{"op": "add", "path": "/data/j", "value": "json"}])
    api.patch_namespaced_config_map(name, ns, {"data": {"s": "strategic"}})
    api.patch_namespaced_config_map(name, ns, {"data": {"m": "merge"}}, _content_type="application/merge-patch+json")
    applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"x": "applied"}}
    api.patch_namespaced_config_map(name, ns, applied, field_manager="python", _content_type="application/apply-patch+yaml")
    data = api.read_namespaced_config_map(name, ns).data
    assert data == {"a": "1", "j": "json", "s": "strategic", "m": "merge", "x": "applied"}, data


def exec_output():
    out = stream(api.connect_get_namespaced_pod_exec, pod, ns, command=["cat", "/etc/hostname"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out.strip() == pod, repr(out)


def exec_without_stderr():
    """The channel numbers are fixed whatever a client asks for: without stderr, stdout
    still comes (and what the command writes to stderr is not sent)."""
    cmd = ["sh", "-c", "for i in 1 2 3; do echo line$i; done; echo oops >&2"]
    out = stream(api.connect_get_namespaced_pod_exec, pod, ns, command=cmd, stderr=False, stdin=False, stdout=True, tty=False)
    assert out == "line1\nline2\nline3\n", repr(out)
    err = stream(api.connect_get_namespaced_pod_exec, pod, ns, command=cmd, stderr=True, stdin=False, stdout=False, tty=False)
    assert err == "oops\n", repr(err)
    # No stream at all is refused before anything runs, as kube-apiserver refuses it.
    try:
        stream(api.connect_get_namespaced_pod_exec, pod, ns, command=cmd, stderr=False, stdin=False, stdout=False, tty=False)
    except Exception as e:
        assert "400" in str(e) and "you must specify at least 1 of stdin, stdout, stderr" in str(e), str(e)
    else:
        raise AssertionError("an exec with no stream was not refused")


def exec_exit_code():
    resp = stream(api.connect_get_namespaced_pod_exec, pod, ns, command=["sh", "-c", "echo x; exit 7"],
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=20)
    assert resp.returncode == 7, resp.returncode


def port_forward():
    pf = portforward(api.connect_get_namespaced_pod_portforward, pod, ns, ports="8080")
    sock = pf.socket(8080)
    sock.setblocking(True)
    sock.settimeout(10)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    got = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    sock.close()
    assert f"HOSTNAME:{pod}".encode() in got, got[:200]


for what, fn in [("list and read nodes (every nodeInfo field)", nodes), ("informer: list, then watch from its resourceVersion", informer),
                 ("json, strategic, merge patches and server-side apply", patches), ("stream() exec: output", exec_output),
                 ("stream() exec: stdout without stderr, and stderr without stdout", exec_without_stderr),
                 ("stream() exec: the exit code", exec_exit_code), ("port-forward: an HTTP answer from the pod", port_forward)]:
    t = threading.Thread(target=check, args=(what, fn), daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():
        failed += 1
        print(f"FAIL - {what}: timed out")
print(f"{7 - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
