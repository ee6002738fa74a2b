//! exec, attach, cp, port-forward and logs end to end: a real apiserver (on etcd), the
//! agent's kubelet and node API, containerd + runc, the node in its own network namespace.
//! `apiserver/tests/kubectl/streams.sh` runs with every kubectl on the machine (SPDY for
//! 1.27-1.29, WebSockets and SPDY-in-WebSocket for the newer ones), then
//! `apiserver/tests/python/client_test.py` with the official Python client.

#[path = "../../apiserver/tests/common/mod.rs"]
mod common;
mod containerd;
mod netns;

use agent::client::Client;
use agent::kubelet::{self, Kubelet};
use agent::registry::Registries;
use common::{eventually, kubectls, Cluster};
use containerd::*;
use netns::Netns;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const PODS: &str = "/api/v1/namespaces/default/pods";
const IMAGE: &str = "localhost:5000/busybox:local";
const SERVE: &str = "mkdir -p /www && echo HOSTNAME:$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_cp_port_forward_attach_and_logs_through_the_apiserver() {
    let c = Cluster::start().await;
    let ctd = Containerd::start();
    let rt = ctd.runtime().await;
    let node = Netns::new("ks");
    let state = tempfile::tempdir().unwrap();
    import(&rt, IMAGE, busybox_image(&["sh"])).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let streaming = agent::streaming::Streaming {
        client: Client::new(&c.base),
        runtime: rt.clone(),
        state_dir: state.path().to_path_buf(),
        logs_dir: state.path().join("logs"),
    };
    let dbg = agent::debug::DebugState::default();
    tokio::spawn(async move { axum::serve(listener, agent::debug::router(dbg, Some(streaming))).await });
    let cfg = kubelet::Config {
        node_name: "snode".into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".into(),
        state_dir: state.path().to_path_buf(),
        logs_dir: state.path().join("logs"),
        port,
        registries: Registries::default(),
        lease_renew: Duration::from_secs(2),
        netns: Some(node.name.clone()),
        dns: Default::default(),
        max_parallel_starts: kubelet::starts::default_parallel_starts(),
    };
    let k = Kubelet::start(kubelet::client_for(&c.base).unwrap(), rt.clone(), cfg).await.expect("kubelet starts");
    tokio::spawn(k.run());

    let pod = json!({"metadata": {"name": "shell"}, "spec": {"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", SERVE]}]}});
    c.create(PODS, pod).await;
    eventually(60, "shell Running", || async { (c.get(&format!("{PODS}/shell")).await.1["status"]["phase"] == "Running").then_some(()) })
        .await;

    // Logs: plain, tailLines, and a container that is not the pod's (never a path on the node).
    let logs = |q: &'static str| {
        let url = c.url(&format!("{PODS}/shell/log{q}"));
        async move { reqwest::get(url).await.unwrap() }
    };
    assert_eq!(logs("").await.status(), 200);
    assert_eq!(logs("?container=..%2F..%2F..%2Fetc%2Fpasswd").await.status(), 400);
    let direct = reqwest::get(format!("http://127.0.0.1:{port}/containerLogs/default/shell/..%2F..%2Fetc%2Fpasswd")).await.unwrap();
    assert_eq!(direct.status(), 404, "the agent names containers, not files");

    // nodes/{name}/proxy reaches the agent's own port.
    let health = reqwest::get(c.url("/api/v1/nodes/snode/proxy/healthz")).await.unwrap();
    assert_eq!((health.status().as_u16(), health.text().await.unwrap()), (200, "ok".to_string()));
    let stats: serde_json::Value = reqwest::get(c.url("/api/v1/nodes/snode/proxy/debug/proxy")).await.unwrap().json().await.unwrap();
    assert!(stats.get("syncs").is_some(), "{stats}");

    let bins = kubectls();
    assert!(!bins.is_empty() || std::env::var("OWNKUBE_NO_KUBECTL").is_ok(), "no kubectl found: set KUBECTL or OWNKUBE_NO_KUBECTL=1");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../apiserver/tests/kubectl/streams.sh");
    let mut failures = vec![];
    for bin in bins {
        let tag = bin.rsplit('.').next().unwrap_or("x").to_string();
        let (server, b) = (c.base.clone(), bin.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(script)
                .env("KUBECTL", &b)
                .env("SERVER", server)
                .env("NS", "default")
                .env("POD", "shell")
                .env("IMAGE", IMAGE)
                .env("TAG", tag)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        println!("== {bin}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            failures.push(bin);
        }
    }
    assert!(failures.is_empty(), "stream checks failed with: {failures:?}");

    // The official Python client: exec with stream(), port-forward, and its other calls.
    let py = concat!(env!("CARGO_MANIFEST_DIR"), "/../apiserver/tests/python/client_test.py");
    let server = c.base.clone();
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").arg(py).env("SERVER", server).env("POD", "shell").output().unwrap())
            .await
            .unwrap();
    println!("== python\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python client checks failed");
}
