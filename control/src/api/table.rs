//! Table responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), which
//! `kubectl get` asks for first: the columns of berth-api's `table` for the kind, one row
//! per object, and each row's object as metadata only unless the client asks for more
//! (`includeObject`).

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use berth_api::{ResourceType, table};
use serde_json::{Value, json};

/// The Table version the client asks for first, if it prefers a Table to the object
/// itself: Accept lists what it takes in order, and the first one served wins.
pub fn requested(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for choice in accept.split(',') {
        let mut parts = choice.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        if !matches!(media, "application/json" | "*/*" | "application/*") {
            continue;
        }
        match (params.get("as"), params.get("g"), params.get("v")) {
            (None, _, _) => return None,
            (Some(&"Table"), Some(&"meta.k8s.io"), Some(&"v1")) => return Some("v1"),
            (Some(&"Table"), Some(&"meta.k8s.io"), Some(&"v1beta1")) => return Some("v1beta1"),
            _ => continue,
        }
    }
    None
}

/// `items` of kind `rt` as a Table of meta.k8s.io `version`.
pub fn of(
    rt: &ResourceType,
    items: &[Value],
    resource_version: &str,
    version: &str,
    query: &HashMap<String, String>,
) -> Value {
    let columns: Vec<Value> = table::columns(rt)
        .iter()
        .map(|column| {
            json!({
                "name": column.name,
                "type": "string",
                "format": if column.name == "Name" { "name" } else { "" },
                "description": "",
                "priority": i32::from(column.wide),
            })
        })
        .collect();
    let include = query
        .get("includeObject")
        .map_or("Metadata", String::as_str);
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut row = json!({"cells": table::cells(rt, item)});
            match include {
                "None" => {}
                "Object" => row["object"] = item.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": format!("meta.k8s.io/{version}"),
                        "metadata": item.get("metadata").cloned().unwrap_or(Value::Null),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, header::HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_first_acceptable_choice_wins() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(requested(&accept(kubectl)), Some("v1"));
        assert_eq!(
            requested(&accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io")),
            Some("v1beta1")
        );
        assert_eq!(
            requested(&accept(
                "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
            )),
            None
        );
        assert_eq!(
            requested(&accept(
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io"
            )),
            Some("v1")
        );
        assert_eq!(requested(&HeaderMap::new()), None);
    }
}
