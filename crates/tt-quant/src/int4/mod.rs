//! [`Int4Linear`]: int4 weights as a `tt_tensor::Projection` — symmetric per group of 32 inputs
//! (ggml's Q4_0), two codes per byte, packed once for the kernels, computing in integers.
//!
//! ## The format
//! - **Codes** `q ∈ [−8, 7]`, stored as nibbles `q + 8`, two per byte; within each block of 32
//!   inputs, byte `i` holds input `i` (low nibble) and `i + 16` (high) — ggml's order, which the
//!   kernels unpack with one AND and one shift, no shuffle (layout: [`kernels`]).
//! - **Scales**: one **f16** per output and group, as in ggml: 0.5 bit per weight where f32 would
//!   cost 1 (4.5 instead of 5 bits per weight, 10% of the model), and f16's 11-bit significand is
//!   far finer than the 4-bit codes it scales. The codes are computed against the f16-rounded
//!   scale, so `to_dense` is exactly what the kernels multiply with.
//! - **Quantization** of a group: with `m` its value of largest magnitude, `S = |m|/8` if `m < 0`
//!   (it maps to −8 exactly), else `S = m/7` (7 is the largest code): the signed extreme uses the
//!   whole code range, as ggml's `d = max/−8` does — ggml gets the same for positive extremes by
//!   letting `d` be negative, which this format excludes so every stored scale is positive
//!   (checkable). `q = clamp(round_half_even(x/S), −8, 7)`. An all-zero group has `S = 1` and
//!   codes 0; a group too small for an f16 scale gets the smallest positive f16 (its codes round
//!   to 0 or so); one too large for f16 (`|w| > 65504·7`) is an error.
//! - **Ragged widths**: `in` need not be a multiple of the group; the last group is shorter, its
//!   scale from its own values, padded with code 0 (which multiplies activation 0).
//!
//! ## A forward call
//! 1. Each input row is quantized per group (the weight's group) to symmetric int8,
//!    `S_a = max|x|/127` (ggml's Q8_0 activations for Q4_0 × Q8_0 dots) — finer than one affine
//!    u8 map per row, and symmetric, so no zero-point terms: per group the product is just
//!    `S_w·S_a·Σ q·a`.
//! 2. `Σ q·a` per group exact in i32 (VNNI / AVX2 / scalar: [`kernels`]), combined over the
//!    groups in f32 in one fixed order, the same at every level.
//! 3. The bias is added (`y + b`) in one scalar pass.
//!
//! Steps 1 and 3 are the same code at every level and step 2 is exact with a shared order, so
//! the outputs are bit-identical at every level (tested against [`kernels::matmul_reference`]).
//! Against the float formula on the dequantized operands the only differences are f32 rounding
//! of the per-group products and their sum (tested).
//!
//! A row with a NaN or infinite input yields NaN outputs, as in [`crate::Int8Linear`].

pub mod kernels;

use std::sync::Arc;
use tt_tensor::kernels::RowFn;

use ndarray::Array2;
use tt_tensor::Projection;

use crate::error::{QuantError, Result};
use crate::kernels::IntLevel;
use crate::linear::{carries_transform, conv_matrix, QuantizedLayer};
pub use half::f16;
pub use kernels::{Acts, PackedI4, BLOCK, GROUPS};

/// The group of ggml's Q4_0, and what [`quantize_int4`] is normally given.
pub const Q4_0_GROUP: usize = 32;

/// Int4 weights with integer kernels (see the module docs).
#[derive(Debug, Clone)]
pub struct Int4Linear {
    packed: PackedI4,
    level: IntLevel,
}

/// The codes and f16 scale of one group `xs` (see the module docs), codes into `q`.
fn quantize_group(xs: &[f32], q: &mut [i8]) -> std::result::Result<f16, String> {
    let m = xs.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if m == 0.0 {
        q.fill(0);
        return Ok(f16::ONE);
    }
    let s = f16::from_f32(if m < 0.0 { -m / 8.0 } else { m / 7.0 });
    if s.is_infinite() {
        return Err(format!("|w| = {} needs a scale above f16's largest, 65504", m.abs()));
    }
    let s = if s == f16::ZERO { f16::from_bits(1) } else { s };
    let sf = s.to_f32();
    for (c, &v) in q.iter_mut().zip(xs) {
        *c = (v / sf).round_ties_even().clamp(-8.0, 7.0) as i8;
    }
    Ok(s)
}

