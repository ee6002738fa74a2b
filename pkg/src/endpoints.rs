//! The endpoints controller's pure part: which pods back a service, and on which ports
//! (kube-controller-manager's `endpoint` controller, minus the I/O).

use crate::api::*;
use crate::selector::LabelSelector;
use std::collections::BTreeMap;

/// Resolve a service port's `targetPort` against one pod: a number is used as it is, a
/// name is looked up among the pod's container ports (same protocol). `None`: the pod
/// does not offer that named port, so it is left out for that port.
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i64> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::Str(name)) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == sp.protocol())
            .map(|p| p.container_port),
    }
}

/// The subsets of the Endpoints object for `svc`, given the pods of its namespace.
///
/// Ready pods (Running, `Ready=True`, with an IP) go into `addresses`, running pods that
/// are not ready into `notReadyAddresses`; pods being deleted are left out. Pods whose
/// resolved ports are the same share a subset, as in Kubernetes.
pub fn compute_subsets<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<EndpointSubset> {
    let Some(sel) = &svc.spec.selector else { return vec![] };
    if sel.is_empty() {
        return vec![];
    }
    let selector = LabelSelector::from_map(sel);
    let mut by_ports: BTreeMap<Vec<EndpointPort>, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod.status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else { continue };
        if !selector.matches(&pod.metadata.labels) || pod.metadata.deletion_timestamp.is_some() || pod.is_terminal() {
            continue;
        }
        let ports: Vec<EndpointPort> = svc
            .spec
            .ports
            .iter()
            .filter_map(|sp| {
                resolve_target_port(sp, pod).map(|port| EndpointPort {
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    port,
                    protocol: Some(sp.protocol().to_string()),
                })
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress {
            ip: ip.to_string(),
            node_name: pod.spec.node_name.clone(),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let subset = by_ports.entry(ports.clone()).or_insert_with(|| EndpointSubset { ports, ..Default::default() });
        if pod.is_ready() {
            subset.addresses.push(addr);
        } else {
            subset.not_ready_addresses.push(addr);
        }
    }
    let mut out: Vec<EndpointSubset> = by_ports.into_values().collect();
    for s in &mut out {
        s.addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
        s.not_ready_addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, labels: serde_json::Value, ports: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "x", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn whole_selector_must_match_and_named_ports_resolve() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web", "tier": "front"}, "ports": [{"port": 80, "targetPort": "http"}]}
        }))
        .unwrap();
        let pods = [
            pod("a", "10.244.0.2", true, json!({"app": "web", "tier": "front"}), json!([{"name": "http", "containerPort": 8080}])),
            pod("b", "10.244.0.3", true, json!({"app": "web"}), json!([{"name": "http", "containerPort": 8080}])),
            pod("c", "10.244.0.4", false, json!({"app": "web", "tier": "front"}), json!([{"name": "http", "containerPort": 8080}])),
            pod("d", "10.244.0.5", true, json!({"app": "web", "tier": "front"}), json!([{"name": "http", "containerPort": 9090}])),
            pod("e", "10.244.0.6", true, json!({"app": "web", "tier": "front"}), json!([])),
        ];
        let subsets = compute_subsets(&svc, &pods);
        assert_eq!(subsets.len(), 2);
        assert_eq!(subsets[0].ports[0].port, 8080);
        assert_eq!(subsets[0].addresses.iter().map(|a| a.ip.as_str()).collect::<Vec<_>>(), ["10.244.0.2"]);
        assert_eq!(subsets[0].not_ready_addresses[0].ip, "10.244.0.4");
        assert_eq!(subsets[1].ports[0].port, 9090);
        assert_eq!(subsets[1].addresses[0].target_ref.as_ref().unwrap().name, "d");
    }

    #[test]
    fn target_port_defaults_to_port() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        let subsets = compute_subsets(&svc, &[pod("a", "10.244.0.2", true, json!({"app": "web"}), json!([]))]);
        assert_eq!(subsets[0].ports[0].port, 80);
    }
}
