//! Label selectors (`app=web,tier!=db,env in (a,b),!canary`) and field selectors
//! (`spec.nodeName=node-1`) in the syntax `kubectl` uses, for list and watch.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::validation::{FieldPath, Validator};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// An empty selector matches everything (as in a list without `labelSelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let fail = |reason: String| SelectorError {
            selector: text.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        for term in split_terms(text).map_err(fail)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = parse_term(term).map_err(fail)?;
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::DoesNotExist(k) => k,
            };
            let mut v = Validator::default();
            v.label_key(&FieldPath::root("key"), key);
            if let Some(error) = v.into_errors().into_iter().next() {
                return Err(fail(format!("label key {key:?}: {}", error.reason)));
            }
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced ')'")?,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".to_owned());
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key.trim().to_owned()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().trim().to_owned();
    let rest = words.next().unwrap_or_default().trim();
    if rest.is_empty() {
        return Ok(Requirement::Exists(key));
    }
    let (op, list) = if let Some(list) = rest.strip_prefix("notin") {
        ("notin", list)
    } else if let Some(list) = rest.strip_prefix("in") {
        ("in", list)
    } else {
        return Err(format!("expected =, !=, in or notin after {key:?}"));
    };
    let list = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("{op} needs a parenthesised list of values"))?;
    let values: Vec<String> = list
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(format!("{op} needs at least one value"));
    }
    Ok(if op == "in" {
        Requirement::In(key, values)
    } else {
        Requirement::NotIn(key, values)
    })
}

/// `path=value` / `path!=value` terms over an object's JSON, e.g. `spec.nodeName=n1`,
/// `involvedObject.name=web`. A missing field compares as the empty string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, true, v)
            } else {
                return Err(SelectorError {
                    selector: text.to_owned(),
                    reason: format!("term {term:?} needs = or !="),
                });
            };
            let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(SelectorError {
                    selector: text.to_owned(),
                    reason: format!("bad field path in {term:?}"),
                });
            }
            terms.push((path, equal, value.trim().to_owned()));
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, expected)| {
            (value_at(object, path.iter().map(String::as_str)) == *expected) == *equal
        })
    }

    /// The value an equality term requires at `path` (dot-separated), if there is one:
    /// what a watch fan-out can index watchers by, since no other value can match.
    pub fn required(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, equal, _)| *equal && p.iter().map(String::as_str).eq(path.split('.')))
            .map(|(_, _, value)| value.as_str())
    }
}

/// The field at `path` (dot-separated) as field selectors compare it.
pub fn field_value(object: &Value, path: &str) -> String {
    value_at(object, path.split('.'))
}

fn value_at<'a>(object: &Value, mut path: impl Iterator<Item = &'a str>) -> String {
    path.try_fold(object, |v, seg| v.get(seg))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = Selector::parse(
            "app=web, tier!=db,env in (prod, staging),zone notin (a),canary,!legacy",
        )
        .expect("valid selector");
        assert_eq!(s.0.len(), 6);
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("canary", "")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("canary", "")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("canary", ""),
            ("legacy", "1")
        ])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
    }

    #[test]
    fn empty_selects_all() {
        assert!(
            Selector::parse("")
                .expect("empty")
                .matches(&BTreeMap::new())
        );
    }

    #[test]
    fn rejects_bad_syntax() {
        assert!(Selector::parse("env in (a").is_err());
        assert!(Selector::parse("env in a").is_err());
        assert!(Selector::parse("bad key=1").is_err());
        assert!(Selector::parse("env in ()").is_err());
    }

    #[test]
    fn field_selector() {
        let object = serde_json::json!({"spec": {"nodeName": "n1"}, "metadata": {"name": "p"}});
        let f = FieldSelector::parse("spec.nodeName=n1,metadata.name!=q").expect("valid");
        assert!(f.matches(&object));
        let f = FieldSelector::parse("spec.nodeName=").expect("valid");
        assert!(!f.matches(&object));
        assert!(f.matches(&serde_json::json!({})));
        assert!(FieldSelector::parse("nonsense").is_err());
    }

    #[test]
    fn field_selector_required_value() {
        let f = FieldSelector::parse("metadata.name!=q,spec.nodeName=n1").expect("valid");
        assert_eq!(f.required("spec.nodeName"), Some("n1"));
        assert_eq!(f.required("metadata.name"), None, "!= does not pin a value");
        assert_eq!(f.required("spec"), None);
        let object = serde_json::json!({"spec": {"nodeName": "n1"}});
        assert_eq!(field_value(&object, "spec.nodeName"), "n1");
        assert_eq!(field_value(&object, "spec.missing"), "");
    }
}
