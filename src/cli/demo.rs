//! `autonomy demo validate`: an end-to-end self-check in a temp dir.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Services;
use crate::http::HttpConfig;
use crate::runtime::RuntimeConfig;
use crate::types::AuditId;

/// A plain HTTP/1.1 exchange over loopback, bounded in time: (status, JSON body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Value), String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let v = serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
        Ok::<_, String>((status, v))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| "timed out after 30 s".to_string())?
}

struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, r: Result<(), String>) {
        match r {
            Ok(()) => println!("PASS {name}"),
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
}

fn expect(
    got: Result<(u16, Value), String>,
    status: u16,
    decision: &str,
    ids: &mut Vec<String>,
) -> Result<Value, String> {
    let (st, v) = got?;
    if st != status || v["decision"] != decision {
        return Err(format!("expected {status} {decision}, got {st} {v}"));
    }
    match v["audit_id"].as_str() {
        Some(id) => ids.push(id.to_string()),
        None => return Err(format!("no audit_id in {v}")),
    }
    Ok(v)
}

/// Runs the self-check; exit 0 only if every check passes.
pub(super) async fn validate() -> ExitCode {
    let tmp = match tempfile::Builder::new()
        .prefix("autonomy-validate-")
        .tempdir()
    {
        Ok(t) => t,
        Err(e) => return super::fail(&format!("cannot create a temp dir: {e}")),
    };
    let wal_dir = tmp.path().join("wal");
    let mut rep = Report { failed: 0 };
    let policy: Box<dyn crate::policy::PolicyEvaluator> = match crate::policy::demo_policy() {
        Ok(p) => Box::new(p),
        Err(e) => return super::fail(&format!("embedded demo policy: {e}")),
    };
    let services = Services::start(
        RuntimeConfig::new(policy, wal_dir.clone()),
        HttpConfig::loopback(),
        None,
        None,
    )
    .await;
    let services = match services {
        Ok(s) => s,
        Err(_) => {
            rep.check("runtime-up", Err("the runtime did not start".into()));
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    let addr = services.http.addr();
    let mut ids = Vec::new();
    let health = http(addr, "GET", "/health", None).await;
    rep.check(
        "runtime-up",
        health.and_then(|(st, v)| {
            (st == 200 && v["status"] == "ok")
                .then_some(())
                .ok_or(format!("GET /health: {st} {v}"))
        }),
    );
    let echo = http(
        addr,
        "POST",
        "/v1/tool",
        Some(r#"{"kind":"tool.echo","params":{"message":"validate"}}"#),
    )
    .await;
    rep.check(
        "echo-allowed",
        expect(echo, 200, "allow", &mut ids).and_then(|v| {
            (v["output"] == "validate")
                .then_some(())
                .ok_or(format!("output: {v}"))
        }),
    );
    let shell = http(
        addr,
        "POST",
        "/v1/tool",
        Some(r#"{"kind":"tool.shell","params":{"command":"id"}}"#),
    )
    .await;
    rep.check(
        "shell-denied",
        expect(shell, 403, "deny", &mut ids).and_then(|v| {
            v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("always blocked by policy"))
                .then_some(())
                .ok_or(format!("reason: {v}"))
        }),
    );
    let unknown = http(
        addr,
        "POST",
        "/v1/tool",
        Some(r#"{"kind":"tool.validate.unknown","params":{}}"#),
    )
    .await;
    rep.check(
        "unknown-denied",
        expect(unknown, 403, "deny", &mut ids).map(|_| ()),
    );
    let get = http(
        addr,
        "POST",
        "/v1/tool",
        Some(r#"{"kind":"tool.http_get","params":{"endpoint":"https://example.com/"}}"#),
    )
    .await;
    rep.check(
        "http-get-fail-closed",
        expect(get, 403, "deny", &mut ids).map(|_| ()),
    );

    let stopped = services.stop().await.map_err(|e| e.to_string());
    let dir = wal_dir.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let report = crate::wal::verify(&dir).map_err(|e| e.summary())?;
        let recs = crate::wal::read_records(&dir).map_err(|e| e.summary())?;
        Ok::<_, String>((report, recs))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    rep.check(
        "wal-verify",
        stopped.and(verified).and_then(|(report, recs)| {
            let missing: Vec<_> = ids
                .iter()
                .filter(|id| {
                    !recs
                        .iter()
                        .any(|r| r.audit_id.as_ref().map(AuditId::as_str) == Some(id.as_str()))
                })
                .collect();
            if !missing.is_empty() {
                return Err(format!("decisions missing from the WAL: {missing:?}"));
            }
            println!(
                "     records={} head_seq={} head_hash={}",
                report.records, report.head_seq, report.head_hash
            );
            Ok(())
        }),
    );
    if rep.failed == 0 {
        println!("demo validate: all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("demo validate: {} check(s) failed", rep.failed);
        ExitCode::from(super::EXIT_FAILURE)
    }
}
