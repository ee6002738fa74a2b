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
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
/// kube's store has no indexers, so this one is fed from a [`Shared`] informer's changes
/// (each passes through [`Index::note`] before the controller sees it). What a lookup
/// returns is a candidate list: the store may already hold a newer version filed under
/// other keys (its change is still on its way), so callers check what they need.
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

    /// Take a change in: file an applied object under its keys now (moving it if they
    /// changed), forget a deleted one.
    pub fn note(&self, change: &Change<K>) {
        match change {
            Change::Applied(obj) => self.file(obj),
            Change::Deleted(obj) => {
                let key = ObjectRef::from_obj(&**obj);
                let mut f = self.inner.lock().unwrap();
                for k in f.keys.remove(&key).unwrap_or_default() {
                    f.unfile(&k, &key);
                }
            }
        }
    }

    fn file(&self, obj: &K) {
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
    let (own, orphans) = (index.lookup(store, owner_uid), index.lookup(store, &orphans_key(ns)));
    own.iter()
        .chain(&orphans)
        .filter(|o| Resource::meta(&***o).namespace.as_deref() == Some(ns) && candidate(o))
        .map(|o| (**o).clone())
        .collect()
}

/// Index function: the uid of the object's controller, or for none [`orphans_key`] of
/// its namespace (the objects an owner there may adopt).
pub fn by_controller<K: Resource<DynamicType = ()>>(obj: &K) -> Vec<String> {
    let ns = obj.meta().namespace.as_deref().unwrap_or_default();
    vec![pkg::workloads::replicaset::controller_of(obj.meta()).map_or_else(|| orphans_key(ns), |o| o.uid.clone())]
}

/// The [`by_controller`] key of a namespace's objects without a controller (a uid never
/// holds a `/`).
pub fn orphans_key(ns: &str) -> String {
    format!("{ns}/")
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

/// A change a [`Shared`] informer hands its subscribers, once its store shows it.
#[derive(Clone, Debug)]
pub enum Change<K> {
    Applied(Arc<K>),
    /// Deleted, or gone from a fresh list (client-go's `DeletedFinalStateUnknown`).
    Deleted(Arc<K>),
}

impl<K> Change<K> {
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }

    pub fn into_object(self) -> Arc<K> {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

/// One informer for a kind, shared by every controller of the process, as client-go's
/// `SharedInformerFactory` gives them: one watch, one decode of each event, one store,
/// and each change handed to every subscriber. Five pod informers (scheduler,
/// ReplicaSets, Deployments, Endpoints, EndpointSlices) meant five watches of every pod,
/// each event decoded and copied five times, and five stores.
///
/// Each subscriber has a channel of its own with no bound: no change is ever dropped, and
/// a slow controller costs memory, never another's progress. A change is sent only once
/// the store shows it: the objects of a (re)list when the list is complete, together with
/// a `Deleted` for each object the new list no longer has — so an index fed from the
/// changes never files what the store does not hold, and no deletion goes unseen.
/// kube's own shared store (`reflector::store_shared`) passes on neither deletions nor
/// what a relist removed, which the ReplicaSet and endpoints controllers need.
///
/// Upstream: k8s.io/client-go/tools/cache/shared_informer.go
pub struct Shared<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared { store: self.store.clone(), subscribers: self.subscribers.clone() }
    }
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Start the watch (it runs as long as the process).
    pub fn start(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        let events = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
        let shared = Shared { store, subscribers: Default::default() };
        let (store, subscribers) = (shared.store.clone(), shared.subscribers.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut listing = None;
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let changes = changes_of(&event, &store, &mut listing);
                        let mut subs = subscribers.lock().unwrap();
                        subs.retain(|tx| changes.iter().all(|c| tx.send(c.clone()).is_ok()));
                    }
                    Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; listing again"),
                }
            }
        });
        shared
    }

    /// The store (ready once the first list is in).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object the store holds now, then each change from here on.
    pub fn subscribe(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        self.subscribe_filing(None)
    }

    /// [`Shared::subscribe`], with the store's objects also filed into `index` at once.
    fn subscribe_filing(&self, index: Option<&Index<K>>) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        // Under the lock, so no change falls between the snapshot and the registration
        // (one may come twice, which a level-triggered controller does not mind).
        let mut subs = self.subscribers.lock().unwrap();
        for obj in self.store.state() {
            let change = Change::Applied(obj);
            if let Some(ix) = index {
                ix.note(&change);
            }
            let _ = tx.send(change);
        }
        subs.push(tx);
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    /// The changed objects, for `Controller::watches_shared_stream`: each change taken
    /// into `index` first, if one is given, so the reconcile it wakes finds it filed.
    /// The store's objects are filed at once, not as the controller pulls them from the
    /// stream: its first passes must not read a half-filled index.
    pub fn objects(&self, index: Option<Arc<Index<K>>>) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let changes = self.subscribe_filing(index.as_deref());
        changes.map(move |c| {
            if let Some(ix) = &index {
                ix.note(&c);
            }
            c.into_object()
        })
    }

    /// Wait for the first list: a controller that decided on an empty cache would create
    /// what exists (client-go's `WaitForCacheSync`).
    ///
    /// Polled again every 100 ms: kube's `wait_until_ready` keeps only the last waiter's
    /// waker (a oneshot receiver shared by all), so of the five controllers waiting on
    /// one store at once, four were never woken.
    pub async fn ready(&self) {
        while tokio::time::timeout(Duration::from_millis(100), self.store.wait_until_ready()).await.is_err() {}
    }
}

