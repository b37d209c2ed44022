//! The bundle archive: a `.tar.gz` unpacked into memory with hard limits (so a decompression
//! bomb is cut off and nothing touches the file system), and packed reproducibly.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use super::manifest::MANIFEST;

/// Largest compressed bundle accepted.
pub const MAX_COMPRESSED: u64 = 16 * 1024 * 1024;
/// Largest single file inside a bundle.
pub const MAX_FILE: u64 = 4 * 1024 * 1024;
/// Largest total of all files inside a bundle.
pub const MAX_TOTAL: u64 = 32 * 1024 * 1024;
/// Most entries in one archive.
pub const MAX_ENTRIES: usize = 1000;
/// Hard cap on the decompressed tar stream (files plus headers and padding).
const MAX_TAR_STREAM: u64 = MAX_TOTAL + (MAX_ENTRIES as u64 + 8) * 2048;

/// A reader that fails once more than `limit` bytes went through it.
struct Limited<R> {
    inner: R,
    left: u64,
    what: &'static str,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One probe byte tells a stream that ends exactly at the limit from a larger one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!("LIMIT:{}", self.what))),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    if let Some(what) = s.strip_prefix("LIMIT:") {
        return what.to_string();
    }
    format!("not a valid .tar.gz bundle: {s}")
}

/// Normalises one archive path; `None` for the root itself.
fn clean_path(raw: &[u8]) -> Result<(bool, Option<String>), String> {
    let s = std::str::from_utf8(raw).map_err(|_| "archive entry name is not UTF-8".to_string())?;
    if s.contains('\0') || s.contains('\\') {
        return Err(format!("archive entry {s:?} has a forbidden character"));
    }
    let absolute = s.starts_with('/');
    let mut parts = Vec::new();
    for (i, c) in s.split('/').enumerate() {
        match c {
            "" if i == 0 => {}
            "" | "." => {}
            ".." => return Err(format!("archive entry {s:?} contains `..`")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok((absolute, None));
    }
    Ok((absolute, Some(parts.join("/"))))
}

/// Unpacks the archive into memory with every safety check; returns path → content.
pub fn unpack(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if bytes.len() as u64 > MAX_COMPRESSED {
        return Err(format!(
            "bundle is {} bytes compressed; the limit is {MAX_COMPRESSED}",
            bytes.len()
        ));
    }
    let gz = flate2::read::GzDecoder::new(bytes);
    let limited = Limited {
        inner: gz,
        left: MAX_TAR_STREAM,
        what: "bundle unpacks to more than the 32 MiB limit (decompression bomb?)",
    };
    let mut ar = tar::Archive::new(limited);
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let mut count = 0usize;
    let mut saw_relative = false;
    let mut saw_absolute = false;
    let entries = ar.entries().map_err(|e| io_reason(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_reason(&e))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(format!("bundle has more than {MAX_ENTRIES} entries"));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).to_string();
        let et = entry.header().entry_type();
        use tar::EntryType as E;
        match et {
            E::Regular | E::Continuous => {}
            E::Directory | E::XGlobalHeader => {
                clean_path(&raw)?;
                continue;
            }
            E::Symlink => return Err(format!("archive entry {shown:?} is a symlink")),
            E::Link => return Err(format!("archive entry {shown:?} is a hard link")),
            E::Char | E::Block => return Err(format!("archive entry {shown:?} is a device")),
            E::Fifo => return Err(format!("archive entry {shown:?} is a fifo")),
            other => {
                return Err(format!(
                    "archive entry {shown:?} has an unsupported type {other:?}"
                ));
            }
        }
        let (absolute, name) = clean_path(&raw)?;
        let Some(name) = name else {
            return Err(format!("archive entry {shown:?} has no name"));
        };
        if absolute {
            saw_absolute = true;
        } else {
            saw_relative = true;
        }
        let size = entry.header().size().map_err(|e| io_reason(&e))?;
        if size > MAX_FILE {
            return Err(format!(
                "{name} is {size} bytes; the limit per file is {MAX_FILE}"
            ));
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(MAX_FILE + 1)
            .read_to_end(&mut content)
            .map_err(|e| io_reason(&e))?;
        if content.len() as u64 > MAX_FILE {
            return Err(format!("{name} is larger than the {MAX_FILE}-byte limit"));
        }
        total += content.len() as u64;
        if total > MAX_TOTAL {
            return Err(format!(
                "bundle unpacks to more than the {MAX_TOTAL}-byte limit (decompression bomb?)"
            ));
        }
        if files.insert(name.clone(), content).is_some() {
            return Err(format!("archive has {name} twice"));
        }
    }
    if saw_absolute {
        // `opa build` writes root-relative names (`/.manifest`, `/data.json`); they are allowed
        // only in an OPA-layout bundle whose every entry is root-relative.
        if saw_relative || files.contains_key(MANIFEST) {
            let first = files.keys().next().cloned().unwrap_or_default();
            return Err(format!(
                "archive has an absolute path (/{first}); only `opa build` bundles, whose every entry starts with `/`, may use them"
            ));
        }
    }
    if files.is_empty() {
        return Err("bundle is empty".into());
    }
    Ok(files)
}

/// A reproducible `.tar.gz`: entries in byte order of their names, mtime 0, uid/gid 0, mode
/// 0644, no owner names, gzip header without name or time.
pub fn pack(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(9));
    let mut tb = tar::Builder::new(gz);
    tb.mode(tar::HeaderMode::Deterministic);
    for (name, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tb.append_data(&mut h, name, content.as_slice())
            .map_err(|e| format!("cannot archive {name}: {e}"))?;
    }
    let gz = tb.into_inner().map_err(|e| e.to_string())?;
    let mut out = gz.finish().map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            clean_path(b"./a/b.rego").unwrap(),
            (false, Some("a/b.rego".into()))
        );
        assert_eq!(
            clean_path(b"/data.json").unwrap(),
            (true, Some("data.json".into()))
        );
        assert!(clean_path(b"a/../../b").is_err());
    }
}
