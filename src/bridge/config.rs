//! The bridge's config file (TOML): the topics to relay, each with its type, QoS, direction
//! and audit mode. Every error is one line naming the file and the field.
//!
//! ```toml
//! [[topic]]
//! name = "/cmd_vel"
//! type = "geometry_msgs/msg/Twist"
//! direction = "agent_to_robot"   # the default; "robot_to_agent" for read-only feeds
//! audit = "strict"               # the default; or "batched" (+ batch_window_ms, default 10)
//! max_bytes = 65536              # larger messages are refused as malformed
//! qos = { reliability = "reliable", durability = "volatile", depth = 10 }
//! on_deny = "publish"            # or "drop" (the default): see below
//! safe_message = { linear = { x = 0.0 }, angular = { z = 0.0 } }  # left out fields: zero
//! max_silence_ms = 500           # publish the safe message once when the agent goes quiet
//! ```
//!
//! The safe message is checked against the topic's type when the types are resolved
//! ([`super::BridgeConfig::new`]); here only its shape as TOML is.

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

/// Most topics one bridge relays.
pub const MAX_TOPICS: usize = 64;
/// Largest config file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Default and largest `max_bytes`.
pub const DEFAULT_MAX_BYTES: u32 = 64 * 1024;
/// Largest `max_bytes` a topic may set.
pub const MAX_MAX_BYTES: u32 = 16 * 1024 * 1024;
/// Default `batch_window_ms`.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Default QoS history depth.
pub const DEFAULT_DEPTH: u32 = 10;
/// Shortest `max_silence_ms`.
pub const MIN_SILENCE_MS: i64 = 10;
/// Longest `max_silence_ms` (one hour).
pub const MAX_SILENCE_MS: i64 = 3_600_000;

/// What a denied agent → robot message makes the bridge do on the robot side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeny {
    /// Nothing reaches the robot (the default).
    Drop,
    /// The topic's safe message is published instead (a stop).
    Publish,
}

impl OnDeny {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDeny::Drop => "drop",
            OnDeny::Publish => "publish",
        }
    }
}

/// Which way a topic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Agent domain → robot domain, each message decided by the gate (the default).
    AgentToRobot,
    /// Robot domain → agent domain, relayed without a decision (read-only feeds such as
    /// `/odom`), counted.
    RobotToAgent,
}

impl Direction {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::AgentToRobot => "agent_to_robot",
            Direction::RobotToAgent => "robot_to_agent",
        }
    }
}

/// When an allowed message's decision record must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// Durable (group commit) before the message is republished (the default).
    Strict,
    /// Republished at once; the record is durable within `window`, and the relay waits when the
    /// log falls further behind, so at most `window` of republished messages can lack a record.
    Batched {
        /// The bound.
        window: Duration,
    },
}

impl Audit {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Audit::Strict => "strict",
            Audit::Batched { .. } => "batched",
        }
    }
}

/// DDS reliability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    /// Reliable (the ROS default).
    Reliable,
    /// Best effort (sensor data).
    BestEffort,
}

/// DDS durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Volatile (the ROS default).
    Volatile,
    /// Transient local (late joiners get the last `depth` messages).
    TransientLocal,
}

/// A topic's QoS on both sides (keep-last history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    /// Reliability.
    pub reliability: Reliability,
    /// Durability.
    pub durability: Durability,
    /// Keep-last depth.
    pub depth: u32,
}

impl Default for Qos {
    fn default() -> Self {
        Qos {
            reliability: Reliability::Reliable,
            durability: Durability::Volatile,
            depth: DEFAULT_DEPTH,
        }
    }
}

/// One relayed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// The ROS topic name (absolute), the same on both sides.
    pub name: String,
    /// The ROS message type, `pkg/msg/Name`.
    pub type_name: String,
    /// Which way it flows.
    pub direction: Direction,
    /// When records must be durable (agent → robot only).
    pub audit: Audit,
    /// Larger messages are refused as malformed.
    pub max_bytes: u32,
    /// QoS on both sides.
    pub qos: Qos,
    /// What a denied message makes the bridge publish on the robot side.
    pub on_deny: OnDeny,
    /// The message published by `on_deny = "publish"` and the watchdog, in the topic type's
    /// JSON shape (fields left out are zero).
    pub safe_message: Option<serde_json::Map<String, serde_json::Value>>,
    /// The watchdog: with no allowed message relayed for this long, the safe message is
    /// published once.
    pub max_silence: Option<Duration>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeFile {
    /// The topics, in file order.
    pub topics: Vec<TopicConfig>,
}

