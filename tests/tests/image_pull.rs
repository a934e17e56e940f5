//! Images pulled from a real registry by the real binaries (berth-control, berth-agent in
//! a node namespace, Docker): Debian's `docker-registry` (the CNCF distribution registry)
//! runs in a network namespace of the test's own, over TLS with a CA the test made
//! (trusted by the engine through /etc/docker/certs.d), once with htpasswd authentication
//! and once without, both serving one storage directory. The test pushes
//! `berth/echo:v1` into it, then applies one manifest whose pods pull side by side:
//! a private image with a pull Secret runs (Pulled carries the pull's time); a wrong
//! password gives ErrImagePull then ImagePullBackOff with the registry's message;
//! `imagePullPolicy: Never` with a missing image says so; the open registry serves
//! without a Secret (the pod names one that does not exist); an image the node has is not
//! pulled. Needs root, BPF, Docker, `docker-registry` and `cargo xtask images`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::Engine as _;
use berth_net as net;
use berth_testkit::{
    netns::{ChildGuard, NetNs},
    unique_name,
};
use berth_tests::process::Setup;
use bollard::{
    Docker,
    auth::DockerCredentials,
    query_parameters::{PushImageOptionsBuilder, RemoveImageOptions, TagImageOptionsBuilder},
};
use futures_util::StreamExt as _;
use serde_json::Value;

/// The registry's namespace end; the host end is .1. Nothing else uses this /30.
const REGISTRY_IP: &str = "198.19.246.2";
const HOST_CIDR: &str = "198.19.246.1/30";
const REGISTRY_CIDR: &str = "198.19.246.2/30";
/// With htpasswd authentication, and without.
const PRIVATE_PORT: u16 = 5443;
const OPEN_PORT: u16 = 5444;
const USER: &str = "puller";
const PASSWORD: &str = "pull-s3cret";
const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

fn private(image: &str) -> String {
    format!("{REGISTRY_IP}:{PRIVATE_PORT}/{image}")
}

fn open(image: &str) -> String {
    format!("{REGISTRY_IP}:{OPEN_PORT}/{image}")
}

/// Two `docker-registry serve` processes over one storage directory, in a namespace
/// linked to the host by a veth pair (the engine pulls from the host's namespace).
/// Drop stops them, removes the namespace (and the veth with it) and the engine's trust
/// of the CA.
struct Registry {
    _serving: Vec<ChildGuard>,
    trusted: Vec<PathBuf>,
    _ns: NetNs,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for dir in &self.trusted {
            let _ = std::fs::remove_dir_all(dir);
        }
        // Only when empty: other registries' trust stays.
        let _ = std::fs::remove_dir("/etc/docker/certs.d");
    }
}

impl Registry {
    fn start() -> Registry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: apt-get install docker-registry (cargo xtask setup installs it)"
        );
        let dir = tempfile::tempdir().expect("registry dir");
        let path = |name: &str| dir.path().join(name);

        // The test's own CA and the registry's certificate for its address.
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth image pull test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("registry key");
        let params =
            rcgen::CertificateParams::new(vec![REGISTRY_IP.to_owned()]).expect("registry cert");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("registry certificate");
        std::fs::write(path("registry.crt"), cert.pem()).expect("cert");
        std::fs::write(path("registry.key"), key.serialize_pem()).expect("key");
        // Cost 4, the least bcrypt allows: the registry checks it on every request.
        let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
        std::fs::write(path("htpasswd"), format!("{USER}:{hash}\n")).expect("htpasswd");
        std::fs::create_dir(path("storage")).expect("storage");

        let ns = NetNs::new("breg").expect("registry namespace");
        let (host_if, ns_if) = (unique_name("brh"), unique_name("brn"));
        net::veth_add(None, &host_if, &ns_if).expect("veth");
        net::link_set_netns(None, &ns_if, ns.name()).expect("veth into the namespace");
        net::addr_add(None, &host_if, HOST_CIDR).expect("host address");
        net::addr_add(Some(ns.name()), &ns_if, REGISTRY_CIDR).expect("registry address");
        net::link_up(None, &host_if).expect("host veth up");
        net::link_up(Some(ns.name()), &ns_if).expect("registry veth up");

        let mut serving = Vec::new();
        let mut trusted = Vec::new();
        for (port, auth) in [(PRIVATE_PORT, true), (OPEN_PORT, false)] {
            let auth = if auth {
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    path("htpasswd").display()
                )
            } else {
                String::new()
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {storage}\nhttp:\n  addr: {REGISTRY_IP}:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\n{auth}",
                storage = path("storage").display(),
                cert = path("registry.crt").display(),
                key = path("registry.key").display(),
            );
            let config_path = path(&format!("config-{port}.yml"));
            std::fs::write(&config_path, config).expect("registry config");
            // The engine trusts the registry through the test's CA only.
            let certs = PathBuf::from(format!("/etc/docker/certs.d/{REGISTRY_IP}:{port}"));
            std::fs::create_dir_all(&certs).expect("certs.d");
            std::fs::write(certs.join("ca.crt"), ca_cert.pem()).expect("ca.crt");
            trusted.push(certs);
            serving.push(ns.spawn(
                REGISTRY_BINARY,
                &["serve", &config_path.display().to_string()],
            ));
        }
        let registry = Registry {
            _serving: serving,
            trusted,
            _ns: ns,
            _dir: dir,
        };
        for port in [PRIVATE_PORT, OPEN_PORT] {
            let address = format!("{REGISTRY_IP}:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(&address).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the registry never listened on {address}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        registry
    }
}

