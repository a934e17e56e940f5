use berth_ctl::{Cli, CtlError, run};
use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // kubectl exits 1 for every error, usage errors included; help and version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    let result = run(cli, &mut std::io::stdout(), &mut std::io::stderr()).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(CtlError::CommandExited(code)) => {
            // As kubectl: the command's own code, for scripts to branch on.
            eprintln!("command terminated with exit code {code}");
            std::process::ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
        }
        // `auth can-i` said no on stdout; 1 is the answer, not an error.
        Err(CtlError::Denied) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("{}", error.render());
            std::process::ExitCode::FAILURE
        }
    }
}
