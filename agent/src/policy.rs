//! NetworkPolicies compiled for one node's datapath (Cilium's model): every set of pods
//! with the same namespace and labels gets a numeric identity, every pod address maps to
//! its identity (the ipcache), and each pod of this node that a policy isolates gets the
//! (identity, protocol, port range) entries its policies allow.
//!
//! Identities are this agent's own numbers: a verdict only ever compares an identity
//! from this node's ipcache with this node's policy entries, never a number carried from
//! another node, so nodes agree on verdicts (they compile the same objects) without
//! agreeing on numbers. Numbers are never reused within the agent's life, so an entry
//! still in a map during an update never grants a new set of pods an old set's access.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use berth_api::{
    core::{IntOrString, Namespace, Pod},
    networking::{
        EGRESS, INGRESS, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, cidr_contains,
        parse_cidr, selects,
    },
};
use berth_ebpf_common::{
    ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, IDENTITY_ANY, IDENTITY_FIRST_CIDR,
    IDENTITY_FIRST_POD, IDENTITY_HOST, IPPROTO_TCP, IPPROTO_UDP, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
};

/// The label Kubernetes gives every namespace, so `namespaceSelector` can name one.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// An address range: network address and prefix length.
pub type Cidr = (Ipv4Addr, u8);

/// What the datapath holds for the policies: see the module's comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    /// Address range → identity: pods as /32s, and the ranges the policies' ipBlocks
    /// name (a pod's /32 wins over a range of the same address).
    pub ipcache: BTreeMap<Cidr, u32>,
    /// Each isolated pod of this node (by address) → `ENDPOINT_*_ISOLATED` flags.
    pub endpoints: BTreeMap<Ipv4Addr, u32>,
    /// What each isolated pod lets in.
    pub ingress: BTreeMap<Ipv4Addr, BTreeSet<Allow>>,
}

/// One policy entry: a peer identity on a protocol (0: any) and a port range given as
/// a prefix of [`berth_ebpf_common::PolicyKey`]'s bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allow {
    pub identity: u32,
    pub proto: u8,
    /// First port of the range, host order (0 with any port).
    pub port: u16,
    pub prefix_len: u32,
}

impl Allow {
    /// Whether this entry lets `identity` in on `proto`/`port`, as the LPM lookup decides.
    pub fn covers(&self, identity: u32, proto: u8, port: u16) -> bool {
        if self.identity != identity {
            return false;
        }
        if self.prefix_len <= POLICY_PREFIX_ANY_PROTO {
            return true;
        }
        let port_bits = self.prefix_len - POLICY_PREFIX_ANY_PORT;
        let mask = u16::MAX.checked_shl(16 - port_bits).unwrap_or(0);
        self.proto == proto && port & mask == self.port
    }
}

/// Identity numbers, kept between compilations so a pod keeps its number while its
/// labels do.
#[derive(Debug, Default)]
pub struct Identities {
    pods: BTreeMap<(String, BTreeMap<String, String>), u32>,
    cidrs: BTreeMap<Cidr, u32>,
    next_pod: u32,
    next_cidr: u32,
}

impl Identities {
    fn pod(&mut self, namespace: &str, labels: &BTreeMap<String, String>) -> u32 {
        let next = &mut self.next_pod;
        *self
            .pods
            .entry((namespace.to_owned(), labels.clone()))
            .or_insert_with(|| {
                let id = IDENTITY_FIRST_POD + *next;
                *next += 1;
                id
            })
    }

    fn cidr(&mut self, cidr: Cidr) -> u32 {
        let next = &mut self.next_cidr;
        *self.cidrs.entry(cidr).or_insert_with(|| {
            let id = IDENTITY_FIRST_CIDR + *next;
            *next += 1;
            id
        })
    }

    /// Forgets the numbers no pod or range uses any more (they are not given out again).
    fn retain(&mut self, used: &BTreeSet<u32>) {
        self.pods.retain(|_, id| used.contains(id));
        self.cidrs.retain(|_, id| used.contains(id));
    }
}

