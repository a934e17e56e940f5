//! The Docker Engine through bollard.

use std::{collections::HashMap, time::Duration};

use bollard::{
    API_DEFAULT_VERSION, Docker,
    auth::DockerCredentials,
    container::LogOutput,
    errors::Error as BollardError,
    exec::{CreateExecOptions, StartExecOptions, StartExecResults},
    models::{
        ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount as EngineMount, MountTypeEnum,
        MountVolumeOptions, MountVolumeOptionsDriverConfig, RestartPolicy, RestartPolicyNameEnum,
    },
    query_parameters::{AttachContainerOptions, ResizeContainerTTYOptions, ResizeExecOptions},
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
        InspectContainerOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
        ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
        RemoveVolumeOptionsBuilder, StartContainerOptions, StatsOptionsBuilder,
        StopContainerOptionsBuilder,
    },
};
use futures_util::{Stream, StreamExt as _};

use super::{
    ContainerSpec, ContainerStats, ContainerStatus, ContainerSummary, ExecCapture, ExecOutput,
    Limits, LogOptions, Mount, MountSource, NetworkMode, RegistryCredentials, RuntimeError,
    Session, SessionChunk, SessionStreams, image_tag,
};

/// Exec output beyond this is dropped: probes only need the exit code, and a chatty
/// command must not make the agent buffer without bound.
const MAX_EXEC_OUTPUT: usize = 4096;

/// Engine requests give up after this long, so a hung engine shows up as an error.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// The engine reports "never" as Go's zero time.
const ZERO_TIME_PREFIX: &str = "0001-01-01";

#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