impl Int4Linear {
    /// Quantizes `w` (`[out, in]`) per `group` inputs (see the module docs); kernels at the
    /// current integer level ([`IntLevel::current`]).
    ///
    /// # Errors
    /// A group not in [`GROUPS`]; a non-finite weight; a weight too large for an f16 scale
    /// (`|w| > 65504·7`); a matrix whose padded size overflows or does not fit in memory.
    pub fn new(w: &Array2<f32>, group: usize) -> Result<Int4Linear> {
        let op = "Int4Linear::new";
        kernels::check_group(op, group)?;
        let (out_f, in_f) = w.dim();
        if let Some(((o, i), v)) = w.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(QuantError::arg(op, format!("weight ({o}, {i}) is {v}")));
        }
        let groups = in_f.div_ceil(group);
        let mut q = vec![0i8; out_f * in_f];
        let mut scales = Vec::with_capacity(out_f * groups);
        for (o, row) in w.rows().into_iter().enumerate() {
            let row = row.to_vec();
            for (g, xs) in row.chunks(group).enumerate() {
                let at = o * in_f + g * group;
                let s = quantize_group(xs, &mut q[at..at + xs.len()])
                    .map_err(|e| QuantError::arg(op, format!("row {o}, group {g}: {e}")))?;
                scales.push(s);
            }
        }
        Ok(Int4Linear::from_packed(PackedI4::new(&q, &scales, out_f, in_f, group)?))
    }

    /// The layer over already packed codes and scales (a checkpoint's), at the current level.
    pub fn from_packed(packed: PackedI4) -> Int4Linear {
        Int4Linear { packed, level: IntLevel::current() }
    }

    /// Runs the kernels at `level` (clamped to what the CPU has) instead of the current one.
    pub fn with_level(mut self, level: IntLevel) -> Int4Linear {
        self.level = level.min(IntLevel::detected());
        self
    }

    /// The packed codes and scales.
    pub fn packed(&self) -> &PackedI4 {
        &self.packed
    }

    /// Inputs per scale.
    pub fn group(&self) -> usize {
        self.packed.group()
    }

    /// Bytes of the weight as stored in a checkpoint: `⌈in/group⌉·group/2` code bytes and
    /// `⌈in/group⌉` f16 scales per output (no panel padding).
    pub fn weight_bytes(&self) -> usize {
        let (out_f, _) = self.packed.shape();
        out_f * (self.packed.blocks() * BLOCK / 2 + 2 * self.packed.groups())
    }

    /// The workspace layout for `rows` rows: activation codes, then (4-aligned, with slack) the
    /// per-group scales and sums and one finite flag per row; `None` where a size overflows.
    fn layout(&self, rows: usize) -> Option<Layout> {
        let codes = rows.checked_mul(self.packed.blocks() * BLOCK)?;
        let per_group = rows.checked_mul(self.packed.groups())?.checked_mul(4)?;
        let total = codes.checked_add(per_group.checked_mul(2)?)?.checked_add(rows)?.checked_add(8)?;
        Some(Layout { codes, per_group, total })
    }

    fn run(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8], gelu: Option<RowFn>) {
        let (out_f, in_f) = self.packed.shape();
        let (group, groups, kb) = (self.packed.group(), self.packed.groups(), self.packed.blocks() * BLOCK);
        // The trait's documented `# Panics`; `tt_tensor::projection::project` checks first.
        let fits = |have: usize, per: usize| rows.checked_mul(per).is_some_and(|n| have >= n);
        assert!(fits(x.len(), in_f) && fits(y.len(), out_f), "Int4Linear::forward_rows sizes");
        assert!(bias.is_none_or(|b| b.len() == out_f), "Int4Linear::forward_rows bias length");
        let layout = self.layout(rows).filter(|l| ws.len() >= l.total);
        let Some(Layout { codes: code_bytes, per_group, .. }) = layout else {
            panic!("Int4Linear::forward_rows workspace: {} bytes for {rows} rows", ws.len())
        };
        let (codes, rest) = ws.split_at_mut(code_bytes);
        // SAFETY: i8 and u8 have the same size and every bit pattern is valid.
        let codes = unsafe { codes.align_to_mut::<i8>().1 };
        let (scale_bytes, rest) = rest.split_at_mut(per_group + 4);
        // SAFETY: every bit pattern is a valid f32; the aligned middle holds per_group bytes.
        let scales = unsafe { scale_bytes.align_to_mut::<f32>().1 };
        let (sum_bytes, finite) = rest.split_at_mut(per_group + 4);
        // SAFETY: as above, for i32.
        let sums = unsafe { sum_bytes.align_to_mut::<i32>().1 };
        for r in 0..rows {
            finite[r] = kernels::quantize_row(
                &x[r * in_f..(r + 1) * in_f],
                group,
                &mut codes[r * kb..(r + 1) * kb],
                &mut scales[r * groups..(r + 1) * groups],
                &mut sums[r * groups..(r + 1) * groups],
            ) as u8;
        }
        let acts = Acts { codes, scales, sums };
        self.packed
            .matmul(self.level, acts, rows, y)
            .expect("the workspace layout holds rows of codes, scales and sums");
        for r in 0..rows {
            let yr = &mut y[r * out_f..(r + 1) * out_f];
            if finite[r] == 0 {
                yr.fill(f32::NAN);
                continue;
            }
            if let Some(b) = bias {
                yr.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some(gelu) = gelu {
                gelu(yr);
            }
        }
    }
}

