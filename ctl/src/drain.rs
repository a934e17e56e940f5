//! `cordon`, `uncordon` and `drain`: take a node out of scheduling, and move its pods
//! elsewhere through the Eviction API, so PodDisruptionBudgets are honoured (kubectl
//! drain's rules and flags).

use std::{collections::BTreeMap, io::Write, time::Duration};

use hyper::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{CtlError, Ctx, Target, emit, encode, resolve, rollout::parse_duration, str_at};

/// How long a drain waits before asking again for an eviction a budget refused (kubectl
/// waits as long).
const RETRY_EVICTION: Duration = Duration::from_secs(5);
/// How often a drain looks whether evicted pods are gone.
const POLL: Duration = Duration::from_secs(1);

/// Mark a node unschedulable: new pods go elsewhere, running ones stay.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berthctl cordon node-1")]
pub struct CordonArgs {
    pub node: String,
}

/// Evict every pod of a node (after cordoning it), honouring PodDisruptionBudgets.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berthctl drain node-1 --ignore-daemonsets\n  \
                        berthctl drain node-1 --ignore-daemonsets --timeout 5m\n\n\
                        Pods are evicted, not deleted: an eviction a PodDisruptionBudget \
                        refuses is retried every 5s, saying which budget it waits for. \
                        DaemonSet pods and mirror pods stay. Exits 1 when --timeout passes \
                        with pods left; the node stays cordoned (berthctl uncordon NODE)."
)]
pub struct DrainArgs {
    pub node: String,
    /// Give up after this long (e.g. 90s, 5m); 0 waits forever.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Leave DaemonSet-managed pods (their DaemonSet would recreate them at once);
    /// without it a node running any refuses to drain.
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Evict pods with emptyDir volumes too: their data is lost.
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Evict pods no controller manages too: nothing recreates them.
    #[arg(long)]
    pub force: bool,
    /// Seconds each pod gets to shut down; -1 uses the pod's own.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
}

pub async fn cordon(
    ctx: &Ctx,
    node: &str,
    unschedulable: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let rt = resolve("nodes")?;
    let path = Ctx::collection(rt, None) + "/" + node;
    let target = Target { rt, name: node };
    let current = ctx.call(Method::GET, &path, None, Some(target)).await?;
    let word = if unschedulable {
        "cordoned"
    } else {
        "uncordoned"
    };
    if (current.pointer("/spec/unschedulable") == Some(&Value::Bool(true))) == unschedulable {
        emit(out, &format!("node/{node} already {word}"));
        return Ok(());
    }
    let patch = json!({"spec": {"unschedulable": unschedulable}});
    ctx.merge_patch(&path, &patch, target).await?;
    emit(out, &format!("node/{node} {word}"));
    Ok(())
}

/// A pod of the node, as the drain sees it.
struct Evictee {
    namespace: String,
    name: String,
    uid: String,
}

impl Evictee {
    fn path(&self) -> String {
        format!("/api/v1/namespaces/{}/pods/{}", self.namespace, self.name)
    }

    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

pub async fn drain(
    ctx: &Ctx,
    args: &DrainArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    if args.grace_period < -1 {
        return Err(CtlError::Usage(
            "--grace-period must be -1 (the pod's own) or more".to_owned(),
        ));
    }
    cordon(ctx, &args.node, true, out).await?;
    let node = &args.node;
    let list = ctx
        .call(
            Method::GET,
            &format!(
                "/api/v1/pods?fieldSelector={}",
                encode(&format!("spec.nodeName={node}"))
            ),
            None,
            None,
        )
        .await?;
    let (evictees, refusals, warnings) =
        select(list["items"].as_array().map_or(&[][..], |v| v), args);
    for warning in &warnings {
        let _ = writeln!(err, "Warning: {warning}");
    }
    if !refusals.is_empty() {
        return Err(CtlError::Usage(format!(
            "unable to drain node {node:?}: {}\nThe node stays cordoned; `berthctl uncordon {node}` undoes that.",
            refusals.join("; ")
        )));
    }
    let work = evict_all(ctx, args, evictees, out);
    if args.timeout.is_zero() {
        work.await?;
    } else {
        match tokio::time::timeout(args.timeout, work).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(CtlError::Usage(format!(
                    "drain did not complete within {}s: pods are still on node {node:?} (see above for what each waits for); the node stays cordoned",
                    args.timeout.as_secs()
                )));
            }
        }
    }
    emit(out, &format!("node/{node} drained"));
    Ok(())
}

