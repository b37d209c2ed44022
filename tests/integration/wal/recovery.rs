//! Recovery after a power cut, and `autonomy wal repair`, on the built binary.
//!
//! The logs are written with the library (the only way to lay out one group-commit write at a
//! chosen place), then damaged on disk the way a lost page write or bit rot would; everything
//! after that is the binary: `wal verify`, `runtime start`, `wal repair`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use autonomy::wal::{NewRecord, Preallocate, Wal, WalOptions, segment_name};

use super::{frame_end, long_wal, opts, rec, records, seg1, verify, write_wal};
use crate::common::{Daemon, Out, bin, cli, http, p, wait_timeout};

/// The page a lost write is simulated on (what the page cache writes back on x86-64).
const PAGE: u64 = 4096;

/// Segments of `segment_bytes`, preallocated by writing zeros.
fn zero_filled(segment_bytes: u64) -> WalOptions {
    opts(segment_bytes, Preallocate::ZeroFill)
}

/// Writes zeros over `[from, to)` of `file`, as a page write that never reached the disk leaves
/// a preallocated segment.
fn zero(file: &Path, from: u64, to: u64) {
    let mut b = std::fs::read(file).unwrap();
    b[from as usize..to as usize].fill(0);
    std::fs::write(file, &b).unwrap();
}

fn repair(dir: &Path, extra: &[&str]) -> Out {
    let mut args = vec!["wal", "repair", "--dir", p(dir)];
    args.extend_from_slice(extra);
    cli(&args, &[])
}

/// Starts and stops the daemon on `dir`; returns the lines it printed before serving.
fn start_and_stop(dir: &Path) -> Vec<String> {
    let mut d = Daemon::start_in(dir, &["--demo"], |_| {});
    assert_eq!(d.stop().code(), Some(0));
    d.startup.clone()
}

/// Starts the daemon on `dir`, which must refuse; returns what it printed.
fn refused_start(dir: &Path) -> String {
    match Daemon::try_start_in(dir, &["--demo"], |_| {}) {
        Ok(_) => panic!("the daemon started on a damaged WAL"),
        Err(e) => e,
    }
}

#[test]
fn a_batch_whose_first_page_was_lost_is_cut_and_the_daemon_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (w, _) = Wal::open(&dir, zero_filled(1024 * 1024)).unwrap();
    for i in 1..=5 {
        w.append(rec(i, 100)).unwrap();
    }
    // One group-commit write of twelve records (one pwrite + one fdatasync), crossing at least
    // one page boundary. Its caller never got an answer: the power went during the fsync.
    let batch: Vec<NewRecord> = (6..=17).map(|i| rec(i, 300)).collect();
    w.append_batch(batch).unwrap();
    w.close().unwrap();
    drop(w);
    let recs = records(&dir);
    assert_eq!(recs.len(), 17);
    let start = recs[5].offset;
    let page_end = (start / PAGE + 1) * PAGE;
    let beyond = recs[5..].iter().filter(|r| r.offset >= page_end).count() as u64;
    assert!(
        beyond >= 2,
        "whole frames of the batch lie past its first page"
    );
    // A later page of the write reached the disk, its first page did not.
    zero(&seg1(&dir), start, page_end);
    let damaged = std::fs::read(seg1(&dir)).unwrap();

    let out = verify(&dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("records=5 "), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "warning: torn tail: {} bytes at segment {} offset {start} after seq 5, holding {beyond} whole frames",
            frame_end(&recs[16]) - start,
            segment_name(1)
        )),
        "{}",
        out.stdout
    );

    let startup = start_and_stop(&dir);
    let saved = format!("{}.cut-{start}", segment_name(1));
    let line = startup
        .iter()
        .find(|l| l.starts_with("autonomy: WAL recovery: "))
        .unwrap_or_else(|| panic!("no recovery line: {startup:?}"));
    assert!(
        line.contains(&format!(
            "torn tail at segment {} offset {start} (after seq 5, holding {beyond} whole frames); saved them as {saved}",
            segment_name(1)
        )),
        "{line}"
    );

    // No record before the batch is lost; none of the batch is kept; the cut is in the log.
    let after = records(&dir);
    for (a, b) in after.iter().zip(&recs[..5]) {
        assert_eq!(a.raw, b.raw);
    }
    let r = &after[5];
    assert_eq!(r.payload["event"], "wal.recovered", "{}", r.raw);
    assert_eq!(r.payload["offset"], start);
    assert_eq!(r.payload["whole_frames"], beyond);
    assert_eq!(r.payload["saved_as"], saved.as_str());
    for b in &recs[5..] {
        assert!(
            !after.iter().any(|a| a.audit_id == b.audit_id),
            "seq {} of the unacknowledged batch survived",
            b.seq
        );
    }
    assert_eq!(after[6].payload["event"], "started");
    assert_eq!(after.last().unwrap().payload["event"], "stopped");
    // The cut bytes are kept beside the segment, exactly.
    let cut = std::fs::read(dir.join(&saved)).unwrap();
    assert_eq!(cut, &damaged[start as usize..frame_end(&recs[16]) as usize]);
    let out = verify(&dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
}

