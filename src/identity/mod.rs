//! Who is calling: agents with bearer tokens (stored hashed in the agents file, see [`store`]),
//! the auth mode that says whether a token is needed, and the one-run token of `autonomy run`.
//! Front ends hand the presented token to [`Authenticator::authenticate`]; they know nothing of
//! how tokens are stored or compared.

pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::types::Agent;

/// The agent name of `autonomy run`'s child (its one-run token).
pub const RUN_AGENT: &str = "run";

/// How often a running daemon looks for a changed agents file (revocation takes this long).
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Whether callers must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Tokens are neither needed nor read: every caller is `anonymous`.
    Off,
    /// A valid token names the caller; no token is `anonymous`; a bad token is refused.
    Optional,
    /// Every call needs a valid token.
    Required,
}

impl AuthMode {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        }
    }

    /// Parses `off`, `optional` or `required`.
    pub fn parse(s: &str) -> Result<AuthMode, String> {
        match s {
            "off" => Ok(AuthMode::Off),
            "optional" => Ok(AuthMode::Optional),
            "required" => Ok(AuthMode::Required),
            _ => Err(format!(
                "unknown auth mode {s:?}: use off, optional or required"
            )),
        }
    }
}

/// What an agent may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Make tool calls.
    Agent,
    /// Make tool calls, and list, approve and reject pending calls.
    Operator,
}

impl Role {
    /// The name in the file and in `agent list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
        }
    }
}

/// A caller whose token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its name.
    pub agent: Agent,
    /// What it may do.
    pub role: Role,
}

/// Why a call was refused before any policy saw it (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required.
    #[error(
        "a bearer token is required: send Authorization: Bearer <token> (`autonomy agent add NAME` makes one)"
    )]
    Missing,
    /// A token that matches no agent (unknown, revoked or mistyped).
    #[error("the bearer token is not valid (unknown or revoked)")]
    Invalid,
    /// An Authorization header that is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    Malformed,
    /// A valid token without the operator role, where one is needed.
    #[error("this needs an operator token (`autonomy agent add NAME --operator`)")]
    NotOperator,
}

#[derive(Clone)]
struct Key {
    hash: [u8; 32],
    identity: Identity,
}

/// Checks tokens. Holds the agents file's hashes (reloaded when the file changes) and the
/// tokens the runtime made itself (`run`'s one-run token, the local operator token).
pub struct Authenticator {
    mode: AuthMode,
    file: Option<PathBuf>,
    keys: ArcSwap<Vec<Key>>,
    /// Tokens that live only as long as this process.
    own: Vec<Key>,
    loaded: std::sync::Mutex<Option<FileStamp>>,
}

/// What identifies one version of the agents file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

impl Authenticator {
    /// Reads the agents file at `file` (if any) for a runtime in `mode`.
    pub fn new(mode: AuthMode, file: Option<PathBuf>) -> Result<Authenticator, store::StoreError> {
        let a = Authenticator {
            mode,
            file,
            keys: ArcSwap::from_pointee(Vec::new()),
            own: Vec::new(),
            loaded: std::sync::Mutex::new(None),
        };
        a.reload()?;
        Ok(a)
    }

    /// Anyone may call, as `anonymous`: what a runtime without auth uses.
    pub fn off() -> Authenticator {
        Authenticator {
            mode: AuthMode::Off,
            file: None,
            keys: ArcSwap::from_pointee(Vec::new()),
            own: Vec::new(),
            loaded: std::sync::Mutex::new(None),
        }
    }

    /// Also accepts `token` as `identity`, for this process's life only (never written).
    pub fn with_token(mut self, token: &str, identity: Identity) -> Authenticator {
        self.own.push(Key {
            hash: store::token_hash(token),
            identity,
        });
        self
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// How many tokens are accepted (the file's and the process's own).
    pub fn token_count(&self) -> usize {
        self.keys.load().len() + self.own.len()
    }

    /// Re-reads the agents file if it changed since the last read. On a bad file the previous
    /// keys stay (a half-edited file must not lock everyone out, nor let anyone in).
    pub fn reload(&self) -> Result<(), store::StoreError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let now = stamp(path);
        if let Ok(last) = self.loaded.lock()
            && last.is_some()
            && *last == now
        {
            return Ok(());
        }
        let entries = store::load(path)?;
        let keys = entries
            .into_iter()
            .filter_map(|e| {
                Some(Key {
                    hash: store::parse_hash(&e.token_sha256)?,
                    identity: Identity {
                        agent: Agent::new(e.name),
                        role: e.role,
                    },
                })
            })
            .collect();
        self.keys.store(Arc::new(keys));
        if let Ok(mut last) = self.loaded.lock() {
            *last = now;
        }
        Ok(())
    }

