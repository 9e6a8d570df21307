//! The GEMM ladder: every rung at every available dispatch level against `naive`.
//!
//! Tolerance. Two rungs sum the same k products in different orders (blocked KC chunks,
//! register lanes, FMA with one rounding instead of two), so they differ by rounding only. For
//! any summation order, a computed dot product satisfies |ĉ − c| ≤ γ_k · Σ_p |a_ip|·|b_pj| with
//! γ_k = k·u / (1 − k·u), u = 2⁻²⁴ (Higham, *Accuracy and Stability*, §3.1). Two such results
//! are therefore within `2·γ_k·(|A|·|B|)_ij` of each other — an element-wise bound computed in
//! f64 from |A| and |B| that grows with k, and is far below what a wrong index or a dropped
//! product would cause (one product of uniform[-1, 1) values is ~0.25, the bound at k = 512 is
//! ~8e-3 and at k = 33 ~3e-5). `naive` itself is also checked against the f64 product with
//! γ_k·(|A|·|B|)_ij.

use crate::common::{random, ODD_SIZES};
use tt_accel::caches::CacheSizes;
use tt_accel::dispatch::{available, with_level, Level};
use tt_accel::gemm::{self, block_sizes, gemm, Blocking, Rung, BLOCK_NC, MAX_THREADS};

const U: f64 = 1.0 / (1u64 << 24) as f64;

fn gamma(k: usize) -> f64 {
    let ku = k as f64 * U;
    ku / (1.0 - ku)
}

/// A dense m×k · k×n problem with f64 reference data.
struct Problem {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    /// (|A|·|B|)_ij in f64: the scale of each element's rounding error.
    abs: Vec<f64>,
    /// A·B in f64.
    exact: Vec<f64>,
}

impl Problem {
    fn new(m: usize, k: usize, n: usize, seed: u64) -> Problem {
        let a = random(m * k, seed);
        let b = random(k * n, seed ^ 0x9e37_79b9);
        let (mut abs, mut exact) = (vec![0.0f64; m * n], vec![0.0f64; m * n]);
        for i in 0..m {
            for p in 0..k {
                let x = a[i * k + p] as f64;
                for j in 0..n {
                    let y = b[p * n + j] as f64;
                    exact[i * n + j] += x * y;
                    abs[i * n + j] += (x * y).abs();
                }
            }
        }
        Problem { m, k, n, a, b, abs, exact }
    }

    /// Runs one rung densely (strides = row lengths) into a C pre-filled with NaN, so a rung
    /// that reads C before writing it fails.
    fn run(&self, rung: Rung, level: Level, threads: usize) -> Vec<f32> {
        let mut c = vec![f32::NAN; self.m * self.n];
        let used = gemm(rung, level, threads, &self.a, self.k, &self.b, self.n, &mut c, self.n, self.m, self.k, self.n)
            .unwrap_or_else(|e| panic!("{rung} at {level}: {e}"));
        assert!(used <= level, "{rung}: asked for {level}, used {used}");
        c
    }

    fn naive(&self) -> Vec<f32> {
        let c = self.run(Rung::Naive, Level::Scalar, 1);
        self.assert_close_to_exact(&c);
        c
    }

    fn assert_close_to_exact(&self, c: &[f32]) {
        let g = gamma(self.k);
        for (idx, (&x, &e)) in c.iter().zip(&self.exact).enumerate() {
            let tol = g * self.abs[idx] + 1e-30;
            assert!(((x as f64) - e).abs() <= tol, "naive {}×{}×{} at {idx}: {x} vs exact {e}", self.m, self.k, self.n);
        }
    }

    /// `got` agrees with `reference` element-wise within 2·γ_k·(|A|·|B|)_ij.
    fn assert_agrees(&self, what: &str, got: &[f32], reference: &[f32]) {
        let g2 = 2.0 * gamma(self.k);
        for (idx, (&x, &r)) in got.iter().zip(reference).enumerate() {
            let tol = g2 * self.abs[idx] + 1e-30;
            let d = ((x as f64) - (r as f64)).abs();
            assert!(
                d <= tol,
                "{what} {}×{}×{}: element ({}, {}) = {x}, naive {r}, |Δ| = {d:e} > {tol:e}",
                self.m,
                self.k,
                self.n,
                idx / self.n,
                idx % self.n
            );
        }
    }

