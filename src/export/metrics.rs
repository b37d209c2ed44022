//! The export's gauges in `GET /metrics` (`docs/metrics.md`), read at each scrape: how far
//! JetStream has acknowledged the log, and how many durable records it has not yet.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::ExportStats;
use crate::metrics::{Encoder, MetricType, MetricsSource};
use crate::wal::Wal;

/// A running export's counters and the WAL it follows.
pub(super) struct ExportMetrics {
    pub(super) stats: Arc<ExportStats>,
    pub(super) wal: Arc<Wal>,
}

impl MetricsSource for ExportMetrics {
    fn encode(&self, e: &mut Encoder<'_>) {
        let acked = self.stats.acked_seq.load(Ordering::Relaxed);
        // The WAL's durable head, not the export reader's: the reader stops reading while the
        // broker is away (its buffer is full), so its head would stop the lag from growing.
        let head = self
            .wal
            .head()
            .0
            .0
            .max(self.stats.head_seq.load(Ordering::Relaxed));
        e.single(
            "autonomy_export_acked_seq",
            MetricType::Gauge,
            "Every WAL record up to this seq is acknowledged by the JetStream stream.",
            acked,
        );
        e.single(
            "autonomy_export_lag_records",
            MetricType::Gauge,
            "Records durable in the WAL and not yet acknowledged by the JetStream stream.",
            head.saturating_sub(acked),
        );
        e.single(
            "autonomy_export_connected",
            MetricType::Gauge,
            "1 while the export has a connection to JetStream that publishes, else 0.",
            u64::from(self.stats.connected.load(Ordering::Relaxed)),
        );
    }
}
