//! The Deployment controller: rolls a Deployment out through its ReplicaSets, one per
//! version of the pod template. One pass over a Deployment ([`reconcile`]):
//!
//! 1. **Wait for our own writes** to the ReplicaSets to show in the cache.
//! 2. **Claim** its ReplicaSets (owned and matching; adopt orphans, release strays).
//! 3. **Find or create the new ReplicaSet**: the one whose template is the Deployment's
//!    (`<name>-<pod-template-hash>`, created at 0 replicas with the next revision; an
//!    old one coming back — `rollout undo` — gets the next revision instead).
//! 4. **Roll**: one step of [`pkg::workloads::deployment::rolling_step`] (or
//!    `recreate_step`), each ReplicaSet's new size written and told as a
//!    `ScalingReplicaSet` event. The ReplicaSet controller does the pods; the next pass
//!    runs when their status changes. A paused Deployment does not roll.
//! 5. **Clean up** old, empty ReplicaSets beyond `revisionHistoryLimit` once complete.
//! 6. **Status**: replica counts, `Available` and `Progressing` (with the progress
//!    deadline), `observedGeneration` — what `kubectl rollout status` waits on.
//!
//! Upstream: pkg/controller/deployment (deployment_controller.go, sync.go, rolling.go, recreate.go, progress.go)

use crate::cache::{by_controller, caught_up, claimable, controller_ref, settle, written, Index, Shared};
use crate::{on_error, Error, Result, RESYNC};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use pkg::api::*;
use pkg::events::object_ref;
use pkg::selector::LabelSelector as Parsed;
use pkg::workloads::deployment::{self as dep, Rs};
use pkg::workloads::expectations::{Expect, Expectations};
use pkg::workloads::replicaset as rs;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Ctx {
    client: kube::Client,
    sets: Store<ReplicaSet>,
    /// The ReplicaSets by controller (and the orphans), so a pass copies only its own.
    by_controller: Arc<Index<ReplicaSet>>,
    pods: Store<Pod>,
    recorder: events::Recorder,
    expectations: Mutex<Expectations>,
}

pub async fn run(client: kube::Client, pods: Shared<Pod>) {
    let set_informer = Shared::start(Api::<ReplicaSet>::all(client.clone()));
    let sets = set_informer.store();
    let controller = Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default());
    let deployments = controller.store();
    let recorder = events::Recorder::start(client.clone(), "deployment-controller", "");
    let by_controller = Arc::new(Index::new(by_controller));
    let ctx = Arc::new(Ctx {
        client,
        sets: sets.clone(),
        by_controller: by_controller.clone(),
        pods: pods.store(),
        recorder,
        expectations: Mutex::default(),
    });
    let (of_sets, of_pods) = (deployments.clone(), deployments);
    set_informer.ready().await;
    pods.ready().await;
    controller
        .watches_shared_stream(set_informer.objects(Some(by_controller)), move |s: Arc<ReplicaSet>| owners_of(&of_sets, &s))
        // Pods matter only to a Recreate (it waits for the old ones to be gone); the
        // rolling update follows its ReplicaSets' status.
        .watches_shared_stream(pods.objects(None), move |p: Arc<Pod>| {
            let set = controller_ref::<ReplicaSet>(&p.metadata, "ReplicaSet").and_then(|r| sets.get(&r));
            let owner = set.and_then(|s| controller_ref::<Deployment>(&s.metadata, "Deployment"));
            owner.filter(|d| of_pods.get(d).is_some_and(|d| is_recreate(&d)))
        })
        .run(reconcile, |_, e, _| on_error(e), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The Deployment controlling a ReplicaSet, or for an orphan every one that matches it.
fn owners_of(deployments: &Store<Deployment>, set: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    if let Some(r) = controller_ref::<Deployment>(&set.metadata, "Deployment") {
        return vec![r];
    }
    if rs::controller_of(&set.metadata).is_some() {
        return vec![];
    }
    let ns = set.namespace().unwrap_or_default();
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace() == Some(ns))
        .filter(|d| {
            d.spec.as_ref().is_some_and(|s| Parsed::from_spec(&s.selector).is_ok_and(|p| !p.0.is_empty() && p.matches(set.labels())))
        })
        .map(|d| ObjectRef::new(d.name()).within(ns))
        .collect()
}

