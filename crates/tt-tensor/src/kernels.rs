//! Plain-array kernels with no autograd bookkeeping.
//!
//! These are the reference building blocks that both the differentiable ops and inference paths
//! use, and that performance modules replace layer by layer. All matrix products go through
//! `matrixmultiply::sgemm`; no op runs a scalar triple loop.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder};

/// `C = alpha * A·B + beta * C` on 2-D views of any strides (transposes are free: pass `.t()`).
///
/// # Panics
/// If the inner dimensions differ or `c` is not `[a.rows, b.cols]` (the tensor ops check shapes
/// and return errors before calling it).
pub fn gemm(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm inner dimensions");
    assert_eq!(c.dim(), (m, n), "gemm output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.mapv_inplace(|v| v * beta);
        return;
    }
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    let (rsc, csc) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose dims were checked above,
    // so every index sgemm computes (i*rs + j*cs for i<rows, j<cols) is inside its view. `c` is a
    // unique mutable view, so it does not alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}

/// `A·B` into a new array.
pub fn matmul2(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(1.0, a, b, 0.0, c.view_mut());
    c
}

/// Dot product with 8 independent accumulators so the compiler can vectorize the reduction
/// (a single accumulator forces one sequential add chain).
///
/// # Panics
/// If the lengths differ (zipping would otherwise drop the tail silently in release builds).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: slice lengths differ");
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Rows at or above which a matrix product uses GEMM (packing pays off) instead of dot products.
pub const GEMM_MIN_ROWS: usize = 8;

/// `y[r, :] = x[r, :]·Wᵀ + b` for `rows` rows; `w` is `[out, in]` row-major, `b` `[out]` or none.
/// Few rows (decode): each weight row is loaded once and dotted with every input row.
/// Many rows (prefill): one GEMM. The dense f32 [`Projection`](crate::projection::Projection).
///
/// # Panics
/// If a slice is shorter than its stated size.
pub fn linear_rows(x: &[f32], w: &[f32], b: Option<&[f32]>, rows: usize, in_f: usize, out_f: usize, y: &mut [f32]) {
    let fits = |len: usize, a: usize, b: usize| a.checked_mul(b).is_some_and(|n| len >= n);
    assert!(fits(x.len(), rows, in_f) && fits(w.len(), out_f, in_f) && fits(y.len(), rows, out_f), "linear_rows sizes");
    assert!(b.is_none_or(|b| b.len() == out_f), "linear_rows bias length");
    if rows >= GEMM_MIN_ROWS {
        let xv = ArrayView2::from_shape((rows, in_f), &x[..rows * in_f]).expect("sized above");
        let wv = ArrayView2::from_shape((out_f, in_f), &w[..out_f * in_f]).expect("sized above");
        let beta = match b {
            Some(b) => {
                for r in 0..rows {
                    y[r * out_f..(r + 1) * out_f].copy_from_slice(b);
                }
                1.0
            }
            None => 0.0,
        };
        let yv = ArrayViewMut2::from_shape((rows, out_f), &mut y[..rows * out_f]).expect("sized above");
        gemm(1.0, xv, wv.t(), beta, yv);
        return;
    }
    for o in 0..out_f {
        let wr = &w[o * in_f..(o + 1) * in_f];
        let bo = b.map_or(0.0, |b| b[o]);
        for r in 0..rows {
            y[r * out_f + o] = dot(wr, &x[r * in_f..(r + 1) * in_f]) + bo;
        }
    }
}

/// Reference for [`linear_rows`]: straightforward sums in index order.
pub fn linear_rows_reference(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    in_f: usize,
    out_f: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; rows * out_f];
    for r in 0..rows {
        for o in 0..out_f {
            let mut s = b.map_or(0.0, |b| b[o]);
            for i in 0..in_f {
                s += x[r * in_f + i] * w[o * in_f + i];
            }
            y[r * out_f + o] = s;
        }
    }
    y
}

