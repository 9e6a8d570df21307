//! int4 beside int8 and f32 in one run, at decode shapes (one row: a GEMV, where the weight's
//! bytes bound the time): the whole int4 projection (`Int4Linear`: quantize the row per group,
//! integer product, per-group scaling), its kernel alone, the dynamic int8 projection and
//! tt-accel's packed f32 projection, at every integer level the CPU has for the int4 kernel.
//! Throughput is in operations (2 per multiply-accumulate).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use tt_accel::packed::PackedF32;
use tt_quant::int4::{kernels, Acts, Q4_0_GROUP};
use tt_quant::kernels::IntLevel;
use tt_quant::{Activations, Int4Linear, Int8Linear, WeightConfig};
use tt_tensor::projection::{Projection, Workspace};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("int4");
    for &(m, k, n) in &[(1usize, 512usize, 512usize), (1, 768, 2048)] {
        let w = Array2::from_shape_fn((n, k), |(i, j)| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 29) as f32 / 29.0 - 0.5).collect();
        let mut y = vec![0.0f32; m * n];
        let id = format!("{m}x{k}x{n}");
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let f32p = PackedF32::new(&w);
        g.bench_function(BenchmarkId::new("f32_packed_projection", &id), |b| {
            b.iter(|| f32p.forward_rows(&x, m, None, &mut y, &mut []))
        });
        let q8 = Int8Linear::new(&w, WeightConfig::PER_CHANNEL, Activations::Dynamic).expect("finite weights");
        let mut ws = Workspace::default();
        ws.ensure(q8.workspace_len(m));
        g.bench_function(BenchmarkId::new("int8_projection", &id), |b| {
            b.iter(|| q8.forward_rows(&x, m, None, &mut y, ws.bytes()))
        });
        let q4 = Int4Linear::new(&w, Q4_0_GROUP).expect("finite weights");
        ws.ensure(q4.workspace_len(m));
        g.bench_function(BenchmarkId::new("int4_projection", &id), |b| {
            b.iter(|| q4.forward_rows(&x, m, None, &mut y, ws.bytes()))
        });
        // The kernel alone, over rows quantized once, at each level.
        let p = q4.packed();
        let (groups, kb) = (p.groups(), p.blocks() * tt_quant::int4::BLOCK);
        let (mut codes, mut scales, mut sums) = (vec![0i8; m * kb], vec![0.0f32; m * groups], vec![0i32; m * groups]);
        for r in 0..m {
            let (cr, sr) = (&mut codes[r * kb..(r + 1) * kb], r * groups..(r + 1) * groups);
            kernels::quantize_row(&x[r * k..(r + 1) * k], Q4_0_GROUP, cr, &mut scales[sr.clone()], &mut sums[sr]);
        }
        for level in IntLevel::available() {
            let acts = Acts { codes: &codes, scales: &scales, sums: &sums };
            g.bench_function(BenchmarkId::new(format!("int4_kernel_{level}"), &id), |b| {
                b.iter(|| p.matmul(level, acts, m, &mut y).expect("sizes match"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
