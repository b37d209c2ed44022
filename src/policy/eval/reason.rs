//! The deny reason, remembered: the interpreter's `reason` for one input is reused for every
//! later input that agrees with it on everything the policy reads.
//!
//! Evaluating `reason` is most of a deny's cost (the VM decides `allow` in ≈1 µs; the
//! interpreter then takes ≈6–30 µs for the reason, which often just names the kind). A Rego
//! evaluation is a function of the input paths the policy refers to, the policy's data (fixed
//! for a compiled policy) and nothing else, unless the policy replaces the input (`with`),
//! reads it whole or through an import, or calls a builtin whose result is not a function of
//! its arguments (the clock, randomness, the network). So at compile time every reference to
//! `input` in every module is collected as its static path (`input.params.endpoint` →
//! `[params, endpoint]`; `input.params[x]` → `[params]`); at evaluation, the values at those
//! paths are the key, and a hit returns exactly what the interpreter returned for that key.
//!
//! Only what cannot be wrong is kept: only answers the interpreter gave without an error (an
//! error or a time limit is evaluated again next time), only keys made of short strings,
//! booleans, null and "undefined" (a number prints differently as `1` and `1.0` while
//! comparing equal; objects and arrays would make keys of any size), and at most
//! [`MAX_ENTRIES`] of them. The decision itself is never taken from here: the memo is asked
//! only once `allow` is known to be false.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// At most this many remembered reasons; when full, the memo starts over.
pub const MAX_ENTRIES: usize = 1024;
/// The longest string value that can be part of a key, in bytes.
pub const MAX_KEY_STRING: usize = 256;

/// Builtins whose result is not a function of their arguments (prefixes of their names).
const NOT_PURE: [&str; 8] = [
    "time.now_ns",
    "rand.",
    "uuid.",
    "http.send",
    "opa.runtime",
    "net.lookup_ip_addr",
    "io.jwt.decode_verify",
    "trace",
];

/// Why a policy's reasons are evaluated every time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoMemo {
    /// Switched off (`AUTONOMY_REASON_MEMO=off`).
    #[error("AUTONOMY_REASON_MEMO=off")]
    Off,
    /// The policy refers to the input as a whole (`input`, `input[x]`).
    #[error("it reads the whole input")]
    WholeInput,
    /// A module imports the input (`import input.params as p`).
    #[error("it imports the input")]
    ImportsInput,
    /// A `with` replaces the input or data for part of the evaluation.
    #[error("it uses `with`")]
    With,
    /// A builtin whose answer may change from call to call.
    #[error("it calls {0}")]
    NotPure(String),
}

/// One part of a key: the value at one of the policy's input paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Undefined,
    Null,
    Bool(bool),
    Str(Box<str>),
}

/// The remembered reasons of one compiled policy.
pub struct ReasonMemo {
    /// The input paths the policy reads, each below `input`.
    paths: Vec<Vec<regorus::Value>>,
    /// Key → the interpreter's explanation of the deny.
    seen: Mutex<HashMap<Vec<Part>, Explained>>,
}

/// What a deny's evaluation found: the same for every input with the same key.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// The `reason` (`None`: not a string, so the default reason).
    pub reason: Option<String>,
    /// The rule definitions behind the deny (see [`super::provenance`]).
    pub rules: Vec<std::sync::Arc<super::provenance::RuleRef>>,
}

