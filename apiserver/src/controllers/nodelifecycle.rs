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
//! It also does podgc's orphan sweep (`gcOrphaned`): a pod bound to a node that does not
//! exist has no kubelet to run it or to finish its delete, so it is deleted here (at once
//! when a node goes, and every 20 s, as podgc checks). A node this controller saw go is
//! gone for good; a name it never saw gets podgc's 40 s quarantine first, so a pod created
//! for a node that is still registering is not deleted.

use crate::objects::Api;
use pkg::api::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often pods are swept for orphans when no node went away (podgc's `gcCheckPeriod`).
/// Listing every pod is the costly part of a pass: at 15,000 pods, doing it every 5 s
/// took a tenth of a core.
const SWEEP_EVERY: Duration = Duration::from_secs(20);

/// How long a node name pods are bound to must be missing before they are orphans
/// (podgc's `quarantineTime`).
const QUARANTINE: Duration = Duration::from_secs(40);

pub fn spawn(api: Api, grace: Duration) {
    tokio::spawn(async move {
        let mut st = State { seen: HashMap::new(), swept: Instant::now(), missing: HashMap::new() };
        let period = (grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = pass(&api, grace, &mut st).await {
                tracing::warn!(error = %e.message(), "node lifecycle: pass failed");
            }
        }
    });
}

/// A node's two heartbeats: its Ready condition's `lastHeartbeatTime`, and its Lease's `renewTime`.
type Beat = (Option<Time>, Option<MicroTime>);

/// What the controller remembers between passes.
struct State {
    /// Node name → (last heartbeat seen, when we first saw it).
    seen: HashMap<String, (Beat, Instant)>,
    /// When pods were last swept for orphans.
    swept: Instant,
    /// Node names pods are bound to that are not nodes → since when (a node seen to go:
    /// a quarantine ago).
    missing: HashMap<String, Instant>,
}

async fn pass(api: &Api, grace: Duration, st: &mut State) -> Result<(), crate::error::ApiError> {
    let (nodes, _) = api.list::<Node>(None).await?;
    let (leases, _) = api.list::<Lease>(Some(pkg::kubelet::node::LEASE_NAMESPACE)).await?;
    let renewals: HashMap<&str, Option<MicroTime>> =
        leases.iter().map(|l| (l.name(), l.spec.as_ref().and_then(|s| s.renew_time.clone()))).collect();
    let now = Instant::now();
    let names: std::collections::HashSet<&str> = nodes.iter().map(|n| n.name()).collect();
    let gone: Vec<String> = st.seen.keys().filter(|n| !names.contains(n.as_str())).cloned().collect();
    st.seen.retain(|name, _| names.contains(name.as_str()));
    let node_gone = !gone.is_empty();
    let long_ago = now.checked_sub(QUARANTINE).unwrap_or(now);
    st.missing.extend(gone.into_iter().map(|n| (n, long_ago)));
    let seen = &mut st.seen;
    for node in &nodes {
        let status_beat = node.node_condition("Ready").and_then(|c| c.last_heartbeat_time.clone());
        let renewed = renewals.get(node.name()).cloned().flatten();
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
    // The pods: those of nodes that are down, and (when a node went, or every
    // SWEEP_EVERY) the orphans being deleted on nodes that no longer exist.
    let down: Vec<&str> = nodes.iter().filter(|n| !n.is_ready()).map(|n| n.name()).collect();
    if down.is_empty() && !node_gone && st.swept.elapsed() < SWEEP_EVERY {
        return Ok(());
    }
    st.swept = Instant::now();
    let (pods, _) = api.list::<Pod>(None).await?;
    for pod in pods.iter().filter(|p| p.node_name().is_some_and(|n| down.contains(&n)) && pod_ready(p)) {
        mark_pod_not_ready(api, pod).await;
    }
    sweep_orphans(api, &names, &pods, &mut st.missing).await;
    Ok(())
}

/// Delete the pods bound to nodes that do not exist: at once if they are being deleted
/// already, else once their node has been missing for [`QUARANTINE`].
async fn sweep_orphans(api: &Api, nodes: &std::collections::HashSet<&str>, pods: &[Pod], missing: &mut HashMap<String, Instant>) {
    let now = Instant::now();
    let bound_to_missing = |p: &&Pod| p.node_name().is_some_and(|n| !n.is_empty() && !nodes.contains(n));
    let orphans: Vec<&Pod> = pods.iter().filter(bound_to_missing).collect();
    missing.retain(|n, _| orphans.iter().any(|p| p.node_name() == Some(n.as_str())));
    for pod in orphans {
        let node = pod.node_name().unwrap_or_default();
        let since = *missing.entry(node.to_string()).or_insert(now);
        if !pod.is_deleting() && now.duration_since(since) < QUARANTINE {
            continue;
        }
        tracing::info!(pod = %pod.name(), node, "pod bound to a node that does not exist: deleting it");
        let _ = api.delete::<Pod>(pod.namespace(), pod.name(), Some(0), None).await;
    }
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
