//! Property-based tests of what users send: `berth_api::manifest::parse` (what `berthctl
//! apply` and the API's /apply call) and `ResourceType::decode` (what a create, replace or
//! patch of one object calls) over random text and over valid manifests mutated (fields
//! removed, values of other types, huge numbers, deep nesting, odd strings, edited text).
//! Neither may panic, and every error must say where: a field path or a line.
//!
//! Cases per property: `PROPTEST_CASES` (default below, a few seconds in all).

use berth_api::{
    DecodeError, RESOURCE_TYPES, Source, find_by_kind,
    manifest::{ManifestError, parse},
    validation::FieldError,
};
use proptest::{prelude::*, test_runner::Config};
use serde_json::{Value, json};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 512;

fn config() -> Config {
    let cases = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => Config::default().cases,
        None => DEFAULT_CASES,
    };
    Config::with_cases(cases)
}

/// Valid objects of the kinds users write most, with most of their fields set.
fn seeds() -> Vec<Value> {
    let pod_spec = json!({
        "containers": [{
            "name": "web",
            "image": "berth/echo:latest",
            "imagePullPolicy": "Never",
            "args": ["--port", "8080"],
            "env": [{"name": "MODE", "value": "test"},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": "http"}, "initialDelaySeconds": 1},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "readOnlyRootFilesystem": true},
        }],
        "volumes": [{"name": "config", "configMap": {"name": "web", "defaultMode": 420}}],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}],
    });
    vec![
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "annotations": {"note": "x"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec.clone()},
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}],
                "sessionAffinity": "ClientIP",
            },
        }),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "one", "labels": {"app": "web"}}, "spec": pod_spec}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}, "data": {"web.conf": "listen 8080\n"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "type": "Opaque",
               "stringData": {"password": "correct-horse"}, "data": {"user": "YWRtaW4="}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}}),
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 10,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
            },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        }),
    ]
}

/// Every kind, with a name and nothing else: what each decoder makes of a bare object.
fn bare_objects() -> Vec<Value> {
    RESOURCE_TYPES
        .iter()
        .map(|t| json!({"apiVersion": t.api_version(), "kind": t.kind, "metadata": {"name": "x"}}))
        .collect()
}

/// Numbers at the edges of every integer and float type a field may have.
fn edge_numbers() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(65_536),
        json!(i32::MAX),
        json!(i64::from(i32::MAX) + 1),
        json!(u32::MAX),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1e308),
        json!(-1e308),
        json!(0.5),
        json!(9_007_199_254_740_993_u64),
    ]
}

/// Strings that mean something else to YAML, to a shell, to a path or to a terminal.
fn odd_strings() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "\u{0}",
            "yes",
            "~",
            "null",
            "0x1F",
            ".inf",
            "-.nan",
            "1e999",
            "99999999999999999999999",
            "-0",
            "- a",
            "{a: b}",
            "[1, 2",
            "*anchor",
            "&anchor",
            "!!binary",
            "../../etc/passwd",
            "a\nb",
            "\u{202e}evil",
            "100Ki",
            "1e3m",
            "-5",
            "25%",
            "999999999999999999999%",
            "9999999999999999999Ei",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,24}",
        "[a-z0-9.-]{60,260}",
    ]
}

/// A value of any JSON type, edge numbers and odd strings weighted in.
fn replacement() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(edge_numbers()),
        odd_strings().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    /// The field or element at the node picked (by index, modulo the node count).
    Remove(usize),
    Replace(usize, Value),
    /// The node wrapped in this many arrays or objects.
    Nest(usize, usize, bool),
    /// A field of that name added to the object picked.
    Add(usize, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), replacement()).prop_map(|(at, v)| Mutation::Replace(at, v)),
        (any::<usize>(), 1..200usize, any::<bool>())
            .prop_map(|(at, d, a)| Mutation::Nest(at, d, a)),
        (any::<usize>(), "[a-zA-Z]{1,16}", replacement())
            .prop_map(|(at, k, v)| Mutation::Add(at, k, v)),
    ]
}

/// JSON pointers of every node but the root, in document order.
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Vec::new(),
    };
    for (step, child) in children {
        let pointer = format!("{at}/{step}");
        out.push(pointer.clone());
        pointers(child, &pointer, out);
    }
}

