//! Who may do what, against a real control plane over HTTPS: users from a token file and
//! from a client certificate, bound to the default roles (view, edit, admin,
//! cluster-admin) or to nothing, and a token allowed only `/metrics`. One server for
//! every scenario; each asks with the user's own credentials, and `kubectl auth can-i`
//! answers as the requests were answered.

mod common;

use std::path::Path;

use axum::http::{Method, StatusCode};
use berth_ctl::client::Client;
use common::{TestServer, eventually, start_with};
use serde_json::{Value, json};

const TOKENS: &str = "\
view-token,viewer,1
edit-token,editor,2
admin-token,nsadmin,3
root-token,root,4,\"ops,other\"
nobody-token,nobody,5
metrics-token,prometheus,6
patcher-token,patcher,7
";

struct Cluster {
    t: TestServer,
    /// The audit log and its policy.
    audit: tempfile::TempDir,
}

/// What the audit log must hold for each request of the matrix: (method, path, status).
static ASKED: std::sync::Mutex<Vec<(String, String, u16)>> = std::sync::Mutex::new(Vec::new());

/// A Secret's value that must never reach the audit log, not even at level Request.
const SECRET_VALUE: &str = "never-in-the-audit-log";

const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  - level: None
    nonResourceURLs: [/healthz, /readyz]
  - level: Request
";

impl Cluster {
    async fn start() -> Self {
        let tokens = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(tokens.path(), TOKENS).expect("write tokens");
        let path = tokens.path().to_str().expect("utf-8").to_owned();
        let audit = tempfile::tempdir().expect("audit dir");
        let policy = audit.path().join("policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).expect("policy");
        let log = audit.path().join("audit.log");
        // Controllers on: the aggregation controller fills view, edit and admin.
        let t = start_with(&[
            "--token-auth-file",
            &path,
            "--audit-log-path",
            log.to_str().expect("utf-8"),
            "--audit-policy-file",
            policy.to_str().expect("utf-8"),
        ])
        .await;
        let cluster = Self { t, audit };
        cluster.setup().await;
        cluster
    }

    fn as_user(&self, token: Option<&str>) -> Client {
        Client::from_kubeconfig(&self.t.server.admin_config)
            .expect("client")
            .with_token(token)
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Value {
        let (status, reply) = self.t.call(method, path, Some(&body)).await;
        assert!(status < 300, "{path}: {status} {reply}");
        reply
    }

    async fn setup(&self) {
        for ns in ["a", "b"] {
            self.admin(
                Method::POST,
                "/api/v1/namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
            self.admin(
                Method::POST,
                &format!("/api/v1/namespaces/{ns}/secrets"),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                       "stringData": {"password": SECRET_VALUE}}),
            )
            .await;
            self.admin(
                Method::POST,
                &format!("/api/v1/namespaces/{ns}/configmaps"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}}),
            )
            .await;
        }
        for (name, kind, subject, role) in [
            ("viewers", "User", "viewer", "view"),
            ("editors", "User", "editor", "edit"),
            ("admins", "User", "nsadmin", "admin"),
            ("team-a", "Group", "team-a", "view"),
        ] {
            self.admin(
                Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
                binding("RoleBinding", name, kind, subject, role),
            )
            .await;
        }
        self.admin(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "metrics-reader"},
                "rules": [{"verbs": ["get"], "nonResourceURLs": ["/metrics"]}],
            }),
        )
        .await;
        for (name, kind, subject, role) in [
            ("ops", "Group", "ops", "cluster-admin"),
            ("prometheus", "User", "prometheus", "metrics-reader"),
        ] {
            self.admin(
                Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                binding("ClusterRoleBinding", name, kind, subject, role),
            )
            .await;
        }
        // The default roles are aggregated by a controller: wait until admin holds the
        // rules of edit, which holds view's.
        eventually("admin aggregated from edit and view", || async {
            let (_, admin) = self
                .t
                .call(
                    Method::GET,
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
                    None,
                )
                .await;
            let text = admin["rules"].to_string();
            (text.contains("rolebindings")
                && text.contains("pods/exec")
                && text.contains("pods/log"))
            .then_some(())
        })
        .await;
    }
}

fn binding(kind: &str, name: &str, subject_kind: &str, subject: &str, role: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "subjects": [{"kind": subject_kind, "apiGroup": "rbac.authorization.k8s.io", "name": subject}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
    })
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
}

