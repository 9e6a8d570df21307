//! Rung 4's microkernels — one per dispatch level — and the block sizes derived for each.
//!
//! A microkernel computes one MR×NR tile of C from a packed MR×KC panel of A (column by column:
//! `a[p·MR + r]` is `A[r][p]`) and a packed KC×NR panel of B (row by row: `b[p·NR + j]` is
//! `B[p][j]`):
//!
//! ```text
//! acc[MR][NR] = 0                       // in vector registers for the whole loop
//! for p in 0..kc:
//!     bvec   = b[p·NR .. p·NR+NR]         // NR/lanes vector loads
//!     for r in 0..MR:
//!         acc[r] += broadcast(a[p·MR+r]) * bvec   // NR/lanes FMAs each
//! C[r][j] = acc[r][j]   (first KC block)   or   C[r][j] += acc[r][j]   (later blocks)
//! ```
//!
//! | level  | MR×NR | accumulators | per step | registers used |
//! |--------|-------|--------------|----------|----------------|
//! | AVX-512 | 12×32 | 24 zmm | 2 loads, 12 broadcasts, 24 FMA | 24 + 2 of 32 |
//! | AVX2    | 6×16  | 12 ymm | 2 loads, 6 broadcasts, 12 FMA  | 12 + 2 + 1 of 16 |
//! | scalar  | 4×8   | 32 f32 | 8 loads, 4 loads, 32 mul+add   | what the compiler picks |
//!
//! Why these shapes: an FMA has a latency of ~4 cycles and two issue every cycle, so at least 8
//! independent accumulators are needed just to keep the FMA units busy; beyond that, a bigger
//! tile does more FMAs per byte loaded (MR·NR FMAs per (MR + NR) loaded floats). 12×32 at AVX-512
//! leaves 6 of 32 registers for B and broadcasts (the compiler folds the broadcast into the FMA's
//! memory operand); 6×16 is the same arithmetic for AVX2's 16 registers.
//!
//! Safety design: each SIMD kernel is a zero-sized token type that can only be constructed
//! (`new`) when [`dispatch::detected`] reports its instruction set, so holding a token *is* the
//! proof that its `#[target_feature]` function may run; the drivers are generic over the token
//! and contain no `unsafe`. The kernels slice their inputs with bounds checks once per tile and
//! use raw pointers only for vector loads/stores inside those checked slices.

use crate::dispatch::{self, Level};

/// Per-core L1 data cache of the machine the block sizes were derived for (Zen 5 / Emerald
/// Rapids class: 48 KiB).
pub const L1D_BYTES: usize = 48 * 1024;
/// Per-core L2 (1 MiB per core as reported by sysfs on the course machine; a 2 MiB L2 only
/// makes these blocks fit more comfortably).
pub const L2_BYTES: usize = 1024 * 1024;
/// The share of the (shared, slower) L3 that one packed KC×NC panel of B may take.
pub const L3_SHARE_BYTES: usize = 4 * 1024 * 1024;

/// The block sizes of the packed algorithm for one microkernel shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Rows of the microkernel tile.
    pub mr: usize,
    /// Columns of the microkernel tile.
    pub nr: usize,
    /// Depth of one packed block (the k-extent of one microkernel call).
    pub kc: usize,
    /// Rows of A packed per block (a multiple of `mr`).
    pub mc: usize,
    /// Columns of B packed per panel (a multiple of `nr`).
    pub nc: usize,
}

impl Blocking {
    /// Derives the block sizes for an MR×NR microkernel from the cache sizes:
    /// - `kc`: the KC×NR micro-panel of B that a run of microkernel calls reuses takes half of
    ///   L1, leaving the other half for the MR×KC panels of A streaming past it and the C tile;
    /// - `mc`: the packed MC×KC block of A, reused by every NR panel of B, takes half of L2
    ///   (rounded down to a multiple of MR);
    /// - `nc`: the packed KC×NC panel of B, reused by every MC block, takes [`L3_SHARE_BYTES`]
    ///   (rounded down to a multiple of NR).
    pub const fn derive(mr: usize, nr: usize) -> Blocking {
        let kc = L1D_BYTES / 2 / (nr * 4);
        let mc = L2_BYTES / 2 / (kc * 4) / mr * mr;
        let nc = L3_SHARE_BYTES / (kc * 4) / nr * nr;
        Blocking { mr, nr, kc, mc, nc }
    }

    /// The blocking rung 4 uses at `level` (whether or not this CPU has it).
    pub fn for_level(level: Level) -> Blocking {
        match level {
            Level::Avx512 => Blocking::derive(12, 32),
            Level::Avx2 => Blocking::derive(6, 16),
            Level::Scalar => Blocking::derive(4, 8),
        }
    }
}

