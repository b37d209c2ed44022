//! The bridge's per-topic counts ([`Counters`]) in `GET /metrics`, read at each scrape. The
//! topics are the config's, so the `topic` label is bounded by it.

use std::sync::Arc;

use super::Counters;
use super::config::Direction;
use crate::metrics::{Encoder, MetricType, MetricsSource};

/// Every bridged topic's counters.
pub(super) struct BridgeMetrics {
    pub(super) topics: Vec<(String, Direction, Arc<Counters>)>,
}

impl MetricsSource for BridgeMetrics {
    fn encode(&self, e: &mut Encoder<'_>) {
        let get = |c: &std::sync::atomic::AtomicU64| Counters::get(c);
        e.family(
            "autonomy_bridge_messages_received_total",
            MetricType::Counter,
            "Messages the bridge received, by topic and direction.",
        );
        for (topic, dir, c) in &self.topics {
            let labels = [("topic", topic.as_str()), ("direction", dir.as_str())];
            e.sample(
                "autonomy_bridge_messages_received_total",
                &labels,
                get(&c.received),
            );
        }
        e.family(
            "autonomy_bridge_messages_total",
            MetricType::Counter,
            "Bridged messages by topic, direction and decision: allow (relayed), deny (dropped \
             by the policy), malformed (dropped undecoded).",
        );
        for (topic, dir, c) in &self.topics {
            let mut rows = vec![("allow", get(&c.relayed)), ("malformed", get(&c.malformed))];
            // Feeds back to the agent are relayed without a decision: nothing is denied there.
            if *dir == Direction::AgentToRobot {
                rows.insert(1, ("deny", get(&c.denied)));
            }
            for (decision, n) in rows {
                e.sample(
                    "autonomy_bridge_messages_total",
                    &[
                        ("topic", topic.as_str()),
                        ("direction", dir.as_str()),
                        ("decision", decision),
                    ],
                    n,
                );
            }
        }
        e.family(
            "autonomy_bridge_messages_failed_total",
            MetricType::Counter,
            "Bridged messages that could not be recorded or republished, by topic and direction.",
        );
        for (topic, dir, c) in &self.topics {
            let labels = [("topic", topic.as_str()), ("direction", dir.as_str())];
            e.sample(
                "autonomy_bridge_messages_failed_total",
                &labels,
                get(&c.failed),
            );
        }
        e.family(
            "autonomy_bridge_relay_seconds",
            MetricType::Histogram,
            "Per relayed message, from its arrival in the bridge's DDS reader to its republish on \
             the other side, by topic and direction; strict topics include the wait for the \
             decision record's fdatasync.",
        );
        for (topic, dir, c) in &self.topics {
            let labels = [("topic", topic.as_str()), ("direction", dir.as_str())];
            e.histogram(
                "autonomy_bridge_relay_seconds",
                &labels,
                &c.relay.snapshot(),
                9,
            );
        }
        // Only topics with a safe message can publish one.
        if self.topics.iter().any(|(_, _, c)| c.has_safe) {
            e.family(
                "autonomy_bridge_safe_published_total",
                MetricType::Counter,
                "Safe messages (stops) the bridge published on the robot side, by topic: on a \
                 deny or when the agent went silent.",
            );
            for (topic, _, c) in self.topics.iter().filter(|(_, _, c)| c.has_safe) {
                e.sample(
                    "autonomy_bridge_safe_published_total",
                    &[("topic", topic.as_str())],
                    get(&c.safe_published),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `GET /metrics` with these topics' families.
    fn render(topics: Vec<(String, Direction, Arc<Counters>)>) -> String {
        let m = crate::metrics::Metrics::new();
        m.add_source(Arc::new(BridgeMetrics { topics }));
        m.render()
    }

    #[test]
    fn each_topic_shows_its_counts_by_decision() {
        let c = Arc::new(Counters::default());
        for _ in 0..3 {
            Counters::add(&c.received);
        }
        Counters::add(&c.relayed);
        Counters::add(&c.denied);
        Counters::add(&c.malformed);
        let feed = Arc::new(Counters::default());
        Counters::add(&feed.received);
        Counters::add(&feed.relayed);
        let text = render(vec![
            ("/cmd_vel".into(), Direction::AgentToRobot, c),
            ("/odom".into(), Direction::RobotToAgent, feed),
        ]);
        let got: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("autonomy_bridge_") && !l.contains("_relay_"))
            .collect();
        assert_eq!(
            got,
            [
                r#"autonomy_bridge_messages_received_total{topic="/cmd_vel",direction="agent_to_robot"} 3"#,
                r#"autonomy_bridge_messages_received_total{topic="/odom",direction="robot_to_agent"} 1"#,
                r#"autonomy_bridge_messages_total{topic="/cmd_vel",direction="agent_to_robot",decision="allow"} 1"#,
                r#"autonomy_bridge_messages_total{topic="/cmd_vel",direction="agent_to_robot",decision="deny"} 1"#,
                r#"autonomy_bridge_messages_total{topic="/cmd_vel",direction="agent_to_robot",decision="malformed"} 1"#,
                r#"autonomy_bridge_messages_total{topic="/odom",direction="robot_to_agent",decision="allow"} 1"#,
                r#"autonomy_bridge_messages_total{topic="/odom",direction="robot_to_agent",decision="malformed"} 0"#,
                r#"autonomy_bridge_messages_failed_total{topic="/cmd_vel",direction="agent_to_robot"} 0"#,
                r#"autonomy_bridge_messages_failed_total{topic="/odom",direction="robot_to_agent"} 0"#,
            ]
        );
    }

    #[test]
    fn each_topic_shows_how_long_its_messages_took_through_the_bridge() {
        let c = Arc::new(Counters::default());
        c.relay.observe_duration(Duration::from_micros(300));
        c.relay.observe_duration(Duration::from_millis(3));
        let text = render(vec![
            ("/cmd_vel".into(), Direction::AgentToRobot, c),
            (
                "/odom".into(),
                Direction::RobotToAgent,
                Arc::new(Counters::default()),
            ),
        ]);
        assert!(text.contains("# TYPE autonomy_bridge_relay_seconds histogram\n"));
        let cmd = |suffix: &str| {
            format!(
                r#"autonomy_bridge_relay_seconds_{suffix}topic="/cmd_vel",direction="agent_to_robot""#
            )
        };
        for (le, n) in [
            ("0.00025", 0),
            ("0.0005", 1),
            ("0.0025", 1),
            ("0.005", 2),
            ("+Inf", 2),
        ] {
            let want = format!(r#"{},le="{le}"}} {n}"#, cmd("bucket{"));
            assert!(text.lines().any(|l| l == want), "{want} not in\n{text}");
        }
        assert!(
            text.lines()
                .any(|l| l == format!("{}}} 0.0033", cmd("sum{")))
        );
        assert!(text.lines().any(|l| l == format!("{}}} 2", cmd("count{"))));
        assert!(text.lines().any(|l| l
            == r#"autonomy_bridge_relay_seconds_count{topic="/odom",direction="robot_to_agent"} 0"#));
    }

    #[test]
    fn topics_with_a_safe_message_show_how_many_they_published() {
        let c = Arc::new(Counters {
            has_safe: true,
            ..Counters::default()
        });
        Counters::add(&c.safe_published);
        let text = render(vec![
            ("/cmd_vel".into(), Direction::AgentToRobot, c),
            (
                "/lights".into(),
                Direction::AgentToRobot,
                Arc::new(Counters::default()),
            ),
        ]);
        let got: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("autonomy_bridge_safe"))
            .collect();
        assert_eq!(
            got,
            [r#"autonomy_bridge_safe_published_total{topic="/cmd_vel"} 1"#]
        );
    }
}
