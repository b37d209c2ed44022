//! The ros2-client backend (pure Rust DDS on RustDDS): no ROS install needed to build or run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use ros2_client::dds::rustdds::{DomainParticipant, DomainParticipantBuilder};
use ros2_client::qos::{Durability, History, WhenFull};
use ros2_client::{
    Context, Gid, MessageTypeName, Name, Node, NodeName, NodeOptions, Publisher, QosProfile,
    Server, ServiceTypeName,
};
use tokio::sync::watch;

use super::msgs::{DecisionMsg, PACKAGE, ToolRequest, ToolResponse};
use super::{
    DECISIONS_TOPIC, MARKERS_DEPTH, MARKERS_TOPIC, NODE_NAME, NODE_NAMESPACE, RosConfig, RosError,
    RosTransport, ServiceMapping, TOOL_SERVICE, ToolService,
};

type ToolServer = Server<ToolRequest, ToolResponse>;

/// Node `/autonomy` on ros2-client.
pub struct Ros2ClientTransport {
    markers: Publisher<String>,
    decisions: Publisher<DecisionMsg>,
    server: Mutex<Option<ToolServer>>,
    node: Mutex<Option<Node>>,
    spinner: Mutex<Option<tokio::task::JoinHandle<()>>>,
    // Last: the participant must outlive every entity above, or their removal fails noisily.
    context: Context,
}

/// ros2-client's mapping for ours.
pub fn client_mapping(m: ServiceMapping) -> ros2_client::ServiceMapping {
    match m {
        ServiceMapping::Enhanced => ros2_client::ServiceMapping::Enhanced,
        ServiceMapping::Cyclone => ros2_client::ServiceMapping::Cyclone,
    }
}

/// `/autonomy/markers`: reliable, transient-local, keep-last 32, so late joiners get the lines.
pub fn markers_qos() -> QosProfile {
    QosProfile::publisher_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::TransientLocal)
        .history(History::KeepLast {
            depth: MARKERS_DEPTH,
        })
}

/// `/autonomy/decisions`: reliable, volatile (the ROS default), keep-last 100.
pub fn decisions_qos() -> QosProfile {
    QosProfile::publisher_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth: 100 })
}

/// Services: the ROS default (reliable, volatile, keep-last 10).
pub fn service_qos() -> QosProfile {
    QosProfile::publisher_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth: 10 })
}

fn err(what: &str) -> impl Fn(ros2_client::CreateError) -> RosError + '_ {
    move |e| RosError(format!("cannot create {what}: {e:?}"))
}

/// The DDS participant on the configured domain (ros2-client ignores `ROS_DOMAIN_ID`, so the
/// domain is passed explicitly). On Jazzy every endpoint advertises its type's REP 2011 hash in
/// USER_DATA, as rmw does; without it Jazzy's Cyclone RMW warns about each of our endpoints.
fn participant(cfg: &RosConfig) -> Result<DomainParticipant, RosError> {
    #[cfg_attr(not(feature = "jazzy"), allow(unused_mut))]
    let mut builder = DomainParticipantBuilder::new(cfg.domain_id);
    #[cfg(feature = "jazzy")]
    for (dds_type, user_data) in
        super::type_hash::endpoint_user_data().map_err(|e| RosError(e.to_string()))?
    {
        builder = builder.endpoint_user_data(dds_type, user_data);
    }
    builder
        .build()
        .map_err(|e| RosError(format!("cannot create the DDS participant: {e:?}")))
}

fn name(full: &str) -> Result<Name, RosError> {
    Name::parse(full).map_err(|e| RosError(format!("bad ROS name {full}: {e:?}")))
}

