//! The walk: a connection's first packet through the node's base chains, hook by hook,
//! as the kernel would take it. Where the kernel rolls a die (`-m statistic`, `numgen
//! random`) the walk follows every outcome, each with its probability, so one question
//! ("where does 10.244.1.5 → 10.96.0.10:80 go?") has as many answers as there are
//! endpoints.
//!
//! ```text
//! from another host or a pod:  PREROUTING → route → FORWARD → POSTROUTING   (or → INPUT, to the node itself)
//! from the node itself:        OUTPUT → route → POSTROUTING (→ INPUT, to its own address)
//! ```
//!
//! In each hook the base chains run by priority; a `nat` chain runs only until a
//! translation is chosen (the kernel consults nat chains once per connection and
//! direction). `jump` returns, `goto` does not; a base chain's end is its policy.
//!
//! Upstream: net/netfilter/nf_tables_core.c (nft_do_chain), net/netfilter/nf_nat_core.c

use super::host::Host;
use super::rules::{Action, ChainType, Cond, Field, Hook, Rules, Side};
use super::{Packet, Step};
use std::net::Ipv4Addr;

/// One possible history of the packet, so far.
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub sport: Option<u16>,
    pub proto: String,
    pub mark: u32,
    pub probability: f64,
    pub in_iface: Option<String>,
    pub out_iface: Option<String>,
    pub hook: Hook,
    pub dnat: bool,
    pub snat: Option<Ipv4Addr>,
    pub masquerade: bool,
    /// The rules that set a mark bit (why a packet is masqueraded later).
    pub marked_by: Vec<String>,
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
}

impl Flow {
    pub fn new(p: &Packet) -> Flow {
        Flow {
            src: p.src,
            dst: p.dst,
            dport: p.port,
            sport: p.sport,
            proto: p.proto.clone(),
            mark: 0,
            probability: 1.0,
            in_iface: None,
            out_iface: None,
            hook: Hook::Prerouting,
            dnat: false,
            snat: None,
            masquerade: false,
            marked_by: vec![],
            steps: vec![],
            notes: vec![],
        }
    }
    fn addr(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::Src => self.src,
            Side::Dst => self.dst,
        }
    }
}

/// How a chain was left.
#[derive(Clone, Debug, PartialEq)]
pub enum Exit {
    /// Its end, or a `return`.
    Return,
    Accept,
    /// A NAT translation was chosen (which also accepts, for this hook's nat chains).
    Nat,
    Drop,
    Reject,
}

/// What one condition says of a packet.
#[derive(Clone, Debug, PartialEq)]
enum Truth {
    Yes,
    No,
    /// Holds with this probability.
    Maybe(f64),
    Unknown(String),
}

pub struct Walk<'a> {
    pub rules: &'a Rules,
    pub host: &'a Host,
}

/// Chains deeper than this are a loop (the kernel refuses jumps deeper than 16).
const MAX_DEPTH: usize = 32;

enum Next {
    Continue(Flow),
    Done(Vec<(Flow, Exit)>),
}

