//! The scheduler's rules that look at other pods: pod affinity and anti-affinity
//! (required and preferred, any `topologyKey`) and topology spread constraints.
//!
//! Built only for a batch that has a pod with such rules, so the common case pays
//! nothing. Each distinct term (namespaces, selector, topology key) is counted once per
//! batch — its matching bound pods per topology domain — and kept up to date with the
//! batch's own bindings; a pod then checks a node with a look-up per term, not a pass
//! over the cluster's pods. Replicas of one controller share their terms, so a batch of
//! thousands of them counts each term once.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use berth_api::{
    core::{Namespace, Pod},
    meta::LabelSelector,
    scheduling::{PodAffinityTerm, node_label, term_selects},
};

use super::{Snapshot, index::NodeFit, index::holds_resources};

/// Why a node fails a rule of this module, worded as kube-scheduler words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    Affinity,
    AntiAffinity,
    ExistingAntiAffinity,
    Spread,
    SpreadLabel,
}

impl Broken {
    pub fn reason(self) -> &'static str {
        match self {
            Broken::Affinity => "node(s) didn't match pod affinity rules",
            Broken::AntiAffinity => "node(s) didn't match pod anti-affinity rules",
            Broken::ExistingAntiAffinity => {
                "node(s) didn't satisfy existing pods anti-affinity rules"
            }
            Broken::Spread => "node(s) didn't match pod topology spread constraints",
            Broken::SpreadLabel => {
                "node(s) didn't match pod topology spread constraints (missing required label)"
            }
        }
    }
}

/// The namespaces an affinity term looks in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Namespaces {
    All,
    Only(BTreeSet<String>),
}

impl Namespaces {
    fn contains(&self, namespace: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Only(names) => names.contains(namespace),
        }
    }

    /// Kubernetes' rule: the names listed plus those `namespaceSelector` selects (`{}`:
    /// all); neither given, the pod's own.
    fn of(term: &PodAffinityTerm, own: &str, snapshot: &Snapshot) -> Self {
        let mut names: BTreeSet<String> = term.namespaces.iter().cloned().collect();
        match &term.namespace_selector {
            Some(selector) if selector.is_empty() => return Namespaces::All,
            Some(selector) => names.extend(
                snapshot
                    .list::<Namespace>(None)
                    .filter(|n| selector.matches(&n.metadata.labels))
                    .map(|n| n.metadata.name.clone()),
            ),
            None if names.is_empty() => {
                names.insert(own.to_owned());
            }
            None => {}
        }
        Namespaces::Only(names)
    }
}

/// Pods in `namespaces` matching `selector`, counted per domain of `key`.
struct Term {
    namespaces: Namespaces,
    selector: Option<LabelSelector>,
    key: String,
    counts: HashMap<String, usize>,
    total: usize,
}

impl Term {
    fn selects(&self, pod: &Pod) -> bool {
        self.namespaces.contains(&pod.metadata.namespace)
            && term_selects(self.selector.as_ref(), &pod.metadata.labels)
    }
}

/// A spread constraint's matching pods per domain, over the nodes the pod may go to
/// (its node selector and required node affinity: Kubernetes' `nodeAffinityPolicy:
/// Honor`) that have the key.
struct Spread {
    namespace: String,
    selector: Option<LabelSelector>,
    key: String,
    eligible: Vec<bool>,
    counts: BTreeMap<String, usize>,
}

impl Spread {
    fn selects(&self, pod: &Pod) -> bool {
        pod.metadata.namespace == self.namespace
            && term_selects(self.selector.as_ref(), &pod.metadata.labels)
    }

