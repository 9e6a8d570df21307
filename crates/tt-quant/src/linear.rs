//! [`Int8Linear`]: an int8 weight as a `tt_tensor::Projection`, computing in integers.
//!
//! Per call, for each input row:
//! 1. quantize the row to u8 into the caller's workspace — **dynamic**: with its own affine
//!    `(S_a, Z_a)` from the row's range; **static**: with `(S_a, Z_a)` frozen by calibration;
//! 2. `acc = Σ_i a_i·w_i` in i32 ([`PackedI8::matmul`], VNNI / AVX2 / scalar, all exact);
//! 3. fold the zero points in with sums precomputed at construction,
//!    `Σ (a − Z_a)(w − Z_w) = acc − Z_a·Σw − Z_w·(Σa − K·Z_a)`, and scale back:
//!    `y = (S_a·S_w[o])·t + b[o]`.
//!
//! Steps 1 and 3 perform the same IEEE operations in the same order at every level (scalar, or
//! AVX-512 at the VNNI level: see `rowops`), and step 2 is exact, so the outputs are
//! bit-identical at every level (tested). Against the float formula on the dequantized operands,
//! `Σ S_a(a − Z_a)·S_w(w − Z_w) + b`, they agree to f32 rounding of the final scaling (tested).
//!
//! A row with a NaN or infinite input yields NaN outputs (the dense layer would propagate them
//! too), rather than numbers computed from a clamped code.
//!
//! ## Per-group weights (Q8_0)
//! Symmetric weights with one scale per group of `g` inputs of a row (ggml's Q8_0 at `g = 32`,
//! llama2.c's `runq.c` at 64; any `g ≥ 1`: a group wider than the row is the row, and when `g`
//! does not divide the row its last group is the shorter remainder, with its own scale) run the
//! group kernels of [`crate::kernels::group`]: per group, the exact i32 sum
//! `t_g = Σ_{i∈g} (a_i − Z_a)·w_i`, folded into an f32 sum `f = Σ_g t_g·S_w[o, g]` in group order,
//! then `y = f·S_a + b[o]`. Every level runs the same float operations in that one order, so the
//! outputs are again bit-identical at every level (tested), and agree with the float formula to
//! the rounding of the f32 steps alone: per output a product and a sum per group, the scaling
//! and the bias, `2G + 2` roundings of at most `2⁻²⁴` of `Σ_i |â_i·ŵ_i| + |b|` each (`G` groups;
//! groups wider than 518 inputs add the conversion of `t_g`, exact below 2²⁴). The test allows
//! `(2G + 3)·2⁻²⁴` of that sum.
//!
//! The activations stay quantized **per row, affine u8**, as for per-channel weights — where
//! `runq.c` quantizes them per group, symmetric int8. Per row keeps one activation path for
//! every weight format (the same rounding, NaN handling and workspace, so per-group and
//! per-channel layers differ only in the weights), and u8 is the operand `vpdpbusd` takes
//! (signed activations would need a shift by 128 and its correction anyway, the same work as
//! `Z_a`'s). Per-group activation scales would add a multiply per group and row to the fold,
//! a quantization pass per group, and a scale per group to the workspace, and they help only
//! rows whose range one outlier dominates; the weights' groups are where Q8_0's accuracy comes
//! from. Only symmetric per-group weights are accepted: an affine zero point
//! per group would need the activations' sum per group in every row.
//!
//! ## One copy of the weight
//! The layer keeps what its kernel reads and nothing else — the packed codes, and per output
//! (or per output and group) the scales, code sums and affine zero points. The
//! [`QuantizedMatrix`] it was built from is rebuilt from those when asked for
//! ([`Int8Linear::weight`]: checkpoints, `to_dense`, reports), so [`Projection::storage_bytes`]
//! is every byte the layer holds for its weight.

use ndarray::Array2;
use tt_tensor::kernels::RowFn;
use tt_tensor::Projection;

use crate::error::{QuantError, Result};
use crate::kernels::group::PackedGroups;
use crate::kernels::{IntLevel, PackedI8};
use crate::rowops;
use crate::scheme::{Granularity, QParams, QRange, QuantizedMatrix, Scheme};

