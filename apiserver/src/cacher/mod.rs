//! The watch cache: what kube-apiserver's cacher does, so that LISTs and WATCHes are
//! served from memory instead of each going to etcd.
//!
//! ## Layout
//! - [`store`]: one kind's objects, the ring of its recent events and its revision (pure);
//! - this module: [`Caches`], one [`Cache`] per kind, made the first time the kind is
//!   listed or watched, all fed by **one** etcd watch (the dispatcher);
//! - [`crate::list`] and [`crate::watch`] decide when a request may be served from here.
//!
//! ## One watch for everything
//! kube-apiserver runs one etcd watch per resource and, to know that a cache is as new as
//! etcd (a consistent LIST, KEP-2340), asks etcd for a *progress notification*. etcd 3.4
//! before 3.4.31 may send that notification ahead of events still queued (etcd issues
//! 15220 and 17507), and Debian ships 3.4.23, so ownkube does not rely on it. Instead one
//! watch on the whole key space feeds every cache: every write moves etcd's revision *and*
//! produces an event on that watch, so once the dispatcher has applied revision R, every
//! cache is current at R. A consistent read asks etcd for its current revision (a
//! one-key read) and waits until the dispatcher has applied it — usually already so.
//!
//! ## Watchers
//! Each cache fans its events out through a broadcast channel of [`FANOUT`] events: a
//! sender never waits, and a watcher that falls that far behind is told it lagged and its
//! watch ends (it resumes from the last revision it saw), as the cacher closes
//! unresponsive watchers without slowing anyone else. A watch that selects one value of
//! [`INDEXED`] — each kubelet's `fieldSelector=spec.nodeName=<node>` — gets a channel of
//! that value, which only changes to objects with that value (before or after) go on:
//! 500 nodes' watches are not all woken for every pod of the cluster.
//!
//! Upstream: k8s.io/apiserver/pkg/storage/cacher/cacher.go, cache_watcher.go

pub mod store;

use crate::error::ApiError;
use crate::registry::Strategy;
use crate::storage::{self, Store};
use futures::StreamExt;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use store::{Entry, Event, Snapshot};
use tokio::sync::{broadcast, watch};

/// Events each kind keeps for watches that resume from a recent revision.
pub const RING: usize = 10_000;
/// Events a watcher may fall behind before its watch is ended.
pub const FANOUT: usize = 4_096;
/// The field whose values watches are indexed by (kube-apiserver indexes pods by it too).
pub const INDEXED: &str = "spec.nodeName";
/// How long a consistent read waits for the cache to reach etcd's revision before it
/// reads etcd itself.
const FRESH_WAIT: Duration = Duration::from_secs(3);

/// One kind's cache: its snapshot and the channel its events go out on, under one lock
/// so that a new watcher's backlog and its first live event never overlap or leave a gap.
pub struct Cache<T> {
    state: RwLock<Shared<T>>,
}

struct Shared<T> {
    snap: Snapshot<T>,
    tx: broadcast::Sender<Arc<Event<T>>>,
    /// One channel per value of [`INDEXED`] some watch selects.
    by_value: HashMap<String, broadcast::Sender<Arc<Event<T>>>>,
}

impl<T: Strategy> Shared<T> {
    /// A receiver of every event, or of the events of objects whose [`INDEXED`] field
    /// is (or was) `index`.
    fn receiver(&mut self, index: Option<&str>) -> broadcast::Receiver<Arc<Event<T>>> {
        match index {
            None => self.tx.subscribe(),
            Some(v) => {
                self.by_value.retain(|_, tx| tx.receiver_count() > 0);
                self.by_value.entry(v.to_string()).or_insert_with(|| broadcast::channel(FANOUT).0).subscribe()
            }
        }
    }

    fn send(&self, ev: Arc<Event<T>>) {
        if !self.by_value.is_empty() {
            let mut values: Vec<String> = [&ev.new, &ev.prev].into_iter().flatten().map(|e| e.obj.field(INDEXED)).collect();
            values.dedup();
            for v in values {
                if let Some(tx) = self.by_value.get(&v) {
                    let _ = tx.send(ev.clone());
                }
            }
        }
        let _ = self.tx.send(ev); // no watcher: nothing to do
    }
}