#[test]
fn damage_inside_the_last_possible_batch_is_cut_even_when_whole_records_follow() {
    // A flipped byte in one of the last records is indistinguishable from a torn last write:
    // it is cut like one (reported, recorded, and the bytes saved, so nothing is lost).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let recs = write_wal(&dir, zero_filled(1024 * 1024), 10);
    let mut b = std::fs::read(seg1(&dir)).unwrap();
    b[recs[7].offset as usize + 20] ^= 0x01;
    std::fs::write(seg1(&dir), &b).unwrap();
    let startup = start_and_stop(&dir);
    assert!(
        startup.iter().any(|l| l.contains(&format!(
            "offset {} (after seq 7, holding 2 whole frames)",
            recs[7].offset
        ))),
        "{startup:?}"
    );
    let after = records(&dir);
    assert_eq!(after[7].payload["event"], "wal.recovered");
    assert!(
        dir.join(format!("{}.cut-{}", segment_name(1), recs[7].offset))
            .is_file()
    );
}

#[test]
fn damage_before_the_last_possible_batch_is_refused_and_repair_keeps_the_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let d = dir.to_str().unwrap();
    let recs = long_wal(&dir, Preallocate::ZeroFill);
    let victim = &recs[4];
    let mut b = std::fs::read(seg1(&dir)).unwrap();
    b[victim.offset as usize + 20] ^= 0x01;
    std::fs::write(seg1(&dir), &b).unwrap();
    let original = b;

    // The daemon refuses, and says what to run.
    let e = refused_start(&dir);
    assert!(e.contains("code Some(1)"), "{e}");
    assert!(
        e.contains(&format!(
            "WAL_CRC_MISMATCH at {} offset {}",
            segment_name(1),
            victim.offset
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!("`autonomy wal repair --dir {d}`")),
        "{e}"
    );

    // Bad offsets are usage errors, one line each, and change nothing.
    for (bad, why) in [
        ("17", "not where a record starts"),
        ("3", "inside the header"),
        (&recs[6].offset.to_string(), "past offset"),
        ("x", "invalid value"),
    ] {
        let out = repair(&dir, &["--truncate-at", bad]);
        assert_eq!(out.code, 2, "{bad}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(why), "{bad}: {}", out.stderr);
        assert_eq!(std::fs::read(seg1(&dir)).unwrap(), original);
    }

    let out = repair(&dir, &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let saved = dir.join(format!("{}.cut-{}", segment_name(1), victim.offset));
    let data_end = frame_end(&recs[19]);
    let expect = [
        format!(
            "wal repair: found WAL_CRC_MISMATCH at {} offset {} (seq 5)",
            segment_name(1),
            victim.offset
        ),
        format!(
            "wal repair: kept records=4 head_seq=4 head_hash={}",
            recs[3].hash
        ),
        format!(
            "wal repair: cut {} bytes of segment {} from offset {}, saved as {}",
            data_end - victim.offset,
            segment_name(1),
            victim.offset,
            saved.display()
        ),
        "wal repair: recorded the repair as seq 5 (runtime event wal.repaired); the runtime can start".to_string(),
    ];
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    for (l, e) in lines.iter().zip(&expect) {
        assert!(l.starts_with(e.as_str()), "{l}\nexpected: {e}");
    }
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        &original[victim.offset as usize..data_end as usize]
    );

    let out = verify(&dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("records=5 "), "{}", out.stdout);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    start_and_stop(&dir);
    let after = records(&dir);
    for (a, b) in after.iter().zip(&recs[..4]) {
        assert_eq!(a.raw, b.raw);
    }
    let r = &after[4].payload;
    assert_eq!(r["event"], "wal.repaired");
    assert_eq!(r["kept_records"], 4);
    assert_eq!(r["cut"][0]["offset"], victim.offset);
    assert_eq!(r["cut"][0]["bytes"], data_end - victim.offset);
    assert_eq!(
        r["cut"][0]["saved_as"],
        format!("{}.cut-{}", segment_name(1), victim.offset)
    );
    assert_eq!(after[5].payload["event"], "started");

    // A second repair finds nothing to cut.
    let out = repair(&dir, &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("wal repair: nothing to cut; kept everything: records=7 "),
        "{}",
        out.stdout
    );
}

#[test]
fn repair_at_a_record_boundary_cuts_an_edited_record() {
    // A record edited with its CRC fixed shows as a broken chain at the next record; the
    // operator cuts at the edited one instead.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let recs = write_wal(&dir, zero_filled(1024 * 1024), 8);
    let mut b = std::fs::read(seg1(&dir)).unwrap();
    let (o, e) = (recs[4].offset as usize, frame_end(&recs[4]) as usize);
    let pos = o + 8 + recs[4].raw.find("record 5").unwrap();
    b[pos] = b'R';
    let crc = crc32c::crc32c(&b[o + 8..e]);
    b[o + 4..o + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(seg1(&dir), &b).unwrap();
    let out = verify(&dir);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("WAL_CHAIN_BROKEN"), "{}", out.stderr);

    let out = repair(&dir, &["--truncate-at", &o.to_string()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "kept records=4 head_seq=4 head_hash={}",
            recs[3].hash
        )),
        "{}",
        out.stdout
    );
    let saved = dir.join(format!("{}.cut-{o}", segment_name(1)));
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        &b[o..frame_end(&recs[7]) as usize]
    );
    let out = verify(&dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("records=5 "), "{}", out.stdout);
}

