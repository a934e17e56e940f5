//! What the agent runs, in its own terms: converted and checked from berth-api's Pod once,
//! before the pod manager acts on it (so the manager never meets a quantity string or a
//! named port).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use berth_api::{
    core::{self as api, IntOrString},
    podsecurity::Effective,
};

use super::{
    configs::{ConfigKey, ConfigKind, TokenKey},
    images::PullPolicy,
};
use crate::{
    probes::{ContainerProbes, ProbeAction, ProbeKind, ProbeSpec},
    runtime::Limits,
};

/// Kubernetes' default: what a pod gets to shut down after SIGTERM before SIGKILL.
pub const DEFAULT_TERMINATION_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a container that ended this way is started again. A container stopped
    /// for failing its liveness or startup probe counts as failed, whatever its exit code
    /// (it exits cleanly on the SIGTERM that stopped it).
    pub fn restarts(self, exit_code: Option<i64>, killed_by_probe: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => killed_by_probe || exit_code != Some(0),
            RestartPolicy::Never => false,
        }
    }
}

/// A pod this node should run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDesired {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub restart_policy: RestartPolicy,
    /// The pod's grace, or the one its deletion was given once it is terminating.
    pub termination_grace: Duration,
    /// Deleted gracefully (the API pod has a deletionTimestamp): the node stops it, runs
    /// no more of it, and then confirms the deletion.
    pub terminating: bool,
    pub containers: Vec<ContainerDesired>,
    /// For `fieldRef`s to `metadata.labels['KEY']` and `metadata.annotations['KEY']`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub volumes: Vec<VolumeDesired>,
    /// `imagePullSecrets`: Secrets in the pod's namespace whose docker config has the
    /// credentials for the images' registries.
    pub pull_secrets: Vec<String>,
    /// The pod's host name: its `hostname`, or its name (Kubernetes' rule).
    pub hostname: String,
    /// `<subdomain>.<namespace>.svc` when the pod has a `subdomain`, so that the host's
    /// full name is the one the cluster DNS answers for it (the cluster domain follows).
    pub subdomain: String,
}

/// A volume of the pod (`super::volumes` sets it up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDesired {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A ConfigMap's or Secret's keys as files: (key, path, mode) per item, every key at
    /// its own name when `items` is empty.
    Keys {
        kind: ConfigKind,
        name: String,
        items: Vec<(String, String, Option<u32>)>,
        default_mode: u32,
        optional: bool,
    },
    EmptyDir {
        memory: bool,
        size_limit: Option<u64>,
    },
    /// Pod fields as files: (path, value, mode); a value is a `Field` or `Resource`.
    DownwardApi {
        items: Vec<DownwardItem>,
        default_mode: u32,
    },
    /// The node-local volume bound to a PersistentVolumeClaim of the pod's namespace.
    Claim { claim: String, read_only: bool },
    /// Several `Keys`, `DownwardApi` and `Token` sources as the files of one directory.
    Projected { sources: Vec<VolumeSource> },
    /// A token of the pod's ServiceAccount bound to the pod (projected only), refreshed
    /// before it expires.
    Token {
        audience: String,
        /// 0: the control plane's default lifetime.
        expiration_seconds: i64,
        path: String,
        mode: u32,
    },
    /// A path of the node, which the control plane's admin allowed; `type_` is what must
    /// be there (Kubernetes' hostPath types, empty: anything).
    HostPath { path: PathBuf, type_: String },
}

impl VolumeSource {
    /// Whether the container only reads it (ConfigMap, Secret and downward API volumes,
    /// as in Kubernetes, and a claim's volume mounted `readOnly`).
    pub fn read_only(&self) -> bool {
        match self {
            VolumeSource::EmptyDir { .. } | VolumeSource::HostPath { .. } => false,
            VolumeSource::Claim { read_only, .. } => *read_only,
            _ => true,
        }
    }
}

/// A volume of the pod mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountDesired {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
    pub sub_path: Option<String>,
}

/// Kubernetes' default mode of ConfigMap, Secret and downward API files.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

fn mode(mode: Option<i32>) -> Option<u32> {
    mode.and_then(|mode| u32::try_from(mode).ok())
}

/// A downward API file: (path, value, mode); a value is a `Field` or `Resource`.
pub type DownwardItem = (String, EnvValue, Option<u32>);

