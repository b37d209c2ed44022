//! The one gate every front end calls: decide (policy) → record (WAL, durable) → execute → answer.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use serde_json::{Map, Value};

use crate::approvals::{Approvals, Resolution};
use crate::limits::{Limited, Limits};
use crate::metrics::{self, Metrics};
use crate::policy::patch::{self, PatchTarget, Patched, ToolParams};
use crate::policy::{ActivePolicy, PolicyEvaluator, PolicyInput, RuleRef, Verdict};
use crate::record::{
    ApprovalRequested, ApprovalRequestedEvent, DecisionRecord, ErrorCode, ErrorRecord, Layer,
    RecordBody,
};
use crate::tools::{ToolOutcome, Tools};
use crate::types::Seq;
use crate::types::{Agent, AuditId, Decision, PolicyRef, Source, ToolKind};
use crate::wal::{NewRecord, Wal, WalError};

/// The reason of a call denied by its rate limit.
pub const RATE_LIMITED: &str = "rate limited";
/// How long a call waits for approval unless configured otherwise.
pub const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One tool call as a front end hands it to the gate.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// The kind.
    pub kind: ToolKind,
    /// The params object.
    pub params: Map<String, Value>,
    /// The front end.
    pub source: Source,
    /// Who made it.
    pub agent: Agent,
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
    /// Over its rate limit: denied before the policy; a token is free after this long.
    RateLimited(std::time::Duration),
    /// The policy asked for approval and it was not given (rejected, timed out, or the runtime
    /// stopped): the tool never ran.
    ApprovalDenied,
}

/// What a policy in shadow mode would have decided (the call was allowed regardless).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowVerdict {
    /// Its decision (`downgrade` when it would have run the call patched).
    pub decision: Decision,
    /// Its reason (for a deny, or for an approval it would have asked).
    pub reason: Option<String>,
}

/// A call the policy downgraded: it runs (or is published) as patched.
#[derive(Debug, Clone, PartialEq)]
pub struct Downgrade {
    /// The policy's patch: what changed.
    pub patch: Map<String, Value>,
    /// The patched call's params (what ran), and the front end's encoding of it.
    pub patched: Patched,
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
    /// Shadow mode: what the policy would have decided.
    pub shadow: Option<ShadowVerdict>,
    /// The person's (or the clock's) answer, when the policy asked for approval.
    pub approval: Option<Resolution>,
    /// The policy's patch, when the call ran (or may be acted on) as patched; `decision` is
    /// then `allow`. Never set in shadow mode (the original runs).
    pub downgrade: Option<Downgrade>,
    /// The policy rule definitions that decided (empty when another layer decided, or the
    /// policy named none).
    pub rules: Vec<Arc<RuleRef>>,
}

impl GateResponse {
    fn new(
        decision: Decision,
        policy_ref: PolicyRef,
        audit_id: AuditId,
        reason: Option<String>,
        outcome: Outcome,
    ) -> Self {
        GateResponse {
            decision,
            policy_ref,
            audit_id,
            reason,
            outcome,
            shadow: None,
            approval: None,
            downgrade: None,
            rules: Vec::new(),
        }
    }
}

