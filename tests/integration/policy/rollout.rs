//! Rollout from a registry: `runtime start --policy-watch oci://… --poll 500ms
//! --verification-key …` against Debian's `docker-registry`. Versions pushed to one tag are
//! pulled, verified, stored and activated; one signed with another key is rejected and changes
//! nothing; a registry that goes away changes nothing either, and is said once.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::oci::Registry;
use super::signing::{build_signed, have_openssl, keys};
use super::*;
use crate::common::*;

/// Allows `tool.echo`, its reason naming `version` (so each version hashes differently).
fn versioned(version: &str) -> String {
    format!(
        "package autonomy\n\ndefault allow := false\n\nallow if input.kind == \"tool.echo\"\n\nreason := \"only echo ({version})\" if not allow\n"
    )
}

/// `fleet@version`, signed with `key`, built into `dir`.
fn fleet_bundle(dir: &Path, version: &str, key: &Path) -> PathBuf {
    let src = dir.join(format!("src-{version}"));
    write_policy(&src, &versioned(version));
    let out = dir.join(format!("fleet-{version}.tar.gz"));
    let o = build_signed(&src, &out, "fleet", version, key, &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    out
}

fn push(bundle: &Path, r: &str) {
    let o = cli(&["policy", "push", p(bundle), r, "--insecure"], &[]);
    assert_eq!(o.code, 0, "{}", o.all());
}

/// The daemon's stderr lines so far, kept across calls.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn update(&mut self) -> &[String] {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    fn count(&mut self, pat: &str) -> usize {
        self.update().iter().filter(|l| l.contains(pat)).count()
    }
}

/// The `policy_ref` the daemon answers `tool.echo` with.
fn serving(d: &Daemon) -> String {
    echo(d).1["policy_ref"].as_str().unwrap_or("").to_string()
}

/// The `policy` records of the daemon's WAL.
fn policy_records(d: &Daemon) -> Vec<Value> {
    wal_records(&d.wal_dir)
        .into_iter()
        .filter(|r| r["type"] == "policy")
        .collect()
}