/// What the compilation reads: every pod and namespace of the cluster, every policy, the
/// node's name (its pods are the ones isolated here) and its own addresses (always let
/// in, as kubelet's probes must be).
pub struct PolicyInput<'a> {
    pub node_name: &'a str,
    pub host_addrs: &'a [Ipv4Addr],
    pub pods: &'a [Pod],
    pub namespaces: &'a [Namespace],
    pub policies: &'a [NetworkPolicy],
}

fn pod_addr(pod: &Pod) -> Option<Ipv4Addr> {
    if pod.is_terminal() {
        return None;
    }
    pod.status.as_ref()?.pod_ip.parse().ok()
}

/// Compiles the policies for this node. Idempotent: the same input and identities give
/// the same plan.
pub fn compile(input: &PolicyInput<'_>, ids: &mut Identities) -> PolicyPlan {
    let mut plan = PolicyPlan::default();
    let namespace_labels: BTreeMap<&str, BTreeMap<String, String>> = input
        .namespaces
        .iter()
        .map(|ns| {
            let mut labels = ns.metadata.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.metadata.name.clone());
            (ns.metadata.name.as_str(), labels)
        })
        .collect();
    let labels_of = |namespace: &str| {
        namespace_labels.get(namespace).cloned().unwrap_or_else(|| {
            BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned())])
        })
    };

    // Identities of the pods that have an address: (namespace, labels) by number.
    let mut peers: BTreeMap<u32, (&str, &BTreeMap<String, String>)> = BTreeMap::new();
    for pod in input.pods {
        let Some(addr) = pod_addr(pod) else { continue };
        let meta = &pod.metadata;
        let id = ids.pod(&meta.namespace, &meta.labels);
        peers.insert(id, (meta.namespace.as_str(), &meta.labels));
        plan.ipcache.insert((addr, 32), id);
    }
    for addr in input.host_addrs {
        plan.ipcache.insert((*addr, 32), IDENTITY_HOST);
    }
    // Every range an ipBlock names, exceptions included, so an excepted address finds
    // its exception as its longest match.
    let blocks = input
        .policies
        .iter()
        .flat_map(|p| &p.spec.ingress)
        .flat_map(|rule| &rule.from)
        .filter_map(|peer| peer.ip_block.as_ref());
    for block in blocks {
        for text in std::iter::once(&block.cidr).chain(&block.except) {
            if let Some(cidr) = parse_cidr(text) {
                let id = ids.cidr(cidr);
                plan.ipcache.entry(cidr).or_insert(id);
            }
        }
    }
    let ranges: Vec<(Cidr, u32)> = plan
        .ipcache
        .iter()
        .filter(|(_, id)| **id >= IDENTITY_FIRST_CIDR)
        .map(|(cidr, id)| (*cidr, *id))
        .collect();

    for pod in input.pods {
        if pod.spec.node_name != input.node_name {
            continue;
        }
        let Some(addr) = pod_addr(pod) else { continue };
        let meta = &pod.metadata;
        let selecting = input.policies.iter().filter(|p| {
            p.metadata.namespace == meta.namespace && selects(&p.spec.pod_selector, &meta.labels)
        });
        let mut flags = 0;
        let mut allowed = BTreeSet::new();
        for policy in selecting {
            if policy.isolates(EGRESS) {
                flags |= ENDPOINT_EGRESS_ISOLATED;
            }
            if !policy.isolates(INGRESS) {
                continue;
            }
            flags |= ENDPOINT_INGRESS_ISOLATED;
            for rule in &policy.spec.ingress {
                let identities: BTreeSet<u32> = if rule.from.is_empty() {
                    BTreeSet::from([IDENTITY_ANY])
                } else {
                    rule.from
                        .iter()
                        .flat_map(|peer| {
                            peer_identities(
                                peer,
                                &policy.metadata.namespace,
                                &peers,
                                &ranges,
                                &labels_of,
                            )
                        })
                        .collect()
                };
                let ports = if rule.ports.is_empty() {
                    vec![(0, 0, POLICY_PREFIX_ANY_PROTO)]
                } else {
                    rule.ports
                        .iter()
                        .flat_map(|p| port_entries(p, pod))
                        .collect()
                };
                for identity in &identities {
                    for (proto, port, prefix_len) in &ports {
                        allowed.insert(Allow {
                            identity: *identity,
                            proto: *proto,
                            port: *port,
                            prefix_len: *prefix_len,
                        });
                    }
                }
            }
        }
        if flags != 0 {
            plan.endpoints.insert(addr, flags);
        }
        if flags & ENDPOINT_INGRESS_ISOLATED != 0 {
            plan.ingress.insert(addr, allowed);
        }
    }
    let used: BTreeSet<u32> = plan.ipcache.values().copied().collect();
    ids.retain(&used);
    plan
}

