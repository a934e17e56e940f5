//! ConfigMaps and Secrets through the API: Secrets sealed in the store file, read back
//! after a restart and after a key rotation; shown base64-encoded by `get -o yaml` and by
//! size only by `describe`; immutable objects stay as they are.

mod common;

use berth_control::store::{Keyring, RedbStore, Store as _};
use common::*;
use hyper::Method;
use serde_json::json;

const SECRET: &str = "\
apiVersion: v1
kind: Secret
metadata: {name: db}
stringData:
  password: correct-horse-battery-staple
data:
  user: YWRtaW4=
";

/// Whether the store file's bytes contain `needle` anywhere.
fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).expect("read the store file");
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The `data` of Secret `name` as the API returns it.
async fn stored_data(server: &TestServer, name: &str) -> serde_json::Value {
    let (status, secret) = server
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/default/secrets/{name}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{secret}");
    assert!(secret.get("stringData").is_none(), "{secret}");
    secret["data"].clone()
}

/// Every file under `dir` is 0600 and every directory 0700 (`dir` itself included), and
/// the secrets named are among them.
fn assert_private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                pending.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    }
    for secret in [
        "state.redb",
        "admin.conf",
        "pki/ca.key",
        "pki/server.key",
        "pki/bootstrap-token",
        "encryption/key1.key",
    ] {
        assert!(dir.join(secret).is_file(), "{secret} is there");
    }
}

#[tokio::test]
async fn secrets_are_encrypted_in_a_private_store_and_read_back_after_restart_and_rotation() {
    use std::os::unix::fs::PermissionsExt as _;
    // A data directory anyone may read, as the default umask makes it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = start_in(dir, &["--no-controllers"]).await;
    assert_private(server.dir.path());
    let (status, body) = server.apply(SECRET).await;
    assert_eq!(status, 200, "{body}");
    let secret = json!({"data": stored_data(&server, "db").await});
    // stringData was folded into data; values are base64 as in Kubernetes.
    assert_eq!(
        secret["data"],
        json!({"password": "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==", "user": "YWRtaW4="})
    );

    let admin = server.server.admin_config.clone();
    let (ok, yaml, err) = berthctl(&admin, &["get", "secret", "db", "-o", "yaml"]).await;
    assert!(ok, "{err}");
    assert!(
        yaml.contains("password: Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ=="),
        "{yaml}"
    );
    let (ok, table, err) = berthctl(&admin, &["get", "secrets"]).await;
    assert!(ok, "{err}");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .map(|line| line.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row[..3], ["db", "Opaque", "2"], "{table}");
    let (ok, described, err) = berthctl(&admin, &["describe", "secret", "db"]).await;
    assert!(ok, "{err}");
    assert!(described.contains("password:"), "{described}");
    assert!(described.contains("28 bytes"), "{described}");
    assert!(
        !described.contains("correct-horse") && !described.contains("Y29ycmVjd"),
        "{described}"
    );

    let data_dir = server.stop().await;
    let store_path = config(data_dir.path(), &[]).store_path();
    for clear in [
        &b"correct-horse-battery-staple"[..],
        b"Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==",
    ] {
        assert!(
            !file_contains(&store_path, clear),
            "the store file holds the Secret's value in clear"
        );
    }
    let raw = RedbStore::open(&store_path).expect("open the raw store");
    let stored = raw
        .get("/core/secrets/default/db")
        .expect("read")
        .expect("the Secret is stored");
    assert!(stored.value.starts_with(b"berth:enc:aesgcm:v1:key1:"));
    drop(raw);

    // A restart reads it back, and narrows what an older version left readable.
    for older in [&store_path, &data_dir.path().join("admin.conf")] {
        std::fs::set_permissions(older, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let server = start_in(data_dir, &["--no-controllers"]).await;
    assert_eq!(stored_data(&server, "db").await, secret["data"]);
    assert_private(server.dir.path());

    // A rotated key: the old Secret still reads, a new one is sealed with the new key.
    let data_dir = server.stop().await;
    let keys = config(data_dir.path(), &[]).encryption_keys_dir();
    Keyring::rotate(&keys).expect("rotate");
    let server = start_in(data_dir, &["--no-controllers"]).await;
    assert_eq!(stored_data(&server, "db").await, secret["data"]);
    let (status, body) = server
        .apply("apiVersion: v1\nkind: Secret\nmetadata: {name: new}\nstringData: {k: v}\n")
        .await;
    assert_eq!(status, 200, "{body}");
    let data_dir = server.stop().await;
    let raw = RedbStore::open(&config(data_dir.path(), &[]).store_path()).expect("raw");
    let newer = raw
        .get("/core/secrets/default/new")
        .expect("read")
        .expect("stored");
    assert!(newer.value.starts_with(b"berth:enc:aesgcm:v1:key2:"));
    drop(raw);

    // Without the key an old Secret was written with, the server says so and stops.
    std::fs::remove_file(keys.join("key1.key")).expect("remove key1");
    let refused = berth_control::server::Server::start(&config(data_dir.path(), &[]))
        .await
        .err()
        .expect("no start without key1");
    assert!(refused.to_string().contains("key1.key"), "{refused}");
}

#[tokio::test]
async fn immutable_config_maps_and_secrets_keep_their_values() {
    let server = start().await;
    let (status, body) = server
        .apply(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fixed}\nimmutable: true\ndata: {a: '1'}\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .apply(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fixed}\nimmutable: true\ndata: {a: '2'}\n",
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("immutable"), "{body}");
    // Labels may still change.
    let (status, body) = server
        .apply(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fixed, labels: {x: y}}\nimmutable: true\ndata: {a: '1'}\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = server.apply(SECRET).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .apply("apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: '{}'}\n")
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("type"), "{body}");
    // Keys are checked like Kubernetes' (they become file names).
    let (status, body) = server
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad}\ndata: {'a/b': x}\n")
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("data[\\\"a/b\\\"]"), "{body}");
}
