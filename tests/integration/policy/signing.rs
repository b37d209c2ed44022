//! Signed bundles (OPA's `.signatures.json`) through the real binary: `policy build
//! --signing-key`, `policy load|pull --verification-key`, a daemon that only activates signed
//! bundles, bundles signed the way `opa build --signing-key` signs them (tests/opa_sign.py, with
//! PyJWT: no code of ours), and every way a signature can fail to hold. Keys are made with
//! `openssl` (RSA 2048, P-256, Ed25519).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::common::*;

/// `openssl` when it is on the PATH. Without it: a failure under `CI=true`, else one skip line
/// for `test` and `false`.
pub(super) fn have_openssl(test: &str) -> bool {
    if Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs openssl (.ci/run installs it); CI=true, so that is a failure"
    );
    eprintln!("skipped {test}: it needs openssl");
    false
}

/// A key pair made with openssl: (private PKCS#8 PEM, public SPKI PEM).
#[derive(Clone)]
pub(super) struct Keys {
    pub private: PathBuf,
    pub public: PathBuf,
}

/// Makes a key pair of `kind` (`rsa`, `ec` for P-256, `ed25519`) in `dir/<name>.{key,pub}.pem`.
pub(super) fn keys(dir: &Path, kind: &str, name: &str) -> Keys {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let mut genpkey = Command::new("openssl");
    genpkey.args(["genpkey", "-out", p(&private), "-algorithm"]);
    match kind {
        "rsa" => genpkey.args(["RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        "ec" => genpkey.args(["EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        "ed25519" => genpkey.arg("ED25519"),
        other => panic!("no key kind {other}"),
    };
    let o = run(genpkey, Duration::from_secs(60));
    assert_eq!(o.code, 0, "openssl genpkey: {}", o.all());
    let mut pubout = Command::new("openssl");
    pubout.args(["pkey", "-in", p(&private), "-pubout", "-out", p(&public)]);
    let o = run(pubout, Duration::from_secs(60));
    assert_eq!(o.code, 0, "openssl pkey -pubout: {}", o.all());
    Keys { private, public }
}

/// `policy build` of `dir` as `name`@`version`, signed with `key` (and `extra` flags).
pub(super) fn build_signed(
    dir: &Path,
    out: &Path,
    name: &str,
    version: &str,
    key: &Path,
    extra: &[&str],
) -> Out {
    let mut args = vec![
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
        "--signing-key",
        p(key),
    ];
    args.extend_from_slice(extra);
    cli(&args, &[("SOURCE_DATE_EPOCH", "1700000000")])
}

/// `policy load --bundle B --verification-key K` into `store`, recording in `wal`.
fn load_verified(store: &Path, bundle: &Path, key: &Path, wal: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "policy",
        "load",
        "--bundle",
        p(bundle),
        "--policy-dir",
        p(store),
        "--wal-dir",
        p(wal),
        "--verification-key",
        p(key),
    ];
    args.extend_from_slice(extra);
    cli(&args, &[])
}

/// The files of a `.tar.gz`, by normalised name.
fn unpack(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        let mut c = Vec::new();
        e.read_to_end(&mut c).unwrap();
        files.insert(n, c);
    }
    files
}

/// A bundle's files by name.
type Files = BTreeMap<String, Vec<u8>>;

/// A `.tar.gz` of `files`, with a leading `/` on every name when `rooted` (OPA's layout).
fn repack(files: &BTreeMap<String, Vec<u8>>, rooted: bool) -> Vec<u8> {
    let entries: Vec<Entry> = files
        .iter()
        .map(|(n, c)| {
            let name = if rooted { format!("/{n}") } else { n.clone() };
            file(&name, c)
        })
        .collect();
    raw_tar(&entries)
}

const DATA_POLICY: &str = "package autonomy\n\ndefault allow := false\n\nallow if {\n\tinput.kind == \"tool.echo\"\n\tinput.params.message in data.messages\n}\n\nreason := \"not an allowed message\" if not allow\n";

