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
    ResourceInfo { group: "", version: "v1", name: "nodes", singular: "node", kind: "Node", namespaced: false, short: &["no"], subresources: &["status", "proxy"] },
    ResourceInfo { group: "", version: "v1", name: "pods", singular: "pod", kind: "Pod", namespaced: true, short: &["po"], subresources: &["status", "binding", "log", "exec", "attach", "portforward"] },
    ResourceInfo { group: "", version: "v1", name: "services", singular: "service", kind: "Service", namespaced: true, short: &["svc"], subresources: &["status"] },
    ResourceInfo { group: "", version: "v1", name: "endpoints", singular: "endpoints", kind: "Endpoints", namespaced: true, short: &["ep"], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "configmaps", singular: "configmap", kind: "ConfigMap", namespaced: true, short: &["cm"], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "secrets", singular: "secret", kind: "Secret", namespaced: true, short: &[], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "serviceaccounts", singular: "serviceaccount", kind: "ServiceAccount", namespaced: true, short: &["sa"], subresources: &[] },
    ResourceInfo { group: "", version: "v1", name: "events", singular: "event", kind: "Event", namespaced: true, short: &["ev"], subresources: &[] },
    ResourceInfo { group: "apps", version: "v1", name: "deployments", singular: "deployment", kind: "Deployment", namespaced: true, short: &["deploy"], subresources: &["status", "scale"] },
    ResourceInfo { group: "apps", version: "v1", name: "replicasets", singular: "replicaset", kind: "ReplicaSet", namespaced: true, short: &["rs"], subresources: &["status", "scale"] },
    ResourceInfo { group: "discovery.k8s.io", version: "v1", name: "endpointslices", singular: "endpointslice", kind: "EndpointSlice", namespaced: true, short: &[], subresources: &[] },
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

/// Whether `api_version` (`v1`, `apps/v1`) is a group-version this server serves.
pub fn serves_group_version(api_version: &str) -> bool {
    match api_version.split_once('/') {
        None => api_version == "v1",
        Some((group, version)) => version == "v1" && groups().contains(&group),
    }
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
            let verbs: &[&str] = match *sub {
                "log" | "proxy" => &["get"],
                "exec" | "attach" | "portforward" => &["create", "get"],
                "binding" => &["create"],
                _ => &["get", "patch", "update"],
            };
            let mut v = json!({"name": format!("{}/{sub}", r.name), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs});
            match *sub {
                // kubectl scale reads the Scale's group-version from here.
                "scale" => {
                    v["kind"] = json!("Scale");
                    v["group"] = json!("autoscaling");
                    v["version"] = json!("v1");
                }
                "binding" => v["kind"] = json!("Binding"),
                _ => {}
            }
            resources.push(v);
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
