//! The node API (berth.node.v1): what the control plane asks of this node for a user —
//! a container's logs, a command run in a container, and the backends the datapath
//! really serves a service with. The kubelet's port, behind the API server's proxy.
//!
//! It is served over TLS with the node certificate (which names the node as a DNS name:
//! the control plane checks that name, whichever address it dials) and accepts only
//! clients whose certificate the cluster CA issued to the control plane
//! (O = berth:control-plane): other nodes hold certificates of the same CA and must not
//! run commands here.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_api::{
    identity::{CONTROL_PLANE_ORGANIZATION, name_in_role},
    node::{
        ContainerRef, ExecRequest, ExecResponse, LogChunk, LogsRequest, ServiceBackendsRequest,
        ServiceBackendsResponse, ServicePortBackends,
        node_server::{Node, NodeServer},
    },
};
use futures_util::{Stream, StreamExt as _};
use tokio::{net::TcpListener, sync::watch};
use tonic::{
    Request, Response, Status,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

use crate::{
    datapath::{Datapath, ServiceSet},
    runtime::{ContainerSummary, DockerRuntime, LogOptions, RuntimeError, labels},
};

/// Commands given no timeout get this long.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// And none gets longer: the control plane holds a request open meanwhile.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(600);
/// Output of one exec kept beyond this is dropped (and said to be).
pub const MAX_EXEC_OUTPUT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    #[error("binding the node API to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("node API TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
}

/// The TLS material the node API serves with: the node's own certificate and key from
/// joining, and the cluster CA clients must be issued by.
pub struct NodeApiTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

pub struct NodeApi {
    runtime: DockerRuntime,
    node: String,
    /// What the datapath was last told to serve (readiness applied).
    services: watch::Receiver<ServiceSet>,
    datapath: Arc<Mutex<Datapath>>,
}

impl NodeApi {
    pub fn new(
        runtime: DockerRuntime,
        node: &str,
        services: watch::Receiver<ServiceSet>,
        datapath: Arc<Mutex<Datapath>>,
    ) -> Self {
        NodeApi {
            runtime,
            node: node.to_owned(),
            services,
            datapath,
        }
    }

    /// Binds `addr` and serves until the runtime ends; returns the bound address.
    pub async fn serve(
        self,
        addr: SocketAddr,
        tls: &NodeApiTls,
    ) -> Result<SocketAddr, NodeApiError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NodeApiError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| NodeApiError::Bind { addr, source })?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .client_ca_root(Certificate::from_pem(&tls.ca_pem))
            .client_auth_optional(false);
        let server = Server::builder()
            .tls_config(tls)
            .map_err(NodeApiError::Tls)?
            .add_service(NodeServer::new(self));
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(error) = server.serve_with_incoming(incoming).await {
                tracing::error!(%error, "the node API stopped");
            }
        });
        Ok(bound)
    }

    /// The pod's attempts of one container, newest first.
    async fn attempts(&self, container: &ContainerRef) -> Result<Vec<ContainerSummary>, Status> {
        for (field, value) in [
            ("namespace", &container.namespace),
            ("pod", &container.pod),
            ("pod_uid", &container.pod_uid),
            ("container", &container.container),
        ] {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "container.{field} is empty"
                )));
            }
        }
        let mut found = self
            .runtime
            .list_by_labels(&[
                (labels::NODE, &self.node),
                (labels::POD_UID, &container.pod_uid),
                (labels::CONTAINER_NAME, &container.container),
            ])
            .await
            .map_err(runtime_status)?;
        found.sort_by_key(|summary| std::cmp::Reverse(attempt_of(summary)));
        Ok(found)
    }
}

fn attempt_of(container: &ContainerSummary) -> u64 {
    container
        .labels
        .get(labels::ATTEMPT)
        .and_then(|attempt| attempt.parse().ok())
        .unwrap_or(0)
}

/// Only the control plane may call: the certificate was verified against the cluster CA
/// by TLS, its organisation says whose it is.
fn require_control_plane<T>(request: &Request<T>) -> Result<(), Status> {
    let caller = request.peer_certs().and_then(|certs| {
        certs
            .first()
            .and_then(|der| name_in_role(der, CONTROL_PLANE_ORGANIZATION))
    });
    match caller {
        Some(_) => Ok(()),
        None => Err(Status::permission_denied(format!(
            "the node API only serves the control plane (a client certificate with O={CONTROL_PLANE_ORGANIZATION})"
        ))),
    }
}

