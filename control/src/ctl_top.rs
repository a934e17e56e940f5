//! `berthctl top nodes|pods`: CPU and memory in use, read from the metrics.k8s.io API
//! (the agents' latest figures), printed like `kubectl top`.

use axum::http::Method;
use berth_api::core::{parse_cpu_millis, parse_memory_bytes};
use clap::Subcommand;
use serde_json::Value;

use crate::{client::Client, ctl::CtlError, util};

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

async fn get(client: &Client, path: &str) -> Result<Value, CtlError> {
    let (status, body) = client.json(Method::GET, path, None).await?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(CtlError::Server(
            body["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned(),
        ))
    }
}

/// `?labelSelector=...` when one is given.
fn query(selector: Option<&str>) -> String {
    selector.map_or_else(String::new, |s| {
        format!("?labelSelector={}", util::percent_encode(s))
    })
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
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

/// Left-aligned columns three spaces apart, as kubectl prints them.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("   ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| (*h).to_owned()).collect()
}

/// Runs `top`; `namespace` is the `-n` value.
pub async fn run(client: &Client, namespace: &str, top: Top) -> Result<String, CtlError> {
    match top {
        Top::Nodes { name, selector } => {
            let nodes = items(
                &get(
                    client,
                    &format!("/api/v1/nodes{}", query(selector.as_deref())),
                )
                .await?,
            );
            let usage = items(
                &get(
                    client,
                    &format!("{METRICS}/nodes{}", query(selector.as_deref())),
                )
                .await?,
            );
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
                    Some(name) => CtlError::Server(format!("nodes \"{name}\" not found")),
                    None => CtlError::Server("no nodes found".to_owned()),
                });
            }
            if usage.is_empty() {
                return Err(CtlError::Server("metrics not available yet".to_owned()));
            }
            Ok(aligned(&rows))
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
            let reply = get(client, &path).await?;
            let pods = if name.is_some() {
                vec![reply]
            } else {
                items(&reply)
            };
            if pods.is_empty() {
                return Ok(if all_namespaces {
                    "No resources found".to_owned()
                } else {
                    format!("No resources found in {namespace} namespace.")
                });
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
            Ok(aligned(&rows))
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
        assert_eq!(aligned(&rows), "NAME        CPU(cores)\nweb-abcde   250m");
        assert_eq!(percent(250, 4000), "6%");
        assert_eq!(percent(1, 0), "<unknown>");
        assert_eq!(query(Some("app=web")), "?labelSelector=app%3Dweb");
    }
}
