//! `agent`: the ownkube node agent. See the crate docs of [`agent`].

use agent::client::Client;
use agent::kubelet::{self, Kubelet};
use agent::proxy::{iptables::Runner, Mode, Proxier};
use agent::registry::Registries;
use agent::runtime::Runtime;
use clap::Parser;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "ownkube node agent: kubelet + kube-proxy")]
struct Flags {
    /// The apiserver's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    apiserver: String,
    /// This node's name (required, except with --hollow).
    #[arg(long, env = "NODE_NAME", required_unless_present = "hollow")]
    node_name: Option<String>,
    /// This node's address (default: the address of the interface holding the default route).
    #[arg(long, env = "NODE_IP")]
    node_ip: Option<Ipv4Addr>,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// Where pods' IP assignments, files, FIFOs and volumes live.
    #[arg(long, default_value = "/var/lib/ownkube")]
    state_dir: PathBuf,
    /// Where container logs are written (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// The cluster's pod network: traffic to a service from outside it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Where the agent serves /healthz, container logs and /debug/proxy.
    #[arg(long, default_value = "0.0.0.0:10250")]
    listen: SocketAddr,
    /// How often the proxy rewrites every chain, repairing anything changed behind its back.
    #[arg(long, default_value_t = 30)]
    iptables_resync_seconds: u64,
    /// No two proxy syncs closer together than this (kube-proxy's --min-sync-period); a
    /// change after a quiet spell is still synced at once. Default 0 on a real node, 1000
    /// on hollow ones.
    #[arg(long)]
    min_sync_period_millis: Option<u64>,
    /// At most this many containers created and started at once, the rest queued in order
    /// (default: twice the number of CPUs; 0: no limit). See agent/src/kubelet/starts.rs.
    #[arg(long)]
    max_parallel_starts: Option<usize>,
    /// Run N hollow nodes in this process instead of one real node (as kubemark does):
    /// the real kubelet and proxy loops over HTTP, with a runtime that runs nothing, a pod
    /// network that wires nothing and rules rendered but not applied. For scale tests.
    #[arg(long, value_name = "N")]
    hollow: Option<usize>,
    /// The hollow nodes' names: PREFIX0000, PREFIX0001, ...
    #[arg(long, default_value = "hollow-")]
    hollow_prefix: String,
    /// Only the first K hollow nodes run a proxy (default: all of them).
    #[arg(long, value_name = "K")]
    hollow_proxies: Option<usize>,
    /// The number of the first hollow node (to run several hollow processes side by side).
    #[arg(long, default_value_t = 0)]
    hollow_first: usize,
    /// How the proxy programs Services: KUBE-* chains through iptables, or one nftables
    /// table with verdict maps (`nft list table ip ownkube`).
    #[arg(long, value_enum, default_value_t = Mode::Iptables)]
    proxy_mode: Mode,
    /// The cluster DNS server(s) `ClusterFirst` pods resolve with (comma-separated; the
    /// lab: 10.96.0.10, the kube-dns Service). Unset: pods get the node's resolv.conf.
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<std::net::Ipv4Addr>,
    /// The cluster's DNS domain (search paths `<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Registries reached over plain HTTP (repeatable).
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// NAME=URL: fetch images named NAME/... from URL (repeatable), e.g. localhost:5000=http://registry:5000.
    #[arg(long)]
    registry_mirror: Vec<String>,
    /// A file holding the token the apiserver must present on the agent's port (its
    /// `--kubelet-token-file`); without it the port answers anyone.
    #[arg(long, env = "OWNKUBE_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// ADDRESS[/PREFIX]:PORT pods may not reach, e.g. etcd's 172.30.0.2:2379 or every
    /// agent's 0.0.0.0/0:10250 (repeatable).
    #[arg(long, env = "OWNKUBE_DENY_POD_ACCESS", value_delimiter = ',')]
    deny_pod_access: Vec<agent::firewall::Deny>,
    /// A file holding this node's own token for the apiserver (one line of its
    /// `--token-auth-file`): only with it may the agent register the Node and post its status.
    #[arg(long, env = "OWNKUBE_NODE_TOKEN_FILE")]
    node_token_file: Option<PathBuf>,
}

