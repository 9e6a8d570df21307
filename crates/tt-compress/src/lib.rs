//! # tt-compress
//!
//! Course module 18: making models smaller for real — fewer non-zero weights that stay zero,
//! fewer rows and columns that dense kernels no longer touch, and sparse storage whose bytes are
//! counted with their indices.
//!
//! - [`sparsity`]: the fraction of zero weights of a tensor, a layer, a model (always a
//!   fraction in `[0, 1]`).
//! - [`prune`]: magnitude pruning per layer or globally (one threshold across layers), by an
//!   amount of the still-unpruned weights as `torch.nn.utils.prune` counts it, with persistent
//!   masks (applied in the forward pass through tt-tensor's `ForwardTransform`, and re-applied to
//!   the stored weights after each optimizer step) and `make_permanent`.
//! - [`structured`]: structured pruning that physically removes MLP hidden units, CNN channels
//!   (a conv's filters and its consumer's input channels or flattened columns) and GPT MLP units
//!   and attention heads (per-block widths and head counts in the config) — the producer's rows
//!   and the consumer's input columns — so dense kernels do less work.
//! - [`csr`]: a CSR `Projection` (f32 values, u32 column indices), tested equal to dense.
//! - [`blocksparse`]: tt-accel's `BlockSparseF32` (16×1 blocks, a SIMD kernel per level) and
//!   pruning that produces such blocks ([`prune::block_mask`], [`prune::Pruning::block_magnitude`]).
//! - [`lowrank`]: `W ≈ U·V` by truncated SVD (nalgebra's), as a two-stage `Projection`, with
//!   the rank chosen by energy kept or by a byte budget; trainable factors for fine-tuning after
//!   factoring (`Factored`, `WithFactors`), converted back to the projection after.
//! - [`distill`]: the distillation loss `α·T²·KL(p_T ‖ q_T) + (1 − α)·CE`.
//!
//! ```
//! use tt_compress::{prune, sparsity};
//! use tt_tensor::nn::{Linear, Sequential};
//! let mut m = Sequential::new().layer(Linear::new(8, 4, true, 0));
//! let mut p = prune::Pruning::default();
//! p.magnitude(&mut m, &["0"], 0.5).unwrap();       // half of layer "0"'s weights
//! assert_eq!(sparsity::model(&mut m).unwrap(), 0.5);
//! p.magnitude(&mut m, &["0"], 0.5).unwrap();       // half of the remaining half
//! assert_eq!(sparsity::model(&mut m).unwrap(), 0.75);
//! ```

pub mod blocksparse;
pub mod csr;
pub mod distill;
pub mod error;
pub mod lowrank;
pub mod prune;
pub mod sparsity;
pub mod structured;

pub use error::{CompressError, Result};