fn credentials(password: &str) -> DockerCredentials {
    DockerCredentials {
        username: Some(USER.to_owned()),
        password: Some(password.to_owned()),
        serveraddress: Some(format!("{REGISTRY_IP}:{PRIVATE_PORT}")),
        ..DockerCredentials::default()
    }
}

/// A `.dockerconfigjson` as `kubectl create secret docker-registry` writes it.
fn docker_config(password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    serde_json::json!({"auths": {format!("{REGISTRY_IP}:{PRIVATE_PORT}"): {
        "username": USER, "password": password, "auth": auth
    }}})
    .to_string()
}

/// Removes the registry's names for the image from the engine (untags; the local
/// `berth/echo:v1` keeps it), so the pods really pull.
async fn untag(docker: &Docker) {
    for name in [private("berth/echo:v1"), open("berth/echo:v1")] {
        let _ = docker
            .remove_image(&name, None::<RemoveImageOptions>, None)
            .await;
    }
}

/// Pushes `berth/echo:v1` into the registry (through the authenticated port).
async fn push_echo(docker: &Docker) {
    let repo = private("berth/echo");
    docker
        .tag_image(
            "berth/echo:v1",
            Some(TagImageOptionsBuilder::new().repo(&repo).tag("v1").build()),
        )
        .await
        .expect("tag berth/echo:v1 (cargo xtask images builds it)");
    let mut pushed = docker.push_image(
        &repo,
        Some(PushImageOptionsBuilder::new().tag("v1").build()),
        Some(credentials(PASSWORD)),
    );
    while let Some(progress) = pushed.next().await {
        let progress = progress.expect("push");
        assert!(progress.error.is_none(), "push: {progress:?}");
    }
}

