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
    // Counts from the suites' own summary lines: every test ran and none was skipped.
    let pytest = counts(&stdout, "pytest: ");
    assert!(
        pytest.passed >= 50 && pytest.failed == 0 && pytest.skipped == 0,
        "pytest: {pytest:?} (expected at least 50 passed, none failed or skipped):\n{stdout}"
    );
    let buf = counts(&stdout, "buf: ");
    assert!(
        buf.passed >= 10 && buf.failed == 0,
        "buf curl: {buf:?} (expected at least 10 checks passed, none failed):\n{stdout}"
    );
}

#[derive(Debug, Default)]
struct Counts {
    passed: u32,
    failed: u32,
    skipped: u32,
}

/// Reads "PREFIX N passed, N failed[, N skipped…]" from the runner's output.
fn counts(stdout: &str, prefix: &str) -> Counts {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"));
    let mut c = Counts::default();
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let n: u32 = n
            .parse()
            .unwrap_or_else(|_| panic!("bad count in {line:?}"));
        match what {
            "passed" => c.passed = n,
            "failed" => c.failed = n,
            "skipped" => c.skipped = n,
            _ => {}
        }
    }
    c
}
