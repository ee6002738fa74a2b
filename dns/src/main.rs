//! `ownkube-dns`: the cluster DNS server. Watches Services and EndpointSlices through the
//! apiserver, answers DNS over UDP and TCP on `--listen`, and serves `/health` and
//! `/ready` over HTTP for the kubelet's probes (CoreDNS's `health` and `ready` plugins);
//! after SIGTERM it stays up, unready, for `--lameduck` (CoreDNS's `health` `lameduck`).
//!
//! Upstream: coredns/coredns (coremain), plugin/health, plugin/ready

use clap::Parser;
use dns::forward::{self, Upstream};
use dns::handler::Handler;
use dns::watch::{self, Zone, READY};
use hickory_server::Server;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGTERM: `/ready` fails from then on.
static TERMINATING: AtomicBool = AtomicBool::new(false);
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

#[derive(Parser)]
#[command(about = "ownkube's cluster DNS: Services and pods by name, from the API")]
struct Flags {
    /// The apiserver.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    apiserver: String,
    /// Where DNS is answered (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// Where /health and /ready are served.
    #[arg(long, default_value = "0.0.0.0:8181")]
    health_listen: SocketAddr,
    /// The cluster's domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Ranges whose reverse (PTR) names are ours: the service and pod CIDRs.
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.0/16,10.244.0.0/16")]
    reverse_cidrs: Vec<pkg::alloc::Cidr>,
    /// Where other names go (IP or IP:port); default: the first nameserver of
    /// /etc/resolv.conf that is not loopback; `none`: refuse them.
    #[arg(long)]
    upstream: Option<String>,
    /// The TTL of every answer, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// After SIGTERM, go on answering this long (not ready), so that every node's proxy
    /// has taken this pod out of the Service before it stops (CoreDNS's `lameduck`).
    #[arg(long, default_value = "5", value_parser = |s: &str| s.parse::<u64>().map(Duration::from_secs))]
    lameduck: Duration,
}

/// SIGTERM: stop being ready, keep answering for `lameduck`, then exit.
async fn lameduck(wait: Duration) -> anyhow::Result<()> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?.recv().await;
    tracing::info!(?wait, "SIGTERM: not ready any more; answering until the proxies have moved on");
    TERMINATING.store(true, Ordering::Relaxed);
    tokio::time::sleep(wait).await;
    Ok(())
}

fn upstream(flag: Option<&str>) -> anyhow::Result<Option<Upstream>> {
    let addr = match flag {
        Some("none") => None,
        Some(s) => Some(s.parse::<SocketAddr>().or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))?),
        None => forward::from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
    };
    Ok(addr.map(|addr| Upstream { addr, timeout: Duration::from_secs(2) }))
}

async fn health(addr: SocketAddr) -> anyhow::Result<()> {
    use axum::{http::StatusCode, routing::get, Router};
    let ready = || async {
        if READY.load(Ordering::Relaxed) && !TERMINATING.load(Ordering::Relaxed) {
            (StatusCode::OK, "OK")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "the Service and EndpointSlice lists have not arrived yet")
        }
    };
    let app = Router::new().route("/health", get(|| async { "OK" })).route("/ready", get(ready));
    axum::serve(TcpListener::bind(addr).await?, app).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let flags = Flags::parse();
    let upstream = upstream(flags.upstream.as_deref())?;
    tracing::info!(listen = %flags.listen, domain = %flags.domain, upstream = ?upstream.as_ref().map(|u| u.addr), "cluster DNS starting");
    let client = kube::Client::try_from(kube::Config::new(flags.apiserver.parse()?))?;
    let tables = watch::Shared::default();
    let zone = Zone { domain: flags.domain.trim_matches('.').to_ascii_lowercase(), reverse: flags.reverse_cidrs.clone(), ttl: flags.ttl };
    tokio::spawn(watch::run(client, zone, tables.clone()));
    tokio::spawn(async move {
        if let Err(e) = health(flags.health_listen).await {
            tracing::error!(error = %e, "health server failed");
        }
    });
    let mut server = Server::new(Handler { tables, upstream, ttl: flags.ttl });
    server.register_socket(UdpSocket::bind(flags.listen).await?);
    server.register_listener(TcpListener::bind(flags.listen).await?, Duration::from_secs(5), 32);
    tokio::select! {
        r = server.block_until_done() => r?,
        r = lameduck(flags.lameduck) => r?,
    }
    Ok(())
}
