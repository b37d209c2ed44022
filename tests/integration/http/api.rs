//! The HTTP API against the real binary: every status row of `docs/http-api.md`, every demo-policy row of
//! §4, bad input, and the WAL records behind each answer.

use nix::sys::resource::Resource;
use serde_json::Value;

use crate::common::*;

fn assert_common(v: &Value, decision: &str, policy_ref: &str) -> String {
    assert_eq!(v["decision"], decision, "{v}");
    assert_eq!(v["policy_ref"], policy_ref, "{v}");
    let id = v["audit_id"].as_str().expect("audit_id").to_string();
    assert!(!id.is_empty());
    id
}

#[test]
fn health_is_ok() {
    let d = Daemon::start(&["--demo"]);
    let r = http(d.addr, "GET", "/health", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
}

#[test]
fn demo_policy_rows_and_their_records() {
    let mut d = Daemon::start(&["--demo"]);

    // tool.echo: allow, executed.
    let r = d.tool(r#"{"kind":"tool.echo","params":{"message":"hello"}}"#);
    assert_eq!(r.status, 200);
    let v = r.json();
    let echo_id = assert_common(&v, "allow", "embedded:demo");
    assert_eq!(v["output"], "hello");
    assert!(v.get("reason").is_none());

    // tool.shell: deny, "always blocked by policy".
    let r = d.tool(r#"{"kind":"tool.shell","params":{"command":"id"}}"#);
    assert_eq!(r.status, 403);
    let v = r.json();
    let shell_id = assert_common(&v, "deny", "embedded:demo");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("always blocked by policy"),
        "{v}"
    );
    assert!(v.get("output").is_none());

    // Unknown kind: deny.
    let r = d.tool(r#"{"kind":"tool.teleport","params":{}}"#);
    assert_eq!(r.status, 403);
    let v = r.json();
    let unknown_id = assert_common(&v, "deny", "embedded:demo");
    assert!(
        v["reason"].as_str().unwrap().contains("tool.teleport"),
        "{v}"
    );

    // tool.ros2.launch: allow, decision only (no built-in executor). `params` omitted.
    let r = d.tool(r#"{"kind":"tool.ros2.launch"}"#);
    assert_eq!(r.status, 200);
    let v = r.json();
    let launch_id = assert_common(&v, "allow", "embedded:demo");
    assert!(v.get("output").is_none(), "{v}");

    // tool.http_get: allowed by the policy, refused by the runtime (not in the allowlist).
    let r = d.tool(r#"{"kind":"tool.http_get","params":{"endpoint":"https://example.com/"}}"#);
    assert_eq!(r.status, 403);
    let v = r.json();
    let get_id = assert_common(&v, "deny", "embedded:demo");
    assert!(v["reason"].as_str().unwrap().contains("allowlist"), "{v}");

    let dir = d.wal_dir.clone();
    d.stop();

    let one = |id: &str| {
        let recs = records_for(&dir, id);
        assert_eq!(recs.len(), 1, "{recs:?}");
        recs.into_iter().next().unwrap()
    };
    let r = one(&echo_id);
    assert_eq!(r["type"], "decision");
    assert_eq!(r["kind"], "tool.echo");
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["source"], "http");
    assert_eq!(r["policy_ref"], "embedded:demo");
    assert_eq!(r["params"], serde_json::json!({"message": "hello"}));
    let r = one(&shell_id);
    assert_eq!(r["decision"], "deny");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("always blocked by policy")
    );
    assert_eq!(one(&unknown_id)["decision"], "deny");
    assert_eq!(one(&launch_id)["decision"], "allow");

    // Both layers under one audit id: policy allow, then runtime deny.
    let recs = records_for(&dir, &get_id);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(
        (recs[0]["layer"].as_str(), recs[0]["decision"].as_str()),
        (Some("policy"), Some("allow"))
    );
    assert_eq!(
        (recs[1]["layer"].as_str(), recs[1]["decision"].as_str()),
        (Some("runtime"), Some("deny"))
    );
    assert!(recs[0]["seq"].as_u64() < recs[1]["seq"].as_u64());

    let (code, out) = wal_verify(&dir);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_request_just_under_the_body_limit_is_recorded_and_served() {
    let mut d = Daemon::start(&["--demo"]);
    // The decision record carries the params, so it is as large as the request itself.
    let msg = "m".repeat(1024 * 1024 - 100);
    let r = d.tool(&format!(
        r#"{{"kind":"tool.echo","params":{{"message":"{msg}"}}}}"#
    ));
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..200.min(r.body.len())])
    );
    let v = r.json();
    assert_eq!(v["output"].as_str().map(str::len), Some(msg.len()));
    let id = v["audit_id"].as_str().unwrap().to_string();
    let dir = d.wal_dir.clone();
    d.stop();
    let recs = records_for(&dir, &id);
    assert_eq!(
        recs[0]["params"]["message"].as_str().map(str::len),
        Some(msg.len())
    );
}

#[test]
fn bad_params_are_400_with_the_decision() {
    let mut d = Daemon::start(&["--demo"]);
    let r = d.tool(r#"{"kind":"tool.echo","params":{"message":42}}"#);
    assert_eq!(r.status, 400);
    let v = r.json();
    let id = assert_common(&v, "allow", "embedded:demo");
    assert!(v["error"].as_str().unwrap().contains("message"), "{v}");
    assert!(v.get("output").is_none());
    let dir = d.wal_dir.clone();
    d.stop();
    let recs = records_for(&dir, &id);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["type"], "decision");
    assert_eq!(recs[1]["type"], "error");
}

#[test]
fn malformed_requests_get_4xx_and_the_server_goes_on() {
    let d = Daemon::start(&["--demo"]);
    let good = r#"{"kind":"tool.echo","params":{"message":"still here"}}"#;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let big = format!(
        r#"{{"kind":"tool.echo","params":{{"message":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid JSON",
            "application/json",
            b"{not json".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "kind not a string",
            "application/json",
            br#"{"kind":7}"#.to_vec(),
            400,
            "`kind` must be a string",
        ),
        (
            "kind missing",
            "application/json",
            br#"{"params":{}}"#.to_vec(),
            400,
            "`kind` is missing",
        ),
        (
            "params an array",
            "application/json",
            br#"{"kind":"tool.echo","params":[1]}"#.to_vec(),
            400,
            "`params` must be a JSON object",
        ),
        (
            "body an array",
            "application/json",
            b"[]".to_vec(),
            400,
            "must be a JSON object",
        ),
        (
            "deeply nested",
            "application/json",
            deep.into_bytes(),
            400,
            "not valid JSON",
        ),
        (
            "2 MiB body",
            "application/json",
            big.into_bytes(),
            413,
            "limit",
        ),
        (
            "text/plain",
            "text/plain",
            good.as_bytes().to_vec(),
            415,
            "Content-Type: application/json",
        ),
        (
            "no content type",
            "",
            good.as_bytes().to_vec(),
            415,
            "Content-Type: application/json",
        ),
    ];
    for (what, ct, body, status, msg) in cases {
        let r = http(d.addr, "POST", "/v1/tool", Some((ct, &body)));
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        let err = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field: {v}"));
        assert!(err.contains(msg), "{what}: {err}");
        assert!(
            v.get("decision").is_none(),
            "{what}: never reached the evaluator: {v}"
        );
        let ok = d.tool(good);
        assert_eq!(ok.status, 200, "after {what}");
        assert_eq!(ok.json()["output"], "still here");
    }
    // Not a POST: 405 with Allow.
    for m in ["GET", "PUT", "DELETE"] {
        let r = http(d.addr, m, "/v1/tool", None);
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("POST"), "{m}");
        assert!(r.json()["error"].as_str().unwrap().contains("POST"));
    }
    let r = http(d.addr, "GET", "/nope", None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
}

