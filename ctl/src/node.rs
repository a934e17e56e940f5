//! berthctl verbs answered by a node through the control plane: `logs`, `exec`, and the
//! live datapath view of `get endpoints NAME`.

use std::io::Write;

use clap::Args;
use http_body_util::BodyExt as _;
use hyper::http::Method;
use serde_json::{Value, json};

use super::{CtlError, Ctx, encode, output, resolve, session, str_at};

/// Print a container's logs.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  berthctl logs web-7d4b9-x2k1p\n  \
                        berthctl logs web-7d4b9-x2k1p -c echo -f --tail 20\n  \
                        berthctl logs web-7d4b9-x2k1p --previous")]
pub struct LogsArgs {
    pub pod: String,
    /// The container; may be left out when the pod has one.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep printing new output until interrupted (or the container ends).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous attempt's output (the container before the last restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u64>,
    /// Prefix each line with its time.
    #[arg(long)]
    pub timestamps: bool,
}

/// Run a command in a container; exits with its exit code.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  berthctl exec web-7d4b9-x2k1p -- cat /etc/resolv.conf\n  \
                        berthctl exec web-7d4b9-x2k1p -c echo -- sh -c 'exit 3'\n  \
                        berthctl exec -it web-7d4b9-x2k1p -- sh\n  \
                        echo hello | berthctl exec -i web-7d4b9-x2k1p -- cat"
)]
pub struct ExecArgs {
    pub pod: String,
    /// The container; may be left out when the pod has one.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[command(flatten)]
    pub stdio: StdioArgs,
    /// Without -i or -t: give up on the command after this many seconds [default: the
    /// node's, 60].
    #[arg(long)]
    pub timeout: Option<u32>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Attach to the standard streams of a container's own process.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  berthctl attach ticker-0\n  \
                        berthctl attach web-7d4b9-x2k1p -c echo")]
pub struct AttachArgs {
    pub pod: String,
    /// The container; may be left out when the pod has one.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[command(flatten)]
    pub stdio: StdioArgs,
}

/// Standard input and a terminal, for `exec` and `attach`.
#[derive(Debug, Clone, Copy, Args)]
pub struct StdioArgs {
    /// Pass standard input (its end is the process's end of file).
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// A terminal (with -i: interactive; keys go through as typed).
    #[arg(short = 't', long)]
    pub tty: bool,
}

/// Prints the container's output from now on until it stops or berthctl is interrupted.
pub async fn attach(
    ctx: &Ctx,
    args: &AttachArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let path = format!("{}/attach", ctx.object_path(resolve("pods")?, &args.pod));
    let streams = session::Streams {
        stdin: args.stdio.stdin,
        tty: args.stdio.tty,
    };
    let query = session::query(&[], args.container.as_deref(), streams);
    session::run(ctx, &format!("{path}?{query}"), streams, out, err).await
}

/// The query of a log request.
fn log_query(args: &LogsArgs) -> String {
    let mut query = Vec::new();
    if let Some(container) = &args.container {
        query.push(format!("container={}", encode(container)));
    }
    for (set, name) in [
        (args.follow, "follow"),
        (args.previous, "previous"),
        (args.timestamps, "timestamps"),
    ] {
        if set {
            query.push(format!("{name}=true"));
        }
    }
    if let Some(tail) = args.tail {
        query.push(format!("tailLines={tail}"));
    }
    if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    }
}

