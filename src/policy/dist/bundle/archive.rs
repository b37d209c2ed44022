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

/// Why an archive is refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The compressed bytes are over [`MAX_COMPRESSED`].
    #[error("bundle is {size} bytes compressed; the limit is {limit}")]
    CompressedTooBig {
        /// The compressed size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The decompressed stream ran past its cap (files, headers and padding).
    #[error(
        "bundle unpacks to more than the {} MiB limit (decompression bomb?)",
        MAX_TOTAL / (1024 * 1024)
    )]
    StreamTooBig,
    /// Not gzip, not tar, or cut short.
    #[error("not a valid .tar.gz bundle: {0}")]
    NotTarGz(std::io::Error),
    /// More than [`MAX_ENTRIES`] entries.
    #[error("bundle has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// An entry name that is not UTF-8.
    #[error("archive entry name is not UTF-8")]
    NameNotUtf8,
    /// A NUL or a backslash in an entry name.
    #[error("archive entry {name:?} has a forbidden character")]
    ForbiddenCharacter {
        /// The entry name.
        name: String,
    },
    /// A `..` component in an entry name.
    #[error("archive entry {name:?} contains `..`")]
    DotDot {
        /// The entry name.
        name: String,
    },
    /// A link, device or FIFO: bundles hold regular files only.
    #[error("archive entry {name:?} is a {kind}")]
    Special {
        /// The entry name.
        name: String,
        /// What it is.
        kind: Special,
    },
    /// Any other entry type that is not a file or a directory.
    #[error("archive entry {name:?} has an unsupported type {kind:?}")]
    UnsupportedType {
        /// The entry name.
        name: String,
        /// Its type.
        kind: tar::EntryType,
    },
    /// A file entry whose name is the archive root (`./`).
    #[error("archive entry {name:?} has no name")]
    NoName {
        /// The entry name.
        name: String,
    },
    /// A file whose header declares more than [`MAX_FILE`] bytes.
    #[error("{name} is {size} bytes; the limit per file is {limit}")]
    FileTooBig {
        /// The file's bundle path.
        name: String,
        /// The declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A file that held more than [`MAX_FILE`] bytes when read.
    #[error("{name} is larger than the {limit}-byte limit")]
    FileOverLimit {
        /// The file's bundle path.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// The files together are over [`MAX_TOTAL`] bytes.
    #[error("bundle unpacks to more than the {limit}-byte limit (decompression bomb?)")]
    TotalTooBig {
        /// The limit.
        limit: u64,
    },
    /// Two entries with the same normalised path.
    #[error("archive has {name} twice")]
    Duplicate {
        /// The file's bundle path.
        name: String,
    },
    /// Root-relative names outside an all-root-relative OPA bundle.
    #[error(
        "archive has an absolute path (/{first}); only `opa build` bundles, whose every entry starts with `/`, may use them"
    )]
    Absolute {
        /// The first file's bundle path, in byte order.
        first: String,
    },
    /// No files at all.
    #[error("bundle is empty")]
    Empty,
}

/// An entry type that is refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// A symbolic link.
    Symlink,
    /// A hard link.
    HardLink,
    /// A character or block device.
    Device,
    /// A named pipe.
    Fifo,
}

impl std::fmt::Display for Special {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Special::Symlink => "symlink",
            Special::HardLink => "hard link",
            Special::Device => "device",
            Special::Fifo => "fifo",
        })
    }
}

/// Why a bundle could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Appending one file failed.
    #[error("cannot archive {name}: {error}")]
    Entry {
        /// The file's bundle path.
        name: String,
        /// What tar said.
        error: std::io::Error,
    },
    /// Finishing the tar or gzip stream failed.
    #[error(transparent)]
    Finish(std::io::Error),
}

/// The error [`Limited`] fails with; it travels inside the `io::Error` that tar passes on.
#[derive(Debug, thiserror::Error)]
#[error("the decompressed stream is over its limit")]
struct StreamLimit;

/// A reader that fails once more than `left` bytes went through it.
struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One probe byte tells a stream that ends exactly at the limit from a larger one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(StreamLimit)),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A read error while unpacking: the stream cap, or a broken archive.
fn read_error(e: std::io::Error) -> UnpackError {
    if e.get_ref().is_some_and(|inner| inner.is::<StreamLimit>()) {
        UnpackError::StreamTooBig
    } else {
        UnpackError::NotTarGz(e)
    }
}