#[test]
fn without_a_policy_the_runtime_is_deny_all() {
    let d = Daemon::start(&[]);
    assert!(
        d.startup.iter().any(|l| l.contains("DENY-ALL")),
        "{:?}",
        d.startup
    );
    let r = d.tool(r#"{"kind":"tool.echo","params":{"message":"x"}}"#);
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_common(&v, "deny", "builtin:deny-all");
    assert!(v["reason"].as_str().unwrap().contains("deny-all"));
    let mut d = d;
    let st = {
        let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        wait_timeout(&mut d.child, std::time::Duration::from_secs(20)).expect("stopped")
    };
    assert_eq!(st.code(), Some(0), "SIGINT stops cleanly");
}

#[test]
fn graceful_stop_records_and_exits_zero() {
    let mut d = Daemon::start(&["--demo"]);
    assert_eq!(
        d.tool(r#"{"kind":"tool.echo","params":{"message":"a"}}"#)
            .status,
        200
    );
    let dir = d.wal_dir.clone();
    let st = d.stop();
    assert_eq!(st.code(), Some(0));
    let recs = wal_records(&dir);
    let first = &recs[0];
    assert_eq!(
        (first["type"].as_str(), first["event"].as_str()),
        (Some("runtime"), Some("started"))
    );
    let last = recs.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["event"].as_str()),
        (Some("runtime"), Some("stopped"))
    );
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64 + 1));
    }
}

