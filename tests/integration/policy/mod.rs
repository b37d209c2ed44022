//! Policy bundles, the policy store, `--policy REF` and OCI distribution.

mod bundles;
mod errors;
