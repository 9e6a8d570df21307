use ndarray::Axis;

use super::elementwise_info;
use crate::error::{Result, TensorError};
use crate::hook::OpScope;
use crate::kernels::{gelu_tanh, gelu_tanh_grad, silu, silu_grad, softmax_row};
use crate::tensor::{Array, Tensor};

fn sigmoid(x: f32) -> f32 {
    // Stable on both tails: never exponentiates a large positive number.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Applies stable softmax to every lane along `axis`.
fn softmax_lanes(d: &Array, axis: usize) -> Array {
    let mut out = d.clone();
    let last = axis + 1 == d.ndim();
    if last {
        let n = d.shape()[axis];
        if n > 0 {
            for row in out.as_slice_mut().expect("standard layout").chunks_mut(n) {
                softmax_row(row);
            }
        }
    } else {
        for mut lane in out.lanes_mut(Axis(axis)) {
            let mut v: Vec<f32> = lane.to_vec();
            softmax_row(&mut v);
            lane.iter_mut().zip(v).for_each(|(o, x)| *o = x);
        }
    }
    out
}

impl Tensor {
    pub fn relu(&self) -> Tensor {
        self.unary("relu", 1, |x| x.max(0.0), |x| if x > 0.0 { 1.0 } else { 0.0 })
    }

    pub fn sigmoid(&self) -> Tensor {
        self.unary("sigmoid", 4, sigmoid, |x| {
            let s = sigmoid(x);
            s * (1.0 - s)
        })
    }

    pub fn tanh(&self) -> Tensor {
        self.unary("tanh", 4, f32::tanh, |x| {
            let t = x.tanh();
            1.0 - t * t
        })
    }

    /// SiLU (swish), `x·σ(x)`: the gate of Llama's SwiGLU MLP.
    pub fn silu(&self) -> Tensor {
        self.unary("silu", 5, silu, silu_grad)
    }

    /// GELU, tanh approximation (as in GPT-2).
    pub fn gelu(&self) -> Tensor {
        self.unary("gelu", 1, gelu_tanh, gelu_tanh_grad)
    }

    /// Softmax along `axis`, computed as exp(x - max) / Σ exp(x - max).
    pub fn softmax(&self, axis: usize) -> Result<Tensor> {
        let shape = self.shape();
        if axis >= shape.len() {
            return Err(TensorError::OutOfRange { op: "softmax", what: "axis", index: axis, limit: shape.len() });
        }
        let out = {
            let d = self.data();
            let _scope = OpScope::begin("softmax", || elementwise_info(&[&shape], d.len(), 5));
            softmax_lanes(&d, axis)
        };
        let y = (is_grad_enabled_for(self)).then(|| out.clone());
        Ok(Tensor::from_op(out, &[self], "softmax", || {
            let y = y.expect("saved when grad enabled");
            Box::new(move |g| {
                // dx = y ⊙ (g − Σ_axis g⊙y)
                let gy = g * &y;
                let s = gy.sum_axis(Axis(axis)).insert_axis(Axis(axis));
                vec![Some(&gy - &(&y * &s))]
            })
        }))
    }

    /// log(softmax(x)) along `axis`, computed as x - max - log Σ exp(x - max).
    pub fn log_softmax(&self, axis: usize) -> Result<Tensor> {
        let shape = self.shape();
        if axis >= shape.len() {
            return Err(TensorError::OutOfRange { op: "log_softmax", what: "axis", index: axis, limit: shape.len() });
        }
        let out = {
            let d = self.data();
            let _scope = OpScope::begin("log_softmax", || elementwise_info(&[&shape], d.len(), 5));
            let mut out = d.clone();
            for mut lane in out.lanes_mut(Axis(axis)) {
                let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = max + lane.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
                lane.mapv_inplace(|v| v - lse);
            }
            out
        };
        let y = (is_grad_enabled_for(self)).then(|| out.clone());
        Ok(Tensor::from_op(out, &[self], "log_softmax", || {
            let p = y.expect("saved when grad enabled").mapv(f32::exp);
            Box::new(move |g| {
                // dx = g − softmax ⊙ Σ_axis g
                let s = g.sum_axis(Axis(axis)).insert_axis(Axis(axis));
                vec![Some(g - &(&p * &s))]
            })
        }))
    }
}

/// True when an op on `t` will record a graph (so saving outputs for backward is worth a copy).
pub(crate) fn is_grad_enabled_for(t: &Tensor) -> bool {
    crate::tensor::is_grad_enabled() && t.requires_grad()
}
