//! Starts a CronJob's Jobs on its schedule, as Kubernetes' CronJob controller (v2): the
//! most recent run time missed since the last one (within `startingDeadlineSeconds`),
//! `concurrencyPolicy` against the Jobs still running, and the finished Jobs kept to the
//! history limits. Jobs are named `<cronjob>-<scheduled time in minutes since the
//! epoch>`, so a run is started once however often the CronJob is looked at. Time comes
//! from the reconcile's context: tests set the clock.

use std::time::Duration;

use berth_api::{
    batch::{CronJob, CronJobStatus, Job, SCHEDULED_TIMESTAMP_ANNOTATION, Schedule},
    meta::ObjectMeta,
    time::{parse_rfc3339, rfc3339},
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write, controller_uid, owner_reference,
    reference, self_or_owner,
};

pub struct CronJobController;

/// More missed run times than this since the last one is reported (Kubernetes' event),
/// and only the most recent is started.
const MAX_MISSED: usize = 100;

impl Reconciler for CronJobController {
    type Object = CronJob;

    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        self_or_owner::<CronJob, Job>(change)
    }

    fn reconcile(&self, cron_job: &CronJob, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        if !cron_job.metadata.deletion_timestamp.is_empty() {
            return Outcome::default();
        }
        let now = ctx.now;
        let uid = cron_job.metadata.uid.as_str();
        let mut jobs: Vec<&Job> = snapshot
            .list::<Job>(Some(&cron_job.metadata.namespace))
            .filter(|j| controller_uid(&j.metadata) == Some(uid))
            .collect();
        jobs.sort_by_key(|j| scheduled_at(j));
        let old = cron_job.status.clone().unwrap_or_default();
        let mut status = CronJobStatus {
            active: Vec::new(),
            last_schedule_time: old.last_schedule_time.clone(),
            last_successful_time: old.last_successful_time.clone(),
        };
        let mut writes = Vec::new();
        let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
        for job in &jobs {
            match job.finished().map(|c| c.type_.as_str()) {
                Some("Complete") => {
                    let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                    if done.as_deref().and_then(parse_rfc3339)
                        > status
                            .last_successful_time
                            .as_deref()
                            .and_then(parse_rfc3339)
                    {
                        status.last_successful_time = done;
                    }
                    succeeded.push(*job);
                }
                Some(_) => failed.push(*job),
                None if job.metadata.deletion_timestamp.is_empty() => {
                    status.active.push(reference(*job));
                }
                None => {}
            }
        }
        // History: the oldest finished Jobs past the limits go.
        for (finished, limit) in [
            (&succeeded, cron_job.spec.successful_jobs_history_limit),
            (&failed, cron_job.spec.failed_jobs_history_limit),
        ] {
            let keep = usize::try_from(limit).unwrap_or(0);
            for job in &finished[..finished.len().saturating_sub(keep)] {
                writes.push(Write::delete(*job));
            }
        }

        let schedule =
            match Schedule::parse(&cron_job.spec.schedule, cron_job.spec.time_zone.as_deref()) {
                Ok(schedule) => schedule,
                Err(error) => {
                    writes.push(Write::event(
                        cron_job,
                        "Warning",
                        "UnparseableSchedule",
                        &error.to_string(),
                    ));
                    return finish(cron_job, status, writes, None);
                }
            };
        let next = |after: u64| {
            schedule
                .next_after(after)
                .map(|at| Duration::from_secs(at.saturating_sub(now).max(1)))
        };
        if cron_job.spec.suspend {
            return finish(cron_job, status, writes, None);
        }

        // The run times since the last one (or the creation), within the deadline.
        let mut earliest = status
            .last_schedule_time
            .as_deref()
            .or(Some(cron_job.metadata.creation_timestamp.as_str()))
            .and_then(parse_rfc3339)
            .unwrap_or(now);
        if let Some(deadline) = cron_job.spec.starting_deadline_seconds {
            earliest = earliest.max(now.saturating_sub(u64::try_from(deadline).unwrap_or(0)));
        }
        let (missed, too_many) = schedule.fired_between(earliest, now, MAX_MISSED);
        if too_many {
            writes.push(Write::event(
                cron_job,
                "Warning",
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            ));
        }
        let scheduled = if too_many {
            schedule.last_at_or_before(now)
        } else {
            missed.last().copied()
        };
        let Some(scheduled) = scheduled else {
            return finish(cron_job, status, writes, next(now));
        };
        let name = format!("{}-{}", cron_job.metadata.name, scheduled / 60);
        if jobs.iter().any(|j| j.metadata.name == name) {
            // Started already; the status may not say so yet.
            status.last_schedule_time = Some(rfc3339(scheduled));
            return finish(cron_job, status, writes, next(now));
        }
        match cron_job.spec.concurrency_policy.as_str() {
            "Forbid" if !status.active.is_empty() => {
                // Skipped for now; started later if it still can be (its deadline).
                return finish(cron_job, status, writes, next(now));
            }
            "Replace" => {
                for active in &status.active {
                    if let Some(job) = jobs.iter().find(|j| j.metadata.uid == active.uid) {
                        writes.push(Write::delete(*job));
                        writes.push(Write::event(
                            cron_job,
                            "Normal",
                            "SuccessfulDelete",
                            &format!("Deleted job {}", job.metadata.name),
                        ));
                    }
                }
                status.active.clear();
            }
            _ => {}
        }
        let job = new_job(cron_job, name, scheduled);
        writes.push(Write::event(
            cron_job,
            "Normal",
            "SuccessfulCreate",
            &format!("Created job {}", job.metadata.name),
        ));
        // The Job's uid is the server's: the reference fills it when the Job shows up.
        status.active.push(reference(&job));
        status.last_schedule_time = Some(rfc3339(scheduled));
        writes.push(Write::create(job));
        finish(cron_job, status, writes, next(now))
    }
}

