//! berthctl: the command-line client. Commands map onto the REST API (see docs/API.md)
//! and behave like kubectl's: aligned tables, `-o wide|yaml|json|name`, exit code 1 on
//! any error, and error text that says what to do about it. docs/CLI.md is the reference.
//!
//! Each verb group lives in its own file and exposes `Args` (clap) and `run`; adding a
//! verb is a variant in [`Command`] and an arm in [`run`].

mod apply;
mod auth;
pub mod client;
mod cluster;
mod describe;
mod drain;
mod forward;
mod get;
mod jobs;
mod node;
mod output;
mod rollout;
mod session;
mod top;

use std::{io::Write, path::PathBuf};

use berth_api::{RESOURCE_TYPES, ResourceType, kubeconfig::Kubeconfig};
use clap::{CommandFactory as _, Parser, Subcommand};
use hyper::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Client, ClientError};

pub const DEFAULT_CONFIG: &str = "/var/lib/berth/admin.conf";

#[derive(Debug, Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Command-line client for the Berth mesh control API",
    long_about = "Command-line client for the Berth mesh control API. Works like kubectl: \
                  the same verbs, resource names, selectors, output formats and exit codes.",
    after_help = "Examples:\n  berthctl apply -f app.yaml\n  berthctl get pods -o wide\n  \
                  berthctl describe deployment web\n  berthctl rollout status deployment web\n\n\
                  The server address, CA and token come from the file the control plane \
                  writes at first start (--kubeconfig, BERTH_CONFIG, else the first file of \
                  KUBECONFIG as kubectl reads it; default /var/lib/berth/admin.conf)."
)]
pub struct Cli {
    /// Client configuration written by the control plane at first start [default: the
    /// first file of KUBECONFIG, else /var/lib/berth/admin.conf].
    #[arg(long, env = "BERTH_CONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Server address, overriding the one in the configuration (https://host:port);
    /// several control planes of one cluster comma-separated, tried in order.
    #[arg(long, env = "BERTH_SERVER", global = true)]
    pub server: Option<String>,
    /// Bearer token, overriding the one in the configuration.
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Namespace of namespaced objects [default: default].
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Apply(apply::ApplyArgs),
    Create(apply::CreateArgs),
    Get(get::GetArgs),
    Describe(describe::DescribeArgs),
    Delete(DeleteArgs),
    Scale(rollout::ScaleArgs),
    /// Follow, list and undo Deployment and DaemonSet rollouts (status, history, undo).
    #[command(after_help = "Examples:\n  berthctl rollout status deployment web\n  \
                            berthctl rollout history deployment web\n  \
                            berthctl rollout undo deployment web --to-revision 2")]
    Rollout {
        #[command(subcommand)]
        action: rollout::Rollout,
    },
    Events(describe::EventsArgs),
    /// CPU and memory in use by nodes or pods (`top nodes`, `top pods`).
    #[command(
        after_help = "Examples:\n  berthctl top nodes\n  berthctl top pods -A\n  \
                            berthctl top pods -l app=web"
    )]
    Top {
        #[command(subcommand)]
        what: top::Top,
    },
    Cordon(drain::CordonArgs),
    /// Mark a node schedulable again.
    #[command(after_help = "Examples:\n  berthctl uncordon node-1")]
    Uncordon(drain::CordonArgs),
    Drain(drain::DrainArgs),
    Logs(node::LogsArgs),
    Exec(node::ExecArgs),
    Attach(node::AttachArgs),
    PortForward(forward::PortForwardArgs),
    /// Create, list and delete the bootstrap tokens node agents join with.
    #[command(after_help = "Examples:\n  berthctl token create --ttl 2h\n  \
                            berthctl token list\n  berthctl token delete abcdef\n\n\
                            Nodes: `berthctl get nodes -o wide`, `berthctl describe node NAME`.")]
    Token {
        #[command(subcommand)]
        action: cluster::Token,
    },
    /// Whether you may do something (`auth can-i`), as the server's RBAC answers.
    Auth {
        #[command(subcommand)]
        action: auth::Auth,
    },
    /// Back up the cluster: every object and its CA, tokens and keys (`snapshot save`).
    Snapshot {
        #[command(subcommand)]
        action: cluster::Snapshot,
    },
    Completion(CompletionArgs),
}

