//! Rate limits: token buckets per agent × kind, from a limits document (`--limits FILE`, or the
//! `limits` key of a bundle's `data.json`). A call over its limit is denied before any policy
//! sees it, with how long to wait.
//!
//! The document: `{"limits": [{"agent": "*", "kind": "tool.http_get", "per_second": 2,
//! "burst": 5}, …]}`. `agent` and `kind` are an exact name, `*`, or a prefix ending in `*`
//! (`tool.ros2.*`). The first rule that matches a call is its rule; a call no rule matches is
//! not limited. Each (rule, agent, kind) has its own bucket of `burst` tokens, refilled at
//! `per_second` (or `per_minute`).

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::Value;

use crate::types::{Agent, ToolKind};

/// Most rules in one document.
pub const MAX_RULES: usize = 256;
/// Buckets kept per rule before idle ones are dropped (a full bucket is the same as none).
const MAX_KEYS: usize = 65_536;
/// Largest limits file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a limits document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits: {0}")]
pub struct LimitsError(pub String);

/// A name pattern: exact, `*`, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(s: &str, field: &str, i: usize) -> Result<Pattern, LimitsError> {
        if s.is_empty() || s.len() > 256 {
            return Err(LimitsError(format!(
                "limits[{i}].{field}: must be 1-256 characters"
            )));
        }
        Ok(match s.strip_suffix('*') {
            Some("") => Pattern::Any,
            Some(p) if !p.contains('*') => Pattern::Prefix(p.to_string()),
            Some(_) => {
                return Err(LimitsError(format!(
                    "limits[{i}].{field}: {s:?} may have one `*`, at the end"
                )));
            }
            None if s.contains('*') => {
                return Err(LimitsError(format!(
                    "limits[{i}].{field}: {s:?} may have one `*`, at the end"
                )));
            }
            None => Pattern::Exact(s.to_string()),
        })
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => s.starts_with(p.as_str()),
            Pattern::Exact(e) => s == e,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    #[serde(default = "any")]
    agent: String,
    #[serde(default = "any")]
    kind: String,
    per_second: Option<f64>,
    per_minute: Option<f64>,
    burst: Option<u32>,
}

fn any() -> String {
    "*".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    limits: Vec<Value>,
}

struct Rule {
    agent: Pattern,
    kind: Pattern,
    /// What the rule says, for messages.
    text: String,
    buckets: DefaultKeyedRateLimiter<(Agent, String)>,
}

/// A set of rate-limit rules with their buckets.
pub struct Limits {
    rules: Vec<Rule>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.text))
            .finish()
    }
}

/// A call over its limit: how long until a token is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The wait.
    pub retry_after: Duration,
}

impl Limits {
    /// The limits of a document `{"limits": [...]}`.
    pub fn from_json(v: &Value) -> Result<Limits, LimitsError> {
        let doc: Doc = serde_json::from_value(v.clone()).map_err(|e| {
            LimitsError(format!(
                "expected {{\"limits\": [{{\"agent\", \"kind\", \"per_second\", \"burst\"}}, ...]}}: {e}"
            ))
        })?;
        Self::from_rules(&doc.limits)
    }

