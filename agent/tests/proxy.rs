//! kube-proxy against the real `iptables` (nf_tables backend) and the real `nft`, inside
//! throwaway network namespaces: the same packet assertions hold in both modes — a client
//! reaches every backend through a ClusterIP and a NodePort, a service without endpoints
//! refuses, UDP flows move off a removed endpoint, a deleted service leaves no rule; and
//! the Service policies: ClientIP affinity holds a client on one endpoint,
//! `externalTrafficPolicy: Local` sends to local endpoints only and the pod sees the
//! client's own address, a node without local endpoints drops, `internalTrafficPolicy:
//! Local` keeps ClusterIP traffic on the node.

mod netns;
use agent::proxy::{iptables::Runner, Mode, Proxier};
use netns::*;
use pkg::api::{EndpointSlice, Endpoints, Service};
use serde_json::json;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// `n` TCP connections from the client namespace; who answered, how often.
fn tcp_hits(lab: &Lab, target: &str, n: usize) -> HashMap<String, usize> {
    hits(&lab.client, target, n)
}

fn svc(name: &str, ip: &str, ports: serde_json::Value, ty: &str) -> Service {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"type": ty, "clusterIP": ip, "ports": ports}}),
    )
    .unwrap()
}

fn eps(name: &str, backends: &[usize], ports: serde_json::Value) -> Endpoints {
    let addrs: Vec<_> = backends.iter().map(|&i| json!({"ip": Lab::backend_ip(i)})).collect();
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "subsets": [{"addresses": addrs, "ports": ports}]}))
        .unwrap()
}

struct World {
    services: Vec<Service>,
    endpoints: Vec<Endpoints>,
}

impl World {
    async fn sync(&self, p: &mut Proxier) {
        let s: Vec<&Service> = self.services.iter().collect();
        p.sync(&s, &pkg::proxy::backends_from_endpoints(&self.endpoints)).await.expect("sync");
    }
}

/// `iptables-save` of a table without the comment lines (they carry timestamps).
fn save(lab: &Lab, table: &str) -> String {
    let (ok, out) = exec(&lab.node.name, &["iptables-save", "-t", table]);
    assert!(ok, "{out}");
    out.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
}

/// What the mode wrote: the `nat` table (iptables) or ownkube's table (nftables).
fn rules(lab: &Lab, mode: Mode) -> String {
    match mode {
        Mode::Iptables => save(lab, "nat"),
        Mode::Nftables => exec(&lab.node.name, &["nft", "list", "table", "ip", "ownkube"]).1,
    }
}

