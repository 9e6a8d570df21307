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
//! Each kernel type also owns its packers (`pack_a`, `pack_b`), compiled with its instruction
//! set; the AVX-512 one packs full A panels with an in-register 16×16 transpose. The plain
//! `pack_a_panel` / `pack_b_panels` are the references they are unit-tested against.
//!
//! Safety design: each SIMD kernel is a zero-sized token type that can only be constructed
//! (`new`) when [`dispatch::detected`] reports its instruction set, so holding a token *is* the
//! proof that its `#[target_feature]` function may run; the drivers are generic over the token
//! and contain no `unsafe`. The kernels slice their inputs with bounds checks once per tile and
//! use raw pointers only for vector loads/stores inside those checked slices.

use crate::caches::CacheSizes;
use crate::dispatch::{self, Level};

/// The share of the (shared, slower) L3 that one packed MC×KC block of A may take: an eighth, so
/// the other cores' blocks and the streaming B panels keep the rest (4 MiB of a 32 MiB L3).
pub const L3_SHARE: usize = 8;

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
    /// Derives the block sizes for an MR×NR microkernel (which broadcasts A and loads rows of B)
    /// from `caches` (this machine's: [`CacheSizes::detect`]):
    /// - `kc`: the MR×KC micro-panel of A that one row of microkernel calls reuses takes half of
    ///   L1 (the other half for the KC×NR micro-panels of B streaming past it from L2, and C);
    /// - `nc`: the packed KC×NC panel of B, reused by every MR-row panel of A, takes half of L2
    ///   (rounded down to a multiple of NR);
    /// - `mc`: the packed MC×KC block of A, reused by every NC panel of B, takes
    ///   `L3 /` [`L3_SHARE`] (rounded down to a multiple of MR).
    ///
    /// (This is BLIS's analytical model with the roles of its A and B swapped, since row-major
    /// `C = A·B` is column-major `Cᵀ = Bᵀ·Aᵀ`.)
    ///
    /// A 0 in the shape counts as 1, and a tile too big for the caches still gets blocks of one
    /// tile (`kc ≥ 1`, `nc ≥ nr`, `mc ≥ mr`): every size is usable as a loop step.
    pub const fn derive(mr: usize, nr: usize, caches: CacheSizes) -> Blocking {
        const fn at_least(x: usize, min: usize) -> usize {
            if x < min {
                min
            } else {
                x
            }
        }
        let (mr, nr) = (at_least(mr, 1), at_least(nr, 1));
        let kc = at_least(caches.l1d / 2 / mr.saturating_mul(4), 1);
        let nc = at_least(caches.l2 / 2 / (kc * 4) / nr * nr, nr);
        let mc = at_least(caches.l3 / L3_SHARE / (kc * 4) / mr * mr, mr);
        Blocking { mr, nr, kc, mc, nc }
    }

    /// The blocking rung 4 uses at `level` (whether or not this CPU has it), for this machine's
    /// caches.
    pub fn for_level(level: Level) -> Blocking {
        let (mr, nr) = match level {
            Level::Avx512 => (12, 32),
            Level::Avx2 => (6, 16),
            Level::Scalar => (4, 8),
        };
        Blocking::derive(mr, nr, CacheSizes::detect())
    }
}

// AVX-512 12×32 with a 48 KiB L1d, 1 MiB L2, 32 MiB L3: kc = 24 KiB / 48 B = 512,
// nc = 512 KiB / 2 KiB = 256, mc = 4 MiB / 2 KiB → 2040.
const _: () = {
    let b = Blocking::derive(12, 32, CacheSizes::FALLBACK);
    assert!(b.kc == 512 && b.nc == 256 && b.mc == 2040);
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

    /// Packs rows `p0..p0 + kc`, columns `col0..col0 + cols` of B into `ceil(cols / NR)`
    /// consecutive KC×NR panels: panel `q` holds `dst[q·KC·NR + p·NR + j] = B[p0 + p][col0 + q·NR
    /// + j]`, zero past column `cols`.
    fn pack_b(self, dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize);
}

/// [`MicroKernel::pack_a`] for a kernel with `MR` rows. A full panel reads its MR rows in
/// chunks of 16 columns (MR short sequential streams) and writes the transposed chunk
/// contiguously. Inlined into each SIMD kernel's `#[target_feature]` packer so it is compiled
/// with that level's vectors.
#[inline(always)]
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
            // `[..CH]` has exactly CH elements, so the conversion to `&[f32; CH]` cannot fail.
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

