use std::path::PathBuf;

use anyhow::Context as _;
use berth_control::{config::Config, server::Server};
use clap::Parser as _;

/// The control plane allocates and frees many small values per object it reads or
/// writes (JSON trees, keys, messages) on every worker thread; with glibc's malloc that
/// was a fifth of its CPU while scheduling on 1,000 nodes (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `berth-control kubeconfig user`: a kubeconfig for a new user, after kubeadm's command
/// of that name. Run on the control plane's machine: it signs with the CA in the data
/// directory.
#[derive(Debug, clap::Parser)]
#[command(name = "berth-control kubeconfig")]
enum KubeconfigCommand {
    /// Prints a kubeconfig whose client certificate names the user (CN) and groups (O).
    User {
        /// The user name.
        #[arg(long)]
        client_name: String,
        /// The user's group (one at most).
        #[arg(long = "org")]
        orgs: Vec<String>,
        /// The control plane's data directory.
        #[arg(long, env = "BERTH_DATA_DIR", default_value = "/var/lib/berth")]
        data_dir: PathBuf,
    },
}

/// `berth-control snapshot restore FILE`: a new cluster from `berthctl snapshot save`'s
/// file, in a new data directory (or an empty etcd prefix), before the server starts.
#[derive(Debug, clap::Parser)]
#[command(name = "berth-control snapshot")]
enum SnapshotCommand {
    /// Restores every object and the cluster's CA, tokens and keys; then start
    /// berth-control with the same --data-dir (and --store).
    Restore {
        /// The file `berthctl snapshot save` wrote.
        file: PathBuf,
        #[command(flatten)]
        config: Config,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("snapshot") {
        let SnapshotCommand::Restore { file, config } =
            SnapshotCommand::parse_from(std::env::args().skip(1));
        let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let snapshot: berth_control::snapshot::Snapshot = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a Berth snapshot", file.display()))?;
        // The etcd client runs on a runtime of its own, which may not start inside this one.
        let restored = tokio::task::spawn_blocking(move || {
            berth_control::snapshot::restore(&snapshot, &config).map(|n| (n, config.data_dir))
        })
        .await
        .context("restoring")?
        .context("restoring the snapshot")?;
        println!(
            "Restored {} keys and the cluster's CA, tokens and keys into {}",
            restored.0,
            restored.1.display()
        );
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("kubeconfig") {
        let KubeconfigCommand::User {
            client_name,
            orgs,
            data_dir,
        } = KubeconfigCommand::parse_from(std::env::args().skip(1));
        let mut config = Config::parse_from(["berth-control"]);
        config.data_dir = data_dir;
        let yaml = berth_control::server::user_kubeconfig(&config, &client_name, &orgs)
            .context("making the kubeconfig")?;
        print!("{yaml}");
        return Ok(());
    }
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = berth_control::limits::disable_transparent_huge_pages() {
        tracing::warn!("turning transparent huge pages off: {e}");
    }
    // Connections, not the default 1,024 descriptors, should bound what clients hold.
    match berth_control::limits::raise_open_files_limit() {
        Ok(files) => tracing::debug!(files, "open files limit"),
        Err(e) => tracing::warn!("raising the open files limit: {e}"),
    }
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
