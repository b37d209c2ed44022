//! The Prometheus text exposition format, version 0.0.4: what [`super::Metrics::render`] and
//! every [`super::MetricsSource`] write through.

use std::fmt::Write;

use crate::stats::HistogramSnapshot;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (resets when the process restarts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in cumulative buckets, with their count and sum.
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// Writes metric families into a text exposition. A family is its [`Encoder::family`] header
/// followed by all its samples, before the next family begins.
pub struct Encoder<'a> {
    out: &'a mut String,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut String) -> Encoder<'a> {
        Encoder { out }
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let _ = write!(self.out, "# HELP {name} ");
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
    }

    /// One sample with an integer value.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_labels(name, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A single-sample family (a counter or gauge without labels).
    pub fn single(&mut self, name: &str, kind: MetricType, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of one labelled histogram (`_bucket` per bound and `+Inf`, `_sum`, `_count`)
    /// of observations in units of `10^-decimals` of the exposed unit: nanoseconds exposed as
    /// seconds are `decimals = 9`, counts are `0`. Bounds and sum are written exactly.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
        decimals: u32,
    ) {
        let bucket = format!("{name}_bucket");
        for (i, c) in h.cumulative.iter().enumerate() {
            let le = match h.bounds.get(i) {
                Some(b) => scaled(*b, decimals),
                None => "+Inf".to_string(),
            };
            self.name_labels(&bucket, labels, Some(&le));
            let _ = writeln!(self.out, " {c}");
        }
        self.name_labels(&format!("{name}_sum"), labels, None);
        let _ = writeln!(self.out, " {}", scaled(h.sum, decimals));
        self.name_labels(&format!("{name}_count"), labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    fn name_labels(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.out.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|v| ("le", v))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }
}

/// `v / 10^decimals` in decimal, exactly, without trailing zeros (`2500, 9` → `0.0000025`).
fn scaled(v: u64, decimals: u32) -> String {
    if decimals == 0 {
        return v.to_string();
    }
    let unit = 10u64.pow(decimals);
    let (int, frac) = (v / unit, v % unit);
    if frac == 0 {
        return int.to_string();
    }
    let digits = format!("{frac:0width$}", width = decimals as usize);
    format!("{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_scale_exactly() {
        assert_eq!(scaled(2_500, 9), "0.0000025");
        assert_eq!(scaled(1_000_000_000, 9), "1");
        assert_eq!(scaled(12_345_678_901, 9), "12.345678901");
        assert_eq!(scaled(0, 9), "0");
        assert_eq!(scaled(7, 0), "7");
    }

    #[test]
    fn families_samples_and_histograms_are_written_in_the_text_format() {
        let h = crate::stats::Histogram::new(&[1_000, 2_500]);
        h.observe(900);
        h.observe(3_000);
        let mut s = String::new();
        let mut e = Encoder::new(&mut s);
        e.family("x_total", MetricType::Counter, "Back\\slash\nnewline.");
        e.sample("x_total", &[("a", "q\"\\\n")], 3);
        e.family("y_seconds", MetricType::Histogram, "Y.");
        e.histogram("y_seconds", &[("k", "v")], &h.snapshot(), 9);
        assert_eq!(
            s,
            "# HELP x_total Back\\\\slash\\nnewline.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\n\"} 3\n\
             # HELP y_seconds Y.\n# TYPE y_seconds histogram\n\
             y_seconds_bucket{k=\"v\",le=\"0.000001\"} 1\n\
             y_seconds_bucket{k=\"v\",le=\"0.0000025\"} 1\n\
             y_seconds_bucket{k=\"v\",le=\"+Inf\"} 2\n\
             y_seconds_sum{k=\"v\"} 0.0000039\n\
             y_seconds_count{k=\"v\"} 2\n"
        );
    }
}
