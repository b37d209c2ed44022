//! The agents file: each registered agent's name, role, creation time and the SHA-256 of its
//! bearer token. The token itself is printed once by `agent add` and never stored.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Role;

/// Longest agent name.
pub const MAX_NAME_LEN: usize = 64;
/// Most agents in one file (the file is read whole and every token check looks at each).
pub const MAX_AGENTS: usize = 1024;
/// Largest agents file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// What every token starts with, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "aut_";

/// One registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    /// Its name (`input.agent`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was added (RFC 3339, UTC).
    pub created_at: String,
    /// `sha256:` + hex of its token.
    pub token_sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileBody {
    version: u32,
    agents: Vec<AgentEntry>,
}

/// Why the agents file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not an agents file.
    #[error(
        "{path}: not a valid agents file: {msg} (fix or remove it; `autonomy agent add` makes a new one)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The name breaks the naming rules.
    #[error(
        "agent name {0:?} is not valid: use 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit (\"anonymous\" and \"run\" are reserved)"
    )]
    BadName(String),
    /// `agent add` of a name that exists.
    #[error("agent {0:?} already exists (revoke it first to issue a new token)")]
    Exists(String),
    /// `agent revoke` of a name that does not exist.
    #[error("no agent named {0:?}")]
    NotFound(String),
    /// Too many agents.
    #[error("the agents file holds {MAX_AGENTS} agents already; revoke some first")]
    Full,
    /// No randomness for a token.
    #[error("cannot make a token: the OS random source failed: {0}")]
    Random(String),
}

/// Checks an agent name: 1-64 of `[A-Za-z0-9._-]`, starting with a letter or digit, not a
/// reserved name. (`:` is never allowed, so no agent can pose as `ros2:…` or `bridge:…`.)
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != crate::types::Agent::ANONYMOUS
        && name != super::RUN_AGENT;
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// A fresh token: [`TOKEN_PREFIX`] and 32 random bytes in hex.
pub fn new_token() -> Result<String, StoreError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(b)))
}

/// The SHA-256 of a token. Tokens are 256 random bits, so a fast hash is enough: there is
/// nothing to guess by brute force.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// `sha256:<hex>` of a token, as the file stores it.
fn token_hash_text(token: &str) -> String {
    format!("sha256:{}", hex::encode(token_hash(token)))
}

/// The hash bytes of a stored `sha256:<hex>`, if well formed.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex_part = s.strip_prefix("sha256:")?;
    let v = hex::decode(hex_part).ok()?;
    v.try_into().ok()
}

/// Reads the agents file; a missing file is no agents.
pub fn load(path: &Path) -> Result<Vec<AgentEntry>, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES + 1), &mut buf)
        .map_err(io)?;
    let invalid = |msg: String| StoreError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(invalid(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let body: FileBody = serde_json::from_slice(&buf).map_err(|e| invalid(e.to_string()))?;
    if body.version != 1 {
        return Err(invalid(format!(
            "version {} is not 1 (written by a newer autonomy?)",
            body.version
        )));
    }
    if body.agents.len() > MAX_AGENTS {
        return Err(invalid(format!("more than {MAX_AGENTS} agents")));
    }
    for a in &body.agents {
        check_name(&a.name).map_err(|e| invalid(e.to_string()))?;
        if parse_hash(&a.token_sha256).is_none() {
            return Err(invalid(format!(
                "agent {:?}: token_sha256 is not sha256:<64 hex digits>",
                a.name
            )));
        }
    }
    Ok(body.agents)
}

/// Writes the agents file whole: a temp file (mode 0600) made durable, then renamed over it.
fn save(path: &Path, agents: Vec<AgentEntry>) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let body = FileBody { version: 1, agents };
    let json = serde_json::to_vec_pretty(&body).map_err(|e| io(std::io::Error::other(e)))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".agents")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(io)?;
    tmp.write_all(&json).map_err(io)?;
    tmp.write_all(b"\n").map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Registers `name` with a fresh token; returns the token (shown once, never stored).
pub fn add(path: &Path, name: &str, role: Role) -> Result<String, StoreError> {
    check_name(name)?;
    let mut agents = load(path)?;
    if agents.iter().any(|a| a.name == name) {
        return Err(StoreError::Exists(name.to_string()));
    }
    if agents.len() >= MAX_AGENTS {
        return Err(StoreError::Full);
    }
    let token = new_token()?;
    agents.push(AgentEntry {
        name: name.to_string(),
        role,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        token_sha256: token_hash_text(&token),
    });
    save(path, agents)?;
    Ok(token)
}

/// Removes `name`: its token stops working (a running daemon reloads the file within a second).
pub fn revoke(path: &Path, name: &str) -> Result<(), StoreError> {
    let mut agents = load(path)?;
    let before = agents.len();
    agents.retain(|a| a.name != name);
    if agents.len() == before {
        return Err(StoreError::NotFound(name.to_string()));
    }
    save(path, agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_revoke_round_trip_and_never_store_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/agents.json");
        assert!(load(&path).unwrap().is_empty());
        let t = add(&path, "alice", Role::Agent).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == 4 + 64);
        let t2 = add(&path, "ops", Role::Operator).unwrap();
        assert_ne!(t, t2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t[4..]), "the token itself is stored");
        let agents = load(&path).unwrap();
        assert_eq!(agents.len(), 2);
        assert_eq!(parse_hash(&agents[0].token_sha256), Some(token_hash(&t)));
        assert!(matches!(
            add(&path, "alice", Role::Agent),
            Err(StoreError::Exists(_))
        ));
        revoke(&path, "alice").unwrap();
        assert!(matches!(
            revoke(&path, "alice"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(load(&path).unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn names_follow_the_rules() {
        for ok in ["a", "robot-7", "planner.v2", "A_b"] {
            check_name(ok).unwrap();
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            "-a",
            "a b",
            "ros2:x",
            "anonymous",
            "run",
            "é",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_file_is_one_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agents.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("not a valid agents file"), "{e}");
        std::fs::write(
            &path,
            r#"{"version":1,"agents":[{"name":"a","role":"agent","created_at":"x","token_sha256":"md5:1"}]}"#,
        )
        .unwrap();
        assert!(
            load(&path)
                .unwrap_err()
                .to_string()
                .contains("token_sha256")
        );
    }
}
