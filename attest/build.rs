//! Compiles the schema of the persisted formats (proto/tally/formats/v1) with
//! protox (pure Rust, no system `protoc`). The generated types are used only by
//! the test that checks the hand-written prost structs against the schema; the
//! library itself never includes them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tally/formats/v1/formats.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
