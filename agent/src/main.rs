//! berth-agent: see `berth_agent::run`.

use std::process::ExitCode;

fn main() -> ExitCode {
    berth_agent::programmer::configure_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match berth_agent::config::Config::from_env() {
        Ok(config) => config,
        Err(berth_agent::config::ConfigError::Args(error)) => error.exit(),
        Err(error) => {
            eprintln!("berth-agent: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("berth-agent: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(berth_agent::run::run(config)) {
        Ok(berth_agent::run::Ended::CertificateRenewed) => {
            // The same program with the same arguments and pid, on the new certificate:
            // what a supervisor's restart would do, without needing one.
            use std::os::unix::process::CommandExt as _;
            let mut args = std::env::args_os();
            let mut again = std::process::Command::new("/proc/self/exe");
            if let Some(name) = args.next() {
                again.arg0(name);
            }
            let error = again.args(args).exec();
            eprintln!("berth-agent: starting again with the renewed certificate: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("berth-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
