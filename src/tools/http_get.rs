//! `tool.http_get`. STUB: replaced by the full implementation with the SSRF guard.

use serde_json::{Map, Value};

use super::{Allowlist, ToolOutcome};

/// Limits for `http_get`.
#[derive(Debug, Clone)]
pub struct HttpGetLimits {
    /// Total time for the request including redirects.
    pub timeout: std::time::Duration,
    /// Largest response body kept.
    pub max_body: usize,
    /// Most redirects followed.
    pub max_redirects: usize,
}

impl Default for HttpGetLimits {
    fn default() -> Self {
        HttpGetLimits {
            timeout: std::time::Duration::from_secs(10),
            max_body: 1024 * 1024,
            max_redirects: 5,
        }
    }
}

/// The `http_get` executor.
pub struct HttpGet {
    allowlist: Allowlist,
}

impl HttpGet {
    /// Creates the executor.
    pub fn new(allowlist: Allowlist, _limits: HttpGetLimits) -> Self {
        HttpGet { allowlist }
    }

    /// The allowlist in force.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// Runs one GET.
    pub async fn get(&self, _params: &Map<String, Value>) -> ToolOutcome {
        ToolOutcome::RuntimeDeny("http_get not implemented yet".into())
    }
}
