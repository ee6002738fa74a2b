//! The explainer on rulesets read back from a real kernel (`pkg/tests/explain/`: written
//! by iptables-restore and nft -f in a network namespace, then listed), on node1 of the
//! lab: pods 10.244.0.0/24 on cni0, node2's pods via 172.30.0.12. The service
//! default/whoami:http is 10.96.0.5:80 and NodePort 30001, endpoints 10.244.0.3 (on
//! node1) and 10.244.1.4 (on node2); default/empty (10.96.0.6:80, NodePort 30002) has none.

use super::*;

const IPTABLES: &str = include_str!("../../tests/explain/iptables-save.txt");
const NFT_JSON: &str = include_str!("../../tests/explain/nft.json");
const NFT_TEXT: &str = include_str!("../../tests/explain/nft-a.txt");
/// What iptables holds on a node in nftables mode: the pods' egress masquerade only.
const EGRESS: &str = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.244.0.0/24 ! -d 10.244.0.0/16 -m comment --comment \"ownkube: pod traffic leaving the cluster network\" -j MASQUERADE\nCOMMIT\n";

fn host() -> Host {
    Host::from_ip_json(
        r#"[{"dst":"default","gateway":"172.30.0.1","dev":"eth0"},
        {"dst":"10.244.0.0/24","dev":"cni0","scope":"link","prefsrc":"10.244.0.1"},
        {"dst":"10.244.1.0/24","gateway":"172.30.0.12","dev":"eth0"},
        {"dst":"172.30.0.0/24","dev":"eth0","scope":"link","prefsrc":"172.30.0.11"},
        {"type":"local","dst":"10.244.0.1","dev":"cni0","table":"local","prefsrc":"10.244.0.1"},
        {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","prefsrc":"127.0.0.1"},
        {"type":"local","dst":"172.30.0.11","dev":"eth0","table":"local","prefsrc":"172.30.0.11"}]"#,
    )
    .unwrap()
}

fn iptables() -> Rules {
    iptables_save::parse(IPTABLES)
}

fn nftables() -> Rules {
    let mut r = nft_json::parse(NFT_JSON, &nft_json::rule_texts(NFT_TEXT)).unwrap();
    r.merge(iptables_save::parse(EGRESS));
    r
}

fn ask(rules: &Rules, src: &str, dst: &str, port: u16) -> Explanation {
    let p = Packet { proto: "tcp".into(), src: src.parse().unwrap(), sport: None, dst: dst.parse().unwrap(), port };
    explain(rules, &host(), &p)
}

/// (destination, probability in %, the source it sees) of each delivered outcome.
fn outcomes(e: &Explanation) -> Vec<(String, u32, String)> {
    let mut v: Vec<_> = e
        .paths
        .iter()
        .map(|p| {
            assert_eq!(p.verdict, Verdict::Delivered, "{}", e.text());
            (p.destination.clone(), (p.probability * 100.0).round() as u32, p.source.to_string())
        })
        .collect();
    v.sort();
    v
}

fn both(check: impl Fn(&Rules)) {
    check(&iptables());
    check(&nftables());
}

#[test]
fn cluster_ip_from_a_pod_reaches_each_endpoint_half_the_time_unmasqueraded() {
    both(|r| {
        let e = ask(r, "10.244.0.9", "10.96.0.5", 80);
        assert_eq!(
            outcomes(&e),
            [("10.244.0.3:8080".into(), 50, "10.244.0.9".into()), ("10.244.1.4:8080".into(), 50, "10.244.0.9".into())]
        );
        assert_eq!(e.arrives, "cni0");
        let remote = e.paths.iter().find(|p| p.destination.starts_with("10.244.1.4")).unwrap();
        assert_eq!(remote.route, Some(Hop { dev: "eth0".into(), via: Some("172.30.0.12".parse().unwrap()), local: false }));
        assert!(remote.masquerade.is_none() && remote.dnat);
        assert!(e.text().contains("sent to 10.244.1.4:8080 via 172.30.0.12 on eth0 (through another host)"), "{}", e.text());
    });
}