impl Ros2ClientTransport {
    /// Creates the DDS participant on the configured domain, the node, its topics and the
    /// service, and spawns the node's spinner (needs a tokio runtime).
    pub fn new(cfg: &RosConfig) -> Result<Self, RosError> {
        let ctx =
            Context::from_domain_participant(participant(cfg)?).map_err(err("the ROS context"))?;
        let node_name = NodeName::new(NODE_NAMESPACE, NODE_NAME)
            .map_err(|e| RosError(format!("bad node name: {e:?}")))?;
        // No rosout (we log to stderr) and no parameter services: the node has no parameters,
        // and every endpoint it creates must advertise a type hash (see `participant`).
        let options = NodeOptions::new()
            .enable_rosout(false)
            .start_parameter_services(false);
        let mut node = ctx
            .new_node(node_name, options)
            .map_err(|e| RosError(format!("cannot create node /{NODE_NAME}: {e:?}")))?;

        let mq = markers_qos();
        let markers_topic = node
            .create_topic(
                &name(MARKERS_TOPIC)?,
                MessageTypeName::new("std_msgs", "String"),
                &mq,
            )
            .map_err(err(MARKERS_TOPIC))?;
        let markers = node
            .create_publisher::<String>(&markers_topic, Some(mq))
            .map_err(err(MARKERS_TOPIC))?;

        let dq = decisions_qos();
        let decisions_topic = node
            .create_topic(
                &name(DECISIONS_TOPIC)?,
                MessageTypeName::new(PACKAGE, "Decision"),
                &dq,
            )
            .map_err(err(DECISIONS_TOPIC))?;
        let decisions = node
            .create_publisher::<DecisionMsg>(&decisions_topic, Some(dq))
            .map_err(err(DECISIONS_TOPIC))?;

        let server = node
            .create_server::<ToolRequest, ToolResponse>(
                client_mapping(cfg.mapping),
                &name(TOOL_SERVICE)?,
                &ServiceTypeName::new(PACKAGE, "Tool"),
                service_qos(),
                service_qos(),
            )
            .map_err(err(TOOL_SERVICE))?;

        let spinner = node.spinner().map_err(err("the node spinner"))?;
        let spinner = tokio::spawn(async move {
            if let Err(e) = spinner.spin().await {
                tracing::warn!("ROS node spinner stopped: {e:?}");
            }
        });

        Ok(Ros2ClientTransport {
            markers,
            decisions,
            server: Mutex::new(Some(server)),
            node: Mutex::new(Some(node)),
            spinner: Mutex::new(Some(spinner)),
            context: ctx,
        })
    }
}

/// How long an answer waits for the client's reply reader to be discovered. The rmw servers
/// wait like this too; past it the answer is sent anyway (and may be lost to that client).
const REPLY_READER_WAIT: Duration = Duration::from_secs(10);

/// How long a client's first answer waits after discovery has its reply reader, for our reply
/// writer to match it.
const MATCH_GRACE: Duration = Duration::from_millis(50);

/// The client processes whose reply readers on `/autonomy/tool` have been seen: a client that
/// called once is not looked up again. Bounded: cleared when full.
///
/// A process is the first 8 bytes of a GUID (host and process in both Fast DDS and Cyclone
/// prefixes): that is all of a request's `writer_gid` that is the client's GUID in the Cyclone
/// mapping, whose header carries an instance handle instead of the GUID's second half.
struct ReplyReaders {
    participant: DomainParticipant,
    topic: String,
    seen: Mutex<HashSet<[u8; 8]>>,
}

impl ReplyReaders {
    const MAX_SEEN: usize = 1024;

    fn new(participant: DomainParticipant) -> Self {
        ReplyReaders {
            participant,
            topic: format!("rr{TOOL_SERVICE}Reply"),
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Waits, at most [`REPLY_READER_WAIT`], until the requesting client's process has a
    /// reply reader we discovered. Under load our discovery can lag the client's: the client
    /// then already sees our service as available and sends, while a reply written now would
    /// go to no matched reader and the client would wait forever.
    async fn wait_for(&self, client: Gid) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&client.to_bytes16()[..8]);
        if self.seen.lock().is_ok_and(|s| s.contains(&prefix)) {
            return;
        }
        let deadline = tokio::time::Instant::now() + REPLY_READER_WAIT;
        let mut waited = false;
        loop {
            let found = self.participant.discovered_readers().iter().any(|r| {
                r.subscription_topic_data.topic_name == self.topic
                    && Gid::from(r.reader_proxy.remote_reader_guid).to_bytes16()[..8] == prefix
            });
            if found {
                if waited {
                    tracing::debug!("{TOOL_SERVICE}: waited for the reply reader of {client:?}");
                }
                // Discovery has the reader, but our reply writer matches it a little later (in
                // the participant's event loop; on a loaded machine more than a few
                // milliseconds), and a volatile writer never sends a reader what it wrote
                // before their match: the client would wait forever. So a client's first answer
                // gives the match time, also when discovery had the reader already (seen: a
                // malformed request, answered at once, lost this way on a loaded machine).
                tokio::time::sleep(MATCH_GRACE).await;
                if let Ok(mut s) = self.seen.lock() {
                    if s.len() >= Self::MAX_SEEN {
                        s.clear();
                    }
                    s.insert(prefix);
                }
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(
                    "{TOOL_SERVICE}: no reply reader of {client:?} discovered; answering anyway"
                );
                return;
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn serve(
    server: ToolServer,
    svc: ToolService,
    readers: Arc<ReplyReaders>,
    mut stop: watch::Receiver<bool>,
) {
    let server = Arc::new(server);
    let mut inflight = tokio::task::JoinSet::new();
    {
        let requests = server.receive_request_stream();
        futures::pin_mut!(requests);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                item = requests.next() => match item {
                    Some(Ok((id, req))) => {
                        // The request id is only echoed back. In the Cyclone mapping its
                        // sequence number is decoded wrongly (reference §2), so it is never
                        // logged or recorded: the audit id identifies the call.
                        let server = server.clone();
                        let svc = svc.clone();
                        let readers = readers.clone();
                        inflight.spawn(async move {
                            let resp = svc.handle(req, caller_of(id.writer_gid)).await;
                            readers.wait_for(id.writer_gid).await;
                            let audit_id = resp.audit_id.clone();
                            if let Err(e) = server.async_send_response(id, resp).await {
                                tracing::warn!("{TOOL_SERVICE}: cannot send the answer for {audit_id}: {e:?}");
                            }
                        });
                    }
                    Some(Err(e)) => tracing::warn!("{TOOL_SERVICE}: unreadable request: {e:?}"),
                    None => break,
                },
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            }
        }
    }
    while inflight.join_next().await.is_some() {}
}

impl RosTransport for Ros2ClientTransport {
    fn publish_marker(&self, line: &str) -> Result<(), RosError> {
        self.markers
            .publish(line.to_string())
            .map_err(|e| RosError(format!("{MARKERS_TOPIC}: {e:?}")))
    }

    fn marker_subscribers(&self) -> usize {
        // Readers discovered on the topic (our writer offers the strongest QoS, so every one of
        // them matches). `Publisher::get_subscription_count` would log an error per call until
        // the first match.
        match self.node.lock() {
            Ok(g) => g
                .as_ref()
                .map_or(0, |n| n.subscription_count(MARKERS_TOPIC)),
            Err(_) => 0,
        }
    }

    fn flush_markers(&self, limit: std::time::Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match tokio::time::timeout(limit, self.markers.async_wait_for_acknowledgments()).await {
                Ok(Ok(acked)) => acked,
                Ok(Err(e)) => {
                    tracing::debug!("{MARKERS_TOPIC}: waiting for acknowledgements failed: {e:?}");
                    false
                }
                Err(_) => false,
            }
        })
    }

