//! What the API answers by asking a node's agent (through `crate::node_client`), the way
//! the Kubernetes API server proxies to the kubelet: a pod's container logs and exec,
//! and the backends each node's datapath actually serves a service with (the streaming
//! exec, attach and port forwarding are in `super::streaming`).

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use berth_api::{
    core::{Node, Pod},
    kinds::{NODES, PODS, SERVICES},
    node::{ContainerRef, ExecRequest, LogsRequest, ServiceBackendsRequest},
};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, error::ApiError};
use crate::node_client::from_node;

/// A node whose datapath view takes longer than this is reported as failing.
const BACKENDS_TIMEOUT: Duration = Duration::from_secs(5);

/// The container of a pod that a request is about, and the node it runs on.
pub(super) struct Target {
    pub node: Value,
    pub node_name: String,
    /// For a request about the whole pod (port forwarding), `container` is empty.
    pub container: ContainerRef,
}

pub(super) async fn target(
    state: &ApiState,
    namespace: &str,
    pod_name: &str,
    container: Option<&str>,
) -> Result<Target, ApiError> {
    let pod = stored_pod(state, namespace, pod_name).await?;
    let names: Vec<&str> = pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let container = choose_container(pod_name, &names, container)?;
    locate(state, namespace, pod_name, &pod, container).await
}

/// The pod and its node, for what concerns the pod as a whole.
pub(super) async fn pod_target(
    state: &ApiState,
    namespace: &str,
    pod_name: &str,
) -> Result<Target, ApiError> {
    let pod = stored_pod(state, namespace, pod_name).await?;
    locate(state, namespace, pod_name, &pod, String::new()).await
}

async fn stored_pod(state: &ApiState, namespace: &str, pod_name: &str) -> Result<Pod, ApiError> {
    let stored = state.registry.get(&PODS, namespace, pod_name).await?;
    serde_json::from_value(stored).map_err(|e| ApiError::internal(format!("stored pod: {e}")))
}

async fn locate(
    state: &ApiState,
    namespace: &str,
    pod_name: &str,
    pod: &Pod,
    container: String,
) -> Result<Target, ApiError> {
    if pod.spec.node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {pod_name:?} is not scheduled to a node yet"
        )));
    }
    let node = state
        .registry
        .get(&NODES, "", &pod.spec.node_name)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!(
                        "pod {pod_name:?} is bound to node {:?}, which is not registered",
                        pod.spec.node_name
                    ),
                )
            } else {
                ApiError::from(e)
            }
        })?;
    Ok(Target {
        node,
        node_name: pod.spec.node_name.clone(),
        container: ContainerRef {
            namespace: namespace.to_owned(),
            pod: pod_name.to_owned(),
            pod_uid: pod.metadata.uid.clone(),
            container,
        },
    })
}

/// The named container, or the only one; kubectl's words when that is ambiguous.
fn choose_container(pod: &str, names: &[&str], wanted: Option<&str>) -> Result<String, ApiError> {
    match (wanted.filter(|w| !w.is_empty()), names) {
        (Some(wanted), _) if names.contains(&wanted) => Ok(wanted.to_owned()),
        (Some(wanted), _) => Err(ApiError::bad_request(format!(
            "container {wanted} is not valid for pod {pod}; choose one of: [{}]",
            names.join(" ")
        ))),
        (None, [only]) => Ok((*only).to_owned()),
        (None, _) => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

fn flag(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "query parameter {name}={other:?}: expected true or false"
        ))),
    }
}

