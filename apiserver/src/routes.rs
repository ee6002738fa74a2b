//! The HTTP face of the apiserver: Kubernetes' URL layout, verbs, content types and
//! `?watch=true` streams, mapped onto the generic operations in [`crate::objects`].
//!
//! Every URL below `/api/v1` resolves to a [`Target`] (namespace, resource, name,
//! subresource); [`dispatch`] picks the Rust type for the resource and [`handle`] does the
//! rest generically, so pods, services, endpoints, nodes and namespaces share one code path.

use crate::discovery;
use crate::error::ApiError;
use crate::objects::Api;
use crate::printers::{self, Printable};
use crate::registry::Strategy;
use crate::storage::{self, RawEvent};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use futures::StreamExt;
use pkg::api::*;
use pkg::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Kubernetes refuses request bodies over 3 MiB; so do we.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

type Params = HashMap<String, String>;

/// What a URL under `/api/v1` points at.
#[derive(Debug, Default)]
pub struct Target {
    pub ns: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(|| async { "ok" }))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/api/v1", get(discovery::api_resources))
        .route("/openapi/v3", get(discovery::openapi_v3_root))
        .route("/openapi/v3/api/v1", get(discovery::openapi_v3_core))
        .route(
            "/api/v1/{resource}",
            any(|s, m, Path(resource): Path<String>, q, r| route(s, m, Target { resource, ..Default::default() }, q, r)),
        )
        .route(
            "/api/v1/{resource}/{name}",
            any(|s, m, Path((resource, name)): Path<(String, String)>, q, r| {
                route(s, m, Target { resource, name: Some(name), ..Default::default() }, q, r)
            }),
        )
        .route(
            "/api/v1/{resource}/{name}/{sub}",
            any(|s, m, Path((resource, name, sub)): Path<(String, String, String)>, q, r| {
                route(s, m, Target { resource, name: Some(name), sub: Some(sub), ..Default::default() }, q, r)
            }),
        )
        .route(
            "/api/v1/namespaces/{ns}/{resource}",
            any(|s, m, Path((ns, resource)): Path<(String, String)>, q, r| {
                // `/api/v1/namespaces/{name}/status` is the namespace's own subresource.
                let t = if resource == "status" || resource == "finalize" {
                    Target { resource: "namespaces".into(), name: Some(ns), sub: Some(resource), ..Default::default() }
                } else {
                    Target { ns: Some(ns), resource, ..Default::default() }
                };
                route(s, m, t, q, r)
            }),
        )
        .route(
            "/api/v1/namespaces/{ns}/{resource}/{name}",
            any(|s, m, Path((ns, resource, name)): Path<(String, String, String)>, q, r| {
                route(s, m, Target { ns: Some(ns), resource, name: Some(name), sub: None }, q, r)
            }),
        )
        .route(
            "/api/v1/namespaces/{ns}/{resource}/{name}/{sub}",
            any(|s, m, Path((ns, resource, name, sub)): Path<(String, String, String, String)>, q, r| {
                route(s, m, Target { ns: Some(ns), resource, name: Some(name), sub: Some(sub) }, q, r)
            }),
        )
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({uri})"))
        })
        .with_state(api)
}

/// `/healthz` and `/readyz`: ok only while etcd answers.
async fn health(State(api): State<Api>) -> Response {
    match api.store.list_raw("/registry/namespaces/default", true).await {
        Ok(_) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("etcd failed: {}", e.0.message)).into_response(),
    }
}

async fn route(State(api): State<Api>, method: Method, target: Target, Query(params): Query<Params>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        let body = read_body(&parts.headers, body).await?;
        dispatch(&api, &method, &target, &params, &parts.headers, body).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {MAX_BODY}"));
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
        if len > MAX_BODY {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| too_large())
}

