//! Reading and verifying a WAL directory without the lock and without modifying anything.
//!
//! [`Reader`] walks the segments in order and checks every frame (header, length, CRC32C,
//! JSON payload, `seq` contiguity, hash chain). It works on a WAL a live runtime is writing:
//! when it reaches the end of the data it returns `None`, and calling it again later picks up
//! records appended since (including new segments). [`verify`] and recovery on open
//! ([`super::Wal::open`]) use the same code.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::format::{
    FRAME_HEADER_LEN, GENESIS, HEADER_LEN, MAX_PAYLOAD, batch_window_end, hash_payload,
    header_bytes, parse_segment_name,
};
use crate::record::{Body, BodyError, RecordType};
use crate::types::{AuditId, Seq};

/// What kind of fault a [`WalDamage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageCode {
    /// A frame's CRC32C (or its length field) does not check out, and it is not a torn tail.
    CrcMismatch,
    /// `seq` is not contiguous: missing, duplicated or reordered records, or a misnamed segment.
    SeqGap,
    /// A record's `prev` is not the hash of the record before it: a record was altered.
    ChainBroken,
    /// A frame's CRC is right but its payload is not a JSON object with the required fields.
    BadPayload,
    /// A segment file does not start with the WAL header (not a WAL file, or another version).
    BadHeader,
    /// Non-zero bytes after the end of the records, beyond any write that could have been in
    /// flight: not what a crash leaves.
    StrayBytes,
    /// The directory or a segment could not be read.
    Io,
    /// The directory holds no segment files.
    NoSegments,
}

impl DamageCode {
    /// The stable code printed in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DamageCode::CrcMismatch => "WAL_CRC_MISMATCH",
            DamageCode::SeqGap => "WAL_SEQ_GAP",
            DamageCode::ChainBroken => "WAL_CHAIN_BROKEN",
            DamageCode::BadPayload => "WAL_BAD_PAYLOAD",
            DamageCode::BadHeader => "WAL_BAD_HEADER",
            DamageCode::StrayBytes => "WAL_STRAY_BYTES",
            DamageCode::Io => "WAL_IO",
            DamageCode::NoSegments => "WAL_NO_SEGMENTS",
        }
    }

    /// True for faults in the stored data (as opposed to "cannot read" / "nothing there").
    pub fn is_damage(self) -> bool {
        !matches!(self, DamageCode::Io | DamageCode::NoSegments)
    }
}

impl fmt::Display for DamageCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault found while reading a WAL: where, which record, and what the operator can do.
#[derive(Debug, Clone)]
pub struct WalDamage {
    /// The fault.
    pub code: DamageCode,
    /// The WAL directory.
    pub dir: PathBuf,
    /// The segment file, when the fault is inside one.
    pub segment: Option<PathBuf>,
    /// Byte offset of the faulty frame in the segment.
    pub offset: u64,
    /// The seq involved, where known (the record found, or the one expected).
    pub seq: Option<u64>,
    /// What was found.
    pub message: String,
}

impl WalDamage {
    fn io(dir: &Path, message: String) -> Self {
        WalDamage {
            code: DamageCode::Io,
            dir: dir.to_path_buf(),
            segment: None,
            offset: 0,
            seq: None,
            message,
        }
    }

    /// The segment's file name (or `?`).
    pub fn segment_name(&self) -> String {
        self.segment
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "?".into())
    }

    /// What the operator can do about it.
    pub fn advice(&self) -> String {
        if !self.code.is_damage() {
            return String::new();
        }
        format!(
            "run `autonomy wal verify --dir {}` for details; {}",
            self.dir.display(),
            self.restore_advice()
        )
    }

    /// How to get going again (without the pointer to `wal verify`).
    pub fn restore_advice(&self) -> String {
        format!(
            "to keep the records before it, run `autonomy wal repair --dir {}` (it saves what it \
             cuts beside the segment), or restore the directory from a backup",
            self.dir.display()
        )
    }

    /// `CODE at <segment> offset <n> (seq <s>): <what was found>`.
    pub fn summary(&self) -> String {
        if !self.code.is_damage() {
            return self.message.clone();
        }
        let mut s = format!(
            "{} at {} offset {}",
            self.code,
            self.segment_name(),
            self.offset
        );
        if let Some(q) = self.seq {
            s.push_str(&format!(" (seq {q})"));
        }
        s.push_str(": ");
        s.push_str(&self.message);
        s
    }
}