/// The identities one peer of a rule selects: pods by their namespace and labels, or the
/// ranges inside an ipBlock and outside its exceptions.
fn peer_identities(
    peer: &NetworkPolicyPeer,
    policy_namespace: &str,
    pods: &BTreeMap<u32, (&str, &BTreeMap<String, String>)>,
    ranges: &[(Cidr, u32)],
    namespace_labels: &dyn Fn(&str) -> BTreeMap<String, String>,
) -> Vec<u32> {
    if let Some(block) = &peer.ip_block {
        let Some(outer) = parse_cidr(&block.cidr) else {
            return Vec::new();
        };
        let excepts: Vec<Cidr> = block.except.iter().filter_map(|e| parse_cidr(e)).collect();
        return ranges
            .iter()
            .filter(|(cidr, _)| {
                cidr_contains(outer, *cidr) && !excepts.iter().any(|e| cidr_contains(*e, *cidr))
            })
            .map(|(_, id)| *id)
            .collect();
    }
    pods.iter()
        .filter(|(_, (namespace, labels))| {
            let in_namespace = match &peer.namespace_selector {
                None => *namespace == policy_namespace,
                Some(selector) => selects(selector, &namespace_labels(namespace)),
            };
            in_namespace
                && peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|selector| selects(selector, labels))
        })
        .map(|(id, _)| *id)
        .collect()
}

/// (protocol, first port, prefix length) entries of one port of a rule, for `pod`: a
/// named port is the pod's container port of that name and protocol (none if it has
/// none); a range is split into aligned power-of-two blocks.
fn port_entries(port: &NetworkPolicyPort, pod: &Pod) -> Vec<(u8, u16, u32)> {
    let proto = match port.protocol() {
        "UDP" => IPPROTO_UDP,
        _ => IPPROTO_TCP,
    };
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n != 0);
    match &port.port {
        None => vec![(proto, 0, POLICY_PREFIX_ANY_PORT)],
        Some(IntOrString::String(name)) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter(|p| p.name == *name && p.protocol == port.protocol())
            .filter_map(|p| number(p.container_port))
            .map(|p| (proto, p, POLICY_PREFIX_FULL))
            .collect(),
        Some(IntOrString::Int(first)) => {
            let Some(first) = number(*first) else {
                return Vec::new();
            };
            let last = port.end_port.and_then(number).unwrap_or(first);
            port_blocks(first, last)
                .into_iter()
                .map(|(start, bits)| (proto, start, POLICY_PREFIX_ANY_PORT + bits))
                .collect()
        }
    }
}

