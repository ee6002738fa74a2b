//! What one proxy sync changed, in words and in rule lines — the part of
//! `/debug/proxy/history` that is a decision, not I/O.
//!
//! A learner scales a Deployment and wants to see which rules appear. Diffing whole
//! rulesets would cost what the largest one costs on every sync; instead only the service
//! ports that differ between two syncs are rendered again, old and new, and their lines
//! compared; and what changed about each port is said in words ([`summarize`]):
//! "default/whoami:http: endpoint 10.244.1.5:8080 removed".
//!
//! The lines are those the renderers write: in iptables mode the `-A` rules of a service
//! port's chains and its lines in the shared dispatch chains; in nftables mode `chain
//! <name>: <rule>`, the affinity sets and the verdict-map elements.
//!
//! Upstream: none — kube-proxy logs sync durations (`--v=2`) but keeps no history; the
//! closest it has is the `sync_proxy_rules_*` metrics in pkg/proxy/metrics.

use super::{iptables, nftables, Ports, ServicePort};
use std::collections::BTreeSet;

/// Rule lines added and removed between two syncs, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Which renderer's lines to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    Iptables,
    Nftables,
}

impl Lines {
    /// Every line `sp` contributes to the ruleset in this mode.
    pub fn of(self, sp: &ServicePort, cluster_cidr: &str) -> Vec<String> {
        match self {
            Lines::Iptables => {
                let c = iptables::render_service(sp, cluster_cidr);
                [c.rules, c.services, c.nodeports, c.filter].concat()
            }
            Lines::Nftables => {
                let r = nftables::render_service(sp, cluster_cidr);
                let chains = r.chains.iter().flat_map(|(name, rules)| rules.iter().map(move |rule| format!("chain {name}: {rule}")));
                let sets = r.sets.iter().map(|(name, def)| format!("set {name} {def}"));
                let elements = r.elements.iter().map(|(map, key, verdict)| format!("element {map} {{ {key} : {verdict} }}"));
                let hairpin = r.hairpin.iter().map(|ip| format!("element {} {{ {ip} . {ip} }}", nftables::HAIRPIN));
                chains.chain(sets).chain(elements).chain(hairpin).collect()
            }
        }
    }
}

/// The keys of ports added, removed or changed between `old` and `new`.
fn differing<'a>(old: &'a Ports, new: &'a Ports) -> BTreeSet<&'a (String, String)> {
    let changed = new.iter().filter(|(k, sp)| old.get(*k) != Some(*sp)).map(|(k, _)| k);
    changed.chain(old.keys().filter(|k| !new.contains_key(*k))).collect()
}

/// What a sync from `old` to `new` changes: a sentence per port that differs, and the
/// rule lines that differ between the two rulesets (rendering only those ports).
pub fn summarize(old: &Ports, new: &Ports, cluster_cidr: &str, lines: Lines) -> (Vec<String>, RuleDiff) {
    let keys = differing(old, new);
    (describe(old, new, &keys), lines_between(old, new, &keys, cluster_cidr, lines))
}

fn lines_between(old: &Ports, new: &Ports, keys: &BTreeSet<&(String, String)>, cluster_cidr: &str, lines: Lines) -> RuleDiff {
    let render =
        |ports: &Ports, k: &(String, String)| -> Vec<String> { ports.get(k).map(|sp| lines.of(sp, cluster_cidr)).unwrap_or_default() };
    let (mut before, mut after) = (BTreeSet::new(), BTreeSet::new());
    for k in keys {
        before.extend(render(old, k));
        after.extend(render(new, k));
    }
    RuleDiff { added: after.difference(&before).cloned().collect(), removed: before.difference(&after).cloned().collect() }
}

fn endpoint_words(list: &[(String, u16)]) -> BTreeSet<String> {
    list.iter().map(|(ip, port)| format!("{ip}:{port}")).collect()
}

