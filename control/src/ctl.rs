//! berthctl: the command-line client. Commands map one-to-one onto the REST API (see
//! docs/API.md); output is kubectl-like text, or the server's JSON with `-o json`.

use std::path::PathBuf;

use axum::http::{Method, StatusCode};
use berth_api::{RESOURCE_TYPES, ResourceType};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, ClientError};

#[derive(Debug, Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Command-line client for the Berth control plane"
)]
pub struct Cli {
    /// Client configuration written by the control plane at first start.
    #[arg(
        long,
        env = "BERTH_CONFIG",
        default_value = "/var/lib/berth/admin.conf",
        global = true
    )]
    pub kubeconfig: PathBuf,
    /// Namespace of namespaced objects.
    #[arg(short, long, default_value = "default", global = true)]
    pub namespace: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update every object in a manifest (all or nothing).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// List objects of a kind, or show one.
    Get {
        kind: String,
        name: Option<String>,
        /// Label selector, e.g. app=web,tier!=db.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// `json` prints the server's objects.
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Delete one object.
    Delete { kind: String, name: String },
    /// Set the replicas of a Deployment or ReplicaSet.
    Scale {
        kind: String,
        name: String,
        #[arg(long)]
        replicas: i32,
    },
    /// Roll a Deployment back (`rollout undo deployment NAME`).
    Rollout {
        #[command(subcommand)]
        action: Rollout,
    },
    /// CPU and memory in use by nodes or pods (`top nodes`, `top pods`).
    Top {
        #[command(subcommand)]
        what: crate::ctl_top::Top,
    },
    /// Events in the namespace, optionally about one object.
    Events {
        /// Only events about this object name.
        #[arg(long = "for")]
        for_name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Rollout {
    Undo {
        kind: String,
        name: String,
        /// 0: the previous revision.
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("unknown kind {0:?}; known: {1}")]
    UnknownKind(String, String),
    /// The server's Status message, with every cause on its own line.
    #[error("{0}")]
    Server(String),
}

/// Short names as kubectl knows them.
const ALIASES: &[(&str, &str)] = &[
    ("po", "pods"),
    ("svc", "services"),
    ("ep", "endpoints"),
    ("no", "nodes"),
    ("ev", "events"),
    ("deploy", "deployments"),
    ("rs", "replicasets"),
    ("hpa", "horizontalpodautoscalers"),
];

fn resolve(kind: &str) -> Result<&'static ResourceType, CtlError> {
    let lower = kind.to_ascii_lowercase();
    let plural = ALIASES
        .iter()
        .find(|(a, _)| *a == lower)
        .map_or(lower.as_str(), |(_, p)| *p);
    RESOURCE_TYPES
        .iter()
        .find(|t| t.plural == plural || t.kind.to_ascii_lowercase() == plural)
        .ok_or_else(|| {
            let known: Vec<&str> = RESOURCE_TYPES.iter().map(|t| t.plural).collect();
            CtlError::UnknownKind(kind.to_owned(), known.join(", "))
        })
}

fn collection(rt: &ResourceType, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if rt.namespaced => format!("{}/namespaces/{ns}/{}", rt.group_path(), rt.plural),
        _ => format!("{}/{}", rt.group_path(), rt.plural),
    }
}

fn failure(body: &Value) -> CtlError {
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
        let field = cause["field"].as_str().unwrap_or_default();
        let text = cause["message"].as_str().unwrap_or_default();
        message.push_str(&format!("\n  {field}: {text}"));
    }
    CtlError::Server(message)
}

async fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, CtlError> {
    let (status, value) = client.json(method, path, body).await?;
    if status.is_success() {
        Ok(value)
    } else {
        Err(failure(&value))
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// One line per object; a few kinds get the columns people look at first.
fn table(rt: &ResourceType, items: &[Value]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let header: Vec<&str> = match rt.kind {
        "Pod" => vec!["NAME", "NODE", "PHASE", "IP"],
        "Deployment" | "ReplicaSet" => vec!["NAME", "DESIRED", "READY"],
        "Node" => vec!["NAME", "READY", "POD-CIDR"],
        "Service" => vec!["NAME", "CLUSTER-IP", "PORTS"],
        "Event" => vec!["OBJECT", "TYPE", "REASON", "MESSAGE"],
        _ => vec!["NAME"],
    };
    rows.push(header.iter().map(|h| (*h).to_owned()).collect());
    for item in items {
        let name = str_at(item, "/metadata/name").to_owned();
        let row = match rt.kind {
            "Pod" => vec![
                name,
                str_at(item, "/spec/nodeName").to_owned(),
                str_at(item, "/status/phase").to_owned(),
                str_at(item, "/status/podIP").to_owned(),
            ],
            "Deployment" | "ReplicaSet" => vec![
                name,
                item.pointer("/spec/replicas")
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                item.pointer("/status/readyReplicas")
                    .map_or("0".to_owned(), ToString::to_string),
            ],
            "Node" => {
                let ready = item
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .map_or("Unknown", |c| c["status"].as_str().unwrap_or("Unknown"));
                vec![
                    name,
                    ready.to_owned(),
                    str_at(item, "/spec/podCIDR").to_owned(),
                ]
            }
            "Service" => {
                let ports: Vec<String> = item
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                    .collect();
                vec![
                    name,
                    str_at(item, "/spec/clusterIP").to_owned(),
                    ports.join(","),
                ]
            }
            "Event" => vec![
                format!(
                    "{}/{}",
                    str_at(item, "/involvedObject/kind").to_ascii_lowercase(),
                    str_at(item, "/involvedObject/name")
                ),
                str_at(item, "/type").to_owned(),
                str_at(item, "/reason").to_owned(),
                str_at(item, "/message").to_owned(),
            ],
            _ => vec![name],
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
                .collect::<Vec<_>>()
                .join("   ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs one command; returns what to print on stdout (warnings go to `warnings`).
pub async fn run(cli: Cli, warnings: &mut Vec<String>) -> Result<String, CtlError> {
    let client = Client::from_kubeconfig(&cli.kubeconfig)?;
    let ns = cli.namespace.as_str();
    match cli.command {
        Command::Apply { file, dry_run } => {
            let manifest = std::fs::read(&file).map_err(|e| CtlError::Io(file.clone(), e))?;
            let path = if dry_run {
                "/apply?dryRun=true"
            } else {
                "/apply"
            };
            let reply = client
                .request(Method::POST, path, Some((&manifest, "application/yaml")))
                .await?;
            let body = reply.json()?;
            if reply.status != StatusCode::OK {
                return Err(failure(&body));
            }
            let mut lines = Vec::new();
            for item in body["items"].as_array().into_iter().flatten() {
                let kind = str_at(item, "/kind").to_ascii_lowercase();
                let group = str_at(item, "/apiVersion")
                    .split_once('/')
                    .map(|(g, _)| format!(".{g}"))
                    .unwrap_or_default();
                let suffix = if dry_run { " (dry run)" } else { "" };
                lines.push(format!(
                    "{kind}{group}/{} {}{suffix}",
                    str_at(item, "/name"),
                    str_at(item, "/action")
                ));
                for warning in item["warnings"].as_array().into_iter().flatten() {
                    warnings.push(format!(
                        "{kind}/{}: {}",
                        str_at(item, "/name"),
                        warning.as_str().unwrap_or_default()
                    ));
                }
            }
            Ok(lines.join("\n"))
        }
        Command::Get {
            kind,
            name,
            selector,
            all_namespaces,
            output,
        } => {
            let rt = resolve(&kind)?;
            let scope = (!all_namespaces).then_some(ns);
            let json_output = output.as_deref() == Some("json");
            if let Some(name) = name {
                let object = call(
                    &client,
                    Method::GET,
                    &format!("{}/{name}", collection(rt, Some(ns))),
                    None,
                )
                .await?;
                return Ok(if json_output {
                    serde_json::to_string_pretty(&object).unwrap_or_default()
                } else {
                    table(rt, &[object])
                });
            }
            let mut path = collection(rt, scope);
            if let Some(selector) = selector {
                path.push_str(&format!("?labelSelector={}", encode(&selector)));
            }
            let list = call(&client, Method::GET, &path, None).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            Ok(if json_output {
                serde_json::to_string_pretty(&list).unwrap_or_default()
            } else {
                table(rt, &items)
            })
        }
        Command::Delete { kind, name } => {
            let rt = resolve(&kind)?;
            call(
                &client,
                Method::DELETE,
                &format!("{}/{name}", collection(rt, Some(ns))),
                None,
            )
            .await?;
            Ok(format!("{}/{name} deleted", rt.kind.to_ascii_lowercase()))
        }
        Command::Scale {
            kind,
            name,
            replicas,
        } => {
            let rt = resolve(&kind)?;
            let path = format!("{}/{name}/scale", collection(rt, Some(ns)));
            call(
                &client,
                Method::PUT,
                &path,
                Some(&json!({"spec": {"replicas": replicas}})),
            )
            .await?;
            Ok(format!("{}/{name} scaled", rt.kind.to_ascii_lowercase()))
        }
        Command::Rollout {
            action:
                Rollout::Undo {
                    kind,
                    name,
                    to_revision,
                },
        } => {
            let rt = resolve(&kind)?;
            let path = format!("{}/{name}/rollback", collection(rt, Some(ns)));
            let object = call(
                &client,
                Method::POST,
                &path,
                Some(&json!({"toRevision": to_revision})),
            )
            .await?;
            let revision = str_at(
                &object,
                "/metadata/annotations/deployment.kubernetes.io~1revision",
            );
            Ok(format!(
                "{}/{name} rolled back (now revision {revision})",
                rt.kind.to_ascii_lowercase()
            ))
        }
        Command::Top { what } => crate::ctl_top::run(&client, ns, what).await,
        Command::Events { for_name } => {
            let rt = resolve("events")?;
            let mut path = collection(rt, Some(ns));
            if let Some(name) = for_name {
                path.push_str(&format!(
                    "?fieldSelector={}",
                    encode(&format!("involvedObject.name={name}"))
                ));
            }
            let list = call(&client, Method::GET, &path, None).await?;
            let mut items = list["items"].as_array().cloned().unwrap_or_default();
            items.sort_by(|a, b| str_at(a, "/lastTimestamp").cmp(str_at(b, "/lastTimestamp")));
            Ok(table(rt, &items))
        }
    }
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
            ("svc", "Service"),
        ] {
            assert_eq!(resolve(name).map(|t| t.kind).ok(), Some(kind));
        }
        assert!(resolve("widgets").is_err());
        assert_eq!(encode("app in (a,b)"), "app%20in%20%28a%2Cb%29");
    }
}