/// How the inputs of an int8 layer are quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activations {
    /// Per row at run time, affine u8 from the row's own range.
    Dynamic,
    /// Frozen affine u8 `(S, Z)` from calibration; out-of-range inputs clamp.
    Static(QParams),
}

/// What to quantize a layer's weight with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightConfig {
    pub scheme: Scheme,
    pub granularity: Granularity,
}

impl WeightConfig {
    /// PyTorch's default for weights: symmetric, per output channel.
    pub const PER_CHANNEL: WeightConfig =
        WeightConfig { scheme: Scheme::Symmetric, granularity: Granularity::PerChannel };
    /// One symmetric scale for the whole matrix.
    pub const PER_TENSOR: WeightConfig =
        WeightConfig { scheme: Scheme::Symmetric, granularity: Granularity::PerTensor };
}

/// An int8 weight with integer kernels (see the module docs).
#[derive(Debug, Clone)]
pub struct Int8Linear {
    kernel: Kernel,
    /// The weight's scheme and granularity: with the kernel's parts, what rebuilds its
    /// [`QuantizedMatrix`].
    scheme: Scheme,
    granularity: Granularity,
    activations: Activations,
    level: IntLevel,
}

/// The weight as its kernel reads it — the layer's only copy.
#[derive(Debug, Clone)]
enum Kernel {
    /// One scale per output (per-tensor, per-channel): the i32 product, then `rowops`' epilogue.
    Rows {
        packed: PackedI8,
        /// `S_w` per output (a per-tensor scale repeated; one even with no outputs, so that the
        /// matrix can be rebuilt).
        scales: Vec<f32>,
        /// `Z_w` per output (as `scales`); `None` for symmetric weights (all 0).
        zero_points: Option<Vec<i32>>,
        /// `Σ_i q_w[o, i]` per output, for the activation zero point.
        code_sums: Vec<i32>,
    },
    /// Symmetric per-group weights: the group kernels.
    Groups(PackedGroups),
}

impl Kernel {
    fn packed(&self) -> &PackedI8 {
        match self {
            Kernel::Rows { packed, .. } => packed,
            Kernel::Groups(g) => g.packed(),
        }
    }
}

/// Per-row quantization parameters as kept in the workspace.
#[derive(Debug, Clone, Copy)]
struct RowQ {
    params: QParams,
    code_sum: i32,
    finite: bool,
}

/// A finite row's quantization as the epilogues read it: `S_a`, `Z_a`, `Σa`.
#[derive(Debug, Clone, Copy)]
struct RowIn {
    sa: f32,
    za: i32,
    asum: i32,
}

/// Where the parts of a forward call's workspace go, for `rows` rows: i32 accumulators (f32 sums
/// for per-group weights), per-row `[scale bits, Z, Σa, finite]` as u32s, per-row `Z` as i32s
/// (the group kernels' operand), then the activation bytes. The first three parts get slack (8,
/// 16 and 8 bytes, ≥ the 3 an alignment to 4 can cost) so their aligned middles still hold what
/// they need.
struct Layout {
    acc_bytes: usize,
    rowq_bytes: usize,
    za_bytes: usize,
    act_bytes: usize,
    total: usize,
}

/// `Σ_i codes[o·in_f + i]` per output (the caller has checked `codes.len() = out_f·in_f`).
pub(crate) fn row_code_sums(codes: &[i8], out_f: usize, in_f: usize) -> Vec<i32> {
    if in_f == 0 {
        return vec![0; out_f];
    }
    codes.chunks_exact(in_f).map(|row| row.iter().map(|&c| c as i32).sum()).collect()
}

impl Int8Linear {
    /// Quantizes `w` (`[out, in]`) with `cfg`, inputs quantized as `activations`; kernels at the
    /// current integer level ([`IntLevel::current`]).
    ///
    /// # Errors
    /// Non-finite weights; affine per-group weights ([`QuantError::Unsupported`]: see the module
    /// docs) or a group size of 0; more inputs than [`crate::kernels::MAX_K`]; no inputs and
    /// more than [`crate::kernels::MAX_UNBACKED`] outputs (see [`QuantizedMatrix::quantize`]).
    pub fn new(w: &Array2<f32>, cfg: WeightConfig, activations: Activations) -> Result<Int8Linear> {
        Self::from_quantized(QuantizedMatrix::quantize(w, cfg.scheme, cfg.granularity)?, activations)
    }

