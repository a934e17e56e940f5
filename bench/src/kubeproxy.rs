//! iptables rules of the shape kube-proxy's iptables mode writes (pkg/proxy/iptables,
//! v1.28+): KUBE-SERVICES matches each ClusterIP in turn and jumps to the service's
//! KUBE-SVC-* chain, which picks an endpoint with `statistic --mode random` and jumps to its
//! KUBE-SEP-* chain, which DNATs. The filter table gets kube-proxy's forwarding rules,
//! which every forwarded packet walks. Loaded with `iptables-restore --noflush`, as
//! kube-proxy does: declaring a chain flushes it, so a restore rewrites what it names.

use std::fmt::Write as _;

use crate::services::{CLUSTER_CIDR, Svc};

/// The jumps from the built-in chains; kube-proxy installs them once with `iptables -I`.
pub const BUILTIN_JUMPS: &str = "\
*filter
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-NODEPORTS - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
COMMIT
";

/// kube-proxy names chains after a base32 SHA-256 of the service port (and endpoint);
/// any stable 16-character hash in the same alphabet gives rules of the same shape.
fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // FNV-1a, 64 bits, then a second round so 16 characters carry 80 bits.
    let fnv = |seed: u64| {
        text.bytes().fold(seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    (0..16)
        .map(|i| {
            let word = if i < 8 { a } else { b };
            ALPHABET[((word >> ((i % 8) * 5)) & 31) as usize] as char
        })
        .collect()
}

pub fn svc_chain(svc: &Svc) -> String {
    format!("KUBE-SVC-{}", chain_hash(&format!("{}tcp", svc.name)))
}

pub fn sep_chain(svc: &Svc, backend: (std::net::Ipv4Addr, u16)) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&format!("{}tcp{}:{}", svc.name, backend.0, backend.1))
    )
}

/// The filter chains kube-proxy rewrites on every sync.
fn filter_table(out: &mut String) {
    out.push_str(
        "*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
",
    );
}

/// The nat chains kube-proxy rewrites on every sync, then `chains` of the given services.
fn nat_header(out: &mut String) {
    out.push_str(
        "*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
",
    );
}

fn nat_fixed_rules(out: &mut String) {
    out.push_str(
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
",
    );
}

fn service_portal(out: &mut String, svc: &Svc) {
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {} -j {}",
        svc.vip,
        svc.name,
        svc.port,
        svc_chain(svc)
    );
}

fn service_chains(declare: &mut String, rules: &mut String, svc: &Svc) {
    let chain = svc_chain(svc);
    let _ = writeln!(declare, ":{chain} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {chain} ! -s {CLUSTER_CIDR} -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
        svc.vip, svc.name, svc.port
    );
    let count = svc.backends.len();
    for (i, backend) in svc.backends.iter().enumerate() {
        let sep = sep_chain(svc, *backend);
        let (addr, port) = backend;
        if i + 1 < count {
            let _ = writeln!(
                rules,
                "-A {chain} -m comment --comment \"{} -> {addr}:{port}\" -m statistic --mode random --probability {:.10} -j {sep}",
                svc.name,
                1.0 / (count - i) as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {chain} -m comment --comment \"{} -> {addr}:{port}\" -j {sep}",
                svc.name
            );
        }
        sep_rules(declare, rules, svc, *backend);
    }
}

fn sep_rules(
    declare: &mut String,
    rules: &mut String,
    svc: &Svc,
    backend: (std::net::Ipv4Addr, u16),
) {
    let sep = sep_chain(svc, backend);
    let (addr, port) = backend;
    let _ = writeln!(declare, ":{sep} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {sep} -s {addr}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
        svc.name
    );
    let _ = writeln!(
        rules,
        "-A {sep} -p tcp -m comment --comment \"{}\" -m tcp -j DNAT --to-destination {addr}:{port}",
        svc.name
    );
}