/// `rows` rows of `cols` floats, `stride` floats apart, starting at `data[0]` (a head's slice of
/// a packed QKV buffer has stride `3·d`; a KV-cache block has stride `head_dim`).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> Rows<'a> {
    /// Whether every row lies inside `data` (checked arithmetic: a stride that wraps is not).
    fn fits(&self) -> bool {
        self.rows.checked_sub(1).is_none_or(|last| {
            last.checked_mul(self.stride)
                .and_then(|o| o.checked_add(self.cols))
                .is_some_and(|end| end <= self.data.len())
        })
    }
    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..i * self.stride + self.cols]
    }
    fn view(&self) -> ArrayView2<'a, f32> {
        ArrayView2::from_shape((self.rows, self.cols).strides((self.stride, 1)), self.data).expect("rows inside data")
    }
}

/// One causal attention head: `n` queries that are the **last `n`** of `slots` positions attend
/// to the keys at and before their own position. Writes the probabilities `[n, slots]` (row `t`
/// is `softmax(scale·q_t·Kᵀ)` over its `slots − n + t + 1` visible keys, zeros after) into
/// `probs`, and `P·V` into `out` (`n` rows of `head_dim`, `out_stride` apart).
///
/// The one kernel behind both tt-transformer's fused attention (`n = slots`, the whole
/// sequence) and the KV-cached decoder (`n` new tokens over the cache). Many queries use GEMM
/// over strided views; few use one dot product per key.
///
/// # Panics
/// If shapes disagree (`q.cols = k.cols = v.cols`, `k.rows = v.rows = slots ≥ n = q.rows`) or a
/// buffer is short.
pub fn attention_head(q: Rows, k: Rows, v: Rows, scale: f32, probs: &mut [f32], out: &mut [f32], out_stride: usize) {
    attention_head_with(q, k, v, scale, probs, out, out_stride, &softmax_row);
}

/// [`attention_head`] with `softmax` for each row of probabilities (a fused row kernel; it
/// receives the visible prefix of the row).
///
/// # Panics
/// As [`attention_head`].
pub fn attention_head_with(
    q: Rows,
    k: Rows,
    v: Rows,
    scale: f32,
    probs: &mut [f32],
    out: &mut [f32],
    out_stride: usize,
    softmax: &dyn Fn(&mut [f32]),
) {
    let (n, slots, hd) = (q.rows, k.rows, q.cols);
    assert!(k.cols == hd && v.cols == hd && v.rows == slots && n <= slots, "attention_head shapes");
    assert!(q.fits() && k.fits() && v.fits(), "attention_head: rows outside their data");
    let probs_len = n.checked_mul(slots);
    let out_len = n.checked_sub(1).map_or(Some(0), |last| last.checked_mul(out_stride).and_then(|o| o.checked_add(hd)));
    let fits = |need: Option<usize>, have: usize| need.is_some_and(|need| have >= need);
    assert!(fits(probs_len, probs.len()) && fits(out_len, out.len()), "attention_head buffers");
    let probs = &mut probs[..n * slots];
    if n >= GEMM_MIN_ROWS {
        gemm(scale, q.view(), k.view().t(), 0.0, ArrayViewMut2::from_shape((n, slots), &mut *probs).expect("sized"));
        for t in 0..n {
            let visible = slots - n + t + 1;
            let row = &mut probs[t * slots..(t + 1) * slots];
            softmax(&mut row[..visible]);
            row[visible..].fill(0.0);
        }
        let o = ArrayViewMut2::from_shape((n, hd).strides((out_stride, 1)), out).expect("out inside buffer");
        gemm(1.0, ArrayView2::from_shape((n, slots), &*probs).expect("sized"), v.view(), 0.0, o);
        return;
    }
    for t in 0..n {
        let qt = q.row(t);
        let visible = slots - n + t + 1;
        let row = &mut probs[t * slots..(t + 1) * slots];
        for (j, sj) in row[..visible].iter_mut().enumerate() {
            *sj = dot(qt, k.row(j)) * scale;
        }
        softmax(&mut row[..visible]);
        row[visible..].fill(0.0);
        let o = &mut out[t * out_stride..t * out_stride + hd];
        o.fill(0.0);
        for (j, &p) in row[..visible].iter().enumerate() {
            for (oi, &vv) in o.iter_mut().zip(v.row(j)) {
                *oi += p * vv;
            }
        }
    }
}

