use berth_control::ctl::{Cli, CtlError, run};
use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut warnings = Vec::new();
    let result = run(cli, &mut warnings).await;
    for warning in warnings {
        eprintln!("Warning: {warning}");
    }
    match result {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(CtlError::CommandExited(code)) => {
            // As kubectl: the command's own code, for scripts to branch on.
            eprintln!("command terminated with exit code {code}");
            std::process::ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
