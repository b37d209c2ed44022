//! ROS 2 type hashes (REP 2011, `RIHS01_<sha256 hex>`) for every type our endpoints use.
//!
//! From Iron on, each ROS endpoint advertises its type's hash in the DDS USER_DATA QoS as
//! `typehash=RIHS01_<hex>;`. Jazzy's `rmw_cyclonedds_cpp` logs a warning for every discovered
//! endpoint whose USER_DATA lacks it — about twenty lines per `ros2` command near our node — and
//! `ros2 topic info -v` shows the hash. So the node advertises the same hashes rosidl generates.
//!
//! The hash is SHA-256 over one canonical JSON text: the type's description (its name and
//! fields, each field's type id, capacities and nested type name; no default values, no
//! constants) followed by the descriptions of every type it refers to, directly or not, sorted
//! by name. The descriptions here come from the interface definitions themselves: ours are
//! compiled in from `ros_msgs/autonomy_msgs`, the standard ones are copied (comments and
//! constants dropped, which the hash ignores). Tests pin each value to what rosidl generated
//! for Jazzy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One interface definition: the ROS type name (`pkg/msg/Name`) and its `.msg` text.
struct Definition {
    name: &'static str,
    text: &'static str,
}

/// The messages our endpoints use or refer to, besides our own package.
const STANDARD: &[Definition] = &[
    Definition {
        name: "builtin_interfaces/msg/Time",
        text: "int32 sec\nuint32 nanosec",
    },
    Definition {
        name: "std_msgs/msg/String",
        text: "string data",
    },
    Definition {
        name: "service_msgs/msg/ServiceEventInfo",
        text: "uint8 event_type\nbuiltin_interfaces/Time stamp\nchar[16] client_gid\nint64 sequence_number",
    },
    // `ros_discovery_info` (Jazzy's Gid is 16 bytes).
    Definition {
        name: "rmw_dds_common/msg/Gid",
        text: "char[16] data",
    },
    Definition {
        name: "rmw_dds_common/msg/NodeEntitiesInfo",
        text: "string<=256 node_namespace\nstring<=256 node_name\nGid[] reader_gid_seq\nGid[] writer_gid_seq",
    },
    Definition {
        name: "rmw_dds_common/msg/ParticipantEntitiesInfo",
        text: "Gid gid\nNodeEntitiesInfo[] node_entities_info_seq",
    },
    // `/parameter_events`, which every node publishes.
    Definition {
        name: "rcl_interfaces/msg/ParameterEvent",
        text: "builtin_interfaces/Time stamp\nstring node\nParameter[] new_parameters\nParameter[] changed_parameters\nParameter[] deleted_parameters",
    },
    Definition {
        name: "rcl_interfaces/msg/Parameter",
        text: "string name\nParameterValue value",
    },
    Definition {
        name: "rcl_interfaces/msg/ParameterValue",
        text: "uint8 type\nbool bool_value\nint64 integer_value\nfloat64 double_value\nstring string_value\nbyte[] byte_array_value\nbool[] bool_array_value\nint64[] integer_array_value\nfloat64[] double_array_value\nstring[] string_array_value",
    },
];

/// Our own interface package, exactly as shipped in `ros_msgs/autonomy_msgs`.
const DECISION_MSG: &str = include_str!("../../ros_msgs/autonomy_msgs/msg/Decision.msg");
const TOOL_SRV: &str = include_str!("../../ros_msgs/autonomy_msgs/srv/Tool.srv");

/// The types whose hashes the node advertises: one per DDS endpoint type it creates.
pub const ENDPOINT_TYPES: &[&str] = &[
    "std_msgs/msg/String",                        // /autonomy/markers
    "autonomy_msgs/msg/Decision",                 // /autonomy/decisions
    "autonomy_msgs/srv/Tool_Request",             // /autonomy/tool requests
    "autonomy_msgs/srv/Tool_Response",            // /autonomy/tool replies
    "rmw_dds_common/msg/ParticipantEntitiesInfo", // ros_discovery_info
    "rcl_interfaces/msg/ParameterEvent",          // /parameter_events
    "builtin_interfaces/msg/Time",                // /clock, as ros2-client types it
];

