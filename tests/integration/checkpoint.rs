//! Signed checkpoints: `autonomy keygen`, the daemon's `--checkpoint-every`, `wal verify
//! --checkpoint` against a rewritten (and re-chained) or truncated log, a wrong key and a changed
//! note, and `audit verify --from-file` over what `wal inspect --json` prints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

/// `autonomy keygen --out DIR` with the state directory in `state`: the public key line.
fn keygen(state: &Path, out: &Path) -> String {
    let o = cli(
        &["keygen", "--out", p(out)],
        &[("XDG_STATE_HOME", p(state))],
    );
    assert_eq!(o.code, 0, "keygen failed: {}", o.all());
    o.stdout.trim().to_string()
}

/// `autonomy wal verify --dir DIR --checkpoint NOTE --key KEY`.
fn verify_cp(dir: &Path, note: &Path, key: &str) -> Out {
    cli(
        &[
            "wal",
            "verify",
            "--dir",
            p(dir),
            "--checkpoint",
            p(note),
            "--key",
            key,
        ],
        &[],
    )
}

/// The frames of the first segment: (offset, payload), as `docs/wal.md` lays them out.
fn frames(seg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 16;
    while off + 8 <= seg.len() {
        let len = u32::from_le_bytes(seg[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(seg[off + 8..off + 8 + len].to_vec());
        off += 8 + len;
    }
    out
}

fn sha(payload: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(payload)))
}

/// Writes `payloads` as the whole first segment (header, frames with their CRC32C, zeros up to
/// the file's old length), re-chaining them: each record's `prev` becomes the hash of the one
/// before, as a forger with write access would do so that `wal verify` passes.
fn rewrite(seg_path: &Path, mut payloads: Vec<Vec<u8>>) {
    let old = std::fs::read(seg_path).unwrap();
    for i in 1..payloads.len() {
        let prev = sha(&payloads[i - 1]);
        let s = String::from_utf8(payloads[i].clone()).unwrap();
        let at = s.find("\"prev\":\"sha256:").unwrap() + "\"prev\":\"".len();
        let fixed = format!("{}{}{}", &s[..at], prev, &s[at + prev.len()..]);
        payloads[i] = fixed.into_bytes();
    }
    let mut out = old[..16].to_vec();
    for pl in &payloads {
        out.extend_from_slice(&(pl.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(pl).to_le_bytes());
        out.extend_from_slice(pl);
    }
    out.resize(old.len().max(out.len()), 0);
    std::fs::write(seg_path, out).unwrap();
}

/// A daemon's log with checkpoints: the state dir, WAL dir, public key (file and text).
struct Logged {
    _tmp: tempfile::TempDir,
    wal: PathBuf,
    pub_file: PathBuf,
    vkey: String,
    dir: PathBuf,
}

/// Runs the daemon with `--checkpoint-every 3`, makes 7 calls, stops it.
fn logged() -> Logged {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let keys = tmp.path().join("keys");
    let vkey = keygen(&state, &keys);
    let wal = tmp.path().join("wal");
    let key_file = keys.join("node.key");
    let mut d = Daemon::start_in(
        &wal,
        &[
            "--demo",
            "--wal-segment-bytes",
            "1048576",
            "--checkpoint-every",
            "3",
            "--node-key",
            p(&key_file),
        ],
        |c| {
            c.env("XDG_STATE_HOME", &state);
        },
    );
    assert!(
        d.startup
            .iter()
            .any(|l| l.contains("signed checkpoints every 3 records, at stop")),
        "{:?}",
        d.startup
    );
    // Two groups of 3 calls, each followed by its checkpoint, then one call that only the
    // checkpoint at stop covers.
    let checkpoints = |wal: &Path| {
        wal_records(wal)
            .iter()
            .filter(|r| r["type"] == "checkpoint")
            .count()
    };
    for (group, calls) in [(1, 0..3), (2, 3..6), (0, 6..7)] {
        for i in calls {
            let r = d.tool(&format!(
                r#"{{"kind":"tool.echo","params":{{"message":"hello-{i}"}}}}"#
            ));
            assert_eq!(r.status, 200);
        }
        if group > 0 {
            assert!(
                eventually(Duration::from_secs(10), || checkpoints(&wal) == group),
                "no checkpoint {group} after 3 more records"
            );
        }
    }
    assert!(d.stop().success());
    Logged {
        wal,
        pub_file: keys.join("node.pub"),
        vkey,
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
    }
}

#[test]
fn keygen_makes_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let env = [("XDG_STATE_HOME", p(&state))];
    let o = cli(&["keygen"], &env);
    assert_eq!(o.code, 0, "{}", o.all());
    // Named after the node id, which it made in the state directory.
    let id = std::fs::read_to_string(state.join("autonomy/node-id")).unwrap();
    let vkey = o.stdout.trim();
    assert!(vkey.starts_with(&format!("{}+", id.trim())), "{vkey}");
    let key = state.join("autonomy/node.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(state.join("autonomy/node.pub"))
            .unwrap()
            .trim(),
        vkey
    );
    let before = std::fs::read(&key).unwrap();
    let again = cli(&["keygen", "--name", "other"], &env);
    assert_eq!(again.code, 2, "{}", again.all());
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key was replaced");
    let bad = cli(&["keygen", "--name", "a+b", "--out", p(tmp.path())], &env);
    assert_eq!(bad.code, 2, "{}", bad.all());
}