fn spec_replicas(s: &ReplicaSet) -> i32 {
    s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(s: &ReplicaSet) -> ReplicaSetStatus {
    s.status.clone().unwrap_or_default()
}

fn as_rs(s: &ReplicaSet) -> Rs {
    Rs {
        name: s.name().to_string(),
        replicas: spec_replicas(s),
        available: status_of(s).available_replicas.unwrap_or(0),
        created: s.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
    }
}

/// Whether old pods must be gone before new ones start (`strategy.type: Recreate`).
fn is_recreate(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// One pass's view of a Deployment: its ReplicaSets, split into new and old.
struct View {
    d: Arc<Deployment>,
    spec: DeploymentSpec,
    ns: String,
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
    /// Expectations for this pass's writes.
    wrote: Vec<Expect>,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action> {
    let uid = d.uid().unwrap_or_default().to_string();
    let ns = d.namespace().unwrap_or("default").to_string();
    let selector = d.spec.as_ref().map(|sp| sp.selector.clone()).unwrap_or_default();
    let sets: Vec<ReplicaSet> = claimable(&ctx.by_controller, &ctx.sets, &ns, &uid, &selector);
    if !caught_up(&ctx.expectations, &uid, sets.iter().map(|s| &s.metadata)) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if d.is_deleting() {
        return Ok(Action::await_change());
    }
    let spec = d.spec.clone().unwrap_or_default();
    let owned = claim_sets(&ctx, &d, &spec, &sets).await?;
    let mut v = View { d: d.clone(), spec, ns, new: None, old: vec![], wrote: vec![] };
    // The new ReplicaSet is the oldest one with the Deployment's template.
    let mut owned = owned;
    owned.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    let template = v.spec.template.clone();
    let (new, old): (Vec<ReplicaSet>, Vec<ReplicaSet>) = owned
        .into_iter()
        .partition(|s| s.spec.as_ref().and_then(|sp| sp.template.as_ref()).is_some_and(|t| dep::same_template(t, &template)));
    let mut new = new.into_iter();
    v.new = new.next();
    v.old = old.into_iter().chain(new).collect();
    let mut created = false;
    if !v.spec.paused.unwrap_or(false) {
        created = ensure_new(&ctx, &mut v).await?;
        roll(&ctx, &mut v).await?;
        if complete(&v) {
            clean_up(&ctx, &v).await?;
        }
    }
    let wrote = std::mem::take(&mut v.wrote);
    ctx.expectations.lock().unwrap().expect(&uid, wrote, Instant::now());
    update_status(&ctx, &v, created).await
}

/// Its ReplicaSets: owned and matching, plus adopted orphans; strays released.
async fn claim_sets(ctx: &Ctx, d: &Deployment, spec: &DeploymentSpec, sets: &[ReplicaSet]) -> Result<Vec<ReplicaSet>> {
    let uid = d.uid().unwrap_or_default();
    let claims = rs::claim(uid, &spec.selector, sets);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), d.namespace().unwrap_or("default"));
    Ok(settle(&api, claims, &rs::controller_ref("apps/v1", "Deployment", d.name(), uid)).await?)
}

/// The annotations the new ReplicaSet carries: the Deployment's own (its change-cause,
/// say) but not kubectl's bookkeeping, plus its revision and sizes.
fn new_annotations(v: &View, revision: i64) -> BTreeMap<String, String> {
    const SKIP: [&str; 2] = ["kubectl.kubernetes.io/last-applied-configuration", dep::REVISION];
    let mut a: BTreeMap<String, String> =
        v.d.metadata.annotations.clone().unwrap_or_default().into_iter().filter(|(k, _)| !SKIP.contains(&k.as_str())).collect();
    let desired = v.spec.replicas.unwrap_or(1);
    let (surge, _) = dep::surge_and_unavailable(&v.spec, desired);
    a.insert(dep::REVISION.into(), revision.to_string());
    a.insert(dep::DESIRED.into(), desired.to_string());
    a.insert(dep::MAX_REPLICAS.into(), (desired + surge).to_string());
    a
}

/// Create the new ReplicaSet if there is none, or give a returning one the next
/// revision; keep its annotations current. `true`: it was created by this pass.
async fn ensure_new(ctx: &Ctx, v: &mut View) -> Result<bool> {
    let next_revision = v.old.iter().map(|s| dep::revision(&s.metadata)).max().unwrap_or(0) + 1;
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &v.ns);
    if let Some(new) = v.new.clone() {
        // Its revision stays the newest: a ReplicaSet that comes back (`rollout undo`) gets the next.
        let rev = dep::revision(&new.metadata);
        let want = new_annotations(v, if rev < next_revision { next_revision } else { rev });
        if new.metadata.annotations.as_ref() != Some(&want) {
            let patch = serde_json::json!({"metadata": {"annotations": want}});
            let updated = api.patch(new.name(), &PatchParams::default(), &Patch::Merge(patch)).await?;
            v.wrote.push(written(&updated.metadata));
            v.new = Some(updated);
        }
        return Ok(false);
    }
    let collisions = v.d.status.as_ref().and_then(|s| s.collision_count);
    let hash = dep::template_hash(&v.spec.template, collisions);
    let set = new_replicaset(v, &hash, next_revision);
    match api.create(&PostParams::default(), &set).await {
        Ok(created) => {
            v.wrote.push(written(&created.metadata));
            v.new = Some(created);
            Ok(true)
        }
        Err(e) if crate::code(&e) == Some(409) => {
            // A ReplicaSet of that name with another template: a hash collision. Count it,
            // and the next pass hashes differently.
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
            let patch = serde_json::json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}});
            deployments.patch_status(v.d.name(), &PatchParams::default(), &Patch::Merge(patch)).await?;
            Err(Error::Other(format!("ReplicaSet {}-{hash} exists with another template", v.d.name())))
        }
        Err(e) => Err(e.into()),
    }
}

