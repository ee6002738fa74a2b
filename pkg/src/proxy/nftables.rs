//! kube-proxy's nftables mode: from service ports to the `nft -f` transactions that keep
//! one table, `ip ownkube`, in step with them. The layout is KEP-3866's but for one thing
//! (below: no chain per endpoint):
//!
//! ```text
//! nat-prerouting, nat-output  -> services        two verdict-map lookups, whatever the number of services:
//!     ip daddr . meta l4proto . th dport vmap @service-ips        ClusterIP   -> service-<hash>-ns/svc/tcp/port
//!     fib daddr type local meta l4proto . th dport vmap @service-nodeports   NodePort -> external-<hash>-...
//! external-<hash>-...   mark for masquerade, then goto the service chain
//! service-<hash>-...    mark outside traffic to the ClusterIP;
//!                       dnat to numgen random mod N map { 0 : podIP . port, ... }
//! nat-postrouting -> masquerading                 mark hairpin traffic (ip saddr . ip daddr @hairpin),
//!                                                 masquerade what was marked (0x4000)
//! filter-input/forward/output -> *-endpoints-check   @no-endpoint-services / @no-endpoint-nodeports -> reject
//! ```
//!
//! **No chain per endpoint.** KEP-3866 gives each endpoint a chain (mark hairpin traffic,
//! DNAT), as the iptables mode does. But `nft` (1.0.6 here) reads every chain in the
//! kernel before any command that adds a rule or a map element, and at 5,000 services ×
//! 10 endpoints that read of 55,000 chains alone took 0.29 s of every one-service change;
//! with a chain per service (7,700 chains) it takes 0.04 s. So the service chain DNATs
//! through a `numgen` map of addresses, and hairpin traffic is found after the DNAT, in
//! `masquerading`, by one set of `endpoint . endpoint` pairs shared by all services (the
//! planner counts how many service ports use each pair). Only `sessionAffinity: ClientIP`
//! services keep endpoint chains: each one remembers its clients in a set of its own.
//!
//! Why it is fast where iptables is slow: the kernel's cost grows with the number of
//! chains a transaction touches, and iptables-nft makes every KUBE-* chain a full
//! nftables chain that each restore re-creates; here the dispatch is two map lookups and a
//! change to one service touches its own chains and a few map elements.
//!
//! A sync ([`Planner::plan`]) is a list of transactions, each one `nft -f` input applied
//! atomically:
//! - **full** (at start, after a failure, every resync): the table's fixed part, then the
//!   service chains in transactions of at most [`CHUNK`] service ports (one transaction of
//!   5,000 services takes 6x longer than five of 1,000), then one transaction that
//!   refills the four maps and the hairpin set and flushes chains nothing uses any more;
//! - **partial**: one transaction with the chains of the service ports that changed and
//!   the map and hairpin elements that differ.
//!
//! A stale chain is flushed first and deleted by the next sync, once nothing can still
//! refer to it (what kube-proxy does too).
//!
//! Upstream: pkg/proxy/nftables/proxier.go