/// A downward API volume's or projection's items.
fn downward_items(
    items: &[api::DownwardApiVolumeFile],
    field: &str,
) -> Result<Vec<DownwardItem>, (String, String)> {
    items
        .iter()
        .map(|item| {
            let value = match (&item.field_ref, &item.resource_field_ref) {
                (Some(field_ref), None) => EnvValue::Field(field_ref.field_path.clone()),
                (None, Some(resource)) => EnvValue::Resource {
                    container: resource.container_name.clone(),
                    resource: resource.resource.clone(),
                    divisor: api::resource_divisor(&resource.resource, resource.divisor.as_deref())
                        .map_err(|reason| (field.to_owned(), reason))?,
                },
                _ => {
                    return Err((
                        field.to_owned(),
                        "each needs exactly one of fieldRef or resourceFieldRef".to_owned(),
                    ));
                }
            };
            Ok((item.path.clone(), value, mode(item.mode)))
        })
        .collect()
}

fn volume_from_api(volume: &api::Volume) -> Result<VolumeDesired, (String, String)> {
    let keys =
        |kind, name: &str, items: &[api::KeyToPath], default_mode, optional: Option<bool>| {
            VolumeSource::Keys {
                kind,
                name: name.to_owned(),
                items: items
                    .iter()
                    .map(|item| (item.key.clone(), item.path.clone(), mode(item.mode)))
                    .collect(),
                default_mode: mode(default_mode).unwrap_or(DEFAULT_FILE_MODE),
                optional: optional == Some(true),
            }
        };
    if let Some(source) = &volume.host_path {
        return Ok(VolumeDesired {
            name: volume.name.clone(),
            source: VolumeSource::HostPath {
                path: PathBuf::from(&source.path),
                type_: source.type_.clone(),
            },
        });
    }
    if let Some(projected) = &volume.projected {
        let default_mode = mode(projected.default_mode).unwrap_or(DEFAULT_FILE_MODE);
        let keys = |kind, source: &api::KeysProjection| VolumeSource::Keys {
            kind,
            name: source.name.clone(),
            items: source
                .items
                .iter()
                .map(|item| (item.key.clone(), item.path.clone(), mode(item.mode)))
                .collect(),
            default_mode,
            optional: source.optional == Some(true),
        };
        let sources = projected
            .sources
            .iter()
            .map(|projection| {
                match (
                    &projection.config_map,
                    &projection.secret,
                    &projection.downward_api,
                    &projection.service_account_token,
                ) {
                    (Some(source), None, None, None) => Ok(keys(ConfigKind::ConfigMap, source)),
                    (None, Some(source), None, None) => Ok(keys(ConfigKind::Secret, source)),
                    (None, None, Some(source), None) => Ok(VolumeSource::DownwardApi {
                        items: downward_items(&source.items, "projected.sources.downwardAPI")?,
                        default_mode,
                    }),
                    (None, None, None, Some(token)) => Ok(VolumeSource::Token {
                        audience: token.audience.clone(),
                        expiration_seconds: token.expiration_seconds.unwrap_or(0),
                        path: token.path.clone(),
                        // Kubernetes' token file is readable by its owner only when the
                        // volume says nothing.
                        mode: mode(projected.default_mode).unwrap_or(0o600),
                    }),
                    _ => Err((
                        "projected.sources".to_owned(),
                        "each needs exactly one of configMap, secret, downwardAPI or serviceAccountToken"
                            .to_owned(),
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        return Ok(VolumeDesired {
            name: volume.name.clone(),
            source: VolumeSource::Projected { sources },
        });
    }
    if let Some(source) = &volume.persistent_volume_claim {
        return Ok(VolumeDesired {
            name: volume.name.clone(),
            source: VolumeSource::Claim {
                claim: source.claim_name.clone(),
                read_only: source.read_only,
            },
        });
    }
    let source = match (
        &volume.config_map,
        &volume.secret,
        &volume.empty_dir,
        &volume.downward_api,
    ) {
        (Some(source), None, None, None) => keys(
            ConfigKind::ConfigMap,
            &source.name,
            &source.items,
            source.default_mode,
            source.optional,
        ),
        (None, Some(source), None, None) => keys(
            ConfigKind::Secret,
            &source.secret_name,
            &source.items,
            source.default_mode,
            source.optional,
        ),
        (None, None, Some(source), None) => VolumeSource::EmptyDir {
            memory: source.medium == "Memory",
            size_limit: source
                .size_limit
                .as_deref()
                .map(api::parse_memory_bytes)
                .transpose()
                .map_err(|reason| ("emptyDir.sizeLimit".to_owned(), reason))?,
        },
        (None, None, None, Some(source)) => VolumeSource::DownwardApi {
            items: downward_items(&source.items, "downwardAPI.items")?,
            default_mode: mode(source.default_mode).unwrap_or(DEFAULT_FILE_MODE),
        },
        _ => {
            return Err((
                String::new(),
                "needs exactly one of configMap, secret, emptyDir, downwardAPI or persistentVolumeClaim"
                    .to_owned(),
            ));
        }
    };
    Ok(VolumeDesired {
        name: volume.name.clone(),
        source,
    })
}

/// Where an environment variable's value comes from; resolved when the container is
/// created (`super::env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// As written; `$(NAME)` names an earlier variable.
    Literal(String),
    /// A key of a ConfigMap or Secret in the pod's namespace.
    Key {
        kind: ConfigKind,
        name: String,
        key: String,
        optional: bool,
    },
    /// A field of the pod (`metadata.name`, `status.podIP`, ...).
    Field(String),
    /// A container's request or limit (`limits.cpu`, ...) in units of `divisor` (of
    /// millicores or bytes).
    Resource {
        container: String,
        resource: String,
        divisor: u64,
    },
}

/// Every key of a ConfigMap or Secret as a variable, `prefix` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFrom {
    pub prefix: String,
    pub kind: ConfigKind,
    pub name: String,
    pub optional: bool,
}

/// A container's `lifecycle.preStop` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreStop {
    /// Runs in the container; the pod's grace bounds it.
    Exec(Vec<String>),
    /// The agent waits, so images without a `sleep` binary can have one too.
    Sleep(Duration),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerDesired {
    pub name: String,
    pub image: String,
    /// With Kubernetes' default applied.
    pub pull_policy: PullPolicy,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub env: Vec<(String, EnvValue)>,
    pub env_from: Vec<EnvFrom>,
    pub limits: Limits,
    /// For `resourceFieldRef`s to requests.
    pub requests: Limits,
    pub mounts: Vec<MountDesired>,
    pub probes: ContainerProbes,
    pub pre_stop: Option<PreStop>,
    /// Who it runs as and what it may do (its securityContext over its pod's).
    pub security: Effective,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod {pod}: {field}: {reason}")]
pub struct SpecError {
    pub pod: String,
    pub field: String,
    pub reason: String,
}

impl PodDesired {
    /// `namespace/name`, as logs and messages name a pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Converts a pod from the API. The API validated it already; what is checked here is
    /// what the agent needs on top (a uid, ports that fit, quantities it can use).
    pub fn from_api(pod: &api::Pod) -> Result<Self, SpecError> {
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        let error = |field: String, reason: String| SpecError {
            pod: key.clone(),
            field,
            reason,
        };
        for (field, value) in [
            ("metadata.namespace", &pod.metadata.namespace),
            ("metadata.name", &pod.metadata.name),
            ("metadata.uid", &pod.metadata.uid),
        ] {
            if value.is_empty() {
                return Err(error(field.to_owned(), "is empty".to_owned()));
            }
        }
        let restart_policy = match pod.spec.restart_policy.as_str() {
            "" | "Always" => RestartPolicy::Always,
            "OnFailure" => RestartPolicy::OnFailure,
            "Never" => RestartPolicy::Never,
            other => {
                return Err(error(
                    "spec.restartPolicy".to_owned(),
                    format!("{other:?} is not Always, OnFailure or Never"),
                ));
            }
        };
        let grace_seconds = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod.spec.termination_grace_period_seconds);
        let termination_grace = match grace_seconds {
            None => DEFAULT_TERMINATION_GRACE,
            Some(seconds) => Duration::from_secs(u64::try_from(seconds).map_err(|_| {
                error(
                    "spec.terminationGracePeriodSeconds".to_owned(),
                    "is negative".to_owned(),
                )
            })?),
        };
        let containers = pod
            .spec
            .containers
            .iter()
            .enumerate()
            .map(|(index, container)| {
                ContainerDesired::from_api(&pod.spec, container).map_err(|(field, reason)| {
                    error(format!("spec.containers[{index}].{field}"), reason)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if containers.is_empty() {
            return Err(error("spec.containers".to_owned(), "is empty".to_owned()));
        }
        let volumes = pod
            .spec
            .volumes
            .iter()
            .enumerate()
            .map(|(index, volume)| {
                volume_from_api(volume).map_err(|(field, reason)| {
                    let field = if field.is_empty() {
                        format!("spec.volumes[{index}]")
                    } else {
                        format!("spec.volumes[{index}].{field}")
                    };
                    error(field, reason)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (index, container) in containers.iter().enumerate() {
            for mount in &container.mounts {
                if !volumes.iter().any(|volume| volume.name == mount.volume) {
                    return Err(error(
                        format!("spec.containers[{index}].volumeMounts"),
                        format!("no volume {:?}", mount.volume),
                    ));
                }
            }
        }
        Ok(PodDesired {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            restart_policy,
            termination_grace,
            terminating: !pod.metadata.deletion_timestamp.is_empty(),
            containers,
            labels: pod.metadata.labels.clone(),
            annotations: pod.metadata.annotations.clone(),
            volumes,
            pull_secrets: pod
                .spec
                .image_pull_secrets
                .iter()
                .map(|secret| secret.name.clone())
                .collect(),
            hostname: if pod.spec.hostname.is_empty() {
                pod.metadata.name.clone()
            } else {
                pod.spec.hostname.clone()
            },
            subdomain: if pod.spec.subdomain.is_empty() {
                String::new()
            } else {
                format!("{}.{}.svc", pod.spec.subdomain, pod.metadata.namespace)
            },
        })
    }

    /// The ServiceAccount tokens the pod's volumes hold: what its node asks for and
    /// refreshes.
    pub fn token_keys(&self) -> BTreeSet<TokenKey> {
        self.volumes
            .iter()
            .flat_map(|volume| match &volume.source {
                VolumeSource::Projected { sources } => sources.as_slice(),
                _ => &[],
            })
            .filter_map(|source| match source {
                VolumeSource::Token {
                    audience,
                    expiration_seconds,
                    ..
                } => Some(self.token_key(audience, *expiration_seconds)),
                _ => None,
            })
            .collect()
    }

    pub fn token_key(&self, audience: &str, expiration_seconds: i64) -> TokenKey {
        TokenKey {
            namespace: self.namespace.clone(),
            pod: self.name.clone(),
            uid: self.uid.clone(),
            audience: audience.to_owned(),
            expiration_seconds,
        }
    }

    /// The ConfigMaps, Secrets and claims' volumes the pod reads: what its node fetches
    /// for it.
    pub fn config_keys(&self) -> BTreeSet<ConfigKey> {
        let key = |kind, name: &str| ConfigKey {
            kind,
            namespace: self.namespace.clone(),
            name: name.to_owned(),
        };
        let mut keys = BTreeSet::new();
        for secret in &self.pull_secrets {
            keys.insert(key(ConfigKind::Secret, secret));
        }
        let projected = self.volumes.iter().flat_map(|volume| match &volume.source {
            VolumeSource::Projected { sources } => sources.as_slice(),
            _ => &[],
        });
        for source in projected {
            if let VolumeSource::Keys { kind, name, .. } = source {
                keys.insert(key(*kind, name));
            }
        }
        for volume in &self.volumes {
            match &volume.source {
                VolumeSource::Keys { kind, name, .. } => {
                    keys.insert(key(*kind, name));
                }
                VolumeSource::Claim { claim, .. } => {
                    keys.insert(key(ConfigKind::PersistentVolumeClaim, claim));
                }
                _ => {}
            }
        }
        for container in &self.containers {
            for (_, value) in &container.env {
                if let EnvValue::Key { kind, name, .. } = value {
                    keys.insert(key(*kind, name));
                }
            }
            for from in &container.env_from {
                keys.insert(key(from.kind, &from.name));
            }
        }
        keys
    }
}

fn env_from_api(var: &api::EnvVar) -> Result<EnvValue, (String, String)> {
    let Some(source) = &var.value_from else {
        return Ok(EnvValue::Literal(var.value.clone()));
    };
    let key = |kind, selector: &api::KeySelector| EnvValue::Key {
        kind,
        name: selector.name.clone(),
        key: selector.key.clone(),
        optional: selector.optional == Some(true),
    };
    Ok(
        match (
            &source.config_map_key_ref,
            &source.secret_key_ref,
            &source.field_ref,
            &source.resource_field_ref,
        ) {
            (Some(selector), None, None, None) => key(ConfigKind::ConfigMap, selector),
            (None, Some(selector), None, None) => key(ConfigKind::Secret, selector),
            (None, None, Some(field), None) => EnvValue::Field(field.field_path.clone()),
            (None, None, None, Some(resource)) => EnvValue::Resource {
                container: resource.container_name.clone(),
                resource: resource.resource.clone(),
                divisor: api::resource_divisor(&resource.resource, resource.divisor.as_deref())
                    .map_err(|reason| ("valueFrom.resourceFieldRef.divisor".to_owned(), reason))?,
            },
            _ => {
                return Err((
                    "valueFrom".to_owned(),
                    "needs exactly one source".to_owned(),
                ));
            }
        },
    )
}

fn pre_stop_from_api(container: &api::Container) -> Result<Option<PreStop>, (String, String)> {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|lifecycle| lifecycle.pre_stop.as_ref())
    else {
        return Ok(None);
    };
    let error = |reason: &str| Err(("lifecycle.preStop".to_owned(), reason.to_owned()));
    match (&handler.exec, &handler.sleep) {
        (Some(exec), None) if !exec.command.is_empty() => {
            Ok(Some(PreStop::Exec(exec.command.clone())))
        }
        (None, Some(sleep)) => match u64::try_from(sleep.seconds) {
            Ok(seconds) => Ok(Some(PreStop::Sleep(Duration::from_secs(seconds)))),
            Err(_) => error("sleep.seconds is negative"),
        },
        _ => error("needs exactly one of a non-empty exec command or sleep"),
    }
}

impl ContainerDesired {
    fn from_api(pod: &api::PodSpec, container: &api::Container) -> Result<Self, (String, String)> {
        let non_empty = |list: &Vec<String>| (!list.is_empty()).then(|| list.clone());
        let limits = &container.resources.limits;
        let cpu_millis = limits
            .get("cpu")
            .map(|quantity| api::parse_cpu_millis(quantity))
            .transpose()
            .map_err(|reason| ("resources.limits.cpu".to_owned(), reason))?;
        let memory_bytes = limits
            .get("memory")
            .map(|quantity| api::parse_memory_bytes(quantity))
            .transpose()
            .map_err(|reason| ("resources.limits.memory".to_owned(), reason))?;
        let probe = |field: &str, kind, probe: &Option<api::Probe>| {
            probe
                .as_ref()
                .map(|probe| probe_from_api(kind, probe, container))
                .transpose()
                .map_err(|reason| (field.to_owned(), reason))
        };
        let requests = &container.resources.requests;
        let env = container
            .env
            .iter()
            .enumerate()
            .map(|(index, var)| {
                env_from_api(var)
                    .map(|value| (var.name.clone(), value))
                    .map_err(|(field, reason)| (format!("env[{index}].{field}"), reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let env_from = container
            .env_from
            .iter()
            .enumerate()
            .map(|(index, from)| {
                let (kind, reference) = match (&from.config_map_ref, &from.secret_ref) {
                    (Some(reference), None) => (ConfigKind::ConfigMap, reference),
                    (None, Some(reference)) => (ConfigKind::Secret, reference),
                    _ => {
                        return Err((
                            format!("envFrom[{index}]"),
                            "needs exactly one of configMapRef or secretRef".to_owned(),
                        ));
                    }
                };
                Ok(EnvFrom {
                    prefix: from.prefix.clone(),
                    kind,
                    name: reference.name.clone(),
                    optional: reference.optional == Some(true),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ContainerDesired {
            name: container.name.clone(),
            image: container.image.clone(),
            pull_policy: PullPolicy::from_api(&container.image_pull_policy, &container.image)
                .map_err(|reason| ("imagePullPolicy".to_owned(), reason))?,
            command: non_empty(&container.command),
            args: non_empty(&container.args),
            working_dir: (!container.working_dir.is_empty()).then(|| container.working_dir.clone()),
            env,
            env_from,
            limits: Limits {
                // A limit of 0 means "none" in a manifest, as in Kubernetes.
                cpu_millis: cpu_millis.filter(|millis| *millis > 0),
                memory_bytes: memory_bytes.filter(|bytes| *bytes > 0),
            },
            mounts: container
                .volume_mounts
                .iter()
                .map(|mount| MountDesired {
                    volume: mount.name.clone(),
                    path: mount.mount_path.clone(),
                    read_only: mount.read_only,
                    sub_path: (!mount.sub_path.is_empty()).then(|| mount.sub_path.clone()),
                })
                .collect(),
            requests: Limits {
                cpu_millis: requests
                    .get("cpu")
                    .and_then(|quantity| api::parse_cpu_millis(quantity).ok()),
                memory_bytes: requests
                    .get("memory")
                    .and_then(|quantity| api::parse_memory_bytes(quantity).ok()),
            },
            probes: ContainerProbes {
                // berth-api has no startup or exec probes yet; the agent's model has both.
                startup: None,
                liveness: probe(
                    "livenessProbe",
                    ProbeKind::Liveness,
                    &container.liveness_probe,
                )?,
                readiness: probe(
                    "readinessProbe",
                    ProbeKind::Readiness,
                    &container.readiness_probe,
                )?,
            },
            pre_stop: pre_stop_from_api(container)?,
            security: Effective::of(pod, container),
        })
    }

    /// A hash of what the container runs. It is a label on the container, so a changed
    /// spec is noticed even across agent restarts; FNV-1a because std's hasher may change
    /// between Rust releases, which would restart every container after an upgrade.
    /// Probes are left out: changing them needs no new container.
    pub fn spec_hash(&self) -> String {
        let mut hash = Fnv::default();
        hash.field(self.image.as_bytes());
        for list in [&self.command, &self.args] {
            match list {
                None => hash.field(b"-"),
                Some(words) => {
                    hash.field(b"+");
                    for word in words {
                        hash.field(word.as_bytes());
                    }
                }
            }
        }
        for (key, value) in &self.env {
            hash.field(key.as_bytes());
            match value {
                EnvValue::Literal(value) => hash.field(value.as_bytes()),
                // 0xfe never occurs in UTF-8: no literal hashes like a source. Literal
                // variables hash as they did before sources existed, so an upgrade
                // replaces no container.
                EnvValue::Key {
                    kind,
                    name,
                    key,
                    optional,
                } => hash.field(
                    &[
                        &[0xfe][..],
                        kind.as_str().as_bytes(),
                        name.as_bytes(),
                        b"/",
                        key.as_bytes(),
                        if *optional { b"?" } else { b"!" },
                    ]
                    .concat(),
                ),
                EnvValue::Field(path) => {
                    hash.field(&[&[0xfe][..], b"field:", path.as_bytes()].concat())
                }
                EnvValue::Resource {
                    container,
                    resource,
                    divisor,
                } => hash.field(
                    &[
                        &[0xfe][..],
                        b"resource:",
                        container.as_bytes(),
                        b"/",
                        resource.as_bytes(),
                        b"/",
                        divisor.to_string().as_bytes(),
                    ]
                    .concat(),
                ),
            }
        }
        // Hashed only when present, for the same reason.
        for from in &self.env_from {
            hash.field(
                &[
                    &[0xfe][..],
                    b"envFrom:",
                    from.kind.as_str().as_bytes(),
                    from.name.as_bytes(),
                    b"/",
                    from.prefix.as_bytes(),
                    if from.optional { b"?" } else { b"!" },
                ]
                .concat(),
            );
        }
        if let Some(dir) = &self.working_dir {
            hash.field(&[&[0xfe][..], b"workingDir:", dir.as_bytes()].concat());
        }
        for mount in &self.mounts {
            hash.field(
                &[
                    &[0xfe][..],
                    b"mount:",
                    mount.volume.as_bytes(),
                    b"/",
                    mount.path.as_bytes(),
                    b"/",
                    mount.sub_path.as_deref().unwrap_or_default().as_bytes(),
                    if mount.read_only { b"r" } else { b"w" },
                ]
                .concat(),
            );
        }
        for limit in [self.limits.cpu_millis, self.limits.memory_bytes] {
            hash.field(limit.map(|n| n.to_string()).unwrap_or_default().as_bytes());
        }
        // Hashed only when set, so containers from before keep their hash.
        if self.security != Effective::default() {
            hash.field(
                &[
                    &[0xfe][..],
                    b"security:",
                    format!("{:?}", self.security).as_bytes(),
                ]
                .concat(),
            );
        }
        format!("{:016x}", hash.0)
    }
}

fn probe_from_api(
    kind: ProbeKind,
    probe: &api::Probe,
    container: &api::Container,
) -> Result<ProbeSpec, String> {
    let port = |port: &IntOrString| -> Result<u16, String> {
        let number = match port {
            IntOrString::Int(number) => *number,
            IntOrString::String(name) => container
                .ports
                .iter()
                .find(|port| &port.name == name)
                .map(|port| port.container_port)
                .ok_or_else(|| format!("no container port is named {name:?}"))?,
        };
        u16::try_from(number)
            .ok()
            .filter(|number| *number > 0)
            .ok_or_else(|| format!("port {number} is not in 1-65535"))
    };
    let action = match (&probe.http_get, &probe.tcp_socket) {
        (Some(http), None) => ProbeAction::HttpGet {
            port: port(&http.port)?,
            path: http.path.clone(),
        },
        (None, Some(tcp)) => ProbeAction::TcpSocket {
            port: port(&tcp.port)?,
        },
        _ => return Err("needs exactly one of httpGet or tcpSocket".to_owned()),
    };
    let mut spec = ProbeSpec::new(kind, action);
    let seconds = |field: &str, value: i32, minimum: i32| {
        if value < minimum {
            Err(format!("{field} must be at least {minimum}"))
        } else {
            Ok(Duration::from_secs(u64::from(value.unsigned_abs())))
        }
    };
    spec.initial_delay = seconds("initialDelaySeconds", probe.initial_delay_seconds, 0)?;
    if let Some(period) = probe.period_seconds {
        spec.period = seconds("periodSeconds", period, 1)?;
    }
    if let Some(timeout) = probe.timeout_seconds {
        spec.timeout = seconds("timeoutSeconds", timeout, 1)?;
    }
    let threshold = |field: &str, value: i32| {
        u32::try_from(value)
            .ok()
            .filter(|value| *value >= 1)
            .ok_or_else(|| format!("{field} must be at least 1"))
    };
    if let Some(failures) = probe.failure_threshold {
        spec.failure_threshold = threshold("failureThreshold", failures)?;
    }
    if let Some(successes) = probe.success_threshold {
        spec.success_threshold = threshold("successThreshold", successes)?;
        // As in Kubernetes: one success is all a liveness or startup probe can need.
        if kind != ProbeKind::Readiness && spec.success_threshold != 1 {
            return Err("successThreshold must be 1 for liveness and startup probes".to_owned());
        }
    }
    Ok(spec)
}

/// 64-bit FNV-1a; each field ends with a 0xff byte (never in UTF-8) so fields can't run
/// into each other.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn field(&mut self, bytes: &[u8]) {
        for byte in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_pod() -> api::Pod {
        let manifest = serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-0", "uid": "u-1"},
            "spec": {
                "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 3,
                "containers": [{
                    "name": "echo",
                    "image": "berth/echo:v1",
                    "args": ["--port", "8080"],
                    "env": [{"name": "POD_NAME", "value": "web-0"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 5}
                }]
            }
        });
        serde_json::from_value(manifest).expect("a pod")
    }

    #[test]
    fn a_deleted_pod_is_terminating_with_its_deletion_grace_and_hooks() {
        let mut pod = api_pod();
        assert!(!PodDesired::from_api(&pod).expect("convertible").terminating);
        pod.metadata.deletion_timestamp = "2026-01-01T00:00:10Z".to_owned();
        pod.metadata.deletion_grace_period_seconds = Some(10);
        pod.spec.containers[0].lifecycle = Some(api::Lifecycle {
            pre_stop: Some(api::LifecycleHandler {
                sleep: Some(api::SleepAction { seconds: 2 }),
                ..api::LifecycleHandler::default()
            }),
        });
        let desired = PodDesired::from_api(&pod).expect("convertible");
        assert!(desired.terminating);
        assert_eq!(desired.termination_grace, Duration::from_secs(10));
        assert_eq!(
            desired.containers[0].pre_stop,
            Some(PreStop::Sleep(Duration::from_secs(2)))
        );
        // The hook is no part of what the container runs: changing it restarts nothing.
        let mut without = desired.containers[0].clone();
        without.pre_stop = None;
        assert_eq!(without.spec_hash(), desired.containers[0].spec_hash());
    }

    #[test]
    fn converts_an_api_pod() {
        let pod = PodDesired::from_api(&api_pod()).expect("convertible");
        assert_eq!(pod.key(), "default/web-0");
        assert_eq!(pod.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(pod.termination_grace, Duration::from_secs(3));
        let container = &pod.containers[0];
        assert_eq!(container.command, None);
        assert_eq!(container.args.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(container.limits.cpu_millis, Some(250));
        assert_eq!(container.limits.memory_bytes, Some(64 << 20));
        let readiness = container
            .probes
            .readiness
            .as_ref()
            .expect("a readiness probe");
        assert_eq!(
            readiness.action,
            ProbeAction::HttpGet {
                port: 8080,
                path: "/readyz".to_owned()
            }
        );
        assert_eq!(readiness.period, Duration::from_secs(2));
        assert_eq!(readiness.failure_threshold, 1, "the default");
        let liveness = container
            .probes
            .liveness
            .as_ref()
            .expect("a liveness probe");
        assert_eq!(liveness.failure_threshold, 5);
        assert_eq!(liveness.timeout, Duration::from_secs(1));
    }

    #[test]
    fn refuses_what_the_agent_cannot_run() {
        let mut pod = api_pod();
        pod.metadata.uid.clear();
        assert!(PodDesired::from_api(&pod).is_err());
        let mut pod = api_pod();
        pod.spec.containers[0]
            .liveness_probe
            .as_mut()
            .expect("a probe")
            .success_threshold = Some(2);
        let error = PodDesired::from_api(&pod).expect_err("liveness needs one success");
        assert!(error.field.ends_with("livenessProbe"), "{error}");
    }

    #[test]
    fn spec_hash_follows_what_runs_not_probes() {
        let container = PodDesired::from_api(&api_pod())
            .expect("convertible")
            .containers[0]
            .clone();
        let mut probes_changed = container.clone();
        probes_changed.probes = ContainerProbes::default();
        assert_eq!(container.spec_hash(), probes_changed.spec_hash());
        let mut image_changed = container.clone();
        image_changed.image = "berth/echo:v2".to_owned();
        assert_ne!(container.spec_hash(), image_changed.spec_hash());
        let mut moved = container.clone();
        moved.args = Some(vec!["--port8080".to_owned()]);
        assert_ne!(container.spec_hash(), moved.spec_hash());
        assert_eq!(container.spec_hash().len(), 16);
    }

    #[test]
    fn env_sources_are_converted_and_part_of_the_spec_hash() {
        let mut pod = api_pod();
        pod.spec.containers[0].env.push(
            serde_json::from_value(serde_json::json!(
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "mode"}}}
            ))
            .expect("env var"),
        );
        pod.spec.containers[0].env_from.push(
            serde_json::from_value(
                serde_json::json!({"prefix": "DB_", "secretRef": {"name": "db", "optional": true}}),
            )
            .expect("env from"),
        );
        let desired = PodDesired::from_api(&pod).expect("convertible");
        let container = &desired.containers[0];
        assert_eq!(
            container.env[1].1,
            EnvValue::Key {
                kind: ConfigKind::ConfigMap,
                name: "app".into(),
                key: "mode".into(),
                optional: false
            }
        );
        let keys: Vec<(ConfigKind, String)> = desired
            .config_keys()
            .into_iter()
            .map(|key| (key.kind, key.name))
            .collect();
        assert_eq!(
            keys,
            [
                (ConfigKind::ConfigMap, "app".to_owned()),
                (ConfigKind::Secret, "db".to_owned())
            ]
        );
        // A literal with the same text is another spec.
        let mut literal = container.clone();
        literal.env[1].1 = EnvValue::Literal("app/mode".into());
        assert_ne!(literal.spec_hash(), container.spec_hash());
        let mut without = container.clone();
        without.env_from.clear();
        assert_ne!(without.spec_hash(), container.spec_hash());
    }

    #[test]
    fn pull_secrets_are_fetched_and_pull_policies_defaulted() {
        let mut pod = api_pod();
        pod.spec.image_pull_secrets = vec![api::LocalObjectReference {
            name: "registry-login".into(),
        }];
        pod.spec.containers[0].image = "198.18.7.2:5000/app".into();
        let desired = PodDesired::from_api(&pod).expect("convertible");
        assert_eq!(desired.pull_secrets, ["registry-login"]);
        assert!(desired.config_keys().contains(&ConfigKey {
            kind: ConfigKind::Secret,
            namespace: pod.metadata.namespace.clone(),
            name: "registry-login".into(),
        }));
        assert_eq!(desired.containers[0].pull_policy, PullPolicy::Always);
        pod.spec.containers[0].image_pull_policy = "Never".into();
        let never = PodDesired::from_api(&pod).expect("convertible");
        assert_eq!(never.containers[0].pull_policy, PullPolicy::Never);
        pod.spec.containers[0].image_pull_policy = "Sometimes".into();
        let refused = PodDesired::from_api(&pod).expect_err("unknown policy");
        assert_eq!(refused.field, "spec.containers[0].imagePullPolicy");
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::Always.restarts(Some(0), false));
        assert!(!RestartPolicy::OnFailure.restarts(Some(0), false));
        assert!(RestartPolicy::OnFailure.restarts(Some(0), true));
        assert!(RestartPolicy::OnFailure.restarts(Some(137), false));
        assert!(RestartPolicy::OnFailure.restarts(None, false));
        assert!(!RestartPolicy::Never.restarts(Some(1), true));
    }
}
