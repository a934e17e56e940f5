//! Output formats shared by the verbs: kubectl's tables (normal and wide), ages, and
//! `-o yaml|json|name`.

use berth_api::ResourceType;
use serde_json::{Value, json};

use super::{CtlError, int_at, kind_ref, str_at};
use berth_api::time;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Wide,
    Yaml,
    Json,
    Name,
}

/// kubectl's HumanDuration: `45s`, `3m20s`, `15m`, `5h10m`, `2d3h`, `30d`, `2y10d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        return match s % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = s / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            rest => format!("{hours}h{rest}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            rest => format!("{}d{rest}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            rest => format!("{}y{rest}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Age of a timestamp field, `<unknown>` when it is missing.
pub fn age(object: &Value, pointer: &str) -> String {
    match time::parse_rfc3339(str_at(object, pointer)) {
        Some(at) => human_duration(time::unix_now() as i64 - at as i64),
        None => "<unknown>".to_owned(),
    }
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".to_owned()
    } else {
        text
    }
}

/// `k=v,k2=v2` of a JSON map, in stored order.
pub fn pairs(value: Option<&Value>) -> String {
    joined(value, "=", ",")
}

/// A JSON map of strings as `key{between}value` items separated by `separator`.
pub fn joined(value: Option<&Value>, between: &str, separator: &str) -> String {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}{between}{}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(separator)
        })
        .unwrap_or_default()
}

fn containers(item: &Value, pointer: &str) -> (String, String) {
    let list = item
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = list.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = list.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// `80/TCP,443:30443/TCP`.
pub fn service_ports(service: &Value) -> String {
    let ports: Vec<String> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    or_none(ports.join(","))
}

/// `ready/total` containers of a pod, its status word and its restarts.
pub fn pod_summary(pod: &Value) -> (String, String, i64) {
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = if statuses.is_empty() {
        // Agents that report only the pod's Ready condition: all or nothing.
        if condition(pod, "Ready") == "True" {
            total
        } else {
            0
        }
    } else {
        statuses.iter().filter(|s| s["ready"] == true).count()
    };
    let restarts = statuses.iter().map(|s| int_at(s, "/restartCount")).sum();
    let waiting = statuses
        .iter()
        .find_map(|s| s.pointer("/state/waiting/reason").and_then(Value::as_str));
    let status = if pod.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating".to_owned()
    } else if let Some(reason) = waiting {
        reason.to_owned()
    } else {
        match str_at(pod, "/status/phase") {
            "" => "Pending".to_owned(),
            phase => phase.to_owned(),
        }
    };
    (format!("{ready}/{total}"), status, restarts)
}

/// A condition's status (`True`, `False`, `Unknown`), or "" when absent.
pub fn condition<'a>(object: &'a Value, type_: &str) -> &'a str {
    object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .map_or("", |c| c["status"].as_str().unwrap_or("Unknown"))
}

pub fn node_status(node: &Value) -> String {
    let ready = match condition(node, "Ready") {
        "True" => "Ready",
        _ => "NotReady",
    };
    if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_owned()
    }
}

pub fn node_address(node: &Value, type_: &str) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == type_))
        .map_or("<none>", |a| a["address"].as_str().unwrap_or("<none>"))
        .to_owned()
}

/// `10.0.0.1:80,10.0.0.2:80 + 3 more...` as kubectl shortens it.
fn endpoints_summary(endpoints: &Value) -> String {
    let mut all = Vec::new();
    for subset in endpoints
        .pointer("/subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| int_at(p, "/port"))
            .collect();
        for address in subset["addresses"].as_array().into_iter().flatten() {
            let ip = str_at(address, "/ip");
            if ports.is_empty() {
                all.push(ip.to_owned());
            }
            for port in &ports {
                all.push(format!("{ip}:{port}"));
            }
        }
    }
    match all.len() {
        0 => "<none>".to_owned(),
        n if n > 3 => format!("{} + {} more...", all[..3].join(","), n - 3),
        _ => all.join(","),
    }
}

