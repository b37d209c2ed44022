//! Policies built to hurt: recursion (refused wherever a policy enters), depth (evaluated on
//! a bounded stack or refused), parser noise, and files that are not regular or too big (never
//! read past the cap).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::resource::Resource;

use super::*;
use crate::common::*;

const REC_FUNCTION: &str = "package autonomy\n\nf(x) := y if { y := f(x) }\n\ndefault allow := false\n\nallow if { input.kind == \"tool.echo\"; f(1) }\n";
const REC_FUNCTION_LINE: &str = "p.rego:3: rego_recursion_error: rule data.autonomy.f is recursive: data.autonomy.f -> data.autonomy.f";
const REC_RULES: &str =
    "package autonomy\n\ndefault allow := false\n\na if b\n\nb if a\n\nallow if a\n";
const REC_RULES_LINE: &str = "p.rego:5: rego_recursion_error: rule data.autonomy.a is recursive: data.autonomy.a -> data.autonomy.b -> data.autonomy.a";

/// A bundle file holding `rego` as `p.rego`, made without `policy build` (which refuses it).
fn hostile_bundle(dir: &Path, name: &str, rego: &str) -> PathBuf {
    let f = dir.join(format!("{name}.tar.gz"));
    std::fs::write(&f, native(&[("p.rego", rego.as_bytes())])).unwrap();
    f
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
        let o = try_build(&dir, &out, "1.0.0");
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

#[test]
fn a_recursive_current_slot_never_takes_the_daemon_down() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = bundle_from(t.path(), "keep", "1.0.0", ALLOW_ECHO);
    assert_eq!(load(&store, &a, None).code, 0);
    let ref_a = current_ref(&store);
    let wal = t.path().join("wal");
    let mut d = Daemon::start_in(&wal, &["--policy-dir", p(&store)], |_| {});
    assert_eq!(echo(&d).0, 200);

    // Hot reload: the recursive slot is rejected and the old policy keeps serving.
    let bytes = native(&[("p.rego", REC_FUNCTION.as_bytes())]);
    write_slot(&store, "current", &bytes, |m| {
        m["version"] = "6.6.6".into();
        m["hash"] = hash_of(&bytes).into();
        m["policy_ref"] = "hostile@6.6.6".into();
    });
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
    let reg = super::oci::Registry::start();
    let t = tempfile::tempdir().unwrap();
    let bytes = native(&[("p.rego", REC_RULES.as_bytes())]);
    let r = format!("oci://127.0.0.1:{}/policies/rec:1.0.0", reg.port);
    // `policy push` only sends valid bundles, so a hostile publisher pushes it with the library's
    // push, which sends whatever bytes it is given.
    let oref = autonomy::policy::dist::oci::OciRef::parse(&r).expect("ref");
    let b = autonomy::policy::dist::bundle::read_bytes(&bytes, None).expect("readable bundle");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(autonomy::policy::dist::oci::push(&bytes, &b, &oref, true))
        .expect("push");
    let store = t.path().join("store");
    let o = pull(&r, &store, None);
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
    let o = try_build(&deeper, &t.path().join("x.tar.gz"), "1.0.0");
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
    let o = try_build(&brackets, &t.path().join("y.tar.gz"), "1.0.0");
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
        let o = try_build(&dir, &t.path().join("s.tar.gz"), "1.0.0");
        assert_eq!(o.code, 1, "{}", o.all());
        assert!(!o.all().contains("could not schedule"), "{}", o.all());
        let l = lines(&o.stderr);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].starts_with("policy build: FAILED — "), "{l:?}");
    }
}

/// Runs the binary under a 2 GiB address-space limit and a 20 s deadline, so a reader that
/// does not bound itself fails fast instead of exhausting the machine.
fn cli_bounded(args: &[&str]) -> Out {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("AUTONOMY_POLICY_DIR");
    set_rlimit(&mut cmd, Resource::RLIMIT_AS, 2 << 30, 2 << 30);
    run(cmd, Duration::from_secs(20))
}

#[test]
fn only_regular_files_are_read_and_never_past_the_cap() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let fifo = t.path().join("pipe.tar.gz");
    mkfifo(&fifo);
    for path in ["/dev/zero", p(&fifo)] {
        let o = cli_bounded(&[
            "policy",
            "load",
            "--bundle",
            path,
            "--policy-dir",
            p(&store),
        ]);
        assert_eq!(o.code, 1, "load {path}: {}", o.stderr);
        assert_eq!(
            lines(&o.stderr),
            [format!(
                "policy load: REJECTED — bundle {path} is not a regular file"
            )]
        );
        let o = cli_bounded(&["policy", "push", path, "oci://127.0.0.1:9/p:1"]);
        assert_eq!(o.code, 2, "push {path}: {}", o.stderr);
        assert!(o.stderr.contains("is not a regular file"), "{}", o.stderr);
        let o = cli_bounded(&["run", "--policy", path, "true"]);
        assert_eq!(o.code, 2, "run {path}: {}", o.stderr);
        assert_eq!(lines(&o.stderr).len(), 1, "{}", o.stderr);
    }
    assert!(!store.join("current").exists());

    // A regular file over the documented cap (16 MiB) is refused without reading it all.
    let big = t.path().join("big.tar.gz");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(16 * 1024 * 1024 + 1).unwrap();
    let o = cli_bounded(&[
        "policy",
        "load",
        "--bundle",
        p(&big),
        "--policy-dir",
        p(&store),
    ]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("is 16777217 bytes; the limit is 16777216"),
        "{}",
        o.stderr
    );

    // A FIFO among the .rego files of `policy build --in` does not hang the build.
    let dir = t.path().join("src");
    write_policy(&dir, ALLOW_ECHO);
    mkfifo(&dir.join("z.rego"));
    let o = cli_bounded(&[
        "policy",
        "build",
        "--in",
        p(&dir),
        "--out",
        p(&t.path().join("o.tar.gz")),
        "--version",
        "1.0.0",
    ]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("z.rego is not a regular file"),
        "{}",
        o.stderr
    );
}