    /// Builds the layer over an already quantized matrix.
    ///
    /// # Errors
    /// As [`Int8Linear::new`], and static activation parameters that are not a u8 affine map.
    pub fn from_quantized(weight: QuantizedMatrix, activations: Activations) -> Result<Int8Linear> {
        if let Activations::Static(p) = activations {
            if !p.is_u8_affine() {
                return Err(QuantError::arg(
                    "Int8Linear",
                    format!("static activation parameters {p:?} are not a u8 affine map"),
                ));
            }
        }
        let (scheme, granularity) = (weight.scheme(), weight.granularity());
        let kernel = match granularity {
            Granularity::PerGroup(_) => Kernel::Groups(PackedGroups::new(&weight)?),
            Granularity::PerTensor | Granularity::PerChannel => {
                let (out_f, in_f) = (weight.rows(), weight.cols());
                let mut per_out = weight.row_params()?;
                if per_out.is_empty() {
                    // A per-tensor matrix with no rows still has its one parameter.
                    per_out.extend(weight.params().first());
                }
                Kernel::Rows {
                    packed: PackedI8::new(weight.codes(), out_f, in_f)?,
                    scales: per_out.iter().map(|p| p.scale()).collect(),
                    zero_points: (scheme == Scheme::Affine).then(|| per_out.iter().map(|p| p.zero_point()).collect()),
                    code_sums: row_code_sums(weight.codes(), out_f, in_f),
                }
            }
        };
        // `weight` is dropped here: the kernel's parts are the only copy.
        Ok(Int8Linear { kernel, scheme, granularity, activations, level: IntLevel::current() })
    }

    /// Runs the kernels at `level` (clamped to what the CPU has) instead of the current one.
    pub fn with_level(mut self, level: IntLevel) -> Int8Linear {
        self.level = level.min(IntLevel::detected());
        self
    }

    /// The quantized weight (codes, scales, zero points), rebuilt from the packed form — the
    /// same matrix the layer was built from. It costs a copy of the codes: the layer does not
    /// keep one.
    pub fn weight(&self) -> QuantizedMatrix {
        let (out_f, in_f) = self.shape();
        match &self.kernel {
            Kernel::Groups(g) => g.to_quantized(),
            Kernel::Rows { packed, scales, zero_points, .. } => {
                let param = |o: usize| {
                    let z = zero_points.as_ref().map_or(0, |z| z[o]);
                    QParams::new(scales[o], z).expect("a scale taken from a valid QParams")
                };
                let params = match self.granularity {
                    Granularity::PerTensor => vec![param(0)],
                    _ => (0..out_f).map(param).collect(),
                };
                QuantizedMatrix::from_valid_parts(out_f, in_f, packed.unpack(), params, self.scheme, self.granularity)
            }
        }
    }

    /// [`QuantizedMatrix::storage_bytes`] of [`Int8Linear::weight`] (the weight as a checkpoint
    /// stores it), without rebuilding it.
    pub fn weight_bytes(&self) -> usize {
        let (out_f, in_f) = self.shape();
        let params = QuantizedMatrix::params_len(out_f, in_f, self.granularity);
        QuantizedMatrix::stored_bytes(out_f * in_f, params, self.scheme)
    }

    /// The weight's granularity.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// How inputs are quantized.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// The packed codes the kernels read.
    pub fn packed(&self) -> &PackedI8 {
        self.kernel.packed()
    }

    /// The per-group kernel's weight (codes, scales, code sums), for per-group layers.
    pub fn groups(&self) -> Option<&PackedGroups> {
        match &self.kernel {
            Kernel::Groups(g) => Some(g),
            Kernel::Rows { .. } => None,
        }
    }

