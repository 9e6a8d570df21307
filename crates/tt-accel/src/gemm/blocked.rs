//! Rung 3: cache blocking around the reordered (`i → p → j`) loop, scalar inner loops.
//!
//! Rung 2 reuses nothing across rows of A: every row of C streams all of B (k·n floats, 4 MiB
//! at n = 1024) from L3 or DRAM. Blocking cuts the three loops into tiles so that what a tile
//! reuses is still in cache when it is reused. Loop nest (outermost first):
//!
//! ```text
//! for ic in 0..m step MC            // MC rows of A and C
//!   for pc in 0..k step KC          // MC×KC block of A: stays in L2 for the whole jc sweep
//!     for jc in 0..n step NC        // KC×NC tile of B: loaded once into L1 ...
//!       for i in ic..ic+MC          // ... and reused by each of the MC rows
//!         for p in pc..pc+KC        //   C row segment (NC floats) stays in L1 across p
//!           for j in jc..jc+NC      //   unit stride, vectorized by the compiler
//!             c[i][j] += a[i][p] * b[p][j]
//! ```
//!
//! Tile sizes, derived from this machine's per-core caches, read at run time ([`block_sizes`];
//! the figures below are for a 48 KiB L1d and a 1 MiB L2):
//! - `BLOCK_NC = 128`: the inner loop's C row segment is 512 B (8 cache lines), long enough for
//!   the vectorized loop to run at speed and short enough to stay in L1.
//! - `KC = (L1d/2) / (NC·4 B)` (48): the KC×NC tile of B is half of L1 (the other half holds the
//!   C row segment, the A values and slack for associativity). Each tile is read from L2/L3 once
//!   and from L1 `MC` times.
//! - `MC = (L2/2) / (2048·4 B)` (64): every `pc` pass updates the whole MC×n panel of C again;
//!   that panel stays in half of L2 for n ≤ 2048 (256 KiB at n = 1024), together with the
//!   MC×KC block of A (12 KiB) that the `jc` sweep reuses.
//!
//! Each `c[i][j]` still receives its k products in increasing `p` order, one rounding each,
//! starting from zero — exactly the arithmetic of rungs 1 and 2, so the three agree bit for bit.
//!
//! What it buys, measured on the course machine (Zen 5, 32 MiB L3; rough, shared machine): at
//! n ≤ 2048 nothing — rung 2 and this rung both run at ~24–26 GFLOP/s, because B (≤ 16 MiB)
//! streams from L3 as fast as the scalar loop consumes it; the loop is bound by the load and
//! store of C that every multiply-add needs, not by where B comes from. At n = 3072, where B
//! (36 MiB) no longer fits in L3, rung 2 drops to ~16 GFLOP/s and this rung stays at ~24 (1.5×).
//! Blocking matters much more once the arithmetic is fast: rung 4's microkernel consumes
//! operands ~10× faster and would be starved by L3 without its (packed) blocks. What blocking
//! cannot fix is that every multiply-add still loads and stores C: rung 4 keeps a tile of C in
//! registers instead.

use super::{zero_rows, Args};
use crate::caches::CacheSizes;

/// Columns per tile of B/C: a 512 B C row segment for the vectorized inner loop.
pub const BLOCK_NC: usize = 128;

/// The blocked rung's tile sizes `(KC, MC)` for `caches`: the KC×NC tile of B fills half of L1d,
/// and an MC×2048 panel of C fills half of L2 (48 and 64 with a 48 KiB L1d and a 1 MiB L2).
pub const fn block_sizes(caches: CacheSizes) -> (usize, usize) {
    let kc = caches.l1d / 2 / (BLOCK_NC * 4);
    let mc = caches.l2 / 2 / (2048 * 4);
    (if kc == 0 { 1 } else { kc }, if mc == 0 { 1 } else { mc })
}

const _: () = assert!(matches!(block_sizes(CacheSizes::FALLBACK), (48, 64)));

pub(super) fn blocked(x: Args<'_>) {
    let Args { a, lda, b, ldb, c, ldc, m, k, n } = x;
    let (block_kc, block_mc) = block_sizes(CacheSizes::detect());
    zero_rows(c, ldc, m, n);
    for ic in (0..m).step_by(block_mc) {
        let rows = ic..m.min(ic + block_mc);
        for pc in (0..k).step_by(block_kc) {
            let kc = block_kc.min(k - pc);
            for jc in (0..n).step_by(BLOCK_NC) {
                let nc = BLOCK_NC.min(n - jc);
                for i in rows.clone() {
                    let c_seg = &mut c[i * ldc + jc..i * ldc + jc + nc];
                    let a_seg = &a[i * lda + pc..i * lda + pc + kc];
                    for (dp, &a_ip) in a_seg.iter().enumerate() {
                        let row = (pc + dp) * ldb + jc;
                        let b_seg = &b[row..row + nc];
                        for (cj, &bj) in c_seg.iter_mut().zip(b_seg) {
                            *cj += a_ip * bj;
                        }
                    }
                }
            }
        }
    }
}
