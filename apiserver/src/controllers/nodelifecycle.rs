//! The node lifecycle controller (part of kube-controller-manager): a node whose kubelet
//! has neither renewed its Lease (in `kube-node-lease`, every 10 s) nor posted its status
//! for `--node-monitor-grace-period` (40 s by default) becomes `Ready=Unknown`
//! (`NodeStatusUnknown`), so the scheduler stops placing pods there. Like Kubernetes, it
//! times heartbeats by its own clock (when it *saw* one change), not the node's.
//!
//! The pods of a node that is not Ready are marked not Ready too (`MarkPodsNotReady`), so
//! the endpoint controllers take them out of their Services and traffic stops going to a
//! node that may be gone; its kubelet posts their real state when it comes back.
//!
//! It also does podgc's orphan sweep: a pod being deleted on a node that no longer exists
//! has nobody to finish the delete, so it is removed here.

use crate::objects::Api;
use pkg::api::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub fn spawn(api: Api, grace: Duration) {
    tokio::spawn(async move {
        // node name -> (last heartbeat seen, when we first saw it)
        let mut seen: HashMap<String, (Beat, Instant)> = HashMap::new();
        let period = (grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = pass(&api, grace, &mut seen).await {
                tracing::warn!(error = %e.message(), "node lifecycle: pass failed");
            }
        }
    });
}

/// A node's two heartbeats: its Ready condition's `lastHeartbeatTime`, and its Lease's `renewTime`.
type Beat = (Option<Time>, Option<MicroTime>);

async fn pass(api: &Api, grace: Duration, seen: &mut HashMap<String, (Beat, Instant)>) -> Result<(), crate::error::ApiError> {
    let (nodes, _) = api.list::<Node>(None).await?;
    let (leases, _) = api.list::<Lease>(Some(pkg::kubelet::node::LEASE_NAMESPACE)).await?;
    let now = Instant::now();
    seen.retain(|name, _| nodes.iter().any(|n| n.name() == name));
    for node in &nodes {
        let status_beat = node.node_condition("Ready").and_then(|c| c.last_heartbeat_time.clone());
        let renewed = leases.iter().find(|l| l.name() == node.name()).and_then(|l| l.spec.as_ref()?.renew_time.clone());
        let beat = (status_beat.clone(), renewed);
        let entry = seen.entry(node.name().to_string()).or_insert((beat.clone(), now));
        if entry.0 != beat {
            *entry = (beat, now);
        }
        if node.is_ready() && now.duration_since(entry.1) > grace {
            tracing::warn!(node = %node.name(), "node stopped renewing its lease and posting status: marking it Unknown");
            let t = pkg::api::now();
            api.modify::<Node>(None, node.name(), true, |n| {
                let conditions = n.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
                let Some(c) = conditions.iter_mut().find(|c| c.type_ == "Ready") else { return false };
                if c.status != "True" || c.last_heartbeat_time != status_beat {
                    return false; // it came back meanwhile
                }
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(t.clone());
                true
            })
            .await?;
        }
    }
    let (pods, _) = api.list::<Pod>(None).await?;
    let down: Vec<&str> = nodes.iter().filter(|n| !n.is_ready()).map(|n| n.name()).collect();
    for pod in pods.iter().filter(|p| p.node_name().is_some_and(|n| down.contains(&n)) && pod_ready(p)) {
        mark_pod_not_ready(api, pod).await;
    }
    for pod in pods.iter().filter(|p| p.is_deleting()) {
        let node = pod.node_name().unwrap_or("");
        if !nodes.iter().any(|n| n.name() == node) {
            let _ = api.delete::<Pod>(pod.namespace(), pod.name(), Some(0), None).await;
        }
    }
    Ok(())
}

fn pod_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready=False on a pod whose node is not Ready (reason `NodeNotReady`).
async fn mark_pod_not_ready(api: &Api, pod: &Pod) {
    tracing::info!(pod = %pod.name(), node = pod.node_name().unwrap_or(""), "node not ready: marking its pod not ready");
    let t = pkg::api::now();
    let r = api
        .modify::<Pod>(pod.namespace(), pod.name(), true, |p| {
            let Some(c) = p.status.as_mut().and_then(|s| s.conditions.as_mut()).and_then(|cs| cs.iter_mut().find(|c| c.type_ == "Ready"))
            else {
                return false;
            };
            if c.status != "True" {
                return false;
            }
            c.status = "False".into();
            c.reason = Some("NodeNotReady".into());
            c.last_transition_time = Some(t.clone());
            true
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(pod = %pod.name(), error = %e.message(), "could not mark the pod not ready");
    }
}