/// Normalises one archive path; `None` for the root itself.
fn clean_path(raw: &[u8]) -> Result<(bool, Option<String>), UnpackError> {
    let s = std::str::from_utf8(raw).map_err(|_| UnpackError::NameNotUtf8)?;
    if s.contains('\0') || s.contains('\\') {
        return Err(UnpackError::ForbiddenCharacter { name: s.into() });
    }
    let absolute = s.starts_with('/');
    let mut parts = Vec::new();
    for (i, c) in s.split('/').enumerate() {
        match c {
            "" if i == 0 => {}
            "" | "." => {}
            ".." => return Err(UnpackError::DotDot { name: s.into() }),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok((absolute, None));
    }
    Ok((absolute, Some(parts.join("/"))))
}

/// Unpacks the archive into memory with every safety check; returns path → content.
pub fn unpack(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, UnpackError> {
    if bytes.len() as u64 > MAX_COMPRESSED {
        return Err(UnpackError::CompressedTooBig {
            size: bytes.len() as u64,
            limit: MAX_COMPRESSED,
        });
    }
    let gz = flate2::read::GzDecoder::new(bytes);
    let limited = Limited {
        inner: gz,
        left: MAX_TAR_STREAM,
    };
    let mut ar = tar::Archive::new(limited);
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let mut count = 0usize;
    let mut saw_relative = false;
    let mut saw_absolute = false;
    let entries = ar.entries().map_err(read_error)?;
    for entry in entries {
        let mut entry = entry.map_err(read_error)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(UnpackError::TooManyEntries { limit: MAX_ENTRIES });
        }
        let raw = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&raw).to_string();
        let special = |kind| UnpackError::Special {
            name: shown(),
            kind,
        };
        let et = entry.header().entry_type();
        use tar::EntryType as E;
        match et {
            E::Regular | E::Continuous => {}
            E::Directory | E::XGlobalHeader => {
                clean_path(&raw)?;
                continue;
            }
            E::Symlink => return Err(special(Special::Symlink)),
            E::Link => return Err(special(Special::HardLink)),
            E::Char | E::Block => return Err(special(Special::Device)),
            E::Fifo => return Err(special(Special::Fifo)),
            kind => {
                return Err(UnpackError::UnsupportedType {
                    name: shown(),
                    kind,
                });
            }
        }
        let (absolute, name) = clean_path(&raw)?;
        let Some(name) = name else {
            return Err(UnpackError::NoName { name: shown() });
        };
        if absolute {
            saw_absolute = true;
        } else {
            saw_relative = true;
        }
        let size = entry.header().size().map_err(read_error)?;
        if size > MAX_FILE {
            return Err(UnpackError::FileTooBig {
                name,
                size,
                limit: MAX_FILE,
            });
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(MAX_FILE + 1)
            .read_to_end(&mut content)
            .map_err(read_error)?;
        if content.len() as u64 > MAX_FILE {
            return Err(UnpackError::FileOverLimit {
                name,
                limit: MAX_FILE,
            });
        }
        total += content.len() as u64;
        if total > MAX_TOTAL {
            return Err(UnpackError::TotalTooBig { limit: MAX_TOTAL });
        }
        if files.contains_key(&name) {
            return Err(UnpackError::Duplicate { name });
        }
        files.insert(name, content);
    }
    if saw_absolute {
        // `opa build` writes root-relative names (`/.manifest`, `/data.json`); they are allowed
        // only in an OPA-layout bundle whose every entry is root-relative.
        if saw_relative || files.contains_key(MANIFEST) {
            let first = files.keys().next().cloned().unwrap_or_default();
            return Err(UnpackError::Absolute { first });
        }
    }
    if files.is_empty() {
        return Err(UnpackError::Empty);
    }
    Ok(files)
}

/// A reproducible `.tar.gz`: entries in byte order of their names, mtime 0, uid/gid 0, mode
/// 0644, no owner names, gzip header without name or time.
pub fn pack(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, PackError> {
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
            .map_err(|error| PackError::Entry {
                name: name.clone(),
                error,
            })?;
    }
    let gz = tb.into_inner().map_err(PackError::Finish)?;
    let mut out = gz.finish().map_err(PackError::Finish)?;
    out.flush().map_err(PackError::Finish)?;
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
        assert!(matches!(
            clean_path(b"a/../../b"),
            Err(UnpackError::DotDot { name }) if name == "a/../../b"
        ));
    }

    #[test]
    fn messages_without_a_black_box_test() {
        // A file cannot hold more than its header says through tar, and a 16 MiB bundle that
        // compresses badly enough is impractical to build in a test: the messages are pinned
        // here instead.
        assert_eq!(
            UnpackError::FileOverLimit {
                name: "a/p.rego".into(),
                limit: MAX_FILE
            }
            .to_string(),
            "a/p.rego is larger than the 4194304-byte limit"
        );
        assert_eq!(
            UnpackError::CompressedTooBig {
                size: MAX_COMPRESSED + 1,
                limit: MAX_COMPRESSED
            }
            .to_string(),
            "bundle is 16777217 bytes compressed; the limit is 16777216"
        );
        assert_eq!(
            PackError::Entry {
                name: "p.rego".into(),
                error: std::io::Error::other("disk full")
            }
            .to_string(),
            "cannot archive p.rego: disk full"
        );
        assert_eq!(
            PackError::Finish(std::io::Error::other("disk full")).to_string(),
            "disk full"
        );
    }

    #[test]
    fn the_stream_cap_is_told_from_a_broken_archive() {
        let over = std::io::Error::other(StreamLimit);
        assert!(matches!(read_error(over), UnpackError::StreamTooBig));
        let broken = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof");
        assert_eq!(
            read_error(broken).to_string(),
            "not a valid .tar.gz bundle: early eof"
        );
    }
}