impl fmt::Display for WalDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.code.is_damage() {
            return f.write_str(&self.message);
        }
        write!(f, "{}; {}", self.summary(), self.advice())
    }
}

impl std::error::Error for WalDamage {}

/// One record as stored.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Its sequence number.
    pub seq: Seq,
    /// Its timestamp (RFC 3339 UTC).
    pub ts: String,
    /// Its type.
    pub rtype: RecordType,
    /// Its audit id, if any.
    pub audit_id: Option<AuditId>,
    /// The whole payload.
    pub payload: Value,
    /// The payload exactly as stored (JSON text, reserved keys first).
    pub raw: String,
    /// `sha256:<hex>` of the payload bytes (the next record's `prev`).
    pub hash: String,
    /// The segment holding it.
    pub segment: PathBuf,
    /// Byte offset of its frame in the segment.
    pub offset: u64,
}

impl StoredRecord {
    /// The typed body ([`crate::record`]).
    pub fn body(&self) -> Result<Body, BodyError> {
        Body::parse(self.rtype, &self.payload)
    }
}

/// Bytes at the end of the last segment that are not a whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: PathBuf,
    /// Where the last whole record ends.
    pub offset: u64,
    /// How many bytes (up to the last non-zero one) follow it.
    pub bytes: u64,
    /// Whole frames (length and CRC32C check out) inside those bytes, after the damage: records
    /// of the same unacknowledged write, cut with it.
    pub whole_frames: u64,
    /// True when the segment's header itself is incomplete (a segment being created).
    pub in_header: bool,
    /// The last good seq before it.
    pub after_seq: u64,
}

impl TornTail {
    /// One line describing it.
    pub fn describe(&self) -> String {
        format!(
            "torn tail: {} bytes at segment {} offset {} after seq {}{} (a crash mid-write, or a writer mid-append); opening the WAL for writing cuts it back",
            self.bytes,
            self.segment
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            self.offset,
            self.after_seq,
            self.frames_note()
        )
    }

    /// `, holding N whole frames` when the cut region holds any.
    pub fn frames_note(&self) -> String {
        match self.whole_frames {
            0 => String::new(),
            1 => ", holding 1 whole frame".into(),
            n => format!(", holding {n} whole frames"),
        }
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Segments read.
    pub segments: u64,
    /// The last seq (0 when empty).
    pub head_seq: u64,
    /// The hash of the last record (the genesis hash when empty).
    pub head_hash: String,
    /// A torn tail, if any: a warning, not a failure.
    pub torn_tail: Option<String>,
}

/// Checks every segment, frame, `seq` and the hash chain; reads only.
pub fn verify(dir: &Path) -> Result<VerifyReport, WalDamage> {
    let mut r = Reader::open(dir)?;
    while r.next_record()?.is_some() {}
    Ok(VerifyReport {
        records: r.records(),
        segments: r.segments(),
        head_seq: r.head_seq(),
        head_hash: r.head_hash().to_string(),
        torn_tail: r.torn_tail().map(|t| t.describe()),
    })
}

/// The segment files in `dir`, sorted by first seq.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for ent in std::fs::read_dir(dir)? {
        let p = ent?.path();
        if let Some(s) = parse_segment_name(&p) {
            v.push((s, p));
        }
    }
    v.sort();
    Ok(v)
}

const CHUNK: usize = 1024 * 1024;
/// The read size of a reader following a live log: each time new records appear it reads again
/// from the end of the data, and most of a large chunk there would be preallocated zeros.
const LIVE_CHUNK: usize = 64 * 1024;

struct Cur {
    path: PathBuf,
    first_seq: u64,
    file: File,
    offset: u64,
    buf: Vec<u8>,
    buf_off: u64,
    /// Bytes read at a time (at least the frame asked for).
    chunk: usize,
}

