//! `scale` and `rollout status|history|undo` for Deployments, DaemonSets and StatefulSets.

use std::{io::Write, time::Duration};

use berth_api::ResourceType;
use hyper::http::Method;
use serde_json::{Value, json};

use super::{CtlError, Ctx, Flow, Target, emit, encode, int_at, kind_ref, output, resolve, str_at};

const REVISION: &str = "/metadata/annotations/deployment.kubernetes.io~1revision";
const CHANGE_CAUSE: &str = "/metadata/annotations/kubernetes.io~1change-cause";

/// Set the number of replicas of a Deployment, ReplicaSet or StatefulSet.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berthctl scale deployment web --replicas 5\n  \
                        berthctl scale deploy/web --replicas 0\n  \
                        berthctl scale statefulset/db --replicas 3"
)]
pub struct ScaleArgs {
    /// deployment, replicaset or statefulset, or KIND/NAME.
    pub kind: String,
    pub name: Option<String>,
    #[arg(long)]
    pub replicas: i32,
}

#[derive(Debug, clap::Subcommand)]
pub enum Rollout {
    /// Wait until a Deployment's, DaemonSet's or StatefulSet's rollout has finished, showing
    /// its progress.
    #[command(after_help = "Examples:\n  berthctl rollout status deployment web\n  \
                            berthctl rollout status deploy/web --timeout 2m\n  \
                            berthctl rollout status statefulset/db\n\n\
                            Exits 0 when the rollout is complete, 1 when the timeout passes.")]
    Status {
        kind: String,
        name: Option<String>,
        /// Give up after this long (e.g. 90s, 5m); 0 waits forever.
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        timeout: Duration,
        /// Print the state once instead of waiting.
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// List a Deployment's, DaemonSet's or StatefulSet's revisions, or show one.
    #[command(
        after_help = "Examples:\n  berthctl rollout history deployment web\n  \
                            berthctl rollout history deployment web --revision 2\n\n\
                            CHANGE-CAUSE is the Deployment's kubernetes.io/change-cause annotation \
                            when the revision was made."
    )]
    History {
        kind: String,
        name: Option<String>,
        /// Show the pod template of this revision.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Roll a Deployment, DaemonSet or StatefulSet back to the previous revision or to
    /// --to-revision.
    #[command(after_help = "Examples:\n  berthctl rollout undo deployment web\n  \
                            berthctl rollout undo deployment web --to-revision 1\n  \
                            berthctl rollout undo daemonset fluentd\n  \
                            berthctl rollout undo statefulset/db")]
    Undo {
        kind: String,
        name: Option<String>,
        /// 0: the revision before the current one.
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
}

/// `90s`, `5m`, `1h`, `2d` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 5m, 1h, 2d)"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    Ok(Duration::from_secs(value.saturating_mul(factor)))
}

/// `deployment web` or `deployment/web`.
fn deployment_target(
    kind: &str,
    name: Option<&str>,
) -> Result<(&'static ResourceType, String), CtlError> {
    let (kind, name) = match (kind.split_once('/'), name) {
        (Some((kind, name)), None) => (kind, name.to_owned()),
        (None, Some(name)) => (kind, name.to_owned()),
        _ => {
            return Err(CtlError::Usage(
                "name one object: KIND NAME or KIND/NAME (e.g. deployment web)".to_owned(),
            ));
        }
    };
    Ok((resolve(kind)?, name))
}

/// The kinds with rollouts: those whose templates the server keeps as revisions.
fn only_rollouts(rt: &ResourceType) -> Result<(), CtlError> {
    if matches!(rt.kind, "Deployment" | "DaemonSet" | "StatefulSet") {
        Ok(())
    } else {
        Err(CtlError::Usage(format!(
            "rollout works on deployments, daemonsets and statefulsets, not {}",
            rt.plural
        )))
    }
}

pub async fn scale(ctx: &Ctx, args: ScaleArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let (rt, name) = deployment_target(&args.kind, args.name.as_deref())?;
    if !matches!(rt.kind, "Deployment" | "ReplicaSet" | "StatefulSet") {
        return Err(CtlError::Usage(format!(
            "{} cannot be scaled; scale deployments, replicasets or statefulsets",
            rt.plural
        )));
    }
    if args.replicas < 0 {
        return Err(CtlError::Usage(format!(
            "--replicas={}: must be 0 or more",
            args.replicas
        )));
    }
    let path = format!("{}/scale", ctx.object_path(rt, &name));
    let target = Target { rt, name: &name };
    ctx.call(
        Method::PUT,
        &path,
        Some(&json!({"spec": {"replicas": args.replicas}})),
        Some(target),
    )
    .await?;
    emit(out, &format!("{}/{name} scaled", kind_ref(rt)));
    Ok(())
}

