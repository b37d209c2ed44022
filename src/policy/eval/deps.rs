//! What every rule of a policy depends on: refuses recursion as OPA's compiler does
//! (`rego_recursion_error`), and bounds how deep evaluating the policy can go.
//!
//! regorus evaluates on the native stack and follows every reference to another rule or function
//! by recursing into it; a rule that depends on itself recurses until the stack overflows, which
//! aborts the whole process. So every policy is checked here before it is used:
//!
//! - **The graph.** One node per rule path (`data.<package>.<rule>`; all definitions of a rule,
//!   its default and `else` branches are one node) and per function. A rule depends on what its
//!   head and bodies refer to: a bare name of a rule of its package, `data.…` refs (also through
//!   `import data.x as y`), calls of user functions, and the values of `with … as …`. A ref that
//!   stops at a prefix (`data.autonomy`, `data[x]`, `data.lib[k]`) depends on every rule under
//!   that prefix, as in OPA. Names declared in the rule (function arguments, `:=`, `some`,
//!   `every`) are locals, not rules.
//! - **Recursion.** Any cycle is refused with one line naming its rules:
//!   `p.rego:3: rego_recursion_error: rule data.autonomy.a is recursive: data.autonomy.a -> data.autonomy.b -> data.autonomy.a`.
//! - **Depth.** With no cycle the graph is a DAG, so evaluation nests at most as deep as its
//!   heaviest path. Each rule weighs its own nesting (one frame for the rule, one per level of
//!   expression inside it); [`Deps::stack_need`] turns the heaviest path into bytes of native
//!   stack, and a policy that needs more than [`MAX_STACK`] is refused at load time.
//!
//! Every walk here is iterative (an explicit work list), so checking a hostile policy cannot
//! overflow the stack either.

use std::collections::{BTreeMap, HashMap, HashSet};

use regorus::unstable::{AssignOp, Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// Stack bytes one level of rule or function evaluation may use besides its expressions.
/// Measured by `policy::deps::tests::stack_per_level_holds` in the unoptimised build (where
/// frames are largest): 18–23 KB per level for plain chains of rules or functions, up to 38 KB
/// with a comprehension per level; these figures keep at least twice that.
pub const STACK_PER_RULE: usize = 40 * 1024;
/// Stack bytes one level of expression nesting inside a rule may use (measured: 2.4 KB per
/// operator in a long chain, about 4 KB per comprehension or `every` level).
pub const STACK_PER_EXPR: usize = 8 * 1024;
/// Stack bytes an evaluation needs besides its rules: the entry, builtins, and values as deep as
/// the input and data may be (JSON nests at most 128 levels when parsed).
pub const STACK_BASE: usize = 256 * 1024;
/// The most stack one evaluation may need; a policy that needs more is refused.
pub const MAX_STACK: usize = 256 * 1024 * 1024;
/// The deepest expression nesting one rule may have.
pub const MAX_EXPR_DEPTH: usize = 256;
/// The deepest nesting of `[` and `{` in a module's source. regorus's parser tries each one as a
/// comprehension first and parses it again as an array, set or object when that fails, so its
/// time doubles with every level (16 levels: seconds; 30: hours), before any time limit applies.
pub const MAX_BRACKET_DEPTH: usize = 10;

/// Why a policy's rules cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepsError {
    /// A rule or function depends on itself.
    #[error("{0}")]
    Recursion(String),
    /// Evaluating the policy could go deeper than the stack budget allows.
    #[error("{0}")]
    TooDeep(String),
}

