//! Policy bundles against the real binary: build, load, rejections, rollback, REF resolution,
//! hot reload in a live daemon, the OPA layout, the worked examples, and OCI push/pull through
//! a real registry (Debian's `docker-registry`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Helpers.

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with a 120 s limit.
fn cli(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("AUTONOMY_POLICY_DIR")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn autonomy");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let st = wait_timeout(&mut child, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("autonomy {args:?} did not finish within 120 s"));
    Out {
        code: st.code().unwrap_or(-1),
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `policy build` of `dir` into `out`.
fn build(dir: &Path, out: &Path, version: &str, name: &str) -> Out {
    let o = cli(
        &[
            "policy",
            "build",
            "--in",
            p(dir),
            "--out",
            p(out),
            "--version",
            version,
            "--name",
            name,
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert_eq!(o.code, 0, "build failed: {}", o.all());
    o
}

fn load(store: &Path, bundle: &Path, wal: Option<&Path>) -> Out {
    let mut args = vec![
        "policy",
        "load",
        "--bundle",
        p(bundle),
        "--policy-dir",
        p(store),
    ];
    if let Some(w) = wal {
        args.extend(["--wal-dir", p(w)]);
    }
    cli(&args, &[])
}

fn write_policy(dir: &Path, rego: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("policy.rego"), rego).unwrap();
}

const ALLOW_ECHO: &str = "package autonomy\n\ndefault allow := false\n\nallow if input.kind == \"tool.echo\"\n\nreason := \"only echo\" if not allow\n";
const DENY_ECHO: &str = "package autonomy\n\ndefault allow := false\n\nreason := \"echo is switched off by policy B\"\n";

/// A bundle directory built into a `.tar.gz`; returns the path.
fn bundle_from(tmp: &Path, name: &str, version: &str, rego: &str) -> PathBuf {
    let dir = tmp.join(format!("src-{name}-{version}"));
    write_policy(&dir, rego);
    let out = tmp.join(format!("{name}-{version}.tar.gz"));
    build(&dir, &out, version, name);
    out
}

/// The documented bundle hash, computed independently.
fn doc_hash(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (n, c) in files {
        if n == "manifest.json" {
            continue;
        }
        h.update(n.as_bytes());
        h.update([0]);
        h.update(c.len().to_string().as_bytes());
        h.update([0]);
        h.update(c);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

enum Kind {
    File,
    Symlink(&'static str),
}

/// A tar.gz with raw names (no path checks), for hostile archives.
fn raw_tar(entries: &[(&str, Kind, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name = [0; 100];
            g.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_mode(0o644);
        h.set_mtime(0);
        match kind {
            Kind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(t).unwrap();
                h.set_size(0);
            }
        }
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A native bundle (manifest.json with the right hash unless `bad_hash`) from `files`.
fn native(files: &[(&str, &[u8])], runtime: &str, bad_hash: bool) -> Vec<u8> {
    let mut m: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_vec()))
        .collect();
    let mut hash = doc_hash(&m);
    if bad_hash {
        hash = format!("sha256:{}", "0".repeat(64));
    }
    let manifest = serde_json::json!({
        "name": "hostile",
        "policy_bundle_version": "6.6.6",
        "required_runtime_version": runtime,
        "bundle_hash": hash,
        "created_at": "2024-01-01T00:00:00Z",
    });
    m.insert(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    );
    let entries: Vec<(&str, Kind, Vec<u8>)> = m
        .iter()
        .map(|(n, c)| (n.as_str(), Kind::File, c.clone()))
        .collect();
    raw_tar(&entries)
}

/// SHA-256 over every file under the store's `current/` and `lkg/` (through the symlinks).
fn slots_digest(store: &Path) -> String {
    fn walk(d: &Path, h: &mut Sha256) {
        let mut ents: Vec<_> = match std::fs::read_dir(d) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => {
                h.update(b"<absent>");
                return;
            }
        };
        ents.sort();
        for e in ents {
            h.update(e.file_name().unwrap().as_encoded_bytes());
            if e.is_dir() {
                walk(&e, h);
            } else {
                h.update(std::fs::read(&e).unwrap());
            }
        }
    }
    let mut h = Sha256::new();
    for s in ["current", "lkg"] {
        h.update(s.as_bytes());
        walk(&store.join(s), &mut h);
    }
    hex::encode(h.finalize())
}

/// WAL records: through `autonomy wal inspect --json` when the binary has it, else by reading
/// the first-cut frame format (u32 len, u32 crc, JSON payload) directly.
fn records(dir: &Path) -> Vec<Value> {
    let out = Command::new(bin())
        .args(["wal", "inspect", "--json", "--dir"])
        .arg(dir)
        .output()
        .expect("run wal inspect");
    if out.status.success() {
        return wal_records(dir);
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    let mut v = Vec::new();
    for f in files {
        let b = std::fs::read(f).unwrap();
        let mut i = 0;
        while i + 8 <= b.len() {
            let n = u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
            let Some(payload) = b.get(i + 8..i + 8 + n) else {
                break;
            };
            v.push(serde_json::from_slice(payload).expect("WAL payload is JSON"));
            i += 8 + n;
        }
    }
    v
}

fn policy_events(dir: &Path, event: &str) -> Vec<Value> {
    records(dir)
        .into_iter()
        .filter(|r| r["type"] == "policy" && r["event"] == event)
        .collect()
}

fn echo(d: &Daemon) -> (u16, Value) {
    let r = d.tool(r#"{"kind":"tool.echo","params":{"message":"hi"}}"#);
    (r.status, r.json())
}

/// Polls `f` every 100 ms until it is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn store_daemon(store: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--policy-dir", p(store)];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

fn meta(store: &Path, slot: &str) -> Value {
    serde_json::from_slice(&std::fs::read(store.join(slot).join("meta.json")).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Build.

#[test]
fn build_is_reproducible_and_hash_is_as_documented() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_policy(&src, ALLOW_ECHO);
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/data.json"), br#"{"k": 1}"#).unwrap();
    std::fs::write(src.join("README.md"), "ignored").unwrap();
    let a = t.path().join("a.tar.gz");
    let b = t.path().join("b.tar.gz");
    let o = build(&src, &a, "1.2.0", "repro");
    build(&src, &b, "1.2.0", "repro");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let lines: Vec<&str> = o.stdout.lines().map(str::trim).collect();
    assert_eq!(lines[0], "policy build: OK", "{}", o.stdout);
    assert!(lines.contains(&"version: 1.2.0"), "{}", o.stdout);
    assert!(lines.contains(&"runtime-version: any"), "{}", o.stdout);
    assert!(
        lines.iter().any(|l| l.starts_with("output: ")),
        "{}",
        o.stdout
    );
    let mut files = BTreeMap::new();
    files.insert("policy.rego".to_string(), ALLOW_ECHO.as_bytes().to_vec());
    files.insert("sub/data.json".to_string(), br#"{"k": 1}"#.to_vec());
    let want = doc_hash(&files);
    assert!(
        lines.contains(&format!("hash: {want}").as_str()),
        "{}",
        o.stdout
    );

    // Entries: sorted, mtime 0, uid/gid 0, mode 0644, manifest carries the hash.
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&a).unwrap());
    let mut ar = tar::Archive::new(gz);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.uid().unwrap(), 0);
        assert_eq!(h.mode().unwrap(), 0o644);
        let n = e.path().unwrap().display().to_string();
        if n == "manifest.json" {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            let m: Value = serde_json::from_str(&s).unwrap();
            assert_eq!(m["bundle_hash"], want);
            assert_eq!(m["policy_bundle_version"], "1.2.0");
            assert_eq!(m["created_at"], "2023-11-14T22:13:20Z");
        }
        names.push(n);
    }
    assert_eq!(names, ["manifest.json", "policy.rego", "sub/data.json"]);

    // Build refuses what a load would refuse.
    let bad = t.path().join("bad");
    write_policy(&bad, "package autonomy\nallow if {");
    let o = cli(
        &[
            "policy",
            "build",
            "--in",
            p(&bad),
            "--out",
            p(&t.path().join("x.tar.gz")),
            "--version",
            "1.0.0",
        ],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("policy build: FAILED"), "{}", o.all());
    assert!(!t.path().join("x.tar.gz").exists());
    let o = cli(
        &[
            "policy",
            "build",
            "--in",
            p(&src),
            "--out",
            p(&t.path().join("x.tar.gz")),
            "--version",
            "one",
        ],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("not semver"), "{}", o.all());
}

// ---------------------------------------------------------------------------------------------
// Load, list, status, rollback.

#[test]
fn load_then_list_status_and_rollback() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = bundle_from(t.path(), "pol-a", "1.0.0", ALLOW_ECHO);
    let b = bundle_from(t.path(), "pol-b", "2.0.0", DENY_ECHO);

    // Rollback with nothing: a clear error, non-zero.
    let o = cli(&["policy", "rollback", "--policy-dir", p(&store)], &[]);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("policy rollback: FAILED — no last-known-good bundle"),
        "{}",
        o.all()
    );

    let o = load(&store, &a, None);
    assert_eq!(o.code, 0, "{}", o.all());
    let line = o.stdout.trim();
    assert!(
        line.starts_with("policy load: OK — version=1.0.0 hash=sha256:"),
        "{line}"
    );
    assert_eq!(o.stdout.lines().count(), 1);
    let o = load(&store, &b, None);
    assert_eq!(o.code, 0, "{}", o.all());

    let o = cli(
        &["policy", "list", "--policy-dir", p(&store), "--json"],
        &[],
    );
    assert_eq!(o.code, 0);
    let rows: Vec<Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["slot"], "current");
    assert_eq!(rows[0]["name"], "pol-b");
    assert_eq!(rows[0]["version"], "2.0.0");
    assert_eq!(rows[1]["slot"], "lkg");
    assert_eq!(rows[1]["name"], "pol-a");
    assert!(
        rows[1]["source"]
            .as_str()
            .unwrap()
            .ends_with("pol-a-1.0.0.tar.gz")
    );
    let hash_b = rows[0]["hash"].as_str().unwrap().to_string();
    assert!(
        rows[0]["policy_ref"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pol-b@2.0.0#sha256:{}", &hash_b[7..19]))
    );

    let o = cli(&["policy", "list", "--policy-dir", p(&store)], &[]);
    assert!(
        o.stdout.contains("current") && o.stdout.contains(&hash_b),
        "{}",
        o.stdout
    );
    let o = cli(&["policy", "status"], &[("AUTONOMY_POLICY_DIR", p(&store))]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout.contains("current: pol-b version=2.0.0"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("lkg: pol-a version=1.0.0"),
        "{}",
        o.stdout
    );

    // The slot layout of the spec.
    for s in ["current", "lkg"] {
        assert!(store.join(s).join("bundle.tar.gz").is_file());
        assert!(store.join(s).join("meta.json").is_file());
    }
    assert_eq!(
        std::fs::read(store.join("current/bundle.tar.gz")).unwrap(),
        std::fs::read(&b).unwrap()
    );

    // Rollback swaps.
    let o = cli(&["policy", "rollback", "--policy-dir", p(&store)], &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.starts_with("policy rollback: OK"), "{}", o.stdout);
    assert_eq!(meta(&store, "current")["name"], "pol-a");
    assert_eq!(meta(&store, "lkg")["name"], "pol-b");
    let o = cli(&["policy", "rollback", "--policy-dir", p(&store)], &[]);
    assert_eq!(o.code, 0);
    assert_eq!(meta(&store, "current")["name"], "pol-b");
    assert_eq!(meta(&store, "lkg")["name"], "pol-a");
}

#[test]
fn rejected_bundles_leave_both_slots_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let wal = t.path().join("wal");
    // current + lkg populated.
    assert_eq!(
        load(
            &store,
            &bundle_from(t.path(), "one", "1.0.0", ALLOW_ECHO),
            None
        )
        .code,
        0
    );
    assert_eq!(
        load(
            &store,
            &bundle_from(t.path(), "two", "2.0.0", ALLOW_ECHO),
            None
        )
        .code,
        0
    );

    let good: &[u8] = ALLOW_ECHO.as_bytes();
    let mut bomb_files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..10 {
        bomb_files.push((format!("z{i}.rego"), vec![b' '; 4 * 1024 * 1024 - 1]));
    }
    let bomb_entries: Vec<(&str, Kind, Vec<u8>)> = bomb_files
        .iter()
        .map(|(n, c)| (n.as_str(), Kind::File, c.clone()))
        .collect();
    let bomb = raw_tar(&bomb_entries);
    assert!(
        bomb.len() < 1024 * 1024,
        "the bomb should be small compressed"
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad-hash",
            native(&[("policy.rego", good)], "", true),
            "hash mismatch",
        ),
        (
            "dotdot",
            native(&[("../evil.rego", good), ("policy.rego", good)], "", false),
            "`..`",
        ),
        (
            "absolute",
            native(
                &[("/etc/evil.rego", good), ("policy.rego", good)],
                "",
                false,
            ),
            "absolute path",
        ),
        (
            "symlink",
            raw_tar(&[
                ("link.rego", Kind::Symlink("/etc/passwd"), vec![]),
                ("policy.rego", Kind::File, good.to_vec()),
            ]),
            "symlink",
        ),
        (
            "syntax",
            native(
                &[("policy.rego", b"package autonomy\nallow if {\n")],
                "",
                false,
            ),
            "policy.rego",
        ),
        (
            "no-allow",
            native(
                &[("policy.rego", b"package autonomy\nfoo := 1\n")],
                "",
                false,
            ),
            "entry point",
        ),
        (
            "runtime",
            native(&[("policy.rego", good)], ">=99.0.0", false),
            "bundle requires runtime >=99.0.0, have 0.1.0",
        ),
        ("bomb", bomb, "limit"),
        (
            "not-gzip",
            b"hello, not a bundle".to_vec(),
            "not a valid .tar.gz",
        ),
    ];
    let n = cases.len();
    for (label, bytes, want) in cases {
        let f = t.path().join(format!("{label}.tar.gz"));
        std::fs::write(&f, &bytes).unwrap();
        let before = slots_digest(&store);
        let gen_before = std::fs::read_link(store.join("state")).unwrap();
        let o = load(&store, &f, Some(&wal));
        assert_ne!(o.code, 0, "{label}: accepted: {}", o.all());
        let line = o
            .stderr
            .lines()
            .find(|l| l.starts_with("policy load: REJECTED — "));
        let line = line.unwrap_or_else(|| panic!("{label}: no REJECTED line: {}", o.all()));
        assert!(line.contains(want), "{label}: {line:?} lacks {want:?}");
        assert!(!o.stdout.contains("OK"), "{label}: {}", o.all());
        assert_eq!(slots_digest(&store), before, "{label}: slots changed");
        assert_eq!(std::fs::read_link(store.join("state")).unwrap(), gen_before);
    }
    let recs = policy_events(&wal, "policy.rejected");
    assert_eq!(recs.len(), n, "{recs:?}");
    assert!(recs.iter().any(|r| {
        r["reason"]
            .as_str()
            .unwrap()
            .contains("bundle requires runtime >=99.0.0")
    }));
    assert_eq!(meta(&store, "current")["name"], "two");
    assert_eq!(meta(&store, "lkg")["name"], "one");
}

// ---------------------------------------------------------------------------------------------
// The daemon: start from the store, hot reload, rollback, broken slots.

#[test]
fn runtime_start_without_flag_uses_current_else_deny_all() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let d = store_daemon(&store, &[]);
    assert!(
        d.startup.iter().any(|l| l.contains("DENY-ALL")),
        "{:?}",
        d.startup
    );
    let (st, v) = echo(&d);
    assert_eq!(st, 403);
    assert_eq!(v["policy_ref"], "builtin:deny-all");

    // The deny-all daemon watches the store: the first load activates it.
    let a = bundle_from(t.path(), "startme", "1.4.0", ALLOW_ECHO);
    assert_eq!(load(&store, &a, None).code, 0);
    let want = meta(&store, "current")["policy_ref"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(Duration::from_secs(3), || echo(&d).1["policy_ref"]
            == want.as_str()),
        "deny-all daemon did not pick up the first load"
    );
    drop(d);
    let d = store_daemon(&store, &[]);
    assert!(!d.startup.iter().any(|l| l.contains("DENY-ALL")));
    let (st, v) = echo(&d);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["policy_ref"], want.as_str());
    assert!(want.starts_with("startme@1.4.0#sha256:"));
    let (st, v) = {
        let r = d.tool(r#"{"kind":"tool.shell","params":{}}"#);
        (r.status, r.json())
    };
    assert_eq!(st, 403);
    assert_eq!(v["reason"], "only echo");

    // `--policy current` and a bundle path work too.
    let d2 = store_daemon(&store, &["--policy", "current"]);
    assert_eq!(echo(&d2).1["policy_ref"], want.as_str());
    let d3 = Daemon::start(&["--policy", p(&a)]);
    assert_eq!(echo(&d3).1["policy_ref"], want.as_str());
}

#[test]
fn hot_reload_load_rollback_and_broken_slot() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = bundle_from(t.path(), "hot", "1.0.0", ALLOW_ECHO);
    let b = bundle_from(t.path(), "hot", "2.0.0", DENY_ECHO);
    assert_eq!(load(&store, &a, None).code, 0);
    let ref_a = meta(&store, "current")["policy_ref"]
        .as_str()
        .unwrap()
        .to_string();
    let wal = t.path().join("wal");
    let mut d = Daemon::start_in(&wal, &["--policy-dir", p(&store)], |_| {});
    let (st, v) = echo(&d);
    assert_eq!(
        (st, v["policy_ref"].as_str().unwrap()),
        (200, ref_a.as_str())
    );

    // Load B: within 3 s echo is denied under B's policy_ref with B's reason.
    assert_eq!(load(&store, &b, None).code, 0);
    let ref_b = meta(&store, "current")["policy_ref"]
        .as_str()
        .unwrap()
        .to_string();
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(3), || {
        let (st, v) = echo(&d);
        last = v.clone();
        st == 403 && v["policy_ref"] == ref_b.as_str()
    });
    assert!(ok, "not reloaded within 3 s: {last}");
    assert_eq!(last["reason"], "echo is switched off by policy B");

    // Rollback: A again.
    let o = cli(&["policy", "rollback", "--policy-dir", p(&store)], &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    let ok = eventually(Duration::from_secs(3), || {
        let (st, v) = echo(&d);
        last = v.clone();
        st == 200 && v["policy_ref"] == ref_a.as_str()
    });
    assert!(ok, "rollback not picked up within 3 s: {last}");

    // A broken slot written by hand never replaces the working policy.
    let cur = store.join("current");
    std::fs::write(cur.join("bundle.tar.gz"), b"garbage, not a bundle").unwrap();
    let mut m = meta(&store, "current");
    m["version"] = "9.9.9".into();
    m["policy_ref"] = "hot@9.9.9".into();
    std::fs::write(cur.join("meta.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    let (st, v) = echo(&d);
    assert_eq!(
        (st, v["policy_ref"].as_str().unwrap()),
        (200, ref_a.as_str())
    );

    let status = d.stop();
    assert!(status.success());
    let act = policy_events(&wal, "policy.activated");
    assert!(
        act.iter().any(|r| r["policy_ref"] == ref_b.as_str()
            && r["version"] == "2.0.0"
            && r["hash"].as_str().unwrap().starts_with("sha256:")),
        "{act:?}"
    );
    assert!(
        act.iter().any(|r| r["policy_ref"] == ref_a.as_str()),
        "{act:?}"
    );
    let rej = policy_events(&wal, "policy.rejected");
    assert!(!rej.is_empty(), "no policy.rejected for the broken slot");
    // Decisions under B come after B's activation record.
    let recs = records(&wal);
    let act_b = recs
        .iter()
        .position(|r| r["event"] == "policy.activated" && r["policy_ref"] == ref_b.as_str())
        .unwrap();
    let first_b = recs
        .iter()
        .position(|r| r["type"] == "decision" && r["policy_ref"] == ref_b.as_str())
        .unwrap();
    assert!(act_b < first_b);
}

#[test]
fn oci_ref_resolves_offline_and_fails_clearly_when_absent() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let wal = t.path().join("wal");
    let r = "oci://127.0.0.1:9/policies/none:1.0.0";
    let e = Daemon::try_start_in(&wal, &["--policy-dir", p(&store), "--policy", r], |_| {})
        .err()
        .expect("must not start");
    assert!(
        e.contains("autonomy policy pull oci://127.0.0.1:9/policies/none:1.0.0"),
        "{e}"
    );
    let o = cli(
        &["run", "--policy-dir", p(&store), "--policy", r, "true"],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("policy pull"), "{}", o.all());
    let o = cli(&["run", "--policy", "nonsense-ref", "true"], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("no such file"), "{}", o.all());
}

// ---------------------------------------------------------------------------------------------
// OPA layout.

#[test]
fn opa_build_layout_loads_with_revision_as_version() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    // As `opa build` lays it out: root-relative names, .manifest, data.json in directories.
    let rego = b"package autonomy\n\ndefault allow := false\n\nallow if input.kind in data.config.allowed\n\nreason := sprintf(\"%s is not in data.config.allowed\", [input.kind]) if not allow\n";
    let bytes = raw_tar(&[
        (
            "/.manifest",
            Kind::File,
            br#"{"revision":"rev-42","roots":[""]}"#.to_vec(),
        ),
        (
            "/config/data.json",
            Kind::File,
            br#"{"allowed":["tool.echo"]}"#.to_vec(),
        ),
        ("/policy/autonomy.rego", Kind::File, rego.to_vec()),
    ]);
    let f = t.path().join("opa.tar.gz");
    std::fs::write(&f, &bytes).unwrap();
    let o = load(&store, &f, None);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("version=rev-42"), "{}", o.stdout);
    let d = store_daemon(&store, &[]);
    let (st, v) = echo(&d);
    assert_eq!(st, 200, "{v}");
    assert!(
        v["policy_ref"]
            .as_str()
            .unwrap()
            .starts_with("opa-bundle@rev-42#sha256:"),
        "{v}"
    );
    let r = d.tool(r#"{"kind":"tool.shell","params":{}}"#);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["reason"],
        "tool.shell is not in data.config.allowed"
    );
}

