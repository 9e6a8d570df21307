//! Sparse kernels at one row on the GPT's MLP shape (512×128): tt-accel's packed dense GEMV vs
//! CSR vs the 16×1 block-sparse format, at a few densities, on unstructured masks (each weight
//! kept with probability d) and block-pruned ones (d of the 16×1 blocks kept, by L2 norm).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use tt_accel::packed::PackedF32;
use tt_accel::sparse::BlockSparseF32;
use tt_compress::csr::CsrF32;
use tt_tensor::projection::Projection;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sparse_gemv_512x128");
    let (out_f, in_f) = (512, 128);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x: Vec<f32> = (0..in_f).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut y = vec![0.0f32; out_f];
    let full = Array2::from_shape_fn((out_f, in_f), |_| rng.random_range(-1.0f32..1.0));
    let dense = PackedF32::new(&full);
    g.bench_function("dense_packed", |b| b.iter(|| dense.forward_rows(&x, 1, None, &mut y, &mut [])));
    for density in [1.0, 0.5, 0.2, 0.05] {
        let w = Array2::from_shape_fn((out_f, in_f), |_| {
            if rng.random::<f64>() < density {
                rng.random_range(-1.0f32..1.0)
            } else {
                0.0
            }
        });
        let keep = tt_compress::prune::block_mask(&full.view(), &Array2::ones((out_f, in_f)).view(), 1.0 - density)
            .expect("amount in [0, 1]");
        let wb = &full * &keep;
        let formats: [(&str, Box<dyn Projection>); 3] = [
            ("csr_unstructured", Box::new(CsrF32::from_dense(&w).expect("finite"))),
            ("block16_unstructured", Box::new(BlockSparseF32::from_dense(&w).expect("finite"))),
            ("block16_block_pruned", Box::new(BlockSparseF32::from_dense(&wb).expect("finite"))),
        ];
        for (name, p) in &formats {
            g.bench_function(BenchmarkId::new(*name, density), |b| {
                b.iter(|| p.forward_rows(&x, 1, None, &mut y, &mut []))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
