use ndarray::{Array2, ArrayView2, Axis, Ix2, IxDyn};

use crate::error::{Result, TensorError};
use crate::hook::{OpInfo, OpScope};
use crate::kernels::gemm;
use crate::projection::Projection;
use crate::tensor::{checked_numel, Array, Tensor};

fn as2<'a>(a: &'a Array, rows: usize, cols: usize) -> ArrayView2<'a, f32> {
    a.view().into_shape_with_order((rows, cols)).expect("contiguous array reshapes to 2-D")
}

fn mm_info(a: &[usize], b: &[usize], m: usize, k: usize, n: usize, batch: usize) -> OpInfo {
    // Saturating u64 arithmetic: the counts of an empty product with huge dims must not wrap.
    let prod = |xs: &[usize]| xs.iter().fold(1u64, |acc, &x| acc.saturating_mul(x as u64));
    let b_elems = if b.len() > 2 { prod(&[batch, k, n]) } else { prod(&[k, n]) };
    OpInfo {
        input_shapes: vec![a.to_vec(), b.to_vec()],
        flops: 2u64.saturating_mul(prod(&[batch, m, k, n])),
        bytes: 4u64.saturating_mul(prod(&[batch, m, k]).saturating_add(prod(&[batch, m, n])).saturating_add(b_elems)),
    }
}

