//! `tool.http_get` against tiny local HTTP servers on 127.0.0.1 (real sockets).

use std::time::Duration;

use autonomy::tools::{Allowlist, HttpGet, HttpGetLimits, ToolOutcome};
use serde_json::{Value, json};

use crate::common::*;

/// Every test's own limit.
const TEST_LIMIT: Duration = Duration::from_secs(30);

async fn limited<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test timed out");
}

fn ok(body: &'static str) -> impl Fn(&str) -> Vec<u8> + Send + Sync + 'static {
    move |_| ok_response("text/plain", body.as_bytes())
}

fn redirect_to(location: String) -> impl Fn(&str) -> Vec<u8> + Send + Sync + 'static {
    move |_| redirect_response(&location)
}

fn tool(allow: &str) -> HttpGet {
    tool_with(allow, HttpGetLimits::default())
}

fn tool_with(allow: &str, limits: HttpGetLimits) -> HttpGet {
    HttpGet::new(Allowlist::parse(allow).unwrap(), limits)
}

async fn get(t: &HttpGet, endpoint: &str) -> ToolOutcome {
    let p = json!({ "endpoint": endpoint });
    t.get(p.as_object().unwrap()).await
}

fn output(o: ToolOutcome) -> Value {
    match o {
        ToolOutcome::Output(v) => v,
        o => panic!("expected Output, got {o:?}"),
    }
}

fn deny(o: ToolOutcome) -> String {
    match o {
        ToolOutcome::RuntimeDeny(m) => m,
        o => panic!("expected RuntimeDeny, got {o:?}"),
    }
}

fn upstream(o: ToolOutcome) -> String {
    match o {
        ToolOutcome::Upstream(m) => m,
        o => panic!("expected Upstream, got {o:?}"),
    }
}

/// Lets a connection that should not have happened show up in the counters.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn allowlisted_ip_literal_gets_output() {
    limited(async {
        let s = LocalServer::start(ok("hello"));
        let t = tool(&format!("127.0.0.1:{}", s.port()));
        let v = output(get(&t, &format!("http://127.0.0.1:{}/x?y=1", s.port())).await);
        assert_eq!(
            v,
            json!({"status": 200, "content_type": "text/plain", "body": "hello", "truncated": false})
        );
        assert_eq!(s.hits(), 1);
        let head = s.last_head().to_ascii_lowercase();
        assert!(head.starts_with("get /x?y=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("user-agent: autonomy/{}\r\n", autonomy::VERSION)),
            "{head}"
        );
    })
    .await;
}

#[tokio::test]
async fn upstream_error_status_is_still_output() {
    limited(async {
        let s = LocalServer::start(|_| response("404 Not Found", &[], b"nope"));
        let t = tool(&format!("http://127.0.0.1:{}", s.port()));
        let v = output(get(&t, &format!("http://127.0.0.1:{}/", s.port())).await);
        assert_eq!(v["status"], 404);
        assert_eq!(v["content_type"], Value::Null);
        assert_eq!(v["body"], "nope");
    })
    .await;
}

