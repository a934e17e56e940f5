//! Runs a Job's pods to its completions, as Kubernetes' Job controller: at most
//! `parallelism` at once, a failed pod replaced after an exponential back-off, the Job
//! failed past `backoffLimit` or `activeDeadlineSeconds`, and deleted
//! `ttlSecondsAfterFinished` after it finished (its pods with it, by their owner).

use std::{collections::BTreeSet, time::Duration};

use berth_api::{
    batch::{COMPLETION_INDEX_ANNOTATION, COMPLETION_INDEX_ENV, Job, JobStatus},
    core::{Condition, EnvVar, Pod},
    meta::ObjectMeta,
    time::{parse_rfc3339, rfc3339},
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_uid, owner_reference,
    pod_is_ready, pod_is_terminating, self_or_owner,
};
use crate::util;

pub struct JobController;

/// Kubernetes' pod failure back-off: 10 s after the first failure, doubling with each
/// further one, at most 6 minutes.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

impl Reconciler for JobController {
    type Object = Job;

    fn name(&self) -> &'static str {
        "job"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        self_or_owner::<Job, Pod>(change)
    }

    fn reconcile(&self, job: &Job, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        if !job.metadata.deletion_timestamp.is_empty() {
            return Outcome::default();
        }
        let now = ctx.now;
        let uid = job.metadata.uid.as_str();
        let pods: Vec<&Pod> = snapshot
            .list::<Pod>(Some(&job.metadata.namespace))
            .filter(|p| controller_uid(&p.metadata) == Some(uid))
            .collect();
        let phase = |p: &Pod| {
            p.status
                .as_ref()
                .map_or("", |s| s.phase.as_str())
                .to_owned()
        };
        let active: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
            .filter(|p| !pod_is_terminating(p))
            .collect();
        let succeeded: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| phase(p) == "Succeeded")
            .collect();
        let failed: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| phase(p) == "Failed")
            .collect();
        let old = job.status.clone().unwrap_or_default();
        let mut status = JobStatus {
            conditions: old.conditions.clone(),
            start_time: old.start_time.clone(),
            completion_time: old.completion_time.clone(),
            active: count(active.len()),
            // Pods are only ever added: a count never goes down (a pod someone deleted
            // stays counted).
            succeeded: count(succeeded.len()).max(old.succeeded),
            failed: count(failed.len()).max(old.failed),
            ready: Some(count(active.iter().filter(|p| pod_is_ready(p)).count())),
            completed_indexes: String::new(),
        };
        let indexes_done: BTreeSet<i32> = succeeded.iter().filter_map(|p| index_of(p)).collect();
        if job.is_indexed() {
            status.completed_indexes = ranges(&indexes_done);
        }
        let mut writes = Vec::new();
        let mut requeue = None;

        if let Some(finished) = job.finished() {
            // Done: only what a failure left running goes, and the TTL runs out.
            for pod in &active {
                writes.push(Write::delete(*pod));
            }
            if let Some(ttl) = job.spec.ttl_seconds_after_finished {
                let since = status
                    .completion_time
                    .as_deref()
                    .or(Some(finished.last_transition_time.as_str()))
                    .and_then(parse_rfc3339)
                    .unwrap_or(now);
                let expires = since.saturating_add(u64::try_from(ttl).unwrap_or(0));
                if now >= expires {
                    return Outcome::writes(vec![Write::delete(job)]);
                }
                requeue = Some(Duration::from_secs(expires - now));
            }
            return finish(job, status, writes, requeue);
        }

        if job.spec.suspend {
            for pod in &active {
                writes.push(Write::delete(*pod));
            }
            set_condition(
                &mut status,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            );
            status.start_time = None;
            return finish(job, status, writes, None);
        }
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            set_condition(
                &mut status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            );
        }
        let start = match status.start_time.as_deref().and_then(parse_rfc3339) {
            Some(start) => start,
            None => {
                status.start_time = Some(rfc3339(now));
                now
            }
        };

        // Failure: past the deadline, or more failures than the back-off limit allows.
        let restarts: u32 = if job.spec.template.spec.restart_policy == "OnFailure" {
            active
                .iter()
                .filter_map(|p| p.status.as_ref())
                .flat_map(|s| &s.container_statuses)
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let failure = if let Some(deadline) = job.spec.active_deadline_seconds
            && now >= start.saturating_add(u64::try_from(deadline).unwrap_or(0))
        {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else if i64::from(status.failed) + i64::from(restarts) > i64::from(job.spec.backoff_limit)
        {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            for pod in &active {
                writes.push(Write::delete(*pod));
            }
            set_condition(&mut status, "Failed", "True", reason, message, now);
            writes.push(Write::event(job, "Warning", reason, message));
            return finish(job, status, writes, ttl_requeue(job));
        }
        if let Some(deadline) = job.spec.active_deadline_seconds {
            let at = start.saturating_add(u64::try_from(deadline).unwrap_or(0));
            requeue = Some(Duration::from_secs(at.saturating_sub(now).max(1)));
        }

        // Success.
        let completions = job.spec.completions;
        let complete = match completions {
            Some(n) if job.is_indexed() => (0..n).all(|i| indexes_done.contains(&i)),
            Some(n) => status.succeeded >= n,
            None => status.succeeded > 0 && active.is_empty(),
        };
        if complete {
            for pod in &active {
                writes.push(Write::delete(*pod));
            }
            status.completion_time = Some(rfc3339(now));
            set_condition(&mut status, "Complete", "True", "", "", now);
            writes.push(Write::event(job, "Normal", "Completed", "Job completed"));
            return finish(job, status, writes, ttl_requeue(job));
        }

        // Pods to start: up to parallelism, no more than the completions left, once the
        // back-off since the last failure has passed.
        let parallelism = usize::try_from(job.spec.parallelism.unwrap_or(1)).unwrap_or(0);
        let wanted = match completions {
            Some(n) if job.is_indexed() => {
                let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                let left = (0..n)
                    .filter(|i| !indexes_done.contains(i) && !running.contains(i))
                    .count();
                (active.len() + left).min(parallelism)
            }
            Some(n) => {
                let left = usize::try_from(n.saturating_sub(status.succeeded)).unwrap_or(0);
                left.min(parallelism)
            }
            // A work queue: once one pod succeeded, the rest only finish.
            None if status.succeeded > 0 => active.len().min(parallelism),
            None => parallelism,
        };
        if active.len() > wanted {
            // Fewer wanted (parallelism lowered): the newest go.
            let mut extra = active.clone();
            extra.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
            for pod in &extra[..active.len() - wanted] {
                writes.push(Write::delete(*pod));
            }
        } else if active.len() < wanted {
            let wait = backoff_left(&failed, now);
            if wait > 0 {
                requeue = Some(Duration::from_secs(wait));
            } else {
                let mut free: Vec<Option<i32>> = match completions {
                    Some(n) if job.is_indexed() => {
                        let running: BTreeSet<i32> =
                            active.iter().filter_map(|p| index_of(p)).collect();
                        (0..n)
                            .filter(|i| !indexes_done.contains(i) && !running.contains(i))
                            .map(Some)
                            .collect()
                    }
                    _ => vec![None; wanted],
                };
                free.truncate(wanted - active.len());
                for index in free {
                    let pod = new_pod(job, index);
                    writes.push(Write::event(
                        job,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pod.metadata.name),
                    ));
                    writes.push(Write::create(pod));
                }
            }
        }
        finish(job, status, writes, requeue)
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Looks again when the TTL of a Job that just finished runs out.
fn ttl_requeue(job: &Job) -> Option<Duration> {
    job.spec
        .ttl_seconds_after_finished
        .map(|ttl| Duration::from_secs(u64::try_from(ttl).unwrap_or(0)))
}

/// The writes, with the status if it changed.
fn finish(
    job: &Job,
    status: JobStatus,
    mut writes: Vec<Write>,
    requeue_after: Option<Duration>,
) -> Outcome {
    if job.status.as_ref() != Some(&status) {
        let mut updated = job.clone();
        updated.status = Some(status);
        writes.push(Write::update_status(updated));
    }
    Outcome {
        writes,
        requeue_after,
    }
}

/// Sets condition `type_`, keeping its transition time when its status stays.
fn set_condition(
    status: &mut JobStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: u64,
) {
    let condition = Condition {
        type_: type_.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: rfc3339(now),
        last_heartbeat_time: String::new(),
    };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) if existing.status == value => {}
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
}