/// The status of `method path` as `client`, and the reply's body if JSON.
async fn status(client: &Client, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let encoded = body.map(|b| b.to_string());
    let reply = client
        .request(
            method,
            path,
            encoded
                .as_deref()
                .map(|b| (b.as_bytes(), "application/json")),
        )
        .await
        .expect("request");
    (reply.status.as_u16(), reply.json().unwrap_or(Value::Null))
}

/// Checks each (method, path, body, expected status) as `client`.
async fn expect(client: &Client, who: &str, cases: &[(Method, &str, Option<Value>, u16)]) {
    for (method, path, body, want) in cases {
        let (got, reply) = status(client, method.clone(), path, body.clone()).await;
        assert_eq!(got, *want, "{who} {method} {path}: {reply}");
        ASKED
            .lock()
            .expect("asked")
            .push((method.to_string(), (*path).to_owned(), got));
        if got == 403 {
            assert_eq!(reply["kind"], "Status", "{reply}");
            assert_eq!(reply["reason"], "Forbidden", "{reply}");
            assert_eq!(reply["code"], 403, "{reply}");
        }
    }
}

const CM_A: &str = "/api/v1/namespaces/a/configmaps";
const CM_B: &str = "/api/v1/namespaces/b/configmaps";

#[tokio::test]
async fn each_user_may_do_what_their_roles_allow_and_nothing_else() {
    let cluster = Cluster::start().await;
    let get = |path| (Method::GET, path, None, 200);
    let forbidden = |method: Method, path| (method, path, None, 403);

    let viewer = cluster.as_user(Some("view-token"));
    expect(
        &viewer,
        "viewer",
        &[
            get(CM_A),
            get("/api/v1/namespaces/a/configmaps/cm"),
            get("/api/v1/namespaces/a/pods"),
            get("/apis/apps/v1/namespaces/a/deployments"),
            forbidden(Method::GET, CM_B),
            forbidden(Method::GET, "/api/v1/namespaces/a/secrets"),
            (Method::POST, CM_A, Some(config_map("new")), 403),
            forbidden(Method::DELETE, "/api/v1/namespaces/a/configmaps/cm"),
            forbidden(Method::POST, "/api/v1/namespaces/b/pods/web/exec"),
            forbidden(Method::GET, "/api/v1/namespaces/b/pods/web/exec"),
            forbidden(Method::GET, "/api/v1/namespaces/a/pods/web/attach"),
            forbidden(Method::GET, "/api/v1/namespaces/a/pods/web/portforward"),
            forbidden(Method::GET, "/api/v1/namespaces/b/pods/web/log"),
            forbidden(Method::GET, "/api/v1/nodes"),
            forbidden(Method::GET, "/metrics"),
            get("/api"),
            get("/apis"),
            get("/version"),
        ],
    )
    .await;
    // Kubernetes' words and Status shape.
    let (_, refusal) = status(&viewer, Method::GET, CM_B, None).await;
    assert_eq!(
        refusal["message"],
        r#"configmaps is forbidden: User "viewer" cannot list resource "configmaps" in API group "" in the namespace "b""#
    );
    assert_eq!(refusal["details"]["kind"], "configmaps");
    // A watch is its own verb, allowed by view.
    let watch = viewer
        .send(Method::GET, &format!("{CM_A}?watch=true"), None)
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);
    drop(watch);
    let (code, _) = status(&viewer, Method::GET, &format!("{CM_B}?watch=true"), None).await;
    assert_eq!(code, 403);

    let editor = cluster.as_user(Some("edit-token"));
    expect(
        &editor,
        "editor",
        &[
            (Method::POST, CM_A, Some(config_map("by-editor")), 201),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/configmaps/by-editor",
                None,
                200,
            ),
            get("/api/v1/namespaces/a/secrets"),
            (Method::POST, CM_B, Some(config_map("by-editor")), 403),
            (
                Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
                Some(binding("RoleBinding", "e", "User", "x", "view")),
                403,
            ),
        ],
    )
    .await;

    let nsadmin = cluster.as_user(Some("admin-token"));
    expect(
        &nsadmin,
        "nsadmin",
        &[
            (
                Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
                Some(binding("RoleBinding", "by-admin", "User", "x", "view")),
                201,
            ),
            (Method::POST, CM_A, Some(config_map("by-admin")), 201),
            forbidden(Method::GET, CM_B),
            forbidden(
                Method::GET,
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            ),
        ],
    )
    .await;

    let root = cluster.as_user(Some("root-token"));
    expect(
        &root,
        "cluster-admin",
        &[
            get(CM_B),
            get("/api/v1/nodes"),
            get("/metrics"),
            (Method::POST, CM_B, Some(config_map("by-root")), 201),
            get("/apis/rbac.authorization.k8s.io/v1/clusterroles"),
        ],
    )
    .await;

    let nobody = cluster.as_user(Some("nobody-token"));
    expect(
        &nobody,
        "unbound",
        &[
            get("/api"),
            get("/api/v1"),
            get("/apis"),
            get("/apis/apps/v1"),
            get("/version"),
            get("/healthz"),
            get("/readyz"),
            forbidden(Method::GET, CM_A),
            forbidden(Method::GET, "/api/v1/namespaces"),
            forbidden(Method::GET, "/api/v1/nodes"),
            forbidden(Method::GET, "/metrics"),
            forbidden(Method::GET, "/bootstrap-tokens"),
            (Method::POST, "/apply", Some(config_map("x")), 403),
        ],
    )
    .await;

    // Prometheus' token: /metrics and nothing else.
    let prometheus = cluster.as_user(Some("metrics-token"));
    expect(
        &prometheus,
        "prometheus",
        &[
            get("/metrics"),
            forbidden(Method::GET, CM_A),
            forbidden(Method::GET, "/api/v1/nodes"),
            forbidden(Method::GET, "/bootstrap-tokens"),
        ],
    )
    .await;
    let (_, refusal) = status(&prometheus, Method::GET, "/api/v1/nodes", None).await;
    assert_eq!(
        refusal["message"],
        r#"nodes is forbidden: User "prometheus" cannot list resource "nodes" in API group "" at the cluster scope"#
    );
    let (_, refusal) = status(&nobody, Method::GET, "/metrics", None).await;
    assert_eq!(
        refusal["message"],
        r#"forbidden: User "nobody" cannot get path "/metrics""#
    );

    // No credentials, or a wrong token: 401 except for health.
    let anonymous = cluster.as_user(None);
    expect(
        &anonymous,
        "anonymous",
        &[
            (Method::GET, "/api", None, 401),
            (Method::GET, "/version", None, 401),
            (Method::GET, CM_A, None, 401),
            get("/healthz"),
        ],
    )
    .await;
    let wrong = cluster.as_user(Some("not-a-token"));
    expect(&wrong, "wrong token", &[(Method::GET, "/api", None, 401)]).await;

    // A client certificate from `berth-control kubeconfig user`: CN the user, O its
    // groups; group team-a is bound to view in a.
    let made = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth-control"))
        .args([
            "kubeconfig",
            "user",
            "--client-name",
            "carol",
            "--org",
            "team-a",
        ])
        .arg("--data-dir")
        .arg(cluster.t.dir.path())
        .env_remove("BERTH_ADMIN_CONFIG")
        .output()
        .await
        .expect("berth-control runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let kubeconfig = String::from_utf8(made.stdout).expect("utf-8");
    let carol_conf = cluster.t.dir.path().join("carol.conf");
    std::fs::write(&carol_conf, &kubeconfig).expect("write kubeconfig");
    let carol = Client::from_kubeconfig(&carol_conf).expect("client with a certificate");
    expect(&carol, "carol", &[get(CM_A), forbidden(Method::GET, CM_B)]).await;
    let (_, refusal) = status(&carol, Method::GET, CM_B, None).await;
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"User "carol""#)),
        "{refusal}"
    );

    berthctl_can_i(&cluster).await;
    can_i(&cluster, &carol_conf).await;
    escalation(&cluster).await;
    prometheus_scrapes_with_the_metrics_token(&cluster).await;
    service_account_tokens(&cluster).await;
    server_side_apply_is_patch_or_create(&cluster).await;
    audit_log(&cluster).await;
}

