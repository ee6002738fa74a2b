//! Reading `iptables-save` output into [`Rules`]: every table's built-in chains become
//! base chains at their hooks (raw before mangle before nat before filter, as the kernel
//! orders them), every `-A` line a rule.
//!
//! The matches understood are those kube-proxy, the kubelet and Docker write: `-s -d -p
//! -i -o`, `-m tcp/udp --dport --sport`, `addrtype`, `mark`, `conntrack --ctstate`,
//! `statistic --mode random`, `recent --rcheck`, `comment`; the targets `-j/-g CHAIN`,
//! ACCEPT, DROP, REJECT, RETURN, DNAT, SNAT, MASQUERADE, MARK. Anything else becomes
//! [`Cond::Unknown`] (never matches) or a non-terminal action.
//!
//! Upstream: iptables/iptables-save.c (the format), extensions/libxt_*.c (the options)

use super::rules::{Action, BaseChain, ChainType, Cond, Hook, Net, Rule, Rules, Side};

/// Split a line into words; `"..."` is one word (with `\"` inside), as iptables-save quotes.
pub fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped, mut any) = (vec![], String::new(), false, false, false);
    for c in line.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The hook and priority of a built-in chain of a table.
fn builtin(table: &str, chain: &str) -> Option<(Hook, i32, ChainType)> {
    let hook = match chain {
        "PREROUTING" => Hook::Prerouting,
        "INPUT" => Hook::Input,
        "FORWARD" => Hook::Forward,
        "OUTPUT" => Hook::Output,
        "POSTROUTING" => Hook::Postrouting,
        _ => return None,
    };
    let (prio, kind) = match (table, hook) {
        ("raw", _) => (-300, ChainType::Filter),
        ("mangle", _) => (-150, ChainType::Filter),
        ("nat", Hook::Prerouting | Hook::Output) => (-100, ChainType::Nat),
        ("nat", _) => (100, ChainType::Nat),
        ("filter", _) => (0, ChainType::Filter),
        _ => return None,
    };
    Some((hook, prio, kind))
}

/// The name this ruleset's table has in [`Rules`]: `iptables nat`.
pub fn table_name(table: &str) -> String {
    format!("iptables {table}")
}

/// Parse a whole `iptables-save` listing.
pub fn parse(save: &str) -> Rules {
    let mut rules = Rules::default();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let w = words(decl);
            let (Some(chain), Some(policy)) = (w.first(), w.get(1)) else { continue };
            rules.chains.entry((table_name(&table), chain.clone())).or_default();
            if let Some((hook, priority, kind)) = builtin(&table, chain) {
                let (table, chain, policy_drop) = (table_name(&table), chain.clone(), policy == "DROP");
                rules.base.push(BaseChain { table, chain, hook, priority, kind, policy_drop });
            }
        } else if line.starts_with("-A ") {
            let w = words(line);
            let rule = parse_rule(line, &w[2.min(w.len())..]);
            rules.chains.entry((table_name(&table), w.get(1).cloned().unwrap_or_default())).or_default().push(rule);
        }
    }
    rules
}

fn mark(s: &str) -> (u32, u32) {
    let num = |x: &str| u32::from_str_radix(x.trim_start_matches("0x"), if x.starts_with("0x") { 16 } else { 10 }).unwrap_or(0);
    match s.split_once('/') {
        Some((v, m)) => (num(v), num(m)),
        None => (num(s), u32::MAX),
    }
}

/// What a `-m recent` match is building, finished when the next module or target starts.
#[derive(Default)]
struct Recent {
    check: bool,
    name: String,
}

