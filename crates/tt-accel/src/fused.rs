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
//! | [`softmax`] | `softmax_row`: max, then exp + sum (writes e), then scale | read ×3, write ×2 | online max and sum (running max `m`, sum `s` rescaled when `m` grows), then `exp(x − m)/s` | read ×2, write ×1 |
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

use crate::bounds::strided_len;
use crate::dispatch::{self, Level};
use tt_tensor::kernels::{exp_fast, HeadsJob, PrefillHeadsJob};
use tt_tensor::{Result, TensorError};

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Layer normalization of one row, `out = (x − mean)/√(var + eps)·γ + β`, returning
/// `(mean, 1/√(var + eps))` like [`tt_tensor::kernels::layer_norm_row`], at the dispatched level.
///
/// Fused: one pass computes Σx and Σx² (in f64 lanes, see the module docs), one pass normalizes.
///
/// # Errors
/// `InvalidShape` for an empty row, `ShapeMismatch` if `gamma`, `beta` or `out` differs in length
/// from `x`, `InvalidArgument` unless `eps` is positive and finite (it is what keeps a
/// constant row finite).
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> Result<(f32, f32)> {
    layer_norm_at(dispatch::level(), x, gamma, beta, eps, out)
}

/// [`layer_norm`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`layer_norm`].
pub fn layer_norm_at(
    level: Level,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(f32, f32)> {
    check_layer_norm("fused::layer_norm", x, gamma, beta, eps, out)?;
    Ok(match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::layer_norm(x, gamma, beta, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::layer_norm(x, gamma, beta, eps, out) },
        _ => scalar::layer_norm(x, gamma, beta, eps, out),
    })
}

/// Softmax of one row in place, at the dispatched level.
///
/// Fused: one pass keeps a running maximum `m` and a running sum `s` of `exp(x − m)` (when `m`
/// grows, `s` is multiplied by `exp(m_old − m_new)`), per SIMD lane and per block of values so
/// the rescale costs one `exp` per block; a second pass writes `exp(x − m)/s`. Entries of `−∞`
/// get probability 0; logits of any finite magnitude are safe (nothing is exponentiated above 0).
/// An empty row is left as is.
///
/// # Errors
/// `InvalidArgument` (row unchanged) if the row contains NaN or `+∞`, or every entry is `−∞` —
/// softmax is undefined there (the unfused `softmax_row` would fill the row with NaN).
pub fn softmax(row: &mut [f32]) -> Result<()> {
    softmax_at(dispatch::level(), row)
}

/// [`softmax`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`softmax`].
pub fn softmax_at(level: Level, row: &mut [f32]) -> Result<()> {
    if row.is_empty() {
        return Ok(());
    }
    let level = level.min(dispatch::level());
    let (max, sum) = match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::softmax_stats(row) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::softmax_stats(row) },
        _ => scalar::softmax_stats(row),
    };
    // Every term is exp(≤ 0) ≤ 1 and the maximum contributes exactly 1, so a valid row has
    // 1 ≤ sum ≤ len. NaN or +∞ inputs make it NaN; an all −∞ row leaves it 0.
    if sum.is_nan() || sum <= 0.0 {
        return Err(TensorError::InvalidArgument {
            op: "fused::softmax",
            reason: "row contains NaN or +inf, or only -inf: softmax is undefined".into(),
        });
    }
    let inv = 1.0 / sum;
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX-512F is available.
        Level::Avx512 => unsafe { avx512::softmax_write(row, max, inv) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX2 and FMA are available.
        Level::Avx2 => unsafe { avx2::softmax_write(row, max, inv) },
        _ => scalar::softmax_write(row, max, inv),
    }
    Ok(())
}

/// The GEMM epilogue `y[r, j] = gelu_tanh(y[r, j] + bias[j])` over `y` = rows × `bias.len()`,
/// at the dispatched level.
///
/// Fused: each value is loaded once, gets its bias and the tanh-form GELU (`x·σ(2u)`, with the
/// vectorized [`exp_fast`]) in registers, and is stored once.
///
/// # Errors
/// `InvalidShape` if `y` is not a whole number of rows of `bias.len()` (an empty `bias` is only
/// valid with an empty `y`).
pub fn bias_gelu(y: &mut [f32], bias: &[f32]) -> Result<()> {
    bias_gelu_at(dispatch::level(), y, bias)
}

/// [`bias_gelu`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`bias_gelu`].
pub fn bias_gelu_at(level: Level, y: &mut [f32], bias: &[f32]) -> Result<()> {
    check_bias_gelu("fused::bias_gelu", y, bias)?;
    if y.is_empty() {
        return Ok(());
    }
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::bias_gelu(y, bias) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::bias_gelu(y, bias) },
        _ => scalar::bias_gelu(y, bias),
    }
    Ok(())
}

/// GELU (tanh form) in place, at the dispatched level: the activation alone, for callers whose
/// projection already added the bias. Same vectorized `exp` as [`bias_gelu`].
pub fn gelu(y: &mut [f32]) {
    gelu_at(dispatch::level(), y)
}

/// [`gelu`] at `level` (clamped to [`dispatch::level`]).
pub fn gelu_at(level: Level, y: &mut [f32]) {
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::gelu_slice(y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::gelu_slice(y) },
        _ => scalar::gelu_slice(y),
    }
}

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

/// A prefill chunk's heads split across [`crate::team::global`]'s members; each head is computed
/// by one member with `tt_tensor::kernels::attention_head_with` and the fused softmax rows (at the
/// caller's level) into its own scratch, then copied to its columns of `out` — so the result
/// equals the one-thread table's head-by-head loop bit for bit. Allocates the
/// members' scratch per call (prefill is not the allocation-free path).
///
/// Panics, naming the problem, if the job's geometry is inconsistent (see [`check_heads`]) or the
/// probabilities' scratch cannot be allocated: the kernel table has no error channel, and the
/// decoder sizes every buffer itself.
fn prefill_heads_on_team(job: &PrefillHeadsJob, out: &mut [f32], out_stride: usize) {
    use tt_tensor::kernels::{attention_head_with, Rows};
    let (hd, nh, n, slots) = (job.head_dim, job.heads, job.rows, job.slots);
    let geometry = Heads {
        heads: nh,
        head_dim: hd,
        head_stride: job.head_stride,
        slots,
        keys_len: job.keys.len(),
        values_len: job.values.len(),
        rows: n,
        q: (job.q.len(), job.q_stride),
        out: (out.len(), out_stride),
    };
    if !check_heads(&geometry).unwrap_or_else(|e| panic!("fused prefill attention heads: {e}")) {
        return;
    }
    // `n × slots` cannot overflow (checked above) but may be more than memory holds: refuse it
    // rather than abort the process inside a member.
    let scratch = |len: usize| {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .unwrap_or_else(|e| panic!("fused prefill attention heads: cannot allocate {len} floats of scratch: {e}"));
        v.resize(len, 0.0f32);
        v
    };
    // The softmax rows run at the caller's level on every member (`with_level` does not reach
    // them), so the split equals the one-thread table's result bit for bit.
    let level = dispatch::level();
    let softmax_row = |row: &mut [f32]| softmax_at(level, row).expect("a softmax row is not empty");
    let head = |h: usize, probs: &mut [f32], local: &mut [f32]| {
        let span = h * job.head_stride..h * job.head_stride + slots * hd;
        let k = Rows { data: &job.keys[span.clone()], rows: slots, cols: hd, stride: hd };
        let v = Rows { data: &job.values[span], rows: slots, cols: hd, stride: hd };
        let q = Rows { data: &job.q[h * hd..], rows: n, cols: hd, stride: job.q_stride };
        attention_head_with(q, k, v, job.scale, probs, local, hd, &softmax_row);
    };
    let ptr = HeadsOut(out.as_mut_ptr(), out.len());
    let write = |h: usize, local: &[f32]| {
        for t in 0..n {
            let dst = t * out_stride + h * hd;
            // SAFETY: t < rows and h < heads, so row t's columns of head h end at most at
            // (rows − 1)·out_stride + heads·head_dim ≤ out.len() (`check_heads`); rows do not
            // overlap (out_stride ≥ heads·head_dim), so no other member writes these floats.
            unsafe { std::ptr::copy_nonoverlapping(local[t * hd..].as_ptr(), ptr.at(dst, hd), hd) };
        }
    };
    let team = crate::team::global().filter(|t| t.size() > 1 && nh > 1);
    let members = team.map_or(1, |t| t.size().min(nh));
    let level = dispatch::level();
    let run = |i: usize| {
        if i >= members {
            return;
        }
        let (mut probs, mut local) = (scratch(n * slots), scratch(n * hd));
        crate::dispatch::with_level(level, |_| {
            for h in crate::team::share(nh, members, i) {
                head(h, &mut probs, &mut local);
                write(h, &local);
            }
        });
    };
    match team {
        Some(t) => t.run(&run),
        None => run(0),
    }
}

