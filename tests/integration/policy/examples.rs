//! The example policies of docs/policy.md, each with its cases as data: every directory under
//! `examples/policies/` holds a policy and a `cases.json` (a list of `{name, input: {kind,
//! params}, decision, reason?}`). Each policy is built with `policy build`, served by a daemon
//! (`runtime start --policy BUNDLE`), and every case is sent to `POST /v1/tool`; the policy's
//! decision and reason, as recorded in the WAL, must be the case's exactly, and a denied call
//! must have been answered 403 with that reason. The rules that decided (their METADATA ids, in
//! `rules`) must be the case's, in the record and in the answer alike.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::common::*;

/// One case of a `cases.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case shows, unique within its file.
    name: String,
    /// The call, as a client sends it.
    input: Input,
    /// The policy's decision.
    decision: Decision,
    /// The policy's reason, exactly: required for a deny, absent for an allow.
    reason: Option<String>,
    /// The METADATA ids of the rule definitions that decided, in order.
    rules: Vec<String>,
}

/// The `POST /v1/tool` body of a case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    kind: String,
    #[serde(default)]
    params: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Decision {
    Allow,
    Deny,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// The example directories, sorted.
fn examples() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/policies"))
        .expect("examples/policies")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The cases of one example, checked for form: at least one, names unique, a reason exactly
/// where the decision is deny.
fn cases(dir: &std::path::Path) -> Vec<Case> {
    let f = dir.join("cases.json");
    let bytes =
        std::fs::read(&f).unwrap_or_else(|e| panic!("every example needs {}: {e}", f.display()));
    let cases: Vec<Case> =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    assert!(!cases.is_empty(), "{}: no cases", f.display());
    for (i, c) in cases.iter().enumerate() {
        assert!(
            !cases[..i].iter().any(|o| o.name == c.name),
            "{}: case {:?} twice",
            f.display(),
            c.name
        );
        assert_eq!(
            c.reason.is_some(),
            c.decision == Decision::Deny,
            "{}: case {:?}: a deny has a reason, an allow has none",
            f.display(),
            c.name
        );
    }
    cases
}

#[test]
fn every_example_policy_decides_its_cases() {
    let t = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut total = 0;
    let dirs = examples();
    assert!(!dirs.is_empty(), "no example policies");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let cases = cases(&dir);
        let bundle = t.path().join(format!("{name}.tar.gz"));
        build_bundle(&dir, &bundle, "1.0.0", &name);
        // With the runtime's http_get allowlist at `localhost`, a fetch the policy allows is
        // refused by the runtime layer after it: no case reaches the network.
        let mut d = Daemon::start(&["--policy", p(&bundle), "--allowed-domains", "localhost"]);
        let answers: Vec<(u16, Value)> = cases
            .iter()
            .map(|c| {
                let r =
                    d.tool(&json!({"kind": c.input.kind, "params": c.input.params}).to_string());
                (r.status, r.json())
            })
            .collect();
        assert!(d.stop().success());
        let recs = wal_records(&d.wal_dir);
        for (c, (status, answer)) in cases.iter().zip(&answers) {
            total += 1;
            let id = answer["audit_id"].as_str().unwrap_or_default();
            let Some(rec) = recs
                .iter()
                .find(|r| r["audit_id"] == id && r["type"] == "decision" && r["layer"] == "policy")
            else {
                failures.push(format!(
                    "{name}: {:?}: no policy decision recorded; answer {status} {answer}",
                    c.name
                ));
                continue;
            };
            let got = (rec["decision"].as_str(), rec["reason"].as_str());
            let want = (Some(c.decision.as_str()), c.reason.as_deref());
            if got != want {
                failures.push(format!(
                    "{name}: {:?}: want {want:?}, the policy said {got:?}",
                    c.name
                ));
            } else if c.decision == Decision::Deny
                && (*status != 403 || answer["reason"].as_str() != c.reason.as_deref())
            {
                failures.push(format!(
                    "{name}: {:?}: denied, but answered {status} {answer}",
                    c.name
                ));
            } else if rule_ids(&rec["rules"]) != c.rules
                // An allowed fetch the runtime layer then refused is answered by that layer,
                // which names no rule.
                || rule_ids(&answer["rules"])
                    != if *status == 403 && c.decision == Decision::Allow {
                        Vec::new()
                    } else {
                        c.rules.clone()
                    }
            {
                failures.push(format!(
                    "{name}: {:?}: want rules {:?}, recorded {}, answered {}",
                    c.name, c.rules, rec["rules"], answer["rules"]
                ));
            } else if let Some(bad) = rec["rules"].as_array().into_iter().flatten().find(|r| {
                r["package"] != "autonomy" || r["file"] != "policy.rego" || !r["line"].is_u64()
            }) {
                failures.push(format!(
                    "{name}: {:?}: rule {bad} is not where it should be",
                    c.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} example cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The ids of a `rules` array (`-` for a rule without one).
fn rule_ids(rules: &Value) -> Vec<String> {
    rules
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["id"].as_str().unwrap_or("-").to_string())
        .collect()
}