/// The row kernels an inference loop runs between its projections, chosen once when the engine
/// is built — the second half of the seam (projections are the first): tt-accel supplies fused
/// SIMD versions, the decoder never names them. Plain function pointers: no allocation, no
/// dynamic state, one indirect call per row.
#[derive(Debug, Clone, Copy)]
pub struct RowKernels {
    /// Short name for reports (`"reference"`, `"fused-avx512"`, …).
    pub name: &'static str,
    /// `out = (x − mean)/√(var + eps)·gamma + beta` over one row.
    pub layer_norm: LayerNormFn,
    /// GELU (tanh form) in place over a slice.
    pub gelu: RowFn,
    /// A softmax row in place: prefill attention's probability rows.
    pub softmax: RowFn,
    /// One query `q` (`head_dim`) against `keys`/`values` (`[slots, head_dim]`, contiguous):
    /// `out = softmax(scale·q·Kᵀ)·V`. `scores` has room for `slots` floats (a kernel may use it).
    pub decode_attention: DecodeAttentionFn,
    /// Optionally, every head of one decode step at once (a kernel that splits heads across
    /// cores); `None` runs [`RowKernels::decode_attention`] head by head.
    pub decode_attention_heads: Option<DecodeHeadsFn>,
    /// [`RowKernels::decode_attention`] over an int8 KV cache: keys and values as codes with one
    /// scale per row (see [`Q8Head`]), dequantized on the fly.
    pub decode_attention_q8: DecodeAttentionQ8Fn,
    /// Optionally, every head of a prefill chunk (many queries) at once, e.g. split across cores;
    /// `None` runs [`attention_head`] head by head. Each head must be computed as
    /// [`attention_head`] computes it, so the result does not depend on the split.
    pub prefill_attention_heads: Option<PrefillHeadsFn>,
}

/// All heads of a chunk of `rows` new queries of one sequence (the last `rows` of `slots`
/// positions): head `h`'s queries are columns `h·head_dim..` of `q`'s rows (`q_stride` apart),
/// its cached keys and values start at `h · head_stride` in `keys` / `values`; head `h`'s output
/// goes to columns `h·head_dim..` of `out`'s rows (`out_stride` apart).
#[derive(Debug)]
pub struct PrefillHeadsJob<'a> {
    pub q: &'a [f32],
    pub q_stride: usize,
    pub rows: usize,
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub heads: usize,
    pub head_dim: usize,
    pub head_stride: usize,
    pub slots: usize,
    pub scale: f32,
}

/// See [`RowKernels::prefill_attention_heads`]: `(job, out, out_stride)`.
pub type PrefillHeadsFn = fn(job: &PrefillHeadsJob, out: &mut [f32], out_stride: usize);

/// One head's int8-cached keys and values: `keys`/`values` are `[slots, head_dim]` codes, row
/// `j` of the keys is `key_scales[j]·keys[j·head_dim..]` (likewise values).
#[derive(Debug, Clone, Copy)]
pub struct Q8Head<'a> {
    pub keys: &'a [i8],
    pub key_scales: &'a [f32],
    pub values: &'a [i8],
    pub value_scales: &'a [f32],
}

/// `(q, kv, scale, scores, out)`: see [`RowKernels::decode_attention_q8`].
pub type DecodeAttentionQ8Fn = fn(q: &[f32], kv: &Q8Head, scale: f32, scores: &mut [f32], out: &mut [f32]);

/// The reference for [`RowKernels::decode_attention_q8`]: scores `scale·d_kⱼ·(q·k_j)` into
/// `scores` (`slots` floats), a softmax over them, then `out = Σ_j p_j·d_vⱼ·v_j` — the f32
/// attention over the dequantized rows, summed in index order.
///
/// # Panics
/// If `scores` holds fewer than `slots` floats or `out` fewer than `q.len()` (the decoder sizes
/// both).
pub fn decode_attention_q8_reference(q: &[f32], kv: &Q8Head, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let hd = q.len();
    let slots = kv.key_scales.len();
    for j in 0..slots {
        let k = &kv.keys[j * hd..(j + 1) * hd];
        let d: f32 = q.iter().zip(k).map(|(&a, &c)| a * c as f32).sum();
        scores[j] = scale * kv.key_scales[j] * d;
    }
    softmax_row(&mut scores[..slots]);
    out[..hd].fill(0.0);
    for j in 0..slots {
        let w = scores[j] * kv.value_scales[j];
        for (o, &c) in out[..hd].iter_mut().zip(&kv.values[j * hd..(j + 1) * hd]) {
            *o += w * c as f32;
        }
    }
}

