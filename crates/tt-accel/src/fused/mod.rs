//! Fused row kernels: layer norm, softmax, bias + GELU and one-query decode attention, each
//! written once per dispatch level (AVX-512F, AVX2 + FMA, scalar) beside the unfused chain of
//! `tt_tensor::kernels` calls it replaces ([`unfused`]).
//!
//! # What is fused, and what it saves
//!
//! "Pass" below means one sweep over the row (or, for attention, over the `slots`-long score
//! buffer). Every unfused pass re-reads data the previous pass just wrote; a fused kernel keeps
//! the intermediate in registers instead.
//!
//! | kernel | unfused chain | its passes | fused | its passes |
//! |---|---|---|---|---|
//! | [`layer_norm`] | `layer_norm_row`: mean, then variance, then normalize | read x ×3, γ, β; write out | Σx and Σx² together, then normalize | read x ×2, γ, β; write out |
//! | [`softmax`](fn@softmax) | `softmax_row`: max, then exp + sum (writes e), then scale | read ×3, write ×2 | online max and sum (running max `m`, sum `s` rescaled when `m` grows), then `exp(x − m)/s` | read ×2, write ×1 |
//! | [`bias_gelu`] | `y += b` pass, then `gelu_tanh` pass | read y ×2, write y ×2 | bias added to the value in a register, GELU applied, stored once | read y ×1, write y ×1 |
//! | [`decode_attention`] | `attention_head` with n = 1: scores `q·kⱼ` into a `slots` buffer, softmax over it (3 passes), `P·V` | K and V once, the score buffer written 3× and read 4× | one pass over the cache: per block of keys, scores in registers, online softmax, `out` rescaled and accumulated | K and V once, no score buffer |
//!
//! Honest accounting: at the model's sizes every row fits in L1, so the saved passes are L1
//! traffic, and most of the speed comes from doing the surviving passes in SIMD (the reference
//! kernels' sequential `f32` sums cannot be vectorized without reordering them, and their `exp`
//! runs one lane at a time). Fusion is what makes that SIMD pay: the online softmax needs no
//! stored exponentials, and decode attention streams K and V once with no buffer whose size
//! grows with the context. The converse holds too: at the scalar level the online softmax
//! computes each `exp` twice (once for the sum, once for the output) and is no faster than the
//! unfused chain; it is there for correctness on any CPU, not for speed.
//!
//! # Numerics (and the tolerances the tests use)
//!
//! - **Layer norm** accumulates Σx and Σx² in **f64** lanes in one pass; `var = Σx²/n − mean²`.
//!   The squares of f32 values are exact in f64 and a row of ≤ 4096 terms sums with relative
//!   error ≤ 4096·2⁻⁵³ ≈ 5e-13, so even the cancellation in `E[x²] − mean²` (which amplifies
//!   that error by `1 + mean²/var`) leaves < 1e-6 for any row with `|mean| ≤ 1000·std`. An
//!   all-f32 one-pass sum could lose `(1 + mean²/var)·n·2⁻²⁴` of the variance (fine for
//!   zero-mean O(1) rows, not for offset ones); Welford would be exact enough but
//!   needs a division per element and a merge per lane. Converting to f64 costs a few
//!   instructions per 16 values and keeps this kernel at least as accurate as the two-pass
//!   f32 reference. Agreement with the reference: 2e-6 at n ≤ 512 (the reference's own
//!   sequential f32 sums drift like √n ulp).
//! - **Exp** ([`exp_fast`]'s range reduction and degree-6 polynomial, vectorized): the same
//!   constants, the same clamping to `[−87.33, 88.72]`, the same `+∞`/`0` outside it and NaN
//!   propagation; `n` is rounded by the same `1.5·2²³` trick, so only the polynomial's FMA
//!   rounding differs — a few ulp (≤ 3e-7 relative), tested directly.
//! - **Softmax** and **attention** sum in a different order (per lane, per block, rescaled);
//!   softmax results agree with an f64 softmax to 1.5e-6 relative (`softmax_row` itself drifts
//!   by ~√n ulp), attention with `attention_head` to 2e-6 absolute (outputs are convex
//!   combinations of V rows).
//!
//! # Dispatch and `unsafe`
//!
//! Each public kernel has a dispatching form (`softmax(..)`, level from [`dispatch::level`]) and
//! an `_at(level, ..)` form that lets a caller hoist the level out of a loop (and tests force
//! each path). The requested level is clamped to [`dispatch::level`], so an `#[target_feature]`
//! function is never called on a CPU that lacks the feature. The unsafe code is of two kinds,
//! each block with a `// SAFETY:` note: calling a `#[target_feature]` function (sound because
//! of that clamp), and raw SIMD loads and stores (sound because the index is checked against
//! the slice length; partial vectors use masked loads and stores, which touch only the enabled
//! lanes).
//!
//! # Layout
//!
//! One file per kernel family: its public entry points and argument checks, then its scalar,
//! AVX-512F and AVX2 + FMA forms side by side. `norm` ([`layer_norm`]), `softmax`
//! ([`softmax`](fn@softmax)), `gelu` ([`bias_gelu`], [`gelu`](fn@gelu)), `attention` (decode
//! attention over f32 and int8 caches, one-pass and two-pass), `heads` (attention split by heads
//! across the team, for [`row_kernels_threaded`]); `simd` holds what the families share (the
//! vector `exp`, lane masks and sums) and [`unfused`] the references. The decoder's table,
//! [`row_kernels`], holds layer norm, GELU, softmax and the two-pass decode attention (f32 and
//! int8); [`bias_gelu`] and the one-pass [`decode_attention`] are not in it.
//!
//! [`exp_fast`]: tt_tensor::kernels::exp_fast
//! [`dispatch::level`]: crate::dispatch::level

