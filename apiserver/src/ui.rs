//! `/ui/`: a live topology page — nodes with their pod CIDRs, bridges and veths, pods
//! with IPs and phases, Services with arrows to their endpoints — for watching what the
//! cluster does while you type. Three static files compiled into this binary
//! (`include_str!`): no build step, no CDN, works offline.
//!
//! The page is a client like kubectl: it lists and watches through the same API
//! (`src/ui/app.js` is the informer pattern in 60 lines of JavaScript), reaches each
//! node's agent through the node proxy (`/debug/network`, `/debug/explain`), and holds no
//! privilege of its own.
//!
//! Upstream: none (Kubernetes' dashboard is a separate, much larger project).

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

fn file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The page's routes, to merge into the apiserver's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { file("text/javascript; charset=utf-8", APP) }))
        .route("/ui/style.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
}
