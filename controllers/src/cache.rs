//! Informers, as client-go calls them: for one kind, a *reflector* keeps a local store in
//! step with the cluster (list, then watch from the list's resourceVersion, list again
//! after any error), and every change is also handed on as a stream, which is what
//! wakes a controller. A controller reads the store, never the apiserver, to decide; it
//! writes through the API and sees its own writes come back through the watch.
//!
//! Upstream: k8s.io/client-go/tools/cache (reflector.go, shared_informer.go)

use futures::{Stream, StreamExt};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use pkg::api::{LabelSelector, ObjectMeta, OwnerReference};
use pkg::workloads::expectations::{Expect, Expectations};
use pkg::workloads::replicaset::Claims;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::broadcast;

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

/// An index of a store, as client-go's `Indexer` keeps one: every object is filed under
/// the keys an index function gives it (its controller's uid, say, or its labels), so a
/// controller reads the few objects it needs instead of scanning every one of the kind.
/// kube's store has no indexers, so this one is fed from the informer's stream (every
/// changed object passes through [`Index::note`]); a deleted object stays filed until
/// [`Index::lookup`] finds it gone from the store. What a lookup returns is a candidate
/// list: the store may already hold a newer version filed under other keys (its change
/// is still on its way through the stream), so callers check what they need.
///
/// At 15,000 pods, scanning them all for every ReplicaSet pass kept that controller so
/// far behind that it created pods twice; scanning them for every service pass cost the
/// endpoints controllers most of a core.
///
/// Upstream: k8s.io/client-go/tools/cache/index.go, thread_safe_store.go
pub struct Index<K: Resource<DynamicType = ()> + 'static> {
    keys_of: fn(&K) -> Vec<String>,
    inner: Mutex<Filing<K>>,
}

struct Filing<K: Resource<DynamicType = ()>> {
    /// Key → the objects filed under it.
    by_key: HashMap<String, HashSet<ObjectRef<K>>>,
    /// Object → the keys it is filed under.
    keys: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: Resource<DynamicType = ()> + Clone> Index<K> {
    pub fn new(keys_of: fn(&K) -> Vec<String>) -> Self {
        Index { keys_of, inner: Mutex::new(Filing { by_key: HashMap::new(), keys: HashMap::new() }) }
    }

    /// File an object under its keys now (moving it if they changed).
    pub fn note(&self, obj: &K) {
        let key = ObjectRef::from_obj(obj);
        let keys = (self.keys_of)(obj);
        let mut f = self.inner.lock().unwrap();
        if let Some(old) = f.keys.insert(key.clone(), keys.clone()) {
            for k in old.iter().filter(|k| !keys.contains(k)) {
                f.unfile(k, &key);
            }
        }
        for k in keys {
            f.by_key.entry(k).or_default().insert(key.clone());
        }
    }

    /// The objects of `store` filed under `key`; entries whose object has left the store
    /// are dropped.
    pub fn lookup(&self, store: &Store<K>, key: &str) -> Vec<Arc<K>> {
        let mut f = self.inner.lock().unwrap();
        let mut out = vec![];
        let mut gone = vec![];
        for r in f.by_key.get(key).into_iter().flatten() {
            match store.get(r) {
                Some(obj) => out.push(obj),
                None => gone.push(r.clone()),
            }
        }
        for r in gone {
            for k in f.keys.remove(&r).unwrap_or_default() {
                f.unfile(&k, &r);
            }
        }
        out
    }
}

impl<K: Resource<DynamicType = ()>> Filing<K> {
    fn unfile(&mut self, key: &str, obj: &ObjectRef<K>) {
        if let Some(set) = self.by_key.get_mut(key) {
            set.remove(obj);
            if set.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

/// What the owner `owner_uid` may claim in `ns`, copied (a pass edits them): the objects
/// it controls, and those no one controls that its `selector` matches — the two lists
/// client-go's controller-ref manager starts from, read from an index [`by_controller`].
pub fn claimable<K>(index: &Index<K>, store: &Store<K>, ns: &str, owner_uid: &str, selector: &LabelSelector) -> Vec<K>
where
    K: Resource<DynamicType = ()> + pkg::api::Object + Clone,
{
    let sel = pkg::selector::LabelSelector::from_spec(selector).unwrap_or_default();
    let candidate = |o: &K| match pkg::workloads::replicaset::controller_of(Resource::meta(o)) {
        Some(owner) => owner.uid == owner_uid,
        None => !sel.0.is_empty() && sel.matches(pkg::api::Object::labels(o)),
    };
    let (own, orphans) = (index.lookup(store, owner_uid), index.lookup(store, ""));
    own.iter()
        .chain(&orphans)
        .filter(|o| Resource::meta(&***o).namespace.as_deref() == Some(ns) && candidate(o))
        .map(|o| (**o).clone())
        .collect()
}

/// Index function: the uid of the object's controller, `""` for none (the objects an
/// owner may adopt).
pub fn by_controller<K: Resource<DynamicType = ()>>(obj: &K) -> Vec<String> {
    vec![pkg::workloads::replicaset::controller_of(obj.meta()).map(|o| o.uid.clone()).unwrap_or_default()]
}

/// Index function: one key per label, [`label_key`].
pub fn by_label<K: Resource<DynamicType = ()>>(obj: &K) -> Vec<String> {
    let ns = obj.meta().namespace.as_deref().unwrap_or_default();
    obj.meta().labels.iter().flatten().map(|(k, v)| label_key(ns, k, v)).collect()
}

/// `namespace/key=value`: unambiguous, since a namespace holds no `/` and a label key no `=`.
pub fn label_key(ns: &str, key: &str, value: &str) -> String {
    format!("{ns}/{key}={value}")
}

/// How many changes a subscriber of a [`Shared`] informer may fall behind before it
/// misses some (and is then handed the whole store again).
const SHARED_BACKLOG: usize = 16 * 1024;

/// One informer for a kind, shared by every controller of the process, as client-go's
/// `SharedInformerFactory` gives them: one watch, one decode of each event, one store,
/// and a broadcast of each changed (or deleted) object to every subscriber. Five pod
/// informers (scheduler, ReplicaSets, Deployments, Endpoints, EndpointSlices) meant five
/// watches of every pod, each event decoded and copied five times, and five stores.
///
/// kube's own shared store (`reflector::store_shared`) does not pass deletions on, which
/// the ReplicaSet and endpoints controllers need: hence this one.
///
/// Upstream: k8s.io/client-go/tools/cache/shared_informer.go
pub struct Shared<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared { store: self.store.clone(), changes: self.changes.clone() }
    }
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Start the watch (it runs as long as the process).
    pub fn start(api: Api<K>) -> Self {
        let (store, stream) = informer(api);
        let (changes, _) = broadcast::channel(SHARED_BACKLOG);
        let tx = changes.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(change) = stream.next().await {
                match change {
                    Ok(obj) => drop(tx.send(Arc::new(obj))),
                    Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; listing again"),
                }
            }
        });
        Shared { store, changes }
    }