impl Cur {
    /// Up to `n` bytes at `off` (fewer at end of file).
    fn read(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let have = off >= self.buf_off && off + n as u64 <= self.buf_off + self.buf.len() as u64;
        if !have {
            self.buf.clear();
            self.buf.resize(n.max(self.chunk), 0);
            let mut got = 0;
            while got < self.buf.len() {
                match self.file.read_at(&mut self.buf[got..], off + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.buf.truncate(got);
            self.buf_off = off;
        }
        let start = (off - self.buf_off) as usize;
        let end = (start + n).min(self.buf.len());
        Ok(&self.buf[start.min(end)..end])
    }

    /// Everything from `off` to the end of the file (at most `limit` bytes).
    fn read_rest(&self, off: u64, limit: Option<u64>) -> std::io::Result<Vec<u8>> {
        let len = self.file.metadata()?.len();
        let mut n = len.saturating_sub(off);
        if let Some(l) = limit {
            n = n.min(l);
        }
        let mut v = vec![0u8; n as usize];
        let mut got = 0;
        while got < v.len() {
            match self.file.read_at(&mut v[got..], off + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        v.truncate(got);
        Ok(v)
    }
}

/// Decodes a frame at the start of `b` if it is whole and its CRC checks: `(payload length)`.
fn valid_frame_at(b: &[u8]) -> Option<usize> {
    if b.len() < FRAME_HEADER_LEN as usize {
        return None;
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let start = FRAME_HEADER_LEN as usize;
    if len == 0 || len > MAX_PAYLOAD || b.len() < start + len {
        return None;
    }
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    (crc32c::crc32c(&b[start..start + len]) == crc).then_some(len)
}

/// [`valid_frame_at`] for a scan through unknown bytes: only a frame whose payload starts like a
/// JSON object counts, which spares computing a CRC at nearly every offset of garbage.
fn frame_in_scan(b: &[u8]) -> Option<usize> {
    if b.get(FRAME_HEADER_LEN as usize) != Some(&b'{') {
        return None;
    }
    valid_frame_at(b)
}

/// Whole frames in `b`, found by trying every offset and hopping over each frame found.
fn count_frames(b: &[u8]) -> u64 {
    let (mut k, mut n) = (0, 0);
    while k < b.len() {
        match frame_in_scan(&b[k..]) {
            Some(len) => {
                n += 1;
                k += FRAME_HEADER_LEN as usize + len;
            }
            None => k += 1,
        }
    }
    n
}

enum Tail {
    /// Only zeros (or nothing) from here.
    Clean,
    /// Non-zero bytes up to this absolute offset, all inside the window of the last write that
    /// could have been in flight: a torn tail.
    Torn { garbage_end: u64, whole_frames: u64 },
    /// A valid frame starts at this absolute offset, beyond that window.
    ValidBeyond { frame: u64, window_end: u64 },
    /// A non-zero byte at this absolute offset, beyond that window, and no valid frame there.
    Stray { at: u64, window_end: u64 },
}

/// Classifies what follows the end of the intact records at `off` (`rest` starts there).
///
/// A write in flight at a crash started at or before `off` (every earlier write was fsync'd
/// before the next began) and carried at most `MAX_BATCH_BYTES`, so everything it could have
/// left lies before [`batch_window_end`]`(off)`. Inside that window anything goes (a later page
/// of the same write may have landed while an earlier one did not); beyond it, only zeros.
fn classify_tail(rest: &[u8], off: u64) -> Tail {
    let window_end = batch_window_end(off);
    let win = usize::try_from(window_end - off)
        .unwrap_or(usize::MAX)
        .min(rest.len());
    if let Some(p) = rest[win..].iter().position(|&b| b != 0) {
        let start = win + p;
        return match (start..rest.len()).find(|&k| frame_in_scan(&rest[k..]).is_some()) {
            Some(k) => Tail::ValidBeyond {
                frame: off + k as u64,
                window_end,
            },
            None => Tail::Stray {
                at: off + start as u64,
                window_end,
            },
        };
    }
    match rest[..win].iter().rposition(|&b| b != 0) {
        None => Tail::Clean,
        Some(last) => Tail::Torn {
            garbage_end: off + last as u64 + 1,
            // The frame at `off` itself does not check out; whole ones after it are counted (a
            // frame ends with its payload's closing `}`, so none reaches past `last`).
            whole_frames: count_frames(&rest[..=last]),
        },
    }
}

/// Walks a WAL directory record by record. See the module docs.
pub struct Reader {
    dir: PathBuf,
    cur: Option<Cur>,
    next_seq: u64,
    prev: String,
    records: u64,
    segments: u64,
    /// Bytes (header and whole records) of the segments before the current one.
    done_bytes: u64,
    torn: Option<TornTail>,
    damage: Option<WalDamage>,
    damage_yielded: bool,
    tail_limit: Option<u64>,
}

impl Reader {
    /// Opens `dir` for reading; fails if it is missing, not a directory, or has no segments.
    pub fn open(dir: &Path) -> Result<Reader, WalDamage> {
        let r = Reader::open_allow_empty(dir)?;
        let segs = list_segments(dir)
            .map_err(|e| WalDamage::io(dir, format!("cannot read {}: {e}", dir.display())))?;
        if segs.is_empty() {
            return Err(WalDamage {
                code: DamageCode::NoSegments,
                dir: dir.to_path_buf(),
                segment: None,
                offset: 0,
                seq: None,
                message: format!(
                    "no WAL segments in {} (expected files like 00000000000000000001.wal)",
                    dir.display()
                ),
            });
        }
        Ok(r)
    }

    /// Like [`Reader::open`] but an empty directory is fine (used by recovery).
    pub fn open_allow_empty(dir: &Path) -> Result<Reader, WalDamage> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(WalDamage::io(
                    dir,
                    format!(
                        "{} is not a directory (give the WAL directory, not a file)",
                        dir.display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WalDamage::io(
                    dir,
                    format!("WAL directory {} does not exist", dir.display()),
                ));
            }
            Err(e) => {
                return Err(WalDamage::io(
                    dir,
                    format!("cannot read WAL directory {}: {e}", dir.display()),
                ));
            }
        }
        Ok(Reader {
            dir: dir.to_path_buf(),
            cur: None,
            next_seq: 1,
            prev: GENESIS.to_string(),
            records: 0,
            segments: 0,
            done_bytes: 0,
            torn: None,
            damage: None,
            damage_yielded: false,
            tail_limit: None,
        })
    }

    /// For following a live WAL: look at most 64 KiB past the end of the data when deciding
    /// whether the tail is clean, instead of reading a preallocated segment to its end, and read
    /// in 64 KiB chunks (a follower reads again from the end of the data whenever records are
    /// added). Call it before the first record.
    pub fn set_live(&mut self, live: bool) {
        self.tail_limit = live.then_some(LIVE_CHUNK as u64);
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Segments opened so far.
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// Bytes read so far as segment headers and whole records: the log's size, once read to
    /// its end (preallocated space not counted).
    pub fn bytes(&self) -> u64 {
        self.done_bytes + self.cur.as_ref().map_or(0, |c| c.offset)
    }

    /// The last seq read (0 before any).
    pub fn head_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The hash of the last record read (genesis before any).
    pub fn head_hash(&self) -> &str {
        &self.prev
    }

    /// The torn tail seen at the last end of data, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// The current segment (path, first seq) and the offset just after the last whole record.
    pub fn position(&self) -> Option<(PathBuf, u64, u64)> {
        self.cur
            .as_ref()
            .map(|c| (c.path.clone(), c.first_seq, c.offset))
    }

    fn damage(
        &mut self,
        code: DamageCode,
        segment: &Path,
        offset: u64,
        seq: Option<u64>,
        message: String,
    ) -> WalDamage {
        let d = WalDamage {
            code,
            dir: self.dir.clone(),
            segment: Some(segment.to_path_buf()),
            offset,
            seq,
            message,
        };
        self.damage = Some(d.clone());
        d
    }

    fn io_err(&mut self, path: &Path, e: std::io::Error) -> WalDamage {
        let d = WalDamage::io(&self.dir, format!("cannot read {}: {e}", path.display()));
        self.damage = Some(d.clone());
        d
    }

    /// The segment after the current one, if any.
    fn next_segment(&mut self) -> Result<Option<(u64, PathBuf)>, WalDamage> {
        let segs = list_segments(&self.dir).map_err(|e| {
            let d = WalDamage::io(
                &self.dir,
                format!("cannot read {}: {e}", self.dir.display()),
            );
            self.damage = Some(d.clone());
            d
        })?;
        let after = self.cur.as_ref().map(|c| c.first_seq);
        Ok(segs.into_iter().find(|(s, _)| after.is_none_or(|a| *s > a)))
    }

    /// Opens the next segment. `Ok(false)` when there is none (or it is still being created).
    fn advance_segment(&mut self) -> Result<bool, WalDamage> {
        let Some((first, path)) = self.next_segment()? else {
            return Ok(false);
        };
        let file = File::open(&path).map_err(|e| self.io_err(&path, e))?;
        let mut hdr = [0u8; HEADER_LEN as usize];
        let mut got = 0;
        while got < hdr.len() {
            match file.read_at(&mut hdr[got..], got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(&path, e)),
            }
        }
        let want = header_bytes();
        if hdr[..got] != want[..got] {
            let what = if hdr[..8.min(got)] == want[..8.min(got)] {
                "unsupported WAL format version"
            } else {
                "not a WAL segment (bad magic)"
            };
            return Err(self.damage(
                DamageCode::BadHeader,
                &path,
                0,
                None,
                format!("{what}; expected a file starting with \"AUTONWAL\" version 1"),
            ));
        }
        if got < hdr.len() {
            // A header prefix: a segment being created, or a crash while creating it.
            let later = list_segments(&self.dir)
                .map(|v| v.iter().any(|(s, _)| *s > first))
                .unwrap_or(false);
            if later {
                return Err(self.damage(
                    DamageCode::BadHeader,
                    &path,
                    0,
                    None,
                    format!(
                        "incomplete segment header ({got} bytes) in a segment that is not the last"
                    ),
                ));
            }
            self.torn = Some(TornTail {
                segment: path,
                offset: 0,
                bytes: got as u64,
                whole_frames: 0,
                in_header: true,
                after_seq: self.next_seq - 1,
            });
            return Ok(false);
        }
        if first != self.next_seq {
            return Err(self.damage(
                DamageCode::SeqGap,
                &path,
                HEADER_LEN,
                Some(self.next_seq),
                format!(
                    "segment is named for seq {first} but the next record should be seq {} (missing or extra segment)",
                    self.next_seq
                ),
            ));
        }
        self.segments += 1;
        self.done_bytes += self.cur.as_ref().map_or(0, |c| c.offset);
        self.cur = Some(Cur {
            path,
            first_seq: first,
            file,
            offset: HEADER_LEN,
            buf: Vec::new(),
            buf_off: 0,
            chunk: if self.tail_limit.is_some() {
                LIVE_CHUNK
            } else {
                CHUNK
            },
        });
        Ok(true)
    }

    /// The next record; `Ok(None)` at the end of the data (call again later to follow).
    pub fn next_record(&mut self) -> Result<Option<StoredRecord>, WalDamage> {
        if let Some(d) = &self.damage {
            return Err(d.clone());
        }
        self.torn = None;
        loop {
            if self.cur.is_none() && !self.advance_segment()? {
                return Ok(None);
            }
            let limit = self.tail_limit;
            // advance_segment returned true, so a segment is open.
            let Some(cur) = self.cur.as_mut() else {
                return Ok(None);
            };
            let off = cur.offset;
            let path = cur.path.clone();
            let hdr = match cur.read(off, FRAME_HEADER_LEN as usize) {
                Ok(h) => h.to_vec(),
                Err(e) => return Err(self.io_err(&path, e)),
            };
            let mut frame_len = None;
            if hdr.len() == FRAME_HEADER_LEN as usize {
                let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
                if len > 0 && len <= MAX_PAYLOAD {
                    let whole = match cur.read(off, FRAME_HEADER_LEN as usize + len) {
                        Ok(b) => b,
                        Err(e) => return Err(self.io_err(&path, e)),
                    };
                    frame_len = valid_frame_at(whole);
                }
            }
            let Some(len) = frame_len else {
                // Not a whole, valid frame: end of data, torn tail, or damage.
                let rest = match cur.read_rest(off, limit) {
                    Ok(r) => r,
                    Err(e) => return Err(self.io_err(&path, e)),
                };
                cur.buf.clear();
                if valid_frame_at(&rest).is_some() {
                    // A live writer completed the frame since our cached read: read it again.
                    continue;
                }
                match classify_tail(&rest, off) {
                    Tail::Clean => {
                        // Clean end of this segment: move on if a later one exists.
                        if self.advance_segment()? {
                            continue;
                        }
                        return Ok(None);
                    }
                    Tail::ValidBeyond { frame, window_end } => {
                        return Err(self.damage(
                            DamageCode::CrcMismatch,
                            &path,
                            off,
                            Some(self.next_seq),
                            format!(
                                "the frame does not check out (CRC32C or length) but a valid frame follows at offset {frame}, beyond offset {window_end} where the last write that could have been in flight ends, so this is not a torn tail"
                            ),
                        ));
                    }
                    Tail::Stray { at, window_end } => {
                        return Err(self.damage(
                            DamageCode::StrayBytes,
                            &path,
                            at,
                            Some(self.next_seq),
                            format!(
                                "non-zero bytes at offset {at}, after the end of the records at offset {off} and beyond offset {window_end} where the last write that could have been in flight ends, so this is not a torn tail"
                            ),
                        ));
                    }
                    Tail::Torn {
                        garbage_end,
                        whole_frames,
                    } => {
                        let first = self.cur.as_ref().map(|c| c.first_seq).unwrap_or(0);
                        let later = list_segments(&self.dir)
                            .map(|v| v.iter().any(|(s, _)| *s > first))
                            .unwrap_or(false);
                        if later {
                            return Err(self.damage(
                                DamageCode::CrcMismatch,
                                &path,
                                off,
                                Some(self.next_seq),
                                "the frame does not check out (CRC32C or length) in a segment that is not the last".into(),
                            ));
                        }
                        self.torn = Some(TornTail {
                            segment: path,
                            offset: off,
                            bytes: garbage_end - off,
                            whole_frames,
                            in_header: false,
                            after_seq: self.next_seq - 1,
                        });
                        return Ok(None);
                    }
                }
            };
            let start = FRAME_HEADER_LEN as usize;
            let payload = match cur.read(off, start + len) {
                Ok(b) => b[start..start + len].to_vec(),
                Err(e) => return Err(self.io_err(&path, e)),
            };
            let rec = self.check_record(&path, off, &payload)?;
            if let Some(c) = self.cur.as_mut() {
                c.offset = off + FRAME_HEADER_LEN + len as u64;
            }
            self.next_seq += 1;
            self.prev = rec.hash.clone();
            self.records += 1;
            return Ok(Some(rec));
        }
    }

    fn check_record(
        &mut self,
        path: &Path,
        off: u64,
        payload: &[u8],
    ) -> Result<StoredRecord, WalDamage> {
        let expect = self.next_seq;
        let bad = |this: &mut Self, msg: String| {
            this.damage(DamageCode::BadPayload, path, off, Some(expect), msg)
        };
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return Err(bad(self, format!("the payload is not valid JSON ({e})"))),
        };
        let Some(obj) = v.as_object() else {
            return Err(bad(self, "the payload is not a JSON object".into()));
        };
        let Some(seq) = obj.get("seq").and_then(Value::as_u64) else {
            return Err(bad(self, "the payload has no numeric `seq`".into()));
        };
        let field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(ts), Some(rtype), Some(prev)) = (field("ts"), field("type"), field("prev"))
        else {
            return Err(bad(
                self,
                format!("record seq {seq} lacks one of `ts`, `type`, `prev`"),
            ));
        };
        let Some(rtype) = RecordType::parse(&rtype) else {
            return Err(bad(
                self,
                format!("record seq {seq} has an unknown type {rtype:?}"),
            ));
        };
        let audit_id = match obj.get("audit_id") {
            None => None,
            Some(Value::String(s)) => Some(AuditId::from_string(s.clone())),
            Some(_) => {
                return Err(bad(
                    self,
                    format!("record seq {seq}: `audit_id` is not a string"),
                ));
            }
        };
        if seq != expect {
            let msg = if seq < expect {
                format!(
                    "found seq {seq} after seq {} (records out of order or duplicated)",
                    expect - 1
                )
            } else {
                format!(
                    "found seq {seq} after seq {} (expected {expect}: records are missing)",
                    expect - 1
                )
            };
            return Err(self.damage(DamageCode::SeqGap, path, off, Some(seq), msg));
        }
        if prev != self.prev {
            let msg = format!(
                "record seq {seq} has prev {prev} but the record before it hashes to {} (a record was altered)",
                self.prev
            );
            return Err(self.damage(DamageCode::ChainBroken, path, off, Some(seq), msg));
        }
        Ok(StoredRecord {
            seq: Seq(seq),
            ts,
            rtype,
            audit_id,
            hash: hash_payload(payload),
            raw: String::from_utf8_lossy(payload).into_owned(),
            payload: v,
            segment: path.to_path_buf(),
            offset: off,
        })
    }
}

impl Iterator for Reader {
    type Item = Result<StoredRecord, WalDamage>;

    /// Yields records, then a damage once (if any), then `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.damage.is_some() {
            if self.damage_yielded {
                return None;
            }
            self.damage_yielded = true;
            return self.damage.clone().map(Err);
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.damage_yielded = true;
                Some(Err(e))
            }
        }
    }
}
