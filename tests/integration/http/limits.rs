//! What the HTTP server does to clients that misbehave: answers an agent reads even when it
//! wrote too much, malformed bodies, slow or silent connections, floods of them, and the
//! connection limit. Every case against the real binary over real sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::resource::Resource;

use crate::common::*;

const GOOD: &str = r#"{"kind":"tool.echo","params":{"message":"still here"}}"#;

/// The client code our users start from (stdlib `urllib`: write the whole request, then read
/// the answer), calling `n` times with a 2 MiB body for each case; prints one line per case.
const URLLIB_CLIENT: &str = r#"
import json, sys, urllib.error, urllib.request

def call_tool(base_url, payload, content_type, method):
    req = urllib.request.Request(
        f"{base_url}/v1/tool",
        data=payload,
        headers={"Content-Type": content_type},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())

base, n = sys.argv[1], int(sys.argv[2])
payload = json.dumps({"kind": "tool.echo", "params": {"message": "x" * (2 << 20)}}).encode()
for content_type, method, want in [
    ("application/json", "POST", 413),
    ("text/plain", "POST", 415),
    ("application/json", "PUT", 405),
]:
    ok, other = 0, {}
    for _ in range(n):
        try:
            status, body = call_tool(base, payload, content_type, method)
            got = str(status) if "error" in body else f"{status} without error"
        except Exception as e:
            got = type(e).__name__ + ": " + str(e)[:80]
        if got == str(want):
            ok += 1
        else:
            other[got] = other.get(got, 0) + 1
    print(f"{method} {content_type} {want}: {ok}/{n} {other}")
"#;