    /// The u8 code of every input of `rows` rows as `forward_rows` computes them, with each row's
    /// `(S_a, Z_a)` (`None` for a row with a non-finite value) — what tests check the float
    /// formula with.
    ///
    /// # Errors
    /// `x` shorter than `rows` rows; with no inputs, more than [`crate::kernels::MAX_UNBACKED`]
    /// rows (which `x` does not bound).
    pub fn quantize_inputs(&self, x: &[f32], rows: usize) -> Result<Vec<(Vec<u8>, Option<QParams>)>> {
        let in_f = self.shape().1;
        let unbacked = in_f == 0 && rows > crate::kernels::MAX_UNBACKED;
        if unbacked || rows.checked_mul(in_f).is_none_or(|n| x.len() < n) {
            return Err(QuantError::arg(
                "Int8Linear::quantize_inputs",
                format!("{} values for {rows} rows of {in_f}", x.len()),
            ));
        }
        Ok((0..rows)
            .map(|r| {
                let mut codes = vec![0u8; in_f];
                let q = self.quantize_row(&x[r * in_f..(r + 1) * in_f], &mut codes);
                (codes, q.finite.then_some(q.params))
            })
            .collect())
    }

    /// Quantizes row `x` into `out`, contiguous (`quantize_inputs`).
    fn quantize_row(&self, x: &[f32], out: &mut [u8]) -> RowQ {
        let (q, simd) = self.row_params(x);
        RowQ { code_sum: rowops::quantize_row(x, q.params, out, simd), ..q }
    }

    /// Quantizes row `x` into `out` as the kernel reads it: for groups of a size that is not a
    /// multiple of 4, each group at its padded place ([`PackedI8::padded_input`]). The code sum
    /// is only used by affine weights, which are never grouped.
    fn quantize_row_packed(&self, x: &[f32], out: &mut [u8]) -> RowQ {
        let packed = self.kernel.packed();
        let group = packed.group();
        if group.is_multiple_of(4) || packed.groups() <= 1 {
            return self.quantize_row(x, out);
        }
        let (q, simd) = self.row_params(x);
        for (xg, og) in x.chunks(group).zip(out.chunks_mut(packed.group_bytes())) {
            rowops::quantize_row(xg, q.params, og, simd);
        }
        q
    }

    /// The row's quantization parameters (code sum 0) and whether the AVX-512 row steps run.
    fn row_params(&self, x: &[f32]) -> (RowQ, bool) {
        let simd = self.level >= IntLevel::Avx512Vnni;
        let (finite, lo, hi) = rowops::row_stats(x, simd);
        let p = match self.activations {
            Activations::Static(p) => p,
            // A finite, ordered range cannot fail; a non-finite row's codes are never used.
            Activations::Dynamic if finite => {
                QParams::from_range(lo, hi, Scheme::Affine, QRange::U8).unwrap_or(QParams::UNIT)
            }
            Activations::Dynamic => QParams::UNIT,
        };
        (RowQ { params: p, code_sum: 0, finite }, simd)
    }

    /// The workspace layout of `rows` rows, every size checked: `None` if one overflows `usize`
    /// (no workspace can be that large).
    fn layout(&self, rows: usize) -> Option<Layout> {
        let packed = self.kernel.packed();
        let acc_bytes = rows.checked_mul(packed.acc_cols())?.checked_mul(4)?;
        let rowq_bytes = rows.checked_mul(16)?;
        let za_bytes = rows.checked_mul(4)?;
        let act_bytes = rows.checked_mul(packed.row_bytes())?;
        let total =
            acc_bytes.checked_add(rowq_bytes)?.checked_add(za_bytes)?.checked_add(act_bytes)?.checked_add(64)?;
        Some(Layout { acc_bytes, rowq_bytes, za_bytes, act_bytes, total })
    }
}