/// Delete objects by kind and name.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berthctl delete deployment web\n  \
                        berthctl delete svc web db\n  berthctl delete deploy/web\n  \
                        berthctl delete pods -l app=web\n  \
                        berthctl delete pod web-1a2b3 --grace-period=5\n  \
                        berthctl delete pod web-1a2b3 --grace-period=0 --force")]
pub struct DeleteArgs {
    /// Kind, e.g. deployment, svc, pods, or KIND/NAME.
    pub kind: String,
    /// Names of the objects; with -l, none.
    pub names: Vec<String>,
    /// Delete every object of the kind that matches this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Succeed when an object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Seconds a pod gets to shut down (preStop hook and SIGTERM) before it is killed;
    /// -1 uses the pod's terminationGracePeriodSeconds. 0 means 1 unless --force.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Remove the objects from the API at once, without waiting for their node to stop
    /// them (the containers may run on for a while).
    #[arg(long)]
    pub force: bool,
}

impl DeleteArgs {
    /// The DeleteOptions body, as kubectl builds it from the same flags.
    fn options(&self) -> Result<Option<Value>, CtlError> {
        let grace = match (self.grace_period, self.force) {
            (grace, _) if grace < -1 => {
                return Err(CtlError::Usage(
                    "--grace-period must be -1 (the pod's own) or more".to_owned(),
                ));
            }
            (-1 | 0, true) => Some(0),
            (-1, false) => None,
            // Immediate deletion needs --force; without it the shortest grace is 1s.
            (0, false) => Some(1),
            (grace, _) => Some(grace),
        };
        Ok(grace.map(|grace| json!({"gracePeriodSeconds": grace})))
    }
}

/// Print a shell completion script.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  source <(berthctl completion bash)\n  \
                        berthctl completion zsh > \"${fpath[1]}/_berthctl\"\n  \
                        berthctl completion fish > ~/.config/fish/completions/berthctl.fish")]
pub struct CompletionArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error(
        "cannot reach the control plane at {server} ({source}); the address comes from {origin}. \
         Is berth-control running? Pass --server or BERTH_SERVER to use another address"
    )]
    Unreachable {
        server: String,
        origin: String,
        source: std::io::Error,
    },
    #[error(
        "the server rejected the token from {origin} (Unauthorized): use the admin.conf the \
         control plane wrote at first start, or pass --token / BERTH_TOKEN"
    )]
    Unauthorized { origin: String },
    #[error("{0}")]
    Io(String),
    #[error("the server doesn't have a resource type {kind:?}{}", did_you_mean(.suggestion))]
    UnknownKind {
        kind: String,
        suggestion: Option<String>,
    },
    /// Printed as kubectl prints server errors: `Error from server (Reason): ...`.
    #[error("Error from server ({reason}): {message}")]
    Server { reason: String, message: String },
    /// What the user asked for cannot work; the message says why and what to do.
    #[error("{0}")]
    Usage(String),
    #[error("timed out waiting for the condition")]
    Timeout,
    /// `exec`: the command ran and failed; berthctl exits with its code.
    #[error("command terminated with exit code {0}")]
    CommandExited(i32),
    /// `auth can-i` answered no (printed already): exit 1 with nothing more to say.
    #[error("no")]
    Denied,
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default()
}

impl CtlError {
    /// How main prints it: server errors as kubectl does, the rest as `error: ...`.
    pub fn render(&self) -> String {
        match self {
            Self::Server { .. } => self.to_string(),
            Self::Denied => String::new(),
            _ => format!("error: {self}"),
        }
    }
}

/// The resource type for what a user typed: plural, singular, kind or short name.
pub fn resolve(kind: &str) -> Result<&'static ResourceType, CtlError> {
    let lower = kind.to_ascii_lowercase();
    // `deployments.apps` and `deployment.apps/web` style names.
    let bare = lower.split_once('.').map_or(lower.as_str(), |(k, _)| k);
    RESOURCE_TYPES
        .iter()
        .find(|t| {
            t.plural == bare || t.kind.eq_ignore_ascii_case(bare) || t.short_names.contains(&bare)
        })
        .ok_or_else(|| CtlError::UnknownKind {
            kind: kind.to_owned(),
            suggestion: closest_kind(&lower),
        })
}