#[tokio::test]
async fn not_allowlisted_is_denied_without_a_request() {
    limited(async {
        let s = LocalServer::start(ok("secret"));
        let other = s.port().wrapping_add(1).max(1);
        let t = tool(&format!("127.0.0.1:{other},localhost"));
        let m = deny(get(&t, &format!("http://127.0.0.1:{}/", s.port())).await);
        assert_eq!(
            m,
            format!(
                "endpoint 127.0.0.1:{} is not in the allowlist (--allowed-domains)",
                s.port()
            )
        );
        // Empty allowlist: nothing goes.
        let t = HttpGet::new(Allowlist::empty(), HttpGetLimits::default());
        deny(get(&t, &format!("http://127.0.0.1:{}/", s.port())).await);
        settle().await;
        assert_eq!(s.hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn loopback_through_dns_is_denied_without_a_request() {
    limited(async {
        let s = LocalServer::start(ok("secret"));
        let t = tool(&format!("localhost:{}", s.port()));
        let m = deny(get(&t, &format!("http://localhost:{}/", s.port())).await);
        assert!(
            m.starts_with("endpoint host localhost resolves to ") && m.contains("(loopback "),
            "{m}"
        );
        assert!(
            m.ends_with(
                "special-purpose addresses are refused unless --allowed-domains names the IP literally"
            ),
            "{m}"
        );
        settle().await;
        assert_eq!(s.hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn loopback_through_dns_is_allowed_when_the_ip_is_named() {
    limited(async {
        let s = LocalServer::start(ok("via name"));
        // localhost may also resolve to ::1 (refused: not named); 127.0.0.1 is named.
        let t = tool(&format!("localhost:{},127.0.0.1", s.port()));
        let v = output(get(&t, &format!("http://localhost:{}/", s.port())).await);
        assert_eq!(v["body"], "via name");
        assert_eq!(s.hits(), 1);
    })
    .await;
}

#[tokio::test]
async fn redirect_to_non_allowlisted_target_is_denied() {
    limited(async {
        let b = LocalServer::start(ok("internal"));
        let pb = b.port();
        let a = LocalServer::start(redirect_to(format!("http://127.0.0.1:{pb}/admin")));
        let t = tool(&format!("127.0.0.1:{}", a.port()));
        let m = deny(get(&t, &format!("http://127.0.0.1:{}/", a.port())).await);
        assert_eq!(
            m,
            format!("redirect target 127.0.0.1:{pb} is not in the allowlist (--allowed-domains)")
        );
        settle().await;
        assert_eq!(a.hits(), 1);
        assert_eq!(b.hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn redirect_to_allowlisted_name_resolving_to_loopback_is_denied() {
    limited(async {
        let b = LocalServer::start(ok("internal"));
        let pb = b.port();
        // A on 127.0.0.2, so the allowlist names no address `localhost` resolves to
        // (an IP-literal entry lifts the range check for that IP on any port).
        let a = LocalServer::serve(
            bind("127.0.0.2"),
            Duration::ZERO,
            redirect_to(format!("http://localhost:{pb}/")),
        );
        let t = tool(&format!("127.0.0.2:{},localhost:{pb}", a.port()));
        let m = deny(get(&t, &format!("http://127.0.0.2:{}/", a.port())).await);
        assert!(m.starts_with("endpoint host localhost resolves to "), "{m}");
        settle().await;
        assert_eq!(a.hits(), 1);
        assert_eq!(b.hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn redirect_to_other_scheme_is_not_followed() {
    limited(async {
        // Schemes reqwest cannot fetch at all: refused, not handed back as a 302 output.
        for (location, scheme) in [
            ("file:///etc/passwd", "file"),
            ("data:text/plain,hello", "data"),
            ("gopher://127.0.0.1:70/x", "gopher"),
        ] {
            let a = LocalServer::start(redirect_to(location.into()));
            let t = tool(&format!("127.0.0.1:{}", a.port()));
            let m = deny(get(&t, &format!("http://127.0.0.1:{}/", a.port())).await);
            assert_eq!(
                m,
                format!("redirect to scheme {scheme}: refused (http and https only)")
            );
        }
        // One with an authority reaches the policy: refused.
        let b = LocalServer::start(redirect_to("ftp://127.0.0.1:21/x".into()));
        let t = tool(&format!("127.0.0.1:{},127.0.0.1:21", b.port()));
        let m = deny(get(&t, &format!("http://127.0.0.1:{}/", b.port())).await);
        assert_eq!(m, "redirect to scheme ftp: refused (http and https only)");
    })
    .await;
}

#[tokio::test]
async fn redirect_to_allowlisted_target_is_followed() {
    limited(async {
        let b = LocalServer::start(ok("landed"));
        let pb = b.port();
        let a = LocalServer::start(redirect_to(format!("http://127.0.0.1:{pb}/there")));
        let t = tool(&format!("127.0.0.1:{},http://127.0.0.1:{pb}/", a.port()));
        let v = output(get(&t, &format!("http://127.0.0.1:{}/", a.port())).await);
        assert_eq!(v["status"], 200);
        assert_eq!(v["body"], "landed");
        assert_eq!((a.hits(), b.hits()), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn too_many_redirects_is_upstream() {
    limited(async {
        let l = bind("127.0.0.1");
        let port = l.local_addr().unwrap().port();
        let s = LocalServer::serve(
            l,
            Duration::ZERO,
            redirect_to(format!("http://127.0.0.1:{port}/again")),
        );
        let t = tool(&format!("127.0.0.1:{port}"));
        let m = upstream(get(&t, &format!("http://127.0.0.1:{port}/")).await);
        assert_eq!(m, "127.0.0.1: too many redirects (more than 5)");
        // The first request and 5 redirects followed.
        settle().await;
        assert_eq!(s.hits(), 6);
    })
    .await;
}

#[tokio::test]
async fn upstream_down_is_upstream() {
    limited(async {
        let port = closed_port();
        let t = tool(&format!("127.0.0.1:{port}"));
        let m = upstream(get(&t, &format!("http://127.0.0.1:{port}/")).await);
        assert!(m.starts_with("127.0.0.1: connect failed"), "{m}");
    })
    .await;
}

#[tokio::test]
async fn large_body_is_truncated() {
    limited(async {
        let big = vec![b'a'; 2 * 1024 * 1024];
        let s = LocalServer::start(move |_| response("200 OK", &[], &big));
        let t = tool(&format!("127.0.0.1:{}", s.port()));
        let v = output(get(&t, &format!("http://127.0.0.1:{}/", s.port())).await);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["body"].as_str().unwrap().len(), 1024 * 1024);
    })
    .await;
}

#[tokio::test]
async fn body_at_the_limit_is_not_truncated() {
    limited(async {
        let s = LocalServer::start(|_| response("200 OK", &[], b"0123456789"));
        let limits = HttpGetLimits {
            max_body: 10,
            ..HttpGetLimits::default()
        };
        let t = tool_with(&format!("127.0.0.1:{}", s.port()), limits.clone());
        let v = output(get(&t, &format!("http://127.0.0.1:{}/", s.port())).await);
        assert_eq!(
            (v["body"].as_str(), &v["truncated"]),
            (Some("0123456789"), &json!(false))
        );
        let limits = HttpGetLimits {
            max_body: 9,
            ..limits
        };
        let t = tool_with(&format!("127.0.0.1:{}", s.port()), limits);
        let v = output(get(&t, &format!("http://127.0.0.1:{}/", s.port())).await);
        assert_eq!(
            (v["body"].as_str(), &v["truncated"]),
            (Some("012345678"), &json!(true))
        );
    })
    .await;
}

#[tokio::test]
async fn slow_server_times_out_as_upstream() {
    limited(async {
        let s = LocalServer::serve(bind("127.0.0.1"), Duration::from_secs(5), |_| {
            response("200 OK", &[], b"late")
        });
        let limits = HttpGetLimits {
            timeout: Duration::from_millis(300),
            ..HttpGetLimits::default()
        };
        let t = tool_with(&format!("127.0.0.1:{}", s.port()), limits);
        let started = std::time::Instant::now();
        let m = upstream(get(&t, &format!("http://127.0.0.1:{}/", s.port())).await);
        assert_eq!(m, "127.0.0.1: timed out after 300ms");
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test]
async fn bad_params_are_bad_params() {
    limited(async {
        let t = tool("example.com");
        for p in [
            json!({}),
            json!({"endpoint": null}),
            json!({"endpoint": ["http://example.com/"]}),
            json!({"endpoint": "ftp://example.com/"}),
            json!({"endpoint": "example.com"}),
            json!({"endpoint": "http://user:pass@example.com/"}),
        ] {
            match t.get(p.as_object().unwrap()).await {
                ToolOutcome::BadParams(_) => {}
                o => panic!("{p}: expected BadParams, got {o:?}"),
            }
        }
    })
    .await;
}