    /// The fewest matching pods of a domain; 0 when there are fewer domains than
    /// `min_domains`.
    fn min(&self, min_domains: usize) -> usize {
        if self.counts.len() < min_domains {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

/// A bound pod's required anti-affinity term, and the domain it holds.
struct Holder {
    namespaces: Namespaces,
    selector: Option<LabelSelector>,
    key: String,
    domain: String,
}

/// One pod's rules of this module, resolved against the batch's counts.
#[derive(Default)]
pub struct Rules {
    affinity: Vec<usize>,
    anti: Vec<usize>,
    /// Domains (key, value) a bound pod's anti-affinity keeps this pod out of.
    forbidden: Vec<(String, String)>,
    /// (spread, maxSkew, the global minimum, 1 if the pod counts itself)
    hard: Vec<(usize, usize, usize, usize)>,
    soft: Vec<usize>,
    /// (term, weight): affinity positive, anti-affinity negative.
    preferred: Vec<(usize, i64)>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.affinity.is_empty()
            && self.anti.is_empty()
            && self.forbidden.is_empty()
            && self.hard.is_empty()
            && self.soft.is_empty()
            && self.preferred.is_empty()
    }
}

pub struct Placement {
    nodes: Vec<Arc<NodeFit>>,
    positions: HashMap<String, usize>,
    terms: Vec<Term>,
    term_ids: HashMap<String, usize>,
    spreads: Vec<Spread>,
    spread_ids: HashMap<String, usize>,
    holders: Vec<Holder>,
}

/// Whether a pod has rules this module checks.
pub fn has_rules(pod: &Pod) -> bool {
    let affinity = pod.spec.affinity.as_ref();
    affinity.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
        || !pod.spec.topology_spread_constraints.is_empty()
}

impl Placement {
    /// The batch's nodes (in the scheduler's order) and the required anti-affinity terms
    /// of the pods bound to them.
    pub fn new(nodes: Vec<Arc<NodeFit>>, snapshot: &Snapshot) -> Self {
        let positions = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut placement = Self {
            nodes,
            positions,
            terms: Vec::new(),
            term_ids: HashMap::new(),
            spreads: Vec::new(),
            spread_ids: HashMap::new(),
            holders: Vec::new(),
        };
        for pod in snapshot.list::<Pod>(None).filter(|p| holds_resources(p)) {
            if let Some(&i) = placement.positions.get(&pod.spec.node_name) {
                placement.hold(pod, i, snapshot);
            }
        }
        placement
    }

    fn domain(&self, i: usize, key: &str) -> Option<&str> {
        let node = &self.nodes[i];
        node_label(&node.name, &node.labels, key)
    }

    /// Records the required anti-affinity terms of `pod`, bound to node `i`.
    fn hold(&mut self, pod: &Pod, i: usize, snapshot: &Snapshot) {
        let Some(anti) = pod
            .spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
        else {
            return;
        };
        for term in &anti.required_during_scheduling_ignored_during_execution {
            let Some(domain) = self.domain(i, &term.topology_key) else {
                continue;
            };
            let holder = Holder {
                namespaces: Namespaces::of(term, &pod.metadata.namespace, snapshot),
                selector: term.label_selector.clone(),
                key: term.topology_key.clone(),
                domain: domain.to_owned(),
            };
            self.holders.push(holder);
        }
    }

    /// The id of `term` (of a pod in `namespace`), counted on first use.
    fn term(&mut self, term: &PodAffinityTerm, namespace: &str, snapshot: &Snapshot) -> usize {
        let namespaces = Namespaces::of(term, namespace, snapshot);
        let id = format!(
            "{namespaces:?}|{}|{}",
            serde_json::to_string(&term.label_selector).unwrap_or_default(),
            term.topology_key
        );
        if let Some(&at) = self.term_ids.get(&id) {
            return at;
        }
        let mut counted = Term {
            namespaces,
            selector: term.label_selector.clone(),
            key: term.topology_key.clone(),
            counts: HashMap::new(),
            total: 0,
        };
        for pod in snapshot.list::<Pod>(None).filter(|p| holds_resources(p)) {
            if let Some(&i) = self.positions.get(&pod.spec.node_name)
                && counted.selects(pod)
                && let Some(domain) = self.domain(i, &counted.key)
            {
                *counted.counts.entry(domain.to_owned()).or_default() += 1;
                counted.total += 1;
            }
        }
        self.terms.push(counted);
        self.term_ids.insert(id, self.terms.len() - 1);
        self.terms.len() - 1
    }

    fn spread(
        &mut self,
        pod: &Pod,
        selector: Option<&LabelSelector>,
        key: &str,
        snapshot: &Snapshot,
    ) -> usize {
        let node_rules = (&pod.spec.node_selector, pod.spec.required_node_affinity());
        let id = format!(
            "{}|{}|{key}|{}",
            pod.metadata.namespace,
            serde_json::to_string(&selector).unwrap_or_default(),
            serde_json::to_string(&node_rules).unwrap_or_default(),
        );
        if let Some(&at) = self.spread_ids.get(&id) {
            return at;
        }
        let eligible: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| {
                node_label(&n.name, &n.labels, key).is_some()
                    && pod.spec.selects_node(&n.name, &n.labels)
            })
            .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (i, _) in eligible.iter().enumerate().filter(|(_, e)| **e) {
            if let Some(domain) = self.domain(i, key) {
                counts.entry(domain.to_owned()).or_default();
            }
        }
        let mut counted = Spread {
            namespace: pod.metadata.namespace.clone(),
            selector: selector.cloned(),
            key: key.to_owned(),
            eligible,
            counts,
        };
        for other in snapshot
            .list::<Pod>(Some(&pod.metadata.namespace))
            .filter(|p| holds_resources(p))
        {
            if let Some(&i) = self.positions.get(&other.spec.node_name)
                && counted.eligible[i]
                && counted.selects(other)
                && let Some(domain) = self.domain(i, key)
            {
                *counted.counts.entry(domain.to_owned()).or_default() += 1;
            }
        }
        self.spreads.push(counted);
        self.spread_ids.insert(id, self.spreads.len() - 1);
        self.spreads.len() - 1
    }

    /// Resolves `pod`'s rules against the counts, counting terms first seen.
    pub fn rules(&mut self, pod: &Pod, snapshot: &Snapshot) -> Rules {
        let mut rules = Rules::default();
        let namespace = pod.metadata.namespace.as_str();
        let affinity = pod.spec.affinity.as_ref();
        if let Some(affinity) = affinity.and_then(|a| a.pod_affinity.as_ref()) {
            for term in &affinity.required_during_scheduling_ignored_during_execution {
                let id = self.term(term, namespace, snapshot);
                // Kubernetes lets the first pod of a group that selects itself in.
                let first = self.terms[id].total == 0 && self.terms[id].selects(pod);
                if !first {
                    rules.affinity.push(id);
                }
            }
            for weighted in &affinity.preferred_during_scheduling_ignored_during_execution {
                let id = self.term(&weighted.pod_affinity_term, namespace, snapshot);
                rules.preferred.push((id, i64::from(weighted.weight)));
            }
        }
        if let Some(anti) = affinity.and_then(|a| a.pod_anti_affinity.as_ref()) {
            for term in &anti.required_during_scheduling_ignored_during_execution {
                rules.anti.push(self.term(term, namespace, snapshot));
            }
            for weighted in &anti.preferred_during_scheduling_ignored_during_execution {
                let id = self.term(&weighted.pod_affinity_term, namespace, snapshot);
                rules.preferred.push((id, -i64::from(weighted.weight)));
            }
        }
        for holder in &self.holders {
            if holder.namespaces.contains(namespace)
                && term_selects(holder.selector.as_ref(), &pod.metadata.labels)
            {
                rules
                    .forbidden
                    .push((holder.key.clone(), holder.domain.clone()));
            }
        }
        for constraint in &pod.spec.topology_spread_constraints {
            let id = self.spread(
                pod,
                constraint.label_selector.as_ref(),
                &constraint.topology_key,
                snapshot,
            );
            if constraint.when_unsatisfiable == "DoNotSchedule" {
                let min_domains = constraint
                    .min_domains
                    .and_then(|m| usize::try_from(m).ok())
                    .unwrap_or(1);
                let spread = &self.spreads[id];
                rules.hard.push((
                    id,
                    usize::try_from(constraint.max_skew).unwrap_or(1),
                    spread.min(min_domains),
                    usize::from(spread.selects(pod)),
                ));
            } else {
                rules.soft.push(id);
            }
        }
        rules
    }

    /// The first rule node `i` breaks, in kube-scheduler's order.
    pub fn filter(&self, rules: &Rules, i: usize) -> Option<Broken> {
        for &(id, max_skew, min, own) in &rules.hard {
            let spread = &self.spreads[id];
            let Some(domain) = self.domain(i, &spread.key) else {
                return Some(Broken::SpreadLabel);
            };
            let count = spread.counts.get(domain).copied().unwrap_or(0);
            if count + own > min + max_skew {
                return Some(Broken::Spread);
            }
        }
        for (key, value) in &rules.forbidden {
            if self.domain(i, key) == Some(value.as_str()) {
                return Some(Broken::ExistingAntiAffinity);
            }
        }
        let count = |id: usize| {
            let term = &self.terms[id];
            self.domain(i, &term.key)
                .and_then(|d| term.counts.get(d))
                .copied()
        };
        if rules.affinity.iter().any(|&id| count(id).unwrap_or(0) == 0) {
            return Some(Broken::Affinity);
        }
        if rules.anti.iter().any(|&id| count(id).unwrap_or(0) > 0) {
            return Some(Broken::AntiAffinity);
        }
        None
    }

    /// Preferred pod (anti-)affinity: each matching pod in the node's domain adds
    /// (anti: takes away) its term's weight. Higher is better.
    pub fn preference(&self, rules: &Rules, i: usize) -> i64 {
        rules
            .preferred
            .iter()
            .map(|&(id, weight)| {
                let term = &self.terms[id];
                let count = self
                    .domain(i, &term.key)
                    .and_then(|d| term.counts.get(d))
                    .copied()
                    .unwrap_or(0);
                weight.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX))
            })
            .sum()
    }

    /// `ScheduleAnyway` spread: the matching pods already in the node's domains. Lower is
    /// better.
    pub fn crowding(&self, rules: &Rules, i: usize) -> usize {
        rules
            .soft
            .iter()
            .map(|&id| {
                let spread = &self.spreads[id];
                self.domain(i, &spread.key)
                    .and_then(|d| spread.counts.get(d))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Counts `pod`, just bound to node `i`, in every term and spread it matches.
    pub fn bind(&mut self, pod: &Pod, i: usize, snapshot: &Snapshot) {
        let node = Arc::clone(&self.nodes[i]);
        for term in &mut self.terms {
            if term.selects(pod)
                && let Some(domain) = node_label(&node.name, &node.labels, &term.key)
            {
                *term.counts.entry(domain.to_owned()).or_default() += 1;
                term.total += 1;
            }
        }
        for spread in &mut self.spreads {
            if spread.eligible[i]
                && spread.selects(pod)
                && let Some(domain) = node_label(&node.name, &node.labels, &spread.key)
            {
                *spread.counts.entry(domain.to_owned()).or_default() += 1;
            }
        }
        self.hold(pod, i, snapshot);
    }
}
