//! Module 15 — profiling: exact parameter and FLOP counts, the op profiler and its trace, the
//! counting allocator, latency statistics and the roofline model.

use std::sync::Mutex;

use tt_profile::alloc::{measure_peak, snapshot, CountingAllocator};
use tt_profile::flops;
use tt_profile::params::count_parameters;
use tt_profile::profiler::{profile, SortBy};
use tt_profile::roofline::Roofline;
use tt_profile::stats::{
    bootstrap_median_ci, percentile_interpolated, percentile_mlperf, tukey_outliers, LatencyStats,
};
use tt_tensor::nn::{Conv2d, Flatten, Linear, MaxPool2d, Relu, Sequential};
use tt_tensor::{no_grad, Module, Tensor};
use tt_transformer::{Gpt, GptConfig};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// The allocator's counters are process-wide: tests in this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn linear_parameters_and_flops_are_exact() {
    let _g = lock();
    assert_eq!(count_parameters(&Linear::new(10, 5, true, 0)).total, 55);
    let lin = Linear::new(128, 64, true, 0);
    for batch in [1usize, 32] {
        let x = Tensor::zeros(&[batch, 128]);
        let (_, p) = profile(|| no_grad(|| lin.forward(&x)).unwrap());
        // 2 FLOPs per MAC, bias adds not counted: 2·128·64 = 16,384 per sample.
        assert_eq!(p.forward_flops(), 16_384 * batch as u64);
        assert_eq!(flops::linear(batch, 128, 64).unwrap(), 16_384 * batch as u64);
    }
    let r = count_parameters(
        &Sequential::new().layer(Linear::new(4, 3, true, 0)).layer(Relu).layer(Linear::new(3, 2, false, 1)),
    );
    assert_eq!((r.total, r.trainable), (15 + 6, 21));
    assert_eq!(r.layers.iter().map(|l| (l.layer.as_str(), l.params)).collect::<Vec<_>>(), vec![("0", 15), ("2", 6)]);
    assert_eq!(r.bytes_by_dtype, vec![("f32".to_string(), 84)]);
}

#[test]
fn conv2d_flops_with_stride_and_padding() {
    let _g = lock();
    // B=2, C_in=3, C_out=4, 7×7, k=3, stride 2, padding 1 → 4×4 output:
    // 2·2·4·4·4·3·3·3 = 6,912 FLOPs.
    assert_eq!(flops::conv2d(2, 3, 4, 7, 7, 3, 2, 1).unwrap(), 6_912);
    let conv = Conv2d::new(3, 4, 3, 2, 1, 0);
    let x = Tensor::zeros(&[2, 3, 7, 7]);
    let (y, p) = profile(|| no_grad(|| conv.forward(&x)).unwrap());
    assert_eq!(y.shape(), vec![2, 4, 4, 4]);
    assert_eq!(p.forward_flops(), 6_912);
}

#[test]
fn attention_flops_at_two_lengths() {
    let _g = lock();
    for (t, want) in [(5usize, 4 * 2 * 2 * 25 * 8 + 5 * 2 * 2 * 25), (16, 4 * 2 * 2 * 256 * 8 + 5 * 2 * 2 * 256)] {
        // B=2, 2 heads of 8 dims: QKᵀ and A·V each 2·B·h·T²·d_h, softmax 5·B·h·T².
        let qkv = Tensor::zeros(&[2, t, 48]);
        let (_, p) = profile(|| no_grad(|| tt_transformer::attention::causal_attention(&qkv, 2)).unwrap());
        assert_eq!(p.forward_flops(), want as u64, "T = {t}");
    }
}

#[test]
fn whole_cnn_matches_its_formula() {
    let _g = lock();
    let cnn = Sequential::new()
        .layer(Conv2d::new(1, 8, 3, 1, 1, 0))
        .layer(Relu)
        .layer(MaxPool2d { kernel: 2, stride: 2 })
        .layer(Flatten)
        .layer(Linear::new(8 * 4 * 4, 10, true, 1));
    let x = Tensor::zeros(&[3, 1, 8, 8]);
    let (_, p) = profile(|| no_grad(|| cnn.forward(&x)).unwrap());
    let conv = flops::conv2d(3, 1, 8, 8, 8, 3, 1, 1).unwrap();
    let relu = (3 * 8 * 8 * 8) as u64; // 1 op per element
    let pool = (3 * 8 * 4 * 4 * 4) as u64; // k² comparisons per output
    let fc = flops::linear(3, 128, 10).unwrap();
    assert_eq!(p.forward_flops(), conv + relu + pool + fc);
    let layers: Vec<String> = p.per_layer().into_iter().map(|l| l.0).collect();
    assert_eq!(layers, vec!["0", "1", "2", "3", "4"], "ops attributed to Sequential's children");
}

