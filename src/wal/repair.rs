//! Repair: keep the intact prefix of a damaged WAL and save everything cut beside it.
//!
//! The cut point is the end of the last intact record (the same point `wal verify` and recovery
//! stop at), or an earlier record boundary the operator names. Bytes cut from that segment are
//! saved as `<segment>.cut-<offset>`; later segments are moved aside whole as
//! `<segment>.cut-0`. Nothing is deleted. The repair is then recorded in the log itself (a
//! `runtime` record `wal.repaired`), so the cut shows in the chain.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::durable::{create_beside, cut_tail, data_end, fsync_dir, save_cut};
use super::format::HEADER_LEN;
use super::reader::{Reader, list_segments};
use super::writer::{file_name, take_lock};
use super::{NewRecord, Preallocate, Wal, WalError, WalOptions};
use crate::record::{CutBytes, Repaired, WalRepaired};

/// One piece cut from the log.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The segment it came from.
    pub segment: PathBuf,
    /// First byte cut (0: the whole file was moved aside).
    pub offset: u64,
    /// How many bytes.
    pub bytes: u64,
    /// Where they are now.
    pub saved_as: PathBuf,
}

/// What a repair kept and cut.
#[derive(Debug, Clone)]
pub struct RepairReport {
    /// Records kept.
    pub kept_records: u64,
    /// The last kept seq (0 when none).
    pub kept_head_seq: u64,
    /// Hash of the last kept record (the genesis value when none).
    pub kept_head_hash: String,
    /// The damage or torn tail found, if any (one line).
    pub found: Option<String>,
    /// What was cut, in log order; empty when there was nothing to cut.
    pub cuts: Vec<Cut>,
    /// Seq of the `wal.repaired` record that now follows the kept records (when anything was cut).
    pub recorded_seq: Option<u64>,
}

/// Why a repair did not run.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// `--truncate-at` names no place repair may cut at.
    #[error("{0}")]
    BadOffset(String),
    /// The WAL could not be read, locked, cut or written.
    #[error("{0}")]
    Wal(#[from] WalError),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> RepairError {
    move |source| RepairError::Wal(WalError::Io { context, source })
}

