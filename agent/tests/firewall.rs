//! The pod firewall (`OWNKUBE-FIREWALL`) in network namespaces: a pod may not open a
//! connection to a denied port, but the replies of connections others opened *from* that
//! port still reach their client.
//!
//! Why the second half matters: kube-proxy masquerades NodePort traffic with `fully-random`
//! source ports, so a connection from another node can arrive at a pod from the node's
//! address and port 10250. The pod's SYN-ACK then goes to `:10250`; a firewall that looks
//! only at the port drops it, and one request in ~10,000 of a rollout times out (measured
//! in the lab before the fix: `conntrack` on node1 showed `[UNREPLIED] ... dport=10250`).
mod netns;
use agent::proxy::iptables::Runner;
use netns::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_cannot_open_a_denied_port_but_replies_from_it_pass() {
    let lab = Lab::new(1);
    let (ok, out) = exec(&lab.node.name, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    assert!(ok, "{out}");
    let deny = ["0.0.0.0/0:10250".parse().unwrap(), "0.0.0.0/0:10255".parse().unwrap()];
    agent::firewall::apply(&Runner::in_netns(&lab.node.name), "10.244.0.0/16", &deny).await.expect("firewall");
    let pod = Lab::backend_ip(0);
    let ready = std::sync::Arc::new(std::sync::Barrier::new(3));
    let (r1, r2) = (ready.clone(), ready.clone());
    lab.backends[0].run(move || {
        let l = TcpListener::bind("0.0.0.0:8080").unwrap();
        r1.wait();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"pod");
        }
    });
    // The client listens on a denied port too (10255), as an agent does.
    lab.client.run(move || {
        let l = TcpListener::bind("0.0.0.0:10255").unwrap();
        r2.wait();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"agent");
        }
    });
    ready.wait();

    // A connection *from* port 10250 to the pod: its replies go to :10250 and must pass.
    let target: std::net::SocketAddr = format!("{pod}:8080").parse().unwrap();
    let answer = lab
        .client
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind("10.99.0.2:10250".parse().unwrap()).unwrap();
                let mut s = tokio::time::timeout(Duration::from_secs(3), sock.connect(target)).await.expect("SYN-ACK dropped").unwrap();
                let mut buf = String::new();
                tokio::io::AsyncReadExt::read_to_string(&mut s, &mut buf).await.unwrap();
                buf
            })
        })
        .join()
        .unwrap();
    assert_eq!(answer, "pod");

    // The pod opening a connection to a denied port is refused at once.
    let refused = lab.backends[0]
        .run(|| TcpStream::connect_timeout(&"10.99.0.2:10255".parse().unwrap(), Duration::from_secs(3)).map(|_| ()).map_err(|e| e.kind()))
        .join()
        .unwrap();
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
    // ... while the same port from outside the pod network is open.
    let mut s =
        lab.node.run(|| TcpStream::connect_timeout(&"10.99.0.2:10255".parse().unwrap(), Duration::from_secs(3))).join().unwrap().unwrap();
    let mut who = String::new();
    s.read_to_string(&mut who).unwrap();
    assert_eq!(who, "agent");
}
