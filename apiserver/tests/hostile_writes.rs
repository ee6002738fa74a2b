//! What a hostile or careless writer still got through (issue "Hardening II"), one
//! regression test per finding, against a real apiserver on a real etcd: patches that
//! erase metadata, `$retainKeys` that drops what the patch sets, a changed `uid`, an apply
//! that skipped the checks other verbs make, and deletes with bad options. Each answer is
//! checked against kube-apiserver's own (code, reason and wording).

mod common;
use common::*;
use serde_json::{json, Value};

const PODS: &str = "/api/v1/namespaces/default/pods";
const CMS: &str = "/api/v1/namespaces/default/configmaps";

/// A pod with labels and annotations, as stored.
async fn labelled_pod(c: &Cluster, name: &str) -> Value {
    let mut p = pod(name, json!({"app": "web"}));
    p["metadata"]["annotations"] = json!({"note": "keep me"});
    c.create(PODS, p).await
}

fn metadata_kept(p: &Value) {
    assert_eq!(p["metadata"]["labels"], json!({"app": "web"}), "{p}");
    assert_eq!(p["metadata"]["annotations"], json!({"note": "keep me"}), "{p}");
}

/// Finding 1: every patch type that removes `metadata` leaves a nameless object, which
/// kube-apiserver's checkName refuses (400); the stored pod keeps its labels and annotations.
#[tokio::test]
async fn patches_that_remove_metadata_are_refused() {
    let c = Cluster::start().await;
    let before = labelled_pod(&c, "keep").await;
    let patches = [
        ("application/merge-patch+json", r#"{"metadata":null}"#),
        ("application/strategic-merge-patch+json", r#"{"metadata":{"$patch":"delete"}}"#),
        ("application/strategic-merge-patch+json", r#"{"metadata":null}"#),
        ("application/json-patch+json", r#"[{"op":"remove","path":"/metadata"}]"#),
    ];
    for (ct, body) in patches {
        let (code, st) = send(&c, "PATCH", &format!("{PODS}/keep"), ct, body).await;
        assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")), "{ct} {body}: {st}");
        assert_eq!(st["message"], "the name of the object (keep based on URL) was undeterminable: name must be provided", "{st}");
    }
    let (_, after) = c.get(&format!("{PODS}/keep")).await;
    metadata_kept(&after);
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "nothing was written");
    // A PUT must name its object too.
    let mut nameless = after.clone();
    nameless["metadata"].as_object_mut().unwrap().remove("name");
    let (code, st) = c.put(&format!("{PODS}/keep"), &nameless).await;
    assert_eq!(code, 400, "{st}");
}

/// Finding 2: `$retainKeys` that leaves out a key the patch sets, or is not a list, is
/// apimachinery's "invalid patch format of retainKeys" (400), and nothing is written.
#[tokio::test]
async fn retain_keys_that_would_drop_the_patch_are_refused() {
    let c = Cluster::start().await;
    labelled_pod(&c, "keep").await;
    for body in [r#"{"metadata":{"$retainKeys":["name"],"labels":{"n":"1"}}}"#, r#"{"metadata":{"$retainKeys":"notalist"}}"#] {
        let (code, st) = send(&c, "PATCH", &format!("{PODS}/keep"), "application/strategic-merge-patch+json", body).await;
        assert_eq!((code, st["message"].as_str()), (400, Some("invalid patch format of retainKeys")), "{body}: {st}");
    }
    metadata_kept(&c.get(&format!("{PODS}/keep")).await.1);
}

/// Finding 3: a PUT carrying another uid is a failed precondition (409, worded as
/// kube-apiserver's storage words it); a patch or an apply that sets another uid is 422
/// (metadata.uid is immutable).
#[tokio::test]
async fn a_changed_uid_is_refused() {
    let c = Cluster::start().await;
    let stored = labelled_pod(&c, "keep").await;
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_string();
    let other = "0b6e7a55-0000-4000-8000-000000000001";
    let mut body = stored.clone();
    body["metadata"]["uid"] = json!(other);
    let (code, st) = c.put(&format!("{PODS}/keep"), &body).await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")), "{st}");
    let want = format!(
        "Operation cannot be fulfilled on pods \"keep\": StorageError: invalid object, Code: 4, Key: /registry/pods/default/keep, \
         ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in precondition: {other}, UID in object meta: {uid}"
    );
    assert_eq!(st["message"], want.as_str());
    let merge = format!(r#"{{"metadata":{{"uid":"{other}"}}}}"#);
    let (code, st) = send(&c, "PATCH", &format!("{PODS}/keep"), "application/merge-patch+json", &merge).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("metadata.uid")), "{st}");
    assert_eq!(st["message"], format!("Pod \"keep\" is invalid: metadata.uid: Invalid value: \"{other}\": field is immutable").as_str());
    let apply = format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"keep","uid":"{other}"}}}}"#);
    let (code, st) = send(&c, "PATCH", &format!("{PODS}/keep?fieldManager=hostile"), "application/apply-patch+yaml", &apply).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("metadata.uid")), "{st}");
    assert_eq!(c.get(&format!("{PODS}/keep")).await.1["metadata"]["uid"], uid.as_str());
    // The right uid is no obstacle.
    let (code, st) = c.put(&format!("{PODS}/keep"), &stored).await;
    assert_eq!(code, 200, "{st}");
}