/// The per-service chains of `svc` in what [`rules`] returned.
fn chains_of(rules: &str, mode: Mode, svc: &str) -> Vec<String> {
    let mut out: Vec<String> = match mode {
        Mode::Iptables => rules
            .lines()
            .filter(|l| l.contains(&format!("{svc}:")) && (l.starts_with("-A KUBE-SVC-") || l.starts_with("-A KUBE-SEP-")))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect(),
        Mode::Nftables => pkg::proxy::nftables::objects(rules).into_iter().filter(|c| c.contains(&format!("-{svc}/"))).collect(),
    };
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_reaches_every_backend() {
    reaches_every_backend(Mode::Iptables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_mode_reaches_every_backend() {
    reaches_every_backend(Mode::Nftables).await;
}

async fn reaches_every_backend(mode: Mode) {
    let lab = Lab::new(3);
    serve_backends(&lab);
    let node = lab.node.name.clone();
    // Rules that are not ours, which must survive every sync.
    assert!(exec(&node, &["iptables", "-t", "nat", "-N", "MY-CHAIN"]).0);
    assert!(
        exec(
            &node,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "192.0.2.0/24",
                "-m",
                "comment",
                "--comment",
                "not ownkube",
                "-j",
                "RETURN"
            ]
        )
        .0
    );

    let mut proxier = Proxier::with_mode(Runner::in_netns(&node), "10.244.0.0/16", mode);
    proxier.prepare_host().await;
    let tcp = json!([{"port": 80, "targetPort": 8080, "nodePort": 30001, "protocol": "TCP"}]);
    let mut world = World {
        services: vec![
            svc("web", "10.96.0.50", tcp.clone(), "NodePort"),
            svc("dns", "10.96.0.53", json!([{"name": "dns", "port": 53, "protocol": "UDP"}]), "ClusterIP"),
            svc("empty", "10.96.0.99", json!([{"port": 80, "protocol": "TCP", "nodePort": 30009}]), "NodePort"),
        ],
        endpoints: vec![
            eps("web", &[0, 1, 2], json!([{"port": 8080, "protocol": "TCP"}])),
            eps("dns", &[0, 1, 2], json!([{"name": "dns", "port": 5353, "protocol": "UDP"}])),
        ],
    };
    world.sync(&mut proxier).await;

    // ClusterIP and NodePort: 200 connections each, spread over all three backends.
    for target in ["10.96.0.50:80", &format!("{NODE_IP}:30001")] {
        let hits = tcp_hits(&lab, target, 200);
        assert_eq!(hits.len(), 3, "{target}: {hits:?}");
        assert!(hits.values().all(|&n| n >= 20), "{target}: uneven {hits:?}");
    }

    // A service without endpoints refuses at once instead of hanging.
    let refused = lab
        .client
        .run(|| TcpStream::connect_timeout(&"10.96.0.99:80".parse().unwrap(), Duration::from_secs(3)).map(|_| ()).map_err(|e| e.kind()))
        .join()
        .unwrap();
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));

    // UDP: a client keeps its backend through conntrack...
    let sock = lab.client.run(|| {
        let u = UdpSocket::bind("0.0.0.0:40000").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        u
    });
    let sock = sock.join().unwrap();
    let ask = |u: &UdpSocket| {
        u.send_to(b"who", "10.96.0.53:53").unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = u.recv_from(&mut buf).expect("udp answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = ask(&sock);
    assert_eq!(ask(&sock), first, "same flow, same backend");

    // ... until its endpoint is removed: the flow is cleared and moves elsewhere.
    let gone: usize = first.trim_start_matches("be").parse::<usize>().unwrap() - 1;
    let keep: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    world.endpoints[1] = eps("dns", &keep, json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]));
    // And one TCP endpoint goes too: no new connection reaches it.
    world.endpoints[0] = eps("web", &[0, 1], json!([{"port": 8080, "protocol": "TCP"}]));
    world.sync(&mut proxier).await;
    let after = ask(&sock);
    assert_ne!(after, first, "conntrack entry for the removed UDP endpoint was cleared");
    let hits = tcp_hits(&lab, "10.96.0.50:80", 200);
    assert!(!hits.contains_key("be3"), "removed endpoint still reached: {hits:?}");
    assert_eq!(hits.len(), 2);

    // The sync's history record says what went, and its removed lines are gone from the kernel.
    let (kept, _) = proxier.history.subscribe();
    let last = kept.last().expect("a history record per sync");
    let be3 = format!("{}:8080", Lab::backend_ip(2));
    assert!(last.changes.iter().any(|c| c.starts_with("default/web:") && c.ends_with(&format!("endpoint {be3} removed"))), "{last:?}");
    // iptables: `--to-destination ip:port`; nftables: `dnat to ip:port` or a numgen map's `ip . port`.
    let be3_nft = format!("{} . 8080", Lab::backend_ip(2));
    let dnat = last.removed.iter().find(|l| (l.contains(&be3) || l.contains(&be3_nft)) && l.contains("to")).expect("a DNAT line removed");
    let loaded = rules(&lab, mode);
    assert!(!loaded.contains(&be3) && !loaded.contains(&be3_nft), "{dnat} is still loaded");
    let be1_dnat = |l: &&String| {
        l.contains(&format!("to-destination {}:8080", Lab::backend_ip(0))) || l.contains(&format!("dnat to {}:8080", Lab::backend_ip(0)))
    };
    assert!(!last.removed.iter().chain(&last.added).any(|l| be1_dnat(&l)), "be1's chain is unchanged: {last:?}");
    assert_eq!(kept.len(), 2, "one record per sync: {kept:?}");

    // Syncing again changes nothing.
    world.sync(&mut proxier).await; // (nftables: deletes what the last sync flushed)
    let before = rules(&lab, mode);
    world.sync(&mut proxier).await;
    assert_eq!(rules(&lab, mode), before);

    // A restarted proxy (nothing remembered) converges to the same rules, one set of jumps.
    let mut restarted = Proxier::with_mode(Runner::in_netns(&node), "10.244.0.0/16", mode);
    world.sync(&mut restarted).await;
    world.sync(&mut restarted).await;
    let now = rules(&lab, mode);
    assert_eq!(chains_of(&now, mode, "default/web"), chains_of(&before, mode, "default/web"));
    if mode == Mode::Iptables {
        assert_eq!(now, before);
        for jump in [
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        ] {
            assert_eq!(now.lines().filter(|l| *l == jump).count(), 1, "{jump}\n{now}");
        }
    }
    let hits = tcp_hits(&lab, "10.96.0.50:80", 100);
    assert_eq!(hits.len(), 2, "after the restart: {hits:?}");

    // Deleting a service removes its chains; unrelated rules are still there.
    let web_chains = chains_of(&now, mode, "default/web");
    // iptables: KUBE-SVC and two KUBE-SEP; nftables: service and external (the service chain DNATs itself).
    assert_eq!(web_chains.len(), 2 + usize::from(mode == Mode::Iptables), "web's chains: {web_chains:?}");
    world.services.retain(|s| s.metadata.name.as_deref() != Some("web"));
    world.endpoints.retain(|e| e.metadata.name.as_deref() != Some("web"));
    world.sync(&mut restarted).await;
    world.sync(&mut restarted).await; // (nftables: flushed, then deleted)
    let now = rules(&lab, mode);
    let left: Vec<&String> = web_chains.iter().filter(|c| now.contains(c.as_str())).collect();
    assert!(left.is_empty(), "chains of the deleted service left: {left:?}\n{now}");
    assert!(now.contains("default/dns"), "the other service stays:\n{now}");
    assert!(!now.contains("default/web"), "{now}");
    let nat = save(&lab, "nat");
    assert!(nat.contains(":MY-CHAIN") && nat.contains("not ownkube"), "unrelated rules survive:\n{nat}");
    let refused = lab
        .client
        .run(|| {
            TcpStream::connect_timeout(&format!("{NODE_IP}:30001").parse().unwrap(), Duration::from_secs(3))
                .map(|_| ())
                .map_err(|e| e.kind())
        })
        .join()
        .unwrap();
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
}

