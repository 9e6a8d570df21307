//! Low-rank: full rank reproduces W, the truncation error is Eckart–Young's, the layer equals its
//! own dense matrix.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use tt_compress::lowrank::{rank_for_bytes, rank_for_energy, singular_values, LowRank};
use tt_tensor::projection::{check_projection, Projection};

fn matrix(o: usize, i: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((o, i), |_| rng.random_range(-1.0f32..1.0))
}

fn frob2(a: &Array2<f32>) -> f64 {
    a.iter().map(|&v| (v as f64).powi(2)).sum()
}

#[test]
fn full_rank_reproduces_w_and_truncation_error_is_the_dropped_energy() {
    let w = matrix(24, 40, 1);
    let s = singular_values(&w).unwrap();
    assert_eq!(s.len(), 24);
    assert!(s.windows(2).all(|p| p[0] >= p[1]), "largest first");
    let full = LowRank::factor(&w, 24).unwrap();
    let d = (&full.to_dense() - &w).iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(d < 1e-5, "full rank: {d}");
    for r in [1, 5, 12] {
        let lr = LowRank::factor(&w, r).unwrap();
        let err = frob2(&(&lr.to_dense() - &w));
        let dropped: f64 = s[r..].iter().map(|v| v * v).sum();
        assert!((err - dropped).abs() <= 1e-4 * frob2(&w), "rank {r}: {err} vs {dropped}");
        assert_eq!(lr.storage_bytes(), 4 * r * (24 + 40));
        // The two-stage layer computes its own dense matrix (f32 in a different order).
        assert!(check_projection(&lr, 5, 3).unwrap() < 1e-4, "rank {r}");
        assert_eq!((lr.format(), lr.shape(), lr.rank()), ("lowrank", (24, 40), r));
    }
}

#[test]
fn a_rank_one_matrix_is_exact_at_rank_one_and_ranks_are_chosen_by_energy_or_bytes() {
    let (u, v): (Vec<f32>, Vec<f32>) =
        ((0..8).map(|i| i as f32 - 3.0).collect(), (0..5).map(|j| 0.5 * j as f32 + 1.0).collect());
    let w = Array2::from_shape_fn((8, 5), |(i, j)| u[i] * v[j]);
    let lr = LowRank::factor(&w, 1).unwrap();
    assert!((&lr.to_dense() - &w).iter().all(|d| d.abs() < 1e-4));
    let s = singular_values(&w).unwrap();
    assert_eq!(rank_for_energy(&s, 0.999).unwrap(), 1);
    let s2 = [3.0, 2.0, 1.0];
    // Energies 9, 4, 1 of 14: 64% at rank 1, 93% at rank 2.
    assert_eq!(
        (rank_for_energy(&s2, 0.6).unwrap(), rank_for_energy(&s2, 0.9).unwrap(), rank_for_energy(&s2, 1.0).unwrap()),
        (1, 2, 3)
    );
    assert!(rank_for_energy(&s2, 0.0).is_err() && rank_for_energy(&s2, 1.5).is_err());
    assert_eq!(rank_for_bytes(128, 512, 4 * 32 * 640), 32);
    assert_eq!(rank_for_bytes(128, 512, 1), 1);
}

#[test]
fn bad_ranks_and_weights_are_errors() {
    let w = matrix(4, 6, 2);
    assert!(LowRank::factor(&w, 0).is_err() && LowRank::factor(&w, 5).is_err());
    let mut bad = w.clone();
    bad[[1, 1]] = f32::INFINITY;
    assert!(LowRank::factor(&bad, 2).is_err() && singular_values(&bad).is_err());
    assert!(singular_values(&Array2::zeros((0, 3))).is_err());
}
