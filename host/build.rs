//! Generates the gRPC code with `protox` (no system `protoc`): `calcplug.v1`, the contract in
//! `interface/proto`, and go-plugin's controller and broker services in `host/proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["../interface/proto/calcplug/v1/calculator.proto", "proto/go_plugin.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["../interface/proto", "proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