/// `first..=last` as the fewest aligned blocks: (start, prefix bits of the port).
fn port_blocks(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut blocks = Vec::new();
    let (mut start, last) = (u32::from(first), u32::from(last));
    while start <= last {
        // The largest block aligned at `start` that ends by `last`.
        let mut size = if start == 0 {
            1 << 16
        } else {
            1 << start.trailing_zeros()
        };
        while start + size - 1 > last {
            size >>= 1;
        }
        blocks.push((start as u16, 16 - size.trailing_zeros()));
        start += size;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use berth_api::{Source, decode_typed};
    use berth_ebpf_common::IDENTITY_WORLD;

    use super::*;

    const NODE: &str = "n1";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A running pod with a container port `http` (8080/TCP); `labels` a YAML map.
    fn pod(namespace: &str, name: &str, ip: [u8; 4], node: &str, labels: &str) -> Pod {
        let ip = Ipv4Addr::from(ip);
        let yaml = format!(
            "metadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: echo, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}}}"
        );
        decode_typed(Source::Yaml(&yaml)).expect("a valid pod")
    }

    /// A policy read from its YAML, through the API's own decoding.
    fn policy(yaml: &str) -> NetworkPolicy {
        decode_typed(Source::Yaml(yaml)).expect("a valid policy")
    }

    fn namespace(name: &str, team: &str) -> Namespace {
        let yaml = format!("metadata: {{name: {name}, labels: {{team: {team}}}}}");
        decode_typed(Source::Yaml(&yaml)).expect("a valid namespace")
    }

    /// The cluster of the tests: namespace a (the server, on this node; a second server
    /// on another node) and b (a client labelled role=client and one that is not).
    struct Cluster {
        pods: Vec<Pod>,
        namespaces: Vec<Namespace>,
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
    const REMOTE_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 10);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 30);
    const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 40);
    const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn cluster() -> Cluster {
        Cluster {
            pods: vec![
                pod("a", "server", SERVER.octets(), NODE, "{app: server}"),
                pod("a", "remote", REMOTE_SERVER.octets(), "n2", "{app: server}"),
                pod(
                    "a",
                    "neighbour",
                    NEIGHBOUR.octets(),
                    NODE,
                    "{app: neighbour}",
                ),
                pod("b", "client", CLIENT.octets(), "n2", "{role: client}"),
                pod("b", "other", OTHER.octets(), NODE, "{role: other}"),
            ],
            namespaces: vec![namespace("a", "a"), namespace("b", "b")],
        }
    }

    fn compile_with(
        cluster: &Cluster,
        policies: &[NetworkPolicy],
        ids: &mut Identities,
    ) -> PolicyPlan {
        compile(
            &PolicyInput {
                node_name: NODE,
                host_addrs: &[HOST],
                pods: &cluster.pods,
                namespaces: &cluster.namespaces,
                policies,
            },
            ids,
        )
    }

    /// The verdict the datapath reaches for a TCP/UDP packet from `src` to `dst`'s
    /// `port`, read from the plan as the programs read the maps.
    fn verdict(plan: &PolicyPlan, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> bool {
        let Some(flags) = plan.endpoints.get(&dst) else {
            return true;
        };
        if flags & ENDPOINT_INGRESS_ISOLATED == 0 {
            return true;
        }
        let identity = plan
            .ipcache
            .iter()
            .filter(|((net, len), _)| cidr_contains((*net, *len), (src, 32)))
            .max_by_key(|((_, len), _)| *len)
            .map_or(IDENTITY_WORLD, |(_, id)| *id);
        if identity == IDENTITY_HOST {
            return true;
        }
        plan.ingress.get(&dst).into_iter().flatten().any(|allow| {
            allow.covers(identity, proto, port) || allow.covers(IDENTITY_ANY, proto, port)
        })
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n";

    #[test]
    fn pods_no_policy_selects_are_not_isolated() {
        let plan = compile_with(&cluster(), &[], &mut Identities::default());
        assert!(plan.endpoints.is_empty());
        assert!(verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        // Every pod of the cluster is in the ipcache; the node as the host.
        assert_eq!(plan.ipcache.len(), 6);
        assert_eq!(plan.ipcache[&(HOST, 32)], IDENTITY_HOST);
    }

    #[test]
    fn default_deny_isolates_every_selected_pod_of_this_node_only() {
        let deny = policy(&format!("{HEAD}  podSelector: {{}}\n"));
        let plan = compile_with(&cluster(), &[deny], &mut Identities::default());
        assert_eq!(
            plan.endpoints,
            BTreeMap::from([
                (SERVER, ENDPOINT_INGRESS_ISOLATED),
                (NEIGHBOUR, ENDPOINT_INGRESS_ISOLATED)
            ])
        );
        assert!(!verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        // The namespace's own pods too, but never the node itself.
        assert!(!verdict(&plan, NEIGHBOUR, SERVER, IPPROTO_TCP, 80));
        assert!(verdict(&plan, HOST, SERVER, IPPROTO_TCP, 80));
        // b's pods are not selected by a's policy.
        assert!(verdict(&plan, SERVER, OTHER, IPPROTO_TCP, 80));
    }

    #[test]
    fn isolation_is_per_direction() {
        let egress_only = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  policyTypes: [Egress]\n  ingress:\n  - ports: [{{port: 1}}]\n"
        ));
        let plan = compile_with(&cluster(), &[egress_only], &mut Identities::default());
        assert_eq!(plan.endpoints[&SERVER], ENDPOINT_EGRESS_ISOLATED);
        // Ingress rules of a policy that does not isolate ingress are ignored.
        assert!(plan.ingress.is_empty());
        assert!(verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
    }

    #[test]
    fn both_selectors_together_select_pods_of_selected_namespaces() {
        let both = policy(&format!(
            "{HEAD}  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: b}}}}\n      podSelector: {{matchLabels: {{role: client}}}}\n    ports: [{{port: 80}}]\n"
        ));
        let plan = compile_with(&cluster(), &[both], &mut Identities::default());
        assert!(verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        assert!(
            !verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 81),
            "that port only"
        );
        assert!(
            !verdict(&plan, CLIENT, SERVER, IPPROTO_UDP, 80),
            "TCP by default"
        );
        assert!(
            !verdict(&plan, OTHER, SERVER, IPPROTO_TCP, 80),
            "not role=client"
        );
        // The neighbour is not selected by this policy: not isolated.
        assert!(verdict(&plan, OTHER, NEIGHBOUR, IPPROTO_TCP, 80));
    }

    #[test]
    fn selectors_alone_mean_this_namespace_or_every_pod_of_the_namespaces() {
        let pods_here = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - from: [{{podSelector: {{}}}}]\n"
        ));
        let plan = compile_with(&cluster(), &[pods_here], &mut Identities::default());
        assert!(verdict(&plan, NEIGHBOUR, SERVER, IPPROTO_TCP, 80));
        assert!(!verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        let by_name = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: b}}}}}}]\n"
        ));
        let plan = compile_with(&cluster(), &[by_name], &mut Identities::default());
        assert!(verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        assert!(verdict(&plan, OTHER, SERVER, IPPROTO_UDP, 53));
        assert!(!verdict(&plan, NEIGHBOUR, SERVER, IPPROTO_TCP, 80));
    }

    #[test]
    fn rules_and_policies_add_up() {
        let web = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{team: b}}}}, podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: [{{port: 80}}]\n"
        ));
        let mut dns = policy(&format!(
            "{HEAD}  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - ports: [{{protocol: UDP, port: 53}}]\n"
        ));
        dns.metadata.name = "dns".to_owned();
        let plan = compile_with(&cluster(), &[web, dns], &mut Identities::default());
        assert!(verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        assert!(
            verdict(&plan, OTHER, SERVER, IPPROTO_UDP, 53),
            "every source on 53"
        );
        assert!(!verdict(&plan, OTHER, SERVER, IPPROTO_TCP, 80));
        assert!(
            !verdict(&plan, OTHER, NEIGHBOUR, IPPROTO_UDP, 53),
            "dns selects the server only"
        );
    }

    #[test]
    fn ip_blocks_leave_their_exceptions_out() {
        let block = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 198.19.0.0/16, except: [198.19.5.0/24]}}}}]\n"
        ));
        let plan = compile_with(&cluster(), &[block], &mut Identities::default());
        let at = |last: [u8; 2]| Ipv4Addr::new(198, 19, last[0], last[1]);
        assert!(verdict(&plan, at([7, 1]), SERVER, IPPROTO_TCP, 80));
        assert!(!verdict(&plan, at([5, 9]), SERVER, IPPROTO_TCP, 80));
        assert!(!verdict(
            &plan,
            Ipv4Addr::new(203, 0, 113, 1),
            SERVER,
            IPPROTO_TCP,
            80
        ));
        // A wider block elsewhere takes in the narrower ranges it covers.
        let mut wide = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 198.16.0.0/12}}}}]\n    ports: [{{port: 22}}]\n"
        ));
        wide.metadata.name = "wide".to_owned();
        let plan = compile_with(
            &cluster(),
            &[
                policy(&format!(
                    "{HEAD}  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 198.19.0.0/16, except: [198.19.5.0/24]}}}}]\n"
                )),
                wide,
            ],
            &mut Identities::default(),
        );
        assert!(verdict(&plan, at([5, 9]), SERVER, IPPROTO_TCP, 22));
        assert!(!verdict(&plan, at([5, 9]), SERVER, IPPROTO_TCP, 80));
    }

    #[test]
    fn named_ports_and_ranges() {
        let named = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - ports: [{{port: http}}, {{protocol: UDP, port: 1000, endPort: 1029}}]\n"
        ));
        let plan = compile_with(&cluster(), &[named], &mut Identities::default());
        assert!(
            verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 8080),
            "http is 8080/TCP"
        );
        assert!(!verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        for port in [1000, 1015, 1024, 1029] {
            assert!(verdict(&plan, CLIENT, SERVER, IPPROTO_UDP, port), "{port}");
        }
        for port in [999, 1030, 1032] {
            assert!(!verdict(&plan, CLIENT, SERVER, IPPROTO_UDP, port), "{port}");
        }
    }

    #[test]
    fn port_ranges_split_into_aligned_blocks() {
        assert_eq!(port_blocks(80, 80), [(80, 16)]);
        assert_eq!(
            port_blocks(1000, 1029),
            [(1000, 13), (1008, 12), (1024, 14), (1028, 15)]
        );
        assert_eq!(port_blocks(1, 65535).len(), 16);
        for (first, last) in [(1, 65535), (8000, 9000), (32768, 65535), (65535, 65535)] {
            let blocks = port_blocks(first, last);
            let count: u32 = blocks.iter().map(|(_, bits)| 1 << (16 - bits)).sum();
            assert_eq!(count, u32::from(last - first) + 1, "{first}-{last}");
        }
    }

    #[test]
    fn compiling_again_gives_the_same_plan_and_relabelling_a_new_identity() {
        let deny = policy(&format!("{HEAD}  podSelector: {{}}\n"));
        let mut ids = Identities::default();
        let mut cluster = cluster();
        let first = compile_with(&cluster, std::slice::from_ref(&deny), &mut ids);
        assert_eq!(
            compile_with(&cluster, std::slice::from_ref(&deny), &mut ids),
            first
        );
        let before = first.ipcache[&(CLIENT, 32)];
        cluster.pods[3].metadata.labels = labels(&[("role", "admin")]);
        let relabelled = compile_with(&cluster, &[deny], &mut ids);
        let after = relabelled.ipcache[&(CLIENT, 32)];
        assert_ne!(after, before);
        assert!(
            !relabelled.ipcache.values().any(|id| *id == before),
            "released"
        );
        // Never handed out again, even for the old labels.
        cluster.pods[3].metadata.labels = labels(&[("role", "client")]);
        let back = compile_with(&cluster, &[], &mut ids);
        assert!(back.ipcache[&(CLIENT, 32)] > after);
    }

    #[test]
    fn rules_without_peers_or_ports_allow_everything_they_do_not_restrict() {
        let any = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  ingress:\n  - {{}}\n"
        ));
        let plan = compile_with(&cluster(), &[any], &mut Identities::default());
        assert_eq!(
            plan.ingress[&SERVER],
            BTreeSet::from([Allow {
                identity: IDENTITY_ANY,
                proto: 0,
                port: 0,
                prefix_len: POLICY_PREFIX_ANY_PROTO
            }])
        );
        assert!(verdict(
            &plan,
            Ipv4Addr::new(203, 0, 113, 1),
            SERVER,
            IPPROTO_UDP,
            9
        ));
    }
}
