//! Images: when to pull (`imagePullPolicy`), with which credentials (`imagePullSecrets`),
//! and the pulls themselves, each on a task of its own so a slow registry never holds up
//! the pod manager's pass over the other pods: a pass starts a pull and moves on, and the
//! pull wakes the manager when it is done.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use base64::Engine as _;
use tokio::{sync::Notify, task::AbortHandle};

use crate::runtime::{DEFAULT_REGISTRY, DockerRuntime, RegistryCredentials, image_tag};

/// Kubernetes' image pull back-off: 10 s, doubling, at most 5 minutes.
pub const PULL_BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const PULL_BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The key of a `kubernetes.io/dockerconfigjson` Secret that holds the config.
pub const DOCKER_CONFIG_JSON_KEY: &str = berth_api::configuration::DOCKER_CONFIG_JSON_KEY;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy a container's `imagePullPolicy` asks for; empty takes Kubernetes'
    /// default: `Always` for `:latest` or no tag, `IfNotPresent` otherwise.
    pub fn from_api(policy: &str, image: &str) -> Result<Self, String> {
        match policy {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            "" => Ok(match image_tag(image) {
                None | Some("latest") => PullPolicy::Always,
                Some(_) => PullPolicy::IfNotPresent,
            }),
            other => Err(format!("{other:?} is not Always, IfNotPresent or Never")),
        }
    }
}

/// The back-off before pull attempt `step + 1` after `step + 1` failures in a row.
pub fn pull_backoff(step: u32) -> Duration {
    PULL_BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(step.min(16)))
        .min(PULL_BACKOFF_CAP)
}

/// The credentials a docker config (`.dockerconfigjson`: `{"auths": {REGISTRY: {...}}}`)
/// holds for `host`. Registries may be written as a host, a host and port, or a URL
/// (`https://index.docker.io/v1/` for Docker Hub); `auth` is base64 `user:password`.
pub fn credentials_for(config_json: &[u8], host: &str) -> Option<RegistryCredentials> {
    let config: serde_json::Value = serde_json::from_slice(config_json).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let (_, entry) = auths
        .iter()
        .find(|(registry, _)| same_registry(registry_of(registry), host))?;
    let text = |key: &str| {
        entry
            .get(key)
            .and_then(serde_json::Value::as_str)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let (username, password) = match (text("username"), text("password"), text("auth")) {
        (Some(username), Some(password), _) => (username, password),
        (_, _, Some(auth)) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (username, password) = decoded.split_once(':')?;
            (username.to_owned(), password.to_owned())
        }
        (username, password, None) => (username.unwrap_or_default(), password.unwrap_or_default()),
    };
    Some(RegistryCredentials {
        server: host.to_owned(),
        username,
        password,
        identity_token: text("identitytoken"),
    })
}

/// The host (and port) of a registry as a docker config writes it.
fn registry_of(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn same_registry(a: &str, b: &str) -> bool {
    const HUB: [&str; 3] = [DEFAULT_REGISTRY, "index.docker.io", "registry-1.docker.io"];
    a == b || (HUB.contains(&a) && HUB.contains(&b))
}

/// How a pull ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    Pulled {
        took: Duration,
    },
    /// The engine's message (with the registry's).
    Failed(String),
}

struct Pull {
    image: String,
    task: AbortHandle,
    outcome: Arc<Mutex<Option<PullOutcome>>>,
}

impl Drop for Pull {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pulls under way or finished and not yet taken, one per pod container (pod uid,
/// container name).
#[derive(Default)]
pub struct Pulls {
    pulls: BTreeMap<(String, String), Pull>,
}

/// Where a container's pull stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    /// None started: the caller may start one.
    Idle,
    Running,
    Done(PullOutcome),
}

impl Pulls {
    /// Where the pull for `key` of `image` stands; a finished one is taken (the next
    /// call says `Idle`). A pull of another image (the spec changed) is dropped.
    pub fn take(&mut self, key: &(String, String), image: &str) -> PullState {
        let Some(pull) = self.pulls.get(key) else {
            return PullState::Idle;
        };
        if pull.image != image {
            self.pulls.remove(key);
            return PullState::Idle;
        }
        let outcome = pull
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match outcome {
            Some(outcome) => {
                self.pulls.remove(key);
                PullState::Done(outcome)
            }
            None => PullState::Running,
        }
    }

    /// Starts pulling `image` for `key` on a task of its own; `wake` is notified when it
    /// ends.
    pub fn start(
        &mut self,
        key: (String, String),
        image: &str,
        credentials: Option<RegistryCredentials>,
        runtime: DockerRuntime,
        wake: Arc<Notify>,
    ) {
        let outcome = Arc::new(Mutex::new(None));
        let task = {
            let (image, outcome) = (image.to_owned(), Arc::clone(&outcome));
            tokio::spawn(async move {
                let started = Instant::now();
                let result = match runtime.pull_image(&image, credentials.as_ref()).await {
                    Ok(()) => PullOutcome::Pulled {
                        took: started.elapsed(),
                    },
                    Err(error) => PullOutcome::Failed(error.to_string()),
                };
                *outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                wake.notify_one();
            })
            .abort_handle()
        };
        self.pulls.insert(
            key,
            Pull {
                image: image.to_owned(),
                task,
                outcome,
            },
        );
    }

    /// Drops (and stops) the pulls of pods or containers no longer wanted.
    pub fn retain(&mut self, wanted: impl Fn(&(String, String)) -> bool) {
        self.pulls.retain(|key, _| wanted(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_kubernetes() {
        let policy = |image| PullPolicy::from_api("", image);
        assert_eq!(policy("nginx"), Ok(PullPolicy::Always));
        assert_eq!(policy("nginx:latest"), Ok(PullPolicy::Always));
        assert_eq!(policy("r.example:5000/app"), Ok(PullPolicy::Always));
        assert_eq!(
            policy("r.example:5000/app:v1"),
            Ok(PullPolicy::IfNotPresent)
        );
        assert_eq!(policy("app@sha256:0123"), Ok(PullPolicy::IfNotPresent));
        assert_eq!(
            PullPolicy::from_api("Never", "nginx"),
            Ok(PullPolicy::Never)
        );
        assert!(PullPolicy::from_api("Sometimes", "nginx").is_err());
    }

    #[test]
    fn pull_backoff_doubles_from_ten_seconds_to_five_minutes() {
        let delays: Vec<u64> = (0..8).map(|step| pull_backoff(step).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(pull_backoff(u32::MAX), PULL_BACKOFF_CAP);
    }

    #[test]
    fn credentials_are_found_by_registry_host() {
        let config = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
            "198.18.7.2:5000": {"username": "puller", "password": "s3cret"},
            "https://r.example/v2/": {"auth": "dXNlcjpwYTpzcw=="}
        }}"#;
        let found = credentials_for(config, "198.18.7.2:5000").expect("registry");
        assert_eq!(
            (found.username.as_str(), found.password.as_str()),
            ("puller", "s3cret")
        );
        assert_eq!(found.server, "198.18.7.2:5000");
        let hub = credentials_for(config, "docker.io").expect("hub");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "hubpass")
        );
        // A password may hold ':'; only the first one splits.
        let url = credentials_for(config, "r.example").expect("url key");
        assert_eq!(
            (url.username.as_str(), url.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(credentials_for(config, "198.18.7.2:5001"), None);
        assert_eq!(credentials_for(b"not json", "docker.io"), None);
    }
}
