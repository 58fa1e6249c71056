//! Compiles the wire protocol with protox (pure Rust), so building needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tally/v1/tally.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        // Deterministic attribute order in the encoding of an event.
        .btree_map(["."])
        .bytes([".tally.v1.StoredRecord"])
        .compile_fds(descriptors)?;
    Ok(())
}
