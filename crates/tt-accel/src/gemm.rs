//! The GEMM ladder: single-precision `C = A·B`, one rung at a time, each rung a complete
//! implementation tested equal to the one below it.
//!
//! All matrices are row-major with a row stride: element `(i, j)` of `A` is `a[i * lda + j]`, so
//! a submatrix of a bigger matrix is passed by slicing at its first element and keeping the big
//! matrix's stride. `A` is m×k, `B` is k×n, `C` is m×n and is **overwritten** (no `beta`); only
//! the m×n elements of `C` are written — the gaps between rows (columns `n..ldc`) are never
//! touched.
//!
//! # The rungs, and what each one changes
//!
//! | rung | loop nest | what it fixes |
//! |------|-----------|---------------|
//! | [`Rung::Naive`] | i → j → p | nothing: the textbook definition, the reference |
//! | [`Rung::Reordered`] | i → p → j | the inner loop walks rows of B and C (unit stride) |
//! | [`Rung::Blocked`] | tiles, then i → p → j | data is reused while it is still in L1/L2 |
//! | [`Rung::PackedSimd`] | BLIS 5 loops + microkernel | registers, SIMD, FMA, no cache conflicts |
//! | [`Rung::Threaded`] | the same, rows split over workers | the second core |
//!
//! 1. **naive** (`i → j → p`, [`Rung::Naive`]): `c[i][j] = Σ_p a[i][p]·b[p][j]`. The inner loop walks
//!    *down a column of B*: every iteration jumps `ldb` floats, touches a new cache line and uses 4
//!    of its 64 bytes, and cannot be vectorized. At n ≥ 512 a column of B is n cache lines — it no
//!    longer survives in L1 between two `j`, so almost every load misses.
//! 2. **reordered** (`i → p → j`, [`Rung::Reordered`]): the same multiply-adds, with the two inner loops
//!    swapped: `c[i][..] += a[i][p] · b[p][..]`. The inner loop now walks a row of B and a row of C
//!    with unit stride: every byte of every cache line fetched is used, the hardware prefetcher
//!    sees two sequential streams, and the compiler vectorizes the loop (a scalar times a vector
//!    plus a vector): ~10× faster than naive here. But each row of C re-reads **all of B** (4 MiB
//!    at n = 1024), which does not fit in L2, so it leans on L3 bandwidth — and once B outgrows L3,
//!    on DRAM.
//! 3. **blocked** ([`Rung::Blocked`]): the reordered loop, run tile by tile so that a tile of B is read
//!    from cache many times before it is evicted. Tile sizes come from this machine's caches, read
//!    at run time ([`crate::caches::CacheSizes::detect`], [`block_sizes`]): a `KC × BLOCK_NC` tile
//!    of B (48×128 with a 48 KiB L1d) fills half of L1 and is reused by every row of an `MC`-row
//!    block of A (64 with a 1 MiB L2), whose `MC × KC` block (plus the C rows it updates) stays in L2 while the tile of B
//!    walks along n. The inner loops are still the scalar `c += a·b` of rung 2: what changes is
//!    where the loads come from (L1 instead of L3/DRAM), not how many there are — so on a CPU whose
//!    L3 holds all of B it is no faster than rung 2 (measured: equal up to n = 2048, 1.5× at n =
//!    3072; see [`Rung::Blocked`]'s source docs).
//! 4. **packed_simd** ([`Rung::PackedSimd`] and [`kernels`]): the BLIS/Goto algorithm. Rung 3 still
//!    loads and stores C for every multiply-add (plus a load of B: 3 memory operations per
//!    multiply-add); the fix is a
//!    **register-blocked microkernel** that keeps an MR×NR tile of C in vector registers for a
//!    whole KC-long dot product, so each step loads one row of NR B values and broadcasts MR A
//!    values to do MR·NR multiply-adds (AVX-512: 12×32 = 24 zmm accumulators, 24 FMAs per 2 loads +
//!    12 broadcasts). To feed it at full speed both operands are **packed** once per block into the
//!    exact order the microkernel reads them: B into KC×NR panels, A into MR×KC panels, contiguous
//!    and 64-byte aligned — no strides, few TLB misses, no cache-set conflicts from power-of-two
//!    `lda`, and zero padding at the edges so the microkernel always computes a full tile (edge
//!    tiles are then copied out partially). Block sizes come from the caches (see
//!    [`Blocking::derive`]): KC so one MR×KC panel of A fills half of L1 (it is reused by every NR
//!    panel of B), NC so the packed KC×NC panel of B fills half of L2 (reused by every MR panel of
//!    A), MC so the packed MC×KC block of A takes a few MiB of the shared L3 (reused by every NC
//!    panel). At AVX-512: KC = 512, NC = 256, MC = 2040. One microkernel per dispatch level:
//!    AVX-512 12×32, AVX2 6×16, scalar 4×8 (plain loops).
//! 5. **threaded** ([`Rung::Threaded`]): rung 4 over a [`Team`](crate::team::Team) of `threads`
//!    members (the process's one pool when that is its size). For each KC×NC panel the members
//!    pack B̃ together (disjoint groups of NR panels), then each claims contiguous ranges of
//!    MR-row panels of C, packs those panels of Ã and runs the same microkernel against the
//!    shared B̃ (which each core pulls into its own, private L2). Each element of C is computed
//!    by exactly one member with the same KC partition and the same microkernel, so the result is
//!    **bit-identical** to rung 4.
//!
//! Every rung is also callable through one entry point, [`gemm`], which checks the arguments
//! (returning an error naming the bad one) so a sweep can iterate over [`Rung::ALL`].
//!
//! # Numerical agreement between rungs
//! Rungs 1–3 add the k products of each element to zero in increasing `p`, one rounding each, so
//! they are bit-identical. Rung 4 sums in KC-long chunks in a register lane, with FMA (one rounding
//! per step instead of two) at the SIMD levels, so it agrees with them to f32 rounding: any
//! summation order satisfies |ĉ − c| ≤ γ_k·(|A|·|B|)_ij with γ_k = k·u/(1 − k·u), u = 2⁻²⁴, so two
//! rungs differ by at most 2·γ_k·(|A|·|B|)_ij — the bound the tests check. Within one dispatch
//! level, `packed_simd` and `threaded` (any thread count) are bit-identical.