/// What one watcher event means to subscribers, once the reflector has applied it to
/// `store`. A list arrives as `Init`, an `InitApply` per object and `InitDone`, and the
/// store swaps in the new list only at `InitDone`: so the objects go out then, and with
/// them a `Deleted` for each object of the old list (kept in `listing` at `Init`) that
/// the new one lacks.
pub fn changes_of<K>(event: &watcher::Event<K>, store: &Store<K>, listing: &mut Option<Vec<Arc<K>>>) -> Vec<Change<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    use watcher::Event;
    match event {
        Event::Apply(obj) => vec![Change::Applied(store.get(&ObjectRef::from_obj(obj)).unwrap_or_else(|| Arc::new(obj.clone())))],
        Event::Delete(obj) => vec![Change::Deleted(Arc::new(obj.clone()))],
        Event::Init => {
            *listing = Some(store.state());
            vec![]
        }
        Event::InitApply(_) => vec![],
        Event::InitDone => {
            let now = store.state();
            let listed: HashSet<ObjectRef<K>> = now.iter().map(|o| ObjectRef::from_obj(&**o)).collect();
            let before = listing.take().unwrap_or_default();
            let gone = before.into_iter().filter(|o| !listed.contains(&ObjectRef::from_obj(&**o))).map(Change::Deleted);
            now.into_iter().map(Change::Applied).chain(gone).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{by_controller, by_label, changes_of, label_key, orphans_key, Change, Index};
    use kube::runtime::{reflector, watcher};
    use pkg::api::Pod;
    use std::sync::Arc;

    fn pod(name: &str, owner: Option<&str>) -> Pod {
        let refs = owner
            .map(|uid| serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]));
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "a", "ownerReferences": refs}})).unwrap()
    }

    fn names(v: Vec<Arc<Pod>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    }

    fn applied(p: &Pod) -> Change<Pod> {
        Change::Applied(Arc::new(p.clone()))
    }

    #[test]
    fn an_owner_finds_its_own_objects_and_orphans_are_filed_by_namespace() {
        let (store, mut writer) = reflector::store::<Pod>();
        let ix = Index::<Pod>::new(by_controller);
        for p in [pod("mine", Some("u1")), pod("theirs", Some("u2")), pod("orphan", None)] {
            writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
            ix.note(&applied(&p));
        }
        assert_eq!(names(ix.lookup(&store, "u1")), ["mine"]);
        assert_eq!(names(ix.lookup(&store, &orphans_key("a"))), ["orphan"]);
        assert!(ix.lookup(&store, &orphans_key("b")).is_empty());
        // Adopted by u1: moves. Deleted: forgotten.
        let adopted = pod("orphan", Some("u1"));
        writer.apply_watcher_event(&watcher::Event::Apply(adopted.clone()));
        ix.note(&applied(&adopted));
        let gone = pod("theirs", Some("u2"));
        writer.apply_watcher_event(&watcher::Event::Delete(gone.clone()));
        ix.note(&Change::Deleted(Arc::new(gone)));
        assert_eq!(names(ix.lookup(&store, "u1")), ["mine", "orphan"]);
        assert!(ix.lookup(&store, &orphans_key("a")).is_empty());
        assert!(ix.lookup(&store, "u2").is_empty());
        assert!(ix.inner.lock().unwrap().keys.len() == 2, "nothing left of the deleted one");
    }

    #[test]
    fn labels_file_an_object_once_per_label_and_a_relabelled_one_moves() {
        let (store, mut writer) = reflector::store::<Pod>();
        let ix = Index::<Pod>::new(by_label);
        let mut p = pod("web-1", None);
        p.metadata.labels = Some([("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())].into());
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        ix.note(&applied(&p));
        assert_eq!(names(ix.lookup(&store, &label_key("a", "app", "web"))), ["web-1"]);
        assert_eq!(names(ix.lookup(&store, &label_key("a", "tier", "front"))), ["web-1"]);
        assert!(ix.lookup(&store, &label_key("b", "app", "web")).is_empty(), "another namespace");
        p.metadata.labels = Some([("app".to_string(), "api".to_string())].into());
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        ix.note(&applied(&p));
        assert!(ix.lookup(&store, &label_key("a", "app", "web")).is_empty());
        assert!(ix.lookup(&store, &label_key("a", "tier", "front")).is_empty());
        assert_eq!(names(ix.lookup(&store, &label_key("a", "app", "api"))), ["web-1"]);
    }

    /// A relist: nothing goes out until the store has the new list; then every object,
    /// and a deletion for the one the new list lacks.
    #[test]
    fn a_relist_is_handed_on_when_complete_with_what_it_removed() {
        use watcher::Event;
        let (store, mut writer) = reflector::store::<Pod>();
        let mut listing = None;
        let mut step = |e: Event<Pod>| {
            writer.apply_watcher_event(&e);
            changes_of(&e, &store, &mut listing)
        };
        let out = |cs: Vec<Change<Pod>>| -> Vec<String> {
            let mut v: Vec<String> = cs
                .iter()
                .map(|c| {
                    format!(
                        "{}:{}",
                        if matches!(c, Change::Applied(_)) { "applied" } else { "deleted" },
                        c.object().metadata.name.as_deref().unwrap()
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert!(step(Event::Init).is_empty());
        assert!(step(Event::InitApply(pod("kept", None))).is_empty());
        assert!(step(Event::InitApply(pod("dropped", None))).is_empty(), "not in the store before InitDone");
        assert_eq!(out(step(Event::InitDone)), ["applied:dropped", "applied:kept"]);
        assert_eq!(out(step(Event::Apply(pod("new", None)))), ["applied:new"]);
        // The watch breaks; meanwhile `dropped` is deleted and `late` created.
        assert!(step(Event::Init).is_empty());
        for name in ["kept", "new", "late"] {
            assert!(step(Event::InitApply(pod(name, None))).is_empty());
        }
        assert_eq!(out(step(Event::InitDone)), ["applied:kept", "applied:late", "applied:new", "deleted:dropped"]);
        assert_eq!(out(step(Event::Delete(pod("late", None)))), ["deleted:late"]);
    }
}
