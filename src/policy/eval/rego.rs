//! Rego policies evaluated in-process with regorus.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use regorus::Engine;
use regorus::utils::limits::ExecutionTimerConfig;

use super::deps::{self, Deps, DepsError};
use super::fast::{FastRule, NoFastPath};
use super::provenance::{
    ALLOW_WITH_RULES, APPROVAL_RULES, DENY_WHY, Deciding, Plan, Provenance, RuleRef,
};
use super::reason::{Explained, Key, NoMemo, ReasonMemo};
use super::{PolicyEvaluator, PolicyInput, Pool, Verdict};
use crate::policy::message::{MAX_CHARS, one_line};
use crate::types::PolicyRef;

/// The rule that decides.
pub const ALLOW_RULE: &str = "data.autonomy.allow";
/// The optional rule that explains a deny.
pub const REASON_RULE: &str = "data.autonomy.reason";
/// The optional rule that asks a person to approve an allowed call.
pub const APPROVAL_RULE: &str = "data.autonomy.approval";
/// The optional rule that says why approval is asked.
pub const APPROVAL_REASON_RULE: &str = "data.autonomy.approval_reason";
/// The optional rule that offers a modified call (a downgrade): a JSON Merge Patch object.
pub const PATCH_RULE: &str = "data.autonomy.patch";
/// The reason of a deny whose policy gives none.
pub const DEFAULT_REASON: &str = "denied by policy";
/// Set to `off` to evaluate every deny's reason (no [`ReasonMemo`]).
pub const MEMO_ENV: &str = "AUTONOMY_REASON_MEMO";
/// Default per-evaluation time limit.
pub const DEFAULT_EVAL_LIMIT: Duration = Duration::from_millis(50);

