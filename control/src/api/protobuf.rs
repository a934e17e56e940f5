//! The few objects kubectl sends in Kubernetes' protobuf encoding rather than JSON: its
//! typed clients' requests (`auth can-i`'s reviews; `create role`, `create rolebinding`,
//! `create clusterrole`, `create clusterrolebinding`). Each is read into its JSON form
//! and then goes the way a JSON body goes; answers are JSON, which kubectl reads.
//!
//! The envelope is the `k8s\0` magic and a runtime.Unknown whose field 2 holds the object
//! (k8s.io/apimachinery/pkg/runtime/serializer/protobuf); field numbers are those of
//! k8s.io/api's generated.proto.

use axum::http::{HeaderMap, header};
use berth_api::rbac::{
    NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReview,
    SelfSubjectAccessReviewSpec, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use serde_json::{Map, Value, json};

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

pub fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROTOBUF))
}

/// A message's length-delimited fields, by number, in order (varints skipped: none of
/// the fields read here is one); None when the bytes are not a protobuf message.
fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        match key & 7 {
            0 => {
                varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..)?,
            5 => bytes = bytes.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let value = bytes.get(..len)?;
                bytes = bytes.get(len..)?;
                out.push((key >> 3, value));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn field<'a>(fields: &[(u64, &'a [u8])], number: u64) -> Option<&'a [u8]> {
    fields.iter().find(|(n, _)| *n == number).map(|(_, v)| *v)
}

fn text(fields: &[(u64, &[u8])], number: u64) -> String {
    field(fields, number)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn texts(fields: &[(u64, &[u8])], number: u64) -> Vec<String> {
    fields
        .iter()
        .filter(|(n, _)| *n == number)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// The object inside the envelope.
fn object(bytes: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let unknown = fields(bytes.strip_prefix(b"k8s\0")?)?;
    fields(field(&unknown, 2)?)
}

/// A `map<string, string>` field: entries with key 1 and value 2.
fn string_map(fields: &[(u64, &[u8])], number: u64) -> Option<Map<String, Value>> {
    let mut map = Map::new();
    for (n, entry) in fields {
        if *n == number {
            let entry = self::fields(entry)?;
            map.insert(text(&entry, 1), json!(text(&entry, 2)));
        }
    }
    Some(map)
}

/// ObjectMeta's name (1), generateName (2), namespace (3), labels (11), annotations (12).
fn metadata(bytes: &[u8]) -> Option<Value> {
    let f = fields(bytes)?;
    let mut meta = json!({"name": text(&f, 1), "namespace": text(&f, 3)});
    let generate_name = text(&f, 2);
    if !generate_name.is_empty() {
        meta["generateName"] = json!(generate_name);
    }
    meta["labels"] = Value::Object(string_map(&f, 11)?);
    meta["annotations"] = Value::Object(string_map(&f, 12)?);
    Some(meta)
}

/// PolicyRule: verbs 1, apiGroups 2, resources 3, resourceNames 4, nonResourceURLs 5.
fn policy_rule(bytes: &[u8]) -> Option<Value> {
    let f = fields(bytes)?;
    Some(json!({
        "verbs": texts(&f, 1),
        "apiGroups": texts(&f, 2),
        "resources": texts(&f, 3),
        "resourceNames": texts(&f, 4),
        "nonResourceURLs": texts(&f, 5),
    }))
}

fn repeated(
    fields: &[(u64, &[u8])],
    number: u64,
    read: fn(&[u8]) -> Option<Value>,
) -> Option<Vec<Value>> {
    fields
        .iter()
        .filter(|(n, _)| *n == number)
        .map(|(_, v)| read(v))
        .collect()
}

/// An RBAC object of `kind` as JSON: Role and ClusterRole (metadata 1, rules 2,
/// ClusterRole's aggregationRule 3 of label selectors' matchLabels), RoleBinding and
/// ClusterRoleBinding (metadata 1, subjects 2, roleRef 3). None for another kind or bytes
/// that are not one.
pub fn rbac_object(api_version: &str, kind: &str, bytes: &[u8]) -> Option<Value> {
    let f = object(bytes)?;
    let mut out = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata(field(&f, 1).unwrap_or_default())?,
    });
    match kind {
        "Role" | "ClusterRole" => {
            out["rules"] = json!(repeated(&f, 2, policy_rule)?);
            if let Some(rule) = field(&f, 3) {
                let selectors = repeated(&fields(rule)?, 1, |selector| {
                    Some(json!({"matchLabels": string_map(&fields(selector)?, 1)?}))
                })?;
                out["aggregationRule"] = json!({"clusterRoleSelectors": selectors});
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            out["subjects"] = json!(repeated(&f, 2, |subject| {
                let s = fields(subject)?;
                Some(json!({
                    "kind": text(&s, 1),
                    "apiGroup": text(&s, 2),
                    "name": text(&s, 3),
                    "namespace": text(&s, 4),
                }))
            })?);
            let role_ref = fields(field(&f, 3).unwrap_or_default())?;
            out["roleRef"] = json!({
                "apiGroup": text(&role_ref, 1),
                "kind": text(&role_ref, 2),
                "name": text(&role_ref, 3),
            });
        }
        _ => return None,
    }
    Some(out)
}

/// SelfSubjectAccessReview: spec 2 with resourceAttributes 1 (namespace 1, verb 2, group
/// 3, version 4, resource 5, subresource 6, name 7) or nonResourceAttributes 2 (path 1,
/// verb 2).
pub fn access_review(bytes: &[u8]) -> Option<SelfSubjectAccessReview> {
    let object = object(bytes)?;
    let spec = fields(field(&object, 2).unwrap_or_default())?;
    let resource_attributes = match field(&spec, 1) {
        Some(raw) => {
            let f = fields(raw)?;
            Some(ResourceAttributes {
                namespace: text(&f, 1),
                verb: text(&f, 2),
                group: text(&f, 3),
                version: text(&f, 4),
                resource: text(&f, 5),
                subresource: text(&f, 6),
                name: text(&f, 7),
            })
        }
        None => None,
    };
    let non_resource_attributes = match field(&spec, 2) {
        Some(raw) => {
            let f = fields(raw)?;
            Some(NonResourceAttributes {
                path: text(&f, 1),
                verb: text(&f, 2),
            })
        }
        None => None,
    };
    Some(SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes,
            non_resource_attributes,
        },
        ..SelfSubjectAccessReview::default()
    })
}

