//! The verbs every resource shares — list, create, get, update, patch, delete and
//! deletecollection — written once over any kind `T` (kube-apiserver's
//! `endpoints/handlers/{get,create,update,patch,delete}.go`). Each request's options come
//! in the query string: `dryRun=All` validates and answers without writing,
//! `labelSelector`/`fieldSelector` filter, `limit`/`continue` paginate.

use crate::codec::{self, BodyType, FieldValidation, Output};
use crate::error::ApiError;
use crate::list::{self, ListQuery};
use crate::objects::{Api, DeleteOpts, Write};
use crate::printers::{self, Printable};
use crate::registry::Strategy;
use crate::watch;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pkg::api::{CauseExt, StatusCause};
use pkg::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use std::collections::HashMap;

pub type Params = HashMap<String, String>;

/// One request for a resource: where it points and what came with it.
pub struct Req<'a> {
    pub ns: Option<&'a str>,
    pub name: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub params: &'a Params,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub out: Output,
}

/// `dryRun=All`: true; absent: false; anything else is a 422 of the request's `options`
/// (`CreateOptions`, ...), as kube-apiserver's `ValidateDryRun` refuses it.
pub fn dry_run(p: &Params, options: &str) -> Result<bool, ApiError> {
    let Some(v) = p.get("dryRun").filter(|v| !v.is_empty()) else { return Ok(false) };
    match pkg::validation::dry_run_cause(std::slice::from_ref(v)) {
        None => Ok(true),
        Some(cause) => Err(ApiError::invalid_meta_options(options, vec![cause])),
    }
}

/// The request's dry-run flag and field manager (`?fieldManager=`, else its User-Agent's name).
pub fn writer(r: &Req<'_>, options: &str) -> Result<Write, ApiError> {
    let ua = r.headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok());
    let name = pkg::managedfields::manager_name(r.params.get("fieldManager").map(String::as_str), ua);
    check_manager(options, &name)?;
    Ok(Write::by(&name).dry(dry_run(r.params, options)?))
}

/// A field manager's name is at most 128 bytes, for every verb (apply included), checked
/// as kube-apiserver's `ValidateFieldManager` checks `<options>` (`CreateOptions`,
/// `UpdateOptions`, `PatchOptions`).
pub fn check_manager(options: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > 128 {
        let cause = StatusCause::cause("FieldValueTooLong", "Too long: may not be more than 128 bytes".into(), "fieldManager");
        return Err(ApiError::invalid_meta_options(options, vec![cause]));
    }
    Ok(())
}

/// kube-apiserver's `checkName`: what a PUT or a PATCH writes must be the object its URL
/// names. (A patch that removes `metadata` leaves a nameless object, which would
/// otherwise be written over the stored one with its labels and annotations gone.)
pub fn check_name<T: pkg::api::Object>(obj: &T, name: &str, ns: Option<&str>) -> Result<(), ApiError> {
    if obj.name().is_empty() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name} based on URL) was undeterminable: name must be provided"
        )));
    }
    if obj.name() != name {
        return Err(ApiError::bad_request(format!("the name of the object ({}) does not match the name on the URL ({name})", obj.name())));
    }
    match (T::NAMESPACED, ns, obj.meta().namespace.as_deref()) {
        (true, Some(ns), Some(given)) if !given.is_empty() && given != ns => {
            Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
        }
        _ => Ok(()),
    }
}

/// A patch or an apply may not change `metadata.uid` (ValidateObjectMetaUpdate: 422).
pub fn check_uid_unchanged<T: pkg::api::Object>(patched: &T, live: &T) -> Result<(), ApiError> {
    match patched.uid() {
        Some(uid) if !uid.is_empty() && Some(uid) != live.uid() => {
            let cause = StatusCause::invalid("metadata.uid", format!("{uid:?}"), "field is immutable");
            Err(ApiError::invalid(T::KIND, live.name(), vec![cause]))
        }
        _ => Ok(()),
    }
}

/// Label and field selectors from the query string; a bad one is a 400.
pub fn selectors<T: Strategy>(p: &Params) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(p.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
    let f = FieldSelector::parse(p.get("fieldSelector").map(String::as_str).unwrap_or(""), T::FIELDS)
        .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?;
    Ok((l, f))
}

