//! Shared pieces of the benchmarks (`autonomy-bench`, `autonomy-wal-bench`, `autonomy-bridge-bench`).

pub mod external;
pub mod fsync;
