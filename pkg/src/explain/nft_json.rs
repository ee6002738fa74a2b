//! Reading `nft -j list table ip ownkube` into [`Rules`]: chains with a hook become base
//! chains, each rule's `expr` list becomes conditions and an action, verdict maps and
//! address sets keep their elements (so a lookup in `@service-ips` is done the way the
//! kernel does it, and a ClientIP affinity set says which clients it holds).
//!
//! nft's JSON has no rule text, so the text a learner sees comes from `nft -a list table`
//! (every rule ends in `# handle N`), matched by handle.
//!
//! Upstream: nftables' libnftables-json(5) (the format)

use super::rules::{Action, BaseChain, ChainType, Cond, Field, Hook, Net, Rule, Rules, Side};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum NftJsonError {
    #[error("nft's JSON does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("nft's JSON has no \"nftables\" list")]
    Shape,
}

/// The text of each rule by handle, from `nft -a list table ...`.
pub fn rule_texts(listing: &str) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for line in listing.lines().map(str::trim) {
        let Some((text, handle)) = line.rsplit_once(" # handle ") else { continue };
        let header = ["table ", "chain ", "map ", "set "].iter().any(|p| text.starts_with(p));
        if let (false, Ok(h)) = (header, handle.trim().parse()) {
            out.insert(h, text.to_string());
        }
    }
    out
}

/// Parse one table's JSON listing; `texts` from [`rule_texts`].
pub fn parse(json: &str, texts: &HashMap<u64, String>) -> Result<Rules, NftJsonError> {
    let v: Value = serde_json::from_str(json)?;
    let items = v.get("nftables").and_then(Value::as_array).ok_or(NftJsonError::Shape)?;
    let mut rules = Rules::default();
    for item in items {
        if let Some(c) = item.get("chain") {
            chain(c, &mut rules);
        } else if let Some(r) = item.get("rule") {
            let key = (table_of(r), str_of(r, "chain"));
            let handle = r.get("handle").and_then(Value::as_u64).unwrap_or(0);
            let text = texts.get(&handle).cloned().unwrap_or_else(|| format!("(rule handle {handle})"));
            let exprs = r.get("expr").and_then(Value::as_array).cloned().unwrap_or_default();
            rules.chains.entry(key).or_default().push(rule(text, &exprs));
        } else if let Some(m) = item.get("map") {
            let elems = m.get("elem").and_then(Value::as_array).cloned().unwrap_or_default();
            let list = elems.iter().filter_map(|e| Some((key_values(e.get(0)?), verdict(e.get(1)?)?))).collect();
            rules.maps.insert((table_of(m), str_of(m, "name")), list);
        } else if let Some(s) = item.get("set").filter(|s| s.get("type").is_some_and(Value::is_array)) {
            // A set of concatenations (`ipv4_addr . ipv4_addr`): its elements are keys, as a map's are.
            let elems = s.get("elem").and_then(Value::as_array).cloned().unwrap_or_default();
            let list = elems.iter().map(|e| (key_values(e), Action::Continue)).collect();
            rules.maps.insert((table_of(s), str_of(s, "name")), list);
        } else if let Some(s) = item.get("set") {
            let elems = s.get("elem").and_then(Value::as_array).cloned().unwrap_or_default();
            let addr = |e: &Value| e.pointer("/elem/val").unwrap_or(e).as_str().and_then(|s| s.parse().ok());
            rules.sets.insert((table_of(s), str_of(s, "name")), elems.iter().filter_map(addr).collect());
        }
    }
    Ok(rules)
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// `nft ip ownkube`.
fn table_of(v: &Value) -> String {
    format!("nft {} {}", str_of(v, "family"), str_of(v, "table"))
}

fn chain(c: &Value, rules: &mut Rules) {
    let (table, name) = (table_of(c), str_of(c, "name"));
    rules.chains.entry((table.clone(), name.clone())).or_default();
    let hook = match c.get("hook").and_then(Value::as_str) {
        Some("prerouting") => Hook::Prerouting,
        Some("input") => Hook::Input,
        Some("forward") => Hook::Forward,
        Some("output") => Hook::Output,
        Some("postrouting") => Hook::Postrouting,
        _ => return,
    };
    let kind = if c.get("type").and_then(Value::as_str) == Some("nat") { ChainType::Nat } else { ChainType::Filter };
    let priority = c.get("prio").and_then(Value::as_i64).unwrap_or(0) as i32;
    let policy_drop = c.get("policy").and_then(Value::as_str) == Some("drop");
    rules.base.push(BaseChain { table, chain: name, hook, priority, kind, policy_drop });
}

/// A map element's key as the strings the walk compares: `["10.96.0.10", "tcp", "80"]`.
fn key_values(k: &Value) -> Vec<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match k.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(scalar).collect(),
        None => vec![scalar(k)],
    }
}

