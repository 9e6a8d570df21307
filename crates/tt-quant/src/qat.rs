//! Quantization-aware training: train with the rounding in the forward pass, so the weights learn
//! to live with it, then convert to real int8.
//!
//! - [`fake_quantize`] is the autograd op: forward `S·(clamp(round(x/S) + Z) − Z)`, backward
//!   straight-through — the upstream gradient where the code was inside the clamp range, zero
//!   where it was clamped (Bengio et al. 2013; PyTorch's `FakeQuantize`).
//! - [`FakeQuant`] is a `tt_tensor::nn::ForwardTransform`: each forward fake-quantizes the weight
//!   (symmetric, per output channel, scales from the weight's current range — the same rule
//!   [`crate::QuantizedMatrix::quantize`] applies at conversion) and the input (affine u8 with the
//!   frozen `(S, Z)` of a calibration, rounded by [`fake_quantize_u8`] exactly as the int8 layer
//!   rounds its rows).
//! - [`prepare_qat`] installs it in every `Linear` and `Conv2d` by name; the model's ordinary
//!   training loop then fine-tunes it unchanged; [`convert_qat`] removes the transforms and installs
//!   static [`crate::Int8Linear`]s whose codes are exactly the fake-quantized weights.
//! - **Composition**: a layer that already carries a forward transform (a pruning mask, a
//!   low-rank factorization being fine-tuned) keeps it: [`FakeQuant`] is installed *over* it and
//!   fake-quantizes what it computes (`fq(W ⊙ M)`, `fq(U·V)`), so pruned weights keep a zero
//!   gradient and stay pruned. [`convert_qat`] quantizes that same matrix and puts the transform
//!   underneath back (the mask keeps guarding the zeros during any further training).
//!
//! Activation ranges are frozen from a calibration rather than tracked by a moving average during
//! training: data-parallel shards run forwards concurrently, and an observer updated in thread
//! order would make training depend on scheduling. Frozen ranges keep every run reproducible.

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use tt_tensor::nn::ForwardTransform;
use tt_tensor::{Module, Tensor};

use crate::calibrate::Calibration;
use crate::error::{QuantError, Result};
use crate::linear::{install_int8, Activations, QuantizedLayer, Transforms, WeightConfig};
use crate::scheme::{finite_range, Granularity, QParams, QRange, Scheme};

/// Fake quantization of `x` with one `(S, Z)` (`params.len() == 1`) or one per index of axis 0
/// (`params.len() == x.shape()[0]`), codes clamped to `range`. Differentiable: straight-through
/// inside the clamp range, zero outside.
///
/// # Errors
/// A parameter count that is neither 1 nor the size of axis 0.
pub fn fake_quantize(x: &Tensor, params: &[QParams], range: QRange) -> Result<Tensor> {
    let shape = x.shape();
    let rows = shape.first().copied().unwrap_or(1).max(1);
    if params.len() != 1 && params.len() != rows {
        return Err(QuantError::arg(
            "fake_quantize",
            format!("{} parameter pairs for a tensor of shape {shape:?} (need 1 or {rows})", params.len()),
        ));
    }
    let data = x.to_vec();
    let per = data.len() / rows;
    let mut out = Vec::with_capacity(data.len());
    let mut pass = Vec::with_capacity(data.len());
    for (i, &v) in data.iter().enumerate() {
        let p = params[if params.len() == 1 { 0 } else { i / per.max(1) }];
        let unclamped = (v as f64 / p.scale() as f64).round_ties_even() + p.zero_point() as f64;
        pass.push(if (range.min() as f64..=range.max() as f64).contains(&unclamped) { 1.0f32 } else { 0.0 });
        out.push(p.dequantize(p.quantize(v, range)));
    }
    let out =
        ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| QuantError::arg("fake_quantize", e.to_string()))?;
    let mask =
        ArrayD::from_shape_vec(IxDyn(&shape), pass).map_err(|e| QuantError::arg("fake_quantize", e.to_string()))?;
    Ok(Tensor::custom_op("fake_quantize", &[x], out, move || Box::new(move |g| vec![Some(g * &mask)])))
}

