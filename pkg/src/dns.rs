//! Cluster DNS: the names a cluster's DNS server answers, built from Services and
//! EndpointSlices — what CoreDNS's `kubernetes` plugin serves, following Kubernetes' DNS
//! specification:
//!
//! ```text
//! whoami.default.svc.cluster.local.              A    10.96.0.5         a Service: its ClusterIP
//! db.default.svc.cluster.local.                  A    10.244.0.7        a headless Service (clusterIP: None):
//!                                                A    10.244.1.3          one record per ready endpoint
//! 10-244-0-7.db.default.svc.cluster.local.       A    10.244.0.7        each such endpoint by name (its hostname, or its IP dashed)
//! _http._tcp.whoami.default.svc.cluster.local.   SRV  0 100 80 whoami.default.svc.cluster.local.   a named port
//! 10-244-0-7.default.pod.cluster.local.          A    10.244.0.7        any pod, by its IP dashed (CoreDNS's `pods insecure`)
//! 5.0.96.10.in-addr.arpa.                        PTR  whoami.default.svc.cluster.local.           ClusterIPs and endpoint IPs backwards
//! ```
//!
//! A name inside the cluster domain that is none of these is `NXDOMAIN`; a name that
//! exists but has no record of the type asked (an `AAAA` for a Service) is an empty
//! answer (`NODATA`). Anything else is not ours: the server forwards it. Everything here
//! is pure: [`Records::build`] makes the tables from the objects, [`Records::answer`]
//! answers one question. Names are compared in lower case, without the final dot.
//!
//! Upstream: coredns/plugin/kubernetes (kubernetes.go, reverse.go), and
//! kubernetes/dns docs/specification.md

