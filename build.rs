//! Compiles `proto/` with protox (pure Rust: no `protoc` on the machine) and
//! writes the descriptor set that server reflection serves.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let api = protox::compile(
        [
            "proto/payvisor/v1/payments.proto",
            "proto/payvisor/v1/cluster.proto",
        ],
        ["proto"],
    )?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("payvisor_descriptor.bin"), api.encode_to_vec())?;
    // google.rpc's status and error details, for reflection only (their
    // Rust types come from tonic-types): tools decode an error's
    // ErrorInfo, BadRequest and RetryInfo with them.
    let details = protox::compile(
        ["google/rpc/status.proto", "google/rpc/error_details.proto"],
        ["proto"],
    )?;
    std::fs::write(
        out_dir.join("google_rpc_descriptor.bin"),
        details.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(api, {
            // `prost::Name` on every message: the JSON mapping finds a
            // message's descriptor by its full name.
            let mut config = prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}
