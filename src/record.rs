//! Every record the runtime writes to the WAL: its type and the exact shape of its body.
//!
//! One struct per body. Each serialises with its fields in alphabetical order and absent
//! optional fields left out, which is the byte layout the log has always had (bodies were once
//! built as sorted JSON maps); the golden tests at the end pin those bytes. The same structs
//! read records back ([`Body::parse`]), so a reader never digs in untyped JSON.
//!
//! Adding a record type: a [`RecordType`] variant (with its name in `as_str` and `ALL`), a body
//! struct with a [`RecordBody`] impl, a [`Body`] variant and its arm in `Body::parse`, and a
//! golden test. Nothing outside this module lists record types.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::policy::RuleRef;

/// The kinds of record the log holds (the payload's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordType {
    /// A policy or runtime-layer decision about one tool call.
    Decision,
    /// A runtime event: started, stopped, the WAL recovered or repaired, the bridge started or
    /// stopped.
    Runtime,
    /// A marker line (`PASS ros2-… context=native`).
    Marker,
    /// A supervised process started, died or finished.
    Lifecycle,
    /// A policy was loaded, activated, rejected or rolled back.
    Policy,
    /// An execution error after an allow (upstream failure, bad params).
    Error,
    /// A call parked until a person approves or rejects it (`approval.requested`).
    Approval,
    /// The node signed its log's head (a C2SP checkpoint signed note).
    Checkpoint,
}

impl RecordType {
    /// Every type, in the order help texts list them.
    pub const ALL: [RecordType; 8] = [
        RecordType::Decision,
        RecordType::Runtime,
        RecordType::Marker,
        RecordType::Lifecycle,
        RecordType::Policy,
        RecordType::Error,
        RecordType::Approval,
        RecordType::Checkpoint,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Decision => "decision",
            RecordType::Runtime => "runtime",
            RecordType::Marker => "marker",
            RecordType::Lifecycle => "lifecycle",
            RecordType::Policy => "policy",
            RecordType::Error => "error",
            RecordType::Approval => "approval",
            RecordType::Checkpoint => "checkpoint",
        }
    }

    /// The type with this wire name.
    pub fn parse(s: &str) -> Option<RecordType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for RecordType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record body: serialised as a JSON object whose keys are all in `KEYS`.
pub trait RecordBody: Serialize {
    /// The record type this body belongs to.
    const TYPE: RecordType;
    /// Every key the body can have (checked against the payload's reserved keys).
    const KEYS: &'static [&'static str];
}

/// Declares a unit type that serialises as one fixed `event` name and only deserialises from it.
macro_rules! event_name {
    ($(#[$doc:meta])* $name:ident = $wire:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;

        impl $name {
            /// The wire name.
            pub const NAME: &'static str = $wire;
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($wire)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<str>::deserialize(d)?;
                if s == $wire {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format!(
                        "event {s:?} is not {:?}",
                        $wire
                    )))
                }
            }
        }
    };
}

event_name!(
    /// `event: "started"`.
    Started = "started"
);
event_name!(
    /// `event: "stopped"`.
    Stopped = "stopped"
);
event_name!(
    /// `event: "wal.recovered"`.
    Recovered = "wal.recovered"
);
event_name!(
    /// `event: "wal.repaired"`.
    Repaired = "wal.repaired"
);
event_name!(
    /// `event: "bridge.started"`.
    BridgeStartedEvent = "bridge.started"
);
event_name!(
    /// `event: "bridge.stopped"`.
    BridgeStoppedEvent = "bridge.stopped"
);
event_name!(
    /// `event: "bridge.safe_published"`.
    BridgeSafePublishedEvent = "bridge.safe_published"
);
event_name!(
    /// `event: "approval.requested"`.
    ApprovalRequestedEvent = "approval.requested"
);
event_name!(
    /// `event: "policy.activated"`.
    Activated = "policy.activated"
);
event_name!(
    /// `event: "policy.loaded"`.
    Loaded = "policy.loaded"
);
event_name!(
    /// `event: "policy.rejected"`.
    Rejected = "policy.rejected"
);
event_name!(
    /// `event: "policy.rolled_back"`.
    RolledBack = "policy.rolled_back"
);

// ---------------------------------------------------------------------------------------------
// decision, error

