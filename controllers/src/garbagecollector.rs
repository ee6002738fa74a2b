//! The garbage collector: deleting a Deployment takes its ReplicaSets and their pods with
//! it, because each of them names its owner in `metadata.ownerReferences`, and this loop
//! deletes whatever has no owner left. It also carries out the two kinds of cascading
//! deletion a client can ask for with `propagationPolicy`:
//!
//! - `Foreground`: the apiserver marks the owner (`deletionTimestamp` and the
//!   `foregroundDeletion` finalizer); the collector deletes its dependents, and removes the
//!   finalizer — which lets the apiserver delete the owner — once no dependent with
//!   `blockOwnerDeletion` is left;
//! - `Orphan`: the owner carries the `orphan` finalizer; the collector takes it out of
//!   every dependent's owner references, then removes the finalizer.
//!
//! `Background` (the default) needs nothing special: the owner goes at once and its
//! dependents are collected afterwards.
//!
//! How it works:
//! 1. **Discover** every resource the apiserver serves that can be listed, watched and
//!    deleted (resources added later are not seen until a restart; ownkube has no CRDs).
//! 2. **Watch** each of them and keep one [`Graph`] of owners and dependents, by uid.
//!    Each change marks the objects it may concern ("dirty").
//! 3. **Once every watch has listed**, look at each dirty object: its finalizer work if it
//!    is being deleted with one of ours, then [`decide`] over its owners. An owner missing
//!    from the graph is looked up live before it is believed gone (the watch may lag); an
//!    owner of a kind nobody serves is taken as present: nothing is deleted on a guess.
//!
//! Every write is guarded (a uid precondition on delete, the resourceVersion on patches),
//! and a failed one is retried a second later against what the watch shows by then.
//!
//! Upstream: pkg/controller/garbagecollector/garbagecollector.go, graph_builder.go

use futures::{Stream, StreamExt};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::discovery::{verbs, ApiResource, Discovery, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use pkg::api::OwnerReference;
use pkg::workloads::gc::{decide, FinalizerWork, Graph, Item, Owner, Verdict, FOREGROUND, ORPHAN};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Resources not watched: events are many, change all the time and own nothing.
const SKIP: &[&str] = &["events"];

/// A failed write is tried again after this long.
const RETRY: Duration = Duration::from_secs(1);

/// One watched resource.
struct Resource {
    ar: ApiResource,
    namespaced: bool,
    synced: bool,
    /// The uids listed since the watch last (re)started its list.
    listing: HashSet<String>,
}

/// Where an object of the graph lives, to act on it.
struct Loc {
    resource: usize,
    ns: Option<String>,
    name: String,
    resource_version: Option<String>,
}

struct Collector {
    client: kube::Client,
    resources: Vec<Resource>,
    graph: Graph,
    locs: HashMap<String, Loc>,
    dirty: BTreeSet<String>,
    retry: Vec<(Instant, String)>,
}

type Changes = Pin<Box<dyn Stream<Item = (usize, Result<watcher::Event<DynamicObject>, watcher::Error>)> + Send>>;

pub async fn run(client: kube::Client) {
    let resources = loop {
        match discover(&client).await {
            Ok(r) => break r,
            Err(e) => tracing::warn!(error = %e, "garbage collector: discovery failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let streams = resources.iter().enumerate().map(|(i, r)| {
        let api = Api::<DynamicObject>::all_with(client.clone(), &r.ar);
        watcher(api, watcher::Config::default()).default_backoff().map(move |e| (i, e)).boxed()
    });
    let changes: Changes = Box::pin(futures::stream::select_all(streams));
    let mut gc = Collector { client, resources, graph: Graph::default(), locs: HashMap::new(), dirty: BTreeSet::new(), retry: vec![] };
    gc.run(changes).await;
}

/// Every resource that can be listed, watched and deleted.
async fn discover(client: &kube::Client) -> Result<Vec<Resource>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = vec![];
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let verbs_ok = [verbs::LIST, verbs::WATCH, verbs::DELETE].iter().all(|v| caps.supports_operation(v));
            if verbs_ok && !SKIP.contains(&ar.plural.as_str()) {
                out.push(Resource { ar, namespaced: caps.scope == Scope::Namespaced, synced: false, listing: HashSet::new() });
            }
        }
    }
    tracing::info!(resources = out.len(), "garbage collector: watching");
    Ok(out)
}

