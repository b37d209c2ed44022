//! Checking a node's records away from the node: a stream of stored payloads (as the audit export
//! publishes them, or as `wal inspect --json` prints them) against the node's public key.
//!
//! [`verify_stream`] reads the payloads in order and checks that `seq` is contiguous, that each
//! record's `prev` is the hash of the one before (the chain), and that every `checkpoint` record
//! is signed by the key and signs the hash of the record at its size. A record delivered twice
//! (the export is at least once) is skipped when it is byte for byte the one already seen, and is
//! a fault otherwise. The stream may begin after seq 1 (a retention limit cut its start): the
//! chain is checked from its first record on, and a checkpoint of a size before that first
//! record is counted as not checkable.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};

use crate::checkpoint::{self, Checkpoint, NoteVerifier};
use crate::record::{Body, RecordType};

/// How many recent record hashes are kept to check checkpoints and duplicates against (2 MiB).
/// A checkpoint signs the head just before its own append, so its size lies a few records back.
pub const WINDOW: usize = 1 << 16;

/// What a sound stream held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Distinct records read.
    pub records: u64,
    /// The first seq (0 when empty).
    pub first_seq: u64,
    /// The last seq (0 when empty).
    pub head_seq: u64,
    /// `sha256:<hex>` of the last record.
    pub head_hash: String,
    /// Records seen again, identical (skipped).
    pub duplicates: u64,
    /// Checkpoints whose signature and root checked out.
    pub checkpoints: u64,
    /// Checkpoints of a size before the stream's first record (their signature checked, their
    /// root not).
    pub unchecked_checkpoints: u64,
    /// The last checkpoint that checked out.
    pub last_checkpoint: Option<Checkpoint>,
}

impl StreamReport {
    /// Records after the last checked checkpoint's size: not (yet) covered by a signature.
    pub fn unsigned_tail(&self) -> u64 {
        let signed = self.last_checkpoint.as_ref().map_or(0, |c| c.size);
        self.head_seq
            .saturating_sub(signed.max(self.first_seq.saturating_sub(1)))
    }
}

/// The first fault in a stream.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{message}", seq.map(|s| format!("seq {s}: ")).unwrap_or_default())]
pub struct StreamFault {
    /// The record where it was found, when it has a seq.
    pub seq: Option<u64>,
    /// What is wrong.
    pub message: String,
    /// What was read before it.
    pub so_far: Box<StreamReport>,
}

/// The header fields a payload must have.
struct Header {
    seq: u64,
    rtype: RecordType,
    prev: String,
}

fn header(v: &serde_json::Value) -> Result<Header, String> {
    let o = v.as_object().ok_or("the payload is not a JSON object")?;
    let seq = o
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("the payload has no numeric `seq`")?;
    let s = |k: &str| o.get(k).and_then(serde_json::Value::as_str);
    let (Some(rtype), Some(prev), Some(_ts)) = (s("type"), s("prev"), s("ts")) else {
        return Err(format!(
            "record seq {seq} lacks one of `ts`, `type`, `prev`"
        ));
    };
    let rtype = RecordType::parse(rtype)
        .ok_or_else(|| format!("record seq {seq} has an unknown type {rtype:?}"))?;
    Ok(Header {
        seq,
        rtype,
        prev: prev.to_string(),
    })
}

fn sha256(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

fn hash_str(h: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(h))
}

