use ndarray::{Axis, IxDyn, Slice};

use crate::error::{Result, TensorError};
use crate::hook::{OpInfo, OpScope};
use crate::tensor::{checked_numel, Array, Tensor};

fn copy_info(shape: &[usize]) -> OpInfo {
    let n: usize = shape.iter().product();
    OpInfo { input_shapes: vec![shape.to_vec()], flops: 0, bytes: (n * 8) as u64 }
}

impl Tensor {
    /// Same values, new shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let old = self.shape();
        if old.iter().product::<usize>() != checked_numel("reshape", shape)? {
            return Err(TensorError::shape("reshape", &old, shape));
        }
        let out = {
            let _scope = OpScope::begin("reshape", || copy_info(&old));
            let d = self.data();
            Array::from_shape_vec(IxDyn(shape), d.as_slice().expect("standard layout").to_vec()).expect("count checked")
        };
        Ok(Tensor::from_op(out, &[self], "reshape", || {
            Box::new(move |g| vec![Some(g.to_shape(IxDyn(&old)).expect("same count").into_owned())])
        }))
    }

    /// Reorders axes: output axis i is input axis `axes[i]`. Materializes a contiguous copy.
    pub fn permute(&self, axes: &[usize]) -> Result<Tensor> {
        let shape = self.shape();
        let mut seen = vec![false; shape.len()];
        if axes.len() != shape.len() || axes.iter().any(|&a| a >= shape.len() || std::mem::replace(&mut seen[a], true))
        {
            return Err(TensorError::arg(
                "permute",
                format!("axes {axes:?} are not a permutation of 0..{}", shape.len()),
            ));
        }
        let out = {
            let _scope = OpScope::begin("permute", || copy_info(&shape));
            self.data().view().permuted_axes(IxDyn(axes)).as_standard_layout().into_owned()
        };
        let mut inverse = vec![0; axes.len()];
        for (i, &a) in axes.iter().enumerate() {
            inverse[a] = i;
        }
        Ok(Tensor::from_op(out, &[self], "permute", || {
            Box::new(move |g| vec![Some(g.view().permuted_axes(IxDyn(&inverse)).as_standard_layout().into_owned())])
        }))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let n = self.ndim();
        if a >= n || b >= n {
            return Err(TensorError::OutOfRange { op: "transpose", what: "axis", index: a.max(b), limit: n });
        }
        let mut axes: Vec<usize> = (0..n).collect();
        axes.swap(a, b);
        self.permute(&axes)
    }

    /// Elements `start..start+len` along `axis`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let shape = self.shape();
        if axis >= shape.len() {
            return Err(TensorError::OutOfRange { op: "narrow", what: "axis", index: axis, limit: shape.len() });
        }
        // Checked: `start + len` must not wrap to a small end in release builds.
        let end = start
            .checked_add(len)
            .ok_or_else(|| TensorError::arg("narrow", format!("start {start} + len {len} overflows usize")))?;
        if end > shape[axis] {
            return Err(TensorError::OutOfRange { op: "narrow", what: "end index", index: end, limit: shape[axis] });
        }
        let out = {
            // Reads and writes only the slice: bytes from the output shape, inputs as given.
            let _scope = OpScope::begin("narrow", || {
                let mut out = shape.clone();
                out[axis] = len;
                OpInfo { bytes: (out.iter().product::<usize>() * 8) as u64, ..copy_info(&shape) }
            });
            self.data().slice_axis(Axis(axis), Slice::from(start..start + len)).as_standard_layout().into_owned()
        };
        Ok(Tensor::from_op(out, &[self], "narrow", || {
            Box::new(move |g| {
                let mut gx = Array::zeros(IxDyn(&shape));
                gx.slice_axis_mut(Axis(axis), Slice::from(start..start + len)).assign(g);
                vec![Some(gx)]
            })
        }))
    }

    /// Joins tensors along an existing axis; all other dims must agree.
    pub fn concat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| TensorError::arg("concat", "needs at least one tensor"))?.shape();
        if axis >= first.len() {
            return Err(TensorError::OutOfRange { op: "concat", what: "axis", index: axis, limit: first.len() });
        }
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in tensors {
            let s = t.shape();
            let compatible =
                s.len() == first.len() && s.iter().zip(&first).enumerate().all(|(i, (x, y))| i == axis || x == y);
            if !compatible {
                return Err(TensorError::shape("concat", &first, &s));
            }
            sizes.push(s[axis]);
        }
        // Empty inputs can still add up to an output whose size overflows: check before joining.
        let mut out_shape = first.clone();
        out_shape[axis] = sizes.iter().try_fold(0usize, |acc, &n| acc.checked_add(n)).ok_or_else(|| {
            TensorError::invalid_shape("concat", &first, format!("sizes {sizes:?} along axis {axis} overflow usize"))
        })?;
        checked_numel("concat", &out_shape)?;
        let out = {
            let guards: Vec<_> = tensors.iter().map(|t| t.data()).collect();
            let views: Vec<_> = guards.iter().map(|g| g.view()).collect();
            let _scope = OpScope::begin("concat", || copy_info(&first));
            ndarray::concatenate(Axis(axis), &views).expect("shapes checked")
        };
        Ok(Tensor::from_op(out, tensors, "concat", || {
            Box::new(move |g| {
                let mut start = 0;
                sizes
                    .iter()
                    .map(|&len| {
                        let part = g.slice_axis(Axis(axis), Slice::from(start..start + len)).to_owned();
                        start += len;
                        Some(part)
                    })
                    .collect()
            })
        }))
    }

    /// Stacks equal-shape tensors along a new axis.
    pub fn stack(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| TensorError::arg("stack", "needs at least one tensor"))?;
        if axis > first.ndim() {
            return Err(TensorError::OutOfRange { op: "stack", what: "axis", index: axis, limit: first.ndim() + 1 });
        }
        let expanded: Vec<Tensor> = tensors.iter().map(|t| t.unsqueeze(axis)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = expanded.iter().collect();
        Tensor::concat(&refs, axis)
    }

    /// Inserts a size-1 axis at `axis`.
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        let mut s = self.shape();
        if axis > s.len() {
            return Err(TensorError::OutOfRange { op: "unsqueeze", what: "axis", index: axis, limit: s.len() + 1 });
        }
        s.insert(axis, 1);
        self.reshape(&s)
    }

    /// Flattens all dims from `start` on into one.
    pub fn flatten_from(&self, start: usize) -> Result<Tensor> {
        let s = self.shape();
        if start >= s.len() {
            return Err(TensorError::OutOfRange { op: "flatten", what: "start axis", index: start, limit: s.len() });
        }
        let mut new: Vec<usize> = s[..start].to_vec();
        new.push(s[start..].iter().product());
        self.reshape(&new)
    }

    /// Rows of a 2-D table picked by index (embedding lookup); output `[ids.len(), cols]`.
    pub fn index_select_rows(&self, ids: &[usize]) -> Result<Tensor> {
        let shape = self.shape();
        if shape.len() != 2 {
            return Err(TensorError::invalid_shape("index_select_rows", &shape, "needs a 2-D table"));
        }
        let (rows, cols) = (shape[0], shape[1]);
        if let Some(&bad) = ids.iter().find(|&&i| i >= rows) {
            return Err(TensorError::OutOfRange { op: "index_select_rows", what: "index", index: bad, limit: rows });
        }
        checked_numel("index_select_rows", &[ids.len(), cols])?;
        let out = {
            let _scope = OpScope::begin("embedding", || OpInfo {
                input_shapes: vec![shape.clone(), vec![ids.len()]],
                flops: 0,
                bytes: (ids.len() * cols * 8) as u64,
            });
            let d = self.data();
            let table = d.as_slice().expect("standard layout");
            let mut out = Vec::with_capacity(ids.len() * cols);
            for &i in ids {
                out.extend_from_slice(&table[i * cols..(i + 1) * cols]);
            }
            Array::from_shape_vec(IxDyn(&[ids.len(), cols]), out).expect("sized above")
        };
        Ok(Tensor::from_op(out, &[self], "embedding", || {
            let ids = ids.to_vec();
            Box::new(move |g| {
                let mut gt = Array::zeros(IxDyn(&[rows, cols]));
                let gs = gt.as_slice_mut().expect("fresh array");
                let gg = g.as_slice().expect("standard layout");
                for (r, &i) in ids.iter().enumerate() {
                    for c in 0..cols {
                        gs[i * cols + c] += gg[r * cols + c];
                    }
                }
                vec![Some(gt)]
            })
        }))
    }
}
