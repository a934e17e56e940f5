//! `berthctl create job NAME --from=cronjob/X`: a Job from a CronJob's job template now,
//! made as kubectl makes it (owned by the CronJob, marked as started by hand).

use std::io::Write;

use berth_api::{
    batch::{CronJob, Job},
    kinds::{CRON_JOBS, JOBS},
    meta::OwnerReference,
};
use hyper::http::Method;

use crate::{CtlError, Ctx, Target, emit};

/// The annotation kubectl puts on a Job it made from a CronJob.
const INSTANTIATE_ANNOTATION: &str = "cronjob.kubernetes.io/instantiate";

pub async fn create_from(
    ctx: &Ctx,
    name: &str,
    from: &str,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let cron_job_name = match from.split_once('/') {
        Some(("cronjob" | "cronjobs" | "cj" | "cronjobs.batch", name)) if !name.is_empty() => name,
        _ => {
            return Err(CtlError::Usage(format!(
                "--from={from}: only `cronjob/NAME` is supported"
            )));
        }
    };
    let reply = ctx
        .call(
            Method::GET,
            &ctx.object_path(&CRON_JOBS, cron_job_name),
            None,
            Some(Target {
                rt: &CRON_JOBS,
                name: cron_job_name,
            }),
        )
        .await?;
    let cron_job: CronJob = serde_json::from_value(reply)
        .map_err(|e| CtlError::Io(format!("the server's CronJob {cron_job_name}: {e}")))?;
    let template = cron_job.spec.job_template;
    let mut metadata = template.metadata;
    metadata.name = name.to_owned();
    metadata.namespace = cron_job.metadata.namespace.clone();
    metadata
        .annotations
        .insert(INSTANTIATE_ANNOTATION.to_owned(), "manual".to_owned());
    metadata.owner_references = vec![OwnerReference {
        api_version: "batch/v1".to_owned(),
        kind: "CronJob".to_owned(),
        name: cron_job.metadata.name.clone(),
        uid: cron_job.metadata.uid.clone(),
        controller: true,
    }];
    let job = Job {
        api_version: "batch/v1".to_owned(),
        kind: "Job".to_owned(),
        metadata,
        spec: template.spec,
        status: None,
    };
    let body = serde_json::to_value(&job)
        .map_err(|e| CtlError::Io(format!("encoding Job {name}: {e}")))?;
    ctx.call(
        Method::POST,
        &Ctx::collection(&JOBS, Some(ctx.namespace())),
        Some(&body),
        Some(Target { rt: &JOBS, name }),
    )
    .await?;
    emit(out, &format!("job.batch/{name} created"));
    Ok(())
}
