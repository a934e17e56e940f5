//! Builds the eBPF programs in ../ebpf for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where `datapath` (`EBPF_OBJECT` in agent/src/datapath/mod.rs) embeds it into the agent binary.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = format!("{manifest_dir}/../ebpf");
    // The programs' map layouts come from the common crate: rebuild when it changes too.
    println!("cargo:rerun-if-changed={ebpf_dir}/common/src");

    // The BPF target has no prebuilt core library, so core is rebuilt with `-Z build-std`.
    // That flag is unstable; RUSTC_BOOTSTRAP=1 unlocks it on the stable toolchain, which
    // keeps the project on the one toolchain this machine has (no nightly download).
    // SAFETY: build scripts are single-threaded at this point; nothing else reads env.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "berth-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}