/// How a gate treats calls beyond its policy: limits, shadow mode, approvals.
#[derive(Debug)]
pub struct GateOptions {
    /// Rate limits (`--limits`); when absent, the policy's own (a bundle's `data.json`).
    pub limits: Option<Limits>,
    /// Shadow mode for every policy (`--shadow`): record what it would decide, allow.
    pub shadow: bool,
    /// How long a call waits for approval before it is denied.
    pub approval_timeout: std::time::Duration,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            limits: None,
            shadow: false,
            approval_timeout: DEFAULT_APPROVAL_TIMEOUT,
        }
    }
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
    /// `--limits`, which replace the policy's own.
    limits: Option<Arc<Limits>>,
    /// `--shadow`.
    shadow: bool,
    approvals: Arc<Approvals>,
    approval_timeout: std::time::Duration,
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
        let approvals = Arc::new(Approvals::new());
        let metrics = Arc::new(Metrics::new());
        metrics.add_source(wal.clone());
        let waiting = approvals.clone();
        metrics.approvals_pending_from(move || waiting.len() as u64);
        Gate {
            policy,
            wal,
            tools,
            allowed_domains,
            observers: std::sync::RwLock::new(Vec::new()),
            limits: None,
            shadow: false,
            approvals,
            approval_timeout: DEFAULT_APPROVAL_TIMEOUT,
            open: AtomicBool::new(false),
            opened: Notify::new(),
            metrics,
        }
    }

    /// This gate with `o`'s limits, shadow mode and approval timeout.
    pub fn with_options(mut self, o: GateOptions) -> Self {
        self.limits = o.limits.map(Arc::new);
        self.shadow = o.shadow;
        self.approval_timeout = o.approval_timeout;
        self
    }

    /// The calls waiting for approval.
    pub fn approvals(&self) -> &Arc<Approvals> {
        &self.approvals
    }

    /// Whether every policy runs in shadow mode here (`--shadow`).
    pub fn shadow(&self) -> bool {
        self.shadow
    }

    /// The rate limits in force for `policy`: `--limits`, else the policy's own.
    fn over_limit(&self, policy: &dyn PolicyEvaluator, call: &ToolCall) -> Option<Limited> {
        let limits = self.limits.as_ref().or_else(|| policy.limits())?;
        limits.check(&call.agent, &call.kind).err()
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
        self.metrics.decision(
            call.kind.as_str(),
            call.source.as_str(),
            metrics_decision(&resp),
            call.agent.as_str(),
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
            agent: &call.agent,
            allowed_domains: &self.allowed_domains,
            extra,
        }
    }

    async fn call_inner(&self, call: &ToolCall) -> GateResponse {
        let audit_id = AuditId::new();
        // Held for the whole call, so a reload mid-call does not change this call's policy.
        let policy = self.policy.get();
        let policy_ref = policy.policy_ref().clone();

        if let Some(limited) = self.over_limit(&**policy, call) {
            self.metrics
                .rate_limited(call.kind.as_str(), call.agent.as_str());
            let rec = decision_body(
                call,
                Decision::Deny,
                Some(RATE_LIMITED),
                &policy_ref,
                Layer::Limit,
            );
            if let Err(e) = self.append(encode(&audit_id, &rec)).await {
                return wal_unavailable(policy_ref, audit_id, &e);
            }
            return GateResponse::new(
                Decision::Deny,
                policy_ref,
                audit_id,
                Some(RATE_LIMITED.into()),
                Outcome::RateLimited(limited.retry_after),
            );
        }

        let verdict = self
            .metrics
            .time_policy_eval(|| policy.evaluate(&self.input(call, None)));
        let target = ToolParams {
            tools: &self.tools,
            kind: &call.kind,
        };
        let (verdict, downgrade) = self.settle(&**policy, call, None, verdict, &target);
        let mut shadow = None;
        let mut approval = None;
        let mut ran_as = None;
        if self.shadow || policy.shadow() {
            let seen = shadow_verdict(&verdict, downgrade.as_ref());
            let mut rec = decision_body(
                call,
                seen.decision,
                seen.reason.as_deref(),
                &policy_ref,
                Layer::Policy,
            );
            with_downgrade(&mut rec, downgrade.as_ref());
            rec.shadow = Some(true);
            rec.rules = Cow::Borrowed(&verdict.rules);
            if let Err(e) = self.append(encode(&audit_id, &rec)).await {
                return wal_unavailable(policy_ref, audit_id, &e);
            }
            shadow = Some(seen);
        } else if let Some(d) = downgrade {
            let mut rec =
                decision_body(call, Decision::Downgrade, None, &policy_ref, Layer::Policy);
            with_downgrade(&mut rec, Some(&d));
            if let Err(e) = self.append(encode(&audit_id, &rec)).await {
                return wal_unavailable(policy_ref, audit_id, &e);
            }
            ran_as = Some(d);
        } else if verdict.decision == Decision::Deny {
            let mut rec = decision_body(
                call,
                Decision::Deny,
                verdict.reason.as_deref(),
                &policy_ref,
                Layer::Policy,
            );
            rec.rules = Cow::Borrowed(&verdict.rules);
            if let Err(e) = self.append(encode(&audit_id, &rec)).await {
                return wal_unavailable(policy_ref, audit_id, &e);
            }
            return GateResponse {
                rules: verdict.rules,
                ..GateResponse::new(
                    Decision::Deny,
                    policy_ref,
                    audit_id,
                    verdict.reason,
                    Outcome::PolicyDenied,
                )
            };
        } else if let Some(ask) = &verdict.approval {
            match self
                .ask(&audit_id, call, ask.reason.as_deref(), &policy_ref)
                .await
            {
                Ok(r) => approval = Some(r),
                Err(resp) => return *resp,
            }
        } else {
            let mut rec = decision_body(call, Decision::Allow, None, &policy_ref, Layer::Policy);
            rec.rules = Cow::Borrowed(&verdict.rules);
            if let Err(e) = self.append(encode(&audit_id, &rec)).await {
                return wal_unavailable(policy_ref, audit_id, &e);
            }
        }

        // A downgraded call runs as patched; in shadow mode the original runs.
        let params = ran_as.as_ref().map_or(&call.params, |d| &d.patched.params);
        // Every outcome but a plain success gets a second record under the same audit id.
        let (outcome, follow_up, reason) = match self.tools.execute(&call.kind, params).await {
            ToolOutcome::Output(v) => (Outcome::Executed(v), None, None),
            ToolOutcome::DecisionOnly => (Outcome::DecisionOnly, None, None),
            ToolOutcome::RuntimeDeny(reason) => {
                let rec = encode(
                    &audit_id,
                    &decision_body(
                        call,
                        Decision::Deny,
                        Some(&reason),
                        &policy_ref,
                        Layer::Runtime,
                    ),
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
        // A runtime-layer refusal is not the policy's decision: its answer names no rules.
        let rules = if outcome == Outcome::RuntimeDenied {
            Vec::new()
        } else {
            verdict.rules
        };
        GateResponse {
            shadow,
            approval,
            // A runtime-layer deny after the downgrade answers a plain deny.
            downgrade: ran_as.filter(|_| decision == Decision::Allow),
            rules,
            ..GateResponse::new(decision, policy_ref, audit_id, reason, outcome)
        }
    }

    /// Settles a verdict that offers a patch (a downgrade): applies it to the call through the
    /// front end's `target` (which checks the patched call still fits), and evaluates the
    /// patched call again. Only a patched call the policy allows as it is — no approval, and no
    /// further patch that changes anything — becomes a downgrade; anything else is a deny with
    /// the reason. So a patch never lets through a call the policy would deny. A patch that
    /// changes nothing leaves the verdict as it was.
    fn settle(
        &self,
        policy: &dyn PolicyEvaluator,
        call: &ToolCall,
        extra: Option<&Map<String, Value>>,
        mut verdict: Verdict,
        target: &dyn PatchTarget,
    ) -> (Verdict, Option<Downgrade>) {
        let Some(patch) = verdict.patch.take() else {
            return (verdict, None);
        };
        // A refusal here names the rules that asked for the patch (or refused the patched call).
        let refuse = |why: String, rules: Vec<Arc<RuleRef>>| {
            (
                Verdict {
                    rules,
                    ..Verdict::deny(why)
                },
                None,
            )
        };
        let patched = match target.apply(&call.params, &patch) {
            Ok(p) => p,
            Err(why) => {
                return refuse(
                    format!("the policy's patch does not fit the call: {why}"),
                    verdict.rules,
                );
            }
        };
        if patch::same_map(&patched.params, &call.params) {
            return (verdict, None);
        }
        let again = policy.evaluate(&PolicyInput {
            params: &patched.params,
            ..self.input(call, extra)
        });
        if again.decision == Decision::Deny {
            let why = again.reason.as_deref().unwrap_or("denied by policy");
            return refuse(format!("the patched call is denied: {why}"), again.rules);
        }
        if again.approval.is_some() {
            return refuse(
                "the patched call asks for approval, which a downgrade does not wait for".into(),
                again.rules,
            );
        }
        if let Some(more) = &again.patch {
            let settled = target
                .apply(&patched.params, more)
                .is_ok_and(|p| patch::same_map(&p.params, &patched.params));
            if !settled {
                return refuse(
                    "the policy patches the patched call again: a patch must lead to a call the policy allows as it is".into(),
                    again.rules,
                );
            }
        }
        // A downgrade names the rules that decided the call as asked, then those that allowed
        // the patched call.
        let mut rules = verdict.rules;
        for r in again.rules {
            if !rules.contains(&r) {
                rules.push(r);
            }
        }
        (
            Verdict {
                rules,
                ..Verdict::allow()
            },
            Some(Downgrade { patch, patched }),
        )
    }

    /// Parks a call the policy allowed only with approval: records the request (durable), waits
    /// for an operator or the timeout, records who decided (durable) and returns the approval,
    /// or the deny to answer with.
    async fn ask(
        &self,
        audit_id: &AuditId,
        call: &ToolCall,
        why: Option<&str>,
        policy_ref: &PolicyRef,
    ) -> Result<Resolution, Box<GateResponse>> {
        let timeout = self.approval_timeout;
        let requested = ApprovalRequested {
            agent: Cow::Borrowed(call.agent.as_str()),
            event: ApprovalRequestedEvent,
            kind: Cow::Borrowed(call.kind.as_str()),
            params: Cow::Borrowed(&call.params),
            policy_ref: Cow::Borrowed(policy_ref.as_str()),
            reason: why.map(Cow::Borrowed),
            source: Cow::Borrowed(call.source.as_str()),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(e) = self
            .append(NewRecord::encoded(Some(audit_id.clone()), &requested))
            .await
        {
            return Err(Box::new(wal_unavailable(
                policy_ref.clone(),
                audit_id.clone(),
                &e,
            )));
        }
        let resolution = match self.approvals.park(audit_id, call, why, timeout) {
            Err(full) => Resolution {
                approve: false,
                by: "runtime".into(),
                note: Some(full.to_string()),
            },
            Ok(rx) => {
                // If this call is dropped while it waits (its caller went away), the guard
                // forgets it and records that it was never approved.
                let guard = ParkGuard {
                    gate_wal: self.wal.clone(),
                    approvals: self.approvals.clone(),
                    audit_id: audit_id.clone(),
                    call: call.clone(),
                    policy_ref: policy_ref.clone(),
                    armed: true,
                };
                let r = match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Resolution {
                        approve: false,
                        by: "shutdown".into(),
                        note: None,
                    },
                    Err(_) => {
                        self.approvals
                            .forget(audit_id.as_str(), "denied by timeout");
                        Resolution {
                            approve: false,
                            by: "timeout".into(),
                            note: None,
                        }
                    }
                };
                guard.disarm();
                r
            }
        };
        let reason = (!resolution.approve).then(|| not_approved(&resolution, timeout));
        let mut rec = decision_body(
            call,
            if resolution.approve {
                Decision::Allow
            } else {
                Decision::Deny
            },
            reason.as_deref(),
            policy_ref,
            Layer::Approval,
        );
        rec.by = Some(Cow::Borrowed(&resolution.by));
        rec.note = resolution.note.as_deref().map(Cow::Borrowed);
        rec.params = None;
        if let Err(e) = self.append(encode(audit_id, &rec)).await {
            return Err(Box::new(wal_unavailable(
                policy_ref.clone(),
                audit_id.clone(),
                &e,
            )));
        }
        if resolution.approve {
            Ok(resolution)
        } else {
            Err(Box::new(GateResponse {
                approval: Some(resolution),
                ..GateResponse::new(
                    Decision::Deny,
                    policy_ref.clone(),
                    audit_id.clone(),
                    reason,
                    Outcome::ApprovalDenied,
                )
            }))
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
    ///
    /// A policy's patch applies through `target` (the bridge: to the message, checked against
    /// its type); see [`Gate::settle`].
    pub async fn decide(
        self: &Arc<Self>,
        call: ToolCall,
        extra: Option<&Map<String, Value>>,
        target: &dyn PatchTarget,
        durability: Durability,
    ) -> Pending {
        if !self.open.load(Ordering::Acquire) {
            self.wait_open().await;
        }
        let policy = self.policy.get();
        let policy_ref = policy.policy_ref().clone();
        if self.over_limit(&**policy, &call).is_some() {
            self.metrics
                .rate_limited(call.kind.as_str(), call.agent.as_str());
            return self.pend(
                call,
                Ruling::deny(RATE_LIMITED.into(), Layer::Limit),
                policy_ref,
                durability,
            );
        }
        let verdict = self
            .metrics
            .time_policy_eval(|| policy.evaluate(&self.input(&call, extra)));
        let (verdict, downgrade) = self.settle(&**policy, &call, extra, verdict, target);
        let ruling = if self.shadow || policy.shadow() {
            Ruling {
                shadow: Some(shadow_verdict(&verdict, downgrade.as_ref())),
                downgrade,
                ..Ruling::allow()
            }
        } else if downgrade.is_some() {
            Ruling {
                downgrade,
                ..Ruling::allow()
            }
        } else if verdict.decision == Decision::Deny {
            Ruling::deny(
                verdict.reason.unwrap_or_else(|| "denied by policy".into()),
                Layer::Policy,
            )
        } else if verdict.approval.is_some() {
            // A decision-only call (a bridged message) cannot wait for a person: fail closed.
            Ruling::deny(
                "the policy asks for approval, which decision-only calls (bridged messages) cannot wait for".into(),
                Layer::Policy,
            )
        } else {
            Ruling::allow()
        };
        let ruling = Ruling {
            rules: verdict.rules,
            ..ruling
        };
        self.pend(call, ruling, policy_ref, durability)
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
            Ruling::deny(reason, Layer::Input),
            policy_ref,
            Durability::BeforeActing,
        )
    }

    fn pend(
        self: &Arc<Self>,
        call: ToolCall,
        ruling: Ruling,
        policy_ref: PolicyRef,
        durability: Durability,
    ) -> Pending {
        let audit_id = AuditId::new();
        let Ruling {
            decision,
            reason,
            layer,
            shadow,
            downgrade,
            rules,
        } = ruling;
        let mut rec = match &shadow {
            // The record says what the policy would have done; the call is allowed.
            Some(seen) => {
                let mut r = decision_body(
                    &call,
                    seen.decision,
                    seen.reason.as_deref(),
                    &policy_ref,
                    layer,
                );
                r.shadow = Some(true);
                r
            }
            None if downgrade.is_some() => {
                decision_body(&call, Decision::Downgrade, None, &policy_ref, layer)
            }
            None => decision_body(&call, decision, reason.as_deref(), &policy_ref, layer),
        };
        with_downgrade(&mut rec, downgrade.as_ref());
        if layer == Layer::Limit {
            rec.params = Some(Cow::Borrowed(&call.params));
        }
        rec.rules = Cow::Borrowed(&rules);
        let queued = encode(&audit_id, &rec).and_then(|rec| match durability {
            Durability::BeforeActing => self.wal.submit(rec).map(futures::FutureExt::boxed),
            Durability::AwaitedAtOnce => {
                self.wal.submit_awaited(rec).map(futures::FutureExt::boxed)
            }
            Durability::Deferred { flush_within } => self
                .wal
                .submit_within(rec, flush_within)
                .map(futures::FutureExt::boxed),
        });
        let outcome = match (decision, layer) {
            (Decision::Allow, _) => Outcome::DecisionOnly,
            (Decision::Deny, Layer::Input) => Outcome::InputRefused,
            (Decision::Deny, Layer::Limit) => Outcome::RateLimited(std::time::Duration::ZERO),
            (Decision::Deny, _) => Outcome::PolicyDenied,
            (Decision::Downgrade, _) => Outcome::DecisionOnly,
        };
        // In shadow mode the original is acted on; the record alone tells of the downgrade.
        let downgrade = downgrade.filter(|_| shadow.is_none());
        let (response, completion) = match queued {
            Ok(fut) => (
                GateResponse {
                    shadow,
                    downgrade,
                    rules,
                    ..GateResponse::new(decision, policy_ref, audit_id, reason, outcome)
                },
                Some(fut),
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

/// The `decision` label of a final answer in `autonomy_decisions_total`: in shadow mode (always
/// an allow) what the policy would have decided, so enforcement's effect stays visible.
fn metrics_decision(resp: &GateResponse) -> &'static str {
    match &resp.shadow {
        Some(seen) => match seen.decision {
            Decision::Allow => metrics::SHADOW_ALLOW,
            Decision::Deny => metrics::SHADOW_DENY,
            Decision::Downgrade => metrics::SHADOW_DOWNGRADE,
        },
        None if resp.downgrade.is_some() => Decision::Downgrade.as_str(),
        None => resp.decision.as_str(),
    }
}

/// The answer when the log cannot record a decision: deny, nothing acted on.
fn wal_unavailable(policy_ref: PolicyRef, audit_id: AuditId, e: &WalError) -> GateResponse {
    GateResponse::new(
        Decision::Deny,
        policy_ref,
        audit_id,
        Some("the audit log cannot record this decision, so nothing was executed".into()),
        Outcome::WalUnavailable(e.to_string()),
    )
}

/// What a decision-only call's record and answer say.
struct Ruling {
    decision: Decision,
    reason: Option<String>,
    layer: Layer,
    /// Shadow mode: what the policy would have decided (the ruling itself is an allow).
    shadow: Option<ShadowVerdict>,
    /// The policy downgraded the call (in shadow mode: would have).
    downgrade: Option<Downgrade>,
    /// The policy rule definitions that decided (layer `policy` only).
    rules: Vec<Arc<RuleRef>>,
}

impl Ruling {
    fn allow() -> Self {
        Ruling {
            decision: Decision::Allow,
            reason: None,
            layer: Layer::Policy,
            shadow: None,
            downgrade: None,
            rules: Vec::new(),
        }
    }

    fn deny(reason: String, layer: Layer) -> Self {
        Ruling {
            decision: Decision::Deny,
            reason: Some(reason),
            layer,
            shadow: None,
            downgrade: None,
            rules: Vec::new(),
        }
    }
}

/// What a policy in shadow mode would have decided: its decision, with its reason, or the
/// approval it would have asked for, or the downgrade it would have made.
fn shadow_verdict(v: &Verdict, downgrade: Option<&Downgrade>) -> ShadowVerdict {
    if downgrade.is_some() {
        return ShadowVerdict {
            decision: Decision::Downgrade,
            reason: None,
        };
    }
    let reason = match (&v.approval, v.decision) {
        (Some(a), Decision::Allow) => Some(match &a.reason {
            Some(r) => format!("would ask for approval: {r}"),
            None => "would ask for approval".into(),
        }),
        _ => v.reason.clone(),
    };
    ShadowVerdict {
        decision: v.decision,
        reason,
    }
}

/// The reason of a call that was not approved.
fn not_approved(r: &Resolution, timeout: std::time::Duration) -> String {
    let note = r
        .note
        .as_deref()
        .map(|n| format!(": {n}"))
        .unwrap_or_default();
    match r.by.as_str() {
        "timeout" => format!(
            "not approved within {} s",
            timeout.as_secs_f64().round() as u64
        ),
        "shutdown" => "not approved: the runtime stopped".into(),
        "runtime" => format!("not approved{note}"),
        by => format!("rejected by {by}{note}"),
    }
}

/// Forgets a parked call whose waiter was dropped (its caller went away) and records that it
/// was never approved, so the log does not end at a request.
struct ParkGuard {
    gate_wal: Arc<Wal>,
    approvals: Arc<Approvals>,
    audit_id: AuditId,
    call: ToolCall,
    policy_ref: PolicyRef,
    armed: bool,
}

impl ParkGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ParkGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.approvals
            .forget(self.audit_id.as_str(), "denied: the caller went away");
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rec = decision_body(
            &self.call,
            Decision::Deny,
            Some("not approved: the caller went away while it waited"),
            &self.policy_ref,
            Layer::Approval,
        );
        rec.by = Some(Cow::Borrowed("caller-gone"));
        rec.params = None;
        let rec = encode(&self.audit_id, &rec);
        let wal = self.gate_wal.clone();
        let id = self.audit_id.clone();
        handle.spawn(async move {
            let r = match rec {
                Ok(rec) => wal.append_async(rec).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::error!("cannot record that {id} was abandoned: {e}");
            }
        });
    }
}

/// When a caller of [`Gate::decide`] may act on an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Only once the decision's record is durable ([`Pending::durable`]): the guarantee of every
    /// front end, and what [`Gate::call`] always does.
    BeforeActing,
    /// [`Durability::BeforeActing`] for a caller that awaits [`Pending::durable`] at once, on
    /// the task that acts: at low load the record's flush then runs inside that await instead
    /// of on a pool thread ([`crate::wal::Wal::submit_awaited`]), which takes two thread
    /// hand-offs off the path to the action. A caller that awaits later would hold up every
    /// other record queued meanwhile.
    AwaitedAtOnce,
    /// At once ([`Pending::early`]), while the record is still on its way to the disk. This is
    /// the one path that relaxes "durable before acting", on purpose and per topic: the
    /// bridge's `batched` topics (control loops that must never wait on a disk). The record's
    /// place in the log is fixed before the caller acts; a power cut can lose records of
    /// messages already republished, within the window the bridge states in its
    /// `bridge.started` record and bounds by waiting when the log falls further behind.
    Deferred {
        /// How long the record may wait for others to share its fdatasync when no flush is
        /// running ([`crate::wal::Wal::submit_within`]); well inside the loss window.
        flush_within: std::time::Duration,
    },
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
        (matches!(self.durability, Durability::Deferred { .. })
            || self.response.decision == Decision::Deny)
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
        self.gate.metrics.decision(
            self.call.kind.as_str(),
            self.call.source.as_str(),
            metrics_decision(&resp),
            self.call.agent.as_str(),
        );
        if let Ok(obs) = self.gate.observers.read() {
            for o in obs.iter() {
                o.on_decision(&self.call, &resp);
            }
        }
        resp
    }
}

/// The record of a decision about `call` (the policy-, input- and limit-layer records carry
/// its params, so the log alone answers "what was tried").
fn decision_body<'a>(
    call: &'a ToolCall,
    decision: Decision,
    reason: Option<&'a str>,
    policy_ref: &'a PolicyRef,
    layer: Layer,
) -> DecisionRecord<'a> {
    DecisionRecord {
        agent: Some(Cow::Borrowed(call.agent.as_str())),
        by: None,
        decision,
        kind: Cow::Borrowed(call.kind.as_str()),
        layer,
        note: None,
        params: matches!(layer, Layer::Policy | Layer::Input | Layer::Limit)
            .then_some(Cow::Borrowed(&call.params)),
        patch: None,
        patched: None,
        policy_ref: Cow::Borrowed(policy_ref.as_str()),
        reason: reason.map(Cow::Borrowed),
        rules: Cow::Borrowed(&[]),
        shadow: None,
        source: Cow::Borrowed(call.source.as_str()),
    }
}