/// The geometry of a heads-parallel attention job: `heads` heads of `head_dim`, head `h`'s
/// `slots` cached rows at `h·head_stride` in `keys` and `values`, `rows` queries per head
/// (`q`: `(len, stride)`, head `h` at column `h·head_dim`), outputs likewise in `out`.
#[derive(Debug)]
struct Heads {
    heads: usize,
    head_dim: usize,
    head_stride: usize,
    slots: usize,
    keys_len: usize,
    values_len: usize,
    rows: usize,
    q: (usize, usize),
    out: (usize, usize),
}

/// The one place the heads-parallel kernels' sizes are checked, with overflow-checked arithmetic,
/// before any member forms a pointer into the output. `Ok(false)`: nothing to compute (no head,
/// no column or no query).
///
/// # Errors
/// A size that overflows `usize`, more queries than cached positions, a buffer too short for
/// every head, or output rows that overlap (`out` stride below `heads·head_dim` with several
/// rows: members writing different heads of overlapping rows would race).
fn check_heads(g: &Heads) -> std::result::Result<bool, String> {
    if g.heads == 0 || g.head_dim == 0 || g.rows == 0 {
        return Ok(false);
    }
    let overflow = |what: &str| format!("{what} overflows usize in {g:?}");
    let width = g.heads.checked_mul(g.head_dim).ok_or_else(|| overflow("heads × head_dim"))?;
    if g.rows > g.slots {
        return Err(format!("{} queries over {} cached positions", g.rows, g.slots));
    }
    g.rows.checked_mul(g.slots).ok_or_else(|| overflow("rows × slots (the probabilities)"))?;
    let kv = g
        .slots
        .checked_mul(g.head_dim)
        .and_then(|per_head| strided_len(g.heads, g.head_stride, per_head))
        .ok_or_else(|| overflow("the cache's extent"))?;
    if g.keys_len < kv || g.values_len < kv {
        return Err(format!("keys and values hold {} and {} floats, the heads need {kv}", g.keys_len, g.values_len));
    }
    let ((q_len, q_stride), (out_len, out_stride)) = (g.q, g.out);
    let need_q = strided_len(g.rows, q_stride, width).ok_or_else(|| overflow("the queries' extent"))?;
    if q_len < need_q {
        return Err(format!("q holds {q_len} floats, {} rows of {width} with stride {q_stride} need {need_q}", g.rows));
    }
    if g.rows > 1 && out_stride < width {
        return Err(format!("out stride {out_stride} is less than the {width} columns of a row: rows would overlap"));
    }
    let need_out = strided_len(g.rows, out_stride, width).ok_or_else(|| overflow("the output's extent"))?;
    if out_len < need_out {
        return Err(format!(
            "out holds {out_len} floats, {} rows of {width} with stride {out_stride} need {need_out}",
            g.rows
        ));
    }
    Ok(true)
}

/// Output buffer shared by team members that write disjoint heads.
#[derive(Clone, Copy)]
struct HeadsOut(*mut f32, usize);
// SAFETY: each member writes only the `head_dim` floats of its own heads, and `Team::run` returns
// only after every member is done, while the buffer is still borrowed.
unsafe impl Send for HeadsOut {}
// SAFETY: as above.
unsafe impl Sync for HeadsOut {}

impl HeadsOut {
    /// The element at `offset`, with `len` elements after it in bounds.
    ///
    /// # Safety
    /// `offset + len` ≤ the buffer's length.
    unsafe fn at(&self, offset: usize, len: usize) -> *mut f32 {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.1));
        // SAFETY: forwarded contract.
        unsafe { self.0.add(offset) }
    }

    /// Head `h`'s output.
    ///
    /// # Safety
    /// `h·hd + hd` ≤ the buffer's length, and no one else uses these floats meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn head(&self, h: usize, hd: usize) -> &mut [f32] {
        // SAFETY: forwarded contract. `h·hd` cannot wrap: callers pass h < heads, and
        // `check_heads` proved `heads·hd` fits the buffer before any member started.
        unsafe { std::slice::from_raw_parts_mut(self.at(h * hd, hd), hd) }
    }
}

/// Cache lengths whose heads-parallel scores row fits on a member's stack (16 KiB).
const STACK_SLOTS: usize = 4096;

thread_local! {
    /// Scores scratch of the heads-parallel attention on each team member, past STACK_SLOTS.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One decode step's heads split across [`crate::team::global`]'s members.
///
/// Panics, naming the problem, if the job's geometry is inconsistent (see [`check_heads`]) or its
/// scale is not finite: the kernel table has no error channel, and the decoder sizes every
/// buffer itself.
fn attention_heads_on_team(job: &HeadsJob, out: &mut [f32]) {
    let (hd, nh) = (job.head_dim, job.heads);
    let geometry = Heads {
        heads: nh,
        head_dim: hd,
        head_stride: job.head_stride,
        slots: job.slots,
        keys_len: job.keys.len(),
        values_len: job.values.len(),
        rows: 1,
        q: (job.q.len(), nh.saturating_mul(hd)),
        out: (out.len(), nh.saturating_mul(hd)),
    };
    if !check_heads(&geometry).unwrap_or_else(|e| panic!("fused decode attention heads: {e}")) {
        return;
    }
    // The one condition the per-head kernel checks beyond the geometry: failing it here names
    // it, where a member's panic would only be reported as a failed share.
    assert!(job.scale.is_finite(), "fused decode attention heads: scale {} is not finite", job.scale);
    let head = |h: usize, o: &mut [f32]| {
        let kv = h * job.head_stride..h * job.head_stride + job.slots * hd;
        // The same two-pass kernel as the one-thread table (so the split changes no bit). Its
        // scores row lives on the member's stack up to STACK_SLOTS positions — no allocation in a
        // decode step; longer caches use a per-thread row that grows once to the longest seen.
        let (q, keys, values) = (&job.q[h * hd..(h + 1) * hd], &job.keys[kv.clone()], &job.values[kv]);
        // Checked above: the widths agree and the scale is finite, so this cannot fail.
        let attend = |scores: &mut [f32], o: &mut [f32]| {
            decode_attention_2pass(q, keys, values, job.scale, scores, o)
                .unwrap_or_else(|e| panic!("fused decode attention heads: {e}"))
        };
        if job.slots <= STACK_SLOTS {
            attend(&mut [0.0f32; STACK_SLOTS], o);
        } else {
            SCRATCH.with(|s| {
                let mut scores = s.borrow_mut();
                if scores.len() < job.slots {
                    scores.resize(job.slots, 0.0);
                }
                attend(&mut scores, o);
            });
        }
    };
    let team = crate::team::global();
    let Some(team) = team.filter(|t| t.size() > 1 && nh > 1) else {
        for (h, o) in out.chunks_exact_mut(hd).take(nh).enumerate() {
            head(h, o);
        }
        return;
    };
    let members = team.size().min(nh);
    let ptr = HeadsOut(out.as_mut_ptr(), out.len());
    let level = dispatch::level();
    team.run(&|i| {
        if i >= members {
            return;
        }
        // Workers run at the caller's level, so every head is computed the same way.
        crate::dispatch::with_level(level, |_| {
            for h in crate::team::share(nh, members, i) {
                // SAFETY: h < heads, so the head's floats lie inside the buffer (heads·head_dim
                // ≤ out.len(), `check_heads`), and no other member writes head h.
                head(h, unsafe { ptr.head(h, hd) });
            }
        });
    });
}

/// One decode step of one attention head: the query `q` (`head_dim` floats) attends to all
/// `slots` cached positions; `keys` and `values` are `[slots, head_dim]` row-major, as the KV
/// cache stores them (`slots = keys.len() / head_dim`). Writes `softmax(scale·q·Kᵀ)·V` into
/// `out` (`head_dim` floats). At the dispatched level.
///
/// Fused: one pass over the cache in blocks of 16 keys (8 at AVX2): the block's scores stay in
/// registers, the running maximum `m` and sum `l` are updated online, `out` is rescaled by
/// `exp(m_old − m_new)` once per block and accumulates `pⱼ·vⱼ`; it is divided by `l` at the end.
/// No `slots`-long probability buffer exists. Non-finite inputs propagate to `out`, as in
/// `attention_head`.
///
/// # Errors
/// `InvalidShape` for an empty `q` or cache, or `keys` not a whole number of `head_dim` rows;
/// `ShapeMismatch` if `values` and `keys` or `out` and `q` differ in length; `InvalidArgument`
/// if `scale` is not finite.
pub fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) -> Result<()> {
    decode_attention_at(dispatch::level(), q, keys, values, scale, out)
}

