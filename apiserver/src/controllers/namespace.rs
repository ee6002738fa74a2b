//! The namespace controller's work, done synchronously when a namespace is deleted: every
//! object inside it is deleted first (services free their ClusterIPs and nodePorts; pods
//! go at once, the kubelets clean up what they ran), then the namespace itself.
//!
//! Upstream: pkg/controller/namespace/deletion/namespaced_resources_deleter.go

use crate::error::ApiError;
use crate::objects::Api;
use crate::registry::Strategy;
use pkg::api::*;

pub async fn empty(api: &Api, ns: &str) -> Result<(), ApiError> {
    api.get::<Namespace>(None, ns).await?;
    delete_all::<Deployment>(api, ns, None).await?;
    delete_all::<ReplicaSet>(api, ns, None).await?;
    delete_all::<Service>(api, ns, None).await?;
    delete_all::<Pod>(api, ns, Some(0)).await?;
    delete_all::<Endpoints>(api, ns, None).await?;
    delete_all::<EndpointSlice>(api, ns, None).await?;
    delete_all::<ConfigMap>(api, ns, None).await?;
    delete_all::<Secret>(api, ns, None).await?;
    delete_all::<ServiceAccount>(api, ns, None).await?;
    delete_all::<Event>(api, ns, None).await?;
    delete_all::<Lease>(api, ns, None).await?;
    Ok(())
}

async fn delete_all<T: Strategy>(api: &Api, ns: &str, grace: Option<i64>) -> Result<(), ApiError> {
    for o in api.list::<T>(Some(ns)).await?.0 {
        match api.delete::<T>(Some(ns), o.name(), grace, None).await {
            Err(e) if e.code() != 404 => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
