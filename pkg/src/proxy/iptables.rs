//! kube-proxy's iptables mode: from service ports to the text `iptables-restore` loads.
//!
//! The chains, as in every "how kube-proxy works" blog post:
//!
//! ```text
//! PREROUTING, OUTPUT  -> KUBE-SERVICES     one rule pair per service port (mark, then jump)
//!                        ... last rule: -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
//! KUBE-NODEPORTS      -> KUBE-SVC-<hash>   per nodePort: mark for SNAT, then jump
//! KUBE-SVC-<hash>     -> KUBE-SEP-<hash>   one per endpoint, `-m statistic` picks evenly
//! KUBE-SEP-<hash>     DNAT to podIP:targetPort (and mark hairpin traffic)
//! POSTROUTING         -> KUBE-POSTROUTING  MASQUERADE what KUBE-MARK-MASQ marked (0x4000)
//! ```
//!
//! A service port without endpoints to use gets no KUBE-SVC chain; instead the `filter`
//! table REJECTs its traffic, so clients fail at once rather than hang.
//!
//! Rendering is split per service ([`ServiceChains`]) so a sync can rewrite only the chains
//! of services that changed, plus the two dispatch chains whole (kube-proxy's partial
//! sync, KEP-3453): on nf_tables, reloading 68k rules takes seconds, one service's chains
//! milliseconds.
//!
//! Upstream: pkg/proxy/iptables/proxier.go

use super::{hash16, ServicePort};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The mark that asks KUBE-POSTROUTING to masquerade a packet.
pub const MASQ_MARK: &str = "0x4000/0x4000";

impl ServicePort {
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", hash16(&format!("{}{}", self.name, self.protocol)))
    }
    pub fn sep_chain(&self, ip: &str, port: u16) -> String {
        format!("KUBE-SEP-{}", hash16(&format!("{}{}{ip}:{port}", self.name, self.protocol)))
    }
}

/// The chains one service port owns, rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceChains {
    /// Chain names (KUBE-SVC-*, KUBE-SEP-*), declared before any rule.
    pub chains: Vec<String>,
    /// The `-A` lines of those chains.
    pub rules: Vec<String>,
}

fn comment(s: &str) -> String {
    // Names are validated DNS labels; strip quotes anyway so the line always parses.
    format!("-m comment --comment \"{}\"", s.replace('"', ""))
}

/// The KUBE-SVC and KUBE-SEP chains of one service port (none without endpoints).
pub fn render_service(sp: &ServicePort) -> ServiceChains {
    let mut out = ServiceChains::default();
    if sp.endpoints.is_empty() {
        return out;
    }
    let svc = sp.svc_chain();
    out.chains.push(svc.clone());
    let n = sp.endpoints.len();
    for (i, (ip, port)) in sp.endpoints.iter().enumerate() {
        let sep = sp.sep_chain(ip, *port);
        let c = comment(&format!("{} -> {ip}:{port}", sp.name));
        // Endpoint i of n is taken with probability 1/(n-i) of what is left: evenly overall.
        let rule = if i + 1 < n {
            format!("-A {svc} {c} -m statistic --mode random --probability {:.10} -j {sep}", 1.0 / (n - i) as f64)
        } else {
            format!("-A {svc} {c} -j {sep}")
        };
        out.rules.push(rule);
    }
    for (ip, port) in &sp.endpoints {
        let sep = sp.sep_chain(ip, *port);
        let c = comment(&sp.name);
        out.chains.push(sep.clone());
        // A pod reaching itself through the service must be SNATed, or it answers itself directly.
        out.rules.push(format!("-A {sep} {c} -s {ip}/32 -j KUBE-MARK-MASQ"));
        out.rules.push(format!("-A {sep} {c} -m {p} -p {p} -j DNAT --to-destination {ip}:{port}", p = sp.protocol));
    }
    out
}

/// Everything a sync writes, and what it leaves alone.
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    /// The text fed to `iptables-restore --noflush`.
    pub text: String,
    /// Number of `-A` lines in it.
    pub rules: usize,
}

