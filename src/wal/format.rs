//! The on-disk format: segment header, frame, payload prefix, hash chain. See `docs/wal.md`.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The first 8 bytes of every segment file.
pub(super) const MAGIC: &[u8; 8] = b"AUTONWAL";
/// The format version written after the magic (u32 LE).
pub(super) const FORMAT_VERSION: u32 = 1;
/// Segment header: magic (8) + version u32 LE (4) + header length u32 LE (4) = 16 bytes.
pub(super) const HEADER_LEN: u64 = 16;
/// Frame header: payload length u32 LE + CRC32C of the payload u32 LE.
pub(super) const FRAME_HEADER_LEN: u64 = 8;
/// The largest payload accepted (2 MiB: twice the HTTP body limit).
pub const MAX_PAYLOAD: usize = 2 * 1024 * 1024;
/// The most frame bytes one group-commit write (one `pwrite` + one `fdatasync`) carries: one
/// largest frame. The writer takes whole frames from its queue up to this bound, and recovery's
/// torn-tail window is derived from the same constant, so the two cannot drift apart.
pub const MAX_BATCH_BYTES: u64 = FRAME_HEADER_LEN + MAX_PAYLOAD as u64;
/// The unit a torn write is rounded out to: the largest page size Linux uses (64 KiB on
/// arm64/ppc64, 4 KiB on x86-64), which is also at least any device sector or filesystem block.
pub const TORN_PAGE: u64 = 64 * 1024;
/// The `prev` of record 1.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
/// Keys the engine writes itself; a body must not use them.
pub const RESERVED_KEYS: [&str; 5] = ["seq", "ts", "type", "audit_id", "prev"];
/// Segment file extension.
pub(super) const SEGMENT_EXT: &str = "wal";
/// The lock file in the WAL directory.
pub(super) const LOCK_FILE: &str = "wal.lock";

/// The 16 header bytes of a segment.
pub(super) fn header_bytes() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h
}

/// The file name of the segment whose first record is `first_seq`: 20 digits + `.wal`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

/// End (exclusive) of the bytes a write in flight could have touched when the intact records end
/// at `off`: that write started at or before `off` and carried at most [`MAX_BATCH_BYTES`], and
/// a torn write damages whole pages. See "Torn tail" in `docs/wal.md`.
pub fn batch_window_end(off: u64) -> u64 {
    off.saturating_add(MAX_BATCH_BYTES)
        .div_ceil(TORN_PAGE)
        .saturating_mul(TORN_PAGE)
}

/// Parses a segment file name back into its first seq.
pub(super) fn parse_segment_name(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// `sha256:<hex>` of a payload.
pub(super) fn hash_payload(payload: &[u8]) -> String {
    // Into a stack buffer: `hex::encode` goes char by char through an iterator, and this runs
    // under the WAL's lock for every record.
    let mut hex = [0u8; 64];
    let _ = hex::encode_to_slice(Sha256::digest(payload), &mut hex);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    s.extend(hex.iter().map(|&b| char::from(b)));
    s
}

/// Appends one frame (length, CRC32C, payload) to `out`.
pub(super) fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Builds a payload: `{"seq":…,"ts":…,"type":…,["audit_id":…,]"prev":…` then the body's fields.
///
/// `audit_json` is the already JSON-encoded audit id (with quotes); `body_json` the encoded
/// body object (`{…}`). The reserved keys come first, in that order.
pub(super) fn build_payload(
    seq: u64,
    ts: &str,
    rtype: &str,
    audit_json: Option<&str>,
    prev: &str,
    body_json: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(128 + body_json.len());
    p.extend_from_slice(b"{\"seq\":");
    p.extend_from_slice(seq.to_string().as_bytes());
    // ts, type and prev are plain ASCII with no characters that need escaping.
    p.extend_from_slice(b",\"ts\":\"");
    p.extend_from_slice(ts.as_bytes());
    p.extend_from_slice(b"\",\"type\":\"");
    p.extend_from_slice(rtype.as_bytes());
    p.push(b'"');
    if let Some(a) = audit_json {
        p.extend_from_slice(b",\"audit_id\":");
        p.extend_from_slice(a.as_bytes());
    }
    p.extend_from_slice(b",\"prev\":\"");
    p.extend_from_slice(prev.as_bytes());
    p.push(b'"');
    // body_json is "{}" or "{…}".
    if body_json.len() > 2 {
        p.push(b',');
        p.extend_from_slice(&body_json[1..]);
    } else {
        p.push(b'}');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_valid_json_with_reserved_keys_first() {
        let body = serde_json::to_vec(&serde_json::json!({"kind": "tool.x", "n": 3})).unwrap();
        let p = build_payload(
            7,
            "2025-01-01T00:00:00.000000Z",
            "decision",
            Some("\"a\\\"b\""),
            GENESIS,
            &body,
        );
        let s = std::str::from_utf8(&p).unwrap();
        assert!(s.starts_with("{\"seq\":7,\"ts\":\"2025-01-01T00:00:00.000000Z\",\"type\":\"decision\",\"audit_id\":\"a\\\"b\",\"prev\":\"sha256:"), "{s}");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["audit_id"], "a\"b");
        assert_eq!(v["n"], 3);
        let empty = build_payload(1, "t", "runtime", None, GENESIS, b"{}");
        let v: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 4);
    }

    #[test]
    fn frame_layout() {
        let mut out = Vec::new();
        push_frame(&mut out, b"{\"a\":1}");
        assert_eq!(&out[0..4], &7u32.to_le_bytes());
        assert_eq!(&out[4..8], &crc32c::crc32c(b"{\"a\":1}").to_le_bytes());
        assert_eq!(&out[8..], b"{\"a\":1}");
        // The CRC32C check value ("123456789" -> 0xE3069283).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn segment_names_sort_and_parse() {
        assert_eq!(segment_name(1), "00000000000000000001.wal");
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(
            parse_segment_name(Path::new("/x/00000000000000000042.wal")),
            Some(42)
        );
        assert_eq!(parse_segment_name(Path::new("wal.lock")), None);
        assert_eq!(parse_segment_name(Path::new("42.wal")), None);
    }

    #[test]
    fn genesis_and_hash() {
        assert_eq!(GENESIS.len(), 7 + 64);
        assert_eq!(
            hash_payload(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(header_bytes().len(), 16);
    }
}
