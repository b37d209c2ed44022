//! Unit tests of the WAL engine.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::types::{AuditId, Seq};

/// Runs `f` on a thread and fails the test if it takes longer than `secs`.
fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("test timed out (or panicked)")
}

fn opts(segment_bytes: u64, pre: Preallocate) -> WalOptions {
    WalOptions {
        segment_bytes,
        sync: SyncMode::Fsync,
        preallocate: pre,
        ..WalOptions::default()
    }
}

fn rec(i: u64) -> NewRecord {
    NewRecord::new(
        RecordType::Decision,
        Some(AuditId::from_string(format!("a-{i}"))),
    )
    .with("kind", "tool.http_get")
    .with("decision", "allow")
    .with("i", i)
}

fn read_all(dir: &std::path::Path) -> Vec<StoredRecord> {
    Reader::open(dir)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn append_reopen_and_read_back() {
    let d = tempfile::tempdir().unwrap();
    {
        let (w, rec0) = Wal::open(d.path(), WalOptions::default()).unwrap();
        assert_eq!(rec0.records, 0);
        assert_eq!(w.head(), (Seq(0), GENESIS.to_string()));
        assert_eq!(w.append(rec(1)).unwrap(), Seq(1));
        assert_eq!(w.append_batch(vec![rec(2), rec(3)]).unwrap(), Seq(3));
        assert_eq!(
            w.append(NewRecord::new(RecordType::Runtime, None).with("event", "x"))
                .unwrap(),
            Seq(4)
        );
        w.close().unwrap();
        assert!(matches!(w.append(rec(5)), Err(WalError::Closed)));
    }
    let recs = read_all(d.path());
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0].seq, 1);
    assert_eq!(recs[0].payload["prev"], GENESIS);
    assert_eq!(recs[1].payload["prev"], recs[0].hash.as_str());
    assert_eq!(recs[2].payload["i"], 3);
    assert_eq!(recs[2].audit_id.as_ref().map(AuditId::as_str), Some("a-3"));
    assert_eq!(recs[3].rtype, RecordType::Runtime);
    assert_eq!(recs[3].audit_id, None);
    // Reserved keys come first, in order.
    let raw = serde_json::to_string(&recs[0].payload).unwrap();
    assert!(raw.contains("\"seq\":1"), "{raw}");
    let (w, r) = Wal::open(d.path(), WalOptions::default()).unwrap();
    assert_eq!(r.records, 4);
    assert_eq!(r.trimmed, None);
    assert_eq!(w.head(), (Seq(4), recs[3].hash.clone()));
    assert_eq!(w.append(rec(5)).unwrap(), Seq(5));
    drop(w);
    let rep = verify(d.path()).unwrap();
    assert_eq!((rep.records, rep.head_seq, rep.segments), (5, 5, 1));
    assert!(rep.torn_tail.is_none());
}

#[test]
fn payload_bytes_start_with_reserved_keys() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), WalOptions::default()).unwrap();
    w.append(rec(1)).unwrap();
    drop(w);
    let bytes = std::fs::read(d.path().join(segment_name(1))).unwrap();
    let len = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
    let payload = &bytes[24..24 + len];
    assert_eq!(crc32c::crc32c(payload), crc);
    let s = std::str::from_utf8(payload).unwrap();
    assert!(s.starts_with("{\"seq\":1,\"ts\":\""), "{s}");
    assert!(s.contains("\"type\":\"decision\",\"audit_id\":\"a-1\",\"prev\":\"sha256:000"));
    assert_eq!(&bytes[..8], b"AUTONWAL");
}

#[test]
fn rejects_reserved_keys_and_oversized() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), WalOptions::default()).unwrap();
    for k in RESERVED_KEYS {
        let e = w
            .append(NewRecord::new(RecordType::Runtime, None).with(k, 1))
            .unwrap_err();
        assert!(matches!(e, WalError::Invalid(_)), "{k}: {e}");
    }
    let big = "x".repeat(MAX_PAYLOAD);
    let e = w
        .append(NewRecord::new(RecordType::Runtime, None).with("big", big))
        .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    // A pre-encoded body is held to the same rules.
    #[derive(serde::Serialize)]
    struct Sneaky {
        seq: u64,
    }
    impl RecordBody for Sneaky {
        const TYPE: RecordType = RecordType::Runtime;
        const KEYS: &'static [&'static str] = &["seq"];
    }
    let e = NewRecord::encoded(None, &Sneaky { seq: 9 }).unwrap_err();
    assert!(matches!(e, WalError::Invalid(_)), "{e}");
    #[derive(serde::Serialize)]
    struct Fine {
        n: u64,
    }
    impl RecordBody for Fine {
        const TYPE: RecordType = RecordType::Runtime;
        const KEYS: &'static [&'static str] = &["n"];
    }
    let mixed = NewRecord::encoded(None, &Fine { n: 1 })
        .unwrap()
        .with("more", 2);
    let e = w.append(mixed).unwrap_err();
    assert!(matches!(e, WalError::Invalid(_)), "{e}");
    #[derive(serde::Serialize)]
    struct Huge {
        big: String,
    }
    impl RecordBody for Huge {
        const TYPE: RecordType = RecordType::Runtime;
        const KEYS: &'static [&'static str] = &["big"];
    }
    let huge = Huge {
        big: "x".repeat(MAX_PAYLOAD),
    };
    let e = w
        .append(NewRecord::encoded(None, &huge).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    // Nothing was consumed by the rejected records.
    assert_eq!(w.append(rec(1)).unwrap(), Seq(1));
}

#[test]
fn rotation_across_segments_keeps_the_chain() {
    for pre in [
        Preallocate::Off,
        Preallocate::Fallocate,
        Preallocate::ZeroFill,
    ] {
        let d = tempfile::tempdir().unwrap();
        let o = opts(1024, pre);
        {
            let (w, _) = Wal::open(d.path(), o.clone()).unwrap();
            for i in 1..=40 {
                assert_eq!(w.append(rec(i)).unwrap(), Seq(i));
            }
        }
        let segs = list_segments(d.path()).unwrap();
        assert!(segs.len() >= 5, "{pre:?}: {} segments", segs.len());
        assert_eq!(segs[0].0, 1);
        let recs = read_all(d.path());
        assert_eq!(recs.len(), 40);
        for (seg_first, path) in &segs {
            let first = recs.iter().find(|r| &r.segment == path).unwrap();
            assert_eq!(first.seq, *seg_first, "segment named by its first seq");
            if pre != Preallocate::Off {
                assert_eq!(std::fs::metadata(path).unwrap().len(), 1024);
            }
        }
        // Reopen and continue across more rotations.
        let (w, r) = Wal::open(d.path(), o).unwrap();
        assert_eq!(r.records, 40);
        for i in 41..=60 {
            assert_eq!(w.append(rec(i)).unwrap(), Seq(i));
        }
        drop(w);
        let rep = verify(d.path()).unwrap();
        assert_eq!(rep.records, 60, "{pre:?}");
        assert_eq!(
            rep.segments as usize,
            list_segments(d.path()).unwrap().len()
        );
    }
}