/// What a watch served from the cache starts with.
pub struct Subscription<T> {
    /// The objects now (for a watch that starts with them) or the events since the
    /// requested revision.
    pub backlog: Backlog<T>,
    /// The revision the backlog is current at.
    pub revision: i64,
    pub live: broadcast::Receiver<Arc<Event<T>>>,
}

pub enum Backlog<T> {
    Objects(Vec<Arc<Entry<T>>>),
    Events(Vec<Arc<Event<T>>>),
}

impl<T: Strategy> Cache<T> {
    fn new() -> Cache<T> {
        Cache { state: RwLock::new(Shared { snap: Snapshot::new(RING), tx: broadcast::channel(FANOUT).0, by_value: HashMap::new() }) }
    }

    /// The objects under `prefix` and the revision they are current at.
    pub fn list(&self, prefix: &str) -> (Vec<Arc<Entry<T>>>, i64) {
        let s = self.state.read().unwrap();
        (s.snap.list(prefix), s.snap.revision())
    }

    /// A page of a LIST at `revision` ([`Snapshot::page_at`]).
    pub fn page_at(&self, prefix: &str, from: &str, revision: i64, limit: usize, keep: impl Fn(&T) -> bool) -> Option<store::Page<T>> {
        self.state.read().unwrap().snap.page_at(prefix, from, revision, limit, keep)
    }

    /// Subscribe, starting with the objects under `prefix` now; `index`: only changes to
    /// objects whose [`INDEXED`] field is (or was) this value.
    pub fn subscribe_with_objects(&self, prefix: &str, index: Option<&str>) -> Subscription<T> {
        let mut s = self.state.write().unwrap();
        let live = s.receiver(index);
        Subscription { backlog: Backlog::Objects(s.snap.list(prefix)), revision: s.snap.revision(), live }
    }

    /// Subscribe to the events at `from` and after; `None` when they are no longer all
    /// in the ring.
    pub fn subscribe_from(&self, from: i64, index: Option<&str>) -> Option<Subscription<T>> {
        let mut s = self.state.write().unwrap();
        let events = s.snap.since(from)?;
        let live = s.receiver(index);
        Some(Subscription { backlog: Backlog::Events(events), revision: s.snap.revision(), live })
    }

    pub fn revision(&self) -> i64 {
        self.state.read().unwrap().snap.revision()
    }
}

/// What the dispatcher needs of a cache, whatever its kind.
trait Sink: Send + Sync {
    /// Start over from these stored objects (key, value, mod revision) read at `revision`;
    /// every watcher of the old contents is ended.
    fn replace(&self, items: Vec<(String, Vec<u8>, i64)>, revision: i64);
    fn apply(&self, key: &str, value: Option<&[u8]>, revision: i64);
    fn progress(&self, revision: i64);
}

impl<T: Strategy> Sink for Cache<T> {
    fn replace(&self, items: Vec<(String, Vec<u8>, i64)>, revision: i64) {
        let objects = items.into_iter().filter_map(|(k, v, r)| decoded::<T>(&k, &v, r).map(|o| (k, o))).collect();
        let mut s = self.state.write().unwrap();
        s.snap.replace(objects, revision);
        s.tx = broadcast::channel(FANOUT).0; // the old receivers see the channel close
        s.by_value.clear();
    }

    fn apply(&self, key: &str, value: Option<&[u8]>, revision: i64) {
        // An object that does not decode cannot be served: it leaves the cache (as DELETED).
        let new = value.and_then(|v| decoded::<T>(key, v, revision));
        let mut s = self.state.write().unwrap();
        let ev = s.snap.apply(key, new, revision);
        s.send(ev);
    }

    fn progress(&self, revision: i64) {
        self.state.write().unwrap().snap.progress(revision);
    }
}

fn decoded<T: Strategy>(key: &str, value: &[u8], revision: i64) -> Option<T> {
    match storage::decode::<T>(value, revision) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(key, error = %e.message(), "stored object does not decode: left out of the cache");
            None
        }
    }
}

