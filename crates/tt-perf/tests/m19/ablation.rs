use tt_perf::ablation::{self, Factor, Measurement};

fn factors() -> Vec<Factor> {
    vec![
        Factor::new("kv", &["off", "on"]),
        Factor::new("weights", &["fp32", "int8"]),
        Factor::new("threads", &["1", "2"]),
    ]
}

/// Latency 10 ms × 0.5 with the cache × 0.8 with int8 × (0.6 with two threads, but 0.9 when the
/// cache is on: an interaction); int8 costs 0.01 quality and quarters the bytes.
fn model(c: &[usize]) -> Measurement {
    let mut lat = 10.0;
    if c[0] == 1 {
        lat *= 0.5;
    }
    if c[1] == 1 {
        lat *= 0.8;
    }
    if c[2] == 1 {
        lat *= if c[0] == 1 { 0.9 } else { 0.6 };
    }
    Measurement {
        quality: 0.9 - 0.01 * c[1] as f64,
        p50_ms: lat,
        p90_ms: lat * 1.1,
        p99_ms: lat * 1.2,
        throughput: 1000.0 / lat,
        model_bytes: if c[1] == 1 { 250 } else { 1000 },
        ttft_ms: None,
        tpot_ms: None,
    }
}

#[test]
fn full_factorial_effects_and_interactions() {
    let f = factors();
    let configs = ablation::full_factorial(&f).unwrap();
    assert_eq!(configs.len(), 8);
    assert_eq!(configs[0], vec![0, 0, 0]);
    assert_eq!(configs[7], vec![1, 1, 1]);
    let study = ablation::run(&f, &configs, |c| Ok(model(c))).unwrap();
    let effect = |name: &str| study.main_effects.iter().find(|e| e.factor == name).unwrap().clone();
    let w = effect("weights");
    assert_eq!(w.pairs, 4);
    assert!((w.latency_ratio - 0.8).abs() < 1e-12);
    assert!((w.quality_delta + 0.01).abs() < 1e-12);
    assert!((w.bytes_ratio - 0.25).abs() < 1e-12);
    // threads: geometric mean of 0.6 and 0.9.
    assert!((effect("threads").latency_ratio - (0.6f64 * 0.9).sqrt()).abs() < 1e-12);
    // The largest interaction is kv × threads: (0.9 / 0.6) = 1.5; the others are 1.
    let top = &study.interactions[0];
    assert_eq!(top.factors, ("kv".to_string(), "threads".to_string()));
    assert!((top.latency_interaction - 1.5).abs() < 1e-12);
    assert!(study.interactions[1..].iter().all(|i| (i.latency_interaction - 1.0).abs() < 1e-12));
    let md = ablation::markdown(&study);
    assert!(md.contains("| kv=on weights=int8 threads=2 |"));
}

#[test]
fn partial_design_uses_only_matched_pairs() {
    let f = factors();
    let configs = vec![vec![0, 0, 0], vec![1, 0, 0], vec![1, 1, 0], vec![1, 1, 1]];
    let study = ablation::run(&f, &configs, |c| Ok(model(c))).unwrap();
    let kv = study.main_effects.iter().find(|e| e.factor == "kv").unwrap();
    assert_eq!(kv.pairs, 1);
    assert!((kv.latency_ratio - 0.5).abs() < 1e-12);
    // No 2×2 square exists in this design.
    assert!(study.interactions.is_empty());
    let walk = ablation::walk(
        &study,
        &[
            ("baseline", vec![0, 0, 0]),
            ("+KV cache", vec![1, 0, 0]),
            ("+int8", vec![1, 1, 0]),
            ("+threads", vec![1, 1, 1]),
        ],
    )
    .unwrap();
    assert_eq!(walk.len(), 4);
    assert!((walk[1].speedup_over_previous - 2.0).abs() < 1e-12);
    assert!((walk[3].speedup_over_baseline - 1.0 / (0.5 * 0.8 * 0.9)).abs() < 1e-9);
    assert!((walk[2].quality_delta + 0.01).abs() < 1e-12);
    assert!(ablation::walk(&study, &[("missing", vec![0, 1, 0])]).is_err());
    assert!(ablation::run(&f, &[vec![0, 0]], |c| Ok(model(c))).is_err());
    assert!(ablation::run(&f, &[vec![0, 0, 0], vec![0, 0, 0]], |c| Ok(model(c))).is_err());
    assert!(ablation::run(&f, &[vec![0, 2, 0]], |c| Ok(model(c))).is_err());
}