#[test]
fn an_agent_that_writes_before_reading_sees_every_early_answer() {
    let d = Daemon::start(&["--demo"]);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", URLLIB_CLIENT, &d.url(), "50"]);
    let o = run(cmd, Duration::from_secs(300));
    let text = o.stdout;
    assert_eq!(o.code, 0, "{text}{}", o.stderr);
    for want in [
        "POST application/json 413: 50/50 {}",
        "POST text/plain 415: 50/50 {}",
        "PUT application/json 405: 50/50 {}",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
    assert_eq!(d.tool(GOOD).status, 200);
}

/// Sends a request head and then the whole `body` before reading anything; returns the answer.
/// The pause between the two lets the server answer from the head alone first, as it does for
/// a slow client or a large body, so the body is written after the answer.
fn write_all_then_read(addr: SocketAddr, head: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s.set_write_timeout(Some(Duration::from_secs(20))).ok();
    s.write_all(head.as_bytes()).expect("write head");
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(body)
        .expect("the server keeps reading an unread body (lingering close)");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    parse_response(&raw)
}

#[test]
fn a_raw_client_that_sends_the_whole_body_first_reads_the_answer() {
    let d = Daemon::start(&["--demo"]);
    let body = vec![b'x'; 2 << 20];
    for (ct, method, want) in [
        ("application/json", "POST", 413),
        ("text/plain", "POST", 415),
        ("application/json", "PUT", 405),
    ] {
        for _ in 0..5 {
            let head = format!(
                "{method} /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let r = write_all_then_read(d.addr, &head, &body);
            assert_eq!(r.status, want, "{method} {ct}");
            assert!(r.json()["error"].is_string(), "{method} {ct}");
        }
    }
    // A chunked body over the limit: 413 found while reading, then the rest is drained too.
    let mut chunked = Vec::new();
    for _ in 0..32 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend_from_slice(&[b'x'; 64 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let r = write_all_then_read(d.addr, head, &chunked);
    assert_eq!(r.status, 413);
    assert_eq!(d.tool(GOOD).status, 200);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_client_streaming_far_past_the_linger_bound_is_cut_off() {
    let d = Daemon::start(&["--demo", "--linger-bytes", "4194304"]);
    // Warm up, so the baseline includes the server's steady-state allocations.
    for _ in 0..3 {
        let body = vec![b'x'; 2 << 20];
        let head = format!(
            "POST /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        assert_eq!(write_all_then_read(d.addr, &head, &body).status, 413);
    }
    let before = rss_kib(d.child.id());
    let total: u64 = 100 << 20;
    let mut s = TcpStream::connect_timeout(&d.addr, Duration::from_secs(5)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let head = format!(
        "POST /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent: u64 = 0;
    let started = Instant::now();
    while sent < total {
        match s.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(_) => break,
        }
    }
    assert!(
        sent < 16 << 20,
        "the server read {sent} bytes of an unread body (bound 4 MiB plus socket buffers)"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let after = rss_kib(d.child.id());
    assert!(
        after < before + 8 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB while a client streamed"
    );
    assert_eq!(d.tool(GOOD).status, 200);
}

/// Sends `raw`, optionally half-closes, and reads the answer.
fn send_raw(addr: SocketAddr, raw: &[u8], half_close: bool) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s.write_all(raw).expect("write");
    if half_close {
        s.shutdown(std::net::Shutdown::Write).ok();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out)
}

#[test]
fn broken_bodies_are_400_not_413() {
    let d = Daemon::start(&["--demo"]);
    let head = "POST /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let mut ext_flood = format!("{head}Transfer-Encoding: chunked\r\n\r\n5;").into_bytes();
    ext_flood.extend(b"a=b;".repeat(20_000));
    ext_flood.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "body shorter than Content-Length",
            format!("{head}Content-Length: 100\r\n\r\n{{\"kind\":").into_bytes(),
            true,
            "end of file before message length reached",
        ),
        (
            "bad chunk size",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes(),
            false,
            "chunk size",
        ),
        (
            "chunk-extension flood",
            ext_flood,
            false,
            "chunk extensions",
        ),
    ];
    for (what, raw, half_close, msg) in cases {
        let r = send_raw(d.addr, &raw, half_close);
        assert_eq!(
            r.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let err = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains("malformed") && err.contains(msg),
            "{what}: {err}"
        );
        assert_eq!(d.tool(GOOD).status, 200, "after {what}");
    }
}

#[test]
fn a_body_that_stalls_gets_408_after_the_body_timeout() {
    let d = Daemon::start(&["--demo", "--body-timeout", "1s"]);
    let mut s = TcpStream::connect_timeout(&d.addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let started = Instant::now();
    s.write_all(b"POST /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let r = parse_response(&out);
    assert_eq!(r.status, 408);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("did not arrive")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// Waits until the server closes `s` (read returns 0 or an error); returns how long it took,
/// or None if it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn silent_half_sent_and_idle_connections_are_closed_on_time() {
    let d = Daemon::start(&["--demo", "--header-timeout", "1s", "--idle-timeout", "3s"]);
    // Nothing sent.
    let mut silent = TcpStream::connect(d.addr).unwrap();
    // Half a head, then a byte every 300 ms: the header timeout counts from the first byte.
    let mut trickle = TcpStream::connect(d.addr).unwrap();
    trickle.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    let t = Instant::now();
    let mut dripped = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        if trickle.write_all(b"s").is_err() {
            break;
        }
        dripped += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(dripped >= 2);
    for (what, s) in [("silent", &mut silent), ("trickling head", &mut trickle)] {
        let took = closed_within(s, Duration::from_secs(3));
        assert!(
            took.is_some(),
            "{what}: still open 3 s past its header timeout"
        );
    }

    // Keep-alive: after one request the connection may idle longer than the header timeout…
    let mut ka = TcpStream::connect(d.addr).unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buf = [0u8; 4096];
    ka.write_all(req).unwrap();
    assert!(ka.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(1800));
    ka.write_all(req).unwrap();
    let n = ka.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "a keep-alive connection idle 1.8 s (header timeout 1 s, idle 3 s) still works"
    );
    // … and is closed once it idles past the idle timeout.
    let took = closed_within(&mut ka, Duration::from_secs(6)).expect("closed when idle");
    assert!(
        took >= Duration::from_millis(2500),
        "closed after {took:?}, before the 3 s idle timeout"
    );
    assert_eq!(d.tool(GOOD).status, 200);
}

/// Raises this test process's own open-file limit so it can hold a flood of connections. The one
/// process-wide change a test makes: only upwards, and no other test depends on the limit (the
/// daemons that do get theirs set in the child).
fn raise_own_nofile(want: u64) -> bool {
    use nix::sys::resource::{getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    soft >= want || (hard >= want && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok())
}

#[test]
fn a_flood_of_idle_connections_does_not_starve_a_well_behaved_client() {
    assert!(
        raise_own_nofile(4096),
        "this test needs an open-file limit of 4096 for its own sockets"
    );
    let tmp = tempfile::tempdir().unwrap();
    // The daemon at `ulimit -n 1024`, as an unprivileged service often is.
    let d = Daemon::start_in(&tmp.path().join("wal"), &["--demo"], |c| {
        set_rlimit(c, Resource::RLIMIT_NOFILE, 1024, 1024)
    });
    let mut flood = Vec::new();
    for i in 0..1100 {
        let Ok(mut s) = TcpStream::connect_timeout(&d.addr, Duration::from_secs(5)) else {
            continue;
        };
        if i % 2 == 0 {
            let _ = s.write_all(b"POST /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Ty");
        }
        flood.push(s);
    }
    // While the flood holds its sockets, a client that sends its request at once is served.
    for i in 0..20 {
        let t = Instant::now();
        let r = http(d.addr, "GET", "/health", None);
        assert_eq!(r.status, 200, "health #{i}");
        let r = d.tool(GOOD);
        assert_eq!(r.status, 200, "tool #{i}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "#{i} took {:?}",
            t.elapsed()
        );
    }
    // The limit was reached and said so, once.
    let mut lines = Vec::new();
    while let Ok(l) = d.stderr.recv_timeout(Duration::from_millis(300)) {
        lines.push(l);
    }
    let warned = lines
        .iter()
        .filter(|l| l.contains("connection limit 960 reached"))
        .count();
    assert_eq!(warned, 1, "{lines:?}");
    drop(flood);
}

#[test]
fn at_the_limit_with_every_connection_busy_a_new_one_gets_503() {
    let d = Daemon::start(&["--demo", "--max-connections", "2", "--body-timeout", "5s"]);
    // Two requests whose bodies are still arriving: both connections are busy.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.write_all(b"POST /v1/tool HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        busy.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = http(d.addr, "GET", "/health", None);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("too many connections (limit 2)")
    );
    // Once they end, new clients are served again.
    drop(busy);
    let t = Instant::now();
    loop {
        let r = http(d.addr, "GET", "/health", None);
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still {}", r.status);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_limit_flags_are_one_line() {
    for (flag, value) in [
        ("--header-timeout", "0s"),
        ("--idle-timeout", "soon"),
        ("--max-connections", "0"),
    ] {
        let o = cli(&["runtime", "start", "--demo", flag, value], &[]);
        assert_eq!(o.code, 2, "{flag} {value}");
        assert!(o.stderr.contains(flag), "{flag} {value}: {}", o.stderr);
    }
}
