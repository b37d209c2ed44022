//! The policy store through the CLI and a live daemon: reproducible builds, load, list,
//! status and rollback, rejected bundles that change nothing, the daemon starting from the store
//! and reloading it, `--policy oci://` resolved offline, and the OPA bundle layout.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::common::*;

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
    let o = build_bundle(&src, &a, "1.2.0", "repro");
    build_bundle(&src, &b, "1.2.0", "repro");
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
    let o = try_build(&bad, &t.path().join("x.tar.gz"), "1.0.0");
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("policy build: FAILED"), "{}", o.all());
    assert!(!t.path().join("x.tar.gz").exists());
    let o = try_build(&src, &t.path().join("x.tar.gz"), "one");
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
    let bomb_entries: Vec<Entry> = bomb_files.iter().map(|(n, c)| file(n, c)).collect();
    let bomb = raw_tar(&bomb_entries);
    assert!(
        bomb.len() < 1024 * 1024,
        "the bomb should be small compressed"
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad-hash",
            native_with(
                &[("policy.rego", good)],
                json!({"name": "hostile", "policy_bundle_version": "6.6.6", "bundle_hash": format!("sha256:{}", "0".repeat(64))}),
            ),
            "hash mismatch",
        ),
        (
            "dotdot",
            native(&[("../evil.rego", good), ("policy.rego", good)]),
            "`..`",
        ),
        (
            "absolute",
            native(&[("/etc/evil.rego", good), ("policy.rego", good)]),
            "absolute path",
        ),
        (
            "symlink",
            raw_tar(&[
                special("link.rego", tar::EntryType::Symlink),
                file("policy.rego", good),
            ]),
            "symlink",
        ),
        (
            "syntax",
            native(&[("policy.rego", b"package autonomy\nallow if {\n")]),
            "policy.rego",
        ),
        (
            "no-allow",
            native(&[("policy.rego", b"package autonomy\nfoo := 1\n")]),
            "entry point",
        ),
        (
            "runtime",
            native_with(
                &[("policy.rego", good)],
                json!({"name": "hostile", "policy_bundle_version": "6.6.6", "required_runtime_version": ">=99.0.0"}),
            ),
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
    let want = current_ref(&store);
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
    let ref_a = current_ref(&store);
    let wal = t.path().join("wal");
    let mut d = Daemon::start_in(&wal, &["--policy-dir", p(&store)], |_| {});
    let (st, v) = echo(&d);
    assert_eq!(
        (st, v["policy_ref"].as_str().unwrap()),
        (200, ref_a.as_str())
    );

    // Load B: within 3 s echo is denied under B's policy_ref with B's reason.
    assert_eq!(load(&store, &b, None).code, 0);
    let ref_b = current_ref(&store);
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
    write_slot(&store, "current", b"garbage, not a bundle", |m| {
        m["version"] = "9.9.9".into();
        m["policy_ref"] = "hot@9.9.9".into();
    });
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
    let recs = wal_records(&wal);
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
    let o = run_true(&store, r);
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
        file("/.manifest", br#"{"revision":"rev-42","roots":[""]}"#),
        file("/config/data.json", br#"{"allowed":["tool.echo"]}"#),
        file("/policy/autonomy.rego", rego),
    ]);
    let f = t.path().join("opa.tar.gz");
    std::fs::write(&f, &bytes).unwrap();
    let o = load(&store, &f, None);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("version=rev-42"), "{}", o.stdout);
    let d = store_daemon(&store, &[]);
    assert_echo_allowed_under(&d, "opa-bundle@rev-42#sha256:");
    let r = d.tool(r#"{"kind":"tool.shell","params":{}}"#);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["reason"],
        "tool.shell is not in data.config.allowed"
    );
}