/// The known kind name nearest to a mistyped one, when it is near enough to be a typo.
fn closest_kind(typed: &str) -> Option<String> {
    // Every name of a kind, with the plural it stands for.
    let candidates = RESOURCE_TYPES.iter().flat_map(|t| {
        [t.plural.to_owned(), t.kind.to_ascii_lowercase()]
            .into_iter()
            .chain(t.short_names.iter().map(|s| (*s).to_owned()))
            .map(|name| (name, t.plural))
    });
    let (distance, plural) = candidates
        .map(|(name, plural)| (edit_distance(typed, &name), plural))
        .min_by_key(|(d, _)| *d)?;
    (distance <= typed.len().div_ceil(3).max(2)).then(|| plural.to_owned())
}

/// Levenshtein distance over bytes (kind names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `deployment.apps` / `service`: how kubectl names a kind in its messages.
pub fn kind_ref(rt: &ResourceType) -> String {
    let kind = rt.kind.to_ascii_lowercase();
    if rt.group.is_empty() {
        kind
    } else {
        format!("{kind}.{}", rt.group)
    }
}

/// Percent-encodes a query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// What every verb needs: the client, the namespace, and where settings came from (for
/// error messages).
pub struct Ctx {
    client: Client,
    namespace: Option<String>,
    server: String,
    /// Where the server address came from: the config file or the flag.
    server_origin: String,
    /// Where the token came from.
    token_origin: String,
}

/// The object an API call is about, so errors can name it as kubectl does.
impl Cli {
    /// The configuration file: `--kubeconfig` or `BERTH_CONFIG`, else the first file of
    /// `KUBECONFIG` (a `:`-separated list, as kubectl reads it), else the control plane's
    /// default.
    pub fn config_path(&self) -> PathBuf {
        if let Some(path) = &self.kubeconfig {
            return path.clone();
        }
        std::env::var_os("KUBECONFIG")
            .and_then(|list| std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub rt: &'a ResourceType,
    pub name: &'a str,
}

impl Ctx {
    fn new(cli: &Cli) -> Result<Self, CtlError> {
        let config = &cli.config_path();
        let file = if config.exists() || cli.server.is_none() {
            Some(Kubeconfig::load(config).map_err(|e| {
                CtlError::Io(format!(
                    "{e}\n(berthctl reads the file the control plane writes at first start; \
                     pass --kubeconfig or BERTH_CONFIG, or --server with --token)"
                ))
            })?)
        } else {
            None
        };
        let mut settings = match &file {
            Some(file) => file
                .settings()
                .map_err(|e| CtlError::Io(format!("{}: {e}", config.display())))?,
            None => berth_api::kubeconfig::ClientSettings {
                server: String::new(),
                failover_servers: Vec::new(),
                ca_pem: None,
                token: None,
                client_certificate: None,
            },
        };
        let origin = match &cli.server {
            Some(servers) => {
                let mut servers = servers.split(',').map(str::trim).map(str::to_owned);
                settings.server = servers.next().unwrap_or_default();
                settings.failover_servers = servers.collect();
                "--server/BERTH_SERVER".to_owned()
            }
            None => config.display().to_string(),
        };
        if let Some(token) = &cli.token {
            settings.token = Some(token.clone());
        }
        let token_origin = if cli.token.is_some() {
            "--token/BERTH_TOKEN".to_owned()
        } else {
            config.display().to_string()
        };
        let server = std::iter::once(&settings.server)
            .chain(&settings.failover_servers)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            client: Client::new(settings)?,
            namespace: cli.namespace.clone(),
            server,
            server_origin: origin,
            token_origin,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// The namespace only when the user gave one with -n.
    pub fn explicit_namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// A transport failure, named the way a user can act on.
    pub fn transport(&self, error: ClientError) -> CtlError {
        match error {
            ClientError::Connect { source, .. } => CtlError::Unreachable {
                server: self.server.clone(),
                origin: self.server_origin.clone(),
                source,
            },
            other => CtlError::Client(other),
        }
    }

    /// The collection path of `rt` in `namespace` (None: all namespaces / cluster scope).
    pub fn collection(rt: &ResourceType, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if rt.namespaced => {
                format!("{}/namespaces/{ns}/{}", rt.group_path(), rt.plural)
            }
            _ => format!("{}/{}", rt.group_path(), rt.plural),
        }
    }

    pub fn object_path(&self, rt: &ResourceType, name: &str) -> String {
        format!("{}/{name}", Self::collection(rt, Some(self.namespace())))
    }

    /// One JSON request; errors become kubectl-style messages about `target`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        target: Option<Target<'_>>,
    ) -> Result<Value, CtlError> {
        let (status, value) = self
            .client
            .json(method, path, body)
            .await
            .map_err(|e| self.transport(e))?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(self.failure(status, &value, target))
        }
    }