#[test]
fn repair_refuses_a_wal_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut d = Daemon::start_in(&dir, &["--demo"], |_| {});
    let before = std::fs::read(seg1(&dir)).unwrap();
    let out = repair(&dir, &[]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("autonomy: error: WAL_LOCKED: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("(pid {})", d.child.id())),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(seg1(&dir)).unwrap(), before);
    assert_eq!(d.stop().code(), Some(0));

    let out = repair(Path::new("/nonexistent/wal"), &[]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}

#[test]
fn repair_moves_later_segments_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let recs = write_wal(&dir, zero_filled(2048), 40);
    let segs = autonomy::wal::list_segments(&dir).unwrap();
    assert!(segs.len() >= 4, "{segs:?}");
    // Damage the second record of the second segment.
    let in_second: Vec<_> = recs.iter().filter(|r| r.segment == segs[1].1).collect();
    let victim = in_second[1];
    let mut b = std::fs::read(&segs[1].1).unwrap();
    b[victim.offset as usize + 20] ^= 0x01;
    std::fs::write(&segs[1].1, &b).unwrap();
    let later: Vec<(PathBuf, Vec<u8>)> = segs[2..]
        .iter()
        .map(|(_, p)| (p.clone(), std::fs::read(p).unwrap()))
        .collect();

    let out = repair(&dir, &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("kept records={} ", victim.seq.0 - 1)),
        "{}",
        out.stdout
    );
    for (p, bytes) in &later {
        let name = p.file_name().unwrap().to_str().unwrap();
        let moved = dir.join(format!("{name}.cut-0"));
        assert!(
            out.stdout.contains(&format!(
                "moved segment {name} ({} bytes) aside as {}",
                bytes.len(),
                moved.display()
            )),
            "{}",
            out.stdout
        );
        assert!(!p.exists());
        assert_eq!(&std::fs::read(&moved).unwrap(), bytes);
    }
    let out = verify(&dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("records={} ", victim.seq)),
        "{}",
        out.stdout
    );
    start_and_stop(&dir);
}

#[test]
fn stray_bytes_far_past_the_head_are_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let recs = write_wal(&dir, zero_filled(8 * 1024 * 1024), 3);
    let head_end = frame_end(&recs[2]);
    let at: u64 = 6 * 1024 * 1024;
    assert!(at > autonomy::wal::batch_window_end(head_end));
    let mut b = std::fs::read(seg1(&dir)).unwrap();
    b[at as usize..at as usize + 7].copy_from_slice(b"garbage");
    std::fs::write(seg1(&dir), &b).unwrap();

    let out = verify(&dir);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "wal verify: FAILED — WAL_STRAY_BYTES at {} offset {at}",
            segment_name(1)
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("torn tail"), "{}", out.stdout);
    let e = refused_start(&dir);
    assert!(e.contains("WAL_STRAY_BYTES"), "{e}");

    let out = repair(&dir, &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "cut {} bytes of segment {} from offset {head_end}",
            at + 7 - head_end,
            segment_name(1)
        )),
        "{}",
        out.stdout
    );
    let out = verify(&dir);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    start_and_stop(&dir);
}

