//! `describe` (kubectl-like sections and the object's recent events) and `events`.

use std::io::Write;

use berth_api::{
    ResourceType,
    apps::template_hash,
    configuration::{ConfigMap, Secret},
    core::{IntOrString, Pod},
    meta::LabelSelector,
    networking::{self, EGRESS, INGRESS, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
};
use hyper::http::Method;
use serde_json::Value;

use super::{
    CtlError, Ctx, Target, emit, encode, int_at,
    output::{self, age, joined, pairs, selector_text},
    resolve, str_at,
};

/// Show details of objects and what happened to them recently.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berthctl describe deployment web\n  \
                        berthctl describe pods -l app=web\n  berthctl describe svc/web\n  \
                        berthctl describe node node-1")]
pub struct DescribeArgs {
    /// Kind (pods, deployments, services, nodes, ...), or KIND/NAME.
    pub kind: String,
    /// Names; with none, every object of the kind (or those matching -l).
    pub names: Vec<String>,
    /// Label selector, e.g. app=web.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// List events, oldest first.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berthctl events\n  berthctl events --for web\n  \
                        berthctl events --for deployment/web\n  berthctl events -A"
)]
pub struct EventsArgs {
    /// Only events about this object: NAME or KIND/NAME.
    #[arg(long = "for")]
    pub for_object: Option<String>,
    /// Events of all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// Aligned `Key:  value` lines, as kubectl's describe prints them.
#[derive(Default)]
struct Sheet {
    lines: Vec<(usize, String, Option<String>)>,
}

impl Sheet {
    fn field(&mut self, indent: usize, key: &str, value: impl Into<String>) {
        let value: String = value.into();
        let value = if value.is_empty() {
            "<none>".to_owned()
        } else {
            value
        };
        self.lines.push((indent, format!("{key}:"), Some(value)));
    }

    fn heading(&mut self, indent: usize, text: &str) {
        self.lines.push((indent, text.to_owned(), None));
    }

    fn text(&mut self, indent: usize, text: String) {
        self.lines.push((indent, text, None));
    }

