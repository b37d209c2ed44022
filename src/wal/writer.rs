//! The writer: directory lock, recovery on open, leader/follower group commit, rotation.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, Flock, FlockArg};

use super::durable::{create_dir_durable, cut_tail, fsync_dir, save_cut, trace, zero_fill};
use super::format::{
    FRAME_HEADER_LEN, HEADER_LEN, LOCK_FILE, MAX_BATCH_BYTES, MAX_PAYLOAD, build_payload,
    hash_payload, header_bytes, push_frame, segment_name,
};
use super::reader::Reader;
use super::stats::{Live, WalStats};
use super::{
    NewRecord, Preallocate, RecordType, Recovery, SyncMode, WalError, WalOptions, now_rfc3339,
};
use crate::types::Seq;

/// Room for the reserved fields in front of a body (seq, ts, type, prev and the punctuation).
const PREFIX_ROOM: usize = 256;

/// State shared by appenders (under `Wal::inner`).
struct Inner {
    /// The seq the next record gets.
    next_seq: u64,
    /// Hash of the last record given a seq.
    prev: String,
    /// Frames given a seq but not yet taken by a leader.
    buf: Vec<u8>,
    /// Seq of the first frame in `buf`.
    buf_first: u64,
    /// The last seq taken out of `buf` by a leader (written, or being written).
    taken: u64,
    /// Threads that lead a flush (take frames, write, fdatasync, publish): at most
    /// [`Wal::max_leaders`]. An appender whose records no leader has taken becomes one while
    /// there is room; a leader goes on until the queue is empty.
    leaders: usize,
    /// A leader is taking a batch and writing it (one at a time, so batches land in seq order).
    writing: bool,
    /// Bytes written (or being written) whose fdatasync has not been published yet. The next
    /// write may only start while these and its own stay within `MAX_BATCH_BYTES`, so at a
    /// power cut what is not known to be on disk still fits the torn-tail window.
    unsynced_bytes: u64,
    /// Writes handed to fdatasync so far (each gets the next number when it is written).
    issued: u64,
    /// When the last write was handed to fdatasync.
    issued_at: Instant,
    /// The write (its number in `issued`) for whose fdatasync a timer will start a second
    /// leader once it has run for `overlap_after`, if records still wait then; 0: none.
    overlap_armed: u64,
    /// A timer of [`Wal::submit_within`] will lead a flush of what is queued then.
    coalesce_armed: bool,
    /// Writes whose fdatasync has been published, in issue order (always `<= issued`).
    published: u64,
    /// Everything up to here is on disk (fdatasync'd in `SyncMode::Fsync`).
    durable_seq: u64,
    /// Hash of record `durable_seq`.
    durable_hash: String,
    /// Set after a failed write or fsync of record bytes: the WAL refuses all later appends.
    failed: Option<String>,
    /// Bumped each time a failure that wrote nothing drops the queued records; the seqs from
    /// `durable_seq + 1` on are then given out again.
    epoch: u64,
    /// Blocking appenders that queued in the current epoch and have not returned yet.
    blocking: usize,
    /// Drops that blocking appenders of the epoch they ended have still to read: a blocking
    /// appender learns here whether its record was durable before the drop. An entry goes when
    /// the last of them has read it, so there are never more than blocking appenders.
    discards: VecDeque<Discard>,
    /// The first failure of the current run of dropped writes, and how many there were; the next
    /// durable write clears it (and says so once in the log).
    failing: Option<(String, u64)>,
    closed: bool,
    /// Async appenders waiting for their record to be durable: (last seq, completion).
    waiters: Vec<(u64, Waiter)>,
    /// Records in the last batch written (a measure of concurrency).
    last_batch: usize,
    /// The largest batch written so far.
    max_batch: usize,
    /// Threads blocked on the condvar: notifying costs a futex syscall even with none, so
    /// the flush path notifies only when this is non-zero.
    sleepers: usize,
}

/// A drop of the queued records, kept for the blocking appenders of the epoch it ended.
struct Discard {
    /// The epoch it ended.
    epoch: u64,
    /// The first seq dropped: records before it were durable.
    first: u64,
    /// Why.
    why: String,
    /// Blocking appenders of that epoch that have not read it yet.
    readers: usize,
}

/// What an appender whose records are queued does about leading a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    /// Lead one now.
    Now,
    /// Leave them to the running leader.
    No,
    /// Start a second leader at this time if write `.0`'s fdatasync is still running then.
    At(u64, Instant),
}

/// Why an append did not become durable (what an async appender is told).
#[derive(Debug, Clone)]
enum Failure {
    /// A write or fsync of record bytes failed: the WAL refuses everything until restart.
    Latched(String),
    /// Nothing was written (the next segment could not be made): the record was dropped, and
    /// the next append tries again.
    Dropped(String),
}

impl Failure {
    fn into_error(self) -> WalError {
        match self {
            Failure::Latched(m) => WalError::Poisoned(m),
            Failure::Dropped(m) => WalError::Unavailable(m),
        }
    }
}

/// Completes one async append (`Ok` once durable, `Err` with the failure).
type Waiter = tokio::sync::oneshot::Sender<Result<(), Failure>>;

/// How a leader's write failed.
enum WriteError {
    /// No record byte was written (creating, opening or preparing the next segment failed).
    NothingWritten(WalError),
    /// Writing or syncing record bytes failed: what reached the disk is unknown.
    RecordBytes(WalError),
}

/// The open segment; only the leader that is writing touches it (a leader that is syncing
/// holds its own handle to the file).
struct SegIo {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    /// The last rotation failed, so the next write rotates whatever its size: it then goes to the
    /// same segment name (its first seq is the one given out again) and reuses any file the
    /// failed attempt left there, which therefore never ends up after records written elsewhere.
    rotate_pending: bool,
}

/// An open, exclusively owned WAL directory. `Send + Sync`: share it in an `Arc`.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    inner: Mutex<Inner>,
    cv: Condvar,
    io: Mutex<SegIo>,
    /// The next segment, made ready in the background (see [`Spare`]).
    spare: Arc<Mutex<Spare>>,
    /// What the writer counts about itself ([`Wal::stats`]); shared with the completion futures
    /// of [`Wal::submit`], which must not keep the log itself open.
    stats: Arc<Live>,
    _lock: Flock<File>,
    #[cfg(test)]
    pub(crate) fail_next_write: std::sync::atomic::AtomicBool,
    /// The next fdatasync of record bytes fails (after its bytes were written).
    #[cfg(test)]
    pub(crate) fail_next_sync: std::sync::atomic::AtomicBool,
    /// Called at each step of a flush with the step and the last seq of its write: `written`,
    /// `sync` (about to fdatasync; may block to hold the sync), `synced`, `durable` (under the
    /// lock: must not block); and `rotate` with the first seq of the next segment.
    #[cfg(test)]
    pub(crate) hook: Mutex<Option<TestHook>>,
}

