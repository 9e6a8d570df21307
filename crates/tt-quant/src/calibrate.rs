//! Static calibration: run representative data through the model and let an observer per layer
//! watch each `Linear`'s and `Conv2d`'s inputs, then freeze their `(S, Z)`.
//!
//! The observers attach through the projection seam — each layer's projection is wrapped for
//! the run in one that records its input rows and then computes as before — so no model code
//! changes and the KV-cached decoder or the tensor model can drive it alike. (tt-tensor's op hook
//! reports shapes and times, not values, so it cannot see activations; the seam sees the exact
//! rows the int8 kernel will quantize, im2col rows for convolutions included.) The layers get
//! their original projections back afterwards.

use std::sync::{Arc, Mutex};

use ndarray::Array2;
use tt_tensor::projection::{DenseF32, Projection};
use tt_tensor::Module;

use crate::error::{QuantError, Result};
use crate::linear::conv_matrix;
use crate::observer::Observer;
use crate::scheme::{QParams, QRange, Scheme};

/// A projection that shows its input rows to an observer, then runs the wrapped projection.
#[derive(Debug)]
struct Observing {
    inner: Arc<dyn Projection>,
    observer: Arc<Mutex<Box<dyn Observer>>>,
}

impl Projection for Observing {
    fn shape(&self) -> (usize, usize) {
        self.inner.shape()
    }
    fn workspace_len(&self, rows: usize) -> usize {
        self.inner.workspace_len(rows)
    }
    fn forward_rows(&self, x: &[f32], rows: usize, bias: Option<&[f32]>, y: &mut [f32], ws: &mut [u8]) {
        let n = rows * self.inner.shape().1;
        // A poisoned lock means another observer call panicked; that panic already reports.
        if let Ok(mut o) = self.observer.lock() {
            o.observe(&x[..n]);
        }
        self.inner.forward_rows(x, rows, bias, y, ws);
    }
    fn to_dense(&self) -> Array2<f32> {
        self.inner.to_dense()
    }
    fn storage_bytes(&self) -> usize {
        self.inner.storage_bytes()
    }
    fn format(&self) -> &'static str {
        "observing"
    }
}

/// What calibration observed: one observer per layer, by state-dict name.
#[derive(Debug)]
pub struct Calibration {
    pub layers: Vec<(String, Box<dyn Observer>)>,
}

impl Calibration {
    /// The frozen u8 affine `(S, Z)` of layer `name`'s inputs.
    ///
    /// # Errors
    /// An unknown layer, or one that saw no finite value during calibration.
    pub fn qparams(&self, name: &str) -> Result<QParams> {
        let (_, o) = self
            .layers
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| QuantError::arg("Calibration::qparams", format!("layer '{name}' was not calibrated")))?;
        o.qparams(Scheme::Affine, QRange::U8)
            .map_err(|e| QuantError::arg("Calibration::qparams", format!("layer '{name}': {e}")))
    }
}

/// Wraps every `Linear` and `Conv2d` below `m` with an observer made by `make`, calls `run(m)`
/// (which should run representative inputs through the model, without recording a graph), and
/// restores the layers' projections.
///
/// # Errors
/// A stale installed projection, or whatever `run` returns (the layers are restored first).
pub fn calibrate(
    m: &mut dyn Module,
    make: &dyn Fn() -> Box<dyn Observer>,
    run: &mut dyn FnMut(&dyn Module) -> Result<()>,
) -> Result<Calibration> {
    type Saved = (String, Option<Arc<dyn Projection>>, Arc<Mutex<Box<dyn Observer>>>);
    // First collect every layer's current projection (this can fail: a stale one), then wrap:
    // an error leaves no layer wrapped.
    // (name, the projection installed before, the one the wrapper runs)
    type Layer = (String, Option<Arc<dyn Projection>>, Arc<dyn Projection>);
    let mut inner: Vec<Layer> = Vec::new();
    tt_tensor::nn::map_linears(m, |name, l| {
        inner.push((name.to_string(), l.installed_projection().cloned(), l.projection()?));
        Ok(())
    })?;
    let linears = inner.len();
    tt_tensor::nn::map_conv2ds(m, |name, c| {
        let before = c.installed_projection().cloned();
        let p: Arc<dyn Projection> = match &before {
            Some(p) => Arc::clone(p),
            None => Arc::new(DenseF32::from_array(conv_matrix(c)?)),
        };
        inner.push((name.to_string(), before, p));
        Ok(())
    })?;
    let mut saved: Vec<Saved> = Vec::new();
    let mut wrappers = Vec::new();
    for (name, before, p) in inner {
        let observer = Arc::new(Mutex::new(make()));
        wrappers.push(Arc::new(Observing { inner: p, observer: Arc::clone(&observer) }) as Arc<dyn Projection>);
        saved.push((name, before, observer));
    }
    // Installing an observing wrapper cannot fail: it has its inner projection's shape.
    let mut next = wrappers.into_iter();
    tt_tensor::nn::map_linears(m, |_, l| match next.next() {
        Some(w) => l.set_projection(w),
        None => Ok(()),
    })?;
    tt_tensor::nn::map_conv2ds(m, |_, c| match next.next() {
        Some(w) => c.set_projection(w),
        None => Ok(()),
    })?;
    let outcome = tt_tensor::no_grad(|| run(&*m));
    // Restore in the same visiting order (the visitors are deterministic).
    let mut i = 0;
    tt_tensor::nn::map_linears(m, |_, l| {
        match saved[i].1.clone() {
            Some(p) => l.set_projection(p)?,
            None => drop(l.clear_projection()),
        }
        i += 1;
        Ok(())
    })?;
    tt_tensor::nn::map_conv2ds(m, |_, c| {
        match saved[i].1.clone() {
            Some(p) => c.set_projection(p)?,
            None => drop(c.clear_projection()),
        }
        i += 1;
        Ok(())
    })?;
    debug_assert_eq!(i, saved.len(), "{linears} linears then the convolutions");
    outcome?;
    let layers = saved
        .into_iter()
        .map(|(name, _, o)| {
            let o = Arc::try_unwrap(o)
                .map_err(|_| QuantError::arg("calibrate", format!("layer '{name}': its observer is still in use")))?
                .into_inner()
                .map_err(|_| QuantError::arg("calibrate", format!("layer '{name}': an observer call panicked")))?;
            Ok((name, o))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Calibration { layers })
}
