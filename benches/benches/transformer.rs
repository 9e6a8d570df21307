//! The default GPT (d_model 128, 4 layers, 4 heads, vocab 48): forward latency on 1, 32 and 128
//! tokens (inference, no_grad, full recompute) and one training step on 16×64 tokens (forward +
//! backward + AdamW), whose time gives training tokens/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tt_tensor::loss::cross_entropy;
use tt_tensor::optim::{Adam, Optimizer};
use tt_tensor::{no_grad, Module};
use tt_transformer::{Gpt, GptConfig};

fn model() -> Gpt {
    Gpt::new(GptConfig::default_model(48)).expect("valid config")
}

fn bench(c: &mut Criterion) {
    let m = model();
    let mut g = c.benchmark_group("gpt_forward");
    for &t in &[1usize, 32, 128] {
        let ids: Vec<usize> = (0..t).map(|i| i % 48).collect();
        g.throughput(Throughput::Elements(t as u64));
        g.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, &t| {
            b.iter(|| no_grad(|| m.forward_ids(&ids, 1, t).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("gpt_train_step");
    g.sample_size(20);
    let (batch, seq) = (16, 64);
    let x: Vec<usize> = (0..batch * seq).map(|i| (i * 7) % 48).collect();
    let y: Vec<usize> = (0..batch * seq).map(|i| (i * 7 + 1) % 48).collect();
    let mut opt = Adam::adamw(m.parameters(), 1e-4, 0.0).unwrap();
    g.throughput(Throughput::Elements((batch * seq) as u64));
    g.bench_function("16x64_tokens", |b| {
        b.iter(|| {
            opt.zero_grad();
            cross_entropy(&m.forward_ids(&x, batch, seq).unwrap(), &y).unwrap().backward().unwrap();
            opt.step().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
