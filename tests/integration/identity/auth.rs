//! Bearer tokens: `agent add|list|revoke`, `--auth off|optional|required`, 401, `input.agent`
//! and `agent` in records, and `run`'s one-run token.

use std::time::Duration;

use serde_json::Value;

use super::{add_agent, policy_dir};
use crate::common::*;

const BY_AGENT: &str = r#"package autonomy
default allow := false
allow if input.agent == "alice"
reason := sprintf("agent %s may not", [input.agent])
"#;

fn decisions(dir: &std::path::Path) -> Vec<Value> {
    wal_records(dir)
        .into_iter()
        .filter(|r| r["type"] == "decision")
        .collect()
}

#[test]
fn tokens_name_the_caller_and_a_missing_or_bad_one_is_401() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy_dir(tmp.path(), "pol", BY_AGENT);
    let wal = tmp.path().join("wal");
    let agents = tmp.path().join("wal.agents.json");
    let alice = add_agent(&agents, "alice", false);
    let bob = add_agent(&agents, "bob", false);
    // The file holds hashes, never the tokens.
    let text = std::fs::read_to_string(&agents).unwrap();
    assert!(!text.contains(&alice[4..]) && !text.contains(&bob[4..]));
    let list = cli(&["agent", "list", "--json", "--agents", p(&agents)], &[]);
    assert_eq!(list.code, 0, "{}", list.all());
    let names: Vec<String> = list
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(!list.stdout.contains("aut_"));
    let dup = cli(&["agent", "add", "alice", "--agents", p(&agents)], &[]);
    assert_eq!(dup.code, 2, "{}", dup.all());
    assert!(dup.stderr.contains("already exists"), "{}", dup.all());

    let d = Daemon::start_in(&wal, &["--policy", p(&pol), "--auth", "required"], |_| {});
    let echo = r#"{"kind":"tool.echo","params":{"message":"hi"}}"#;

    let none = d.tool(echo);
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"autonomy\"")
    );
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("bearer token is required")
    );
    let bad = d.tool_as("aut_0000", echo);
    assert_eq!(bad.status, 401);
    assert!(
        bad.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    let basic = http_with(
        d.addr,
        "POST",
        "/v1/tool",
        &[("Authorization", "Basic YWxpY2U6eA==")],
        Some(("application/json", echo.as_bytes())),
    );
    assert_eq!(basic.status, 401);
    // Nothing unauthenticated was evaluated or recorded.
    assert!(decisions(&wal).is_empty());

    let a = d.tool_as(&alice, echo);
    assert_eq!(a.status, 200, "{:?}", a.json());
    assert_eq!(a.json()["agent"], "alice");
    assert_eq!(a.json()["output"], "hi");
    let b = d.tool_as(&bob, echo);
    assert_eq!(b.status, 403);
    assert_eq!(b.json()["reason"], "agent bob may not");
    assert_eq!(b.json()["agent"], "bob");
    let recs = decisions(&wal);
    let who: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["agent"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(who, [("alice", "allow"), ("bob", "deny")]);
    let started = wal_records(&wal)
        .into_iter()
        .find(|r| r["event"] == "started")
        .unwrap();
    assert_eq!(started["auth"], "required");

    // Revoked: the running daemon stops taking the token within a few seconds.
    let rev = cli(&["agent", "revoke", "alice", "--agents", p(&agents)], &[]);
    assert_eq!(rev.code, 0, "{}", rev.all());
    assert!(
        eventually(Duration::from_secs(5), || d.tool_as(&alice, echo).status
            == 401),
        "a revoked token still works"
    );
    assert_eq!(d.tool_as(&bob, echo).status, 403);
    let again = cli(&["agent", "revoke", "alice", "--agents", p(&agents)], &[]);
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.contains("no agent named \"alice\""),
        "{}",
        again.all()
    );
}

