//! Damage tests: corrupt a WAL on disk, then check that `Wal::open` and `autonomy wal verify`
//! (the built binary) refuse it with the right code, or cut back a torn tail and say so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use autonomy::wal::{
    NewRecord, Preallocate, RecordType, StoredRecord, Wal, WalError, WalOptions, segment_name,
    verify,
};

use super::{frame, long_wal, opts, records, seg1, verify as verify_bin, write_wal};
use crate::common::{bin, cli, wait_timeout};

/// 1 MiB segments, preallocated with fallocate (a zeroed tail reads as the end of the data).
fn opts1() -> WalOptions {
    opts(1024 * 1024, Preallocate::Fallocate)
}

/// Open must refuse with `code`; the message names the segment and offset; `wal verify` exits 1.
fn assert_refused(dir: &Path, code: &str, offset: u64) {
    let e = Wal::open(dir, opts1()).unwrap_err();
    assert!(matches!(e, WalError::Damaged(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with(code), "{msg}");
    assert!(msg.contains(&segment_name(1)), "{msg}");
    assert!(msg.contains(&format!("offset {offset}")), "{msg}");
    assert!(msg.contains("wal verify --dir"), "{msg}");
    let repair = format!("`autonomy wal repair --dir {}`", dir.display());
    assert!(msg.contains(&repair), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    let d = verify(dir).unwrap_err();
    assert_eq!(d.code.as_str(), code);
    let out = verify_bin(dir);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(&format!("wal verify: FAILED — {code} at ")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("offset {offset}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&repair), "{}", out.stderr);
}

#[test]
fn flipped_byte_in_a_middle_record_is_a_crc_mismatch() {
    let d = tempfile::tempdir().unwrap();
    let recs = long_wal(d.path(), Preallocate::Fallocate);
    let mut b = std::fs::read(seg1(d.path())).unwrap();
    let r = frame(&recs[4]);
    b[r.start + 8 + 20] ^= 0x01;
    std::fs::write(seg1(d.path()), &b).unwrap();
    assert_refused(d.path(), "WAL_CRC_MISMATCH", recs[4].offset);
    // Nothing was modified by the refused open.
    assert_eq!(std::fs::read(seg1(d.path())).unwrap(), b);
}

#[test]
fn flipped_length_field_in_a_middle_record_is_a_crc_mismatch() {
    let d = tempfile::tempdir().unwrap();
    let recs = long_wal(d.path(), Preallocate::Fallocate);
    let mut b = std::fs::read(seg1(d.path())).unwrap();
    let r = frame(&recs[3]);
    b[r.start] ^= 0x04;
    std::fs::write(seg1(d.path()), &b).unwrap();
    assert_refused(d.path(), "WAL_CRC_MISMATCH", recs[3].offset);
}

#[test]
fn damage_at_the_end_of_a_non_last_segment_is_not_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let o = WalOptions {
        segment_bytes: 2048,
        ..opts1()
    };
    write_wal(d.path(), o.clone(), 40);
    let segs = autonomy::wal::list_segments(d.path()).unwrap();
    assert!(segs.len() >= 3);
    let all = records(d.path());
    let last_of_first: Vec<_> = all.iter().filter(|r| r.segment == segs[0].1).collect();
    let victim = last_of_first.last().unwrap();
    let mut b = std::fs::read(&segs[0].1).unwrap();
    let r = frame(victim);
    b[r.end - 3] ^= 0xff;
    std::fs::write(&segs[0].1, &b).unwrap();
    let e = Wal::open(d.path(), o).unwrap_err().to_string();
    assert!(e.starts_with("WAL_CRC_MISMATCH"), "{e}");
    assert_eq!(verify_bin(d.path()).code, 1);
}

fn torn_tail_case(cut: impl FnOnce(&Path, &[StoredRecord])) {
    let d = tempfile::tempdir().unwrap();
    let recs = write_wal(d.path(), opts1(), 10);
    cut(d.path(), &recs);
    // verify: a warning, exit 0, nothing modified.
    let before = std::fs::read(seg1(d.path())).unwrap();
    let out = verify_bin(d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("records=9"), "{}", out.stdout);
    assert!(out.stdout.contains("warning: torn tail"), "{}", out.stdout);
    assert_eq!(std::fs::read(seg1(d.path())).unwrap(), before);
    // open: cut back, reported, recorded.
    let (w, rec) = Wal::open(d.path(), opts1()).unwrap();
    assert_eq!(rec.records, 9);
    let t = rec.trimmed.expect("trim reported");
    assert!(
        t.contains(&format!(
            "torn tail at segment {} offset {}",
            segment_name(1),
            recs[9].offset
        )),
        "{t}"
    );
    drop(w);
    let after = records(d.path());
    assert_eq!(after.len(), 10);
    for (a, b) in after.iter().zip(&recs[..9]) {
        assert_eq!(a.raw, b.raw, "earlier records intact");
    }
    assert_eq!(after[9].rtype, autonomy::wal::RecordType::Runtime);
    assert_eq!(after[9].payload["event"], "wal.recovered");
    assert_eq!(after[9].payload["offset"], recs[9].offset);
    let out = verify_bin(d.path());
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("records=10"), "{}", out.stdout);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
}

#[test]
fn truncated_tail_is_cut_back_and_reported() {
    torn_tail_case(|dir, recs| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(seg1(dir))
            .unwrap();
        f.set_len(recs[9].offset + 8 + 17).unwrap();
    });
}

#[test]
fn zeroed_tail_of_a_preallocated_segment_is_cut_back() {
    // The end of the last frame never reached the disk: zeros in the preallocated region.
    torn_tail_case(|dir, recs| {
        let mut b = std::fs::read(seg1(dir)).unwrap();
        let r = frame(&recs[9]);
        for x in &mut b[r.start + 30..r.end] {
            *x = 0;
        }
        std::fs::write(seg1(dir), &b).unwrap();
    });
}

#[test]
fn removed_middle_record_is_a_seq_gap() {
    let d = tempfile::tempdir().unwrap();
    let recs = write_wal(d.path(), opts1(), 10);
    let mut b = std::fs::read(seg1(d.path())).unwrap();
    let r = frame(&recs[4]);
    b.drain(r);
    std::fs::write(seg1(d.path()), &b).unwrap();
    assert_refused(d.path(), "WAL_SEQ_GAP", recs[4].offset);
    let e = verify(d.path()).unwrap_err();
    assert_eq!(e.seq, Some(6));
}

#[test]
fn swapped_middle_records_are_a_seq_gap() {
    let d = tempfile::tempdir().unwrap();
    let recs = write_wal(d.path(), opts1(), 10);
    let b = std::fs::read(seg1(d.path())).unwrap();
    let r4 = frame(&recs[3]);
    let r5 = frame(&recs[4]);
    let mut nb = b[..r4.start].to_vec();
    nb.extend_from_slice(&b[r5.clone()]);
    nb.extend_from_slice(&b[r4]);
    nb.extend_from_slice(&b[r5.end..]);
    assert_eq!(nb.len(), b.len());
    std::fs::write(seg1(d.path()), &nb).unwrap();
    assert_refused(d.path(), "WAL_SEQ_GAP", recs[3].offset);
}

#[test]
fn edited_record_with_fixed_crc_breaks_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let recs = write_wal(d.path(), opts1(), 10);
    let mut b = std::fs::read(seg1(d.path())).unwrap();
    let r = frame(&recs[4]);
    let payload = &mut b[r.start + 8..r.end];
    let pos = payload
        .windows(5)
        .position(|w| w == b"hello")
        .expect("body text");
    payload[pos] = b'j';
    let crc = crc32c::crc32c(payload);
    b[r.start + 4..r.start + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(seg1(d.path()), &b).unwrap();
    // The edited record itself checks out; the next one's `prev` no longer matches.
    assert_refused(d.path(), "WAL_CHAIN_BROKEN", recs[5].offset);
    assert_eq!(verify(d.path()).unwrap_err().seq, Some(6));
}

#[test]
fn unparsable_payload_with_valid_crc_is_bad_payload() {
    let d = tempfile::tempdir().unwrap();
    let recs = write_wal(d.path(), opts1(), 5);
    let mut b = std::fs::read(seg1(d.path())).unwrap();
    let r = frame(&recs[2]);
    b[r.start + 8] = b'[';
    let crc = crc32c::crc32c(&b[r.start + 8..r.end]);
    b[r.start + 4..r.start + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(seg1(d.path()), &b).unwrap();
    assert_refused(d.path(), "WAL_BAD_PAYLOAD", recs[2].offset);
}

#[test]
fn a_random_file_is_a_bad_header() {
    let d = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(seg1(d.path()), &junk).unwrap();
    assert_refused(d.path(), "WAL_BAD_HEADER", 0);
}

#[test]
fn verify_bad_input_is_one_line_and_non_zero() {
    let out = verify_bin(Path::new("/nonexistent"));
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("autonomy: error: "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("/nonexistent"), "{}", out.stderr);

    let d = tempfile::tempdir().unwrap();
    let out = verify_bin(d.path());
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("no WAL segments in"), "{}", out.stderr);

    let f = d.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let out = cli(&["wal", "inspect", "--dir", f.to_str().unwrap()], &[]);
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("not a directory"), "{}", out.stderr);
}

#[test]
fn inspect_filters_and_json() {
    let d = tempfile::tempdir().unwrap();
    let recs = write_wal(d.path(), opts1(), 6);
    let dir = d.path().to_str().unwrap();
    let out = cli(
        &["wal", "inspect", "--dir", dir, "--json", "--since", "3"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("{\"seq\":3,"), "{}", lines[0]);
    let aid = recs[1].audit_id.clone().unwrap();
    let out = cli(
        &["wal", "inspect", "--dir", dir, "--audit-id", aid.as_str()],
        &[],
    );
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout); // header + 1
    assert!(out.stdout.contains("decision=allow"), "{}", out.stdout);
    let out = cli(&["wal", "inspect", "--dir", dir, "--type", "runtime"], &[]);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    let out = cli(&["wal", "inspect", "--dir", dir, "--type", "bogus"], &[]);
    assert_ne!(out.code, 0);
}

#[test]
fn follow_sees_new_records_and_exits_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let o = WalOptions {
        segment_bytes: 1024,
        ..opts1()
    };
    let (w, _) = Wal::open(d.path(), o).unwrap();
    w.append(NewRecord::new(RecordType::Runtime, None).with("event", "started"))
        .unwrap();
    let mut child = Command::new(bin())
        .args(["wal", "inspect", "--json", "--follow", "--dir"])
        .arg(d.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        w.append(NewRecord::new(RecordType::Marker, None).with("line", format!("m{i}")))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_timeout(&mut child, Duration::from_secs(10)).expect("--follow did not exit on SIGTERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 21, "{text}");
    assert!(text.lines().last().unwrap().contains("\"line\":\"m19\""));
}
