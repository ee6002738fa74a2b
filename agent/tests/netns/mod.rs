//! Throwaway network namespaces for tests (`ip netns add`), and running Rust code inside
//! one: a thread that `setns()`es into it, so its sockets live in that namespace.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Run `ip ARGS`, failing the test if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2 must be installed");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Run a program inside a namespace; returns (success, stdout).
pub fn exec(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!("ok-{role}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Run `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A small "node" network, all in namespaces of our own:
///
/// ```text
///  client (10.99.0.2) --veth-- node (10.99.0.1 | br0 10.244.0.1/24) --veth-- backend i (10.244.0.1i)
/// ```
pub struct Lab {
    pub node: Netns,
    pub client: Netns,
    pub backends: Vec<Netns>,
}

pub const NODE_IP: &str = "10.99.0.1";

impl Lab {
    pub fn new(backends: usize) -> Lab {
        let node = Netns::new("node");
        let client = Netns::new("client");
        let n = node.name.as_str();
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", "10.244.0.1/24", "dev", "br0"]);
        ip(&["-n", n, "link", "set", "br0", "up"]);
        ip(&["-n", n, "link", "add", "to-client", "type", "veth", "peer", "name", "eth0", "netns", &client.name]);
        ip(&["-n", n, "addr", "add", &format!("{NODE_IP}/24"), "dev", "to-client"]);
        ip(&["-n", n, "link", "set", "to-client", "up"]);
        ip(&["-n", &client.name, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
        ip(&["-n", &client.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &client.name, "route", "add", "default", "via", NODE_IP]);
        // Service IPs have no real home; a route makes the node forward (and filter) them.
        ip(&["-n", n, "route", "add", "10.96.0.0/16", "dev", "br0"]);
        let mut list = vec![];
        for i in 1..=backends {
            let b = Netns::new(&format!("be{i}"));
            let port = format!("be{i}");
            ip(&["-n", n, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &b.name]);
            ip(&["-n", n, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &b.name, "addr", "add", &format!("10.244.0.{}/24", 10 + i), "dev", "eth0"]);
            ip(&["-n", &b.name, "link", "set", "eth0", "up"]);
            ip(&["-n", &b.name, "route", "add", "default", "via", "10.244.0.1"]);
            list.push(b);
        }
        Lab { node, client, backends: list }
    }

    pub fn backend_ip(i: usize) -> String {
        format!("10.244.0.{}", 10 + i + 1)
    }
}

/// Each backend answers TCP on 8080 and UDP on 5353 with its own name, and TCP on 8081
/// with its name and the address the connection came from.
pub fn serve_backends(lab: &Lab) {
    for (i, b) in lab.backends.iter().enumerate() {
        let name = format!("be{}", i + 1);
        let (n2, n3) = (name.clone(), name.clone());
        let ready = std::sync::Arc::new(std::sync::Barrier::new(4));
        let (r1, r2, r3) = (ready.clone(), ready.clone(), ready.clone());
        b.run(move || {
            let l = TcpListener::bind("0.0.0.0:8080").unwrap();
            r1.wait();
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(name.as_bytes());
            }
        });
        b.run(move || {
            let l = TcpListener::bind("0.0.0.0:8081").unwrap();
            r3.wait();
            for mut s in l.incoming().flatten() {
                let from = s.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
                let _ = s.write_all(format!("{n3} {from}").as_bytes());
            }
        });
        b.run(move || {
            let u = UdpSocket::bind("0.0.0.0:5353").unwrap();
            r2.wait();
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(n2.as_bytes(), from);
            }
        });
        ready.wait();
    }
}

/// `n` TCP connections from a namespace; what answered, how often.
pub fn hits(ns: &Netns, target: &str, n: usize) -> HashMap<String, usize> {
    let target: SocketAddr = target.parse().unwrap();
    ns.run(move || {
        let mut hits = HashMap::new();
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).expect("connect through the service");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut who = String::new();
            s.read_to_string(&mut who).unwrap();
            *hits.entry(who).or_insert(0) += 1;
        }
        hits
    })
    .join()
    .unwrap()
}