mod blocked;
pub mod kernels;
mod packed_simd;
mod reference;
mod threaded;

use crate::bounds::strided_len;
use crate::dispatch::{self, Level};
use tt_tensor::TensorError;

pub use blocked::{block_sizes, BLOCK_NC};
pub use kernels::Blocking;
pub use threaded::MAX_THREADS;

/// One rung of the ladder (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rung {
    /// i → j → p triple loop; the reference every other rung is tested against.
    Naive,
    /// i → p → j: unit-stride inner loop over rows of B and C.
    Reordered,
    /// Cache tiles sized from L1/L2 around the reordered loop; scalar inner loops.
    Blocked,
    /// Packed panels + register-blocked SIMD microkernel for the dispatch level.
    PackedSimd,
    /// `PackedSimd` with the rows of C split over a team of `threads` members.
    Threaded,
}

impl Rung {
    /// Every rung, slowest first.
    pub const ALL: [Rung; 5] = [Rung::Naive, Rung::Reordered, Rung::Blocked, Rung::PackedSimd, Rung::Threaded];

    pub fn name(self) -> &'static str {
        match self {
            Rung::Naive => "naive",
            Rung::Reordered => "reordered",
            Rung::Blocked => "blocked",
            Rung::PackedSimd => "packed_simd",
            Rung::Threaded => "threaded",
        }
    }

    /// Parses a rung by [`name`](Rung::name).
    pub fn parse(s: &str) -> Option<Rung> {
        Rung::ALL.into_iter().find(|r| r.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether the rung's speed depends on the dispatch level (the first three are portable
    /// Rust and ignore it).
    pub fn uses_level(self) -> bool {
        matches!(self, Rung::PackedSimd | Rung::Threaded)
    }
}

impl std::fmt::Display for Rung {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `C = A·B` with the chosen rung (see the [module docs](self)).
///
/// - `level`: the instruction set for [`Rung::PackedSimd`] and [`Rung::Threaded`]; it is
///   clamped to [`dispatch::level()`] (so it can never exceed what this CPU has). Pass
///   `dispatch::level()` for the best available, or force a lower one to test that path.
///   Ignored by the other rungs.
/// - `threads`: workers for [`Rung::Threaded`], `1..=MAX_THREADS`; ignored by the other rungs.
/// - `a`: m×k with row stride `lda ≥ k`; `b`: k×n with `ldb ≥ n`; `c`: m×n with `ldc ≥ n`. A
///   slice must hold `(rows − 1)·stride + cols` elements (the last row need not be padded).
///
/// Returns the level actually used, or an `InvalidArgument` error naming the argument that is
/// inconsistent (a stride shorter than its row, a slice too short, zero or too many threads, an
/// overflowing size). On error nothing is written. An empty C (`m` or `n` zero) is left as is,
/// whatever the other sizes.
///
/// # Errors
/// As described above.
pub fn gemm(
    rung: Rung,
    level: Level,
    threads: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Result<Level, TensorError> {
    check_operand("a", "lda", a.len(), m, k, lda)?;
    check_operand("b", "ldb", b.len(), k, n, ldb)?;
    check_operand("c", "ldc", c.len(), m, n, ldc)?;
    if rung == Rung::Threaded && !(1..=MAX_THREADS).contains(&threads) {
        return Err(invalid(format!("threads = {threads}, expected 1..={MAX_THREADS}")));
    }
    let level = level.min(dispatch::level());
    if m == 0 || n == 0 {
        // Nothing to write, and no slice bounds `m` then (with `n = k = 0` every operand is
        // empty): the rungs' row loops would spin through up to `usize::MAX` empty rows.
        return Ok(level);
    }
    if k == 0 {
        // C = 0. A and B are empty and may be empty slices whatever their strides, which the
        // rungs (slicing row `i` of A at `i·lda`) must not see.
        zero_rows(c, ldc, m, n);
        return Ok(level);
    }
    let args = Args { a, lda, b, ldb, c, ldc, m, k, n };
    match rung {
        Rung::Naive => reference::naive(args),
        Rung::Reordered => reference::reordered(args),
        Rung::Blocked => blocked::blocked(args),
        Rung::PackedSimd => packed_simd::packed_simd(level, args),
        Rung::Threaded => threaded::threaded(level, threads, args)?,
    }
    Ok(level)
}

/// The checked operands of one product, passed from [`gemm`] to the rung implementations.
/// Invariant (established by [`check_operand`] and [`gemm`]): every `(i, j)` inside each
/// matrix's shape indexes inside its slice, i.e. `i * ld + j < len`, and no size is 0.
struct Args<'a> {
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    c: &'a mut [f32],
    ldc: usize,
    m: usize,
    k: usize,
    n: usize,
}

fn invalid(reason: String) -> TensorError {
    TensorError::InvalidArgument { op: "gemm", reason }
}

/// Checks that a `rows × cols` matrix with row stride `ld` fits in a slice of `len` elements.
fn check_operand(
    name: &str,
    ld_name: &str,
    len: usize,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<(), TensorError> {
    if ld < cols {
        return Err(invalid(format!("{ld_name} = {ld} is less than the {cols} columns of {name}")));
    }
    let need = strided_len(rows, ld, cols)
        .ok_or_else(|| invalid(format!("{name}: {rows}×{cols} with {ld_name} = {ld} overflows usize")))?;
    if len < need {
        return Err(invalid(format!(
            "{name} has {len} elements, but {rows}×{cols} with {ld_name} = {ld} needs {need}"
        )));
    }
    Ok(())
}

/// Sets the m×n matrix in `c` (row stride `ldc`) to zero, leaving the gaps alone.
fn zero_rows(c: &mut [f32], ldc: usize, m: usize, n: usize) {
    for i in 0..m {
        c[i * ldc..i * ldc + n].fill(0.0);
    }
}
