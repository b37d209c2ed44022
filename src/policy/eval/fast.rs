//! A fast path for `allow`: regorus's bytecode VM, used only where it cannot be wrong in the
//! open direction.
//!
//! The interpreter is the reference. regorus 0.14's VM evaluates a plain allowlist about 7×
//! faster, but it turns every non-fatal error inside a rule body into "undefined", even with
//! strict builtin errors on. Under `not`, or in a deny-set pattern (`allow if count(deny) == 0`),
//! that turns an error into an allow where the interpreter denies. So:
//! - the VM runs only programs whose every instruction cannot raise such an error (no builtin or
//!   function calls, no arithmetic or ordering, no loops or comprehensions) and whose rules cannot
//!   conflict (the other error the VM swallows);
//! - the VM's `true` allows and its `false` denies (the interpreter then only evaluates
//!   `reason`). Anything else (undefined, an error, a limit) goes to the interpreter, which
//!   decides and explains the deny. A wrong `false` could only deny, never allow.

use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use regorus::rvm::instructions::Instruction;
use regorus::rvm::program::{Program, RuleType};
use regorus::utils::limits::ExecutionTimerConfig;

use super::Pool;
use crate::policy::message::{MAX_CHARS, one_line};

/// Set to `off` to evaluate every policy with the interpreter only.
pub const VM_ENV: &str = "AUTONOMY_REGO_VM";

/// The VM's answer for `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastResult {
    /// `allow` is true: the call is allowed.
    True,
    /// `allow` is false: denied; the interpreter still explains why (`reason`).
    False,
    /// Undefined, an error or a limit: the interpreter decides.
    Unsure,
}

/// Why a policy's `allow` stays on the interpreter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoFastPath {
    /// The VM is switched off ([`VM_ENV`]).
    #[error("{VM_ENV}=off")]
    Off,
    /// The VM compiler refuses the policy.
    #[error("the VM cannot compile it: {0}")]
    Compile(String),
    /// An instruction whose error the VM would turn into undefined.
    #[error("it uses {0}, which the VM may turn from an error into undefined")]
    Instruction(String),
    /// A rule that is a function.
    #[error("{0} is a function")]
    Function(String),
    /// A rule that destructures its arguments.
    #[error("{0} destructures")]
    Destructures(String),
    /// A partial object rule (its keys may conflict).
    #[error("{0} is a partial object")]
    PartialObject(String),
    /// A complete rule whose definitions may give different values.
    #[error("{0} has definitions that may conflict")]
    MayConflict(String),
    /// The VM refuses the policy's data document.
    #[error("the VM refuses the data: {0}")]
    Data(String),
}

/// A compiled `allow` the VM may evaluate, with a pool of VMs (they need `&mut`).
pub struct FastAllow {
    program: Arc<Program>,
    data: Option<regorus::Value>,
    timer: ExecutionTimerConfig,
    pool: Pool<RegoVM>,
}

impl FastAllow {
    /// Compiles `entry` for the VM, with the interpreter's time limit; `Err` says why this
    /// policy stays on the interpreter.
    pub fn new(
        policy: &regorus::CompiledPolicy,
        entry: &str,
        data: Option<regorus::Value>,
        timer: ExecutionTimerConfig,
    ) -> Result<Self, NoFastPath> {
        if std::env::var(VM_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
            return Err(NoFastPath::Off);
        }
        let program = Compiler::compile_from_policy(policy, &[entry])
            .map_err(|e| NoFastPath::Compile(one_line(&e.to_string(), MAX_CHARS)))?;
        eligible(&program)?;
        let fast = FastAllow {
            program,
            data,
            timer,
            pool: Pool::new(),
        };
        // Fail at load, not per call, if the data cannot be given to a VM.
        let vm = fast.new_vm()?;
        fast.pool.put(vm);
        Ok(fast)
    }

    /// What the VM makes of `allow` for this input.
    pub fn eval(&self, input: regorus::Value) -> FastResult {
        match self.eval_value(input) {
            Some(regorus::Value::Bool(true)) => FastResult::True,
            Some(regorus::Value::Bool(false)) => FastResult::False,
            _ => FastResult::Unsure,
        }
    }

    /// The entry rule's value for this input; `None` on any error.
    pub fn eval_value(&self, input: regorus::Value) -> Option<regorus::Value> {
        let mut vm = match self.pool.take() {
            Some(vm) => vm,
            None => self.new_vm().ok()?,
        };
        vm.set_input(input);
        let r = vm.execute().ok();
        self.pool.put(vm);
        r
    }