// Field type ids (type_description_interfaces/msg/FieldType).
const NESTED: u8 = 1;
const UINT8: u8 = 3;
const STRING: u8 = 17;
const WSTRING: u8 = 18;
const BOUNDED_STRING: u8 = 21;
const BOUNDED_WSTRING: u8 = 22;
// Added to a value type's id for arrays and sequences of it.
const ARRAY: u8 = 48;
const BOUNDED_SEQUENCE: u8 = 96;
const UNBOUNDED_SEQUENCE: u8 = 144;

/// One field of a type description.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: String,
    type_id: u8,
    capacity: u64,
    string_capacity: u64,
    nested_type_name: String,
}

/// A type's own description (its fields), without the types it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Individual {
    name: String,
    fields: Vec<Field>,
}

/// A definition that cannot be described (a bug in the texts above, caught by the tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("type description of {type_name}: {reason}")]
pub struct DescribeError {
    type_name: String,
    reason: String,
}

fn primitive_id(t: &str) -> Option<u8> {
    Some(match t {
        "int8" => 2,
        // In .msg files `char` is an alias of uint8 and `byte` of octet.
        "uint8" | "char" => UINT8,
        "int16" => 4,
        "uint16" => 5,
        "int32" => 6,
        "uint32" => 7,
        "int64" => 8,
        "uint64" => 9,
        "float32" => 10,
        "float64" => 11,
        "bool" => 15,
        "byte" => 16,
        "string" => STRING,
        "wstring" => WSTRING,
        _ => return None,
    })
}

fn bound(text: &str, what: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("bad {what} bound {text:?}"))
}

/// Parses one field type (`string<=256`, `Gid[]`, `char[16]`, `pkg/Name[<=1]`) of package `pkg`.
fn field_type(pkg: &str, t: &str) -> Result<(u8, u64, u64, String), String> {
    let (base, array) = match t.find('[') {
        Some(i) => (&t[..i], Some(&t[i..])),
        None => (t, None),
    };
    let (value_id, string_capacity, nested) = if let Some(n) = base.strip_prefix("string<=") {
        (BOUNDED_STRING, bound(n, "string")?, String::new())
    } else if let Some(n) = base.strip_prefix("wstring<=") {
        (BOUNDED_WSTRING, bound(n, "wstring")?, String::new())
    } else if let Some(id) = primitive_id(base) {
        (id, 0, String::new())
    } else {
        // `pkg/Name`, or a bare `Name` of the same package; messages live under `msg/`.
        let (p, n) = base.split_once('/').unwrap_or((pkg, base));
        if n.is_empty() || n.contains('/') || !n.starts_with(|c: char| c.is_ascii_uppercase()) {
            return Err(format!("unknown field type {t:?}"));
        }
        (NESTED, 0, format!("{p}/msg/{n}"))
    };
    let (offset, capacity) = match array {
        None => (0, 0),
        Some("[]") => (UNBOUNDED_SEQUENCE, 0),
        Some(a) => {
            let inner = a
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .ok_or_else(|| format!("bad array suffix in {t:?}"))?;
            match inner.strip_prefix("<=") {
                Some(n) => (BOUNDED_SEQUENCE, bound(n, "sequence")?),
                None => (ARRAY, bound(inner, "array")?),
            }
        }
    };
    Ok((value_id + offset, capacity, string_capacity, nested))
}

/// Parses a `.msg` body into the fields of type `name` (constants and comments are skipped;
/// default values do not count for the hash).
fn parse_msg(name: &str, text: &str) -> Result<Individual, DescribeError> {
    let pkg = name.split('/').next().unwrap_or_default();
    let err = |reason: String| DescribeError {
        type_name: name.to_string(),
        reason,
    };
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(t), Some(field)) = (words.next(), words.next()) else {
            return Err(err(format!("cannot read line {line:?}")));
        };
        // `TYPE NAME=VALUE` or `TYPE NAME = VALUE` is a constant.
        if field.contains('=') || words.next() == Some("=") {
            continue;
        }
        let (type_id, capacity, string_capacity, nested_type_name) =
            field_type(pkg, t).map_err(err)?;
        fields.push(Field {
            name: field.to_string(),
            type_id,
            capacity,
            string_capacity,
            nested_type_name,
        });
    }
    // rosidl gives an empty message one placeholder member.
    if fields.is_empty() {
        fields.push(Field {
            name: "structure_needs_at_least_one_member".into(),
            type_id: UINT8,
            capacity: 0,
            string_capacity: 0,
            nested_type_name: String::new(),
        });
    }
    Ok(Individual {
        name: name.to_string(),
        fields,
    })
}

