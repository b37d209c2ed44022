//! The ROS 2 interface types of `ros_msgs/autonomy_msgs`, field for field, as serde structs.
//!
//! ros2-client serialises these with RustDDS's CDR serializer (XCDR1, little endian, behind the
//! `00 01 00 00` encapsulation header); the golden byte tests below pin that encoding.

use serde::{Deserialize, Serialize};

/// ROS package of our interfaces.
pub const PACKAGE: &str = "autonomy_msgs";

/// `builtin_interfaces/msg/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Time {
    /// Seconds since the Unix epoch.
    pub sec: i32,
    /// Nanoseconds within the second.
    pub nanosec: u32,
}

impl Time {
    /// The system clock now.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: i32::try_from(d.as_secs()).unwrap_or(i32::MAX),
            nanosec: d.subsec_nanos(),
        }
    }
}

/// `autonomy_msgs/msg/Decision`: one per decision, from any front end.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DecisionMsg {
    /// When the decision was answered.
    pub stamp: Time,
    /// The decision's audit id (WAL records carry the same id).
    pub audit_id: String,
    /// The tool kind.
    pub kind: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// Why it was denied or failed; empty otherwise.
    pub reason: String,
    /// The policy that decided.
    pub policy_ref: String,
    /// The front end: `http`, `ros2` or `launch`.
    pub source: String,
    /// The policy rules that decided, as a JSON array text (`[]` when none).
    pub rules_json: String,
}

/// `autonomy_msgs/srv/Tool` request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ToolRequest {
    /// The tool kind, e.g. `tool.echo`.
    pub kind: String,
    /// The params as a JSON object text; empty means `{}`.
    pub params_json: String,
}

/// `autonomy_msgs/srv/Tool` response.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ToolResponse {
    /// `allow` or `deny`.
    pub decision: String,
    /// The tool output as JSON text, or empty.
    pub output_json: String,
    /// Why it was denied, or `error: …` when the allowed call failed; empty otherwise.
    pub reason: String,
    /// The policy that decided.
    pub policy_ref: String,
    /// The audit id (empty for a malformed request, which is answered but not recorded).
    pub audit_id: String,
    /// The policy rules that decided, as a JSON array text (`[]` when none).
    pub rules_json: String,
}

impl ros2_client::Message for DecisionMsg {}
impl ros2_client::Message for ToolRequest {}
impl ros2_client::Message for ToolResponse {}

#[cfg(test)]
mod tests {
    use super::*;
    use ros2_client::dds::rustdds::no_key::SerializerAdapter;
    use ros2_client::dds::rustdds::serialization::{
        CDRSerializerAdapter, RepresentationIdentifier,
    };

    /// What ros2-client puts on the wire for a topic sample: the encapsulation header of the
    /// serializer adapter its publishers use, then the CDR body.
    fn wire<T: Serialize>(v: &T) -> Vec<u8> {
        let rep = <CDRSerializerAdapter<T> as SerializerAdapter<T>>::output_encoding();
        assert_eq!(rep, RepresentationIdentifier::CDR_LE);
        let mut out = vec![0x00, 0x01, 0x00, 0x00];
        out.extend_from_slice(
            &<CDRSerializerAdapter<T> as SerializerAdapter<T>>::to_bytes(v).unwrap(),
        );
        out
    }

    /// A CDR string: u32 length including the NUL, the bytes, the NUL.
    fn s(text: &str) -> Vec<u8> {
        let mut v = ((text.len() + 1) as u32).to_le_bytes().to_vec();
        v.extend_from_slice(text.as_bytes());
        v.push(0);
        v
    }

    #[test]
    fn std_msgs_string_matches_the_python_golden_vector() {
        // Reference §4: String_(data="hi").serialize() = 0001 0000 03000000 686900
        assert_eq!(
            wire(&"hi".to_string()),
            [0, 1, 0, 0, 3, 0, 0, 0, b'h', b'i', 0]
        );
    }

