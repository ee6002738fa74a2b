//! The cluster DNS against a real apiserver on a real etcd, asked by a real client
//! (`dig`, from Debian's bind9-dnsutils): every record type, negative answers, UDP and
//! TCP, truncation, forwarding, and a Service's name appearing and disappearing as the
//! Service is created and deleted.

#[path = "../../apiserver/tests/common/mod.rs"]
mod common;

use common::{eventually, free_port, Cluster};
use dns::forward::Upstream;
use dns::handler::Handler;
use dns::watch::{self, Shared, Zone};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What `dig` printed, read back.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answers: Vec<String>,
    authority: Vec<String>,
}

impl Dig {
    /// The answers' data (the last field(s) after the type), sorted.
    fn data(&self) -> Vec<String> {
        let mut v: Vec<String> = self.answers.iter().map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" ")).collect();
        v.sort();
        v
    }
}

fn dig(port: u16, args: &[&str]) -> Dig {
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig must be installed (Debian: bind9-dnsutils; scripts/install-deps does it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(String::from).collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.is_empty() || line.starts_with(";;") {
            section = "";
        } else if !line.starts_with(';') {
            match section {
                "answer" => d.answers.push(line.to_string()),
                "authority" => d.authority.push(line.to_string()),
                _ => {}
            }
        }
    }
    assert!(!d.status.is_empty(), "dig {args:?} got no answer:\n{text}");
    d
}

/// A DNS server for `domain` on a free port, following `cluster`; its UDP and TCP port.
async fn start_dns(cluster: &Cluster, domain: &str, upstream: Option<SocketAddr>) -> u16 {
    let client = kube::Client::try_from(kube::Config::new(cluster.base.parse().unwrap())).unwrap();
    let tables = Shared::default();
    let zone = Zone { domain: domain.into(), reverse: vec!["10.96.0.0/16".parse().unwrap(), "10.244.0.0/16".parse().unwrap()], ttl: 5 };
    tokio::spawn(watch::run(client, zone, tables.clone()));
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let upstream = upstream.map(|addr| Upstream { addr, timeout: Duration::from_secs(1) });
    let mut server = hickory_server::Server::new(Handler { tables, upstream, ttl: 5 });
    server.register_socket(tokio::net::UdpSocket::bind(addr).await.unwrap());
    server.register_listener(tokio::net::TcpListener::bind(addr).await.unwrap(), Duration::from_secs(5), 32);
    tokio::spawn(async move { server.block_until_done().await });
    port
}

