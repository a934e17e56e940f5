//! Network isolation between pods (`apiVersion: networking.k8s.io/v1`): the
//! NetworkPolicy, with Kubernetes' fields and semantics. The agents compile policies into
//! the datapath's identity and policy maps (`berth-agent`'s `policy` module).

use std::{collections::BTreeMap, net::Ipv4Addr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    core::IntOrString,
    meta::{LabelSelector, ObjectMeta},
    validation::{FieldPath, Validator},
};

pub const GROUP: &str = "networking.k8s.io";

pub const INGRESS: &str = "Ingress";
pub const EGRESS: &str = "Egress";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; empty (`{}`) selects them all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress` or both: the directions in which the selected pods are
    /// isolated. Unset: Ingress, and Egress too when `egress` has rules (Kubernetes'
    /// default, filled in when the policy is stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    /// Traffic allowed into the selected pods; each rule allows what its peers and ports
    /// both match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Traffic allowed out of the selected pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    /// Empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    /// Empty: every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyEgressRule {
    /// Empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    /// Empty: every destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
}

/// One set of peers: pods (of the policy's namespace, or of the namespaces
/// `namespaceSelector` selects when both are given), or an address range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    /// An IPv4 range, `10.0.0.0/8`.
    pub cidr: String,
    /// Ranges inside `cidr` that are not part of the block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `TCP` (default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number, or the name of a container port of the pod the traffic is for. Unset:
    /// every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// With a numeric `port`: the range `port..=endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

impl NetworkPolicyPort {
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

/// An IPv4 range as (network address, prefix length), the address masked to the prefix.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|len| *len <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(addr) & mask), len))
}

/// Whether range `inner` lies within range `outer`.
pub fn cidr_contains(
    (outer, outer_len): (Ipv4Addr, u8),
    (inner, inner_len): (Ipv4Addr, u8),
) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(outer_len)).unwrap_or(0);
    inner_len >= outer_len && u32::from(inner) & mask == u32::from(outer)
}

/// A NetworkPolicy selector: empty selects everything (unlike a workload's selector).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.is_empty() || selector.matches(labels)
}

impl NetworkPolicy {
    /// The directions the policy isolates its pods in, with Kubernetes' default for an
    /// unset `policyTypes`.
    pub fn policy_types(&self) -> Vec<String> {
        if !self.spec.policy_types.is_empty() {
            return self.spec.policy_types.clone();
        }
        let mut types = vec![INGRESS.to_owned()];
        if !self.spec.egress.is_empty() {
            types.push(EGRESS.to_owned());
        }
        types
    }

    pub fn isolates(&self, direction: &str) -> bool {
        self.policy_types().iter().any(|t| t == direction)
    }

    /// Fills `policyTypes` as Kubernetes stores it.
    pub fn default_policy_types(&mut self) {
        self.spec.policy_types = self.policy_types();
    }

    pub(crate) fn validate(&self, v: &mut Validator) {
        let spec = &self.spec;
        let path = FieldPath::root("spec");
        validate_selector(v, &path.child("podSelector"), &spec.pod_selector);
        let types = path.child("policyTypes");
        for (i, t) in spec.policy_types.iter().enumerate() {
            v.one_of(&types.index(i), t, &[INGRESS, EGRESS]);
            if spec.policy_types[..i].contains(t) {
                v.error(&types.index(i), &format!("duplicate policy type {t:?}"));
            }
        }
        for (i, rule) in spec.ingress.iter().enumerate() {
            let p = path.child("ingress").index(i);
            validate_ports(v, &p.child("ports"), &rule.ports);
            validate_peers(v, &p.child("from"), &rule.from);
        }
        for (i, rule) in spec.egress.iter().enumerate() {
            let p = path.child("egress").index(i);
            validate_ports(v, &p.child("ports"), &rule.ports);
            validate_peers(v, &p.child("to"), &rule.to);
        }
    }
}

/// An empty selector is valid here (it selects everything): only its parts are checked.
fn validate_selector(v: &mut Validator, path: &FieldPath, selector: &LabelSelector) {
    if !selector.is_empty() {
        selector.validate(v, path);
    }
}

fn validate_ports(v: &mut Validator, path: &FieldPath, ports: &[NetworkPolicyPort]) {
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        if let Some(protocol) = &port.protocol {
            v.protocol(&p.child("protocol"), protocol);
        }
        match (&port.port, port.end_port) {
            (Some(IntOrString::Int(number)), end) => {
                v.port(&p.child("port"), *number);
                if let Some(end) = end {
                    v.port(&p.child("endPort"), end);
                    if end < *number {
                        v.error(
                            &p.child("endPort"),
                            &format!("must be greater than or equal to port ({number})"),
                        );
                    }
                }
            }
            (Some(IntOrString::String(name)), end) => {
                if name.len() > 15 {
                    v.error(
                        &p.child("port"),
                        "a port name must be at most 15 characters",
                    );
                }
                v.dns_label(&p.child("port"), name);
                if end.is_some() {
                    v.error(&p.child("endPort"), "may not be set with a named port");
                }
            }
            (None, Some(_)) => v.error(&p.child("endPort"), "may not be set without port"),
            (None, None) => {}
        }
    }
}

