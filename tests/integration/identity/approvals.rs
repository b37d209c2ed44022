//! Human approval: a policy's `approval` rule parks a call (recorded `approval.requested`)
//! until `autonomy approve|reject` or `POST /v1/approvals/{audit_id}` decides it, or the timeout
//! denies it; the tool runs only after the approval record is durable.

use std::time::Duration;

use serde_json::Value;

use super::{add_agent, policy_dir};
use crate::common::*;

pub const ASK: &str = r#"package autonomy
default allow := false
allow if input.kind == "tool.echo"
approval if input.params.message == "ask"
approval_reason := "echoing ask needs a person"
"#;

/// `autonomy approvals --json` against `d` (through its local operator file): the waiting calls.
pub fn pending(d: &Daemon) -> Vec<Value> {
    let out = cli(
        &["approvals", "--json", "--agents", p(&d.agents_file())],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until one call waits, and returns it.
pub fn one_pending(d: &Daemon) -> Value {
    let mut got = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            got = pending(d);
            !got.is_empty()
        }),
        "no call waits for approval"
    );
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

fn ask_in_background(d: &Daemon) -> std::thread::JoinHandle<Resp> {
    let addr = d.addr;
    std::thread::spawn(move || {
        http(
            addr,
            "POST",
            "/v1/tool",
            Some((
                "application/json",
                br#"{"kind":"tool.echo","params":{"message":"ask"}}"#,
            )),
        )
    })
}

fn types_for(d: &Daemon, id: &str) -> Vec<(String, String)> {
    records_for(&d.wal_dir, id)
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap().to_string(),
                r.get("event")
                    .or(r.get("layer"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn approve_reject_and_timeout_over_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy_dir(tmp.path(), "pol", ASK);
    let d = Daemon::start_in(
        &tmp.path().join("wal"),
        &["--policy", p(&pol), "--approval-timeout", "3s"],
        |_| {},
    );
    // Not asked: runs at once.
    let plain = d.tool(r#"{"kind":"tool.echo","params":{"message":"hi"}}"#);
    assert_eq!(plain.status, 200);
    assert!(plain.json().get("approval").is_none());

    // Approved.
    let call = ask_in_background(&d);
    let p1 = one_pending(&d);
    assert_eq!(p1["kind"], "tool.echo");
    assert_eq!(p1["params"]["message"], "ask");
    assert_eq!(p1["agent"], "anonymous");
    assert_eq!(p1["source"], "http");
    assert_eq!(p1["reason"], "echoing ask needs a person");
    let id = p1["audit_id"].as_str().unwrap().to_string();
    // Parked, not decided: only the request is in the log.
    assert_eq!(
        types_for(&d, &id),
        [("approval".into(), "approval.requested".into())]
    );
    let ok = cli(
        &[
            "approve",
            &id,
            "--note",
            "checked",
            "--agents",
            p(&d.agents_file()),
        ],
        &[],
    );
    assert_eq!(ok.code, 0, "{}", ok.all());
    let r = call.join().unwrap();
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["output"], "ask");
    assert_eq!(b["audit_id"], id.as_str());
    assert_eq!(
        b["approval"],
        serde_json::json!({"decision": "approve", "by": "operator:local", "note": "checked"})
    );
    assert_eq!(
        types_for(&d, &id),
        [
            ("approval".into(), "approval.requested".into()),
            ("decision".into(), "approval".into())
        ]
    );
    let rec = &records_for(&d.wal_dir, &id)[1];
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["by"], "operator:local");
    assert_eq!(rec["note"], "checked");
    // A second answer is a conflict; an unknown id is not found.
    let again = cli(&["reject", &id, "--agents", p(&d.agents_file())], &[]);
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(again.stderr.contains("409"), "{}", again.all());
    let unknown = cli(&["approve", "nope", "--agents", p(&d.agents_file())], &[]);
    assert!(unknown.stderr.contains("404"), "{}", unknown.all());

    // Rejected.
    let call = ask_in_background(&d);
    let id = one_pending(&d)["audit_id"].as_str().unwrap().to_string();
    let no = cli(
        &[
            "reject",
            &id,
            "--note",
            "not now",
            "--agents",
            p(&d.agents_file()),
        ],
        &[],
    );
    assert_eq!(no.code, 0, "{}", no.all());
    let r = call.join().unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["decision"], "deny");
    assert_eq!(r.json()["reason"], "rejected by operator:local: not now");
    assert_eq!(r.json()["approval"]["decision"], "reject");
    assert!(r.json().get("output").is_none());

    // Timed out: denied after --approval-timeout, recorded `by: timeout`.
    let t0 = std::time::Instant::now();
    let r = ask_in_background(&d).join().unwrap();
    let waited = t0.elapsed();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "not approved within 3 s");
    assert_eq!(r.json()["approval"]["decision"], "timeout");
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let id = r.json()["audit_id"].as_str().unwrap().to_string();
    let recs = records_for(&d.wal_dir, &id);
    assert_eq!(recs[1]["by"], "timeout");
    assert_eq!(recs[1]["decision"], "deny");
    assert!(pending(&d).is_empty());
}