#[test]
fn second_writer_is_locked_out() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), WalOptions::default()).unwrap();
    let e = Wal::open(d.path(), WalOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, WalError::Locked(_)), "{msg}");
    assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    assert!(msg.contains(&d.path().display().to_string()), "{msg}");
    assert_eq!(msg.lines().count(), 1);
    // Readers need no lock.
    w.append(rec(1)).unwrap();
    assert_eq!(verify(d.path()).unwrap().records, 1);
    drop(w);
    let (w2, r) = Wal::open(d.path(), WalOptions::default()).unwrap();
    assert_eq!(r.records, 1);
    drop(w2);
}

#[test]
fn poisoned_after_a_write_error() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), WalOptions::default()).unwrap();
    w.append(rec(1)).unwrap();
    w.fail_next_write.store(true, Ordering::SeqCst);
    let e = w.append(rec(2)).unwrap_err();
    assert!(matches!(e, WalError::Poisoned(_)), "{e}");
    assert!(e.to_string().contains("injected fault"), "{e}");
    let e = w.append(rec(3)).unwrap_err();
    assert!(matches!(e, WalError::Poisoned(_)), "{e}");
    assert!(e.to_string().contains("injected fault"), "{e}");
    assert_eq!(w.head().0, Seq(1));
    drop(w);
    assert_eq!(verify(d.path()).unwrap().records, 1);
}

#[test]
fn concurrent_appends_are_contiguous() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    let seqs = with_timeout(120, move || {
        let (w, _) = Wal::open(&path, opts(256 * 1024, Preallocate::Fallocate)).unwrap();
        let w = Arc::new(w);
        let mut hs = Vec::new();
        for t in 0..16u64 {
            let w = w.clone();
            hs.push(std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..200u64 {
                    let s = w.append(rec(t * 1000 + i)).unwrap();
                    mine.push(s.0);
                }
                mine
            }));
        }
        let mut all: Vec<u64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort();
        assert_eq!(w.head().0, Seq(3200));
        all
    });
    assert_eq!(seqs, (1..=3200).collect::<Vec<_>>());
    let rep = verify(d.path()).unwrap();
    assert_eq!(rep.records, 3200);
    assert!(rep.segments > 1);
    assert!(rep.torn_tail.is_none());
}

/// Async appenders (many tasks) mixed with blocking appenders (threads), in both sync modes:
/// seqs stay contiguous, every record is readable, and each append returns only after the
/// head has reached it.
#[test]
fn async_and_sync_appends_mix() {
    for sync in [SyncMode::Fsync, SyncMode::None] {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().to_path_buf();
        let seqs = with_timeout(120, move || {
            let (w, _) = Wal::open(
                &path,
                WalOptions {
                    segment_bytes: 256 * 1024,
                    sync,
                    preallocate: Preallocate::Fallocate,
                    ..WalOptions::default()
                },
            )
            .unwrap();
            let w = Arc::new(w);
            let rt = two_workers();
            let mut threads = Vec::new();
            for t in 0..2u64 {
                let w = w.clone();
                threads.push(std::thread::spawn(move || {
                    (0..100u64)
                        .map(|i| w.append(rec(90_000 + t * 1000 + i)).unwrap().0)
                        .collect::<Vec<_>>()
                }));
            }
            let mut all = rt.block_on(async {
                let mut tasks = Vec::new();
                for t in 0..32u64 {
                    let w = w.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut mine = Vec::new();
                        for i in 0..50u64 {
                            let s = w.append_async(rec(t * 1000 + i)).await.unwrap();
                            assert!(w.head().0 >= s, "returned before durable");
                            mine.push(s.0);
                        }
                        mine
                    }));
                }
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                all
            });
            for h in threads {
                all.extend(h.join().unwrap());
            }
            all.sort();
            assert_eq!(w.head().0, Seq(1800));
            w.close().unwrap();
            all
        });
        assert_eq!(seqs, (1..=1800).collect::<Vec<_>>());
        let rep = verify(d.path()).unwrap();
        assert_eq!(rep.records, 1800);
        assert!(rep.segments > 1);
    }
}

/// A failed write fails every async appender waiting on it and every later one.
#[test]
fn async_append_after_a_write_error() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), WalOptions::default()).unwrap();
    let w = Arc::new(w);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(w.append_async(rec(1)).await.unwrap(), Seq(1));
        w.fail_next_write.store(true, Ordering::SeqCst);
        let e = w.append_async(rec(2)).await.unwrap_err();
        assert!(e.to_string().contains("injected fault"), "{e}");
        let e = w.append_async(rec(3)).await.unwrap_err();
        assert!(matches!(e, WalError::Poisoned(_)), "{e}");
    });
    assert!(w.append(rec(4)).is_err());
    assert_eq!(w.head().0, Seq(1));
    drop(w);
    assert_eq!(verify(d.path()).unwrap().records, 1);
}