use super::{hash16, Ports, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

/// The table ownkube owns; nothing outside it is touched.
pub const TABLE: &str = "ip ownkube";

/// Service ports per transaction in a full sync.
pub const CHUNK: usize = 1000;

pub use super::NEXT_TRANSACTION;

/// The set of `endpoint . endpoint` pairs: traffic DNATed back to the pod that sent it.
pub const HAIRPIN: &str = "hairpin";

/// One element of one of the four verdict maps: `(map, key, verdict)`.
pub type Element = (&'static str, String, String);

/// What one service port contributes: its chains (name, rules), its affinity sets
/// (name, definition) and its map elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub chains: Vec<(String, Vec<String>)>,
    pub sets: Vec<(String, String)>,
    pub elements: Vec<Element>,
    /// Endpoint IPs whose `ip . ip` element the `hairpin` set holds (shared between the
    /// services an endpoint serves, so counted by the planner).
    pub hairpin: Vec<String>,
}

impl Rendered {
    /// The names of everything it owns in the table: chains and sets.
    fn objects(&self) -> BTreeSet<String> {
        self.chains.iter().map(|(n, _)| n.clone()).chain(self.sets.iter().map(|(n, _)| n.clone())).collect()
    }
}

/// `ns/svc/tcp/port` for chain names (nft names may hold `/`, `.`, `-`, `_`, not `:`).
fn base(sp: &ServicePort) -> String {
    let (svc, port) = sp.name.split_once(':').unwrap_or((&sp.name, ""));
    format!("{}-{svc}/{}/{port}", &hash16(&format!("{}{}", sp.name, sp.protocol))[..8], sp.protocol)
}

/// The cluster-policy chain: every endpoint.
pub fn service_chain(sp: &ServicePort) -> String {
    format!("service-{}", base(sp))
}

/// The local-policy chain: this node's endpoints only.
pub fn local_chain(sp: &ServicePort) -> String {
    format!("local-{}", base(sp))
}

pub fn external_chain(sp: &ServicePort) -> String {
    format!("external-{}", base(sp))
}

fn endpoint_name(prefix: &str, sp: &ServicePort, ip: &str, port: u16, salt: &str) -> String {
    let (svc, sport) = sp.name.split_once(':').unwrap_or((&sp.name, ""));
    let h = &hash16(&format!("{}{}{ip}:{port}{salt}", sp.name, sp.protocol))[..8];
    format!("{prefix}-{h}-{svc}/{}/{sport}__{ip}/{port}", sp.protocol)
}

pub fn endpoint_chain(sp: &ServicePort, ip: &str, port: u16) -> String {
    endpoint_name("endpoint", sp, ip, port, "")
}

/// The set of clients that last went to this endpoint (`sessionAffinity: ClientIP`).
/// Its timeout is part of the name's hash: a new timeout makes a new set.
pub fn affinity_set(sp: &ServicePort, ip: &str, port: u16) -> String {
    endpoint_name("affinity", sp, ip, port, &sp.affinity_secs.unwrap_or(0).to_string())
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

/// One endpoint-choosing rule list (service or local chain). Without affinity the chain
/// DNATs itself: `numgen random mod N map { 0 : ip . port, ... }` picks the endpoint, and
/// no endpoint has a chain of its own. With affinity a client seen recently goes back to
/// its endpoint's chain (which remembers it); the others are spread by a random number.
fn balance(sp: &ServicePort, endpoints: &[(String, u16)], rules: &mut Vec<String>) {
    let (p, comment) = (&sp.protocol, quote(&sp.name));
    if sp.affinity_secs.is_none() {
        rules.push(match endpoints {
            [(ip, port)] => format!("meta l4proto {p} dnat to {ip}:{port} comment {comment}"),
            _ => {
                let targets: Vec<String> = endpoints.iter().enumerate().map(|(i, (ip, port))| format!("{i} : {ip} . {port}")).collect();
                format!("meta l4proto {p} dnat to numgen random mod {} map {{ {} }} comment {comment}", endpoints.len(), targets.join(", "))
            }
        });
        return;
    }
    for (ip, port) in endpoints {
        rules.push(format!("ip saddr @{} goto {}", affinity_set(sp, ip, *port), endpoint_chain(sp, ip, *port)));
    }
    let targets: Vec<String> =
        endpoints.iter().enumerate().map(|(i, (ip, port))| format!("{i} : goto {}", endpoint_chain(sp, ip, *port))).collect();
    rules.push(format!("numgen random mod {} vmap {{ {} }} comment {comment}", endpoints.len(), targets.join(", ")));
}

/// The chain of one endpoint of a `ClientIP` service: remember the client, DNAT.
fn endpoint(sp: &ServicePort, ip: &str, port: u16, secs: u32, out: &mut Rendered) {
    let set = affinity_set(sp, ip, port);
    out.sets.push((set.clone(), format!("{{ type ipv4_addr ; flags dynamic,timeout ; timeout {secs}s ; }}")));
    let p = &sp.protocol;
    let rules = vec![
        format!("update @{set} {{ ip saddr }}"),
        format!("meta l4proto {p} dnat to {ip}:{port} comment {}", quote(&format!("{} -> {ip}:{port}", sp.name))),
    ];
    out.chains.push((endpoint_chain(sp, ip, port), rules));
}

/// The external chain: under `externalTrafficPolicy: Cluster`, masquerade and go to the
/// service chain; under `Local`, traffic from pods and from the node itself goes
/// cluster-wide (the node's masqueraded), traffic from outside to local endpoints with
/// its source kept.
fn external(sp: &ServicePort, cluster_cidr: &str, local_used: bool) -> Vec<String> {
    let svc = service_chain(sp);
    if sp.external_policy == super::TrafficPolicy::Cluster {
        return vec!["jump mark-for-masquerade".into(), format!("goto {svc}")];
    }
    let mut rules = vec![];
    if !sp.endpoints.is_empty() {
        rules.push(format!("ip saddr {cluster_cidr} goto {svc} comment \"pod traffic for {} external destinations\"", sp.name));
        rules.push("fib saddr type local jump mark-for-masquerade".into());
        rules.push(format!("fib saddr type local goto {svc} comment \"route LOCAL traffic for {} external destinations\"", sp.name));
    }
    if local_used {
        rules.push(format!("goto {}", local_chain(sp)));
    }
    rules
}

/// The chains, sets and map elements of one service port.
pub fn render_service(sp: &ServicePort, cluster_cidr: &str) -> Rendered {
    let mut out = Rendered::default();
    let (svc_used, local_used) = (sp.uses_cluster_chain(), sp.uses_local_chain());
    // Chains in the order they may be written: each after the ones it jumps to.
    let chained = sp.chained_endpoints();
    if let Some(secs) = sp.affinity_secs {
        for (ip, port) in &chained {
            endpoint(sp, ip, *port, secs, &mut out);
        }
    }
    // A pod that reaches itself through the service must be SNATed, or it answers itself
    // directly: postrouting masquerades a DNATed packet whose (source, destination) is in
    // the `hairpin` set.
    out.hairpin = chained.into_iter().map(|(ip, _)| ip).collect();
    out.hairpin.dedup();
    if svc_used {
        let mut rules = vec![];
        if let Some(ip) = &sp.cluster_ip {
            let p = &sp.protocol;
            rules.push(format!("ip daddr {ip} {p} dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade", sp.port));
        }
        balance(sp, &sp.endpoints, &mut rules);
        out.chains.push((service_chain(sp), rules));
    }
    if local_used {
        let mut rules = vec![];
        balance(sp, &sp.local_endpoints, &mut rules);
        out.chains.push((local_chain(sp), rules));
    }
    if sp.node_port.is_some() && !sp.endpoints.is_empty() {
        out.chains.push((external_chain(sp), external(sp, cluster_cidr, local_used)));
    }
    out.elements = elements(sp, svc_used, local_used);
    out
}

/// A service port's map elements: where its ClusterIP and NodePort dispatch to, or, in
/// the filter maps, a reject when it has no endpoint at all and a drop when a `Local`
/// policy finds none on this node (as kube-proxy does).
fn elements(sp: &ServicePort, svc_used: bool, local_used: bool) -> Vec<Element> {
    use super::TrafficPolicy::{Cluster, Local};
    let (p, none) = (&sp.protocol, sp.endpoints.is_empty());
    let mut out = vec![];
    if let Some(ip) = &sp.cluster_ip {
        let key = format!("{ip} . {p} . {}", sp.port);
        match sp.internal_policy {
            Cluster if svc_used => out.push(("service-ips", key, format!("goto {}", service_chain(sp)))),
            Local if local_used => out.push(("service-ips", key, format!("goto {}", local_chain(sp)))),
            _ if none => out.push(("no-endpoint-services", key, "goto reject-chain".into())),
            _ => out.push(("no-endpoint-services", key, "drop".into())),
        }
    }
    if let Some(np) = sp.node_port {
        let key = format!("{p} . {np}");
        if none {
            out.push(("no-endpoint-nodeports", key, "goto reject-chain".into()));
        } else {
            out.push(("service-nodeports", key.clone(), format!("goto {}", external_chain(sp))));
            if sp.external_policy == Local && !local_used {
                out.push(("no-endpoint-nodeports", key, "drop".into()));
            }
        }
    }
    out
}

/// The fixed part: the table, its base chains at the hooks, the dispatch and helper
/// chains, the four maps. Idempotent (`add` of what exists is a no-op; each chain is
/// flushed before its rules are added again).
pub fn render_fixed(out: &mut String) -> usize {
    let t = TABLE;
    let _ = writeln!(out, "add table {t} {{ comment \"rules for ownkube services\" ; }}");
    for (name, hook) in [
        ("nat-prerouting", "type nat hook prerouting priority dstnat"),
        ("nat-output", "type nat hook output priority -100"),
        ("nat-postrouting", "type nat hook postrouting priority srcnat"),
        ("filter-input", "type filter hook input priority -110"),
        ("filter-forward", "type filter hook forward priority -110"),
        ("filter-output", "type filter hook output priority -110"),
    ] {
        let _ = writeln!(out, "add chain {t} {name} {{ {hook} ; policy accept ; }}");
    }
    for (name, key) in [
        ("service-ips", "ipv4_addr . inet_proto . inet_service"),
        ("service-nodeports", "inet_proto . inet_service"),
        ("no-endpoint-services", "ipv4_addr . inet_proto . inet_service"),
        ("no-endpoint-nodeports", "inet_proto . inet_service"),
    ] {
        let _ = writeln!(out, "add map {t} {name} {{ type {key} : verdict ; }}");
    }
    let _ = writeln!(
        out,
        "add set {t} {HAIRPIN} {{ type ipv4_addr . ipv4_addr ; comment \"endpoint . endpoint: a pod that reached itself\" ; }}"
    );
    let chains: [(&str, &[&str]); 12] = [
        ("nat-prerouting", &["jump services"]),
        ("nat-output", &["jump services"]),
        ("nat-postrouting", &["jump masquerading"]),
        ("filter-input", &["ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"]),
        ("filter-forward", &["ct state new jump service-endpoints-check"]),
        ("filter-output", &["ct state new jump service-endpoints-check"]),
        (
            "services",
            &[
                "ip daddr . meta l4proto . th dport vmap @service-ips",
                "fib daddr type local meta l4proto . th dport vmap @service-nodeports",
            ],
        ),
        (
            "masquerading",
            &[
                "ct status dnat ip saddr . ip daddr @hairpin jump mark-for-masquerade",
                "meta mark & 0x4000 == 0 return",
                "meta mark set meta mark ^ 0x4000",
                "masquerade fully-random",
            ],
        ),
        ("mark-for-masquerade", &["meta mark set meta mark | 0x4000"]),
        ("service-endpoints-check", &["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"]),
        ("nodeport-endpoints-check", &["fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports"]),
        ("reject-chain", &["reject"]),
    ];
    // Every chain exists before any rule jumps to one.
    for (name, _) in chains {
        let _ = writeln!(out, "add chain {t} {name}");
    }
    let mut rules = 0;
    for (name, body) in chains {
        let _ = writeln!(out, "flush chain {t} {name}");
        for r in body {
            let _ = writeln!(out, "add rule {t} {name} {r}");
            rules += 1;
        }
    }
    rules
}

/// A chain written whole: created if missing, emptied, filled.
fn write_chain(out: &mut String, name: &str, rules: &[String]) -> usize {
    let _ = writeln!(out, "add chain {TABLE} {name}\nflush chain {TABLE} {name}");
    for r in rules {
        let _ = writeln!(out, "add rule {TABLE} {name} {r}");
    }
    rules.len()
}

fn element(out: &mut String, verb: &str, (map, key, verdict): &Element) {
    match verb {
        "delete" => writeln!(out, "delete element {TABLE} {map} {{ {key} }}"),
        _ => writeln!(out, "add element {TABLE} {map} {{ {key} : {verdict} }}"),
    }
    .expect("writing to a String");
}

/// One `endpoint . endpoint` element of the `hairpin` set, added or deleted.
fn hairpin_element(out: &mut String, verb: &str, ip: &str) {
    let _ = writeln!(out, "{verb} element {TABLE} {HAIRPIN} {{ {ip} . {ip} }}");
}

/// An affinity set, created once and never flushed while in use (that would forget
/// which client goes where).
fn write_set(out: &mut String, name: &str, definition: &str) {
    let _ = writeln!(out, "add set {TABLE} {name} {definition}");
}

/// The service-port chains and sets of this table (what a full sync may find stale):
/// their names hold the service's `ns/name`, which no fixed chain's does.
pub fn is_ours(name: &str) -> bool {
    ["service-", "local-", "external-", "endpoint-", "affinity-"].iter().any(|p| name.starts_with(p)) && name.contains('/')
}

/// `chain` or `set`: what kind of object one of ours is, from its name.
fn kind(name: &str) -> &'static str {
    if name.starts_with("affinity-") {
        "set"
    } else {
        "chain"
    }
}

/// Chain and set names in `nft list table ip ownkube` output.
pub fn objects(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain ").or_else(|| l.trim().strip_prefix("set ")))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// A service port's key: `(namespace/name:port, protocol)`.
type Key = (String, String);

/// A planned sync: the transactions to apply in order, and the state they lead to.
#[derive(Debug)]
pub struct Plan {
    pub transactions: Vec<String>,
    /// `add rule` lines in all of them.
    pub rules: usize,
    /// Service ports whose chains were written.
    pub written: usize,
    /// Chains flushed now (deleted by the next sync) and chains deleted now.
    pub flushed: Vec<String>,
    pub deleted: Vec<String>,
    next: BTreeMap<Key, (Arc<ServicePort>, Arc<Rendered>)>,
    hairpin: Hairpin,
}

/// How a plan leaves the planner's `hairpin` counts.
#[derive(Debug)]
enum Hairpin {
    /// A full sync: these are all of them.
    Whole(BTreeMap<String, usize>),
    /// A partial sync: these changed (0: the pair is gone).
    Changed(BTreeMap<String, usize>),
}

/// Remembers what the last successful sync wrote, to plan the next one. A service port
/// equal to the one last applied is not rendered again: at 5,000 services a partial sync
/// costs what the changed ports cost, not what all of them do.
#[derive(Debug, Default)]
pub struct Planner {
    applied: BTreeMap<Key, (Arc<ServicePort>, Arc<Rendered>)>,
    /// Chains flushed by the last sync, to delete in this one.
    flushed: BTreeSet<String>,
    /// For each endpoint IP in the `hairpin` set, how many service ports use it.
    hairpin: BTreeMap<String, usize>,
    chunk: Option<usize>,
}

impl Planner {
    /// A planner whose full syncs put at most `chunk` service ports in a transaction.
    pub fn with_chunk(chunk: usize) -> Planner {
        Planner { chunk: Some(chunk.max(1)), ..Default::default() }
    }

    /// Whether stale chains wait to be deleted (the caller should sync again soon).
    pub fn pending(&self) -> bool {
        !self.flushed.is_empty()
    }

    /// Plan a sync to `ports`; a full one also flushes every chain of ours in `existing`
    /// (read from the kernel) that is not wanted.
    pub fn plan(&self, cluster_cidr: &str, ports: &Ports, full: bool, existing: &[String]) -> Plan {
        let mut changed: Vec<&Key> = vec![];
        let next: BTreeMap<Key, (Arc<ServicePort>, Arc<Rendered>)> = ports
            .iter()
            .map(|(k, sp)| {
                let rendered = match self.applied.get(k) {
                    Some((old, r)) if old == sp => r.clone(),
                    _ => {
                        changed.push(k);
                        Arc::new(render_service(sp, cluster_cidr))
                    }
                };
                (k.clone(), (sp.clone(), rendered))
            })
            .collect();
        let removed: Vec<&Key> = self.applied.keys().filter(|k| !ports.contains_key(*k)).collect();
        let chains_of = |r: &Rendered| r.objects();
        let (mut stale, wanted): (BTreeSet<String>, BTreeSet<String>) = if full {
            let wanted: BTreeSet<String> = next.values().flat_map(|(_, r)| chains_of(r)).collect();
            (existing.iter().filter(|c| is_ours(c) && !wanted.contains(*c)).cloned().collect(), wanted)
        } else {
            // A chain's name holds its service port: only a changed or removed port can
            // leave one behind, or want one back.
            let wanted: BTreeSet<String> = changed.iter().flat_map(|k| chains_of(&next[*k].1)).collect();
            let old = changed.iter().chain(&removed).filter_map(|k| self.applied.get(*k)).flat_map(|(_, r)| chains_of(r));
            (old.filter(|c| !wanted.contains(c)).collect(), wanted)
        };
        // Delete what the last sync flushed, unless it is wanted again.
        let deleted: Vec<String> = self.flushed.iter().filter(|c| !wanted.contains(*c)).cloned().collect();
        stale.retain(|c| !deleted.contains(c));
        let (transactions, rules, written) = if full { self.full(&next) } else { self.partial(&next, &changed, &removed) };
        let mut plan = Plan {
            transactions,
            rules,
            written,
            flushed: stale.into_iter().collect(),
            deleted,
            next,
            hairpin: Hairpin::Changed(BTreeMap::new()),
        };
        let last = plan.transactions.last_mut().expect("a sync has a transaction");
        plan.hairpin = if full {
            Hairpin::Whole(hairpin_full(&plan.next, last))
        } else {
            Hairpin::Changed(self.hairpin_changes(&plan.next, &changed, &removed, last))
        };
        for c in &plan.flushed {
            let _ = writeln!(last, "flush {} {TABLE} {c}", kind(c));
        }
        for c in &plan.deleted {
            let _ = writeln!(last, "delete {} {TABLE} {c}", kind(c));
        }
        plan
    }

    /// The fixed part with the first chunk of service chains, further chunks, then the
    /// maps refilled whole.
    fn full(&self, next: &BTreeMap<Key, (Arc<ServicePort>, Arc<Rendered>)>) -> (Vec<String>, usize, usize) {
        let mut txs = vec![String::new()];
        let mut rules = render_fixed(&mut txs[0]);
        let all: Vec<&Rendered> = next.values().map(|(_, r)| r.as_ref()).collect();
        for (i, chunk) in all.chunks(self.chunk.unwrap_or(CHUNK)).enumerate() {
            if i > 0 {
                txs.push(String::new());
            }
            let tx = txs.last_mut().unwrap();
            for r in chunk {
                for (name, definition) in &r.sets {
                    write_set(tx, name, definition);
                }
                for (name, body) in &r.chains {
                    rules += write_chain(tx, name, body);
                }
            }
        }
        let mut maps = String::new();
        for m in ["service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports"] {
            let _ = writeln!(maps, "flush map {TABLE} {m}");
        }
        for e in all.iter().flat_map(|r| &r.elements) {
            element(&mut maps, "add", e);
        }
        txs.push(maps);
        (txs, rules, all.iter().filter(|r| !r.chains.is_empty()).count())
    }

    /// The chains of the changed ports that differ, and the map elements that differ, in
    /// one transaction.
    fn partial(
        &self,
        next: &BTreeMap<Key, (Arc<ServicePort>, Arc<Rendered>)>,
        changed: &[&Key],
        removed: &[&Key],
    ) -> (Vec<String>, usize, usize) {
        let mut tx = String::new();
        let (mut rules, mut written) = (0, 0);
        let old = |k: &Key| self.applied.get(k).map(|(_, r)| r.clone());
        for k in changed {
            let new = &next[*k].1;
            let before: BTreeSet<(String, Vec<String>)> = old(k).map(|o| o.chains.iter().cloned().collect()).unwrap_or_default();
            let mut wrote = false;
            for (name, definition) in &new.sets {
                write_set(&mut tx, name, definition);
            }
            for c in new.chains.iter().filter(|c| !before.contains(*c)) {
                rules += write_chain(&mut tx, &c.0, &c.1);
                wrote = true;
            }
            written += usize::from(wrote);
        }
        let had: BTreeSet<Element> = changed.iter().chain(removed).filter_map(|k| old(k)).flat_map(|r| r.elements.clone()).collect();
        let want: BTreeSet<Element> = changed.iter().flat_map(|k| next[*k].1.elements.clone()).collect();
        for e in had.difference(&want) {
            element(&mut tx, "delete", e);
        }
        for e in want.difference(&had) {
            element(&mut tx, "add", e);
        }
        (vec![tx], rules, written)
    }

    /// A partial sync's `hairpin` changes: an element is added when its first service port
    /// comes and deleted when its last one goes. Returns the counts that changed.
    fn hairpin_changes(
        &self,
        next: &BTreeMap<Key, (Arc<ServicePort>, Arc<Rendered>)>,
        changed: &[&Key],
        removed: &[&Key],
        tx: &mut String,
    ) -> BTreeMap<String, usize> {
        let mut delta: BTreeMap<&str, isize> = BTreeMap::new();
        for k in changed.iter().chain(removed) {
            for ip in self.applied.get(*k).map(|(_, r)| r.hairpin.as_slice()).unwrap_or_default() {
                *delta.entry(ip).or_insert(0) -= 1;
            }
        }
        for ip in changed.iter().flat_map(|k| &next[*k].1.hairpin) {
            *delta.entry(ip).or_insert(0) += 1;
        }
        let mut out = BTreeMap::new();
        for (ip, d) in delta.into_iter().filter(|(_, d)| *d != 0) {
            let before = self.hairpin.get(ip).copied().unwrap_or(0);
            let after = (before as isize + d).max(0) as usize;
            match (before, after) {
                (0, 1..) => hairpin_element(tx, "add", ip),
                (1.., 0) => hairpin_element(tx, "delete", ip),
                _ => {}
            }
            out.insert(ip.to_string(), after);
        }
        out
    }

    /// Record that a plan was applied.
    pub fn applied(&mut self, plan: Plan) {
        match plan.hairpin {
            Hairpin::Whole(counts) => self.hairpin = counts,
            Hairpin::Changed(counts) => {
                for (ip, n) in counts {
                    match n {
                        0 => self.hairpin.remove(&ip),
                        n => self.hairpin.insert(ip, n),
                    };
                }
            }
        }
        self.applied = plan.next;
        self.flushed = plan.flushed.into_iter().collect();
    }

    /// Forget what was applied (after a failure): the next plan must be full.
    pub fn reset(&mut self) {
        self.applied.clear();
        self.flushed.clear();
        self.hairpin.clear();
    }
}

/// A full sync's `hairpin` set: refilled whole with every endpoint of every service port.
fn hairpin_full(next: &BTreeMap<Key, (Arc<ServicePort>, Arc<Rendered>)>, tx: &mut String) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for ip in next.values().flat_map(|(_, r)| &r.hairpin) {
        *counts.entry(ip.clone()).or_insert(0) += 1;
    }
    let _ = writeln!(tx, "flush set {TABLE} {HAIRPIN}");
    for ip in counts.keys() {
        hairpin_element(tx, "add", ip);
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, node_port: Option<u16>, endpoints: &[(&str, u16)]) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol: "tcp".into(),
            cluster_ip: Some(format!("10.96.0.{}", 10 + name.len() % 7 + name.bytes().map(usize::from).sum::<usize>() % 200)),
            port: 80,
            node_port,
            endpoints: endpoints.iter().map(|(i, p)| (i.to_string(), *p)).collect(),
            ..Default::default()
        }
    }

    fn ports(list: Vec<ServicePort>) -> Ports {
        list.into_iter().map(|p| ((p.name.clone(), p.protocol.clone()), Arc::new(p))).collect()
    }

    #[test]
    fn chain_names_are_stable_hashed_and_valid() {
        let sp = port("default/web:http", Some(30001), &[("10.244.0.2", 8080)]);
        let s = service_chain(&sp);
        assert!(s.starts_with("service-") && s.ends_with("-default/web/tcp/http"), "{s}");
        assert_eq!(s, service_chain(&sp.clone()));
        let e = endpoint_chain(&sp, "10.244.0.2", 8080);
        assert!(e.ends_with("-default/web/tcp/http__10.244.0.2/8080"), "{e}");
        // nft identifiers: a letter first, then letters, digits, / - _ .
        for n in [&s, &e, &external_chain(&sp)] {
            assert!(n.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)), "{n}");
        }
    }

    #[test]
    fn full_syncs_are_chunked_and_partial_syncs_send_only_changes() {
        let many: Vec<ServicePort> = (0..5).map(|i| port(&format!("default/s{i}:80"), None, &[("10.244.0.2", 8080)])).collect();
        let mut planner = Planner::with_chunk(2);
        let existing = ["service-OLD-default/gone/tcp/80".to_string(), "service-endpoints-check".to_string()];
        let plan = planner.plan("10.244.0.0/16", &ports(many.clone()), true, &existing);
        // fixed + chunk(2) | chunk(2) | chunk(1) | maps
        assert_eq!(plan.transactions.len(), 4);
        assert!(plan.transactions[3].contains("flush map ip ownkube service-ips"));
        assert_eq!(plan.flushed, ["service-OLD-default/gone/tcp/80"], "a stale chain found in the kernel is flushed");
        planner.applied(plan);
        assert!(planner.pending());

        // One endpoint added to s1: its service chain and the new endpoint's hairpin pair; no map change.
        let mut changed = many.clone();
        changed[1].endpoints.push(("10.244.1.5".into(), 8080));
        let plan = planner.plan("10.244.0.0/16", &ports(changed.clone()), false, &[]);
        assert_eq!(plan.transactions.len(), 1);
        let tx = &plan.transactions[0];
        assert_eq!(tx.matches("flush chain").count(), 1, "{tx}");
        assert!(tx.contains("dnat to numgen random mod 2 map { 0 : 10.244.0.2 . 8080, 1 : 10.244.1.5 . 8080 }"), "{tx}");
        assert_eq!(tx.matches("element").count(), 1, "{tx}");
        assert!(tx.contains("add element ip ownkube hairpin { 10.244.1.5 . 10.244.1.5 }"), "{tx}");
        assert_eq!(plan.deleted, ["service-OLD-default/gone/tcp/80"], "deleted one sync after it was flushed");
        planner.applied(plan);
        assert!(!planner.pending());

        // s4 loses its endpoints: its element moves to no-endpoint-services, its chains go stale.
        changed[4].endpoints.clear();
        let plan = planner.plan("10.244.0.0/16", &ports(changed.clone()), false, &[]);
        let tx = &plan.transactions[0];
        let ip = changed[4].cluster_ip.clone().unwrap();
        assert!(tx.contains(&format!("delete element ip ownkube service-ips {{ {ip} . tcp . 80 }}")), "{tx}");
        assert!(tx.contains(&format!("add element ip ownkube no-endpoint-services {{ {ip} . tcp . 80 : goto reject-chain }}")), "{tx}");
        assert_eq!(plan.flushed.len(), 1, "its service chain: {:?}", plan.flushed);
        assert!(!tx.contains("hairpin"), "s0..s3 still use 10.244.0.2: {tx}");
        planner.applied(plan);
        // s1 loses 10.244.1.5, its only user: the pair goes.
        changed[1].endpoints.pop();
        let plan = planner.plan("10.244.0.0/16", &ports(changed.clone()), false, &[]);
        assert!(plan.transactions[0].contains("delete element ip ownkube hairpin { 10.244.1.5 . 10.244.1.5 }"), "{}", plan.transactions[0]);
        planner.applied(plan);
        // Nothing changed: an empty transaction apart from deleting what was flushed.
        let plan = planner.plan("10.244.0.0/16", &ports(changed), false, &[]);
        assert_eq!(plan.written, 0);
        assert_eq!(plan.transactions[0].lines().filter(|l| !l.starts_with("delete chain")).count(), 0, "{}", plan.transactions[0]);
        // A full sync refills the pairs whole, once per endpoint IP.
        let plan = planner.plan("10.244.0.0/16", &ports(many), true, &[]);
        assert_eq!(plan.transactions.last().unwrap().matches("add element ip ownkube hairpin").count(), 1);
    }
}
