//! A fast path for `allow` and for a deny's explanation: regorus's bytecode VM, used only where
//! it cannot be wrong in the open direction.
//!
//! The interpreter is the reference. regorus 0.14's VM evaluates `allow` 4–5× faster, but it
//! turns every non-fatal error inside a rule body into "undefined", even with strict builtin
//! errors on, and a rule whose definitions conflict into undefined too. Under `not`, in a
//! deny-set pattern (`allow if count(deny) == 0`), or behind an `else` or a default, that turns
//! an error into an allow where the interpreter denies; so does a loop over a value that is not
//! a collection (an error in the interpreter, no iterations in the VM). So:
//! - the VM (patched, see the vendored crate) counts every error it turns into undefined and
//!   every such loop; a run that counted any is not trusted at all, whatever it returned;
//! - the VM runs only programs made of the instructions of plain Rego (no function calls, host
//!   calls or policy-language blocks) whose rules are neither functions, nor destructuring,
//!   nor partial objects;
//! - the VM's `true` allows and its `false` denies, and it explains that deny (reason and
//!   rules), each only from a run that hid no error. Anything else (undefined, an error, a
//!   limit, a hidden error) goes to the interpreter, which decides or explains instead.
//!
//! Both engines stop at the first loop iteration that makes a constant-valued rule true, as OPA
//! does, so an error in a later iteration denies in neither (the unit tests check it).

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
    /// An instruction the fast path does not run (function calls, host calls, policy-language
    /// blocks).
    #[error("it uses {0}, which the fast path does not run")]
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
    /// The VM refuses the policy's data document.
    #[error("the VM refuses the data: {0}")]
    Data(String),
}

/// A compiled rule the VM may evaluate (`allow`, or a deny's explanation), with a pool of VMs
/// (they need `&mut`).
pub struct FastRule {
    program: Arc<Program>,
    data: Option<regorus::Value>,
    timer: ExecutionTimerConfig,
    /// The rule (an index into the program's rules) whose definitions that give a value each
    /// run records, evaluating all of them.
    tracked: Option<u16>,
    pool: Pool<RegoVM>,
}

/// Where one definition of a tracked rule is: its module's file name and the line of the first
/// instruction of its body (a line inside the definition's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionAt {
    /// The module's file name, as loaded.
    pub file: String,
    /// 1-based.
    pub line: u32,
}

impl FastRule {
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
        let fast = FastRule {
            program,
            data,
            timer,
            tracked: None,
            pool: Pool::new(),
        };
        // Fail at load, not per call, if the data cannot be given to a VM.
        let vm = fast.new_vm()?;
        fast.pool.put(vm);
        Ok(fast)
    }

    /// Where each definition of `rule` (`data.autonomy.allow`) is, by the VM's definition index,
    /// and the rule's index for [`FastRule::track`]; `None` when the program has no such rule
    /// or does not say where every definition is.
    pub fn definitions(&self, rule: &str) -> Option<(u16, Vec<DefinitionAt>)> {
        let (index, info) = self
            .program
            .rule_infos
            .iter()
            .enumerate()
            .find(|(_, r)| r.name == rule)?;
        let mut at = Vec::new();
        for bodies in info.definitions.iter() {
            let pc = usize::try_from(*bodies.first()?).ok()?;
            let span = self.program.get_instruction_span(pc)?;
            at.push(DefinitionAt {
                file: span.get_source_name(&self.program.sources)?.to_string(),
                line: u32::try_from(span.line).ok()?,
            });
        }
        Some((u16::try_from(index).ok()?, at))
    }

    /// Records on every run which definitions of rule `index` give a value (evaluating all of
    /// them): see [`FastRule::eval_tracked`].
    pub fn track(&mut self, index: u16) {
        self.tracked = Some(index);
        // The VMs made so far do not track.
        while self.pool.take().is_some() {}
    }

    /// The entry rule's value for this input, with what `f` makes of it and of the tracked
    /// rule's definitions (VM indices, in evaluation order) that gave a value; `None` on any
    /// error, including one the VM turned into undefined on the way.
    pub fn eval_tracked<R>(
        &self,
        input: regorus::Value,
        f: impl FnOnce(&regorus::Value, &[usize]) -> R,
    ) -> Option<(regorus::Value, R)> {
        let mut vm = match self.pool.take() {
            Some(vm) => vm,
            None => self.new_vm().ok()?,
        };
        vm.set_input(input);
        let hidden = vm.swallowed_errors();
        let r = vm.execute().ok();
        let clean = vm.swallowed_errors() == hidden;
        let r = r.filter(|_| clean).map(|v| {
            let made = f(&v, vm.tracked_definitions());
            (v, made)
        });
        self.pool.put(vm);
        r
    }

    /// What the VM makes of `allow` for this input.
    pub fn eval(&self, input: regorus::Value) -> FastResult {
        match self.eval_value(input) {
            Some(regorus::Value::Bool(true)) => FastResult::True,
            Some(regorus::Value::Bool(false)) => FastResult::False,
            _ => FastResult::Unsure,
        }
    }

    /// The entry rule's value for this input; `None` on any error, including one the VM turned
    /// into undefined on the way.
    pub fn eval_value(&self, input: regorus::Value) -> Option<regorus::Value> {
        self.eval_tracked(input, |_, _| ()).map(|(v, ())| v)
    }

    fn new_vm(&self) -> Result<RegoVM, NoFastPath> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_strict_builtin_errors(true);
        vm.set_execution_timer_config(Some(self.timer));
        vm.track_rule_definitions(self.tracked);
        if let Some(d) = &self.data {
            vm.set_data(d.clone())
                .map_err(|e| NoFastPath::Data(one_line(&e.to_string(), MAX_CHARS)))?;
        }
        Ok(vm)
    }
}

