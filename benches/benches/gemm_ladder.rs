//! The GEMM ladder of module 16 (`tt_accel::gemm`), square n×n×n, against `matrixmultiply`
//! (through `tt_tensor::kernels::gemm`, what every tensor matmul uses) in the same run.
//! Throughput is in FLOPs (2·n³ per product). `naive` and `reordered` only run at n ≤ 256 (they
//! take seconds beyond); `threaded` runs with 1 and 2 workers; `packed_simd` runs at the best
//! dispatch level everywhere, and at each lower available level at n = 512.
//! All outputs are preallocated: only the product is timed.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{ArrayView2, ArrayViewMut2};
use tt_accel::dispatch::{self, Level};
use tt_accel::gemm::{gemm, Rung};

fn data(len: usize, seed: u32) -> Vec<f32> {
    // A cheap deterministic fill in [-1, 1); the values do not affect the timing.
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 23) as f32) - 1.0)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_ladder");
    let best = dispatch::level();
    for &n in &[128usize, 256, 512, 1024] {
        let (a, b) = (data(n * n, 1), data(n * n, 2));
        let mut out = vec![0.0f32; n * n];
        g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
        g.sample_size(if n >= 512 { 20 } else { 50 });
        let mut run =
            |g: &mut criterion::BenchmarkGroup<'_, _>, id: String, rung: Rung, level: Level, threads: usize| {
                g.bench_function(BenchmarkId::new(id, n), |bch| {
                    bch.iter(|| gemm(rung, level, threads, &a, n, &b, n, &mut out, n, n, n, n).unwrap())
                });
            };
        if n <= 256 {
            run(&mut g, "naive".into(), Rung::Naive, best, 1);
            run(&mut g, "reordered".into(), Rung::Reordered, best, 1);
        }
        run(&mut g, "blocked".into(), Rung::Blocked, best, 1);
        run(&mut g, format!("packed_simd_{best}"), Rung::PackedSimd, best, 1);
        if n == 512 {
            for level in dispatch::available().into_iter().filter(|&l| l < best) {
                run(&mut g, format!("packed_simd_{level}"), Rung::PackedSimd, level, 1);
            }
        }
        run(&mut g, "threaded_1t".into(), Rung::Threaded, best, 1);
        run(&mut g, "threaded_2t".into(), Rung::Threaded, best, 2);
        let (av, bv) = (ArrayView2::from_shape((n, n), &a).unwrap(), ArrayView2::from_shape((n, n), &b).unwrap());
        let mut cv = vec![0.0f32; n * n];
        g.bench_function(BenchmarkId::new("matrixmultiply", n), |bch| {
            bch.iter(|| {
                let cview = ArrayViewMut2::from_shape((n, n), &mut cv).unwrap();
                tt_tensor::kernels::gemm(1.0, av, bv, 0.0, cview)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