    fn render(&self) -> String {
        // Values line up per indentation level, like a tabwriter per section.
        let width = |indent: usize| {
            self.lines
                .iter()
                .filter(|(i, _, v)| *i == indent && v.is_some())
                .map(|(_, k, _)| k.len())
                .max()
                .unwrap_or(0)
                + 2
        };
        self.lines
            .iter()
            .map(|(indent, key, value)| {
                let pad = " ".repeat(*indent);
                match value {
                    Some(value) => {
                        let value =
                            value.replace('\n', &format!("\n{pad}{}", " ".repeat(width(*indent))));
                        format!("{pad}{key:<w$}{value}", w = width(*indent))
                    }
                    None => format!("{pad}{key}"),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn map_lines(value: Option<&Value>) -> String {
    joined(value, "=", "\n")
}

fn metadata(sheet: &mut Sheet, rt: &ResourceType, object: &Value) {
    sheet.field(0, "Name", str_at(object, "/metadata/name"));
    if rt.namespaced {
        sheet.field(0, "Namespace", str_at(object, "/metadata/namespace"));
    }
    // kubectl's describer names the field so for NetworkPolicies.
    let created = if rt.kind == "NetworkPolicy" {
        "Created on"
    } else {
        "CreationTimestamp"
    };
    sheet.field(0, created, str_at(object, "/metadata/creationTimestamp"));
    sheet.field(0, "Labels", map_lines(object.pointer("/metadata/labels")));
    sheet.field(
        0,
        "Annotations",
        joined(object.pointer("/metadata/annotations"), ": ", "\n"),
    );
}

fn containers(sheet: &mut Sheet, indent: usize, spec: &Value) {
    sheet.heading(indent, "Containers:");
    for container in spec["containers"].as_array().into_iter().flatten() {
        sheet.heading(indent + 2, &format!("{}:", str_at(container, "/name")));
        sheet.field(indent + 4, "Image", str_at(container, "/image"));
        let ports: Vec<String> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/{}",
                    int_at(p, "/containerPort"),
                    p["protocol"].as_str().unwrap_or("TCP")
                )
            })
            .collect();
        sheet.field(indent + 4, "Ports", ports.join(", "));
        let args: Vec<&str> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !args.is_empty() {
            sheet.field(indent + 4, "Args", args.join(" "));
        }
        for probe in ["readinessProbe", "livenessProbe"] {
            if let Some(p) = container.get(probe) {
                let how = if let Some(get) = p.get("httpGet") {
                    format!("http-get :{}{}", get["port"], str_at(get, "/path"))
                } else if let Some(tcp) = p.get("tcpSocket") {
                    format!("tcp-socket :{}", tcp["port"])
                } else {
                    "exec".to_owned()
                };
                let label = if probe == "readinessProbe" {
                    "Readiness"
                } else {
                    "Liveness"
                };
                sheet.field(
                    indent + 4,
                    label,
                    format!(
                        "{how} period={}s",
                        p["periodSeconds"].as_i64().unwrap_or(10)
                    ),
                );
            }
        }
        let env: Vec<String> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{}={}", str_at(e, "/name"), str_at(e, "/value")))
            .collect();
        sheet.field(indent + 4, "Environment", env.join("\n"));
    }
}

fn conditions(sheet: &mut Sheet, object: &Value) {
    let list = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return;
    }
    sheet.heading(0, "Conditions:");
    let mut rows = vec![vec!["Type".to_owned(), "Status".to_owned()]];
    rows.extend(list.iter().map(|c| {
        vec![
            str_at(c, "/type").to_owned(),
            str_at(c, "/status").to_owned(),
        ]
    }));
    for line in output::table(&rows).lines() {
        sheet.text(2, line.to_owned());
    }
}

async fn describe_pod(ctx: &Ctx, sheet: &mut Sheet, pod: &Value) -> Result<(), CtlError> {
    let _ = ctx;
    let node = str_at(pod, "/spec/nodeName");
    let host = str_at(pod, "/status/hostIP");
    sheet.field(
        0,
        "Node",
        match (node, host) {
            ("", _) => String::new(),
            (n, "") => n.to_owned(),
            (n, h) => format!("{n}/{h}"),
        },
    );
    let (ready, status, restarts) = output::pod_summary(pod);
    sheet.field(0, "Status", status);
    sheet.field(0, "Ready", ready);
    sheet.field(0, "Restarts", restarts.to_string());
    sheet.field(0, "IP", str_at(pod, "/status/podIP"));
    let owner = pod
        .pointer("/metadata/ownerReferences/0")
        .map(|o| format!("{}/{}", str_at(o, "/kind"), str_at(o, "/name")))
        .unwrap_or_default();
    sheet.field(0, "Controlled By", owner);
    if !str_at(pod, "/status/message").is_empty() {
        sheet.field(0, "Message", str_at(pod, "/status/message"));
    }
    containers(sheet, 0, &pod["spec"]);
    conditions(sheet, pod);
    let selectors: Vec<String> = pod
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    sheet.field(0, "Node-Selectors", selectors.join("\n"));
    let tolerations: Vec<String> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(toleration)
        .collect();
    sheet.field(0, "Tolerations", tolerations.join("\n"));
    Ok(())
}

/// A toleration as kubectl prints it: `key=value:Effect op=Exists for 300s`.
fn toleration(t: &Value) -> String {
    let mut text = str_at(t, "/key").to_owned();
    if !str_at(t, "/value").is_empty() {
        text = format!("{text}={}", str_at(t, "/value"));
    }
    if !str_at(t, "/effect").is_empty() {
        text = format!("{text}:{}", str_at(t, "/effect"));
    }
    if str_at(t, "/operator") == "Exists" {
        text = format!("{text} op=Exists");
    }
    if let Some(seconds) = t.get("tolerationSeconds").and_then(Value::as_i64) {
        text = format!("{text} for {seconds}s");
    }
    text
}

/// A taint as kubectl prints it: `key=value:Effect`.
fn taint(t: &Value) -> String {
    match str_at(t, "/value") {
        "" => format!("{}:{}", str_at(t, "/key"), str_at(t, "/effect")),
        value => format!("{}={value}:{}", str_at(t, "/key"), str_at(t, "/effect")),
    }
}

async fn describe_deployment(
    ctx: &Ctx,
    sheet: &mut Sheet,
    deployment: &Value,
) -> Result<(), CtlError> {
    sheet.field(
        0,
        "Selector",
        pairs(deployment.pointer("/spec/selector/matchLabels")),
    );
    let desired = int_at(deployment, "/spec/replicas");
    let available = int_at(deployment, "/status/availableReplicas");
    sheet.field(
        0,
        "Replicas",
        format!(
            "{desired} desired | {} updated | {} total | {available} available | {} unavailable",
            int_at(deployment, "/status/updatedReplicas"),
            int_at(deployment, "/status/replicas"),
            (desired - available).max(0)
        ),
    );
    let strategy = match str_at(deployment, "/spec/strategy/type") {
        "" => "RollingUpdate",
        s => s,
    };
    sheet.field(0, "StrategyType", strategy);
    if let Some(rolling) = deployment.pointer("/spec/strategy/rollingUpdate") {
        let value = |v: &Value| match v {
            Value::Null => "25%".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        sheet.field(
            0,
            "RollingUpdateStrategy",
            format!(
                "{} max unavailable, {} max surge",
                value(&rolling["maxUnavailable"]),
                value(&rolling["maxSurge"])
            ),
        );
    }
    let template = deployment
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    sheet.heading(0, "Pod Template:");
    sheet.field(2, "Labels", map_lines(template.pointer("/metadata/labels")));
    containers(sheet, 2, &template["spec"]);
    conditions(sheet, deployment);

    // The ReplicaSets it owns: the one for the current template is the new one.
    let rt = resolve("replicasets")?;
    let list = ctx
        .call(
            Method::GET,
            &Ctx::collection(rt, Some(str_at(deployment, "/metadata/namespace"))),
            None,
            None,
        )
        .await?;
    let uid = str_at(deployment, "/metadata/uid");
    let new_name = format!(
        "{}-{}",
        str_at(deployment, "/metadata/name"),
        template_hash(&template)
    );
    let describe_rs = |rs: &Value| {
        format!(
            "{} ({}/{} replicas created)",
            str_at(rs, "/metadata/name"),
            int_at(rs, "/status/replicas"),
            int_at(rs, "/spec/replicas")
        )
    };
    let owned: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rs| {
            rs.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|o| o["uid"] == uid))
        })
        .collect();
    let old: Vec<String> = owned
        .iter()
        .filter(|rs| str_at(rs, "/metadata/name") != new_name && int_at(rs, "/spec/replicas") > 0)
        .map(|rs| describe_rs(rs))
        .collect();
    sheet.field(0, "OldReplicaSets", old.join(", "));
    sheet.field(
        0,
        "NewReplicaSet",
        owned
            .iter()
            .find(|rs| str_at(rs, "/metadata/name") == new_name)
            .map(|rs| describe_rs(rs))
            .unwrap_or_default(),
    );
    Ok(())
}