#[test]
fn torn_tail_is_cut_and_recorded() {
    for pre in [Preallocate::Off, Preallocate::Fallocate] {
        let d = tempfile::tempdir().unwrap();
        let o = opts(64 * 1024, pre);
        {
            let (w, _) = Wal::open(d.path(), o.clone()).unwrap();
            for i in 1..=5 {
                w.append(rec(i)).unwrap();
            }
        }
        let seg = d.path().join(segment_name(1));
        let bytes = std::fs::read(&seg).unwrap();
        let end = {
            let recs = read_all(d.path());
            let last = recs.last().unwrap();
            let len = u32::from_le_bytes(
                bytes[last.offset as usize..last.offset as usize + 4]
                    .try_into()
                    .unwrap(),
            );
            last.offset + 8 + len as u64
        };
        // A half-written sixth frame.
        let garbage = [0x40u8, 0, 0, 0, 1, 2, 3, 4, b'{', b'"', b's'];
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &garbage, end).unwrap();
        drop(f);
        let rep = verify(d.path()).unwrap();
        assert_eq!(rep.records, 5);
        assert!(
            rep.torn_tail.as_deref().unwrap().contains("11 bytes"),
            "{rep:?}"
        );

        let (w, r) = Wal::open(d.path(), o).unwrap();
        assert_eq!(r.records, 5);
        let t = r.trimmed.unwrap();
        assert!(
            t.contains(&format!(
                "cut 11 bytes of torn tail at segment {} offset {end}",
                segment_name(1)
            )),
            "{t}"
        );
        assert_eq!(w.head().0, Seq(6));
        drop(w);
        let recs = read_all(d.path());
        assert_eq!(recs.len(), 6);
        assert_eq!(recs[5].payload["event"], "wal.recovered");
        assert_eq!(recs[5].payload["trimmed_bytes"], 11);
        assert_eq!(recs[5].payload["offset"], end);
        assert_eq!(recs[5].offset, end);
        let rep = verify(d.path()).unwrap();
        assert!(rep.torn_tail.is_none());
    }
}

#[test]
fn reader_follows_a_live_writer_across_segments() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), opts(1024, Preallocate::Fallocate)).unwrap();
    w.append(rec(1)).unwrap();
    let mut r = Reader::open(d.path()).unwrap();
    r.set_live(true);
    assert_eq!(r.next_record().unwrap().unwrap().seq, 1);
    assert!(r.next_record().unwrap().is_none());
    for i in 2..=30 {
        w.append(rec(i)).unwrap();
    }
    let mut got = Vec::new();
    while let Some(x) = r.next_record().unwrap() {
        got.push(x.seq);
    }
    assert_eq!(got, (2..=30).collect::<Vec<_>>());
    assert!(r.segments() > 1);
}

#[test]
fn empty_and_missing_dirs() {
    let d = tempfile::tempdir().unwrap();
    let e = verify(d.path()).unwrap_err();
    assert_eq!(e.code, DamageCode::NoSegments);
    assert!(e.to_string().contains("no WAL segments in"));
    let e = verify(&d.path().join("nope")).unwrap_err();
    assert_eq!(e.code, DamageCode::Io);
    assert!(e.to_string().contains("does not exist"));
    // A freshly opened WAL has one empty segment and verifies.
    let (w, _) = Wal::open(d.path(), WalOptions::default()).unwrap();
    let rep = verify(d.path()).unwrap();
    assert_eq!((rep.records, rep.segments, rep.head_seq), (0, 1, 0));
    assert_eq!(rep.head_hash, GENESIS);
    drop(w);
}

#[test]
fn incomplete_new_segment_header_is_removed() {
    let d = tempfile::tempdir().unwrap();
    let o = opts(1024, Preallocate::Off);
    {
        let (w, _) = Wal::open(d.path(), o.clone()).unwrap();
        for i in 1..=3 {
            w.append(rec(i)).unwrap();
        }
    }
    // A crash while creating segment 4: only part of its header.
    std::fs::write(d.path().join(segment_name(4)), b"AUTON").unwrap();
    let rep = verify(d.path()).unwrap();
    assert_eq!(rep.records, 3);
    assert!(rep.torn_tail.is_some());
    let (w, r) = Wal::open(d.path(), o).unwrap();
    assert!(r.trimmed.is_some());
    assert_eq!(w.head().0, Seq(4));
    drop(w);
    assert_eq!(verify(d.path()).unwrap().records, 4);
}

#[test]
fn live_reader_does_not_mistake_stale_cached_zeros_for_damage() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), opts(1024 * 1024, Preallocate::Fallocate)).unwrap();
    w.append(rec(1)).unwrap();
    w.append(rec(2)).unwrap();
    let mut r = Reader::open(d.path()).unwrap();
    r.set_live(true);
    // Caches a chunk holding records 1-2 and zeros after them.
    assert_eq!(r.next_record().unwrap().unwrap().seq, 1);
    w.append_batch(vec![rec(3), rec(4), rec(5)]).unwrap();
    let mut got = Vec::new();
    while let Some(x) = r.next_record().unwrap() {
        got.push(x.seq);
    }
    assert_eq!(got, vec![2, 3, 4, 5]);
}

#[test]
fn live_reader_reads_records_larger_than_its_chunk() {
    let d = tempfile::tempdir().unwrap();
    let (w, _) = Wal::open(d.path(), opts(8 * 1024 * 1024, Preallocate::ZeroFill)).unwrap();
    w.append(rec(1)).unwrap();
    let mut r = Reader::open(d.path()).unwrap();
    r.set_live(true);
    assert_eq!(r.next_record().unwrap().unwrap().seq, 1);
    assert!(r.next_record().unwrap().is_none());
    // Records of 200 KiB, over the live reader's 64 KiB chunk, among small ones.
    let big = "x".repeat(200 * 1024);
    for i in 2..=6 {
        let x = if i % 2 == 0 {
            rec(i).with("big", big.as_str())
        } else {
            rec(i)
        };
        w.append(x).unwrap();
    }
    let got: Vec<_> = std::iter::from_fn(|| r.next_record().unwrap())
        .map(|x| (x.seq.0, x.raw.len() > 200 * 1024))
        .collect();
    assert_eq!(
        got,
        [(2, true), (3, false), (4, true), (5, false), (6, true)]
    );
}

#[test]
fn wal_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Wal>();
    check::<Arc<Wal>>();
}