fn runtime_status(error: RuntimeError) -> Status {
    match error {
        RuntimeError::ContainerNotFound { .. } => Status::not_found(error.to_string()),
        RuntimeError::InvalidSpec(_) => Status::invalid_argument(error.to_string()),
        RuntimeError::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
        RuntimeError::Connect { .. } => Status::unavailable(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

fn pod_of(container: &ContainerRef) -> String {
    format!("{}/{}", container.namespace, container.pod)
}

/// Which container's logs: the newest attempt, or the one before it.
fn pick_attempt<'a>(
    attempts: &'a [ContainerSummary],
    previous: bool,
    container: &ContainerRef,
) -> Result<&'a ContainerSummary, Status> {
    let index = usize::from(previous);
    attempts.get(index).ok_or_else(|| {
        if previous {
            Status::not_found(format!(
                "previous terminated container {:?} in pod {:?} not found",
                container.container,
                pod_of(container)
            ))
        } else {
            Status::failed_precondition(format!(
                "container {:?} in pod {:?} has not been created yet",
                container.container,
                pod_of(container)
            ))
        }
    })
}

/// `namespace/name:port` names of the datapath's service ports belonging to one Service.
fn is_port_of(port_name: &str, namespace: &str, name: &str) -> bool {
    port_name
        .strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.starts_with(':'))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeApi {
    type LogsStream = LogStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogStream>, Status> {
        require_control_plane(&request)?;
        let request = request.into_inner();
        let container = request.container.unwrap_or_default();
        let attempts = self.attempts(&container).await?;
        let chosen = pick_attempt(&attempts, request.previous, &container)?;
        let options = LogOptions {
            // A previous attempt has ended: there is nothing to follow.
            follow: request.follow && !request.previous,
            tail_lines: request.tail_lines.filter(|lines| *lines > 0),
            timestamps: request.timestamps,
        };
        let stream = self
            .runtime
            .logs(&chosen.id, &options)
            .map(|chunk| chunk.map(|data| LogChunk { data }).map_err(runtime_status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        require_control_plane(&request)?;
        let request = request.into_inner();
        let container = request.container.unwrap_or_default();
        if request.command.is_empty() {
            return Err(Status::invalid_argument("command is empty"));
        }
        let attempts = self.attempts(&container).await?;
        let current = pick_attempt(&attempts, false, &container)?;
        if current.state != "running" {
            return Err(Status::failed_precondition(format!(
                "container {:?} in pod {:?} is not running (it is {})",
                container.container,
                pod_of(&container),
                current.state
            )));
        }
        let timeout = match request.timeout_seconds {
            0 => DEFAULT_EXEC_TIMEOUT,
            seconds => Duration::from_secs(u64::from(seconds)).min(MAX_EXEC_TIMEOUT),
        };
        let captured = self
            .runtime
            .exec_captured(&current.id, &request.command, timeout, MAX_EXEC_OUTPUT)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(ExecResponse {
            exit_code: captured.exit_code,
            stdout: captured.stdout,
            stderr: captured.stderr,
            truncated: captured.truncated,
        }))
    }

    async fn service_backends(
        &self,
        request: Request<ServiceBackendsRequest>,
    ) -> Result<Response<ServiceBackendsResponse>, Status> {
        require_control_plane(&request)?;
        let request = request.into_inner();
        let set = self.services.borrow().clone();
        let datapath = match self.datapath.lock() {
            Ok(datapath) => datapath,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut ports = Vec::new();
        for service in set
            .services
            .iter()
            .filter(|service| is_port_of(&service.name, &request.namespace, &request.name))
        {
            let Some(frontend) = service.frontends.first() else {
                continue;
            };
            let table = datapath
                .live_table(frontend)
                .map_err(|error| Status::internal(format!("reading the datapath: {error}")))?;
            let (programmed, table) = match table {
                Some(table) => (true, table),
                None => (false, Vec::new()),
            };
            let mut backends = table.clone();
            backends.sort_unstable();
            backends.dedup();
            ports.push(ServicePortBackends {
                port_name: service.name.clone(),
                frontend: frontend.to_string(),
                backends: backends
                    .iter()
                    .map(|(ip, port)| format!("{ip}:{port}"))
                    .collect(),
                table_size: u32::try_from(table.len()).unwrap_or(u32::MAX),
                programmed,
            });
        }
        Ok(Response::new(ServiceBackendsResponse { ports }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn summary(id: &str, attempt: &str) -> ContainerSummary {
        ContainerSummary {
            id: id.to_owned(),
            name: String::new(),
            image: String::new(),
            state: "exited".to_owned(),
            labels: BTreeMap::from([(labels::ATTEMPT.to_owned(), attempt.to_owned())]),
        }
    }

    #[test]
    fn service_ports_are_matched_by_whole_names() {
        assert!(is_port_of("default/web:80", "default", "web"));
        assert!(is_port_of("default/web:http", "default", "web"));
        assert!(!is_port_of("default/web2:80", "default", "web"));
        assert!(!is_port_of("other/web:80", "default", "web"));
        assert!(!is_port_of("default/web", "default", "web"));
    }

    #[test]
    fn previous_is_the_attempt_before_the_newest() {
        let container = ContainerRef {
            namespace: "default".into(),
            pod: "web-0".into(),
            pod_uid: "u".into(),
            container: "echo".into(),
        };
        let mut attempts = vec![summary("a", "2"), summary("b", "10")];
        attempts.sort_by_key(|summary| std::cmp::Reverse(attempt_of(summary)));
        let current = pick_attempt(&attempts, false, &container).expect("current");
        assert_eq!(current.id, "b", "attempts compare as numbers");
        let previous = pick_attempt(&attempts, true, &container).expect("previous");
        assert_eq!(previous.id, "a");

        let only = vec![summary("c", "0")];
        let error = pick_attempt(&only, true, &container).expect_err("no previous");
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert!(error.message().contains("previous terminated container"));
        let error = pick_attempt(&[], false, &container).expect_err("none yet");
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    }
}