    pub fn failure(
        &self,
        status: StatusCode,
        body: &Value,
        target: Option<Target<'_>>,
    ) -> CtlError {
        if status == StatusCode::UNAUTHORIZED {
            return CtlError::Unauthorized {
                origin: self.token_origin.clone(),
            };
        }
        let reason = body["reason"]
            .as_str()
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("Unknown"))
            .to_owned();
        let message = match (reason.as_str(), target) {
            ("NotFound", Some(t)) => format!("{} {:?} not found", plural_ref(t.rt), t.name),
            ("AlreadyExists", Some(t)) => {
                format!("{} {:?} already exists", plural_ref(t.rt), t.name)
            }
            _ => {
                let mut message = body["message"]
                    .as_str()
                    .unwrap_or("request failed")
                    .to_owned();
                for cause in body
                    .pointer("/details/causes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let cause =
                        format!("{}: {}", str_at(cause, "/field"), str_at(cause, "/message"));
                    // A message that names its one cause already needn't repeat it.
                    if !message.contains(&cause) {
                        message.push_str(&format!("\n  {cause}"));
                    }
                }
                message
            }
        };
        CtlError::Server { reason, message }
    }
}

/// Whether [`Ctx::follow`] goes on after an event.
pub enum Flow {
    Continue,
    Done,
}

impl Ctx {
    /// Follows the watch of `collection` (with `query`) from `resource_version`,
    /// handing each ADDED, MODIFIED and DELETED event to `on_event` until it says Done.
    /// A watch ends at the server's timeout; the next resumes where it stopped. So does
    /// one whose control plane went away, at another when there are several.
    pub async fn follow(
        &self,
        collection: &str,
        query: &[String],
        mut resource_version: String,
        target: Option<Target<'_>>,
        mut on_event: impl FnMut(&str, &Value) -> Result<Flow, CtlError>,
    ) -> Result<(), CtlError> {
        loop {
            let mut path = format!("{collection}?watch=true&resourceVersion={resource_version}");
            for q in query {
                path.push('&');
                path.push_str(q);
            }
            let mut watch = self
                .client
                .watch(&path)
                .await
                .map_err(|e| self.transport(e))?;
            if !watch.status.is_success() {
                let body = watch.next().await.ok().flatten().unwrap_or(Value::Null);
                return Err(self.failure(watch.status, &body, target));
            }
            loop {
                let event = match watch.next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    // Cut off mid-stream: resume from the last version seen (at another
                    // control plane if this one is gone; if none answers, that error).
                    Err(_) if self.client.servers() > 1 => break,
                    Err(e) => return Err(self.transport(e)),
                };
                let object = &event["object"];
                match event["type"].as_str().unwrap_or_default() {
                    "ERROR" => return Err(self.failure(watch.status, object, target)),
                    "BOOKMARK" => {}
                    kind => {
                        if let Flow::Done = on_event(kind, object)? {
                            return Ok(());
                        }
                    }
                }
                let version = str_at(object, "/metadata/resourceVersion");
                if !version.is_empty() {
                    resource_version = version.to_owned();
                }
            }
        }
    }
}

