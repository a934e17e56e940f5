use anyhow::Context as _;
use berth_control::{config::Config, server::Server};
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let server = Server::start(&config)
        .await
        .context("starting the control plane")?;
    // One machine-readable line on stdout: supervisors and tests learn the address from it.
    println!("listening on {}", server.url);
    tokio::signal::ctrl_c()
        .await
        .context("waiting for a signal")?;
    server.shutdown().await;
    Ok(())
}
