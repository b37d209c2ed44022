//! The bridge's DDS side, on ros2-client: one participant and node `/autonomy_bridge` per
//! domain, and readers and writers that move serialized samples as bytes, so what the robot
//! receives is byte for byte what the agent sent.

use std::convert::Infallible;

pub use ros2_client::dds::rustdds::Timestamp;
pub use ros2_client::dds::rustdds::bytes::Bytes;
use ros2_client::dds::rustdds::no_key::{
    DataWriter, Decode, DefaultDecoder, DeserializerAdapter, SerializerAdapter, SimpleDataReader,
};
use ros2_client::dds::rustdds::{DomainParticipantBuilder, RepresentationIdentifier};
use ros2_client::qos::{Durability, History, WhenFull};
use ros2_client::{Context, MessageTypeName, Name, Node, NodeName, NodeOptions, QosProfile};

use super::config::{self, TopicConfig};
use super::{BridgeError, NODE_NAME};

/// One sample as it came off the wire: the encapsulation id and the bytes after the header.
#[derive(Debug, Clone)]
pub struct RawSample {
    /// The representation identifier (`[0, 1]`: CDR little-endian).
    pub repr: [u8; 2],
    /// The serialized message (after the 4-byte encapsulation header).
    pub data: Bytes,
}

/// The representation id of plain little-endian CDR (XCDR1), the only one bridged.
pub const CDR_LE: [u8; 2] = [0, 1];

/// Every encapsulation is accepted off the wire, so that an unsupported one reaches the bridge
/// (and is refused there, recorded) instead of vanishing in the DDS layer.
const ALL_ENCODINGS: &[RepresentationIdentifier] = &[
    RepresentationIdentifier::CDR_LE,
    RepresentationIdentifier::CDR_BE,
    RepresentationIdentifier::PL_CDR_LE,
    RepresentationIdentifier::PL_CDR_BE,
    RepresentationIdentifier::CDR2_LE,
    RepresentationIdentifier::CDR2_BE,
    RepresentationIdentifier::PL_CDR2_LE,
    RepresentationIdentifier::PL_CDR2_BE,
    RepresentationIdentifier::D_CDR_LE,
    RepresentationIdentifier::D_CDR_BE,
    RepresentationIdentifier::XML,
];

/// Reads and writes [`RawSample`]s without decoding them.
pub struct RawAdapter;

/// The decoder of [`RawAdapter`]: copies the bytes.
#[derive(Clone, Copy)]
pub struct RawDecoder;

impl DeserializerAdapter<RawSample> for RawAdapter {
    type Error = Infallible;
    type Decoded = RawSample;

    fn supported_encodings() -> &'static [RepresentationIdentifier] {
        ALL_ENCODINGS
    }

    fn transform_decoded(decoded: RawSample) -> RawSample {
        decoded
    }
}

impl<'de> Decode<'de, RawSample> for RawDecoder {
    type Error = Infallible;

    fn decode_bytes(
        self,
        input_bytes: &'de [u8],
        encoding: RepresentationIdentifier,
    ) -> Result<RawSample, Infallible> {
        Ok(RawSample {
            repr: encoding.to_bytes(),
            data: Bytes::copy_from_slice(input_bytes),
        })
    }
}

impl DefaultDecoder<RawSample> for RawAdapter {
    type Decoder = RawDecoder;
    const DECODER: RawDecoder = RawDecoder;
}

impl SerializerAdapter<RawSample> for RawAdapter {
    type Error = Infallible;

    // Only CDR_LE samples are ever written (the bridge refuses the others).
    fn output_encoding() -> RepresentationIdentifier {
        RepresentationIdentifier::CDR_LE
    }

    fn to_bytes(value: &RawSample) -> Result<Bytes, Infallible> {
        Ok(value.data.clone())
    }
}

/// A raw reader.
pub type RawReader = SimpleDataReader<RawSample, RawAdapter>;
/// A raw writer.
pub type RawWriter = DataWriter<RawSample, RawAdapter>;

/// The QoS of a bridged topic.
pub fn topic_qos(q: &config::Qos) -> QosProfile {
    let p = QosProfile::publisher_default();
    let p = match q.reliability {
        config::Reliability::Reliable => p.reliability_reliable(WhenFull::DEFAULT),
        config::Reliability::BestEffort => p.reliability_best_effort(),
    };
    p.durability(match q.durability {
        config::Durability::Volatile => Durability::Volatile,
        config::Durability::TransientLocal => Durability::TransientLocal,
    })
    .history(History::KeepLast {
        depth: q.depth as usize,
    })
}

/// The message type name ros2-client wants for `pkg/msg/Name`.
fn message_type(type_name: &str) -> MessageTypeName {
    let (pkg, name) = match type_name.split_once("/msg/") {
        Some((p, n)) => (p, n),
        None => ("", type_name),
    };
    MessageTypeName::new(pkg, name)
}

/// The participant and node `/autonomy_bridge` on one domain.
pub struct Side {
    /// Its domain.
    pub domain: u16,
    node: Option<Node>,
    spinner: Option<tokio::task::JoinHandle<()>>,
    // Last: the participant must outlive the node and its endpoints.
    _context: Context,
}

