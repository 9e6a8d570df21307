//! Optimizers (SGD with momentum and weight decay, Adam, AdamW) and gradient-norm clipping.
//! Parameters are updated in place through [`Tensor::data_mut`]; moment buffers are plain arrays.

use ndarray::Zip;

use crate::error::{Result, TensorError};
use crate::tensor::{Array, Tensor};

/// Common optimizer interface.
pub trait Optimizer {
    /// Applies one update from the parameters' current gradients (parameters without one are skipped).
    fn step(&mut self) -> Result<()>;
    /// Clears every parameter's gradient.
    fn zero_grad(&self);
    fn lr(&self) -> f32;
    /// Sets the learning rate (schedules call it every step).
    ///
    /// # Errors
    /// A learning rate that is negative or not finite (the old one is kept).
    fn set_lr(&mut self, lr: f32) -> Result<()>;
}

fn check_lr(op: &'static str, lr: f32) -> Result<()> {
    if !(lr >= 0.0 && lr.is_finite()) {
        return Err(TensorError::arg(op, format!("learning rate {lr} must be finite and >= 0")));
    }
    Ok(())
}

/// A hyperparameter that must be finite and at least 0 (momentum, weight decay).
fn check_non_negative(op: &'static str, name: &str, v: f32) -> Result<()> {
    if !(v >= 0.0 && v.is_finite()) {
        return Err(TensorError::arg(op, format!("{name} {v} must be finite and >= 0")));
    }
    Ok(())
}

/// Stochastic gradient descent: `v ← μv + (g + λw)`, `w ← w − lr·v` (PyTorch's formulation).
pub struct Sgd {
    params: Vec<Tensor>,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    velocity: Vec<Option<Array>>,
}

impl Sgd {
    /// # Errors
    /// A learning rate, momentum or weight decay that is negative or not finite.
    pub fn new(params: Vec<Tensor>, lr: f32, momentum: f32, weight_decay: f32) -> Result<Sgd> {
        let n = params.len();
        let sgd = Sgd { params, lr, momentum, weight_decay, velocity: vec![None; n] };
        sgd.check()?;
        Ok(sgd)
    }

    /// The public hyperparameter fields may have been edited since construction.
    fn check(&self) -> Result<()> {
        check_lr("Sgd", self.lr)?;
        check_non_negative("Sgd", "momentum", self.momentum)?;
        check_non_negative("Sgd", "weight_decay", self.weight_decay)
    }
}

impl Optimizer for Sgd {
    /// # Errors
    /// Hyperparameters made invalid through the public fields (nothing is updated then).
    fn step(&mut self) -> Result<()> {
        self.check()?;
        for (p, vel) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = p.grad() else { continue };
            let mut w = p.data_mut();
            let mut d = g;
            if self.weight_decay != 0.0 {
                d.scaled_add(self.weight_decay, &*w);
            }
            if self.momentum != 0.0 {
                let v = vel.get_or_insert_with(|| Array::zeros(d.raw_dim()));
                v.mapv_inplace(|x| x * self.momentum);
                *v += &d;
                w.scaled_add(-self.lr, v);
            } else {
                w.scaled_add(-self.lr, &d);
            }
        }
        Ok(())
    }
    fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }
    fn lr(&self) -> f32 {
        self.lr
    }
    fn set_lr(&mut self, lr: f32) -> Result<()> {
        check_lr("Sgd::set_lr", lr)?;
        self.lr = lr;
        Ok(())
    }
}

/// Adam (Kingma & Ba), with optional decoupled weight decay (AdamW, Loshchilov & Hutter) or
/// classic L2 weight decay added to the gradient.
pub struct Adam {
    params: Vec<Tensor>,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    decoupled: bool,
    t: i32,
    m: Vec<Option<Array>>,
    v: Vec<Option<Array>>,
}

