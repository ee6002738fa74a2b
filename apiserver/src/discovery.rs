//! Discovery: the documents a client such as `kubectl` reads before anything else, to learn
//! which API versions and resources this server has (`/api`, `/api/v1`, `/apis`, `/version`).

use axum::Json;
use serde_json::{json, Value};

/// The Kubernetes version ownkube presents (kubectl warns about a skew of more than one minor).
pub const KUBE_VERSION: (&str, &str) = ("1", "32");

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": KUBE_VERSION.0, "minor": KUBE_VERSION.1,
        "gitVersion": format!("v{}.{}.0-ownkube.{}", KUBE_VERSION.0, KUBE_VERSION.1, env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "n/a (Rust)", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

pub async fn api_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }))
}

/// No API groups besides the core one.
pub async fn api_groups() -> Json<Value> {
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
}

pub async fn api_resources() -> Json<Value> {
    let all = ["create", "delete", "get", "list", "patch", "update", "watch"];
    let sub = ["get", "patch", "update"];
    let r = |name: &str, singular: &str, namespaced: bool, kind: &str, short: &[&str], verbs: &[&str]| {
        let mut v = json!({"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": verbs});
        if !short.is_empty() {
            v["shortNames"] = json!(short);
        }
        if ["pods", "services"].contains(&name) {
            v["categories"] = json!(["all"]);
        }
        v
    };
    Json(json!({
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [
            r("namespaces", "namespace", false, "Namespace", &["ns"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            r("namespaces/status", "", false, "Namespace", &[], &sub),
            r("nodes", "node", false, "Node", &["no"], &all),
            r("nodes/status", "", false, "Node", &[], &sub),
            r("pods", "pod", true, "Pod", &["po"], &all),
            r("pods/status", "", true, "Pod", &[], &sub),
            r("pods/log", "", true, "Pod", &[], &["get"]),
            r("services", "service", true, "Service", &["svc"], &all),
            r("services/status", "", true, "Service", &[], &sub),
            r("endpoints", "endpoints", true, "Endpoints", &["ep"], &all),
        ],
    }))
}

/// `/openapi/v3`: where the schema of each group-version lives. kubectl reads it to learn
/// whether the server validates fields itself (`?fieldValidation=Strict`) before `create -f`.
pub async fn openapi_v3_root() -> Json<Value> {
    Json(json!({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1"}}}))
}

/// `/openapi/v3/api/v1`: a minimal document, one PATCH operation per kind that names the
/// `fieldValidation` parameter. ownkube keeps every field it is sent, so no field is ever
/// unknown to it and the answer to "strict validation?" is yes.
pub async fn openapi_v3_core() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for (kind, path) in [
        ("Pod", "/api/v1/namespaces/{namespace}/pods/{name}"),
        ("Service", "/api/v1/namespaces/{namespace}/services/{name}"),
        ("Endpoints", "/api/v1/namespaces/{namespace}/endpoints/{name}"),
        ("Node", "/api/v1/nodes/{name}"),
        ("Namespace", "/api/v1/namespaces/{name}"),
    ] {
        paths.insert(
            path.into(),
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    Json(json!({"openapi": "3.0.0", "info": {"title": "ownkube", "version": "v1"}, "paths": paths}))
}
