//! CSR against dense.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use tt_compress::csr::CsrF32;
use tt_tensor::projection::{check_projection, Projection};

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

#[test]
fn csr_equals_dense_on_odd_shapes_and_densities() {
    for &(o, i) in &[(1usize, 1usize), (7, 13), (33, 17), (64, 129)] {
        for density in [0.0, 0.05, 0.3, 1.0] {
            let w = sparse(o, i, density, (o * 1000 + i) as u64);
            let c = CsrF32::from_dense(&w).unwrap();
            assert_eq!(c.to_dense(), w);
            assert_eq!(c.nnz(), w.iter().filter(|&&v| v != 0.0).count());
            for rows in [1, 3, 8] {
                let err = check_projection(&c, rows, 7).unwrap();
                assert!(err <= 1e-5, "{o}×{i} density {density}, {rows} rows: {err}");
            }
        }
    }
}

/// Bytes with indices counted: 4 per value, 4 per index, 4 per row pointer — below dense f32
/// only under 50% density.
#[test]
fn storage_counts_indices() {
    let w = sparse(100, 100, 0.3, 1);
    let c = CsrF32::from_dense(&w).unwrap();
    assert_eq!(c.storage_bytes(), 8 * c.nnz() + 4 * 101);
    assert!(c.storage_bytes() < 4 * 100 * 100);
    let dense = CsrF32::from_dense(&sparse(100, 100, 1.0, 2)).unwrap();
    assert!(dense.storage_bytes() > 4 * 100 * 100, "a full CSR is twice dense");
    assert_eq!(c.format(), "csr");
    let mut bad = w.clone();
    bad[[0, 0]] = f32::NAN;
    assert!(CsrF32::from_dense(&bad).is_err());
}

/// A projection with no outputs writes nothing whatever `rows` says: it must not walk the rows.
#[test]
fn csr_with_no_outputs_returns_at_once_for_any_row_count() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let p = CsrF32::from_dense(&Array2::zeros((0, 0))).unwrap();
        let r = tt_tensor::projection::project(&p, &[], usize::MAX, None, &mut [], &mut []);
        let _ = tx.send(r.is_ok());
    });
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(20)), Ok(true), "still running after 20 s");
}

/// A matrix with no inputs has no element, so it stores no row pointers (a `2⁴⁰ × 0` matrix once
/// aborted allocating 4 TiB of them), and every output is its bias.
#[test]
fn csr_with_no_inputs_stores_no_row_pointers() {
    let huge = CsrF32::from_dense(&Array2::zeros((1 << 40, 0))).unwrap();
    assert_eq!((huge.shape(), huge.nnz(), huge.storage_bytes()), ((1 << 40, 0), 0, 4));
    assert_eq!(huge.to_dense().dim(), (1 << 40, 0));
    let m = CsrF32::from_dense(&Array2::zeros((5, 0))).unwrap();
    let bias = [1.0, 2.0, 3.0, 4.0, 5.0];
    let mut y = vec![f32::NAN; 3 * 5];
    tt_tensor::projection::project(&m, &[], 3, Some(&bias), &mut y, &mut []).unwrap();
    assert_eq!(y, bias.repeat(3));
    tt_tensor::projection::project(&m, &[], 3, None, &mut y, &mut []).unwrap();
    assert_eq!(y, vec![0.0; 15]);
}

/// A model whose layers are CSR, frozen: the dense weights released, outputs bit for bit the
/// same as before freezing.
#[test]
fn a_frozen_csr_model_answers_exactly_as_before() {
    use std::sync::Arc;
    use tt_tensor::{no_grad, Module, Tensor};
    let mut m = tt_tensor::data::digits::mlp(2);
    tt_tensor::nn::map_linears(&mut m, |_, l| {
        let mut w = l.projection()?.to_dense();
        w.mapv_inplace(|v| if v.abs() < 0.05 { 0.0 } else { v });
        l.set_projection(Arc::new(CsrF32::from_dense(&w).unwrap()))
    })
    .unwrap();
    let x = Tensor::randn(&[4, 64], 0.0, 1.0, 3);
    let before = no_grad(|| m.forward(&x)).unwrap().to_vec();
    let frozen = tt_tensor::nn::freeze(&mut m).unwrap();
    assert_eq!(frozen.layers, ["0", "2"]);
    assert_eq!(no_grad(|| m.forward(&x)).unwrap().to_vec(), before);
}
