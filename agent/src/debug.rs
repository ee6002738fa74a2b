//! The agent's own HTTP port (the kubelet's 10250, minus authentication): `/healthz`,
//! `/containerLogs/{ns}/{pod}/{container}` (what `kubectl logs` reaches through the
//! apiserver), and `/debug/proxy`, which shows the proxy's last ruleset and sync
//! statistics so a learner can compare them with `iptables-save -t nat`.

use crate::proxy::Stats;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct DebugState {
    pub proxy: Arc<Mutex<Stats>>,
    /// To find a pod's uid (its log files are kept by uid) and where they are.
    pub logs: Option<(crate::client::Client, std::path::PathBuf)>,
}

pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/debug/proxy", get(proxy))
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .with_state(state)
}

/// A container's output, as written by its task (stdout and stderr interleaved).
async fn logs(
    State(s): State<DebugState>,
    axum::extract::Path((ns, pod, container)): axum::extract::Path<(String, String, String)>,
) -> Response {
    use axum::http::StatusCode;
    let Some((client, state_dir)) = s.logs else { return (StatusCode::NOT_FOUND, "this agent runs no pods").into_response() };
    let p: pkg::api::Pod = match client.get(&format!("/api/v1/namespaces/{ns}/pods/{pod}")).await {
        Ok(p) => p,
        Err(e) => return (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    };
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let path = crate::kubelet::Kubelet::log_path(&state_dir, &uid, &container);
    match tokio::fs::read(&path).await {
        Ok(b) => ([(axum::http::header::CONTENT_TYPE, "text/plain")], b).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, format!("no logs for container {container} of pod {ns}/{pod}")).into_response(),
    }
}

/// JSON statistics; `?format=text` gives only the ruleset, as `iptables-restore` reads it.
async fn proxy(State(s): State<DebugState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let stats = s.proxy.lock().unwrap().clone();
    if q.get("format").map(String::as_str) == Some("text") {
        return stats.last_ruleset.into_response();
    }
    axum::Json(stats).into_response()
}