/// A node switched from one mode to the other (a restarted agent with another
/// `--proxy-mode`): the new mode's first sync takes the old mode's rules away — every
/// KUBE-* chain and jump, or the `ip ownkube` table — and the Service still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_leaves_only_the_new_modes_rules() {
    let lab = Lab::new(2);
    serve_backends(&lab);
    let node = lab.node.name.clone();
    let tcp = json!([{"port": 80, "targetPort": 8080, "nodePort": 30001, "protocol": "TCP"}]);
    let world = World {
        services: vec![svc("web", "10.96.0.50", tcp, "NodePort")],
        endpoints: vec![eps("web", &[0, 1], json!([{"port": 8080, "protocol": "TCP"}]))],
    };
    let kube_lines = || {
        let all = format!("{}\n{}", save(&lab, "nat"), save(&lab, "filter"));
        all.lines().filter(|l| l.contains("KUBE-")).map(String::from).collect::<Vec<_>>()
    };
    let has_table = || exec(&node, &["nft", "list", "table", "ip", "ownkube"]).0;
    for (mode, from) in [(Mode::Iptables, "start"), (Mode::Nftables, "iptables"), (Mode::Iptables, "nftables")] {
        let mut proxier = Proxier::with_mode(Runner::in_netns(&node), "10.244.0.0/16", mode);
        proxier.prepare_host().await;
        world.sync(&mut proxier).await;
        let hits = tcp_hits(&lab, "10.96.0.50:80", 60);
        assert_eq!(hits.len(), 2, "{mode:?} after {from}: {hits:?}");
        match mode {
            Mode::Iptables => {
                assert!(!has_table(), "iptables after {from}: the nftables table is gone");
                assert!(kube_lines().iter().any(|l| l.starts_with("-A KUBE-SVC-")), "iptables rules written");
            }
            Mode::Nftables => {
                assert!(has_table(), "nftables table written");
                assert_eq!(kube_lines(), Vec::<String>::new(), "nftables after {from}: no KUBE-* chain or jump is left");
            }
        }
    }
}