/// Why a set of Rego modules cannot become a policy.
#[derive(Debug, thiserror::Error)]
pub enum RegoPolicyError {
    /// A module does not parse or compile.
    #[error("{file}: {message}")]
    Compile {
        /// The module's file name.
        file: String,
        /// The compiler's message.
        message: String,
    },
    /// `data.json` is not valid.
    #[error("data: {0}")]
    Data(String),
    /// No `package autonomy` with an `allow` rule.
    #[error("entry point missing: {0}")]
    EntryPoint(String),
    /// A rule depends on itself, or evaluation could nest deeper than the stack budget.
    #[error(transparent)]
    Deps(#[from] DepsError),
    /// The bundle's `data.json` key `limits` is not a valid limits list.
    #[error("data.json: {0}")]
    Limits(#[from] crate::limits::LimitsError),
}

/// A compiled Rego policy with a pool of engines (regorus engines need `&mut` to evaluate).
pub struct RegoPolicy {
    policy_ref: PolicyRef,
    template: Engine,
    has_reason: bool,
    /// Whether the policy has an `approval` rule (then every allow also evaluates it).
    has_approval: bool,
    /// Whether the policy has a `patch` rule (then every call also evaluates it); without one a
    /// call costs what it did before downgrades existed.
    has_patch: bool,
    pool: Pool<Engine>,
    /// The VM fast path for `allow` and how it names the rules behind an allow, or why this
    /// policy has none.
    fast: Result<(FastRule, AllowRules), NoFastPath>,
    /// The VM fast path for a deny's explanation ([`DENY_WHY`]), where it has one.
    fast_why: Option<FastRule>,
    /// A deny's explanation from one VM run of `reason` that records which of its definitions
    /// gave it (entry `d`: the tracked definition of the VM's definition `d`), with the `allow`
    /// definitions the `allow` run recorded; where `allow`'s rules are recorded too and no
    /// `deny` rule is tracked. Takes the place of [`DENY_WHY`]'s twins.
    fast_reason: Option<(FastRule, Vec<usize>)>,
    /// The deny explanations already evaluated, or why they are evaluated every time.
    memo: Result<ReasonMemo, NoMemo>,
    /// How deep evaluating it may go.
    deps: Deps,
    /// Its deciding rules' definitions, to name those behind each verdict.
    provenance: Provenance,
    /// Only watching: see [`PolicyEvaluator::shadow`].
    shadow: bool,
    /// Its rate limits, if it came with any.
    limits: Option<std::sync::Arc<crate::limits::Limits>>,
}

impl RegoPolicy {
    /// Compiles `modules` (file name, source) with optional `data`; checks the entry point.
    pub fn compile(
        policy_ref: PolicyRef,
        modules: &[(String, String)],
        data: Option<serde_json::Value>,
    ) -> Result<Self, RegoPolicyError> {
        Self::compile_with_limit(policy_ref, modules, data, DEFAULT_EVAL_LIMIT)
    }

    /// As [`RegoPolicy::compile`], with an explicit evaluation time limit.
    pub fn compile_with_limit(
        policy_ref: PolicyRef,
        modules: &[(String, String)],
        data: Option<serde_json::Value>,
        limit: Duration,
    ) -> Result<Self, RegoPolicyError> {
        Self::compile_inner(policy_ref, modules, data, limit, true)
    }

    /// As [`RegoPolicy::compile`], naming no rules: what evaluation costs without provenance.
    #[cfg(test)]
    pub(crate) fn compile_without_provenance(
        policy_ref: PolicyRef,
        modules: &[(String, String)],
    ) -> Result<Self, RegoPolicyError> {
        Self::compile_inner(policy_ref, modules, None, DEFAULT_EVAL_LIMIT, false)
    }

    fn compile_inner(
        policy_ref: PolicyRef,
        modules: &[(String, String)],
        data: Option<serde_json::Value>,
        limit: Duration,
        provenance: bool,
    ) -> Result<Self, RegoPolicyError> {
        let mut engine = Engine::new();
        engine.set_rego_v0(false);
        engine.set_strict_builtin_errors(true);
        for (file, src) in modules {
            deps::check_source(file, src)?;
            engine
                .add_policy(file.clone(), src.clone())
                .map_err(|e| RegoPolicyError::Compile {
                    file: file.clone(),
                    message: one_line(&e.to_string(), MAX_CHARS),
                })?;
        }
        // Before anything walks the rules recursively (compiling does): recursion and depths
        // beyond the stack budget are refused here, with one line.
        let deps = deps::check(engine.get_modules())?;
        let (engine, deps, provenance) = if provenance {
            with_provenance(engine, deps, modules)
        } else {
            (engine, deps, Provenance::default())
        };
        on_stack(deps, || {
            Self::compiled(policy_ref, engine, data, limit, deps, provenance)
        })
    }

    /// The rest of [`RegoPolicy::compile_with_limit`], once the rules are known to be acyclic.
    fn compiled(
        policy_ref: PolicyRef,
        mut engine: Engine,
        data: Option<serde_json::Value>,
        limit: Duration,
        deps: Deps,
        provenance: Provenance,
    ) -> Result<Self, RegoPolicyError> {
        let data = data.map(regorus::Value::from);
        if let Some(d) = &data {
            engine
                .add_data(d.clone())
                .map_err(|e| RegoPolicyError::Data(e.to_string()))?;
        }
        // The limit is in force before anything is evaluated, so a pathological policy cannot
        // hang a build or a load either.
        let timer = ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN),
        };
        engine.set_execution_timer_config(timer);
        // Compiling for an entry point checks every module and that the rule exists, without
        // evaluating it.
        let compiled = match super::quiet::compile(|| {
            engine.compile_with_entrypoint(&ALLOW_RULE.into())
        }) {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                return Err(
                    if msg.contains("not a valid rule path") || msg.contains("rule") {
                        RegoPolicyError::EntryPoint(format!(
                            "the policy must define `package autonomy` with a rule `allow` ({})",
                            one_line(&msg, MAX_CHARS)
                        ))
                    } else {
                        RegoPolicyError::Compile {
                            file: "policy".into(),
                            message: one_line(&msg, MAX_CHARS),
                        }
                    },
                );
            }
        };
        // Where `allow` has the VM fast path, the rules behind it come from the same run: the
        // VM records which of its definitions held, or else evaluates the twins' pair.
        let fast = FastRule::new(&compiled, ALLOW_RULE, data.clone(), timer).map(|mut f| {
            if !provenance.tracks(Deciding::Allow) {
                return (f, AllowRules::Untracked);
            }
            let found = f.definitions(ALLOW_RULE).and_then(|(index, at)| {
                provenance
                    .definitions_of(Deciding::Allow, &at)
                    .map(|defs| (index, defs))
            });
            match found {
                Some((index, defs)) => {
                    f.track(index);
                    (f, AllowRules::Recorded(defs))
                }
                None => (f, AllowRules::Unnamed),
            }
        });
        let pair = matches!(fast, Ok((_, AllowRules::Unnamed)))
            .then(|| {
                super::quiet::compile(|| engine.compile_with_entrypoint(&ALLOW_WITH_RULES.into()))
                    .ok()
                    .and_then(|c| FastRule::new(&c, ALLOW_WITH_RULES, data.clone(), timer).ok())
            })
            .flatten();
        let fast = match pair {
            Some(f) => Ok((f, AllowRules::Pair)),
            None => fast,
        };
        match &fast {
            Ok(_) => tracing::debug!("policy {policy_ref}: allow runs on the regorus VM"),
            Err(why) => {
                tracing::debug!("policy {policy_ref}: allow runs on the interpreter: {why}")
            }
        }
        // A deny's reason and rules on the VM too, where `allow` is there.
        let fast_why = match &fast {
            Ok(_) if provenance.explains_denies() => {
                super::quiet::compile(|| engine.compile_with_entrypoint(&DENY_WHY.into()))
                    .ok()
                    .and_then(|c| FastRule::new(&c, DENY_WHY, data.clone(), timer).ok())
            }
            _ => None,
        };
        let reason =
            super::quiet::compile(|| engine.compile_with_entrypoint(&REASON_RULE.into())).ok();
        let has_reason = reason.is_some();
        let fast_reason = match (&fast, &reason) {
            (Ok((_, AllowRules::Recorded(_))), Some(c)) if !provenance.tracks(Deciding::Deny) => {
                FastRule::new(c, REASON_RULE, data.clone(), timer)
                    .ok()
                    .and_then(|mut f| {
                        if !provenance.tracks(Deciding::Reason) {
                            // A default alone: it names no rule.
                            return Some((f, Vec::new()));
                        }
                        let (index, at) = f.definitions(REASON_RULE)?;
                        let defs = provenance.definitions_of(Deciding::Reason, &at)?;
                        f.track(index);
                        Some((f, defs))
                    })
            }
            _ => None,
        };
        let has_approval =
            super::quiet::compile(|| engine.compile_with_entrypoint(&APPROVAL_RULE.into())).is_ok();
        let has_patch =
            super::quiet::compile(|| engine.compile_with_entrypoint(&PATCH_RULE.into())).is_ok();
        let memo = if std::env::var(MEMO_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
            Err(NoMemo::Off)
        } else {
            ReasonMemo::new(engine.get_modules())
        };
        if let Err(why) = &memo {
            tracing::debug!("policy {policy_ref}: deny reasons are evaluated every time: {why}");
        }
        Ok(RegoPolicy {
            policy_ref,
            template: engine,
            has_reason,
            has_approval,
            has_patch,
            pool: Pool::new(),
            fast,
            fast_why,
            fast_reason,
            memo,
            deps,
            provenance,
            shadow: false,
            limits: None,
        })
    }

    /// This policy, only watching (a bundle's `"mode": "shadow"`).
    pub fn with_shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// This policy, with the rate limits its bundle brought.
    pub fn with_limits(mut self, limits: Option<crate::limits::Limits>) -> Self {
        self.limits = limits.map(std::sync::Arc::new);
        self
    }

    /// How deep evaluating this policy may nest, and the stack that needs.
    pub fn deps(&self) -> Deps {
        self.deps
    }

    /// Whether `allow` has the VM fast path; `Err` says why not.
    pub fn fast_path(&self) -> Result<(), &NoFastPath> {
        self.fast.as_ref().map(|_| ())
    }

    /// Whether the VM names the rules behind an allow from the definitions it recorded (not
    /// from the twins' pair, nor leaving it to the interpreter).
    #[cfg(test)]
    pub(crate) fn allow_rules_recorded(&self) -> bool {
        matches!(self.fast, Ok((_, AllowRules::Recorded(_))))
    }

    /// Whether deny reasons are remembered; `Err` says why not.
    pub fn reason_memo(&self) -> Result<(), &NoMemo> {
        self.memo.as_ref().map(|_| ())
    }

    /// The interpreter's verdict alone (no VM, no remembered reason), for checking the fast
    /// paths against it.
    #[cfg(test)]
    pub(crate) fn evaluate_interpreted(&self, input: &PolicyInput<'_>) -> Verdict {
        on_stack(self.deps, || {
            let mut engine = self.pool.take().unwrap_or_else(|| self.template.clone());
            let v = self.eval_in(&mut engine, input.to_rego(), false, None);
            self.pool.put(engine);
            v
        })
    }

    /// Whether the VM decides this call on its own (allowed or denied, no hidden error), so
    /// the interpreter at most explains a deny.
    #[cfg(test)]
    pub(crate) fn vm_decides(&self, input: &PolicyInput<'_>) -> bool {
        match &self.fast {
            Ok((fast, how)) => on_stack(self.deps, || {
                let (allowed, denied) = self.fast_allow(fast, how, input.to_rego());
                allowed.is_some() || denied.is_some()
            }),
            Err(_) => false,
        }
    }

    /// Whether the VM explains this call's deny on its own (no hidden error).
    #[cfg(test)]
    pub(crate) fn vm_explains(&self, input: &PolicyInput<'_>) -> bool {
        let vm = self
            .fast_reason
            .as_ref()
            .map(|(f, _)| f)
            .or(self.fast_why.as_ref());
        vm.is_some_and(|f| on_stack(self.deps, || f.eval_value(input.to_rego()).is_some()))
    }

    /// Whether a deny is explained by one VM run of `reason` that records its rules (not by
    /// the twins of [`DENY_WHY`]).
    #[cfg(test)]
    pub(crate) fn reason_rules_recorded(&self) -> bool {
        self.fast_reason.is_some()
    }

    /// [`RegoPolicy::eval_in`] on a pooled engine.
    fn interpret(&self, input: regorus::Value, known_false: bool) -> Verdict {
        on_stack(self.deps, || self.interpret_here(input, known_false))
    }

    fn interpret_here(&self, input: regorus::Value, known_false: bool) -> Verdict {
        let key = match &self.memo {
            Ok(memo) if self.has_reason => memo.key(&input),
            _ => None,
        };
        let mut engine = self.pool.take().unwrap_or_else(|| self.template.clone());
        let v = self.eval_in(&mut engine, input, known_false, key);
        self.pool.put(engine);
        v
    }

    /// The interpreter's verdict; `known_false` when the VM has already found `allow` false
    /// (then only the reason is evaluated here). `key`: this input's key in the reason memo.
    fn eval_in(
        &self,
        engine: &mut Engine,
        input: regorus::Value,
        known_false: bool,
        key: Option<Key>,
    ) -> Verdict {
        engine.set_input(input);
        let (allow, rules) = if known_false {
            (regorus::Value::Bool(false), None)
        } else {
            match self.allow_in(engine) {
                Ok(v) => v,
                Err(e) => {
                    return Verdict::deny(format!(
                        "policy evaluation failed: {}",
                        one_line(&e.to_string(), MAX_CHARS)
                    ));
                }
            }
        };
        match allow {
            regorus::Value::Bool(true) => {
                // Without the definitions' results only an untracked `allow` (a default
                // alone) can be named.
                let rules = rules.unwrap_or_else(|| {
                    if self.provenance.tracks(Deciding::Allow) {
                        Vec::new()
                    } else {
                        self.provenance.allowed_by(&regorus::Value::Undefined)
                    }
                });
                let v = self.approval_in(engine, rules);
                self.patch_in(engine, v)
            }
            regorus::Value::Bool(false) => {
                let v = self.deny_in(engine, key);
                // A deny may offer a patch too (the clamp: over the limit, so not allowed as
                // asked); the gate runs the patched call only if the policy allows it as is.
                self.patch_in(engine, v)
            }
            regorus::Value::Undefined => {
                Verdict::deny("policy result undefined: data.autonomy.allow has no value")
            }
            other => Verdict::deny(format!(
                "policy result is not a boolean: data.autonomy.allow = {}",
                other.to_json_str().unwrap_or_else(|_| "?".into())
            )),
        }
    }
}