/// A source directory with a policy that reads `data.json`.
fn data_src(dir: &Path) -> PathBuf {
    let src = dir.join("src-data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("policy.rego"), DATA_POLICY).unwrap();
    std::fs::write(
        src.join("data.json"),
        "{\"messages\": [\"hi\", \"caf\\u00e9 \\u2028 <&>\"], \"n\": 1.0, \"e\": 1E+2}\n",
    )
    .unwrap();
    src
}

#[test]
fn signed_bundles_of_each_key_type_verify_and_what_does_not_hold_is_rejected() {
    let test = "signed_bundles_of_each_key_type_verify_and_what_does_not_hold_is_rejected";
    if !have_openssl(test) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = data_src(t.path());
    let wal = t.path().join("wal");

    // Each kind of key: `build --signing-key` then `load --verification-key` of the same pair.
    let mut signed = BTreeMap::new();
    for (kind, alg) in [("rsa", "RS256"), ("ec", "ES256"), ("ed25519", "EdDSA")] {
        let k = keys(t.path(), kind, kind);
        let out = t.path().join(format!("{kind}.tar.gz"));
        let kid = format!("ops-{kind}");
        let o = build_signed(
            &src,
            &out,
            "signed",
            "1.0.0",
            &k.private,
            &["--key-id", &kid],
        );
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert!(
            o.stdout
                .contains(&format!("  signature: {alg} kid={kid}\n")),
            "{kind}: {}",
            o.stdout
        );
        let store = t.path().join(format!("store-{kind}"));
        let o = load_verified(&store, &out, &k.public, &wal, &[]);
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert!(
            o.stdout
                .starts_with("policy load: OK — version=1.0.0 hash=sha256:")
                && o.stdout
                    .ends_with(&format!(" signature=verified {alg} kid={kid}\n")),
            "{kind}: {}",
            o.stdout
        );
        assert_eq!(
            meta(&store, "current")["signature"],
            format!("verified {alg} kid={kid}").as_str()
        );
        // Signing changes neither the bundle hash nor the policy_ref.
        let unsigned = t.path().join(format!("{kind}-unsigned.tar.gz"));
        build_bundle(&src, &unsigned, "1.0.0", "signed");
        assert_eq!(
            hash_of(&std::fs::read(&unsigned).unwrap()),
            meta(&store, "current")["hash"].as_str().unwrap()
        );
        signed.insert(kind, (k, out));
    }

    // Everything below is refused with one line, leaves both slots as they were, and is
    // recorded as policy.rejected.
    let (ec, ec_bundle) = signed["ec"].clone();
    let store = t.path().join("store-ec");
    let good = std::fs::read(&ec_bundle).unwrap();
    let files = unpack(&good);
    let other_ec = keys(t.path(), "ec", "other-ec");
    let with = |edit: &dyn Fn(&mut Files)| {
        let mut f = files.clone();
        edit(&mut f);
        repack(&f, false)
    };
    let unsigned = t.path().join("plain.tar.gz");
    build_bundle(&src, &unsigned, "2.0.0", "plain");
    let cases: Vec<(&str, Vec<u8>, PathBuf, String)> = vec![
        (
            "unsigned",
            std::fs::read(&unsigned).unwrap(),
            ec.public.clone(),
            "the bundle is not signed (no .signatures.json) and a verification key is set".into(),
        ),
        (
            "stripped",
            with(&|f| {
                f.remove(".signatures.json");
            }),
            ec.public.clone(),
            "the bundle is not signed (no .signatures.json) and a verification key is set".into(),
        ),
        (
            "another-key",
            good.clone(),
            other_ec.public.clone(),
            format!(
                "the bundle signature does not verify with the verification key {} (signed ES256, kid \"ops-ec\")",
                p(&other_ec.public)
            ),
        ),
        (
            "another-kind-of-key",
            good.clone(),
            signed["ed25519"].0.public.clone(),
            format!(
                "the bundle is signed with ES256, but the verification key {} is an Ed25519 key (EdDSA)",
                p(&signed["ed25519"].0.public)
            ),
        ),
        (
            "tampered-policy",
            with(&|f| {
                f.insert("policy.rego".into(), ALLOW_ECHO.as_bytes().to_vec());
            }),
            ec.public.clone(),
            "policy.rego does not match the bundle signature".into(),
        ),
        (
            "tampered-data",
            with(&|f| {
                f.insert(
                    "data.json".into(),
                    br#"{"messages": ["hi", "rm -rf /"], "n": 1.0, "e": 1E+2}"#.to_vec(),
                );
            }),
            ec.public.clone(),
            "data.json does not match the bundle signature".into(),
        ),
        (
            // The manifest is signed too: its version cannot be changed (its bundle_hash
            // still matches the files, so only the signature catches it).
            "tampered-manifest",
            with(&|f| {
                let mut m: Value = serde_json::from_slice(&f["manifest.json"]).unwrap();
                m["policy_bundle_version"] = "9.9.9".into();
                f.insert("manifest.json".into(), serde_json::to_vec(&m).unwrap());
            }),
            ec.public.clone(),
            "manifest.json does not match the bundle signature".into(),
        ),
        (
            "extra-file",
            with(&|f| {
                f.insert("extra.rego".into(), b"package extra\n".to_vec());
            }),
            ec.public.clone(),
            "extra.rego is not covered by the bundle signature".into(),
        ),
        (
            "missing-file",
            with(&|f| {
                f.remove("data.json");
            }),
            ec.public.clone(),
            "the bundle signature lists data.json, which the bundle does not have".into(),
        ),
        (
            "two-signatures",
            with(&|f| {
                let sf: Value = serde_json::from_slice(&f[".signatures.json"]).unwrap();
                let jwt = sf["signatures"][0].clone();
                f.insert(
                    ".signatures.json".into(),
                    serde_json::to_vec(&serde_json::json!({"signatures": [jwt.clone(), jwt]}))
                        .unwrap(),
                );
            }),
            ec.public.clone(),
            ".signatures.json holds 2 signatures; exactly one is expected (as in OPA)".into(),
        ),
    ];
    for (label, bytes, key, msg) in &cases {
        let before = slots_digest(&store);
        let f = t.path().join(format!("{label}.tar.gz"));
        std::fs::write(&f, bytes).unwrap();
        let o = load_verified(&store, &f, key, &wal, &[]);
        assert_eq!(o.code, 1, "{label}: {}", o.all());
        let l = lines(&o.stderr);
        assert_eq!(l.len(), 1, "{label}: {l:?}");
        assert!(
            l[0].starts_with(&format!("policy load: REJECTED — {msg}")),
            "{label}: {l:?}"
        );
        assert_eq!(slots_digest(&store), before, "{label} changed a slot");
        let last = policy_events(&wal, "policy.rejected").pop().unwrap();
        assert!(
            last["reason"].as_str().unwrap().starts_with(msg.as_str()),
            "{label}: {last}"
        );
    }

    // Without a key a signed bundle loads, says its signature was not checked, and the slot
    // says so too.
    let plain_store = t.path().join("store-plain");
    let o = load(&plain_store, &ec_bundle, None);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout
            .ends_with(" signature=not verified ES256 kid=ops-ec\n"),
        "{}",
        o.stdout
    );
    assert_eq!(
        o.stderr,
        "policy load: warning: the bundle is signed, but its signature was not checked (no --verification-key)\n"
    );
    let o = cli(&["policy", "status", "--policy-dir", p(&plain_store)], &[]);
    assert!(
        o.stdout.contains("signature=not verified ES256 kid=ops-ec"),
        "{}",
        o.stdout
    );

    // The key's scope: a signature must carry the configured one, and no other.
    let scoped = t.path().join("scoped.tar.gz");
    let o = build_signed(
        &src,
        &scoped,
        "signed",
        "1.1.0",
        &ec.private,
        &["--scope", "fleet-a"],
    );
    assert_eq!(o.code, 0, "{}", o.all());
    let o = load_verified(&store, &scoped, &ec.public, &wal, &[]);
    assert!(
        o.stderr.contains(
            "REJECTED — the bundle signature's scope is \"fleet-a\"; the verification expects \"\""
        ),
        "{}",
        o.all()
    );
    let o = load_verified(
        &store,
        &scoped,
        &ec.public,
        &wal,
        &["--verification-scope", "fleet-a"],
    );
    assert_eq!(o.code, 0, "{}", o.all());

    // Key files that cannot be used are usage errors, named.
    let bad_keys = [
        (
            ec.private.clone(),
            "is a private key; --verification-key takes the public key",
        ),
        (t.path().join("nope.pem"), "cannot read verification key"),
        (src.join("policy.rego"), "not a PEM file"),
    ];
    for (key, why) in &bad_keys {
        let o = load_verified(&store, &ec_bundle, key, &wal, &[]);
        assert_eq!(o.code, 2, "{}", o.all());
        let l = lines(&o.stderr);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(
            l[0].starts_with("autonomy: error: --verification-key: ") && l[0].contains(why),
            "{l:?}"
        );
    }
    let o = build_signed(
        &src,
        &t.path().join("x.tar.gz"),
        "x",
        "1.0.0",
        &ec.public,
        &[],
    );
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.stderr
            .contains("is a public key; --signing-key takes the private key"),
        "{}",
        o.all()
    );
}

