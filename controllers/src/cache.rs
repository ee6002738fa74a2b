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

/// An index of a store by controller: which objects each owner (by uid) controls, and
/// which have no controller at all (those an owner may adopt). client-go's informers
/// have indexers for this; kube's store has none. Fed from the informer's stream (every
/// changed object passes through [`ByController::note`]); a deleted object stays in it
/// until [`ByController::lookup`] finds it gone from the store. With it, a ReplicaSet's
/// pass costs its own pods, not every pod of the namespace: at 15,000 pods the scan made
/// the controller fall so far behind that it created pods twice.
///
/// Upstream: k8s.io/client-go/tools/cache/index.go
pub struct ByController<K: Resource<DynamicType = ()>> {
    inner: Mutex<Index<K>>,
}

struct Index<K: Resource<DynamicType = ()>> {
    /// Owner uid (`""`: no controller) → objects.
    by_owner: HashMap<String, std::collections::HashSet<ObjectRef<K>>>,
    /// Object → the owner key it is filed under.
    owner_of: HashMap<ObjectRef<K>, String>,
}

impl<K: Resource<DynamicType = ()> + Clone> Default for ByController<K> {
    fn default() -> Self {
        ByController { inner: Mutex::new(Index { by_owner: HashMap::new(), owner_of: HashMap::new() }) }
    }
}

impl<K: Resource<DynamicType = ()> + Clone> ByController<K> {
    /// File an object under its controller now (moving it if that changed).
    pub fn note(&self, obj: &K) {
        let key = ObjectRef::from_obj(obj);
        let owner = pkg::workloads::replicaset::controller_of(obj.meta()).map(|o| o.uid.clone()).unwrap_or_default();
        let mut ix = self.inner.lock().unwrap();
        if let Some(old) = ix.owner_of.insert(key.clone(), owner.clone()) {
            if old != owner {
                if let Some(set) = ix.by_owner.get_mut(&old) {
                    set.remove(&key);
                }
            }
        }
        ix.by_owner.entry(owner).or_default().insert(key);
    }

    /// The objects in `store` controlled by `owner_uid`, and those with no controller;
    /// entries whose object has left the store are dropped.
    pub fn lookup(&self, store: &Store<K>, owner_uid: &str) -> Vec<std::sync::Arc<K>> {
        let mut ix = self.inner.lock().unwrap();
        let mut out = vec![];
        let mut gone = vec![];
        for owner in [owner_uid, ""] {
            for key in ix.by_owner.get(owner).into_iter().flatten() {
                match store.get(key) {
                    Some(obj) => out.push(obj),
                    None => gone.push((owner.to_string(), key.clone())),
                }
            }
        }
        for (owner, key) in gone {
            if let Some(set) = ix.by_owner.get_mut(&owner) {
                set.remove(&key);
            }
            ix.owner_of.remove(&key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::ByController;
    use kube::runtime::{reflector, watcher};
    use pkg::api::Pod;

    fn pod(name: &str, owner: Option<&str>) -> Pod {
        let refs = owner
            .map(|uid| serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]));
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "a", "ownerReferences": refs}})).unwrap()
    }

    fn names(v: Vec<std::sync::Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    }

    #[test]
    fn an_owner_finds_its_own_objects_and_the_orphans_only() {
        let (store, mut writer) = reflector::store::<Pod>();
        let ix = ByController::<Pod>::default();
        for p in [pod("mine", Some("u1")), pod("theirs", Some("u2")), pod("orphan", None)] {
            writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
            ix.note(&p);
        }
        assert_eq!(names(ix.lookup(&store, "u1")), ["mine", "orphan"]);
        // Adopted by u1: moves; deleted: dropped once the store no longer has it.
        let adopted = pod("orphan", Some("u1"));
        writer.apply_watcher_event(&watcher::Event::Apply(adopted.clone()));
        ix.note(&adopted);
        writer.apply_watcher_event(&watcher::Event::Delete(pod("theirs", Some("u2"))));
        assert_eq!(names(ix.lookup(&store, "u1")), ["mine", "orphan"]);
        assert!(ix.lookup(&store, "u2").is_empty());
        assert_eq!(names(ix.lookup(&store, "u3")), Vec::<String>::new());
    }
}
