//! Calls waiting for a person: a policy's `approval` rule parked them (recorded as
//! `approval.requested`); an operator approves or rejects each (`autonomy approve|reject`,
//! `POST /v1/approvals/{audit_id}`), or its time runs out. The gate waits on the answer; this
//! registry only matches answers to waiting calls, and bounds how many may wait.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::gate::ToolCall;
use crate::types::AuditId;

/// Most calls waiting at once; more are denied at once.
pub const MAX_PENDING: usize = 1024;
/// How many decided ids are remembered, so a second answer is told "already decided".
const REMEMBER_DECIDED: usize = 4096;
/// Longest operator note kept.
pub const MAX_NOTE: usize = 1024;

/// A person's (or the clock's) answer to a waiting call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Approved (the tool runs) or not.
    pub approve: bool,
    /// Who: the operator's agent name, or `timeout`, `shutdown`, `caller-gone`.
    pub by: String,
    /// Their note.
    pub note: Option<String>,
}

/// What an operator sees of a waiting call.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PendingCall {
    /// The call's id.
    pub audit_id: String,
    /// Its kind.
    pub kind: String,
    /// Its params.
    pub params: Map<String, Value>,
    /// Who asked.
    pub agent: String,
    /// Through which front end.
    pub source: String,
    /// The policy's `approval_reason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was parked (RFC 3339).
    pub requested_at: String,
    /// When it is denied unless decided (RFC 3339).
    pub expires_at: String,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No call with that id waits (never did, or it was forgotten).
    #[error("no call waits for approval under audit_id {0}")]
    NotFound(String),
    /// It was decided already.
    #[error("audit_id {0} was already decided ({1})")]
    Decided(String, String),
}

/// Too many calls wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_PENDING} calls already wait for approval")]
pub struct Full;

struct Waiting {
    info: PendingCall,
    tx: oneshot::Sender<Resolution>,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<String, Waiting>,
    decided: VecDeque<(String, String)>,
    closed: bool,
}

/// The calls that wait for approval.
#[derive(Default)]
pub struct Approvals {
    inner: Mutex<Inner>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Approvals {
    /// No calls waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parks a call until [`Approvals::resolve`] or the caller gives up (drops the receiver).
    pub fn park(
        &self,
        audit_id: &AuditId,
        call: &ToolCall,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<Resolution>, Full> {
        let now = SystemTime::now();
        let (tx, rx) = oneshot::channel();
        let mut g = self.inner.lock().map_err(|_| Full)?;
        if g.closed || g.waiting.len() >= MAX_PENDING {
            return Err(Full);
        }
        g.waiting.insert(
            audit_id.as_str().to_string(),
            Waiting {
                info: PendingCall {
                    audit_id: audit_id.as_str().to_string(),
                    kind: call.kind.as_str().to_string(),
                    params: call.params.clone(),
                    agent: call.agent.as_str().to_string(),
                    source: call.source.as_str().to_string(),
                    reason: reason.map(str::to_string),
                    requested_at: rfc3339(now),
                    expires_at: rfc3339(now + timeout),
                },
                tx,
            },
        );
        Ok(rx)
    }

    /// Answers a waiting call.
    pub fn resolve(&self, audit_id: &str, r: Resolution) -> Result<(), ResolveError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| ResolveError::NotFound(audit_id.to_string()))?;
        let Some(w) = g.waiting.remove(audit_id) else {
            return Err(match g.decided.iter().find(|(id, _)| id == audit_id) {
                Some((_, how)) => ResolveError::Decided(audit_id.to_string(), how.clone()),
                None => ResolveError::NotFound(audit_id.to_string()),
            });
        };
        let how = format!(
            "{} by {}",
            if r.approve { "approved" } else { "rejected" },
            r.by
        );
        remember(&mut g, audit_id, how);
        // The caller may have gone; then its guard records that, and this answer is moot.
        let _ = w.tx.send(r);
        Ok(())
    }

    /// Forgets a call whose waiter stopped waiting (timed out or went away), with how it ended.
    pub fn forget(&self, audit_id: &str, how: &str) {
        if let Ok(mut g) = self.inner.lock()
            && g.waiting.remove(audit_id).is_some()
        {
            remember(&mut g, audit_id, how.to_string());
        }
    }

    /// The calls waiting now, oldest first.
    pub fn list(&self) -> Vec<PendingCall> {
        let mut v: Vec<PendingCall> = self
            .inner
            .lock()
            .map(|g| g.waiting.values().map(|w| w.info.clone()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.requested_at.cmp(&b.requested_at));
        v
    }

    /// How many calls wait.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.waiting.len()).unwrap_or(0)
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rejects every waiting call (by `shutdown`) and parks no more: the runtime is stopping.
    pub fn close(&self) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.closed = true;
        let waiting: Vec<(String, Waiting)> = g.waiting.drain().collect();
        for (id, w) in waiting {
            remember(&mut g, &id, "rejected by shutdown".into());
            let _ = w.tx.send(Resolution {
                approve: false,
                by: "shutdown".into(),
                note: Some("the runtime is stopping".into()),
            });
        }
    }
}

fn remember(g: &mut Inner, id: &str, how: String) {
    if g.decided.len() >= REMEMBER_DECIDED {
        g.decided.pop_front();
    }
    g.decided.push_back((id.to_string(), how));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Agent, Source, ToolKind};

    fn call() -> ToolCall {
        ToolCall {
            kind: ToolKind::parse("tool.echo").unwrap(),
            params: Map::new(),
            source: Source::new("http"),
            agent: Agent::anonymous(),
        }
    }

    #[tokio::test]
    async fn an_answer_reaches_its_call_once() {
        let a = Approvals::new();
        let id = AuditId::new();
        let rx = a
            .park(&id, &call(), Some("why"), Duration::from_secs(60))
            .unwrap();
        assert_eq!(a.list().len(), 1);
        assert_eq!(a.list()[0].reason.as_deref(), Some("why"));
        let r = Resolution {
            approve: true,
            by: "ops".into(),
            note: None,
        };
        a.resolve(id.as_str(), r.clone()).unwrap();
        assert_eq!(rx.await.unwrap(), r);
        assert!(matches!(
            a.resolve(id.as_str(), r.clone()),
            Err(ResolveError::Decided(..))
        ));
        assert!(matches!(
            a.resolve("nope", r),
            Err(ResolveError::NotFound(_))
        ));
        assert!(a.is_empty());
    }

    #[tokio::test]
    async fn close_rejects_all_and_parks_no_more() {
        let a = Approvals::new();
        let id = AuditId::new();
        let p = |id: &AuditId| a.park(id, &call(), None, Duration::from_secs(1));
        let rx = p(&id).unwrap();
        a.close();
        let r = rx.await.unwrap();
        assert!(!r.approve);
        assert_eq!(r.by, "shutdown");
        assert_eq!(p(&AuditId::new()).unwrap_err(), Full);
    }
}