pub async fn run(ctx: &Ctx, action: Rollout, out: &mut dyn Write) -> Result<(), CtlError> {
    match action {
        Rollout::Status {
            kind,
            name,
            timeout,
            watch,
        } => {
            let (rt, name) = deployment_target(&kind, name.as_deref())?;
            only_rollouts(rt)?;
            let wait = status(ctx, rt, &name, watch, out);
            if timeout.is_zero() {
                wait.await
            } else {
                tokio::time::timeout(timeout, wait)
                    .await
                    .map_err(|_| CtlError::Timeout)?
            }
        }
        Rollout::History {
            kind,
            name,
            revision,
        } => {
            let (rt, name) = deployment_target(&kind, name.as_deref())?;
            only_rollouts(rt)?;
            history(ctx, rt, &name, revision, out).await
        }
        Rollout::Undo {
            kind,
            name,
            to_revision,
        } => {
            let (rt, name) = deployment_target(&kind, name.as_deref())?;
            only_rollouts(rt)?;
            let path = format!("{}/rollback", ctx.object_path(rt, &name));
            let target = Target { rt, name: &name };
            let object = ctx
                .call(
                    Method::POST,
                    &path,
                    Some(&json!({"toRevision": to_revision})),
                    Some(target),
                )
                .await?;
            let revision = str_at(&object, REVISION);
            emit(
                out,
                &if revision.is_empty() {
                    format!("{}/{name} rolled back", kind_ref(rt))
                } else {
                    format!(
                        "{}/{name} rolled back (now revision {revision})",
                        kind_ref(rt)
                    )
                },
            );
            Ok(())
        }
    }
}

/// kubectl's rollout status messages: Ok(the final one) when the rollout is complete,
/// Err(where it is) while it is not.
fn progress(rt: &ResourceType, name: &str, object: &Value) -> Result<String, String> {
    match rt.kind {
        "StatefulSet" => return statefulset_progress(object),
        "DaemonSet" => {
            return daemon_set_progress(name, object).map_or_else(
                || Ok(format!("daemon set {name:?} successfully rolled out")),
                Err,
            );
        }
        _ => {}
    }
    deployment_progress(name, object).map_or_else(
        || Ok(format!("deployment {name:?} successfully rolled out")),
        Err,
    )
}

/// kubectl's StatefulSet status viewer.
fn statefulset_progress(s: &Value) -> Result<String, String> {
    if int_at(s, "/status/observedGeneration") < int_at(s, "/metadata/generation") {
        return Err("Waiting for statefulset spec update to be observed...".to_owned());
    }
    let desired = s
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int_at(s, "/status/readyReplicas");
    if ready < desired {
        return Err(format!(
            "Waiting for {} pods to be ready...",
            desired - ready
        ));
    }
    let update = str_at(s, "/status/updateRevision");
    if let Some(partition) = s
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
    {
        let updated = int_at(s, "/status/updatedReplicas");
        let wanted = (desired - partition).max(0);
        return if updated < wanted {
            Err(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {wanted} new pods have been updated..."
            ))
        } else {
            Ok(format!(
                "partitioned roll out complete: {updated} new pods have been updated..."
            ))
        };
    }
    if update != str_at(s, "/status/currentRevision") {
        return Err(format!(
            "waiting for statefulset rolling update to complete {} pods at revision {update}...",
            int_at(s, "/status/updatedReplicas")
        ));
    }
    Ok(format!(
        "statefulset rolling update complete {} pods at revision {update}...",
        int_at(s, "/status/currentReplicas")
    ))
}

/// kubectl's Deployment status messages; None when the rollout is complete.
fn daemon_set_progress(name: &str, d: &Value) -> Option<String> {
    if int_at(d, "/status/observedGeneration") < int_at(d, "/metadata/generation") {
        return Some("Waiting for daemon set spec update to be observed...".to_owned());
    }
    let desired = int_at(d, "/status/desiredNumberScheduled");
    let updated = int_at(d, "/status/updatedNumberScheduled");
    let available = int_at(d, "/status/numberAvailable");
    if updated < desired {
        Some(format!(
            "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new \
             pods have been updated..."
        ))
    } else if available < desired {
        Some(format!(
            "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated \
             pods are available..."
        ))
    } else {
        None
    }
}