    /// The limits of a rule list (a bundle's `data.json` key `limits`).
    pub fn from_rules(rules: &[Value]) -> Result<Limits, LimitsError> {
        if rules.len() > MAX_RULES {
            return Err(LimitsError(format!("more than {MAX_RULES} rules")));
        }
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let d: RuleDoc = serde_json::from_value(r.clone())
                .map_err(|e| LimitsError(format!("limits[{i}]: {e}")))?;
            let per_sec = match (d.per_second, d.per_minute) {
                (Some(s), None) => s,
                (None, Some(m)) => m / 60.0,
                _ => {
                    return Err(LimitsError(format!(
                        "limits[{i}]: give exactly one of per_second or per_minute"
                    )));
                }
            };
            if !per_sec.is_finite() || !(1.0 / 86_400.0..=1_000_000.0).contains(&per_sec) {
                return Err(LimitsError(format!(
                    "limits[{i}]: the rate must be between 1 per day and 1,000,000 per second"
                )));
            }
            let burst = match d.burst {
                Some(0) => {
                    return Err(LimitsError(format!(
                        "limits[{i}].burst: must be at least 1"
                    )));
                }
                Some(b) => b,
                None => per_sec.ceil().clamp(1.0, 1_000_000.0) as u32,
            };
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            let period = Duration::from_secs_f64(1.0 / per_sec);
            let quota = Quota::with_period(period)
                .ok_or_else(|| LimitsError(format!("limits[{i}]: the rate is too high")))?
                .allow_burst(burst);
            out.push(Rule {
                agent: Pattern::parse(&d.agent, "agent", i)?,
                kind: Pattern::parse(&d.kind, "kind", i)?,
                text: format!(
                    "agent {} kind {}: {per_sec}/s, burst {burst}",
                    d.agent, d.kind
                ),
                buckets: RateLimiter::dashmap(quota),
            });
        }
        Ok(Limits {
            rules: out,
            clock: DefaultClock::default(),
        })
    }

    /// Reads a limits file (JSON).
    pub fn load(path: &Path) -> Result<Limits, LimitsError> {
        let f = std::fs::File::open(path)
            .map_err(|e| LimitsError(format!("{}: {e}", path.display())))?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES + 1), &mut buf)
            .map_err(|e| LimitsError(format!("{}: {e}", path.display())))?;
        if buf.len() as u64 > MAX_FILE_BYTES {
            return Err(LimitsError(format!(
                "{}: larger than {MAX_FILE_BYTES} bytes",
                path.display()
            )));
        }
        let v: Value = serde_json::from_slice(&buf)
            .map_err(|e| LimitsError(format!("{}: not JSON: {e}", path.display())))?;
        Self::from_json(&v).map_err(|e| LimitsError(format!("{}: {}", path.display(), e.0)))
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Takes a token for this call from its rule's bucket, or says how long to wait.
    pub fn check(&self, agent: &Agent, kind: &ToolKind) -> Result<(), Limited> {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.agent.matches(agent.as_str()) && r.kind.matches(kind.as_str()))
        else {
            return Ok(());
        };
        if rule.buckets.len() >= MAX_KEYS {
            rule.buckets.retain_recent();
        }
        match rule
            .buckets
            .check_key(&(agent.clone(), kind.as_str().to_string()))
        {
            Ok(()) => Ok(()),
            Err(not_until) => Err(Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(s: &str) -> ToolKind {
        ToolKind::parse(s).unwrap()
    }

    #[test]
    fn the_first_matching_rule_limits_each_agent_and_kind_on_its_own() {
        let l = Limits::from_json(&json!({"limits": [
            {"agent": "alice", "kind": "tool.echo", "per_second": 1, "burst": 2},
            {"kind": "tool.ros2.*", "per_minute": 1},
        ]}))
        .unwrap();
        let alice = Agent::new("alice");
        let bob = Agent::new("bob");
        assert!(l.check(&alice, &kind("tool.echo")).is_ok());
        assert!(l.check(&alice, &kind("tool.echo")).is_ok());
        let e = l.check(&alice, &kind("tool.echo")).unwrap_err();
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_secs(1));
        // Another agent, another kind: not limited, or their own bucket.
        for _ in 0..10 {
            assert!(l.check(&bob, &kind("tool.echo")).is_ok());
        }
        assert!(l.check(&bob, &kind("tool.ros2.launch")).is_ok());
        let e = l.check(&bob, &kind("tool.ros2.launch")).unwrap_err();
        assert!(e.retry_after > Duration::from_secs(50));
        assert!(l.check(&alice, &kind("tool.ros2.launch")).is_ok());
    }

    #[test]
    fn bad_documents_name_the_field() {
        for (doc, want) in [
            (json!({"limits": [{"per_second": 0}]}), "between"),
            (
                json!({"limits": [{"per_second": 1, "per_minute": 1}]}),
                "exactly one",
            ),
            (json!({"limits": [{"per_second": 1, "burst": 0}]}), "burst"),
            (
                json!({"limits": [{"per_second": 1, "kind": "a*b"}]}),
                "kind",
            ),
            (
                json!({"limits": [{"per_second": 1, "rate": 3}]}),
                "unknown field",
            ),
            (json!({"rules": []}), "expected"),
        ] {
            let e = Limits::from_json(&doc).unwrap_err().to_string();
            assert!(e.contains(want), "{doc}: {e}");
        }
    }
}