impl Int8Linear {
    /// `forward_rows`, with `gelu` applied to each row after its epilogue when given.
    fn run(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8], gelu: Option<RowFn>) {
        let (out_f, in_f) = self.shape();
        let packed = self.kernel.packed();
        let (cols, kb) = (packed.acc_cols(), packed.row_bytes());
        // The trait's documented `# Panics`; `tt_tensor::projection::project` checks first.
        let fits = |have: usize, per: usize| rows.checked_mul(per).is_some_and(|n| have >= n);
        assert!(fits(x.len(), in_f) && fits(y.len(), out_f), "Int8Linear::forward_rows sizes");
        // The AVX-512 epilogue reads the bias without bounds checks.
        assert!(bias.is_none_or(|b| b.len() == out_f), "Int8Linear::forward_rows bias length");
        let layout = self.layout(rows).filter(|l| ws.len() >= l.total);
        let Some(Layout { acc_bytes, rowq_bytes, za_bytes, act_bytes, .. }) = layout else {
            panic!("Int8Linear::forward_rows workspace: {} bytes for {rows} rows", ws.len())
        };
        let (ints, rest) = ws.split_at_mut(acc_bytes + 8);
        let (rq, rest) = rest.split_at_mut(rowq_bytes + 16);
        // SAFETY: every bit pattern is a valid u32 / i32; the aligned middles are at least
        // rowq_bytes and za_bytes.
        let rq = unsafe { rq.align_to_mut::<[u32; 4]>().1 };
        let (za, a) = rest.split_at_mut(za_bytes + 8);
        // SAFETY: as above.
        let za = &mut unsafe { za.align_to_mut::<i32>().1 }[..rows];
        let a = &mut a[..act_bytes];
        for r in 0..rows {
            let q = self.quantize_row_packed(&x[r * in_f..(r + 1) * in_f], &mut a[r * kb..(r + 1) * kb]);
            let p = q.params;
            rq[r] = [p.scale().to_bits(), p.zero_point() as u32, q.code_sum as u32, q.finite as u32];
            za[r] = p.zero_point();
        }
        let simd = self.level >= IntLevel::Avx512Vnni;
        // Each row's outputs once its product is done: NaN for a non-finite row, else `write`.
        let mut rows_out = |write: &mut dyn FnMut(usize, RowIn, &mut [f32])| {
            for r in 0..rows {
                let [s, z, sum, finite] = rq[r];
                let yr = &mut y[r * out_f..(r + 1) * out_f];
                if finite == 0 {
                    yr.fill(f32::NAN);
                    continue;
                }
                write(r, RowIn { sa: f32::from_bits(s), za: z as i32, asum: sum as i32 }, yr);
                if let Some(gelu) = gelu {
                    gelu(yr);
                }
            }
        };
        match &self.kernel {
            Kernel::Rows { packed, scales, zero_points, code_sums } => {
                // SAFETY: every bit pattern is a valid i32; the aligned middle is at least acc_bytes.
                let acc = unsafe { ints.align_to_mut::<i32>().1 };
                packed
                    .matmul(self.level, a, rows, acc)
                    .expect("the workspace layout holds rows × row_bytes and acc_cols");
                let epilogue = rowops::Epilogue { code_sums, zero_points: zero_points.as_deref(), scales, bias, in_f };
                rows_out(&mut |r, q, yr| epilogue.row(&acc[r * cols..r * cols + out_f], q.sa, q.za, q.asum, yr, simd));
            }
            Kernel::Groups(g) => {
                // SAFETY: as above, for f32.
                let sums = unsafe { ints.align_to_mut::<f32>().1 };
                g.matmul(self.level, a, za, rows, sums)
                    .expect("the workspace layout holds rows × row_bytes and acc_cols");
                rows_out(&mut |r, q, yr| rowops::scale_row(&sums[r * cols..r * cols + out_f], q.sa, bias, yr));
            }
        }
    }
}

impl Projection for Int8Linear {
    fn shape(&self) -> (usize, usize) {
        self.kernel.packed().shape()
    }