impl Tensor {
    /// Matrix product. Supported forms:
    /// - `[m,k] · [k,n] → [m,n]`
    /// - `[..., m, k] · [k, n] → [..., m, n]` (leading dims folded into one GEMM)
    /// - `[..., m, k] · [..., k, n] → [..., m, n]` (same leading dims, one GEMM per batch)
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        let (sa, sb) = (self.shape(), other.shape());
        if sa.len() < 2 || sb.len() < 2 {
            return Err(TensorError::invalid_shape(
                "matmul",
                if sa.len() < 2 { &sa } else { &sb },
                "needs at least 2 dims",
            ));
        }
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if k != k2 {
            return Err(TensorError::shape("matmul", &sa, &sb));
        }
        let lead_a = &sa[..sa.len() - 2];
        let batch: usize = lead_a.iter().product();
        let mut out_shape = lead_a.to_vec();
        out_shape.extend([m, n]);
        // Empty inputs can still ask for a huge output: check it before allocating.
        checked_numel("matmul", &out_shape)?;
        if sb.len() == 2 {
            // Fold all leading dims of A into the row dimension: one large GEMM.
            let out = {
                let _scope = OpScope::begin("matmul", || mm_info(&sa, &sb, m, k, n, batch));
                let (ad, bd) = (self.data(), other.data());
                let mut c = Array2::<f32>::zeros((batch * m, n));
                gemm(
                    1.0,
                    as2(&ad, batch * m, k),
                    bd.view().into_dimensionality::<Ix2>().expect("2-D"),
                    0.0,
                    c.view_mut(),
                );
                c.into_shape_with_order(IxDyn(&out_shape)).expect("sizes agree")
            };
            return Ok(Tensor::from_op(out, &[self, other], "matmul", || {
                let (a, b) = (self.clone(), other.clone());
                Box::new(move |g| {
                    let g2 = as2(g, batch * m, n);
                    let ga = a.requires_grad().then(|| {
                        let bd = b.data();
                        let mut ga = Array2::<f32>::zeros((batch * m, k));
                        gemm(1.0, g2, bd.view().into_dimensionality::<Ix2>().expect("2-D").t(), 0.0, ga.view_mut());
                        ga.into_shape_with_order(IxDyn(&sa)).expect("sizes agree")
                    });
                    let gb = b.requires_grad().then(|| {
                        let ad = a.data();
                        let mut gb = Array2::<f32>::zeros((k, n));
                        gemm(1.0, as2(&ad, batch * m, k).t(), g2, 0.0, gb.view_mut());
                        gb.into_dyn()
                    });
                    vec![ga, gb]
                })
            }));
        }
        if sa[..sa.len() - 2] != sb[..sb.len() - 2] {
            return Err(TensorError::shape("matmul (batch dims)", &sa, &sb));
        }
        let out = {
            let _scope = OpScope::begin("bmm", || mm_info(&sa, &sb, m, k, n, batch));
            let (ad, bd) = (self.data(), other.data());
            let a3 = ad.view().into_shape_with_order((batch, m, k)).expect("contiguous");
            let b3 = bd.view().into_shape_with_order((batch, k, n)).expect("contiguous");
            let mut c = ndarray::Array3::<f32>::zeros((batch, m, n));
            for i in 0..batch {
                gemm(1.0, a3.index_axis(Axis(0), i), b3.index_axis(Axis(0), i), 0.0, c.index_axis_mut(Axis(0), i));
            }
            c.into_shape_with_order(IxDyn(&out_shape)).expect("sizes agree")
        };
        Ok(Tensor::from_op(out, &[self, other], "bmm", || {
            let (a, b) = (self.clone(), other.clone());
            Box::new(move |g| {
                let g3 = g.view().into_shape_with_order((batch, m, n)).expect("contiguous");
                let ga = a.requires_grad().then(|| {
                    let bd = b.data();
                    let b3 = bd.view().into_shape_with_order((batch, k, n)).expect("contiguous");
                    let mut ga = ndarray::Array3::<f32>::zeros((batch, m, k));
                    for i in 0..batch {
                        gemm(
                            1.0,
                            g3.index_axis(Axis(0), i),
                            b3.index_axis(Axis(0), i).t(),
                            0.0,
                            ga.index_axis_mut(Axis(0), i),
                        );
                    }
                    ga.into_shape_with_order(IxDyn(&sa)).expect("sizes agree")
                });
                let gb = b.requires_grad().then(|| {
                    let ad = a.data();
                    let a3 = ad.view().into_shape_with_order((batch, m, k)).expect("contiguous");
                    let mut gb = ndarray::Array3::<f32>::zeros((batch, k, n));
                    for i in 0..batch {
                        gemm(
                            1.0,
                            a3.index_axis(Axis(0), i).t(),
                            g3.index_axis(Axis(0), i),
                            0.0,
                            gb.index_axis_mut(Axis(0), i),
                        );
                    }
                    gb.into_shape_with_order(IxDyn(&sb)).expect("sizes agree")
                });
                vec![ga, gb]
            })
        }))
    }

    /// Affine map `x · Wᵀ + b` with `W` stored `[out, in]` (PyTorch's layout) and `x` `[..., in]`.
    /// One fused op so the transpose is a stride swap, not a copy.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (sx, sw) = (self.shape(), weight.shape());
        if sw.len() != 2 || sx.is_empty() || sx[sx.len() - 1] != sw[1] {
            return Err(TensorError::shape("linear (input vs weight [out,in])", &sx, &sw));
        }
        let (out_f, in_f) = (sw[0], sw[1]);
        if let Some(b) = bias {
            if b.shape() != [out_f] {
                return Err(TensorError::shape("linear (bias vs out features)", &b.shape(), &[out_f]));
            }
        }
        let rows: usize = sx[..sx.len() - 1].iter().product();
        let mut out_shape = sx[..sx.len() - 1].to_vec();
        out_shape.push(out_f);
        // Empty inputs can still ask for a huge output: check it before allocating.
        checked_numel("linear", &out_shape)?;
        let out = {
            let _scope = OpScope::begin("linear", || OpInfo {
                input_shapes: vec![sx.clone(), sw.clone()],
                // 2 FLOPs per multiply-accumulate; bias adds are not counted (PyTorch's convention).
                flops: 2 * (rows * in_f * out_f) as u64,
                bytes: 4 * (rows * in_f + in_f * out_f + rows * out_f) as u64,
            });
            let (xd, wd) = (self.data(), weight.data());
            let mut c = Array2::<f32>::zeros((rows, out_f));
            if let Some(b) = bias {
                c += &b.data().view().into_dimensionality::<ndarray::Ix1>().expect("1-D");
            }
            let beta = if bias.is_some() { 1.0 } else { 0.0 };
            gemm(1.0, as2(&xd, rows, in_f), as2(&wd, out_f, in_f).t(), beta, c.view_mut());
            c.into_shape_with_order(IxDyn(&out_shape)).expect("sizes agree")
        };
        let mut inputs = vec![self, weight];
        if let Some(b) = bias {
            inputs.push(b);
        }
        Ok(Tensor::from_op(out, &inputs, "linear", || {
            let (x, w, has_bias) = (self.clone(), weight.clone(), bias.is_some());
            Box::new(move |g| {
                let g2 = as2(g, rows, out_f);
                let gx = x.requires_grad().then(|| {
                    let wd = w.data();
                    let mut gx = Array2::<f32>::zeros((rows, in_f));
                    gemm(1.0, g2, as2(&wd, out_f, in_f), 0.0, gx.view_mut());
                    gx.into_shape_with_order(IxDyn(&sx)).expect("sizes agree")
                });
                let gw = w.requires_grad().then(|| {
                    let xd = x.data();
                    let mut gw = Array2::<f32>::zeros((out_f, in_f));
                    gemm(1.0, g2.t(), as2(&xd, rows, in_f), 0.0, gw.view_mut());
                    gw.into_dyn()
                });
                let mut grads = vec![gx, gw];
                if has_bias {
                    grads.push(Some(g2.sum_axis(Axis(0)).into_dyn()));
                }
                grads
            })
        }))
    }

    /// `x·Wᵀ + b` through a [`Projection`] — the weight in any storage format — for inference.
    /// Reported to the profiler as `linear` (same FLOP count), with the projection's real storage
    /// bytes. Records no graph.
    ///
    /// # Errors
    /// A last dim that is not the projection's input width, a bias that is not `[out]`, or an
    /// input that requires grad while a graph is being recorded (a projection has no backward:
    /// train through the dense weight).
    pub fn project(&self, p: &dyn Projection, bias: Option<&Tensor>) -> Result<Tensor> {
        let sx = self.shape();
        let (out_f, in_f) = p.shape();
        if sx.is_empty() || sx[sx.len() - 1] != in_f {
            return Err(TensorError::shape("project (input vs projection [out,in])", &sx, &[out_f, in_f]));
        }
        if crate::projection::records_graph(&[Some(self), bias]) {
            return Err(TensorError::arg(
                "project",
                "a projection is inference-only; call it under no_grad or on inputs that need no gradient",
            ));
        }
        if let Some(b) = bias {
            if b.shape() != [out_f] {
                return Err(TensorError::shape("project (bias vs out features)", &b.shape(), &[out_f]));
            }
        }
        let rows: usize = sx[..sx.len() - 1].iter().product();
        let mut out_shape = sx[..sx.len() - 1].to_vec();
        out_shape.push(out_f);
        let _scope = OpScope::begin("linear", || OpInfo {
            input_shapes: vec![sx.clone(), vec![out_f, in_f]],
            flops: 2 * (rows * in_f * out_f) as u64,
            bytes: (4 * (rows * in_f + rows * out_f) + p.storage_bytes()) as u64,
        });
        let xd = self.data();
        let bd = bias.map(|b| b.data());
        let mut y = vec![0.0f32; rows * out_f];
        let mut ws = vec![0u8; p.workspace_len(rows)];
        crate::projection::project(
            p,
            xd.as_slice().expect("standard layout"),
            rows,
            bd.as_ref().map(|b| b.as_slice().expect("standard layout")),
            &mut y,
            &mut ws,
        )?;
        Ok(Tensor::from_array(Array::from_shape_vec(IxDyn(&out_shape), y).expect("sized")))
    }
}
