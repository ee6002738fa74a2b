//! The endpoints controller's pure part: which pods back a service, and on which ports
//! (kube-controller-manager's `endpoint` controller, minus the I/O). The same pod-to-port
//! resolution feeds the EndpointSlices ([`crate::endpointslice`]).
//!
//! Upstream: pkg/controller/endpoint/endpoints_controller.go

use crate::api::*;
use crate::selector::LabelSelector;
use std::collections::BTreeMap;

/// Resolve a service port's `targetPort` against one pod: a number is used as it is, a
/// name is looked up among the pod's container ports (same protocol). `None`: the pod
/// does not offer that named port, so it is left out for that port.
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None | Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .containers()
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name) && protocol(&p.protocol) == protocol(&sp.protocol))
            .map(|p| p.container_port),
    }
}

/// An endpoint port: its name, number and protocol.
pub(crate) type PortKey = (Option<String>, i32, String);

/// The ports a selected pod serves the service on (each service port resolved against
/// it); `None` if the pod is not a candidate at all: not selected, no IP yet, finished,
/// or none of the ports resolve.
pub(crate) fn pod_ports(svc: &Service, selector: &LabelSelector, pod: &Pod) -> Option<Vec<PortKey>> {
    pod.pod_ip()?;
    if !selector.matches(pod.labels()) || pod.is_terminal() {
        return None;
    }
    let ports: Vec<PortKey> = svc
        .ports()
        .iter()
        .filter_map(|sp| {
            let port = resolve_target_port(sp, pod)?;
            Some((sp.name.clone().filter(|n| !n.is_empty()), port, protocol(&sp.protocol).to_string()))
        })
        .collect();
    (!ports.is_empty()).then_some(ports)
}

/// The reference from an endpoint back to its pod.
pub(crate) fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The subsets of the Endpoints object for `svc`, given the pods of its namespace.
///
/// Ready pods (Running, `Ready=True`, with an IP) go into `addresses`, running pods that
/// are not ready into `notReadyAddresses`; pods being deleted are left out (EndpointSlices
/// keep them, marked `terminating`). Pods whose resolved ports are the same share a
/// subset, as in Kubernetes.
pub fn compute_subsets<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<EndpointSubset> {
    let Some(sel) = svc.selector() else { return vec![] };
    let selector = LabelSelector::from_map(sel);
    // Subsets keyed by their ports, each with its ready and not-ready addresses.
    let mut by_ports: BTreeMap<Vec<PortKey>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    for pod in pods.into_iter().filter(|p| !p.is_deleting()) {
        let Some(ports) = pod_ports(svc, &selector, pod) else { continue };
        let addr = EndpointAddress {
            ip: pod.pod_ip().unwrap_or_default().to_string(),
            node_name: pod.node_name().map(String::from),
            target_ref: Some(target_ref(pod)),
            ..Default::default()
        };
        let (ready, not_ready) = by_ports.entry(ports).or_default();
        if pod.is_ready() || publish_not_ready(svc) {
            ready.push(addr);
        } else {
            not_ready.push(addr);
        }
    }
    let by_ip = |a: &EndpointAddress, b: &EndpointAddress| a.ip.cmp(&b.ip);
    by_ports
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            EndpointSubset {
                addresses: Some(ready).filter(|a| !a.is_empty()),
                not_ready_addresses: Some(not_ready).filter(|a| !a.is_empty()),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort { name, port, protocol: Some(protocol), ..Default::default() })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// `spec.publishNotReadyAddresses`: every selected pod counts as ready (for StatefulSet
/// peers that must find each other before they are ready).
pub(crate) fn publish_not_ready(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false)
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
        let (s0, s1) = (&subsets[0], &subsets[1]);
        assert_eq!(s0.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(s0.addresses.iter().flatten().map(|a| a.ip.as_str()).collect::<Vec<_>>(), ["10.244.0.2"]);
        assert_eq!(s0.not_ready_addresses.as_ref().unwrap()[0].ip, "10.244.0.4");
        assert_eq!(s1.ports.as_ref().unwrap()[0].port, 9090);
        assert_eq!(s1.addresses.as_ref().unwrap()[0].target_ref.as_ref().unwrap().name.as_deref(), Some("d"));
    }

    #[test]
    fn target_port_defaults_to_port() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        let subsets = compute_subsets(&svc, &[pod("a", "10.244.0.2", true, json!({"app": "web"}), json!([]))]);
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 80);
    }
}