    /// Every rung at every available level against naive.
    fn check_all_rungs(&self) {
        let reference = self.naive();
        for level in available() {
            with_level(level, |level| {
                for rung in Rung::ALL {
                    let got = self.run(rung, level, 2);
                    self.assert_agrees(&format!("{rung} at {level}"), &got, &reference);
                }
            });
        }
    }
}

/// Small sizes: odd, prime-ish, around the AVX-512 and AVX2 tile shapes.
const SMALL: [usize; 9] = [1, 5, 7, 11, 13, 17, 31, 33, 129];

#[test]
fn every_rung_matches_naive_on_all_small_shapes() {
    let mut seed = 1;
    for &m in &SMALL {
        for &k in &SMALL {
            for &n in &SMALL {
                seed += 1;
                Problem::new(m, k, n, seed).check_all_rungs();
            }
        }
    }
}

#[test]
fn every_rung_matches_naive_on_the_shared_odd_sizes() {
    for (s, &size) in ODD_SIZES.iter().enumerate() {
        Problem::new(size, size, size, 100 + s as u64).check_all_rungs();
    }
}

#[test]
fn every_rung_matches_naive_around_each_levels_tile_edges() {
    // For each level's blocking: MR ± 1, NR ± 1, KC + 1 (two k blocks), MC + 1 (two row blocks).
    for (s, level) in Level::ALL.into_iter().enumerate() {
        let bl = Blocking::for_level(level);
        assert!(bl.mc.is_multiple_of(bl.mr) && bl.nc.is_multiple_of(bl.nr) && bl.kc > 0, "{bl:?}");
        let seed = 200 + 10 * s as u64;
        Problem::new(bl.mr - 1, bl.kc + 1, bl.nr + 1, seed).check_all_rungs();
        Problem::new(bl.mr + 1, 2 * bl.kc + 1, bl.nr - 1, seed + 1).check_all_rungs();
        Problem::new(2 * bl.mr + 1, bl.kc - 1, 2 * bl.nr + 3, seed + 2).check_all_rungs();
        Problem::new(bl.mc + 1, 3, bl.nr + 1, seed + 3).check_all_rungs();
    }
    // The blocked rung's own tiles, as this machine's caches set them.
    let (kc, mc) = block_sizes(CacheSizes::detect());
    Problem::new(mc + 1, kc + 1, BLOCK_NC + 1, 250).check_all_rungs();
    Problem::new(2 * mc - 1, 2 * kc - 1, 2 * BLOCK_NC - 1, 251).check_all_rungs();
}

#[test]
fn packed_rungs_cross_an_nc_panel() {
    // n > NC forces a second KC×NC panel of B at every level.
    let nc = Level::ALL.iter().map(|&l| Blocking::for_level(l).nc).max().unwrap();
    let p = Problem::new(13, 3, nc + 33, 260);
    let reference = p.naive();
    for level in available() {
        with_level(level, |level| {
            for rung in [Rung::PackedSimd, Rung::Threaded] {
                p.assert_agrees(&format!("{rung} at {level}"), &p.run(rung, level, 2), &reference);
            }
        });
    }
}

#[test]
fn packed_rungs_cross_every_block_boundary_at_once() {
    // Two MC blocks, two KC blocks and two NC panels, all with ragged edges, at each level's own
    // blocking: Ã panels packed during the first NC panel are reused by the second, and the
    // second KC block adds to C.
    for (s, level) in available().into_iter().enumerate() {
        let bl = Blocking::for_level(level);
        let p = Problem::new(bl.mc + bl.mr + 1, bl.kc + 1, bl.nc + bl.nr + 1, 270 + s as u64);
        let reference = p.naive();
        with_level(level, |level| {
            for (rung, threads) in [(Rung::PackedSimd, 1), (Rung::Threaded, 2), (Rung::Threaded, 3)] {
                let got = p.run(rung, level, threads);
                p.assert_agrees(&format!("{rung} ({threads} threads) at {level}"), &got, &reference);
            }
        });
    }
}

