//! Generates the ONNX message types (`onnx.rs` in OUT_DIR) from `proto/onnx.proto`.
//! protox parses the schema in Rust, so building Kiln needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