/// Render a sync. `write(name)` says whether a service port's own chains are written this
/// time (all in a full sync; only changed ones in a partial sync); `delete` lists chains to
/// remove (those of services that went away). KUBE-SERVICES, KUBE-NODEPORTS,
/// KUBE-MARK-MASQ, KUBE-POSTROUTING and the filter chains are always written whole.
pub fn render(
    cluster_cidr: &str,
    ports: &BTreeMap<(String, String), ServicePort>,
    rendered: &BTreeMap<(String, String), ServiceChains>,
    write: impl Fn(&(String, String)) -> bool,
    delete: &[String],
) -> Ruleset {
    let mut head = String::from("*nat\n");
    let mut body = String::new();
    let mut rules = 0;
    let mut add = |body: &mut String, line: String| {
        body.push_str(&line);
        body.push('\n');
        rules += 1;
    };
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(head, ":{c} - [0:0]");
    }
    add(&mut body, "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into());
    add(&mut body, "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".into());
    add(&mut body, format!("-A KUBE-POSTROUTING {} -j MASQUERADE --random-fully", comment("kubernetes service traffic requiring SNAT")));
    add(&mut body, format!("-A KUBE-MARK-MASQ -j MARK --or-mark {}", &MASQ_MARK[..6]));
    let mut nodeports = vec![];
    let mut service_rules = vec![];
    for (key, sp) in ports {
        let chains = &rendered[key];
        if chains.chains.is_empty() {
            continue;
        }
        let svc = sp.svc_chain();
        let p = &sp.protocol;
        if let Some(ip) = &sp.cluster_ip {
            let c = comment(&format!("{} cluster IP", sp.name));
            let m = format!("-d {ip}/32 -p {p} -m {p} --dport {}", sp.port);
            add(&mut body, format!("-A KUBE-SERVICES {c} {m} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"));
            add(&mut body, format!("-A KUBE-SERVICES {c} {m} -j {svc}"));
        }
        if let Some(np) = sp.node_port {
            let c = comment(&sp.name);
            nodeports.push(format!("-A KUBE-NODEPORTS {c} -p {p} -m {p} --dport {np} -j KUBE-MARK-MASQ"));
            nodeports.push(format!("-A KUBE-NODEPORTS {c} -p {p} -m {p} --dport {np} -j {svc}"));
        }
        if write(key) {
            for ch in &chains.chains {
                let _ = writeln!(head, ":{ch} - [0:0]");
            }
            service_rules.extend(chains.rules.iter().cloned());
        }
    }
    add(
        &mut body,
        format!(
            "-A KUBE-SERVICES {} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
            comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
        ),
    );
    for r in nodeports.into_iter().chain(service_rules) {
        add(&mut body, r);
    }
    for ch in delete {
        let _ = writeln!(head, ":{ch} - [0:0]");
    }
    let mut text = head + &body;
    for ch in delete {
        let _ = writeln!(text, "-X {ch}");
    }
    text.push_str("COMMIT\n*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n");
    for sp in ports.values().filter(|sp| sp.endpoints.is_empty()) {
        let p = &sp.protocol;
        let c = comment(&format!("{} has no endpoints", sp.name));
        if let Some(ip) = &sp.cluster_ip {
            let _ = writeln!(
                text,
                "-A KUBE-SERVICES {c} -d {ip}/32 -p {p} -m {p} --dport {} -j REJECT --reject-with icmp-port-unreachable",
                sp.port
            );
            rules += 1;
        }
        if let Some(np) = sp.node_port {
            let _ =
                writeln!(text, "-A KUBE-EXTERNAL-SERVICES {c} -m addrtype --dst-type LOCAL -p {p} -m {p} --dport {np} -j REJECT --reject-with icmp-port-unreachable");
            rules += 1;
        }
    }
    text.push_str("COMMIT\n");
    Ruleset { text, rules }
}

/// Remembers what the last successful sync wrote, to plan the next one.
#[derive(Default)]
pub struct Planner {
    applied: BTreeMap<(String, String), ServiceChains>,
}

/// A planned sync: the text to load and the state it leads to once loaded.
pub struct Plan {
    pub ruleset: Ruleset,
    /// How many service ports had their chains written.
    pub written: usize,
    /// Chains removed.
    pub deleted: Vec<String>,
    next: BTreeMap<(String, String), ServiceChains>,
}

