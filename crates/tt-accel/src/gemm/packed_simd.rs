//! Rung 4 (and the engine of rung 5): the BLIS/Goto packed algorithm around a microkernel.
//!
//! ```text
//! for jc in 0..n step NC                     // 5th loop
//!   for each KC block [p0, p1) of 0..k       // 4th loop: pack B[p0..p1, jc..jc+NC] → B̃ (KC×NR panels)
//!     for ic in 0..m step MC                 // 3rd loop: pack A[ic..ic+MC, p0..p1] → Ã (MR×KC panels)
//!       for jr in 0..NC step NR              // 2nd loop: one KC×NR panel of B̃ — stays in L1
//!         for ir in 0..MC step MR            // 1st loop: one MR×KC panel of Ã — streamed from L2
//!           microkernel: C[ic+ir.., jc+jr..] (=|+=) Ã panel · B̃ panel   (MR×NR in registers)
//! ```
//!
//! The block sizes ([`Blocking`](super::kernels::Blocking)) put each packed operand in the cache
//! level whose reuse it needs: the B̃ micro-panel in L1 (reused by MC/MR microkernel calls), Ã
//! in L2 (reused by NC/NR micro-panels), B̃ in L3. The k range is cut into
//! `ceil(k / KC)` blocks of (almost) equal depth rather than KC, KC, …, remainder, so no block is
//! so shallow that its packing and C updates dominate. The first block overwrites C and later
//! ones add to it, so C needs no zeroing pass.
//!
//! Edges: panels are packed with zeros past the last row/column, so the microkernel always runs
//! a full MR×NR tile and writes back only the valid corner. Packing buffers are per thread,
//! reused between calls (no page faults from fresh allocations) and 64-byte aligned (a zmm load
//! never straddles two cache lines).
//!
//! Value of each C element: `Σ over KC blocks in order of (Σ_p in block, in order, of a·b in one
//! register lane)`, added to C block by block. It depends only on the level (kernel), k and the
//! KC partition — not on where the tile sits, which MC block it is in, or which thread runs it;
//! that is why rung 5 is bit-identical to this one.

use super::kernels::{MicroKernel, Scalar4x8};
use super::{zero_rows, Args};
use crate::dispatch::Level;
use rayon::prelude::*;
use std::cell::RefCell;
use std::thread::LocalKey;

pub(super) fn packed_simd(level: Level, x: Args<'_>) {
    run(level, None, x)
}

/// Runs the packed algorithm with the kernel for `level` (at most what the CPU has), on the
/// calling thread or, with `pool = Some((pool, workers))`, split over `workers` pool threads.
pub(super) fn run(level: Level, pool: Option<(&rayon::ThreadPool, usize)>, x: Args<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::kernels::{Avx2_6x16, Avx512_12x32};
        if level >= Level::Avx512 {
            if let Some(kern) = Avx512_12x32::new() {
                return drive(kern, pool, x);
            }
        }
        if level >= Level::Avx2 {
            if let Some(kern) = Avx2_6x16::new() {
                return drive(kern, pool, x);
            }
        }
    }
    let _ = level;
    drive(Scalar4x8, pool, x)
}

fn drive<K: MicroKernel>(kern: K, pool: Option<(&rayon::ThreadPool, usize)>, x: Args<'_>) {
    let Args { a, lda, b, ldb, c, ldc, m, k, n } = x;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        zero_rows(c, ldc, m, n);
        return;
    }
    let bl = kern.blocking();
    let k_blocks = k.div_ceil(bl.kc);
    let kc_max = k.div_ceil(k_blocks);
    let nc_max = bl.nc.min(n).next_multiple_of(K::NR);
    with_buffer(&PACKED_B, kc_max * nc_max, |b_buf| {
        for jc in (0..n).step_by(bl.nc) {
            let nc = bl.nc.min(n - jc);
            for q in 0..k_blocks {
                let (p0, p1) = (q * k / k_blocks, (q + 1) * k / k_blocks);
                let kc = p1 - p0;
                let b_pack = &mut b_buf[..nc.div_ceil(K::NR) * kc * K::NR];
                let block = Block { p0, kc, jc, nc, overwrite: q == 0 };
                let pack_b = |(jp, dst): (usize, &mut [f32])| {
                    let col0 = jc + jp * K::NR;
                    kern.pack_b(dst, b, ldb, p0, kc, col0, K::NR.min(jc + nc - col0));
                };
                match pool {
                    None => {
                        b_pack.chunks_exact_mut(kc * K::NR).enumerate().for_each(pack_b);
                        row_range(kern, a, lda, b_pack, c, ldc, 0, m, block);
                    }
                    Some((pool, workers)) => pool.install(|| {
                        b_pack.par_chunks_exact_mut(kc * K::NR).enumerate().for_each(pack_b);
                        let b_pack = &*b_pack;
                        split_rows(c, ldc, m, K::MR, workers).into_par_iter().for_each(|(r0, rows, c_part)| {
                            row_range(kern, a, lda, b_pack, c_part, ldc, r0, rows, block);
                        });
                    }),
                }
            }
        }
    });
}

