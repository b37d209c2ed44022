//! `GET /metrics` on the real daemon: exact counts for the calls a test made, the format checked
//! by the real `promtool check metrics`, and one scrape by a real Prometheus (Debian's
//! `prometheus` package). Without promtool or prometheus those two fail under `CI=true` and
//! skip (one line) elsewhere.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The series of an exposition (`name{labels}` as written) and their values.
fn samples(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.to_string())
        })
        .collect()
}

fn scrape(d: &Daemon) -> String {
    let r = http(d.addr, "GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));
    String::from_utf8(r.body).expect("UTF-8 exposition")
}

fn decisions(kind: &str, decision: &str) -> String {
    format!(
        "autonomy_decisions_total{{kind=\"{kind}\",source=\"http\",decision=\"{decision}\",agent=\"anonymous\"}}"
    )
}

/// 3 echoes allowed, 2 shell calls and 1 call of an unknown kind denied.
fn make_calls(d: &Daemon) {
    for i in 0..3 {
        let r = d.tool(&format!(
            r#"{{"kind":"tool.echo","params":{{"message":"m{i}"}}}}"#
        ));
        assert_eq!(r.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            d.tool(r#"{"kind":"tool.shell","params":{"cmd":"true"}}"#)
                .status,
            403
        );
    }
    assert_eq!(d.tool(r#"{"kind":"custom.thing"}"#).status, 403);
}

#[test]
fn the_counts_are_exactly_the_calls_made() {
    let d = Daemon::start(&["--demo"]);
    make_calls(&d);
    // A malformed request never reaches the gate: it is no decision.
    assert_eq!(d.tool(r#"{"params":{}}"#).status, 400);
    let body = scrape(&d);
    let m = samples(&body);
    let get = |k: &str| -> &str {
        m.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {k} in\n{body}"))
    };

    assert_eq!(get(&decisions("tool.echo", "allow")), "3");
    assert_eq!(get(&decisions("tool.shell", "deny")), "2");
    assert_eq!(get(&decisions("custom.thing", "deny")), "1");
    assert_eq!(
        m.keys()
            .filter(|k| k.starts_with("autonomy_decisions_total"))
            .count(),
        3,
        "{body}"
    );
    assert_eq!(get("autonomy_policy_eval_seconds_count"), "6");
    assert_eq!(get("autonomy_policy_eval_seconds_bucket{le=\"+Inf\"}"), "6");
    assert_eq!(get("autonomy_calls_in_flight"), "0");
    assert_eq!(get("autonomy_approvals_pending"), "0");
    assert_eq!(
        get(&format!(
            "autonomy_build_info{{version=\"{}\"}}",
            autonomy::VERSION
        )),
        "1"
    );

    // The WAL: `started` and one decision per call, each its own append, nothing failed.
    let records = wal_records(&d.wal_dir).len();
    assert_eq!(records, 7);
    assert_eq!(get("autonomy_wal_records_total"), "7");
    assert_eq!(get("autonomy_wal_append_seconds_count"), "7");
    assert_eq!(get("autonomy_wal_batch_records_sum"), "7");
    assert_eq!(
        get("autonomy_wal_fsync_seconds_count"),
        get("autonomy_wal_batch_records_count")
    );
    assert_eq!(get("autonomy_wal_segments"), "1");
    assert_eq!(get("autonomy_wal_failed"), "0");
    assert_eq!(get("autonomy_wal_write_errors_total"), "0");
    let written: u64 = get("autonomy_wal_written_bytes_total").parse().unwrap();
    let size: u64 = get("autonomy_wal_bytes").parse().unwrap();
    assert!(written > 7 * 100 && size > written, "{written} {size}");

    // HEAD has the headers and no body; other methods get 405 with Allow.
    let r = http(d.addr, "HEAD", "/metrics", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));
    assert!(r.body.is_empty());
    let r = http(d.addr, "POST", "/metrics", Some(("text/plain", b"x")));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = http(d.addr, "GET", "/nope", None);
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("GET/HEAD /metrics"),
        "{:?}",
        r.json()
    );
}

/// `name` on the PATH, or `None` after saying the test is skipped; a failure under `CI=true`,
/// where `.ci/run` installs it.
pub(crate) fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is missing and CI=true: .ci/run must install Debian's prometheus package"
        );
        eprintln!("skipped {test}: {name} is not installed (apt-get install prometheus)");
    }
    found
}

/// `promtool check metrics` on `text`: (success, its output).
pub(crate) fn promtool_check(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let st = wait_timeout(&mut child, Duration::from_secs(30)).expect("promtool within 30 s");
    let out = child.wait_with_output().unwrap();
    (
        st.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_exposition() {
    let Some(promtool) = tool("promtool", "promtool_accepts_the_exposition") else {
        return;
    };
    // promtool's lint is on: a counter without `_total` is refused.
    let (ok, out) = promtool_check(&promtool, "# HELP x X.\n# TYPE x counter\nx 1\n");
    assert!(!ok, "promtool accepted a counter without _total: {out}");

    let d = Daemon::start(&["--demo"]);
    make_calls(&d);
    let body = scrape(&d);
    let (ok, out) = promtool_check(&promtool, &body);
    assert!(ok, "promtool check metrics: {out}\n{body}");
}

/// A real Prometheus on a free loopback port, its storage in a temp dir, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: &Path, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: autonomy\n    static_configs:\n      - targets: ['{target}']\n",
                repo().join("examples/prometheus/alerts.yml").display()
            ),
        )
        .unwrap();
        // A free port: bound and released; Prometheus binds it a moment later.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    /// The `data` of an API answer, or `None` while Prometheus is not answering.
    fn api(&self, path: &str) -> Option<Value> {
        TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).ok()?;
        let r = http(self.addr, "GET", path, None);
        if r.status != 200 {
            return None;
        }
        Some(r.json()["data"].clone())
    }

    /// The result vector of an instant query.
    fn query(&self, q: &str) -> Option<Vec<Value>> {
        self.api(&format!("/api/v1/query?query={q}"))?["result"]
            .as_array()
            .cloned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

#[test]
fn a_real_prometheus_scrapes_the_daemon() {
    let Some(bin) = tool("prometheus", "a_real_prometheus_scrapes_the_daemon") else {
        return;
    };
    let d = Daemon::start(&["--demo"]);
    make_calls(&d);
    let mut prom = Prometheus::start(&bin, d.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    let echo = loop {
        if let Ok(Some(st)) = prom.child.try_wait() {
            panic!("prometheus exited ({st}):\n{}", prom.log());
        }
        if let Some(result) = prom.query("autonomy_decisions_total") {
            let echo = result
                .iter()
                .find(|s| s["metric"]["kind"] == "tool.echo")
                .cloned();
            if let Some(e) = echo {
                break e;
            }
            last = Some(result);
        }
        assert!(
            Instant::now() < deadline,
            "no autonomy_decisions_total{{kind=\"tool.echo\"}} in Prometheus within 30 s (last result {last:?}); targets: {:?}\n{}",
            prom.query("up"),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(echo["metric"]["job"], "autonomy");
    assert_eq!(echo["metric"]["source"], "http");
    assert_eq!(echo["metric"]["decision"], "allow");
    assert_eq!(echo["metric"]["agent"], "anonymous");
    assert_eq!(echo["value"][1], "3", "{echo}");
    let up = prom.query("up").unwrap();
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    // A histogram Prometheus can take a quantile of.
    let q = prom
        .query("histogram_quantile(0.99,autonomy_policy_eval_seconds_bucket)")
        .unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    let p99: f64 = q[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(p99 > 0.0 && p99 <= 10.0, "{q:?}");

    // The example alerts (examples/prometheus/alerts.yml) load and evaluate without error
    // against the real series.
    let mut rules = Vec::new();
    let all_ok = eventually(Duration::from_secs(20), || {
        rules = prom
            .api("/api/v1/rules")
            .and_then(|d| d["groups"][0]["rules"].as_array().cloned())
            .unwrap_or_default();
        !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")
    });
    assert!(all_ok, "{rules:#?}");
    assert_eq!(rules.len(), 9, "{rules:#?}");
    let firing: Vec<&Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
    assert!(firing.is_empty(), "{firing:#?}");
}

#[test]
fn the_example_prometheus_files_are_valid_and_in_the_docs() {
    let dir = repo().join("examples/prometheus");
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    for f in ["prometheus.yml", "alerts.yml"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(
            docs.contains(&text),
            "docs/metrics.md does not show {f} as it is"
        );
    }
    let Some(promtool) = tool("promtool", "the_example_prometheus_files_are_valid") else {
        return;
    };
    // `check config` checks the rule files it names too.
    let o = Command::new(promtool)
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The value of `series` in `d`'s exposition (`None` when it is absent).
fn value(d: &Daemon, series: &str) -> Option<String> {
    samples(&scrape(d)).remove(series)
}

#[test]
fn agents_and_rate_limits_are_labelled() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let alice = crate::identity::add_agent(&tmp.path().join("wal.agents.json"), "alice", false);
    let limits = tmp.path().join("limits.json");
    std::fs::write(
        &limits,
        r#"{"limits": [{"kind": "tool.echo", "per_minute": 2, "burst": 2}]}"#,
    )
    .unwrap();
    let d = Daemon::start_in(
        &wal,
        &["--demo", "--auth", "optional", "--limits", p(&limits)],
        |_| {},
    );
    let echo = r#"{"kind":"tool.echo","params":{"message":"hi"}}"#;
    let statuses: Vec<u16> = (0..3).map(|_| d.tool_as(&alice, echo).status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(d.tool(echo).status, 200);
    let m = samples(&scrape(&d));
    let series = |decision: &str, agent: &str| {
        format!(
            "autonomy_decisions_total{{kind=\"tool.echo\",source=\"http\",decision=\"{decision}\",agent=\"{agent}\"}}"
        )
    };
    assert_eq!(m[&series("allow", "alice")], "2", "{m:#?}");
    assert_eq!(m[&series("deny", "alice")], "1", "{m:#?}");
    assert_eq!(m[&series("allow", "anonymous")], "1", "{m:#?}");
    assert_eq!(
        m["autonomy_rate_limited_total{kind=\"tool.echo\",agent=\"alice\"}"],
        "1"
    );
    // A rate-limited call is never evaluated.
    assert_eq!(m["autonomy_policy_eval_seconds_count"], "3");
}

#[test]
fn shadow_mode_counts_what_the_policy_would_have_decided() {
    let d = Daemon::start(&["--demo", "--shadow"]);
    assert_eq!(
        d.tool(r#"{"kind":"tool.shell","params":{"command":"true"}}"#)
            .status,
        200,
        "shadow mode allows"
    );
    assert_eq!(
        d.tool(r#"{"kind":"tool.echo","params":{"message":"x"}}"#)
            .status,
        200
    );
    assert_eq!(
        value(&d, &decisions("tool.shell", "shadow_deny")).as_deref(),
        Some("1")
    );
    assert_eq!(
        value(&d, &decisions("tool.echo", "shadow_allow")).as_deref(),
        Some("1")
    );
    assert_eq!(value(&d, &decisions("tool.shell", "allow")), None);
}

#[test]
fn a_call_waiting_for_approval_is_pending_and_in_flight() {
    use crate::identity::approvals::{ASK, one_pending};
    let tmp = tempfile::tempdir().unwrap();
    let pol = crate::identity::policy_dir(tmp.path(), "pol", ASK);
    let d = Daemon::start_in(
        &tmp.path().join("wal"),
        &["--policy", p(&pol), "--approval-timeout", "60s"],
        |_| {},
    );
    let addr = d.addr;
    let call = std::thread::spawn(move || {
        http(
            addr,
            "POST",
            "/v1/tool",
            Some((
                "application/json",
                br#"{"kind":"tool.echo","params":{"message":"ask"}}"#,
            )),
        )
    });
    let id = one_pending(&d)["audit_id"].as_str().unwrap().to_string();
    assert_eq!(
        value(&d, "autonomy_approvals_pending").as_deref(),
        Some("1")
    );
    assert_eq!(value(&d, "autonomy_calls_in_flight").as_deref(), Some("1"));
    // Not final yet: no decision counted.
    assert_eq!(value(&d, &decisions("tool.echo", "deny")), None);
    let out = cli(&["reject", &id, "--agents", p(&d.agents_file())], &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(call.join().unwrap().status, 403);
    assert_eq!(
        value(&d, "autonomy_approvals_pending").as_deref(),
        Some("0")
    );
    assert_eq!(value(&d, "autonomy_calls_in_flight").as_deref(), Some("0"));
    assert_eq!(
        value(&d, &decisions("tool.echo", "deny")).as_deref(),
        Some("1")
    );
}
