//! The REST API against a real etcd: the object lifecycle, watch, selectors, consistency,
//! allocation and every error class.

mod common;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

const PODS: &str = "/api/v1/namespaces/default/pods";
const SVCS: &str = "/api/v1/namespaces/default/services";

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn create_get_list_replace_delete() {
    let c = Cluster::start().await;
    // The built-in namespaces exist from the start.
    let (_, nss) = c.get("/api/v1/namespaces").await;
    assert_eq!(names(&nss), ["default", "kube-node-lease", "kube-public", "kube-system"]);

    // JSON create, with fields ownkube does not use: kept as sent.
    let mut body = pod("web", json!({"app": "web"}));
    body["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "100m"}});
    body["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}});
    body["metadata"]["annotations"] = json!({"team": "blue"});
    let created = c.create(PODS, body).await;
    assert_eq!(created["status"]["phase"], "Pending");
    assert!(created["metadata"]["uid"].is_string());
    let rv: i64 = created["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(rv > 0);

    // The scheduler records that no node can take the pod (there are none).
    let got = eventually(10, "the scheduler's verdict", || async {
        let (code, v) = c.get(&format!("{PODS}/web")).await;
        assert_eq!(code, 200);
        (v["status"]["conditions"][0]["reason"] == "Unschedulable").then_some(v)
    })
    .await;
    assert_eq!(got["spec"]["containers"][0]["resources"]["limits"]["cpu"], "100m");
    assert_eq!(got["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"], 8080);
    assert_eq!(got["metadata"]["annotations"]["team"], "blue");
    assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);

    // YAML create.
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\n  labels: {app: db}\nspec:\n  containers:\n  - name: c\n    image: postgres\n    env: [{name: A, value: b}]\n";
    let r = c.http.post(c.url(PODS)).header("Content-Type", "application/yaml").body(yaml).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let db: Value = r.json().await.unwrap();
    assert_eq!(db["spec"]["containers"][0]["env"][0]["value"], "b");

    // Several YAML documents in one POST: each is created, the answer is a List.
    let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: m1}\nspec: {containers: [{name: c, image: x}]}\n---\nmetadata: {name: m2}\nspec: {containers: [{name: c, image: x}]}\n";
    let r = c.http.post(c.url(PODS)).header("Content-Type", "application/yaml").body(two).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let list: Value = r.json().await.unwrap();
    assert_eq!(names(&list), ["m1", "m2"]);
    // ... and one invalid document means none is created.
    let bad = "metadata: {name: m3}\nspec: {containers: [{name: c, image: x}]}\n---\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: x}]}\n";
    let r = c.http.post(c.url(PODS)).header("Content-Type", "application/yaml").body(bad).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(c.get(&format!("{PODS}/m3")).await.0, 404);
    for m in ["m1", "m2"] {
        c.delete(&format!("{PODS}/{m}")).await;
    }

    // YAML out when asked for.
    let r = c.http.get(c.url(&format!("{PODS}/db"))).header("Accept", "application/yaml").send().await.unwrap();
    assert!(r.text().await.unwrap().contains("image: postgres"));

    let (_, list) = c.get(PODS).await;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(names(&list), ["db", "web"]);
    let (_, all) = c.get("/api/v1/pods").await;
    assert_eq!(names(&all), ["db", "web"]);

    // Replace: the change is stored and the resourceVersion moves on; status is not
    // changed through the main resource.
    let mut changed = got.clone();
    changed["metadata"]["labels"]["version"] = json!("2");
    changed["status"]["phase"] = json!("Running");
    let (code, replaced) = c.put(&format!("{PODS}/web"), &changed).await;
    assert_eq!(code, 200, "{replaced}");
    assert_eq!(replaced["metadata"]["labels"]["version"], "2");
    assert_eq!(replaced["status"]["phase"], "Pending");
    assert_ne!(replaced["metadata"]["resourceVersion"], got["metadata"]["resourceVersion"]);

    // The status subresource changes only the status.
    let mut st = replaced.clone();
    st["status"]["phase"] = json!("Running");
    st["metadata"]["labels"] = json!({});
    let (code, after) = c.put(&format!("{PODS}/web/status"), &st).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"]["phase"], "Running");
    assert_eq!(after["metadata"]["labels"]["version"], "2");

    // Merge patch.
    let r = c
        .http
        .patch(c.url(&format!("{PODS}/web")))
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"metadata":{"labels":{"patched":"yes"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["metadata"]["labels"]["patched"], "yes");

    // Unbound pods are deleted at once.
    let (code, _) = c.delete(&format!("{PODS}/web")).await;
    assert_eq!(code, 200);
    let (code, st) = c.get(&format!("{PODS}/web")).await;
    assert_eq!(code, 404);
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["reason"], "NotFound");
}

#[tokio::test]
async fn pods_on_a_node_are_deleted_gracefully() {
    let c = Cluster::start().await;
    let mut p = pod("bound", json!({}));
    p["spec"]["nodeName"] = json!("node1");
    c.create(PODS, p).await;
    let (code, marked) = c.delete(&format!("{PODS}/bound")).await;
    assert_eq!(code, 200);
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "{marked}");
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(c.get(&format!("{PODS}/bound")).await.0, 200);
    // The kubelet finishes the delete with a grace period of 0.
    let r = c.http.delete(c.url(&format!("{PODS}/bound?gracePeriodSeconds=0"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.get(&format!("{PODS}/bound")).await.0, 404);
}

/// Read watch events (one JSON object per line) until `n` have arrived.
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<Value> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut out = vec![];
    let read = async {
        while out.len() < n {
            let chunk = stream.next().await.expect("watch stream ended").unwrap();
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                out.push(serde_json::from_slice(&line).unwrap());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("watch events in time");
    out
}

fn bound(mut p: Value) -> Value {
    p["spec"]["nodeName"] = json!("node1");
    p
}

#[tokio::test]
async fn watch_streams_changes_and_resumes() {
    let c = Cluster::start().await;
    let (_, list) = c.get(PODS).await;
    let rv0 = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let resp = c.http.get(c.url(&format!("{PODS}?watch=true&resourceVersion={rv0}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // Pods bound to a node, so that the scheduler does not write to them meanwhile.
    let a = c.create(PODS, bound(pod("a", json!({"app": "x"})))).await;
    let mut a2 = a.clone();
    a2["metadata"]["labels"]["more"] = json!("1");
    let (_, a2) = c.put(&format!("{PODS}/a"), &a2).await;
    c.delete(&format!("{PODS}/a?gracePeriodSeconds=0")).await;
    let evs = read_events(resp, 3).await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert_eq!(evs[0]["object"]["metadata"]["name"], "a");
    assert_eq!(evs[1]["object"]["metadata"]["labels"]["more"], "1");
    // DELETED carries the last state of the object.
    assert_eq!(evs[2]["object"]["metadata"]["labels"]["more"], "1");

    // Resume from the MODIFIED event's version: only what came after.
    let rv = a2["metadata"]["resourceVersion"].as_str().unwrap();
    let resp = c.http.get(c.url(&format!("{PODS}?watch=1&resourceVersion={rv}"))).send().await.unwrap();
    let evs = read_events(resp, 1).await;
    assert_eq!(evs[0]["type"], "DELETED");

    // Without a resourceVersion: current objects first, as ADDED.
    c.create(PODS, bound(pod("b", json!({})))).await;
    let resp = c.http.get(c.url(&format!("{PODS}?watch=true"))).send().await.unwrap();
    let evs = read_events(resp, 1).await;
    assert_eq!((evs[0]["type"].as_str(), evs[0]["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("b")));

    // Selectors apply to watches: a pod that starts matching is ADDED, one that stops is DELETED.
    let resp = c
        .http
        .get(c.url(&format!(
            "{PODS}?watch=true&labelSelector=tier%3Dfront&resourceVersion={}",
            c.get(PODS).await.1["metadata"]["resourceVersion"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    let (_, mut b) = c.get(&format!("{PODS}/b")).await;
    b["metadata"]["labels"] = json!({"tier": "front"});
    let (_, mut b) = c.put(&format!("{PODS}/b"), &b).await;
    b["metadata"]["labels"] = json!({"tier": "back"});
    c.put(&format!("{PODS}/b"), &b).await;
    let evs = read_events(resp, 2).await;
    assert_eq!(evs.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(), ["ADDED", "DELETED"]);

    // After etcd compacts, a watch from before the compaction — and before the watch
    // cache's window, which still serves recent revisions — is 410 Gone.
    let mut etcd = etcd_client::Client::connect([c.etcd.url.as_str()], None).await.unwrap();
    let now = etcd.get("/", None).await.unwrap().header().unwrap().revision();
    etcd.compact(now, None).await.unwrap();
    let (code, st) = c.get(&format!("{PODS}?watch=true&resourceVersion=1")).await;
    assert_eq!(code, 410, "{st}");
    assert_eq!(st["reason"], "Expired");
}

#[tokio::test]
async fn label_and_field_selectors() {
    let c = Cluster::start().await;
    c.create(PODS, pod("a", json!({"app": "web", "tier": "front"}))).await;
    c.create(PODS, pod("b", json!({"app": "web", "tier": "back"}))).await;
    c.create(PODS, pod("c", json!({"app": "db"}))).await;
    let mut d = pod("d", json!({}));
    d["spec"]["nodeName"] = json!("node1");
    c.create(PODS, d).await;
    for (sel, want) in [
        ("app=web", vec!["a", "b"]),
        ("app%3D%3Dweb,tier!%3Dback", vec!["a"]),
        ("tier!%3Dback", vec!["a", "c", "d"]),
        ("app%20in%20(web,db)", vec!["a", "b", "c"]),
        ("app%20notin%20(web)", vec!["c", "d"]),
        ("tier", vec!["a", "b"]),
        ("!tier", vec!["c", "d"]),
    ] {
        let (code, list) = c.get(&format!("{PODS}?labelSelector={sel}")).await;
        assert_eq!(code, 200, "{sel}: {list}");
        assert_eq!(names(&list), want, "labelSelector={sel}");
    }
    for (sel, want) in [
        ("metadata.name=b", vec!["b"]),
        ("spec.nodeName=node1", vec!["d"]),
        ("spec.nodeName=", vec!["a", "b", "c"]),
        ("status.phase=Pending", vec!["a", "b", "c", "d"]),
        ("status.phase!=Pending", vec![]),
    ] {
        let (_, list) = c.get(&format!("{PODS}?fieldSelector={sel}")).await;
        assert_eq!(names(&list), want, "fieldSelector={sel}");
    }
    let (code, st) = c.get(&format!("{PODS}?fieldSelector=spec.magic=x")).await;
    assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")));
    let (code, _) = c.get(&format!("{PODS}?labelSelector=a%20in%20b")).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn fifty_concurrent_services_get_distinct_ips_and_ports() {
    let c = Cluster::start().await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (http, url) = (c.http.clone(), c.url(SVCS));
            tokio::spawn(async move {
                let body = json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"type": "NodePort", "selector": {"app": "x"},
                    "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}});
                let r = http.post(url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 201);
                r.json::<Value>().await.unwrap()
            })
        })
        .collect();
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let svc = t.await.unwrap();
        assert!(ips.insert(svc["spec"]["clusterIP"].as_str().unwrap().to_string()), "duplicate ClusterIP");
        for p in svc["spec"]["ports"].as_array().unwrap() {
            let np = p["nodePort"].as_i64().unwrap();
            assert!((30000..=32767).contains(&np));
            assert!(ports.insert(np), "duplicate nodePort {np}");
            assert_eq!(p["targetPort"], p["port"], "targetPort defaults to port");
        }
    }
    assert_eq!((ips.len(), ports.len()), (50, 100));
    // Every allocation is recorded in etcd, one key each.
    let mut etcd = etcd_client::Client::connect([c.etcd.url.as_str()], None).await.unwrap();
    let opts = || Some(etcd_client::GetOptions::new().with_prefix().with_count_only());
    assert_eq!(etcd.get("/registry/ranges/serviceips/", opts()).await.unwrap().count(), 50);
    assert_eq!(etcd.get("/registry/ranges/servicenodeports/", opts()).await.unwrap().count(), 100);
}

#[tokio::test]
async fn requested_ip_and_port_are_honoured_and_freed() {
    let c = Cluster::start().await;
    let web = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.7.7", "selector": {"app": "web"},
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30001}]}});
    let svc = c.create(SVCS, web.clone()).await;
    assert_eq!(svc["spec"]["clusterIP"], "10.96.7.7");
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30001);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);

    // The same port for another service: 422 naming the field and the holder.
    let other = json!({"metadata": {"name": "other"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}});
    let (code, st) = c.post(SVCS, &other).await;
    assert_eq!(code, 422, "{st}");
    assert_eq!(st["reason"], "Invalid");
    assert_eq!(st["details"]["causes"][0]["field"], "spec.ports[0].nodePort");
    assert!(st["message"].as_str().unwrap().contains("default/web"), "{st}");
    // Nothing half-written: "other" does not exist.
    assert_eq!(c.get(&format!("{SVCS}/other")).await.0, 404);
    let (code, st) = c.post(SVCS, &json!({"metadata": {"name": "ip"}, "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 80}]}})).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("spec.clusterIP")));

    // A replace that leaves the ClusterIP and nodePort out keeps them.
    let (_, cur) = c.get(&format!("{SVCS}/web")).await;
    let mut upd = web.clone();
    upd["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
    upd["spec"].as_object_mut().unwrap().remove("clusterIP");
    upd["spec"]["ports"][0].as_object_mut().unwrap().remove("nodePort");
    let (code, kept) = c.put(&format!("{SVCS}/web"), &upd).await;
    assert_eq!(code, 200, "{kept}");
    assert_eq!((kept["spec"]["clusterIP"].as_str(), kept["spec"]["ports"][0]["nodePort"].as_i64()), (Some("10.96.7.7"), Some(30001)));

    // Deleting frees both: the other service can now have them.
    assert_eq!(c.delete(&format!("{SVCS}/web")).await.0, 200);
    let svc = c.create(SVCS, json!({"metadata": {"name": "other"}, "spec": {"type": "NodePort", "clusterIP": "10.96.7.7", "ports": [{"port": 80, "nodePort": 30001}]}})).await;
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30001);

    // Changing type to ClusterIP releases the node port.
    let mut ci = svc.clone();
    ci["spec"]["type"] = json!("ClusterIP");
    ci["spec"]["ports"][0].as_object_mut().unwrap().remove("nodePort");
    let (code, v) = c.put(&format!("{SVCS}/other"), &ci).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["spec"]["ports"][0]["nodePort"].is_null());
    c.create(SVCS, json!({"metadata": {"name": "third"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}})).await;
}

#[tokio::test]
async fn nodes_get_distinct_pod_cidrs() {
    let c = Cluster::start().await;
    let a = c.create("/api/v1/nodes", json!({"metadata": {"name": "node1"}})).await;
    let b = c.create("/api/v1/nodes", json!({"metadata": {"name": "node2"}})).await;
    assert_eq!(a["spec"]["podCIDR"], "10.244.0.0/24");
    assert_eq!(b["spec"]["podCIDR"], "10.244.1.0/24");
    c.delete("/api/v1/nodes/node1").await;
    let d = c.create("/api/v1/nodes", json!({"metadata": {"name": "node3"}})).await;
    assert_eq!(d["spec"]["podCIDR"], "10.244.0.0/24", "a freed CIDR is reused");
    let (code, st) = c.post("/api/v1/nodes", &json!({"metadata": {"name": "node4"}, "spec": {"podCIDR": "10.244.1.0/24"}})).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("spec.podCIDR")));
}

#[tokio::test]
async fn conflicts() {
    let c = Cluster::start().await;
    let p = c.create(PODS, bound(pod("p", json!({})))).await;
    let (code, st) = c.post(PODS, &pod("p", json!({}))).await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("AlreadyExists")));
    let mut fresh = p.clone();
    fresh["metadata"]["labels"] = json!({"v": "1"});
    assert_eq!(c.put(&format!("{PODS}/p"), &fresh).await.0, 200);
    // `p` still carries the old resourceVersion.
    let mut stale = p.clone();
    stale["metadata"]["labels"] = json!({"v": "2"});
    let (code, st) = c.put(&format!("{PODS}/p"), &stale).await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(c.get(&format!("{PODS}/p")).await.1["metadata"]["labels"]["v"], "1");
}

#[tokio::test]
async fn every_error_class_is_a_status() {
    let c = Cluster::start().await;
    let status = |code: u16, v: &Value, reason: &str| {
        assert_eq!(v["kind"], "Status", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["reason"], reason, "{v}");
    };
    // Malformed bodies.
    let r = c.http.post(c.url(PODS)).header("Content-Type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    status(400, &r.json().await.unwrap(), "BadRequest");
    let r = c.http.post(c.url(PODS)).header("Content-Type", "application/yaml").body("a: [b").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let (code, v) = c.post(PODS, &json!({"kind": "Service", "metadata": {"name": "x"}})).await;
    assert_eq!(code, 400);
    status(400, &v, "BadRequest");
    let (code, v) = c.post(PODS, &json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "b", "ports": [{"containerPort": "eighty"}]}]}})).await;
    assert_eq!(code, 400, "{v}");

    // Unknown namespace / object / resource.
    let (code, v) = c.post("/api/v1/namespaces/nope/pods", &pod("x", json!({}))).await;
    assert_eq!(code, 404);
    status(404, &v, "NotFound");
    assert!(v["message"].as_str().unwrap().contains("namespaces \"nope\" not found"));
    let (code, v) = c.get(&format!("{PODS}/ghost")).await;
    assert_eq!(code, 404);
    status(404, &v, "NotFound");
    assert_eq!(c.get("/api/v1/namespaces/default/widgets").await.0, 404);

    // Invalid objects: 422 with the fields.
    let check = |v: &Value, fields: &[&str]| {
        status(422, v, "Invalid");
        let got: Vec<&str> = v["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
        assert_eq!(got, fields, "{v}");
    };
    let (code, v) = c.post(PODS, &pod("Not_A_Name", json!({}))).await;
    assert_eq!(code, 422);
    check(&v, &["metadata.name"]);
    let (_, v) = c.post(SVCS, &json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000}]}})).await;
    check(&v, &["spec.ports[0].port"]);
    let (_, v) =
        c.post(SVCS, &json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}})).await;
    check(&v, &["spec.ports[0].nodePort"]);
    let (_, v) = c.post(SVCS, &json!({"metadata": {"name": "s"}, "spec": {"type": "Magic", "ports": [{"port": 80}]}})).await;
    check(&v, &["spec.type"]);
    let (_, v) = c.post(SVCS, &json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "192.168.0.1", "ports": [{"port": 80}]}})).await;
    check(&v, &["spec.clusterIP"]);
    let (_, v) = c.post("/api/v1/nodes", &json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.0.0/99"}})).await;
    check(&v, &["spec.podCIDR"]);
    // Nothing was written by any of these.
    assert_eq!(c.get(SVCS).await.1["items"].as_array().unwrap().len(), 0);

    // Bodies over 3 MiB.
    let big = "x".repeat(3 * 1024 * 1024 + 10);
    let r = c.http.post(c.url(PODS)).header("Content-Type", "application/json").body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    status(413, &r.json().await.unwrap(), "RequestEntityTooLarge");
}

