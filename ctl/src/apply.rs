//! `apply -f` and `create -f`: manifests from files, directories or stdin.
//!
//! Every file is parsed and validated here first, with the same code the server runs,
//! so an error names the file as well as the document, line and field; nothing is sent
//! unless every document of every file is valid.

use std::{
    io::{Read as _, Write},
    path::{Path, PathBuf},
};

use berth_api::{find_by_kind, manifest};
use hyper::http::Method;
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::{CtlError, Ctx, Target, closest_kind, emit, encode, kind_ref, resolve, str_at};

/// Create or update every object in the manifests (all or nothing).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berthctl apply -f app.yaml\n  berthctl apply -f manifests/\n  \
                        berthctl apply -f manifests/ -R\n  cat app.yaml | berthctl apply -f -\n  \
                        berthctl apply -f app.yaml --dry-run\n  \
                        berthctl apply -f app.yaml --server-side --field-manager ci\n\n\
                        Objects without a namespace go to -n NAMESPACE (default: default). All \
                        objects of all files are written in one transaction, except with \
                        --server-side (one server-side apply per object, as kubectl's)."
)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub files: Files,
    /// Validate and report what would change without writing anything.
    #[arg(long, num_args = 0..=1, default_missing_value = "server", value_parser = ["server", "client", "none"])]
    pub dry_run: Option<String>,
    /// Kubernetes' server-side apply: the manifest's fields become --field-manager's, and
    /// fields it applied before and leaves out now are removed.
    #[arg(long)]
    pub server_side: bool,
    /// With --server-side: take fields another manager set to other values instead of
    /// failing with the conflict.
    #[arg(long, requires = "server_side")]
    pub force_conflicts: bool,
    /// With --server-side: the manager the applied fields are recorded for.
    #[arg(long, requires = "server_side", default_value = "berthctl")]
    pub field_manager: String,
}

/// Create the objects in the manifests (fails for any that already exists), a
/// ServiceAccount token (`create token`), or a Job from a CronJob (`create job`).
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  berthctl create -f app.yaml\n  \
                        berthctl create -f manifests/\n  cat app.yaml | berthctl create -f -\n  \
                        berthctl create token builder -n ci --duration 10m\n  \
                        berthctl create job backup-now --from=cronjob/backup"
)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub what: Option<crate::auth::CreateWhat>,
    #[command(flatten)]
    pub files: Files,
}

#[derive(Debug, clap::Args)]
pub struct Files {
    /// A manifest file, a directory of them (.yaml, .yml, .json) or `-` for stdin;
    /// repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
    /// Also read manifests in subdirectories of a directory.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// One object to send, with where it came from.
struct Document {
    source: String,
    document: usize,
    object: Value,
}

fn read_error(path: &Path, e: &std::io::Error) -> CtlError {
    CtlError::Io(format!("{}: {e}", path.display()))
}

/// The manifest files a path stands for, directories expanded in name order.
fn expand(path: &Path, recursive: bool, top: bool, out: &mut Vec<PathBuf>) -> Result<(), CtlError> {
    if path.as_os_str() == "-" {
        out.push(path.to_owned());
        return Ok(());
    }
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, &e))?;
    if !meta.is_dir() {
        out.push(path.to_owned());
        return Ok(());
    }
    if !top && !recursive {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| read_error(path, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let manifest = entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if entry.is_dir() {
            expand(&entry, recursive, false, out)?;
        } else if manifest {
            out.push(entry);
        }
    }
    Ok(())
}

/// A validation error of the shared parser, with the file name and a hint.
fn describe_error(source: &str, error: &manifest::ManifestError) -> String {
    let mut text = format!("{source}: {error}");
    if let manifest::ManifestError::Malformed { message, .. } = error {
        // "apps/v1 Deploymnet is not supported; ..." → suggest the kind meant.
        let written = message
            .split_once(" is not supported")
            .and_then(|(head, _)| {
                let mut words = head.split_whitespace();
                Some((words.next()?, words.next()?))
            });
        if let Some((api_version, kind)) = written {
            let meant = closest_kind(&kind.to_ascii_lowercase())
                .and_then(|plural| resolve(&plural).ok())
                .filter(|rt| rt.kind != kind || rt.api_version() != api_version);
            if let Some(rt) = meant {
                text.push_str(&format!(
                    "\n  did you mean `apiVersion: {}` and `kind: {}`?",
                    rt.api_version(),
                    rt.kind
                ));
            }
        }
    }
    text
}