/// Route one request to its verb.
pub async fn handle<T: Strategy + Printable>(api: &Api, method: &Method, r: Req<'_>) -> Result<Response, ApiError> {
    // A namespaced kind asked for without a namespace is only listed (across all of them);
    // a cluster-scoped kind never takes one.
    if !T::NAMESPACED && r.ns.is_some() {
        return Err(ApiError::new(404, "NotFound", format!("{} are not namespaced", T::RESOURCE)));
    }
    if T::NAMESPACED && r.ns.is_none() && !(r.name.is_none() && method == Method::GET) {
        return Err(ApiError::new(405, "MethodNotAllowed", format!("{} must be addressed inside a namespace", T::RESOURCE)));
    }
    let watching = r.params.get("watch").is_some_and(|v| v == "true" || v == "1");
    // A list option a list ignores must still be well formed (it bounds a watch).
    if let Some(t) = r.params.get("timeoutSeconds").filter(|t| t.parse::<u64>().is_err()) {
        return Err(ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}: must be a non-negative integer")));
    }
    match (method.clone(), r.name, r.sub) {
        (Method::GET, None, None) if watching => watch::watch::<T>(api, r.ns, r.params, selectors::<T>(r.params)?, r.out).await,
        (Method::GET, None, None) => list::<T>(api, &r).await,
        (Method::POST, None, None) => create::<T>(api, &r).await,
        (Method::DELETE, None, None) => delete_collection::<T>(api, &r).await,
        (Method::GET, Some(name), None | Some("status")) => Ok(codec::respond_obj(StatusCode::OK, r.out, &api.get::<T>(r.ns, name).await?)),
        (Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            let d = codec::decode_body::<T>(r.headers, &r.body, FieldValidation::from_params(r.params)?)?;
            check_name(&d.obj, name, r.ns)?;
            let updated = api.update_opts::<T>(r.ns, name, d.obj, sub.is_some(), &writer(&r, "UpdateOptions")?).await?;
            Ok(codec::with_warnings(codec::respond_obj(StatusCode::OK, r.out, &updated), &d.warnings))
        }
        (Method::PATCH, Some(name), sub @ (None | Some("status"))) => patch::<T>(api, name, sub.is_some(), &r).await,
        (Method::DELETE, Some(name), None) => delete::<T>(api, name, &r).await,
        (Method::GET | Method::PUT | Method::PATCH, Some(name), Some("scale")) => crate::scale::handle::<T>(api, method, name, &r).await,
        (Method::POST, Some(name), Some("binding")) if T::KIND == "Pod" => crate::binding::bind(api, name, &r).await,
        (m, _, sub) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported on {}{}", T::RESOURCE, sub.map(|s| format!("/{s}")).unwrap_or_default()),
        )),
    }
}

/// `PodList`, `ServiceList`, ...
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T> {
    kind: String,
    api_version: &'static str,
    metadata: Value,
    items: Vec<T>,
}

async fn list<T: Strategy + Printable>(api: &Api, r: &Req<'_>) -> Result<Response, ApiError> {
    let (l, f) = selectors::<T>(r.params)?;
    let limit = match r.params.get("limit").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s.parse::<i64>().map_err(|_| ApiError::bad_request(format!("limit: invalid value {s:?}")))?,
    };
    let continue_token = r.params.get("continue").map(String::as_str).filter(|s| !s.is_empty());
    if continue_token.is_some() && r.params.get("resourceVersion").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
    }
    let param = |k: &str| r.params.get(k).map(String::as_str);
    let (resource_version, exact) =
        list::resource_version(param("resourceVersion"), param("resourceVersionMatch"), limit, continue_token.is_some())?;
    let q = ListQuery { labels: &l, fields: &f, limit, continue_token, resource_version, exact };
    let res = list::list::<T>(api, r.ns, &q).await?;
    match r.out {
        Output::Table => {
            let include = printers::IncludeObject::from_param(r.params.get("includeObject").map(String::as_str))?;
            let objs: Vec<&T> = res.items.iter().map(|e| &e.obj).collect();
            let mut t = printers::table(&objs, res.metadata["resourceVersion"].as_str().map(String::from), true, include);
            t["metadata"] = res.metadata;
            Ok(codec::respond(StatusCode::OK, r.out, t))
        }
        Output::PartialMetadata => {
            let items: Vec<Value> = res.items.iter().map(|e| codec::partial_metadata(&e.obj)).collect();
            let list =
                json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": res.metadata, "items": items});
            Ok(codec::respond(StatusCode::OK, r.out, list))
        }
        Output::Yaml => {
            let items: Vec<&T> = res.items.iter().map(|e| &e.obj).collect();
            let list = List { kind: format!("{}List", T::KIND), api_version: T::API_VERSION, metadata: res.metadata, items };
            Ok(codec::respond(StatusCode::OK, r.out, serde_json::to_value(&list).unwrap_or(Value::Null)))
        }
        Output::Json => Ok(json_list::<T>(&res.metadata, &res.items)),
    }
}

