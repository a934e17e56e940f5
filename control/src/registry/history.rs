//! Revision history of Deployments, DaemonSets and StatefulSets: each pod template one had is kept
//! as a ControllerRevision it owns (named `<owner>-<template hash>`), so `rollout
//! history` lists them and `rollout undo` puts one back. A Deployment also carries the
//! number of the revision it runs in its `deployment.kubernetes.io/revision` annotation;
//! DaemonSets and StatefulSets run their newest.

use berth_api::{
    Resource as _, ResourceType,
    apps::{ControllerRevision, DaemonSet, Deployment},
    kinds::CONTROLLER_REVISIONS,
    meta::{ObjectMeta, OwnerReference},
};
use serde_json::Value;

use super::{
    Error, MAX_RETRIES, Registry, Result, decode_typed, encode, key, prefix,
    strategy::{Strategy, Templated as _, WithHistory},
};
use crate::{
    objects::Kind,
    store::{KeyValue, Op, Precondition},
    util,
};

/// The revision `object` runs: its own record, or the newest of `history`.
fn current_revision<K: WithHistory>(object: &K, history: &[(KeyValue, ControllerRevision)]) -> i64 {
    object
        .recorded_revision()
        .unwrap_or_else(|| history.last().map_or(0, |(_, r)| r.revision))
}

/// `rollout history` shows why each revision was made, as kubectl does.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// Old revisions kept besides the current one when the Deployment does not say.
const DEFAULT_HISTORY_LIMIT: usize = 10;

impl Registry {
    /// The revisions `owner_uid` owns, as stored, oldest first.
    pub(super) async fn controller_revisions(
        &self,
        namespace: &str,
        owner_uid: &str,
    ) -> Result<Vec<(KeyValue, ControllerRevision)>> {
        let mut out = Vec::new();
        for kv in self
            .read_prefix(prefix(&CONTROLLER_REVISIONS, Some(namespace)))
            .await?
        {
            let revision: ControllerRevision = decode_typed(&kv)?;
            if revision
                .metadata
                .owner_references
                .iter()
                .any(|r| r.uid == owner_uid)
            {
                out.push((kv, revision));
            }
        }
        out.sort_by_key(|(_, r)| r.revision);
        Ok(out)
    }

    /// The ops deleting the revision history of `owner`, which goes with it.
    pub(super) async fn history_deletion(&self, owner: &impl Kind) -> Result<Vec<Op>> {
        let meta = owner.meta();
        Ok(self
            .controller_revisions(&meta.namespace, &meta.uid)
            .await?
            .into_iter()
            .map(|(kv, _)| Op::Delete {
                key: kv.key,
                precondition: Precondition::ModRevision(kv.mod_revision),
            })
            .collect())
    }