impl Collector {
    /// Take in changes as they come; between them, work through the dirty objects.
    async fn run(&mut self, mut changes: Changes) {
        loop {
            let synced = self.resources.iter().all(|r| r.synced);
            let wait = if synced && !self.dirty.is_empty() { Duration::ZERO } else { self.until_retry() };
            match tokio::time::timeout(wait, changes.next()).await {
                Ok(Some((i, Ok(event)))) => {
                    self.observe(i, event);
                    continue;
                }
                Ok(Some((i, Err(e)))) => tracing::debug!(resource = %self.resources[i].ar.plural, error = %e, "watch failed; it restarts"),
                Ok(None) => return,
                Err(_) => {}
            }
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = self.retry.drain(..).partition(|(at, _)| *at <= now);
            self.retry = later;
            self.dirty.extend(due.into_iter().map(|(_, uid)| uid));
            if synced {
                if let Some(uid) = self.dirty.pop_first() {
                    self.process(&uid).await;
                }
            }
        }
    }

    fn until_retry(&self) -> Duration {
        let next = self.retry.iter().map(|(at, _)| *at).min();
        next.map(|at| at.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(3600))
    }

    /// One watch event into the graph.
    fn observe(&mut self, i: usize, event: watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => self.resources[i].listing.clear(),
            watcher::Event::InitApply(obj) => {
                self.resources[i].listing.insert(obj.metadata.uid.clone().unwrap_or_default());
                self.upsert(i, obj);
            }
            watcher::Event::InitDone => {
                // A relist: what was not listed again is gone.
                let listed = std::mem::take(&mut self.resources[i].listing);
                let gone: Vec<String> =
                    self.locs.iter().filter(|(u, l)| l.resource == i && !listed.contains(*u)).map(|(u, _)| u.clone()).collect();
                gone.iter().for_each(|u| self.remove(u));
                self.resources[i].synced = true;
            }
            watcher::Event::Apply(obj) => self.upsert(i, obj),
            watcher::Event::Delete(obj) => self.remove(obj.metadata.uid.as_deref().unwrap_or_default()),
        }
    }

    fn upsert(&mut self, i: usize, obj: DynamicObject) {
        let m = obj.metadata;
        let Some(uid) = m.uid.clone() else { return };
        let item = Item {
            uid: uid.clone(),
            owners: m.owner_references.unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.unwrap_or_default(),
        };
        self.dirty.extend(self.graph.upsert(item));
        let loc = Loc { resource: i, ns: m.namespace, name: m.name.unwrap_or_default(), resource_version: m.resource_version };
        self.locs.insert(uid, loc);
    }

    fn remove(&mut self, uid: &str) {
        self.dirty.extend(self.graph.remove(uid));
        self.locs.remove(uid);
    }

    /// Look at one object; a failed write brings it back a second later.
    async fn process(&mut self, uid: &str) {
        let Some(item) = self.graph.get(uid).cloned() else { return };
        let mut result = Ok(());
        if let Some(work) = self.graph.finalizer_work(uid) {
            result = self.finalize(uid, work).await;
        }
        if result.is_ok() && !item.owners.is_empty() {
            result = self.attempt_to_delete(&item).await;
        }
        if let Err(e) = result {
            tracing::info!(uid, error = %e, "garbage collector: retrying");
            self.retry.push((Instant::now() + RETRY, uid.to_string()));
        }
    }

    /// Foreground: delete the dependents, then let the owner go; orphan: release them first.
    async fn finalize(&mut self, uid: &str, work: FinalizerWork) -> Result<(), kube::Error> {
        match work {
            FinalizerWork::Orphan { release } => {
                for dependent in &release {
                    self.release(dependent, &[uid.to_string()]).await?;
                }
                self.remove_finalizer(uid, ORPHAN).await
            }
            FinalizerWork::Foreground { delete, blocking } => {
                for dependent in &delete {
                    let policy = self.cascade(dependent, true);
                    self.delete(dependent, policy).await?;
                }
                if blocking == 0 {
                    self.remove_finalizer(uid, FOREGROUND).await?;
                }
                Ok(())
            }
        }
    }

    /// An object with owners: delete it if they are all gone (or one is deleting in the
    /// foreground), release it from owners that orphan their dependents.
    async fn attempt_to_delete(&mut self, item: &Item) -> Result<(), kube::Error> {
        let mut states = HashMap::new();
        for owner in &item.owners {
            states.insert(owner.uid.clone(), self.owner_state(&item.uid, owner).await?);
        }
        match decide(&item.owners, &|o| states[&o.uid]) {
            Verdict::Keep => Ok(()),
            Verdict::Release(owners) => self.release(&item.uid, &owners).await,
            Verdict::Delete if item.deleting => Ok(()),
            Verdict::Delete => {
                let foreground = states.values().any(|s| *s == Owner::DeletingForeground);
                tracing::info!(uid = %item.uid, name = ?self.locs.get(&item.uid).map(|l| &l.name), "garbage collector: deleting a dependent");
                let policy = self.cascade(&item.uid, foreground);
                self.delete(&item.uid, policy).await
            }
        }
    }

    /// A dependent deleted for an owner deleting in the foreground is itself deleted in
    /// the foreground if it has dependents of its own (so the wait goes all the way down).
    fn cascade(&self, uid: &str, foreground: bool) -> PropagationPolicy {
        if foreground && !self.graph.dependents(uid).is_empty() {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        }
    }

    /// What the graph knows of an owner; an owner it does not know is asked for.
    async fn owner_state(&self, dependent: &str, owner: &OwnerReference) -> Result<Owner, kube::Error> {
        if let Some(state) = self.graph.owner_state(owner) {
            return Ok(state);
        }
        let found = self.resources.iter().position(|r| r.ar.api_version == owner.api_version && r.ar.kind == owner.kind);
        let (Some(r), Some(loc)) = (found, self.locs.get(dependent)) else {
            return Ok(Owner::Present); // a kind nobody serves: never collect on a guess
        };
        Ok(match self.api(r, loc.ns.as_deref()).get_opt(&owner.name).await? {
            Some(o) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => Owner::Present,
            _ => Owner::Absent, // gone, or a new object under the same name
        })
    }

    /// The API of resource `r`, in namespace `ns` if it is namespaced.
    fn api(&self, r: usize, ns: Option<&str>) -> Api<DynamicObject> {
        let r = &self.resources[r];
        match (ns, r.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &r.ar),
            _ => Api::all_with(self.client.clone(), &r.ar),
        }
    }

    /// The API an object of the graph is reached through, and where it is.
    fn api_of(&self, uid: &str) -> Option<(Api<DynamicObject>, &Loc)> {
        let loc = self.locs.get(uid)?;
        Some((self.api(loc.resource, loc.ns.as_deref()), loc))
    }

    async fn delete(&self, uid: &str, policy: PropagationPolicy) -> Result<(), kube::Error> {
        let Some((api, loc)) = self.api_of(uid) else { return Ok(()) };
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&loc.name, &dp).await {
            Err(e) if crate::code(&e) == Some(409) => Ok(()), // the uid differs: ours is gone
            r => ignore_gone(r.map(|_| ())),
        }
    }

    /// Take these owners out of an object's owner references.
    async fn release(&self, uid: &str, owners: &[String]) -> Result<(), kube::Error> {
        let Some(item) = self.graph.get(uid) else { return Ok(()) };
        let refs: Vec<&OwnerReference> = item.owners.iter().filter(|o| !owners.contains(&o.uid)).collect();
        self.patch_metadata(uid, "ownerReferences", serde_json::json!(refs)).await
    }

    async fn remove_finalizer(&self, uid: &str, finalizer: &str) -> Result<(), kube::Error> {
        let Some(item) = self.graph.get(uid) else { return Ok(()) };
        let left: Vec<&String> = item.finalizers.iter().filter(|f| *f != finalizer).collect();
        self.patch_metadata(uid, "finalizers", serde_json::json!(left)).await
    }

    /// Set one metadata field, guarded by the resourceVersion the graph last saw.
    async fn patch_metadata(&self, uid: &str, field: &str, value: serde_json::Value) -> Result<(), kube::Error> {
        let Some((api, loc)) = self.api_of(uid) else { return Ok(()) };
        let patch = serde_json::json!({"metadata": {field: value, "resourceVersion": loc.resource_version}});
        ignore_gone(api.patch(&loc.name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ()))
    }
}

/// A 404 means the work is done already; a 409 on a delete means the uid differs (a new
/// object under the name): nothing to do either. A 409 on a patch is a stale
/// resourceVersion: tried again.
fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(e) if crate::code(&e) == Some(404) => Ok(()),
        other => other,
    }
}