/// A JSON list written from each item's own encoding (kept by the watch cache): lists
/// are the largest responses, and a cached object is encoded once, not once per LIST.
fn json_list<T: Strategy>(metadata: &Value, items: &[std::sync::Arc<crate::cacher::store::Entry<T>>]) -> Response {
    let mut body = Vec::with_capacity(items.iter().map(|e| e.json().len() + 1).sum::<usize>() + 256);
    let head = json!({"kind": format!("{}List", T::KIND), "apiVersion": T::API_VERSION, "metadata": metadata});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    body.extend_from_slice(&head[..head.len() - 1]); // without its closing brace
    body.extend_from_slice(b",\"items\":[");
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.json());
    }
    body.extend_from_slice(b"]}");
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn create<T: Strategy + Printable>(api: &Api, r: &Req<'_>) -> Result<Response, ApiError> {
    let w = writer(r, "CreateOptions")?;
    let fv = FieldValidation::from_params(r.params)?;
    let mut decoded = codec::decode_documents::<T>(r.headers, &r.body, fv)?;
    if decoded.len() == 1 {
        let d = decoded.remove(0);
        let created = api.create_opts::<T>(r.ns, d.obj, &w).await?;
        return Ok(codec::with_warnings(codec::respond_obj(StatusCode::CREATED, r.out, &created), &d.warnings));
    }
    // Several YAML documents (an ownkube convenience for `curl --data-binary @file`): all
    // are decoded, validated and dry-run created before any is written.
    let warnings: Vec<String> = decoded.iter().flat_map(|d| d.warnings.clone()).collect();
    for d in &decoded {
        api.create_opts::<T>(r.ns, d.obj.clone(), &w.clone().dry(true)).await?;
    }
    let mut created = vec![];
    for d in decoded {
        created.push(api.create_opts::<T>(r.ns, d.obj, &w).await?);
    }
    let list = json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": created});
    Ok(codec::with_warnings(codec::respond(StatusCode::CREATED, r.out, list), &warnings))
}

/// Remove every key that begins with `$` (patch directives, which are never data).
fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Apply a patch of the request's type to `doc`.
pub fn apply_patch<T: pkg::api::Object>(ty: BodyType, doc: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    let patch: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("unable to decode patch: {e}")))?;
    match ty {
        BodyType::MergePatch => pkg::patch::merge_patch(doc, &patch),
        BodyType::StrategicMergePatch => {
            *doc = pkg::patch::strategic_merge(doc, &patch, &pkg::patch::patch_meta(T::KIND))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        BodyType::JsonPatch => {
            let ops: json_patch::Patch =
                serde_json::from_value(patch).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(doc, &ops).map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
        }
        BodyType::Json | BodyType::ApplyPatch | BodyType::Yaml | BodyType::Protobuf => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "PATCH takes application/merge-patch+json, application/strategic-merge-patch+json or application/json-patch+json",
            ))
        }
    }
    strip_directives(doc);
    Ok(())
}

/// PATCH: read, patch, write with the read's resourceVersion; a concurrent change (409)
/// is retried unless the patch itself named a resourceVersion.
async fn patch<T: Strategy + Printable>(api: &Api, name: &str, status: bool, r: &Req<'_>) -> Result<Response, ApiError> {
    let ty = codec::body_type(r.headers)?;
    if ty == BodyType::ApplyPatch {
        return crate::apply::apply::<T>(api, name, status, r).await;
    }
    if r.params.contains_key("force") {
        return Err(ApiError::invalid_options("PatchOptions", "force", "may not be specified for non-apply patch"));
    }
    let w = writer(r, "PatchOptions")?;
    let fv = FieldValidation::from_params(r.params)?;
    for _ in 0..5 {
        let current = api.get::<T>(r.ns, name).await?;
        let mut doc = serde_json::to_value(&current).unwrap_or(Value::Null);
        apply_patch::<T>(ty, &mut doc, &r.body)?;
        let pinned = doc["metadata"]["resourceVersion"] != json!(current.meta().resource_version);
        let patched = codec::decode_value::<T>(doc, fv)?;
        check_name(&patched.obj, name, r.ns)?;
        check_uid_unchanged(&patched.obj, &current)?;
        match api.update_opts::<T>(r.ns, name, patched.obj, status, &w).await {
            Err(e) if e.code() == 409 && !pinned => continue,
            res => return Ok(codec::with_warnings(codec::respond_obj(StatusCode::OK, r.out, &res?), &patched.warnings)),
        }
    }
    Err(ApiError::conflict(T::KIND, name))
}