/// What a full sync writes: every chain of every service.
pub fn full_sync(services: &[Svc]) -> String {
    let mut out = String::new();
    filter_table(&mut out);
    nat_header(&mut out);
    let mut declare = String::new();
    let mut rules = String::new();
    for svc in services {
        service_chains(&mut declare, &mut rules, svc);
    }
    out.push_str(&declare);
    nat_fixed_rules(&mut out);
    for svc in services {
        service_portal(&mut out, svc);
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// What a partial sync (kube-proxy 1.28+, MinimizeIPTablesRestore) writes after one
/// service's endpoints changed from `before` to `after`: the top-level chains in full,
/// that service's chains, and the removal of endpoint chains that are gone.
pub fn partial_sync(services_after: &[Svc], before: &Svc, after: &Svc) -> String {
    let mut out = String::new();
    filter_table(&mut out);
    nat_header(&mut out);
    let mut declare = String::new();
    let mut rules = String::new();
    service_chains(&mut declare, &mut rules, after);
    let gone: Vec<String> = before
        .backends
        .iter()
        .filter(|backend| !after.backends.contains(backend))
        .map(|backend| sep_chain(before, *backend))
        .collect();
    for chain in &gone {
        let _ = writeln!(declare, ":{chain} - [0:0]");
    }
    out.push_str(&declare);
    nat_fixed_rules(&mut out);
    for svc in services_after {
        service_portal(&mut out, svc);
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&rules);
    for chain in &gone {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

/// Rules in the nat table a full sync writes (for the report).
pub fn nat_rule_count(services: &[Svc]) -> usize {
    let rules = full_sync(services);
    let nat = rules.split_once("*nat\n").map_or("", |(_, nat)| nat);
    nat.lines().filter(|line| line.starts_with("-A ")).count()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::services::{services, with_one_change};

    #[test]
    fn chain_names_fit_iptables_and_are_stable() {
        let set = services(3, &[(Ipv4Addr::new(198, 18, 1, 2), 8080)], 2);
        let chain = svc_chain(&set[0]);
        assert_eq!(chain.len(), 25, "{chain}");
        assert!(
            chain.len() <= 28,
            "iptables chain names are at most 28 bytes"
        );
        assert_eq!(chain, svc_chain(&set[0]));
        assert_ne!(chain, svc_chain(&set[2]));
        assert_ne!(
            sep_chain(&set[0], set[0].backends[0]),
            sep_chain(&set[0], set[0].backends[1])
        );
    }

    #[test]
    fn full_sync_has_kube_proxy_shape() {
        let real = [
            (Ipv4Addr::new(198, 18, 1, 2), 8080),
            (Ipv4Addr::new(198, 18, 1, 3), 8080),
            (Ipv4Addr::new(198, 18, 1, 4), 8080),
        ];
        let set = services(1, &real, 10);
        let rules = full_sync(&set);
        let svc = svc_chain(&set[0]);
        assert!(rules.contains(&format!(
            "-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -m comment --comment \"bench/svc-0:http cluster IP\" -m tcp --dport 80 -j {svc}"
        )));
        assert!(rules.contains("--probability 0.3333333333"));
        assert!(rules.contains("--probability 0.5000000000"));
        assert!(rules.contains("-j DNAT --to-destination 198.18.1.4:8080"));
        // Masquerade jump + 3 endpoint jumps + 2 rules per endpoint chain + portal + the
        // nodeports rule + 4 fixed rules.
        assert_eq!(nat_rule_count(&set), 1 + 3 + 6 + 1 + 1 + 4);
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }

    #[test]
    fn partial_sync_rewrites_the_portals_and_one_service() {
        let set = services(5, &[(Ipv4Addr::new(198, 18, 1, 2), 8080)], 3);
        let changed = with_one_change(&set);
        let rules = partial_sync(&changed, &set[0], &changed[0]);
        assert_eq!(rules.matches("-A KUBE-SERVICES -d").count(), 5);
        assert!(rules.contains(&format!("-X {}", sep_chain(&set[0], set[0].backends[0]))));
        assert!(!rules.contains(&svc_chain(&set[1]).replace("KUBE-SVC-", ":KUBE-SVC-")));
    }
}
