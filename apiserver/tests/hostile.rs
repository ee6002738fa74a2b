//! What bad clients broke (issue "Reliability and security"), one regression test each,
//! against a real apiserver on a real etcd: watch clients that never read, deeply
//! nested bodies, huge grace periods, objects too big for etcd, bad DELETE bodies,
//! multi-document POSTs that fail half-way, validation gaps, an etcd that stops
//! answering, and a namespace deleted while objects are created in it.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";
const SVCS: &str = "/api/v1/namespaces/default/services";

/// etcd's own count of the watchers it serves (`etcd_debugging_mvcc_watcher_total`).
async fn etcd_watchers(etcd: &Etcd) -> i64 {
    let text = reqwest::get(format!("{}/metrics", etcd.url)).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("etcd_debugging_mvcc_watcher_total "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
        .expect("etcd reports its watchers")
}

/// etcd's watcher count once the apiserver's own controllers have opened theirs (it
/// holds for two seconds).
async fn settled_watchers(etcd: &Etcd) -> i64 {
    let mut last = etcd_watchers(etcd).await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = etcd_watchers(etcd).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A watch request on a raw socket that is then never read.
fn unread_watch(c: &Cluster, query: &str) -> std::net::TcpStream {
    let addr = c.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    write!(s, "GET {CMS}?watch=true{query} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    s
}

/// Three watchers that never read must not take the API down: every write succeeds while
/// their streams back up, each is dropped once it is too far behind, and etcd is left
/// serving none of their watches. (With `--watch-cache=false`, so that each watch is an
/// etcd watch that can be counted; tests/watchcache.rs has the cached case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_never_read_do_not_take_the_api_down() {
    let c = Cluster::start_with(|cfg| cfg.watch_cache = false).await;
    let baseline = settled_watchers(&c.etcd).await;
    let _idle: Vec<_> = (0..3).map(|_| unread_watch(&c, "")).collect();
    eventually(10, "three watches at etcd", || async { (etcd_watchers(&c.etcd).await >= baseline + 3).then_some(()) }).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let big = "x".repeat(64 * 1024);
    for i in 0..400 {
        let r = http.post(c.url(CMS)).json(&json!({"metadata": {"name": format!("cm-{i}")}, "data": {"blob": big}})).send().await;
        let code = r.map(|r| r.status().as_u16()).unwrap_or(0);
        assert_eq!(code, 201, "create {i} while three watchers do not read (0: no answer in 10 s)");
    }
    let r = http.get(c.url(&format!("{CMS}/cm-0"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // ~26 MiB of events each: far past what a watcher may leave unread; their etcd watches end.
    eventually(20, "the slow watchers' etcd watches to end", || async { (etcd_watchers(&c.etcd).await <= baseline).then_some(()) }).await;
}

/// `timeoutSeconds` ends a watch even when its client reads nothing: its etcd watch ends
/// (without the watch cache), and its response ends (with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_seconds_ends_an_unread_watch() {
    let c = Cluster::start_with(|cfg| cfg.watch_cache = false).await;
    let baseline = settled_watchers(&c.etcd).await;
    let _idle = unread_watch(&c, "&timeoutSeconds=1");
    eventually(10, "the watch at etcd", || async { (etcd_watchers(&c.etcd).await > baseline).then_some(()) }).await;
    eventually(10, "the watch to end after its timeout", || async { (etcd_watchers(&c.etcd).await <= baseline).then_some(()) }).await;

    let c = Cluster::start().await;
    let mut idle = unread_watch(&c, "&timeoutSeconds=1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(b"\r\n0\r\n\r\n") {
        let n = std::io::Read::read(&mut idle, &mut buf).expect("the cached watch's response ends after its timeout");
        assert!(n > 0, "connection closed before the response ended");
        got.extend_from_slice(&buf[..n]);
    }
}

/// A body nested 100,000 deep is refused at once with a 400 that says why, and never
/// parsed (which took 16 s of a request thread per body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_bodies_are_refused() {
    let c = Cluster::start().await;
    for (ty, body) in [
        ("application/yaml", format!("data: {}{}", "[".repeat(100_000), "]".repeat(100_000))),
        ("application/json", format!("{{\"data\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000))),
        ("application/yaml", format!("metadata:\n{}", (1..2000).map(|d| format!("{}a{d}:\n", " ".repeat(d))).collect::<String>())),
    ] {
        let r = c.http.post(c.url(CMS)).header("content-type", ty).body(body).send().await.unwrap();
        let code = r.status().as_u16();
        let st: Value = r.json().await.unwrap();
        assert_eq!((code, st["kind"].as_str()), (400, Some("Status")), "{ty}: {st}");
        assert!(st["message"].as_str().unwrap().contains("nested"), "{ty}: {st}");
    }
    // Reasonable nesting still works.
    let ok = "metadata: {name: fine}\ndata: {a: '[[[[1]]]]'}\n";
    let r = c.http.post(c.url(CMS)).header("content-type", "application/yaml").body(ok).send().await.unwrap();
    assert_eq!(r.status(), 201);
}

/// A DELETE whose body does not parse deletes nothing.
#[tokio::test]
async fn a_delete_with_a_bad_body_deletes_nothing() {
    let c = Cluster::start().await;
    c.create(CMS, json!({"metadata": {"name": "keep"}})).await;
    for body in ["{not json", "[1,2]", "{\"gracePeriodSeconds\": \"soon\"}"] {
        let r = c.http.delete(c.url(&format!("{CMS}/keep"))).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    assert_eq!(c.get(&format!("{CMS}/keep")).await.0, 200);
}

/// Grace periods near i64::MAX neither panic nor strand the pod: the deletion is dated
/// at the last representable second, and a forced delete (`gracePeriodSeconds=0`) still
/// removes it.
#[tokio::test]
async fn huge_grace_periods_do_not_strand_a_pod() {
    let c = Cluster::start().await;
    c.ready_node("n1", "10.0.0.1", json!({})).await;
    for (name, spec_grace, query) in [("a", i64::MAX, String::new()), ("b", 30, format!("?gracePeriodSeconds={}", i64::MAX - 1))] {
        let mut p = pod(name, json!({}));
        p["spec"]["nodeName"] = json!("n1");
        p["spec"]["terminationGracePeriodSeconds"] = json!(spec_grace);
        c.create(PODS, p).await;
        let r = c.http.delete(c.url(&format!("{PODS}/{name}{query}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let (_, got) = c.get(&format!("{PODS}/{name}")).await;
        assert!(got["metadata"]["deletionTimestamp"].as_str().is_some_and(|t| t.starts_with("9999-")), "{got}");
        let r = c.http.delete(c.url(&format!("{PODS}/{name}?gracePeriodSeconds=0"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(c.get(&format!("{PODS}/{name}")).await.0, 404, "{name}: force-deleted");
    }
    // A negative grace period means one second, as in Kubernetes.
    let mut p = pod("c", json!({}));
    p["spec"]["nodeName"] = json!("n1");
    c.create(PODS, p).await;
    c.http.delete(c.url(&format!("{PODS}/c?gracePeriodSeconds=-5"))).send().await.unwrap();
    assert_eq!(c.get(&format!("{PODS}/c")).await.1["metadata"]["deletionGracePeriodSeconds"], 1);
}

/// A multi-document POST whose second document fails stores nothing.
#[tokio::test]
async fn a_multi_document_post_is_all_or_nothing() {
    let c = Cluster::start().await;
    let yaml = "metadata: {name: first}\n---\nmetadata: {name: Second_Bad}\n";
    let r = c.http.post(c.url(CMS)).header("content-type", "application/yaml").body(yaml).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(c.get(&format!("{CMS}/first")).await.0, 404, "the first document was not stored");
}

/// An object etcd cannot store (its request limit is 1.5 MiB) is a 413, not a 500.
#[tokio::test]
async fn objects_too_big_for_etcd_are_413() {
    let c = Cluster::start().await;
    // (A ConfigMap's data is limited to 1 MiB by validation; a pod's env values are not.)
    let mut p = pod("big", json!({}));
    p["spec"]["containers"][0]["env"] = json!([{"name": "BLOB", "value": "x".repeat(2 * 1024 * 1024)}]);
    let (code, st) = c.post(PODS, &p).await;
    assert_eq!((code, st["reason"].as_str()), (413, Some("RequestEntityTooLarge")), "{st}");
    assert_eq!(c.get(&format!("{PODS}/big")).await.0, 404);
}

/// A write etcd does not answer in time is a 504 "may still be processing" (it may have
/// committed); the API answers again once etcd does.
#[tokio::test]
async fn a_write_etcd_does_not_answer_is_504() {
    let c = Cluster::start().await;
    let pid = c.etcd.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // (A namespace: nothing is read before its write, so the write is what times out.)
    let (code, st) = c.post("/api/v1/namespaces", &json!({"metadata": {"name": "maybe"}})).await;
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert_eq!((code, st["reason"].as_str()), (504, Some("Timeout")), "{st}");
    assert!(st["message"].as_str().unwrap().contains("may still be processing"), "{st}");
    eventually(10, "the API to answer again", || async { (c.get(CMS).await.0 == 200).then_some(()) }).await;
}

/// The validation gaps found by probing, each a 422 (or 400) naming what is wrong.
#[tokio::test]
async fn validation_gaps_are_closed() {
    let c = Cluster::start().await;
    let mut p = pod("host", json!({}));
    p["spec"]["hostname"] = json!("web\n10.0.0.1 evil");
    let (code, st) = c.post(PODS, &p).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("spec.hostname")), "{st}");
    for ip in ["10.96.0.0", "10.96.255.255"] {
        let (code, st) = c.post(SVCS, &json!({"metadata": {"name": "edge"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})).await;
        assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("spec.clusterIP")), "{ip}: {st}");
    }
    let (code, st) =
        c.post(SVCS, &json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "not a host!"}})).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("spec.externalName")), "{st}");
    for sel in ["x in ()", "a=-x", "a/b/c=d"] {
        let q: String = form_urlencoded::byte_serialize(sel.as_bytes()).collect();
        let (code, st) = c.get(&format!("{PODS}?labelSelector={q}")).await;
        assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")), "{sel}: {st}");
    }
    for q in ["timeoutSeconds=abc", "watch=true&resourceVersion=-5"] {
        let (code, st) = c.get(&format!("{PODS}?{q}")).await;
        assert_eq!((code, st["kind"].as_str()), (400, Some("Status")), "{q}: {st}");
    }
    let r = c.http.get(c.url("/api/v1/namespaces/%FF/pods")).send().await.unwrap();
    let code = r.status().as_u16();
    let st: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!((code / 100, st["kind"].as_str()), (4, Some("Status")), "{st}");
}

/// A namespace being deleted takes nothing new: it turns Terminating at once, creates
/// racing with its deletion fail (403, or 404 once it is gone), and what it held (a
/// ClusterIP, a nodePort) is free afterwards, with nothing back when it is recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_being_deleted_takes_nothing_new() {
    let c = Cluster::start().await;
    let (code, st) = c.post("/api/v1/namespaces/nowhere/configmaps", &json!({"metadata": {"name": "x"}})).await;
    assert_eq!((code, st["reason"].as_str()), (404, Some("NotFound")), "{st}");
    c.create("/api/v1/namespaces", json!({"metadata": {"name": "doomed"}})).await;
    let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.5.5", "ports": [{"port": 80, "nodePort": 30555}]}});
    c.create("/api/v1/namespaces/doomed/services", svc.clone()).await;
    // Creates race with the deletion: none may survive it.
    let racers: Vec<_> = (0..40)
        .map(|i| {
            let (http, url) = (c.http.clone(), c.url("/api/v1/namespaces/doomed/configmaps"));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 5)).await;
                http.post(url).json(&json!({"metadata": {"name": format!("cm-{i}")}})).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (code, ns) = c.delete("/api/v1/namespaces/doomed").await;
    assert_eq!((code, ns["status"]["phase"].as_str()), (200, Some("Terminating")), "{ns}");
    let (code, st) = c.post("/api/v1/namespaces/doomed/configmaps", &json!({"metadata": {"name": "late"}})).await;
    assert!(code == 403 || code == 404, "{code}: {st}");
    for r in racers {
        assert!([201, 403, 404].contains(&r.await.unwrap()));
    }
    eventually(20, "the namespace to go", || async { (c.get("/api/v1/namespaces/doomed").await.0 == 404).then_some(()) }).await;
    c.create("/api/v1/namespaces", json!({"metadata": {"name": "doomed"}})).await;
    let (_, cms) = c.get("/api/v1/namespaces/doomed/configmaps").await;
    assert_eq!(cms["items"].as_array().unwrap().len(), 0, "nothing came back: {cms}");
    // Its ClusterIP and nodePort were released.
    c.create(SVCS, svc).await;
}

/// Started while etcd is down, the apiserver serves at once (503), and works when etcd comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_starts_and_answers_while_etcd_is_down() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let server = tokio::time::timeout(Duration::from_secs(30), apiserver::Server::start(config(&etcd)))
        .await
        .expect("the apiserver does not wait for etcd to open its port")
        .unwrap();
    let base = format!("http://{}", server.addr);
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let r = reqwest::get(format!("{base}/api/v1/namespaces")).await.unwrap();
    assert_eq!(r.status(), 503);
    let st: Value = r.json().await.unwrap();
    assert_eq!(st["kind"], "Status");
    etcd.restart();
    eventually(30, "the default namespace", || async {
        let r = reqwest::get(format!("{base}/api/v1/namespaces/default")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

/// When etcd goes away under a watch, the client's stream ends (after an ERROR event), so
/// it watches again: it must not stay open and silent (the controllers missed every change
/// after an etcd restart until their watch timed out, ~5 minutes later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_when_etcd_goes_away() {
    let mut c = Cluster::start_with(|cfg| cfg.watch_cache = false).await;
    for bookmarks in ["false", "true"] {
        let r = c.http.get(c.url(&format!("{CMS}?watch=true&resourceVersion=0&allowWatchBookmarks={bookmarks}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = tokio::spawn(async move { r.text().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.etcd.stop();
        let text = tokio::time::timeout(Duration::from_secs(20), body).await.expect("the watch ended").unwrap().unwrap_or_default();
        assert!(text.contains("\"ERROR\""), "bookmarks={bookmarks}: {text}");
        c.etcd.restart();
        eventually(20, "etcd back", || async { (c.get(CMS).await.0 == 200).then_some(()) }).await;
    }
}

/// With the watch cache, an etcd restart is not the clients' business: the cache's own
/// watch resumes from the last revision it saw, and a client's watch carries on and sees
/// what is written after etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_watch_carries_on_through_an_etcd_restart() {
    let mut c = Cluster::start().await;
    let r = c.http.get(c.url(&format!("{CMS}?watch=true&resourceVersion=0"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    c.etcd.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.etcd.restart();
    let created = eventually(20, "a write after etcd is back", || async {
        let (code, v) = c.post(CMS, &json!({"metadata": {"name": "after"}})).await;
        (code == 201).then_some(v)
    })
    .await;
    let mut text = String::new();
    let read = async {
        while !text.contains("\"after\"") {
            let chunk = futures::StreamExt::next(&mut stream).await.expect("the watch carries on").unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("the event after the restart arrives");
    assert!(text.contains(created["metadata"]["resourceVersion"].as_str().unwrap()), "{text}");
    assert!(!text.contains("\"ERROR\""), "{text}");
}

/// Only a node may register itself or say where it is (its status addresses are where the
/// apiserver dials, with the agent credential); anyone else may still read and label it.
#[tokio::test]
async fn only_a_node_registers_itself_and_posts_its_status() {
    let tokens = apiserver::noderestriction::Tokens::parse("t1,system:node:node1,node1\nt2,system:node:node2,node2\n").unwrap();
    let c = Cluster::start_with(|cfg| cfg.tokens = Some(tokens)).await;
    let send = |method: reqwest::Method, path: &str, token: Option<&str>, body: Value| {
        let mut rq = c.http.request(method, c.url(path)).json(&body);
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        async move { rq.send().await.unwrap().status().as_u16() }
    };
    let node = json!({"metadata": {"name": "node1"}});
    assert_eq!(send(reqwest::Method::POST, "/api/v1/nodes", None, node.clone()).await, 403, "anonymous may not register a node");
    assert_eq!(send(reqwest::Method::POST, "/api/v1/nodes", Some("t2"), node.clone()).await, 403, "node2 may not register node1");
    assert_eq!(send(reqwest::Method::POST, "/api/v1/nodes", Some("t1"), node).await, 201);
    let status = json!({"metadata": {"name": "node1"}, "status": {"addresses": [{"type": "InternalIP", "address": "203.0.113.7"}]}});
    for (token, want) in [(None, 403), (Some("t2"), 403), (Some("bogus"), 401), (Some("t1"), 200)] {
        assert_eq!(send(reqwest::Method::PUT, "/api/v1/nodes/node1/status", token, status.clone()).await, want, "{token:?}");
    }
    let label = json!({"metadata": {"labels": {"zone": "a"}}});
    let r = c
        .http
        .patch(c.url("/api/v1/nodes/node1"))
        .header("content-type", "application/merge-patch+json")
        .json(&label)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "labels stay open to anyone");
    assert_eq!(c.get("/api/v1/nodes/node1").await.0, 200);
    assert_eq!(send(reqwest::Method::GET, "/api/v1/pods", Some("bogus"), Value::Null).await, 401, "an unknown token is refused everywhere");
}
