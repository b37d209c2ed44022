//! The one gate every front end calls: decide (policy) → record (WAL, durable) → execute → answer.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use serde_json::{Map, Value};

use crate::metrics::{self, Metrics};
use crate::policy::{ActivePolicy, PolicyInput};
use crate::record::{DecisionRecord, ErrorCode, ErrorRecord, Layer, RecordBody};
use crate::tools::{ToolOutcome, Tools};
use crate::types::Seq;
use crate::types::{AuditId, Decision, PolicyRef, Source, ToolKind};
use crate::wal::{NewRecord, Wal, WalError};

/// One tool call as a front end hands it to the gate.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// The kind.
    pub kind: ToolKind,
    /// The params object.
    pub params: Map<String, Value>,
    /// The front end.
    pub source: Source,
}

/// How the call ended; front ends map this to their status codes.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allowed and a built-in tool ran.
    Executed(Value),
    /// Allowed; no built-in executor (the caller acts).
    DecisionOnly,
    /// Denied by the policy.
    PolicyDenied,
    /// Denied before the policy: the input could not be read ([`Gate::refuse_input`]).
    InputRefused,
    /// Allowed by the policy, refused by the runtime layer.
    RuntimeDenied,
    /// Allowed, but the params are unusable by the tool.
    BadParams(String),
    /// Allowed, ran, failed upstream.
    UpstreamFailed(String),
    /// The WAL could not record the decision: nothing executed.
    WalUnavailable(String),
}

/// The gate's answer.
#[derive(Debug, Clone)]
pub struct GateResponse {
    /// The effective decision (deny when the runtime layer or the WAL refused).
    pub decision: Decision,
    /// The policy that decided.
    pub policy_ref: PolicyRef,
    /// The id of this decision's records.
    pub audit_id: AuditId,
    /// Why it was denied, when it was.
    pub reason: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Something told about every decision (e.g. the ROS `/autonomy/decisions` topic).
pub trait DecisionObserver: Send + Sync {
    /// Called once per call, after its records are durable.
    fn on_decision(&self, call: &ToolCall, resp: &GateResponse);
}

/// Appends a typed record to `wal` and waits until it is durable, without blocking the async
/// runtime ([`Wal::append_async`]); what [`Gate::record`] does, for code that holds only the log.
pub async fn record<B: RecordBody>(
    wal: &Arc<Wal>,
    audit_id: Option<&AuditId>,
    body: &B,
) -> Result<Seq, WalError> {
    wal.append_async(NewRecord::encoded(audit_id.cloned(), body)?)
        .await
}

/// The gate. Cheap to share: hold it in an `Arc`.
pub struct Gate {
    policy: Arc<ActivePolicy>,
    wal: Arc<Wal>,
    tools: Tools,
    /// The allowlist as the policy sees it (`input.allowed_domains`); fixed for the gate's life.
    allowed_domains: Vec<String>,
    observers: std::sync::RwLock<Vec<Arc<dyn DecisionObserver>>>,
    /// Whether calls are taken yet: a gate is built closed, and the runtime opens it once its
    /// `started` record is durable, so no decision precedes it in the log.
    open: AtomicBool,
    opened: Notify,
    /// What `GET /metrics` shows; counts every final decision.
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate over this policy, WAL and tools.
    pub fn new(policy: Arc<ActivePolicy>, wal: Arc<Wal>, tools: Tools) -> Self {
        let allowed_domains = tools.allowlist().entries();
        let metrics = Arc::new(Metrics::new());
        metrics.add_source(wal.clone());
        Gate {
            policy,
            wal,
            tools,
            allowed_domains,
            observers: std::sync::RwLock::new(Vec::new()),
            open: AtomicBool::new(false),
            opened: Notify::new(),
            metrics,
        }
    }

    /// Lets calls through; those that arrived before wait until now.
    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.opened.notify_waiters();
    }

