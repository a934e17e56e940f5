//! A container's environment as the engine gets it, resolved when the container is
//! created: `envFrom` first, then `env` (a name given twice takes the later value), with
//! ConfigMap and Secret keys, pod fields and resource figures filled in, as the kubelet
//! does. A missing ConfigMap, Secret or key that is not `optional` is an error the pod's
//! status shows (`CreateContainerConfigError`); the container is created once it is there.

use std::{collections::BTreeMap, net::Ipv4Addr};

use berth_api::core::field_path_key;

use super::{
    ContainerDesired, PodDesired,
    configs::{ConfigKey, PodConfigs},
    spec::EnvValue,
};
use crate::runtime::Limits;

/// What a container's variables may read besides its spec.
pub struct EnvContext<'a> {
    pub pod: &'a PodDesired,
    pub pod_ip: Ipv4Addr,
    pub node: &'a str,
    /// What limits.cpu and limits.memory read when the container sets none.
    pub allocatable: Limits,
    pub configs: &'a PodConfigs,
}

impl EnvContext<'_> {
    fn key(&self, kind: super::configs::ConfigKind, name: &str) -> ConfigKey {
        ConfigKey {
            kind,
            namespace: self.pod.namespace.clone(),
            name: name.to_owned(),
        }
    }

    /// A field of the pod as `fieldRef` reads it.
    pub fn field(&self, path: &str) -> String {
        match path {
            "metadata.name" => self.pod.name.clone(),
            "metadata.namespace" => self.pod.namespace.clone(),
            "metadata.uid" => self.pod.uid.clone(),
            "spec.nodeName" => self.node.to_owned(),
            "status.podIP" => self.pod_ip.to_string(),
            other => match field_path_key(other) {
                Some(("labels", key)) => self.pod.labels.get(key).cloned().unwrap_or_default(),
                Some((_, key)) => self.pod.annotations.get(key).cloned().unwrap_or_default(),
                // The API refuses other paths.
                None => String::new(),
            },
        }
    }

    /// A container's request or limit in units of `divisor`, rounded up (as Kubernetes).
    pub fn resource(
        &self,
        own: &ContainerDesired,
        container: &str,
        resource: &str,
        divisor: u64,
    ) -> Result<String, String> {
        let target = if container.is_empty() {
            own
        } else {
            self.pod
                .containers
                .iter()
                .find(|c| c.name == container)
                .ok_or_else(|| format!("no container {container:?} in pod {}", self.pod.key()))?
        };
        let cpu = resource.ends_with(".cpu");
        let pick = |limits: &Limits| {
            if cpu {
                limits.cpu_millis
            } else {
                limits.memory_bytes
            }
        };
        let value = if resource.starts_with("limits.") {
            pick(&target.limits).or(pick(&self.allocatable))
        } else {
            // A request left out is the limit, as the API server defaults it.
            pick(&target.requests).or(pick(&target.limits))
        }
        .unwrap_or(0);
        Ok(value.div_ceil(divisor.max(1)).to_string())
    }
}

/// The variables of `container`, in order, each name once.
pub fn resolve(
    container: &ContainerDesired,
    cx: &EnvContext<'_>,
) -> Result<Vec<(String, String)>, String> {
    let mut env = Env::default();
    for from in &container.env_from {
        let key = cx.key(from.kind, &from.name);
        match cx.configs.values(&key) {
            Ok(values) => {
                for (name, value) in &values.0 {
                    let name = format!("{}{name}", from.prefix);
                    // As the kubelet: a key that can't be a variable name is skipped.
                    if !name.is_empty() && !name.contains('=') {
                        env.set(name, String::from_utf8_lossy(value).into_owned());
                    }
                }
            }
            Err(_) if from.optional => {}
            Err(reason) => return Err(reason),
        }
    }
    for (name, value) in &container.env {
        let value = match value {
            EnvValue::Literal(text) => expand(text, &env.values),
            EnvValue::Key {
                kind,
                name: object,
                key,
                optional,
            } => {
                let config = cx.key(*kind, object);
                let found = cx.configs.values(&config).and_then(|values| {
                    values.0.get(key).cloned().ok_or_else(|| {
                        format!(
                            "couldn't find key {key} in {} {}/{object}",
                            kind.as_str(),
                            cx.pod.namespace
                        )
                    })
                });
                match found {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(_) if *optional => continue,
                    Err(reason) => return Err(reason),
                }
            }
            EnvValue::Field(path) => cx.field(path),
            EnvValue::Resource {
                container: target,
                resource,
                divisor,
            } => cx.resource(container, target, resource, *divisor)?,
        };
        env.set(name.clone(), value);
    }
    Ok(env.into_pairs())
}

/// Variables in the order first set, the last value of each.
#[derive(Default)]
struct Env {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Env {
    fn set(&mut self, name: String, value: String) {
        if self.values.insert(name.clone(), value).is_none() {
            self.order.push(name);
        }
    }