/// The sorted names of the files in `dir` whose names end with `suffix`.
fn names_ending(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn spares(dir: &std::path::Path) -> Vec<String> {
    names_ending(dir, ".spare")
}

fn segments(dir: &std::path::Path) -> Vec<String> {
    names_ending(dir, ".wal")
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_next_segment_is_prepared_half_way_and_renamed_into_place() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    with_timeout(30, move || {
        // A stale (half-written) spare from an earlier process is removed on open.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("next-1-1.spare"), b"AUTONWAL garbage").unwrap();
        let seg = 64 * 1024;
        let (w, _) = Wal::open(&dir, opts(seg, Preallocate::ZeroFill)).unwrap();
        assert_eq!(spares(&dir), Vec::<String>::new());
        // Below half a segment: no spare yet.
        let mut i = 0;
        for _ in 0..20 {
            i += 1;
            w.append(rec(i)).unwrap();
        }
        assert_eq!(spares(&dir), Vec::<String>::new());
        // Past half: a spare, complete (full size) once its thread is done.
        let first = segments(&dir);
        assert_eq!(first.len(), 1);
        while spares(&dir).is_empty() {
            i += 1;
            w.append(rec(i)).unwrap();
            assert_eq!(segments(&dir), first, "rotated before a spare was started");
        }
        let s = spares(&dir);
        assert_eq!(s.len(), 1, "{s:?}");
        wait_for("a ready spare", 10, || w.spare_ready());
        assert_eq!(std::fs::metadata(dir.join(&s[0])).unwrap().len(), seg);
        // Rotation renames it into place: the new segment is the spare's inode.
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join(&s[0])).unwrap());
        while segments(&dir).len() == 1 {
            i += 1;
            w.append(rec(i)).unwrap();
        }
        let segs = segments(&dir);
        let new = dir.join(&segs[1]);
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&new).unwrap()),
            ino
        );
        assert!(!dir.join(&s[0]).exists());
        w.close().unwrap();
        // The log is whole, with every record in order across the two segments.
        let recs = read_all(&dir);
        assert_eq!(recs.len() as u64, i);
        assert!(recs.iter().enumerate().all(|(k, r)| r.seq == k as u64 + 1));
        assert!(Reader::open(&dir).unwrap().all(|r| r.is_ok()));
    });
}

#[test]
fn async_appends_group_commit_on_a_single_worker_runtime() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    with_timeout(30, move || {
        let (w, _) = Wal::open(&path, WalOptions::default()).unwrap();
        let w = Arc::new(w);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..32)
                .map(|t| {
                    let w = w.clone();
                    tokio::spawn(async move {
                        for i in 0..20 {
                            w.append_async(rec(t * 100 + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        // Blocking the only worker for each fdatasync would leave one record per batch.
        assert!(w.max_batch() > 1, "max batch {}", w.max_batch());
        assert_eq!(read_all(&path).len(), 640);
    });
}

/// The end of the last record in `dir` (where the next one goes).
fn data_end(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let recs = read_all(dir);
    let r = recs.last().expect("a record");
    (r.segment.clone(), r.offset + 8 + r.raw.len() as u64)
}

/// Fills the first segment to within `room..room+300` bytes of its end, then makes the next
/// segment's name a directory and appends a record too large for what is left: the rotation
/// fails without writing anything. Returns the blocked path and the last durable seq.
fn fail_a_rotation(
    w: &Wal,
    dir: &std::path::Path,
    seg: u64,
    room: u64,
) -> (std::path::PathBuf, u64) {
    let mut head = 0;
    loop {
        head += 1;
        w.append(rec(head)).unwrap();
        if w.spare_started() {
            wait_for("a ready spare", 10, || w.spare_ready());
        }
        let (_, end) = data_end(dir);
        if seg - end < room + 300 {
            break;
        }
    }
    assert_eq!(segments(dir).len(), 1);
    let next = dir.join(segment_name(head + 1));
    std::fs::create_dir(&next).unwrap();
    let big = rec(head + 1).with("pad", "p".repeat((room + 400) as usize));
    let e = w.append(big).unwrap_err();
    assert!(matches!(e, WalError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("cannot create segment"), "{e}");
    (next, head)
}

fn rotation_failure_is_retried(pre: Preallocate) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    with_timeout(60, move || {
        let seg = 16 * 1024;
        let (w, _) = Wal::open(&dir, opts(seg, pre)).unwrap();
        let spare_ino = || {
            spares(&dir).first().map(|s| {
                std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join(s)).unwrap())
            })
        };
        let (next, head) = fail_a_rotation(&w, &dir, seg, 600);
        let spare = spare_ino();
        assert_eq!(spare.is_some(), pre != Preallocate::Off);
        assert_eq!(w.head().0, Seq(head));
        // While the cause lasts, every append fails the same way, small ones too.
        let small = || NewRecord::new(RecordType::Marker, None).with("line", "m");
        assert!(matches!(w.append(small()), Err(WalError::Unavailable(_))));
        // Nothing of them is on disk.
        std::fs::remove_dir(&next).unwrap();
        assert_eq!(read_all(&dir).len() as u64, head);
        // Now the next append works. It goes to the new segment although it would fit in the
        // old one (the failed attempt could have left a file there), with the seq given out
        // again.
        assert_eq!(w.append(small()).unwrap(), Seq(head + 1));
        assert_eq!(w.append(rec(head + 2)).unwrap(), Seq(head + 2));
        if let Some(ino) = spare {
            // The spare kept through the failure is the one renamed into place.
            let got = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&next).unwrap());
            assert_eq!(got, ino);
        }
        w.close().unwrap();
        drop(w);
        let recs = read_all(&dir);
        assert_eq!(recs.len() as u64, head + 2);
        assert_eq!(recs[head as usize].segment, next);
        assert_eq!(recs[head as usize].payload["line"], "m");
        let rep = verify(&dir).unwrap();
        assert_eq!(rep.segments, 2);
        assert!(rep.torn_tail.is_none());
    });
}

#[test]
fn a_segment_that_cannot_be_created_is_retried() {
    rotation_failure_is_retried(Preallocate::Off);
}

#[test]
fn a_spare_that_cannot_be_renamed_into_place_is_retried() {
    rotation_failure_is_retried(Preallocate::ZeroFill);
}

/// Many appenders, blocking and async, while rotations keep failing and recovering: every
/// append told `Ok(seq)` is at that seq in the log, every one told it failed is not in it.
#[test]
fn concurrent_appends_through_failing_rotations_are_told_the_truth() {
    use std::sync::atomic::AtomicBool;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    with_timeout(180, move || {
        let (w, _) = Wal::open(&dir, opts(16 * 1024, Preallocate::Off)).unwrap();
        let w = Arc::new(w);
        let done = Arc::new(AtomicBool::new(false));
        let id = |t: u64, i: u64| AuditId::from_string(format!("t{t}-{i}"));
        let mk = move |t: u64, i: u64| {
            NewRecord::new(RecordType::Decision, Some(id(t, i))).with("pad", "q".repeat(100))
        };
        let armed = Arc::new(AtomicBool::new(false));
        // Blocks the names of the next segments for a while, then frees them, until the
        // appenders are done. Started first, and blocking before any appender starts, so that on
        // a loaded machine the appenders cannot all finish before it runs.
        let blocker = {
            let (w, dir, done, armed) = (w.clone(), dir.clone(), done.clone(), armed.clone());
            std::thread::spawn(move || {
                let mut made = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let head = w.head().0.0;
                    for s in head + 1..=head + 64 {
                        let p = dir.join(segment_name(s));
                        if std::fs::create_dir(&p).is_ok() {
                            made.push(p);
                        }
                    }
                    armed.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(3));
                    for p in made.drain(..) {
                        let _ = std::fs::remove_dir(&p);
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        while !armed.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut workers = Vec::new();
        for t in 0..6u64 {
            let w = w.clone();
            workers.push(std::thread::spawn(move || {
                (0..150u64)
                    .map(|i| (id(t, i), w.append(mk(t, i))))
                    .collect::<Vec<_>>()
            }));
        }
        {
            let w = w.clone();
            workers.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..4u64)
                        .map(|k| {
                            let w = w.clone();
                            tokio::spawn(async move {
                                let mut out = Vec::new();
                                for i in 0..150u64 {
                                    let t = 100 + k;
                                    out.push((id(t, i), w.append_async(mk(t, i)).await));
                                }
                                out
                            })
                        })
                        .collect();
                    let mut all = Vec::new();
                    for t in tasks {
                        all.extend(t.await.unwrap());
                    }
                    all
                })
            }));
        }
        let mut answers = Vec::new();
        for h in workers {
            answers.extend(h.join().unwrap());
        }
        done.store(true, Ordering::SeqCst);
        blocker.join().unwrap();
        w.close().unwrap();
        drop(w);
        let recs = read_all(&dir);
        for (k, r) in recs.iter().enumerate() {
            assert_eq!(r.seq, k as u64 + 1);
        }
        let (mut ok, mut failed) = (0, 0);
        for (aid, res) in &answers {
            let found: Vec<_> = recs
                .iter()
                .filter(|r| r.audit_id.as_ref().map(AuditId::as_str) == Some(aid.as_str()))
                .collect();
            match res {
                Ok(seq) => {
                    ok += 1;
                    assert_eq!(found.len(), 1, "{aid} acknowledged but not in the log once");
                    assert_eq!(found[0].seq, seq.0, "{aid}");
                }
                Err(e) => {
                    failed += 1;
                    assert!(matches!(e, WalError::Unavailable(_)), "{e}");
                    assert!(found.is_empty(), "{aid} refused ({e}) but in the log");
                }
            }
        }
        assert_eq!(ok, recs.len());
        assert!(
            failed > 0,
            "no rotation ever failed: the test proved nothing"
        );
        assert!(verify(&dir).unwrap().torn_tail.is_none());
    });
}

