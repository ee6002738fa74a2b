//! Explain a packet: where does a connection from `src` to `dst:port` go on this node,
//! and why? Answered from the ruleset read back from the kernel — `iptables-save` and
//! `nft -j list table ip ownkube` — and the node's routes, never from what the proxy
//! meant to write, so a rule someone added by hand, or one the proxy failed to write,
//! shows up in the answer.
//!
//! Layout:
//! - [`rules`]: one model of chains, rules, maps and sets for both rule languages;
//! - [`iptables_save`] and [`nft_json`]: the two readers;
//! - [`host`]: the node's routes (`ip -j route show table all`);
//! - [`walk`]: the packet through the hooks, every random choice followed;
//! - [`query`]: the question from URL parameters, or a `400` Status naming each bad one;
//! - here: the question ([`Packet`]), the answer ([`Explanation`], one [`Path`] per
//!   possible outcome, with its probability), and the answer in words ([`Explanation::text`]).
//!
//! What it assumes: the packet is the first of a new connection (conntrack state `new`;
//! later packets follow the translation chosen for the first); a ClientIP affinity set
//! is read as the kernel holds it now.
//!
//! Upstream: none — kube-proxy has no explainer; the nearest tools are
//! `nft monitor trace` and `xtables-monitor --trace`, which show one real packet.

pub mod host;
pub mod iptables_save;
pub mod nft_json;
pub mod query;
pub mod rules;
pub mod walk;

use host::Host;
use rules::{Hook, Rules};
use serde::Serialize;
use std::net::Ipv4Addr;
use walk::{Exit, Flow, Walk};

/// The question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub proto: String,
    pub src: Ipv4Addr,
    pub sport: Option<u16>,
    pub dst: Ipv4Addr,
    pub port: u16,
}

/// The protocols a Service port can have.
pub const PROTOCOLS: [&str; 3] = ["tcp", "udp", "sctp"];

/// A rule that matched, and what it did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub hook: Hook,
    pub table: String,
    pub chain: String,
    pub rule: String,
    pub effect: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Leaves this node's rules towards `destination` (or is delivered to the node itself).
    Delivered,
    Dropped,
    /// Refused: the client gets an ICMP error or a TCP reset at once.
    Rejected,
}

/// Where the packet goes after the rules, by the node's routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub dev: String,
    pub via: Option<Ipv4Addr>,
    /// The node's own address: the packet is delivered to a process on the node.
    pub local: bool,
}

/// Source NAT of this outcome and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Masquerade {
    /// The source address the endpoint sees.
    pub source: Option<Ipv4Addr>,
    /// The rules that marked the packet for it (`KUBE-MARK-MASQ`, `mark-for-masquerade`).
    pub marked_by: Vec<String>,
    /// The rule that did it.
    pub by: String,
}

/// One possible outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Path {
    pub probability: f64,
    pub verdict: Verdict,
    /// `ip:port` after destination NAT (the pod, or the address asked for if none).
    pub destination: String,
    pub dnat: bool,
    pub route: Option<Hop>,
    pub masquerade: Option<Masquerade>,
    /// The source address the destination sees.
    pub source: Ipv4Addr,
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub packet: Packet,
    /// `"this node"`, or the device the packet comes in on.
    pub arrives: String,
    pub paths: Vec<Path>,
}

/// Walk `p` through `rules` on a node with `host`'s routes.
pub fn explain(rules: &Rules, host: &Host, p: &Packet) -> Explanation {
    let w = Walk { rules, host };
    let mut f = Flow::new(p);
    let from_node = host.is_local(p.src);
    let arrives = if from_node {
        "this node".to_string()
    } else {
        let dev = host.route(p.src).map(|r| r.dev.clone());
        f.in_iface = dev.clone();
        dev.unwrap_or_else(|| "an unknown device".into())
    };
    let first = if from_node {
        // A local process's packet is routed before OUTPUT (and again after a DNAT).
        f.out_iface = host.route(p.dst).map(|r| r.dev.clone());
        Hook::Output
    } else {
        Hook::Prerouting
    };
    let mut paths: Vec<Path> = w.hook(first, vec![f]).into_iter().flat_map(|(f, e)| after_first(&w, from_node, f, e)).collect();
    paths.sort_by(|a, b| b.probability.total_cmp(&a.probability).then(a.destination.cmp(&b.destination)));
    Explanation { packet: p.clone(), arrives, paths }
}

