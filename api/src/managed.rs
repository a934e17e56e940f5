//! Field ownership (`metadata.managedFields`) and server-side apply, after Kubernetes'
//! sigs.k8s.io/structured-merge-diff: every write names a manager; an applied
//! configuration's fields become its manager's, fields it applied before and no longer
//! does are removed unless another manager owns them, and changing a field another
//! manager owns is a conflict unless forced. Field sets travel in Kubernetes' `FieldsV1`
//! encoding (`f:<field>`, `k:{<list-map keys>}` for list items, `.` for a node owned
//! itself), list items identified by the same keys as strategic merge patch.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::patch::{list_map_key_default, list_map_keys};

/// The operation of a server-side apply.
pub const APPLY: &str = "Apply";
/// The operation of every other write (create, update, patch).
pub const UPDATE: &str = "Update";
/// The one encoding of field sets.
pub const FIELDS_V1: &str = "FieldsV1";

/// One manager's fields (Kubernetes' `ManagedFieldsEntry`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manager: String,
    /// `Apply` or `Update`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// RFC 3339: when the manager last changed what it owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fields_type: String,
    #[serde(default, rename = "fieldsV1", skip_serializing_if = "Value::is_null")]
    pub fields_v1: Value,
    /// The subresource written through (`scale`), empty for the object itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

impl ManagedFieldsEntry {
    /// What makes the entry one Kubernetes would refuse: (field, reason).
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut problems = Vec::new();
        if self.manager.len() > 128 {
            problems.push(("manager", "must be at most 128 characters"));
        }
        if !matches!(self.operation.as_str(), APPLY | UPDATE) {
            problems.push(("operation", "must be Apply or Update"));
        }
        if self.fields_type != FIELDS_V1 {
            problems.push(("fieldsType", "must be FieldsV1"));
        } else if FieldSet::from_fields_v1(&self.fields_v1).is_none() {
            problems.push((
                "fieldsV1",
                "must be a FieldsV1 set (f:, k:, v:, i: and . keys)",
            ));
        }
        problems
    }

    fn same_manager(&self, other: &ManagedFieldsEntry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
    }

    /// How a conflict names the manager, as Kubernetes prints it.
    fn describe(&self) -> String {
        let mut text = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            text.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == UPDATE {
            text.push_str(&format!(" using {}", self.api_version));
            if let Some(time) = &self.time {
                text.push_str(&format!(" at {time}"));
            }
        }
        text
    }
}

/// Who writes: the manager the write's fields are recorded for.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// Empty, or the subresource written through.
    pub subresource: &'a str,
    /// RFC 3339, now.
    pub time: &'a str,
}

impl Writer<'_> {
    fn entry(&self, operation: &str, set: &FieldSet) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: self.manager.to_owned(),
            operation: operation.to_owned(),
            api_version: self.api_version.to_owned(),
            time: Some(self.time.to_owned()),
            fields_type: FIELDS_V1.to_owned(),
            fields_v1: set.to_fields_v1(),
            subresource: self.subresource.to_owned(),
        }
    }
}

/// A set of field paths, as a tree: each node is one path element (`f:spec`,
/// `k:{"name":"web"}`) and may be a member itself (`.`) besides holding deeper ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

