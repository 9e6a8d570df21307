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

use ndarray::Array2;
use tt_tensor::Projection;

use crate::error::{QuantError, Result};
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
    weight: QuantizedMatrix,
    packed: PackedI8,
    /// `S_w` per output (a per-tensor scale repeated).
    scales: Vec<f32>,
    /// `Z_w` per output; `None` for symmetric weights (all 0).
    zero_points: Option<Vec<i32>>,
    /// `Σ_i q_w[o, i]` per output, for the activation zero point.
    code_sums: Vec<i32>,
    activations: Activations,
    level: IntLevel,
}

/// Per-row quantization parameters as kept in the workspace.
#[derive(Debug, Clone, Copy)]
struct RowQ {
    scale: f32,
    zero_point: i32,
    code_sum: i32,
    finite: bool,
}

impl Int8Linear {
    /// Quantizes `w` (`[out, in]`) with `cfg`, inputs quantized as `activations`; kernels at the
    /// current integer level ([`IntLevel::current`]).
    ///
    /// # Errors
    /// Non-finite weights; per-group weights (the integer kernel keeps one scale per output row —
    /// per-group scales would need float partial sums per group, not implemented); more inputs
    /// than [`crate::kernels::MAX_K`].
    pub fn new(w: &Array2<f32>, cfg: WeightConfig, activations: Activations) -> Result<Int8Linear> {
        Self::from_quantized(QuantizedMatrix::quantize(w, cfg.scheme, cfg.granularity)?, activations)
    }

    /// Builds the layer over an already quantized matrix.
    ///
    /// # Errors
    /// As [`Int8Linear::new`], a matrix [`QuantizedMatrix::validate`] rejects, and static
    /// activation parameters that are not a u8 affine map with a normal scale.
    pub fn from_quantized(weight: QuantizedMatrix, activations: Activations) -> Result<Int8Linear> {
        weight.validate()?;
        let (out_f, in_f) = (weight.rows, weight.cols);
        let per_out: Vec<QParams> = match weight.granularity {
            Granularity::PerTensor => vec![weight.params[0]; out_f],
            Granularity::PerChannel => weight.params.clone(),
            Granularity::PerGroup(g) => {
                return Err(QuantError::Unsupported(format!(
                "per-group ({g}) weights in the integer kernel, which keeps one scale per output row; use per-channel"
            )))
            }
        };
        if let Activations::Static(p) = activations {
            if !p.is_u8_affine() {
                return Err(QuantError::arg(
                    "Int8Linear",
                    format!("static activation parameters {p:?} are not a u8 affine map"),
                ));
            }
        }
        let packed = PackedI8::new(&weight.codes, out_f, in_f)?;
        let code_sums =
            (0..out_f).map(|o| weight.codes[o * in_f..(o + 1) * in_f].iter().map(|&c| c as i32).sum()).collect();
        let zero_points =
            (weight.scheme == Scheme::Affine).then(|| per_out.iter().map(|p| p.zero_point).collect::<Vec<_>>());
        Ok(Int8Linear {
            scales: per_out.iter().map(|p| p.scale).collect(),
            zero_points,
            code_sums,
            packed,
            weight,
            activations,
            level: IntLevel::current(),
        })
    }

    /// Runs the kernels at `level` (clamped to what the CPU has) instead of the current one.
    pub fn with_level(mut self, level: IntLevel) -> Int8Linear {
        self.level = level.min(IntLevel::for_level(tt_accel::dispatch::detected()));
        self
    }

    /// The quantized weight (codes, scales, zero points).
    pub fn weight(&self) -> &QuantizedMatrix {
        &self.weight
    }

    /// How inputs are quantized.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// The packed codes the kernels read.
    pub fn packed(&self) -> &PackedI8 {
        &self.packed
    }

    /// The u8 code of every input of `rows` rows as `forward_rows` computes them, with each row's
    /// `(S_a, Z_a)` (`None` for a row with a non-finite value) — what tests check the float
    /// formula with.
    ///
    /// # Errors
    /// `x` shorter than `rows` rows.
    pub fn quantize_inputs(&self, x: &[f32], rows: usize) -> Result<Vec<(Vec<u8>, Option<QParams>)>> {
        let in_f = self.weight.cols;
        if rows.checked_mul(in_f).is_none_or(|n| x.len() < n) {
            return Err(QuantError::arg(
                "Int8Linear::quantize_inputs",
                format!("{} values for {rows} rows of {in_f}", x.len()),
            ));
        }
        Ok((0..rows)
            .map(|r| {
                let mut codes = vec![0u8; in_f];
                let q = self.quantize_row(&x[r * in_f..(r + 1) * in_f], &mut codes);
                (codes, q.finite.then_some(QParams { scale: q.scale, zero_point: q.zero_point }))
            })
            .collect())
    }

    fn quantize_row(&self, x: &[f32], out: &mut [u8]) -> RowQ {
        let simd = self.level == IntLevel::Avx512Vnni;
        let (finite, lo, hi) = rowops::row_stats(x, simd);
        let p = match self.activations {
            Activations::Static(p) => p,
            // A finite, ordered range cannot fail; a non-finite row's codes are never used.
            Activations::Dynamic if finite => {
                QParams::from_range(lo, hi, Scheme::Affine, QRange::U8).unwrap_or(QParams { scale: 1.0, zero_point: 0 })
            }
            Activations::Dynamic => QParams { scale: 1.0, zero_point: 0 },
        };
        RowQ { scale: p.scale, zero_point: p.zero_point, code_sum: rowops::quantize_row(x, p, out, simd), finite }
    }

