//! The audit log: one JSON line per request of the HTTPS API, in Kubernetes'
//! `audit.k8s.io/v1` Event shape (who, what, on which object, the answer, when), at the
//! level a policy gives the request — kube-apiserver's `--audit-policy-file` format, the
//! first matching rule deciding; without a policy file every request is logged at
//! `Metadata`. `Request` adds the request's body, except for Secrets and for `/apply`
//! (a manifest may hold Secrets): a Secret's values never reach the log. Lines are
//! written by a thread of their own, and the file is rotated by size.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::mpsc,
};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{authn::UserInfo, authz::Attributes};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {reason}")]
    Policy { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
        }
    }
}

/// An `audit.k8s.io/v1` Policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
    /// Accepted for compatibility; Berth writes only the `ResponseComplete` stage.
    #[serde(default, rename = "omitStages")]
    _omit_stages: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
}

impl Default for Policy {
    /// Every request at `Metadata`.
    fn default() -> Self {
        Policy {
            api_version: "audit.k8s.io/v1".to_owned(),
            kind: "Policy".to_owned(),
            rules: vec![Rule {
                level: Level::Metadata,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
            }],
            _omit_stages: Vec::new(),
        }
    }
}

impl Policy {
    /// Reads a policy file; errors name the file and, for YAML, the line.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let invalid = |reason: String| AuditError::Policy {
            path: path.to_owned(),
            reason,
        };
        let text = fs::read_to_string(path).map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        let policy: Policy = serde_norway::from_str(&text).map_err(|e| {
            let line = e
                .location()
                .map(|l| format!("line {}: ", l.line()))
                .unwrap_or_default();
            invalid(format!("{line}{e}"))
        })?;
        if policy.kind != "Policy" || policy.api_version != "audit.k8s.io/v1" {
            return Err(invalid(format!(
                "apiVersion {:?} kind {:?}: expected audit.k8s.io/v1 Policy",
                policy.api_version, policy.kind
            )));
        }
        Ok(policy)
    }

    /// The level of the first rule that matches, None when none does.
    pub fn level(&self, user: Option<&UserInfo>, attributes: &Attributes) -> Level {
        self.rules
            .iter()
            .find(|rule| rule.matches(user, attributes))
            .map_or(Level::None, |rule| rule.level)
    }
}

impl Rule {
    fn matches(&self, user: Option<&UserInfo>, attributes: &Attributes) -> bool {
        let name = user.map_or("system:anonymous", |u| u.name.as_str());
        if !self.users.is_empty() && !self.users.iter().any(|u| u == name) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        let verb = match attributes {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        };
        if !self.verbs.is_empty() && !self.verbs.contains(verb) {
            return false;
        }
        match attributes {
            Attributes::Resource {
                group,
                resource,
                subresource,
                namespace,
                ..
            } => {
                if !self.non_resource_urls.is_empty() {
                    return false;
                }
                if !self.namespaces.is_empty() && !self.namespaces.contains(namespace) {
                    return false;
                }
                let full = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                self.resources.is_empty()
                    || self.resources.iter().any(|r| {
                        &r.group == group
                            && (r.resources.is_empty()
                                || r.resources.iter().any(|x| *x == full || *x == *resource))
                    })
            }
            Attributes::NonResource { path, .. } => {
                if !self.resources.is_empty() || !self.namespaces.is_empty() {
                    return false;
                }
                self.non_resource_urls.is_empty()
                    || self
                        .non_resource_urls
                        .iter()
                        .any(|url| match url.strip_suffix('*') {
                            Some(prefix) => path.starts_with(prefix),
                            None => url == path,
                        })
            }
        }
    }
}

/// Where audit events go: the policy, and the writer thread's queue.
pub struct AuditLog {
    pub policy: Policy,
    lines: std::sync::Mutex<mpsc::Sender<String>>,
}

/// One request as the audit log records it.
pub struct Record<'a> {
    pub id: String,
    pub uri: &'a str,
    pub user_agent: Option<&'a str>,
    pub user: Option<&'a UserInfo>,
    pub attributes: &'a Attributes,
    pub code: u16,
    pub received: String,
    pub completed: String,
    pub body: Option<Value>,
}

impl AuditLog {
    /// Appends to `path` (made 0600), rotating it when it reaches `max_bytes`: the
    /// current file becomes `<path>.1`, and so on up to `<path>.<backups>`.
    pub fn open(
        path: &Path,
        policy: Policy,
        max_bytes: u64,
        backups: u32,
    ) -> Result<Self, AuditError> {
        let file = open_append(path)?;
        let (sender, receiver) = mpsc::channel::<String>();
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("audit-log".to_owned())
            .spawn(move || write_lines(&path, file, &receiver, max_bytes, backups))
            .map_err(|source| AuditError::Io {
                path: PathBuf::from("audit-log thread"),
                source,
            })?;
        Ok(Self {
            policy,
            lines: std::sync::Mutex::new(sender),
        })
    }

