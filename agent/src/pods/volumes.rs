//! A pod's volumes on the node, under `<volumes dir>/<pod uid>/<volume>`:
//!
//! - `emptyDir` is a directory there (mode 0777, as the kubelet makes it); with
//!   `medium: Memory` a tmpfs the engine keeps as a named volume of the pod instead
//!   (`MountSource::Tmpfs`), so every container of the pod shares it wherever the agent's
//!   own mount namespace is.
//! - `configMap`, `secret`, `downwardAPI` and `projected` volumes are files the agent writes the way
//!   the kubelet's atomic writer does: each version in a timestamped directory
//!   (`..<seconds>.<nanoseconds>`), a `..data` symlink to the current one swapped by one
//!   `rename(2)`, and each top-level name a symlink into `..data`. A reader inside the
//!   container sees the old files or the new ones, never a mix; a change of the object
//!   is written on the agent's next pass after it is fetched.
//!
//! - `persistentVolumeClaim` is the directory of the claim's volume, directly under the
//!   node's local volume directory (made when first used, 0777 like the
//!   local-path-provisioner's): it stays when the pod goes, and goes when the volume is
//!   deleted (`crate::controlplane::reclaim_local_volumes`).
//!
//! - `hostPath` is the node's own path, checked (or made) as its type says; the control
//!   plane admitted it only under a path its admin allows.
//!
//! Everything else goes when the pod does ([`remove`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    PodDesired,
    configs::{ConfigKey, ConfigKind, VOLUME_PATH_KEY},
    env::EnvContext,
    spec::{EnvValue, VolumeDesired, VolumeSource},
};
use crate::runtime::{Mount, MountSource, labels};

const DATA_LINK: &str = "..data";
const DATA_LINK_NEW: &str = "..data_tmp";

/// The files a volume holds: path inside it → (content, mode).
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Where pod `uid`'s volumes live; None for a uid that is not one path component.
pub fn pod_dir(root: &Path, uid: &str) -> Option<PathBuf> {
    let plain = !uid.is_empty()
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then(|| root.join(uid))
}

/// The engine's name for a pod's tmpfs volume.
fn tmpfs_name(uid: &str, volume: &str) -> String {
    format!("berth-{uid}-{volume}")
}

/// The files `volume` should hold now; Ok(None) for an emptyDir. A missing ConfigMap,
/// Secret or key that is not optional is the reason the pod waits.
pub fn payload(volume: &VolumeDesired, cx: &EnvContext<'_>) -> Result<Option<Payload>, String> {
    source_payload(&volume.source, cx)
}

fn source_payload(source: &VolumeSource, cx: &EnvContext<'_>) -> Result<Option<Payload>, String> {
    match source {
        VolumeSource::Projected { sources } => {
            // Kubernetes writes the sources in order: a later one's path wins.
            let mut files = Payload::new();
            for source in sources {
                files.extend(source_payload(source, cx)?.unwrap_or_default());
            }
            Ok(Some(files))
        }
        VolumeSource::EmptyDir { .. }
        | VolumeSource::Claim { .. }
        | VolumeSource::HostPath { .. } => Ok(None),
        VolumeSource::Token {
            audience,
            expiration_seconds,
            path,
            mode,
        } => {
            let token = cx
                .configs
                .token(&cx.pod.token_key(audience, *expiration_seconds))?;
            Ok(Some([(path.clone(), (token.0.to_vec(), *mode))].into()))
        }
        VolumeSource::Keys {
            kind,
            name,
            items,
            default_mode,
            optional,
        } => {
            let key = ConfigKey {
                kind: *kind,
                namespace: cx.pod.namespace.clone(),
                name: name.clone(),
            };
            let values = match cx.configs.values(&key) {
                Ok(values) => values,
                Err(_) if *optional => return Ok(Some(Payload::new())),
                Err(reason) => return Err(reason),
            };
            let mut files = Payload::new();
            if items.is_empty() {
                for (key, value) in &values.0 {
                    files.insert(key.clone(), (value.clone(), *default_mode));
                }
            }
            for (item, path, mode) in items {
                match values.0.get(item) {
                    Some(value) => {
                        files.insert(path.clone(), (value.clone(), mode.unwrap_or(*default_mode)));
                    }
                    None if *optional => {}
                    None => {
                        return Err(format!(
                            "couldn't find key {item} in {} {}/{name}",
                            kind.as_str(),
                            cx.pod.namespace
                        ));
                    }
                }
            }
            Ok(Some(files))
        }
        VolumeSource::DownwardApi {
            items,
            default_mode,
        } => {
            let mut files = Payload::new();
            for (path, value, mode) in items {
                let text = match value {
                    EnvValue::Field(field) => downward_field(cx.pod, field, cx),
                    EnvValue::Resource {
                        container,
                        resource,
                        divisor,
                    } => {
                        let own = cx
                            .pod
                            .containers
                            .iter()
                            .find(|c| &c.name == container)
                            .ok_or_else(|| format!("no container {container:?}"))?;
                        cx.resource(own, "", resource, *divisor)?
                    }
                    EnvValue::Literal(text) | EnvValue::Key { key: text, .. } => text.clone(),
                };
                files.insert(
                    path.clone(),
                    (text.into_bytes(), mode.unwrap_or(*default_mode)),
                );
            }
            Ok(Some(files))
        }
    }
}