fn manifest() -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: registry-login}}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{right}'
---
apiVersion: v1
kind: Secret
metadata: {{name: wrong-login}}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{wrong}'
---
apiVersion: v1
kind: Pod
metadata: {{name: private}}
spec:
  imagePullSecrets: [{{name: registry-login}}]
  containers: [{{name: app, image: "{private_image}"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: wrong-password}}
spec:
  imagePullSecrets: [{{name: wrong-login}}]
  containers: [{{name: app, image: "{private_image}", imagePullPolicy: Always}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: never}}
spec:
  containers: [{{name: app, image: "{absent}", imagePullPolicy: Never}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: public}}
spec:
  imagePullSecrets: [{{name: no-such-login}}]
  containers: [{{name: app, image: "{open_image}"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: local}}
spec:
  containers: [{{name: app, image: berth/echo:v1}}]
"#,
        right = docker_config(PASSWORD),
        wrong = docker_config("not-the-password"),
        private_image = private("berth/echo:v1"),
        open_image = open("berth/echo:v1"),
        absent = private("berth/absent:v1"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_pull_images_from_a_registry_with_and_without_credentials() {
    let registry = Registry::start();
    let docker = Docker::connect_with_unix_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version");
    untag(&docker).await;
    push_echo(&docker).await;
    untag(&docker).await;
    Setup::new("pull").run(run).await;
    untag(&docker).await;
    drop(registry);
}

fn get(setup: &Setup, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let output = setup.berthctl(&args);
    assert!(
        output.status.success(),
        "berthctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}

/// The pod's container's waiting state (reason, message) or "Running".
fn state(pod: &Value) -> (String, String) {
    let state = &pod["status"]["containerStatuses"][0]["state"];
    if state.get("running").is_some() {
        return ("Running".to_owned(), String::new());
    }
    let waiting = &state["waiting"];
    (
        waiting["reason"].as_str().unwrap_or_default().to_owned(),
        waiting["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The pod's events as (reason, message), in the order they were written (the agent
/// sends them one at a time, in order; the revision orders them within one second).
fn events(setup: &Setup, pod: &str) -> Vec<(String, String)> {
    let events = get(setup, &["events"]);
    let mut found: Vec<(u64, String, String)> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|event| event["involvedObject"]["name"] == pod)
        .map(|event| {
            (
                event["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|version| version.parse().ok())
                    .unwrap_or_default(),
                event["reason"].as_str().unwrap_or_default().to_owned(),
                event["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(_, reason, message)| (reason, message))
        .collect()
}

async fn run(setup: &Setup) {
    let _control = setup.control_plane().await;
    let _agent = setup.agent();
    let applied = Instant::now();
    setup.apply(&manifest());

    // Every pod's states as they were seen, until each has reached its end state.
    let mut seen: std::collections::BTreeMap<&str, Vec<(String, String)>> = Default::default();
    let done = |seen: &std::collections::BTreeMap<&str, Vec<(String, String)>>| {
        let last = |pod: &str| {
            seen.get(pod)
                .and_then(|states| states.last())
                .map(|(reason, _)| reason.clone())
                .unwrap_or_default()
        };
        last("private") == "Running"
            && last("public") == "Running"
            && last("local") == "Running"
            && last("wrong-password") == "ImagePullBackOff"
            && last("never") == "ErrImageNeverPull"
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "pods did not get there: {seen:#?}"
        );
        for pod in get(setup, &["pods"])["items"].as_array().expect("items") {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let Some(name) = ["private", "public", "wrong-password", "never", "local"]
                .into_iter()
                .find(|known| *known == name)
            else {
                continue;
            };
            let now = state(pod);
            let states = seen.entry(name).or_default();
            if states.last() != Some(&now) && !now.0.is_empty() {
                states.push(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("states after {:?}: {seen:#?}", applied.elapsed());

    // A private image with a pull Secret: pulled and running, the time on the event.
    let private_events = events(setup, "private");
    let pulls: Vec<&(String, String)> = private_events
        .iter()
        .filter(|(reason, _)| reason.starts_with("Pull"))
        .collect();
    let reasons: Vec<&str> = pulls.iter().map(|(reason, _)| reason.as_str()).collect();
    assert_eq!(reasons, ["Pulling", "Pulled"], "{private_events:?}");
    let pulled = &pulls[1].1;
    let prefix = format!(
        "Successfully pulled image {:?} in ",
        private("berth/echo:v1")
    );
    let took = pulled
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('s'))
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("Pulled names the image and the time: {pulled:?}"));
    assert!(took > 0.0 && took < 60.0, "{pulled}");
    println!("private: {pulled}");

    // A wrong password: ErrImagePull, then ImagePullBackOff, with the registry's words.
    let wrong = &seen["wrong-password"];
    let reasons: Vec<&str> = wrong.iter().map(|(reason, _)| reason.as_str()).collect();
    assert!(
        reasons.ends_with(&["ErrImagePull", "ImagePullBackOff"]),
        "{wrong:?}"
    );
    let (_, pull_error) = &wrong[wrong.len() - 2];
    assert_eq!(
        pull_error,
        &format!(
            "failed to pull image {:?}: unauthorized: authentication required",
            private("berth/echo:v1")
        ),
        "the registry's message"
    );
    let wrong_events = events(setup, "wrong-password");
    let messages: Vec<&str> = wrong_events.iter().map(|(_, m)| m.as_str()).collect();
    let err_image_pull = messages.iter().position(|m| *m == "Error: ErrImagePull");
    let back_off = messages
        .iter()
        .position(|m| *m == "Error: ImagePullBackOff");
    assert!(
        matches!((err_image_pull, back_off), (Some(a), Some(b)) if a < b),
        "ErrImagePull, then ImagePullBackOff: {wrong_events:?}"
    );
    let (reason, message) = wrong.last().expect("a state");
    assert_eq!(reason, "ImagePullBackOff");
    assert_eq!(
        message,
        &format!(
            "Back-off pulling image {:?}: {pull_error}",
            private("berth/echo:v1")
        )
    );
    assert!(
        !message.contains("not-the-password")
            && !messages.iter().any(|m| m.contains("not-the-password")),
        "no password in status or events"
    );
    println!("wrong-password events: {wrong_events:?}");

    // Never, and the image is not on the node.
    let (_, never) = seen["never"].last().expect("a state");
    assert_eq!(
        never,
        &format!(
            "Container image {:?} is not present with pull policy of Never",
            private("berth/absent:v1")
        )
    );
    let never_events = events(setup, "never");
    assert!(
        never_events
            .iter()
            .any(|(reason, _)| reason == "ErrImageNeverPull"),
        "{never_events:?}"
    );
    assert!(
        !never_events.iter().any(|(reason, _)| reason == "Pulling"),
        "{never_events:?}"
    );

    // The open registry serves without a Secret (the one named does not exist: pulled
    // without it, as the kubelet does).
    let public_events = events(setup, "public");
    assert!(
        public_events
            .iter()
            .any(|(reason, message)| reason == "Pulled"
                && message.starts_with("Successfully pulled")),
        "{public_events:?}"
    );

    // IfNotPresent (a tagged image) and the image is there: no pull.
    let local_events = events(setup, "local");
    let pulls: Vec<&(String, String)> = local_events
        .iter()
        .filter(|(reason, _)| reason.starts_with("Pull"))
        .collect();
    assert_eq!(
        pulls,
        [&(
            "Pulled".to_owned(),
            "Container image \"berth/echo:v1\" already present on machine".to_owned()
        )],
        "{local_events:?}"
    );
}
