//! Cluster commands: the bootstrap tokens node agents join with. (Nodes themselves are
//! listed with `get nodes` and `describe node`.)

use std::{io::Write, time::Duration};

use hyper::http::Method;
use serde_json::{Value, json};

use super::{CtlError, Ctx, emit, output, rollout::parse_duration, str_at};
use berth_api::time;

#[derive(Debug, clap::Subcommand)]
pub enum Token {
    /// Create a bootstrap token and print it (it is shown only once).
    #[command(after_help = "Examples:\n  berthctl token create\n  \
                            berthctl token create --ttl 2h --description 'rack 3'\n  \
                            berthctl token create --ttl 0      # never expires\n\n\
                            Give the token to a node agent (its bootstrap token file) to join.")]
    Create {
        /// How long the token can be used to join (e.g. 30m, 24h, 7d); 0: forever.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the tokens that can still be used (ids only; secrets are not stored).
    #[command(after_help = "Examples:\n  berthctl token list")]
    List,
    /// Delete a token by its id (the part before the dot); nodes that joined stay.
    #[command(after_help = "Examples:\n  berthctl token delete abcdef")]
    Delete { id: String },
}

pub async fn token(ctx: &Ctx, action: Token, out: &mut dyn Write) -> Result<(), CtlError> {
    match action {
        Token::Create { ttl, description } => {
            let body = json!({"ttlSeconds": ttl.as_secs(), "description": description});
            let reply = ctx
                .call(Method::POST, "/bootstrap-tokens", Some(&body), None)
                .await?;
            emit(out, str_at(&reply, "/token"));
        }
        Token::List => {
            let reply = ctx
                .call(Method::GET, "/bootstrap-tokens", None, None)
                .await?;
            let items = reply["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                emit(
                    out,
                    "No bootstrap tokens created (the initial one is in the control plane's \
                     pki/bootstrap-token)",
                );
                return Ok(());
            }
            let mut rows = vec![
                ["TOKEN-ID", "TTL", "EXPIRES", "AGE", "DESCRIPTION"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            rows.extend(items.iter().map(|t: &Value| {
                let expires = str_at(t, "/expires");
                let ttl = match time::parse_rfc3339(expires) {
                    Some(at) => output::human_duration(at as i64 - time::unix_now() as i64),
                    None => "<forever>".to_owned(),
                };
                vec![
                    str_at(t, "/id").to_owned(),
                    ttl,
                    if expires.is_empty() {
                        "<never>".to_owned()
                    } else {
                        expires.to_owned()
                    },
                    output::age(t, "/creationTimestamp"),
                    str_at(t, "/description").to_owned(),
                ]
            }));
            emit(out, &output::table(&rows));
        }
        Token::Delete { id } => {
            let path = format!("/bootstrap-tokens/{}", super::encode(&id));
            ctx.call(Method::DELETE, &path, None, None)
                .await
                .map_err(|e| match e {
                    CtlError::Server { reason, .. } if reason == "NotFound" => CtlError::Server {
                        reason,
                        message: format!(
                            "bootstrap token {id:?} not found (see `berthctl token list`)"
                        ),
                    },
                    other => other,
                })?;
            emit(out, &format!("bootstrap token {id:?} deleted"));
        }
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum Snapshot {
    /// Save every object and the cluster's CA, tokens and keys to FILE (cluster-admin
    /// only). Restore it into a new data directory with `berth-control snapshot restore`.
    #[command(
        after_help = "Examples:\n  berthctl snapshot save /backup/berth-$(date +%F).json\n\n\
                            The file holds Secrets and the CA's private key in the clear: \
                            keep it like the CA key."
    )]
    Save { file: std::path::PathBuf },
}

pub async fn snapshot(ctx: &Ctx, action: Snapshot, out: &mut dyn Write) -> Result<(), CtlError> {
    let Snapshot::Save { file } = action;
    let snapshot = ctx.call(Method::GET, "/snapshot", None, None).await?;
    let text = serde_json::to_vec(&snapshot).map_err(|e| CtlError::Io(e.to_string()))?;
    berth_files::write_private(&file, &text)
        .map_err(|e| CtlError::Io(format!("{}: {e}", file.display())))?;
    let objects = snapshot["items"].as_array().map_or(0, Vec::len);
    let revision = snapshot["revision"].as_u64().unwrap_or(0);
    emit(
        out,
        &format!(
            "Saved {objects} keys at revision {revision} and the cluster's CA, tokens and keys to {}",
            file.display()
        ),
    );
    Ok(())
}