/// A field as a downward API file holds it: whole label and annotation maps as
/// `key="value"` lines, sorted (Kubernetes' format).
fn downward_field(pod: &PodDesired, field: &str, cx: &EnvContext<'_>) -> String {
    let map = match field {
        "metadata.labels" => &pod.labels,
        "metadata.annotations" => &pod.annotations,
        other => return cx.field(other),
    };
    map.iter()
        .map(|(key, value)| format!("{key}={value:?}\n"))
        .collect()
}

/// What a pod's volumes are on the node, kept between passes.
pub struct Placed<'a> {
    /// Each file volume's last payload, so unchanged files are not written again.
    pub written: &'a mut BTreeMap<String, Payload>,
    /// Each claim volume's directory.
    pub claim_dirs: &'a mut BTreeMap<String, PathBuf>,
    /// The only directory claims' volumes may be in.
    pub local_volume_dir: &'a Path,
}

/// The directory of a claim's volume, as the control plane gave it: one directly under
/// `local_volume_dir`, never anywhere else on the node. None while the claim waits.
fn claim_dir(claim: &str, cx: &EnvContext<'_>, local_volume_dir: &Path) -> Result<PathBuf, String> {
    let key = ConfigKey {
        kind: ConfigKind::PersistentVolumeClaim,
        namespace: cx.pod.namespace.clone(),
        name: claim.to_owned(),
    };
    let values = cx.configs.values(&key)?;
    let path = values
        .0
        .get(VOLUME_PATH_KEY)
        .map(|path| PathBuf::from(String::from_utf8_lossy(path).into_owned()))
        .unwrap_or_default();
    let plain = path.parent() == Some(local_volume_dir)
        && path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| !name.starts_with('.'));
    if !plain {
        return Err(format!(
            "the volume of persistentvolumeclaim {claim:?} is at {}, not under this node's local volume directory {}",
            path.display(),
            local_volume_dir.display()
        ));
    }
    Ok(path)
}

/// Makes the host side of every volume of `pod` that is not a tmpfs: emptyDir
/// directories and claims' volumes (kept as they are once made) and the files of the
/// others (written when they differ from what was last written).
pub fn sync(
    pod_dir: &Path,
    pod: &PodDesired,
    cx: &EnvContext<'_>,
    placed: &mut Placed<'_>,
) -> Result<(), String> {
    // Only root on the node reaches the files (Secret values among them); containers
    // see their volume directories through the mounts.
    if !pod_dir.exists() {
        fs::create_dir_all(pod_dir)
            .and_then(|()| fs::set_permissions(pod_dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("making {}: {e}", pod_dir.display()))?;
    }
    for volume in &pod.volumes {
        if let VolumeSource::Claim { claim, .. } = &volume.source {
            let dir = claim_dir(claim, cx, placed.local_volume_dir)?;
            if !dir.exists() {
                // Like local-path-provisioner's: any user of any container may write.
                fs::create_dir_all(&dir)
                    .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)))
                    .map_err(|e| format!("making the volume of claim {claim}: {e}"))?;
            }
            placed.claim_dirs.insert(volume.name.clone(), dir);
            continue;
        }
        if let VolumeSource::HostPath { path, type_ } = &volume.source {
            check_host_path(path, type_)
                .map_err(|reason| format!("hostPath volume {}: {reason}", volume.name))?;
            continue;
        }
        let dir = pod_dir.join(&volume.name);
        match payload(volume, cx)? {
            None => {
                if !matches!(volume.source, VolumeSource::EmptyDir { memory: true, .. })
                    && !dir.exists()
                {
                    fs::create_dir_all(&dir)
                        .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)))
                        .map_err(|e| format!("making volume {}: {e}", volume.name))?;
                }
            }
            Some(files) => {
                if placed.written.get(&volume.name) != Some(&files) {
                    write_atomically(&dir, &files)
                        .map_err(|e| format!("writing volume {}: {e}", volume.name))?;
                    placed.written.insert(volume.name.clone(), files);
                }
            }
        }
    }
    Ok(())
}

