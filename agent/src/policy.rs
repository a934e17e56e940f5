//! NetworkPolicies compiled for one node's datapath (Cilium's model): every set of pods
//! with the same namespace and labels gets a numeric identity, every pod address maps to
//! its identity (the ipcache), and each pod of this node that a policy isolates gets the
//! (identity, protocol, port range) entries its policies allow, per direction: the
//! peers it may be reached from (ingress) and the peers it may reach (egress).
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
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, defaults,
};

/// The label Kubernetes gives every namespace, so `namespaceSelector` can name one.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// An address range: network address and prefix length.
pub type Cidr = (Ipv4Addr, u8);

/// What one isolated pod allows in a direction: each entry with the id of the policy
/// whose rule allows it (the smallest, when several do).
pub type Allows = BTreeMap<Allow, u32>;

/// What the datapath holds for the policies: see the module's comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    /// Address range → identity: pods as /32s, and the ranges the policies' ipBlocks
    /// name (a pod's /32 wins over a range of the same address).
    pub ipcache: BTreeMap<Cidr, u32>,
    /// Each isolated pod of this node (by address) → how it is isolated.
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// What each pod isolated for ingress lets in (peer: the source).
    pub ingress: BTreeMap<Ipv4Addr, Allows>,
    /// What each pod isolated for egress lets out (peer: the destination).
    pub egress: BTreeMap<Ipv4Addr, Allows>,
    /// Policy id → (namespace, name), for the verdict counters and the drop log.
    pub policies: BTreeMap<u32, (String, String)>,
}

/// How one pod of this node is isolated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `ENDPOINT_*_ISOLATED` bits.
    pub flags: u32,
    /// The policy its denied packets are counted under, per direction: the first (by
    /// namespace and name) that isolates it there; 0 when none does.
    pub ingress_policy: u32,
    pub egress_policy: u32,
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
/// labels do; and the policies' ids of the verdict counters.
#[derive(Debug, Default)]
pub struct Identities {
    pods: BTreeMap<(String, BTreeMap<String, String>), u32>,
    cidrs: BTreeMap<Cidr, u32>,
    next_pod: u32,
    next_cidr: u32,
    policies: BTreeMap<(String, String), u32>,
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

    /// The policy's counter id: kept while the policy exists; a deleted policy's id goes
    /// to the next new policy (the map writer zeroes its counters first). 0 (not
    /// counted) once every id of the counter map is taken.
    fn policy(&mut self, namespace: &str, name: &str) -> u32 {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(id) = self.policies.get(&key) {
            return *id;
        }
        let taken: BTreeSet<u32> = self.policies.values().copied().collect();
        let Some(id) = (1..defaults::MAX_POLICIES).find(|id| !taken.contains(id)) else {
            return 0;
        };
        self.policies.insert(key, id);
        id
    }