#[test]
fn wal_failure_is_503_and_nothing_executes() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    // A per-file size limit makes the WAL's writes fail with EFBIG once the segment reaches
    // 64 KiB: the same path as a full disk, without needing one.
    let d = Daemon::start_in(&wal, &["--demo", "--wal-segment-bytes", "1048576"], |c| {
        set_rlimit(c, Resource::RLIMIT_FSIZE, 64 * 1024, 64 * 1024)
    });
    let msg = "y".repeat(4000);
    let body = format!(r#"{{"kind":"tool.echo","params":{{"message":"{msg}"}}}}"#);
    let mut saw_503 = None;
    for _ in 0..200 {
        let r = d.tool(&body);
        if r.status == 503 {
            saw_503 = Some(r.json());
            break;
        }
        assert_eq!(r.status, 200);
    }
    let v = saw_503.expect("the WAL never failed");
    assert_common(&v, "deny", "embedded:demo");
    assert!(
        v.get("output").is_none(),
        "nothing executes without its record: {v}"
    );
    assert!(v["error"].is_string(), "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("WAL_FAILED"),
        "{v}"
    );
    // It stays failed (no retry of a failed fsync), and the server still answers. (That it stays
    // failed once the limit is lifted is in `wal::failures`.)
    let r = d.tool(r#"{"kind":"tool.echo","params":{"message":"x"}}"#);
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("WAL_FAILED"),
        "latched, not retried"
    );
    assert_eq!(http(d.addr, "GET", "/health", None).status, 200);
}

#[test]
fn http_get_upstream_down_is_502() {
    let port = closed_port();
    let allow = format!("127.0.0.1:{port}");
    let d = Daemon::start(&["--demo", "--allowed-domains", &allow]);
    let r = d.tool(&format!(
        r#"{{"kind":"tool.http_get","params":{{"endpoint":"http://127.0.0.1:{port}/x"}}}}"#
    ));
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_common(&v, "allow", "embedded:demo");
    assert!(v["error"].is_string());
}

#[test]
fn http_get_through_the_gate() {
    let target = LocalServer::start(|_| ok_response("text/plain", b"hello from upstream"));
    let other = LocalServer::start(|_| ok_response("text/plain", b"must never be reached"));
    let other_url = format!("http://127.0.0.1:{}/secret", other.addr.port());
    let redirector = {
        let u = other_url.clone();
        LocalServer::start(move |_| redirect_response(&u))
    };
    let big = LocalServer::start(|_| ok_response("text/plain", &vec![b'z'; 2 * 1024 * 1024]));
    let allow = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        target.addr.port(),
        redirector.addr.port(),
        big.addr.port(),
    );
    let d = Daemon::start(&["--demo", "--allowed-domains", &allow]);
    let get = |url: &str| {
        d.tool(&format!(
            r#"{{"kind":"tool.http_get","params":{{"endpoint":"{url}"}}}}"#
        ))
    };

    // Allowlisted by IP literal: fetched.
    let r = get(&format!("http://127.0.0.1:{}/hi", target.addr.port()));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["output"]["status"], 200);
    assert_eq!(v["output"]["body"], "hello from upstream");
    assert_eq!(v["output"]["content_type"], "text/plain");
    assert_eq!(target.hits(), 1);

    // Not allowlisted: 403 and the server saw nothing.
    let r = get(&other_url);
    assert_eq!(r.status, 403);
    assert_eq!(other.hits(), 0);

    // A redirect to a target outside the allowlist is refused, and the target never hears of it.
    let r = get(&format!("http://127.0.0.1:{}/go", redirector.addr.port()));
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(redirector.hits(), 1);
    assert_eq!(other.hits(), 0);

    // Over the 1 MiB cap: truncated, and says so.
    let r = get(&format!("http://127.0.0.1:{}/big", big.addr.port()));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["output"]["body"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(v["output"]["truncated"], true);
}

