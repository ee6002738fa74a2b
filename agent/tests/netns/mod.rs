//! Throwaway network namespaces for tests (`ip netns add`), and running Rust code inside
//! one: a thread that `setns()`es into it, so its sockets live in that namespace.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

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
