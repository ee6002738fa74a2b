//! The controllers against a real etcd: endpoints and EndpointSlices, scheduler (with its
//! events), node lifecycle.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PODS: &str = "/api/v1/namespaces/default/pods";

/// Play the kubelet: mark a pod Running (ready or not) with an IP.
async fn set_running(c: &Cluster, name: &str, ip: &str, ready: bool) {
    let (_, mut p) = c.get(&format!("{PODS}/{name}")).await;
    p["status"]["phase"] = json!("Running");
    p["status"]["podIP"] = json!(ip);
    p["status"]["conditions"] = json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
    let (code, v) = c.put(&format!("{PODS}/{name}/status"), &p).await;
    assert_eq!(code, 200, "{v}");
}

async fn endpoint_ips(c: &Cluster, svc: &str) -> Vec<String> {
    let (code, ep) = c.get(&format!("/api/v1/namespaces/default/endpoints/{svc}")).await;
    if code != 200 {
        return vec![];
    }
    let mut ips: Vec<String> = ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips
}

async fn wait_ips(c: &Cluster, svc: &str, want: &[&str]) -> Value {
    eventually(10, &format!("endpoints {svc} = {want:?}"), || async { (endpoint_ips(c, svc).await == want).then_some(()) }).await;
    c.get(&format!("/api/v1/namespaces/default/endpoints/{svc}")).await.1
}