/// Reads and validates every manifest; the objects as written, in order.
fn load(ctx: &Ctx, files: &Files) -> Result<Vec<Document>, CtlError> {
    let mut paths = Vec::new();
    for path in &files.paths {
        expand(path, files.recursive, true, &mut paths)?;
    }
    if paths.is_empty() {
        return Err(CtlError::Usage(format!(
            "no manifests (.yaml, .yml, .json) in {}",
            files
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let (source, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CtlError::Io(format!("reading stdin: {e}")))?;
            ("<stdin>".to_owned(), text)
        } else {
            let text = std::fs::read_to_string(&path).map_err(|e| read_error(&path, &e))?;
            (path.display().to_string(), text)
        };
        if let Err(errors) = manifest::parse(&text) {
            problems.extend(errors.iter().map(|e| describe_error(&source, e)));
            continue;
        }
        for (index, object) in raw_documents(&text)
            .map_err(|e| CtlError::Usage(format!("{source}: {e}")))?
            .into_iter()
            .enumerate()
        {
            documents.push(Document {
                source: source.clone(),
                document: index + 1,
                object,
            });
        }
    }
    if !problems.is_empty() {
        return Err(CtlError::Usage(format!(
            "{}\nnothing was applied",
            problems.join("\n")
        )));
    }
    for doc in &mut documents {
        place_in_namespace(ctx, doc)?;
    }
    Ok(documents)
}

/// The documents of a manifest as JSON values, lists flattened (validated already).
fn raw_documents(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    let mut values = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            values.push(value.map_err(|e| e.to_string())?);
        }
    } else {
        for document in serde_norway::Deserializer::from_str(text) {
            values.push(Value::deserialize(document).map_err(|e| e.to_string())?);
        }
    }
    let mut objects = Vec::new();
    for value in values {
        match value {
            Value::Null => {}
            Value::Array(items) => objects.extend(items),
            v if v["kind"] == "List" => {
                objects.extend(v["items"].as_array().cloned().unwrap_or_default());
            }
            v => objects.push(v),
        }
    }
    Ok(objects)
}

/// Gives namespaced objects without a namespace the -n one; refuses a conflicting one
/// as kubectl does.
fn place_in_namespace(ctx: &Ctx, doc: &mut Document) -> Result<(), CtlError> {
    let namespaced = find_by_kind(
        str_at(&doc.object, "/apiVersion"),
        str_at(&doc.object, "/kind"),
    )
    .is_some_and(|rt| rt.namespaced);
    if !namespaced {
        return Ok(());
    }
    let written = str_at(&doc.object, "/metadata/namespace").to_owned();
    match ctx.explicit_namespace() {
        Some(ns) if written.is_empty() => doc.object["metadata"]["namespace"] = json!(ns),
        Some(ns) if written != ns => {
            return Err(CtlError::Usage(format!(
                "{} document {}: the namespace from the provided object {written:?} does not \
                 match the namespace {ns:?}; pass -n {written} or remove metadata.namespace",
                doc.source, doc.document
            )));
        }
        _ => {}
    }
    Ok(())
}