    fn new_vm(&self) -> Result<RegoVM, NoFastPath> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_strict_builtin_errors(true);
        vm.set_execution_timer_config(Some(self.timer));
        if let Some(d) = &self.data {
            vm.set_data(d.clone())
                .map_err(|e| NoFastPath::Data(one_line(&e.to_string(), MAX_CHARS)))?;
        }
        Ok(vm)
    }
}

/// Whether the VM's `true` and `false` for this program always match the interpreter's.
fn eligible(program: &Program) -> Result<(), NoFastPath> {
    for ins in &program.instructions {
        if !cannot_fail(ins) {
            let name = format!("{ins:?}");
            let name = name.split([' ', '{', '(']).next().unwrap_or("?");
            return Err(NoFastPath::Instruction(name.to_string()));
        }
    }
    for rule in &program.rule_infos {
        if rule.function_info.is_some() {
            return Err(NoFastPath::Function(rule.name.clone()));
        }
        if rule.destructuring_blocks.iter().any(Option::is_some) {
            return Err(NoFastPath::Destructures(rule.name.clone()));
        }
        match rule.rule_type {
            RuleType::PartialSet => {}
            // Conflicting keys are an error in the interpreter.
            RuleType::PartialObject => return Err(NoFastPath::PartialObject(rule.name.clone())),
            // Definitions with different values are an error in the interpreter, undefined in
            // the VM; only rules whose definitions all give one static value are safe.
            RuleType::Complete => {
                if rule.definitions.len() > 1 && !rule.early_exit_on_first_success {
                    return Err(NoFastPath::MayConflict(rule.name.clone()));
                }
            }
        }
    }
    Ok(())
}

