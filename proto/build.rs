//! Generates the model and the gRPC services from proto/flotilla/v1/*.proto
//! with the protoc binary vendored as a crate, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded, so setting the variable is sound;
    // prost-build reads PROTOC to find the compiler.
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/flotilla/v1/model.proto",
        "proto/flotilla/v1/api.proto",
        "proto/flotilla/v1/cluster.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