/// [`fake_quantize`] of activations with the integer layers' own u8 quantizer (`x·(1/S)` in
/// f32, rounded half to even — `Int8Linear`'s rows), so a converted model rounds every input
/// exactly as the fake-quantized one did.
///
/// # Errors
/// Parameters that are not a u8 affine map with a normal scale.
pub fn fake_quantize_u8(x: &Tensor, p: QParams) -> Result<Tensor> {
    use crate::rowops::{quantize_one, LIMIT, MAGIC};
    if !p.is_u8_affine() {
        return Err(QuantError::arg("fake_quantize_u8", format!("{p:?} is not a u8 affine map with a normal scale")));
    }
    let (inv, z) = (1.0 / p.scale(), p.zero_point() as f32);
    let data = x.to_vec();
    let mut out = Vec::with_capacity(data.len());
    let mut pass = Vec::with_capacity(data.len());
    for &v in &data {
        let unclamped = ((v * inv).clamp(-LIMIT, LIMIT) + MAGIC) - MAGIC + z;
        pass.push(if (0.0..=255.0).contains(&unclamped) { 1.0f32 } else { 0.0 });
        out.push(p.dequantize(quantize_one(v, inv, z) as i32));
    }
    let shape = IxDyn(&x.shape());
    let out =
        ArrayD::from_shape_vec(shape.clone(), out).map_err(|e| QuantError::arg("fake_quantize_u8", e.to_string()))?;
    let mask = ArrayD::from_shape_vec(shape, pass).map_err(|e| QuantError::arg("fake_quantize_u8", e.to_string()))?;
    Ok(Tensor::custom_op("fake_quantize", &[x], out, move || Box::new(move |g| vec![Some(g * &mask)])))
}

/// Symmetric int8 parameters of a weight per output channel (axis 0) or for the whole tensor,
/// from its current values — as `QuantizedMatrix::quantize` computes them.
fn weight_params(w: &Tensor, granularity: Granularity) -> Result<Vec<QParams>> {
    let data = w.to_vec();
    let rows = w.shape().first().copied().unwrap_or(1).max(1);
    let chunks: Vec<&[f32]> = match granularity {
        Granularity::PerTensor => vec![&data[..]],
        Granularity::PerChannel => data.chunks((data.len() / rows).max(1)).collect(),
        Granularity::PerGroup(_) => {
            return Err(QuantError::Unsupported("QAT with per-group weights (the int8 kernel has none)".into()))
        }
    };
    chunks
        .into_iter()
        .map(|c| {
            let (lo, hi) = finite_range(c);
            QParams::from_range(lo, hi, Scheme::Symmetric, QRange::I8_SYMMETRIC)
        })
        .collect()
}

/// The QAT forward transform of one layer (see the module docs).
#[derive(Debug, Clone)]
pub struct FakeQuant {
    granularity: Granularity,
    input: QParams,
    /// The transform this one is composed over (applied first), if the layer had one.
    inner: Option<Arc<dyn ForwardTransform>>,
}

impl FakeQuant {
    /// Weights symmetric with `granularity`, inputs with the frozen affine u8 `input` parameters.
    ///
    /// # Errors
    /// Per-group weights (not supported by the int8 kernel), or invalid input parameters.
    pub fn new(granularity: Granularity, input: QParams) -> Result<FakeQuant> {
        if matches!(granularity, Granularity::PerGroup(_)) {
            return Err(QuantError::Unsupported("QAT with per-group weights (the int8 kernel has none)".into()));
        }
        if !input.is_u8_affine() {
            return Err(QuantError::arg(
                "FakeQuant::new",
                format!("input parameters {input:?} are not a u8 affine map"),
            ));
        }
        Ok(FakeQuant { granularity, input, inner: None })
    }

    /// The transform this one fake-quantizes the output of, if any.
    pub fn inner(&self) -> Option<&Arc<dyn ForwardTransform>> {
        self.inner.as_ref()
    }
}

