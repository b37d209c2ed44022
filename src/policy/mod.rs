//! Policies: how one decides a tool call, and how it gets onto this machine.
//!
//! - [`eval`]: evaluation. The evaluator trait and its input and answer, Rego policies compiled
//!   and checked with regorus, the VM fast path, the embedded demo policy and the active policy.
//! - [`dist`]: distribution. Bundles (read with limits, built, hashed, version-checked), the
//!   on-disk store of slots, OCI push and pull, `--policy REF` resolution and hot reload.
//!
//! - [`patch`]: downgrades. A policy's `patch` applied to a call, and the check that the patched
//!   call is still one its tool (or a bridged topic's type) can take.
//!
//! Distribution depends on evaluation (a bundle is only accepted once it compiles); evaluation
//! knows nothing of bundles, stores or registries.

pub mod dist;
pub mod eval;
mod message;
pub mod patch;

pub use eval::{
    ActivePolicy, DEMO_REGO, DenyAll, PolicyEvaluator, PolicyInput, RegoPolicy, RegoPolicyError,
    RuleRef, Verdict, demo_policy,
};