async fn describe_service(ctx: &Ctx, sheet: &mut Sheet, service: &Value) -> Result<(), CtlError> {
    sheet.field(0, "Selector", pairs(service.pointer("/spec/selector")));
    sheet.field(
        0,
        "Type",
        match str_at(service, "/spec/type") {
            "" => "ClusterIP",
            t => t,
        },
    );
    sheet.field(0, "IP", str_at(service, "/spec/clusterIP"));
    for port in service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let protocol = port["protocol"].as_str().unwrap_or("TCP");
        let name = match str_at(port, "/name") {
            "" => "<unset>",
            n => n,
        };
        sheet.field(0, "Port", format!("{name}  {}/{protocol}", port["port"]));
        let target = match &port["targetPort"] {
            Value::Null => port["port"].to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        sheet.field(0, "TargetPort", format!("{target}/{protocol}"));
        if let Some(node_port) = port["nodePort"].as_i64() {
            sheet.field(0, "NodePort", format!("{name}  {node_port}/{protocol}"));
        }
    }
    let endpoints_rt = resolve("endpoints")?;
    let name = str_at(service, "/metadata/name");
    let path = format!(
        "{}/{name}",
        Ctx::collection(endpoints_rt, Some(str_at(service, "/metadata/namespace")))
    );
    let endpoints = match ctx.call(Method::GET, &path, None, None).await {
        Ok(endpoints) => endpoints,
        Err(CtlError::Server { reason, .. }) if reason == "NotFound" => Value::Null,
        Err(e) => return Err(e),
    };
    let addresses: Vec<String> = endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let port = s.pointer("/ports/0/port").and_then(Value::as_i64);
            s["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |a| match port {
                    Some(p) => format!("{}:{p}", str_at(&a, "/ip")),
                    None => str_at(&a, "/ip").to_owned(),
                })
        })
        .collect();
    sheet.field(0, "Endpoints", addresses.join(","));
    sheet.field(
        0,
        "Session Affinity",
        match str_at(service, "/spec/sessionAffinity") {
            "" => "None",
            s => s,
        },
    );
    Ok(())
}

