//! Rule provenance against the real binary: the rules that decided each call (package, rule,
//! file, line, METADATA id) in the HTTP answer, in the WAL's decision record and in
//! `wal inspect --audit-id`, for the demo policy and an example bundle; none where another
//! layer decided.

use serde_json::{Value, json};

use crate::common::*;

fn rule(name: &str, file: &str, line: u64, id: &str) -> Value {
    json!({"package": "autonomy", "rule": name, "file": file, "line": line, "id": id})
}

/// The policy-layer decision record of `id`.
fn policy_record(dir: &std::path::Path, id: &str) -> Value {
    records_for(dir, id)
        .into_iter()
        .find(|r| r["type"] == "decision" && r["layer"] == "policy")
        .unwrap_or_else(|| panic!("no policy decision record for {id}"))
}

#[test]
fn demo_answers_records_and_inspect_name_the_rules() {
    let mut d = Daemon::start(&["--demo", "--allowed-domains", "localhost"]);
    let cases = [
        (
            r#"{"kind":"tool.echo","params":{"message":"hi"}}"#,
            200,
            rule("allow", "demo.rego", 12, "DEMO-ECHO"),
        ),
        (
            r#"{"kind":"tool.shell","params":{"command":"id"}}"#,
            403,
            rule("reason", "demo.rego", 24, "DEMO-SHELL"),
        ),
        (
            r#"{"kind":"tool.teleport","params":{}}"#,
            403,
            rule("reason", "demo.rego", 28, "DEMO-OTHER-KIND"),
        ),
    ];
    let mut ids = Vec::new();
    for (body, status, want) in &cases {
        let r = d.tool(body);
        assert_eq!(r.status, *status, "{body}");
        let v = r.json();
        assert_eq!(v["rules"], json!([want]), "{v}");
        ids.push(v["audit_id"].as_str().unwrap().to_string());
    }
    // The policy allowed this fetch (DEMO-HTTP) and the runtime layer refused it: the answer
    // is the runtime's and names no rule; the policy's record still does.
    let r = d.tool(r#"{"kind":"tool.http_get","params":{"endpoint":"https://example.com/"}}"#);
    assert_eq!(r.status, 403);
    let v = r.json();
    assert!(v.get("rules").is_none(), "{v}");
    let fetch_id = v["audit_id"].as_str().unwrap().to_string();
    assert!(d.stop().success());

    for ((_, _, want), id) in cases.iter().zip(&ids) {
        assert_eq!(policy_record(&d.wal_dir, id)["rules"], json!([want]));
    }
    assert_eq!(
        policy_record(&d.wal_dir, &fetch_id)["rules"],
        json!([rule("allow", "demo.rego", 16, "DEMO-HTTP")])
    );
    let runtime = records_for(&d.wal_dir, &fetch_id)
        .into_iter()
        .find(|r| r["layer"] == "runtime")
        .expect("the runtime layer's record");
    assert!(runtime.get("rules").is_none(), "{runtime}");

    // `wal inspect --audit-id`: the table names them by id and place; --json in full.
    let dir = p(&d.wal_dir);
    let out = cli(
        &["wal", "inspect", "--dir", dir, "--audit-id", &ids[1]],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("rules=DEMO-SHELL@demo.rego:24 "),
        "{}",
        out.stdout
    );
    let out = cli(
        &[
            "wal",
            "inspect",
            "--dir",
            dir,
            "--json",
            "--audit-id",
            &ids[0],
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rec: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(rec["rules"], json!([cases[0].2]));
}

#[test]
fn a_bundle_names_its_rules_and_a_rate_limit_names_none() {
    let t = tempfile::tempdir().unwrap();
    let bundle = t.path().join("args.tar.gz");
    build_bundle(
        &repo().join("examples/policies/argument-checks"),
        &bundle,
        "1.0.0",
        "args",
    );
    let limits = t.path().join("limits.json");
    std::fs::write(
        &limits,
        r#"{"limits": [{"kind": "tool.echo", "per_minute": 2, "burst": 2}]}"#,
    )
    .unwrap();
    let mut d = Daemon::start(&["--policy", p(&bundle), "--limits", p(&limits)]);
    let ok = d.tool(r#"{"kind":"tool.echo","params":{"message":"hello"}}"#);
    assert_eq!(ok.status, 200);
    let v = ok.json();
    let policy_ref = v["policy_ref"].as_str().unwrap().to_string();
    assert!(policy_ref.contains("args"), "{v}");
    assert_eq!(v["rules"][0]["id"], "ARGS-ECHO", "{v}");
    assert_eq!(v["rules"][0]["file"], "policy.rego", "{v}");
    let secret = d.tool(r#"{"kind":"tool.echo","params":{"message":"my password"}}"#);
    assert_eq!(secret.status, 403);
    let sv = secret.json();
    assert_eq!(sv["rules"][0]["id"], "ARGS-ECHO-SECRET", "{sv}");
    assert_eq!(sv["rules"][0]["rule"], "reason", "{sv}");
    // Over the limit: denied before the policy, so no rule is named.
    let limited = d.tool(r#"{"kind":"tool.echo","params":{"message":"again"}}"#);
    assert_eq!(limited.status, 429, "{:?}", limited.json());
    let lv = limited.json();
    assert!(lv.get("rules").is_none(), "{lv}");
    assert!(d.stop().success());
    let rec = policy_record(&d.wal_dir, sv["audit_id"].as_str().unwrap());
    assert_eq!(rec["rules"], sv["rules"]);
    assert_eq!(rec["policy_ref"], policy_ref.as_str());
    let lrec = records_for(&d.wal_dir, lv["audit_id"].as_str().unwrap());
    assert!(lrec.iter().all(|r| r.get("rules").is_none()), "{lrec:?}");
}
