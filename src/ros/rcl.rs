//! The r2r backend (`--features r2r`): node `/autonomy` as a real rcl node, for machines with a
//! sourced ROS 2. rcl and the RMW the environment selects do the wire work, so every RMW
//! (Zenoh too), `ROS_LOCALHOST_ONLY`, `ROS_AUTOMATIC_DISCOVERY_RANGE`, `ROS_STATIC_PEERS`, the
//! Fast DDS discovery server, SROS2 enclaves and rosidl's own type hashes apply as for any ROS
//! node.
//!
//! rcl entities may only be changed from the thread that owns the node, so one plain thread
//! creates the node, spins it and drops it; publishers and the request stream are handed out.
//! Publishing and answering requests are thread-safe in rcl.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use r2r::QosProfile;
use r2r::autonomy_msgs::msg::Decision;
use r2r::autonomy_msgs::srv::Tool;
use tokio::sync::watch;

use super::msgs::{DecisionMsg, ToolRequest, ToolResponse};
use super::{
    DECISIONS_TOPIC, MARKERS_DEPTH, MARKERS_TOPIC, NODE_NAME, NODE_NAMESPACE, RosError,
    RosTransport, TOOL_SERVICE, ToolService,
};

type Markers = r2r::Publisher<r2r::std_msgs::msg::String>;
type Decisions = r2r::Publisher<Decision>;
type Requests = BoxStream<'static, r2r::ServiceRequest<Tool::Service>>;

/// How long one `spin_once` may block without events: the bound on noticing `shutdown`.
/// Requests wake the spinner at once, so this does not add latency.
const SPIN_PERIOD: Duration = Duration::from_millis(50);
/// Longest wait for the spinner thread to create the node.
const CREATE_LIMIT: Duration = Duration::from_secs(30);

/// Node `/autonomy` on rcl (through r2r).
pub struct RclTransport {
    // r2r publishers are `Send` but not `Sync`; a lock makes the transport shareable.
    markers: Mutex<Markers>,
    decisions: Mutex<Decisions>,
    requests: Mutex<Option<Requests>>,
    stop: Arc<AtomicBool>,
    spinner: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// `/autonomy/markers`: reliable, transient-local, keep-last 32, so late joiners get the lines.
pub fn markers_qos() -> QosProfile {
    QosProfile::default()
        .reliable()
        .transient_local()
        .keep_last(MARKERS_DEPTH)
}

/// `/autonomy/decisions`: reliable, volatile (the ROS default), keep-last 100.
pub fn decisions_qos() -> QosProfile {
    QosProfile::default().reliable().volatile().keep_last(100)
}

/// Services: the ROS default (reliable, volatile, keep-last 10).
pub fn service_qos() -> QosProfile {
    QosProfile::services_default()
}

/// A ROS string: rcl strings are C strings, so a NUL (which r2r cannot copy and would panic
/// on) becomes U+FFFD.
pub fn ros_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

/// The rcl message for a decision.
pub fn decision_to_rcl(m: &DecisionMsg) -> Decision {
    Decision {
        stamp: r2r::builtin_interfaces::msg::Time {
            sec: m.stamp.sec,
            nanosec: m.stamp.nanosec,
        },
        audit_id: ros_text(&m.audit_id),
        kind: ros_text(&m.kind),
        decision: ros_text(&m.decision),
        reason: ros_text(&m.reason),
        policy_ref: ros_text(&m.policy_ref),
        source: ros_text(&m.source),
        rules_json: ros_text(&m.rules_json),
    }
}

/// The rcl message for a service answer.
pub fn response_to_rcl(r: &ToolResponse) -> Tool::Response {
    Tool::Response {
        decision: ros_text(&r.decision),
        output_json: ros_text(&r.output_json),
        reason: ros_text(&r.reason),
        policy_ref: ros_text(&r.policy_ref),
        audit_id: ros_text(&r.audit_id),
        rules_json: ros_text(&r.rules_json),
    }
}

fn rcl_err(what: &str) -> impl Fn(r2r::Error) -> RosError + '_ {
    move |e| RosError(format!("cannot create {what}: {e}"))
}