/// The options of a DELETE: a `DeleteOptions` body, or without one the query string (as
/// kube-apiserver, which reads the query only when there is no body), validated as
/// `ValidateDeleteOptions` validates them.
pub fn delete_options(p: &Params, h: &HeaderMap, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
    let opts: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
        let grace = p.get("gracePeriodSeconds").map(|g| g.parse::<i64>()).transpose();
        DeleteOptions {
            grace_period_seconds: grace.map_err(|_| ApiError::bad_request("gracePeriodSeconds: invalid value: must be an integer"))?,
            propagation_policy: p.get("propagationPolicy").filter(|v| !v.is_empty()).cloned(),
            orphan_dependents: p.get("orphanDependents").filter(|v| !v.is_empty()).map(|v| v == "true" || v == "1"),
            dry_run: p.get("dryRun").filter(|v| !v.is_empty()).map(|v| vec![v.clone()]),
            ..Default::default()
        }
    } else {
        let mut docs = codec::parse_documents(h, body, ("meta.k8s.io/v1", "DeleteOptions"))?;
        if docs.len() != 1 || !docs[0].is_object() {
            return Err(ApiError::bad_request("the DELETE body must be one DeleteOptions object"));
        }
        let doc = docs.remove(0);
        // Another kind is not a DeleteOptions (which every served group-version has).
        match (doc["kind"].as_str(), doc["apiVersion"].as_str()) {
            (Some(k), _) if k != "DeleteOptions" => {
                return Err(ApiError::bad_request("decoded object cannot be converted to DeleteOptions"));
            }
            (_, Some(v)) if !crate::discovery::serves_group_version(v) && v != "meta.k8s.io/v1" => {
                return Err(ApiError::bad_request(format!("no kind \"DeleteOptions\" is registered for version \"{v}\"")));
            }
            _ => {}
        }
        // Every field of the right type, or nothing is deleted.
        serde_json::from_value(doc).map_err(|e| ApiError::bad_request(format!("the DELETE body is not a valid DeleteOptions: {e}")))?
    };
    let causes = pkg::deletion::validate_options(&opts);
    if !causes.is_empty() {
        return Err(ApiError::invalid_meta_options("DeleteOptions", causes));
    }
    let preconditions = opts.preconditions.clone().unwrap_or_default();
    Ok(DeleteOpts {
        grace: pkg::deletion::grace_of(&opts),
        propagation: pkg::deletion::propagation_of(&opts),
        precondition_rv: preconditions.resource_version,
        precondition_uid: preconditions.uid,
        dry_run: opts.dry_run.is_some_and(|d| !d.is_empty()),
    })
}

async fn delete<T: Strategy + Printable>(api: &Api, name: &str, r: &Req<'_>) -> Result<Response, ApiError> {
    let o = delete_options(r.params, r.headers, &r.body)?;
    if T::KIND == "Namespace" && crate::BUILTIN_NAMESPACES.contains(&name) {
        return Err(ApiError::new(403, "Forbidden", format!("namespace \"{name}\" is forbidden: this namespace may not be deleted")));
    }
    if T::KIND == "Namespace" {
        // Marked Terminating; the namespace controller empties and removes it.
        let marked = api.delete_opts::<T>(r.ns, name, &DeleteOpts { grace: None, ..o.clone() }).await?;
        if !o.dry_run {
            let (api, name) = (api.clone(), name.to_string());
            tokio::spawn(async move {
                if let Err(e) = crate::controllers::namespace::finish(&api, &name).await {
                    tracing::info!(namespace = %name, error = %e.message(), "namespace not gone yet; retried");
                }
            });
        }
        return Ok(codec::respond_obj(StatusCode::OK, r.out, &marked));
    }
    let gone = api.delete_opts::<T>(r.ns, name, &o).await?;
    Ok(codec::respond_obj(StatusCode::OK, r.out, &gone))
}

/// DELETE on a collection: every object the selectors match, one by one.
async fn delete_collection<T: Strategy + Printable>(api: &Api, r: &Req<'_>) -> Result<Response, ApiError> {
    if T::KIND == "Namespace" {
        return Err(ApiError::new(405, "MethodNotAllowed", "namespaces are deleted one by one"));
    }
    let o = delete_options(r.params, r.headers, &r.body)?;
    let (l, f) = selectors::<T>(r.params)?;
    let res = list::list::<T>(api, r.ns, &ListQuery::all(&l, &f)).await?;
    let mut gone = vec![];
    for item in res.items {
        let (ns, name) = (item.obj.namespace().map(String::from), item.obj.name().to_string());
        let one = DeleteOpts { precondition_rv: None, precondition_uid: None, ..o.clone() };
        match api.delete_opts::<T>(ns.as_deref(), &name, &one).await {
            Ok(g) => gone.push(g),
            Err(e) if e.code() == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = List { kind: format!("{}List", T::KIND), api_version: T::API_VERSION, metadata: json!({}), items: gone };
    Ok(codec::respond(StatusCode::OK, r.out, serde_json::to_value(&list).unwrap_or(Value::Null)))
}