#[test]
fn whole_gpt_matches_its_formula_and_kaplan() {
    let _g = lock();
    let cfg = GptConfig { vocab_size: 30, d_model: 32, n_layers: 2, max_seq_len: 64, ..GptConfig::default_model(30) };
    let m = Gpt::new(cfg.clone()).unwrap();
    let (b, t) = (2, 24);
    let ids: Vec<usize> = (0..b * t).map(|i| i % 30).collect();
    let (_, p) = profile(|| no_grad(|| m.forward_ids(&ids, b, t)).unwrap());
    // The profiler's counts (full-square attention, as computed) equal the analytic table.
    assert_eq!(p.forward_flops(), flops::total(&flops::gpt_forward(&cfg, b, t, false).unwrap()).unwrap());
    // Per-block MLP widths (what structured pruning leaves) are counted block by block, and the
    // profiler's measured counts agree with them too.
    let narrow = GptConfig { mlp_hidden: Some(vec![40, 96]), ..cfg.clone() };
    let mn = Gpt::new(narrow.clone()).unwrap();
    let (_, pn) = profile(|| no_grad(|| mn.forward_ids(&ids, b, t)).unwrap());
    assert_eq!(pn.forward_flops(), flops::total(&flops::gpt_forward(&narrow, b, t, false).unwrap()).unwrap());
    let mlp = |c: &GptConfig| {
        flops::gpt_forward(c, b, t, false).unwrap().into_iter().find(|r| r.part.starts_with("mlp")).unwrap().flops
    };
    assert_eq!(mlp(&narrow), (2 * 2 * (b * t) * 32 * (40 + 96)) as u64);
    // Per-block head counts (what head pruning leaves): 3 and 1 of 4 heads of width 8. The
    // projections, attention and softmax are counted block by block and match the profiler.
    let fewer = GptConfig { heads_per_block: Some(vec![3, 1]), ..narrow.clone() };
    let mf = Gpt::new(fewer.clone()).unwrap();
    let (_, pf) = profile(|| no_grad(|| mf.forward_ids(&ids, b, t)).unwrap());
    assert_eq!(pf.forward_flops(), flops::total(&flops::gpt_forward(&fewer, b, t, false).unwrap()).unwrap());
    let part = |c: &GptConfig, name: &str| {
        flops::gpt_forward(c, b, t, false).unwrap().into_iter().find(|r| r.part.starts_with(name)).unwrap().flops
    };
    let rows = (b * t) as u64;
    assert_eq!(part(&fewer, "attention projections"), 2 * rows * 32 * (3 * 24 + 24 + 3 * 8 + 8));
    assert_eq!(part(&fewer, "attention QK"), (2 * 2 * b * (3 + 1) * t * t * 8) as u64);
    assert_eq!(part(&fewer, "attention softmax"), (5 * b * (3 + 1) * t * t) as u64);
    let mut layers: Vec<String> = p.per_layer().into_iter().map(|l| l.0).collect();
    layers.dedup();
    assert_eq!(layers, vec!["embed", "blocks.0", "blocks.1", "head"]);
    // Default model at n_ctx = 128: causal-useful FLOPs per token within 5% of Kaplan's
    // 2N + 2·n_layer·n_ctx·d_model; the remainder is the head, norms, GELU, softmax and adds.
    let big = GptConfig::default_model(49);
    let n_ctx = 128;
    let ours = flops::total(&flops::gpt_forward(&big, 1, n_ctx, true).unwrap()).unwrap() as f64 / n_ctx as f64;
    let kaplan = flops::kaplan_forward_per_token(&big, n_ctx).unwrap() as f64;
    assert!((ours / kaplan - 1.0).abs() < 0.05, "ours {ours} vs Kaplan {kaplan}");
}

