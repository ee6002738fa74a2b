//! What real clients rely on beyond create/get/list/watch, against a real etcd: dry runs
//! that write nothing, the three patch types, content types, DELETE bodies, the config
//! kinds (ConfigMap, Secret, ServiceAccount, Event, Lease), pagination, metadata-only
//! lists, bookmarks and `auth can-i`.

mod common;
use common::*;
use serde_json::{json, Value};

const SVCS: &str = "/api/v1/namespaces/default/services";
const CMS: &str = "/api/v1/namespaces/default/configmaps";

/// Every key anywhere in a JSON value.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| {
            out.push(k.clone());
            keys(v, out)
        }),
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dry_run_writes_nothing_on_any_verb() {
    let c = Cluster::start().await;
    let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
    let (code, v) = c.post(&format!("{SVCS}?dryRun=All"), &svc).await;
    assert_eq!(code, 201, "{v}");
    assert!(v["spec"]["clusterIP"].is_string() && v["spec"]["ports"][0]["nodePort"].is_number(), "{v}");
    assert_eq!(c.get(&format!("{SVCS}/web")).await.0, 404, "dry-run create must not store");
    let (_, keys_left) = c.get("/api/v1/namespaces/default/services").await;
    assert_eq!(keys_left["items"], json!([]));

    let created = c.create(SVCS, svc.clone()).await;
    let rv = created["metadata"]["resourceVersion"].clone();
    let mut changed = created.clone();
    changed["metadata"]["labels"] = json!({"x": "y"});
    let (code, v) = c.put(&format!("{SVCS}/web?dryRun=All"), &changed).await;
    assert_eq!((code, v["metadata"]["labels"]["x"].as_str()), (200, Some("y")), "{v}");
    let (code, v) =
        send(&c, "PATCH", &format!("{SVCS}/web?dryRun=All"), "application/merge-patch+json", r#"{"metadata":{"labels":{"p":"q"}}}"#).await;
    assert_eq!((code, v["metadata"]["labels"]["p"].as_str()), (200, Some("q")), "{v}");
    let (code, _) = c.delete(&format!("{SVCS}/web?dryRun=All")).await;
    assert_eq!(code, 200);
    let (code, v) = send(&c, "DELETE", &format!("{SVCS}/web"), "application/json", r#"{"dryRun":["All"]}"#).await;
    assert_eq!(code, 200, "{v}");
    let (code, now) = c.get(&format!("{SVCS}/web")).await;
    assert_eq!(code, 200, "dry-run delete must not delete");
    assert_eq!(now["metadata"]["resourceVersion"], rv, "dry-run update/patch must not write");
    assert!(now["metadata"].get("labels").is_none());

    // A dry-run create of a taken name fails as the real one would.
    assert_eq!(c.post(&format!("{SVCS}?dryRun=All"), &svc).await.0, 409);
    // (kube-apiserver's ValidateDryRun: 422 of the CreateOptions)
    assert_eq!(c.post(&format!("{SVCS}?dryRun=Maybe"), &svc).await.0, 422);
}

#[tokio::test]
async fn strategic_merge_json_and_merge_patches() {
    let c = Cluster::start().await;
    c.create(
        SVCS,
        json!({"metadata": {"name": "two"}, "spec": {"selector": {"app": "x"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080}, {"name": "https", "port": 443, "targetPort": 8443}]}}),
    )
    .await;
    // What `kubectl apply` sends when the second port changes from 443 to 8443.
    let smp = r#"{"spec":{"$setElementOrder/ports":[{"port":80},{"port":8443}],"ports":[{"name":"https","port":8443,"targetPort":8443},{"$patch":"delete","port":443}]}}"#;
    let (code, v) = send(&c, "PATCH", &format!("{SVCS}/two"), "application/strategic-merge-patch+json", smp).await;
    assert_eq!(code, 200, "{v}");
    let ports: Vec<i64> = v["spec"]["ports"].as_array().unwrap().iter().map(|p| p["port"].as_i64().unwrap()).collect();
    assert_eq!(ports, [80, 8443]);
    let (_, stored) = c.get(&format!("{SVCS}/two")).await;
    let mut all = vec![];
    keys(&stored, &mut all);
    assert!(all.iter().all(|k| !k.starts_with('$')), "a directive was stored: {stored}");

    let jp = r#"[{"op":"add","path":"/metadata/labels","value":{"tier":"web"}},{"op":"replace","path":"/spec/ports/0/port","value":81}]"#;
    let (code, v) = send(&c, "PATCH", &format!("{SVCS}/two"), "application/json-patch+json", jp).await;
    assert_eq!((code, v["spec"]["ports"][0]["port"].as_i64()), (200, Some(81)), "{v}");
    assert_eq!(v["metadata"]["labels"]["tier"], "web");
    let bad = r#"[{"op":"test","path":"/spec/type","value":"NodePort"}]"#;
    assert_eq!(send(&c, "PATCH", &format!("{SVCS}/two"), "application/json-patch+json", bad).await.0, 422);

    let (code, v) =
        send(&c, "PATCH", &format!("{SVCS}/two"), "application/merge-patch+json", r#"{"metadata":{"labels":{"tier":null}}}"#).await;
    assert_eq!(code, 200);
    assert!(v["metadata"].get("labels").is_none_or(|l| l.get("tier").is_none()), "{v}");
    assert_eq!(send(&c, "PATCH", &format!("{SVCS}/two"), "application/json", "{}").await.0, 415);
    assert_eq!(send(&c, "PATCH", &format!("{SVCS}/two"), "application/strategic-merge-patch+json", "[1]").await.0, 400);
}

#[tokio::test]
async fn bodies_that_are_not_json_or_yaml_are_415_and_bad_delete_bodies_400() {
    let c = Cluster::start().await;
    let cm = r#"{"metadata":{"name":"x"},"data":{"a":"b"}}"#;
    for ct in ["text/plain", "application/xml", "application/x-www-form-urlencoded"] {
        let (code, v) = send(&c, "POST", CMS, ct, cm).await;
        assert_eq!((code, v["reason"].as_str()), (415, Some("UnsupportedMediaType")), "{ct}: {v}");
    }
    assert_eq!(c.get(&format!("{CMS}/x")).await.0, 404);
    c.create(CMS, json!({"metadata": {"name": "x"}})).await;
    let (code, v) = send(&c, "DELETE", &format!("{CMS}/x"), "application/json", "{not json").await;
    assert_eq!((code, v["kind"].as_str()), (400, Some("Status")), "{v}");
    assert_eq!(c.get(&format!("{CMS}/x")).await.0, 200, "a DELETE with a bad body must not delete");
    // A well-formed body with a bad option is a 422 of the DeleteOptions, as kube-apiserver's.
    let (code, _) = send(&c, "DELETE", &format!("{CMS}/x"), "application/json", r#"{"propagationPolicy":"Sideways"}"#).await;
    assert_eq!(code, 422);
    let (code, _) = send(&c, "DELETE", &format!("{CMS}/x"), "application/json", r#"{"preconditions":{"uid":"nope"}}"#).await;
    assert_eq!(code, 409);
    assert_eq!(c.delete(&format!("{CMS}/x")).await.0, 200);
}

#[tokio::test]
async fn config_kinds_are_served() {
    let c = Cluster::start().await;
    let cm = c.create(CMS, json!({"metadata": {"name": "app"}, "data": {"k": "v"}, "immutable": true})).await;
    let mut edit = cm.clone();
    edit["data"]["k"] = json!("changed");
    let (code, v) = c.put(&format!("{CMS}/app"), &edit).await;
    assert_eq!(code, 422, "an immutable configmap's data may not change: {v}");
    let (code, v) = c.post(CMS, &json!({"metadata": {"name": "bad"}, "data": {"a/b": "v"}})).await;
    assert_eq!((code, v["details"]["causes"][0]["field"].as_str()), (422, Some("data[a/b]")), "{v}");

    let s =
        c.create("/api/v1/namespaces/default/secrets", json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}})).await;
    assert_eq!(s["data"]["password"], "aHVudGVyMg==");
    assert_eq!(s["type"], "Opaque");
    assert!(s.get("stringData").is_none());

    // Every namespace gets a `default` service account, new ones too.
    c.create("/api/v1/namespaces", json!({"metadata": {"name": "team"}})).await;
    for ns in ["default", "kube-system", "team"] {
        eventually(10, "the default service account", || async {
            (c.get(&format!("/api/v1/namespaces/{ns}/serviceaccounts/default")).await.0 == 200).then_some(())
        })
        .await;
    }

    // Events, selectable by the object they are about (what `kubectl describe` asks).
    for (name, pod) in [("a.1", "a"), ("b.1", "b")] {
        c.create(
            "/api/v1/namespaces/default/events",
            json!({"metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": pod, "namespace": "default"},
                   "reason": "Scheduled", "message": "assigned", "type": "Normal", "count": 1}),
        )
        .await;
    }
    let (_, evs) = c.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Da,involvedObject.kind%3DPod").await;
    assert_eq!(evs["items"].as_array().unwrap().len(), 1, "{evs}");

    // coordination.k8s.io Leases, found through discovery.
    let (_, groups) = c.get("/apis").await;
    assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "coordination.k8s.io"), "{groups}");
    let (_, res) = c.get("/apis/coordination.k8s.io/v1").await;
    assert_eq!(res["resources"][0]["name"], "leases");
    let lease = c
        .create(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            json!({"metadata": {"name": "node1"}, "spec": {"holderIdentity": "node1", "leaseDurationSeconds": 40}}),
        )
        .await;
    assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(lease["spec"]["holderIdentity"], "node1");
}

