//! The pod's `/etc/resolv.conf`, as the kubelet writes it from `dnsPolicy` and
//! `dnsConfig`.
//!
//! - `ClusterFirst` (the default): the cluster's DNS server (`--cluster-dns`), and a
//!   search path that makes short names work — `whoami` is tried as
//!   `whoami.<ns>.svc.cluster.local`, then `whoami.svc.cluster.local`, then
//!   `whoami.cluster.local`, then the node's own search domains. `ndots:5` says a name
//!   with fewer than five dots is tried with the search path first. Without a cluster DNS
//!   configured the kubelet falls back to `Default` (and says so).
//! - `Default`: the node's own resolver configuration, as it is.
//! - `None`: nothing but what `dnsConfig` gives.
//!
//! `dnsConfig` then adds nameservers and search domains (duplicates dropped) and sets
//! options (one per name, the pod's winning). At most 3 nameservers and 32 search
//! domains, as glibc reads them.
//!
//! Upstream: pkg/kubelet/network/dns/dns.go (GetPodDNS, parseResolvConf, appendOptions)

use crate::api::PodDNSConfig;

/// At most this many `nameserver` lines count (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (Kubernetes' MaxDNSSearchPaths).
pub const MAX_SEARCHES: usize = 32;

/// `spec.dnsPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsPolicy {
    ClusterFirst,
    /// For `hostNetwork` pods; the same as `ClusterFirst` here (no host-network pods).
    ClusterFirstWithHostNet,
    Default,
    None,
}

impl DnsPolicy {
    /// The policy a pod asks for (unset: `ClusterFirst`); unknown values are refused
    /// by validation, so they are read as the default here.
    pub fn of(value: Option<&str>) -> DnsPolicy {
        match value {
            Some("Default") => DnsPolicy::Default,
            Some("None") => DnsPolicy::None,
            Some("ClusterFirstWithHostNet") => DnsPolicy::ClusterFirstWithHostNet,
            _ => DnsPolicy::ClusterFirst,
        }
    }
}

/// The kubelet's DNS settings: `--cluster-dns` and `--cluster-domain`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterDns {
    pub servers: Vec<String>,
    pub domain: String,
}

/// A resolver configuration: what `resolv.conf` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolv {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`, in order.
    pub options: Vec<String>,
}

impl Resolv {
    /// Read a `resolv.conf` (the node's): `nameserver`, `search` (or `domain`), `options`.
    pub fn parse(text: &str) -> Resolv {
        let mut r = Resolv::default();
        for line in text.lines().map(|l| l.split(['#', ';']).next().unwrap_or("")) {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
                Some("search" | "domain") => r.searches = words.map(String::from).collect(),
                Some("options") => r.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        r
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for ns in self.nameservers.iter().take(MAX_NAMESERVERS) {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.iter().take(MAX_SEARCHES).cloned().collect::<Vec<_>>().join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// What the pod's resolver should be, and whether `ClusterFirst` had to fall back to the
/// node's configuration because no cluster DNS is set (the kubelet's `MissingClusterDNS`
/// event).
pub fn pod_resolv(
    policy: DnsPolicy,
    config: Option<&PodDNSConfig>,
    cluster: &ClusterDns,
    namespace: &str,
    host: &Resolv,
) -> (Resolv, bool) {
    let cluster_first = matches!(policy, DnsPolicy::ClusterFirst | DnsPolicy::ClusterFirstWithHostNet);
    let fell_back = cluster_first && cluster.servers.is_empty();
    let mut r = match policy {
        DnsPolicy::None => Resolv::default(),
        _ if fell_back => host.clone(),
        DnsPolicy::Default => host.clone(),
        DnsPolicy::ClusterFirst | DnsPolicy::ClusterFirstWithHostNet => {
            let d = cluster.domain.trim_matches('.');
            let mut searches = vec![format!("{namespace}.svc.{d}"), format!("svc.{d}"), d.to_string()];
            searches.extend(host.searches.iter().cloned());
            Resolv { nameservers: cluster.servers.clone(), searches, options: vec!["ndots:5".into()] }
        }
    };
    if let Some(c) = config {
        merge(&mut r, c);
    }
    dedup(&mut r.nameservers);
    dedup(&mut r.searches);
    (r, fell_back)
}

/// `dnsConfig` on top: nameservers and searches appended, options set by name.
fn merge(r: &mut Resolv, c: &PodDNSConfig) {
    r.nameservers.extend(c.nameservers.iter().flatten().cloned());
    r.searches.extend(c.searches.iter().flatten().cloned());
    for o in c.options.iter().flatten() {
        let Some(name) = o.name.as_deref().filter(|n| !n.is_empty()) else { continue };
        let text = match &o.value {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        r.options.retain(|old| old.split(':').next() != Some(name));
        r.options.push(text);
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterDns {
        ClusterDns { servers: vec!["10.96.0.10".into()], domain: "cluster.local".into() }
    }

    fn host() -> Resolv {
        Resolv::parse("# from the node\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0 ndots:1\n")
    }

    #[test]
    fn parses_the_node_file() {
        let h = host();
        assert_eq!(h.nameservers, ["192.0.2.53"]);
        assert_eq!(h.searches, ["corp.example"]);
        assert_eq!(h.options, ["edns0", "ndots:1"]);
    }

    #[test]
    fn cluster_first_points_at_the_cluster_dns_with_the_search_path() {
        let (r, fell_back) = pod_resolv(DnsPolicy::of(None), None, &cluster(), "shop", &host());
        assert!(!fell_back);
        assert_eq!(
            r.render(),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
    }

    #[test]
    fn cluster_first_without_a_cluster_dns_falls_back_to_the_node() {
        let (r, fell_back) = pod_resolv(DnsPolicy::ClusterFirst, None, &ClusterDns::default(), "shop", &host());
        assert!(fell_back);
        assert_eq!(r, host());
    }

    #[test]
    fn default_is_the_node_and_none_is_only_dns_config() {
        assert_eq!(pod_resolv(DnsPolicy::of(Some("Default")), None, &cluster(), "a", &host()).0, host());
        let config: PodDNSConfig = serde_json::from_value(serde_json::json!({
            "nameservers": ["1.2.3.4", "1.2.3.4"], "searches": ["x.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]
        }))
        .unwrap();
        let (r, _) = pod_resolv(DnsPolicy::of(Some("None")), Some(&config), &cluster(), "a", &host());
        assert_eq!(r.render(), "nameserver 1.2.3.4\nsearch x.example\noptions ndots:2 edns0\n");
    }

    #[test]
    fn dns_config_adds_to_cluster_first_and_overrides_options() {
        let config: PodDNSConfig = serde_json::from_value(serde_json::json!({
            "nameservers": ["10.96.0.10", "9.9.9.9"], "searches": ["cluster.local", "extra.example"],
            "options": [{"name": "ndots", "value": "1"}]
        }))
        .unwrap();
        let (r, _) = pod_resolv(DnsPolicy::ClusterFirst, Some(&config), &cluster(), "default", &Resolv::default());
        assert_eq!(r.nameservers, ["10.96.0.10", "9.9.9.9"]);
        assert_eq!(r.searches, ["default.svc.cluster.local", "svc.cluster.local", "cluster.local", "extra.example"]);
        assert_eq!(r.options, ["ndots:1"]);
    }

    #[test]
    fn at_most_three_nameservers_are_written() {
        let r = Resolv { nameservers: (1..=5).map(|i| format!("10.0.0.{i}")).collect(), ..Default::default() };
        assert_eq!(r.render().lines().count(), MAX_NAMESERVERS);
    }
}