fn apply(document: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    pointers(document, "", &mut all);
    let pick = |at: usize| all.get(at % all.len().max(1)).cloned().unwrap_or_default();
    match mutation {
        Mutation::Remove(at) => {
            let pointer = pick(*at);
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                return;
            };
            match document.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
        Mutation::Replace(at, value) => {
            if let Some(node) = document.pointer_mut(&pick(*at)) {
                *node = value.clone();
            }
        }
        Mutation::Nest(at, depth, arrays) => {
            if let Some(node) = document.pointer_mut(&pick(*at)) {
                let mut nested = node.take();
                for _ in 0..*depth {
                    nested = if *arrays {
                        Value::Array(vec![nested])
                    } else {
                        json!({ "a": nested })
                    };
                }
                *node = nested;
            }
        }
        Mutation::Add(at, key, value) => {
            let pointer = pick(*at);
            if let Some(Value::Object(map)) = document.pointer_mut(&pointer) {
                map.insert(key.clone(), value.clone());
            } else if let Value::Object(map) = document {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A text edit of a serialized document: `(where, how many chars to delete, what to insert)`.
type Edit = (usize, usize, String);

fn edit() -> impl Strategy<Value = Edit> {
    (
        any::<usize>(),
        0..8usize,
        prop_oneof![
            Just(String::new()),
            Just("\n".to_owned()),
            Just("  ".to_owned()),
            Just("\n---\n".to_owned()),
            Just(": ".to_owned()),
            Just("- ".to_owned()),
            Just("\t".to_owned()),
            Just("{".to_owned()),
            Just("\"".to_owned()),
            Just("&a ".to_owned()),
            Just("*a".to_owned()),
            Just("<<: *a\n".to_owned()),
            odd_strings(),
        ],
    )
}

fn apply_edit(text: &str, (at, delete, insert): &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    let end = (at + delete).min(chars.len());
    let mut out: String = chars[..at].iter().collect();
    out.push_str(insert);
    out.extend(&chars[end..]);
    out
}

/// Where a field path starts: a field name (`spec.replicas`, `metadata.labels[app]`).
fn names_a_field(error: &FieldError) -> bool {
    error
        .field
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && !error.reason.is_empty()
}

/// Every error of a manifest says where: a line, or the fields at fault.
fn check_manifest(text: &str) -> Result<(), TestCaseError> {
    let Err(errors) = parse(text) else {
        return Ok(());
    };
    prop_assert!(!errors.is_empty());
    for error in &errors {
        match error {
            ManifestError::TooLarge { .. } => {}
            ManifestError::Malformed {
                document,
                line,
                message,
            } => {
                prop_assert!(*document >= 1, "{error}");
                prop_assert!(line.is_some(), "no line: {error} in {text:?}");
                prop_assert!(!message.is_empty(), "{error}");
            }
            ManifestError::Invalid {
                document,
                line,
                errors,
                ..
            } => {
                prop_assert!(*document >= 1 && *line >= 1, "{error}");
                prop_assert!(!errors.is_empty(), "invalid without a reason: {error}");
                for field in errors {
                    prop_assert!(names_a_field(field), "no field path: {field:?} in {error}");
                }
            }
        }
    }
    Ok(())
}

/// The same for one object as the API decodes a request body.
fn check_decode(document: &Value) -> Result<(), TestCaseError> {
    let kind = (
        document["apiVersion"].as_str().unwrap_or_default(),
        document["kind"].as_str().unwrap_or_default(),
    );
    let Some(resource_type) = find_by_kind(kind.0, kind.1) else {
        return Ok(());
    };
    let json = serde_json::to_vec(document).expect("serializes");
    let yaml = serde_norway::to_string(document).expect("serializes");
    for (source, has_lines) in [
        (Source::Json(&json), true),
        (Source::Yaml(&yaml), true),
        (Source::Value(document.clone()), false),
    ] {
        match resource_type.decode(source) {
            Ok(_) => {}
            Err(DecodeError::Malformed { line, message }) => {
                prop_assert!(!message.is_empty());
                prop_assert!(
                    !has_lines || line.is_some(),
                    "no line from a source with lines: {message}"
                );
            }
            Err(DecodeError::Invalid { errors }) => {
                prop_assert!(!errors.is_empty());
                for field in &errors {
                    prop_assert!(names_a_field(field), "no field path: {field:?}");
                }
            }
        }
    }
    Ok(())
}

fn any_seed() -> impl Strategy<Value = Value> {
    let mut all = seeds();
    all.extend(bare_objects());
    prop::sample::select(all)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_manifests_never_panic_and_every_error_says_where(
        seed in any_seed(),
        mutations in prop::collection::vec(mutation(), 1..5),
        yaml in any::<bool>(),
        edits in prop::collection::vec(edit(), 0..3),
    ) {
        let mut document = seed;
        for mutation in &mutations {
            apply(&mut document, mutation);
        }
        check_decode(&document)?;
        let text = if yaml {
            serde_norway::to_string(&document).expect("serializes")
        } else {
            serde_json::to_string_pretty(&document).expect("serializes")
        };
        check_manifest(&text)?;
        let edited = edits.iter().fold(text, |text, e| apply_edit(&text, e));
        check_manifest(&edited)?;
    }

    #[test]
    fn several_documents_and_lists_report_each_error_with_its_document(
        seeds in prop::collection::vec(any_seed(), 1..4),
        mutations in prop::collection::vec(mutation(), 0..3),
        as_list in any::<bool>(),
    ) {
        let mut documents = seeds;
        if let Some(first) = documents.first_mut() {
            for mutation in &mutations {
                apply(first, mutation);
            }
        }
        let text = if as_list {
            serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": documents}))
                .expect("serializes")
        } else {
            documents
                .iter()
                .map(|d| serde_norway::to_string(d).expect("serializes"))
                .collect::<Vec<_>>()
                .join("---\n")
        };
        check_manifest(&text)?;
        if let Err(errors) = parse(&text) {
            for error in &errors {
                let document = match error {
                    ManifestError::Malformed { document, .. }
                    | ManifestError::Invalid { document, .. } => *document,
                    ManifestError::TooLarge { .. } => 1,
                };
                let count = if as_list { 1 } else { documents.len() };
                prop_assert!(document <= count, "document {document} of {count}: {error}");
            }
        }
    }

    #[test]
    fn random_text_never_panics_and_every_error_says_where(
        text in prop_oneof![
            "\\PC{0,200}",
            "[a-zA-Z0-9:{}\\[\\],\"' \n\t#&*!|>-]{0,300}",
            "(apiVersion: (v1|apps/v1)\nkind: (Pod|Deployment|Service|List)\n)?[a-z: \n\\-{}\\[\\]0-9]{0,200}",
        ],
    ) {
        check_manifest(&text)?;
    }
}