fn validate_peers(v: &mut Validator, path: &FieldPath, peers: &[NetworkPolicyPeer]) {
    for (i, peer) in peers.iter().enumerate() {
        let p = path.index(i);
        let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, selectors) {
            (None, false) => v.error(
                &p,
                "must set podSelector, namespaceSelector (or both), or ipBlock",
            ),
            (Some(_), true) => v.error(
                &p.child("ipBlock"),
                "may not be combined with podSelector or namespaceSelector",
            ),
            _ => {}
        }
        if let Some(selector) = &peer.pod_selector {
            validate_selector(v, &p.child("podSelector"), selector);
        }
        if let Some(selector) = &peer.namespace_selector {
            validate_selector(v, &p.child("namespaceSelector"), selector);
        }
        if let Some(block) = &peer.ip_block {
            validate_ip_block(v, &p.child("ipBlock"), block);
        }
    }
}

fn validate_ip_block(v: &mut Validator, path: &FieldPath, block: &IpBlock) {
    let Some(range) = parse_cidr(&block.cidr) else {
        v.ipv4_cidr(&path.child("cidr"), &block.cidr);
        return;
    };
    for (i, except) in block.except.iter().enumerate() {
        let p = path.child("except").index(i);
        match parse_cidr(except) {
            None => v.ipv4_cidr(&p, except),
            Some(inner) if !cidr_contains(range, inner) || inner.1 == range.1 => v.error(
                &p,
                &format!("{except:?} must be a strict subset of {:?}", block.cidr),
            ),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Source, find_by_kind};

    /// What decoding `yaml` as a policy reports; empty when it is valid.
    fn errors(yaml: &str) -> String {
        let rt = find_by_kind("networking.k8s.io/v1", "NetworkPolicy").expect("served");
        rt.decode(Source::Yaml(yaml))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n";

    #[test]
    fn a_full_policy_is_valid() {
        let yaml = format!(
            "{HEAD}  podSelector: {{matchLabels: {{app: db}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: b}}}}\n      podSelector: {{matchLabels: {{role: client}}}}\n    - ipBlock: {{cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}\n    ports:\n    - {{protocol: TCP, port: 80}}\n    - {{port: 8000, endPort: 8080}}\n    - {{protocol: UDP, port: dns}}\n  egress:\n  - to: [{{podSelector: {{}}}}]\n"
        );
        assert_eq!(errors(&yaml), "");
    }

    #[test]
    fn bad_fields_are_named_by_path() {
        let cases = [
            (
                "  policyTypes: [Sideways]\n",
                "spec.policyTypes[0]: unsupported value \"Sideways\"",
            ),
            (
                "  ingress:\n  - from: [{}]\n",
                "spec.ingress[0].from[0]: must set podSelector",
            ),
            (
                "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
                "spec.ingress[0].from[0].ipBlock: may not be combined",
            ),
            (
                "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n",
                "spec.egress[0].to[0].ipBlock.except[0]: \"11.0.0.0/16\" must be a strict subset",
            ),
            (
                "  egress:\n  - to: [{ipBlock: {cidr: 10.0.0/8}}]\n",
                "spec.egress[0].to[0].ipBlock.cidr: \"10.0.0/8\" is not an IPv4 CIDR",
            ),
            (
                "  ingress:\n  - ports: [{port: 90, endPort: 80}]\n",
                "spec.ingress[0].ports[0].endPort: must be greater than or equal to port (90)",
            ),
            (
                "  ingress:\n  - ports: [{port: http, endPort: 80}]\n",
                "spec.ingress[0].ports[0].endPort: may not be set with a named port",
            ),
            (
                "  ingress:\n  - ports: [{protocol: SCTP, port: 80}]\n",
                "spec.ingress[0].ports[0].protocol: unsupported protocol \"SCTP\"",
            ),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: Near}]}\n",
                "spec.podSelector.matchExpressions[0].operator: unknown operator",
            ),
        ];
        for (body, wanted) in cases {
            let got = errors(&format!("{HEAD}{body}"));
            assert!(got.contains(wanted), "{body}: wanted {wanted:?} in {got:?}");
        }
    }

    #[test]
    fn policy_types_default_as_in_kubernetes() {
        let mut policy = NetworkPolicy::default();
        assert_eq!(policy.policy_types(), [INGRESS]);
        policy.spec.egress.push(NetworkPolicyEgressRule::default());
        policy.default_policy_types();
        assert_eq!(policy.spec.policy_types, [INGRESS, EGRESS]);
        policy.spec.policy_types = vec![EGRESS.to_owned()];
        assert!(!policy.isolates(INGRESS));
    }

    #[test]
    fn cidrs_are_masked_and_compared() {
        let outer = parse_cidr("10.1.2.3/8").expect("valid");
        assert_eq!(outer, (Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(cidr_contains(
            outer,
            parse_cidr("10.9.0.0/16").expect("valid")
        ));
        assert!(!cidr_contains(
            outer,
            parse_cidr("11.0.0.0/16").expect("valid")
        ));
        assert!(!cidr_contains(
            outer,
            parse_cidr("0.0.0.0/0").expect("valid")
        ));
        assert_eq!(parse_cidr("0.0.0.0/0"), Some((Ipv4Addr::UNSPECIFIED, 0)));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
