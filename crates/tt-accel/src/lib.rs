//! # tt-accel
//!
//! Course module 16: making the same math fast on this CPU, one measured step at a time.
//!
//! - [`amx`]: whether the matrix engine (Intel AMX) can run here — CPUID, XCR0, Linux's
//!   per-process permission — for the int8 tile kernel in tt-quant.
//! - [`caches`]: the cache sizes (L1d, L2, L3) read at run time, which the GEMM blocks follow.
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
//! - [`team`]: the process's one pool of compute threads (sized from the machine, `TT_THREADS`
//!   or `--threads`), with sub-microsecond hand-off of claimed chunks, to split one decode-step
//!   projection, a prefill or a batch across cores without collapsing when a core is busy.
//!
//! What it deliberately does not do: own a model, a decoder or a training loop; quantize
//! (tt-quant) or prune (tt-compress). All `unsafe` and `#[target_feature]` code of the f32 kernels
//! lives here, each block with a `// SAFETY:` note naming its invariant. The sizes those notes rely
//! on are validated once per kernel family, before any pointer is formed, with the
//! overflow-checked arithmetic of one private module (`bounds`): whatever a safe call's
//! arguments, it computes, returns an error or panics with a message — it never reads or writes
//! out of bounds.
//!
//! The main use: pack a model's linear layers once, then run it unchanged — the same function,
//! a faster kernel (checked here against the dense layers it replaced).
//!
//! ```
//! use tt_tensor::nn::{Linear, Relu, Sequential};
//! use tt_tensor::{no_grad, Module, Tensor};
//! let mut mlp = Sequential::new().layer(Linear::new(64, 128, true, 0)).layer(Relu).layer(Linear::new(128, 10, true, 1));
//! let x = Tensor::from_vec((0..64).map(|i| i as f32 / 64.0).collect(), &[1, 64])?;
//! let dense = no_grad(|| mlp.forward(&x))?.to_vec();
//! assert_eq!(tt_accel::packed::pack_linears(&mut mlp)?, 2);
//! let packed = no_grad(|| mlp.forward(&x))?.to_vec();
//! // Only the summation order differs: f32 rounding, far below the values' size.
//! assert!(dense.iter().zip(&packed).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + a.abs())));
//! # Ok::<(), tt_tensor::TensorError>(())
//! ```

pub mod amx;
mod bounds;
pub mod caches;
pub mod dispatch;
pub mod fused;
pub mod gemm;
pub mod packed;
pub mod sparse;
pub mod team;

pub use dispatch::{detected, level, with_level, Level};
