//! The agent's own HTTP port (the kubelet's 10250): `/healthz`, the node API of
//! [`crate::streaming`] (logs, exec, attach, port-forward: what `kubectl` reaches
//! through the apiserver), `/debug/proxy`, which shows the proxy's last ruleset and sync
//! statistics so a learner can compare them with `iptables-save -t nat`, and
//! `/debug/proxy/history` ([`crate::proxy::history`]): the last 100 syncs, what set each
//! off and the rule lines it added and removed; `?watch=true` streams new ones; and
//! `/debug/explain?src=IP&dst=IP&port=N[&proto=tcp][&format=text]`
//! ([`crate::proxy::explain`]): where a connection's first packet goes on this node, from
//! the rules the kernel holds now, every endpoint with its probability; and
//! `/debug/network` ([`crate::network_view`]): the bridge, its veths and their pods.

use crate::proxy::history::History;
use crate::proxy::Stats;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct DebugState {
    pub proxy: Arc<Mutex<Stats>>,
    pub history: Arc<History>,
    /// Where `iptables-save`, `nft` and `ip` run for `/debug/explain` (this namespace).
    pub runner: crate::proxy::iptables::Runner,
}

/// The agent's port: health and debug pages, and (on a node that runs pods) the logs,
/// exec, attach and port-forward endpoints of [`crate::streaming`].
pub fn router(state: DebugState, streaming: Option<crate::streaming::Streaming>) -> Router {
    router_with(state, streaming, crate::auth::Token::default())
}

/// [`router`], answering only requests that [`crate::auth::Token`] lets through. Serve it
/// with `into_make_service_with_connect_info::<SocketAddr>()` so it knows who asks.
pub fn router_with(state: DebugState, streaming: Option<crate::streaming::Streaming>, token: crate::auth::Token) -> Router {
    let r = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/debug/proxy", get(proxy))
        .route("/debug/proxy/history", get(history))
        .route("/debug/explain", get(explain))
        .route("/debug/network", get(network))
        .with_state(state);
    let r = match streaming {
        Some(s) => r.merge(crate::streaming::router(s)),
        None => r,
    };
    r.layer(axum::middleware::from_fn_with_state(token, crate::auth::require))
}

/// JSON statistics; `?format=text` gives only the ruleset, as `iptables-restore` reads it.
async fn proxy(State(s): State<DebugState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let stats = s.proxy.lock().unwrap().clone();
    if q.get("format").map(String::as_str) == Some("text") {
        return stats.last_ruleset.into_response();
    }
    axum::Json(stats).into_response()
}

/// `{"items": [...]}`, oldest first; with `?watch=true`, one line of JSON per sync from
/// now on, for as long as the client stays (a client too slow to keep up is told how
/// many it missed).
async fn history(State(s): State<DebugState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let (kept, rx) = s.history.subscribe();
    if !matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        return axum::Json(serde_json::json!({ "items": kept })).into_response();
    }
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let line = match rx.recv().await {
            Ok(r) => serde_json::to_string(&r).unwrap_or_default(),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => format!("{{\"missed\":{n}}}"),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(format!("{line}\n")), rx))
    });
    ([(axum::http::header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(lines)).into_response()
}

/// The explanation as JSON, or in words with `?format=text`; a `400` Status naming each
/// bad parameter.
async fn explain(State(s): State<DebugState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let packet = match pkg::explain::query::packet(&q) {
        Ok(p) => p,
        Err(st) => return status(*st),
    };
    match crate::proxy::explain::explain(&s.runner, &packet).await {
        Ok(e) if q.get("format").map(String::as_str) == Some("text") => e.text().into_response(),
        Ok(e) => axum::Json(e).into_response(),
        Err(e) => internal(e),
    }
}

/// The pod network as the kernel holds it (for the topology page).
async fn network(State(s): State<DebugState>) -> Response {
    match crate::network_view::read(&s.runner).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => internal(e),
    }
}

/// A Status as the answer, with its code as the HTTP status.
fn status(st: pkg::api::Status) -> Response {
    use pkg::api::status::StatusExt;
    (axum::http::StatusCode::from_u16(st.code()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR), axum::Json(st)).into_response()
}

/// `500 InternalError`: the kernel's state could not be read.
fn internal(e: impl std::fmt::Display) -> Response {
    use pkg::api::status::StatusExt;
    status(pkg::api::Status::failure(500, "InternalError", e.to_string()))
}