impl RegoPolicy {
    /// `allow`, with the rules behind it when they are tracked (`None`: not tracked, or the
    /// combined rule failed where `allow` alone may not: then `allow` alone decides); `Err`:
    /// why evaluating `allow` failed.
    #[allow(clippy::type_complexity)]
    fn allow_in(
        &self,
        engine: &mut Engine,
    ) -> Result<(regorus::Value, Option<Vec<Arc<RuleRef>>>), String> {
        if self.provenance.tracks(Deciding::Allow)
            && let Ok(regorus::Value::Array(pair)) = engine.eval_rule(ALLOW_WITH_RULES.to_string())
            && let Some(allow) = pair.first()
        {
            // `[true, set]` for an allow, `[allow]` for anything else.
            let rules = match (allow, pair.get(1)) {
                (regorus::Value::Bool(true), Some(set)) => Some(self.provenance.allowed_by(set)),
                _ => None,
            };
            return Ok((allow.clone(), rules));
        }
        engine
            .eval_rule(ALLOW_RULE.to_string())
            .map(|v| (v, None))
            .map_err(|e| e.to_string())
    }

    /// The verdict on a call `allow` denied: its reason and the rules behind it, remembered for
    /// `key` or evaluated (and then remembered when they evaluated without an error).
    fn deny_in(&self, engine: &mut Engine, key: Option<Key>) -> Verdict {
        let memo = self.memo.as_ref().ok();
        if let (Some(memo), Some(key)) = (memo, &key)
            && let Some(e) = memo.get(key)
        {
            return e.into_verdict();
        }
        let (reason, rules, clean) = if self.provenance.explains_denies()
            && let Ok(why) = engine.eval_rule(DENY_WHY.to_string())
        {
            let (reason, rules) = self.provenance.denied_by(&why);
            (reason, rules, true)
        } else {
            let (reason, clean) = if self.has_reason {
                match engine.eval_rule(REASON_RULE.to_string()) {
                    Ok(regorus::Value::String(s)) => (Some(s.to_string()), true),
                    Ok(_) => (None, true),
                    Err(_) => (None, false),
                }
            } else {
                (None, true)
            };
            let rules = self.provenance.denied_by(&regorus::Value::Undefined).1;
            (reason, rules, clean)
        };
        remembered(Explained { reason, rules }, memo.filter(|_| clean), key)
    }
}