/// One sentence per port that differs: added, removed, or what about it changed
/// (endpoints in and out, its local endpoints, its addresses and policies).
fn describe(old: &Ports, new: &Ports, keys: &BTreeSet<&(String, String)>) -> Vec<String> {
    let mut out = vec![];
    for &k in keys {
        let (Some(a), Some(b)) = (old.get(k), new.get(k)) else {
            let (sp, verb) = old.get(k).map_or_else(|| (&new[k], "added"), |sp| (sp, "removed"));
            out.push(format!("{} ({}): service port {verb}, {} endpoint(s)", sp.name, sp.protocol, sp.endpoints.len()));
            continue;
        };
        let (was, now) = (endpoint_words(&a.endpoints), endpoint_words(&b.endpoints));
        for e in now.difference(&was) {
            out.push(format!("{}: endpoint {e} added", b.name));
        }
        for e in was.difference(&now) {
            out.push(format!("{}: endpoint {e} removed", b.name));
        }
        if a.local_endpoints != b.local_endpoints {
            out.push(format!("{}: local endpoints {} -> {}", b.name, a.local_endpoints.len(), b.local_endpoints.len()));
        }
        let settings = |p: &ServicePort| (p.cluster_ip.clone(), p.node_port, p.internal_policy, p.external_policy, p.affinity_secs);
        if settings(a) != settings(b) {
            out.push(format!("{}: {:?} -> {:?}", b.name, settings(a), settings(b)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(endpoints: &[(&str, u16)]) -> ServicePort {
        ServicePort {
            name: "default/web:http".into(),
            protocol: "tcp".into(),
            cluster_ip: Some("10.96.0.10".into()),
            port: 80,
            node_port: Some(30001),
            endpoints: endpoints.iter().map(|(ip, p)| (ip.to_string(), *p)).collect(),
            ..Default::default()
        }
    }

    fn rule_diff(old: &Ports, new: &Ports, cidr: &str, lines: Lines) -> RuleDiff {
        summarize(old, new, cidr, lines).1
    }

    fn port_changes(old: &Ports, new: &Ports) -> Vec<String> {
        summarize(old, new, "10.244.0.0/16", Lines::Iptables).0
    }

    fn ports(list: Vec<ServicePort>) -> Ports {
        list.into_iter().map(|sp| ((sp.name.clone(), sp.protocol.clone()), std::sync::Arc::new(sp))).collect()
    }

    #[test]
    fn an_endpoint_removed_shows_its_chain_going_and_the_balance_rewritten() {
        let old = ports(vec![port(&[("10.244.1.5", 8080), ("10.244.2.7", 8080)])]);
        let new = ports(vec![port(&[("10.244.2.7", 8080)])]);
        let d = rule_diff(&old, &new, "10.244.0.0/16", Lines::Iptables);
        assert!(d.removed.iter().any(|l| l.contains("--to-destination 10.244.1.5:8080")), "{d:?}");
        assert!(d.removed.iter().any(|l| l.contains("--probability 0.5")), "{d:?}");
        assert!(!d.added.iter().chain(&d.removed).any(|l| l.contains("DNAT --to-destination 10.244.2.7")), "unchanged: {d:?}");
        assert_eq!(port_changes(&old, &new), ["default/web:http: endpoint 10.244.1.5:8080 removed"]);
        let n = rule_diff(&old, &new, "10.244.0.0/16", Lines::Nftables);
        assert!(n.removed.iter().any(|l| l.contains("numgen random mod 2 map { 0 : 10.244.1.5 . 8080")), "{n:?}");
        assert!(n.added.iter().any(|l| l.contains("dnat to 10.244.2.7:8080")), "{n:?}");
        assert!(n.removed.iter().any(|l| l == "element hairpin { 10.244.1.5 . 10.244.1.5 }"), "{n:?}");
    }

    #[test]
    fn nothing_changed_means_no_lines_and_no_words() {
        let a = ports(vec![port(&[("10.244.1.5", 8080)])]);
        assert_eq!(rule_diff(&a, &a.clone(), "10.244.0.0/16", Lines::Nftables), RuleDiff::default());
        assert!(port_changes(&a, &a.clone()).is_empty());
    }

    #[test]
    fn ports_added_and_removed_are_named() {
        let a = ports(vec![port(&[("10.244.1.5", 8080)])]);
        let none = Ports::new();
        assert_eq!(port_changes(&none, &a), ["default/web:http (tcp): service port added, 1 endpoint(s)"]);
        assert_eq!(port_changes(&a, &none), ["default/web:http (tcp): service port removed, 1 endpoint(s)"]);
        let d = rule_diff(&a, &none, "10.244.0.0/16", Lines::Nftables);
        assert!(d.added.is_empty() && d.removed.iter().any(|l| l.starts_with("element service-nodeports")), "{d:?}");
    }
}
