//! Golden bytes: each body as the log has always stored it, written out literally (not built
//! from the structs under test), then read back to the same struct.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::*;
use crate::types::Decision;

/// Encodes `body` as a record would, checks the exact bytes, the keys against `KEYS`, and that
/// reading it back (with the payload's header keys around it) gives `want`.
fn golden<B: RecordBody>(body: &B, bytes: &str, want: Body) {
    let got = serde_json::to_string(body).unwrap();
    assert_eq!(got, bytes);
    let v: Value = serde_json::from_str(&got).unwrap();
    for k in v.as_object().unwrap().keys() {
        assert!(B::KEYS.contains(&k.as_str()), "{k} is not in KEYS");
    }
    // The stored payload has the reserved keys first; the body parse ignores them.
    let mut payload = json!({"seq": 7, "ts": "2026-01-01T00:00:00.000000Z",
        "type": B::TYPE.as_str(), "prev": "sha256:00"});
    for (k, x) in v.as_object().unwrap() {
        payload[k] = x.clone();
    }
    assert_eq!(Body::parse(B::TYPE, &payload).unwrap(), want);
}

#[test]
fn decision_records() {
    let params: Map<String, Value> =
        serde_json::from_str(r#"{"z":[1,{"b":null,"a":"é\"\n"}],"a":1.5}"#).unwrap();
    let allow = DecisionRecord {
        agent: None,
        by: None,
        note: None,
        rules: Cow::Borrowed(&[]),
        shadow: None,
        decision: Decision::Allow,
        kind: Cow::Borrowed("tool.http_get"),
        layer: Layer::Policy,
        params: Some(Cow::Borrowed(&params)),
        patch: None,
        patched: None,
        policy_ref: Cow::Borrowed("embedded:demo"),
        reason: None,
        source: Cow::Borrowed("http"),
    };
    golden(
        &allow,
        r#"{"decision":"allow","kind":"tool.http_get","layer":"policy","params":{"a":1.5,"z":[1,{"a":"é\"\n","b":null}]},"policy_ref":"embedded:demo","source":"http"}"#,
        Body::Decision(DecisionRecord {
            agent: None,
            by: None,
            note: None,
            rules: Cow::Borrowed(&[]),
            shadow: None,
            decision: Decision::Allow,
            kind: Cow::Owned("tool.http_get".into()),
            layer: Layer::Policy,
            params: Some(Cow::Owned(params.clone())),
            patch: None,
            patched: None,
            policy_ref: Cow::Owned("embedded:demo".into()),
            reason: None,
            source: Cow::Owned("http".into()),
        }),
    );
    let runtime_deny = DecisionRecord {
        agent: None,
        by: None,
        note: None,
        rules: Cow::Borrowed(&[]),
        shadow: None,
        decision: Decision::Deny,
        kind: Cow::Borrowed("tool.http_get"),
        layer: Layer::Runtime,
        params: None,
        patch: None,
        patched: None,
        policy_ref: Cow::Borrowed("b@1.0.0"),
        reason: Some(Cow::Borrowed("endpoint x:80 is not in the allowlist")),
        source: Cow::Borrowed("ros2"),
    };
    golden(
        &runtime_deny,
        r#"{"decision":"deny","kind":"tool.http_get","layer":"runtime","policy_ref":"b@1.0.0","reason":"endpoint x:80 is not in the allowlist","source":"ros2"}"#,
        Body::Decision(runtime_deny.clone()),
    );
    // A downgrade: what was asked, the policy's patch, and what ran, under one record.
    let asked: Map<String, Value> = serde_json::from_str(
        r#"{"message":{"angular":{"z":0.0},"linear":{"x":3.0}},"topic":"/cmd_vel"}"#,
    )
    .unwrap();
    let patch: Map<String, Value> = serde_json::from_str(r#"{"linear":{"x":1.0}}"#).unwrap();
    let ran: Map<String, Value> = serde_json::from_str(
        r#"{"message":{"angular":{"z":0.0},"linear":{"x":1.0}},"topic":"/cmd_vel"}"#,
    )
    .unwrap();
    let downgrade = DecisionRecord {
        agent: Some(Cow::Borrowed("bridge:/cmd_vel")),
        by: None,
        note: None,
        shadow: None,
        decision: Decision::Downgrade,
        kind: Cow::Borrowed("tool.ros2.topic.publish"),
        layer: Layer::Policy,
        params: Some(Cow::Owned(asked)),
        patch: Some(Cow::Owned(patch)),
        patched: Some(Cow::Owned(ran)),
        policy_ref: Cow::Borrowed("clamp"),
        reason: None,
        rules: Cow::Borrowed(&[]),
        source: Cow::Borrowed("bridge"),
    };
    golden(
        &downgrade,
        r#"{"agent":"bridge:/cmd_vel","decision":"downgrade","kind":"tool.ros2.topic.publish","layer":"policy","params":{"message":{"angular":{"z":0.0},"linear":{"x":3.0}},"topic":"/cmd_vel"},"patch":{"linear":{"x":1.0}},"patched":{"message":{"angular":{"z":0.0},"linear":{"x":1.0}},"topic":"/cmd_vel"},"policy_ref":"clamp","source":"bridge"}"#,
        Body::Decision(downgrade.clone()),
    );
}

#[test]
fn error_records() {
    for (code, name) in [
        (ErrorCode::BadParams, "bad_params"),
        (ErrorCode::Upstream, "upstream"),
    ] {
        let r = ErrorRecord {
            code,
            error: Cow::Borrowed("tool.echo: params.message is required"),
            kind: Cow::Borrowed("tool.echo"),
            source: Cow::Borrowed("http"),
        };
        golden(
            &r,
            &format!(
                r#"{{"code":"{name}","error":"tool.echo: params.message is required","kind":"tool.echo","source":"http"}}"#
            ),
            Body::Error(r.clone()),
        );
    }
}

#[test]
fn runtime_records() {
    let domains = vec![
        "api.anthropic.com".to_string(),
        "127.0.0.1:8080".to_string(),
    ];
    let started = RuntimeStarted {
        auth: None,
        shadow: None,
        allowed_domains: Cow::Borrowed(&domains),
        event: Started,
        listen: Some(Cow::Borrowed("127.0.0.1:7777")),
        policy_ref: Cow::Borrowed("embedded:demo"),
        version: Cow::Borrowed("0.1.0"),
    };
    golden(
        &started,
        r#"{"allowed_domains":["api.anthropic.com","127.0.0.1:8080"],"event":"started","listen":"127.0.0.1:7777","policy_ref":"embedded:demo","version":"0.1.0"}"#,
        Body::RuntimeStarted(RuntimeStarted {
            auth: None,
            shadow: None,
            allowed_domains: Cow::Owned(domains.clone()),
            event: Started,
            listen: Some(Cow::Borrowed("127.0.0.1:7777")),
            policy_ref: Cow::Borrowed("embedded:demo"),
            version: Cow::Borrowed("0.1.0"),
        }),
    );
    golden(
        &RuntimeStopped::default(),
        r#"{"event":"stopped"}"#,
        Body::RuntimeStopped(RuntimeStopped::default()),
    );
    let recovered = WalRecovered {
        event: Recovered,
        offset: 4096,
        saved_as: Some(Cow::Borrowed("00000000000000000001.wal.cut-4096")),
        segment: Cow::Borrowed("00000000000000000001.wal"),
        trimmed_bytes: 77,
        whole_frames: 1,
    };
    golden(
        &recovered,
        r#"{"event":"wal.recovered","offset":4096,"saved_as":"00000000000000000001.wal.cut-4096","segment":"00000000000000000001.wal","trimmed_bytes":77,"whole_frames":1}"#,
        Body::WalRecovered(recovered.clone()),
    );
    let unsaved = WalRecovered {
        saved_as: None,
        ..recovered.clone()
    };
    golden(
        &unsaved,
        r#"{"event":"wal.recovered","offset":4096,"segment":"00000000000000000001.wal","trimmed_bytes":77,"whole_frames":1}"#,
        Body::WalRecovered(unsaved.clone()),
    );
    let repaired = WalRepaired {
        cut: vec![CutBytes {
            bytes: 10,
            offset: 16,
            saved_as: Cow::Borrowed("s.cut-16"),
            segment: Cow::Borrowed("s"),
        }],
        event: Repaired,
        found: Some(Cow::Borrowed("WAL_CRC_MISMATCH at s offset 16")),
        kept_records: 0,
    };
    golden(
        &repaired,
        r#"{"cut":[{"bytes":10,"offset":16,"saved_as":"s.cut-16","segment":"s"}],"event":"wal.repaired","found":"WAL_CRC_MISMATCH at s offset 16","kept_records":0}"#,
        Body::WalRepaired(repaired.clone()),
    );
}

#[test]
fn policy_records() {
    let loaded = PolicyLoaded {
        event: Loaded,
        hash: Cow::Borrowed("sha256:ab"),
        name: Cow::Borrowed("site"),
        policy_ref: Cow::Borrowed("site@1.2.0"),
        source: Cow::Borrowed("b.tar.gz"),
        version: Cow::Borrowed("1.2.0"),
    };
    golden(
        &loaded,
        r#"{"event":"policy.loaded","hash":"sha256:ab","name":"site","policy_ref":"site@1.2.0","source":"b.tar.gz","version":"1.2.0"}"#,
        Body::PolicyLoaded(loaded.clone()),
    );
    let activated = PolicyActivated {
        event: Activated,
        hash: Cow::Borrowed("sha256:ab"),
        name: Cow::Borrowed("site"),
        policy_ref: Cow::Borrowed("site@1.2.0"),
        source: Cow::Borrowed("oci://127.0.0.1:5000/site:v1"),
        version: Cow::Borrowed("1.2.0"),
    };
    golden(
        &activated,
        r#"{"event":"policy.activated","hash":"sha256:ab","name":"site","policy_ref":"site@1.2.0","source":"oci://127.0.0.1:5000/site:v1","version":"1.2.0"}"#,
        Body::PolicyActivated(activated.clone()),
    );
    let rejected_load = PolicyRejected {
        event: Rejected,
        policy_ref: None,
        reason: Cow::Borrowed("bundle hash mismatch"),
        slot: None,
        source: Some(Cow::Borrowed("b.tar.gz")),
    };
    golden(
        &rejected_load,
        r#"{"event":"policy.rejected","reason":"bundle hash mismatch","source":"b.tar.gz"}"#,
        Body::PolicyRejected(rejected_load.clone()),
    );
    let rejected_reload = PolicyRejected {
        event: Rejected,
        policy_ref: Some(Cow::Borrowed("embedded:demo")),
        reason: Cow::Borrowed("p.rego:3: rego_recursion_error"),
        slot: Some(Cow::Borrowed("current")),
        source: None,
    };
    golden(
        &rejected_reload,
        r#"{"event":"policy.rejected","policy_ref":"embedded:demo","reason":"p.rego:3: rego_recursion_error","slot":"current"}"#,
        Body::PolicyRejected(rejected_reload.clone()),
    );
    let rolled_back = PolicyRolledBack {
        event: RolledBack,
        hash: Cow::Borrowed("sha256:cd"),
        policy_ref: Cow::Borrowed("site@1.1.0"),
        version: Cow::Borrowed("1.1.0"),
    };
    golden(
        &rolled_back,
        r#"{"event":"policy.rolled_back","hash":"sha256:cd","policy_ref":"site@1.1.0","version":"1.1.0"}"#,
        Body::PolicyRolledBack(rolled_back.clone()),
    );
}

#[test]
fn marker_and_lifecycle_records() {
    let marker = MarkerRecord {
        label: Cow::Borrowed("ros2-launch-allowed"),
        line: Cow::Borrowed("PASS ros2-launch-allowed context=native"),
        status: Cow::Borrowed("PASS"),
    };
    golden(
        &marker,
        r#"{"label":"ros2-launch-allowed","line":"PASS ros2-launch-allowed context=native","status":"PASS"}"#,
        Body::Marker(marker.clone()),
    );
    let died = LifecycleRecord {
        cmd: Some(Cow::Borrowed("/opt/ros/jazzy/lib/demo/talker --ros-args")),
        event: ProcessEvent::Died,
        exit_code: Some(-2),
        name: Some(Cow::Borrowed("talker-1")),
        pid: 4242,
    };
    golden(
        &died,
        r#"{"cmd":"/opt/ros/jazzy/lib/demo/talker --ros-args","event":"process.died","exit_code":-2,"name":"talker-1","pid":4242}"#,
        Body::Lifecycle(died.clone()),
    );
    let started = LifecycleRecord {
        cmd: None,
        event: ProcessEvent::Started,
        exit_code: None,
        name: None,
        pid: 7,
    };
    golden(
        &started,
        r#"{"event":"process.started","pid":7}"#,
        Body::Lifecycle(started.clone()),
    );
}

#[test]
fn every_type_has_its_wire_name_once() {
    let names: Vec<_> = RecordType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        names,
        [
            "decision",
            "runtime",
            "marker",
            "lifecycle",
            "policy",
            "error",
            "approval",
            "checkpoint"
        ]
    );
    for t in RecordType::ALL {
        assert_eq!(RecordType::parse(t.as_str()), Some(t));
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
    assert_eq!(RecordType::parse("Decision"), None);
}

#[test]
fn a_body_that_does_not_fit_its_type_is_an_error_not_a_guess() {
    let e = Body::parse(RecordType::Runtime, &json!({"event": "exploded"})).unwrap_err();
    assert!(e.to_string().contains("\"exploded\""), "{e}");
    let e = Body::parse(RecordType::Marker, &json!({"label": 3})).unwrap_err();
    assert!(e.to_string().starts_with("a marker record"), "{e}");
    let e = Body::parse(RecordType::Policy, &json!({"event": "policy.loaded"})).unwrap_err();
    assert!(e.to_string().contains("policy.loaded"), "{e}");
}

#[test]
fn bridge_records() {
    let started = BridgeStarted {
        agent_domain: 99,
        event: BridgeStartedEvent,
        robot_domain: 42,
        topics: vec![
            BridgeTopic {
                audit: Some(Cow::Borrowed("batched")),
                batch_window_ms: Some(10),
                direction: Cow::Borrowed("agent_to_robot"),
                max_silence_ms: None,
                name: Cow::Borrowed("/cmd_vel"),
                on_deny: None,
                safe_message: None,
                type_name: Cow::Borrowed("geometry_msgs/msg/Twist"),
            },
            BridgeTopic {
                audit: None,
                batch_window_ms: None,
                direction: Cow::Borrowed("robot_to_agent"),
                max_silence_ms: None,
                name: Cow::Borrowed("/odom"),
                on_deny: None,
                safe_message: None,
                type_name: Cow::Borrowed("nav_msgs/msg/Odometry"),
            },
        ],
    };
    golden(
        &started,
        r#"{"agent_domain":99,"event":"bridge.started","robot_domain":42,"topics":[{"audit":"batched","batch_window_ms":10,"direction":"agent_to_robot","name":"/cmd_vel","type":"geometry_msgs/msg/Twist"},{"direction":"robot_to_agent","name":"/odom","type":"nav_msgs/msg/Odometry"}]}"#,
        Body::BridgeStarted(started.clone()),
    );
    let stopped = BridgeStopped {
        event: BridgeStoppedEvent,
        topics: vec![BridgeCounts {
            denied: 2,
            failed: 0,
            malformed: 1,
            name: Cow::Borrowed("/cmd_vel"),
            received: 10,
            relayed: 7,
            safe_published: None,
        }],
    };
    golden(
        &stopped,
        r#"{"event":"bridge.stopped","topics":[{"denied":2,"failed":0,"malformed":1,"name":"/cmd_vel","received":10,"relayed":7}]}"#,
        Body::BridgeStopped(stopped.clone()),
    );
    // Deny means stop: the topic's safe message and its count, and what it published.
    let zero: Map<String, Value> = serde_json::from_str(r#"{"data":false}"#).unwrap();
    let stopping = BridgeStarted {
        agent_domain: 99,
        event: BridgeStartedEvent,
        robot_domain: 42,
        topics: vec![BridgeTopic {
            audit: Some(Cow::Borrowed("strict")),
            batch_window_ms: None,
            direction: Cow::Borrowed("agent_to_robot"),
            max_silence_ms: Some(300),
            name: Cow::Borrowed("/run"),
            on_deny: Some(Cow::Borrowed("publish")),
            safe_message: Some(Cow::Borrowed(&zero)),
            type_name: Cow::Borrowed("std_msgs/msg/Bool"),
        }],
    };
    let owned = BridgeStarted {
        topics: vec![BridgeTopic {
            audit: Some(Cow::Borrowed("strict")),
            batch_window_ms: None,
            direction: Cow::Borrowed("agent_to_robot"),
            max_silence_ms: Some(300),
            name: Cow::Borrowed("/run"),
            on_deny: Some(Cow::Borrowed("publish")),
            safe_message: Some(Cow::Owned(zero.clone())),
            type_name: Cow::Borrowed("std_msgs/msg/Bool"),
        }],
        ..stopping.clone()
    };
    golden(
        &stopping,
        r#"{"agent_domain":99,"event":"bridge.started","robot_domain":42,"topics":[{"audit":"strict","direction":"agent_to_robot","max_silence_ms":300,"name":"/run","on_deny":"publish","safe_message":{"data":false},"type":"std_msgs/msg/Bool"}]}"#,
        Body::BridgeStarted(owned),
    );
    let counted = BridgeStopped {
        event: BridgeStoppedEvent,
        topics: vec![BridgeCounts {
            denied: 2,
            failed: 0,
            malformed: 0,
            name: Cow::Borrowed("/run"),
            received: 3,
            relayed: 1,
            safe_published: Some(3),
        }],
    };
    golden(
        &counted,
        r#"{"event":"bridge.stopped","topics":[{"denied":2,"failed":0,"malformed":0,"name":"/run","received":3,"relayed":1,"safe_published":3}]}"#,
        Body::BridgeStopped(counted.clone()),
    );
    for (body, bytes) in [
        (
            BridgeSafePublished {
                event: BridgeSafePublishedEvent,
                max_silence_ms: None,
                reason: Cow::Borrowed("deny"),
                topic: Cow::Borrowed("/cmd_vel"),
            },
            r#"{"event":"bridge.safe_published","reason":"deny","topic":"/cmd_vel"}"#,
        ),
        (
            BridgeSafePublished {
                event: BridgeSafePublishedEvent,
                max_silence_ms: Some(300),
                reason: Cow::Borrowed("silence"),
                topic: Cow::Borrowed("/cmd_vel"),
            },
            r#"{"event":"bridge.safe_published","max_silence_ms":300,"reason":"silence","topic":"/cmd_vel"}"#,
        ),
    ] {
        golden(&body, bytes, Body::BridgeSafePublished(body.clone()));
    }
    // A message that does not decode: an input-layer deny carrying what is known.
    let params: Map<String, Value> =
        serde_json::from_str(r#"{"topic":"/cmd_vel","type":"geometry_msgs/msg/Twist","bytes":3}"#)
            .unwrap();
    let malformed = DecisionRecord {
        agent: None,
        by: None,
        note: None,
        rules: Cow::Borrowed(&[]),
        shadow: None,
        decision: Decision::Deny,
        kind: Cow::Borrowed("tool.ros2.topic.publish"),
        layer: Layer::Input,
        params: Some(Cow::Borrowed(&params)),
        patch: None,
        patched: None,
        policy_ref: Cow::Borrowed("embedded:ros2-bridge-demo"),
        reason: Some(Cow::Borrowed("malformed message: truncated")),
        source: Cow::Borrowed("bridge"),
    };
    golden(
        &malformed,
        r#"{"decision":"deny","kind":"tool.ros2.topic.publish","layer":"input","params":{"bytes":3,"topic":"/cmd_vel","type":"geometry_msgs/msg/Twist"},"policy_ref":"embedded:ros2-bridge-demo","reason":"malformed message: truncated","source":"bridge"}"#,
        Body::Decision(DecisionRecord {
            agent: None,
            by: None,
            note: None,
            rules: Cow::Borrowed(&[]),
            shadow: None,
            decision: Decision::Deny,
            kind: Cow::Owned("tool.ros2.topic.publish".into()),
            layer: Layer::Input,
            params: Some(Cow::Owned(params.clone())),
            patch: None,
            patched: None,
            policy_ref: Cow::Owned("embedded:ros2-bridge-demo".into()),
            reason: Some(Cow::Owned("malformed message: truncated".into())),
            source: Cow::Owned("bridge".into()),
        }),
    );
}

#[test]
fn identity_shadow_and_approval_records() {
    let params: Map<String, Value> = serde_json::from_str(r#"{"message":"hi"}"#).unwrap();
    let shadowed = DecisionRecord {
        agent: Some(Cow::Borrowed("planner")),
        by: None,
        decision: Decision::Deny,
        kind: Cow::Borrowed("tool.echo"),
        layer: Layer::Policy,
        note: None,
        params: Some(Cow::Owned(params.clone())),
        patch: None,
        patched: None,
        policy_ref: Cow::Borrowed("embedded:demo"),
        reason: Some(Cow::Borrowed("no")),
        rules: Cow::Borrowed(&[]),
        shadow: Some(true),
        source: Cow::Borrowed("http"),
    };
    golden(
        &shadowed,
        r#"{"agent":"planner","decision":"deny","kind":"tool.echo","layer":"policy","params":{"message":"hi"},"policy_ref":"embedded:demo","reason":"no","shadow":true,"source":"http"}"#,
        Body::Decision(shadowed.clone()),
    );
    let approved = DecisionRecord {
        agent: Some(Cow::Borrowed("planner")),
        by: Some(Cow::Borrowed("ops")),
        decision: Decision::Allow,
        kind: Cow::Borrowed("tool.echo"),
        layer: Layer::Approval,
        note: Some(Cow::Borrowed("looks fine")),
        params: None,
        patch: None,
        patched: None,
        policy_ref: Cow::Borrowed("embedded:demo"),
        reason: None,
        rules: Cow::Borrowed(&[]),
        shadow: None,
        source: Cow::Borrowed("http"),
    };
    golden(
        &approved,
        r#"{"agent":"planner","by":"ops","decision":"allow","kind":"tool.echo","layer":"approval","note":"looks fine","policy_ref":"embedded:demo","source":"http"}"#,
        Body::Decision(approved.clone()),
    );
    let limited = DecisionRecord {
        layer: Layer::Limit,
        decision: Decision::Deny,
        reason: Some(Cow::Borrowed("rate limited")),
        agent: Some(Cow::Borrowed("anonymous")),
        by: None,
        note: None,
        rules: Cow::Borrowed(&[]),
        shadow: None,
        ..approved.clone()
    };
    golden(
        &limited,
        r#"{"agent":"anonymous","decision":"deny","kind":"tool.echo","layer":"limit","policy_ref":"embedded:demo","reason":"rate limited","source":"http"}"#,
        Body::Decision(limited.clone()),
    );
    let requested = ApprovalRequested {
        agent: Cow::Borrowed("planner"),
        event: ApprovalRequestedEvent,
        kind: Cow::Borrowed("tool.echo"),
        params: Cow::Owned(params.clone()),
        policy_ref: Cow::Borrowed("embedded:demo"),
        reason: Some(Cow::Borrowed("echo needs a human")),
        source: Cow::Borrowed("ros2"),
        timeout_ms: 60000,
    };
    golden(
        &requested,
        r#"{"agent":"planner","event":"approval.requested","kind":"tool.echo","params":{"message":"hi"},"policy_ref":"embedded:demo","reason":"echo needs a human","source":"ros2","timeout_ms":60000}"#,
        Body::ApprovalRequested(requested.clone()),
    );
    let domains: Vec<String> = vec![];
    let started = RuntimeStarted {
        allowed_domains: Cow::Owned(domains.clone()),
        auth: Some(Cow::Borrowed("required")),
        event: Started,
        listen: None,
        policy_ref: Cow::Borrowed("embedded:demo"),
        shadow: Some(true),
        version: Cow::Borrowed("0.1.0"),
    };
    golden(
        &started,
        r#"{"allowed_domains":[],"auth":"required","event":"started","policy_ref":"embedded:demo","shadow":true,"version":"0.1.0"}"#,
        Body::RuntimeStarted(started.clone()),
    );
}

#[test]
fn checkpoint_records() {
    // A note made by `crate::checkpoint` with the key of seed [1; 32] named robot-7, over the
    // head seq 41 whose hash is 32 bytes of 0xab: the bytes as they are stored.
    let note = "robot-7\n41\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\u{2014} robot-7 su01xRtlglYjtj6UAAlUgdD2/nLX03hCYyJmx6nXx6g8Ba0DtEOMRamsLui52omKVDbcPn/vVtPMkFoqkTe3y0c5sQQ=\n";
    let cp = CheckpointRecord {
        note: Cow::Borrowed(note),
        origin: Cow::Borrowed("robot-7"),
        root: Cow::Borrowed(
            "sha256:abababababababababababababababababababababababababababababababab",
        ),
        size: 41,
    };
    golden(
        &cp,
        r#"{"note":"robot-7\n41\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n— robot-7 su01xRtlglYjtj6UAAlUgdD2/nLX03hCYyJmx6nXx6g8Ba0DtEOMRamsLui52omKVDbcPn/vVtPMkFoqkTe3y0c5sQQ=\n","origin":"robot-7","root":"sha256:abababababababababababababababababababababababababababababababab","size":41}"#,
        Body::Checkpoint(cp.clone()),
    );
    let signer = crate::checkpoint::NoteSigner::from_seed("robot-7", &[1; 32]).unwrap();
    let made = crate::checkpoint::Checkpoint::of_head("robot-7", 41, &cp.root)
        .unwrap()
        .sign(&signer)
        .unwrap();
    assert_eq!(made, cp);
}

#[test]
fn decision_record_with_rules() {
    let rules = vec![
        std::sync::Arc::new(crate::policy::RuleRef {
            package: "autonomy".into(),
            rule: "reason".into(),
            file: "policy.rego".into(),
            line: 14,
            id: Some("SAFETY-3.2".into()),
        }),
        std::sync::Arc::new(crate::policy::RuleRef {
            package: "autonomy".into(),
            rule: "allow".into(),
            file: "ros/extra.rego".into(),
            line: 3,
            id: None,
        }),
    ];
    let deny = DecisionRecord {
        agent: Some(Cow::Borrowed("anonymous")),
        by: None,
        decision: Decision::Deny,
        kind: Cow::Borrowed("tool.shell"),
        layer: Layer::Policy,
        note: None,
        params: None,
        patch: None,
        patched: None,
        policy_ref: Cow::Borrowed("b@1.0.0 sha256:ab"),
        reason: Some(Cow::Borrowed("no")),
        rules: Cow::Borrowed(&rules),
        shadow: None,
        source: Cow::Borrowed("http"),
    };
    golden(
        &deny,
        r#"{"agent":"anonymous","decision":"deny","kind":"tool.shell","layer":"policy","policy_ref":"b@1.0.0 sha256:ab","reason":"no","rules":[{"package":"autonomy","rule":"reason","file":"policy.rego","line":14,"id":"SAFETY-3.2"},{"package":"autonomy","rule":"allow","file":"ros/extra.rego","line":3}],"source":"http"}"#,
        Body::Decision(DecisionRecord {
            agent: Some(Cow::Owned("anonymous".into())),
            by: None,
            decision: Decision::Deny,
            kind: Cow::Owned("tool.shell".into()),
            layer: Layer::Policy,
            note: None,
            params: None,
            patch: None,
            patched: None,
            policy_ref: Cow::Owned("b@1.0.0 sha256:ab".into()),
            reason: Some(Cow::Owned("no".into())),
            rules: Cow::Owned(rules.clone()),
            shadow: None,
            source: Cow::Owned("http".into()),
        }),
    );
}
