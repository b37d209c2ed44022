//! Rate limits: token buckets per agent × kind from `--limits FILE` or a bundle's data.json;
//! 429 with `Retry-After`, recorded as a deny with reason `rate limited`.

use serde_json::Value;

use super::add_agent;
use crate::common::*;

const ECHO: &str = r#"{"kind":"tool.echo","params":{"message":"hi"}}"#;

#[test]
fn over_the_limit_is_429_with_retry_after_and_a_recorded_deny() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let agents = tmp.path().join("wal.agents.json");
    let alice = add_agent(&agents, "alice", false);
    let limits = tmp.path().join("limits.json");
    std::fs::write(
        &limits,
        r#"{"limits": [{"kind": "tool.echo", "per_minute": 2, "burst": 2}]}"#,
    )
    .unwrap();
    let d = Daemon::start_in(
        &wal,
        &["--demo", "--auth", "optional", "--limits", p(&limits)],
        |_| {},
    );
    assert_eq!(d.tool(ECHO).status, 200);
    assert_eq!(d.tool(ECHO).status, 200);
    let third = d.tool(ECHO);
    assert_eq!(third.status, 429);
    let retry: u64 = third.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    let body = third.json();
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["reason"], "rate limited");
    assert!(body["audit_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(body["policy_ref"], "embedded:demo");
    // Another agent has its own bucket; another kind has no rule.
    assert_eq!(d.tool_as(&alice, ECHO).status, 200);
    assert_eq!(
        d.tool(r#"{"kind":"tool.shell","params":{"command":"id"}}"#)
            .status,
        403
    );
    let rec: Vec<Value> = records_for(&wal, body["audit_id"].as_str().unwrap());
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["type"], "decision");
    assert_eq!(rec[0]["layer"], "limit");
    assert_eq!(rec[0]["decision"], "deny");
    assert_eq!(rec[0]["reason"], "rate limited");
    assert_eq!(rec[0]["agent"], "anonymous");
    assert_eq!(rec[0]["params"]["message"], "hi");
}

#[test]
fn a_bundle_brings_its_limits_and_bad_limits_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("p.rego"),
        "package autonomy\ndefault allow := false\nallow if input.kind == \"tool.echo\"\n",
    )
    .unwrap();
    std::fs::write(
        src.join("data.json"),
        r#"{"limits": [{"agent": "*", "kind": "tool.*", "per_second": 0.1, "burst": 1}]}"#,
    )
    .unwrap();
    let bundle = tmp.path().join("b.tar.gz");
    let out = build_bundle(&src, &bundle, "1.0.0", "limited");
    assert_eq!(out.code, 0, "{}", out.all());
    let d = Daemon::start(&["--policy", p(&bundle)]);
    assert_eq!(d.tool(ECHO).status, 200);
    let r = d.tool(ECHO);
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((5..=10).contains(&retry), "Retry-After {retry}");

    // A bad limits list refuses the bundle with one line naming it.
    std::fs::write(
        src.join("data.json"),
        r#"{"limits": [{"kind": "tool.echo", "per_second": 1, "per_minute": 5}]}"#,
    )
    .unwrap();
    let out = try_build(&src, &tmp.path().join("bad.tar.gz"), "1.0.1");
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.all()
            .contains("limits[0]: give exactly one of per_second or per_minute"),
        "{}",
        out.all()
    );
    // And so does a bad --limits file, before anything starts.
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"limits": [{"kind": "a*b", "per_second": 1}]}"#).unwrap();
    let out = cli(
        &[
            "runtime",
            "start",
            "--demo",
            "--limits",
            p(&bad),
            "--listen",
            "127.0.0.1:0",
            "--wal-dir",
            p(&tmp.path().join("w")),
        ],
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.all());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.all());
    assert!(out.stderr.contains("limits[0].kind"), "{}", out.all());
}
