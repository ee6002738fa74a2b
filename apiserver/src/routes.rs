//! The HTTP face of the apiserver: Kubernetes' URL layout mapped onto the generic verbs in
//! [`crate::handler`].
//!
//! Every URL below `/api/v1` (the core group) or `/apis/{group}/{version}` resolves to a
//! [`Target`] (group, version, namespace, resource, name, subresource); [`dispatch`] picks
//! the Rust type for the resource, so every kind shares one code path.
//!
//! Upstream: k8s.io/apiserver/pkg/endpoints/installer.go

use crate::codec;
use crate::discovery;
use crate::error::ApiError;
use crate::handler::{self, Params, Req};
use crate::objects::Api;
use crate::openapi;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use pkg::api::*;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Kubernetes refuses request bodies over 3 MiB; so do we.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What a URL under `/api/v1` or `/apis/{group}/{version}` points at.
#[derive(Debug, Default)]
pub struct Target {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub ns: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    fn from_path(mut p: HashMap<String, String>) -> Target {
        let mut t = Target {
            group: p.remove("group").unwrap_or_default(),
            version: p.remove("version").unwrap_or_default(),
            ns: p.remove("ns"),
            resource: p.remove("resource").unwrap_or_default(),
            name: p.remove("name"),
            sub: p.remove("sub"),
        };
        // `/api/v1/namespaces/{name}/status` is the namespace's own subresource.
        if t.name.is_none() && matches!(t.resource.as_str(), "status" | "finalize") {
            t = Target { name: t.ns.take(), sub: Some(std::mem::take(&mut t.resource)), resource: "namespaces".into(), ..t };
        }
        t
    }
}

/// The URL shapes below a group-version prefix.
const SHAPES: [&str; 6] = [
    "/{resource}",
    "/{resource}/{name}",
    "/{resource}/{name}/{sub}",
    "/namespaces/{ns}/{resource}",
    "/namespaces/{ns}/{resource}/{name}",
    "/namespaces/{ns}/{resource}/{name}/{sub}",
];

pub fn router(api: Api) -> Router {
    let mut r = Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(|| async { "ok" }))
        .route("/metrics", get(|| async { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render()) }))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/api/{version}", get(|Path(v): Path<String>| async move { group_version("", &v) }))
        .route("/apis/{group}", get(|Path(g): Path<String>| async move { discovery::api_group(&g).map(axum::Json).ok_or_else(not_found) }))
        .route("/apis/{group}/{version}", get(|Path((g, v)): Path<(String, String)>| async move { group_version(&g, &v) }))
        .route("/openapi/v2", get(openapi::serve_v2))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/api/{version}", get(|Path(v): Path<String>| async move { openapi::serve(&format!("api/{v}")) }))
        .route(
            "/openapi/v3/apis/{group}/{version}",
            get(|Path((g, v)): Path<(String, String)>| async move { openapi::serve(&format!("apis/{g}/{v}")) }),
        );
    // The topology page: static files, then the same API as any client.
    r = r.merge(crate::ui::router());
    r = r.route(
        "/api/v1/nodes/{name}/proxy/{*path}",
        get(|State(api): State<Api>, Path((name, path)): Path<(String, String)>, RawQuery(q): RawQuery| async move {
            crate::streams::node_proxy(&api, &name, &path, q.as_deref()).await.unwrap_or_else(IntoResponse::into_response)
        }),
    );
    for shape in SHAPES {
        r = r.route(&format!("/api/{{version}}{shape}"), any(route)).route(&format!("/apis/{{group}}/{{version}}{shape}"), any(route));
    }
    r.fallback(|uri: axum::http::Uri| async move {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({uri})"))
    })
    .with_state(api)
}

fn not_found() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource")
}

fn group_version(group: &str, version: &str) -> Result<axum::Json<Value>, ApiError> {
    discovery::api_resources(group, version).map(axum::Json).ok_or_else(not_found)
}

/// `/healthz` and `/readyz`: ok only while etcd answers.
async fn health(State(api): State<Api>) -> Response {
    match api.store.list_raw("/registry/namespaces/default", true).await {
        Ok(_) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("etcd failed: {}", e.message())).into_response(),
    }
}

