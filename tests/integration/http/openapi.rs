//! `GET /openapi.json` against the real binary: the document covers every route the router
//! serves, passes PyPI `openapi-spec-validator`, and PyPI `schemathesis` fuzzing the running
//! daemon from it finds no answer the document does not describe. Both Python tools come from
//! the repo's `.venv` (.ci/run installs them); without them the last two tests fail under
//! `CI=true` and skip elsewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use autonomy::http::ROUTES;
use serde_json::Value;

use crate::common::*;

/// Paths the document describes ahead of the code that serves them. Once one is served, the
/// coverage test fails until it is taken out of here and out of any `[[operations]]` block of
/// tests/schemathesis.toml that keeps schemathesis off it until then.
const NOT_YET_SERVED: &[&str] = &[];

/// The methods an OpenAPI path item can hold operations for.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The schemathesis run's own bound (it takes about 20 s here; its examples are bounded in
/// tests/schemathesis.toml).
const FUZZ_LIMIT: Duration = Duration::from_secs(170);

/// The document as served, and the answer it came in.
fn fetch_document(d: &Daemon) -> (Resp, Value) {
    let r = http(d.addr, "GET", "/openapi.json", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let doc = r.json();
    (r, doc)
}

/// The document's operations on `path`, as upper-case methods.
fn documented_methods(doc: &Value, path: &str) -> BTreeSet<String> {
    let item = doc["paths"][path]
        .as_object()
        .unwrap_or_else(|| panic!("{path} is not in openapi.json"));
    METHODS
        .iter()
        .filter(|m| item.contains_key(**m))
        .map(|m| m.to_ascii_uppercase())
        .collect()
}

/// `path` with each `{parameter}` replaced by a value.
fn with_params(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The methods of an `Allow` header value (`GET, HEAD`).
fn allowed(allow: &str) -> BTreeSet<String> {
    allow.split(',').map(|m| m.trim().to_string()).collect()
}

#[test]
fn the_document_is_served_and_describes_every_route() {
    let d = Daemon::start(&["--demo"]);
    let (r, doc) = fetch_document(&d);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let openapi = doc["openapi"].as_str().expect("openapi");
    assert!(openapi.starts_with("3.1"), "{openapi}");
    assert_eq!(doc["info"]["version"], autonomy::VERSION);

    // HEAD: GET's headers, no body.
    let h = http(d.addr, "HEAD", "/openapi.json", None);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-type"), Some("application/json"));
    assert!(h.body.is_empty());

    // Every route the router serves (it is built from ROUTES alone) is documented with exactly
    // the methods it takes, and the server agrees: those methods reach a handler, any other
    // one is a 405 whose Allow names them.
    let served: BTreeSet<&str> = ROUTES.iter().map(|(path, _)| *path).collect();
    for &(path, allow) in ROUTES {
        assert_eq!(
            documented_methods(&doc, path),
            allowed(allow),
            "openapi.json's operations on {path} are not the methods the router takes"
        );
        // A path parameter (`{audit_id}`) gets any value: the route still matches.
        let concrete = with_params(path);
        let other = ["DELETE", "PUT", "PATCH"]
            .into_iter()
            .find(|m| !allowed(allow).contains(*m))
            .expect("a method the route does not take");
        let r = http(d.addr, other, &concrete, None);
        assert_eq!(r.status, 405, "{other} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{other} {path}");
        for method in allowed(allow) {
            let body = r#"{"kind":"tool.echo","params":{"message":"hi"}}"#;
            let body = (method == "POST").then_some(("application/json", body.as_bytes()));
            let r = http(d.addr, &method, &concrete, body);
            assert_ne!(r.status, 405, "{method} {path}");
            // A handler's own 404 (no such pending call) is fine; the fallback's is not.
            if r.status == 404 {
                let err = r.json()["error"].as_str().unwrap_or_default().to_string();
                assert!(!err.starts_with("no route for"), "{method} {path}: {err}");
            }
        }
    }
    for &path in NOT_YET_SERVED {
        assert!(
            !served.contains(path),
            "{path} is served now: take it out of NOT_YET_SERVED here and out of the excluded \
             operations in tests/schemathesis.toml"
        );
        assert_eq!(http(d.addr, "GET", path, None).status, 404, "{path}");
    }
    // Nothing is documented that is neither served nor on its way.
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = served.iter().chain(NOT_YET_SERVED).copied().collect();
    assert_eq!(documented, expected);

    // Operation ids name operations in generated clients and in the schemathesis exclusions.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(*m) {
                let id = op["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_string()), "{id} twice ({m} {path})");
            }
        }
    }

    // The 404 names every route.
    let r = http(d.addr, "GET", "/nope", None);
    assert_eq!(r.status, 404);
    let msg = r.json()["error"].as_str().expect("error").to_string();
    for (path, _) in ROUTES {
        assert!(msg.contains(path), "{msg}");
    }
}