/// All heads of one query position: `q` holds `heads` queries of `head_dim` side by side; head
/// `h`'s `slots` cached keys and values start at `h · head_stride` in `keys` / `values`; head `h`'s
/// output goes to `out[h·head_dim..]`.
#[derive(Debug)]
pub struct HeadsJob<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub heads: usize,
    pub head_dim: usize,
    pub head_stride: usize,
    pub slots: usize,
    pub scale: f32,
}

/// See [`RowKernels::decode_attention_heads`].
pub type DecodeHeadsFn = fn(job: &HeadsJob, out: &mut [f32]);

/// An in-place row kernel — GELU, softmax: what [`RowKernels`] holds for them, and what a
/// projection applies to its output rows as an epilogue
/// ([`crate::Projection::forward_rows_gelu`]).
pub type RowFn = fn(&mut [f32]);

/// `(x, gamma, beta, eps, out)`: see [`RowKernels::layer_norm`].
pub type LayerNormFn = fn(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]);
/// `(q, keys, values, head_dim, scale, scores, out)`: see [`RowKernels::decode_attention`].
pub type DecodeAttentionFn =
    fn(q: &[f32], keys: &[f32], values: &[f32], head_dim: usize, scale: f32, scores: &mut [f32], out: &mut [f32]);

impl RowKernels {
    /// The plain kernels of this module.
    pub fn reference() -> RowKernels {
        RowKernels {
            name: "reference",
            layer_norm: |x, g, b, eps, out| {
                layer_norm_row(x, g, b, eps, out);
            },
            gelu: |h| h.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
            softmax: softmax_row,
            decode_attention: |q, keys, values, hd, scale, scores, out| {
                let slots = keys.len() / hd;
                let rows = |data| Rows { data, rows: slots, cols: hd, stride: hd };
                attention_head(
                    Rows { data: q, rows: 1, cols: hd, stride: hd },
                    rows(keys),
                    rows(values),
                    scale,
                    scores,
                    out,
                    hd,
                );
            },
            decode_attention_heads: None,
            decode_attention_q8: decode_attention_q8_reference,
            prefill_attention_heads: None,
        }
    }
}

/// Reference for [`attention_head`]: scores, causal softmax and `P·V` by index-order sums in f64.
pub fn attention_head_reference(q: Rows, k: Rows, v: Rows, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let (n, slots, hd) = (q.rows, k.rows, q.cols);
    let mut probs = vec![0.0f32; n * slots];
    let mut out = vec![0.0f32; n * hd];
    for t in 0..n {
        let visible = slots - n + t + 1;
        let s: Vec<f64> = (0..visible)
            .map(|j| scale as f64 * (0..hd).map(|i| q.row(t)[i] as f64 * k.row(j)[i] as f64).sum::<f64>())
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = s.iter().map(|x| (x - max).exp()).sum();
        let mut acc = vec![0.0f64; hd];
        for j in 0..visible {
            let p = (s[j] - max).exp() / total;
            probs[t * slots + j] = p as f32;
            for i in 0..hd {
                acc[i] += p * v.row(j)[i] as f64;
            }
        }
        for i in 0..hd {
            out[t * hd + i] = acc[i] as f32;
        }
    }
    (probs, out)
}

/// Output size of a convolution or pooling window along one axis; `None` when there is none
/// (a kernel or stride of 0, a kernel larger than the padded input, or a padded size that
/// overflows `usize`).
pub fn conv_out_size(input: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = padding.checked_mul(2).and_then(|p| input.checked_add(p))?;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

/// Geometry of a 2-D convolution over one image.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub h_out: usize,
    pub w_out: usize,
}

