//! The governed topic bridge: topics relayed between an agent DDS domain and the robot's, each
//! agent → robot message decided by the gate before it is republished.
//!
//! Per agent → robot message: decode (CDR → JSON, [`cdr`]) → [`Gate::decide`] as
//! `tool.ros2.topic.publish` with params `{topic, type, message}` and `input.rate` → the
//! record is queued in the WAL → republish the original bytes on the robot side if allowed (the
//! patched message's, re-encoded, if the policy downgraded it: [`patch`]):
//! after the record is durable (`strict`), or at once with the record durable within the
//! topic's window (`batched`, [`Durability::Deferred`]). A message that does not decode is
//! refused at the gate ([`Gate::refuse_input`]), recorded as malformed. A gate or WAL failure
//! drops the message. Denied and refused messages are published on the agent side's
//! `/autonomy/decisions`. Each topic keeps its order: one reader task decides in arrival order,
//! one task waits for the records in that order and republishes. A `strict` message with nothing
//! of its topic in flight and no next one arrived is waited for by the reader task itself
//! ([`Durability::AwaitedAtOnce`]): at a low rate its flush and republish then run on one thread.
//!
//! Robot → agent topics (read-only feeds) are relayed without a decision, counted.
//!
//! Deny means stop, where configured: a topic with `on_deny = "publish"` answers every message
//! it does not relay (denied, malformed, or unrecordable) with its safe message on the robot
//! side, and a topic with `max_silence_ms` publishes it once when no allowed message has been
//! relayed for that long ([`Relay::watchdog`]). The safe message bypasses the policy (it is the
//! stop the policy's refusals call for, so the policy must not be able to refuse it) but is
//! always recorded first (`bridge.safe_published`); when that record cannot be written, it is
//! published all the same (stopping is the safe side) and the first such failure per topic is
//! one error line.

pub(crate) mod builtin;
pub mod cdr;
pub mod config;
pub mod dds;
mod metrics;
pub mod msgdef;
mod patch;
pub mod rate;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, watch};

use crate::gate::{Durability, Gate, GateResponse, Outcome, Pending, ToolCall};
use crate::record::{BridgeCounts, BridgeSafePublished, BridgeStarted, BridgeStopped, BridgeTopic};
use crate::ros::DecisionMsg;
use crate::stats::Histogram;
use crate::types::{AuditId, Decision, Source, ToolKind};
use cdr::{Decoder, Encoder, WcharWidth};
use config::{Audit, BridgeFile, Direction, OnDeny, TopicConfig};
use dds::{CDR_LE, RawSample, RawWriter, Side, Timestamp};
use msgdef::{Library, TypeSet};

/// What policies see as `input.source` for bridged messages.
pub const SOURCE: Source = Source::new("bridge");
/// The node on both domains.
pub const NODE_NAME: &str = "autonomy_bridge";
/// The kind every bridged message is decided as.
pub const KIND: &str = "tool.ros2.topic.publish";
/// The agent's domain when `--agent-domain` is not given.
pub const DEFAULT_AGENT_DOMAIN: u16 = 99;
/// Decided messages of one topic waiting for their records (strict) or being tracked
/// (batched); a full queue holds the topic's reader back.
pub const PIPELINE: usize = 4096;
/// A `batched` topic's records may wait this share of its window (a quarter: 2.5 ms of the
/// default 10) for later ones to share their fdatasync: at 1 kHz three or so per flush instead
/// of one each, and still durable well inside the window.
pub const FLUSH_WITHIN_SHARE: u32 = 4;
/// Decision messages waiting for the agent side's `/autonomy/decisions` publisher before new
/// ones are dropped.
pub const DECISION_QUEUE: usize = 1024;

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Both sides on one domain: nothing would separate the agent from the robot.
    #[error(
        "the agent and the robot are both on DDS domain {0}: give the bridge two domains (--agent-domain N, ROS_DOMAIN_ID for the robot)"
    )]
    SameDomain(u16),
    /// A topic's type cannot be resolved.
    #[error("bridge topic {topic}: {error}")]
    Type {
        /// The topic.
        topic: String,
        /// Why.
        error: msgdef::MsgError,
    },
    /// A topic's safe message is not a value of its type.
    #[error("bridge topic {topic}: {error}")]
    SafeMessage {
        /// The topic.
        topic: String,
        /// Why, naming the field (`safe_message.linear.w: …`).
        error: String,
    },
    /// DDS entities could not be made.
    #[error("{0}")]
    Dds(String),
    /// The `bridge.started` record could not be written.
    #[error("{0}")]
    Wal(#[from] crate::wal::WalError),
}

