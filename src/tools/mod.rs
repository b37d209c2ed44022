//! Built-in tools: what the runtime executes after an allow.

pub mod allowlist;
pub mod http_get;
mod ssrf;

use serde_json::{Map, Value};

pub use allowlist::{Allowlist, AllowlistError};
pub use http_get::{HttpGet, HttpGetLimits};

use crate::types::ToolKind;

/// What executing (or refusing to execute) a tool produced.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutcome {
    /// The tool ran; its output.
    Output(Value),
    /// No built-in executor for this kind: the decision is the answer (the caller acts).
    DecisionOnly,
    /// The runtime layer refused after the policy allowed (e.g. endpoint not allowlisted).
    RuntimeDeny(String),
    /// The params cannot be used by this tool.
    BadParams(String),
    /// The tool ran but failed upstream (DNS, connect, timeout).
    Upstream(String),
}

/// The built-in tools and their configuration.
pub struct Tools {
    http_get: HttpGet,
}

impl Tools {
    /// Tools with the given `http_get` allowlist and limits.
    pub fn new(allowlist: Allowlist, limits: HttpGetLimits) -> Self {
        Tools {
            http_get: HttpGet::new(allowlist, limits),
        }
    }

    /// Executes an allowed call.
    pub async fn execute(&self, kind: &ToolKind, params: &Map<String, Value>) -> ToolOutcome {
        match kind.as_str() {
            "tool.echo" => echo(params),
            "tool.http_get" => self.http_get.get(params).await,
            _ => ToolOutcome::DecisionOnly,
        }
    }

    /// Whether this kind's tool accepts `params` (without running it): what a downgrade's
    /// patched params must pass. Kinds without a built-in tool accept any params.
    pub fn check(&self, kind: &ToolKind, params: &Map<String, Value>) -> Result<(), String> {
        match kind.as_str() {
            "tool.echo" => match echo(params) {
                ToolOutcome::BadParams(e) => Err(e),
                _ => Ok(()),
            },
            "tool.http_get" => http_get::parse_endpoint(params).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The `http_get` allowlist in force.
    pub fn allowlist(&self) -> &Allowlist {
        self.http_get.allowlist()
    }
}

/// `tool.echo`: `params.message` (string) comes back as the output.
fn echo(params: &Map<String, Value>) -> ToolOutcome {
    match params.get("message") {
        Some(Value::String(s)) => ToolOutcome::Output(Value::String(s.clone())),
        Some(_) => ToolOutcome::BadParams("tool.echo: params.message must be a string".into()),
        None => ToolOutcome::BadParams("tool.echo: params.message is required".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn echo_returns_message() {
        let p = json!({"message": "hi"});
        assert_eq!(
            echo(p.as_object().unwrap()),
            ToolOutcome::Output(json!("hi"))
        );
        let p = json!({"message": 3});
        assert!(matches!(
            echo(p.as_object().unwrap()),
            ToolOutcome::BadParams(_)
        ));
    }
}