/// Instructions whose only errors are the VM's own invariants or a failed condition.
fn cannot_fail(ins: &Instruction) -> bool {
    use Instruction::*;
    matches!(
        ins,
        Load { .. }
            | LoadTrue { .. }
            | LoadFalse { .. }
            | LoadNull { .. }
            | LoadBool { .. }
            | LoadData { .. }
            | LoadInput { .. }
            | Move { .. }
            | Eq { .. }
            | Ne { .. }
            | Not { .. }
            | AssertEq { .. }
            | Guard { .. }
            | ReturnUndefinedIfNotTrue { .. }
            | Return { .. }
            | CallRule { .. }
            | RuleInit { .. }
            | RuleReturn {}
            | Halt {}
            | Index { .. }
            | IndexLiteral { .. }
            | ChainedIndex { .. }
            | ArrayNew { .. }
            | ArrayPush { .. }
            | ArrayCreate { .. }
            | SetNew { .. }
            | SetAdd { .. }
            | SetCreate { .. }
            | ObjectSet { .. }
            | ObjectCreate { .. }
            | Contains { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::eval::rego::RegoPolicy;
    use crate::policy::eval::{DEMO_REGO, PolicyEvaluator, PolicyInput};
    use crate::types::{PolicyRef, Source, ToolKind};
    use serde_json::{Map, Value, json};

    /// (name, Rego modules separated by `---` lines, data, whether the VM fast path must apply).
    fn corpus() -> Vec<(&'static str, String, Option<Value>, bool)> {
        let p = |body: &str| format!("package autonomy\n{body}\n");
        let example = |dir: &str| {
            let path = format!("{}/examples/policies/{dir}", env!("CARGO_MANIFEST_DIR"));
            let mut src = String::new();
            for f in ["policy.rego", "ros/launch.rego"] {
                if let Ok(s) = std::fs::read_to_string(format!("{path}/{f}")) {
                    src.push_str(&s.replace("package ros", "package autonomy_ros_inlined"));
                }
            }
            src
        };
        vec![
            ("demo", DEMO_REGO.to_string(), None, true),
            (
                "kind in a set",
                p(
                    "default allow := false\nallow if input.kind in {\"tool.echo\", \"tool.http_get\"}",
                ),
                None,
                true,
            ),
            (
                "not on an equality rule",
                p(
                    "blocked if input.params.mode == \"unsafe\"\nallow if {\n input.kind == \"tool.echo\"\n not blocked\n}",
                ),
                None,
                true,
            ),
            (
                "default true, one override",
                p("default allow := true\nallow := false if input.kind == \"tool.shell\""),
                None,
                true,
            ),
            (
                "objects and arrays",
                p(
                    "req := {\"k\": input.kind, \"t\": input.params.tags}\nallow if {\n req.k == \"tool.echo\"\n req.t == [\"a\", \"b\"]\n}",
                ),
                None,
                true,
            ),
            (
                "numbers compare by value",
                p("allow if input.params.n == 1"),
                None,
                true,
            ),
            (
                "kinds from data",
                p("allow if input.kind in data.kinds"),
                Some(json!({"kinds": ["tool.echo"]})),
                true,
            ),
            (
                "else chain",
                p(
                    "allow := true if input.kind == \"tool.echo\" else := false if input.kind == \"tool.shell\"",
                ),
                None,
                true,
            ),
            (
                "dynamic keys into data and input",
                p("allow if data.by_kind[input.kind] == true\nallow if input.params[input.kind] == \"yes\""),
                Some(json!({"by_kind": {"tool.echo": true, "tool.shell": false}})),
                true,
            ),
            (
                "with replaces the input",
                p("echo if input.kind == \"tool.echo\"\nallow if echo with input as {\"kind\": \"tool.echo\"}\nallow if input.params.mode == \"unsafe\""),
                None,
                false,
            ),
            (
                "rules across packages",
                "package autonomy\nimport data.lib\nallow if lib.ok\n---\npackage lib\nok if input.kind == \"tool.http_get\"\nok if input.params.a == true\n".to_string(),
                None,
                false,
            ),
            // The VM would allow these where the interpreter fails the evaluation (deny).
            (
                "builtin error under not",
                p("h := x if { x := split(input.params.endpoint, \"/\") }\nallow if not h"),
                None,
                false,
            ),
            (
                "conflicting definitions under not",
                p(
                    "x := 1 if input.params.a == true\nx := 2 if input.params.b == true\nallow if not x",
                ),
                None,
                false,
            ),
            (
                "deny set with a builtin",
                p(
                    "deny contains \"file\" if startswith(input.params.endpoint, \"file:\")\nallow if count(deny) == 0",
                ),
                None,
                false,
            ),
            (
                "ordering across types",
                p("big if input.params.n > 10\nallow if not big"),
                None,
                false,
            ),
            (
                "conflicting values, no not",
                p(
                    "level := \"high\" if input.params.x == 1\nlevel := \"low\" if input.params.y == 1\nallow if level == \"low\"",
                ),
                None,
                false,
            ),
            (
                "example argument-checks",
                example("argument-checks"),
                None,
                false,
            ),
            (
                "example http-allowlist",
                example("http-allowlist"),
                Some(json!({"http": {"hosts": ["api.anthropic.com", "ifconfig.me"]}})),
                false,
            ),
        ]
    }

    fn inputs() -> Vec<(&'static str, Value)> {
        let kinds = [
            "tool.echo",
            "tool.shell",
            "tool.http_get",
            "tool.ros2.launch",
            "tool.x",
        ];
        let params = [
            json!({}),
            json!({"message": "hi"}),
            json!({"message": "my password"}),
            json!({"message": 7}),
            json!({"endpoint": 7}),
            json!({"endpoint": "https://ifconfig.me/ip"}),
            json!({"endpoint": "file:///etc/passwd"}),
            json!({"a": true, "b": true}),
            json!({"a": true}),
            json!({"n": 1.0}),
            json!({"n": 1}),
            json!({"n": "str"}),
            json!({"n": 11}),
            json!({"tags": ["a", "b"]}),
            json!({"tags": ["b", "a"]}),
            json!({"mode": "unsafe"}),
            json!({"mode": null}),
            json!({"x": 1, "y": 1}),
            json!({"y": 1}),
        ];
        let mut out = Vec::new();
        for k in kinds {
            for p in &params {
                out.push((k, p.clone()));
            }
        }
        out
    }

    #[test]
    fn why_a_policy_stays_on_the_interpreter() {
        let why = |body: &str| {
            let src = format!("package autonomy\n{body}\n");
            RegoPolicy::compile(PolicyRef::new("t"), &[("p.rego".into(), src)], None)
                .unwrap()
                .fast_path()
                .map_err(|e| e.to_string())
        };
        assert_eq!(why("allow if input.kind == \"tool.echo\""), Ok(()));
        assert_eq!(
            why(
                "x := 1 if input.params.a == true\nx := 2 if input.params.b == true\nallow if not x"
            ),
            Err("data.autonomy.x has definitions that may conflict".into())
        );
        assert_eq!(
            why(
                "deny contains \"f\" if startswith(input.params.e, \"file:\")\nallow if count(deny) == 0"
            ),
            Err("it uses BuiltinCall, which the VM may turn from an error into undefined".into())
        );
        assert_eq!(NoFastPath::Off.to_string(), "AUTONOMY_REGO_VM=off");
        assert_eq!(
            NoFastPath::Compile("no".into()).to_string(),
            "the VM cannot compile it: no"
        );
        assert_eq!(
            NoFastPath::Data("no".into()).to_string(),
            "the VM refuses the data: no"
        );
        for (e, want) in [
            (
                NoFastPath::Function("data.a.f".into()),
                "data.a.f is a function",
            ),
            (
                NoFastPath::Destructures("data.a.f".into()),
                "data.a.f destructures",
            ),
            (
                NoFastPath::PartialObject("data.a.o".into()),
                "data.a.o is a partial object",
            ),
        ] {
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn the_fast_path_never_allows_what_the_interpreter_denies() {
        let mut fast_allows = 0;
        for (name, src, data, want_fast) in corpus() {
            // Modules are separated by `---` lines.
            let modules: Vec<(String, String)> = src
                .split("\n---\n")
                .enumerate()
                .map(|(i, m)| (format!("p{i}.rego"), m.to_string()))
                .collect();
            let policy = RegoPolicy::compile(PolicyRef::new(name), &modules, data)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                policy.fast_path().is_ok(),
                want_fast,
                "{name}: fast path {:?}",
                policy.fast_path()
            );
            for (kind, params) in inputs() {
                let kind = ToolKind::parse(kind).unwrap();
                let params: Map<String, Value> = params.as_object().cloned().unwrap();
                let input = PolicyInput {
                    kind: &kind,
                    params: &params,
                    source: Source::new("http"),
                    agent: &crate::types::Agent::anonymous(),
                    allowed_domains: &[],
                    extra: None,
                };
                let both = policy.evaluate(&input);
                let reference = policy.evaluate_interpreted(&input);
                assert_eq!(
                    both, reference,
                    "{name}: kind {kind} params {params:?}: with the VM {both:?}, interpreter {reference:?}"
                );
                if want_fast && both.decision == crate::types::Decision::Allow {
                    fast_allows += 1;
                }
            }
        }
        // The corpus exercises the fast path, not only the fallback.
        assert!(fast_allows > 50, "{fast_allows}");
    }

    #[test]
    fn the_cases_the_vm_gets_wrong_are_denied() {
        for (name, src, params) in [
            (
                "builtin error under not",
                "h := x if { x := split(input.params.endpoint, \"/\") }\nallow if not h",
                json!({"endpoint": 7}),
            ),
            (
                "conflict under not",
                "x := 1 if input.params.a == true\nx := 2 if input.params.b == true\nallow if not x",
                json!({"a": true, "b": true}),
            ),
            (
                "deny set with a builtin",
                "deny contains \"file\" if startswith(input.params.endpoint, \"file:\")\nallow if count(deny) == 0",
                json!({"endpoint": 7}),
            ),
        ] {
            let policy = RegoPolicy::compile(
                PolicyRef::new(name),
                &[("p.rego".into(), format!("package autonomy\n{src}\n"))],
                None,
            )
            .unwrap();
            let kind = ToolKind::parse("tool.echo").unwrap();
            let params: Map<String, Value> = params.as_object().cloned().unwrap();
            let v = policy.evaluate(&PolicyInput {
                kind: &kind,
                params: &params,
                source: Source::new("http"),
                agent: &crate::types::Agent::anonymous(),
                allowed_domains: &[],
                extra: None,
            });
            assert_eq!(v.decision, crate::types::Decision::Deny, "{name}: {v:?}");
            // And the VM alone would have allowed it: the reason the fast path is gated.
            let mut engine = regorus::Engine::new();
            engine.set_rego_v0(false);
            engine
                .add_policy("p.rego".into(), format!("package autonomy\n{src}\n"))
                .unwrap();
            let compiled = engine
                .compile_with_entrypoint(&"data.autonomy.allow".into())
                .unwrap();
            let program =
                Compiler::compile_from_policy(&compiled, &["data.autonomy.allow"]).unwrap();
            let mut vm = RegoVM::new();
            vm.load_program(program);
            vm.set_strict_builtin_errors(true);
            vm.set_input(regorus::Value::from(
                json!({"kind": "tool.echo", "params": params}),
            ));
            assert_eq!(
                vm.execute().ok(),
                Some(regorus::Value::Bool(true)),
                "{name}: regorus's VM no longer fails open here; the gate may be relaxed"
            );
        }
    }
}