/// Everything the bridge needs to start, checked: the domains differ and every topic's type
/// resolved.
pub struct BridgeConfig {
    /// The topics.
    pub file: BridgeFile,
    /// The agent's domain.
    pub agent_domain: u16,
    /// The robot's domain (`ROS_DOMAIN_ID`).
    pub robot_domain: u16,
    /// How `wstring` code units are sized on the agent's wire.
    pub wchar: WcharWidth,
    /// Every type the topics use.
    set: TypeSet,
    /// Each topic's type in `set`.
    ids: Vec<usize>,
    /// Each topic's safe message, encoded, when it has one.
    safe: Vec<Option<SafeMessage>>,
}

/// A topic's safe message, checked against its type at start.
#[derive(Debug, Clone)]
struct SafeMessage {
    /// The CDR payload published on the robot side.
    bytes: dds::Bytes,
    /// Every field spelled out (decoded back from `bytes`), for the `bridge.started` record.
    json: Map<String, Value>,
}

impl BridgeConfig {
    /// Checks the domains (they must differ) and resolves every topic's type in `library`.
    pub fn new(
        file: BridgeFile,
        agent_domain: u16,
        robot_domain: u16,
        library: &Library,
        wchar: WcharWidth,
    ) -> Result<BridgeConfig, BridgeError> {
        if agent_domain == robot_domain {
            return Err(BridgeError::SameDomain(agent_domain));
        }
        let mut set = TypeSet::new();
        let mut ids = Vec::with_capacity(file.topics.len());
        for t in &file.topics {
            let id = set
                .resolve(library, &t.type_name)
                .map_err(|error| BridgeError::Type {
                    topic: t.name.clone(),
                    error,
                })?;
            ids.push(id);
        }
        let mut safe = Vec::with_capacity(ids.len());
        for (t, id) in file.topics.iter().zip(&ids) {
            safe.push(match &t.safe_message {
                None => None,
                Some(m) => Some(safe_message(&set, *id, wchar, m).map_err(|error| {
                    BridgeError::SafeMessage {
                        topic: t.name.clone(),
                        error,
                    }
                })?),
            });
        }
        Ok(BridgeConfig {
            file,
            agent_domain,
            robot_domain,
            wchar,
            set,
            ids,
            safe,
        })
    }

    /// The `wstring` width for an `RMW_IMPLEMENTATION` value (Cyclone: 2 bytes; else 4).
    pub fn wchar_for(rmw: Option<&str>) -> WcharWidth {
        match rmw.map(str::trim) {
            Some("rmw_cyclonedds_cpp") => WcharWidth::Two,
            _ => WcharWidth::Four,
        }
    }

    /// The one line printed on start.
    pub fn describe(&self) -> String {
        let n = |d: Direction| self.file.topics.iter().filter(|t| t.direction == d).count();
        format!(
            "topic bridge /{NODE_NAME}: agent domain {} → robot domain {} ({} topic(s) governed, {} read-only feed(s) back)",
            self.agent_domain,
            self.robot_domain,
            n(Direction::AgentToRobot),
            n(Direction::RobotToAgent)
        )
    }
}

/// Encodes a configured safe message as the topic's type; the error names the field.
fn safe_message(
    set: &TypeSet,
    id: usize,
    wchar: WcharWidth,
    m: &Map<String, Value>,
) -> Result<SafeMessage, String> {
    let bytes = Encoder::new(set, wchar).encode(id, m).map_err(|e| {
        let name = set.get(id).map_or("", |t| t.name.as_str());
        if e.path.is_empty() {
            format!("safe_message: {} (a {name})", e.what)
        } else {
            format!("safe_message.{}: {}", e.path, e.what)
        }
    })?;
    let json = Decoder::new(set, wchar)
        .decode(id, &bytes)
        .map_err(|e| format!("safe_message: does not decode as its type ({e})"))?;
    Ok(SafeMessage {
        bytes: dds::Bytes::from(bytes),
        json,
    })
}

/// One topic's counts (see [`BridgeCounts`]).
#[derive(Debug)]
pub struct Counters {
    received: AtomicU64,
    relayed: AtomicU64,
    denied: AtomicU64,
    malformed: AtomicU64,
    failed: AtomicU64,
    safe_published: AtomicU64,
    /// The topic has a safe message (so `safe_published` is reported).
    has_safe: bool,
    /// Per relayed message, from its arrival in the DDS layer to its republish on the other
    /// side (nanoseconds): what the bridge itself adds, the disk's wait included for `strict`.
    relay: Histogram,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            received: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            safe_published: AtomicU64::new(0),
            has_safe: false,
            relay: Histogram::latency(),
        }
    }
}

/// How long ago the DDS layer received a sample, by its receive stamp (wall clock, the only
/// clock the sample carries); zero if the clock stepped back since.
fn since_arrival(received: Timestamp) -> Duration {
    let ticks = Timestamp::now()
        .to_ticks()
        .saturating_sub(received.to_ticks());
    // Ticks are 2^-32 s.
    Duration::from_nanos(((u128::from(ticks) * 1_000_000_000) >> 32) as u64)
}

