//! `wal export` (a stopped node's WAL, once) and `wal export-status`.

use super::*;

/// A few calls through a daemon without export, then a clean stop.
fn some_records(wal: &Path, calls: usize) {
    let mut d = Daemon::start_in(wal, &["--demo"], |_| {});
    for i in 0..calls {
        let r = d.tool(&format!(
            r#"{{"kind":"tool.echo","params":{{"message":"once {i}"}}}}"#
        ));
        assert_eq!(r.status, 200);
    }
    assert_eq!(d.stop().code(), Some(0));
}

fn export(wal: &Path, url: &str, extra: &[&str]) -> Out {
    let mut args = vec!["wal", "export", "--to", url, "--dir", p(wal)];
    args.extend_from_slice(extra);
    let state = wal.with_file_name("state");
    cli(&args, &[("XDG_STATE_HOME", p(&state))])
}

#[test]
fn wal_export_sends_a_stopped_nodes_records_once() {
    let test = "wal_export_sends_a_stopped_nodes_records_once";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let mut broker = Broker::start(bin);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    some_records(&wal, 10);
    let n = wal_payloads(&wal).len() as u64;
    let s = export_status(&wal);
    assert_eq!((s["cursor"].is_null(), s["lag"].as_u64()), (true, Some(n)));
    let o = cli(&["wal", "export-status", "--dir", p(&wal)], &[]);
    assert_eq!(
        o.stdout.trim(),
        format!("wal export-status: never exported (no export.cursor) head_seq={n} lag={n}")
    );

    let o = export(&wal, &broker.url(), &["--node-id", "robot-4"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        o.stdout.trim(),
        format!(
            "wal export: OK — {n} record(s) exported (seq 1..{n}) to stream AUTONOMY_AUDIT subject autonomy.audit.robot-4; acked_seq={n} head_seq={n} lag=0"
        )
    );
    assert_exactly_once(&broker.url(), "robot-4", &wal, test);
    let o = cli(&["wal", "export-status", "--dir", p(&wal)], &[]);
    assert!(
        o.stdout.starts_with(&format!(
            "wal export-status: node=robot-4 stream=AUTONOMY_AUDIT subject=autonomy.audit.robot-4 acked_seq={n} head_seq={n} lag=0 updated="
        )),
        "{}",
        o.stdout
    );

    // Nothing new: nothing sent, no connection needed (the broker is even down).
    broker.kill();
    let o = export(&wal, &broker.url(), &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("nothing new"), "{}", o.stdout);

    // More records: without --node-id the cursor's node is used; a broker that is down is one
    // error line and exit 1, with the cursor where it was.
    some_records(&wal, 5);
    let m = wal_payloads(&wal).len() as u64;
    let o = export(&wal, &broker.url(), &["--timeout", "2s"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.starts_with(&format!(
            "autonomy: error: wal export: 0 of {} record(s) exported, stopped at acked_seq={n} with {} left: ",
            m - n,
            m - n
        )),
        "{}",
        o.stderr
    );
    assert_eq!(cursor(&wal).unwrap()["acked_seq"], n);
    broker.run();
    let o = export(&wal, &broker.url(), &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout.contains(&format!(
            "{} record(s) exported (seq {}..{m})",
            m - n,
            n + 1
        )),
        "{}",
        o.stdout
    );
    assert_exactly_once(&broker.url(), "robot-4", &wal, test);

    // Another node id for the same WAL would send every record again under new ids: refused.
    let o = export(&wal, &broker.url(), &["--node-id", "robot-5"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr
            .contains("was written for node \"robot-4\", not \"robot-5\""),
        "{}",
        o.stderr
    );
    // A running daemon owns its WAL: export it with --export instead.
    let d = Daemon::start_in(&wal, &["--demo"], |_| {});
    let o = export(&wal, &broker.url(), &[]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("WAL_LOCKED"), "{}", o.stderr);
    drop(d);
}

#[test]
fn records_already_in_the_stream_are_not_sent_again_after_the_duplicate_window() {
    let test = "records_already_in_the_stream_are_not_sent_again_after_the_duplicate_window";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let broker = Broker::start(bin);
    // JetStream forgets message ids after one second here: only the search of the stream
    // before sending can keep the second export from duplicating.
    create_stream(&broker.url(), Duration::from_secs(1), "autonomy.audit.>");
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    some_records(&wal, 20);
    let o = export(&wal, &broker.url(), &["--node-id", "robot-6"]);
    assert_eq!(o.code, 0, "{}", o.all());
    // The cursor is lost (as if the daemon died before writing it), and the window passes.
    std::fs::rename(wal.join("export.cursor"), tmp.path().join("cursor.old")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let o = export(&wal, &broker.url(), &["--node-id", "robot-6"]);
    assert_eq!(o.code, 0, "{}", o.all());
    let (msgs, dups, _) = assert_exactly_once(&broker.url(), "robot-6", &wal, test);
    assert_eq!(dups, 0);
    let n = wal_payloads(&wal).len() as u64;
    assert_eq!(msgs as u64, n);
    assert_eq!(
        cursor(&wal).unwrap()["acked_seq"],
        n,
        "the cursor is rebuilt"
    );
}

#[test]
fn a_stream_that_does_not_take_the_subject_is_one_error_line() {
    let test = "a_stream_that_does_not_take_the_subject_is_one_error_line";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let broker = Broker::start(bin);
    create_stream(&broker.url(), Duration::from_secs(120), "elsewhere.>");
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    some_records(&wal, 2);
    let o = export(
        &wal,
        &broker.url(),
        &["--node-id", "robot-8", "--timeout", "20s"],
    );
    assert_eq!(o.code, 1, "{}", o.all());
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "stream AUTONOMY_AUDIT does not take subject autonomy.audit.robot-8 (its subjects: elsewhere.>)"
        ),
        "{}",
        o.stderr
    );
    assert!(cursor(&wal).is_none(), "nothing was acknowledged");
    // A bad URL or subject is a usage error before anything starts.
    let o = export(&wal, "http://127.0.0.1:1", &[]);
    assert_eq!(o.code, 2, "{}", o.all());
    let o = export(&wal, &broker.url(), &["--export-subject", "autonomy.*"]);
    assert_eq!(o.code, 2, "{}", o.all());
}