    /// The store (fills once the first list is in).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object the store holds now, then each change from here on. A subscriber
    /// that falls [`SHARED_BACKLOG`] changes behind is handed the whole store again: a
    /// controller is level-triggered, so seeing everything once more repairs what it missed.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let rx = self.changes.subscribe();
        let store = self.store.clone();
        let now = futures::stream::iter(store.state());
        let later = futures::stream::unfold((rx, store), |(mut rx, store)| async move {
            let batch = match rx.recv().await {
                Ok(obj) => vec![obj],
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(kind = %K::kind(&()), missed = n, "a subscriber fell behind; handing it the whole store");
                    store.state()
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((futures::stream::iter(batch), (rx, store)))
        });
        now.chain(later.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::{by_controller, by_label, label_key, Index};
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
    fn an_owner_finds_its_own_objects_and_orphans_are_filed_apart() {
        let (store, mut writer) = reflector::store::<Pod>();
        let ix = Index::<Pod>::new(by_controller);
        for p in [pod("mine", Some("u1")), pod("theirs", Some("u2")), pod("orphan", None)] {
            writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
            ix.note(&p);
        }
        assert_eq!(names(ix.lookup(&store, "u1")), ["mine"]);
        assert_eq!(names(ix.lookup(&store, "")), ["orphan"]);
        // Adopted by u1: moves; deleted: dropped once the store no longer has it.
        let adopted = pod("orphan", Some("u1"));
        writer.apply_watcher_event(&watcher::Event::Apply(adopted.clone()));
        ix.note(&adopted);
        writer.apply_watcher_event(&watcher::Event::Delete(pod("theirs", Some("u2"))));
        assert_eq!(names(ix.lookup(&store, "u1")), ["mine", "orphan"]);
        assert!(ix.lookup(&store, "").is_empty());
        assert!(ix.lookup(&store, "u2").is_empty());
        assert_eq!(names(ix.lookup(&store, "u3")), Vec::<String>::new());
    }

    #[test]
    fn labels_file_an_object_once_per_label_and_a_relabelled_one_moves() {
        let (store, mut writer) = reflector::store::<Pod>();
        let ix = Index::<Pod>::new(by_label);
        let mut p = pod("web-1", None);
        p.metadata.labels = Some([("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())].into());
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        ix.note(&p);
        assert_eq!(names(ix.lookup(&store, &label_key("a", "app", "web"))), ["web-1"]);
        assert_eq!(names(ix.lookup(&store, &label_key("a", "tier", "front"))), ["web-1"]);
        assert!(ix.lookup(&store, &label_key("b", "app", "web")).is_empty(), "another namespace");
        p.metadata.labels = Some([("app".to_string(), "api".to_string())].into());
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        ix.note(&p);
        assert!(ix.lookup(&store, &label_key("a", "app", "web")).is_empty());
        assert!(ix.lookup(&store, &label_key("a", "tier", "front")).is_empty());
        assert_eq!(names(ix.lookup(&store, &label_key("a", "app", "api"))), ["web-1"]);
    }

    #[tokio::test]
    async fn a_subscriber_sees_the_store_then_every_change_and_the_store_again_if_it_lags() {
        use futures::StreamExt;
        let (store, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&watcher::Event::Apply(pod("old", None)));
        let (changes, _) = tokio::sync::broadcast::channel(2);
        let shared = super::Shared { store, changes };
        let mut sub = Box::pin(shared.subscribe());
        let name = |p: std::sync::Arc<Pod>| p.metadata.name.clone().unwrap();
        assert_eq!(name(sub.next().await.unwrap()), "old", "what the store held when it subscribed");
        shared.changes.send(std::sync::Arc::new(pod("new", None))).unwrap();
        assert_eq!(name(sub.next().await.unwrap()), "new");
        // Three changes into a backlog of two: the subscriber lags, and gets the store.
        for n in ["a", "b", "c"] {
            shared.changes.send(std::sync::Arc::new(pod(n, None))).unwrap();
        }
        assert_eq!(name(sub.next().await.unwrap()), "old", "the whole store, after a lag");
        assert_eq!(name(sub.next().await.unwrap()), "b");
        assert_eq!(name(sub.next().await.unwrap()), "c");
    }
}