/// `deployments.apps` / `services`, as in kubectl's NotFound messages.
pub fn plural_ref(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.to_owned()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

/// Runs one command, writing its output to `out` as it goes (watches and waits stream)
/// and warnings to `err`.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CtlError> {
    if let Command::Completion(args) = &cli.command {
        clap_complete::generate(args.shell, &mut Cli::command(), "berthctl", out);
        return Ok(());
    }
    let ctx = Ctx::new(&cli)?;
    match cli.command {
        Command::Apply(args) => apply::apply(&ctx, args, out, err).await,
        Command::Create(args) => apply::create(&ctx, args, out, err).await,
        Command::Get(args) => get::run(&ctx, args, out, err).await,
        Command::Describe(args) => describe::run(&ctx, args, out, err).await,
        Command::Delete(args) => delete(&ctx, args, out).await,
        Command::Scale(args) => rollout::scale(&ctx, args, out).await,
        Command::Rollout { action } => rollout::run(&ctx, action, out).await,
        Command::Events(args) => describe::events(&ctx, args, out, err).await,
        Command::Top { what } => top::run(&ctx, what, out, err).await,
        Command::Cordon(args) => drain::cordon(&ctx, &args.node, true, out).await,
        Command::Uncordon(args) => drain::cordon(&ctx, &args.node, false, out).await,
        Command::Drain(args) => drain::drain(&ctx, &args, out, err).await,
        Command::Logs(args) => node::logs(&ctx, &args, out).await,
        Command::Exec(args) => node::exec(&ctx, &args, out, err).await,
        Command::Attach(args) => node::attach(&ctx, &args, out, err).await,
        Command::PortForward(args) => forward::run(&ctx, &args, out, err).await,
        Command::Token { action } => cluster::token(&ctx, action, out).await,
        Command::Auth { action } => auth::run(&ctx, action, out, err).await,
        Command::Snapshot { action } => cluster::snapshot(&ctx, action, out).await,
        Command::Completion(_) => Ok(()),
    }
}

/// Writes one line; a closed stdout (`| head`) is not an error worth reporting.
pub fn emit(out: &mut dyn Write, text: &str) {
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

async fn delete(ctx: &Ctx, args: DeleteArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let options = args.options()?;
    let (kind, mut names) = match args.kind.split_once('/') {
        Some((kind, name)) => (kind.to_owned(), vec![name.to_owned()]),
        None => (args.kind.clone(), Vec::new()),
    };
    names.extend(args.names);
    let rt = resolve(&kind)?;
    let names = match (&args.selector, names.is_empty()) {
        (Some(selector), true) => {
            let path = format!(
                "{}?labelSelector={}",
                Ctx::collection(rt, Some(ctx.namespace())),
                encode(selector)
            );
            let list = ctx.call(Method::GET, &path, None, None).await?;
            let names: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| str_at(i, "/metadata/name").to_owned())
                .collect();
            if names.is_empty() {
                emit(out, "No resources found");
            }
            names
        }
        (None, false) => names,
        _ => {
            return Err(CtlError::Usage(
                "give names or -l SELECTOR, not both and not neither \
                 (e.g. `berthctl delete deployment web`)"
                    .to_owned(),
            ));
        }
    };
    if args.force {
        emit(
            out,
            "Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely.",
        );
    }
    for name in names {
        let target = Target { rt, name: &name };
        match ctx
            .call(
                Method::DELETE,
                &ctx.object_path(rt, &name),
                options.as_ref(),
                Some(target),
            )
            .await
        {
            Ok(_) => emit(out, &format!("{}/{name} deleted", kind_ref(rt))),
            Err(CtlError::Server { reason, .. })
                if reason == "NotFound" && args.ignore_not_found => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_like_kubectl() {
        for (name, kind) in [
            ("po", "Pod"),
            ("pods", "Pod"),
            ("deployment", "Deployment"),
            ("deploy", "Deployment"),
            ("deployments.apps", "Deployment"),
            ("svc", "Service"),
        ] {
            assert_eq!(resolve(name).map(|t| t.kind).ok(), Some(kind));
        }
        assert_eq!(encode("app in (a,b)"), "app%20in%20%28a%2Cb%29");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_kinds_suggest_the_closest() {
        for (typed, expected) in [
            ("deploymnets", Some("deployments")),
            ("deploment", Some("deployments")),
            ("service", None),
            ("podz", Some("pods")),
            ("sevices", Some("services")),
            ("widgets", None),
        ] {
            match resolve(typed) {
                Ok(_) => assert!(expected.is_none(), "{typed} resolved"),
                Err(CtlError::UnknownKind { suggestion, .. }) => {
                    assert_eq!(suggestion.as_deref(), expected, "{typed}");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}
