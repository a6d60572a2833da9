//! weft's benchmarks. `benches/` holds the criterion micro-benchmarks of
//! the sans-IO cores (`cargo bench -p weft-bench`).