/// Prints the log as it arrives; with `-f` that is until the container ends.
pub async fn logs(ctx: &Ctx, args: &LogsArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let path = format!(
        "{}/log{}",
        ctx.object_path(resolve("pods")?, &args.pod),
        log_query(args)
    );
    let response = ctx
        .client()
        .send(Method::GET, &path, None)
        .await
        .map_err(|e| ctx.transport(e))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| ctx.transport(e.into()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| json!({"message": format!("{status}: {}", String::from_utf8_lossy(&bytes))}),
        );
        // The server's own words: "not found" may be the pod, its container or a
        // previous attempt.
        return Err(ctx.failure(status, &value, None));
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ctx.transport(e.into()))?;
        if let Some(data) = frame.data_ref() {
            // A closed stdout (`| head`) ends the command quietly, as kubectl does.
            if out.write_all(data).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// Runs the command; its output goes to stdout and stderr as it was, and a non-zero exit
/// becomes [`CtlError::CommandExited`].
pub async fn exec(
    ctx: &Ctx,
    args: &ExecArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let path = format!("{}/exec", ctx.object_path(resolve("pods")?, &args.pod));
    if args.stdio.stdin || args.stdio.tty {
        let streams = session::Streams {
            stdin: args.stdio.stdin,
            tty: args.stdio.tty,
        };
        let query = session::query(&args.command, args.container.as_deref(), streams);
        return session::run(ctx, &format!("{path}?{query}"), streams, out, err).await;
    }
    let mut request = json!({"command": args.command});
    if let Some(container) = &args.container {
        request["container"] = json!(container);
    }
    if let Some(timeout) = args.timeout {
        request["timeoutSeconds"] = json!(timeout);
    }
    let result = ctx.call(Method::POST, &path, Some(&request), None).await?;
    // Output is best effort: a closed pipe must not hide the exit code.
    let _ = out.write_all(str_at(&result, "/stdout").as_bytes());
    let _ = out.flush();
    let _ = err.write_all(str_at(&result, "/stderr").as_bytes());
    if result["truncated"] == true {
        let _ = writeln!(err, "(output cut short by the node's limit)");
    }
    match result["exitCode"].as_i64() {
        Some(0) => Ok(()),
        Some(code) => Err(CtlError::CommandExited(
            i32::try_from(code).unwrap_or(i32::MAX),
        )),
        None => Err(CtlError::Usage(
            "the server's answer has no exitCode".to_owned(),
        )),
    }
}

/// `ip:port` of the ready addresses of an Endpoints object, per port.
fn stored_endpoints(endpoints: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        for port in subset["ports"].as_array().into_iter().flatten() {
            for address in subset["addresses"].as_array().into_iter().flatten() {
                out.push(format!(
                    "{}:{}",
                    address["ip"].as_str().unwrap_or_default(),
                    port["port"]
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The Endpoints object as `get` shows it, then what each node's datapath serves.
pub async fn endpoints_view(ctx: &Ctx, name: &str, endpoints: &Value) -> Result<String, CtlError> {
    let path = format!("{}/backends", ctx.object_path(resolve("services")?, name));
    let backends = ctx.call(Method::GET, &path, None, None).await;
    let stored = stored_endpoints(endpoints);
    let mut out = output::table(&[
        vec!["NAME".to_owned(), "ENDPOINTS".to_owned()],
        vec![name.to_owned(), join_or_none(&stored)],
    ]);
    out.push_str("\n\n");
    match backends {
        Ok(view) => out.push_str(&live_table(&view)),
        // The Endpoints object is still worth showing when no node can be asked.
        Err(error) => out.push_str(&format!("live backends: {error}")),
    }
    Ok(out)
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "<none>".to_owned()
    } else {
        items.join(",")
    }
}

/// One row per node and service port.
fn live_table(view: &Value) -> String {
    let mut rows = vec![vec![
        "NODE".to_owned(),
        "PORT".to_owned(),
        "FRONTEND".to_owned(),
        "LIVE BACKENDS".to_owned(),
    ]];
    for node in view["nodes"].as_array().into_iter().flatten() {
        let name = str_at(node, "/node").to_owned();
        if let Some(error) = node["error"].as_str() {
            rows.push(vec![
                name,
                "-".into(),
                "-".into(),
                format!("error: {error}"),
            ]);
            continue;
        }
        let ports = node["ports"].as_array().cloned().unwrap_or_default();
        if ports.is_empty() {
            rows.push(vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "<not served>".into(),
            ]);
        }
        for port in ports {
            let backends: Vec<String> = port["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b.as_str().map(str::to_owned))
                .collect();
            let live = if port["programmed"] == true {
                join_or_none(&backends)
            } else {
                "<not programmed>".to_owned()
            };
            rows.push(vec![
                name.clone(),
                str_at(&port, "/name").to_owned(),
                str_at(&port, "/frontend").to_owned(),
                live,
            ]);
        }
    }
    output::table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_flags_become_the_query() {
        let args = LogsArgs {
            pod: "web-0".into(),
            container: Some("echo".into()),
            follow: true,
            previous: false,
            tail: Some(5),
            timestamps: false,
        };
        assert_eq!(log_query(&args), "?container=echo&follow=true&tailLines=5");
    }

    #[test]
    fn the_live_view_has_a_row_per_node_and_port() {
        let view = json!({"nodes": [
            {"node": "n1", "ready": true, "ports": [{"name": "default/web:80",
                "frontend": "198.18.200.10:80/TCP", "programmed": true,
                "backends": ["198.18.1.2:8080", "198.18.1.3:8080"]}]},
            {"node": "n2", "ready": false, "error": "the node is not Ready"},
            {"node": "n3", "ready": true, "ports": [{"name": "default/web:80",
                "frontend": "198.18.200.10:80/TCP", "programmed": true, "backends": []}]},
        ]});
        let text = live_table(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("n1") && lines[1].ends_with("198.18.1.2:8080,198.18.1.3:8080")
        );
        assert!(lines[2].contains("error: the node is not Ready"));
        assert!(lines[3].ends_with("<none>"));
    }

    #[test]
    fn stored_endpoints_are_ready_addresses_by_port() {
        let endpoints = json!({"subsets": [{"addresses": [{"ip": "198.18.1.3"}, {"ip": "198.18.1.2"}],
            "notReadyAddresses": [{"ip": "198.18.1.9"}], "ports": [{"port": 8080}]}]});
        assert_eq!(
            stored_endpoints(&endpoints),
            ["198.18.1.2:8080", "198.18.1.3:8080"]
        );
    }
}