use crate::alloc::Cidr;
use crate::api::{EndpointSlice, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The record types the cluster zone has; anything else asked is [`QType::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    A,
    Srv,
    Ptr,
    Any,
    Other,
}

/// One answer record (the server adds class IN and the TTL).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rr {
    A { name: String, ip: Ipv4Addr },
    Srv { name: String, priority: u16, weight: u16, port: u16, target: String },
    Ptr { name: String, target: String },
}

impl Rr {
    fn qtype(&self) -> QType {
        match self {
            Rr::A { .. } => QType::A,
            Rr::Srv { .. } => QType::Srv,
            Rr::Ptr { .. } => QType::Ptr,
        }
    }
}

/// What to say to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Records(Vec<Rr>),
    /// The name exists, without records of that type.
    NoData,
    /// No such name in the cluster's zones.
    NxDomain,
    /// Not a cluster name: forward it.
    NotOurs,
}

/// The cluster's names, ready to answer from.
#[derive(Clone, Debug, Default)]
pub struct Records {
    domain: String,
    /// Reverse lookups inside these ranges are ours (NXDOMAIN when unknown).
    reverse: Vec<Cidr>,
    names: BTreeMap<String, Vec<Rr>>,
    /// Names that exist only as parents of others (`default.svc.cluster.local`).
    parents: BTreeSet<String>,
}

/// `10.244.0.7` as `10-244-0-7`.
pub fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// `10.96.0.5` as `5.0.96.10.in-addr.arpa`.
pub fn reverse_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
}

/// The ready endpoints of a Service's slices (all of them with
/// `publishNotReadyAddresses`): (name under the service, IP).
fn endpoints<'a>(svc: &Service, slices: impl Iterator<Item = &'a EndpointSlice>) -> Vec<(String, Ipv4Addr)> {
    let all = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let mut out = vec![];
    for e in slices.flat_map(|s| s.endpoints.iter()) {
        if !(all || e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)) {
            continue;
        }
        for ip in e.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
            out.push((e.hostname.clone().unwrap_or_else(|| dashed(ip)), ip));
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Records {
    /// The tables for `domain` (`cluster.local`) from these Services and their
    /// EndpointSlices (matched by the `kubernetes.io/service-name` label);
    /// `reverse` are the ranges (service and pod CIDRs) whose reverse names are ours.
    pub fn build<'a>(
        domain: &str,
        reverse: &[Cidr],
        services: impl IntoIterator<Item = &'a Service>,
        slices: &[&'a EndpointSlice],
    ) -> Records {
        let mut r = Records { domain: domain.trim_matches('.').to_ascii_lowercase(), reverse: reverse.to_vec(), ..Default::default() };
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(crate::endpointslice::SERVICE_NAME_LABEL)) else { continue };
            by_service.entry((s.metadata.namespace.clone().unwrap_or_default(), svc.clone())).or_default().push(s);
        }
        for svc in services {
            let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else { continue };
            let eps = by_service.get(&(ns.to_string(), name.to_string())).map(Vec::as_slice).unwrap_or(&[]);
            r.add_service(svc, ns, name, endpoints(svc, eps.iter().copied()));
        }
        r
    }

    fn add_service(&mut self, svc: &Service, ns: &str, name: &str, eps: Vec<(String, Ipv4Addr)>) {
        let spec = svc.spec.clone().unwrap_or_default();
        let fqdn = format!("{name}.{ns}.svc.{}", self.domain).to_ascii_lowercase();
        let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        self.touch(&fqdn);
        // The name's addresses: the ClusterIP, or (headless) each ready endpoint's.
        let targets: Vec<(String, Ipv4Addr)> = match cluster_ip {
            Some(ip) => {
                self.add(Rr::A { name: fqdn.clone(), ip });
                self.add(Rr::Ptr { name: reverse_name(ip), target: fqdn.clone() });
                vec![(fqdn.clone(), ip)]
            }
            None => eps
                .iter()
                .map(|(host, ip)| {
                    let own = format!("{host}.{fqdn}").to_ascii_lowercase();
                    self.add(Rr::A { name: fqdn.clone(), ip: *ip });
                    self.add(Rr::A { name: own.clone(), ip: *ip });
                    self.add(Rr::Ptr { name: reverse_name(*ip), target: own.clone() });
                    (own, *ip)
                })
                .collect(),
        };
        // Named ports: `_port._proto.<service>`, pointing at the ClusterIP name or at each endpoint.
        for p in spec.ports.iter().flatten() {
            let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) else { continue };
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            let srv = format!("_{port_name}._{proto}.{fqdn}").to_ascii_lowercase();
            self.touch(&srv);
            let weight = if targets.is_empty() { 100 } else { (100 / targets.len()).max(1) as u16 };
            let port = if cluster_ip.is_some() { p.port } else { target_port(p) };
            for (target, _) in &targets {
                self.add(Rr::Srv { name: srv.clone(), priority: 0, weight, port: port as u16, target: target.clone() });
            }
        }
    }

    /// Record that a name exists (and so do its parents inside the domain).
    fn touch(&mut self, name: &str) {
        self.names.entry(name.to_string()).or_default();
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() < self.domain.len() {
                break;
            }
            self.parents.insert(parent.to_string());
            rest = parent;
        }
    }

    fn add(&mut self, rr: Rr) {
        let name = match &rr {
            Rr::A { name, .. } | Rr::Srv { name, .. } | Rr::Ptr { name, .. } => name.clone(),
        };
        if !name.ends_with(".in-addr.arpa") {
            self.touch(&name);
        }
        let v = self.names.entry(name).or_default();
        if !v.contains(&rr) {
            v.push(rr);
        }
    }

    /// Whether a name is inside the cluster domain (ours to answer, not to forward).
    pub fn in_domain(&self, name: &str) -> bool {
        let n = name.trim_end_matches('.');
        n.len() >= self.domain.len()
            && n[n.len() - self.domain.len()..].eq_ignore_ascii_case(&self.domain)
            && (n.len() == self.domain.len() || n.as_bytes()[n.len() - self.domain.len() - 1] == b'.')
    }

    /// The answer to `name`, type `qtype`.
    pub fn answer(&self, name: &str, qtype: QType) -> Answer {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ip) = self.pod_name(&n) {
            return match qtype {
                QType::A | QType::Any => Answer::Records(vec![Rr::A { name: n, ip }]),
                _ => Answer::NoData,
            };
        }
        let ours = self.in_domain(&n) || self.reverse_is_ours(&n);
        match self.names.get(&n) {
            Some(rrs) => {
                let found: Vec<Rr> = rrs.iter().filter(|r| qtype == QType::Any || r.qtype() == qtype).cloned().collect();
                if found.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records(found)
                }
            }
            None if self.parents.contains(&n) || n == self.domain => Answer::NoData,
            None if ours => Answer::NxDomain,
            None => Answer::NotOurs,
        }
    }

    /// `<a-b-c-d>.<namespace>.pod.<domain>`: the address in the name.
    fn pod_name(&self, n: &str) -> Option<Ipv4Addr> {
        let rest = n.strip_suffix(&self.domain)?.strip_suffix(".pod.")?;
        let (dashed, ns) = rest.split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        dashed.replace('-', ".").parse().ok()
    }

    /// A reverse name inside the cluster's ranges.
    fn reverse_is_ours(&self, n: &str) -> bool {
        let Some(rest) = n.strip_suffix(".in-addr.arpa") else { return false };
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return false;
        }
        let ip: Option<Ipv4Addr> = format!("{}.{}.{}.{}", parts[3], parts[2], parts[1], parts[0]).parse().ok();
        ip.is_some_and(|ip| self.reverse.iter().any(|c| c.contains(ip)))
    }

    /// How many names (with records) the tables hold.
    pub fn len(&self) -> usize {
        self.names.values().filter(|v| !v.is_empty()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A headless service's SRV records point at the endpoints, so at the port they listen on.
fn target_port(p: &crate::api::ServicePort) -> i32 {
    match &p.target_port {
        Some(crate::api::IntOrString::Int(n)) => *n,
        _ => p.port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"clusterIP": ip, "ports": ports}}))
            .unwrap()
    }

    fn slice(svc: &str, eps: &[(&str, bool)]) -> EndpointSlice {
        let endpoints: Vec<_> = eps.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints
        }))
        .unwrap()
    }

    fn records() -> Records {
        let web = svc("web", "10.96.0.5", json!([{"name": "http", "port": 80, "targetPort": 8080}]));
        let db = svc("db", "None", json!([{"name": "pg", "port": 5432, "targetPort": 5433}]));
        let slices =
            [slice("web", &[("10.244.0.3", true)]), slice("db", &[("10.244.0.7", true), ("10.244.1.3", true), ("10.244.1.9", false)])];
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        let ranges = ["10.96.0.0/16".parse().unwrap(), "10.244.0.0/16".parse().unwrap()];
        Records::build("cluster.local", &ranges, [&web, &db], &refs)
    }

    fn a(name: &str, ip: &str) -> Rr {
        Rr::A { name: name.into(), ip: ip.parse().unwrap() }
    }

    #[test]
    fn a_service_is_its_cluster_ip_in_any_case_with_or_without_the_dot() {
        let r = records();
        let want = Answer::Records(vec![a("web.default.svc.cluster.local", "10.96.0.5")]);
        assert_eq!(r.answer("web.default.svc.cluster.local.", QType::A), want);
        assert_eq!(r.answer("WEB.Default.svc.cluster.local", QType::A), want);
    }

    #[test]
    fn a_headless_service_is_every_ready_endpoint() {
        let r = records();
        assert_eq!(
            r.answer("db.default.svc.cluster.local", QType::A),
            Answer::Records(vec![a("db.default.svc.cluster.local", "10.244.0.7"), a("db.default.svc.cluster.local", "10.244.1.3")])
        );
        assert_eq!(
            r.answer("10-244-1-3.db.default.svc.cluster.local", QType::A),
            Answer::Records(vec![a("10-244-1-3.db.default.svc.cluster.local", "10.244.1.3")])
        );
        assert_eq!(r.answer("10-244-1-9.db.default.svc.cluster.local", QType::A), Answer::NxDomain, "not ready");
    }

    #[test]
    fn named_ports_are_srv_records() {
        let r = records();
        assert_eq!(
            r.answer("_http._tcp.web.default.svc.cluster.local", QType::Srv),
            Answer::Records(vec![Rr::Srv {
                name: "_http._tcp.web.default.svc.cluster.local".into(),
                priority: 0,
                weight: 100,
                port: 80,
                target: "web.default.svc.cluster.local".into()
            }])
        );
        let Answer::Records(db) = r.answer("_pg._tcp.db.default.svc.cluster.local", QType::Srv) else { panic!() };
        assert_eq!(db.len(), 2);
        assert!(db.iter().all(|s| matches!(s, Rr::Srv { port: 5433, weight: 50, .. })), "{db:?}");
    }

    #[test]
    fn pods_by_dashed_ip() {
        let r = records();
        assert_eq!(
            r.answer("10-244-0-9.default.pod.cluster.local", QType::A),
            Answer::Records(vec![a("10-244-0-9.default.pod.cluster.local", "10.244.0.9")])
        );
        assert_eq!(r.answer("10-244-0.default.pod.cluster.local", QType::A), Answer::NxDomain);
    }

    #[test]
    fn reverse_names_of_cluster_ips_and_endpoints() {
        let r = records();
        assert_eq!(
            r.answer("5.0.96.10.in-addr.arpa.", QType::Ptr),
            Answer::Records(vec![Rr::Ptr { name: "5.0.96.10.in-addr.arpa".into(), target: "web.default.svc.cluster.local".into() }])
        );
        assert_eq!(
            r.answer(&reverse_name("10.244.0.7".parse().unwrap()), QType::Ptr),
            Answer::Records(vec![Rr::Ptr {
                name: "7.0.244.10.in-addr.arpa".into(),
                target: "10-244-0-7.db.default.svc.cluster.local".into()
            }])
        );
        assert_eq!(r.answer("99.0.96.10.in-addr.arpa", QType::Ptr), Answer::NxDomain, "inside the service range");
        assert_eq!(r.answer("1.2.0.192.in-addr.arpa", QType::Ptr), Answer::NotOurs, "outside: forwarded");
    }

    #[test]
    fn nxdomain_nodata_and_not_ours() {
        let r = records();
        assert_eq!(r.answer("nope.default.svc.cluster.local", QType::A), Answer::NxDomain);
        assert_eq!(r.answer("web.default.svc.cluster.local", QType::Other), Answer::NoData, "AAAA of a service");
        assert_eq!(r.answer("default.svc.cluster.local", QType::A), Answer::NoData, "a namespace exists as a parent");
        assert_eq!(r.answer("cluster.local", QType::A), Answer::NoData);
        assert_eq!(r.answer("web.default.svc.cluster.local.default.svc.cluster.local", QType::A), Answer::NxDomain, "search path tries");
        assert_eq!(r.answer("example.com", QType::A), Answer::NotOurs);
        assert_eq!(r.answer("notcluster.local", QType::A), Answer::NotOurs);
        assert!(r.in_domain("x.cluster.local") && !r.in_domain("xcluster.local"));
    }

    #[test]
    fn services_come_and_go_with_the_tables() {
        let none = Records::build("cluster.local", &[], [], &[]);
        assert_eq!(none.answer("web.default.svc.cluster.local", QType::A), Answer::NxDomain);
        assert!(none.is_empty());
        assert!(!records().is_empty());
    }
}