    /// `usize::MAX` where the size overflows: no caller has that much, so `project` refuses.
    fn workspace_len(&self, rows: usize) -> usize {
        self.layout(rows).map_or(usize::MAX, |l| l.total)
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]) {
        self.run(x, rows, bias, y, ws, None);
    }

    /// GELU applied to each row right after its epilogue wrote it (see
    /// [`Projection::forward_rows_gelu`]).
    fn forward_rows_gelu(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [u8],
        gelu: RowFn,
    ) {
        self.run(x, rows, bias, y, ws, Some(gelu));
    }

    /// Dequantizes the weight rebuilt from the packed form ([`Int8Linear::weight`]).
    fn to_dense(&self) -> Array2<f32> {
        self.weight().dequantize()
    }

    /// One row dequantized from the packed codes, with the same arithmetic as
    /// [`QParams::dequantize`] (so it equals the row of `to_dense`): an embedding lookup of a
    /// token table stored in int8, without rebuilding the matrix.
    fn dense_row(&self, o: usize, out: &mut [f32]) {
        let (out_f, in_f) = self.shape();
        // The trait's contract (`# Panics`): callers pass a row they validated (the decoder checks
        // every id against the vocabulary and sizes the row by the table's width).
        assert!(
            o < out_f && out.len() == in_f,
            "Int8Linear::dense_row: row {o} of {out_f}, {} values for {in_f}",
            out.len()
        );
        // The scales were taken from valid `QParams` when the layer was built, so rebuilding one
        // cannot fail.
        let param = |scale: f32, zero_point: i32| QParams::new(scale, zero_point).expect("a valid QParams' scale");
        match &self.kernel {
            Kernel::Rows { packed, scales, zero_points, .. } => {
                let p = param(scales[o], zero_points.as_ref().map_or(0, |z| z[o]));
                for (i, v) in out.iter_mut().enumerate() {
                    *v = p.dequantize(packed.code(o, i) as i32);
                }
            }
            Kernel::Groups(g) => {
                // One parameter per group, not per value.
                let group = g.packed().group();
                for (gi, chunk) in out.chunks_mut(group.max(1)).enumerate() {
                    let p = param(g.scale(o, gi), 0);
                    for (j, v) in chunk.iter_mut().enumerate() {
                        *v = p.dequantize(g.packed().code(o, gi * group + j) as i32);
                    }
                }
            }
        }
    }

    /// Every byte the layer holds for its weight, which is what a forward call reads besides its
    /// inputs: the packed codes (padding included) and, per output (or per output and group), the
    /// scales, code sums and (affine) zero points it keeps as f32/i32.
    fn storage_bytes(&self) -> usize {
        match &self.kernel {
            Kernel::Rows { packed, scales, zero_points, code_sums } => {
                let zp = zero_points.as_ref().map_or(0, Vec::len);
                packed.bytes() + 4 * (scales.len() + code_sums.len() + zp)
            }
            Kernel::Groups(g) => g.bytes(),
        }
    }

    fn format(&self) -> &'static str {
        let stat = matches!(self.activations, Activations::Static(_));
        match (stat, self.granularity, self.scheme) {
            // Symmetric only (`from_quantized` refuses affine groups).
            (false, Granularity::PerGroup(_), _) => "int8-dyn/group",
            (true, Granularity::PerGroup(_), _) => "int8-static/group",
            (false, Granularity::PerTensor, Scheme::Symmetric) => "int8-dyn/tensor",
            (false, Granularity::PerTensor, Scheme::Affine) => "int8-dyn/tensor-affine",
            (false, _, Scheme::Symmetric) => "int8-dyn/ch",
            (false, _, Scheme::Affine) => "int8-dyn/ch-affine",
            (true, Granularity::PerTensor, Scheme::Symmetric) => "int8-static/tensor",
            (true, Granularity::PerTensor, Scheme::Affine) => "int8-static/tensor-affine",
            (true, _, Scheme::Symmetric) => "int8-static/ch",
            (true, _, Scheme::Affine) => "int8-static/ch-affine",
        }
    }

    /// `Some(self)`: how [`crate::checkpoint`] finds int8 layers behind `dyn Projection`.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// One layer as quantized: its name, format, shape and bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLayer {
    pub name: String,
    pub format: &'static str,
    /// `(out, in)` of the layer's matrix.
    pub shape: (usize, usize),
    /// Bytes of the quantized weight as stored: codes, scales, zero points.
    pub weight_bytes: usize,
    /// Bytes the layer holds, all of which a forward call reads ([`Projection::storage_bytes`]:
    /// packed codes with their padding, scales, code sums and zero points).
    pub storage_bytes: usize,
}

/// Installs a dynamic [`Int8Linear`] in every `Linear` below `m` and every `Conv2d` (through
/// im2col: its `[C_out, C_in·k·k]` matrix), by name through tt-tensor's visitors — no model field
/// is named. Returns the quantized layers. What stays f32: everything that is not a `Linear` or
/// `Conv2d` — embeddings (so the GPT's tied output head), layer norms, biases.
///
/// # Errors
/// A layer whose weight no longer matches its installed projection, a layer carrying a forward
/// transform (see [`quantize_layers`]), or one `Int8Linear::new` rejects.
pub fn quantize_dynamic(m: &mut dyn tt_tensor::Module, cfg: WeightConfig) -> tt_tensor::Result<Vec<QuantizedLayer>> {
    quantize_layers(m, cfg, &mut |_| Ok(Activations::Dynamic))
}