// ---------------------------------------------------------------------------------------------
// The worked examples of docs/policy.md.

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

fn example_daemon(t: &Path, name: &str, extra: &[&str]) -> Daemon {
    let store = t.join(format!("store-{name}"));
    let out = t.join(format!("{name}.tar.gz"));
    build(&examples_dir().join(name), &out, "1.0.0", name);
    let o = load(&store, &out, None);
    assert_eq!(o.code, 0, "{}", o.all());
    store_daemon(&store, extra)
}

fn call(d: &Daemon, body: &str) -> (u16, Value) {
    let r = d.tool(body);
    (r.status, r.json())
}

#[test]
fn example_http_allowlist() {
    let t = tempfile::tempdir().unwrap();
    let d = example_daemon(
        t.path(),
        "http-allowlist",
        &["--allowed-domains", "localhost"],
    );
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.http_get","params":{"endpoint":"https://evil.example.com/x"}}"#,
    );
    assert_eq!(st, 403);
    assert_eq!(
        v["reason"],
        "http_get to \"evil.example.com\" is not in the policy's allowlist"
    );
    // Allowed by the policy, then denied by the runtime allowlist (localhost only): no fetch.
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.http_get","params":{"endpoint":"https://api.anthropic.com/v1"}}"#,
    );
    assert_eq!(st, 403, "{v}");
    assert!(
        !v["reason"].as_str().unwrap().contains("policy's allowlist"),
        "{v}"
    );
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.http_get","params":{"endpoint":"http://api.anthropic.com/v1"}}"#,
    );
    assert_eq!(st, 403);
    assert!(
        v["reason"].as_str().unwrap().contains("policy's allowlist"),
        "{v}"
    );
    let (st, _) = call(&d, r#"{"kind":"tool.echo","params":{"message":"x"}}"#);
    assert_eq!(st, 200);
    let (st, v) = call(&d, r#"{"kind":"tool.shell","params":{}}"#);
    assert_eq!(st, 403);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("not allowed by this policy")
    );
}