/// Makes sure what hostPath `type_` asks for is at `path`, making it for the `OrCreate`
/// types as the kubelet does (a directory 0755, an empty file 0644).
fn check_host_path(path: &Path, type_: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt as _;
    let found = fs::metadata(path).map(|m| m.file_type());
    let is = |wanted: fn(&fs::FileType) -> bool, what: &str| match &found {
        Ok(t) if wanted(t) => Ok(()),
        Ok(_) => Err(format!("{} is not a {what}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    };
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" if found.is_err() => fs::create_dir_all(path)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("making {}: {e}", path.display())),
        "FileOrCreate" if found.is_err() => fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|_| fs::set_permissions(path, fs::Permissions::from_mode(0o644)))
            .map_err(|e| format!("making {}: {e}", path.display())),
        "Directory" | "DirectoryOrCreate" => is(fs::FileType::is_dir, "directory"),
        "File" | "FileOrCreate" => is(fs::FileType::is_file, "file"),
        "Socket" => is(fs::FileType::is_socket, "socket"),
        "CharDevice" => is(fs::FileType::is_char_device, "character device"),
        "BlockDevice" => is(fs::FileType::is_block_device, "block device"),
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

/// The engine mounts of `container`'s volume mounts; `claim_dirs` are the claims'
/// volumes [`sync`] placed.
pub fn mounts(
    pod_dir: &Path,
    pod: &PodDesired,
    claim_dirs: &BTreeMap<String, PathBuf>,
    node: &str,
    container: &super::ContainerDesired,
) -> Vec<Mount> {
    container
        .mounts
        .iter()
        .filter_map(|mount| {
            let volume = pod.volumes.iter().find(|v| v.name == mount.volume)?;
            let read_only = mount.read_only || volume.source.read_only();
            let source = match &volume.source {
                VolumeSource::EmptyDir {
                    memory: true,
                    size_limit,
                } => MountSource::Tmpfs {
                    name: tmpfs_name(&pod.uid, &volume.name),
                    size_bytes: *size_limit,
                    sub_path: mount.sub_path.clone(),
                    labels: BTreeMap::from([
                        (labels::NODE.to_owned(), node.to_owned()),
                        (labels::POD_UID.to_owned(), pod.uid.clone()),
                    ]),
                },
                VolumeSource::HostPath { path, .. } => {
                    let mut path = path.clone();
                    if let Some(sub_path) = &mount.sub_path {
                        path.push(sub_path);
                    }
                    MountSource::Host(path)
                }
                VolumeSource::Claim { .. } => {
                    let mut path = claim_dirs.get(&volume.name)?.clone();
                    if let Some(sub_path) = &mount.sub_path {
                        path.push(sub_path);
                    }
                    MountSource::Host(path)
                }
                _ => {
                    let mut path = pod_dir.join(&volume.name);
                    if let Some(sub_path) = &mount.sub_path {
                        path.push(sub_path);
                    }
                    MountSource::Host(path)
                }
            };
            Some(Mount {
                source,
                target: mount.path.clone(),
                read_only,
            })
        })
        .collect()
}

/// Makes the directories emptyDir subPaths name, as the kubelet does before mounting.
pub fn make_sub_paths(pod_dir: &Path, pod: &PodDesired) -> io::Result<()> {
    for container in &pod.containers {
        for mount in &container.mounts {
            let Some(sub_path) = &mount.sub_path else {
                continue;
            };
            let is_disk_dir = pod.volumes.iter().any(|v| {
                v.name == mount.volume
                    && matches!(v.source, VolumeSource::EmptyDir { memory: false, .. })
            });
            if is_disk_dir {
                let dir = pod_dir.join(&mount.volume).join(sub_path);
                fs::create_dir_all(&dir)?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
            }
        }
    }
    Ok(())
}

/// Replaces the files of `dir` with `files` in one step for readers (the kubelet's
/// AtomicWriter).
pub fn write_atomically(dir: &Path, files: &Payload) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let version = format!("..{}.{:09}", stamp.as_secs(), stamp.subsec_nanos());
    let version_dir = dir.join(&version);
    fs::create_dir(&version_dir)?;
    fs::set_permissions(&version_dir, fs::Permissions::from_mode(0o755))?;
    for (path, (content, mode)) in files {
        let file = version_dir.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&file, content)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(*mode))?;
    }
    let previous = fs::read_link(dir.join(DATA_LINK)).ok();
    let new_link = dir.join(DATA_LINK_NEW);
    match fs::remove_file(&new_link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(&version, &new_link)?;
    fs::rename(&new_link, dir.join(DATA_LINK))?;
    // Top-level names point through ..data, so they follow every swap.
    let top: BTreeSet<&str> = files
        .keys()
        .filter_map(|path| path.split('/').next())
        .collect();
    for name in &top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(name), &link)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("..") {
            continue;
        }
        let into_data =
            fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(DATA_LINK));
        if into_data && !top.contains(name) {
            fs::remove_file(entry.path())?;
        }
    }
    if let Some(previous) = previous
        && previous != Path::new(&version)
    {
        let old = dir.join(previous);
        if old.starts_with(dir) {
            fs::remove_dir_all(old)?;
        }
    }
    Ok(())
}