/// [`decode_attention`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`decode_attention`].
pub fn decode_attention_at(
    level: Level,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    check_decode_attention("fused::decode_attention", q, keys, values, scale, out)?;
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::decode_attention(q, keys, values, scale, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::decode_attention(q, keys, values, scale, out) },
        _ => scalar::decode_attention(q, keys, values, scale, out),
    }
    Ok(())
}

/// [`decode_attention`] over an int8 KV cache: each key row `k_j = d_kⱼ·codes` and value row
/// likewise (see `tt_tensor::kernels::Q8Head`), dequantized on the fly inside the same one-pass
/// online softmax: the codes are widened to f32 as they are loaded, `d_kⱼ` multiplies the block's
/// scores and `d_vⱼ` its weights. Reads `head_dim + 4` bytes per row instead of `4·head_dim`.
///
/// # Errors
/// As [`decode_attention`], for codes instead of floats (and scale vectors of `slots` entries).
///
/// One portable kernel at every level (it takes no level): the SIMD int8 path is the two-pass
/// [`decode_attention_q8_2pass`], which the decoder's tables use.
pub fn decode_attention_q8(q: &[f32], kv: &tt_tensor::kernels::Q8Head, scale: f32, out: &mut [f32]) -> Result<()> {
    check_q8("fused::decode_attention_q8", q, kv, scale, out)?;
    scalar::decode_attention_q8(q, kv, scale, out);
    Ok(())
}

/// [`decode_attention`] using `scores` (at least `slots` floats) as scratch: at the AVX-512
/// level a two-pass kernel (all scores with a vector maximum, then the weights, then `P·V`),
/// which avoids the online kernel's per-block chain of horizontal reductions and scalar `exp`;
/// other levels run [`decode_attention`]. What the decoder's row-kernel table uses (it owns a
/// `slots`-long scratch row).
///
/// # Errors
/// As [`decode_attention`], and `scores` shorter than `slots`.
pub fn decode_attention_2pass(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    decode_attention_2pass_at(dispatch::level(), q, keys, values, scale, scores, out)
}

/// [`decode_attention_2pass`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`decode_attention_2pass`].
pub fn decode_attention_2pass_at(
    level: Level,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    check_decode_attention("fused::decode_attention_2pass", q, keys, values, scale, out)?;
    check_scores("fused::decode_attention_2pass", keys.len() / q.len(), scores)?;
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::decode_attention_2pass(q, keys, values, scale, scores, out) },
        l => return decode_attention_at(l, q, keys, values, scale, out),
    }
    Ok(())
}

/// [`decode_attention_q8`] with `scores` as scratch, two-pass at the AVX-512 level (see
/// [`decode_attention_2pass`]).
///
/// # Errors
/// As [`decode_attention_q8`], and `scores` shorter than `slots`.
pub fn decode_attention_q8_2pass(
    q: &[f32],
    kv: &tt_tensor::kernels::Q8Head,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    decode_attention_q8_2pass_at(dispatch::level(), q, kv, scale, scores, out)
}

/// [`decode_attention_q8_2pass`] at `level` (clamped to [`dispatch::level`]).
///
/// # Errors
/// As [`decode_attention_q8_2pass`].
pub fn decode_attention_q8_2pass_at(
    level: Level,
    q: &[f32],
    kv: &tt_tensor::kernels::Q8Head,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    // The same checks at every level, so an error does not depend on the CPU.
    check_q8("fused::decode_attention_q8_2pass", q, kv, scale, out)?;
    check_scores("fused::decode_attention_q8_2pass", kv.key_scales.len(), scores)?;
    let level = level.min(dispatch::level());
    if level != Level::Avx512 {
        return decode_attention_q8(q, kv, scale, out);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the level is AVX-512, at most `dispatch::level()`; lengths checked above.
    unsafe {
        avx512::decode_attention_q8_2pass(q, kv, scale, scores, out)
    };
    Ok(())
}

fn check_q8(op: &'static str, q: &[f32], kv: &tt_tensor::kernels::Q8Head, scale: f32, out: &[f32]) -> Result<()> {
    let hd = q.len();
    let slots = kv.key_scales.len();
    if hd == 0 || slots == 0 {
        return Err(TensorError::InvalidShape { op, shape: vec![slots, hd], reason: "empty query or cache".into() });
    }
    // The SIMD kernel reads the codes through raw pointers, up to `slots·hd`.
    let Some(codes) = slots.checked_mul(hd) else {
        return Err(invalid_shape(op, &[slots, hd], "slots × head_dim overflows usize"));
    };
    if kv.keys.len() != codes || kv.values.len() != codes || kv.value_scales.len() != slots {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: vec![kv.keys.len(), kv.values.len(), kv.value_scales.len()],
            rhs: vec![codes, codes, slots],
        });
    }
    if out.len() != hd {
        return Err(TensorError::ShapeMismatch { op, lhs: vec![out.len()], rhs: vec![hd] });
    }
    if !scale.is_finite() {
        return Err(TensorError::InvalidArgument { op, reason: format!("scale {scale} is not finite") });
    }
    Ok(())
}

fn check_scores(op: &'static str, slots: usize, scores: &[f32]) -> Result<()> {
    if scores.len() < slots {
        return Err(TensorError::ShapeMismatch { op, lhs: vec![scores.len()], rhs: vec![slots] });
    }
    Ok(())
}

/// The unfused chains the fused kernels replace: the `tt_tensor::kernels` reference kernels
/// called one after another, with their intermediate buffers. Same validation and errors as
/// the fused forms, so tests and benches compare like with like.
pub mod unfused {
    use super::{check_bias_gelu, check_decode_attention, check_layer_norm};
    use tt_tensor::kernels::{attention_head, gelu_tanh, layer_norm_row, softmax_row, Rows};
    use tt_tensor::{Result, TensorError};

    /// [`layer_norm_row`]: a mean pass, a variance pass, a normalize pass.
    ///
    /// # Errors
    /// As [`super::layer_norm`].
    pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> Result<(f32, f32)> {
        check_layer_norm("unfused::layer_norm", x, gamma, beta, eps, out)?;
        Ok(layer_norm_row(x, gamma, beta, eps, out))
    }

    /// [`softmax_row`]: a max pass, an exp + sum pass that stores the exponentials, a scale
    /// pass. A row with NaN, `+∞` or only `−∞` entries comes out NaN (no error).
    pub fn softmax(row: &mut [f32]) {
        softmax_row(row);
    }

    /// A bias-add pass over `y` (rows × `bias.len()`), then a [`gelu_tanh`] pass.
    ///
    /// # Errors
    /// As [`super::bias_gelu`].
    pub fn bias_gelu(y: &mut [f32], bias: &[f32]) -> Result<()> {
        check_bias_gelu("unfused::bias_gelu", y, bias)?;
        if y.is_empty() {
            return Ok(());
        }
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        for v in y.iter_mut() {
            *v = gelu_tanh(*v);
        }
        Ok(())
    }