async fn describe_node(ctx: &Ctx, sheet: &mut Sheet, node: &Value) -> Result<(), CtlError> {
    sheet.field(0, "Status", output::node_status(node));
    sheet.field(0, "PodCIDR", str_at(node, "/spec/podCIDR"));
    let taints: Vec<String> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(taint)
        .collect();
    sheet.field(0, "Taints", taints.join("\n"));
    sheet.field(
        0,
        "Unschedulable",
        node.pointer("/spec/unschedulable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
    );
    sheet.heading(0, "Addresses:");
    for address in node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        sheet.field(2, str_at(address, "/type"), str_at(address, "/address"));
    }
    sheet.heading(0, "Allocatable:");
    for (key, value) in node
        .pointer("/status/allocatable")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        sheet.field(2, key, value.as_str().unwrap_or_default());
    }
    conditions(sheet, node);
    let heartbeat = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| age(c, "/lastHeartbeatTime"))
        .unwrap_or_default();
    if !heartbeat.is_empty() {
        sheet.field(0, "Last Heartbeat", format!("{heartbeat} ago"));
    }
    let pods_rt = resolve("pods")?;
    let path = format!(
        "{}?fieldSelector={}",
        Ctx::collection(pods_rt, None),
        encode(&format!("spec.nodeName={}", str_at(node, "/metadata/name")))
    );
    let pods = ctx.call(Method::GET, &path, None, None).await?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    sheet.heading(0, &format!("Pods:  ({} in total)", items.len()));
    if !items.is_empty() {
        let mut rows = vec![vec![
            "Namespace".to_owned(),
            "Name".to_owned(),
            "Status".to_owned(),
            "Age".to_owned(),
        ]];
        rows.extend(items.iter().map(|p| {
            vec![
                str_at(p, "/metadata/namespace").to_owned(),
                str_at(p, "/metadata/name").to_owned(),
                output::pod_summary(p).1,
                age(p, "/metadata/creationTimestamp"),
            ]
        }));
        for line in output::table(&rows).lines() {
            sheet.text(2, line.to_owned());
        }
    }
    Ok(())
}

/// A selector as kubectl's `FormatLabelSelector` prints it.
fn selector(selector: &LabelSelector) -> String {
    selector_text(serde_json::to_value(selector).ok().as_ref())
}

/// A rule's ports and peers, as kubectl's describer lists them under "Allowing ingress
/// traffic" (`From`) and "Allowing egress traffic" (`To`).
fn policy_rule(
    sheet: &mut Sheet,
    ports: &[NetworkPolicyPort],
    peers: &[NetworkPolicyPeer],
    (side, unrestricted): (&str, &str),
) {
    if ports.is_empty() {
        sheet.text(
            4,
            "To Port: <any> (traffic allowed to all ports)".to_owned(),
        );
    }
    for port in ports {
        let number = match &port.port {
            None => "<any>".to_owned(),
            Some(IntOrString::Int(number)) => number.to_string(),
            Some(IntOrString::String(name)) => name.clone(),
        };
        let range = match port.end_port {
            Some(end) => format!("{number}-{end}"),
            None => number,
        };
        sheet.text(4, format!("To Port: {range}/{}", port.protocol()));
    }
    if peers.is_empty() {
        sheet.text(4, format!("{side}: <any> ({unrestricted})"));
    }
    for peer in peers {
        sheet.text(4, format!("{side}:"));
        if let Some(namespaces) = &peer.namespace_selector {
            sheet.text(6, format!("NamespaceSelector: {}", selector(namespaces)));
        }
        if let Some(pods) = &peer.pod_selector {
            sheet.text(6, format!("PodSelector: {}", selector(pods)));
        }
        if let Some(block) = &peer.ip_block {
            sheet.text(6, "IPBlock:".to_owned());
            sheet.text(8, format!("CIDR: {}", block.cidr));
            sheet.text(8, format!("Except: {}", block.except.join(", ")));
        }
    }
}

