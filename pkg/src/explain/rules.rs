//! One model for both rule languages: the kernel's ruleset, read back from
//! `iptables-save` ([`super::iptables_save`]) or `nft -j list table` ([`super::nft_json`]),
//! becomes base chains at hooks, chains of rules, each rule a list of conditions and one
//! action, plus the maps and sets rules look things up in. The walk
//! ([`super::walk`]) then needs to know only this.
//!
//! Only what ownkube, Docker and the kubelet write is understood; a condition outside it is
//! kept as [`Cond::Unknown`] and never matches, and the walk says so, rather than guessing.
//!
//! Upstream: the kernel's own netfilter evaluation (net/netfilter/nf_tables_core.c,
//! net/ipv4/netfilter/ip_tables.c).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// An IPv4 prefix, `10.244.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net {
    pub fn host(addr: Ipv4Addr) -> Net {
        Net { addr, len: 32 }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len.min(32))) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr = a.parse().map_err(|_| format!("not an IPv4 address: {a}"))?;
        let len = l.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("not a prefix length: {l}"))?;
        Ok(Net { addr, len })
    }
}

/// Which address of the packet a condition looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Something a packet's header, mark or route has: what one part of a rule tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Addr(Side, Net),
    /// The address is in a named set (nft `@set`, iptables `-m recent --rcheck`).
    InSet(Side, String),
    /// These fields, joined, are an element of a named set (nft `ip saddr . ip daddr @set`).
    InConcatSet(Vec<Field>, String),
    /// The connection's destination was rewritten (nft `ct status dnat`).
    CtDnat,
    Proto(String),
    Port(Side, u16),
    /// The address is one of this node's own (`-m addrtype --dst-type LOCAL`, `fib daddr type local`).
    Local(Side),
    /// `mark & mask == value`.
    Mark {
        value: u32,
        mask: u32,
    },
    /// Conntrack state: the walk explains a connection's first packet, so only `new` holds.
    CtState(Vec<String>),
    InIface(String),
    OutIface(String),
    /// `-m statistic --mode random --probability P`: the walk follows both outcomes.
    Random(f64),
    Unknown(String),
    /// Any condition, inverted (`!`, `!=`).
    Not(Box<Cond>),
}

/// What a rule does when all its conditions hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Non-terminal: a comment, a counter, a log line, a set update.
    Continue,
    Jump(String),
    Goto(String),
    Return,
    Accept,
    Drop,
    Reject,
    /// `mark = (mark & !mask) ^ value`, which is what both `--set-xmark` and nft's `|`/`^` do.
    Mark {
        value: u32,
        mask: u32,
    },
    Dnat(Ipv4Addr, Option<u16>),
    Snat(Ipv4Addr),
    Masquerade,
    /// A verdict map: the packet's fields named by `key`, looked up in a map.
    Vmap {
        key: Vec<Field>,
        map: String,
    },
    /// `numgen random mod N vmap { 0 : ..., 1 : ... }`: each verdict with probability 1/N.
    Numgen(Vec<Action>),
}

/// One field of a map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Addr(Side),
    Proto,
    Port(Side),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The rule as its tool prints it, to show the learner.
    pub text: String,
    pub conds: Vec<Cond>,
    pub action: Action,
}

/// The netfilter hooks, in the order a packet can meet them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// `nat` base chains take part only until a translation is chosen; `filter` ones always.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BaseChain {
    /// `iptables nat`, `nft ip ownkube`: which ruleset and table the chain is in.
    pub table: String,
    pub chain: String,
    pub hook: Hook,
    pub priority: i32,
    pub kind: ChainType,
    /// What happens at the chain's end: accept unless the policy is drop.
    pub policy_drop: bool,
}

/// One element of a verdict map: its key's values (`["10.96.0.10", "tcp", "80"]`) and verdict.
pub type MapElement = (Vec<String>, Action);

/// A ruleset: base chains, chains by `(table, name)`, verdict maps and address sets.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub base: Vec<BaseChain>,
    pub chains: BTreeMap<(String, String), Vec<Rule>>,
    /// Map name → (key values, verdict), keys as the strings the walk compares.
    pub maps: BTreeMap<(String, String), Vec<MapElement>>,
    pub sets: BTreeMap<(String, String), Vec<Ipv4Addr>>,
}

impl Rules {
    /// Add another ruleset's chains (both iptables' tables and nft's ownkube table are
    /// at the same hooks of one kernel).
    pub fn merge(&mut self, other: Rules) {
        self.base.extend(other.base);
        self.chains.extend(other.chains);
        self.maps.extend(other.maps);
        self.sets.extend(other.sets);
    }

    /// The base chains at a hook, in the order the kernel runs them (by priority).
    pub fn at(&self, hook: Hook) -> Vec<&BaseChain> {
        let mut v: Vec<&BaseChain> = self.base.iter().filter(|b| b.hook == hook).collect();
        v.sort_by_key(|b| b.priority);
        v
    }
}
