//! Who may use the agent's port. Its node API runs commands in containers and reads their
//! logs, so, as the kubelet does, it answers only the apiserver: a request must carry the
//! bearer token the lab generated at `lab up` (`--auth-token-file`; the apiserver sends it,
//! `--kubelet-token-file`). Two exceptions: `/healthz`, and requests from the node itself
//! (loopback), so `docker exec node1 curl localhost:10250/debug/proxy` still works.
//! Pods cannot reach the port at all ([`crate::firewall`]).
//!
//! Upstream: pkg/kubelet/server/auth.go (kubelet authentication)

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// The token requests must carry; `None` lets everything through (tests, a bare agent).
#[derive(Clone, Default)]
pub struct Token(pub Option<Arc<String>>);

impl Token {
    /// Read from a file (surrounding whitespace dropped); an empty file is an error.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Token> {
        let t = std::fs::read_to_string(path)?.trim().to_string();
        anyhow::ensure!(!t.is_empty(), "{} holds no token", path.display());
        Ok(Token(Some(Arc::new(t))))
    }

    /// Whether a request from `peer` with this `Authorization` header may pass.
    pub fn allows(&self, path: &str, peer: Option<SocketAddr>, authorization: Option<&str>) -> bool {
        let Some(want) = &self.0 else { return true };
        if path == "/healthz" || peer.is_some_and(|p| p.ip().is_loopback()) {
            return true;
        }
        // Compared in full whatever the first difference, so timing tells nothing.
        let given = authorization.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("").as_bytes();
        given.len() == want.len() && given.iter().zip(want.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// The middleware: 401 with a Kubernetes Status unless [`Token::allows`].
pub async fn require(State(token): State<Token>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let auth = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if token.allows(req.uri().path(), peer, auth) {
        return next.run(req).await;
    }
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized: the agent answers only the apiserver", "reason": "Unauthorized", "code": 401});
    (StatusCode::UNAUTHORIZED, axum::Json(status)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_or_the_node_itself_passes() {
        let t = Token(Some(Arc::new("s3cret".into())));
        let far: SocketAddr = "10.244.1.5:40000".parse().unwrap();
        let near: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert!(!t.allows("/containerLogs/default/p/c", Some(far), None));
        assert!(!t.allows("/containerLogs/default/p/c", Some(far), Some("Bearer s3creT")));
        assert!(!t.allows("/containerLogs/default/p/c", Some(far), Some("Bearer s3cret2")));
        assert!(t.allows("/containerLogs/default/p/c", Some(far), Some("Bearer s3cret")));
        assert!(t.allows("/healthz", Some(far), None));
        assert!(t.allows("/debug/proxy", Some(near), None));
        assert!(Token::default().allows("/exec/x", Some(far), None), "no token configured: open");
    }
}
