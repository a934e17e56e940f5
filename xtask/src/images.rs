//! `cargo xtask images`: builds the workload images locally (there is no registry).

#[derive(clap::Args, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask images is being written")
}
