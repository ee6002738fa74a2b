//! `/debug/explain` against what really happens, in throwaway network namespaces, in both
//! proxy modes: for ClusterIP from outside the node, NodePort, a pod reaching its own
//! service (hairpin), the node itself and a service without endpoints, the explained
//! destinations are the backends that actually answer 120 connections, the source each
//! backend sees is the one explained (masqueraded or not), and refused is refused. In
//! nftables mode the kernel's own trace (`nft monitor trace`) of one connection lists
//! the same rules, in the same order, as the explained path to the backend that answered.

mod netns;
use agent::proxy::{explain::explain, iptables::Runner, Mode, Proxier};
use netns::*;
use pkg::api::{Endpoints, Service};
use pkg::explain::{Explanation, Packet, Verdict};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn world() -> (Vec<Service>, Vec<Endpoints>) {
    let svc = |name: &str, ip: &str, np: u16| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"type": "NodePort", "clusterIP": ip,
            "ports": [{"port": 80, "targetPort": 8081, "nodePort": np, "protocol": "TCP"}]}}))
        .unwrap()
    };
    let addrs: Vec<_> = (0..3).map(|i| json!({"ip": Lab::backend_ip(i)})).collect();
    let eps = serde_json::from_value(
        json!({"metadata": {"name": "web", "namespace": "default"}, "subsets": [{"addresses": addrs, "ports": [{"port": 8081, "protocol": "TCP"}]}]}),
    )
    .unwrap();
    (vec![svc("web", "10.96.0.50", 30001), svc("empty", "10.96.0.99", 30009)], vec![eps])
}

fn ask(src: &str, dst: &str, port: u16) -> Packet {
    Packet { proto: "tcp".into(), src: src.parse().unwrap(), sport: None, dst: dst.parse().unwrap(), port }
}

/// Delivered destinations (`ip:port`) and the source each sees; probabilities add to 1.
fn explained(e: &Explanation) -> BTreeMap<String, String> {
    let total: f64 = e.paths.iter().map(|p| p.probability).sum();
    assert!((total - 1.0).abs() < 1e-9, "probabilities add up to {total}:\n{}", e.text());
    e.paths
        .iter()
        .map(|p| {
            assert_eq!(p.verdict, Verdict::Delivered, "{}", e.text());
            (p.destination.clone(), p.source.to_string())
        })
        .collect()
}

