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

/// One resource as discovery describes it.
pub struct ResourceInfo {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub name: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
    /// Subresources: `status`, `log`, ...
    pub subresources: &'static [&'static str],
}

const ALL_VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// Every resource ownkube serves. Routing and discovery both read this table.
#[rustfmt::skip]
pub const RESOURCES: &[ResourceInfo] = &[
    ResourceInfo { group: "", version: "v1", name: "namespaces", singular: "namespace", kind: "Namespace", namespaced: false, short: &["ns"], subresources: &["status"] },
    ResourceInfo { group: "", version: "v1", name: "nodes", singular: "node", kind: "Node", namespaced: false, short: &["no"], subresources: &["status"] },
    ResourceInfo { group: "", version: "v1", name: "pods", singular: "pod", kind: "Pod", namespaced: true, short: &["po"], subresources: &["status", "log"] },
    ResourceInfo { group: "", version: "v1", name: "services", singular: "service", kind: "Service", namespaced: true, short: &["svc"], subresources: &["status"] },
    ResourceInfo { group: "", version: "v1", name: "endpoints", singular: "endpoints", kind: "Endpoints", namespaced: true, short: &["ep"], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "configmaps", singular: "configmap", kind: "ConfigMap", namespaced: true, short: &["cm"], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "secrets", singular: "secret", kind: "Secret", namespaced: true, short: &[], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "serviceaccounts", singular: "serviceaccount", kind: "ServiceAccount", namespaced: true, short: &["sa"], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "events", singular: "event", kind: "Event", namespaced: true, short: &["ev"], subresources: &[] },
    ResourceInfo { group: "apps", version: "v1", name: "deployments", singular: "deployment", kind: "Deployment", namespaced: true, short: &["deploy"], subresources: &["status"] },
    ResourceInfo { group: "apps", version: "v1", name: "replicasets", singular: "replicaset", kind: "ReplicaSet", namespaced: true, short: &["rs"], subresources: &["status"] },
    ResourceInfo { group: "coordination.k8s.io", version: "v1", name: "leases", singular: "lease", kind: "Lease", namespaced: true, short: &[], subresources: &[] },
];

/// The groups besides the core one, each with its one version.
fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = vec![];
    for r in RESOURCES {
        if !r.group.is_empty() && !g.contains(&r.group) {
            g.push(r.group);
        }
    }
    g.push("authorization.k8s.io");
    g
}

fn group_json(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv], "preferredVersion": gv})
}

/// `/apis`: the named API groups.
pub async fn api_groups() -> Json<Value> {
    let groups: Vec<Value> = groups().into_iter().map(group_json).collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

/// `/apis/{group}`.
pub fn api_group(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| {
        let mut g = group_json(group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

/// `/api/v1` and `/apis/{group}/{version}`: the resources of one group-version.
pub fn api_resources(group: &str, version: &str) -> Option<Value> {
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let mut resources = vec![];
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let mut v = json!({"name": r.name, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": ALL_VERBS});
        if !r.short.is_empty() {
            v["shortNames"] = json!(r.short);
        }
        if ["pods", "services", "deployments", "replicasets"].contains(&r.name) {
            v["categories"] = json!(["all"]);
        }
        resources.push(v);
        for sub in r.subresources {
            let verbs: &[&str] = if *sub == "log" { &["get"] } else { &["get", "patch", "update"] };
            resources.push(json!({"name": format!("{}/{sub}", r.name), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs}));
        }
    }
    if group == "authorization.k8s.io" && version == "v1" {
        resources.push(json!({"name": "selfsubjectaccessreviews", "singularName": "", "namespaced": false, "kind": "SelfSubjectAccessReview", "verbs": ["create"]}));
    }
    (!resources.is_empty()).then(|| json!({"kind": "APIResourceList", "groupVersion": gv, "resources": resources}))
}

/// The resource a URL names, if served.
pub fn resource(group: &str, version: &str, name: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.name == name)
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
        ("ConfigMap", "/api/v1/namespaces/{namespace}/configmaps/{name}"),
        ("Secret", "/api/v1/namespaces/{namespace}/secrets/{name}"),
        ("ServiceAccount", "/api/v1/namespaces/{namespace}/serviceaccounts/{name}"),
        ("Event", "/api/v1/namespaces/{namespace}/events/{name}"),
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

/// `/openapi/v2`. kubectl 1.27 reads it before `apply`, `edit` and `diff` (asking for
/// gnostic's protobuf form), and falls back to the patch strategies it has compiled in
/// for every kind the document does not describe. This document describes none yet —
/// an empty protobuf message (zero bytes), or an empty Swagger 2.0 document as JSON —
/// so kubectl takes the merge keys from its own copy of k8s.io/api.
pub async fn openapi_v2(headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("protobuf") {
        const PB: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
        return ([(axum::http::header::CONTENT_TYPE, PB)], Vec::<u8>::new()).into_response();
    }
    Json(json!({"swagger": "2.0", "info": {"title": "ownkube", "version": "v1"}, "paths": {}, "definitions": {}})).into_response()
}