impl ReasonMemo {
    /// The memo for a policy of these modules, or why it cannot have one.
    pub fn new(modules: &[Ref<Module>]) -> Result<Self, NoMemo> {
        let paths = input_paths(modules)?;
        Ok(ReasonMemo {
            paths: paths
                .into_iter()
                .map(|p| p.iter().map(|k| regorus::Value::from(k.as_str())).collect())
                .collect(),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// The key of `input`, or `None` when a value at one of the paths cannot be a key.
    pub fn key(&self, input: &regorus::Value) -> Option<Key> {
        let mut key = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            let mut v = input;
            for k in path {
                v = match v {
                    regorus::Value::Object(m) => match m.get(k) {
                        Some(x) => x,
                        None => &regorus::Value::Undefined,
                    },
                    _ => &regorus::Value::Undefined,
                };
            }
            key.push(match v {
                regorus::Value::Undefined => Part::Undefined,
                regorus::Value::Null => Part::Null,
                regorus::Value::Bool(b) => Part::Bool(*b),
                regorus::Value::String(s) if s.len() <= MAX_KEY_STRING => {
                    Part::Str(s.as_ref().into())
                }
                _ => return None,
            });
        }
        Some(Key(key))
    }

    /// The explanation remembered for `key`: `Some(e)` on a hit (`e` is the interpreter's answer).
    pub fn get(&self, key: &Key) -> Option<Explained> {
        self.seen.lock().ok()?.get(&key.0).cloned()
    }

    /// Remembers the interpreter's error-free answer for `key`.
    pub fn put(&self, key: Key, explained: Explained) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= MAX_ENTRIES {
                seen.clear();
            }
            seen.insert(key.0, explained);
        }
    }

    /// How many input paths make a key (for tests and the debug log).
    pub fn paths(&self) -> usize {
        self.paths.len()
    }
}

/// The values of one input at the policy's input paths.
pub struct Key(Vec<Part>);

/// One item of the walk over the modules.
enum Node<'a> {
    E(&'a Expr),
    Q(&'a Query),
}

/// Every static path below `input` that the modules refer to.
fn input_paths(modules: &[Ref<Module>]) -> Result<BTreeSet<Vec<String>>, NoMemo> {
    let mut work: Vec<Node> = Vec::new();
    for m in modules {
        for imp in &m.imports {
            if let Some((root, _)) = flatten(&imp.refr, &mut Vec::new())
                && root == "input"
            {
                return Err(NoMemo::ImportsInput);
            }
        }
        for rule in &m.policy {
            match &**rule {
                Rule::Spec { head, bodies, .. } => {
                    match head {
                        RuleHead::Compr { refr, assign, .. } => {
                            work.push(Node::E(refr));
                            if let Some(a) = assign {
                                work.push(Node::E(&a.value));
                            }
                        }
                        RuleHead::Set { refr, key, .. } => {
                            work.push(Node::E(refr));
                            if let Some(k) = key {
                                work.push(Node::E(k));
                            }
                        }
                        RuleHead::Func {
                            refr, args, assign, ..
                        } => {
                            work.push(Node::E(refr));
                            work.extend(args.iter().map(|a| Node::E(a)));
                            if let Some(a) = assign {
                                work.push(Node::E(&a.value));
                            }
                        }
                    }
                    for b in bodies {
                        work.push(Node::Q(&b.query));
                        if let Some(a) = &b.assign {
                            work.push(Node::E(&a.value));
                        }
                    }
                }
                Rule::Default {
                    refr, args, value, ..
                } => {
                    work.push(Node::E(refr));
                    work.extend(args.iter().map(|a| Node::E(a)));
                    work.push(Node::E(value));
                }
            }
        }
    }
    let mut paths = BTreeSet::new();
    while let Some(n) = work.pop() {
        match n {
            Node::Q(q) => {
                for stmt in &q.stmts {
                    if !stmt.with_mods.is_empty() {
                        return Err(NoMemo::With);
                    }
                    match &stmt.literal {
                        Literal::SomeVars { .. } => {}
                        Literal::SomeIn {
                            key,
                            value,
                            collection,
                            ..
                        } => {
                            if let Some(k) = key {
                                work.push(Node::E(k));
                            }
                            work.push(Node::E(value));
                            work.push(Node::E(collection));
                        }
                        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                            work.push(Node::E(expr));
                        }
                        Literal::Every { domain, query, .. } => {
                            work.push(Node::E(domain));
                            work.push(Node::Q(query));
                        }
                    }
                }
            }
            Node::E(e) => match e {
                Expr::String { .. }
                | Expr::RawString { .. }
                | Expr::Number { .. }
                | Expr::Bool { .. }
                | Expr::Null { .. } => {}
                Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                    let mut dynamic = Vec::new();
                    let flat = flatten(e, &mut dynamic);
                    work.extend(dynamic.into_iter().map(Node::E));
                    if let Some((root, path)) = flat
                        && root == "input"
                    {
                        if path.is_empty() {
                            return Err(NoMemo::WholeInput);
                        }
                        paths.insert(path);
                    }
                }
                Expr::Array { items, .. } | Expr::Set { items, .. } => {
                    work.extend(items.iter().map(|i| Node::E(i)));
                }
                Expr::Object { fields, .. } => {
                    for (_, k, v) in fields {
                        work.push(Node::E(k));
                        work.push(Node::E(v));
                    }
                }
                Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                    work.push(Node::E(term));
                    work.push(Node::Q(query));
                }
                Expr::ObjectCompr {
                    key, value, query, ..
                } => {
                    work.push(Node::E(key));
                    work.push(Node::E(value));
                    work.push(Node::Q(query));
                }
                Expr::Call { fcn, params, .. } => {
                    let mut dynamic = Vec::new();
                    if let Some((root, rest)) = flatten(fcn, &mut dynamic) {
                        let name = std::iter::once(root.to_string())
                            .chain(rest)
                            .collect::<Vec<_>>()
                            .join(".");
                        if NOT_PURE.iter().any(|p| name.starts_with(p)) {
                            return Err(NoMemo::NotPure(name));
                        }
                    }
                    // The function's name is not a read; anything dynamic in it is.
                    work.extend(dynamic.into_iter().map(Node::E));
                    work.extend(params.iter().map(|p| Node::E(p)));
                }
                Expr::UnaryExpr { expr, .. } => work.push(Node::E(expr)),
                Expr::BinExpr { lhs, rhs, .. }
                | Expr::BoolExpr { lhs, rhs, .. }
                | Expr::ArithExpr { lhs, rhs, .. }
                | Expr::AssignExpr { lhs, rhs, .. } => {
                    work.push(Node::E(lhs));
                    work.push(Node::E(rhs));
                }
                Expr::Membership {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        work.push(Node::E(k));
                    }
                    work.push(Node::E(value));
                    work.push(Node::E(collection));
                }
            },
        }
    }
    Ok(paths)
}