/// `cpu: 90%/50%, new_connections_per_second: 12/10` as kubectl prints an autoscaler's
/// targets: the current figure (`<unknown>` before the first evaluation) over the target.
fn autoscaler_targets(hpa: &Value) -> String {
    let metrics = hpa
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current = hpa
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let shown: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, metric)| {
            let (name, target) = match str_at(metric, "/type") {
                "Pods" => (
                    str_at(metric, "/pods/metric/name"),
                    &metric["pods"]["target"],
                ),
                _ => (
                    str_at(metric, "/resource/name"),
                    &metric["resource"]["target"],
                ),
            };
            let now = current.get(i).map(|c| {
                let c = if c["pods"].is_object() {
                    &c["pods"]
                } else {
                    &c["resource"]
                };
                &c["current"]
            });
            let figure = |v: &Value, key: &str, suffix: &str| match &v[key] {
                Value::Null => None,
                Value::String(s) => Some(format!("{s}{suffix}")),
                other => Some(format!("{other}{suffix}")),
            };
            let (wanted, got) = if target["averageUtilization"].is_null() {
                (
                    figure(target, "averageValue", ""),
                    now.and_then(|n| figure(n, "averageValue", "")),
                )
            } else {
                (
                    figure(target, "averageUtilization", "%"),
                    now.and_then(|n| figure(n, "averageUtilization", "%")),
                )
            };
            format!(
                "{name}: {}/{}",
                got.unwrap_or_else(|| "<unknown>".to_owned()),
                wanted.unwrap_or_default()
            )
        })
        .collect();
    if shown.is_empty() {
        "<none>".to_owned()
    } else {
        shown.join(", ")
    }
}