fn nested(name: &str, type_id: u8, capacity: u64, type_name: &str) -> Field {
    Field {
        name: name.into(),
        type_id,
        capacity,
        string_capacity: 0,
        nested_type_name: type_name.into(),
    }
}

/// A service `pkg/srv/Name` becomes five types: the service itself (request, response and
/// event message members), `_Request`, `_Response`, and `_Event` (info plus at most one of each).
fn parse_srv(name: &str, text: &str) -> Result<Vec<Individual>, DescribeError> {
    let mut parts = text.split("\n---");
    let (Some(req), Some(resp), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(DescribeError {
            type_name: name.into(),
            reason: "a service needs exactly one `---` line".into(),
        });
    };
    let (request, response, event) = (
        format!("{name}_Request"),
        format!("{name}_Response"),
        format!("{name}_Event"),
    );
    Ok(vec![
        Individual {
            name: name.into(),
            fields: vec![
                nested("request_message", NESTED, 0, &request),
                nested("response_message", NESTED, 0, &response),
                nested("event_message", NESTED, 0, &event),
            ],
        },
        parse_msg(&request, req)?,
        parse_msg(&response, resp)?,
        Individual {
            name: event.clone(),
            fields: vec![
                nested("info", NESTED, 0, "service_msgs/msg/ServiceEventInfo"),
                nested("request", NESTED + BOUNDED_SEQUENCE, 1, &request),
                nested("response", NESTED + BOUNDED_SEQUENCE, 1, &response),
            ],
        },
    ])
}

/// Every individual description we know, by ROS type name.
fn registry() -> Result<BTreeMap<String, Individual>, DescribeError> {
    let mut all = Vec::new();
    for d in STANDARD {
        all.push(parse_msg(d.name, d.text)?);
    }
    all.push(parse_msg("autonomy_msgs/msg/Decision", DECISION_MSG)?);
    all.extend(parse_srv("autonomy_msgs/srv/Tool", TOOL_SRV)?);
    Ok(all.into_iter().map(|i| (i.name.clone(), i)).collect())
}

fn json_str(s: &str) -> String {
    // Names are ASCII identifiers and slashes; serde_json's escaping equals Python's for them.
    serde_json::Value::String(s.to_string()).to_string()
}

/// The canonical text rosidl hashes: `json.dumps` with `", "` and `": "` separators, keys in
/// the order below, default values left out.
fn canonical_json(top: &Individual, referenced: &[&Individual]) -> String {
    fn individual(out: &mut String, i: &Individual) {
        let _ = write!(out, "{{\"type_name\": {}, \"fields\": [", json_str(&i.name));
        for (n, f) in i.fields.iter().enumerate() {
            if n > 0 {
                out.push_str(", ");
            }
            let _ = write!(
                out,
                "{{\"name\": {}, \"type\": {{\"type_id\": {}, \"capacity\": {}, \"string_capacity\": {}, \"nested_type_name\": {}}}}}",
                json_str(&f.name),
                f.type_id,
                f.capacity,
                f.string_capacity,
                json_str(&f.nested_type_name)
            );
        }
        out.push_str("]}");
    }
    let mut out = String::from("{\"type_description\": ");
    individual(&mut out, top);
    out.push_str(", \"referenced_type_descriptions\": [");
    for (n, r) in referenced.iter().enumerate() {
        if n > 0 {
            out.push_str(", ");
        }
        individual(&mut out, r);
    }
    out.push_str("]}");
    out
}

/// The `RIHS01_<hex>` hash of `type_name` (`pkg/msg/Name`, `pkg/srv/Name_Request`, …).
fn compute(reg: &BTreeMap<String, Individual>, type_name: &str) -> Result<String, DescribeError> {
    let missing = |n: &str| DescribeError {
        type_name: type_name.into(),
        reason: format!("no description of {n}"),
    };
    let top = reg.get(type_name).ok_or_else(|| missing(type_name))?;
    // Every type reachable through nested fields, sorted by name (a BTreeSet).
    let mut seen = BTreeSet::new();
    let mut queue: Vec<&str> = top
        .fields
        .iter()
        .map(|f| f.nested_type_name.as_str())
        .collect();
    while let Some(n) = queue.pop() {
        if n.is_empty() || !seen.insert(n) {
            continue;
        }
        let d = reg.get(n).ok_or_else(|| missing(n))?;
        queue.extend(d.fields.iter().map(|f| f.nested_type_name.as_str()));
    }
    let mut referenced = Vec::with_capacity(seen.len());
    for n in &seen {
        referenced.push(reg.get(*n).ok_or_else(|| missing(n))?);
    }
    let digest = Sha256::digest(canonical_json(top, &referenced).as_bytes());
    Ok(format!("RIHS01_{}", hex::encode(digest)))
}

