//! The seam every weight format plugs into: a linear map `y = x·Wᵀ + b` whose `W` is stored some
//! way — dense f32 (here, the reference), packed f32 (tt-accel), int8 (tt-quant), sparse or low-rank
//! (tt-compress).
//!
//! A [`Projection`] owns its storage and knows how to multiply rows by it; everything around it
//! (the layer's bias, the model's structure, the decoder's loop) stays the same whatever the
//! format. [`Linear`](crate::nn::Linear) and [`Conv2d`](crate::nn::Conv2d) can carry one (see
//! [`Linear::set_projection`](crate::nn::Linear::set_projection)); the KV-cached decoder holds the
//! model layers' own projections, so a quantized or pruned layer decodes without a second model.
//!
//! What this module deliberately does not do: choose kernels by CPU features or pack weights —
//! that is tt-accel's job, behind this same trait.
//!
//! ```
//! use std::sync::Arc;
//! use tt_tensor::projection::{DenseF32, Projection, Workspace};
//! use tt_tensor::Tensor;
//! // W = [[1, 2], [3, 4]] stored [out, in]; y = x·Wᵀ + b for one row x = [1, 1].
//! let w = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
//! let p: Arc<dyn Projection> = Arc::new(DenseF32::new(w).unwrap());
//! let mut ws = Workspace::default();
//! ws.ensure(p.workspace_len(1));
//! let mut y = [0.0f32; 2];
//! p.forward_rows(&[1.0, 1.0], 1, Some(&[0.5, 0.5]), &mut y, ws.bytes());
//! assert_eq!(y, [3.5, 7.5]);
//! assert_eq!((p.shape(), p.format(), p.storage_bytes()), ((2, 2), "f32", 16));
//! ```

use crate::kernels::RowFn;
use std::fmt::Debug;
use std::sync::Arc;

use ndarray::{Array2, Ix2};

use crate::error::{Result, TensorError};
use crate::kernels::linear_rows;
use crate::tensor::Tensor;

/// A linear map `x ↦ x·Wᵀ (+ b)` with `W` of shape `(out, in)`, stored in some format.
///
/// Contract, which [`check_projection`] tests for any implementation:
/// - `forward_rows` computes `y[r, o] = Σ_i x[r, i]·W[o, i] + bias[o]` for `r < rows`, where
///   `W = to_dense()`, to the format's stated accuracy (exact for f32 formats up to summation
///   order).
/// - It allocates nothing: scratch memory comes from the caller's `ws`, at least
///   `workspace_len(rows)` bytes (no alignment is promised; align inside with
///   `<[u8]>::align_to_mut` and ask for the slack in `workspace_len`).
/// - `storage_bytes` counts the real bytes of the stored weight (codes, scales, indices), not
///   of the dense equivalent.
pub trait Projection: Send + Sync + Debug {
    /// `(out_features, in_features)`.
    fn shape(&self) -> (usize, usize);

    /// Workspace bytes `forward_rows` needs for `rows` rows; the caller preallocates them.
    fn workspace_len(&self, _rows: usize) -> usize {
        0
    }

