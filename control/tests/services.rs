//! What the control plane allocates for Services (clusterIPs, nodePorts, LoadBalancer
//! addresses) and Namespace objects, against a real HTTPS server and its store.

mod common;

use std::collections::BTreeSet;

use axum::http::Method;
use common::{TestServer, eventually, start_with};
use serde_json::{Value, json};

const SERVICES: &str = "/api/v1/namespaces/default/services";

fn service(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    if spec.get("ports").is_none() {
        spec["ports"] = json!([{"port": 80, "targetPort": 8080}]);
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

async fn create(t: &TestServer, name: &str, spec: Value) -> (u16, Value) {
    t.call(Method::POST, SERVICES, Some(&service(name, spec)))
        .await
}

/// The one cause of a 422, as (field, message).
fn cause(body: &Value) -> (String, String) {
    let causes = body["details"]["causes"].as_array().expect("causes");
    assert_eq!(causes.len(), 1, "{body}");
    (
        causes[0]["field"].as_str().unwrap_or_default().to_owned(),
        causes[0]["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn cluster_ip(service: &Value) -> String {
    service["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn node_port(service: &Value) -> i64 {
    service["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_ips_are_unique_under_concurrent_creates_survive_a_restart_and_are_released() {
    let flags = ["--no-controllers", "--service-cidr", "198.18.192.0/26"];
    let t = start_with(&flags).await;
    // 40 creates at once in a range of 62 addresses: they race for the same addresses.
    let names: Vec<String> = (0..40).map(|i| format!("svc-{i}")).collect();
    let created =
        futures_util::future::join_all(names.iter().map(|name| create(&t, name, json!({})))).await;
    let mut ips = BTreeSet::new();
    for (status, body) in &created {
        assert_eq!(*status, 201, "{body}");
        let ip: std::net::Ipv4Addr = cluster_ip(body).parse().expect("an IPv4 clusterIP");
        assert_eq!(
            ip.octets()[..3],
            [198, 18, 192],
            "{ip} is in --service-cidr"
        );
        assert!(
            (1..=62).contains(&ip.octets()[3]),
            "{ip}: no network/broadcast"
        );
        ips.insert(ip);
    }
    assert_eq!(ips.len(), 40, "every clusterIP is distinct");
    let first = cluster_ip(&created[0].1);

    let t = t.restart(&flags).await;
    let (status, body) = create(&t, "late", json!({"clusterIP": first})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        cause(&body),
        (
            "spec.clusterIP".to_owned(),
            format!("failed to allocate IP {first}: provided IP is already allocated")
        )
    );
    // Fill the rest of the range: allocation after the restart skips what is held.
    for i in 40..62 {
        let (status, body) = create(&t, &format!("svc-{i}"), json!({})).await;
        assert_eq!(status, 201, "{body}");
        assert!(!ips.contains(&cluster_ip(&body).parse().expect("IPv4")));
    }
    let (status, body) = create(&t, "one-too-many", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("is full")),
        "{body}"
    );

    // Released on delete: the address can be taken again, by name.
    let (status, _) = t
        .call(Method::DELETE, &format!("{SERVICES}/svc-0"), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = create(&t, "late", json!({"clusterIP": first})).await;
    assert_eq!((status, cluster_ip(&body)), (201, first), "{body}");
}

#[tokio::test]
async fn values_of_services_stored_before_allocation_are_reserved_at_start() {
    use berth_control::store::{Op, Precondition};
    let t = start_with(&["--no-controllers"]).await;
    let old = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "old", "namespace": "default", "uid": "u-old"},
        "spec": {"clusterIP": "198.18.192.77", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30777}]}});
    t.server
        .store()
        .commit(vec![Op::Put {
            key: "/core/services/default/old".into(),
            value: serde_json::to_vec(&old).expect("json"),
            precondition: Precondition::Absent,
        }])
        .expect("an object without allocation keys");
    let t = t.restart(&["--no-controllers"]).await;
    let (status, body) = create(&t, "new", json!({"clusterIP": "198.18.192.77"})).await;
    assert_eq!(status, 422, "{body}");
    let ports = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30777}]});
    let (status, body) = create(&t, "new", ports).await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn user_given_cluster_ips_are_checked_and_immutable() {
    let t = start_with(&["--no-controllers"]).await;
    let (status, body) = create(&t, "outside", json!({"clusterIP": "10.0.0.1"})).await;
    assert_eq!(status, 422, "{body}");
    let (field, message) = cause(&body);
    assert_eq!(field, "spec.clusterIP");
    assert!(
        message.contains("not in the valid range") && message.contains("198.18.192.0/18"),
        "{message}"
    );

    let (status, web) = create(&t, "web", json!({"clusterIP": "198.18.200.10"})).await;
    assert_eq!(
        (status, cluster_ip(&web)),
        (201, "198.18.200.10".to_owned()),
        "{web}"
    );

    // An update that leaves clusterIP out keeps it; one that changes it is refused.
    let mut update = service("web", json!({"selector": {"app": "web"}}));
    let (status, body) = t
        .call(Method::PUT, &format!("{SERVICES}/web"), Some(&update))
        .await;
    assert_eq!(
        (status, cluster_ip(&body)),
        (200, "198.18.200.10".to_owned()),
        "{body}"
    );
    update["spec"]["clusterIP"] = json!("198.18.200.11");
    let (status, body) = t
        .call(Method::PUT, &format!("{SERVICES}/web"), Some(&update))
        .await;
    assert_eq!(status, 422, "{body}");
    let (field, message) = cause(&body);
    assert_eq!(field, "spec.clusterIP");
    assert!(message.contains("immutable"), "{message}");
    let (_, stored) = t.call(Method::GET, &format!("{SERVICES}/web"), None).await;
    assert_eq!(cluster_ip(&stored), "198.18.200.10", "nothing changed");
    let (status, _) = create(&t, "other", json!({"clusterIP": "198.18.200.11"})).await;
    assert_eq!(status, 201, "the refused update took nothing");

    // Headless: no address.
    let (status, body) = create(&t, "headless", json!({"clusterIP": "None"})).await;
    assert_eq!(
        (status, cluster_ip(&body)),
        (201, "None".to_owned()),
        "{body}"
    );

    // The algorithm annotation is validated with its path.
    let mut random = service("random", json!({}));
    random["metadata"]["annotations"] = json!({"service.cilium.io/lb-algorithm": "round-robin"});
    let (status, body) = t.call(Method::POST, SERVICES, Some(&random)).await;
    assert_eq!(status, 422, "{body}");
    let (field, message) = cause(&body);
    assert_eq!(
        field,
        r#"metadata.annotations["service.cilium.io/lb-algorithm"]"#
    );
    assert!(
        message.contains("maglev") && message.contains("random"),
        "{message}"
    );
    random["metadata"]["annotations"]["service.cilium.io/lb-algorithm"] = json!("random");
    let (status, body) = t.call(Method::POST, SERVICES, Some(&random)).await;
    assert_eq!(status, 201, "{body}");
}