/// Adds a downgrade's patch and patched params to its decision record (`params` stays what was
/// asked).
fn with_downgrade<'a>(rec: &mut DecisionRecord<'a>, d: Option<&'a Downgrade>) {
    if let Some(d) = d {
        rec.patch = Some(Cow::Borrowed(&d.patch));
        rec.patched = Some(Cow::Borrowed(&d.patched.params));
    }
}

fn encode(audit_id: &AuditId, rec: &DecisionRecord<'_>) -> Result<NewRecord, WalError> {
    NewRecord::encoded(Some(audit_id.clone()), rec)
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

    /// Patches `params` as they are, unchecked.
    struct Params;

    impl PatchTarget for Params {
        fn apply(
            &self,
            params: &Map<String, Value>,
            patch: &Map<String, Value>,
        ) -> Result<Patched, String> {
            Ok(Patched {
                params: patch::merge(params, patch),
                encoded: None,
            })
        }
    }

    #[test]
    fn the_decision_body_is_encoded_as_the_map_was() {
        let params: Map<String, Value> =
            serde_json::from_value(json!({"z": [1, {"b": null, "a": "é\"\n"}], "a": 1.5})).unwrap();
        let call = ToolCall {
            kind: ToolKind::parse("tool.http_get").unwrap(),
            params: params.clone(),
            source: Source::new("ros2"),
            agent: Agent::anonymous(),
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
            want.insert("agent".into(), "anonymous".into());
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
            let mut rec =
                encode(&id, &decision_body(&call, decision, reason, &pref, layer)).unwrap();
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
            agent: Agent::new("bridge:/cmd_vel"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decide_answers_early_only_where_acting_early_is_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let g = bridge_gate(tmp.path());
        let rate: Map<String, Value> = serde_json::from_value(json!({"rate": 3})).unwrap();
        // Nor for a caller that awaits the record at once (whose await may lead its flush).
        let awaited = g
            .decide(publish(0.75), None, &Params, Durability::AwaitedAtOnce)
            .await;
        assert!(awaited.early().is_none());
        let awaited = awaited.durable().await;
        assert_eq!(
            (awaited.decision, &awaited.outcome),
            (Decision::Allow, &Outcome::DecisionOnly)
        );
        // An allow under BeforeActing: no answer before the record is durable.
        let strict = g
            .decide(publish(0.5), Some(&rate), &Params, Durability::BeforeActing)
            .await;
        assert!(strict.early().is_none());
        // A deny may be acted on (by not acting) at once; so may a Deferred allow.
        let deny = g
            .decide(publish(5.0), None, &Params, Durability::BeforeActing)
            .await;
        assert_eq!(deny.early().unwrap().decision, Decision::Deny);
        let deferred = g
            .decide(
                publish(0.25),
                None,
                &Params,
                Durability::Deferred {
                    flush_within: std::time::Duration::ZERO,
                },
            )
            .await;
        assert_eq!(deferred.early().unwrap().decision, Decision::Allow);
        let refused = g
            .refuse_input(publish(0.0), "malformed message: truncated".into())
            .await;
        assert_eq!(refused.early().unwrap().outcome, Outcome::InputRefused);
        let ids: Vec<AuditId> = [
            awaited,
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
            .zip(["allow", "allow", "deny", "allow", "input"])
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
        let p = g
            .decide(publish(0.5), None, &Params, Durability::BeforeActing)
            .await;
        assert!(p.early().is_none());
        let r = p.durable().await;
        assert_eq!(r.decision, Decision::Deny);
        assert!(
            matches!(r.outcome, Outcome::WalUnavailable(_)),
            "{:?}",
            r.outcome
        );
        // The log stays failed: the next decision is refused at once.
        let p = g
            .decide(
                publish(0.5),
                None,
                &Params,
                Durability::Deferred {
                    flush_within: std::time::Duration::ZERO,
                },
            )
            .await;
        assert_eq!(p.early().unwrap().decision, Decision::Deny);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bridged_calls_meet_limits_and_never_wait_for_approval() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = crate::limits::Limits::from_json(&json!({"limits": [
            {"agent": "bridge:*", "per_second": 1, "burst": 1}
        ]}))
        .unwrap();
        let policy = crate::policy::eval::RegoPolicy::compile(
            PolicyRef::new("t"),
            &[(
                "p.rego".into(),
                "package autonomy\ndefault allow := false\nallow if input.params.topic == \"/cmd_vel\"\napproval if input.params.message.linear.x > 0.9\n".into(),
            )],
            None,
        )
        .unwrap();
        let (wal, _) = Wal::open(tmp.path(), crate::wal::WalOptions::default()).unwrap();
        let tools = Tools::new(
            crate::tools::Allowlist::empty(),
            crate::tools::HttpGetLimits::default(),
        );
        let g = Arc::new(
            Gate::new(
                Arc::new(ActivePolicy::new(Box::new(policy))),
                Arc::new(wal),
                tools,
            )
            .with_options(GateOptions {
                limits: Some(limits),
                ..GateOptions::default()
            }),
        );
        g.open();
        let first = g
            .decide(publish(0.5), None, &Params, Durability::BeforeActing)
            .await;
        let first = first.durable().await;
        assert_eq!(first.decision, Decision::Allow);
        let second = g
            .decide(publish(0.5), None, &Params, Durability::BeforeActing)
            .await;
        let second = second.durable().await;
        assert_eq!(second.decision, Decision::Deny);
        assert_eq!(second.reason.as_deref(), Some(RATE_LIMITED));
        assert!(matches!(second.outcome, Outcome::RateLimited(_)));
        // A bridged message cannot wait for a person: an ask is a deny.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let ask = g
            .decide(publish(0.95), None, &Params, Durability::BeforeActing)
            .await;
        let ask = ask.durable().await;
        assert_eq!(ask.decision, Decision::Deny);
        assert!(ask.reason.unwrap().contains("asks for approval"));
        let recs = crate::wal::read_records(tmp.path()).unwrap();
        let layers: Vec<(Decision, Layer)> = recs
            .iter()
            .map(|r| match r.body().unwrap() {
                crate::record::Body::Decision(d) => {
                    assert_eq!(d.agent.as_deref(), Some("bridge:/cmd_vel"));
                    (d.decision, d.layer)
                }
                _ => panic!("not a decision"),
            })
            .collect();
        assert_eq!(
            layers,
            [
                (Decision::Allow, Layer::Policy),
                (Decision::Deny, Layer::Limit),
                (Decision::Deny, Layer::Policy)
            ]
        );
    }

    fn gate_with(dir: &std::path::Path, rego: &str, shadow: bool) -> Arc<Gate> {
        let policy = crate::policy::eval::RegoPolicy::compile(
            PolicyRef::new("clamp"),
            &[("p.rego".into(), rego.into())],
            None,
        )
        .unwrap();
        let (wal, _) = Wal::open(dir, crate::wal::WalOptions::default()).unwrap();
        let tools = Tools::new(
            crate::tools::Allowlist::empty(),
            crate::tools::HttpGetLimits::default(),
        );
        let g = Arc::new(
            Gate::new(
                Arc::new(ActivePolicy::new(Box::new(policy))),
                Arc::new(wal),
                tools,
            )
            .with_options(GateOptions {
                shadow,
                ..GateOptions::default()
            }),
        );
        g.open();
        g
    }

    fn decisions(dir: &std::path::Path) -> Vec<DecisionRecord<'static>> {
        crate::wal::read_records(dir)
            .unwrap()
            .iter()
            .filter_map(|r| match r.body().unwrap() {
                crate::record::Body::Decision(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    const CLAMP: &str = "package autonomy
default allow := false
x := input.params.message.linear.x
allow if x <= 1.0
reason := \"too fast\" if x > 1.0
patch := {\"message\": {\"linear\": {\"x\": 1.0}}} if x > 1.0
";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patched_call_the_policy_allows_is_a_downgrade_with_both_values_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let g = gate_with(tmp.path(), CLAMP, false);
        let r = g
            .decide(publish(3.0), None, &Params, Durability::BeforeActing)
            .await
            .durable()
            .await;
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(r.outcome, Outcome::DecisionOnly);
        let d = r.downgrade.expect("a downgrade");
        // Rego spells 1.0 as 1: the same number.
        assert!(patch::same(
            &Value::Object(d.patch),
            &json!({"message": {"linear": {"x": 1.0}}})
        ));
        assert_eq!(d.patched.params["message"]["linear"]["x"], 1.0);
        // Named: the `reason` that refused 3.0 (line 5), then the `allow` that let 1.0 through
        // (line 4).
        let lines: Vec<(&str, u32)> = r.rules.iter().map(|x| (&*x.rule, x.line)).collect();
        assert_eq!(lines, [("reason", 5), ("allow", 4)]);
        // Within the limit: a plain allow.
        let plain = g
            .decide(publish(0.5), None, &Params, Durability::BeforeActing)
            .await
            .durable()
            .await;
        assert_eq!(plain.decision, Decision::Allow);
        assert!(plain.downgrade.is_none());
        let recs = decisions(tmp.path());
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].decision, Decision::Downgrade);
        assert_eq!(recs[0].rules.as_ref(), r.rules.as_slice());
        assert_eq!(
            recs[0].params.as_ref().unwrap()["message"]["linear"]["x"],
            3.0
        );
        assert_eq!(
            recs[0].patched.as_ref().unwrap()["message"]["linear"]["x"],
            1.0
        );
        assert_eq!(
            recs[0].patched.as_ref().unwrap()["message"]["angular"]["z"],
            0.0
        );
        assert!(patch::same(
            &Value::Object(recs[0].patch.as_deref().unwrap().clone()),
            &json!({"message": {"linear": {"x": 1}}})
        ));
        assert_eq!(recs[1].decision, Decision::Allow);
        assert!(recs[1].patched.is_none() && recs[1].patch.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patch_never_lets_through_a_call_the_policy_denies() {
        let tmp = tempfile::tempdir().unwrap();
        // The patched call is still over the limit: denied, with the policy's reason.
        let g = gate_with(
            tmp.path(),
            &CLAMP.replace("{\"x\": 1.0}", "{\"x\": 2.0}"),
            false,
        );
        let r = g
            .decide(publish(3.0), None, &Params, Durability::BeforeActing)
            .await
            .durable()
            .await;
        assert_eq!(r.decision, Decision::Deny);
        assert_eq!(
            r.reason.as_deref(),
            Some("the patched call is denied: too fast")
        );
        assert!(r.downgrade.is_none());
        // Named: the `reason` that refused the patched call.
        let lines: Vec<(&str, u32)> = r.rules.iter().map(|x| (&*x.rule, x.line)).collect();
        assert_eq!(lines, [("reason", 5)]);
        // A patch that changes nothing leaves the deny as it was.
        let tmp2 = tempfile::tempdir().unwrap();
        let g = gate_with(
            tmp2.path(),
            &CLAMP.replace("{\"x\": 1.0}", "{\"x\": 3}"),
            false,
        );
        let r = g
            .decide(publish(3.0), None, &Params, Durability::BeforeActing)
            .await
            .durable()
            .await;
        assert_eq!(r.reason.as_deref(), Some("too fast"));
        // A policy that patches every call again never settles: denied.
        let tmp3 = tempfile::tempdir().unwrap();
        let g = gate_with(
            tmp3.path(),
            "package autonomy\nallow := true\npatch := {\"n\": object.get(input.params, \"n\", 0) + 1}\n",
            false,
        );
        let r = g
            .decide(publish(0.1), None, &Params, Durability::BeforeActing)
            .await
            .durable()
            .await;
        assert_eq!(r.decision, Decision::Deny);
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("patches the patched call again"),
            "{r:?}"
        );
        // A patched call that asks for approval is not waited for.
        let tmp4 = tempfile::tempdir().unwrap();
        let g = gate_with(tmp4.path(), &format!("{CLAMP}approval if x == 1\n"), false);
        let r = g
            .decide(publish(3.0), None, &Params, Durability::BeforeActing)
            .await
            .durable()
            .await;
        assert_eq!(r.decision, Decision::Deny);
        assert!(
            r.reason.as_deref().unwrap().contains("asks for approval"),
            "{r:?}"
        );
        let recs = decisions(tmp.path());
        assert_eq!(recs[0].decision, Decision::Deny);
        assert!(recs[0].patched.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tool_runs_with_the_patched_params_that_it_must_accept() {
        let tmp = tempfile::tempdir().unwrap();
        let rego = "package autonomy
allow := input.params.message == \"ls\"
patch := {\"message\": \"ls\"} if input.params.message == \"rm -rf /\"
patch := {\"message\": 7} if input.params.message == \"seven\"
";
        let g = gate_with(tmp.path(), rego, false);
        let echo = |m: &str| ToolCall {
            kind: ToolKind::parse("tool.echo").unwrap(),
            params: serde_json::from_value(json!({"message": m})).unwrap(),
            source: Source::new("http"),
            agent: Agent::anonymous(),
        };
        let r = g.call(echo("rm -rf /")).await;
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(r.outcome, Outcome::Executed(json!("ls")));
        assert!(r.downgrade.is_some());
        let r = g.call(echo("seven")).await;
        assert_eq!(r.decision, Decision::Deny);
        assert_eq!(
            r.reason.as_deref(),
            Some(
                "the policy's patch does not fit the call: tool.echo: params.message must be a string"
            )
        );
        let recs = decisions(tmp.path());
        assert_eq!(recs[0].decision, Decision::Downgrade);
        assert_eq!(recs[0].params.as_ref().unwrap()["message"], "rm -rf /");
        assert_eq!(recs[0].patched.as_ref().unwrap()["message"], "ls");
        assert_eq!(recs[1].decision, Decision::Deny);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_shadow_mode_the_downgrade_is_recorded_and_the_original_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let rego = "package autonomy
allow := input.params.message == \"ls\"
patch := {\"message\": \"ls\"}
";
        let g = gate_with(tmp.path(), rego, true);
        let r = g
            .call(ToolCall {
                kind: ToolKind::parse("tool.echo").unwrap(),
                params: serde_json::from_value(json!({"message": "rm -rf /"})).unwrap(),
                source: Source::new("http"),
                agent: Agent::anonymous(),
            })
            .await;
        assert_eq!(r.outcome, Outcome::Executed(json!("rm -rf /")));
        assert!(r.downgrade.is_none());
        assert_eq!(r.shadow.unwrap().decision, Decision::Downgrade);
        let b = g
            .decide(publish(3.0), None, &Params, Durability::BeforeActing)
            .await
            .durable()
            .await;
        assert!(b.downgrade.is_none());
        assert_eq!(b.shadow.unwrap().decision, Decision::Downgrade);
        let recs = decisions(tmp.path());
        for r in &recs {
            assert_eq!(r.decision, Decision::Downgrade);
            assert_eq!(r.shadow, Some(true));
            assert!(r.patched.is_some());
        }
        assert_eq!(recs.len(), 2);
        assert_eq!(metrics_decision_of(&g, "shadow_downgrade"), 2);
    }

    fn metrics_decision_of(g: &Gate, decision: &str) -> usize {
        let text = g.metrics().render();
        text.lines()
            .filter(|l| {
                l.starts_with("autonomy_decisions_total")
                    && l.contains(&format!("decision=\"{decision}\""))
            })
            .count()
    }
}