/// Which layer made a decision: the policy, or the runtime after the policy allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The policy's verdict (the record carries the call's params).
    Policy,
    /// The runtime refused what the policy allowed (allowlist, SSRF guard).
    Runtime,
    /// The input could not be read, so no policy saw it: a bridged message that does not
    /// decode as its type (the record carries the params it has, the reason says what is wrong).
    Input,
    /// The caller was over its rate limit, so no policy saw it (the record carries the params).
    Limit,
    /// A person (or the clock) decided a call the policy parked for approval (`by`, `note`).
    Approval,
}

/// `type: decision`: one decision about one tool call (under the call's `audit_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord<'a> {
    /// Who made the call (`anonymous` without a token). Absent in logs written before agents
    /// had names.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent: Option<Cow<'a, str>>,
    /// Layer `approval`: who decided (an operator's name, or `timeout`, `shutdown`,
    /// `caller-gone`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub by: Option<Cow<'a, str>>,
    /// `allow`, `deny` or `downgrade`. With `shadow`, what the policy would have decided.
    pub decision: crate::types::Decision,
    /// The tool kind.
    pub kind: Cow<'a, str>,
    /// Which layer decided.
    pub layer: Layer,
    /// Layer `approval`: the operator's note.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<Cow<'a, str>>,
    /// What was asked (the policy-, input- and limit-layer records only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub params: Option<Cow<'a, Map<String, Value>>>,
    /// `decision: downgrade`: the policy's `patch` (a JSON Merge Patch, RFC 7396, over
    /// `params`, or over `params.message` for a bridged message).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub patch: Option<Cow<'a, Map<String, Value>>>,
    /// `decision: downgrade`: the params as patched, which is what ran or was published
    /// (`params` keeps what was asked).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub patched: Option<Cow<'a, Map<String, Value>>>,
    /// The policy that decided.
    pub policy_ref: Cow<'a, str>,
    /// Why it was denied.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<Cow<'a, str>>,
    /// Layer `policy`: the policy rule definitions that decided (package, rule, file, line,
    /// METADATA id). Absent when the policy named none, and in the other layers' records.
    #[serde(skip_serializing_if = "<[_]>::is_empty", default)]
    pub rules: Cow<'a, [Arc<RuleRef>]>,
    /// `true` when the policy only watched (shadow mode): the call was allowed whatever
    /// `decision` says.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shadow: Option<bool>,
    /// The front end the call came through.
    pub source: Cow<'a, str>,
}

impl RecordBody for DecisionRecord<'_> {
    const TYPE: RecordType = RecordType::Decision;
    const KEYS: &'static [&'static str] = &[
        "agent",
        "by",
        "decision",
        "kind",
        "layer",
        "note",
        "params",
        "patch",
        "patched",
        "policy_ref",
        "reason",
        "rules",
        "shadow",
        "source",
    ];
}

/// `type: approval`, `event: approval.requested`: the policy allowed a call only with a
/// person's approval; it waits (recorded as pending) until a `decision` record of layer
/// `approval` under the same `audit_id` says how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequested<'a> {
    /// Who made the call.
    pub agent: Cow<'a, str>,
    /// The event name.
    pub event: ApprovalRequestedEvent,
    /// The tool kind.
    pub kind: Cow<'a, str>,
    /// What was asked.
    pub params: Cow<'a, Map<String, Value>>,
    /// The policy that asked.
    pub policy_ref: Cow<'a, str>,
    /// The policy's `approval_reason`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<Cow<'a, str>>,
    /// The front end the call came through.
    pub source: Cow<'a, str>,
    /// How long it waits before it is denied.
    pub timeout_ms: u64,
}

impl RecordBody for ApprovalRequested<'_> {
    const TYPE: RecordType = RecordType::Approval;
    const KEYS: &'static [&'static str] = &[
        "agent",
        "event",
        "kind",
        "params",
        "policy_ref",
        "reason",
        "source",
        "timeout_ms",
    ];
}

/// Why an allowed call failed to execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The tool cannot use the params (400).
    BadParams,
    /// The tool ran and failed upstream (502).
    Upstream,
}

/// `type: error`: an allowed call whose execution failed (under the call's `audit_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRecord<'a> {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What failed, in words.
    pub error: Cow<'a, str>,
    /// The tool kind.
    pub kind: Cow<'a, str>,
    /// The front end the call came through.
    pub source: Cow<'a, str>,
}