#[tokio::test]
async fn endpoints_follow_pods_and_services() {
    let c = Cluster::start().await;
    for (n, labels) in
        [("a", json!({"app": "web", "tier": "front"})), ("b", json!({"app": "web", "tier": "front"})), ("c", json!({"app": "web"}))]
    {
        let mut p = pod(n, labels);
        p["spec"]["nodeName"] = json!("node1");
        c.create(PODS, p).await;
    }
    c.create(
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "web", "labels": {"team": "blue"}}, "spec": {"selector": {"app": "web", "tier": "front"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await;
    // No pod is ready yet: the Endpoints object exists and is empty.
    let ep = eventually(10, "an Endpoints object", || async {
        let (code, v) = c.get("/api/v1/namespaces/default/endpoints/web").await;
        (code == 200).then_some(v)
    })
    .await;
    assert_eq!(ep["metadata"]["labels"]["team"], "blue");
    assert_eq!(endpoint_ips(&c, "web").await, Vec::<String>::new());

    set_running(&c, "a", "10.244.0.10", true).await;
    set_running(&c, "c", "10.244.0.12", true).await; // does not match the whole selector
    let ep = wait_ips(&c, "web", &["10.244.0.10"]).await;
    let s = &ep["subsets"][0];
    assert_eq!(s["ports"][0], json!({"name": "http", "port": 8080, "protocol": "TCP"}), "named port resolved");
    assert_eq!(s["addresses"][0]["nodeName"], "node1");
    assert_eq!(s["addresses"][0]["targetRef"]["name"], "a");

    // Running but not ready: listed as not ready only.
    set_running(&c, "b", "10.244.0.11", false).await;
    let ep = eventually(10, "b among notReadyAddresses", || async {
        let (_, v) = c.get("/api/v1/namespaces/default/endpoints/web").await;
        (v["subsets"][0]["notReadyAddresses"][0]["ip"] == "10.244.0.11").then_some(v)
    })
    .await;
    assert_eq!(ep["subsets"][0]["addresses"].as_array().unwrap().len(), 1);
    set_running(&c, "b", "10.244.0.11", true).await;
    wait_ips(&c, "web", &["10.244.0.10", "10.244.0.11"]).await;

    // A pod that stops being ready, loses its label or is deleted leaves.
    set_running(&c, "a", "10.244.0.10", false).await;
    wait_ips(&c, "web", &["10.244.0.11"]).await;
    let r = c.http.delete(c.url(&format!("{PODS}/b?gracePeriodSeconds=0"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    wait_ips(&c, "web", &[]).await;

    // The service changes its selector: the endpoints follow.
    let (_, mut svc) = c.get("/api/v1/namespaces/default/services/web").await;
    svc["spec"]["selector"] = json!({"app": "web"});
    assert_eq!(c.put("/api/v1/namespaces/default/services/web", &svc).await.0, 200);
    wait_ips(&c, "web", &["10.244.0.12"]).await;

    // Deleting the service deletes its Endpoints.
    c.delete("/api/v1/namespaces/default/services/web").await;
    eventually(10, "endpoints to go", || async { (c.get("/api/v1/namespaces/default/endpoints/web").await.0 == 404).then_some(()) }).await;
}

/// The service's slices' endpoints: (ip, ready, serving, terminating), sorted.
async fn slice_endpoints(c: &Cluster, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let (_, list) =
        c.get(&format!("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name={svc}")).await;
    let mut out: Vec<_> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let c = &e["conditions"];
            (e["addresses"][0].as_str().unwrap().to_string(), c["ready"] == true, c["serving"] == true, c["terminating"] == true)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn endpointslices_say_ready_serving_and_terminating() {
    let c = Cluster::start().await;
    c.ready_node("node1", "172.30.0.11", json!({})).await;
    for n in ["a", "b"] {
        let mut p = pod(n, json!({"app": "api"}));
        p["spec"]["nodeName"] = json!("node1");
        c.create(PODS, p).await;
        set_running(&c, n, if n == "a" { "10.244.0.20" } else { "10.244.0.21" }, true).await;
    }
    c.create("/api/v1/namespaces/default/services", json!({"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})).await;
    let both = vec![("10.244.0.20".to_string(), true, true, false), ("10.244.0.21".to_string(), true, true, false)];
    eventually(10, "two ready endpoints", || async { (slice_endpoints(&c, "api").await == both).then_some(()) }).await;
    let (_, list) = c.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").await;
    let slice = &list["items"][0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"][0], json!({"name": "http", "port": 8080, "protocol": "TCP"}));
    assert_eq!(slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(slice["endpoints"][0]["targetRef"]["kind"], "Pod");

    // Deleted (gracefully: it is on a node): terminating, still serving while it says ready.
    assert_eq!(c.delete(&format!("{PODS}/b")).await.0, 200);
    let draining = ("10.244.0.21".to_string(), false, true, true);
    eventually(10, "b terminating but serving", || async { (slice_endpoints(&c, "api").await.contains(&draining)).then_some(()) }).await;
    // Its readiness probe then fails (whoami's drain): no longer serving either.
    set_running(&c, "b", "10.244.0.21", false).await;
    let gone = ("10.244.0.21".to_string(), false, false, true);
    eventually(10, "b terminating, not serving", || async { (slice_endpoints(&c, "api").await.contains(&gone)).then_some(()) }).await;
    // The service goes: its slices are collected with it.
    c.delete("/api/v1/namespaces/default/services/api").await;
    eventually(10, "slices to go", || async { slice_endpoints(&c, "api").await.is_empty().then_some(()) }).await;
}

#[tokio::test]
async fn scheduler_places_pods() {
    let c = Cluster::start().await;
    // No node yet: the pod waits, and says why.
    c.create(PODS, pod("early", json!({}))).await;
    let p = eventually(10, "PodScheduled=False", || async {
        let (_, p) = c.get(&format!("{PODS}/early")).await;
        (p["status"]["conditions"][0]["reason"] == "Unschedulable").then_some(p)
    })
    .await;
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(p["status"]["conditions"][0]["message"].as_str().unwrap().contains("0/0 nodes"));

    c.ready_node("node1", "172.30.0.11", json!({"disk": "hdd"})).await;
    c.ready_node("node2", "172.30.0.12", json!({"disk": "ssd"})).await;
    // A node that is registered but not Ready takes nothing.
    c.create("/api/v1/nodes", json!({"metadata": {"name": "node3"}})).await;
    let node_of = |name: String| {
        let c = &c;
        async move {
            eventually(10, &format!("{name} bound"), || async {
                let (_, p) = c.get(&format!("{PODS}/{name}")).await;
                p["spec"]["nodeName"].as_str().map(String::from)
            })
            .await
        }
    };
    let first = node_of("early".into()).await;
    assert!(first == "node1" || first == "node2");
    for i in 0..5 {
        c.create(PODS, pod(&format!("p{i}"), json!({}))).await;
    }
    let mut counts = std::collections::HashMap::new();
    *counts.entry(first).or_insert(0) += 1;
    for i in 0..5 {
        *counts.entry(node_of(format!("p{i}")).await).or_insert(0) += 1;
    }
    assert_eq!((counts.get("node1"), counts.get("node2")), (Some(&3), Some(&3)), "spread evenly: {counts:?}");
    assert!(!counts.contains_key("node3"));

    // nodeSelector is honoured, even against the balance.
    for i in 0..3 {
        let mut p = pod(&format!("ssd{i}"), json!({}));
        p["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        c.create(PODS, p).await;
        assert_eq!(node_of(format!("ssd{i}")).await, "node2");
    }
    let (_, p) = c.get(&format!("{PODS}/ssd0")).await;
    assert!(p["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "True"));

    // A selector no node matches: Pending with the reason.
    let mut p = pod("gpu", json!({}));
    p["spec"]["nodeSelector"] = json!({"gpu": "yes"});
    c.create(PODS, p).await;
    let p = eventually(10, "gpu unschedulable", || async {
        let (_, p) = c.get(&format!("{PODS}/gpu")).await;
        (p["status"]["conditions"][0]["reason"] == "Unschedulable").then_some(p)
    })
    .await;
    assert!(p["spec"]["nodeName"].is_null());
    let msg = p["status"]["conditions"][0]["message"].as_str().unwrap();
    assert!(msg.contains("didn't match Pod's node affinity/selector") && msg.contains("not ready"), "{msg}");

    // The scheduler's events, as `kubectl describe pod` shows them.
    eventually(10, "Scheduled and FailedScheduling events", || async {
        let (_, events) = c.get("/api/v1/namespaces/default/events").await;
        let has = |name: &str, reason: &str| {
            events["items"].as_array().into_iter().flatten().any(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
        };
        (has("ssd0", "Scheduled") && has("gpu", "FailedScheduling")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn nodes_without_heartbeats_become_not_ready() {
    let c = Cluster::start_with(|cfg| cfg.node_monitor_grace_period = Duration::from_secs(2)).await;
    c.ready_node("node1", "172.30.0.11", json!({})).await;
    c.ready_node("node2", "172.30.0.12", json!({})).await;
    c.ready_node("node3", "172.30.0.13", json!({})).await;
    // node1 keeps beating through its status, node3 through its Lease; node2 falls silent.
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let renew = |i: i64| {
        let body = json!({"metadata": {"name": "node3"}, "spec": {"holderIdentity": "node3", "leaseDurationSeconds": 40, "renewTime": format!("2026-12-01T10:00:{i:02}.000000Z")}});
        let c = &c;
        async move {
            if c.post(LEASES, &body).await.0 == 409 {
                let (_, mut l) = c.get(&format!("{LEASES}/node3")).await;
                l["spec"] = body["spec"].clone();
                c.put(&format!("{LEASES}/node3"), &l).await;
            }
        }
    };
    let ready = |n: &Value| n["status"]["conditions"][0]["status"].as_str().map(String::from);
    let beats = async {
        for i in 0..12 {
            c.heartbeat("node1", "172.30.0.11").await;
            renew(i).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    beats.await;
    let (_, n1) = c.get("/api/v1/nodes/node1").await;
    let (_, n2) = c.get("/api/v1/nodes/node2").await;
    assert_eq!(ready(&n1).as_deref(), Some("True"));
    assert_eq!(ready(&c.get("/api/v1/nodes/node3").await.1).as_deref(), Some("True"), "a renewed Lease is a heartbeat");
    assert_eq!(ready(&n2).as_deref(), Some("Unknown"), "{n2}");
    assert_eq!(n2["status"]["conditions"][0]["reason"], "NodeStatusUnknown");
    // The node keeps its CIDR and becomes Ready again when it beats again.
    c.heartbeat("node2", "172.30.0.12").await;
    let (_, n2b) = c.get("/api/v1/nodes/node2").await;
    assert_eq!(ready(&n2b).as_deref(), Some("True"));
    assert_eq!(n2b["spec"]["podCIDR"], n2["spec"]["podCIDR"]);
}

/// podgc's orphan sweep: a node deleted takes its pods with it (a removed lab node's pods
/// would otherwise stay Running in the API for ever), while a pod bound to a node name
/// never seen waits out the quarantine (its node may still be registering).
#[tokio::test]
async fn pods_of_a_deleted_node_are_deleted() {
    let c = Cluster::start_with(|cfg| cfg.node_monitor_grace_period = Duration::from_secs(2)).await;
    c.ready_node("node3", "172.30.0.13", json!({})).await;
    let pod = |name: &str, node: &str| json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}});
    assert_eq!(c.post(PODS, &pod("on-node3", "node3")).await.0, 201);
    assert_eq!(c.post(PODS, &pod("on-node9", "node9")).await.0, 201);
    // The controller sees node3 before it goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.http.delete(c.url("/api/v1/nodes/node3")).send().await.unwrap().status(), 200);
    eventually(10, "the deleted node's pod to be deleted", || async { (c.get(&format!("{PODS}/on-node3")).await.0 == 404).then_some(()) })
        .await;
    assert_eq!(c.get(&format!("{PODS}/on-node9")).await.0, 200, "a node never seen is quarantined first");
}
