//! Jobs and CronJobs on hollow nodes, whose Job pods end as their command says (see
//! berth-sim's `script`): completions with parallelism and back-off, Indexed Jobs, the
//! back-off limit, the active deadline, the TTL after finishing, CronJobs on a real
//! clock with their concurrency policies, and Kubernetes' own example manifests. One
//! cluster for all of it.

mod common;

use std::time::{Duration, Instant};

use axum::http::Method;
use common::{HollowCluster, berthctl};
use serde_json::Value;

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
const CRON_JOBS: &str = "/apis/batch/v1/namespaces/default/cronjobs";

/// The `pi` Job of the Kubernetes documentation, as written there.
const PI: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  template:
    spec:
      containers:
      - name: pi
        image: perl:5.34.0
        command: ["perl",  "-Mbignum=bpi", "-wle", "print bpi(2000)"]
      restartPolicy: Never
  backoffLimit: 4
"#;

/// The `hello` CronJob of the Kubernetes documentation, as written there.
const HELLO: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: hello
            image: busybox:1.28
            imagePullPolicy: IfNotPresent
            command:
            - /bin/sh
            - -c
            - date; echo Hello from the Kubernetes cluster
          restartPolicy: OnFailure
"#;

fn job(name: &str, spec: &str, script: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: work, image: busybox, command: [sh, -c, '{script}']}}]\n"
    )
}

fn cron_job(name: &str, policy: &str, script: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: '* * * * *'\n  concurrencyPolicy: {policy}\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: work, image: busybox, command: [sh, -c, '{script}']}}]\n"
    )
}

async fn get(c: &HollowCluster, path: &str) -> Option<Value> {
    let (status, body) = c.t.call(Method::GET, path, None).await;
    (status == 200).then_some(body)
}

/// The pods of Job `name` (by the label the server gives them).
async fn pods_of(c: &HollowCluster, name: &str) -> Vec<Value> {
    let path = format!("/api/v1/namespaces/default/pods?labelSelector=job-name%3D{name}");
    get(c, &path)
        .await
        .and_then(|list| list["items"].as_array().cloned())
        .unwrap_or_default()
}

