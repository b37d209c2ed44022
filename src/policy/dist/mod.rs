//! Policy distribution: getting a checked policy bundle onto this machine and into force.
//!
//! - [`bundle`]: the bundle format: read with limits, built, hashed, version-checked.
//! - [`file`](mod@file): bounded reads of regular files (bundles, policy files, slot metadata).
//! - [`store`]: the on-disk store (`current` and `lkg` slots, atomic updates).
//! - [`oci`]: push and pull through an OCI registry.
//! - [`resolve`]: what `--policy REF` names.
//! - [`rollout`]: new versions from a registry tag (`runtime start --policy-watch`).
//! - [`signing`]: signed bundles in OPA's format (`.signatures.json`): verify and sign.
//! - [`watch`]: hot reload of the store's current slot into the active policy, and rollout of
//!   new versions from a registry tag.

pub mod bundle;
pub mod file;
pub mod oci;
pub mod resolve;
pub mod rollout;
pub mod signing;
pub mod store;
pub mod watch;
