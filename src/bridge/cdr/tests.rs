use super::*;
use crate::bridge::msgdef::{Library, TypeSet};
use serde_json::json;

/// Vectors made by the real ROS 2 Jazzy (`tests/bridge_golden.py`: rclpy's `serialize_message`
/// on each RMW, and the fields as rclpy reads them back).
const GOLDEN: &str = include_str!("golden.json");

fn set_with(types: &[&str]) -> (TypeSet, Vec<usize>) {
    let mut set = TypeSet::new();
    let ids = types
        .iter()
        .map(|t| set.resolve(&Library::default(), t).unwrap())
        .collect();
    (set, ids)
}

/// The payload after the 4-byte encapsulation header (which must say CDR_LE).
fn payload(hex_text: &str) -> Vec<u8> {
    let b = hex::decode(hex_text).unwrap();
    assert_eq!(&b[..4], &[0, 1, 0, 0], "CDR_LE header");
    b[4..].to_vec()
}

#[test]
fn decodes_what_real_ros_serialized_on_both_rmws() {
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let mut n = 0;
    for rmw in ["rmw_fastrtps_cpp", "rmw_cyclonedds_cpp"] {
        for v in golden[rmw].as_array().unwrap() {
            let t = v["type"].as_str().unwrap();
            let (set, ids) = set_with(&[t]);
            let got = Decoder::new(&set, WcharWidth::Four)
                .decode(ids[0], &payload(v["hex"].as_str().unwrap()))
                .unwrap_or_else(|e| panic!("{rmw} {t}: {e}"));
            assert_eq!(Value::Object(got), v["json"], "{rmw} {t}");
            n += 1;
        }
    }
    assert!(n >= 38, "{n} vectors");
}

fn twist_bytes(x: f64, z: f64) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [x, 0.0, 0.0, 0.0, 0.0, z] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[test]
fn twist_fields_and_non_finite_floats() {
    let (set, ids) = set_with(&["geometry_msgs/msg/Twist"]);
    let d = Decoder::new(&set, WcharWidth::Four);
    let m = d.decode(ids[0], &twist_bytes(0.5, -1.25)).unwrap();
    assert_eq!(
        Value::Object(m),
        json!({"linear": {"x": 0.5, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": -1.25}})
    );
    let m = d
        .decode(ids[0], &twist_bytes(f64::NEG_INFINITY, f64::NAN))
        .unwrap();
    assert_eq!(m["linear"]["x"], "-Infinity");
    assert_eq!(m["angular"]["z"], "NaN");
}

#[test]
fn truncated_and_garbage_payloads_are_errors_naming_the_field() {
    let (set, ids) = set_with(&["geometry_msgs/msg/Twist", "sensor_msgs/msg/JointState"]);
    let d = Decoder::new(&set, WcharWidth::Four);
    let full = twist_bytes(0.1, 0.2);
    // Every truncation fails, none panics.
    for cut in 0..full.len() {
        let e = d.decode(ids[0], &full[..cut]).unwrap_err();
        assert!(e.what.starts_with("truncated"), "{cut}: {e}");
    }
    let e = d.decode(ids[0], &full[..44]).unwrap_err();
    assert_eq!(e.path, "angular.z");
    assert_eq!(
        e.to_string(),
        "truncated: 8 more bytes needed, 4 left of 44 at byte 40 (field angular.z)"
    );
    // Bytes after the message are ignored, as ROS readers ignore them.
    let mut long = full.clone();
    long.extend_from_slice(&[0xAB; 9]);
    assert_eq!(d.decode(ids[0], &long), d.decode(ids[0], &full));

    // A sequence count far larger than the payload: refused before allocating.
    let mut js = Vec::new();
    js.extend_from_slice(&0i32.to_le_bytes()); // stamp.sec
    js.extend_from_slice(&0u32.to_le_bytes()); // stamp.nanosec
    js.extend_from_slice(&1u32.to_le_bytes()); // frame_id: ""
    js.push(0);
    js.extend_from_slice(&[0; 3]);
    js.extend_from_slice(&u32::MAX.to_le_bytes()); // name: 4 billion strings
    let e = d.decode(ids[1], &js).unwrap_err();
    assert!(e.what.contains("cannot fit"), "{e}");
    assert_eq!(e.path, "name");

    // Random garbage of every length up to 300 bytes: an answer, never a panic.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in 0..300 {
        let g: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = d.decode(ids[1], &g);
        let _ = d.decode(ids[0], &g);
    }
}

#[test]
fn strings_bools_bounds_and_wstrings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t_pkg/msg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("M.msg"),
        "bool b\nstring<=3 s\nint32[<=2] q\nwstring w\n",
    )
    .unwrap();
    let lib = Library {
        msg_paths: vec![tmp.path().to_path_buf()],
        ament_prefixes: vec![],
    };
    let mut set = TypeSet::new();
    let id = set.resolve(&lib, "t_pkg/M").unwrap();
    let enc = |b: u8, s: &[u8], q: &[i32], w: &[u8]| {
        let mut v = vec![b, 0, 0, 0];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(&(q.len() as u32).to_le_bytes());
        for i in q {
            v.extend_from_slice(&i.to_le_bytes());
        }
        v.extend_from_slice(w);
        v
    };
    let w2 = [2u32.to_le_bytes().as_slice(), &[b'h', 0, b'i', 0]].concat();
    let w4 = [
        2u32.to_le_bytes().as_slice(),
        &[b'h', 0, 0, 0, b'i', 0, 0, 0],
    ]
    .concat();
    let d2 = Decoder::new(&set, WcharWidth::Two);
    let d4 = Decoder::new(&set, WcharWidth::Four);
    let ok = d2.decode(id, &enc(1, b"ab\0", &[7], &w2)).unwrap();
    assert_eq!(
        Value::Object(ok),
        json!({"b": true, "s": "ab", "q": [7], "w": "hi"})
    );
    assert_eq!(
        d4.decode(id, &enc(0, b"ab\0", &[], &w4)).unwrap()["w"],
        "hi"
    );
    let err = |bytes: Vec<u8>| d2.decode(id, &bytes).unwrap_err().to_string();
    assert!(err(enc(2, b"ab\0", &[], &w2)).contains("bool byte 2"));
    assert!(err(enc(1, b"abcd\0", &[], &w2)).contains("exceeds its bound 3"));
    assert!(err(enc(1, b"abc", &[], &w2)).contains("without its terminating NUL"));
    assert!(err(enc(1, b"\xff\0", &[], &w2)).contains("not UTF-8"));
    assert!(err(enc(1, b"a\0", &[1, 2, 3], &w2)).contains("sequence of 3 exceeds its bound 2"));
}