#[test]
fn example_argument_checks() {
    let t = tempfile::tempdir().unwrap();
    let d = example_daemon(t.path(), "argument-checks", &[]);
    let (st, v) = call(&d, r#"{"kind":"tool.echo","params":{"message":"hello"}}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["output"], "hello");
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.echo","params":{"message":"my Password is x"}}"#,
    );
    assert_eq!(st, 403);
    assert_eq!(v["reason"], "params.message looks like it carries a secret");
    let long = "a".repeat(100);
    let (st, v) = call(
        &d,
        &format!(r#"{{"kind":"tool.echo","params":{{"message":"{long}"}}}}"#),
    );
    assert_eq!(st, 403);
    assert!(
        v["reason"].as_str().unwrap().contains("longer than 64"),
        "{v}"
    );
    let (st, v) = call(&d, r#"{"kind":"tool.echo","params":{"message":7}}"#);
    assert_eq!(st, 403);
    assert_eq!(v["reason"], "tool.echo needs params.message as a string");
    let (st, v) = call(&d, r#"{"kind":"tool.shell","params":{"command":"id"}}"#);
    assert_eq!(st, 403);
    assert_eq!(v["reason"], "tool.shell is always blocked by policy");
}

#[test]
fn example_ros_launch_allowlist() {
    let t = tempfile::tempdir().unwrap();
    let d = example_daemon(t.path(), "ros-launch-allowlist", &[]);
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.ros2.launch","params":{"package":"turtlesim","launch_file":"multisim.launch.py","arguments":[]}}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["decision"], "allow");
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.ros2.launch","params":{"package":"evil_pkg","launch_file":"x.launch.py"}}"#,
    );
    assert_eq!(st, 403);
    assert_eq!(
        v["reason"],
        "ROS package \"evil_pkg\" is not in the launch allowlist"
    );
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.ros2.launch","params":{"package":"turtlesim","launch_file":"run.sh"}}"#,
    );
    assert_eq!(st, 403);
    assert!(v["reason"].as_str().unwrap().contains("run.sh"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// OCI push/pull through a real registry.

/// Debian's `docker-registry` on a free loopback port, killed on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "/usr/bin/docker-registry is missing: run `.ci/run` (it installs Debian's docker-registry package) or `apt-get install -y docker-registry`"
        );
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("storage");
        std::fs::create_dir_all(&root).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = tmp.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let mut r = Registry {
            child,
            port,
            root,
            _tmp: tmp,
        };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up {
            let _ = r.child.kill();
            panic!("docker-registry did not listen on {addr} within 20 s");
        }
        let v2 = http(addr, "GET", "/v2/", None);
        assert_eq!(v2.status, 200, "registry /v2/ answered {}", v2.status);
        r.port = port;
        r
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn oci_push_pull_roundtrip_on_a_real_registry() {
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let a = bundle_from(t.path(), "shipped", "3.1.0", ALLOW_ECHO);
    let r = format!("oci://127.0.0.1:{}/policies/shipped:3.1.0", reg.port);

    // Without --insecure the client speaks TLS to a plain-HTTP registry: fails clearly.
    let o = cli(&["policy", "push", p(&a), &r], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("policy push: FAILED"), "{}", o.all());

    let o = cli(&["policy", "push", p(&a), &r, "--insecure"], &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.starts_with("policy push: OK"), "{}", o.stdout);
    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(&a).unwrap()))
    );
    assert!(o.stdout.contains(&digest), "{}", o.stdout);

    // Pull into an empty store, then serve it by its oci ref (offline resolution).
    let store = t.path().join("store");
    let wal = t.path().join("pull-wal");
    let o = cli(
        &[
            "policy",
            "pull",
            &r,
            "--insecure",
            "--policy-dir",
            p(&store),
            "--wal-dir",
            p(&wal),
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout
            .contains(&format!("policy pull: OK — {r} digest={digest}")),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("policy load: OK — version=3.1.0 hash=sha256:"),
        "{}",
        o.stdout
    );
    assert_eq!(meta(&store, "current")["source"], r.as_str());
    assert_eq!(
        std::fs::read(store.join("current/bundle.tar.gz")).unwrap(),
        std::fs::read(&a).unwrap()
    );
    let o = cli(&["policy", "list", "--policy-dir", p(&store)], &[]);
    assert!(o.stdout.contains(&r), "{}", o.stdout);
    assert_eq!(policy_events(&wal, "policy.loaded").len(), 1);

    let d = store_daemon(&store, &["--policy", &r]);
    let (st, v) = echo(&d);
    assert_eq!(st, 200, "{v}");
    assert!(
        v["policy_ref"]
            .as_str()
            .unwrap()
            .starts_with("shipped@3.1.0#sha256:")
    );
    drop(d);

    // An absent tag fails clearly and changes nothing.
    let before = slots_digest(&store);
    let absent = format!("oci://127.0.0.1:{}/policies/shipped:9.9.9", reg.port);
    let o = cli(
        &[
            "policy",
            "pull",
            &absent,
            "--insecure",
            "--policy-dir",
            p(&store),
        ],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("policy pull: FAILED — cannot fetch"),
        "{}",
        o.all()
    );
    assert_eq!(slots_digest(&store), before);

    // --insecure is for loopback only.
    let o = cli(
        &[
            "policy",
            "pull",
            "oci://registry.example.com/p:1",
            "--insecure",
            "--policy-dir",
            p(&store),
        ],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("only allowed for loopback"),
        "{}",
        o.all()
    );

    // Tamper with the stored blob (same length): the digest check refuses it.
    let hexd = &digest[7..];
    let blob = reg
        .root
        .join("docker/registry/v2/blobs/sha256")
        .join(&hexd[..2])
        .join(hexd)
        .join("data");
    let mut bytes = std::fs::read(&blob).expect("blob in registry storage");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let store2 = t.path().join("store2");
    let o = cli(
        &[
            "policy",
            "pull",
            &r,
            "--insecure",
            "--policy-dir",
            p(&store2),
        ],
        &[],
    );
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(o.stderr.contains("policy pull: FAILED"), "{}", o.all());
    assert!(o.all().to_lowercase().contains("digest"), "{}", o.all());
    assert!(!store2.join("current").exists());
}

// ---------------------------------------------------------------------------------------------
// Hardening: recursion, depth, bounded reads, OCI refs.

const REC_FUNCTION: &str = "package autonomy\n\nf(x) := y if { y := f(x) }\n\ndefault allow := false\n\nallow if { input.kind == \"tool.echo\"; f(1) }\n";
const REC_FUNCTION_LINE: &str = "p.rego:3: rego_recursion_error: rule data.autonomy.f is recursive: data.autonomy.f -> data.autonomy.f";
const REC_RULES: &str =
    "package autonomy\n\ndefault allow := false\n\na if b\n\nb if a\n\nallow if a\n";
const REC_RULES_LINE: &str = "p.rego:5: rego_recursion_error: rule data.autonomy.a is recursive: data.autonomy.a -> data.autonomy.b -> data.autonomy.a";

/// A bundle file holding `rego` as `p.rego`, made without `policy build` (which refuses it).
fn hostile_bundle(dir: &Path, name: &str, rego: &str) -> PathBuf {
    let f = dir.join(format!("{name}.tar.gz"));
    std::fs::write(&f, native(&[("p.rego", rego.as_bytes())], "", false)).unwrap();
    f
}

/// Lines of `s` that are not empty.
fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn recursive_policies_are_refused_wherever_they_enter() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    for (name, rego, line) in [
        ("recfn", REC_FUNCTION, REC_FUNCTION_LINE),
        ("recrules", REC_RULES, REC_RULES_LINE),
    ] {
        // policy build: one line, exit 1, nothing written.
        let dir = t.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.rego"), rego).unwrap();
        let out = t.path().join(format!("{name}-built.tar.gz"));
        let o = cli(
            &[
                "policy",
                "build",
                "--in",
                p(&dir),
                "--out",
                p(&out),
                "--version",
                "1.0.0",
            ],
            &[],
        );
        assert_eq!(o.code, 1, "{name}: {}", o.all());
        assert_eq!(
            lines(&o.stderr),
            [format!("policy build: FAILED — {line}")],
            "{name}"
        );
        assert!(!out.exists());

        // policy load: rejected, both slots unchanged.
        let a = bundle_from(t.path(), "good", "1.0.0", ALLOW_ECHO);
        if !store.join("current").exists() {
            assert_eq!(load(&store, &a, None).code, 0);
        }
        let before = slots_digest(&store);
        let bad = hostile_bundle(t.path(), name, rego);
        let o = load(&store, &bad, None);
        assert_eq!(o.code, 1, "{name}: {}", o.all());
        assert_eq!(
            lines(&o.stderr),
            [format!("policy load: REJECTED — {line}")],
            "{name}"
        );
        assert_eq!(slots_digest(&store), before, "{name}");

        // --policy FILE, DIR and bundle, on runtime start and run: a usage error, one line.
        let file = dir.join("p.rego");
        for r in [p(&file), p(&dir), p(&bad)] {
            let wal = t.path().join(format!("wal-{name}"));
            let e = Daemon::try_start_in(&wal, &["--policy", r], |_| {})
                .err()
                .unwrap_or_else(|| panic!("{name}: --policy {r} started"));
            assert!(e.starts_with("exited with code Some(2)"), "{name} {r}: {e}");
            assert!(e.contains(line), "{name} {r}: {e}");
            let o = cli(&["run", "--policy", r, "true"], &[]);
            assert_eq!(o.code, 2, "{name} {r}: {}", o.all());
            assert_eq!(lines(&o.stderr).len(), 1, "{}", o.stderr);
            assert!(o.stderr.contains(line), "{}", o.stderr);
        }
    }
}

