//! The ROS 2 front end: node `/autonomy` with the `/autonomy/tool` service (into the same
//! [`Gate`] as HTTP), and the `/autonomy/markers` and `/autonomy/decisions` topics.
//!
//! Everything ROS-specific sits behind [`RosTransport`]; the default backend is
//! [`dds::Ros2ClientTransport`] (ros2-client, pure Rust DDS, no ROS install needed). With cargo
//! feature `r2r`, `rcl::RclTransport` (a real rcl node, built and run with a sourced ROS) is
//! there too and is the default; [`RosBackend`] picks one at run time. The core (`gate`,
//! `policy`, `wal`, `tools`) never imports anything from here.
//!
//! Malformed service requests (a bad `kind`, `params_json` that is not a JSON object) are
//! answered `deny` with a reason and an empty `audit_id`, and are not recorded in the WAL — the
//! same rule as HTTP 400s: they never reach the gate, so no decision was made.

#[cfg(all(feature = "jazzy", feature = "humble"))]
compile_error!(
    "features `jazzy` and `humble` are exclusive: build with `--no-default-features --features humble` for Humble"
);
#[cfg(not(any(feature = "jazzy", feature = "humble")))]
compile_error!("select the ROS 2 distro: enable feature `jazzy` (the default) or `humble`");

pub mod dds;
pub mod msgs;
#[cfg(feature = "r2r")]
pub mod rcl;
pub mod type_hash;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::gate::{DecisionObserver, Gate, GateResponse, Outcome, ToolCall};
use crate::types::{Agent, Source, ToolKind};

pub use msgs::{DecisionMsg, Time, ToolRequest, ToolResponse};

/// The node name.
pub const NODE_NAME: &str = "autonomy";
/// The node namespace.
pub const NODE_NAMESPACE: &str = "/";
/// The marker topic.
pub const MARKERS_TOPIC: &str = "/autonomy/markers";
/// The decisions topic.
pub const DECISIONS_TOPIC: &str = "/autonomy/decisions";
/// The tool service.
pub const TOOL_SERVICE: &str = "/autonomy/tool";
/// The `source` of calls made through `/autonomy/tool`.
pub const SOURCE: Source = Source::new("ros2");
/// Keep-last depth of `/autonomy/markers` (reliable, transient-local).
pub const MARKERS_DEPTH: usize = 32;
/// Decisions waiting for the publisher before new ones are dropped (and counted).
pub const DECISION_QUEUE: usize = 1024;

/// How long `run ros2.launch` waits for marker subscribers before marker 1, and for their
/// acknowledgements after the last marker (see [`RosHandle::await_marker_subscribers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerTiming {
    /// Longest wait for discovery before marker 1 when no subscriber shows up.
    pub settle: Duration,
    /// Once a subscriber is matched, how much longer to wait: its side of the match (our
    /// writer, seen by it) and other subscribers usually complete within this.
    pub grace: Duration,
    /// Longest wait after the last marker for matched reliable subscribers to acknowledge it.
    pub linger: Duration,
}

impl Default for MarkerTiming {
    fn default() -> Self {
        MarkerTiming {
            settle: Duration::from_secs(2),
            grace: Duration::from_millis(300),
            linger: Duration::from_secs(3),
        }
    }
}

/// The distro this binary speaks (chosen at build time by cargo feature).
#[cfg(feature = "jazzy")]
pub const DISTRO: &str = "jazzy";
/// The distro this binary speaks (chosen at build time by cargo feature).
#[cfg(all(feature = "humble", not(feature = "jazzy")))]
pub const DISTRO: &str = "humble";

/// How service requests and replies are correlated on the wire (reference §2, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceMapping {
    /// rmw_fastrtps (and Connext): related-sample-identity in inline QoS, no payload header.
    Enhanced,
    /// rmw_cyclonedds: a 16-byte `{client_id, seq}` header ahead of the fields.
    Cyclone,
}

impl ServiceMapping {
    /// The mapping for an `RMW_IMPLEMENTATION` value: `rmw_cyclonedds_cpp` → Cyclone; anything
    /// else, or unset → Enhanced (Fast DDS, the Humble and Jazzy default).
    pub fn from_rmw(rmw: Option<&str>) -> Self {
        match rmw.map(str::trim) {
            Some("rmw_cyclonedds_cpp") => ServiceMapping::Cyclone,
            _ => ServiceMapping::Enhanced,
        }
    }