pub async fn apply(
    ctx: &Ctx,
    args: ApplyArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let documents = load(ctx, &args.files)?;
    let dry_run = matches!(args.dry_run.as_deref(), Some("server" | "client"));
    if args.server_side {
        let mut query = format!(
            "?fieldManager={}&force={}",
            encode(&args.field_manager),
            args.force_conflicts
        );
        if dry_run {
            query.push_str("&dryRun=All");
        }
        let send = Send {
            method: Method::PATCH,
            query,
            content_type: "application/apply-patch+yaml",
            done: if dry_run {
                "serverside-applied (server dry run)"
            } else {
                "serverside-applied"
            },
        };
        return send_each(ctx, documents, &send, out, err).await;
    }
    let body = Value::Array(documents.into_iter().map(|d| d.object).collect());
    let path = if dry_run {
        "/apply?dryRun=true"
    } else {
        "/apply"
    };
    let reply = ctx.call(Method::POST, path, Some(&body), None).await?;
    for item in reply["items"].as_array().into_iter().flatten() {
        let kind = str_at(item, "/kind").to_ascii_lowercase();
        let group = str_at(item, "/apiVersion")
            .split_once('/')
            .map(|(g, _)| format!(".{g}"))
            .unwrap_or_default();
        let name = str_at(item, "/name");
        let suffix = match args.dry_run.as_deref() {
            Some("server") => " (server dry run)",
            Some("client") => " (dry run)",
            _ => "",
        };
        emit(
            out,
            &format!("{kind}{group}/{name} {}{suffix}", str_at(item, "/action")),
        );
        for warning in item["warnings"].as_array().into_iter().flatten() {
            let _ = writeln!(
                err,
                "Warning: {kind}{group}/{name}: {}",
                warning.as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub async fn create(
    ctx: &Ctx,
    args: CreateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    if let Some(what) = args.what {
        return crate::auth::create(ctx, what, out).await;
    }
    let documents = load(ctx, &args.files)?;
    let send = Send {
        method: Method::POST,
        query: String::new(),
        content_type: "application/json",
        done: "created",
    };
    send_each(ctx, documents, &send, out, err).await
}

/// How [`send_each`] sends each object.
struct Send {
    /// POST to the collection, or any other method to the object's own path.
    method: Method,
    query: String,
    content_type: &'static str,
    /// What the output says was done.
    done: &'static str,
}

/// Sends every object in its own request; like kubectl, every object is tried, every
/// failure reported, and the command fails if any did.
async fn send_each(
    ctx: &Ctx,
    documents: Vec<Document>,
    send: &Send,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut failures = Vec::new();
    for doc in documents {
        let Some(rt) = find_by_kind(
            str_at(&doc.object, "/apiVersion"),
            str_at(&doc.object, "/kind"),
        ) else {
            continue;
        };
        let name = str_at(&doc.object, "/metadata/name").to_owned();
        let namespace = match str_at(&doc.object, "/metadata/namespace") {
            "" => ctx.namespace().to_owned(),
            ns => ns.to_owned(),
        };
        let mut path = Ctx::collection(rt, Some(&namespace));
        if send.method != Method::POST {
            path = format!("{path}/{name}");
        }
        path.push_str(&send.query);
        let bytes = serde_json::to_vec(&doc.object)
            .map_err(|e| CtlError::Io(format!("encoding {}: {e}", doc.source)))?;
        let reply = ctx
            .client()
            .request(
                send.method.clone(),
                &path,
                Some((&bytes, send.content_type)),
            )
            .await
            .map_err(|e| ctx.transport(e))?;
        for warning in reply.headers.get_all(hyper::http::header::WARNING) {
            let text = warning.to_str().unwrap_or_default();
            let text = text
                .strip_prefix("299 - ")
                .unwrap_or(text)
                .trim_matches('"');
            let _ = writeln!(err, "Warning: {}/{name}: {text}", kind_ref(rt));
        }
        if reply.status.is_success() {
            emit(out, &format!("{}/{name} {}", kind_ref(rt), send.done));
        } else {
            let body = reply.json().unwrap_or(Value::Null);
            failures.push(apply_failure(
                ctx,
                reply.status,
                &body,
                Target { rt, name: &name },
            ));
        }
    }
    let last = failures.pop();
    for failure in failures {
        let _ = writeln!(err, "{}", failure.render());
    }
    last.map_or(Ok(()), Err)
}

/// A failed write; a server-side apply's conflicts say how to resolve them.
fn apply_failure(
    ctx: &Ctx,
    status: hyper::http::StatusCode,
    body: &Value,
    target: Target<'_>,
) -> CtlError {
    let conflicts = body
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .is_some_and(|causes| {
            causes
                .iter()
                .any(|c| str_at(c, "/reason") == "FieldManagerConflict")
        });
    if !conflicts {
        return ctx.failure(status, body, Some(target));
    }
    CtlError::Server {
        reason: "Conflict".to_owned(),
        message: format!(
            "{}/{}: {}\n  these fields are another manager's: leave them out of the manifest, or \
             take them with --force-conflicts",
            kind_ref(target.rt),
            target.name,
            str_at(body, "/message")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_kinds_and_versions_suggest_the_supported_one() {
        for (manifest, hint) in [
            (
                "apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: a}\n",
                Some("did you mean `apiVersion: apps/v1` and `kind: Deployment`?"),
            ),
            (
                "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: a}\n",
                Some("did you mean `apiVersion: apps/v1` and `kind: Deployment`?"),
            ),
            (
                "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a}\n",
                None,
            ),
        ] {
            let errors = manifest::parse(manifest).expect_err("unsupported");
            let text = describe_error("app.yaml", &errors[0]);
            assert!(text.starts_with("app.yaml: document 1"), "{text}");
            match hint {
                Some(hint) => assert!(text.ends_with(hint), "{text}"),
                None => assert!(!text.contains("did you mean"), "{text}"),
            }
        }
    }
}
