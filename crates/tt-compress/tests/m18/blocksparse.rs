//! The 16×1 block-sparse format against dense at every dispatch level, its byte count, its
//! hostile inputs, and block pruning's amounts.
//!
//! Tolerance: the kernels sum each output's stored columns into 4 partial sums (then
//! `(p₀ + p₁) + (p₂ + p₃)`), not in a dense dot product's order, and the SIMD levels fuse
//! multiply and add; so results equal the f64 dense product only to f32 rounding. The bound used,
//! `(in + 4)·ε·Σ|xᵢ·wᵢ| + ε·|b|`, is the classical bound for recursive summation of `in` terms
//! plus the final adds (`γ_n ≈ n·ε/2`, doubled for margin) — tight enough that a dropped or
//! misplaced column (an error the size of one product) fails it.

use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use tt_compress::blocksparse::{BlockSparseF32, BLOCK};
use tt_compress::prune::{block_mask, Pruning};
use tt_tensor::nn::{Linear, Sequential};
use tt_tensor::projection::{project, Projection};
use tt_tensor::{no_grad, Module, Tensor};

fn sparse(out_f: usize, in_f: usize, density: f64, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((out_f, in_f), |_| {
        if rng.random::<f64>() < density {
            rng.random_range(-1.0f32..1.0)
        } else {
            0.0
        }
    })
}

/// Runs `p` on `rows` seeded rows with a bias and checks every output against the f64 dense
/// product of `w` within the bound of the module docs.
fn check(p: &dyn Projection, w: &Array2<f32>, rows: usize, seed: u64, what: &str) {
    let (out_f, in_f) = w.dim();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..rows * in_f).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let bias: Vec<f32> = (0..out_f).map(|o| 0.25 * o as f32 - 1.0).collect();
    // NaN-filled: any output the kernel forgets to write fails below.
    let mut y = vec![f32::NAN; rows * out_f];
    project(p, &x, rows, Some(&bias), &mut y, &mut []).unwrap();
    for r in 0..rows {
        for o in 0..out_f {
            let terms = (0..in_f).map(|i| x[r * in_f + i] as f64 * w[[o, i]] as f64);
            let want = bias[o] as f64 + terms.clone().sum::<f64>();
            let scale: f64 = terms.map(f64::abs).sum();
            let tol = (in_f + 4) as f64 * f32::EPSILON as f64 * scale + f32::EPSILON as f64 * (bias[o] as f64).abs();
            let got = y[r * out_f + o] as f64;
            assert!((got - want).abs() <= tol, "{what}: row {r} output {o}: {got} vs {want} (tolerance {tol:e})");
        }
    }
}

#[test]
fn every_level_equals_dense_on_odd_sizes_densities_and_batches() {
    let levels = tt_accel::dispatch::available();
    eprintln!("levels here: {levels:?}");
    let mut seed = 0;
    for &out_f in &[1usize, 7, 15, 16, 17, 33, 50] {
        for &in_f in &[1usize, 3, 17, 64, 129] {
            for density in [0.0, 0.02, 0.3, 1.0] {
                seed += 1;
                let w = sparse(out_f, in_f, density, seed);
                for &level in &levels {
                    let b = BlockSparseF32::from_dense_with_level(&w, level).unwrap();
                    assert_eq!(b.level(), level);
                    assert_eq!(b.to_dense(), w, "round trip");
                    for rows in [1, 2, 3, 4, 5, 9] {
                        check(&b, &w, rows, seed, &format!("{level} {out_f}×{in_f} d{density} {rows} rows"));
                    }
                }
            }
        }
    }
}

#[test]
fn the_thread_level_is_honoured_at_construction() {
    let w = sparse(40, 20, 0.3, 5);
    for l in tt_accel::dispatch::available() {
        let b = tt_accel::with_level(l, |_| BlockSparseF32::from_dense(&w).unwrap());
        assert_eq!(b.level(), l);
        assert_eq!(b.clone().at_level(tt_accel::Level::Scalar).level(), tt_accel::Level::Scalar);
    }
}

