//! The kubelet's pod features against a real apiserver (on etcd), containerd + runc and
//! network namespaces: readiness probes gating Endpoints, liveness probes restarting,
//! env from a Secret, a ConfigMap volume and its update, init containers in order, a
//! memory limit ending in `OOMKilled`, events, logs of the previous run, the node Lease.

#[path = "../../apiserver/tests/common/mod.rs"]
mod common;
mod containerd;
mod netns;

use agent::client::Client;
use agent::kubelet::{self, Kubelet};
use agent::registry::Registries;
use common::{eventually, Cluster};
use containerd::*;
use netns::Netns;
use serde_json::{json, Value};
use std::time::Duration;

const NS: &str = "/api/v1/namespaces/default";
const IMAGE: &str = "localhost:5000/busybox:local";

fn pod(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["terminationGracePeriodSeconds"] = json!(1);
    json!({"metadata": {"name": name, "labels": {"app": name}}, "spec": spec})
}

fn container(cmd: &str) -> Value {
    json!({"name": "main", "image": IMAGE, "command": ["sh", "-c", cmd]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_config_init_containers_oom_events_and_the_lease() {
    let c = Cluster::start().await;
    let ctd = Containerd::start();
    let rt = ctd.runtime().await;
    let node = Netns::new("kp");
    let state = tempfile::tempdir().unwrap();
    import(&rt, IMAGE, busybox_image(&["sh"])).await;
    // A registry that answers nothing for a minute: a pull from it is slow.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_port = stall.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = stall.accept().await {
            held.push(s);
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let streaming = agent::streaming::Streaming {
        client: Client::new(&c.base),
        runtime: rt.clone(),
        state_dir: state.path().to_path_buf(),
        logs_dir: state.path().join("logs"),
    };
    tokio::spawn(async move { axum::serve(listener, agent::debug::router(agent::debug::DebugState::default(), Some(streaming))).await });
    let cfg = kubelet::Config {
        node_name: "pnode".into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".into(),
        state_dir: state.path().to_path_buf(),
        logs_dir: state.path().join("logs"),
        port,
        registries: Registries {
            mirrors: [("slow.local".to_string(), format!("http://127.0.0.1:{stall_port}"))].into(),
            ..Default::default()
        },
        lease_renew: Duration::from_secs(1),
        netns: Some(node.name.clone()),
        dns: Default::default(),
        max_parallel_starts: kubelet::starts::default_parallel_starts(),
    };
    let k = Kubelet::start(kubelet::client_for(&c.base).unwrap(), rt.clone(), cfg).await.expect("kubelet starts");
    tokio::spawn(k.run());
    let get = |path: String| {
        let c = &c;
        async move { c.get(&path).await.1 }
    };
    let log = |name: &'static str, q: &'static str| {
        let url = c.url(&format!("{NS}/pods/{name}/log{q}"));
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };

    c.create(&format!("{NS}/configmaps"), json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}})).await;
    c.create(&format!("{NS}/secrets"), json!({"metadata": {"name": "pw"}, "stringData": {"password": "hunter2"}})).await;
    c.create(
        &format!("{NS}/services"),
        json!({"metadata": {"name": "probed"}, "spec": {"selector": {"group": "probed"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
    )
    .await;
    let serve = |ready: bool| {
        format!(
            "mkdir -p /www && echo ok > /www/index.html && {} exec httpd -f -p 8080 -h /www",
            if ready { "echo yes > /www/ready &&" } else { "" }
        )
    };
    let probed = |name: &str, ready: bool| {
        let mut p = pod(name, json!({"containers": [container(&serve(ready))]}));
        p["metadata"]["labels"]["group"] = json!("probed");
        p["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1});
        p
    };
    let mut conf = pod(
        "conf",
        json!({"volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
        "containers": [container("while true; do echo \"pw=$PASSWORD cfg=$(cat /etc/cfg/greeting)\"; sleep 0.5; done")]}),
    );
    conf["spec"]["containers"][0]["env"] = json!([{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "password"}}}]);
    conf["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/etc/cfg"}]);
    let init = pod(
        "init",
        json!({"volumes": [{"name": "work", "emptyDir": {}}],
        "initContainers": [{"name": "first", "image": IMAGE, "command": ["sh", "-c", "sleep 1; echo first >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                           {"name": "second", "image": IMAGE, "command": ["sh", "-c", "echo second >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", "cat /work/order; sleep 3600"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]}),
    );
    let mut live = pod("live", json!({"containers": [container("touch /tmp/healthy; echo run; sleep 2; rm /tmp/healthy; sleep 3600")]}));
    live["spec"]["containers"][0]["livenessProbe"] =
        json!({"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 1});
    let mut oom = pod(
        "oom",
        json!({"restartPolicy": "Never", "containers": [container("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived")]}),
    );
    oom["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "16Mi"}});
    // First a pod whose image pull hangs: no other pod, nor the heartbeat, waits for it.
    c.create(&format!("{NS}/pods"), pod("slow", json!({"containers": [{"name": "main", "image": "slow.local/never:v1"}]}))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    for p in [probed("ready", true), probed("unready", false), conf, init, live, oom] {
        c.create(&format!("{NS}/pods"), p).await;
    }
    eventually(30, "a pod starts while another's pull hangs", || async {
        (get(format!("{NS}/pods/ready")).await["status"]["phase"] == "Running").then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let pulling = get(format!("{NS}/pods/slow")).await;
    assert_eq!(pulling["status"]["phase"], "Pending", "{pulling}");

    // Readiness: only the pod whose probe succeeds is an endpoint.
    let eps = eventually(60, "endpoints: one ready, one not", || async {
        let e = get(format!("{NS}/endpoints/probed")).await;
        let s = &e["subsets"][0];
        (s["addresses"].as_array().is_some_and(|a| a.len() == 1) && s["notReadyAddresses"].as_array().is_some_and(|a| a.len() == 1))
            .then_some(e)
    })
    .await;
    assert_eq!(eps["subsets"][0]["addresses"][0]["targetRef"]["name"], "ready");
    let unready = get(format!("{NS}/pods/unready")).await;
    assert_eq!(unready["status"]["phase"], "Running");
    assert_eq!(unready["status"]["containerStatuses"][0]["ready"], false);
    let ready_cond = unready["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!((ready_cond["status"].as_str(), ready_cond["reason"].as_str()), (Some("False"), Some("ContainersNotReady")));

    // Env from a Secret, a ConfigMap volume, and the volume following the ConfigMap.
    eventually(30, "conf logs its env and file", || async {
        log("conf", "?tailLines=1").await.contains("pw=hunter2 cfg=hello").then_some(())
    })
    .await;
    let (_, mut cm) = c.get(&format!("{NS}/configmaps/cfg")).await;
    cm["data"]["greeting"] = json!("bonjour");
    assert_eq!(c.put(&format!("{NS}/configmaps/cfg"), &cm).await.0, 200);
    eventually(20, "the volume follows the ConfigMap", || async {
        log("conf", "?tailLines=1").await.contains("cfg=bonjour").then_some(())
    })
    .await;

    // Init containers ran in order, to completion, before the app.
    eventually(60, "init's app runs", || async { (get(format!("{NS}/pods/init")).await["status"]["phase"] == "Running").then_some(()) })
        .await;
    assert_eq!(eventually(10, "init's log", || async { Some(log("init", "").await).filter(|l| !l.is_empty()) }).await, "first\nsecond\n");
    let init_st = get(format!("{NS}/pods/init")).await["status"]["initContainerStatuses"].clone();
    assert_eq!(
        init_st.as_array().unwrap().iter().map(|s| s["state"]["terminated"]["exitCode"].as_i64()).collect::<Vec<_>>(),
        [Some(0), Some(0)]
    );

    // Liveness: restarted, with the run that failed as lastState; its log is `--previous`.
    let restarted = eventually(60, "live restarted by its liveness probe", || async {
        let p = get(format!("{NS}/pods/live")).await;
        (p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)).then_some(p)
    })
    .await;
    assert!(restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"].is_i64(), "{restarted}");
    assert_eq!(log("live", "?previous=true").await, "run\n");
    let evs = get(format!("{NS}/events?fieldSelector=involvedObject.name%3Dlive")).await;
    let said: Vec<String> = evs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["reason"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect();
    assert!(said.iter().any(|s| s.starts_with("Killing Container main failed liveness probe, will be restarted")), "{said:?}");
    assert!(said.iter().any(|s| s.starts_with("Unhealthy Liveness probe failed")), "{said:?}");
    assert!(said.iter().any(|s| s == "Started Started container main"), "{said:?}");

    // A memory limit: the kernel kills the container, and says so.
    let oomed = eventually(60, "oom OOMKilled", || async {
        let p = get(format!("{NS}/pods/oom")).await;
        (p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled").then_some(p)
    })
    .await;
    assert_eq!(oomed["status"]["phase"], "Failed");
    assert_eq!(oomed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);

    // The node's heartbeat is a Lease, renewed.
    let lease = |()| get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/pnode".into());
    let first = lease(()).await["spec"]["renewTime"].clone();
    assert!(first.is_string(), "{first}");
    eventually(10, "the lease is renewed", || async { (lease(()).await["spec"]["renewTime"] != first).then_some(()) }).await;
    assert_eq!(lease(()).await["spec"]["holderIdentity"], "pnode");

    // Deleting the pod whose pull hangs cancels the pull: the pod goes.
    c.delete(&format!("{NS}/pods/slow")).await;
    eventually(20, "the hanging pod is deleted", || async { (c.get(&format!("{NS}/pods/slow")).await.0 == 404).then_some(()) }).await;
}