impl Adam {
    /// Adam with L2 weight decay folded into the gradient (PyTorch `Adam`).
    pub fn new(params: Vec<Tensor>, lr: f32, weight_decay: f32) -> Result<Adam> {
        Self::build(params, lr, weight_decay, false)
    }
    /// AdamW: weight decay applied directly to the weights, `w ← w − lr·λ·w`.
    pub fn adamw(params: Vec<Tensor>, lr: f32, weight_decay: f32) -> Result<Adam> {
        Self::build(params, lr, weight_decay, true)
    }
    fn build(params: Vec<Tensor>, lr: f32, weight_decay: f32, decoupled: bool) -> Result<Adam> {
        let n = params.len();
        let adam = Adam {
            params,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled,
            t: 0,
            m: vec![None; n],
            v: vec![None; n],
        };
        adam.check()?;
        Ok(adam)
    }
    /// Sets (β1, β2). They are checked (each in [0, 1)) by [`Optimizer::step`], which errors
    /// before updating anything.
    pub fn with_betas(mut self, beta1: f32, beta2: f32) -> Adam {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// The public hyperparameter fields may have been edited since construction.
    fn check(&self) -> Result<()> {
        check_lr("Adam", self.lr)?;
        check_non_negative("Adam", "weight_decay", self.weight_decay)?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(TensorError::arg("Adam", format!("{name} {b} must be in [0, 1)")));
            }
        }
        // eps = 0 would give 0/0 = NaN for a weight whose gradients have all been 0.
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(TensorError::arg("Adam", format!("eps {} must be finite and > 0", self.eps)));
        }
        Ok(())
    }
}

impl Optimizer for Adam {
    /// # Errors
    /// Hyperparameters made invalid through the public fields or [`Adam::with_betas`] (nothing
    /// is updated then).
    fn step(&mut self) -> Result<()> {
        self.check()?;
        // Saturating: after 2³¹ steps β^t has long been 0, and a wrapped t would be negative.
        self.t = self.t.saturating_add(1);
        let (b1, b2, eps, lr, wd) = (self.beta1, self.beta2, self.eps, self.lr, self.weight_decay);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        for ((p, m), v) in self.params.iter().zip(self.m.iter_mut()).zip(self.v.iter_mut()) {
            let Some(mut g) = p.grad() else { continue };
            let mut w = p.data_mut();
            if wd != 0.0 && !self.decoupled {
                g.scaled_add(wd, &*w);
            }
            let m = m.get_or_insert_with(|| Array::zeros(g.raw_dim()));
            let v = v.get_or_insert_with(|| Array::zeros(g.raw_dim()));
            let decay = if self.decoupled { 1.0 - lr * wd } else { 1.0 };
            Zip::from(&mut *w).and(m).and(v).and(&g).for_each(|w, m, v, &g| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let mhat = *m / bc1;
                let vhat = *v / bc2;
                *w = *w * decay - lr * mhat / (vhat.sqrt() + eps);
            });
        }
        Ok(())
    }
    fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }
    fn lr(&self) -> f32 {
        self.lr
    }
    fn set_lr(&mut self, lr: f32) -> Result<()> {
        check_lr("Adam::set_lr", lr)?;
        self.lr = lr;
        Ok(())
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping (as `torch.nn.utils.clip_grad_norm_` does). `max_norm = +inf` only measures the norm.
/// A non-finite gradient gives a non-finite norm and nothing is scaled.
///
/// # Errors
/// A `max_norm` that is NaN or not positive (nothing is scaled then).
pub fn clip_grad_norm(params: &[Tensor], max_norm: f32) -> Result<f32> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(TensorError::arg("clip_grad_norm", format!("max_norm {max_norm} must be > 0")));
    }
    let total: f64 = params
        .iter()
        .map(|p| p.with_grad(|g| g.map_or(0.0, |g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())))
        .sum();
    let norm = total.sqrt() as f32;
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for p in params {
            if let Some(g) = p.grad() {
                p.set_grad(Some(g.mapv(|x| x * scale)))?;
            }
        }
    }
    Ok(norm)
}
