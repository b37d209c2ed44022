//! Evaluation latency of the embedded policies, for comparing changes on the hot path:
//! `cargo test --release --lib policy::eval::timing -- --ignored --nocapture`.

use serde_json::{Map, Value, json};

use super::{PolicyEvaluator, PolicyInput, RegoPolicy, bridge_demo_policy, demo_policy};
use crate::types::{Agent, Decision, Source, ToolKind};

/// p50 and p99 in µs of `n` evaluations of one input.
fn percentiles(p: &RegoPolicy, kind: &str, params: Value, want: Decision, n: usize) -> (f64, f64) {
    let kind = ToolKind::parse(kind).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let params: Map<String, Value> = params.as_object().cloned().unwrap_or_default();
    let domains = vec!["api.anthropic.com".to_string()];
    let agent = Agent::anonymous();
    let input = PolicyInput {
        kind: &kind,
        params: &params,
        source: Source::new("http"),
        agent: &agent,
        allowed_domains: &domains,
        extra: None,
    };
    assert_eq!(p.evaluate(&input).decision, want);
    for _ in 0..n / 10 {
        std::hint::black_box(p.evaluate(&input));
    }
    let mut lat: Vec<u64> = (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            std::hint::black_box(p.evaluate(std::hint::black_box(&input)));
            t.elapsed().as_nanos() as u64
        })
        .collect();
    lat.sort_unstable();
    let at = |q: f64| lat[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

#[test]
#[ignore = "a measurement, not a check: run in release with --ignored --nocapture"]
fn eval_latency() {
    let plain = |name: &str, src: &str| {
        RegoPolicy::compile_without_provenance(
            crate::types::PolicyRef::new(name),
            &[(name.to_string(), src.to_string())],
        )
        .unwrap()
    };
    let demo = demo_policy().unwrap();
    let bridge = bridge_demo_policy().unwrap();
    let demo_plain = plain("demo.rego", super::DEMO_REGO);
    let bridge_plain = plain("bridge_demo.rego", super::BRIDGE_DEMO_REGO);
    let cmd =
        json!({"topic": "/cmd_vel", "message": {"linear": {"x": 0.5}, "angular": {"z": 0.1}}});
    let fast =
        json!({"topic": "/cmd_vel", "message": {"linear": {"x": 5.0}, "angular": {"z": 0.1}}});
    let n = 200_000;
    let cases = [
        (
            "demo allow echo",
            &demo,
            "tool.echo",
            json!({"message": "hi"}),
            Decision::Allow,
        ),
        (
            "demo allow launch",
            &demo,
            "tool.ros2.launch",
            json!({}),
            Decision::Allow,
        ),
        (
            "demo deny shell",
            &demo,
            "tool.shell",
            json!({}),
            Decision::Deny,
        ),
        (
            "demo deny unknown",
            &demo,
            "tool.x",
            json!({}),
            Decision::Deny,
        ),
        (
            "bridge allow cmd_vel",
            &bridge,
            "tool.ros2.topic.publish",
            cmd,
            Decision::Allow,
        ),
        (
            "bridge deny too fast",
            &bridge,
            "tool.ros2.topic.publish",
            fast,
            Decision::Deny,
        ),
    ];
    // AUTONOMY_TIMING_ONLY=<part of a row's name> measures only those rows (for a profiler).
    let only = std::env::var("AUTONOMY_TIMING_ONLY").unwrap_or_default();
    for (name, p, kind, params, want) in cases {
        if !name.contains(only.as_str()) {
            continue;
        }
        let without = if std::ptr::eq(p, &demo) {
            &demo_plain
        } else {
            &bridge_plain
        };
        // Alternate, so both see the same machine load.
        let (a50, a99) = percentiles(without, kind, params.clone(), want, n);
        let (b50, b99) = percentiles(p, kind, params.clone(), want, n);
        let (c50, c99) = percentiles(without, kind, params.clone(), want, n);
        let (d50, d99) = percentiles(p, kind, params, want, n);
        println!(
            "{name:22} without rules p50 {:6.2} p99 {:6.2} µs | with rules p50 {:6.2} p99 {:6.2} µs",
            a50.min(c50),
            a99.min(c99),
            b50.min(d50),
            b99.min(d99)
        );
    }
}

/// The example policy in `examples/policies/<dir>` (its `.rego` files, and its `data.json`
/// files each mounted at its directory), compiled as the node loads it.
fn example(dir: &str, files: &[&str], data: Value) -> RegoPolicy {
    let root = format!("{}/examples/policies/{dir}", env!("CARGO_MANIFEST_DIR"));
    let modules: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let src = std::fs::read_to_string(format!("{root}/{f}"))
                .unwrap_or_else(|e| panic!("{root}/{f}: {e}"));
            (f.to_string(), src)
        })
        .collect();
    RegoPolicy::compile(crate::types::PolicyRef::new(dir), &modules, Some(data))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
}

#[test]
#[ignore = "a measurement, not a check: run in release with --ignored --nocapture"]
fn example_eval_latency() {
    let args = example("argument-checks", &["policy.rego"], json!({}));
    let http = example(
        "http-allowlist",
        &["policy.rego"],
        json!({"http": {"hosts": ["api.anthropic.com", "ifconfig.me"]}}),
    );
    let launch = example(
        "ros-launch-allowlist",
        &["policy.rego", "ros/launch.rego"],
        json!({"ros": {"packages": ["demo_nodes_cpp", "turtlesim"]}}),
    );
    let n = 200_000;
    let cases = [
        (
            "args allow",
            &args,
            "tool.echo",
            json!({"message": "hello"}),
            Decision::Allow,
        ),
        (
            "args deny long",
            &args,
            "tool.echo",
            json!({"message": "x".repeat(65)}),
            Decision::Deny,
        ),
        (
            "http allow",
            &http,
            "tool.http_get",
            json!({"endpoint": "https://api.anthropic.com/v1/messages"}),
            Decision::Allow,
        ),
        (
            "http deny host",
            &http,
            "tool.http_get",
            json!({"endpoint": "https://example.com/"}),
            Decision::Deny,
        ),
        (
            "launch allow",
            &launch,
            "tool.ros2.launch",
            json!({"package": "turtlesim", "launch_file": "multisim.launch.py", "arguments": []}),
            Decision::Allow,
        ),
        (
            "launch deny package",
            &launch,
            "tool.ros2.launch",
            json!({"package": "evil_pkg", "launch_file": "x.launch.py"}),
            Decision::Deny,
        ),
    ];
    let only = std::env::var("AUTONOMY_TIMING_ONLY").unwrap_or_default();
    for (name, p, kind, params, want) in cases {
        if !name.contains(only.as_str()) {
            continue;
        }
        let (a50, a99) = percentiles(p, kind, params.clone(), want, n);
        let (b50, b99) = percentiles(p, kind, params, want, n);
        println!(
            "{name:22} p50 {:6.2} p99 {:6.2} µs",
            a50.min(b50),
            a99.min(b99)
        );
    }
}