/// A config file that cannot be used: one line, naming the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {msg}")]
pub struct ConfigError {
    file: String,
    msg: String,
}

impl BridgeFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<BridgeFile, ConfigError> {
        let file = path.display().to_string();
        let err = |msg: String| ConfigError {
            file: file.clone(),
            msg,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(err(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(err)
    }

    /// Checks a config text; the error is the line's text after `FILE: `.
    pub fn parse(text: &str) -> Result<BridgeFile, String> {
        let table: Table = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
            match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg.to_string(),
            }
        })?;
        for k in table.keys() {
            if k != "topic" {
                return Err(format!(
                    "unknown key `{k}` (the file lists topics as [[topic]] tables)"
                ));
            }
        }
        let topics = match table.get("topic") {
            None => return Err("no [[topic]] listed: nothing to bridge".into()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("`topic` must be a list of [[topic]] tables".into()),
        };
        if topics.is_empty() {
            return Err("no [[topic]] listed: nothing to bridge".into());
        }
        if topics.len() > MAX_TOPICS {
            return Err(format!(
                "{} topics listed; at most {MAX_TOPICS}",
                topics.len()
            ));
        }
        let mut out: Vec<TopicConfig> = Vec::with_capacity(topics.len());
        for (i, t) in topics.iter().enumerate() {
            let at = format!("topic[{i}]");
            let Value::Table(t) = t else {
                return Err(format!("{at}: must be a table"));
            };
            let topic = topic(&at, t)?;
            if let Some(other) = out.iter().find(|o| o.name == topic.name) {
                return Err(format!(
                    "{at}.name: {} is listed twice ({} and {})",
                    topic.name,
                    other.direction.as_str(),
                    topic.direction.as_str()
                ));
            }
            out.push(topic);
        }
        Ok(BridgeFile { topics: out })
    }
}

fn string<'a>(t: &'a Table, at: &str, key: &str) -> Result<Option<&'a str>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(format!(
            "{at}.{key}: must be a string, not {}",
            v.type_str()
        )),
    }
}

fn integer(t: &Table, at: &str, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::Integer(n)) if (lo..=hi).contains(n) => Ok(Some(*n)),
        Some(Value::Integer(n)) => Err(format!("{at}.{key}: {n} is out of range ({lo} to {hi})")),
        Some(v) => Err(format!(
            "{at}.{key}: must be an integer, not {}",
            v.type_str()
        )),
    }
}

