//! kube-proxy, the pure part: from Services and EndpointSlices to the rules the kernel
//! loads, in either of kube-proxy's two modes:
//!
//! - [`iptables`]: chains in the `nat` and `filter` tables, loaded with `iptables-restore`;
//!   the layout every "how kube-proxy works" blog post draws;
//! - [`nftables`]: one `ip ownkube` table whose verdict maps dispatch each packet in one
//!   lookup (KEP-3866), loaded with `nft -f`.
//!
//! Both start from the same model: each service port ([`ServicePort`]) with the
//! endpoints that get its traffic. Which ones ([`Backend`], [`pick`]): the ready ones;
//! when none is ready, those still serving while they terminate (KEP-1669), so that a
//! service whose last pods are draining keeps answering instead of refusing.
//!
//! The policies a Service can ask for, and what each renderer makes of them:
//! - `internalTrafficPolicy: Local` — traffic to the ClusterIP goes only to endpoints on
//!   this node ([`ServicePort::local_endpoints`]); with none, it is dropped.
//! - `externalTrafficPolicy: Local` — NodePort traffic from outside goes only to local
//!   endpoints and is *not* masqueraded, so the pod sees the client's own address; a node
//!   without local endpoints drops it (and says so on the service's `healthCheckNodePort`,
//!   [`health_checks`], so a load balancer stops sending there). Traffic from pods and from
//!   the node itself still goes cluster-wide, as in Kubernetes.
//! - `sessionAffinity: ClientIP` — a client's connections stick to the endpoint it first
//!   reached, for `timeoutSeconds` after its last one (iptables `-m recent`, nftables
//!   dynamic sets with timeouts).
//! - SCTP ports are refused ([`unsupported`]): no rules, and the agent says why in an event.
//!
//! [`history`] says what a sync changed (in words, and as rule lines added and removed);
//! [`cache`] keeps the proxy's Services and EndpointSlices and tells which services changed,
//! so a sync rebuilds only their ports.
//!
//! Upstream: pkg/proxy (endpointslicecache.go, topology.go), pkg/proxy/iptables,
//! pkg/proxy/nftables

pub mod cache;
pub mod history;
pub mod iptables;
pub mod nftables;

pub use iptables::{jumps, render, render_service, Plan, Planner, Ruleset, ServiceChains, MASQ_MARK};

/// What separates a sync's transactions (restores, `nft -f` inputs) where they are shown
/// or saved as one text.
pub const NEXT_TRANSACTION: &str = "# --- next transaction ---\n";

use crate::api::{protocol as proto_of, EndpointSlice, Endpoints, Object, Service, ServiceExt};
use crate::endpointslice::SERVICE_NAME_LABEL;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// `internalTrafficPolicy` / `externalTrafficPolicy`: which endpoints a kind of traffic may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficPolicy {
    /// Every endpoint in the cluster (traffic crossing nodes is masqueraded).
    #[default]
    Cluster,
    /// Only the endpoints on this node.
    Local,
}