/// The deny `e` explains, after keeping `e` in `memo` under `key` when there are both.
fn remembered(e: Explained, memo: Option<&ReasonMemo>, key: Option<Key>) -> Verdict {
    if let (Some(memo), Some(key)) = (memo, key) {
        memo.put(key, e.clone());
    }
    e.into_verdict()
}

impl Explained {
    /// The deny it explains.
    fn into_verdict(self) -> Verdict {
        Verdict {
            rules: self.rules,
            ..Verdict::deny(self.reason.unwrap_or_else(|| DEFAULT_REASON.to_string()))
        }
    }
}

impl RegoPolicy {
    /// The verdict on an allowed call: an allow, or an allow that asks for approval when the
    /// `approval` rule is true. An error in that rule denies (fail closed).
    fn approval_in(&self, engine: &mut Engine, mut rules: Vec<Arc<RuleRef>>) -> Verdict {
        if !self.has_approval {
            return Verdict {
                rules,
                ..Verdict::allow()
            };
        }
        match engine.eval_rule(APPROVAL_RULE.to_string()) {
            Ok(regorus::Value::Bool(true)) => {
                let reason = match engine.eval_rule(APPROVAL_REASON_RULE.to_string()) {
                    Ok(regorus::Value::String(s)) => Some(s.to_string()),
                    _ => None,
                };
                if self.provenance.tracks(Deciding::Approval)
                    && let Ok(set) = engine.eval_rule(APPROVAL_RULES.to_string())
                {
                    rules.extend(self.provenance.approval_by(&set));
                }
                Verdict {
                    approval: Some(super::Approval { reason }),
                    rules,
                    ..Verdict::allow()
                }
            }
            Ok(_) => Verdict {
                rules,
                ..Verdict::allow()
            },
            Err(e) => Verdict::deny(format!(
                "policy evaluation failed (approval rule): {}",
                one_line(&e.to_string(), MAX_CHARS)
            )),
        }
    }
}

impl RegoPolicy {
    /// `v` with the policy's `patch`, when it has the rule and the rule is defined. A patch that
    /// is not an object, or a rule that fails, denies (fail closed: the policy asked for a change
    /// that cannot be made).
    fn patch_in(&self, engine: &mut Engine, v: Verdict) -> Verdict {
        if !self.has_patch {
            return v;
        }
        match engine.eval_rule(PATCH_RULE.to_string()) {
            Ok(regorus::Value::Undefined) => v,
            Ok(p @ regorus::Value::Object(_)) => match serde_json::to_value(&p) {
                Ok(serde_json::Value::Object(patch)) => Verdict {
                    patch: Some(patch),
                    ..v
                },
                _ => Verdict::deny("policy result `patch` cannot be read as JSON"),
            },
            Ok(other) => Verdict::deny(format!(
                "policy result is not an object: data.autonomy.patch = {}",
                one_line(
                    &other.to_json_str().unwrap_or_else(|_| "?".into()),
                    MAX_CHARS
                )
            )),
            Err(e) => Verdict::deny(format!(
                "policy evaluation failed (patch rule): {}",
                one_line(&e.to_string(), MAX_CHARS)
            )),
        }
    }
}

impl PolicyEvaluator for RegoPolicy {
    fn evaluate(&self, input: &PolicyInput<'_>) -> Verdict {
        let input = input.to_rego();
        on_stack(self.deps, || self.evaluate_rego(input))
    }

