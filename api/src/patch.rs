//! Kubernetes' strategic merge patch for the built-in kinds: maps merge key by key (a
//! `null` deletes), lists of objects that have a merge key (containers by `name`, a
//! container's ports by `containerPort`, ...) merge item by item, and every other list
//! is replaced. The directives `kubectl apply` sends are honoured: `$patch: replace` and
//! `$patch: delete` (a map or a list item), `$setElementOrder/<list>`,
//! `$deleteFromPrimitiveList/<list>` and `$retainKeys`.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The keys that identify an item of the list `field`, itself in the map reached through
/// `parent` (the field holding that map): Kubernetes' `x-kubernetes-list-map-keys`, whose
/// first is the strategic merge's `patchMergeKey`. Server-side apply names items by all
/// of them (`k:{"containerPort":80,"protocol":"TCP"}`).
pub fn list_map_keys(parent: Option<&str>, field: &str) -> Option<&'static [&'static str]> {
    Some(match (parent, field) {
        (_, "containers" | "initContainers" | "ephemeralContainers") => &["name"],
        (Some("containers" | "initContainers" | "ephemeralContainers"), "ports") => {
            &["containerPort", "protocol"]
        }
        (Some("spec"), "ports") => &["port", "protocol"],
        (_, "env" | "volumes" | "imagePullSecrets") => &["name"],
        (_, "hostAliases") => &["ip"],
        (_, "volumeMounts") => &["mountPath"],
        (_, "volumeDevices") => &["devicePath"],
        (_, "ownerReferences") => &["uid"],
        (_, "conditions") => &["type"],
        (_, "topologySpreadConstraints") => &["topologyKey", "whenUnsatisfiable"],
        _ => return None,
    })
}

/// The value a list-map key has when an item leaves it out (Kubernetes' defaults).
pub fn list_map_key_default(key: &str) -> Option<&'static str> {
    (key == "protocol").then_some("TCP")
}

/// The strategic merge key of the list `field` (see [`list_map_keys`]).
fn merge_key(parent: Option<&str>, field: &str) -> Option<&'static str> {
    list_map_keys(parent, field).and_then(|keys| keys.first().copied())
}

/// Applies `patch` to `target` in place.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    merge_value(target, patch, None, None, "")
}

fn invalid(path: &str, message: impl Into<String>) -> PatchError {
    PatchError::Invalid {
        path: if path.is_empty() {
            "(root)".to_owned()
        } else {
            path.to_owned()
        },
        message: message.into(),
    }
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// `target`, the value of field `field` of a map that is itself the value of `parent`.
fn merge_value(
    target: &mut Value,
    patch: &Value,
    parent: Option<&str>,
    field: Option<&str>,
    path: &str,
) -> Result<(), PatchError> {
    match patch {
        Value::Object(patch_map) => {
            match patch_map.get("$patch").and_then(Value::as_str) {
                Some("replace") => {
                    let mut replaced = patch_map.clone();
                    replaced.remove("$patch");
                    *target = Value::Object(replaced);
                    return Ok(());
                }
                Some("delete") => {
                    *target = Value::Null;
                    return Ok(());
                }
                Some("merge") | None => {}
                Some(other) => return Err(invalid(path, format!("unknown $patch {other:?}"))),
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_map) = target {
                merge_map(target_map, patch_map, field, path)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let key = field.and_then(|f| merge_key(parent, f));
            match (key, target.as_array_mut()) {
                (Some(key), Some(existing)) => merge_list(existing, items, key, field, path),
                _ => {
                    *target = Value::Array(strip_directives(items));
                    Ok(())
                }
            }
        }
        other => {
            *target = other.clone();
            Ok(())
        }
    }
}

fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    field: Option<&str>,
    path: &str,
) -> Result<(), PatchError> {
    let mut retain: Option<Vec<String>> = None;
    for (key, value) in patch {
        if key == "$patch" {
            continue;
        }
        if key == "$retainKeys" {
            let keys = value
                .as_array()
                .ok_or_else(|| invalid(path, "$retainKeys must be a list"))?;
            retain = Some(
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect(),
            );
            continue;
        }
        if key.starts_with("$setElementOrder/") {
            // Applied once the list itself has merged, below.
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = value
                .as_array()
                .ok_or_else(|| invalid(&child(path, key), "must be a list"))?;
            if let Some(Value::Array(items)) = target.get_mut(list) {
                items.retain(|item| !gone.contains(item));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        let entry = target.entry(key.clone()).or_insert(Value::Null);
        merge_value(entry, value, field, Some(key), &child(path, key))?;
        if entry.is_null() {
            target.remove(key);
        }
    }
    for (key, order) in patch {
        if let Some(list) = key.strip_prefix("$setElementOrder/") {
            let order = order
                .as_array()
                .ok_or_else(|| invalid(&child(path, key), "must be a list"))?;
            if let Some(Value::Array(items)) = target.get_mut(list) {
                reorder(items, order, merge_key(field, list));
            }
        }
    }
    if let Some(keep) = retain {
        target.retain(|key, _| keep.contains(key));
    }
    Ok(())
}

fn merge_list(
    existing: &mut Vec<Value>,
    patch: &[Value],
    key: &str,
    field: Option<&str>,
    path: &str,
) -> Result<(), PatchError> {
    if patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *existing = strip_directives(patch);
        return Ok(());
    }
    for (i, item) in patch.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(id) = item.get(key) else {
            return Err(invalid(&item_path, format!("has no merge key {key:?}")));
        };
        let at = existing.iter().position(|e| e.get(key) == Some(id));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(at) = at {
                existing.remove(at);
            }
            continue;
        }
        match at {
            Some(at) => merge_value(&mut existing[at], item, None, field, &item_path)?,
            None => {
                let mut added = Value::Object(Map::new());
                merge_value(&mut added, item, None, field, &item_path)?;
                existing.push(added);
            }
        }
    }
    Ok(())
}

