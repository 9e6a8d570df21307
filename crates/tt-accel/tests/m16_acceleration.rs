//! Module 16 — acceleration: every kernel at every dispatch level against its reference, on odd
//! sizes (1, 7, 17, 33, 129…), sizes that are not multiples of the tiles, and strided inputs; the
//! GEMM ladder's rungs against each other; the accelerated decoder against the reference decoder.
//!
//! Each part lives in its own file under `tests/m16/`.

#[path = "m16/common.rs"]
mod common;
#[path = "m16/decoder.rs"]
mod decoder;
#[path = "m16/dispatch.rs"]
mod dispatch;
#[path = "m16/fused.rs"]
mod fused;
#[path = "m16/gemm.rs"]
mod gemm;
#[path = "m16/hostile.rs"]
mod hostile;
#[path = "m16/packed.rs"]
mod packed;
#[path = "m16/team.rs"]
mod team;