/// Checks a node's stored payloads, in order, against its public key `key`. Each item is one
/// payload's bytes exactly as stored (its hash is the next record's `prev`; a re-encoded JSON
/// value would not hash the same).
pub fn verify_stream<I, P>(payloads: I, key: &NoteVerifier) -> Result<StreamReport, StreamFault>
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    let mut rep = StreamReport::default();
    // Hashes of the last WINDOW records, oldest first; the newest is record rep.head_seq.
    let mut recent: VecDeque<[u8; 32]> = VecDeque::new();
    for p in payloads {
        let p = p.as_ref();
        let fault = |rep: &StreamReport, seq: Option<u64>, message: String| StreamFault {
            seq,
            message,
            so_far: Box::new(rep.clone()),
        };
        let v: serde_json::Value = serde_json::from_slice(p).map_err(|e| {
            fault(
                &rep,
                None,
                format!(
                    "after seq {}: a payload is not valid JSON ({e})",
                    rep.head_seq
                ),
            )
        })?;
        let h = header(&v)
            .map_err(|m| fault(&rep, None, format!("after seq {}: {m}", rep.head_seq)))?;
        let hash = sha256(p);
        if rep.records > 0 && h.seq <= rep.head_seq {
            // Seen before: fine if it is the same record, a fork if not.
            let back = (rep.head_seq - h.seq) as usize;
            match recent.len().checked_sub(1 + back).map(|i| recent[i]) {
                Some(old) if old == hash => {
                    rep.duplicates += 1;
                    continue;
                }
                Some(_) => {
                    return Err(fault(
                        &rep,
                        Some(h.seq),
                        "delivered again with different content: two versions of one record (the log was rewritten)".into(),
                    ));
                }
                None => {
                    return Err(fault(
                        &rep,
                        Some(h.seq),
                        format!(
                            "out of order: it arrives after seq {} (too far back to compare)",
                            rep.head_seq
                        ),
                    ));
                }
            }
        }
        if rep.records > 0 {
            if h.seq != rep.head_seq + 1 {
                return Err(fault(
                    &rep,
                    Some(h.seq),
                    format!(
                        "records are missing: expected seq {} after seq {}",
                        rep.head_seq + 1,
                        rep.head_seq
                    ),
                ));
            }
            if h.prev != rep.head_hash {
                return Err(fault(
                    &rep,
                    Some(h.seq),
                    format!(
                        "its prev {} is not the hash {} of seq {}: a record was altered",
                        h.prev, rep.head_hash, rep.head_seq
                    ),
                ));
            }
        } else {
            if h.seq == 0 {
                return Err(fault(&rep, Some(0), "seq starts at 1".into()));
            }
            if h.seq == 1 && h.prev != crate::wal::GENESIS {
                return Err(fault(
                    &rep,
                    Some(1),
                    format!("the first record's prev {} is not the genesis hash", h.prev),
                ));
            }
            rep.first_seq = h.seq;
        }
        if h.rtype == RecordType::Checkpoint {
            check_checkpoint(&v, h.seq, key, &recent, &mut rep)
                .map_err(|m| fault(&rep, Some(h.seq), m))?;
        }
        rep.records += 1;
        rep.head_seq = h.seq;
        rep.head_hash = hash_str(&hash);
        recent.push_back(hash);
        if recent.len() > WINDOW {
            recent.pop_front();
        }
    }
    Ok(rep)
}