    fn into_pairs(mut self) -> Vec<(String, String)> {
        self.order
            .into_iter()
            .map(|name| {
                let value = self.values.remove(&name).unwrap_or_default();
                (name, value)
            })
            .collect()
    }
}

/// Kubernetes' `$(NAME)` references to variables defined before; `$$` is a `$`; an
/// unknown name stays as written.
fn expand(text: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|inner| inner.split_once(')'))
            && let Some(value) = defined.get(name)
        {
            out.push_str(value);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pods::{
        configs::{ConfigKind, ConfigValues, Fetched},
        spec::EnvFrom,
    };

    fn pod() -> PodDesired {
        PodDesired {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: "u1".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            containers: vec![ContainerDesired {
                name: "web".into(),
                limits: Limits {
                    cpu_millis: Some(500),
                    memory_bytes: None,
                },
                requests: Limits {
                    cpu_millis: Some(250),
                    memory_bytes: Some(64 << 20),
                },
                ..ContainerDesired::default()
            }],
            ..PodDesired::default()
        }
    }

    fn found(configs: &PodConfigs, kind: ConfigKind, name: &str, values: &[(&str, &str)]) {
        configs.set(
            ConfigKey {
                kind,
                namespace: "shop".into(),
                name: name.into(),
            },
            Fetched::Found(Arc::new(ConfigValues(
                values
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                    .collect(),
            ))),
        );
    }

    fn key(kind: ConfigKind, name: &str, key: &str, optional: bool) -> EnvValue {
        EnvValue::Key {
            kind,
            name: name.into(),
            key: key.into(),
            optional,
        }
    }

    #[test]
    fn variables_come_from_config_fields_and_resources_in_kubernetes_order() {
        let configs = PodConfigs::default();
        found(
            &configs,
            ConfigKind::ConfigMap,
            "app",
            &[("mode", "fast"), ("LEVEL", "3")],
        );
        found(
            &configs,
            ConfigKind::Secret,
            "db",
            &[("password", "hunter2")],
        );
        let pod = pod();
        let cx = EnvContext {
            pod: &pod,
            pod_ip: Ipv4Addr::new(198, 19, 0, 7),
            node: "n1",
            allocatable: Limits {
                cpu_millis: Some(2000),
                memory_bytes: Some(8 << 30),
            },
            configs: &configs,
        };
        let mut container = pod.containers[0].clone();
        container.env_from = vec![EnvFrom {
            prefix: "APP_".into(),
            kind: ConfigKind::ConfigMap,
            name: "app".into(),
            optional: false,
        }];
        let resource = |resource: &str, divisor| EnvValue::Resource {
            container: String::new(),
            resource: resource.into(),
            divisor,
        };
        container.env = vec![
            (
                "MODE".into(),
                key(ConfigKind::ConfigMap, "app", "mode", false),
            ),
            (
                "PASSWORD".into(),
                key(ConfigKind::Secret, "db", "password", false),
            ),
            (
                "MISSING".into(),
                key(ConfigKind::Secret, "db", "nope", true),
            ),
            ("POD".into(), EnvValue::Field("metadata.name".into())),
            ("IP".into(), EnvValue::Field("status.podIP".into())),
            ("NODE".into(), EnvValue::Field("spec.nodeName".into())),
            (
                "APP".into(),
                EnvValue::Field("metadata.labels['app']".into()),
            ),
            ("CPU".into(), resource("limits.cpu", 1)),
            ("CPU_REQUEST".into(), resource("requests.cpu", 1000)),
            ("MEMORY".into(), resource("limits.memory", 1 << 20)),
            (
                "URL".into(),
                EnvValue::Literal("http://$(IP):80/$(NOPE)$$".into()),
            ),
            ("APP_LEVEL".into(), EnvValue::Literal("4".into())),
        ];
        let env = resolve(&container, &cx).expect("resolved");
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("APP_mode"), Some("fast"));
        // env wins over envFrom, in envFrom's place.
        assert_eq!(get("APP_LEVEL"), Some("4"));
        assert_eq!(env[1].0, "APP_mode");
        assert_eq!(get("MODE"), Some("fast"));
        assert_eq!(get("PASSWORD"), Some("hunter2"));
        assert_eq!(get("MISSING"), None);
        assert_eq!(get("POD"), Some("web-0"));
        assert_eq!(get("IP"), Some("198.19.0.7"));
        assert_eq!(get("NODE"), Some("n1"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("CPU"), Some("500"));
        assert_eq!(get("CPU_REQUEST"), Some("1"), "250m in cores, rounded up");
        assert_eq!(get("MEMORY"), Some("8192"), "no limit: the node's memory");
        assert_eq!(get("URL"), Some("http://198.19.0.7:80/$(NOPE)$"));
    }

    #[test]
    fn a_missing_object_or_key_is_the_reason_the_container_waits() {
        let configs = PodConfigs::default();
        let pod = pod();
        let cx = EnvContext {
            pod: &pod,
            pod_ip: Ipv4Addr::LOCALHOST,
            node: "n1",
            allocatable: Limits::default(),
            configs: &configs,
        };
        let mut container = pod.containers[0].clone();
        container.env = vec![("A".into(), key(ConfigKind::ConfigMap, "app", "mode", false))];
        assert_eq!(
            resolve(&container, &cx),
            Err("configmap \"app\" not found".to_owned())
        );
        found(&configs, ConfigKind::ConfigMap, "app", &[("other", "x")]);
        assert_eq!(
            resolve(&container, &cx),
            Err("couldn't find key mode in ConfigMap shop/app".to_owned())
        );
        container.env.clear();
        container.env_from = vec![EnvFrom {
            prefix: String::new(),
            kind: ConfigKind::Secret,
            name: "db".into(),
            optional: false,
        }];
        assert_eq!(
            resolve(&container, &cx),
            Err("secret \"db\" not found".to_owned())
        );
        container.env_from[0].optional = true;
        assert_eq!(resolve(&container, &cx), Ok(Vec::new()));
    }
}
