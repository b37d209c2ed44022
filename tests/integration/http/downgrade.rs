//! Downgrades over HTTP: a policy's `patch` clamps a call's params; the answer says `allow` with
//! `downgraded: true` and the patch, the tool runs with the patched params, and the WAL holds
//! both values under the call's one audit id.

use serde_json::{Value, json};

use crate::common::*;

/// `tool.drive` (decision-only: the caller acts) has its `speed` clamped to 1; `tool.echo`'s
/// message is rewritten; a patch the tool cannot take, or one the policy would still deny, is a
/// deny.
const CLAMP: &str = r#"package autonomy

default allow := false

allow if {
	input.kind == "tool.drive"
	input.params.speed <= 1
}

allow if {
	input.kind == "tool.echo"
	input.params.message != "rm -rf /"
}

reason := "speed over 1" if input.params.speed > 1

patch := {"speed": 1} if {
	input.kind == "tool.drive"
	input.params.speed > 1
	input.params.speed < 100
}

patch := {"speed": 50} if input.params.speed >= 100

patch := {"message": "ls"} if input.params.message == "rm -rf /"

patch := {"message": null} if input.params.message == "drop it"
"#;

#[test]
fn a_clamped_param_is_a_downgrade_with_both_values_in_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("clamp.rego");
    std::fs::write(&policy, CLAMP).unwrap();
    let wal = tmp.path().join("wal");
    let d = Daemon::start_in(&wal, &["--policy", p(&policy)], |_| {});

    let r = d.tool(r#"{"kind":"tool.drive","params":{"speed":3,"heading":90}}"#);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(v["downgraded"], true, "{v}");
    assert_eq!(v["patch"], json!({"speed": 1}), "{v}");
    assert!(v.get("reason").is_none(), "{v}");
    let drive_id = v["audit_id"].as_str().unwrap().to_string();

    // A built-in tool runs with the patched params.
    let r = d.tool(r#"{"kind":"tool.echo","params":{"message":"rm -rf /"}}"#);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["output"], "ls", "{v}");
    assert_eq!(v["downgraded"], true, "{v}");
    assert_eq!(v["patch"], json!({"message": "ls"}), "{v}");

    // Within the limit: a plain allow, no downgrade fields.
    let r = d.tool(r#"{"kind":"tool.drive","params":{"speed":0.5}}"#);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(
        v.get("downgraded").is_none() && v.get("patch").is_none(),
        "{v}"
    );

    // Still over the limit once patched: denied with the policy's reason.
    let r = d.tool(r#"{"kind":"tool.drive","params":{"speed":150}}"#);
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(v["decision"], "deny");
    assert_eq!(
        v["reason"], "the patched call is denied: speed over 1",
        "{v}"
    );
    assert!(v.get("downgraded").is_none(), "{v}");

    // The patched params no longer fit the tool: denied, naming what is wrong.
    let r = d.tool(r#"{"kind":"tool.echo","params":{"message":"drop it"}}"#);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["reason"],
        "the policy's patch does not fit the call: tool.echo: params.message is required"
    );

    // GET /metrics counts the two downgrades as such.
    let m = http(d.addr, "GET", "/metrics", None);
    let text = String::from_utf8(m.body).unwrap();
    for kind in ["tool.drive", "tool.echo"] {
        let series = format!(
            "autonomy_decisions_total{{kind=\"{kind}\",source=\"http\",decision=\"downgrade\",agent=\"anonymous\"}} 1"
        );
        assert!(text.lines().any(|l| l == series), "{series}\n{text}");
    }

    let recs = records_for(&wal, &drive_id);
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = &recs[0];
    assert_eq!(rec["type"], "decision");
    assert_eq!(rec["decision"], "downgrade");
    assert_eq!(rec["layer"], "policy");
    assert_eq!(rec["params"], json!({"speed": 3, "heading": 90}));
    assert_eq!(rec["patch"], json!({"speed": 1}));
    assert_eq!(rec["patched"], json!({"speed": 1, "heading": 90}));
    let decisions: Vec<Value> = wal_records(&wal)
        .into_iter()
        .filter(|r| r["type"] == "decision")
        .map(|r| r["decision"].clone())
        .collect();
    assert_eq!(
        decisions,
        [
            json!("downgrade"),
            json!("downgrade"),
            json!("allow"),
            json!("deny"),
            json!("deny")
        ]
    );
}