#[test]
fn one_write_carries_at_most_max_batch_bytes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    with_timeout(60, move || {
        let (w, _) = Wal::open(&dir, opts(16 * 1024 * 1024, Preallocate::Off)).unwrap();
        let big = |i| rec(i).with("pad", "p".repeat(700 * 1024));
        durable::TRACE.with(|t| t.borrow_mut().clear());
        // One call, five records of 700 KiB: queued together, written as 2 + 2 + 1.
        assert_eq!(w.append_batch((1..=5).map(big).collect()).unwrap(), Seq(5));
        let writes = durable::TRACE.with(|t| {
            t.borrow()
                .iter()
                .filter(|e| e.starts_with("write "))
                .count()
        });
        assert_eq!(writes, 3);
        assert_eq!(w.max_batch(), 2);
        let (_, hash) = w.head();
        w.close().unwrap();
        drop(w);
        let rep = verify(&dir).unwrap();
        assert_eq!((rep.records, rep.head_hash), (5, hash));
    });
}

/// Index of the first trace event equal to `e`.
fn event(trace: &[String], e: &str) -> usize {
    trace
        .iter()
        .position(|x| x == e)
        .unwrap_or_else(|| panic!("no `{e}` in {trace:#?}"))
}

#[test]
fn new_names_are_made_durable_before_records_are_written_under_them() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    with_timeout(60, move || {
        let take = || durable::TRACE.with(|t| std::mem::take(&mut *t.borrow_mut()));
        take();
        // A new directory (and its new parent) is durable in its parent before anything else.
        let dir = root.join("a").join("wal");
        let (w, _) = Wal::open(&dir, opts(4096, Preallocate::Off)).unwrap();
        let t = take();
        let seg1 = dir.join(segment_name(1));
        assert!(
            event(&t, &format!("dir-sync {}", root.display()))
                < event(&t, &format!("dir-sync {}", root.join("a").display()))
        );
        assert!(
            event(&t, &format!("create {}", seg1.display()))
                < event(&t, &format!("dir-sync {}", dir.display()))
        );
        // Rotation by creating the segment: created, directory synced, then written.
        let mut i = 0;
        while segments(&dir).len() < 2 {
            i += 1;
            w.append(rec(i)).unwrap();
        }
        let t = take();
        let seg2 = dir.join(segment_name(i));
        let created = event(&t, &format!("create {}", seg2.display()));
        let synced = event(&t, &format!("dir-sync {}", dir.display()));
        let written = event(&t, &format!("write {}", seg2.display()));
        assert!(created < synced && synced < written, "{t:#?}");
        w.close().unwrap();
        drop(w);

        // Rotation by renaming the spare: renamed, directory synced, then written.
        let dir = root.join("b");
        let (w, _) = Wal::open(&dir, opts(8192, Preallocate::ZeroFill)).unwrap();
        let mut i = 0;
        while segments(&dir).len() < 2 {
            i += 1;
            w.append(rec(i)).unwrap();
            if w.spare_started() {
                wait_for("a ready spare", 10, || w.spare_ready());
            }
        }
        let t = take();
        let seg2 = dir.join(segment_name(i));
        let renamed = t
            .iter()
            .position(|e| e.starts_with("rename ") && e.ends_with(&format!(" {}", seg2.display())))
            .unwrap_or_else(|| panic!("no rename in {t:#?}"));
        let synced = renamed
            + t[renamed..]
                .iter()
                .position(|e| *e == format!("dir-sync {}", dir.display()))
                .expect("a directory sync after the rename");
        let written = event(&t, &format!("write {}", seg2.display()));
        assert!(synced < written, "{t:#?}");
        w.close().unwrap();
    });
}

