//! The endpoints controller (kube-controller-manager's `endpoint` controller): for every
//! service with a selector, keep an Endpoints object of the same name listing the ready
//! pods it selects and the ports they serve on. kube-proxy on every node turns these into
//! KUBE-SEP-* chains.
//!
//! Pod and service changes mark services dirty; changes that arrive together are handled
//! in one pass, and an Endpoints object is written only when its subsets really change.

use super::{apply, ns_name, spawn_informer, Change};
use crate::objects::Api;
use pkg::api::*;
use pkg::endpoints::compute_subsets;
use pkg::selector::LabelSelector;
use std::collections::{HashMap, HashSet};
use tokio::sync::mpsc;

// Each message lives for one hop through a channel; boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Pod(Change<Pod>),
    Svc(Change<Service>),
}

type Key = (String, String);

pub fn spawn(api: Api) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_informer(api.clone(), tx.clone(), Msg::Pod);
    spawn_informer(api.clone(), tx, Msg::Svc);
    tokio::spawn(async move {
        let mut pods: HashMap<Key, Pod> = HashMap::new();
        let mut services: HashMap<Key, Service> = HashMap::new();
        let mut dirty: HashSet<Key> = HashSet::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            // Take everything already queued: one pass for a burst of changes.
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                match msg {
                    Msg::Svc(c) => dirty.extend(apply(&mut services, c).iter().map(ns_name)),
                    Msg::Pod(c) => {
                        for pod in apply(&mut pods, c) {
                            let ns = pod.namespace().unwrap_or_default().to_string();
                            for (key, svc) in services.iter().filter(|(k, _)| k.0 == ns) {
                                if svc.selector().is_some_and(|s| LabelSelector::from_map(s).matches(pod.labels())) {
                                    dirty.insert(key.clone());
                                }
                            }
                        }
                    }
                }
            }
            let mut retry = HashSet::new();
            for key in dirty.drain() {
                if let Err(e) = sync(&api, &key, services.get(&key), &pods).await {
                    tracing::warn!(service = %format!("{}/{}", key.0, key.1), error = %e.message(), "endpoints: sync failed, will retry");
                    retry.insert(key);
                }
            }
            if !retry.is_empty() {
                dirty = retry;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    });
}

/// Make the Endpoints object of one service match its pods.
async fn sync(api: &Api, (ns, name): &Key, svc: Option<&Service>, pods: &HashMap<Key, Pod>) -> Result<(), crate::error::ApiError> {
    let Some(svc) = svc.filter(|s| s.selector().is_some()) else {
        // Service gone (or never had a selector): the Endpoints the controller made go too.
        if svc.is_none() {
            match api.delete::<Endpoints>(Some(ns), name, None, None).await {
                Err(e) if e.code() != 404 => return Err(e),
                _ => {}
            }
        }
        return Ok(());
    };
    let subsets = Some(compute_subsets(svc, pods.values().filter(|p| p.namespace() == Some(ns)))).filter(|s| !s.is_empty());
    let labels = svc.metadata.labels.clone();
    let updated = api
        .modify::<Endpoints>(Some(ns), name, false, |ep| {
            let changed = ep.subsets != subsets || ep.metadata.labels != labels;
            ep.subsets = subsets.clone();
            ep.metadata.labels = labels.clone();
            changed
        })
        .await?;
    if updated.is_none() {
        let ep = Endpoints { metadata: ObjectMeta { labels: labels.clone(), ..meta(None, name) }, subsets: subsets.clone() };
        match api.create(Some(ns), ep).await {
            Err(e) if e.code() == 409 => {} // created meanwhile; the next change syncs it
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Ok(())
}