fn unknown_keys(t: &Table, at: &str, known: &[&str]) -> Result<(), String> {
    match t.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{at}: unknown key `{k}` (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// A ROS topic name the bridge accepts: absolute, `/`-separated tokens of letters, digits and
/// underscores, not starting with a digit, not under our own `/autonomy/` namespace.
fn check_topic_name(name: &str) -> Result<(), String> {
    let Some(rest) = name.strip_prefix('/') else {
        return Err(format!(
            "{name:?} must be an absolute topic name such as \"/cmd_vel\""
        ));
    };
    if name.len() > 256 {
        return Err("longer than 256 characters".into());
    }
    let ok = !rest.is_empty()
        && rest.split('/').all(|tok| {
            tok.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && tok.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !tok.contains("__")
        });
    if !ok {
        return Err(format!(
            "{name:?} is not a ROS topic name (tokens of letters, digits and _, separated by /)"
        ));
    }
    if name == "/autonomy" || name.starts_with("/autonomy/") {
        return Err(format!(
            "{name:?}: the /autonomy/ topics are the runtime's own"
        ));
    }
    Ok(())
}

fn topic(at: &str, t: &Table) -> Result<TopicConfig, String> {
    unknown_keys(
        t,
        at,
        &[
            "name",
            "type",
            "direction",
            "audit",
            "batch_window_ms",
            "max_bytes",
            "qos",
            "on_deny",
            "safe_message",
            "max_silence_ms",
        ],
    )?;
    let name = string(t, at, "name")?.ok_or_else(|| format!("{at}.name: missing"))?;
    check_topic_name(name).map_err(|e| format!("{at}.name: {e}"))?;
    let at = format!("{at} ({name})");
    let at = at.as_str();
    let type_name = string(t, at, "type")?
        .ok_or_else(|| format!("{at}.type: missing (e.g. \"geometry_msgs/msg/Twist\")"))?;
    let type_name = super::msgdef::normalize(type_name).map_err(|e| format!("{at}.type: {e}"))?;
    let direction = match string(t, at, "direction")? {
        None | Some("agent_to_robot") => Direction::AgentToRobot,
        Some("robot_to_agent") => Direction::RobotToAgent,
        Some(o) => {
            return Err(format!(
                "{at}.direction: {o:?} is not agent_to_robot or robot_to_agent"
            ));
        }
    };
    let window = integer(t, at, "batch_window_ms", 1, 1000)?;
    let audit = match string(t, at, "audit")? {
        None | Some("strict") => {
            if window.is_some() {
                return Err(format!(
                    "{at}.batch_window_ms: only for audit = \"batched\""
                ));
            }
            Audit::Strict
        }
        Some("batched") => Audit::Batched {
            window: window.map_or(DEFAULT_BATCH_WINDOW, |ms| Duration::from_millis(ms as u64)),
        },
        Some(o) => return Err(format!("{at}.audit: {o:?} is not strict or batched")),
    };
    if direction == Direction::RobotToAgent && t.contains_key("audit") {
        return Err(format!(
            "{at}.audit: robot_to_agent topics are relayed without a decision, so they have no audit mode"
        ));
    }
    let max_bytes = integer(t, at, "max_bytes", 1, MAX_MAX_BYTES as i64)?
        .map_or(DEFAULT_MAX_BYTES, |n| n as u32);
    let qos = match t.get("qos") {
        None => Qos::default(),
        Some(Value::Table(q)) => qos(&format!("{at}.qos"), q)?,
        Some(v) => return Err(format!("{at}.qos: must be a table, not {}", v.type_str())),
    };
    let on_deny = match string(t, at, "on_deny")? {
        None | Some("drop") => OnDeny::Drop,
        Some("publish") => OnDeny::Publish,
        Some(o) => return Err(format!("{at}.on_deny: {o:?} is not drop or publish")),
    };
    let safe_message = match t.get("safe_message") {
        None => None,
        Some(Value::Table(m)) => Some(json_table(&format!("{at}.safe_message"), m)?),
        Some(v) => {
            return Err(format!(
                "{at}.safe_message: must be a table in the shape of {type_name} (e.g. {{ linear = {{ x = 0.0 }} }}), not {}",
                v.type_str()
            ));
        }
    };
    let max_silence = integer(t, at, "max_silence_ms", MIN_SILENCE_MS, MAX_SILENCE_MS)?
        .map(|ms| Duration::from_millis(ms as u64));
    if direction == Direction::RobotToAgent {
        for key in ["on_deny", "safe_message", "max_silence_ms"] {
            if t.contains_key(key) {
                return Err(format!(
                    "{at}.{key}: only for agent_to_robot topics (a robot_to_agent feed is never denied)"
                ));
            }
        }
    }
    if safe_message.is_none() {
        if on_deny == OnDeny::Publish {
            return Err(format!(
                "{at}.on_deny: \"publish\" needs a safe_message to publish (e.g. safe_message = {{}} for a message of zeros)"
            ));
        }
        if max_silence.is_some() {
            return Err(format!(
                "{at}.max_silence_ms: the watchdog needs a safe_message to publish (e.g. safe_message = {{}} for a message of zeros)"
            ));
        }
    } else if on_deny == OnDeny::Drop && max_silence.is_none() {
        return Err(format!(
            "{at}.safe_message: never published: set on_deny = \"publish\" or max_silence_ms"
        ));
    }
    Ok(TopicConfig {
        name: name.to_string(),
        type_name,
        direction,
        audit,
        max_bytes,
        qos,
        on_deny,
        safe_message,
        max_silence,
    })
}

/// A TOML table as the JSON object the CDR encoder takes (dates have no ROS counterpart).
fn json_table(at: &str, t: &Table) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    t.iter()
        .map(|(k, v)| Ok((k.clone(), json_value(&format!("{at}.{k}"), v)?)))
        .collect()
}

fn json_value(at: &str, v: &Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        Value::String(s) => J::String(s.clone()),
        Value::Integer(n) => J::from(*n),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => J::Number(n),
            None if f.is_nan() => J::String("NaN".into()),
            None if *f > 0.0 => J::String("Infinity".into()),
            None => J::String("-Infinity".into()),
        },
        Value::Boolean(b) => J::Bool(*b),
        Value::Array(a) => J::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| json_value(&format!("{at}[{i}]"), v))
                .collect::<Result<_, _>>()?,
        ),
        Value::Table(t) => J::Object(json_table(at, t)?),
        Value::Datetime(_) => return Err(format!("{at}: a date is not a ROS value")),
    })
}

