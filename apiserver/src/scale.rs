//! The `scale` subresource of Deployments and ReplicaSets: their desired replicas (and
//! the replicas they have, and the selector that finds their pods) as an
//! `autoscaling/v1` `Scale`, the one shape every scalable kind shares. `kubectl scale`
//! and autoscalers write here, never knowing the kind's own schema: a merge patch
//! `{"spec":{"replicas":3}}`, or a PUT guarded by the Scale's `resourceVersion` (the
//! parent's).
//!
//! Upstream: pkg/registry/apps/deployment/storage/storage.go (ScaleREST)

use crate::codec::{self, FieldValidation, Output};
use crate::error::ApiError;
use crate::handler::{apply_patch, writer, Req};
use crate::objects::Api;
use crate::registry::Strategy;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use k8s_openapi::api::autoscaling::v1::Scale;
use pkg::api::{CauseExt, StatusCause};
use serde_json::Value;

fn scale_of<T: Strategy>(o: &T) -> Result<Scale, ApiError> {
    o.scale().ok_or_else(|| ApiError::new(404, "NotFound", format!("{} have no scale subresource", T::RESOURCE)))
}

fn respond(out: Output, s: &Scale) -> Response {
    codec::respond(StatusCode::OK, out, serde_json::to_value(s).unwrap_or(Value::Null))
}

/// GET, PUT or PATCH on `{resource}/{name}/scale`.
pub async fn handle<T: Strategy>(api: &Api, method: &Method, name: &str, r: &Req<'_>) -> Result<Response, ApiError> {
    let current: T = api.get(r.ns, name).await?;
    let scale = scale_of(&current)?;
    let wanted: Scale = match *method {
        Method::GET => return Ok(respond(r.out, &scale)),
        Method::PUT => codec::decode_body::<Scale>(r.headers, &r.body, FieldValidation::from_params(r.params)?)?.obj,
        Method::PATCH => {
            let mut doc = serde_json::to_value(&scale).unwrap_or(Value::Null);
            apply_patch::<Scale>(codec::body_type(r.headers)?, &mut doc, &r.body)?;
            codec::decode_value::<Scale>(doc, FieldValidation::Ignore)?.obj
        }
        ref m => return Err(ApiError::new(405, "MethodNotAllowed", format!("{m} is not supported on {}/scale", T::RESOURCE))),
    };
    let replicas = wanted.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    if replicas < 0 {
        let cause = StatusCause::invalid("spec.replicas", replicas, "must be greater than or equal to 0");
        return Err(ApiError::invalid("Scale", name, vec![cause]));
    }
    // The Scale's resourceVersion is the parent's: a PUT that names one is conditional.
    let mut updated = current.clone();
    updated.meta_mut().resource_version = wanted.metadata.resource_version.clone().filter(|rv| !rv.is_empty() && *method == Method::PUT);
    updated.set_replicas(replicas);
    let options = if *method == Method::PUT { "UpdateOptions" } else { "PatchOptions" };
    let written = api.update_opts::<T>(r.ns, name, updated, false, &writer(r, options)?).await?;
    Ok(respond(r.out, &scale_of(&written)?))
}