/// Every kind's cache and the one etcd watch that feeds them.
#[derive(Clone)]
pub struct Caches {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// The caches by prefix, for the dispatcher; held while a cache is filled and while
    /// the dispatcher applies a batch.
    kinds: tokio::sync::Mutex<Dispatch>,
    /// The same caches by kind (`T::KIND`), for the lookup every request makes (never held
    /// across an await).
    lookup: RwLock<HashMap<&'static str, Arc<dyn Any + Send + Sync>>>,
    /// The revision the dispatcher has applied (0: not started).
    applied: watch::Sender<i64>,
    /// Asks the dispatcher to drop its etcd watch and start it again (a consistent read
    /// found it behind for too long: its member may be cut off and its stream silent).
    restart: tokio::sync::Notify,
}

#[derive(Default)]
struct Dispatch {
    /// (storage prefix, cache), longest prefixes first; the dispatcher runs once there is one.
    sinks: Vec<(&'static str, Arc<dyn Sink>)>,
}

impl Caches {
    pub fn new(store: Store) -> Caches {
        let inner = Inner {
            store,
            kinds: Default::default(),
            lookup: Default::default(),
            applied: watch::channel(0).0,
            restart: tokio::sync::Notify::new(),
        };
        Caches { inner: Arc::new(inner) }
    }

    /// The cache of `T`, made (and filled at the dispatcher's revision) on first use.
    pub async fn of<T: Strategy>(&self) -> Result<Arc<Cache<T>>, ApiError> {
        let found = || self.inner.lookup.read().unwrap().get(T::KIND).cloned();
        if let Some(c) = found() {
            return Ok(c.downcast::<Cache<T>>().expect("one cache type per kind"));
        }
        let mut d = self.inner.kinds.lock().await;
        if let Some(c) = found() {
            return Ok(c.downcast::<Cache<T>>().expect("one cache type per kind"));
            // filled meanwhile
        }
        let first = d.sinks.is_empty();
        let rev = match first {
            true => self.inner.store.current_revision().await?,
            false => *self.inner.applied.borrow(),
        };
        let cache = Arc::new(Cache::<T>::new());
        let prefix = storage::prefix::<T>();
        fill(&self.inner.store, prefix, cache.as_ref(), rev).await?;
        self.inner.lookup.write().unwrap().insert(T::KIND, cache.clone());
        d.sinks.push((prefix, cache.clone()));
        d.sinks.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        if first {
            self.inner.applied.send_replace(rev);
            tokio::spawn(dispatch(self.inner.clone(), rev));
        }
        tracing::info!(kind = T::KIND, objects = cache.state.read().unwrap().snap.len(), revision = rev, "watch cache filled");
        Ok(cache)
    }

    /// Wait until every cache is current at etcd's revision now; false if that takes
    /// longer than [`FRESH_WAIT`] (the caller reads etcd instead).
    pub async fn wait_fresh(&self) -> Result<bool, ApiError> {
        let want = self.inner.store.current_revision().await?;
        self.wait_for(want).await
    }

    /// Wait until every cache is current at a revision a client named; one the cache does
    /// not reach in time is Kubernetes' 504 "Too large resource version".
    pub async fn reach(&self, revision: i64) -> Result<(), ApiError> {
        match self.wait_for(revision).await? {
            true => Ok(()),
            false => Err(ApiError::too_large_resource_version(revision, *self.inner.applied.borrow())),
        }
    }

