//! `runtime start --export`: a running daemon's records reach JetStream in order, and neither a
//! broker crash nor a daemon crash loses or duplicates one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Waits until `wal export-status` shows no lag (and at least `min` records).
fn wait_caught_up(wal: &Path, min: u64, limit: Duration) -> Value {
    let mut last = Value::Null;
    let ok = eventually(limit, || {
        last = export_status(wal);
        last["lag"] == 0 && last["head_seq"].as_u64().unwrap_or(0) >= min
    });
    assert!(ok, "the export did not catch up within {limit:?}: {last}");
    last
}

#[test]
fn records_arrive_in_order_byte_for_byte() {
    let test = "records_arrive_in_order_byte_for_byte";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let broker = Broker::start(bin);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let mut d = exporting_daemon(&wal, &broker.url(), "robot-1", &[]);
    assert!(
        d.startup.iter().any(|l| l.contains(
            "audit export to nats://127.0.0.1:" // the start line names where records go
        ) && l
            .contains("stream AUTONOMY_AUDIT, subject autonomy.audit.robot-1, node robot-1")),
        "{:?}",
        d.startup
    );
    for i in 0..60 {
        let body = if i % 4 == 0 {
            r#"{"kind":"tool.shell","params":{"command":"id"}}"#.to_string()
        } else {
            format!(r#"{{"kind":"tool.echo","params":{{"message":"m{i}"}}}}"#)
        };
        let r = d.tool(&body);
        assert!(r.status == 200 || r.status == 403, "{}", r.status);
    }
    // They arrive while the daemon runs, not only at its stop.
    let s = wait_caught_up(&wal, 61, Duration::from_secs(20));
    assert_eq!(s["cursor"]["node"], "robot-1");
    assert_eq!(d.stop().code(), Some(0));
    let rest: Vec<String> = d.stderr.try_iter().collect();
    let n = wal_payloads(&wal).len() as u64;
    assert!(
        rest.iter().any(|l| l
            == &format!("autonomy: audit export: every record up to seq {n} is in the stream")),
        "{rest:?}"
    );

    let got = stream_messages(&broker.url(), "autonomy.audit.robot-1");
    let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "the stream's order is the log's"
    );
    assert!(
        got.windows(2).all(|w| w[0].stream_seq < w[1].stream_seq),
        "stream order"
    );
    assert_exactly_once(&broker.url(), "robot-1", &wal, test);
    assert_eq!(got[0].rtype, "runtime");
    assert_eq!(
        got.last().unwrap().rtype,
        "runtime",
        "the `stopped` record went too"
    );
    let s = export_status(&wal);
    assert_eq!(
        (s["cursor"]["acked_seq"].as_u64(), s["lag"].as_u64()),
        (Some(n), Some(0))
    );
}

#[test]
fn broker_killed_and_restarted_mid_load_loses_and_duplicates_nothing() {
    let test = "broker_killed_and_restarted_mid_load_loses_and_duplicates_nothing";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let mut broker = Broker::start(bin);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let mut d = exporting_daemon(&wal, &broker.url(), "robot-2", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let workers = load(d.addr, 4, &stop, &answered);
    std::thread::sleep(Duration::from_millis(800));
    let acked_before = cursor(&wal).map_or(0, |c| c["acked_seq"].as_u64().unwrap());
    broker.kill();
    let down = answered.load(Ordering::Relaxed);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    // The WAL does not wait for the broker: calls are answered all through the outage.
    let during = answered.load(Ordering::Relaxed) - down;
    let rate_during = during as f64 / t.elapsed().as_secs_f64();
    let lag_down = export_status(&wal)["lag"].as_u64().unwrap();
    broker.run();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        during > 50,
        "only {during} calls answered while the broker was down"
    );
    assert!(lag_down > 0, "the lag grows while the broker is down");
    let s = wait_caught_up(&wal, 1, Duration::from_secs(30));
    assert_eq!(d.stop().code(), Some(0));
    let lines: Vec<String> = d.stderr.try_iter().collect();
    let down_lines = lines
        .iter()
        .filter(|l| l.contains("is unavailable"))
        .count();
    let back_lines = lines.iter().filter(|l| l.contains("is back after")).count();
    assert_eq!(
        (down_lines, back_lines),
        (1, 1),
        "one line when the broker goes, one when it is back: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("async_nats")),
        "the NATS client's own log lines stay off: {lines:?}"
    );
    let (msgs, dups, gaps) = assert_exactly_once(&broker.url(), "robot-2", &wal, test);
    eprintln!(
        "{test}: {msgs} records in the stream ({dups} duplicates, {gaps} missing); cursor at {acked_before} when the broker was killed; {during} calls answered in the 1.5 s outage ({rate_during:.0}/s), export lag {lag_down} records then; caught up: {s}"
    );
}

#[test]
fn daemon_killed_mid_export_then_restarted_sends_each_record_once() {
    let test = "daemon_killed_mid_export_then_restarted_sends_each_record_once";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let broker = Broker::start(bin);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let subject = "autonomy.audit.robot-3";
    let mut report = Vec::new();
    for round in 0..4u64 {
        let mut d = exporting_daemon(&wal, &broker.url(), "robot-3", &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let workers = load(d.addr, 4, &stop, &answered);
        std::thread::sleep(Duration::from_millis(700 + 300 * (round % 2)));
        // Rounds 2 and 3: the broker hangs first, so hundreds of publishes await their acks
        // (and reach the stream only after the daemon is gone) when the daemon dies.
        let hung = round >= 2;
        if hung {
            broker.pause();
            std::thread::sleep(Duration::from_millis(500));
        }
        d.child.kill().unwrap(); // SIGKILL, mid-export
        d.child.wait().unwrap();
        if hung {
            broker.resume();
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        // At kill time: everything up to the cursor is in the stream; what is beyond it was
        // acknowledged (or in flight) but not yet in the cursor, and must not come twice.
        let acked = cursor(&wal).map_or(0, |c| c["acked_seq"].as_u64().unwrap());
        let in_stream: BTreeSet<u64> = stream_messages(&broker.url(), subject)
            .iter()
            .map(|g| g.seq)
            .collect();
        let missing: Vec<u64> = (1..=acked).filter(|s| !in_stream.contains(s)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: the cursor ({acked}) is ahead of the stream: {} of its records missing, first {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let beyond = in_stream.range(acked + 1..).count();
        let head = wal_payloads(&wal).len();
        assert!(
            answered.load(Ordering::Relaxed) > 20,
            "round {round}: too little load to mean anything"
        );
        report.push(format!(
            "round {round}{}: WAL head {head}, cursor {acked}, {beyond} in the stream beyond the cursor",
            if hung { " (broker hung)" } else { "" }
        ));
    }
    let mut d = exporting_daemon(&wal, &broker.url(), "robot-3", &[]);
    wait_caught_up(&wal, 1, Duration::from_secs(30));
    assert_eq!(d.stop().code(), Some(0));
    let (msgs, dups, gaps) = assert_exactly_once(&broker.url(), "robot-3", &wal, test);
    eprintln!(
        "{test}: 4 kill -9 rounds under 4-thread load ({}); after restart: {msgs} records in the stream, {dups} duplicates, {gaps} missing",
        report.join("; ")
    );
}