const NODE_PORT_APP: &str = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
";

#[tokio::test]
async fn node_ports_are_allocated_kept_across_applies_checked_and_released() {
    let t = start_with(&["--no-controllers"]).await;
    let (status, body) = t.apply(NODE_PORT_APP).await;
    assert_eq!(status, 200, "{body}");
    let (_, web) = t.call(Method::GET, &format!("{SERVICES}/web"), None).await;
    let ports: Vec<i64> = web["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["nodePort"].as_i64().expect("a nodePort"))
        .collect();
    assert!(
        ports.iter().all(|p| (30000..=32767).contains(p)),
        "{ports:?}"
    );
    assert_ne!(ports[0], ports[1]);
    let ip = cluster_ip(&web);

    // Applying the same manifest again changes nothing: no re-allocation.
    let (_, again) = t.apply(NODE_PORT_APP).await;
    assert_eq!(again["items"][0]["action"], "unchanged", "{again}");
    let (_, web) = t.call(Method::GET, &format!("{SERVICES}/web"), None).await;
    assert_eq!(node_port(&web), ports[0]);
    assert_eq!(cluster_ip(&web), ip);

    // A port held by another service is refused, with its path; nothing is written.
    let taken = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[0]}]});
    let (status, body) = create(&t, "thief", taken.clone()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        cause(&body),
        (
            "spec.ports[0].nodePort".to_owned(),
            format!("provided port {} is already allocated", ports[0])
        )
    );
    // The same port twice in one service is a validation error.
    let twice = json!({"type": "NodePort", "ports": [
        {"name": "a", "port": 80, "nodePort": 31000}, {"name": "b", "port": 81, "nodePort": 31000}]});
    let (status, body) = create(&t, "twice", twice).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(cause(&body).0, "spec.ports[1].nodePort");

    // Switching web to ClusterIP releases its ports.
    let (status, body) = t
        .apply(&NODE_PORT_APP.replace("type: NodePort", "type: ClusterIP"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, thief) = create(&t, "thief", taken).await;
    assert_eq!((status, node_port(&thief)), (201, ports[0]), "{thief}");
    // Deleting releases them too.
    let (status, _) = t
        .call(Method::DELETE, &format!("{SERVICES}/thief"), None)
        .await;
    assert_eq!(status, 200);
    let again = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[0]}]});
    let (status, _) = create(&t, "again", again).await;
    assert_eq!(status, 201);
}

