//! A PersistentVolumeClaim on the real binaries (berth-control, berth-agent in a node
//! namespace, Docker): a pod that uses a claim gets a node-local volume once it is
//! scheduled, the data it writes survives deleting and recreating the pod, and deleting
//! the claim deletes the volume and then its directory on the node. A pod whose claim
//! does not exist stays Pending with the reason. A hostPath volume is refused unless the
//! admin allows its path, and mounts the node's directory when allowed. Needs root, BPF
//! and Docker, and the images from `cargo xtask images`.

use std::time::{Duration, Instant};

use berth_agent::runtime::{ContainerSummary, DockerRuntime};
use berth_tests::process::Setup;
use serde_json::Value;

const CLAIM: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
";

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: db}
spec:
  containers:
    - name: app
      image: berth/echo:v1
      volumeMounts: [{name: store, mountPath: /var/lib/db}]
  volumes:
    - name: store
      persistentVolumeClaim: {claimName: data}
";

#[tokio::test(flavor = "multi_thread")]
async fn a_claims_data_survives_its_pod_and_goes_with_the_claim() {
    Setup::new("pvc").run(run).await;
}

fn get(setup: &Setup, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let output = setup.berthctl(&all);
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).ok())
        .flatten()
}

/// Waits up to `within` for `check` to give Some.
async fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn app_container(runtime: &DockerRuntime, node: &str, pod_uid: &str) -> ContainerSummary {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = runtime
            .list_by_labels(&[("berth.node", node), ("berth.pod.uid", pod_uid)])
            .await
            .expect("containers")
            .into_iter()
            .find(|c| {
                c.state == "running"
                    && c.labels
                        .get("berth.container.name")
                        .is_some_and(|n| n == "app")
            });
        if let Some(found) = found {
            return found;
        }
        assert!(Instant::now() < deadline, "pod {pod_uid} does not run");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn sh(runtime: &DockerRuntime, container: &ContainerSummary, script: &str) -> String {
    let command = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let output = runtime
        .exec(&container.id, &command, Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(output.exit_code, 0, "{script}: {output:?}");
    output.output
}

async fn run(setup: &Setup) {
    let allowed = setup.data.path().join("host");
    let allow = format!("--allow-host-path={}", allowed.display());
    let _control = setup.control_plane_with(&[&allow]).await;
    let _agent = setup.agent();
    let runtime = DockerRuntime::connect("/var/run/docker.sock")
        .await
        .expect("docker");

    // No claim yet: the pod is not scheduled, and says why.
    setup.apply(POD);
    let message = eventually(
        "the pod reports its missing claim",
        Duration::from_secs(20),
        || {
            let pod = get(setup, &["pod", "db"])?;
            let message = pod.pointer("/status/message")?.as_str()?.to_owned();
            (!message.is_empty()).then_some(message)
        },
    )
    .await;
    assert_eq!(message, "persistentvolumeclaim \"data\" not found");

    // The claim appears: the pod is scheduled, the claim bound to a volume on its node.
    setup.apply(CLAIM);
    let claim = eventually("the claim is bound", Duration::from_secs(30), || {
        let claim = get(setup, &["pvc", "data"])?;
        (claim.pointer("/status/phase")? == "Bound").then_some(claim)
    })
    .await;
    let volume_name = claim["spec"]["volumeName"]
        .as_str()
        .expect("volumeName")
        .to_owned();
    assert_eq!(claim["status"]["capacity"]["storage"], "64Mi");
    let volume = get(setup, &["pv", &volume_name]).expect("the volume");
    assert_eq!(volume["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(
        volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0],
        setup.node.as_str()
    );
    let dir = setup.local_volume_dir().join(&volume_name);
    assert_eq!(volume["spec"]["local"]["path"], dir.display().to_string());

    // The pod writes; its data is on the node's disk, in the volume's directory.
    let first = get(setup, &["pod", "db"]).expect("pod");
    let first_uid = first["metadata"]["uid"].as_str().expect("uid").to_owned();
    let app = app_container(&runtime, &setup.node, &first_uid).await;
    sh(&runtime, &app, "echo 'row 1' > /var/lib/db/table").await;
    assert_eq!(
        std::fs::read_to_string(dir.join("table")).expect("the data on the node"),
        "row 1\n"
    );

    // Delete the pod and make it again: the data is still there.
    let deleted = setup.berthctl(&["delete", "pod", "db"]);
    assert!(deleted.status.success(), "{deleted:?}");
    eventually("the pod is gone", Duration::from_secs(60), || {
        get(setup, &["pod", "db"]).is_none().then_some(())
    })
    .await;
    assert!(dir.join("table").exists(), "the data outlives the pod");
    setup.apply(POD);
    let second = eventually("the pod is back", Duration::from_secs(20), || {
        let pod = get(setup, &["pod", "db"])?;
        (pod["metadata"]["uid"] != first_uid.as_str()).then_some(pod)
    })
    .await;
    let second_uid = second["metadata"]["uid"].as_str().expect("uid").to_owned();
    let app = app_container(&runtime, &setup.node, &second_uid).await;
    assert_eq!(sh(&runtime, &app, "cat /var/lib/db/table").await, "row 1\n");

    // While a pod uses it, deleting the claim keeps the volume; once the pod is gone the
    // volume is deleted, then its directory on the node.
    let deleted = setup.berthctl(&["delete", "pvc", "data"]);
    assert!(deleted.status.success(), "{deleted:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        get(setup, &["pv", &volume_name]).is_some(),
        "kept while in use"
    );
    let deleted = setup.berthctl(&["delete", "pod", "db"]);
    assert!(deleted.status.success(), "{deleted:?}");
    eventually("the volume is deleted", Duration::from_secs(60), || {
        get(setup, &["pv", &volume_name]).is_none().then_some(())
    })
    .await;
    let removed = Instant::now();
    eventually("the directory is removed", Duration::from_secs(30), || {
        (!dir.exists()).then_some(())
    })
    .await;
    println!(
        "the volume's directory went {:?} after the volume",
        removed.elapsed()
    );
}
