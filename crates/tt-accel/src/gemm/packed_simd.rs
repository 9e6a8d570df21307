//! Rung 4 (and the engine of rung 5): the BLIS/Goto packed algorithm around a microkernel.
//!
//! ```text
//! for ic in 0..m step MC                     // Ã: MC×KC block of A — in L3
//!   for each KC block [p0, p1) of 0..k       //   pack A[ic..ic+MC, p0..p1] → Ã (MR×KC panels)
//!     for jc in 0..n step NC                 // B̃: KC×NC panel of B — in L2
//!       pack B[p0..p1, jc..jc+NC] → B̃ (KC×NR panels)
//!       for ir in 0..MC step MR              // one MR×KC panel of Ã — stays in L1 ...
//!         for jr in 0..NC step NR            // ... while the KC×NR panels of B̃ stream from L2
//!           microkernel: C[ic+ir.., jc+jr..] (=|+=) Ã panel · B̃ panel   (MR×NR in registers)
//! ```
//!
//! The block sizes ([`Blocking`](super::kernels::Blocking)) put each packed operand in the cache
//! level whose reuse it needs: an Ã micro-panel in L1 (reused by NC/NR microkernel calls), B̃ in
//! L2 (reused by MC/MR micro-panels of A), Ã in L3 (reused by n/NC panels of B). Each operand is
//! packed once per use of the block: A once in all, B once per MC block of rows (once in all for
//! m ≤ MC). The k range is cut into `ceil(k / KC)` blocks of (almost) equal depth rather than KC,
//! KC, …, remainder, so no block is so shallow that its packing and C updates dominate. The first
//! block overwrites C and later ones add to it, so C needs no zeroing pass.
//!
//! Edges: panels are packed with zeros past the last row/column, so the microkernel always runs
//! a full MR×NR tile and writes back only the valid corner. Packing buffers are per thread,
//! reused between calls (no page faults from fresh allocations) and 64-byte aligned (a zmm load
//! never straddles two cache lines).
//!
//! Value of each C element: `Σ over KC blocks in order of (Σ_p in block, in order, of a·b in one
//! register lane)`, added to C block by block. It depends only on the level (kernel), k and the
//! KC partition — not on where the tile sits, which MC or NC block it is in, or which thread runs
//! it; that is why rung 5 is bit-identical to this one.

use super::kernels::{MicroKernel, Scalar4x8};
use super::Args;
use crate::dispatch::Level;
use crate::team::{share, Team};
use std::cell::RefCell;
use std::sync::Mutex;
use std::thread::LocalKey;

pub(super) fn packed_simd(level: Level, x: Args<'_>) {
    run(level, None, x)
}

/// Runs the packed algorithm with the kernel for `level` (at most what the CPU has), on the
/// calling thread or, with `team`, split over its members.
pub(super) fn run(level: Level, team: Option<&Team>, x: Args<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::kernels::{Avx2_6x16, Avx512_12x32};
        if level >= Level::Avx512 {
            if let Some(kern) = Avx512_12x32::new() {
                return loops(kern, team, x);
            }
        }
        if level >= Level::Avx2 {
            if let Some(kern) = Avx2_6x16::new() {
                return loops(kern, team, x);
            }
        }
    }
    let _ = level;
    loops(Scalar4x8, team, x)
}

/// The five loops. With a team of several members each B̃ packing step is split over groups of
/// NR panels and each macrokernel over groups of MR-row panels, claimed by whichever member is
/// free; with none, everything runs on the calling thread.
fn loops<K: MicroKernel>(kern: K, team: Option<&Team>, x: Args<'_>) {
    let team = team.filter(|t| t.size() > 1);
    let workers = team.map_or(1, Team::size);
    let Args { a, lda, b, ldb, c, ldc, m, k, n } = x;
    let (mr, nr) = (K::MR, K::NR);
    let bl = kern.blocking();
    let k_blocks = k.div_ceil(bl.kc);
    let kc_max = k.div_ceil(k_blocks);
    let mc_max = bl.mc.min(m.next_multiple_of(mr));
    let nc_max = bl.nc.min(n.next_multiple_of(nr));
    with_buffer(&PACKED_A, mc_max * kc_max, |a_buf| {
        with_buffer(&PACKED_B, kc_max * nc_max, |b_buf| {
            for ic in (0..m).step_by(bl.mc) {
                let mc = bl.mc.min(m - ic);
                let c_rows = &mut c[ic * ldc..];
                for q in 0..k_blocks {
                    let (p0, p1) = (q * k / k_blocks, (q + 1) * k / k_blocks);
                    let kc = p1 - p0;
                    let a_pack = &mut a_buf[..mc.div_ceil(mr) * kc * mr];
                    for jc in (0..n).step_by(bl.nc) {
                        let nc = bl.nc.min(n - jc);
                        let b_pack = &mut b_buf[..nc.div_ceil(nr) * kc * nr];
                        // Ã is packed panel by panel during the first NC panel, each MR×KC panel
                        // just before its first use (so it is still in L1), and reused after.
                        let blk =
                            Block { kc, jc, nc, overwrite: q == 0, pack_a: (jc == 0).then_some((a, lda, ic, p0)) };
                        if let Some(team) = team {
                            // Each chunk packs a contiguous group of NR panels, row by row.
                            let panels = nc.div_ceil(nr);
                            let chunks = crate::team::chunks_for(panels, workers, kc * nr);
                            let groups = b_parts(&mut *b_pack, panels, chunks, kc * nr);
                            team.for_each(chunks, &|g| {
                                let mut dst = lock(&groups[g]);
                                let ps = share(panels, chunks, g);
                                let j = jc + ps.start * nr;
                                kern.pack_b(&mut dst, b, ldb, p0, kc, j, (ps.len() * nr).min(jc + nc - j));
                            });
                            let b_pack = &*b_pack;
                            let unit = mr * kc * nc;
                            let cuts = row_cuts(mc, mr, crate::team::chunks_for(mc.div_ceil(mr), workers, unit));
                            let c_parts = split_at_rows(&mut *c_rows, &cuts, ldc);
                            let a_parts = split_at_rows(&mut *a_pack, &cuts, kc);
                            // One lock per part, each taken once by the one chunk that owns it:
                            // the safe way to hand disjoint `&mut` rows to whichever member runs it.
                            let parts: Vec<_> = c_parts.into_iter().zip(a_parts).map(Mutex::new).collect();
                            team.for_each(cuts.len(), &|i| {
                                let (r0, r1) = cuts[i];
                                let mut part = lock(&parts[i]);
                                let (c_part, a_part) = &mut *part;
                                macro_kernel(kern, a_part, b_pack, c_part, ldc, r0, r1 - r0, blk);
                            });
                        } else {
                            kern.pack_b(b_pack, b, ldb, p0, kc, jc, nc);
                            macro_kernel(kern, a_pack, b_pack, c_rows, ldc, 0, mc, blk);
                        }
                    }
                }
            }
        })
    });
}