impl Counters {
    fn add(c: &AtomicU64) -> u64 {
        c.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The counts now.
    pub fn snapshot(&self, name: &str) -> BridgeCounts<'static> {
        BridgeCounts {
            denied: Self::get(&self.denied),
            failed: Self::get(&self.failed),
            malformed: Self::get(&self.malformed),
            name: name.to_string().into(),
            received: Self::get(&self.received),
            relayed: Self::get(&self.relayed),
            safe_published: self.has_safe.then(|| Self::get(&self.safe_published)),
        }
    }
}

/// The running bridge; stop it with [`BridgeHandle::shutdown`] before the runtime.
pub struct BridgeHandle {
    gate: Arc<Gate>,
    topics: Vec<(String, Arc<Counters>)>,
    stop: watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    sides: Vec<Side>,
    decisions: Option<std::thread::JoinHandle<()>>,
    decisions_tx: Option<mpsc::Sender<DecisionMsg>>,
}

impl BridgeHandle {
    /// Each topic's counts now.
    pub fn counts(&self) -> Vec<BridgeCounts<'static>> {
        self.topics.iter().map(|(n, c)| c.snapshot(n)).collect()
    }

    /// Stops reading, lets decided messages finish (their records and republishes), records
    /// `bridge.stopped` with the counts, and stops both nodes. Returns the counts.
    pub async fn shutdown(mut self) -> Vec<BridgeCounts<'static>> {
        let _ = self.stop.send(true);
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
        }
        let counts = self.counts();
        let body = BridgeStopped {
            event: Default::default(),
            topics: counts.clone(),
        };
        if let Err(e) = self.gate.record(None, &body).await {
            tracing::error!(target: crate::NOTICE, "cannot record the bridge's stop: {e}");
        }
        drop(self.decisions_tx.take());
        if let Some(p) = self.decisions.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(move || p.join()),
            )
            .await;
        }
        for s in self.sides.drain(..) {
            s.shutdown().await;
        }
        counts
    }
}

impl crate::runtime::FrontEnd for BridgeHandle {
    async fn shutdown(self) {
        BridgeHandle::shutdown(self).await;
    }
}

/// What every type a topic uses advertises in discovery (REP 2011 hashes, Jazzy only).
fn user_data(set: &TypeSet, topics: &[TopicConfig]) -> Result<Vec<(String, Vec<u8>)>, BridgeError> {
    #[cfg(feature = "jazzy")]
    {
        let mut out = crate::ros::type_hash::endpoint_user_data()
            .map_err(|e| BridgeError::Dds(e.to_string()))?;
        for t in topics {
            let hash = crate::ros::type_hash::rihs01_from_msgs(&t.type_name, set.texts())
                .map_err(|e| BridgeError::Dds(format!("bridge topic {}: {e}", t.name)))?;
            if let Some(dds) = crate::ros::type_hash::dds_type_name(&t.type_name) {
                out.push((dds, format!("typehash={hash};").into_bytes()));
            }
        }
        Ok(out)
    }
    #[cfg(not(feature = "jazzy"))]
    {
        let _ = (set, topics);
        Ok(Vec::new())
    }
}

