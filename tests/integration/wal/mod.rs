//! The write-ahead log: damage, recovery, repair, write failures and crashes.
//!
//! The damage and recovery tests write their logs with the library (the only way to lay out
//! records and group-commit writes at chosen places), damage them on disk, and from then on use
//! the binary.

mod crash;
mod damage;
mod failures;
mod recovery;

use std::ops::Range;
use std::path::{Path, PathBuf};

use autonomy::types::AuditId;
use autonomy::wal::{
    MAX_BATCH_BYTES, NewRecord, Preallocate, Reader, RecordType, StoredRecord, SyncMode, TORN_PAGE,
    Wal, WalOptions, segment_name,
};

use crate::common::{Out, cli, p};

#[test]
fn a_bad_wal_overlap_after_is_one_line() {
    for v in ["2s", "soon", "5"] {
        let o = cli(
            &["runtime", "start", "--demo", "--wal-overlap-after", v],
            &[],
        );
        assert_eq!(o.code, 2, "{v}: {}", o.stderr);
        assert!(
            o.stderr.contains("--wal-overlap-after"),
            "{v}: {}",
            o.stderr
        );
        assert_eq!(o.stderr.trim().lines().count(), 1, "{v}: {}", o.stderr);
    }
}

/// Fsync'd segments of `segment_bytes`, preallocated the given way.
fn opts(segment_bytes: u64, preallocate: Preallocate) -> WalOptions {
    WalOptions {
        segment_bytes,
        sync: SyncMode::Fsync,
        preallocate,
        ..WalOptions::default()
    }
}

/// Decision record number `i`, padded by `pad` bytes.
fn rec(i: u64, pad: usize) -> NewRecord {
    NewRecord::new(RecordType::Decision, Some(AuditId::new()))
        .with("kind", "tool.http_get")
        .with("decision", "allow")
        .with("note", format!("hello record {i}"))
        .with("pad", "p".repeat(pad))
}

/// Writes `n` small records (seq 1..=n) with `o`, closes the WAL and reads them back.
fn write_wal(dir: &Path, o: WalOptions, n: u64) -> Vec<StoredRecord> {
    let (w, _) = Wal::open(dir, o).unwrap();
    for i in 1..=n {
        w.append(rec(i, 0)).unwrap();
    }
    w.close().unwrap();
    drop(w);
    records(dir)
}

/// Ten small records, then ten of 256 KiB, in one 8 MiB segment: more after the small ones
/// than the last write could have carried (`MAX_BATCH_BYTES`), so damage in the small ones lies
/// before anything a crash could have torn.
fn long_wal(dir: &Path, preallocate: Preallocate) -> Vec<StoredRecord> {
    let (w, _) = Wal::open(dir, opts(8 * 1024 * 1024, preallocate)).unwrap();
    for i in 1..=20u64 {
        w.append(rec(i, if i > 10 { 256 * 1024 } else { 0 }))
            .unwrap();
    }
    w.close().unwrap();
    drop(w);
    let recs = records(dir);
    assert!(frame_end(&recs[19]) - recs[10].offset > MAX_BATCH_BYTES + TORN_PAGE);
    recs
}

/// Every record of `dir`, read with the library.
fn records(dir: &Path) -> Vec<StoredRecord> {
    Reader::open(dir)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// The first segment's file.
fn seg1(dir: &Path) -> PathBuf {
    dir.join(segment_name(1))
}

/// Where record `r`'s whole frame (length, CRC, payload) ends in its segment.
fn frame_end(r: &StoredRecord) -> u64 {
    r.offset + 8 + r.raw.len() as u64
}

/// The byte range of record `r`'s whole frame in its segment.
fn frame(r: &StoredRecord) -> Range<usize> {
    r.offset as usize..frame_end(r) as usize
}

/// `autonomy wal verify --dir DIR`.
fn verify(dir: &Path) -> Out {
    cli(&["wal", "verify", "--dir", p(dir)], &[])
}
