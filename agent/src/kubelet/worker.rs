//! Pod workers: one task per pod (by uid), as the kubelet's `pod_workers.go`. The
//! dispatcher hands each worker the latest version of its pod through a `watch` slot, so
//! updates that arrive while the worker is busy collapse into the newest; a worker never
//! waits on another, so one slow image pull or long grace period delays nobody else.
//!
//! A worker's life is one way: it syncs the pod (start, restart, probe, report) until the
//! pod is being deleted, then terminates it (SIGTERM, grace period, SIGKILL), releases
//! everything, deletes the object, and ends. A pod removed from the API without that (its
//! deletion forced) is torn down at once. Each pass returns when to look again ([`Next`]);
//! containerd's exit events, probe results and changed ConfigMaps wake it sooner.
//!
//! Upstream: pkg/kubelet/pod_workers.go

use super::{sync, Ctx};
use pkg::api::{Object, Pod};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What a pass decides about the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Look again after this long (or when woken).
    After(Duration),
    /// The pod is gone: the worker ends.
    Done,
}

/// The dispatcher's side of a worker.
pub struct Handle {
    id: u64,
    tx: watch::Sender<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
    namespace: String,
}

/// A new version of a pod (`Some`), or its removal (`None`, by uid).
pub fn update(ctx: &Arc<Ctx>, pod: Option<Arc<Pod>>, removed_uid: Option<&str>) {
    let uid = match (&pod, removed_uid) {
        (Some(p), _) => p.uid().unwrap_or_default().to_string(),
        (None, Some(u)) => u.to_string(),
        (None, None) => return,
    };
    let mut workers = ctx.workers.lock().unwrap();
    if let Some(h) = workers.get(&uid) {
        if h.tx.send(pod.clone()).is_ok() {
            return;
        }
    }
    let Some(p) = pod else { return }; // removed, and no worker: nothing to do
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = watch::channel(Some(p.clone()));
    let wake = Arc::new(Notify::new());
    workers.insert(uid.clone(), Handle { id, tx, wake: wake.clone(), namespace: p.namespace().unwrap_or_default().to_string() });
    tokio::spawn(run(ctx.clone(), uid, id, rx, wake));
}

/// Wake one pod's worker (a container of it exited, a probe result changed).
pub fn wake(ctx: &Ctx, uid: &str) {
    if let Some(h) = ctx.workers.lock().unwrap().get(uid) {
        h.wake.notify_one();
    }
}

/// Wake every worker (containerd's events came back after a gap: an exit may be missed).
pub fn wake_all(ctx: &Ctx) {
    ctx.workers.lock().unwrap().values().for_each(|h| h.wake.notify_one());
}

/// Wake every worker of a namespace (a ConfigMap or Secret there changed).
pub fn wake_namespace(ctx: &Ctx, ns: &str) {
    for h in ctx.workers.lock().unwrap().values().filter(|h| h.namespace == ns) {
        h.wake.notify_one();
    }
}

/// Returns once the pod is being deleted (or gone).
async fn until_deleted(rx: &mut watch::Receiver<Option<Arc<Pod>>>) {
    loop {
        if rx.changed().await.is_err() || rx.borrow().as_ref().is_none_or(|p| p.is_deleting()) {
            return;
        }
    }
}

async fn run(ctx: Arc<Ctx>, uid: String, id: u64, mut rx: watch::Receiver<Option<Arc<Pod>>>, wake: Arc<Notify>) {
    let mut state = sync::PodState::default();
    loop {
        let pod = rx.borrow_and_update().clone();
        let next = match &pod {
            None => {
                // Deleted without us: stop everything now.
                if let Err(e) = sync::teardown(&ctx, &uid).await {
                    tracing::warn!(%uid, error = %format!("{e:#}"), "teardown failed");
                }
                Next::Done
            }
            Some(p) => {
                let r = if p.is_deleting() {
                    sync::terminate(&ctx, p, &mut state).await
                } else {
                    // A deletion cancels a sync in progress (a hanging image pull, say).
                    tokio::select! {
                        r = sync::sync_pod(&ctx, p, &mut state) => r,
                        _ = until_deleted(&mut rx) => Ok(Next::After(Duration::ZERO)),
                    }
                };
                r.unwrap_or_else(|e| {
                    tracing::warn!(pod = %p.name(), error = %format!("{e:#}"), "pod sync failed");
                    Next::After(Duration::from_secs(2))
                })
            }
        };
        let wait = match next {
            Next::Done => break,
            Next::After(d) => d,
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    state.stop_probes();
    let mut workers = ctx.workers.lock().unwrap();
    // A new worker for the same uid may have taken the slot: remove only our own.
    if workers.get(&uid).is_some_and(|h| h.id == id) {
        workers.remove(&uid);
    }
}
