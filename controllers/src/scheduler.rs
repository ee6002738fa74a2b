//! The scheduler (kube-scheduler, reduced to its core): every pod without a node is
//! placed on one chosen by [`pkg::scheduler::pick_node`] (ready, schedulable, the
//! fewest pods), through the pod's `binding` subresource — one write that sets
//! `spec.nodeName` and `PodScheduled=True` and fails if another scheduler was first. A
//! pod that fits nowhere gets `PodScheduled=False` (`Unschedulable`, and why) and a
//! `FailedScheduling` event, and is tried again whenever a pod or node changes, and every
//! few seconds.
//!
//! Bindings of one pass are sent together, up to [`PARALLEL_BINDS`] at a time: a burst
//! of 100 pods is placed in a few round trips, not 100. Until the watch shows a bound
//! pod back, the scheduler *assumes* it is where it was sent (and counts it there), as
//! kube-scheduler's cache does.
//!
//! Upstream: pkg/scheduler/schedule_one.go, pkg/scheduler/internal/cache (assume)

use crate::cache::{Change, Shared};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use pkg::api::*;
use pkg::events::object_ref;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub const PARALLEL_BINDS: usize = 16;
/// An assumed binding the watch never confirmed is forgotten after this long.
const ASSUME_TTL: Duration = Duration::from_secs(30);

struct Scheduler {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    recorder: events::Recorder,
    /// Pod uid → the node it was bound to, until the store shows it there.
    assumed: HashMap<String, (String, Instant)>,
}

pub async fn run(client: kube::Client, pods: Shared<Pod>) {
    let recorder = events::Recorder::start(client.clone(), "default-scheduler", "");
    let nodes = Shared::start(Api::<Node>::all(client.clone()));
    let wake = Arc::new(Notify::new());
    // A pass is worth running when a pod waits for a node, or a pod or node change may
    // have made room: not for the status updates of pods already bound, which are most
    // of the traffic (at 15,000 pods, a pass for each kept a core busy).
    let worth_a_pass = |c: &Change<Pod>| match c {
        Change::Deleted(_) => true,
        Change::Applied(p) => p.node_name().is_none() || p.is_terminal() || p.is_deleting(),
    };
    let pod_wakes = pods.subscribe().filter(move |c| futures::future::ready(worth_a_pass(c))).map(|_| ());
    let node_wakes = nodes.subscribe().map(|_| ());
    for changes in [pod_wakes.boxed(), node_wakes.boxed()] {
        let wake = wake.clone();
        tokio::spawn(changes.for_each(move |_| {
            wake.notify_one();
            futures::future::ready(())
        }));
    }
    pods.ready().await;
    nodes.ready().await;
    let (pods, nodes) = (pods.store(), nodes.store());
    let mut s = Scheduler { client, pods, nodes, recorder, assumed: HashMap::new() };
    loop {
        s.pass().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
    }
}

impl Scheduler {
    /// Pods per node, counting assumed bindings the store does not show yet.
    fn load(&mut self) -> HashMap<String, usize> {
        let mut load: HashMap<String, usize> = HashMap::new();
        let pods = self.pods.state();
        let by_uid: HashMap<&str, &Pod> = pods.iter().filter_map(|p| Some((p.uid()?, p.as_ref()))).collect();
        self.assumed
            .retain(|uid, (_, since)| by_uid.get(uid.as_str()).is_some_and(|p| p.node_name().is_none()) && since.elapsed() < ASSUME_TTL);
        for p in pods.iter().filter(|p| !p.is_terminal()) {
            if let Some(n) = p.node_name() {
                *load.entry(n.to_string()).or_default() += 1;
            }
        }
        for (node, _) in self.assumed.values() {
            *load.entry(node.clone()).or_default() += 1;
        }
        load
    }

    /// One pass: choose for every pending pod, then send the bindings together.
    async fn pass(&mut self) {
        let mut load = self.load();
        let mut nodes: Vec<Arc<Node>> = self.nodes.state();
        nodes.sort_by(|a, b| a.name().cmp(b.name()));
        let mut pending: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.node_name().is_none() && !p.is_deleting() && !p.is_terminal())
            .filter(|p| p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n == "default-scheduler"))
            .filter(|p| !self.assumed.contains_key(p.uid().unwrap_or_default()))
            .collect();
        pending.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
        let mut binds = vec![];
        for pod in pending {
            match pkg::scheduler::pick_node(&pod, &nodes, &load) {
                Ok(node) => {
                    *load.entry(node.to_string()).or_default() += 1;
                    self.assumed.insert(pod.uid().unwrap_or_default().to_string(), (node.to_string(), Instant::now()));
                    binds.push((pod, node.to_string()));
                }
                Err(why) => self.unschedulable(&pod, why).await,
            }
        }
        let client = &self.client;
        let results: Vec<(Arc<Pod>, String, Result<(), kube::Error>)> = futures::stream::iter(binds)
            .map(|(pod, node)| async move {
                let r = bind(client, &pod, &node).await;
                (pod, node, r)
            })
            .buffer_unordered(PARALLEL_BINDS)
            .collect()
            .await;
        for (pod, node, r) in results {
            let who = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name());
            match r {
                Ok(()) => {
                    tracing::info!(pod = %who, %node, "scheduled");
                    self.recorder.event(object_ref(&*pod), false, "Scheduled", &format!("Successfully assigned {who} to {node}"));
                }
                Err(e) => {
                    self.assumed.remove(pod.uid().unwrap_or_default());
                    if crate::code(&e) != Some(409) && crate::code(&e) != Some(404) {
                        tracing::warn!(pod = %who, error = %e, "binding failed");
                    }
                }
            }
        }
    }

    /// Say on the pod why it fits nowhere, once per reason (the store's copy tells
    /// whether it already says so).
    async fn unschedulable(&self, pod: &Pod, why: String) {
        let said = pod.pod_condition("PodScheduled").is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(&why));
        if said {
            return;
        }
        let cond = PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(why.clone()),
            last_transition_time: Some(now()),
            ..Default::default()
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.namespace().unwrap_or("default"));
        let patch = Patch::Strategic(serde_json::json!({"status": {"conditions": [cond]}}));
        if let Err(e) = api.patch_status(pod.name(), &PatchParams::default(), &patch).await {
            tracing::warn!(pod = %pod.name(), error = %e, "could not record why the pod is unschedulable");
        }
        self.recorder.event(object_ref(pod), true, "FailedScheduling", &why);
    }
}

/// `POST pods/{name}/binding`.
async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), pod.namespace().unwrap_or("default"));
    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod.name(), "namespace": pod.namespace(), "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>("binding", pod.name(), &PostParams::default(), &binding).await?;
    Ok(())
}
