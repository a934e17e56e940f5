//! Authentication: who a request comes from, as Kubernetes' authenticators answer it — a
//! user name and groups, `system:authenticated` always among them. Sources: the admin
//! token (user `admin` in `system:masters`), a static token file (kube-apiserver's
//! `--token-auth-file`), and client certificates the cluster CA signed (CN = user, O =
//! groups). A later authenticator (ServiceAccount tokens) produces the same [`UserInfo`].

use std::path::Path;

use berth_api::rbac::{AUTHENTICATED_GROUP, MASTERS_GROUP};

use crate::credentials::Auth;

/// An authenticated user: what the authorizer decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// `name` in `groups` and in `system:authenticated`.
    pub fn new(name: &str, groups: impl IntoIterator<Item = String>) -> Self {
        let mut groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        Self {
            name: name.to_owned(),
            groups,
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("reading the token file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the token file {path}, line {line}: {reason}")]
    TokenFile {
        path: String,
        line: usize,
        reason: String,
    },
}

/// Bearer tokens the server accepts, each kept as its SHA-256 digest with the user it
/// stands for.
pub struct Authenticator {
    tokens: Vec<([u8; 32], UserInfo)>,
    /// Signs and checks ServiceAccount tokens.
    service_accounts: Option<std::sync::Arc<crate::satokens::TokenSigner>>,
}

/// The admin token's user.
pub const ADMIN_USER: &str = "admin";

impl Authenticator {
    /// The admin token's digest and, if given, the users of a static token file.
    pub fn new(admin_digest: [u8; 32], token_file: Option<&Path>) -> Result<Self, AuthnError> {
        let mut tokens = vec![(
            admin_digest,
            UserInfo::new(ADMIN_USER, [MASTERS_GROUP.to_owned()]),
        )];
        if let Some(path) = token_file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthnError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let entries =
                parse_token_file(&text).map_err(|(line, reason)| AuthnError::TokenFile {
                    path: path.display().to_string(),
                    line,
                    reason,
                })?;
            tokens.extend(
                entries
                    .into_iter()
                    .map(|(token, user)| (Auth::digest(&token), user)),
            );
        }
        Ok(Self {
            tokens,
            service_accounts: None,
        })
    }

    /// Also accepts ServiceAccount tokens signed by `signer` (and issues them with it).
    pub fn with_service_account_tokens(mut self, signer: crate::satokens::TokenSigner) -> Self {
        self.service_accounts = Some(std::sync::Arc::new(signer));
        self
    }

    /// The ServiceAccount token signer, when tokens are served.
    pub fn service_account_tokens(&self) -> Option<&std::sync::Arc<crate::satokens::TokenSigner>> {
        self.service_accounts.as_ref()
    }

    /// The user `token` belongs to. Every digest is compared in full so timing says
    /// nothing about near misses.
    pub fn token(&self, token: &str) -> Option<UserInfo> {
        let presented = Auth::digest(token);
        let mut found = None;
        for (digest, user) in &self.tokens {
            if Auth::digests_equal(digest, &presented) && found.is_none() {
                found = Some(user.clone());
            }
        }
        found
    }
}

/// The lines of a token file: `token,user,uid[,"group1,group2"]`, as kube-apiserver reads
/// them (CSV, blank lines and `#` comments skipped). An error names its line (from 1).
pub fn parse_token_file(text: &str) -> Result<Vec<(String, UserInfo)>, (usize, String)> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = csv_fields(line).map_err(|reason| (number, reason))?;
        if fields.len() < 3 {
            return Err((
                number,
                format!(
                    "expected token,user,uid[,\"groups\"], got {} field(s)",
                    fields.len()
                ),
            ));
        }
        let (token, user) = (fields[0].trim(), fields[1].trim());
        if token.is_empty() || user.is_empty() {
            return Err((
                number,
                "the token and the user must not be empty".to_owned(),
            ));
        }
        let groups = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(|g| g.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        entries.push((token.to_owned(), UserInfo::new(user, groups)));
    }
    Ok(entries)
}

/// One CSV record's fields; a field in double quotes may hold commas and `""`.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".to_owned());
    }
    fields.push(field);
    Ok(fields)
}

/// The user a verified client certificate names: CN the user, each O a group.
pub fn user_of_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned));
    Some(UserInfo::new(name, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_read_like_kube_apiservers() {
        let text = "# users\n\
                    t1,alice,1\n\
                    \n\
                    t2,bob,2,\"team,ops\"\n\
                    t3,carol,3,viewers\n";
        let entries = parse_token_file(text).expect("valid");
        let users: Vec<(&str, &str, Vec<&str>)> = entries
            .iter()
            .map(|(t, u)| {
                (
                    t.as_str(),
                    u.name.as_str(),
                    u.groups.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            users,
            [
                ("t1", "alice", vec!["system:authenticated"]),
                ("t2", "bob", vec!["team", "ops", "system:authenticated"]),
                ("t3", "carol", vec!["viewers", "system:authenticated"]),
            ]
        );
        assert_eq!(parse_token_file("a,b\n").map_err(|e| e.0), Err(1));
        assert_eq!(
            parse_token_file("\nt,u,1,\"open\n").map_err(|e| e.0),
            Err(2)
        );
        assert_eq!(parse_token_file(",u,1\n").map_err(|e| e.0), Err(1));
    }

    #[test]
    fn tokens_map_to_their_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "secret-b,bob,2,\"team\"\n").expect("write");
        let auth = Authenticator::new(Auth::digest("admin-t"), Some(&path)).expect("loads");
        let admin = auth.token("admin-t").expect("admin");
        assert_eq!(admin.name, "admin");
        assert!(admin.in_group(MASTERS_GROUP) && admin.in_group(AUTHENTICATED_GROUP));
        let bob = auth.token("secret-b").expect("bob");
        assert_eq!(bob.groups, ["team", "system:authenticated"]);
        assert_eq!(auth.token("secret-x"), None);
    }
}