/// Starts the bridge as a front end of `runtime` (call after [`crate::runtime::Runtime::start`]):
/// resolves every topic's type, records `bridge.started`, and relays until stopped.
pub async fn start(
    runtime: &crate::runtime::Runtime,
    config: BridgeConfig,
) -> Result<BridgeHandle, BridgeError> {
    let gate = runtime.gate().clone();
    let kind = ToolKind::parse(KIND).map_err(|e| BridgeError::Dds(format!("{KIND}: {e}")))?;
    let BridgeConfig {
        file,
        agent_domain,
        robot_domain,
        wchar,
        set,
        ids,
        safe,
    } = config;
    let ud = user_data(&set, &file.topics)?;
    let set = Arc::new(set);
    let mut agent = Side::new(agent_domain, &ud)?;
    let mut robot = Side::new(robot_domain, &ud)?;

    // The agent side's /autonomy/decisions: the agent learns why a message was dropped. A plain
    // thread: a reliable DDS write may wait for buffer space.
    let publisher = agent.decisions()?;
    let (dtx, mut drx) = mpsc::channel::<DecisionMsg>(DECISION_QUEUE);
    let decisions = std::thread::Builder::new()
        .name("autonomy-bridge-decisions".into())
        .spawn(move || {
            while let Some(m) = drx.blocking_recv() {
                if let Err(e) = publisher.publish(m) {
                    tracing::warn!("bridge: cannot publish a decision: {e:?}");
                }
            }
        })
        .ok();

    let started = BridgeStarted {
        agent_domain,
        event: Default::default(),
        robot_domain,
        topics: file
            .topics
            .iter()
            .zip(&safe)
            .map(|(t, s)| BridgeTopic {
                audit: (t.direction == Direction::AgentToRobot).then(|| t.audit.as_str().into()),
                batch_window_ms: match (t.direction, t.audit) {
                    (Direction::AgentToRobot, Audit::Batched { window }) => {
                        Some(window.as_millis() as u64)
                    }
                    _ => None,
                },
                direction: t.direction.as_str().into(),
                max_silence_ms: t.max_silence.map(|d| d.as_millis() as u64),
                name: t.name.as_str().into(),
                on_deny: (t.on_deny == OnDeny::Publish).then(|| t.on_deny.as_str().into()),
                safe_message: s.as_ref().map(|s| std::borrow::Cow::Borrowed(&s.json)),
                type_name: t.type_name.as_str().into(),
            })
            .collect(),
    };
    gate.record(None, &started).await?;

    let (stop, stop_rx) = watch::channel(false);
    let mut readers = Vec::new();
    let mut topics = Vec::new();
    for ((t, id), safe) in file.topics.iter().zip(ids).zip(safe) {
        let counters = Arc::new(Counters {
            has_safe: safe.is_some(),
            ..Counters::default()
        });
        topics.push((t.name.clone(), counters.clone()));
        match t.direction {
            Direction::AgentToRobot => {
                let reader = agent.reader(t)?;
                let writer = Arc::new(robot.writer(t)?);
                let safe = safe.map(|m| {
                    Arc::new(Safe {
                        sample: RawSample {
                            repr: CDR_LE,
                            data: m.bytes,
                        },
                        on_deny: t.on_deny == OnDeny::Publish,
                        max_silence: t.max_silence,
                        robot: tokio::sync::Mutex::new(()),
                        deadline: std::sync::Mutex::new(None),
                        armed: Notify::new(),
                        unrecorded: AtomicU64::new(0),
                        unwritten: AtomicU64::new(0),
                    })
                });
                let relay = Relay {
                    kind: kind.clone(),
                    agent: crate::types::Agent::new(format!("bridge:{}", t.name)),
                    topic: Arc::new(t.clone()),
                    type_id: id,
                    set: set.clone(),
                    wchar,
                    gate: gate.clone(),
                    writer,
                    counters,
                    decisions: dtx.clone(),
                    safe,
                };
                let relay = Arc::new(relay);
                if relay.safe.as_ref().is_some_and(|s| s.max_silence.is_some()) {
                    readers.push(tokio::spawn(relay.clone().watchdog(stop_rx.clone())));
                }
                readers.push(tokio::spawn(relay.run(reader, stop_rx.clone())));
            }
            Direction::RobotToAgent => {
                let reader = robot.reader(t)?;
                let writer = agent.writer(t)?;
                readers.push(tokio::spawn(feed(
                    t.name.clone(),
                    reader,
                    writer,
                    counters,
                    stop_rx.clone(),
                )));
            }
        }
    }
    // metrics: each topic's counts in `GET /metrics`.
    gate.metrics().add_source(Arc::new(metrics::BridgeMetrics {
        topics: (file.topics.iter().zip(&topics))
            .map(|(t, (name, c))| (name.clone(), t.direction, c.clone()))
            .collect(),
    }));
    Ok(BridgeHandle {
        gate,
        topics,
        stop,
        readers,
        sides: vec![agent, robot],
        decisions,
        decisions_tx: Some(dtx),
    })
}

/// Logs the first occurrence of a problem on a topic as one line; the later ones are only
/// counted (the counts are printed and recorded when the bridge stops).
fn log_first(n: u64, line: impl FnOnce() -> String) {
    if n == 1 {
        tracing::error!(target: crate::NOTICE, "{}", line());
    }
}

/// A robot → agent feed: every sample relayed as it came, counted.
async fn feed(
    name: String,
    reader: dds::RawReader,
    writer: RawWriter,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let stream = reader.as_async_stream();
    futures::pin_mut!(stream);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            item = stream.next() => match item {
                Some(Ok(dcc)) => {
                    Counters::add(&counters.received);
                    let s = dcc.sample;
                    if s.repr != CDR_LE {
                        let n = Counters::add(&counters.malformed);
                        log_first(n, || format!("bridge: {name}: a sample in encoding {:?} was not relayed (only little-endian CDR is)", s.repr));
                        continue;
                    }
                    match writer.write(s, None) {
                        Ok(()) => {
                            Counters::add(&counters.relayed);
                            counters.relay.observe_duration(since_arrival(dcc.receive_instant));
                        }
                        Err(e) => {
                            let n = Counters::add(&counters.failed);
                            log_first(n, || format!("bridge: {name}: cannot relay to the agent side: {e:?}"));
                        }
                    }
                }
                Some(Err(e)) => {
                    Counters::add(&counters.received);
                    let n = Counters::add(&counters.malformed);
                    log_first(n, || format!("bridge: {name}: unreadable sample: {e:?}"));
                }
                None => break,
            }
        }
    }
}

