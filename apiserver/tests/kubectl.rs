//! A real, unmodified kubectl against the apiserver. Uses `$KUBECTL`, else the Google
//! Cloud SDK's kubectl 1.32, else `kubectl` on the PATH; without any, the test says so and
//! passes (the README tells how to get one).

mod common;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kubectl_path() -> Option<String> {
    let candidates = [std::env::var("KUBECTL").ok(), Some("/usr/lib/google-cloud-sdk/bin/kubectl.1.32".into()), Some("kubectl".into())];
    candidates.into_iter().flatten().find(|k| Command::new(k).args(["version", "--client"]).output().is_ok_and(|o| o.status.success()))
}

struct Kubectl {
    bin: String,
    server: String,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("KUBECONFIG", "/dev/null").args(["--server", &self.server, "--cache-dir"]).arg(self.cache.path()).args(args);
        c
    }
    /// Run and return stdout; fail the test on a non-zero exit.
    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        let (so, se) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "kubectl {args:?} failed:\n{so}\n{se}");
        so
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_unmodified() {
    let Some(bin) = kubectl_path() else {
        eprintln!("no kubectl found: skipping (set KUBECTL=/path/to/kubectl)");
        return;
    };
    let c = Cluster::start().await;
    let k = Kubectl { bin, server: c.base.clone(), cache: tempfile::tempdir().unwrap() };
    c.ready_node("node1", "172.30.0.11", json!({})).await;
    c.create(
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30001}]}}),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  labels:\n    app: web\nspec:\n  containers:\n  - name: whoami\n    image: localhost:5000/whoami:latest\n    ports:\n    - containerPort: 8080\n    resources:\n      limits:\n        memory: 64Mi\n",
    )
    .unwrap();
    let out = k.run(&["create", "-f", manifest.to_str().unwrap()]);
    assert_eq!(out.trim(), "pod/web-1 created");

    let out = k.run(&["get", "pods,svc,nodes"]);
    assert!(out.contains("pod/web-1"), "{out}");
    assert!(out.contains("service/web") && out.contains("80:30001/TCP"), "{out}");
    assert!(out.contains("node/node1") && out.contains("Ready"), "{out}");

    // The scheduler binds the pod to the only node; -o wide shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = k.run(&["get", "pods", "-o", "wide"]);
        assert!(out.contains("NODE") && out.contains("IP"), "{out}");
        if out.lines().any(|l| l.starts_with("web-1") && l.contains("node1")) {
            break;
        }
        assert!(Instant::now() < deadline, "web-1 never showed on node1:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = k.run(&["get", "nodes", "-o", "wide"]);
    assert!(out.contains("INTERNAL-IP") && out.contains("172.30.0.11"), "{out}");
    let out = k.run(&["get", "svc", "-o", "wide"]);
    assert!(out.contains("SELECTOR") && out.contains("app=web"), "{out}");

    let out = k.run(&["get", "pod", "web-1", "-o", "yaml"]);
    assert!(out.contains("name: web-1") && out.contains("memory: 64Mi") && out.contains("nodeName: node1"), "{out}");

    let out = k.run(&["get", "pods", "-A"]);
    assert!(out.starts_with("NAMESPACE") && out.contains("default"), "{out}");

    // `get pods -w` prints changes as they happen.
    let mut watch = k.cmd(&["get", "pods", "-w"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |pred: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("kubectl get -w did not print the expected line"),
            }
        }
    };
    wait_line(&|l| l.starts_with("web-1"));
    c.create("/api/v1/namespaces/default/pods", pod("web-2", json!({"app": "web"}))).await;
    wait_line(&|l| l.starts_with("web-2"));
    let _ = watch.kill();
    let _ = watch.wait();

    // delete pod NAME: the pod is bound to node1, whose kubelet would finish the graceful
    // delete; kubectl waits for that, so here the test plays the kubelet.
    let del =
        k.cmd(&["delete", "pod", "web-2", "--grace-period=0", "--force"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = tokio::task::spawn_blocking(move || del.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod \"web-2\" force deleted"));
    let out = k.cmd(&["get", "pod", "web-2"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&out.stderr));

    // A plain (graceful) delete of an unbound pod completes at once.
    c.create("/api/v1/namespaces/default/pods", {
        let mut p = pod("lonely", json!({}));
        p["spec"]["nodeSelector"] = json!({"nowhere": "true"});
        p
    })
    .await;
    let out = k.run(&["delete", "pod", "lonely"]);
    assert_eq!(out.trim(), "pod \"lonely\" deleted");
}
