//! A two-tier application configured the Kubernetes way, applied unchanged to the real
//! binaries (berth-control, berth-agent in a node namespace, Docker): a ConfigMap read as
//! env and as a mounted file, a Secret read as env and as a file with mode 0400, an
//! emptyDir shared by two containers of one pod, a Memory emptyDir, downward API files, a
//! projected volume of all three, and the frontend reaching the backend by the URL its
//! ConfigMap gives. Changing the ConfigMap changes the mounted files within 10 s without a
//! restart (env stays); a pod whose ConfigMap is missing waits with
//! CreateContainerConfigError and starts when it appears. Each pod's ServiceAccount
//! token, read from its projected file, authenticates as the ServiceAccount once bound,
//! and not after the pod is deleted. Containers run with NET_RAW dropped,
//! no-new-privileges, a pids limit and a log cap (`berthctl logs` reads across its rotation), as their securityContext's user with a
//! read-only root when asked; runAsNonRoot keeps a root image from starting. Needs root, BPF and Docker, and the images from `cargo xtask images`.

use std::time::{Duration, Instant};

use berth_agent::runtime::{ContainerSummary, DockerRuntime, ExecOutput};
use berth_tests::process::Setup;
use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: backend-config}
data:
  MODE: fast
  app.conf: |
    greeting=hello
---
apiVersion: v1
kind: Secret
metadata: {name: backend-secret}
type: Opaque
stringData:
  password: s3cret-value
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend}
spec:
  replicas: 1
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend, tier: data}}
    spec:
      containers:
        - name: app
          image: berth/echo:v1
          ports: [{containerPort: 8080}]
          resources: {limits: {cpu: 500m, memory: 64Mi}}
          env:
            - name: MODE
              valueFrom: {configMapKeyRef: {name: backend-config, key: MODE}}
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: backend-secret, key: password}}
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            - name: TIER
              valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}
            - name: CPU_MILLIS
              valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}
            - name: SELF
              value: "$(POD_NAME)@$(POD_IP)"
          envFrom:
            - prefix: CFG_
              configMapRef: {name: backend-config}
          volumeMounts:
            - {name: config, mountPath: /etc/app}
            - {name: creds, mountPath: /etc/creds, readOnly: true}
            - {name: shared, mountPath: /shared}
            - {name: cache, mountPath: /cache}
            - {name: podinfo, mountPath: /etc/podinfo}
            - {name: bundle, mountPath: /etc/bundle}
        - name: sidecar
          image: berth/echo:v1
          args: ["--port", "8081"]
          volumeMounts:
            - {name: shared, mountPath: /data}
            - {name: shared, mountPath: /data-sub, subPath: inner}
      volumes:
        - name: config
          configMap: {name: backend-config, items: [{key: app.conf, path: app.conf}]}
        - name: creds
          secret: {secretName: backend-secret, defaultMode: 0400}
        - name: shared
          emptyDir: {}
        - name: cache
          emptyDir: {medium: Memory, sizeLimit: 16Mi}
        - name: podinfo
          downwardAPI:
            items:
              - {path: labels, fieldRef: {fieldPath: metadata.labels}}
              - {path: name, fieldRef: {fieldPath: metadata.name}}
        - name: bundle
          projected:
            defaultMode: 0440
            sources:
              - configMap: {name: backend-config, items: [{key: app.conf, path: conf/app.conf}]}
              - secret: {name: backend-secret, items: [{key: password, path: creds/password}]}
              - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  clusterIP: 198.18.200.20
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: frontend-config}
data:
  BACKEND_URL: http://backend.default.svc.cluster.local/
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend}
spec:
  replicas: 1
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend}}
    spec:
      containers:
        - name: web
          image: berth/echo:v1
          envFrom: [{configMapRef: {name: frontend-config}}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_two_tier_application_sees_its_config_secrets_and_volumes() {
    Setup::new("cfg").run(run).await;
}

struct Pods<'a> {
    setup: &'a Setup,
    runtime: DockerRuntime,
}

impl Pods<'_> {
    /// The running container `container` of the pod whose name starts with `pod`.
    async fn container(&self, pod: &str, container: &str) -> ContainerSummary {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self
                .runtime
                .list_by_labels(&[
                    ("berth.node", &self.setup.node),
                    ("berth.container.name", container),
                ])
                .await
                .expect("containers")
                .into_iter()
                .find(|c| {
                    c.state == "running"
                        && c.labels
                            .get("berth.pod.name")
                            .is_some_and(|name| name.starts_with(pod))
                });
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no running container {container} of pod {pod}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn exec(&self, container: &ContainerSummary, command: &[&str]) -> ExecOutput {
        let command: Vec<String> = command.iter().map(|part| (*part).to_owned()).collect();
        let output = self
            .runtime
            .exec(&container.id, &command, Duration::from_secs(10))
            .await
            .expect("exec");
        assert_eq!(output.exit_code, 0, "{command:?}: {output:?}");
        output
    }

    /// The pod's object, by name prefix.
    fn pod(&self, prefix: &str) -> Option<Value> {
        let listed = self.setup.berthctl(&["get", "pods", "-o", "json"]);
        let list: Value = serde_json::from_slice(&listed.stdout).ok()?;
        list["items"].as_array()?.iter().find_map(|pod| {
            pod["metadata"]["name"]
                .as_str()
                .is_some_and(|name| name.starts_with(prefix))
                .then(|| pod.clone())
        })
    }
}