/// Removes what pod `uid`'s volumes left on the node: its directory and its tmpfs
/// volumes in the engine.
pub async fn remove(root: &Path, uid: &str, runtime: &crate::runtime::DockerRuntime) {
    if let Some(dir) = pod_dir(root, uid) {
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%uid, dir = %dir.display(), "removing a pod's volumes: {e}"),
        }
    }
    if let Err(error) = runtime.remove_volumes(&[(labels::POD_UID, uid)]).await {
        tracing::warn!(%uid, %error, "removing a pod's tmpfs volumes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).expect("readable")
    }

    #[test]
    fn files_are_swapped_through_the_data_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volume = dir.path().join("config");
        let first = Payload::from([
            ("app.conf".to_owned(), (b"mode=fast".to_vec(), 0o644)),
            ("nested/key".to_owned(), (b"1".to_vec(), 0o400)),
        ]);
        write_atomically(&volume, &first).expect("write");
        assert_eq!(read(&volume, "app.conf"), "mode=fast");
        assert_eq!(read(&volume, "nested/key"), "1");
        assert!(
            fs::read_link(volume.join("app.conf"))
                .expect("a link")
                .starts_with("..data")
        );
        let mode = fs::metadata(volume.join("nested/key"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let old_version = fs::read_link(volume.join("..data")).expect("data link");

        let second = Payload::from([("app.conf".to_owned(), (b"mode=slow".to_vec(), 0o644))]);
        write_atomically(&volume, &second).expect("rewrite");
        assert_eq!(read(&volume, "app.conf"), "mode=slow");
        assert!(!volume.join("nested").exists(), "a key gone is gone");
        assert!(
            !volume.join(&old_version).exists(),
            "the old version is removed"
        );
        let entries: BTreeSet<String> = fs::read_dir(&volume)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            entries.len(),
            3,
            "{entries:?}: ..data, one version, app.conf"
        );
    }

    #[test]
    fn a_volume_of_a_missing_object_or_key_is_why_the_pod_waits() {
        use std::{net::Ipv4Addr, sync::Arc};

        use crate::{
            pods::configs::{ConfigKind, ConfigValues, Fetched, PodConfigs},
            runtime::Limits,
        };
        let configs = PodConfigs::default();
        let pod = PodDesired {
            namespace: "shop".into(),
            name: "web".into(),
            ..PodDesired::default()
        };
        let cx = EnvContext {
            pod: &pod,
            pod_ip: Ipv4Addr::LOCALHOST,
            node: "n1",
            allocatable: Limits::default(),
            configs: &configs,
        };
        let mut volume = VolumeDesired {
            name: "creds".into(),
            source: VolumeSource::Keys {
                kind: ConfigKind::Secret,
                name: "db".into(),
                items: vec![("password".into(), "pw".into(), Some(0o400))],
                default_mode: 0o644,
                optional: false,
            },
        };
        assert_eq!(
            payload(&volume, &cx),
            Err("secret \"db\" not found".to_owned())
        );
        configs.set(
            ConfigKey {
                kind: ConfigKind::Secret,
                namespace: "shop".into(),
                name: "db".into(),
            },
            Fetched::Found(Arc::new(ConfigValues(BTreeMap::from([(
                "user".to_owned(),
                b"admin".to_vec(),
            )])))),
        );
        assert_eq!(
            payload(&volume, &cx),
            Err("couldn't find key password in Secret shop/db".to_owned())
        );
        if let VolumeSource::Keys { items, .. } = &mut volume.source {
            items.clear();
        }
        assert_eq!(
            payload(&volume, &cx),
            Ok(Some(Payload::from([(
                "user".to_owned(),
                (b"admin".to_vec(), 0o644)
            )])))
        );
    }

    #[test]
    fn pod_dirs_are_one_plain_component() {
        let root = Path::new("/var/lib/berth/pods");
        assert_eq!(pod_dir(root, "6f1c-aa_2"), Some(root.join("6f1c-aa_2")));
        assert_eq!(pod_dir(root, ".."), None);
        assert_eq!(pod_dir(root, "a/b"), None);
        assert_eq!(pod_dir(root, ""), None);
    }
}
