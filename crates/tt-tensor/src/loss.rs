//! Loss functions. Each returns a 0-d tensor averaged over the batch.

use ndarray::IxDyn;

use crate::error::{Result, TensorError};
use crate::hook::{OpInfo, OpScope};
use crate::kernels::softmax_row;
use crate::tensor::{Array, Tensor};

/// An average over no elements is 0/0: an empty batch is an error, not a NaN (or 0) loss.
fn check_nonempty(op: &'static str, t: &Tensor) -> Result<()> {
    if t.numel() == 0 {
        return Err(TensorError::invalid_shape(op, &t.shape(), "empty input: the mean of no losses is undefined"));
    }
    Ok(())
}

/// Every value of `t` (named `what`) in [0, 1]; NaN is rejected too.
fn check_unit_interval(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    let d = t.data();
    if let Some((i, v)) = d.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
        return Err(TensorError::arg(op, format!("{what}[{i}] = {v} is outside [0, 1]")));
    }
    Ok(())
}

/// Mean squared error `mean((pred − target)²)`.
///
/// # Errors
/// Shapes that differ, or empty inputs.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if pred.shape() != target.shape() {
        return Err(TensorError::shape("mse", &pred.shape(), &target.shape()));
    }
    check_nonempty("mse", pred)?;
    Ok(pred.sub(target)?.pow(2.0).mean())
}

/// Cross-entropy from logits `[..., C]` against class indices (one per leading position), averaged.
/// Fused: log-softmax and the gather in one pass; gradient `(softmax − onehot)/N`.
///
/// # Errors
/// 0-d logits, an empty batch, a number of targets that is not the number of rows, or a target
/// class `>= C`.
pub fn cross_entropy(logits: &Tensor, targets: &[usize]) -> Result<Tensor> {
    weighted_ce(logits, targets, None)
}

/// Weighted cross-entropy `Σ wᵢ·CEᵢ / Σ wᵢ` (weights ≥ 0, one per target, not all zero).
/// With all weights equal it is exactly [`cross_entropy`].
///
/// # Errors
/// As [`cross_entropy`], plus a number of weights that is not the number of targets, a weight
/// that is negative or not finite, weights that are all zero, or whose sum overflows f32.
pub fn cross_entropy_weighted(logits: &Tensor, targets: &[usize], weights: &[f32]) -> Result<Tensor> {
    if weights.len() != targets.len() {
        return Err(TensorError::arg(
            "cross_entropy_weighted",
            format!("{} weights for {} targets", weights.len(), targets.len()),
        ));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !(**w >= 0.0 && w.is_finite())) {
        return Err(TensorError::arg(
            "cross_entropy_weighted",
            format!("weights[{i}] = {w}: weights must be finite and non-negative"),
        ));
    }
    let sum: f64 = weights.iter().map(|&w| w as f64).sum();
    if !weights.is_empty() && sum == 0.0 {
        return Err(TensorError::arg("cross_entropy_weighted", "weights are all zero"));
    }
    // The gradient scales by 1/Σw in f32.
    if sum as f32 == f32::INFINITY {
        return Err(TensorError::arg("cross_entropy_weighted", format!("sum of weights {sum} overflows f32")));
    }
    weighted_ce(logits, targets, Some(weights))
}

fn weighted_ce(logits: &Tensor, targets: &[usize], weights: Option<&[f32]>) -> Result<Tensor> {
    let shape = logits.shape();
    let c = *shape.last().ok_or_else(|| TensorError::invalid_shape("cross_entropy", &shape, "needs [..., classes]"))?;
    let n = logits.numel().checked_div(c).unwrap_or(0);
    if n == 0 {
        return Err(TensorError::invalid_shape(
            "cross_entropy",
            &shape,
            "empty batch: no rows (or no classes) to score",
        ));
    }
    if n != targets.len() {
        return Err(TensorError::InvalidArgument {
            op: "cross_entropy",
            reason: format!("logits {shape:?} hold {n} rows but {} targets were given", targets.len()),
        });
    }
    if let Some(&bad) = targets.iter().find(|&&t| t >= c) {
        return Err(TensorError::OutOfRange { op: "cross_entropy", what: "target class", index: bad, limit: c });
    }
    let w = |r: usize| weights.map_or(1.0, |w| w[r]);
    let norm: f64 = weights.map_or(n as f64, |w| w.iter().map(|&x| x as f64).sum());
    let mut probs = vec![0.0f32; n * c];
    let loss = {
        let _scope = OpScope::begin("cross_entropy", || OpInfo {
            input_shapes: vec![shape.clone()],
            flops: 5 * (n * c) as u64,
            bytes: 4 * (n * c) as u64,
        });
        let d = logits.data();
        let xs = d.as_slice().expect("standard layout");
        let mut total = 0.0f64;
        for r in 0..n {
            let row = &xs[r * c..(r + 1) * c];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
            total += (w(r) * (lse - row[targets[r]])) as f64;
            let p = &mut probs[r * c..(r + 1) * c];
            p.copy_from_slice(row);
            softmax_row(p);
        }
        (total / norm) as f32
    };
    Ok(Tensor::from_op(Array::from_elem(IxDyn(&[]), loss), &[logits], "cross_entropy", || {
        let targets = targets.to_vec();
        let weights = weights.map(<[f32]>::to_vec);
        Box::new(move |g| {
            let gv = *g.iter().next().expect("scalar") / norm as f32;
            let mut gx = probs.clone();
            for (r, &t) in targets.iter().enumerate() {
                gx[r * c + t] -= 1.0;
                let scale = gv * weights.as_ref().map_or(1.0, |w| w[r]);
                gx[r * c..(r + 1) * c].iter_mut().for_each(|v| *v *= scale);
            }
            vec![Some(Array::from_shape_vec(IxDyn(&shape), gx).expect("sized"))]
        })
    }))
}

