use tt_perf::early_stopping::{self, CONFIDENCE};
use tt_perf::stats::{self, Summary};

#[test]
fn known_data_statistics() {
    let s = Summary::of(&[2.0, 4.0, 4.0, 5.0, 10.0]).unwrap();
    assert_eq!(s.n, 5);
    assert_eq!(s.mean, 5.0);
    assert_eq!(s.median, 4.0);
    assert_eq!(s.std, 3.0);
    assert_eq!((s.min, s.max), (2.0, 10.0));
    // MLPerf: sorted[⌊n·p⌋]: p90 → index 4, p50 → 2; no interpolation.
    assert_eq!(s.at(0.9), Some(10.0));
    assert_eq!(stats::percentile_sorted(&[2.0, 4.0, 4.0, 5.0, 10.0], 0.5).unwrap(), 4.0);
    // criterion / numpy: linear at p·(n−1): p90 → 3.6 → 5 + 0.6·5 = 8.
    assert!((stats::percentile_interpolated(&[2.0, 4.0, 4.0, 5.0, 10.0], 0.9).unwrap() - 8.0).abs() < 1e-12);
    // 100 values 1..=100: p99 = sorted[99] = 100, p90 = sorted[90] = 91.
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(stats::percentile_sorted(&v, 0.99).unwrap(), 100.0);
    assert_eq!(stats::percentile_sorted(&v, 0.90).unwrap(), 91.0);
    assert_eq!(stats::percentile_sorted(&v, 1.0).unwrap(), 100.0);
}

#[test]
fn statistics_refuse_bad_input() {
    assert!(Summary::of(&[]).is_err());
    assert!(Summary::of(&[1.0, f64::NAN]).is_err());
    assert!(stats::percentile_sorted(&[1.0], 1.5).is_err());
    assert!(stats::bootstrap_ci(&[1.0], stats::median_of, 0, 0.95, 1).is_err());
    assert!(stats::bootstrap_ci(&[1.0], stats::median_of, 10, 1.0, 1).is_err());
}

#[test]
fn bootstrap_and_outliers() {
    let xs: Vec<f64> = (0..200).map(|i| 10.0 + (i % 7) as f64).collect();
    let (lo, hi) = stats::bootstrap_ci(&xs, stats::median_of, 2000, 0.95, 7).unwrap();
    let med = stats::median_of(&xs);
    assert!(lo <= med && med <= hi, "{lo} {med} {hi}");
    // Seeded: the same interval again.
    assert_eq!(stats::bootstrap_ci(&xs, stats::median_of, 2000, 0.95, 7).unwrap(), (lo, hi));
    let mut ys = vec![10.0; 20];
    ys.extend([10.5, 9.5, 11.0, 9.0]); // IQR stays 0 → every other value is beyond a fence
    ys.push(100.0);
    let o = stats::tukey_outliers(&ys).unwrap();
    assert_eq!(o.severe, 5);
    let zs: Vec<f64> = (1..=8).map(f64::from).chain([14.0, 30.0]).collect();
    // q1 = 3.25, q3 = 7.75, IQR 4.5: mild beyond 14.5 up to 21.25, severe beyond 21.25.
    let o = stats::tukey_outliers(&zs).unwrap();
    assert_eq!((o.mild, o.severe), (0, 1));
}

#[test]
fn early_stopping_bounds_match_loadgen() {
    // The minimum query counts LoadGen prints: 64 for p90, 662 for p99.
    assert_eq!(early_stopping::min_queries(0.90, CONFIDENCE).unwrap(), 64);
    assert_eq!(early_stopping::min_queries(0.99, CONFIDENCE).unwrap(), 662);
    // t = 0: I_p(h, 1) = pʰ, so h = ⌈ln 0.01 / ln p⌉ (the strict comparison never ties here).
    assert_eq!(early_stopping::min_passing(0, 0.99, CONFIDENCE).unwrap(), 459);
    assert_eq!(early_stopping::min_passing(0, 0.90, CONFIDENCE).unwrap(), 44);
    // t = 1: I_p(h, 2) = pʰ(1 + h(1 − p)) in closed form; statrs agrees.
    for h in [10u64, 63, 64, 500] {
        let closed = 0.9f64.powi(h as i32) * (1.0 + h as f64 * 0.1);
        assert!((early_stopping::odds(h, 1, 0.9) - closed).abs() < 1e-12 * closed.max(1e-300) + 1e-15);
    }
    // The bound grows with the number of over-latency queries.
    let needs: Vec<u64> = (0..5).map(|t| early_stopping::min_passing(t, 0.99, CONFIDENCE).unwrap()).collect();
    assert!(needs.windows(2).all(|w| w[1] > w[0]), "{needs:?}");
    assert!(early_stopping::min_passing(0, 1.0, CONFIDENCE).is_err());
}

#[test]
fn server_early_stopping_known_cases() {
    let h0 = early_stopping::min_passing(0, 0.99, CONFIDENCE).unwrap();
    assert!(early_stopping::server(h0, 0, 0.99, CONFIDENCE).unwrap().met);
    assert!(!early_stopping::server(h0 - 1, 0, 0.99, CONFIDENCE).unwrap().met);
    let h5 = early_stopping::min_passing(5, 0.99, CONFIDENCE).unwrap();
    let r = early_stopping::server(h5 + 4, 5, 0.99, CONFIDENCE).unwrap();
    assert!(!r.met);
    assert_eq!(r.queries_needed, h5 + 5);
    assert!(r.lines.iter().any(|l| l.contains("1 more queries")), "{:?}", r.lines);
}