/// [`quantize_dynamic`] with the activation quantization of each layer chosen by `act(name)`
/// (static quantization passes a [`crate::calibrate::Calibration`]'s frozen parameters this way).
///
/// A layer carrying a forward transform (a pruning mask, a low-rank factorization in training,
/// QAT's fake quantization) is refused: what it computes in training is the transform of its
/// stored weight, not the weight, so quantizing the weight could quantize the wrong matrix (a
/// factorized layer's weight is not even used). Finish the transform first
/// (`Pruning::make_permanent`, `Factored::finish`, [`crate::qat::convert_qat`]).
///
/// # Errors
/// As [`quantize_dynamic`], and any error `act` returns; the model is then unchanged.
pub fn quantize_layers(
    m: &mut dyn tt_tensor::Module,
    cfg: WeightConfig,
    act: &mut dyn FnMut(&str) -> Result<Activations>,
) -> tt_tensor::Result<Vec<QuantizedLayer>> {
    install_int8(m, cfg, act, Transforms::Refuse)
}

/// How [`quantize_embeddings`] stores a table: its `[rows, dim]` values in, a format out.
pub type TableFormat<'a> = dyn Fn(&Array2<f32>) -> Result<std::sync::Arc<dyn Projection>> + 'a;

/// Installs `format(table)` as the format of every token table (`Embedding`) below `m`: lookups
/// then read its rows and a tied output head runs it, so an int8 or int4 model's largest matrix
/// is stored like its layers (`quantize_dynamic` and `quantize_int4` leave tables in f32).
/// Every format is built before any is installed. Returns how many tables there were.
///
/// ```
/// use std::sync::Arc;
/// use tt_quant::{quantize_embeddings, Int4Linear};
/// use tt_tensor::nn::Embedding;
/// let mut table = Embedding::new(100, 64, 0.02, 0).unwrap();
/// let n = quantize_embeddings(&mut table, &|t| Ok(Arc::new(Int4Linear::new(t, 32)?))).unwrap();
/// assert_eq!((n, table.installed_projection().unwrap().format()), (1, "int4/g32"));
/// ```
///
/// # Errors
/// The first error `format` returns; the model is then unchanged.
pub fn quantize_embeddings(m: &mut dyn tt_tensor::Module, format: &TableFormat<'_>) -> tt_tensor::Result<usize> {
    let mut built = Vec::new();
    let mut visit = |_: &str, e: &mut tt_tensor::nn::Embedding| {
        let table = e.projection()?.to_dense();
        built.push(format(&table).map_err(|q| tt_tensor::TensorError::InvalidArgument {
            op: "quantize_embeddings",
            reason: q.to_string(),
        })?);
        Ok(())
    };
    // A module that is itself a table is visited too (walk_mut covers only what is below).
    if let Some(e) = m.as_embedding_mut() {
        visit("", e)?;
    }
    tt_tensor::nn::map_embeddings(m, &mut visit)?;
    let mut formats = built.into_iter();
    let mut install = |_: &str, e: &mut tt_tensor::nn::Embedding| {
        e.set_projection(formats.next().expect("one format per table, built above"))
    };
    if let Some(e) = m.as_embedding_mut() {
        install("", e)?;
    }
    Ok(tt_tensor::nn::map_embeddings(m, &mut install)? + usize::from(m.as_embedding().is_some()))
}

/// What [`install_int8`] does with a layer's forward transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transforms {
    /// An error naming the layer and the transform.
    Refuse,
    /// Quantize the weight as the transform computes it (QAT's conversion, after taking its
    /// fake quantization off a transform it was composed over).
    Through,
}

/// Why a layer carrying a forward transform is refused before `doing` something with its stored
/// weight (quantizing it, saving it): what the layer computes is the transform of that weight.
pub(crate) fn carries_transform(name: &str, t: &dyn tt_tensor::nn::ForwardTransform, doing: &str) -> String {
    format!(
        "layer '{name}' carries a '{}' forward transform: it computes a transform of its stored weight, not the \
         weight; finish or remove the transform before {doing}",
        t.name()
    )
}

