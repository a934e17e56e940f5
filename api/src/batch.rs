//! `apiVersion: batch/v1`: Job and CronJob, in Kubernetes' shape, and the cron schedules
//! CronJobs run on.

use std::{collections::BTreeMap, str::FromStr};

use chrono::{DateTime, TimeZone as _, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    apps::PodTemplateSpec,
    core::{Condition, ObjectReference},
    meta::{LabelSelector, ObjectMeta},
    validation::{FieldPath, Validator},
};

/// Labels the server puts on a Job's pod template (and so its pods) and selects them by,
/// unless the Job asks for `manualSelector`: Kubernetes' current names and the legacy
/// ones, which tooling still reads.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
/// The completion index of an Indexed Job's pod (annotation and label).
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable holding the completion index in an Indexed Job's containers.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// When a CronJob's Job was scheduled to run (RFC 3339), on the Job.
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Kubernetes' default `backoffLimit`.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 6;
/// Longest CronJob name: its Jobs add `-<minutes>` (11 characters) and stay DNS labels
/// of 63.
pub const MAX_CRONJOB_NAME: usize = 52;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: JobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Pods running at once at most (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Successful pods needed; unset with parallelism set: a work queue, done when one pod
    /// succeeded and none runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<i32>,
    /// Seconds from the start after which the Job fails and its pods are stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// Failed pods (or container restarts, under `OnFailure`) before the Job fails.
    #[serde(default = "default_backoff_limit")]
    pub backoff_limit: i32,
    /// Set by the server unless `manualSelector` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_selector: Option<bool>,
    #[serde(default)]
    pub template: PodTemplateSpec,
    /// Seconds after the Job finished when it is deleted, with its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// `NonIndexed` (default) or `Indexed`.
    #[serde(default = "non_indexed")]
    pub completion_mode: String,
    /// A suspended Job runs no pods (those running are stopped).
    #[serde(default)]
    pub suspend: bool,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            parallelism: None,
            completions: None,
            active_deadline_seconds: None,
            backoff_limit: DEFAULT_BACKOFF_LIMIT,
            selector: None,
            manual_selector: None,
            template: PodTemplateSpec::default(),
            ttl_seconds_after_finished: None,
            completion_mode: non_indexed(),
            suspend: false,
        }
    }
}

fn default_backoff_limit() -> i32 {
    DEFAULT_BACKOFF_LIMIT
}

fn non_indexed() -> String {
    "NonIndexed".to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub active: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub succeeded: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i32>,
    /// Indexed Jobs: the indexes that succeeded, as ranges (`1,3-5`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub completed_indexes: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl Job {
    pub fn is_indexed(&self) -> bool {
        self.spec.completion_mode == "Indexed"
    }

    /// The type (`Complete` or `Failed`) of the condition that ended the Job, if one did.
    pub fn finished(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    }

    /// Fills what the server owns of a new Job (or keeps it on an update): the default
    /// parallelism and completions, and, unless `manualSelector`, the selector on the
    /// Job's uid and the labels on its template that match it.
    pub fn set_defaults(&mut self) {
        let spec = &mut self.spec;
        if spec.parallelism.is_none() {
            if spec.completions.is_none() {
                spec.completions = Some(1);
            }
            spec.parallelism = Some(1);
        }
        if spec.manual_selector == Some(true) || self.metadata.uid.is_empty() {
            return;
        }
        let uid = self.metadata.uid.clone();
        let name = self.metadata.name.clone();
        let labels = &mut spec.template.metadata.labels;
        for (key, value) in [
            (CONTROLLER_UID_LABEL, &uid),
            (LEGACY_CONTROLLER_UID_LABEL, &uid),
            (JOB_NAME_LABEL, &name),
            (LEGACY_JOB_NAME_LABEL, &name),
        ] {
            labels.insert(key.to_owned(), value.clone());
        }
        spec.selector = Some(LabelSelector {
            match_labels: BTreeMap::from([(CONTROLLER_UID_LABEL.to_owned(), uid)]),
            match_expressions: Vec::new(),
        });
    }
}

