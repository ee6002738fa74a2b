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
//! Upstream: pkg/proxy (endpointslicecache.go, topology.go), pkg/proxy/iptables,
//! pkg/proxy/nftables

pub mod iptables;
pub mod nftables;

pub use iptables::{jumps, render, render_service, Plan, Planner, Ruleset, ServiceChains, MASQ_MARK};

use crate::api::{protocol as proto_of, EndpointSlice, Endpoints, Object, Service, ServiceExt};
use crate::endpointslice::SERVICE_NAME_LABEL;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One port of one service, with the endpoints that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

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
}

/// The backends of every service (`namespace/name`), from the EndpointSlices labelled
/// with it (`kubernetes.io/service-name`). An endpoint's `ready` and `serving` left unset
/// mean true, as the API says; only its first address is used, as kube-proxy does.
pub fn backends_from_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> BTreeMap<String, Vec<Backend>> {
    let mut out: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
    for s in slices {
        let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        if s.address_type != "IPv4" {
            continue;
        }
        let list = out.entry(format!("{}/{svc}", s.namespace().unwrap_or("default"))).or_default();
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
        let list = out.entry(format!("{}/{}", e.namespace().unwrap_or("default"), e.name())).or_default();
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

/// Flatten services and their backends into service ports, keyed by name and protocol.
/// Each service port takes the backends whose port has its name (unnamed: `""`) and protocol.
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    backends: &BTreeMap<String, Vec<Backend>>,
) -> BTreeMap<(String, String), ServicePort> {
    let mut out = BTreeMap::new();
    for svc in services {
        let ns = svc.namespace().unwrap_or("default");
        let key = format!("{ns}/{}", svc.name());
        let cluster_ip = svc.cluster_ip().filter(|ip| *ip != "None").map(String::from);
        if cluster_ip.is_none() || svc.type_() == "ExternalName" {
            continue; // headless and ExternalName services have no virtual IP to proxy
        }
        let all = backends.get(&key).map(Vec::as_slice).unwrap_or_default();
        for sp in svc.ports() {
            let port_name = sp.name.clone().unwrap_or_default();
            let protocol = proto_of(&sp.protocol).to_lowercase();
            let mine: Vec<&Backend> = all.iter().filter(|b| b.port_name == port_name && b.protocol == protocol).collect();
            let name = format!("{key}:{}", if port_name.is_empty() { sp.port.to_string() } else { port_name.clone() });
            let node_port = sp.node_port.and_then(|n| u16::try_from(n).ok()).filter(|_| svc.wants_node_ports());
            out.insert(
                (name.clone(), protocol.clone()),
                ServicePort { name, protocol, cluster_ip: cluster_ip.clone(), port: sp.port as u16, node_port, endpoints: pick(&mine) },
            );
        }
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
        let ips = |s: &EndpointSlice| service_ports([&svc], &backends_from_slices([s])).into_values().next().unwrap().endpoints;
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