static EMPTY: FieldSet = FieldSet {
    member: false,
    children: BTreeMap::new(),
};

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for element in path {
            node = node.children.entry(element.clone()).or_default();
        }
        node.member = true;
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut children = self.children.clone();
        for (element, theirs) in &other.children {
            let merged = match children.get(element) {
                Some(ours) => ours.union(theirs),
                None => theirs.clone(),
            };
            children.insert(element.clone(), merged);
        }
        FieldSet {
            member: self.member || other.member,
            children,
        }
    }

    /// The members of `self` that are not members of `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet {
            member: self.member && !other.member,
            children: self
                .children
                .iter()
                .map(|(e, ours)| {
                    (
                        e.clone(),
                        ours.difference(other.children.get(e).unwrap_or(&EMPTY)),
                    )
                })
                .filter(|(_, left)| !left.is_empty())
                .collect(),
        }
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet {
            member: self.member && other.member,
            children: self
                .children
                .iter()
                .filter_map(|(e, ours)| {
                    let both = ours.intersection(other.children.get(e)?);
                    (!both.is_empty()).then(|| (e.clone(), both))
                })
                .collect(),
        }
    }

    /// Every member as Kubernetes prints a field path: `.spec.replicas`,
    /// `.spec.template.spec.containers[name="web"].image`.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(&mut String::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut String, out: &mut Vec<String>) {
        for (element, child) in &self.children {
            let at = prefix.len();
            prefix.push_str(&display_element(element));
            if child.member {
                out.push(prefix.clone());
            }
            child.collect_paths(prefix, out);
            prefix.truncate(at);
        }
    }

    /// The `FieldsV1` form.
    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".to_owned(), Value::Object(Map::new()));
        }
        for (element, child) in &self.children {
            map.insert(element.clone(), child.to_fields_v1());
        }
        Value::Object(map)
    }

    /// Reads the `FieldsV1` form; None if it is not one.
    pub fn from_fields_v1(value: &Value) -> Option<FieldSet> {
        Self::node_from(value).map(|mut set| {
            set.member = false;
            set
        })
    }

    fn node_from(value: &Value) -> Option<FieldSet> {
        let map = value.as_object()?;
        let mut node = FieldSet {
            member: map.is_empty(),
            children: BTreeMap::new(),
        };
        for (element, child) in map {
            if element == "." {
                node.member = true;
                continue;
            }
            let valid = ["f:", "k:", "v:", "i:"]
                .iter()
                .any(|prefix| element.starts_with(prefix));
            if !valid {
                return None;
            }
            node.children
                .insert(element.clone(), Self::node_from(child)?);
        }
        Some(node)
    }
}

/// `f:replicas` → `.replicas`, `k:{"name":"web"}` → `[name="web"]`.
fn display_element(element: &str) -> String {
    if let Some(field) = element.strip_prefix("f:") {
        return format!(".{field}");
    }
    if let Some(key) = element.strip_prefix("k:") {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(key) else {
            return format!("[{key}]");
        };
        let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return format!("[{}]", parts.join(","));
    }
    if let Some(value) = element.strip_prefix("v:") {
        return format!("[={value}]");
    }
    match element.strip_prefix("i:") {
        Some(index) => format!("[{index}]"),
        None => element.to_owned(),
    }
}

/// Fields whose value is owned whole, whatever is inside (Kubernetes' atomic selectors).
fn atomic(field: Option<&str>) -> bool {
    field == Some("selector")
}

/// The path element naming `item` of a list whose items are identified by `keys`.
fn item_element(keys: &[&str], item: &Value) -> Option<String> {
    let map = item.as_object()?;
    let mut fields = BTreeMap::new();
    for key in keys {
        match map.get(*key) {
            Some(value) if !value.is_null() => {
                fields.insert(*key, value.clone());
            }
            _ => {
                if let Some(default) = list_map_key_default(key) {
                    fields.insert(*key, Value::String(default.to_owned()));
                }
            }
        }
    }
    if fields.is_empty() {
        return None;
    }
    serde_json::to_string(&fields)
        .ok()
        .map(|text| format!("k:{text}"))
}

/// How a value is walked.
enum Shape<'a> {
    /// Fields, each its own path.
    Map(&'a Map<String, Value>),
    /// Items identified by keys: (element, item).
    Keyed(Vec<(String, &'a Value)>),
    /// Owned whole.
    Leaf,
}

fn shape<'a>(value: &'a Value, parent: Option<&str>, field: Option<&str>) -> Shape<'a> {
    match value {
        Value::Object(map) if !map.is_empty() && !atomic(field) => Shape::Map(map),
        Value::Array(items) if !items.is_empty() => {
            let Some(keys) = field.and_then(|f| list_map_keys(parent, f)) else {
                return Shape::Leaf;
            };
            let elements: Option<Vec<(String, &Value)>> = items
                .iter()
                .map(|item| item_element(keys, item).map(|e| (e, item)))
                .collect();
            match elements {
                Some(elements) => Shape::Keyed(elements),
                None => Shape::Leaf,
            }
        }
        _ => Shape::Leaf,
    }
}

