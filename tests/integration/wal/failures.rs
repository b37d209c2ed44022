//! WAL failures seen from outside, on the built binary: a failure that wrote nothing (the next
//! segment cannot be made) is retried on the next call; a failed write of record bytes keeps the
//! WAL failed until restart. Either way the failing call gets 503 and nothing executes, the first
//! failure is one error line on stderr, and a recovery is one line.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use autonomy::wal::segment_name;
use nix::sys::resource::{RLIM_INFINITY, Resource};

use crate::common::*;

/// An echo call whose record is about 2 KiB, so a 64 KiB segment fills in a few dozen calls.
fn echo(d: &Daemon, tag: &str) -> Resp {
    let pad = "x".repeat(2000);
    d.tool(&format!(
        r#"{{"kind":"tool.echo","params":{{"message":"{tag}-{pad}"}}}}"#
    ))
}

/// Every stderr line of a daemon that has exited (the pipe is closed).
fn rest_of_stderr(d: &Daemon) -> Vec<String> {
    let mut lines = d.startup.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match d.stderr.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => lines.push(l),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
    lines
}

/// `tracing` lines at ERROR level (the CLI's own `autonomy: error:` lines are lower case).
fn error_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("ERROR")).collect()
}

fn assert_refused_503(r: &Resp, code: &str) -> String {
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["decision"], "deny", "{v}");
    assert!(v.get("output").is_none(), "nothing executes: {v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.starts_with(code), "{v}");
    v["audit_id"].as_str().expect("audit_id").to_string()
}

fn contiguous(recs: &[serde_json::Value]) {
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64 + 1), "seq is contiguous");
    }
}

fn has_audit_id(recs: &[serde_json::Value], id: &str) -> bool {
    recs.iter().any(|r| r["audit_id"] == id)
}

#[test]
fn a_segment_that_cannot_be_created_is_retried_on_the_next_call() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let mut d = Daemon::start_in(&wal, &["--demo", "--wal-segment-bytes", "65536"], |_| {});
    // The `started` record.
    let mut head = wal_records(&wal).len() as u64;
    assert_eq!(head, 1);
    // A directory where the next segment would go makes creating (or renaming the prepared
    // spare into) it fail, as a full file table or disk would; calls that do not rotate never
    // notice it. Each call adds one record (seq head + 1).
    let mut blocked = None;
    for i in 0..200 {
        let next = wal.join(segment_name(head + 1));
        std::fs::create_dir(&next).unwrap();
        let r = echo(&d, &format!("call{i}"));
        if r.status != 200 {
            blocked = Some((next, r));
            break;
        }
        std::fs::remove_dir(&next).unwrap();
        head += 1;
    }
    let (next, r) = blocked.expect("the WAL never rotated");
    let failed1 = assert_refused_503(&r, "WAL_UNAVAILABLE");
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!("cannot create segment {}", segment_name(head + 1))),
        "{msg}"
    );
    // While the cause lasts, every call fails the same way (and is not logged again).
    let failed2 = assert_refused_503(&echo(&d, "still-blocked"), "WAL_UNAVAILABLE");
    assert_eq!(http(d.addr, "GET", "/health", None).status, 200);

    // The cause goes away: the very next call is recorded and executes.
    std::fs::remove_dir(&next).unwrap();
    let r = echo(&d, "after");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(
        v["output"]
            .as_str()
            .is_some_and(|m| m.starts_with("after-")),
        "the echo ran: {}",
        v["decision"]
    );
    let ok_id = v["audit_id"].as_str().unwrap().to_string();
    assert!(next.is_file(), "the new segment is in place");

    assert_eq!(d.stop().code(), Some(0));
    let lines = rest_of_stderr(&d);
    let errors = error_lines(&lines);
    assert_eq!(errors.len(), 1, "one error line: {lines:#?}");
    assert!(errors[0].contains("WAL cannot write"), "{}", errors[0]);
    assert!(errors[0].contains(&segment_name(head + 1)), "{}", errors[0]);
    let recovered: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("WAL writes again"))
        .collect();
    assert_eq!(recovered.len(), 1, "one recovery line: {lines:#?}");
    assert!(
        recovered[0].contains("after 2 failed attempt(s)"),
        "{}",
        recovered[0]
    );

    // No record of the refused calls; the first call after is the first record of the new
    // segment, right after the last one before the failure.
    let recs = wal_records(&wal);
    contiguous(&recs);
    assert!(
        !has_audit_id(&recs, &failed1),
        "a refused call left a record"
    );
    assert!(
        !has_audit_id(&recs, &failed2),
        "a refused call left a record"
    );
    let ok = recs
        .iter()
        .find(|r| r["audit_id"] == ok_id.as_str())
        .expect("the call after the failure is recorded");
    assert_eq!(ok["seq"].as_u64(), Some(head + 1));
    let (code, out) = wal_verify(&wal);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
    assert!(out.contains("segments=2"), "{out}");
}

#[test]
fn a_failed_write_of_record_bytes_keeps_the_wal_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    // A per-file size limit makes a write of record bytes fail (EFBIG) once the segment reaches
    // 64 KiB, the same path as a full disk. The hard limit stays unlimited so that the soft
    // limit can be lifted later from outside.
    let mut d = Daemon::start_in(&wal, &["--demo", "--wal-segment-bytes", "1048576"], |c| {
        set_rlimit(c, Resource::RLIMIT_FSIZE, 64 * 1024, RLIM_INFINITY)
    });
    let mut failed = None;
    for i in 0..200 {
        let r = echo(&d, &format!("call{i}"));
        if r.status != 200 {
            failed = Some(r);
            break;
        }
    }
    let first = assert_refused_503(&failed.expect("the WAL never failed"), "WAL_FAILED");

    // The pressure goes away; the WAL stays failed all the same (after a failed write the state
    // of the file is unknown; restarting runs recovery).
    lift_file_size_limit(d.child.id());
    let second = assert_refused_503(&echo(&d, "after"), "WAL_FAILED");
    assert_eq!(http(d.addr, "GET", "/health", None).status, 200);

    // The `stopped` record cannot be written either: exit 1.
    assert_eq!(d.stop().code(), Some(1));
    let lines = rest_of_stderr(&d);
    let errors = error_lines(&lines);
    assert_eq!(errors.len(), 1, "one error line: {lines:#?}");
    assert!(errors[0].contains("WAL failed"), "{}", errors[0]);
    assert!(
        !lines.iter().any(|l| l.contains("WAL writes again")),
        "{lines:#?}"
    );

    // A restart recovers (cutting what the failed write left), and the refused calls are not
    // in the log.
    let mut d = Daemon::start_in(&wal, &["--demo"], |_| {});
    assert_eq!(d.stop().code(), Some(0));
    let recs = wal_records(&wal);
    contiguous(&recs);
    assert!(!has_audit_id(&recs, &first));
    assert!(!has_audit_id(&recs, &second));
    let (code, out) = wal_verify(&wal);
    assert_eq!(code, 0, "{out}");
}

/// Raises the soft file-size limit of process `pid` to its (unlimited) hard limit.
fn lift_file_size_limit(pid: u32) {
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--pid", &pid.to_string(), "--fsize=unlimited"]);
    let o = run(cmd, Duration::from_secs(20));
    assert_eq!(o.code, 0, "prlimit (util-linux) failed: {}", o.stderr);
}