impl DockerRuntime {
    /// Connects to the engine at `socket_path` (a path, or `unix://` URL).
    pub async fn connect(socket_path: &str) -> Result<Self, RuntimeError> {
        let connect_error = |source| RuntimeError::Connect {
            socket: socket_path.to_owned(),
            source,
        };
        let docker =
            Docker::connect_with_unix(socket_path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                .map_err(connect_error)?;
        // bollard speaks the newest API and engines refuse clients newer than themselves
        // (Debian's 20.10 speaks 1.41), so settle on the engine's version first. This is
        // also the first request: a dead engine fails here, not in the middle of a pod.
        let docker = docker.negotiate_version().await.map_err(connect_error)?;
        Ok(DockerRuntime { docker })
    }

    /// The user an image runs as when nothing says otherwise (its `USER`; empty: root).
    pub async fn image_user(&self, image: &str) -> Result<String, RuntimeError> {
        let inspected =
            self.docker
                .inspect_image(image)
                .await
                .map_err(|source| RuntimeError::Docker {
                    operation: "image inspect",
                    source,
                })?;
        Ok(inspected
            .config
            .and_then(|config| config.user)
            .unwrap_or_default())
    }

    pub async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(error) if status_code(&error) == Some(404) => Ok(false),
            Err(source) => Err(RuntimeError::Docker {
                operation: "image inspect",
                source,
            }),
        }
    }

    /// Pulls `image` from its registry through the engine (Docker Registry HTTP API v2),
    /// with `credentials` for that registry if given; an untagged name means `:latest`,
    /// as in Kubernetes. Fails with the engine's message, which carries the registry's.
    pub async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), RuntimeError> {
        let reference = match image_tag(image) {
            Some(_) => image.to_owned(),
            None => format!("{image}:latest"),
        };
        let options = CreateImageOptionsBuilder::new()
            .from_image(&reference)
            .build();
        let credentials = credentials.map(|credentials| DockerCredentials {
            username: Some(credentials.username.clone()),
            password: Some(credentials.password.clone()),
            serveraddress: Some(credentials.server.clone()),
            identitytoken: credentials.identity_token.clone(),
            ..DockerCredentials::default()
        });
        let failed = |message: String| RuntimeError::Pull {
            image: image.to_owned(),
            message,
        };
        let progress = self.docker.create_image(Some(options), None, credentials);
        tokio::pin!(progress);
        while let Some(item) = progress.next().await {
            let info = item.map_err(|error| failed(engine_message(error)))?;
            // A failure after the pull started comes as a message in the stream.
            if let Some(message) = info
                .error_detail
                .and_then(|detail| detail.message)
                .or(info.error)
            {
                return Err(failed(message));
            }
        }
        Ok(())
    }

    /// Fails with [`RuntimeError::ImageNotFound`] when the image isn't on this node.
    pub async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if self.image_present(image).await? {
            Ok(())
        } else {
            Err(RuntimeError::ImageNotFound {
                image: image.to_owned(),
            })
        }
    }

    /// Creates and starts the container and returns its id. If the start fails the
    /// created container is removed again, so a retry doesn't run into its name.
    pub async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        spec.validate()?;
        self.ensure_image(&spec.image).await?;
        let name = spec.docker_name();
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match self
            .docker
            .create_container(Some(options), create_body(spec)?)
            .await
        {
            Ok(created) => created,
            Err(error) if status_code(&error) == Some(409) => {
                return Err(RuntimeError::AlreadyExists { name });
            }
            // The image went away between the check and the create.
            Err(error) if status_code(&error) == Some(404) => {
                return Err(RuntimeError::ImageNotFound {
                    image: spec.image.clone(),
                });
            }
            Err(source) => {
                return Err(RuntimeError::Docker {
                    operation: "container create",
                    source,
                });
            }
        };
        if let Err(source) = self
            .docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
        {
            // Best effort: the start error is the one worth reporting.
            let _ = self.remove(&created.id).await;
            return Err(RuntimeError::Docker {
                operation: "container start",
                source,
            });
        }
        Ok(created.id)
    }

    /// The container's state, pid, limits and environment; `container` is an id or name.
    pub async fn inspect(&self, container: &str) -> Result<ContainerStatus, RuntimeError> {
        const OPERATION: &str = "container inspect";
        let info = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|error| not_found_or(error, container, OPERATION))?;
        let id = info.id.ok_or(RuntimeError::Incomplete {
            operation: OPERATION,
            missing: "the container id",
        })?;
        let state = info.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let started_at = real_time(state.started_at);
        let finished_at = real_time(state.finished_at);
        let config = info.config.unwrap_or_default();
        let host = info.host_config.unwrap_or_default();
        Ok(ContainerStatus {
            id,
            name: info
                .name
                .map(|name| name.trim_start_matches('/').to_owned())
                .unwrap_or_default(),
            image: config.image.unwrap_or_default(),
            running,
            pid: state
                .pid
                .filter(|_| running)
                .and_then(|pid| u32::try_from(pid).ok())
                .filter(|pid| *pid > 0),
            // A created container reports exit code 0 though it never ran.
            exit_code: if running || finished_at.is_none() {
                None
            } else {
                state.exit_code
            },
            oom_killed: state.oom_killed.unwrap_or(false),
            restart_count: info
                .restart_count
                .and_then(|count| u64::try_from(count).ok())
                .unwrap_or(0),
            started_at,
            finished_at,
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            env: config.env.unwrap_or_default(),
            limits: Limits {
                cpu_millis: host
                    .nano_cpus
                    .and_then(|nanos| u64::try_from(nanos).ok())
                    .filter(|nanos| *nanos > 0)
                    .map(|nanos| nanos / 1_000_000),
                memory_bytes: host
                    .memory
                    .and_then(|bytes| u64::try_from(bytes).ok())
                    .filter(|bytes| *bytes > 0),
            },
        })
    }

    /// One sample of the container's CPU and memory counters. One-shot: the engine does
    /// not wait a second for a second sample; callers keep the previous one themselves.
    pub async fn stats(&self, container: &str) -> Result<ContainerStats, RuntimeError> {
        const OPERATION: &str = "container stats";
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let sample = self
            .docker
            .stats(container, Some(options))
            .next()
            .await
            .ok_or(RuntimeError::Incomplete {
                operation: OPERATION,
                missing: "a sample",
            })?
            .map_err(|error| not_found_or(error, container, OPERATION))?;
        let cpu = sample.cpu_stats.unwrap_or_default();
        let usage = cpu.cpu_usage.unwrap_or_default();
        let memory = sample.memory_stats.unwrap_or_default();
        let counters = memory.stats.unwrap_or_default();
        Ok(ContainerStats {
            cpu_ns: usage.total_usage.unwrap_or(0),
            system_cpu_ns: cpu.system_cpu_usage.unwrap_or(0),
            online_cpus: cpu
                .online_cpus
                .or_else(|| {
                    usage
                        .percpu_usage
                        .and_then(|per_cpu| u32::try_from(per_cpu.len()).ok())
                })
                .unwrap_or(1),
            memory_bytes: memory.usage.unwrap_or(0),
            // cgroup v1 names it total_inactive_file, v2 inactive_file.
            inactive_file_bytes: counters
                .get("total_inactive_file")
                .or_else(|| counters.get("inactive_file"))
                .copied()
                .unwrap_or(0),
        })
    }

    /// Sends SIGTERM (or the image's stop signal), and kills after `grace`. Stopping a
    /// stopped container is not an error.
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<(), RuntimeError> {
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(seconds).build();
        match self.docker.stop_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if status_code(&error) == Some(304) => Ok(()),
            Err(error) => Err(not_found_or(error, container, "container stop")),
        }
    }

    /// Sends `signal` (`SIGKILL`, `SIGTERM`, ...) to the container's init process.
    pub async fn kill(&self, container: &str, signal: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        self.docker
            .kill_container(container, Some(options))
            .await
            .map_err(|error| not_found_or(error, container, "container kill"))
    }

    /// Runs `command` in the running container and waits at most `timeout` for it.
    /// The engine has no way to stop an exec'd process, so on timeout it may run on
    /// (as with Kubernetes' dockershim); the caller gets [`RuntimeError::Timeout`].
    /// Output is interleaved and cut at a few KiB: what probes need.
    pub async fn exec(
        &self,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let captured = self
            .exec_captured(container, command, timeout, MAX_EXEC_OUTPUT)
            .await?;
        Ok(ExecOutput {
            exit_code: captured.exit_code,
            output: String::from_utf8_lossy(&captured.interleaved).into_owned(),
        })
    }

    /// Like [`DockerRuntime::exec`], keeping standard output and error apart and up to
    /// `max_bytes` of output in all: for users' commands (`berthctl exec`).
    pub async fn exec_captured(
        &self,
        container: &str,
        command: &[String],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<ExecCapture, RuntimeError> {
        tokio::time::timeout(timeout, self.exec_inner(container, command, max_bytes))
            .await
            .map_err(|_| RuntimeError::Timeout {
                operation: "container exec",
                timeout,
            })?
    }

    async fn exec_inner(
        &self,
        container: &str,
        command: &[String],
        max_bytes: usize,
    ) -> Result<ExecCapture, RuntimeError> {
        let streams = SessionStreams {
            stdout: true,
            stderr: true,
            ..SessionStreams::default()
        };
        let session = self.exec_session(container, command, streams, None).await?;
        let mut output = session.output;
        let mut captured = ExecCapture::default();
        // The stream ends when the command does.
        while let Some(chunk) = output.next().await {
            captured.push(chunk?, max_bytes);
        }
        let exec = session.exec_id.ok_or(RuntimeError::Incomplete {
            operation: "exec start",
            missing: "the exec id",
        })?;
        captured.exit_code = self.exec_exit_code(&exec).await?;
        Ok(captured)
    }

    /// Starts `command` in the running container with the standard streams `streams`
    /// asks for, and leaves it running: the caller feeds its input and reads its output
    /// until it ends, then asks [`DockerRuntime::exec_exit_code`]. `size` is the
    /// terminal's first size (width, height), set before any output is read.
    pub async fn exec_session(
        &self,
        container: &str,
        command: &[String],
        streams: SessionStreams,
        size: Option<(u16, u16)>,
    ) -> Result<Session, RuntimeError> {
        if command.is_empty() {
            return Err(RuntimeError::InvalidSpec(
                "exec command is empty".to_owned(),
            ));
        }
        let options = CreateExecOptions {
            attach_stdin: Some(streams.stdin),
            attach_stdout: Some(streams.stdout),
            attach_stderr: Some(streams.stderr && !streams.tty),
            tty: Some(streams.tty),
            cmd: Some(command.to_vec()),
            ..CreateExecOptions::default()
        };
        let created = self
            .docker
            .create_exec(container, options)
            .await
            .map_err(|error| not_found_or(error, container, "exec create"))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: streams.tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|source| RuntimeError::Docker {
                operation: "exec start",
                source,
            })?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::Incomplete {
                operation: "exec start",
                missing: "the attached streams",
            });
        };
        if let (true, Some((width, height))) = (streams.tty, size) {
            self.resize_exec(&created.id, width, height).await?;
        }
        Ok(Session {
            output: session_output(output, "exec output"),
            input,
            exec_id: Some(created.id),
        })
    }

    /// Sets the terminal size of a running exec.
    pub async fn resize_exec(
        &self,
        exec: &str,
        width: u16,
        height: u16,
    ) -> Result<(), RuntimeError> {
        self.docker
            .resize_exec(
                exec,
                ResizeExecOptions {
                    h: i32::from(height),
                    w: i32::from(width),
                },
            )
            .await
            .map_err(|source| RuntimeError::Docker {
                operation: "exec resize",
                source,
            })
    }

    /// The exit code of an exec whose output has ended.
    pub async fn exec_exit_code(&self, exec: &str) -> Result<i64, RuntimeError> {
        let inspected =
            self.docker
                .inspect_exec(exec)
                .await
                .map_err(|source| RuntimeError::Docker {
                    operation: "exec inspect",
                    source,
                })?;
        inspected.exit_code.ok_or(RuntimeError::Incomplete {
            operation: "exec inspect",
            missing: "the exit code",
        })
    }

    /// Attaches to the standard streams of the container's own process, from now on
    /// (no past output). Its input reaches the process only if the container was
    /// created with its standard input open.
    pub async fn attach(
        &self,
        container: &str,
        streams: SessionStreams,
    ) -> Result<Session, RuntimeError> {
        let options = AttachContainerOptions {
            stream: true,
            stdin: streams.stdin,
            stdout: streams.stdout,
            stderr: streams.stderr,
            ..AttachContainerOptions::default()
        };
        let attached = self
            .docker
            .attach_container(container, Some(options))
            .await
            .map_err(|error| not_found_or(error, container, "container attach"))?;
        Ok(Session {
            output: session_output(attached.output, "attach output"),
            input: attached.input,
            exec_id: None,
        })
    }

    /// Sets the terminal size of a container started with a terminal.
    pub async fn resize_container(
        &self,
        container: &str,
        width: u16,
        height: u16,
    ) -> Result<(), RuntimeError> {
        self.docker
            .resize_container_tty(
                container,
                ResizeContainerTTYOptions {
                    h: i32::from(height),
                    w: i32::from(width),
                },
            )
            .await
            .map_err(|error| not_found_or(error, container, "container resize"))
    }

    /// The container's output as the engine keeps it (both streams, in order), ending
    /// with what is there unless `options.follow`, in which case it goes on until the
    /// container stops or the stream is dropped.
    pub fn logs(
        &self,
        container: &str,
        options: &LogOptions,
    ) -> impl Stream<Item = Result<Vec<u8>, RuntimeError>> + use<> {
        let mut builder = LogsOptionsBuilder::new()
            .follow(options.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(options.timestamps);
        if let Some(tail) = options.tail_lines {
            builder = builder.tail(&tail.to_string());
        }
        let container = container.to_owned();
        self.docker
            .logs(&container, Some(builder.build()))
            .map(move |chunk| {
                chunk
                    .map(|output| output.into_bytes().to_vec())
                    .map_err(|error| not_found_or(error, &container, "container logs"))
            })
    }

    /// Removes the container, killing it first if it still runs, with its anonymous
    /// volumes. A container that is already gone (or going) is not an error: removal is
    /// what cleanup paths call, and they must be safe to repeat.
    pub async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(error) if matches!(status_code(&error), Some(404 | 409)) => Ok(()),
            Err(source) => Err(RuntimeError::Docker {
                operation: "container remove",
                source,
            }),
        }
    }

    /// The ids of containers carrying all of `labels` as they die (exit, are killed, run
    /// out of memory), from the engine's event stream: a crash is seen at once instead of
    /// at the next poll. The stream ends (or fails) when the connection does.
    pub fn container_deaths(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Stream<Item = Result<String, RuntimeError>> + use<> {
        let mut filters: HashMap<&str, Vec<String>> = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("event", vec!["die".to_owned()]),
        ]);
        filters.insert(
            "label",
            labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
        );
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        self.docker.events(Some(options)).map(|event| {
            let event = event.map_err(|source| RuntimeError::Docker {
                operation: "events",
                source,
            })?;
            event
                .actor
                .and_then(|actor| actor.id)
                .ok_or(RuntimeError::Incomplete {
                    operation: "events",
                    missing: "the container id",
                })
        })
    }

    /// Removes the engine's volumes carrying all of `labels` (a pod's tmpfs volumes);
    /// ones already gone are not an error.
    pub async fn remove_volumes(&self, labels: &[(&str, &str)]) -> Result<(), RuntimeError> {
        let wanted: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let filters = HashMap::from([("label", wanted)]);
        let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
        let volumes = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|source| RuntimeError::Docker {
                operation: "volume list",
                source,
            })?;
        for volume in volumes.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::new().force(true).build();
            match self.docker.remove_volume(&volume.name, Some(options)).await {
                Ok(()) => {}
                Err(error) if status_code(&error) == Some(404) => {}
                Err(source) => {
                    return Err(RuntimeError::Docker {
                        operation: "volume remove",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Every container (running or not) carrying all of `labels`.
    pub async fn list_by_labels(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let wanted: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let filters = HashMap::from([("label", wanted)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| RuntimeError::Docker {
                operation: "container list",
                source,
            })?;
        containers
            .into_iter()
            .map(|container| {
                Ok(ContainerSummary {
                    id: container.id.ok_or(RuntimeError::Incomplete {
                        operation: "container list",
                        missing: "a container id",
                    })?,
                    name: container
                        .names
                        .and_then(|names| names.into_iter().next())
                        .map(|name| name.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    image: container.image.unwrap_or_default(),
                    state: container
                        .state
                        .map(|state| state.to_string())
                        .unwrap_or_default(),
                    labels: container.labels.unwrap_or_default().into_iter().collect(),
                })
            })
            .collect()
    }
}

fn create_body(spec: &ContainerSpec) -> Result<ContainerCreateBody, RuntimeError> {
    let too_big = |what: &str| RuntimeError::InvalidSpec(format!("{what} limit is too large"));
    let nano_cpus = spec
        .limits
        .cpu_millis
        .map(|millis| {
            millis
                .checked_mul(1_000_000)
                .and_then(|nanos| i64::try_from(nanos).ok())
                .ok_or_else(|| too_big("CPU"))
        })
        .transpose()?;
    let memory = spec
        .limits
        .memory_bytes
        .map(|bytes| i64::try_from(bytes).map_err(|_| too_big("memory")))
        .transpose()?;
    let confinement = &spec.confinement;
    let (network_mode, hostname) = match &spec.network {
        // As in Kubernetes, a pod's hostname is its `hostname` or else its name (at most
        // one DNS label long).
        NetworkMode::None => (
            "none".to_owned(),
            Some(
                if spec.hostname.is_empty() {
                    &spec.pod_name
                } else {
                    &spec.hostname
                }
                .chars()
                .take(63)
                .collect(),
            ),
        ),
        // The engine refuses a hostname here: the container takes its namespace owner's.
        NetworkMode::Container(owner) => (format!("container:{owner}"), None),
    };
    let domainname =
        (hostname.is_some() && !spec.domainname.is_empty()).then(|| spec.domainname.clone());
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        hostname,
        domainname,
        entrypoint: spec.command.clone(),
        cmd: spec.args.clone(),
        working_dir: spec.working_dir.clone(),
        env: Some(
            spec.env
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
        ),
        labels: Some(spec.labels().into_iter().collect()),
        host_config: Some(HostConfig {
            // The agent wires the network itself (crate::podnet), as a CNI plugin does.
            network_mode: Some(network_mode),
            nano_cpus,
            memory,
            // Swap equal to memory means no swap beyond it: the limit means what it says.
            memory_swap: memory,
            // Restarts are the agent's decision (restart policy, back-off), not the engine's.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            dns: spec.dns.as_ref().map(|dns| dns.servers.clone()),
            dns_search: spec.dns.as_ref().map(|dns| dns.search.clone()),
            dns_options: spec.dns.as_ref().map(|dns| dns.options.clone()),
            mounts: (!spec.mounts.is_empty())
                .then(|| spec.mounts.iter().map(engine_mount).collect()),
            privileged: Some(confinement.privileged),
            readonly_rootfs: Some(confinement.read_only_root),
            security_opt: confinement
                .no_new_privileges
                .then(|| vec!["no-new-privileges".to_owned()]),
            cap_add: (!confinement.cap_add.is_empty()).then(|| confinement.cap_add.clone()),
            cap_drop: (!confinement.cap_drop.is_empty()).then(|| confinement.cap_drop.clone()),
            pids_limit: confinement.pids_limit,
            log_config: confinement
                .log_rotation
                .map(|(bytes, files)| HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), bytes.to_string()),
                        ("max-file".to_owned(), files.to_string()),
                    ])),
                }),
            ..HostConfig::default()
        }),
        user: confinement.user.clone(),
        ..ContainerCreateBody::default()
    })
}