#[test]
fn a_checkpoint_proves_the_log_and_catches_rewrites_truncation_and_forgery() {
    let l = logged();
    let recs = wal_records(&l.wal);
    let cps: Vec<&Value> = recs.iter().filter(|r| r["type"] == "checkpoint").collect();
    assert_eq!(cps.len(), 3, "checkpoints: {cps:?}");
    // Each signs the record before it or one just before that, by hash.
    for c in &cps {
        let size = c["size"].as_u64().unwrap();
        assert!(size < c["seq"].as_u64().unwrap());
        assert_eq!(
            c["origin"],
            c["note"].as_str().unwrap().lines().next().unwrap()
        );
    }
    // The last one was written at stop, right before `stopped`.
    let last = *cps.last().unwrap();
    let n = recs.len();
    assert_eq!(recs[n - 1]["event"], "stopped");
    assert_eq!(last["seq"], recs[n - 2]["seq"]);
    let size = last["size"].as_u64().unwrap();
    let note = l.dir.join("cp.note");
    std::fs::write(&note, last["note"].as_str().unwrap()).unwrap();

    // (a) The log matches, with the key as a file or as text, the note as a note or a record.
    let ok = verify_cp(&l.wal, &note, p(&l.pub_file));
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(
        ok.stdout.contains(&format!("size={size} ")) && ok.stdout.contains("matches"),
        "{}",
        ok.stdout
    );
    let as_record = l.dir.join("cp.json");
    std::fs::write(&as_record, format!("{last}\n")).unwrap();
    assert_eq!(verify_cp(&l.wal, &as_record, &l.vkey).code, 0);

    // (d) Another node's key: refused, and the line says whose signature it carries.
    let other = keygen(&l.dir.join("other-state"), &l.dir.join("other-keys"));
    let wrong = verify_cp(&l.wal, &note, &other);
    assert_eq!(wrong.code, 1, "{}", wrong.all());
    assert!(
        wrong.stderr.contains("FAILED") && wrong.stderr.contains("is not signed by"),
        "{}",
        wrong.stderr
    );

    // (e) The note's text changed (a smaller size, as if less had been signed): refused.
    let text = std::fs::read_to_string(&note).unwrap();
    let changed = l.dir.join("changed.note");
    std::fs::write(
        &changed,
        text.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size - 1), 1),
    )
    .unwrap();
    let e = verify_cp(&l.wal, &changed, &l.vkey);
    assert_eq!(e.code, 1, "{}", e.all());
    assert!(e.stderr.contains("does not verify"), "{}", e.stderr);

    // The exported stream (as `wal inspect --json` prints it) checks out against the key.
    let jsonl = l.dir.join("records.jsonl");
    let o = cli(&["wal", "inspect", "--json", "--dir", p(&l.wal)], &[]);
    std::fs::write(&jsonl, &o.stdout).unwrap();
    let a = cli(
        &[
            "audit",
            "verify",
            "--from-file",
            p(&jsonl),
            "--key",
            &l.vkey,
        ],
        &[],
    );
    assert_eq!(a.code, 0, "{}", a.all());
    assert!(
        a.stdout.contains(&format!("checkpoints={}", cps.len())),
        "{}",
        a.stdout
    );
    let a = cli(
        &["audit", "verify", "--from-file", p(&jsonl), "--key", &other],
        &[],
    );
    assert_eq!(a.code, 1, "{}", a.all());

    let seg = l.wal.join("00000000000000000001.wal");
    let original = std::fs::read(&seg).unwrap();
    let payloads = frames(&original);
    assert_eq!(payloads.len(), n, "one segment holds the whole log");

    // (b) A decision before the checkpoint rewritten and the whole chain recomputed after it:
    // `wal verify` alone passes, the checkpoint does not.
    let target = recs
        .iter()
        .position(|r| r["params"]["message"] == "hello-1")
        .unwrap();
    assert!((target as u64) < size);
    let mut forged = payloads.clone();
    forged[target] = String::from_utf8(forged[target].clone())
        .unwrap()
        .replace("hello-1", "HELLO-1")
        .into_bytes();
    rewrite(&seg, forged);
    let (code, out) = wal_verify(&l.wal);
    assert_eq!(
        code, 0,
        "the re-chained log should pass plain verify: {out}"
    );
    let e = verify_cp(&l.wal, &note, &l.vkey);
    assert_eq!(e.code, 1, "{}", e.all());
    assert!(
        e.stderr.contains(&format!("record seq {size} hashes to"))
            && e.stderr.contains("rewritten"),
        "{}",
        e.stderr
    );
    // And the exported stream of the forged log fails against its own checkpoints.
    let o = cli(&["wal", "inspect", "--json", "--dir", p(&l.wal)], &[]);
    std::fs::write(&jsonl, &o.stdout).unwrap();
    let a = cli(
        &[
            "audit",
            "verify",
            "--from-file",
            p(&jsonl),
            "--key",
            &l.vkey,
        ],
        &[],
    );
    assert_eq!(a.code, 1, "{}", a.all());
    assert!(
        a.stderr.contains("not the ones that were signed"),
        "{}",
        a.stderr
    );

    // (c) Truncated below the checkpoint's size: plain verify passes, the checkpoint does not.
    rewrite(&seg, payloads[..size as usize - 1].to_vec());
    let (code, out) = wal_verify(&l.wal);
    assert_eq!(code, 0, "{out}");
    let e = verify_cp(&l.wal, &note, &l.vkey);
    assert_eq!(e.code, 1, "{}", e.all());
    assert!(
        e.stderr
            .contains(&format!("the log ends at seq {}", size - 1))
            && e.stderr.contains("truncated"),
        "{}",
        e.stderr
    );
    // Cut exactly at its size, the log still holds everything it signed.
    rewrite(&seg, payloads[..size as usize].to_vec());
    let ok = verify_cp(&l.wal, &note, &l.vkey);
    assert_eq!(ok.code, 0, "{}", ok.all());
    std::fs::write(&seg, &original).unwrap();
    assert_eq!(verify_cp(&l.wal, &note, &l.vkey).code, 0);
}

