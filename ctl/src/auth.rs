//! `berthctl auth can-i`: whether the current user may do something, answered by the
//! server's authorizer through a SelfSubjectAccessReview (or, with `--list`, every rule
//! that applies through a SelfSubjectRulesReview). Output and exit codes are kubectl's:
//! `yes` and 0, `no` and 1.

use std::io::Write;

use hyper::http::Method;
use serde_json::{Value, json};

use crate::{CtlError, Ctx, Target, emit, output, resolve, str_at};

#[derive(Debug, clap::Subcommand)]
pub enum Auth {
    /// Whether an action is allowed: `can-i VERB [TYPE | TYPE/NAME | NONRESOURCEURL]`.
    #[command(
        name = "can-i",
        after_help = "Examples:\n  berthctl auth can-i create pods -n team-a\n  \
                      berthctl auth can-i list deployments.apps\n  \
                      berthctl auth can-i create pods --subresource exec\n  \
                      berthctl auth can-i get /metrics\n  \
                      berthctl auth can-i --list -n team-a\n\n\
                      Exits 0 for yes, 1 for no."
    )]
    CanI(CanIArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum CreateWhat {
    /// A token of a ServiceAccount (a TokenRequest), printed alone on stdout.
    #[command(after_help = "Examples:\n  berthctl create token default\n  \
                            berthctl create token builder -n ci --duration 10m\n  \
                            berthctl create token builder --audience https://vault.example\n  \
                            berthctl create token default --bound-object-kind Pod --bound-object-name web-0\n\n\
                            The token is valid until it expires or its ServiceAccount (or the bound\n\
                            pod) is deleted; the server grants 10 minutes at least.")]
    Token {
        /// The ServiceAccount, in the namespace of -n.
        service_account: String,
        /// Who the token is for (repeatable); the API server when none.
        #[arg(long)]
        audience: Vec<String>,
        /// How long it is valid (e.g. 10m, 1h, 2d); the server's default (1h) when unset.
        #[arg(long, value_parser = crate::rollout::parse_duration)]
        duration: Option<std::time::Duration>,
        /// A kind the token is bound to: Pod.
        #[arg(long, requires = "bound_object_name", value_parser = ["Pod"])]
        bound_object_kind: Option<String>,
        /// The name of the object the token is bound to: it stops working when that goes.
        #[arg(long, requires = "bound_object_kind")]
        bound_object_name: Option<String>,
    },
    /// A Job made from a CronJob's job template now, whatever its schedule.
    #[command(after_help = "Examples:\n  berthctl create job backup-now --from=cronjob/backup")]
    Job {
        /// The new Job's name.
        name: String,
        /// Where its template comes from: `cronjob/NAME`.
        #[arg(long)]
        from: String,
    },
}

/// `create token`: the token alone on stdout, so scripts can capture it; `create job`.
pub async fn create(ctx: &Ctx, what: CreateWhat, out: &mut dyn Write) -> Result<(), CtlError> {
    let (service_account, audience, duration, bound_object_kind, bound_object_name) = match what {
        CreateWhat::Token {
            service_account,
            audience,
            duration,
            bound_object_kind,
            bound_object_name,
        } => (
            service_account,
            audience,
            duration,
            bound_object_kind,
            bound_object_name,
        ),
        CreateWhat::Job { name, from } => {
            return crate::jobs::create_from(ctx, &name, &from, out).await;
        }
    };
    let mut spec = json!({"audiences": audience});
    if let Some(duration) = duration {
        spec["expirationSeconds"] = json!(duration.as_secs());
    }
    if let (Some(kind), Some(name)) = (bound_object_kind, bound_object_name) {
        spec["boundObjectRef"] = json!({"kind": kind, "apiVersion": "v1", "name": name});
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let path = format!(
        "/api/v1/namespaces/{}/serviceaccounts/{service_account}/token",
        ctx.namespace()
    );
    let target = Target {
        rt: &berth_api::kinds::SERVICE_ACCOUNTS,
        name: &service_account,
    };
    let reply = ctx
        .call(Method::POST, &path, Some(&body), Some(target))
        .await?;
    emit(out, str_at(&reply, "/status/token"));
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct CanIArgs {
    /// The verb: get, list, watch, create, update, patch, delete, deletecollection, ...
    #[arg(required_unless_present = "list")]
    pub verb: Option<String>,
    /// A resource type (`pods`, `deployments.apps`), TYPE/NAME, or a path such as /metrics.
    #[arg(required_unless_present = "list")]
    pub what: Option<String>,
    /// A subresource (`exec`, `log`, `scale`, `status`).
    #[arg(long)]
    pub subresource: Option<String>,
    /// Ask about every namespace (a namespace-wide grant does not answer yes).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// List every action allowed in the namespace.
    #[arg(long)]
    pub list: bool,
}

pub async fn run(
    ctx: &Ctx,
    action: Auth,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let Auth::CanI(args) = action;
    if args.list {
        return list(ctx, &args, out).await;
    }
    let (Some(verb), Some(what)) = (&args.verb, &args.what) else {
        return Err(CtlError::Usage(
            "give a VERB and a TYPE, or --list".to_owned(),
        ));
    };
    let spec = if what.starts_with('/') {
        json!({"nonResourceAttributes": {"verb": verb, "path": what}})
    } else {
        let (kind, name) = what.split_once('/').unwrap_or((what.as_str(), ""));
        let (group, resource, namespaced) = match resolve(kind) {
            Ok(rt) => (rt.group.to_owned(), rt.plural.to_owned(), rt.namespaced),
            // Asked anyway, as kubectl does: the rules may name resources Berth does not serve.
            Err(_) => {
                let _ = writeln!(
                    err,
                    "Warning: the server doesn't have a resource type '{kind}'"
                );
                let (resource, group) = kind.split_once('.').unwrap_or((kind, ""));
                (group.to_owned(), resource.to_owned(), true)
            }
        };
        let namespace = if args.all_namespaces || !namespaced {
            ""
        } else {
            ctx.namespace()
        };
        json!({"resourceAttributes": {
            "namespace": namespace,
            "verb": verb,
            "group": group,
            "resource": resource,
            "subresource": args.subresource.clone().unwrap_or_default(),
            "name": name,
        }})
    };
    let review = ctx
        .call(
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(&json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": spec,
            })),
            None,
        )
        .await?;
    if review.pointer("/status/allowed") == Some(&Value::Bool(true)) {
        emit(out, "yes");
        Ok(())
    } else {
        emit(out, "no");
        Err(CtlError::Denied)
    }
}

/// kubectl's `--list` table: one row per resource (group-qualified) of each rule, then
/// one per non-resource rule.
async fn list(ctx: &Ctx, args: &CanIArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let namespace = if args.all_namespaces {
        ""
    } else {
        ctx.namespace()
    };
    let review = ctx
        .call(
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            Some(&json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectRulesReview",
                "spec": {"namespace": namespace},
            })),
            None,
        )
        .await?;
    let strings = |rule: &Value, field: &str| -> Vec<String> {
        rule.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let bracketed = |items: &[String]| format!("[{}]", items.join(" "));
    let mut rows = Vec::new();
    for rule in review
        .pointer("/status/resourceRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let verbs = bracketed(&strings(rule, "verbs"));
        let names = bracketed(&strings(rule, "resourceNames"));
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                let qualified = if group.is_empty() {
                    resource
                } else {
                    format!("{resource}.{group}")
                };
                rows.push(vec![
                    qualified,
                    "[]".to_owned(),
                    names.clone(),
                    verbs.clone(),
                ]);
            }
        }
    }
    // Resource rules first, then non-resource ones, each sorted, as kubectl prints them.
    rows.sort();
    rows.dedup();
    let mut urls = Vec::new();
    for rule in review
        .pointer("/status/nonResourceRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        urls.push(vec![
            String::new(),
            bracketed(&strings(rule, "nonResourceURLs")),
            "[]".to_owned(),
            bracketed(&strings(rule, "verbs")),
        ]);
    }
    urls.sort();
    urls.dedup();
    rows.extend(urls);
    let mut table = vec![vec![
        "Resources".to_owned(),
        "Non-Resource URLs".to_owned(),
        "Resource Names".to_owned(),
        "Verbs".to_owned(),
    ]];
    table.extend(rows);
    emit(out, &output::table(&table));
    Ok(())
}
