//! Kubernetes' table columns for the built-in kinds, as `kubectl get` prints them: the
//! one definition behind the API server's Table responses and berthctl's own tables.
//! Cells are read from an object's JSON form, the form both of them hold.

use serde_json::Value;

use crate::{ResourceType, time};

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// A column of a kind's table; `wide` ones show with `-o wide` only (priority 1 in a
/// Table response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub wide: bool,
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

pub fn or_none(text: String) -> String {
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

/// A label selector as kubectl prints one (`FormatLabelSelector`): `app=db,tier in
/// (a,b),!legacy`; `<none>` when it selects everything.
fn selector_text(selector: Option<&Value>) -> String {
    let labels = pairs(selector.and_then(|s| s.get("matchLabels")));
    let expressions = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|req| {
            let key = str_at(req, "/key");
            let values: Vec<&str> = req
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match str_at(req, "/operator") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "DoesNotExist" => format!("!{key}"),
                _ => key.to_owned(),
            }
        });
    let parts: Vec<String> = std::iter::once(labels)
        .filter(|l| !l.is_empty())
        .chain(expressions)
        .collect();
    or_none(parts.join(","))
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
/// kubectl's PORTS of a slice: the numbers, `<unset>` for a port without one.
fn slice_ports(slice: &Value) -> String {
    let ports: Vec<String> = slice
        .pointer("/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|port| match port.get("port").and_then(Value::as_i64) {
            Some(number) => number.to_string(),
            None => "<unset>".to_owned(),
        })
        .collect();
    or_none(ports.join(","))
}

/// kubectl's ENDPOINTS of a slice: the first three addresses, then how many more.
fn slice_addresses(slice: &Value) -> String {
    let all: Vec<&str> = slice
        .pointer("/endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|endpoint| endpoint["addresses"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    abbreviated(&all)
}

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
    abbreviated(&all)
}

/// At most three items, then how many more, as kubectl abbreviates endpoint lists.
fn abbreviated<S: AsRef<str>>(all: &[S]) -> String {
    let joined = |items: &[S]| {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(",")
    };
    match all.len() {
        0 => "<none>".to_owned(),
        n if n > 3 => format!("{} + {} more...", joined(&all[..3]), n - 3),
        _ => joined(all),
    }
}

/// `cpu: 90%/50%, new_connections_per_second: 12/10` as kubectl prints an autoscaler's
/// targets: the current figure (`<unknown>` before the first evaluation) over the target.
/// kubectl's Job STATUS: the condition that ended it, else whether it is suspended or
/// running.
fn job_status(job: &Value) -> &'static str {
    if condition(job, "Complete") == "True" {
        "Complete"
    } else if condition(job, "Failed") == "True" {
        "Failed"
    } else if !str_at(job, "/metadata/deletionTimestamp").is_empty() {
        "Terminating"
    } else if condition(job, "Suspended") == "True" {
        "Suspended"
    } else {
        "Running"
    }
}

/// `succeeded/completions`, or for a work queue (no completions) `succeeded/1 of
/// parallelism`.
fn job_completions(job: &Value) -> String {
    let succeeded = int_at(job, "/status/succeeded");
    match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(completions) => format!("{succeeded}/{completions}"),
        None => format!(
            "{succeeded}/1 of {}",
            job.pointer("/spec/parallelism")
                .and_then(Value::as_i64)
                .unwrap_or(1)
        ),
    }
}

/// From the start to the completion, or to now while it runs.
fn job_duration(job: &Value) -> String {
    let Some(start) = time::parse_rfc3339(str_at(job, "/status/startTime")) else {
        return String::new();
    };
    let end =
        time::parse_rfc3339(str_at(job, "/status/completionTime")).unwrap_or_else(time::unix_now);
    human_duration(end as i64 - start as i64)
}

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