/// One direction of a NetworkPolicy's spec summary: its rules (each rule's ports and
/// peers) when the policy isolates that direction, None when it does not.
fn policy_direction(
    sheet: &mut Sheet,
    rules: Option<&[(&[NetworkPolicyPort], &[NetworkPolicyPeer])]>,
    (direction, side, unrestricted): (&str, &str, &str),
) {
    let Some(rules) = rules else {
        sheet.text(2, format!("Not affecting {direction} traffic"));
        return;
    };
    sheet.text(2, format!("Allowing {direction} traffic:"));
    if rules.is_empty() {
        sheet.text(
            4,
            format!("<none> (Selected pods are isolated for {direction} connectivity)"),
        );
    }
    for (i, (ports, peers)) in rules.iter().enumerate() {
        if i > 0 {
            sheet.text(4, "----------".to_owned());
        }
        policy_rule(sheet, ports, peers, (side, unrestricted));
    }
}

/// kubectl's spec summary of a NetworkPolicy, then the pods it selects now (its
/// namespace's pods its podSelector matches, finished ones left out) with their
/// addresses: the pods the agents isolate.
async fn describe_network_policy(
    ctx: &Ctx,
    sheet: &mut Sheet,
    object: &Value,
) -> Result<(), CtlError> {
    let policy: NetworkPolicy = serde_json::from_value(object.clone()).unwrap_or_default();
    let spec = &policy.spec;
    sheet.heading(0, "Spec:");
    let pods = if spec.pod_selector.is_empty() {
        "<none> (Allowing the specific traffic to all pods in this namespace)".to_owned()
    } else {
        selector(&spec.pod_selector)
    };
    sheet.text(2, format!("PodSelector:     {pods}"));
    let ingress: Vec<_> = spec
        .ingress
        .iter()
        .map(|rule| (&rule.ports[..], &rule.from[..]))
        .collect();
    let egress: Vec<_> = spec
        .egress
        .iter()
        .map(|rule| (&rule.ports[..], &rule.to[..]))
        .collect();
    policy_direction(
        sheet,
        policy.isolates(INGRESS).then_some(&ingress[..]),
        ("ingress", "From", "traffic not restricted by source"),
    );
    policy_direction(
        sheet,
        policy.isolates(EGRESS).then_some(&egress[..]),
        ("egress", "To", "traffic not restricted by destination"),
    );
    sheet.text(
        2,
        format!("Policy Types: {}", policy.policy_types().join(", ")),
    );

    let namespace = policy.metadata.namespace.as_str();
    let list = ctx
        .call(
            Method::GET,
            &Ctx::collection(resolve("pods")?, Some(namespace)),
            None,
            None,
        )
        .await?;
    let selected: Vec<Pod> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| serde_json::from_value::<Pod>(item.clone()).ok())
        .filter(|pod| {
            !pod.is_terminal() && networking::selects(&spec.pod_selector, &pod.metadata.labels)
        })
        .collect();
    sheet.heading(0, &format!("Selected Pods:  ({} in total)", selected.len()));
    if !selected.is_empty() {
        let mut rows = vec![["Namespace", "Name", "IP"].map(str::to_owned).to_vec()];
        rows.extend(selected.iter().map(|pod| {
            let ip = pod
                .status
                .as_ref()
                .map(|status| status.pod_ip.clone())
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "<none>".to_owned());
            vec![
                pod.metadata.namespace.clone(),
                pod.metadata.name.clone(),
                ip,
            ]
        }));
        for line in output::table(&rows).lines() {
            sheet.text(2, line.to_owned());
        }
    }
    Ok(())
}