fn verdict(v: &Value) -> Option<Action> {
    let target = |k: &str| v.pointer(&format!("/{k}/target")).and_then(Value::as_str).map(String::from);
    Some(if let Some(t) = target("goto") {
        Action::Goto(t)
    } else if let Some(t) = target("jump") {
        Action::Jump(t)
    } else if v.get("drop").is_some() {
        Action::Drop
    } else if v.get("accept").is_some() {
        Action::Accept
    } else if v.get("return").is_some() {
        Action::Return
    } else {
        return None;
    })
}

/// One rule: every `match` is a condition; the last statement that does something is
/// the action.
fn rule(text: String, exprs: &[Value]) -> Rule {
    let (mut conds, mut action) = (vec![], Action::Continue);
    for e in exprs {
        if let Some(m) = e.get("match") {
            conds.extend(matches(m));
        } else if let Some(a) = statement(e) {
            action = a;
        }
    }
    Rule { text, conds, action }
}

fn field(v: &Value) -> Option<Field> {
    let (proto, f) = (v.pointer("/payload/protocol").and_then(Value::as_str), v.pointer("/payload/field").and_then(Value::as_str));
    match (proto, f, v.pointer("/meta/key").and_then(Value::as_str)) {
        (Some("ip"), Some("saddr"), _) => Some(Field::Addr(Side::Src)),
        (Some("ip"), Some("daddr"), _) => Some(Field::Addr(Side::Dst)),
        (Some(_), Some("sport"), _) => Some(Field::Port(Side::Src)),
        (Some(_), Some("dport"), _) => Some(Field::Port(Side::Dst)),
        (_, _, Some("l4proto")) => Some(Field::Proto),
        _ => None,
    }
}

/// The conditions of one `match` (a `tcp dport` match is also a protocol match).
fn matches(m: &Value) -> Vec<Cond> {
    let (op, left, right) = (m.get("op").and_then(Value::as_str).unwrap_or("=="), &m["left"], &m["right"]);
    let unknown = || vec![Cond::Unknown(m.to_string())];
    if let (Some(parts), Some(set)) = (left.get("concat").and_then(Value::as_array), right.as_str().and_then(|r| r.strip_prefix('@'))) {
        return match parts.iter().map(field).collect::<Option<Vec<_>>>() {
            Some(key) if op == "!=" => vec![Cond::Not(Box::new(Cond::InConcatSet(key, set.into())))],
            Some(key) => vec![Cond::InConcatSet(key, set.into())],
            None => unknown(),
        };
    }
    let mut out = match (field(left), right) {
        (Some(Field::Addr(side)), Value::String(s)) if s.starts_with('@') => vec![Cond::InSet(side, s[1..].to_string())],
        (Some(Field::Addr(side)), Value::String(s)) => s.parse().map(|n| vec![Cond::Addr(side, n)]).unwrap_or_else(|_| unknown()),
        (Some(Field::Addr(side)), r) if r.get("prefix").is_some() => {
            let p = &r["prefix"];
            match (p["addr"].as_str().and_then(|a| a.parse().ok()), p["len"].as_u64()) {
                (Some(addr), Some(len)) => vec![Cond::Addr(side, Net { addr, len: len as u8 })],
                _ => unknown(),
            }
        }
        (Some(Field::Port(side)), r) if r.is_u64() => {
            let mut v = vec![Cond::Port(side, r.as_u64().unwrap_or(0) as u16)];
            if let Some(p @ ("tcp" | "udp" | "sctp")) = left.pointer("/payload/protocol").and_then(Value::as_str) {
                v.insert(0, Cond::Proto(p.into()));
            }
            v
        }
        (Some(Field::Proto), Value::String(p)) => vec![Cond::Proto(p.clone())],
        _ => other_match(left, right).unwrap_or_else(unknown),
    };
    if op == "!=" {
        out = out.into_iter().map(|c| Cond::Not(Box::new(c))).collect();
    }
    out
}