/// Whole zero rows, zero blocks and an all-zero matrix: nothing stored for them, outputs are
/// the bias exactly.
#[test]
fn zero_rows_and_blocks_store_nothing_and_give_the_bias() {
    let mut w = sparse(40, 9, 0.5, 3);
    w.slice_mut(ndarray::s![0..16, ..]).fill(0.0); // block 0 empty
    w.row_mut(20).fill(0.0); // one zero row inside block 1
    w.column_mut(4).fill(0.0); // one zero column in every block
    for level in tt_accel::dispatch::available() {
        let b = BlockSparseF32::from_dense_with_level(&w, level).unwrap();
        let (ptr, cols, _) = b.parts();
        assert_eq!(ptr[0], ptr[1], "block 0 stores nothing");
        assert!(!cols.contains(&4));
        check(&b, &w, 3, 1, &format!("{level} zero blocks"));
        let x = vec![1.0f32; 2 * 9];
        let bias: Vec<f32> = (0..40).map(|o| o as f32).collect();
        let mut y = vec![f32::NAN; 2 * 40];
        b.forward_rows(&x, 2, Some(&bias), &mut y, &mut []);
        for r in 0..2 {
            assert!((0..16).all(|o| y[r * 40 + o] == bias[o]), "{level}: empty block gives the bias");
        }
        let zero = BlockSparseF32::from_dense_with_level(&Array2::zeros((17, 5)), level).unwrap();
        assert_eq!((zero.stored_blocks(), zero.storage_bytes(), zero.density()), (0, 4 * 3, 0.0));
        let mut y = vec![f32::NAN; 17];
        zero.forward_rows(&[1.0; 5], 1, Some(&bias[..17]), &mut y, &mut []);
        assert_eq!(y, bias[..17].to_vec());
    }
    // Degenerate shapes run (no inputs: the bias; no outputs: nothing).
    let e = BlockSparseF32::from_dense(&Array2::zeros((3, 0))).unwrap();
    let mut y = vec![f32::NAN; 3];
    e.forward_rows(&[], 1, Some(&[1.0, 2.0, 3.0]), &mut y, &mut []);
    assert_eq!(y, vec![1.0, 2.0, 3.0]);
    let e = BlockSparseF32::from_dense(&Array2::zeros((0, 4))).unwrap();
    e.forward_rows(&[0.0; 4], 1, None, &mut [], &mut []);
}

/// Bytes with indices counted: 64 per stored block, 4 per column index, 4 per block pointer.
#[test]
fn storage_counts_values_indices_and_pointers() {
    let w = sparse(50, 30, 0.05, 9);
    let b = BlockSparseF32::from_dense(&w).unwrap();
    let nonzero_blocks = (0..4)
        .map(|blk| (0..30).filter(|&i| (blk * 16..(blk * 16 + 16).min(50)).any(|o| w[[o, i]] != 0.0)).count())
        .sum::<usize>();
    assert_eq!(b.stored_blocks(), nonzero_blocks);
    assert_eq!(b.storage_bytes(), 68 * nonzero_blocks + 4 * 5);
    assert!((b.block_density() - nonzero_blocks as f64 / 120.0).abs() < 1e-12);
    let nnz = w.iter().filter(|&&v| v != 0.0).count();
    assert!((b.density() - nnz as f64 / 1500.0).abs() < 1e-12);
    assert_eq!(b.format(), "block16");
    // A full matrix costs 68/64 of dense (plus pointers): the index per 16 values.
    let full = BlockSparseF32::from_dense(&sparse(32, 10, 1.0, 1)).unwrap();
    assert_eq!(full.storage_bytes(), 68 * 20 + 4 * 3);
}

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let mut w = sparse(20, 6, 0.5, 2);
    w[[3, 3]] = f32::NAN;
    assert!(BlockSparseF32::from_dense(&w).is_err());
    w[[3, 3]] = f32::NEG_INFINITY;
    assert!(BlockSparseF32::from_dense(&w).is_err());
    // Parts: a valid 20×6 matrix (2 blocks), then each field broken in turn.
    let ok = BlockSparseF32::from_dense(&sparse(20, 6, 1.0, 4)).unwrap();
    let (p, c, v) = ok.parts();
    let (p, c, v) = (p.to_vec(), c.to_vec(), v.to_vec());
    let again = BlockSparseF32::from_parts(20, 6, p.clone(), c.clone(), v.clone()).unwrap();
    assert_eq!(again.to_dense(), ok.to_dense());
    let bad = |p: Vec<u32>, c: Vec<u32>, v: Vec<f32>| BlockSparseF32::from_parts(20, 6, p, c, v).is_err();
    assert!(bad(vec![0, 6], c.clone(), v.clone()), "too few pointers");
    assert!(bad(vec![0, 6, 13], c.clone(), v.clone()), "last pointer past the columns");
    assert!(bad(vec![1, 6, 12], c.clone(), v.clone()), "first pointer not 0");
    assert!(bad(vec![0, 13, 12], c.clone(), v.clone()), "decreasing pointers");
    assert!(bad(vec![], c.clone(), v.clone()), "no pointers");
    let mut c2 = c.clone();
    c2[2] = 6;
    assert!(bad(p.clone(), c2, v.clone()), "column out of range");
    let mut c3 = c.clone();
    c3.swap(1, 2);
    assert!(bad(p.clone(), c3, v.clone()), "columns out of order");
    let mut c4 = c.clone();
    c4[1] = c4[0];
    assert!(bad(p.clone(), c4, v.clone()), "a repeated column");
    assert!(bad(p.clone(), c.clone(), v[..v.len() - 1].to_vec()), "values short");
    let mut v2 = v.clone();
    v2[7 * BLOCK + 15] = 1.0; // block 1 holds outputs 16..19 only
    assert!(bad(p.clone(), c.clone(), v2), "a value past the last output");
    let mut v3 = v.clone();
    v3[0] = f32::NAN;
    assert!(bad(p.clone(), c.clone(), v3), "a NaN value");
    assert!(BlockSparseF32::from_parts(usize::MAX, 6, p, c, v).is_err(), "absurd shape");
    // Short slices through the checked entry point: errors.
    let mut y = vec![0.0; 20];
    assert!(project(&ok, &[0.0; 5], 1, None, &mut y, &mut []).is_err());
    assert!(project(&ok, &[0.0; 6], 1, None, &mut y[..19], &mut []).is_err());
    assert!(project(&ok, &[0.0; 6], 1, Some(&[0.0; 3]), &mut y, &mut []).is_err());
    assert!(project(&ok, &[0.0; 6], usize::MAX, None, &mut y, &mut []).is_err());
}