/// Binary cross-entropy on probabilities in (0, 1); inputs are clamped to [1e-7, 1 − 1e-7]
/// so log(0) cannot occur. Prefer [`bce_with_logits`] when you have logits.
///
/// # Errors
/// Shapes that differ, empty inputs, or a probability or target outside [0, 1] (NaN included).
pub fn binary_cross_entropy(probs: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if probs.shape() != targets.shape() {
        return Err(TensorError::shape("binary_cross_entropy", &probs.shape(), &targets.shape()));
    }
    check_nonempty("binary_cross_entropy", probs)?;
    check_unit_interval("binary_cross_entropy", "probs", probs)?;
    check_unit_interval("binary_cross_entropy", "targets", targets)?;
    let eps = 1e-7;
    let p = probs.unary(
        "clamp",
        1,
        move |x| x.clamp(eps, 1.0 - eps),
        move |x| {
            if x > eps && x < 1.0 - eps {
                1.0
            } else {
                0.0
            }
        },
    );
    let one_minus_t = targets.neg().add_scalar(1.0);
    let a = targets.mul(&p.log())?;
    let b = one_minus_t.mul(&p.neg().add_scalar(1.0).log())?;
    Ok(a.add(&b)?.mean().neg())
}

/// Binary cross-entropy on logits, stable form `max(x,0) − x·t + log(1 + e^{−|x|})`.
///
/// # Errors
/// Shapes that differ, empty inputs, or a target outside [0, 1] (NaN included).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.shape() != targets.shape() {
        return Err(TensorError::shape("bce_with_logits", &logits.shape(), &targets.shape()));
    }
    check_nonempty("bce_with_logits", logits)?;
    check_unit_interval("bce_with_logits", "targets", targets)?;
    let softplus_neg_abs = logits.unary(
        "log1p_exp_neg_abs",
        3,
        |x| (-x.abs()).exp().ln_1p(),
        |x| {
            let e = (-x.abs()).exp();
            -x.signum() * e / (1.0 + e)
        },
    );
    let relu = logits.relu();
    Ok(relu.sub(&logits.mul(targets)?)?.add(&softplus_neg_abs)?.mean())
}

/// KL(p_teacher(T) ‖ p_student(T)) with `p(T) = softmax(z/T)` over the last axis, averaged over
/// rows ("batchmean"). The teacher is a constant. Distillation multiplies this by T² (Hinton et al.).
///
/// # Errors
/// Shapes that differ, 0-d or empty logits, or a temperature that is not positive and finite
/// or so small that 1/T overflows.
pub fn kl_div_with_temperature(student_logits: &Tensor, teacher_logits: &Tensor, temperature: f32) -> Result<Tensor> {
    if student_logits.shape() != teacher_logits.shape() {
        return Err(TensorError::shape("kl_div", &student_logits.shape(), &teacher_logits.shape()));
    }
    // 1/T is what scales the logits: a subnormal T passes `T > 0` but makes it +inf.
    if !(temperature > 0.0 && temperature.is_finite() && (1.0 / temperature).is_finite()) {
        return Err(TensorError::arg(
            "kl_div",
            format!("temperature {temperature} must be positive and finite with a finite 1/temperature"),
        ));
    }
    if student_logits.ndim() == 0 {
        return Err(TensorError::invalid_shape("kl_div", &[], "needs logits [..., classes]"));
    }
    check_nonempty("kl_div", student_logits)?;
    let shape = student_logits.shape();
    let axis = shape.len() - 1;
    let rows = (student_logits.numel() / shape[axis].max(1)).max(1) as f32;
    let log_ps = student_logits.mul_scalar(1.0 / temperature).log_softmax(axis)?;
    let log_pt = crate::no_grad(|| teacher_logits.mul_scalar(1.0 / temperature).log_softmax(axis))?;
    let pt = log_pt.data().mapv(f32::exp);
    let entropy_term: f32 = pt.iter().zip(log_pt.data().iter()).map(|(p, l)| p * l).sum();
    // KL = Σ p_t (log p_t − log p_s) = Σ p_t log p_t − Σ p_t log p_s
    let cross = log_ps.mul_const(&pt)?.sum();
    Ok(cross.neg().add_scalar(entropy_term).mul_scalar(1.0 / rows))
}
