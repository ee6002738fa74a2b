//! The ReplicaSet controller: keeps `spec.replicas` pods made from each ReplicaSet's
//! template. One pass over a ReplicaSet ([`reconcile`]):
//!
//! 1. **Wait for our own writes**: if the pods the last pass created or deleted are not
//!    in the cache yet, come back shortly (else we would create them twice).
//! 2. **Claim**: the pods that name it their controller and match its selector are its
//!    own; matching pods with no controller are adopted, its pods that stopped matching
//!    are released ([`pkg::workloads::replicaset::claim`]).
//! 3. **Manage**: too few active pods: create the difference, in batches of 1, 2, 4, …
//!    (a template that cannot be created fails once, not a hundred times); too many:
//!    delete the least valuable first ([`pkg::workloads::replicaset::to_delete`]).
//! 4. **Status**: `replicas`, `readyReplicas`, `availableReplicas` (ready for
//!    `minReadySeconds`), `observedGeneration`.
//!
//! Events: `SuccessfulCreate`, `SuccessfulDelete`, `FailedCreate`.
//!
//! Upstream: pkg/controller/replicaset/replica_set.go (syncReplicaSet, manageReplicas)

use crate::cache::{by_controller, caught_up, claimable, revision, settle, written, Index, Shared};
use crate::{on_error, Result, RESYNC};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use pkg::api::*;
use pkg::events::object_ref;
use pkg::selector::LabelSelector as Parsed;
use pkg::workloads::expectations::{Expect, Expectations};
use pkg::workloads::replicaset as rs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most this many pods are created in one pass (kube-controller-manager's `burstReplicas`).
pub const BURST: usize = 500;

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    /// The pods by controller (and the orphans), so a pass reads only its own.
    by_controller: Arc<Index<Pod>>,
    recorder: events::Recorder,
    expectations: Mutex<Expectations>,
}

pub async fn run(client: kube::Client, pods: Shared<Pod>) {
    let controller = Controller::new(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default());
    let sets = controller.store();
    let recorder = events::Recorder::start(client.clone(), "replicaset-controller", "");
    let by_controller = Arc::new(Index::new(by_controller));
    let ctx = Arc::new(Ctx { client, pods: pods.store(), by_controller: by_controller.clone(), recorder, expectations: Mutex::default() });
    pods.ready().await;
    controller
        .watches_shared_stream(pods.objects(Some(by_controller)), move |pod: Arc<Pod>| owners_of(&sets, &pod))
        .run(reconcile, |_, e, _| on_error(e), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The ReplicaSet controlling a pod, or for a pod without a controller every
/// ReplicaSet whose selector matches it (one may adopt it).
fn owners_of(sets: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = rs::controller_of(&pod.metadata) {
        return if owner.kind == "ReplicaSet" { vec![ObjectRef::new(&owner.name).within(ns)] } else { vec![] };
    }
    sets.state()
        .iter()
        .filter(|s| s.namespace() == Some(ns))
        .filter(|s| {
            let sel = s.spec.as_ref().map(|sp| Parsed::from_spec(&sp.selector).unwrap_or_default()).unwrap_or_default();
            !sel.0.is_empty() && sel.matches(pod.labels())
        })
        .map(|s| ObjectRef::new(s.name()).within(ns))
        .collect()
}

async fn reconcile(set: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action> {
    let uid = set.uid().unwrap_or_default().to_string();
    let ns = set.namespace().unwrap_or("default").to_string();
    // Only the pods this set may claim (its own, and orphans it selects), from the index:
    // a namespace of 15,000 pods scanned and copied at every pass kept the controller
    // minutes behind.
    let selector = set.spec.as_ref().map(|sp| sp.selector.clone()).unwrap_or_default();
    let pods: Vec<Pod> = claimable(&ctx.by_controller, &ctx.pods, &ns, &uid, &selector);
    if !caught_up(&ctx.expectations, &uid, pods.iter().map(|p| &p.metadata)) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if set.is_deleting() {
        return Ok(Action::await_change()); // the garbage collector takes its pods
    }
    let spec = set.spec.clone().unwrap_or_default();
    let claims = rs::claim(&uid, &spec.selector, &pods);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = settle(&api, claims, &rs::controller_ref("apps/v1", "ReplicaSet", set.name(), &uid)).await?;
    let active: Vec<Pod> = owned.iter().filter(|p| rs::is_active(p)).cloned().collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let wrote = if active.len() < want {
        create_pods(&ctx, &api, &set, (want - active.len()).min(BURST)).await
    } else {
        delete_pods(&ctx, &api, &set, rs::to_delete(active.clone(), active.len() - want)).await
    };
    ctx.expectations.lock().unwrap().expect(&uid, wrote?, Instant::now());
    let now = jiff::Timestamp::now().as_second();
    let status = rs::status(&set, &active, now);
    if set.status.as_ref() != Some(&status) {
        let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        sets.patch_status(set.name(), &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await?;
    }
    // Pods ready but not yet available for minReadySeconds: look again when they are.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if status.ready_replicas.unwrap_or(0) > status.available_replicas.unwrap_or(0) && min_ready > 0 {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(RESYNC))
}

/// Create `n` pods from the template, in batches of 1, 2, 4, …; stop at the first batch
/// with a failure. What was created is expected in the cache.
async fn create_pods(ctx: &Ctx, api: &Api<Pod>, set: &ReplicaSet, n: usize) -> Result<Vec<Expect>> {
    let mut wrote = vec![];
    let (mut done, mut batch) = (0, 1);
    while done < n {
        let size = batch.min(n - done);
        let template = rs::new_pod(set);
        let pp = PostParams::default();
        let results = futures::future::join_all((0..size).map(|_| api.create(&pp, &template))).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(p) => {
                    ctx.recorder.event(object_ref(set), false, "SuccessfulCreate", &format!("Created pod: {}", p.name()));
                    wrote.push(written(&p.metadata));
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            ctx.recorder.event(object_ref(set), true, "FailedCreate", &format!("Error creating: {e}"));
            ctx.expectations.lock().unwrap().expect(set.uid().unwrap_or_default(), wrote, Instant::now());
            return Err(e.into());
        }
        done += size;
        batch *= 2;
    }
    Ok(wrote)
}

/// Delete these pods (each guarded by its uid); each is expected marked or gone.
async fn delete_pods(ctx: &Ctx, api: &Api<Pod>, set: &ReplicaSet, pods: Vec<Pod>) -> Result<Vec<Expect>> {
    let deletes = pods.iter().map(|p| {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: p.uid().map(String::from), resource_version: None }),
            ..Default::default()
        };
        async move { (p, api.delete(p.name(), &dp).await) }
    });
    let mut wrote = vec![];
    for (p, r) in futures::future::join_all(deletes).await {
        let uid = p.uid().unwrap_or_default().to_string();
        match r {
            Ok(either) => {
                ctx.recorder.event(object_ref(set), false, "SuccessfulDelete", &format!("Deleted pod: {}", p.name()));
                let rv = either.left().map_or(i64::MAX, |marked| revision(&marked.metadata));
                wrote.push(Expect { uid, resource_version: rv, gone_ok: true });
            }
            Err(e) if matches!(crate::code(&e), Some(404 | 409)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(wrote)
}
