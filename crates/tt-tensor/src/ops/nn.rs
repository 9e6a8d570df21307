//! Neural-network ops with fused kernels: conv2d (im2col + GEMM), pooling, layer norm.

use ndarray::{Array2, ArrayView2, Axis, IxDyn};

use super::elementwise_info;
use crate::error::{Result, TensorError};
use crate::hook::{OpInfo, OpScope};
use crate::kernels::{col2im, conv_out_size, gemm, im2col, layer_norm_row, rms_norm_row, ConvGeom, RopeTable};
use crate::projection::Projection;
use crate::tensor::{checked_numel, Array, Tensor};

/// Validates a window geometry (kernel and stride at least 1, padding that does not overflow, a
/// window that fits the padded input) before anything is allocated.
fn geom(op: &'static str, x: &[usize], kh: usize, kw: usize, stride: usize, padding: usize) -> Result<ConvGeom> {
    if x.len() != 4 {
        return Err(TensorError::invalid_shape(op, x, "expected [batch, channels, height, width]"));
    }
    if kh == 0 || kw == 0 {
        return Err(TensorError::arg(op, format!("kernel {kh}x{kw} must be at least 1x1")));
    }
    if stride == 0 {
        return Err(TensorError::arg(op, "stride 0 must be at least 1"));
    }
    let (c_in, h, w) = (x[1], x[2], x[3]);
    if padding.checked_mul(2).and_then(|p| h.max(w).checked_add(p)).is_none() {
        return Err(TensorError::arg(op, format!("padding {padding} overflows the padded input size")));
    }
    let (Some(h_out), Some(w_out)) = (conv_out_size(h, kh, stride, padding), conv_out_size(w, kw, stride, padding))
    else {
        return Err(TensorError::invalid_shape(
            op,
            x,
            format!("kernel {kh}x{kw} with stride {stride}, padding {padding} does not fit"),
        ));
    };
    // The im2col buffer [c_in·kh·kw, h_out·w_out] and one output plane must be addressable.
    checked_numel(op, &[c_in, kh, kw, h_out, w_out])?;
    Ok(ConvGeom { c_in, h, w, kh, kw, stride, padding, h_out, w_out })
}

