fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Only the gRPC users (control plane, agent) need the generated code; berthctl does not.
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/berth/agent/v1/agent.proto",
            "proto/berth/node/v1/node.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
