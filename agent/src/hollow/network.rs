//! A pod network that wires nothing: a pod's "namespace" is a name in a set, its address
//! comes from the kubelet's real IPAM (the node's CIDR), and no packet can reach it — a
//! probe's connection is refused here, rather than sent toward an address that leads
//! nowhere (it would leave the machine by the default route).
//!
//! Upstream: pkg/kubelet/network/testing (the fake network plugin kubemark's kubelet uses)

use crate::cri::PodNetwork;
use pkg::alloc::Cidr;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct FakeNetwork {
    namespaces: Mutex<HashSet<String>>,
}

#[async_trait::async_trait]
impl PodNetwork for FakeNetwork {
    async fn prepare_node(&self, _: Cidr, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn attach(&self, netns_name: &str, _: Cidr, _: Ipv4Addr) -> anyhow::Result<PathBuf> {
        self.namespaces.lock().unwrap().insert(netns_name.to_string());
        Ok(PathBuf::from("/hollow/netns").join(netns_name))
    }
    async fn detach(&self, netns_name: &str) -> anyhow::Result<()> {
        self.namespaces.lock().unwrap().remove(netns_name);
        Ok(())
    }
    fn namespaces(&self) -> Vec<String> {
        self.namespaces.lock().unwrap().iter().cloned().collect()
    }
    fn needs_routes(&self) -> bool {
        false
    }
    async fn ensure_route(&self, _: Cidr, _: Ipv4Addr) -> anyhow::Result<()> {
        Ok(())
    }
    async fn connect(&self, addr: SocketAddr, _: Duration) -> std::io::Result<tokio::net::TcpStream> {
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, format!("{addr} is a hollow pod's address: nothing listens")))
    }
}
