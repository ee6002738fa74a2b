//! The watch cache against a real etcd: after a random run of creates, updates and
//! deletes — through an etcd restart and a compaction — the cache holds exactly what etcd
//! holds; a LIST at a resourceVersion with `resourceVersionMatch=Exact` is exactly that
//! snapshot; a watcher that stops reading is cut off while a hundred others receive every
//! event in order.

mod common;
use common::*;
use futures::StreamExt;
use pkg::api::ConfigMap;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// name -> (resourceVersion, data) of a list.
fn contents(list: &Value) -> BTreeMap<String, (String, Value)> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let key = format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap());
            (key, (o["metadata"]["resourceVersion"].as_str().unwrap().to_string(), o["data"].clone()))
        })
        .collect()
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Send a write until etcd answers (it may be restarting).
async fn write(c: &Cluster, method: reqwest::Method, path: &str, body: Option<&Value>) -> u16 {
    loop {
        let mut req = c.http.request(method.clone(), c.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        let code = req.send().await.unwrap().status().as_u16();
        if code != 503 && code != 500 && code != 504 {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the cache holds (read from it directly) and what etcd holds at the same revision.
async fn cache_and_etcd(c: &Cluster) -> (BTreeMap<String, (String, Value)>, BTreeMap<String, (String, Value)>, i64) {
    let caches = c.server.api.caches.as_ref().expect("the watch cache is on by default");
    assert!(caches.wait_fresh().await.unwrap(), "the cache catches up with etcd");
    let cache = caches.of::<ConfigMap>().await.unwrap();
    let (entries, rev) = cache.list("/registry/configmaps/");
    let cached = json!({"items": entries.iter().map(|e| serde_json::to_value(&e.obj).unwrap()).collect::<Vec<_>>()});
    let (code, exact) = c.get(&format!("/api/v1/configmaps?resourceVersion={rev}&resourceVersionMatch=Exact")).await;
    assert_eq!(code, 200, "{exact}");
    assert_eq!(exact["metadata"]["resourceVersion"], rev.to_string());
    (contents(&cached), contents(&exact), rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_and_etcd_agree_after_random_changes_restarts_and_compaction() {
    let mut c = Cluster::start().await;
    let mut rng = Rng(0x5eed_cafe);
    let namespaces = ["default", "kube-public"];
    for step in 0..400 {
        let ns = namespaces[rng.below(2) as usize];
        let name = format!("cm-{}", rng.below(25));
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let body = json!({"metadata": {"name": name}, "data": {"step": step.to_string()}});
        match rng.below(3) {
            0 => write(&c, reqwest::Method::POST, &path, Some(&body)).await,
            1 => write(&c, reqwest::Method::PUT, &format!("{path}/{name}"), Some(&body)).await,
            _ => write(&c, reqwest::Method::DELETE, &format!("{path}/{name}"), None).await,
        };
        if step == 150 {
            let (cached, etcd, _) = cache_and_etcd(&c).await;
            assert_eq!(cached, etcd, "before the restart");
            c.etcd.stop();
            c.etcd.restart();
        }
        if step == 250 {
            let mut etcd = etcd_client::Client::connect([c.etcd.url.as_str()], None).await.unwrap();
            let now = etcd.get("/", None).await.unwrap().header().unwrap().revision();
            etcd.compact(now, None).await.unwrap();
        }
    }
    let (cached, etcd, rev) = cache_and_etcd(&c).await;
    assert!(!etcd.is_empty());
    assert_eq!(cached, etcd, "at revision {rev}");
    // The LISTs clients make agree too: consistent (no resourceVersion), any (0), one namespace.
    let (_, consistent) = c.get("/api/v1/configmaps").await;
    assert_eq!(contents(&consistent), etcd);
    let (_, any) = c.get("/api/v1/configmaps?resourceVersion=0").await;
    assert_eq!(contents(&any), etcd);
    let (_, one) = c.get("/api/v1/namespaces/kube-public/configmaps").await;
    let want: BTreeMap<_, _> = etcd.into_iter().filter(|(k, _)| k.starts_with("kube-public/")).collect();
    assert_eq!(contents(&one), want);
}

#[tokio::test]
async fn a_list_at_a_resource_version_is_exactly_that_snapshot() {
    let c = Cluster::start().await;
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    for n in ["a", "b", "c"] {
        c.create(CMS, json!({"metadata": {"name": n}, "data": {"v": "1"}})).await;
    }
    let (_, then) = c.get(CMS).await;
    let rv = then["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    c.delete(&format!("{CMS}/a")).await;
    c.put(&format!("{CMS}/b"), &json!({"metadata": {"name": "b"}, "data": {"v": "2"}})).await;
    c.create(CMS, json!({"metadata": {"name": "d"}})).await;

    let (code, exact) = c.get(&format!("{CMS}?resourceVersion={rv}&resourceVersionMatch=Exact")).await;
    assert_eq!(code, 200, "{exact}");
    assert_eq!(contents(&exact), contents(&then), "exactly the snapshot at {rv}");
    assert_eq!(exact["metadata"]["resourceVersion"], rv);
    // NotOlderThan (the default for a given resourceVersion): the state now, which is newer.
    let (_, now) = c.get(&format!("{CMS}?resourceVersion={rv}")).await;
    assert_eq!(contents(&now).keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["default/b", "default/c", "default/d"]);
    // Bad combinations are clear errors with the field they are about.
    let (code, st) = c.get(&format!("{CMS}?resourceVersionMatch=Exact")).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("resourceVersionMatch")), "{st}");
    let (code, st) = c.get(&format!("{CMS}?resourceVersion=0&resourceVersionMatch=Exact")).await;
    assert_eq!(code, 422, "{st}");
    let (code, st) = c.get(&format!("{CMS}?resourceVersion=abc")).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("resourceVersion")), "{st}");
    // A revision etcd has not reached yet: Kubernetes' "Too large resource version" after a wait.
    let (code, st) = c.get(&format!("{CMS}?resourceVersion={}", rv.parse::<i64>().unwrap() + 1_000_000)).await;
    assert_eq!((code, st["reason"].as_str()), (504, Some("Timeout")), "{st}");
    assert_eq!(st["details"]["causes"][0]["reason"], "ResourceVersionTooLarge", "what client-go's reflector looks for: {st}");
    // With a limit, a resourceVersion without a match is exact (Kubernetes' legacy rule).
    let (_, page) = c.get(&format!("{CMS}?limit=2&resourceVersion={rv}")).await;
    assert_eq!(contents(&page).keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["default/a", "default/b"], "{page}");
    // Compacted away: 410, as from etcd.
    let mut etcd = etcd_client::Client::connect([c.etcd.url.as_str()], None).await.unwrap();
    let now = etcd.get("/", None).await.unwrap().header().unwrap().revision();
    etcd.compact(now, None).await.unwrap();
    let (code, st) = c.get(&format!("{CMS}?resourceVersion={rv}&resourceVersionMatch=Exact")).await;
    assert_eq!(code, 410, "{st}");
}

#[derive(serde::Deserialize)]
struct Ev {
    #[serde(rename = "type")]
    kind: String,
    object: Meta,
}
#[derive(serde::Deserialize)]
struct Meta {
    metadata: NameRv,
}
#[derive(serde::Deserialize)]
struct NameRv {
    name: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: String,
}

/// Read a watch until it has `n` events or ends; the events and whether it ended.
async fn drain(resp: reqwest::Response, n: usize, within: Duration) -> (Vec<Ev>, bool) {
    let mut stream = resp.bytes_stream();
    let (mut buf, mut out) = (Vec::new(), vec![]);
    let read = async {
        while out.len() < n {
            match stream.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                _ => return true,
            }
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                out.push(serde_json::from_slice::<Ev>(&line).unwrap());
            }
        }
        false
    };
    let ended = tokio::time::timeout(within, read).await.expect("the watch delivers in time");
    (out, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_is_cut_off_while_a_hundred_others_receive_every_event() {
    const N: usize = 1000;
    // Each watch holds 50 events for its client here (1,000 by default); the kernel holds
    // about 1.5 MB more on loopback, so 1,000 events of 4 KB leave the stalled one behind.
    let c = Cluster::start_with(|cfg| cfg.watch_buffer = 50).await;
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    let (_, list) = c.get(CMS).await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let watch = format!("{CMS}?watch=true&resourceVersion={rv}");
    // The stalled one: asks, then never reads a byte (and its socket holds little, so
    // what the server sends backs up in the server, not in the kernel).
    let addr = c.base.trim_start_matches("http://").to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr.parse().unwrap()).await.unwrap();
    stalled.write_all(format!("GET {watch} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    // A hundred that read.
    let mut readers = vec![];
    for _ in 0..100 {
        let resp = c.http.get(c.url(&watch)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        readers.push(tokio::spawn(drain(resp, N, Duration::from_secs(120))));
    }
    let names: Vec<String> = (0..N).map(|i| format!("cm-{i:05}")).collect();
    futures::stream::iter(names.iter().cloned())
        .for_each_concurrent(16, |name| {
            let c = &c;
            async move {
                c.create(CMS, json!({"metadata": {"name": name}, "data": {"filler": "x".repeat(4000)}})).await;
            }
        })
        .await;
    for r in readers {
        let (evs, ended) = r.await.unwrap();
        assert!(!ended, "a reader's watch was ended");
        assert_eq!(evs.len(), N);
        assert!(evs.iter().all(|e| e.kind == "ADDED"));
        let revs: Vec<i64> = evs.iter().map(|e| e.object.metadata.resource_version.parse().unwrap()).collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "in revision order");
        let mut seen: Vec<String> = evs.into_iter().filter_map(|e| e.object.metadata.name).collect();
        seen.sort();
        assert_eq!(seen, names, "every event, once");
    }
    // The stalled watcher's stream has been ended by the server: reading it now reaches the end.
    let mut got = Vec::new();
    let mut stalled = tokio::io::BufReader::new(stalled);
    let read = tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut got)).await;
    let head = String::from_utf8_lossy(&got[..got.len().min(300)]).into_owned();
    assert!(read.is_ok(), "the stalled watch still open after its readers got everything ({} bytes: {head})", got.len());
    let events = got.split(|&b| b == b'\n').filter(|l| l.starts_with(b"{\"type\":\"ADDED\"")).count();
    assert!(events < N, "the stalled watcher was cut off before the end ({events} of {N} events)");
}

/// Pages come from the cache, as the first page's snapshot: the later pages are read with
/// etcd stopped, and a ConfigMap made and one deleted after the first page do not show.
#[tokio::test]
async fn pages_are_read_from_the_cache_as_the_first_pages_snapshot() {
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    let mut c = Cluster::start().await;
    for i in 0..7 {
        c.create(CMS, json!({"metadata": {"name": format!("cm-{i}")}})).await;
    }
    let (_, first) = c.get(&format!("{CMS}?limit=3")).await;
    assert_eq!(first["metadata"]["remainingItemCount"], 4, "{first}");
    c.create(CMS, json!({"metadata": {"name": "cm-35"}})).await;
    assert_eq!(c.delete(&format!("{CMS}/cm-5")).await.0, 200);
    c.etcd.stop();
    let mut names: Vec<String> = vec![];
    let mut next = first["metadata"]["continue"].as_str().map(String::from);
    while let Some(t) = next {
        let (code, page) = c.get(&format!("{CMS}?limit=3&continue={t}")).await;
        assert_eq!(code, 200, "etcd is down, the cache answers: {page}");
        assert_eq!(page["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
        names.extend(page["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        next = page["metadata"]["continue"].as_str().map(String::from);
    }
    assert_eq!(names, ["cm-3", "cm-4", "cm-5", "cm-6"]);
}
