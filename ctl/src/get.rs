//! `get`: tables, `-o wide|yaml|json|name`, selectors, namespaces and `--watch`.

use std::io::Write;

use berth_api::ResourceType;
use hyper::http::Method;
use serde_json::Value;

use super::{
    CtlError, Ctx, Flow, Target, emit, encode,
    output::{self, Format},
    resolve, str_at,
};

/// Display one or many objects.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berthctl get pods\n  berthctl get pods -o wide -l app=web\n  \
                        berthctl get deployment web -o yaml\n  berthctl get deploy/web\n  \
                        berthctl get pods -A\n  berthctl get pods --watch\n  \
                        berthctl get nodes -o wide\n  berthctl get deployments -o name"
)]
pub struct GetArgs {
    /// Kind (pods, deployments, services, endpoints, nodes, events, replicasets,
    /// controllerrevisions, or short names po, deploy, svc, ep, no, ev, rs), or KIND/NAME.
    pub kind: String,
    /// Names of objects; all when none is given.
    pub names: Vec<String>,
    /// Label selector, e.g. app=web,tier!=db or 'env in (a,b)'.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector over the object's JSON, e.g. spec.nodeName=node-1.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// List across all namespaces (adds a NAMESPACE column).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format: wide (more columns), yaml, json, name.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
    /// After listing, print changes as they happen (until interrupted).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With -o yaml|json: keep metadata.managedFields (left out by default, as kubectl).
    #[arg(long)]
    pub show_managed_fields: bool,
}

/// `value` (an object or a list of them) as `-o yaml|json` prints it: without
/// `metadata.managedFields` unless `--show-managed-fields`.
fn shown(mut value: Value, args: &GetArgs) -> Value {
    if args.show_managed_fields {
        return value;
    }
    let strip = |object: &mut Value| {
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    };
    match value.get_mut("items").and_then(Value::as_array_mut) {
        Some(items) => items.iter_mut().for_each(strip),
        None => strip(&mut value),
    }
    value
}

/// `deploy/web svc/db` or `deploy web db`: (type, name) pairs; no names for a list.
fn targets(args: &GetArgs) -> Result<(&'static ResourceType, Vec<String>), CtlError> {
    let mut kind = args.kind.as_str();
    let mut names = args.names.clone();
    if let Some((k, name)) = args.kind.split_once('/') {
        kind = k;
        names.insert(0, name.to_owned());
    }
    let rt = resolve(kind)?;
    for name in &names {
        if let Some((other, _)) = name.split_once('/')
            && !std::ptr::eq(resolve(other)?, rt)
        {
            return Err(CtlError::Usage(format!(
                "{name:?}: one kind per get; run a second get for {other}"
            )));
        }
    }
    let names = names
        .into_iter()
        .map(|n| n.split_once('/').map_or(n.clone(), |(_, n)| n.to_owned()))
        .collect();
    Ok((rt, names))
}

fn query(args: &GetArgs) -> Vec<String> {
    let mut query = Vec::new();
    if let Some(selector) = &args.selector {
        query.push(format!("labelSelector={}", encode(selector)));
    }
    if let Some(selector) = &args.field_selector {
        query.push(format!("fieldSelector={}", encode(selector)));
    }
    query
}