#[test]
fn http_get_redirects_to_file_or_data_are_403() {
    let file = LocalServer::start(|_| redirect_response("file:///etc/passwd"));
    let data = LocalServer::start(|_| redirect_response("data:text/plain,root:x:0:0"));
    let allow = format!(
        "127.0.0.1:{},127.0.0.1:{}",
        file.addr.port(),
        data.addr.port()
    );
    let d = Daemon::start(&["--demo", "--allowed-domains", &allow]);
    for (server, scheme) in [(&file, "file"), (&data, "data")] {
        let r = d.tool(&format!(
            r#"{{"kind":"tool.http_get","params":{{"endpoint":"http://127.0.0.1:{}/"}}}}"#,
            server.addr.port()
        ));
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_common(&v, "deny", "embedded:demo");
        assert_eq!(
            v["reason"],
            format!("redirect to scheme {scheme}: refused (http and https only)")
        );
        assert!(v.get("output").is_none(), "{v}");
        // Recorded as a runtime-layer deny after the policy allow.
        let recs = records_for(&d.wal_dir, v["audit_id"].as_str().unwrap());
        let layers: Vec<_> = recs.iter().map(|r| r["layer"].clone()).collect();
        assert_eq!(layers, ["policy", "runtime"], "{recs:?}");
    }
}

