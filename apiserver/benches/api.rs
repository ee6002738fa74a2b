//! Benchmark: apiserver latency over a real etcd, beside raw etcd latency in the same run,
//! so the apiserver's overhead is a ratio. Prints a table; asserts nothing.
//!
//! For 1,000 and 10,000 stored pods: p50/p99 of create, get and list (all pods of the
//! namespace: from the watch cache as of etcd's revision now, from it with
//! `resourceVersion=0`, from a second apiserver with `--watch-cache=false` on the same
//! etcd, and in pages of `limit=500`), and the delay from a write to its watch event
//! (apiserver watch vs etcd watch); create with a protobuf body vs a JSON one; and at
//! 10,000 pods, creates while 500 watchers with field selectors (`spec.nodeName`, as 500
//! kubelets) watch pods. The rows are also written to `results/apiserver.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PODS: &str = "/api/v1/namespaces/default/pods";

/// Every row printed, for `results/apiserver.json`.
static ROWS: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());

fn row(name: &str, (p50, p99): (f64, f64)) {
    println!("{name:<34} {p50:>10.3} {p99:>10.3}");
    ROWS.lock().unwrap().push(json!({"operation": name, "p50_ms": p50, "p99_ms": p99}));
}

/// The bench pod as protobuf (`k8s\0` + runtime.Unknown), as kubectl 1.32+ would send it.
fn protobuf_pod(name: &str) -> Vec<u8> {
    use k8s_pb::api::core::v1 as core;
    use prost::Message;
    let c = core::Container {
        name: Some("main".into()),
        image: Some("localhost:5000/whoami:latest".into()),
        env: vec![core::EnvVar { name: Some("MODE".into()), value: Some("benchmark".into()), ..Default::default() }],
        ..Default::default()
    };
    let pod = core::Pod {
        metadata: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            labels: [("app".to_string(), "bench".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(core::PodSpec { containers: vec![c], node_name: Some("bench-node".into()), ..Default::default() }),
        ..Default::default()
    };
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta { api_version: Some("v1".into()), kind: Some("Pod".into()) }),
        raw: Some(pod.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [b"k8s\0".to_vec(), unknown.encode_to_vec()].concat()
}

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1000.0;
    (at(0.50), at(0.99))
}

fn bench_pod(name: &str) -> Value {
    let mut p = pod(name, json!({"app": "bench", "tier": "front"}));
    // Bound, as most pods in a cluster are, with env, resources and annotations (~0.5 KiB of JSON).
    p["spec"]["nodeName"] = json!("bench-node");
    p["spec"]["containers"][0]["env"] = json!([{"name": "MODE", "value": "benchmark"}, {"name": "LEVEL", "value": "info"}]);
    p["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "100m", "memory": "64Mi"}});
    p["metadata"]["annotations"] = json!({"example.com/owner": "bench", "example.com/purpose": "latency measurement"});
    p
}

async fn timed<F: std::future::Future<Output = ()>>(f: F) -> Duration {
    let t = Instant::now();
    f.await;
    t.elapsed()
}

/// p50/p99 of `n` pod creates, one after another.
async fn create_times(c: &Cluster, prefix: &str, n: usize) -> (f64, f64) {
    let mut times = vec![];
    for i in 0..n {
        let body = bench_pod(&format!("{prefix}-{i}"));
        times.push(timed(async { assert_eq!(c.http.post(c.url(PODS)).json(&body).send().await.unwrap().status(), 201) }).await);
    }
    pct(times)
}

/// p50/p99 of `rounds` GETs of `url`, checking the list holds `n` items.
async fn lists(http: &reqwest::Client, url: &str, rounds: usize, n: usize) -> (f64, f64) {
    let mut times = vec![];
    let mut body = Default::default();
    for _ in 0..rounds {
        times.push(timed(async { body = http.get(url).send().await.unwrap().bytes().await.unwrap() }).await);
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), n, "{url}");
    pct(times)
}

/// `n` watchers of pods, each with its own `spec.nodeName`, read in the background.
async fn node_watchers(c: &Cluster, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = vec![];
    for i in 0..n {
        let url = c.url(&format!("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dwatcher-{i}"));
        let resp = c.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        out.push(tokio::spawn(async move {
            let mut s = resp.bytes_stream();
            while let Some(Ok(_)) = s.next().await {}
        }));
    }
    out
}

#[tokio::main]
async fn main() {
    let c = Cluster::start().await;
    // The same etcd behind a second apiserver that lists from etcd, for comparison.
    let uncached = apiserver::Server::start({
        let mut cfg = config(&c.etcd);
        cfg.watch_cache = false;
        cfg.controllers = false;
        cfg
    })
    .await
    .unwrap();
    let uncached_url = format!("http://{}{PODS}", uncached.addr);
    let mut etcd = etcd_client::Client::connect([c.etcd.url.as_str()], None).await.unwrap();
    let sample = serde_json::to_vec(&bench_pod("raw")).unwrap();
    println!("payload: {} bytes of JSON per pod; etcd {}", sample.len(), c.etcd.url);
    println!("{:<34} {:>10} {:>10}", "operation", "p50 ms", "p99 ms");

    // Raw etcd, same machine, same run.
    let mut puts = vec![];
    let mut gets = vec![];
    for i in 0..500 {
        let key = format!("/bench/raw/{i}");
        let t = Instant::now();
        etcd.put(key.as_str(), sample.clone(), None).await.unwrap();
        puts.push(t.elapsed());
        let t = Instant::now();
        etcd.get(key.as_str(), None).await.unwrap();
        gets.push(t.elapsed());
    }
    let (raw_put, raw_get) = (pct(puts), pct(gets));
    row("etcd put (raw)", raw_put);
    row("etcd get (raw)", raw_get);
    let mut raw_watch = vec![];
    {
        let (_w, mut stream) = etcd.watch("/bench/watch/", Some(etcd_client::WatchOptions::new().with_prefix())).await.unwrap();
        for i in 0..200 {
            let t = Instant::now();
            etcd.put(format!("/bench/watch/{i}"), sample.clone(), None).await.unwrap();
            stream.message().await.unwrap();
            raw_watch.push(t.elapsed());
        }
    }
    let raw_watch = pct(raw_watch);
    row("etcd put -> watch event (raw)", raw_watch);

    // Endpoints controller: from a pod's status becoming Ready (or the pod going away) to
    // the service's Endpoints object saying so, as a watcher (kube-proxy) sees it.
    c.create(
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "epb"}, "spec": {"selector": {"app": "epb"}, "ports": [{"port": 80}]}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, l) = c.get("/api/v1/namespaces/default/endpoints").await;
    let rv = l["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let resp = c
        .http
        .get(c.url(&format!("/api/v1/namespaces/default/endpoints?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Depb")))
        .send()
        .await
        .unwrap();
    let mut ep_stream = resp.bytes_stream();
    let mut ep_buf: Vec<u8> = Vec::new();
    let (mut ready_lat, mut gone_lat) = (vec![], vec![]);
    for i in 0..50 {
        let ip = format!("10.244.9.{}", i + 2);
        let mut p = pod(&format!("epb-{i}"), json!({"app": "epb"}));
        p["spec"]["nodeName"] = json!("bench-node");
        let mut p = c.create(PODS, p).await;
        p["status"] = json!({"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]});
        let has_ip = |v: &Value, ip: &str| v["object"]["subsets"].to_string().contains(&format!("\"{ip}\""));
        for (phase, lat) in [(0, &mut ready_lat), (1, &mut gone_lat)] {
            let t = Instant::now();
            if phase == 0 {
                assert_eq!(c.put(&format!("{PODS}/epb-{i}/status"), &p).await.0, 200);
            } else {
                c.http.delete(c.url(&format!("{PODS}/epb-{i}?gracePeriodSeconds=0"))).send().await.unwrap();
            }
            loop {
                while !ep_buf.contains(&b'\n') {
                    ep_buf.extend_from_slice(&ep_stream.next().await.unwrap().unwrap());
                }
                let n = ep_buf.iter().position(|&b| b == b'\n').unwrap();
                let line: Vec<u8> = ep_buf.drain(..=n).collect();
                let ev: Value = serde_json::from_slice(&line).unwrap();
                if has_ip(&ev, &ip) == (phase == 0) {
                    break;
                }
            }
            lat.push(t.elapsed());
        }
    }
    row("pod Ready -> Endpoints event", pct(ready_lat));
    row("pod deleted -> Endpoints event", pct(gone_lat));

    // The same pod created from protobuf and from JSON, alternately.
    let (mut pb, mut js) = (vec![], vec![]);
    for i in 0..300 {
        let body = protobuf_pod(&format!("pb-{i}"));
        let req = c.http.post(c.url(PODS)).header("Content-Type", "application/vnd.kubernetes.protobuf").body(body);
        pb.push(timed(async { assert_eq!(req.send().await.unwrap().status(), 201) }).await);
        let mut j = bench_pod(&format!("js-{i}"));
        j["metadata"]["annotations"] = json!(null);
        j["spec"]["containers"][0]["resources"] = json!(null);
        let req = c.http.post(c.url(PODS)).json(&j);
        js.push(timed(async { assert_eq!(req.send().await.unwrap().status(), 201) }).await);
    }
    row("create pod, protobuf body", pct(pb));
    row("create pod, JSON body", pct(js));
    let mut stored = 600usize;

    for target in [1_000usize, 10_000] {
        // Fill (not measured), 16 at a time.
        let fill = target - 200;
        while stored < fill {
            let batch: Vec<_> = (stored..(stored + 16).min(fill))
                .map(|i| {
                    let (http, url) = (c.http.clone(), c.url(PODS));
                    tokio::spawn(async move { http.post(url).json(&bench_pod(&format!("fill-{i}"))).send().await.unwrap().status() })
                })
                .collect();
            for t in batch {
                assert_eq!(t.await.unwrap(), 201);
            }
            stored = (stored + 16).min(fill);
        }
        println!("-- {target} pods stored --");
        let mut creates = vec![];
        for i in 0..200 {
            let body = bench_pod(&format!("m{target}-{i}"));
            creates.push(timed(async { assert_eq!(c.http.post(c.url(PODS)).json(&body).send().await.unwrap().status(), 201) }).await);
        }
        stored += 200;
        let create = pct(creates);
        let mut gets = vec![];
        for i in 0..200 {
            let url = c.url(&format!("{PODS}/m{target}-{i}"));
            gets.push(
                timed(async {
                    c.http.get(url).send().await.unwrap().bytes().await.unwrap();
                })
                .await,
            );
        }
        let get = pct(gets);
        let rounds = if target > 5000 { 10 } else { 30 };
        let list = lists(&c.http, &c.url(PODS), rounds, target).await;
        let list_any = lists(&c.http, &c.url(&format!("{PODS}?resourceVersion=0")), rounds, target).await;
        let list_etcd = lists(&c.http, &uncached_url, rounds, target).await;
        // The same list in pages of 500, each page asked for with the last one's `continue`.
        let mut paged = vec![];
        for _ in 0..rounds {
            paged.push(
                timed(async {
                    let (mut token, mut n) = (String::new(), 0);
                    loop {
                        let url = c.url(&format!("{PODS}?limit=500&continue={token}"));
                        let page: Value = c.http.get(url).send().await.unwrap().json().await.unwrap();
                        n += page["items"].as_array().unwrap().len();
                        match page["metadata"]["continue"].as_str() {
                            Some(t) if !t.is_empty() => token = t.to_string(),
                            _ => break,
                        }
                    }
                    assert_eq!(n, target);
                })
                .await,
            );
        }
        let paged = pct(paged);
        let mut raw_lists = vec![];
        for _ in 0..rounds {
            let opts = etcd_client::GetOptions::new().with_prefix();
            let mut kv = etcd.kv_client().max_decoding_message_size(512 << 20);
            raw_lists
                .push(timed(async { assert_eq!(kv.get("/registry/pods/default/", Some(opts)).await.unwrap().kvs().len(), target) }).await);
        }
        let raw_list = pct(raw_lists);
        // Write -> watch event through the apiserver.
        let (_, l) = c.get(PODS).await;
        let rv = l["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        let resp = c.http.get(c.url(&format!("{PODS}?watch=true&resourceVersion={rv}"))).send().await.unwrap();
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut watch = vec![];
        for i in 0..200 {
            let name = format!("m{target}-{i}");
            let t = Instant::now();
            let patch = c
                .http
                .patch(c.url(&format!("{PODS}/{name}")))
                .header("Content-Type", "application/merge-patch+json")
                .body(format!(r#"{{"metadata":{{"labels":{{"round":"{i}"}}}}}}"#))
                .send();
            assert_eq!(patch.await.unwrap().status(), 200);
            while !buf.contains(&b'\n') {
                buf.extend_from_slice(&stream.next().await.unwrap().unwrap());
            }
            let i = buf.iter().position(|&b| b == b'\n').unwrap();
            buf.drain(..=i);
            watch.push(t.elapsed());
        }
        let watch = pct(watch);
        row(&format!("create pod [{target}]"), create);
        row(&format!("get pod [{target}]"), get);
        row(&format!("list {target} pods (watch cache)"), list);
        row(&format!("list {target} pods, resourceVersion=0"), list_any);
        row(&format!("list {target} pods, no watch cache"), list_etcd);
        row(&format!("list {target} pods, pages of 500"), paged);
        row(&format!("etcd range of {target} pods (raw)"), raw_list);
        row(&format!("write -> watch event [{target}]"), watch);
        println!(
            "ratio vs raw etcd (p50): create/put {:.1}x, get/get {:.1}x, list/range {:.1}x, watch {:.1}x",
            create.0 / raw_put.0,
            get.0 / raw_get.0,
            list.0 / raw_list.0,
            watch.0 / raw_watch.0
        );
    }
    // 500 kubelets' watches (each sees only its node's pods): what they add to a create.
    let base = create_times(&c, "w0", 200).await;
    let watchers = node_watchers(&c, 500).await;
    let with = create_times(&c, "w500", 200).await;
    row("create pod, no node watchers", base);
    row("create pod, 500 node watchers", with);
    println!(
        "500 field-selected watchers add {:.0}% to create p50, {:.0}% to p99",
        (with.0 / base.0 - 1.0) * 100.0,
        (with.1 / base.1 - 1.0) * 100.0
    );
    for w in watchers {
        w.abort();
    }
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../results/apiserver.json");
    let _ = std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/../results"));
    std::fs::write(out, serde_json::to_vec_pretty(&json!({"benchmark": "apiserver", "rows": *ROWS.lock().unwrap()})).unwrap()).unwrap();
    println!("wrote {out}");
}