/// Finding 4: server-side apply makes the checks the other verbs make — a field manager
/// over 128 characters is 422, and a stale resourceVersion in the configuration is 409.
#[tokio::test]
async fn apply_checks_its_manager_and_resource_version() {
    let c = Cluster::start().await;
    let cm = |rv: Option<&str>| {
        let mut v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}});
        if let Some(rv) = rv {
            v["metadata"]["resourceVersion"] = json!(rv);
        }
        v.to_string()
    };
    let apply = |manager: String, body: String| {
        let c = &c;
        async move { send(c, "PATCH", &format!("{CMS}/cfg?fieldManager={manager}"), "application/apply-patch+yaml", &body).await }
    };
    let (code, st) = apply("m".repeat(200), cm(None)).await;
    assert_eq!((code, st["details"]["causes"][0]["field"].as_str()), (422, Some("fieldManager")), "{st}");
    assert_eq!(st["message"], "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes");
    assert_eq!(c.get(&format!("{CMS}/cfg")).await.0, 404, "nothing was stored");
    let (code, created) = apply("m".repeat(128), cm(None)).await;
    assert_eq!(code, 201, "{created}");
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    c.put(&format!("{CMS}/cfg"), &json!({"metadata": {"name": "cfg"}, "data": {"a": "2"}})).await;
    let (code, st) = apply("mgr".into(), cm(Some(&rv))).await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")), "a stale resourceVersion: {st}");
    assert_eq!(c.get(&format!("{CMS}/cfg")).await.1["data"]["a"], "2");
    let live = c.get(&format!("{CMS}/cfg")).await.1["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    // (forced: the PUT made its writer the owner of data.a)
    let (code, st) = apply("mgr&force=true".into(), cm(Some(&live))).await;
    assert_eq!(code, 200, "the live resourceVersion: {st}");
}