async fn run(setup: &Setup) {
    let _control = setup.control_plane().await;
    // A small log cap, so one pod's output rotates its log within the test.
    let _agent = setup.agent_with(&[
        "--container-log-max-size",
        "16Ki",
        "--container-log-max-files",
        "2",
    ]);
    setup.apply(MANIFEST);
    setup.wait_running(2).await;
    let pods = Pods {
        setup,
        runtime: DockerRuntime::connect("/var/run/docker.sock")
            .await
            .expect("docker"),
    };
    let app = pods.container("backend-", "app").await;
    let sidecar = pods.container("backend-", "sidecar").await;
    let pod_name = app.labels["berth.pod.name"].clone();

    // Env from the ConfigMap, the Secret, the pod and its resources.
    let env = pods.exec(&app, &["env"]).await.output;
    let pod_ip = env
        .lines()
        .find_map(|line| line.strip_prefix("POD_IP="))
        .expect("POD_IP")
        .to_owned();
    for expected in [
        "MODE=fast".to_owned(),
        "DB_PASSWORD=s3cret-value".to_owned(),
        "CFG_MODE=fast".to_owned(),
        format!("POD_NAME={pod_name}"),
        "TIER=data".to_owned(),
        "CPU_MILLIS=500".to_owned(),
        format!("SELF={pod_name}@{pod_ip}"),
    ] {
        assert!(
            env.lines().any(|line| line == expected),
            "{expected} in {env}"
        );
    }
    assert!(pod_ip.starts_with("198."), "{pod_ip}");

    // Files: the ConfigMap item, the Secret with mode 0400, downward API labels.
    let conf = pods.exec(&app, &["cat", "/etc/app/app.conf"]).await.output;
    assert_eq!(conf, "greeting=hello\n");
    let password = pods
        .exec(&app, &["cat", "/etc/creds/password"])
        .await
        .output;
    assert_eq!(password, "s3cret-value");
    let listing = pods
        .exec(&app, &["ls", "-lL", "/etc/creds/password"])
        .await
        .output;
    assert!(listing.starts_with("-r-------- "), "{listing}");
    let labels = pods
        .exec(&app, &["cat", "/etc/podinfo/labels"])
        .await
        .output;
    assert!(labels.contains("app=\"backend\"\n"), "{labels}");
    assert!(labels.contains("tier=\"data\"\n"), "{labels}");
    // One projected directory of a ConfigMap key, a Secret key and the pod's labels.
    assert_eq!(
        pods.exec(&app, &["cat", "/etc/bundle/conf/app.conf"])
            .await
            .output,
        "greeting=hello\n"
    );
    assert_eq!(
        pods.exec(&app, &["cat", "/etc/bundle/creds/password"])
            .await
            .output,
        "s3cret-value"
    );
    let bundled = pods.exec(&app, &["cat", "/etc/bundle/labels"]).await.output;
    assert!(bundled.contains("app=\"backend\"\n"), "{bundled}");
    let listing = pods
        .exec(&app, &["ls", "-lL", "/etc/bundle/creds/password"])
        .await
        .output;
    assert!(listing.starts_with("-r--r----- "), "{listing}");

    // ConfigMap files are read-only to the container.
    let written = pods
        .runtime
        .exec(
            &app.id,
            &["sh".into(), "-c".into(), "echo x > /etc/app/new".into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_ne!(written.exit_code, 0, "{written:?}");

    // One emptyDir, two containers; a subPath of it; a tmpfs.
    pods.exec(
        &app,
        &[
            "sh",
            "-c",
            "echo from-app > /shared/note && mkdir -p /shared/inner && echo deep > /shared/inner/f",
        ],
    )
    .await;
    assert_eq!(
        pods.exec(&sidecar, &["cat", "/data/note"]).await.output,
        "from-app\n"
    );
    assert_eq!(
        pods.exec(&sidecar, &["cat", "/data-sub/f"]).await.output,
        "deep\n"
    );
    let mounts = pods.exec(&app, &["cat", "/proc/mounts"]).await.output;
    assert!(
        mounts
            .lines()
            .any(|line| line.contains(" /cache tmpfs ") && line.contains("size=16384k")),
        "{mounts}"
    );

    // The frontend reaches the backend by the URL its ConfigMap gives.
    let web = pods.container("frontend-", "web").await;
    let answer = pods
        .exec(&web, &["sh", "-c", "wget -qO- \"$BACKEND_URL\""])
        .await;
    assert!(answer.output.starts_with("pod=backend-"), "{answer:?}");

    // A changed ConfigMap reaches the mounted file within 10 s, without a restart; env
    // stays as the container was created with.
    setup.apply(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: backend-config}
data:
  MODE: slow
  app.conf: |
    greeting=bonjour
",
    );
    let changed = Instant::now();
    loop {
        let conf = pods.exec(&app, &["cat", "/etc/app/app.conf"]).await.output;
        if conf == "greeting=bonjour\n" {
            break;
        }
        assert_eq!(conf, "greeting=hello\n", "only the old or the new file");
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the mounted file did not change within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "ConfigMap change reached the file in {:?}",
        changed.elapsed()
    );
    // The projected copy follows too (written in the same pass, just after).
    loop {
        let bundled = pods
            .exec(&app, &["cat", "/etc/bundle/conf/app.conf"])
            .await
            .output;
        if bundled == "greeting=bonjour\n" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the projected file did not change within 10 s: {bundled}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        pods.container("backend-", "app").await.id,
        app.id,
        "no restart"
    );
    let env = pods.exec(&app, &["env"]).await.output;
    assert!(env.lines().any(|line| line == "MODE=fast"), "{env}");

    // A pod whose ConfigMap does not exist waits with the reason, then starts.
    setup.apply(
        "apiVersion: v1
kind: Pod
metadata: {name: waiting}
spec:
  containers:
    - name: app
      image: berth/echo:v1
      env: [{name: X, valueFrom: {configMapKeyRef: {name: later, key: x}}}]
",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = pods.pod("waiting").and_then(|pod| {
            pod.pointer("/status/containerStatuses/0/state/waiting")
                .cloned()
        });
        if let Some(waiting) = waiting
            && waiting["reason"] == "CreateContainerConfigError"
        {
            assert_eq!(waiting["message"], "configmap \"later\" not found");
            break;
        }
        assert!(Instant::now() < deadline, "no CreateContainerConfigError");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    setup.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: later}\ndata: {x: here}\n");
    let waiting = pods.container("waiting", "app").await;
    let env = pods.exec(&waiting, &["env"]).await.output;
    assert!(env.lines().any(|line| line == "X=here"), "{env}");

    service_account_token(setup, &pods).await;
    confinement(setup, &pods).await;
}