/// Writes `bytes` into the store's current slot by hand, as an older version could have.
fn write_current_slot(store: &Path, bytes: &[u8], version: &str) {
    let hash = {
        let mut files = BTreeMap::new();
        let gz = flate2::read::GzDecoder::new(bytes);
        let mut ar = tar::Archive::new(gz);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let n = e.path().unwrap().to_string_lossy().to_string();
            let mut c = Vec::new();
            e.read_to_end(&mut c).unwrap();
            files.insert(n, c);
        }
        doc_hash(&files)
    };
    let cur = store.join("current");
    std::fs::write(cur.join("bundle.tar.gz"), bytes).unwrap();
    let mut m = meta(store, "current");
    m["version"] = version.into();
    m["hash"] = hash.as_str().into();
    m["policy_ref"] = format!("hostile@{version}").into();
    std::fs::write(cur.join("meta.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn a_recursive_current_slot_never_takes_the_daemon_down() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = bundle_from(t.path(), "keep", "1.0.0", ALLOW_ECHO);
    assert_eq!(load(&store, &a, None).code, 0);
    let ref_a = meta(&store, "current")["policy_ref"]
        .as_str()
        .unwrap()
        .to_string();
    let wal = t.path().join("wal");
    let mut d = Daemon::start_in(&wal, &["--policy-dir", p(&store)], |_| {});
    assert_eq!(echo(&d).0, 200);

    // Hot reload: the recursive slot is rejected and the old policy keeps serving.
    let bytes = native(&[("p.rego", REC_FUNCTION.as_bytes())], "", false);
    write_current_slot(&store, &bytes, "6.6.6");
    let rejected = eventually(Duration::from_secs(5), || {
        d.stderr
            .try_iter()
            .any(|l| l.contains("policy rejected") && l.contains(REC_FUNCTION_LINE))
    });
    assert!(rejected, "no rejection logged");
    let (st, v) = echo(&d);
    assert_eq!(
        (st, v["policy_ref"].as_str().unwrap()),
        (200, ref_a.as_str())
    );
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
    assert!(d.stop().success());
    let rej = policy_events(&wal, "policy.rejected");
    assert!(
        rej.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or("")
            .contains(REC_FUNCTION_LINE)),
        "{rej:?}"
    );

    // A restart with the recursive bundle still current: deny-all with one warning line.
    let d = Daemon::start_in(&wal, &["--policy-dir", p(&store)], |_| {});
    let warn: Vec<&String> = d
        .startup
        .iter()
        .filter(|l| l.starts_with("autonomy: warning:"))
        .collect();
    assert_eq!(warn.len(), 1, "{:?}", d.startup);
    assert!(warn[0].contains(REC_FUNCTION_LINE), "{warn:?}");
    let (st, v) = echo(&d);
    assert_eq!(
        (st, v["policy_ref"].as_str().unwrap()),
        (403, "builtin:deny-all")
    );
    // `--policy current` refuses to start (exit 2) instead.
    let e = Daemon::try_start_in(
        &t.path().join("wal2"),
        &["--policy-dir", p(&store), "--policy", "current"],
        |_| {},
    )
    .err()
    .expect("must not start");
    assert!(e.starts_with("exited with code Some(2)"), "{e}");
    assert!(e.contains(REC_FUNCTION_LINE), "{e}");
}