#[test]
fn profiler_table_and_chrome_trace() {
    let _g = lock();
    let m = Sequential::new().layer(Linear::new(8, 8, true, 0)).layer(Relu).layer(Linear::new(8, 2, true, 1));
    let x = Tensor::randn(&[4, 8], 0.0, 1.0, 2);
    let (_, p) = profile(|| {
        let y = m.forward(&x).unwrap();
        y.sum().backward().unwrap();
    });
    let fwd = p.records.iter().filter(|r| !r.backward).count();
    let bwd = p.records.iter().filter(|r| r.backward).count();
    assert_eq!((fwd, bwd), (4, 4), "linear, relu, linear, sum — forward and backward");
    let rows = p.summary(SortBy::Calls);
    assert_eq!(rows[0].op, "linear");
    assert_eq!(rows[0].calls, 2);
    assert!((rows.iter().map(|r| r.percent).sum::<f64>() - 100.0).abs() < 1e-6);
    assert!(p.table(SortBy::Time).contains("linear (backward)"));
    let dir = std::env::temp_dir().join(format!("tt-m15-{}", std::process::id()));
    let path = dir.join("trace.json");
    p.write_chrome_trace(&path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    assert_eq!(events.len(), p.records.len(), "one event per recorded op");
    assert!(events.iter().all(|e| e["ph"] == "X" && e["dur"].as_f64().unwrap() >= 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn allocator_counts_a_known_allocation_exactly() {
    let _g = lock();
    let before = tt_profile::alloc::thread_snapshot();
    let (v, peak) = measure_peak(|| vec![7u8; 1 << 20]);
    assert_eq!(peak, 1 << 20);
    let during = tt_profile::alloc::thread_snapshot();
    assert_eq!(during.0 - before.0, 1 << 20);
    assert_eq!(during.2 - before.2, 1, "one allocation");
    drop(v);
    assert_eq!(tt_profile::alloc::thread_snapshot().0, before.0);
    // Process-wide counters saw it too (other threads may add their own allocations).
    assert!(snapshot().allocations >= during.2);
    assert!(tt_profile::alloc::is_installed());
}

#[test]
fn switched_off_the_allocator_counts_only_inside_measure_peak() {
    let _g = lock();
    tt_profile::alloc::set_counting(false);
    let before = tt_profile::alloc::thread_snapshot();
    let uncounted = vec![1u8; 1 << 16];
    assert_eq!(tt_profile::alloc::thread_snapshot(), before, "nothing counted while off");
    let (v, peak) = measure_peak(|| vec![7u8; 1 << 20]);
    assert_eq!(peak, 1 << 20, "the window counts");
    drop((v, uncounted));
    tt_profile::alloc::set_counting(true);
    let (_, peak) = measure_peak(|| vec![7u8; 1 << 10]);
    assert_eq!(peak, 1 << 10);
}

#[test]
fn percentiles_bootstrap_and_outliers_on_known_data() {
    let _g = lock();
    let data: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(percentile_interpolated(&data, 0.5).unwrap(), 5.5);
    assert!((percentile_interpolated(&data, 0.9).unwrap() - 9.1).abs() < 1e-12);
    assert_eq!(percentile_interpolated(&data, 0.0).unwrap(), 1.0);
    assert_eq!(percentile_interpolated(&data, 1.0).unwrap(), 10.0);
    assert_eq!(percentile_mlperf(&data, 0.5).unwrap(), 6.0, "sorted[⌊10·0.5⌋]");
    assert_eq!(percentile_mlperf(&data, 0.9).unwrap(), 10.0);
    assert_eq!(percentile_mlperf(&data, 0.99).unwrap(), 10.0);
    let mut with_out = data.clone();
    with_out[9] = 100.0;
    assert_eq!(tukey_outliers(&with_out).unwrap(), (0, 1));
    let mut mild = data.clone();
    mild[9] = 18.0; // Q3 = 7.75, IQR = 4.5: 14.5 < 18 ≤ 21.25
    assert_eq!(tukey_outliers(&mild).unwrap(), (1, 0));
    assert_eq!(bootstrap_median_ci(&[3.0; 20], 1000, 0.95, 1).unwrap(), (3.0, 3.0));
    let (lo, hi) = bootstrap_median_ci(&data, 5000, 0.95, 7).unwrap();
    assert!(lo <= 5.5 && 5.5 <= hi && lo >= 1.0 && hi <= 10.0, "({lo}, {hi})");
    assert_eq!(bootstrap_median_ci(&data, 5000, 0.95, 7).unwrap(), (lo, hi), "seeded");
    let s = LatencyStats::from_samples(&with_out).unwrap();
    assert_eq!((s.n, s.min, s.max, s.median), (10, 1.0, 100.0, 5.5));
    assert_eq!(s.outliers_severe, 1);
    assert!((s.mean - 14.5).abs() < 1e-12);
}

#[test]
fn roofline_placement() {
    let _g = lock();
    let r = Roofline { peak_gflops: 100.0, bandwidth_gbs: 20.0 };
    assert_eq!(r.ridge(), 5.0);
    assert_eq!(r.attainable(1.0), 20.0);
    assert_eq!(r.attainable(50.0), 100.0);
    let p = r.place(1_000_000, 1_000_000, 1e-4).unwrap(); // I = 1, 10 GFLOP/s achieved
    assert_eq!(p.bound, "memory-bound");
    assert!((p.fraction - 0.5).abs() < 1e-9);
    assert_eq!(r.place(100_000_000, 1_000_000, 1.0).unwrap().bound, "compute-bound");
    // The micro-benchmarks run and return physical numbers.
    let peak = tt_profile::roofline::peak_gflops(1, 20_000).unwrap();
    let bw = tt_profile::roofline::stream_triad_gbs(1 << 20, 3).unwrap();
    assert!(peak > 0.1 && peak < 10_000.0, "{peak}");
    assert!(bw > 0.1 && bw < 10_000.0, "{bw}");
}

/// Empty, NaN, unsorted or out-of-range inputs to the statistics, FLOP counters and roofline:
/// named errors, never a panic, a wrapped count or a silently clamped value.
mod bad_input {
    use tt_profile::flops;
    use tt_profile::roofline::{peak_gflops, stream_triad_gbs, Roofline};
    use tt_profile::stats::{
        bootstrap_median_ci, measure_latency, percentile_interpolated, percentile_mlperf, tukey_outliers, LatencyStats,
    };
    use tt_tensor::TensorError;
    use tt_transformer::GptConfig;

    fn says(e: &TensorError, op: &str, what: &str) -> bool {
        matches!(e, TensorError::InvalidArgument { op: o, .. } if *o == op) && e.to_string().contains(what)
    }

    #[test]
    fn statistics_of_no_samples() {
        assert!(says(&bootstrap_median_ci(&[], 100, 0.95, 0).unwrap_err(), "bootstrap_median_ci", "no samples"));
        assert!(says(&percentile_interpolated(&[], 0.5).unwrap_err(), "percentile_interpolated", "no samples"));
        assert!(says(&percentile_mlperf(&[], 0.5).unwrap_err(), "percentile_mlperf", "no samples"));
        assert!(says(&tukey_outliers(&[]).unwrap_err(), "tukey_outliers", "no samples"));
        assert!(says(&LatencyStats::from_samples(&[]).unwrap_err(), "LatencyStats::from_samples", "no samples"));
    }

    #[test]
    fn percentiles_reject_bad_p_nan_and_unsorted_samples() {
        let data = [1.0, 2.0, 3.0];
        for p in [f64::NAN, -0.1, 1.5] {
            assert!(says(&percentile_interpolated(&data, p).unwrap_err(), "percentile_interpolated", "p "));
            assert!(says(&percentile_mlperf(&data, p).unwrap_err(), "percentile_mlperf", "p "));
        }
        let e = percentile_interpolated(&[3.0, 1.0, 2.0], 0.5).unwrap_err();
        assert!(says(&e, "percentile_interpolated", "not sorted"), "{e}");
        let e = tukey_outliers(&[1.0, f64::NAN]).unwrap_err();
        assert!(says(&e, "tukey_outliers", "sorted[1] is NaN"), "{e}");
    }

    #[test]
    fn bootstrap_and_latency_reject_bad_arguments() {
        let data = [1.0, 2.0, 3.0];
        assert!(says(&bootstrap_median_ci(&data, 0, 0.95, 0).unwrap_err(), "bootstrap_median_ci", "resamples 0"));
        for c in [0.0, 1.0, f64::NAN, 95.0] {
            assert!(says(&bootstrap_median_ci(&data, 10, c, 0).unwrap_err(), "bootstrap_median_ci", "confidence"));
        }
        let e = bootstrap_median_ci(&[1.0, f64::INFINITY], 10, 0.95, 0).unwrap_err();
        assert!(says(&e, "bootstrap_median_ci", "samples[1] = inf"), "{e}");
        let e = LatencyStats::from_samples(&[1.0, f64::NAN]).unwrap_err();
        assert!(says(&e, "LatencyStats::from_samples", "samples[1] = NaN"), "{e}");
        let mut calls = 0;
        let e = measure_latency(3, 0, || calls += 1).unwrap_err();
        assert!(says(&e, "measure_latency", "iterations 0"), "{e}");
        assert_eq!(calls, 0, "checked before running anything");
        assert_eq!(measure_latency(0, 2, || {}).unwrap().n, 2);
    }

    #[test]
    fn flop_counts_reject_degenerate_geometry_and_overflow() {
        assert!(says(&flops::conv2d(1, 1, 1, 4, 4, 0, 1, 0).unwrap_err(), "flops::conv2d", "kernel 0"));
        assert!(says(&flops::conv2d(1, 1, 1, 4, 4, 3, 0, 0).unwrap_err(), "flops::conv2d", "stride 0"));
        // k > h + 2p used to underflow.
        assert!(says(&flops::conv2d(1, 1, 1, 2, 2, 5, 1, 1).unwrap_err(), "flops::conv2d", "does not fit"));
        assert!(says(&flops::conv2d(1, 1, 1, 2, 2, 3, 1, usize::MAX).unwrap_err(), "flops::conv2d", "does not fit"));
        assert!(says(&flops::linear(1 << 32, 1 << 32, 2).unwrap_err(), "flops::linear", "overflows"));
        let bad_heads = GptConfig { n_heads: 0, ..GptConfig::default_model(10) };
        let e = flops::gpt_forward(&bad_heads, 1, 8, false).unwrap_err();
        assert!(says(&e, "flops::gpt_forward", "n_heads = 0"), "{e}");
        assert!(says(
            &flops::kaplan_forward_per_token(&bad_heads, 8).unwrap_err(),
            "flops::kaplan_forward_per_token",
            ""
        ));
        let cfg = GptConfig::default_model(10);
        let e = flops::gpt_forward(&cfg, usize::MAX, usize::MAX, true).unwrap_err();
        assert!(says(&e, "flops::gpt_forward", "overflows"), "{e}");
        assert!(says(
            &flops::kaplan_forward_per_token(&cfg, usize::MAX).unwrap_err(),
            "flops::kaplan_forward_per_token",
            "overflows"
        ));
        let rows = vec![flops::FlopRow { part: "a".into(), flops: u64::MAX, macs: 0 }; 2];
        assert!(says(&flops::total(&rows).unwrap_err(), "flops::total", "overflows"));
        // Odd and even causal lengths agree with T(T+1)/2.
        for t in [7usize, 8] {
            let useful = flops::gpt_forward(&cfg, 1, t, true).unwrap();
            let full = flops::gpt_forward(&cfg, 1, t, false).unwrap();
            assert_eq!(useful[2].flops * (t * t) as u64, full[2].flops * (t * (t + 1) / 2) as u64);
        }
    }

    #[test]
    fn roofline_rejects_nothing_to_measure_and_bad_times() {
        assert!(says(&peak_gflops(0, 10).unwrap_err(), "peak_gflops", "threads 0"));
        assert!(says(&peak_gflops(1, 0).unwrap_err(), "peak_gflops", "iters 0"));
        assert!(says(&peak_gflops(1, usize::MAX).unwrap_err(), "peak_gflops", "overflows"));
        assert!(says(&stream_triad_gbs(0, 3).unwrap_err(), "stream_triad_gbs", "n 0"));
        assert!(says(&stream_triad_gbs(16, 0).unwrap_err(), "stream_triad_gbs", "runs 0"));
        assert!(says(&stream_triad_gbs(usize::MAX / 4, 1).unwrap_err(), "stream_triad_gbs", "overflows"));
        let r = Roofline { peak_gflops: 100.0, bandwidth_gbs: 20.0 };
        for s in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(says(&r.place(1, 1, s).unwrap_err(), "Roofline::place", "seconds"));
        }
        let flat = Roofline { peak_gflops: 100.0, bandwidth_gbs: 0.0 };
        assert!(says(&flat.place(1, 1, 1.0).unwrap_err(), "Roofline::place", "bandwidth_gbs 0"));
    }
}

mod memory_levels {
    use tt_profile::roofline::{read_bandwidth_gbs, MemoryLevels};

    #[test]
    fn read_bandwidth_is_measured_and_levels_are_placed_by_working_set() {
        assert!(read_bandwidth_gbs(64 << 10, 1).unwrap() > 0.0);
        assert!(read_bandwidth_gbs(16, 1).is_err() && read_bandwidth_gbs(1 << 20, 0).is_err());
        let m = MemoryLevels {
            l1_read_gbs: 300.0,
            l2_read_gbs: 100.0,
            l3_read_gbs: 25.0,
            dram_read_gbs: 14.0,
            caches: tt_profile::roofline::CacheSizes::FALLBACK,
        };
        assert_eq!(m.for_working_set(16 << 10).0, "L1");
        assert_eq!(m.for_working_set(400 << 10).0, "L2");
        assert_eq!(m.for_working_set(800 << 10).0, "L3");
        assert_eq!(m.for_working_set(3 << 20).0, "L3");
        assert_eq!(m.for_working_set(1 << 30).0, "DRAM");
        // 3.15 MB of weights + 0.1 MB of cache per token from L3 at 25 GB/s: ~7,700 tok/s.
        let (level, tok_s) = m.decode_bound_tok_s(3_250_000);
        assert_eq!(level, "L3");
        assert!((tok_s - 25e9 / 3.25e6).abs() < 1e-6);
        // A 2 MiB L2 (the Intel VM) holds 1 MiB working sets; the fallback's 1 MiB L2 does not.
        let big = MemoryLevels { caches: tt_profile::roofline::CacheSizes { l2: 2 << 20, ..m.caches }, ..m };
        assert_eq!((big.for_working_set(900 << 10).0, m.for_working_set(900 << 10).0), ("L2", "L3"));
    }

    #[test]
    fn cache_sizes_are_read_from_sysfs_and_parsed() {
        use tt_profile::roofline::{parse_cache_size, CacheSizes};
        assert_eq!(
            ["48K", "2048K", "300M", "1G", "512", " 32K\n"].map(parse_cache_size),
            [Some(48 << 10), Some(2 << 20), Some(300 << 20), Some(1 << 30), Some(512), Some(32 << 10)]
        );
        assert_eq!(
            [parse_cache_size(""), parse_cache_size("K"), parse_cache_size("0K"), parse_cache_size("x")],
            [None; 4]
        );
        // A fake sysfs tree: L1d, L1i, L2, L3.
        let dir = std::env::temp_dir().join(format!("tt-profile-cache-{}", std::process::id()));
        for (i, (level, kind, size)) in
            [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "2048K"), ("3", "Unified", "300M")]
                .iter()
                .enumerate()
        {
            let d = dir.join(format!("index{i}"));
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in [("level", level), ("type", kind), ("size", size)] {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        }
        let c = CacheSizes::read_sysfs(&dir).unwrap();
        assert_eq!((c.l1d, c.l2, c.l3, c.detected), (48 << 10, 2 << 20, 300 << 20, true));
        std::fs::remove_dir_all(dir.join("index3")).unwrap();
        assert!(CacheSizes::read_sysfs(&dir).is_none(), "no L3: fall back");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(CacheSizes::read_sysfs(std::path::Path::new("/nonexistent")).is_none());
        let here = CacheSizes::detect();
        assert!(here.l1d > 0 && here.l2 > here.l1d && here.l3 >= here.l2, "{here:?}");
    }
}
