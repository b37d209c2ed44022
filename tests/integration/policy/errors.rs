//! The exact one-line messages (and exit codes) of every policy bundle, store and `--policy REF`
//! error a user can provoke, against the real binary: scripts and operators match on these
//! lines, and `policy.rejected` records carry them in the WAL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::common::*;

/// Asserts that `o` exited with `code` and printed exactly `line` (and nothing else) on stderr.
fn assert_one_line(label: &str, o: &Out, code: i32, line: &str) {
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (code, format!("{line}\n").as_str()),
        "{label}: stdout {:?}",
        o.stdout
    );
}

const NO_ALLOW: &str = "package autonomy\n\nfoo := 1\n";
/// What the compiler says about [`NO_ALLOW`].
const NO_ALLOW_LINE: &str = "entry point missing: the policy must define `package autonomy` with a rule `allow` (not a valid rule path)";

/// An OPA-layout bundle (no manifest.json) of `files`.
fn opa(files: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<Entry> = files.iter().map(|(n, c)| file(n, c)).collect();
    raw_tar(&entries)
}

/// `policy build` of a good one-file policy (its own, by a comment naming it) into
/// `dir/<name>-<version>.tar.gz`.
fn built(dir: &Path, name: &str, version: &str) -> PathBuf {
    bundle_from(dir, name, version, &format!("{ALLOW_ECHO}# {name}\n"))
}

/// Replaces a slot's bundle by hand, with `meta.json`'s hash updated to match it.
fn write_slot_rehashed(store: &Path, slot: &str, bytes: &[u8]) {
    write_slot(store, slot, bytes, |m| m["hash"] = hash_of(bytes).into());
}

// ---------------------------------------------------------------------------------------------
// policy build.

