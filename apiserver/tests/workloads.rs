//! Workloads against a real etcd, with the `controllers` crate running in the apiserver
//! as in the lab: ReplicaSets (create, scale, adopt, release), Deployments (rolling
//! update within maxSurge/maxUnavailable, Recreate, pause, progress deadline, history),
//! the garbage collector (Background, Foreground, Orphan, finalizers), `scale` and
//! `binding`; and `tests/kubectl/workloads.sh` (scale, set image, rollout
//! status|history|undo|restart|pause|resume) with every kubectl on the machine. A small
//! stand-in kubelet marks pods Running and Ready and finishes their
//! graceful deletion, as the agent does.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PODS: &str = "/api/v1/namespaces/default/pods";
const RS: &str = "/apis/apps/v1/namespaces/default/replicasets";
const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments";

async fn patch(c: &Cluster, path: &str, body: Value) -> (u16, Value) {
    let r = c.http.patch(c.url(path)).header("content-type", "application/merge-patch+json").json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn delete_with(c: &Cluster, path: &str, policy: &str) -> (u16, Value) {
    let r = c
        .http
        .delete(c.url(path))
        .json(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The kubelet's part, for pods not labelled `stuck`: Running and Ready; a pod being
/// deleted is finished off (grace period 0).
fn stand_in_kubelet(base: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut n = 0u32;
        loop {
            let pods: Value = http.get(format!("{base}/api/v1/pods")).send().await.unwrap().json().await.unwrap();
            for p in pods["items"].as_array().cloned().unwrap_or_default() {
                let (ns, name) = (p["metadata"]["namespace"].as_str().unwrap(), p["metadata"]["name"].as_str().unwrap());
                let path = format!("{base}/api/v1/namespaces/{ns}/pods/{name}");
                if !p["metadata"]["deletionTimestamp"].is_null() {
                    let _ = http.delete(format!("{path}?gracePeriodSeconds=0")).send().await;
                } else if p["status"]["phase"] != "Running" && p["metadata"]["labels"]["stuck"].is_null() {
                    n += 1;
                    let mut p = p.clone();
                    p["status"]["phase"] = json!("Running");
                    p["status"]["podIP"] = json!(format!("10.244.{}.{}", n / 250, n % 250 + 2));
                    p["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
                    let _ = http.put(format!("{path}/status")).json(&p).send().await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn is_active(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
}

fn owner_uid(p: &Value) -> Option<String> {
    p["metadata"]["ownerReferences"].as_array()?.iter().find(|o| o["controller"] == true).map(|o| o["uid"].as_str().unwrap().to_string())
}

async fn pods(c: &Cluster) -> Vec<Value> {
    c.get(PODS).await.1["items"].as_array().cloned().unwrap_or_default()
}

async fn active_pods_of(c: &Cluster, uid: &str) -> Vec<Value> {
    pods(c).await.into_iter().filter(|p| is_active(p) && owner_uid(p).as_deref() == Some(uid)).collect()
}

fn replicaset(name: &str, replicas: i32, app: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
        "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "app", "image": "whoami:v1"}]}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicasets_keep_their_pods() {
    let c = Cluster::start().await;
    let _kubelet = stand_in_kubelet(c.base.clone());
    let rs = c.create(RS, replicaset("web", 3, "web")).await;
    let uid = rs["metadata"]["uid"].as_str().unwrap().to_string();
    let mine = eventually(10, "three pods", || async { Some(active_pods_of(&c, &uid).await).filter(|p| p.len() == 3) }).await;
    for p in &mine {
        assert!(p["metadata"]["name"].as_str().unwrap().starts_with("web-"), "generateName: {p}");
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], true);
    }
    eventually(10, "status: 3 ready, 3 available, generation observed", || async {
        let s = c.get(&format!("{RS}/web")).await.1["status"].clone();
        (s["replicas"] == 3 && s["readyReplicas"] == 3 && s["availableReplicas"] == 3 && s["observedGeneration"] == 1).then_some(())
    })
    .await;

    // A pod deleted behind its back is replaced.
    let victim = mine[0]["metadata"]["name"].as_str().unwrap().to_string();
    c.delete(&format!("{PODS}/{victim}")).await;
    eventually(10, "a replacement", || async {
        let now = active_pods_of(&c, &uid).await;
        (now.len() == 3 && now.iter().all(|p| p["metadata"]["name"] != victim.as_str())).then_some(())
    })
    .await;

    // Scale through the `scale` subresource (as `kubectl scale` does): down to 1.
    let (code, scale) = c.get(&format!("{RS}/web/scale")).await;
    assert_eq!(
        (code, scale["kind"].as_str(), scale["apiVersion"].as_str(), scale["spec"]["replicas"].as_i64()),
        (200, Some("Scale"), Some("autoscaling/v1"), Some(3)),
        "{scale}"
    );
    assert_eq!(scale["status"]["selector"], "app=web");
    let (code, v) = c
        .put(
            &format!("{RS}/web/scale"),
            &json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "web"}, "spec": {"replicas": 1}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    eventually(10, "one pod left", || async { (active_pods_of(&c, &uid).await.len() == 1).then_some(()) }).await;

    // Release: a pod relabelled out of the selector loses its owner and is replaced.
    let only = active_pods_of(&c, &uid).await[0]["metadata"]["name"].as_str().unwrap().to_string();
    let (code, v) = patch(&c, &format!("{PODS}/{only}"), json!({"metadata": {"labels": {"app": "debug"}}})).await;
    assert_eq!(code, 200, "{v}");
    eventually(10, "released and replaced", || async {
        let released = c.get(&format!("{PODS}/{only}")).await.1;
        let now = active_pods_of(&c, &uid).await;
        (owner_uid(&released).is_none() && now.len() == 1 && now[0]["metadata"]["name"] != only.as_str()).then_some(())
    })
    .await;

    // Adopt: an orphan that matches is taken (and, being one too many, deleted).
    c.create(PODS, pod("stray", json!({"app": "web"}))).await;
    eventually(10, "the stray adopted, then one of the two deleted", || async {
        let now = active_pods_of(&c, &uid).await;
        let stray = c.get(&format!("{PODS}/stray")).await;
        (now.len() == 1 && (stray.0 == 404 || owner_uid(&stray.1).as_deref() == Some(&uid) || !is_active(&stray.1))).then_some(())
    })
    .await;

    // Events of the controller.
    let events = c.get("/api/v1/namespaces/default/events").await.1;
    let reasons: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"SuccessfulCreate") && reasons.contains(&"SuccessfulDelete"), "{reasons:?}");
}

fn deployment(name: &str, image: &str, extra: Value) -> Value {
    let mut d = json!({"metadata": {"name": name}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": image}]}}}});
    merge(&mut d, extra);
    d
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => b.into_iter().for_each(|(k, v)| merge(a.entry(k).or_insert(Value::Null), v)),
        (a, b) => *a = b,
    }
}

async fn sets_of(c: &Cluster, app: &str) -> Vec<Value> {
    let all = c.get(RS).await.1["items"].as_array().cloned().unwrap_or_default();
    all.into_iter().filter(|s| s["spec"]["selector"]["matchLabels"]["app"] == app).collect()
}

async fn complete(c: &Cluster, name: &str, generation: i64) {
    eventually(20, &format!("{name} rolled out at generation {generation}"), || async {
        let d = c.get(&format!("{DEPLOY}/{name}")).await.1;
        let s = &d["status"];
        let want = d["spec"]["replicas"].clone();
        (s["observedGeneration"] == generation && s["updatedReplicas"] == want && s["availableReplicas"] == want && s["replicas"] == want)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_within_their_budget() {
    let c = Cluster::start().await;
    let _kubelet = stand_in_kubelet(c.base.clone());
    c.create(DEPLOY, deployment("web", "whoami:v1", json!({}))).await;
    complete(&c, "web", 1).await;
    let first = sets_of(&c, "web").await;
    assert_eq!(first.len(), 1);
    let hash = first[0]["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    assert_eq!(first[0]["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(first[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");

    // v2: never fewer than 3 available (maxUnavailable 0), never more than 4 pods (maxSurge 1).
    let (code, v) = patch(
        &c,
        &format!("{DEPLOY}/web"),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "whoami:v2"}]}}}}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (mut most, mut fewest_ready) = (0, usize::MAX);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active: Vec<Value> = pods(&c).await.into_iter().filter(is_active).collect();
        most = most.max(active.len());
        fewest_ready = fewest_ready.min(active.iter().filter(|p| p["status"]["phase"] == "Running").count());
        let d = c.get(&format!("{DEPLOY}/web")).await.1;
        let s = &d["status"];
        if s["observedGeneration"] == 2 && s["updatedReplicas"] == 3 && s["replicas"] == 3 && s["availableReplicas"] == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rollout did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most <= 4, "surge budget exceeded: {most} pods");
    assert!(fewest_ready >= 3, "availability budget broken: {fewest_ready} running");
    let sets = sets_of(&c, "web").await;
    assert_eq!(sets.len(), 2);
    let new = sets.iter().find(|s| s["metadata"]["labels"]["pod-template-hash"] != hash.as_str()).unwrap();
    assert_eq!(new["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    assert_eq!(new["spec"]["replicas"], 3);
    let old = sets.iter().find(|s| s["metadata"]["labels"]["pod-template-hash"] == hash.as_str()).unwrap();
    assert_eq!(old["spec"]["replicas"], 0);
    let d = c.get(&format!("{DEPLOY}/web")).await.1;
    let progressing = d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").cloned().unwrap();
    assert_eq!(
        (progressing["status"].as_str(), progressing["reason"].as_str()),
        (Some("True"), Some("NewReplicaSetAvailable")),
        "{progressing}"
    );

    // Paused: template changes wait; resumed: they roll.
    patch(
        &c,
        &format!("{DEPLOY}/web"),
        json!({"spec": {"paused": true, "template": {"spec": {"containers": [{"name": "app", "image": "whoami:v3"}]}}}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sets_of(&c, "web").await.len(), 2, "paused: no new ReplicaSet");
    patch(&c, &format!("{DEPLOY}/web"), json!({"spec": {"paused": false}})).await;
    complete(&c, "web", 4).await;
    assert_eq!(sets_of(&c, "web").await.len(), 3);

    // revisionHistoryLimit 1: only the newest old ReplicaSet is kept.
    patch(&c, &format!("{DEPLOY}/web"), json!({"spec": {"revisionHistoryLimit": 1}})).await;
    eventually(10, "history trimmed to one old ReplicaSet", || async { (sets_of(&c, "web").await.len() == 2).then_some(()) }).await;

    // Scale through the subresource.
    let (code, v) = c
        .put(
            &format!("{DEPLOY}/web/scale"),
            &json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "web"}, "spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    complete(&c, "web", 6).await;
    let events = c.get("/api/v1/namespaces/default/events").await.1;
    assert!(events["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "ScalingReplicaSet" && e["involvedObject"]["kind"] == "Deployment"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_the_old_pods_first_and_deadlines_are_reported() {
    let c = Cluster::start().await;
    let _kubelet = stand_in_kubelet(c.base.clone());
    c.create(DEPLOY, deployment("batch", "whoami:v1", json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}))).await;
    complete(&c, "batch", 1).await;
    let old_uid = sets_of(&c, "batch").await[0]["metadata"]["uid"].as_str().unwrap().to_string();
    patch(&c, &format!("{DEPLOY}/batch"), json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "whoami:v2"}]}}}}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all: Vec<Value> = pods(&c).await;
        let old = all.iter().filter(|p| owner_uid(p).as_deref() == Some(&old_uid)).count();
        let new = all.iter().filter(|p| owner_uid(p).is_some_and(|u| u != old_uid)).count();
        assert!(old == 0 || new == 0, "Recreate: old and new pods side by side ({old} old, {new} new)");
        if new == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "recreate did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Pods that never become ready: Progressing=False, ProgressDeadlineExceeded.
    let stuck = json!({"spec": {"progressDeadlineSeconds": 2, "template": {"metadata": {"labels": {"app": "stuck", "stuck": "yes"}}}, "selector": {"matchLabels": {"app": "stuck"}}}});
    c.create(DEPLOY, deployment("stuck", "whoami:v1", stuck)).await;
    eventually(15, "ProgressDeadlineExceeded", || async {
        let d = c.get(&format!("{DEPLOY}/stuck")).await.1;
        let conds = d["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conds
            .iter()
            .any(|c| c["type"] == "Progressing" && c["status"] == "False" && c["reason"] == "ProgressDeadlineExceeded")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garbage_collector_follows_owner_references() {
    let c = Cluster::start().await;
    let _kubelet = stand_in_kubelet(c.base.clone());
    // Background (the default): the Deployment goes at once, its ReplicaSet and pods after.
    c.create(DEPLOY, deployment("bg", "whoami:v1", json!({}))).await;
    complete(&c, "bg", 1).await;
    let (code, _) = c.delete(&format!("{DEPLOY}/bg")).await;
    assert_eq!(code, 200);
    assert_eq!(c.get(&format!("{DEPLOY}/bg")).await.0, 404, "background: the owner goes first");
    eventually(15, "its ReplicaSet and pods collected", || async {
        let left = pods(&c).await.iter().filter(|p| p["metadata"]["labels"]["app"] == "bg").count();
        (sets_of(&c, "bg").await.is_empty() && left == 0).then_some(())
    })
    .await;

    // Foreground: the ReplicaSet waits, marked, until its pods are gone.
    let rs = c.create(RS, replicaset("fg", 2, "fg")).await;
    let uid = rs["metadata"]["uid"].as_str().unwrap().to_string();
    eventually(10, "two pods", || async { (active_pods_of(&c, &uid).await.len() == 2).then_some(()) }).await;
    let (code, v) = delete_with(&c, &format!("{RS}/fg"), "Foreground").await;
    assert_eq!(code, 200, "{v}");
    assert!(v["metadata"]["finalizers"].as_array().unwrap().iter().any(|f| f == "foregroundDeletion"), "{v}");
    assert!(!v["metadata"]["deletionTimestamp"].is_null());
    eventually(15, "pods, then the ReplicaSet, gone", || async {
        let left = pods(&c).await.iter().filter(|p| p["metadata"]["labels"]["app"] == "fg").count();
        (left == 0 && c.get(&format!("{RS}/fg")).await.0 == 404).then_some(())
    })
    .await;

    // Orphan: the ReplicaSet goes, its pods stay without an owner.
    let rs = c.create(RS, replicaset("keep", 2, "keep")).await;
    let uid = rs["metadata"]["uid"].as_str().unwrap().to_string();
    eventually(10, "two pods", || async { (active_pods_of(&c, &uid).await.len() == 2).then_some(()) }).await;
    let (code, v) = delete_with(&c, &format!("{RS}/keep"), "Orphan").await;
    assert_eq!(code, 200, "{v}");
    eventually(15, "the ReplicaSet gone, its pods released", || async {
        let kept: Vec<Value> = pods(&c).await.into_iter().filter(|p| p["metadata"]["labels"]["app"] == "keep").collect();
        (c.get(&format!("{RS}/keep")).await.0 == 404 && kept.len() == 2 && kept.iter().all(|p| owner_uid(p).is_none())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pods(&c).await.iter().filter(|p| p["metadata"]["labels"]["app"] == "keep" && is_active(p)).count(),
        2,
        "orphans are not collected"
    );

    // Any owner kind: a ConfigMap owned by a Service goes with it.
    let svc =
        c.create("/api/v1/namespaces/default/services", json!({"metadata": {"name": "owner"}, "spec": {"ports": [{"port": 80}]}})).await;
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": "owner", "uid": svc["metadata"]["uid"]}]);
    c.create("/api/v1/namespaces/default/configmaps", json!({"metadata": {"name": "owned", "ownerReferences": owner}})).await;
    c.delete("/api/v1/namespaces/default/services/owner").await;
    eventually(10, "the ConfigMap collected", || async {
        (c.get("/api/v1/namespaces/default/configmaps/owned").await.0 == 404).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_and_binding_binds_once() {
    let c = Cluster::start().await;
    const CM: &str = "/api/v1/namespaces/default/configmaps";
    c.create(CM, json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})).await;
    let (code, v) = c.delete(&format!("{CM}/held")).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = c.get(&format!("{CM}/held")).await;
    assert_eq!(code, 200, "held by its finalizer");
    assert!(!v["metadata"]["deletionTimestamp"].is_null());
    let (code, v) = patch(&c, &format!("{CM}/held"), json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}})).await;
    assert_eq!(code, 422, "no new finalizer on a deleting object: {v}");
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.finalizers", "{v}");
    let (code, v) = patch(&c, &format!("{CM}/held"), json!({"metadata": {"finalizers": null}})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(c.get(&format!("{CM}/held")).await.0, 404, "the last finalizer gone: deleted");

    // pods/binding: binds once; a second bind is a conflict.
    c.create("/api/v1/nodes", json!({"metadata": {"name": "elsewhere"}})).await;
    c.create(PODS, json!({"metadata": {"name": "bound"}, "spec": {"nodeName": "", "schedulerName": "none", "containers": [{"name": "a", "image": "x"}]}})).await;
    let binding =
        json!({"kind": "Binding", "apiVersion": "v1", "metadata": {"name": "bound"}, "target": {"kind": "Node", "name": "elsewhere"}});
    let (code, v) = c.post(&format!("{PODS}/bound/binding"), &binding).await;
    assert_eq!(code, 201, "{v}");
    let p = c.get(&format!("{PODS}/bound")).await.1;
    assert_eq!(p["spec"]["nodeName"], "elsewhere");
    assert!(p["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "True"));
    let (code, v) = c.post(&format!("{PODS}/bound/binding"), &binding).await;
    assert_eq!(code, 409, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rolls_deployments_out() {
    let bins = kubectls();
    if bins.is_empty() {
        assert!(std::env::var("OWNKUBE_NO_KUBECTL").is_ok(), "no kubectl found: install one, set KUBECTL, or OWNKUBE_NO_KUBECTL=1");
        return;
    }
    let c = Cluster::start().await;
    let _kubelet = stand_in_kubelet(c.base.clone());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kubectl/workloads.sh");
    let mut failures = vec![];
    for bin in bins {
        let ns = format!("wl-{}", bin.rsplit('.').next().unwrap_or("x"));
        let (server, b) = (c.base.clone(), bin.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash").arg(script).env("KUBECTL", &b).env("SERVER", server).env("NS", ns).output().unwrap()
        })
        .await
        .unwrap();
        println!("== {bin}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            failures.push(bin);
        }
    }
    assert!(failures.is_empty(), "kubectl workload checks failed with: {failures:?}");
}

/// The controllers apart from the apiserver, as `controller-manager --server URL` runs
/// them: an apiserver with `--controllers=false` stores a ReplicaSet and nothing acts on
/// it; controllers started later, with their own client, catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_run_apart_from_the_apiserver() {
    let c = Cluster::start_with(|cfg| cfg.controllers = false).await;
    let _kubelet = stand_in_kubelet(c.base.clone());
    let rs = c.create(RS, replicaset("later", 2, "later")).await;
    let uid = rs["metadata"]["uid"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(active_pods_of(&c, &uid).await.is_empty(), "no controller runs in this apiserver");
    controllers::run(controllers::client_for(&c.base).unwrap());
    eventually(15, "two pods from the controllers started apart", || async { (active_pods_of(&c, &uid).await.len() == 2).then_some(()) })
        .await;
}
