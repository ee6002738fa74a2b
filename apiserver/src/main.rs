//! `apiserver`: serve the ownkube API. See the crate docs of [`apiserver`].

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cfg = apiserver::Config::parse();
    let server = apiserver::Server::start(cfg).await?;
    tokio::select! {
        _ = server.wait() => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
    }
    Ok(())
}