/// When a Job of a CronJob was scheduled, from its annotation, else its creation.
fn scheduled_at(job: &Job) -> u64 {
    job.metadata
        .annotations
        .get(SCHEDULED_TIMESTAMP_ANNOTATION)
        .and_then(|at| parse_rfc3339(at))
        .or_else(|| parse_rfc3339(&job.metadata.creation_timestamp))
        .unwrap_or(0)
}

fn new_job(cron_job: &CronJob, name: String, scheduled: u64) -> Job {
    let template = &cron_job.spec.job_template;
    let mut annotations = template.metadata.annotations.clone();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.to_owned(),
        rfc3339(scheduled),
    );
    Job {
        api_version: "batch/v1".to_owned(),
        kind: "Job".to_owned(),
        metadata: ObjectMeta {
            name,
            namespace: cron_job.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            annotations,
            owner_references: vec![owner_reference(cron_job)],
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn finish(
    cron_job: &CronJob,
    status: CronJobStatus,
    mut writes: Vec<Write>,
    requeue_after: Option<Duration>,
) -> Outcome {
    if cron_job.status.as_ref() != Some(&status) {
        let mut updated = cron_job.clone();
        updated.status = Some(status);
        writes.push(Write::update_status(updated));
    }
    Outcome {
        writes,
        requeue_after,
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

    /// A whole minute (2026-05-28T20:40:00Z).
    const T0: u64 = 1_780_000_800;

    fn cron_job(spec: Value) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] = json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
            "containers": [{"name": "hello", "image": "busybox"}]}}}});
        typed(json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "hello", "namespace": "default", "uid": "cj-uid",
                "creationTimestamp": rfc3339(T0 - 30)},
            "spec": spec}))
    }

    fn job(name: &str, scheduled: u64, finished: Option<&str>) -> Job {
        let status = match finished {
            Some(type_) => json!({"completionTime": rfc3339(scheduled + 5),
                "conditions": [{"type": type_, "status": "True"}]}),
            None => json!({"active": 1}),
        };
        typed(json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "annotations": {SCHEDULED_TIMESTAMP_ANNOTATION: rfc3339(scheduled)},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "hello", "uid": "cj-uid", "controller": true}]},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}},
            "status": status}))
    }

    fn run(cron_job: &CronJob, jobs: Vec<Job>, now: u64) -> Outcome {
        let mut objects = vec![cron_job.clone().into_object()];
        objects.extend(jobs.into_iter().map(Job::into_object));
        let snapshot = Snapshot::from_objects(objects, 1);
        let cron_job = snapshot
            .get::<CronJob>("default", "hello")
            .expect("cronjob")
            .clone();
        CronJobController.reconcile(
            &cron_job,
            &snapshot,
            &Context {
                now,
                settings: Settings::default(),
            },
        )
    }

    fn created(outcome: &Outcome) -> Vec<String> {
        outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Create(Object::Job(j)) => Some(j.metadata.name.clone()),
                _ => None,
            })
            .collect()
    }

    fn deleted(outcome: &Outcome) -> Vec<String> {
        outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn starts_one_job_per_run_named_by_its_minute() {
        let every_minute = cron_job(json!({"schedule": "* * * * *"}));
        let outcome = run(&every_minute, vec![], T0 - 10);
        assert!(created(&outcome).is_empty());
        assert_eq!(outcome.requeue_after, Some(Duration::from_secs(10)));
        let outcome = run(&every_minute, vec![], T0 + 3);
        assert_eq!(created(&outcome), [format!("hello-{}", T0 / 60)]);
        let Some(Write::UpdateStatus(Object::CronJob(updated))) = outcome.writes.last() else {
            panic!("{outcome:?}")
        };
        let status = updated.status.clone().expect("status");
        assert_eq!(status.last_schedule_time, Some(rfc3339(T0)));
        assert_eq!(outcome.requeue_after, Some(Duration::from_secs(57)));
        // Looked at again in the same minute: nothing new.
        let again = run(
            updated,
            vec![job(&format!("hello-{}", T0 / 60), T0, None)],
            T0 + 10,
        );
        assert!(created(&again).is_empty(), "{again:?}");
    }

    #[test]
    fn forbid_skips_a_run_while_one_is_active_and_replace_replaces_it() {
        let running = || vec![job("hello-1", T0 - 60, None)];
        let mut forbid = cron_job(json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"}));
        forbid.status = Some(CronJobStatus {
            last_schedule_time: Some(rfc3339(T0 - 60)),
            ..CronJobStatus::default()
        });
        let outcome = run(&forbid, running(), T0 + 1);
        assert!(created(&outcome).is_empty(), "{outcome:?}");
        assert!(deleted(&outcome).is_empty());

        let mut replace = forbid.clone();
        replace.spec.concurrency_policy = "Replace".to_owned();
        let outcome = run(&replace, running(), T0 + 1);
        assert_eq!(created(&outcome), [format!("hello-{}", T0 / 60)]);
        assert_eq!(deleted(&outcome), ["hello-1"]);

        let mut allow = forbid;
        allow.spec.concurrency_policy = "Allow".to_owned();
        let outcome = run(&allow, running(), T0 + 1);
        assert_eq!(created(&outcome).len(), 1);
        assert!(deleted(&outcome).is_empty());
    }

    #[test]
    fn missed_runs_past_the_starting_deadline_are_skipped() {
        let mut late = cron_job(json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 60}));
        late.metadata.creation_timestamp = rfc3339(T0 - 7200);
        // The run at the top of the hour was 40 minutes ago: too late.
        let top = T0 - 40 * 60;
        assert_eq!(top % 3600, 0, "the fixture's hour");
        let outcome = run(&late, vec![], T0);
        assert!(created(&outcome).is_empty(), "{outcome:?}");
        // Without a deadline it starts (the most recent missed run only).
        late.spec.starting_deadline_seconds = None;
        assert_eq!(
            created(&run(&late, vec![], T0)),
            [format!("hello-{}", top / 60)]
        );
    }

    #[test]
    fn more_than_a_hundred_missed_runs_are_reported() {
        let mut old = cron_job(json!({"schedule": "* * * * *"}));
        old.metadata.creation_timestamp = rfc3339(T0 - 500 * 60);
        let outcome = run(&old, vec![], T0 + 1);
        assert!(outcome.writes.iter().any(|w| matches!(w,
            Write::Event { reason, .. } if reason == "TooManyMissedTimes")));
        assert_eq!(created(&outcome), [format!("hello-{}", T0 / 60)]);
    }

    #[test]
    fn keeps_the_history_limits_and_the_last_success() {
        let cj = cron_job(json!({"schedule": "0 0 1 1 *", "suspend": true}));
        let jobs = vec![
            job("s1", T0 - 500, Some("Complete")),
            job("s2", T0 - 400, Some("Complete")),
            job("s3", T0 - 300, Some("Complete")),
            job("s4", T0 - 200, Some("Complete")),
            job("f1", T0 - 450, Some("Failed")),
            job("f2", T0 - 150, Some("Failed")),
            job("r", T0 - 100, None),
        ];
        let outcome = run(&cj, jobs, T0);
        let mut gone = deleted(&outcome);
        gone.sort();
        assert_eq!(gone, ["f1", "s1"]);
        assert!(created(&outcome).is_empty(), "suspended");
        let Some(Write::UpdateStatus(Object::CronJob(updated))) = outcome.writes.last() else {
            panic!("{outcome:?}")
        };
        let status = updated.status.clone().expect("status");
        assert_eq!(status.last_successful_time, Some(rfc3339(T0 - 195)));
        assert_eq!(
            status
                .active
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["r"]
        );
    }

    #[test]
    fn schedules_in_a_time_zone() {
        // 20:40 UTC is 22:40 in Berlin (summer time): a run at 22:40 Berlin is now.
        let cj = cron_job(json!({"schedule": "40 22 * * *", "timeZone": "Europe/Berlin"}));
        assert_eq!(created(&run(&cj, vec![], T0 + 5)).len(), 1);
        let utc = cron_job(json!({"schedule": "40 22 * * *"}));
        assert!(created(&run(&utc, vec![], T0 + 5)).is_empty());
    }
}
