//! Rollout from a registry: `runtime start --policy-watch oci://HOST[:PORT]/NAME[:TAG]`.
//!
//! Every poll interval the daemon asks the registry for the digest of the manifest the tag points
//! at (a `HEAD`). When it differs from the last one handled, it pulls the bundle (media types,
//! size and digest checked as `policy pull` checks them), checks it as `policy load` does — its
//! signature first, when a verification key is set — and installs it in the store: the current
//! slot becomes lkg, the new bundle current, `policy.loaded` is recorded. The store watcher
//! ([`super::watch`]) then activates it (`policy.activated`) within its own poll, exactly as after
//! a `policy pull` on the command line.
//!
//! Nothing else changes anything: a bundle that fails a check is recorded once per manifest
//! digest as `policy.rejected` (with the reason and the `policy_ref` still serving) and never
//! reaches the store; a registry that cannot be reached (or no longer has the tag) is said once
//! when that starts and once when it ends, and the daemon keeps serving what it has.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use super::bundle;
use super::oci::{self, OciError, OciRef};
use super::signing::VerificationKey;
use super::store::{Loaded, Slot, Store, StoreError};
use super::watch::append;
use crate::policy::eval::ActivePolicy;
use crate::record::{PolicyLoaded, PolicyRejected, Rejected};
use crate::wal::Wal;

/// Default poll interval.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);
/// Longest wait for the registry to answer the digest question.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a whole pull (manifest and layer, at most 16 MiB).
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// What to watch.
#[derive(Debug, Clone)]
pub struct RegistryWatch {
    /// The tag.
    pub reference: OciRef,
    /// How often to ask for its digest.
    pub poll: Duration,
    /// Plain HTTP (loopback registries only).
    pub insecure: bool,
}

/// Why a pulled bundle did not go into the store.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The registry served something that is not a good policy artifact.
    #[error(transparent)]
    Artifact(OciError),
    /// The bundle is refused (signature, archive, manifest…).
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// The bundle does not compile.
    #[error(transparent)]
    Compile(#[from] crate::policy::eval::RegoPolicyError),
    /// The store could not take it.
    #[error("cannot install it in the policy store: {0}")]
    Store(#[from] StoreError),
}

/// Polls `w` until the task is aborted.
pub(super) async fn run(
    w: RegistryWatch,
    store: Store,
    key: Option<Arc<VerificationKey>>,
    policy: Arc<ActivePolicy>,
    wal: Arc<Wal>,
) {
    let r = &w.reference;
    let source = r.to_string();
    // The manifest digest last handled: installed, found installed already, or refused.
    let mut handled: Option<String> = None;
    let mut unreachable = false;
    let mut tick = tokio::time::interval(w.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let serving = || policy.get().policy_ref().as_str().to_string();
    loop {
        tick.tick().await;
        let digest =
            match tokio::time::timeout(DIGEST_TIMEOUT, oci::manifest_digest(r, w.insecure)).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    went_away(&mut unreachable, &source, &e.to_string(), &serving());
                    continue;
                }
                Err(_) => {
                    went_away(
                        &mut unreachable,
                        &source,
                        "no answer within 20 s",
                        &serving(),
                    );
                    continue;
                }
            };
        if unreachable {
            unreachable = false;
            tracing::info!(target: crate::NOTICE, "policy watch: {source} is available again");
        }
        if handled.as_deref() == Some(digest.as_str()) {
            continue;
        }
        let pulled = match tokio::time::timeout(PULL_TIMEOUT, oci::pull(r, w.insecure)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) if e.is_unreachable() => {
                went_away(&mut unreachable, &source, &e.to_string(), &serving());
                continue;
            }
            Ok(Err(e)) => Err(Refused::Artifact(e)),
            Err(_) => {
                went_away(
                    &mut unreachable,
                    &source,
                    "the pull took over 120 s",
                    &serving(),
                );
                continue;
            }
        };
        handled = Some(match &pulled {
            Ok(p) => p.manifest_digest.clone(),
            Err(_) => digest,
        });
        let outcome = match pulled {
            Err(e) => Err(e),
            Ok(p) => {
                let (s, key, src) = (store.clone(), key.clone(), source.clone());
                match tokio::task::spawn_blocking(move || {
                    install(&s, &p.bytes, key.as_deref(), &src)
                })
                .await
                {
                    Ok(r) => r,
                    // The blocking task panicked or was cancelled: try again next poll.
                    Err(_) => {
                        handled = None;
                        continue;
                    }
                }
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(l)) => {
                tracing::info!(target: crate::NOTICE,
                    "policy watch: pulled {} from {source} into the policy store",
                    l.meta.policy_ref
                );
                append(
                    &wal,
                    &PolicyLoaded {
                        event: crate::record::Loaded,
                        hash: Cow::Borrowed(&l.meta.hash),
                        name: Cow::Borrowed(&l.meta.name),
                        policy_ref: Cow::Borrowed(&l.meta.policy_ref),
                        source: Cow::Borrowed(&source),
                        version: Cow::Borrowed(&l.meta.version),
                    },
                )
                .await;
            }
            Err(e) => {
                let reason = e.to_string();
                let keep = serving();
                tracing::warn!(target: crate::NOTICE,
                    "policy watch: rejected the bundle at {source} ({reason}); still serving {keep}"
                );
                append(
                    &wal,
                    &PolicyRejected {
                        event: Rejected,
                        policy_ref: Some(Cow::Borrowed(&keep)),
                        reason: Cow::Borrowed(&reason),
                        slot: None,
                        source: Some(Cow::Borrowed(&source)),
                    },
                )
                .await;
            }
        }
    }
}

/// Says once that the registry cannot be reached (or has no such tag).
fn went_away(unreachable: &mut bool, source: &str, why: &str, serving: &str) {
    if !*unreachable {
        *unreachable = true;
        tracing::warn!(target: crate::NOTICE,
            "policy watch: {source} is unavailable ({why}); still serving {serving}, trying again every poll"
        );
    }
}

/// Checks a pulled bundle as `policy load` does and installs it as current; `None` when the
/// current slot already holds exactly these bytes from this source.
fn install(
    store: &Store,
    bytes: &[u8],
    key: Option<&VerificationKey>,
    source: &str,
) -> Result<Option<Loaded>, Refused> {
    if let Ok(Some(cur)) = store.read_slot(Slot::Current)
        && cur.meta.source == source
        && sha2::Sha256::digest(&cur.bytes) == sha2::Sha256::digest(bytes)
    {
        return Ok(None);
    }
    let b = bundle::read_bytes(bytes, key)?;
    b.compile()?;
    Ok(Some(store.install(bytes, &b, source)?))
}