/// What the engine holds every container to (NET_RAW dropped, no-new-privileges, a pids
/// limit, a log size cap), and the pod's securityContext: its user, a read-only root,
/// and runAsNonRoot refusing to start an image that runs as root.
async fn confinement(setup: &Setup, pods: &Pods<'_>) {
    let app = pods.container("backend-", "app").await;
    let inspected = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .HostConfig}}", &app.id])
        .output()
        .expect("docker inspect");
    let host: Value = serde_json::from_slice(&inspected.stdout).expect("HostConfig");
    assert_eq!(host["CapDrop"], serde_json::json!(["NET_RAW"]), "{host}");
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges"])
    );
    assert_eq!(host["PidsLimit"], 4096);
    assert_eq!(
        host["LogConfig"],
        serde_json::json!({"Type": "json-file", "Config": {"max-size": "16384", "max-file": "2"}})
    );
    logs_across_rotation(setup, pods).await;

    setup.apply(
        "apiVersion: v1
kind: Pod
metadata: {name: as-root}
spec:
  securityContext: {runAsNonRoot: true}
  containers: [{name: app, image: berth/echo:v1}]
---
apiVersion: v1
kind: Pod
metadata: {name: as-user}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 3000}
  containers:
    - name: app
      image: berth/echo:v1
      securityContext: {readOnlyRootFilesystem: true}
