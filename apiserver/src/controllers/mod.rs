//! The control loops that still run inside the apiserver on its own storage (node
//! lifecycle, namespace deletion, default service accounts); the scheduler and the
//! workload controllers moved to the `controllers` crate, which uses the HTTP API only,
//! and these will follow. Each keeps a cache of the objects it cares about, filled by an
//! *informer* (list, then watch from the list's revision, list again after any error) and
//! rebuilt from etcd whenever it starts: nothing they know lives only in memory.

pub mod namespace;
pub mod nodelifecycle;
pub mod serviceaccount;

use crate::objects::Api;
use crate::registry::Strategy;
use crate::storage;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// What an informer reports.
pub enum Change<T> {
    /// A fresh full list (at start and after every reconnect): replace the cache.
    Synced(Vec<T>),
    Upsert(T),
    Deleted(T),
}

/// Run an informer for every `T` in the cluster until the receiver goes away.
pub fn spawn_informer<T: Strategy, M: Send + 'static>(api: Api, tx: UnboundedSender<M>, wrap: fn(Change<T>) -> M) {
    tokio::spawn(async move {
        loop {
            match api.list::<T>(None).await {
                Ok((items, rev)) => {
                    if tx.send(wrap(Change::Synced(items))).is_err() {
                        return;
                    }
                    match api.store.watch(storage::prefix::<T>(), rev + 1).await {
                        Ok(stream) => {
                            let mut stream = std::pin::pin!(stream);
                            while let Some(batch) = stream.next().await {
                                let Ok(events) = batch else { break };
                                for ev in events {
                                    let change = match (&ev.value, &ev.prev) {
                                        (Some((v, r)), _) => storage::decode::<T>(v, *r).ok().map(Change::Upsert),
                                        (None, Some((v, r))) => storage::decode::<T>(v, *r).ok().map(Change::Deleted),
                                        (None, None) => None,
                                    };
                                    if let Some(c) = change {
                                        if tx.send(wrap(c)).is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        }
                        Err(e) => tracing::warn!(kind = T::KIND, error = %e.message(), "informer: watch failed"),
                    }
                }
                Err(e) => tracing::warn!(kind = T::KIND, error = %e.message(), "informer: list failed"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// `namespace/name`, the key caches are indexed by.
pub fn ns_name<T: pkg::api::Object>(o: &T) -> (String, String) {
    (o.namespace().unwrap_or_default().to_string(), o.name().to_string())
}

/// Apply an informer change to a cache keyed by `namespace/name`.
pub fn apply<T: pkg::api::Object>(cache: &mut std::collections::HashMap<(String, String), T>, change: Change<T>) -> Vec<T> {
    match change {
        Change::Synced(items) => {
            let old: Vec<T> = cache.drain().map(|(_, v)| v).collect();
            cache.extend(items.into_iter().map(|o| (ns_name(&o), o)));
            old.into_iter().chain(cache.values().cloned()).collect()
        }
        Change::Upsert(o) => {
            let prev = cache.insert(ns_name(&o), o.clone());
            prev.into_iter().chain([o]).collect()
        }
        Change::Deleted(o) => cache.remove(&ns_name(&o)).into_iter().chain([o]).collect(),
    }
}