/// Items named in `order` first, in its order; the others after, as they were.
fn reorder(items: &mut [Value], order: &[Value], key: Option<&str>) {
    let position = |item: &Value| {
        order.iter().position(|wanted| match key {
            Some(key) => wanted.get(key).is_some() && wanted.get(key) == item.get(key),
            None => wanted == item,
        })
    };
    items.sort_by_key(|item| position(item).unwrap_or(usize::MAX));
}

fn strip_directives(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|item| match item {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "echo:1", "ports": [{"containerPort": 8080}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "side", "image": "side:1"}]}}}})
    }

    #[test]
    fn containers_merge_by_name_and_their_lists_by_their_keys() {
        let mut d = deployment();
        strategic_merge(
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "echo:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                 "ports": [{"containerPort": 9090}]}]}}}}),
        )
        .expect("patch");
        let web = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(web["image"], "echo:2");
        assert_eq!(
            web["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(
            web["ports"],
            json!([{"containerPort": 8080}, {"containerPort": 9090}])
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][1]["name"],
            "side"
        );
    }

    #[test]
    fn directives_delete_replace_order_and_retain() {
        let mut d = deployment();
        strategic_merge(
            &mut d,
            &json!({"metadata": {"labels": {"tier": null}},
                "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                    "template": {"spec": {
                        "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
                        "containers": [{"name": "web", "$patch": "delete"}, {"name": "side", "image": "side:2"}]}}}}),
        )
        .expect("patch");
        assert_eq!(d["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "side", "image": "side:2"}])
        );
        let mut d = deployment();
        strategic_merge(
            &mut d,
            &json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}}}}),
        )
        .expect("patch");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["name"],
            "side"
        );
        let mut d = deployment();
        strategic_merge(
            &mut d,
            &json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
        )
        .expect("patch");
        assert_eq!(d["metadata"]["labels"], json!({"only": "this"}));
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced_and_items_need_their_key() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "command": ["a", "b"]}]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "c", "command": ["z"]}]}}),
        )
        .expect("patch");
        assert_eq!(pod["spec"]["containers"][0]["command"], json!(["z"]));
        let error = strategic_merge(&mut pod, &json!({"spec": {"containers": [{"image": "x"}]}}))
            .expect_err("no name");
        assert_eq!(
            error.to_string(),
            "spec.containers[0]: has no merge key \"name\""
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let mut service = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        strategic_merge(
            &mut service,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
        )
        .expect("patch");
        assert_eq!(
            service["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }
}
