use berth_api::manifest::{MAX_MANIFEST_BYTES, ManifestError, parse};

const APP: &str = r#"# a comment before the first document
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      priorityClassName: high
      containers:
        - name: web
          image: berth/echo:latest
          imagePullPolicy: Never
          terminationMessagePath: /dev/termination-log
          ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
# trailing empty document
"#;

#[test]
fn multi_document_yaml_decodes_with_defaults() {
    let objects = parse(APP).expect("valid manifest");
    assert_eq!(objects.len(), 2);
    let deployment = &objects[0];
    assert_eq!(deployment.document, 1);
    assert_eq!(
        deployment.line, 2,
        "line of the first content, past the comment"
    );
    assert_eq!(deployment.resource_type.kind, "Deployment");
    let object = &deployment.decoded.object;
    assert_eq!(object["metadata"]["namespace"], "default");
    assert_eq!(object["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"],
        "TCP"
    );
    let service = &objects[1];
    assert_eq!((service.document, service.line), (2, 23));
    assert_eq!(service.decoded.object["metadata"]["namespace"], "shop");
}

#[test]
fn unsupported_kubernetes_fields_are_warnings_by_name() {
    let objects = parse(APP).expect("valid manifest");
    let warnings = &objects[0].decoded.warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("spec.template.spec.priorityClassName:")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("spec.template.spec.containers.0.terminationMessagePath:")),
        "{warnings:?}"
    );
    assert!(objects[1].decoded.warnings.is_empty());
    // Unknown fields are dropped from the canonical object, not stored.
    assert!(
        objects[0].decoded.object["spec"]["template"]["spec"]
            .get("priorityClassName")
            .is_none()
    );
}

#[test]
fn every_validation_error_is_reported_with_its_path() {
    let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: Bad_Name, labels: {"bad key": x}}
spec:
  replicas: -1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: other}}
    spec:
      containers:
        - {name: Web, image: "", ports: [{containerPort: 70000, protocol: SCTP}]}
"#;
    let errors = parse(text).expect_err("invalid");
    let [
        ManifestError::Invalid {
            document,
            kind,
            name,
            errors,
            ..
        },
    ] = errors.as_slice()
    else {
        panic!("{errors:?}");
    };
    assert_eq!(
        (*document, kind.as_str(), name.as_str()),
        (1, "Deployment", "Bad_Name")
    );
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "metadata.name",
        "metadata.labels[\"bad key\"]",
        "spec.replicas",
        "spec.template.metadata.labels",
        "spec.template.spec.containers[0].name",
        "spec.template.spec.containers[0].image",
        "spec.template.spec.containers[0].ports[0].containerPort",
        "spec.template.spec.containers[0].ports[0].protocol",
    ] {
        assert!(
            fields.contains(&expected),
            "missing {expected} in {fields:?}"
        );
    }
}

#[test]
fn syntax_and_type_errors_name_document_and_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n   bad: indent\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: c}\nspec:\n  replicas: three\n";
    let errors = parse(text).expect_err("two bad documents");
    assert_eq!(errors.len(), 2, "{errors:?}");
    match &errors[0] {
        ManifestError::Malformed {
            document: 2,
            line: Some(line),
            ..
        } => assert!((9..=10).contains(line), "{line}"),
        other => panic!("{other:?}"),
    }
    match &errors[1] {
        ManifestError::Malformed {
            document: 3,
            line: Some(16),
            message,
        } => {
            assert!(message.contains("replicas"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_kind_lists_the_supported_ones() {
    let errors = parse("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: x}\n")
        .expect_err("unsupported");
    let message = errors[0].to_string();
    assert!(
        message.contains("networking.k8s.io/v1 Ingress is not supported"),
        "{message}"
    );
    assert!(message.contains("apps/v1 Deployment"), "{message}");
}

#[test]
fn json_object_array_and_list() {
    let single = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"},"spec":{"podCIDR":"198.18.1.0/24"}}"#;
    assert_eq!(parse(single).expect("object").len(), 1);

    let two = format!("{single}\n{}", single.replace("n1", "n2"));
    let objects = parse(&two).expect("concatenated");
    assert_eq!(objects.iter().map(|o| o.line).collect::<Vec<_>>(), [1, 2]);

    let array = format!("[{single}, {}]", single.replace("n1", "n2"));
    assert_eq!(parse(&array).expect("array").len(), 2);

    let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{single}]}}"#);
    assert_eq!(parse(&list).expect("list").len(), 1);

    let bad = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"},"spec":{"podCIDR":"nonsense"}}"#;
    let errors = parse(bad).expect_err("bad cidr");
    assert!(
        errors[0].to_string().contains("spec.podCIDR"),
        "{}",
        errors[0]
    );

    let cluster_scoped =
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1","namespace":"x"}}"#;
    assert!(
        parse(cluster_scoped).expect_err("namespaced node")[0]
            .to_string()
            .contains("metadata.namespace")
    );
}

#[test]
fn size_limit() {
    let text = format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
    assert!(matches!(
        parse(&text).expect_err("too large")[0],
        ManifestError::TooLarge { .. }
    ));
}

#[test]
fn wrong_api_version_for_kind() {
    let errors =
        parse("apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n").expect_err("wrong group");
    assert!(
        errors[0]
            .to_string()
            .contains("v1 Deployment is not supported"),
        "{}",
        errors[0]
    );
}