/// A ref as its root variable and its constant components up to the first one that is not a
/// constant string (`input.params[x].y` → `("input", [params])`); the expressions of every
/// other component (and a root that is not a variable) go to `dynamic`, to be walked.
fn flatten<'a>(e: &'a Expr, dynamic: &mut Vec<&'a Expr>) -> Option<(&'a str, Vec<String>)> {
    let mut rev: Vec<Option<String>> = Vec::new();
    let mut cur = e;
    let root = loop {
        match cur {
            Expr::Var { span, .. } => break Some(span.text()),
            Expr::RefDot { refr, field, .. } => {
                rev.push(Some(field.0.text().to_string()));
                cur = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        rev.push(value.as_string().ok().map(|s| s.to_string()));
                    }
                    other => {
                        rev.push(None);
                        dynamic.push(other);
                    }
                }
                cur = refr;
            }
            other => {
                dynamic.push(other);
                break None;
            }
        }
    };
    let path = rev.into_iter().rev().map_while(|c| c).collect();
    root.map(|r| (r, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::eval::rego::RegoPolicy;
    use crate::policy::eval::{DEMO_REGO, PolicyEvaluator, with_call};
    use crate::types::{Decision, PolicyRef};
    use serde_json::{Value, json};

    fn compile(src: &str, data: Option<Value>) -> RegoPolicy {
        let modules: Vec<(String, String)> = src
            .split("\n---\n")
            .enumerate()
            .map(|(i, m)| (format!("p{i}.rego"), m.to_string()))
            .collect();
        // A generous time limit: a loaded machine must not turn one of the two evaluations
        // compared into a time-out deny.
        RegoPolicy::compile_with_limit(
            PolicyRef::new("t"),
            &modules,
            data,
            std::time::Duration::from_secs(10),
        )
        .unwrap()
    }

    fn example(dir: &str) -> String {
        let path = format!("{}/examples/policies/{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut mods = Vec::new();
        for f in ["policy.rego", "ros/launch.rego"] {
            if let Ok(s) = std::fs::read_to_string(format!("{path}/{f}")) {
                mods.push(s);
            }
        }
        mods.join("\n---\n")
    }

    /// (name, modules separated by `---` lines, data, whether reasons are remembered).
    fn table() -> Vec<(&'static str, String, Option<Value>, bool)> {
        let p = |body: &str| format!("package autonomy\n{body}\n");
        vec![
            ("demo", DEMO_REGO.to_string(), None, true),
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
                "example ros-launch-allowlist",
                example("ros-launch-allowlist"),
                Some(json!({"ros": {"packages": ["demo_nodes_cpp", "turtlesim"]}})),
                true,
            ),
            (
                "a reason that errors for some inputs",
                p(
                    "default allow := false\nreason := concat(\"/\", split(input.params.endpoint, \":\"))",
                ),
                None,
                true,
            ),
            (
                "a reason undefined for some inputs",
                p("default allow := false\nreason := \"echo\" if input.kind == \"tool.echo\""),
                None,
                true,
            ),
            (
                "a reason that is not a string",
                p(
                    "default allow := false\nreason := 7 if input.kind == \"tool.echo\"\nreason := \"other\" if input.kind != \"tool.echo\"",
                ),
                None,
                true,
            ),
            (
                "conflicting reasons",
                p(
                    "default allow := false\nreason := \"a\" if input.params.a == true\nreason := \"b\" if input.params.b == true",
                ),
                None,
                true,
            ),
            (
                "numbers print as they came",
                p("default allow := false\nreason := sprintf(\"n is %v\", [input.params.n])"),
                None,
                true,
            ),
            (
                "a dynamic key keeps the whole object",
                p(
                    "default allow := false\nreason := sprintf(\"has %v\", [input.params[input.kind]])",
                ),
                None,
                true,
            ),
            (
                "the interpreter decides allow too",
                p(
                    "allow if startswith(input.params.message, \"ok\")\nreason := sprintf(\"%s: %s\", [input.kind, input.params.message])",
                ),
                None,
                true,
            ),
            (
                "a deny that offers a patch",
                p(
                    "default allow := false\nreason := \"too loud\"\npatch := {\"message\": \"hi\"} if input.params.message == \"my password\"",
                ),
                None,
                true,
            ),
            (
                "the whole input",
                p("default allow := false\nreason := sprintf(\"%v\", [count(input)])"),
                None,
                false,
            ),
            (
                "with",
                p(
                    "default allow := false\nr if input.kind == \"x\"\nreason := \"w\" if {\n r with input.kind as \"x\"\n}",
                ),
                None,
                false,
            ),
            (
                "the clock",
                p("default allow := false\nreason := \"late\" if time.now_ns() > 0"),
                None,
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
            json!({"message": "ok go"}),
            json!({"message": "my password"}),
            json!({"message": 7}),
            json!({"message": "x".repeat(300)}),
            json!({"endpoint": 7}),
            json!({"endpoint": "https://ifconfig.me/ip"}),
            json!({"endpoint": "https://evil.example/ip"}),
            json!({"endpoint": "http://ifconfig.me/ip"}),
            json!({"a": true, "b": true}),
            json!({"a": true}),
            json!({"n": 1}),
            json!({"n": 1.0}),
            json!({"n": "1"}),
            json!({"package": "turtlesim", "launch_file": "x.launch.py"}),
            json!({"package": "turtlesim", "launch_file": "x.sh"}),
            json!({"package": "evil", "launch_file": "x.launch.py"}),
            json!({"tool.echo": 1, "tool.shell": "s"}),
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
    fn remembered_reasons_are_the_interpreters() {
        let mut hits = 0;
        for (name, src, data, want_memo) in table() {
            let policy = compile(&src, data);
            assert_eq!(
                policy.reason_memo().is_ok(),
                want_memo,
                "{name}: {:?}",
                policy.reason_memo()
            );
            // Two passes: the second finds every error-free reason of the first remembered.
            for pass in 0..2 {
                for (kind, params) in inputs() {
                    let (got, reference) = with_call(kind, &params, |input| {
                        (policy.evaluate(input), policy.evaluate_interpreted(input))
                    });
                    assert_eq!(
                        got, reference,
                        "{name}, pass {pass}: kind {kind} params {params:?}"
                    );
                    if pass == 1 && want_memo && got.decision == Decision::Deny {
                        hits += 1;
                    }
                }
            }
        }
        assert!(hits > 500, "{hits}");
    }

    #[test]
    fn keys_are_the_paths_the_policy_reads() {
        let policy = compile(DEMO_REGO, None);
        assert!(policy.reason_memo().is_ok());
        let memo = ReasonMemo::new(&parse(DEMO_REGO)).unwrap();
        assert_eq!(memo.paths(), 1);
        let memo = ReasonMemo::new(&parse(&example("http-allowlist"))).unwrap();
        // input.kind and input.params.endpoint.
        assert_eq!(memo.paths(), 2);
        let key = |v: Value| memo.key(&regorus::Value::from(v)).map(|k| k.0);
        assert_eq!(
            key(json!({"kind": "tool.x", "params": {"endpoint": "e", "other": 1}})),
            key(json!({"kind": "tool.x", "params": {"endpoint": "e", "other": [2]}}))
        );
        assert_ne!(
            key(json!({"kind": "tool.x", "params": {"endpoint": "e"}})),
            key(json!({"kind": "tool.x", "params": {"endpoint": "f"}}))
        );
        assert_ne!(
            key(json!({"kind": "tool.x", "params": {}})),
            key(json!({"kind": "tool.x", "params": {"endpoint": null}}))
        );
        // Numbers, collections and long strings make no key.
        assert_eq!(
            key(json!({"kind": "tool.x", "params": {"endpoint": 1}})),
            None
        );
        assert_eq!(
            key(json!({"kind": "tool.x", "params": {"endpoint": []}})),
            None
        );
        let long = "e".repeat(MAX_KEY_STRING + 1);
        assert_eq!(
            key(json!({"kind": "tool.x", "params": {"endpoint": long}})),
            None
        );
    }

    #[test]
    fn why_reasons_are_evaluated_every_time() {
        let why = |body: &str| {
            ReasonMemo::new(&parse(&format!("package autonomy\n{body}\n")))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(why("reason := input.kind"), Ok(()));
        assert_eq!(
            why("reason := sprintf(\"%v\", [input])"),
            Err("it reads the whole input".into())
        );
        assert_eq!(
            why("reason := input[input.kind]"),
            Err("it reads the whole input".into())
        );
        assert_eq!(
            why("import input.params as p\nreason := p.x"),
            Err("it imports the input".into())
        );
        assert_eq!(
            why("r if input.kind == \"x\"\nreason := \"w\" if {\n r with input.kind as \"x\"\n}"),
            Err("it uses `with`".into())
        );
        assert_eq!(
            why("reason := sprintf(\"%v\", [rand.intn(\"x\", 9)])"),
            Err("it calls rand.intn".into())
        );
        assert_eq!(NoMemo::Off.to_string(), "AUTONOMY_REASON_MEMO=off");
    }

    #[test]
    fn the_memo_stays_bounded() {
        let memo = ReasonMemo::new(&parse("package autonomy\nreason := input.kind\n")).unwrap();
        for i in 0..(MAX_ENTRIES * 3) {
            let k = memo
                .key(&regorus::Value::from(json!({"kind": format!("tool.k{i}")})))
                .unwrap();
            memo.put(
                k,
                Explained {
                    reason: Some(i.to_string()),
                    rules: Vec::new(),
                },
            );
            assert!(memo.seen.lock().unwrap().len() <= MAX_ENTRIES);
        }
    }

    fn parse(src: &str) -> Vec<Ref<Module>> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        for (i, m) in src.split("\n---\n").enumerate() {
            engine
                .add_policy(format!("p{i}.rego"), m.to_string())
                .unwrap();
        }
        engine.get_modules().to_vec()
    }
}