/// One rule's words after `-A CHAIN`.
pub fn parse_rule(text: &str, w: &[String]) -> Rule {
    let (mut conds, mut action) = (vec![], Action::Continue);
    let (mut module, mut target, mut negate, mut recent) = (String::new(), String::new(), false, Recent::default());
    let mut i = 0;
    let next = |i: &mut usize| {
        *i += 1;
        w.get(*i).cloned().unwrap_or_default()
    };
    while i < w.len() {
        let word = w[i].clone();
        match word.as_str() {
            "!" => negate = true,
            "-s" | "--source" => push(&mut conds, addr(Side::Src, &next(&mut i)), &mut negate),
            "-d" | "--destination" => push(&mut conds, addr(Side::Dst, &next(&mut i)), &mut negate),
            "-p" | "--protocol" => push(&mut conds, Cond::Proto(next(&mut i)), &mut negate),
            "-i" | "--in-interface" => push(&mut conds, Cond::InIface(next(&mut i)), &mut negate),
            "-o" | "--out-interface" => push(&mut conds, Cond::OutIface(next(&mut i)), &mut negate),
            "-m" | "--match" => {
                finish_recent(&mut recent, &mut conds);
                module = next(&mut i);
            }
            "-j" | "-g" | "--jump" | "--goto" => {
                finish_recent(&mut recent, &mut conds);
                target = next(&mut i);
                action = match target.as_str() {
                    "ACCEPT" => Action::Accept,
                    "DROP" => Action::Drop,
                    "REJECT" => Action::Reject,
                    "RETURN" => Action::Return,
                    "MASQUERADE" => Action::Masquerade,
                    "DNAT" | "SNAT" | "MARK" => Action::Continue, // filled in by the options
                    t if ["LOG", "NFLOG", "TRACE", "CT", "NOTRACK", "CONNMARK", "TCPMSS"].contains(&t) => Action::Continue,
                    t if word == "-g" || word == "--goto" => Action::Goto(t.into()),
                    t => Action::Jump(t.into()),
                };
            }
            opt if opt.starts_with("--") && !target.is_empty() => target_option(&target, opt, &next(&mut i), &mut action),
            opt if opt.starts_with("--") => match module_option(&module, opt, w.get(i + 1).map(String::as_str), &mut recent) {
                (Some(c), used) => {
                    i += used;
                    push(&mut conds, c, &mut negate);
                }
                (None, used) => i += used,
            },
            other => conds.push(Cond::Unknown(other.into())),
        }
        i += 1;
    }
    finish_recent(&mut recent, &mut conds);
    Rule { text: text.to_string(), conds, action }
}

fn push(conds: &mut Vec<Cond>, c: Cond, negate: &mut bool) {
    conds.push(if std::mem::take(negate) { Cond::Not(Box::new(c)) } else { c });
}

fn addr(side: Side, s: &str) -> Cond {
    match s.parse::<Net>() {
        Ok(n) => Cond::Addr(side, n),
        Err(_) => Cond::Unknown(format!("address {s}")),
    }
}

fn finish_recent(r: &mut Recent, conds: &mut Vec<Cond>) {
    if std::mem::take(&mut r.check) {
        conds.push(Cond::InSet(Side::Src, std::mem::take(&mut r.name)));
    }
}

/// An option of the current `-m` module: the condition it adds (if any) and how many
/// following words it took as its value.
fn module_option(module: &str, opt: &str, value: Option<&str>, recent: &mut Recent) -> (Option<Cond>, usize) {
    let v = value.unwrap_or("");
    let side = |o: &str| if o.contains("src") || o.contains("sport") || o.contains("source") { Side::Src } else { Side::Dst };
    match (module, opt) {
        ("comment", "--comment") => (None, 1),
        ("tcp" | "udp" | "sctp", "--dport" | "--sport" | "--destination-port" | "--source-port") => match v.parse() {
            Ok(p) => (Some(Cond::Port(side(opt), p)), 1),
            Err(_) => (Some(Cond::Unknown(format!("{opt} {v}"))), 1),
        },
        ("addrtype", "--dst-type" | "--src-type") if v == "LOCAL" => (Some(Cond::Local(side(opt))), 1),
        ("mark", "--mark") => {
            let (value, mask) = mark(v);
            (Some(Cond::Mark { value, mask }), 1)
        }
        ("conntrack", "--ctstate") => (Some(Cond::CtState(v.split(',').map(|s| s.to_lowercase()).collect())), 1),
        ("statistic", "--mode") => (None, 1),
        ("statistic", "--probability") => (Some(Cond::Random(v.parse().unwrap_or(0.0))), 1),
        ("recent", "--rcheck" | "--update") => {
            recent.check = true;
            (None, 0)
        }
        ("recent", "--name") => {
            recent.name = v.to_string();
            (None, 1)
        }
        ("recent", "--seconds" | "--mask" | "--hitcount") => (None, 1),
        ("recent", "--rsource" | "--set" | "--reap" | "--rdest" | "--remove") => (None, 0),
        // Unknown: one word of value if the next word is not another option.
        _ => {
            let takes = usize::from(value.is_some_and(|v| !v.starts_with('-') && v != "!"));
            (Some(Cond::Unknown(format!("-m {module} {opt}{}", if takes == 1 { format!(" {v}") } else { String::new() }))), takes)
        }
    }
}

