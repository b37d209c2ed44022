//! The checkpointer: a task of the runtime that signs the WAL's durable head every N records
//! and/or every T, and once more when the runtime stops, each time appending a `checkpoint`
//! record through the log like any other record.
//!
//! It looks at the head every [`POLL`] (a lock and two loads), so "every N records" means at
//! the first look after N more records. A checkpoint signs the *durable* head as it is just
//! before its own append (size = that head's seq), so it never vouches for a record that could
//! still be lost; records appended by others in between are covered by the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Checkpoint, NoteSigner};
use crate::wal::Wal;

/// How often the head is looked at.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a stop waits for the final checkpoint before giving up on it.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// When and how to sign.
#[derive(Debug)]
pub struct CheckpointConfig {
    /// The node key.
    pub signer: NoteSigner,
    /// The checkpoints' origin line: the node id.
    pub origin: String,
    /// Sign after this many new records.
    pub every: Option<u64>,
    /// Sign this often when anything new was written.
    pub interval: Option<Duration>,
}

impl CheckpointConfig {
    /// One line for the operator: what will be signed and with which key.
    pub fn describe(&self) -> String {
        let mut when = Vec::new();
        if let Some(n) = self.every {
            when.push(format!("every {n} records"));
        }
        if let Some(t) = self.interval {
            when.push(format!("every {}", humantime::format_duration(t)));
        }
        when.push("at stop".into());
        format!(
            "signed checkpoints {} (origin {}, key {})",
            when.join(", "),
            self.origin,
            self.signer.verifier().label()
        )
    }
}

/// The running checkpointer.
pub struct Checkpointer {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

/// What the task keeps between looks.
struct State {
    cfg: CheckpointConfig,
    wal: Arc<Wal>,
    /// The seq of the last checkpoint record written (or of the head when counting began):
    /// `every` counts records after it.
    base: u64,
    /// Every record up to this seq is covered by a checkpoint of this run, or is one.
    covered: u64,
    /// The last failure reported, so a failing log is reported once, not at every look.
    last_error: Option<String>,
}

impl State {
    /// Signs the durable head and appends the checkpoint.
    async fn checkpoint(&mut self) {
        let (seq, hash) = self.wal.head();
        let rec = Checkpoint::of_head(&self.cfg.origin, seq.0, &hash)
            .and_then(|cp| cp.sign(&self.cfg.signer));
        let res = match rec {
            Ok(r) => crate::gate::record(&self.wal, None, &r)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(at) => {
                self.base = at.0;
                self.covered = at.0;
                self.last_error = None;
            }
            Err(e) => {
                if self.last_error.as_deref() != Some(&e) {
                    tracing::error!("cannot write a checkpoint of seq {}: {e}", seq.0);
                }
                self.last_error = Some(e);
            }
        }
    }

    /// Records since the last checkpoint that no checkpoint covers.
    fn uncovered(&self) -> bool {
        self.wal.head().0.0 > self.covered
    }
}

/// Starts the checkpointer over `wal` (after the runtime's `started` record).
pub fn spawn(cfg: CheckpointConfig, wal: Arc<Wal>) -> Checkpointer {
    let (stop, mut stopped) = oneshot::channel();
    // Counting begins now, not when the task first runs: records appended in between count.
    let head = wal.head().0.0;
    let handle = tokio::spawn(async move {
        let mut st = State {
            cfg,
            wal,
            base: head,
            covered: 0,
            last_error: None,
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_due = st.cfg.interval.map(|t| Instant::now() + t);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {}
            }
            let head = st.wal.head().0.0;
            let by_count = st
                .cfg
                .every
                .is_some_and(|n| head.saturating_sub(st.base) >= n);
            let by_time = next_due.is_some_and(|d| Instant::now() >= d);
            if by_time {
                next_due = st.cfg.interval.map(|t| Instant::now() + t);
            }
            if by_count || (by_time && st.uncovered()) {
                st.checkpoint().await;
            }
        }
        // The last one: as little as possible of the log stays unsigned.
        if st.uncovered() {
            st.checkpoint().await;
        }
    });
    Checkpointer { stop, handle }
}

impl Checkpointer {
    /// Writes a last checkpoint when anything new was written since the last one, then ends the
    /// task. Call before the runtime's `stopped` record.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let abort = self.handle.abort_handle();
        if tokio::time::timeout(STOP_WAIT, self.handle).await.is_err() {
            abort.abort();
            tracing::error!(
                "the last checkpoint was not written within {}s",
                STOP_WAIT.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Body, RecordType};
    use crate::wal::{NewRecord, WalOptions};

    fn rec(i: u64) -> NewRecord {
        NewRecord::new(RecordType::Marker, None)
            .with("label", "x")
            .with("line", format!("line {i}"))
            .with("status", "PASS")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signs_every_n_records_and_at_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
        let wal = Arc::new(wal);
        let signer = NoteSigner::from_seed("robot-7", &[3; 32]).unwrap();
        let vkey = signer.verifier();
        let cp = spawn(
            CheckpointConfig {
                signer,
                origin: "robot-7".into(),
                every: Some(5),
                interval: None,
            },
            wal.clone(),
        );
        for i in 0..5 {
            wal.append_async(rec(i)).await.unwrap();
        }
        // Counting: one checkpoint after 5 records (seq 6), none while nothing more is written.
        let t0 = std::time::Instant::now();
        while wal.head().0.0 < 6 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(POLL / 2).await;
        }
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(wal.head().0.0, 6);
        wal.append_async(rec(9)).await.unwrap();
        cp.stop().await;
        wal.close().unwrap();

        let recs = crate::wal::read_records(tmp.path()).unwrap();
        let cps: Vec<_> = recs
            .iter()
            .filter(|r| r.rtype == RecordType::Checkpoint)
            .collect();
        assert_eq!(cps.len(), 2, "one after 5 records, one at stop");
        // The first covers seq 5 exactly (it sits at 6); the last covers seq 7 (the 6th marker).
        for (c, size) in cps.iter().zip([5u64, 7]) {
            let Body::Checkpoint(b) = c.body().unwrap() else {
                panic!("not a checkpoint body")
            };
            let signed = super::super::open(&b.note, &vkey).unwrap();
            assert_eq!(signed.size, size);
            assert_eq!(b.size, size);
            assert_eq!(signed.root_hash(), recs[size as usize - 1].hash);
            assert_eq!(signed.origin, "robot-7");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signs_on_the_interval_only_when_something_is_new() {
        let tmp = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
        let wal = Arc::new(wal);
        wal.append_async(rec(0)).await.unwrap();
        let cp = spawn(
            CheckpointConfig {
                signer: NoteSigner::from_seed("robot-7", &[3; 32]).unwrap(),
                origin: "robot-7".into(),
                every: None,
                interval: Some(Duration::from_millis(150)),
            },
            wal.clone(),
        );
        // Several intervals pass: the one record is signed once, then nothing new, nothing signed.
        tokio::time::sleep(Duration::from_millis(800)).await;
        cp.stop().await;
        let recs = crate::wal::read_records(tmp.path()).unwrap();
        let types: Vec<_> = recs.iter().map(|r| r.rtype).collect();
        assert_eq!(types, [RecordType::Marker, RecordType::Checkpoint]);
    }
}