/// Refuses a module whose `[`/`{` nesting would make regorus's parser take exponential time
/// (see [`MAX_BRACKET_DEPTH`]). A lexical scan: strings, raw strings and comments are skipped.
pub fn check_source(file: &str, src: &str) -> Result<(), DepsError> {
    let (mut depth, mut line) = (0usize, 1u32);
    let mut chars = src.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    match c {
                        '`' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_BRACKET_DEPTH {
                    return Err(DepsError::TooDeep(format!(
                        "{file}:{line}: brackets ([ and {{) nest more than {MAX_BRACKET_DEPTH} levels deep (use helper rules or data.json for deeply nested values)"
                    )));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The checked dependency graph's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deps {
    /// Rules on the heaviest chain of rule/function evaluations.
    pub depth: usize,
    /// Native stack bytes the heaviest chain may need.
    pub stack_need: usize,
}

impl Deps {
    /// Stack bytes one evaluation of this policy may need, base included.
    pub fn stack_need(&self) -> usize {
        self.stack_need
    }
}

/// Where a rule is defined, for messages.
#[derive(Debug, Clone)]
struct Loc {
    file: String,
    line: u32,
}

/// One node: a rule path (with where it is first defined) or a path prefix that only groups rules.
struct Node {
    path: Vec<String>,
    rule: Option<Loc>,
    /// The deepest expression nesting of its definitions.
    expr_depth: usize,
}

#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    index: HashMap<Vec<String>, usize>,
    edges: Vec<Vec<usize>>,
}

impl Graph {
    /// The node for `path`, creating it and its prefixes (each prefix points to its children).
    fn node(&mut self, path: &[String]) -> usize {
        if let Some(&i) = self.index.get(path) {
            return i;
        }
        let mut parent: Option<usize> = None;
        let mut id = 0;
        for n in 1..=path.len() {
            id = match self.index.get(&path[..n]) {
                Some(&i) => i,
                None => {
                    let i = self.nodes.len();
                    self.nodes.push(Node {
                        path: path[..n].to_vec(),
                        rule: None,
                        expr_depth: 0,
                    });
                    self.edges.push(Vec::new());
                    self.index.insert(path[..n].to_vec(), i);
                    if let Some(p) = parent {
                        self.edges[p].push(i);
                    }
                    i
                }
            };
            parent = Some(id);
        }
        id
    }

    /// What a ref to `path` depends on: every rule whose path is a prefix of it (the rule's value
    /// holds it) and the node at `path` itself (every rule under it).
    fn targets(&self, path: &[String], out: &mut Vec<usize>) {
        for n in 1..=path.len() {
            match self.index.get(&path[..n]) {
                Some(&i) => {
                    if n == path.len() || self.nodes[i].rule.is_some() {
                        out.push(i);
                    }
                }
                None => return,
            }
        }
    }
}

fn name(path: &[String]) -> String {
    path.join(".")
}

/// The static path of a rule head or package ref (`a.b["c"]` → `[a, b, c]`), stopping at the
/// first component that is not a constant string.
fn static_path(e: &Expr) -> Vec<String> {
    let mut rev = Vec::new();
    let mut cur = e;
    loop {
        match cur {
            Expr::Var { span, .. } => {
                rev.push(span.text().to_string());
                break;
            }
            Expr::RefDot { refr, field, .. } => {
                rev.push(field.0.text().to_string());
                cur = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        rev.push(value.as_string().map(|s| s.to_string()).unwrap_or_default());
                    }
                    // Everything after a dynamic component is dropped: the rule is its prefix.
                    _ => rev.clear(),
                }
                cur = refr;
            }
            _ => {
                rev.clear();
                break;
            }
        }
    }
    rev.reverse();
    rev
}

/// One item of the iterative walk over a rule.
enum Work<'a> {
    Expr(&'a Expr, usize, usize),
    Query(&'a Query, usize, usize),
}

/// Scopes of local names, innermost last-linked: `(parent, names)`.
struct Scopes {
    scopes: Vec<(Option<usize>, HashSet<String>)>,
}

impl Scopes {
    /// Scopes with one outermost scope (id 0) holding `names`.
    fn new(names: HashSet<String>) -> Self {
        Scopes {
            scopes: vec![(None, names)],
        }
    }

    fn push(&mut self, parent: usize, names: HashSet<String>) -> usize {
        self.scopes.push((Some(parent), names));
        self.scopes.len() - 1
    }

    fn is_local(&self, mut s: usize, name: &str) -> bool {
        loop {
            let (parent, names) = &self.scopes[s];
            if names.contains(name) {
                return true;
            }
            match parent {
                Some(p) => s = *p,
                None => return false,
            }
        }
    }
}

/// The variables a pattern binds (`x`, `[x, y]`, `{"k": x}`).
fn pattern_vars(e: &Expr, out: &mut HashSet<String>) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::Var { span, .. } => {
                out.insert(span.text().to_string());
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                stack.extend(items.iter().map(|i| i.as_ref()))
            }
            Expr::Object { fields, .. } => stack.extend(fields.iter().map(|(_, _, v)| v.as_ref())),
            _ => {}
        }
    }
}