impl Walk<'_> {
    fn truth(&self, table: &str, c: &Cond, f: &Flow) -> Truth {
        let yes = |b: bool| if b { Truth::Yes } else { Truth::No };
        match c {
            Cond::Addr(side, net) => yes(net.contains(f.addr(*side))),
            Cond::InSet(side, name) => {
                let set = self.rules.sets.get(&(table.to_string(), name.clone()));
                yes(set.is_some_and(|s| s.contains(&f.addr(*side))))
            }
            Cond::InConcatSet(key, name) => {
                let set = self.rules.maps.get(&(table.to_string(), name.clone()));
                let values = key_values(f, key);
                yes(set.is_some_and(|s| s.iter().any(|(k, _)| *k == values)))
            }
            Cond::CtDnat => yes(f.dnat),
            Cond::Proto(p) => yes(p == &f.proto || p == "all"),
            Cond::Port(Side::Dst, p) => yes(*p == f.dport),
            Cond::Port(Side::Src, p) => match f.sport {
                Some(s) => yes(s == *p),
                None => Truth::Unknown(format!("source port {p} (no source port given)")),
            },
            Cond::Local(side) => yes(self.host.is_local(f.addr(*side))),
            Cond::Mark { value, mask } => yes(f.mark & mask == *value),
            Cond::CtState(states) => yes(states.iter().any(|s| s == "new")),
            Cond::InIface(i) => yes(f.in_iface.as_deref().is_some_and(|have| iface_matches(i, have))),
            Cond::OutIface(i) => yes(f.out_iface.as_deref().is_some_and(|have| iface_matches(i, have))),
            Cond::Random(p) => Truth::Maybe(*p),
            Cond::Unknown(s) => Truth::Unknown(s.clone()),
            Cond::Not(inner) => match self.truth(table, inner, f) {
                Truth::Yes => Truth::No,
                Truth::No => Truth::Yes,
                Truth::Maybe(p) => Truth::Maybe(1.0 - p),
                u => u,
            },
        }
    }

    /// All conditions of a rule together: one `No` decides; probabilities multiply.
    fn all(&self, table: &str, conds: &[Cond], f: &Flow) -> Truth {
        let mut out = Truth::Yes;
        for c in conds {
            match (self.truth(table, c, f), &out) {
                (Truth::No, _) => return Truth::No,
                (Truth::Unknown(s), _) => out = Truth::Unknown(s),
                (Truth::Maybe(p), Truth::Maybe(q)) => out = Truth::Maybe(p * q),
                (Truth::Maybe(p), Truth::Yes) => out = Truth::Maybe(p),
                _ => {}
            }
        }
        out
    }

    /// Run `chain` of `table` from rule `from` on.
    pub fn run(&self, table: &str, chain: &str, from: usize, mut f: Flow, depth: usize) -> Vec<(Flow, Exit)> {
        let Some(rules) = self.rules.chains.get(&(table.to_string(), chain.to_string())) else {
            f.notes.push(format!("chain {chain} is not in {table}; treated as empty"));
            return vec![(f, Exit::Return)];
        };
        if depth > MAX_DEPTH {
            f.notes.push(format!("chains nested deeper than {MAX_DEPTH} at {chain}: a loop; stopped"));
            return vec![(f, Exit::Drop)];
        }
        let mut out = vec![];
        for (i, rule) in rules.iter().enumerate().skip(from) {
            // `chance`: None when the rule surely matches, Some(p) when a die decides.
            let chance = match self.all(table, &rule.conds, &f) {
                Truth::No => continue,
                Truth::Unknown(what) => {
                    f.notes.push(format!("{chain}: not evaluated ({what}), taken as not matching: {}", rule.text));
                    continue;
                }
                Truth::Yes => None,
                Truth::Maybe(p) => Some(p),
            };
            let mut taken = f.clone();
            if let Some(p) = chance {
                taken.probability *= p;
                record(&mut taken, table, chain, &rule.text, format!("probability {p:.4}: taken"));
            }
            let results = match self.act((table, chain, rule.text.as_str()), i, taken, &rule.action, depth) {
                Next::Continue(g) if chance.is_none() => {
                    f = g;
                    continue;
                }
                Next::Continue(g) => self.run(table, chain, i + 1, g, depth),
                Next::Done(r) => r,
            };
            out.extend(results);
            match chance {
                None => return out,
                Some(p) => f.probability *= 1.0 - p,
            }
        }
        out.push((f, Exit::Return));
        out
    }

    /// Do what a matching rule says. `Continue` carries the packet on to the next rule.
    fn act(&self, (table, chain, text): (&str, &str, &str), i: usize, mut f: Flow, a: &Action, depth: usize) -> Next {
        let step = |f: &mut Flow, effect: String| record(f, table, chain, text, effect);
        match a {
            Action::Continue => Next::Continue(f),
            Action::Mark { value, mask } => {
                let new = (f.mark & !mask) ^ value;
                if new & !f.mark != 0 {
                    // A helper chain that only marks (KUBE-MARK-MASQ): the reason is the rule that jumped to it.
                    let why = f.steps.last().filter(|s| s.effect.ends_with(&format!("jump {chain}")));
                    f.marked_by.push(why.map(|s| format!("{}: {}", s.chain, s.rule)).unwrap_or_else(|| format!("{chain}: {text}")));
                }
                let effect = format!("mark {:#x} -> {new:#x}", f.mark);
                step(&mut f, effect);
                f.mark = new;
                Next::Continue(f)
            }
            Action::Jump(target) | Action::Goto(target) => {
                let goto = matches!(a, Action::Goto(_));
                step(&mut f, format!("{} {target}", if goto { "goto" } else { "jump" }));
                let sub = self.run(table, target, 0, f, depth + 1);
                if goto {
                    return Next::Done(sub);
                }
                Next::Done(sub.into_iter().flat_map(|(g, e)| self.resume(table, chain, i, g, e, depth)).collect())
            }
            Action::Return => {
                step(&mut f, "return".into());
                Next::Done(vec![(f, Exit::Return)])
            }
            Action::Accept | Action::Drop | Action::Reject => {
                let (word, exit) = match a {
                    Action::Accept => ("accept", Exit::Accept),
                    Action::Drop => ("drop", Exit::Drop),
                    _ => ("reject", Exit::Reject),
                };
                step(&mut f, word.into());
                Next::Done(vec![(f, exit)])
            }
            Action::Dnat(..) | Action::Snat(_) | Action::Masquerade => self.nat(step, f, a),
            Action::Vmap { key, map } => self.vmap((table, chain, text), i, f, key, map, depth),
            Action::Numgen(arms) => {
                let n = arms.len().max(1) as f64;
                let mut out = vec![];
                for (k, arm) in arms.iter().enumerate() {
                    let mut g = f.clone();
                    g.probability /= n;
                    step(&mut g, format!("random number {k} of 0..{}", arms.len()));
                    match self.act((table, chain, text), i, g, arm, depth) {
                        Next::Continue(h) => out.extend(self.run(table, chain, i + 1, h, depth)),
                        Next::Done(r) => out.extend(r),
                    }
                }
                Next::Done(out)
            }
        }
    }

    /// After a `jump` returns: on with the next rule of the calling chain.
    fn resume(&self, table: &str, chain: &str, i: usize, g: Flow, e: Exit, depth: usize) -> Vec<(Flow, Exit)> {
        match e {
            Exit::Return => self.run(table, chain, i + 1, g, depth),
            other => vec![(g, other)],
        }
    }

    fn nat(&self, step: impl Fn(&mut Flow, String), mut f: Flow, a: &Action) -> Next {
        match a {
            Action::Dnat(ip, port) => {
                let effect = format!("dnat to {ip}:{}", port.unwrap_or(f.dport));
                step(&mut f, effect);
                f.dst = *ip;
                f.dport = port.unwrap_or(f.dport);
                f.dnat = true;
            }
            Action::Snat(ip) => {
                step(&mut f, format!("snat to {ip}"));
                f.snat = Some(*ip);
            }
            _ => {
                step(&mut f, "masquerade".into());
                f.masquerade = true;
            }
        }
        Next::Done(vec![(f, Exit::Nat)])
    }

    fn vmap(&self, label: (&str, &str, &str), i: usize, mut f: Flow, key: &[Field], map: &str, depth: usize) -> Next {
        let values = key_values(&f, key);
        let elems = self.rules.maps.get(&(label.0.to_string(), map.to_string()));
        let Some((_, verdict)) = elems.and_then(|e| e.iter().find(|(k, _)| *k == values)) else {
            return Next::Continue(f);
        };
        record(&mut f, label.0, label.1, label.2, format!("@{map} has {}", values.join(" . ")));
        self.act(label, i, f, verdict, depth)
    }

    /// One hook: its base chains by priority.
    pub fn hook(&self, hook: Hook, flows: Vec<Flow>) -> Vec<(Flow, Exit)> {
        let mut out = vec![];
        for mut f in flows {
            f.hook = hook;
            out.extend(self.base_chains(hook, 0, f));
        }
        out
    }

    fn base_chains(&self, hook: Hook, from: usize, f: Flow) -> Vec<(Flow, Exit)> {
        let chains = self.rules.at(hook);
        let Some(base) = chains.get(from) else { return vec![(f, Exit::Accept)] };
        let nat_done = match hook {
            Hook::Prerouting | Hook::Output => f.dnat,
            _ => f.snat.is_some() || f.masquerade,
        };
        if base.kind == ChainType::Nat && nat_done {
            return self.base_chains(hook, from + 1, f);
        }
        let mut out = vec![];
        for (mut g, exit) in self.run(&base.table, &base.chain, 0, f, 0) {
            match exit {
                Exit::Return if base.policy_drop => {
                    g.notes.push(format!("{} {}: end of chain, policy drop", base.table, base.chain));
                    out.push((g, Exit::Drop));
                }
                Exit::Return | Exit::Accept | Exit::Nat => out.extend(self.base_chains(hook, from + 1, g)),
                other => out.push((g, other)),
            }
        }
        out
    }
}

/// Note what a rule did; a second effect of the same rule (the verdict after a map
/// lookup or a die roll) joins the first.
fn record(f: &mut Flow, table: &str, chain: &str, rule: &str, effect: String) {
    if let Some(last) = f.steps.last_mut().filter(|s| s.hook == f.hook && s.table == table && s.chain == chain && s.rule == rule) {
        last.effect = format!("{}; {effect}", last.effect);
        return;
    }
    f.steps.push(Step { hook: f.hook, table: table.into(), chain: chain.into(), rule: rule.into(), effect });
}

/// iptables' `eth+` is a prefix; nft's `eth*` too.
fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+').or_else(|| pattern.strip_suffix('*')) {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The strings a map or concatenated set compares, from the flow's fields.
fn key_values(f: &Flow, key: &[Field]) -> Vec<String> {
    key.iter()
        .map(|k| match k {
            Field::Addr(s) => f.addr(*s).to_string(),
            Field::Proto => f.proto.clone(),
            Field::Port(Side::Dst) => f.dport.to_string(),
            Field::Port(Side::Src) => f.sport.map(|p| p.to_string()).unwrap_or_default(),
        })
        .collect()
}
