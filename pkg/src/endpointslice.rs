//! EndpointSlices (`discovery.k8s.io/v1`): the endpoints of a service in slices of at
//! most 100, one set of slices per distinct set of ports, each endpoint with three
//! conditions instead of Endpoints' two lists:
//!
//! - `ready`: serving and not terminating — what traffic goes to;
//! - `serving`: its readiness, whether or not it is terminating;
//! - `terminating`: its pod is being deleted (`deletionTimestamp`).
//!
//! Endpoints drops a pod the moment it starts terminating; a slice keeps it, marked, so a
//! proxy can still send traffic to terminating-but-serving endpoints when no ready one is
//! left (KEP-1669) instead of dropping connections during a rollout of one replica.
//!
//! Slices carry `kubernetes.io/service-name`, are owned by their Service (the garbage
//! collector removes them with it) and are named `<service>-<random>`. A service with no
//! endpoints keeps one empty slice, as upstream does.
//!
//! Upstream: pkg/controller/endpointslice/reconciler.go, staging/src/k8s.io/endpointslice/utils.go

use crate::api::*;
use crate::endpoints::{pod_ports, publish_not_ready, target_ref, PortKey};
use crate::selector::LabelSelector;
use std::collections::BTreeMap;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const MAX_PER_SLICE: usize = 100;

/// What one slice holds, without its metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceData {
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

impl SliceData {
    pub fn of(s: &EndpointSlice) -> SliceData {
        SliceData { ports: s.ports.clone().unwrap_or_default(), endpoints: s.endpoints.clone() }
    }
}

/// One pod as a slice endpoint.
pub fn endpoint(svc: &Service, pod: &Pod) -> SliceEndpoint {
    let terminating = pod.is_deleting();
    let serving = pod.is_ready();
    SliceEndpoint {
        addresses: vec![pod.pod_ip().unwrap_or_default().to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(publish_not_ready(svc) || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        node_name: pod.node_name().map(String::from),
        target_ref: Some(target_ref(pod)),
        ..Default::default()
    }
}

fn slice_ports(ports: &[PortKey]) -> Vec<SlicePort> {
    ports
        .iter()
        .map(|(name, port, protocol)| SlicePort {
            name: Some(name.clone().unwrap_or_default()),
            port: Some(*port),
            protocol: Some(protocol.clone()),
            app_protocol: None,
        })
        .collect()
}

/// The slices `svc` should have, given the pods of its namespace.
pub fn desired<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<SliceData> {
    let Some(sel) = svc.selector() else { return vec![] };
    let selector = LabelSelector::from_map(sel);
    let mut by_ports: BTreeMap<Vec<PortKey>, Vec<SliceEndpoint>> = BTreeMap::new();
    for pod in pods {
        if let Some(ports) = pod_ports(svc, &selector, pod) {
            by_ports.entry(ports).or_default().push(endpoint(svc, pod));
        }
    }
    let mut out = vec![];
    for (ports, mut eps) in by_ports {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        for chunk in eps.chunks(MAX_PER_SLICE) {
            out.push(SliceData { ports: slice_ports(&ports), endpoints: chunk.to_vec() });
        }
    }
    if out.is_empty() {
        out.push(SliceData::default()); // the placeholder
    }
    out
}

/// How to get from the slices there are to the ones wanted.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<SliceData>,
    /// `(slice name, new content)`.
    pub update: Vec<(String, SliceData)>,
    pub delete: Vec<String>,
}

/// Reuse an existing slice with the same ports for each wanted one (rewriting it only if
/// its endpoints differ), create the rest, delete what is left over.
pub fn plan(desired: Vec<SliceData>, existing: &[EndpointSlice]) -> Plan {
    let mut left: Vec<&EndpointSlice> = existing.iter().collect();
    left.sort_by(|a, b| a.name().cmp(b.name()));
    let mut p = Plan::default();
    for want in desired {
        match left.iter().position(|s| s.ports.clone().unwrap_or_default() == want.ports) {
            Some(i) => {
                let have = left.remove(i);
                if SliceData::of(have) != want {
                    p.update.push((have.name().to_string(), want));
                }
            }
            None => p.create.push(want),
        }
    }
    p.delete = left.into_iter().map(|s| s.name().to_string()).collect();
    p
}

/// The owner reference from a service's slices (and Endpoints) to the service.
pub fn owned_by(svc: &Service) -> OwnerReference {
    crate::workloads::replicaset::controller_ref("v1", "Service", svc.name(), svc.uid().unwrap_or_default())
}

/// A new slice for `svc` (its name chosen by the server from `generateName`).
pub fn new_slice(svc: &Service, data: SliceData) -> EndpointSlice {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name().into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = owned_by(svc);
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.name())),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: data.endpoints,
        ports: Some(data.ports),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, deleting: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"},
                         "deletionTimestamp": if deleting { Some("2026-01-01T00:00:00Z") } else { None }},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn svc() -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "uid": "s1"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap()
    }

    fn conds(e: &SliceEndpoint) -> (bool, bool, bool) {
        let c = e.conditions.clone().unwrap();
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    #[test]
    fn terminating_pods_stay_marked_in_the_slice() {
        let pods = [pod("a", "10.0.0.1", true, false), pod("b", "10.0.0.2", false, false), pod("c", "10.0.0.3", true, true)];
        let slices = desired(&svc(), &pods);
        assert_eq!(slices.len(), 1);
        let e = &slices[0].endpoints;
        assert_eq!((conds(&e[0]), conds(&e[1]), conds(&e[2])), ((true, true, false), (false, false, false), (false, true, true)));
        assert_eq!(slices[0].ports[0].port, Some(8080));
        // Endpoints, by contrast, has already dropped the terminating pod.
        let subsets = crate::endpoints::compute_subsets(&svc(), &pods);
        assert_eq!(subsets[0].addresses.iter().flatten().count() + subsets[0].not_ready_addresses.iter().flatten().count(), 2);
    }

    #[test]
    fn plans_reuse_slices_and_keep_a_placeholder() {
        let pods: Vec<Pod> = (0..150).map(|i| pod(&format!("p{i}"), &format!("10.0.{}.{}", i / 200, i % 200 + 1), true, false)).collect();
        let want = desired(&svc(), &pods);
        assert_eq!(want.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(), [100, 50]);
        let p = plan(want.clone(), &[]);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (2, 0, 0));
        let mut existing: Vec<EndpointSlice> = p.create.into_iter().map(|d| new_slice(&svc(), d)).collect();
        existing[0].metadata.name = Some("web-a".into());
        existing[1].metadata.name = Some("web-b".into());
        assert_eq!(plan(want, &existing), Plan::default(), "nothing changed, nothing written");
        let none = desired(&svc(), &[]);
        assert_eq!(none, [SliceData::default()]);
        let p = plan(none, &existing);
        assert_eq!((p.create.len(), p.delete), (1, vec!["web-a".to_string(), "web-b".to_string()]));
        assert_eq!(existing[0].labels()[SERVICE_NAME_LABEL], "web");
    }
}
