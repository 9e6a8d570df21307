//! Module 19 — benchmarking: statistics on known data, early-stopping bounds against known
//! values, the Poisson schedule, each validity rule failing alone, a deterministic fake system
//! giving exactly the expected summary, the log format, accuracy runs touching every sample once,
//! and the ablation analysis on known effects.
//!
//! Each part lives in its own file under `tests/m19/`.

#[path = "m19/ablation.rs"]
mod ablation;
#[path = "m19/fakes.rs"]
mod fakes;
#[path = "m19/hostile.rs"]
mod hostile;
#[path = "m19/loadgen.rs"]
mod loadgen;
#[path = "m19/stats.rs"]
mod stats;
