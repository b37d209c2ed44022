//! The raw `fdatasync` floor of a disk, shared by `autonomy-wal-bench` and `autonomy-bench`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use autonomy::wal::Preallocate;

/// Size of the scratch file (enough for any run of a few seconds).
const FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One thread writing 256-byte records back to back at the end of `dir/<name>`, each followed by
/// `fdatasync`, for `secs`. Returns the per write+sync latencies (ns) and the elapsed seconds.
/// The file is removed afterwards.
pub fn raw_fdatasync(dir: &Path, secs: f64, pre: Preallocate) -> (Vec<u64>, f64) {
    fdatasync_loop(dir, secs, pre, None)
}

/// Like [`raw_fdatasync`], but one write+sync every `every` (the disk idle in between), as a WAL
/// fed by messages at a steady rate syncs: after idle, a sync can cost more than back to back.
pub fn paced_fdatasync(dir: &Path, secs: f64, every: Duration) -> Vec<u64> {
    fdatasync_loop(dir, secs, Preallocate::ZeroFill, Some(every)).0
}

fn fdatasync_loop(
    dir: &Path,
    secs: f64,
    pre: Preallocate,
    every: Option<Duration>,
) -> (Vec<u64>, f64) {
    let path = dir.join(format!("raw-{pre:?}.dat"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create raw file");
    match pre {
        Preallocate::Off => {}
        Preallocate::Fallocate => {
            nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::empty(),
                0,
                FILE_BYTES as i64,
            )
            .expect("fallocate");
        }
        Preallocate::ZeroFill => {
            let z = vec![0u8; 1 << 20];
            let mut o = 0;
            while o < FILE_BYTES {
                f.write_all_at(&z, o).expect("zero-fill");
                o += z.len() as u64;
            }
        }
    }
    f.sync_all().expect("sync");
    let rec = [b'x'; 256];
    let mut lat = Vec::new();
    let mut off = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut next = start;
    while Instant::now() < end && off + rec.len() as u64 <= FILE_BYTES {
        if let Some(every) = every {
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let t = Instant::now();
        f.write_all_at(&rec, off).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed().as_nanos() as u64);
        off += rec.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    (lat, secs)
}
