//! The client configuration file (`admin.conf`): kubeconfig-shaped, so the server
//! address, the CA to trust and the bearer token travel together in one file.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    pub current_context: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    /// Base64 of the CA certificate PEM, as kubectl expects it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_authority_data: String,
    /// kubectl's cluster extensions; Berth's [`FAILOVER_EXTENSION`] lists the other
    /// control planes' addresses (kubectl keeps and ignores it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<NamedExtension>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedExtension {
    pub name: String,
    pub extension: serde_json::Value,
}

/// The cluster extension naming the control planes to try when `server` is unreachable:
/// `{"servers": ["https://host:port", ...]}`.
pub const FAILOVER_EXTENSION: &str = "berth.dev/failover-servers";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Base64 of a client certificate PEM the cluster CA signed (CN = user, O = groups).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate_data: String,
    /// Base64 of its private key PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_key_data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub cluster: String,
    pub user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverServers {
    servers: Vec<String>,
}

/// What a client needs, resolved from the current context.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub server: String,
    /// Other control planes of the same cluster, tried in order when `server` cannot be
    /// reached.
    pub failover_servers: Vec<String>,
    pub ca_pem: Option<String>,
    pub token: Option<String>,
    /// A client certificate and its key (PEM), to authenticate with instead of a token.
    pub client_certificate: Option<(String, String)>,
}

impl Kubeconfig {
    pub fn new(server: &str, ca_pem: Option<&str>, token: Option<&str>) -> Self {
        const NAME: &str = "berth";
        Self {
            api_version: "v1".to_owned(),
            kind: "Config".to_owned(),
            clusters: vec![NamedCluster {
                name: NAME.to_owned(),
                cluster: Cluster {
                    server: server.to_owned(),
                    certificate_authority_data: ca_pem
                        .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem))
                        .unwrap_or_default(),
                    extensions: Vec::new(),
                },
            }],
            users: vec![NamedUser {
                name: "admin".to_owned(),
                user: User {
                    token: token.unwrap_or_default().to_owned(),
                    ..User::default()
                },
            }],
            contexts: vec![NamedContext {
                name: NAME.to_owned(),
                context: Context {
                    cluster: NAME.to_owned(),
                    user: "admin".to_owned(),
                },
            }],
            current_context: NAME.to_owned(),
        }
    }

    /// The same configuration naming `servers` as the control planes to fail over to.
    pub fn with_failover_servers(mut self, servers: &[String]) -> Self {
        for named in &mut self.clusters {
            named
                .cluster
                .extensions
                .retain(|e| e.name != FAILOVER_EXTENSION);
            if !servers.is_empty() {
                named.cluster.extensions.push(NamedExtension {
                    name: FAILOVER_EXTENSION.to_owned(),
                    extension: serde_json::json!({ "servers": servers }),
                });
            }
        }
        self
    }

    /// A configuration for `user` authenticating with a client certificate.
    pub fn with_certificate(
        server: &str,
        ca_pem: Option<&str>,
        user: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Self {
        let mut config = Self::new(server, ca_pem, None);
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        config.users[0].name = user.to_owned();
        config.users[0].user.client_certificate_data = b64(cert_pem);
        config.users[0].user.client_key_data = b64(key_pem);
        config.contexts[0].context.user = user.to_owned();
        config
    }

    pub fn load(path: &Path) -> Result<Self, KubeconfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_norway::from_str(&text).map_err(|e| KubeconfigError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn to_yaml(&self) -> Result<String, KubeconfigError> {
        serde_norway::to_string(self).map_err(|e| KubeconfigError::Invalid {
            path: String::new(),
            reason: e.to_string(),
        })
    }

    pub fn settings(&self) -> Result<ClientSettings, KubeconfigError> {
        let invalid = |reason: String| KubeconfigError::Invalid {
            path: String::new(),
            reason,
        };
        let context = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .ok_or_else(|| invalid(format!("no context named {:?}", self.current_context)))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .ok_or_else(|| invalid(format!("no cluster named {:?}", context.context.cluster)))?;
        let user = self.users.iter().find(|u| u.name == context.context.user);
        let ca_pem = match cluster.cluster.certificate_authority_data.as_str() {
            "" => None,
            data => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| invalid(format!("certificate-authority-data: {e}")))?;
                Some(
                    String::from_utf8(bytes)
                        .map_err(|_| invalid("certificate-authority-data is not PEM".to_owned()))?,
                )
            }
        };
        let pem = |field: &str, data: &str| -> Result<String, KubeconfigError> {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| invalid(format!("{field}: {e}")))?;
            String::from_utf8(bytes).map_err(|_| invalid(format!("{field} is not PEM")))
        };
        let client_certificate = match user.map(|u| &u.user) {
            Some(u) if !u.client_certificate_data.is_empty() => Some((
                pem("client-certificate-data", &u.client_certificate_data)?,
                pem("client-key-data", &u.client_key_data)?,
            )),
            _ => None,
        };
        let failover_servers = match cluster
            .cluster
            .extensions
            .iter()
            .find(|e| e.name == FAILOVER_EXTENSION)
        {
            Some(named) => {
                serde_json::from_value::<FailoverServers>(named.extension.clone())
                    .map_err(|e| invalid(format!("extension {FAILOVER_EXTENSION}: {e}")))?
                    .servers
            }
            None => Vec::new(),
        };
        Ok(ClientSettings {
            server: cluster.cluster.server.clone(),
            failover_servers,
            ca_pem,
            client_certificate,
            token: user.map(|u| u.user.token.clone()).filter(|t| !t.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_servers_travel_in_a_cluster_extension() {
        let servers = vec!["https://198.18.0.2:6443".to_owned()];
        let config = Kubeconfig::new("https://198.18.0.1:6443", None, Some("t"))
            .with_failover_servers(&servers);
        let yaml = config.to_yaml().expect("yaml");
        assert!(yaml.contains(FAILOVER_EXTENSION), "{yaml}");
        let read: Kubeconfig = serde_norway::from_str(&yaml).expect("parse");
        let settings = read.settings().expect("settings");
        assert_eq!(settings.server, "https://198.18.0.1:6443");
        assert_eq!(settings.failover_servers, servers);
        let without = read.with_failover_servers(&[]);
        assert!(
            without
                .settings()
                .expect("settings")
                .failover_servers
                .is_empty()
        );

        let broken = yaml.replace("servers:", "hosts:");
        let error = serde_norway::from_str::<Kubeconfig>(&broken)
            .expect("parse")
            .settings()
            .expect_err("refused");
        assert!(error.to_string().contains(FAILOVER_EXTENSION), "{error}");
    }
}