/// A Secret's type and the size of each value, never the values (as kubectl).
fn describe_secret(sheet: &mut Sheet, object: &Value) {
    let secret: Secret = serde_json::from_value(object.clone()).unwrap_or_default();
    sheet.field(0, "Type", secret.secret_type());
    if secret.immutable == Some(true) {
        sheet.field(0, "Immutable", "true");
    }
    sheet.heading(0, "Data");
    for (key, value) in &secret.data {
        sheet.field(0, key, format!("{} bytes", value.0.len()));
    }
}

/// A ConfigMap's values: text in full, binary values by size (as kubectl).
fn describe_config_map(sheet: &mut Sheet, object: &Value) {
    let config_map: ConfigMap = serde_json::from_value(object.clone()).unwrap_or_default();
    if config_map.immutable == Some(true) {
        sheet.field(0, "Immutable", "true");
    }
    sheet.heading(0, "Data");
    for (key, value) in &config_map.data {
        sheet.text(0, format!("{key}:"));
        sheet.text(0, "----".to_owned());
        for line in value.lines() {
            sheet.text(0, line.to_owned());
        }
        sheet.text(0, String::new());
    }
    if !config_map.binary_data.is_empty() {
        sheet.heading(0, "BinaryData");
        for (key, value) in &config_map.binary_data {
            sheet.field(0, key, format!("{} bytes", value.0.len()));
        }
    }
}

/// Everything describe shows besides the events.
/// An Event's `From`, as kubectl shows its `source`: the component, and the host when
/// there is one.
fn event_source(event: &Value) -> String {
    let component = str_at(event, "/source/component");
    match str_at(event, "/source/host") {
        "" => component.to_owned(),
        host => format!("{component}, {host}"),
    }
}

async fn describe_object(ctx: &Ctx, rt: &ResourceType, object: &Value) -> Result<String, CtlError> {
    let mut sheet = Sheet::default();
    metadata(&mut sheet, rt, object);
    match rt.kind {
        "Pod" => describe_pod(ctx, &mut sheet, object).await?,
        "Deployment" => describe_deployment(ctx, &mut sheet, object).await?,
        "Service" => describe_service(ctx, &mut sheet, object).await?,
        "Node" => describe_node(ctx, &mut sheet, object).await?,
        "NetworkPolicy" => describe_network_policy(ctx, &mut sheet, object).await?,
        "Secret" => describe_secret(&mut sheet, object),
        "ConfigMap" => describe_config_map(&mut sheet, object),
        "ReplicaSet" => {
            sheet.field(
                0,
                "Selector",
                pairs(object.pointer("/spec/selector/matchLabels")),
            );
            sheet.field(
                0,
                "Replicas",
                format!(
                    "{} current / {} desired",
                    int_at(object, "/status/replicas"),
                    int_at(object, "/spec/replicas")
                ),
            );
            let owner = object
                .pointer("/metadata/ownerReferences/0")
                .map(|o| format!("{}/{}", str_at(o, "/kind"), str_at(o, "/name")))
                .unwrap_or_default();
            sheet.field(0, "Controlled By", owner);
            containers(
                &mut sheet,
                0,
                object
                    .pointer("/spec/template/spec")
                    .unwrap_or(&Value::Null),
            );
        }
        _ => {
            // Kinds without a dedicated layout: their content as YAML, indented.
            let mut rest = object.clone();
            if let Some(map) = rest.as_object_mut() {
                for key in ["apiVersion", "kind", "metadata"] {
                    map.remove(key);
                }
            }
            let yaml = serde_norway::to_string(&rest).unwrap_or_default();
            for line in yaml.lines() {
                sheet.text(0, line.to_owned());
            }
        }
    }
    Ok(sheet.render())
}

/// The events about one object, oldest first.
async fn events_for(
    ctx: &Ctx,
    namespace: Option<&str>,
    kind: Option<&str>,
    name: &str,
) -> Result<Vec<Value>, CtlError> {
    let rt = resolve("events")?;
    let mut selector = format!("involvedObject.name={name}");
    if let Some(kind) = kind {
        selector.push_str(&format!(",involvedObject.kind={kind}"));
    }
    let path = format!(
        "{}?fieldSelector={}",
        Ctx::collection(rt, namespace),
        encode(&selector)
    );
    let list = ctx.call(Method::GET, &path, None, None).await?;
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by(|a, b| str_at(a, "/lastTimestamp").cmp(str_at(b, "/lastTimestamp")));
    Ok(items)
}