/// What 120 real connections found: backend `ip:8081` → the source address it saw.
fn answered(ns: &Netns, target: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (answer, _) in hits(ns, target, 120) {
        let (name, from) = answer.split_once(' ').expect("'beN FROM'");
        let i: usize = name.trim_start_matches("be").parse().unwrap();
        out.entry(format!("{}:8081", Lab::backend_ip(i - 1))).or_default().insert(from.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_explains_what_packets_do() {
    explains_what_packets_do(Mode::Iptables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_mode_explains_what_packets_do() {
    explains_what_packets_do(Mode::Nftables).await;
}

async fn explains_what_packets_do(mode: Mode) {
    let lab = Lab::new(3);
    serve_backends(&lab);
    for i in 1..=3 {
        // As the kubelet does: a pod may reach itself through a service.
        ip(&["-n", &lab.node.name, "link", "set", &format!("be{i}"), "type", "bridge_slave", "hairpin", "on"]);
    }
    let runner = Runner::in_netns(&lab.node.name);
    let mut proxier = Proxier::with_mode(runner.clone(), "10.244.0.0/16", mode);
    proxier.prepare_host().await;
    let (services, endpoints) = world();
    proxier.sync(&services.iter().collect::<Vec<_>>(), &pkg::proxy::backends_from_endpoints(&endpoints)).await.expect("sync");
    let node_ns = Netns { name: lab.node.name.clone() };
    let cases: [(&str, &Netns, &str, &str, u16); 4] = [
        ("ClusterIP from outside the node", &lab.client, "10.99.0.2", "10.96.0.50", 80),
        ("NodePort", &lab.client, "10.99.0.2", NODE_IP, 30001),
        ("hairpin: a backend to its own service", &lab.backends[0], "10.244.0.11", "10.96.0.50", 80),
        // The node's own connection takes br0's address, the route to 10.96.0.0/16 being on br0.
        ("ClusterIP from the node", &node_ns, "10.244.0.1", "10.96.0.50", 80),
    ];
    for (what, ns, src, dst, port) in cases {
        let e = explain(&runner, &ask(src, dst, port)).await.expect("explain");
        eprintln!("{mode:?} {what}");
        let want = explained(&e);
        let got = answered(ns, &format!("{dst}:{port}"));
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{mode:?} {what}: who answers\n{}", e.text());
        for (backend, sources) in &got {
            assert_eq!(sources.iter().collect::<Vec<_>>(), [&want[backend]], "{mode:?} {what}: source seen by {backend}\n{}", e.text());
        }
    }
    std::mem::forget(node_ns); // the Lab deletes it
    for (dst, port) in [("10.96.0.99", 80), (NODE_IP, 30009)] {
        let e = explain(&runner, &ask("10.99.0.2", dst, port)).await.unwrap();
        assert!(e.paths.iter().all(|p| p.verdict == Verdict::Rejected), "{mode:?} {dst}:{port}\n{}", e.text());
        let target: SocketAddr = format!("{dst}:{port}").parse().unwrap();
        let err = lab.client.run(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)).map(|_| ())).join().unwrap();
        assert_eq!(err.map_err(|e| e.kind()), Err(ErrorKind::ConnectionRefused), "{mode:?} {dst}:{port}");
    }
    if mode == Mode::Nftables {
        kernel_trace_matches(&lab, &runner).await;
    }
}

/// One real connection traced by the kernel (`meta nftrace set 1` in a table of its own,
/// `nft monitor trace`): the rules of ownkube's table it went through, in order, are
/// the explained path's to the backend that answered.
async fn kernel_trace_matches(lab: &Lab, runner: &Runner) {
    let node = &lab.node.name;
    let table = "table ip trace {\n chain pre {\n type filter hook prerouting priority -350; policy accept;\n ip saddr 10.99.0.2 ip daddr 10.96.0.50 meta nftrace set 1\n }\n}\n";
    runner.pipe("nft", &["-f", "-"], table).await.expect("trace table");
    let mut monitor = std::process::Command::new("ip")
        .args(["netns", "exec", node, "nft", "monitor", "trace"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let answer = hits(&lab.client, "10.96.0.50:80", 1).into_keys().next().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    monitor.kill().unwrap();
    let _ = monitor.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(monitor.stdout.as_mut().unwrap(), &mut out).unwrap();
    let first_id = out.lines().find_map(|l| l.strip_prefix("trace id ")?.split(' ').next()).expect("a trace").to_string();
    let traced: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("trace id {first_id} ip ownkube ")))
        .filter_map(|l| {
            let (chain, rest) = l.split_once(" rule ")?;
            Some((chain.to_string(), rest.rsplit_once(" (verdict")?.0.to_string()))
        })
        .collect();
    assert!(traced.len() >= 4, "the trace shows the service dispatch, the endpoint choice and the DNAT: {out}");
    let i: usize = answer.split(' ').next().unwrap().trim_start_matches("be").parse().unwrap();
    let backend = format!("{}:8081", Lab::backend_ip(i - 1));
    let e = explain(runner, &ask("10.99.0.2", "10.96.0.50", 80)).await.unwrap();
    let path = e.paths.iter().find(|p| p.destination == backend).expect("the backend that answered is explained");
    let steps: Vec<(String, String)> =
        path.steps.iter().filter(|s| s.table == "nft ip ownkube").map(|s| (s.chain.clone(), s.rule.clone())).collect();
    assert_eq!(steps, traced, "explained path vs the kernel's trace\n{out}");
    let _ = runner.run("nft", &["delete", "table", "ip", "trace"]).await;
}