",
    );
    let user = pods.container("as-user", "app").await;
    let status = pods.exec(&user, &["cat", "/proc/self/status"]).await.output;
    let ids = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|ids| ids.split_whitespace().next())
            .map(str::to_owned)
    };
    assert_eq!(
        (ids("Uid:"), ids("Gid:")),
        (Some("1000".into()), Some("3000".into())),
        "{status}"
    );
    let written = pods
        .runtime
        .exec(
            &user.id,
            &["touch".to_owned(), "/x".to_owned()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_ne!(written.exit_code, 0, "a read-only root: {written:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pod = pods.pod("as-root").unwrap_or_default();
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        if waiting["reason"] == "CreateContainerConfigError" {
            assert_eq!(
                waiting["message"],
                "container has runAsNonRoot and image will run as root (pod: \"default/as-root\", container: app)"
            );
            break;
        }
        assert!(Instant::now() < deadline, "as-root is not refused: {pod}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A container that wrote past its log cap: `berthctl logs` reads the files the engine
/// kept, the rotated one and the current one, as one stream in order, ending with the
/// last line written; `--tail` counts from that end.
async fn logs_across_rotation(setup: &Setup, pods: &Pods<'_>) {
    const LINES: u64 = 3000;
    setup.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  containers: [{{name: app, image: berth/echo:v1, args: [--log-lines, \"{LINES}\"]}}]
"
    ));
    let chatty = pods.container("chatty", "app").await;
    let last = format!("log line {LINES} of {LINES}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = setup.berthctl(&["logs", "chatty"]);
        let text = String::from_utf8_lossy(&all.stdout).into_owned();
        if text.lines().last() == Some(last.as_str()) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the last line is not logged: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let numbers: Vec<u64> = all
        .lines()
        .filter_map(|line| line.strip_prefix("log line "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    let first = numbers.first().copied().unwrap_or(0);
    assert!(first > 1, "the oldest lines were rotated away: {first}");
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "the kept files read as one stream without gaps"
    );
    let log_path = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.LogPath}}", &chatty.id])
        .output()
        .expect("docker inspect");
    let log_path = String::from_utf8_lossy(&log_path.stdout).trim().to_owned();
    assert!(
        std::path::Path::new(&format!("{log_path}.1")).exists(),
        "a rotated file next to {log_path}"
    );
    let tail = setup.berthctl(&["logs", "chatty", "--tail", "2"]);
    assert_eq!(
        String::from_utf8_lossy(&tail.stdout),
        format!("log line {} of {LINES}\n{last}\n", LINES - 1)
    );
    let deleted = setup.berthctl(&["delete", "pod", "chatty", "--grace-period=1"]);
    assert!(deleted.status.success(), "{deleted:?}");
}

/// Every pod has its ServiceAccount's token, the cluster CA and its namespace at
/// Kubernetes' path; the token read from that file authenticates as the ServiceAccount
/// (refused until a RoleBinding names it, allowed after) and stops working when its pod
/// is deleted.
async fn service_account_token(setup: &Setup, pods: &Pods<'_>) {
    const DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let app = pods.container("backend-", "app").await;
    let pod_name = app.labels["berth.pod.name"].clone();
    let token = pods
        .exec(&app, &["cat", &format!("{DIR}/token")])
        .await
        .output;
    let namespace = pods
        .exec(&app, &["cat", &format!("{DIR}/namespace")])
        .await
        .output;
    assert_eq!(namespace, "default");
    let ca = pods
        .exec(&app, &["cat", &format!("{DIR}/ca.crt")])
        .await
        .output;
    let published = setup.berthctl(&["get", "configmap", "kube-root-ca.crt", "-o", "json"]);
    let published: Value = serde_json::from_slice(&published.stdout).expect("kube-root-ca.crt");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(published["data"]["ca.crt"], ca.as_str());

    let as_pod = |args: &[&str]| {
        let mut full = vec!["--token", token.trim()];
        full.extend_from_slice(args);
        setup.berthctl(&full)
    };
    let refused = as_pod(&["get", "configmaps"]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && said.contains("system:serviceaccount:default:default"),
        "{said}"
    );
    setup.apply(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: default-view}
subjects: [{kind: ServiceAccount, name: default, namespace: default}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = as_pod(&["get", "configmaps"]);
        if listed.status.success() {
            let out = String::from_utf8_lossy(&listed.stdout).into_owned();
            assert!(out.contains("backend-config"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bound token is still refused"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A pod of a ServiceAccount that does not exist yet waits for it.
    setup.apply(
        "apiVersion: v1
kind: Pod
metadata: {name: robot}
spec:
  serviceAccountName: robot
  containers: [{name: app, image: berth/echo:v1}]
",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let robot = pods.pod("robot").unwrap_or_default();
        let waiting = &robot["status"]["containerStatuses"][0]["state"]["waiting"];
        if waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"robot\" not found"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not waiting for its ServiceAccount: {robot}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    setup.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot}\n");
    let robot = pods.container("robot", "app").await;
    let token = pods
        .exec(&robot, &["cat", &format!("{DIR}/token")])
        .await
        .output;
    let whoami = setup.berthctl(&["--token", token.trim(), "auth", "can-i", "get", "pods"]);
    assert_eq!(String::from_utf8_lossy(&whoami.stdout).trim(), "no");

    // The token is bound to its pod: gone with it.
    let deleted = setup.berthctl(&["delete", "pod", &pod_name, "--grace-period=1"]);
    assert!(deleted.status.success(), "{deleted:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after = as_pod(&["get", "configmaps"]);
        let said = String::from_utf8_lossy(&after.stderr).into_owned();
        if !after.status.success() && said.to_lowercase().contains("unauthorized") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the token of deleted pod {pod_name} still works: {said}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
