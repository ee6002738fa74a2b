//! What the walk needs to know of the node besides its rules: its routes, read from
//! `ip -j route show table all`. The `local` table says which addresses are the node's
//! own (what `-m addrtype --dst-type LOCAL` and `fib daddr type local` ask); the `main`
//! table where a packet goes next (a pod on this node's bridge, or another node); and a
//! device's own address is what `MASQUERADE` puts in as the new source.
//!
//! Upstream: the kernel's FIB lookup (net/ipv4/fib_trie.c) and inet_select_addr
//! (net/ipv4/devinet.c), which nf_nat_masquerade_ipv4 calls.

use super::rules::Net;
use std::net::Ipv4Addr;

/// One route.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    #[serde(serialize_with = "as_text")]
    pub dst: Net,
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    pub prefsrc: Option<Ipv4Addr>,
    /// A `local` route: the address is this host's own.
    pub local: bool,
}

fn as_text<S: serde::Serializer>(n: &Net, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}/{}", n.addr, n.len))
}

#[derive(Clone, Debug, Default)]
pub struct Host {
    pub routes: Vec<Route>,
}

#[derive(Debug, thiserror::Error)]
#[error("ip -j route does not parse: {0}")]
pub struct RouteJsonError(#[from] serde_json::Error);

impl Host {
    /// From `ip -j route show table all`: unicast routes of the main table and local
    /// routes of the local table (broadcast, multicast and other tables are not used).
    pub fn from_ip_json(json: &str) -> Result<Host, RouteJsonError> {
        let list: Vec<serde_json::Value> = serde_json::from_str(json)?;
        let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let routes = list
            .iter()
            .filter_map(|r| {
                let kind = text(r, "type").unwrap_or_else(|| "unicast".into());
                let table = text(r, "table").unwrap_or_else(|| "main".into());
                let local = match (kind.as_str(), table.as_str()) {
                    ("local", "local") => true,
                    ("unicast", "main") => false,
                    _ => return None,
                };
                let dst = match text(r, "dst")?.as_str() {
                    "default" => Net { addr: Ipv4Addr::UNSPECIFIED, len: 0 },
                    d => d.parse().ok()?,
                };
                let ip = |k| text(r, k).and_then(|s| s.parse().ok());
                Some(Route { dst, gateway: ip("gateway"), dev: text(r, "dev").unwrap_or_default(), prefsrc: ip("prefsrc"), local })
            })
            .collect();
        Ok(Host { routes })
    }

    /// Is this one of the node's own addresses?
    pub fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.routes.iter().any(|r| r.local && r.dst.contains(ip))
    }

    /// The route a packet to `ip` takes: a local one first (as the kernel's local table
    /// comes first), then the longest matching prefix of the main table.
    pub fn route(&self, ip: Ipv4Addr) -> Option<&Route> {
        let best = |local: bool| self.routes.iter().filter(|r| r.local == local && r.dst.contains(ip)).max_by_key(|r| r.dst.len);
        best(true).or_else(|| best(false))
    }

    /// The address `MASQUERADE` gives a packet leaving `dev` towards `next_hop`: the
    /// device's address on the next hop's subnet, else its first one.
    pub fn source_for(&self, dev: &str, next_hop: Ipv4Addr) -> Option<Ipv4Addr> {
        let on_dev = || self.routes.iter().filter(move |r| r.dev == dev && !r.local);
        on_dev()
            .filter(|r| r.dst.contains(next_hop))
            .find_map(|r| r.prefsrc)
            .or_else(|| on_dev().find_map(|r| r.prefsrc))
            .or_else(|| self.routes.iter().find(|r| r.local && r.dev == dev).map(|r| r.dst.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node1 of the lab: eth0 on the lab network, cni0 the pod bridge, node2's pods via node2.
    pub(crate) fn node1() -> Host {
        Host::from_ip_json(
            r#"[{"dst":"default","gateway":"172.30.0.1","dev":"eth0","flags":[]},
            {"dst":"10.244.0.0/24","dev":"cni0","protocol":"kernel","scope":"link","prefsrc":"10.244.0.1","flags":[]},
            {"dst":"10.244.1.0/24","gateway":"172.30.0.12","dev":"eth0","flags":[]},
            {"dst":"172.30.0.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"172.30.0.11","flags":[]},
            {"type":"local","dst":"10.244.0.1","dev":"cni0","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.244.0.1","flags":[]},
            {"type":"broadcast","dst":"10.244.0.255","dev":"cni0","table":"local","protocol":"kernel","scope":"link","prefsrc":"10.244.0.1","flags":[]},
            {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
            {"type":"local","dst":"172.30.0.11","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"172.30.0.11","flags":[]}]"#,
        )
        .unwrap()
    }

    #[test]
    fn routes_local_addresses_and_masquerade_sources() {
        let h = node1();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(h.is_local(ip("172.30.0.11")) && h.is_local(ip("127.0.0.5")) && !h.is_local(ip("10.244.0.255")));
        assert_eq!(h.route(ip("10.244.1.7")).unwrap().gateway, Some(ip("172.30.0.12")));
        assert_eq!(h.route(ip("10.244.0.7")).unwrap().dev, "cni0");
        assert_eq!(h.route(ip("8.8.8.8")).unwrap().dst.len, 0);
        assert!(h.route(ip("172.30.0.11")).unwrap().local);
        assert_eq!(h.source_for("cni0", ip("10.244.0.7")), Some(ip("10.244.0.1")));
        assert_eq!(h.source_for("eth0", ip("172.30.0.12")), Some(ip("172.30.0.11")));
    }
}
