//! OpenAPI v3: the schema of every kind served, one document per group-version, which is
//! how `kubectl explain pod.spec.containers` knows what a field means and how kubectl
//! learns that the server validates fields itself (the `fieldValidation` parameter on
//! each PATCH operation, so it sends `?fieldValidation=Strict` and skips its own check).
//!
//! The schemas are not written by hand: k8s-openapi's types implement schemars'
//! `JsonSchema` (generated, like the types, from Kubernetes' own OpenAPI document), so
//! one generator per group-version collects each kind and every type it references
//! under `components.schemas`, named as upstream names them (`io.k8s.api.core.v1.Pod`).
//! ownkube adds what kubectl looks for and the types do not carry: the
//! `x-kubernetes-group-version-kind` of each kind, and `paths` whose operations name it.
//! The documents are built once, on first request.
//!
//! `/openapi/v2` ([`v2`]) holds the same schemas in Swagger 2.0 form, for kubectl 1.27 and
//! 1.28, which read it (as protobuf) before `apply`, `diff`, `edit` and `explain`.
//!
//! Upstream: k8s.io/kube-openapi/pkg/handler3/handler.go, k8s.io/apiserver/pkg/endpoints/openapi

use crate::discovery::{ResourceInfo, RESOURCES};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use k8s_openapi::schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use pkg::api::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

pub mod v2;

/// `api/v1`, `apis/apps/v1`: the key of a group-version in the index and in URLs.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Add kind `T`'s schema (and everything it references) to the generator; return its
/// schema name and group-version-kind.
fn add<T: JsonSchema + Resource>(g: &mut SchemaGenerator) -> (String, Value) {
    let _ = g.subschema_for::<T>();
    (T::schema_name().into_owned(), json!({"group": T::GROUP, "kind": T::KIND, "version": T::VERSION}))
}

/// The schema of one kind served, by its name in [`RESOURCES`].
fn add_kind(kind: &str, g: &mut SchemaGenerator) -> Option<(String, Value)> {
    Some(match kind {
        "Pod" => add::<Pod>(g),
        "Service" => add::<Service>(g),
        "Endpoints" => add::<Endpoints>(g),
        "Node" => add::<Node>(g),
        "Namespace" => add::<Namespace>(g),
        "ConfigMap" => add::<ConfigMap>(g),
        "Secret" => add::<Secret>(g),
        "ServiceAccount" => add::<ServiceAccount>(g),
        "Event" => add::<Event>(g),
        "Lease" => add::<Lease>(g),
        "Deployment" => add::<Deployment>(g),
        "ReplicaSet" => add::<ReplicaSet>(g),
        "EndpointSlice" => add::<EndpointSlice>(g),
        _ => return None,
    })
}

