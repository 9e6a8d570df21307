//! `Tensor::matmul` (under no_grad) against calling `matrixmultiply::sgemm` directly, square n×n×n.
//! Both sides allocate their n×n output on every call, as any matmul that returns a new matrix must;
//! the ratio is the wrapper's overhead (shape checks, locks, hook check).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tt_tensor::{no_grad, Tensor};

fn direct(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; n * n];
    // SAFETY: a, b, c are n×n row-major buffers of exactly n*n elements.
    unsafe {
        matrixmultiply::sgemm(
            n,
            n,
            n,
            1.0,
            a.as_ptr(),
            n as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    for &n in &[64usize, 256, 512] {
        let a = Tensor::randn(&[n, n], 0.0, 1.0, 1);
        let b = Tensor::randn(&[n, n], 0.0, 1.0, 2);
        let (av, bv) = (a.to_vec(), b.to_vec());
        g.throughput(Throughput::Elements((2 * n * n * n) as u64));
        g.bench_with_input(BenchmarkId::new("matrixmultiply_direct", n), &n, |bch, &n| {
            bch.iter(|| direct(&av, &bv, n))
        });
        g.bench_with_input(BenchmarkId::new("tensor_matmul", n), &n, |bch, _| {
            bch.iter(|| no_grad(|| a.matmul(&b).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
