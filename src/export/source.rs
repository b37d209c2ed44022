//! The export's side of the WAL: a thread that reads the segment files (without the writer's
//! lock, like `wal inspect --follow`) and hands the records on, in order.
//!
//! It never calls into the writer's append path. In a running daemon it reads only records
//! the writer has made durable ([`Limit::Durable`], read from `Wal::head`), so nothing that a
//! power cut could still take back (a torn last write cut by recovery) ever leaves the machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::ExportStats;
use crate::wal::{Reader, Wal};

/// How often the thread looks for new records once it has caught up.
pub(crate) const POLL: Duration = Duration::from_millis(5);
/// Records handed over at a time: one wake-up of the publisher per batch, not per record.
pub(crate) const BATCH: usize = 256;
/// Batches the channel holds: with the publisher's window, what the export keeps in memory
/// while the broker is away (the rest waits in the WAL).
pub(crate) const CHANNEL: usize = 4;

/// One record to publish.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    /// Its seq.
    pub seq: u64,
    /// Its type (`decision`, `runtime`, …).
    pub rtype: &'static str,
    /// The payload exactly as stored.
    pub raw: Bytes,
}

/// What the thread sends.
#[derive(Debug)]
pub(crate) enum Item {
    /// The next records, in order.
    Recs(Vec<Rec>),
    /// [`Limit::Files`] only: the end of the log, its last seq (and a torn tail's description).
    End(u64, Option<String>),
    /// The log cannot be read any further.
    Failed(String),
}

/// How far the thread may read.
#[derive(Clone)]
pub(crate) enum Limit {
    /// A live daemon's WAL: up to its durable head, following it.
    Durable(Arc<Wal>),
    /// A stopped node's WAL: to the end of the files, once.
    Files,
}

/// Starts the thread: records after seq `after`, in order, into `tx`, until `stop` is set or
/// the receiver is gone. `stats.head_seq` is kept at the highest seq known to be in the log.
pub(crate) fn spawn(
    dir: PathBuf,
    after: u64,
    limit: Limit,
    tx: mpsc::Sender<Item>,
    stop: Arc<AtomicBool>,
    stats: Arc<ExportStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("autonomy-export-read".into())
        .spawn(move || {
            if let Err(e) = run(&dir, after, &limit, &tx, &stop, &stats.head_seq) {
                let _ = tx.blocking_send(Item::Failed(e));
            }
        })
}

fn run(
    dir: &std::path::Path,
    after: u64,
    limit: &Limit,
    tx: &mpsc::Sender<Item>,
    stop: &AtomicBool,
    head: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    let mut reader = Reader::open_allow_empty(dir).map_err(|e| e.to_string())?;
    reader.set_live(true);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let upto = match limit {
            Limit::Durable(w) => w.head().0.0,
            Limit::Files => u64::MAX,
        };
        if upto != u64::MAX {
            head.fetch_max(upto, Ordering::Relaxed);
        }
        let mut read_any = false;
        let mut batch = Vec::new();
        while reader.head_seq() < upto {
            let Some(r) = reader.next_record().map_err(|e| e.to_string())? else {
                break;
            };
            read_any = true;
            if r.seq.0 <= after {
                continue;
            }
            if matches!(limit, Limit::Files) {
                head.fetch_max(r.seq.0, Ordering::Relaxed);
            }
            batch.push(Rec {
                seq: r.seq.0,
                rtype: r.rtype.as_str(),
                raw: Bytes::from(r.raw),
            });
            if batch.len() >= BATCH {
                // A full channel (the broker is slow or away) holds this thread, not the WAL.
                if tx
                    .blocking_send(Item::Recs(std::mem::take(&mut batch)))
                    .is_err()
                {
                    return Ok(());
                }
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() && tx.blocking_send(Item::Recs(batch)).is_err() {
            return Ok(());
        }
        if matches!(limit, Limit::Files) {
            let torn = reader.torn_tail().map(|t| t.describe());
            let _ = tx.blocking_send(Item::End(reader.head_seq(), torn));
            return Ok(());
        }
        if !read_any {
            std::thread::sleep(POLL);
        }
    }
}