#[test]
fn the_torn_tail_window_ends_where_the_last_possible_write_ends() {
    use super::format::batch_window_end;
    // Three records; the third is then destroyed and a copy of the second put further on.
    let build = |gap_from_window_end: i64| {
        let d = tempfile::tempdir().unwrap();
        let (w, _) = Wal::open(d.path(), opts(8 * 1024 * 1024, Preallocate::ZeroFill)).unwrap();
        for i in 1..=3 {
            w.append(rec(i)).unwrap();
        }
        w.close().unwrap();
        drop(w);
        let recs = read_all(d.path());
        let path = d.path().join(segment_name(1));
        let mut b = std::fs::read(&path).unwrap();
        let off = recs[2].offset as usize;
        let frame = b[recs[1].offset as usize..off].to_vec();
        b[off..off + 8].fill(0xEE);
        let at = (batch_window_end(off as u64) as i64 + gap_from_window_end) as usize;
        b[at..at + frame.len()].copy_from_slice(&frame);
        std::fs::write(&path, &b).unwrap();
        (d, off as u64, at as u64, frame.len() as u64)
    };
    // Wholly inside the window: one write's worth, cut (the copy with it).
    let (d, off, at, len) = build(-(4096 + 600));
    assert!(at + len <= batch_window_end(off));
    let rep = verify(d.path()).unwrap();
    assert!(
        rep.torn_tail
            .as_deref()
            .unwrap()
            .contains("holding 1 whole frame"),
        "{:?}",
        rep.torn_tail
    );
    let (w, r) = Wal::open(d.path(), WalOptions::default()).unwrap();
    assert!(r.trimmed.unwrap().contains(&format!("offset {off}")));
    drop(w);
    assert!(verify(d.path()).unwrap().torn_tail.is_none());
    // Starting right at the window's end: damage, refused.
    let (d, off, at, _) = build(0);
    let e = verify(d.path()).unwrap_err();
    assert_eq!(e.code, DamageCode::CrcMismatch);
    assert_eq!(e.offset, off);
    assert!(
        e.message
            .contains(&format!("valid frame follows at offset {at}")),
        "{e}"
    );
    assert!(Wal::open(d.path(), WalOptions::default()).is_err());
}

/// A multi-threaded runtime with two workers, like the daemon's on a 2-vCPU machine.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A WAL of 1 MiB preallocated segments in `dir`, to share with async appenders.
fn shared_wal(dir: &std::path::Path) -> Arc<Wal> {
    Arc::new(
        Wal::open(dir, opts(1 << 20, Preallocate::ZeroFill))
            .unwrap()
            .0,
    )
}

/// Flush steps seen by [`Wal::hook`], in order: (step, seq).
type Steps = Arc<std::sync::Mutex<Vec<(String, u64)>>>;

/// Records every flush step; holds the fdatasync of the write ending at seq `hold` until
/// `release` is sent (or 20 s pass).
fn record_steps(w: &Wal, hold: Option<(u64, std::sync::mpsc::Receiver<()>)>) -> Steps {
    let steps: Steps = Arc::default();
    let (s, held) = (steps.clone(), std::sync::Mutex::new(hold));
    let hook: super::writer::TestHook = Arc::new(move |step: &str, seq: u64| {
        s.lock().unwrap().push((step.to_string(), seq));
        if step == "sync" {
            let mut h = held.lock().unwrap();
            if h.as_ref().is_some_and(|(at, _)| *at == seq)
                && let Some((_, rx)) = h.take()
            {
                drop(h);
                let _ = rx.recv_timeout(Duration::from_secs(20));
            }
        }
    });
    *w.hook.lock().unwrap() = Some(hook);
    steps
}

fn saw(steps: &Steps, step: &str, seq: u64) -> bool {
    steps
        .lock()
        .unwrap()
        .iter()
        .any(|(s, q)| s == step && *q == seq)
}

fn index(steps: &Steps, step: &str, seq: u64) -> usize {
    let v = steps.lock().unwrap();
    v.iter()
        .position(|(s, q)| s == step && *q == seq)
        .unwrap_or_else(|| panic!("no {step} {seq} in {v:?}"))
}

/// Seq 1's fdatasync is held; seq 2 is appended meanwhile. Returns the two appends' threads.
#[allow(clippy::type_complexity)]
fn hold_the_first_sync(
    overlap: bool,
) -> (
    tempfile::TempDir,
    Arc<Wal>,
    Steps,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Result<Seq, WalError>>,
    std::thread::JoinHandle<Result<Seq, WalError>>,
) {
    hold_the_first_sync_for(overlap, crate::wal::DEFAULT_OVERLAP_AFTER)
}

/// [`hold_the_first_sync`] with the given `overlap_after`.
#[allow(clippy::type_complexity)]
fn hold_the_first_sync_for(
    overlap: bool,
    overlap_after: Duration,
) -> (
    tempfile::TempDir,
    Arc<Wal>,
    Steps,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Result<Seq, WalError>>,
    std::thread::JoinHandle<Result<Seq, WalError>>,
) {
    let d = tempfile::tempdir().unwrap();
    let o = WalOptions {
        overlap_syncs: overlap,
        overlap_after,
        ..opts(1 << 20, Preallocate::ZeroFill)
    };
    let w = Arc::new(Wal::open(d.path(), o).unwrap().0);
    let (release, rx) = std::sync::mpsc::channel();
    let steps = record_steps(&w, Some((1, rx)));
    let a = {
        let w = w.clone();
        std::thread::spawn(move || w.append(rec(1)))
    };
    wait_for("seq 1's fdatasync to start", 10, || saw(&steps, "sync", 1));
    let b = {
        let w = w.clone();
        std::thread::spawn(move || w.append(rec(2)))
    };
    (d, w, steps, release, a, b)
}

/// Lets seq 1's fdatasync return and checks that both appends ended with their seqs.
fn release_both(
    release: &std::sync::mpsc::Sender<()>,
    a: std::thread::JoinHandle<Result<Seq, WalError>>,
    b: std::thread::JoinHandle<Result<Seq, WalError>>,
) {
    release.send(()).unwrap();
    assert_eq!(a.join().unwrap().unwrap(), Seq(1));
    assert_eq!(b.join().unwrap().unwrap(), Seq(2));
}