/// `<deployment>-<hash>`, at 0 replicas, its template and selector carrying the hash label.
fn new_replicaset(v: &View, hash: &str, revision: i64) -> ReplicaSet {
    let mut template = v.spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels.get_or_insert_with(Default::default).insert(dep::HASH_LABEL.into(), hash.into());
    let mut selector = v.spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(dep::HASH_LABEL.into(), hash.into());
    let d = &v.d;
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name())),
            namespace: d.metadata.namespace.clone(),
            labels: tm.labels.clone(),
            annotations: Some(new_annotations(v, revision)),
            owner_references: Some(vec![rs::controller_ref("apps/v1", "Deployment", d.name(), d.uid().unwrap_or_default())]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec { replicas: Some(0), min_ready_seconds: v.spec.min_ready_seconds, selector, template: Some(template) }),
        status: None,
    }
}

/// One step of the rollout: each ReplicaSet's new size, written and told.
async fn roll(ctx: &Ctx, v: &mut View) -> Result<()> {
    let Some(new) = v.new.clone() else { return Ok(()) };
    let desired = v.spec.replicas.unwrap_or(1);
    let old: Vec<Rs> = v.old.iter().map(as_rs).collect();
    let recreate = is_recreate(&v.d);
    let scales = if recreate {
        let old_uids: Vec<&str> = v.old.iter().filter_map(|s| s.uid()).collect();
        let left = ctx
            .pods
            .state()
            .iter()
            .filter(|p| !p.is_terminal() && rs::controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid.as_str())))
            .count();
        dep::recreate_step(desired, &as_rs(&new), &old, left)
    } else {
        let (surge, unavailable) = dep::surge_and_unavailable(&v.spec, desired);
        dep::rolling_step(desired, surge, unavailable, &as_rs(&new), &old)
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &v.ns);
    for (name, to) in scales {
        let Some(set) = v.old.iter_mut().chain(v.new.iter_mut()).find(|s| s.name() == name) else { continue };
        let from = spec_replicas(set);
        let patch = serde_json::json!({"spec": {"replicas": to}});
        let updated = api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        v.wrote.push(written(&updated.metadata));
        ctx.recorder.event(object_ref(&*v.d), false, "ScalingReplicaSet", &dep::scaling_message(&name, from, to));
        *set = updated;
    }
    Ok(())
}

/// Every replica new and available, none old.
fn complete(v: &View) -> bool {
    let desired = v.spec.replicas.unwrap_or(1);
    let Some(new) = &v.new else { return false };
    let st = status_of(new);
    spec_replicas(new) == desired
        && st.replicas == desired
        && st.available_replicas.unwrap_or(0) >= desired
        && v.old.iter().all(|s| spec_replicas(s) == 0 && status_of(s).replicas == 0)
}