    /// `y[r, :] = x[r, :]·Wᵀ + bias` for `rows` rows; `x` is `rows × in`, `y` is `rows × out`,
    /// both row-major (longer slices are fine: only the prefix is used).
    ///
    /// # Panics
    /// May panic if a slice is shorter than stated above; [`project`] checks them first.
    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]);

    /// [`Projection::forward_rows`] followed by `gelu` on every output row (after the bias): the
    /// MLP's `fc` with its activation as an epilogue. A format overrides it to apply `gelu` to
    /// each group of rows right after writing them, while they are still in cache, instead of a
    /// second pass over the whole output; the result is the same either way, since `gelu` is the
    /// caller's elementwise row kernel.
    ///
    /// # Panics
    /// As [`Projection::forward_rows`].
    fn forward_rows_gelu(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [u8],
        gelu: RowFn,
    ) {
        self.forward_rows(x, rows, bias, y, ws);
        let out_f = self.shape().0;
        // forward_rows checked that y holds rows × out, so the product cannot overflow here.
        let n = rows.checked_mul(out_f).expect("forward_rows checked rows × out");
        if out_f > 0 {
            y[..n].chunks_exact_mut(out_f).for_each(gelu);
        }
    }

    /// The matrix this projection applies, `[out, in]` (dequantized / densified): the reference.
    fn to_dense(&self) -> Array2<f32>;

    /// Row `o` of [`Projection::to_dense`] into `out` (`in` values): an embedding lookup, when
    /// the matrix is a token table (a tied head's). The default builds the whole dense matrix —
    /// correct, and far too slow for a table: a format that can serve as one overrides it.
    ///
    /// # Panics
    /// `o ≥ out` or `out.len() ≠ in`.
    fn dense_row(&self, o: usize, out: &mut [f32]) {
        out.copy_from_slice(self.to_dense().row(o).as_slice().expect("to_dense is standard layout"));
    }

    /// Bytes the stored weight occupies.
    fn storage_bytes(&self) -> usize;

    /// Short name of the storage format: `"f32"`, `"f32-packed"`, `"int8/ch"`, `"csr"`, ….
    fn format(&self) -> &'static str;

    /// The projection as [`Any`](std::any::Any), for formats that want to be recognized behind
    /// `dyn Projection`: lets a crate find its own format in a model's layers (e.g. to save it
    /// in its own checkpoint format) by `downcast_ref`. `None` by default — a format that never
    /// needs to be recognized need not say what it is.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// [`Projection::forward_rows`] with every length checked first: the safe public entry point.
///
/// # Errors
/// A slice shorter than `rows` rows of its width, a bias of the wrong length, or a workspace
/// smaller than [`Projection::workspace_len`].
pub fn project(
    p: &dyn Projection,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [u8],
) -> Result<()> {
    let (out_f, in_f) = p.shape();
    let need = |what: &str, have: usize, want: Option<usize>| match want {
        Some(w) if have >= w => Ok(()),
        _ => Err(TensorError::arg(
            "project",
            format!(
                "{what} has {have} elements; {rows} rows of the {}×{} '{}' projection need more",
                out_f,
                in_f,
                p.format()
            ),
        )),
    };
    need("input", x.len(), rows.checked_mul(in_f))?;
    need("output", y.len(), rows.checked_mul(out_f))?;
    need("workspace", ws.len(), Some(p.workspace_len(rows)))?;
    if let Some(b) = bias {
        if b.len() != out_f {
            return Err(TensorError::shape("project (bias vs out features)", &[b.len()], &[out_f]));
        }
    }
    p.forward_rows(x, rows, bias, y, ws);
    Ok(())
}

/// Scratch bytes for projections, sized once ([`Workspace::ensure`]) and reused for every call.
#[derive(Debug, Default, Clone)]
pub struct Workspace {
    buf: Vec<u8>,
}

impl Workspace {
    /// Grows to at least `len` bytes (never shrinks); allocates only when it grows.
    pub fn ensure(&mut self, len: usize) {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
    }
    /// The whole buffer.
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

/// The reference format: the dense f32 matrix of a weight [`Tensor`], **shared** with it (the
/// projection holds the tensor's handle, not a copy), so training updates are seen at once.
///
/// Few rows (decode) use one dot product per output and row, reading each weight row once; many
/// rows (prefill, batches) use GEMM — see [`crate::kernels::linear_rows`].
#[derive(Debug, Clone)]
pub struct DenseF32 {
    weight: Tensor,
    shape: (usize, usize),
}

impl DenseF32 {
    /// Shares `weight` (`[out, in]`).
    ///
    /// # Errors
    /// If `weight` is not 2-D.
    pub fn new(weight: Tensor) -> Result<DenseF32> {
        let s = weight.shape();
        if s.len() != 2 {
            return Err(TensorError::invalid_shape("DenseF32", &s, "weight must be [out, in]"));
        }
        Ok(DenseF32 { shape: (s[0], s[1]), weight })
    }

    /// A projection owning a copy of `w`.
    pub fn from_array(w: Array2<f32>) -> DenseF32 {
        let shape = w.dim();
        DenseF32 { weight: Tensor::from_array(w.into_dyn()), shape }
    }

