//! Criterion micro-benchmarks of Volley's hot paths live in `benches/`.