#[test]
fn a_recursive_bundle_pulled_from_a_registry_is_refused() {
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let bytes = native(&[("p.rego", REC_RULES.as_bytes())], "", false);
    let r = format!("oci://127.0.0.1:{}/policies/rec:1.0.0", reg.port);
    // `policy push` only sends valid bundles, so a hostile publisher pushes it with the library's
    // push, which sends whatever bytes it is given.
    let oref = autonomy::policy::dist::oci::OciRef::parse(&r).expect("ref");
    let b = autonomy::policy::dist::bundle::read_bytes(&bytes).expect("readable bundle");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(autonomy::policy::dist::oci::push(&bytes, &b, &oref, true))
        .expect("push");
    let store = t.path().join("store");
    let o = cli(
        &[
            "policy",
            "pull",
            &r,
            "--insecure",
            "--policy-dir",
            p(&store),
        ],
        &[],
    );
    assert_eq!(o.code, 1, "{}", o.all());
    assert_eq!(
        lines(&o.stderr),
        [format!("policy load: REJECTED — {REC_RULES_LINE}")]
    );
    assert!(!store.join("current").exists());
}

/// `n` functions each calling the next: acyclic, and far deeper than a runtime thread's stack.
fn deep_chain(n: usize) -> String {
    let mut s =
        String::from("package autonomy\n\ndefault allow := false\n\nallow if f0(input.kind)\n\n");
    for i in 0..n {
        s.push_str(&format!("f{i}(x) := f{}(x)\n", i + 1));
    }
    s.push_str(&format!("f{n}(x) := x == \"tool.echo\"\n"));
    s
}