    /// The shared weight tensor.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Projection for DenseF32 {
    fn shape(&self) -> (usize, usize) {
        self.shape
    }
    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], _ws: &mut [u8]) {
        let w = self.weight.data();
        let (out_f, in_f) = self.shape;
        linear_rows(x, w.as_slice().expect("tensor data is standard layout"), bias, rows, in_f, out_f, y);
    }
    fn to_dense(&self) -> Array2<f32> {
        self.weight.data().clone().into_dimensionality::<Ix2>().expect("checked 2-D at construction")
    }
    fn dense_row(&self, o: usize, out: &mut [f32]) {
        let in_f = self.shape.1;
        let w = self.weight.data();
        out.copy_from_slice(&w.as_slice().expect("tensor data is standard layout")[o * in_f..(o + 1) * in_f]);
    }
    fn storage_bytes(&self) -> usize {
        4 * self.shape.0 * self.shape.1
    }
    fn format(&self) -> &'static str {
        "f32"
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// A weight that is not there yet: a projection of a known shape with no values, the placeholder a
/// model skeleton holds until a loader installs each layer's real format. Building a model with it
/// allocates no weight memory at all:
///
/// ```
/// use std::sync::Arc;
/// use tt_tensor::nn::Linear;
/// use tt_tensor::projection::{Projection, Unloaded};
/// let layer = Linear::from_projection(Arc::new(Unloaded::new(4096, 4096)), None, "fc.weight").unwrap();
/// let p = layer.installed_projection().unwrap();
/// assert_eq!((p.shape(), p.format(), p.storage_bytes()), ((4096, 4096), "unloaded", 0));
/// assert!(layer.weight.is_released());
/// ```
///
/// Computing with it is a bug in the loader (a loader replaces every placeholder, and refuses a
/// file that leaves one out), so its computing methods panic rather than return made-up values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unloaded {
    shape: (usize, usize),
}

impl Unloaded {
    /// A placeholder for a `[out, in]` weight.
    pub fn new(out_features: usize, in_features: usize) -> Unloaded {
        Unloaded { shape: (out_features, in_features) }
    }

    fn never_loaded(&self, what: &str) -> ! {
        panic!(
            "{what} of an unloaded {}x{} weight: the layer's weights were never loaded (a model skeleton used \
             before a checkpoint filled it)",
            self.shape.0, self.shape.1
        )
    }
}

impl Projection for Unloaded {
    fn shape(&self) -> (usize, usize) {
        self.shape
    }
    /// # Panics
    /// Always: the layer's weights were never loaded.
    fn forward_rows(&self, _x: &[f32], _rows: usize, _bias: Option<&[f32]>, _y: &mut [f32], _ws: &mut [u8]) {
        self.never_loaded("forward_rows")
    }
    /// # Panics
    /// Always: the layer's weights were never loaded.
    fn to_dense(&self) -> Array2<f32> {
        self.never_loaded("to_dense")
    }
    /// # Panics
    /// Always: the layer's weights were never loaded.
    fn dense_row(&self, _o: usize, _out: &mut [f32]) {
        self.never_loaded("dense_row")
    }
    fn storage_bytes(&self) -> usize {
        0
    }
    fn format(&self) -> &'static str {
        "unloaded"
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// Runs `p` on a few random rows and compares with `to_dense()` in f64: the maximum absolute
/// difference. Implementations of new formats call this in their tests.
pub fn check_projection(p: &dyn Projection, rows: usize, seed: u64) -> Result<f32> {
    let (out_f, in_f) = p.shape();
    let x = crate::tensor::randn_array(
        &[rows, in_f],
        0.0,
        1.0,
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed),
    );
    let x = x.as_slice().expect("fresh array").to_vec();
    let bias: Vec<f32> = (0..out_f).map(|o| 0.01 * o as f32).collect();
    let mut y = vec![0.0; rows * out_f];
    let mut ws = Workspace::default();
    ws.ensure(p.workspace_len(rows));
    project(p, &x, rows, Some(&bias), &mut y, ws.bytes())?;
    let w = p.to_dense();
    let mut worst = 0.0f32;
    for r in 0..rows {
        for o in 0..out_f {
            let want: f64 = bias[o] as f64 + (0..in_f).map(|i| x[r * in_f + i] as f64 * w[[o, i]] as f64).sum::<f64>();
            worst = worst.max((y[r * out_f + o] as f64 - want).abs() as f32);
        }
    }
    Ok(worst)
}