#[test]
fn block_pruning_counts_amounts_of_the_unpruned_blocks() {
    // 20×3: blocks (0, i) rows 0..16 and (1, i) rows 16..20; block norms set by column scale.
    let w = Array2::from_shape_fn((20, 3), |(o, i)| (i + 1) as f32 * if o < 16 { 1.0 } else { 10.0 });
    let ones = Array2::ones((20, 3));
    let m = block_mask(&w.view(), &ones.view(), 0.5).unwrap();
    // 6 blocks, prune round(3) = 3: the norms are 4·(i+1) (16 rows of i+1) and 20·(i+1) (4 rows
    // of 10(i+1)): the 3 smallest are block 0's columns 0, 1, 2 (4, 8, 12 < 20).
    assert!((0..3).all(|i| (0..16).all(|o| m[[o, i]] == 0.0)));
    assert!((0..3).all(|i| (16..20).all(|o| m[[o, i]] == 1.0)));
    // Again 0.5 of the 3 left: round(1.5) = 2 (half to even), the two weakest of block 1.
    let m2 = block_mask(&w.view(), &m.view(), 0.5).unwrap();
    assert_eq!(m2.iter().filter(|&&v| v == 1.0).count(), 4, "only block (1, 2) is left");
    assert!((16..20).all(|o| m2[[o, 2]] == 1.0));
    assert_eq!(block_mask(&w.view(), &ones.view(), 0.0).unwrap(), ones);
    assert!(block_mask(&w.view(), &ones.view(), 1.0).unwrap().iter().all(|&v| v == 0.0));
    // Ties by position: equal blocks pruned in (row block, column) order.
    let flat = Array2::<f32>::ones((32, 2));
    let m3 = block_mask(&flat.view(), &Array2::ones((32, 2)).view(), 0.25).unwrap();
    assert!((0..16).all(|o| m3[[o, 0]] == 0.0) && m3.iter().filter(|&&v| v == 0.0).count() == 16);
    assert!(block_mask(&w.view(), &ones.view(), 1.5).is_err());
    assert!(block_mask(&w.view(), &Array2::ones((3, 20)).view(), 0.5).is_err());
    assert!(block_mask(
        &ArrayView2::from_shape((0, 0), &[]).unwrap(),
        &ArrayView2::from_shape((0, 0), &[]).unwrap(),
        0.5
    )
    .is_ok());
}

/// Pruned in blocks through `Pruning`, the layer's weight stores exactly the kept blocks; the
/// block-sparse projection installed in the Linear gives the masked dense layer's output.
#[test]
fn block_pruned_layers_run_as_block_sparse_projections() {
    let mut m = Sequential::new().layer(Linear::new(24, 40, true, 1));
    let mut p = Pruning::default();
    p.block_magnitude(&mut m, &["0"], 0.6).unwrap();
    // 40 outputs: 3 blocks × 24 columns = 72, round(43.2) = 43 pruned.
    let w = m.layers[0].as_linear_mut().unwrap().weight.data().clone().into_dimensionality::<ndarray::Ix2>().unwrap();
    let b = BlockSparseF32::from_dense(&w).unwrap();
    assert_eq!(b.stored_blocks(), 72 - 43);
    let x = Tensor::from_array(sparse(5, 24, 1.0, 8).into_dyn());
    let masked = no_grad(|| m.forward(&x)).unwrap().data().clone();
    let l = m.layers[0].as_linear_mut().unwrap();
    l.set_transform(None);
    l.set_projection(std::sync::Arc::new(b)).unwrap();
    let sparse_out = no_grad(|| m.forward(&x)).unwrap().data().clone();
    let d = (&masked - &sparse_out).iter().fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(d < 1e-5, "{d}");
    assert!(p.block_magnitude(&mut m, &["nope"], 0.5).is_err());
    assert!(p.block_magnitude(&mut m, &["0"], -0.1).is_err());
}

/// An empty weight has no block to rank: `block_mask` returns at once (it walked the 2³⁶ row
/// blocks of a `2⁴⁰ × 0` matrix, each with no column).
#[test]
fn block_mask_of_an_empty_matrix_returns_at_once() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = [(1usize << 40, 0usize), (0, 1 << 40), (0, 0)].into_iter().all(|shape| {
            let w = Array2::<f32>::zeros(shape);
            block_mask(&w.view(), &w.view(), 0.5).is_ok_and(|m| m.dim() == shape)
        });
        let _ = tx.send(ok);
    });
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(20)), Ok(true), "still running after 20 s");
}
