//! `agent`: the ownkube node agent. See the crate docs of [`agent`].

use agent::client::Client;
use agent::proxy::{iptables::Runner, Proxier};
use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "ownkube node agent: kubelet + kube-proxy")]
struct Flags {
    /// The apiserver's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    apiserver: String,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The cluster's pod network: traffic to a service from outside it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Where the agent serves /healthz and /debug/proxy.
    #[arg(long, default_value = "0.0.0.0:10250")]
    listen: SocketAddr,
    /// How often the proxy rewrites every chain, repairing anything changed behind its back.
    #[arg(long, default_value_t = 30)]
    iptables_resync_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let flags = Flags::parse();
    let client = Client::new(&flags.apiserver);
    let proxier = Proxier::new(Runner::default(), &flags.cluster_cidr);
    let debug = agent::debug::router(agent::debug::DebugState { proxy: proxier.stats.clone() });
    let listener = tokio::net::TcpListener::bind(flags.listen).await?;
    tokio::spawn(async move { axum::serve(listener, debug).await });
    tracing::info!(apiserver = %flags.apiserver, node = ?flags.node_name, "agent starting");
    tokio::select! {
        _ = agent::proxy::run(client, proxier, Duration::from_secs(flags.iptables_resync_seconds)) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; rules stay in place"),
    }
    Ok(())
}