#[test]
fn packed_and_threaded_match_naive_at_512_cubed() {
    let p = Problem::new(512, 512, 512, 300);
    let reference = p.naive();
    for level in available() {
        with_level(level, |level| {
            for rung in [Rung::PackedSimd, Rung::Threaded] {
                p.assert_agrees(&format!("{rung} at {level}"), &p.run(rung, level, 2), &reference);
            }
        });
    }
}

#[test]
fn threaded_is_bit_identical_to_packed_simd_for_1_2_3_and_7_threads() {
    for (m, k, n) in [(1, 1, 1), (37, 129, 65), (129, 385, 33), (200, 200, 200), (512, 512, 512)] {
        let p = Problem::new(m, k, n, 400 + m as u64);
        for level in available() {
            with_level(level, |level| {
                let single = p.run(Rung::PackedSimd, level, 1);
                for threads in [1, 2, 3, 7] {
                    let got = p.run(Rung::Threaded, level, threads);
                    let same = got.iter().zip(&single).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{m}×{k}×{n} at {level}: {threads} threads differ from packed_simd");
                }
            });
        }
    }
}

#[test]
fn naive_reordered_and_blocked_sum_in_the_same_order() {
    // All three add the k products to a zero in increasing p, one rounding each (no FMA): the
    // loop order changes which element is worked on when, never an element's arithmetic.
    for (m, k, n) in [(7, 33, 17), (65, 97, 129), (33, 200, 257)] {
        let p = Problem::new(m, k, n, 500 + k as u64);
        let reference = p.naive();
        for rung in [Rung::Reordered, Rung::Blocked] {
            let got = p.run(rung, Level::Scalar, 1);
            assert!(got.iter().zip(&reference).all(|(x, y)| x.to_bits() == y.to_bits()), "{rung} {m}×{k}×{n}");
        }
    }
}

/// Embeds `rows×cols` values in a buffer with row stride `ld`, `fill` in the gaps and in
/// `tail` extra elements after the last row.
fn strided(values: &[f32], rows: usize, cols: usize, ld: usize, tail: usize, fill: f32) -> Vec<f32> {
    let mut out = vec![fill; (rows - 1) * ld + cols + tail];
    for i in 0..rows {
        out[i * ld..i * ld + cols].copy_from_slice(&values[i * cols..(i + 1) * cols]);
    }
    out
}

#[test]
fn strided_operands_work_and_gaps_stay_untouched() {
    // NaN in A's and B's gaps: a rung that reads past a row poisons its result. A sentinel in
    // C's gaps and after its last row must survive; C's own elements start as NaN.
    const SENTINEL: f32 = -7777.0;
    for (m, k, n) in [(13, 33, 17), (33, 193, 65), (129, 49, 33)] {
        let p = Problem::new(m, k, n, 600 + n as u64);
        let reference = p.naive();
        let (lda, ldb, ldc) = (k + 3, n + 5, n + 7);
        let a = strided(&p.a, m, k, lda, 0, f32::NAN);
        let b = strided(&p.b, k, n, ldb, 0, f32::NAN);
        for level in available() {
            with_level(level, |level| {
                for rung in Rung::ALL {
                    let mut c = strided(&vec![f32::NAN; m * n], m, n, ldc, 9, SENTINEL);
                    gemm(rung, level, 3, &a, lda, &b, ldb, &mut c, ldc, m, k, n).unwrap();
                    let mut dense = Vec::with_capacity(m * n);
                    for (idx, &x) in c.iter().enumerate() {
                        let (i, j) = (idx / ldc, idx % ldc);
                        if i < m && j < n {
                            dense.push(x);
                        } else {
                            assert_eq!(x.to_bits(), SENTINEL.to_bits(), "{rung} at {level} wrote gap ({i}, {j})");
                        }
                    }
                    p.assert_agrees(&format!("strided {rung} at {level}"), &dense, &reference);
                }
            });
        }
    }
}