#[test]
fn deep_policies_evaluate_and_deeper_ones_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("deep");
    std::fs::create_dir_all(&dir).unwrap();
    // 400 levels: several times what a runtime thread's 2 MiB stack holds in this (unoptimised)
    // build, yet evaluated well within the 50 ms limit.
    std::fs::write(dir.join("p.rego"), deep_chain(400)).unwrap();
    let d = Daemon::start(&["--policy", p(&dir)]);
    let (st, v) = echo(&d);
    assert_eq!(st, 200, "{v}");
    let r = d.tool(r#"{"kind":"tool.shell","params":{}}"#);
    assert_eq!(r.status, 403);
    assert!(d.child.id() > 0);
    drop(d);

    // Past the stack budget: refused when it enters, with one line.
    let deeper = t.path().join("deeper");
    std::fs::create_dir_all(&deeper).unwrap();
    std::fs::write(deeper.join("p.rego"), deep_chain(6000)).unwrap();
    let o = cli(
        &[
            "policy",
            "build",
            "--in",
            p(&deeper),
            "--out",
            p(&t.path().join("x.tar.gz")),
            "--version",
            "1.0.0",
        ],
        &[],
    );
    assert_eq!(o.code, 1, "{}", o.all());
    let l = lines(&o.stderr);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        l[0].starts_with(
            "policy build: FAILED — evaluating this policy could nest 6002 rules deep"
        ),
        "{l:?}"
    );

    // Brackets nested so deep that the parser would take hours: refused at once.
    let brackets = t.path().join("brackets");
    std::fs::create_dir_all(&brackets).unwrap();
    let nest = "[".repeat(30) + "1" + &"]".repeat(30);
    std::fs::write(
        brackets.join("p.rego"),
        format!("package autonomy\n\nallow if {{ x := {nest}; x }}\n"),
    )
    .unwrap();
    let start = Instant::now();
    let o = cli(
        &[
            "policy",
            "build",
            "--in",
            p(&brackets),
            "--out",
            p(&t.path().join("y.tar.gz")),
            "--version",
            "1.0.0",
        ],
        &[],
    );
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(
        o.stderr
            .contains("brackets ([ and {) nest more than 10 levels deep"),
        "{}",
        o.stderr
    );
}

