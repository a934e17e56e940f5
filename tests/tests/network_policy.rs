//! NetworkPolicy on a real node: the control plane and an agent in a node namespace,
//! an echo server in namespace `a` behind a ClusterIP and two clients in namespace `b`
//! (one labelled role=client), all on the one node — so traffic between them takes the
//! datapath's same-node paths (straight into the pod past the node's stack, or through
//! it) and, through the ClusterIP, the translation to the backend first. Default-deny
//! ingress in `a` shuts both clients out, by pod IP and by ClusterIP; a rule for b's
//! role=client pods on the server's named port lets exactly that one back in; deleting
//! the policies opens `a` again. Needs root, BPF, Docker and the images from
//! `cargo xtask images`.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use berth_tests::process::{PodShell, Setup, running_pods};

const VIP: &str = "198.18.201.10";

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: b}}
";

const WORKLOADS: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: a}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: echo
          image: berth/echo:v1
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec:
  clusterIP: 198.18.201.10
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: trusted, namespace: b}
spec:
  replicas: 1
  selector: {matchLabels: {app: trusted}}
  template:
    metadata: {labels: {app: trusted, role: client}}
    spec:
      containers: [{name: echo, image: berth/echo:v1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: stranger, namespace: b}
spec:
  replicas: 1
  selector: {matchLabels: {app: stranger}}
  template:
    metadata: {labels: {app: stranger}}
    spec:
      containers: [{name: echo, image: berth/echo:v1}]
";

const DENY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

const ALLOW_CLIENTS: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
          podSelector: {matchLabels: {role: client}}
      ports: [{protocol: TCP, port: http}]
";

#[tokio::test(flavor = "multi_thread")]
async fn default_deny_shuts_namespaces_out_and_a_rule_lets_its_pods_in() {
    let setup = Setup::new("npol");
    setup.run(run).await;
}

/// Whether `shell`'s pod gets an answer from `url` (the echo image's wget gives up after
/// 5 s without one).
async fn reaches(shell: &PodShell, url: &str) -> bool {
    let fetched = shell.run(&["wget", "-qO-", url]).await;
    fetched.exit_code == 0 && fetched.output.starts_with("pod=web-")
}

/// Waits (up to `limit`) until `shell` reaching `url` is `wanted`; how long it took.
async fn until(shell: &PodShell, url: &str, wanted: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if reaches(shell, url).await == wanted {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{url} still {} after {limit:?}",
            if wanted { "unreachable" } else { "reachable" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until namespace `ns` has `count` running pods; their names and addresses.
async fn running_in(setup: &Setup, ns: &str, count: usize) -> Vec<(String, Ipv4Addr)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pods: Vec<_> = running_pods(&setup.berthctl(&["get", "pods", "-n", ns, "-o", "wide"]))
            .into_iter()
            .filter(|pod| pod.ready)
            .map(|pod| (pod.name, pod.ip))
            .collect();
        if pods.len() == count {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}: {pods:?} ready, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run(setup: &Setup) {
    let _control = setup.control_plane().await;
    let _agent = setup.agent();
    setup.apply(NAMESPACES);
    setup.apply(WORKLOADS);
    let web = running_in(setup, "a", 1).await[0].1;
    running_in(setup, "b", 2).await;
    let trusted = PodShell::find(&setup.node, "trusted-").await;
    let stranger = PodShell::find(&setup.node, "stranger-").await;
    let by_ip = format!("http://{web}:8080/");
    let by_vip = format!("http://{VIP}/");
    let open = Duration::from_secs(30);
    for shell in [&trusted, &stranger] {
        until(shell, &by_ip, true, open).await;
        until(shell, &by_vip, true, open).await;
    }

    setup.apply(DENY);
    let took = until(&stranger, &by_ip, false, open).await;
    eprintln!("default-deny in effect after {took:?}");
    for shell in [&trusted, &stranger] {
        assert!(
            !reaches(shell, &by_ip).await,
            "by pod IP under default-deny"
        );
        assert!(
            !reaches(shell, &by_vip).await,
            "by ClusterIP under default-deny"
        );
    }

    setup.apply(ALLOW_CLIENTS);
    let took = until(&trusted, &by_ip, true, open).await;
    eprintln!("the allow rule in effect after {took:?}");
    // Stored with Kubernetes' default policyTypes, listed with kubectl's columns.
    let stored = setup.berthctl(&["get", "networkpolicy", "clients", "-n", "a", "-o", "json"]);
    let stored: serde_json::Value = serde_json::from_slice(&stored.stdout).expect("JSON");
    assert_eq!(
        stored["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let listed = setup.berthctl(&["get", "netpol", "-n", "a"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "POD-SELECTOR", "AGE"], "{listed}");
    assert_eq!(rows[1][..2], ["clients", "app=web"], "{listed}");
    assert_eq!(rows[2][..2], ["deny", "<none>"], "{listed}");
    // Through the ClusterIP too: the backend's policy decides after translation, and the
    // node's readiness probes still reach the server (it stays an endpoint).
    assert!(reaches(&trusted, &by_vip).await, "role=client by ClusterIP");
    assert!(
        !reaches(&stranger, &by_ip).await,
        "not role=client, by pod IP"
    );
    assert!(
        !reaches(&stranger, &by_vip).await,
        "not role=client, by ClusterIP"
    );

    for name in ["deny", "clients"] {
        let deleted = setup.berthctl(&["delete", "networkpolicy", name, "-n", "a"]);
        assert!(
            deleted.status.success(),
            "delete {name}: {}",
            String::from_utf8_lossy(&deleted.stderr)
        );
    }
    let took = until(&stranger, &by_ip, true, open).await;
    eprintln!("isolation lifted after {took:?}");
    assert!(
        reaches(&stranger, &by_vip).await,
        "by ClusterIP, policies gone"
    );
}