/// A projection installed in a layer, with the weight state it was installed over.
///
/// Installing sets the layer's dense weight to `to_dense()`, so checkpoints, gradients and
/// evaluation see one function. If the weight is written afterwards (an optimizer step, a loaded
/// checkpoint, a replaced tensor), the projection no longer matches it: using it then is an error
/// rather than a silently different model.
#[derive(Debug, Clone)]
pub(crate) struct InstalledProjection {
    projection: Arc<dyn Projection>,
    weight_id: u64,
    weight_version: u64,
}

impl InstalledProjection {
    /// Installs `p` over `weight`, whose values become `p.to_dense()` reshaped to `weight`'s shape.
    pub(crate) fn install(op: &'static str, weight: &Tensor, p: Arc<dyn Projection>) -> Result<InstalledProjection> {
        let shape = weight.shape();
        let rows = shape.first().copied().unwrap_or(0);
        let cols: usize = shape.iter().skip(1).product();
        if p.shape() != (rows, cols) {
            return Err(TensorError::arg(
                op,
                format!(
                    "a '{}' projection of shape {:?} does not fit weight {shape:?} (needs ({rows}, {cols}))",
                    p.format(),
                    p.shape()
                ),
            ));
        }
        // A released weight stays released: the new format becomes its only copy (what a loader
        // filling a model built format by format does), and the values changed, so the version.
        // Its `to_dense` is not run here (that would build the dense copy this avoids): a format
        // whose `to_dense` disagrees with its `shape()` breaks the contract `check_projection`
        // tests, and the weight's next read panics on it.
        if let Some(label) = weight.released_label() {
            refuse_self_view(op, &label, &p, weight)?;
            weight.replace_released(&label, materializer(p.clone(), shape));
            return Ok(InstalledProjection { projection: p, weight_id: weight.id(), weight_version: weight.version() });
        }
        let dense = p.to_dense();
        if dense.dim() != (rows, cols) {
            return Err(TensorError::arg(
                op,
                format!("to_dense() of a '{}' projection has shape {:?}, not its shape()", p.format(), dense.dim()),
            ));
        }
        let dense =
            dense.into_shape_with_order(ndarray::IxDyn(&shape)).map_err(|e| TensorError::arg(op, e.to_string()))?;
        weight.set_data(dense)?;
        Ok(InstalledProjection { projection: p, weight_id: weight.id(), weight_version: weight.version() })
    }

    /// The projection, if `weight` is still the tensor it was installed over, unchanged.
    pub(crate) fn current(&self, op: &'static str, weight: &Tensor) -> Result<&Arc<dyn Projection>> {
        if weight.id() != self.weight_id || weight.version() != self.weight_version {
            return Err(TensorError::arg(
                op,
                format!(
                    "the weight changed after a '{}' projection was installed (training step, loaded checkpoint or replaced tensor); install it again or clear it",
                    self.projection.format()
                ),
            ));
        }
        Ok(&self.projection)
    }

    pub(crate) fn projection(&self) -> &Arc<dyn Projection> {
        &self.projection
    }

    /// Releases `weight`'s dense values (see [`Tensor::release`]): reads recompute them from the
    /// projection, so the projection's storage is the only copy resident. Returns the bytes freed.
    ///
    /// # Errors
    /// The weight changed since installing (the projection would recompute other values).
    pub(crate) fn release(&self, op: &'static str, label: &str, weight: &Tensor) -> Result<usize> {
        let p = self.current(op, weight)?.clone();
        refuse_self_view(op, label, &p, weight)?;
        weight.release_if(label, materializer(p, weight.shape()), Some(self.weight_version))
    }