fn service(name: &str, cluster_ip: Option<&str>, ports: Value) -> Value {
    let mut spec = json!({"ports": ports});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

fn slice(svc: &str, eps: &[(String, bool)]) -> Value {
    let endpoints: Vec<Value> = eps.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect();
    json!({"metadata": {"name": format!("{svc}-1"), "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "pg", "port": 5433, "protocol": "TCP"}]})
}

async fn wait_for_answer(port: u16, name: &str, what: &str) -> Dig {
    eventually(10, what, || async {
        let d = dig(port, &[name, "A"]);
        (!d.answers.is_empty()).then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_every_record_type_from_the_api() {
    let c = Cluster::start().await;
    let ns = "/api/v1/namespaces/default";
    let web = c.create(&format!("{ns}/services"), service("web", None, json!([{"name": "http", "port": 80, "targetPort": 8080}]))).await;
    let web_ip = web["spec"]["clusterIP"].as_str().unwrap().to_string();
    c.create(&format!("{ns}/services"), service("db", Some("None"), json!([{"name": "pg", "port": 5432, "targetPort": 5433}]))).await;
    let eps = [("10.244.0.7".to_string(), true), ("10.244.1.3".to_string(), true), ("10.244.1.9".to_string(), false)];
    c.create("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", slice("db", &eps)).await;
    let port = start_dns(&c, "cluster.local", None).await;

    // A Service: its ClusterIP, from the authority (aa), over UDP and TCP.
    let a = wait_for_answer(port, "web.default.svc.cluster.local", "web's A record").await;
    assert_eq!(a.status, "NOERROR");
    assert!(a.flags.contains(&"aa".to_string()), "{a:?}");
    assert_eq!(a.data(), vec![web_ip.clone()]);
    assert!(a.answers[0].split_whitespace().nth(1) == Some("5"), "TTL 5 s: {a:?}");
    assert_eq!(dig(port, &["+tcp", "web.default.svc.cluster.local", "A"]).data(), vec![web_ip.clone()]);
    // A headless Service: every ready endpoint, and each by its own name.
    assert_eq!(dig(port, &["db.default.svc.cluster.local", "A"]).data(), ["10.244.0.7", "10.244.1.3"]);
    assert_eq!(dig(port, &["10-244-1-3.db.default.svc.cluster.local", "A"]).data(), ["10.244.1.3"]);
    // Named ports.
    assert_eq!(dig(port, &["_http._tcp.web.default.svc.cluster.local", "SRV"]).data(), ["0 100 80 web.default.svc.cluster.local."]);
    let srv = dig(port, &["_pg._tcp.db.default.svc.cluster.local", "SRV"]).data();
    assert_eq!(srv, ["0 50 5433 10-244-0-7.db.default.svc.cluster.local.", "0 50 5433 10-244-1-3.db.default.svc.cluster.local."]);
    // Pods by their dashed IP; reverse names of ClusterIPs and endpoints.
    assert_eq!(dig(port, &["10-244-0-9.default.pod.cluster.local", "A"]).data(), ["10.244.0.9"]);
    assert_eq!(dig(port, &["-x", &web_ip]).data(), ["web.default.svc.cluster.local."]);
    assert_eq!(dig(port, &["-x", "10.244.0.7"]).data(), ["10-244-0-7.db.default.svc.cluster.local."]);
    // Negative answers carry the SOA; a name that exists without that type is NODATA.
    let nx = dig(port, &["nope.default.svc.cluster.local", "A"]);
    assert_eq!(nx.status, "NXDOMAIN");
    assert!(nx.authority.iter().any(|l| l.contains("SOA")), "{nx:?}");
    let aaaa = dig(port, &["web.default.svc.cluster.local", "AAAA"]);
    assert_eq!((aaaa.status.as_str(), aaaa.answers.len()), ("NOERROR", 0));
    assert_eq!(dig(port, &["-x", "10.96.0.250"]).status, "NXDOMAIN", "a ClusterIP nobody has");
    // Not ours, and no upstream: refused.
    assert_eq!(dig(port, &["example.com", "A"]).status, "REFUSED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncates_over_udp_and_forwards_other_names() {
    let c = Cluster::start().await;
    let ns = "/api/v1/namespaces/default";
    c.create(&format!("{ns}/services"), service("big", Some("None"), json!([{"name": "pg", "port": 5432}]))).await;
    let eps: Vec<(String, bool)> = (1..=60).map(|i| (format!("10.244.2.{i}"), true)).collect();
    c.create("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", slice("big", &eps)).await;
    // The upstream: a second server, authority for `example.test`.
    let upstream_port = start_dns(&c, "example.test", None).await;
    let port = start_dns(&c, "cluster.local", Some(format!("127.0.0.1:{upstream_port}").parse().unwrap())).await;
    wait_for_answer(port, "big.default.svc.cluster.local", "big's records").await;

    // 60 A records do not fit in 512 bytes: over UDP without EDNS the answer is cut and
    // says so (tc); dig then asks again over TCP, and gets all 60.
    let cut = dig(port, &["+noedns", "+ignore", "big.default.svc.cluster.local", "A"]);
    assert!(cut.flags.contains(&"tc".to_string()), "{cut:?}");
    assert!(cut.answers.len() < 60, "{}", cut.answers.len());
    assert_eq!(dig(port, &["+noedns", "big.default.svc.cluster.local", "A"]).answers.len(), 60);

    // A name outside the cluster goes upstream; the answer is relayed, not ours (no aa).
    let fwd = dig(port, &["big.default.svc.example.test", "A"]);
    assert_eq!(fwd.answers.len(), 60, "{fwd:?}");
    assert!(!fwd.flags.contains(&"aa".to_string()), "{fwd:?}");
    assert_eq!(dig(port, &["nope.example.test", "A"]).status, "NXDOMAIN", "the upstream's NXDOMAIN relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_appears_and_disappears_with_the_watch() {
    let c = Cluster::start().await;
    let port = start_dns(&c, "cluster.local", None).await;
    eventually(10, "the server to answer", || async {
        (dig(port, &["x.default.svc.cluster.local", "A"]).status == "NXDOMAIN").then_some(())
    })
    .await;
    let ns = "/api/v1/namespaces/default";
    let t = Instant::now();
    c.create(&format!("{ns}/services"), service("late", None, json!([{"port": 80}]))).await;
    wait_for_answer(port, "late.default.svc.cluster.local", "the new Service's name").await;
    let appeared = t.elapsed();
    let t = Instant::now();
    let (code, v) = c.delete(&format!("{ns}/services/late")).await;
    assert_eq!(code, 200, "{v}");
    eventually(10, "the deleted Service's name to go", || async {
        (dig(port, &["late.default.svc.cluster.local", "A"]).status == "NXDOMAIN").then_some(())
    })
    .await;
    println!("created → answered: {:?}; deleted → NXDOMAIN: {:?}", appeared, t.elapsed());
}
