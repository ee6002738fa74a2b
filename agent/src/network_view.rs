//! `/debug/network`: the pod network of this node as the kernel holds it — the bridge
//! ([`crate::network::BRIDGE`]), its addresses, the veths attached to it, and the pod
//! network namespace each leads to (matched by [`crate::network::host_veth`], the name the
//! kubelet gave it). The topology page (`/ui/`) draws it; a veth with no namespace is
//! one a crashed agent left behind.
//!
//! Read with `ip -j` through the proxy's [`Runner`] (argument vectors; nothing from the
//! request goes into them) and the `/var/run/netns` directory.
//!
//! Upstream: none (what `ip link show master cni0` and `ip netns` show by hand).

use crate::network::{host_veth, BRIDGE, NETNS_DIR};
use crate::proxy::iptables::{IptablesError, Runner};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize)]
pub struct Veth {
    pub name: String,
    /// `ownkube-<pod uid>`, when a pod namespace of that veth exists.
    pub netns: Option<String>,
    pub up: bool,
}

#[derive(Debug, Serialize)]
pub struct NetworkView {
    pub bridge: String,
    /// `10.244.0.1/24`.
    pub addresses: Vec<String>,
    pub veths: Vec<Veth>,
}

/// Read the bridge, its addresses and its veths.
pub async fn read(r: &Runner) -> Result<NetworkView, IptablesError> {
    let json = |s: String| serde_json::from_str::<Vec<Value>>(&s).unwrap_or_default();
    let addrs = json(r.output("ip", &["-j", "-4", "addr", "show", "dev", BRIDGE]).await.unwrap_or_default());
    let addresses = addrs
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
        .collect();
    let links = json(r.output("ip", &["-j", "link", "show", "master", BRIDGE]).await?);
    let namespaces: Vec<String> =
        std::fs::read_dir(NETNS_DIR).map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()).unwrap_or_default();
    let mut veths: Vec<Veth> = links
        .iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_string();
            let netns = namespaces.iter().find(|n| host_veth(n) == name).cloned();
            let up = l["operstate"].as_str() == Some("UP");
            Some(Veth { name, netns, up })
        })
        .collect();
    veths.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(NetworkView { bridge: BRIDGE.to_string(), addresses, veths })
}
