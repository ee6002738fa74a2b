//! `/debug/explain`'s I/O: read what the kernel holds now — `iptables-save` (every
//! table), ClientIP affinity lists (`/proc/net/xt_recent/KUBE-SEP-*`), ownkube's nftables
//! table (`nft -j list table ip ownkube`, and `nft -a list` for the rule text) and the
//! routes (`ip -j route show table all`) — and hand them to [`pkg::explain`], which walks
//! a packet through them. Argument vectors through the proxy's [`Runner`], so tests aim
//! it at a network namespace; nothing of the question goes into a command line.
//!
//! Upstream: none (kube-proxy has no explainer; see pkg::explain).

use super::iptables::{IptablesError, Runner};
use pkg::explain::{host::Host, iptables_save, nft_json, rules::Cond, rules::Rules, Explanation, Packet};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("reading the kernel's state: {0}")]
    Read(#[from] IptablesError),
    #[error(transparent)]
    Routes(#[from] pkg::explain::host::RouteJsonError),
    #[error(transparent)]
    Nft(#[from] pkg::explain::nft_json::NftJsonError),
}

/// Everything the kernel holds that decides a packet's path.
pub async fn read_rules(r: &Runner) -> Result<(Rules, Host), ExplainError> {
    let mut rules = iptables_save::parse(&r.output("iptables-save", &[]).await?);
    read_recent_lists(r, &mut rules).await;
    // No table: the node runs the iptables mode.
    if let Ok(json) = r.output("nft", &["-j", "list", "table", "ip", "ownkube"]).await {
        let text = r.output("nft", &["-a", "list", "table", "ip", "ownkube"]).await.unwrap_or_default();
        rules.merge(nft_json::parse(&json, &nft_json::rule_texts(&text))?);
    }
    let host = Host::from_ip_json(&r.output("ip", &["-j", "route", "show", "table", "all"]).await?)?;
    Ok((rules, host))
}

/// Explain one packet.
pub async fn explain(r: &Runner, p: &Packet) -> Result<Explanation, ExplainError> {
    let (rules, host) = read_rules(r).await?;
    Ok(pkg::explain::explain(&rules, &host, p))
}

/// The clients each `-m recent` list remembers (iptables' ClientIP affinity). Only
/// names kube-proxy writes (`KUBE-SEP-` and base32) are read, so no path comes from
/// anything but our own chain names.
async fn read_recent_lists(r: &Runner, rules: &mut Rules) {
    let mut names = vec![];
    for ((table, _), list) in &rules.chains {
        for rule in list {
            for c in &rule.conds {
                if let Cond::InSet(_, name) = c {
                    names.push((table.clone(), name.clone()));
                }
            }
        }
    }
    names.sort();
    names.dedup();
    for (table, name) in names {
        let safe = name.strip_prefix("KUBE-SEP-").is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric()));
        if !safe {
            continue;
        }
        let Ok(text) = r.output("cat", &[&format!("/proc/net/xt_recent/{name}")]).await else { continue };
        let clients = text.lines().filter_map(|l| l.strip_prefix("src=")?.split(' ').next()?.parse().ok()).collect();
        rules.sets.insert((table, name), clients);
    }
}