/// The syscalls of a daemon run under `strace`, in order, with file descriptors shown as paths.
fn traced_daemon_run(wal: &Path, log: &Path, calls: usize) -> Vec<String> {
    use std::io::BufRead;
    let mut child = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "40", "-o"])
        .arg(log)
        .args([
            "-e",
            "trace=mkdir,rename,renameat,renameat2,fsync,pwrite64",
            "--",
        ])
        .arg(bin())
        .args(["runtime", "start", "--demo", "--listen", "127.0.0.1:0"])
        .args(["--wal-segment-bytes", "65536", "--wal-dir"])
        .arg(wal)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace (needed for this test)");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut addr, mut seen) = (None, Vec::new());
    for line in stderr.lines().map_while(Result::ok) {
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            break;
        }
        seen.push(line);
    }
    let addr: std::net::SocketAddr =
        addr.unwrap_or_else(|| panic!("the daemon did not start under strace: {seen:?}"));
    let pad = "z".repeat(3000);
    for i in 0..calls {
        let body = format!(r#"{{"kind":"tool.echo","params":{{"message":"{i}-{pad}"}}}}"#);
        let r = http(
            addr,
            "POST",
            "/v1/tool",
            Some(("application/json", body.as_bytes())),
        );
        assert_eq!(r.status, 200);
    }
    // The daemon's pid is in the lock file; strace exits with it.
    let pid: i32 = std::fs::read_to_string(wal.join("wal.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_timeout(&mut child, Duration::from_secs(30)).is_some());
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            l.split_once(' ')
                .map_or(l, |(_, rest)| rest)
                .trim()
                .to_string()
        })
        .collect()
}

/// Index of the first line at or after `from` that starts with `call(` and contains `text`.
fn find(lines: &[String], from: usize, call: &str, text: &str) -> usize {
    lines[from..]
        .iter()
        .position(|l| l.starts_with(&format!("{call}(")) && l.contains(text))
        .map(|i| from + i)
        .unwrap_or_else(|| panic!("no {call}(…{text}…) after line {from} in {lines:#?}"))
}

#[test]
fn new_names_are_durable_in_their_directory_before_records_go_under_them() {
    // strace is a peer outside the repo: CI installs it and must run this; elsewhere it may skip.
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "strace is missing and CI=true: .ci/run must install it"
        );
        eprintln!("skipped: strace is not installed (the directory-fsync order check needs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("new");
    let wal = parent.join("wal");
    // 30 calls of 3 KiB: past the 64 KiB segment, so one rotation.
    let t = traced_daemon_run(&wal, &tmp.path().join("strace.log"), 30);
    let fd = |p: &Path| format!("<{}>", p.display());
    let record = r#"{\"seq\":"#;

    // A new WAL directory (and the new parent it needed) is durable in its parent before the
    // first segment is created in it.
    let made = find(&t, 0, "mkdir", &format!("\"{}\"", wal.display()));
    let made = find(&t, made + 1, "mkdir", &format!("\"{}\"", wal.display()));
    let synced_root = find(&t, made, "fsync", &fd(tmp.path()));
    let synced_parent = find(&t, made, "fsync", &fd(&parent));
    let seg1 = wal.join(segment_name(1));
    let header = find(&t, made, "pwrite64", &fd(&seg1));
    assert!(synced_root < header && synced_parent < header, "{t:#?}");
    // The first segment's entry is durable before its first record is written.
    let synced = find(&t, header, "fsync", &fd(&wal));
    let first_record = t[header..]
        .iter()
        .position(|l| l.starts_with("pwrite64(") && l.contains(&fd(&seg1)) && l.contains(record))
        .map(|i| header + i)
        .expect("the first record written");
    assert!(synced < first_record, "{t:#?}");

    // Rotation: the spare renamed into place, the directory fsync'd, then records written.
    let names = autonomy::wal::list_segments(&wal).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    let seg2 = &names[1].1;
    let renamed = t
        .iter()
        .position(|l| l.starts_with("rename") && l.contains(&format!("\"{}\"", seg2.display())))
        .unwrap_or_else(|| panic!("no rename to {} in {t:#?}", seg2.display()));
    let synced = find(&t, renamed, "fsync", &fd(&wal));
    let first_record = find(&t, renamed, "pwrite64", &fd(seg2));
    assert!(t[first_record].contains(record), "{}", t[first_record]);
    assert!(synced < first_record, "{t:#?}");
}
