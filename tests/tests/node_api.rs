//! The node API end to end: berthctl → berth-control (REST) → berth-agent's node API
//! (mTLS) → Docker and the eBPF datapath, with the real binaries in a node network
//! namespace. Logs (plain, --tail, -f, --previous after a crash), exec with its exit
//! code, `get endpoints` with the live backends of each node's datapath (and a pod made
//! unready leaving them), and the errors: unknown pod, unknown container, no token,
//! unreachable server, unreachable node; the agent renewing its node certificate before
//! it expires. Needs root, BPF, Docker and the images from
//! `cargo xtask images`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use berth_agent::runtime::DockerRuntime;
use berth_api::{
    agent::{HeartbeatRequest, agent_client::AgentClient},
    node::{ServiceBackendsRequest, node_client::NodeClient},
};
use berth_tests::process::{NODE_ADDR, Process, Setup, web_manifest};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const MANIFEST: &str = r#"
# A pod that says two lines at start (a second apart: the engine orders its two streams
# by time), then whatever is put in /tmp/say.
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
    - name: talk
      image: berth/echo:v1
      command: ["/bin/sh", "-c", "echo first line; sleep 1; echo second line >&2; trap 'exit 0' TERM; while true; do cat /tmp/say 2>/dev/null && rm /tmp/say; sleep 1; done"]
