//! Policy evaluation: one evaluator decides allow or deny for every tool call (and may offer a
//! patched call instead: [`Verdict::patch`]).
//!
//! Rego policies are compiled and checked here ([`rego`]: entry point, [`deps`]: recursion and
//! nesting depth against the stack budget) and evaluated by the interpreter, or by the VM where
//! it cannot be wrong in the open direction ([`fast`]). [`ActivePolicy`] is the policy in force.

pub mod deps;
pub mod fast;
pub mod provenance;
mod quiet;
pub mod reason;
pub mod rego;
#[cfg(test)]
mod timing;

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{Map, Value};

pub use provenance::RuleRef;
pub use rego::{RegoPolicy, RegoPolicyError};

use crate::types::{Decision, PolicyRef, Source, ToolKind};

/// Rego source of the embedded demo policy.
pub const DEMO_REGO: &str = include_str!("demo.rego");
/// Rego source of the embedded bridge demo policy (`embedded:ros2-bridge-demo`).
pub const BRIDGE_DEMO_REGO: &str = include_str!("bridge_demo.rego");

/// The input document's own keys, which a front end's extra fields never replace.
pub const INPUT_KEYS: [&str; 5] = ["kind", "params", "source", "allowed_domains", "agent"];

/// What the evaluator sees: `{kind, params, source, agent, allowed_domains}`, plus any extra fields a
/// front end adds.
pub struct PolicyInput<'a> {
    /// The tool kind.
    pub kind: &'a ToolKind,
    /// The call's params.
    pub params: &'a Map<String, Value>,
    /// Where the call came from.
    pub source: Source,
    /// Who made it (`anonymous` without a token).
    pub agent: &'a crate::types::Agent,
    /// The runtime's `http_get` allowlist, as configured.
    pub allowed_domains: &'a [String],
    /// More top-level fields from the front end (`input.<key>`: the bridge's `rate`); a key
    /// that is one of [`INPUT_KEYS`] is left out. `None` for HTTP and ROS calls.
    pub extra: Option<&'a Map<String, Value>>,
}

