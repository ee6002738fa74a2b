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
use pkg::workloads::expectations::{Expect, Expectations};
use pkg::workloads::replicaset::Claims;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Instant;

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

/// The write that returned this object, as something the cache should come to show.
pub fn written(meta: &ObjectMeta) -> Expect {
    Expect { uid: meta.uid.clone().unwrap_or_default(), resource_version: revision(meta), gone_ok: false }
}

/// Whether the cache (`objects`, what it holds now) shows everything `owner`'s last pass
/// wrote; a pass that finds it has not waits a little and comes back.
pub fn caught_up<'a>(expectations: &Mutex<Expectations>, owner: &str, objects: impl IntoIterator<Item = &'a ObjectMeta>) -> bool {
    let seen: HashMap<&str, i64> = objects.into_iter().map(|m| (m.uid.as_deref().unwrap_or_default(), revision(m))).collect();
    expectations.lock().unwrap().satisfied(owner, &|u| seen.get(u).copied(), Instant::now())
}

/// Carry out a claim ([`pkg::workloads::replicaset::claim`]): adopt the orphans that
/// match for `owner`, release the strays; the owned objects, adopted ones included.
pub async fn settle<K>(api: &Api<K>, claims: Claims<K>, owner: &OwnerReference) -> Result<Vec<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + pkg::api::Object,
{
    let mut owned = claims.owned;
    for obj in &claims.adopt {
        owned.extend(set_controller(api, obj, Some(owner)).await?);
    }
    for obj in &claims.release {
        set_controller(api, obj, None).await?;
    }
    Ok(owned)
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
