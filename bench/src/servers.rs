//! The backends (nginx) and the userspace proxy (HAProxy) the benchmark runs.
//!
//! Backends are nginx with one worker process each, not Berth's echo server: nginx is
//! what this machine's earlier iptables/nftables/HAProxy baselines were measured with, it is
//! a single-threaded event loop per worker (so "3 backends" means 3 busy processes, in
//! every mode alike), and its cost per request is low and well known, so the figures
//! compare the paths to the backends rather than the backends.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use crate::services::Svc;

/// nginx answering `200 <name>` on `addr:port`, in the foreground, one process
/// (`master_process off`: the pid we start is the pid that serves, and the one we kill).
pub fn nginx_config(name: &str, addr: Ipv4Addr, port: u16, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{
    worker_connections 16384;
    use epoll;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    # Keep-alive connections live for the whole run: no reconnects in keep-alive mode.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen {addr}:{port} backlog=4096;
        location / {{
            return 200 \"{name}\\n\";
        }}
    }}
}}
"
    )
}

/// HAProxy in TCP mode (an L4 proxy, like kube-proxy's old userspace mode or IPVS in
/// what it balances: connections), one `listen` section per service, round robin.
/// Threads: HAProxy's default, one per CPU.
pub fn haproxy_config(services: &[Svc]) -> String {
    let mut out = String::from(
        "global
    # Far above the client's 30 connections; HAProxy sizes its file limit from it.
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
",
    );
    for svc in services {
        let _ = writeln!(
            out,
            "listen svc-{}\n    bind {}:{}\n    balance roundrobin",
            svc.index, svc.vip, svc.port
        );
        for (j, (addr, port)) in svc.backends.iter().enumerate() {
            let _ = writeln!(out, "    server e{j} {addr}:{port}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::services;

    #[test]
    fn haproxy_config_has_a_listener_per_service() {
        let set = services(3, &[(Ipv4Addr::new(198, 18, 1, 2), 8080)], 2);
        let config = haproxy_config(&set);
        assert_eq!(config.matches("listen svc-").count(), 3);
        assert!(config.contains("bind 198.19.0.2:80"));
        assert!(config.contains("server e0 198.18.1.2:8080"));
    }

    #[test]
    fn nginx_config_serves_one_address() {
        let config = nginx_config(
            "b1",
            Ipv4Addr::new(198, 18, 1, 2),
            8080,
            Path::new("/tmp/x"),
        );
        assert!(config.contains("listen 198.18.1.2:8080 backlog=4096;"));
        assert!(config.contains("master_process off;"));
    }
}
