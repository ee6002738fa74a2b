//! Streams through the apiserver: `pods/{name}/exec`, `attach` and `portforward` (what
//! `kubectl exec`, `attach`, `cp`, `run -it` and `port-forward` use) and `pods/{name}/log`,
//! relayed to the agent on the pod's node, as kube-apiserver relays them to the kubelet.
//!
//! Clients arrive in one of three ways, and the apiserver speaks each:
//!
//! - **WebSocket**, subprotocol `v5.channel.k8s.io` or `v4.channel.k8s.io` (kubectl 1.30+
//!   for exec, the Python client): every message is a channel byte and its payload;
//! - **SPDY/3.1** ([`spdy`]), one stream per channel (kubectl 1.27-1.29, and every kubectl
//!   once a WebSocket is refused);
//! - for port-forward, **SPDY inside a WebSocket** (`SPDY/3.1+portforward.k8s.io`,
//!   kubectl 1.31+), or the WebSocket channel-pair protocol (the Python client).
//!
//! Towards the agent it is always a WebSocket in the `v5.channel.k8s.io` form
//! (see `agent/src/streaming.rs`), at the address and port the node registered.
//!
//! - [`exec`]: exec and attach; [`portforward`]: port-forward; [`spdy`]: the framing.
//!
//! Upstream: k8s.io/apiserver/pkg/util/proxy (streamtranslator.go, streamtunnel.go),
//! k8s.io/kubernetes/pkg/registry/core/pod/rest/subresources.go

pub mod exec;
pub mod portforward;
pub mod spdy;

use crate::error::ApiError;
use crate::objects::Api;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use pkg::api::{Node, NodeExt, Pod, PodExt, PodPhase};
use std::collections::HashMap;

/// The credential this apiserver presents to every agent (`--kubelet-token-file`), as
/// kube-apiserver presents its one `--kubelet-client-certificate`: one per process, set
/// once at start.
static KUBELET_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_kubelet_token(token: String) {
    let _ = KUBELET_TOKEN.set(token);
}

/// `Authorization` for requests to agents, if a token is configured.
pub fn agent_authorization() -> Option<String> {
    KUBELET_TOKEN.get().map(|t| format!("Bearer {t}"))
}

/// A GET to an agent, with the apiserver's credential.
fn agent_get(url: &str) -> reqwest::RequestBuilder {
    let rq = reqwest::Client::new().get(url);
    match agent_authorization() {
        Some(a) => rq.header(header::AUTHORIZATION, a),
        None => rq,
    }
}

/// `http://IP:PORT` of the agent on the node a pod runs on: the node's InternalIP and the
/// port in its `daemonEndpoints`.
pub async fn agent_base(api: &Api, pod: &Pod) -> Result<String, ApiError> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let node_name = pod.node_name().ok_or_else(|| ApiError::bad_request(format!("pod {name} is not scheduled yet")))?.to_string();
    let node: Node = api.get(None, &node_name).await?;
    let ip = node.internal_ip().ok_or_else(|| ApiError::unavailable(format!("node {node_name} has no InternalIP")))?;
    let port =
        node.status.as_ref().and_then(|s| s.daemon_endpoints.as_ref()).and_then(|d| d.kubelet_endpoint.as_ref()).map_or(10250, |e| e.port);
    Ok(format!("http://{ip}:{port}"))
}

/// The container a request names, or the pod's only one.
pub fn container_of(pod: &Pod, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let containers = pod.containers();
    let c = match asked.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if containers.len() == 1 => containers[0].name.clone(),
        None => {
            let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
            return Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: {names:?}")));
        }
    };
    if !containers.iter().any(|x| x.name == c) {
        return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}")));
    }
    Ok(c)
}

/// The upgrade a request asks for.
pub enum Upgrade {
    WebSocket,
    Spdy,
}

fn upgrade_of(h: &HeaderMap) -> Option<Upgrade> {
    let up = h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if up.contains("websocket") {
        Some(Upgrade::WebSocket)
    } else if up.contains("spdy/3.1") {
        Some(Upgrade::Spdy)
    } else {
        None
    }
}

/// The `X-Stream-Protocol-Version`s a SPDY client offers (one header each, or comma-separated).
fn offered(h: &HeaderMap) -> Vec<String> {
    h.get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .collect()
}

/// Accept a SPDY upgrade: `101` with the chosen protocol, then the session on the raw connection.
fn spdy_upgrade(req: &mut Request, protocol: &'static str) -> (Response<Body>, hyper::upgrade::OnUpgrade) {
    let on = hyper::upgrade::on(req);
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert("x-stream-protocol-version", HeaderValue::from_static(protocol));
    (r, on)
}

