//! What Prometheus reads without a bearer token, on the separate `--metrics-listen`
//! address: the control plane's `/metrics`, and `/http-sd/agents`, the agents' metrics
//! endpoints in Prometheus' HTTP service discovery format (`http_sd_configs`), taken from
//! the Nodes: each node's InternalIP and the port its agent reports serving metrics on.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
};
use berth_api::{core::Node, kinds::NODES};
use serde_json::{Value, json};

use super::{ApiState, error::ApiError, metrics, with_info};

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/http-sd/agents", get(agents))
        .with_state(state)
}

async fn agents(State(state): State<ApiState>) -> Response {
    let response = match state.registry.list_all(&NODES).await {
        Ok(nodes) => Json(targets(&nodes)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    };
    with_info(response, "get", "http-sd")
}

/// One target group per node whose agent says where it serves metrics.
fn targets(nodes: &[Value]) -> Vec<Value> {
    nodes
        .iter()
        .filter_map(|node| serde_json::from_value::<Node>(node.clone()).ok())
        .filter_map(|node| {
            let status = node.status.as_ref()?;
            let port = status
                .daemon_endpoints
                .as_ref()?
                .metrics_endpoint
                .as_ref()?
                .port;
            let address = status.addresses.iter().find(|a| a.type_ == "InternalIP")?;
            Some(json!({
                "targets": [format!("{}:{port}", address.address)],
                "labels": {"node": node.metadata.name},
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nodes_that_report_a_metrics_port_are_targets() {
        let node = |name: &str, endpoints: Value| {
            json!({"metadata": {"name": name}, "status": {
                "addresses": [{"type": "InternalIP", "address": "198.18.0.1"}],
                "daemonEndpoints": endpoints}})
        };
        let nodes = [
            node(
                "n1",
                json!({"agentEndpoint": {"Port": 10250}, "metricsEndpoint": {"Port": 9102}}),
            ),
            node("hollow", json!({"agentEndpoint": {"Port": 10250}})),
        ];
        assert_eq!(
            targets(&nodes),
            [json!({"targets": ["198.18.0.1:9102"], "labels": {"node": "n1"}})]
        );
    }
}