#[test]
fn cluster_ip_from_the_node_is_masqueraded_to_the_outgoing_device_address() {
    both(|r| {
        let e = ask(r, "172.30.0.11", "10.96.0.5", 80);
        assert_eq!(e.arrives, "this node");
        assert_eq!(
            outcomes(&e),
            [("10.244.0.3:8080".into(), 50, "10.244.0.1".into()), ("10.244.1.4:8080".into(), 50, "172.30.0.11".into())]
        );
        let m = e.paths[0].masquerade.as_ref().unwrap();
        assert!(m.marked_by.iter().any(|r| r.contains("10.244.0.0/16")), "marked because the source is outside the cluster: {m:?}");
    });
}

#[test]
fn node_port_from_outside_is_masqueraded() {
    both(|r| {
        let e = ask(r, "172.30.0.1", "172.30.0.11", 30001);
        assert_eq!(
            outcomes(&e),
            [("10.244.0.3:8080".into(), 50, "10.244.0.1".into()), ("10.244.1.4:8080".into(), 50, "172.30.0.11".into())]
        );
        assert_eq!(e.arrives, "eth0");
    });
}

#[test]
fn hairpin_is_masqueraded_only_when_the_pod_reaches_itself() {
    both(|r| {
        let e = ask(r, "10.244.0.3", "10.96.0.5", 80);
        assert_eq!(
            outcomes(&e),
            [("10.244.0.3:8080".into(), 50, "10.244.0.1".into()), ("10.244.1.4:8080".into(), 50, "10.244.0.3".into())]
        );
    });
}

#[test]
fn a_service_without_endpoints_is_rejected_from_pods_the_node_and_outside() {
    both(|r| {
        for (src, dst, port) in [("10.244.0.9", "10.96.0.6", 80), ("172.30.0.11", "10.96.0.6", 80), ("172.30.0.1", "172.30.0.11", 30002)] {
            let e = ask(r, src, dst, port);
            assert_eq!(e.paths.len(), 1, "{}", e.text());
            assert_eq!(e.paths[0].verdict, Verdict::Rejected, "{}", e.text());
            assert!(e.paths[0].steps.last().unwrap().effect == "reject");
        }
    });
}

#[test]
fn traffic_to_no_service_passes_untouched_and_leaving_pods_are_masqueraded() {
    both(|r| {
        let e = ask(r, "10.244.0.9", "10.244.1.4", 8080);
        assert_eq!(outcomes(&e), [("10.244.1.4:8080".into(), 100, "10.244.0.9".into())]);
        assert!(!e.paths[0].dnat);
        let out = ask(r, "10.244.0.9", "192.0.2.7", 443);
        assert_eq!(outcomes(&out), [("192.0.2.7:443".into(), 100, "172.30.0.11".into())]);
        assert!(out.paths[0].masquerade.as_ref().unwrap().by.contains("leaving the cluster network"));
    });
}

#[test]
fn the_pod_firewall_refuses_new_connections_to_etcd() {
    let e = ask(&iptables(), "10.244.0.9", "172.30.0.2", 2379);
    assert_eq!(e.paths[0].verdict, Verdict::Rejected);
    assert!(e.paths[0].steps.iter().any(|s| s.chain == "OWNKUBE-FIREWALL"));
}

#[test]
fn unknown_matches_are_reported_not_guessed() {
    let mut r = iptables_save::parse(
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m frob --frob 1 -j DNAT --to-destination 10.0.0.1:1\nCOMMIT\n",
    );
    r.merge(Rules::default());
    let e = ask(&r, "10.244.0.9", "10.244.1.4", 80);
    assert_eq!(outcomes(&e), [("10.244.1.4:80".into(), 100, "10.244.0.9".into())]);
    assert!(e.paths[0].notes[0].contains("not evaluated (-m frob --frob 1)"), "{:?}", e.paths[0].notes);
}
