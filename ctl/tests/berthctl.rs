//! berthctl, the binary, against a real control plane: every verb's output and exit code,
//! including the error cases. Clusters with controllers get hollow nodes (simulated
//! agents on the real gRPC API) so pods run and rollouts finish.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use berth_sim::{
    hollow::{HollowHandle, HollowNode},
    server::{TestServer, start, start_with},
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// What one berthctl run printed and how it exited.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "stdout:\n{}\nstderr:\n{}", self.out, self.err);
        self
    }

    fn failed(&self) -> &Self {
        assert_eq!(self.code, 1, "stdout:\n{}\nstderr:\n{}", self.out, self.err);
        self
    }

    /// Exit 1 with every one of `parts` on stderr.
    fn fails_with(&self, parts: &[&str]) {
        self.failed();
        for part in parts {
            assert!(self.err.contains(part), "{part:?} not in:\n{}", self.err);
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

fn command(admin: &Path, args: &[&str]) -> tokio::process::Command {
    // tokio's Command: the server runs on this test's runtime and must keep answering.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_berthctl"));
    command
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .arg("--kubeconfig")
        .arg(admin)
        .args(args)
        .kill_on_drop(true);
    command
}

async fn berthctl_with_stdin(admin: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = command(admin, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berthctl");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let output = child.wait_with_output().await.expect("berthctl exits");
    Run {
        code: output.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&output.stdout).into_owned(),
        err: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn berthctl(admin: &Path, args: &[&str]) -> Run {
    berthctl_with_stdin(admin, args, "").await
}

/// berthctl with whitespace-separated arguments: `ctl(admin, "get pods -o wide")`.
async fn ctl(admin: &Path, args: &str) -> Run {
    berthctl(admin, &args.split_whitespace().collect::<Vec<_>>()).await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_str().expect("utf-8 path").to_owned()
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests")
}

/// The data rows of a table whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

const APP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      priorityClassName: high\n      containers: [{name: web, image: 'echo:1'}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n";

#[tokio::test]
async fn apply_get_scale_undo_events_delete() {
    let t = start().await;
    let admin = t.server.admin_config.clone();
    let manifest = write(t.dir.path(), "app.yaml", APP);

    let run = ctl(&admin, &format!("apply -f {manifest} --dry-run")).await;
    assert_eq!(
        run.ok().out,
        "deployment.apps/web created (server dry run)\nservice/web created (server dry run)\n"
    );
    ctl(&admin, "get deploy web").await.failed();

    let run = berthctl(&admin, &["apply", "-f", &manifest]).await;
    run.ok();
    assert_eq!(
        run.out.trim(),
        "deployment.apps/web created\nservice/web created"
    );
    assert!(
        run.err.contains(
            "Warning: deployment.apps/web: spec.template.spec.priorityClassName: unsupported field"
        ),
        "{}",
        run.err
    );

    let run = ctl(&admin, "get deploy").await;
    run.ok();
    let lines: Vec<&str> = run.out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    let web = row(&run.out, "web").expect("web row");
    assert_eq!(web[1], "0/2");
    assert!(web[4].ends_with('s'), "age in seconds: {}", web[4]);
    // Columns line up: every row starts its second column where the header's does.
    let column = lines[0].find("READY").expect("READY");
    assert!(lines[1..].iter().all(|l| l[column - 3..column] == *"   "));

    let run = ctl(&admin, "scale deployment web --replicas 5").await;
    assert_eq!(run.ok().out.trim(), "deployment.apps/web scaled");

    std::fs::write(&manifest, APP.replace("echo:1", "echo:2")).expect("write manifest");
    let run = berthctl(&admin, &["apply", "-f", &manifest]).await;
    assert!(
        run.ok().out.contains("deployment.apps/web configured"),
        "{}",
        run.out
    );
    let run = ctl(&admin, "rollout undo deployment web").await;
    assert_eq!(
        run.ok().out.trim(),
        "deployment.apps/web rolled back (now revision 3)"
    );

    let run = ctl(&admin, "events --for deployment/web").await;
    run.ok();
    assert!(
        run.out.starts_with("LAST SEEN") && run.out.contains("Scaled"),
        "{}",
        run.out
    );
    assert!(run.out.contains("DeploymentRollback"), "{}", run.out);

    let run = ctl(&admin, "delete svc web").await;
    assert_eq!(run.ok().out.trim(), "service/web deleted");
    let run = ctl(&admin, "get svc web").await;
    assert_eq!(
        run.failed().err.trim(),
        "Error from server (NotFound): services \"web\" not found"
    );
    let run = ctl(&admin, "delete svc web --ignore-not-found").await;
    run.ok();
    let run = ctl(&admin, "delete deploy/web").await;
    assert_eq!(run.ok().out, "deployment.apps/web deleted\n");
    let run = ctl(&admin, "describe deployments").await;
    assert_eq!(run.ok().err, "No resources found in default namespace.\n");
}

#[tokio::test]
async fn errors_name_the_file_field_and_fix_and_exit_one() {
    let t = start().await;
    let admin = &t.server.admin_config;
    let dir = t.dir.path();

    // A bad field: the file, the document, its line and the field.
    let bad = write(
        dir,
        "bad.yaml",
        "# comment\napiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 0}]}\n",
    );
    berthctl(admin, &["apply", "-f", &bad]).await.fails_with(&[
        &format!("{bad}: document 2 (line 7)"),
        "spec.ports[0].port: must be between 1 and 65535",
        "nothing was applied",
    ]);
    // All or nothing: the valid first document was not written either.
    ctl(admin, "get svc ok").await.failed();

    // A misspelt kind in a manifest: the suggestion names the kind meant.
    let typo = write(
        dir,
        "typo.yaml",
        "apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: web}\n",
    );
    berthctl(admin, &["apply", "-f", &typo]).await.fails_with(&[
        &format!("{typo}: document 1"),
        "did you mean `apiVersion: apps/v1` and `kind: Deployment`?",
    ]);

    // Malformed YAML: the line; a missing file: its name.
    let broken = write(dir, "broken.yaml", "apiVersion: v1\nkind: [\n");
    berthctl(admin, &["apply", "-f", &broken])
        .await
        .fails_with(&[&broken, "line"]);
    ctl(admin, "apply -f /nonexistent/app.yaml")
        .await
        .fails_with(&["/nonexistent/app.yaml: No such file"]);

    // Unknown kind on the command line; not found.
    let run = ctl(admin, "get deploymnets").await;
    assert_eq!(
        run.failed().err.trim(),
        "error: the server doesn't have a resource type \"deploymnets\"; did you mean \"deployments\"?"
    );
    let run = ctl(admin, "describe deployment x").await;
    assert_eq!(
        run.failed().err.trim(),
        "Error from server (NotFound): deployments.apps \"x\" not found"
    );
    ctl(admin, "rollout undo deployment x")
        .await
        .fails_with(&["NotFound"]);

    // Unauthorised: which token was refused.
    ctl(admin, "--token wrong get pods")
        .await
        .fails_with(&["the server rejected the token from --token/BERTH_TOKEN (Unauthorized)"]);
    let config = std::fs::read_to_string(admin).expect("admin.conf");
    let stale = write(dir, "stale.conf", &config.replace("token: ", "token: x"));
    berthctl(Path::new(&stale), &["get", "pods"])
        .await
        .fails_with(&[&format!("rejected the token from {stale}")]);

    // Server unreachable: the address and where it came from.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!(
        "https://127.0.0.1:{}",
        closed.local_addr().expect("addr").port()
    );
    drop(closed);
    let unreachable = write(
        dir,
        "unreachable.conf",
        &config.replace(&t.server.url, &address),
    );
    berthctl(Path::new(&unreachable), &["get", "pods"])
        .await
        .fails_with(&[
            &format!("cannot reach the control plane at {address}"),
            &format!("the address comes from {unreachable}"),
        ]);
    berthctl(admin, &["--server", &address, "get", "pods"])
        .await
        .fails_with(&["from --server/BERTH_SERVER"]);

    // No configuration file.
    berthctl(Path::new("/nonexistent/admin.conf"), &["get", "pods"])
        .await
        .fails_with(&["/nonexistent/admin.conf", "--kubeconfig or BERTH_CONFIG"]);

    // Usage errors exit 1 like kubectl's; help exits 0.
    ctl(admin, "get").await.failed();
    ctl(admin, "get pods -o table").await.failed();
    ctl(admin, "--help").await.ok();
}

#[tokio::test]
async fn get_formats_selectors_and_namespaces() {
    let t = start().await;
    let admin = &t.server.admin_config;
    let two = "apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {tier: web}}\nspec: {selector: {app: a}, ports: [{port: 80}], clusterIP: 198.18.200.1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, labels: {tier: db}}\nspec: {selector: {app: b}, ports: [{port: 5432, nodePort: 30432}], type: NodePort}\n";
    berthctl_with_stdin(admin, &["apply", "-f", "-"], two)
        .await
        .ok();
    // The same names in another namespace; addresses and node ports are cluster-wide, so
    // these get allocated ones.
    let other = "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: a}, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {selector: {app: b}, ports: [{port: 5432}], type: NodePort}\n";
    berthctl_with_stdin(admin, &["apply", "-n", "other", "-f", "-"], other)
        .await
        .ok();

    let run = ctl(admin, "get svc -o wide").await;
    run.ok();
    assert_eq!(
        row(&run.out, "NAME").expect("header"),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let a = row(&run.out, "a").expect("row a");
    assert_eq!(
        &a[..5],
        ["a", "ClusterIP", "198.18.200.1", "<none>", "80/TCP"]
    );
    assert_eq!(a[6], "app=a");
    let b = row(&run.out, "b").expect("row b");
    assert_eq!(b[4], "5432:30432/TCP");

    // -o json of a list is a `kind: List`; of one object, the object.
    let list = ctl(admin, "get svc -o json").await.json();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(list["items"][0]["kind"], "Service");
    let one = ctl(admin, "get svc a -o json").await.json();
    assert_eq!(one["metadata"]["name"], "a");
    let run = ctl(admin, "get svc/a -o yaml").await;
    assert!(
        run.ok().out.contains("kind: Service") && run.out.contains("clusterIP: 198.18.200.1"),
        "{}",
        run.out
    );
    let run = ctl(admin, "get svc -o yaml").await;
    assert!(run.ok().out.contains("kind: List"), "{}", run.out);

    let run = ctl(admin, "get services -o name -l tier=web").await;
    assert_eq!(run.ok().out, "service/a\n");
    let run = ctl(admin, "get svc -l tier=nothing").await;
    assert_eq!(run.ok().out, "");
    assert_eq!(run.err.trim(), "No resources found in default namespace.");

    // -n and -A.
    let run = ctl(admin, "get svc -n other -o name").await;
    assert_eq!(run.ok().out, "service/a\nservice/b\n");
    let run = ctl(admin, "get svc -A").await;
    run.ok();
    assert!(run.out.starts_with("NAMESPACE"), "{}", run.out);
    let namespaces: Vec<&str> = run
        .out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(namespaces, ["default", "default", "other", "other"]);

    // A manifest namespace that contradicts -n is refused, as kubectl does.
    let pinned = "apiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: other}\nspec: {ports: [{port: 80}]}\n";
    let run = berthctl_with_stdin(admin, &["apply", "-n", "third", "-f", "-"], pinned).await;
    assert!(
        run.failed()
            .err
            .contains("does not match the namespace \"third\""),
        "{}",
        run.err
    );

    // Several kinds at once.
    let run = ctl(admin, "get deploy,svc").await;
    assert!(run.ok().out.contains("CLUSTER-IP"), "{}", run.out);
}

#[tokio::test]
async fn create_refuses_existing_objects() {
    let t = start().await;
    let admin = &t.server.admin_config;
    let manifest = write(t.dir.path(), "app.yaml", APP);
    let run = berthctl(admin, &["create", "-f", &manifest]).await;
    assert_eq!(
        run.ok().out,
        "deployment.apps/web created\nservice/web created\n"
    );
    assert!(
        run.err.contains("priorityClassName: unsupported field"),
        "{}",
        run.err
    );
    berthctl(admin, &["create", "-f", &manifest])
        .await
        .fails_with(&[
            "Error from server (AlreadyExists): deployments.apps \"web\" already exists",
            "Error from server (AlreadyExists): services \"web\" already exists",
        ]);
}

/// `apply --server-side`: the manifest's fields become the manager's (`berthctl` unless
/// `--field-manager`), the same manifest again writes nothing, and another manager's
/// field is a conflict until `--force-conflicts` takes it.
#[tokio::test]
async fn apply_server_side_owns_fields_and_reports_conflicts() {
    let t = start().await;
    let admin = &t.server.admin_config;
    let manifest = write(t.dir.path(), "app.yaml", APP);
    let apply = ["apply", "--server-side", "-f", manifest.as_str()];
    let run = berthctl(admin, &apply).await;
    assert_eq!(
        run.ok().out,
        "deployment.apps/web serverside-applied\nservice/web serverside-applied\n"
    );
    let first = ctl(admin, "get deployment web -o json --show-managed-fields")
        .await
        .ok()
        .json();
    let entry = &first["metadata"]["managedFields"][0];
    assert_eq!(
        (&entry["manager"], &entry["operation"]),
        (&Value::from("berthctl"), &Value::from("Apply")),
        "{entry}"
    );
    berthctl(admin, &apply).await.ok();
    let again = ctl(admin, "get deployment web -o json").await.ok().json();
    assert!(
        again["metadata"].get("managedFields").is_none(),
        "left out unless asked, as kubectl: {again}"
    );
    assert_eq!(
        again["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"],
        "the same manifest again writes nothing"
    );

    let scaled = write(
        t.dir.path(),
        "scaled.yaml",
        &APP.replace("replicas: 2", "replicas: 5"),
    );
    let by_ops = [
        "apply",
        "--server-side",
        "--field-manager",
        "ops",
        "-f",
        scaled.as_str(),
    ];
    berthctl(admin, &by_ops).await.fails_with(&[
        "deployment.apps/web: Apply failed with 1 conflict: conflict with \"berthctl\": .spec.replicas",
        "--force-conflicts",
    ]);
    let forced = [&by_ops[..4], &["--force-conflicts"], &by_ops[4..]].concat();
    berthctl(admin, &forced).await.ok();
    let taken = ctl(admin, "get deployment web -o json").await.ok().json();
    assert_eq!(taken["spec"]["replicas"], 5);
    berthctl(admin, &apply)
        .await
        .fails_with(&["conflict with \"ops\": .spec.replicas"]);
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

async fn next(lines: &mut Lines) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line within 30 s")
        .expect("read")
        .expect("watch still running")
}

struct Cluster {
    t: TestServer,
    ca: String,
    nodes: Vec<HollowHandle>,
}

impl Cluster {
    async fn start(nodes: usize) -> Self {
        let t = start_with(&[]).await;
        let pki = t.dir.path().join("pki");
        let ca = std::fs::read_to_string(pki.join("ca.crt")).expect("ca.crt");
        let token = std::fs::read_to_string(pki.join("bootstrap-token")).expect("token");
        let mut cluster = Self {
            t,
            ca,
            nodes: Vec::new(),
        };
        for i in 0..nodes {
            let node = cluster
                .join(&token, &format!("node-{i}"))
                .await
                .expect("join");
            cluster.nodes.push(
                node.start(Duration::from_millis(200))
                    .await
                    .expect("hollow node starts"),
            );
        }
        cluster
    }

    async fn join(&self, token: &str, name: &str) -> Result<HollowNode, String> {
        HollowNode::join(&self.t.server.agent_url, &self.ca, token, name)
            .await
            .map_err(|e| e.to_string())
    }

    fn admin(&self) -> &Path {
        &self.t.server.admin_config
    }
}

#[tokio::test]
async fn kubernetes_manifests_apply_unchanged_and_roll_out() {
    let c = Cluster::start(2).await;
    let admin = c.admin();
    let dir = manifests();
    let run = berthctl(admin, &["apply", "-f", dir.to_str().expect("path")]).await;
    assert_eq!(
        run.ok().out,
        "deployment.apps/backend created\nservice/backend created\n\
         deployment.apps/frontend created\nservice/frontend created\n"
    );
    assert_eq!(run.err, "", "the manifests use only supported fields");

    let run = ctl(admin, "rollout status deployment frontend --timeout 60s").await;
    run.ok();
    assert!(
        run.out
            .trim_end()
            .ends_with("deployment \"frontend\" successfully rolled out"),
        "{}",
        run.out
    );
    ctl(admin, "rollout status deploy/backend --timeout 60s")
        .await
        .ok();

    let run = ctl(admin, "get deployments").await;
    let frontend = row(&run.ok().out, "frontend").expect("frontend row");
    assert_eq!(&frontend[1..4], ["3/3", "3", "3"]);

    let run = ctl(admin, "get pods -o wide -l app=frontend").await;
    run.ok();
    let rows: Vec<Vec<&str>> = run
        .out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{}", run.out);
    for pod in &rows {
        assert_eq!(&pod[1..4], ["1/1", "Running", "0"], "{}", run.out);
        assert!(
            pod[5].parse::<std::net::Ipv4Addr>().is_ok(),
            "IP: {}",
            run.out
        );
        assert!(pod[6].starts_with("node-"), "NODE: {}", run.out);
    }

    let run = ctl(admin, "get nodes -o wide").await;
    run.ok();
    assert_eq!(
        row(&run.out, "NAME").expect("header"),
        [
            "NAME",
            "STATUS",
            "AGE",
            "INTERNAL-IP",
            "POD-CIDR",
            "CPU",
            "MEMORY"
        ]
    );
    let node = row(&run.out, "node-0").expect("node-0");
    assert_eq!(node[1], "Ready");
    assert!(node[4].ends_with("/24"), "{}", run.out);

    let run = ctl(admin, "describe deployment frontend").await;
    run.ok();
    for expected in [
        "Name:",
        "frontend",
        "Selector:",
        "app=frontend",
        "3 desired | 3 updated | 3 total | 3 available | 0 unavailable",
        "RollingUpdateStrategy:  1 max unavailable, 1 max surge",
        "Image:",
        "berth/echo:v1",
        "kubernetes.io/change-cause: initial release",
        "NewReplicaSet:",
        "(3/3 replicas created)",
        "Events:",
    ] {
        assert!(run.out.contains(expected), "{expected:?} in\n{}", run.out);
    }

    // The endpoints controller follows the pods on its own schedule.
    for _ in 0..600 {
        let endpoints = ctl(admin, "get ep frontend -o json").await.json();
        let ready = endpoints["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["addresses"].as_array())
            .map(Vec::len)
            .sum::<usize>();
        if ready == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = ctl(admin, "describe svc frontend").await;
    run.ok();
    assert!(
        run.out.contains("TargetPort:") && run.out.contains("8080/TCP"),
        "{}",
        run.out
    );
    let endpoints = run
        .out
        .lines()
        .find(|l| l.starts_with("Endpoints:"))
        .expect("Endpoints line");
    assert_eq!(endpoints.matches(":8080").count(), 3, "{}", run.out);

    let pod = rows[0][0];
    let run = berthctl(admin, &["describe", "pod", pod]).await;
    run.ok();
    assert!(
        run.out.contains("Status:") && run.out.contains("Running"),
        "{}",
        run.out
    );
    assert!(run.out.contains("Controlled By:"), "{}", run.out);
    assert!(run.out.contains("Readiness:"), "{}", run.out);
    assert!(
        run.out.contains("GREETING=hello from the frontend"),
        "{}",
        run.out
    );

    let run = ctl(admin, "describe node node-0").await;
    run.ok();
    assert!(
        run.out.contains("Status:") && run.out.contains("Ready") && run.out.contains("Pods:"),
        "{}",
        run.out
    );

    let run = ctl(admin, "get endpoints frontend").await;
    let ep = row(&run.ok().out, "frontend").expect("endpoints row");
    assert!(ep[1].contains(":8080"), "{}", run.out);

    // Scale: describe shows the Scaled event among the recent ones.
    ctl(admin, "scale deploy/frontend --replicas 1").await.ok();
    let run = ctl(admin, "describe deploy frontend").await;
    let events = run
        .ok()
        .out
        .split("Events:")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        events.contains("Type") && events.contains("Scaled") && events.contains("apiserver"),
        "{}",
        run.out
    );
}

#[tokio::test]
async fn rollout_history_undo_and_status_deadline() {
    let c = Cluster::start(1).await;
    let admin = c.admin();
    let v1 = std::fs::read_to_string(manifests().join("frontend.yaml")).expect("manifest");
    let v2 = v1
        .replace("berth/echo:v1", "berth/echo:v2")
        .replace("initial release", "v2 with the new greeting");
    let path = write(c.t.dir.path(), "frontend.yaml", &v1);
    berthctl(admin, &["apply", "-f", &path]).await.ok();
    std::fs::write(&path, &v2).expect("write");
    berthctl(admin, &["apply", "-f", &path]).await.ok();

    let run = ctl(admin, "rollout status deployment frontend --timeout 60s").await;
    run.ok();
    assert!(run.out.contains("successfully rolled out"), "{}", run.out);

    let run = ctl(admin, "rollout history deployment frontend").await;
    run.ok();
    assert!(
        run.out.starts_with("deployment.apps/frontend\nREVISION"),
        "{}",
        run.out
    );
    let one = row(&run.out, "1").expect("revision 1");
    assert_eq!(one[1..3], ["initial", "release"]);
    assert!(run.out.contains("v2 with the new greeting"), "{}", run.out);
    assert!(
        row(&run.out, "2").is_some_and(|r| r.contains(&"berth/echo:v2")),
        "{}",
        run.out
    );
    let run = ctl(admin, "rollout history deploy/frontend --revision 1").await;
    assert!(
        run.ok().out.contains("image: berth/echo:v1")
            && run.out.contains("Change-Cause: initial release"),
        "{}",
        run.out
    );
    ctl(admin, "rollout history deploy/frontend --revision 9")
        .await
        .fails_with(&["unable to find revision 9"]);

    let run = ctl(admin, "rollout undo deployment frontend --to-revision 1").await;
    assert!(run.ok().out.contains("now revision 3"), "{}", run.out);
    let run = ctl(admin, "get deploy frontend -o wide").await;
    assert!(run.ok().out.contains("berth/echo:v1"), "{}", run.out);
    let run = ctl(admin, "rollout history deployment frontend").await;
    assert!(
        row(&run.ok().out, "3").is_some_and(|r| r.contains(&"berth/echo:v1")),
        "{}",
        run.out
    );
    ctl(admin, "rollout undo deployment frontend --to-revision 42")
        .await
        .fails_with(&["Error from server"]);

    // A rollout that cannot finish (its pods select no node) ends at the deadline with
    // exit 1, after saying what it waits for.
    let stuck = v1
        .replace("name: frontend", "name: stuck")
        .replace("app: frontend", "app: stuck")
        .replace(
            "      containers:",
            "      nodeSelector:\n        disk: none\n      containers:",
        );
    let stuck_path = write(c.t.dir.path(), "stuck.yaml", &stuck);
    berthctl(admin, &["apply", "-f", &stuck_path]).await.ok();
    // Once all its pods exist, what is left is their availability.
    for _ in 0..600 {
        let deployment = ctl(admin, "get deploy stuck -o json").await.json();
        if deployment["status"]["updatedReplicas"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = ctl(admin, "rollout status deployment stuck --timeout 3s").await;
    run.failed();
    assert!(
        run.out.contains("Waiting for deployment \"stuck\" rollout to finish: 0 of 3 updated replicas are available..."),
        "{}",
        run.out
    );
    assert_eq!(run.err.trim(), "error: timed out waiting for the condition");
}

#[tokio::test]
async fn get_watch_streams_changes() {
    let c = Cluster::start(1).await;
    let admin = c.admin();
    let manifest = write(
        c.t.dir.path(),
        "app.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: 'berth/echo:v1'}]}\n",
    );
    berthctl(admin, &["apply", "-f", &manifest]).await.ok();
    ctl(admin, "rollout status deploy/web --timeout 60s")
        .await
        .ok();

    let mut child = command(admin, &["get", "deployments", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(next(&mut lines).await.starts_with("NAME"));
    assert!(next(&mut lines).await.starts_with("web "));
    ctl(admin, "scale deploy web --replicas 3").await.ok();
    // The rollout progresses through intermediate states to 3/3.
    loop {
        let line = next(&mut lines).await;
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], "web", "{line}");
        if cells[1] == "3/3" {
            break;
        }
    }
    child.kill().await.expect("stop the watch");
}

#[tokio::test]
async fn join_tokens_let_nodes_join_until_deleted() {
    let c = Cluster::start(0).await;
    let admin = c.admin();
    let run = berthctl(
        admin,
        &["token", "create", "--ttl", "1h", "--description", "rack 3"],
    )
    .await;
    let token = run.ok().out.trim().to_owned();
    let (id, secret) = token.split_once('.').expect("id.secret");
    assert_eq!((id.len(), secret.len()), (6, 16), "{token}");

    c.join(&token, "node-new")
        .await
        .expect("joins with the new token");
    let made_up = format!("{id}.0000000000000000");
    let error = c.join(&made_up, "node-bad").await.err().expect("refused");
    assert!(error.contains("invalid bootstrap token"), "{error}");

    let run = ctl(admin, "token list").await;
    let listed = row(&run.ok().out, id).expect("token listed");
    assert!(matches!(listed[1], "59m" | "60m"), "{}", run.out);
    assert!(run.out.contains("rack 3"), "{}", run.out);
    assert!(!run.out.contains(secret), "the secret is never listed");

    let run = ctl(admin, "get nodes").await;
    assert!(row(&run.ok().out, "node-new").is_some(), "{}", run.out);

    let run = berthctl(admin, &["token", "delete", id]).await;
    run.ok();
    assert!(c.join(&token, "node-late").await.is_err());
    berthctl(admin, &["token", "delete", id])
        .await
        .fails_with(&["NotFound"]);
    ctl(admin, "token create --ttl soon")
        .await
        .fails_with(&["not a duration"]);
}

#[tokio::test]
async fn help_has_examples_and_completions_generate() {
    let admin = Path::new("/nonexistent/admin.conf");
    for verb in [
        vec!["apply"],
        vec!["create"],
        vec!["get"],
        vec!["describe"],
        vec!["delete"],
        vec!["label"],
        vec!["scale"],
        vec!["rollout"],
        vec!["rollout", "status"],
        vec!["rollout", "history"],
        vec!["rollout", "undo"],
        vec!["events"],
        vec!["token"],
        vec!["token", "create"],
        vec!["token", "list"],
        vec!["token", "delete"],
        vec!["completion"],
    ] {
        let mut args = verb.clone();
        args.push("--help");
        let run = berthctl(admin, &args).await;
        assert!(
            run.ok().out.contains("Examples:\n  berthctl ")
                || run.out.contains("Examples:\n  source"),
            "{verb:?}: {}",
            run.out
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let run = berthctl(admin, &["completion", shell]).await;
        assert!(
            run.ok().out.contains("berthctl") && run.out.contains("rollout"),
            "{shell}"
        );
    }
}

#[tokio::test]
async fn namespaces_through_the_generic_commands() {
    let t = start().await;
    let admin = t.server.admin_config.clone();
    let manifest = t.dir.path().join("ns.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n",
    )
    .expect("write manifest");
    let run = berthctl(&admin, &["apply", "-f", manifest.to_str().expect("utf-8")]).await;
    assert_eq!(
        run.ok().out.trim(),
        "namespace/shop created\nservice/web created"
    );

    let run = berthctl(&admin, &["get", "namespaces"]).await;
    let out = &run.ok().out;
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-public", "kube-system", "shop"],
        "{out}"
    );

    let run = berthctl(&admin, &["delete", "namespace", "shop"]).await;
    assert_eq!(run.ok().out.trim(), "namespace/shop deleted");
    let run = berthctl(&admin, &["delete", "namespace", "default"]).await;
    assert!(
        run.failed().err.contains("may not be deleted"),
        "{}",
        run.err
    );
}

#[tokio::test]
async fn delete_pods_gracefully_or_by_force() {
    let t = start().await;
    let admin = t.server.admin_config.clone();
    // Bound to a node no agent runs: nothing confirms its graceful deletion.
    let bound = write(
        t.dir.path(),
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bound}\n\
         spec: {nodeName: far-away, containers: [{name: c, image: berth/echo:v1}]}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: unbound}\n\
         spec: {containers: [{name: c, image: berth/echo:v1}]}\n",
    );
    berthctl(&admin, &["apply", "-f", &bound]).await.ok();

    let run = berthctl(&admin, &["delete", "pod", "bound", "--grace-period=5"]).await;
    assert_eq!(run.ok().out, "pod/bound deleted\n");
    let pod = berthctl(&admin, &["get", "pod", "bound", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 5);
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
    let table = berthctl(&admin, &["get", "pods"]).await.ok().out.clone();
    assert_eq!(row(&table, "bound").expect("listed")[2], "Terminating");
    // A second delete may shorten the grace, never lengthen it.
    berthctl(&admin, &["delete", "pod", "bound", "--grace-period=60"])
        .await
        .ok();
    let pod = berthctl(&admin, &["get", "pod", "bound", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 5);

    let run = berthctl(
        &admin,
        &["delete", "pod", "bound", "--grace-period=0", "--force"],
    )
    .await;
    assert!(
        run.ok().out.contains("Immediate deletion does not wait"),
        "{}",
        run.out
    );
    berthctl(&admin, &["get", "pod", "bound"])
        .await
        .fails_with(&["NotFound"]);

    // No node runs it: it goes at once.
    berthctl(&admin, &["delete", "pod", "unbound"]).await.ok();
    berthctl(&admin, &["get", "pod", "unbound"])
        .await
        .fails_with(&["NotFound"]);

    berthctl(&admin, &["delete", "pod", "x", "--grace-period=-2"])
        .await
        .fails_with(&["--grace-period"]);
}

/// A Deployment of `replicas` echo pods labelled `app: NAME`.
fn deployment(name: &str, namespace: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: {name}, image: 'berth/echo:v1'}}]}}
"
    )
}

const POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
          podSelector: {matchLabels: {role: client}}
      ports: [{port: 80}, {port: http}, {protocol: UDP, port: 32000, endPort: 32768}]
    - {}
  egress:
    - to: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec:
  podSelector: {}
";

/// The pods (name → IP) of `namespace` whose names start with `prefix`, from `get pods -o
/// wide`.
async fn pod_ips(admin: &Path, namespace: &str, prefix: &str) -> Vec<(String, String)> {
    let run = berthctl(admin, &["get", "pods", "-o", "wide", "-n", namespace]).await;
    run.ok()
        .out
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells[0].starts_with(prefix))
        .map(|cells| (cells[0].to_owned(), cells[5].to_owned()))
        .collect()
}

#[tokio::test]
async fn describe_networkpolicy_summarises_the_spec_and_lists_the_pods_it_selects() {
    let c = Cluster::start(1).await;
    let admin = c.admin();
    let manifest = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n".to_owned(),
        deployment("web", "default", 2),
        deployment("db", "default", 1),
        deployment("web", "other", 1),
        POLICIES.to_owned(),
    ]
    .join("---\n");
    let manifest = write(c.t.dir.path(), "policies.yaml", &manifest);
    berthctl(admin, &["apply", "-f", &manifest]).await.ok();
    for (deployment, namespace) in [("web", "default"), ("db", "default"), ("web", "other")] {
        ctl(
            admin,
            &format!("rollout status deploy/{deployment} -n {namespace} --timeout 60s"),
        )
        .await
        .ok();
    }
    let web = pod_ips(admin, "default", "web-").await;
    let db = pod_ips(admin, "default", "db-").await;
    let elsewhere = pod_ips(admin, "other", "web-").await;
    assert_eq!((web.len(), db.len(), elsewhere.len()), (2, 1, 1));

    let run = ctl(admin, "describe networkpolicy web").await;
    let out = &run.ok().out;
    let spec = out
        .split("Spec:\n")
        .nth(1)
        .and_then(|rest| rest.split("Selected Pods:").next())
        .unwrap_or_else(|| panic!("a spec section in\n{out}"));
    assert_eq!(
        spec,
        "  PodSelector:     app=web
  Allowing ingress traffic:
    To Port: 80/TCP
    To Port: http/TCP
    To Port: 32000-32768/UDP
    From:
      NamespaceSelector: team=b
      PodSelector: role=client
    ----------
    To Port: <any> (traffic allowed to all ports)
    From: <any> (traffic not restricted by source)
  Allowing egress traffic:
    To Port: <any> (traffic allowed to all ports)
    To:
      IPBlock:
        CIDR: 198.18.0.0/15
        Except: 198.18.1.0/24
  Policy Types: Ingress, Egress
",
        "{out}"
    );
    for field in ["Name:", "Namespace:", "Created on:", "Labels:", "Events:"] {
        assert!(
            out.lines().any(|line| line.starts_with(field)),
            "{field} in\n{out}"
        );
    }
    // Exactly the web pods of its own namespace, with their addresses.
    let selected = |out: &str| -> Vec<(String, String, String)> {
        let section = out
            .split("Selected Pods:")
            .nth(1)
            .and_then(|rest| rest.split("Events:").next())
            .unwrap_or_default();
        section
            .lines()
            .skip(2)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|cells| cells.len() == 3)
            .map(|cells| {
                (
                    cells[0].to_owned(),
                    cells[1].to_owned(),
                    cells[2].to_owned(),
                )
            })
            .collect()
    };
    let in_default = |pods: &[(String, String)]| -> Vec<(String, String, String)> {
        pods.iter()
            .map(|(name, ip)| ("default".to_owned(), name.clone(), ip.clone()))
            .collect()
    };
    assert!(
        out.contains("Selected Pods:  (2 in total)\n  Namespace"),
        "{out}"
    );
    let mut wanted = in_default(&web);
    wanted.sort();
    assert_eq!(selected(out), wanted, "{out}");

    // An empty podSelector: every pod of the namespace, isolated for ingress only.
    let run = ctl(admin, "describe netpol deny").await;
    let out = &run.ok().out;
    for line in [
        "  PodSelector:     <none> (Allowing the specific traffic to all pods in this namespace)",
        "  Allowing ingress traffic:\n    <none> (Selected pods are isolated for ingress connectivity)",
        "  Not affecting egress traffic",
        "  Policy Types: Ingress",
        "Selected Pods:  (3 in total)",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    let mut wanted = in_default(&[web, db].concat());
    wanted.sort();
    assert_eq!(selected(out), wanted, "{out}");
}

