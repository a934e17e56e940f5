//! The real binaries together: berth-control and berth-agent in a node network namespace,
//! a Deployment and a Service applied with berthctl, pods run through Docker, a client pod
//! reaching the service through the eBPF datapath — and the agent restarted under load
//! without a failed request or a restarted container. With the machine's kubectl, its
//! streaming verbs too: `exec -it` through a pseudo-terminal, `exec -i`, `attach`,
//! `port-forward` and `logs -f`. Needs root, BPF and Docker, and the images from
//! `cargo xtask images`.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::FromRawFd as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use berth_tests::{
    Load, get,
    process::{
        PodShell, Process, Setup, answers_from_every_replica, container_ids, pod_netns,
        web_manifest,
    },
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);

#[tokio::test(flavor = "multi_thread")]
async fn agent_runs_pods_serves_the_service_and_restarts_without_a_failed_request() {
    Setup::new("agt").run(run).await;
}

async fn run(setup: &Setup) {
    let _control = setup.control_plane().await;
    let mut agent = setup.agent();

    setup.apply(&web_manifest(3, "198.18.200.10", true));
    let pods = setup.wait_running(4).await;
    let client_ip = pods
        .iter()
        .find(|(name, _)| name.starts_with("client-"))
        .map(|(_, ip)| *ip)
        .expect("the client pod");
    let client_ns = pod_netns(client_ip);

    // The service answers from every replica through the datapath.
    let target = SocketAddrV4::new(VIP, 80);
    for reply in answers_from_every_replica(&client_ns, target, 3) {
        assert_eq!(reply.client.ip(), std::net::IpAddr::V4(client_ip));
    }

    // Service discovery from inside a pod: its resolv.conf points at the node's DNS,
    // with the image's own clients, the ones users are told to exec into.
    let client = PodShell::find(&setup.node, "client-").await;
    let lookup = client
        .run(&["nslookup", "web.default.svc.cluster.local"])
        .await;
    assert!(
        lookup.output.contains(&VIP.to_string()),
        "nslookup web from a pod: {lookup:?}"
    );
    let fetched = client
        .run(&["wget", "-qO-", "http://web.default.svc.cluster.local/"])
        .await;
    assert!(
        fetched.output.starts_with("pod=web-"),
        "wget by the Service's name from a pod: {fetched:?}"
    );

    // kubectl's exec (a WebSocket to the control plane, which runs the command on the
    // pod's node) and logs.
    let client_pod = pods
        .iter()
        .find(|(name, _)| name.starts_with("client-"))
        .map(|(name, _)| name.clone())
        .expect("the client pod");
    match setup.kubectl(&[
        "exec",
        &client_pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]) {
        None => eprintln!("SKIPPED kubectl exec and logs: no kubectl on this machine"),
        Some(exec) => {
            let (stdout, stderr) = (
                String::from_utf8_lossy(&exec.stdout),
                String::from_utf8_lossy(&exec.stderr),
            );
            assert_eq!(exec.status.code(), Some(3), "{stdout}{stderr}");
            assert_eq!(stdout.trim(), "out", "{stderr}");
            assert!(stderr.contains("err"), "{stderr}");
            let logs = setup.kubectl(&["logs", &client_pod]).expect("kubectl");
            let ours = setup.berthctl(&["logs", &client_pod]);
            assert!(
                logs.status.success(),
                "{}",
                String::from_utf8_lossy(&logs.stderr)
            );
            let first = |output: &std::process::Output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            };
            assert_eq!(
                first(&logs),
                first(&ours),
                "kubectl and berthctl logs agree"
            );
        }
    }

    // A pod that writes a numbered line every second: for attach and logs -f.
    setup.apply(TICKER);
    let pods = setup.wait_running(5).await;
    let web_pod = pods
        .iter()
        .find(|(name, _)| name.starts_with("web-"))
        .map(|(name, _)| name.clone())
        .expect("a web pod");
    let kubeconfig = setup.kubeconfig();
    let berthctl = |args: &[&str]| Some(setup.berthctl_command(&kubeconfig, args));
    let kubectl = |args: &[&str]| setup.kubectl_command(args);
    let mut clients: Vec<(&str, &ClientCommand)> = vec![("berthctl", &berthctl)];
    if setup.kubectl_command(&["version"]).is_some() {
        clients.push(("kubectl", &kubectl));
    } else {
        eprintln!("SKIPPED kubectl exec -it, attach, port-forward, logs -f: no kubectl");
    }
    for (name, client) in clients {
        exec_through_a_terminal(client(&["exec", "-it", &client_pod, "--", "sh"]), name);
        exec_with_piped_input(client(&["exec", "-i", &client_pod, "--", "cat"]), name);
        attach(client(&["attach", "ticker"]), name);
        let local = if name == "kubectl" { 18080 } else { 18081 };
        let mapping = format!("{local}:8080");
        let target = format!("pod/{web_pod}");
        port_forward(
            client(&["port-forward", &target, &mapping]),
            (setup, local),
            &web_pod,
            name,
        );
        let refused = format!("{}:9", local + 10);
        port_forward_refused(
            client(&["port-forward", &target, &refused]),
            (setup, local + 10),
            name,
        );
        if name == "kubectl" {
            logs_follow(setup);
        }
    }

    // Restart the agent while the client keeps connecting.
    let before = container_ids(&setup.node).await;
    let load = Load::start(&client_ns, target);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(agent);
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent = setup.agent();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (ok, failed, errors) = load.finish();
    assert!(ok > 20, "only {ok} requests went through");
    assert_eq!(
        failed, 0,
        "{failed} requests failed across the agent restart: {errors:?}"
    );
    assert_eq!(
        container_ids(&setup.node).await,
        before,
        "the restarted agent adopted the containers instead of recreating them"
    );
    drop(agent);
}

