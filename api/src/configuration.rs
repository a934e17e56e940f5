//! What pods are configured with (`apiVersion: v1`): ConfigMap and Secret.
//!
//! Both hold named values pods read as environment variables or files. Keys are file
//! names in a mounted volume, so they follow Kubernetes' rule for config keys, and an
//! object holds at most 1 MiB of values, as in Kubernetes. A Secret's values are bytes
//! (base64 in JSON and YAML, as kubectl shows them); `Debug` never prints them, so a
//! Secret written to a log shows its keys and sizes only.

use std::{collections::BTreeMap, fmt};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    meta::ObjectMeta,
    validation::{FieldPath, Validator},
};

/// The most a ConfigMap's or Secret's values may add up to (Kubernetes' limit).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;
/// The longest key (a file name in a mounted volume).
pub const MAX_KEY_LENGTH: usize = 253;

/// A Secret's default type: arbitrary keys and values.
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
/// A Secret holding a Docker `config.json` under [`DOCKER_CONFIG_JSON_KEY`], for image
/// pulls.
pub const SECRET_TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The Secret types Berth accepts.
pub const SECRET_TYPES: &[&str] = &[SECRET_TYPE_OPAQUE, SECRET_TYPE_DOCKER_CONFIG_JSON];

/// Bytes that travel base64-encoded in JSON and YAML (Kubernetes' `[]byte` fields).
/// `Debug` prints the length only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Size(self.0.len()).fmt(f)
    }
}

/// How a value shows in `Debug`: its length only.
struct Size(usize);

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.trim())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

impl JsonSchema for Bytes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bytes".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "byte"})
    }
}

// ---------------------------------------------------------------------------- ConfigMap

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// UTF-8 values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Other values, base64-encoded; a key is in `data` or here, not both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, Bytes>,
    /// Once true, the values and this field can no longer change (delete and recreate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl ConfigMap {
    pub(crate) fn validate(&self, v: &mut Validator) {
        let mut total = 0;
        for key in self.data.keys() {
            config_key(v, &FieldPath::root("data").key(key), key);
        }
        for key in self.binary_data.keys() {
            let path = FieldPath::root("binaryData").key(key);
            config_key(v, &path, key);
            if self.data.contains_key(key) {
                v.error(&path, "duplicate of a key in data");
            }
        }
        total += self.data.values().map(String::len).sum::<usize>();
        total += self.binary_data.values().map(|b| b.0.len()).sum::<usize>();
        data_size(v, &FieldPath::root("data"), total);
    }

    /// The value of `key` as bytes, from `data` or `binaryData`.
    pub fn value(&self, key: &str) -> Option<&[u8]> {
        self.data
            .get(key)
            .map(String::as_bytes)
            .or_else(|| self.binary_data.get(key).map(|b| b.0.as_slice()))
    }

    /// Every key and value, from `data` and `binaryData`.
    pub fn values(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(
                self.binary_data
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.0.as_slice())),
            )
    }
}

// ---------------------------------------------------------------------------- Secret

#[derive(Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `Opaque` (default) or `kubernetes.io/dockerconfigjson`; fixed once created.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    /// Values, base64-encoded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Bytes>,
    /// Write-only convenience: plain-text values the server moves into `data` (winning
    /// over a `data` entry of the same key); never stored or returned.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// Once true, the values and this field can no longer change (delete and recreate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Bytes` prints its length only; stringData's values are shown the same way.
        let string_data: BTreeMap<&str, Size> = self
            .string_data
            .iter()
            .map(|(k, v)| (k.as_str(), Size(v.len())))
            .collect();
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("data", &self.data)
            .field("string_data", &string_data)
            .field("immutable", &self.immutable)
            .finish()
    }
}

impl Secret {
    /// The type, `Opaque` when none was given.
    pub fn secret_type(&self) -> &str {
        if self.type_.is_empty() {
            SECRET_TYPE_OPAQUE
        } else {
            &self.type_
        }
    }

    /// Moves `stringData` into `data`, as the server does on every write.
    pub fn fold_string_data(&mut self) {
        for (key, value) in std::mem::take(&mut self.string_data) {
            self.data.insert(key, Bytes(value.into_bytes()));
        }
    }

    pub(crate) fn validate(&self, v: &mut Validator) {
        v.one_of(&FieldPath::root("type"), self.secret_type(), SECRET_TYPES);
        for key in self.data.keys() {
            config_key(v, &FieldPath::root("data").key(key), key);
        }
        for key in self.string_data.keys() {
            config_key(v, &FieldPath::root("stringData").key(key), key);
        }
        // What `data` will hold once `stringData` is folded in.
        let mut folded = self.clone();
        folded.fold_string_data();
        let total = folded.data.values().map(|b| b.0.len()).sum::<usize>();
        data_size(v, &FieldPath::root("data"), total);
        if folded.secret_type() == SECRET_TYPE_DOCKER_CONFIG_JSON {
            let path = FieldPath::root("data").key(DOCKER_CONFIG_JSON_KEY);
            match folded.data.get(DOCKER_CONFIG_JSON_KEY) {
                None => v.error(&path, "is required for a Secret of this type"),
                Some(bytes) => {
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes.0) {
                        v.error(&path, &format!("is not JSON: {e}"));
                    }
                }
            }
        }
    }
}

