//! Which configuration berthctl reads: `--kubeconfig`/`BERTH_CONFIG` first, else the first
//! file of `KUBECONFIG` as kubectl reads it, else the control plane's default.

use std::process::Command;

fn berthctl(envs: &[(&str, &str)], args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .env_remove("BERTH_CONFIG")
        .env_remove("KUBECONFIG")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .expect("berthctl runs");
    assert!(!output.status.success(), "no such file, no server");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_configuration_comes_from_the_flag_then_kubeconfig_then_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first.conf");
    let second = dir.path().join("second.conf");
    let list = format!("{}:{}", first.display(), second.display());
    let err = berthctl(&[("KUBECONFIG", &list)], &["get", "pods"]);
    assert!(err.contains(&first.display().to_string()), "{err}");
    let flag = dir.path().join("flag.conf");
    let err = berthctl(
        &[("KUBECONFIG", &list)],
        &["--kubeconfig", &flag.display().to_string(), "get", "pods"],
    );
    assert!(err.contains("flag.conf"), "{err}");
    let err = berthctl(&[], &["get", "pods"]);
    assert!(err.contains("/var/lib/berth/admin.conf"), "{err}");
}