impl RecordBody for ErrorRecord<'_> {
    const TYPE: RecordType = RecordType::Error;
    const KEYS: &'static [&'static str] = &["code", "error", "kind", "source"];
}

// ---------------------------------------------------------------------------------------------
// runtime

/// `type: runtime`, `event: started`: the runtime opened its WAL and is about to serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStarted<'a> {
    /// The `http_get` allowlist, normalised.
    pub allowed_domains: Cow<'a, [String]>,
    /// The auth mode: `off`, `optional` or `required` (absent in logs from before tokens).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth: Option<Cow<'a, str>>,
    /// The event name.
    pub event: Started,
    /// The HTTP address it listens on (a runtime without the HTTP front end has none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listen: Option<Cow<'a, str>>,
    /// The policy it starts with.
    pub policy_ref: Cow<'a, str>,
    /// `true` when every policy runs in shadow mode (`--shadow`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shadow: Option<bool>,
    /// The runtime's version.
    pub version: Cow<'a, str>,
}

impl RecordBody for RuntimeStarted<'_> {
    const TYPE: RecordType = RecordType::Runtime;
    const KEYS: &'static [&'static str] = &[
        "allowed_domains",
        "auth",
        "event",
        "listen",
        "policy_ref",
        "shadow",
        "version",
    ];
}

/// `type: runtime`, `event: stopped`: the last record of a clean shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuntimeStopped {
    /// The event name.
    pub event: Stopped,
}

impl RecordBody for RuntimeStopped {
    const TYPE: RecordType = RecordType::Runtime;
    const KEYS: &'static [&'static str] = &["event"];
}

/// `type: runtime`, `event: wal.recovered`: a torn tail was cut when the WAL was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRecovered<'a> {
    /// The event name.
    pub event: Recovered,
    /// Where the cut bytes began in the segment.
    pub offset: u64,
    /// The file beside the segment the cut bytes were saved to, when that worked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub saved_as: Option<Cow<'a, str>>,
    /// The segment's file name.
    pub segment: Cow<'a, str>,
    /// How many bytes were cut.
    pub trimmed_bytes: u64,
    /// Whole frames found inside the cut bytes (never acknowledged).
    pub whole_frames: u64,
}

impl RecordBody for WalRecovered<'_> {
    const TYPE: RecordType = RecordType::Runtime;
    const KEYS: &'static [&'static str] = &[
        "event",
        "offset",
        "saved_as",
        "segment",
        "trimmed_bytes",
        "whole_frames",
    ];
}

/// One stretch of bytes `wal repair` cut from a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutBytes<'a> {
    /// How many bytes.
    pub bytes: u64,
    /// Where they began.
    pub offset: u64,
    /// The file they were saved to.
    pub saved_as: Cow<'a, str>,
    /// The segment's file name.
    pub segment: Cow<'a, str>,
}

/// `type: runtime`, `event: wal.repaired`: `autonomy wal repair` cut a damaged log back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRepaired<'a> {
    /// What was cut.
    pub cut: Vec<CutBytes<'a>>,
    /// The event name.
    pub event: Repaired,
    /// The damage that was found, if the cut was not asked for at an offset.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub found: Option<Cow<'a, str>>,
    /// How many records were kept.
    pub kept_records: u64,
}

impl RecordBody for WalRepaired<'_> {
    const TYPE: RecordType = RecordType::Runtime;
    const KEYS: &'static [&'static str] = &["cut", "event", "found", "kept_records"];
}

/// One relayed topic, as the `bridge.started` record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeTopic<'a> {
    /// `strict` or `batched` (agent → robot topics only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub audit: Option<Cow<'a, str>>,
    /// `batched` only: the bound on how long a republished message's record may not yet be
    /// durable (the loss window on a power cut).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch_window_ms: Option<u64>,
    /// `agent_to_robot` or `robot_to_agent`.
    pub direction: Cow<'a, str>,
    /// The watchdog's bound, when the topic has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_silence_ms: Option<u64>,
    /// The ROS topic name.
    pub name: Cow<'a, str>,
    /// `publish` when a denied message makes the bridge publish the safe message (absent:
    /// `drop`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub on_deny: Option<Cow<'a, str>>,
    /// The safe message, every field spelled out, when the topic has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub safe_message: Option<Cow<'a, Map<String, Value>>>,
    /// The ROS message type (`pkg/msg/Name`).
    #[serde(rename = "type")]
    pub type_name: Cow<'a, str>,
}