#[tokio::test]
async fn pages_are_one_consistent_snapshot() {
    let c = Cluster::start().await;
    for i in 0..7 {
        c.create(CMS, json!({"metadata": {"name": format!("cm-{i}"), "labels": {"odd": (i % 2).to_string()}}})).await;
    }
    let (_, p1) = c.get(&format!("{CMS}?limit=3")).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    assert_eq!(p1["metadata"]["remainingItemCount"], 4);
    let token = p1["metadata"]["continue"].as_str().unwrap().to_string();
    // A change after the first page is not seen by the later pages.
    c.create(CMS, json!({"metadata": {"name": "cm-99"}})).await;
    let mut names: Vec<String> = vec![];
    let mut next = Some(token);
    while let Some(t) = next {
        let (code, page) = c.get(&format!("{CMS}?limit=3&continue={t}")).await;
        assert_eq!(code, 200, "{page}");
        names.extend(page["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        next = page["metadata"]["continue"].as_str().map(String::from);
    }
    assert_eq!(names, ["cm-3", "cm-4", "cm-5", "cm-6"]);
    // With a selector, pages fill up with matches only.
    let (_, odd) = c.get(&format!("{CMS}?limit=2&labelSelector=odd%3D1")).await;
    let got: Vec<&str> = odd["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(got, ["cm-1", "cm-3"]);
    assert_eq!(c.get(&format!("{CMS}?limit=2&continue=garbage")).await.0, 400);
}

#[tokio::test]
async fn metadata_only_lists_table_and_406() {
    let c = Cluster::start().await;
    c.create(CMS, json!({"metadata": {"name": "m", "labels": {"a": "b"}}, "data": {"secret-ish": "value"}})).await;
    let get = |accept: &'static str| {
        let r = c.http.get(c.url(CMS)).header("Accept", accept).send();
        async move {
            let r = r.await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, v) = get("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json").await;
    assert_eq!((code, v["kind"].as_str()), (200, Some("PartialObjectMetadataList")), "{v}");
    assert_eq!(v["items"][0]["metadata"]["labels"]["a"], "b");
    assert!(v["items"][0].get("data").is_none());
    let (code, v) = get("application/json;as=Table;g=meta.k8s.io;v=v1").await;
    assert_eq!((code, v["kind"].as_str()), (200, Some("Table")));
    let (code, v) = get("application/vnd.kubernetes.protobuf;as=Foo").await;
    assert_eq!((code, v["reason"].as_str()), (406, Some("NotAcceptable")), "{v}");
}

#[tokio::test]
async fn auth_can_i_is_allowed_and_watch_has_bookmarks_on_request() {
    let c = Cluster::start().await;
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                        "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}});
    let (code, v) = c.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", &review).await;
    assert_eq!((code, v["status"]["allowed"].as_bool()), (201, Some(true)), "{v}");
    // sendInitialEvents: the current objects, then a bookmark marking their end.
    c.create(CMS, json!({"metadata": {"name": "w"}})).await;
    let url =
        format!("{CMS}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=5");
    let r = c.http.get(c.url(&url)).send().await.unwrap();
    let body = r.text().await.unwrap();
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[1]["type"], "BOOKMARK");
    assert_eq!(lines[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert_eq!(c.get(&format!("{CMS}?watch=true&sendInitialEvents=true")).await.0, 400);
    assert_eq!(c.get(&format!("{CMS}?watch=true&timeoutSeconds=abc")).await.0, 400);
}

/// Fields the kind does not have: dropped with a `Warning:` header by default
/// (`fieldValidation=Warn`), refused under `Strict`, dropped silently under `Ignore`; never stored.
#[tokio::test]
async fn unknown_fields_warn_by_default_and_fail_strict() {
    let c = Cluster::start().await;
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typo", "colour": "blue"},
                      "data": {"a": "b"}, "dataa": {"c": "d"}});
    let post = |q: &'static str| {
        let body = body.clone();
        let c = &c;
        async move { c.http.post(c.url(&format!("{CMS}{q}"))).json(&body).send().await.unwrap() }
    };
    let r = post("?fieldValidation=Strict").await;
    assert_eq!(r.status().as_u16(), 400);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["reason"], "BadRequest");
    let msg = s["message"].as_str().unwrap();
    assert!(msg.contains(r#"strict decoding error: unknown field "dataa", unknown field "metadata.colour""#), "{msg}");
    assert_eq!(c.get(&format!("{CMS}/typo")).await.0, 404, "a refused object is not stored");

    let r = post("").await;
    assert_eq!(r.status().as_u16(), 201);
    let warnings: Vec<&str> = r.headers().get_all("warning").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(warnings, [r#"299 - "unknown field \"dataa\"""#, r#"299 - "unknown field \"metadata.colour\"""#]);
    let (_, stored) = c.get(&format!("{CMS}/typo")).await;
    assert!(stored.get("dataa").is_none() && stored["metadata"].get("colour").is_none(), "{stored}");
    assert_eq!(stored["data"]["a"], "b");

    c.delete(&format!("{CMS}/typo")).await;
    let r = post("?fieldValidation=Ignore").await;
    assert_eq!((r.status().as_u16(), r.headers().get("warning").is_none()), (201, true));
    let r = post("?fieldValidation=Loose").await;
    assert_eq!(r.status().as_u16(), 400);
    // PUT and PATCH are checked the same way.
    let patch = r#"{"data": {"x": "y"}, "spec": {"nope": 1}}"#;
    let (code, s) = send(&c, "PATCH", &format!("{CMS}/typo?fieldValidation=Strict"), "application/merge-patch+json", patch).await;
    assert_eq!(code, 400, "{s}");
    assert!(s["message"].as_str().unwrap().contains(r#"unknown field "spec""#), "{s}");
}

/// Server-side apply: create (201), update (200) with ownership in `managedFields`,
/// pruning of what the applier stops setting, 409 when another manager set a field the
/// configuration changes, `force=true` taking it over.
#[tokio::test]
async fn server_side_apply_owns_prunes_and_conflicts() {
    let c = Cluster::start().await;
    let apply = |q: &str, body: Value| {
        let url = c.url(&format!("{CMS}/cfg?{q}"));
        let http = c.http.clone();
        async move {
            let r = http.patch(url).header("Content-Type", "application/apply-patch+yaml").body(body.to_string()).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let cm = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data});
    let (code, obj) = apply("fieldManager=alice", cm(json!({"a": "1", "b": "2"}))).await;
    assert_eq!(code, 201, "{obj}");
    let mf = &obj["metadata"]["managedFields"][0];
    assert_eq!((mf["manager"].as_str(), mf["operation"].as_str()), (Some("alice"), Some("Apply")));
    assert_eq!(mf["fieldsV1"], json!({"f:data": {"f:a": {}, "f:b": {}}}));

    // Dropping `b` from the configuration removes it; `a` changes.
    let (code, obj) = apply("fieldManager=alice", cm(json!({"a": "one"}))).await;
    assert_eq!((code, obj["data"].clone()), (200, json!({"a": "one"})));

    // Another manager (a merge patch) takes `a`; alice changing it again conflicts.
    let (code, _) =
        send(&c, "PATCH", &format!("{CMS}/cfg?fieldManager=bob"), "application/merge-patch+json", r#"{"data":{"a":"bob's"}}"#).await;
    assert_eq!(code, 200);
    let (code, s) = apply("fieldManager=alice", cm(json!({"a": "alice's"}))).await;
    assert_eq!(code, 409, "{s}");
    assert_eq!(s["reason"], "Conflict");
    assert_eq!(s["message"], r#"Apply failed with 1 conflict: conflict with "bob" using v1: .data.a"#);
    assert_eq!(
        s["details"]["causes"][0],
        json!({"reason": "FieldManagerConflict", "message": "conflict with \"bob\" using v1", "field": ".data.a"})
    );
    // The same value is shared, no conflict; force takes it over.
    assert_eq!(apply("fieldManager=alice", cm(json!({"a": "bob's"}))).await.0, 200);
    let (code, obj) = apply("fieldManager=alice&force=true", cm(json!({"a": "alice's"}))).await;
    assert_eq!((code, obj["data"]["a"].as_str()), (200, Some("alice's")));
    let managers: Vec<&str> = obj["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|e| e["manager"].as_str()).collect();
    assert_eq!(managers, ["alice"], "bob owned only .data.a, which alice took");

    // Bad requests: no field manager, force on another patch type, a managedFields body.
    assert_eq!(apply("", cm(json!({}))).await.0, 422);
    let (code, _) = send(&c, "PATCH", &format!("{CMS}/cfg?force=true"), "application/merge-patch+json", "{}").await;
    assert_eq!(code, 422);
    let mut with_mf = cm(json!({}));
    with_mf["metadata"]["managedFields"] = json!([]);
    assert_eq!(apply("fieldManager=alice", with_mf).await.0, 400);
    // A dry run changes nothing.
    let (code, obj) = apply("fieldManager=alice&dryRun=All", cm(json!({"a": "dry"}))).await;
    assert_eq!((code, obj["data"]["a"].as_str()), (200, Some("dry")));
    assert_eq!(c.get(&format!("{CMS}/cfg")).await.1["data"]["a"], "alice's");
}