async fn dispatch(api: &Api, method: &Method, t: &Target, p: &Params, h: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    if let ("pods", Some(name), Some("log"), Some(ns)) = (t.resource.as_str(), t.name.as_deref(), t.sub.as_deref(), t.ns.as_deref()) {
        return pod_log(api, ns, name, p).await;
    }
    match t.resource.as_str() {
        "pods" => handle::<Pod>(api, method, t, p, h, body).await,
        "services" => handle::<Service>(api, method, t, p, h, body).await,
        "endpoints" => handle::<Endpoints>(api, method, t, p, h, body).await,
        "nodes" => handle::<Node>(api, method, t, p, h, body).await,
        "namespaces" => handle::<Namespace>(api, method, t, p, h, body).await,
        other => Err(ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({other})"))),
    }
}

/// `GET …/pods/{name}/log[?container=C]`: fetched from the agent of the pod's node (its
/// InternalIP and the port it advertises in `daemonEndpoints`), as kube-apiserver does
/// from the kubelet.
async fn pod_log(api: &Api, ns: &str, name: &str, p: &Params) -> Result<Response, ApiError> {
    let pod: Pod = api.get(Some(ns), name).await?;
    let container = match p.get("container") {
        Some(c) => c.clone(),
        None if pod.spec.containers.len() == 1 => pod.spec.containers[0].name.clone(),
        None => {
            let names: Vec<&str> = pod.spec.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: {names:?}")));
        }
    };
    if !pod.spec.containers.iter().any(|c| c.name == container) {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    let node_name = pod
        .spec
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} is not scheduled yet")))?;
    let node: Node = api.get(None, &node_name).await?;
    let ip = node.internal_ip().ok_or_else(|| ApiError::unavailable(format!("node {node_name} has no InternalIP")))?;
    let port = node.status.extra.get("daemonEndpoints").and_then(|d| d["kubeletEndpoint"]["Port"].as_u64()).unwrap_or(10250);
    let url = format!("http://{ip}:{port}/containerLogs/{ns}/{name}/{container}");
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot reach the agent of node {node_name}: {e}")))?;
    let code = resp.status();
    let body = resp.bytes().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !code.is_success() {
        return Err(ApiError::new(404, "NotFound", String::from_utf8_lossy(&body).into_owned()));
    }
    let mut text = body.to_vec();
    if let Some(n) = p.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        text = lines[lines.len().saturating_sub(n)..].concat();
    }
    Ok(([(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

fn wants_table(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("as=Table"))
}

fn wants_yaml(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.starts_with("application/yaml"))
}

/// `PodList`, `ServiceList`, ...
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T> {
    kind: String,
    api_version: &'static str,
    metadata: Value,
    items: Vec<T>,
}

/// Encode a response the way the client asked: Table, YAML or JSON.
fn respond(code: StatusCode, h: &HeaderMap, value: Value) -> Response {
    if wants_yaml(h) {
        let text = serde_yaml::to_string(&value).unwrap_or_default();
        return (code, [(header::CONTENT_TYPE, "application/yaml")], text).into_response();
    }
    (code, axum::Json(value)).into_response()
}

fn respond_obj<T: Printable>(code: StatusCode, h: &HeaderMap, obj: &T) -> Response {
    if wants_table(h) {
        return respond(code, h, printers::table(std::slice::from_ref(obj), obj.meta().resource_version.clone(), true));
    }
    respond(code, h, serde_json::to_value(obj).unwrap_or(Value::Null))
}

/// Parse a JSON or YAML body into documents (YAML may hold several, separated by `---`).
fn parse_documents(h: &HeaderMap, body: &[u8]) -> Result<Vec<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("{ct} is not supported: send application/json or application/yaml"),
        ));
    }
    if !ct.contains("yaml") {
        let v = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("unable to decode JSON body: {e}")))?;
        return Ok(vec![v]);
    }
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_slice(body) {
        let v: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| ApiError::bad_request(format!("unable to decode YAML body: {e}")))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    if docs.is_empty() {
        return Err(ApiError::bad_request("the request body holds no object"));
    }
    Ok(docs)
}

/// Decode one document into `T`, checking `kind` and `apiVersion` if it gives them.
fn decode_value<T: Object>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    if let Some(kind) = value.get("kind").and_then(Value::as_str) {
        if kind != T::KIND {
            return Err(ApiError::bad_request(format!("the body is a {kind}, but this endpoint takes {}", T::KIND)));
        }
    }
    if let Some(v) = value.get("apiVersion").and_then(Value::as_str) {
        if v != "v1" {
            return Err(ApiError::bad_request(format!("apiVersion {v:?} is not served here (want \"v1\")")));
        }
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("unable to decode {} body: {e}", T::KIND)))
}

/// Decode a JSON or YAML body holding exactly one object.
pub fn decode_body<T: Object>(h: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let mut docs = parse_documents(h, body)?;
    if docs.len() != 1 {
        return Err(ApiError::bad_request(format!("expected one object, the body holds {}", docs.len())));
    }
    decode_value(docs.remove(0))
}