/// `type: runtime`, `event: bridge.started`: the topic bridge is relaying these topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeStarted<'a> {
    /// The agent's DDS domain.
    pub agent_domain: u16,
    /// The event name.
    pub event: BridgeStartedEvent,
    /// The robot's DDS domain (`ROS_DOMAIN_ID`).
    pub robot_domain: u16,
    /// The topics.
    pub topics: Vec<BridgeTopic<'a>>,
}

impl RecordBody for BridgeStarted<'_> {
    const TYPE: RecordType = RecordType::Runtime;
    const KEYS: &'static [&'static str] = &["agent_domain", "event", "robot_domain", "topics"];
}

/// One topic's counts at the bridge's stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeCounts<'a> {
    /// Denied by the policy (dropped).
    pub denied: u64,
    /// Dropped because the gate or the log failed (fail closed).
    pub failed: u64,
    /// Refused because they did not decode (dropped).
    pub malformed: u64,
    /// The ROS topic name.
    pub name: Cow<'a, str>,
    /// Received from the source domain.
    pub received: u64,
    /// Republished on the other domain.
    pub relayed: u64,
    /// Safe messages published on the robot side (topics with a safe message only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub safe_published: Option<u64>,
}

/// `type: runtime`, `event: bridge.stopped`: the bridge stopped; what each topic saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeStopped<'a> {
    /// The event name.
    pub event: BridgeStoppedEvent,
    /// The counts, per topic.
    pub topics: Vec<BridgeCounts<'a>>,
}

impl RecordBody for BridgeStopped<'_> {
    const TYPE: RecordType = RecordType::Runtime;
    const KEYS: &'static [&'static str] = &["event", "topics"];
}

/// `type: runtime`, `event: bridge.safe_published`: the bridge published a topic's safe message
/// on the robot side, bypassing the policy (it is the stop). With `reason: deny`, under the
/// `audit_id` of the denied message that caused it; with `reason: silence`, the watchdog fired
/// (no allowed message relayed for `max_silence_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSafePublished<'a> {
    /// The event name.
    pub event: BridgeSafePublishedEvent,
    /// `silence` only: the topic's watchdog bound.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_silence_ms: Option<u64>,
    /// `deny` or `silence`.
    pub reason: Cow<'a, str>,
    /// The ROS topic name.
    pub topic: Cow<'a, str>,
}

impl RecordBody for BridgeSafePublished<'_> {
    const TYPE: RecordType = RecordType::Runtime;
    const KEYS: &'static [&'static str] = &["event", "max_silence_ms", "reason", "topic"];
}

// ---------------------------------------------------------------------------------------------
// policy

/// `type: policy`, `event: policy.loaded` (by `policy load`/`pull`) or `policy.activated` (a
/// running daemon took the store's new current slot): a bundle is now in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInForce<'a, E> {
    /// The event name.
    pub event: E,
    /// The bundle hash.
    pub hash: Cow<'a, str>,
    /// The bundle name.
    pub name: Cow<'a, str>,
    /// Its policy ref.
    pub policy_ref: Cow<'a, str>,
    /// Where it came from (a file path or an OCI ref).
    pub source: Cow<'a, str>,
    /// Its version.
    pub version: Cow<'a, str>,
}

/// `policy load`/`pull` put a bundle in the store's current slot.
pub type PolicyLoaded<'a> = PolicyInForce<'a, Loaded>;
/// A running daemon activated the store's new current slot.
pub type PolicyActivated<'a> = PolicyInForce<'a, Activated>;

impl<E: Serialize> RecordBody for PolicyInForce<'_, E> {
    const TYPE: RecordType = RecordType::Policy;
    const KEYS: &'static [&'static str] =
        &["event", "hash", "name", "policy_ref", "source", "version"];
}

/// `type: policy`, `event: policy.rejected`: a bundle was refused (by `policy load`/`pull`:
/// with its `source`; by a running daemon's reload: with the `slot` and the `policy_ref` kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRejected<'a> {
    /// The event name.
    pub event: Rejected,
    /// The policy kept in force (a daemon's reload).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy_ref: Option<Cow<'a, str>>,
    /// Why it was refused.
    pub reason: Cow<'a, str>,
    /// The store slot that was refused (a daemon's reload).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slot: Option<Cow<'a, str>>,
    /// Where the refused bundle came from (`policy load`/`pull`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<Cow<'a, str>>,
}

