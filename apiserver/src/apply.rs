//! Server-side apply: `PATCH` with `Content-Type: application/apply-patch+yaml`, what
//! `kubectl apply --server-side` sends. The body is the whole configuration the field
//! manager (`?fieldManager=`, required) wants; the server merges it into the live object
//! (or creates the object), records what the manager now owns in `managedFields`,
//! prunes what it set before and no longer sets, and answers 409 Conflict when another
//! manager owns a field the configuration would change, unless `?force=true`.
//! The field work itself is pure and lives in [`pkg::managedfields`].
//!
//! Upstream: k8s.io/apiserver/pkg/endpoints/handlers/patch.go (applyPatcher),
//! k8s.io/apimachinery/pkg/util/managedfields/internal/structuredmerge.go

use crate::codec::{self, FieldValidation};
use crate::error::ApiError;
use crate::handler::{check_manager, check_uid_unchanged, dry_run, Req};
use crate::objects::{Api, Fields, Write};
use crate::printers::Printable;
use crate::registry::Strategy;
use axum::http::StatusCode;
use axum::response::Response;
use pkg::api::{CauseExt, Status, StatusCause, StatusDetails, StatusExt};
use pkg::managedfields::{self, Conflicts, Manager, Operation};
use serde_json::Value;

/// 409 with one cause per field and manager, as kube-apiserver reports apply conflicts.
fn conflict_error(c: Conflicts) -> ApiError {
    let causes = c.0.iter().map(|(m, p)| StatusCause::cause("FieldManagerConflict", format!("conflict with {m}"), p.clone())).collect();
    let mut s = Status::failure(409, "Conflict", c.message());
    s.details = Some(StatusDetails { causes: Some(causes), ..Default::default() });
    ApiError(Box::new(s))
}

/// The configuration: one YAML (or JSON) object of this kind, named as the URL names it.
fn configuration<T: Strategy>(body: &[u8], name: &str) -> Result<Value, ApiError> {
    let mut docs = codec::parse_yaml(body)?;
    if docs.len() != 1 || !docs[0].is_object() {
        return Err(ApiError::bad_request("an apply patch must be exactly one object"));
    }
    let mut cfg = docs.remove(0);
    let (kind, version) = (cfg["kind"].as_str().unwrap_or(""), cfg["apiVersion"].as_str().unwrap_or(""));
    if kind != T::KIND || version != T::API_VERSION {
        return Err(ApiError::bad_request(format!(
            "Incorrect version specified in apply patch. Specified patch version: {version}, kind {kind}, expected: {} {}",
            T::API_VERSION,
            T::KIND
        )));
    }
    match cfg["metadata"]["name"].as_str() {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({name})")))
        }
        Some(_) => {}
        None => cfg["metadata"]["name"] = Value::String(name.to_string()),
    }
    if cfg["metadata"].get("managedFields").is_some_and(|m| !m.is_null()) {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    Ok(cfg)
}

/// `PATCH …/{name}` (or `…/{name}/status`) with an apply patch.
pub async fn apply<T: Strategy + Printable>(api: &Api, name: &str, status: bool, r: &Req<'_>) -> Result<Response, ApiError> {
    let manager = r.params.get("fieldManager").filter(|m| !m.is_empty());
    let manager = manager.ok_or_else(|| ApiError::invalid_options("PatchOptions", "fieldManager", "is required for apply patch"))?;
    check_manager("PatchOptions", manager)?;
    let force = match r.params.get("force").map(String::as_str) {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(v) => return Err(ApiError::bad_request(format!("force: invalid value {v:?}"))),
    };
    let fv = FieldValidation::from_params(r.params)?;
    let w = Write { dry_run: dry_run(r.params, "PatchOptions")?, fields: Fields::Applied };
    let cfg = configuration::<T>(&r.body, name)?;
    let mgr = Manager::new(manager, Operation::Apply, T::API_VERSION, status.then_some("status"));
    let pinned = cfg["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty());
    // A write that lost a race with another is worked out again from the new live object.
    for _ in 0..5 {
        let live: Option<T> = api.try_get(r.ns, name).await?;
        let live_v = live.as_ref().map(serde_json::to_value).transpose().map_err(|e| ApiError::internal(e.to_string()))?;
        let merged = managedfields::apply(T::KIND, live_v.as_ref(), &cfg, &mgr, force, &pkg::api::now_rfc3339()).map_err(conflict_error)?;
        let d = codec::decode_value::<T>(merged, fv)?;
        let (code, written) = match live {
            None => (StatusCode::CREATED, api.create_opts::<T>(r.ns, d.obj, &w).await),
            Some(l) => {
                check_uid_unchanged(&d.obj, &l)?;
                // A resourceVersion in the configuration is a precondition, as for any
                // other write; without one, apply writes over whatever is live.
                let mut obj = d.obj;
                obj.meta_mut().resource_version = pinned.map(String::from).or_else(|| l.meta().resource_version.clone());
                (StatusCode::OK, api.update_opts::<T>(r.ns, name, obj, status, &w).await)
            }
        };
        match written {
            Err(e) if e.code() == 409 && e.0.reason() != "Invalid" && pinned.is_none() => continue,
            res => return Ok(codec::with_warnings(codec::respond_obj(code, r.out, &res?), &d.warnings)),
        }
    }
    Err(ApiError::conflict(T::KIND, name))
}
