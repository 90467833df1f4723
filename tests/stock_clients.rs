//! Stock clients nobody here wrote: Python grpcio (stubs generated from protos/ by
//! grpcio-tools, plus grpcio-health-checking and grpcio-reflection) and `buf curl`, run by
//! tests/stock/run.sh against the real binary. The script installs its own Python and npm
//! packages; it needs python3 with pip, and npm.

use std::process::Command;

#[test]
fn python_grpcio_and_buf_curl_against_the_real_server() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("bash")
        .arg(format!("{repo}/tests/stock/run.sh"))
        .arg(env!("CARGO_BIN_EXE_protoserve"))
        .current_dir(repo)
        .output()
        .expect("run tests/stock/run.sh (needs bash)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the stock-client suite failed ({}); output above",
        output.status
    );
    assert!(stdout.contains(" passed"), "pytest ran no test:\n{stdout}");
    assert!(
        stdout.contains("buf: ") && stdout.contains(" 0 failed"),
        "buf checks did not run:\n{stdout}"
    );
}