impl PolicyInput<'_> {
    /// The input document as JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::with_capacity(4);
        m.insert("kind".into(), Value::String(self.kind.as_str().into()));
        m.insert("params".into(), Value::Object(self.params.clone()));
        m.insert("source".into(), Value::String(self.source.as_str().into()));
        m.insert("agent".into(), Value::String(self.agent.as_str().into()));
        m.insert(
            "allowed_domains".into(),
            Value::Array(
                self.allowed_domains
                    .iter()
                    .map(|d| Value::String(d.clone()))
                    .collect(),
            ),
        );
        if let Some(extra) = self.extra {
            for (k, v) in extra {
                if !INPUT_KEYS.contains(&k.as_str()) {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        Value::Object(m)
    }

    /// The input document as a regorus value, built straight from the borrowed parts (no
    /// intermediate `serde_json::Value`, no clone of the params). Equal to
    /// `regorus::Value::from(self.to_json())`.
    pub fn to_rego(&self) -> regorus::Value {
        use serde::Deserialize;
        // The keys are the same on every call: made once, shared (a clone is a refcount).
        static KEYS: std::sync::LazyLock<[regorus::Value; 5]> =
            std::sync::LazyLock::new(|| INPUT_KEYS.map(regorus::Value::from));
        let [k_kind, k_params, k_source, k_domains, k_agent] = &*KEYS;
        let mut params = std::collections::BTreeMap::new();
        for (k, v) in self.params {
            // The same conversion `regorus::Value::from(serde_json::Value)` uses.
            let v = regorus::Value::deserialize(v).unwrap_or(regorus::Value::Undefined);
            params.insert(regorus::Value::from(k.as_str()), v);
        }
        let domains: Vec<regorus::Value> = self
            .allowed_domains
            .iter()
            .map(|d| regorus::Value::from(d.as_str()))
            .collect();
        let mut m = std::collections::BTreeMap::new();
        m.insert(k_kind.clone(), regorus::Value::from(self.kind.as_str()));
        m.insert(k_params.clone(), regorus::Value::from(params));
        m.insert(k_source.clone(), regorus::Value::from(self.source.as_str()));
        m.insert(k_domains.clone(), regorus::Value::from(domains));
        m.insert(k_agent.clone(), regorus::Value::from(self.agent.as_str()));
        if let Some(extra) = self.extra {
            for (k, v) in extra {
                if !INPUT_KEYS.contains(&k.as_str()) {
                    let v = regorus::Value::deserialize(v).unwrap_or(regorus::Value::Undefined);
                    m.insert(regorus::Value::from(k.as_str()), v);
                }
            }
        }
        regorus::Value::from(m)
    }
}

/// Evaluators kept for reuse: regorus's engines and VMs need `&mut` to evaluate, so each call
/// takes one (or the caller makes one) and gives it back.
pub(crate) struct Pool<T> {
    items: std::sync::Mutex<Vec<T>>,
}

impl<T> Pool<T> {
    /// Most kept; more concurrent evaluations make a fresh one and drop it after.
    const MAX: usize = 64;

    pub(crate) fn new() -> Self {
        Pool {
            items: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn take(&self) -> Option<T> {
        self.items.lock().ok().and_then(|mut p| p.pop())
    }

    pub(crate) fn put(&self, t: T) {
        if let Ok(mut p) = self.items.lock()
            && p.len() < Self::MAX
        {
            p.push(t);
        }
    }
}

/// The evaluator's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Allow or deny.
    pub decision: Decision,
    /// Why (always set on deny).
    pub reason: Option<String>,
    /// On an allow: the policy's `approval` rule is true, so a person must approve the call
    /// before it runs (with the policy's `approval_reason`, if it gave one).
    pub approval: Option<Approval>,
    /// The policy's `patch` rule, when it is defined: the call it would take instead (a JSON
    /// Merge Patch over the params, or a bridged message). Set on an allow and on a deny alike;
    /// the gate decides whether the patched call may run ([`crate::gate`]).
    pub patch: Option<Map<String, Value>>,
    /// The policy rule definitions that decided (see [`provenance`]); empty when the policy
    /// names none (an evaluation error, or a policy that is not Rego).
    pub rules: Vec<Arc<RuleRef>>,
}

/// A policy's request for a person's approval ("ask").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Why (`approval_reason`), shown to whoever decides.
    pub reason: Option<String>,
}

impl Verdict {
    /// An allow, without approval.
    pub fn allow() -> Self {
        Verdict {
            decision: Decision::Allow,
            reason: None,
            approval: None,
            patch: None,
            rules: Vec::new(),
        }
    }

    /// A deny with a reason.
    pub fn deny(reason: impl Into<String>) -> Self {
        Verdict {
            decision: Decision::Deny,
            reason: Some(reason.into()),
            approval: None,
            patch: None,
            rules: Vec::new(),
        }
    }
}

/// Anything that can decide a tool call. Must fail closed: errors become denies.
pub trait PolicyEvaluator: Send + Sync {
    /// Decides one call.
    fn evaluate(&self, input: &PolicyInput<'_>) -> Verdict;
    /// Names this policy in answers and records.
    fn policy_ref(&self) -> &PolicyRef;
    /// Whether this policy only watches (a bundle with `"mode": "shadow"`): its decisions are
    /// recorded, marked `shadow`, and every call it would deny is allowed.
    fn shadow(&self) -> bool {
        false
    }
    /// The rate limits that came with this policy (a bundle's `data.json` key `limits`).
    fn limits(&self) -> Option<&Arc<crate::limits::Limits>> {
        None
    }
}

/// Denies everything: the runtime's policy when none was given.
pub struct DenyAll {
    policy_ref: PolicyRef,
}

impl DenyAll {
    /// The deny-all policy (`builtin:deny-all`).
    pub fn new() -> Self {
        DenyAll {
            policy_ref: PolicyRef::new("builtin:deny-all"),
        }
    }
}

impl Default for DenyAll {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyEvaluator for DenyAll {
    fn evaluate(&self, _input: &PolicyInput<'_>) -> Verdict {
        Verdict::deny(
            "no policy loaded: the runtime is deny-all (start it with --demo or --policy, or load a bundle)",
        )
    }

    fn policy_ref(&self) -> &PolicyRef {
        &self.policy_ref
    }
}

/// The embedded demo policy, compiled.
pub fn demo_policy() -> Result<RegoPolicy, RegoPolicyError> {
    RegoPolicy::compile(
        PolicyRef::new("embedded:demo"),
        &[("demo.rego".to_string(), DEMO_REGO.to_string())],
        None,
    )
}

/// The embedded bridge demo policy, compiled: what `--bridge` uses without `--policy`.
pub fn bridge_demo_policy() -> Result<RegoPolicy, RegoPolicyError> {
    RegoPolicy::compile(
        PolicyRef::new("embedded:ros2-bridge-demo"),
        &[("bridge_demo.rego".to_string(), BRIDGE_DEMO_REGO.to_string())],
        None,
    )
}

/// The active policy; swapped atomically on reload while calls in flight keep theirs.
pub struct ActivePolicy {
    current: ArcSwap<Box<dyn PolicyEvaluator>>,
}

impl ActivePolicy {
    /// Starts with `p`.
    pub fn new(p: Box<dyn PolicyEvaluator>) -> Self {
        ActivePolicy {
            current: ArcSwap::from_pointee(p),
        }
    }

    /// The policy to use for one call, held for the whole call.
    pub fn get(&self) -> Arc<Box<dyn PolicyEvaluator>> {
        self.current.load_full()
    }

    /// Replaces the policy for calls that start from now on.
    pub fn swap(&self, p: Box<dyn PolicyEvaluator>) {
        self.current.store(Arc::new(p));
    }
}

/// `f` on the input of an anonymous HTTP call of `kind` with `params`, for tests.
#[cfg(test)]
pub(crate) fn with_call<R>(
    kind: &str,
    params: &serde_json::Value,
    f: impl FnOnce(&PolicyInput<'_>) -> R,
) -> R {
    let kind = ToolKind::parse(kind).unwrap();
    let params = params.as_object().cloned().unwrap();
    f(&PolicyInput {
        kind: &kind,
        params: &params,
        source: Source::new("http"),
        agent: &crate::types::Agent::anonymous(),
        allowed_domains: &[],
        extra: None,
    })
}
