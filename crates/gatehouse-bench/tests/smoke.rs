//! The benchmark end to end at toy sizes (`--smoke`, a few seconds): every measurement runs
//! against both bastions and a report comes out. Needs root, like the other end-to-end tests
//! (`sudo tests/run`). Asserts that figures exist, never what they are.

use std::path::Path;
use std::process::Command;

#[path = "../../../tests/harness/panics.rs"]
mod panics;

#[test]
fn smoke_run_produces_every_figure() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark smoke test needs root (network namespaces, sshd): run `sudo tests/run`"
    );
    let bench = Path::new(env!("CARGO_BIN_EXE_gatehouse-bench"));
    let gatehouse = bench.with_file_name("gatehouse");
    if !gatehouse.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "gatehouse"])
            .status()
            .expect("run cargo build -p gatehouse");
        assert!(status.success(), "cargo build -p gatehouse");
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("smoke.json");
    let md = dir.path().join("smoke.md");
    let out = Command::new(bench)
        .arg("--smoke")
        .arg("--gatehouse")
        .arg(&gatehouse)
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .output()
        .expect("run gatehouse-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The harness rule: no program of the run (the bench itself, or a daemon it ran and
    // reported on) printed a panic.
    panics::assert_no_panic("gatehouse-bench --smoke", &stderr, &stderr);
    panics::assert_no_panic(
        "gatehouse-bench --smoke (stdout)",
        &String::from_utf8_lossy(&out.stdout),
        &stderr,
    );
    assert!(
        out.status.success(),
        "gatehouse-bench --smoke failed:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("read the JSON report"))
            .expect("parse the JSON report");
    let rows = report["rows"].as_array().expect("rows");
    assert!(rows.len() >= 20, "{report:#}");
    for row in rows {
        // The gatehouse-only rows have no OpenSSH figure; every row has a gatehouse one,
        // except head-of-line figures that may legitimately be zero (still a number), and the
        // siege's p95 of successful logins, which has none when no login got through.
        let metric = row["metric"].as_str().unwrap_or_default();
        if metric.contains("p95 of the successful logins") {
            continue;
        }
        assert!(
            row["gatehouse"].is_number(),
            "no gatehouse figure: {row}\n{stderr}"
        );
    }
    assert!(
        report["problems"].as_array().is_some_and(|p| p.is_empty()),
        "{:#}\n{stderr}",
        report["problems"]
    );
    let text = std::fs::read_to_string(&md).expect("read the Markdown report");
    assert!(text.contains("## Targets"));
}