    /// Forgets the numbers no pod or range uses any more (they are not given out again),
    /// and the ids of policies that are gone.
    fn retain(&mut self, used: &BTreeSet<u32>, policies: &BTreeMap<u32, (String, String)>) {
        self.pods.retain(|_, id| used.contains(id));
        self.cidrs.retain(|_, id| used.contains(id));
        self.policies.retain(|_, id| policies.contains_key(id));
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

/// One rule of either direction, as the compilation reads it.
struct Rule<'a> {
    peers: &'a [NetworkPolicyPeer],
    ports: &'a [NetworkPolicyPort],
}

/// The pods of the cluster with an address, by identity: (namespace, labels, the pods).
type PeerPods<'a> = BTreeMap<u32, (&'a str, &'a BTreeMap<String, String>, Vec<&'a Pod>)>;

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

    // Identities of the pods that have an address: (namespace, labels, pods) by number.
    let mut peers: PeerPods<'_> = BTreeMap::new();
    for pod in input.pods {
        let Some(addr) = pod_addr(pod) else { continue };
        let meta = &pod.metadata;
        let id = ids.pod(&meta.namespace, &meta.labels);
        peers
            .entry(id)
            .or_insert_with(|| (meta.namespace.as_str(), &meta.labels, Vec::new()))
            .2
            .push(pod);
        plan.ipcache.insert((addr, 32), id);
    }
    for addr in input.host_addrs {
        plan.ipcache.insert((*addr, 32), IDENTITY_HOST);
    }
    // Every range an ipBlock names (sources and destinations), exceptions included, so
    // an excepted address finds its exception as its longest match.
    let blocks = input
        .policies
        .iter()
        .flat_map(|p| {
            let from = p.spec.ingress.iter().flat_map(|rule| &rule.from);
            from.chain(p.spec.egress.iter().flat_map(|rule| &rule.to))
        })
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
    // Sorted by namespace and name: the first isolating policy is the same on every node.
    let mut policies: Vec<&NetworkPolicy> = input.policies.iter().collect();
    policies.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let context = Context {
        peers: &peers,
        ranges: &ranges,
        namespace_labels: &labels_of,
    };

    for pod in input.pods {
        if pod.spec.node_name != input.node_name {
            continue;
        }
        let Some(addr) = pod_addr(pod) else { continue };
        let meta = &pod.metadata;
        let selecting = policies.iter().filter(|p| {
            p.metadata.namespace == meta.namespace && selects(&p.spec.pod_selector, &meta.labels)
        });
        let mut endpoint = Endpoint::default();
        let (mut ingress, mut egress) = (Allows::new(), Allows::new());
        for policy in selecting {
            let meta = &policy.metadata;
            let id = ids.policy(&meta.namespace, &meta.name);
            plan.policies
                .insert(id, (meta.namespace.clone(), meta.name.clone()));
            if policy.isolates(INGRESS) {
                if endpoint.flags & ENDPOINT_INGRESS_ISOLATED == 0 {
                    endpoint.ingress_policy = id;
                }
                endpoint.flags |= ENDPOINT_INGRESS_ISOLATED;
                for rule in &policy.spec.ingress {
                    let rule = Rule {
                        peers: &rule.from,
                        ports: &rule.ports,
                    };
                    context.add(&mut ingress, &rule, policy, id, Peer::Source(pod));
                }
            }
            if policy.isolates(EGRESS) {
                if endpoint.flags & ENDPOINT_EGRESS_ISOLATED == 0 {
                    endpoint.egress_policy = id;
                }
                endpoint.flags |= ENDPOINT_EGRESS_ISOLATED;
                for rule in &policy.spec.egress {
                    let rule = Rule {
                        peers: &rule.to,
                        ports: &rule.ports,
                    };
                    context.add(&mut egress, &rule, policy, id, Peer::Destination);
                }
            }
        }
        if endpoint.flags != 0 {
            plan.endpoints.insert(addr, endpoint);
        }
        if endpoint.flags & ENDPOINT_INGRESS_ISOLATED != 0 {
            plan.ingress.insert(addr, ingress);
        }
        if endpoint.flags & ENDPOINT_EGRESS_ISOLATED != 0 {
            plan.egress.insert(addr, egress);
        }
    }
    plan.policies.remove(&0);
    let used: BTreeSet<u32> = plan.ipcache.values().copied().collect();
    ids.retain(&used, &plan.policies);
    plan
}

/// Whose ports a rule's named ports are: the isolated pod's own (ingress: the port it
/// is reached on), or each destination pod's (egress).
#[derive(Clone, Copy)]
enum Peer<'a> {
    Source(&'a Pod),
    Destination,
}

/// What the rules of every policy are compiled against.
struct Context<'a> {
    peers: &'a PeerPods<'a>,
    ranges: &'a [(Cidr, u32)],
    namespace_labels: &'a dyn Fn(&str) -> BTreeMap<String, String>,
}