/// The columns of `rt`'s table: the normal ones, then the wide ones.
pub fn columns(rt: &ResourceType) -> Vec<Column> {
    let (normal, wide): (&[&str], &[&str]) = match rt.kind {
        "Pod" => (
            &["Name", "Ready", "Status", "Restarts", "Age"],
            &["IP", "Node"],
        ),
        "Deployment" => (
            &["Name", "Ready", "Up-to-date", "Available", "Age"],
            &["Containers", "Images", "Selector"],
        ),
        "ReplicaSet" => (
            &["Name", "Desired", "Current", "Ready", "Age"],
            &["Containers", "Images", "Selector"],
        ),
        "DaemonSet" => (
            &[
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
            ],
            &["Containers", "Images", "Selector"],
        ),
        "PodDisruptionBudget" => (
            &[
                "Name",
                "Min Available",
                "Max Unavailable",
                "Allowed Disruptions",
                "Age",
            ],
            &[],
        ),
        "StatefulSet" => (&["Name", "Ready", "Age"], &["Containers", "Images"]),
        "NetworkPolicy" => (&["Name", "Pod-Selector", "Age"], &[]),
        "Service" => (
            &[
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
            ],
            &["Selector"],
        ),
        "Endpoints" => (&["Name", "Endpoints", "Age"], &[]),
        "EndpointSlice" => (&["Name", "AddressType", "Ports", "Endpoints", "Age"], &[]),
        "Node" => (
            &["Name", "Status", "Age"],
            &["Internal-IP", "Pod-CIDR", "CPU", "Memory"],
        ),
        "Event" => (
            &["Last Seen", "Type", "Reason", "Object", "Message"],
            &["Count"],
        ),
        "ControllerRevision" => (&["Name", "Controller", "Revision", "Age"], &[]),
        "ConfigMap" => (&["Name", "Data", "Age"], &[]),
        "Secret" => (&["Name", "Type", "Data", "Age"], &[]),
        "PersistentVolumeClaim" => (
            &[
                "Name",
                "Status",
                "Volume",
                "Capacity",
                "Access Modes",
                "StorageClass",
                "Age",
            ],
            &["VolumeMode"],
        ),
        "PersistentVolume" => (
            &[
                "Name",
                "Capacity",
                "Access Modes",
                "Reclaim Policy",
                "Status",
                "Claim",
                "StorageClass",
                "Age",
            ],
            &["VolumeMode"],
        ),
        "HorizontalPodAutoscaler" => (
            &[
                "Name",
                "Reference",
                "Targets",
                "MinPods",
                "MaxPods",
                "Replicas",
                "Age",
            ],
            &[],
        ),
        "Job" => (
            &["Name", "Status", "Completions", "Duration", "Age"],
            &["Containers", "Images", "Selector"],
        ),
        "CronJob" => (
            &[
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age",
            ],
            &["Containers", "Images", "Selector"],
        ),
        "Role" | "ClusterRole" => (&["Name", "Created At"], &[]),
        "RoleBinding" | "ClusterRoleBinding" => (
            &["Name", "Role", "Age"],
            &["Users", "Groups", "ServiceAccounts"],
        ),
        _ => (&["Name", "Age"], &[]),
    };
    normal
        .iter()
        .map(|name| Column { name, wide: false })
        .chain(wide.iter().map(|name| Column { name, wide: true }))
        .collect()
}

