//! Rule provenance: which definitions of the deciding rules (`allow`, `reason`, `approval`, and
//! `deny` when a policy has one) decided a call, with their `file:line` and METADATA id.
//!
//! At compile time every definition of those rules in `package autonomy` gets a synthetic twin:
//! the same rule text with the head renamed to `__autonomy_rule_<n>`, appended to the end of the
//! same module (same package and imports, so every name resolves as in the original; the
//! original lines keep their numbers). A synthetic module gathers the twins that gave a value
//! into one partial set per rule (`__autonomy_rules_allow contains [n, value]`), and pairs each
//! decision with its set (`__autonomy_allow_rules := [true, __autonomy_rules_allow]` for an
//! allow, `[allow]` otherwise), so the decision and the rules behind it come from one
//! evaluation, with the interpreter. Where `allow` runs on the VM its twins are not needed: the
//! patched VM evaluates every `allow` definition once and records which held, and
//! [`Provenance::definitions_of`] matches them to these by where their bodies start. Only the
//! definitions of the rule that decided are ever evaluated twice, and only their bodies (the rules
//! they use are evaluated once per call).

use std::sync::Arc;

use regorus::unstable::{Expr, Module, Rule, RuleHead};
use serde::{Deserialize, Serialize};

/// The package whose rules decide.
pub const PACKAGE: &str = "autonomy";
/// Prefix of the synthetic names; a policy's own rules must not start with it.
pub const SYNTHETIC_PREFIX: &str = "__autonomy_";
/// `[allow, the allow definitions that gave a value]`.
pub const ALLOW_WITH_RULES: &str = "data.autonomy.__autonomy_allow_rules";
/// The parts of a deny's explanation: `["reason", r]`, and `["rules", set]` per deciding rule.
pub const DENY_WHY: &str = "data.autonomy.__autonomy_deny_why";
/// The approval definitions that gave a value.
pub const APPROVAL_RULES: &str = "data.autonomy.__autonomy_rules_approval";
/// File name of the synthetic module (never shown: its rules are not the policy's).
const MODULE_FILE: &str = "__autonomy_provenance.rego";

/// One rule definition that decided a call: where it is, and the author's id for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// The Rego package (`autonomy`).
    pub package: String,
    /// The rule's name (`allow`, `reason`, `approval`, `deny`).
    pub rule: String,
    /// The module's file name, as loaded (`policy.rego`, `ros/launch.rego`).
    pub file: String,
    /// The line the definition starts on (1-based).
    pub line: u32,
    /// The id the author gave it in a METADATA block (`custom: {id: …}`), if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
}

/// The rules whose definitions are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deciding {
    /// `allow`: decides.
    Allow,
    /// `reason`: explains a deny.
    Reason,
    /// `approval`: asks a person.
    Approval,
    /// `deny`: a deny set, when the policy's `allow` is written over one.
    Deny,
}

impl Deciding {
    const ALL: [Deciding; 4] = [
        Deciding::Allow,
        Deciding::Reason,
        Deciding::Approval,
        Deciding::Deny,
    ];