    /// [`attention_head`] with one query over `slots = keys.len() / q.len()` cached rows, as the
    /// KV-cached decoder calls it: scores into `probs` (which needs `slots` floats), softmax
    /// over them, then `P·V` into `out`.
    ///
    /// # Errors
    /// As [`super::decode_attention`], and `ShapeMismatch` if `probs` is shorter than `slots`.
    pub fn decode_attention(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        probs: &mut [f32],
        out: &mut [f32],
    ) -> Result<()> {
        let op = "unfused::decode_attention";
        check_decode_attention(op, q, keys, values, scale, out)?;
        let hd = q.len();
        let slots = keys.len() / hd;
        if probs.len() < slots {
            return Err(TensorError::ShapeMismatch { op, lhs: vec![probs.len()], rhs: vec![slots] });
        }
        let rows = |data, rows| Rows { data, rows, cols: hd, stride: hd };
        attention_head(rows(q, 1), rows(keys, slots), rows(values, slots), scale, probs, out, hd);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (shared by the fused and unfused forms)
// ---------------------------------------------------------------------------------------------

fn mismatch(op: &'static str, lhs: usize, rhs: usize) -> TensorError {
    TensorError::ShapeMismatch { op, lhs: vec![lhs], rhs: vec![rhs] }
}

fn invalid_shape(op: &'static str, shape: &[usize], reason: &str) -> TensorError {
    TensorError::InvalidShape { op, shape: shape.to_vec(), reason: reason.into() }
}

fn check_layer_norm(op: &'static str, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &[f32]) -> Result<()> {
    if x.is_empty() {
        return Err(invalid_shape(op, &[0], "empty row"));
    }
    for len in [gamma.len(), beta.len(), out.len()] {
        if len != x.len() {
            return Err(mismatch(op, x.len(), len));
        }
    }
    if !eps.is_finite() || eps <= 0.0 {
        return Err(TensorError::InvalidArgument { op, reason: format!("eps must be positive and finite, got {eps}") });
    }
    Ok(())
}

fn check_bias_gelu(op: &'static str, y: &[f32], bias: &[f32]) -> Result<()> {
    let w = bias.len();
    // `is_multiple_of(0)` holds only for 0: an empty bias fits only an empty `y`.
    if !y.len().is_multiple_of(w) {
        return Err(invalid_shape(op, &[y.len()], &format!("not a whole number of rows of width {w}")));
    }
    Ok(())
}

fn check_decode_attention(
    op: &'static str,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    out: &[f32],
) -> Result<()> {
    let hd = q.len();
    if hd == 0 {
        return Err(invalid_shape(op, &[0], "empty query (head_dim 0)"));
    }
    if out.len() != hd {
        return Err(mismatch(op, hd, out.len()));
    }
    if values.len() != keys.len() {
        return Err(mismatch(op, keys.len(), values.len()));
    }
    if keys.is_empty() || !keys.len().is_multiple_of(hd) {
        return Err(invalid_shape(
            op,
            &[keys.len()],
            &format!("the cache must hold at least one whole row of head_dim {hd}"),
        ));
    }
    if !scale.is_finite() {
        return Err(TensorError::InvalidArgument { op, reason: format!("scale must be finite, got {scale}") });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared numerics
// ---------------------------------------------------------------------------------------------

/// The constants of [`exp_fast`], so every level evaluates the same range reduction and the
/// same polynomial (see its docs for the derivation).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod expc {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_145_75;
    pub const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5·2²³: adding and subtracting it rounds to an integer.
    pub const ROUND: f32 = 12_582_912.0;
    /// Above this `exp` is +∞ (input clamped here).
    pub const HI: f32 = 88.72;
    /// Below this `exp` is 0 (input clamped here).
    pub const LO: f32 = -87.33;
    /// Taylor coefficients of `e^r`, highest degree first (Horner order).
    pub const POLY: [f32; 7] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    /// `2·√(2/π)` and the cubic coefficient of the tanh-form GELU, as in `gelu_tanh`.
    pub const GELU_C2: f32 = 2.0 * 0.797_884_6;
    pub const GELU_CUBIC: f32 = 0.044715;
}

/// `(mean, 1/√(var + eps))` from f64 sums of `x` and `x²` over `n` values. The variance is
/// clamped at 0 (rounding can leave `E[x²] − mean²` a hair negative for a constant row).
#[inline]
fn finish_stats(s1: f64, s2: f64, n: usize, eps: f32) -> (f32, f32) {
    let n = n as f64;
    let mean = s1 / n;
    let var = (s2 / n - mean * mean).max(0.0);
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// Keys per block in the scalar decode attention (the SIMD levels use one vector's lanes).
const SCALAR_BLOCK: usize = 16;

/// `x = exp(x)` elementwise with `level`'s exponential (clamped to [`dispatch::level`]): the
/// vectorized [`exp_fast`] the fused kernels use, exposed so tests can compare it with the scalar
/// one directly.
#[doc(hidden)]
pub fn exp_at(level: Level, x: &mut [f32]) {
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX-512F.
        Level::Avx512 => unsafe { avx512::exp_slice(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so this CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { avx2::exp_slice(x) },
        _ => x.iter_mut().for_each(|v| *v = exp_fast(*v)),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar level: the same fused algorithms, one lane at a time
// ---------------------------------------------------------------------------------------------

mod scalar {
    use super::{finish_stats, SCALAR_BLOCK};
    use tt_tensor::kernels::{dot, exp_fast, gelu_tanh};

    pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
        // Four independent f64 accumulator pairs so the adds overlap.
        let (mut s1, mut s2) = ([0.0f64; 4], [0.0f64; 4]);
        let chunks = x.chunks_exact(4);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..4 {
                let v = c[l] as f64;
                s1[l] += v;
                s2[l] += v * v;
            }
        }
        for &v in rest {
            s1[0] += v as f64;
            s2[0] += v as f64 * v as f64;
        }
        let sum = |s: [f64; 4]| (s[0] + s[1]) + (s[2] + s[3]);
        let (mean, rstd) = finish_stats(sum(s1), sum(s2), x.len(), eps);
        for i in 0..x.len() {
            out[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
        }
        (mean, rstd)
    }

    /// Online `(max, Σ exp(x − max))` in blocks of 16: one rescale `exp` per block.
    pub(super) fn softmax_stats(row: &[f32]) -> (f32, f32) {
        // A finite start so `m_old − m_new` is never `−∞ − (−∞)`; −∞ entries never raise it.
        let (mut m, mut s) = (-f32::MAX, 0.0f32);
        let mut e = [0.0f32; 16];
        for block in row.chunks(16) {
            let bm = block.iter().fold(m, |a, &b| a.max(b));
            // The exponentials into a fixed array (a loop the compiler can vectorize), then
            // summed as a tree; a running `sum += exp(..)` would serialize on the add.
            e.fill(0.0);
            for (ei, &x) in e.iter_mut().zip(block) {
                *ei = exp_fast(x - bm);
            }
            let mut w = 16;
            while w > 1 {
                w /= 2;
                for i in 0..w {
                    e[i] += e[i + w];
                }
            }
            s = s * exp_fast(m - bm) + e[0];
            m = bm;
        }
        (m, s)
    }

    pub(super) fn softmax_write(row: &mut [f32], max: f32, inv: f32) {
        for v in row.iter_mut() {
            *v = exp_fast(*v - max) * inv;
        }
    }

    pub(super) fn bias_gelu(y: &mut [f32], bias: &[f32]) {
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = gelu_tanh(*v + b);
            }
        }
    }

    pub(super) fn gelu_slice(y: &mut [f32]) {
        y.iter_mut().for_each(|v| *v = gelu_tanh(*v));
    }

    /// The online softmax of [`decode_attention`], written once over how a row is read: `score(j)`
    /// is `scale·q·kⱼ` (already scaled), `add(j, p, out)` accumulates `p·vⱼ` into `out`.
    fn online(
        hd: usize,
        slots: usize,
        out: &mut [f32],
        score: impl Fn(usize) -> f32,
        add: impl Fn(usize, f32, &mut [f32]),
    ) {
        debug_assert_eq!(out.len(), hd);
        out.fill(0.0);
        let (mut m, mut l) = (-f32::MAX, 0.0f32);
        let mut p = [0.0f32; SCALAR_BLOCK];
        for j0 in (0..slots).step_by(SCALAR_BLOCK) {
            let nb = SCALAR_BLOCK.min(slots - j0);
            let mut bm = m;
            for t in 0..nb {
                p[t] = score(j0 + t);
                bm = bm.max(p[t]);
            }
            let alpha = exp_fast(m - bm);
            let mut bs = 0.0;
            for pt in &mut p[..nb] {
                *pt = exp_fast(*pt - bm);
                bs += *pt;
            }
            l = l * alpha + bs;
            out.iter_mut().for_each(|o| *o *= alpha);
            for t in 0..nb {
                add(j0 + t, p[t], out);
            }
            m = bm;
        }
        let inv = 1.0 / l;
        out.iter_mut().for_each(|o| *o *= inv);
    }

    /// [`online`] over int8 rows.
    pub(super) fn decode_attention_q8(q: &[f32], kv: &tt_tensor::kernels::Q8Head, scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let score = |j: usize| {
            let d: f32 = q.iter().zip(&kv.keys[j * hd..(j + 1) * hd]).map(|(&a, &c)| a * c as f32).sum();
            d * kv.key_scales[j] * scale
        };
        let add = |j: usize, p: f32, out: &mut [f32]| {
            let w = p * kv.value_scales[j];
            for (o, &c) in out.iter_mut().zip(&kv.values[j * hd..(j + 1) * hd]) {
                *o += w * c as f32;
            }
        };
        online(hd, kv.key_scales.len(), out, score, add);
    }

    /// [`online`] over f32 rows.
    pub(super) fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let score = |j: usize| dot(q, &keys[j * hd..(j + 1) * hd]) * scale;
        let add = |j: usize, p: f32, out: &mut [f32]| {
            for (o, &v) in out.iter_mut().zip(&values[j * hd..(j + 1) * hd]) {
                *o += p * v;
            }
        };
        online(hd, keys.len() / hd, out, score, add);
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512F level: 16 lanes, masked loads and stores for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::expc::*;
    use super::finish_stats;
    use std::arch::x86_64::*;
    use tt_tensor::kernels::exp_fast;

    const L: usize = 16;

    /// Mask of the first `min(rem, 16)` lanes.
    #[inline]
    fn mask(rem: usize) -> __mmask16 {
        if rem >= L {
            0xFFFF
        } else {
            ((1u32 << rem) - 1) as __mmask16
        }
    }

    /// [`exp_fast`] on 16 lanes: same clamp, same rounding of `n`, same polynomial (evaluated
    /// with FMA), same `+∞` above 88.72 and `0` below −87.33; NaN stays NaN (`max`/`min` return
    /// their second operand when one is NaN, so `x` goes second).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp(x: __m512) -> __m512 {
        let (hi, lo) = (_mm512_set1_ps(HI), _mm512_set1_ps(LO));
        let xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
        let round = _mm512_set1_ps(ROUND);
        let n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)), round), round);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc));
        let mut p = _mm512_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        // 2ⁿ through the exponent bits; n ∈ [−126, 128] after the clamp.
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        )));
        let y = _mm512_mul_ps(p, two_n);
        let y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi), y, _mm512_set1_ps(f32::INFINITY));
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo), y, _mm512_setzero_ps())
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_slice(x: &mut [f32]) {
        let (n, p) = (x.len(), x.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes i..min(i + 16, n), all inside `x`.
            unsafe { _mm512_mask_storeu_ps(p.add(i), k, exp(_mm512_maskz_loadu_ps(k, p.add(i)))) };
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
        let n = x.len();
        let px = x.as_ptr();
        // Pass 1: Σx and Σx² in f64, two 8-lane halves per 16 values.
        let (mut s1a, mut s1b) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let (mut s2a, mut s2b) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        for i in (0..n).step_by(L) {
            // SAFETY: i < n and the mask enables only lanes inside `x`; the rest read as 0,
            // which adds nothing to either sum.
            let v = unsafe { _mm512_maskz_loadu_ps(mask(n - i), px.add(i)) };
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
            s1a = _mm512_add_pd(s1a, lo);
            s2a = _mm512_fmadd_pd(lo, lo, s2a);
            s1b = _mm512_add_pd(s1b, hi);
            s2b = _mm512_fmadd_pd(hi, hi, s2b);
        }
        let s1 = _mm512_reduce_add_pd(_mm512_add_pd(s1a, s1b));
        let s2 = _mm512_reduce_add_pd(_mm512_add_pd(s2a, s2b));
        let (mean, rstd) = finish_stats(s1, s2, n, eps);
        // Pass 2: out = (x − mean)·rstd·γ + β.
        let (mv, rv) = (_mm512_set1_ps(mean), _mm512_set1_ps(rstd));
        let (pg, pb, po) = (gamma.as_ptr(), beta.as_ptr(), out.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: `gamma`, `beta` and `out` have length n (checked by the caller); i < n and
            // `k` enables only lanes below n.
            unsafe {
                let xv = _mm512_maskz_loadu_ps(k, px.add(i));
                let t = _mm512_mul_ps(_mm512_sub_ps(xv, mv), rv);
                let y = _mm512_fmadd_ps(t, _mm512_maskz_loadu_ps(k, pg.add(i)), _mm512_maskz_loadu_ps(k, pb.add(i)));
                _mm512_mask_storeu_ps(po.add(i), k, y);
            }
        }
        (mean, rstd)
    }

    /// Per-lane running `(m, s)`; four vectors (64 values) share one rescale.
    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_stats(row: &[f32]) -> (f32, f32) {
        let n = row.len();
        let p = row.as_ptr();
        // Finite start so `m − m_new` is never `−∞ − (−∞)`; padding lanes are −∞ (weight 0).
        let mut m = _mm512_set1_ps(-f32::MAX);
        let mut s = _mm512_setzero_ps();
        let mut i = 0;
        while i + 4 * L <= n {
            // SAFETY: i + 64 ≤ n, so the four loads read row[i..i + 64].
            let (x0, x1, x2, x3) = unsafe {
                (
                    _mm512_loadu_ps(p.add(i)),
                    _mm512_loadu_ps(p.add(i + L)),
                    _mm512_loadu_ps(p.add(i + 2 * L)),
                    _mm512_loadu_ps(p.add(i + 3 * L)),
                )
            };
            let mn = _mm512_max_ps(m, _mm512_max_ps(_mm512_max_ps(x0, x1), _mm512_max_ps(x2, x3)));
            let e01 = _mm512_add_ps(exp(_mm512_sub_ps(x0, mn)), exp(_mm512_sub_ps(x1, mn)));
            let e23 = _mm512_add_ps(exp(_mm512_sub_ps(x2, mn)), exp(_mm512_sub_ps(x3, mn)));
            s = _mm512_fmadd_ps(s, exp(_mm512_sub_ps(m, mn)), _mm512_add_ps(e01, e23));
            m = mn;
            i += 4 * L;
        }
        while i < n {
            // SAFETY: i < n and the mask enables only lanes inside `row`; the others are −∞.
            let x = unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask(n - i), p.add(i)) };
            let mn = _mm512_max_ps(m, x);
            s = _mm512_fmadd_ps(s, exp(_mm512_sub_ps(m, mn)), exp(_mm512_sub_ps(x, mn)));
            m = mn;
            i += L;
        }
        let max = _mm512_reduce_max_ps(m);
        let sum = _mm512_reduce_add_ps(_mm512_mul_ps(s, exp(_mm512_sub_ps(m, _mm512_set1_ps(max)))));
        (max, sum)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_write(row: &mut [f32], max: f32, inv: f32) {
        let (n, p) = (row.len(), row.as_mut_ptr());
        let (mv, iv) = (_mm512_set1_ps(max), _mm512_set1_ps(inv));
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes inside `row`.
            unsafe {
                let x = _mm512_maskz_loadu_ps(k, p.add(i));
                _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(exp(_mm512_sub_ps(x, mv)), iv));
            }
        }
    }

    /// `gelu_tanh` on 16 lanes: `x / (1 + exp(−2√(2/π)·(x + 0.044715·x³)))`, the argument
    /// computed in the scalar kernel's operation order.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn gelu(x: __m512) -> __m512 {
        let x3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_CUBIC), x), x), x);
        let e = exp(_mm512_mul_ps(_mm512_set1_ps(-GELU_C2), _mm512_add_ps(x, x3)));
        _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn bias_gelu(y: &mut [f32], bias: &[f32]) {
        let w = bias.len();
        let pb = bias.as_ptr();
        for row in y.chunks_exact_mut(w) {
            let py = row.as_mut_ptr();
            for j in (0..w).step_by(L) {
                let k = mask(w - j);
                // SAFETY: `row` and `bias` have length w; j < w and `k` enables only lanes below w.
                unsafe {
                    let x = _mm512_add_ps(_mm512_maskz_loadu_ps(k, py.add(j)), _mm512_maskz_loadu_ps(k, pb.add(j)));
                    _mm512_mask_storeu_ps(py.add(j), k, gelu(x));
                }
            }
        }
    }

    /// GELU in place over a whole slice (no bias): the decoder's activation after `fc`, whose
    /// projection already added the bias.
    #[target_feature(enable = "avx512f")]
    pub(super) fn gelu_slice(y: &mut [f32]) {
        let n = y.len();
        let py = y.as_mut_ptr();
        for j in (0..n).step_by(L) {
            let k = mask(n - j);
            // SAFETY: j < n and `k` enables only lanes below n.
            unsafe { _mm512_mask_storeu_ps(py.add(j), k, gelu(_mm512_maskz_loadu_ps(k, py.add(j)))) };
        }
    }

    /// `permutex2var` indices for one level of [`sum_lanes_16`]: two vectors holding `16/g` keys
    /// of `g` partial sums each become one vector holding `32/g` keys of `g/2` partial sums
    /// (the first half of each key's lanes with `hi = false`, the second half with `hi = true`;
    /// the two are added). Keys stay in order: those of the first vector, then the second's.
    const fn tree_index(g: usize, hi: bool) -> [i32; 16] {
        let (half, per) = (g / 2, 16 / g);
        let mut idx = [0i32; 16];
        let mut o = 0;
        while o < 16 {
            let (key, lane) = (o / half, o % half + if hi { half } else { 0 });
            // Bit 4 of an index selects the second source vector.
            idx[o] = if key < per { key * g + lane } else { 16 + (key - per) * g + lane } as i32;
            o += 1;
        }
        idx
    }
    const TREE: [[[i32; 16]; 2]; 4] = [
        [tree_index(16, false), tree_index(16, true)],
        [tree_index(8, false), tree_index(8, true)],
        [tree_index(4, false), tree_index(4, true)],
        [tree_index(2, false), tree_index(2, true)],
    ];

    /// Lane `t` of the result is the sum of the 16 lanes of `v[t]`: 16 horizontal sums in four
    /// levels of two-source permutes and adds (15 vector adds, 30 permutes) instead of 16
    /// separate reductions (64 shuffles and adds).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sum_lanes_16(mut v: [__m512; 16]) -> __m512 {
        let mut n = 16;
        for level in &TREE {
            // SAFETY: each index table holds 16 i32.
            let (lo, hi) = unsafe { (_mm512_loadu_epi32(level[0].as_ptr()), _mm512_loadu_epi32(level[1].as_ptr())) };
            for i in 0..n / 2 {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                v[i] = _mm512_add_ps(_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b));
            }
            n /= 2;
        }
        v[0]
    }

    /// Two-pass decode attention over f32 rows (`Q8 = false`: `k`, `v` point to f32) or int8
    /// rows (`Q8 = true`: to i8 codes, with `ks` / `vs` the row scales): pass 1 writes every score
    /// `scale·(d_kⱼ·)q·kⱼ` to `scores` and keeps a vector maximum (no horizontal reduction per
    /// block, so blocks do not wait on each other); pass 2 turns scores into weights
    /// `exp(sⱼ − m)` (times `d_vⱼ`) and sums them; pass 3 accumulates `Σ wⱼ·vⱼ` in four FMA
    /// chains per 16 output lanes and divides by the sum.
    ///
    /// # Safety
    /// AVX-512F; `k` and `v` hold `slots·hd` elements of their type, `ks`/`vs` `slots` scales
    /// (when `Q8`), `scores` at least `slots`, `out` and `q` `hd`.
    #[target_feature(enable = "avx512f")]
    unsafe fn two_pass<const Q8: bool>(
        q: &[f32],
        k: *const u8,
        v: *const u8,
        ks: &[f32],
        vs: &[f32],
        slots: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        // Lanes c..c + 16 of row j (masked past hd).
        let row = |base: *const u8, j: usize, c: usize| -> __m512 {
            // SAFETY: j < slots and c < hd: inside the row (caller's contract); masked lanes are
            // not read.
            unsafe {
                if Q8 {
                    load_q8(hd - c, (base as *const i8).add(j * hd + c))
                } else {
                    _mm512_maskz_loadu_ps(mask(hd - c), (base as *const f32).add(j * hd + c))
                }
            }
        };
        let (pq, ps) = (q.as_ptr(), scores.as_mut_ptr());
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for j0 in (0..slots).step_by(L) {
            let nb = L.min(slots - j0);
            let mut acc = [_mm512_setzero_ps(); L];
            for c in (0..hd).step_by(L) {
                // SAFETY: c < hd, lanes masked to hd: inside `q`.
                let qc = unsafe { _mm512_maskz_loadu_ps(mask(hd - c), pq.add(c)) };
                for (t, a) in acc.iter_mut().enumerate() {
                    // A partial block re-reads its last key (in bounds); its lanes are masked below.
                    *a = _mm512_fmadd_ps(qc, row(k, j0 + t.min(nb - 1), c), *a);
                }
            }
            let km = mask(nb);
            let mut sc = _mm512_mul_ps(sum_lanes_16(acc), _mm512_set1_ps(scale));
            if Q8 {
                // SAFETY: lanes below nb read ks[j0..j0 + nb].
                sc = _mm512_mul_ps(sc, unsafe { _mm512_maskz_loadu_ps(km, ks.as_ptr().add(j0)) });
            }
            // SAFETY: lanes below nb write scores[j0..j0 + nb] (scores holds slots).
            unsafe { _mm512_mask_storeu_ps(ps.add(j0), km, sc) };
            vmax = _mm512_mask_max_ps(vmax, km, vmax, sc);
        }
        let m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        let mut vsum = _mm512_setzero_ps();
        for j0 in (0..slots).step_by(L) {
            let km = mask(slots - j0);
            // SAFETY: lanes below min(16, slots − j0): inside scores (and vs).
            unsafe {
                let w = _mm512_maskz_mov_ps(km, exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(km, ps.add(j0)), m)));
                vsum = _mm512_add_ps(vsum, w);
                let w = if Q8 { _mm512_mul_ps(w, _mm512_maskz_loadu_ps(km, vs.as_ptr().add(j0))) } else { w };
                _mm512_mask_storeu_ps(ps.add(j0), km, w);
            }
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(vsum));
        let po = out.as_mut_ptr();
        // SAFETY (weights): j < slots: inside scores.
        let w = |j: usize| _mm512_set1_ps(unsafe { *ps.add(j) });
        for c in (0..hd).step_by(L) {
            // Four named chains, unrolled by hand: indexing an array of accumulators by `j % 4`
            // would keep them in memory.
            let (mut o0, mut o1, mut o2, mut o3) =
                (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
            let full = slots / 4 * 4;
            for j in (0..full).step_by(4) {
                o0 = _mm512_fmadd_ps(w(j), row(v, j, c), o0);
                o1 = _mm512_fmadd_ps(w(j + 1), row(v, j + 1, c), o1);
                o2 = _mm512_fmadd_ps(w(j + 2), row(v, j + 2, c), o2);
                o3 = _mm512_fmadd_ps(w(j + 3), row(v, j + 3, c), o3);
            }
            for j in full..slots {
                o0 = _mm512_fmadd_ps(w(j), row(v, j, c), o0);
            }
            let o = _mm512_add_ps(_mm512_add_ps(o0, o1), _mm512_add_ps(o2, o3));
            // SAFETY: c < hd, lanes masked to hd: inside `out`.
            unsafe { _mm512_mask_storeu_ps(po.add(c), mask(hd - c), _mm512_mul_ps(o, inv)) };
        }
    }

    /// [`two_pass`] over f32 rows.
    #[target_feature(enable = "avx512f")]
    pub(super) fn decode_attention_2pass(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let slots = keys.len() / q.len();
        // SAFETY: lengths checked by the caller (`decode_attention_2pass_at`).
        unsafe {
            two_pass::<false>(
                q,
                keys.as_ptr() as *const u8,
                values.as_ptr() as *const u8,
                &[],
                &[],
                slots,
                scale,
                scores,
                out,
            )
        }
    }

    /// [`two_pass`] over int8 rows.
    #[target_feature(enable = "avx512f")]
    pub(super) fn decode_attention_q8_2pass(
        q: &[f32],
        kv: &tt_tensor::kernels::Q8Head,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let slots = kv.key_scales.len();
        let (k, v) = (kv.keys.as_ptr() as *const u8, kv.values.as_ptr() as *const u8);
        // SAFETY: lengths checked by the caller (`decode_attention_q8_2pass_at`).
        unsafe { two_pass::<true>(q, k, v, kv.key_scales, kv.value_scales, slots, scale, scores, out) }
    }

    /// Up to 16 int8 codes of one row (`rem` of them remain in the row), widened to f32; lanes
    /// past the row are 0. AVX-512F only: a short tail is copied rather than read with a byte mask
    /// (which would need AVX-512BW).
    ///
    /// # Safety
    /// `p .. p + min(rem, 16)` lies inside one slice.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_q8(rem: usize, p: *const i8) -> __m512 {
        let bytes = if rem >= L {
            // SAFETY: 16 bytes inside the slice (forwarded contract).
            unsafe { _mm_loadu_si128(p as *const __m128i) }
        } else {
            let mut buf = [0i8; L];
            // SAFETY: `rem` bytes inside the slice; `buf` holds 16.
            unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), rem) };
            // SAFETY: `buf` holds 16 bytes.
            unsafe { _mm_loadu_si128(buf.as_ptr() as *const __m128i) }
        };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
    }

    /// Blocks of 16 keys, one pass. Per block: the 16 scores `q·kⱼ` are accumulated as 16-lane
    /// partial sums (one register per key, each `q` chunk loaded once) and reduced together
    /// into one vector ([`sum_lanes_16`]); one vector `exp` gives their weights; `out`
    /// (head_dim floats, in L1, the accumulator) is rescaled once and accumulates `pⱼ·vⱼ` in
    /// four independent FMA chains. In a last, partial block the missing keys re-read the last
    /// key's row (in bounds) and get score −∞, so weight exactly 0.
    #[target_feature(enable = "avx512f")]
    pub(super) fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let slots = keys.len() / hd;
        out.fill(0.0);
        let (pq, pk, pv, po) = (q.as_ptr(), keys.as_ptr(), values.as_ptr(), out.as_mut_ptr());
        let (mut m, mut l) = (-f32::MAX, 0.0f32);
        let mut tile = [0.0f32; L];
        for j0 in (0..slots).step_by(L) {
            let nb = L.min(slots - j0);
            // Offsets of the block's K and V rows, all < slots·hd.
            let rows: [usize; L] = std::array::from_fn(|t| (j0 + t.min(nb - 1)) * hd);
            let mut acc = [_mm512_setzero_ps(); L];
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these read inside `q`
                // (length hd) and inside rows[t]/hd < slots of `keys` (length slots·hd).
                unsafe {
                    let qc = _mm512_maskz_loadu_ps(k, pq.add(c));
                    for t in 0..L {
                        acc[t] = _mm512_fmadd_ps(qc, _mm512_maskz_loadu_ps(k, pk.add(rows[t] + c)), acc[t]);
                    }
                }
            }
            let scores = _mm512_mul_ps(sum_lanes_16(acc), _mm512_set1_ps(scale));
            let sv = _mm512_mask_blend_ps(mask(nb), _mm512_set1_ps(f32::NEG_INFINITY), scores);
            let bm = m.max(_mm512_reduce_max_ps(sv));
            let alpha = exp_fast(m - bm);
            let weights = exp(_mm512_sub_ps(sv, _mm512_set1_ps(bm)));
            l = l * alpha + _mm512_reduce_add_ps(weights);
            // SAFETY: `tile` holds 16 floats.
            unsafe { _mm512_storeu_ps(tile.as_mut_ptr(), weights) };
            let av = _mm512_set1_ps(alpha);
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these touch only `out`
                // (length hd) and rows[t]/hd < slots of `values` (length slots·hd).
                unsafe {
                    let mut o = [
                        _mm512_mul_ps(_mm512_maskz_loadu_ps(k, po.add(c)), av),
                        _mm512_setzero_ps(),
                        _mm512_setzero_ps(),
                        _mm512_setzero_ps(),
                    ];
                    for t in 0..L {
                        let vr = _mm512_maskz_loadu_ps(k, pv.add(rows[t] + c));
                        o[t % 4] = _mm512_fmadd_ps(_mm512_set1_ps(tile[t]), vr, o[t % 4]);
                    }
                    let o = _mm512_add_ps(_mm512_add_ps(o[0], o[1]), _mm512_add_ps(o[2], o[3]));
                    _mm512_mask_storeu_ps(po.add(c), k, o);
                }
            }
            m = bm;
        }
        let inv = _mm512_set1_ps(1.0 / l);
        for c in (0..hd).step_by(L) {
            let k = mask(hd - c);
            // SAFETY: c < hd and `k` enables only lanes inside `out`.
            unsafe { _mm512_mask_storeu_ps(po.add(c), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, po.add(c)), inv)) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA level: 8 lanes, `maskload`/`maskstore` for partial vectors
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::expc::*;
    use super::finish_stats;
    use std::arch::x86_64::*;
    use tt_tensor::kernels::exp_fast;

    const L: usize = 8;

    /// Lane mask (all-ones in the first `min(rem, 8)` 32-bit lanes) for `maskload`/`maskstore`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mask(rem: usize) -> __m256i {
        let rem = rem.min(L) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum_pd(v: __m256d) -> f64 {
        let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }

    /// [`exp_fast`] on 8 lanes; see the AVX-512 version.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp(x: __m256) -> __m256 {
        let (hi, lo) = (_mm256_set1_ps(HI), _mm256_set1_ps(LO));
        let xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
        let round = _mm256_set1_ps(ROUND);
        let n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)), round), round);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc));
        let mut p = _mm256_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let y = _mm256_mul_ps(p, two_n);
        let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi));
        _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_slice(x: &mut [f32]) {
        let (n, p) = (x.len(), x.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes i..min(i + 8, n), all inside `x`.
            unsafe { _mm256_maskstore_ps(p.add(i), k, exp(_mm256_maskload_ps(p.add(i), k))) };
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
        let n = x.len();
        let px = x.as_ptr();
        let (mut s1a, mut s1b) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let (mut s2a, mut s2b) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for i in (0..n).step_by(L) {
            // SAFETY: i < n and the mask enables only lanes inside `x`; the rest read as 0.
            let v = unsafe { _mm256_maskload_ps(px.add(i), mask(n - i)) };
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
            s1a = _mm256_add_pd(s1a, lo);
            s2a = _mm256_fmadd_pd(lo, lo, s2a);
            s1b = _mm256_add_pd(s1b, hi);
            s2b = _mm256_fmadd_pd(hi, hi, s2b);
        }
        let s1 = hsum_pd(_mm256_add_pd(s1a, s1b));
        let s2 = hsum_pd(_mm256_add_pd(s2a, s2b));
        let (mean, rstd) = finish_stats(s1, s2, n, eps);
        let (mv, rv) = (_mm256_set1_ps(mean), _mm256_set1_ps(rstd));
        let (pg, pb, po) = (gamma.as_ptr(), beta.as_ptr(), out.as_mut_ptr());
        for i in (0..n).step_by(L) {
            let k = mask(n - i);
            // SAFETY: `gamma`, `beta` and `out` have length n (checked by the caller); i < n and
            // `k` enables only lanes below n.
            unsafe {
                let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(px.add(i), k), mv), rv);
                let y = _mm256_fmadd_ps(t, _mm256_maskload_ps(pg.add(i), k), _mm256_maskload_ps(pb.add(i), k));
                _mm256_maskstore_ps(po.add(i), k, y);
            }
        }
        (mean, rstd)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_stats(row: &[f32]) -> (f32, f32) {
        let n = row.len();
        let p = row.as_ptr();
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut m = _mm256_set1_ps(-f32::MAX);
        let mut s = _mm256_setzero_ps();
        let mut i = 0;
        while i + 4 * L <= n {
            // SAFETY: i + 32 ≤ n, so the four loads read row[i..i + 32].
            let (x0, x1, x2, x3) = unsafe {
                (
                    _mm256_loadu_ps(p.add(i)),
                    _mm256_loadu_ps(p.add(i + L)),
                    _mm256_loadu_ps(p.add(i + 2 * L)),
                    _mm256_loadu_ps(p.add(i + 3 * L)),
                )
            };
            let mn = _mm256_max_ps(m, _mm256_max_ps(_mm256_max_ps(x0, x1), _mm256_max_ps(x2, x3)));
            let e01 = _mm256_add_ps(exp(_mm256_sub_ps(x0, mn)), exp(_mm256_sub_ps(x1, mn)));
            let e23 = _mm256_add_ps(exp(_mm256_sub_ps(x2, mn)), exp(_mm256_sub_ps(x3, mn)));
            s = _mm256_fmadd_ps(s, exp(_mm256_sub_ps(m, mn)), _mm256_add_ps(e01, e23));
            m = mn;
            i += 4 * L;
        }
        while i < n {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes inside `row`; the others become −∞.
            let x = unsafe { _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(p.add(i), k), _mm256_castsi256_ps(k)) };
            let mn = _mm256_max_ps(m, x);
            s = _mm256_fmadd_ps(s, exp(_mm256_sub_ps(m, mn)), exp(_mm256_sub_ps(x, mn)));
            m = mn;
            i += L;
        }
        let max = hmax(m);
        let sum = hsum(_mm256_mul_ps(s, exp(_mm256_sub_ps(m, _mm256_set1_ps(max)))));
        (max, sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_write(row: &mut [f32], max: f32, inv: f32) {
        let (n, p) = (row.len(), row.as_mut_ptr());
        let (mv, iv) = (_mm256_set1_ps(max), _mm256_set1_ps(inv));
        let mut i = 0;
        while i + L <= n {
            // SAFETY: i + 8 ≤ n.
            unsafe {
                let x = _mm256_loadu_ps(p.add(i));
                _mm256_storeu_ps(p.add(i), _mm256_mul_ps(exp(_mm256_sub_ps(x, mv)), iv));
            }
            i += L;
        }
        if i < n {
            let k = mask(n - i);
            // SAFETY: i < n and `k` enables only lanes inside `row`.
            unsafe {
                let x = _mm256_maskload_ps(p.add(i), k);
                _mm256_maskstore_ps(p.add(i), k, _mm256_mul_ps(exp(_mm256_sub_ps(x, mv)), iv));
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn gelu(x: __m256) -> __m256 {
        let x3 = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_CUBIC), x), x), x);
        let e = exp(_mm256_mul_ps(_mm256_set1_ps(-GELU_C2), _mm256_add_ps(x, x3)));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn bias_gelu(y: &mut [f32], bias: &[f32]) {
        let w = bias.len();
        let pb = bias.as_ptr();
        for row in y.chunks_exact_mut(w) {
            let py = row.as_mut_ptr();
            let mut j = 0;
            while j + L <= w {
                // SAFETY: `row` and `bias` have length w and j + 8 ≤ w.
                unsafe {
                    let x = _mm256_add_ps(_mm256_loadu_ps(py.add(j)), _mm256_loadu_ps(pb.add(j)));
                    _mm256_storeu_ps(py.add(j), gelu(x));
                }
                j += L;
            }
            if j < w {
                let k = mask(w - j);
                // SAFETY: j < w and `k` enables only lanes below w.
                unsafe {
                    let x = _mm256_add_ps(_mm256_maskload_ps(py.add(j), k), _mm256_maskload_ps(pb.add(j), k));
                    _mm256_maskstore_ps(py.add(j), k, gelu(x));
                }
            }
        }
    }

    /// GELU in place over a whole slice (no bias).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_slice(y: &mut [f32]) {
        let n = y.len();
        let py = y.as_mut_ptr();
        let mut j = 0;
        while j + L <= n {
            // SAFETY: j + 8 ≤ n.
            unsafe { _mm256_storeu_ps(py.add(j), gelu(_mm256_loadu_ps(py.add(j)))) };
            j += L;
        }
        if j < n {
            let k = mask(n - j);
            // SAFETY: j < n and `k` enables only lanes below n.
            unsafe { _mm256_maskstore_ps(py.add(j), k, gelu(_mm256_maskload_ps(py.add(j), k))) };
        }
    }

    /// Lane `t` of the result is the sum of the 8 lanes of `v[t]`: three levels of `hadd` and
    /// one cross-half add (6 `hadd`s, 2 permutes, 1 add) instead of 8 separate reductions.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn sum_lanes_8(v: [__m256; 8]) -> __m256 {
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7].
        let t0 = _mm256_hadd_ps(v[0], v[1]);
        let t1 = _mm256_hadd_ps(v[2], v[3]);
        let t2 = _mm256_hadd_ps(v[4], v[5]);
        let t3 = _mm256_hadd_ps(v[6], v[7]);
        // [v0₀₋₃, v1₀₋₃, v2₀₋₃, v3₀₋₃ | v0₄₋₇, v1₄₋₇, v2₄₋₇, v3₄₋₇], and likewise for v4..v7.
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
    }

    /// Blocks of 8 keys, one register of partial sums per key; see the AVX-512 version.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn decode_attention(q: &[f32], keys: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let slots = keys.len() / hd;
        out.fill(0.0);
        let (pq, pk, pv, po) = (q.as_ptr(), keys.as_ptr(), values.as_ptr(), out.as_mut_ptr());
        let (mut m, mut l) = (-f32::MAX, 0.0f32);
        let mut tile = [0.0f32; L];
        for j0 in (0..slots).step_by(L) {
            let nb = L.min(slots - j0);
            // Offsets of the block's K and V rows, all < slots·hd (a partial block repeats its
            // last key, which then gets score −∞ and weight 0).
            let rows: [usize; L] = std::array::from_fn(|t| (j0 + t.min(nb - 1)) * hd);
            let mut acc = [_mm256_setzero_ps(); L];
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these read inside `q`
                // (length hd) and inside rows[t]/hd < slots of `keys` (length slots·hd).
                unsafe {
                    let qc = _mm256_maskload_ps(pq.add(c), k);
                    for t in 0..L {
                        acc[t] = _mm256_fmadd_ps(qc, _mm256_maskload_ps(pk.add(rows[t] + c), k), acc[t]);
                    }
                }
            }
            let scores = _mm256_mul_ps(sum_lanes_8(acc), _mm256_set1_ps(scale));
            let sv = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), scores, _mm256_castsi256_ps(mask(nb)));
            let bm = m.max(hmax(sv));
            let alpha = exp_fast(m - bm);
            let weights = exp(_mm256_sub_ps(sv, _mm256_set1_ps(bm)));
            l = l * alpha + hsum(weights);
            // SAFETY: `tile` holds 8 floats.
            unsafe { _mm256_storeu_ps(tile.as_mut_ptr(), weights) };
            let av = _mm256_set1_ps(alpha);
            for c in (0..hd).step_by(L) {
                let k = mask(hd - c);
                // SAFETY: c < hd and `k` enables lanes below hd, so these touch only `out`
                // (length hd) and rows[t]/hd < slots of `values` (length slots·hd).
                unsafe {
                    let mut o = [
                        _mm256_mul_ps(_mm256_maskload_ps(po.add(c), k), av),
                        _mm256_setzero_ps(),
                        _mm256_setzero_ps(),
                        _mm256_setzero_ps(),
                    ];
                    for t in 0..L {
                        let vr = _mm256_maskload_ps(pv.add(rows[t] + c), k);
                        o[t % 4] = _mm256_fmadd_ps(_mm256_set1_ps(tile[t]), vr, o[t % 4]);
                    }
                    let o = _mm256_add_ps(_mm256_add_ps(o[0], o[1]), _mm256_add_ps(o[2], o[3]));
                    _mm256_maskstore_ps(po.add(c), k, o);
                }
            }
            m = bm;
        }
        let inv = _mm256_set1_ps(1.0 / l);
        for c in (0..hd).step_by(L) {
            let k = mask(hd - c);
            // SAFETY: c < hd and `k` enables only lanes inside `out`.
            unsafe { _mm256_maskstore_ps(po.add(c), k, _mm256_mul_ps(_mm256_maskload_ps(po.add(c), k), inv)) };
        }
    }
}