/// Unfolds one image `[c_in, h, w]` into columns `[c_in*kh*kw, h_out*w_out]` (zero padding).
///
/// # Panics
/// If `img` or `cols` is shorter than `g` says.
pub fn im2col(img: &[f32], g: &ConvGeom, cols: &mut [f32]) {
    let hw_out = g.h_out * g.w_out;
    debug_assert_eq!(cols.len(), g.c_in * g.kh * g.kw * hw_out);
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * hw_out..(row + 1) * hw_out];
                for oy in 0..g.h_out {
                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                    let out_row = &mut dst[oy * g.w_out..(oy + 1) * g.w_out];
                    if iy < 0 || iy >= g.h as isize {
                        out_row.fill(0.0);
                        continue;
                    }
                    let src = &img[(c * g.h + iy as usize) * g.w..(c * g.h + iy as usize + 1) * g.w];
                    for (ox, o) in out_row.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        *o = if ix < 0 || ix >= g.w as isize { 0.0 } else { src[ix as usize] };
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: scatters-adds columns back into an image gradient `[c_in, h, w]`.
///
/// # Panics
/// If `cols` or `img` is shorter than `g` says.
pub fn col2im(cols: &[f32], g: &ConvGeom, img: &mut [f32]) {
    let hw_out = g.h_out * g.w_out;
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * hw_out..(row + 1) * hw_out];
                for oy in 0..g.h_out {
                    let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let base = (c * g.h + iy as usize) * g.w;
                    for ox in 0..g.w_out {
                        let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                        if ix >= 0 && (ix as usize) < g.w {
                            img[base + ix as usize] += src[oy * g.w_out + ox];
                        }
                    }
                }
            }
        }
    }
}

/// `e^x` without a libm call, so loops over slices vectorize: `x = n·ln2 + r` with `n` rounded
/// by the 1.5·2²³ trick and `|r| ≤ ln2/2`, `e^r` by its degree-6 Taylor polynomial (truncation
/// error `r⁷/7! < 1.1e-7` relative), then scaled by `2ⁿ` through the exponent bits.
/// Over/underflows like `f32::exp`: +∞ above 88.72, 0 below −87.33. Checked against `f32::exp`.
#[inline]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln2 split so n·LN2_HI is exact for |n| < 2^9
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let xc = x.clamp(-87.33, 88.72);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x > 88.72 {
        f32::INFINITY
    } else if x < -87.33 {
        0.0
    } else {
        y
    }
}

/// tanh-form GELU, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, evaluated as the identical
/// `x·σ(2u)` (since `0.5·(1 + tanh u) = σ(2u)`): one `exp` instead of a slower `tanh`.
/// For x → −∞, `exp` overflows to +∞ and the result is −0, as the limit requires.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C2: f32 = 2.0 * 0.797_884_6; // 2·sqrt(2/pi)
    x / (1.0 + exp_fast(-C2 * (x + 0.044715 * x * x * x)))
}

/// Derivative of [`gelu_tanh`]: `s + x·s·(1 − s)·2u'`, with `s = σ(2u)`, `u' = √(2/π)(1 + 3·0.044715·x²)`.
#[inline]
pub fn gelu_tanh_grad(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    let s = 1.0 / (1.0 + exp_fast(-2.0 * C * (x + 0.044715 * x * x * x)));
    let du = C * (1.0 + 3.0 * 0.044715 * x * x);
    s + x * s * (1.0 - s) * 2.0 * du
}

/// Index of the first maximum; NaN never wins (0 for an empty or all-NaN input). Takes a slice or
/// any iterator of `&f32` (e.g. a strided ndarray lane), so no copy is needed.
pub fn argmax<'a>(v: impl IntoIterator<Item = &'a f32>) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.into_iter().enumerate() {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best
}

/// Numerically stable softmax of one row, in place (subtracts the row max before exp).
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = exp_fast(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Layer normalization of one row with affine parameters; returns (mean, 1/std).
///
/// # Panics
/// If `gamma`, `beta` or `out` is shorter than `x`.
pub fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
    }
    (mean, rstd)
}