#[test]
fn pareto_front_on_fixed_points() {
    // (quality ↑, latency ↓, bytes ↓)
    let pts = [
        (0.90, 10.0, 1000.0), // dominated by the next (same quality, faster, same bytes)
        (0.90, 5.0, 1000.0),
        (0.89, 4.0, 250.0),   // faster and smaller, a little worse: on the front
        (0.80, 4.0, 250.0),   // dominated by the previous
        (0.95, 20.0, 4000.0), // best quality: on the front
        (0.89, 4.0, 250.0),   // a tie with point 2: both stay
    ];
    assert_eq!(ablation::pareto_front(&pts), vec![false, true, true, false, true, true]);
}

/// Rounds: every configuration measured in each round, each round in its own seeded order; the
/// median and range are kept, the effect uses the per-token latency, and an effect inside the
/// rounds' spread is counted as noise.
#[test]
fn rounds_are_shuffled_seeded_and_summarised_by_median_and_range() {
    let f = factors();
    let configs = ablation::full_factorial(&f).unwrap();
    let run = |seed| {
        let mut order = Vec::new();
        let mut calls = std::collections::HashMap::new();
        let study = ablation::run_rounds(&f, &configs, 3, Some(seed), |c| {
            order.push(c.to_vec());
            let k = calls.entry(c.to_vec()).or_insert(0usize);
            *k += 1;
            // Per-answer time is 10× the per-token time for the threads=2 variants only (they
            // answer with more tokens): per-answer comparisons would call threads slower.
            let mut m = model(c);
            let wobble = [1.0, 1.1, 0.9][*k - 1];
            m.tpot_ms = Some(m.p50_ms * wobble);
            m.ttft_ms = Some(2.0 * m.p50_ms);
            if c[2] == 1 {
                m.p50_ms *= 10.0;
            }
            Ok(m)
        })
        .unwrap();
        (study, order)
    };
    let (study, order) = run(7);
    assert_eq!(order.len(), 24, "3 rounds of 8");
    let rounds: Vec<&[Vec<usize>]> = order.chunks(8).collect();
    assert!(rounds.iter().all(|r| r.iter().collect::<std::collections::HashSet<_>>().len() == 8), "each round has all");
    assert!(rounds[0] != rounds[1] || rounds[1] != rounds[2], "rounds are shuffled");
    assert_eq!(run(7).1, order, "the same seed gives the same orders");
    assert_ne!(run(8).1, order, "another seed, other orders");
    let base = study.rows.iter().find(|r| r.config == vec![0, 0, 0]).unwrap();
    assert_eq!(base.rounds, 3);
    assert_eq!(base.measured.tpot_ms, Some(10.0), "the median of 10, 11, 9");
    assert_eq!(base.latency_range_ms, (9.0, 11.0));
    // Threads speed up per token (0.6 and 0.9), although per answer they are slower.
    let threads = study.main_effects.iter().find(|e| e.factor == "threads").unwrap();
    assert!((threads.latency_ratio - (0.6f64 * 0.9).sqrt()).abs() < 1e-9, "{threads:?}");
    // kv (× 0.5) separates every pair; threads with the cache on (× 0.9) falls inside the ±10%.
    let kv = study.main_effects.iter().find(|e| e.factor == "kv").unwrap();
    assert_eq!(kv.pairs_within_noise, 0);
    assert_eq!(threads.pairs_within_noise, 2, "the two cache-on pairs");
    let walk = ablation::walk(&study, &[("baseline", vec![0, 0, 0]), ("+threads", vec![0, 0, 1])]).unwrap();
    assert!((walk[1].speedup_over_previous - 1.0 / 0.6).abs() < 1e-9, "per token");
    assert!(walk[1].p50_ms > walk[0].p50_ms, "per answer beside it");
    assert!(ablation::markdown(&study).contains("(3 rounds)"));
    assert_eq!(study.latency_unit, "per output token");
    // One run without a per-token time (answers of one token): the whole study falls back to the
    // per-sample p50, never mixing the two units in a ratio or a range.
    let mut first = true;
    let mixed = ablation::run_rounds(&f, &configs, 3, Some(1), |c| {
        let mut m = model(c);
        m.tpot_ms = if std::mem::take(&mut first) { None } else { Some(m.p50_ms / 10.0) };
        Ok(m)
    })
    .unwrap();
    assert_eq!(mixed.latency_unit, "p50 per sample");
    assert!(mixed.rows.iter().all(|r| r.measured.tpot_ms.is_none() && r.latency_range_ms.0 == r.measured.p50_ms));
    let mut rows = study.rows.clone();
    rows[0].measured.tpot_ms = None;
    assert!(ablation::analyse(&f, rows).unwrap_err().to_string().contains("two units"));
    for bad in [0, ablation::MAX_ROUNDS + 1] {
        assert!(ablation::run_rounds(&f, &configs, bad, None, |c| Ok(model(c))).is_err(), "{bad} rounds");
    }
}
