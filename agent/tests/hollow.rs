//! Hollow nodes against a real apiserver on a real etcd: three of them in this process
//! register, renew their Leases, run a Deployment's pods (Running, with addresses from
//! their own pod CIDRs, in the Service's endpoints), have their proxies render those
//! endpoints, and stop the pods again when the Deployment goes — all through the real
//! kubelet and proxy loops, with nothing run on the machine.

#[path = "../../apiserver/tests/common/mod.rs"]
mod common;

use agent::hollow::{self, Hollow};
use agent::proxy::Mode;
use common::{eventually, Cluster};
use serde_json::{json, Value};
use std::time::Duration;

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let c: pkg::alloc::Cidr = cidr.parse().unwrap();
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let mask = u32::MAX.checked_shl(32 - c.prefix as u32).unwrap_or(0);
    u32::from(ip) & mask == u32::from(c.addr) & mask
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_run_a_deployment_through_the_real_loops() {
    let c = Cluster::start().await;
    let state = tempfile::tempdir().unwrap();
    let h = Hollow {
        apiserver: c.base.clone(),
        count: 3,
        first: 0,
        prefix: "hollow-".into(),
        state_root: state.path().to_path_buf(),
        cluster_cidr: "10.244.0.0/16".into(),
        proxy_mode: Mode::Nftables,
        proxy_resync: Duration::from_secs(30),
        proxy_min_sync: Duration::from_millis(200),
        proxies: None,
    };
    tokio::spawn(hollow::run(h));
    // Registered, Ready, and each with a Lease.
    let nodes: Vec<Value> = eventually(30, "3 Ready hollow nodes", || async {
        let (_, l) = c.get("/api/v1/nodes").await;
        let items = l["items"].as_array().cloned().unwrap_or_default();
        let ready = |n: &Value| {
            n["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        (items.len() == 3 && items.iter().all(ready)).then_some(items)
    })
    .await;
    assert_eq!(nodes[0]["metadata"]["name"], "hollow-0000");
    assert_eq!(nodes[0]["status"]["addresses"][0]["address"], "198.18.0.1");
    for n in ["hollow-0000", "hollow-0001", "hollow-0002"] {
        eventually(15, "a Lease", || async {
            (c.get(&format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{n}")).await.0 == 200).then_some(())
        })
        .await;
    }
    let cidrs: std::collections::HashMap<String, String> = nodes
        .iter()
        .map(|n| (n["metadata"]["name"].as_str().unwrap().to_string(), n["spec"]["podCIDR"].as_str().unwrap().to_string()))
        .collect();

    let labels = json!({"app": "web"});
    c.create(
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "web"}, "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}}),
    )
    .await;
    let template = json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "whoami:1"}]}});
    c.create(
        "/apis/apps/v1/namespaces/default/deployments",
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 6, "selector": {"matchLabels": labels}, "template": template}}),
    )
    .await;

    // Every pod Running on a hollow node, with an address from that node's CIDR.
    let pods: Vec<Value> = eventually(60, "6 running pods", || async {
        let (_, l) = c.get("/api/v1/namespaces/default/pods").await;
        let items = l["items"].as_array().cloned().unwrap_or_default();
        let up = |p: &Value| p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true;
        (items.len() == 6 && items.iter().all(up)).then_some(items)
    })
    .await;
    for p in &pods {
        let node = p["spec"]["nodeName"].as_str().unwrap();
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(in_cidr(ip, &cidrs[node]), "{ip} is not in {node}'s {}", cidrs[node]);
    }
    // Ready endpoints for all six, which every hollow proxy has rendered.
    eventually(30, "6 ready endpoints", || async {
        let (_, l) =
            c.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb").await;
        let n: usize = l["items"]
            .as_array()?
            .iter()
            .map(|s| s["endpoints"].as_array().map_or(0, |e| e.iter().filter(|e| e["conditions"]["ready"] == true).count()))
            .sum();
        (n == 6).then_some(())
    })
    .await;
    // The kubelets told the pods' story.
    let (_, events) = c.get("/api/v1/namespaces/default/events").await;
    let reasons: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"Started"), "{reasons:?}");

    // Gone with the Deployment: the kubelets stop them (SIGTERM, exit 143) and remove them.
    c.delete("/apis/apps/v1/namespaces/default/deployments/web?propagationPolicy=Foreground").await;
    eventually(60, "no pods", || async {
        let (_, l) = c.get("/api/v1/namespaces/default/pods").await;
        l["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    // And the apiserver counted it all under kube-apiserver's metric names.
    let metrics = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        r#"resource="leases",scope="resource",subresource="",verb="APPLY""#,
        r#"resource="pods",scope="resource",subresource="status",verb="PATCH""#,
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle}");
    }
}
