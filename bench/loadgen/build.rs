//! Compiles the tutorial protos (the repo's `protos/`) and the bench proto
//! (`bench/protos/`) with protox, so no `protoc` is needed, then hands the
//! descriptor set to tonic-prost-build for code generation.
//!
//! `BENCH_REPO_PROTOS` overrides where `helloworld.proto` and
//! `route_guide.proto` are read from (default: the repo's `protos/`).

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let bench_dir = manifest.join("..");
    let repo_protos = std::env::var_os("BENCH_REPO_PROTOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| bench_dir.join("../protos"));
    let bench_protos = bench_dir.join("protos");
    println!("cargo:rerun-if-env-changed=BENCH_REPO_PROTOS");
    for dir in [&repo_protos, &bench_protos] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for f in ["helloworld.proto", "route_guide.proto"] {
        if !repo_protos.join(f).exists() {
            panic!(
                "{} not found in {} (set BENCH_REPO_PROTOS to a directory holding the gRPC tutorial protos)",
                f,
                repo_protos.display()
            );
        }
    }
    let fds = protox::compile(
        ["helloworld.proto", "route_guide.proto", "bench.proto"],
        [&repo_protos, &bench_protos],
    )
    .expect("protox failed to compile the protos");
    tonic_prost_build::configure()
        .build_client(BUILD_CLIENT)
        .build_server(BUILD_SERVER)
        .bytes(".bench.Blob.data")
        .compile_fds(fds)
        .expect("tonic-prost-build failed");
}

const BUILD_CLIENT: bool = true;
const BUILD_SERVER: bool = false;