    async fn wait_open(&self) {
        let notified = self.opened.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.open.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Adds an observer of decisions.
    pub fn add_observer(&self, o: Arc<dyn DecisionObserver>) {
        if let Ok(mut v) = self.observers.write() {
            v.push(o);
        }
    }

    /// The WAL this gate records into.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// The active policy holder.
    pub fn policy(&self) -> &Arc<ActivePolicy> {
        &self.policy
    }

    /// The runtime's metrics (the gate's own counts, the WAL's, registered sources).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Decides, records durably, executes if allowed, records the outcome, answers.
    pub async fn call(&self, call: ToolCall) -> GateResponse {
        let _in_flight = self.metrics.call_in_flight();
        if !self.open.load(Ordering::Acquire) {
            self.wait_open().await;
        }
        let resp = self.call_inner(&call).await;
        // metrics: the agent label is ANONYMOUS until calls carry the caller's identity.
        self.metrics.decision(
            call.kind.as_str(),
            call.source.as_str(),
            resp.decision.as_str(),
            metrics::ANONYMOUS,
        );
        if let Ok(obs) = self.observers.read() {
            for o in obs.iter() {
                o.on_decision(&call, &resp);
            }
        }
        resp
    }

    /// What the policy sees of `call`, with the front end's `extra` fields.
    fn input<'a>(
        &'a self,
        call: &'a ToolCall,
        extra: Option<&'a Map<String, Value>>,
    ) -> PolicyInput<'a> {
        PolicyInput {
            kind: &call.kind,
            params: &call.params,
            source: call.source,
            allowed_domains: &self.allowed_domains,
            extra,
        }
    }

    async fn call_inner(&self, call: &ToolCall) -> GateResponse {
        let audit_id = AuditId::new();
        // Held for the whole call, so a reload mid-call does not change this call's policy.
        let policy = self.policy.get();
        let policy_ref = policy.policy_ref().clone();
        let verdict = self
            .metrics
            .time_policy_eval(|| policy.evaluate(&self.input(call, None)));

        let record = decision_record(
            &audit_id,
            call,
            verdict.decision,
            verdict.reason.as_deref(),
            &policy_ref,
            Layer::Policy,
        );
        if let Err(e) = self.append(record).await {
            return wal_unavailable(policy_ref, audit_id, &e);
        }

        if verdict.decision == Decision::Deny {
            return GateResponse {
                decision: Decision::Deny,
                policy_ref,
                audit_id,
                reason: verdict.reason,
                outcome: Outcome::PolicyDenied,
            };
        }

        // Every outcome but a plain success gets a second record under the same audit id.
        let (outcome, follow_up, reason) = match self.tools.execute(&call.kind, &call.params).await
        {
            ToolOutcome::Output(v) => (Outcome::Executed(v), None, None),
            ToolOutcome::DecisionOnly => (Outcome::DecisionOnly, None, None),
            ToolOutcome::RuntimeDeny(reason) => {
                let rec = decision_record(
                    &audit_id,
                    call,
                    Decision::Deny,
                    Some(&reason),
                    &policy_ref,
                    Layer::Runtime,
                );
                (Outcome::RuntimeDenied, Some(rec), Some(reason))
            }
            ToolOutcome::BadParams(msg) => {
                let rec = error_record(&audit_id, call, &msg, ErrorCode::BadParams);
                (Outcome::BadParams(msg), Some(rec), None)
            }
            ToolOutcome::Upstream(msg) => {
                let rec = error_record(&audit_id, call, &msg, ErrorCode::Upstream);
                (Outcome::UpstreamFailed(msg), Some(rec), None)
            }
        };

        if let Some(rec) = follow_up
            && let Err(e) = self.append(rec).await
        {
            // The tool did not run (runtime deny / bad params) or already failed; the
            // decision record is durable, so the audit trail still shows the attempt.
            tracing::error!("cannot record outcome of {audit_id}: {e}");
        }
        let decision = if outcome == Outcome::RuntimeDenied {
            Decision::Deny
        } else {
            Decision::Allow
        };
        GateResponse {
            decision,
            policy_ref,
            audit_id,
            reason,
            outcome,
        }
    }

    /// Decides a decision-only call (no built-in tool runs: the caller acts, e.g. republishes a
    /// bridged message) and queues its record in the log without waiting for the disk. Calls
    /// decided one after another have their records in the log in that order. `extra` adds
    /// top-level policy input fields (`input.<key>`, e.g. the bridge's `rate`).
    ///
    /// `durability` says when the caller may act on the answer: [`Durability::BeforeActing`]
    /// (the rule everywhere: act only on what [`Pending::durable`] returns) or
    /// [`Durability::Deferred`], the one deliberate relaxation (see there).
    pub async fn decide(
        self: &Arc<Self>,
        call: ToolCall,
        extra: Option<&Map<String, Value>>,
        durability: Durability,
    ) -> Pending {
        if !self.open.load(Ordering::Acquire) {
            self.wait_open().await;
        }
        let policy = self.policy.get();
        let policy_ref = policy.policy_ref().clone();
        let verdict = self
            .metrics
            .time_policy_eval(|| policy.evaluate(&self.input(&call, extra)));
        self.pend(
            call,
            verdict.decision,
            verdict.reason,
            policy_ref,
            Layer::Policy,
            durability,
        )
    }

    /// Denies a decision-only call whose input could not be read (a bridged message that does
    /// not decode), before any policy sees it: recorded like [`Gate::decide`] (layer `input`,
    /// with `reason`), in call order.
    pub async fn refuse_input(self: &Arc<Self>, call: ToolCall, reason: String) -> Pending {
        if !self.open.load(Ordering::Acquire) {
            self.wait_open().await;
        }
        let policy_ref = self.policy.get().policy_ref().clone();
        self.pend(
            call,
            Decision::Deny,
            Some(reason),
            policy_ref,
            Layer::Input,
            Durability::BeforeActing,
        )
    }

    fn pend(
        self: &Arc<Self>,
        call: ToolCall,
        decision: Decision,
        reason: Option<String>,
        policy_ref: PolicyRef,
        layer: Layer,
        durability: Durability,
    ) -> Pending {
        let audit_id = AuditId::new();
        let queued = decision_record(
            &audit_id,
            &call,
            decision,
            reason.as_deref(),
            &policy_ref,
            layer,
        )
        .and_then(|rec| self.wal.submit(rec));
        let outcome = match (decision, layer) {
            (Decision::Allow, _) => Outcome::DecisionOnly,
            (Decision::Deny, Layer::Input) => Outcome::InputRefused,
            (Decision::Deny, _) => Outcome::PolicyDenied,
        };
        let (response, completion) = match queued {
            Ok(fut) => (
                GateResponse {
                    decision,
                    policy_ref,
                    audit_id,
                    reason,
                    outcome,
                },
                Some(Box::pin(fut) as futures::future::BoxFuture<'static, _>),
            ),
            Err(e) => (wal_unavailable(policy_ref, audit_id, &e), None),
        };
        Pending {
            response,
            completion,
            durability,
            call,
            gate: self.clone(),
        }
    }

    async fn append(&self, rec: Result<NewRecord, WalError>) -> Result<(), WalError> {
        self.wal.append_async(rec?).await.map(|_| ())
    }

    /// Records an event that is not a decision (a runtime start, a marker, a lifecycle event,
    /// a policy change) and returns once it is durable: the one way front ends and the core
    /// write to the log besides the gate's own decision records.
    pub async fn record<B: RecordBody>(
        &self,
        audit_id: Option<&AuditId>,
        body: &B,
    ) -> Result<Seq, WalError> {
        record(&self.wal, audit_id, body).await
    }
}