/// RMS normalization of one row (Llama): `out[i] = gamma[i] · (r · x[i])` with
/// `r = 1/√(Σx²/n + eps)`, in llama2.c's order of operations (so a model run here and by its
/// `run.c` round alike); returns `r`.
///
/// # Panics
/// If `gamma` or `out` is shorter than `x`.
pub fn rms_norm_row(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + eps;
    let r = 1.0 / ss.sqrt();
    for i in 0..x.len() {
        out[i] = gamma[i] * (r * x[i]);
    }
    r
}

/// SiLU (swish): `x·σ(x)`, written as llama2.c writes it.
pub fn silu(x: f32) -> f32 {
    x * (1.0 / (1.0 + (-x).exp()))
}

/// d/dx of [`silu`]: `σ(x)·(1 + x·(1 − σ(x)))`.
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

/// Which dimensions of a head rotary embeddings rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopePairs {
    /// `(2i, 2i+1)`: llama2.c and Meta's original checkpoints.
    #[default]
    Interleaved,
    /// `(i, i + head_dim/2)`: Hugging Face's `LlamaForCausalLM`.
    HalfSplit,
}

/// Rotary position embedding angles for positions `0..positions` of a head of `head_dim`
/// (even): pair `i` at position `p` turns by `p · θ^(−2i/head_dim)`. Computed in f32 exactly as
/// llama2.c's `run.c` computes them, so both rotate by the same bits.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    pairs: RopePairs,
}

impl RopeTable {
    /// # Errors
    /// An odd or zero `head_dim`, a `theta` that is not finite and > 1, or a table larger than
    /// `positions · head_dim / 2` values can hold.
    pub fn new(positions: usize, head_dim: usize, theta: f32, pairs: RopePairs) -> crate::Result<RopeTable> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(crate::TensorError::arg("RopeTable", format!("head_dim {head_dim} must be even and > 0")));
        }
        if !(theta.is_finite() && theta > 1.0) {
            return Err(crate::TensorError::arg("RopeTable", format!("theta {theta} must be finite and > 1")));
        }
        let half = head_dim / 2;
        let n = positions
            .checked_mul(half)
            .ok_or_else(|| crate::TensorError::arg("RopeTable", format!("{positions} × {half} angles overflow")))?;
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for p in 0..positions {
            for i in 0..half {
                let freq = 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32);
                let angle = p as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(RopeTable { cos, sin, half, pairs })
    }

    /// Positions the table covers.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half
    }

    pub fn head_dim(&self) -> usize {
        2 * self.half
    }

    pub fn pairs(&self) -> RopePairs {
        self.pairs
    }

    /// Rotates one head's vector `x` (`head_dim` values) to position `pos`; `inverse` turns it
    /// back (the rotation's transpose: what the backward pass applies to a gradient).
    ///
    /// # Panics
    /// `pos` past [`RopeTable::positions`] or `x` not `head_dim` long.
    pub fn rotate(&self, x: &mut [f32], pos: usize, inverse: bool) {
        assert!(x.len() == 2 * self.half && pos < self.positions(), "RopeTable::rotate sizes");
        let (c, s) = (&self.cos[pos * self.half..][..self.half], &self.sin[pos * self.half..][..self.half]);
        for i in 0..self.half {
            let (a, b) = match self.pairs {
                RopePairs::Interleaved => (2 * i, 2 * i + 1),
                RopePairs::HalfSplit => (i, i + self.half),
            };
            let (v0, v1) = (x[a], x[b]);
            let si = if inverse { -s[i] } else { s[i] };
            x[a] = v0 * c[i] - v1 * si;
            x[b] = v0 * si + v1 * c[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_matches_libm() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_fast(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        // A few ulp (f32 ulp is 1.2e-7 relative).
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(exp_fast(100.0), f32::INFINITY);
        assert_eq!(exp_fast(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_fast(-100.0), 0.0);
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        // GELU's x → −∞ limit is −0 and stays finite.
        assert_eq!(gelu_tanh(-1e30), 0.0);
        assert_eq!(gelu_tanh(1e3), 1e3);
    }
}
