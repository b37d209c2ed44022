//! Hot reload: a task that polls the store's current slot and swaps the active policy.
//!
//! Every [`POLL`] it takes a fingerprint of the current slot (where `state` points, the bytes of
//! `meta.json`, the size and mtime of `bundle.tar.gz`). When the fingerprint changes it reads
//! the slot, checks it as `policy load` would (archive safety, hash, runtime version, compile,
//! entry point) and only then swaps it in with [`ActivePolicy::swap`], recording
//! `policy.activated`. A slot that fails any check never replaces the policy in memory: it is
//! recorded as `policy.rejected` (once per fingerprint) and the working policy keeps serving.
//! Calls already in evaluation hold their own `Arc` of the old policy and finish on it. With a
//! verification key, a slot whose bundle is not signed with it is such a slot.
//!
//! With a registry to watch ([`super::rollout`]) the same task also polls it and installs new
//! versions in the store, which this watcher then activates: one path into force for every
//! bundle, whichever way it reached the store.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::rollout::{self, RegistryWatch};
use super::signing::VerificationKey;
use super::store::{Slot, Store, StoreError};
use crate::policy::eval::{ActivePolicy, PolicyEvaluator};
use crate::record::{Activated, PolicyActivated, PolicyRejected, RecordBody, Rejected};
use crate::wal::Wal;

/// Poll interval.
pub const POLL: Duration = Duration::from_millis(500);

/// What to watch, and what the runtime started with.
#[derive(Debug, Clone)]
pub struct PolicyWatch {
    /// The store directory.
    pub store_dir: PathBuf,
    /// The fingerprint of the store when the starting policy was chosen (changes after it are
    /// picked up; `None` = pick up whatever current holds).
    pub initial: Option<String>,
    /// Hash of the bundle the runtime started with, if it came from a bundle.
    pub active_hash: Option<String>,
    /// Only bundles signed with this key are activated.
    pub key: Option<Arc<VerificationKey>>,
    /// A registry tag to roll new versions out from (`--policy-watch`).
    pub registry: Option<RegistryWatch>,
}

impl PolicyWatch {
    /// Watches `store_dir`, taking its fingerprint now.
    pub fn new(store_dir: PathBuf, active_hash: Option<String>) -> Self {
        let initial = fingerprint(&Store::new(&store_dir));
        PolicyWatch {
            store_dir,
            initial: Some(initial),
            active_hash,
            key: None,
            registry: None,
        }
    }
}

/// A cheap summary of the current slot that changes whenever it does.
pub fn fingerprint(store: &Store) -> String {
    use std::os::unix::fs::MetadataExt;
    let base = match store.generation() {
        Some(g) => g.join("current"),
        None => store.slot_dir(Slot::Current),
    };
    let gen_name = store
        .generation()
        .map(|g| g.display().to_string())
        .unwrap_or_default();
    let meta = super::file::read_capped(
        &base.join(super::store::META_FILE),
        super::store::MAX_META,
        super::file::FileKind::SlotMetadata,
    )
    .unwrap_or_default();
    let b = std::fs::metadata(base.join(super::store::BUNDLE_FILE))
        .map(|m| format!("{}:{}:{}", m.len(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default();
    use sha2::Digest;
    format!(
        "{gen_name}|{}|{b}",
        hex::encode(sha2::Sha256::digest(&meta))
    )
}

/// Starts the watcher task (and the registry poller, when there is a registry to watch); abort
/// the handle to stop both.
pub fn spawn(
    mut w: PolicyWatch,
    policy: Arc<ActivePolicy>,
    wal: Arc<Wal>,
) -> tokio::task::JoinHandle<()> {
    let registry = w.registry.take().map(|r| {
        rollout::run(
            r,
            Store::new(&w.store_dir),
            w.key.clone(),
            policy.clone(),
            wal.clone(),
        )
    });
    let store_loop = watch_store(w, policy, wal);
    tokio::spawn(async move {
        match registry {
            Some(r) => {
                tokio::join!(store_loop, r);
            }
            None => store_loop.await,
        }
    })
}

/// Polls the store's current slot and activates what changes there.
async fn watch_store(w: PolicyWatch, policy: Arc<ActivePolicy>, wal: Arc<Wal>) {
    let store = Store::new(&w.store_dir);
    let mut last = w.initial.clone();
    let mut active_hash = w.active_hash.clone();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = store.clone();
        let fp = fingerprint(&s);
        if last.as_deref() == Some(fp.as_str()) {
            continue;
        }
        let key = w.key.clone();
        let res = tokio::task::spawn_blocking(move || {
            let r = s
                .open_slot(Slot::Current, key.as_deref())
                .and_then(|o| match o {
                    None => Ok(None),
                    Some((meta, b)) => b
                        .compile()
                        .map(|p| Some((meta, b, p)))
                        .map_err(StoreError::from),
                });
            // Was the slot replaced while we read it? Then read again next tick.
            let stable = fingerprint(&s) == fp;
            (r, stable, fp)
        })
        .await;
        let Ok((r, stable, fp)) = res else { continue };
        if !stable {
            continue;
        }
        last = Some(fp);
        match r {
            Ok(None) => {}
            Ok(Some((meta, b, p))) => {
                if active_hash.as_deref() == Some(b.hash.as_str()) {
                    continue;
                }
                let policy_ref = p.policy_ref().as_str().to_string();
                let rec = PolicyActivated {
                    event: Activated,
                    hash: Cow::Borrowed(&b.hash),
                    name: Cow::Borrowed(&b.name),
                    policy_ref: Cow::Borrowed(&policy_ref),
                    source: Cow::Borrowed(&meta.source),
                    version: Cow::Borrowed(&b.version),
                };
                // Recorded first, so every decision under the new policy_ref follows it.
                append(&wal, &rec).await;
                policy.swap(Box::new(p));
                active_hash = Some(b.hash.clone());
                tracing::info!(target: crate::NOTICE,
                    "policy activated: {policy_ref} (from {})",
                    meta.source
                );
            }
            Err(e) => {
                let reason = e.to_string();
                let keep = policy.get().policy_ref().as_str().to_string();
                tracing::info!(target: crate::NOTICE,
                    "policy rejected: the current slot is not usable ({reason}); still serving {keep}"
                );
                let rec = PolicyRejected {
                    event: Rejected,
                    policy_ref: Some(Cow::Borrowed(&keep)),
                    reason: Cow::Borrowed(&reason),
                    slot: Some(Cow::Borrowed(Slot::Current.as_str())),
                    source: None,
                };
                append(&wal, &rec).await;
            }
        }
    }
}

/// Appends a `policy` record; a WAL that cannot take it is logged, and the watcher goes on.
pub(super) async fn append<B: RecordBody>(wal: &Arc<Wal>, body: &B) {
    if let Err(e) = crate::gate::record(wal, None, body).await {
        tracing::warn!("cannot record a policy event: {e}");
    }
}