    /// A layer's weight that exists only as `p` (see [`Tensor::released_param`]): `shape` is the
    /// weight's, whose element count must be `p`'s `out × in`.
    pub(crate) fn born_released(
        op: &'static str,
        label: &str,
        shape: &[usize],
        p: Arc<dyn Projection>,
    ) -> Result<(Tensor, InstalledProjection)> {
        let (rows, cols) = p.shape();
        if shape.first() != Some(&rows) || shape.iter().skip(1).product::<usize>() != cols {
            return Err(TensorError::arg(
                op,
                format!("a '{}' projection of shape {:?} does not fit weight {shape:?}", p.format(), p.shape()),
            ));
        }
        let weight = Tensor::released_param(shape, label, materializer(p.clone(), shape.to_vec()));
        let installed = InstalledProjection { projection: p, weight_id: weight.id(), weight_version: weight.version() };
        Ok((weight, installed))
    }
}

/// The projection a layer with format `slot` computes with: the installed one, or a [`DenseF32`]
/// sharing `weight` (no copy).
pub(crate) fn layer_projection(
    op: &'static str,
    slot: &Option<InstalledProjection>,
    weight: &Tensor,
) -> Result<Arc<dyn Projection>> {
    match slot {
        Some(i) => Ok(i.current(op, weight)?.clone()),
        None => Ok(Arc::new(DenseF32::new(weight.clone())?)),
    }
}

/// Releases the dense `weight` of a layer with format `slot` (see [`Tensor::release`]).
pub(crate) fn release_layer_weight(
    op: &'static str,
    slot: &Option<InstalledProjection>,
    label: &str,
    weight: &Tensor,
) -> Result<usize> {
    match slot {
        Some(i) => i.release(op, label, weight),
        None => Err(TensorError::arg(
            op,
            format!("{label}: no weight format installed, so the dense weight is the only copy"),
        )),
    }
}

/// Removes a layer's format; its dense weight becomes the layer's only copy, so it is made
/// resident again if it was released.
pub(crate) fn clear_layer_format(
    slot: &mut Option<InstalledProjection>,
    weight: &Tensor,
) -> Option<Arc<dyn Projection>> {
    weight.make_resident();
    slot.take().map(|i| i.projection)
}

/// Refuses `p` as the only copy of `weight` when it is a dense view of that same tensor: it would
/// recompute the weight by reading the weight.
fn refuse_self_view(op: &'static str, label: &str, p: &Arc<dyn Projection>, weight: &Tensor) -> Result<()> {
    let shares = p.as_any().and_then(|a| a.downcast_ref::<DenseF32>()).is_some_and(|d| d.weight().id() == weight.id());
    if shares {
        return Err(TensorError::arg(
            op,
            format!("{label}: its format is a dense view of the weight itself, which cannot be its only copy"),
        ));
    }
    Ok(())
}

/// Recomputes a weight of `shape` from `p` (whose `(out, in)` flattens `shape`).
fn materializer(p: Arc<dyn Projection>, shape: Vec<usize>) -> crate::tensor::Materialize {
    Arc::new(move || {
        // install() / born_released() checked that (out, in) flattens this shape; a format's
        // to_dense is (out, in) by the trait's contract.
        p.to_dense().into_shape_with_order(ndarray::IxDyn(&shape)).expect("checked when built").into_dyn()
    })
}

/// Refuses an op that needs `weight`'s values in memory — a recorded graph (training, gradient
/// checks) — when they were released for inference.
pub(crate) fn check_resident(op: &'static str, weight: &Tensor) -> Result<()> {
    match weight.released_label() {
        Some(label) => Err(TensorError::arg(
            op,
            format!(
                "{label} holds no dense values (released by nn::freeze, or built from its format): a recorded graph (training) needs them; call nn::thaw on the model first"
            ),
        )),
        None => Ok(()),
    }
}

/// Whether an op over these inputs records a graph (then the dense weight must be used).
pub(crate) fn records_graph(inputs: &[Option<&Tensor>]) -> bool {
    crate::is_grad_enabled() && inputs.iter().flatten().any(|t| t.requires_grad())
}