/// A hijacked connection's frames as session output: standard error apart, everything
/// else (console output of a terminal included) as standard output.
fn session_output(
    output: std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>,
    operation: &'static str,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<SessionChunk, RuntimeError>> + Send>> {
    Box::pin(output.filter_map(move |chunk| {
        let mapped = match chunk {
            Ok(LogOutput::StdErr { message }) => Some(Ok(SessionChunk::Stderr(message.to_vec()))),
            Ok(LogOutput::StdIn { .. }) => None,
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                Some(Ok(SessionChunk::Stdout(message.to_vec())))
            }
            Err(source) => Some(Err(RuntimeError::Docker { operation, source })),
        };
        std::future::ready(mapped)
    }))
}

/// The engine's own words, without bollard's wrapping.
fn engine_message(error: BollardError) -> String {
    match error {
        BollardError::DockerResponseServerError { message, .. } => message,
        BollardError::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

fn status_code(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn not_found_or(error: BollardError, container: &str, operation: &'static str) -> RuntimeError {
    if status_code(&error) == Some(404) {
        RuntimeError::ContainerNotFound {
            container: container.to_owned(),
        }
    } else {
        RuntimeError::Docker {
            operation,
            source: error,
        }
    }
}

fn real_time(time: Option<String>) -> Option<String> {
    time.filter(|time| !time.is_empty() && !time.starts_with(ZERO_TIME_PREFIX))
}

/// A pod volume as the engine mounts it.
fn engine_mount(mount: &Mount) -> EngineMount {
    let (typ, source, volume_options) = match &mount.source {
        MountSource::Host(path) => (
            MountTypeEnum::BIND,
            path.to_string_lossy().into_owned(),
            None,
        ),
        MountSource::Tmpfs {
            name,
            size_bytes,
            sub_path,
            labels,
        } => {
            let mut options = HashMap::from([
                ("type".to_owned(), "tmpfs".to_owned()),
                ("device".to_owned(), "tmpfs".to_owned()),
            ]);
            // As an emptyDir: anyone in the pod may write.
            let mut mount_options = vec!["mode=1777".to_owned()];
            if let Some(size) = size_bytes {
                mount_options.push(format!("size={size}"));
            }
            options.insert("o".to_owned(), mount_options.join(","));
            (
                MountTypeEnum::VOLUME,
                name.clone(),
                Some(MountVolumeOptions {
                    labels: Some(labels.clone().into_iter().collect()),
                    driver_config: Some(MountVolumeOptionsDriverConfig {
                        name: Some("local".to_owned()),
                        options: Some(options),
                    }),
                    subpath: sub_path.clone(),
                    ..MountVolumeOptions::default()
                }),
            )
        }
    };
    EngineMount {
        target: Some(mount.target.clone()),
        source: Some(source),
        typ: Some(typ),
        read_only: Some(mount.read_only),
        volume_options,
        ..EngineMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_sets_limits_network_and_labels() {
        let spec = ContainerSpec {
            pod_namespace: "default".to_owned(),
            pod_name: "web-0".to_owned(),
            pod_uid: "uid-1".to_owned(),
            container_name: "echo".to_owned(),
            node: "node-1".to_owned(),
            image: "berth/echo:v1".to_owned(),
            args: Some(vec!["--port".to_owned(), "9000".to_owned()]),
            env: vec![("POD_NAME".to_owned(), "web-0".to_owned())],
            limits: Limits {
                cpu_millis: Some(250),
                memory_bytes: Some(64 << 20),
            },
            ..ContainerSpec::default()
        };
        let body = create_body(&spec).expect("valid spec");
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.nano_cpus, Some(250_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(body.env, Some(vec!["POD_NAME=web-0".to_owned()]));
        assert_eq!(
            body.entrypoint, None,
            "no command keeps the image's entrypoint"
        );
        assert_eq!(body.hostname.as_deref(), Some("web-0"));
        let labels = body.labels.expect("labels");
        assert_eq!(
            labels.get("berth.pod.uid").map(String::as_str),
            Some("uid-1")
        );

        let huge = ContainerSpec {
            limits: Limits {
                cpu_millis: Some(u64::MAX),
                memory_bytes: None,
            },
            ..spec
        };
        assert!(matches!(
            create_body(&huge),
            Err(RuntimeError::InvalidSpec(_))
        ));
    }

    #[test]
    fn zero_times_mean_never() {
        assert_eq!(real_time(Some("0001-01-01T00:00:00Z".to_owned())), None);
        assert_eq!(
            real_time(Some("2025-01-01T10:00:00.5Z".to_owned())).as_deref(),
            Some("2025-01-01T10:00:00.5Z")
        );
    }
}
