//! Bounded reads of regular files: bundles, policy files and slot metadata.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a bounded read is reading; it names the file in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A bundle `.tar.gz` given on the command line.
    Bundle,
    /// A `.rego` file (`--policy FILE`, `policy build --in DIR`).
    PolicyFile,
    /// A store slot's `meta.json`.
    SlotMetadata,
    /// A store slot's `bundle.tar.gz`.
    SlotBundle,
    /// A PEM public key that bundle signatures are checked with.
    VerificationKey,
    /// A PEM private key that `policy build` signs with.
    SigningKey,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Bundle => "bundle",
            FileKind::PolicyFile => "policy file",
            FileKind::SlotMetadata => "slot metadata",
            FileKind::SlotBundle => "slot bundle",
            FileKind::VerificationKey => "verification key",
            FileKind::SigningKey => "signing key",
        })
    }
}

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening, inspecting or reading the file failed.
    #[error("cannot read {kind} {}: {error}", path.display())]
    Io {
        /// What the file is.
        kind: FileKind,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A directory, FIFO, device or socket.
    #[error("{kind} {} is not a regular file", path.display())]
    NotRegular {
        /// What the file is.
        kind: FileKind,
        /// The file.
        path: PathBuf,
    },
    /// Larger than the cap (as its size claims, or as read).
    #[error("{kind} {} is {size} bytes; the limit is {limit}", path.display())]
    TooBig {
        /// What the file is.
        kind: FileKind,
        /// The file.
        path: PathBuf,
        /// Its size, or the bytes read before the cap stopped the read.
        size: u64,
        /// The cap.
        limit: u64,
    },
}

/// Reads a file of at most `cap` bytes; `kind` names it in messages.
///
/// Only a regular file is read. It is opened non-blocking (so opening a FIFO cannot hang) and
/// checked on the open descriptor (so it cannot be swapped between the check and the read),
/// and no more than `cap + 1` bytes are read whatever its size claims (a device such as
/// `/dev/zero` reports 0 and never ends).
pub fn read_capped(path: &Path, cap: u64, kind: FileKind) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |error| ReadError::Io {
        kind,
        path: path.to_path_buf(),
        error,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            kind,
            path: path.to_path_buf(),
        });
    }
    let too_big = |size: u64| ReadError::TooBig {
        kind,
        path: path.to_path_buf(),
        size,
        limit: cap,
    };
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let path = PathBuf::from("/s/current/meta.json");
        let e = ReadError::Io {
            kind: FileKind::SlotMetadata,
            path: path.clone(),
            error: std::io::Error::from_raw_os_error(13),
        };
        assert_eq!(
            e.to_string(),
            "cannot read slot metadata /s/current/meta.json: Permission denied (os error 13)"
        );
        let e = ReadError::TooBig {
            kind: FileKind::SlotBundle,
            path: PathBuf::from("/s/current/bundle.tar.gz"),
            size: 20,
            limit: 10,
        };
        assert_eq!(
            e.to_string(),
            "slot bundle /s/current/bundle.tar.gz is 20 bytes; the limit is 10"
        );
        let e = ReadError::NotRegular {
            kind: FileKind::PolicyFile,
            path: PathBuf::from("p"),
        };
        assert_eq!(e.to_string(), "policy file p is not a regular file");
    }
}
