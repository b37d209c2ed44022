//! Small typed values with rules: sequence numbers, audit ids, policy refs, sources, tool kinds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A WAL sequence number: contiguous from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl PartialEq<u64> for Seq {
    fn eq(&self, other: &u64) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The identifier of one decision, shared by every WAL record about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuditId(String);

impl AuditId {
    /// A fresh, time-ordered id (UUIDv7), so ids sort roughly by creation time.
    pub fn new() -> Self {
        AuditId(uuid::Uuid::now_v7().to_string())
    }

    /// Wraps an id read back from a record or a command line.
    pub fn from_string(s: String) -> Self {
        AuditId(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AuditId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names the policy that produced a decision: `embedded:demo`, `builtin:deny-all`, or `<name>@<version>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PolicyRef(String);

impl PolicyRef {
    /// Wraps a reference string.
    pub fn new(s: impl Into<String>) -> Self {
        PolicyRef(s.into())
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which front end a call came through, as policies (`input.source`) and records see it.
///
/// A name, not a closed list: each front end declares its own (`http::SOURCE`,
/// `ros::SOURCE`, `launch::SOURCE`), so adding one does not touch this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(&'static str);

impl Source {
    /// A front end's name: 1–32 lower-case ASCII letters, digits, `_` or `-` (checked when
    /// the constant is built, so a bad name does not compile).
    pub const fn new(name: &'static str) -> Source {
        let b = name.as_bytes();
        assert!(
            !b.is_empty() && b.len() <= 32,
            "a source name has 1-32 characters"
        );
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-',
                "a source name is lower-case ASCII letters, digits, '_' and '-'"
            );
            i += 1;
        }
        Source(name)
    }

    /// The wire name used in the policy input and in records.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Allow or deny; in records, also downgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The action may proceed.
    Allow,
    /// The action must not happen.
    Deny,
    /// The action proceeds as the policy's `patch` changed it (a decision record's value; the
    /// caller's answer says `allow` with `downgraded: true`).
    Downgrade,
}

impl Decision {
    /// The wire name (`allow` / `deny` / `downgrade`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Downgrade => "downgrade",
        }
    }
}

/// Longest tool kind we accept; longer is a malformed request, not a policy question.
pub const MAX_KIND_LEN: usize = 256;

/// A tool kind such as `tool.echo`: 1–256 characters from `[A-Za-z0-9._/-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ToolKind(String);

/// Why a string is not a valid tool kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolKindError {
    /// Empty string.
    #[error("`kind` must not be empty")]
    Empty,
    /// Over [`MAX_KIND_LEN`].
    #[error("`kind` is longer than {MAX_KIND_LEN} characters")]
    TooLong,
    /// A character outside the allowed set.
    #[error("`kind` may only contain letters, digits, '.', '_', '-' and '/' (found {0:?})")]
    BadChar(char),
}

impl ToolKind {
    /// Validates and wraps a kind.
    pub fn parse(s: &str) -> Result<Self, ToolKindError> {
        if s.is_empty() {
            return Err(ToolKindError::Empty);
        }
        if s.len() > MAX_KIND_LEN {
            return Err(ToolKindError::TooLong);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        {
            return Err(ToolKindError::BadChar(c));
        }
        Ok(ToolKind(s.to_string()))
    }

    /// The kind as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_kind_rules() {
        assert!(ToolKind::parse("tool.echo").is_ok());
        assert!(ToolKind::parse("tool.ros2.launch").is_ok());
        assert_eq!(ToolKind::parse(""), Err(ToolKindError::Empty));
        assert_eq!(ToolKind::parse("a b"), Err(ToolKindError::BadChar(' ')));
        assert_eq!(
            ToolKind::parse(&"a".repeat(257)),
            Err(ToolKindError::TooLong)
        );
    }

    #[test]
    fn audit_ids_are_unique() {
        assert_ne!(AuditId::new(), AuditId::new());
    }
}

/// Who made a call, as policies (`input.agent`) and records (`agent`) name it: a registered
/// agent's name (its bearer token), `anonymous` (no token where none is required), or a name a
/// front end gives its callers (`ros2:<client gid>`, `bridge:<topic>`, `run`). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Agent(std::sync::Arc<str>);

impl Agent {
    /// The caller without an identity.
    pub fn anonymous() -> Agent {
        static ANON: std::sync::LazyLock<Agent> =
            std::sync::LazyLock::new(|| Agent(std::sync::Arc::from(Agent::ANONYMOUS)));
        ANON.clone()
    }

    /// The name of the caller without an identity.
    pub const ANONYMOUS: &'static str = "anonymous";

    /// A name as given (front ends and the identity store check their own rules).
    pub fn new(name: impl Into<std::sync::Arc<str>>) -> Agent {
        Agent(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Agent {
    fn default() -> Self {
        Agent::anonymous()
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
