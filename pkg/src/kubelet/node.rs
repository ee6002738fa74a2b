//! The node's heartbeat: a Lease in `kube-node-lease`, named after the node and owned by
//! it, renewed every 10 s with a duration of 40 s (cheap: a small object, no status). The
//! full NodeStatus is posted less often: when it changes, or every 5 minutes. The node
//! lifecycle controller marks a node whose Lease (and status) went stale `Unknown`.
//!
//! Upstream: k8s.io/component-helpers/apimachinery/lease/controller.go, pkg/kubelet/kubelet_node_status.go

use crate::api::{Lease, LeaseSpec, MicroTime, Node, OwnerReference};
use std::time::Duration;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// A quarter of the lease's duration.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
pub const STATUS_REPORT_EVERY: Duration = Duration::from_secs(300);
pub const STATUS_CHECK_EVERY: Duration = Duration::from_secs(10);

/// The node's Lease, renewed `now`.
pub fn lease(node_name: &str, node_uid: Option<&str>, now: MicroTime) -> Lease {
    let mut meta = crate::api::meta(Some(LEASE_NAMESPACE), node_name);
    if let Some(uid) = node_uid {
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name.into(),
            uid: uid.into(),
            ..Default::default()
        }]);
    }
    Lease {
        metadata: meta,
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.into()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

/// Whether two node statuses differ in more than their heartbeat times.
pub fn status_changed(old: &Node, new: &Node) -> bool {
    let strip = |n: &Node| {
        let mut s = n.status.clone().unwrap_or_default();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_and_status_changes() {
        let l = lease("node1", Some("u1"), MicroTime(jiff::Timestamp::from_second(100).unwrap()));
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        assert_eq!(l.spec.as_ref().unwrap().lease_duration_seconds, Some(40));
        assert_eq!(l.metadata.owner_references.as_ref().unwrap()[0].kind, "Node");
        let n = |beat: i64| -> Node {
            serde_json::from_value(serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "lastHeartbeatTime": jiff::Timestamp::from_second(beat).unwrap().to_string()}]}}))
            .unwrap()
        };
        assert!(!status_changed(&n(1), &n(2)), "a new heartbeat alone is no change");
    }
}