/// Seconds until a new pod may start after the Job's failures: 10 s × 2^(failures − 1),
/// at most 6 minutes, from when the last failed pod ended.
fn backoff_left(failed: &[&Pod], now: u64) -> u64 {
    let Some(last) = failed.iter().map(|p| ended_at(p)).max() else {
        return 0;
    };
    let doublings = u32::try_from(failed.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let delay = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(doublings.min(16)))
        .min(BACKOFF_MAX)
        .as_secs();
    last.saturating_add(delay).saturating_sub(now)
}

/// When a pod ended: its last container's finish, else its creation.
fn ended_at(pod: &Pod) -> u64 {
    pod.status
        .iter()
        .flat_map(|s| &s.container_statuses)
        .filter_map(|c| c.state.terminated.as_ref())
        .filter_map(|t| parse_rfc3339(&t.finished_at))
        .max()
        .or_else(|| parse_rfc3339(&pod.metadata.creation_timestamp))
        .unwrap_or(0)
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .get(COMPLETION_INDEX_ANNOTATION)?
        .parse()
        .ok()
}

/// `0-2,4,6-7`, as Kubernetes writes `completedIndexes`.
fn ranges(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((first, last)) if i == last + 1 => Some((first, i)),
            Some(done) => {
                parts.push(range(done));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    parts.extend(run.map(range));
    parts.join(",")
}

fn range((first, last): (i32, i32)) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// `<job>-<5 hex digits>`, or `<job>-<index>-<5 hex digits>` for an Indexed Job, whose
/// pods also carry their index (annotation, label, `JOB_COMPLETION_INDEX`) and have the
/// host name `<job>-<index>`.
fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let template = &job.spec.template;
    let suffix = &util::hex(&util::random_bytes::<3>())[..5];
    let mut metadata = ObjectMeta {
        name: match index {
            Some(i) => format!("{}-{i}-{suffix}", job.metadata.name),
            None => format!("{}-{suffix}", job.metadata.name),
        },
        namespace: job.metadata.namespace.clone(),
        labels: template.metadata.labels.clone(),
        annotations: template.metadata.annotations.clone(),
        owner_references: vec![owner_reference(job)],
        ..ObjectMeta::default()
    };
    let mut spec = template.spec.clone();
    if let Some(index) = index {
        let index = index.to_string();
        metadata
            .annotations
            .insert(COMPLETION_INDEX_ANNOTATION.to_owned(), index.clone());
        metadata
            .labels
            .insert(COMPLETION_INDEX_ANNOTATION.to_owned(), index.clone());
        for container in &mut spec.containers {
            container.env.retain(|e| e.name != COMPLETION_INDEX_ENV);
            container.env.push(EnvVar {
                name: COMPLETION_INDEX_ENV.to_owned(),
                value: index.clone(),
                value_from: None,
            });
        }
        if spec.hostname.is_empty() {
            spec.hostname = format!("{}-{index}", job.metadata.name);
        }
    }
    Pod {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        metadata,
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    const T0: u64 = 1_780_000_000;

    fn job(spec: Value) -> Job {
        let mut spec = spec;
        spec["template"] = json!({"metadata": {"labels": {"app": "pi"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}});
        let mut job: Job = typed(json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"},
            "spec": spec}));
        job.set_defaults();
        job
    }

    fn pod(name: &str, phase: &str, index: Option<i32>, ended: u64) -> Pod {
        let mut annotations = json!({});
        if let Some(i) = index {
            annotations[COMPLETION_INDEX_ANNOTATION] = json!(i.to_string());
        }
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                "creationTimestamp": rfc3339(T0),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi", "uid": "job-uid", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase, "containerStatuses": [{"name": "c",
                "state": if phase == "Running" { json!({"running": {}}) } else { json!({"terminated": {"exitCode": 0, "finishedAt": rfc3339(ended)}}) }}]}}))
    }

    fn run(job: &Job, pods: Vec<Pod>, now: u64) -> Outcome {
        let mut objects = vec![job.clone().into_object()];
        objects.extend(pods.into_iter().map(Pod::into_object));
        let snapshot = Snapshot::from_objects(objects, 1);
        let job = snapshot.get::<Job>("default", "pi").expect("job").clone();
        JobController.reconcile(
            &job,
            &snapshot,
            &Context {
                now,
                settings: Settings::default(),
            },
        )
    }

    fn created(outcome: &Outcome) -> Vec<Pod> {
        outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Create(Object::Pod(p)) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn status(outcome: &Outcome) -> JobStatus {
        outcome
            .writes
            .iter()
            .find_map(|w| match w {
                Write::UpdateStatus(Object::Job(j)) => j.status.clone(),
                _ => None,
            })
            .expect("a status write")
    }

    #[test]
    fn starts_parallelism_pods_labelled_and_owned_by_the_job() {
        let outcome = run(
            &job(json!({"completions": 5, "parallelism": 2})),
            vec![],
            T0,
        );
        let pods = created(&outcome);
        assert_eq!(pods.len(), 2);
        let labels = &pods[0].metadata.labels;
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "job-uid");
        assert_eq!(pods[0].metadata.owner_references[0].uid, "job-uid");
        assert_eq!(status(&outcome).start_time, Some(rfc3339(T0)));
    }

    #[test]
    fn a_failure_waits_out_the_backoff_before_its_replacement() {
        let job = job(json!({"completions": 5, "parallelism": 2}));
        let pods = || {
            vec![
                pod("a", "Failed", None, T0 + 5),
                pod("b", "Running", None, 0),
            ]
        };
        let outcome = run(&job, pods(), T0 + 8);
        assert!(created(&outcome).is_empty(), "{outcome:?}");
        assert_eq!(outcome.requeue_after, Some(Duration::from_secs(7)));
        let s = status(&outcome);
        assert_eq!((s.active, s.failed, s.succeeded), (1, 1, 0));
        assert_eq!(created(&run(&job, pods(), T0 + 15)).len(), 1);
        // Two failures: 20 s.
        let mut two = pods();
        two.push(pod("c", "Failed", None, T0 + 10));
        assert_eq!(
            run(&job, two, T0 + 20).requeue_after,
            Some(Duration::from_secs(10))
        );
        assert_eq!(backoff_left(&[&pod("x", "Failed", None, T0); 12], T0), 360);
    }

    #[test]
    fn completes_at_its_completions_and_deletes_after_its_ttl() {
        let job = job(json!({"completions": 2, "parallelism": 2, "ttlSecondsAfterFinished": 30}));
        let done = || {
            vec![
                pod("a", "Succeeded", None, T0),
                pod("b", "Succeeded", None, T0),
            ]
        };
        let outcome = run(&job, done(), T0 + 10);
        let s = status(&outcome);
        assert_eq!(s.succeeded, 2);
        assert_eq!(s.completion_time, Some(rfc3339(T0 + 10)));
        assert!(
            s.conditions
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        );
        let mut finished = job.clone();
        finished.status = Some(s);
        let outcome = run(&finished, done(), T0 + 20);
        assert_eq!(outcome.requeue_after, Some(Duration::from_secs(20)));
        assert!(outcome.writes.is_empty(), "{outcome:?}");
        let outcome = run(&finished, done(), T0 + 40);
        assert!(
            matches!(outcome.writes.as_slice(), [Write::Delete { name, .. }] if name == "pi"),
            "{outcome:?}"
        );
    }

    #[test]
    fn fails_past_the_backoff_limit_and_the_deadline() {
        let limited = job(json!({"completions": 3, "backoffLimit": 1}));
        let outcome = run(
            &limited,
            vec![
                pod("a", "Failed", None, T0),
                pod("b", "Failed", None, T0),
                pod("c", "Running", None, 0),
            ],
            T0 + 100,
        );
        let s = status(&outcome);
        let failed = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Failed")
            .expect("Failed");
        assert_eq!(failed.reason, "BackoffLimitExceeded");
        assert!(
            outcome
                .writes
                .iter()
                .any(|w| matches!(w, Write::Delete { name, .. } if name == "c")),
            "the running pod is stopped"
        );

        let mut deadline = job(json!({"activeDeadlineSeconds": 30}));
        deadline.status = Some(JobStatus {
            start_time: Some(rfc3339(T0)),
            ..JobStatus::default()
        });
        let outcome = run(&deadline, vec![pod("a", "Running", None, 0)], T0 + 10);
        assert_eq!(outcome.requeue_after, Some(Duration::from_secs(20)));
        let outcome = run(&deadline, vec![pod("a", "Running", None, 0)], T0 + 30);
        let s = status(&outcome);
        assert_eq!(
            s.conditions
                .iter()
                .find(|c| c.type_ == "Failed")
                .map(|c| c.reason.as_str()),
            Some("DeadlineExceeded")
        );
    }

    #[test]
    fn indexed_jobs_run_each_index_once_with_its_hostname() {
        let job = job(json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}));
        let pods = created(&run(
            &job,
            vec![pod("pi-0-x", "Succeeded", Some(0), T0)],
            T0,
        ));
        let indexes: Vec<(&str, &str)> = pods
            .iter()
            .map(|p| {
                (
                    p.metadata.annotations[COMPLETION_INDEX_ANNOTATION].as_str(),
                    p.spec.hostname.as_str(),
                )
            })
            .collect();
        assert_eq!(indexes, [("1", "pi-1"), ("2", "pi-2")]);
        let env = &pods[0].spec.containers[0].env;
        assert!(
            env.iter()
                .any(|e| e.name == COMPLETION_INDEX_ENV && e.value == "1")
        );
        let outcome = run(
            &job,
            vec![
                pod("a", "Succeeded", Some(0), T0),
                pod("b", "Succeeded", Some(1), T0),
                pod("c", "Succeeded", Some(3), T0),
                pod("d", "Running", Some(2), 0),
            ],
            T0,
        );
        assert!(created(&outcome).is_empty());
        assert_eq!(status(&outcome).completed_indexes, "0-1,3");
    }

    #[test]
    fn suspended_jobs_stop_their_pods() {
        let job = job(json!({"suspend": true}));
        let outcome = run(&job, vec![pod("a", "Running", None, 0)], T0);
        assert!(created(&outcome).is_empty());
        let s = status(&outcome);
        assert!(
            s.conditions
                .iter()
                .any(|c| c.type_ == "Suspended" && c.status == "True")
        );
        assert!(
            outcome
                .writes
                .iter()
                .any(|w| matches!(w, Write::Delete { name, .. } if name == "a"))
        );
    }
}
