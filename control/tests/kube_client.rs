//! kube-rs against Berth: its discovery finds the kinds, and its typed `Api` lists,
//! creates and watches pods, reading admin.conf as any kubeconfig.

mod common;

use common::start_with;
use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery::Discovery,
};

#[tokio::test]
async fn kube_rs_discovers_lists_creates_and_watches() {
    let t = start_with(&[]).await;
    let kubeconfig = Kubeconfig::read_from(&t.server.admin_config).expect("admin.conf");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a kube config");
    let client = Client::try_from(config).expect("a kube client");

    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let kinds: Vec<String> = discovery
        .groups()
        .flat_map(|group| group.recommended_resources())
        .map(|(resource, _)| format!("{}/{}", resource.api_version, resource.kind))
        .collect();
    for kind in [
        "v1/Pod",
        "v1/Service",
        "apps/v1/Deployment",
        "autoscaling/v2/HorizontalPodAutoscaler",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let listed = pods.list(&ListParams::default()).await.expect("list");
    assert!(listed.items.is_empty());
    let from = listed.metadata.resource_version.expect("a list revision");

    let mut watch = pods
        .watch(&WatchParams::default().timeout(30), &from)
        .await
        .expect("watch")
        .boxed();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hello", "labels": {"app": "hello"}},
        "spec": {"containers": [{"name": "main", "image": "echo:1"}]},
    }))
    .expect("a pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    assert_eq!(created.metadata.name.as_deref(), Some("hello"));
    assert!(created.metadata.uid.is_some(), "the server's uid");
    let added = loop {
        match watch.try_next().await.expect("a watch event") {
            Some(WatchEvent::Added(pod)) => break pod,
            Some(WatchEvent::Bookmark(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(added.metadata.name.as_deref(), Some("hello"));

    let labelled = pods
        .list(&ListParams::default().labels("app=hello"))
        .await
        .expect("list");
    assert_eq!(labelled.items.len(), 1);
    let deployments: Api<Deployment> = Api::all(client);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .expect("list deployments")
            .items
            .is_empty()
    );
}