/// A server-side apply is a `patch`; one that creates the object is also a `create`.
async fn server_side_apply_is_patch_or_create(cluster: &Cluster) {
    cluster
        .admin(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/b/roles",
            role("patch-config", &["configmaps"], &["get", "patch"]),
        )
        .await;
    cluster
        .admin(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/b/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "patcher"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "patcher"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patch-config"}}),
        )
        .await;
    let patcher = cluster.as_user(Some("patcher-token"));
    let apply = |name: &str| {
        let path = format!("{CM_B}/{name}?fieldManager=patcher");
        let body = format!(
            "kind: ConfigMap\napiVersion: v1\nmetadata: {{name: {name}}}\ndata: {{k: applied}}\n"
        );
        let patcher = &patcher;
        async move {
            let reply = patcher
                .request(
                    Method::PATCH,
                    &path,
                    Some((body.as_bytes(), "application/apply-patch+yaml")),
                )
                .await
                .expect("request");
            (reply.status.as_u16(), reply.json().unwrap_or(Value::Null))
        }
    };
    let (code, applied) = apply("cm").await;
    assert_eq!(
        (code, &applied["data"]["k"]),
        (200, &json!("applied")),
        "{applied}"
    );
    let (code, refused) = apply("new-cm").await;
    assert_eq!(code, 403, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"User "patcher" cannot create resource "configmaps""#)),
        "{refused}"
    );
    let (code, _) = cluster
        .t
        .call(Method::GET, &format!("{CM_B}/new-cm"), None)
        .await;
    assert_eq!(code, 404, "nothing created");
}