/// The process's rcl context. rcl gets no arguments but the program name: ours are not ROS
/// arguments, and rcl would take words like `robot:=alpha` (launch arguments of `run
/// ros2.launch`) as remap rules for our node. `r2r::Context` panics when `rcl_init` fails;
/// that becomes an error here, with rcl's message and without the panic report.
fn context() -> Result<r2r::Context, RosError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let created =
        std::panic::catch_unwind(|| r2r::Context::create_with_args(vec![NODE_NAME.to_string()]));
    std::panic::set_hook(hook);
    match created {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) => Err(RosError(format!("cannot initialise rcl: {e}"))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("rcl_init failed");
            Err(RosError(format!(
                "cannot initialise rcl: {}",
                why.lines().next().unwrap_or(why).trim()
            )))
        }
    }
}

/// What the spinner thread hands out once the node is up.
type Parts = (Markers, Decisions, Requests);

fn create_node(ctx: r2r::Context) -> Result<(r2r::Node, Parts), RosError> {
    let mut node = r2r::Node::create(ctx, NODE_NAME, NODE_NAMESPACE)
        .map_err(|e| RosError(format!("cannot create node /{NODE_NAME}: {e}")))?;
    let markers = node
        .create_publisher::<r2r::std_msgs::msg::String>(MARKERS_TOPIC, markers_qos())
        .map_err(rcl_err(MARKERS_TOPIC))?;
    let decisions = node
        .create_publisher::<Decision>(DECISIONS_TOPIC, decisions_qos())
        .map_err(rcl_err(DECISIONS_TOPIC))?;
    let requests = node
        .create_service::<Tool::Service>(TOOL_SERVICE, service_qos())
        .map_err(rcl_err(TOOL_SERVICE))?
        .boxed();
    Ok((node, (markers, decisions, requests)))
}

impl RclTransport {
    /// Initialises rcl (domain, RMW, discovery and security settings come from the
    /// environment, as for any ROS node) and starts the thread that owns and spins the node.
    pub fn new() -> Result<Self, RosError> {
        let ctx = context()?;
        let (tx, rx) = std_mpsc::channel::<Result<Parts, RosError>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spinner = std::thread::Builder::new()
            .name("autonomy-rcl-spin".into())
            .spawn(move || {
                let mut node = match create_node(ctx) {
                    Ok((node, parts)) => {
                        let _ = tx.send(Ok(parts));
                        node
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                while !stopped.load(Ordering::Acquire) {
                    node.spin_once(SPIN_PERIOD);
                }
                // Dropping the node here, on its own thread, finalises its rcl entities.
            })
            .map_err(|e| RosError(format!("cannot start the rcl spinner thread: {e}")))?;
        let (markers, decisions, requests) = match rx.recv_timeout(CREATE_LIMIT) {
            Ok(parts) => parts?,
            Err(_) => {
                stop.store(true, Ordering::Release);
                return Err(RosError(format!(
                    "node /{NODE_NAME} was not created within {CREATE_LIMIT:?}"
                )));
            }
        };
        Ok(RclTransport {
            markers: Mutex::new(markers),
            decisions: Mutex::new(decisions),
            requests: Mutex::new(Some(requests)),
            stop,
            spinner: Mutex::new(Some(spinner)),
        })
    }
}

async fn serve(mut requests: Requests, svc: ToolService, mut stop: watch::Receiver<bool>) {
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            item = requests.next() => match item {
                Some(mut req) => {
                    let svc = svc.clone();
                    inflight.spawn(async move {
                        let ask = ToolRequest {
                            kind: std::mem::take(&mut req.message.kind),
                            params_json: std::mem::take(&mut req.message.params_json),
                        };
                        // rcl does not hand the request's writer GUID through r2r: every caller
                        // is the same one here.
                        let resp = svc
                            .handle(ask, crate::types::Agent::new(super::RCL_CALLER))
                            .await;
                        if let Err(e) = req.respond(response_to_rcl(&resp)) {
                            tracing::warn!(
                                "{TOOL_SERVICE}: cannot send the answer for {}: {e}",
                                resp.audit_id
                            );
                        }
                    });
                }
                None => break,
            },
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    }
    while inflight.join_next().await.is_some() {}
}

impl RosTransport for RclTransport {
    fn publish_marker(&self, line: &str) -> Result<(), RosError> {
        let msg = r2r::std_msgs::msg::String {
            data: ros_text(line),
        };
        let p = self
            .markers
            .lock()
            .map_err(|_| RosError(format!("{MARKERS_TOPIC}: publisher lock poisoned")))?;
        p.publish(&msg)
            .map_err(|e| RosError(format!("{MARKERS_TOPIC}: {e}")))
    }