    /// The RMW this mapping talks to, for messages.
    pub fn rmw_name(self) -> &'static str {
        match self {
            ServiceMapping::Enhanced => "rmw_fastrtps_cpp",
            ServiceMapping::Cyclone => "rmw_cyclonedds_cpp",
        }
    }
}

/// Largest domain id ROS 2 accepts on Linux with DDS (ports stay below 65535).
pub const MAX_DOMAIN_ID: u16 = 232;

/// Parses `ROS_DOMAIN_ID`: unset or empty → 0; otherwise an integer in 0..=232.
pub fn parse_domain_id(v: Option<&str>) -> Result<u16, String> {
    let Some(raw) = v else { return Ok(0) };
    let t = raw.trim();
    if t.is_empty() {
        return Ok(0);
    }
    match t.parse::<u16>() {
        Ok(d) if d <= MAX_DOMAIN_ID => Ok(d),
        _ => Err(format!(
            "ROS_DOMAIN_ID={raw:?} is not a domain id: use an integer from 0 to {MAX_DOMAIN_ID} (unset means 0)"
        )),
    }
}

/// Which implementation runs the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosBackend {
    /// ros2-client: pure Rust DDS, no ROS install needed.
    Dds,
    /// r2r: a real rcl node on the sourced ROS (builds with `--features r2r` only), with the
    /// RMW named by `RMW_IMPLEMENTATION` (`None`: the install's default).
    R2r {
        /// `RMW_IMPLEMENTATION`, for the start line.
        rmw: Option<String>,
    },
}

/// The variable that picks the backend: `dds` or `r2r`.
pub const BACKEND_ENV: &str = "AUTONOMY_ROS_BACKEND";

impl RosBackend {
    /// Parses `AUTONOMY_ROS_BACKEND` (`dds` or `r2r`; unset or empty: `r2r` in a build with the
    /// `r2r` feature, else `dds`); `rmw` is `RMW_IMPLEMENTATION`.
    pub fn parse(v: Option<&str>, rmw: Option<&str>) -> Result<Self, String> {
        let r2r = || RosBackend::R2r {
            rmw: rmw
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(String::from),
        };
        match v.map(str::trim).unwrap_or("") {
            "" if cfg!(feature = "r2r") => Ok(r2r()),
            "" | "dds" => Ok(RosBackend::Dds),
            "r2r" if cfg!(feature = "r2r") => Ok(r2r()),
            "r2r" => Err(format!(
                "{BACKEND_ENV}=r2r needs a build with the r2r backend (cargo build --features r2r, with ROS sourced); this build has only dds"
            )),
            other => Err(format!(
                "{BACKEND_ENV}={other:?} is not a ROS backend: use dds (ros2-client) or r2r (rcl)"
            )),
        }
    }
}

/// Where and how the node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosConfig {
    /// The DDS domain.
    pub domain_id: u16,
    /// The service mapping (ros2-client only; rcl's RMW does its own).
    pub mapping: ServiceMapping,
    /// The implementation.
    pub backend: RosBackend,
}

impl RosConfig {
    /// From `ROS_DOMAIN_ID`, `RMW_IMPLEMENTATION` and `AUTONOMY_ROS_BACKEND`; an invalid domain
    /// id or backend is an error.
    pub fn from_env() -> Result<Self, String> {
        let domain = std::env::var("ROS_DOMAIN_ID").ok();
        let rmw = std::env::var("RMW_IMPLEMENTATION").ok();
        let backend = std::env::var(BACKEND_ENV).ok();
        Ok(RosConfig {
            domain_id: parse_domain_id(domain.as_deref())?,
            mapping: ServiceMapping::from_rmw(rmw.as_deref()),
            backend: RosBackend::parse(backend.as_deref(), rmw.as_deref())?,
        })
    }