/// Checks a checkpoint record at `seq`: its note is signed by `key`, its fields repeat the note,
/// and its root is the hash of the record at its size (in `recent`, whose newest is seq - 1).
fn check_checkpoint(
    v: &serde_json::Value,
    seq: u64,
    key: &NoteVerifier,
    recent: &VecDeque<[u8; 32]>,
    rep: &mut StreamReport,
) -> Result<(), String> {
    let Ok(Body::Checkpoint(b)) = Body::parse(RecordType::Checkpoint, v) else {
        return Err("a checkpoint record without the checkpoint fields".into());
    };
    let cp = checkpoint::open(&b.note, key).map_err(|e| format!("checkpoint: {e}"))?;
    if cp.size != b.size || cp.root_hash() != b.root || cp.origin != b.origin {
        return Err(format!(
            "the checkpoint record's fields (origin {}, size {}, root {}) are not what its note signs (origin {}, size {}, root {})",
            b.origin,
            b.size,
            b.root,
            cp.origin,
            cp.size,
            cp.root_hash()
        ));
    }
    if cp.size >= seq || cp.size == 0 {
        return Err(format!(
            "the checkpoint signs size {} but it is record {seq}: a checkpoint signs records before it",
            cp.size
        ));
    }
    if cp.size < rep.first_seq {
        rep.unchecked_checkpoints += 1;
        return Ok(());
    }
    let back = (seq - 1 - cp.size) as usize;
    let Some(h) = recent.len().checked_sub(1 + back).map(|i| recent[i]) else {
        return Err(format!(
            "the checkpoint signs seq {}, more than {WINDOW} records before it: not checkable here",
            cp.size
        ));
    };
    if h != cp.root {
        return Err(format!(
            "the checkpoint signed {} for seq {} but the stream's record {} hashes to {}: the records up to it are not the ones that were signed",
            cp.root_hash(),
            cp.size,
            cp.size,
            hash_str(&h)
        ));
    }
    rep.checkpoints += 1;
    rep.last_checkpoint = Some(cp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::NoteSigner;

    /// A chain of `n` marker payloads from seq `from` after `prev`, with a checkpoint record after
    /// every `every` (signing the record right before it).
    fn chain(signer: &NoteSigner, n: u64, every: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut prev = crate::wal::GENESIS.to_string();
        let mut seq = 1;
        let mut push = |body: serde_json::Value, rtype: &str, prev: &mut String, seq: &mut u64| {
            let mut m = serde_json::Map::new();
            m.insert("seq".into(), (*seq).into());
            m.insert("ts".into(), "2026-01-01T00:00:00.000000Z".into());
            m.insert("type".into(), rtype.into());
            m.insert("prev".into(), prev.clone().into());
            for (k, v) in body.as_object().unwrap() {
                m.insert(k.clone(), v.clone());
            }
            let p = serde_json::to_vec(&m).unwrap();
            *prev = hash_str(&sha256(&p));
            *seq += 1;
            out.push(p);
        };
        for i in 1..=n {
            push(
                serde_json::json!({"label": "x", "line": format!("line {i}"), "status": "PASS"}),
                "marker",
                &mut prev,
                &mut seq,
            );
            if i % every == 0 {
                let rec = Checkpoint::of_head("robot-7", seq - 1, &prev)
                    .unwrap()
                    .sign(signer)
                    .unwrap();
                push(
                    serde_json::to_value(&rec).unwrap(),
                    "checkpoint",
                    &mut prev,
                    &mut seq,
                );
            }
        }
        out
    }

    fn key() -> NoteSigner {
        NoteSigner::from_seed("robot-7", &[5; 32]).unwrap()
    }

    #[test]
    fn a_sound_stream_with_duplicates_checks_out() {
        let s = key();
        let mut p = chain(&s, 10, 4);
        // At-least-once delivery: records 3 and 4 arrive again.
        let (a, b) = (p[2].clone(), p[3].clone());
        p.insert(4, a);
        p.insert(5, b);
        let rep = verify_stream(&p, &s.verifier()).unwrap();
        assert_eq!(rep.records, 12);
        assert_eq!(rep.duplicates, 2);
        assert_eq!(rep.checkpoints, 2);
        assert_eq!(rep.last_checkpoint.as_ref().unwrap().size, 9);
        assert_eq!((rep.first_seq, rep.head_seq), (1, 12));
        assert_eq!(rep.unsigned_tail(), 3);
        // A stream that starts later: the checkpoint of an earlier size cannot be checked.
        let rep = verify_stream(&p[10..], &s.verifier()).unwrap();
        assert_eq!(rep.first_seq, 9);
        assert_eq!((rep.checkpoints, rep.unchecked_checkpoints), (1, 0));
        let rep = verify_stream(&p[11..], &s.verifier()).unwrap();
        assert_eq!((rep.checkpoints, rep.unchecked_checkpoints), (0, 1));
    }

    #[test]
    fn faults_are_found_and_named() {
        let s = key();
        let p = chain(&s, 10, 4);
        let v = s.verifier();
        let err = |p: &[Vec<u8>]| verify_stream(p, &v).unwrap_err();
        // A gap.
        let mut gap = p.clone();
        gap.remove(3);
        assert!(err(&gap).message.contains("missing"), "{}", err(&gap));
        // A record changed in place: the next record's prev no longer matches.
        let mut changed = p.clone();
        changed[1] = String::from_utf8(changed[1].clone())
            .unwrap()
            .replace("line 2", "line X")
            .into_bytes();
        let e = err(&changed);
        assert_eq!(e.seq, Some(3));
        assert!(e.message.contains("altered"), "{e}");
        // A duplicate that differs.
        let mut fork = p.clone();
        fork.insert(3, changed[1].clone());
        assert!(err(&fork).message.contains("different content"));
        // Another key.
        let other = NoteSigner::from_seed("robot-7", &[6; 32]).unwrap();
        let e = verify_stream(&p, &other.verifier()).unwrap_err();
        assert_eq!(e.seq, Some(5));
        assert!(e.message.contains("not signed by"), "{e}");
        // A checkpoint's unsigned field changed (its note still verifies).
        let mut fields = p.clone();
        fields[4] = String::from_utf8(fields[4].clone())
            .unwrap()
            .replace("\"size\":4", "\"size\":3")
            .into_bytes();
        assert!(err(&fields).message.contains("not what its note signs"));
        // The whole history rewritten and re-chained: the chain is sound, the signature is not
        // over it.
        let forged = rechain(&p, 1, "line 2", "line X");
        let e = err(&forged);
        assert_eq!(e.seq, Some(5));
        assert!(e.message.contains("not the ones that were signed"), "{e}");
        // Not JSON.
        let mut junk = p.clone();
        junk[2] = b"{nope".to_vec();
        assert!(err(&junk).message.contains("not valid JSON"));
    }

    /// Replaces `from` with `to` in payload `i`, then recomputes every later `prev`.
    fn rechain(p: &[Vec<u8>], i: usize, from: &str, to: &str) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = p.to_vec();
        out[i] = String::from_utf8(out[i].clone())
            .unwrap()
            .replace(from, to)
            .into_bytes();
        for j in i + 1..out.len() {
            let prev = hash_str(&sha256(&out[j - 1]));
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&out[j]).unwrap();
            v.insert("prev".into(), prev.into());
            out[j] = serde_json::to_vec(&v).unwrap();
        }
        out
    }
}