#[test]
fn build_errors_are_exact() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let good = root.join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(good.join("p.rego"), ALLOW_ECHO).unwrap();
    // (label, input dir, version, name, runtime constraint, env, message)
    type Case = (
        &'static str,
        PathBuf,
        &'static str,
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        String,
    );
    let dir = |name: &str, files: &[(&str, &[u8])]| -> PathBuf {
        let d = root.join(name);
        for (f, c) in files {
            let fp = d.join(f);
            std::fs::create_dir_all(fp.parent().unwrap()).unwrap();
            std::fs::write(fp, c).unwrap();
        }
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let rego = ALLOW_ECHO.as_bytes();
    let symlinked = dir("symlinked", &[("p.rego", rego)]);
    std::os::unix::fs::symlink("/etc/passwd", symlinked.join("l.rego")).unwrap();
    let fifo = dir("fifo", &[("p.rego", rego)]);
    mkfifo(&fifo.join("z.rego"));
    let big = dir("big", &[("p.rego", rego)]);
    std::fs::File::create(big.join("big.rego"))
        .unwrap()
        .set_len(4 * 1024 * 1024 + 1)
        .unwrap();
    let many = dir("many", &[("p.rego", rego)]);
    for i in 0..999 {
        let d = many.join(format!("d{i:03}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data.json"), "{}").unwrap();
    }
    let missing = root.join("missing");
    let cases: Vec<Case> = vec![
        (
            "version",
            good.clone(),
            "1.x",
            "n",
            "",
            vec![],
            "--version \"1.x\" is not semver (e.g. 1.2.0): unexpected character 'x' while parsing minor version number".into(),
        ),
        (
            "constraint",
            good.clone(),
            "1.0.0",
            "n",
            ">=0.1.0 ~1.0",
            vec![],
            "invalid runtime version constraint \"~1.0\": unexpected character '~' while parsing major version number (use e.g. \">=0.1.0 <2.0.0\"; operators >=, >, <=, <, =)".into(),
        ),
        (
            "name",
            good.clone(),
            "1.0.0",
            "a b",
            "",
            vec![],
            "bundle name \"a b\" is not valid (use 1-128 of A-Z a-z 0-9 - _ .)".into(),
        ),
        (
            "not-a-dir",
            missing.clone(),
            "1.0.0",
            "n",
            "",
            vec![],
            format!("--in {}: not a directory", missing.display()),
        ),
        (
            "no-rego",
            dir("empty", &[("data.json", b"{}")]),
            "1.0.0",
            "n",
            "",
            vec![],
            format!("{} has no .rego files", root.join("empty").display()),
        ),
        (
            "symlink",
            symlinked.clone(),
            "1.0.0",
            "n",
            "",
            vec![],
            format!(
                "{} is a symlink; bundles hold regular files only",
                symlinked.join("l.rego").display()
            ),
        ),
        (
            "fifo",
            fifo.clone(),
            "1.0.0",
            "n",
            "",
            vec![],
            format!(
                "policy file {} is not a regular file",
                fifo.join("z.rego").display()
            ),
        ),
        (
            "too-big",
            big.clone(),
            "1.0.0",
            "n",
            "",
            vec![],
            format!(
                "policy file {} is 4194305 bytes; the limit is 4194304",
                big.join("big.rego").display()
            ),
        ),
        (
            "too-many",
            many,
            "1.0.0",
            "n",
            "",
            vec![],
            "more than 1000 files".into(),
        ),
        (
            "epoch",
            good.clone(),
            "1.0.0",
            "n",
            "",
            vec![("SOURCE_DATE_EPOCH", "soon")],
            "SOURCE_DATE_EPOCH=\"soon\" is not a number of seconds".into(),
        ),
        (
            "no-allow",
            dir("noallow", &[("p.rego", NO_ALLOW.as_bytes())]),
            "1.0.0",
            "n",
            "",
            vec![],
            NO_ALLOW_LINE.into(),
        ),
        (
            "not-utf8",
            dir("latin1", &[("p.rego", b"package autonomy\n# caf\xe9\n")]),
            "1.0.0",
            "n",
            "",
            vec![],
            "p.rego is not UTF-8".into(),
        ),
        (
            "bad-data",
            dir("baddata", &[("p.rego", rego), ("data.json", b"{nope")]),
            "1.0.0",
            "n",
            "",
            vec![],
            "data.json is not valid JSON: key must be a string at line 1 column 2".into(),
        ),
        (
            "overlap",
            dir(
                "overlap",
                &[
                    ("p.rego", rego),
                    ("a/data.json", br#"{"b":1}"#),
                    ("data.json", br#"{"a":{"b":2}}"#),
                ],
            ),
            "1.0.0",
            "n",
            "",
            vec![],
            "data.json: data documents overlap".into(),
        ),
        (
            "not-object",
            dir(
                "notobject",
                &[
                    ("p.rego", rego),
                    ("data.json", br#"{"z":1}"#),
                    ("z/y/data.json", br#"{"x":1}"#),
                ],
            ),
            "1.0.0",
            "n",
            "",
            vec![],
            "z/y/data.json: data at y is not an object".into(),
        ),
    ];
    for (label, input, version, name, runtime, env, msg) in cases {
        let out = root.join(format!("{label}.tar.gz"));
        let mut args = vec![
            "policy",
            "build",
            "--in",
            p(&input),
            "--out",
            p(&out),
            "--version",
            version,
            "--name",
            name,
        ];
        if !runtime.is_empty() {
            args.extend(["--runtime-version", runtime]);
        }
        let o = cli(&args, &env);
        assert_one_line(label, &o, 1, &format!("policy build: FAILED — {msg}"));
        assert!(o.stdout.is_empty(), "{label}: {}", o.stdout);
        assert!(!out.exists(), "{label}: wrote {}", out.display());
    }
}

// ---------------------------------------------------------------------------------------------
// policy load.

#[test]
fn load_rejections_are_exact_on_stderr_and_in_the_wal() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let store = root.join("store");
    let wal = root.join("wal");
    let good = ALLOW_ECHO.as_bytes();
    let max_file = 4 * 1024 * 1024u64;

    let mut non_utf8_name = file("p.rego", good);
    non_utf8_name.name = b"caf\xe9.rego".to_vec();
    let oversize = Entry {
        size: Some(max_file + 1),
        data: vec![0; max_file as usize + 1],
        ..file("big.rego", b"")
    };
    // Nine files of 3.625 MiB: each under the per-file limit, together over 32 MiB.
    let heavy: Vec<Entry> = (0..9)
        .map(|i| file(&format!("h{i}.rego"), &vec![b' '; 3_801_088]))
        .collect();
    // Ten of almost 4 MiB: the decompressed stream itself passes its cap first.
    let bomb: Vec<Entry> = (0..10)
        .map(|i| file(&format!("z{i}.rego"), &vec![b' '; 4 * 1024 * 1024 - 1]))
        .collect();
    let mut crowd: Vec<Entry> = (0..1001)
        .map(|i| special(&format!("d{i}/"), tar::EntryType::Directory))
        .collect();
    crowd.push(file("p.rego", good));

    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "not-gzip",
            b"hello, not a bundle".to_vec(),
            "not a valid .tar.gz bundle: invalid gzip header".into(),
        ),
        (
            "symlink",
            raw_tar(&[special("l.rego", tar::EntryType::Symlink), file("p.rego", good)]),
            "archive entry \"l.rego\" is a symlink".into(),
        ),
        (
            "hard-link",
            raw_tar(&[special("l.rego", tar::EntryType::Link), file("p.rego", good)]),
            "archive entry \"l.rego\" is a hard link".into(),
        ),
        (
            "char-device",
            raw_tar(&[special("tty", tar::EntryType::Char), file("p.rego", good)]),
            "archive entry \"tty\" is a device".into(),
        ),
        (
            "block-device",
            raw_tar(&[special("sda", tar::EntryType::Block), file("p.rego", good)]),
            "archive entry \"sda\" is a device".into(),
        ),
        (
            "fifo",
            raw_tar(&[special("pipe", tar::EntryType::Fifo), file("p.rego", good)]),
            "archive entry \"pipe\" is a fifo".into(),
        ),
        (
            "unsupported",
            raw_tar(&[
                special("odd", tar::EntryType::new(b'Z')),
                file("p.rego", good),
            ]),
            "archive entry \"odd\" has an unsupported type __Nonexhaustive(90)".into(),
        ),
        (
            "dotdot",
            native(&[("../evil.rego", good), ("p.rego", good)]),
            "archive entry \"../evil.rego\" contains `..`".into(),
        ),
        (
            "dotdot-dir",
            raw_tar(&[
                special("../d/", tar::EntryType::Directory),
                file("p.rego", good),
            ]),
            "archive entry \"../d/\" contains `..`".into(),
        ),
        (
            "backslash",
            raw_tar(&[file("a\\b.rego", good)]),
            "archive entry \"a\\\\b.rego\" has a forbidden character".into(),
        ),
        (
            "non-utf8-name",
            raw_tar(&[non_utf8_name]),
            "archive entry name is not UTF-8".into(),
        ),
        (
            "no-name",
            raw_tar(&[file("./", good)]),
            "archive entry \"./\" has no name".into(),
        ),
        (
            "twice",
            raw_tar(&[file("p.rego", good), file("./p.rego", good)]),
            "archive has p.rego twice".into(),
        ),
        (
            "absolute",
            native(&[("/etc/evil.rego", good), ("p.rego", good)]),
            "archive has an absolute path (/etc/evil.rego); only `opa build` bundles, whose every entry starts with `/`, may use them".into(),
        ),
        (
            "empty",
            raw_tar(&[special("d/", tar::EntryType::Directory)]),
            "bundle is empty".into(),
        ),
        (
            "crowd",
            raw_tar(&crowd),
            "bundle has more than 1000 entries".into(),
        ),
        (
            "oversize",
            raw_tar(&[oversize]),
            "big.rego is 4194305 bytes; the limit per file is 4194304".into(),
        ),
        (
            "heavy",
            raw_tar(&heavy),
            "bundle unpacks to more than the 33554432-byte limit (decompression bomb?)".into(),
        ),
        (
            "bomb",
            raw_tar(&bomb),
            "bundle unpacks to more than the 32 MiB limit (decompression bomb?)".into(),
        ),
        (
            "manifest-json",
            raw_tar(&[file("manifest.json", b"[]"), file("p.rego", good)]),
            "manifest.json is not valid: invalid length 1, expected struct Manifest with 6 elements at line 1 column 2".into(),
        ),
        (
            "manifest-version",
            native_with(
                &[("p.rego", good)],
                json!({"name": "v", "policy_bundle_version": "one"}),
            ),
            "manifest.json: policy_bundle_version \"one\" is not semver: unexpected character 'o' while parsing major version number".into(),
        ),
        (
            "hash",
            native_with(
                &[("p.rego", good)],
                json!({"name": "h", "policy_bundle_version": "1.0.0", "bundle_hash": "sha256:00"}),
            ),
            format!(
                "bundle hash mismatch: manifest says sha256:00, contents hash to {}",
                doc_hash(&BTreeMap::from([("p.rego".to_string(), good.to_vec())]))
            ),
        ),
        (
            "name",
            native_with(
                &[("p.rego", good)],
                json!({"name": "a/b", "policy_bundle_version": "1.0.0"}),
            ),
            "bundle name \"a/b\" is not valid (use 1-128 of A-Z a-z 0-9 - _ .)".into(),
        ),
        (
            "opa-manifest",
            opa(&[(".manifest", b"{"), ("p.rego", good)]),
            ".manifest is not valid JSON: EOF while parsing an object at line 1 column 1".into(),
        ),
        (
            "opa-name",
            opa(&[
                (".manifest", br#"{"metadata":{"name":"x y"}}"#),
                ("p.rego", good),
            ]),
            "bundle name \"x y\" is not valid (use 1-128 of A-Z a-z 0-9 - _ .)".into(),
        ),
        (
            "runtime",
            native_with(
                &[("p.rego", good)],
                json!({"name": "r", "policy_bundle_version": "1.0.0", "required_runtime_version": ">=0.1.0  >=99.0.0"}),
            ),
            "bundle requires runtime >=0.1.0 >=99.0.0, have 0.1.0".into(),
        ),
        (
            "constraint",
            native_with(
                &[("p.rego", good)],
                json!({"name": "r", "policy_bundle_version": "1.0.0", "required_runtime_version": "^1"}),
            ),
            "invalid runtime version constraint \"^1\": unexpected character '^' while parsing major version number (use e.g. \">=0.1.0 <2.0.0\"; operators >=, >, <=, <, =)".into(),
        ),
        (
            "module-utf8",
            native(&[("p.rego", b"package autonomy\n# \xff\n")]),
            "p.rego is not UTF-8".into(),
        ),
        (
            "data-json",
            native(&[("p.rego", good), ("x/data.json", b"[1,")]),
            "x/data.json is not valid JSON: EOF while parsing a value at line 1 column 3".into(),
        ),
        (
            "unexpected",
            native(&[("p.rego", good), ("notes.txt", b"hi")]),
            "unexpected file notes.txt in the bundle (allowed: *.rego, data.json, manifest.json, .manifest, .signatures.json)".into(),
        ),
        (
            "no-modules",
            native(&[("data.json", b"{}")]),
            "bundle has no .rego modules".into(),
        ),
        (
            "no-allow",
            native(&[("p.rego", NO_ALLOW.as_bytes())]),
            NO_ALLOW_LINE.into(),
        ),
    ];
    for (label, bytes, msg) in &cases {
        let f = root.join(format!("{label}.tar.gz"));
        std::fs::write(&f, bytes).unwrap();
        let o = load(&store, &f, Some(&wal));
        assert_one_line(label, &o, 1, &format!("policy load: REJECTED — {msg}"));
        let last = policy_events(&wal, "policy.rejected").pop().unwrap();
        assert_eq!(last["reason"], msg.as_str(), "{label}");
    }

    // The file itself.
    let missing = root.join("missing.tar.gz");
    let big = root.join("big.tar.gz");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(16 * 1024 * 1024 + 1)
        .unwrap();
    for (label, f, msg) in [
        (
            "missing",
            &missing,
            format!(
                "cannot read bundle {}: No such file or directory (os error 2)",
                missing.display()
            ),
        ),
        (
            "directory",
            &root.to_path_buf(),
            format!("bundle {} is not a regular file", root.display()),
        ),
        (
            "too-big",
            &big,
            format!(
                "bundle {} is 16777217 bytes; the limit is 16777216",
                big.display()
            ),
        ),
    ] {
        let o = load(&store, f, None);
        assert_one_line(label, &o, 1, &format!("policy load: REJECTED — {msg}"));
    }
    assert!(!store.join("current").exists());
}

// ---------------------------------------------------------------------------------------------
// The store: load, rollback, status.

#[test]
fn store_errors_are_exact() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let a = built(root, "one", "1.0.0");
    let b = built(root, "two", "2.0.0");

    // Nothing to roll back to.
    let store = root.join("store");
    assert_eq!(load(&store, &a, None).code, 0);
    let o = cli(&["policy", "rollback", "--policy-dir", p(&store)], &[]);
    assert_one_line(
        "no-lkg",
        &o,
        1,
        &format!(
            "policy rollback: FAILED — no last-known-good bundle in {} (nothing to roll back to)",
            store.display()
        ),
    );

    // A broken lkg is not made current.
    assert_eq!(load(&store, &b, None).code, 0);
    let lkg_hash = meta(&store, "lkg")["hash"].as_str().unwrap().to_string();
    let other = std::fs::read(&b).unwrap();
    write_slot(&store, "lkg", &other, |_| {});
    let o = cli(&["policy", "rollback", "--policy-dir", p(&store)], &[]);
    let two_hash = meta(&store, "current")["hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_one_line(
        "lkg-hash",
        &o,
        1,
        &format!(
            "policy rollback: FAILED — the lkg slot is not usable: slot bundle hashes to {two_hash}, meta.json says {lkg_hash}"
        ),
    );
    write_slot_rehashed(&store, "lkg", &native(&[("p.rego", NO_ALLOW.as_bytes())]));
    let o = cli(&["policy", "rollback", "--policy-dir", p(&store)], &[]);
    assert_one_line(
        "lkg-compile",
        &o,
        1,
        &format!("policy rollback: FAILED — the lkg slot is not usable: {NO_ALLOW_LINE}"),
    );

    // status: an unusable current slot is reported on stdout, exit 1.
    write_slot(&store, "current", b"garbage, not a bundle", |_| {});
    let o = cli(&["policy", "status", "--policy-dir", p(&store)], &[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(
        o.stdout.lines().last(),
        Some("current slot is NOT usable: not a valid .tar.gz bundle: invalid gzip header")
    );

    // status: a meta.json that is not JSON.
    let mp = store.join("current").join("meta.json");
    std::fs::write(&mp, "{").unwrap();
    for cmd in ["status", "list"] {
        let o = cli(&["policy", cmd, "--policy-dir", p(&store)], &[]);
        assert_one_line(
            cmd,
            &o,
            1,
            &format!(
                "autonomy: error: {} is not valid: EOF while parsing an object at line 1 column 1",
                mp.display()
            ),
        );
    }

    // A store whose slot is not ours.
    let alien = root.join("alien");
    std::fs::create_dir_all(alien.join("current")).unwrap();
    let o = load(&alien, &a, None);
    assert_one_line(
        "unmanaged",
        &o,
        1,
        &format!(
            "policy load: FAILED — {} is not managed by this version of autonomy (expected a symlink to state/current); move it away",
            alien.join("current").display()
        ),
    );
    let o = cli(&["policy", "rollback", "--policy-dir", p(&alien)], &[]);
    assert_one_line(
        "unmanaged-rollback",
        &o,
        1,
        &format!(
            "policy rollback: FAILED — no last-known-good bundle in {} (nothing to roll back to)",
            alien.display()
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// --policy REF.

#[test]
fn policy_ref_errors_are_exact_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let a = built(root, "one", "1.0.0");
    let empty_store = root.join("empty-store");
    let store = root.join("store");
    assert_eq!(load(&store, &a, None).code, 0);
    let oci = "oci://127.0.0.1:9/p/x:1";

    let noallow_dir = root.join("noallow");
    std::fs::create_dir_all(&noallow_dir).unwrap();
    std::fs::write(noallow_dir.join("p.rego"), NO_ALLOW).unwrap();
    let noallow_bundle = root.join("noallow.tar.gz");
    std::fs::write(&noallow_bundle, native(&[("p.rego", NO_ALLOW.as_bytes())])).unwrap();
    let bad_bundle = root.join("bad.tar.gz");
    std::fs::write(&bad_bundle, b"garbage, not a bundle").unwrap();
    let empty_dir = root.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let fifo = root.join("pipe.rego");
    mkfifo(&fifo);
    let latin1 = root.join("latin1.rego");
    std::fs::write(&latin1, b"package autonomy\n# caf\xe9\n").unwrap();
    let big = root.join("big.rego");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(4 * 1024 * 1024 + 1)
        .unwrap();
    let missing = root.join("missing.rego");

    // (--policy REF, the message), each with the empty store.
    let cases: Vec<(String, String)> = vec![
        (
            "current".into(),
            format!(
                "--policy current: the policy store {} has no current bundle (load one with `autonomy policy load --bundle FILE`)",
                empty_store.display()
            ),
        ),
        (
            oci.into(),
            format!(
                "--policy {oci}: not in the policy store {} (no network is used here; run `autonomy policy pull {oci}` first)",
                empty_store.display()
            ),
        ),
        (
            "oci://127.0.0.1:9/p/x".into(),
            format!(
                "--policy oci://127.0.0.1:9/p/x:latest: not in the policy store {} (no network is used here; run `autonomy policy pull oci://127.0.0.1:9/p/x:latest` first)",
                empty_store.display()
            ),
        ),
        (
            p(&noallow_bundle).into(),
            format!("--policy {}: {NO_ALLOW_LINE}", noallow_bundle.display()),
        ),
        (
            p(&bad_bundle).into(),
            format!(
                "--policy {}: not a valid .tar.gz bundle: invalid gzip header",
                bad_bundle.display()
            ),
        ),
        (
            p(&noallow_dir).into(),
            format!("policy {} rejected: {NO_ALLOW_LINE}", noallow_dir.display()),
        ),
        (
            p(&empty_dir).into(),
            format!(
                "policy directory {} has no .rego files",
                empty_dir.display()
            ),
        ),
        (
            p(&fifo).into(),
            format!(
                "--policy {}: not a regular file or a directory (a FIFO or a device cannot hold a policy)",
                fifo.display()
            ),
        ),
        (
            p(&missing).into(),
            format!(
                "--policy {}: no such file or directory (use `demo`, `current`, `oci://host/name:tag`, a bundle .tar.gz, a .rego file or a directory of .rego files)",
                missing.display()
            ),
        ),
        (
            p(&latin1).into(),
            format!("{} is not UTF-8", latin1.display()),
        ),
        (
            p(&big).into(),
            format!(
                "policy file {} is 4194305 bytes; the limit is 4194304",
                big.display()
            ),
        ),
    ];
    for (r, msg) in &cases {
        let o = run_true(&empty_store, r);
        assert_one_line(r, &o, 2, &format!("autonomy: error: {msg}"));
    }

    // Slots that are there but not usable.
    let good_hash = meta(&store, "current")["hash"]
        .as_str()
        .unwrap()
        .to_string();
    write_slot(&store, "current", b"garbage, not a bundle", |m| {
        m["source"] = oci.into()
    });
    let slot_broken = "not a valid .tar.gz bundle: invalid gzip header";
    let o = run_true(&store, "current");
    assert_one_line(
        "current-broken",
        &o,
        2,
        &format!(
            "autonomy: error: --policy current: the current slot in {} is not usable: {slot_broken}",
            store.display()
        ),
    );
    let o = run_true(&store, oci);
    assert_one_line(
        "oci-broken",
        &o,
        2,
        &format!("autonomy: error: --policy {oci}: the current slot is not usable: {slot_broken}"),
    );
    let other = std::fs::read(built(root, "two", "2.0.0")).unwrap();
    write_slot(&store, "current", &other, |_| {});
    let o = run_true(&store, "current");
    assert_one_line(
        "current-hash",
        &o,
        2,
        &format!(
            "autonomy: error: --policy current: the current slot in {} is not usable: slot bundle hashes to {}, meta.json says {good_hash}",
            store.display(),
            hash_of(&other)
        ),
    );
    write_slot_rehashed(
        &store,
        "current",
        &native(&[("p.rego", NO_ALLOW.as_bytes())]),
    );
    for (r, label) in [("current", "current"), (oci, oci)] {
        let o = run_true(&store, r);
        assert_one_line(
            r,
            &o,
            2,
            &format!("autonomy: error: --policy {label}: {NO_ALLOW_LINE}"),
        );
    }

    // Without --policy, the daemon starts deny-all with one warning line that says why.
    let d = Daemon::start(&["--policy-dir", p(&store)]);
    let warn: Vec<&String> = d
        .startup
        .iter()
        .filter(|l| l.starts_with("autonomy: warning:"))
        .collect();
    assert_eq!(
        warn,
        [&format!(
            "autonomy: warning: the current policy slot in {} is not usable ({NO_ALLOW_LINE}); starting DENY-ALL (fix it with `autonomy policy rollback` or `autonomy policy load`)",
            store.display()
        )]
    );
    drop(d);
    write_slot(&store, "current", b"garbage, not a bundle", |_| {});
    let d = Daemon::start(&["--policy-dir", p(&store)]);
    let warn: Vec<&String> = d
        .startup
        .iter()
        .filter(|l| l.starts_with("autonomy: warning:"))
        .collect();
    assert_eq!(
        warn,
        [&format!(
            "autonomy: warning: the current policy slot in {} is not usable ({slot_broken}); starting DENY-ALL (fix it with `autonomy policy rollback` or `autonomy policy load`)",
            store.display()
        )]
    );
}

#[test]
fn hot_reload_rejections_are_exact_on_stderr_and_in_the_wal() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let store = root.join("store");
    assert_eq!(load(&store, &built(root, "one", "1.0.0"), None).code, 0);
    let keep = current_ref(&store);
    let wal = root.join("wal");
    let mut d = Daemon::start_in(&wal, &["--policy-dir", p(&store)], |_| {});
    let mut seen = Vec::new();
    for (bytes, reason) in [
        (
            b"garbage, not a bundle".to_vec(),
            "not a valid .tar.gz bundle: invalid gzip header".to_string(),
        ),
        (
            native(&[("p.rego", NO_ALLOW.as_bytes())]),
            NO_ALLOW_LINE.to_string(),
        ),
    ] {
        if bytes.starts_with(b"garbage") {
            write_slot(&store, "current", &bytes, |_| {});
        } else {
            write_slot_rehashed(&store, "current", &bytes);
        }
        let want = format!(
            "autonomy: policy rejected: the current slot is not usable ({reason}); still serving {keep}"
        );
        let found = eventually(Duration::from_secs(10), || {
            seen.extend(d.stderr.try_iter());
            seen.contains(&want)
        });
        assert!(found, "{want:?} not in {seen:?}");
        // The record is appended right after the line is printed.
        let recorded = eventually(Duration::from_secs(10), || {
            policy_events(&wal, "policy.rejected")
                .iter()
                .any(|r| r["reason"] == reason.as_str())
        });
        assert!(recorded, "no policy.rejected record with {reason:?}");
    }
    assert!(d.stop().success());
}

// ---------------------------------------------------------------------------------------------
// push and pull.

#[test]
fn push_and_pull_errors_are_exact() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let store = root.join("store");
    let wal = root.join("wal");
    let a = built(root, "one", "1.0.0");
    let bad = root.join("bad.tar.gz");
    std::fs::write(&bad, b"garbage, not a bundle").unwrap();
    let noallow = root.join("noallow.tar.gz");
    std::fs::write(&noallow, native(&[("p.rego", NO_ALLOW.as_bytes())])).unwrap();
    let missing = root.join("missing.tar.gz");
    let remote = "oci://registry.example.com/p/x:1";
    // A loopback port with nothing listening.
    let closed = closed_port();
    let local = format!("oci://127.0.0.1:{closed}/p/x:1");

    let o = cli(&["policy", "push", p(&a), remote, "--insecure"], &[]);
    assert_one_line(
        "push-insecure",
        &o,
        1,
        "policy push: FAILED — --insecure (plain HTTP) is only allowed for loopback registries, not registry.example.com",
    );
    let o = cli(&["policy", "push", p(&bad), &local, "--insecure"], &[]);
    assert_one_line(
        "push-bad",
        &o,
        1,
        &format!(
            "policy push: FAILED — {}: not a valid .tar.gz bundle: invalid gzip header",
            bad.display()
        ),
    );
    let o = cli(&["policy", "push", p(&noallow), &local, "--insecure"], &[]);
    assert_one_line(
        "push-noallow",
        &o,
        1,
        &format!(
            "policy push: FAILED — {}: {NO_ALLOW_LINE}",
            noallow.display()
        ),
    );
    let o = cli(&["policy", "push", p(&missing), &local, "--insecure"], &[]);
    assert_one_line(
        "push-missing",
        &o,
        2,
        &format!(
            "autonomy: error: cannot read bundle {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );
    let o = cli(&["policy", "push", p(&a), &local, "--insecure"], &[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .starts_with(&format!("policy push: FAILED — push to {local} failed: ")),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);

    let o = pull(remote, &store, Some(&wal));
    let msg =
        "--insecure (plain HTTP) is only allowed for loopback registries, not registry.example.com";
    assert_one_line(
        "pull-insecure",
        &o,
        1,
        &format!("policy pull: FAILED — {msg}"),
    );
    let last = policy_events(&wal, "policy.rejected").pop().unwrap();
    assert_eq!(
        (last["reason"].as_str(), last["source"].as_str()),
        (Some(msg), Some(remote))
    );
    let o = pull(&local, &store, Some(&wal));
    assert_eq!(o.code, 1, "{}", o.stderr);
    let line = o.stderr.strip_suffix('\n').unwrap_or(&o.stderr);
    let reason = line
        .strip_prefix("policy pull: FAILED — ")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        reason.starts_with(&format!("cannot fetch {local}: ")),
        "{reason}"
    );
    assert!(!reason.contains('\n') && !reason.contains("  "), "{reason}");
    let last = policy_events(&wal, "policy.rejected").pop().unwrap();
    assert_eq!(last["reason"], reason);
    assert!(!store.join("current").exists());
}