    /// Writes one event at `level` (nothing at `None`).
    pub fn record(&self, level: Level, record: &Record<'_>) {
        if level == Level::None {
            return;
        }
        let (resource_fields, verb) = match record.attributes {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                let mut object = serde_json::Map::new();
                for (field, value) in [
                    ("resource", resource),
                    ("namespace", namespace),
                    ("name", name),
                    ("apiGroup", group),
                    ("subresource", subresource),
                ] {
                    if !value.is_empty() {
                        object.insert(field.to_owned(), json!(value));
                    }
                }
                (Some(Value::Object(object)), verb.as_str())
            }
            Attributes::NonResource { verb, .. } => (None, verb.as_str()),
        };
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level.as_str(),
            "auditID": record.id,
            "stage": "ResponseComplete",
            "requestURI": record.uri,
            "verb": verb,
            "user": match record.user {
                Some(user) => json!({"username": user.name, "groups": user.groups}),
                None => json!({}),
            },
            "responseStatus": {"metadata": {}, "code": record.code},
            "requestReceivedTimestamp": record.received,
            "stageTimestamp": record.completed,
        });
        if let Some(object) = resource_fields {
            event["objectRef"] = object;
        }
        if let Some(agent) = record.user_agent {
            event["userAgent"] = json!(agent);
        }
        if level >= Level::Request
            && let Some(body) = &record.body
        {
            event["requestObject"] = body.clone();
        }
        if let Ok(sender) = self.lines.lock() {
            let _ = sender.send(event.to_string());
        }
    }
}

/// Whether a request's body may be logged: never a Secret's, nor an `/apply` manifest's
/// (it may hold Secrets).
pub fn body_may_be_logged(uri_path: &str, attributes: &Attributes) -> bool {
    let secret = matches!(attributes, Attributes::Resource { group, resource, .. }
        if group.is_empty() && resource == "secrets");
    !secret && uri_path != "/apply"
}

fn open_append(path: &Path) -> Result<fs::File, AuditError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })
}

fn write_lines(
    path: &Path,
    mut file: fs::File,
    lines: &mpsc::Receiver<String>,
    max_bytes: u64,
    backups: u32,
) {
    let mut size = file.metadata().map_or(0, |m| m.len());
    while let Ok(line) = lines.recv() {
        if size > 0 && size + line.len() as u64 + 1 > max_bytes {
            match rotate(path, backups).and_then(|()| open_append(path)) {
                Ok(fresh) => {
                    file = fresh;
                    size = 0;
                }
                Err(error) => tracing::warn!(%error, "rotating the audit log"),
            }
        }
        match writeln!(file, "{line}") {
            Ok(()) => size += line.len() as u64 + 1,
            Err(error) => tracing::warn!(path = %path.display(), %error, "writing the audit log"),
        }
    }
}

/// `<path>.<n>` → `<path>.<n+1>` (the oldest dropped), then `<path>` → `<path>.1`.
fn rotate(path: &Path, backups: u32) -> Result<(), AuditError> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    let io = |path: PathBuf| move |source| AuditError::Io { path, source };
    if backups == 0 {
        return fs::remove_file(path).map_err(io(path.to_owned()));
    }
    let _ = fs::remove_file(numbered(backups));
    for n in (1..backups).rev() {
        if numbered(n).exists() {
            fs::rename(numbered(n), numbered(n + 1)).map_err(io(numbered(n)))?;
        }
    }
    fs::rename(path, numbered(1)).map_err(io(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let file = tempfile::NamedTempFile::new().expect("file");
        fs::write(file.path(), yaml).expect("write");
        Policy::load(file.path()).expect("valid policy")
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = policy(
            "apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  - level: None
    nonResourceURLs: [/healthz*, /version]
  - level: Metadata
    resources: [{group: \"\", resources: [secrets]}]
  - level: Request
    users: [alice]
",
        );
        let alice = UserInfo::new("alice", []);
        let get = |path: &str| {
            Attributes::of_request(&axum::http::Method::GET, path, &Default::default())
        };
        assert_eq!(policy.level(Some(&alice), &get("/healthz")), Level::None);
        assert_eq!(
            policy.level(Some(&alice), &get("/api/v1/namespaces/a/secrets")),
            Level::Metadata
        );
        assert_eq!(
            policy.level(Some(&alice), &get("/api/v1/namespaces/a/pods")),
            Level::Request
        );
        assert_eq!(policy.level(None, &get("/api/v1/pods")), Level::None);
    }

    #[test]
    fn a_bad_policy_names_the_file_and_line() {
        let file = tempfile::NamedTempFile::new().expect("file");
        fs::write(
            file.path(),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Loud\n",
        )
        .expect("write");
        let error = Policy::load(file.path()).expect_err("invalid").to_string();
        assert!(
            error.contains(&file.path().display().to_string()) && error.contains("line 4"),
            "{error}"
        );
    }

    #[test]
    fn the_log_rotates_by_size() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, Policy::default(), 600, 2).expect("open");
        let attributes = Attributes::NonResource {
            verb: "get".to_owned(),
            path: "/version".to_owned(),
        };
        for i in 0..10 {
            log.record(
                Level::Metadata,
                &Record {
                    id: format!("id-{i}"),
                    uri: "/version",
                    user_agent: None,
                    user: None,
                    attributes: &attributes,
                    code: 200,
                    received: String::new(),
                    completed: String::new(),
                    body: None,
                },
            );
        }
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !dir.path().join("audit.log.2").exists() {
            assert!(std::time::Instant::now() < deadline, "rotated twice");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!dir.path().join("audit.log.3").exists(), "two backups kept");
        for file in ["audit.log", "audit.log.1", "audit.log.2"] {
            let text = fs::read_to_string(dir.path().join(file)).unwrap_or_default();
            assert!(text.len() <= 600, "{file} holds {} bytes", text.len());
        }
    }
}
