use ndarray::{Axis, IxDyn};

use super::elementwise_info;
use crate::error::{Result, TensorError};
use crate::hook::OpScope;
use crate::kernels::argmax;
use crate::tensor::{Array, Tensor};

fn check_axis(op: &'static str, axis: usize, ndim: usize) -> Result<()> {
    if axis >= ndim {
        return Err(TensorError::OutOfRange { op, what: "axis", index: axis, limit: ndim });
    }
    Ok(())
}

/// A maximum (or its index) over a size-0 axis does not exist.
fn check_nonempty_axis(op: &'static str, shape: &[usize], axis: usize) -> Result<()> {
    check_axis(op, axis, shape.len())?;
    if shape[axis] == 0 {
        return Err(TensorError::invalid_shape(op, shape, format!("axis {axis} has size 0: no maximum")));
    }
    Ok(())
}

impl Tensor {
    /// Sum of all elements (a 0-d tensor).
    pub fn sum(&self) -> Tensor {
        let shape = self.shape();
        let s = {
            let d = self.data();
            let _scope = OpScope::begin("sum", || elementwise_info(&[&shape], 1, d.len() as u64));
            d.sum()
        };
        Tensor::from_op(Array::from_elem(IxDyn(&[]), s), &[self], "sum", || {
            Box::new(move |g| {
                let gv = *g.iter().next().expect("scalar grad");
                vec![Some(Array::from_elem(IxDyn(&shape), gv))]
            })
        })
    }

    /// Mean of all elements (a 0-d tensor). The mean of an empty tensor is NaN (0/0), as in
    /// PyTorch and NumPy.
    pub fn mean(&self) -> Tensor {
        let n = self.numel() as f32;
        self.sum().mul_scalar(1.0 / n)
    }

    /// Sum along `axis`; `keepdim` keeps it as size 1.
    pub fn sum_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        let shape = self.shape();
        check_axis("sum_axis", axis, shape.len())?;
        let out = {
            let d = self.data();
            let _scope = OpScope::begin("sum_axis", || elementwise_info(&[&shape], d.len() / shape[axis].max(1), 1));
            let s = d.sum_axis(Axis(axis));
            if keepdim {
                s.insert_axis(Axis(axis))
            } else {
                s
            }
        };
        Ok(Tensor::from_op(out, &[self], "sum_axis", || {
            Box::new(move |g| {
                let g = if keepdim { g.clone() } else { g.clone().insert_axis(Axis(axis)) };
                let full = g.broadcast(IxDyn(&shape)).expect("keepdim shape broadcasts").to_owned();
                vec![Some(full)]
            })
        }))
    }

    /// Mean along `axis`. Over a size-0 axis every mean is NaN (0/0), as in PyTorch and NumPy.
    pub fn mean_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        let shape = self.shape();
        check_axis("mean_axis", axis, shape.len())?;
        let n = shape[axis] as f32;
        Ok(self.sum_axis(axis, keepdim)?.mul_scalar(1.0 / n))
    }

    /// Maximum along `axis`; the gradient flows to the first maximal element.
    ///
    /// # Errors
    /// An axis out of range or of size 0.
    pub fn max_axis(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        let shape = self.shape();
        check_nonempty_axis("max_axis", &shape, axis)?;
        let idx = self.argmax_axis(axis)?;
        let out = {
            let d = self.data();
            let m = d.map_axis(Axis(axis), |lane| lane.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            if keepdim {
                m.insert_axis(Axis(axis))
            } else {
                m
            }
        };
        Ok(Tensor::from_op(out, &[self], "max_axis", || {
            Box::new(move |g| {
                let mut gx = Array::zeros(IxDyn(&shape));
                let g = if keepdim { g.clone().remove_axis(Axis(axis)) } else { g.clone() };
                for (mut lane, (&i, &gv)) in gx.lanes_mut(Axis(axis)).into_iter().zip(idx.iter().zip(g.iter())) {
                    lane[i] += gv;
                }
                vec![Some(gx)]
            })
        }))
    }

    /// Largest element overall, NaN ignored (no gradient; use [`Tensor::max_axis`] for one).
    ///
    /// # Errors
    /// An empty tensor (it has no maximum).
    pub fn max_value(&self) -> Result<f32> {
        let d = self.data();
        if d.is_empty() {
            return Err(TensorError::invalid_shape("max_value", d.shape(), "empty tensor has no maximum"));
        }
        Ok(d.iter().copied().fold(f32::NEG_INFINITY, f32::max))
    }

    /// Index of the maximum along `axis` (first one on ties, NaN never wins); shape is the input
    /// without `axis`.
    ///
    /// # Errors
    /// An axis out of range or of size 0.
    pub fn argmax_axis(&self, axis: usize) -> Result<ndarray::ArrayD<usize>> {
        let d = self.data();
        check_nonempty_axis("argmax_axis", d.shape(), axis)?;
        Ok(d.map_axis(Axis(axis), |lane| argmax(lane.iter())))
    }

    /// Flat index of the overall maximum (first one on ties, NaN never wins).
    ///
    /// # Errors
    /// An empty tensor (index 0 would not exist).
    pub fn argmax(&self) -> Result<usize> {
        let d = self.data();
        if d.is_empty() {
            return Err(TensorError::invalid_shape("argmax", d.shape(), "empty tensor has no maximum"));
        }
        Ok(argmax(d.iter()))
    }
}