    fn policy_ref(&self) -> &PolicyRef {
        &self.policy_ref
    }

    fn shadow(&self) -> bool {
        self.shadow
    }

    fn limits(&self) -> Option<&std::sync::Arc<crate::limits::Limits>> {
        self.limits.as_ref()
    }
}

impl RegoPolicy {
    /// Both engines, on a stack deep enough for this policy (see [`on_stack`]).
    fn evaluate_rego(&self, input: regorus::Value) -> Verdict {
        // Cheap: a regorus value's clone shares its maps.
        let (allowed, denied) = match &self.fast {
            Ok((fast, how)) => self.fast_allow(fast, how, input.clone()),
            Err(_) => (None, None),
        };
        let known_false = denied.is_some();
        if let Some(allow_false) = denied
            && !self.has_patch
        {
            // A deny without a patch to offer: its explanation may be remembered, and then no
            // engine is needed.
            let memo = self.memo.as_ref().ok().filter(|_| self.has_reason);
            let key = memo.and_then(|m| m.key(&input));
            if let (Some(memo), Some(key)) = (memo, &key)
                && let Some(e) = memo.get(key)
            {
                return e.into_verdict();
            }
            // Or the VM explains it, from a run that hid no error: `reason` with its rules
            // recorded, or else the twins.
            if let Some((fast, defs)) = &self.fast_reason
                && let Some((_, (reason, rules))) = fast.eval_tracked(input.clone(), |v, held| {
                    let reason = match v {
                        regorus::Value::String(s) => Some(s.to_string()),
                        _ => None,
                    };
                    // A definition that gave a value gave this one (two values conflict, an
                    // error, and then the run is not trusted); it names the deny only when the
                    // reason is a string, as with the twins.
                    let held = held
                        .iter()
                        .filter(|_| reason.is_some())
                        .filter_map(|d| defs.get(*d).copied());
                    let rules = self
                        .provenance
                        .denied_by_definitions(allow_false.iter().copied(), held);
                    (reason, rules)
                })
            {
                return remembered(Explained { reason, rules }, memo, key);
            }
            if let Some(why) = self
                .fast_why
                .as_ref()
                .and_then(|f| f.eval_value(input.clone()))
            {
                let (reason, rules) = self.provenance.denied_by(&why);
                return remembered(Explained { reason, rules }, memo, key);
            }
        }
        if let Some(rules) = allowed {
            if !self.has_approval && !self.has_patch {
                return Verdict {
                    rules,
                    ..Verdict::allow()
                };
            }
            let mut engine = self.pool.take().unwrap_or_else(|| self.template.clone());
            engine.set_input(input);
            let v = self.approval_in(&mut engine, rules);
            let v = self.patch_in(&mut engine, v);
            self.pool.put(engine);
            return v;
        }
        self.interpret(input, known_false)
    }

    /// The VM's answer: `(Some(rules), None)` allowed by those rules, `(None, Some(defs))`
    /// denied (`allow` is false; `defs`: the tracked `allow` definitions that gave it, when the
    /// VM records them), `(None, None)` unsure (the interpreter decides).
    #[allow(clippy::type_complexity)]
    fn fast_allow(
        &self,
        fast: &FastRule,
        how: &AllowRules,
        input: regorus::Value,
    ) -> (Option<Vec<Arc<RuleRef>>>, Option<Vec<usize>>) {
        let mut held_false = Vec::new();
        let (allow, rules) = match how {
            AllowRules::Recorded(defs) => {
                let named = fast.eval_tracked(input, |v, held| {
                    let held = held.iter().filter_map(|d| defs.get(*d).copied());
                    if *v == regorus::Value::Bool(true) {
                        (
                            Some(self.provenance.allowed_by_definitions(held)),
                            Vec::new(),
                        )
                    } else {
                        (None, held.collect())
                    }
                });
                match named {
                    Some((v, (rules, held))) => {
                        held_false = held;
                        (v, rules)
                    }
                    None => return (None, None),
                }
            }
            AllowRules::Pair => match fast.eval_value(input) {
                Some(regorus::Value::Array(pair)) => match (pair.first(), pair.get(1)) {
                    (Some(regorus::Value::Bool(true)), set) => (
                        regorus::Value::Bool(true),
                        Some(
                            self.provenance
                                .allowed_by(set.unwrap_or(&regorus::Value::Undefined)),
                        ),
                    ),
                    (Some(v), _) => (v.clone(), None),
                    _ => return (None, None),
                },
                _ => return (None, None),
            },
            AllowRules::Untracked | AllowRules::Unnamed => match fast.eval_value(input) {
                Some(v) => (v, None),
                None => return (None, None),
            },
        };
        match (allow, rules, how) {
            (regorus::Value::Bool(true), Some(rules), _) => (Some(rules), None),
            (regorus::Value::Bool(true), None, AllowRules::Untracked) => (
                Some(self.provenance.allowed_by(&regorus::Value::Undefined)),
                None,
            ),
            (regorus::Value::Bool(false), _, _) => (None, Some(held_false)),
            // `allow` is tracked but the VM cannot name its rules (`Unnamed`): the interpreter
            // decides an allow, so the rules behind it are named. Anything else is unsure.
            _ => (None, None),
        }
    }
}