#[test]
fn optional_and_off_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = policy_dir(tmp.path(), "pol", BY_AGENT);
    let wal = tmp.path().join("wal");
    let agents = tmp.path().join("wal.agents.json");
    let alice = add_agent(&agents, "alice", false);
    let echo = r#"{"kind":"tool.echo","params":{"message":"hi"}}"#;
    {
        let d = Daemon::start_in(&wal, &["--policy", p(&pol), "--auth", "optional"], |_| {});
        let anon = d.tool(echo);
        assert_eq!(anon.status, 403);
        assert_eq!(anon.json()["reason"], "agent anonymous may not");
        assert!(anon.json().get("agent").is_none());
        assert_eq!(d.tool_as(&alice, echo).status, 200);
        // A token that is presented must be valid, even where none is needed.
        assert_eq!(d.tool_as("aut_nope", echo).status, 401);
    }
    // Loopback default: off. Tokens are not read; every caller is anonymous.
    let wal2 = tmp.path().join("wal2");
    std::fs::copy(&agents, tmp.path().join("wal2.agents.json")).unwrap();
    let d = Daemon::start_in(&wal2, &["--policy", p(&pol)], |_| {});
    assert_eq!(d.tool_as(&alice, echo).status, 403);
    assert_eq!(d.tool_as("aut_nope", echo).status, 403);
    let recs = decisions(&wal2);
    assert!(recs.iter().all(|r| r["agent"] == "anonymous"), "{recs:?}");
}

#[test]
fn beyond_loopback_tokens_are_required_or_the_start_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents.json");
    for (extra, want) in [
        (vec!["--demo"], "no agent has a token in"),
        (
            vec!["--demo", "--auth", "off"],
            "pass --insecure-no-auth to mean it",
        ),
        (
            vec!["--demo", "--auth", "optional"],
            "pass --insecure-no-auth to mean it",
        ),
        (vec!["--demo", "--auth", "sometimes"], "unknown auth mode"),
    ] {
        let mut args = vec![
            "runtime",
            "start",
            "--listen",
            "0.0.0.0:0",
            "--agents",
            p(&agents),
            "--wal-dir",
        ];
        let wal = tmp.path().join("wal");
        args.push(p(&wal));
        args.extend(extra.iter().copied());
        let out = cli(&args, &[]);
        assert_eq!(out.code, 2, "{args:?}: {}", out.all());
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.all());
        assert!(out.stderr.contains(want), "{args:?}: {}", out.all());
        // Refused before anything was opened.
        assert!(!wal.exists());
    }
    // Required with no agents on loopback is refused too, with how to add one.
    let out = cli(
        &[
            "runtime",
            "start",
            "--demo",
            "--auth",
            "required",
            "--agents",
            p(&agents),
            "--listen",
            "127.0.0.1:0",
            "--wal-dir",
            p(&tmp.path().join("w")),
        ],
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains("autonomy agent add NAME"),
        "{}",
        out.all()
    );
}

#[test]
fn run_gives_its_child_a_one_run_token() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    // The child calls with its token, then without it (required: 401).
    let script = r#"
import json, os, urllib.request, urllib.error
url = os.environ["AUTONOMY_RUNTIME_URL"] + "/v1/tool"
tok = os.environ["AUTONOMY_RUNTIME_TOKEN"]
body = json.dumps({"kind": "tool.echo", "params": {"message": "x"}}).encode()
def call(headers):
    rq = urllib.request.Request(url, data=body, headers=dict({"Content-Type": "application/json"}, **headers))
    try:
        with urllib.request.urlopen(rq, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
s1, b1 = call({"Authorization": "Bearer " + tok})
s2, b2 = call({})
print(json.dumps([s1, b1.get("agent"), s2]))
"#;
    let out = cli(
        &[
            "run",
            "--auth",
            "required",
            "--dir",
            p(&wal),
            "--agents",
            p(&tmp.path().join("agents.json")),
            "python3",
            "-c",
            script,
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v, serde_json::json!([200, "run", 401]));
    let recs = decisions(&wal);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["agent"], "run");

    // examples/agent.py sends the token when it is set (run's default auth is optional).
    let out = cli(
        &[
            "run",
            "--auth",
            "required",
            "--agents",
            p(&tmp.path().join("agents.json")),
            "python3",
            p(&repo().join("examples/agent.py")),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.all());
}

#[test]
fn metrics_follow_the_auth_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let agents = tmp.path().join("wal.agents.json");
    let prom = add_agent(&agents, "prometheus", false);
    let d = Daemon::start_in(&wal, &["--demo", "--auth", "required"], |_| {});
    let none = http(d.addr, "GET", "/metrics", None);
    assert_eq!(none.status, 401);
    assert!(none.header("www-authenticate").is_some());
    let auth = format!("Bearer {prom}");
    let ok = http_with(d.addr, "GET", "/metrics", &[("Authorization", &auth)], None);
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("autonomy_build_info"));
    // /health and /openapi.json stay open: supervisors and client generators need no token.
    assert_eq!(http(d.addr, "GET", "/health", None).status, 200);
    assert_eq!(http(d.addr, "GET", "/openapi.json", None).status, 200);
}