// AVX-512 12×32: kc = 24 KiB / 128 B = 192, mc = 512 KiB / 768 B = 682 → 672, nc = 5440.
const _: () = {
    let b = Blocking::derive(12, 32);
    assert!(b.kc == 192 && b.mc == 672 && b.nc == 5440);
};

/// A microkernel: computes one MR×NR tile of C (see the module docs).
pub(crate) trait MicroKernel: Copy + Send + Sync {
    const MR: usize;
    const NR: usize;

    /// The block sizes the driver uses with this kernel.
    fn blocking(self) -> Blocking;

    /// `C[r][j] (=|+=) Σ_p a[p·MR + r] · b[p·NR + j]` for `r < mr ≤ MR`, `j < nr ≤ NR`, where
    /// `C[r][j]` is `c[r·ldc + j]`; `=` when `overwrite`. Only those `mr × nr` elements of `c`
    /// are written. Panics (never UB) if a slice is too short.
    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, mr: usize, nr: usize, overwrite: bool);

    /// Packs rows `row0..row0 + rows` (`rows ≤ MR`), columns `p0..p0 + kc` of A into one MR×KC
    /// panel `dst[p·MR + r] = A[row0 + r][p0 + p]`, zero for `r ≥ rows`.
    fn pack_a(self, dst: &mut [f32], a: &[f32], lda: usize, row0: usize, rows: usize, p0: usize, kc: usize);

    /// Packs rows `p0..p0 + kc`, columns `col0..col0 + cols` (`cols ≤ NR`) of B into one KC×NR
    /// panel `dst[p·NR + j] = B[p0 + p][col0 + j]`, zero for `j ≥ cols`.
    fn pack_b(self, dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize);
}

/// [`MicroKernel::pack_a`] for a kernel with `MR` rows. A full panel reads its MR rows in
/// chunks of 16 columns (MR short sequential streams) and writes the transposed chunk
/// contiguously.
fn pack_a_panel<const MR: usize>(
    dst: &mut [f32],
    a: &[f32],
    lda: usize,
    row0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
) {
    let (steps, _) = dst[..kc * MR].as_chunks_mut::<MR>();
    if rows == MR {
        let src: [&[f32]; MR] = std::array::from_fn(|r| &a[(row0 + r) * lda + p0..(row0 + r) * lda + p0 + kc]);
        const CH: usize = 16;
        let full = kc / CH * CH;
        for (q, out) in steps[..full].chunks_exact_mut(CH).enumerate() {
            let chunk: [&[f32; CH]; MR] = std::array::from_fn(|r| src[r][q * CH..][..CH].try_into().unwrap());
            for (p, step) in out.iter_mut().enumerate() {
                for r in 0..MR {
                    step[r] = chunk[r][p];
                }
            }
        }
        for (p, step) in steps.iter_mut().enumerate().skip(full) {
            for r in 0..MR {
                step[r] = src[r][p];
            }
        }
    } else {
        for (p, step) in steps.iter_mut().enumerate() {
            for (r, x) in step.iter_mut().enumerate() {
                *x = if r < rows { a[(row0 + r) * lda + p0 + p] } else { 0.0 };
            }
        }
    }
}

/// [`MicroKernel::pack_b`] for a kernel with `NR` columns: one contiguous copy per row of B.
fn pack_b_panel<const NR: usize>(
    dst: &mut [f32],
    b: &[f32],
    ldb: usize,
    p0: usize,
    kc: usize,
    col0: usize,
    cols: usize,
) {
    let (steps, _) = dst[..kc * NR].as_chunks_mut::<NR>();
    for (p, step) in steps.iter_mut().enumerate() {
        let start = (p0 + p) * ldb + col0;
        step[..cols].copy_from_slice(&b[start..start + cols]);
        step[cols..].fill(0.0);
    }
}

/// Writes the valid `mr × nr` corner of a full register tile (spilled to `tile`) into C.
/// Full and partial tiles produce the same values: one f32 add (or a copy) per element.
#[inline]
fn store_partial<const MR: usize, const NR: usize>(
    tile: &[[f32; NR]; MR],
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
) {
    for (r, t_row) in tile.iter().enumerate().take(mr) {
        let c_row = &mut c[r * ldc..r * ldc + nr];
        if overwrite {
            c_row.copy_from_slice(&t_row[..nr]);
        } else {
            for (cj, &tj) in c_row.iter_mut().zip(t_row) {
                *cj += tj;
            }
        }
    }
}