/// fib, ct state, meta mark and interface matches.
fn other_match(left: &Value, right: &Value) -> Option<Vec<Cond>> {
    if let Some(flags) = left.pointer("/fib/flags").and_then(Value::as_array) {
        let side = if flags.iter().any(|f| f == "saddr") { Side::Src } else { Side::Dst };
        return (right == "local").then(|| vec![Cond::Local(side)]);
    }
    if left.pointer("/ct/key").and_then(Value::as_str) == Some("status") {
        return (right == "dnat").then(|| vec![Cond::CtDnat]);
    }
    if left.pointer("/ct/key").and_then(Value::as_str) == Some("state") {
        let states = match right {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
            _ => return None,
        };
        return Some(vec![Cond::CtState(states)]);
    }
    match left.pointer("/meta/key").and_then(Value::as_str) {
        Some("mark") => return Some(vec![Cond::Mark { value: right.as_u64()? as u32, mask: u32::MAX }]),
        Some("iifname") => return Some(vec![Cond::InIface(right.as_str()?.into())]),
        Some("oifname") => return Some(vec![Cond::OutIface(right.as_str()?.into())]),
        _ => {}
    }
    let and = left.get("&")?.as_array()?;
    if and.first()?.pointer("/meta/key").and_then(Value::as_str) == Some("mark") {
        return Some(vec![Cond::Mark { value: right.as_u64()? as u32, mask: and.get(1)?.as_u64()? as u32 }]);
    }
    None
}

/// A statement that is not a match: a verdict, NAT, a mark change, a map lookup;
/// `None` for what changes nothing the walk looks at (counter, log, set update).
fn statement(e: &Value) -> Option<Action> {
    if let Some(a) = verdict(e) {
        return Some(a);
    }
    if e.get("reject").is_some() {
        return Some(Action::Reject);
    }
    if e.get("masquerade").is_some() {
        return Some(Action::Masquerade);
    }
    if let Some(d) = e.get("dnat") {
        if let Some(arms) = d.pointer("/addr/map").filter(|m| m.pointer("/key/numgen").is_some()) {
            return numgen_dnat(arms);
        }
        let port = d.get("port").and_then(Value::as_u64).map(|p| p as u16);
        return Some(Action::Dnat(d.get("addr")?.as_str()?.parse().ok()?, port));
    }
    if let Some(s) = e.get("snat") {
        return Some(Action::Snat(s.get("addr")?.as_str()?.parse().ok()?));
    }
    if let Some(m) = e.get("mangle") {
        return mark_change(m);
    }
    let v = e.get("vmap")?;
    if v.pointer("/key/numgen").is_some() {
        let mut arms: Vec<(u64, Action)> =
            v.pointer("/data/set")?.as_array()?.iter().filter_map(|a| Some((a.get(0)?.as_u64()?, verdict(a.get(1)?)?))).collect();
        arms.sort_by_key(|(i, _)| *i);
        return Some(Action::Numgen(arms.into_iter().map(|(_, a)| a).collect()));
    }
    let key = match v["key"].get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(field).collect::<Option<Vec<_>>>()?,
        None => vec![field(&v["key"])?],
    };
    Some(Action::Vmap { key, map: v["data"].as_str()?.trim_start_matches('@').to_string() })
}

/// `dnat to numgen random mod N map { 0 : ip . port, ... }`: one DNAT per arm, each with
/// probability 1/N, as a `numgen ... vmap` of DNATs.
fn numgen_dnat(map: &Value) -> Option<Action> {
    let mut arms: Vec<(u64, Action)> = vec![];
    for arm in map.pointer("/data/set")?.as_array()? {
        let target = arm.get(1)?;
        let (addr, port) = match target.get("concat").and_then(Value::as_array) {
            Some(parts) => (parts.first()?.as_str()?, parts.get(1).and_then(Value::as_u64)),
            None => (target.as_str()?, None),
        };
        arms.push((arm.get(0)?.as_u64()?, Action::Dnat(addr.parse().ok()?, port.map(|p| p as u16))));
    }
    arms.sort_by_key(|(i, _)| *i);
    Some(Action::Numgen(arms.into_iter().map(|(_, a)| a).collect()))
}