/// encode(decode(x)) == x for every vector real ROS serialized (up to the padding a writer left
/// between and after the fields), and decode(encode(j)) == j.
#[test]
fn encode_inverts_decode_on_what_real_ros_serialized() {
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let mut n = 0;
    for rmw in ["rmw_fastrtps_cpp", "rmw_cyclonedds_cpp"] {
        for v in golden[rmw].as_array().unwrap() {
            let t = v["type"].as_str().unwrap();
            let (set, ids) = set_with(&[t]);
            let x = payload(v["hex"].as_str().unwrap());
            let j = Decoder::new(&set, WcharWidth::Four)
                .decode(ids[0], &x)
                .unwrap();
            let enc = Encoder::new(&set, WcharWidth::Four)
                .encode(ids[0], &j)
                .unwrap_or_else(|e| panic!("{rmw} {t}: {e}"));
            // Fast DDS leaves whatever was in memory in the alignment padding; ours is zeros.
            // Every other byte is the same.
            let padding_only = enc.iter().zip(&x).all(|(a, b)| a == b || *a == 0);
            assert!(
                padding_only,
                "{rmw} {t}:\n{}\n{}",
                hex::encode(&enc),
                hex::encode(&x[..enc.len()])
            );
            if rmw == "rmw_cyclonedds_cpp" {
                assert_eq!(hex::encode(&enc), hex::encode(&x[..enc.len()]), "{t}");
            }
            assert!(enc.len() <= x.len(), "{rmw} {t}");
            let back = Decoder::new(&set, WcharWidth::Four)
                .decode(ids[0], &enc)
                .unwrap();
            assert_eq!(back, j, "{rmw} {t}");
            n += 1;
        }
    }
    assert!(n >= 38, "{n} vectors");
}