/// The matrix a layer computes with: its dense weight (`dense`, of the layer's `[out, …]`
/// `shape`), through its transform if it has one and `transforms` allows it.
fn layer_matrix(
    name: &str,
    dense: Array2<f32>,
    shape: &[usize],
    t: Option<&std::sync::Arc<dyn tt_tensor::nn::ForwardTransform>>,
    transforms: Transforms,
) -> tt_tensor::Result<Array2<f32>> {
    let op = "quantize_layers";
    let Some(t) = t else { return Ok(dense) };
    if transforms == Transforms::Refuse {
        return Err(tt_tensor::TensorError::InvalidArgument {
            op,
            reason: carries_transform(name, t.as_ref(), "quantizing"),
        });
    }
    let (rows, cols) = dense.dim();
    let w = dense
        .into_shape_with_order(ndarray::IxDyn(shape))
        .map_err(|e| tt_tensor::TensorError::InvalidArgument { op, reason: e.to_string() })?;
    let computed = tt_tensor::no_grad(|| t.weight(&tt_tensor::Tensor::from_array(w)))?;
    let data = computed.data().clone();
    data.into_shape_with_order((rows, cols)).map_err(|e| tt_tensor::TensorError::InvalidArgument {
        op,
        reason: format!("layer '{name}': its '{}' transform changed the weight's shape: {e}", t.name()),
    })
}

/// [`quantize_layers`] with a choice of what a forward transform means.
pub(crate) fn install_int8(
    m: &mut dyn tt_tensor::Module,
    cfg: WeightConfig,
    act: &mut dyn FnMut(&str) -> Result<Activations>,
    transforms: Transforms,
) -> tt_tensor::Result<Vec<QuantizedLayer>> {
    // Build every layer first, install after: an error leaves the model as it was.
    let mut built: Vec<std::sync::Arc<Int8Linear>> = Vec::new();
    let mut done = Vec::new();
    let mut build = |name: &str, w: &Array2<f32>| -> tt_tensor::Result<()> {
        let q = std::sync::Arc::new(Int8Linear::new(w, cfg, act(name)?)?);
        done.push(QuantizedLayer {
            name: name.to_string(),
            format: q.format(),
            shape: q.shape(),
            weight_bytes: q.weight_bytes(),
            storage_bytes: q.storage_bytes(),
        });
        built.push(q);
        Ok(())
    };
    tt_tensor::nn::map_linears(m, |name, l| {
        let w = layer_matrix(name, l.projection()?.to_dense(), &l.weight.shape(), l.transform(), transforms)?;
        build(name, &w)
    })?;
    tt_tensor::nn::map_conv2ds(m, |name, c| {
        let w = layer_matrix(name, conv_matrix(c)?, &c.weight.shape(), c.transform(), transforms)?;
        build(name, &w)
    })?;
    // The visitors walk the same layers in the same order again; shapes were taken from them, so
    // installing cannot fail on a shape.
    let mut next = built.into_iter();
    let mut take = || {
        next.next().ok_or_else(|| tt_tensor::TensorError::InvalidArgument {
            op: "quantize_layers",
            reason: "the model's layers changed between the two passes".into(),
        })
    };
    tt_tensor::nn::map_linears(m, |_, l| l.set_projection(take()?))?;
    tt_tensor::nn::map_conv2ds(m, |_, c| c.set_projection(take()?))?;
    Ok(done)
}

/// A convolution's weight as its `[C_out, C_in·k·k]` matrix (from its installed projection if it
/// has one).
pub fn conv_matrix(c: &tt_tensor::nn::Conv2d) -> tt_tensor::Result<Array2<f32>> {
    if let Some(p) = c.installed_projection() {
        return Ok(p.to_dense());
    }
    let (rows, cols) = c.matrix_shape();
    c.weight
        .data()
        .clone()
        .into_shape_with_order((rows, cols))
        .map_err(|e| tt_tensor::TensorError::InvalidArgument { op: "conv_matrix", reason: e.to_string() })
}