/// What changed between two objects, as field sets.
#[derive(Debug, Default)]
struct Comparison {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

impl Comparison {
    fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

fn compare(
    a: Option<&Value>,
    b: Option<&Value>,
    (parent, field): (Option<&str>, Option<&str>),
    path: &mut Vec<String>,
    out: &mut Comparison,
) {
    let empty = Map::new();
    match (
        a.map(|v| shape(v, parent, field)),
        b.map(|v| shape(v, parent, field)),
    ) {
        (None, None) => {}
        (Some(Shape::Map(am)), Some(Shape::Map(bm))) => compare_fields(am, bm, field, path, out),
        (Some(Shape::Map(am)), None) => compare_fields(am, &empty, field, path, out),
        (None, Some(Shape::Map(bm))) => compare_fields(&empty, bm, field, path, out),
        (Some(Shape::Keyed(ai)), Some(Shape::Keyed(bi))) => {
            compare_items(&ai, &bi, field, path, out)
        }
        (Some(Shape::Keyed(ai)), None) => compare_items(&ai, &[], field, path, out),
        (None, Some(Shape::Keyed(bi))) => compare_items(&[], &bi, field, path, out),
        _ => match (a, b) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            (Some(a), Some(b)) if a != b => out.modified.insert(path),
            _ => {}
        },
    }
}

fn compare_fields(
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    field: Option<&str>,
    path: &mut Vec<String>,
    out: &mut Comparison,
) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        path.push(format!("f:{key}"));
        compare(a.get(key), b.get(key), (field, Some(key)), path, out);
        path.pop();
    }
}

fn compare_items<'v>(
    a: &[(String, &'v Value)],
    b: &[(String, &'v Value)],
    field: Option<&str>,
    path: &mut Vec<String>,
    out: &mut Comparison,
) {
    fn find<'v>(items: &[(String, &'v Value)], element: &str) -> Option<&'v Value> {
        items
            .iter()
            .find(|(e, _)| e == element)
            .map(|(_, item)| *item)
    }
    let elements: BTreeSet<&String> = a.iter().chain(b).map(|(e, _)| e).collect();
    for element in elements {
        path.push(element.clone());
        let (old, new) = (find(a, element), find(b, element));
        match (old, new) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            _ => {}
        }
        compare(old, new, (None, field), path, out);
        path.pop();
    }
}

/// The fields `object` sets, metadata the server owns left out.
pub fn field_set(object: &Value) -> FieldSet {
    differs(None, object).added
}

/// `object` without what no manager owns: type, status and the server's metadata.
fn owned_part(object: &Value) -> Value {
    let mut object = object.clone();
    if let Value::Object(map) = &mut object {
        for field in ["apiVersion", "kind", "status"] {
            map.remove(field);
        }
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            for field in [
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                meta.remove(field);
            }
            if meta.is_empty() {
                map.remove("metadata");
            }
        }
    }
    object
}

/// What changed from `a` (None: nothing) to `b`, both objects, in what managers own.
fn differs(a: Option<&Value>, b: &Value) -> Comparison {
    let mut out = Comparison::default();
    let empty = Map::new();
    let (a, b) = (a.map(owned_part), owned_part(b));
    compare_fields(
        a.as_ref().and_then(Value::as_object).unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
        None,
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// A manager's entry with its fields read.
struct Managed {
    entry: ManagedFieldsEntry,
    set: FieldSet,
}

/// The entries of `metadata.managedFields`; entries that are not valid are dropped, as
/// Kubernetes drops what it cannot decode.
fn read_entries(entries: &[ManagedFieldsEntry]) -> Vec<Managed> {
    entries
        .iter()
        .filter(|e| {
            !e.manager.is_empty()
                && matches!(e.operation.as_str(), APPLY | UPDATE)
                && e.fields_type == FIELDS_V1
        })
        .filter_map(|e| {
            Some(Managed {
                set: FieldSet::from_fields_v1(&e.fields_v1)?,
                entry: e.clone(),
            })
        })
        .collect()
}

/// The entries of `metadata.managedFields` of an object as JSON.
pub fn entries_of(object: &Value) -> Vec<ManagedFieldsEntry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn written(managed: Vec<Managed>) -> Vec<ManagedFieldsEntry> {
    managed
        .into_iter()
        .filter(|m| !m.set.is_empty())
        .map(|m| ManagedFieldsEntry {
            fields_v1: m.set.to_fields_v1(),
            ..m.entry
        })
        .collect()
}

/// The entries after `writer`'s ordinary write (operation `Update`) changed `old` (None:
/// a create) into `new`, whose entries are `entries`: what changed becomes the writer's
/// and no one else's, and what was removed is no one's. Nothing changed: `entries` as
/// they are.
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    entries: &[ManagedFieldsEntry],
    writer: &Writer<'_>,
) -> Vec<ManagedFieldsEntry> {
    let mut managed = read_entries(entries);
    let comparison = differs(old, new);
    if comparison.is_empty() {
        return written(managed);
    }
    let changed = comparison.changed();
    let mine = writer.entry(UPDATE, &FieldSet::default());
    let mut own = FieldSet::default();
    for m in &mut managed {
        if m.entry.same_manager(&mine) {
            own = m.set.clone();
        } else {
            m.set = m.set.difference(&changed).difference(&comparison.removed);
        }
    }
    let own = own.difference(&comparison.removed).union(&changed);
    managed.retain(|m| !m.entry.same_manager(&mine));
    managed.push(Managed {
        entry: writer.entry(UPDATE, &own),
        set: own,
    });
    written(managed)
}

/// A field another manager owns with another value than an apply sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager, as Kubernetes prints it: `"kubectl" with subresource "scale" using apps/v1`.
    pub manager: String,
    /// `.spec.replicas`.
    pub path: String,
}

