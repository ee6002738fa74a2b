//! The namespace controller's work, done synchronously when a namespace is deleted: every
//! object inside it is deleted first (services free their ClusterIPs and nodePorts; pods
//! go at once, the kubelets clean up what they ran), then the namespace itself.

use crate::error::ApiError;
use crate::objects::Api;
use pkg::api::*;

pub async fn empty(api: &Api, ns: &str) -> Result<(), ApiError> {
    api.get::<Namespace>(None, ns).await?;
    for svc in api.list::<Service>(Some(ns)).await?.0 {
        ignore_missing(api.delete::<Service>(Some(ns), &svc.metadata.name, None, None).await)?;
    }
    for pod in api.list::<Pod>(Some(ns)).await?.0 {
        ignore_missing(api.delete::<Pod>(Some(ns), &pod.metadata.name, Some(0), None).await)?;
    }
    for ep in api.list::<Endpoints>(Some(ns)).await?.0 {
        ignore_missing(api.delete::<Endpoints>(Some(ns), &ep.metadata.name, None, None).await)?;
    }
    Ok(())
}

fn ignore_missing<T>(r: Result<T, ApiError>) -> Result<(), ApiError> {
    match r {
        Err(e) if e.code() != 404 => Err(e),
        _ => Ok(()),
    }
}