"#;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs berthctl until `done` accepts its output, or fails after `what` did not happen.
async fn until(setup: &Setup, args: &[&str], what: &str, done: impl Fn(&Output) -> bool) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = setup.berthctl(args);
        if done(&output) {
            return output;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: berthctl {args:?} said {}{}",
            stdout(&output),
            stderr(&output)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_exec_and_live_endpoints_through_the_control_plane() {
    Setup::new("napi").run(run).await;
}

async fn run(setup: &Setup) {
    // Node certificates valid for a minute: the agent renews its own during the test.
    let _control = setup
        .control_plane_with(&["--node-certificate-validity", "60"])
        .await;
    let mut agent = setup.agent_with(&["--node-api-max-connections", "3"]);
    setup.apply(MANIFEST);
    setup.apply(&web_manifest(2, "198.18.200.20", false));
    let pods = setup.wait_running(3).await;
    let web: Vec<_> = pods
        .iter()
        .filter(|(name, _)| name.starts_with("web-"))
        .cloned()
        .collect();
    assert_eq!(web.len(), 2, "{pods:?}");

    // Logs: both streams, and the tail.
    let logs = until(setup, &["logs", "talker"], "the start lines", |o| {
        o.status.success() && stdout(o).contains("first line") && stdout(o).contains("second line")
    })
    .await;
    assert_eq!(stdout(&logs), "first line\nsecond line\n");
    let tail = setup.berthctl(&["logs", "talker", "--tail", "1"]);
    assert_eq!(stdout(&tail), "second line\n", "{}", stderr(&tail));

    // Exec: output, and the exit code becomes berthctl's.
    let hi = setup.berthctl(&["exec", "talker", "--", "echo", "hi"]);
    assert_eq!(stdout(&hi), "hi\n", "{}", stderr(&hi));
    assert_eq!(hi.status.code(), Some(0));
    let three = setup.berthctl(&["exec", "talker", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(three.status.code(), Some(3), "{}", stderr(&three));
    assert!(stderr(&three).contains("oops"), "{}", stderr(&three));
    assert!(
        stderr(&three).contains("command terminated with exit code 3"),
        "{}",
        stderr(&three)
    );

    // Follow: a line written now arrives on the open stream.
    let mut follower = Process(
        setup
            .berthctl_command(&setup.kubeconfig(), &["logs", "-f", "talker"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("berthctl logs -f"),
    );
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let out = follower.0.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let said = setup.berthctl(&[
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "echo streamed line > /tmp/say",
    ]);
    assert!(said.status.success(), "{}", stderr(&said));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|line: &String| line == "streamed line") {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("logs -f did not stream the new line; saw {seen:?}"),
        }
    }
    drop(follower);

    // --previous: none before a restart; after a crash, the old attempt's output.
    let none = setup.berthctl(&["logs", "talker", "--previous"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("previous terminated container \"talk\""),
        "{}",
        stderr(&none)
    );
    let runtime = DockerRuntime::connect("/var/run/docker.sock")
        .await
        .expect("docker");
    let talker = runtime
        .list_by_labels(&[
            ("berth.node", setup.node.as_str()),
            ("berth.pod.name", "talker"),
            ("berth.container.name", "talk"),
        ])
        .await
        .expect("containers")
        .into_iter()
        .find(|container| container.state == "running")
        .expect("the running talker container");
    runtime
        .kill(&talker.id, "SIGKILL")
        .await
        .expect("killing the talker");
    let previous = until(
        setup,
        &["logs", "talker", "--previous"],
        "the old attempt",
        |o| o.status.success() && stdout(o).contains("streamed line"),
    )
    .await;
    assert!(stdout(&previous).starts_with("first line\nsecond line\n"));
    let current = until(setup, &["logs", "talker"], "the new attempt", |o| {
        o.status.success() && stdout(o).contains("second line")
    })
    .await;
    assert!(
        !stdout(&current).contains("streamed line"),
        "the current attempt has its own log: {}",
        stdout(&current)
    );

    // get endpoints: the stored object, and the backends this node's datapath serves.
    let live_row = |output: &Output| {
        stdout(output)
            .lines()
            .find(|line| line.starts_with(&setup.node))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let both = until(
        setup,
        &["get", "endpoints", "web"],
        "both backends live",
        |o| {
            let row = live_row(o);
            web.iter()
                .all(|(_, ip)| row.contains(&format!("{ip}:8080")))
        },
    )
    .await;
    let text = stdout(&both);
    assert!(text.contains("LIVE BACKENDS"), "{text}");
    assert!(
        text.contains("default/web:http") && text.contains("198.18.200.20:80/TCP"),
        "{text}"
    );
    let (unready_name, unready_ip) = web[0].clone();
    let (_, ready_ip) = web[1].clone();
    let touched = setup.berthctl(&[
        "exec",
        &unready_name,
        "--",
        "touch",
        berth_echo::UNREADY_FILE,
    ]);
    assert!(touched.status.success(), "{}", stderr(&touched));
    let one = until(
        setup,
        &["get", "endpoints", "web"],
        "the unready pod to leave",
        |o| {
            let row = live_row(o);
            !row.contains(&format!("{unready_ip}:8080"))
                && row.contains(&format!("{ready_ip}:8080"))
        },
    )
    .await;
    println!("{}", stdout(&one));

    // Only the control plane may call the node API: not a node, not anyone without a
    // certificate of the cluster CA.
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).expect("PEM file");
    let ca = read(setup.data.path().join("pki/ca.crt"));
    let node_identity = Identity::from_pem(
        read(setup.state.path().join("node.crt")),
        read(setup.state.path().join("node.key")),
    );
    let as_node = call_node_api(setup, &ca, Some(node_identity.clone()));
    assert_eq!(
        as_node,
        Err(tonic::Code::PermissionDenied),
        "with a node's certificate"
    );
    // At most 3 connections (this agent's --node-api-max-connections): connections that
    // never start TLS fill them, and a call waits (past its 3 s, well within the 10 s
    // handshake timeout) until they close; then it is answered again.
    let idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            berth_net::in_netns(setup.ns.name(), || {
                std::net::TcpStream::connect((NODE_ADDR, 10250))
            })
            .expect("the node namespace")
            .expect("a TCP connection to the node API")
        })
        .collect();
    let waiting = call_node_api_within(
        setup,
        &ca,
        Some(node_identity.clone()),
        Duration::from_secs(3),
    );
    assert_eq!(waiting, Err(tonic::Code::DeadlineExceeded), "at the cap");
    drop(idle);
    let answered = call_node_api(setup, &ca, Some(node_identity));
    assert_eq!(
        answered,
        Err(tonic::Code::PermissionDenied),
        "answered once the idle connections closed"
    );
    let anonymous = call_node_api(setup, &ca, None);
    assert!(
        anonymous.is_err(),
        "without a client certificate: {anonymous:?}"
    );

    // Errors, with kubectl's exit code 1 and the server's words.
    let missing = setup.berthctl(&["logs", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("Pod \"nope\" not found"),
        "{}",
        stderr(&missing)
    );
    let wrong = setup.berthctl(&["exec", "talker", "-c", "nope", "--", "echo"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("container nope is not valid for pod talker"),
        "{}",
        stderr(&wrong)
    );
    let admin = std::fs::read_to_string(setup.kubeconfig()).expect("admin.conf");
    let tokenless = setup.data.path().join("no-token.conf");
    let without: Vec<&str> = admin
        .lines()
        .filter(|line| !line.contains("token"))
        .collect();
    assert!(
        without.len() < admin.lines().count(),
        "admin.conf has a token"
    );
    std::fs::write(&tokenless, without.join("\n")).expect("write");
    let unauthorised = setup.berthctl_with(&tokenless, &["logs", "talker"]);
    assert_eq!(unauthorised.status.code(), Some(1));
    assert!(
        stderr(&unauthorised).contains("rejected the token")
            && stderr(&unauthorised).contains("no-token.conf"),
        "{}",
        stderr(&unauthorised)
    );
    let elsewhere = setup.data.path().join("elsewhere.conf");
    std::fs::write(&elsewhere, admin.replace("127.0.0.1:6443", "127.0.0.1:9")).expect("write");
    let unreachable = setup.berthctl_with(&elsewhere, &["exec", "talker", "--", "echo"]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        stderr(&unreachable).contains("cannot reach the control plane at https://127.0.0.1:9"),
        "{}",
        stderr(&unreachable)
    );

    renewal(setup, &mut agent, &ca).await;

    // The node's agent is gone: the error names the node.
    drop(agent);
    let down = setup.berthctl(&["logs", "talker"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        stderr(&down).contains(&format!("node \"{}\" is unreachable", setup.node)),
        "{}",
        stderr(&down)
    );
}

/// The agent renews its certificate after 80 % of its minute and starts again on it (the
/// same process), leaving its containers be; the Node records the new certificate, the
/// node API serves it, and the old one is refused by the control plane.
async fn renewal(setup: &Setup, agent: &mut Process, ca: &str) {
    let read = |name: &str| std::fs::read_to_string(setup.state.path().join(name)).expect("PEM");
    let (old_cert, old_key) = (read("node.crt"), read("node.key"));
    let containers = berth_tests::process::container_ids(&setup.node).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while read("node.crt") == old_cert {
        assert!(
            Instant::now() < deadline,
            "the node certificate was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        agent.0.try_wait().expect("the agent's state").is_none(),
        "the agent started again in the same process"
    );
    // The node's key, certificate, pod range and pods are its own.
    let mode = |name: &str| {
        let metadata = std::fs::metadata(setup.state.path().join(name)).expect("metadata");
        std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777
    };
    assert_eq!(mode(""), 0o700, "the state directory");
    for name in ["node.key", "node.crt", "pod-cidr", "pods.json"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    let new_cert = read("node.crt");
    let der = berth_api::identity::der_of_pem(&new_cert).expect("PEM");
    let serial = berth_api::identity::serial_of(&der).expect("a serial");
    let node = setup.berthctl(&["get", "node", &setup.node, "-o", "json"]);
    let node: serde_json::Value = serde_json::from_slice(&node.stdout).expect("the Node");
    assert_eq!(
        node["metadata"]["annotations"]["berth.io/certificate-serial"],
        serial.as_str()
    );
    // The control plane reaches the node API on its new certificate.
    until(
        setup,
        &["exec", "talker", "--", "echo", "renewed"],
        "exec after the renewal",
        |o| o.status.success() && stdout(o) == "renewed\n",
    )
    .await;
    until(
        setup,
        &["get", "node", &setup.node],
        "the node ready after the renewal",
        |o| stdout(o).contains(" Ready "),
    )
    .await;
    assert_eq!(
        berth_tests::process::container_ids(&setup.node).await,
        containers,
        "the restarted agent kept its containers"
    );
    let old = Identity::from_pem(old_cert, old_key);
    assert_eq!(
        call_agent_api(setup, ca, old),
        Err(tonic::Code::Unauthenticated),
        "the replaced certificate"
    );
}

/// Connects from the node's namespace to `url` with `tls` and makes `call` on the channel:
/// its answer's code, Unavailable when TLS refused the connection, DeadlineExceeded when
/// nothing answered within `deadline`.
fn call_from_node<F>(
    setup: &Setup,
    url: String,
    (tls, deadline): (ClientTlsConfig, Duration),
    call: F,
) -> Result<(), tonic::Code>
where
    F: AsyncFnOnce(tonic::transport::Channel) -> Result<(), tonic::Status> + Send + 'static,
{
    berth_net::in_netns(setup.ns.name(), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let answer = async move {
                let channel = Endpoint::from_shared(url)
                    .expect("url")
                    .tls_config(tls)
                    .expect("tls")
                    .connect()
                    .await
                    .map_err(|_| tonic::Code::Unavailable)?;
                call(channel).await.map_err(|status| status.code())
            };
            tokio::time::timeout(deadline, answer)
                .await
                .unwrap_or(Err(tonic::Code::DeadlineExceeded))
        })
    })
    .expect("the node namespace")
}

/// Calls the control plane's agent API as a node with `identity`: the answer's code.
fn call_agent_api(setup: &Setup, ca: &str, identity: Identity) -> Result<(), tonic::Code> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(identity);
    call_from_node(
        setup,
        "https://127.0.0.1:6444".to_owned(),
        (tls, CALL_DEADLINE),
        async |channel| {
            AgentClient::new(channel)
                .heartbeat(HeartbeatRequest::default())
                .await
                .map(|_| ())
        },
    )
}

/// How long a direct call may take before the test calls it unanswered.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Calls the agent's node API directly with `identity` as the client certificate.
fn call_node_api(setup: &Setup, ca: &str, identity: Option<Identity>) -> Result<(), tonic::Code> {
    call_node_api_within(setup, ca, identity, CALL_DEADLINE)
}

fn call_node_api_within(
    setup: &Setup,
    ca: &str,
    identity: Option<Identity>,
    deadline: Duration,
) -> Result<(), tonic::Code> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(setup.node.clone());
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    call_from_node(
        setup,
        format!("https://{NODE_ADDR}:10250"),
        (tls, deadline),
        async |channel| {
            NodeClient::new(channel)
                .service_backends(ServiceBackendsRequest {
                    namespace: "default".into(),
                    name: "web".into(),
                })
                .await
                .map(|_| ())
        },
    )
}