    fn publish_decision(&self, msg: &DecisionMsg) -> Result<(), RosError> {
        self.decisions
            .publish(msg.clone())
            .map_err(|e| RosError(format!("{DECISIONS_TOPIC}: {e:?}")))
    }

    fn serve_tools(&self, svc: ToolService, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let server = self.server.lock().ok().and_then(|mut g| g.take());
        let readers = Arc::new(ReplyReaders::new(self.context.domain_participant()));
        Box::pin(async move {
            match server {
                Some(s) => serve(s, svc, readers, stop).await,
                None => tracing::error!("{TOOL_SERVICE} is already being served"),
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        // Dropping the node tells its spinner to stop; waiting for it lets the spinner remove
        // its DDS entities while the participant still runs.
        let node = self.node.lock().ok().and_then(|mut g| g.take());
        let spinner = self.spinner.lock().ok().and_then(|mut g| g.take());
        Box::pin(async move {
            drop(node);
            if let Some(s) = spinner {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s).await;
            }
        })
    }
}

/// The caller of a service request as policies and rate limits see it: `ros2:` and the client
/// process (the first 8 bytes of its GUID, the part that is the client's in both mappings).
fn caller_of(writer: Gid) -> crate::types::Agent {
    crate::types::Agent::new(format!("ros2:{}", hex::encode(&writer.to_bytes16()[..8])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ros2_client::qos::Reliability;

    #[test]
    fn mapping_selection_reaches_ros2_client() {
        assert_eq!(
            client_mapping(ServiceMapping::from_rmw(Some("rmw_cyclonedds_cpp"))),
            ros2_client::ServiceMapping::Cyclone
        );
        assert_eq!(
            client_mapping(ServiceMapping::from_rmw(None)),
            ros2_client::ServiceMapping::Enhanced
        );
        assert_eq!(
            client_mapping(ServiceMapping::from_rmw(Some("rmw_fastrtps_cpp"))),
            ros2_client::ServiceMapping::Enhanced
        );
    }

    #[test]
    fn markers_qos_is_reliable_transient_local_keep_last_32() {
        let q = markers_qos();
        assert!(matches!(q.reliability, Reliability::Reliable { .. }));
        assert_eq!(q.durability, Durability::TransientLocal);
        assert_eq!(q.history, History::KeepLast { depth: 32 });
    }

    #[test]
    fn type_names_follow_the_dds_convention() {
        assert_eq!(
            MessageTypeName::new(PACKAGE, "Decision").dds_msg_type(),
            "autonomy_msgs::msg::dds_::Decision_"
        );
        let node = NodeName::new("/", "autonomy").unwrap();
        assert_eq!(
            name(TOOL_SERVICE)
                .unwrap()
                .to_dds_name("rq", &node, "Request"),
            "rq/autonomy/toolRequest"
        );
        assert_eq!(
            name(MARKERS_TOPIC).unwrap().to_dds_name("rt", &node, ""),
            "rt/autonomy/markers"
        );
    }
}