pub async fn run(
    ctx: &Ctx,
    args: GetArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    if args.kind.contains(',') && !args.kind.contains('/') {
        return several(ctx, &args, out, err).await;
    }
    let (rt, names) = targets(&args)?;
    let format = args.output;
    let namespaces = args.all_namespaces && names.is_empty();
    let (items, resource_version) = if names.is_empty() {
        list(ctx, rt, &args).await?
    } else {
        let mut items = Vec::new();
        for name in &names {
            let target = Target { rt, name };
            items.push(
                ctx.call(Method::GET, &ctx.object_path(rt, name), None, Some(target))
                    .await?,
            );
        }
        let newest = items
            .iter()
            .filter_map(|i| str_at(i, "/metadata/resourceVersion").parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        (items, newest.to_string())
    };

    let wide = format == Some(Format::Wide);
    let mut rows = vec![output::header(rt, wide, namespaces)];
    match format {
        Some(f @ (Format::Json | Format::Yaml)) => {
            let value = match items.as_slice() {
                [one] if names.len() == 1 => one.clone(),
                _ => output::list_of(items.clone(), &resource_version),
            };
            emit(out, &output::serialize(&shown(value, &args), f)?);
        }
        Some(Format::Name) => {
            for item in &items {
                emit(out, &output::name_of(rt, item));
            }
        }
        // One Endpoints object: also what each node's datapath serves for it.
        None if rt.kind == "Endpoints" && names.len() == 1 && !args.watch => {
            for item in &items {
                emit(
                    out,
                    &super::node::endpoints_view(ctx, &names[0], item).await?,
                );
            }
        }
        Some(Format::Wide) | None => {
            rows.extend(items.iter().map(|i| output::row(rt, i, wide, namespaces)));
            if items.is_empty() {
                if !args.watch {
                    let _ = writeln!(err, "{}", no_resources(ctx, rt, args.all_namespaces));
                }
            } else {
                emit(out, &output::table(&rows));
            }
        }
    }
    if !args.watch {
        return Ok(());
    }
    if names.len() > 1 {
        return Err(CtlError::Usage(
            "watch is only supported on one object or a whole collection".to_owned(),
        ));
    }
    let mut query = query(&args);
    if let Some(name) = names.first() {
        query.push(format!(
            "fieldSelector={}",
            encode(&format!("metadata.name={name}"))
        ));
    }
    let scope = (!args.all_namespaces).then(|| ctx.namespace());
    let mut header_printed = !items.is_empty();
    let mut widths = output::widths(&rows);
    ctx.follow(
        &Ctx::collection(rt, scope),
        &query,
        resource_version,
        None,
        |_, object| {
            match format {
                Some(f @ (Format::Json | Format::Yaml)) => {
                    let text = output::serialize(&shown(object.clone(), &args), f)?;
                    emit(
                        out,
                        &if f == Format::Yaml {
                            format!("---\n{text}")
                        } else {
                            text
                        },
                    );
                }
                Some(Format::Name) => emit(out, &output::name_of(rt, object)),
                Some(Format::Wide) | None => {
                    let row = output::row(rt, object, wide, namespaces);
                    // Keep the columns of what is already on screen; widen only when a
                    // new value does not fit.
                    for (width, cell) in widths.iter_mut().zip(&row) {
                        *width = (*width).max(cell.chars().count());
                    }
                    if !header_printed {
                        emit(out, &output::line(&rows[0], &widths));
                        header_printed = true;
                    }
                    emit(out, &output::line(&row, &widths));
                }
            }
            Ok(Flow::Continue)
        },
    )
    .await
}

async fn list(
    ctx: &Ctx,
    rt: &ResourceType,
    args: &GetArgs,
) -> Result<(Vec<Value>, String), CtlError> {
    let scope = (!args.all_namespaces).then(|| ctx.namespace());
    let mut path = Ctx::collection(rt, scope);
    let query = query(args);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let list = ctx.call(Method::GET, &path, None, None).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    Ok((items, str_at(&list, "/metadata/resourceVersion").to_owned()))
}

/// `get deploy,svc`: one table per kind, or one List of everything.
async fn several(
    ctx: &Ctx,
    args: &GetArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    if args.watch || !args.names.is_empty() {
        return Err(CtlError::Usage(
            "names and --watch need a single kind (e.g. `get deploy web`)".to_owned(),
        ));
    }
    let types = args
        .kind
        .split(',')
        .map(resolve)
        .collect::<Result<Vec<_>, _>>()?;
    let wide = args.output == Some(Format::Wide);
    let mut everything = Vec::new();
    let mut printed = false;
    for rt in types {
        let (items, _) = list(ctx, rt, args).await?;
        match args.output {
            Some(Format::Json | Format::Yaml) => everything.extend(items),
            Some(Format::Name) => {
                for item in &items {
                    emit(out, &output::name_of(rt, item));
                }
            }
            Some(Format::Wide) | None if !items.is_empty() => {
                let mut rows = vec![output::header(rt, wide, args.all_namespaces)];
                rows.extend(
                    items
                        .iter()
                        .map(|i| output::row(rt, i, wide, args.all_namespaces)),
                );
                if printed {
                    emit(out, "");
                }
                printed = true;
                emit(out, &output::table(&rows));
            }
            _ => {}
        }
    }
    match args.output {
        Some(f @ (Format::Json | Format::Yaml)) => {
            emit(
                out,
                &output::serialize(&shown(output::list_of(everything, ""), args), f)?,
            );
        }
        Some(Format::Wide) | None if !printed => {
            let _ = writeln!(err, "No resources found in {} namespace.", ctx.namespace());
        }
        _ => {}
    }
    Ok(())
}

fn no_resources(ctx: &Ctx, rt: &ResourceType, all: bool) -> String {
    if all || !rt.namespaced {
        "No resources found".to_owned()
    } else {
        format!("No resources found in {} namespace.", ctx.namespace())
    }
}