async fn jobs_of(c: &HollowCluster, cron_job: &str) -> Vec<Value> {
    let mut jobs: Vec<Value> = get(c, JOBS)
        .await
        .and_then(|list| list["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == cron_job)
        .collect();
    jobs.sort_by_key(|j| {
        j["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    jobs
}

/// Polls every 100 ms until `check` yields a value, at most `limit` (a bound for
/// asynchronous controllers and back-off, not a timing assertion).
async fn wait<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Job once its `type` condition (`Complete` or `Failed`) is true.
async fn finished(c: &HollowCluster, name: &str, type_: &str, limit: Duration) -> Value {
    wait(&format!("job {name} {type_}"), limit, || async {
        let job = get(c, &format!("{JOBS}/{name}")).await?;
        let conditions = job["status"]["conditions"].as_array()?;
        conditions
            .iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
            .then_some(job)
    })
    .await
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn jobs_and_cron_jobs_run_to_their_specs() {
    let c = HollowCluster::start(&[]).await;
    let node = c.node("n0").await;
    let admin = c.t.server.admin_config.clone();

    // Completions 5, parallelism 2, and the first pod to end crashes: it is replaced
    // after the 10 s back-off, never more than 2 pods run, and the counts add up.
    node.crash_next(1);
    let started = Instant::now();
    let (status, body) =
        c.t.apply(&job(
            "work",
            "  completions: 5\n  parallelism: 2\n",
            "sleep 1",
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut most_active = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let running = pods_of(&c, "work")
            .await
            .iter()
            .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
            .count();
        most_active = most_active.max(running);
        let job = get(&c, &format!("{JOBS}/work")).await.expect("job work");
        let complete = job["status"]["conditions"]
            .as_array()
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c["type"] == "Complete" && c["status"] == "True")
            });
        if complete {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "job work did not complete: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(most_active <= 2, "{most_active} pods ran at once");
    assert_eq!(done["status"]["succeeded"], 5, "{done}");
    assert_eq!(done["status"]["failed"], 1, "{done}");
    assert!(done["status"]["completionTime"].is_string(), "{done}");
    // A lower bound only: the replacement waited out the back-off.
    assert!(started.elapsed() >= Duration::from_secs(10));
    let pods = pods_of(&c, "work").await;
    assert_eq!(pods.len(), 6);
    assert!(pods.iter().all(|p| {
        p["metadata"]["ownerReferences"][0]["kind"] == "Job"
            && p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "work"
            && p["metadata"]["labels"]["controller-uid"] == done["metadata"]["uid"]
    }));
    let (ok, out, err) = berthctl(&admin, &["get", "jobs", "work"]).await;
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    );
    assert_eq!(lines[1][..3], ["work", "Complete", "5/5"]);

    // CronJobs on the real clock run beside the rest (they wait for minutes to turn).
    let cron = async {
        for manifest in [
            HELLO.to_owned(),
            cron_job("forbid", "Forbid", "sleep 600"),
            cron_job("replace", "Replace", "sleep 600"),
        ] {
            let (status, body) = c.t.apply(&manifest).await;
            assert_eq!(status, 200, "{body}");
        }
        // Each runs within its first minute, a Job named by the scheduled minute.
        let first = wait("the first runs", Duration::from_secs(75), || async {
            let all = [
                jobs_of(&c, "hello").await,
                jobs_of(&c, "forbid").await,
                jobs_of(&c, "replace").await,
            ];
            all.iter().all(|jobs| !jobs.is_empty()).then_some(all)
        })
        .await;
        let name = |job: &Value| {
            job["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let hello = name(&first[0][0]);
        let minutes: u64 = hello
            .strip_prefix("hello-")
            .and_then(|m| m.parse().ok())
            .expect("hello-<minutes>");
        assert_eq!(name(&first[1][0]), format!("forbid-{minutes}"));
        finished(&c, &hello, "Complete", Duration::from_secs(30)).await;
        let hello_status = wait("hello's status", Duration::from_secs(30), || async {
            let cj = get(&c, &format!("{CRON_JOBS}/hello")).await?;
            cj["status"]["lastSuccessfulTime"].is_string().then_some(cj)
        })
        .await;
        assert_eq!(
            hello_status["status"]["lastScheduleTime"],
            berth_api::time::rfc3339(minutes * 60)
        );
        // The next minute: Replace replaced its Job, Forbid started none.
        let replaced = format!("replace-{}", minutes + 1);
        wait("the second minute", Duration::from_secs(75), || async {
            let jobs = jobs_of(&c, "replace").await;
            (jobs.len() == 1 && name(&jobs[0]) == replaced).then_some(())
        })
        .await;
        // A few seconds more for Forbid, looked at in the same minute.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let forbid = jobs_of(&c, "forbid").await;
        assert_eq!(forbid.len(), 1, "{forbid:?}");
        assert_eq!(name(&forbid[0]), format!("forbid-{minutes}"));
        let cj = get(&c, &format!("{CRON_JOBS}/forbid"))
            .await
            .expect("forbid");
        assert_eq!(cj["status"]["active"].as_array().map(Vec::len), Some(1));

        let (ok, out, err) = berthctl(&admin, &["get", "cronjobs", "hello"]).await;
        assert!(ok, "{err}");
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
            ]
        );
        assert_eq!(lines[1][..7], ["hello", "*", "*", "*", "*", "*", "<none>"]);

        // A Job from the CronJob's template, now.
        let (ok, out, err) = berthctl(
            &admin,
            &["create", "job", "hello-now", "--from=cronjob/hello"],
        )
        .await;
        assert!(
            ok && out.trim() == "job.batch/hello-now created",
            "{out}{err}"
        );
        let now = finished(&c, "hello-now", "Complete", Duration::from_secs(30)).await;
        assert_eq!(
            now["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        let (ok, _, err) = berthctl(&admin, &["create", "job", "x", "--from=deployment/web"]).await;
        assert!(!ok && err.contains("only `cronjob/NAME`"), "{err}");
    };

    let jobs = async {
        // Kubernetes' own example: the perl image is never pulled on a hollow node,
        // whose perl ends at once.
        let (status, body) = c.t.apply(PI).await;
        assert_eq!(status, 200, "{body}");
        let pi = finished(&c, "pi", "Complete", Duration::from_secs(30)).await;
        assert_eq!(pi["spec"]["backoffLimit"], 4);
        assert_eq!(pi["status"]["succeeded"], 1);

        // Indexed: each index once, with its annotation, variable and host name.
        let (status, body) =
            c.t.apply(&job(
                "indexed",
                "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
                "sleep 1",
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let indexed = finished(&c, "indexed", "Complete", Duration::from_secs(30)).await;
        assert_eq!(indexed["status"]["completedIndexes"], "0-2", "{indexed}");
        let mut seen: Vec<(String, String, String)> = pods_of(&c, "indexed")
            .await
            .iter()
            .map(|p| {
                let index =
                    p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                let env = p["spec"]["containers"][0]["env"]
                    .as_array()
                    .and_then(|env| env.iter().find(|e| e["name"] == "JOB_COMPLETION_INDEX"))
                    .map(|e| e["value"].as_str().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                let host = p["spec"]["hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (index, env, host)
            })
            .collect();
        seen.sort();
        let want: Vec<(String, String, String)> = (0..3)
            .map(|i| (i.to_string(), i.to_string(), format!("indexed-{i}")))
            .collect();
        assert_eq!(seen, want);
        // Deleting a Job takes its pods.
        let (status, body) =
            c.t.call(Method::DELETE, &format!("{JOBS}/indexed"), None)
                .await;
        assert_eq!(status, 200, "{body}");
        wait(
            "the indexed pods to go",
            Duration::from_secs(30),
            || async { pods_of(&c, "indexed").await.is_empty().then_some(()) },
        )
        .await;

        // Every attempt fails: after backoffLimit + 1 failures (10 s apart) the Job fails.
        let (status, body) =
            c.t.apply(&job("failing", "  backoffLimit: 1\n", "exit 3"))
                .await;
        assert_eq!(status, 200, "{body}");
        let failing = finished(&c, "failing", "Failed", Duration::from_secs(60)).await;
        let reason = |job: &Value| {
            job["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Failed"))
                .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(reason(&failing), "BackoffLimitExceeded");
        assert_eq!(failing["status"]["failed"], 2);

        // Past its active deadline a Job fails and its pods are stopped.
        let (status, body) =
            c.t.apply(&job("slow", "  activeDeadlineSeconds: 2\n", "sleep 600"))
                .await;
        assert_eq!(status, 200, "{body}");
        let slow = finished(&c, "slow", "Failed", Duration::from_secs(30)).await;
        assert_eq!(reason(&slow), "DeadlineExceeded");
        wait("the slow pod to go", Duration::from_secs(30), || async {
            pods_of(&c, "slow").await.is_empty().then_some(())
        })
        .await;

        // A finished Job with a TTL goes, with its pods, once the TTL ran out.
        let (status, body) =
            c.t.apply(&job("brief", "  ttlSecondsAfterFinished: 2\n", "true"))
                .await;
        assert_eq!(status, 200, "{body}");
        finished(&c, "brief", "Complete", Duration::from_secs(30)).await;
        wait("the brief job to go", Duration::from_secs(30), || async {
            let gone = get(&c, &format!("{JOBS}/brief")).await.is_none();
            (gone && pods_of(&c, "brief").await.is_empty()).then_some(())
        })
        .await;

        // Refused as Kubernetes refuses them, by field.
        let (status, body) =
            c.t.apply(
                &job("always", "", "true").replace("restartPolicy: Never", "restartPolicy: Always"),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body.to_string()
                .contains("spec.template.spec.restartPolicy"),
            "{body}"
        );
        let (status, body) =
            c.t.apply(
                &HELLO
                    .replace("* * * * *", "* * * *")
                    .replace("hello", "bad"),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains("spec.schedule"), "{body}");
    };
    tokio::join!(cron, jobs);
    drop(node);
}
