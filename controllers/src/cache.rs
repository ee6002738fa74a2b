//! Informers, as client-go calls them: for one kind, a *reflector* keeps a local store in
//! step with the cluster (list, then watch from the list's resourceVersion, list again
//! after any error), and every change is also handed on as a stream, which is what
//! wakes a controller. A controller reads the store, never the apiserver, to decide; it
//! writes through the API and sees its own writes come back through the watch.
//!
//! Upstream: k8s.io/client-go/tools/cache (reflector.go, shared_informer.go)

use futures::Stream;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use pkg::api::{ObjectMeta, OwnerReference};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A kind's store and the stream of its changed (or deleted) objects. The store fills
/// only while the stream is polled.
pub fn informer<K>(api: Api<K>) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff().touched_objects();
    (store, stream)
}

/// The object's controller (the owner reference with `controller: true`), if it is of `kind`.
pub fn controller_ref<K: Resource<DynamicType = ()>>(meta: &ObjectMeta, kind: &str) -> Option<ObjectRef<K>> {
    let owner = pkg::workloads::replicaset::controller_of(meta)?;
    let ns = meta.namespace.as_deref().unwrap_or_default();
    (owner.kind == kind).then(|| ObjectRef::new(&owner.name).within(ns))
}

/// A stored object's resourceVersion as a number (etcd's revision), for expectations.
pub fn revision(meta: &ObjectMeta) -> i64 {
    meta.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Adopt (`Some(owner)`) or release (`None`) an object: its controller reference
/// rewritten, guarded by its resourceVersion. `None` back: it changed or went meanwhile;
/// the next pass sees it as it is now.
pub async fn set_controller<K>(api: &Api<K>, obj: &K, owner: Option<&OwnerReference>) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + pkg::api::Object,
{
    let meta = pkg::api::Object::meta(obj);
    let mut refs: Vec<OwnerReference> = meta.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.controller != Some(true));
    refs.extend(owner.cloned());
    let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version}});
    match api.patch(pkg::api::Object::name(obj), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if matches!(crate::code(&e), Some(404 | 409)) => Ok(None),
        Err(e) => Err(e),
    }
}