/// `meta mark set meta mark | 0x4000` and `... ^ 0x4000`, or a plain value.
fn mark_change(m: &Value) -> Option<Action> {
    if m.pointer("/key/meta/key").and_then(Value::as_str) != Some("mark") {
        return None;
    }
    let value = &m["value"];
    if let Some(v) = value.as_u64() {
        return Some(Action::Mark { value: v as u32, mask: u32::MAX });
    }
    if let Some(v) = value.get("|").and_then(|a| a.get(1)).and_then(Value::as_u64) {
        return Some(Action::Mark { value: v as u32, mask: v as u32 });
    }
    let v = value.get("^")?.get(1)?.as_u64()?;
    Some(Action::Mark { value: v as u32, mask: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rules_maps_and_sets() {
        let json = r#"{"nftables": [
          {"map": {"family": "ip", "name": "service-ips", "table": "ownkube", "type": ["ipv4_addr","inet_proto","inet_service"], "map": "verdict",
            "elem": [[{"concat": ["10.96.0.5", "tcp", 80]}, {"goto": {"target": "service-x"}}]]}},
          {"set": {"family": "ip", "name": "aff", "table": "ownkube", "type": "ipv4_addr", "elem": [{"elem": {"val": "10.1.1.1", "expires": 10}}]}},
          {"chain": {"family": "ip", "table": "ownkube", "name": "nat-prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"rule": {"family": "ip", "table": "ownkube", "chain": "services", "handle": 17, "expr": [{"vmap": {"key": {"concat": [
              {"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@service-ips"}}]}},
          {"rule": {"family": "ip", "table": "ownkube", "chain": "service-x", "handle": 28, "expr": [
              {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
              {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
              {"jump": {"target": "mark-for-masquerade"}}]}},
          {"rule": {"family": "ip", "table": "ownkube", "chain": "service-x", "handle": 31, "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
              "data": {"set": [[1, {"goto": {"target": "ep-b"}}], [0, {"goto": {"target": "ep-a"}}]]}}}]}},
          {"rule": {"family": "ip", "table": "ownkube", "chain": "masquerading", "handle": 19, "expr": [
              {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 0}}, {"return": null}]}},
          {"rule": {"family": "ip", "table": "ownkube", "chain": "mark-for-masquerade", "handle": 22, "expr": [
              {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}]}},
          {"rule": {"family": "ip", "table": "ownkube", "chain": "ep-a", "handle": 26, "expr": [
              {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"addr": "10.244.0.3", "port": 8080}}]}}
        ]}"#;
        let texts = rule_texts("table ip ownkube { # handle 1\n\tchain service-x { # handle 12\n\t\ttcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade # handle 28\n");
        let r = parse(json, &texts).unwrap();
        let t = "nft ip ownkube".to_string();
        assert_eq!(r.base[0].hook, Hook::Prerouting);
        assert_eq!(
            r.maps[&(t.clone(), "service-ips".into())],
            [(vec!["10.96.0.5".into(), "tcp".into(), "80".into()], Action::Goto("service-x".into()))]
        );
        assert_eq!(r.sets[&(t.clone(), "aff".into())], ["10.1.1.1".parse::<std::net::Ipv4Addr>().unwrap()]);
        let svc = &r.chains[&(t.clone(), "service-x".into())];
        assert_eq!(svc[0].text, "tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade");
        let net = "10.244.0.0/16".parse().unwrap();
        assert_eq!(svc[0].conds, [Cond::Proto("tcp".into()), Cond::Port(Side::Dst, 80), Cond::Not(Box::new(Cond::Addr(Side::Src, net)))]);
        assert_eq!(svc[1].action, Action::Numgen(vec![Action::Goto("ep-a".into()), Action::Goto("ep-b".into())]));
        let dispatch = &r.chains[&(t.clone(), "services".into())][0];
        assert_eq!(
            dispatch.action,
            Action::Vmap { key: vec![Field::Addr(Side::Dst), Field::Proto, Field::Port(Side::Dst)], map: "service-ips".into() }
        );
        assert_eq!(r.chains[&(t.clone(), "masquerading".into())][0].conds, [Cond::Mark { value: 0, mask: 0x4000 }]);
        assert_eq!(r.chains[&(t.clone(), "mark-for-masquerade".into())][0].action, Action::Mark { value: 0x4000, mask: 0x4000 });
        assert_eq!(r.chains[&(t, "ep-a".into())][0].action, Action::Dnat("10.244.0.3".parse().unwrap(), Some(8080)));
    }
}
