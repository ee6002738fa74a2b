//! `POST pods/{name}/binding`: how the scheduler places a pod. The `Binding` names the
//! node; the apiserver sets `spec.nodeName` and the pod's `PodScheduled=True` condition
//! in one write, and only if the pod is not placed yet — so two schedulers can never
//! both win, and the kubelet never sees a placed pod without its condition.
//!
//! Upstream: pkg/registry/core/pod/storage/storage.go (BindingREST, assignPod)

use crate::codec::{self, FieldValidation};
use crate::error::ApiError;
use crate::handler::{writer, Req};
use crate::objects::Api;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Binding;
use pkg::api::*;

pub async fn bind(api: &Api, name: &str, r: &Req<'_>) -> Result<Response, ApiError> {
    let b = codec::decode_body::<Binding>(r.headers, &r.body, FieldValidation::from_params(r.params)?)?.obj;
    if b.metadata.name.as_deref().is_some_and(|n| !n.is_empty() && n != name) {
        return Err(ApiError::bad_request(format!("the name of the Binding ({}) does not match the pod's ({name})", b.name())));
    }
    if !matches!(b.target.kind.as_deref(), None | Some("") | Some("Node")) {
        let cause = StatusCause::not_supported("target.kind", b.target.kind.as_deref().unwrap_or(""), &["Node"]);
        return Err(ApiError::invalid("Binding", name, vec![cause]));
    }
    let node = b.target.name.clone().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::invalid("Binding", name, vec![StatusCause::required("target.name")]));
    }
    let now = now();
    api.rewrite::<Pod>(r.ns, name, &writer(r, "CreateOptions")?, "binding", |pod| {
        if pod.is_deleting() {
            return Err(ApiError::new(409, "Conflict", format!("pod {name} is being deleted, cannot be assigned to a host")));
        }
        if let Some(on) = pod.node_name() {
            return Err(ApiError::new(409, "Conflict", format!("pod {name} is already assigned to node \"{on}\"")));
        }
        pod.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
        let cond = PodCondition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() };
        set_condition(pod.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new), cond, &now);
        Ok(())
    })
    .await?;
    let ok = serde_json::to_value(Status::success()).unwrap_or_default();
    Ok((StatusCode::CREATED, axum::Json(ok)).into_response())
}