    /// Wait until every cache is current at `revision` (bounded by [`FRESH_WAIT`]; past
    /// it, the dispatcher is told to start its etcd watch again).
    pub async fn wait_for(&self, revision: i64) -> Result<bool, ApiError> {
        let mut rx = self.inner.applied.subscribe();
        let reached = tokio::time::timeout(FRESH_WAIT, rx.wait_for(|r| *r >= revision)).await;
        let reached = matches!(reached, Ok(Ok(_)));
        if !reached && *self.inner.applied.borrow() > 0 {
            self.inner.restart.notify_one();
        }
        Ok(reached)
    }
}

/// The dispatcher: one etcd watch on every key after revision `from`, each event applied
/// to the cache of its prefix, the applied revision published after each batch. When the
/// watch ends because etcd went away, it resumes from the last revision applied (clients'
/// watches carry on, as behind kube-apiserver's reflector); when etcd has compacted past
/// that revision, every cache is refilled at etcd's revision then, and every watch served
/// from the old contents ends (its client lists or watches again).
async fn dispatch(inner: Arc<Inner>, mut from: i64) {
    loop {
        let ended = follow(&inner, from).await;
        if ended.code() == 503 {
            tracing::warn!(error = %ended.message(), "watch cache: etcd watch ended; resuming");
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            tracing::warn!(error = %ended.message(), "watch cache: cannot resume the etcd watch; refilling");
            refill_until_done(&inner).await;
        }
        // An etcd restored from a backup (or wiped) has less history than the cache saw:
        // a watch from the cache's revision would wait for the future. Start over then.
        let applied = *inner.applied.borrow();
        if matches!(inner.store.current_revision().await, Ok(now) if now < applied) {
            tracing::warn!(applied, "watch cache: etcd's revision went back; refilling");
            refill_until_done(&inner).await;
        }
        from = *inner.applied.borrow();
    }
}

async fn refill_until_done(inner: &Inner) {
    loop {
        match refill(inner).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e.message(), "watch cache: cannot refill yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Apply the events after revision `from` until the watch ends; returns why it ended.
async fn follow(inner: &Inner, from: i64) -> ApiError {
    let events = match inner.store.watch_all(from + 1).await {
        Ok(events) => events,
        Err(e) => return e,
    };
    tokio::pin!(events);
    loop {
        let batch = tokio::select! {
            b = events.next() => match b {
                Some(Ok(b)) => b,
                Some(Err(e)) => return e,
                None => return ApiError::unavailable("etcd closed the watch"),
            },
            _ = inner.restart.notified() => return ApiError::unavailable("a read found the cache behind etcd: watching again"),
        };
        let Some(last) = batch.last().map(|e| e.revision) else { continue };
        let d = inner.kinds.lock().await;
        for ev in &batch {
            if let Some((_, sink)) = d.sinks.iter().find(|(p, _)| ev.key.starts_with(p)) {
                sink.apply(&ev.key, ev.value.as_ref().map(|(v, _)| &v[..]), ev.revision);
            }
        }
        for (_, sink) in &d.sinks {
            sink.progress(last);
        }
        inner.applied.send_replace(last);
    }
}

/// Read every cached kind again at one revision.
async fn refill(inner: &Inner) -> Result<(), ApiError> {
    let d = inner.kinds.lock().await;
    let rev = inner.store.current_revision().await?;
    for (prefix, sink) in &d.sinks {
        fill(&inner.store, prefix, sink.as_ref(), rev).await?;
    }
    inner.applied.send_replace(rev);
    Ok(())
}

/// Fill one cache with its kind's objects as etcd held them at `revision`.
async fn fill(store: &Store, prefix: &str, sink: &dyn Sink, revision: i64) -> Result<(), ApiError> {
    let page = store.list_page(prefix, prefix, revision, 0).await?;
    sink.replace(page.items, revision);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkg::api::Pod;

    fn pod(name: &str, node: &str) -> Vec<u8> {
        let p = serde_json::json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node, "containers": []}});
        serde_json::to_vec(&p).unwrap()
    }

    fn revisions(rx: &mut broadcast::Receiver<Arc<Event<Pod>>>) -> Vec<i64> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|e| e.revision).collect()
    }

    #[test]
    fn an_indexed_watch_hears_only_its_nodes_pods() {
        let c = Cache::<Pod>::new();
        c.replace(vec![], 1);
        let mut node_a = c.subscribe_from(2, Some("node-a")).unwrap().live;
        let mut unbound = c.subscribe_from(2, Some("")).unwrap().live;
        let mut all = c.subscribe_from(2, None).unwrap().live;
        c.apply("/registry/pods/default/x", Some(&pod("x", "node-b")), 2);
        c.apply("/registry/pods/default/y", Some(&pod("y", "")), 3);
        c.apply("/registry/pods/default/y", Some(&pod("y", "node-a")), 4); // bound: leaves "", reaches node-a
        c.apply("/registry/pods/default/y", None, 5);
        assert_eq!(revisions(&mut node_a), [4, 5]);
        assert_eq!(revisions(&mut unbound), [3, 4]);
        assert_eq!(revisions(&mut all), [2, 3, 4, 5]);
    }

    #[test]
    fn an_object_that_no_longer_decodes_leaves_the_cache() {
        let c = Cache::<Pod>::new();
        c.replace(vec![("/registry/pods/default/x".into(), pod("x", "n"), 1)], 1);
        c.apply("/registry/pods/default/x", Some(b"{not json"), 2);
        assert!(c.list("/registry/pods/").0.is_empty());
    }
}
