//! Validation that reports every problem at once, each as (field path, reason), so a
//! user fixes a manifest in one round trip instead of one error per attempt.

use std::{fmt, net::Ipv4Addr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A JSON-path-like location such as `spec.template.spec.containers[0].image`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// A map entry; quoted because label keys contain dots and slashes.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key:?}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Collects errors, and warnings about fields accepted but not acted on in full; the
/// `check` helpers encode the Kubernetes naming rules once.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
    warnings: Vec<String>,
}

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;

impl Validator {
    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }

    /// The errors, then the warnings as a client shows them (`path: reason`).
    pub fn into_parts(self) -> (Vec<FieldError>, Vec<String>) {
        (self.errors, self.warnings)
    }

    pub fn warn(&mut self, path: &FieldPath, reason: &str) {
        self.warnings.push(format!("{path}: {reason}"));
    }

    pub fn error(&mut self, path: &FieldPath, reason: &str) {
        self.errors.push(FieldError {
            field: path.to_string(),
            reason: reason.to_owned(),
        });
    }

    /// RFC 1123 label: what namespaces, container names and port names must be.
    pub fn dns_label(&mut self, path: &FieldPath, value: &str) {
        if let Err(reason) = check_dns_label(value) {
            self.error(path, &reason);
        }
    }

    /// RFC 1123 subdomain: what object names must be.
    pub fn dns_subdomain(&mut self, path: &FieldPath, value: &str) {
        if let Err(reason) = check_dns_subdomain(value) {
            self.error(path, &reason);
        }
    }

    /// `[prefix/]name`, prefix a DNS subdomain, name up to 63 alphanumerics, `-_.`.
    pub fn label_key(&mut self, path: &FieldPath, key: &str) {
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key),
        };
        if let Some(prefix) = prefix
            && let Err(reason) = check_dns_subdomain(prefix)
        {
            self.error(path, &format!("key prefix {prefix:?}: {reason}"));
        }
        if name.is_empty() {
            self.error(path, "key name must not be empty");
        } else if let Err(reason) = check_label_chars(name) {
            self.error(path, &format!("key name {name:?}: {reason}"));
        }
    }

    pub fn label_value(&mut self, path: &FieldPath, value: &str) {
        if !value.is_empty()
            && let Err(reason) = check_label_chars(value)
        {
            self.error(path, &format!("value {value:?}: {reason}"));
        }
    }

    pub fn port(&mut self, path: &FieldPath, port: i32) {
        if !(1..=65535).contains(&port) {
            self.error(path, "must be between 1 and 65535");
        }
    }

    pub fn protocol(&mut self, path: &FieldPath, protocol: &str) {
        if !matches!(protocol, "TCP" | "UDP") {
            self.error(
                path,
                &format!("unsupported protocol {protocol:?}: use TCP or UDP"),
            );
        }
    }

    pub fn ipv4(&mut self, path: &FieldPath, value: &str) {
        if value.parse::<Ipv4Addr>().is_err() {
            self.error(path, &format!("{value:?} is not an IPv4 address"));
        }
    }

    pub fn ipv4_cidr(&mut self, path: &FieldPath, value: &str) {
        let valid = value.split_once('/').is_some_and(|(addr, len)| {
            addr.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|len| len <= 32)
        });
        if !valid {
            self.error(
                path,
                &format!("{value:?} is not an IPv4 CIDR such as 10.0.0.0/24"),
            );
        }
    }

    pub fn non_negative(&mut self, path: &FieldPath, value: i64) {
        if value < 0 {
            self.error(path, "must be greater than or equal to 0");
        }
    }

    pub fn one_of(&mut self, path: &FieldPath, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.error(
                path,
                &format!(
                    "unsupported value {value:?}: use one of {}",
                    allowed.join(", ")
                ),
            );
        }
    }
}

pub fn check_dns_label(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > DNS_LABEL_MAX {
        return Err(format!("must be 1 to {DNS_LABEL_MAX} characters"));
    }
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(|b| alnum(b) || *b == b'-')
        || !bytes.first().is_some_and(alnum)
        || !bytes.last().is_some_and(alnum)
    {
        return Err(format!(
            "{value:?} must consist of lower case alphanumerics or '-', and start and end with an alphanumeric"
        ));
    }
    Ok(())
}

pub fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > DNS_SUBDOMAIN_MAX {
        return Err(format!("must be 1 to {DNS_SUBDOMAIN_MAX} characters"));
    }
    if value.split('.').any(|part| check_dns_label(part).is_err()) {
        return Err(format!(
            "{value:?} must consist of lower case alphanumerics, '-' or '.', each dot-separated part starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

fn check_label_chars(value: &str) -> Result<(), String> {
    if value.len() > LABEL_VALUE_MAX {
        return Err(format!("must be at most {LABEL_VALUE_MAX} characters"));
    }
    let bytes = value.as_bytes();
    let ok_inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !bytes.iter().all(ok_inner)
        || !bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        || !bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    {
        return Err(
            "must consist of alphanumerics, '-', '_' or '.', and start and end with an alphanumeric"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(check_dns_label("web-1").is_ok());
        assert!(check_dns_label("Web").is_err());
        assert!(check_dns_label("-web").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_subdomain("a.b-c.d").is_ok());
        assert!(check_dns_subdomain("a..b").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        let mut v = Validator::default();
        let p = FieldPath::root("labels");
        v.label_key(&p, "app.kubernetes.io/name");
        v.label_value(&p, "My_App.v1");
        v.label_value(&p, "");
        assert!(v.into_errors().is_empty());

        let mut v = Validator::default();
        v.label_key(&p, "Bad_Prefix/x");
        v.label_key(&p, "a/");
        v.label_value(&p, "bad value");
        assert_eq!(v.into_errors().len(), 3);
    }

    #[test]
    fn paths_render_like_kubectl() {
        let p = FieldPath::root("spec")
            .child("containers")
            .index(0)
            .child("ports")
            .index(2)
            .child("containerPort");
        assert_eq!(p.as_str(), "spec.containers[0].ports[2].containerPort");
        assert_eq!(
            FieldPath::root("metadata")
                .child("labels")
                .key("a/b")
                .as_str(),
            "metadata.labels[\"a/b\"]"
        );
    }
}
