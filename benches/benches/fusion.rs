//! Module 16 fused row kernels against the unfused chains they replace (`tt_accel::fused` vs
//! `tt_accel::fused::unfused`, the `tt_tensor::kernels` references called one after another),
//! same inputs, one group per kernel, at the level dispatch picks (set `TT_ACCEL_LEVEL` to
//! lower it):
//! - layer norm over 64 rows of width 128 and 512;
//! - softmax over 16 rows of width 640 (one decode step's scores at full context);
//! - bias + GELU over 64×512 (the MLP's GEMM epilogue);
//! - decode attention, one head of head_dim 32 over 128 and 640 cached positions.
//!
//! Throughput is the bytes each kernel must touch at least (inputs read once, outputs written
//! once), the same for both variants, so criterion's rate is an effective bandwidth and the
//! ratio of the two rates is the speedup. The in-place kernels (softmax, bias + GELU) get a
//! fresh copy of their input before each timed call (untimed), so every call sees the same
//! values, hot in cache as they would be after the producing kernel.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tt_accel::fused::{self, unfused};
use tt_tensor::Tensor;

fn randn(n: usize, std: f32, seed: u64) -> Vec<f32> {
    Tensor::randn(&[n], 0.0, std, seed).to_vec()
}

const F32: u64 = std::mem::size_of::<f32>() as u64;

fn layer_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("fusion_layer_norm");
    let rows = 64;
    for w in [128usize, 512] {
        let x = randn(rows * w, 1.0, 1);
        let gamma: Vec<f32> = randn(w, 0.1, 2).iter().map(|v| 1.0 + v).collect();
        let beta = randn(w, 0.1, 3);
        let mut out = vec![0.0f32; rows * w];
        // Read x, write out, read γ and β once.
        g.throughput(Throughput::Bytes(F32 * (2 * rows * w + 2 * w) as u64));
        g.bench_function(BenchmarkId::new("unfused", w), |b| {
            b.iter(|| {
                for (xr, or) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
                    unfused::layer_norm(xr, &gamma, &beta, 1e-5, or).unwrap();
                }
            })
        });
        g.bench_function(BenchmarkId::new("fused", w), |b| {
            b.iter(|| {
                for (xr, or) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
                    fused::layer_norm(xr, &gamma, &beta, 1e-5, or).unwrap();
                }
            })
        });
    }
    g.finish();
}

fn softmax(c: &mut Criterion) {
    let mut g = c.benchmark_group("fusion_softmax");
    let (rows, w) = (16usize, 640);
    let x = randn(rows * w, 3.0, 4);
    // Read and write the rows once.
    g.throughput(Throughput::Bytes(F32 * (2 * rows * w) as u64));
    g.bench_function(BenchmarkId::new("unfused", w), |b| {
        b.iter_batched_ref(|| x.clone(), |y| y.chunks_exact_mut(w).for_each(unfused::softmax), BatchSize::PerIteration)
    });
    g.bench_function(BenchmarkId::new("fused", w), |b| {
        b.iter_batched_ref(
            || x.clone(),
            |y| y.chunks_exact_mut(w).for_each(|r| fused::softmax(r).unwrap()),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bias_gelu(c: &mut Criterion) {
    let mut g = c.benchmark_group("fusion_bias_gelu");
    let (rows, w) = (64usize, 512);
    let y0 = randn(rows * w, 1.0, 5);
    let bias = randn(w, 0.1, 6);
    // Read and write y once, read the bias once.
    g.throughput(Throughput::Bytes(F32 * (2 * rows * w + w) as u64));
    g.bench_function(BenchmarkId::new("unfused", format!("{rows}x{w}")), |b| {
        b.iter_batched_ref(|| y0.clone(), |y| unfused::bias_gelu(y, &bias).unwrap(), BatchSize::PerIteration)
    });
    g.bench_function(BenchmarkId::new("fused", format!("{rows}x{w}")), |b| {
        b.iter_batched_ref(|| y0.clone(), |y| fused::bias_gelu(y, &bias).unwrap(), BatchSize::PerIteration)
    });
    g.finish();
}

fn decode_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("fusion_decode_attention");
    let hd = 32usize;
    let scale = 1.0 / (hd as f32).sqrt();
    for slots in [128usize, 640] {
        let q = randn(hd, 1.0, 7);
        let k = randn(slots * hd, 1.0, 8);
        let v = randn(slots * hd, 1.0, 9);
        let mut probs = vec![0.0f32; slots];
        let mut out = vec![0.0f32; hd];
        // Read q, K and V once, write out once.
        g.throughput(Throughput::Bytes(F32 * (2 * slots * hd + 2 * hd) as u64));
        g.bench_function(BenchmarkId::new("unfused", slots), |b| {
            b.iter(|| unfused::decode_attention(&q, &k, &v, scale, &mut probs, &mut out).unwrap())
        });
        g.bench_function(BenchmarkId::new("fused", slots), |b| {
            b.iter(|| fused::decode_attention(&q, &k, &v, scale, &mut out).unwrap())
        });
        g.bench_function(BenchmarkId::new("fused_2pass", slots), |b| {
            b.iter(|| fused::decode_attention_2pass(&q, &k, &v, scale, &mut probs, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, layer_norm, softmax, bias_gelu, decode_attention);
criterion_main!(benches);
