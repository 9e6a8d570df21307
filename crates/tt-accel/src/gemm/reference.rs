//! Rungs 1 and 2: the triple loop in its two orders.

use super::Args;

/// Rung 1, `i → j → p`: each `c[i][j]` is one dot product of a row of A with a column of B,
/// summed in order `p = 0, 1, …, k−1`. The inner loop strides down B by `ldb` floats — one new
/// cache line per multiply-add — which is what the next rung fixes. This is the reference.
pub(super) fn naive(x: Args<'_>) {
    let Args { a, lda, b, ldb, c, ldc, m, k, n } = x;
    for i in 0..m {
        let a_row = &a[i * lda..i * lda + k];
        for j in 0..n {
            let mut sum = 0.0f32;
            for (p, &a_ip) in a_row.iter().enumerate() {
                sum += a_ip * b[p * ldb + j];
            }
            c[i * ldc + j] = sum;
        }
    }
}

/// Rung 2, `i → p → j`: the same multiply-adds with the two inner loops swapped, so row `i` of
/// C is built as `Σ_p a[i][p] · (row p of B)`. The inner loop reads a row of B and updates a row
/// of C, both contiguous: whole cache lines are used, the prefetcher streams them, and the
/// compiler turns the loop into SIMD (`c[j..j+4] += a_ip * b[j..j+4]`) — none of which the
/// column walk of rung 1 allows. Each `c[i][j]` still sums over `p` in increasing order, but
/// as k separate roundings through memory rather than in a register (same values as naive
/// unless the compiler contracts to FMA, which Rust does not do).
pub(super) fn reordered(x: Args<'_>) {
    let Args { a, lda, b, ldb, c, ldc, m, k, n } = x;
    for i in 0..m {
        let c_row = &mut c[i * ldc..i * ldc + n];
        c_row.fill(0.0);
        let a_row = &a[i * lda..i * lda + k];
        for (p, &a_ip) in a_row.iter().enumerate() {
            let b_row = &b[p * ldb..p * ldb + n];
            for (cj, &bj) in c_row.iter_mut().zip(b_row) {
                *cj += a_ip * bj;
            }
        }
    }
}
