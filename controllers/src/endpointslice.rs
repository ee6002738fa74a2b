//! The EndpointSlice controller: keeps each selector-bearing service's slices
//! (`discovery.k8s.io/v1`) equal to [`pkg::endpointslice::desired`] — ready, serving and
//! terminating endpoints, at most 100 per slice — reusing slices where it can
//! ([`pkg::endpointslice::plan`]). kube-proxy reads these.
//!
//! Slices are created with `generateName`, so a pass that ran on a stale cache would
//! create a second set: after its writes a pass records what it expects to see
//! ([`pkg::workloads::expectations`]) and the next one waits until the slice cache shows
//! it.
//!
//! Upstream: pkg/controller/endpointslice/endpointslice_controller.go, reconciler.go

use crate::cache::{by_label, caught_up, written, Index, Shared};
use crate::endpoints::{candidates, PodServices};
use crate::{on_error, Result, RESYNC};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use pkg::api::*;
use pkg::endpointslice::{self as es, owned_by, SliceData};
use pkg::workloads::expectations::{Expect, Expectations};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    labelled: Arc<Index<Pod>>,
    slices: Store<EndpointSlice>,
    expectations: Mutex<Expectations>,
}

pub async fn run(client: kube::Client, pods: Shared<Pod>) {
    let slice_informer = Shared::start(Api::<EndpointSlice>::all(client.clone()));
    let slices = slice_informer.store();
    let controller = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let services = controller.store();
    let mapping = PodServices::default();
    let labelled = Arc::new(Index::new(by_label));
    let ctx = Arc::new(Ctx { client, pods: pods.store(), labelled: labelled.clone(), slices, expectations: Mutex::default() });
    // A pass on an empty slice cache would make a second set of slices.
    slice_informer.ready().await;
    pods.ready().await;
    controller
        .watches_shared_stream(pods.objects(Some(labelled)), move |pod: Arc<Pod>| mapping.map(&services, &pod))
        .watches_shared_stream(slice_informer.objects(None), |s: Arc<EndpointSlice>| {
            let ns = s.namespace().unwrap_or_default().to_string();
            s.labels().get(es::SERVICE_NAME_LABEL).map(|svc| ObjectRef::new(svc).within(&ns))
        })
        .run(reconcile, |_, e, _| on_error(e), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The slices this controller manages for `svc`, from the cache.
fn slices_of(ctx: &Ctx, svc: &Service) -> Vec<EndpointSlice> {
    ctx.slices
        .state()
        .iter()
        .filter(|s| s.namespace() == svc.namespace())
        .filter(|s| s.labels().get(es::SERVICE_NAME_LABEL).map(String::as_str) == Some(svc.name()))
        .filter(|s| s.labels().get(es::MANAGED_BY_LABEL).map(String::as_str) == Some(es::MANAGED_BY))
        .map(|s| (**s).clone())
        .collect()
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    if svc.selector().is_none() || svc.is_deleting() {
        return Ok(Action::await_change());
    }
    let uid = svc.uid().unwrap_or_default().to_string();
    let existing = slices_of(&ctx, &svc);
    if !caught_up(&ctx.expectations, &uid, existing.iter().map(|s| &s.metadata)) {
        return Ok(Action::requeue(Duration::from_millis(100))); // our last writes are still on their way
    }
    let ns = svc.namespace().unwrap_or("default");
    let pods = candidates(&ctx.pods, &ctx.labelled, &svc);
    let desired = es::desired(&svc, pods.iter().map(|p| p.as_ref()));
    let plan = es::plan(desired, &existing);
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let mut wrote = vec![];
    for data in plan.create {
        let created = api.create(&PostParams::default(), &es::new_slice(&svc, data)).await?;
        wrote.push(written(&created.metadata));
    }
    for (name, data) in plan.update {
        let Some(mut s) = existing.iter().find(|s| s.name() == name).cloned() else { continue };
        apply(&mut s, &svc, data);
        let updated = api.replace(&name, &PostParams::default(), &s).await?;
        wrote.push(written(&updated.metadata));
    }
    for name in plan.delete {
        let uid = existing.iter().find(|s| s.name() == name).and_then(|s| s.uid()).unwrap_or_default().to_string();
        match api.delete(&name, &DeleteParams::default()).await {
            Err(e) if crate::code(&e) != Some(404) => return Err(e.into()),
            _ => wrote.push(Expect { uid, resource_version: i64::MAX, gone_ok: true }),
        }
    }
    ctx.expectations.lock().unwrap().expect(&uid, wrote, Instant::now());
    Ok(Action::requeue(RESYNC))
}

/// Put new content (and the service's current labels and ownership) into a slice.
fn apply(s: &mut EndpointSlice, svc: &Service, data: SliceData) {
    s.endpoints = data.endpoints;
    s.ports = Some(data.ports);
    let labels = s.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(es::SERVICE_NAME_LABEL.into(), svc.name().into());
    labels.insert(es::MANAGED_BY_LABEL.into(), es::MANAGED_BY.into());
    s.metadata.owner_references = Some(vec![owned_by(svc)]);
}