/// Whether the VM's `true` and `false` for this program, from a run that hid no error, match
/// the interpreter's.
fn eligible(program: &Program) -> Result<(), NoFastPath> {
    for ins in &program.instructions {
        if !runs(ins) {
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
            // the VM, which counts the conflict as a hidden error: the interpreter decides.
            RuleType::Complete => {}
        }
    }
    Ok(())
}

/// The instructions plain Rego compiles to. An error in any of them ends its rule body, which
/// the patched VM counts; function calls, host calls and the policy-language blocks are left
/// out.
fn runs(ins: &Instruction) -> bool {
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
            | Add { .. }
            | Sub { .. }
            | Mul { .. }
            | Div { .. }
            | Mod { .. }
            | Eq { .. }
            | Ne { .. }
            | Lt { .. }
            | Le { .. }
            | Gt { .. }
            | Ge { .. }
            | And { .. }
            | Or { .. }
            | Not { .. }
            | BuiltinCall { .. }
            | Return { .. }
            | ObjectSet { .. }
            | ObjectCreate { .. }
            | Index { .. }
            | IndexLiteral { .. }
            | ChainedIndex { .. }
            | ArrayNew { .. }
            | ArrayPush { .. }
            | ArrayPushDefined { .. }
            | ArrayCreate { .. }
            | SetNew { .. }
            | SetAdd { .. }
            | SetCreate { .. }
            | Contains { .. }
            | Count { .. }
            | AssertEq { .. }
            | Guard { .. }
            | ReturnUndefinedIfNotTrue { .. }
            | CoalesceUndefinedToNull { .. }
            | LoopStart { .. }
            | LoopNext { .. }
            | CallRule { .. }
            | RuleInit { .. }
            | RuleReturn {}
            | Halt {}
            | ComprehensionBegin { .. }
            | ComprehensionYield { .. }
            | ComprehensionEnd {}
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::eval::rego::RegoPolicy;
    use crate::policy::eval::{DEMO_REGO, PolicyEvaluator, with_call};
    use crate::types::PolicyRef;
    use serde_json::{Value, json};

    const SLOW: std::time::Duration = std::time::Duration::from_secs(30);

    /// A package whose `bad` rule raises an error when `input.params.endpoint` is not a string.
    const LIB: &str = "package lib\nok if input.params.a == true\nobj := {\"k\": \"tool.http_get\"}\nbad if startswith(input.params.endpoint, \"x\")";

    /// (name, Rego modules separated by `---` lines, data, whether the VM fast path must apply).
    fn corpus() -> Vec<(&'static str, String, Option<Value>, bool)> {
        let p = |body: &str| format!("package autonomy\n{body}\n");
        let file = |path: &str| {
            std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        };
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
                "bridge demo",
                crate::policy::eval::BRIDGE_DEMO_REGO.to_string(),
                None,
                true,
            ),
            (
                "reasons: shared, conflicting, not a string, failing; allow := false",
                p(concat!(
                    "default allow := false\n",
                    "allow if input.kind == \"tool.echo\"\n",
                    "allow := false if input.kind == \"tool.shell\"\n",
                    "allow := false if input.params.mode == \"unsafe\"\n",
                    "reason := \"shell\" if input.kind == \"tool.shell\"\n",
                    "reason := \"shell\" if startswith(input.kind, \"tool.sh\")\n",
                    "reason := \"a and b\" if {\n input.params.a == true\n input.params.b == true\n}\n",
                    "reason := \"just a\" if input.params.a == true\n",
                    "reason := 7 if input.kind == \"tool.x\"\n",
                    "reason := sprintf(\"n is %d\", input.params.n) if input.kind == \"tool.http_get\"",
                )),
                None,
                true,
            ),
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
                true,
            ),
            // An imported name followed by a rule's name is that rule alone, on both
            // engines; the whole imported document (or a dynamic key into it) evaluates
            // every rule of the package, the one that errors on `endpoint: 7` included.
            (
                "an import names one rule",
                format!("package autonomy\nimport data.lib as l\nimport data.nested\nallow if l.ok\nallow if l.obj.k == input.kind\nallow if nested.inner.r\n---\n{LIB}\n---\npackage nested.inner\nr if input.params.n == 11\n"),
                None,
                true,
            ),
            (
                "a whole imported document",
                format!("package autonomy\nimport data.lib\nallow if count(lib) > 2\n---\n{LIB}\n"),
                None,
                false,
            ),
            (
                "a dynamic key into an import",
                format!("package autonomy\nimport data.lib\nallow if lib[input.params.mode]\nallow if lib[\"ok\"]\n---\n{LIB}\n"),
                None,
                false,
            ),
            // The VM would allow these where the interpreter fails the evaluation (deny).
            (
                "builtin error under not",
                p("h := x if { x := split(input.params.endpoint, \"/\") }\nallow if not h"),
                None,
                true,
            ),
            (
                "conflicting definitions under not",
                p(
                    "x := 1 if input.params.a == true\nx := 2 if input.params.b == true\nallow if not x",
                ),
                None,
                true,
            ),
            (
                "deny set with a builtin",
                p(
                    "deny contains \"file\" if startswith(input.params.endpoint, \"file:\")\nallow if count(deny) == 0",
                ),
                None,
                true,
            ),
            (
                "ordering across types",
                p("big if input.params.n > 10\nallow if not big"),
                None,
                true,
            ),
            (
                "conflicting values, no not",
                p(
                    "level := \"high\" if input.params.x == 1\nlevel := \"low\" if input.params.y == 1\nallow if level == \"low\"",
                ),
                None,
                true,
            ),
            (
                "example argument-checks",
                example("argument-checks"),
                None,
                true,
            ),
            (
                "example http-allowlist",
                example("http-allowlist"),
                Some(json!({"http": {"hosts": ["api.anthropic.com", "ifconfig.me"]}})),
                true,
            ),
            (
                "example ros-launch-allowlist, two packages",
                file("examples/policies/ros-launch-allowlist/policy.rego")
                    + "\n---\n"
                    + &file("examples/policies/ros-launch-allowlist/ros/launch.rego"),
                Some(json!({"ros": {"packages": ["demo_nodes_cpp", "turtlesim"]}})),
                true,
            ),
            ("bridge demo", super::super::BRIDGE_DEMO_REGO.to_string(), None, true),
            // Its function (`clamp`) is only in `patch`, which the interpreter evaluates.
            ("example bridge", file("examples/bridge/policy.rego"), None, true),
            // Errors the patched VM reports, so the interpreter decides.
            (
                "an error in one iteration",
                p("allow if {\n some x in input.params.xs\n startswith(x, \"a\")\n}"),
                None,
                true,
            ),
            (
                "else after a builtin error",
                p("allow := false if startswith(input.params.endpoint, \"file:\") else := true"),
                None,
                true,
            ),
            (
                "default true over a builtin",
                p("default allow := true\nallow := false if startswith(input.params.endpoint, \"file:\")"),
                None,
                true,
            ),
            (
                "division",
                p("allow if 10 / input.params.n > 1"),
                None,
                true,
            ),
            (
                "membership in a scalar, under not",
                p("allow if not input.kind in input.params.mode"),
                None,
                true,
            ),
            (
                "count of the input",
                p("allow if count(input.params.xs) == 3\nallow if count(input.params.message) == 2"),
                None,
                true,
            ),
            (
                "every over the input",
                p("allow if every x in input.params.xs { startswith(x, \"a\") }"),
                None,
                true,
            ),
            (
                "count of a comprehension",
                p("allow if count([x | some x in input.params.xs; startswith(x, \"a\")]) == 0"),
                None,
                true,
            ),
        ]
    }

    fn inputs() -> Vec<(&'static str, Value)> {
        let kinds = [
            "tool.echo",
            "tool.shell",
            "tool.http_get",
            "tool.ros2.launch",
            "tool.ros2.topic.publish",
            "tool.x",
        ];
        let twist = |x: Value, z: Value| json!({"linear": {"x": x}, "angular": {"z": z}});
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
            json!({"n": 0}),
            json!({"xs": [5, "abc"]}),
            json!({"xs": ["abc", 5]}),
            json!({"xs": ["abc", "b"]}),
            json!({"xs": ["b"]}),
            json!({"xs": "abc"}),
            json!({"package": "turtlesim", "launch_file": "sim.launch.py"}),
            json!({"package": "turtlesim", "launch_file": 7}),
            json!({"package": "nav2", "launch_file": "x.launch.py"}),
            json!({"topic": "/cmd_vel", "message": twist(json!(0.5), json!(0.1))}),
            json!({"topic": "/cmd_vel", "message": twist(json!(5.0), json!(0.1))}),
            json!({"topic": "/cmd_vel", "message": twist(json!("NaN"), json!(0.1))}),
            json!({"topic": "/cmd_vel", "message": twist(json!(null), json!(0.1))}),
            json!({"topic": "/cmd_vel", "message": "fast"}),
            json!({"topic": "/cmd_vel"}),
            json!({"topic": "/cmd_vel/left", "message": twist(json!(-1.0), json!(2.0))}),
            json!({"topic": "/disable_safety", "message": {}}),
            json!({"topic": 5, "message": twist(json!(0.5), json!(0.1))}),
            json!({"topic": ["/cmd_vel"], "message": twist(json!(0.5), json!(0.1))}),
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
        // Conflicting definitions run on the VM too: it counts the conflict.
        assert_eq!(
            why(
                "x := 1 if input.params.a == true\nx := 2 if input.params.b == true\nallow if not x"
            ),
            Ok(())
        );
        // Builtins run on the VM: the run's hidden errors are checked instead.
        assert_eq!(
            why(
                "deny contains \"f\" if startswith(input.params.e, \"file:\")\nallow if count(deny) == 0"
            ),
            Ok(())
        );
        assert_eq!(
            why("f(x) := x\nallow if f(input.kind) == \"tool.echo\""),
            Err("it uses FunctionCall, which the fast path does not run".into())
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
                NoFastPath::Instruction("HostAwait".into()),
                "it uses HostAwait, which the fast path does not run",
            ),
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
        let (mut fast_allows, mut recorded, mut reasons) = (0, 0, 0);
        for (name, src, data, want_fast) in corpus() {
            // Modules are separated by `---` lines.
            let modules: Vec<(String, String)> = src
                .split("\n---\n")
                .enumerate()
                .map(|(i, m)| (format!("p{i}.rego"), m.to_string()))
                .collect();
            // A generous time limit: a debug build on a loaded machine can pass the default
            // 50 ms, and a limit would make the engines differ by timing, not by meaning.
            let policy = RegoPolicy::compile_with_limit(PolicyRef::new(name), &modules, data, SLOW)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                policy.fast_path().is_ok(),
                want_fast,
                "{name}: fast path {:?}",
                policy.fast_path()
            );
            if want_fast {
                recorded += usize::from(policy.allow_rules_recorded());
                reasons += usize::from(policy.reason_rules_recorded());
            }
            for (kind, params) in inputs() {
                let (both, reference) = with_call(kind, &params, |input| {
                    (policy.evaluate(input), policy.evaluate_interpreted(input))
                });
                assert_eq!(
                    both, reference,
                    "{name}: kind {kind} params {params}: with the VM {both:?}, interpreter {reference:?}"
                );
                if want_fast && both.decision == crate::types::Decision::Allow {
                    fast_allows += 1;
                }
            }
        }
        // The corpus exercises the fast path, not only the fallback, and names an allow's
        // rules from the VM's own run.
        assert!(fast_allows > 50, "{fast_allows}");
        assert!(recorded > 10, "{recorded}");
        // And a deny's reason and rules from one run of `reason` on the VM.
        assert!(reasons >= 6, "{reasons}");
    }

    /// The shipped policies' ordinary calls, allowed and denied, are decided and explained on
    /// the VM: one that reported a hidden error on them would cost the interpreter's time on
    /// every call.
    #[test]
    fn ordinary_calls_are_decided_and_explained_on_the_vm() {
        let file = |path: &str| {
            std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        };
        let twist = |x: f64| json!({"linear": {"x": x}, "angular": {"z": 0.1}});
        type Modules = Vec<(String, String)>;
        let policies: Vec<(&str, Modules, Option<Value>)> = vec![
            ("demo", vec![("demo.rego".into(), DEMO_REGO.into())], None),
            (
                "bridge demo",
                vec![(
                    "bridge_demo.rego".into(),
                    crate::policy::eval::BRIDGE_DEMO_REGO.into(),
                )],
                None,
            ),
            (
                "argument-checks",
                vec![(
                    "policy.rego".into(),
                    file("examples/policies/argument-checks/policy.rego"),
                )],
                None,
            ),
            (
                "http-allowlist",
                vec![(
                    "policy.rego".into(),
                    file("examples/policies/http-allowlist/policy.rego"),
                )],
                Some(json!({"http": {"hosts": ["api.anthropic.com"]}})),
            ),
            (
                "ros-launch-allowlist",
                vec![
                    (
                        "policy.rego".into(),
                        file("examples/policies/ros-launch-allowlist/policy.rego"),
                    ),
                    (
                        "ros/launch.rego".into(),
                        file("examples/policies/ros-launch-allowlist/ros/launch.rego"),
                    ),
                ],
                Some(json!({"ros": {"packages": ["turtlesim"]}})),
            ),
        ];
        let calls = [
            ("tool.echo", json!({"message": "hi"})),
            ("tool.echo", json!({"message": "my password"})),
            ("tool.shell", json!({"command": "ls"})),
            (
                "tool.http_get",
                json!({"endpoint": "https://api.anthropic.com/v1"}),
            ),
            ("tool.http_get", json!({"endpoint": "https://example.com/"})),
            (
                "tool.ros2.launch",
                json!({"package": "turtlesim", "launch_file": "sim.launch.py"}),
            ),
            (
                "tool.ros2.launch",
                json!({"package": "nav2", "launch_file": "x.launch.py"}),
            ),
            (
                "tool.ros2.topic.publish",
                json!({"topic": "/cmd_vel", "message": twist(0.5)}),
            ),
            (
                "tool.ros2.topic.publish",
                json!({"topic": "/cmd_vel", "message": twist(5.0)}),
            ),
            (
                "tool.ros2.topic.publish",
                json!({"topic": "/disable_safety", "message": {}}),
            ),
            ("tool.x", json!({})),
        ];
        for (name, modules, data) in policies {
            // A generous time limit: a debug build on a loaded machine can pass the default
            // 50 ms, and a limit would make the engines differ by timing, not by meaning.
            let policy = RegoPolicy::compile_with_limit(PolicyRef::new(name), &modules, data, SLOW)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // And the rules behind an allow come from the same VM run, not a second one.
            assert!(policy.allow_rules_recorded(), "{name}");
            // And a deny's reason and rules from one run of `reason`, not from the twins.
            assert!(policy.reason_rules_recorded(), "{name}");
            for (kind, params) in &calls {
                with_call(kind, params, |input| {
                    assert!(
                        policy.vm_decides(input),
                        "{name}: {kind} {params} went to the interpreter ({:?})",
                        policy.fast_path()
                    );
                    if policy.evaluate(input).decision == crate::types::Decision::Deny {
                        assert!(
                            policy.vm_explains(input),
                            "{name}: the deny of {kind} {params} was explained by the interpreter"
                        );
                    }
                });
            }
        }
    }

    /// `import data.lib` then `lib.ok` is `data.lib.ok` alone, as in OPA: an error in another
    /// rule of `lib` does not fail it, on either engine.
    #[test]
    fn an_imported_rule_is_evaluated_alone() {
        let src = "package autonomy\nimport data.lib\nallow if lib.ok\n";
        let policy = RegoPolicy::compile(
            PolicyRef::new("import"),
            &[
                ("p.rego".into(), src.into()),
                ("lib.rego".into(), LIB.into()),
            ],
            None,
        )
        .unwrap();
        assert_eq!(policy.fast_path(), Ok(()));
        // `bad` raises a type error on this input; `ok` holds.
        let params = json!({"a": true, "endpoint": 7});
        with_call("tool.echo", &params, |input| {
            assert!(policy.vm_decides(input));
            assert_eq!(
                policy.evaluate(input).decision,
                crate::types::Decision::Allow
            );
            assert_eq!(
                policy.evaluate_interpreted(input).decision,
                crate::types::Decision::Allow
            );
        });
        // The whole document still holds the error, and denies.
        let whole = RegoPolicy::compile(
            PolicyRef::new("whole"),
            &[
                (
                    "p.rego".into(),
                    "package autonomy\nimport data.lib\nallow if lib.ok\nallow if count(lib) > 9\n"
                        .into(),
                ),
                ("lib.rego".into(), LIB.into()),
            ],
            None,
        )
        .unwrap();
        let v = with_call("tool.echo", &json!({"endpoint": 7}), |input| {
            whole.evaluate(input)
        });
        assert_eq!(v.decision, crate::types::Decision::Deny, "{v:?}");
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
            let v = with_call("tool.echo", &params, |input| policy.evaluate(input));
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
