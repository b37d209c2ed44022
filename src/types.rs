//! Small typed values with rules: sequence numbers, audit ids, policy refs, sources, tool kinds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A WAL sequence number: contiguous from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

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

/// Which front end a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `POST /v1/tool`.
    Http,
    /// The `/autonomy/tool` ROS 2 service.
    Ros2,
    /// The `run ros2.launch` gate.
    Launch,
}

impl Source {
    /// The wire name used in the policy input and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Ros2 => "ros2",
            Source::Launch => "launch",
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The action may proceed.
    Allow,
    /// The action must not happen.
    Deny,
}

impl Decision {
    /// The wire name (`allow` / `deny`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
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