/// The names a query's own statements declare (not those of nested comprehensions).
fn declared(q: &Query) -> HashSet<String> {
    let mut names = HashSet::new();
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::SomeVars { vars, .. } => {
                names.extend(vars.iter().map(|v| v.text().to_string()));
            }
            Literal::SomeIn { key, value, .. } => {
                if let Some(k) = key {
                    pattern_vars(k, &mut names);
                }
                pattern_vars(value, &mut names);
            }
            Literal::Expr { expr, .. } => {
                if let Expr::AssignExpr {
                    op: AssignOp::ColEq,
                    lhs,
                    ..
                } = expr.as_ref()
                {
                    pattern_vars(lhs, &mut names);
                }
            }
            Literal::NotExpr { .. } | Literal::Every { .. } => {}
        }
    }
    names
}

/// What one module's names resolve to.
struct ModuleCtx {
    package: Vec<String>,
    /// Import alias → the path it stands for; `None` for `input` imports.
    imports: HashMap<String, Option<Vec<String>>>,
}

impl ModuleCtx {
    fn new(m: &Module) -> Self {
        let mut package = vec!["data".to_string()];
        package.extend(static_path(&m.package.refr));
        let mut imports = HashMap::new();
        for imp in &m.imports {
            let path = static_path(&imp.refr);
            let Some(root) = path.first() else { continue };
            let alias = match &imp.r#as {
                Some(a) => a.text().to_string(),
                None => match path.last() {
                    Some(l) => l.clone(),
                    None => continue,
                },
            };
            match root.as_str() {
                "data" => {
                    imports.insert(alias, Some(path));
                }
                "input" => {
                    imports.insert(alias, None);
                }
                // `future.keywords…`, `rego.v1`: no names.
                _ => {}
            }
        }
        ModuleCtx { package, imports }
    }

    /// The data path a ref rooted at `root` with static `rest` refers to; `None` when it is a
    /// local, `input`, or `_`.
    fn resolve(
        &self,
        scopes: &Scopes,
        scope: usize,
        root: &str,
        rest: &[String],
    ) -> Option<Vec<String>> {
        if root == "_" || root == "input" || scopes.is_local(scope, root) {
            return None;
        }
        let mut path = if root == "data" {
            vec!["data".to_string()]
        } else if let Some(imp) = self.imports.get(root) {
            imp.clone()?
        } else {
            let mut p = self.package.clone();
            p.push(root.to_string());
            p
        };
        path.extend(rest.iter().cloned());
        Some(path)
    }
}

