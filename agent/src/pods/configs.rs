//! The ConfigMaps, Secrets and claims' volumes this node's pods use, as last fetched from the control
//! plane (`crate::controlplane::follow_pod_configs` keeps it current): what the pod
//! manager reads when it creates a container (env) and writes a pod's files (volumes).
//! Shared between the two behind a lock; values stay in memory only.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, PoisonError, RwLock},
};

use berth_api::configuration::{ConfigMap, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
    /// Fetched as the volume bound to the claim, whose one value is [`VOLUME_PATH_KEY`].
    PersistentVolumeClaim,
}

/// The value of a fetched claim: its volume's directory on this node.
pub const VOLUME_PATH_KEY: &str = "path";

impl ConfigKind {
    /// The kind's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => "ConfigMap",
            ConfigKind::Secret => "Secret",
            ConfigKind::PersistentVolumeClaim => "PersistentVolumeClaim",
        }
    }

    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "ConfigMap" => Some(ConfigKind::ConfigMap),
            "Secret" => Some(ConfigKind::Secret),
            "PersistentVolumeClaim" => Some(ConfigKind::PersistentVolumeClaim),
            _ => None,
        }
    }
}

/// One ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigKey {
    pub kind: ConfigKind,
    pub namespace: String,
    pub name: String,
}

impl ConfigKey {
    /// How Kubernetes names a missing one in a pod's status: `configmap "app" not found`.
    pub fn not_found(&self) -> String {
        format!(
            "{} {:?} not found",
            self.kind.as_str().to_ascii_lowercase(),
            self.name
        )
    }
}

/// An object's values by key, whatever its kind. `Debug` shows keys and sizes only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigValues(pub BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for ConfigValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v.len())))
            .finish()
    }
}

impl From<&ConfigMap> for ConfigValues {
    fn from(config_map: &ConfigMap) -> Self {
        ConfigValues(
            config_map
                .values()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
        )
    }
}

impl From<&Secret> for ConfigValues {
    fn from(secret: &Secret) -> Self {
        ConfigValues(
            secret
                .data
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        )
    }
}

/// What a fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Found(Arc<ConfigValues>),
    /// Not there, or not readable: why, in the words the pod's status shows.
    Missing(String),
}

/// A ServiceAccount token one of the pod's volumes holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub audience: String,
    pub expiration_seconds: i64,
}

/// A token as last granted. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} bytes)", self.0.len())
    }
}

/// The last fetched state of each object and token in use; a key absent is not fetched
/// yet.
#[derive(Debug, Clone, Default)]
pub struct PodConfigs {
    objects: Arc<RwLock<BTreeMap<ConfigKey, Fetched>>>,
    tokens: Arc<RwLock<BTreeMap<TokenKey, Result<Token, String>>>>,
}

impl PodConfigs {
    pub fn get(&self, key: &ConfigKey) -> Option<Fetched> {
        self.objects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Records a fetch; whether it changed what is known.
    pub fn set(&self, key: ConfigKey, fetched: Fetched) -> bool {
        let mut map = self.objects.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(key, fetched.clone()) != Some(fetched)
    }

    /// Forgets what no pod uses any more.
    pub fn retain(&self, used: &BTreeSet<ConfigKey>, used_tokens: &BTreeSet<TokenKey>) {
        self.objects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| used.contains(key));
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| used_tokens.contains(key));
    }

    /// Records a token granted, or why none was; whether that changed what is known. A
    /// refusal does not replace a token already held: the pod keeps it until it expires.
    pub fn set_token(&self, key: TokenKey, granted: Result<Token, String>) -> bool {
        let mut map = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        if granted.is_err() && matches!(map.get(&key), Some(Ok(_))) {
            return false;
        }
        map.insert(key, granted.clone()) != Some(granted)
    }

    /// The token for `key`, or why there is none yet.
    pub fn token(&self, key: &TokenKey) -> Result<Token, String> {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_else(|| {
                Err(format!(
                    "waiting for a token of pod {}'s ServiceAccount",
                    key.pod
                ))
            })
    }

    /// The values of `key`, or the reason there are none (not fetched yet counts as not
    /// found: the pod waits either way).
    pub fn values(&self, key: &ConfigKey) -> Result<Arc<ConfigValues>, String> {
        match self.get(key) {
            Some(Fetched::Found(values)) => Ok(values),
            Some(Fetched::Missing(reason)) => Err(reason),
            None => Err(key.not_found()),
        }
    }
}