/// The answer when the log cannot record a decision: deny, nothing acted on.
fn wal_unavailable(policy_ref: PolicyRef, audit_id: AuditId, e: &WalError) -> GateResponse {
    GateResponse {
        decision: Decision::Deny,
        policy_ref,
        audit_id,
        reason: Some("the audit log cannot record this decision, so nothing was executed".into()),
        outcome: Outcome::WalUnavailable(e.to_string()),
    }
}

/// When a caller of [`Gate::decide`] may act on an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Only once the decision's record is durable ([`Pending::durable`]): the guarantee of every
    /// front end, and what [`Gate::call`] always does.
    BeforeActing,
    /// At once ([`Pending::early`]), while the record is still on its way to the disk. This is
    /// the one path that relaxes "durable before acting", on purpose and per topic: the
    /// bridge's `batched` topics (control loops that must never wait on a disk). The record's
    /// place in the log is fixed before the caller acts; a power cut can lose records of
    /// messages already republished, within the window the bridge states in its
    /// `bridge.started` record and bounds by waiting when the log falls further behind.
    Deferred,
}

/// A decision from [`Gate::decide`] whose record is queued in the log.
pub struct Pending {
    response: GateResponse,
    completion: Option<futures::future::BoxFuture<'static, Result<Seq, WalError>>>,
    durability: Durability,
    call: ToolCall,
    gate: Arc<Gate>,
}