/// [`MicroKernel::pack_b`] for a kernel with `NR` columns. Walks B row by row — each row's
/// `cols` values are one contiguous read, scattered into the panels — rather than panel by
/// panel, which would stride down B touching a new page per row for every panel.
#[inline(always)]
fn pack_b_panels<const NR: usize>(
    dst: &mut [f32],
    b: &[f32],
    ldb: usize,
    p0: usize,
    kc: usize,
    col0: usize,
    cols: usize,
) {
    let panels = cols.div_ceil(NR);
    let dst = &mut dst[..panels * kc * NR];
    for p in 0..kc {
        let start = (p0 + p) * ldb + col0;
        let src = &b[start..start + cols];
        let (full, rest) = src.as_chunks::<NR>();
        for (panel, s) in dst.chunks_exact_mut(kc * NR).zip(full) {
            let (steps, _) = panel.as_chunks_mut::<NR>();
            steps[p] = *s;
        }
        if !rest.is_empty() {
            let panel = &mut dst[(panels - 1) * kc * NR..];
            let step = &mut panel[p * NR..(p + 1) * NR];
            step[..rest.len()].copy_from_slice(rest);
            step[rest.len()..].fill(0.0);
        }
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
        pack_b_panels::<8>(dst, b, ldb, p0, kc, col0, cols)
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
    use super::{dispatch, pack_a_panel, pack_b_panels, store_partial, Blocking, Level, MicroKernel};
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
            // SAFETY: `self` proves AVX2 + FMA are available (see `tile`).
            unsafe { avx2_pack_a(dst, a, lda, row0, rows, p0, kc) }
        }

        fn pack_b(self, dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize) {
            // SAFETY: `self` proves AVX2 + FMA are available (see `tile`).
            unsafe { avx2_pack_b(dst, b, ldb, p0, kc, col0, cols) }
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
    unsafe fn avx2_pack_a(dst: &mut [f32], a: &[f32], lda: usize, row0: usize, rows: usize, p0: usize, kc: usize) {
        pack_a_panel::<6>(dst, a, lda, row0, rows, p0, kc)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_pack_b(dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize) {
        pack_b_panels::<16>(dst, b, ldb, p0, kc, col0, cols)
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
            // SAFETY: `self` proves AVX-512F, AVX2 and FMA are available (see `tile`).
            unsafe { avx512_pack_a(dst, a, lda, row0, rows, p0, kc) }
        }

        fn pack_b(self, dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize) {
            // SAFETY: `self` proves AVX-512F, AVX2 and FMA are available (see `tile`).
            unsafe { avx512_pack_b(dst, b, ldb, p0, kc, col0, cols) }
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

    /// Packs one 12×KC panel of A. Full panels go 16 columns at a time through a 16×16
    /// in-register transpose (the 12 rows plus 4 zero rows): 12 loads, 48 shuffles and 16
    /// masked 12-lane stores per 192 values, instead of 192 scalar loads and stores. Partial
    /// panels and the last `kc % 16` columns use [`pack_a_panel`], the reference it is tested
    /// against.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512_pack_a(dst: &mut [f32], a: &[f32], lda: usize, row0: usize, rows: usize, p0: usize, kc: usize) {
        const MR: usize = 12;
        if rows < MR || kc < 16 {
            return pack_a_panel::<MR>(dst, a, lda, row0, rows, p0, kc);
        }
        let dst = &mut dst[..kc * MR];
        let src: [&[f32]; MR] = std::array::from_fn(|r| &a[(row0 + r) * lda + p0..(row0 + r) * lda + p0 + kc]);
        let full = kc / 16 * 16;
        for q in (0..full).step_by(16) {
            // r[i] = row i, columns q..q+16 (rows 12..16 are zero).
            let mut r = [_mm512_setzero_ps(); 16];
            for (ri, row) in r.iter_mut().zip(&src) {
                let chunk = &row[q..q + 16];
                // SAFETY: `chunk` holds 16 elements, exactly what the load reads.
                *ri = unsafe { _mm512_loadu_ps(chunk.as_ptr()) };
            }
            // Stage 1, within 128-bit lanes: t = interleaved pairs of rows, then
            // c[4g + s] lane l = rows 4g..4g+4 of column 4l + s.
            let mut c = [_mm512_setzero_ps(); 16];
            for g in 0..3 {
                let t0 = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]);
                let t1 = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);
                let t2 = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
                let t3 = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
                c[4 * g] = _mm512_shuffle_ps::<0x44>(t0, t2);
                c[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
                c[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
                c[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
            }
            // Stage 2, across lanes: gather lane l of the four row groups into column 4l + s.
            for s in 0..4 {
                let u0 = _mm512_shuffle_f32x4::<0x88>(c[s], c[4 + s]);
                let u1 = _mm512_shuffle_f32x4::<0xDD>(c[s], c[4 + s]);
                let u2 = _mm512_shuffle_f32x4::<0x88>(c[8 + s], c[12 + s]);
                let u3 = _mm512_shuffle_f32x4::<0xDD>(c[8 + s], c[12 + s]);
                let cols = [
                    (s, _mm512_shuffle_f32x4::<0x88>(u0, u2)),
                    (8 + s, _mm512_shuffle_f32x4::<0xDD>(u0, u2)),
                    (4 + s, _mm512_shuffle_f32x4::<0x88>(u1, u3)),
                    (12 + s, _mm512_shuffle_f32x4::<0xDD>(u1, u3)),
                ];
                for (p, v) in cols {
                    let out = &mut dst[(q + p) * MR..(q + p + 1) * MR];
                    // SAFETY: the mask writes lanes 0..12 only, and `out` holds 12 elements.
                    unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr(), 0x0FFF, v) };
                }
            }
        }
        let (steps, _) = dst.as_chunks_mut::<MR>();
        for (p, step) in steps.iter_mut().enumerate().skip(full) {
            for r in 0..MR {
                step[r] = src[r][p];
            }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512_pack_b(dst: &mut [f32], b: &[f32], ldb: usize, p0: usize, kc: usize, col0: usize, cols: usize) {
        pack_b_panels::<32>(dst, b, ldb, p0, kc, col0, cols)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(len: usize) -> Vec<f32> {
        (0..len).map(|i| i as f32 + 0.5).collect()
    }

    /// Every kernel's packers against the plain reference packers, on partial and full panels,
    /// short and long (non-multiple-of-16) depths, with a row stride.
    fn check_packers<K: MicroKernel>(kern: K) {
        let lda = 1100;
        let a = ramp(40 * lda);
        for rows in [1, K::MR - 1, K::MR] {
            for kc in [1, 15, 16, 17, 47, 512, 515] {
                let mut got = vec![f32::NAN; kc * K::MR];
                let mut want = vec![f32::NAN; kc * K::MR];
                kern.pack_a(&mut got, &a, lda, 3, rows, 7, kc);
                for (p, step) in want.chunks_exact_mut(K::MR).enumerate() {
                    for (r, x) in step.iter_mut().enumerate() {
                        *x = if r < rows { a[(3 + r) * lda + 7 + p] } else { 0.0 };
                    }
                }
                assert_eq!(got, want, "pack_a rows={rows} kc={kc}");
            }
        }
        let ldb = 300;
        let b = ramp(600 * ldb);
        for cols in [1, K::NR - 1, K::NR, 3 * K::NR + 5] {
            let kc = 37;
            let panels = cols.div_ceil(K::NR);
            let mut got = vec![f32::NAN; panels * kc * K::NR];
            kern.pack_b(&mut got, &b, ldb, 5, kc, 9, cols);
            for (idx, &x) in got.iter().enumerate() {
                let (q, p, j) = (idx / (kc * K::NR), idx / K::NR % kc, idx % K::NR);
                let col = q * K::NR + j;
                let want = if col < cols { b[(5 + p) * ldb + 9 + col] } else { 0.0 };
                assert_eq!(x, want, "pack_b cols={cols} at {idx}");
            }
        }
    }

    #[test]
    fn packers_match_the_reference_at_every_level() {
        check_packers(Scalar4x8);
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(k) = Avx2_6x16::new() {
                check_packers(k);
            }
            if let Some(k) = Avx512_12x32::new() {
                check_packers(k);
            }
        }
    }
}