#[test]
fn regorus_scheduler_noise_stays_off_stderr() {
    let t = tempfile::tempdir().unwrap();
    for (i, body) in ["allow if { x = y; y = x }", "allow if { [a, b] = [b, a] }"]
        .iter()
        .enumerate()
    {
        let dir = t.path().join(format!("s{i}"));
        write_policy(
            &dir,
            &format!("package autonomy\n\ndefault allow := false\n\n{body}\n"),
        );
        let o = cli(
            &[
                "policy",
                "build",
                "--in",
                p(&dir),
                "--out",
                p(&t.path().join("s.tar.gz")),
                "--version",
                "1.0.0",
            ],
            &[],
        );
        assert_eq!(o.code, 1, "{}", o.all());
        assert!(!o.all().contains("could not schedule"), "{}", o.all());
        let l = lines(&o.stderr);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].starts_with("policy build: FAILED — "), "{l:?}");
    }
}

/// Runs the binary under a 2 GiB address-space limit and a 20 s deadline, so a reader that
/// does not bound itself fails fast instead of exhausting the machine.
fn cli_bounded(args: &[&str]) -> (Option<i32>, String, Duration) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .env_remove("AUTONOMY_POLICY_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut se = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    let _ = child.wait();
    let code = st.and_then(|s| s.code());
    (code, reader.join().unwrap(), start.elapsed())
}