#[test]
fn policy_watch_rolls_out_signed_versions_and_keeps_serving_through_failures() {
    let test = "policy_watch_rolls_out_signed_versions_and_keeps_serving_through_failures";
    if !have_openssl(test) {
        return;
    }
    let mut reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let k = keys(t.path(), "ec", "fleet");
    let intruder = keys(t.path(), "ec", "intruder");
    let r = format!("oci://127.0.0.1:{}/policies/fleet:prod", reg.port);
    let store = t.path().join("store");

    let mut d = store_daemon(
        &store,
        &[
            "--policy-watch",
            &r,
            "--poll",
            "500ms",
            "--insecure-registry",
            "--verification-key",
            p(&k.public),
        ],
    );
    let mut lines = Lines {
        rx: std::mem::replace(&mut d.stderr, mpsc::channel().1),
        seen: Vec::new(),
    };
    // Nothing in the store, nothing at the tag yet: DENY-ALL, and the tag's absence said once.
    assert_eq!(serving(&d), "builtin:deny-all");
    let unavailable = format!("autonomy: warning: policy watch: {r} is unavailable (");
    assert!(
        eventually(Duration::from_secs(10), || lines.count(&unavailable) == 1),
        "{:?}",
        lines.update()
    );

    // v1: pulled, verified, stored, activated.
    push(&fleet_bundle(t.path(), "1.0.0", &k.private), &r);
    assert!(
        eventually(Duration::from_secs(20), || serving(&d)
            .starts_with("fleet@1.0.0#sha256:")),
        "v1 was not activated: {:?}",
        lines.update()
    );
    assert_eq!(
        lines.count(&format!("policy watch: {r} is available again")),
        1
    );
    let v1_ref = serving(&d);
    let recs = policy_records(&d);
    let events: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap(),
                r["policy_ref"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("policy.loaded", v1_ref.as_str()),
            ("policy.activated", v1_ref.as_str())
        ]
    );
    assert_eq!(recs[0]["source"], r.as_str());
    assert_eq!(meta(&store, "current")["source"], r.as_str());
    assert_eq!(meta(&store, "current")["signature"], "verified ES256");

    // v2, signed with another key, at the same tag: rejected once, recorded, nothing changes.
    let before = slots_digest(&store);
    push(&fleet_bundle(t.path(), "2.0.0", &intruder.private), &r);
    assert!(
        eventually(Duration::from_secs(20), || policy_records(&d)
            .iter()
            .any(|r| r["event"] == "policy.rejected")),
        "v2 was not rejected: {:?}",
        lines.update()
    );
    // A few more polls: the same digest is not tried (or recorded) again.
    std::thread::sleep(Duration::from_secs(2));
    let rejected: Vec<Value> = policy_records(&d)
        .into_iter()
        .filter(|r| r["event"] == "policy.rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["source"], r.as_str());
    assert_eq!(rejected[0]["policy_ref"], v1_ref.as_str());
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the bundle signature does not verify with the verification key"),
        "{reason}"
    );
    assert_eq!(serving(&d), v1_ref);
    assert_eq!(
        slots_digest(&store),
        before,
        "a rejected version changed the store"
    );
    assert_eq!(
        lines.count("policy watch: rejected the bundle at"),
        1,
        "{:?}",
        lines.update()
    );

    // `policy pull --verification-key` refuses it the same way, and changes nothing.
    let pulled = t.path().join("pulled");
    let pull_verified = || {
        cli(
            &[
                "policy",
                "pull",
                &r,
                "--insecure",
                "--policy-dir",
                p(&pulled),
                "--verification-key",
                p(&k.public),
            ],
            &[],
        )
    };
    let o = pull_verified();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.starts_with(
            "policy load: REJECTED — the bundle signature does not verify with the verification key"
        ),
        "{}",
        o.all()
    );
    assert!(!pulled.join("current").exists());

    // v3: activated; v1 is now the last known good.
    push(&fleet_bundle(t.path(), "3.0.0", &k.private), &r);
    assert!(
        eventually(Duration::from_secs(20), || serving(&d)
            .starts_with("fleet@3.0.0#sha256:")),
        "v3 was not activated: {:?}",
        lines.update()
    );
    assert_eq!(meta(&store, "lkg")["version"], "1.0.0");
    let v3_ref = serving(&d);
    let o = pull_verified();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout
            .contains("policy load: OK — version=3.0.0 hash=sha256:")
            && o.stdout.ends_with(" signature=verified ES256\n"),
        "{}",
        o.stdout
    );

    // The registry goes away: still v3, said once; it comes back: said once, nothing pulled.
    let records_before = policy_records(&d).len();
    reg.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.count(&unavailable) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines.count(&unavailable), 2, "{:?}", lines.update());
    assert_eq!(serving(&d), v3_ref);
    reg.restart();
    assert!(
        eventually(Duration::from_secs(20), || lines
            .count(&format!("policy watch: {r} is available again"))
            == 2),
        "{:?}",
        lines.update()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(serving(&d), v3_ref);
    assert_eq!(policy_records(&d).len(), records_before);
}

#[test]
fn policy_watch_flags_are_checked_before_anything_starts() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--policy-watch", "oci://127.0.0.1:1/../x"],
            "autonomy: error: invalid OCI ref",
        ),
        (
            &[
                "--policy-watch",
                "oci://registry.example.com/x:1",
                "--insecure-registry",
            ],
            "autonomy: error: --insecure-registry (plain HTTP) is only allowed for loopback registries, not registry.example.com",
        ),
        (
            &["--policy-watch", "oci://127.0.0.1:1/x", "--policy", "demo"],
            "cannot be used with",
        ),
        (&["--poll", "1s"], "--policy-watch"),
    ];
    for (args, want) in cases {
        let mut all = vec!["--policy-dir", p(&store)];
        all.extend_from_slice(args);
        let err = match Daemon::try_start_in(&t.path().join("wal"), &all, |_| {}) {
            Ok(_) => panic!("{args:?} started"),
            Err(e) => e,
        };
        assert!(
            err.contains("exited with code Some(2)") && err.contains(want),
            "{args:?}: {err}"
        );
    }

    // Without a verification key the daemon starts, and warns.
    let d = store_daemon(
        &store,
        &[
            "--policy-watch",
            "oci://127.0.0.1:1/x:1",
            "--insecure-registry",
        ],
    );
    assert!(
        d.startup.iter().any(|l| l
            == "autonomy: warning: --policy-watch without --verification-key: any bundle pushed to oci://127.0.0.1:1/x:1 will be served, unverified"),
        "{:?}",
        d.startup
    );
}
