//! File-system steps the WAL makes durable: a directory fsync after every new name, the saved
//! copy of bytes cut from a segment, zeroing or truncating a segment's tail.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Copies are made this many bytes at a time (a segment can be larger than memory should hold).
const CHUNK: usize = 1024 * 1024;
/// Names tried for a saved copy before giving up (`.cut-<offset>`, `-2`, … `-<n>`).
const MAX_NAME_TRIES: u32 = 1000;

/// Makes the entries of `dir` (a new, removed or renamed file) durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    trace(|| format!("dir-sync {}", dir.display()));
    Ok(())
}

/// Creates `dir` and any missing parents, and makes each new entry durable in its parent.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p);
        match p.parent() {
            Some(q) => p = q,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for m in missing.iter().rev() {
        match m.parent() {
            Some(q) if !q.as_os_str().is_empty() => fsync_dir(q)?,
            Some(_) => fsync_dir(Path::new("."))?,
            None => {}
        }
    }
    Ok(())
}

/// Writes zeros over `[from, to)`.
pub(crate) fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; CHUNK];
    let mut off = from;
    while off < to {
        let n = ((to - off) as usize).min(CHUNK);
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// A new file beside `path` named `<name>.<tag>` (or `<name>.<tag>-2`, …), never replacing one.
pub(crate) fn create_beside(path: &Path, tag: &str) -> io::Result<(File, PathBuf)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for i in 1..=MAX_NAME_TRIES {
        let cand = if i == 1 {
            dir.join(format!("{name}.{tag}"))
        } else {
            dir.join(format!("{name}.{tag}-{i}"))
        };
        match OpenOptions::new().write(true).create_new(true).open(&cand) {
            Ok(f) => return Ok((f, cand)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{MAX_NAME_TRIES} files named {name}.{tag}* already exist"),
    ))
}

/// Saves bytes `[from, to)` of `segment` as `<segment>.cut-<from>` beside it (fsync'd, and the
/// directory too), so what a cut removes is kept. Returns the new file's path.
pub(crate) fn save_cut(segment: &Path, from: u64, to: u64) -> io::Result<PathBuf> {
    let src = File::open(segment)?;
    let (dst, path) = create_beside(segment, &format!("cut-{from}"))?;
    let res = copy_range(&src, &dst, from, to)
        .and_then(|_| dst.sync_all())
        .and_then(|_| fsync_dir(path.parent().unwrap_or(Path::new("."))));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Copies `[from, to)` of `src` to the start of `dst`.
fn copy_range(src: &File, dst: &File, from: u64, to: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = from;
    while off < to {
        let want = ((to - off) as usize).min(CHUNK);
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the segment ended while its bytes were being saved",
            ));
        }
        dst.write_all_at(&buf[..n], off - from)?;
        off += n as u64;
    }
    Ok(())
}

/// Removes `[from, to)` from the end of the data in `segment`: zeroed when the file goes on
/// past `to` (preallocated space stays reserved), truncated at `from` otherwise; then fsync'd.
pub(crate) fn cut_tail(segment: &Path, from: u64, to: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(segment)?;
    if f.metadata()?.len() > to {
        zero_fill(&f, from, to)?;
    } else {
        f.set_len(from)?;
    }
    f.sync_all()
}

/// The last non-zero byte at or after `from` in `file`, plus one (`from` when there is none).
pub(crate) fn data_end(file: &File, from: u64) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut end = from;
    let mut off = from;
    while off < len {
        let want = ((len - off) as usize).min(CHUNK);
        let n = file.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        if let Some(p) = buf[..n].iter().rposition(|&b| b != 0) {
            end = off + p as u64 + 1;
        }
        off += n as u64;
    }
    Ok(end)
}

#[cfg(test)]
thread_local! {
    /// File-system steps taken on this thread, in order (tests check durability ordering).
    pub(crate) static TRACE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes a file-system step for the tests on this thread; does nothing outside tests.
#[inline]
pub(crate) fn trace(_event: impl FnOnce() -> String) {
    #[cfg(test)]
    TRACE.with(|t| t.borrow_mut().push(_event()));
}