#[test]
fn empty_dimensions() {
    for level in available() {
        for rung in Rung::ALL {
            // k = 0: C = 0 (an empty sum), gaps untouched.
            let mut c = vec![5.0f32; 2 * 4 + 3];
            gemm(rung, level, 2, &[], 0, &[], 3, &mut c, 4, 3, 0, 3).unwrap();
            assert_eq!(c, [0., 0., 0., 5., 0., 0., 0., 5., 0., 0., 0.], "{rung} at {level}");
            // m = 0 or n = 0: nothing to do, nothing written.
            let mut c = vec![5.0f32; 4];
            gemm(rung, level, 2, &[], 3, &[1.0; 6], 2, &mut c, 2, 0, 3, 2).unwrap();
            gemm(rung, level, 2, &[1.0; 6], 3, &[], 0, &mut c, 0, 2, 3, 0).unwrap();
            assert_eq!(c, [5.0; 4]);
        }
    }
}

#[test]
fn bad_arguments_are_errors_naming_the_argument() {
    let (m, k, n) = (3, 4, 5);
    let (a, b) = (vec![1.0f32; m * k], vec![1.0f32; k * n]);
    let err = |rung: Rung, threads, a: &[f32], lda, b: &[f32], ldb, c_len, ldc| {
        let mut c = vec![9.0f32; c_len];
        let e = gemm(rung, Level::Scalar, threads, a, lda, b, ldb, &mut c, ldc, m, k, n)
            .expect_err("bad arguments must be an error")
            .to_string();
        assert!(c.iter().all(|&x| x == 9.0), "{rung}: wrote C before failing");
        e
    };
    for rung in Rung::ALL {
        assert!(err(rung, 1, &a[..m * k - 1], k, &b, n, m * n, n).contains("a has"), "{rung}");
        assert!(err(rung, 1, &a, k - 1, &b, n, m * n, n).contains("lda"), "{rung}");
        assert!(err(rung, 1, &a, k, &b[..k * n - 1], n, m * n, n).contains("b has"), "{rung}");
        assert!(err(rung, 1, &a, k, &b, n - 1, m * n, n).contains("ldb"), "{rung}");
        assert!(err(rung, 1, &a, k, &b, n, m * n - 1, n).contains("c has"), "{rung}");
        assert!(err(rung, 1, &a, k, &b, n, m * n, n - 1).contains("ldc"), "{rung}");
        // A stride that is fine for the rows but not for the slice.
        assert!(err(rung, 1, &a, k + 1, &b, n, m * n, n).contains("a has"), "{rung}");
        // Sizes whose extent overflows usize.
        let mut c = [0.0f32; 1];
        let e = gemm(rung, Level::Scalar, 1, &a, usize::MAX, &b, n, &mut c, n, 2, k, n).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{rung}: {e}");
    }
    assert!(err(Rung::Threaded, 0, &a, k, &b, n, m * n, n).contains("threads"));
    assert!(err(Rung::Threaded, MAX_THREADS + 1, &a, k, &b, n, m * n, n).contains("threads"));
    // The per-rung helpers check too.
    let mut c = vec![0.0f32; m * n];
    assert!(gemm::gemm(Rung::PackedSimd, Level::Avx512, 1, &a, k, &b, n, &mut c, n, m, k + 1, n).is_err());
    assert!(gemm::gemm(Rung::Threaded, Level::Avx512, 2, &a, k, &b, n, &mut c[..1], n, m, k, n).is_err());
}

#[test]
fn rung_names_round_trip_and_level_is_clamped() {
    for rung in Rung::ALL {
        assert_eq!(Rung::parse(rung.name()), Some(rung));
    }
    assert_eq!(Rung::parse(" Packed_SIMD "), Some(Rung::PackedSimd));
    assert_eq!(Rung::parse("strassen"), None);
    let top = *available().last().unwrap();
    let (a, b, mut c) = ([1.0f32; 4], [2.0f32; 4], [0.0f32; 4]);
    with_level(Level::Scalar, |_| {
        let used = gemm(Rung::PackedSimd, Level::Avx512, 1, &a, 2, &b, 2, &mut c, 2, 2, 2, 2).unwrap();
        assert_eq!(used, Level::Scalar, "a with_level override caps the requested level");
    });
    let used = gemm(Rung::PackedSimd, Level::Avx512, 1, &a, 2, &b, 2, &mut c, 2, 2, 2, 2).unwrap();
    assert_eq!(used, top);
    assert_eq!(c, [4.0; 4]);
}
