//! The endpoints controller: for every service with a selector, an Endpoints object of
//! the same name listing the ready pods it selects (and the not-ready ones apart), on
//! the ports each pod serves ([`pkg::endpoints::compute_subsets`]). ownkube's proxy
//! reads Endpoints, as kube-proxy did before 1.19; kube-proxy and most tools now read
//! EndpointSlices ([`crate::endpointslice`], which this file's pod-to-service mapping
//! also feeds).
//!
//! A service is reconciled when it changes and when any pod it selects — or selected
//! before its labels changed — changes. The Endpoints object carries an owner reference
//! to its service, so the garbage collector removes it with the service (upstream's
//! controller deletes it itself on the service's delete event).
//!
//! Upstream: pkg/controller/endpoint/endpoints_controller.go

use crate::cache::{by_label, label_key, Index, Shared};
use crate::{on_error, Result, RESYNC};
use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use pkg::api::*;
use pkg::endpointslice::owned_by;
use pkg::selector::LabelSelector;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which services a pod belongs to, remembered per pod so that a pod that stops
/// matching still wakes the service it left.
#[derive(Default)]
pub struct PodServices {
    last: Mutex<HashMap<String, Vec<ObjectRef<Service>>>>,
}

impl PodServices {
    pub fn map(&self, services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let ns = pod.namespace().unwrap_or_default();
        let now: Vec<ObjectRef<Service>> = services
            .state()
            .iter()
            .filter(|s| s.namespace() == Some(ns) && s.selector().is_some_and(|sel| LabelSelector::from_map(sel).matches(pod.labels())))
            .map(|s| ObjectRef::new(s.name()).within(ns))
            .collect();
        let uid = pod.uid().unwrap_or_default().to_string();
        let mut last = self.last.lock().unwrap();
        let mut all = last.get(&uid).cloned().unwrap_or_default();
        all.extend(now.iter().cloned());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.dedup();
        // A terminating pod is about to go: forget it (its relabelling no longer matters).
        if pod.is_deleting() {
            last.remove(&uid);
        } else {
            last.insert(uid, now);
        }
        all
    }
}

/// The pods that may belong to `svc`: those carrying the first label of its selector,
/// from an index by label ([`by_label`]); every pod of its namespace if the selector is
/// empty. Callers match the whole selector.
pub fn candidates(pods: &Store<Pod>, labelled: &Index<Pod>, svc: &Service) -> Vec<Arc<Pod>> {
    let ns = svc.namespace().unwrap_or("default");
    match svc.selector().and_then(|s| s.iter().next()) {
        Some((k, v)) => labelled.lookup(pods, &label_key(ns, k, v)),
        None => pods.state().into_iter().filter(|p| p.namespace() == Some(ns)).collect(),
    }
}

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    labelled: Arc<Index<Pod>>,
}

pub async fn run(client: kube::Client, pods: Shared<Pod>) {
    let controller = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let services = controller.store();
    let mapping = PodServices::default();
    let labelled = Arc::new(Index::new(by_label));
    let ctx = Arc::new(Ctx { client, pods: pods.store(), labelled: labelled.clone() });
    pods.ready().await;
    controller
        .watches_shared_stream(pods.objects(Some(labelled)), move |pod: Arc<Pod>| mapping.map(&services, &pod))
        .run(reconcile, |_, e, _| on_error(e), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    if svc.selector().is_none() || svc.is_deleting() {
        return Ok(Action::await_change()); // a service without a selector has hand-made Endpoints
    }
    let ns = svc.namespace().unwrap_or("default");
    let pods = candidates(&ctx.pods, &ctx.labelled, &svc);
    let subsets = Some(pkg::endpoints::compute_subsets(&svc, pods.iter().map(|p| p.as_ref()))).filter(|s| !s.is_empty());
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let labels = svc.metadata.labels.clone();
    let owners = Some(vec![owned_by(&svc)]);
    match api.get_opt(svc.name()).await? {
        Some(ep) if ep.subsets == subsets && ep.metadata.labels == labels && ep.metadata.owner_references == owners => {}
        Some(mut ep) => {
            ep.subsets = subsets;
            ep.metadata.labels = labels;
            ep.metadata.owner_references = owners;
            api.replace(svc.name(), &PostParams::default(), &ep).await?;
        }
        None => {
            let ep = Endpoints { metadata: ObjectMeta { labels, owner_references: owners, ..meta(Some(ns), svc.name()) }, subsets };
            match api.create(&PostParams::default(), &ep).await {
                Err(e) if crate::code(&e) == Some(409) => return Ok(Action::requeue(Duration::from_millis(100))),
                r => drop(r?),
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}
