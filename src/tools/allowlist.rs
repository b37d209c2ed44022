//! The `tool.http_get` endpoint allowlist (`--allowed-domains`).
//! STUB: replaced by the full implementation.

/// A parsed allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<String>,
}

/// A bad allowlist entry.
#[derive(Debug, thiserror::Error)]
#[error("bad --allowed-domains entry {entry:?}: {why}")]
pub struct AllowlistError {
    /// The entry.
    pub entry: String,
    /// Why.
    pub why: String,
}

impl Allowlist {
    /// No entries: every `http_get` is refused.
    pub fn empty() -> Self {
        Allowlist::default()
    }

    /// Parses a comma-separated list of `host`, `host:port` or URLs.
    pub fn parse(list: &str) -> Result<Self, AllowlistError> {
        Ok(Allowlist {
            entries: list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        })
    }

    /// The entries as written, for the policy input.
    pub fn entries(&self) -> Vec<String> {
        self.entries.clone()
    }
}
