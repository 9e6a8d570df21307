//! # tt-accel
//!
//! Course module 16: making the same math fast on this CPU, one measured step at a time.
//!
//! - [`dispatch`]: run-time CPU feature detection (AVX-512F, AVX2+FMA, scalar), chosen once, with
//!   a way to force a lower level so tests run every path on one machine.
//! - [`gemm`]: the GEMM ladder — naive → loop-reordered → cache-blocked → packed panels with a
//!   register-blocked SIMD microkernel → multi-threaded — every rung tested equal to the naive one.
//! - [`fused`]: fused row kernels (layer norm, online softmax, bias + GELU, decode attention),
//!   each beside the unfused chain it replaces.
//! - [`packed`]: [`PackedF32`](packed::PackedF32), a `tt_tensor::Projection` whose weights are
//!   packed once for decode-shaped (few-row) products; installed through the seam
//!   (`map_linears`), it accelerates the existing decoder — there is no second decoder.
//! - [`sparse`]: [`BlockSparseF32`](sparse::BlockSparseF32), a block-sparse `Projection` in
//!   16×1 blocks (the packed panels minus their all-zero columns), for pruned weights
//!   (tt-compress prunes them; the kernel lives here with the other f32 kernels).
//! - [`team`]: persistent threads with sub-microsecond hand-off, to split one decode-step
//!   projection across cores.
//!
//! What it deliberately does not do: own a model, a decoder or a training loop; quantize
//! (tt-quant) or prune (tt-compress). All `unsafe` and `#[target_feature]` code of the f32 kernels
//! lives here, each block with a `// SAFETY:` note naming its invariant. The sizes those notes rely
//! on are validated once per kernel family, before any pointer is formed, with the
//! overflow-checked arithmetic of one private module (`bounds`): whatever a safe call's
//! arguments, it computes, returns an error or panics with a message — it never reads or writes
//! out of bounds.

mod bounds;
pub mod dispatch;
pub mod fused;
pub mod gemm;
pub mod packed;
pub mod sparse;
pub mod team;

pub use dispatch::{detected, level, with_level, Level};