/// Walks one rule (its head and every body, `else` branches included) and records what it refers
/// to in `deps` and its deepest expression nesting in `depth`.
fn walk_rule(ctx: &ModuleCtx, g: &Graph, rule: &Rule, deps: &mut Vec<usize>, depth: &mut usize) {
    // Head pieces, body queries, else values.
    let mut roots: Vec<&Expr> = Vec::new();
    let mut bodies: Vec<(&Query, Option<&Expr>)> = Vec::new();
    let mut args = HashSet::new();
    match rule {
        Rule::Spec {
            head, bodies: bs, ..
        } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    roots.push(refr);
                    if let Some(a) = assign {
                        roots.push(&a.value);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    roots.push(refr);
                    if let Some(k) = key {
                        roots.push(k);
                    }
                }
                // The function's own name in its head is not a call: `refr` is left out.
                RuleHead::Func {
                    args: a, assign, ..
                } => {
                    for arg in a {
                        pattern_vars(arg, &mut args);
                        roots.push(arg);
                    }
                    if let Some(asg) = assign {
                        roots.push(&asg.value);
                    }
                }
            }
            for b in bs {
                bodies.push((&b.query, b.assign.as_ref().map(|a| a.value.as_ref())));
            }
        }
        Rule::Default { value, args: a, .. } => {
            for arg in a {
                pattern_vars(arg, &mut args);
            }
            roots.push(value);
        }
    }
    let mut scopes = Scopes::new(args);
    let top = 0;
    let mut work: Vec<Work> = Vec::new();
    // The head of a rule with bodies is evaluated in each body's scope; walking it once in the
    // scope of every body it shares would only repeat the same refs, so each body gets its own
    // scope and the head is walked in the union of the bodies' declarations.
    if bodies.is_empty() {
        for r in roots {
            // Rule head refs: only their dynamic parts are references.
            work.push(Work::Expr(r, top, 1));
        }
    } else {
        let mut head_names = HashSet::new();
        for (q, _) in &bodies {
            head_names.extend(declared(q));
        }
        let head_scope = scopes.push(top, head_names);
        for r in roots {
            work.push(Work::Expr(r, head_scope, 1));
        }
        for (q, else_value) in bodies {
            work.push(Work::Query(q, top, 1));
            if let Some(v) = else_value {
                let s = scopes.push(top, declared(q));
                work.push(Work::Expr(v, s, 1));
            }
        }
    }
    let head_refr = match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => Some(refr.as_ref() as *const Expr),
        },
        Rule::Default { refr, .. } => Some(refr.as_ref() as *const Expr),
    };

    while let Some(w) = work.pop() {
        match w {
            Work::Query(q, parent, d) => {
                *depth = (*depth).max(d);
                let s = scopes.push(parent, declared(q));
                for stmt in &q.stmts {
                    for m in &stmt.with_mods {
                        // The target is replaced, not read; the value is read.
                        work.push(Work::Expr(&m.r#as, s, d + 1));
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
                                work.push(Work::Expr(k, s, d + 1));
                            }
                            work.push(Work::Expr(value, s, d + 1));
                            work.push(Work::Expr(collection, s, d + 1));
                        }
                        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                            work.push(Work::Expr(expr, s, d + 1));
                        }
                        Literal::Every {
                            key,
                            value,
                            domain,
                            query,
                            ..
                        } => {
                            work.push(Work::Expr(domain, s, d + 1));
                            let mut names = HashSet::new();
                            if let Some(k) = key {
                                names.insert(k.text().to_string());
                            }
                            names.insert(value.text().to_string());
                            let es = scopes.push(s, names);
                            work.push(Work::Query(query, es, d + 1));
                        }
                    }
                }
            }
            Work::Expr(e, s, d) => {
                *depth = (*depth).max(d);
                match e {
                    Expr::String { .. }
                    | Expr::RawString { .. }
                    | Expr::Number { .. }
                    | Expr::Bool { .. }
                    | Expr::Null { .. } => {}
                    Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                        // Flatten the ref: root, static components up to the first dynamic one,
                        // and every index expression (walked on its own).
                        let is_head = head_refr == Some(e as *const Expr);
                        let mut rev = Vec::new();
                        let mut cur = e;
                        let mut chain = 0usize;
                        let root = loop {
                            chain += 1;
                            match cur {
                                Expr::Var { span, .. } => break Some(span.text()),
                                Expr::RefDot { refr, field, .. } => {
                                    rev.push(Some(field.0.text().to_string()));
                                    cur = refr;
                                }
                                Expr::RefBrack { refr, index, .. } => {
                                    match index.as_ref() {
                                        Expr::String { value, .. }
                                        | Expr::RawString { value, .. } => rev.push(Some(
                                            value
                                                .as_string()
                                                .map(|s| s.to_string())
                                                .unwrap_or_default(),
                                        )),
                                        other => {
                                            rev.push(None);
                                            work.push(Work::Expr(other, s, d + chain));
                                        }
                                    }
                                    cur = refr;
                                }
                                other => {
                                    work.push(Work::Expr(other, s, d + chain));
                                    break None;
                                }
                            }
                        };
                        *depth = (*depth).max(d + chain);
                        if is_head {
                            // The rule's own name: only the dynamic parts above are refs.
                            continue;
                        }
                        let Some(root) = root else { continue };
                        let rest: Vec<String> = rev.into_iter().rev().map_while(|c| c).collect();
                        if let Some(path) = ctx.resolve(&scopes, s, root, &rest) {
                            g.targets(&path, deps);
                        }
                    }
                    Expr::Array { items, .. } | Expr::Set { items, .. } => {
                        for i in items {
                            work.push(Work::Expr(i, s, d + 1));
                        }
                    }
                    Expr::Object { fields, .. } => {
                        for (_, k, v) in fields {
                            work.push(Work::Expr(k, s, d + 1));
                            work.push(Work::Expr(v, s, d + 1));
                        }
                    }
                    Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                        // The term sees the query's declarations.
                        let cs = scopes.push(s, declared(query));
                        work.push(Work::Expr(term, cs, d + 2));
                        work.push(Work::Query(query, s, d + 1));
                    }
                    Expr::ObjectCompr {
                        key, value, query, ..
                    } => {
                        let cs = scopes.push(s, declared(query));
                        work.push(Work::Expr(key, cs, d + 2));
                        work.push(Work::Expr(value, cs, d + 2));
                        work.push(Work::Query(query, s, d + 1));
                    }
                    Expr::Call { fcn, params, .. } => {
                        work.push(Work::Expr(fcn, s, d + 1));
                        for p in params {
                            work.push(Work::Expr(p, s, d + 1));
                        }
                    }
                    Expr::UnaryExpr { expr, .. } => work.push(Work::Expr(expr, s, d + 1)),
                    Expr::BinExpr { lhs, rhs, .. }
                    | Expr::BoolExpr { lhs, rhs, .. }
                    | Expr::ArithExpr { lhs, rhs, .. }
                    | Expr::AssignExpr { lhs, rhs, .. } => {
                        work.push(Work::Expr(lhs, s, d + 1));
                        work.push(Work::Expr(rhs, s, d + 1));
                    }
                    Expr::Membership {
                        key,
                        value,
                        collection,
                        ..
                    } => {
                        if let Some(k) = key {
                            work.push(Work::Expr(k, s, d + 1));
                        }
                        work.push(Work::Expr(value, s, d + 1));
                        work.push(Work::Expr(collection, s, d + 1));
                    }
                }
            }
        }
    }
}

