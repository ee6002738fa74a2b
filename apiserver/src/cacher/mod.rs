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
//! unresponsive watchers without slowing anyone else.
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
        Cache { state: RwLock::new(Shared { snap: Snapshot::new(RING), tx: broadcast::channel(FANOUT).0 }) }
    }

    /// The objects under `prefix` and the revision they are current at.
    pub fn list(&self, prefix: &str) -> (Vec<Arc<Entry<T>>>, i64) {
        let s = self.state.read().unwrap();
        (s.snap.list(prefix), s.snap.revision())
    }

    /// Subscribe, starting with the objects under `prefix` now.
    pub fn subscribe_with_objects(&self, prefix: &str) -> Subscription<T> {
        let s = self.state.read().unwrap();
        Subscription { backlog: Backlog::Objects(s.snap.list(prefix)), revision: s.snap.revision(), live: s.tx.subscribe() }
    }

    /// Subscribe to the events at `from` and after; `None` when they are no longer all
    /// in the ring.
    pub fn subscribe_from(&self, from: i64) -> Option<Subscription<T>> {
        let s = self.state.read().unwrap();
        let events = s.snap.since(from)?;
        Some(Subscription { backlog: Backlog::Events(events), revision: s.snap.revision(), live: s.tx.subscribe() })
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
    }

    fn apply(&self, key: &str, value: Option<&[u8]>, revision: i64) {
        let new = match value {
            Some(v) => match decoded::<T>(key, v, revision) {
                Some(o) => Some(o),
                None => return,
            },
            None => None,
        };
        let mut s = self.state.write().unwrap();
        let ev = s.snap.apply(key, new, revision);
        let _ = s.tx.send(ev); // no watcher: nothing to do
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
    /// The caches by kind (`T::KIND`), each also in `sinks`.
    kinds: tokio::sync::Mutex<Dispatch>,
    /// The revision the dispatcher has applied (0: not started).
    applied: watch::Sender<i64>,
}

#[derive(Default)]
struct Dispatch {
    by_kind: HashMap<&'static str, Arc<dyn Any + Send + Sync>>,
    /// (storage prefix, cache), longest prefixes first.
    sinks: Vec<(&'static str, Arc<dyn Sink>)>,
    started: bool,
}

impl Caches {
    pub fn new(store: Store) -> Caches {
        Caches { inner: Arc::new(Inner { store, kinds: Default::default(), applied: watch::channel(0).0 }) }
    }

    /// The cache of `T`, made (and filled at the dispatcher's revision) on first use.
    pub async fn of<T: Strategy>(&self) -> Result<Arc<Cache<T>>, ApiError> {
        let mut d = self.inner.kinds.lock().await;
        if let Some(c) = d.by_kind.get(T::KIND) {
            return Ok(c.clone().downcast::<Cache<T>>().expect("one cache type per kind"));
        }
        let applied = *self.inner.applied.borrow();
        let rev = match applied {
            0 => self.inner.store.current_revision().await?,
            r => r,
        };
        let cache = Arc::new(Cache::<T>::new());
        let prefix = storage::prefix::<T>();
        let page = self.inner.store.list_page(prefix, prefix, rev, 0).await?;
        cache.replace(page.items, rev);
        d.by_kind.insert(T::KIND, cache.clone());
        d.sinks.push((prefix, cache.clone()));
        d.sinks.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        if !d.started {
            d.started = true;
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

    /// Wait until every cache is current at `revision` (bounded by [`FRESH_WAIT`]).
    pub async fn wait_for(&self, revision: i64) -> Result<bool, ApiError> {
        let mut rx = self.inner.applied.subscribe();
        let reached = tokio::time::timeout(FRESH_WAIT, rx.wait_for(|r| *r >= revision)).await;
        Ok(matches!(reached, Ok(Ok(_))))
    }
}

/// The dispatcher: one etcd watch on every key after revision `from`, each event applied
/// to the cache of its prefix, the applied revision published after each batch. When the
/// watch ends because etcd went away, it resumes from the last revision applied (clients'
/// watches carry on, as behind kube-apiserver's reflector); when etcd has compacted past
/// that revision, every cache is refilled at etcd's revision then, and every watch served
/// from the old contents ends (its client lists or watches again).
async fn dispatch(inner: Arc<Inner>, from: i64) {
    let mut from = from;
    loop {
        match follow(&inner, from).await {
            Err(e) if e.code() == 503 => {
                tracing::warn!(error = %e.message(), "watch cache: etcd watch ended; resuming");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(()) => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => {
                tracing::warn!(error = %e.message(), "watch cache: cannot resume the etcd watch; refilling");
                refill_until_done(&inner).await;
            }
        }
        from = *inner.applied.borrow();
    }
}

async fn refill_until_done(inner: &Inner) {
    loop {
        match refill(inner).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e.message(), "watch cache: cannot refill yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Apply the events after revision `from` until the watch ends.
async fn follow(inner: &Inner, from: i64) -> Result<(), ApiError> {
    let events = inner.store.watch_all(from + 1).await?;
    tokio::pin!(events);
    while let Some(batch) = events.next().await {
        let batch = batch?;
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
    Ok(())
}

/// Read every cached kind again at one revision; returns it.
async fn refill(inner: &Inner) -> Result<i64, ApiError> {
    let d = inner.kinds.lock().await;
    let rev = inner.store.current_revision().await?;
    for (prefix, sink) in &d.sinks {
        let page = inner.store.list_page(prefix, prefix, rev, 0).await?;
        sink.replace(page.items, rev);
    }
    inner.applied.send_replace(rev);
    Ok(rev)
}