#[test]
fn the_next_write_is_synced_while_the_last_ones_fdatasync_runs() {
    with_timeout(60, || {
        let (_d, w, steps, release, a, b) = hold_the_first_sync(true);
        // Seq 2 is written and fdatasync'd while seq 1's fdatasync has not returned...
        wait_for("seq 2's fdatasync to end", 10, || saw(&steps, "synced", 2));
        assert!(!saw(&steps, "synced", 1));
        // ...but neither is durable before seq 1's fdatasync has returned: never out of order.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(w.head().0, Seq(0));
        assert!(!a.is_finished() && !b.is_finished());
        release_both(&release, a, b);
        assert!(index(&steps, "synced", 1) < index(&steps, "durable", 1));
        assert!(index(&steps, "durable", 1) < index(&steps, "durable", 2));
        assert_eq!(w.head().0, Seq(2));
        w.close().unwrap();
    });
}

#[test]
fn a_fast_fdatasync_is_waited_for_and_a_slow_one_overlapped() {
    with_timeout(60, || {
        // Overlap after 400 ms: until then seq 2 waits for seq 1's fdatasync (a fast one would
        // have ended and taken seq 2 into the next batch); after it, seq 2 goes out beside it.
        let (_d, w, steps, release, a, b) =
            hold_the_first_sync_for(true, Duration::from_millis(400));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!saw(&steps, "written", 2), "{:?}", steps.lock().unwrap());
        wait_for("seq 2's fdatasync to end", 10, || saw(&steps, "synced", 2));
        assert!(!saw(&steps, "synced", 1));
        assert_eq!(w.head().0, Seq(0));
        release_both(&release, a, b);
        assert!(index(&steps, "durable", 1) < index(&steps, "durable", 2));
        w.close().unwrap();
    });
}

#[test]
fn an_async_append_behind_a_slow_fdatasync_is_written_beside_it() {
    with_timeout(60, || {
        let d = tempfile::tempdir().unwrap();
        let o = WalOptions {
            overlap_syncs: true,
            overlap_after: Duration::from_millis(300),
            ..opts(1 << 20, Preallocate::ZeroFill)
        };
        let w = Arc::new(Wal::open(d.path(), o).unwrap().0);
        let (release, rx) = std::sync::mpsc::channel();
        let steps = record_steps(&w, Some((1, rx)));
        let a = {
            let w = w.clone();
            std::thread::spawn(move || w.append(rec(1)))
        };
        wait_for("seq 1's fdatasync to start", 10, || saw(&steps, "sync", 1));
        let rt = two_workers();
        let b = {
            let w = w.clone();
            rt.spawn(async move { w.append_async(rec(2)).await })
        };
        // No leader for seq 2 while seq 1's fdatasync may still be a fast one...
        std::thread::sleep(Duration::from_millis(150));
        assert!(!saw(&steps, "written", 2), "{:?}", steps.lock().unwrap());
        // ...and one beside it once that fdatasync has run for 300 ms.
        wait_for("seq 2's fdatasync to end", 10, || saw(&steps, "synced", 2));
        assert!(!saw(&steps, "synced", 1));
        release.send(()).unwrap();
        assert_eq!(a.join().unwrap().unwrap(), Seq(1));
        assert_eq!(rt.block_on(b).unwrap().unwrap(), Seq(2));
        assert!(index(&steps, "durable", 1) < index(&steps, "durable", 2));
        w.close().unwrap();
    });
}

#[test]
fn a_fdatasync_that_ends_before_the_overlap_takes_what_queued_into_one_batch() {
    with_timeout(60, || {
        let (_d, w, steps, release, a, b) = hold_the_first_sync_for(true, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!saw(&steps, "written", 2), "{:?}", steps.lock().unwrap());
        release_both(&release, a, b);
        // Written only once seq 1 was durable, as with one flush at a time.
        assert!(index(&steps, "durable", 1) < index(&steps, "written", 2));
        w.close().unwrap();
    });
}

#[test]
fn without_overlap_the_next_write_waits_for_the_last_fdatasync() {
    with_timeout(60, || {
        let (_d, w, steps, release, a, b) = hold_the_first_sync(false);
        std::thread::sleep(Duration::from_millis(200));
        assert!(!saw(&steps, "written", 2), "{:?}", steps.lock().unwrap());
        release_both(&release, a, b);
        assert!(index(&steps, "durable", 1) < index(&steps, "written", 2));
        w.close().unwrap();
    });
}

#[test]
fn a_failed_fdatasync_fails_the_write_that_overlapped_it() {
    with_timeout(60, || {
        let (d, w, steps, release, a, b) = hold_the_first_sync(true);
        wait_for("seq 2's fdatasync to end", 10, || saw(&steps, "synced", 2));
        // Seq 1's fdatasync fails after seq 2's succeeded: seq 2 must not be reported durable
        // (its fdatasync's success says nothing of seq 1's bytes' writeback).
        w.fail_next_sync.store(true, Ordering::SeqCst);
        release.send(()).unwrap();
        let ea = a.join().unwrap().unwrap_err();
        let eb = b.join().unwrap().unwrap_err();
        assert!(ea.to_string().contains("injected fault"), "{ea}");
        assert!(matches!(eb, WalError::Poisoned(_)), "{eb}");
        assert!(!saw(&steps, "durable", 1) && !saw(&steps, "durable", 2));
        assert_eq!(w.head().0, Seq(0));
        let e = w.append(rec(3)).unwrap_err();
        assert!(matches!(e, WalError::Poisoned(_)), "{e}");
        assert_eq!(w.stats().write_errors, 1);
        drop(w);
        // Recovery is unchanged: both records reached the file and are kept (never answered).
        let (_, r) = Wal::open(d.path(), opts(1 << 20, Preallocate::ZeroFill)).unwrap();
        assert_eq!(r.records, 2);
    });
}