#[tokio::test]
async fn etcd_outage_is_503_and_recovers_without_restart() {
    let mut c = Cluster::start().await;
    c.create(PODS, pod("before", json!({}))).await;
    c.etcd.stop();
    let (code, v) = c.get(PODS).await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["reason"], "ServiceUnavailable");
    let (code, _) = c.post(PODS, &pod("during", json!({}))).await;
    assert_eq!(code, 503);
    assert_eq!(c.http.get(c.url("/readyz")).send().await.unwrap().status(), 503);
    c.etcd.restart();
    let list = eventually(30, "the apiserver to reach etcd again", || async {
        let (code, v) = c.get(PODS).await;
        (code == 200).then_some(v)
    })
    .await;
    assert_eq!(names(&list), ["before"]);
    c.create(PODS, pod("after", json!({}))).await;
}

#[tokio::test]
async fn service_policies_are_defaulted_validated_and_health_check_ports_allocated() {
    let c = Cluster::start().await;
    // ClientIP affinity gets Kubernetes' default timeout (3 h).
    let s = c.create(SVCS, json!({"metadata": {"name": "sticky"}, "spec": {"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}})).await;
    assert_eq!(s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 10800);
    assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");

    // A LoadBalancer with externalTrafficPolicy: Local gets a healthCheckNodePort from the
    // nodePort range, distinct from its nodePort; a Cluster one gets none.
    let lb =
        json!({"metadata": {"name": "edge"}, "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}});
    let s = c.create(SVCS, lb.clone()).await;
    let hc = s["spec"]["healthCheckNodePort"].as_i64().expect("a healthCheckNodePort");
    assert!((30000..=32767).contains(&hc) && hc != s["spec"]["ports"][0]["nodePort"].as_i64().unwrap(), "{s}");
    let s2 = c.create(SVCS, json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})).await;
    assert!(s2["spec"]["healthCheckNodePort"].is_null());
    // It is claimed like a nodePort: another service asking for it is told who holds it.
    let (code, st) =
        c.post(SVCS, &json!({"metadata": {"name": "thief"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": hc}]}})).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("spec.ports[0].nodePort")), "{st}");
    assert!(st["message"].as_str().unwrap().contains("default/edge"), "{st}");
    // Kept across a replace that leaves it out; released when the policy goes back to Cluster.
    let (_, cur) = c.get(&format!("{SVCS}/edge")).await;
    let mut upd = lb.clone();
    upd["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
    let (code, kept) = c.put(&format!("{SVCS}/edge"), &upd).await;
    assert_eq!((code, kept["spec"]["healthCheckNodePort"].as_i64()), (200, Some(hc)), "{kept}");
    let mut cluster = kept.clone();
    cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
    let (code, v) = c.put(&format!("{SVCS}/edge"), &cluster).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["spec"]["healthCheckNodePort"].is_null(), "{v}");
    c.create(SVCS, json!({"metadata": {"name": "heir"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": hc}]}})).await;

    // Bad values: a Status naming the field.
    for (spec, field) in [
        (json!({"sessionAffinity": "Sticky", "ports": [{"port": 80}]}), "spec.sessionAffinity"),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}, "ports": [{"port": 80}]}),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
        (json!({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"port": 80}]}), "spec.sessionAffinityConfig"),
        (json!({"internalTrafficPolicy": "Nearby", "ports": [{"port": 80}]}), "spec.internalTrafficPolicy"),
        (json!({"type": "NodePort", "externalTrafficPolicy": "local", "ports": [{"port": 80}]}), "spec.externalTrafficPolicy"),
        (json!({"externalTrafficPolicy": "Local", "ports": [{"port": 80}]}), "spec.externalTrafficPolicy"),
        (json!({"type": "NodePort", "healthCheckNodePort": 31000, "ports": [{"port": 80}]}), "spec.healthCheckNodePort"),
        (
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 80, "ports": [{"port": 80}]}),
            "spec.healthCheckNodePort",
        ),
        (
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31001, "ports": [{"port": 80, "nodePort": 31001}]}),
            "spec.healthCheckNodePort",
        ),
    ] {
        let (code, st) = c.post(SVCS, &json!({"metadata": {"name": "bad"}, "spec": spec})).await;
        assert_eq!(code, 422, "{spec}: {st}");
        assert_eq!(st["details"]["causes"][0]["field"], field, "{spec}: {st}");
    }
}
