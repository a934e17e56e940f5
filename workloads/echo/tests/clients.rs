//! The image's `wget` and `nslookup` (berth-echo run through links of those names) against
//! an echo server and a DNS server on loopback.

mod common;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use berth_echo::{
    Reply,
    client::{self, ResolvConf},
};
use common::{MANY, dns_server};

fn tools() -> (tempfile::TempDir, PathBuf, PathBuf) {
    common::tools(Path::new(env!("CARGO_BIN_EXE_berth-echo")))
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", program.display()))
}

#[test]
fn wget_prints_the_body_of_a_page() {
    let (_dir, wget, _) = tools();
    let server = common::echo_server("web-0");
    let url = format!("http://{}/", server.local_addr());
    let out = run(&wget, &["-qO-", &url]);
    assert!(out.status.success(), "wget failed: {out:?}");
    let body = String::from_utf8_lossy(&out.stdout);
    let reply = Reply::parse(body.trim()).expect("an echo reply");
    assert_eq!(reply.pod, "web-0");
    // The usual spelling, with the options apart.
    let out = run(&wget, &["-q", "-O", "-", &format!("{url}healthz")]);
    assert!(out.status.success(), "wget failed: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    server.stop();
}

#[test]
fn wget_saves_to_a_file_and_fails_on_errors() {
    let (dir, wget, _) = tools();
    let server = common::echo_server("web-0");
    let file = dir.path().join("page");
    let url = format!("http://{}/", server.local_addr());
    let out = run(
        &wget,
        &["-q", "-O", file.to_str().expect("utf-8 path"), &url],
    );
    assert!(out.status.success(), "wget failed: {out:?}");
    let saved = std::fs::read_to_string(&file).expect("the saved page");
    assert!(Reply::parse(saved.trim()).is_some(), "saved {saved:?}");

    server.set_ready(false);
    let out = run(&wget, &["-qO-", &format!("{url}readyz")]);
    assert!(!out.status.success(), "a 503 must fail: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
    let port = server.local_addr().port();
    server.stop();
    let out = run(&wget, &["-qO-", &format!("http://127.0.0.1:{port}/")]);
    assert!(!out.status.success(), "nothing listens any more: {out:?}");
    let out = run(&wget, &["-qO-", "ftp://example/"]);
    assert!(!out.status.success());
}

#[test]
fn nslookup_asks_the_given_server() {
    let (_dir, _, nslookup) = tools();
    let dns = dns_server("127.0.0.1:0");
    let server = dns.to_string();
    let out = run(&nslookup, &["web.test.", &server]);
    assert!(out.status.success(), "nslookup failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Address:\t{dns}")), "{text}");
    assert!(
        text.contains("Name:\tweb.test\nAddress: 198.19.0.10\n"),
        "{text}"
    );

    let out = run(&nslookup, &["nope.test.", &server]);
    assert!(!out.status.success(), "an unknown name must fail: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("can't resolve 'nope.test.'"));
}

#[test]
fn truncated_answers_are_asked_again_over_tcp() {
    let (_dir, _, nslookup) = tools();
    let dns = dns_server("127.0.0.1:0");
    let out = run(&nslookup, &["many.test.", &dns.to_string()]);
    assert!(out.status.success(), "nslookup failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("Address: 198.18.1.").count(),
        usize::from(MANY),
        "{text}"
    );
}

#[test]
fn names_resolve_through_search_domains_and_hosts() {
    let dns = dns_server("127.0.0.1:0");
    let conf = ResolvConf {
        nameservers: vec![dns],
        ..ResolvConf::parse("search default.svc.test test\noptions ndots:5\n")
    };
    let (_, answer) = client::resolve("web", "", &conf)
        .expect("an answer")
        .expect("the name exists");
    // The first search domain that has it wins.
    assert_eq!(answer.name, "web.default.svc.test");
    assert_eq!(answer.addresses, [Ipv4Addr::new(198, 19, 0, 10)]);
    assert!(
        client::resolve("nope", "", &conf)
            .expect("an answer")
            .is_none()
    );
    // /etc/hosts comes first, and literals need no lookup at all.
    let (_, answer) = client::resolve("web", "198.18.9.9 web\n", &conf)
        .expect("an answer")
        .expect("in hosts");
    assert_eq!(answer.addresses, [Ipv4Addr::new(198, 18, 9, 9)]);
    let (_, answer) = client::resolve("10.1.2.3", "", &conf)
        .expect("an answer")
        .expect("a literal");
    assert_eq!(answer.addresses, [Ipv4Addr::new(10, 1, 2, 3)]);
}
