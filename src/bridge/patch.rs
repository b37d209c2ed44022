//! A policy's patch on a bridged message: applied to `params.message`, and checked by encoding
//! the result as the topic's type (the CDR that is then republished instead of the original).

use serde_json::{Map, Value};

use super::cdr::{Decoder, Encoder, WcharWidth};
use super::msgdef::TypeSet;
use crate::policy::patch::{self, PatchTarget, Patched};

/// The patch target of one agent → robot topic.
pub(super) struct MessagePatch<'a> {
    /// Every type the bridge knows.
    pub(super) set: &'a TypeSet,
    /// The topic's type in `set`.
    pub(super) type_id: usize,
    /// Its name, for reasons.
    pub(super) type_name: &'a str,
    /// How `wstring` code units are sized on the wire the bytes came from.
    pub(super) wchar: WcharWidth,
}

impl PatchTarget for MessagePatch<'_> {
    fn apply(
        &self,
        params: &Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<Patched, String> {
        // Every field of a ROS message is there; a merge patch's `null` would remove one.
        if let Some(path) = patch::first_null(patch) {
            return Err(format!(
                "message.{path}: null would remove a field, and every field of a {} is required",
                self.type_name
            ));
        }
        let Some(Value::Object(message)) = params.get("message") else {
            return Err("the call has no message to patch".into());
        };
        let merged = patch::merge(message, patch);
        let bytes = Encoder::new(self.set, self.wchar)
            .encode(self.type_id, &merged)
            .map_err(|e| {
                if e.path.is_empty() {
                    format!("message: {} (a {})", e.what, self.type_name)
                } else {
                    format!("message.{}: {} (a {})", e.path, e.what, self.type_name)
                }
            })?;
        // Read back, so the patched message is recorded (and re-evaluated) exactly as it is
        // published: every number in its field's type, as the decoder spells the original.
        let published = Decoder::new(self.set, self.wchar)
            .decode(self.type_id, &bytes)
            .map_err(|e| format!("message: the patched message does not decode ({e})"))?;
        let mut params = params.clone();
        params.insert("message".into(), Value::Object(published));
        Ok(Patched {
            params,
            encoded: Some(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::BridgeConfig;
    use crate::bridge::config::BridgeFile;
    use crate::bridge::msgdef::Library;
    use serde_json::json;

    fn twist() -> BridgeConfig {
        let f = BridgeFile::parse(
            "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n",
        )
        .unwrap();
        BridgeConfig::new(f, 99, 42, &Library::default(), WcharWidth::Four).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_patched_message_is_encoded_as_its_type() {
        let c = twist();
        let t = MessagePatch {
            set: &c.set,
            type_id: c.ids[0],
            type_name: "geometry_msgs/msg/Twist",
            wchar: WcharWidth::Four,
        };
        let asked = obj(
            json!({"topic": "/cmd_vel", "type": "geometry_msgs/msg/Twist",
            "message": {"linear": {"x": 3.0, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": -4.0}}}),
        );
        // Rego may spell 1.0 as 1: read back from the CDR, it is the float64 it was published as.
        let p = t
            .apply(
                &asked,
                &obj(json!({"linear": {"x": 1}, "angular": {"z": -2.0}})),
            )
            .unwrap();
        assert_eq!(
            p.params["message"],
            json!({"linear": {"x": 1.0, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": -2.0}})
        );
        assert!(p.params["message"]["linear"]["x"].is_f64());
        assert_eq!(p.params["topic"], "/cmd_vel");
        let bytes = p.encoded.unwrap();
        assert_eq!(bytes.len(), 48);
        assert_eq!(&bytes[..8], &1.0f64.to_le_bytes());
        assert_eq!(&bytes[40..], &(-2.0f64).to_le_bytes());
        for (patch, want) in [
            (
                json!({"linear": {"w": 1.0}}),
                "message.linear.w: not a field of geometry_msgs/msg/Vector3 (its fields: x, y, z) (a geometry_msgs/msg/Twist)",
            ),
            (
                json!({"linear": {"x": "slow"}}),
                "message.linear.x: must be a number, not a string (a geometry_msgs/msg/Twist)",
            ),
            (
                json!({"linear": {"x": null}}),
                "message.linear.x: null would remove a field, and every field of a geometry_msgs/msg/Twist is required",
            ),
            (
                json!({"angular": 0.0}),
                "message.angular: must be a table (a message), not a number (a geometry_msgs/msg/Twist)",
            ),
        ] {
            let e = t.apply(&asked, &obj(patch.clone())).unwrap_err();
            assert_eq!(e, want, "{patch}");
        }
    }
}