/// Deletes whose preconditions fail say which one, as kube-apiserver's rest.BeforeDelete does.
#[tokio::test]
async fn failed_delete_preconditions_say_which() {
    let c = Cluster::start().await;
    let cm = c.create(CMS, json!({"metadata": {"name": "x"}})).await;
    let (uid, rv) = (cm["metadata"]["uid"].as_str().unwrap(), cm["metadata"]["resourceVersion"].as_str().unwrap());
    let (code, st) = send(&c, "DELETE", &format!("{CMS}/x"), "application/json", r#"{"preconditions":{"uid":"nope"}}"#).await;
    assert_eq!(code, 409);
    let want = format!(
        "Operation cannot be fulfilled on ConfigMap \"x\": the UID in the precondition (nope) does not match the UID in record ({uid}). \
         The object might have been deleted and then recreated"
    );
    assert_eq!(st["message"], want.as_str());
    let (code, st) = send(&c, "DELETE", &format!("{CMS}/x"), "application/json", r#"{"preconditions":{"resourceVersion":"1"}}"#).await;
    assert_eq!(code, 409);
    let want = format!(
        "Operation cannot be fulfilled on ConfigMap \"x\": the ResourceVersion in the precondition (1) does not match the ResourceVersion \
         in record ({rv}). The object might have been modified"
    );
    assert_eq!(st["message"], want.as_str());
    assert_eq!(c.get(&format!("{CMS}/x")).await.0, 200);
}

/// Finding 6: the protobuf envelope as Go's decoders read it — an empty TypeMeta is the
/// endpoint's kind, field number 0 is an illegal tag, and `Unknown.raw` of another wire
/// type is a decode error (400), not an empty object (422).
#[tokio::test]
async fn protobuf_envelopes_are_read_as_kube_apiserver_reads_them() {
    let c = Cluster::start().await;
    let post = |body: Vec<u8>| {
        let c = &c;
        async move {
            let r = c.http.post(c.url(CMS)).header("Content-Type", "application/vnd.kubernetes.protobuf").body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // k8s\0, Unknown{typeMeta: {} , raw: ConfigMap{metadata: {name: "plain"}}}
    let cm = [&[0x0a, 0x07, 0x0a, 0x05][..], b"plain"].concat();
    let body = [&b"k8s\0\x0a\x00\x12"[..], &[cm.len() as u8], &cm].concat();
    let (code, st) = post(body).await;
    assert_eq!(code, 201, "an empty TypeMeta is the endpoint's kind: {st}");
    assert_eq!((st["kind"].as_str(), st["metadata"]["name"].as_str()), (Some("ConfigMap"), Some("plain")));
    for (body, says) in [
        (&b"k8s\0\x00\x01"[..], "illegal tag 0"),
        (b"k8s\0\x12\x02\x00\x01", "illegal tag 0"),
        (b"k8s\0\x10\x05", "wrong wireType = 0 for field Raw"),
    ] {
        let (code, st) = post(body.to_vec()).await;
        assert_eq!(code, 400, "{body:?}: {st}");
        assert!(st["message"].as_str().unwrap_or("").contains(says), "{body:?}: {st}");
    }
}

/// Finding 5 (its memory is measured by `scripts/bench memory`): a ConfigMap of 200,000
/// keys (only 200,000 bytes of values: valid) is too big for etcd, and refused as such
/// (413) before its managedFields (one entry a key) are worked out.
#[tokio::test]
async fn a_configmap_of_200000_keys_is_too_large() {
    let c = Cluster::start().await;
    let data: serde_json::Map<String, Value> = (0..200_000).map(|i| (format!("k{i:06}"), json!("v"))).collect();
    let (code, st) = c.post(CMS, &json!({"metadata": {"name": "big"}, "data": data})).await;
    assert_eq!((code, st["reason"].as_str()), (413, Some("RequestEntityTooLarge")), "{}", st["message"]);
    assert!(st["message"].as_str().unwrap_or("").contains("more than etcd stores"), "{}", st["message"]);
    assert_eq!(c.get(&format!("{CMS}/big")).await.0, 404);
}

/// Finding 7, deletes (probed as a hostile client would): conflicting or unknown options
/// and bodies of another kind are refused before anything is deleted, a body's options
/// are the only ones (the query is read only without a body), and a negative grace
/// period is one second, as kube-apiserver answers.
#[tokio::test]
async fn deletes_with_bad_options_delete_nothing() {
    let c = Cluster::start().await;
    c.create(CMS, json!({"metadata": {"name": "x"}})).await;
    let refused = [
        (r#"{"orphanDependents":true,"propagationPolicy":"Orphan"}"#, 422, "orphanDependents and deletionPropagation cannot be both set"),
        (
            r#"{"propagationPolicy":"garbage"}"#,
            422,
            r#"Unsupported value: "garbage": supported values: "Foreground", "Background", "Orphan", "nil""#,
        ),
        (r#"{"dryRun":["foo"]}"#, 422, r#"dryRun: Unsupported value: []string{"foo"}: supported values: "All""#),
        (r#"{"kind":"Pod","apiVersion":"v1"}"#, 400, "decoded object cannot be converted to DeleteOptions"),
        (r#"{"kind":"DeleteOptions","apiVersion":"v9"}"#, 400, r#"no kind "DeleteOptions" is registered for version "v9""#),
    ];
    for (body, code, says) in refused {
        let (got, st) = send(&c, "DELETE", &format!("{CMS}/x"), "application/json", body).await;
        assert_eq!(got, code, "{body}: {st}");
        assert!(st["message"].as_str().unwrap_or("").contains(says), "{body}: {st}");
    }
    let (code, st) =
        send(&c, "DELETE", &format!("{CMS}/x?orphanDependents=true&propagationPolicy=Background"), "application/json", "").await;
    assert_eq!(code, 422, "the same in the query: {st}");
    assert_eq!(st["message"].as_str().unwrap_or("").split(": ").next(), Some("DeleteOptions.meta.k8s.io \"\" is invalid"));
    assert_eq!(c.get(&format!("{CMS}/x")).await.0, 200, "nothing was deleted");
    // With a body, the query's dryRun is not read: the delete is real.
    let (code, _) = send(&c, "DELETE", &format!("{CMS}/x?dryRun=All"), "application/json", "{}").await;
    assert_eq!(code, 200);
    assert_eq!(c.get(&format!("{CMS}/x")).await.0, 404);
    // A negative grace period is one second: a pod on a node is marked, not removed at once.
    c.ready_node("node1", "172.30.0.11", json!({})).await;
    let mut p = pod("p", json!({}));
    p["spec"]["nodeName"] = json!("node1");
    c.create(PODS, p).await;
    let (code, marked) = send(&c, "DELETE", &format!("{PODS}/p"), "application/json", r#"{"gracePeriodSeconds":-5}"#).await;
    assert_eq!((code, marked["metadata"]["deletionGracePeriodSeconds"].as_i64()), (200, Some(1)), "{marked}");
}

/// Finding 7, names, annotations, finalizers and sizes at their limits, as
/// ValidateObjectMeta and ValidateConfigMap bound them.
#[tokio::test]
async fn objects_at_their_limits() {
    let c = Cluster::start().await;
    let cm = |meta: Value, data: Value| json!({"metadata": meta, "data": data});
    let field = |st: &Value| st["details"]["causes"][0]["field"].as_str().map(String::from);
    // A subdomain name of 253 characters is a name (its parts are not labels), 254 is not.
    let long = "a".repeat(253);
    assert_eq!(c.post(CMS, &cm(json!({"name": long}), json!({}))).await.0, 201);
    let (code, st) = c.post(CMS, &cm(json!({"name": "a".repeat(254)}), json!({}))).await;
    let too_long = format!("Invalid value: \"{}\": must be no more than 253 characters", "a".repeat(254));
    assert_eq!((code, st["details"]["causes"][0]["message"].as_str()), (422, Some(too_long.as_str())));
    // generateName is cut so that the name fits.
    let (code, made) = c.post(CMS, &cm(json!({"generateName": "g".repeat(300)}), json!({}))).await;
    assert_eq!((code, made["metadata"]["name"].as_str().map(str::len)), (201, Some(63)), "{made}");
    // Annotations: 256 KiB in all, one byte more is too long.
    let ann = |n: usize| json!({"k": "v".repeat(n - 1)});
    assert_eq!(c.post(CMS, &cm(json!({"name": "ann", "annotations": ann(262_144)}), json!({}))).await.0, 201);
    let (code, st) = c.post(CMS, &cm(json!({"name": "ann2", "annotations": ann(262_145)}), json!({}))).await;
    assert_eq!((code, field(&st).as_deref()), (422, Some("metadata.annotations")), "{}", st["message"]);
    assert_eq!(st["details"]["causes"][0]["message"], "Too long: may not be more than 262144 bytes");
    let (code, st) = c.post(CMS, &cm(json!({"name": "ann3", "annotations": {"a b": "x"}}), json!({}))).await;
    assert_eq!((code, field(&st).as_deref()), (422, Some("metadata.annotations")), "{st}");
    // Finalizers: standard, or qualified with a domain.
    let (code, st) = c.post(CMS, &cm(json!({"name": "fin", "finalizers": ["never"]}), json!({}))).await;
    assert_eq!((code, field(&st).as_deref()), (422, Some("metadata.finalizers[0]")), "{st}");
    assert_eq!(c.post(CMS, &cm(json!({"name": "fin2", "finalizers": ["example.com/hold"]}), json!({}))).await.0, 201);
    // Labels: a value of 64 is too long, said at metadata.labels as ValidateLabels says it.
    let (code, st) = c.post(CMS, &cm(json!({"name": "lv", "labels": {"k": "v".repeat(64)}}), json!({}))).await;
    let cause = &st["details"]["causes"][0];
    assert_eq!((code, cause["field"].as_str()), (422, Some("metadata.labels")), "{st}");
    assert_eq!(cause["message"], format!("Invalid value: \"{}\": must be no more than 63 characters", "v".repeat(64)).as_str());
    // 1 MiB of values is a ConfigMap (the keys are not counted), one byte more is not.
    assert_eq!(c.post(CMS, &cm(json!({"name": "mib"}), json!({"a": "x".repeat(1_048_576)}))).await.0, 201);
    let (code, st) = c.post(CMS, &cm(json!({"name": "mib2"}), json!({"a": "x".repeat(1_048_577)}))).await;
    assert_eq!((code, field(&st).as_deref()), (422, Some("[]")), "{}", st["message"]);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Finding 7, watches: 200 watches opened at once and dropped without a word, three times
/// over, leave no descriptor behind (the apiserver runs in this process, so its sockets
/// are counted here); and watches with timeoutSeconds all end by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watches_closing_leave_nothing_open() {
    use std::io::{Read, Write};
    let c = Cluster::start().await;
    let addr = c.base.trim_start_matches("http://").to_string();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await; // the controllers' own connections
    let baseline = open_fds();
    for round in 0..3 {
        let socks: Vec<std::net::TcpStream> = (0..200)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                write!(s, "GET {CMS}?watch=true HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
                s
            })
            .collect();
        c.create(CMS, json!({"metadata": {"name": format!("w{round}")}})).await;
        drop(socks);
        eventually(20, "the watches' descriptors to be closed", || async { (open_fds() <= baseline + 5).then_some(()) }).await;
    }
    let timed: Vec<_> = (0..200)
        .map(|_| {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
                write!(s, "GET {CMS}?watch=true&timeoutSeconds=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
                let mut out = vec![];
                s.read_to_end(&mut out).is_ok()
            })
        })
        .collect();
    for t in timed {
        assert!(t.await.unwrap(), "every timeoutSeconds=1 watch ends by itself");
    }
}

/// Finding 7, connections: a client that sends half a request's headers, or nothing,
/// does not hold its connection for ever (kube-apiserver's 32 s ReadHeaderTimeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_cut_off() {
    use std::io::{Read, Write};
    let c = Cluster::start().await;
    let addr = c.base.trim_start_matches("http://").to_string();
    let clients: Vec<_> = ["GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n", ""]
        .into_iter()
        .map(|half| {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
                s.write_all(half.as_bytes()).unwrap();
                // The server's end (not this side's 60 s read timeout) ends the read.
                let mut out = vec![];
                s.read_to_end(&mut out).map_err(|e| e.kind())
            })
        })
        .collect();
    for (client, what) in clients.into_iter().zip(["half a request", "nothing"]) {
        assert_eq!(client.await.unwrap().map(|_| ()), Ok(()), "the server closed a connection that sent {what}");
    }
}