impl TrafficPolicy {
    fn parse(s: Option<&str>) -> TrafficPolicy {
        if s == Some("Local") {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        }
    }
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`: three hours.
pub const DEFAULT_AFFINITY_SECS: u32 = 10_800;

/// One port of one service, with the endpoints that serve it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port` (the port's name, or its number when it has none).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub cluster_ip: Option<String>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `(ip, port)` of each endpoint that gets traffic ([`pick`]), sorted.
    pub endpoints: Vec<(String, u16)>,
    /// The same pick among the endpoints on this node; filled only when a policy is
    /// `Local` (otherwise nothing reads it, and a pod moving would rewrite chains for nothing).
    pub local_endpoints: Vec<(String, u16)>,
    pub internal_policy: TrafficPolicy,
    pub external_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP`: seconds a client stays on its endpoint after its last packet.
    pub affinity_secs: Option<u32>,
}

/// Every service port, keyed by `(namespace/name:port, protocol)`. Each is shared (`Arc`):
/// a sync that changes one service of 5,000 copies pointers for the others, and comparing
/// an unchanged port with the last sync's is a pointer comparison (`Arc`'s `==` on an
/// `Eq` type looks at the pointers first).
pub type Ports = BTreeMap<(String, String), Arc<ServicePort>>;

/// `base32(sha256(s))[..16]`, the hash kube-proxy puts in chain names.
pub(crate) fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    // 16 base32 characters are exactly the first 80 bits (10 bytes).
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | *b as u128;
    }
    (0..16).map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char).collect()
}

impl ServicePort {
    /// `namespace/name`, the service this port belongs to.
    pub fn service(&self) -> &str {
        self.name.split_once(':').map_or(&self.name, |(s, _)| s)
    }

    /// Whether a policy sends some traffic to local endpoints only.
    pub fn uses_local(&self) -> bool {
        self.internal_policy == TrafficPolicy::Local || (self.node_port.is_some() && self.external_policy == TrafficPolicy::Local)
    }

    /// Whether the cluster-policy chain (KUBE-SVC / `service-`) is written: there are
    /// endpoints, and ClusterIP traffic (policy Cluster) or a NodePort's pod and node
    /// traffic (always cluster-wide) goes to it.
    pub fn uses_cluster_chain(&self) -> bool {
        !self.endpoints.is_empty() && (self.internal_policy == TrafficPolicy::Cluster || self.node_port.is_some())
    }

    /// Whether the local-policy chain (KUBE-SVL / `local-`) is written: a policy is Local
    /// and this node has endpoints.
    pub fn uses_local_chain(&self) -> bool {
        self.uses_local() && !self.local_endpoints.is_empty()
    }

    /// The endpoints that get a chain of their own: those of the policy chains written,
    /// sorted, once each (a local pick may hold a terminating endpoint the cluster pick skips).
    pub fn chained_endpoints(&self) -> Vec<(String, u16)> {
        let mut all: Vec<(String, u16)> = vec![];
        if self.uses_cluster_chain() {
            all.extend(self.endpoints.iter().cloned());
        }
        if self.uses_local_chain() {
            all.extend(self.local_endpoints.iter().cloned());
        }
        all.sort();
        all.dedup();
        all
    }
}

/// One address behind a service port, with the conditions that decide whether it gets
/// traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub ip: String,
    /// The endpoint port's name (`""` when unnamed), protocol (lower case) and number.
    pub port_name: String,
    pub protocol: String,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The node the endpoint runs on, when the EndpointSlice says.
    pub node_name: Option<String>,
}

/// `namespace/name`, as services (and the objects named after them) are keyed in the
/// proxy's model.
pub fn key_of<T: Object>(o: &T) -> String {
    format!("{}/{}", o.namespace().unwrap_or("default"), o.name())
}

/// The service (`namespace/name`) an EndpointSlice belongs to, from its
/// `kubernetes.io/service-name` label.
pub fn service_of(s: &EndpointSlice) -> Option<String> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!("{}/{svc}", s.namespace().unwrap_or("default")))
}

/// The backends of every service (`namespace/name`), from the EndpointSlices labelled
/// with it (`kubernetes.io/service-name`). An endpoint's `ready` and `serving` left unset
/// mean true, as the API says; only its first address is used, as kube-proxy does.
pub fn backends_from_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> BTreeMap<String, Vec<Backend>> {
    let mut out: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
    for s in slices {
        let Some(svc) = service_of(s) else { continue };
        if s.address_type != "IPv4" {
            continue;
        }
        let list = out.entry(svc).or_default();
        for p in s.ports.iter().flatten() {
            let Some(port) = p.port.and_then(|n| u16::try_from(n).ok()) else { continue };
            for e in &s.endpoints {
                let c = e.conditions.clone().unwrap_or_default();
                let ready = c.ready != Some(false);
                let Some(ip) = e.addresses.first() else { continue };
                list.push(Backend {
                    ip: ip.clone(),
                    port_name: p.name.clone().unwrap_or_default(),
                    protocol: proto_of(&p.protocol).to_lowercase(),
                    port,
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating == Some(true),
                    node_name: e.node_name.clone(),
                });
            }
        }
    }
    out
}

/// The backends of every service from Endpoints objects (what kube-proxy read before
/// EndpointSlices): their `addresses` are ready; `notReadyAddresses` get no traffic.
pub fn backends_from_endpoints<'a>(endpoints: impl IntoIterator<Item = &'a Endpoints>) -> BTreeMap<String, Vec<Backend>> {
    let mut out: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
    for e in endpoints {
        let list = out.entry(key_of(e)).or_default();
        for s in e.subsets.iter().flatten() {
            for p in s.ports.iter().flatten() {
                let Ok(port) = u16::try_from(p.port) else { continue };
                for a in s.addresses.iter().flatten() {
                    list.push(Backend {
                        ip: a.ip.clone(),
                        port_name: p.name.clone().unwrap_or_default(),
                        protocol: proto_of(&p.protocol).to_lowercase(),
                        port,
                        ready: true,
                        serving: true,
                        terminating: false,
                        node_name: a.node_name.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The `(ip, port)`s a service port sends to, sorted: its ready backends or, when none is
/// ready, the terminating ones still serving (KEP-1669).
pub fn pick(backends: &[&Backend]) -> Vec<(String, u16)> {
    let ready: Vec<&&Backend> = backends.iter().filter(|b| b.ready).collect();
    let chosen = if ready.is_empty() { backends.iter().filter(|b| b.serving && b.terminating).collect() } else { ready };
    let mut list: Vec<(String, u16)> = chosen.into_iter().map(|b| (b.ip.clone(), b.port)).collect();
    list.sort();
    list.dedup();
    list
}

/// What a Service asks of the proxy beyond its ports: its two traffic policies and
/// ClientIP affinity (with its timeout).
fn policies(svc: &Service) -> (TrafficPolicy, TrafficPolicy, Option<u32>) {
    let spec = svc.spec.as_ref();
    let internal = TrafficPolicy::parse(spec.and_then(|s| s.internal_traffic_policy.as_deref()));
    let external = TrafficPolicy::parse(spec.and_then(|s| s.external_traffic_policy.as_deref()));
    let affinity = (spec.and_then(|s| s.session_affinity.as_deref()) == Some("ClientIP")).then(|| {
        let cfg = spec.and_then(|s| s.session_affinity_config.as_ref()).and_then(|c| c.client_ip.as_ref());
        cfg.and_then(|c| c.timeout_seconds).and_then(|t| u32::try_from(t).ok()).filter(|t| *t > 0).unwrap_or(DEFAULT_AFFINITY_SECS)
    });
    (internal, external, affinity)
}

/// Services with a virtual IP to proxy (not headless, not ExternalName), as
/// `(namespace/name, service, clusterIP)`.
fn proxied<'a>(services: impl IntoIterator<Item = &'a Service>) -> impl Iterator<Item = (String, &'a Service, String)> {
    services.into_iter().filter(|svc| svc.type_() != "ExternalName").filter_map(|svc| {
        let ip = svc.cluster_ip().filter(|ip| *ip != "None")?.to_string();
        Some((key_of(svc), svc, ip))
    })
}

/// Flatten services and their backends into service ports, keyed by name and protocol.
/// Each service port takes the backends whose port has its name (unnamed: `""`) and
/// protocol; `node` (this node's name) decides which endpoints are local. SCTP ports are
/// left out ([`unsupported`]).
pub fn service_ports<'a>(services: impl IntoIterator<Item = &'a Service>, backends: &BTreeMap<String, Vec<Backend>>, node: &str) -> Ports {
    let mut out = BTreeMap::new();
    for (key, svc, cluster_ip) in proxied(services) {
        let (internal_policy, external_policy, affinity_secs) = policies(svc);
        let all = backends.get(&key).map(Vec::as_slice).unwrap_or_default();
        for sp in svc.ports() {
            let port_name = sp.name.clone().unwrap_or_default();
            let protocol = proto_of(&sp.protocol).to_lowercase();
            if protocol == "sctp" {
                continue;
            }
            let mine: Vec<&Backend> = all.iter().filter(|b| b.port_name == port_name && b.protocol == protocol).collect();
            let name = format!("{key}:{}", if port_name.is_empty() { sp.port.to_string() } else { port_name.clone() });
            let node_port = sp.node_port.and_then(|n| u16::try_from(n).ok()).filter(|_| svc.wants_node_ports());
            let mut port = ServicePort {
                name,
                protocol,
                cluster_ip: Some(cluster_ip.clone()),
                port: sp.port as u16,
                node_port,
                endpoints: pick(&mine),
                local_endpoints: vec![],
                internal_policy,
                external_policy,
                affinity_secs,
            };
            if port.uses_local() {
                let local: Vec<&Backend> = mine.iter().copied().filter(|b| b.node_name.as_deref() == Some(node)).collect();
                port.local_endpoints = pick(&local);
            }
            out.insert((port.name.clone(), port.protocol.clone()), Arc::new(port));
        }
    }
    out
}

/// The service ports after the services in `changed` (`namespace/name`) changed: every
/// other service's ports as in `old` (shared, not copied), those of `changed` made again
/// from `services` (the ones of them that still exist) and `backends`. Equal to
/// [`service_ports`] over everything when `old` was, and costs what changed.
pub fn update_ports<'a>(
    old: &Ports,
    changed: &BTreeSet<String>,
    services: impl IntoIterator<Item = &'a Service>,
    backends: &BTreeMap<String, Vec<Backend>>,
    node: &str,
) -> Ports {
    let kept = old.iter().filter(|(_, sp)| !changed.contains(sp.service()));
    let mut out: Ports = kept.map(|(k, sp)| (k.clone(), sp.clone())).collect();
    out.extend(service_ports(services, backends, node));
    out
}

/// Ports the proxy will not program, as `(namespace/name, message)`: SCTP, which
/// ownkube's proxy does not support (the lab's nodes load no SCTP conntrack helper, and
/// neither renderer writes SCTP rules). The agent reports each in an event on the Service.
pub fn unsupported<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<(String, String)> {
    let mut out = vec![];
    for (key, svc, _) in proxied(services) {
        for sp in svc.ports().iter().filter(|p| proto_of(&p.protocol) == "SCTP") {
            let msg = format!("port {}/SCTP is not proxied: ownkube's proxy supports TCP and UDP only", sp.port);
            out.push((key.clone(), msg));
        }
    }
    out
}

/// What the health check of a service with `externalTrafficPolicy: Local` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `namespace/name`.
    pub service: String,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// The `healthCheckNodePort`s this node must answer (LoadBalancer services with
/// `externalTrafficPolicy: Local`): 200 while the service has endpoints here, 503 when it
/// has none, so a load balancer sends only to nodes that can serve without a second hop.
pub fn health_checks<'a>(ports: &Ports, services: impl IntoIterator<Item = &'a Service>) -> BTreeMap<u16, HealthCheck> {
    let hc_of = |svc: &Service| svc.spec.as_ref().and_then(|s| s.health_check_node_port).and_then(|p| u16::try_from(p).ok());
    let mut out = BTreeMap::new();
    for (key, svc, _) in proxied(services.into_iter().filter(|s| hc_of(s).is_some())) {
        let Some(hc) = hc_of(svc) else { continue };
        let mut local: Vec<&(String, u16)> = ports.values().filter(|p| p.service() == key).flat_map(|p| &p.local_endpoints).collect();
        local.sort();
        local.dedup_by_key(|e| &e.0);
        out.insert(hc, HealthCheck { service: key, local_endpoints: local.len() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints}))
        .unwrap()
    }

    #[test]
    fn ready_endpoints_first_then_terminating_ones_still_serving() {
        let ep = |ip: &str, ready: bool, serving: bool, terminating: bool| serde_json::json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}});
        let svc: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
        .unwrap();
        let ips =
            |s: &EndpointSlice| service_ports([&svc], &backends_from_slices([s]), "node1").into_values().next().unwrap().endpoints.clone();
        // A rollout: one new pod ready, one old pod draining: only the ready one.
        let s = slice(serde_json::json!([ep("10.244.0.2", true, true, false), ep("10.244.0.3", false, true, true)]));
        assert_eq!(ips(&s), [("10.244.0.2".to_string(), 8080)]);
        // The last pods are all draining: they keep the traffic rather than refusing it.
        let s = slice(serde_json::json!([ep("10.244.0.3", false, true, true), ep("10.244.0.4", false, false, true)]));
        assert_eq!(ips(&s), [("10.244.0.3".to_string(), 8080)]);
        // Not ready and not terminating (a failing readiness probe): no traffic.
        let s = slice(serde_json::json!([ep("10.244.0.5", false, false, false)]));
        assert!(ips(&s).is_empty());
        // Conditions left out mean ready.
        let s = slice(serde_json::json!([{"addresses": ["10.244.0.6"]}]));
        assert_eq!(ips(&s), [("10.244.0.6".to_string(), 8080)]);
    }
}