/// The hashes of every type we can describe, computed once.
fn hashes() -> &'static Result<BTreeMap<String, String>, DescribeError> {
    static HASHES: OnceLock<Result<BTreeMap<String, String>, DescribeError>> = OnceLock::new();
    HASHES.get_or_init(|| {
        let reg = registry()?;
        reg.keys()
            .map(|n| Ok((n.clone(), compute(&reg, n)?)))
            .collect()
    })
}

/// The REP 2011 hash (`RIHS01_<64 hex>`) of a ROS type such as `std_msgs/msg/String` or
/// `autonomy_msgs/srv/Tool_Request`; `None` for a type this module does not describe.
pub fn rihs01(type_name: &str) -> Option<&'static str> {
    hashes()
        .as_ref()
        .ok()
        .and_then(|h| h.get(type_name))
        .map(String::as_str)
}

/// The `RIHS01_<hex>` hash of message `type_name` (`pkg/msg/Name`) from the `.msg` texts of it
/// and of every type it refers to, by ROS name: how the topic bridge advertises the hash of any
/// type it relays.
#[cfg_attr(not(feature = "jazzy"), allow(dead_code))]
pub(crate) fn rihs01_from_msgs(
    type_name: &str,
    texts: &BTreeMap<String, String>,
) -> Result<String, DescribeError> {
    let mut reg = BTreeMap::new();
    for (name, text) in texts {
        reg.insert(name.clone(), parse_msg(name, text)?);
    }
    compute(&reg, type_name)
}

/// The DDS type name of a ROS type: `std_msgs/msg/String` → `std_msgs::msg::dds_::String_`.
pub fn dds_type_name(type_name: &str) -> Option<String> {
    let mut parts = type_name.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(pkg), Some(kind), Some(name), None) => Some(format!("{pkg}::{kind}::dds_::{name}_")),
        _ => None,
    }
}