fn load_balancer_ip(service: &Value) -> Option<String> {
    service
        .pointer("/status/loadBalancer/ingress/0/ip")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

async fn wait_for_address(t: &TestServer, name: &str) -> String {
    eventually(&format!("an address for {name}"), || async {
        let (_, body) = t
            .call(Method::GET, &format!("{SERVICES}/{name}"), None)
            .await;
        load_balancer_ip(&body)
    })
    .await
}

async fn events_for(t: &TestServer, name: &str) -> Vec<Value> {
    let (_, events) = t
        .call(
            Method::GET,
            &format!(
                "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"
            ),
            None,
        )
        .await;
    events["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn load_balancers_get_addresses_from_the_pool_or_wait_with_a_reason() {
    let t = start_with(&["--load-balancer-cidr", "198.18.128.0/30"]).await;
    let lb = json!({"type": "LoadBalancer", "selector": {"app": "web"}});
    let (status, body) = create(&t, "first", lb.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        node_port(&body) >= 30000,
        "a LoadBalancer also gets nodePorts: {body}"
    );
    assert_eq!(wait_for_address(&t, "first").await, "198.18.128.1");

    let mut wanted = lb.clone();
    wanted["loadBalancerIP"] = json!("198.18.128.2");
    let (status, _) = create(&t, "second", wanted).await;
    assert_eq!(status, 201);
    assert_eq!(wait_for_address(&t, "second").await, "198.18.128.2");

    // The pool (two addresses) is exhausted: pending, with an event saying why.
    let (status, _) = create(&t, "third", lb.clone()).await;
    assert_eq!(status, 201);
    let message = eventually("a pending event for third", || async {
        events_for(&t, "third")
            .await
            .iter()
            .find(|e| e["reason"] == "AllocationFailed")
            .and_then(|e| e["message"].as_str().map(str::to_owned))
    })
    .await;
    assert!(message.contains("198.18.128.0/30"), "{message}");
    let (_, third) = t
        .call(Method::GET, &format!("{SERVICES}/third"), None)
        .await;
    assert_eq!(load_balancer_ip(&third), None);
    assert_eq!(
        third["status"]["conditions"][0]["status"], "False",
        "{third}"
    );

    // A status write cannot take an address another service holds.
    let mut stolen = third.clone();
    stolen["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.18.128.1"}]}});
    let (status, body) = t
        .call(
            Method::PUT,
            &format!("{SERVICES}/third/status"),
            Some(&stolen),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Deleting the first frees its address for the pending one.
    let (status, _) = t
        .call(Method::DELETE, &format!("{SERVICES}/first"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(wait_for_address(&t, "third").await, "198.18.128.1");

    // A service that stops being a LoadBalancer gives its address back at once (well
    // before the 60 s resync): a pending one takes it.
    let (status, _) = create(&t, "fourth", lb.clone()).await;
    assert_eq!(status, 201);
    eventually("fourth pending", || async {
        let (_, fourth) = t
            .call(Method::GET, &format!("{SERVICES}/fourth"), None)
            .await;
        (fourth["status"]["conditions"][0]["status"] == "False").then_some(())
    })
    .await;
    let (_, mut second) = t
        .call(Method::GET, &format!("{SERVICES}/second"), None)
        .await;
    second["spec"]["type"] = json!("ClusterIP");
    let spec = second["spec"].as_object_mut().expect("spec");
    spec.remove("loadBalancerIP");
    if let Some(port) = spec["ports"][0].as_object_mut() {
        port.remove("nodePort");
    }
    let (status, body) = t
        .call(Method::PUT, &format!("{SERVICES}/second"), Some(&second))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(load_balancer_ip(&body), None, "{body}");
    assert_eq!(wait_for_address(&t, "fourth").await, "198.18.128.2");

    // Outside the pool: pending with the reason.
    let mut outside = lb.clone();
    outside["loadBalancerIP"] = json!("203.0.113.9");
    let (status, _) = create(&t, "outside", outside).await;
    assert_eq!(status, 201);
    eventually("a not-in-pool event", || async {
        events_for(&t, "outside")
            .await
            .iter()
            .any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not in the load-balancer pool"))
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn without_a_pool_load_balancers_stay_pending_with_an_event() {
    let t = start_with(&["--load-balancer-cidr", "none"]).await;
    let (status, _) = create(&t, "web", json!({"type": "LoadBalancer"})).await;
    assert_eq!(status, 201);
    let event = eventually("the pending event", || async {
        events_for(&t, "web").await.into_iter().next()
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("no load-balancer address pool")),
        "{event}"
    );
    let (_, web) = t.call(Method::GET, &format!("{SERVICES}/web"), None).await;
    assert_eq!(load_balancer_ip(&web), None);
}

const SHOP: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.18.210.1
  ports: [{port: 80}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: berth/echo:v1}]}
";

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_exist_before_use_and_take_their_objects_with_them() {
    let t = start_with(&[]).await;
    let (status, default) = t
        .call(Method::GET, "/api/v1/namespaces/default", None)
        .await;
    assert_eq!(
        (status, &default["status"]["phase"]),
        (200, &json!("Active")),
        "{default}"
    );

    // Nothing can be created in a namespace that does not exist.
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/namespaces/nope/services",
            Some(&service("web", json!({}))),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["message"], r#"namespaces "nope" not found"#);
    let (status, body) = t
        .apply(&SHOP.replace("name: shop}", "name: shop-typo}"))
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, services) = t.call(Method::GET, "/api/v1/services", None).await;
    assert_eq!(
        services["items"].as_array().map(Vec::len),
        Some(0),
        "nothing applied"
    );

    // A manifest may create the namespace and its contents together.
    let (status, body) = t.apply(SHOP).await;
    assert_eq!(status, 200, "{body}");
    let (status, ns) = t.call(Method::GET, "/api/v1/namespaces/shop", None).await;
    assert_eq!((status, &ns["status"]["phase"]), (200, &json!("Active")));
    eventually("the deployment's pod", || async {
        let (_, pods) = t
            .call(Method::GET, "/api/v1/namespaces/shop/pods", None)
            .await;
        (!pods["items"].as_array()?.is_empty()).then_some(())
    })
    .await;

    let (status, body) = t
        .call(Method::DELETE, "/api/v1/namespaces/shop", None)
        .await;
    assert_eq!(
        (status, &body["status"]["phase"]),
        (200, &json!("Terminating")),
        "{body}"
    );
    eventually("the namespace to go", || async {
        let (status, _) = t.call(Method::GET, "/api/v1/namespaces/shop", None).await;
        (status == 404).then_some(())
    })
    .await;
    for kind in ["pods", "services", "endpoints", "events"] {
        let (_, items) = t
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/shop/{kind}"),
                None,
            )
            .await;
        assert_eq!(
            items["items"].as_array().map(Vec::len),
            Some(0),
            "{kind}: {items}"
        );
    }
    let (_, items) = t
        .call(
            Method::GET,
            "/apis/apps/v1/namespaces/shop/deployments",
            None,
        )
        .await;
    assert_eq!(items["items"].as_array().map(Vec::len), Some(0));
    // Its service's address was released with it.
    let (status, body) = create(&t, "reuse", json!({"clusterIP": "198.18.210.1"})).await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = t
        .call(Method::DELETE, "/api/v1/namespaces/default", None)
        .await;
    assert_eq!(status, 403, "{body}");
}

/// A manifest of `count` Services named `{prefix}-{i}`; every second one is a NodePort.
fn services_manifest(prefix: &str, count: usize) -> String {
    (0..count)
        .map(|i| {
            let type_ = if i % 2 == 0 { "ClusterIP" } else { "NodePort" };
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {prefix}-{i}}}\nspec:\n  \
                 type: {type_}\n  selector: {{app: {prefix}-{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Every stored Service's clusterIP and nodePorts, checked distinct across Services.
async fn distinct_values(t: &TestServer) -> (BTreeSet<String>, BTreeSet<i64>, usize) {
    let (status, list) = t.call(Method::GET, SERVICES, None).await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().expect("items");
    let (mut ips, mut ports, mut port_count) = (BTreeSet::new(), BTreeSet::new(), 0);
    for item in items {
        let ip = cluster_ip(item);
        assert!(ips.insert(ip.clone()), "{ip} is held twice");
        for port in item["spec"]["ports"].as_array().expect("ports") {
            if let Some(node_port) = port["nodePort"].as_i64() {
                assert!(
                    ports.insert(node_port),
                    "nodePort {node_port} is held twice"
                );
                port_count += 1;
            }
        }
    }
    assert_eq!(ips.len(), items.len(), "every Service has a clusterIP");
    (ips, ports, port_count)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_manifest_of_2000_services_applies_with_distinct_cluster_ips_and_node_ports() {
    let t = start_with(&["--no-controllers"]).await;
    let (status, body) = t.apply(&services_manifest("svc", 2000)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2000));
    let (ips, ports, _) = distinct_values(&t).await;
    assert_eq!((ips.len(), ports.len()), (2000, 1000));
    let cidr: std::net::Ipv4Addr = "198.18.192.0".parse().expect("ip");
    for ip in &ips {
        let ip: std::net::Ipv4Addr = ip.parse().expect("IPv4");
        assert_eq!(
            u32::from(ip) >> 14,
            u32::from(cidr) >> 14,
            "{ip} in the /18"
        );
    }
    assert!(
        ports.iter().all(|p| (30000..=32767).contains(p)),
        "{ports:?}"
    );
    // Applied again: nothing is allocated anew.
    let (status, body) = t.apply(&services_manifest("svc", 2000)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|item| item["action"] == "unchanged"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_applies_never_give_two_services_one_value() {
    // 2 x 300 clusterIPs from 1022 addresses: the two applies' runs often meet, and the
    // loser plans again.
    let t = start_with(&["--no-controllers", "--service-cidr", "198.18.192.0/22"]).await;
    let (a, b) = (services_manifest("a", 300), services_manifest("b", 300));
    let ((status_a, body_a), (status_b, body_b)) = tokio::join!(t.apply(&a), t.apply(&b));
    assert_eq!((status_a, status_b), (200, 200), "{body_a}\n{body_b}");
    let (ips, ports, port_count) = distinct_values(&t).await;
    assert_eq!((ips.len(), ports.len(), port_count), (600, 300, 300));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_range_is_a_500_naming_the_range_and_nothing_of_the_manifest_is_applied() {
    let flags = [
        "--no-controllers",
        "--service-cidr",
        "198.18.200.0/30",
        "--service-node-port-range",
        "30000-30001",
    ];
    let t = start_with(&flags).await;
    let (status, body) = t.apply(&services_manifest("ip", 3)).await;
    assert_eq!(
        (status, &body["reason"]),
        (500, &json!("InternalError")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("range 198.18.200.0/30 is full (4 addresses, 2 usable, all allocated)")
            && message.contains("--service-cidr"),
        "{message}"
    );
    let (_, list) = t.call(Method::GET, SERVICES, None).await;
    assert_eq!(list["items"], json!([]), "all or nothing");

    // Three NodePorts from two ports, with addresses to spare.
    let t = t
        .restart(&[
            "--no-controllers",
            "--service-node-port-range",
            "30000-30001",
        ])
        .await;
    let manifest = services_manifest("port", 6).replace("type: ClusterIP", "type: NodePort");
    let (status, body) = t.apply(&manifest).await;
    assert_eq!(status, 500, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("range 30000-30001 is full (2 ports, all allocated)"),
        "{message}"
    );
    // A given port outside the range is the caller's error, with its path.
    let outside = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30002}]});
    let (status, body) = create(&t, "outside", outside).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        cause(&body),
        (
            "spec.ports[0].nodePort".to_owned(),
            "provided port 30002 is not in the valid range; the range of valid ports is 30000-30001"
                .to_owned()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_grow_on_restart_keeping_every_value_and_refuse_to_shrink_past_one() {
    let small = [
        "--no-controllers",
        "--service-cidr",
        "198.18.200.0/29",
        "--service-node-port-range",
        "30000-30002",
    ];
    let t = start_with(&small).await;
    // Six addresses and three ports: all taken.
    let (status, body) = t.apply(&services_manifest("svc", 6)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = create(&t, "more", json!({})).await;
    assert_eq!(status, 500, "{body}");
    let before = distinct_values(&t).await;
    assert_eq!((before.0.len(), before.1.len()), (6, 3));

    let grown = [
        "--no-controllers",
        "--service-cluster-ip-range",
        "198.18.200.0/28",
        "--service-node-port-range",
        "30000-30009",
    ];
    let t = t.restart(&grown).await;
    assert_eq!(distinct_values(&t).await, before, "every value is kept");
    let (status, body) = t.apply(&services_manifest("more", 8)).await;
    assert_eq!(status, 200, "{body}");
    let (ips, ports, _) = distinct_values(&t).await;
    assert_eq!((ips.len(), ports.len()), (14, 7));
    assert!(before.0.is_subset(&ips) && before.1.is_subset(&ports));

    // Back to the small range: seven of the new addresses (.8 to .14) and four of the new
    // ports would fall outside it.
    let dir = t.stop().await;
    let error = berth_control::server::Server::start(&common::config(dir.path(), &small))
        .await
        .err()
        .expect("a shrunk range is refused")
        .to_string();
    assert!(
        error.contains("--service-cidr 198.18.200.0/29 does not hold ClusterIP 198.18.200.")
            && error.contains("--service-node-port-range 30000-30002 does not hold nodePort 3000")
            && error.contains("and 6 more")
            && error.contains("and 3 more"),
        "{error}"
    );
}
