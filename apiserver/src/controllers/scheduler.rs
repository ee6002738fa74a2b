//! The scheduler (kube-scheduler, reduced): binds each pod that has no `spec.nodeName` to a
//! node chosen by [`pkg::scheduler::pick_node`], or records on the pod why it cannot be
//! placed (`PodScheduled=False`, reason `Unschedulable`). Pending pods are tried again
//! whenever a node or pod changes, and every few seconds.

use super::{apply, spawn_informer, Change};
use crate::objects::Api;
use pkg::api::*;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

// Each message lives for one hop through a channel; boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Pod(Change<Pod>),
    Node(Change<Node>),
}

pub fn spawn(api: Api) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_informer(api.clone(), tx.clone(), Msg::Pod);
    spawn_informer(api.clone(), tx, Msg::Node);
    tokio::spawn(async move {
        let mut pods = HashMap::new();
        let mut nodes = HashMap::new();
        loop {
            let msg = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => return,
                Err(_) => None, // periodic retry
            };
            let mut next = msg;
            while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
                match m {
                    Msg::Pod(c) => drop(apply(&mut pods, c)),
                    Msg::Node(c) => drop(apply(&mut nodes, c)),
                }
            }
            schedule_pending(&api, &mut pods, &nodes).await;
        }
    });
}

async fn schedule_pending(api: &Api, pods: &mut HashMap<(String, String), Pod>, nodes: &HashMap<(String, String), Node>) {
    let mut node_list: Vec<Node> = nodes.values().cloned().collect();
    node_list.sort_by(|a, b| a.name().cmp(b.name()));
    let mut load: HashMap<String, usize> = HashMap::new();
    for p in pods.values().filter(|p| !p.is_terminal()) {
        if let Some(n) = p.node_name() {
            *load.entry(n.to_string()).or_default() += 1;
        }
    }
    let mut pending: Vec<Pod> = pods.values().filter(|p| p.node_name().is_none() && !p.is_deleting()).cloned().collect();
    pending.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    for pod in pending {
        let ns = pod.namespace().unwrap_or_default().to_string();
        let name = pod.name().to_string();
        let now = pkg::api::now();
        let result = match pkg::scheduler::pick_node(&pod, &node_list, &load) {
            Ok(node) => {
                let node = node.to_string();
                // Binding: spec.nodeName is set only if it is still unset.
                let r = api
                    .modify::<Pod>(Some(&ns), &name, false, |p| {
                        if p.node_name().is_none() {
                            p.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
                            true
                        } else {
                            false
                        }
                    })
                    .await;
                if let Ok(Some(_)) = &r {
                    *load.entry(node.clone()).or_default() += 1;
                    tracing::info!(pod = %format!("{ns}/{name}"), node = %node, "scheduled");
                    let cond = PodCondition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() };
                    let _ = api.modify::<Pod>(Some(&ns), &name, true, |p| set_if_changed(p, cond.clone(), &now)).await;
                }
                r
            }
            Err(why) => {
                let cond = PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(why),
                    ..Default::default()
                };
                // Check the cached copy first: most passes have nothing new to say.
                if !set_if_changed(&mut pod.clone(), cond.clone(), &now) {
                    continue;
                }
                api.modify::<Pod>(Some(&ns), &name, true, |p| set_if_changed(p, cond.clone(), &now)).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e.message(), "scheduler: could not update pod");
        }
    }
}

/// Set a pod condition; report whether anything changed (so an unchanged reason is not rewritten).
fn set_if_changed(p: &mut Pod, cond: PodCondition, now: &Time) -> bool {
    if p.pod_condition(&cond.type_).is_some_and(|c| c.status == cond.status && c.reason == cond.reason && c.message == cond.message) {
        return false;
    }
    let conditions = p.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
    set_condition(conditions, cond, now);
    true
}