/// Kubernetes' rule for ConfigMap and Secret keys: they become file names.
fn config_key(v: &mut Validator, path: &FieldPath, key: &str) {
    if key.is_empty() || key.len() > MAX_KEY_LENGTH {
        v.error(path, &format!("must be 1 to {MAX_KEY_LENGTH} characters"));
    } else if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        v.error(
            path,
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
        );
    } else if key == "." || key == ".." || key.starts_with("..") {
        v.error(path, "must not be '.' or '..' or start with '..'");
    }
}

fn data_size(v: &mut Validator, path: &FieldPath, total: usize) {
    if total > MAX_DATA_BYTES {
        v.error(
            path,
            &format!("values are {total} bytes; the limit is {MAX_DATA_BYTES}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, ResourceType, Source};

    fn errors<R: crate::Resource>(yaml: &str) -> Vec<String> {
        match ResourceType::of::<R>().decode(Source::Yaml(yaml)) {
            Ok(_) => Vec::new(),
            Err(DecodeError::Invalid { errors }) => errors.into_iter().map(|e| e.field).collect(),
            Err(other) => panic!("malformed: {other}"),
        }
    }

    #[test]
    fn config_keys_follow_kubernetes_rules() {
        assert_eq!(
            errors::<ConfigMap>("metadata: {name: c}\ndata: {app.conf: x, A-b_c.1: y}"),
            Vec::<String>::new()
        );
        let long = "k".repeat(254);
        assert_eq!(
            errors::<ConfigMap>(&format!(
                "metadata: {{name: c}}\ndata: {{'a/b': x, '..x': y, {long}: z}}\nbinaryData: {{'a/b': eA==}}"
            )),
            [
                r#"data["..x"]"#.to_owned(),
                r#"data["a/b"]"#.to_owned(),
                format!("data[{long:?}]"),
                r#"binaryData["a/b"]"#.to_owned(),
                r#"binaryData["a/b"]"#.to_owned(),
            ]
        );
        assert_eq!(
            errors::<Secret>("metadata: {name: s}\nstringData: {'a b': x}"),
            [r#"stringData["a b"]"#]
        );
    }

    #[test]
    fn values_are_limited_to_one_mebibyte_in_total() {
        let half = "x".repeat(MAX_DATA_BYTES / 2);
        let at_limit = format!("metadata: {{name: c}}\ndata: {{a: {half}, b: {half}}}");
        assert_eq!(errors::<ConfigMap>(&at_limit), Vec::<String>::new());
        let over = format!("metadata: {{name: c}}\ndata: {{a: {half}, b: {half}x}}");
        assert_eq!(errors::<ConfigMap>(&over), ["data"]);
        // A Secret counts stringData with data.
        let over = format!(
            "metadata: {{name: s}}\ndata: {{a: {}}}\nstringData: {{b: {half}x}}",
            STANDARD.encode(&half)
        );
        assert_eq!(errors::<Secret>(&over), ["data"]);
    }

    #[test]
    fn secret_types_and_docker_config() {
        assert_eq!(
            errors::<Secret>("metadata: {name: s}\ntype: kubernetes.io/tls"),
            ["type"]
        );
        assert_eq!(
            errors::<Secret>("metadata: {name: s}\ntype: kubernetes.io/dockerconfigjson"),
            [r#"data[".dockerconfigjson"]"#]
        );
        assert_eq!(
            errors::<Secret>(
                "metadata: {name: s}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: 'not json'}"
            ),
            [r#"data[".dockerconfigjson"]"#]
        );
        assert_eq!(
            errors::<Secret>(
                "metadata: {name: s}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: '{\"auths\": {}}'}"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn secret_data_is_base64_and_debug_shows_sizes_only() {
        let decoded = ResourceType::of::<Secret>()
            .decode(Source::Yaml(
                "metadata: {name: s}\ndata: {password: aHVudGVyMg==}\nstringData: {user: admin}",
            ))
            .expect("valid");
        let mut secret: Secret = serde_json::from_value(decoded.object).expect("secret");
        assert_eq!(secret.data["password"].0, b"hunter2");
        secret.fold_string_data();
        assert!(secret.string_data.is_empty());
        assert_eq!(secret.data["user"].0, b"admin");
        let json = serde_json::to_value(&secret).expect("json");
        assert_eq!(json["data"]["user"], "YWRtaW4=");
        let debug = format!("{secret:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("admin\""),
            "{debug}"
        );
        assert!(debug.contains("\"password\": <7 bytes>"), "{debug}");
        assert!(
            ResourceType::of::<Secret>()
                .decode(Source::Yaml("metadata: {name: s}\ndata: {a: '%%%'}"))
                .is_err()
        );
    }
}