/// A ServiceAccount's token (TokenRequest) authenticates as
/// `system:serviceaccount:NS:NAME`: refused until a binding names the ServiceAccount,
/// allowed after, refused again (401) once the ServiceAccount is gone.
async fn service_account_tokens(cluster: &Cluster) {
    cluster
        .admin(
            Method::POST,
            "/api/v1/namespaces/a/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
        )
        .await;
    let requested = cluster
        .admin(
            Method::POST,
            "/api/v1/namespaces/a/serviceaccounts/app/token",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 600}}),
        )
        .await;
    assert_eq!(requested["kind"], "TokenRequest");
    let token = requested["status"]["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert!(requested["status"]["expirationTimestamp"].is_string());
    let app = cluster.as_user(Some(&token));
    let (code, refusal) = status(&app, Method::GET, CM_A, None).await;
    assert_eq!(code, 403, "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"User "system:serviceaccount:a:app""#)),
        "{refusal}"
    );
    cluster
        .admin(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "app-view"},
                "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "a"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            }),
        )
        .await;
    expect(
        &app,
        "app",
        &[
            (Method::GET, CM_A, None, 200),
            (Method::GET, CM_B, None, 403),
        ],
    )
    .await;
    // `berthctl create token` prints a token alone, for scripts; it works the same.
    let (ok, out, err) = common::berthctl(
        &cluster.t.server.admin_config,
        &["create", "token", "app", "-n", "a", "--duration", "15m"],
    )
    .await;
    assert!(ok, "{err}");
    let printed = out.trim();
    assert!(
        printed.starts_with("eyJ") && !printed.contains(char::is_whitespace),
        "{out}"
    );
    let (code, _) = status(&cluster.as_user(Some(printed)), Method::GET, CM_A, None).await;
    assert_eq!(code, 200);
    let (ok, _, err) = common::berthctl(
        &cluster.t.server.admin_config,
        &["create", "token", "nobody", "-n", "a"],
    )
    .await;
    assert!(!ok && err.contains(r#""nobody" not found"#), "{err}");
    // A token for another audience, or with its signature changed, is no token at all.
    let other = cluster
        .admin(
            Method::POST,
            "/api/v1/namespaces/a/serviceaccounts/app/token",
            json!({"spec": {"audiences": ["vault"]}}),
        )
        .await;
    let vault = other["status"]["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let (code, _) = status(&cluster.as_user(Some(&vault)), Method::GET, CM_A, None).await;
    assert_eq!(code, 401);
    cluster
        .admin(
            Method::DELETE,
            "/api/v1/namespaces/a/serviceaccounts/app",
            json!({}),
        )
        .await;
    let (code, _) = status(&app, Method::GET, CM_A, None).await;
    assert_eq!(code, 401, "the ServiceAccount is gone");
}

/// Every request of the matrix has its line in the audit log (the policy logs all at
/// Request but health checks), with who asked and the answer; the Secret written at
/// level Request left its value out.
async fn audit_log(cluster: &Cluster) {
    let asked = ASKED.lock().expect("asked").clone();
    assert!(asked.len() > 50, "{} requests", asked.len());
    let verb_of = |method: &str| match method {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text =
            std::fs::read_to_string(cluster.audit.path().join("audit.log")).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON event per line"))
            .collect();
        let logged = |(method, path, code): &&(String, String, u16)| {
            matches!(path.as_str(), "/healthz" | "/readyz")
                || events.iter().any(|e| {
                    e["requestURI"]
                        .as_str()
                        .is_some_and(|uri| uri.split('?').next() == Some(path.as_str()))
                        && e["responseStatus"]["code"] == *code
                        && (verb_of(method).is_empty()
                            || !path.starts_with("/api")
                            || e["verb"] == verb_of(method))
                })
        };
        let missing: Vec<_> = asked.iter().filter(|a| !logged(a)).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not in the audit log: {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let first: Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("an event");
    assert_eq!(first["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(first["kind"], "Event");
    assert_eq!(first["stage"], "ResponseComplete");
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).expect("event");
        if event["responseStatus"]["code"] == 403 {
            assert!(
                event["user"]["username"].is_string(),
                "a refusal names who asked: {event}"
            );
        }
    }
    assert!(
        text.contains("\"resource\":\"secrets\""),
        "the Secret's create is logged"
    );
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET_VALUE);
    assert!(
        !text.contains(SECRET_VALUE) && !text.contains(&encoded),
        "a Secret's value in the audit log"
    );
    assert!(
        text.contains("\"requestObject\""),
        "level Request logs other bodies"
    );
}

/// The machine's Prometheus scrapes the HTTPS API's /metrics with the token allowed
/// only that path (its requests elsewhere were refused above). Skipped where Prometheus
/// is absent.
async fn prometheus_scrapes_with_the_metrics_token(cluster: &Cluster) {
    let dir = tempfile::tempdir().expect("prometheus dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "metrics-token").expect("token file");
    let ca = cluster.t.dir.path().join("pki").join("ca.crt");
    let target = cluster
        .t
        .server
        .url
        .strip_prefix("https://")
        .expect("an https URL")
        .to_owned();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: berth
    scheme: https
    tls_config: {{ca_file: {ca:?}}}
    authorization: {{credentials_file: {token_file:?}}}
    static_configs: [{{targets: [{target:?}]}}]
"
        ),
    )
    .expect("prometheus.yml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let _child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED the Prometheus scrape: no prometheus on this machine");
            return;
        }
        Err(e) => panic!("starting prometheus: {e}"),
    };
    let prometheus = Client::new(berth_api::kubeconfig::ClientSettings {
        server: format!("http://127.0.0.1:{port}"),
        failover_servers: Vec::new(),
        ca_pem: None,
        token: None,
        client_certificate: None,
    })
    .expect("client");
    // Prometheus' own samples of the control plane: the target is up and its request
    // counts were read.
    let query = |expr: &'static str| {
        let prometheus = &prometheus;
        async move {
            let path = format!("/api/v1/query?query={}", berth_ctl::encode(expr));
            let reply = prometheus.request(Method::GET, &path, None).await.ok()?;
            let result = reply.json().ok()?["data"]["result"].as_array()?.clone();
            (!result.is_empty()).then_some(result)
        }
    };
    let up = eventually("Prometheus scraping /metrics", || {
        query(r#"up{job="berth"} == 1"#)
    })
    .await;
    assert_eq!(up.len(), 1, "{up:?}");
    eventually("request counts scraped", || {
        query(r#"berth_apiserver_request_duration_seconds_count{job="berth"}"#)
    })
    .await;
}

fn role(name: &str, resources: &[&str], verbs: &[&str]) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}],
    })
}