/// Writes the served document to `dir`, for the tools that read files.
fn document_file(d: &Daemon, dir: &Path) -> PathBuf {
    let (r, _) = fetch_document(d);
    let file = dir.join("openapi.json");
    std::fs::write(&file, &r.body).expect("write openapi.json");
    file
}

#[test]
fn the_document_passes_openapi_spec_validator() {
    let test = "the_document_passes_openapi_spec_validator";
    let Some(py) = venv_with("openapi_spec_validator", "openapi-spec-validator", test) else {
        return;
    };
    let d = Daemon::start(&["--demo"]);
    let tmp = tempfile::tempdir().unwrap();
    let file = document_file(&d, tmp.path());
    let validate = |file: &Path| {
        let mut cmd = Command::new(&py);
        cmd.args(["-m", "openapi_spec_validator", "--schema", "3.1"])
            .arg(file);
        run(cmd, Duration::from_secs(60))
    };
    let o = validate(&file);
    assert_eq!(o.code, 0, "{}", o.all());

    // The validator does reject a broken document (a response without its description).
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    doc["paths"]["/health"]["get"]["responses"]["200"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let o = validate(&file);
    assert_ne!(o.code, 0, "{}", o.all());
}

/// `schemathesis run FILE` against `d`, with tests/schemathesis.toml and `extra` flags, from
/// `dir` (where it leaves its files).
fn schemathesis(py: &Path, d: &Daemon, file: &Path, dir: &Path, extra: &[&str]) -> Out {
    let mut cmd = Command::new(py);
    cmd.args(["-m", "schemathesis.cli", "--config-file"])
        .arg(repo().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(file)
        .args(["--url", &d.url(), "--no-color", "--workers", "1"])
        .args(extra)
        .current_dir(dir)
        .env("NO_COLOR", "1");
    run(cmd, FUZZ_LIMIT)
}

/// The number after `label` on a line of schemathesis's summary (`Tested: 5`,
/// `365 generated`).
fn summary_number(out: &str, label: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix(label) {
            return rest.trim().parse().ok();
        }
        let (n, rest) = l.split_once(' ')?;
        rest.starts_with(label).then(|| n.parse().ok())?
    })
}

#[test]
fn schemathesis_finds_every_answer_documented() {
    let test = "schemathesis_finds_every_answer_documented";
    let Some(py) = venv_with("schemathesis", "schemathesis", test) else {
        return;
    };
    // An empty allowlist: every generated tool.http_get is refused before any lookup, so the
    // fuzzer reaches nothing beyond this daemon.
    let d = Daemon::start(&["--demo", "--allowed-domains", ""]);
    let tmp = tempfile::tempdir().unwrap();
    let file = document_file(&d, tmp.path());

    let t0 = std::time::Instant::now();
    let o = schemathesis(&py, &d, &file, tmp.path(), &[]);
    let out = o.all();
    assert_eq!(
        o.code, 0,
        "schemathesis found answers openapi.json does not describe:\n{out}"
    );
    eprintln!(
        "schemathesis: {} cases in {:.1} s",
        summary_number(&out, "generated").unwrap_or(0),
        t0.elapsed().as_secs_f64()
    );
    // It tested every served operation (GET and HEAD count apart), and a fair number of cases.
    let operations: usize = ROUTES.iter().map(|(_, allow)| allowed(allow).len()).sum();
    assert_eq!(
        summary_number(&out, "Tested:"),
        Some(operations as u64),
        "{out}"
    );
    assert!(
        summary_number(&out, "generated").is_some_and(|n| n >= 200),
        "{out}"
    );

    // And it fails where the document is wrong: without the 403 that denies answer with.
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    doc["paths"]["/v1/tool"]["post"]["responses"]
        .as_object_mut()
        .unwrap()
        .remove("403");
    let broken = tmp.path().join("broken.json");
    std::fs::write(&broken, serde_json::to_vec(&doc).unwrap()).unwrap();
    let o = schemathesis(
        &py,
        &d,
        &broken,
        tmp.path(),
        &["--include-operation-id", "callTool", "--max-examples", "20"],
    );
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(o.all().contains("Undocumented status code"), "{}", o.all());
}