impl Planner {
    /// Plan a sync to `ports`. A full sync writes every chain and removes every KUBE-SVC /
    /// KUBE-SEP chain in `existing` (read from `iptables-save`) that is not wanted; a
    /// partial one writes only the service ports whose chains differ from the last sync.
    pub fn plan(&self, cluster_cidr: &str, ports: &BTreeMap<(String, String), ServicePort>, full: bool, existing: &[String]) -> Plan {
        let next: BTreeMap<_, _> = ports.iter().map(|(k, sp)| (k.clone(), render_service(sp))).collect();
        let wanted: std::collections::HashSet<&String> = next.values().flat_map(|c| &c.chains).collect();
        let mut deleted: Vec<String> = self.applied.values().flat_map(|c| &c.chains).filter(|c| !wanted.contains(c)).cloned().collect();
        if full {
            deleted.extend(
                existing.iter().filter(|c| (c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-")) && !wanted.contains(c)).cloned(),
            );
        }
        deleted.sort();
        deleted.dedup();
        let write = |k: &(String, String)| full || self.applied.get(k) != next.get(k);
        let written = next.iter().filter(|(k, c)| !c.chains.is_empty() && write(k)).count();
        let ruleset = render(cluster_cidr, ports, &next, write, &deleted);
        Plan { ruleset, written, deleted, next }
    }

    /// Record that a plan was loaded.
    pub fn applied(&mut self, plan: Plan) {
        self.applied = plan.next;
    }

    /// Forget what was applied (after a failure): the next plan must be full.
    pub fn reset(&mut self) {
        self.applied.clear();
    }
}

/// The jumps from the built-in chains into ours, as (table, chain, rule arguments). They
/// are ensured one by one (`-C`, then `-I` if missing) so each exists exactly once.
pub fn jumps() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let c = |s: &str| vec!["-m".to_string(), "comment".into(), "--comment".into(), s.to_string()];
    let with = |mut v: Vec<String>, rest: &[&str]| {
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    vec![
        ("nat", "PREROUTING", with(c("kubernetes service portals"), &["-j", "KUBE-SERVICES"])),
        ("nat", "OUTPUT", with(c("kubernetes service portals"), &["-j", "KUBE-SERVICES"])),
        ("nat", "POSTROUTING", with(c("kubernetes postrouting rules"), &["-j", "KUBE-POSTROUTING"])),
        (
            "filter",
            "INPUT",
            with(
                c("kubernetes externally-visible service portals"),
                &["-m", "conntrack", "--ctstate", "NEW", "-j", "KUBE-EXTERNAL-SERVICES"],
            ),
        ),
        ("filter", "FORWARD", with(c("kubernetes service portals"), &["-m", "conntrack", "--ctstate", "NEW", "-j", "KUBE-SERVICES"])),
        ("filter", "OUTPUT", with(c("kubernetes service portals"), &["-m", "conntrack", "--ctstate", "NEW", "-j", "KUBE-SERVICES"])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_base32_of_sha256() {
        // The chain every cluster has: the `kubernetes` service's https port.
        let sp = ServicePort {
            name: "default/kubernetes:https".into(),
            protocol: "tcp".into(),
            cluster_ip: None,
            port: 443,
            node_port: None,
            endpoints: vec![],
        };
        assert_eq!(sp.svc_chain(), "KUBE-SVC-NPX46M4PTMTKRN6Y");
        let h = hash16("default/web:80tcp");
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
        assert_eq!(h, hash16("default/web:80tcp"), "stable");
        assert_ne!(h, hash16("default/web:80udp"));
    }

    #[test]
    fn probabilities_are_exact() {
        let sp = ServicePort {
            name: "default/web:http".into(),
            protocol: "tcp".into(),
            cluster_ip: Some("10.96.0.10".into()),
            port: 80,
            node_port: None,
            endpoints: (1..=4).map(|i| (format!("10.244.0.{i}"), 8080)).collect(),
        };
        let r = render_service(&sp);
        let probs: Vec<&str> =
            r.rules.iter().filter_map(|l| l.split("--probability ").nth(1)).map(|s| s.split(' ').next().unwrap()).collect();
        assert_eq!(probs, ["0.2500000000", "0.3333333333", "0.5000000000"]);
        assert!(r.rules[3].ends_with(&format!("-j {}", sp.sep_chain("10.244.0.4", 8080))), "last is unconditional");
    }
}
