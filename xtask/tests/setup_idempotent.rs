//! `cargo xtask setup` run twice in a row changes nothing the second time. Runs the real
//! setup (as root it installs whatever is missing the first time).

use std::process::Command;

fn setup() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("setup")
        .output()
        .expect("running xtask setup");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "setup failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_second_setup_changes_nothing() {
    setup();
    let second = setup();
    let steps: Vec<&str> = second
        .lines()
        .filter(|line| !line.starts_with("setup:"))
        .collect();
    assert!(!steps.is_empty(), "no steps reported:\n{second}");
    for line in &steps {
        assert!(
            line.starts_with("ok "),
            "a step was not already in place: {line}\n{second}"
        );
    }
    assert!(
        second.contains("nothing changed"),
        "second run reported changes:\n{second}"
    );
}