/// Repairs the WAL in `dir`: takes the writer's lock (so never under a running runtime), finds
/// the end of the intact records, cuts there (or at `truncate_at`, a record boundary in the same
/// segment before that point), saves what it cuts, and records the repair.
pub fn repair(dir: &Path, truncate_at: Option<u64>) -> Result<RepairReport, RepairError> {
    // A missing directory or one without segments is reported as such before the lock file
    // would be created in it.
    let damaged = |d| RepairError::Wal(WalError::Damaged(d));
    Reader::open(dir).map_err(damaged)?;
    let lock = take_lock(dir)?;

    let mut r = Reader::open(dir).map_err(damaged)?;
    let found = loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => break r.torn_tail().map(|t| t.describe()),
            Err(d) if d.code.is_damage() => break Some(d.summary()),
            Err(d) => return Err(damaged(d)),
        }
    };
    let intact = r.position();
    let mut kept_records = r.records();
    let mut kept_head_seq = r.head_seq();
    let mut kept_head_hash = r.head_hash().to_string();
    drop(r);

    let cut_at = match (truncate_at, &intact) {
        (None, _) => intact.as_ref().map_or(0, |(_, _, end)| *end),
        (Some(_), None) => {
            return Err(RepairError::BadOffset(
                "--truncate-at needs a segment with intact records, and the first segment has none (run without it)".into(),
            ));
        }
        (Some(t), Some((seg, _, end))) => {
            let name = file_name(seg);
            if t > *end {
                return Err(RepairError::BadOffset(format!(
                    "--truncate-at {t} is past offset {end} of {name}, where the intact records end; repair keeps at most the intact records"
                )));
            }
            if t < *end {
                let b = boundary(dir, seg, t)?;
                kept_records = b.records;
                kept_head_seq = b.head_seq;
                kept_head_hash = b.head_hash;
            }
            t
        }
    };

    let mut cuts = Vec::new();
    let seg_first = intact.as_ref().map(|(_, first, _)| *first);
    if let Some((seg, _, _)) = &intact {
        let f = File::open(seg).map_err(io(format!("cannot open {}", seg.display())))?;
        let end = data_end(&f, cut_at).map_err(io(format!("cannot read {}", seg.display())))?;
        if end > cut_at {
            let saved = save_cut(seg, cut_at, end).map_err(io(format!(
                "cannot save bytes {cut_at}..{end} of {} (nothing was changed)",
                seg.display()
            )))?;
            cut_tail(seg, cut_at, end).map_err(io(format!(
                "cannot cut {} at offset {cut_at}",
                seg.display()
            )))?;
            cuts.push(Cut {
                segment: seg.clone(),
                offset: cut_at,
                bytes: end - cut_at,
                saved_as: saved,
            });
        }
    }
    let segs = list_segments(dir).map_err(io(format!("cannot read {}", dir.display())))?;
    for (first, path) in segs {
        if seg_first.is_some_and(|s| first <= s) {
            continue;
        }
        let bytes = std::fs::metadata(&path)
            .map_err(io(format!("cannot stat {}", path.display())))?
            .len();
        // The new name is reserved first (an empty file), so nothing already there is replaced.
        let (_, dest) = create_beside(&path, "cut-0")
            .map_err(io(format!("cannot name a place for {}", path.display())))?;
        std::fs::rename(&path, &dest).map_err(io(format!(
            "cannot move {} to {}",
            path.display(),
            dest.display()
        )))?;
        cuts.push(Cut {
            segment: path,
            offset: 0,
            bytes,
            saved_as: dest,
        });
    }
    fsync_dir(dir).map_err(io(format!("cannot sync {}", dir.display())))?;

    let mut recorded_seq = None;
    if !cuts.is_empty() {
        // Preallocation off: a repair should not leave a spare segment being written behind it.
        let opts = WalOptions {
            preallocate: Preallocate::Off,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open_locked(dir, opts, lock)?;
        let rec = WalRepaired {
            cut: cuts
                .iter()
                .map(|c| CutBytes {
                    bytes: c.bytes,
                    offset: c.offset,
                    saved_as: Cow::Owned(file_name(&c.saved_as)),
                    segment: Cow::Owned(file_name(&c.segment)),
                })
                .collect(),
            event: Repaired,
            found: found.as_deref().map(Cow::Borrowed),
            kept_records,
        };
        recorded_seq = Some(wal.append(NewRecord::encoded(None, &rec)?)?.0);
        wal.close()?;
    }
    Ok(RepairReport {
        kept_records,
        kept_head_seq,
        kept_head_hash,
        found,
        cuts,
        recorded_seq,
    })
}

/// The records before offset `t` of `seg`, when a record starts exactly there.
struct Boundary {
    records: u64,
    head_seq: u64,
    head_hash: String,
}

/// Reads the log up to offset `t` of `seg` (before the end of its intact records) and checks
/// that a record starts there.
fn boundary(dir: &Path, seg: &Path, t: u64) -> Result<Boundary, RepairError> {
    let name = file_name(seg);
    if t < HEADER_LEN {
        return Err(RepairError::BadOffset(format!(
            "--truncate-at {t} is inside the header of {name}; the first record starts at offset {HEADER_LEN}"
        )));
    }
    let mut r = Reader::open(dir).map_err(|d| RepairError::Wal(WalError::Damaged(d)))?;
    let mut before = None;
    loop {
        let before_count = r.records();
        let (head_seq, head_hash) = (r.head_seq(), r.head_hash().to_string());
        let rec = match r.next_record() {
            Ok(Some(rec)) => rec,
            // The intact records reach past `t`, so one starts at or after it.
            Ok(None) | Err(_) => break,
        };
        if rec.segment != seg {
            continue;
        }
        if rec.offset == t {
            return Ok(Boundary {
                records: before_count,
                head_seq,
                head_hash,
            });
        }
        if rec.offset > t {
            let prev = before.map_or(String::new(), |b: u64| format!("{b} and "));
            return Err(RepairError::BadOffset(format!(
                "--truncate-at {t} is not where a record starts in {name}; the nearest are {prev}{}",
                rec.offset
            )));
        }
        before = Some(rec.offset);
    }
    Err(RepairError::BadOffset(format!(
        "--truncate-at {t} is not where a record starts in {name}"
    )))
}