    /// The identity a token stands for. Every stored hash is compared, in constant time each,
    /// whatever matches, so the time taken says nothing about which (if any) matched.
    pub fn lookup(&self, token: &str) -> Option<Identity> {
        let h = store::token_hash(token);
        let keys = self.keys.load();
        let mut found: Option<&Identity> = None;
        for k in keys.iter().chain(self.own.iter()) {
            let eq: bool = k.hash.ct_eq(&h).into();
            if eq && found.is_none() {
                found = Some(&k.identity);
            }
        }
        found.cloned()
    }

    /// Who is calling, from the `Authorization` header value (if any), under this mode:
    /// `Ok(None)` is `anonymous`.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Identity>, AuthError> {
        if self.mode == AuthMode::Off {
            return Ok(None);
        }
        match authorization {
            None if self.mode == AuthMode::Required => Err(AuthError::Missing),
            None => Ok(None),
            Some(h) => {
                let token = bearer(h).ok_or(AuthError::Malformed)?;
                self.lookup(token).map(Some).ok_or(AuthError::Invalid)
            }
        }
    }

    /// An operator, from the `Authorization` header value, whatever the mode: approving and
    /// rejecting always need an operator token.
    pub fn operator(&self, authorization: Option<&[u8]>) -> Result<Identity, AuthError> {
        let h = authorization.ok_or(AuthError::Missing)?;
        let token = bearer(h).ok_or(AuthError::Malformed)?;
        let id = self.lookup(token).ok_or(AuthError::Invalid)?;
        if id.role == Role::Operator {
            Ok(id)
        } else {
            Err(AuthError::NotOperator)
        }
    }

    /// Re-reads the agents file every [`RELOAD_EVERY`] while the returned task runs.
    pub fn spawn_reloader(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.file.as_ref()?;
        let me = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned = false;
            loop {
                tick.tick().await;
                let Some(a) = me.upgrade() else { return };
                let path = a.file.clone();
                let r = tokio::task::spawn_blocking(move || a.reload()).await;
                match r {
                    Ok(Err(e)) if !warned => {
                        tracing::warn!("agents file not reloaded, the previous tokens stay: {e}");
                        warned = true;
                    }
                    Ok(Ok(())) => warned = false,
                    _ => {}
                }
                drop(path);
            }
        }))
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(h: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(h).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty() && t.len() <= 256).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_decide_what_a_missing_or_bad_token_means() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agents.json");
        let tok = store::add(&path, "alice", Role::Agent).unwrap();
        let hdr = format!("Bearer {tok}");
        let req = Authenticator::new(AuthMode::Required, Some(path.clone())).unwrap();
        assert_eq!(req.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            req.authenticate(Some(b"Bearer aut_nope")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            req.authenticate(Some(b"Basic abc")),
            Err(AuthError::Malformed)
        );
        let id = req.authenticate(Some(hdr.as_bytes())).unwrap().unwrap();
        assert_eq!(id.agent.as_str(), "alice");
        assert_eq!(
            req.authenticate(Some(format!("bearer  {tok} ").as_bytes()))
                .unwrap()
                .unwrap()
                .agent
                .as_str(),
            "alice"
        );
        let opt = Authenticator::new(AuthMode::Optional, Some(path.clone())).unwrap();
        assert_eq!(opt.authenticate(None), Ok(None));
        assert_eq!(
            opt.authenticate(Some(b"Bearer aut_nope")),
            Err(AuthError::Invalid)
        );
        let off = Authenticator::new(AuthMode::Off, Some(path.clone())).unwrap();
        assert_eq!(off.authenticate(Some(b"Bearer aut_nope")), Ok(None));
        // Approvals need an operator whatever the mode.
        assert_eq!(
            off.operator(Some(hdr.as_bytes())),
            Err(AuthError::NotOperator)
        );
        assert_eq!(off.operator(None), Err(AuthError::Missing));
    }

    #[test]
    fn a_revoked_token_stops_working_on_reload_and_a_bad_file_keeps_the_old_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agents.json");
        let tok = store::add(&path, "alice", Role::Operator).unwrap();
        let a = Authenticator::new(AuthMode::Required, Some(path.clone())).unwrap();
        assert!(a.lookup(&tok).is_some());
        let own = Authenticator::off().with_token(
            "aut_x",
            Identity {
                agent: Agent::new(RUN_AGENT),
                role: Role::Agent,
            },
        );
        assert_eq!(own.lookup("aut_x").unwrap().agent.as_str(), RUN_AGENT);
        store::revoke(&path, "alice").unwrap();
        a.reload().unwrap();
        assert!(a.lookup(&tok).is_none());
        let tok2 = store::add(&path, "bob", Role::Agent).unwrap();
        a.reload().unwrap();
        assert!(a.lookup(&tok2).is_some());
        std::fs::write(&path, "garbage").unwrap();
        assert!(a.reload().is_err());
        assert!(a.lookup(&tok2).is_some());
    }
}