#[test]
fn the_http_endpoint_needs_an_operator_token() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy_dir(tmp.path(), "pol", ASK);
    let wal = tmp.path().join("wal");
    let agents = tmp.path().join("wal.agents.json");
    let agent = add_agent(&agents, "planner", false);
    let ops = add_agent(&agents, "ops", true);
    let d = Daemon::start_in(&wal, &["--policy", p(&pol), "--auth", "optional"], |_| {});
    let addr = d.addr;
    let agent2 = agent.clone();
    let call = std::thread::spawn(move || {
        http_with(
            addr,
            "POST",
            "/v1/tool",
            &[("Authorization", &format!("Bearer {agent2}"))],
            Some((
                "application/json",
                br#"{"kind":"tool.echo","params":{"message":"ask"}}"#,
            )),
        )
    });
    let p1 = one_pending(&d);
    assert_eq!(p1["agent"], "planner");
    let id = p1["audit_id"].as_str().unwrap();
    let path = format!("/v1/approvals/{id}");
    let body = br#"{"decision":"approve","note":"ok"}"#;
    let post = |hdrs: &[(&str, &str)], b: &[u8]| {
        http_with(addr, "POST", &path, hdrs, Some(("application/json", b)))
    };
    // No token: 401; an agent's token (not an operator): 403; the agent cannot approve itself.
    let r = post(&[], body);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let as_agent = format!("Bearer {agent}");
    let r = post(&[("Authorization", &as_agent)], body);
    assert_eq!(r.status, 403, "{:?}", r.json());
    let listed = http_with(
        addr,
        "GET",
        "/v1/approvals",
        &[("Authorization", &as_agent)],
        None,
    );
    assert_eq!(listed.status, 403);
    let as_ops = format!("Bearer {ops}");
    // Bad bodies: 400 with a message.
    for bad in [
        &b"{}"[..],
        b"{\"decision\":\"maybe\"}",
        b"[",
        b"{\"decision\":\"approve\",\"note\":3}",
    ] {
        let r = post(&[("Authorization", &as_ops)], bad);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(r.json()["error"].is_string());
    }
    let listed = http_with(
        addr,
        "GET",
        "/v1/approvals",
        &[("Authorization", &as_ops)],
        None,
    );
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["pending"][0]["audit_id"], id);
    let r = post(&[("Authorization", &as_ops)], body);
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        r.json(),
        serde_json::json!({"audit_id": id, "decision": "approve", "by": "ops"})
    );
    let answer = call.join().unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["agent"], "planner");
    assert_eq!(answer.json()["approval"]["by"], "ops");
    let r = post(&[("Authorization", &as_ops)], body);
    assert_eq!(r.status, 409);
    let r = http_with(
        addr,
        "POST",
        "/v1/approvals/unknown-id",
        &[("Authorization", &as_ops)],
        Some(("application/json", body)),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn a_stop_denies_the_calls_that_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy_dir(tmp.path(), "pol", ASK);
    let mut d = Daemon::start_in(&tmp.path().join("wal"), &["--policy", p(&pol)], |_| {});
    let call = ask_in_background(&d);
    let id = one_pending(&d)["audit_id"].as_str().unwrap().to_string();
    let t0 = std::time::Instant::now();
    assert!(d.stop().success());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the stop waited for the approval timeout"
    );
    let r = call.join().unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "not approved: the runtime stopped");
    let recs = records_for(&d.wal_dir, &id);
    assert_eq!(recs.last().unwrap()["by"], "shutdown");
    // The local operator file is gone with the runtime.
    assert!(!d.agents_file().with_file_name("operator.json").exists());
}