async fn route(
    State(api): State<Api>,
    method: Method,
    path: Result<Path<HashMap<String, String>>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    // A path that does not decode (`%FF` is no UTF-8) is the client's error, told as a Status.
    let path = match path {
        Ok(Path(p)) => p,
        Err(e) => return ApiError::bad_request(format!("invalid request path: {}", e.body_text())).into_response(),
    };
    let target = Target::from_path(path);
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()).into_owned().collect();
    let started = std::time::Instant::now();
    let watch = pairs.iter().any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let apply = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    let info = crate::metrics::RequestInfo::of(
        &method,
        target.ns.as_deref(),
        &target.resource,
        target.name.as_deref(),
        target.sub.as_deref(),
        watch,
        apply,
    );
    let response = serve(api, method, target, pairs, req).await;
    info.observe(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// One request below a group-version, after its target is known.
async fn serve(api: Api, method: Method, target: Target, pairs: Vec<(String, String)>, req: Request) -> Response {
    // exec, attach and port-forward upgrade the connection: they take the whole request.
    if let ("pods", Some(name), Some(sub @ ("exec" | "attach" | "portforward")), Some(ns)) =
        (target.resource.as_str(), target.name.as_deref(), target.sub.as_deref(), target.ns.as_deref())
    {
        return crate::streams::handle(&api, ns, name, sub, pairs, req).await.unwrap_or_else(IntoResponse::into_response);
    }
    let params: Params = pairs.into_iter().collect();
    let (parts, body) = req.into_parts();
    let mut large = false;
    let result = async {
        let body = read_body(&parts.headers, body).await?;
        large = body.len() > LARGE_BODY;
        dispatch(&api, &method, &target, &params, &parts.headers, body).await
    }
    .await;
    if large {
        release_memory().await;
    }
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A body past this size is decoded into many times its size in memory (a JSON map of
/// 200,000 keys: ~15x), which glibc's malloc keeps in the arena of the thread that served
/// it; such a request is followed by a trim.
const LARGE_BODY: usize = 512 * 1024;

/// Hand the allocator's free pages back to the system (glibc's `malloc_trim`, which also
/// releases whole free pages inside each arena). Off the request's thread: it locks each
/// arena in turn.
async fn release_memory() {
    #[cfg(target_env = "gnu")]
    let _ = tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim takes no pointers and is thread-safe.
        unsafe { libc::malloc_trim(0) };
    })
    .await;
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
    if let Some(tokens) = &api.cfg.tokens {
        let user = tokens.user(h)?;
        if (t.group.as_str(), t.resource.as_str()) == ("", "nodes") {
            // A create names its node in the body.
            let named = match t.name.as_deref() {
                Some(n) => Some(n.to_string()),
                None => codec::parse_documents(h, &body, ("v1", "Node"))
                    .ok()
                    .and_then(|d| d.first()?["metadata"]["name"].as_str().map(String::from)),
            };
            crate::noderestriction::admit(user, method, named.as_deref(), t.sub.as_deref())?;
        }
    }
    if let ("pods", Some(name), Some("log"), Some(ns)) = (t.resource.as_str(), t.name.as_deref(), t.sub.as_deref(), t.ns.as_deref()) {
        return crate::streams::pod_log(api, ns, name, p).await;
    }
    if (t.group.as_str(), t.resource.as_str()) == ("authorization.k8s.io", "selfsubjectaccessreviews") && method == Method::POST {
        return self_subject_access_review(h, &body);
    }
    let out = codec::negotiate(h)?;
    let r = Req { ns: t.ns.as_deref(), name: t.name.as_deref(), sub: t.sub.as_deref(), params: p, headers: h, body, out };
    let Some(info) = discovery::resource(&t.group, &t.version, &t.resource) else {
        return Err(ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({})", t.resource)));
    };
    match info.kind {
        "Pod" => handler::handle::<Pod>(api, method, r).await,
        "Service" => handler::handle::<Service>(api, method, r).await,
        "Endpoints" => handler::handle::<Endpoints>(api, method, r).await,
        "Node" => handler::handle::<Node>(api, method, r).await,
        "Namespace" => handler::handle::<Namespace>(api, method, r).await,
        "ConfigMap" => handler::handle::<ConfigMap>(api, method, r).await,
        "Secret" => handler::handle::<Secret>(api, method, r).await,
        "ServiceAccount" => handler::handle::<ServiceAccount>(api, method, r).await,
        "Event" => handler::handle::<Event>(api, method, r).await,
        "Lease" => handler::handle::<Lease>(api, method, r).await,
        "Deployment" => handler::handle::<Deployment>(api, method, r).await,
        "ReplicaSet" => handler::handle::<ReplicaSet>(api, method, r).await,
        "EndpointSlice" => handler::handle::<EndpointSlice>(api, method, r).await,
        other => Err(ApiError::internal(format!("no handler for {other}"))),
    }
}

/// `kubectl auth can-i`: ownkube has no authorization, so every review is allowed.
fn self_subject_access_review(h: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let mut review = codec::parse_documents(h, body, ("authorization.k8s.io/v1", "SelfSubjectAccessReview"))?.remove(0);
    if review.get("kind").and_then(Value::as_str).is_some_and(|k| k != "SelfSubjectAccessReview") {
        return Err(ApiError::bad_request("the body must be a SelfSubjectAccessReview"));
    }
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    review["status"] = json!({"allowed": true, "reason": "ownkube has no authorization: every request is allowed"});
    Ok((StatusCode::CREATED, axum::Json(review)).into_response())
}