/// See [`Wal::hook`].
#[cfg(test)]
pub(crate) type TestHook = Arc<dyn Fn(&str, u64) + Send + Sync>;

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> WalError {
    move |source| WalError::Io { context, source }
}

fn preallocate(file: &File, mode: Preallocate, len: u64) -> std::io::Result<()> {
    match mode {
        Preallocate::Off => Ok(()),
        Preallocate::ZeroFill => zero_fill(file, HEADER_LEN, len),
        Preallocate::Fallocate => {
            match nix::fcntl::fallocate(file, FallocateFlags::empty(), 0, len as i64) {
                Ok(()) => Ok(()),
                Err(Errno::EOPNOTSUPP) | Err(Errno::ENOSYS) => zero_fill(file, HEADER_LEN, len),
                Err(e) => Err(std::io::Error::from(e)),
            }
        }
    }
}

/// Creates segment `first_seq`: header, preallocation, fsync of the file and the directory.
///
/// A file already at that name is reused (truncated): it can only be what a failed attempt of
/// this writer left, as no record with seq `first_seq` is durable yet and the lock keeps other
/// writers out.
fn create_segment(dir: &Path, first_seq: u64, opts: &WalOptions) -> std::io::Result<SegIo> {
    let path = dir.join(segment_name(first_seq));
    let file = new_segment_file(&path, opts, false)?;
    fsync_dir(dir)?;
    Ok(SegIo {
        file: Arc::new(file),
        path,
        offset: HEADER_LEN,
        rotate_pending: false,
    })
}

/// A file at `path` with the segment header and preallocated space, fsync'd. `fresh`: fail if
/// the name exists; otherwise an existing file there is truncated and reused.
fn new_segment_file(path: &Path, opts: &WalOptions, fresh: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(fresh)
        .create(!fresh)
        .truncate(!fresh)
        .open(path)?;
    trace(|| format!("create {}", path.display()));
    file.write_all_at(&header_bytes(), 0)?;
    // Preallocation only makes fdatasync cheaper; when it cannot be had (a full disk, a
    // file-size limit) the segment still works, and a write that really cannot fit fails
    // later on its own, closed.
    if opts.segment_bytes > HEADER_LEN
        && let Err(e) = preallocate(&file, opts.preallocate, opts.segment_bytes)
    {
        tracing::warn!(
            "cannot preallocate {}: {e}; continuing without",
            path.display()
        );
        file.set_len(HEADER_LEN)?;
    }
    file.sync_all()?;
    Ok(file)
}

/// Suffix of a spare segment's file name (never read as a segment; removed on open).
const SPARE_SUFFIX: &str = ".spare";

/// The next segment, prepared off the append path: zero-filling 64 MiB takes tens of
/// milliseconds, which would otherwise stall every appender at each rotation.
#[derive(Default)]
struct Spare {
    /// A complete spare (header, preallocated, fsync'd), ready to be renamed into place.
    ready: Option<(File, PathBuf)>,
    /// A thread is preparing one.
    preparing: bool,
    /// Spares made so far (names them uniquely).
    made: u64,
}

/// Removes spare segments left by an earlier process (possibly half-written).
fn remove_stale_spares(dir: &Path) -> std::io::Result<()> {
    for ent in std::fs::read_dir(dir)? {
        let p = ent?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(SPARE_SUFFIX))
        {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// The answer of a queued async append: its seq once the flush that covered it succeeded, the
/// time since it was `called` counted in `stats` then.
async fn completion(
    mine: u64,
    rx: tokio::sync::oneshot::Receiver<Result<(), Failure>>,
    stats: &Live,
    called: Instant,
) -> Result<Seq, WalError> {
    match rx.await {
        Ok(Ok(())) => {
            stats.append(called.elapsed());
            Ok(Seq(mine))
        }
        Ok(Err(f)) => Err(f.into_error()),
        Err(_) => Err(WalError::Poisoned(
            "the WAL flush ended without an answer".into(),
        )),
    }
}

/// Takes the writer's lock on `dir` (which must exist), for the life of the returned handle:
/// anything that changes the files of a WAL holds it.
pub(crate) fn take_lock(dir: &Path) -> Result<Flock<File>, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("cannot open lock file {}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let pid = format!("{}\n", std::process::id());
            lock.set_len(0)
                .and_then(|_| lock.write_all_at(pid.as_bytes(), 0))
                .map_err(io_err(format!("cannot write {}", path.display())))?;
            Ok(lock)
        }
        Err((file, Errno::EWOULDBLOCK)) => {
            let mut s = String::new();
            let mut b = [0u8; 32];
            if let Ok(n) = file.read_at(&mut b, 0) {
                s = String::from_utf8_lossy(&b[..n]).trim().to_string();
            }
            let who = if s.is_empty() {
                "another process".to_string()
            } else {
                format!("another process (pid {s})")
            };
            Err(WalError::Locked(format!(
                "the WAL directory {} is in use by {who} holding {}; stop that process first, or use another WAL directory",
                dir.display(),
                path.display()
            )))
        }
        Err((_, e)) => Err(WalError::Io {
            context: format!("cannot lock {}", path.display()),
            source: std::io::Error::from(e),
        }),
    }
}

fn check_options(opts: &WalOptions) -> Result<(), WalError> {
    if opts.segment_bytes < HEADER_LEN + 64 {
        return Err(WalError::Invalid(format!(
            "segment size {} is too small (at least {} bytes)",
            opts.segment_bytes,
            HEADER_LEN + 64
        )));
    }
    Ok(())
}

