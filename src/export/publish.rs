//! The publishing side of the export: connections, the stream, what is already there, the
//! pipeline of publishes and their acknowledgements, and the cursor.
//!
//! Each connection is an *epoch*: connect → bind (or create) the stream → look in the stream for
//! this node's records past the cursor (`reconcile`) → publish in seq order, up to
//! [`super::IN_FLIGHT`] awaiting acks. Any failure ends the epoch (the connection is dropped
//! and what was in flight counts as not sent); the next epoch starts again from the first record
//! not acknowledged, after a backoff. So records go in order, and the cursor only moves over a
//! prefix that JetStream acknowledged (or that reconcile found in the stream).
//!
//! Where a message may be in the stream without the cursor knowing: its ack was lost (the broker
//! or the link went down), or it was acked after the last cursor write before the daemon died.
//! Within the stream's duplicate window JetStream drops the re-send by its `Nats-Msg-Id`; after
//! a longer outage reconcile finds it first. Reconcile reads only this node's messages above
//! `scan_from`: every stream sequence at or below it was assigned before any record past the
//! cursor was first sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::source::{Item, Rec};
use super::{Control, Cursor, ExportConfig, ExportOutcome, ExportStats, cursor};

/// First wait after a failed epoch; doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a connection attempt, a JetStream API call or an ack may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Cursor writes at most this often while records flow (and once at the end).
const CURSOR_EVERY: Duration = Duration::from_millis(100);

/// A failure that ends an epoch.
#[derive(Debug)]
struct Failure {
    what: String,
    /// Retrying will not help until someone changes something (the stream's subjects, the
    /// server's max_payload): in a daemon it is retried slowly, `wal export` gives up.
    fatal: bool,
}

impl Failure {
    fn transient(what: impl std::fmt::Display) -> Failure {
        Failure {
            what: what.to_string(),
            fatal: false,
        }
    }
    fn fatal(what: impl std::fmt::Display) -> Failure {
        Failure {
            what: what.to_string(),
            fatal: true,
        }
    }
}

/// A record taken from the reader and not yet acknowledged.
struct Pending {
    rec: Rec,
    /// The lowest `hw` at any of its sends (`None`: never sent): any copy of it in the stream
    /// is at a higher stream sequence.
    sent_hw: Option<u64>,
}

/// An open connection.
struct Conn {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    /// Set when the client reports the connection lost.
    lost: watch::Receiver<bool>,
}

/// The publishing loop's state.
pub(super) struct Engine {
    cfg: ExportConfig,
    rx: mpsc::Receiver<Item>,
    control: watch::Receiver<Control>,
    stats: Arc<ExportStats>,
    /// Follows a live log (a daemon) rather than running once.
    live: bool,
    pending: VecDeque<Pending>,
    /// Every record up to here is in the stream.
    acked: u64,
    started_at: u64,
    /// The highest stream sequence seen assigned: anything stored later is above it.
    hw: u64,
    /// Records of this node past `acked` found in the stream: seq → stream sequence.
    present: BTreeMap<u64, u64>,
    /// The log's end, once the reader reached it (running once).
    end: Option<u64>,
    torn_tail: Option<String>,
    /// The reader stopped; no more records come.
    source_done: bool,
    /// The cursor as last written: (acked, scan_from).
    written: (u64, u64),
    last_write: Instant,
    writing: Option<tokio::task::JoinHandle<Result<(), cursor::CursorError>>>,
    cursor_error_logged: bool,
    down_since: Option<Instant>,
    last_error: Option<String>,
    /// Why the export cannot go on at all (the log cannot be read, the cursor is ahead of it).
    fatal_error: Option<String>,
}

impl Engine {
    pub(super) fn new(
        cfg: ExportConfig,
        cur: Cursor,
        rx: mpsc::Receiver<Item>,
        control: watch::Receiver<Control>,
        stats: Arc<ExportStats>,
        live: bool,
    ) -> Engine {
        Engine {
            cfg,
            rx,
            control,
            stats,
            live,
            pending: VecDeque::new(),
            acked: cur.acked_seq,
            started_at: cur.acked_seq,
            hw: cur.scan_from,
            present: BTreeMap::new(),
            end: None,
            torn_tail: None,
            source_done: false,
            written: (cur.acked_seq, cur.scan_from),
            last_write: Instant::now(),
            writing: None,
            cursor_error_logged: false,
            down_since: None,
            last_error: None,
            fatal_error: None,
        }
    }