fn op(gvk: &Value, field_validation: bool) -> Value {
    let mut o = json!({"x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}});
    if field_validation {
        o["parameters"] = json!([{
            "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
            "description": "Ignore, Warn (the default) or Strict: what to do with fields the object's kind does not have",
        }]);
    }
    o
}

/// The URL paths of one resource and the verbs each takes; every operation names the
/// kind, and every write takes `fieldValidation`.
fn paths_of(r: &ResourceInfo, gvk: &Value, paths: &mut Map<String, Value>) {
    let base = format!("/{}", gv_path(r.group, r.version));
    let (collection, item) = if r.namespaced {
        (format!("{base}/namespaces/{{namespace}}/{}", r.name), format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.name))
    } else {
        (format!("{base}/{}", r.name), format!("{base}/{}/{{name}}", r.name))
    };
    // The cluster-wide list comes first: kubectl 1.27.0-1.27.3's explain looks only there.
    paths.insert(format!("{base}/{}", r.name), json!({"get": op(gvk, false)}));
    paths.insert(collection, json!({"get": op(gvk, false), "post": op(gvk, true), "delete": op(gvk, false)}));
    paths.insert(item.clone(), json!({"get": op(gvk, false), "put": op(gvk, true), "patch": op(gvk, true), "delete": op(gvk, false)}));
    for sub in r.subresources.iter().filter(|s| **s == "status") {
        paths.insert(format!("{item}/{sub}"), json!({"get": op(gvk, false), "put": op(gvk, true), "patch": op(gvk, true)}));
    }
}

/// The document of one group-version, or `None` if nothing is served there.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceInfo> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    // One generator per document: each must hold every schema its kinds reference.
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut kinds = vec![];
    for r in served {
        let Some((name, gvk)) = add_kind(r.kind, &mut g) else { continue };
        paths_of(r, &gvk, &mut paths);
        kinds.push((name, gvk));
    }
    // `true`: apply the OpenAPI 3.0 transforms (`$ref` with a description beside it
    // becomes `allOf: [$ref]`, as upstream writes it).
    let mut schemas = g.take_definitions(true);
    for (name, gvk) in kinds {
        if let Some(s) = schemas.get_mut(&name) {
            s["x-kubernetes-group-version-kind"] = json!([gvk]);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "ownkube", "version": format!("{}", crate::discovery::KUBE_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Every document, serialized once.
fn documents() -> &'static BTreeMap<String, Vec<u8>> {
    static DOCS: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut gvs: Vec<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
        gvs.dedup();
        gvs.into_iter().filter_map(|(g, v)| Some((gv_path(g, v), serde_json::to_vec(&document(g, v)?).ok()?))).collect()
    })
}

/// The Swagger 2.0 `definitions` of every kind of every group-version (no transforms:
/// v2 has no `allOf` wrapping, and references point at `#/definitions/`).
fn v2_definitions() -> Map<String, Value> {
    let mut g = SchemaSettings::openapi3().with(|s| s.definitions_path = "/definitions".into()).into_generator();
    let kinds: Vec<(String, Value)> = RESOURCES.iter().filter_map(|r| add_kind(r.kind, &mut g)).collect();
    let mut defs = g.take_definitions(false);
    for (name, gvk) in kinds {
        if let Some(s) = defs.get_mut(&name) {
            s["x-kubernetes-group-version-kind"] = json!([gvk]);
        }
    }
    defs
}

/// `GET /openapi/v2`: gnostic's protobuf when asked for (kubectl always asks), else JSON.
pub async fn serve_v2(headers: axum::http::HeaderMap) -> Response {
    static DOC: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (pb, js) = DOC.get_or_init(|| {
        let defs = v2_definitions();
        let version = crate::discovery::KUBE_VERSION.1;
        let js = json!({"swagger": "2.0", "info": {"title": "ownkube", "version": version}, "paths": {}, "definitions": defs});
        (v2::encode(&defs, version), serde_json::to_vec(&js).unwrap_or_default())
    });
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("protobuf") {
        // Upstream's spelling: `@` would not parse as a media type in the client.
        const PB: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
        return ([(header::CONTENT_TYPE, PB)], pb.clone()).into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], js.clone()).into_response()
}

/// `GET /openapi/v3`: where each group-version's document lives.
pub async fn index() -> axum::Json<Value> {
    let paths: Map<String, Value> =
        documents().keys().map(|k| (k.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{k}")}))).collect();
    axum::Json(json!({ "paths": paths }))
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`.
pub fn serve(gv: &str) -> Response {
    match documents().get(gv) {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response(),
        None => crate::error::ApiError::new(404, "NotFound", format!("no OpenAPI document for {gv}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_schema_and_gvk_and_refs_resolve() {
        let doc = document("", "v1").unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"], json!([{"group": "", "kind": "Pod", "version": "v1"}]));
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["items"]["$ref"], "#/components/schemas/io.k8s.api.core.v1.Container");
        assert!(containers["description"].as_str().unwrap().contains("containers"));
        // Every $ref points at a schema of the same document.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["parameters"][0]["name"], "fieldValidation");
        assert_eq!(doc["paths"]["/api/v1/pods"]["get"]["x-kubernetes-group-version-kind"]["kind"], "Pod");
        let apps = document("apps", "v1").unwrap();
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert!(apps["components"]["schemas"]["io.k8s.api.core.v1.PodTemplateSpec"].is_object());
        assert!(document("batch", "v1").is_none());
    }
}