/// A client's command line (kubectl's or berthctl's) for the arguments; None when the
/// client is not installed.
type ClientCommand<'a> = dyn Fn(&[&str]) -> Option<Command> + 'a;

const TICKER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  containers:
    - name: ticker
      image: berth/echo:v1
      command: [sh, -c, 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done']
";

/// Lines of a child's output as they come, read on a thread.
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// The first line `wanted` accepts within `timeout`; every line seen is in the panic.
fn wait_line(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("{what}: not within {timeout:?}; lines: {seen:?}"),
        }
    }
}

/// Waits for a child to exit, killing it after `timeout`.
fn exit_code(child: &mut Child, timeout: Duration, what: &str) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pseudo-terminal of 80x24: kubectl gets the secondary side as its standard streams,
/// so it sees a terminal and asks for one; the test types on and reads the primary.
fn open_pty() -> (File, File) {
    let (mut primary, mut secondary) = (-1, -1);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors through the first two pointers, which
    // point to live integers; the name and termios may be null; `size` outlives the call.
    let opened = unsafe {
        libc::openpty(
            &mut primary,
            &mut secondary,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and nothing else owns them.
    unsafe { (File::from_raw_fd(primary), File::from_raw_fd(secondary)) }
}

/// `exec -it POD -- sh` (kubectl's or berthctl's) on a real terminal: a typed command's output comes back
/// (computed by the shell, so not the terminal's echo), and `exit 3` is kubectl's exit
/// code.
fn exec_through_a_terminal(command: Option<Command>, client: &str) {
    let (mut primary, secondary) = open_pty();
    let mut command = command.expect("client");
    command
        .stdin(Stdio::from(secondary.try_clone().expect("pty")))
        .stdout(Stdio::from(secondary.try_clone().expect("pty")))
        .stderr(Stdio::from(secondary));
    let mut child = command.spawn().expect("exec -it");
    // The command holds the only secondary descriptors now: reads of the primary end
    // when kubectl does.
    drop(command);
    let (sender, output) = mpsc::channel();
    let mut reader = primary.try_clone().expect("pty");
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read @ 1..) = reader.read(&mut buffer) {
            if sender
                .send(String::from_utf8_lossy(&buffer[..read]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    let mut screen = String::new();
    let wait_for = |text: &str, screen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !screen.contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match output.recv_timeout(left) {
                Ok(chunk) => screen.push_str(&chunk),
                Err(_) => panic!("{client} exec -it: no {text:?} on the terminal: {screen:?}"),
            }
        }
    };
    primary
        .write_all(b"echo hello-$((6*7)) $(tty)\n")
        .expect("type");
    wait_for("hello-42 /dev/pts/", &mut screen);
    primary.write_all(b"exit 3\n").expect("type");
    let code = exit_code(&mut child, Duration::from_secs(30), "exec -it");
    assert_eq!(
        code,
        Some(3),
        "{client} exec -it exits with the shell's code: {screen:?}"
    );
}

/// `exec -i POD -- cat` with piped input: what is piped comes back, and the end
/// of the input ends the command.
fn exec_with_piped_input(command: Option<Command>, client: &str) {
    let mut child = command
        .expect("client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec -i");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"first piped line\nsecond piped line\n")
        .expect("pipe");
    drop(stdin);
    let code = exit_code(&mut child, Duration::from_secs(30), "exec -i cat");
    let mut stdout = String::new();
    let mut stderr = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout);
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    assert_eq!(code, Some(0), "{client}: {stderr}");
    assert_eq!(
        stdout, "first piped line\nsecond piped line\n",
        "{client}: {stderr}"
    );
}