    /// Runs epochs until the work is done (or the deadline passes), writes the cursor, and
    /// says how far it got.
    pub(super) async fn run(mut self) -> ExportOutcome {
        let mut backoff = BACKOFF_MIN;
        if !self.live {
            // Running once: no connection at all when the log holds nothing new.
            let deadline = until_deadline(self.control.clone());
            tokio::select! {
                item = self.rx.recv() => self.take(item),
                () = deadline => {}
            }
        }
        loop {
            if self.done() || self.past_deadline() {
                break;
            }
            let deadline = until_deadline(self.control.clone());
            let epoch = async {
                let conn = self.connect().await?;
                self.reconcile(&conn).await?;
                self.pump(&conn).await
            };
            let res = tokio::select! {
                r = epoch => r,
                () = deadline => break,
            };
            match res {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(f) => {
                    let fatal = f.fatal;
                    self.down(f);
                    if fatal && !self.live {
                        break;
                    }
                    let wait = if fatal { BACKOFF_MAX * 6 } else { backoff };
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    let mut ctl = self.control.clone();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = until_deadline(self.control.clone()) => break,
                        _ = ctl.changed() => {}
                    }
                }
            }
        }
        self.finish_cursor().await;
        let head = self.stats.head_seq.load(Ordering::Relaxed).max(self.acked);
        let reached = self
            .target()
            .is_some_and(|t| t != u64::MAX && self.acked >= t);
        let error = self.fatal_error.clone().or_else(|| {
            (!reached).then(|| {
                self.last_error.clone().unwrap_or_else(|| {
                    format!(
                        "stopped with {} record(s) not yet in the stream",
                        head - self.acked
                    )
                })
            })
        });
        ExportOutcome {
            acked_seq: self.acked,
            started_at: self.started_at,
            head_seq: head,
            error,
            torn_tail: self.torn_tail.take(),
        }
    }

    /// The last seq to export once asked to finish: the one given, or the log's end when
    /// running once (`u64::MAX` until the reader gets there); `None` while following.
    fn target(&self) -> Option<u64> {
        match *self.control.borrow() {
            Control::Run => None,
            Control::Finish { target, .. } => Some(target.min(self.end.unwrap_or(u64::MAX))),
        }
    }

    /// Everything asked for is in the stream, or nothing more can come.
    fn done(&self) -> bool {
        self.target()
            .is_some_and(|t| t != u64::MAX && self.acked >= t)
            || (self.source_done && self.pending.is_empty())
    }

    fn past_deadline(&self) -> bool {
        match *self.control.borrow() {
            Control::Run => false,
            Control::Finish { deadline, .. } => Instant::now() >= deadline,
        }
    }

    /// One line when the broker cannot be reached (not one per retry); running once, the
    /// caller's final line says it instead.
    fn down(&mut self, f: Failure) {
        self.stats.connected.store(false, Ordering::Relaxed);
        if self.down_since.is_none() && self.live {
            self.down_since = Some(Instant::now());
            if f.fatal {
                tracing::error!(
                    target: crate::NOTICE,
                    "audit export to {}: {}; records wait in the WAL (the export lag grows) until this is fixed",
                    self.cfg.display,
                    f.what
                );
            } else {
                tracing::warn!(
                    target: crate::NOTICE,
                    "audit export: NATS JetStream at {} is unavailable ({}); records wait in the WAL (the export lag grows), retrying",
                    self.cfg.display,
                    f.what
                );
            }
        }
        self.last_error = Some(f.what);
    }

    /// One line when it is back: once a publish was acknowledged (or there was nothing to
    /// send), so a broker that takes connections but refuses every publish does not flap.
    fn up(&mut self) {
        self.stats.connected.store(true, Ordering::Relaxed);
        if let Some(t) = self.down_since.take()
            && self.live
        {
            tracing::warn!(
                target: crate::NOTICE,
                "audit export: NATS JetStream at {} is back after {:.1} s; exporting from seq {} ({} record(s) behind)",
                self.cfg.display,
                t.elapsed().as_secs_f64(),
                self.acked + 1,
                self.stats.lag()
            );
        }
        self.last_error = None;
    }

    async fn connect(&mut self) -> Result<Conn, Failure> {
        let (lost_tx, lost) = watch::channel(false);
        let lost_tx = Arc::new(lost_tx);
        let opts = async_nats::ConnectOptions::new()
            .name(format!("autonomy {}", self.cfg.node))
            .connection_timeout(TIMEOUT)
            // The epoch loop reconnects (and reconciles) itself; the client must not carry a
            // half-sent pipeline over to a new connection on its own.
            .max_reconnects(Some(1))
            .event_callback(move |ev| {
                let lost_tx = lost_tx.clone();
                async move {
                    if matches!(
                        ev,
                        async_nats::Event::Disconnected | async_nats::Event::Closed
                    ) {
                        let _ = lost_tx.send(true);
                    }
                }
            });
        let client = opts
            .connect(self.cfg.servers.clone())
            .await
            .map_err(Failure::transient)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(TIMEOUT)
            .ack_timeout(TIMEOUT)
            .max_ack_inflight(self.cfg.in_flight * 2)
            .backpressure_on_inflight(true)
            .build(client);
        let stream = self.bind_stream(&js).await?;
        Ok(Conn { js, stream, lost })
    }

    /// Binds to the stream, creating it when it does not exist, and checks that it takes the
    /// subject.
    async fn bind_stream(
        &mut self,
        js: &jetstream::Context,
    ) -> Result<jetstream::stream::Stream, Failure> {
        let prefix = format!("{}.", super::SUBJECT_PREFIX);
        let subjects = if self.cfg.subject.starts_with(&prefix) {
            vec![format!("{prefix}>")]
        } else {
            vec![self.cfg.subject.clone()]
        };
        let config = jetstream::stream::Config {
            name: self.cfg.stream.clone(),
            subjects,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.cfg.replicas,
            duplicate_window: super::DUPLICATE_WINDOW,
            allow_direct: true,
            description: Some("autonomy audit records, one subject per node".into()),
            ..Default::default()
        };
        let mut stream = js.get_or_create_stream(config).await.map_err(|e| {
            let fatal = matches!(
                e.kind(),
                jetstream::context::CreateStreamErrorKind::JetStream(_)
                    | jetstream::context::CreateStreamErrorKind::InvalidStreamName
                    | jetstream::context::CreateStreamErrorKind::EmptyStreamName
            );
            let what = format!("cannot bind or create stream {}: {e}", self.cfg.stream);
            if fatal {
                Failure::fatal(what)
            } else {
                Failure::transient(what)
            }
        })?;
        let info = stream.info().await.map_err(Failure::transient)?;
        if !info
            .config
            .subjects
            .iter()
            .any(|f| subject_matches(f, &self.cfg.subject))
        {
            return Err(Failure::fatal(format!(
                "stream {} does not take subject {} (its subjects: {}); add it to the stream or give --export-subject one it takes",
                self.cfg.stream,
                self.cfg.subject,
                info.config.subjects.join(", ")
            )));
        }
        if info.state.last_sequence < self.hw {
            // The stream was recreated or purged since the cursor was written: its sequences
            // start again, and nothing above the old ones tells what is there.
            tracing::warn!(
                target: crate::NOTICE,
                "audit export: stream {} ends at sequence {} but the cursor looked from {} on: the stream was recreated or purged; records after seq {} are exported again where missing",
                self.cfg.stream,
                info.state.last_sequence,
                self.hw,
                self.acked
            );
            // Search the new stream from its start.
            self.hw = 0;
            self.present.clear();
            for p in &mut self.pending {
                p.sent_hw = p.sent_hw.map(|_| 0);
            }
        }
        Ok(stream)
    }

    /// Finds records of this node past the cursor that are already in the stream, so they are
    /// not sent again.
    async fn reconcile(&mut self, c: &Conn) -> Result<(), Failure> {
        let from = self.scan_from();
        let last = match c
            .stream
            .get_last_raw_message_by_subject(&self.cfg.subject)
            .await
        {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(());
            }
            Err(e) => return Err(Failure::transient(format!("cannot read the stream: {e}"))),
        };
        self.hw = self.hw.max(last);
        if last <= from {
            return Ok(());
        }
        let consumer = c
            .stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: self.cfg.subject.clone(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                },
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::transient(format!("cannot read the stream: {e}")))?;
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|e| Failure::transient(format!("cannot read the stream: {e}")))?;
        let mine = format!("{}:", self.cfg.node);
        loop {
            let m = match tokio::time::timeout(TIMEOUT, msgs.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    return Err(Failure::transient(format!("cannot read the stream: {e}")));
                }
                Ok(None) | Err(_) => {
                    return Err(Failure::transient(
                        "cannot read the stream: no messages within 5 s",
                    ));
                }
            };
            let info = m
                .info()
                .map_err(|e| Failure::transient(format!("cannot read the stream: {e}")))?;
            let (sseq, left) = (info.stream_sequence, info.pending);
            let seq = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .and_then(|id| id.as_str().strip_prefix(&mine))
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(seq) = seq
                && seq > self.acked
            {
                self.present.entry(seq).or_insert(sseq);
            }
            if sseq >= last || left == 0 {
                break;
            }
        }
        Ok(())
    }

    /// The stream sequence above which every message of this node past the cursor lies.
    fn scan_from(&self) -> u64 {
        let sent = self.pending.iter().filter_map(|p| p.sent_hw).min();
        let found = self
            .present
            .range(self.acked + 1..)
            .map(|(_, &s)| s.saturating_sub(1))
            .min();
        [Some(self.hw), sent, found]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0)
    }

    /// Takes one item from the reader.
    fn take(&mut self, item: Option<Item>) {
        match item {
            Some(Item::Recs(recs)) => {
                if let Some(last) = recs.last() {
                    self.stats.head_seq.fetch_max(last.seq, Ordering::Relaxed);
                }
                self.pending
                    .extend(recs.into_iter().map(|rec| Pending { rec, sent_hw: None }));
            }
            Some(Item::End(head, torn)) => {
                self.stats.head_seq.fetch_max(head, Ordering::Relaxed);
                if head < self.acked {
                    self.fatal_error =
                        Some(super::ahead(&self.cfg.wal_dir, self.acked, head).to_string());
                }
                self.end = Some(head);
                self.torn_tail = torn;
                self.source_done = true;
            }
            Some(Item::Failed(e)) => {
                tracing::error!(
                    target: crate::NOTICE,
                    "audit export: cannot read the WAL any further: {e}; the records before it are exported"
                );
                self.fatal_error = Some(e);
                self.source_done = true;
            }
            None => self.source_done = true,
        }
    }

    /// Publishes in order, pipelined, until done or the epoch fails.
    async fn pump(&mut self, c: &Conn) -> Result<(), Failure> {
        let mut acks: FuturesOrdered<BoxFuture<'static, Result<(u64, u64), Failure>>> =
            FuturesOrdered::new();
        let mut next = 0usize;
        let mut lost = c.lost.clone();
        let mut tick = tokio::time::interval(CURSOR_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ctl = self.control.clone();
        let deadline = until_deadline(self.control.clone());
        tokio::pin!(deadline);
        let mut confirmed = false;
        loop {
            // Fill the window: pending records not yet sent in this epoch, then new ones.
            while acks.len() < self.cfg.in_flight {
                if next == self.pending.len() {
                    if self.source_done {
                        break;
                    }
                    match self.rx.try_recv() {
                        Ok(item) => {
                            self.take(Some(item));
                            continue;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            self.take(None);
                            break;
                        }
                    }
                }
                let hw = self.hw;
                let p = &mut self.pending[next];
                next += 1;
                let seq = p.rec.seq;
                if let Some(&sseq) = self.present.get(&seq) {
                    p.sent_hw = Some(sseq.saturating_sub(1));
                    acks.push_back(Box::pin(async move { Ok((seq, sseq)) }));
                    continue;
                }
                p.sent_hw = Some(p.sent_hw.map_or(hw, |h| h.min(hw)));
                let msg = jetstream::message::PublishMessage::build()
                    .payload(p.rec.raw.clone())
                    .message_id(format!("{}:{seq}", self.cfg.node))
                    .header(super::HEADER_SEQ, seq.to_string())
                    .header(super::HEADER_TYPE, p.rec.rtype)
                    .header(super::HEADER_NODE, self.cfg.node.as_str())
                    .expected_stream(self.cfg.stream.as_str());
                let fut = c
                    .js
                    .send_publish(self.cfg.subject.clone(), msg)
                    .await
                    .map_err(|e| {
                        let fatal = e.kind()
                            == jetstream::context::PublishErrorKind::MaxPayloadExceeded;
                        let what = format!("cannot publish record seq {seq}: {e}");
                        if fatal {
                            Failure::fatal(format!(
                                "{what} (records can be up to 2 MiB: set max_payload to 4MB or more in the NATS server's config)"
                            ))
                        } else {
                            Failure::transient(what)
                        }
                    })?;
                let stream = self.cfg.stream.clone();
                acks.push_back(Box::pin(async move {
                    let ack = fut.await.map_err(|e| {
                        Failure::transient(format!("no acknowledgement for record seq {seq}: {e}"))
                    })?;
                    if ack.stream != stream {
                        return Err(Failure::fatal(format!(
                            "record seq {seq} was stored in stream {}, not {stream}",
                            ack.stream
                        )));
                    }
                    Ok((seq, ack.sequence))
                }));
            }
            if !confirmed && acks.is_empty() {
                confirmed = true;
                self.up();
            }
            if self.done() {
                return Ok(());
            }
            let want_more =
                next == self.pending.len() && acks.len() < self.cfg.in_flight && !self.source_done;
            tokio::select! {
                biased;
                r = lost.changed() => {
                    if r.is_err() || *lost.borrow() {
                        return Err(Failure::transient("the connection was lost"));
                    }
                }
                r = acks.next(), if !acks.is_empty() => {
                    let Some(r) = r else { continue };
                    let (seq, sseq) = r?;
                    if !confirmed {
                        confirmed = true;
                        self.up();
                    }
                    let Some(front) = self.pending.pop_front() else {
                        return Err(Failure::fatal("an acknowledgement for a record not sent"));
                    };
                    debug_assert_eq!(front.rec.seq, seq);
                    next = next.saturating_sub(1);
                    self.acked = seq;
                    self.hw = self.hw.max(sseq);
                    self.present = self.present.split_off(&(seq + 1));
                    self.stats.acked_seq.store(seq, Ordering::Relaxed);
                    if self.last_write.elapsed() >= CURSOR_EVERY {
                        self.write_cursor();
                    }
                }
                item = self.rx.recv(), if want_more => self.take(item),
                _ = tick.tick() => self.write_cursor(),
                _ = ctl.changed() => {}
                () = &mut deadline => return Ok(()),
            }
        }
    }

    /// Starts a cursor write when the cursor moved and none is running.
    fn write_cursor(&mut self) {
        if let Some(h) = &self.writing {
            if !h.is_finished() {
                return;
            }
            if let Some(h) = self.writing.take() {
                // Finished: its result is ready without waiting.
                if let Some(Ok(Err(e))) = futures::FutureExt::now_or_never(h) {
                    self.cursor_failed(&e);
                }
            }
        }
        let now = (self.acked, self.scan_from());
        if now == self.written {
            return;
        }
        let c = self.cursor();
        let dir = self.cfg.wal_dir.clone();
        self.written = now;
        self.last_write = Instant::now();
        self.writing = Some(tokio::task::spawn_blocking(move || cursor::store(&dir, &c)));
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            node: self.cfg.node.as_str().to_string(),
            stream: self.cfg.stream.clone(),
            subject: self.cfg.subject.clone(),
            acked_seq: self.acked,
            scan_from: self.scan_from(),
            updated: crate::wal::now_rfc3339(),
        }
    }

    fn cursor_failed(&mut self, e: &cursor::CursorError) {
        if !self.cursor_error_logged {
            self.cursor_error_logged = true;
            tracing::error!(
                target: crate::NOTICE,
                "audit export: cannot write the cursor: {e}; the export goes on, and a restart sends again what the cursor missed"
            );
        }
    }

    /// Waits for a running write, then writes the final cursor.
    async fn finish_cursor(&mut self) {
        if let Some(h) = self.writing.take()
            && let Ok(Err(e)) = h.await
        {
            self.cursor_failed(&e);
        }
        if (self.acked, self.scan_from()) == self.written {
            return;
        }
        let c = self.cursor();
        let dir = self.cfg.wal_dir.clone();
        match tokio::task::spawn_blocking(move || cursor::store(&dir, &c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.cursor_failed(&e),
            Err(_) => {}
        }
    }
}

/// Resolves at the deadline of a `Finish`, following changes of the control; never while
/// following the log.
async fn until_deadline(mut ctl: watch::Receiver<Control>) {
    loop {
        let d = match *ctl.borrow_and_update() {
            Control::Run => None,
            Control::Finish { deadline, .. } => Some(deadline),
        };
        let changed = async {
            if ctl.changed().await.is_err() {
                // The sender is gone: the control never changes again.
                std::future::pending::<()>().await;
            }
        };
        match d {
            Some(d) => tokio::select! {
                () = tokio::time::sleep_until(d) => return,
                () = changed => {}
            },
            None => changed.await,
        }
    }
}

/// Whether NATS subject filter `filter` (`*` one token, `>` the rest) takes `subject`.
pub(super) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subject_filters() {
        assert!(subject_matches(
            "autonomy.audit.>",
            "autonomy.audit.robot-7"
        ));
        assert!(subject_matches("autonomy.audit.>", "autonomy.audit.a.b"));
        assert!(!subject_matches("autonomy.audit.>", "autonomy.audit"));
        assert!(subject_matches("autonomy.*.x", "autonomy.audit.x"));
        assert!(!subject_matches("autonomy.*", "autonomy.audit.x"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
    }
}