mod attention;
mod gelu;
mod heads;
mod norm;
mod simd;
mod softmax;
pub mod unfused;

use heads::{attention_heads_on_team, prefill_heads_on_team};
use tt_tensor::TensorError;

pub use attention::{
    decode_attention, decode_attention_2pass, decode_attention_2pass_at, decode_attention_at, decode_attention_q8,
    decode_attention_q8_2pass, decode_attention_q8_2pass_at,
};
pub use gelu::{bias_gelu, bias_gelu_at, gelu, gelu_at};
pub use norm::{layer_norm, layer_norm_at};
#[doc(hidden)]
pub use simd::exp_at;
pub use softmax::{softmax, softmax_at};

/// The fused kernels as the decoder's row-kernel table (`CachedGpt::set_row_kernels`). Each
/// call dispatches at the calling thread's level. The decoder passes rows of the widths it
/// validated when it was built, so the kernels' length checks cannot fail there. Called with
/// inconsistent sizes by anyone else, a table function panics naming the problem (its signature
/// has no error channel); it never reads or writes out of bounds.
pub fn row_kernels() -> tt_tensor::kernels::RowKernels {
    tt_tensor::kernels::RowKernels {
        name: "fused",
        layer_norm: |x, g, b, eps, out| {
            // Impossible by construction in the decoder (equal widths); reported loudly if not.
            layer_norm(x, g, b, eps, out).expect("layer norm row widths agree");
        },
        gelu,
        softmax: |row| {
            // The decoder passes non-empty probability rows; reported loudly if not.
            softmax(row).expect("a softmax row is not empty");
        },
        decode_attention: |q, keys, values, _hd, scale, scores, out| {
            // As above: the cache's rows are head_dim wide, out is one head, and the decoder's
            // scratch row holds every slot.
            decode_attention_2pass(q, keys, values, scale, scores, out).expect("attention head widths agree");
        },
        decode_attention_heads: None,
        decode_attention_q8: |q, kv, scale, scores, out| {
            // As above.
            decode_attention_q8_2pass(q, kv, scale, scores, out).expect("attention head widths agree");
        },
        prefill_attention_heads: None,
    }
}

/// [`row_kernels`] with one-query attention split by heads across [`crate::team::global`]'s
/// members (one hand-off per layer instead of per head). Each head is computed by one member
/// exactly as [`decode_attention_2pass`] would, so results equal the one-thread table's bit for
/// bit. Inconsistent sizes panic as in [`row_kernels`], on the calling thread, before any member
/// starts.
pub fn row_kernels_threaded() -> tt_tensor::kernels::RowKernels {
    tt_tensor::kernels::RowKernels {
        name: "fused-threaded",
        decode_attention_heads: Some(attention_heads_on_team),
        prefill_attention_heads: Some(prefill_heads_on_team),
        ..row_kernels()
    }
}

// Error constructors shared by every family's checks (the fused and unfused forms alike).

fn mismatch(op: &'static str, lhs: usize, rhs: usize) -> TensorError {
    TensorError::ShapeMismatch { op, lhs: vec![lhs], rhs: vec![rhs] }
}

fn invalid_shape(op: &'static str, shape: &[usize], reason: &str) -> TensorError {
    TensorError::InvalidShape { op, shape: shape.to_vec(), reason: reason.into() }
}
