//! Downgrades: a policy's `patch` (a JSON Merge Patch, RFC 7396) applied to a call.
//!
//! The merge itself is the `json-patch` crate's. What a patch applies to, and how the result is
//! checked, depends on the front end ([`PatchTarget`]): a tool call's `params`, checked by its
//! tool ([`ToolParams`]), or a bridged message (`params.message`), checked by encoding it as the
//! topic's type (the bridge's target). The gate decides whether a patched call may run.

use serde_json::{Map, Value};

use crate::tools::Tools;
use crate::types::ToolKind;

/// A call's params after a patch, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Patched {
    /// The patched params: what runs, is published, and is recorded as `patched`.
    pub params: Map<String, Value>,
    /// The front end's own encoding of the patched call, when it has one (a bridged message's
    /// CDR payload, republished instead of the bytes that came in).
    pub encoded: Option<Vec<u8>>,
}

/// Where a front end applies a policy's patch, and how it checks the result.
pub trait PatchTarget: Send + Sync {
    /// `params` with `patch` applied, checked; or why the patched call cannot be made (a
    /// sentence naming the field, which becomes the deny's reason).
    fn apply(
        &self,
        params: &Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<Patched, String>;
}

/// `doc` with the merge patch `patch` applied (RFC 7396: an object merges key by key, `null`
/// removes a key, anything else replaces).
pub fn merge(doc: &Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    let mut v = Value::Object(doc.clone());
    json_patch::merge(&mut v, &Value::Object(patch.clone()));
    match v {
        Value::Object(m) => m,
        // A merge of an object into an object is an object.
        _ => Map::new(),
    }
}

/// Whether two JSON values are the same value, numbers compared by what they are worth (`1`
/// and `1.0` are the same number; Rego and the CDR decoder spell them differently).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) if x.is_f64() || y.is_f64() => p == q,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => same_map(x, y),
        _ => a == b,
    }
}

/// [`same`] for two objects.
pub fn same_map(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
}

/// The first `null` in `patch`, as a dotted path: a patch that would remove that key.
pub fn first_null(patch: &Map<String, Value>) -> Option<String> {
    patch.iter().find_map(|(k, v)| match v {
        Value::Null => Some(k.clone()),
        Value::Object(m) => first_null(m).map(|p| format!("{k}.{p}")),
        _ => None,
    })
}

/// A tool call's target: the patch applies to `params`, and the tool must still accept them.
pub struct ToolParams<'a> {
    /// The built-in tools.
    pub tools: &'a Tools,
    /// The call's kind.
    pub kind: &'a ToolKind,
}

impl PatchTarget for ToolParams<'_> {
    fn apply(
        &self,
        params: &Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<Patched, String> {
        let params = merge(params, patch);
        self.tools.check(self.kind, &params)?;
        Ok(Patched {
            params,
            encoded: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn merge_follows_rfc_7396() {
        // The RFC's own example (section 3).
        let doc = obj(json!({"a": "b", "c": {"d": "e", "f": "g"}}));
        let patch = obj(json!({"a": "z", "c": {"f": null}}));
        assert_eq!(
            Value::Object(merge(&doc, &patch)),
            json!({"a": "z", "c": {"d": "e"}})
        );
        // Arrays replace; a new key is added; the original is left as it was.
        let doc = obj(json!({"tags": [1, 2], "x": {"y": 1}}));
        let patch = obj(json!({"tags": [3], "x": 7, "n": true}));
        assert_eq!(
            Value::Object(merge(&doc, &patch)),
            json!({"tags": [3], "x": 7, "n": true})
        );
        assert_eq!(doc, obj(json!({"tags": [1, 2], "x": {"y": 1}})));
    }

    #[test]
    fn numbers_are_the_same_by_value() {
        assert!(same(
            &json!({"x": 1, "a": [0]}),
            &json!({"x": 1.0, "a": [0.0]})
        ));
        assert!(!same(&json!({"x": 1}), &json!({"x": 1.5})));
        assert!(!same(&json!({"x": 1}), &json!({"x": 1, "y": 2})));
        assert!(!same(&json!("1"), &json!(1)));
        assert!(same(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!same(&json!(u64::MAX), &json!(u64::MAX - 1)));
    }

    #[test]
    fn nulls_are_found_at_any_depth() {
        assert_eq!(first_null(&obj(json!({"a": 1, "b": {"c": 2}}))), None);
        assert_eq!(
            first_null(&obj(json!({"a": 1, "b": {"c": null}}))).as_deref(),
            Some("b.c")
        );
    }

    #[test]
    fn a_tool_call_patch_must_leave_params_the_tool_accepts() {
        let tools = Tools::new(
            crate::tools::Allowlist::empty(),
            crate::tools::HttpGetLimits::default(),
        );
        let echo = ToolKind::parse("tool.echo").unwrap();
        let t = ToolParams {
            tools: &tools,
            kind: &echo,
        };
        let asked = obj(json!({"message": "rm -rf /", "n": 1}));
        let p = t.apply(&asked, &obj(json!({"message": "ls"}))).unwrap();
        assert_eq!(Value::Object(p.params), json!({"message": "ls", "n": 1}));
        let e = t.apply(&asked, &obj(json!({"message": 7}))).unwrap_err();
        assert!(e.contains("params.message must be a string"), "{e}");
        let e = t.apply(&asked, &obj(json!({"message": null}))).unwrap_err();
        assert!(e.contains("params.message is required"), "{e}");
        let get = ToolKind::parse("tool.http_get").unwrap();
        let t = ToolParams {
            tools: &tools,
            kind: &get,
        };
        let e = t
            .apply(
                &obj(json!({"endpoint": "https://a.example/"})),
                &obj(json!({"endpoint": "ftp://x/"})),
            )
            .unwrap_err();
        assert!(e.contains("http or https"), "{e}");
    }
}