/// How the VM fast path names the rules behind an allow.
#[derive(Debug)]
enum AllowRules {
    /// `allow` has no definitions to name (at most its default).
    Untracked,
    /// The VM records which definitions of `allow` held; entry `d` is the tracked definition
    /// (see [`Provenance::definitions_of`]) of the VM's definition `d`.
    Recorded(Vec<usize>),
    /// The VM evaluates [`ALLOW_WITH_RULES`], the twins' pair.
    Pair,
    /// The VM cannot name them: it decides denies, the interpreter allows.
    Unnamed,
}

/// `engine` with the deciding rules' twins added (see [`super::provenance`]), when it has any.
/// Provenance is never a reason to refuse a policy: if the twins do not compile, the policy is
/// used as written, naming no rules (with a warning).
fn with_provenance(
    mut engine: Engine,
    deps: Deps,
    modules: &[(String, String)],
) -> (Engine, Deps, Provenance) {
    let plan = Plan::new(engine.get_modules());
    if plan.module.is_none() {
        return (engine, deps, plan.provenance);
    }
    match twin_engine(plan, modules) {
        Ok(twin) => twin,
        Err(e) => {
            tracing::warn!("rule provenance is off for this policy: {e}");
            (engine, deps, Provenance::default())
        }
    }
}

/// A second engine from the same sources with `plan`'s twins appended, and its depths.
fn twin_engine(
    plan: Plan,
    modules: &[(String, String)],
) -> Result<(Engine, Deps, Provenance), String> {
    let mut twin = Engine::new();
    twin.set_rego_v0(false);
    twin.set_strict_builtin_errors(true);
    for (file, src) in modules {
        let mut src = src.clone();
        for (f, extra) in &plan.appended {
            if f == file {
                src.push_str(extra);
            }
        }
        twin.add_policy(file.clone(), src)
            .map_err(|e| format!("{file}: {e}"))?;
    }
    if let Some((file, src)) = &plan.module {
        twin.add_policy(file.clone(), src.clone())
            .map_err(|e| format!("{file}: {e}"))?;
    }
    let deps = deps::check(twin.get_modules()).map_err(|e| e.to_string())?;
    Ok((twin, deps, plan.provenance))
}