/// A user may grant only what they hold, unless they may `bind` (or `escalate`), as in
/// Kubernetes: through POST, PATCH and /apply alike.
async fn escalation(cluster: &Cluster) {
    const ROLES: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/a/roles";
    const BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings";
    let nsadmin = cluster.as_user(Some("admin-token"));
    expect(
        &nsadmin,
        "nsadmin",
        &[
            // Held through admin (edit reads secrets).
            (
                Method::POST,
                ROLES,
                Some(role("secret-reader", &["secrets"], &["get"])),
                201,
            ),
            (
                Method::POST,
                BINDINGS,
                Some(binding("RoleBinding", "to-edit", "User", "x", "edit")),
                201,
            ),
            // Not held: nodes, and cluster-admin's rules.
            (
                Method::POST,
                ROLES,
                Some(role("node-lister", &["nodes"], &["list"])),
                403,
            ),
            (
                Method::POST,
                BINDINGS,
                Some(binding(
                    "RoleBinding",
                    "to-root",
                    "User",
                    "x",
                    "cluster-admin",
                )),
                403,
            ),
        ],
    )
    .await;
    let (_, refusal) = status(
        &nsadmin,
        Method::POST,
        ROLES,
        Some(role("node-lister", &["nodes"], &["list"])),
    )
    .await;
    assert_eq!(
        refusal["message"],
        "roles.rbac.authorization.k8s.io \"node-lister\" is forbidden: user \"nsadmin\" \
         (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not \
         currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"list\"]}"
    );
    // A patch adding a rule not held is refused the same way; one keeping the rules is not.
    let merge = |patch: Value| {
        let nsadmin = &nsadmin;
        async move {
            nsadmin
                .request(
                    Method::PATCH,
                    &format!("{ROLES}/secret-reader"),
                    Some((patch.to_string().as_bytes(), "application/merge-patch+json")),
                )
                .await
                .expect("patch")
                .status
                .as_u16()
        }
    };
    let escalating =
        json!({"rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]});
    assert_eq!(merge(escalating).await, 403);
    assert_eq!(
        merge(json!({"metadata": {"labels": {"team": "a"}}})).await,
        200
    );
    // /apply checks each object too.
    let manifest = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: applied\n  namespace: a\nrules:\n- apiGroups: [\"\"]\n  resources: [nodes]\n  verbs: [list]\n";
    let reply = nsadmin
        .request(
            Method::POST,
            "/apply",
            Some((manifest.as_bytes(), "application/yaml")),
        )
        .await
        .expect("apply");
    assert_eq!(reply.status.as_u16(), 403, "{:?}", reply.json());

    // `bind` on cluster-admin lets nsadmin bind it in a without holding it.
    cluster
        .admin(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "root-binder"},
                "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                           "verbs": ["bind"], "resourceNames": ["cluster-admin"]}],
            }),
        )
        .await;
    cluster
        .admin(
            Method::POST,
            BINDINGS,
            binding(
                "RoleBinding",
                "nsadmin-binds",
                "User",
                "nsadmin",
                "root-binder",
            ),
        )
        .await;
    let (code, reply) = status(
        &nsadmin,
        Method::POST,
        BINDINGS,
        Some(binding(
            "RoleBinding",
            "to-root",
            "User",
            "x",
            "cluster-admin",
        )),
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    // A binding's role is fixed once it is created, as in Kubernetes.
    let reply = cluster
        .t
        .client
        .request(
            Method::PATCH,
            &format!("{BINDINGS}/viewers"),
            Some((
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"}})
                    .to_string()
                    .as_bytes(),
                "application/merge-patch+json",
            )),
        )
        .await
        .expect("patch");
    let refusal = reply.json().expect("a Status");
    assert_eq!(reply.status.as_u16(), 422, "{refusal}");
    assert_eq!(
        refusal["details"]["causes"][0]["field"], "roleRef",
        "{refusal}"
    );
    // cluster-admin (through a group) holds everything, so may grant anything.
    let root = cluster.as_user(Some("root-token"));
    let (code, reply) = status(
        &root,
        Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/b/roles",
        Some(role("node-lister", &["nodes"], &["list"])),
    )
    .await;
    assert_eq!(code, 201, "{reply}");
}

/// `berthctl auth can-i` answers as the requests above were answered: `yes` and success,
/// or `no` and failure (exit 1).
async fn berthctl_can_i(cluster: &Cluster) {
    let admin = &cluster.t.server.admin_config;
    for (token, args, yes) in [
        ("view-token", &["list", "configmaps", "-n", "a"][..], true),
        ("view-token", &["watch", "configmaps", "-n", "a"][..], true),
        ("view-token", &["get", "configmaps/cm", "-n", "a"][..], true),
        ("view-token", &["list", "configmaps", "-n", "b"][..], false),
        (
            "view-token",
            &["create", "configmaps", "-n", "a"][..],
            false,
        ),
        (
            "view-token",
            &["delete", "configmaps", "-n", "a"][..],
            false,
        ),
        (
            "view-token",
            &["create", "pods", "--subresource", "exec", "-n", "b"][..],
            false,
        ),
        (
            "view-token",
            &["get", "pods", "--subresource", "log", "-n", "b"][..],
            false,
        ),
        (
            "view-token",
            &["get", "pods", "--subresource", "log", "-n", "a"][..],
            true,
        ),
        ("view-token", &["list", "secrets", "-n", "a"][..], false),
        ("view-token", &["list", "nodes"][..], false),
        ("edit-token", &["create", "configmaps", "-n", "a"][..], true),
        ("edit-token", &["list", "secrets", "-n", "a"][..], true),
        (
            "edit-token",
            &["create", "configmaps", "-n", "b"][..],
            false,
        ),
        (
            "edit-token",
            &["create", "rolebindings", "-n", "a"][..],
            false,
        ),
        (
            "edit-token",
            &["create", "pods", "--subresource", "attach", "-n", "a"][..],
            true,
        ),
        (
            "edit-token",
            &["create", "pods", "--subresource", "portforward", "-n", "a"][..],
            true,
        ),
        (
            "view-token",
            &["create", "pods", "--subresource", "portforward", "-n", "a"][..],
            false,
        ),
        (
            "admin-token",
            &["create", "rolebindings", "-n", "a"][..],
            true,
        ),
        ("admin-token", &["list", "configmaps", "-n", "b"][..], false),
        ("root-token", &["list", "configmaps", "-n", "b"][..], true),
        ("root-token", &["list", "nodes"][..], true),
        (
            "nobody-token",
            &["list", "configmaps", "-n", "a"][..],
            false,
        ),
        ("nobody-token", &["get", "/api"][..], true),
        ("nobody-token", &["get", "/metrics"][..], false),
        ("metrics-token", &["get", "/metrics"][..], true),
        ("metrics-token", &["list", "nodes"][..], false),
        (
            "metrics-token",
            &["list", "configmaps", "-n", "a"][..],
            false,
        ),
    ] {
        let mut full = vec!["--token", token, "auth", "can-i"];
        full.extend_from_slice(args);
        let (ok, out, err) = common::berthctl(admin, &full).await;
        let want = if yes { "yes" } else { "no" };
        assert_eq!(
            (ok, out.trim()),
            (yes, want),
            "berthctl auth can-i {} as {token}: {err}",
            args.join(" ")
        );
    }
    let (ok, out, err) = common::berthctl(
        admin,
        &[
            "--token",
            "view-token",
            "auth",
            "can-i",
            "--list",
            "-n",
            "a",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("Resources"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("configmaps ") && l.ends_with("[get list watch]")),
        "{out}"
    );
    let line_of = |wanted: &str| out.lines().position(|l| l.contains(wanted));
    let (resources, urls) = (line_of("configmaps "), line_of("/api/*"));
    // Discovery for every user; resource rules first, as kubectl lists them.
    assert!(
        resources.is_some() && urls.is_some() && resources < urls,
        "{out}"
    );
}

/// kubectl's own answers (`auth can-i`, exit 0 for yes, 1 for no), as the requests above
/// were answered.
async fn can_i(cluster: &Cluster, carol_conf: &Path) {
    let admin = cluster.t.server.admin_config.clone();
    let cache = tempfile::tempdir().expect("cache");
    let cache = cache.path();
    let kubectl = |config: &Path, token: Option<&str>, args: &[&str]| {
        // The server runs on this test's runtime: kubectl must not block it.
        let mut command = tokio::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(config)
            .arg("--cache-dir")
            .arg(cache);
        if let Some(token) = token {
            command.arg("--token").arg(token);
        }
        command.args(args);
        async move { command.output().await }
    };
    let probe = kubectl(&admin, None, &["auth", "can-i", "get", "pods"]).await;
    if matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        eprintln!("SKIPPED kubectl auth can-i: no kubectl binary on this machine");
        return;
    }
    for (config, token, args, yes) in [
        (
            &admin,
            None,
            &["auth", "can-i", "delete", "nodes"][..],
            true,
        ),
        (
            &admin,
            Some("view-token"),
            &["auth", "can-i", "list", "configmaps", "-n", "a"][..],
            true,
        ),
        (
            &admin,
            Some("view-token"),
            &["auth", "can-i", "watch", "configmaps", "-n", "a"][..],
            true,
        ),
        (
            &admin,
            Some("view-token"),
            &["auth", "can-i", "list", "configmaps", "-n", "b"][..],
            false,
        ),
        (
            &admin,
            Some("view-token"),
            &["auth", "can-i", "create", "configmaps", "-n", "a"][..],
            false,
        ),
        (
            &admin,
            Some("view-token"),
            &[
                "auth",
                "can-i",
                "create",
                "pods",
                "--subresource=exec",
                "-n",
                "b",
            ][..],
            false,
        ),
        (
            &admin,
            Some("view-token"),
            &[
                "auth",
                "can-i",
                "get",
                "pods",
                "--subresource=log",
                "-n",
                "a",
            ][..],
            true,
        ),
        (
            &admin,
            Some("edit-token"),
            &["auth", "can-i", "create", "configmaps", "-n", "a"][..],
            true,
        ),
        (
            &admin,
            Some("edit-token"),
            &["auth", "can-i", "create", "rolebindings", "-n", "a"][..],
            false,
        ),
        (
            &admin,
            Some("admin-token"),
            &["auth", "can-i", "create", "rolebindings", "-n", "a"][..],
            true,
        ),
        (
            &admin,
            Some("root-token"),
            &["auth", "can-i", "list", "nodes"][..],
            true,
        ),
        (
            &admin,
            Some("nobody-token"),
            &["auth", "can-i", "list", "configmaps", "-n", "a"][..],
            false,
        ),
        (
            &admin,
            Some("metrics-token"),
            &["auth", "can-i", "get", "/metrics"][..],
            true,
        ),
        (
            &admin,
            Some("metrics-token"),
            &["auth", "can-i", "list", "nodes"][..],
            false,
        ),
        (
            &carol_conf.to_path_buf(),
            None,
            &["auth", "can-i", "list", "configmaps", "-n", "a"][..],
            true,
        ),
        (
            &carol_conf.to_path_buf(),
            None,
            &["auth", "can-i", "list", "configmaps", "-n", "b"][..],
            false,
        ),
    ] {
        let output = kubectl(config, token, args).await.expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let want = if yes { "yes" } else { "no" };
        assert_eq!(
            (stdout.trim(), output.status.code()),
            (want, Some(if yes { 0 } else { 1 })),
            "kubectl {} as {token:?}: {stderr}",
            args.join(" ")
        );
    }
    // --list: the viewer's rules in a name configmaps with get, list and watch.
    let output = kubectl(
        &admin,
        Some("view-token"),
        &["auth", "can-i", "--list", "-n", "a"],
    )
    .await
    .expect("kubectl runs");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("configmaps ") && l.contains("[get list watch]")),
        "{listed}"
    );
    // Discovery lists the RBAC kinds and the reviews.
    let output = kubectl(&admin, None, &["api-resources", "-o", "name"])
        .await
        .expect("kubectl runs");
    let names = String::from_utf8_lossy(&output.stdout);
    for name in [
        "roles.rbac.authorization.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
    ] {
        assert!(names.lines().any(|l| l == name), "{name} in {names}");
    }
    // Impersonation (`--as`): the admin may act as anyone; an unbound user may not.
    for (args, want, code) in [
        (
            &[
                "auth",
                "can-i",
                "list",
                "configmaps",
                "-n",
                "a",
                "--as",
                "viewer",
            ][..],
            "yes",
            0,
        ),
        (
            &[
                "auth",
                "can-i",
                "list",
                "configmaps",
                "-n",
                "b",
                "--as",
                "viewer",
            ][..],
            "no",
            1,
        ),
        (
            &[
                "auth",
                "can-i",
                "list",
                "configmaps",
                "-n",
                "a",
                "--as",
                "x",
                "--as-group",
                "team-a",
            ][..],
            "yes",
            0,
        ),
    ] {
        let output = kubectl(&admin, None, args).await.expect("kubectl runs");
        assert_eq!(
            (
                String::from_utf8_lossy(&output.stdout).trim(),
                output.status.code()
            ),
            (want, Some(code)),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = kubectl(
        &admin,
        Some("nobody-token"),
        &["get", "configmaps", "-n", "a", "--as", "viewer"],
    )
    .await
    .expect("kubectl runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains(
                r#"users "viewer" is forbidden: User "nobody" cannot impersonate resource "users" in API group "" at the cluster scope"#
            ),
        "{stderr}"
    );
    // kubectl's typed `create role|clusterrole|rolebinding|clusterrolebinding` (sent as
    // protobuf).
    for args in [
        &[
            "create",
            "clusterrole",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
        ][..],
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "a",
        ][..],
        &[
            "create",
            "rolebinding",
            "dave-reads",
            "--role=pod-reader",
            "--user=dave",
            "-n",
            "a",
        ][..],
        &[
            "create",
            "clusterrolebinding",
            "dave-views",
            "--clusterrole=view",
            "--user=dave",
        ][..],
    ] {
        let output = kubectl(&admin, None, args).await.expect("kubectl runs");
        assert!(
            output.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = kubectl(
        &admin,
        None,
        &["get", "rolebindings", "-n", "a", "-o", "wide"],
    )
    .await
    .expect("kubectl runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("dave-reads")
            && l.contains("Role/pod-reader")
            && l.contains("dave")),
        "{table}"
    );
    for (args, want) in [
        (
            &["auth", "can-i", "list", "pods", "-n", "a", "--as", "dave"][..],
            "yes",
        ),
        (
            &["auth", "can-i", "list", "pods", "-n", "b", "--as", "dave"][..],
            "yes",
        ),
        (
            &["auth", "can-i", "delete", "pods", "-n", "a", "--as", "dave"][..],
            "no",
        ),
    ] {
        let output = kubectl(&admin, None, args).await.expect("kubectl runs");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            want,
            "kubectl {}",
            args.join(" ")
        );
    }
    // The certificate user's kubeconfig works for kubectl too.
    let output = kubectl(
        carol_conf,
        None,
        &["get", "configmaps", "-n", "a", "-o", "name"],
    )
    .await
    .expect("kubectl runs");
    let names = String::from_utf8_lossy(&output.stdout);
    assert!(
        names.lines().any(|l| l == "configmap/cm"),
        "{names} {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
