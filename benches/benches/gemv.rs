//! Decode-shaped products (m = 1…8 rows): tt-accel's packed projection (weights packed once) vs
//! the dense reference projection (`linear_rows`: dot products below 8 rows, GEMM from 8) vs
//! matrixmultiply called directly (which packs the weights on every call). Throughput is in
//! FLOPs (2·m·k·n per call), so criterion prints FLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, ArrayView2};
use tt_accel::packed::PackedF32;
use tt_tensor::projection::{DenseF32, Projection};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv");
    for &(m, k, n) in &[(1usize, 256usize, 1024usize), (1, 128, 512), (1, 512, 128), (4, 128, 512), (8, 256, 1024)] {
        let w = Array2::from_shape_fn((n, k), |(i, j)| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 29) as f32 / 29.0 - 0.5).collect();
        let mut y = vec![0.0f32; m * n];
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let packed = PackedF32::new(&w);
        g.bench_function(BenchmarkId::new("packed", &id), |b| {
            b.iter(|| packed.forward_rows(&x, m, None, &mut y, &mut []))
        });
        let dense = DenseF32::from_array(w.clone());
        g.bench_function(BenchmarkId::new("dense_reference", &id), |b| {
            b.iter(|| dense.forward_rows(&x, m, None, &mut y, &mut []))
        });
        g.bench_function(BenchmarkId::new("matrixmultiply", &id), |b| {
            b.iter(|| {
                let xv = ArrayView2::from_shape((m, k), &x).unwrap();
                let yv = ndarray::ArrayViewMut2::from_shape((m, n), &mut y).unwrap();
                tt_tensor::kernels::gemm(1.0, xv, w.t(), 0.0, yv);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
