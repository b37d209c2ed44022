//! Shared pieces of the benchmarks (`autonomy-bench`, `autonomy-wal-bench`).

pub mod fsync;