    /// A warning when `ROS_DISTRO` names another distro than this build speaks (the node's
    /// `ros_discovery_info` would then not decode there: Humble's Gid is 24 bytes, later 16).
    pub fn distro_warning(ros_distro: Option<&str>) -> Option<String> {
        let d = ros_distro?.trim();
        if d.is_empty() || d == DISTRO {
            return None;
        }
        Some(format!(
            "warning: ROS_DISTRO={d} but this build speaks {DISTRO}: topics and the service work, but `ros2 node list` may not show /{NODE_NAME} (builds: cargo feature `jazzy`, or `--no-default-features --features humble`)"
        ))
    }

    /// The one line printed on start.
    pub fn describe(&self) -> String {
        match &self.backend {
            RosBackend::Dds => format!(
                "ROS 2 node /{NODE_NAME} on domain {} ({DISTRO}, {} service mapping)",
                self.domain_id,
                self.mapping.rmw_name()
            ),
            RosBackend::R2r { rmw } => format!(
                "ROS 2 node /{NODE_NAME} on domain {} (rcl via r2r, {})",
                self.domain_id,
                rmw.as_deref().unwrap_or("the install's default RMW")
            ),
        }
    }
}

/// A ROS failure (node creation, publishing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosError(pub String);

impl fmt::Display for RosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RosError {}

/// The caller name of every `/autonomy/tool` request on the r2r backend.
pub const RCL_CALLER: &str = "ros2:rcl";

/// Answers `/autonomy/tool` requests through the gate. Backend-neutral: a backend only moves
/// [`ToolRequest`]s and [`ToolResponse`]s.
#[derive(Clone)]
pub struct ToolService {
    gate: Arc<Gate>,
}

impl ToolService {
    /// Over this gate.
    pub fn new(gate: Arc<Gate>) -> Self {
        ToolService { gate }
    }

    /// One request from `caller` → one answer. Never panics on bad input.
    pub async fn handle(&self, req: ToolRequest, caller: Agent) -> ToolResponse {
        match parse_request(&req) {
            Ok(mut call) => {
                call.agent = caller;
                response_from(self.gate.call(call).await)
            }
            Err(reason) => ToolResponse {
                decision: "deny".into(),
                output_json: String::new(),
                reason,
                policy_ref: self.gate.policy().get().policy_ref().as_str().to_string(),
                audit_id: String::new(),
                rules_json: rules_json(&[]),
            },
        }
    }
}

/// Validates a service request into a gate call, or says what is wrong (the deny reason).
pub fn parse_request(req: &ToolRequest) -> Result<ToolCall, String> {
    let kind = ToolKind::parse(&req.kind).map_err(|e| format!("malformed request: {e}"))?;
    let params = if req.params_json.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(&req.params_json) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Err(
                    "malformed request: `params_json` must be a JSON object, e.g. {\"message\": \"hi\"}"
                        .into(),
                );
            }
            Err(e) => {
                return Err(format!(
                    "malformed request: `params_json` is not valid JSON: {e}"
                ));
            }
        }
    };
    Ok(ToolCall {
        kind,
        params,
        source: SOURCE,
        agent: crate::types::Agent::anonymous(),
    })
}

/// The reason text for an answer: the gate's reason, and `error: …` when the call failed; for a
/// downgrade, `downgraded: patch {…}` (what changed: the ROS messages have no field of their own
/// for it).
pub fn reason_text(r: &GateResponse) -> String {
    let err = match &r.outcome {
        Outcome::BadParams(e) | Outcome::UpstreamFailed(e) | Outcome::WalUnavailable(e) => {
            Some(e.as_str())
        }
        _ => None,
    };
    let downgraded = r
        .downgrade
        .as_ref()
        .map(|d| format!("downgraded: patch {}", Value::Object(d.patch.clone())));
    match (r.reason.as_deref().or(downgraded.as_deref()), err) {
        (Some(why), Some(e)) => format!("{why} (error: {e})"),
        (Some(why), None) => why.to_string(),
        (None, Some(e)) => format!("error: {e}"),
        (None, None) => String::new(),
    }
}