#[test]
fn missing_fields_are_zero_and_mistakes_name_the_field() {
    let (set, ids) = set_with(&["geometry_msgs/msg/Twist", "sensor_msgs/msg/JointState"]);
    let e = Encoder::new(&set, WcharWidth::Four);
    let obj = |v: Value| v.as_object().unwrap().clone();
    assert_eq!(e.encode(ids[0], &obj(json!({}))).unwrap(), vec![0u8; 48]);
    assert_eq!(
        e.encode(
            ids[0],
            &obj(json!({"linear": {"x": 0.5}, "angular": {"z": -1}}))
        )
        .unwrap(),
        twist_bytes(0.5, -1.0)
    );
    let js = e.encode(ids[1], &obj(json!({"name": ["a"]}))).unwrap();
    let back = Decoder::new(&set, WcharWidth::Four)
        .decode(ids[1], &js)
        .unwrap();
    assert_eq!(
        Value::Object(back),
        json!({"header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": ""}, "name": ["a"], "position": [], "velocity": [], "effort": []})
    );
    for (j, want) in [
        (
            json!({"linear": {"w": 1.0}}),
            "linear.w: not a field of geometry_msgs/msg/Vector3 (its fields: x, y, z)",
        ),
        (
            json!({"speed": 1.0}),
            "speed: not a field of geometry_msgs/msg/Twist",
        ),
        (
            json!({"linear": {"x": "fast"}}),
            "linear.x: must be a number, not a string",
        ),
        (
            json!({"linear": 0}),
            "linear: must be a table (a message), not a number",
        ),
        (
            json!({"header": {"stamp": {"sec": 1.5}}}),
            "header.stamp.sec: must be an integer, not a float",
        ),
        (
            json!({"header": {"stamp": {"nanosec": -1}}}),
            "header.stamp.nanosec: -1 is out of range (0 to 4294967295)",
        ),
        (json!({"name": "a"}), "name: must be an array, not a string"),
        (
            json!({"name": ["a", 3]}),
            "name[1]: must be a string, not a number",
        ),
        (
            json!({"header": {"frame_id": "a\u{0}b"}}),
            "header.frame_id: a string cannot hold a NUL",
        ),
    ] {
        let id = if j.get("header").is_some() || j.get("name").is_some() {
            ids[1]
        } else {
            ids[0]
        };
        let got = e.encode(id, &obj(j.clone())).unwrap_err().to_string();
        assert!(got.starts_with(want), "{j}: {got}");
    }
}

#[test]
fn encodes_bounds_arrays_and_wstrings_as_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t_pkg/msg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("M.msg"),
        "bool b\nstring<=3 s\nint32[<=2] q\nwstring w\nuint8[3] a\nint8 i\nfloat32 f\n",
    )
    .unwrap();
    let lib = Library {
        msg_paths: vec![tmp.path().to_path_buf()],
        ament_prefixes: vec![],
    };
    let mut set = TypeSet::new();
    let id = set.resolve(&lib, "t_pkg/M").unwrap();
    let m =
        json!({"b": true, "s": "ab", "q": [7, -1], "w": "hé", "a": [1, 2, 3], "i": -5, "f": 0.5});
    for w in [WcharWidth::Two, WcharWidth::Four] {
        let bytes = Encoder::new(&set, w)
            .encode(id, m.as_object().unwrap())
            .unwrap();
        let back = Decoder::new(&set, w).decode(id, &bytes).unwrap();
        assert_eq!(Value::Object(back), m);
    }
    let e = Encoder::new(&set, WcharWidth::Four);
    let err = |j: Value| {
        e.encode(id, j.as_object().unwrap())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(json!({"s": "abcd"})),
        "s: string of 4 bytes exceeds its bound 3"
    );
    assert_eq!(
        err(json!({"q": [1, 2, 3]})),
        "q: sequence of 3 exceeds its bound 2"
    );
    assert_eq!(
        err(json!({"a": [1]})),
        "a: a fixed array of 3 elements, not 1"
    );
    assert_eq!(
        err(json!({"a": [1, 2, 256]})),
        "a[2]: 256 is out of range (0 to 255)"
    );
    assert_eq!(
        err(json!({"i": 200})),
        "i: 200 is out of range (-128 to 127)"
    );
    assert_eq!(err(json!({"b": 1})), "b: must be a bool, not a number");
    assert_eq!(
        err(json!({"f": 1e300})),
        "f: 1e300 is out of range for float32"
    );
}
