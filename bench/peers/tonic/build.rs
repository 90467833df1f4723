//! Generates the gRPC servers (see `bench/build_protos.rs`).

include!("../../build_protos.rs");

fn main() {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    compile_bench_protos(&manifest.join("../.."), false, true);
}