impl JobSpec {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        for (field, value) in [
            ("parallelism", self.parallelism),
            ("completions", self.completions),
            ("ttlSecondsAfterFinished", self.ttl_seconds_after_finished),
        ] {
            if let Some(value) = value {
                v.non_negative(&path.child(field), value.into());
            }
        }
        v.non_negative(&path.child("backoffLimit"), self.backoff_limit.into());
        if let Some(deadline) = self.active_deadline_seconds
            && deadline <= 0
        {
            v.error(
                &path.child("activeDeadlineSeconds"),
                &format!("{deadline}: must be greater than 0"),
            );
        }
        v.one_of(
            &path.child("completionMode"),
            &self.completion_mode,
            &["NonIndexed", "Indexed"],
        );
        if self.completion_mode == "Indexed" && self.completions.is_none() {
            v.error(
                &path.child("completions"),
                "Required value: when completion mode is Indexed",
            );
        }
        let template = path.child("template");
        let restart = template.child("spec").child("restartPolicy");
        match self.template.spec.restart_policy.as_str() {
            "OnFailure" | "Never" => {}
            "" => v.error(
                &restart,
                "Required value: valid values: \"OnFailure\", \"Never\"",
            ),
            other => v.error(
                &restart,
                &format!(
                    "Unsupported value: {other:?}: supported values: \"OnFailure\", \"Never\""
                ),
            ),
        }
        let labels = template.child("metadata").child("labels");
        for (key, value) in &self.template.metadata.labels {
            v.label_key(&labels.key(key), key);
            v.label_value(&labels.key(key), value);
        }
        if let Some(selector) = &self.selector {
            selector.validate(v, &path.child("selector"));
            if self.manual_selector == Some(true)
                && !selector.is_empty()
                && !selector.matches(&self.template.metadata.labels)
            {
                v.error(&labels, "`selector` does not match template `labels`");
            }
        } else if self.manual_selector == Some(true) {
            v.error(
                &path.child("selector"),
                "Required value: when manualSelector is true",
            );
        }
        self.template.spec.validate(v, &template.child("spec"));
    }
}