fn rule_head(rule: &Rule) -> &Ref<Expr> {
    match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
        Rule::Default { refr, .. } => refr,
    }
}

/// Builds the graph of `modules`, refuses recursion and policies deeper than the budget.
pub fn check(modules: &[Ref<Module>]) -> Result<Deps, DepsError> {
    let mut g = Graph::default();
    let ctxs: Vec<ModuleCtx> = modules.iter().map(|m| ModuleCtx::new(m)).collect();
    // Nodes first, so refs can be resolved against every rule of every module.
    let mut owners: Vec<(usize, usize, &Rule)> = Vec::new();
    for (mi, m) in modules.iter().enumerate() {
        for rule in &m.policy {
            let head = rule_head(rule);
            let mut path = ctxs[mi].package.clone();
            path.extend(static_path(head));
            let id = g.node(&path);
            if g.nodes[id].rule.is_none() {
                let span = head.span();
                g.nodes[id].rule = Some(Loc {
                    file: span.source.get_path().clone(),
                    line: span.line,
                });
            }
            owners.push((mi, id, rule.as_ref()));
        }
    }
    for (mi, id, rule) in owners {
        let mut deps = Vec::new();
        let mut depth = 0;
        walk_rule(&ctxs[mi], &g, rule, &mut deps, &mut depth);
        if depth > MAX_EXPR_DEPTH {
            let loc = g.nodes[id].rule.clone();
            return Err(DepsError::TooDeep(format!(
                "{}rule {} nests expressions {depth} levels deep; the limit is {MAX_EXPR_DEPTH} (split it into helper rules)",
                loc.map(|l| format!("{}:{}: ", l.file, l.line))
                    .unwrap_or_default(),
                name(&g.nodes[id].path),
            )));
        }
        let n = &mut g.nodes[id];
        n.expr_depth = n.expr_depth.max(depth);
        g.edges[id].extend(deps);
    }
    for e in &mut g.edges {
        e.sort_unstable();
        e.dedup();
    }
    analyse(&g)
}

/// Stack bytes one node adds on a chain.
fn weight(n: &Node) -> usize {
    match n.rule {
        Some(_) => STACK_PER_RULE + STACK_PER_EXPR * n.expr_depth,
        None => 0,
    }
}