/// An option of the target (`--to-destination`, `--set-xmark`, ...).
fn target_option(target: &str, opt: &str, v: &str, action: &mut Action) {
    let ip_port = |s: &str| {
        let (ip, port) = s.split_once(':').map(|(a, p)| (a, p.parse().ok())).unwrap_or((s, None));
        ip.parse().ok().map(|ip| (ip, port))
    };
    match (target, opt) {
        ("DNAT", "--to-destination") => {
            if let Some((ip, port)) = ip_port(v) {
                *action = Action::Dnat(ip, port);
            }
        }
        ("SNAT", "--to-source") => {
            if let Some((ip, _)) = ip_port(v) {
                *action = Action::Snat(ip);
            }
        }
        ("MARK", "--set-xmark") => {
            let (value, mask) = mark(v);
            *action = Action::Mark { value, mask };
        }
        ("MARK", "--or-mark") => {
            let (value, _) = mark(v);
            *action = Action::Mark { value, mask: value };
        }
        ("MARK", "--xor-mark") => *action = Action::Mark { value: mark(v).0, mask: 0 },
        ("MARK", "--set-mark") => {
            let (value, mask) = mark(v);
            *action = Action::Mark { value, mask };
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quoted_comments_whole() {
        assert_eq!(
            words(r#"-A X -m comment --comment "a \"b\" c" -j Y"#),
            ["-A", "X", "-m", "comment", "--comment", "a \"b\" c", "-j", "Y"]
        );
        assert_eq!(words(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn parses_the_rules_kube_proxy_writes() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.96.0.5/32 -p tcp -m comment --comment \"w cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
            -A KUBE-SVC-X -m comment --comment \"w -> 10.244.0.3:8080\" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A\n\
            -A KUBE-SVC-X -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A\n\
            -A KUBE-SEP-A -p tcp -m recent --set --name KUBE-SEP-A --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.0.3:8080\n\
            -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
            -A KUBE-SERVICES -m addrtype --dst-type LOCAL -m weird --frob 3 -j KUBE-NODEPORTS\n\
            COMMIT\n";
        let r = parse(save);
        assert_eq!(r.base.len(), 1);
        assert_eq!((r.base[0].hook, r.base[0].priority), (Hook::Prerouting, -100));
        let svc = &r.chains[&("iptables nat".into(), "KUBE-SERVICES".into())];
        let net: Net = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            svc[0].conds,
            [
                Cond::Not(Box::new(Cond::Addr(Side::Src, net))),
                Cond::Addr(Side::Dst, Net::host("10.96.0.5".parse().unwrap())),
                Cond::Proto("tcp".into()),
                Cond::Port(Side::Dst, 80)
            ]
        );
        assert_eq!(svc[0].action, Action::Jump("KUBE-MARK-MASQ".into()));
        assert_eq!(svc[1].conds, [Cond::Local(Side::Dst), Cond::Unknown("-m weird --frob 3".into())]);
        let x = &r.chains[&("iptables nat".into(), "KUBE-SVC-X".into())];
        assert_eq!(x[0].conds, [Cond::InSet(Side::Src, "KUBE-SEP-A".into())]);
        assert_eq!(x[1].conds, [Cond::Random(0.5)]);
        let sep = &r.chains[&("iptables nat".into(), "KUBE-SEP-A".into())];
        assert_eq!(sep[0].action, Action::Dnat("10.244.0.3".parse().unwrap(), Some(8080)));
        let masq = &r.chains[&("iptables nat".into(), "KUBE-MARK-MASQ".into())];
        assert_eq!(masq[0].action, Action::Mark { value: 0x4000, mask: 0x4000 });
    }
}