/// The portable 4×8 kernel: plain loops over a 4×8 array of f32 accumulators (the compiler may
/// keep them in SSE registers); `mul` then `add`, two roundings per step, as any CPU does it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scalar4x8;

impl MicroKernel for Scalar4x8 {
    const MR: usize = 4;
    const NR: usize = 8;

    fn blocking(self) -> Blocking {
        Blocking::for_level(Level::Scalar)
    }

    fn pack_a(self, dst: &mut [f32], a: &[f32], lda: usize, row0: usize, rows: usize, p0: usize, kc: usize) {
        pack_a_panel::<4>(dst, a, lda, row0, rows, p0, kc)
    }

    fn pack_b(self, dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize) {
        pack_b_panel::<8>(dst, b, ldb, p0, kc, col0, cols)
    }

    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, mr: usize, nr: usize, overwrite: bool) {
        let (a_steps, _) = a[..kc * 4].as_chunks::<4>();
        let (b_steps, _) = b[..kc * 8].as_chunks::<8>();
        let mut acc = [[0.0f32; 8]; 4];
        for (ap, bp) in a_steps.iter().zip(b_steps) {
            for (acc_row, &ar) in acc.iter_mut().zip(ap) {
                for (x, &bj) in acc_row.iter_mut().zip(bp) {
                    *x += ar * bj;
                }
            }
        }
        store_partial(&acc, c, ldc, mr.min(4), nr.min(8), overwrite);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2_6x16, Avx512_12x32};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{dispatch, pack_a_panel, pack_b_panel, store_partial, Blocking, Level, MicroKernel};
    use std::arch::x86_64::*;

    /// The AVX2 + FMA 6×16 kernel. Constructible only where the CPU has AVX2 and FMA.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2_6x16 {
        _proof: (),
    }

    impl Avx2_6x16 {
        /// `Some` iff this CPU supports AVX2 and FMA.
        pub(crate) fn new() -> Option<Self> {
            (dispatch::detected() >= Level::Avx2).then_some(Avx2_6x16 { _proof: () })
        }
    }

    impl MicroKernel for Avx2_6x16 {
        const MR: usize = 6;
        const NR: usize = 16;

        fn blocking(self) -> Blocking {
            Blocking::for_level(Level::Avx2)
        }

        fn pack_a(self, dst: &mut [f32], a: &[f32], lda: usize, row0: usize, rows: usize, p0: usize, kc: usize) {
            pack_a_panel::<6>(dst, a, lda, row0, rows, p0, kc)
        }

        fn pack_b(self, dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize) {
            pack_b_panel::<16>(dst, b, ldb, p0, kc, col0, cols)
        }

        fn tile(
            self,
            kc: usize,
            a: &[f32],
            b: &[f32],
            c: &mut [f32],
            ldc: usize,
            mr: usize,
            nr: usize,
            overwrite: bool,
        ) {
            // SAFETY: `self` exists only if `detected() >= Avx2`, i.e. the CPU has AVX2 and FMA
            // (the features `avx2_6x16` enables).
            unsafe { avx2_6x16(kc, a, b, c, ldc, mr, nr, overwrite) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_6x16(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
    ) {
        const MR: usize = 6;
        const NR: usize = 16;
        let (a_steps, _) = a[..kc * MR].as_chunks::<MR>();
        let (b_steps, _) = b[..kc * NR].as_chunks::<NR>();
        let mut acc = [_mm256_setzero_ps(); 2 * MR];
        for (ap, bp) in a_steps.iter().zip(b_steps) {
            // SAFETY: `bp` is a `[f32; 16]`: the loads read elements 0..8 and 8..16 of it.
            let (b0, b1) = unsafe { (_mm256_loadu_ps(bp.as_ptr()), _mm256_loadu_ps(bp.as_ptr().add(8))) };
            for r in 0..MR {
                let ar = _mm256_set1_ps(ap[r]);
                acc[2 * r] = _mm256_fmadd_ps(ar, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm256_fmadd_ps(ar, b1, acc[2 * r + 1]);
            }
        }
        if mr == MR && nr == NR {
            for r in 0..MR {
                let row = &mut c[r * ldc..r * ldc + NR];
                let p = row.as_mut_ptr();
                // SAFETY: `row` holds 16 elements: the loads/stores touch 0..8 and 8..16 of it.
                unsafe {
                    let (mut v0, mut v1) = (acc[2 * r], acc[2 * r + 1]);
                    if !overwrite {
                        v0 = _mm256_add_ps(_mm256_loadu_ps(p), v0);
                        v1 = _mm256_add_ps(_mm256_loadu_ps(p.add(8)), v1);
                    }
                    _mm256_storeu_ps(p, v0);
                    _mm256_storeu_ps(p.add(8), v1);
                }
            }
        } else {
            let mut tile = [[0.0f32; NR]; MR];
            for (r, t_row) in tile.iter_mut().enumerate() {
                // SAFETY: `t_row` is a `[f32; 16]`: the stores write elements 0..8 and 8..16.
                unsafe {
                    _mm256_storeu_ps(t_row.as_mut_ptr(), acc[2 * r]);
                    _mm256_storeu_ps(t_row.as_mut_ptr().add(8), acc[2 * r + 1]);
                }
            }
            store_partial(&tile, c, ldc, mr, nr, overwrite);
        }
    }

    /// The AVX-512F 12×32 kernel. Constructible only where the CPU has AVX-512F (and AVX2/FMA).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx512_12x32 {
        _proof: (),
    }

    impl Avx512_12x32 {
        /// `Some` iff this CPU supports AVX-512F, AVX2 and FMA.
        pub(crate) fn new() -> Option<Self> {
            (dispatch::detected() >= Level::Avx512).then_some(Avx512_12x32 { _proof: () })
        }
    }

    impl MicroKernel for Avx512_12x32 {
        const MR: usize = 12;
        const NR: usize = 32;

        fn blocking(self) -> Blocking {
            Blocking::for_level(Level::Avx512)
        }

        fn pack_a(self, dst: &mut [f32], a: &[f32], lda: usize, row0: usize, rows: usize, p0: usize, kc: usize) {
            pack_a_panel::<12>(dst, a, lda, row0, rows, p0, kc)
        }

        fn pack_b(self, dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize) {
            pack_b_panel::<32>(dst, b, ldb, p0, kc, col0, cols)
        }

        fn tile(
            self,
            kc: usize,
            a: &[f32],
            b: &[f32],
            c: &mut [f32],
            ldc: usize,
            mr: usize,
            nr: usize,
            overwrite: bool,
        ) {
            // SAFETY: `self` exists only if `detected() >= Avx512`, i.e. the CPU has AVX-512F,
            // AVX2 and FMA (the features `avx512_12x32` enables).
            unsafe { avx512_12x32(kc, a, b, c, ldc, mr, nr, overwrite) }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512_12x32(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
    ) {
        const MR: usize = 12;
        const NR: usize = 32;
        let full = mr == MR && nr == NR;
        if full {
            // Start pulling the C tile towards L1 now; it is needed after the k loop.
            for r in 0..MR {
                let row = &c[r * ldc..r * ldc + NR];
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().cast());
                _mm_prefetch::<_MM_HINT_T0>(row[NR - 1..].as_ptr().cast());
            }
        }
        let (a_steps, _) = a[..kc * MR].as_chunks::<MR>();
        let (b_steps, _) = b[..kc * NR].as_chunks::<NR>();
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        for (ap, bp) in a_steps.iter().zip(b_steps) {
            // SAFETY: `bp` is a `[f32; 32]`: the loads read elements 0..16 and 16..32 of it.
            let (b0, b1) = unsafe { (_mm512_loadu_ps(bp.as_ptr()), _mm512_loadu_ps(bp.as_ptr().add(16))) };
            for r in 0..MR {
                let ar = _mm512_set1_ps(ap[r]);
                acc[2 * r] = _mm512_fmadd_ps(ar, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(ar, b1, acc[2 * r + 1]);
            }
        }
        if full {
            for r in 0..MR {
                let row = &mut c[r * ldc..r * ldc + NR];
                let p = row.as_mut_ptr();
                // SAFETY: `row` holds 32 elements: the loads/stores touch 0..16 and 16..32 of it.
                unsafe {
                    let (mut v0, mut v1) = (acc[2 * r], acc[2 * r + 1]);
                    if !overwrite {
                        v0 = _mm512_add_ps(_mm512_loadu_ps(p), v0);
                        v1 = _mm512_add_ps(_mm512_loadu_ps(p.add(16)), v1);
                    }
                    _mm512_storeu_ps(p, v0);
                    _mm512_storeu_ps(p.add(16), v1);
                }
            }
        } else {
            let mut tile = [[0.0f32; NR]; MR];
            for (r, t_row) in tile.iter_mut().enumerate() {
                // SAFETY: `t_row` is a `[f32; 32]`: the stores write elements 0..16 and 16..32.
                unsafe {
                    _mm512_storeu_ps(t_row.as_mut_ptr(), acc[2 * r]);
                    _mm512_storeu_ps(t_row.as_mut_ptr().add(16), acc[2 * r + 1]);
                }
            }
            store_partial(&tile, c, ldc, mr, nr, overwrite);
        }
    }
}