fn deployment_progress(name: &str, d: &Value) -> Option<String> {
    if int_at(d, "/status/observedGeneration") < int_at(d, "/metadata/generation") {
        return Some("Waiting for deployment spec update to be observed...".to_owned());
    }
    let desired = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int_at(d, "/status/updatedReplicas");
    let total = int_at(d, "/status/replicas");
    let available = int_at(d, "/status/availableReplicas");
    if updated < desired {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {desired} new \
             replicas have been updated..."
        ))
    } else if total > updated {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending \
             termination...",
            total - updated
        ))
    } else if available < updated {
        Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated \
             replicas are available..."
        ))
    } else {
        None
    }
}

async fn status(
    ctx: &Ctx,
    rt: &ResourceType,
    name: &str,
    watch: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let target = Target { rt, name };
    let current = ctx
        .call(Method::GET, &ctx.object_path(rt, name), None, Some(target))
        .await?;
    if rt.kind == "StatefulSet" && str_at(&current, "/spec/updateStrategy/type") == "OnDelete" {
        return Err(CtlError::Usage(
            "rollout status is only available for RollingUpdate strategy type".to_owned(),
        ));
    }
    let mut last = match progress(rt, name, &current) {
        Ok(done) => {
            emit(out, &done);
            return Ok(());
        }
        Err(message) => {
            emit(out, &message);
            message
        }
    };
    if !watch {
        return Err(CtlError::Usage("the rollout has not finished".to_owned()));
    }
    let selector = vec![format!(
        "fieldSelector={}",
        encode(&format!("metadata.name={name}"))
    )];
    ctx.follow(
        &Ctx::collection(rt, Some(ctx.namespace())),
        &selector,
        str_at(&current, "/metadata/resourceVersion").to_owned(),
        Some(target),
        |kind, object| {
            if kind == "DELETED" {
                return Err(CtlError::Usage(format!(
                    "{} {name:?} was deleted while waiting for its rollout",
                    rt.kind.to_lowercase()
                )));
            }
            match progress(rt, name, object) {
                Ok(done) => {
                    emit(out, &done);
                    Ok(Flow::Done)
                }
                Err(message) => {
                    if message != last {
                        emit(out, &message);
                        last = message;
                    }
                    Ok(Flow::Continue)
                }
            }
        },
    )
    .await
}

async fn history(
    ctx: &Ctx,
    rt: &ResourceType,
    name: &str,
    revision: Option<i64>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let target = Target { rt, name };
    let owner = ctx
        .call(Method::GET, &ctx.object_path(rt, name), None, Some(target))
        .await?;
    let revisions_rt = resolve("controllerrevisions")?;
    let list = ctx
        .call(
            Method::GET,
            &Ctx::collection(revisions_rt, Some(ctx.namespace())),
            None,
            None,
        )
        .await?;
    let uid = str_at(&owner, "/metadata/uid");
    let mut revisions: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|o| o["uid"] == uid))
        })
        .cloned()
        .collect();
    revisions.sort_by_key(|r| int_at(r, "/revision"));
    let images = |r: &Value| {
        r.pointer("/data/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| str_at(c, "/image").to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    let cause = |r: &Value| match str_at(r, CHANGE_CAUSE) {
        "" => "<none>".to_owned(),
        c => c.to_owned(),
    };
    if let Some(wanted) = revision {
        let Some(found) = revisions.iter().find(|r| int_at(r, "/revision") == wanted) else {
            let known: Vec<String> = revisions
                .iter()
                .map(|r| int_at(r, "/revision").to_string())
                .collect();
            return Err(CtlError::Usage(format!(
                "unable to find revision {wanted} of {} {name:?}; it has {}",
                rt.kind.to_ascii_lowercase(),
                known.join(", ")
            )));
        };
        let template = serde_norway::to_string(&found["data"]).unwrap_or_default();
        emit(
            out,
            &format!(
                "{}/{name} with revision #{wanted}\nChange-Cause: {}\nPod Template:\n{}",
                kind_ref(rt),
                cause(found),
                template
                    .lines()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        );
        return Ok(());
    }
    let mut rows = vec![vec![
        "REVISION".to_owned(),
        "CHANGE-CAUSE".to_owned(),
        "IMAGES".to_owned(),
        "AGE".to_owned(),
    ]];
    rows.extend(revisions.iter().map(|r| {
        vec![
            int_at(r, "/revision").to_string(),
            cause(r),
            images(r),
            output::age(r, "/metadata/creationTimestamp"),
        ]
    }));
    emit(
        out,
        &format!("{}/{name}\n{}", kind_ref(rt), output::table(&rows)),
    );
    Ok(())
}