    /// Records the owner's pod template as a ControllerRevision when it is new, or
    /// renumbers the matching old one (a rollback, or re-applying an old template), and
    /// prunes history past `revisionHistoryLimit`. Sets a Deployment's revision
    /// annotation.
    pub(super) async fn plan_revision_history<K: WithHistory>(
        &self,
        owner: &mut K,
    ) -> Result<Vec<Op>> {
        let (namespace, name, uid) = (
            owner.meta().namespace.clone(),
            owner.meta().name.clone(),
            owner.meta().uid.clone(),
        );
        let template = owner.template();
        let history = self.controller_revisions(&namespace, &uid).await?;
        let current = current_revision(owner, &history);
        if history
            .iter()
            .any(|(_, r)| r.revision == current && r.data == *template)
        {
            return Ok(Vec::new());
        }
        let next = history.last().map_or(0, |(_, r)| r.revision).max(current) + 1;
        let reused = history.iter().position(|(_, r)| r.data == *template);
        let (mut revision, precondition) = match reused {
            Some(i) => {
                let (kv, old) = &history[i];
                (old.clone(), Precondition::ModRevision(kv.mod_revision))
            }
            None => {
                let hash = template.hash();
                let revision = ControllerRevision {
                    api_version: "apps/v1".to_owned(),
                    kind: "ControllerRevision".to_owned(),
                    metadata: ObjectMeta {
                        name: format!("{name}-{hash}"),
                        namespace: namespace.clone(),
                        uid: util::uuid_v4(),
                        creation_timestamp: util::rfc3339_now(),
                        generation: 1,
                        labels: template.metadata.labels.clone(),
                        owner_references: vec![OwnerReference {
                            api_version: "apps/v1".to_owned(),
                            kind: K::KIND.to_owned(),
                            name: name.clone(),
                            uid: uid.clone(),
                            controller: true,
                        }],
                        ..ObjectMeta::default()
                    },
                    revision: 0,
                    data: template.clone(),
                };
                (revision, Precondition::Absent)
            }
        };
        revision.revision = next;
        if let Some(cause) = owner.meta().annotations.get(CHANGE_CAUSE) {
            revision
                .metadata
                .annotations
                .insert(CHANGE_CAUSE.to_owned(), cause.clone());
        }
        owner.record_revision(next);
        let mut ops = vec![Op::Put {
            key: key(&CONTROLLER_REVISIONS, &namespace, &revision.metadata.name),
            value: encode(&revision)?,
            precondition,
        }];
        // Keep `revisionHistoryLimit` old revisions besides the current one.
        let limit = usize::try_from(owner.history_limit()).unwrap_or(DEFAULT_HISTORY_LIMIT);
        let old: Vec<&(KeyValue, ControllerRevision)> = history
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != reused)
            .map(|(_, entry)| entry)
            .collect();
        let excess = old.len().saturating_sub(limit);
        for (kv, _) in old.into_iter().take(excess) {
            ops.push(Op::Delete {
                key: kv.key.clone(),
                precondition: Precondition::ModRevision(kv.mod_revision),
            });
        }
        Ok(ops)
    }

    /// `rollout undo`: puts back the pod template of `to_revision`, or of the revision
    /// before the current one when 0. The restored template becomes the newest revision.
    pub async fn rollback(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        to_revision: i64,
    ) -> Result<Value> {
        match rt.kind {
            "Deployment" => {
                self.rollback_typed(&Deployment::STRATEGY, rt, (namespace, name), to_revision)
                    .await
            }
            "DaemonSet" => {
                self.rollback_typed(&DaemonSet::STRATEGY, rt, (namespace, name), to_revision)
                    .await
            }
            "StatefulSet" => {
                self.rollback_typed(
                    &super::strategy::StatefulSetStrategy,
                    rt,
                    (namespace, name),
                    to_revision,
                )
                .await
            }
            kind => Err(Error::bad_request(format!(
                "{kind} has no rollback subresource"
            ))),
        }
    }

    async fn rollback_typed<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        (namespace, name): (&str, &str),
        to_revision: i64,
    ) -> Result<Value>
    where
        S::Object: WithHistory,
    {
        let what = rt.kind.to_lowercase();
        let mut attempt = 0;
        let (object, chosen, now) = loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(Error::not_found(rt.kind, name));
            };
            let existing: S::Object = decode_typed(&kv)?;
            let history = self
                .controller_revisions(namespace, &existing.meta().uid)
                .await?;
            let current = current_revision(&existing, &history);
            let target = if to_revision == 0 {
                history.iter().rev().find(|(_, r)| r.revision < current)
            } else {
                history.iter().find(|(_, r)| r.revision == to_revision)
            };
            let Some((_, target)) = target else {
                return Err(Error::bad_request(if to_revision == 0 {
                    format!("{what} {name:?} has no previous revision to roll back to")
                } else {
                    format!("{what} {name:?} has no revision {to_revision}")
                }));
            };
            // The restored template is renumbered past the newest.
            let now = history.last().map_or(0, |(_, r)| r.revision).max(current) + 1;
            let mut modified = existing.clone();
            *modified.template_mut() = target.data.clone();
            match self
                .write_over(strategy, rt, (&kv, &existing), modified, None)
                .await
            {
                Ok(object) => break (object, target.revision, now),
                Err(e) if e.is_conflict() && attempt < MAX_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        self.record_event(
            &object,
            &format!("{}Rollback", rt.kind),
            &format!("Rolled back to the template of revision {chosen}, now revision {now}"),
            "Normal",
        )
        .await;
        Ok(object)
    }
}