    #[test]
    fn decision_golden_bytes() {
        let m = DecisionMsg {
            stamp: Time {
                sec: 0x0102_0304,
                nanosec: 0x0506_0708,
            },
            audit_id: "id1".into(),   // 4+4 = 8 bytes, ends aligned
            kind: "tool.echo".into(), // 4+10 = 14, pad 2
            decision: "allow".into(), // 4+6 = 10, pad 2
            reason: "".into(),        // 4+1 = 5, pad 3
            policy_ref: "p".into(),   // 4+2 = 6, pad 2
            source: "ros2".into(),    // 4+5 = 9, pad 3
            rules_json: "[]".into(),  // 4+3 = 7, no trailing pad
        };
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            vec![0x00, 0x01, 0x00, 0x00],             // CDR_LE encapsulation
            vec![0x04, 0x03, 0x02, 0x01],             // stamp.sec (i32 LE)
            vec![0x08, 0x07, 0x06, 0x05],             // stamp.nanosec (u32 LE)
            vec![4, 0, 0, 0, b'i', b'd', b'1', 0],   // audit_id
            vec![10, 0, 0, 0], b"tool.echo\0".to_vec(), vec![0, 0],
            vec![6, 0, 0, 0], b"allow\0".to_vec(), vec![0, 0],
            vec![1, 0, 0, 0, 0], vec![0, 0, 0],
            vec![2, 0, 0, 0, b'p', 0], vec![0, 0],
            vec![5, 0, 0, 0], b"ros2\0".to_vec(), vec![0, 0, 0],
            vec![3, 0, 0, 0], b"[]\0".to_vec(),
        ]
        .concat();
        assert_eq!(wire(&m), expected);
        // And the helper agrees with the hand-written strings.
        assert_eq!(&expected[12..20], s("id1").as_slice());
    }

    #[test]
    fn tool_request_and_response_golden_bytes() {
        let req = ToolRequest {
            kind: "tool.echo".into(),
            params_json: "{}".into(),
        };
        let expected = [vec![0, 1, 0, 0], s("tool.echo"), vec![0, 0], s("{}")].concat();
        assert_eq!(wire(&req), expected);

        let resp = ToolResponse {
            decision: "deny".into(),
            output_json: "".into(),
            reason: "no".into(),
            policy_ref: "embedded:demo".into(),
            audit_id: "a".into(),
            rules_json: "[]".into(),
        };
        let expected = [
            vec![0, 1, 0, 0],
            s("deny"), // 9 → pad 3
            vec![0, 0, 0],
            s(""), // 5 → pad 3
            vec![0, 0, 0],
            s("no"), // 7 → pad 1
            vec![0],
            s("embedded:demo"), // 18 → pad 2
            vec![0, 0],
            s("a"), // 6 → pad 2
            vec![0, 0],
            s("[]"),
        ]
        .concat();
        assert_eq!(wire(&resp), expected);
    }

    /// rmw_cyclonedds puts `{uint64 client_id; int64 seq}` ahead of the fields in the same CDR
    /// stream; ros2-client writes that 16-byte header and then the request, so the request's
    /// alignment is unchanged. This is the layout the Python peer's flattened type uses.
    #[test]
    fn cyclone_request_header_golden_bytes() {
        #[derive(Serialize)]
        struct Flattened {
            client_id: u64,
            seq: i64,
            kind: String,
            params_json: String,
        }
        let flat = Flattened {
            client_id: 0x1122_3344_5566_7788,
            seq: 1,
            kind: "tool.echo".into(),
            params_json: "{}".into(),
        };
        let expected = [
            vec![0, 1, 0, 0],
            vec![0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
            vec![1, 0, 0, 0, 0, 0, 0, 0],
            s("tool.echo"),
            vec![0, 0],
            s("{}"),
        ]
        .concat();
        assert_eq!(wire(&flat), expected);
        // ros2-client's way: header, then the request serialised on its own, concatenated.
        let header = wire(&(0x1122_3344_5566_7788u64, 1i64));
        let body = wire(&ToolRequest {
            kind: "tool.echo".into(),
            params_json: "{}".into(),
        });
        assert_eq!([header, body[4..].to_vec()].concat(), expected);
    }
}
