//! The berth-echo binary: serves until SIGTERM or SIGINT, then stops gracefully (answers
//! what is in flight, closes idle connections, accepts nothing new). Run through a link
//! named `wget` or `nslookup` it is that client instead (the image's links).

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use berth_echo::{EchoConfig, EchoServer, client};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

const USAGE: &str = "usage: berth-echo [--port N] [--bind ADDR] [--log-lines N]
  --log-lines N   write N numbered lines to stdout at start (`log line 1 of N`)
environment: ECHO_PORT (default 8080), POD_NAME (default: hostname), ECHO_VERSION (default v1)
  GET /           one line: pod=.. addr=.. client=.. version=..
  GET /healthz    200 ok, or 503 after POST /fail/live or while /tmp/berth-unhealthy exists
  GET /readyz     200 ok, or 503 after POST /fail/ready or while /tmp/berth-unready exists
  POST /recover   clears both failures set over HTTP
UDP on the same port answers every datagram with the same line.";

/// The client the binary was run as, by the file name of its path.
fn run_as_client(program: &str, args: &[String]) -> Option<ExitCode> {
    let name = std::path::Path::new(program).file_name()?.to_str()?;
    let result = match name {
        "wget" => client::wget(args, &client::System::load()),
        "nslookup" => client::nslookup(args, &client::System::load()).map(|text| print!("{text}")),
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    })
}

fn write_log_lines(count: u64) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for line in 1..=count {
        // Nobody reading stdout is no reason to stop serving.
        if writeln!(out, "log line {line} of {count}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

fn main() -> ExitCode {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_default();
    let args: Vec<String> = args.collect();
    if let Some(code) = run_as_client(&program, &args) {
        return code;
    }
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match EchoConfig::from_args_and_env(args, |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("berth-echo: {error}");
            return ExitCode::from(2);
        }
    };
    // As a container's PID 1 the process gets no default signal actions: without handlers
    // `docker stop` would wait out its whole grace period and then kill.
    let handler = request_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler);
        }
    }
    let (pod, version, log_lines) = (
        config.pod_name.clone(),
        config.version.clone(),
        config.log_lines,
    );
    let server = match EchoServer::bind(config) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("berth-echo: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "berth-echo: pod {pod} version {version} serving HTTP and UDP on {}",
        server.local_addr()
    );
    write_log_lines(log_lines);
    while !STOP.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
    }
    server.stop();
    eprintln!("berth-echo: stopped");
    ExitCode::SUCCESS
}