/// Maps a gate answer to the service response (as `http::render` does for HTTP).
pub fn response_from(r: GateResponse) -> ToolResponse {
    let output_json = match (&r.outcome, &r.downgrade) {
        (Outcome::Executed(v), _) => v.to_string(),
        // A decision-only call the caller acts on: it must act on the patched params.
        (Outcome::DecisionOnly, Some(d)) => serde_json::json!({
            "downgraded": true,
            "patch": d.patch,
            "params": d.patched.params,
        })
        .to_string(),
        _ => String::new(),
    };
    ToolResponse {
        decision: r.decision.as_str().to_string(),
        output_json,
        reason: reason_text(&r),
        policy_ref: r.policy_ref.as_str().to_string(),
        audit_id: r.audit_id.as_str().to_string(),
        rules_json: rules_json(&r.rules),
    }
}

/// The rules field of the service answer and the decision message: the policy rules that
/// decided, as a JSON array text (`[]` when none), as the HTTP answer's `rules` holds them.
pub fn rules_json(rules: &[Arc<crate::policy::RuleRef>]) -> String {
    serde_json::to_string(rules).unwrap_or_else(|_| "[]".into())
}

/// The decision message for a gate answer.
pub fn decision_msg(call: &ToolCall, r: &GateResponse) -> DecisionMsg {
    DecisionMsg {
        stamp: Time::now(),
        audit_id: r.audit_id.as_str().to_string(),
        kind: call.kind.as_str().to_string(),
        decision: r.decision.as_str().to_string(),
        reason: reason_text(r),
        policy_ref: r.policy_ref.as_str().to_string(),
        source: call.source.as_str().to_string(),
        rules_json: rules_json(&r.rules),
    }
}

/// What a ROS backend provides. Implement this to add a backend (r2r, zenoh, a mock).
pub trait RosTransport: Send + Sync + 'static {
    /// Publishes one line on `/autonomy/markers`, exactly as given.
    fn publish_marker(&self, line: &str) -> Result<(), RosError>;
    /// How many subscribers of `/autonomy/markers` discovery has matched so far.
    fn marker_subscribers(&self) -> usize {
        0
    }
    /// Waits up to `limit` until every matched reliable subscriber of `/autonomy/markers` has
    /// acknowledged every marker published so far; true when they have (or there are none).
    fn flush_markers(&self, limit: Duration) -> BoxFuture<'_, bool> {
        let _ = limit;
        Box::pin(async { true })
    }
    /// Publishes one message on `/autonomy/decisions`. May block briefly (reliable writer).
    fn publish_decision(&self, msg: &DecisionMsg) -> Result<(), RosError>;
    /// Serves `/autonomy/tool` with `svc` until `stop` turns true; the request being handled
    /// when it does is finished and answered first.
    fn serve_tools(&self, svc: ToolService, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()>;
    /// Stops the backend's background work (spinner); called last on shutdown.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Polls `count` until `timing.grace` after it first is non-zero, or until `timing.settle` when
/// it stays zero; returns the last count. Never waits longer than `settle + grace`.
async fn await_subscribers(count: impl Fn() -> usize, timing: MarkerTiming) -> usize {
    let start = tokio::time::Instant::now();
    let mut matched_at = None;
    loop {
        let n = count();
        let now = tokio::time::Instant::now();
        if n > 0 && matched_at.is_none() {
            matched_at = Some(now);
        }
        let done = match matched_at {
            Some(t) => now >= t + timing.grace,
            None => now >= start + timing.settle,
        };
        if done {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Forwards every gate decision to the decisions publisher without blocking the gate: a
/// bounded queue; when it is full the message is dropped and counted.
struct DecisionForwarder {
    tx: Mutex<Option<mpsc::Sender<DecisionMsg>>>,
    dropped: Arc<AtomicU64>,
}

impl DecisionObserver for DecisionForwarder {
    fn on_decision(&self, call: &ToolCall, resp: &GateResponse) {
        let Ok(guard) = self.tx.lock() else { return };
        let Some(tx) = guard.as_ref() else { return };
        if tx.try_send(decision_msg(call, resp)).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    "{DECISIONS_TOPIC}: publisher queue full, {n} decision message(s) dropped so far"
                );
            }
        }
    }
}

/// The running node. Publish markers with [`RosHandle::publish_marker`]; stop with
/// [`RosHandle::shutdown`].
pub struct RosHandle {
    transport: Arc<dyn RosTransport>,
    config: RosConfig,
    forwarder: Arc<DecisionForwarder>,
    stop_tx: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
    publisher: Option<std::thread::JoinHandle<()>>,
}

impl RosHandle {
    /// The configuration the node runs with.
    pub fn config(&self) -> &RosConfig {
        &self.config
    }

    /// Publishes a marker line on `/autonomy/markers` exactly as printed.
    pub fn publish_marker(&self, line: &str) -> Result<(), RosError> {
        self.transport.publish_marker(line)
    }

    /// Waits until discovery has matched the subscribers of `/autonomy/markers` that already
    /// run, so that a plain (volatile) `ros2 topic echo` started before us sees every marker:
    /// returns `timing.grace` after the first match, or after `timing.settle` when nobody
    /// subscribes. Returns the number of matched subscribers.
    pub async fn await_marker_subscribers(&self, timing: MarkerTiming) -> usize {
        let start = tokio::time::Instant::now();
        let n = await_subscribers(|| self.transport.marker_subscribers(), timing).await;
        tracing::debug!(
            "{MARKERS_TOPIC}: {n} subscriber(s) matched after {:?}",
            start.elapsed()
        );
        n
    }

    /// Waits up to `limit` until matched reliable subscribers have acknowledged every marker;
    /// true when they have (or there are none).
    pub async fn flush_markers(&self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        let acked = self.transport.flush_markers(limit).await;
        tracing::debug!(
            "{MARKERS_TOPIC}: acknowledged: {acked} after {:?}",
            start.elapsed()
        );
        acked
    }

    /// Decision messages dropped because the publisher fell behind.
    pub fn dropped_decisions(&self) -> u64 {
        self.forwarder.dropped.load(Ordering::Relaxed)
    }

    /// Stops serving (after the request in hand), publishes queued decisions, stops the node.
    pub async fn shutdown(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        if let Ok(mut g) = self.forwarder.tx.lock() {
            g.take();
        }
        if let Some(p) = self.publisher.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(move || p.join()),
            )
            .await;
        }
        self.transport.shutdown().await;
    }
}

