//! Bounded reads of regular files: bundles, policy files and slot metadata.

use std::io::Read;
use std::path::Path;

/// Reads a file of at most `cap` bytes; `what` names it in messages ("bundle", "policy file").
///
/// Only a regular file is read. It is opened non-blocking (so opening a FIFO cannot hang) and
/// checked on the open descriptor (so it cannot be swapped between the check and the read),
/// and no more than `cap + 1` bytes are read whatever its size claims (a device such as
/// `/dev/zero` reports 0 and never ends).
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    let too_big = |n: u64| format!("{what} {} is {n} bytes; the limit is {cap}", path.display());
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}
