//! Fused causal multi-head attention over a packed QKV tensor, with a hand-derived backward pass.
//!
//! The composed version (reshape → permute → split → `QKᵀ` → mask → softmax → `·V` → permute) is
//! kept in [`crate::CausalSelfAttention::forward_composed`] as the reference; this kernel computes
//! the same thing without the copies: per (sequence, head) it reads Q, K, V as strided views of the
//! `[B, T, 3d]` projection and runs [`attention_head`] (the same kernel the KV-cached decoder
//! uses), writing straight into the `[B, T, d]` output.
//!
//! Backward, with `P` the saved probabilities and `dO` the output gradient of one head:
//! `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √d_h`, `dQ = dS·K`, `dK = dSᵀ·Q`, `dV = Pᵀ·dO`.

use ndarray::{ArrayView2, ArrayViewMut2, IxDyn, ShapeBuilder};
use tt_tensor::hook::{OpInfo, OpScope};
use tt_tensor::kernels::{attention_head, gemm, Rows};
use tt_tensor::{Array, Tensor, TensorError};

use crate::error::Result;

fn view(buf: &[f32], offset: usize, rows: usize, cols: usize, row_stride: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols).strides((row_stride, 1)), &buf[offset..]).expect("view inside buffer")
}

fn view_mut(buf: &mut [f32], offset: usize, rows: usize, cols: usize, row_stride: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols).strides((row_stride, 1)), &mut buf[offset..]).expect("view inside buffer")
}

/// Causal attention of `qkv` (`[B, T, 3d]`: Q, K, V for all heads side by side) with `n_heads`
/// heads. Returns the output `[B, T, d]` and the attention probabilities `[B, H, T, T]`. Here `d`
/// is the attention width `n_heads · head_dim` — `d_model` unless the block's heads were pruned.
pub fn causal_attention(qkv: &Tensor, n_heads: usize) -> Result<(Tensor, Array)> {
    let s = qkv.shape();
    if s.len() != 3 || !s[2].is_multiple_of(3) || !(s[2] / 3).is_multiple_of(n_heads.max(1)) || n_heads == 0 {
        return Err(TensorError::InvalidShape {
            op: "causal_attention",
            shape: s,
            reason: format!("expected [batch, seq, 3·d] with d divisible by {n_heads} heads"),
        }
        .into());
    }
    let (b, t, d) = (s[0], s[1], s[2] / 3);
    let (h, dh) = (n_heads, d / n_heads);
    let scale = 1.0 / (dh as f32).sqrt();
    let _scope = OpScope::begin("attention", || OpInfo {
        input_shapes: vec![s.clone()],
        // QKᵀ and P·V over the full square (the kernel computes it, then masks), plus softmax.
        flops: (2 * 2 * b * h * t * t * dh + 5 * b * h * t * t) as u64,
        bytes: 4 * (b * t * 3 * d + b * t * d + b * h * t * t) as u64,
    });
    let mut out = vec![0.0f32; b * t * d];
    let mut probs = vec![0.0f32; b * h * t * t];
    {
        let data = qkv.data();
        let x = data.as_slice().expect("standard layout");
        for bi in 0..b {
            let base = bi * t * 3 * d;
            let rows = |offset: usize| Rows { data: &x[base + offset..], rows: t, cols: dh, stride: 3 * d };
            for hi in 0..h {
                let p = &mut probs[(bi * h + hi) * t * t..(bi * h + hi + 1) * t * t];
                let o = &mut out[bi * t * d + hi * dh..];
                attention_head(rows(hi * dh), rows(d + hi * dh), rows(2 * d + hi * dh), scale, p, o, d);
            }
        }
    }
    let out = Array::from_shape_vec(IxDyn(&[b, t, d]), out).expect("sized");
    let probs = Array::from_shape_vec(IxDyn(&[b, h, t, t]), probs).expect("sized");
    let saved = tt_tensor::is_grad_enabled() && qkv.requires_grad();
    let saved_probs = if saved { Some(probs.clone()) } else { None };
    let y = Tensor::custom_op("attention", &[qkv], out, || {
        let (x, p) = (qkv.clone(), saved_probs.expect("saved when recording"));
        Box::new(move |g: &Array| {
            let data = x.data();
            let xs = data.as_slice().expect("standard layout");
            let gs = g.as_slice().expect("standard layout");
            let ps = p.as_slice().expect("standard layout");
            let mut dx = vec![0.0f32; b * t * 3 * d];
            let mut dp = vec![0.0f32; t * t];
            for bi in 0..b {
                let base = bi * t * 3 * d;
                for hi in 0..h {
                    let pm = &ps[(bi * h + hi) * t * t..(bi * h + hi + 1) * t * t];
                    let go = view(gs, bi * t * d + hi * dh, t, dh, d);
                    let v = view(xs, base + 2 * d + hi * dh, t, dh, 3 * d);
                    gemm(1.0, go, v.t(), 0.0, view_mut(&mut dp, 0, t, t, t));
                    for i in 0..t {
                        let (pr, dr) = (&pm[i * t..=i * t + i], &mut dp[i * t..(i + 1) * t]);
                        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                        for j in 0..=i {
                            dr[j] = pr[j] * (dr[j] - dot) * scale;
                        }
                        dr[i + 1..].fill(0.0);
                    }
                    let ds = view(&dp, 0, t, t, t);
                    let q = view(xs, base + hi * dh, t, dh, 3 * d);
                    let k = view(xs, base + d + hi * dh, t, dh, 3 * d);
                    gemm(1.0, ds, k, 0.0, view_mut(&mut dx, base + hi * dh, t, dh, 3 * d));
                    gemm(1.0, ds.t(), q, 0.0, view_mut(&mut dx, base + d + hi * dh, t, dh, 3 * d));
                    gemm(
                        1.0,
                        view(pm, 0, t, t, t).t(),
                        go,
                        0.0,
                        view_mut(&mut dx, base + 2 * d + hi * dh, t, dh, 3 * d),
                    );
                }
            }
            vec![Some(Array::from_shape_vec(IxDyn(&[b, t, 3 * d]), dx).expect("sized"))]
        })
    });
    Ok((y, probs))
}
