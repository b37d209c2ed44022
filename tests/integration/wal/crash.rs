//! kill -9 under load loses no acknowledged decision: several rounds of concurrent load from
//! this process, SIGKILL of the daemon mid-load, restart on the same WAL, and a check that every
//! `audit_id` that got a 200 or 403 is in the log and the log verifies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// POSTs until the daemon goes away; returns the audit ids of the acknowledged answers.
fn load(addr: std::net::SocketAddr, worker: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    use std::io::{Read, Write};
    let mut acked = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let body = if i.is_multiple_of(3) {
            r#"{"kind":"tool.shell","params":{"command":"id"}}"#.to_string()
        } else {
            format!(r#"{{"kind":"tool.echo","params":{{"message":"w{worker}-{i}"}}}}"#)
        };
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            break;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let req = format!(
            "POST /v1/tool HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            break;
        }
        let mut raw = Vec::new();
        if s.read_to_end(&mut raw).is_err() || raw.is_empty() {
            break; // killed mid-request: not acknowledged
        }
        let text = String::from_utf8_lossy(&raw);
        let status = text.split_whitespace().nth(1).unwrap_or("");
        if status != "200" && status != "403" {
            continue;
        }
        let Some(body) = text.split("\r\n\r\n").nth(1) else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
            && let Some(id) = v["audit_id"].as_str()
        {
            acked.push(id.to_string());
        }
    }
    acked
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let all_acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    for round in 0..4u64 {
        // Small segments so rounds also cross segment rotations; every other round overlaps
        // each fdatasync at once instead of only slow ones.
        let overlap_after = if round % 2 == 1 { "0" } else { "1ms" };
        let mut d = Daemon::start_in(
            &wal,
            &[
                "--demo",
                "--wal-segment-bytes",
                "65536",
                "--wal-overlap-after",
                overlap_after,
            ],
            |_| {},
        );
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let stop = stop.clone();
                let addr = d.addr;
                std::thread::spawn(move || load(addr, w, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        d.child.kill().unwrap(); // SIGKILL
        d.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        let mut round_acked = 0;
        for w in workers {
            let ids = w.join().unwrap();
            round_acked += ids.len();
            all_acked.lock().unwrap().extend(ids);
        }
        assert!(
            round_acked > 10,
            "round {round}: too little load to mean anything ({round_acked})"
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "crash test took too long"
        );
    }
    // Restart on the same WAL (recovery runs), then stop cleanly.
    let mut d = Daemon::start_in(&wal, &["--demo"], |_| {});
    assert_eq!(d.stop().code(), Some(0));

    let recs = wal_records(&wal);
    let in_log: HashSet<String> = recs
        .iter()
        .filter(|r| r["type"] == "decision")
        .filter_map(|r| r["audit_id"].as_str().map(str::to_string))
        .collect();
    let acked = all_acked.lock().unwrap();
    let missing: Vec<_> = acked.iter().filter(|id| !in_log.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged decisions lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64 + 1), "seq is contiguous");
    }
    let (code, out) = wal_verify(&wal);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("records={}", recs.len())), "{out}");
    eprintln!(
        "crash test: 4 rounds of kill -9 under 8-connection load, {} acknowledged decisions, all {} in the log of {} records",
        acked.len(),
        acked.len(),
        recs.len()
    );
}
