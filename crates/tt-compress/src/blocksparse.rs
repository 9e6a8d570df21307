//! Block-sparse weights in 16×1 blocks: [`BlockSparseF32`], a `Projection` whose kernel skips
//! all-zero blocks a SIMD vector at a time (AVX-512, AVX2, scalar; dispatched at run time).
//!
//! The format and its kernels live in tt-accel (`tt_accel::sparse`) with the other f32 kernels —
//! that crate holds the `unsafe` and `#[target_feature]` code of the f32 kernels — and are
//! re-exported here beside the pruning that produces blocks ([`crate::prune::block_mask`],
//! [`crate::prune::Pruning::block_magnitude`]). See `tt_accel::sparse` for the layout, the
//! summation order and the byte count.

pub use tt_accel::sparse::{BlockSparseF32, BLOCK, SPLIT};