impl RecordBody for PolicyRejected<'_> {
    const TYPE: RecordType = RecordType::Policy;
    const KEYS: &'static [&'static str] = &["event", "policy_ref", "reason", "slot", "source"];
}

/// `type: policy`, `event: policy.rolled_back`: `policy rollback` made the last known good
/// bundle current again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRolledBack<'a> {
    /// The event name.
    pub event: RolledBack,
    /// The hash of the bundle now current.
    pub hash: Cow<'a, str>,
    /// Its policy ref.
    pub policy_ref: Cow<'a, str>,
    /// Its version.
    pub version: Cow<'a, str>,
}

impl RecordBody for PolicyRolledBack<'_> {
    const TYPE: RecordType = RecordType::Policy;
    const KEYS: &'static [&'static str] = &["event", "hash", "policy_ref", "version"];
}

// ---------------------------------------------------------------------------------------------
// marker, lifecycle

/// `type: marker`: one marker line of `run ros2.launch`, as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRecord<'a> {
    /// The marker's label (`ros2-launch-allowed`).
    pub label: Cow<'a, str>,
    /// The whole line, byte for byte as printed and published.
    pub line: Cow<'a, str>,
    /// `PASS` or `DENY`.
    pub status: Cow<'a, str>,
}

impl RecordBody for MarkerRecord<'_> {
    const TYPE: RecordType = RecordType::Marker;
    const KEYS: &'static [&'static str] = &["label", "line", "status"];
}

/// What happened to a process `ros2 launch` supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessEvent {
    /// `process started with pid [N]`.
    #[serde(rename = "process.started")]
    Started,
    /// `process has died [pid N, exit code C, cmd '…']`.
    #[serde(rename = "process.died")]
    Died,
    /// `process has finished cleanly [pid N]`.
    #[serde(rename = "process.finished")]
    Finished,
}

/// `type: lifecycle`: a process of a supervised launch started, died or finished (under the
/// launch's `audit_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRecord<'a> {
    /// Its command line (`died` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cmd: Option<Cow<'a, str>>,
    /// What happened.
    pub event: ProcessEvent,
    /// Its exit code, negative for a signal (`died` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i64>,
    /// launch's name for it (`talker-1`), when it printed one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<Cow<'a, str>>,
    /// Its pid.
    pub pid: i64,
}

impl RecordBody for LifecycleRecord<'_> {
    const TYPE: RecordType = RecordType::Lifecycle;
    const KEYS: &'static [&'static str] = &["cmd", "event", "exit_code", "name", "pid"];
}

// ---------------------------------------------------------------------------------------------
// checkpoint

/// `type: checkpoint`: the node signed the head of its log (see [`crate::checkpoint`]). `note`
/// is what was signed and the signature; `origin`, `root` and `size` repeat its text for people
/// and queries, and a verifier trusts only the note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord<'a> {
    /// The C2SP signed note: origin, size and base64 root lines, a blank line, the signature.
    pub note: Cow<'a, str>,
    /// The node id (the note's first line).
    pub origin: Cow<'a, str>,
    /// `sha256:<hex>` of record `size`'s payload (the note's third line, in the WAL's notation).
    pub root: Cow<'a, str>,
    /// The seq of the last record covered (the note's second line).
    pub size: u64,
}

impl RecordBody for CheckpointRecord<'_> {
    const TYPE: RecordType = RecordType::Checkpoint;
    const KEYS: &'static [&'static str] = &["note", "origin", "root", "size"];
}

// ---------------------------------------------------------------------------------------------
// reading

