//! weft's benchmarks. `benches/` holds the criterion micro-benchmarks of
//! the sans-IO cores (`cargo bench -p weft-bench`); the `weft-bench` binary
//! (`src/main.rs` and its modules) is the end-to-end harness.

// A driver crate: it reads clocks and the OS's randomness (clippy.toml).
#![allow(clippy::disallowed_methods)]
