//! The scheduler's pure part (kube-scheduler's filter and score phases, reduced to two
//! rules): filter out nodes that are not Ready, are cordoned, or do not carry every label
//! of the pod's `nodeSelector`; among the rest pick the one running the fewest pods.

use crate::api::{Node, NodeExt, Object, Pod};
use std::borrow::Borrow;
use std::collections::HashMap;

/// The chosen node's name, or the message of the `PodScheduled=False` condition.
pub fn pick_node<'a, N: Borrow<Node>>(pod: &Pod, nodes: &'a [N], pods_per_node: &HashMap<String, usize>) -> Result<&'a str, String> {
    let (mut not_ready, mut unmatched) = (0, 0);
    let mut best: Option<(&str, usize)> = None;
    for node in nodes.iter().map(Borrow::borrow) {
        if !node.is_ready() || node.unschedulable() {
            not_ready += 1;
            continue;
        }
        let wanted = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
        if !wanted.into_iter().flatten().all(|(k, v)| node.labels().get(k) == Some(v)) {
            unmatched += 1;
            continue;
        }
        let load = pods_per_node.get(node.name()).copied().unwrap_or(0);
        // Ties go to the first name in order, so placement is deterministic.
        if best.is_none_or(|(n, l)| load < l || (load == l && node.name() < n)) {
            best = Some((node.name(), load));
        }
    }
    if let Some((name, _)) = best {
        return Ok(name);
    }
    let mut why = vec![];
    if not_ready > 0 {
        why.push(format!("{not_ready} node(s) were not ready or were unschedulable"));
    }
    if unmatched > 0 {
        why.push(format!("{unmatched} node(s) didn't match Pod's node affinity/selector"));
    }
    Err(format!("0/{} nodes are available: {}.", nodes.len(), if why.is_empty() { "no nodes registered".into() } else { why.join(", ") }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: bool, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    #[test]
    fn fewest_pods_among_ready_matching_nodes() {
        let nodes = [node("n1", true, json!({})), node("n2", true, json!({"disk": "ssd"})), node("n3", false, json!({"disk": "ssd"}))];
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        let counts = HashMap::from([("n1".to_string(), 3), ("n2".to_string(), 1)]);
        assert_eq!(pick_node(&pod, &nodes, &counts), Ok("n2"));
        assert_eq!(pick_node(&pod, &nodes, &HashMap::new()), Ok("n1"));
        let ssd: Pod = serde_json::from_value(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})).unwrap();
        assert_eq!(pick_node(&ssd, &nodes, &HashMap::from([("n2".to_string(), 50)])), Ok("n2"));
        let gpu: Pod = serde_json::from_value(json!({"spec": {"nodeSelector": {"gpu": "yes"}}})).unwrap();
        let err = pick_node(&gpu, &nodes, &counts).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) were not ready or were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert!(pick_node::<Node>(&pod, &[], &counts).unwrap_err().contains("no nodes"));
    }
}
