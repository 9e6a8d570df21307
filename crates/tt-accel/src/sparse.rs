//! Sparse row kernels: `y[o] = Σ_k values[k]·x[indices[k]]` over the non-zeros of each output
//! row of a CSR matrix (tt-compress's `CsrF32` calls these).
//!
//! The AVX-512 kernel takes 16 non-zeros at a time: a load of their values, a load of their
//! column indices, a gather of the 16 inputs they address (`vgatherdps`) and one FMA — then one
//! horizontal sum per output row. The scalar kernel sums in index order (the reference). The
//! two differ only by the order of the f32 additions (tests bound it).

use crate::dispatch::{self, Level};

/// One row of `x` against every CSR row: `y[o] = Σ values[indptr[o]..indptr[o+1]]·x[indices[..]]`.
///
/// # Panics
/// If `indptr` has fewer than `y.len() + 1` entries, an `indptr` range or an index falls outside
/// `values` / `indices` / `x`: the caller (`CsrF32`, which built the arrays) guarantees them.
pub fn csr_row(level: Level, indptr: &[u32], indices: &[u32], values: &[f32], x: &[f32], y: &mut [f32]) {
    assert!(indptr.len() > y.len(), "csr_row: indptr holds rows + 1 entries");
    let nnz = indptr[y.len()] as usize;
    assert!(nnz <= values.len() && nnz <= indices.len(), "csr_row: indptr within the non-zeros");
    assert!(indices[..nnz].iter().all(|&i| (i as usize) < x.len()), "csr_row: column indices inside x");
    match level.min(dispatch::level()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most `dispatch::level()`, so the CPU has AVX-512F; every range
        // and index was checked above.
        Level::Avx512 => unsafe { avx512::csr_row(indptr, indices, values, x, y) },
        _ => csr_row_reference(indptr, indices, values, x, y),
    }
}

/// The reference: index-order sums.
pub fn csr_row_reference(indptr: &[u32], indices: &[u32], values: &[f32], x: &[f32], y: &mut [f32]) {
    for (o, out) in y.iter_mut().enumerate() {
        let span = indptr[o] as usize..indptr[o + 1] as usize;
        *out = values[span.clone()].iter().zip(&indices[span]).map(|(&v, &i)| v * x[i as usize]).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F; `indptr` holds `y.len() + 1` non-decreasing offsets into `values` and `indices`,
    /// and every index addresses `x`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn csr_row(indptr: &[u32], indices: &[u32], values: &[f32], x: &[f32], y: &mut [f32]) {
        let (pv, pi, px) = (values.as_ptr(), indices.as_ptr(), x.as_ptr());
        for (o, out) in y.iter_mut().enumerate() {
            let (mut k, end) = (indptr[o] as usize, indptr[o + 1] as usize);
            let mut acc = _mm512_setzero_ps();
            while k < end {
                let n = (end - k).min(16);
                let m: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
                // SAFETY: lanes below n read values/indices[k..k + n] (inside, caller's contract);
                // the gather reads x at those indices only (masked lanes read nothing).
                unsafe {
                    let v = _mm512_maskz_loadu_ps(m, pv.add(k));
                    let idx = _mm512_maskz_loadu_epi32(m, pi.add(k) as *const i32);
                    let xs = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, px);
                    acc = _mm512_fmadd_ps(v, xs, acc);
                }
                k += n;
            }
            *out = _mm512_reduce_add_ps(acc);
        }
    }
}
