//! The image's `wget` and `nslookup` as a pod runs them: in a network namespace of their
//! own, with a pod's resolv.conf (search list, `ndots:5`) naming a DNS server on port 53.
//! `ip netns exec` puts /etc/netns/<name>/resolv.conf over /etc/resolv.conf for the
//! command it runs, so the binaries read the real path. Needs root.

mod common;

use std::{net::SocketAddr, path::Path};

use berth_echo::Reply;
use berth_testkit::netns::NetNs;

/// /etc/netns/<name>/, removed on drop.
struct NetnsEtc(std::path::PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn clients_resolve_through_resolv_conf_search_domains() {
    let ns = NetNs::new("ecn").expect("network namespace");
    let etc = NetnsEtc(Path::new("/etc/netns").join(ns.name()));
    std::fs::create_dir_all(&etc.0).expect("create /etc/netns/<name>");
    std::fs::write(
        etc.0.join("resolv.conf"),
        "nameserver 127.0.0.1\nsearch default.svc.test svc.test test\noptions ndots:5\n",
    )
    .expect("write resolv.conf");
    // The address the test zone gives `web.default.svc.test`.
    ns.ip(&["addr", "add", "198.19.0.10/32", "dev", "lo"])
        .expect("add the service address");
    let dns = ns.run(|| common::dns_server("127.0.0.1:53"));
    assert_eq!(dns, "127.0.0.1:53".parse::<SocketAddr>().expect("addr"));
    let server =
        ns.run(|| common::echo_server_on("web-0", "198.19.0.10:80".parse().expect("addr")));

    let (_dir, wget, nslookup) = common::tools(Path::new(env!("CARGO_BIN_EXE_berth-echo")));
    let path = |tool: &Path| tool.to_str().expect("utf-8 path").to_owned();
    let out = ns.exec(&path(&nslookup), &["web"]);
    assert!(out.status.success(), "nslookup web: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Name:\tweb.default.svc.test\nAddress: 198.19.0.10\n"),
        "{text}"
    );

    let out = ns.exec(&path(&wget), &["-qO-", "http://web/"]);
    assert!(out.status.success(), "wget http://web/: {out:?}");
    let body = String::from_utf8_lossy(&out.stdout);
    let reply = Reply::parse(body.trim()).expect("an echo reply");
    assert_eq!(reply.pod, "web-0");

    let out = ns.exec(&path(&wget), &["-qO-", "http://nope/"]);
    assert!(!out.status.success(), "an unknown name: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad address 'nope'"));
    server.stop();
}