/// Starts node `/autonomy` as a front end of `runtime` (the service into its gate, the marker
/// and decision topics); stop it with [`crate::runtime::FrontEnd::shutdown`] before the runtime.
pub fn start(runtime: &crate::runtime::Runtime, config: RosConfig) -> Result<RosHandle, RosError> {
    start_ros(runtime.gate().clone(), config)
}

impl crate::runtime::FrontEnd for RosHandle {
    fn shutdown(self) -> impl std::future::Future<Output = ()> + Send {
        RosHandle::shutdown(self)
    }
}

/// Starts node `/autonomy` with the configured backend: the service into `gate`, the marker
/// and decision topics. Call inside a tokio runtime.
pub fn start_ros(gate: Arc<Gate>, config: RosConfig) -> Result<RosHandle, RosError> {
    let transport: Arc<dyn RosTransport> = match config.backend {
        RosBackend::Dds => Arc::new(dds::Ros2ClientTransport::new(&config)?),
        #[cfg(feature = "r2r")]
        RosBackend::R2r { .. } => Arc::new(rcl::RclTransport::new()?),
        #[cfg(not(feature = "r2r"))]
        RosBackend::R2r { .. } => {
            return Err(RosError("this build has no r2r backend".into()));
        }
    };
    Ok(start_with(gate, config, transport))
}

