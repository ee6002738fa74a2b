//! The node lifecycle controller (part of kube-controller-manager): a node whose kubelet
//! has not posted a new heartbeat for `--node-monitor-grace-period` (40 s by default)
//! becomes `Ready=False`, so the scheduler stops placing pods there. Like Kubernetes, it
//! times heartbeats by its own clock (when it *saw* the heartbeat change), not the node's.
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
        let mut seen: HashMap<String, (Option<String>, Instant)> = HashMap::new();
        let period = (grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = pass(&api, grace, &mut seen).await {
                tracing::warn!(error = %e.0.message, "node lifecycle: pass failed");
            }
        }
    });
}

async fn pass(api: &Api, grace: Duration, seen: &mut HashMap<String, (Option<String>, Instant)>) -> Result<(), crate::error::ApiError> {
    let (nodes, _) = api.list::<Node>(None).await?;
    let now = Instant::now();
    seen.retain(|name, _| nodes.iter().any(|n| &n.metadata.name == name));
    for node in &nodes {
        let beat = condition(&node.status.conditions, "Ready").and_then(|c| c.last_heartbeat_time.clone());
        let entry = seen.entry(node.metadata.name.clone()).or_insert((beat.clone(), now));
        if entry.0 != beat {
            *entry = (beat, now);
        }
        if node.is_ready() && now.duration_since(entry.1) > grace {
            tracing::warn!(node = %node.metadata.name, "node stopped posting status: marking it NotReady");
            let t = now_rfc3339();
            api.modify::<Node>(None, &node.metadata.name, true, |n| {
                let Some(c) = n.status.conditions.iter_mut().find(|c| c.type_ == "Ready") else { return false };
                if c.status != "True" || c.last_heartbeat_time != entry.0 {
                    return false; // it came back meanwhile
                }
                c.status = "False".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(t.clone());
                true
            })
            .await?;
        }
    }
    let (pods, _) = api.list::<Pod>(None).await?;
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some()) {
        let node = pod.spec.node_name.as_deref().unwrap_or("");
        if !nodes.iter().any(|n| n.metadata.name == node) {
            let ns = pod.metadata.namespace.as_deref();
            let _ = api.delete::<Pod>(ns, &pod.metadata.name, Some(0), None).await;
        }
    }
    Ok(())
}