/// The last component of `p`, for messages.
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`: takes the lock, checks every record, cuts a
    /// torn tail back (reporting it, saving the cut bytes beside the segment, and recording a
    /// `wal.recovered` runtime record), and refuses to open a damaged log.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovery), WalError> {
        check_options(&opts)?;
        create_dir_durable(dir).map_err(io_err(format!(
            "cannot create WAL directory {}",
            dir.display()
        )))?;
        let lock = take_lock(dir)?;
        Self::open_locked(dir, opts, lock)
    }

    /// [`Wal::open`] with the lock already held.
    pub(crate) fn open_locked(
        dir: &Path,
        opts: WalOptions,
        lock: Flock<File>,
    ) -> Result<(Wal, Recovery), WalError> {
        check_options(&opts)?;
        remove_stale_spares(dir).map_err(io_err(format!(
            "cannot remove old spare segments in {}",
            dir.display()
        )))?;

        let mut r = Reader::open_allow_empty(dir).map_err(WalError::Damaged)?;
        while r.next_record().map_err(WalError::Damaged)?.is_some() {}
        let records = r.records();
        let next_seq = r.head_seq() + 1;
        let prev = r.head_hash().to_string();

        let mut trimmed = None;
        if let Some(t) = r.torn_tail().cloned() {
            let name = file_name(&t.segment);
            let mut saved = None;
            if t.in_header {
                std::fs::remove_file(&t.segment)
                    .and_then(|_| fsync_dir(dir))
                    .map_err(io_err(format!("cannot remove {}", t.segment.display())))?;
            } else {
                let end = t.offset + t.bytes;
                // The rule says these bytes were never acknowledged; they are kept anyway, as
                // evidence in case the damage was something else. Not being able to keep them
                // (a full disk) must not keep the runtime from starting.
                saved = match save_cut(&t.segment, t.offset, end) {
                    Ok(p) => Some(file_name(&p)),
                    Err(e) => {
                        tracing::warn!(
                            "cannot save the torn tail of {} before cutting it: {e}",
                            t.segment.display()
                        );
                        None
                    }
                };
                cut_tail(&t.segment, t.offset, end).map_err(io_err(format!(
                    "cannot cut the torn tail of {}",
                    t.segment.display()
                )))?;
            }
            let saved_note = saved
                .as_ref()
                .map(|s| format!("; saved them as {s}"))
                .unwrap_or_default();
            trimmed = Some((
                format!(
                    "cut {} bytes of torn tail at segment {name} offset {} (after seq {}{}){saved_note}",
                    t.bytes,
                    t.offset,
                    t.after_seq,
                    t.frames_note()
                ),
                t,
                name,
                saved,
            ));
        }

        let stats = Arc::new(Live::new(r.bytes(), r.segments()));
        let seg = match r.position() {
            Some((path, _, offset)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(format!("cannot open {}", path.display())))?;
                SegIo {
                    file: Arc::new(file),
                    path,
                    offset,
                    rotate_pending: false,
                }
            }
            None => {
                let seg = create_segment(dir, next_seq, &opts).map_err(io_err(format!(
                    "cannot create segment {} in {}",
                    segment_name(next_seq),
                    dir.display()
                )))?;
                stats.segment(HEADER_LEN);
                seg
            }
        };
        drop(r);

        let wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            inner: Mutex::new(Inner {
                next_seq,
                prev: prev.clone(),
                buf: Vec::new(),
                buf_first: next_seq,
                taken: next_seq - 1,
                leaders: 0,
                writing: false,
                unsynced_bytes: 0,
                issued: 0,
                issued_at: Instant::now(),
                overlap_armed: 0,
                coalesce_armed: false,
                published: 0,
                durable_seq: next_seq - 1,
                durable_hash: prev,
                failed: None,
                epoch: 0,
                blocking: 0,
                discards: VecDeque::new(),
                failing: None,
                closed: false,
                waiters: Vec::new(),
                last_batch: 0,
                max_batch: 0,
                sleepers: 0,
            }),
            cv: Condvar::new(),
            io: Mutex::new(seg),
            spare: Arc::new(Mutex::new(Spare::default())),
            stats,
            _lock: lock,
            #[cfg(test)]
            fail_next_write: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            hook: Mutex::new(None),
        };
        if let Ok(io) = wal.io.lock()
            && io.offset > wal.opts.segment_bytes / 2
        {
            wal.prepare_spare();
        }
        let mut recovery = Recovery {
            records,
            trimmed: None,
        };
        if let Some((msg, t, segment, saved)) = trimmed {
            let rec = crate::record::WalRecovered {
                event: crate::record::Recovered,
                offset: t.offset,
                saved_as: saved.map(std::borrow::Cow::Owned),
                segment: std::borrow::Cow::Owned(segment),
                trimmed_bytes: t.bytes,
                whole_frames: t.whole_frames,
            };
            wal.append(NewRecord::encoded(None, &rec)?)?;
            recovery.trimmed = Some(msg);
        }
        Ok((wal, recovery))
    }

    /// What this writer has done since it opened the log (records, bytes, batches, fsync and
    /// append latencies, failures) and the log's size: atomics read without taking a lock.
    pub fn stats(&self) -> WalStats {
        self.stats.snapshot()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last durable record: its seq (0 when empty) and hash (genesis when empty).
    pub fn head(&self) -> (Seq, String) {
        match self.inner.lock() {
            Ok(g) => (Seq(g.durable_seq), g.durable_hash.clone()),
            Err(p) => {
                let g = p.into_inner();
                (Seq(g.durable_seq), g.durable_hash.clone())
            }
        }
    }

    fn lock_inner(&self) -> Result<MutexGuard<'_, Inner>, WalError> {
        self.inner
            .lock()
            .map_err(|_| WalError::Poisoned("a thread panicked while appending".into()))
    }

    /// Blocks on the condvar until a flush step or a failure notifies.
    fn sleep<'a>(&self, g: MutexGuard<'a, Inner>) -> Result<MutexGuard<'a, Inner>, WalError> {
        self.sleep_for(g, None)
    }

    /// [`Wal::sleep`], but no later than `until`.
    fn sleep_until<'a>(
        &self,
        g: MutexGuard<'a, Inner>,
        until: Instant,
    ) -> Result<MutexGuard<'a, Inner>, WalError> {
        self.sleep_for(g, Some(until))
    }

    /// Both sleeps, counted in `sleepers` so that the flush path notifies only when someone
    /// waits.
    fn sleep_for<'a>(
        &self,
        mut g: MutexGuard<'a, Inner>,
        until: Option<Instant>,
    ) -> Result<MutexGuard<'a, Inner>, WalError> {
        g.sleepers += 1;
        let woken = match until {
            None => self.cv.wait(g),
            Some(t) => self
                .cv
                .wait_timeout(g, t.saturating_duration_since(Instant::now()))
                .map(|(g, _)| g)
                .map_err(|p| std::sync::PoisonError::new(p.into_inner().0)),
        };
        let mut g =
            woken.map_err(|_| WalError::Poisoned("a thread panicked while appending".into()))?;
        g.sleepers -= 1;
        Ok(g)
    }

    /// A leader free to write while the last write's fdatasync still runs: until when it waits
    /// for that fdatasync instead (`None`: write now). A fast fdatasync is waited for, so what
    /// queues meanwhile goes out in one batch and one fdatasync instead of two; only one that
    /// has run for `overlap_after` (a slow disk) gets the next write beside it.
    fn overlap_wait(&self, g: &Inner) -> Option<Instant> {
        if g.published == g.issued {
            return None;
        }
        let until = g.issued_at + self.opts.overlap_after;
        (Instant::now() < until).then_some(until)
    }

    /// Whether an appender whose records are queued and not taken should lead a flush now
    /// ([`Lead::Now`]), leave them to the running leader ([`Lead::No`]), or start a second leader
    /// beside it if its fdatasync is still running at the time given ([`Lead::At`]). A leader
    /// takes everything queued when it goes on, so a second one only pays off beside a slow
    /// fdatasync; starting it at once would cost a thread wake-up per batch and halve the
    /// batches (see `overlap_after`).
    fn may_lead(&self, g: &Inner) -> Lead {
        if g.leaders == 0 {
            return Lead::Now;
        }
        if g.leaders >= self.max_leaders() {
            return Lead::No;
        }
        if self.opts.sync == SyncMode::None {
            // No fdatasync to wait for: a second leader writes (to the page cache) as soon as
            // the first has.
            return Lead::Now;
        }
        if g.published == g.issued {
            // The one leading is writing, and will take these next.
            return Lead::No;
        }
        match self.overlap_wait(g) {
            None => Lead::Now,
            Some(until) => Lead::At(g.issued, until),
        }
    }

    /// [`Wal::may_lead`] for an async appender: counts it in `leaders` when it leads now, and
    /// asks for one timer per slow-fdatasync candidate (the first appender to queue behind it).
    fn lead(&self, g: &mut Inner) -> Lead {
        match self.may_lead(g) {
            Lead::Now => {
                g.leaders += 1;
                Lead::Now
            }
            Lead::At(ticket, until) if g.overlap_armed != ticket => {
                g.overlap_armed = ticket;
                Lead::At(ticket, until)
            }
            _ => Lead::No,
        }
    }

    /// Outside the lock, what [`Wal::lead`] decided: `true` when the caller leads now; for
    /// [`Lead::At`], sets the timer.
    fn act(self: &Arc<Self>, l: Lead) -> bool {
        match l {
            Lead::Now => true,
            Lead::At(ticket, until) => {
                self.overlap_timer(ticket, until);
                false
            }
            Lead::No => false,
        }
    }

    /// At `until`: if write `ticket`'s fdatasync is still running and records wait that no
    /// leader has taken, starts a second leader to write them beside it.
    fn overlap_timer(self: &Arc<Self>, ticket: u64, until: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.at(&rt, until, move |wal, g| {
            let go = g.published < ticket
                && !g.buf.is_empty()
                && g.failed.is_none()
                && g.leaders < wal.max_leaders();
            if go {
                g.leaders += 1;
                Lead::Now
            } else {
                Lead::No
            }
        });
    }

    /// A timer on `rt`: at `until`, `decide` (under the lock) whether a flush of what is queued
    /// then starts, and it is acted on as [`Wal::act`] does.
    fn at(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        until: Instant,
        decide: impl FnOnce(&Wal, &mut Inner) -> Lead + Send + 'static,
    ) {
        let wal = self.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            let start = match wal.lock_inner() {
                Ok(mut g) => decide(&wal, &mut g),
                Err(_) => Lead::No,
            };
            if wal.act(start) {
                Wal::flush_on_pool(wal);
            }
        });
    }

    /// Wakes the sleepers, if any (the caller holds the lock, so none can be between its
    /// check and its wait).
    fn wake(&self, g: &Inner) {
        if g.sleepers > 0 {
            self.cv.notify_all();
        }
    }

    /// Appends one record; returns its seq once it is durable.
    pub fn append(&self, rec: NewRecord) -> Result<Seq, WalError> {
        self.append_batch(vec![rec])
    }

    /// Appends records in order (contiguous seqs); returns the last seq once all are durable.
    ///
    /// Blocks the calling thread (leader/follower group commit): use [`Wal::append_async`] from
    /// async code.
    pub fn append_batch(&self, recs: Vec<NewRecord>) -> Result<Seq, WalError> {
        let start = Instant::now();
        let any = !recs.is_empty();
        let res = self.append_blocking(recs);
        if any && res.is_ok() {
            self.stats.append(start.elapsed());
        }
        res
    }

    /// [`Wal::append_batch`], untimed.
    fn append_blocking(&self, recs: Vec<NewRecord>) -> Result<Seq, WalError> {
        let prepared = prepare(recs)?;
        let mut g = self.lock_inner()?;
        let mine = enqueue(&mut g, &prepared)?;
        if prepared.is_empty() {
            return Ok(Seq(mine));
        }
        let epoch = g.epoch;
        g.blocking += 1;
        loop {
            if g.epoch != epoch {
                return leave(&mut g, epoch, mine, Ok(Seq(mine)));
            }
            if g.durable_seq >= mine {
                return leave(&mut g, epoch, mine, Ok(Seq(mine)));
            }
            if let Some(f) = &g.failed {
                let e = Err(WalError::Poisoned(f.clone()));
                return leave(&mut g, epoch, mine, e);
            }
            if g.taken >= mine {
                // A leader has this caller's records.
                g = self.sleep(g)?;
                continue;
            }
            match self.may_lead(&g) {
                Lead::Now => {}
                // A leader will take them when it goes on; or, if its fdatasync turns out
                // slow, this caller writes them beside it.
                Lead::At(_, until) => {
                    g = self.sleep_until(g, until)?;
                    continue;
                }
                Lead::No => {
                    g = self.sleep(g)?;
                    continue;
                }
            }
            // Become a leader: write and sync everything queued, for all. How it went for this
            // caller's records is read from the state, like a follower does.
            g = self.lead_here(g)?;
        }
    }

    /// Leads a flush on this thread of everything queued (the caller found room for a
    /// leader), completes the async appenders of it, and takes the lock again.
    fn lead_here<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
    ) -> Result<MutexGuard<'a, Inner>, WalError> {
        g.leaders += 1;
        drop(g);
        if let Ok(done) = self.flush() {
            complete(done);
        }
        self.lock_inner()
    }

    /// How many leaders may flush at once: two when syncs overlap (one writing or syncing while
    /// the other's fdatasync runs), else one.
    fn max_leaders(&self) -> usize {
        if self.opts.overlap_syncs { 2 } else { 1 }
    }

    /// Whether the flush a caller is about to lead may run on its own (async) thread: low load,
    /// where no flush runs, the last batch was a single record and the caller's is the only one
    /// waiting. It then saves two thread hand-offs (to a pool thread and back) on the path of
    /// the answer, and blocking the thread for one fdatasync delays nobody. Never on a runtime
    /// with one worker: blocking it for the fdatasync would stop every other task meanwhile, so
    /// each batch would again hold one record (measured: 5.7K instead of 48K req/s at 64
    /// connections).
    fn low_load(&self, g: &Inner) -> bool {
        g.leaders == 0
            && g.last_batch <= 1
            && g.waiters.len() == 1
            && tokio::runtime::Handle::try_current().is_ok_and(|rt| rt.metrics().num_workers() > 1)
    }

    /// Encodes `rec` (outside the lock) and queues it with its completion `tx`: its seq, and the
    /// lock still held for the caller's decision about leading.
    fn queue_waiter(
        &self,
        rec: NewRecord,
        tx: Waiter,
    ) -> Result<(u64, MutexGuard<'_, Inner>), WalError> {
        let prepared = prepare(vec![rec])?;
        let mut g = self.lock_inner()?;
        let mine = enqueue(&mut g, &prepared)?;
        g.waiters.push((mine, tx));
        Ok((mine, g))
    }

    /// Appends one record from async code; resolves with its seq once it is durable.
    ///
    /// Group commit without a thread per caller: the record is queued under a short lock, and
    /// the caller awaits a completion. When there is room for another leader (none runs, or
    /// with overlapping syncs one whose fdatasync is running), this caller starts one on
    /// tokio's blocking pool, which writes and fdatasyncs everything queued, completes those
    /// appenders, and repeats while more is queued (so one flush covers every append that
    /// arrived meanwhile). In `SyncMode::None` the write (page cache only)
    /// is done inline instead. Must be called inside a tokio runtime.
    pub async fn append_async(self: &Arc<Self>, rec: NewRecord) -> Result<Seq, WalError> {
        let called = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (mine, start, inline) = {
            let (mine, mut g) = self.queue_waiter(rec, tx)?;
            let inline = self.low_load(&g);
            let start = self.lead(&mut g);
            (mine, start, inline)
        };
        if self.act(start) {
            if self.opts.sync == SyncMode::None || inline {
                // Write (and in `SyncMode::Fsync` fdatasync) on this thread. In `None` that is a
                // pwrite into the page cache; in `Fsync` it is done only at low load.
                self.lead_inline();
            } else {
                self.spawn_flush();
            }
        }
        completion(mine, rx, &self.stats, called).await
    }

    /// Queues one record and returns at once, before any disk work, with a future that resolves
    /// (with its seq) once the record is durable. The record's place in the log is fixed when
    /// this returns, so records submitted one after another land in that order; awaiting the
    /// futures in that order gives their durability in order too.
    ///
    /// The flush always runs on tokio's blocking pool (never on the caller's thread, unlike
    /// [`Wal::append_async`] at low load): a caller that acts before its record is durable must
    /// not wait on the disk here either. Must be called inside a tokio runtime.
    pub fn submit(
        self: &Arc<Self>,
        rec: NewRecord,
    ) -> Result<impl std::future::Future<Output = Result<Seq, WalError>> + Send + 'static, WalError>
    {
        self.submit_within(rec, std::time::Duration::ZERO)
    }

    /// [`Wal::submit`] for a record the caller does not wait on before acting: when no flush
    /// is running, the record is written and fdatasync'd up to `within` later instead of at
    /// once, together with whatever else queues meanwhile (sooner if another append starts a
    /// flush first). One timer serves every record queued while it is armed. At a steady rate
    /// that puts several records in one fdatasync where each would have had its own, saving
    /// the disk a flush and the process the thread wake-ups of a flush per record.
    /// `Duration::ZERO` is [`Wal::submit`].
    pub fn submit_within(
        self: &Arc<Self>,
        rec: NewRecord,
        within: std::time::Duration,
    ) -> Result<impl std::future::Future<Output = Result<Seq, WalError>> + Send + 'static, WalError>
    {
        let called = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Only a record that may wait needs the runtime for its timer.
        let rt = (!within.is_zero())
            .then(tokio::runtime::Handle::try_current)
            .and_then(Result::ok);
        let (mine, start, timer) = {
            let (mine, mut g) = self.queue_waiter(rec, tx)?;
            match (&rt, self.may_lead(&g)) {
                (Some(_), Lead::Now) => {
                    let arm = !g.coalesce_armed;
                    g.coalesce_armed = true;
                    (mine, Lead::No, arm)
                }
                _ => (mine, self.lead(&mut g), false),
            }
        };
        if self.act(start) {
            self.spawn_flush();
        }
        if let (true, Some(rt)) = (timer, rt) {
            self.at(&rt, called + within, |wal, g| {
                g.coalesce_armed = false;
                if g.buf.is_empty() || g.failed.is_some() {
                    Lead::No
                } else {
                    wal.lead(g)
                }
            });
        }
        let stats = self.stats.clone();
        Ok(async move { completion(mine, rx, &stats, called).await })
    }

    /// Leads one flush step on the caller's thread (the caller has counted it in `leaders`)
    /// and completes its appenders; whatever queued meanwhile goes to the pool.
    fn lead_inline(self: &Arc<Self>) {
        if let Ok((more, done)) = self.flush_step() {
            complete(done);
            if more {
                self.spawn_flush();
            }
        }
    }

    /// [`Wal::submit`] for a caller that awaits the returned future at once, on the task that
    /// will act on the record: at low load ([`Wal::low_load`]) the flush is not started on the
    /// pool but led inside the future's first poll, on the caller's thread, as
    /// [`Wal::append_async`] does; the thread hand-offs to a pool thread and back are then
    /// off the path to the action. Until that poll the caller counts as a running leader,
    /// so records that others queue meanwhile go out in the same write. A future dropped before
    /// it is polled hands its flush to the pool. Otherwise it is [`Wal::submit`].
    pub fn submit_awaited(
        self: &Arc<Self>,
        rec: NewRecord,
    ) -> Result<impl std::future::Future<Output = Result<Seq, WalError>> + Send + 'static, WalError>
    {
        let called = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (mine, start, reserved) = {
            let (mine, mut g) = self.queue_waiter(rec, tx)?;
            if self.opts.sync == SyncMode::Fsync && self.low_load(&g) {
                g.leaders += 1;
                (mine, Lead::No, true)
            } else {
                (mine, self.lead(&mut g), false)
            }
        };
        if self.act(start) {
            self.spawn_flush();
        }
        let mut leader = Reserved(reserved.then(|| self.clone()));
        let stats = self.stats.clone();
        Ok(async move {
            if let Some(wal) = leader.0.take() {
                wal.lead_inline();
            }
            completion(mine, rx, &stats, called).await
        })
    }

    /// Leads a flush on tokio's blocking pool (the caller has counted it in `leaders`).
    fn spawn_flush(self: &Arc<Self>) {
        Wal::flush_on_pool(self.clone());
    }

    /// [`Wal::spawn_flush`] with the caller's own handle, so that a timer's handle is gone
    /// before the appenders it flushes for hear back.
    fn flush_on_pool(wal: Arc<Wal>) {
        drop(tokio::task::spawn_blocking(move || {
            let done = wal.flush();
            // The log is let go before the last appenders hear back, so one that then closes
            // and drops its handle really closes it (and frees the directory lock).
            drop(wal);
            if let Ok(done) = done {
                complete(done);
            }
        }));
    }

    /// The caller has counted itself in `leaders`: flushes batches until the queue is empty,
    /// when it no longer leads, and returns the async appenders of the last batch for the
    /// caller to complete. A failed write or fsync of record bytes poisons the WAL; a failure
    /// that wrote nothing drops what was queued.
    fn flush(&self) -> Result<Vec<(u64, Waiter)>, WalError> {
        loop {
            let (more, done) = self.flush_step()?;
            if !more {
                return Ok(done);
            }
            complete(done);
        }
    }

    /// The caller leads (is counted in `leaders`): waits for its turn to write, takes one batch
    /// (everything queued, within the bound), writes it, fdatasyncs it (while the other leader's
    /// fdatasync may still run) and publishes it once every earlier write is published, then
    /// wakes its blocking appenders. Returns its async appenders for the caller to complete,
    /// and `true` when more was queued meanwhile (it still leads: the caller must go on),
    /// `false` when it no longer leads (the queue was empty, or the WAL failed).
    fn flush_step(&self) -> Result<(bool, Vec<(u64, Waiter)>), WalError> {
        let mut g = self.lock_inner()?;
        // One writer at a time, so batches land in seq order; and the bytes not yet published
        // stay within the torn-tail bound.
        loop {
            if g.buf.is_empty() || g.failed.is_some() {
                g.leaders -= 1;
                self.wake(&g);
                return Ok((false, Vec::new()));
            }
            if !g.writing && next_fits(&g) {
                match self.overlap_wait(&g) {
                    None => break,
                    Some(until) => {
                        g = self.sleep_until(g, until)?;
                        continue;
                    }
                }
            }
            g = self.sleep(g)?;
        }
        let limit = MAX_BATCH_BYTES - g.unsynced_bytes;
        let batch = take_batch(&mut g, limit);
        let len = batch.bytes.len() as u64;
        g.taken = batch.last;
        g.writing = true;
        g.unsynced_bytes += len;
        drop(g);
        let written = self.write_out(&batch.bytes, batch.first);
        let mut g = self.lock_inner()?;
        g.writing = false;
        let (file, path) = match written {
            Ok(w) => w,
            Err(e) => {
                g.unsynced_bytes -= len;
                return self.fail(g, &batch, e);
            }
        };
        g.issued += 1;
        g.issued_at = Instant::now();
        let ticket = g.issued;
        // A blocking appender (or a second leader) may write the next batch now, or time its
        // wait for this fdatasync.
        self.wake(&g);
        drop(g);
        self.hook("written", batch.last);
        let synced = self.sync(&file, &path, batch.last);
        let mut g = self.lock_inner()?;
        if let Err(e) = synced {
            return self.fail(g, &batch, WriteError::RecordBytes(e));
        }
        // Publish in issue order: an earlier write's fdatasync may still be running, and only
        // its success says its records are on disk (an fdatasync reports a writeback error to
        // one caller only, so this one's success does not prove the earlier write's).
        while g.failed.is_none() && g.published + 1 != ticket {
            g = self.sleep(g)?;
        }
        if let Some(f) = &g.failed {
            // An earlier write failed: this one's records are not reported durable either.
            let e = WalError::Poisoned(f.clone());
            g.leaders -= 1;
            self.wake(&g);
            return Err(e);
        }
        g.published = ticket;
        g.unsynced_bytes -= len;
        g.durable_seq = batch.last;
        g.durable_hash = batch.last_hash;
        self.hook("durable", batch.last);
        g.last_batch = (batch.last + 1 - batch.first) as usize;
        g.max_batch = g.max_batch.max(g.last_batch);
        let recovered = g.failing.take();
        let done = take_done(&mut g.waiters, batch.last);
        let more = !g.buf.is_empty();
        if !more {
            g.leaders -= 1;
        }
        self.wake(&g);
        drop(g);
        self.stats
            .batch(batch.last + 1 - batch.first, batch.bytes.len() as u64);
        if let Some((first, n)) = recovered {
            tracing::warn!(
                "WAL writes again: appends are durable again after {n} failed attempt(s) that wrote nothing (the first: {first})"
            );
        }
        Ok((more, done))
    }

    /// A leader's write of `batch` failed: drops the queue (nothing written) or poisons the WAL
    /// (record bytes), tells every waiting appender, and stops leading.
    fn fail(
        &self,
        mut g: MutexGuard<'_, Inner>,
        batch: &Batch,
        err: WriteError,
    ) -> Result<(bool, Vec<(u64, Waiter)>), WalError> {
        g.leaders -= 1;
        match err {
            WriteError::NothingWritten(e) => {
                let msg = e.to_string();
                // No byte of this batch reached the file, and every earlier write was published
                // before the rotation was tried. Its records, and any queued since (they are
                // chained on them), are dropped and their seqs given out again, so the log on
                // disk stays contiguous; every appender among them is told it failed.
                debug_assert_eq!(batch.first, g.durable_seq + 1);
                g.buf.clear();
                g.next_seq = batch.first;
                g.buf_first = batch.first;
                g.taken = batch.first - 1;
                g.prev = g.durable_hash.clone();
                if g.blocking > 0 {
                    let d = Discard {
                        epoch: g.epoch,
                        first: batch.first,
                        why: msg.clone(),
                        readers: std::mem::take(&mut g.blocking),
                    };
                    g.discards.push_back(d);
                }
                g.epoch += 1;
                let first_failure = match &mut g.failing {
                    Some((_, n)) => {
                        *n += 1;
                        false
                    }
                    None => {
                        g.failing = Some((msg.clone(), 1));
                        true
                    }
                };
                let all = std::mem::take(&mut g.waiters);
                self.wake(&g);
                drop(g);
                self.stats.write_error(false);
                for (_, w) in all {
                    let _ = w.send(Err(Failure::Dropped(msg.clone())));
                }
                if first_failure {
                    tracing::error!(
                        "WAL cannot write: {msg}; nothing was written, and appends fail until one succeeds again"
                    );
                }
                Err(WalError::Unavailable(msg))
            }
            WriteError::RecordBytes(e) => {
                let msg = e.to_string();
                // The first failure latches; a later one (the other leader's) adds nothing.
                let first = g.failed.is_none();
                if first {
                    g.failed = Some(msg.clone());
                }
                let all = std::mem::take(&mut g.waiters);
                self.wake(&g);
                drop(g);
                if first {
                    self.stats.write_error(true);
                    tracing::error!(
                        "WAL failed: {msg}; every append is refused until the runtime is restarted"
                    );
                }
                for (_, w) in all {
                    let _ = w.send(Err(Failure::Latched(msg.clone())));
                }
                Err(e)
            }
        }
    }

    /// Calls the test hook, if one is set (see [`Wal::hook`]); nothing outside tests.
    #[inline]
    fn hook(&self, _step: &str, _last: u64) {
        #[cfg(test)]
        {
            let h = self.hook.lock().ok().and_then(|h| h.clone());
            if let Some(f) = h {
                f(_step, _last);
            }
        }
    }

    /// A leader's fdatasync of the write that ends with seq `last` (nothing in
    /// `SyncMode::None`). Runs outside every lock: the next write may go on meanwhile.
    fn sync(&self, file: &File, path: &Path, last: u64) -> Result<(), WalError> {
        if self.opts.sync != SyncMode::Fsync {
            return Ok(());
        }
        self.hook("sync", last);
        let failed = |source| WalError::Io {
            context: format!("WAL fdatasync of {} failed", path.display()),
            source,
        };
        #[cfg(test)]
        if self
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(failed(std::io::Error::other("injected fault")));
        }
        let t = Instant::now();
        file.sync_data().map_err(failed)?;
        self.stats.fsync(t.elapsed());
        self.hook("synced", last);
        Ok(())
    }

    /// Leader only, while writing: waits until every earlier write's fdatasync is published.
    fn wait_published(&self) -> Result<(), WalError> {
        let mut g = self.lock_inner()?;
        while g.failed.is_none() && g.published != g.issued {
            g = self.sleep(g)?;
        }
        match &g.failed {
            Some(f) => Err(WalError::Poisoned(f.clone())),
            None => Ok(()),
        }
    }

    /// Leader only, while writing: rotates if needed, writes the frames, and returns the
    /// segment's file (and path) for the fdatasync.
    fn write_out(&self, buf: &[u8], first_seq: u64) -> Result<(Arc<File>, PathBuf), WriteError> {
        let written = |ctx: String| {
            move |source| {
                WriteError::RecordBytes(WalError::Io {
                    context: ctx,
                    source,
                })
            }
        };
        let mut io = self.io.lock().map_err(|_| {
            WriteError::RecordBytes(WalError::Poisoned("a thread panicked while writing".into()))
        })?;
        #[cfg(test)]
        if self
            .fail_next_write
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(WriteError::RecordBytes(WalError::Io {
                context: format!("WAL write to {} failed", io.path.display()),
                source: std::io::Error::other("injected fault"),
            }));
        }
        if io.rotate_pending
            || (io.offset > HEADER_LEN && io.offset + buf.len() as u64 > self.opts.segment_bytes)
        {
            // The old segment is complete on disk before a record goes into the next one: the
            // other leader's fdatasync of it, if one runs, is waited for (a failure of it is a
            // failure of this write too). Only the writing leader uses `io`, so holding it here
            // blocks nobody else.
            self.wait_published().map_err(WriteError::RecordBytes)?;
            self.hook("rotate", first_seq);
            if self.opts.sync == SyncMode::None {
                // Leave the old segment complete on disk before the chain moves on.
                let t = Instant::now();
                io.file.sync_data().map_err(written(format!(
                    "WAL fsync of {} failed",
                    io.path.display()
                )))?;
                self.stats.fsync(t.elapsed());
            }
            match self.next_segment(first_seq) {
                Ok(seg) => {
                    *io = seg;
                    self.stats.segment(HEADER_LEN);
                }
                Err(source) => {
                    io.rotate_pending = true;
                    return Err(WriteError::NothingWritten(WalError::Io {
                        context: format!(
                            "cannot create segment {} in {}",
                            segment_name(first_seq),
                            self.dir.display()
                        ),
                        source,
                    }));
                }
            }
        }
        let off = io.offset;
        trace(|| format!("write {}", io.path.display()));
        io.file.write_all_at(buf, off).map_err(written(format!(
            "WAL write to {} failed",
            io.path.display()
        )))?;
        io.offset += buf.len() as u64;
        // Half way through a segment, the next one starts being prepared.
        let half = self.opts.segment_bytes / 2;
        if off <= half && io.offset > half {
            self.prepare_spare();
        }
        Ok((io.file.clone(), io.path.clone()))
    }

    /// Starts preparing a spare segment in the background unless one is ready or on its way.
    fn prepare_spare(&self) {
        if self.opts.preallocate == Preallocate::Off {
            return;
        }
        let n = {
            let Ok(mut g) = self.spare.lock() else { return };
            if g.ready.is_some() || g.preparing {
                return;
            }
            g.preparing = true;
            g.made += 1;
            g.made
        };
        let path = self
            .dir
            .join(format!("next-{}-{n}{SPARE_SUFFIX}", std::process::id()));
        let (slot, opts) = (self.spare.clone(), self.opts.clone());
        let res = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || {
                let made = new_segment_file(&path, &opts, true);
                let Ok(mut g) = slot.lock() else { return };
                g.preparing = false;
                match made {
                    Ok(file) => g.ready = Some((file, path)),
                    Err(e) => {
                        // Rotation then creates the segment itself, as without a spare.
                        tracing::warn!(
                            "cannot prepare the next WAL segment {}: {e}",
                            path.display()
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                }
            });
        if res.is_err()
            && let Ok(mut g) = self.spare.lock()
        {
            g.preparing = false;
        }
    }

    /// The largest number of records one write + fdatasync has covered (group commit at work).
    pub fn max_batch(&self) -> usize {
        self.inner.lock().map_or(0, |g| g.max_batch)
    }

    /// A spare segment is ready to be renamed into place.
    #[cfg(test)]
    pub(crate) fn spare_ready(&self) -> bool {
        self.spare.lock().is_ok_and(|g| g.ready.is_some())
    }

    /// A spare segment is being prepared or ready.
    #[cfg(test)]
    pub(crate) fn spare_started(&self) -> bool {
        self.spare
            .lock()
            .is_ok_and(|g| g.preparing || g.ready.is_some())
    }

    /// Segment `first_seq`: the spare renamed into place when one is ready, else a new one.
    /// Either way the directory is fsync'd before any record in it is written.
    fn next_segment(&self, first_seq: u64) -> std::io::Result<SegIo> {
        let ready = self.spare.lock().ok().and_then(|mut g| g.ready.take());
        if let Some((file, spare_path)) = ready {
            let path = self.dir.join(segment_name(first_seq));
            if let Err(e) = std::fs::rename(&spare_path, &path) {
                // The spare is still whole where it was: keep it for the next try.
                match self.spare.lock() {
                    Ok(mut g) if g.ready.is_none() => g.ready = Some((file, spare_path)),
                    _ => {
                        let _ = std::fs::remove_file(&spare_path);
                    }
                }
                return Err(e);
            }
            trace(|| format!("rename {} {}", spare_path.display(), path.display()));
            // The spare is complete and fsync'd; the rename is made durable before any record
            // in the new segment is written. Should that fail, the retry re-creates the file
            // at its new name (see `create_segment`).
            fsync_dir(&self.dir)?;
            return Ok(SegIo {
                file: Arc::new(file),
                path,
                offset: HEADER_LEN,
                rotate_pending: false,
            });
        }
        create_segment(&self.dir, first_seq, &self.opts)
    }

    /// Waits for in-flight appends (flushing what is queued with no leader), then refuses new
    /// ones. The lock is released on drop.
    pub fn close(&self) -> Result<(), WalError> {
        let mut g = self.lock_inner()?;
        g.closed = true;
        while g.failed.is_none() && (g.leaders > 0 || !g.buf.is_empty()) {
            if g.leaders == 0 {
                // Records of `submit_within` waiting for their timer, which may be gone with
                // its runtime: written now rather than waited for.
                g = self.lead_here(g)?;
                continue;
            }
            g = self.sleep(g)?;
        }
        if let Some(f) = &g.failed {
            return Err(WalError::Poisoned(f.clone()));
        }
        // An unused spare is not part of the log; the next open would remove it anyway.
        if let Some((_, path)) = self.spare.lock().ok().and_then(|mut s| s.ready.take()) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

/// An encoded record: type, JSON-encoded audit id, JSON-encoded body.
type Prepared = (RecordType, Option<String>, Vec<u8>);

/// Encodes record bodies (outside the lock) and checks their keys and size.
fn prepare(recs: Vec<NewRecord>) -> Result<Vec<Prepared>, WalError> {
    let mut prepared = Vec::with_capacity(recs.len());
    for mut rec in recs {
        let body = rec.take_body()?;
        let audit = match &rec.audit_id {
            Some(a) => Some(
                serde_json::to_string(a.as_str())
                    .map_err(|e| WalError::Invalid(format!("cannot encode audit id: {e}")))?,
            ),
            None => None,
        };
        let size = body.len() + audit.as_ref().map_or(0, String::len) + PREFIX_ROOM;
        if size > MAX_PAYLOAD {
            return Err(WalError::Invalid(format!(
                "record too large: about {size} bytes (limit {MAX_PAYLOAD})"
            )));
        }
        prepared.push((rec.rtype, audit, body));
    }
    Ok(prepared)
}

/// Under the lock: gives the records their seqs, chains them and queues their frames. Returns
/// the last seq (the one before them when `prepared` is empty).
fn enqueue(g: &mut Inner, prepared: &[Prepared]) -> Result<u64, WalError> {
    if let Some(f) = &g.failed {
        return Err(WalError::Poisoned(f.clone()));
    }
    if g.closed {
        return Err(WalError::Closed);
    }
    for (rtype, audit, body) in prepared {
        let seq = g.next_seq;
        let ts = now_rfc3339();
        let payload = build_payload(seq, &ts, rtype.as_str(), audit.as_deref(), &g.prev, body);
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        if g.buf.is_empty() {
            g.buf_first = seq;
        }
        push_frame(&mut g.buf, &payload);
        g.prev = hash_payload(&payload);
        g.next_seq += 1;
    }
    Ok(g.next_seq - 1)
}

/// A blocking appender that queued in `epoch` returns: it is no longer counted, and once the
/// epoch has ended with a drop, reads its answer there (and removes the entry when it is the
/// last to). `mine` is its last seq; `now` what it would answer were the epoch still current.
fn leave(
    g: &mut Inner,
    epoch: u64,
    mine: u64,
    now: Result<Seq, WalError>,
) -> Result<Seq, WalError> {
    if g.epoch == epoch {
        g.blocking = g.blocking.saturating_sub(1);
        return now;
    }
    let Some(i) = g.discards.iter().position(|d| d.epoch == epoch) else {
        // Cannot happen (the entry stays until its last reader); fail closed.
        return Err(WalError::Unavailable(
            "the outcome of this append was lost".into(),
        ));
    };
    let d = &mut g.discards[i];
    // Records before the first one dropped were durable before the drop.
    let answer = if mine < d.first {
        Ok(Seq(mine))
    } else {
        Err(WalError::Unavailable(d.why.clone()))
    };
    d.readers -= 1;
    if d.readers == 0 {
        g.discards.remove(i);
    }
    answer
}

/// What one leader writes: whole frames, and the seq and hash of the first and last of them.
struct Batch {
    bytes: Vec<u8>,
    first: u64,
    last: u64,
    last_hash: String,
}

/// Length of the first frame queued (the queue is not empty).
fn first_frame_len(buf: &[u8]) -> u64 {
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    FRAME_HEADER_LEN + u64::from(len)
}

/// Under the lock: the first queued frame can be written now without the bytes not yet
/// published going over `MAX_BATCH_BYTES` (always, when none are in flight).
fn next_fits(g: &Inner) -> bool {
    g.unsynced_bytes == 0 || g.unsynced_bytes + first_frame_len(&g.buf) <= MAX_BATCH_BYTES
}

/// Under the lock: takes the queued frames up to `limit` bytes (whole frames, at least one) for
/// one write. `limit` is `MAX_BATCH_BYTES` less the bytes of the write whose fdatasync may
/// still run: recovery's torn-tail rule relies on every byte not known to be on disk lying
/// within `MAX_BATCH_BYTES` of the first of them.
fn take_batch(g: &mut Inner, limit: u64) -> Batch {
    let first = g.buf_first;
    if g.buf.len() as u64 <= limit {
        return Batch {
            bytes: std::mem::take(&mut g.buf),
            first,
            last: g.next_seq - 1,
            last_hash: g.prev.clone(),
        };
    }
    // The queue holds whole frames, and more than the limit, so a frame ends before it runs out.
    let (mut end, mut n, mut last_payload) = (0usize, 0u64, 0..0);
    loop {
        let h = &g.buf[end..end + FRAME_HEADER_LEN as usize];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let next = end + FRAME_HEADER_LEN as usize + len;
        if n > 0 && next as u64 > limit {
            break;
        }
        last_payload = end + FRAME_HEADER_LEN as usize..next;
        end = next;
        n += 1;
    }
    let last_hash = hash_payload(&g.buf[last_payload]);
    let rest = g.buf.split_off(end);
    let bytes = std::mem::replace(&mut g.buf, rest);
    g.buf_first = first + n;
    Batch {
        bytes,
        first,
        last: first + n - 1,
        last_hash,
    }
}

/// The leader slot [`Wal::submit_awaited`] holds for its future's first poll; dropped unused,
/// it leads the flush on the pool (or, outside a runtime, here), so no record waits for a
/// leader that never comes.
struct Reserved(Option<Arc<Wal>>);

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(wal) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                Wal::flush_on_pool(wal);
            } else if let Ok(done) = wal.flush() {
                complete(done);
            }
        }
    }
}

/// Tells async appenders that their records are durable.
fn complete(done: Vec<(u64, Waiter)>) {
    for (_, w) in done {
        let _ = w.send(Ok(()));
    }
}

/// Removes and returns the waiters whose records are durable (seq <= `durable`).
fn take_done(waiters: &mut Vec<(u64, Waiter)>, durable: u64) -> Vec<(u64, Waiter)> {
    if waiters.iter().all(|(s, _)| *s <= durable) {
        return std::mem::take(waiters);
    }
    let (done, rest) = std::mem::take(waiters)
        .into_iter()
        .partition(|(s, _)| *s <= durable);
    *waiters = rest;
    done
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (seq, hash) = self.head();
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("head_seq", &seq.0)
            .field("head_hash", &hash)
            .finish()
    }
}
