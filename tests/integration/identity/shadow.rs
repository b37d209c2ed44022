//! Shadow mode: the policy's decision is recorded (marked `shadow: true`), and the call is
//! allowed; `wal inspect --shadow-diff` lists what enforcing it would have denied.

use serde_json::Value;

use crate::common::*;

fn shadow_checks(d: &Daemon) {
    let shell = d.tool(r#"{"kind":"tool.shell","params":{"command":"id"}}"#);
    // No built-in executor for tool.shell: allowed as decision-only.
    assert_eq!(shell.status, 200, "{:?}", shell.json());
    let b = shell.json();
    assert_eq!(b["decision"], "allow");
    assert_eq!(b["shadow"]["decision"], "deny");
    assert!(
        b["shadow"]["reason"]
            .as_str()
            .unwrap()
            .contains("always blocked by policy")
    );
    let echo = d.tool(r#"{"kind":"tool.echo","params":{"message":"hi"}}"#);
    assert_eq!(echo.status, 200);
    assert_eq!(echo.json()["output"], "hi");
    assert_eq!(echo.json()["shadow"]["decision"], "allow");
    let recs = records_for(&d.wal_dir, b["audit_id"].as_str().unwrap());
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(recs[0]["shadow"], true);

    let diff = cli(
        &[
            "wal",
            "inspect",
            "--dir",
            p(&d.wal_dir),
            "--shadow-diff",
            "--json",
        ],
        &[],
    );
    assert_eq!(diff.code, 0, "{}", diff.all());
    let lines: Vec<Value> = diff
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", diff.stdout);
    assert_eq!(lines[0]["kind"], "tool.shell");
    assert_eq!(lines[0]["audit_id"], b["audit_id"]);
}

#[test]
fn shadow_flag_records_what_would_have_been_denied_and_allows() {
    let d = Daemon::start(&["--demo", "--shadow"]);
    shadow_checks(&d);
    let started = wal_records(&d.wal_dir)
        .into_iter()
        .find(|r| r["event"] == "started")
        .unwrap();
    assert_eq!(started["shadow"], true);
}

#[test]
fn a_shadow_bundle_watches_without_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("p.rego"), crate::common::DEMO_REGO).unwrap();
    let bundle = tmp.path().join("b.tar.gz");
    let out = cli(
        &[
            "policy",
            "build",
            "--in",
            p(&src),
            "--out",
            p(&bundle),
            "--version",
            "1.0.0",
            "--shadow",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let d = Daemon::start(&["--policy", p(&bundle)]);
    shadow_checks(&d);
}
