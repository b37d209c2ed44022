//! The data document: every `data.json` of a bundle merged into one, each at its directory's
//! path.

use serde_json::{Map, Value};

/// Two `data.json` files that cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// A directory's path runs through a value that is not an object.
    #[error("data at {segment} is not an object")]
    NotAnObject {
        /// The path segment.
        segment: String,
    },
    /// Both set the same key to values that are not both objects.
    #[error("data documents overlap")]
    Overlap,
}

/// Merges `v` into `root` at the object path `dir` (a `data.json` in `a/b/` lands at `a.b`).
pub(super) fn merge_at(root: &mut Value, dir: &[&str], v: Value) -> Result<(), MergeError> {
    let mut cur = root;
    for seg in dir {
        let obj = cur.as_object_mut().ok_or_else(|| MergeError::NotAnObject {
            segment: seg.to_string(),
        })?;
        cur = obj
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    merge(cur, v)
}

/// Merges `src` into `dst`: objects key by key; anything else only into an empty object.
fn merge(dst: &mut Value, src: Value) -> Result<(), MergeError> {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(existing) => merge(existing, v)?,
                    None => {
                        d.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (d, s) if d.as_object().is_some_and(Map::is_empty) => {
            *d = s;
            Ok(())
        }
        _ => Err(MergeError::Overlap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_and_conflicts() {
        let mut root = json!({});
        merge_at(&mut root, &["a", "b"], json!({"x": 1})).unwrap();
        merge_at(&mut root, &[], json!({"a": {"c": 2}})).unwrap();
        assert_eq!(root, json!({"a": {"b": {"x": 1}, "c": 2}}));
        assert_eq!(
            merge_at(&mut root, &["a"], json!({"c": 3})),
            Err(MergeError::Overlap)
        );
        assert_eq!(
            merge_at(&mut root, &["a", "c", "d"], json!({})),
            Err(MergeError::NotAnObject {
                segment: "d".into()
            })
        );
    }
}