fn events_section(events: &[Value]) -> String {
    if events.is_empty() {
        return "Events:  <none>".to_owned();
    }
    let mut rows = vec![
        ["Type", "Reason", "Age", "From", "Message"]
            .map(str::to_owned)
            .to_vec(),
        ["----", "------", "----", "----", "-------"]
            .map(str::to_owned)
            .to_vec(),
    ];
    // The most recent ones: describe is for "what just happened".
    let recent = &events[events.len().saturating_sub(20)..];
    rows.extend(recent.iter().map(|e| {
        let count = int_at(e, "/count");
        let mut age = age(e, "/lastTimestamp");
        if count > 1 {
            age = format!(
                "{age} (x{count} over {})",
                output::age(e, "/firstTimestamp")
            );
        }
        vec![
            str_at(e, "/type").to_owned(),
            str_at(e, "/reason").to_owned(),
            age,
            event_source(e),
            str_at(e, "/message").to_owned(),
        ]
    }));
    let table = output::table(&rows);
    format!(
        "Events:\n{}",
        table
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

pub async fn run(
    ctx: &Ctx,
    args: DescribeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let (kind, mut names) = match args.kind.split_once('/') {
        Some((kind, name)) => (kind.to_owned(), vec![name.to_owned()]),
        None => (args.kind.clone(), Vec::new()),
    };
    names.extend(args.names);
    let rt = resolve(&kind)?;
    let objects = if names.is_empty() {
        let mut path = Ctx::collection(rt, Some(ctx.namespace()));
        if let Some(selector) = &args.selector {
            path.push_str(&format!("?labelSelector={}", encode(selector)));
        }
        let list = ctx.call(Method::GET, &path, None, None).await?;
        list["items"].as_array().cloned().unwrap_or_default()
    } else {
        let mut objects = Vec::new();
        for name in &names {
            let target = Target { rt, name };
            objects.push(
                ctx.call(Method::GET, &ctx.object_path(rt, name), None, Some(target))
                    .await?,
            );
        }
        objects
    };
    if objects.is_empty() {
        let _ = writeln!(err, "No resources found in {} namespace.", ctx.namespace());
        return Ok(());
    }
    let mut first = true;
    for object in objects {
        let text = describe_object(ctx, rt, &object).await?;
        // Node events are recorded in the default namespace, like kubectl's.
        let namespace = if rt.namespaced {
            str_at(&object, "/metadata/namespace")
        } else {
            berth_api::meta::DEFAULT_NAMESPACE
        };
        let events = events_for(
            ctx,
            Some(namespace),
            Some(rt.kind),
            str_at(&object, "/metadata/name"),
        )
        .await?;
        if !first {
            emit(out, "\n");
        }
        first = false;
        emit(out, &format!("{text}\n{}", events_section(&events)));
    }
    Ok(())
}

pub async fn events(
    ctx: &Ctx,
    args: EventsArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let rt = resolve("events")?;
    let namespace = (!args.all_namespaces).then(|| ctx.namespace());
    let items = match &args.for_object {
        Some(target) => {
            let (kind, name) = match target.split_once('/') {
                Some((kind, name)) => (Some(resolve(kind)?.kind), name),
                None => (None, target.as_str()),
            };
            events_for(ctx, namespace, kind, name).await?
        }
        None => {
            let list = ctx
                .call(Method::GET, &Ctx::collection(rt, namespace), None, None)
                .await?;
            let mut items = list["items"].as_array().cloned().unwrap_or_default();
            items.sort_by(|a, b| str_at(a, "/lastTimestamp").cmp(str_at(b, "/lastTimestamp")));
            items
        }
    };
    if items.is_empty() {
        let _ = writeln!(err, "No events found");
        return Ok(());
    }
    let mut rows = vec![output::header(rt, false, args.all_namespaces)];
    rows.extend(
        items
            .iter()
            .map(|i| output::row(rt, i, false, args.all_namespaces)),
    );
    emit(out, &output::table(&rows));
    Ok(())
}