impl Pending {
    /// The answer before its record is durable, where acting on it then is allowed: always for
    /// a deny (nothing is acted on), and for an allow only under [`Durability::Deferred`].
    pub fn early(&self) -> Option<&GateResponse> {
        (self.durability == Durability::Deferred || self.response.decision == Decision::Deny)
            .then_some(&self.response)
    }

    /// The call this decision is about.
    pub fn call(&self) -> &ToolCall {
        &self.call
    }

    /// Waits until the record is durable, tells the observers, and returns the answer to act
    /// on: the decision, or a deny with [`Outcome::WalUnavailable`] when the record could not be
    /// written (then an allow must not be acted on; under `Deferred` it may have been already).
    pub async fn durable(self) -> GateResponse {
        let mut resp = self.response;
        if let Some(c) = self.completion
            && let Err(e) = c.await
        {
            resp = wal_unavailable(resp.policy_ref, resp.audit_id, &e);
        }
        // metrics: the agent label is ANONYMOUS until calls carry the caller's identity.
        self.gate.metrics.decision(
            self.call.kind.as_str(),
            self.call.source.as_str(),
            resp.decision.as_str(),
            metrics::ANONYMOUS,
        );
        if let Ok(obs) = self.gate.observers.read() {
            for o in obs.iter() {
                o.on_decision(&self.call, &resp);
            }
        }
        resp
    }
}

fn decision_record(
    audit_id: &AuditId,
    call: &ToolCall,
    decision: Decision,
    reason: Option<&str>,
    policy_ref: &PolicyRef,
    layer: Layer,
) -> Result<NewRecord, WalError> {
    NewRecord::encoded(
        Some(audit_id.clone()),
        &DecisionRecord {
            decision,
            kind: Cow::Borrowed(call.kind.as_str()),
            layer,
            // The policy- and input-layer records carry what was asked, so the log alone
            // answers "what was tried".
            params: (layer != Layer::Runtime).then_some(Cow::Borrowed(&call.params)),
            policy_ref: Cow::Borrowed(policy_ref.as_str()),
            reason: reason.map(Cow::Borrowed),
            source: Cow::Borrowed(call.source.as_str()),
        },
    )
}

