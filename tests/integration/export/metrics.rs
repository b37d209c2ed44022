//! `GET /metrics` with `--export`: the export's acknowledged seq and its lag, live, against a
//! real `nats-server` that is stopped (SIGSTOP) and resumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;

/// The exposition.
fn scrape(d: &Daemon) -> String {
    let r = http(d.addr, "GET", "/metrics", None);
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).expect("UTF-8 exposition")
}

/// The export's three gauges in one scrape: (acked_seq, lag_records, connected).
fn gauges(d: &Daemon) -> (u64, u64, u64) {
    let body = scrape(d);
    let get = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };
    (
        get("autonomy_export_acked_seq"),
        get("autonomy_export_lag_records"),
        get("autonomy_export_connected"),
    )
}

/// The lag is 0 once the export has caught up, with the acknowledged seq at the WAL's head;
/// while the broker is stopped it grows with every record, also once the export's reader has
/// stopped at its full buffer (a lag counted from the reader's head stands still at about 500),
/// and the acknowledged seq stands still; once the broker is
/// back it falls to 0 again. The figures agree with `wal export-status`; `promtool check
/// metrics` accepts the exposition with them.
#[test]
fn the_export_lag_is_zero_when_caught_up_and_grows_while_the_broker_is_stopped() {
    let test = "the_export_lag_is_zero_when_caught_up_and_grows_while_the_broker_is_stopped";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let broker = Broker::start(bin);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let mut d = exporting_daemon(&wal, &broker.url(), "robot-m", &[]);
    for i in 0..10 {
        let r = d.tool(&format!(
            r#"{{"kind":"tool.echo","params":{{"message":"m{i}"}}}}"#
        ));
        assert_eq!(r.status, 200);
    }
    // `started` and ten decisions.
    let mut last = (0, 0, 0);
    assert!(
        eventually(Duration::from_secs(20), || {
            last = gauges(&d);
            last == (11, 0, 1)
        }),
        "not caught up: (acked, lag, connected) = {last:?}"
    );
    assert_eq!(export_status(&wal)["head_seq"], 11);
    // The export's gauges keep the exposition valid.
    if let Some(promtool) = crate::http::metrics::tool("promtool", test) {
        let body = scrape(&d);
        let (ok, out) = crate::http::metrics::promtool_check(&promtool, &body);
        assert!(ok, "promtool check metrics: {out}\n{body}");
    }

    // A hung broker: records go on into the WAL, none is acknowledged.
    broker.pause();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let workers = load(d.addr, 4, &stop, &answered);
    let grew = eventually(Duration::from_secs(90), || {
        last = gauges(&d);
        last.1 >= 2500
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(grew, "the lag did not grow past 2500: {last:?}");
    let (acked, lag, _) = gauges(&d);
    let head = export_status(&wal)["head_seq"].as_u64().unwrap();
    assert_eq!(acked, 11, "nothing is acknowledged by a stopped broker");
    assert_eq!(lag, head - 11, "every record since is counted");
    assert!(
        answered.load(Ordering::Relaxed) >= 2500,
        "calls went on while the broker was stopped"
    );

    broker.resume();
    assert!(
        eventually(Duration::from_secs(60), || {
            last = gauges(&d);
            last.0 == head && last.1 == 0
        }),
        "did not catch up to {head}: {last:?}"
    );
    assert_eq!(d.stop().code(), Some(0));
    assert_exactly_once(&broker.url(), "robot-m", &wal, test);
}