    fn marker_subscribers(&self) -> usize {
        // `rcl_publisher_get_subscription_count`: the subscriptions the RMW has matched.
        self.markers
            .lock()
            .ok()
            .and_then(|p| p.get_inter_process_subscription_count().ok())
            .unwrap_or(0)
    }

    fn flush_markers(&self, limit: Duration) -> BoxFuture<'_, bool> {
        let publisher = self.markers.lock().ok().map(|p| p.clone());
        Box::pin(async move {
            let Some(p) = publisher else { return false };
            // `rcl_publisher_wait_for_all_acked` blocks; it is thread-safe in rcl.
            let wait = tokio::task::spawn_blocking(move || p.wait_for_all_acked(limit));
            match tokio::time::timeout(limit + Duration::from_secs(1), wait).await {
                Ok(Ok(Ok(acked))) => acked,
                Ok(Ok(Err(e))) => {
                    tracing::debug!("{MARKERS_TOPIC}: waiting for acknowledgements failed: {e}");
                    false
                }
                _ => false,
            }
        })
    }

    fn publish_decision(&self, msg: &DecisionMsg) -> Result<(), RosError> {
        let m = decision_to_rcl(msg);
        let p = self
            .decisions
            .lock()
            .map_err(|_| RosError(format!("{DECISIONS_TOPIC}: publisher lock poisoned")))?;
        p.publish(&m)
            .map_err(|e| RosError(format!("{DECISIONS_TOPIC}: {e}")))
    }

    fn serve_tools(&self, svc: ToolService, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let requests = self.requests.lock().ok().and_then(|mut g| g.take());
        Box::pin(async move {
            match requests {
                Some(r) => serve(r, svc, stop).await,
                None => tracing::error!("{TOOL_SERVICE} is already being served"),
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.stop.store(true, Ordering::Release);
        let spinner = self.spinner.lock().ok().and_then(|mut g| g.take());
        Box::pin(async move {
            if let Some(s) = spinner {
                let join = tokio::task::spawn_blocking(move || s.join());
                let _ = tokio::time::timeout(Duration::from_secs(2), join).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2r::WrappedTypesupport;
    use r2r::qos::{DurabilityPolicy, HistoryPolicy, ReliabilityPolicy};

    #[test]
    fn markers_qos_is_reliable_transient_local_keep_last_32() {
        let q = markers_qos();
        assert_eq!(q.reliability, ReliabilityPolicy::Reliable);
        assert_eq!(q.durability, DurabilityPolicy::TransientLocal);
        assert_eq!((q.history, q.depth), (HistoryPolicy::KeepLast, 32));
        let d = decisions_qos();
        assert_eq!(d.reliability, ReliabilityPolicy::Reliable);
        assert_eq!(d.durability, DurabilityPolicy::Volatile);
        assert_eq!((d.history, d.depth), (HistoryPolicy::KeepLast, 100));
    }

    #[test]
    fn a_nul_in_a_string_does_not_reach_rcl() {
        assert_eq!(ros_text("a\0b"), "a\u{FFFD}b");
        assert_eq!(ros_text("plain ü"), "plain ü");
        let r = ToolResponse {
            reason: "bad\0reason".into(),
            ..ToolResponse::default()
        };
        // Converting to the native message copies every string into C; it must not panic.
        let native = r2r::NativeMsg::<Tool::Response>::from(&response_to_rcl(&r));
        let back = Tool::Response::from_native(&native);
        assert_eq!(back.reason, "bad\u{FFFD}reason");
    }
}
