//! `label`: set and remove an object's labels with one merge patch, as kubectl does.

use std::{collections::BTreeMap, io::Write};

use hyper::http::Method;
use serde_json::{Value, json};

use super::{CtlError, Ctx, Target, emit, kind_ref, resolve};

/// Set (`KEY=VALUE`) or remove (`KEY-`) labels of one object.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berthctl label pod web-1a2b3 role=client\n  \
                        berthctl label pod/web-1a2b3 role=server --overwrite\n  \
                        berthctl label pod web-1a2b3 role-\n  \
                        berthctl label namespace team-a team=a"
)]
pub struct LabelArgs {
    /// Kind, e.g. pod, deployment, namespace, or KIND/NAME.
    pub kind: String,
    /// The object's name (unless given as KIND/NAME), then the changes: KEY=VALUE sets a
    /// label, KEY- removes one.
    #[arg(required = true)]
    pub rest: Vec<String>,
    /// Let KEY=VALUE replace a label the object already has with another value.
    #[arg(long)]
    pub overwrite: bool,
}

/// The changes on the command line: each key's new value, None to remove it.
fn changes(specs: &[String]) -> Result<BTreeMap<String, Option<String>>, CtlError> {
    let mut changes = BTreeMap::new();
    for spec in specs {
        let (key, value) = if let Some((key, value)) = spec.split_once('=') {
            (key, Some(value.to_owned()))
        } else if let Some(key) = spec.strip_suffix('-') {
            (key, None)
        } else {
            return Err(CtlError::Usage(format!(
                "invalid label change {spec:?}: use KEY=VALUE to set a label or KEY- to remove it"
            )));
        };
        if key.is_empty() {
            return Err(CtlError::Usage(format!(
                "invalid label change {spec:?}: the key is empty"
            )));
        }
        if changes.insert(key.to_owned(), value).is_some() {
            return Err(CtlError::Usage(format!(
                "label {key:?} is changed twice on the command line"
            )));
        }
    }
    Ok(changes)
}

pub async fn run(ctx: &Ctx, args: LabelArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let (kind, name, specs) = match args.kind.split_once('/') {
        Some((kind, name)) => (kind, name, &args.rest[..]),
        None => match args.rest.split_first() {
            Some((name, specs)) => (args.kind.as_str(), name.as_str(), specs),
            None => unreachable!("clap requires the rest"),
        },
    };
    let changes = changes(specs)?;
    if changes.is_empty() {
        return Err(CtlError::Usage(
            "give at least one KEY=VALUE or KEY- (e.g. `berthctl label pod web role=client`)"
                .to_owned(),
        ));
    }
    let rt = resolve(kind)?;
    let path = ctx.object_path(rt, name);
    let target = Target { rt, name };
    let current = ctx.call(Method::GET, &path, None, Some(target)).await?;
    let labels = current.pointer("/metadata/labels");
    let existing = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    let mut patch = serde_json::Map::new();
    for (key, value) in &changes {
        match (value, existing(key)) {
            (Some(value), Some(old)) if old != value && !args.overwrite => {
                return Err(CtlError::Usage(format!(
                    "'{key}' already has a value ({old}), and --overwrite is false"
                )));
            }
            (Some(value), old) if old != Some(value.as_str()) => {
                patch.insert(key.clone(), json!(value));
            }
            (None, Some(_)) => {
                patch.insert(key.clone(), Value::Null);
            }
            _ => {}
        }
    }
    let object = format!("{}/{name}", kind_ref(rt));
    if patch.is_empty() {
        emit(out, &format!("{object} not labeled"));
        return Ok(());
    }
    let removes_only = patch.values().all(Value::is_null);
    let body = json!({"metadata": {"labels": patch}});
    ctx.merge_patch(&path, &body, target).await?;
    let word = if removes_only { "unlabeled" } else { "labeled" };
    emit(out, &format!("{object} {word}"));
    Ok(())
}