/// Label and field selectors from the query string; a bad one is a 400.
fn selectors<T: Strategy>(p: &Params) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(p.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
    let f = FieldSelector::parse(p.get("fieldSelector").map(String::as_str).unwrap_or(""), T::FIELDS)
        .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?;
    Ok((l, f))
}

fn matches<T: Strategy>(o: &T, l: &LabelSelector, f: &FieldSelector) -> bool {
    l.matches(&o.meta().labels) && f.matches(|path| o.field(path))
}

async fn handle<T: Strategy + Printable>(
    api: &Api,
    method: &Method,
    t: &Target,
    p: &Params,
    h: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // A namespaced kind asked for without a namespace is only listed (across all of them);
    // a cluster-scoped kind never takes one.
    if !T::NAMESPACED && t.ns.is_some() {
        return Err(ApiError::new(404, "NotFound", format!("{} are not namespaced", T::RESOURCE)));
    }
    if T::NAMESPACED && t.ns.is_none() && !(t.name.is_none() && method == Method::GET) {
        return Err(ApiError::new(405, "MethodNotAllowed", format!("{} must be addressed inside a namespace", T::RESOURCE)));
    }
    let ns = t.ns.as_deref();
    let flag = |k: &str| p.get(k).is_some_and(|v| v == "true" || v == "1");
    match (method.clone(), t.name.as_deref(), t.sub.as_deref()) {
        (Method::GET, None, None) if flag("watch") => watch::<T>(api, ns, p, h).await,
        (Method::GET, None, None) => {
            let (l, f) = selectors::<T>(p)?;
            let (items, rev) = api.list::<T>(ns).await?;
            let items: Vec<T> = items.into_iter().filter(|o| matches(o, &l, &f)).collect();
            if wants_table(h) {
                return Ok(respond(StatusCode::OK, h, printers::table(&items, Some(rev.to_string()), true)));
            }
            let list =
                List { kind: format!("{}List", T::KIND), api_version: "v1", metadata: json!({"resourceVersion": rev.to_string()}), items };
            if wants_yaml(h) {
                return Ok(respond(StatusCode::OK, h, serde_json::to_value(&list).unwrap_or(Value::Null)));
            }
            // Serialized straight from the typed items: lists are the largest responses.
            Ok(axum::Json(list).into_response())
        }
        (Method::POST, None, None) => {
            let docs = parse_documents(h, &body)?;
            if docs.len() == 1 {
                let obj: T = decode_value(docs.into_iter().next().unwrap())?;
                let created = api.create::<T>(ns, obj).await?;
                return Ok(respond_obj(StatusCode::CREATED, h, &created));
            }
            // Several YAML documents (an ownkube convenience for `curl --data-binary @file`):
            // all are decoded and validated before any is created; the answer is a List.
            let objs: Vec<T> = docs.into_iter().map(decode_value).collect::<Result<_, _>>()?;
            for o in &objs {
                let causes = o.validate(&api.cfg);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(T::KIND, &o.meta().name, causes));
                }
            }
            let mut created = vec![];
            for o in objs {
                created.push(api.create::<T>(ns, o).await?);
            }
            Ok(respond(StatusCode::CREATED, h, json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": created})))
        }
        (Method::GET, Some(name), None | Some("status")) => Ok(respond_obj(StatusCode::OK, h, &api.get::<T>(ns, name).await?)),
        (Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            let obj: T = decode_body(h, &body)?;
            let updated = api.update::<T>(ns, name, obj, sub.is_some()).await?;
            Ok(respond_obj(StatusCode::OK, h, &updated))
        }
        (Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            if ct.contains("json-patch") || ct.contains("apply-patch") {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("patch type {ct} is not supported; use application/merge-patch+json"),
                ));
            }
            let patch: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("unable to decode patch: {e}")))?;
            let current = api.get::<T>(ns, name).await?;
            let mut doc = serde_json::to_value(&current).unwrap_or(Value::Null);
            merge_patch(&mut doc, &patch);
            let patched: T =
                serde_json::from_value(doc).map_err(|e| ApiError::bad_request(format!("patched object does not decode: {e}")))?;
            let updated = api.update::<T>(ns, name, patched, sub.is_some()).await?;
            Ok(respond_obj(StatusCode::OK, h, &updated))
        }
        (Method::DELETE, Some(name), None) => {
            // Delete options come in the query string or as a DeleteOptions body.
            let opts: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
            let grace = p.get("gracePeriodSeconds").and_then(|g| g.parse().ok()).or_else(|| opts["gracePeriodSeconds"].as_i64());
            let rv = opts["preconditions"]["resourceVersion"].as_str().map(String::from);
            if T::KIND == "Namespace" && ["default", "kube-system"].contains(&name) {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!("namespace \"{name}\" is forbidden: this namespace may not be deleted"),
                ));
            }
            if T::KIND == "Namespace" {
                crate::controllers::namespace::empty(api, name).await?;
            }
            let gone = api.delete::<T>(ns, name, grace, rv.as_deref()).await?;
            Ok(respond_obj(StatusCode::OK, h, &gone))
        }
        (m, _, sub) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported on {}{}", T::RESOURCE, sub.map(|s| format!("/{s}")).unwrap_or_default()),
        )),
    }
}

