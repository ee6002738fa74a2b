//! The service-account controller: every namespace has a ServiceAccount named `default`
//! (pods that name none run as it). Created when the namespace appears, and again if
//! someone deletes it.
//!
//! Upstream: pkg/controller/serviceaccount/serviceaccounts_controller.go

use super::{apply, spawn_informer, Change};
use crate::objects::Api;
use pkg::api::*;
use std::collections::HashMap;
use tokio::sync::mpsc;

// Each message lives for one hop through a channel; boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Ns(Change<Namespace>),
    Sa(Change<ServiceAccount>),
}

pub fn spawn(api: Api) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_informer(api.clone(), tx.clone(), Msg::Ns);
    spawn_informer(api.clone(), tx, Msg::Sa);
    tokio::spawn(async move {
        let mut namespaces = HashMap::new();
        let mut accounts = HashMap::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Ns(c) => drop(apply(&mut namespaces, c)),
                Msg::Sa(c) => drop(apply(&mut accounts, c)),
            }
            if !rx.is_empty() {
                continue; // a burst: reconcile once it has been read
            }
            // A Terminating namespace takes no new objects (and is about to lose this one).
            for ((_, ns), _) in namespaces.iter().filter(|(_, n)| !super::namespace::terminating(n)) {
                if !accounts.contains_key(&(ns.clone(), "default".to_string())) {
                    ensure_default(&api, ns).await;
                }
            }
        }
    });
}

async fn ensure_default(api: &Api, ns: &str) {
    let sa = ServiceAccount { metadata: meta(None, "default"), ..Default::default() };
    match api.create(Some(ns), sa).await {
        Ok(_) => tracing::info!(namespace = ns, "serviceaccount: created default"),
        Err(e) if matches!(e.code(), 409 | 404) => {} // exists already, or the namespace is gone
        Err(e) => tracing::warn!(namespace = ns, error = %e.message(), "serviceaccount: create failed"),
    }
}