    fn layout(&self, rows: usize) -> (usize, usize, usize) {
        // i32 accumulators, then per-row parameters, then activation bytes.
        let acc = rows * self.packed.acc_cols() * 4;
        let rowq = rows * 16;
        (acc, rowq, rows * self.packed.row_bytes())
    }
}

impl Projection for Int8Linear {
    fn shape(&self) -> (usize, usize) {
        (self.weight.rows, self.weight.cols)
    }

    fn workspace_len(&self, rows: usize) -> usize {
        let (a, b, c) = self.layout(rows);
        a + b + c + 64
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]) {
        let (out_f, in_f) = (self.weight.rows, self.weight.cols);
        let (cols, kb) = (self.packed.acc_cols(), self.packed.row_bytes());
        // The trait's documented `# Panics`; `tt_tensor::projection::project` checks first.
        assert!(x.len() >= rows * in_f && y.len() >= rows * out_f, "Int8Linear::forward_rows sizes");
        // The AVX-512 epilogue reads the bias without bounds checks.
        assert!(bias.is_none_or(|b| b.len() == out_f), "Int8Linear::forward_rows bias length");
        assert!(ws.len() >= self.workspace_len(rows), "Int8Linear::forward_rows workspace");
        let (acc_len, rowq_len, _) = self.layout(rows);
        // Workspace: i32 accumulators, per-row [scale bits, Z, Σa, finite] as u32s, then the
        // activation bytes; the first two parts get slack (8 and 16 bytes, ≥ the 3 an alignment
        // to 4 can cost) so their aligned middles still hold what they need.
        let (ints, rest) = ws.split_at_mut(acc_len + 8);
        // SAFETY: every bit pattern is a valid i32; the aligned middle is at least acc_len bytes.
        let acc = unsafe { ints.align_to_mut::<i32>().1 };
        let (rq, a) = rest.split_at_mut(rowq_len + 16);
        // SAFETY: as above, for u32.
        let rq = unsafe { rq.align_to_mut::<[u32; 4]>().1 };
        let a = &mut a[..rows * kb];
        for r in 0..rows {
            let q = self.quantize_row(&x[r * in_f..(r + 1) * in_f], &mut a[r * kb..(r + 1) * kb]);
            rq[r] = [q.scale.to_bits(), q.zero_point as u32, q.code_sum as u32, q.finite as u32];
        }
        // SAFETY: `a` holds rows × row_bytes, `acc` at least rows × acc_cols (workspace_len).
        unsafe { self.packed.matmul_unchecked(self.level, a, rows, acc) };
        let epilogue = rowops::Epilogue {
            code_sums: &self.code_sums,
            zero_points: self.zero_points.as_deref(),
            scales: &self.scales,
            bias,
            in_f,
        };
        let simd = self.level == IntLevel::Avx512Vnni;
        for r in 0..rows {
            let [s, z, sum, finite] = rq[r];
            let yr = &mut y[r * out_f..(r + 1) * out_f];
            if finite == 0 {
                yr.fill(f32::NAN);
                continue;
            }
            let (sa, za, asum) = (f32::from_bits(s), z as i32, sum as i32);
            epilogue.row(&acc[r * cols..r * cols + out_f], sa, za, asum, yr, simd);
        }
    }

    fn to_dense(&self) -> Array2<f32> {
        self.weight.dequantize()
    }

    /// What a forward call reads besides its inputs: the packed codes (padding included), the
    /// per-output scales, code sums and (affine) zero points it keeps as f32/i32. (The layer also
    /// keeps the unpacked `QuantizedMatrix` for `to_dense` and checkpoints, which no call reads.)
    fn storage_bytes(&self) -> usize {
        let zp = self.zero_points.as_ref().map_or(0, Vec::len);
        self.packed.bytes() + 4 * (self.scales.len() + self.code_sums.len() + zp)
    }

    fn format(&self) -> &'static str {
        let stat = matches!(self.activations, Activations::Static(_));
        match (stat, self.weight.granularity, self.weight.scheme) {
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
    /// Bytes a forward call reads ([`Projection::storage_bytes`]: packed codes with their padding,
    /// per-output scales, code sums and zero points).
    pub storage_bytes: usize,
}

/// Installs a dynamic [`Int8Linear`] in every `Linear` below `m` and every `Conv2d` (through
/// im2col: its `[C_out, C_in·k·k]` matrix), by name through tt-tensor's visitors — no model field
/// is named. Returns the quantized layers. What stays f32: everything that is not a `Linear` or
/// `Conv2d` — embeddings (so the GPT's tied output head), layer norms, biases.
///
/// # Errors
/// A layer whose weight no longer matches its installed projection, or one `Int8Linear::new`
/// rejects.
pub fn quantize_dynamic(m: &mut dyn tt_tensor::Module, cfg: WeightConfig) -> tt_tensor::Result<Vec<QuantizedLayer>> {
    quantize_layers(m, cfg, &mut |_| Ok(Activations::Dynamic))
}

/// [`quantize_dynamic`] with the activation quantization of each layer chosen by `act(name)`
/// (static quantization passes a [`crate::calibrate::Calibration`]'s frozen parameters this way).
///
/// # Errors
/// As [`quantize_dynamic`], and any error `act` returns.
pub fn quantize_layers(
    m: &mut dyn tt_tensor::Module,
    cfg: WeightConfig,
    act: &mut dyn FnMut(&str) -> Result<Activations>,
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
            weight_bytes: q.weight().storage_bytes(),
            storage_bytes: q.storage_bytes(),
        });
        built.push(q);
        Ok(())
    };
    tt_tensor::nn::map_linears(m, |name, l| build(name, &l.projection()?.to_dense()))?;
    tt_tensor::nn::map_conv2ds(m, |name, c| build(name, &conv_matrix(c)?))?;
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
