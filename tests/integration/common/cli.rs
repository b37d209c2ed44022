//! Running a command to its end with a deadline: the CLI's exit code and output.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{bin, p, wait_timeout};

/// How long one CLI command may take before the test fails.
const CLI_LIMIT: Duration = Duration::from_secs(120);

/// What a finished command printed, and its exit code (-1 when a signal ended it).
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout, then stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` (stdin empty, output captured) to its end; fails the test after `limit`.
pub fn run(mut cmd: Command, limit: Duration) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Both pipes are drained while the command runs, so a chatty one cannot block on a full pipe.
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let so = read_all(Box::new(child.stdout.take().expect("stdout")));
    let se = read_all(Box::new(child.stderr.take().expect("stderr")));
    let Some(st) = wait_timeout(&mut child, limit) else {
        let _ = child.wait();
        panic!("{what} did not finish within {limit:?}");
    };
    Out {
        code: st.code().unwrap_or(-1),
        stdout: so.join().expect("stdout reader"),
        stderr: se.join().expect("stderr reader"),
    }
}

/// `autonomy ARGS` with `env` added, to its end (at most 120 s). The variables the CLI reads
/// its defaults from are cleared first, so the caller's environment cannot change a test.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for k in [
        "AUTONOMY_POLICY_DIR",
        "AUTONOMY_WAL_DIR",
        "AUTONOMY_RUN_WAL_DIR",
        "AUTONOMY_AGENTS_FILE",
        "AUTONOMY_RUNTIME_URL",
        "AUTONOMY_RUNTIME_TOKEN",
        "AUTONOMY_OPERATOR_TOKEN",
        "AUTONOMY_VERIFICATION_KEY",
        "AUTONOMY_VERIFICATION_SCOPE",
        "AUTONOMY_NODE_ID",
        "AUTONOMY_EXPORT",
        "SOURCE_DATE_EPOCH",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, CLI_LIMIT)
}

/// `autonomy policy build --in DIR --out OUT --version VERSION`.
fn build_args<'a>(dir: &'a Path, out: &'a Path, version: &'a str) -> Vec<&'a str> {
    vec![
        "policy",
        "build",
        "--in",
        p(dir),
        "--out",
        p(out),
        "--version",
        version,
    ]
}

/// `autonomy policy build` of `dir` into `out`, which may fail.
pub fn try_build(dir: &Path, out: &Path, version: &str) -> Out {
    cli(&build_args(dir, out, version), &[])
}

/// `autonomy policy build` of `dir` into `out` as bundle `name` (reproducibly:
/// `SOURCE_DATE_EPOCH` is set), which must succeed.
pub fn build_bundle(dir: &Path, out: &Path, version: &str, name: &str) -> Out {
    let mut args = build_args(dir, out, version);
    args.extend(["--name", name]);
    let o = cli(&args, &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert_eq!(o.code, 0, "build failed: {}", o.all());
    o
}
