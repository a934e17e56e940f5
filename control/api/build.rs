fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/berth/agent/v1/agent.proto",
            "proto/berth/node/v1/node.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
