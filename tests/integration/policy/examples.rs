//! The example policies of docs/policy.md (`examples/policies/`).

use std::path::{Path, PathBuf};

use super::*;
use crate::common::*;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

fn example_daemon(t: &Path, name: &str, extra: &[&str]) -> Daemon {
    let store = t.join(format!("store-{name}"));
    let out = t.join(format!("{name}.tar.gz"));
    build_bundle(&examples_dir().join(name), &out, "1.0.0", name);
    let o = load(&store, &out, None);
    assert_eq!(o.code, 0, "{}", o.all());
    store_daemon(&store, extra)
}

#[test]
fn example_http_allowlist() {
    let t = tempfile::tempdir().unwrap();
    let d = example_daemon(
        t.path(),
        "http-allowlist",
        &["--allowed-domains", "localhost"],
    );
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.http_get","params":{"endpoint":"https://evil.example.com/x"}}"#,
    );
    assert_eq!(st, 403);
    assert_eq!(
        v["reason"],
        "http_get to \"evil.example.com\" is not in the policy's allowlist"
    );
    // Allowed by the policy, then denied by the runtime allowlist (localhost only): no fetch.
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.http_get","params":{"endpoint":"https://api.anthropic.com/v1"}}"#,
    );
    assert_eq!(st, 403, "{v}");
    assert!(
        !v["reason"].as_str().unwrap().contains("policy's allowlist"),
        "{v}"
    );
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.http_get","params":{"endpoint":"http://api.anthropic.com/v1"}}"#,
    );
    assert_eq!(st, 403);
    assert!(
        v["reason"].as_str().unwrap().contains("policy's allowlist"),
        "{v}"
    );
    let (st, _) = call(&d, r#"{"kind":"tool.echo","params":{"message":"x"}}"#);
    assert_eq!(st, 200);
    let (st, v) = call(&d, r#"{"kind":"tool.shell","params":{}}"#);
    assert_eq!(st, 403);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("not allowed by this policy")
    );
}

#[test]
fn example_argument_checks() {
    let t = tempfile::tempdir().unwrap();
    let d = example_daemon(t.path(), "argument-checks", &[]);
    let (st, v) = call(&d, r#"{"kind":"tool.echo","params":{"message":"hello"}}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["output"], "hello");
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.echo","params":{"message":"my Password is x"}}"#,
    );
    assert_eq!(st, 403);
    assert_eq!(v["reason"], "params.message looks like it carries a secret");
    let long = "a".repeat(100);
    let (st, v) = call(
        &d,
        &format!(r#"{{"kind":"tool.echo","params":{{"message":"{long}"}}}}"#),
    );
    assert_eq!(st, 403);
    assert!(
        v["reason"].as_str().unwrap().contains("longer than 64"),
        "{v}"
    );
    let (st, v) = call(&d, r#"{"kind":"tool.echo","params":{"message":7}}"#);
    assert_eq!(st, 403);
    assert_eq!(v["reason"], "tool.echo needs params.message as a string");
    let (st, v) = call(&d, r#"{"kind":"tool.shell","params":{"command":"id"}}"#);
    assert_eq!(st, 403);
    assert_eq!(v["reason"], "tool.shell is always blocked by policy");
}

#[test]
fn example_ros_launch_allowlist() {
    let t = tempfile::tempdir().unwrap();
    let d = example_daemon(t.path(), "ros-launch-allowlist", &[]);
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.ros2.launch","params":{"package":"turtlesim","launch_file":"multisim.launch.py","arguments":[]}}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["decision"], "allow");
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.ros2.launch","params":{"package":"evil_pkg","launch_file":"x.launch.py"}}"#,
    );
    assert_eq!(st, 403);
    assert_eq!(
        v["reason"],
        "ROS package \"evil_pkg\" is not in the launch allowlist"
    );
    let (st, v) = call(
        &d,
        r#"{"kind":"tool.ros2.launch","params":{"package":"turtlesim","launch_file":"run.sh"}}"#,
    );
    assert_eq!(st, 403);
    assert!(v["reason"].as_str().unwrap().contains("run.sh"), "{v}");
}