impl Context<'_> {
    /// Adds one rule's entries to `allows`, under policy `id`.
    fn add(
        &self,
        allows: &mut Allows,
        rule: &Rule<'_>,
        policy: &NetworkPolicy,
        id: u32,
        peer: Peer<'_>,
    ) {
        let identities: BTreeSet<u32> = if rule.peers.is_empty() {
            BTreeSet::from([IDENTITY_ANY])
        } else {
            rule.peers
                .iter()
                .flat_map(|p| self.peer_identities(p, &policy.metadata.namespace))
                .collect()
        };
        let mut add = |identity: u32, (proto, port, prefix_len): (u8, u16, u32)| {
            let allow = Allow {
                identity,
                proto,
                port,
                prefix_len,
            };
            let entry = allows.entry(allow).or_insert(id);
            *entry = (*entry).min(id);
        };
        if rule.ports.is_empty() {
            for identity in &identities {
                add(*identity, (0, 0, POLICY_PREFIX_ANY_PROTO));
            }
            return;
        }
        for port in rule.ports {
            // A destination's named port is each destination pod's own number: the
            // entries go to the identities of the pods that have it.
            if let (Peer::Destination, Some(IntOrString::String(name))) = (peer, &port.port) {
                for (identity, (_, _, pods)) in self.peers {
                    if !identities.contains(identity) && !identities.contains(&IDENTITY_ANY) {
                        continue;
                    }
                    for entry in pods.iter().flat_map(|pod| named_port(port, name, pod)) {
                        add(*identity, entry);
                    }
                }
                continue;
            }
            let own = match peer {
                Peer::Source(pod) => Some(pod),
                Peer::Destination => None,
            };
            for entry in port_entries(port, own) {
                for identity in &identities {
                    add(*identity, entry);
                }
            }
        }
    }

    /// The identities one peer of a rule selects: pods by their namespace and labels, or
    /// the ranges inside an ipBlock and outside its exceptions.
    fn peer_identities(&self, peer: &NetworkPolicyPeer, policy_namespace: &str) -> Vec<u32> {
        if let Some(block) = &peer.ip_block {
            let Some(outer) = parse_cidr(&block.cidr) else {
                return Vec::new();
            };
            let excepts: Vec<Cidr> = block.except.iter().filter_map(|e| parse_cidr(e)).collect();
            return self
                .ranges
                .iter()
                .filter(|(cidr, _)| {
                    cidr_contains(outer, *cidr) && !excepts.iter().any(|e| cidr_contains(*e, *cidr))
                })
                .map(|(_, id)| *id)
                .collect();
        }
        self.peers
            .iter()
            .filter(|(_, (namespace, labels, _))| {
                let in_namespace = match &peer.namespace_selector {
                    None => *namespace == policy_namespace,
                    Some(selector) => selects(selector, &(self.namespace_labels)(namespace)),
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
}

fn protocol_number(port: &NetworkPolicyPort) -> u8 {
    match port.protocol() {
        "UDP" => IPPROTO_UDP,
        _ => IPPROTO_TCP,
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|n| *n != 0)
}

/// The entries of a named port of a rule on `pod`: its container ports of that name and
/// protocol (none if it has none).
fn named_port(port: &NetworkPolicyPort, name: &str, pod: &Pod) -> Vec<(u8, u16, u32)> {
    let proto = protocol_number(port);
    pod.spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|p| p.name == name && p.protocol == port.protocol())
        .filter_map(|p| port_number(p.container_port))
        .map(|p| (proto, p, POLICY_PREFIX_FULL))
        .collect()
}

/// (protocol, first port, prefix length) entries of one port of a rule: a named port is
/// `pod`'s (the isolated pod's own, for ingress); a range is split into aligned
/// power-of-two blocks.
fn port_entries(port: &NetworkPolicyPort, pod: Option<&Pod>) -> Vec<(u8, u16, u32)> {
    let proto = protocol_number(port);
    match &port.port {
        None => vec![(proto, 0, POLICY_PREFIX_ANY_PORT)],
        Some(IntOrString::String(name)) => {
            pod.map_or_else(Vec::new, |pod| named_port(port, name, pod))
        }
        Some(IntOrString::Int(first)) => {
            let Some(first) = port_number(*first) else {
                return Vec::new();
            };
            let last = port.end_port.and_then(port_number).unwrap_or(first);
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

    /// The verdict the datapath reaches for a new TCP/UDP flow from `src` to `dst`'s
    /// `port`, read from the plan as the programs read the maps: `dst`'s ingress and
    /// `src`'s egress.
    fn verdict(plan: &PolicyPlan, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> bool {
        let identity = |addr: Ipv4Addr| {
            plan.ipcache
                .iter()
                .filter(|((net, len), _)| cidr_contains((*net, *len), (addr, 32)))
                .max_by_key(|((_, len), _)| *len)
                .map_or(IDENTITY_WORLD, |(_, id)| *id)
        };
        let lets =
            |isolated: u32, pod: Ipv4Addr, peer: Ipv4Addr, allows: &BTreeMap<Ipv4Addr, Allows>| {
                let flags = plan.endpoints.get(&pod).map_or(0, |e| e.flags);
                if flags & isolated == 0 {
                    return true;
                }
                let peer = identity(peer);
                peer == IDENTITY_HOST
                    || allows
                        .get(&pod)
                        .into_iter()
                        .flat_map(|a| a.keys())
                        .any(|allow| {
                            allow.covers(peer, proto, port)
                                || allow.covers(IDENTITY_ANY, proto, port)
                        })
            };
        lets(ENDPOINT_EGRESS_ISOLATED, src, dst, &plan.egress)
            && lets(ENDPOINT_INGRESS_ISOLATED, dst, src, &plan.ingress)
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
        let flags: BTreeMap<Ipv4Addr, u32> =
            plan.endpoints.iter().map(|(a, e)| (*a, e.flags)).collect();
        assert_eq!(
            flags,
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
        assert_eq!(plan.endpoints[&SERVER].flags, ENDPOINT_EGRESS_ISOLATED);
        // Ingress rules of a policy that does not isolate ingress are ignored.
        assert!(plan.ingress.is_empty());
        assert!(verdict(&plan, CLIENT, SERVER, IPPROTO_TCP, 80));
        // No egress rule: the server reaches nothing but the node.
        assert!(!verdict(&plan, SERVER, CLIENT, IPPROTO_TCP, 80));
        assert!(verdict(&plan, SERVER, HOST, IPPROTO_TCP, 10250));
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
        let id = plan.endpoints[&SERVER].ingress_policy;
        assert_eq!(plan.policies[&id], ("a".to_owned(), "p".to_owned()));
        assert_eq!(
            plan.ingress[&SERVER],
            BTreeMap::from([(
                Allow {
                    identity: IDENTITY_ANY,
                    proto: 0,
                    port: 0,
                    prefix_len: POLICY_PREFIX_ANY_PROTO
                },
                id
            )])
        );
        assert!(verdict(
            &plan,
            Ipv4Addr::new(203, 0, 113, 1),
            SERVER,
            IPPROTO_UDP,
            9
        ));
    }

    #[test]
    fn egress_rules_allow_what_the_pod_may_reach() {
        let egress = policy(&format!(
            "{HEAD}  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {{matchLabels: {{team: b}}}}\n      podSelector: {{matchLabels: {{role: client}}}}\n    ports: [{{port: http}}]\n  - to: [{{ipBlock: {{cidr: 198.19.0.0/16, except: [198.19.5.0/24]}}}}]\n    ports: [{{protocol: UDP, port: 5000, endPort: 5003}}]\n"
        ));
        let plan = compile_with(&cluster(), &[egress], &mut Identities::default());
        assert_eq!(plan.endpoints[&SERVER].flags, ENDPOINT_EGRESS_ISOLATED);
        assert!(!plan.endpoints.contains_key(&NEIGHBOUR), "not selected");
        // The named port is the destination pod's: the client's http is 8080/TCP.
        assert!(verdict(&plan, SERVER, CLIENT, IPPROTO_TCP, 8080));
        assert!(!verdict(&plan, SERVER, CLIENT, IPPROTO_TCP, 80));
        assert!(
            !verdict(&plan, SERVER, OTHER, IPPROTO_TCP, 8080),
            "not role=client"
        );
        // Egress ipBlocks are in the ipcache, their exceptions too.
        let at = |last: [u8; 2]| Ipv4Addr::new(198, 19, last[0], last[1]);
        assert!(plan.ipcache.contains_key(&(at([0, 0]), 16)));
        for port in [5000, 5003] {
            assert!(verdict(&plan, SERVER, at([7, 1]), IPPROTO_UDP, port));
        }
        assert!(!verdict(&plan, SERVER, at([7, 1]), IPPROTO_UDP, 5004));
        assert!(!verdict(&plan, SERVER, at([5, 9]), IPPROTO_UDP, 5000));
        let elsewhere = Ipv4Addr::new(203, 0, 113, 1);
        assert!(!verdict(&plan, SERVER, elsewhere, IPPROTO_UDP, 5000));
        // Ingress is not isolated by an egress-only policy.
        assert!(verdict(&plan, OTHER, SERVER, IPPROTO_TCP, 80));
    }

    #[test]
    fn egress_named_ports_follow_each_destination_and_any_peer_means_every_pod() {
        let mut cluster = cluster();
        // The remote server names its http port 9000.
        let yaml = "metadata: {name: remote2, namespace: a, labels: {app: api}}\nspec: {nodeName: n2, containers: [{name: c, image: echo, ports: [{name: http, containerPort: 9000}]}]}\nstatus: {phase: Running, podIP: 10.0.2.50}";
        cluster
            .pods
            .push(decode_typed(Source::Yaml(yaml)).expect("a valid pod"));
        let api = Ipv4Addr::new(10, 0, 2, 50);
        let egress = policy(&format!(
            "{HEAD}  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{{port: http}}]\n"
        ));
        let plan = compile_with(&cluster, &[egress], &mut Identities::default());
        assert!(verdict(&plan, SERVER, api, IPPROTO_TCP, 9000));
        assert!(
            !verdict(&plan, SERVER, api, IPPROTO_TCP, 8080),
            "api's http is 9000"
        );
        assert!(verdict(&plan, SERVER, CLIENT, IPPROTO_TCP, 8080));
        assert!(!verdict(&plan, SERVER, CLIENT, IPPROTO_TCP, 9000));
    }

    #[test]
    fn policies_get_counter_ids_and_drops_count_under_the_first_isolating_one() {
        let deny = policy(&format!(
            "{HEAD}  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n"
        ));
        let mut web = policy(&format!(
            "{HEAD}  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - ports: [{{port: 80}}]\n"
        ));
        web.metadata.name = "web".to_owned();
        let mut ids = Identities::default();
        let plan = compile_with(&cluster(), &[web.clone(), deny.clone()], &mut ids);
        let names: BTreeSet<&str> = plan.policies.values().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["p", "web"]));
        let server = plan.endpoints[&SERVER];
        assert_eq!(
            plan.policies[&server.ingress_policy].1, "p",
            "p sorts before web"
        );
        assert_eq!(plan.policies[&server.egress_policy].1, "p");
        let web_id = *plan.ingress[&SERVER].values().next().expect("web's entry");
        assert_eq!(plan.policies[&web_id].1, "web");
        // A deleted policy's id goes to the next new one.
        let plan = compile_with(&cluster(), std::slice::from_ref(&deny), &mut ids);
        assert_eq!(plan.policies.len(), 1);
        let mut other = web;
        other.metadata.name = "other".to_owned();
        let plan = compile_with(&cluster(), &[deny, other], &mut ids);
        assert_eq!(plan.policies[&web_id].1, "other");
    }
}
