//! `policy build`: a bundle from a directory of `.rego` and `data.json` files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::archive::{MAX_COMPRESSED, MAX_ENTRIES, MAX_FILE, PackError, pack};
use super::hash::bundle_hash;
use super::manifest::{MANIFEST, Manifest, NameError, check_name};
use super::version::{VersionError, parse_constraints};
use super::{BundleError, from_files};
use crate::policy::dist::file::{FileKind, ReadError, read_capped};
use crate::policy::dist::signing::{self, SIGNATURES_FILE, SignError, SigningKey};
use crate::policy::eval::RegoPolicyError;

/// Why `policy build` made no bundle.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The bundle version is not semver.
    #[error("--version {version:?} is not semver (e.g. 1.2.0): {error}")]
    Version {
        /// The version as given.
        version: String,
        /// What semver said.
        error: semver::Error,
    },
    /// The runtime constraint does not parse.
    #[error(transparent)]
    Constraint(#[from] VersionError),
    /// The bundle name is not valid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The input is not a directory.
    #[error("--in {}: not a directory", dir.display())]
    NotADirectory {
        /// The input as given.
        dir: PathBuf,
    },
    /// A directory could not be listed.
    #[error("cannot read {}: {error}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// An entry's type could not be read.
    #[error("cannot stat {}: {error}", path.display())]
    Stat {
        /// The entry.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A symlink under the input directory.
    #[error("{} is a symlink; bundles hold regular files only", path.display())]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// A file that is not under the input directory after all.
    #[error("{} is outside {}", path.display(), root.display())]
    Outside {
        /// The file.
        path: PathBuf,
        /// The input directory.
        root: PathBuf,
    },
    /// A policy or data file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// No `.rego` file under the input directory.
    #[error("{} has no .rego files", dir.display())]
    NoRego {
        /// The input directory.
        dir: PathBuf,
    },
    /// More files than a bundle may hold (with its manifest).
    #[error("more than {limit} files")]
    TooManyFiles {
        /// The most entries a bundle may have.
        limit: usize,
    },
    /// `SOURCE_DATE_EPOCH` is set but not a number of seconds.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")]
    SourceDateEpoch {
        /// Its value.
        value: String,
    },
    /// The manifest could not be written as JSON.
    #[error(transparent)]
    Manifest(serde_json::Error),
    /// The files would not load as a bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The policy does not compile.
    #[error(transparent)]
    Compile(#[from] RegoPolicyError),
    /// The archive could not be written.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The bundle could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The archive would be over the compressed limit.
    #[error("bundle would be {size} bytes; the limit is {limit}")]
    TooBig {
        /// Its compressed size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// What `policy build` made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The manifest written.
    pub manifest: Manifest,
    /// The compressed archive.
    pub bytes: Vec<u8>,
}

/// Collects `*.rego` and `data.json` files under `dir` (recursively; symlinks refused).
pub fn collect_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, BuildError> {
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files)?;
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Result<(), BuildError> {
    let read_dir = |error| BuildError::ReadDir {
        dir: dir.to_path_buf(),
        error,
    };
    let rd = std::fs::read_dir(dir).map_err(read_dir)?;
    for ent in rd {
        let ent = ent.map_err(read_dir)?;
        let p = ent.path();
        let ft = ent.file_type().map_err(|error| BuildError::Stat {
            path: p.clone(),
            error,
        })?;
        let fname = ent.file_name().to_string_lossy().to_string();
        if fname.starts_with('.') {
            continue;
        }
        if ft.is_symlink() {
            return Err(BuildError::Symlink { path: p });
        }
        if ft.is_dir() {
            walk(root, &p, out)?;
            continue;
        }
        if !(fname.ends_with(".rego") || fname == "data.json") {
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .map_err(|_| BuildError::Outside {
                path: p.clone(),
                root: root.to_path_buf(),
            })?
            .to_string_lossy()
            .replace('\\', "/");
        if rel == MANIFEST {
            continue;
        }
        let content = read_capped(&p, MAX_FILE, FileKind::PolicyFile)?;
        out.insert(rel, content);
    }
    Ok(())
}

/// `created_at`: from `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
pub fn created_at() -> Result<String, BuildError> {
    let t = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => {
            let secs: u64 = s
                .trim()
                .parse()
                .map_err(|_| BuildError::SourceDateEpoch { value: s.clone() })?;
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        }
        _ => std::time::SystemTime::now(),
    };
    Ok(humantime::format_rfc3339_seconds(t).to_string())
}

/// Builds a bundle from a directory: checks version, constraint, compiles, then archives. With a
/// signing key it also writes `.signatures.json`, covering every file, `manifest.json`
/// included.
pub fn build(
    dir: &Path,
    name: &str,
    version: &str,
    runtime: &str,
    shadow: bool,
    signing_key: Option<&SigningKey>,
) -> Result<Built, BuildError> {
    semver::Version::parse(version).map_err(|error| BuildError::Version {
        version: version.to_string(),
        error,
    })?;
    parse_constraints(runtime)?;
    check_name(name)?;
    if !dir.is_dir() {
        return Err(BuildError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    let files = collect_dir(dir)?;
    if !files.keys().any(|k| k.ends_with(".rego")) {
        return Err(BuildError::NoRego {
            dir: dir.to_path_buf(),
        });
    }
    let extra = 1 + usize::from(signing_key.is_some());
    if files.len() + extra > MAX_ENTRIES {
        return Err(BuildError::TooManyFiles { limit: MAX_ENTRIES });
    }
    let manifest = Manifest {
        name: name.to_string(),
        policy_bundle_version: version.to_string(),
        required_runtime_version: runtime.split_whitespace().collect::<Vec<_>>().join(" "),
        bundle_hash: bundle_hash(&files),
        created_at: created_at()?,
        mode: shadow.then(|| "shadow".to_string()),
    };
    let mut all = files;
    let mj = serde_json::to_vec_pretty(&manifest).map_err(BuildError::Manifest)?;
    all.insert(MANIFEST.to_string(), mj);
    // Validate exactly what a load would see (except the runtime constraint, which is about
    // the runtime that loads it, and is only syntax-checked here).
    let checked = {
        let mut m = manifest.clone();
        m.required_runtime_version.clear();
        let mut probe = all.clone();
        probe.insert(
            MANIFEST.to_string(),
            serde_json::to_vec(&m).map_err(BuildError::Manifest)?,
        );
        from_files(probe, None)?
    };
    checked.compile()?;
    if let Some(k) = signing_key {
        let sig = signing::sign(&all, k)?;
        all.insert(SIGNATURES_FILE.to_string(), sig);
    }
    let bytes = pack(&all)?;
    if bytes.len() as u64 > MAX_COMPRESSED {
        return Err(BuildError::TooBig {
            size: bytes.len() as u64,
            limit: MAX_COMPRESSED,
        });
    }
    Ok(Built { manifest, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_without_a_black_box_test() {
        // An I/O error halfway through a directory walk, or an archive that compresses to
        // more than 16 MiB from files that each pass, are impractical to provoke here.
        let io = || std::io::Error::from_raw_os_error(5);
        assert_eq!(
            BuildError::ReadDir {
                dir: "/p/src".into(),
                error: io()
            }
            .to_string(),
            "cannot read /p/src: Input/output error (os error 5)"
        );
        assert_eq!(
            BuildError::Stat {
                path: "/p/src/a.rego".into(),
                error: io()
            }
            .to_string(),
            "cannot stat /p/src/a.rego: Input/output error (os error 5)"
        );
        assert_eq!(
            BuildError::Outside {
                path: "/q/a.rego".into(),
                root: "/p/src".into()
            }
            .to_string(),
            "/q/a.rego is outside /p/src"
        );
        assert_eq!(
            BuildError::TooBig {
                size: 16777217,
                limit: MAX_COMPRESSED
            }
            .to_string(),
            "bundle would be 16777217 bytes; the limit is 16777216"
        );
    }
}
