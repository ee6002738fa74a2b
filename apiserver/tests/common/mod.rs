//! Test harness: a real etcd (Debian's `etcd-server`) on free loopback ports with a
//! temporary data dir, and an apiserver in this process talking to it.
#![allow(dead_code)]

use apiserver::{Config, Server};
use serde_json::Value;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port for a test server: free now (TCP and UDP), never handed out twice by
/// this process, and below the kernel's ephemeral range (32768-60999 by default). So no
/// `bind(0)` and no outgoing connection's local port can take it while its server is
/// stopped, as [`Etcd::restart`] needs (a port from `bind(0)` can come back as any other
/// socket's meanwhile, and then the restarted etcd cannot listen).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 10_000; // 20000-29999: under the ephemeral range and the NodePort range
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries that run at the same time start at different places.
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Why [`Etcd::spawn`] gave up: etcd exited (`exited`), or never listened.
struct NotStarted {
    exited: bool,
    why: String,
}

/// A throwaway etcd; killed (and its data removed) on drop.
pub struct Etcd {
    pub url: String,
    peer_port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Etcd {
    /// A port from [`free_port`] is released before etcd binds it, and a neighbour test's
    /// connection may take it meanwhile as its source port (CI saw "etcd did not start"):
    /// if etcd exits at once, it is started again on other ports.
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Etcd { url: String::new(), peer_port: 0, child: None, dir };
        for attempt in 1.. {
            let (port, peer_port) = (free_port(), free_port());
            (e.url, e.peer_port) = (format!("http://127.0.0.1:{port}"), peer_port);
            match e.spawn() {
                Ok(()) => break,
                Err(NotStarted { exited: true, why }) if attempt < 5 => eprintln!("etcd on port {port} exited; trying other ports: {why}"),
                Err(NotStarted { why, .. }) => panic!("{why}"),
            }
        }
        e
    }

    /// Start (again) on the same port and data dir.
    pub fn restart(&mut self) {
        if let Err(NotStarted { why, .. }) = self.spawn() {
            panic!("{why}");
        }
    }

    /// Start etcd and wait until it listens. Its log goes to `etcd.log` in its temporary
    /// dir; if it exits or never listens, the error holds the log's end.
    fn spawn(&mut self) -> Result<(), NotStarted> {
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let mut child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url, "--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", self.peer_port)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", self.peer_port)])
            .args(["--initial-cluster", &format!("test=http://127.0.0.1:{}", self.peer_port)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (Debian: apt-get install etcd-server; scripts/test does it)");
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&addr).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let why = format!("etcd did not start on {addr} (exit: {exited:?}); the end of its log:\n{}", tail.join("\n"));
                return Err(NotStarted { exited: exited.is_some(), why });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The etcd process (to stop it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is running").id()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn config(etcd: &Etcd) -> Config {
    use clap::Parser;
    let mut cfg = Config::parse_from(["apiserver"]);
    cfg.etcd_servers = vec![etcd.url.clone()];
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.etcd_timeout = Duration::from_secs(2);
    cfg
}

/// The longest a test binary that starts a cluster may run (the longest takes ~40 s).
pub const WATCHDOG_SECS: u64 = 600;

/// End this test binary, saying why, if it still runs `secs` from now. A test that hangs
/// fails instead of holding CI until its own time limit: a thread blocked for good (an
/// open of a FIFO nobody opens, say) keeps a tokio runtime from shutting down, so a test
/// whose every assertion passed never returns.
pub fn watchdog(secs: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("watchdog: this test binary still runs {secs} s after a cluster started: ending it (exit 124)");
        std::process::exit(124);
    });
}

/// etcd + apiserver + an HTTP client pointed at it.
pub struct Cluster {
    pub etcd: Etcd,
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Cluster {
        watchdog(WATCHDOG_SECS);
        let etcd = Etcd::start();
        let mut cfg = config(&etcd);
        tweak(&mut cfg);
        let server = Server::start(cfg).await.expect("apiserver starts");
        let base = format!("http://{}", server.addr);
        Cluster { etcd, server, base, http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(self.url(path)).json(body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.put(self.url(path)).json(body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// POST and insist on 201.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (code, v) = self.post(path, &body).await;
        assert_eq!(code, 201, "create {path}: {v}");
        v
    }

    /// Register a Ready node the way an agent does: create it, then post its status.
    pub async fn ready_node(&self, name: &str, ip: &str, labels: Value) -> Value {
        let node = self.create("/api/v1/nodes", serde_json::json!({"metadata": {"name": name, "labels": labels}})).await;
        self.heartbeat(name, ip).await;
        node
    }

    pub async fn heartbeat(&self, name: &str, ip: &str) -> Value {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (code, v) = self
            .put(
                &format!("/api/v1/nodes/{name}/status"),
                &serde_json::json!({"metadata": {"name": name}, "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now}]
                }}),
            )
            .await;
        assert_eq!(code, 200, "{v}");
        v
    }
}

/// Poll `f` until it returns Some, or fail after `secs`.
/// A request with a body of this content type; the code and the JSON answer (null if none).
pub async fn send(c: &Cluster, method: &str, path: &str, ct: &str, body: &str) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = c.http.request(m, c.url(path)).header("Content-Type", ct).body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(secs: u64, what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn pod(name: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "localhost:5000/whoami:latest", "ports": [{"name": "http", "containerPort": 8080}]}]}
    })
}

/// Every kubectl this machine has: `/usr/lib/google-cloud-sdk/bin/kubectl.1.*`, `$KUBECTL`,
/// or `kubectl` on the PATH.
/// `OWNKUBE_KUBECTL=/path` runs only that one (for a quick look at one version).
pub fn kubectls() -> Vec<String> {
    if let Ok(only) = std::env::var("OWNKUBE_KUBECTL") {
        return vec![only];
    }
    let mut found: Vec<String> = std::fs::read_dir("/usr/lib/google-cloud-sdk/bin")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with("kubectl.1.")))
        .collect();
    found.sort();
    found.extend(std::env::var("KUBECTL").ok());
    if found.is_empty() && std::process::Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success()) {
        found.push("kubectl".into());
    }
    found
}