// ---------------------------------------------------------------------------- CronJob

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronJob {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CronJobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CronJobStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronJobSpec {
    /// Standard cron: five fields (minute hour day-of-month month day-of-week) with
    /// ranges, steps, lists and names, or a macro such as `@hourly`.
    #[serde(default)]
    pub schedule: String,
    /// IANA name (`Europe/Berlin`) the schedule is read in; unset: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A run not started this many seconds after its time is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<i64>,
    /// `Allow` (default), `Forbid` or `Replace`.
    #[serde(default = "allow")]
    pub concurrency_policy: String,
    #[serde(default)]
    pub suspend: bool,
    /// Boxed: the template is most of a CronJob, which the controllers' object enum
    /// would otherwise size every object by.
    #[serde(default)]
    pub job_template: Box<JobTemplateSpec>,
    #[serde(default = "three")]
    pub successful_jobs_history_limit: i32,
    #[serde(default = "one")]
    pub failed_jobs_history_limit: i32,
}

impl Default for CronJobSpec {
    fn default() -> Self {
        Self {
            schedule: String::new(),
            time_zone: None,
            starting_deadline_seconds: None,
            concurrency_policy: allow(),
            suspend: false,
            job_template: Box::default(),
            successful_jobs_history_limit: three(),
            failed_jobs_history_limit: one(),
        }
    }
}

fn allow() -> String {
    "Allow".to_owned()
}

fn three() -> i32 {
    3
}

fn one() -> i32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobTemplateSpec {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: JobSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronJobStatus {
    /// The Jobs of this CronJob still running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
}

impl CronJob {
    pub(crate) fn validate(&self, v: &mut Validator) {
        if self.metadata.name.len() > MAX_CRONJOB_NAME {
            v.error(
                &FieldPath::root("metadata").child("name"),
                &format!("must be no more than {MAX_CRONJOB_NAME} characters"),
            );
        }
        let path = FieldPath::root("spec");
        let spec = &self.spec;
        if let Err(error) = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            v.error(&path.child(error.field), &error.message);
        }
        v.one_of(
            &path.child("concurrencyPolicy"),
            &spec.concurrency_policy,
            &["Allow", "Forbid", "Replace"],
        );
        if let Some(deadline) = spec.starting_deadline_seconds {
            v.non_negative(&path.child("startingDeadlineSeconds"), deadline);
        }
        v.non_negative(
            &path.child("successfulJobsHistoryLimit"),
            spec.successful_jobs_history_limit.into(),
        );
        v.non_negative(
            &path.child("failedJobsHistoryLimit"),
            spec.failed_jobs_history_limit.into(),
        );
        spec.job_template
            .spec
            .validate(v, &path.child("jobTemplate").child("spec"));
    }
}

// ---------------------------------------------------------------------------- Schedule

/// What is wrong with a schedule, and in which field (`schedule` or `timeZone`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

/// A CronJob's schedule read in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Schedule {
    /// Standard five-field cron (no seconds, no years) with Vixie cron's rule that a day
    /// matches day-of-month or day-of-week when both are restricted, as Kubernetes'.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let invalid = |field, message: String| ScheduleError { field, message };
        if schedule.trim().is_empty() {
            return Err(invalid("schedule", "Required value".to_owned()));
        }
        if schedule.contains("TZ=") {
            return Err(invalid(
                "schedule",
                format!(
                    "Invalid value: {schedule:?}: cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
                ),
            ));
        }
        let zone = match time_zone {
            None => chrono_tz::UTC,
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                invalid(
                    "timeZone",
                    format!("Invalid value: {name:?}: unknown time zone {name}"),
                )
            })?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| invalid("schedule", format!("Invalid value: {schedule:?}: {e}")))?;
        Ok(Self { cron, zone })
    }

    /// The first time the schedule fires after `unix_secs` (Unix seconds).
    pub fn next_after(&self, unix_secs: u64) -> Option<u64> {
        let from = self.at(unix_secs)?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        u64::try_from(next.timestamp()).ok()
    }

    /// The times the schedule fired after `after` up to `now` (inclusive), oldest first,
    /// at most `limit` of them, and whether there were more.
    pub fn fired_between(&self, after: u64, now: u64, limit: usize) -> (Vec<u64>, bool) {
        let mut times = Vec::new();
        let mut from = after;
        while let Some(next) = self.next_after(from) {
            if next > now {
                return (times, false);
            }
            if times.len() == limit {
                return (times, true);
            }
            times.push(next);
            from = next;
        }
        (times, false)
    }

    /// The last time the schedule fired at or before `now`.
    pub fn last_at_or_before(&self, now: u64) -> Option<u64> {
        let at = self.at(now)?;
        let last = self.cron.find_previous_occurrence(&at, true).ok()?;
        u64::try_from(last.timestamp()).ok()
    }

    fn at(&self, unix_secs: u64) -> Option<DateTime<chrono_tz::Tz>> {
        let utc: DateTime<Utc> = Utc
            .timestamp_opt(i64::try_from(unix_secs).ok()?, 0)
            .single()?;
        Some(utc.with_timezone(&self.zone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn at(text: &str) -> u64 {
        parse_rfc3339(text).expect("time")
    }

    #[test]
    fn schedules_read_ranges_steps_names_and_macros() {
        let next = |schedule: &str, zone: Option<&str>, from: &str| {
            let schedule = Schedule::parse(schedule, zone).expect("valid");
            crate::time::rfc3339(schedule.next_after(at(from)).expect("fires"))
        };
        let from = "2026-03-04T10:17:30Z"; // a Wednesday
        assert_eq!(next("* * * * *", None, from), "2026-03-04T10:18:00Z");
        assert_eq!(next("*/15 * * * *", None, from), "2026-03-04T10:30:00Z");
        assert_eq!(next("5-10 11 * * *", None, from), "2026-03-04T11:05:00Z");
        assert_eq!(next("0 9 * * MON-FRI", None, from), "2026-03-05T09:00:00Z");
        assert_eq!(next("0 0 1 JAN,JUL *", None, from), "2026-07-01T00:00:00Z");
        assert_eq!(next("@hourly", None, from), "2026-03-04T11:00:00Z");
        assert_eq!(next("@daily", None, from), "2026-03-05T00:00:00Z");
        assert_eq!(next("@weekly", None, from), "2026-03-08T00:00:00Z");
        // Day of month or day of week, as Vixie cron and Kubernetes.
        assert_eq!(next("0 0 13 * FRI", None, from), "2026-03-06T00:00:00Z");
        // 09:00 in Berlin is 08:00 UTC in winter.
        assert_eq!(
            next("0 9 * * *", Some("Europe/Berlin"), from),
            "2026-03-05T08:00:00Z"
        );
    }

    #[test]
    fn bad_schedules_and_zones_name_their_field() {
        for (schedule, zone, field) in [
            ("", None, "schedule"),
            ("* * * *", None, "schedule"),
            ("61 * * * *", None, "schedule"),
            ("0 0 * * * *", None, "schedule"),
            ("CRON_TZ=UTC * * * * *", None, "schedule"),
            ("* * * * *", Some("Mars/Olympus"), "timeZone"),
        ] {
            let error = Schedule::parse(schedule, zone).expect_err(schedule);
            assert_eq!(error.field, field, "{schedule}: {error}");
        }
    }

    fn job_errors(yaml: &str) -> Vec<String> {
        match crate::kinds::JOBS.decode(crate::Source::Yaml(yaml)) {
            Ok(_) => Vec::new(),
            Err(crate::DecodeError::Invalid { errors }) => {
                errors.iter().map(ToString::to_string).collect()
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn jobs_are_refused_by_field_as_kubernetes_refuses_them() {
        let job = |spec: &str, policy: &str| {
            format!(
                "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n{spec}  template:\n    spec:\n{policy}      containers: [{{name: c, image: i}}]\n"
            )
        };
        assert!(job_errors(&job("", "      restartPolicy: Never\n")).is_empty());
        let refused = |spec: &str, policy: &str, field: &str| {
            let errors = job_errors(&job(spec, policy));
            assert!(
                errors.iter().any(|e| e.starts_with(field)),
                "{field} not in {errors:?}"
            );
        };
        refused("", "", "spec.template.spec.restartPolicy");
        refused(
            "",
            "      restartPolicy: Always\n",
            "spec.template.spec.restartPolicy",
        );
        let never = "      restartPolicy: Never\n";
        refused("  completionMode: Indexed\n", never, "spec.completions");
        refused(
            "  completionMode: Sometimes\n",
            never,
            "spec.completionMode",
        );
        refused("  backoffLimit: -1\n", never, "spec.backoffLimit");
        refused(
            "  activeDeadlineSeconds: 0\n",
            never,
            "spec.activeDeadlineSeconds",
        );
        refused("  manualSelector: true\n", never, "spec.selector");
    }

    #[test]
    fn a_new_job_selects_its_pods_by_its_uid() {
        let mut job = Job::default();
        job.metadata.name = "pi".to_owned();
        job.metadata.uid = "u1".to_owned();
        job.set_defaults();
        assert_eq!(
            (job.spec.completions, job.spec.parallelism),
            (Some(1), Some(1))
        );
        let labels = &job.spec.template.metadata.labels;
        assert_eq!(labels[CONTROLLER_UID_LABEL], "u1");
        assert_eq!(labels[LEGACY_JOB_NAME_LABEL], "pi");
        let selector = job.spec.selector.clone().expect("selector");
        assert!(selector.matches(labels));
        // A work queue: parallelism without completions stays so.
        let mut queue = Job::default();
        queue.spec.parallelism = Some(3);
        queue.set_defaults();
        assert_eq!(queue.spec.completions, None);
    }

    #[test]
    fn missed_runs_are_counted_up_to_a_limit() {
        let schedule = Schedule::parse("* * * * *", None).expect("valid");
        let start = at("2026-03-04T10:00:00Z");
        let (times, more) = schedule.fired_between(start, start + 150, 100);
        assert_eq!((times.len(), more), (2, false));
        assert_eq!(times[0], start + 60);
        let (times, more) = schedule.fired_between(start, start + 200 * 60, 100);
        assert_eq!((times.len(), more), (100, true));
        assert_eq!(schedule.last_at_or_before(start + 150), Some(start + 120));
    }
}