/// JSON merge patch (RFC 7386): objects merge, `null` deletes, anything else replaces.
fn merge_patch(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    d.remove(k);
                } else {
                    merge_patch(d.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (d, p) => *d = p.clone(),
    }
}

/// One line of a watch stream.
fn event<T: Printable>(kind: &str, obj: &T, table: bool, first: &mut bool) -> Bytes {
    let object = if table {
        let t = printers::table(std::slice::from_ref(obj), obj.meta().resource_version.clone(), *first);
        *first = false;
        t
    } else {
        serde_json::to_value(obj).unwrap_or(Value::Null)
    };
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// Turn one etcd change into the watch event this client should see, if any. With a
/// selector, an object that starts matching is ADDED and one that stops is DELETED.
fn translate<T: Strategy>(ev: &RawEvent, l: &LabelSelector, f: &FieldSelector) -> Option<(&'static str, T)> {
    let dec = |v: &Option<(Vec<u8>, i64)>| v.as_ref().and_then(|(b, r)| storage::decode::<T>(b, *r).ok());
    let new = dec(&ev.value);
    let prev = dec(&ev.prev);
    let new_m = new.as_ref().is_some_and(|o| matches(o, l, f));
    let prev_m = prev.as_ref().is_some_and(|o| matches(o, l, f));
    match (new, prev) {
        (Some(n), _) if new_m && prev_m => Some(("MODIFIED", n)),
        (Some(n), _) if new_m => Some(("ADDED", n)),
        (Some(n), _) if prev_m => Some(("DELETED", n)),
        (None, Some(mut p)) if prev_m => {
            // A deleted object carries the revision of its deletion, so a client can resume.
            p.meta_mut().resource_version = Some(ev.revision.to_string());
            Some(("DELETED", p))
        }
        _ => None,
    }
}

/// `GET …?watch=true`: newline-delimited JSON events until `timeoutSeconds` or the client
/// goes away. Without a `resourceVersion` (or with "0") the current objects come first as
/// ADDED events; with one, only what happened after it, or `410 Gone` if etcd no longer has it.
async fn watch<T: Strategy + Printable>(api: &Api, ns: Option<&str>, p: &Params, h: &HeaderMap) -> Result<Response, ApiError> {
    let (l, f) = selectors::<T>(p)?;
    let table = wants_table(h);
    let prefix = match ns {
        Some(ns) => format!("{}{ns}/", storage::prefix::<T>()),
        None => storage::prefix::<T>().to_string(),
    };
    let mut first = true;
    let (initial, start) = match p.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let (items, rev) = api.list::<T>(ns).await?;
            let lines: Vec<Bytes> = items.iter().filter(|o| matches(*o, &l, &f)).map(|o| event("ADDED", o, table, &mut first)).collect();
            (lines, rev + 1)
        }
        Some(rv) => {
            let rv: i64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            api.store.check_revision(rv).await?;
            (vec![], rv + 1)
        }
    };
    let events = api.store.watch(&prefix, start).await?;
    let timeout = p.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800u64);
    let live = events
        .flat_map(move |batch| {
            let lines: Vec<Bytes> = match batch {
                Ok(evs) => evs.iter().filter_map(|ev| translate::<T>(ev, &l, &f)).map(|(k, o)| event(k, &o, table, &mut first)).collect(),
                Err(e) => {
                    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": *e.0})).unwrap_or_default();
                    line.push(b'\n');
                    vec![line.into()]
                }
            };
            futures::stream::iter(lines)
        })
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
    let stream = futures::stream::iter(initial).chain(live).map(Ok::<_, std::convert::Infallible>);
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response())
}