/// Topological order from the sinks (Kahn's algorithm on reversed edges): the heaviest chain,
/// or the first cycle.
fn analyse(g: &Graph) -> Result<Deps, DepsError> {
    let n = g.nodes.len();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut out_deg = vec![0usize; n];
    for (i, es) in g.edges.iter().enumerate() {
        out_deg[i] = es.len();
        for &j in es {
            preds[j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| out_deg[i] == 0).collect();
    // (stack bytes, rules) of the heaviest chain starting at each node.
    let mut best = vec![(0usize, 0usize); n];
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        let (mut bytes, mut rules) = (0, 0);
        for &j in &g.edges[i] {
            if best[j].0 > bytes || (best[j].0 == bytes && best[j].1 > rules) {
                (bytes, rules) = best[j];
            }
        }
        let is_rule = usize::from(g.nodes[i].rule.is_some());
        best[i] = (bytes.saturating_add(weight(&g.nodes[i])), rules + is_rule);
        for &p in &preds[i] {
            out_deg[p] -= 1;
            if out_deg[p] == 0 {
                ready.push(p);
            }
        }
    }
    if done < n {
        return Err(DepsError::Recursion(cycle(g, &out_deg)));
    }
    let (bytes, rules) = best.iter().copied().max().unwrap_or((0, 0));
    let need = STACK_BASE.saturating_add(bytes);
    if need > MAX_STACK {
        return Err(DepsError::TooDeep(format!(
            "evaluating this policy could nest {rules} rules deep and need {} MiB of stack; the limit is {} MiB (make the chain of rules that use each other shorter)",
            need.div_ceil(1024 * 1024),
            MAX_STACK / (1024 * 1024)
        )));
    }
    Ok(Deps {
        depth: rules,
        stack_need: need,
    })
}

/// One cycle among the nodes Kahn's algorithm could not order (each has an edge to another
/// such node), as OPA words it, starting at its first rule in source order.
fn cycle(g: &Graph, out_deg: &[usize]) -> String {
    let left = |i: usize| out_deg[i] > 0;
    // Start at the first unordered rule in source order, walk until a node repeats.
    let by_source = |i: &usize| {
        g.nodes[*i]
            .rule
            .as_ref()
            .map(|l| (l.file.clone(), l.line))
            .unwrap_or_default()
    };
    let mut start: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| left(i) && g.nodes[i].rule.is_some())
        .collect();
    start.sort_by_key(by_source);
    let Some(&first) = start.first() else {
        return "rego_recursion_error: the policy's rules depend on each other in a cycle".into();
    };
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut walk = vec![first];
    let mut cur = first;
    let loop_start = loop {
        seen.insert(cur, walk.len() - 1);
        // Every node left has at least one edge to another node left.
        let Some(&next) = g.edges[cur].iter().find(|&&j| left(j)) else {
            return "rego_recursion_error: the policy's rules depend on each other in a cycle"
                .into();
        };
        if let Some(&at) = seen.get(&next) {
            break at;
        }
        walk.push(next);
        cur = next;
    };
    // Only rules are named: prefix nodes just group them.
    let mut rules: Vec<usize> = walk[loop_start..]
        .iter()
        .copied()
        .filter(|&i| g.nodes[i].rule.is_some())
        .collect();
    if let Some(pos) = rules
        .iter()
        .enumerate()
        .min_by_key(|(_, i)| by_source(i))
        .map(|(p, _)| p)
    {
        rules.rotate_left(pos);
    }
    let Some(&head) = rules.first() else {
        return "rego_recursion_error: the policy's rules depend on each other in a cycle".into();
    };
    let mut chain: Vec<String> = rules.iter().map(|&i| name(&g.nodes[i].path)).collect();
    chain.push(name(&g.nodes[head].path));
    let loc = g.nodes[head]
        .rule
        .as_ref()
        .map(|l| format!("{}:{}: ", l.file, l.line))
        .unwrap_or_default();
    format!(
        "{loc}rego_recursion_error: rule {} is recursive: {}",
        name(&g.nodes[head].path),
        chain.join(" -> ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_src(modules: &[&str]) -> Result<Deps, DepsError> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        for (i, m) in modules.iter().enumerate() {
            engine
                .add_policy(format!("p{i}.rego"), m.to_string())
                .unwrap_or_else(|e| panic!("{m}: {e}"));
        }
        check(engine.get_modules())
    }

    fn recursion(modules: &[&str]) -> String {
        match check_src(modules) {
            Err(DepsError::Recursion(m)) => m,
            other => panic!("{modules:?}: want a recursion error, got {other:?}"),
        }
    }

    #[test]
    fn recursion_is_refused_as_opa_words_it() {
        assert_eq!(
            recursion(&[
                "package autonomy\nf(x) := y if { y := f(x) }\nallow if { input.kind == \"tool.echo\"; f(1) }"
            ]),
            "p0.rego:2: rego_recursion_error: rule data.autonomy.f is recursive: data.autonomy.f -> data.autonomy.f"
        );
        assert_eq!(
            recursion(&["package autonomy\ndefault allow := false\na if b\nb if a\nallow if a"]),
            "p0.rego:3: rego_recursion_error: rule data.autonomy.a is recursive: data.autonomy.a -> data.autonomy.b -> data.autonomy.a"
        );
        // Across packages, through an import alias and a data ref.
        assert_eq!(
            recursion(&[
                "package autonomy\nimport data.lib as l\nallow if l.ok",
                "package lib\nok if data.autonomy.allow",
            ]),
            "p0.rego:3: rego_recursion_error: rule data.autonomy.allow is recursive: data.autonomy.allow -> data.lib.ok -> data.autonomy.allow"
        );
        // A ref to a prefix depends on every rule under it, itself included.
        assert!(
            recursion(&["package autonomy\nallow if count(data.autonomy) > 0"])
                .contains("rule data.autonomy.allow is recursive")
        );
        assert!(
            recursion(&["package autonomy\nallow if data[input.kind]"])
                .contains("rule data.autonomy.allow is recursive")
        );
        // An else branch, a with value, a head value, a partial set.
        assert!(
            recursion(&["package autonomy\np := 1 if input.x else := q\nq := p\nallow if p"])
                .contains("data.autonomy.p -> data.autonomy.q -> data.autonomy.p")
        );
        assert!(
            recursion(&[
                "package autonomy\ng(x) := x\nh(x) := y if { y := g(x) with g as h }\nallow if h(1)"
            ])
            .contains("rule data.autonomy.h is recursive: data.autonomy.h -> data.autonomy.h")
        );
        assert!(
            recursion(&[
                "package autonomy\ndeny contains m if { some m in deny }\nallow if count(deny) == 0"
            ])
            .contains("rule data.autonomy.deny is recursive")
        );
        assert!(
            recursion(&[
                "package autonomy\nx := [y | some y in z]\nz := {k: 1 | k := x[_]}\nallow if x"
            ])
            .contains("data.autonomy.x -> data.autonomy.z -> data.autonomy.x")
        );
    }

    #[test]
    fn locals_are_not_rules() {
        for src in [
            // A function's argument named like a rule that calls the function.
            "package autonomy\ng(a) := a + 1\na := g(1)\nallow if a == 2",
            // `every`, `some … in`, `:=` and comprehension locals.
            "package autonomy\na if b\nb if { every a in [1] { a == 1 } }\nallow if a",
            "package autonomy\na if b\nb if { some a in [1]; a == 1 }\nallow if a",
            "package autonomy\na if b\nb if { a := 1; a == 1 }\nallow if a",
            "package autonomy\na if b\nb if { [a | some a in [1]] == [1] }\nallow if a",
            "package autonomy\nimport input.params as a\nb if a.x\nallow if b",
        ] {
            check_src(&[src]).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }

    #[test]
    fn deep_brackets_are_refused_before_parsing() {
        let nest = |k: usize| "[".repeat(k) + "1" + &"]".repeat(k);
        let ok = format!(
            "package autonomy\n# [[[[[[[[[[[[[[[[\nx := \"{{{{{{{{{{{{{{{{{{{{{{{{\"\ny := `[[[[[[[[[[[[[[[[[[[`\nallow if {{ z := {} }}\n",
            nest(MAX_BRACKET_DEPTH - 1)
        );
        check_source("p.rego", &ok).unwrap();
        let bad = format!("package autonomy\n\nallow if {{ z := {} }}\n", nest(30));
        assert_eq!(
            check_source("p.rego", &bad).unwrap_err().to_string(),
            "p.rego:3: brackets ([ and {) nest more than 10 levels deep (use helper rules or data.json for deeply nested values)"
        );
    }

    #[test]
    fn depth_is_the_longest_chain() {
        let mut src = String::from("package autonomy\nallow if a0\n");
        for i in 0..999 {
            src.push_str(&format!("a{i} if a{}\n", i + 1));
        }
        src.push_str("a999 if input.kind == \"tool.echo\"\n");
        let d = check_src(&[&src]).unwrap();
        assert_eq!(d.depth, 1001);
        assert!(d.stack_need <= MAX_STACK);
    }

    /// The least stack seen free by `probe()` on this thread.
    static LOWEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

    /// Stack bytes the interpreter used between entering `allow` and reaching `probe()` at the
    /// deepest point of `src`, and what [`check`] predicts for it. Runs on a thread with a stack
    /// of `MAX_STACK`, so an estimate that is too low shows as a failed assertion, not an abort.
    fn measure(src: &str) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        let src = src.to_string();
        std::thread::Builder::new()
            .stack_size(MAX_STACK)
            .spawn(move || {
                let mut engine = regorus::Engine::new();
                engine.set_rego_v0(false);
                engine.set_strict_builtin_errors(true);
                engine
                    .add_extension(
                        "probe".into(),
                        1,
                        Box::new(|_: Vec<regorus::Value>| {
                            let free = stacker::remaining_stack().unwrap_or(0);
                            LOWEST.fetch_min(free, Ordering::SeqCst);
                            Ok(regorus::Value::from(1))
                        }),
                    )
                    .unwrap();
                engine.add_policy("p.rego".into(), src.clone()).unwrap();
                let d = check(engine.get_modules()).unwrap_or_else(|e| panic!("{e}"));
                engine.set_input(regorus::Value::from(
                    serde_json::json!({"kind": "tool.echo"}),
                ));
                LOWEST.store(usize::MAX, Ordering::SeqCst);
                let top = stacker::remaining_stack().unwrap();
                let v = engine.eval_rule("data.autonomy.allow".into());
                assert_eq!(v.ok(), Some(regorus::Value::from(true)), "{src:.300}");
                let lowest = LOWEST.load(Ordering::SeqCst);
                (top - lowest, d.stack_need)
            })
            .unwrap()
            .join()
            .unwrap()
    }

    /// Pathological but acyclic policies, each `levels` deep.
    fn pathological(levels: usize) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let chain = |f: &dyn Fn(usize) -> String, last: &str| {
            let mut s = String::from("package autonomy\nallow if a0\n");
            for i in 0..levels {
                s.push_str(&f(i));
                s.push('\n');
            }
            s.push_str(last);
            s.push('\n');
            s
        };
        let last = format!("a{levels} if probe(1)");
        out.push(("rules", chain(&|i| format!("a{i} if a{}", i + 1), &last)));
        out.push((
            "functions",
            chain(
                &|i| format!("f{i}(x) := f{}(x)", i + 1),
                &format!("f{levels}(x) := probe(x)\na0 if f0(1)"),
            ),
        ));
        out.push((
            "comprehensions",
            chain(
                &|i| format!("a{i} if {{ [x | some x in [a{}]; x] == [true] }}", i + 1),
                &last,
            ),
        ));
        out.push((
            "every",
            chain(
                &|i| format!("a{i} if {{ every v in [1] {{ v == 1; a{} }} }}", i + 1),
                &last,
            ),
        ));
        out.push((
            "nested expressions",
            chain(
                &|i| {
                    format!(
                        "a{i} if {{ [[[[{{\"k\": [a{}]}}]]]] == [[[[{{\"k\": [true]}}]]]] }}",
                        i + 1
                    )
                },
                &last,
            ),
        ));
        out.push((
            "not and with",
            chain(
                &|i| format!("a{i} if {{ not false; a{} with input.x as 1 }}", i + 1),
                &last,
            ),
        ));
        // One rule, one expression: as deep as the parser allows brackets to nest, and a long
        // left-deep chain of operators (which the parser builds without nesting).
        let mut e = String::from("probe(1)");
        for _ in 0..MAX_BRACKET_DEPTH - 2 {
            e = format!("[{e}]");
        }
        out.push((
            "brackets",
            format!("package autonomy\nallow if a0\na0 if {{ x := {e}; x }}\n"),
        ));
        let mut e = String::from("probe(1)");
        for _ in 0..levels {
            e.push_str(" + 1");
        }
        out.push((
            "operators",
            format!("package autonomy\nallow if a0\na0 if {{ x := {e}; x }}\n"),
        ));
        out
    }

    #[test]
    fn stack_per_level_holds() {
        for (name, src) in pathological(200) {
            let (used, need) = measure(&src);
            eprintln!(
                "{name}: used {used} bytes ({} per level), predicted {need}",
                used / 200
            );
            assert!(
                used * 2 <= need,
                "{name}: used {used}, predicted {need}: less than twice what it used"
            );
        }
    }
}