/// Kubernetes' message for an apply refused by `conflicts`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [one] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            one.manager, one.path
        );
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(&c.manager).or_default().push(&c.path);
    }
    let mut lines = Vec::new();
    for (manager, paths) in by_manager {
        lines.push(format!("conflicts with {manager}:"));
        lines.extend(paths.iter().map(|p| format!("- {p}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// `config` without `null`s (an applied configuration leaves a field out to drop it) and
/// without managedFields.
fn clean_config(config: &Value) -> Value {
    match config {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| !v.is_null() && k.as_str() != "managedFields")
                .map(|(k, v)| (k.clone(), clean_config(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(clean_config).collect()),
        other => other.clone(),
    }
}

/// `config` merged into `target`: maps field by field, keyed lists item by item, every
/// other value replaced.
fn merge(target: &mut Value, config: &Value, (parent, field): (Option<&str>, Option<&str>)) {
    match (shape(config, parent, field), target) {
        (Shape::Map(fields), Value::Object(existing)) => {
            for (key, value) in fields {
                match existing.get_mut(key) {
                    Some(current) if !current.is_null() => {
                        merge(current, value, (field, Some(key)));
                    }
                    _ => {
                        existing.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Shape::Keyed(items), target @ Value::Array(_)) => {
            let keys = field
                .and_then(|f| list_map_keys(parent, f))
                .unwrap_or_default();
            let Value::Array(existing) = target else {
                return;
            };
            for (element, item) in items {
                let at = existing
                    .iter()
                    .position(|e| item_element(keys, e).as_deref() == Some(element.as_str()));
                match at {
                    Some(at) => merge(&mut existing[at], item, (None, field)),
                    None => existing.push(item.clone()),
                }
            }
        }
        (_, target) => *target = config.clone(),
    }
}

/// Removes from `target` what `set` names and `keep` does not, keeping any value `keep`
/// owns part of; `protected` are the key fields of the item `target` is.
fn remove(
    target: &mut Value,
    set: &FieldSet,
    keep: &FieldSet,
    (parent, field): (Option<&str>, Option<&str>),
    protected: &[&str],
) {
    for (element, node) in &set.children {
        let kept = keep.children.get(element).unwrap_or(&EMPTY);
        let whole = node.member && kept.is_empty();
        if let Some(name) = element.strip_prefix("f:") {
            if protected.contains(&name) {
                continue;
            }
            let Value::Object(map) = target else {
                continue;
            };
            if whole {
                map.remove(name);
            } else if let Some(child) = map.get_mut(name) {
                remove(child, node, kept, (field, Some(name)), &[]);
                // A map or list the removal emptied goes too.
                let emptied = match child {
                    Value::Object(m) => m.is_empty(),
                    Value::Array(items) => items.is_empty(),
                    _ => false,
                };
                if emptied {
                    map.remove(name);
                }
            }
        } else if element.starts_with("k:") {
            let keys = field
                .and_then(|f| list_map_keys(parent, f))
                .unwrap_or_default();
            let Value::Array(items) = target else {
                continue;
            };
            let Some(at) = items
                .iter()
                .position(|i| item_element(keys, i).as_deref() == Some(element.as_str()))
            else {
                continue;
            };
            if whole {
                items.remove(at);
            } else {
                remove(&mut items[at], node, kept, (None, field), keys);
            }
        }
    }
}

/// Removes from `config` the fields at `paths` (dotted, list items by their index in
/// `object`, the merged object the paths were found in): fields the server does not
/// store are no one's to own.
pub fn without_paths(config: &mut Value, object: &Value, paths: &[String]) {
    for path in paths {
        let segments: Vec<&str> = path.split('.').collect();
        remove_at(config, object, &segments, (None, None));
    }
}

fn remove_at(
    config: &mut Value,
    object: &Value,
    segments: &[&str],
    (parent, field): (Option<&str>, Option<&str>),
) {
    let [first, rest @ ..] = segments else {
        return;
    };
    match (config, object) {
        (Value::Object(config), Value::Object(object)) => {
            if rest.is_empty() {
                config.remove(*first);
            } else if let (Some(c), Some(o)) = (config.get_mut(*first), object.get(*first)) {
                remove_at(c, o, rest, (field, Some(first)));
            }
        }
        (Value::Array(config), Value::Array(object)) => {
            let Some(item) = first.parse::<usize>().ok().and_then(|i| object.get(i)) else {
                return;
            };
            let at = match field.and_then(|f| list_map_keys(parent, f)) {
                Some(keys) => {
                    let wanted = item_element(keys, item);
                    config
                        .iter()
                        .position(|c| wanted.is_some() && item_element(keys, c) == wanted)
                }
                // A list owned whole is the configuration's own, item for item.
                None => first.parse::<usize>().ok().filter(|i| *i < config.len()),
            };
            let Some(at) = at else {
                return;
            };
            if rest.is_empty() {
                config.remove(at);
            } else {
                remove_at(&mut config[at], item, rest, (None, field));
            }
        }
        _ => {}
    }
}

/// Whether two lists of entries give every manager the same fields (times aside).
pub fn same_owners(a: &[ManagedFieldsEntry], b: &[ManagedFieldsEntry]) -> bool {
    let key = |e: &ManagedFieldsEntry| {
        (
            e.manager.clone(),
            e.operation.clone(),
            e.subresource.clone(),
            e.fields_v1.clone(),
        )
    };
    a.len() == b.len() && a.iter().map(key).eq(b.iter().map(key))
}

/// Server-side apply of `config` by `writer` to `live` (None: the object does not exist
/// yet), whose entries are `entries`. Ok: the object to write and its entries (the same
/// as `live`'s when nothing changes); Err: the conflicts, unless `force` moved them.
pub fn apply(
    live: Option<&Value>,
    entries: &[ManagedFieldsEntry],
    config: &Value,
    writer: &Writer<'_>,
    force: bool,
) -> Result<(Value, Vec<ManagedFieldsEntry>), Vec<Conflict>> {
    let config = clean_config(config);
    let mut managed = read_entries(entries);
    let mine = writer.entry(APPLY, &FieldSet::default());
    let mut merged = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    merge(&mut merged, &config, (None, None));
    let applied = field_set(&config);
    let last = managed
        .iter()
        .find(|m| m.entry.same_manager(&mine))
        .map(|m| m.set.clone())
        .unwrap_or_default();
    let others = managed
        .iter()
        .filter(|m| !m.entry.same_manager(&mine))
        .fold(FieldSet::default(), |all, m| all.union(&m.set));
    remove(
        &mut merged,
        &last.difference(&applied),
        &applied.union(&others),
        (None, None),
        &[],
    );
    let comparison = differs(live, &merged);
    let changed = comparison.changed();
    let mut conflicts = Vec::new();
    for m in managed.iter_mut().filter(|m| !m.entry.same_manager(&mine)) {
        let taken = m.set.intersection(&changed);
        conflicts.extend(taken.paths().into_iter().map(|path| Conflict {
            manager: m.entry.describe(),
            path,
        }));
        m.set = m.set.difference(&taken).difference(&comparison.removed);
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let unchanged = comparison.is_empty() && last == applied;
    match managed.iter_mut().find(|m| m.entry.same_manager(&mine)) {
        Some(m) if unchanged => m.set = applied,
        Some(m) => {
            m.entry = writer.entry(APPLY, &applied);
            m.set = applied;
        }
        None => managed.push(Managed {
            entry: writer.entry(APPLY, &applied),
            set: applied,
        }),
    }
    Ok((merged, written(managed)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const WRITER: Writer<'static> = Writer {
        manager: "alice",
        api_version: "apps/v1",
        subresource: "",
        time: "2026-01-01T00:00:00Z",
    };

    fn bob() -> Writer<'static> {
        Writer {
            manager: "bob",
            ..WRITER
        }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": image, "ports": [{"containerPort": 8080}]}]}}}})
    }

    #[test]
    fn field_sets_are_kubernetes_fields_v1() {
        let set = field_set(&deployment(2, "echo:1"));
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {},
                    "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}}}}}}}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), Some(set));
        assert!(
            FieldSet::from_fields_v1(&json!({"spec": {}})).is_none(),
            "elements need a prefix"
        );
    }

    #[test]
    fn applying_again_changes_nothing_and_dropped_fields_go() {
        let (first, entries) =
            apply(None, &[], &deployment(2, "echo:1"), &WRITER, false).expect("apply");
        let (again, entries_again) = apply(
            Some(&first),
            &entries,
            &deployment(2, "echo:1"),
            &WRITER,
            false,
        )
        .expect("apply");
        assert_eq!((again, entries_again), (first.clone(), entries.clone()));
        let mut smaller = deployment(2, "echo:1");
        smaller["metadata"]
            .as_object_mut()
            .map(|m| m.remove("labels"));
        let later = Writer {
            time: "2026-01-02T00:00:00Z",
            ..WRITER
        };
        let (pruned, entries) =
            apply(Some(&first), &entries, &smaller, &later, false).expect("apply");
        assert_eq!(pruned["metadata"].get("labels"), None);
        assert_eq!(entries[0].time.as_deref(), Some("2026-01-02T00:00:00Z"));
    }

    #[test]
    fn another_managers_field_conflicts_unless_equal_or_forced() {
        let (live, entries) =
            apply(None, &[], &deployment(2, "echo:1"), &WRITER, false).expect("apply");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        let entries = record_update(Some(&live), &scaled, &entries, &bob());
        assert_eq!(entries[1].fields_v1, json!({"f:spec": {"f:replicas": {}}}));
        let conflicts = apply(
            Some(&scaled),
            &entries,
            &deployment(3, "echo:1"),
            &WRITER,
            false,
        )
        .expect_err("conflict");
        assert_eq!(
            conflicts,
            vec![Conflict {
                manager: "\"bob\" using apps/v1 at 2026-01-01T00:00:00Z".to_owned(),
                path: ".spec.replicas".to_owned()
            }]
        );
        assert_eq!(
            conflict_message(&conflicts),
            "Apply failed with 1 conflict: conflict with \"bob\" using apps/v1 at 2026-01-01T00:00:00Z: .spec.replicas"
        );
        // Applying the value bob set shares the field.
        let (same, shared) = apply(
            Some(&scaled),
            &entries,
            &deployment(5, "echo:1"),
            &WRITER,
            false,
        )
        .expect("no conflict");
        assert_eq!(same["spec"]["replicas"], 5);
        assert_eq!(shared.len(), 2);
        let (forced, moved) = apply(
            Some(&scaled),
            &entries,
            &deployment(3, "echo:1"),
            &WRITER,
            true,
        )
        .expect("forced");
        assert_eq!(forced["spec"]["replicas"], 3);
        assert_eq!(moved.len(), 1, "bob owned nothing else: {moved:?}");
    }

    #[test]
    fn paths_the_server_dropped_leave_the_configuration() {
        let mut config = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "echo:1", "surprise": 1}], "priorityClassName": "high"}}}});
        let merged = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "side", "image": "side:1"},
            {"name": "web", "image": "echo:1", "surprise": 1}], "priorityClassName": "high"}}}});
        without_paths(
            &mut config,
            &merged,
            &[
                "spec.template.spec.containers.1.surprise".to_owned(),
                "spec.template.spec.priorityClassName".to_owned(),
            ],
        );
        assert_eq!(
            config,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "echo:1"}]}}}})
        );
    }

    #[test]
    fn a_field_another_manager_owns_survives_its_removal_from_the_apply() {
        let (live, entries) =
            apply(None, &[], &deployment(2, "echo:1"), &WRITER, false).expect("apply");
        let (live, entries) = apply(
            Some(&live),
            &entries,
            &deployment(2, "echo:1"),
            &bob(),
            false,
        )
        .expect("bob");
        let mut smaller = deployment(2, "echo:1");
        smaller["spec"]
            .as_object_mut()
            .map(|s| s.remove("replicas"));
        let (kept, _) = apply(Some(&live), &entries, &smaller, &WRITER, false).expect("apply");
        assert_eq!(kept["spec"]["replicas"], 2);
    }
}
