//! What pods may not reach: the control plane's secrets. A pod is anyone's code; from
//! its network it could otherwise talk to etcd (every object, unauthenticated) and to
//! the agents' :10250 (commands in any container). The agent keeps one chain,
//! `OWNKUBE-FIREWALL` in the `filter` table, jumped to from INPUT (this node's own
//! port) and FORWARD (other hosts), that rejects traffic from the pod network to each
//! `--deny-pod-access ADDRESS[/PREFIX]:PORT`. Written whole with `iptables-restore
//! --noflush` at start and every minute, so it converges whatever was there.
//!
//! Upstream: pkg/kubelet/kubelet_network_linux.go (KUBE-FIREWALL, which likewise spares
//! `RELATED,ESTABLISHED,DNAT` traffic)

use crate::proxy::iptables::{IptablesError, Runner};
use std::fmt::Write;

pub const CHAIN: &str = "OWNKUBE-FIREWALL";

/// One address and TCP port pods may not reach, parsed from `ADDRESS[/PREFIX]:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deny {
    pub cidr: pkg::alloc::Cidr,
    pub port: u16,
}

impl std::str::FromStr for Deny {
    type Err = String;
    fn from_str(s: &str) -> Result<Deny, String> {
        let (addr, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?}: want ADDRESS[/PREFIX]:PORT"))?;
        let port = port.parse().map_err(|_| format!("{s:?}: {port:?} is no port"))?;
        let cidr = if addr.contains('/') { addr.to_string() } else { format!("{addr}/32") };
        let cidr = cidr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Deny { cidr, port })
    }
}

/// The `iptables-restore` text of the chain. Only *new* connections are refused
/// (`--ctstate NEW`): a pod's reply to a connection someone opened from a denied port
/// must pass — kube-proxy's `masquerade --random-fully` picks any source port, 10250
/// included, for NodePort traffic it sends to a pod on another node.
pub fn render(cluster_cidr: &str, deny: &[Deny]) -> String {
    let mut t = format!("*filter\n:{CHAIN} - [0:0]\n");
    for d in deny {
        let _ = writeln!(
            t,
            "-A {CHAIN} -m comment --comment \"pods may not reach {}:{}\" -s {cluster_cidr} -d {} -p tcp -m tcp --dport {} -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset",
            d.cidr, d.port, d.cidr, d.port
        );
    }
    t + "COMMIT\n"
}

/// Write the chain and make sure INPUT and FORWARD jump to it (once, first).
pub async fn apply(runner: &Runner, cluster_cidr: &str, deny: &[Deny]) -> Result<(), IptablesError> {
    runner.ensure_chain("filter", CHAIN).await?;
    runner.restore(&render(cluster_cidr, deny)).await?;
    let jump: Vec<String> = ["-m", "comment", "--comment", "ownkube firewall", "-j", CHAIN].iter().map(|s| s.to_string()).collect();
    for chain in ["INPUT", "FORWARD"] {
        runner.ensure_rule("filter", chain, &jump).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_render() {
        let d: Vec<Deny> = ["172.30.0.2:2379", "0.0.0.0/0:10250"].iter().map(|s| s.parse().unwrap()).collect();
        let t = render("10.244.0.0/16", &d);
        assert!(t.contains("-s 10.244.0.0/16 -d 172.30.0.2/32 -p tcp -m tcp --dport 2379 -m conntrack --ctstate NEW -j REJECT"), "{t}");
        assert!(t.contains("-d 0.0.0.0/0 -p tcp -m tcp --dport 10250"), "{t}");
        assert!("etcd:2379".parse::<Deny>().is_err());
        assert!("1.2.3.4".parse::<Deny>().is_err());
    }
}