/// Where a forward call's workspace goes (see [`Int4Linear::layout`]).
struct Layout {
    codes: usize,
    per_group: usize,
    total: usize,
}

impl Projection for Int4Linear {
    fn shape(&self) -> (usize, usize) {
        self.packed.shape()
    }

    /// `usize::MAX` where the size overflows: no caller has that much, so `project` refuses.
    fn workspace_len(&self, rows: usize) -> usize {
        self.layout(rows).map_or(usize::MAX, |l| l.total)
    }

    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]) {
        self.run(x, rows, bias, y, ws, None);
    }

    /// GELU applied to each row right after its bias (see [`Projection::forward_rows_gelu`]).
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

    /// `q·S` (exact in f32: a 4-bit code times an f16).
    fn to_dense(&self) -> Array2<f32> {
        let (out_f, in_f) = self.packed.shape();
        let g = self.packed.group();
        Array2::from_shape_fn((out_f, in_f), |(o, i)| {
            self.packed.code(o, i) as f32 * self.packed.scale(o, i / g).to_f32()
        })
    }

    /// One row, as `to_dense` computes it: an embedding lookup of an int4 token table.
    fn dense_row(&self, o: usize, out: &mut [f32]) {
        let (out_f, in_f) = self.packed.shape();
        // The trait's contract (`# Panics`): callers pass a row they validated (the decoder checks
        // every id against the vocabulary and sizes the row by the table's width).
        assert!(
            o < out_f && out.len() == in_f,
            "Int4Linear::dense_row: row {o} of {out_f}, {} values for {in_f}",
            out.len()
        );
        // One scale per group, not per value.
        let g = self.packed.group();
        for (gi, chunk) in out.chunks_mut(g).enumerate() {
            let scale = self.packed.scale(o, gi).to_f32();
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = self.packed.code(o, gi * g + j) as f32 * scale;
            }
        }
    }

    /// The packed codes and f16 scales, panel padding included: the only copy of the weight
    /// this layer keeps.
    fn storage_bytes(&self) -> usize {
        self.packed.bytes()
    }

    fn format(&self) -> &'static str {
        match self.packed.group() {
            32 => "int4/g32",
            64 => "int4/g64",
            _ => "int4/g128",
        }
    }

    /// `Some(self)`: how [`crate::checkpoint`] finds int4 layers behind `dyn Projection`.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// Installs an [`Int4Linear`] of `group` (normally [`Q4_0_GROUP`]) in every `Linear` below `m`
/// and every `Conv2d` (its `[C_out, C_in·k·k]` matrix), by name through tt-tensor's visitors, as
/// [`crate::quantize_dynamic`] does for int8. What stays f32: embeddings (so the GPT's tied
/// output head), layer norms, biases. Returns the quantized layers.
///
/// # Errors
/// A group not in [`GROUPS`]; a layer carrying a forward transform (refused as
/// [`crate::quantize_layers`] refuses it: finish the transform first); a layer whose weight no
/// longer matches its installed projection; a weight [`Int4Linear::new`] rejects. The model is
/// then unchanged.
pub fn quantize_int4(m: &mut dyn tt_tensor::Module, group: usize) -> tt_tensor::Result<Vec<QuantizedLayer>> {
    kernels::check_group("quantize_int4", group)?;
    let refuse = |name: &str, t: &Arc<dyn tt_tensor::nn::ForwardTransform>| tt_tensor::TensorError::InvalidArgument {
        op: "quantize_int4",
        reason: carries_transform(name, t.as_ref(), "quantizing"),
    };
    // Build every layer first, install after: an error leaves the model as it was.
    let mut built: Vec<Arc<Int4Linear>> = Vec::new();
    let mut done = Vec::new();
    let mut build = |name: &str, w: &Array2<f32>| -> tt_tensor::Result<()> {
        let q = Arc::new(Int4Linear::new(w, group)?);
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
    tt_tensor::nn::map_linears(m, |name, l| match l.transform() {
        Some(t) => Err(refuse(name, t)),
        None => build(name, &l.projection()?.to_dense()),
    })?;
    tt_tensor::nn::map_conv2ds(m, |name, c| match c.transform() {
        Some(t) => Err(refuse(name, t)),
        None => build(name, &conv_matrix(c)?),
    })?;
    let mut next = built.into_iter();
    let mut take = || {
        next.next().ok_or_else(|| tt_tensor::TensorError::InvalidArgument {
            op: "quantize_int4",
            reason: "the model's layers changed between the two passes".into(),
        })
    };
    tt_tensor::nn::map_linears(m, |_, l| l.set_projection(take()?))?;
    tt_tensor::nn::map_conv2ds(m, |_, c| c.set_projection(take()?))?;
    Ok(done)
}
