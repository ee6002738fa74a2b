//! `controller-manager`: the scheduler and every controller of [`controllers`], run apart
//! from the apiserver (which otherwise runs them in its own process), the way
//! kube-controller-manager and kube-scheduler are separate programs. Start as many as you
//! like: each writes only through the API, guarded by resourceVersions and uids, though
//! two at once do some work twice (there is no leader election yet).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "ownkube's scheduler and controllers, talking to the apiserver over HTTP")]
struct Flags {
    /// The apiserver's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let flags = Flags::parse();
    controllers::run(controllers::client_for(&flags.server)?);
    tokio::signal::ctrl_c().await?;
    tracing::info!("interrupted, shutting down");
    Ok(())
}
