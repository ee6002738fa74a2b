//! The kubelet's whole loop against the real apiserver (on etcd), containerd + runc,
//! a local registry (Debian's docker-registry) and network namespaces: the node lives in
//! its own namespace so the host's network is left alone.

#[path = "../../apiserver/tests/common/mod.rs"]
mod common;
mod containerd;
mod netns;

use agent::client::Client;
use agent::kubelet::{self, Kubelet};
use agent::network;
use agent::registry::Registries;
use agent::runtime::TaskState;
use common::{eventually, Cluster};
use containerd::*;
use netns::Netns;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PODS: &str = "/api/v1/namespaces/default/pods";
const SERVE: &str = "mkdir -p /www && echo HOSTNAME:$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";

/// Debian's docker-registry on a free loopback port, storage in a temp dir.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, port, _dir: dir }
    }

    /// Push blobs and a manifest over the distribution API, as `docker push` would.
    async fn push(&self, repo: &str, tag: &str, blobs: Vec<(String, Vec<u8>)>) {
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}/v2/{repo}", self.port);
        let n = blobs.len();
        for (i, (media, data)) in blobs.into_iter().enumerate() {
            let digest = format!("sha256:{:x}", Sha256::digest(&data));
            if i + 1 == n {
                let r = http.put(format!("{base}/manifests/{tag}")).header("Content-Type", media).body(data).send().await.unwrap();
                assert!(r.status().is_success(), "manifest push: {}", r.status());
                continue;
            }
            let r = http.post(format!("{base}/blobs/uploads/")).send().await.unwrap();
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let loc = if loc.starts_with("http") { loc } else { format!("http://127.0.0.1:{}{loc}", self.port) };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = http.put(format!("{loc}{sep}digest={digest}")).body(data).send().await.unwrap();
            assert!(r.status().is_success(), "blob push: {}", r.status());
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod(name: &str, image: &str, cmd: &[&str], policy: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": name}},
           "spec": {"nodeName": "knode", "restartPolicy": policy, "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "main", "image": image, "command": cmd}]}})
}

async fn status(c: &Cluster, name: &str) -> Value {
    c.get(&format!("{PODS}/{name}")).await.1
}

fn http_get(node: &Netns, ip: &str) -> String {
    let addr = format!("{ip}:8080");
    node.run(move || {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) else { return String::new() };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .join()
    .unwrap()
}

async fn start_kubelet(
    c: &Cluster,
    ctd: &Containerd,
    node: &Netns,
    state: &std::path::Path,
    port: u16,
    reg: &Registry,
) -> tokio::task::JoinHandle<()> {
    let cfg = kubelet::Config {
        node_name: "knode".into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".into(),
        state_dir: state.to_path_buf(),
        logs_dir: state.join("logs"),
        port,
        registries: Registries {
            insecure: vec![],
            mirrors: HashMap::from([("localhost:5000".into(), format!("http://127.0.0.1:{}", reg.port))]),
        },
        lease_renew: Duration::from_secs(2),
        netns: Some(node.name.clone()),
        dns: pkg::kubelet::dns::ClusterDns { servers: vec!["10.96.0.10".into()], domain: "cluster.local".into() },
        max_parallel_starts: kubelet::starts::default_parallel_starts(),
    };
    let k = Kubelet::start(kubelet::client_for(&c.base).unwrap(), ctd.runtime().await, cfg).await.expect("kubelet starts");
    tokio::spawn(k.run())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_runs_restarts_adopts_and_removes_pods() {
    let c = Cluster::start().await;
    let mut ctd = Containerd::start();
    let rt = ctd.runtime().await;
    let reg = Registry::start();
    let node = Netns::new("kn");
    let state = tempfile::tempdir().unwrap();
    import(&rt, "localhost:5000/busybox:local", busybox_image(&["sh"])).await;
    reg.push("pulled", "v1", busybox_image(&["sh", "-c", SERVE])).await;

    // The agent's own port, for logs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dbg = agent::debug::DebugState::default();
    let streaming = agent::streaming::Streaming {
        client: Client::new(&c.base),
        runtime: rt.clone(),
        state_dir: state.path().to_path_buf(),
        logs_dir: state.path().join("logs"),
    };
    tokio::spawn(async move { axum::serve(listener, agent::debug::router(dbg, Some(streaming))).await });

    let task = start_kubelet(&c, &ctd, &node, state.path(), port, &reg).await;
    let (_, n) = c.get("/api/v1/nodes/knode").await;
    assert_eq!(n["spec"]["podCIDR"], "10.244.0.0/24");

    c.create(PODS, pod("web", "localhost:5000/busybox:local", &["sh", "-c", SERVE], "Always")).await;
    c.create(PODS, pod("pulled", "localhost:5000/pulled:v1", &[], "Always")).await;
    c.create(PODS, pod("missing", "localhost:5000/nope:v1", &[], "Always")).await;
    c.create(PODS, pod("crash", "localhost:5000/busybox:local", &["sh", "-c", "echo started; sleep 1; exit 3"], "Always")).await;
    c.create(PODS, pod("once", "localhost:5000/busybox:local", &["sh", "-c", "echo done"], "Never")).await;

    let web = eventually(60, "web Running with an IP", || async {
        let p = status(&c, "web").await;
        (p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string() && p["status"]["conditions"].to_string().contains("Ready"))
            .then_some(p)
    })
    .await;
    let web_ip = web["status"]["podIP"].as_str().unwrap().to_string();
    assert!(web_ip.starts_with("10.244.0."), "{web_ip}");
    assert!(eventually(20, "web answers", || async {
        let b = http_get(&node, &web_ip);
        b.contains("HOSTNAME:web").then_some(b)
    })
    .await
    .contains("HOSTNAME:web"));

    // dnsPolicy ClusterFirst (the default): the cluster DNS and the search path.
    let uid = web["metadata"]["uid"].as_str().unwrap();
    let resolv = std::fs::read_to_string(kubelet::pod_dir(state.path(), uid).join("resolv.conf")).unwrap();
    assert!(resolv.starts_with("nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.ends_with("options ndots:5\n"), "{resolv}");

    // Pulled from the registry (through the mirror), runs the image's own command.
    let pulled = eventually(60, "pulled Running", || async {
        let p = status(&c, "pulled").await;
        (p["status"]["phase"] == "Running").then_some(p)
    })
    .await;
    let pip = pulled["status"]["podIP"].as_str().unwrap().to_string();
    assert_ne!(pip, web_ip);
    assert!(!eventually(20, "pulled answers", || async {
        let b = http_get(&node, &pip);
        b.contains("HOSTNAME:pulled").then_some(b)
    })
    .await
    .is_empty());

    // A missing image: Pending, with the reason.
    let missing = eventually(30, "ErrImagePull", || async {
        let p = status(&c, "missing").await;
        let r = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str().unwrap_or("").to_string();
        (r == "ErrImagePull" || r == "ImagePullBackOff").then_some(p)
    })
    .await;
    assert_eq!(missing["status"]["phase"], "Pending");
    assert!(missing["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap().contains("not found"), "{missing}");

    // Always: a container that exits is restarted; Never: it stays done.
    eventually(60, "crash restarted", || async {
        (status(&c, "crash").await["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    eventually(30, "once Succeeded", || async { (status(&c, "once").await["status"]["phase"] == "Succeeded").then_some(()) }).await;
    // Logs, through the apiserver and the agent.
    let r = c.http.get(c.url(&format!("{PODS}/crash/log"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("started"));

    // A killed container is restarted under Always.
    let web_uid = web["metadata"]["uid"].as_str().unwrap().to_string();
    let web_id = kubelet::container_id(&web_uid, "main");
    rt.kill(&web_id, 9).await.unwrap();
    eventually(30, "web restarted", || async {
        let p = status(&c, "web").await;
        (p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1) && p["status"]["phase"] == "Running").then_some(())
    })
    .await;
    eventually(20, "web answers again", || async { http_get(&node, &web_ip).contains("HOSTNAME:web").then_some(()) }).await;

    // Its process killed while containerd is down for 3 s: the kubelet's event stream is
    // gone, yet the container is restarted long before the minute's resync would (by the
    // shim's exit event once containerd is back, or by the pass over every pod that follows
    // the stream's return; this test does not tell which came first).
    let TaskState::Running { pid } = rt.task_state(&web_id).await.unwrap() else { panic!("web not running") };
    ctd.stop();
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctd.start_again();
    assert!(killed.success());
    eventually(20, "web restarted after containerd's restart", || async {
        let p = status(&c, "web").await;
        (p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(2) && p["status"]["phase"] == "Running").then_some(())
    })
    .await;
    eventually(20, "web answers again", || async { http_get(&node, &web_ip).contains("HOSTNAME:web").then_some(()) }).await;

    // Restart the agent: pods keep running (same task, same IP), nothing is duplicated.
    let TaskState::Running { pid: before } = rt.task_state(&web_id).await.unwrap() else { panic!("web not running") };
    let restarts_before = status(&c, "web").await["status"]["containerStatuses"][0]["restartCount"].clone();
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = network::connect_in(&std::path::Path::new(network::NETNS_DIR).join(&node.name)).await.unwrap();
    let veths_before = network::pod_veths(&h).await.unwrap().len();
    let task = start_kubelet(&c, &ctd, &node, state.path(), port, &reg).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rt.task_state(&web_id).await.unwrap(), TaskState::Running { pid: before }, "adopted, not restarted");
    let web2 = status(&c, "web").await;
    assert_eq!(web2["status"]["podIP"], web_ip.as_str());
    assert_eq!(web2["status"]["containerStatuses"][0]["restartCount"], restarts_before);
    assert_eq!(network::pod_veths(&h).await.unwrap().len(), veths_before, "no duplicate links");
    assert!(http_get(&node, &web_ip).contains("HOSTNAME:web"));

    // Delete: SIGTERM, grace, SIGKILL; then nothing of the pod is left.
    assert_eq!(c.delete(&format!("{PODS}/web")).await.0, 200);
    eventually(30, "web gone", || async { (c.get(&format!("{PODS}/web")).await.0 == 404).then_some(()) }).await;
    assert_eq!(rt.task_state(&web_id).await.unwrap(), TaskState::Missing);
    assert!(!rt.list().await.unwrap().iter().any(|(id, _)| *id == web_id), "container left");
    assert!(!rt.snapshot_keys().await.unwrap().contains(&web_id), "snapshot left");
    let ns_name = kubelet::netns_name(&web_uid);
    assert!(!network::pod_veths(&h).await.unwrap().contains(&network::host_veth(&ns_name)), "veth left");
    assert!(!std::path::Path::new(network::NETNS_DIR).join(&ns_name).exists(), "netns left");
    assert!(
        !std::fs::read_dir(state.path().join("ipam"))
            .unwrap()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
            .any(|f| std::fs::read_to_string(f.path()).unwrap_or_default() == web_uid),
        "IP not released"
    );

    // Clean up: delete the rest at once; the agent removes what they left.
    for name in ["pulled", "missing", "crash", "once"] {
        c.http.delete(c.url(&format!("{PODS}/{name}?gracePeriodSeconds=0"))).send().await.unwrap();
    }
    eventually(30, "all pods' resources released", || async { rt.list().await.unwrap().is_empty().then_some(()) }).await;
    eventually(10, "all netns released", || async {
        let left =
            std::fs::read_dir(network::NETNS_DIR).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("ownkube-"));
        (!left).then_some(())
    })
    .await;
    task.abort();
}