/// Delete old, empty ReplicaSets beyond `revisionHistoryLimit`.
async fn clean_up(ctx: &Ctx, v: &View) -> Result<()> {
    let history: Vec<(String, i64, i32)> =
        v.old.iter().map(|s| (s.name().to_string(), dep::revision(&s.metadata), spec_replicas(s))).collect();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &v.ns);
    for name in dep::history_to_delete(&history, v.spec.revision_history_limit.unwrap_or(10)) {
        match api.delete(&name, &DeleteParams::background()).await {
            Err(e) if crate::code(&e) != Some(404) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// The status from the ReplicaSets, written if it changed; when to look again.
async fn update_status(ctx: &Ctx, v: &View, created: bool) -> Result<Action> {
    let all: Vec<&ReplicaSet> = v.new.iter().chain(v.old.iter()).collect();
    let sum = |f: &dyn Fn(&ReplicaSetStatus) -> i32| all.iter().map(|s| f(&status_of(s))).sum::<i32>();
    let available = sum(&|s| s.available_replicas.unwrap_or(0));
    let total_spec: i32 = all.iter().map(|s| spec_replicas(s)).sum();
    let old = v.d.status.clone().unwrap_or_default();
    let mut st = DeploymentStatus {
        observed_generation: v.d.metadata.generation,
        replicas: Some(sum(&|s| s.replicas)),
        updated_replicas: Some(v.new.as_ref().map_or(0, |n| status_of(n).replicas)),
        ready_replicas: Some(sum(&|s| s.ready_replicas.unwrap_or(0))),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        collision_count: old.collision_count,
        ..Default::default()
    };
    let (conditions, complete) = conditions(v, &st, &old, created);
    st.conditions = Some(conditions);
    if v.d.status.as_ref() != Some(&st) {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
        api.patch_status(v.d.name(), &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": st}))).await?;
    }
    sync_revision(ctx, v).await?;
    let deadline = v.spec.progress_deadline_seconds.unwrap_or(600);
    Ok(match () {
        _ if complete || v.spec.paused.unwrap_or(false) => Action::requeue(RESYNC),
        _ if v.spec.min_ready_seconds.unwrap_or(0) > 0 => Action::requeue(Duration::from_secs(1)),
        // Look again before the progress deadline could pass unnoticed.
        _ => Action::requeue(Duration::from_secs(u64::try_from(deadline).unwrap_or(600).clamp(1, 10))),
    })
}

/// `Available` (at least `replicas - maxUnavailable` available) and `Progressing`
/// (created, progressing, complete, paused, or past `progressDeadlineSeconds` without
/// progress); and whether the rollout is complete.
fn conditions(v: &View, st: &DeploymentStatus, old: &DeploymentStatus, created: bool) -> (Vec<DeploymentCondition>, bool) {
    let desired = v.spec.replicas.unwrap_or(1);
    let available = st.available_replicas.unwrap_or(0);
    let recreate = is_recreate(&v.d);
    let max_unavailable = if recreate { 0 } else { dep::surge_and_unavailable(&v.spec, desired).1 };
    let complete = st.updated_replicas == Some(desired) && st.replicas == Some(desired) && available >= desired;
    let progressed = st.updated_replicas > old.updated_replicas
        || st.ready_replicas > old.ready_replicas
        || st.available_replicas > old.available_replicas;
    let now = now();
    let deadline = i64::from(v.spec.progress_deadline_seconds.unwrap_or(600));
    let old_conds = old.conditions.clone().unwrap_or_default();
    let progressing = old_conds.iter().find(|c| c.type_ == "Progressing");
    let last_progress = progressing.and_then(|c| c.last_update_time.as_ref()).map(|t| t.0.as_second());
    // Once timed out, it stays so until the rollout moves again.
    let timed_out = progressing.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let exceeded = !complete && !progressed && !created && (timed_out || last_progress.is_some_and(|t| now.0.as_second() - t > deadline));
    let new_name = v.new.as_ref().map(|n| n.name().to_string()).unwrap_or_default();
    let p = dep::Progress {
        new_rs: &new_name,
        new_rs_created: created,
        complete,
        progressed,
        paused: v.spec.paused.unwrap_or(false),
        deadline_exceeded: exceeded,
    };
    (dep::conditions(available >= desired - max_unavailable, &p, &old_conds, &now), complete)
}

/// The Deployment's own `deployment.kubernetes.io/revision`: its new ReplicaSet's.
async fn sync_revision(ctx: &Ctx, v: &View) -> Result<()> {
    let Some(new) = &v.new else { return Ok(()) };
    let rev = dep::revision(&new.metadata).to_string();
    if v.d.metadata.annotations.as_ref().and_then(|a| a.get(dep::REVISION)) == Some(&rev) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &v.ns);
    let patch = serde_json::json!({"metadata": {"annotations": {dep::REVISION: rev}}});
    api.patch(v.d.name(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}
