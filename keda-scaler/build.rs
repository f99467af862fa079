//! Generates the gRPC code of KEDA's external scaler contract from
//! `proto/externalscaler.proto`. Needs no system `protoc`: the vendored one
//! is used unless `PROTOC` names another.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(config, &["proto/externalscaler.proto"], &["proto"])?;
    Ok(())
}