/// `GET .../pods/{name}/log`: the container's output as text, streamed while `follow`.
pub async fn logs(
    state: &ApiState,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let tail_lines = match query.get("tailLines") {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter tailLines={text:?}: expected a whole number"
            ))
        })?),
    };
    let request = LogsRequest {
        container: None,
        follow: flag(query, "follow")?,
        previous: flag(query, "previous")?,
        tail_lines,
        timestamps: flag(query, "timestamps")?,
    };
    let target = target(
        state,
        namespace,
        name,
        query.get("container").map(String::as_str),
    )
    .await?;
    let mut client = state.nodes.connect(&target.node).await?;
    let node_name = target.node_name.clone();
    let stream = client
        .logs(LogsRequest {
            container: Some(target.container),
            ..request
        })
        .await
        .map_err(|status| from_node(&node_name, &status))?
        .into_inner()
        .map(|chunk| chunk.map(|chunk| Bytes::from(chunk.data)));
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecBody {
    pub command: Vec<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

/// `POST .../pods/{name}/exec`: runs the command to its end and returns its exit code
/// and output (no stdin, no terminal).
pub async fn exec(
    state: &ApiState,
    namespace: &str,
    name: &str,
    body: ExecBody,
) -> Result<Response, ApiError> {
    if body.command.is_empty() || body.command[0].is_empty() {
        return Err(ApiError::bad_request("command: must name a program to run"));
    }
    let target = target(state, namespace, name, body.container.as_deref()).await?;
    let mut client = state.nodes.connect(&target.node).await?;
    let container = target.container.container.clone();
    let result = client
        .exec(ExecRequest {
            container: Some(target.container),
            command: body.command,
            timeout_seconds: body.timeout_seconds.unwrap_or(0),
        })
        .await
        .map_err(|status| from_node(&target.node_name, &status))?
        .into_inner();
    Ok(Json(json!({
        "apiVersion": "v1",
        "kind": "ExecResult",
        "metadata": {"namespace": namespace, "name": name},
        "container": container,
        "node": target.node_name,
        "exitCode": result.exit_code,
        "stdout": String::from_utf8_lossy(&result.stdout),
        "stderr": String::from_utf8_lossy(&result.stderr),
        "truncated": result.truncated,
    }))
    .into_response())
}

fn is_ready(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// `GET .../services/{name}/backends`: per Ready node, the distinct backends in the live
/// lookup table of each of the service's ports, read from that node's kernel maps.
pub async fn service_backends(
    state: &ApiState,
    namespace: &str,
    name: &str,
) -> Result<Response, ApiError> {
    state.registry.get(&SERVICES, namespace, name).await?;
    let nodes = state.registry.list_all(&NODES).await?;
    let views = nodes.into_iter().map(|stored| async move {
        let node: Node = serde_json::from_value(stored.clone()).unwrap_or_default();
        let node_name = node.metadata.name.clone();
        if !is_ready(&node) {
            return json!({"node": node_name, "ready": false, "error": "the node is not Ready"});
        }
        let answer = async {
            let mut client = state.nodes.connect(&stored).await?;
            client
                .service_backends(ServiceBackendsRequest {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| from_node(&node_name, &status))
        };
        match tokio::time::timeout(BACKENDS_TIMEOUT, answer).await {
            Ok(Ok(answer)) => {
                let ports: Vec<Value> = answer
                    .ports
                    .into_iter()
                    .map(|port| {
                        json!({
                            "name": port.port_name,
                            "frontend": port.frontend,
                            "programmed": port.programmed,
                            "tableSize": port.table_size,
                            "backends": port.backends,
                        })
                    })
                    .collect();
                json!({"node": node_name, "ready": true, "ports": ports})
            }
            Ok(Err(error)) => json!({"node": node_name, "ready": true, "error": error.to_string()}),
            Err(_) => json!({"node": node_name, "ready": true,
                "error": format!("no answer within {BACKENDS_TIMEOUT:?}")}),
        }
    });
    let nodes = futures_util::future::join_all(views).await;
    Ok(Json(json!({
        "apiVersion": "v1",
        "kind": "ServiceBackends",
        "metadata": {"namespace": namespace, "name": name},
        "nodes": nodes,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_chosen_like_kubectl() {
        assert_eq!(
            choose_container("p", &["a"], None).ok().as_deref(),
            Some("a")
        );
        assert_eq!(
            choose_container("p", &["a", "b"], Some("b"))
                .ok()
                .as_deref(),
            Some("b")
        );
        let ambiguous = choose_container("p", &["a", "b"], None).expect_err("two");
        assert_eq!(ambiguous.code.as_u16(), 400);
        assert!(
            ambiguous.message.contains("choose one of: [a b]"),
            "{}",
            ambiguous.message
        );
        let unknown = choose_container("p", &["a"], Some("z")).expect_err("unknown");
        assert!(
            unknown
                .message
                .contains("container z is not valid for pod p")
        );
    }

    #[test]
    fn flags_are_true_false_or_an_error() {
        let query = HashMap::from([
            ("follow".to_owned(), "true".to_owned()),
            ("previous".to_owned(), "nah".to_owned()),
        ]);
        assert!(flag(&query, "follow").expect("valid"));
        assert!(!flag(&query, "timestamps").expect("absent"));
        assert!(flag(&query, "previous").is_err());
    }
}