impl Tensor {
    /// 2-D convolution (cross-correlation, like PyTorch): `x [B,C_in,H,W]`, `w [C_out,C_in,kh,kw]`,
    /// optional bias `[C_out]`. Each image is unfolded with im2col and multiplied by one GEMM.
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
        let (sx, sw) = (self.shape(), weight.shape());
        if sw.len() != 4 {
            return Err(TensorError::invalid_shape("conv2d", &sw, "weight must be [C_out, C_in, kh, kw]"));
        }
        let g = geom("conv2d", &sx, sw[2], sw[3], stride, padding)?;
        if sw[1] != g.c_in {
            return Err(TensorError::shape("conv2d (input channels vs weight)", &sx, &sw));
        }
        let c_out = sw[0];
        if let Some(b) = bias {
            if b.shape() != [c_out] {
                return Err(TensorError::shape("conv2d (bias)", &b.shape(), &[c_out]));
            }
        }
        let batch = sx[0];
        checked_numel("conv2d", &[batch, c_out, g.h_out, g.w_out])?;
        let ckk = g.c_in * g.kh * g.kw;
        let hw = g.h_out * g.w_out;
        let out = {
            let _scope = OpScope::begin("conv2d", || OpInfo {
                input_shapes: vec![sx.clone(), sw.clone()],
                flops: 2 * (batch * c_out * hw * ckk) as u64,
                bytes: 4 * (sx.iter().product::<usize>() + sw.iter().product::<usize>() + batch * c_out * hw) as u64,
            });
            let (xd, wd) = (self.data(), weight.data());
            let xs = xd.as_slice().expect("standard layout");
            let w2 = wd.view().into_shape_with_order((c_out, ckk)).expect("contiguous");
            let mut out = Array::zeros(IxDyn(&[batch, c_out, g.h_out, g.w_out]));
            let mut cols = vec![0.0f32; ckk * hw];
            let img = g.c_in * g.h * g.w;
            let bias_d = bias.map(|b| b.to_vec());
            for (bi, mut ob) in out.axis_iter_mut(Axis(0)).enumerate() {
                im2col(&xs[bi * img..(bi + 1) * img], &g, &mut cols);
                let cv = ArrayView2::from_shape((ckk, hw), &cols).expect("sized");
                let mut o2 = ob.view_mut().into_shape_with_order((c_out, hw)).expect("contiguous");
                if let Some(bd) = &bias_d {
                    for (mut row, &bv) in o2.axis_iter_mut(Axis(0)).zip(bd) {
                        row.fill(bv);
                    }
                }
                gemm(1.0, w2, cv, if bias_d.is_some() { 1.0 } else { 0.0 }, o2);
            }
            out
        };
        let mut inputs = vec![self, weight];
        if let Some(b) = bias {
            inputs.push(b);
        }
        Ok(Tensor::from_op(out, &inputs, "conv2d", || {
            let (x, w, has_bias) = (self.clone(), weight.clone(), bias.is_some());
            Box::new(move |gout| {
                let (xd, wd) = (x.data(), w.data());
                let xs = xd.as_slice().expect("standard layout");
                let w2 = wd.view().into_shape_with_order((c_out, ckk)).expect("contiguous");
                let img = g.c_in * g.h * g.w;
                let mut gx = x.requires_grad().then(|| vec![0.0f32; batch * img]);
                let mut gw = Array2::<f32>::zeros((c_out, ckk));
                let mut cols = vec![0.0f32; ckk * hw];
                let mut dcols = Array2::<f32>::zeros((ckk, hw));
                for bi in 0..batch {
                    let g2 = gout.index_axis(Axis(0), bi).into_shape_with_order((c_out, hw)).expect("contiguous");
                    if w.requires_grad() {
                        im2col(&xs[bi * img..(bi + 1) * img], &g, &mut cols);
                        let cv = ArrayView2::from_shape((ckk, hw), &cols).expect("sized");
                        gemm(1.0, g2, cv.t(), 1.0, gw.view_mut());
                    }
                    if let Some(gx) = gx.as_mut() {
                        gemm(1.0, w2.t(), g2, 0.0, dcols.view_mut());
                        col2im(dcols.as_slice().expect("fresh"), &g, &mut gx[bi * img..(bi + 1) * img]);
                    }
                }
                let mut grads = vec![
                    gx.map(|v| Array::from_shape_vec(IxDyn(&sx), v).expect("sized")),
                    w.requires_grad().then(|| gw.into_shape_with_order(IxDyn(&sw)).expect("sized")),
                ];
                if has_bias {
                    let gb = gout.sum_axis(Axis(3)).sum_axis(Axis(2)).sum_axis(Axis(0));
                    grads.push(Some(gb));
                }
                grads
            })
        }))
    }

    /// 2-D convolution through a [`Projection`] of the weight as a `[C_out, C_in·kh·kw]` matrix,
    /// for inference: each image is unfolded into one row per output pixel (the transpose of
    /// [`im2col`]'s columns) and those rows are projected. Reported as `conv2d`. Records no graph.
    ///
    /// # Errors
    /// As [`Tensor::conv2d`], plus a projection whose input width is not `C_in·kh·kw`, or an
    /// input that requires grad while a graph is being recorded.
    pub fn conv2d_projected(
        &self,
        p: &dyn Projection,
        kernel: (usize, usize),
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        let sx = self.shape();
        let g = geom("conv2d", &sx, kernel.0, kernel.1, stride, padding)?;
        let (c_out, ckk) = p.shape();
        if ckk != g.c_in * g.kh * g.kw {
            return Err(TensorError::shape("conv2d (projection [C_out, C_in·kh·kw] vs input)", &sx, &[c_out, ckk]));
        }
        if crate::projection::records_graph(&[Some(self), bias]) {
            return Err(TensorError::arg("conv2d", "a projection is inference-only; call it under no_grad"));
        }
        if let Some(b) = bias {
            if b.shape() != [c_out] {
                return Err(TensorError::shape("conv2d (bias)", &b.shape(), &[c_out]));
            }
        }
        let (batch, hw) = (sx[0], g.h_out * g.w_out);
        checked_numel("conv2d", &[batch, c_out, g.h_out, g.w_out])?;
        let _scope = OpScope::begin("conv2d", || OpInfo {
            input_shapes: vec![sx.clone(), vec![c_out, g.c_in, g.kh, g.kw]],
            flops: 2 * (batch * c_out * hw * ckk) as u64,
            bytes: (4 * (sx.iter().product::<usize>() + batch * c_out * hw) + p.storage_bytes()) as u64,
        });
        let xd = self.data();
        let xs = xd.as_slice().expect("standard layout");
        let bd = bias.map(|b| b.data());
        let bs = bd.as_ref().map(|b| b.as_slice().expect("standard layout"));
        let mut out = vec![0.0f32; batch * c_out * hw];
        let mut cols = vec![0.0f32; ckk * hw];
        let mut patches = vec![0.0f32; hw * ckk];
        let mut y = vec![0.0f32; hw * c_out];
        let mut ws = vec![0u8; p.workspace_len(hw)];
        let img = g.c_in * g.h * g.w;
        for bi in 0..batch {
            im2col(&xs[bi * img..(bi + 1) * img], &g, &mut cols);
            for r in 0..ckk {
                for px in 0..hw {
                    patches[px * ckk + r] = cols[r * hw + px];
                }
            }
            crate::projection::project(p, &patches, hw, bs, &mut y, &mut ws)?;
            let ob = &mut out[bi * c_out * hw..(bi + 1) * c_out * hw];
            for px in 0..hw {
                for c in 0..c_out {
                    ob[c * hw + px] = y[px * c_out + c];
                }
            }
        }
        Ok(Tensor::from_array(Array::from_shape_vec(IxDyn(&[batch, c_out, g.h_out, g.w_out]), out).expect("sized")))
    }

    /// Max pooling over `k×k` windows with the given stride (no padding).
    ///
    /// # Errors
    /// An input that is not `[B, C, H, W]`, `k` or `stride` of 0, or a window larger than the input.
    pub fn max_pool2d(&self, k: usize, stride: usize) -> Result<Tensor> {
        let sx = self.shape();
        let g = geom("max_pool2d", &sx, k, k, stride, 0)?;
        let (batch, c) = (sx[0], sx[1]);
        let planes = batch * c;
        let mut argmax = vec![0usize; planes * g.h_out * g.w_out];
        let out = {
            let _scope = OpScope::begin("max_pool2d", || OpInfo {
                input_shapes: vec![sx.clone()],
                flops: (planes * g.h_out * g.w_out * k * k) as u64,
                bytes: 4 * (sx.iter().product::<usize>() + planes * g.h_out * g.w_out) as u64,
            });
            let xd = self.data();
            let xs = xd.as_slice().expect("standard layout");
            let mut out = vec![0.0f32; planes * g.h_out * g.w_out];
            for p in 0..planes {
                let plane = &xs[p * g.h * g.w..(p + 1) * g.h * g.w];
                for oy in 0..g.h_out {
                    for ox in 0..g.w_out {
                        let mut best = f32::NEG_INFINITY;
                        let mut best_i = (oy * stride) * g.w + ox * stride;
                        for ky in 0..k {
                            for kx in 0..k {
                                let i = (oy * stride + ky) * g.w + ox * stride + kx;
                                if plane[i] > best {
                                    best = plane[i];
                                    best_i = i;
                                }
                            }
                        }
                        let o = (p * g.h_out + oy) * g.w_out + ox;
                        out[o] = best;
                        argmax[o] = p * g.h * g.w + best_i;
                    }
                }
            }
            Array::from_shape_vec(IxDyn(&[batch, c, g.h_out, g.w_out]), out).expect("sized")
        };
        Ok(Tensor::from_op(out, &[self], "max_pool2d", || {
            Box::new(move |gout| {
                let mut gx = vec![0.0f32; sx.iter().product()];
                let gout = gout.as_standard_layout();
                for (gv, &i) in gout.as_slice().expect("standard layout").iter().zip(&argmax) {
                    gx[i] += gv;
                }
                vec![Some(Array::from_shape_vec(IxDyn(&sx), gx).expect("sized"))]
            })
        }))
    }

    /// Average pooling over `k×k` windows with the given stride (no padding).
    ///
    /// # Errors
    /// An input that is not `[B, C, H, W]`, `k` or `stride` of 0, or a window larger than the input.
    pub fn avg_pool2d(&self, k: usize, stride: usize) -> Result<Tensor> {
        let sx = self.shape();
        let g = geom("avg_pool2d", &sx, k, k, stride, 0)?;
        let planes = sx[0] * sx[1];
        let inv = 1.0 / (k * k) as f32;
        let out = {
            let _scope = OpScope::begin("avg_pool2d", || OpInfo {
                input_shapes: vec![sx.clone()],
                flops: (planes * g.h_out * g.w_out * k * k) as u64,
                bytes: 4 * (sx.iter().product::<usize>() + planes * g.h_out * g.w_out) as u64,
            });
            let xd = self.data();
            let xs = xd.as_slice().expect("standard layout");
            let mut out = vec![0.0f32; planes * g.h_out * g.w_out];
            for p in 0..planes {
                for oy in 0..g.h_out {
                    for ox in 0..g.w_out {
                        let mut s = 0.0;
                        for ky in 0..k {
                            for kx in 0..k {
                                s += xs[p * g.h * g.w + (oy * stride + ky) * g.w + ox * stride + kx];
                            }
                        }
                        out[(p * g.h_out + oy) * g.w_out + ox] = s * inv;
                    }
                }
            }
            Array::from_shape_vec(IxDyn(&[sx[0], sx[1], g.h_out, g.w_out]), out).expect("sized")
        };
        Ok(Tensor::from_op(out, &[self], "avg_pool2d", || {
            Box::new(move |gout| {
                let gs = gout.as_slice().expect("standard layout");
                let mut gx = vec![0.0f32; sx.iter().product()];
                for p in 0..planes {
                    for oy in 0..g.h_out {
                        for ox in 0..g.w_out {
                            let gv = gs[(p * g.h_out + oy) * g.w_out + ox] * inv;
                            for ky in 0..k {
                                for kx in 0..k {
                                    gx[p * g.h * g.w + (oy * stride + ky) * g.w + ox * stride + kx] += gv;
                                }
                            }
                        }
                    }
                }
                vec![Some(Array::from_shape_vec(IxDyn(&sx), gx).expect("sized"))]
            })
        }))
    }

    /// Layer normalization over the last dimension with affine `gamma`, `beta` of that size.
    ///
    /// # Errors
    /// A 0-d input, `gamma`/`beta` not of the last dim's size, or an `eps` that is negative or
    /// not finite.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(TensorError::arg("layer_norm", format!("eps {eps} must be finite and >= 0")));
        }
        let sx = self.shape();
        let d = *sx.last().ok_or_else(|| TensorError::invalid_shape("layer_norm", &sx, "needs at least 1 dim"))?;
        if gamma.shape() != [d] || beta.shape() != [d] {
            return Err(TensorError::shape("layer_norm (gamma/beta vs last dim)", &gamma.shape(), &[d]));
        }
        let rows = self.numel().checked_div(d).unwrap_or(0);
        let mut stats = vec![(0.0f32, 0.0f32); rows];
        let out = {
            let _scope = OpScope::begin("layer_norm", || OpInfo {
                input_shapes: vec![sx.clone(), vec![d], vec![d]],
                flops: 5 * (rows * d) as u64,
                bytes: 4 * (2 * rows * d + 2 * d) as u64,
            });
            let (xd, gd, bd) = (self.data(), gamma.data(), beta.data());
            let (xs, gs, bs) = (xd.as_slice().expect("std"), gd.as_slice().expect("std"), bd.as_slice().expect("std"));
            let mut out = vec![0.0f32; rows * d];
            for r in 0..rows {
                stats[r] = layer_norm_row(&xs[r * d..(r + 1) * d], gs, bs, eps, &mut out[r * d..(r + 1) * d]);
            }
            Array::from_shape_vec(IxDyn(&sx), out).expect("sized")
        };
        Ok(Tensor::from_op(out, &[self, gamma, beta], "layer_norm", || {
            let (x, gamma_t) = (self.clone(), gamma.clone());
            Box::new(move |gout| {
                let (xd, gd) = (x.data(), gamma_t.data());
                let (xs, gs) = (xd.as_slice().expect("std"), gd.as_slice().expect("std"));
                let go = gout.as_slice().expect("std");
                let mut gx = vec![0.0f32; rows * d];
                let mut ggamma = vec![0.0f32; d];
                let mut gbeta = vec![0.0f32; d];
                let n = d as f32;
                for r in 0..rows {
                    let (mean, rstd) = stats[r];
                    let xr = &xs[r * d..(r + 1) * d];
                    let gr = &go[r * d..(r + 1) * d];
                    // xhat = (x - mean) * rstd; dxhat = g * gamma
                    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                    let mut sum_dxhat = 0.0;
                    let mut sum_dxhat_xhat = 0.0;
                    for i in 0..d {
                        let xhat = (xr[i] - mean) * rstd;
                        let dxhat = gr[i] * gs[i];
                        sum_dxhat += dxhat;
                        sum_dxhat_xhat += dxhat * xhat;
                        ggamma[i] += gr[i] * xhat;
                        gbeta[i] += gr[i];
                    }
                    for i in 0..d {
                        let xhat = (xr[i] - mean) * rstd;
                        let dxhat = gr[i] * gs[i];
                        gx[r * d + i] = rstd * (dxhat - sum_dxhat / n - xhat * sum_dxhat_xhat / n);
                    }
                }
                vec![
                    Some(Array::from_shape_vec(IxDyn(&sx), gx).expect("sized")),
                    Some(Array::from_shape_vec(IxDyn(&[d]), ggamma).expect("sized")),
                    Some(Array::from_shape_vec(IxDyn(&[d]), gbeta).expect("sized")),
                ]
            })
        }))
    }

    /// RMS normalization over the last dimension with scale `gamma` of that size (Llama):
    /// `y = gamma ⊙ x / √(mean(x²) + eps)`, row by row with [`rms_norm_row`].
    ///
    /// # Errors
    /// A 0-d input, `gamma` not of the last dim's size, or an `eps` that is negative or not finite.
    pub fn rms_norm(&self, gamma: &Tensor, eps: f32) -> Result<Tensor> {
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(TensorError::arg("rms_norm", format!("eps {eps} must be finite and >= 0")));
        }
        let sx = self.shape();
        let d = *sx.last().ok_or_else(|| TensorError::invalid_shape("rms_norm", &sx, "needs at least 1 dim"))?;
        if gamma.shape() != [d] {
            return Err(TensorError::shape("rms_norm (gamma vs last dim)", &gamma.shape(), &[d]));
        }
        let rows = self.numel().checked_div(d).unwrap_or(0);
        let mut rs = vec![0.0f32; rows];
        let out = {
            let _scope = OpScope::begin("rms_norm", || OpInfo {
                input_shapes: vec![sx.clone(), vec![d]],
                flops: 4 * (rows * d) as u64,
                bytes: 4 * (2 * rows * d + d) as u64,
            });
            let (xd, gd) = (self.data(), gamma.data());
            let (xs, gs) = (xd.as_slice().expect("std"), gd.as_slice().expect("std"));
            let mut out = vec![0.0f32; rows * d];
            for r in 0..rows {
                rs[r] = rms_norm_row(&xs[r * d..(r + 1) * d], gs, eps, &mut out[r * d..(r + 1) * d]);
            }
            Array::from_shape_vec(IxDyn(&sx), out).expect("sized")
        };
        Ok(Tensor::from_op(out, &[self, gamma], "rms_norm", || {
            let (x, gamma_t) = (self.clone(), gamma.clone());
            Box::new(move |gout| {
                let (xd, gd) = (x.data(), gamma_t.data());
                let (xs, gs) = (xd.as_slice().expect("std"), gd.as_slice().expect("std"));
                let go = gout.as_slice().expect("std");
                let mut gx = vec![0.0f32; rows * d];
                let mut ggamma = vec![0.0f32; d];
                for r in 0..rows {
                    let (xr, gr, rr) = (&xs[r * d..(r + 1) * d], &go[r * d..(r + 1) * d], rs[r]);
                    // y_i = γ_i·r·x_i, r = (Σx²/n + eps)^(−1/2), ∂r/∂x_j = −r³·x_j/n:
                    // dx_j = r·g_jγ_j − r³·x_j·(Σ_i g_iγ_i x_i)/n.
                    let dot: f32 = (0..d).map(|i| gr[i] * gs[i] * xr[i]).sum();
                    let k = rr * rr * rr * dot / d as f32;
                    for i in 0..d {
                        gx[r * d + i] = rr * gr[i] * gs[i] - k * xr[i];
                        ggamma[i] += gr[i] * rr * xr[i];
                    }
                }
                vec![
                    Some(Array::from_shape_vec(IxDyn(&sx), gx).expect("sized")),
                    Some(Array::from_shape_vec(IxDyn(&[d]), ggamma).expect("sized")),
                ]
            })
        }))
    }

    /// Rotary position embeddings on `[batch, seq, heads, head_dim]`: the vector of each
    /// (batch, position `t`, head) turned to position `start + t` by `table`. Its gradient turns
    /// back (a rotation's transpose is its inverse).
    ///
    /// # Errors
    /// Not 4-d, a last dim other than the table's head_dim, or positions past the table.
    pub fn rope(&self, table: &std::sync::Arc<RopeTable>, start: usize) -> Result<Tensor> {
        let s = self.shape();
        if s.len() != 4 || s[3] != table.head_dim() {
            return Err(TensorError::invalid_shape(
                "rope",
                &s,
                format!("expected [batch, seq, heads, {}]", table.head_dim()),
            ));
        }
        let (seq, heads, hd) = (s[1], s[2], s[3]);
        if start.checked_add(seq).is_none_or(|end| end > table.positions()) {
            return Err(TensorError::arg(
                "rope",
                format!("positions {start}..{start}+{seq} pass the table's {}", table.positions()),
            ));
        }
        let table = table.clone();
        let turn = move |a: &Array, inverse: bool| -> Array {
            let mut out = a.as_standard_layout().into_owned();
            let v = out.as_slice_mut().expect("standard layout");
            for (n, head) in v.chunks_exact_mut(hd).enumerate() {
                table.rotate(head, start + (n / heads) % seq, inverse);
            }
            out
        };
        let out = {
            let _scope = OpScope::begin("rope", || elementwise_info(&[&s], self.numel(), 6));
            turn(&self.data(), false)
        };
        Ok(Tensor::from_op(out, &[self], "rope", || Box::new(move |g| vec![Some(turn(g, true))])))
    }
}
