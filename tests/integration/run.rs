//! `autonomy run <command>`: URL injection, exit codes, signal forwarding, argument passing, WAL placement.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// `autonomy run ARGS` to its end (at most 60 s), with `TMPDIR` (where a temporary WAL goes)
/// set to `tmpdir`: (exit code, stdout, stderr).
fn autonomy_run(args: &[&str], tmpdir: &std::path::Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .args(args)
        .env("TMPDIR", tmpdir)
        .env_remove("AUTONOMY_RUN_WAL_DIR");
    let o = run(cmd, Duration::from_secs(60));
    (o.code, o.stdout, o.stderr)
}

#[test]
fn example_agent_passes_under_run() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.py");
    let (code, out, err) = autonomy_run(&["python3", agent], tmp.path());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("4 of 4 answers match the demo policy"),
        "{out}"
    );
    // The temp WAL is gone.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temp WAL left behind: {left:?}");
}

#[test]
fn child_sees_the_url_and_its_calls_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("kept");
    let script = r#"
import json, os, urllib.request
url = os.environ["AUTONOMY_RUNTIME_URL"]
assert url.startswith("http://127.0.0.1:"), url
req = urllib.request.Request(url + "/v1/tool", data=json.dumps({"kind": "tool.echo", "params": {"message": "from child"}}).encode(), headers={"Content-Type": "application/json"})
body = json.loads(urllib.request.urlopen(req, timeout=10).read())
print(body["audit_id"])
"#;
    let (code, out, err) = autonomy_run(
        &["--dir", wal.to_str().unwrap(), "python3", "-c", script],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim();
    let recs = records_for(&wal, id);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["decision"], "allow");
    assert_eq!(recs[0]["kind"], "tool.echo");
    assert!(
        err.contains(&format!("WAL kept at {}", wal.display())),
        "{err}"
    );
    let (code, out) = wal_verify(&wal);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn exit_codes_are_propagated() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, _) = autonomy_run(&["sh", "-c", "exit 0"], tmp.path());
    assert_eq!(code, 0);
    let (code, _, _) = autonomy_run(&["sh", "-c", "exit 3"], tmp.path());
    assert_eq!(code, 3);
    // Killed by SIGTERM: 128 + 15.
    let (code, _, _) = autonomy_run(&["sh", "-c", "kill -TERM $$"], tmp.path());
    assert_eq!(code, 143);
    let (code, _, err) = autonomy_run(&["definitely-not-a-command-xyz"], tmp.path());
    assert_eq!(code, 127);
    assert_eq!(
        err.trim().lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("command not found: definitely-not-a-command-xyz"),
        "{err}"
    );
}

#[test]
fn child_flags_that_look_like_ours_reach_the_child() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("ours");
    let (code, out, err) = autonomy_run(
        &[
            "--dir",
            wal.to_str().unwrap(),
            "sh",
            "-c",
            r#"printf '%s|' "$@""#,
            "sh",
            "--dir",
            "x",
            "--keep",
            "--policy",
        ],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "--dir|x|--keep|--policy|");
    assert!(wal.is_dir());
}

#[test]
fn keep_leaves_the_temp_wal_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = autonomy_run(&["--keep", "true"], tmp.path());
    assert_eq!(code, 0);
    let path = err
        .lines()
        .find_map(|l| l.split("WAL kept at ").nth(1))
        .unwrap_or_else(|| panic!("no kept path in {err}"))
        .trim()
        .to_string();
    assert!(path.starts_with(tmp.path().to_str().unwrap()), "{path}");
    let (code, out) = wal_verify(std::path::Path::new(&path));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn env_dir_keeps_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("from-env");
    let o = cli(&["run", "true"], &[("AUTONOMY_RUN_WAL_DIR", p(&wal))]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!wal_records(&wal).is_empty());
}

#[test]
fn sigterm_is_forwarded_to_the_child() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args([
            "run",
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = wait_timeout(&mut child, Duration::from_secs(20)).expect("finished");
    assert_eq!(st.code(), Some(7));
}
