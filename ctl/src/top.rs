//! `berthctl top nodes|pods`: CPU and memory in use, read from the metrics.k8s.io API
//! (the agents' latest figures), printed like `kubectl top`.

use std::io::Write;

use berth_api::core::{parse_cpu_millis, parse_memory_bytes};
use clap::Subcommand;
use hyper::http::Method;
use serde_json::Value;

use super::{CtlError, Ctx, emit, encode, output, str_at};

#[derive(Debug, Subcommand)]
pub enum Top {
    /// CPU and memory of nodes, also as a share of what they offer to pods.
    Nodes {
        name: Option<String>,
        /// Label selector, e.g. zone=a.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// CPU and memory of pods (the sum of their containers).
    Pods {
        name: Option<String>,
        /// Label selector, e.g. app=web.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
}

const METRICS: &str = "/apis/metrics.k8s.io/v1beta1";

/// `?labelSelector=...` when one is given.
fn query(selector: Option<&str>) -> String {
    selector.map_or_else(String::new, |s| format!("?labelSelector={}", encode(s)))
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn cpu(quantity: &str) -> u64 {
    parse_cpu_millis(quantity).unwrap_or(0)
}

fn memory(quantity: &str) -> u64 {
    parse_memory_bytes(quantity).unwrap_or(0)
}

fn percent(used: u64, offered: u64) -> String {
    (used * 100)
        .checked_div(offered)
        .map_or_else(|| "<unknown>".to_owned(), |p| format!("{p}%"))
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| (*h).to_owned()).collect()
}

/// Runs `top`; `namespace` is the `-n` value.
pub async fn run(
    ctx: &Ctx,
    top: Top,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let namespace = ctx.namespace();
    let get = |path: String| async move { ctx.call(Method::GET, &path, None, None).await };
    match top {
        Top::Nodes { name, selector } => {
            let nodes = items(&get(format!("/api/v1/nodes{}", query(selector.as_deref()))).await?);
            let usage =
                items(&get(format!("{METRICS}/nodes{}", query(selector.as_deref()))).await?);
            let mut rows = vec![header(&[
                "NAME",
                "CPU(cores)",
                "CPU%",
                "MEMORY(bytes)",
                "MEMORY%",
            ])];
            for node in nodes.iter().filter(|n| {
                name.as_deref()
                    .is_none_or(|wanted| str_at(n, "/metadata/name") == wanted)
            }) {
                let node_name = str_at(node, "/metadata/name");
                let Some(figures) = usage
                    .iter()
                    .find(|u| str_at(u, "/metadata/name") == node_name)
                else {
                    rows.push(vec![
                        node_name.to_owned(),
                        "<unknown>".to_owned(),
                        "<unknown>".to_owned(),
                        "<unknown>".to_owned(),
                        "<unknown>".to_owned(),
                    ]);
                    continue;
                };
                let (cores, bytes) = (
                    cpu(str_at(figures, "/usage/cpu")),
                    memory(str_at(figures, "/usage/memory")),
                );
                rows.push(vec![
                    node_name.to_owned(),
                    format!("{cores}m"),
                    percent(cores, cpu(str_at(node, "/status/allocatable/cpu"))),
                    format!("{}Mi", bytes >> 20),
                    percent(bytes, memory(str_at(node, "/status/allocatable/memory"))),
                ]);
            }
            if rows.len() == 1 {
                return Err(match name {
                    Some(name) => CtlError::Server {
                        reason: "NotFound".to_owned(),
                        message: format!("nodes \"{name}\" not found"),
                    },
                    None => CtlError::Usage("no nodes found".to_owned()),
                });
            }
            if usage.is_empty() {
                return Err(CtlError::Usage(
                    "metrics not available yet: agents report figures with their heartbeats"
                        .to_owned(),
                ));
            }
            emit(out, &output::table(&rows));
            Ok(())
        }
        Top::Pods {
            name,
            selector,
            all_namespaces,
        } => {
            let scope = if all_namespaces {
                String::new()
            } else {
                format!("/namespaces/{namespace}")
            };
            let path = match &name {
                Some(name) => format!("{METRICS}/namespaces/{namespace}/pods/{name}"),
                None => format!("{METRICS}{scope}/pods{}", query(selector.as_deref())),
            };
            let reply = get(path).await?;
            let pods = if name.is_some() {
                vec![reply]
            } else {
                items(&reply)
            };
            if pods.is_empty() {
                let _ = writeln!(
                    err,
                    "{}",
                    if all_namespaces {
                        "No resources found".to_owned()
                    } else {
                        format!("No resources found in {namespace} namespace.")
                    }
                );
                return Ok(());
            }
            let mut names = vec!["NAME", "CPU(cores)", "MEMORY(bytes)"];
            if all_namespaces {
                names.insert(0, "NAMESPACE");
            }
            let mut rows = vec![header(&names)];
            for pod in &pods {
                let containers = pod["containers"].as_array().cloned().unwrap_or_default();
                let cores: u64 = containers
                    .iter()
                    .map(|c| cpu(str_at(c, "/usage/cpu")))
                    .sum();
                let bytes: u64 = containers
                    .iter()
                    .map(|c| memory(str_at(c, "/usage/memory")))
                    .sum();
                let mut row = vec![
                    str_at(pod, "/metadata/name").to_owned(),
                    format!("{cores}m"),
                    format!("{}Mi", bytes >> 20),
                ];
                if all_namespaces {
                    row.insert(0, str_at(pod, "/metadata/namespace").to_owned());
                }
                rows.push(row);
            }
            emit(out, &output::table(&rows));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_like_kubectl() {
        let rows = vec![
            header(&["NAME", "CPU(cores)"]),
            vec!["web-abcde".to_owned(), "250m".to_owned()],
        ];
        assert_eq!(
            output::table(&rows),
            "NAME        CPU(cores)\nweb-abcde   250m"
        );
        assert_eq!(percent(250, 4000), "6%");
        assert_eq!(percent(1, 0), "<unknown>");
        assert_eq!(query(Some("app=web")), "?labelSelector=app%3Dweb");
    }
}
