//! No import cycle between the modules of any workspace crate: `cargo xtask cycles`
//! lists each one with the files and lines that make it.

use std::process::Command;

#[test]
fn no_module_of_any_workspace_crate_is_in_an_import_cycle() {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("cycles")
        .output()
        .expect("running xtask cycles");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