#[test]
fn an_ip_entry_exempts_its_ip_only_on_the_port_it_names() {
    let named = LocalServer::start(|_| ok_response("text/plain", b"named port"));
    let other = LocalServer::start(|_| ok_response("text/plain", b"must never be reached"));
    // 127.0.0.1 is named for `named`'s port only; localhost is allowed on `other`'s port.
    let allow = format!(
        "127.0.0.1:{},localhost:{}",
        named.addr.port(),
        other.addr.port()
    );
    let d = Daemon::start(&["--demo", "--allowed-domains", &allow]);
    let get = |url: String| {
        d.tool(&format!(
            r#"{{"kind":"tool.http_get","params":{{"endpoint":"{url}"}}}}"#
        ))
    };
    let r = get(format!("http://localhost:{}/", other.addr.port()));
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("resolves to") && reason.contains("names the IP literally"),
        "{reason}"
    );
    assert_eq!(other.hits(), 0);
    // The IP literal on its own port still works.
    let r = get(format!("http://127.0.0.1:{}/", named.addr.port()));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["output"]["body"], "named port");
    // Naming the IP for localhost's port opens it.
    let allow = format!("127.0.0.1:{p},localhost:{p}", p = other.addr.port());
    let d2 = Daemon::start(&["--demo", "--allowed-domains", &allow]);
    let r = d2.tool(&format!(
        r#"{{"kind":"tool.http_get","params":{{"endpoint":"http://localhost:{}/"}}}}"#,
        other.addr.port()
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(other.hits(), 1);
}

#[test]
fn cli_errors_are_one_line() {
    // A runtime start without --wal-dir would use $XDG_STATE_HOME: never the user's.
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = cli(args, &[("XDG_STATE_HOME", p(state.path()))]);
        (o.code, o.stderr)
    };
    let (code, err) = run(&["runtime", "start", "--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--listen"), "{err}");

    let (code, err) = run(&["runtime", "start", "--demo", "--allowed-domains", "http://"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("http://"), "{err}");

    let (code, err) = run(&["frobnicate"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Port in use.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (code, err) = run(&[
        "runtime",
        "start",
        "--demo",
        "--listen",
        &addr,
        "--wal-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("address") && err.contains("--listen"), "{err}");
    assert_eq!(
        err.trim().lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );

    assert!(cli(&["version"], &[]).stdout.starts_with("autonomy 0."));
}

#[test]
fn http_get_localhost_by_name_is_refused() {
    let target = LocalServer::start(|_| ok_response("text/plain", b"private"));
    // `localhost` is allowlisted by name, but it resolves to loopback and no entry names the IP.
    let allow = format!("localhost:{}", target.addr.port());
    let d = Daemon::start(&["--demo", "--allowed-domains", &allow]);
    let r = d.tool(&format!(
        r#"{{"kind":"tool.http_get","params":{{"endpoint":"http://localhost:{}/"}}}}"#,
        target.addr.port()
    ));
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_common(&v, "deny", "embedded:demo");
    assert!(v["reason"].as_str().unwrap().contains("127.0.0.1"), "{v}");
    assert_eq!(target.hits(), 0);
}

#[test]
fn a_second_runtime_on_the_same_wal_is_refused() {
    let d = Daemon::start(&["--demo"]);
    let r = Daemon::try_start_in(&d.wal_dir, &["--demo"], |_| {});
    let err = r.err().expect("the second runtime must not start");
    assert!(err.contains("exited with code Some(1)"), "{err}");
    assert!(err.contains("WAL_LOCKED"), "{err}");
    assert!(err.contains(&format!("pid {}", d.child.id())), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    // The first one is unaffected.
    assert_eq!(
        d.tool(r#"{"kind":"tool.echo","params":{"message":"x"}}"#)
            .status,
        200
    );
}

#[test]
fn the_rego_vm_can_be_turned_off_and_decisions_do_not_change() {
    // The demo policy qualifies for the VM fast path; with AUTONOMY_REGO_VM=off the interpreter
    // alone decides. The answers must be the same either way.
    let mut answers = Vec::new();
    for vm in ["on", "off"] {
        let tmp = tempfile::tempdir().unwrap();
        let d = Daemon::start_in(&tmp.path().join("wal"), &["--demo"], |c| {
            c.env("AUTONOMY_LOG", "autonomy=debug");
            if vm == "off" {
                c.env("AUTONOMY_REGO_VM", "off");
            } else {
                c.env_remove("AUTONOMY_REGO_VM");
            }
        });
        let engine_line = d
            .startup
            .iter()
            .find(|l| l.contains("policy embedded:demo: allow runs on"))
            .cloned()
            .unwrap_or_default();
        if vm == "off" {
            assert!(
                engine_line.contains("the interpreter: AUTONOMY_REGO_VM=off"),
                "{:?}",
                d.startup
            );
        } else {
            assert!(engine_line.contains("the regorus VM"), "{:?}", d.startup);
        }
        let mut got = Vec::new();
        for body in [
            r#"{"kind":"tool.echo","params":{"message":"hi"}}"#,
            r#"{"kind":"tool.shell","params":{"command":"id"}}"#,
            r#"{"kind":"tool.teleport","params":{}}"#,
        ] {
            let r = d.tool(body);
            let v = r.json();
            got.push((r.status, v["decision"].clone(), v["reason"].clone()));
        }
        answers.push(got);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0][0].0, 200);
    assert_eq!(answers[0][1].0, 403);
    assert_eq!(answers[0][2].0, 403);
}

#[test]
fn params_that_grow_past_the_limit_when_re_encoded_are_413_not_a_wal_failure() {
    let mut d = Daemon::start(&["--demo"]);
    // Under 1 MiB as sent; over it as the record writes it (`9e9` becomes `9000000000.0`, and
    // the WAL's record limit is 2 MiB). The WAL refused such a record, and the caller's oversized
    // input answered 503 as if the WAL had failed.
    let numbers = vec!["9e9"; (1024 * 1024 - 100) / 4].join(",");
    for kind in ["tool.echo", "tool.shell"] {
        let r = d.tool(&format!(
            r#"{{"kind":"{kind}","params":{{"n":[{numbers}]}}}}"#
        ));
        assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
        let err = r.json()["error"].as_str().expect("error").to_string();
        assert!(err.contains("once re-encoded"), "{err}");
    }
    // Just under the limit once re-encoded: served and recorded as usual.
    let numbers = vec!["9e9"; (1024 * 1024 - 100) / 13].join(",");
    let r = d.tool(&format!(
        r#"{{"kind":"tool.echo","params":{{"message":"m","n":[{numbers}]}}}}"#
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["audit_id"].as_str().unwrap().to_string();
    let dir = d.wal_dir.clone();
    d.stop();
    assert_eq!(records_for(&dir, &id).len(), 1);
    let decisions = wal_records(&dir)
        .into_iter()
        .filter(|r| r["type"] == "decision")
        .count();
    assert_eq!(decisions, 1, "the refused calls are not recorded");
}
