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
    node_list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut load: HashMap<String, usize> = HashMap::new();
    for p in pods.values().filter(|p| !p.is_terminal()) {
        if let Some(n) = p.spec.node_name.as_ref().filter(|n| !n.is_empty()) {
            *load.entry(n.clone()).or_default() += 1;
        }
    }
    let mut pending: Vec<Pod> = pods
        .values()
        .filter(|p| p.spec.node_name.as_deref().unwrap_or("").is_empty() && p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    pending.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    for pod in pending {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone();
        let now = now_rfc3339();
        let result = match pkg::scheduler::pick_node(&pod, &node_list, &load) {
            Ok(node) => {
                let node = node.to_string();
                // Binding: spec.nodeName is set only if it is still unset.
                let r = api
                    .modify::<Pod>(Some(&ns), &name, false, |p| {
                        if p.spec.node_name.as_deref().unwrap_or("").is_empty() {
                            p.spec.node_name = Some(node.clone());
                            true
                        } else {
                            false
                        }
                    })
                    .await;
                if let Ok(Some(_)) = &r {
                    *load.entry(node.clone()).or_default() += 1;
                    tracing::info!(pod = %format!("{ns}/{name}"), node = %node, "scheduled");
                    let cond = Condition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() };
                    let _ = api.modify::<Pod>(Some(&ns), &name, true, |p| set_if_changed(p, cond.clone(), &now)).await;
                }
                r
            }
            Err(why) => {
                let cond = Condition {
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
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e.0.message, "scheduler: could not update pod");
        }
    }
}

/// Set a pod condition; report whether anything changed (so an unchanged reason is not rewritten).
fn set_if_changed(p: &mut Pod, cond: Condition, now: &str) -> bool {
    if condition(&p.status.conditions, &cond.type_)
        .is_some_and(|c| c.status == cond.status && c.reason == cond.reason && c.message == cond.message)
    {
        return false;
    }
    set_condition(&mut p.status.conditions, cond, now);
    true
}
