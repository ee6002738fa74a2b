//! The agent's own HTTP port (the kubelet's 10250): `/healthz`, the node API of
//! [`crate::streaming`] (logs, exec, attach, port-forward: what `kubectl` reaches
//! through the apiserver), and `/debug/proxy`, which shows the proxy's last ruleset and sync
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
}

/// The agent's port: health and debug pages, and (on a node that runs pods) the logs,
/// exec, attach and port-forward endpoints of [`crate::streaming`].
pub fn router(state: DebugState, streaming: Option<crate::streaming::Streaming>) -> Router {
    router_with(state, streaming, crate::auth::Token::default())
}

/// [`router`], answering only requests that [`crate::auth::Token`] lets through. Serve it
/// with `into_make_service_with_connect_info::<SocketAddr>()` so it knows who asks.
pub fn router_with(state: DebugState, streaming: Option<crate::streaming::Streaming>, token: crate::auth::Token) -> Router {
    let r = Router::new().route("/healthz", get(|| async { "ok" })).route("/debug/proxy", get(proxy)).with_state(state);
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
