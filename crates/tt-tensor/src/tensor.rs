//! The `Tensor` type and the reverse-mode autograd engine.
//!
//! A `Tensor` is a cheap handle (`Arc`) to an n-dimensional, contiguous (standard-layout) `f32`
//! array plus, when it was produced by a differentiable op while gradients were enabled, the
//! node that produced it. `backward()` walks those nodes in reverse topological order.
//!
//! Invariants:
//! - `data` is always in standard (row-major, contiguous) layout.
//! - A tensor has a graph node only if it `requires_grad`; leaves that require grad accumulate
//!   into `.grad()`, intermediate results do not keep their gradients.
//! - Inside [`no_grad`] no node is built and no closure is allocated: ops cost what their kernel costs.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Result, TensorError};

/// The array type every tensor stores.
pub type Array = ArrayD<f32>;

/// A gradient function: given d(loss)/d(output), returns d(loss)/d(input) for each input
/// (`None` for inputs that need no gradient).
pub type BackwardFn = Box<dyn Fn(&Array) -> Vec<Option<Array>> + Send + Sync>;

pub(crate) struct Node {
    pub(crate) op: &'static str,
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) backward: BackwardFn,
}

struct Inner {
    id: u64,
    data: RwLock<Array>,
    grad: Mutex<Option<Array>>,
    requires_grad: AtomicBool,
    /// Bumped on every write access, so derived state (an installed projection) can tell when the
    /// values it was built from have changed.
    version: AtomicU64,
    node: Option<Node>,
    /// Set while the values are released ([`Tensor::release`]); the flag lets `data()` skip the
    /// lock on every resident tensor.
    is_released: AtomicBool,
    released: Mutex<Option<Released>>,
}

/// Recomputes a released tensor's values on demand: the array it held, in its shape.
pub type Materialize = Arc<dyn Fn() -> Array + Send + Sync>;

/// What a released tensor keeps instead of its values.
struct Released {
    /// Names the tensor in errors (`"blocks.0.mlp.fc.weight"`).
    label: String,
    shape: Vec<usize>,
    materialize: Materialize,
}

/// Read access to a tensor's values: the resident array, or — for a released tensor — a
/// temporary copy recomputed for this read and freed when it is dropped.
pub enum DataRef<'a> {
    Resident(RwLockReadGuard<'a, Array>),
    Materialized(Array),
}

impl std::ops::Deref for DataRef<'_> {
    type Target = Array;
    fn deref(&self) -> &Array {
        match self {
            DataRef::Resident(g) => g,
            DataRef::Materialized(a) => a,
        }
    }
}