/// Route `pods/{name}/{exec,attach,portforward}`: resolve the pod, then speak the
/// protocol the client asked for.
pub async fn handle(
    api: &Api,
    ns: &str,
    name: &str,
    sub: &str,
    query: Vec<(String, String)>,
    mut req: Request,
) -> Result<Response<Body>, ApiError> {
    let pod: Pod = api.get(Some(ns), name).await?;
    if pod.phase() != PodPhase::Running {
        return Err(ApiError::bad_request(format!("pod {name} is not running (phase {})", pod.phase().as_str())));
    }
    let base = agent_base(api, &pod).await?;
    let first = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let kind =
        upgrade_of(req.headers()).ok_or_else(|| ApiError::bad_request("this endpoint needs an upgrade to SPDY/3.1 or a WebSocket"))?;
    if sub == "portforward" {
        return portforward::handle(kind, base, ns, name, &query, req).await;
    }
    // kube-apiserver's PodExecOptions / PodAttachOptions validation.
    let asked = |k: &str| pkg::remotecommand::query_bool(first(k).as_deref());
    if !asked("stdin") && !asked("stdout") && !asked("stderr") {
        return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
    }
    let container = container_of(&pod, first("container").as_deref())?;
    let agent_url = format!("{base}/{sub}/{ns}/{name}/{container}?{}", encode(&query, &["container"]));
    match kind {
        Upgrade::WebSocket => {
            let (mut parts, _) = req.into_parts();
            let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("bad WebSocket upgrade: {e}")))?;
            let ws = ws.protocols([pkg::remotecommand::V5, pkg::remotecommand::V4]);
            if ws.selected_protocol().is_none() {
                // kubectl then falls back to SPDY.
                return Err(ApiError::bad_request("supported WebSocket subprotocols: v5.channel.k8s.io, v4.channel.k8s.io"));
            }
            Ok(ws.on_upgrade(move |socket| exec::relay_websocket(socket, agent_url)).into_response())
        }
        Upgrade::Spdy => {
            let protos = offered(req.headers());
            if !protos.iter().any(|p| p == pkg::remotecommand::V4 || p == pkg::remotecommand::V5) {
                return Err(ApiError::new(403, "Forbidden", "supported stream protocols: v4.channel.k8s.io"));
            }
            let (resp, on) = spdy_upgrade(&mut req, pkg::remotecommand::V4);
            let wanted = exec::Wanted::from_query(&query);
            tokio::spawn(async move {
                match on.await {
                    Ok(up) => exec::serve_spdy(hyper_util::rt::TokioIo::new(up), agent_url, wanted).await,
                    Err(e) => tracing::warn!(error = %e, "spdy upgrade failed"),
                }
            });
            Ok(resp)
        }
    }
}

/// A query string again, without some keys.
pub fn encode(q: &[(String, String)], skip: &[&str]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in q.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
        s.append_pair(k, v);
    }
    s.finish()
}

/// `GET /api/v1/nodes/{name}/proxy/{path}`: a GET on the node's agent (`/healthz`,
/// `/debug/proxy`, ...), so `kubectl get --raw /api/v1/nodes/node1/proxy/debug/proxy` works.
pub async fn node_proxy(api: &Api, node: &str, path: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let n: Node = api.get(None, node).await?;
    let ip = n.internal_ip().ok_or_else(|| ApiError::unavailable(format!("node {node} has no InternalIP")))?;
    let port =
        n.status.as_ref().and_then(|s| s.daemon_endpoints.as_ref()).and_then(|d| d.kubelet_endpoint.as_ref()).map_or(10250, |e| e.port);
    if path.split('/').any(|seg| seg == "..") {
        return Err(ApiError::bad_request("the proxied path may not contain `..`"));
    }
    let q = query.map(|q| format!("?{q}")).unwrap_or_default();
    // Streamed as it comes (`/debug/proxy/history?watch=true` never ends); only the wait
    // for the agent's answer is bounded.
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), agent_get(&format!("http://{ip}:{port}/{path}{q}")).send())
        .await
        .map_err(|_| ApiError::unavailable(format!("the agent of node {node} did not answer in 30 s")))?
        .map_err(|e| ApiError::unavailable(format!("cannot reach the agent of node {node}: {e}")))?;
    let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ct = resp.headers().get(header::CONTENT_TYPE).cloned().unwrap_or(HeaderValue::from_static("text/plain"));
    Ok((code, [(header::CONTENT_TYPE, ct)], Body::from_stream(resp.bytes_stream())).into_response())
}

/// `GET …/pods/{name}/log?container=&follow=&tailLines=&limitBytes=`: from the agent,
/// streamed as it comes (so `kubectl logs -f` follows).
pub async fn pod_log(api: &Api, ns: &str, name: &str, p: &HashMap<String, String>) -> Result<Response<Body>, ApiError> {
    let pod: Pod = api.get(Some(ns), name).await?;
    let container = container_of(&pod, p.get("container").map(String::as_str))?;
    let base = agent_base(api, &pod).await?;
    let mut q = vec![];
    for k in ["follow", "previous", "timestamps", "tailLines", "limitBytes", "sinceSeconds", "sinceTime"] {
        let Some(v) = p.get(k) else { continue };
        let ok = match k {
            "follow" | "previous" | "timestamps" => ["true", "false", "1", "0", ""].contains(&v.as_str()),
            "sinceTime" => v.parse::<jiff::Timestamp>().is_ok(),
            _ => v.parse::<u64>().is_ok(),
        };
        if !ok {
            return Err(ApiError::bad_request(format!("{k}: invalid value {v:?}")));
        }
        q.push((k.to_string(), v.clone()));
    }
    let url = format!("{base}/containerLogs/{ns}/{name}/{container}?{}", encode(&q, &[]));
    let follow = p.get("follow").is_some_and(|v| v == "true");
    let mut rq = agent_get(&url);
    if !follow {
        rq = rq.timeout(std::time::Duration::from_secs(10));
    }
    let resp = rq.send().await.map_err(|e| ApiError::unavailable(format!("cannot reach the agent of pod {name}: {e}")))?;
    if !resp.status().is_success() {
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        return Err(if code == 400 { ApiError::bad_request(text) } else { ApiError::new(404, "NotFound", text) });
    }
    let body = Body::from_stream(resp.bytes_stream());
    Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
}