fn err(what: String) -> impl Fn(ros2_client::CreateError) -> BridgeError {
    move |e| BridgeError::Dds(format!("{what}: {e:?}"))
}

impl Side {
    /// The participant on `domain`, advertising the given `(DDS type, USER_DATA)` pairs for its
    /// endpoints, and node `/autonomy_bridge` on it with its spinner (needs a tokio runtime).
    pub fn new(domain: u16, user_data: &[(String, Vec<u8>)]) -> Result<Side, BridgeError> {
        let mut builder = DomainParticipantBuilder::new(domain);
        for (dds_type, ud) in user_data {
            builder = builder.endpoint_user_data(dds_type.clone(), ud.clone());
        }
        let participant = builder.build().map_err(|e| {
            BridgeError::Dds(format!(
                "cannot create the DDS participant on domain {domain}: {e:?}"
            ))
        })?;
        let ctx = Context::from_domain_participant(participant)
            .map_err(err(format!("the ROS context on domain {domain}")))?;
        let name = NodeName::new("/", NODE_NAME)
            .map_err(|e| BridgeError::Dds(format!("bad node name: {e:?}")))?;
        // No rosout and no parameter services, as node /autonomy: every endpoint it has then
        // advertises a type hash.
        let options = NodeOptions::new()
            .enable_rosout(false)
            .start_parameter_services(false);
        let mut node = ctx
            .new_node(name, options)
            .map_err(|e| BridgeError::Dds(format!("cannot create node /{NODE_NAME}: {e:?}")))?;
        let spinner = node
            .spinner()
            .map_err(err(format!("the node spinner on domain {domain}")))?;
        let spinner = tokio::spawn(async move {
            if let Err(e) = spinner.spin().await {
                tracing::warn!("bridge node spinner stopped: {e:?}");
            }
        });
        Ok(Side {
            domain,
            node: Some(node),
            spinner: Some(spinner),
            _context: ctx,
        })
    }

    fn node(&mut self) -> Result<&mut Node, BridgeError> {
        self.node
            .as_mut()
            .ok_or_else(|| BridgeError::Dds("the bridge node is stopped".into()))
    }

    fn topic(&mut self, t: &TopicConfig) -> Result<ros2_client::dds::rustdds::Topic, BridgeError> {
        let name = Name::parse(&t.name)
            .map_err(|e| BridgeError::Dds(format!("bad topic name {}: {e:?}", t.name)))?;
        let qos = topic_qos(&t.qos);
        self.node()?
            .create_topic(&name, message_type(&t.type_name), &qos)
            .map_err(err(format!("topic {}", t.name)))
    }

    /// A raw reader of `t`.
    pub fn reader(&mut self, t: &TopicConfig) -> Result<RawReader, BridgeError> {
        let topic = self.topic(t)?;
        let qos = topic_qos(&t.qos);
        self.node()?
            .create_simpledatareader::<RawSample, RawAdapter>(&topic, Some(qos))
            .map_err(err(format!("a reader of {}", t.name)))
    }

    /// A raw writer of `t`.
    pub fn writer(&mut self, t: &TopicConfig) -> Result<RawWriter, BridgeError> {
        let topic = self.topic(t)?;
        let qos = topic_qos(&t.qos);
        self.node()?
            .create_datawriter::<RawSample, RawAdapter>(&topic, Some(qos))
            .map_err(err(format!("a writer of {}", t.name)))
    }

    /// The `/autonomy/decisions` publisher of this side's node.
    pub fn decisions(
        &mut self,
    ) -> Result<ros2_client::Publisher<crate::ros::DecisionMsg>, BridgeError> {
        let qos = crate::ros::dds::decisions_qos();
        let name = Name::parse(crate::ros::DECISIONS_TOPIC)
            .map_err(|e| BridgeError::Dds(format!("bad topic name: {e:?}")))?;
        let node = self.node()?;
        let topic = node
            .create_topic(
                &name,
                MessageTypeName::new(crate::ros::msgs::PACKAGE, "Decision"),
                &qos,
            )
            .map_err(err(crate::ros::DECISIONS_TOPIC.to_string()))?;
        node.create_publisher(&topic, Some(qos))
            .map_err(err(crate::ros::DECISIONS_TOPIC.to_string()))
    }

    /// How many readers discovery has found on `topic` (ours included when we read it).
    pub fn subscribers(&self, topic: &str) -> usize {
        self.node
            .as_ref()
            .map_or(0, |n| n.subscription_count(topic))
    }

    /// Stops the node (its spinner removes its entities while the participant still runs).
    pub async fn shutdown(mut self) {
        drop(self.node.take());
        if let Some(s) = self.spinner.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_samples_pass_through_unchanged() {
        let s = RawDecoder
            .decode_bytes(&[1, 2, 3], RepresentationIdentifier::CDR_LE)
            .unwrap();
        assert_eq!(s.repr, CDR_LE);
        assert_eq!(&RawAdapter::to_bytes(&s).unwrap()[..], &[1, 2, 3]);
        assert_eq!(
            message_type("geometry_msgs/msg/Twist").dds_msg_type(),
            "geometry_msgs::msg::dds_::Twist_"
        );
    }
}