/// The part of the product one KC×NC panel of B̃ contributes.
#[derive(Clone, Copy)]
struct Block {
    p0: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    overwrite: bool,
}

/// Splits the m rows of C into at most `workers` contiguous ranges of whole MR-row panels, as
/// equal as possible, each with the disjoint part of `c` that holds it (its row 0 is row `r0`).
fn split_rows(c: &mut [f32], ldc: usize, m: usize, mr: usize, workers: usize) -> Vec<(usize, usize, &mut [f32])> {
    let panels = m.div_ceil(mr);
    let workers = workers.clamp(1, panels);
    let mut parts = Vec::with_capacity(workers);
    let mut rest = c;
    let mut r0 = 0;
    for w in 0..workers {
        let r1 = ((w + 1) * panels / workers * mr).min(m);
        if w + 1 < workers {
            // r1 < m here, and `rest` starts at row r0 and holds ≥ (m − r0 − 1)·ldc + n elements.
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((r1 - r0) * ldc);
            parts.push((r0, r1 - r0, head));
            rest = tail;
        } else {
            parts.push((r0, r1 - r0, std::mem::take(&mut rest)));
        }
        r0 = r1;
    }
    parts
}

/// Loops 3 to 1 for rows `r0..r0 + rows` of C (`c` starts at row `r0`): pack each MC block of A
/// into this thread's Ã, then sweep the B̃ panels × Ã panels with the microkernel.
fn row_range<K: MicroKernel>(
    kern: K,
    a: &[f32],
    lda: usize,
    b_pack: &[f32],
    c: &mut [f32],
    ldc: usize,
    r0: usize,
    rows: usize,
    blk: Block,
) {
    let bl = kern.blocking();
    let Block { p0, kc, jc, nc, overwrite } = blk;
    let mc_max = bl.mc.min(rows.next_multiple_of(K::MR));
    with_buffer(&PACKED_A, mc_max * kc, |a_buf| {
        for ic in (0..rows).step_by(bl.mc) {
            let mc = bl.mc.min(rows - ic);
            let a_pack = &mut a_buf[..mc.div_ceil(K::MR) * kc * K::MR];
            for (ip, dst) in a_pack.chunks_exact_mut(kc * K::MR).enumerate() {
                let i = ic + ip * K::MR;
                kern.pack_a(dst, a, lda, r0 + i, K::MR.min(rows - i), p0, kc);
            }
            for (jp, b_panel) in b_pack.chunks_exact(kc * K::NR).enumerate() {
                let j = jc + jp * K::NR;
                let nr = K::NR.min(jc + nc - j);
                for (ip, a_panel) in a_pack.chunks_exact(kc * K::MR).enumerate() {
                    let i = ic + ip * K::MR;
                    let mr = K::MR.min(rows - i);
                    kern.tile(kc, a_panel, b_panel, &mut c[i * ldc + j..], ldc, mr, nr, overwrite);
                }
            }
        }
    });
}

thread_local! {
    /// This thread's packed Ã (MC×KC).
    static PACKED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's packed B̃ (KC×NC), shared read-only with the workers in rung 5.
    static PACKED_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a 64-byte-aligned slice of `len` floats from the thread-local buffer `key`
/// (grown if needed, contents unspecified). If the buffer is already in use on this thread — a
/// re-entrant call, e.g. a rayon worker that picked up another product while waiting — a fresh
/// one is used instead.
fn with_buffer<R>(key: &'static LocalKey<RefCell<Vec<f32>>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(aligned(&mut v, len)),
        Err(_) => f(aligned(&mut Vec::new(), len)),
    })
}

fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const SLACK: usize = 64 / std::mem::size_of::<f32>();
    if v.len() < len + SLACK {
        *v = vec![0.0; len + SLACK];
    }
    let off = v.as_ptr().align_offset(64);
    let off = if off < SLACK { off } else { 0 };
    &mut v[off..off + len]
}