/// An n-dimensional f32 tensor with optional gradient tracking. Cloning is cheap (shared handle).
#[derive(Clone)]
pub struct Tensor {
    inner: Arc<Inner>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread currently record a graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` with graph recording disabled on this thread (inference mode).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// RAII guard: graph recording is off while it lives, restored to the previous state on drop.
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    pub fn new() -> Self {
        let prev = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { prev }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(label) = self.released_label() {
            // Printing must not recompute a released weight.
            return f.debug_struct("Tensor").field("shape", &self.shape()).field("released", &label).finish();
        }
        let data = self.data();
        let mut d = f.debug_struct("Tensor");
        d.field("shape", &data.shape());
        if let Some(node) = &self.inner.node {
            d.field("op", &node.op);
        }
        d.field("requires_grad", &self.requires_grad());
        if data.len() <= 16 {
            d.field("data", &data.iter().copied().collect::<Vec<f32>>());
        }
        d.finish()
    }
}

impl Tensor {
    fn make(data: Array, requires_grad: bool, node: Option<Node>) -> Tensor {
        let data = if data.is_standard_layout() { data } else { data.as_standard_layout().into_owned() };
        Tensor {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                data: RwLock::new(data),
                grad: Mutex::new(None),
                requires_grad: AtomicBool::new(requires_grad),
                version: AtomicU64::new(0),
                node,
                is_released: AtomicBool::new(false),
                released: Mutex::new(None),
            }),
        }
    }

    /// Wraps an array as a constant (no gradient).
    pub fn from_array(data: Array) -> Tensor {
        Tensor::make(data, false, None)
    }

    /// Wraps an array as a trainable parameter (a leaf that requires grad).
    pub fn param(data: Array) -> Tensor {
        Tensor::make(data, true, None)
    }

    /// Builds a tensor from a flat vector and a shape.
    ///
    /// # Errors
    /// If the shape's element count overflows or differs from `data.len()`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel("from_vec", shape)?;
        if n != data.len() {
            return Err(TensorError::invalid_shape(
                "from_vec",
                shape,
                format!("shape holds {n} elements but {} were given", data.len()),
            ));
        }
        let arr = Array::from_shape_vec(IxDyn(shape), data).expect("size checked above");
        Ok(Tensor::from_array(arr))
    }

    /// A 0-dimensional tensor holding one value.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::from_array(Array::from_elem(IxDyn(&[]), v))
    }

    /// All zeros. The checked form is [`Tensor::try_zeros`].
    ///
    /// # Panics
    /// If the shape's element count overflows (more than `isize::MAX` bytes of f32).
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::try_zeros(shape).unwrap_or_else(|e| panic!("{e}"))
    }

    /// All zeros.
    ///
    /// # Errors
    /// If the shape's element count overflows (more than `isize::MAX` bytes of f32).
    pub fn try_zeros(shape: &[usize]) -> Result<Tensor> {
        checked_numel("zeros", shape)?;
        Ok(Tensor::from_array(Array::zeros(IxDyn(shape))))
    }

    /// All ones. The checked form is [`Tensor::try_ones`].
    ///
    /// # Panics
    /// If the shape's element count overflows (more than `isize::MAX` bytes of f32).
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::try_ones(shape).unwrap_or_else(|e| panic!("{e}"))
    }

    /// All ones.
    ///
    /// # Errors
    /// If the shape's element count overflows (more than `isize::MAX` bytes of f32).
    pub fn try_ones(shape: &[usize]) -> Result<Tensor> {
        checked_numel("ones", shape)?;
        Ok(Tensor::from_array(Array::ones(IxDyn(shape))))
    }

    /// Every element `v`. The checked form is [`Tensor::try_full`].
    ///
    /// # Panics
    /// If the shape's element count overflows (more than `isize::MAX` bytes of f32).
    pub fn full(shape: &[usize], v: f32) -> Tensor {
        Tensor::try_full(shape, v).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every element `v` (any value, NaN included: this is a fill, not a hyperparameter).
    ///
    /// # Errors
    /// If the shape's element count overflows (more than `isize::MAX` bytes of f32).
    pub fn try_full(shape: &[usize], v: f32) -> Result<Tensor> {
        checked_numel("full", shape)?;
        Ok(Tensor::from_array(Array::from_elem(IxDyn(shape), v)))
    }

    /// `[0, 1, ..., n-1]` as f32 (exact up to 2²⁴). The checked form is [`Tensor::try_arange`].
    ///
    /// # Panics
    /// If `n` f32 values overflow `isize::MAX` bytes.
    pub fn arange(n: usize) -> Tensor {
        Tensor::try_arange(n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `[0, 1, ..., n-1]` as f32 (exact up to 2²⁴).
    ///
    /// # Errors
    /// If `n` f32 values overflow `isize::MAX` bytes.
    pub fn try_arange(n: usize) -> Result<Tensor> {
        checked_numel("arange", &[n])?;
        Ok(Tensor::from_array(Array::from_shape_fn(IxDyn(&[n]), |i| i[0] as f32)))
    }

    /// Samples from N(mean, std²) with a ChaCha8 generator seeded by `seed`. The checked form is
    /// [`Tensor::try_randn`].
    ///
    /// # Panics
    /// On the arguments [`Tensor::try_randn`] rejects.
    pub fn randn(shape: &[usize], mean: f32, std: f32, seed: u64) -> Tensor {
        Tensor::try_randn(shape, mean, std, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Samples from N(mean, std²) with a ChaCha8 generator seeded by `seed`.
    ///
    /// # Errors
    /// A non-finite `mean`, a `std` that is negative or not finite, or a shape whose element
    /// count overflows.
    pub fn try_randn(shape: &[usize], mean: f32, std: f32, seed: u64) -> Result<Tensor> {
        check_normal("randn", mean, std)?;
        checked_numel("randn", shape)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Ok(Tensor::from_array(randn_array(shape, mean, std, &mut rng)))
    }

    /// Samples from U[low, high) with a ChaCha8 generator seeded by `seed`. The checked form is
    /// [`Tensor::try_rand_uniform`].
    ///
    /// # Panics
    /// On the arguments [`Tensor::try_rand_uniform`] rejects.
    pub fn rand_uniform(shape: &[usize], low: f32, high: f32, seed: u64) -> Tensor {
        Tensor::try_rand_uniform(shape, low, high, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Samples from U[low, high) with a ChaCha8 generator seeded by `seed`.
    ///
    /// # Errors
    /// Bounds that are not finite, `low >= high`, a range `high − low` that overflows, or a shape
    /// whose element count overflows.
    pub fn try_rand_uniform(shape: &[usize], low: f32, high: f32, seed: u64) -> Result<Tensor> {
        check_uniform("rand_uniform", low, high)?;
        checked_numel("rand_uniform", shape)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Ok(Tensor::from_array(uniform_array(shape, low, high, &mut rng)))
    }

    /// Unique id of this tensor node (stable for its lifetime).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Read access to the values. A released tensor ([`Tensor::release`]) recomputes them for
    /// this read only: the copy is freed when the returned value is dropped, so reading (saving a
    /// checkpoint, `to_dense`, a debug print) never makes the dense values resident again.
    ///
    /// # Deadlocks
    /// A resident read holds the tensor's read lock: a thread that holds one and then waits on a
    /// write of the same tensor (`data_mut`, `set_data`, `release`) blocks forever, as does a
    /// second read while another thread waits to write (the lock favours writers).
    pub fn data(&self) -> DataRef<'_> {
        loop {
            // `release` and `make_resident` change the flag only under the write lock: read under
            // the read lock, a clear flag means the array is the values.
            let guard = self.inner.data.read().unwrap_or_else(|e| e.into_inner());
            if !self.inner.is_released.load(Ordering::Acquire) {
                return DataRef::Resident(guard);
            }
            drop(guard);
            // Taken out of the state and run with no lock held: recomputing can take long, and
            // must not block the tensor's other readers.
            let materialize = self.released_state().as_ref().map(|r| Arc::clone(&r.materialize));
            if let Some(m) = materialize {
                return DataRef::Materialized(m());
            }
            // Made resident in between: read it.
        }
    }

    /// Write access to the underlying array, for optimizers and weight surgery. Writing through it
    /// must keep the shape (use [`Tensor::set_data`] to change values wholesale). A released
    /// tensor is made resident first ([`Tensor::make_resident`]): writing means training or
    /// surgery, which needs the values in memory.
    pub fn data_mut(&self) -> RwLockWriteGuard<'_, Array> {
        loop {
            self.make_resident();
            let guard = self.inner.data.write().unwrap_or_else(|e| e.into_inner());
            // Released again between the two: make it resident again.
            if !self.inner.is_released.load(Ordering::Acquire) {
                self.inner.version.fetch_add(1, Ordering::Relaxed);
                return guard;
            }
        }
    }

    fn released_state(&self) -> std::sync::MutexGuard<'_, Option<Released>> {
        self.inner.released.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees the values, keeping the shape and a way to recompute them: after a weight format was
    /// installed over this tensor (so `materialize` — the format's `to_dense` — gives exactly the
    /// values it holds), the format's bytes become the only copy resident. Reads recompute a
    /// temporary copy ([`Tensor::data`]); writes make it resident again. The version does not
    /// change: the values are the same. `label` names the tensor in errors. Returns the bytes
    /// freed (0 if it was already released).
    ///
    /// `materialize` must not read this tensor (it would recompute itself forever): a dense view
    /// sharing the tensor cannot be its only copy.
    ///
    /// # Errors
    /// `materialize` gives an array of another shape (checked once, here).
    pub fn release(&self, label: &str, materialize: Materialize) -> Result<usize> {
        self.release_if(label, materialize, None)
    }

    /// [`Tensor::release`], only if the version is still `version` (checked under the write lock,
    /// so a write racing with the release is not replaced by the format's values).
    pub(crate) fn release_if(&self, label: &str, materialize: Materialize, version: Option<u64>) -> Result<usize> {
        // Recomputed before any lock is taken (it can take long, and a wrong one must not hang).
        let check = materialize();
        let mut state = self.released_state();
        if state.is_some() {
            return Ok(0);
        }
        let mut data = self.inner.data.write().unwrap_or_else(|e| e.into_inner());
        if version.is_some_and(|v| v != self.version()) {
            return Err(TensorError::arg(
                "Tensor::release",
                format!("{label} was written after its format was built: the format would recompute other values"),
            ));
        }
        if check.shape() != data.shape() {
            return Err(TensorError::shape("Tensor::release (materialized vs held)", check.shape(), data.shape()));
        }
        drop(check);
        let freed = data.len() * std::mem::size_of::<f32>();
        let shape = data.shape().to_vec();
        *data = Array::zeros(IxDyn(&[0]));
        *state = Some(Released { label: label.to_string(), shape, materialize });
        self.inner.is_released.store(true, Ordering::Release);
        Ok(freed)
    }

    /// A parameter born released: it never holds its values, only `materialize`, which must give
    /// an array of `shape` (the caller's invariant: layers build it from a format of that
    /// shape). What a model built format by format uses ([`crate::nn::Linear::from_projection`]),
    /// so its dense weights never exist all at once.
    pub(crate) fn released_param(shape: &[usize], label: &str, materialize: Materialize) -> Tensor {
        let t = Tensor::make(Array::zeros(IxDyn(&[0])), true, None);
        *t.released_state() = Some(Released { label: label.to_string(), shape: shape.to_vec(), materialize });
        t.inner.is_released.store(true, Ordering::Release);
        t
    }

    /// Gives a released tensor new values to recompute (a new format installed over it), as a
    /// write: the version changes. A resident tensor is released with them.
    pub(crate) fn replace_released(&self, label: &str, materialize: Materialize) {
        let mut state = self.released_state();
        let mut data = self.inner.data.write().unwrap_or_else(|e| e.into_inner());
        let shape = match state.as_ref() {
            Some(r) => r.shape.clone(),
            None => data.shape().to_vec(),
        };
        *data = Array::zeros(IxDyn(&[0]));
        *state = Some(Released { label: label.to_string(), shape, materialize });
        self.inner.is_released.store(true, Ordering::Release);
        self.inner.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the values are released ([`Tensor::release`]).
    pub fn is_released(&self) -> bool {
        self.inner.is_released.load(Ordering::Acquire)
    }

    /// The label a released tensor was given, for errors; `None` if it is resident.
    pub fn released_label(&self) -> Option<String> {
        // A resident tensor answers without taking the state's lock, so a thread holding one of
        // its read guards cannot deadlock against a `release` waiting for the write lock.
        if !self.is_released() {
            return None;
        }
        self.released_state().as_ref().map(|r| r.label.clone())
    }

    /// Brings a released tensor's values back into memory (no version change: the values are the
    /// ones it was released with); nothing for a resident tensor.
    pub fn make_resident(&self) {
        if !self.is_released() {
            return;
        }
        let mut state = self.released_state();
        if let Some(r) = state.take() {
            let values = (r.materialize)();
            let values = if values.is_standard_layout() { values } else { values.as_standard_layout().into_owned() };
            let mut data = self.inner.data.write().unwrap_or_else(|e| e.into_inner());
            *data = values;
            self.inner.is_released.store(false, Ordering::Release);
        }
    }

    /// How many times the values were opened for writing ([`Tensor::data_mut`], [`Tensor::set_data`],
    /// optimizer steps). Equal versions of the same tensor ([`Tensor::id`]) mean unchanged values.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Relaxed)
    }

    /// Replaces the values; the new array must have the same shape.
    ///
    /// # Deadlocks
    /// It takes the write lock, so it blocks forever if this thread still holds a guard from
    /// [`Tensor::data`] — including a temporary in the same statement:
    /// `t.set_data(t.data().mapv(f))` deadlocks; bind the new array first
    /// (`let new = t.data().mapv(f); t.set_data(new)`).
    pub fn set_data(&self, new: Array) -> Result<()> {
        let mut d = self.data_mut();
        if d.shape() != new.shape() {
            return Err(TensorError::shape("set_data", d.shape(), new.shape()));
        }
        *d = if new.is_standard_layout() { new } else { new.as_standard_layout().into_owned() };
        Ok(())
    }

    /// The shape (of the values a released tensor would recompute).
    pub fn shape(&self) -> Vec<usize> {
        loop {
            // As in `data`: a clear flag read under the read lock means the array is the values.
            let guard = self.inner.data.read().unwrap_or_else(|e| e.into_inner());
            if !self.inner.is_released.load(Ordering::Acquire) {
                return guard.shape().to_vec();
            }
            drop(guard);
            if let Some(r) = self.released_state().as_ref() {
                return r.shape.clone();
            }
        }
    }

    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// Flat copy of the values in row-major order.
    pub fn to_vec(&self) -> Vec<f32> {
        self.data().iter().copied().collect()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        let d = self.data();
        if d.len() != 1 {
            return Err(TensorError::invalid_shape("item", d.shape(), "item() needs exactly one element"));
        }
        Ok(*d.iter().next().expect("one element"))
    }

    pub fn requires_grad(&self) -> bool {
        self.inner.requires_grad.load(Ordering::Relaxed)
    }

    /// Marks a leaf as trainable (or not). Only meaningful on leaves.
    pub fn set_requires_grad(&self, on: bool) {
        self.inner.requires_grad.store(on, Ordering::Relaxed);
    }

    /// Name of the op that produced this tensor, if it is part of a graph.
    pub fn op_name(&self) -> Option<&'static str> {
        self.inner.node.as_ref().map(|n| n.op)
    }

    /// A new constant tensor sharing no graph with this one (values copied).
    pub fn detach(&self) -> Tensor {
        Tensor::from_array(self.data().clone())
    }

    /// The accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Array> {
        self.inner.grad.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `f` on the gradient without cloning it.
    pub fn with_grad<R>(&self, f: impl FnOnce(Option<&Array>) -> R) -> R {
        let g = self.inner.grad.lock().unwrap_or_else(|e| e.into_inner());
        f(g.as_ref())
    }

    pub fn zero_grad(&self) {
        *self.inner.grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Replaces the stored gradient (gradient surgery such as clipping).
    ///
    /// # Errors
    /// If the new gradient's shape is not this tensor's (the gradient is left unchanged).
    pub fn set_grad(&self, g: Option<Array>) -> Result<()> {
        if let Some(g) = &g {
            let shape = self.shape();
            if g.shape() != shape.as_slice() {
                return Err(TensorError::shape("set_grad (tensor vs gradient)", &shape, g.shape()));
            }
        }
        *self.inner.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
        Ok(())
    }

    fn accumulate_grad(&self, g: Array) {
        let mut slot = self.inner.grad.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(existing) => *existing += &g,
            None => *slot = Some(g),
        }
    }

    /// Builds the result of an op. `backward` is only called (and its captures only cloned) when
    /// gradients are enabled and some input requires grad.
    pub(crate) fn from_op<F>(data: Array, inputs: &[&Tensor], op: &'static str, backward: F) -> Tensor
    where
        F: FnOnce() -> BackwardFn,
    {
        if is_grad_enabled() && inputs.iter().any(|t| t.requires_grad()) {
            let node = Node { op, inputs: inputs.iter().map(|t| (*t).clone()).collect(), backward: backward() };
            Tensor::make(data, true, Some(node))
        } else {
            Tensor::make(data, false, None)
        }
    }

    /// Builds the result of a user-defined differentiable op (the role of `torch.autograd.Function`):
    /// `output` was computed from `inputs` by the caller's kernel, and `backward` (called only when
    /// a graph is being recorded) returns the closure mapping d(loss)/d(output) to one gradient per
    /// input, each of that input's shape. Used for fused kernels whose gradient is derived by hand;
    /// such an op must have a finite-difference gradient check of its own.
    pub fn custom_op<F>(name: &'static str, inputs: &[&Tensor], output: Array, backward: F) -> Tensor
    where
        F: FnOnce() -> BackwardFn,
    {
        Tensor::from_op(output, inputs, name, backward)
    }

    /// Back-propagates from a one-element tensor (d self / d self = 1).
    pub fn backward(&self) -> Result<()> {
        let shape = self.shape();
        if shape.iter().product::<usize>() != 1 {
            return Err(TensorError::Autograd(format!(
                "backward() needs a one-element tensor, got shape {shape:?}; use backward_with(grad)"
            )));
        }
        self.backward_with(Array::ones(IxDyn(&shape)))
    }

    /// Back-propagates an explicit upstream gradient of this tensor's shape.
    pub fn backward_with(&self, grad: Array) -> Result<()> {
        if grad.shape() != self.shape().as_slice() {
            return Err(TensorError::shape("backward_with", &self.shape(), grad.shape()));
        }
        if !self.requires_grad() {
            return Err(TensorError::Autograd(
                "backward() on a tensor that does not require grad (built under no_grad, or from constants)".into(),
            ));
        }
        let order = self.topo_order();
        let mut grads: HashMap<u64, Array> = HashMap::new();
        grads.insert(self.id(), grad);
        // `order` lists every node after all of its inputs, so walking it backwards visits each
        // node only once all consumers have contributed to its gradient.
        for t in order.iter().rev() {
            let Some(g) = grads.remove(&t.id()) else {
                continue;
            };
            // Backward closures may index gradients as flat slices.
            let g = if g.is_standard_layout() { g } else { g.as_standard_layout().into_owned() };
            match &t.inner.node {
                Some(node) => {
                    let input_grads = {
                        let _scope = crate::hook::OpScope::begin_phase(node.op, crate::hook::Phase::Backward, || {
                            crate::hook::OpInfo {
                                input_shapes: node.inputs.iter().map(|i| i.shape()).collect(),
                                flops: 0,
                                bytes: 0,
                            }
                        });
                        (node.backward)(&g)
                    };
                    // Built-in ops always agree; a custom op's backward may not, and a wrong count or
                    // shape would otherwise be dropped or broadcast silently.
                    if input_grads.len() != node.inputs.len() {
                        return Err(TensorError::Autograd(format!(
                            "backward of op {} returned {} gradients for {} inputs",
                            node.op,
                            input_grads.len(),
                            node.inputs.len()
                        )));
                    }
                    for (i, (input, ig)) in node.inputs.iter().zip(input_grads).enumerate() {
                        let Some(ig) = ig else { continue };
                        if !input.requires_grad() {
                            continue;
                        }
                        if ig.shape() != input.shape().as_slice() {
                            return Err(TensorError::Autograd(format!(
                                "backward of op {} returned a gradient of shape {:?} for input {i} of shape {:?}",
                                node.op,
                                ig.shape(),
                                input.shape()
                            )));
                        }
                        match grads.get_mut(&input.id()) {
                            Some(acc) => *acc += &ig,
                            None => {
                                grads.insert(input.id(), ig);
                            }
                        }
                    }
                }
                None => t.accumulate_grad(g),
            }
        }
        Ok(())
    }

    /// Nodes reachable from `self` that require grad, inputs before consumers (iterative DFS).
    fn topo_order(&self) -> Vec<Tensor> {
        let mut order = Vec::new();
        let mut visited = std::collections::HashSet::new();
        let mut stack: Vec<(Tensor, bool)> = vec![(self.clone(), false)];
        while let Some((t, expanded)) = stack.pop() {
            if expanded {
                order.push(t);
                continue;
            }
            if !visited.insert(t.id()) {
                continue;
            }
            stack.push((t.clone(), true));
            if let Some(node) = &t.inner.node {
                for input in &node.inputs {
                    if input.requires_grad() && !visited.contains(&input.id()) {
                        stack.push((input.clone(), false));
                    }
                }
            }
        }
        order
    }
}

/// Element count of `shape`, or an error naming `op` when it overflows: the product of the
/// non-zero dims (what ndarray requires to fit) times the size of an f32 must fit in `isize`.
/// Found before anything is allocated.
pub(crate) fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    let nonzero = shape.iter().filter(|&&d| d != 0).try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match nonzero.and_then(|n| n.checked_mul(std::mem::size_of::<f32>())) {
        Some(bytes) if bytes <= isize::MAX as usize => {
            Ok(if shape.contains(&0) { 0 } else { bytes / std::mem::size_of::<f32>() })
        }
        _ => Err(TensorError::invalid_shape(op, shape, "element count overflows (more than isize::MAX bytes of f32)")),
    }
}

/// `mean` finite, `std` finite and non-negative.
pub(crate) fn check_normal(op: &'static str, mean: f32, std: f32) -> Result<()> {
    if !mean.is_finite() {
        return Err(TensorError::arg(op, format!("mean {mean} must be finite")));
    }
    if !(std >= 0.0 && std.is_finite()) {
        return Err(TensorError::arg(op, format!("std {std} must be finite and >= 0")));
    }
    Ok(())
}

/// `low < high`, both finite, and `high − low` finite (the sampler scales by it).
pub(crate) fn check_uniform(op: &'static str, low: f32, high: f32) -> Result<()> {
    if !(low.is_finite() && high.is_finite() && low < high && (high - low).is_finite()) {
        return Err(TensorError::arg(op, format!("bounds low {low}, high {high} must be finite with low < high")));
    }
    Ok(())
}

/// N(mean, std²) samples as an array, from a caller-owned generator.
///
/// # Panics
/// If the shape's element count overflows (ndarray's check). [`Tensor::try_randn`] validates its
/// arguments first.
pub fn randn_array(shape: &[usize], mean: f32, std: f32, rng: &mut impl Rng) -> Array {
    Array::from_shape_simple_fn(IxDyn(shape), || {
        let z: f32 = StandardNormal.sample(rng);
        mean + std * z
    })
}

/// U[low, high) samples as an array, from a caller-owned generator.
///
/// # Panics
/// If `low >= high` or a bound is not finite (the generator's check), or the shape's element
/// count overflows. [`Tensor::try_rand_uniform`] validates its arguments first.
pub fn uniform_array(shape: &[usize], low: f32, high: f32, rng: &mut impl Rng) -> Array {
    Array::from_shape_simple_fn(IxDyn(shape), || rng.random_range(low..high))
}