/// A record body read back from the log, by type (and `event`, where a type has several).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `decision`.
    Decision(DecisionRecord<'static>),
    /// `error`.
    Error(ErrorRecord<'static>),
    /// `runtime`, `started`.
    RuntimeStarted(RuntimeStarted<'static>),
    /// `runtime`, `stopped`.
    RuntimeStopped(RuntimeStopped),
    /// `runtime`, `wal.recovered`.
    WalRecovered(WalRecovered<'static>),
    /// `runtime`, `wal.repaired`.
    WalRepaired(WalRepaired<'static>),
    /// `runtime`, `bridge.started`.
    BridgeStarted(BridgeStarted<'static>),
    /// `runtime`, `bridge.stopped`.
    BridgeStopped(BridgeStopped<'static>),
    /// `runtime`, `bridge.safe_published`.
    BridgeSafePublished(BridgeSafePublished<'static>),
    /// `policy`, `policy.loaded`.
    PolicyLoaded(PolicyLoaded<'static>),
    /// `policy`, `policy.activated`.
    PolicyActivated(PolicyActivated<'static>),
    /// `policy`, `policy.rejected`.
    PolicyRejected(PolicyRejected<'static>),
    /// `policy`, `policy.rolled_back`.
    PolicyRolledBack(PolicyRolledBack<'static>),
    /// `marker`.
    Marker(MarkerRecord<'static>),
    /// `lifecycle`.
    Lifecycle(LifecycleRecord<'static>),
    /// `approval`, `approval.requested`.
    ApprovalRequested(ApprovalRequested<'static>),
    /// `checkpoint`.
    Checkpoint(CheckpointRecord<'static>),
}

/// Why a payload is not a body this version writes.
#[derive(Debug, thiserror::Error)]
#[error("a {rtype} record{event} does not have the expected fields: {source}")]
pub struct BodyError {
    rtype: RecordType,
    event: String,
    source: serde_json::Error,
}

/// A `runtime` or `policy` body with an `event` this version does not write.
fn unknown_event(rtype: RecordType, event: &str) -> BodyError {
    BodyError {
        rtype,
        event: format!(" with event {event:?}"),
        source: serde::de::Error::custom("unknown event"),
    }
}

impl Body {
    /// Reads the body of a payload of type `rtype` (the reserved header keys are ignored).
    pub fn parse(rtype: RecordType, payload: &Value) -> Result<Body, BodyError> {
        let event = payload.get("event").and_then(Value::as_str).unwrap_or("");
        let err = |source| BodyError {
            rtype,
            event: if event.is_empty() {
                String::new()
            } else {
                format!(" with event {event:?}")
            },
            source,
        };
        let p = || payload.clone();
        let body = match rtype {
            RecordType::Decision => Body::Decision(serde_json::from_value(p()).map_err(err)?),
            RecordType::Error => Body::Error(serde_json::from_value(p()).map_err(err)?),
            RecordType::Marker => Body::Marker(serde_json::from_value(p()).map_err(err)?),
            RecordType::Lifecycle => Body::Lifecycle(serde_json::from_value(p()).map_err(err)?),
            RecordType::Checkpoint => Body::Checkpoint(serde_json::from_value(p()).map_err(err)?),
            RecordType::Runtime => match event {
                Started::NAME => Body::RuntimeStarted(serde_json::from_value(p()).map_err(err)?),
                Stopped::NAME => Body::RuntimeStopped(serde_json::from_value(p()).map_err(err)?),
                Recovered::NAME => Body::WalRecovered(serde_json::from_value(p()).map_err(err)?),
                Repaired::NAME => Body::WalRepaired(serde_json::from_value(p()).map_err(err)?),
                BridgeStartedEvent::NAME => {
                    Body::BridgeStarted(serde_json::from_value(p()).map_err(err)?)
                }
                BridgeStoppedEvent::NAME => {
                    Body::BridgeStopped(serde_json::from_value(p()).map_err(err)?)
                }
                BridgeSafePublishedEvent::NAME => {
                    Body::BridgeSafePublished(serde_json::from_value(p()).map_err(err)?)
                }
                other => return Err(unknown_event(rtype, other)),
            },
            RecordType::Approval => match event {
                ApprovalRequestedEvent::NAME => {
                    Body::ApprovalRequested(serde_json::from_value(p()).map_err(err)?)
                }
                other => return Err(unknown_event(rtype, other)),
            },
            RecordType::Policy => match event {
                Loaded::NAME => Body::PolicyLoaded(serde_json::from_value(p()).map_err(err)?),
                Activated::NAME => Body::PolicyActivated(serde_json::from_value(p()).map_err(err)?),
                Rejected::NAME => Body::PolicyRejected(serde_json::from_value(p()).map_err(err)?),
                RolledBack::NAME => {
                    Body::PolicyRolledBack(serde_json::from_value(p()).map_err(err)?)
                }
                other => return Err(unknown_event(rtype, other)),
            },
        };
        Ok(body)
    }
}

#[cfg(test)]
mod tests;