/// Starts the ROS front end on any backend.
pub fn start_with(
    gate: Arc<Gate>,
    config: RosConfig,
    transport: Arc<dyn RosTransport>,
) -> RosHandle {
    let (tx, mut rx) = mpsc::channel::<DecisionMsg>(DECISION_QUEUE);
    let forwarder = Arc::new(DecisionForwarder {
        tx: Mutex::new(Some(tx)),
        dropped: Arc::new(AtomicU64::new(0)),
    });
    gate.add_observer(forwarder.clone());

    // A plain thread: a reliable DDS write may wait for buffer space, which must not hold up
    // tokio workers (or the gate).
    let t = transport.clone();
    let publisher = std::thread::Builder::new()
        .name("autonomy-ros-decisions".into())
        .spawn(move || {
            while let Some(m) = rx.blocking_recv() {
                if let Err(e) = t.publish_decision(&m) {
                    tracing::warn!("{DECISIONS_TOPIC}: cannot publish {}: {e}", m.audit_id);
                }
            }
        })
        .ok();

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(transport.serve_tools(ToolService::new(gate), stop_rx));
    RosHandle {
        transport,
        config,
        forwarder,
        stop_tx,
        server: Some(server),
        publisher,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_downgrade_answers_allow_with_the_patch() {
        let patch: Map<String, Value> = serde_json::from_str(r#"{"speed":1}"#).unwrap();
        let params: Map<String, Value> =
            serde_json::from_str(r#"{"speed":1,"heading":90}"#).unwrap();
        let r = GateResponse {
            downgrade: Some(crate::gate::Downgrade {
                patch,
                patched: crate::policy::patch::Patched {
                    params,
                    encoded: None,
                },
            }),
            ..GateResponse {
                decision: crate::types::Decision::Allow,
                policy_ref: crate::types::PolicyRef::new("p"),
                audit_id: crate::types::AuditId::from_string("id".into()),
                reason: None,
                outcome: Outcome::DecisionOnly,
                shadow: None,
                approval: None,
                downgrade: None,
                rules: Vec::new(),
            }
        };
        let a = response_from(r);
        assert_eq!(a.decision, "allow");
        assert_eq!(a.reason, r#"downgraded: patch {"speed":1}"#);
        let out: Value = serde_json::from_str(&a.output_json).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"downgraded": true, "patch": {"speed": 1}, "params": {"speed": 1, "heading": 90}})
        );
    }

    fn timing(settle_ms: u64, grace_ms: u64) -> MarkerTiming {
        MarkerTiming {
            settle: Duration::from_millis(settle_ms),
            grace: Duration::from_millis(grace_ms),
            linger: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_marker_wait_ends_after_settle_without_subscribers() {
        let t0 = tokio::time::Instant::now();
        assert_eq!(await_subscribers(|| 0, timing(2000, 300)).await, 0);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(2000) && took < Duration::from_millis(2100));
        // Turned off.
        let t0 = tokio::time::Instant::now();
        assert_eq!(await_subscribers(|| 0, timing(0, 300)).await, 0);
        assert!(t0.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn the_marker_wait_ends_a_grace_after_the_first_subscriber() {
        let t0 = tokio::time::Instant::now();
        let count = || usize::from(t0.elapsed() >= Duration::from_millis(500));
        assert_eq!(await_subscribers(count, timing(20_000, 300)).await, 1);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_millis(900),
            "{took:?}"
        );
        // Matched at once: only the grace.
        let t0 = tokio::time::Instant::now();
        assert_eq!(await_subscribers(|| 2, timing(2000, 300)).await, 2);
        assert!(t0.elapsed() < Duration::from_millis(350));
    }

    #[test]
    fn mapping_from_rmw_implementation() {
        assert_eq!(
            ServiceMapping::from_rmw(Some("rmw_cyclonedds_cpp")),
            ServiceMapping::Cyclone
        );
        assert_eq!(
            ServiceMapping::from_rmw(Some("rmw_fastrtps_cpp")),
            ServiceMapping::Enhanced
        );
        assert_eq!(
            ServiceMapping::from_rmw(Some("rmw_fastrtps_dynamic_cpp")),
            ServiceMapping::Enhanced
        );
        assert_eq!(
            ServiceMapping::from_rmw(Some("rmw_connextdds")),
            ServiceMapping::Enhanced
        );
        assert_eq!(ServiceMapping::from_rmw(Some("")), ServiceMapping::Enhanced);
        assert_eq!(ServiceMapping::from_rmw(None), ServiceMapping::Enhanced);
    }

    #[test]
    fn domain_id_rules() {
        assert_eq!(parse_domain_id(None), Ok(0));
        assert_eq!(parse_domain_id(Some("")), Ok(0));
        assert_eq!(parse_domain_id(Some("42")), Ok(42));
        assert_eq!(parse_domain_id(Some(" 7 ")), Ok(7));
        assert_eq!(parse_domain_id(Some("232")), Ok(232));
        for bad in ["233", "-1", "abc", "1.5", "70000"] {
            let e = parse_domain_id(Some(bad)).unwrap_err();
            assert!(e.contains("ROS_DOMAIN_ID") && e.contains("0 to 232"), "{e}");
        }
    }

    #[test]
    fn distro_feature_reaches_ros2_client() {
        assert_eq!(ros2_client::COMPILED_ROS_DISTRO.as_str(), DISTRO);
        let gid = if DISTRO == "humble" { 24 } else { 16 };
        assert_eq!(ros2_client::gid::GID_LENGTH, gid);
        assert_eq!(RosConfig::distro_warning(None), None);
        assert_eq!(RosConfig::distro_warning(Some(DISTRO)), None);
        assert!(
            RosConfig::distro_warning(Some("kilted"))
                .unwrap()
                .contains("kilted")
        );
    }

    #[test]
    fn start_line_names_domain_distro_and_mapping() {
        let mut c = RosConfig {
            domain_id: 42,
            mapping: ServiceMapping::Cyclone,
            backend: RosBackend::Dds,
        };
        assert_eq!(
            c.describe(),
            format!(
                "ROS 2 node /autonomy on domain 42 ({DISTRO}, rmw_cyclonedds_cpp service mapping)"
            )
        );
        c.backend = RosBackend::R2r {
            rmw: Some("rmw_zenoh_cpp".into()),
        };
        assert_eq!(
            c.describe(),
            "ROS 2 node /autonomy on domain 42 (rcl via r2r, rmw_zenoh_cpp)"
        );
        c.backend = RosBackend::R2r { rmw: None };
        assert_eq!(
            c.describe(),
            "ROS 2 node /autonomy on domain 42 (rcl via r2r, the install's default RMW)"
        );
    }

    #[test]
    fn backend_choice() {
        let r2r = |rmw: Option<&str>| RosBackend::R2r {
            rmw: rmw.map(String::from),
        };
        assert_eq!(RosBackend::parse(Some("dds"), None), Ok(RosBackend::Dds));
        assert_eq!(RosBackend::parse(Some(" dds "), None), Ok(RosBackend::Dds));
        let default = if cfg!(feature = "r2r") {
            r2r(Some("rmw_cyclonedds_cpp"))
        } else {
            RosBackend::Dds
        };
        assert_eq!(
            RosBackend::parse(None, Some("rmw_cyclonedds_cpp")),
            Ok(default.clone())
        );
        assert_eq!(
            RosBackend::parse(Some(""), Some("rmw_cyclonedds_cpp")),
            Ok(default)
        );
        let e = RosBackend::parse(Some("zenoh"), None).unwrap_err();
        assert_eq!(
            e,
            "AUTONOMY_ROS_BACKEND=\"zenoh\" is not a ROS backend: use dds (ros2-client) or r2r (rcl)"
        );
        let asked = RosBackend::parse(Some("r2r"), Some(""));
        if cfg!(feature = "r2r") {
            assert_eq!(asked, Ok(r2r(None)));
        } else {
            assert!(asked.unwrap_err().contains("--features r2r"));
        }
    }

    #[test]
    fn request_rules() {
        let req = |k: &str, p: &str| ToolRequest {
            kind: k.into(),
            params_json: p.into(),
        };
        let c = parse_request(&req("tool.echo", r#"{"message":"hi"}"#)).unwrap();
        assert_eq!(c.source, SOURCE);
        assert_eq!(c.params["message"], "hi");
        assert!(
            parse_request(&req("tool.echo", ""))
                .unwrap()
                .params
                .is_empty()
        );
        assert!(
            parse_request(&req("tool.echo", "  "))
                .unwrap()
                .params
                .is_empty()
        );
        let e = parse_request(&req("tool.echo", "[1]")).unwrap_err();
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = parse_request(&req("tool.echo", "{nope")).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse_request(&req("", "{}")).unwrap_err();
        assert!(e.contains("`kind` must not be empty"), "{e}");
        let e = parse_request(&req("a b", "{}")).unwrap_err();
        assert!(e.contains("may only contain"), "{e}");
        let deep = "[".repeat(10_000);
        assert!(parse_request(&req("tool.echo", &deep)).is_err());
    }
}