/// The column headers of `rt`'s table.
pub fn header(rt: &ResourceType, wide: bool, namespaces: bool) -> Vec<String> {
    let (normal, extra): (&[&str], &[&str]) = match rt.kind {
        "Pod" => (
            &["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            &["IP", "NODE"],
        ),
        "Deployment" => (
            &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "ReplicaSet" => (
            &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "Service" => (
            &[
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
            &["SELECTOR"],
        ),
        "Endpoints" => (&["NAME", "ENDPOINTS", "AGE"], &[]),
        "Node" => (
            &["NAME", "STATUS", "AGE"],
            &["INTERNAL-IP", "POD-CIDR", "CPU", "MEMORY"],
        ),
        "Event" => (
            &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            &["COUNT"],
        ),
        "ControllerRevision" => (&["NAME", "CONTROLLER", "REVISION", "AGE"], &[]),
        "ConfigMap" => (&["NAME", "DATA", "AGE"], &[]),
        "Secret" => (&["NAME", "TYPE", "DATA", "AGE"], &[]),
        "HorizontalPodAutoscaler" => (
            &[
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE",
            ],
            &[],
        ),
        _ => (&["NAME", "AGE"], &[]),
    };
    let mut columns: Vec<String> = Vec::new();
    if namespaces && rt.namespaced {
        columns.push("NAMESPACE".to_owned());
    }
    columns.extend(normal.iter().map(|c| (*c).to_owned()));
    if wide {
        columns.extend(extra.iter().map(|c| (*c).to_owned()));
    }
    columns
}

/// One table row for `item`, matching [`header`].
pub fn row(rt: &ResourceType, item: &Value, wide: bool, namespaces: bool) -> Vec<String> {
    let name = str_at(item, "/metadata/name").to_owned();
    let created = age(item, "/metadata/creationTimestamp");
    let (normal, extra): (Vec<String>, Vec<String>) = match rt.kind {
        "Pod" => {
            let (ready, status, restarts) = pod_summary(item);
            (
                vec![name, ready, status, restarts.to_string(), created],
                vec![
                    or_none(str_at(item, "/status/podIP").to_owned()),
                    or_none(str_at(item, "/spec/nodeName").to_owned()),
                ],
            )
        }
        "Deployment" => {
            let (names, images) = containers(item, "/spec/template/spec/containers");
            (
                vec![
                    name,
                    format!(
                        "{}/{}",
                        int_at(item, "/status/readyReplicas"),
                        int_at(item, "/spec/replicas")
                    ),
                    int_at(item, "/status/updatedReplicas").to_string(),
                    int_at(item, "/status/availableReplicas").to_string(),
                    created,
                ],
                vec![
                    names,
                    images,
                    or_none(pairs(item.pointer("/spec/selector/matchLabels"))),
                ],
            )
        }
        "ReplicaSet" => {
            let (names, images) = containers(item, "/spec/template/spec/containers");
            (
                vec![
                    name,
                    int_at(item, "/spec/replicas").to_string(),
                    int_at(item, "/status/replicas").to_string(),
                    int_at(item, "/status/readyReplicas").to_string(),
                    created,
                ],
                vec![
                    names,
                    images,
                    or_none(pairs(item.pointer("/spec/selector/matchLabels"))),
                ],
            )
        }
        "Service" => {
            let type_ = match str_at(item, "/spec/type") {
                "" => "ClusterIP",
                t => t,
            };
            let external: Vec<&str> = item
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            (
                vec![
                    name,
                    type_.to_owned(),
                    or_none(str_at(item, "/spec/clusterIP").to_owned()),
                    or_none(external.join(",")),
                    service_ports(item),
                    created,
                ],
                vec![or_none(pairs(item.pointer("/spec/selector")))],
            )
        }
        "Endpoints" => (vec![name, endpoints_summary(item), created], vec![]),
        "Node" => (
            vec![name, node_status(item), created],
            vec![
                node_address(item, "InternalIP"),
                or_none(str_at(item, "/spec/podCIDR").to_owned()),
                or_none(str_at(item, "/status/allocatable/cpu").to_owned()),
                or_none(str_at(item, "/status/allocatable/memory").to_owned()),
            ],
        ),
        "Event" => (
            vec![
                age(item, "/lastTimestamp"),
                str_at(item, "/type").to_owned(),
                str_at(item, "/reason").to_owned(),
                format!(
                    "{}/{}",
                    str_at(item, "/involvedObject/kind").to_ascii_lowercase(),
                    str_at(item, "/involvedObject/name")
                ),
                str_at(item, "/message").to_owned(),
            ],
            vec![int_at(item, "/count").max(1).to_string()],
        ),
        "HorizontalPodAutoscaler" => (
            vec![
                name,
                format!(
                    "{}/{}",
                    str_at(item, "/spec/scaleTargetRef/kind"),
                    str_at(item, "/spec/scaleTargetRef/name")
                ),
                autoscaler_targets(item),
                item.pointer("/spec/minReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .to_string(),
                int_at(item, "/spec/maxReplicas").to_string(),
                int_at(item, "/status/currentReplicas").to_string(),
                created,
            ],
            vec![],
        ),
        // How many values, as kubectl counts them (never the values).
        "ConfigMap" => {
            let count = |field: &str| {
                item.get(field)
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            };
            (
                vec![
                    name,
                    (count("data") + count("binaryData")).to_string(),
                    created,
                ],
                vec![],
            )
        }
        "Secret" => {
            let data = item
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            let type_ = match str_at(item, "/type") {
                "" => "Opaque",
                other => other,
            };
            (
                vec![name, type_.to_owned(), data.to_string(), created],
                vec![],
            )
        }
        "ControllerRevision" => {
            let owner = item
                .pointer("/metadata/ownerReferences/0")
                .map(|o| {
                    format!(
                        "{}/{}",
                        str_at(o, "/kind").to_ascii_lowercase(),
                        str_at(o, "/name")
                    )
                })
                .unwrap_or_else(|| "<none>".to_owned());
            (
                vec![name, owner, int_at(item, "/revision").to_string(), created],
                vec![],
            )
        }
        _ => (vec![name, created], vec![]),
    };
    let mut cells = Vec::new();
    if namespaces && rt.namespaced {
        cells.push(str_at(item, "/metadata/namespace").to_owned());
    }
    cells.extend(normal);
    if wide {
        cells.extend(extra);
    }
    cells
}

/// Column widths that fit every row.
pub fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// One aligned line, three spaces between columns as kubectl's tabwriter does.
pub fn line(cells: &[String], widths: &[usize]) -> String {
    cells
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let width = widths.get(i).copied().unwrap_or(0);
            format!("{cell:<width$}")
        })
        .collect::<Vec<_>>()
        .join("   ")
        .trim_end()
        .to_owned()
}

/// A whole aligned table, header first.
pub fn table(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    rows.iter()
        .map(|r| line(r, &widths))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `deployment.apps/web`, as `-o name` prints it.
pub fn name_of(rt: &ResourceType, item: &Value) -> String {
    format!("{}/{}", kind_ref(rt), str_at(item, "/metadata/name"))
}

/// One object or a `kind: List` of them, as JSON or YAML.
pub fn serialize(value: &Value, format: Format) -> Result<String, CtlError> {
    match format {
        Format::Yaml => serde_norway::to_string(value)
            .map(|s| s.trim_end().to_owned())
            .map_err(|e| CtlError::Io(format!("encoding YAML: {e}"))),
        _ => serde_json::to_string_pretty(value)
            .map_err(|e| CtlError::Io(format!("encoding JSON: {e}"))),
    }
}

/// kubectl's generic list: `{"apiVersion": "v1", "kind": "List", "items": [...]}`.
pub fn list_of(items: Vec<Value>, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (seconds, text) in [
            (-5, "<invalid>"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (900, "15m"),
            (3 * 3600 + 600, "3h10m"),
            (10 * 3600, "10h"),
            (2 * 86_400 + 3 * 3600, "2d3h"),
            (30 * 86_400, "30d"),
            (3 * 365 * 86_400 + 10 * 86_400, "3y10d"),
        ] {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn tables_align_and_pods_summarise() {
        let rows = vec![
            vec!["NAME".to_owned(), "READY".to_owned()],
            vec!["a-long-name".to_owned(), "1/1".to_owned()],
        ];
        assert_eq!(table(&rows), "NAME          READY\na-long-name   1/1");
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(
            pod_summary(&pod),
            ("1/2".to_owned(), "CrashLoopBackOff".to_owned(), 3)
        );
    }
}
