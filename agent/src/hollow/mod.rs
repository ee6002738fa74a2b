//! Hollow nodes, as kubemark makes them: `agent --hollow N` runs N nodes in one process.
//! Each has the real kubelet (registration, its Lease every 10 s, NodeStatus, a pod
//! watch of its own, a worker per pod, status writes and events) and the real proxy (its
//! Service and EndpointSlice informers, rendering every sync; `--hollow-proxies K` for
//! only the first K nodes, all on one thread of their own, as kube-proxy is a process of
//! its own), each over HTTP with a client of its own, as N machines would. Only what
//! touches the machine is fake: the container runtime ([`runtime::FakeRuntime`]: a task runs until it is killed), the pod
//! network ([`network::FakeNetwork`]: an address from the node's CIDR and nothing else),
//! and the proxy's rule loader ([`crate::proxy::iptables::Runner::hollow`]). So hundreds of
//! nodes fit on one laptop, and the apiserver, etcd, the scheduler and the controllers are
//! loaded the way a real cluster of that size would load them.
//!
//! Upstream: cmd/kubemark/hollow-node.go, pkg/kubemark/hollow_kubelet.go, hollow_proxy.go

pub mod network;
pub mod runtime;

use crate::client::Client;
use crate::kubelet::{self, Kubelet, Plugins};
use crate::proxy::{self, iptables::Runner, Mode, Proxier};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What every hollow node of one process shares.
#[derive(Clone, Debug)]
pub struct Hollow {
    pub apiserver: String,
    /// How many nodes, named `<prefix><first>` .. (zero-padded to 4 digits).
    pub count: usize,
    pub first: usize,
    pub prefix: String,
    /// Each node's state (pod files, IPAM) goes under `<state_root>/<node>`.
    pub state_root: PathBuf,
    pub cluster_cidr: String,
    pub proxy_mode: Mode,
    pub proxy_resync: Duration,
    /// No two proxy syncs of one node closer together than this (kube-proxy's `--min-sync-period`).
    pub proxy_min_sync: Duration,
    /// How many of the nodes (the first ones) run a proxy; `None`: all. Each proxy watches
    /// every Service and EndpointSlice: 500 of them decode every EndpointSlice change 500
    /// times, more than two cores can do beside the control plane.
    pub proxies: Option<usize>,
}

/// Node `i`'s name and address: 198.18.0.0/15 is the range RFC 2544 sets aside for
/// benchmarks, so a hollow node's address is never someone else's.
pub fn node(prefix: &str, i: usize) -> (String, Ipv4Addr) {
    (format!("{prefix}{i:04}"), Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 1 + i as u32))
}

/// The thread the proxies run on. On a real node kube-proxy is a process of its own; here a
/// proxy's sync (milliseconds of CPU at 1,500 services, once a second during a rollout)
/// would hold up the kubelets' tasks on the runtime they share. On a thread of their own,
/// the kernel shares the CPU between the two as it would between two processes.
fn proxy_thread() -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new().name("hollow-proxies".into()).spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Start one hollow node: its kubelet registered (so it has a pod CIDR), then its
/// kubelet loops on tasks of their own, and its proxy on the proxies' thread.
async fn start_one(h: &Hollow, i: usize, proxies: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let (name, ip) = node(&h.prefix, i);
    let dir = h.state_root.join(&name);
    let cfg = kubelet::Config {
        node_name: name.clone(),
        node_ip: ip,
        cluster_cidr: h.cluster_cidr.clone(),
        state_dir: dir.clone(),
        logs_dir: dir.join("logs"),
        port: 10250,
        registries: Default::default(),
        lease_renew: pkg::kubelet::node::RENEW_EVERY,
        netns: None,
        // As a real cluster's nodes are told (no pod of a hollow node resolves anything).
        dns: pkg::kubelet::dns::ClusterDns { servers: vec!["10.96.0.10".into()], domain: "cluster.local".into() },
        max_parallel_starts: 0, // its runtime does no work: nothing to queue
    };
    let client = kubelet::client_for(&h.apiserver)?;
    let plugins = Plugins { runtime: Arc::new(runtime::FakeRuntime::default()), network: Arc::new(network::FakeNetwork::default()) };
    let k = Kubelet::start_with(client.clone(), plugins, cfg).await?;
    tokio::spawn(k.run());
    if h.proxies.is_some_and(|n| i >= h.first + n) {
        return Ok(());
    }
    let proxier = Proxier::with_mode(Runner::hollow(), &h.cluster_cidr, h.proxy_mode).on_node(&name);
    let reporting = proxy::Reporting::hollow(client, &name);
    let timing = proxy::Timing { resync: h.proxy_resync, min_sync: h.proxy_min_sync };
    proxies.spawn(proxy::run(Client::new(&h.apiserver), proxier, timing, reporting));
    Ok(())
}

/// Start every node (a few at a time, as machines would boot), then run until interrupted.
pub async fn run(h: Hollow) -> anyhow::Result<()> {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let proxies = proxy_thread()?;
    let all = futures::stream::iter(h.first..h.first + h.count).map(|i| {
        let (h, proxies) = (h.clone(), proxies.clone());
        async move { (i, start_one(&h, i, &proxies).await) }
    });
    let mut all = std::pin::pin!(all.buffer_unordered(16));
    let mut up = 0;
    while let Some((i, r)) = all.next().await {
        match r {
            Ok(()) => up += 1,
            Err(e) => tracing::error!(node = %node(&h.prefix, i).0, error = %format!("{e:#}"), "hollow node failed to start"),
        }
    }
    tracing::info!(nodes = up, secs = format!("{:.1}", started.elapsed().as_secs_f64()), "hollow nodes up");
    std::future::pending::<()>().await;
    Ok(())
}