/// The source address the kernel would use for the default route. A UDP "connect" sends
/// nothing: it only asks the routing table.
fn default_ip() -> anyhow::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect("192.0.2.1:9")?;
    match s.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        other => anyhow::bail!("default route has no IPv4 address ({other})"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let flags = Flags::parse();
    if let Some(count) = flags.hollow {
        return agent::hollow::run(agent::hollow::Hollow {
            apiserver: flags.apiserver.clone(),
            count,
            first: flags.hollow_first,
            prefix: flags.hollow_prefix.clone(),
            state_root: flags.state_dir.join("hollow"),
            cluster_cidr: flags.cluster_cidr.clone(),
            proxy_mode: flags.proxy_mode,
            proxy_resync: Duration::from_secs(flags.iptables_resync_seconds),
            proxy_min_sync: Duration::from_millis(flags.min_sync_period_millis.unwrap_or(1000)),
            proxies: flags.hollow_proxies,
        })
        .await;
    }
    let node_name = flags.node_name.clone().expect("clap requires --node-name without --hollow");
    let node_ip = match flags.node_ip {
        Some(ip) => ip,
        None => default_ip()?,
    };
    let mut registries = Registries { insecure: flags.insecure_registry.clone(), ..Default::default() };
    for m in &flags.registry_mirror {
        let (name, url) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--registry-mirror wants NAME=URL, got {m:?}"))?;
        registries.mirrors.insert(name.to_string(), url.to_string());
    }
    let client = Client::new(&flags.apiserver);
    let proxier = Proxier::with_mode(Runner::default(), &flags.cluster_cidr, flags.proxy_mode).on_node(&node_name);
    let state = agent::debug::DebugState { proxy: proxier.stats.clone(), history: proxier.history.clone(), runner: Runner::default() };
    tracing::info!(apiserver = %flags.apiserver, node = %node_name, %node_ip, proxy_mode = ?flags.proxy_mode, "agent starting");
    let rt = Runtime::connect(&flags.containerd_socket).await?;
    let streaming = agent::streaming::Streaming {
        client: client.clone(),
        runtime: rt.clone(),
        state_dir: flags.state_dir.clone(),
        logs_dir: flags.pod_logs_dir.clone(),
    };
    let token = match &flags.auth_token_file {
        Some(f) => agent::auth::Token::from_file(f)?,
        None => agent::auth::Token::default(),
    };
    let listener = tokio::net::TcpListener::bind(flags.listen).await?;
    let app = agent::debug::router_with(state, Some(streaming), token);
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
    // The pod firewall, repaired every minute (someone may flush the filter table).
    let (cidr, deny) = (flags.cluster_cidr.clone(), flags.deny_pod_access.clone());
    tokio::spawn(async move {
        loop {
            if let Err(e) = agent::firewall::apply(&Runner::default(), &cidr, &deny).await {
                tracing::error!(error = %e, "could not write the pod firewall");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    let cfg = kubelet::Config {
        node_name: node_name.clone(),
        node_ip,
        cluster_cidr: flags.cluster_cidr.clone(),
        state_dir: flags.state_dir.clone(),
        logs_dir: flags.pod_logs_dir.clone(),
        port: flags.listen.port(),
        registries,
        lease_renew: pkg::kubelet::node::RENEW_EVERY,
        netns: None,
        dns: pkg::kubelet::dns::ClusterDns {
            servers: flags.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
            domain: flags.cluster_domain.clone(),
        },
        max_parallel_starts: flags.max_parallel_starts.unwrap_or_else(kubelet::starts::default_parallel_starts),
    };
    let node_token = match &flags.node_token_file {
        Some(f) => Some(std::fs::read_to_string(f)?.trim().to_string()),
        None => None,
    };
    let kube_client = kubelet::client_with_token(&flags.apiserver, node_token)?;
    let reporting = agent::proxy::Reporting::with_events(kube_client.clone(), &node_name);
    let kubelet = Kubelet::start(kube_client, rt, cfg).await?;
    let timing = agent::proxy::Timing {
        resync: Duration::from_secs(flags.iptables_resync_seconds),
        min_sync: Duration::from_millis(flags.min_sync_period_millis.unwrap_or(0)),
    };
    tokio::select! {
        _ = kubelet.run() => {}
        _ = agent::proxy::run(client, proxier, timing, reporting) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; pods and rules stay in place"),
    }
    Ok(())
}
