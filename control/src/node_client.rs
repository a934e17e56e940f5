//! The control plane's side of the node API (berth.node.v1): finds where a node's
//! agent serves it, and calls it over mTLS with the control plane's client certificate,
//! checking that the server's certificate names that node.

use std::time::Duration;

use berth_api::{
    core::{Node, NodeStatus},
    node::node_client::NodeClient as GrpcClient,
};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::Pki;

/// Why a call to a node's agent failed, in the terms a user acts on.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node has not said where its agent serves.
    #[error("{0}")]
    Unavailable(String),
    /// The node could not be reached, or failed.
    #[error("{0}")]
    Unreachable(String),
    /// The node has no such pod, container or log.
    #[error("{0}")]
    NotFound(String),
    /// Not possible yet or as asked (a container not running, a bad argument).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

/// Connecting to a node gives up after this long: the node is then reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NodeClient {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl NodeClient {
    pub fn new(pki: &Pki) -> Self {
        NodeClient {
            ca_pem: pki.ca_cert_pem.clone(),
            cert_pem: pki.node_client_cert_pem.clone(),
            key_pem: pki.node_client_key_pem.clone(),
        }
    }

    /// A connected client for the node in `node` (the stored Node object).
    pub async fn connect(&self, node: &Value) -> Result<GrpcClient<Channel>, NodeError> {
        let node: Node = serde_json::from_value(node.clone())
            .map_err(|e| NodeError::Internal(format!("stored node: {e}")))?;
        let name = node.metadata.name.clone();
        let url = node_api_url(node.status.as_ref()).ok_or_else(|| {
            NodeError::Unavailable(format!(
                "node {name:?} has not reported where its agent serves the node API \
                 (status.daemonEndpoints.agentEndpoint and an InternalIP address)"
            ))
        })?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            // The node certificate names the node, not an address.
            .domain_name(name.clone());
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| NodeError::Internal(format!("node {name:?} address {url}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            // Followed logs, exec and port forwarding are long streams: pings find a
            // node that went away instead of leaving the user's stream hanging.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .tls_config(tls)
            .map_err(|e| NodeError::Internal(format!("node API TLS: {e}")))?
            .connect()
            .await
            .map_err(|e| {
                NodeError::Unreachable(format!(
                    "node {name:?} is unreachable at {url}: {}",
                    chain(&e)
                ))
            })?;
        Ok(GrpcClient::new(channel))
    }
}

/// `https://<InternalIP>:<port>` of the node's agent, if it said.
pub fn node_api_url(status: Option<&NodeStatus>) -> Option<String> {
    let status = status?;
    let port = status
        .daemon_endpoints
        .as_ref()?
        .agent_endpoint
        .as_ref()?
        .port;
    let address = status
        .addresses
        .iter()
        .find(|address| address.type_ == "InternalIP")?;
    let ip: std::net::IpAddr = address.address.parse().ok()?;
    Some(match ip {
        std::net::IpAddr::V4(ip) => format!("https://{ip}:{port}"),
        std::net::IpAddr::V6(ip) => format!("https://[{ip}]:{port}"),
    })
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a node's answer means to the REST client: the node's own words, with the status
/// a user acts on (404 for what is not there, 400 for what is not ready, 502 when the
/// node failed).
pub fn from_node(node: &str, status: &tonic::Status) -> NodeError {
    use tonic::Code;
    let message = status.message().to_owned();
    match status.code() {
        Code::NotFound => NodeError::NotFound(message),
        Code::InvalidArgument | Code::FailedPrecondition => NodeError::Refused(message),
        Code::DeadlineExceeded => NodeError::Timeout(message),
        Code::Unavailable => {
            NodeError::Unreachable(format!("node {node:?} is unreachable: {message}"))
        }
        _ => NodeError::Unreachable(format!("node {node:?} failed: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use berth_api::core::{DaemonEndpoint, NodeAddress, NodeDaemonEndpoints};

    use super::*;

    #[test]
    fn the_node_api_is_at_the_internal_ip_and_reported_port() {
        let mut status = NodeStatus {
            addresses: vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "n1".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "198.18.0.1".into(),
                },
            ],
            ..NodeStatus::default()
        };
        assert_eq!(node_api_url(Some(&status)), None, "no port reported");
        status.daemon_endpoints = Some(NodeDaemonEndpoints {
            agent_endpoint: Some(DaemonEndpoint { port: 10250 }),
            metrics_endpoint: None,
        });
        assert_eq!(
            node_api_url(Some(&status)).as_deref(),
            Some("https://198.18.0.1:10250")
        );
        assert_eq!(node_api_url(None), None);
    }
}