#[test]
fn bundles_signed_as_opa_build_signs_them_verify() {
    let test = "bundles_signed_as_opa_build_signs_them_verify";
    if !have_openssl(test) {
        return;
    }
    let Some(py) = venv_with("jwt, cryptography", "pyjwt and cryptography", test) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = data_src(t.path());
    let wal = t.path().join("wal");
    let opa_sign = |k: &Keys, alg: &str, out: &Path, extra: &[&str]| {
        let mut cmd = Command::new(&py);
        cmd.arg(repo().join("tests/opa_sign.py")).args([
            "--dir",
            p(&src),
            "--key",
            p(&k.private),
            "--alg",
            alg,
            "--out",
            p(out),
            "--revision",
            "r-7",
        ]);
        cmd.args(extra);
        let o = run(cmd, Duration::from_secs(60));
        assert_eq!(o.code, 0, "opa_sign.py: {}", o.all());
    };
    for (kind, alg) in [("rsa", "RS256"), ("ec", "ES256"), ("ed25519", "EdDSA")] {
        let k = keys(t.path(), kind, kind);
        let out = t.path().join(format!("opa-{kind}.tar.gz"));
        opa_sign(&k, alg, &out, &["--kid", "opa-key"]);
        let store = t.path().join(format!("store-{kind}"));
        let o = load_verified(&store, &out, &k.public, &wal, &[]);
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert!(
            o.stdout
                .starts_with("policy load: OK — version=r-7 hash=sha256:")
                && o.stdout
                    .ends_with(&format!(" signature=verified {alg} kid=opa-key\n")),
            "{kind}: {}",
            o.stdout
        );
        assert_eq!(meta(&store, "current")["layout"], "opa");
    }

    // The data document is signed as OPA signs it, over its canonical form: the same document
    // written differently still verifies; a different one does not.
    let k = keys(t.path(), "ed25519", "ed");
    let out = t.path().join("opa.tar.gz");
    opa_sign(&k, "EdDSA", &out, &[]);
    let files = unpack(&std::fs::read(&out).unwrap());
    let store = t.path().join("store");
    for (label, data, ok) in [
        (
            "compact, other key order, escapes written out",
            "{\"e\":1E+2,\"n\":1.0,\"messages\":[\"hi\",\"café \u{2028} \\u003c&>\"]}",
            true,
        ),
        (
            "1.0 written as 1",
            "{\"e\":1E+2,\"n\":1,\"messages\":[\"hi\",\"café \u{2028} <&>\"]}",
            false,
        ),
        (
            "another message",
            "{\"e\":1E+2,\"n\":1.0,\"messages\":[\"hi\",\"bye\"]}",
            false,
        ),
    ] {
        let mut f = files.clone();
        f.insert("data.json".into(), data.as_bytes().to_vec());
        let b = t.path().join("edited.tar.gz");
        std::fs::write(&b, repack(&f, true)).unwrap();
        let o = load_verified(&store, &b, &k.public, &wal, &[]);
        if ok {
            assert_eq!(o.code, 0, "{label}: {}", o.all());
        } else {
            assert!(
                o.stderr.starts_with(
                    "policy load: REJECTED — data.json does not match the bundle signature"
                ),
                "{label}: {}",
                o.all()
            );
        }
    }

    // The daemon serves it, with the key, and its data decides.
    let d = store_daemon(
        &store,
        &["--policy", "current", "--verification-key", p(&k.public)],
    );
    let (st, v) = call(&d, r#"{"kind":"tool.echo","params":{"message":"hi"}}"#);
    assert_eq!(st, 200, "{v}");
    assert!(
        v["policy_ref"]
            .as_str()
            .unwrap()
            .starts_with("opa-bundle@r-7#sha256:"),
        "{v}"
    );
    let (st, v) = call(&d, r#"{"kind":"tool.echo","params":{"message":"rm"}}"#);
    assert_eq!(st, 403, "{v}");
}

#[test]
fn a_daemon_with_a_key_serves_and_activates_only_bundles_signed_with_it() {
    let test = "a_daemon_with_a_key_serves_and_activates_only_bundles_signed_with_it";
    if !have_openssl(test) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let k = keys(t.path(), "ed25519", "k");
    let store = t.path().join("store");
    let plain = bundle_from(t.path(), "plain", "1.0.0", ALLOW_ECHO);
    let o = load(&store, &plain, None);
    assert_eq!(o.code, 0, "{}", o.all());

    // An unsigned current slot: DENY-ALL, with a warning naming why.
    let d = store_daemon(&store, &["--verification-key", p(&k.public)]);
    assert!(
        d.startup.iter().any(|l| l.contains(
            "is not usable (the bundle is not signed (no .signatures.json) and a verification key is set); starting DENY-ALL"
        )),
        "{:?}",
        d.startup
    );
    let (st, v) = echo(&d);
    assert_eq!(
        (st, v["policy_ref"].as_str()),
        (403, Some("builtin:deny-all"))
    );

    // A signed bundle loaded into the store (by a CLI without a key) is activated.
    let src = t.path().join("src-signed");
    write_policy(&src, ALLOW_ECHO);
    let signed = t.path().join("signed.tar.gz");
    let o = build_signed(&src, &signed, "signed", "2.0.0", &k.private, &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(load(&store, &signed, None).code, 0);
    assert!(
        eventually(Duration::from_secs(10), || echo(&d).0 == 200),
        "the signed bundle was not activated"
    );
    assert_echo_allowed_under(&d, "signed@2.0.0#sha256:");

    // An unsigned one is not: recorded, and the signed one keeps serving.
    let plain2 = bundle_from(t.path(), "plain", "3.0.0", DENY_ECHO);
    assert_eq!(load(&store, &plain2, None).code, 0);
    assert!(
        eventually(Duration::from_secs(10), || {
            wal_records(&d.wal_dir).iter().any(|r| {
                r["event"] == "policy.rejected"
                    && r["slot"] == "current"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("the bundle is not signed"))
            })
        }),
        "no policy.rejected for the unsigned bundle"
    );
    assert_echo_allowed_under(&d, "signed@2.0.0#sha256:");
    drop(d);

    // Policies that cannot carry a signature are refused with a key set.
    let rego = t.path().join("p.rego");
    std::fs::write(&rego, ALLOW_ECHO).unwrap();
    for (args, what) in [
        (vec!["--demo"], "the embedded demo policy"),
        (vec!["--policy", p(&rego)], "--policy "),
    ] {
        let mut all = vec!["--verification-key", p(&k.public)];
        all.extend(args);
        let err = match Daemon::try_start_in(&t.path().join("w2"), &all, |_| {}) {
            Ok(_) => panic!("{all:?} started"),
            Err(e) => e,
        };
        assert!(
            err.contains("exited with code Some(2)")
                && err.contains(&format!(
                    "autonomy: error: --verification-key is set, but {what}"
                ))
                && err.contains("is not a signed bundle"),
            "{err}"
        );
    }
    // A signed bundle file given by path is checked too.
    let d = store_daemon(
        &store,
        &["--policy", p(&signed), "--verification-key", p(&k.public)],
    );
    assert_echo_allowed_under(&d, "signed@2.0.0#sha256:");
    drop(d);
    let err = match Daemon::try_start_in(
        &t.path().join("w3"),
        &["--policy", p(&plain2), "--verification-key", p(&k.public)],
        |_| {},
    ) {
        Ok(_) => panic!("an unsigned bundle was served with a key"),
        Err(e) => e,
    };
    assert!(err.contains("the bundle is not signed"), "{err}");
}
