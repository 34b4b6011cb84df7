//! Compiles the echo service of the baseline (`proto/payvisor/bench/v1`)
//! with protox (pure Rust: no `protoc` on the machine). It is the bench's
//! own: the server neither serves nor advertises it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let echo = protox::compile(["proto/payvisor/bench/v1/echo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(echo)?;
    Ok(())
}