/// One agent → robot topic.
struct Relay {
    kind: ToolKind,
    /// `bridge:<topic>`: the caller as policies and rate limits see it.
    agent: crate::types::Agent,
    topic: Arc<TopicConfig>,
    type_id: usize,
    set: Arc<TypeSet>,
    wchar: WcharWidth,
    gate: Arc<Gate>,
    writer: Arc<RawWriter>,
    counters: Arc<Counters>,
    decisions: mpsc::Sender<DecisionMsg>,
    /// The topic's safe message, when it has one.
    safe: Option<Arc<Safe>>,
}

/// A topic's safe message and its watchdog.
struct Safe {
    /// What is published on the robot side.
    sample: RawSample,
    /// Published for every message not relayed (`on_deny = "publish"`).
    on_deny: bool,
    /// The watchdog's bound.
    max_silence: Option<Duration>,
    /// Held for each write on the robot side, so that the watchdog's decision that the topic is
    /// silent and its safe message cannot cross a relayed message (which would stop a robot
    /// the agent had just commanded again).
    robot: tokio::sync::Mutex<()>,
    /// When the watchdog fires: set by each relayed message, cleared by any safe message.
    /// `None`: not armed (before the first relayed message, and after a stop).
    deadline: std::sync::Mutex<Option<Instant>>,
    /// Wakes the watchdog when `deadline` moves.
    armed: Notify,
    /// Safe messages published without their record (the WAL failed).
    unrecorded: AtomicU64,
    /// Safe messages the robot side's writer refused.
    unwritten: AtomicU64,
}