impl ForwardTransform for FakeQuant {
    fn weight(&self, w: &Tensor) -> tt_tensor::Result<Tensor> {
        let w = match &self.inner {
            Some(t) => t.weight(w)?,
            None => w.clone(),
        };
        Ok(fake_quantize(&w, &weight_params(&w, self.granularity)?, QRange::I8_SYMMETRIC)?)
    }
    fn input(&self, x: &Tensor) -> tt_tensor::Result<Tensor> {
        let x = match &self.inner {
            Some(t) => t.input(x)?,
            None => x.clone(),
        };
        Ok(fake_quantize_u8(&x, self.input)?)
    }
    fn name(&self) -> &'static str {
        "fake-quant"
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

fn as_fake_quant(t: &Arc<dyn ForwardTransform>) -> Option<&FakeQuant> {
    t.as_any()?.downcast_ref::<FakeQuant>()
}

/// Installs a [`FakeQuant`] in every `Linear` and `Conv2d` below `m`, inputs with `calibration`'s
/// frozen parameters, weights with `cfg` (symmetric only), composed over the transform a layer
/// already carries (see the module docs). Returns how many layers.
///
/// # Errors
/// An affine or per-group weight configuration, a layer the calibration did not see, or a layer
/// prepared already (its transform is a [`FakeQuant`]); the model is then unchanged.
pub fn prepare_qat(m: &mut dyn Module, cfg: WeightConfig, calibration: &Calibration) -> Result<usize> {
    if cfg.scheme != Scheme::Symmetric {
        return Err(QuantError::Unsupported("QAT with affine weights (fake quantization here is symmetric)".into()));
    }
    // Every layer's transform first (a layer the calibration did not see is an error), then
    // install: an error leaves the model unchanged.
    let mut made: Vec<Arc<dyn ForwardTransform>> = Vec::new();
    let mut make = |name: &str, inner: Option<&Arc<dyn ForwardTransform>>| -> tt_tensor::Result<()> {
        if inner.is_some_and(|t| as_fake_quant(t).is_some()) {
            return Err(QuantError::arg("prepare_qat", format!("layer '{name}' is prepared for QAT already")).into());
        }
        let mut fq = FakeQuant::new(cfg.granularity, calibration.qparams(name)?)?;
        fq.inner = inner.cloned();
        made.push(Arc::new(fq));
        Ok(())
    };
    tt_tensor::nn::map_linears(m, |name, l| make(name, l.transform()))?;
    tt_tensor::nn::map_conv2ds(m, |name, c| make(name, c.transform()))?;
    let n = made.len();
    let mut next = made.into_iter();
    tt_tensor::nn::map_linears(m, |_, l| {
        l.set_transform(next.next());
        Ok(())
    })?;
    tt_tensor::nn::map_conv2ds(m, |_, c| {
        c.set_transform(next.next());
        Ok(())
    })?;
    Ok(n)
}

/// Ends QAT: takes the [`FakeQuant`] transforms off (leaving what each was composed over) and
/// installs static int8 layers with the same weight rule and input parameters, over the matrix
/// each layer computed (through a remaining mask or factorization), so the int8 model computes
/// what the fine-tuned fake-quantized one did (up to the f32 rounding of the integer epilogue).
///
/// # Errors
/// A layer carrying another transform than QAT's, or as [`crate::quantize_layers`]; the model is
/// then unchanged.
pub fn convert_qat(m: &mut dyn Module, cfg: WeightConfig, calibration: &Calibration) -> Result<Vec<QuantizedLayer>> {
    // Check every layer's calibration and transform before removing any transform.
    let mut problem = None;
    let mut check = |name: &str, t: Option<&Arc<dyn ForwardTransform>>| {
        if problem.is_none() {
            if let Err(e) = calibration.qparams(name) {
                problem = Some(e);
            } else if let Some(t) = t.filter(|t| as_fake_quant(t).is_none()) {
                problem = Some(QuantError::arg(
                    "convert_qat",
                    format!("layer '{name}' carries a '{}' transform, not QAT's fake quantization", t.name()),
                ));
            }
        }
    };
    tt_tensor::nn::map_linears(m, |name, l| {
        check(name, l.transform());
        Ok(())
    })?;
    tt_tensor::nn::map_conv2ds(m, |name, c| {
        check(name, c.transform());
        Ok(())
    })?;
    if let Some(e) = problem {
        return Err(e);
    }
    let peel = |t: Option<&Arc<dyn ForwardTransform>>| t.and_then(as_fake_quant).and_then(|f| f.inner.clone());
    let removed: Vec<Option<Arc<dyn ForwardTransform>>> = {
        let mut v = Vec::new();
        tt_tensor::nn::map_linears(m, |_, l| {
            let inner = peel(l.transform());
            v.push(l.set_transform(inner));
            Ok(())
        })?;
        tt_tensor::nn::map_conv2ds(m, |_, c| {
            let inner = peel(c.transform());
            v.push(c.set_transform(inner));
            Ok(())
        })?;
        v
    };
    let static_act = &mut |name: &str| Ok(Activations::Static(calibration.qparams(name)?));
    match install_int8(m, cfg, static_act, Transforms::Through) {
        Ok(layers) => Ok(layers),
        Err(e) => {
            // Put the transforms back: the model is as it was before the call.
            let mut back = removed.into_iter();
            tt_tensor::nn::map_linears(m, |_, l| {
                l.set_transform(back.next().flatten());
                Ok(())
            })?;
            tt_tensor::nn::map_conv2ds(m, |_, c| {
                c.set_transform(back.next().flatten());
                Ok(())
            })?;
            Err(e.into())
        }
    }
}
