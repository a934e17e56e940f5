//! berth-agent: see `berth_agent::run`.

use std::process::ExitCode;

fn main() -> ExitCode {
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
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("berth-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