impl Safe {
    fn deadline(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A decided message on its way to its durable record (and, strict, its republish).
struct InFlight {
    pending: Pending,
    /// The sample to republish once the record is durable (strict allows only).
    sample: Option<RawSample>,
    /// When the DDS layer received it.
    received: Timestamp,
}

/// How far the records of a batched topic have become durable, for the window check.
#[derive(Default)]
struct Progress {
    /// Messages of the topic whose record is durable (or failed), counted in order.
    done: AtomicU64,
    changed: Notify,
}

impl Relay {
    fn call(&self, params: Map<String, Value>) -> ToolCall {
        ToolCall {
            kind: self.kind.clone(),
            params,
            source: SOURCE,
            agent: self.agent.clone(),
        }
    }

    fn params(&self, extra: Option<(&str, Value)>) -> Map<String, Value> {
        let mut p = Map::with_capacity(3);
        p.insert("topic".into(), Value::String(self.topic.name.clone()));
        p.insert("type".into(), Value::String(self.topic.type_name.clone()));
        if let Some((k, v)) = extra {
            p.insert(k.into(), v);
        }
        p
    }

    /// Decodes and decides one sample, in arrival order.
    async fn decide(&self, s: &RawSample, rate: usize, mode: Durability) -> Pending {
        let refuse = |why: String, len: usize| {
            let params = self.params(Some(("bytes", Value::from(len))));
            (params, format!("malformed message: {why}"))
        };
        let decoded = if s.repr != CDR_LE {
            Err(refuse(
                format!(
                    "encoding {:02x}{:02x} is not little-endian CDR (0001)",
                    s.repr[0], s.repr[1]
                ),
                s.data.len(),
            ))
        } else if s.data.len() > self.topic.max_bytes as usize {
            Err(refuse(
                format!(
                    "{} bytes exceed the topic's max_bytes {}",
                    s.data.len(),
                    self.topic.max_bytes
                ),
                s.data.len(),
            ))
        } else {
            Decoder::new(&self.set, self.wchar)
                .decode(self.type_id, &s.data)
                .map_err(|e| refuse(format!("{} {e}", self.topic.type_name), s.data.len()))
        };
        match decoded {
            Ok(message) => {
                let params = self.params(Some(("message", Value::Object(message))));
                let mut extra = Map::with_capacity(1);
                extra.insert("rate".into(), Value::from(rate));
                let target = patch::MessagePatch {
                    set: &self.set,
                    type_id: self.type_id,
                    type_name: &self.topic.type_name,
                    wchar: self.wchar,
                };
                self.gate
                    .decide(self.call(params), Some(&extra), &target, mode)
                    .await
            }
            Err((params, reason)) => self.gate.refuse_input(self.call(params), reason).await,
        }
    }

    async fn run(self: Arc<Self>, reader: dds::RawReader, mut stop: watch::Receiver<bool>) {
        let (tx, rx) = mpsc::channel::<InFlight>(PIPELINE);
        let progress = Arc::new(Progress::default());
        let me = self;
        let finisher = tokio::spawn(me.clone().finish(rx, progress.clone()));
        let (mode, window) = match me.topic.audit {
            Audit::Strict => (Durability::BeforeActing, None),
            Audit::Batched { window } => (
                Durability::Deferred {
                    flush_within: window / FLUSH_WITHIN_SHARE,
                },
                Some(window),
            ),
        };
        let mut rate = rate::Rate::default();
        // Batched: when each message republished before its record was durable was sent (its
        // index among the topic's messages).
        let mut early: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut index: u64 = 0;
        let stream = reader.as_async_stream().peekable();
        futures::pin_mut!(stream);
        loop {
            let item = tokio::select! {
                _ = stop.changed() => break,
                item = stream.next() => match item {
                    Some(i) => i,
                    None => break,
                },
            };
            Counters::add(&me.counters.received);
            let now = Instant::now();
            let r = rate.tick(now);
            let pending = match item {
                Ok(dcc) => {
                    let received = dcc.receive_instant;
                    let s = dcc.sample;
                    // Strict, with every earlier message settled and no later one arrived yet:
                    // this task waits for the record itself and republishes, so at a low rate
                    // the flush runs here and the finisher is not woken.
                    let here = window.is_none()
                        && progress.done.load(Ordering::Acquire) == index
                        && stream.as_mut().peek().now_or_never().is_none();
                    let durability = if here {
                        Durability::AwaitedAtOnce
                    } else {
                        mode
                    };
                    let p = me.decide(&s, r, durability).await;
                    if here {
                        let sample = p.early().is_none().then_some(s);
                        me.settle(
                            InFlight {
                                pending: p,
                                sample,
                                received,
                            },
                            &progress,
                        )
                        .await;
                        index += 1;
                        continue;
                    }
                    let allowed_now = p
                        .early()
                        .is_some_and(|resp| resp.decision == Decision::Allow);
                    if allowed_now && let Some(w) = window {
                        wait_window(&progress, &mut early, w).await;
                        let s = match p.early() {
                            Some(resp) => relayed(resp, s),
                            None => s,
                        };
                        me.publish(s, received).await;
                        early.push_back((index, Instant::now()));
                        InFlight {
                            pending: p,
                            sample: None,
                            received,
                        }
                    } else if p.early().is_none() {
                        // Strict: republished only once the record is durable.
                        InFlight {
                            pending: p,
                            sample: Some(s),
                            received,
                        }
                    } else {
                        InFlight {
                            pending: p,
                            sample: None,
                            received,
                        }
                    }
                }
                Err(e) => {
                    let params = me.params(None);
                    let p = me
                        .gate
                        .refuse_input(
                            me.call(params),
                            format!("malformed message: unreadable sample: {e:?}"),
                        )
                        .await;
                    InFlight {
                        pending: p,
                        sample: None,
                        received: Timestamp::now(),
                    }
                }
            };
            index += 1;
            if tx.send(pending).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = finisher.await;
    }

    /// Republishes an allowed message on the robot side (and re-arms the watchdog); `received`:
    /// when it arrived, for the relay time.
    async fn publish(&self, s: RawSample, received: Timestamp) {
        let _robot = match &self.safe {
            Some(safe) => Some(safe.robot.lock().await),
            None => None,
        };
        match self.writer.write(s, None) {
            Ok(()) => {
                Counters::add(&self.counters.relayed);
                self.counters
                    .relay
                    .observe_duration(since_arrival(received));
                if let Some(safe) = &self.safe
                    && let Some(max) = safe.max_silence
                {
                    *safe.deadline() = Some(Instant::now() + max);
                    safe.armed.notify_one();
                }
            }
            Err(e) => {
                let n = Counters::add(&self.counters.failed);
                log_first(n, || {
                    format!(
                        "bridge: {}: cannot republish on the robot side: {e:?}",
                        self.topic.name
                    )
                });
            }
        }
    }

    /// Waits for each decided message's record in order; republishes strict allows; counts,
    /// and tells the agent side about everything not relayed.
    async fn finish(self: Arc<Self>, mut rx: mpsc::Receiver<InFlight>, progress: Arc<Progress>) {
        while let Some(f) = rx.recv().await {
            self.settle(f, &progress).await;
        }
    }

    /// Waits for one decided message's record; republishes it if it is a strict allow; counts
    /// it, tells the agent side if it was not relayed, and marks it done in `progress`.
    async fn settle(&self, f: InFlight, progress: &Progress) {
        let resp = f.pending.durable().await;
        match &resp.outcome {
            Outcome::DecisionOnly => {
                if let Some(s) = f.sample {
                    self.publish(relayed(&resp, s), f.received).await;
                }
                // The agent learns that what reached the robot is not what it sent.
                if resp.downgrade.is_some() {
                    self.tell(&resp);
                }
            }
            Outcome::WalUnavailable(e) => {
                let n = Counters::add(&self.counters.failed);
                let what = if f.sample.is_some() || self.topic.audit == Audit::Strict {
                    "message dropped"
                } else {
                    "message already republished (batched)"
                };
                log_first(n, || {
                    format!(
                        "bridge: {}: {what}: the audit log cannot record its decision ({e}); while it cannot, every message of this topic is dropped and counted",
                        self.topic.name
                    )
                });
                self.tell(&resp);
            }
            Outcome::InputRefused => {
                Counters::add(&self.counters.malformed);
                self.tell(&resp);
            }
            _ => {
                Counters::add(&self.counters.denied);
                self.tell(&resp);
            }
        }
        if resp.decision == Decision::Deny
            && let Some(safe) = self.safe.as_ref().filter(|s| s.on_deny)
        {
            let _robot = safe.robot.lock().await;
            self.publish_safe(safe, Some(&resp.audit_id)).await;
        }
        progress.done.fetch_add(1, Ordering::Release);
        progress.changed.notify_waiters();
    }

    /// Records and publishes the safe message (the caller holds `safe.robot`): under the
    /// denied message's `audit_id`, or, without one, as the watchdog's. Disarms the watchdog
    /// until the next relayed message: the robot's last command is now the stop.
    async fn publish_safe(&self, safe: &Safe, denied: Option<&AuditId>) {
        let body = BridgeSafePublished {
            event: Default::default(),
            max_silence_ms: match denied {
                None => safe.max_silence.map(|d| d.as_millis() as u64),
                Some(_) => None,
            },
            reason: if denied.is_some() { "deny" } else { "silence" }.into(),
            topic: self.topic.name.as_str().into(),
        };
        if let Err(e) = self.gate.record(denied, &body).await {
            let n = Counters::add(&safe.unrecorded);
            log_first(n, || {
                format!(
                    "bridge: {}: safe message published without its record: the audit log cannot record it ({e})",
                    self.topic.name
                )
            });
        }
        match self.writer.write(safe.sample.clone(), None) {
            Ok(()) => {
                Counters::add(&self.counters.safe_published);
            }
            Err(e) => {
                let n = Counters::add(&safe.unwritten);
                log_first(n, || {
                    format!(
                        "bridge: {}: cannot publish the safe message on the robot side: {e:?}",
                        self.topic.name
                    )
                });
            }
        }
        *safe.deadline() = None;
    }

    /// The topic's watchdog: when no allowed message has been relayed for `max_silence`, the
    /// safe message is published once; the next relayed message re-arms it. Not armed before
    /// the first relayed message, so a robot idle at start is left alone.
    async fn watchdog(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(safe) = self.safe.clone() else {
            return;
        };
        loop {
            let deadline = *safe.deadline();
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                _ = safe.armed.notified() => continue,
                _ = expired => {}
            }
            let _robot = safe.robot.lock().await;
            {
                // A message relayed while this waited for the lock moved the deadline on.
                let d = safe.deadline();
                if d.is_none_or(|d| d > Instant::now()) {
                    continue;
                }
            }
            self.publish_safe(&safe, None).await;
        }
    }

    /// Publishes a message that was not relayed, or was relayed downgraded, on the agent side's
    /// `/autonomy/decisions`.
    fn tell(&self, resp: &GateResponse) {
        let m = DecisionMsg {
            stamp: crate::ros::Time::now(),
            audit_id: resp.audit_id.as_str().to_string(),
            kind: KIND.to_string(),
            decision: resp.decision.as_str().to_string(),
            reason: crate::ros::reason_text(resp),
            policy_ref: resp.policy_ref.as_str().to_string(),
            source: SOURCE.as_str().to_string(),
            rules_json: crate::ros::rules_json(&resp.rules),
        };
        let _ = self.decisions.try_send(m);
    }
}

/// What to republish for an allowed message: the sample as it came, or, when the policy
/// downgraded it, the patched message's encoding.
fn relayed(resp: &GateResponse, s: RawSample) -> RawSample {
    match resp
        .downgrade
        .as_ref()
        .and_then(|d| d.patched.encoded.as_ref())
    {
        Some(bytes) => RawSample {
            repr: CDR_LE,
            data: dds::Bytes::from(bytes.clone()),
        },
        None => s,
    }
}

/// Batched: before republishing another message early, waits while the oldest message
/// republished before its record was durable is older than `window` and its record is still
/// not durable. That bounds what a power cut can lose to about one window of messages.
async fn wait_window(progress: &Progress, early: &mut VecDeque<(u64, Instant)>, window: Duration) {
    loop {
        let done = progress.done.load(Ordering::Acquire);
        while early.front().is_some_and(|(i, _)| *i < done) {
            early.pop_front();
        }
        let Some((i, at)) = early.front().copied() else {
            return;
        };
        if at.elapsed() < window {
            return;
        }
        let notified = progress.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if progress.done.load(Ordering::Acquire) > i {
            continue;
        }
        // Bounded: the flush completes or fails every queued record.
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes rosidl generated for Jazzy (`share/<pkg>/msg/<Name>.json`).
    #[test]
    fn type_hashes_of_bridged_types_equal_rosidl() {
        let mut set = TypeSet::new();
        for (t, want) in [
            (
                "geometry_msgs/msg/Twist",
                "RIHS01_9c45bf16fe0983d80e3cfe750d6835843d265a9a6c46bd2e609fcddde6fb8d2a",
            ),
            (
                "sensor_msgs/msg/JointState",
                "RIHS01_a13ee3a330e346c9d87b5aa18d24e11690752bd33a0350f11c5882bc9179260e",
            ),
            (
                "sensor_msgs/msg/NavSatFix",
                "RIHS01_62223ab3fe210a15976021da7afddc9e200dc9ec75231c1b6a557fc598a65404",
            ),
            (
                "sensor_msgs/msg/PointCloud2",
                "RIHS01_9198cabf7da3796ae6fe19c4cb3bdd3525492988c70522628af5daa124bae2b5",
            ),
            (
                "std_msgs/msg/Empty",
                "RIHS01_20b625256f32d5dbc0d04fee44f43c41e51c70d3502f84b4a08e7a9c26a96312",
            ),
            (
                "geometry_msgs/msg/PoseWithCovarianceStamped",
                "RIHS01_26432f9803e43727d3c8f668d1fdb3c630f548af631e2f4e31382371bfea3b6e",
            ),
            (
                "sensor_msgs/msg/BatteryState",
                "RIHS01_4bee5dfce981c98faa6828b868307a0a73f992ed0789f374ee96c8f840e69741",
            ),
        ] {
            set.resolve(&Library::default(), t).unwrap();
            assert_eq!(
                crate::ros::type_hash::rihs01_from_msgs(t, set.texts()).unwrap(),
                want,
                "{t}"
            );
        }
    }

    /// A safe message is checked against the topic's type: one line naming the field.
    #[test]
    fn safe_messages_must_be_values_of_the_topic_type() {
        let cfg = |safe: &str| {
            let f = BridgeFile::parse(&format!(
                "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/Twist\"\non_deny = \"publish\"\nsafe_message = {safe}"
            ))
            .unwrap();
            BridgeConfig::new(f, 99, 42, &Library::default(), WcharWidth::Four)
        };
        let c = cfg("{ linear = { x = 0.0 } }").unwrap();
        let s = c.safe[0].as_ref().unwrap();
        assert_eq!(&s.bytes[..], &[0u8; 48][..]);
        assert_eq!(
            Value::Object(s.json.clone()),
            serde_json::json!({"linear": {"x": 0.0, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": 0.0}})
        );
        for (safe, want) in [
            (
                "{ linear = { w = 0.0 } }",
                "bridge topic /cmd_vel: safe_message.linear.w: not a field of geometry_msgs/msg/Vector3 (its fields: x, y, z)",
            ),
            (
                "{ speed = 0.0 }",
                "bridge topic /cmd_vel: safe_message.speed: not a field of geometry_msgs/msg/Twist (its fields: linear, angular)",
            ),
            (
                "{ linear = { x = \"zero\" } }",
                "bridge topic /cmd_vel: safe_message.linear.x: must be a number, not a string",
            ),
            (
                "{ angular = [0.0] }",
                "bridge topic /cmd_vel: safe_message.angular: must be a table (a message), not an array",
            ),
        ] {
            let e = cfg(safe).err().unwrap().to_string();
            assert_eq!(e, want, "{safe}");
        }
    }

    #[test]
    fn the_relay_time_is_read_from_the_dds_receive_stamp() {
        let ago = |ticks: u64| Timestamp::from_ticks(Timestamp::now().to_ticks() - ticks);
        // 2^32 ticks are one second: 1.5 ms ago, and one second ago.
        let t = since_arrival(ago((1u64 << 32) * 3 / 2000));
        assert!(
            t >= Duration::from_micros(1490) && t < Duration::from_millis(200),
            "{t:?}"
        );
        let t = since_arrival(ago(1 << 32));
        assert!(
            t >= Duration::from_millis(999) && t < Duration::from_millis(1200),
            "{t:?}"
        );
        // A stamp from the future (the clock stepped back): zero, not a wrapped eternity.
        let ahead = Timestamp::from_ticks(Timestamp::now().to_ticks() + (1 << 32));
        assert_eq!(since_arrival(ahead), Duration::ZERO);
    }

    #[test]
    fn the_kind_parses_and_the_domains_must_differ() {
        assert!(ToolKind::parse(KIND).is_ok());
        let file =
            BridgeFile::parse("[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/Twist\"")
                .unwrap();
        let e = BridgeConfig::new(file.clone(), 42, 42, &Library::default(), WcharWidth::Four)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "the agent and the robot are both on DDS domain 42: give the bridge two domains (--agent-domain N, ROS_DOMAIN_ID for the robot)"
        );
        let c = BridgeConfig::new(file, 99, 42, &Library::default(), WcharWidth::Four).unwrap();
        let bad = BridgeFile::parse("[[topic]]\nname = \"/x\"\ntype = \"no_msgs/msg/X\"").unwrap();
        let e = BridgeConfig::new(bad, 99, 42, &Library::default(), WcharWidth::Four)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("bridge topic /x: no definition of no_msgs/msg/X"),
            "{e}"
        );
        assert_eq!(
            c.describe(),
            "topic bridge /autonomy_bridge: agent domain 99 → robot domain 42 (1 topic(s) governed, 0 read-only feed(s) back)"
        );
    }
}