/// Runs `f` where at least the stack `deps` needs is free: inline when the calling thread has
/// it (the common case: a shallow policy on any runtime thread), else on a fresh stack of that
/// size on this thread. regorus recurses on the native stack and an overflow aborts the process,
/// so nothing may compile or evaluate a policy except through here.
fn on_stack<R>(deps: Deps, f: impl FnOnce() -> R) -> R {
    let need = deps.stack_need();
    stacker::maybe_grow(need, need, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::eval::demo_policy;
    use crate::types::Decision;
    use crate::types::{Source, ToolKind};
    use serde_json::Map;

    /// `p`'s verdict on an HTTP call of `kind` with `params` (a JSON object).
    fn decide_call(p: &RegoPolicy, kind: &str, params: serde_json::Value) -> Verdict {
        super::super::with_call(kind, &params, |input| p.evaluate(input))
    }

    fn decide(p: &RegoPolicy, kind: &str) -> Verdict {
        decide_call(p, kind, serde_json::json!({}))
    }

    /// The `allow` twins run only for an allow: a deny's pair is `[false]`, so a flood of denied
    /// calls does not pay for naming allow rules it never shows.
    #[test]
    fn a_deny_evaluates_no_allow_twins() {
        let modules = vec![("demo.rego".to_string(), super::super::DEMO_REGO.to_string())];
        let mut plain = Engine::new();
        plain.set_rego_v0(false);
        plain
            .add_policy(modules[0].0.clone(), modules[0].1.clone())
            .unwrap();
        let (mut twin, _, _) = twin_engine(Plan::new(plain.get_modules()), &modules).unwrap();
        let pair = |engine: &mut Engine, kind: &str| {
            engine.set_input(regorus::Value::from(serde_json::json!({"kind": kind})));
            engine.eval_rule(ALLOW_WITH_RULES.to_string()).unwrap()
        };
        assert_eq!(
            pair(&mut twin, "tool.shell"),
            regorus::Value::from(vec![regorus::Value::Bool(false)])
        );
        let allowed = pair(&mut twin, "tool.echo");
        let allowed = allowed.as_array().unwrap();
        assert_eq!(allowed.len(), 2);
        assert_eq!(allowed[0], regorus::Value::Bool(true));
        assert_eq!(allowed[1].as_set().unwrap().len(), 1);
    }

    #[test]
    fn rego_input_equals_the_json_input() {
        let k = ToolKind::parse("tool.http_get").unwrap();
        let params: Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"url":"https://a.b/c","n":[1,2.5,-3,1e300],"o":{"x":null,"y":true},"s":"\u00e9"}"#,
        )
        .unwrap();
        let domains = vec!["a.b".to_string(), "c.d:8080".to_string()];
        let input = PolicyInput {
            kind: &k,
            params: &params,
            source: Source::new("ros2"),
            agent: &crate::types::Agent::anonymous(),
            allowed_domains: &domains,
            extra: None,
        };
        assert_eq!(input.to_rego(), regorus::Value::from(input.to_json()));
        let empty = Map::new();
        let input = PolicyInput {
            kind: &k,
            params: &empty,
            source: Source::new("http"),
            agent: &crate::types::Agent::anonymous(),
            allowed_domains: &[],
            extra: None,
        };
        assert_eq!(input.to_rego(), regorus::Value::from(input.to_json()));
        // A front end's extra fields appear beside the four; they never replace one of them.
        let extra: Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"rate":12.5,"kind":"tool.shell","source":"forged","agent":"root"}"#,
        )
        .unwrap();
        let input = PolicyInput {
            kind: &k,
            params: &params,
            source: Source::new("bridge"),
            agent: &crate::types::Agent::anonymous(),
            allowed_domains: &[],
            extra: Some(&extra),
        };
        let json = input.to_json();
        assert_eq!(json["rate"], 12.5);
        assert_eq!(json["kind"], "tool.http_get");
        assert_eq!(json["source"], "bridge");
        assert_eq!(json["agent"], "anonymous");
        assert_eq!(json.as_object().unwrap().len(), 6);
        assert_eq!(input.to_rego(), regorus::Value::from(json));
    }

    #[test]
    fn the_twins_of_the_shipped_policies_compile() {
        for (file, src) in [
            ("demo.rego", crate::policy::eval::DEMO_REGO),
            ("bridge_demo.rego", crate::policy::eval::BRIDGE_DEMO_REGO),
        ] {
            let modules = [(file.to_string(), src.to_string())];
            let mut engine = Engine::new();
            engine.set_rego_v0(false);
            engine.add_policy(file.into(), src.into()).unwrap();
            let plan = Plan::new(engine.get_modules());
            let module = plan.module.clone();
            let appended = plan.appended.clone();
            if let Err(e) = twin_engine(plan, &modules) {
                panic!("{e}\n{appended:?}\n{module:?}");
            }
        }
    }

    #[test]
    fn demo_table() {
        let p = demo_policy().unwrap();
        assert_eq!(decide(&p, "tool.echo").decision, Decision::Allow);
        assert_eq!(decide(&p, "tool.http_get").decision, Decision::Allow);
        assert_eq!(decide(&p, "tool.ros2.launch").decision, Decision::Allow);
        let s = decide(&p, "tool.shell");
        assert_eq!(s.decision, Decision::Deny);
        assert!(s.reason.unwrap().contains("always blocked by policy"));
        let u = decide(&p, "tool.unknown");
        assert_eq!(u.decision, Decision::Deny);
        assert!(u.reason.unwrap().contains("tool.unknown"));
    }

    #[test]
    fn non_boolean_and_errors_deny() {
        let p = RegoPolicy::compile(
            PolicyRef::new("t"),
            &[("p.rego".into(), "package autonomy\nallow := \"yes\"".into())],
            None,
        )
        .unwrap();
        let v = decide(&p, "tool.echo");
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.reason.unwrap().contains("not a boolean"));

        let p = RegoPolicy::compile(
            PolicyRef::new("t"),
            &[(
                "p.rego".into(),
                "package autonomy\nallow if input.kind == \"tool.echo\"".into(),
            )],
            None,
        )
        .unwrap();
        let v = decide(&p, "tool.shell");
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.reason.unwrap().contains("undefined"));
    }

    #[test]
    fn evaluation_over_the_time_limit_denies() {
        let p = RegoPolicy::compile_with_limit(
            PolicyRef::new("slow"),
            &[(
                "p.rego".into(),
                "package autonomy\nallow if count([x | some x in numbers.range(1, 3000); some y in numbers.range(1, 3000)]) > 0"
                    .into(),
            )],
            None,
            Duration::from_millis(20),
        )
        .unwrap();
        let t = std::time::Instant::now();
        let v = decide(&p, "tool.echo");
        assert_eq!(v.decision, Decision::Deny);
        assert!(
            v.reason
                .as_deref()
                .unwrap_or("")
                .contains("policy evaluation failed"),
            "{v:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn builtin_errors_fail_closed() {
        // Strict builtin errors: a type error fails the evaluation (deny). Without them `h`
        // would be undefined and `not h` would allow (OPA's default, and regorus's VM).
        let src = "package autonomy\nh := x if { x := split(input.params.endpoint, \"/\") }\nallow if not h\n";
        let p = RegoPolicy::compile(PolicyRef::new("t"), &[("p.rego".into(), src.into())], None)
            .unwrap();
        let k = ToolKind::parse("tool.echo").unwrap();
        let eval = |params: &str| {
            let params: Map<String, serde_json::Value> = serde_json::from_str(params).unwrap();
            p.evaluate(&PolicyInput {
                kind: &k,
                params: &params,
                source: Source::new("http"),
                agent: &crate::types::Agent::anonymous(),
                allowed_domains: &[],
                extra: None,
            })
        };
        let v = eval(r#"{"endpoint":7}"#);
        assert_eq!(v.decision, Decision::Deny, "{v:?}");
        assert!(v.reason.unwrap().contains("policy evaluation failed"));
        // Undefined without an error still takes `not` as OPA does.
        assert_eq!(eval("{}").decision, Decision::Allow);
    }

    fn decide_params(p: &RegoPolicy, params: serde_json::Value) -> Verdict {
        decide_call(p, "tool.echo", params)
    }

    #[test]
    fn the_patch_rule_is_read_on_allow_and_on_deny() {
        // `allow` on the VM fast path and through the interpreter alike.
        let src = "package autonomy\ndefault allow := false\nallow if input.params.n <= 3\nreason := \"too many\" if input.params.n > 3\npatch := {\"n\": 3} if input.params.n > 2\n";
        let p = RegoPolicy::compile(PolicyRef::new("t"), &[("p.rego".into(), src.into())], None)
            .unwrap();
        assert!(p.has_patch);
        let over = decide_params(&p, serde_json::json!({"n": 9}));
        assert_eq!(over.decision, Decision::Deny);
        assert_eq!(over.reason.as_deref(), Some("too many"));
        assert_eq!(
            over.patch.map(serde_json::Value::Object),
            Some(serde_json::json!({"n": 3}))
        );
        let at = decide_params(&p, serde_json::json!({"n": 3}));
        assert_eq!(at.decision, Decision::Allow);
        assert_eq!(
            at.patch.map(serde_json::Value::Object),
            Some(serde_json::json!({"n": 3}))
        );
        let under = decide_params(&p, serde_json::json!({"n": 1}));
        assert_eq!((under.decision, under.patch), (Decision::Allow, None));
        // The allow names its definition (line 3), patch or not.
        assert_eq!(under.rules.len(), 1, "{:?}", under.rules);
        assert_eq!(under.rules[0].line, 3);
        let interpreted = p.evaluate_interpreted(&PolicyInput {
            kind: &ToolKind::parse("tool.echo").unwrap(),
            params: serde_json::json!({"n": 9}).as_object().unwrap(),
            source: Source::new("http"),
            agent: &crate::types::Agent::anonymous(),
            allowed_domains: &[],
            extra: None,
        });
        assert_eq!(
            interpreted.patch.map(serde_json::Value::Object),
            Some(serde_json::json!({"n": 3}))
        );
    }

    #[test]
    fn a_patch_that_is_not_an_object_denies() {
        for (rule, want) in [
            (
                "patch := 3",
                "policy result is not an object: data.autonomy.patch = 3",
            ),
            (
                "patch := x if { x := {\"n\": to_number(input.params.s)} }",
                "policy evaluation failed (patch rule)",
            ),
        ] {
            let src = format!("package autonomy\nallow := true\n{rule}\n");
            let p =
                RegoPolicy::compile(PolicyRef::new("t"), &[("p.rego".into(), src)], None).unwrap();
            let v = decide_params(&p, serde_json::json!({"s": "x"}));
            assert_eq!(v.decision, Decision::Deny, "{rule}");
            assert!(v.reason.as_deref().unwrap().contains(want), "{rule}: {v:?}");
        }
    }

    #[test]
    fn without_a_patch_rule_nothing_is_evaluated_for_it() {
        let p = demo_policy().unwrap();
        assert!(!p.has_patch);
        let v = decide(&p, "tool.echo");
        assert_eq!(
            (v.decision, v.patch, v.approval),
            (Decision::Allow, None, None)
        );
    }

    #[test]
    fn missing_entry_point_is_rejected() {
        let r = RegoPolicy::compile(
            PolicyRef::new("t"),
            &[("p.rego".into(), "package other\nallow := true".into())],
            None,
        );
        assert!(matches!(r, Err(RegoPolicyError::EntryPoint(_))));
        let r = RegoPolicy::compile(
            PolicyRef::new("t"),
            &[("p.rego".into(), "package autonomy\nallow if {".into())],
            None,
        );
        assert!(r.is_err());
    }

    fn chain(levels: usize, link: &dyn Fn(usize) -> String, last: &str) -> String {
        let mut src = String::from("package autonomy\ndefault allow := false\nallow if a0\n");
        for i in 0..levels {
            src.push_str(&link(i));
            src.push('\n');
        }
        src.push_str(last);
        src
    }

    #[test]
    fn deep_policies_evaluate_on_a_small_stack() {
        // A thread with far less stack than these chains need: evaluation must move to a stack
        // of the size the policy's depth calls for, for the VM and for the interpreter alike.
        let rules = chain(
            1000,
            &|i| format!("a{i} if a{}", i + 1),
            "a1000 if input.kind == \"tool.echo\"",
        );
        let functions = chain(
            1000,
            &|i| format!("f{i}(x) := f{}(x)", i + 1),
            "f1000(x) := x == \"tool.echo\"\na0 if f0(input.kind)",
        );
        for (name, src, fast) in [("rules", rules, true), ("functions", functions, false)] {
            // A generous time limit: this is about the stack, and an unoptimised build under
            // load can take longer than the default 50 ms for 1,000 levels.
            let p = RegoPolicy::compile_with_limit(
                PolicyRef::new(name),
                &[("p.rego".into(), src)],
                None,
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.fast_path().is_ok(), fast, "{name}: {:?}", p.fast_path());
            assert!(p.deps().depth > 1000, "{name}: {:?}", p.deps());
            let p = std::sync::Arc::new(p);
            let (echo, shell) = std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || (decide(&p, "tool.echo"), decide(&p, "tool.shell")))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(echo.decision, Decision::Allow, "{name}: {echo:?}");
            assert_eq!(shell.decision, Decision::Deny, "{name}: {shell:?}");
        }
    }

    #[test]
    fn ordinary_policies_evaluate_inline_on_a_runtime_thread() {
        // A runtime (tokio) thread has a 2 MiB stack: the demo policy must fit well inside it,
        // so its evaluation never moves to a fresh stack (no cost on the hot path).
        let need = demo_policy().unwrap().deps().stack_need();
        assert!(need < 1024 * 1024, "{need}");
    }

    #[test]
    fn recursion_and_depth_are_refused_at_compile() {
        let r = RegoPolicy::compile(
            PolicyRef::new("t"),
            &[(
                "p.rego".into(),
                "package autonomy\na if b\nb if a\nallow if a".into(),
            )],
            None,
        );
        assert!(
            matches!(&r, Err(RegoPolicyError::Deps(DepsError::Recursion(m))) if m.contains("rego_recursion_error")),
            "{:?}",
            r.err()
        );
        let long = chain(6000, &|i| format!("a{i} if a{}", i + 1), "a6000 := true");
        let r = RegoPolicy::compile(PolicyRef::new("t"), &[("p.rego".into(), long)], None);
        assert!(
            matches!(&r, Err(RegoPolicyError::Deps(DepsError::TooDeep(m))) if m.contains("6002 rules deep")),
            "{:?}",
            r.err()
        );
    }
}
