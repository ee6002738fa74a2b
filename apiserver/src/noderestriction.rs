//! Who may say where a node is. The apiserver dials a node's agent at the InternalIP and
//! port its Node object names, with the agent credential (`--kubelet-token-file`); if any
//! client could write those, it could send the apiserver, and that credential, anywhere.
//! So, as Kubernetes' NodeRestriction admission plugin does, only the node itself may
//! create its Node or change its status: each agent presents its own token
//! (`--token-auth-file`, Kubernetes' static token file: `token,user,uid,"groups"`), which
//! names it `system:node:<name>`.
//!
//! Everything else stays open to anonymous clients (the lab's `kubectl` has no
//! credential); a token that is presented but unknown is refused (401) everywhere.
//!
//! Upstream: plugin/pkg/admission/noderestriction/admission.go,
//! staging/src/k8s.io/apiserver/pkg/authentication/token/tokenfile

use crate::error::ApiError;
use axum::http::{header, HeaderMap, Method};
use std::collections::HashMap;

/// The static tokens: token → user name.
#[derive(Clone, Default)]
pub struct Tokens(HashMap<String, String>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} users)", self.0.len()) // never the tokens themselves
    }
}

impl Tokens {
    /// Parse a static token file: one `token,user,uid[,"group1,group2"]` per line.
    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')) {
            let mut f = line.splitn(3, ',');
            let (Some(token), Some(user)) = (f.next(), f.next()) else { anyhow::bail!("token file line {}: want token,user,uid", i + 1) };
            anyhow::ensure!(!token.is_empty() && !user.is_empty(), "token file line {}: empty token or user", i + 1);
            map.insert(token.to_string(), user.to_string());
        }
        Ok(Tokens(map))
    }

    /// Who the request is: `None` for anonymous, the user of a known bearer token, or 401.
    pub fn user(&self, h: &HeaderMap) -> Result<Option<&str>, ApiError> {
        let Some(auth) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return Ok(None) };
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        self.0.get(token).map(|u| Some(u.as_str())).ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))
    }
}

/// May `user` make this write to `nodes` (the Node `name`, from the URL or, for a create,
/// the body)? Reads always may.
pub fn admit(user: Option<&str>, method: &Method, name: Option<&str>, sub: Option<&str>) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let node_user = user.and_then(|u| u.strip_prefix("system:node:"));
    let forbidden = |what: &str| {
        let who = user.unwrap_or("system:anonymous");
        Err(ApiError::new(403, "Forbidden", format!("nodes \"{}\" is forbidden: User \"{who}\" {what}", name.unwrap_or(""))))
    };
    match (node_user, method, sub) {
        // A node acts on its own Node only.
        (Some(me), _, _) if Some(me) != name => forbidden("may only act on its own Node"),
        (Some(_), _, _) => Ok(()),
        // Others may label, taint or delete a Node, not create one or say where it is.
        (None, &Method::POST, _) => forbidden("cannot create a Node: only the node itself may register"),
        (None, _, Some("status")) => forbidden("cannot change a Node's status: only the node itself may"),
        (None, _, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_node_registers_and_updates_itself() {
        let t = Tokens::parse("# lab tokens\nabc,system:node:node1,node1,\"system:nodes\"\nxyz,system:node:node2,node2\n").unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(t.user(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(t.user(&h).unwrap(), Some("system:node:node1"));
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(t.user(&h).unwrap_err().code(), 401);
        let n1 = Some("system:node:node1");
        assert!(admit(n1, &Method::POST, Some("node1"), None).is_ok());
        assert!(admit(n1, &Method::PUT, Some("node1"), Some("status")).is_ok());
        assert_eq!(admit(n1, &Method::PUT, Some("node2"), Some("status")).unwrap_err().code(), 403);
        assert_eq!(admit(None, &Method::PATCH, Some("node1"), Some("status")).unwrap_err().code(), 403);
        assert_eq!(admit(None, &Method::POST, Some("evil"), None).unwrap_err().code(), 403);
        assert!(admit(None, &Method::PATCH, Some("node1"), None).is_ok(), "labels and taints stay open");
        assert!(admit(None, &Method::GET, Some("node1"), Some("status")).is_ok());
    }
}