#[test]
fn only_regular_files_are_read_and_never_past_the_cap() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let fifo = t.path().join("pipe.tar.gz");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for path in ["/dev/zero", p(&fifo)] {
        let (code, err, took) = cli_bounded(&[
            "policy",
            "load",
            "--bundle",
            path,
            "--policy-dir",
            p(&store),
        ]);
        assert_eq!(code, Some(1), "load {path}: {err} after {took:?}");
        assert_eq!(
            lines(&err),
            [format!(
                "policy load: REJECTED — bundle {path} is not a regular file"
            )]
        );
        let (code, err, _) = cli_bounded(&["policy", "push", path, "oci://127.0.0.1:9/p:1"]);
        assert_eq!(code, Some(2), "push {path}: {err}");
        assert!(err.contains("is not a regular file"), "{err}");
        let (code, err, _) = cli_bounded(&["run", "--policy", path, "true"]);
        assert_eq!(code, Some(2), "run {path}: {err}");
        assert_eq!(lines(&err).len(), 1, "{err}");
    }
    assert!(!store.join("current").exists());

    // A regular file over the documented cap (16 MiB) is refused without reading it all.
    let big = t.path().join("big.tar.gz");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(16 * 1024 * 1024 + 1).unwrap();
    let (code, err, _) = cli_bounded(&[
        "policy",
        "load",
        "--bundle",
        p(&big),
        "--policy-dir",
        p(&store),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is 16777217 bytes; the limit is 16777216"),
        "{err}"
    );

    // A FIFO among the .rego files of `policy build --in` does not hang the build.
    let dir = t.path().join("src");
    write_policy(&dir, ALLOW_ECHO);
    nix::unistd::mkfifo(
        &dir.join("z.rego"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let (code, err, _) = cli_bounded(&[
        "policy",
        "build",
        "--in",
        p(&dir),
        "--out",
        p(&t.path().join("o.tar.gz")),
        "--version",
        "1.0.0",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("z.rego is not a regular file"), "{err}");
}

#[test]
fn bad_oci_refs_are_usage_errors_that_say_what_is_wrong() {
    // A loopback listener that counts connections: no bad ref may reach the network.
    let server = LocalServer::start(|_| ok_response("application/json", b"{}"));
    let port = server.addr.port();
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let cases = [
        (
            format!("oci://127.0.0.1:{port}/../../x"),
            "path component \"..\" is not allowed",
        ),
        (
            format!("oci://127.0.0.1:{port}/a/./b:1"),
            "path component \".\" is not allowed",
        ),
        (
            "oci://127.0.0.1:99999/x:y".to_string(),
            "port \"99999\" is not a number from 1 to 65535",
        ),
        (
            "oci://[::1/x".to_string(),
            "unbalanced [ ] around the registry host",
        ),
        (
            format!("oci://user:pw@127.0.0.1:{port}/x"),
            "credentials (user:password@) are not accepted in a ref",
        ),
        (
            format!("oci://127.0.0.1:{port}//x"),
            "the repository path has an empty component",
        ),
        (
            format!("oci://127.0.0.1:{port}/x:bad/tag"),
            "repository component",
        ),
        (
            format!("oci://127.0.0.1:{port}/x:.t"),
            "tag \".t\" is not valid",
        ),
        (
            format!("oci://127.0.0.1:{port}/x@sha256:00"),
            "digest refs (@sha256:…) are not supported",
        ),
    ];
    let a = bundle_from(t.path(), "refs", "1.0.0", ALLOW_ECHO);
    for (r, why) in &cases {
        let want = format!("autonomy: error: invalid OCI ref {r:?}: ");
        for args in [
            vec![
                "policy",
                "pull",
                r.as_str(),
                "--insecure",
                "--policy-dir",
                p(&store),
            ],
            vec!["policy", "push", p(&a), r.as_str(), "--insecure"],
            vec![
                "run",
                "--policy-dir",
                p(&store),
                "--policy",
                r.as_str(),
                "true",
            ],
        ] {
            let o = cli(&args, &[]);
            assert_eq!(o.code, 2, "{args:?}: {}", o.all());
            let l = lines(&o.stderr);
            assert_eq!(l.len(), 1, "{args:?}: {l:?}");
            assert!(l[0].starts_with(&want), "{args:?}: {l:?}");
            assert!(l[0].contains(why), "{args:?}: {l:?} lacks {why:?}");
        }
    }
    assert_eq!(server.hits(), 0, "a bad ref reached the network");
    assert!(!store.join("current").exists());
}