/// A connection attempt from the client that must fail: how it failed.
fn connect_error(lab: &Lab, target: &str) -> ErrorKind {
    let target: SocketAddr = target.parse().unwrap();
    lab.client
        .run(move || TcpStream::connect_timeout(&target, Duration::from_millis(1500)).map(|_| ()).map_err(|e| e.kind()))
        .join()
        .unwrap()
        .expect_err("the connection must not succeed")
}

/// An EndpointSlice of `name`: backends `(index, node)` on port 8080 (`http`) and 8081 (`who`).
fn slice(name: &str, backends: &[(usize, &str)]) -> EndpointSlice {
    let eps: Vec<_> = backends.iter().map(|(i, node)| json!({"addresses": [Lab::backend_ip(*i)], "nodeName": node})).collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "who", "port": 8081, "protocol": "TCP"}]}))
    .unwrap()
}

fn policy_svc(name: &str, ip: &str, ty: &str, node_port: Option<u16>, extra: serde_json::Value) -> Service {
    let mut port = json!({"name": "who", "port": 80, "targetPort": "who", "protocol": "TCP"});
    if let Some(np) = node_port {
        port["nodePort"] = json!(np);
    }
    let mut spec = json!({"type": ty, "clusterIP": ip, "ports": [port]});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}, "spec": spec})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_honours_service_policies() {
    honours_service_policies(Mode::Iptables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_mode_honours_service_policies() {
    honours_service_policies(Mode::Nftables).await;
}

/// be1 runs on this node (`node-a`); be2 and be3 are taken to run on `node-b` (they sit
/// behind the same bridge, so a packet sent to them would arrive: only the rules keep it away).
async fn honours_service_policies(mode: Mode) {
    let lab = Lab::new(3);
    serve_backends(&lab);
    let mut proxier = Proxier::with_mode(Runner::in_netns(&lab.node.name), "10.244.0.0/16", mode).on_node("node-a");
    proxier.prepare_host().await;
    let all = [(0, "node-a"), (1, "node-b"), (2, "node-b")];
    let services = [
        policy_svc(
            "sticky",
            "10.96.0.60",
            "ClusterIP",
            None,
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}),
        ),
        policy_svc("spread", "10.96.0.61", "NodePort", Some(30003), json!({"externalTrafficPolicy": "Cluster"})),
        policy_svc("edge", "10.96.0.62", "NodePort", Some(30002), json!({"externalTrafficPolicy": "Local"})),
        policy_svc("far", "10.96.0.63", "NodePort", Some(30004), json!({"externalTrafficPolicy": "Local"})),
        policy_svc("near", "10.96.0.64", "ClusterIP", None, json!({"internalTrafficPolicy": "Local"})),
        policy_svc("nowhere", "10.96.0.65", "ClusterIP", None, json!({"internalTrafficPolicy": "Local"})),
    ];
    let slices = [
        slice("sticky", &all),
        slice("spread", &all),
        slice("edge", &all),
        slice("far", &[(1, "node-b"), (2, "node-b")]),
        slice("near", &all),
        slice("nowhere", &[(2, "node-b")]),
    ];
    let svcs: Vec<&Service> = services.iter().collect();
    proxier.sync(&svcs, &pkg::proxy::backends_from_slices(&slices)).await.expect("sync");

    // Affinity: 60 connections in a row from one client, one backend (by chance: 3 x 3^-60).
    let hits = tcp_hits(&lab, "10.96.0.60:80", 60);
    assert_eq!(hits.len(), 1, "{mode:?}: ClientIP affinity keeps the client on one endpoint: {hits:?}");

    // externalTrafficPolicy: Cluster spreads and masquerades; Local stays here and keeps the source.
    let spread = tcp_hits(&lab, &format!("{NODE_IP}:30003"), 60);
    assert!(spread.len() > 1 && spread.keys().all(|k| !k.ends_with("10.99.0.2")), "{mode:?}: Cluster: spread, masqueraded: {spread:?}");
    let edge = tcp_hits(&lab, &format!("{NODE_IP}:30002"), 60);
    assert_eq!(edge.keys().collect::<Vec<_>>(), ["be1 10.99.0.2"], "{mode:?}: Local: only the local endpoint, client address kept");
    // No local endpoint: dropped (not refused: a load balancer's health check moves traffic away).
    assert_eq!(connect_error(&lab, &format!("{NODE_IP}:30004")), ErrorKind::TimedOut, "{mode:?}: far");
    // ... while its ClusterIP (policy Cluster) still reaches the remote endpoints.
    assert!(tcp_hits(&lab, "10.96.0.63:80", 20).keys().all(|k| k.starts_with("be2") || k.starts_with("be3")));

    // internalTrafficPolicy: Local: the ClusterIP reaches only the local endpoint; none here: dropped.
    let near = tcp_hits(&lab, "10.96.0.64:80", 40);
    assert_eq!(near.keys().map(|k| &k[..3]).collect::<Vec<_>>(), ["be1"], "{mode:?}: near: {near:?}");
    assert_eq!(connect_error(&lab, "10.96.0.65:80"), ErrorKind::TimedOut, "{mode:?}: nowhere");

    // A restarted proxy converges to the same behaviour (and the health checks say who serves).
    let mut again = Proxier::with_mode(Runner::in_netns(&lab.node.name), "10.244.0.0/16", mode).on_node("node-a");
    again.sync(&svcs, &pkg::proxy::backends_from_slices(&slices)).await.expect("sync");
    assert_eq!(tcp_hits(&lab, "10.96.0.60:80", 20).len(), 1, "{mode:?}: affinity after a restart");
    assert_eq!(tcp_hits(&lab, &format!("{NODE_IP}:30002"), 20).len(), 1);
}

