//! The process's stderr: one place that turns the library's tracing events into lines.
//!
//! Two kinds of event reach stderr:
//! - **notices** (`target: "notice"`): what the operator is told as the program runs (a policy
//!   was activated, a launch is being stopped, a run's audit failed). They print as the CLI's
//!   own lines do — `autonomy: …`, `autonomy: warning: …`, `autonomy: error: …` — whatever
//!   `AUTONOMY_LOG` says, because they are the program's output, not diagnostics;
//! - **logs**: everything else, filtered by `AUTONOMY_LOG` (default `warn`), in tracing's format.
//!
//! So library code never prints: it emits a notice, and this module decides how it looks.

use std::fmt;

use tracing::{Event, Level, Subscriber};

use crate::NOTICE;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter};

/// Formats a notice as one `autonomy: [warning: |error: ]message` line.
struct NoticeFormat;

impl<S, N> FormatEvent<S, N> for NoticeFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        write!(w, "autonomy: {level}")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the stderr subscriber (once; later calls do nothing).
pub fn init() {
    let logs = EnvFilter::try_from_env("AUTONOMY_LOG")
        // ros2-client's own ROS_DISTRO check logs even when the variable is unset; `--ros`
        // prints its own warning on a real mismatch. The audit export says itself, once, when
        // the broker goes and comes back; the NATS client's reconnect lines would repeat it.
        .unwrap_or_else(|_| EnvFilter::new("warn,ros2_client::distributions=off,async_nats=off"))
        .add_directive(
            format!("{NOTICE}=off")
                .parse()
                .unwrap_or_else(|_| Level::WARN.into()),
        );
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .event_format(NoticeFormat)
                .with_filter(filter::Targets::new().with_target(NOTICE, Level::INFO)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only on a terminal: a journal or a log file gets plain lines.
                .with_ansi(ansi)
                .with_filter(logs),
        )
        .try_init();
}