fn error_record(
    audit_id: &AuditId,
    call: &ToolCall,
    msg: &str,
    code: ErrorCode,
) -> Result<NewRecord, WalError> {
    NewRecord::encoded(
        Some(audit_id.clone()),
        &ErrorRecord {
            code,
            error: Cow::Borrowed(msg),
            kind: Cow::Borrowed(call.kind.as_str()),
            source: Cow::Borrowed(call.source.as_str()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_decision_body_is_encoded_as_the_map_was() {
        let params: Map<String, Value> =
            serde_json::from_value(json!({"z": [1, {"b": null, "a": "é\"\n"}], "a": 1.5})).unwrap();
        let call = ToolCall {
            kind: ToolKind::parse("tool.http_get").unwrap(),
            params: params.clone(),
            source: Source::new("ros2"),
        };
        let id = AuditId::new();
        let pref = PolicyRef::new("bundle:x@sha256:ab");
        for (decision, reason, layer) in [
            (Decision::Allow, None, Layer::Policy),
            (Decision::Deny, Some("no \"way\""), Layer::Policy),
            (Decision::Deny, Some("not in the allowlist"), Layer::Runtime),
        ] {
            let layer_name = if layer == Layer::Policy {
                "policy"
            } else {
                "runtime"
            };
            // The body as the `Map` builder made it before.
            let mut want = Map::new();
            want.insert("kind".into(), call.kind.as_str().into());
            want.insert("decision".into(), decision.as_str().into());
            want.insert("layer".into(), layer_name.into());
            want.insert("policy_ref".into(), pref.as_str().into());
            want.insert("source".into(), call.source.as_str().into());
            if let Some(r) = reason {
                want.insert("reason".into(), r.into());
            }
            if layer == Layer::Policy {
                want.insert("params".into(), Value::Object(params.clone()));
            }
            let mut rec = decision_record(&id, &call, decision, reason, &pref, layer).unwrap();
            let got = rec.take_body().unwrap();
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(serde_json::to_vec(&want).unwrap()).unwrap()
            );
            assert!(
                want.keys()
                    .all(|k| <DecisionRecord as RecordBody>::KEYS.contains(&k.as_str()))
            );
        }
    }

    fn bridge_gate(dir: &std::path::Path) -> Arc<Gate> {
        let policy = crate::policy::eval::bridge_demo_policy().unwrap();
        let (wal, _) = Wal::open(dir, crate::wal::WalOptions::default()).unwrap();
        let tools = Tools::new(
            crate::tools::Allowlist::empty(),
            crate::tools::HttpGetLimits::default(),
        );
        let g = Arc::new(Gate::new(
            Arc::new(ActivePolicy::new(Box::new(policy))),
            Arc::new(wal),
            tools,
        ));
        g.open();
        g
    }

    fn publish(x: f64) -> ToolCall {
        ToolCall {
            kind: ToolKind::parse("tool.ros2.topic.publish").unwrap(),
            params: serde_json::from_value(json!({"topic": "/cmd_vel", "type": "geometry_msgs/msg/Twist",
                "message": {"linear": {"x": x, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": 0.0}}}))
            .unwrap(),
            source: Source::new("bridge"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decide_answers_early_only_where_acting_early_is_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let g = bridge_gate(tmp.path());
        let rate: Map<String, Value> = serde_json::from_value(json!({"rate": 3})).unwrap();
        // An allow under BeforeActing: no answer before the record is durable.
        let strict = g
            .decide(publish(0.5), Some(&rate), Durability::BeforeActing)
            .await;
        assert!(strict.early().is_none());
        // A deny may be acted on (by not acting) at once; so may a Deferred allow.
        let deny = g.decide(publish(5.0), None, Durability::BeforeActing).await;
        assert_eq!(deny.early().unwrap().decision, Decision::Deny);
        let deferred = g.decide(publish(0.25), None, Durability::Deferred).await;
        assert_eq!(deferred.early().unwrap().decision, Decision::Allow);
        let refused = g
            .refuse_input(publish(0.0), "malformed message: truncated".into())
            .await;
        assert_eq!(refused.early().unwrap().outcome, Outcome::InputRefused);
        let ids: Vec<AuditId> = [
            strict.durable().await,
            deny.durable().await,
            deferred.durable().await,
            refused.durable().await,
        ]
        .into_iter()
        .map(|r| {
            assert!(!matches!(r.outcome, Outcome::WalUnavailable(_)));
            r.audit_id
        })
        .collect();
        // The records are in the log in decision order, with their layers.
        let recs = crate::wal::read_records(tmp.path()).unwrap();
        let got: Vec<(String, &'static str)> = recs
            .iter()
            .map(|r| match r.body().unwrap() {
                crate::record::Body::Decision(d) => (
                    r.audit_id.as_ref().unwrap().as_str().to_string(),
                    match (d.decision, d.layer) {
                        (Decision::Allow, Layer::Policy) => "allow",
                        (Decision::Deny, Layer::Policy) => "deny",
                        (Decision::Deny, Layer::Input) => "input",
                        _ => "other",
                    },
                ),
                _ => panic!("not a decision"),
            })
            .collect();
        let want: Vec<(String, &str)> = ids
            .iter()
            .map(|i| i.as_str().to_string())
            .zip(["allow", "deny", "allow", "input"])
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_that_cannot_be_written_turns_the_allow_into_a_deny() {
        let tmp = tempfile::tempdir().unwrap();
        let g = bridge_gate(tmp.path());
        g.wal()
            .fail_next_write
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let p = g.decide(publish(0.5), None, Durability::BeforeActing).await;
        assert!(p.early().is_none());
        let r = p.durable().await;
        assert_eq!(r.decision, Decision::Deny);
        assert!(
            matches!(r.outcome, Outcome::WalUnavailable(_)),
            "{:?}",
            r.outcome
        );
        // The log stays failed: the next decision is refused at once.
        let p = g.decide(publish(0.5), None, Durability::Deferred).await;
        assert_eq!(p.early().unwrap().decision, Decision::Deny);
    }
}