/// The health check of an `externalTrafficPolicy: Local` LoadBalancer: 200 with local
/// endpoints, 503 without, gone when the service is.
#[tokio::test]
async fn health_check_ports_answer_by_local_endpoints() {
    use agent::proxy::healthcheck::HealthServers;
    use pkg::proxy::HealthCheck;
    let mut servers = HealthServers::on(std::net::Ipv4Addr::LOCALHOST);
    let want = |port: u16, n: usize| {
        std::collections::BTreeMap::from([(port, HealthCheck { service: "default/edge".into(), local_endpoints: n })])
    };
    // A port below the ephemeral range (the other tests' connections take source ports from
    // it) that the servers could bind: a port found free a moment ago may be taken since.
    let mut ports = 20_000..30_000;
    let port = loop {
        let p = ports.next().expect("a free port");
        let failed = servers.sync(&want(p, 2)).await;
        if failed.is_empty() {
            break p;
        }
        assert_eq!(failed[0].1.kind(), ErrorKind::AddrInUse, "{failed:?}");
    };
    assert_eq!(servers.ports(), [port]);
    let get = || async move { reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await };
    let sockets = || String::from_utf8_lossy(&std::process::Command::new("ss").arg("-tan").output().unwrap().stdout).into_owned();
    let r = get().await.unwrap_or_else(|e| panic!("{e}: the sockets of this host:\n{}", sockets()));
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, json!({"service": {"namespace": "default", "name": "edge"}, "localEndpoints": 2, "serviceProxyHealthy": true}));
    servers.sync(&want(port, 0)).await;
    assert_eq!(get().await.unwrap().status(), 503);
    servers.sync(&Default::default()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(get().await.is_err(), "the server stops with its service");
    assert!(servers.ports().is_empty());
}
