// Shared by the build scripts of `loadgen/` and `peers/tonic/` (each `include!`s it): compiles
// the tutorial protos (the repo's `protos/`) and the bench proto (`bench/protos/`) with protox,
// so no `protoc` is needed, then hands the descriptor set to tonic-prost-build.
//
// `BENCH_REPO_PROTOS` overrides where `helloworld.proto` and `route_guide.proto` are read from
// (default: the repo's `protos/`).

use std::path::Path;

/// Generates the bench's gRPC code; `bench_dir` is the `bench/` folder.
fn compile_bench_protos(bench_dir: &Path, build_client: bool, build_server: bool) {
    let repo_protos = std::env::var_os("BENCH_REPO_PROTOS")
        .map(std::path::PathBuf::from)
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
        .build_client(build_client)
        .build_server(build_server)
        .bytes(".bench.Blob.data")
        .compile_fds(fds)
        .expect("tonic-prost-build failed");
}