/// SelfSubjectRulesReview: spec 2 with namespace 1.
pub fn rules_review(bytes: &[u8]) -> Option<SelfSubjectRulesReview> {
    let object = object(bytes)?;
    let spec = fields(field(&object, 2).unwrap_or_default())?;
    Some(SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: text(&spec, 1),
        },
        ..SelfSubjectRulesReview::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length-delimited field.
    fn ld(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, u8::try_from(bytes.len()).expect("short")];
        out.extend_from_slice(bytes);
        out
    }

    fn envelope(object: &[u8]) -> Vec<u8> {
        let mut out = b"k8s\0".to_vec();
        out.extend(ld(2, object));
        out
    }

    #[test]
    fn a_role_binding_reads_as_its_json() {
        let meta = [ld(1, b"rb"), ld(3, b"a")].concat();
        let subject = [
            ld(1, b"User"),
            ld(2, b"rbac.authorization.k8s.io"),
            ld(3, b"alice"),
        ]
        .concat();
        let role_ref = [
            ld(1, b"rbac.authorization.k8s.io"),
            ld(2, b"ClusterRole"),
            ld(3, b"view"),
        ]
        .concat();
        let binding = [ld(1, &meta), ld(2, &subject), ld(3, &role_ref)].concat();
        let json = rbac_object(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            &envelope(&binding),
        )
        .expect("a RoleBinding");
        assert_eq!(json["metadata"]["name"], "rb");
        assert_eq!(json["metadata"]["namespace"], "a");
        assert_eq!(json["subjects"][0]["name"], "alice");
        assert_eq!(json["roleRef"]["name"], "view");
        assert!(rbac_object("v1", "RoleBinding", b"not protobuf").is_none());
        let rule = [ld(1, b"get"), ld(1, b"list"), ld(2, b""), ld(3, b"pods")].concat();
        let role = [ld(1, &[ld(1, b"r")].concat()), ld(2, &rule)].concat();
        let json =
            rbac_object("rbac.authorization.k8s.io/v1", "Role", &envelope(&role)).expect("a Role");
        assert_eq!(json["rules"][0]["verbs"], json!(["get", "list"]));
        assert_eq!(json["rules"][0]["apiGroups"], json!([""]));
    }
}
