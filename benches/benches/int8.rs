//! int8 and int4 against f32 in one run: the integer GEMM (`PackedI8`, activations already u8)
//! and the whole int8 projection (`Int8Linear`: quantize the rows, integer product, epilogue),
//! per output channel and per group of 32 inputs (ggml's Q8_0 layout: the group kernels); the
//! int4 projection (`Int4Linear`, ggml's Q4_0 layout) and its kernel alone at every level; against
//! tt-accel's f32 projection (`PackedF32`) and packed GEMM, at decode shapes (1–8 rows, up to a
//! 768 × 2048 layer) and at 512³. Throughput is in operations (2 per multiply-accumulate).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use tt_accel::gemm::{gemm, Rung};
use tt_accel::packed::PackedF32;
use tt_quant::int4::{kernels, Acts, Q4_0_GROUP};
use tt_quant::kernels::IntLevel;
use tt_quant::{Activations, Granularity, Int4Linear, Int8Linear, Scheme, WeightConfig};
use tt_tensor::projection::{Projection, Workspace};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("int8");
    let shapes = [
        (1usize, 128usize, 512usize),
        (1, 512, 128),
        (1, 512, 512),
        (1, 256, 1024),
        (1, 768, 2048),
        (8, 256, 1024),
        (512, 512, 512),
    ];
    for &(m, k, n) in &shapes {
        let w = Array2::from_shape_fn((n, k), |(i, j)| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 29) as f32 / 29.0 - 0.5).collect();
        let mut y = vec![0.0f32; m * n];
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let f32p = PackedF32::new(&w);
        g.bench_function(BenchmarkId::new("f32_packed_projection", &id), |b| {
            b.iter(|| f32p.forward_rows(&x, m, None, &mut y, &mut []))
        });
        let q = Int8Linear::new(&w, WeightConfig::PER_CHANNEL, Activations::Dynamic).expect("finite weights");
        let mut ws = Workspace::default();
        ws.ensure(q.workspace_len(m));
        g.bench_function(BenchmarkId::new("int8_projection", &id), |b| {
            b.iter(|| q.forward_rows(&x, m, None, &mut y, ws.bytes()))
        });
        let q8_0 = WeightConfig { scheme: Scheme::Symmetric, granularity: Granularity::PerGroup(32) };
        let qg = Int8Linear::new(&w, q8_0, Activations::Dynamic).expect("finite weights");
        ws.ensure(qg.workspace_len(m));
        g.bench_function(BenchmarkId::new("int8_group32_projection", &id), |b| {
            b.iter(|| qg.forward_rows(&x, m, None, &mut y, ws.bytes()))
        });
        let q4 = Int4Linear::new(&w, Q4_0_GROUP).expect("finite weights");
        ws.ensure(q4.workspace_len(m));
        g.bench_function(BenchmarkId::new("int4_projection", &id), |b| {
            b.iter(|| q4.forward_rows(&x, m, None, &mut y, ws.bytes()))
        });
        // The int4 kernel alone, over rows quantized once, at each level.
        let p4 = q4.packed();
        let (groups, kb) = (p4.groups(), p4.blocks() * tt_quant::int4::BLOCK);
        let (mut codes, mut scales, mut sums) = (vec![0i8; m * kb], vec![0.0f32; m * groups], vec![0i32; m * groups]);
        for r in 0..m {
            let (cr, sr) = (&mut codes[r * kb..(r + 1) * kb], r * groups..(r + 1) * groups);
            kernels::quantize_row(&x[r * k..(r + 1) * k], Q4_0_GROUP, cr, &mut scales[sr.clone()], &mut sums[sr]);
        }
        for level in IntLevel::available() {
            let acts = Acts { codes: &codes, scales: &scales, sums: &sums };
            g.bench_function(BenchmarkId::new(format!("int4_kernel_{level}"), &id), |b| {
                b.iter(|| p4.matmul(level, acts, m, &mut y).expect("sizes match"))
            });
        }
        let packed = q.packed();
        let a = vec![77u8; m * packed.row_bytes()];
        let mut acc = vec![0i32; m * packed.acc_cols()];
        let level = IntLevel::current();
        g.bench_function(BenchmarkId::new("int8_gemm_only", &id), |b| {
            b.iter(|| packed.matmul(level, &a, m, &mut acc).expect("sizes match"))
        });
        if m == k && k == n {
            let bt: Vec<f32> = w.t().iter().copied().collect();
            g.bench_function(BenchmarkId::new("f32_packed_gemm", &id), |b| {
                b.iter(|| {
                    gemm(Rung::PackedSimd, tt_accel::level(), 1, &x, k, &bt, n, &mut y, n, m, k, n).expect("sizes")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
