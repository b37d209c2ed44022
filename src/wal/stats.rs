//! What the writer counts about itself (atomics, updated by the flush that already holds the
//! numbers), and [`WalStats`], their values at one moment ([`super::Wal::stats`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::stats::{BATCH_BOUNDS, Histogram, HistogramSnapshot};

/// The writer's live counts.
#[derive(Debug)]
pub(crate) struct Live {
    records: AtomicU64,
    bytes_written: AtomicU64,
    log_bytes: AtomicU64,
    segments: AtomicU64,
    write_errors: AtomicU64,
    failed: AtomicBool,
    batch_records: Histogram,
    fsync: Histogram,
    append: Histogram,
}

impl Live {
    /// Counts for a log that already holds `log_bytes` bytes in `segments` segments.
    pub(crate) fn new(log_bytes: u64, segments: u64) -> Live {
        Live {
            records: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            log_bytes: AtomicU64::new(log_bytes),
            segments: AtomicU64::new(segments),
            write_errors: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            batch_records: Histogram::new(BATCH_BOUNDS),
            fsync: Histogram::latency(),
            append: Histogram::latency(),
        }
    }

    /// One batch of `records` records, `bytes` bytes, is durable.
    pub(crate) fn batch(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.batch_records.observe(records);
    }

    /// A new segment of `header` bytes joined the log.
    pub(crate) fn segment(&self, header: u64) {
        self.segments.fetch_add(1, Ordering::Relaxed);
        self.log_bytes.fetch_add(header, Ordering::Relaxed);
    }

    /// One fdatasync of record bytes took `d`.
    pub(crate) fn fsync(&self, d: Duration) {
        self.fsync.observe_duration(d);
    }

    /// One append became durable `d` after it was called.
    pub(crate) fn append(&self, d: Duration) {
        self.append.observe_duration(d);
    }

    /// A flush failed; `latched` when the WAL now refuses everything until restart.
    pub(crate) fn write_error(&self, latched: bool) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        if latched {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> WalStats {
        WalStats {
            records: self.records.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            batch_records: self.batch_records.snapshot(),
            fsync_ns: self.fsync.snapshot(),
            append_ns: self.append.snapshot(),
        }
    }
}

/// The WAL's counts at one moment, since it was opened by this process (except `log_bytes` and
/// `segments`, which describe the whole log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStats {
    /// Records made durable.
    pub records: u64,
    /// Record bytes (frames) written.
    pub bytes_written: u64,
    /// The log's size in segment headers and records (preallocated space not counted).
    pub log_bytes: u64,
    /// Segment files in the log.
    pub segments: u64,
    /// Flushes that failed (a write, an fsync, or making the next segment).
    pub write_errors: u64,
    /// The WAL refuses every append until the runtime is restarted (a write or fsync of record
    /// bytes failed).
    pub failed: bool,
    /// Records per group-commit batch (one write and one fdatasync each).
    pub batch_records: HistogramSnapshot,
    /// fdatasync of record bytes, in nanoseconds (none in `SyncMode::None`).
    pub fsync_ns: HistogramSnapshot,
    /// Each successful append, from the call until its record was durable, in nanoseconds.
    pub append_ns: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::format::HEADER_LEN;
    use super::super::{NewRecord, RecordType, Wal, WalOptions};

    fn rec(n: usize) -> NewRecord {
        NewRecord::new(RecordType::Marker, None).with("pad", "x".repeat(n))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stats_count_what_the_writer_did() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 4096,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(tmp.path(), opts.clone()).unwrap();
        let wal = Arc::new(wal);
        let s = wal.stats();
        assert_eq!((s.records, s.segments, s.log_bytes), (0, 1, HEADER_LEN));
        // 3 blocking, 3 async, 1 submitted: 7 records of about 1 KiB, so a rotation or two.
        for _ in 0..3 {
            wal.append(rec(1000)).unwrap();
        }
        for _ in 0..3 {
            wal.append_async(rec(1000)).await.unwrap();
        }
        wal.submit(rec(1000)).unwrap().await.unwrap();
        let s = wal.stats();
        assert_eq!(s.records, 7);
        assert_eq!(s.append_ns.count, 7);
        assert_eq!(s.batch_records.sum, 7);
        assert_eq!(s.fsync_ns.count, s.batch_records.count);
        assert!(s.fsync_ns.sum > 0);
        let files = crate::wal::list_segments(tmp.path()).unwrap();
        assert!(files.len() >= 2, "{files:?}");
        assert_eq!(s.segments, files.len() as u64);
        assert!(!s.failed);
        wal.close().unwrap();
        drop(wal);

        // Reopened: the log's size and segments are what was written, headers included.
        let (wal, _) = Wal::open(tmp.path(), opts).unwrap();
        let again = wal.stats();
        assert_eq!(again.segments, s.segments);
        assert_eq!(again.log_bytes, s.log_bytes);
        assert_eq!(s.log_bytes, s.bytes_written + s.segments * HEADER_LEN);
        assert_eq!(again.records, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_counted_and_latched() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
        let wal = Arc::new(wal);
        wal.fail_next_write
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(wal.append_async(rec(10)).await.is_err());
        let s = wal.stats();
        assert_eq!((s.write_errors, s.failed, s.records), (1, true, 0));
        assert_eq!(s.append_ns.count, 0);
    }
}