/// The cells of `item`'s row, one per column of [`columns`].
pub fn cells(rt: &ResourceType, item: &Value) -> Vec<String> {
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
        "StatefulSet" => {
            let (names, images) = containers(item, "/spec/template/spec/containers");
            (
                vec![
                    name,
                    format!(
                        "{}/{}",
                        int_at(item, "/status/readyReplicas"),
                        int_at(item, "/spec/replicas")
                    ),
                    created,
                ],
                vec![names, images],
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
        "DaemonSet" => {
            let (names, images) = containers(item, "/spec/template/spec/containers");
            (
                vec![
                    name,
                    int_at(item, "/status/desiredNumberScheduled").to_string(),
                    int_at(item, "/status/currentNumberScheduled").to_string(),
                    int_at(item, "/status/numberReady").to_string(),
                    int_at(item, "/status/updatedNumberScheduled").to_string(),
                    int_at(item, "/status/numberAvailable").to_string(),
                    or_none(pairs(item.pointer("/spec/template/spec/nodeSelector"))),
                    created,
                ],
                vec![
                    names,
                    images,
                    or_none(pairs(item.pointer("/spec/selector/matchLabels"))),
                ],
            )
        }
        "NetworkPolicy" => (
            vec![
                name,
                selector_text(item.pointer("/spec/podSelector")),
                created,
            ],
            vec![],
        ),
        "PodDisruptionBudget" => {
            let bound = |pointer: &str| match item.pointer(pointer) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => "N/A".to_owned(),
            };
            (
                vec![
                    name,
                    bound("/spec/minAvailable"),
                    bound("/spec/maxUnavailable"),
                    int_at(item, "/status/disruptionsAllowed").to_string(),
                    created,
                ],
                vec![],
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
        "EndpointSlice" => (
            vec![
                name,
                str_at(item, "/addressType").to_owned(),
                slice_ports(item),
                slice_addresses(item),
                created,
            ],
            vec![],
        ),
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
        "Job" => {
            let (names, images) = containers(item, "/spec/template/spec/containers");
            (
                vec![
                    name,
                    job_status(item).to_owned(),
                    job_completions(item),
                    job_duration(item),
                    created,
                ],
                vec![
                    names,
                    images,
                    or_none(pairs(item.pointer("/spec/selector/matchLabels"))),
                ],
            )
        }
        "CronJob" => {
            let (names, images) =
                containers(item, "/spec/jobTemplate/spec/template/spec/containers");
            let last = if str_at(item, "/status/lastScheduleTime").is_empty() {
                "<none>".to_owned()
            } else {
                age(item, "/status/lastScheduleTime")
            };
            (
                vec![
                    name,
                    str_at(item, "/spec/schedule").to_owned(),
                    or_none(str_at(item, "/spec/timeZone").to_owned()),
                    if item.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
                        "True"
                    } else {
                        "False"
                    }
                    .to_owned(),
                    item.pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                        .to_string(),
                    last,
                    created,
                ],
                vec![
                    names,
                    images,
                    or_none(pairs(
                        item.pointer("/spec/jobTemplate/spec/selector/matchLabels"),
                    )),
                ],
            )
        }
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
        "PersistentVolumeClaim" => (
            vec![
                name,
                or_none(str_at(item, "/status/phase").to_owned()),
                str_at(item, "/spec/volumeName").to_owned(),
                str_at(item, "/status/capacity/storage").to_owned(),
                access_modes(item.pointer("/status/accessModes")),
                storage_class(item),
                created,
            ],
            vec![volume_mode(item)],
        ),
        "PersistentVolume" => {
            let claim = match (
                str_at(item, "/spec/claimRef/namespace"),
                str_at(item, "/spec/claimRef/name"),
            ) {
                (_, "") => String::new(),
                (namespace, name) => format!("{namespace}/{name}"),
            };
            let policy = match str_at(item, "/spec/persistentVolumeReclaimPolicy") {
                "" => "Retain",
                policy => policy,
            };
            (
                vec![
                    name,
                    str_at(item, "/spec/capacity/storage").to_owned(),
                    access_modes(item.pointer("/spec/accessModes")),
                    policy.to_owned(),
                    str_at(item, "/status/phase").to_owned(),
                    claim,
                    storage_class(item),
                    created,
                ],
                vec![volume_mode(item)],
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
        "Role" | "ClusterRole" => (
            vec![name, str_at(item, "/metadata/creationTimestamp").to_owned()],
            vec![],
        ),
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                let names: Vec<String> = item
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|s| str_at(s, "/kind") == kind)
                    .map(|s| match str_at(s, "/namespace") {
                        "" => str_at(s, "/name").to_owned(),
                        ns => format!("{ns}/{}", str_at(s, "/name")),
                    })
                    .collect();
                names.join(", ")
            };
            (
                vec![
                    name,
                    format!(
                        "{}/{}",
                        str_at(item, "/roleRef/kind"),
                        str_at(item, "/roleRef/name")
                    ),
                    created,
                ],
                vec![
                    subjects("User"),
                    subjects("Group"),
                    subjects("ServiceAccount"),
                ],
            )
        }
        _ => (vec![name, created], vec![]),
    };
    normal.into_iter().chain(extra).collect()
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(modes: Option<&Value>) -> String {
    let short = |mode: &str| match mode {
        "ReadWriteOnce" => "RWO".to_owned(),
        "ReadOnlyMany" => "ROX".to_owned(),
        "ReadWriteMany" => "RWX".to_owned(),
        "ReadWriteOncePod" => "RWOP".to_owned(),
        other => other.to_owned(),
    };
    modes
        .and_then(Value::as_array)
        .map(|modes| {
            modes
                .iter()
                .filter_map(Value::as_str)
                .map(short)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn storage_class(item: &Value) -> String {
    or_none(str_at(item, "/spec/storageClassName").to_owned())
}

fn volume_mode(item: &Value) -> String {
    match str_at(item, "/spec/volumeMode") {
        "" => "Filesystem".to_owned(),
        mode => mode.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
    fn pods_summarise() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(
            pod_summary(&pod),
            ("1/2".to_owned(), "CrashLoopBackOff".to_owned(), 3)
        );
    }

    #[test]
    fn statefulsets_read_like_kubectl() {
        let sets = crate::find_by_plural("apps", "statefulsets").expect("a kind");
        let names: Vec<&str> = columns(sets)
            .iter()
            .filter(|c| !c.wide)
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Ready", "Age"]);
        let set = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3,
            "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}},
            "status": {"readyReplicas": 2}});
        let row = cells(sets, &set);
        assert_eq!(row[..2], ["web", "2/3"]);
        assert_eq!(row[3..], ["nginx", "nginx:1"]);
    }

    #[test]
    fn network_policies_read_like_kubectl() {
        let policies =
            crate::find_by_plural("networking.k8s.io", "networkpolicies").expect("a kind");
        let names: Vec<&str> = columns(policies).iter().map(|c| c.name).collect();
        assert_eq!(names, ["Name", "Pod-Selector", "Age"]);
        let all = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(cells(policies, &all)[..2], ["deny", "<none>"]);
        let some = json!({"metadata": {"name": "db"}, "spec": {"podSelector": {
            "matchLabels": {"app": "db"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "legacy", "operator": "DoesNotExist"}]}}});
        assert_eq!(cells(policies, &some)[1], "app=db,tier in (a,b),!legacy");
    }

    #[test]
    fn claims_and_volumes_read_like_kubectl() {
        let claims = crate::find_by_plural("", "persistentvolumeclaims").expect("a kind");
        let claim = json!({"metadata": {"name": "data"},
            "spec": {"storageClassName": "local", "volumeName": "pvc-1"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"},
                       "accessModes": ["ReadWriteOnce"]}});
        let row = cells(claims, &claim);
        assert_eq!(row[..6], ["data", "Bound", "pvc-1", "1Gi", "RWO", "local"]);
        assert_eq!(row[7], "Filesystem");
        let volumes = crate::find_by_plural("", "persistentvolumes").expect("a kind");
        let volume = json!({"metadata": {"name": "pvc-1"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "local",
                     "claimRef": {"namespace": "db", "name": "data"}},
            "status": {"phase": "Bound"}});
        let row = cells(volumes, &volume);
        assert_eq!(
            row[..7],
            ["pvc-1", "1Gi", "RWO", "Delete", "Bound", "db/data", "local"]
        );
    }

    #[test]
    fn every_kind_has_a_cell_per_column() {
        for rt in crate::RESOURCE_TYPES {
            assert_eq!(
                cells(rt, &json!({})).len(),
                columns(rt).len(),
                "{}",
                rt.kind
            );
        }
    }
}