/// `(DDS type name, USER_DATA bytes)` for each type in [`ENDPOINT_TYPES`]: what the node's
/// endpoints advertise, `typehash=RIHS01_<hex>;` as rmw_dds_common encodes it.
pub fn endpoint_user_data() -> Result<Vec<(String, Vec<u8>)>, DescribeError> {
    let hashes = hashes().as_ref().map_err(Clone::clone)?;
    ENDPOINT_TYPES
        .iter()
        .map(|t| {
            let hash = hashes.get(*t).ok_or_else(|| DescribeError {
                type_name: (*t).into(),
                reason: "not described".into(),
            })?;
            let dds = dds_type_name(t).ok_or_else(|| DescribeError {
                type_name: (*t).into(),
                reason: "not a pkg/kind/Name type name".into(),
            })?;
            Ok((dds, format!("typehash={hash};").into_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values rosidl generated for Jazzy (`share/<pkg>/<msg|srv>/<Name>.json`,
    /// `type_hashes`), for the installed autonomy_msgs built from this repo's `ros_msgs/`.
    const JAZZY: &[(&str, &str)] = &[
        (
            "std_msgs/msg/String",
            "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18",
        ),
        (
            "builtin_interfaces/msg/Time",
            "RIHS01_b106235e25a4c5ed35098aa0a61a3ee9c9b18d197f398b0e4206cea9acf9c197",
        ),
        (
            "autonomy_msgs/msg/Decision",
            "RIHS01_fdc1021f6c27ca456db241d87ddc717357cc27d8dc3ca592e2ace9bc2145c530",
        ),
        (
            "autonomy_msgs/srv/Tool",
            "RIHS01_931d0ae4a1f9ccf420d1bcad73691dec92a1e24141ca54210da709a7f5d94e32",
        ),
        (
            "autonomy_msgs/srv/Tool_Request",
            "RIHS01_23d15d08da3cbe6181bd817f79cbe9db8ec1e0c6ebead1a03e2afc3f5407570a",
        ),
        (
            "autonomy_msgs/srv/Tool_Response",
            "RIHS01_4bb855a066a04c79fb8b6062f8244535d41fa99f33308911f8df73df6af19bee",
        ),
        (
            "autonomy_msgs/srv/Tool_Event",
            "RIHS01_6d6a7a48c6feed35cac94a3b32bbdd85245df241c4fe686b129bb1d12a87f47b",
        ),
        (
            "service_msgs/msg/ServiceEventInfo",
            "RIHS01_41bcbbe07a75c9b52bc96bfd5c24d7f0fc0a08c0cb7921b3373c5732345a6f45",
        ),
        (
            "rmw_dds_common/msg/ParticipantEntitiesInfo",
            "RIHS01_91a0593bacdcc50ea9bdcf849a938b128412cc1ea821245c663bcd26f83c295e",
        ),
        (
            "rmw_dds_common/msg/Gid",
            "RIHS01_ab6f21cfbb0a6dbb837161e1110c2051a2850ed9f9c53944d7115d9bcebedf71",
        ),
        (
            "rmw_dds_common/msg/NodeEntitiesInfo",
            "RIHS01_8ffef65ee2d088c63b1e8fcd31e800ba9fc8dbe0ee15ca60d1676de5218087a7",
        ),
        (
            "rcl_interfaces/msg/ParameterEvent",
            "RIHS01_043e627780fcad87a22d225bc2a037361dba713fca6a6b9f4b869a5aa0393204",
        ),
        (
            "rcl_interfaces/msg/Parameter",
            "RIHS01_ddfe6442cffc462317adb5c92536a7b6dd55858c5c3e1e328165a6b73c2831af",
        ),
        (
            "rcl_interfaces/msg/ParameterValue",
            "RIHS01_115fc089a387e23c7ecd3525c9189c379109119d6ab82e8dfbde0fdf6a7f9b68",
        ),
    ];

    #[test]
    fn hashes_equal_what_rosidl_generated_for_jazzy() {
        for (t, want) in JAZZY {
            assert_eq!(rihs01(t), Some(*want), "{t}");
        }
        assert_eq!(rihs01("std_msgs/msg/Nope"), None);
    }

    #[test]
    fn every_endpoint_type_has_user_data() {
        let ud = endpoint_user_data().unwrap();
        assert_eq!(ud.len(), ENDPOINT_TYPES.len());
        let (dds, bytes) = &ud[0];
        assert_eq!(dds, "std_msgs::msg::dds_::String_");
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "typehash=RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18;"
        );
        assert!(
            ud.iter()
                .any(|(d, _)| d == "autonomy_msgs::srv::dds_::Tool_Request_")
        );
        assert!(
            ud.iter()
                .any(|(d, _)| d == "rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_")
        );
    }

    #[test]
    fn canonical_text_matches_rosidl_for_string() {
        let reg = registry().unwrap();
        let s = &reg["std_msgs/msg/String"];
        assert_eq!(
            canonical_json(s, &[]),
            r#"{"type_description": {"type_name": "std_msgs/msg/String", "fields": [{"name": "data", "type": {"type_id": 17, "capacity": 0, "string_capacity": 0, "nested_type_name": ""}}]}, "referenced_type_descriptions": []}"#
        );
    }

    #[test]
    fn field_types_and_constants() {
        let m = parse_msg(
            "p/msg/M",
            "uint8 A=1\nuint8 B = 2 # c\nint32 x 7\nstring<=9[<=3] s\nchar[16] g\nOther[] o\nq/Name n\n",
        )
        .unwrap();
        let got: Vec<_> = m
            .fields
            .iter()
            .map(|f| {
                (
                    f.name.as_str(),
                    f.type_id,
                    f.capacity,
                    f.string_capacity,
                    f.nested_type_name.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("x", 6, 0, 0, ""),
                ("s", 21 + 96, 3, 9, ""),
                ("g", 3 + 48, 16, 0, ""),
                ("o", 1 + 144, 0, 0, "p/msg/Other"),
                ("n", 1, 0, 0, "q/msg/Name"),
            ]
        );
        assert!(parse_msg("p/msg/M", "floatz x").is_err());
        assert!(parse_msg("p/msg/M", "int32[x] x").is_err());
        assert_eq!(
            parse_msg("p/msg/E", "# nothing\n").unwrap().fields[0].name,
            "structure_needs_at_least_one_member"
        );
    }
}