/// The pods to evict, the reasons the drain cannot go on, and warnings — kubectl's
/// filters: mirror pods are skipped, DaemonSet pods skipped with --ignore-daemonsets
/// (else refused), pods without a controller need --force, pods with emptyDir volumes
/// --delete-emptydir-data. Finished pods are always removed.
fn select(pods: &[Value], args: &DrainArgs) -> (Vec<Evictee>, Vec<String>, Vec<String>) {
    let mut refused: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut warned: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut evictees = Vec::new();
    for pod in pods {
        let label = format!(
            "{}/{}",
            str_at(pod, "/metadata/namespace"),
            str_at(pod, "/metadata/name")
        );
        if pod
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some()
        {
            continue;
        }
        let finished = matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed");
        let controller = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|owners| owners.iter().find(|o| o["controller"] == true));
        if !finished && controller.is_some_and(|c| c["kind"] == "DaemonSet") {
            if args.ignore_daemonsets {
                warned
                    .entry("ignoring DaemonSet-managed Pods")
                    .or_default()
                    .push(label);
            } else {
                refused
                    .entry(
                        "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)",
                    )
                    .or_default()
                    .push(label);
            }
            continue;
        }
        if !finished && controller.is_none() {
            if args.force {
                warned
                    .entry("deleting Pods that declare no controller")
                    .or_default()
                    .push(label.clone());
            } else {
                refused
                    .entry(
                        "cannot delete Pods that declare no controller (use --force to override)",
                    )
                    .or_default()
                    .push(label.clone());
                continue;
            }
        }
        let empty_dir = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .is_some_and(|volumes| volumes.iter().any(|v| v.get("emptyDir").is_some()));
        if !finished && empty_dir {
            if args.delete_emptydir_data {
                warned
                    .entry("deleting Pods with local storage")
                    .or_default()
                    .push(label.clone());
            } else {
                refused
                    .entry("cannot delete Pods with local storage (use --delete-emptydir-data to override)")
                    .or_default()
                    .push(label);
                continue;
            }
        }
        evictees.push(Evictee {
            namespace: str_at(pod, "/metadata/namespace").to_owned(),
            name: str_at(pod, "/metadata/name").to_owned(),
            uid: str_at(pod, "/metadata/uid").to_owned(),
        });
    }
    let joined = |map: BTreeMap<&str, Vec<String>>| {
        map.into_iter()
            .map(|(what, pods)| format!("{what}: {}", pods.join(", ")))
            .collect()
    };
    (evictees, joined(refused), joined(warned))
}

/// Evicts every pod, retrying those a budget refuses, then waits until all are gone.
async fn evict_all(
    ctx: &Ctx,
    args: &DrainArgs,
    mut pending: Vec<Evictee>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut delete_options = json!({});
    if args.grace_period >= 0 {
        delete_options["gracePeriodSeconds"] = json!(args.grace_period);
    }
    let mut evicted: Vec<Evictee> = Vec::new();
    loop {
        let mut refused = Vec::new();
        for pod in pending {
            let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod.name, "namespace": pod.namespace},
                "deleteOptions": delete_options});
            emit(out, &format!("evicting pod {}", pod.label()));
            let (status, reply) = ctx
                .client()
                .json(
                    Method::POST,
                    &format!("{}/eviction", pod.path()),
                    Some(&body),
                )
                .await
                .map_err(|e| ctx.transport(e))?;
            match status {
                s if s.is_success() => evicted.push(pod),
                StatusCode::NOT_FOUND => evicted.push(pod),
                StatusCode::TOO_MANY_REQUESTS => {
                    let why = reply
                        .pointer("/details/causes/0/message")
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| str_at(&reply, "/message"));
                    emit(
                        out,
                        &format!(
                            "pod {} waits: {} {why} (will retry after {}s)",
                            pod.label(),
                            str_at(&reply, "/message"),
                            RETRY_EVICTION.as_secs()
                        ),
                    );
                    refused.push(pod);
                }
                _ => return Err(ctx.failure(status, &reply, None)),
            }
        }
        if refused.is_empty() {
            break;
        }
        pending = refused;
        tokio::time::sleep(RETRY_EVICTION).await;
    }
    for pod in evicted {
        loop {
            let (status, current) = ctx
                .client()
                .json(Method::GET, &pod.path(), None)
                .await
                .map_err(|e| ctx.transport(e))?;
            // Gone, or a new pod of the same name (a StatefulSet's) in its place.
            if status == StatusCode::NOT_FOUND || str_at(&current, "/metadata/uid") != pod.uid {
                emit(out, &format!("pod/{} evicted", pod.name));
                break;
            }
            if !status.is_success() {
                return Err(ctx.failure(status, &current, None));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}