/// Locks a part that only its own chunk ever takes (a poisoned lock means that chunk panicked,
/// which the team re-raises; the data is still the part's).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// B̃ (`panels` micro-panels of `panel_len` floats) cut into the `chunks` contiguous groups of
/// [`share`]`(panels, chunks, g)` panels, each behind its own lock.
fn b_parts(b_pack: &mut [f32], panels: usize, chunks: usize, panel_len: usize) -> Vec<Mutex<&mut [f32]>> {
    let mut rest = b_pack;
    (0..chunks)
        .map(|g| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(share(panels, chunks, g).len() * panel_len);
            rest = tail;
            Mutex::new(head)
        })
        .collect()
}

/// What one macrokernel call covers: a KC-deep slice of k and the columns `jc..jc + nc`.
#[derive(Clone, Copy)]
struct Block<'a> {
    kc: usize,
    jc: usize,
    nc: usize,
    overwrite: bool,
    /// `Some((a, lda, ic, p0))`: pack each Ã panel from A (block rows start at `ic`, columns at
    /// `p0`) before using it; `None`: the panels were packed by an earlier NC panel.
    pack_a: Option<(&'a [f32], usize, usize, usize)>,
}

/// Loops 2 and 1 for the rows `r0..r0 + rows` of the current MC block (`a_pack` holds exactly
/// their Ã panels and `c` starts at row `r0`): every MR-row panel of Ã against every NR-column
/// panel of B̃. The A panel stays in L1 across the inner loop.
fn macro_kernel<K: MicroKernel>(
    kern: K,
    a_pack: &mut [f32],
    b_pack: &[f32],
    c: &mut [f32],
    ldc: usize,
    r0: usize,
    rows: usize,
    blk: Block<'_>,
) {
    let Block { kc, jc, nc, overwrite, pack_a } = blk;
    for (ip, a_panel) in a_pack.chunks_exact_mut(kc * K::MR).enumerate() {
        let i = ip * K::MR;
        let mr = K::MR.min(rows - i);
        if let Some((a, lda, ic, p0)) = pack_a {
            kern.pack_a(a_panel, a, lda, ic + r0 + i, mr, p0, kc);
        }
        for (jp, b_panel) in b_pack.chunks_exact(kc * K::NR).enumerate() {
            let j = jc + jp * K::NR;
            let nr = K::NR.min(jc + nc - j);
            kern.tile(kc, a_panel, b_panel, &mut c[i * ldc + j..], ldc, mr, nr, overwrite);
        }
    }
}

/// Cuts `rows` rows into at most `workers` contiguous ranges `(r0, r1)` of whole MR-row panels
/// (the last may end in a partial panel), sizes differing by at most one panel.
fn row_cuts(rows: usize, mr: usize, workers: usize) -> Vec<(usize, usize)> {
    let panels = rows.div_ceil(mr);
    let workers = workers.clamp(1, panels.max(1));
    (0..workers).map(|w| ((w * panels / workers * mr).min(rows), ((w + 1) * panels / workers * mr).min(rows))).collect()
}

/// Splits `s`, a matrix with row stride `ld` starting at row 0, into the disjoint parts holding
/// each range of `cuts` (each part starts at its range's first row; the last takes the rest).
fn split_at_rows<'s>(s: &'s mut [f32], cuts: &[(usize, usize)], ld: usize) -> Vec<&'s mut [f32]> {
    let mut parts = Vec::with_capacity(cuts.len());
    let mut rest = s;
    for (w, &(r0, r1)) in cuts.iter().enumerate() {
        if w + 1 < cuts.len() {
            // r1 is a row before the last, so `rest` (from row r0) holds at least (r1 − r0)·ld.
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((r1 - r0) * ld);
            parts.push(head);
            rest = tail;
        } else {
            parts.push(std::mem::take(&mut rest));
        }
    }
    parts
}

thread_local! {
    /// This thread's packed Ã (MC×KC).
    static PACKED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's packed B̃ (KC×NC).
    static PACKED_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a 64-byte-aligned slice of `len` floats from the thread-local buffer `key`
/// (grown if needed, contents unspecified). If the buffer is already in use on this thread — a
/// re-entrant call (a product run from inside another's chunk on the same thread) — a fresh
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
