//! The `/scale` subresource of Deployments, ReplicaSets and StatefulSets.

use berth_api::{
    Resource, ResourceType,
    apps::{Deployment, ReplicaSet, StatefulSet},
};
use serde_json::{Value, json};

use super::{
    Error, FieldManager, Registry, Result, name_of, namespace_of,
    strategy::{ReplicaSetStrategy, StatefulSetStrategy, Strategy, Templated as _},
};
use crate::{objects::str_at, store::Revision};

/// A kind with a replica count the `/scale` subresource sets.
trait Scalable {
    fn replicas_mut(&mut self) -> &mut i32;
}

impl Scalable for Deployment {
    fn replicas_mut(&mut self) -> &mut i32 {
        &mut self.spec.replicas
    }
}

impl Scalable for StatefulSet {
    fn replicas_mut(&mut self) -> &mut i32 {
        &mut self.spec.replicas
    }
}

impl Scalable for ReplicaSet {
    fn replicas_mut(&mut self) -> &mut i32 {
        &mut self.spec.replicas
    }
}

impl Registry {
    /// Sets `spec.replicas` of a Deployment, ReplicaSet or StatefulSet; returns the
    /// `Scale` view.
    pub async fn scale(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        (replicas, wanted): (i32, Option<Revision>),
        manager: Option<&FieldManager>,
    ) -> Result<Value> {
        let scaled = match rt.kind {
            Deployment::KIND => {
                self.scale_typed(
                    &Deployment::STRATEGY,
                    rt,
                    (namespace, name),
                    (replicas, wanted),
                    manager,
                )
                .await?
            }
            ReplicaSet::KIND => {
                self.scale_typed(
                    &ReplicaSetStrategy,
                    rt,
                    (namespace, name),
                    (replicas, wanted),
                    manager,
                )
                .await?
            }
            StatefulSet::KIND => {
                self.scale_typed(
                    &StatefulSetStrategy,
                    rt,
                    (namespace, name),
                    (replicas, wanted),
                    manager,
                )
                .await?
            }
            kind => {
                return Err(Error::bad_request(format!(
                    "{kind} has no scale subresource"
                )));
            }
        };
        Ok(scale_view(&scaled))
    }

    async fn scale_typed<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        (namespace, name): (&str, &str),
        (replicas, wanted): (i32, Option<Revision>),
        manager: Option<&FieldManager>,
    ) -> Result<Value>
    where
        S::Object: Scalable,
    {
        let mut previous = 0;
        let object = self
            .read_modify_write(
                strategy,
                rt,
                (namespace, name),
                wanted,
                manager,
                |existing| {
                    let mut object = existing.clone();
                    previous = *object.replicas_mut();
                    *object.replicas_mut() = replicas;
                    Ok(object)
                },
            )
            .await?;
        if replicas != previous {
            let message = format!(
                "Scaled {} {name} from {previous} to {replicas} replicas",
                rt.kind
            );
            self.record_event(&object, "Scaled", &message, "Normal")
                .await;
        }
        Ok(object)
    }

    pub async fn get_scale(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value> {
        Ok(scale_view(&self.get(rt, namespace, name).await?))
    }
}

fn scale_view(object: &Value) -> Value {
    let selector = object
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": name_of(object),
            "namespace": namespace_of(object),
            "uid": str_at(object, "/metadata/uid"),
            "resourceVersion": str_at(object, "/metadata/resourceVersion"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}