    /// The rule's name in Rego.
    pub fn name(self) -> &'static str {
        match self {
            Deciding::Allow => "allow",
            Deciding::Reason => "reason",
            Deciding::Approval => "approval",
            Deciding::Deny => "deny",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn of(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// One tracked definition.
#[derive(Debug)]
struct Def {
    rule: Deciding,
    at: Arc<RuleRef>,
}

/// A policy's tracked definitions, indexed by their synthetic number.
#[derive(Debug, Default)]
pub struct Provenance {
    defs: Vec<Def>,
    /// `default allow := …`, named when no definition gave the decision.
    default_allow: Option<Arc<RuleRef>>,
    /// Whether the policy has a `reason` rule (definitions or a default).
    has_reason: bool,
    /// Which rules have definitions (a bit per [`Deciding`]): asked on every evaluation.
    tracked: u8,
}

/// The source to add to a policy so its provenance can be evaluated.
#[derive(Debug, Default)]
pub struct Plan {
    /// The table to read evaluation results with.
    pub provenance: Provenance,
    /// Per module file (as loaded): the text to append to it.
    pub appended: Vec<(String, String)>,
    /// The synthetic module (`package autonomy`), when anything is tracked.
    pub module: Option<(String, String)>,
}

impl Plan {
    /// Finds the deciding rules' definitions in `modules` (as regorus parsed them) and writes
    /// their twins.
    pub fn new(modules: &[regorus::unstable::Ref<Module>]) -> Plan {
        let mut provenance = Provenance::default();
        let mut appended: Vec<(String, String)> = Vec::new();
        for m in modules {
            if package_of(m).as_deref() != Some(PACKAGE) {
                continue;
            }
            let mut extra = String::new();
            for rule in &m.policy {
                let (span, refr, is_default) = match rule.as_ref() {
                    Rule::Spec { span, head, .. } => match head {
                        RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => {
                            (span, refr, false)
                        }
                        // Functions are not decisions.
                        RuleHead::Func { .. } => continue,
                    },
                    Rule::Default { span, refr, .. } => (span, refr, true),
                };
                let Expr::Var { span: name, .. } = refr.as_ref() else {
                    continue;
                };
                let Some(which) = Deciding::of(name.text()) else {
                    continue;
                };
                let at = Arc::new(RuleRef {
                    package: PACKAGE.into(),
                    rule: which.name().into(),
                    file: span.source.file().clone(),
                    line: span.line,
                    id: metadata_id(span.source.contents(), span.line),
                });
                provenance.has_reason |= which == Deciding::Reason;
                if is_default {
                    if which == Deciding::Allow {
                        provenance.default_allow = Some(at);
                    }
                    continue;
                }
                let Some(text) = rule_text(span) else {
                    continue;
                };
                let Some(rest) = text.strip_prefix(name.text()) else {
                    continue;
                };
                let n = provenance.defs.len();
                extra.push_str(&format!("\n{SYNTHETIC_PREFIX}rule_{n}{rest}\n"));
                provenance.tracked |= which.bit();
                provenance.defs.push(Def { rule: which, at });
            }
            if !extra.is_empty() {
                appended.push((m.package.span.source.file().clone(), extra));
            }
        }
        let module = provenance.module();
        Plan {
            provenance,
            appended,
            module: module.map(|m| (MODULE_FILE.to_string(), m)),
        }
    }
}

/// A rule's source text. regorus's rule span ends where its last token's span does, and a
/// string token's span leaves out its closing quote: that quote is put back.
fn rule_text(span: &regorus::unstable::Span) -> Option<&str> {
    let src = span.source.contents().as_str();
    let (start, mut end) = (span.start as usize, span.end as usize);
    if matches!(src.get(end..end + 1), Some("\"") | Some("`")) {
        end += 1;
    }
    src.get(start..end)
}

/// `data.a.b` of a module's `package a.b`, without `data.`; `None` if not a plain path.
fn package_of(m: &Module) -> Option<String> {
    let mut parts = Vec::new();
    let mut cur = m.package.refr.as_ref();
    loop {
        match cur {
            Expr::Var { span, .. } => {
                parts.push(span.text().to_string());
                break;
            }
            Expr::RefDot { refr, field, .. } => {
                parts.push(field.0.text().to_string());
                cur = refr;
            }
            _ => return None,
        }
    }
    parts.reverse();
    Some(parts.join("."))
}

impl Provenance {
    /// Whether `rule` has definitions to track.
    pub fn tracks(&self, rule: Deciding) -> bool {
        self.tracked & rule.bit() != 0
    }

    /// Whether [`DENY_WHY`] exists.
    pub fn explains_denies(&self) -> bool {
        !self.defs.is_empty()
            && (self.has_reason
                || [Deciding::Allow, Deciding::Reason, Deciding::Deny]
                    .into_iter()
                    .any(|d| self.tracks(d)))
    }

    /// The synthetic module's source.
    fn module(&self) -> Option<String> {
        if self.defs.is_empty() {
            return None;
        }
        let mut src = format!("package {PACKAGE}\n\n");
        for (n, d) in self.defs.iter().enumerate() {
            src.push_str(&format!(
                "{SYNTHETIC_PREFIX}rules_{} contains [{n}, {SYNTHETIC_PREFIX}rule_{n}]\n",
                d.rule.name()
            ));
        }
        if self.tracks(Deciding::Allow) {
            // The twins run only for an allow: a deny's rules come from its explanation, so
            // evaluating them on every deny would be wasted work. The two definitions never
            // both hold, and an undefined `allow` leaves the pair undefined, as before.
            src.push_str(&format!(
                "\n{SYNTHETIC_PREFIX}allow_rules := [true, {SYNTHETIC_PREFIX}rules_allow] if allow == true\n\
                 {SYNTHETIC_PREFIX}allow_rules := [allow] if allow != true\n"
            ));
        }
        if self.has_reason {
            src.push_str(&format!(
                "\n{SYNTHETIC_PREFIX}deny_why contains [\"reason\", reason]\n"
            ));
        }
        for d in [Deciding::Allow, Deciding::Reason, Deciding::Deny] {
            if self.tracks(d) {
                src.push_str(&format!(
                    "{SYNTHETIC_PREFIX}deny_why contains [\"rules\", {SYNTHETIC_PREFIX}rules_{}]\n",
                    d.name()
                ));
            }
        }
        Some(src)
    }

    /// The definitions in `set` (a `rules_<rule>` value: `{[n, value], …}`) whose value
    /// `decided` accepts, in source order.
    fn matching(
        &self,
        set: &regorus::Value,
        decided: impl Fn(Deciding, &regorus::Value) -> bool,
        out: &mut Vec<Arc<RuleRef>>,
    ) {
        let regorus::Value::Set(items) = set else {
            return;
        };
        for item in items.iter() {
            let regorus::Value::Array(pair) = item else {
                continue;
            };
            let (Some(n), Some(v)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let Some(def) = n.as_u64().ok().and_then(|n| self.defs.get(n as usize)) else {
                continue;
            };
            if decided(def.rule, v) {
                out.push(def.at.clone());
            }
        }
    }

    /// The rules behind an allow: the `allow` definitions that gave `true` (from the
    /// [`ALLOW_WITH_RULES`] set), else the default.
    pub fn allowed_by(&self, set: &regorus::Value) -> Vec<Arc<RuleRef>> {
        let mut out = Vec::new();
        self.matching(set, |_, v| *v == regorus::Value::Bool(true), &mut out);
        if out.is_empty() {
            out.extend(self.default_allow.clone());
        }
        out
    }

    /// For each definition of `rule` as the VM numbers them (where each is, see
    /// [`FastRule::definitions`](super::fast::FastRule::definitions)), the tracked definition it is:
    /// the definition of `rule` in the same file that starts last at or before that line. `None`
    /// unless that pairs every VM definition with a different tracked one and leaves none out.
    pub fn definitions_of(
        &self,
        rule: Deciding,
        at: &[super::fast::DefinitionAt],
    ) -> Option<Vec<usize>> {
        let defs: Vec<(usize, &RuleRef)> = self
            .defs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.rule == rule)
            .map(|(n, d)| (n, d.at.as_ref()))
            .collect();
        if defs.len() != at.len() {
            return None;
        }
        let mut out = Vec::with_capacity(at.len());
        for a in at {
            let (n, _) = defs
                .iter()
                .filter(|(_, r)| r.file == a.file && r.line <= a.line)
                .max_by_key(|(_, r)| r.line)?;
            if out.contains(n) {
                return None;
            }
            out.push(*n);
        }
        Some(out)
    }

    /// The rules behind an allow from the tracked definitions that gave it (indices as
    /// [`Provenance::definitions_of`] returns them), in source order; else the default.
    pub fn allowed_by_definitions(&self, defs: impl Iterator<Item = usize>) -> Vec<Arc<RuleRef>> {
        let mut ns: Vec<usize> = defs.collect();
        ns.sort_unstable();
        ns.dedup();
        let mut out: Vec<Arc<RuleRef>> = ns
            .into_iter()
            .filter_map(|n| self.defs.get(n))
            .filter(|d| d.rule == Deciding::Allow)
            .map(|d| d.at.clone())
            .collect();
        if out.is_empty() {
            out.extend(self.default_allow.clone());
        }
        out
    }

    /// The rules behind a deny from the definitions the VM recorded (indices as
    /// [`Provenance::definitions_of`] returns them): the `allow` definitions that gave `false`
    /// and the `reason` definitions that gave the reason (the caller passes those only when the
    /// reason is a string), in source order; else the default `allow`. What
    /// [`Provenance::denied_by`] gives for a policy without a tracked `deny`.
    pub fn denied_by_definitions(
        &self,
        allow_false: impl Iterator<Item = usize>,
        reason: impl Iterator<Item = usize>,
    ) -> Vec<Arc<RuleRef>> {
        let pick = |rule: Deciding| {
            move |n: usize| {
                self.defs
                    .get(n)
                    .filter(|d| d.rule == rule)
                    .map(|d| d.at.clone())
            }
        };
        let out = allow_false
            .filter_map(pick(Deciding::Allow))
            .chain(reason.filter_map(pick(Deciding::Reason)))
            .collect();
        self.deny_rules(out)
    }

    /// The rules behind an approval request: the `approval` definitions that gave `true`.
    pub fn approval_by(&self, set: &regorus::Value) -> Vec<Arc<RuleRef>> {
        let mut out = Vec::new();
        self.matching(set, |_, v| *v == regorus::Value::Bool(true), &mut out);
        out
    }

    /// The reason and the rules behind a deny, from a [`DENY_WHY`] value: the `deny` definitions
    /// that added to the set, the `allow` definitions that gave `false`, and the `reason`
    /// definitions that gave the reason; else the default `allow`.
    pub fn denied_by(&self, why: &regorus::Value) -> (Option<String>, Vec<Arc<RuleRef>>) {
        let regorus::Value::Set(parts) = why else {
            return (None, self.default_allow.iter().cloned().collect());
        };
        let mut reason = None;
        for part in parts.iter() {
            if let regorus::Value::Array(kv) = part
                && is_tag(kv.first(), "reason")
                && let Some(regorus::Value::String(s)) = kv.get(1)
            {
                reason = Some(s.clone());
            }
        }
        let mut out = Vec::new();
        for part in parts.iter() {
            if let regorus::Value::Array(kv) = part
                && is_tag(kv.first(), "rules")
                && let Some(set) = kv.get(1)
            {
                self.matching(
                    set,
                    |rule, v| match rule {
                        Deciding::Allow => *v == regorus::Value::Bool(false),
                        Deciding::Reason => {
                            matches!((v, &reason), (regorus::Value::String(s), Some(r)) if s == r)
                        }
                        Deciding::Deny => match v {
                            regorus::Value::Set(s) => !s.is_empty(),
                            other => *other == regorus::Value::Bool(true),
                        },
                        Deciding::Approval => false,
                    },
                    &mut out,
                );
            }
        }
        (reason.map(|s| s.to_string()), self.deny_rules(out))
    }

    /// A deny's rules as named: in source order, each once; the default `allow` when none.
    fn deny_rules(&self, mut out: Vec<Arc<RuleRef>>) -> Vec<Arc<RuleRef>> {
        out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        out.dedup();
        if out.is_empty() {
            out.extend(self.default_allow.clone());
        }
        out
    }
}

/// Whether `v` is the string `tag` (the first item of a [`DENY_WHY`] pair).
fn is_tag(v: Option<&regorus::Value>, tag: &str) -> bool {
    matches!(v, Some(regorus::Value::String(s)) if &**s == tag)
}

/// The `custom.id` of the METADATA block directly above line `line` of `src`, if there is one.
///
/// The block is OPA's: comment lines directly above the rule, the first of them `# METADATA`,
/// the rest YAML (`custom:` with `id: X` under it, or `custom: {id: "X"}`).
pub fn metadata_id(src: &str, line: u32) -> Option<String> {
    let lines: Vec<&str> = src.lines().collect();
    let above = usize::try_from(line).ok()?.checked_sub(1)?;
    let mut start = above;
    while start > 0 && lines.get(start - 1)?.trim_start().starts_with('#') {
        start -= 1;
    }
    let block = lines.get(start..above)?;
    let header = block
        .iter()
        .rposition(|l| comment_text(l).trim() == "METADATA")?;
    let yaml: String = block[header + 1..]
        .iter()
        .map(|l| format!("{}\n", comment_text(l)))
        .collect();
    let doc: serde_json::Value = yaml_serde::from_str(&yaml).ok()?;
    match doc.get("custom")?.get("id")? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A comment line's text: after the `#` and one space.
fn comment_text(line: &str) -> &str {
    let t = line.trim_start().trim_start_matches('#');
    t.strip_prefix(' ').unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::eval::{
        PolicyEvaluator, PolicyInput, RegoPolicy, Verdict, bridge_demo_policy, demo_policy,
        with_call,
    };
    use crate::types::{Agent, Decision, PolicyRef, Source, ToolKind};
    use serde_json::{Map, Value, json};

    fn decide(p: &RegoPolicy, kind: &str, params: Value) -> Verdict {
        with_call(kind, &params, |input| {
            let v = p.evaluate(input);
            // The VM and the interpreter name the same rules.
            assert_eq!(v, p.evaluate_interpreted(input));
            v
        })
    }

    /// `(rule, file:line, id)` of each rule behind a verdict.
    fn named(v: &Verdict) -> Vec<(String, String, Option<String>)> {
        v.rules
            .iter()
            .map(|r| {
                assert_eq!(r.package, "autonomy");
                (
                    r.rule.clone(),
                    format!("{}:{}", r.file, r.line),
                    r.id.clone(),
                )
            })
            .collect()
    }

    fn one(rule: &str, at: &str, id: Option<&str>) -> Vec<(String, String, Option<String>)> {
        vec![(rule.into(), at.into(), id.map(String::from))]
    }

    fn compile(modules: &[(&str, &str)]) -> RegoPolicy {
        let modules: Vec<(String, String)> = modules
            .iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect();
        RegoPolicy::compile(PolicyRef::new("t"), &modules, None).unwrap()
    }

    const TWO_ALLOWS: &str = "package autonomy

default allow := false

# METADATA
# custom: {id: ECHO}
allow if input.kind == \"tool.echo\"

allow if {
\tinput.kind == \"tool.http_get\"
\tinput.params.safe == true
}

# METADATA
# custom:
#   id: SHELL
reason := \"no shell\" if input.kind == \"tool.shell\"

reason := sprintf(\"%s: no\", [input.kind]) if {
\tnot allow
\tinput.kind != \"tool.shell\"
}
";

    #[test]
    fn the_definition_that_decided_is_named() {
        let p = compile(&[("p.rego", TWO_ALLOWS)]);
        assert!(p.fast_path().is_ok(), "{:?}", p.fast_path());
        let v = decide(&p, "tool.echo", json!({}));
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(named(&v), one("allow", "p.rego:7", Some("ECHO")));
        let v = decide(&p, "tool.http_get", json!({"safe": true}));
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(named(&v), one("allow", "p.rego:9", None));
        let v = decide(&p, "tool.shell", json!({}));
        assert_eq!(v.reason.as_deref(), Some("no shell"));
        assert_eq!(named(&v), one("reason", "p.rego:17", Some("SHELL")));
        let v = decide(&p, "tool.http_get", json!({"safe": false}));
        assert_eq!(v.reason.as_deref(), Some("tool.http_get: no"));
        assert_eq!(named(&v), one("reason", "p.rego:19", None));

        // The same on the interpreter alone (a function keeps `allow` off the VM).
        let slow = TWO_ALLOWS.replace("input.params.safe == true", "https(input.params.url)")
            + "https(u) if startswith(u, \"https:\")\n";
        let p = compile(&[("p.rego", &slow)]);
        assert!(p.fast_path().is_err());
        let v = decide(&p, "tool.http_get", json!({"url": "https://x"}));
        assert_eq!(named(&v), one("allow", "p.rego:9", None));
        let v = decide(&p, "tool.echo", json!({}));
        assert_eq!(named(&v), one("allow", "p.rego:7", Some("ECHO")));
        let v = decide(&p, "tool.shell", json!({}));
        assert_eq!(named(&v), one("reason", "p.rego:17", Some("SHELL")));
    }

    /// Every `allow` definition that holds is named, also those after the first (which the VM
    /// would skip without recording), across files, from multi-line bodies.
    #[test]
    fn every_allow_definition_that_holds_is_named_from_one_vm_run() {
        let a = "package autonomy
default allow := false

# METADATA
# custom: {id: A-KIND}
allow if {
	input.kind == \"tool.echo\"
}

allow if input.params.n > 0
";
        let b = "package autonomy

allow if {
	# a comment first
	input.params.ok == true
}
";
        let p = compile(&[("a.rego", a), ("b.rego", b)]);
        assert!(p.allow_rules_recorded(), "{:?}", p.fast_path());
        let v = decide(&p, "tool.echo", json!({"n": 1, "ok": true}));
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(
            named(&v),
            vec![
                ("allow".into(), "a.rego:6".into(), Some("A-KIND".into())),
                ("allow".into(), "a.rego:10".into(), None),
                ("allow".into(), "b.rego:3".into(), None),
            ]
        );
        let v = decide(&p, "tool.shell", json!({"ok": true}));
        assert_eq!(named(&v), one("allow", "b.rego:3", None));
        assert_eq!(
            named(&decide(&p, "tool.echo", json!({}))),
            one("allow", "a.rego:6", Some("A-KIND"))
        );
        // Nothing holds: the default denies and is named.
        let v = decide(&p, "tool.shell", json!({}));
        assert_eq!(v.decision, Decision::Deny);
        assert_eq!(named(&v), one("allow", "a.rego:2", None));
    }

    #[test]
    fn defaults_deny_sets_else_and_approval() {
        // No reason: a deny names the default; an allow from `default allow := true` too.
        let p = compile(&[(
            "p.rego",
            "package autonomy\n# METADATA\n# custom: {id: CLOSED}\ndefault allow := false\nallow if input.kind == \"tool.echo\"\n",
        )]);
        let v = decide(&p, "tool.shell", json!({}));
        assert_eq!(v.reason.as_deref(), Some("denied by policy"));
        assert_eq!(named(&v), one("allow", "p.rego:4", Some("CLOSED")));
        let p = compile(&[(
            "p.rego",
            "package autonomy\ndefault allow := true\nallow := false if input.kind == \"tool.shell\"\n",
        )]);
        assert_eq!(
            named(&decide(&p, "tool.echo", json!({}))),
            one("allow", "p.rego:2", None)
        );
        assert_eq!(
            named(&decide(&p, "tool.shell", json!({}))),
            one("allow", "p.rego:3", None)
        );
        // An else chain is one definition; an approval adds its own.
        let p = compile(&[
            (
                "a.rego",
                "package autonomy\nallow := true if input.kind == \"tool.echo\" else := false if input.kind == \"tool.shell\"\n",
            ),
            (
                "b.rego",
                "package autonomy\n\n# METADATA\n# custom: {id: ASK}\napproval if input.params.ask == true\n",
            ),
        ]);
        assert_eq!(
            named(&decide(&p, "tool.echo", json!({}))),
            one("allow", "a.rego:2", None)
        );
        let v = decide(&p, "tool.echo", json!({"ask": true}));
        assert!(v.approval.is_some());
        assert_eq!(
            named(&v),
            vec![
                ("allow".into(), "a.rego:2".into(), None),
                ("approval".into(), "b.rego:5".into(), Some("ASK".into())),
            ]
        );
        assert_eq!(
            named(&decide(&p, "tool.shell", json!({}))),
            one("allow", "a.rego:2", None)
        );
        // An error names nothing.
        let p = compile(&[(
            "p.rego",
            "package autonomy\nallow if input.kind == \"tool.echo\"\n",
        )]);
        let v = decide(&p, "tool.shell", json!({}));
        assert!(v.reason.unwrap().contains("undefined"));
        assert!(v.rules.is_empty());
    }

    /// A deny set: the definitions that added to it, with the reason's.
    #[test]
    fn deny_sets_name_their_definitions() {
        let p = compile(&[(
            "p.rego",
            "package autonomy
default allow := false
deny contains \"shell\" if input.kind == \"tool.shell\"
deny contains \"secret\" if contains(input.params.m, \"password\")
deny contains \"never\" if false
allow if count(deny) == 0
reason := concat(\", \", deny) if count(deny) > 0
",
        )]);
        let v = decide(&p, "tool.shell", json!({"m": "my password"}));
        assert_eq!(v.decision, Decision::Deny);
        assert_eq!(
            named(&v),
            vec![
                ("deny".into(), "p.rego:3".into(), None),
                ("deny".into(), "p.rego:4".into(), None),
                ("reason".into(), "p.rego:7".into(), None),
            ]
        );
        assert_eq!(
            named(&decide(&p, "tool.echo", json!({"m": "hi"}))),
            one("allow", "p.rego:6", None)
        );
    }

    #[test]
    fn the_embedded_policies_name_their_ids() {
        let ids =
            |v: &Verdict| -> Vec<String> { v.rules.iter().filter_map(|r| r.id.clone()).collect() };
        let demo = demo_policy().unwrap();
        assert!(demo.allow_rules_recorded());
        for (kind, want) in [
            ("tool.echo", "DEMO-ECHO"),
            ("tool.http_get", "DEMO-HTTP"),
            ("tool.ros2.launch", "DEMO-LAUNCH"),
            ("tool.shell", "DEMO-SHELL"),
            ("tool.x", "DEMO-OTHER-KIND"),
        ] {
            let v = decide(&demo, kind, json!({}));
            assert_eq!(ids(&v), vec![want.to_string()], "{kind}: {v:?}");
            assert_eq!(v.rules[0].file, "demo.rego");
        }
        let bridge = bridge_demo_policy().unwrap();
        assert!(bridge.allow_rules_recorded());
        let publish = "tool.ros2.topic.publish";
        let twist = |x: f64| json!({"topic": "/cmd_vel", "message": {"linear": {"x": x}, "angular": {"z": 0.0}}});
        for (kind, params, want) in [
            (publish, twist(0.5), "BRIDGE-DEMO-CMD-VEL"),
            (publish, twist(5.0), "BRIDGE-DEMO-CMD-VEL-LIMITS"),
            (
                publish,
                json!({"topic": "/disable_safety"}),
                "BRIDGE-DEMO-SAFETY-TOPIC",
            ),
            (publish, json!({"topic": "/arm"}), "BRIDGE-DEMO-OTHER-TOPIC"),
            ("tool.echo", json!({}), "BRIDGE-DEMO-ECHO"),
            ("tool.shell", json!({}), "BRIDGE-DEMO-SHELL"),
            ("tool.x", json!({}), "BRIDGE-DEMO-OTHER-KIND"),
        ] {
            let v = decide(&bridge, kind, params);
            assert_eq!(ids(&v), vec![want.to_string()], "{kind}: {v:?}");
        }
        // The bridge example, with the bridge's `input.rate`.
        let file = format!("{}/examples/bridge/policy.rego", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&file).unwrap();
        let example = compile(&[("policy.rego", &src)]);
        assert!(example.allow_rules_recorded());
        let kind = ToolKind::parse(publish).unwrap();
        for (rate, params, want) in [
            (5, twist(0.5), "BRIDGE-CMD-VEL"),
            (50, twist(0.5), "BRIDGE-CMD-VEL-RATE"),
            (5, twist(3.0), "BRIDGE-CMD-VEL-LIMITS"),
            (
                5,
                json!({"topic": "/disable_safety"}),
                "BRIDGE-SAFETY-TOPIC",
            ),
            (5, json!({"topic": "/arm"}), "BRIDGE-OTHER-TOPIC"),
        ] {
            let params: Map<String, Value> = params.as_object().cloned().unwrap();
            let extra: Map<String, Value> =
                [("rate".to_string(), json!(rate))].into_iter().collect();
            let v = example.evaluate(&PolicyInput {
                kind: &kind,
                params: &params,
                source: Source::new("bridge"),
                agent: &Agent::anonymous(),
                allowed_domains: &[],
                extra: Some(&extra),
            });
            assert_eq!(ids(&v), vec![want.to_string()], "{rate} {params:?}: {v:?}");
        }
        for (kind, want) in [
            ("tool.echo", "BRIDGE-ECHO"),
            ("tool.ros2.launch", "BRIDGE-LAUNCH"),
            ("tool.shell", "BRIDGE-OTHER-KIND"),
        ] {
            assert_eq!(
                ids(&decide(&example, kind, json!({}))),
                vec![want.to_string()]
            );
        }

        // Every deciding rule of the shipped policies carries an id.
        let src = |p: &str| {
            std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        };
        for (file, text) in [
            (
                "demo.rego".to_string(),
                crate::policy::eval::DEMO_REGO.to_string(),
            ),
            (
                "bridge_demo.rego".into(),
                crate::policy::eval::BRIDGE_DEMO_REGO.to_string(),
            ),
            (
                "examples/bridge/policy.rego".into(),
                src("examples/bridge/policy.rego"),
            ),
            (
                "argument-checks".into(),
                src("examples/policies/argument-checks/policy.rego"),
            ),
            (
                "http-allowlist".into(),
                src("examples/policies/http-allowlist/policy.rego"),
            ),
            (
                "ros-launch".into(),
                src("examples/policies/ros-launch-allowlist/policy.rego"),
            ),
        ] {
            for (i, line) in text.lines().enumerate() {
                let head = line.split([' ', '(']).next().unwrap_or("");
                if ["allow", "reason", "approval", "deny", "default"].contains(&head) {
                    assert!(
                        metadata_id(&text, i as u32 + 1).is_some(),
                        "{file}:{}: {line} has no METADATA id",
                        i + 1
                    );
                }
            }
        }
    }

    #[test]
    fn metadata_ids_in_both_yaml_forms() {
        let src = "package autonomy\n\n# METADATA\n# title: echo\n# custom:\n#   id: DEMO-1\nallow if input.kind == \"tool.echo\"\n\n# METADATA\n# custom: {id: \"SAFETY-3.2\"}\nreason := \"x\" if input.kind == \"tool.shell\"\n\n# Just a comment.\nallow if input.kind == \"tool.x\"\n# METADATA\n# custom:\n#   id: 7\nallow if false\n";
        assert_eq!(metadata_id(src, 7).as_deref(), Some("DEMO-1"));
        assert_eq!(metadata_id(src, 11).as_deref(), Some("SAFETY-3.2"));
        assert_eq!(metadata_id(src, 14), None);
        assert_eq!(metadata_id(src, 18).as_deref(), Some("7"));
        // A blank line separates a block from the rule below it.
        let src = "package autonomy\n# METADATA\n# custom: {id: A}\n\nallow := true\n";
        assert_eq!(metadata_id(src, 5), None);
        // Not YAML, no custom, or no id: no id (and no error: the rule is still named).
        for block in [
            "# METADATA\n# custom: [",
            "# METADATA\n# title: t",
            "# METADATA\n# custom:\n#   severity: high",
            "# custom: {id: A}",
        ] {
            let src = format!("package autonomy\n{block}\nallow := true\n");
            let line = src.lines().count() as u32;
            assert_eq!(metadata_id(&src, line), None, "{block}");
        }
        assert_eq!(metadata_id("allow := true", 1), None);
        assert_eq!(metadata_id("allow := true", 0), None);
    }
}
