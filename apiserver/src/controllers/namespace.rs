//! Namespace deletion, as Kubernetes does it in two steps:
//!
//! 1. `DELETE /api/v1/namespaces/{ns}` only marks the namespace: `status.phase:
//!    Terminating` and a `deletionTimestamp` (the Namespace strategy's graceful delete, in
//!    `registry.rs`; a client's grace period is ignored). From then on nothing new may
//!    be created in it: [`admit`] refuses with 403, and a create that read the namespace
//!    before it was marked fails its etcd transaction (it names the namespace's revision),
//!    so no object can slip in behind the deletion.
//! 2. The namespace controller ([`finish`]) deletes everything inside (services free their
//!    ClusterIPs and nodePorts; pods go at once, the kubelets clean up what they ran), and
//!    removes the namespace once it is empty. It runs right after the DELETE, and again
//!    every [`RESYNC`] for any namespace still Terminating (after a crash, or a failure).
//!
//! Upstream: pkg/controller/namespace/deletion/namespaced_resources_deleter.go,
//! plugin/pkg/admission/namespace/lifecycle/admission.go

use crate::error::ApiError;
use crate::objects::Api;
use crate::registry::Strategy;
use pkg::api::*;
use std::time::Duration;

/// How often namespaces left Terminating are taken up again.
pub const RESYNC: Duration = Duration::from_secs(5);

pub fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some() || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// May an object be created in namespace `ns`? Its namespace's revision, which the
/// create's transaction must still find, or 404 (no such namespace) / 403 (being deleted).
pub async fn admit(api: &Api, ns: &str) -> Result<i64, ApiError> {
    let Some(n) = api.try_get::<Namespace>(None, ns).await? else { return Err(ApiError::not_found("Namespace", ns)) };
    if terminating(&n) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("unable to create new content in namespace {ns} because it is being terminated"),
        ));
    }
    Ok(n.metadata.resource_version.as_deref().and_then(|rv| rv.parse().ok()).unwrap_or(0))
}

/// Step 2: delete every object in the namespace, then the namespace.
pub async fn finish(api: &Api, ns: &str) -> Result<(), ApiError> {
    let left = empty(api, ns).await?;
    if left > 0 {
        return Err(ApiError::unavailable(format!("namespace {ns}: {left} objects still being deleted")));
    }
    // A grace period of 0 is the controller's "remove it now" (clients' are ignored).
    match api.delete::<Namespace>(None, ns, Some(0), None).await {
        Err(e) if e.code() != 404 => Err(e),
        _ => Ok(()),
    }
}

/// Delete what is in the namespace; how many objects were found.
async fn empty(api: &Api, ns: &str) -> Result<usize, ApiError> {
    Ok(delete_all::<Deployment>(api, ns, None).await?
        + delete_all::<ReplicaSet>(api, ns, None).await?
        + delete_all::<Service>(api, ns, None).await?
        + delete_all::<Pod>(api, ns, Some(0)).await?
        + delete_all::<Endpoints>(api, ns, None).await?
        + delete_all::<EndpointSlice>(api, ns, None).await?
        + delete_all::<ConfigMap>(api, ns, None).await?
        + delete_all::<Secret>(api, ns, None).await?
        + delete_all::<ServiceAccount>(api, ns, None).await?
        + delete_all::<Event>(api, ns, None).await?
        + delete_all::<Lease>(api, ns, None).await?)
}

async fn delete_all<T: Strategy>(api: &Api, ns: &str, grace: Option<i64>) -> Result<usize, ApiError> {
    let items = api.list::<T>(Some(ns)).await?.0;
    for o in &items {
        match api.delete::<T>(Some(ns), o.name(), grace, None).await {
            Err(e) if e.code() != 404 => return Err(e),
            _ => {}
        }
    }
    // Objects held by finalizers are still there: count what is left.
    Ok(api.list::<T>(Some(ns)).await?.0.len())
}

/// Take up every Terminating namespace now and every [`RESYNC`].
pub fn spawn(api: Api) {
    tokio::spawn(async move {
        loop {
            if let Ok((all, _)) = api.list::<Namespace>(None).await {
                for ns in all.iter().filter(|n| terminating(n)) {
                    if let Err(e) = finish(&api, ns.name()).await {
                        tracing::info!(namespace = ns.name(), error = %e.message(), "namespace not gone yet");
                    }
                }
            }
            tokio::time::sleep(RESYNC).await;
        }
    });
}