#[test]
fn without_a_key_checkpoints_are_off_and_the_start_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut d = Daemon::start_in(
        &tmp.path().join("wal"),
        &["--demo", "--checkpoint-every", "1"],
        |c| {
            c.env("XDG_STATE_HOME", &state);
        },
    );
    let off: Vec<_> = d
        .startup
        .iter()
        .filter(|l| l.contains("checkpoint"))
        .collect();
    assert_eq!(off.len(), 1, "{:?}", d.startup);
    assert!(
        off[0].contains("checkpoints off: no node key") && off[0].contains("autonomy keygen"),
        "{}",
        off[0]
    );
    assert_eq!(
        d.tool(r#"{"kind":"tool.echo","params":{"message":"x"}}"#)
            .status,
        200
    );
    assert!(d.stop().success());
    assert!(
        wal_records(&d.wal_dir)
            .iter()
            .all(|r| r["type"] != "checkpoint")
    );
    // Without the flags nothing is said at all.
    let d = Daemon::start_in(&tmp.path().join("wal2"), &["--demo"], |c| {
        c.env("XDG_STATE_HOME", &state);
    });
    assert!(
        d.startup.iter().all(|l| !l.contains("checkpoint")),
        "{:?}",
        d.startup
    );
    // A --node-key that is not there is a usage error.
    let e = Daemon::try_start_in(
        &tmp.path().join("wal3"),
        &[
            "--demo",
            "--checkpoint-every",
            "1",
            "--node-key",
            p(&tmp.path().join("missing.key")),
        ],
        |c| {
            c.env("XDG_STATE_HOME", &state);
        },
    )
    .err()
    .expect("started with a missing key");
    assert!(
        e.contains("code Some(2)") && e.contains("missing.key"),
        "{e}"
    );
    // A key without a schedule would sign nothing: a usage error too.
    let e = Daemon::try_start_in(
        &tmp.path().join("wal4"),
        &["--demo", "--node-key", p(&tmp.path().join("missing.key"))],
        |c| {
            c.env("XDG_STATE_HOME", &state);
        },
    )
    .err()
    .expect("started with --node-key alone");
    assert!(
        e.contains("code Some(2)") && e.contains("signs nothing"),
        "{e}"
    );
}