/// Route, then the remaining hooks, for one outcome of the first hook.
fn after_first(w: &Walk, from_node: bool, mut f: Flow, e: Exit) -> Vec<Path> {
    if let Some(v) = stopped(&e) {
        return vec![finish(w, f, v)];
    }
    let route = w.host.route(f.dst).cloned();
    f.out_iface = route.as_ref().map(|r| if r.local { "lo".to_string() } else { r.dev.clone() });
    let to_node = route.as_ref().is_some_and(|r| r.local);
    let hooks: &[Hook] = match (from_node, to_node) {
        (false, true) => &[Hook::Input],
        (false, false) => &[Hook::Forward, Hook::Postrouting],
        (true, true) => &[Hook::Postrouting, Hook::Input],
        (true, false) => &[Hook::Postrouting],
    };
    let mut flows = vec![(f, Exit::Accept)];
    for hook in hooks {
        let (go, done): (Vec<_>, Vec<_>) = flows.into_iter().partition(|(_, e)| stopped(e).is_none());
        flows = done;
        flows.extend(w.hook(*hook, go.into_iter().map(|(f, _)| f).collect()));
    }
    flows.into_iter().map(|(f, e)| finish(w, f, stopped(&e).unwrap_or(Verdict::Delivered))).collect()
}

fn stopped(e: &Exit) -> Option<Verdict> {
    match e {
        Exit::Drop => Some(Verdict::Dropped),
        Exit::Reject => Some(Verdict::Rejected),
        _ => None,
    }
}

fn finish(w: &Walk, f: Flow, verdict: Verdict) -> Path {
    let route = w.host.route(f.dst).map(|r| Hop { dev: r.dev.clone(), via: r.gateway, local: r.local });
    let masquerade = (f.masquerade || f.snat.is_some()).then(|| {
        let by = f
            .steps
            .iter()
            .rev()
            .find(|s| s.effect == "masquerade" || s.effect.starts_with("snat"))
            .map(|s| format!("{}: {}", s.chain, s.rule));
        let next_hop = route.as_ref().and_then(|r| r.via).unwrap_or(f.dst);
        let source = f.snat.or_else(|| route.as_ref().and_then(|r| w.host.source_for(&r.dev, next_hop)));
        Masquerade { source, marked_by: f.marked_by.clone(), by: by.unwrap_or_default() }
    });
    let source = masquerade.as_ref().and_then(|m| m.source).unwrap_or(f.src);
    Path {
        probability: f.probability,
        verdict,
        destination: format!("{}:{}", f.dst, f.dport),
        dnat: f.dnat,
        route: if verdict == Verdict::Delivered { route } else { None },
        masquerade,
        source,
        steps: f.steps,
        notes: f.notes,
    }
}

impl Explanation {
    /// The answer in words: one paragraph per outcome, then the rules it met.
    pub fn text(&self) -> String {
        let p = &self.packet;
        let mut s = format!(
            "{} {}{} -> {}:{}, the first packet of a new connection, arriving from {}\n",
            p.proto,
            p.src,
            p.sport.map(|x| format!(":{x}")).unwrap_or_default(),
            p.dst,
            p.port,
            self.arrives
        );
        s += &format!("{} possible outcome{}:\n", self.paths.len(), if self.paths.len() == 1 { "" } else { "s" });
        for (i, path) in self.paths.iter().enumerate() {
            s += &format!("\n[{}] {:.1}%  {}\n", i + 1, path.probability * 100.0, path.summary());
            for st in &path.steps {
                s += &format!(
                    "    {:<11} {:<16} {:<28} {}\n        => {}\n",
                    format!("{:?}", st.hook).to_lowercase(),
                    st.table,
                    st.chain,
                    st.rule,
                    st.effect
                );
            }
            for n in &path.notes {
                s += &format!("    note: {n}\n");
            }
        }
        s
    }
}

impl Path {
    /// One line: what happens and why.
    pub fn summary(&self) -> String {
        let how = match self.verdict {
            Verdict::Dropped => return "dropped".into(),
            Verdict::Rejected => return "rejected: the client is refused at once".into(),
            Verdict::Delivered => match &self.route {
                Some(r) if r.local => format!("delivered to this node at {}", self.destination),
                Some(Hop { dev, via: Some(gw), .. }) => format!("sent to {} via {gw} on {dev} (through another host)", self.destination),
                Some(Hop { dev, .. }) => format!("sent to {} on {dev} (this node's network)", self.destination),
                None => format!("to {}: no route", self.destination),
            },
        };
        let nat = if self.dnat { "after DNAT; " } else { "" };
        let masq = match &self.masquerade {
            Some(m) => {
                let why = m.marked_by.first().map(|r| format!("marked by {r}")).unwrap_or_else(|| format!("by {}", m.by));
                format!("masqueraded: the destination sees {} ({why})", self.source)
            }
            None => format!("not masqueraded: the destination sees {}", self.source),
        };
        format!("{how}; {nat}{masq}")
    }
}

#[cfg(test)]
mod tests;
