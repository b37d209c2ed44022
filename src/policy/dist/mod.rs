//! Policy distribution: getting a checked policy bundle onto this machine and into force.
//!
//! - [`bundle`]: the bundle format: read with limits, built, hashed, version-checked.
//! - [`file`]: bounded reads of regular files (bundles, policy files, slot metadata).
//! - [`store`]: the on-disk store (`current` and `lkg` slots, atomic updates).
//! - [`oci`]: push and pull through an OCI registry.
//! - [`resolve`]: what `--policy REF` names.
//! - [`watch`]: hot reload of the store's current slot into the active policy.

pub mod bundle;
pub mod file;
pub mod oci;
pub mod resolve;
pub mod store;
pub mod watch;