#[tokio::test]
async fn label_sets_overwrites_and_removes_labels() {
    let t = start().await;
    let admin = &t.server.admin_config;
    let manifest = write(
        t.dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n",
    );
    berthctl(admin, &["apply", "-f", &manifest]).await.ok();
    let labels = |out: &str| -> Value {
        serde_json::from_str::<Value>(out).expect("JSON")["metadata"]["labels"].clone()
    };

    let run = ctl(admin, "label namespace team-a team=a tier=web").await;
    assert_eq!(run.ok().out, "namespace/team-a labeled\n");
    let run = ctl(admin, "get namespace team-a -o json").await;
    assert_eq!(labels(&run.ok().out)["team"], "a");
    assert_eq!(labels(&run.out)["tier"], "web");

    // Another value for an existing label needs --overwrite; the same value is no change.
    ctl(admin, "label namespace team-a team=b")
        .await
        .fails_with(&["'team' already has a value (a), and --overwrite is false"]);
    let run = ctl(admin, "label ns/team-a team=a").await;
    assert_eq!(run.ok().out, "namespace/team-a not labeled\n");
    let run = ctl(admin, "label namespace team-a team=b --overwrite").await;
    assert_eq!(run.ok().out, "namespace/team-a labeled\n");

    let run = ctl(admin, "label namespace team-a tier-").await;
    assert_eq!(run.ok().out, "namespace/team-a unlabeled\n");
    let run = ctl(admin, "get namespace team-a -o json").await;
    assert_eq!(labels(&run.ok().out)["team"], "b");
    assert_eq!(labels(&run.out).get("tier"), None);

    ctl(admin, "label namespace team-a team")
        .await
        .fails_with(&[
            "invalid label change \"team\": use KEY=VALUE to set a label or KEY- to remove it",
        ]);
    ctl(admin, "label namespace nowhere team=a")
        .await
        .fails_with(&["NotFound", "nowhere"]);
    // The server checks the value.
    ctl(admin, "label namespace team-a team=not/valid --overwrite")
        .await
        .fails_with(&["metadata.labels"]);
}
