//! The proxy's whole loop: a real apiserver (on a real etcd), the agent's informers, and
//! iptables in a throwaway network namespace. A Service and ready pods created through the
//! API become reachable from a client; deleting the service removes its chains.

#[path = "../../apiserver/tests/common/mod.rs"]
mod common;
mod netns;

use agent::client::Client;
use agent::proxy::{iptables::Runner, Proxier};
use common::Cluster;
use netns::*;
use serde_json::json;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn try_get(lab: &Lab, target: &'static str) -> Option<String> {
    lab.client
        .run(move || {
            let mut s = TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_millis(500)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut who = String::new();
            s.read_to_string(&mut who).ok()?;
            Some(who)
        })
        .join()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_from_the_api_become_reachable() {
    let lab = Lab::new(2);
    for (i, b) in lab.backends.iter().enumerate() {
        let name = format!("pod-{i}");
        let l = b.run(|| TcpListener::bind("0.0.0.0:8080").unwrap()).join().unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                use std::io::Write;
                let _ = s.write_all(name.as_bytes());
            }
        });
    }
    let c = Cluster::start().await;
    let proxier = Proxier::new(Runner::in_netns(&lab.node.name), "10.244.0.0/16");
    let stats = proxier.stats.clone();
    let loop_task = tokio::spawn(agent::proxy::run(
        Client::new(&c.base),
        proxier,
        agent::proxy::Timing::every(Duration::from_secs(30)),
        Default::default(),
    ));

    c.create(
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.80", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}}),
    )
    .await;
    // Two pods, as their kubelet would report them: Running, Ready, with the backends' IPs.
    for i in 0..2 {
        let mut p = common::pod(&format!("pod-{i}"), json!({"app": "web"}));
        p["spec"]["nodeName"] = json!("node1");
        p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}]);
        let mut p = c.create("/api/v1/namespaces/default/pods", p).await;
        p["status"] = json!({"phase": "Running", "podIP": Lab::backend_ip(i), "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(c.put(&format!("/api/v1/namespaces/default/pods/pod-{i}/status"), &p).await.0, 200);
    }
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "service never reached both pods: {seen:?}");
        for target in ["10.96.0.80:80", "10.99.0.1:30080"] {
            if let Some(who) = try_get(&lab, target) {
                seen.insert(who);
            }
        }
    }
    let st = stats.lock().unwrap().clone();
    assert!(st.syncs >= 1 && st.last_ruleset.contains("default/web:http"), "{st:?}");

    // Deleting the service removes its chains.
    c.delete("/api/v1/namespaces/default/services/web").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, nat) = exec(&lab.node.name, &["iptables-save", "-t", "nat"]);
        if !nat.contains("default/web") {
            assert!(!nat.contains(":KUBE-SVC-") && !nat.contains(":KUBE-SEP-"), "{nat}");
            break;
        }
        assert!(Instant::now() < deadline, "chains of the deleted service remain:\n{nat}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(try_get(&lab, "10.99.0.1:30080").is_none());
    loop_task.abort();
}
