//! Module 18 — compression: sparsity on known matrices, exact pruning amounts, masks that survive
//! optimizer steps, structured pruning equal to the masked dense model, CSR equal to dense, the 16×1 block-sparse kernels equal to
//! dense at every dispatch level, block pruning.
//!
//! Each part lives in its own file under `tests/m18/`.

#[path = "m18/blocksparse.rs"]
mod blocksparse;
#[path = "m18/csr.rs"]
mod csr;
#[path = "m18/distill.rs"]
mod distill;
#[path = "m18/lowrank.rs"]
mod lowrank;
#[path = "m18/prune.rs"]
mod prune;
#[path = "m18/structured.rs"]
mod structured;
