use berth_api::{
    Resource as _,
    batch::{CronJob, Job},
    validation::{FieldError, FieldPath, Validator},
};

use super::Strategy;
use crate::{
    registry::{Batch, Registry, Result},
    store::Op,
};

/// A Job's selector and pod labels come from its uid (Kubernetes' job strategy); what
/// its pods are made of is fixed once it exists.
pub(in crate::registry) struct JobStrategy;

impl Strategy for JobStrategy {
    type Object = Job;

    fn prepare_for_create(&self, job: &mut Job) {
        job.status = None;
        job.set_defaults();
    }

    /// An update that leaves the generated selector and labels out keeps them, so
    /// re-applying the manifest a Job was made from is no change.
    fn prepare_for_update(&self, job: &mut Job, old: &Job) {
        job.status = old.status.clone();
        if job.spec.selector.is_none() && job.spec.manual_selector != Some(true) {
            job.spec.selector = old.spec.selector.clone();
        }
        job.set_defaults();
    }

    fn validate_update(&self, job: &Job, old: &Job) -> Vec<FieldError> {
        let mut v = Validator::default();
        let spec = FieldPath::root("spec");
        if job.spec.selector != old.spec.selector {
            v.error(&spec.child("selector"), "field is immutable");
        }
        if job.spec.template != old.spec.template {
            v.error(&spec.child("template"), "field is immutable");
        }
        if job.spec.completions != old.spec.completions {
            v.error(&spec.child("completions"), "field is immutable");
        }
        if job.spec.completion_mode != old.spec.completion_mode {
            v.error(&spec.child("completionMode"), "field is immutable");
        }
        v.into_errors()
    }

    fn spec_changed(&self, job: &Job, old: &Job) -> bool {
        job.spec != old.spec
    }

    async fn complete(
        &self,
        registry: &Registry,
        old: Option<&Job>,
        job: &mut Job,
        _batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        // Refused here rather than pod by pod once it runs.
        if old.is_none() {
            registry.admit_pod_spec(
                Job::KIND,
                &job.metadata.name,
                &job.spec.template.spec,
                &FieldPath::root("spec").child("template").child("spec"),
            )?;
        }
        Ok(Vec::new())
    }
}

pub(in crate::registry) struct CronJobStrategy;

impl Strategy for CronJobStrategy {
    type Object = CronJob;

    fn prepare_for_create(&self, cron_job: &mut CronJob) {
        cron_job.status = None;
    }

    fn prepare_for_update(&self, cron_job: &mut CronJob, old: &CronJob) {
        cron_job.status = old.status.clone();
    }

    fn spec_changed(&self, cron_job: &CronJob, old: &CronJob) -> bool {
        cron_job.spec != old.spec
    }

    async fn complete(
        &self,
        registry: &Registry,
        _old: Option<&CronJob>,
        cron_job: &mut CronJob,
        _batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        registry.admit_pod_spec(
            CronJob::KIND,
            &cron_job.metadata.name,
            &cron_job.spec.job_template.spec.template.spec,
            &FieldPath::root("spec")
                .child("jobTemplate")
                .child("spec")
                .child("template")
                .child("spec"),
        )?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_its_generated_selector_and_its_pod_template() {
        let mut old = Job::default();
        old.metadata.name = "pi".into();
        old.metadata.uid = "u1".into();
        old.spec.template.spec.restart_policy = "Never".into();
        JobStrategy.prepare_for_create(&mut old);
        // Re-applied as written (no selector, no generated labels): the same Job.
        let mut again = Job {
            metadata: old.metadata.clone(),
            ..Job::default()
        };
        again.spec.template.spec.restart_policy = "Never".into();
        JobStrategy.prepare_for_update(&mut again, &old);
        assert_eq!(again.spec, old.spec);
        assert_eq!(JobStrategy.validate_update(&again, &old), []);
        // Other pods: refused.
        let mut changed = again.clone();
        changed.spec.template.spec.restart_policy = "OnFailure".into();
        let errors = JobStrategy.validate_update(&changed, &old);
        assert_eq!(errors[0].field, "spec.template");
    }
}
