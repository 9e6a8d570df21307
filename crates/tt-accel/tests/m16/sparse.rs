//! The CSR row kernel at every level against the index-order reference.

use super::common::random;
use tt_accel::dispatch::{available, Level};
use tt_accel::sparse::{csr_row, csr_row_reference};

/// Rows with 0, 1, 15, 16, 17 and 40 non-zeros (masked tails, whole and partial gathers):
/// within 1e-5 relative of the reference (the same products, added in 16-lane partial sums).
#[test]
fn csr_rows_match_the_reference_at_every_level() {
    let x = random(100, 1);
    let lens = [0usize, 1, 15, 16, 17, 40];
    let mut indptr = vec![0u32];
    let mut indices = Vec::new();
    for (r, &n) in lens.iter().enumerate() {
        indices.extend((0..n).map(|k| ((k * 7 + r * 3) % 100) as u32));
        indptr.push(indices.len() as u32);
    }
    let values = random(indices.len(), 2);
    let mut want = vec![0.0f32; lens.len()];
    csr_row_reference(&indptr, &indices, &values, &x, &mut want);
    for level in available().into_iter().chain([Level::Avx512]) {
        let mut got = vec![f32::NAN; lens.len()];
        csr_row(level, &indptr, &indices, &values, &x, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{level}: {g} vs {w}");
        }
        assert_eq!(got[0], 0.0, "an empty row is 0");
    }
}