/// `attach ticker`: the container's own output from now on.
fn attach(command: Option<Command>, client: &str) {
    let mut child = command
        .expect("client")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("attach");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    let _kubectl = Process(child);
    let first = wait_line(&lines, Duration::from_secs(20), client, |line| {
        line.starts_with("tick ")
    });
    let next = wait_line(&lines, Duration::from_secs(5), client, |line| {
        line.starts_with("tick ")
    });
    assert_eq!(
        tick_number(&next),
        tick_number(&first) + 1,
        "{client} attach streams each new line: {first:?}, {next:?}"
    );
}

fn tick_number(line: &str) -> u64 {
    line.trim_start_matches("tick ")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a tick: {line:?}"))
}

/// `kubectl logs -f --tail=1 ticker`: the last line written, then lines written after
/// kubectl started.
fn logs_follow(setup: &Setup) {
    let mut child = setup
        .kubectl_command(&["logs", "-f", "--tail=1", "ticker"])
        .expect("kubectl")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    let _kubectl = Process(child);
    let last = wait_line(&lines, Duration::from_secs(20), "kubectl logs -f", |_| true);
    for later in 1..=2 {
        let line = wait_line(&lines, Duration::from_secs(5), "kubectl logs -f", |_| true);
        assert_eq!(
            tick_number(&line),
            tick_number(&last) + later,
            "logs -f follows: {last:?} then {line:?}"
        );
    }
}

/// A running port-forward client (stopped when dropped) and its output.
struct Forwarding {
    _client: Process,
    /// Read until the client ends: kubectl writes a line per connection there, and a Go
    /// program writing to a pipe nobody reads dies of SIGPIPE.
    _lines: std::sync::mpsc::Receiver<String>,
    errors: std::sync::mpsc::Receiver<String>,
}

/// Starts a port-forward client and waits until it says it forwards `local` to `remote`.
fn start_forwarding(command: Option<Command>, local: u16, remote: u16, client: &str) -> Forwarding {
    let mut child = command
        .expect("client")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("port-forward");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    let errors = lines_of(child.stderr.take().expect("stderr"));
    let running = Process(child);
    let forwarding = format!("Forwarding from 127.0.0.1:{local} -> {remote}");
    wait_line(&lines, Duration::from_secs(20), client, |line| {
        line.starts_with(&forwarding)
    });
    Forwarding {
        _client: running,
        _lines: lines,
        errors,
    }
}

/// `port-forward pod/WEB LOCAL:8080` (kubectl's or berthctl's): HTTP requests to
/// 127.0.0.1:LOCAL (in the node namespace, where the clients run) are answered by that
/// pod, which sees them come from its own loopback — the connection is made inside the
/// pod's network namespace.
fn port_forward(command: Option<Command>, (setup, local): (&Setup, u16), pod: &str, client: &str) {
    let forwarding = start_forwarding(command, local, 8080, client);
    let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, local);
    for attempt in 0..3 {
        let reply = get(&setup.ns, local).unwrap_or_else(|error| {
            let errors: Vec<String> = forwarding.errors.try_iter().collect();
            panic!("request {attempt} through {client} port-forward: {error}; stderr: {errors:?}")
        });
        assert_eq!(reply.pod, pod, "{client}: the forwarded pod answers");
        assert!(
            reply.client.ip().is_loopback(),
            "the pod sees its own loopback as the client: {reply:?}"
        );
    }
}

/// Forwarding to a port nothing listens on: the client reports the pod's refusal.
fn port_forward_refused(command: Option<Command>, (setup, local): (&Setup, u16), client: &str) {
    let forwarding = start_forwarding(command, local, 9, client);
    let answer = get(&setup.ns, SocketAddrV4::new(Ipv4Addr::LOCALHOST, local));
    assert!(
        answer.is_err(),
        "{client}: nothing listens on port 9: {answer:?}"
    );
    wait_line(
        &forwarding.errors,
        Duration::from_secs(10),
        client,
        |line| line.contains("error forwarding port 9") && line.contains("refused"),
    );
}
