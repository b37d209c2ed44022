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
