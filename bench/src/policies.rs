//! The NetworkPolicies of the policy bed: 1,000 policies, compiled by the agent's own
//! compiler and written by its own map writer, as an agent would for them.
//!
//! One policy isolates the measured Service's three backends and lets in TCP to their
//! port from pods labelled `role: client` in any namespace — the bed's client and half of
//! the synthetic pods, each its own identity, so the backends' entries hold hundreds of
//! identities. The other 999 select other labels in other namespaces: the synthetic
//! pods, half of them on the bed's node (isolated there, with entries of their own), the
//! rest on other nodes (in the ipcache only). The synthetic pods have no interfaces:
//! only their addresses, labels and namespaces matter to the maps.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use berth_agent::{
    datapath::PolicyMaps,
    policy::{Identities, PolicyInput, compile},
};
use berth_api::{
    Source,
    core::{Namespace, Pod},
    decode_typed,
    networking::NetworkPolicy,
};

/// Policies in place, the one for the backends included.
pub const POLICIES: usize = 1_000;
/// Pods besides the bed's own: addresses of their own, in no pod range of the cluster.
const SYNTHETIC_PODS: u32 = 1_000;
const SYNTHETIC_BASE: u32 = u32::from_be_bytes([198, 18, 240, 0]);
/// Namespaces the synthetic pods and the 999 other policies are spread over.
pub const NAMESPACES: usize = 50;
/// Pods the policies are compiled over: the bed's client and three backends, and the
/// synthetic ones.
pub const PODS: usize = 4 + SYNTHETIC_PODS as usize;
/// The bed's own pods' namespace.
const BENCH_NAMESPACE: &str = "bench";

/// What was written, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub policies: usize,
    pub pods: usize,
    pub policy_entries: usize,
}

fn pod(name: &str, namespace: &str, node: &str, ip: Ipv4Addr, labels: &str) -> anyhow::Result<Pod> {
    let yaml = format!(
        "metadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}\nspec: {{nodeName: {node}, containers: [{{name: web, image: nginx}}]}}\nstatus: {{phase: Running, podIP: {ip}}}"
    );
    decode_typed(Source::Yaml(&yaml)).with_context(|| format!("the bench's pod {name}"))
}

fn policy(name: &str, namespace: &str, spec: &str) -> anyhow::Result<NetworkPolicy> {
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    );
    decode_typed(Source::Yaml(&yaml)).with_context(|| format!("the bench's policy {name}"))
}

/// The cluster's objects as the agent of `node` sees them: the bed's client and
/// backends, the synthetic pods, their namespaces and the policies.
fn objects(
    node: &str,
    client: Ipv4Addr,
    backends: &[Ipv4Addr],
    backend_port: u16,
) -> anyhow::Result<(Vec<Pod>, Vec<Namespace>, Vec<NetworkPolicy>)> {
    let mut namespaces = Vec::new();
    for index in 0..=NAMESPACES {
        let (name, team) = match index {
            0 => (BENCH_NAMESPACE.to_owned(), "bench".to_owned()),
            _ => (format!("ns-{index}"), format!("t{}", index % 10)),
        };
        let yaml = format!("metadata: {{name: {name}, labels: {{team: {team}}}}}");
        namespaces.push(
            decode_typed(Source::Yaml(&yaml)).with_context(|| format!("the namespace {name}"))?,
        );
    }
    let mut pods = vec![pod(
        "client",
        BENCH_NAMESPACE,
        node,
        client,
        "{role: client}",
    )?];
    for (index, addr) in backends.iter().enumerate() {
        pods.push(pod(
            &format!("backend-{index}"),
            BENCH_NAMESPACE,
            node,
            *addr,
            "{app: backend}",
        )?);
    }
    for index in 0..SYNTHETIC_PODS {
        let role = if index % 2 == 0 { "client" } else { "worker" };
        let here = if index % 4 < 2 { node } else { "elsewhere" };
        pods.push(pod(
            &format!("pod-{index}"),
            &format!("ns-{}", 1 + index as usize % NAMESPACES),
            here,
            Ipv4Addr::from(SYNTHETIC_BASE + index),
            &format!(
                "{{app: app-{}, role: {role}, version: v{}}}",
                index % 200,
                index % 7
            ),
        )?);
    }
    let mut policies = vec![policy(
        "backend",
        BENCH_NAMESPACE,
        &format!(
            "  podSelector: {{matchLabels: {{app: backend}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{}}\n      podSelector: {{matchLabels: {{role: client}}}}\n    ports: [{{protocol: TCP, port: {backend_port}}}]\n"
        ),
    )?];
    for index in 1..POLICIES {
        policies.push(policy(
            &format!("policy-{index}"),
            &format!("ns-{}", 1 + index % NAMESPACES),
            &format!(
                "  podSelector: {{matchLabels: {{app: app-{}}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: t{}}}}}\n      podSelector: {{matchLabels: {{role: client}}}}\n    ports: [{{protocol: TCP, port: 80}}]\n",
                index % 200,
                index % 10,
            ),
        )?);
    }
    Ok((pods, namespaces, policies))
}

/// Compiles the policies for the bed's node and writes them into its datapath's maps
/// (pinned under `pin_dir`).
pub fn apply(
    pin_dir: &std::path::Path,
    node: &str,
    node_addr: Ipv4Addr,
    client: Ipv4Addr,
    backends: &[Ipv4Addr],
    backend_port: u16,
) -> anyhow::Result<Written> {
    let (pods, namespaces, policies) = objects(node, client, backends, backend_port)?;
    let plan = compile(
        &PolicyInput {
            node_name: node,
            host_addrs: &[node_addr],
            pods: &pods,
            namespaces: &namespaces,
            policies: &policies,
        },
        &mut Identities::default(),
    );
    for backend in backends {
        anyhow::ensure!(
            plan.endpoints.contains_key(backend),
            "the backend {backend} is not isolated by the bench's policies"
        );
    }
    let mut maps = PolicyMaps::open(pin_dir).context("opening the policy maps")?;
    maps.apply(&plan).context("writing the policies")?;
    Ok(Written {
        policies: policies.len(),
        pods: pods.len(),
        policy_entries: maps.policy_entries(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backends_are_isolated_and_let_in_many_identities() {
        let backends = [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 1, 3)];
        let (pods, namespaces, policies) =
            objects("n1", Ipv4Addr::new(198, 18, 1, 10), &backends, 8080).expect("objects");
        assert_eq!(policies.len(), POLICIES);
        let plan = compile(
            &PolicyInput {
                node_name: "n1",
                host_addrs: &[Ipv4Addr::new(198, 18, 0, 1)],
                pods: &pods,
                namespaces: &namespaces,
                policies: &policies,
            },
            &mut Identities::default(),
        );
        let allowed = &plan.ingress[&backends[0]];
        // The client and the 500 synthetic pods labelled role=client.
        assert!(allowed.len() > 400, "{} entries", allowed.len());
        // Synthetic pods on this node are isolated too.
        assert!(
            plan.endpoints.len() > 100,
            "{} endpoints",
            plan.endpoints.len()
        );
    }
}