fn qos(at: &str, q: &Table) -> Result<Qos, String> {
    unknown_keys(q, at, &["reliability", "durability", "depth"])?;
    let reliability = match string(q, at, "reliability")? {
        None | Some("reliable") => Reliability::Reliable,
        Some("best_effort") => Reliability::BestEffort,
        Some(o) => {
            return Err(format!(
                "{at}.reliability: {o:?} is not reliable or best_effort"
            ));
        }
    };
    let durability = match string(q, at, "durability")? {
        None | Some("volatile") => Durability::Volatile,
        Some("transient_local") => Durability::TransientLocal,
        Some(o) => {
            return Err(format!(
                "{at}.durability: {o:?} is not volatile or transient_local"
            ));
        }
    };
    let depth = integer(q, at, "depth", 1, 1000)?.map_or(DEFAULT_DEPTH, |n| n as u32);
    Ok(Qos {
        reliability,
        durability,
        depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_field() {
        let f = BridgeFile::parse(
            r#"
[[topic]]
name = "/cmd_vel"
type = "geometry_msgs/Twist"

[[topic]]
name = "/odom"
type = "nav_msgs/msg/Odometry"
direction = "robot_to_agent"
qos = { reliability = "best_effort", durability = "transient_local", depth = 5 }

[[topic]]
name = "/arm/cmd"
type = "std_msgs/msg/Float64MultiArray"
audit = "batched"
batch_window_ms = 25
max_bytes = 1024
"#,
        )
        .unwrap();
        assert_eq!(
            f.topics[0],
            TopicConfig {
                name: "/cmd_vel".into(),
                type_name: "geometry_msgs/msg/Twist".into(),
                direction: Direction::AgentToRobot,
                audit: Audit::Strict,
                max_bytes: DEFAULT_MAX_BYTES,
                qos: Qos::default(),
                on_deny: OnDeny::Drop,
                safe_message: None,
                max_silence: None,
            }
        );
        assert_eq!(f.topics[1].direction, Direction::RobotToAgent);
        assert_eq!(
            f.topics[1].qos,
            Qos {
                reliability: Reliability::BestEffort,
                durability: Durability::TransientLocal,
                depth: 5
            }
        );
        assert_eq!(
            f.topics[2].audit,
            Audit::Batched {
                window: Duration::from_millis(25)
            }
        );
        assert_eq!(f.topics[2].max_bytes, 1024);
        let b = BridgeFile::parse(
            "[[topic]]\nname = \"/a\"\ntype = \"std_msgs/String\"\naudit = \"batched\"",
        )
        .unwrap();
        assert_eq!(
            b.topics[0].audit,
            Audit::Batched {
                window: DEFAULT_BATCH_WINDOW
            }
        );
    }

    #[test]
    fn every_error_is_one_line_naming_the_field() {
        let t = |body: &str| {
            format!("[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n{body}")
        };
        for (text, want) in [
            ("[[topic]\n".to_string(), "line 1: "),
            (String::new(), "no [[topic]] listed"),
            ("agent_domain = 5".into(), "unknown key `agent_domain`"),
            (
                "[[topic]]\ntype = \"std_msgs/String\"".into(),
                "topic[0].name: missing",
            ),
            (
                "[[topic]]\nname = \"cmd_vel\"\ntype = \"std_msgs/String\"".into(),
                "topic[0].name: \"cmd_vel\" must be an absolute",
            ),
            (
                "[[topic]]\nname = \"/a b\"\ntype = \"std_msgs/String\"".into(),
                "is not a ROS topic name",
            ),
            (
                "[[topic]]\nname = \"/autonomy/decisions\"\ntype = \"std_msgs/String\"".into(),
                "the runtime's own",
            ),
            (
                "[[topic]]\nname = \"/x\"".into(),
                "topic[0] (/x).type: missing",
            ),
            (
                "[[topic]]\nname = \"/x\"\ntype = \"Twist\"".into(),
                "topic[0] (/x).type: \"Twist\" is not a ROS message type name",
            ),
            (
                t("direction = \"up\""),
                "topic[0] (/cmd_vel).direction: \"up\" is not",
            ),
            (
                t("audit = \"lax\""),
                ".audit: \"lax\" is not strict or batched",
            ),
            (
                t("batch_window_ms = 5"),
                ".batch_window_ms: only for audit = \"batched\"",
            ),
            (
                t("audit = \"batched\"\nbatch_window_ms = 0"),
                ".batch_window_ms: 0 is out of range (1 to 1000)",
            ),
            (
                t("max_bytes = \"big\""),
                ".max_bytes: must be an integer, not string",
            ),
            (t("qos = { depth = 0 }"), ".qos.depth: 0 is out of range"),
            (
                t("qos = { reliability = \"fast\" }"),
                ".qos.reliability: \"fast\" is not reliable or best_effort",
            ),
            (
                t("qos = { durability = \"forever\" }"),
                ".qos.durability: \"forever\" is not",
            ),
            (
                t("qos = { history = \"all\" }"),
                ".qos: unknown key `history`",
            ),
            (t("colour = 1"), "topic[0]: unknown key `colour`"),
            (
                t("direction = \"robot_to_agent\"\naudit = \"strict\""),
                "have no audit mode",
            ),
            (
                format!("{}\n{}", t(""), t("")),
                "topic[1].name: /cmd_vel is listed twice",
            ),
            (
                t("on_deny = \"stop\""),
                "topic[0] (/cmd_vel).on_deny: \"stop\" is not drop or publish",
            ),
            (
                t("on_deny = \"publish\""),
                "topic[0] (/cmd_vel).on_deny: \"publish\" needs a safe_message",
            ),
            (
                t("max_silence_ms = 300"),
                "topic[0] (/cmd_vel).max_silence_ms: the watchdog needs a safe_message",
            ),
            (
                t("max_silence_ms = 5\nsafe_message = {}"),
                ".max_silence_ms: 5 is out of range (10 to 3600000)",
            ),
            (
                t("safe_message = {}"),
                "topic[0] (/cmd_vel).safe_message: never published",
            ),
            (
                t("on_deny = \"publish\"\nsafe_message = 0"),
                "topic[0] (/cmd_vel).safe_message: must be a table in the shape of geometry_msgs/msg/Twist",
            ),
            (
                t("on_deny = \"publish\"\nsafe_message = { linear = { x = 1979-05-27 } }"),
                "topic[0] (/cmd_vel).safe_message.linear.x: a date is not a ROS value",
            ),
            (
                "[[topic]]\nname = \"/odom\"\ntype = \"nav_msgs/Odometry\"\ndirection = \"robot_to_agent\"\nmax_silence_ms = 100".into(),
                "topic[0] (/odom).max_silence_ms: only for agent_to_robot topics",
            ),
        ] {
            let e = BridgeFile::parse(&text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: {e}");
        }
        let many: String = (0..=MAX_TOPICS)
            .map(|i| format!("[[topic]]\nname = \"/t{i}\"\ntype = \"std_msgs/String\"\n"))
            .collect();
        assert!(BridgeFile::parse(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let f = BridgeFile::parse(include_str!("../../examples/bridge/bridge.toml")).unwrap();
        assert_eq!(f.topics.len(), 3);
        assert_eq!(f.topics[0].on_deny, OnDeny::Publish);
        assert_eq!(f.topics[0].max_silence, Some(Duration::from_millis(500)));
        assert!(f.topics[0].safe_message.is_some());
        assert_eq!(
            f.topics[0].audit,
            Audit::Batched {
                window: Duration::from_millis(10)
            }
        );
    }

    #[test]
    fn load_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("b.toml");
        let e = BridgeFile::load(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read", p.display())),
            "{e}"
        );
        std::fs::write(&p, "[[topic]]\nname = 3\n").unwrap();
        let e = BridgeFile::load(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: topic[0].name: must be a string, not integer",
                p.display()
            )
        );
    }
}
