//! An external load generator, `wrk`, beside the benchmark's own client: the same daemon and
//! the same loads, measured by a client that shares no code with the server.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A usable `wrk` and the directory for its Lua scripts.
pub struct Wrk {
    dir: PathBuf,
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    /// Answers per second, as `wrk` reports them.
    pub rate: f64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// Latency percentiles, µs.
    pub p99_us: f64,
    /// Answers received.
    pub requests: u64,
    /// Answers with a status other than 2xx/3xx.
    pub non2xx: u64,
    /// Socket errors (connect, read, write, timeout).
    pub errors: u64,
    /// The daemon's CPU (user + system, all threads) per answer over the run, µs.
    pub daemon_cpu: Option<f64>,
}

impl Wrk {
    /// `wrk` from `PATH`; if it is missing, `apt-get install -y wrk` first (works as root).
    pub fn find(dir: &Path) -> Option<Wrk> {
        let ok = || {
            Command::new("wrk")
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wrk"))
        };
        if !ok() {
            eprintln!("autonomy-bench: installing wrk (apt-get install -y wrk)");
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q", "wrk"])
                .output();
        }
        ok().then(|| Wrk {
            dir: dir.to_path_buf(),
        })
    }

    /// `wrk -t2 -c<conns> -d<secs>s --latency` against `url`: a GET, or a POST of `body` as
    /// JSON. `pid` is the daemon's, for its CPU time over the run.
    pub fn run(
        &self,
        url: &str,
        body: Option<&str>,
        conns: usize,
        secs: f64,
        pid: u32,
    ) -> Result<WrkRun, String> {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{:.0}s", secs.max(1.0)),
        ])
        .arg("--latency");
        if let Some(body) = body {
            let script = self.dir.join(format!("post-{:x}.lua", fnv(body)));
            let lua = format!(
                "wrk.method = \"POST\"\nwrk.body = [[{body}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
            );
            std::fs::write(&script, lua).map_err(|e| format!("{}: {e}", script.display()))?;
            cmd.arg("-s").arg(&script);
        }
        cmd.arg(url);
        let before = cpu_ticks(pid);
        let out = cmd.output().map_err(|e| format!("wrk: {e}"))?;
        let after = cpu_ticks(pid);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!(
                "wrk exited with {}: {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut run = parse(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))?;
        if let (Some(a), Some(b)) = (before, after)
            && run.requests > 0
        {
            run.daemon_cpu = Some(b.saturating_sub(a) as f64 * tick_us() / run.requests as f64);
        }
        Ok(run)
    }
}

/// A short stable name for a script's body.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The µs in one clock tick of `/proc`'s CPU times.
fn tick_us() -> f64 {
    1e6 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64
}

/// A process's user + system time in clock ticks (all its threads).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A wrk duration (`535.00us`, `1.20ms`, `2.00s`) in µs.
fn duration_us(s: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("m") {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// Reads `wrk --latency`'s report.
fn parse(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun {
        rate: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        requests: 0,
        non2xx: 0,
        errors: 0,
        daemon_cpu: None,
    };
    let mut seen_rate = false;
    for line in text.lines() {
        let l = line.trim();
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["50%", d] => run.p50_us = duration_us(d)?,
            ["99%", d] => run.p99_us = duration_us(d)?,
            [n, "requests", "in", ..] => run.requests = n.parse().ok()?,
            ["Requests/sec:", r] => {
                run.rate = r.parse().ok()?;
                seen_rate = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                run.errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    seen_rate.then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let text = "Running 4s test @ http://127.0.0.1:1/v1/tool
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.68ms  450.12us   9.00ms   80.00%
    Req/Sec    19.20k     1.10k   21.00k    70.00%
  Latency Distribution
     50%  535.00us
     75%    1.80ms
     90%    2.10ms
     99%    3.20ms
  153012 requests in 4.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 153012
Requests/sec:  38253.00
Transfer/sec:     10.00MB
";
        let r = parse(text).unwrap();
        assert_eq!(r.requests, 153012);
        assert_eq!(r.non2xx, 153012);
        assert_eq!(r.errors, 3);
        assert!((r.rate - 38253.0).abs() < 1e-6);
        assert!((r.p50_us - 535.0).abs() < 1e-6);
        assert!((r.p99_us - 3200.0).abs() < 1e-6);
        assert!(parse("garbage").is_none());
    }
}
