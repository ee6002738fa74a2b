//! Golden files: fixed services and endpoints render to checked-in `iptables-restore`
//! text. Run with `UPDATE_GOLDEN=1` to rewrite them after an intended change, then read
//! the diff.

use pkg::api::{Endpoints, Service};
use pkg::proxy::{backends_from_endpoints, service_ports, Planner};
use serde_json::json;
use std::collections::BTreeMap;

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn eps(ns: &str, name: &str, port_name: Option<&str>, port: u16, protocol: &str, ips: &[&str]) -> Endpoints {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "subsets": [{"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                     "ports": [{"name": port_name, "port": port, "protocol": protocol}]}]
    }))
    .unwrap()
}

/// The blog's example: a NodePort service `webapp` on 30001 in front of four pods on
/// two nodes; plus a ClusterIP service, a UDP one and one with no endpoints.
fn fixture() -> (Vec<Service>, Vec<Endpoints>) {
    let services = vec![
        svc(json!({"metadata": {"name": "webapp", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.100", "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30001, "protocol": "TCP"}]}})),
        svc(json!({"metadata": {"name": "api", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.4.2", "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]}})),
        svc(json!({"metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}})),
        svc(json!({"metadata": {"name": "empty", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.9.9", "ports": [{"port": 80, "nodePort": 30009, "protocol": "TCP"}]}})),
    ];
    let endpoints = vec![
        eps("default", "webapp", None, 8080, "TCP", &["10.244.0.2", "10.244.0.3", "10.244.1.2", "10.244.1.3"]),
        eps("shop", "api", Some("http"), 9000, "TCP", &["10.244.1.7", "10.244.0.9"]),
        eps("kube-system", "dns", Some("dns"), 53, "UDP", &["10.244.0.4"]),
    ];
    (services, endpoints)
}

fn check(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(got, want, "{name} differs from the golden file; UPDATE_GOLDEN=1 rewrites it");
}

fn ports(services: &[Service], endpoints: &[Endpoints]) -> pkg::proxy::Ports {
    service_ports(services, &backends_from_endpoints(endpoints), "node-a")
}

#[test]
fn full_sync_matches_golden() {
    let (s, e) = fixture();
    let plan = Planner::default().plan("10.244.0.0/16", &ports(&s, &e), true, &[]);
    check("full.iptables", &plan.ruleset.text);
    // 4 fixed rules + 2 per clusterIP port with endpoints (3) + last + 2 nodeport
    // + webapp 4 SVC + 4*2 SEP + api 2 + 2*2 + dns 1 + 2 + 2 REJECTs.
    assert_eq!(plan.ruleset.rules, 4 + 6 + 1 + 2 + 12 + 6 + 3 + 2);
}

#[test]
fn names_are_stable_across_runs() {
    let (s, e) = fixture();
    let a = Planner::default().plan("10.244.0.0/16", &ports(&s, &e), true, &[]).ruleset.text;
    let mut rev_s = s.clone();
    rev_s.reverse();
    let b = Planner::default().plan("10.244.0.0/16", &ports(&rev_s, &e), true, &[]).ruleset.text;
    assert_eq!(a, b);
    assert!(a.contains(":KUBE-SVC-"));
}

#[test]
fn partial_sync_writes_only_what_changed_and_removal_removes_exactly_its_chains() {
    let (s, e) = fixture();
    let mut planner = Planner::default();
    let first = planner.plan("10.244.0.0/16", &ports(&s, &e), true, &[]);
    let api_chains: Vec<String> =
        first.ruleset.text.lines().filter(|l| l.starts_with(":KUBE-S")).map(|l| l[1..].split(' ').next().unwrap().to_string()).collect();
    planner.applied(first);

    // Nothing changed: only the dispatch chains are written.
    let same = planner.plan("10.244.0.0/16", &ports(&s, &e), false, &[]);
    assert_eq!(same.written, 0);
    assert!(same.deleted.is_empty());
    planner.applied(same);

    // One endpoint of webapp goes away: only webapp's chains are rewritten, its SEP deleted.
    let mut e2 = e.clone();
    e2[0].subsets.as_mut().unwrap()[0].addresses.as_mut().unwrap().pop();
    let plan = planner.plan("10.244.0.0/16", &ports(&s, &e2), false, &[]);
    check("partial-endpoint-removed.iptables", &plan.ruleset.text);
    assert_eq!(plan.written, 1);
    assert_eq!(plan.deleted.len(), 1);
    planner.applied(plan);

    // The `api` service is deleted: exactly its SVC and SEP chains go.
    let s3: Vec<Service> = s.iter().filter(|x| x.metadata.name.as_deref() != Some("api")).cloned().collect();
    let plan = planner.plan("10.244.0.0/16", &ports(&s3, &e2), false, &[]);
    let api_port = pkg::proxy::ServicePort {
        name: "shop/api:http".into(),
        protocol: "tcp".into(),
        cluster_ip: None,
        port: 0,
        node_port: None,
        endpoints: vec![],
        ..Default::default()
    };
    let mut want = vec![api_port.svc_chain(), api_port.sep_chain("10.244.0.9", 9000), api_port.sep_chain("10.244.1.7", 9000)];
    want.sort();
    assert_eq!(plan.deleted, want);
    assert!(want.iter().all(|c| api_chains.contains(c)));
    assert!(!plan.ruleset.text.contains("shop/api:http cluster IP"));
    assert!(plan.ruleset.text.contains(&format!("-X {}", want[0])));
}

/// The nftables mode, from the same fixture: the full sync's transactions, and the one
/// transaction of a partial sync after an endpoint goes.
#[test]
fn nftables_syncs_match_golden() {
    use pkg::proxy::nftables;
    let (s, e) = fixture();
    let mut planner = nftables::Planner::default();
    let full = planner.plan("10.244.0.0/16", &ports(&s, &e), true, &[]);
    assert_eq!(full.transactions.len(), 2, "the fixed part with the chains, then the maps");
    check("full.nft", &full.transactions.join(nftables::NEXT_TRANSACTION));
    // webapp: service (2) + external (2); api 2; dns 2; fixed 17. No endpoint has a chain:
    // each service chain DNATs through a numgen map.
    assert_eq!(full.rules, 2 + 2 + 2 + 2 + 17);
    assert!(!full.transactions.concat().contains("add chain ip ownkube endpoint-"));
    planner.applied(full);
    let mut e2 = e.clone();
    e2[0].subsets.as_mut().unwrap()[0].addresses.as_mut().unwrap().pop();
    let partial = planner.plan("10.244.0.0/16", &ports(&s, &e2), false, &[]);
    check("partial-endpoint-removed.nft", &partial.transactions[0]);
    assert_eq!((partial.written, partial.flushed.len()), (1, 0), "webapp's service chain rewritten, nothing flushed");
    let tx = &partial.transactions[0];
    assert!(!tx.contains("service-ips") && !tx.contains("service-nodeports"), "no map changes when only endpoints change: {tx}");
    assert_eq!(tx.matches("delete element ip ownkube hairpin").count(), 1, "the endpoint's hairpin pair goes: {tx}");
}

/// The policies, rendered for node `node-a`: `sticky` (ClientIP affinity, 60 s), `edge`
/// (NodePort, `externalTrafficPolicy: Local`, one endpoint here and one on node-b),
/// `far` (the same with no endpoint here), `near` (`internalTrafficPolicy: Local`, one
/// endpoint here) and `nowhere` (`internalTrafficPolicy: Local`, none here).
fn policy_fixture() -> pkg::proxy::Ports {
    let svc_with = |name: &str, ip: &str, spec: serde_json::Value| {
        let mut s = json!({"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]});
        s.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        svc(json!({"metadata": {"name": name, "namespace": "default"}, "spec": s}))
    };
    let np = |n: u16| json!([{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": n}]);
    let services = vec![
        svc_with(
            "sticky",
            "10.96.1.1",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        ),
        svc_with("edge", "10.96.1.2", json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": np(30101)})),
        svc_with("far", "10.96.1.3", json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": np(30102)})),
        svc_with("near", "10.96.1.4", json!({"internalTrafficPolicy": "Local"})),
        svc_with("nowhere", "10.96.1.5", json!({"internalTrafficPolicy": "Local"})),
    ];
    let slice = |svc: &str, eps: &[(&str, &str)]| -> pkg::api::EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": eps.iter().map(|(ip, node)| json!({"addresses": [ip], "nodeName": node})).collect::<Vec<_>>()}))
        .unwrap()
    };
    let slices = [
        slice("sticky", &[("10.244.0.2", "node-a"), ("10.244.1.2", "node-b")]),
        slice("edge", &[("10.244.0.3", "node-a"), ("10.244.1.3", "node-b")]),
        slice("far", &[("10.244.1.4", "node-b")]),
        slice("near", &[("10.244.0.5", "node-a"), ("10.244.1.5", "node-b")]),
        slice("nowhere", &[("10.244.1.6", "node-b")]),
    ];
    service_ports(&services, &pkg::proxy::backends_from_slices(&slices), "node-a")
}

#[test]
fn policies_match_golden_in_both_modes() {
    let ports = policy_fixture();
    let edge = &ports[&("default/edge:80".to_string(), "tcp".to_string())];
    assert_eq!(edge.local_endpoints, [("10.244.0.3".to_string(), 8080)]);
    assert_eq!(edge.endpoints.len(), 2);
    assert!(ports[&("default/sticky:80".to_string(), "tcp".to_string())].local_endpoints.is_empty(), "no Local policy: not computed");

    let ipt = Planner::default().plan("10.244.0.0/16", &ports, true, &[]).ruleset.text;
    check("policies.iptables", &ipt);
    let nft = pkg::proxy::nftables::Planner::default()
        .plan("10.244.0.0/16", &ports, true, &[])
        .transactions
        .join(pkg::proxy::nftables::NEXT_TRANSACTION);
    check("policies.nft", &nft);
    for (text, mode) in [(&ipt, "iptables"), (&nft, "nftables")] {
        // far and nowhere: no endpoint here, so dropped, not rejected; near's ClusterIP
        // goes to its local endpoint only and is not masqueraded.
        assert!(!text.contains("10.244.1.5"), "{mode}: near's remote endpoint is never used");
        assert!(!text.contains("10.244.1.6"), "{mode}: nowhere's remote endpoint is never used");
    }
    assert!(
        ipt.contains("\"default/far:80 has no local endpoints\" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30102 -j DROP"),
        "{ipt}"
    );
    assert!(ipt.contains("\"default/nowhere:80 has no local endpoints\" -d 10.96.1.5/32 -p tcp -m tcp --dport 80 -j DROP"), "{ipt}");
    assert!(ipt.contains("--rcheck --seconds 60 --reap"), "{ipt}");
    assert!(nft.contains("add element ip ownkube no-endpoint-nodeports { tcp . 30102 : drop }"), "{nft}");
    assert!(nft.contains("add element ip ownkube no-endpoint-services { 10.96.1.5 . tcp . 80 : drop }"), "{nft}");
    assert!(nft.contains("flags dynamic,timeout ; timeout 60s"), "{nft}");
}

/// SCTP ports get no rules and are reported; the TCP port of the same service is kept.
#[test]
fn sctp_ports_are_refused_with_a_reason() {
    let s = svc(json!({"metadata": {"name": "sig", "namespace": "default"}, "spec": {"clusterIP": "10.96.2.2", "ports": [
        {"name": "a", "port": 9999, "protocol": "SCTP"}, {"name": "b", "port": 80, "protocol": "TCP"}]}}));
    let ports = service_ports([&s], &BTreeMap::new(), "node-a");
    assert_eq!(ports.keys().map(|k| k.0.as_str()).collect::<Vec<_>>(), ["default/sig:b"]);
    let why = pkg::proxy::unsupported([&s]);
    assert_eq!(why.len(), 1);
    assert_eq!(why[0].0, "default/sig");
    assert!(why[0].1.contains("9999/SCTP"), "{:?}", why);
}