#[test]
fn overlapping_flushes_report_durability_in_order_and_rotate_only_when_synced() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    with_timeout(120, move || {
        // Small segments: many rotations under 8 concurrent appenders.
        let w = Arc::new(
            Wal::open(&dir, opts(16 * 1024, Preallocate::Off))
                .unwrap()
                .0,
        );
        let steps = record_steps(&w, None);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..60 {
                        let s = w.append(rec(t * 1000 + i)).unwrap();
                        // Returned only once it is durable.
                        assert!(w.head().0 >= s);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = steps.lock().unwrap().clone();
        let (mut durable, mut overlapped, mut in_sync) = (0u64, 0, 0i32);
        for (i, (step, seq)) in v.iter().enumerate() {
            match step.as_str() {
                "sync" => {
                    in_sync += 1;
                    if in_sync > 1 {
                        overlapped += 1;
                    }
                    // Its bytes were written before its fdatasync started.
                    assert!(v[..i].contains(&("written".to_string(), *seq)));
                }
                "synced" => in_sync -= 1,
                "durable" => {
                    // In seq order, and only after its own fdatasync returned.
                    assert!(*seq > durable, "durable {seq} after {durable}");
                    assert!(v[..i].contains(&("synced".to_string(), *seq)));
                    durable = *seq;
                }
                "rotate" => {
                    // Every record before the new segment is durable before it is opened.
                    assert_eq!(*seq, durable + 1, "{:?}", &v[..=i]);
                }
                _ => {}
            }
        }
        assert_eq!(durable, 480);
        assert!(v.iter().filter(|(s, _)| s == "rotate").count() > 3);
        eprintln!("{overlapped} of the fdatasyncs started while another ran");
        w.close().unwrap();
        let rep = verify(&dir).unwrap();
        assert_eq!(rep.records, 480);
    });
}

#[test]
fn records_submitted_within_a_delay_share_one_fdatasync_after_it() {
    with_timeout(60, || {
        let d = tempfile::tempdir().unwrap();
        let w = shared_wal(d.path());
        let steps = record_steps(&w, None);
        let rt = two_workers();
        let within = Duration::from_millis(400);
        let started = std::time::Instant::now();
        let futs: Vec<_> = {
            let _in = rt.enter();
            (1..=3)
                .map(|i| w.submit_within(rec(i), within).unwrap())
                .collect()
        };
        // No flush is running, so none starts at once: the first record's timer leads one.
        std::thread::sleep(Duration::from_millis(200));
        assert!(steps.lock().unwrap().is_empty(), "{:?}", steps.lock());
        let seqs: Vec<Seq> = rt.block_on(async {
            let mut v = Vec::new();
            for f in futs {
                v.push(f.await.unwrap());
            }
            v
        });
        assert_eq!(seqs, [Seq(1), Seq(2), Seq(3)]);
        assert!(started.elapsed() >= within, "{:?}", started.elapsed());
        // All three in one write and one fdatasync.
        assert!(saw(&steps, "written", 3) && !saw(&steps, "written", 1));
        let b = w.stats().batch_records;
        assert_eq!((b.count, b.sum), (1, 3));

        // A record the caller waits on is flushed at once, and takes a waiting one with it.
        let waiting = {
            let _in = rt.enter();
            w.submit_within(rec(4), Duration::from_secs(30)).unwrap()
        };
        let t = std::time::Instant::now();
        let now = rt.block_on(async { w.submit(rec(5)).unwrap().await.unwrap() });
        assert_eq!(now, Seq(5));
        assert_eq!(rt.block_on(waiting).unwrap(), Seq(4));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let b = w.stats().batch_records;
        assert_eq!((b.count, b.sum), (2, 5));

        // Closing writes a record still waiting for company instead of waiting for its timer,
        // which may never fire (its runtime gone).
        let last = {
            let _in = rt.enter();
            w.submit_within(rec(6), Duration::from_secs(50)).unwrap()
        };
        drop(rt);
        let t = std::time::Instant::now();
        w.close().unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(last).unwrap(), Seq(6));
        drop(w);
        assert_eq!(read_all(d.path()).len(), 6);
    });
}

#[test]
fn an_awaited_record_is_flushed_by_its_awaiting_task_at_low_load_and_by_the_pool_otherwise() {
    with_timeout(60, || {
        let d = tempfile::tempdir().unwrap();
        let w = shared_wal(d.path());
        // The thread of each fdatasync, by the last seq of its write.
        let syncs: Arc<std::sync::Mutex<Vec<(u64, std::thread::ThreadId)>>> = Arc::default();
        let s = syncs.clone();
        let hook: super::writer::TestHook = Arc::new(move |step: &str, seq: u64| {
            if step == "sync" {
                s.lock().unwrap().push((seq, std::thread::current().id()));
            }
        });
        *w.hook.lock().unwrap() = Some(hook);
        let rt = two_workers();
        let synced_on = |seq: u64| {
            syncs
                .lock()
                .unwrap()
                .iter()
                .find(|(q, _)| *q == seq)
                .map(|(_, t)| *t)
        };

        // Low load: nothing is written until the caller awaits, and then on its thread; a
        // record another caller queues meanwhile goes out in the same write.
        let w1 = w.clone();
        let (seqs, task) = rt.block_on(async move {
            tokio::spawn(async move {
                let mine = w1.submit_awaited(rec(1)).unwrap();
                let other = w1.submit(rec(2)).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                assert_eq!(w1.head().0, Seq(0), "written before the await");
                let a = mine.await.unwrap();
                let task = std::thread::current().id();
                ((a, other.await.unwrap()), task)
            })
            .await
            .unwrap()
        });
        assert_eq!(seqs, (Seq(1), Seq(2)));
        assert_eq!(synced_on(2), Some(task));
        let b = w.stats().batch_records;
        assert_eq!((b.count, b.sum), (1, 2));

        // The last write held two records (not low load): the flush starts at once, on the pool.
        let w2 = w.clone();
        let (seq, task) = rt.block_on(async move {
            tokio::spawn(async move {
                let mine = w2.submit_awaited(rec(3)).unwrap();
                let t = std::time::Instant::now();
                while w2.head().0 < Seq(3) && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert_eq!(w2.head().0, Seq(3), "not written before the await");
                (mine.await.unwrap(), std::thread::current().id())
            })
            .await
            .unwrap()
        });
        assert_eq!(seq, Seq(3));
        assert!(synced_on(3).is_some_and(|t| t != task));

        // Low load again, but the future is dropped unpolled: its flush goes to the pool.
        let w3 = w.clone();
        rt.block_on(async move {
            tokio::spawn(async move { drop(w3.submit_awaited(rec(4)).unwrap()) })
                .await
                .unwrap()
        });
        let t = std::time::Instant::now();
        while w.head().0 < Seq(4) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(w.head().0, Seq(4));
        drop(rt);
        w.close().unwrap();
        drop(w);
        assert_eq!(read_all(d.path()).len(), 4);
    });
}
