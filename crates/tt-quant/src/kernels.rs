//! Integer matrix products: `acc[r, o] = Σ_i a[r, i]·w[o, i]` with `a` in u8, `w` in i8 and the
//! sum in i32 — exact, so every SIMD path must equal the scalar reference bit for bit.
//!
//! ## Layout
//! Weights are packed once ([`PackedI8::new`]) in panels of 16 outputs and groups of 4 inputs:
//!
//! ```text
//! packed[((panel·K4 + k)·16 + lane)·4 + j] = W[panel·16 + lane, 4k + j]     (0 past the edges)
//! ```
//!
//! (for weights in groups of `g` inputs, `4k + j` counts the inputs with each group padded to a
//! multiple of 4: [`PackedI8::new_grouped`]), so one 64-byte load holds 4 consecutive inputs of 16
//! outputs — exactly the operand of AVX-512 VNNI's `vpdpbusd`, which multiplies 4 u8·i8 pairs per
//! 32-bit lane and adds them to the lane's i32 accumulator. Broadcasting 4 activation bytes of one
//! row against that load advances 16 outputs by 4 inputs in one instruction; a tile of up to 12
//! rows × 2 panels keeps 24 accumulators in registers (each weight load serves up to 12 rows, each
//! activation broadcast 2–4 panels). Activations are rows of `K4·4` bytes (zero-padded).
//!
//! ## Levels ([`IntLevel`], from tt-accel's dispatch)
//! - **AVX-512 VNNI**: `vpdpbusd` — no intermediate saturation, so exact for all codes.
//! - **AVX2**: without VNNI, the usual `vpmaddubsw` would saturate its 16-bit pair sums
//!   (255·127·2 > 32767) and be wrong for large codes; so this path widens both operands to 16
//!   bits (`vpmovzxbw` / `vpmovsxbw`) and multiplies pairs with `vpmaddwd` into i32 — exact, at
//!   half the work per instruction.
//! - **Scalar**: the reference; index order, wrapping i32 adds (which never wrap: see [`MAX_K`]).

use crate::error::{try_weight_buffer, try_with_capacity, QuantError, Result};
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod group;

/// Outputs per panel (one 512-bit register of i32).
pub const PANEL: usize = 16;

/// The widest input dimension whose dot products cannot overflow i32 even after the zero-point
/// corrections: `|Σ (a − Z_a)(w − Z_w)| ≤ K·255·255 < 2³¹`.
pub const MAX_K: usize = (i32::MAX as usize) / (255 * 255);

/// The most values this crate builds from a count that no stored data backs: the result of a
/// reference product over no inputs (`in = 0`), whose size comes from the caller's row and output
/// counts alone, and the rows of a matrix with no columns (each would get a scale, a code sum and
/// accumulators of its own: see [`crate::QuantizedMatrix::quantize`]). Sizes backed by data are
/// bounded by that data.
pub const MAX_UNBACKED: usize = 1 << 16;

/// An integer kernel level, ordered `Scalar < Avx2 < Avx512Vnni < Amx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntLevel {
    /// Portable Rust; the reference.
    Scalar,
    /// AVX2: 16-bit widening and `vpmaddwd`.
    Avx2,
    /// AVX-512 VNNI: `vpdpbusd`.
    Avx512Vnni,
    /// The matrix engine (AMX `tdpbusd`) for products of at least [`amx::MIN_ROWS`] rows, VNNI for
    /// fewer (and for the kernel families without a tile kernel: per-group int8, int4).
    Amx,
}

impl IntLevel {
    pub fn name(self) -> &'static str {
        match self {
            IntLevel::Scalar => "scalar",
            IntLevel::Avx2 => "avx2",
            IntLevel::Avx512Vnni => "avx512-vnni",
            IntLevel::Amx => "amx",
        }
    }

    /// The integer level for a tt-accel level: AVX-512 runs VNNI only where the CPU has it
    /// (otherwise the AVX2 path), so forcing tt-accel's level forces this one too.
    pub fn for_level(l: tt_accel::Level) -> IntLevel {
        match l {
            tt_accel::Level::Avx512 if vnni_detected() => IntLevel::Avx512Vnni,
            tt_accel::Level::Avx512 | tt_accel::Level::Avx2 => IntLevel::Avx2,
            tt_accel::Level::Scalar => IntLevel::Scalar,
        }
    }

    /// The level the current thread's tt-accel level maps to: AMX where it is usable and not
    /// forced off (`TT_ACCEL_LEVEL` naming a SIMD level, or inside `tt_accel::with_level`).
    pub fn current() -> IntLevel {
        match IntLevel::for_level(tt_accel::level()) {
            IntLevel::Avx512Vnni if tt_accel::dispatch::matrix_engine_allowed() && amx_ok() => IntLevel::Amx,
            l => l,
        }
    }

    /// The highest level this CPU and OS run (AMX included where usable, whatever is forced):
    /// what every requested level is clamped to.
    pub fn detected() -> IntLevel {
        match IntLevel::for_level(tt_accel::dispatch::detected()) {
            IntLevel::Avx512Vnni if amx_ok() => IntLevel::Amx,
            l => l,
        }
    }

    /// This level for a kernel family without a tile kernel (per-group int8, int4): AMX's
    /// fallback, VNNI.
    pub fn without_amx(self) -> IntLevel {
        self.min(IntLevel::Avx512Vnni)
    }

    /// Every integer level this process can run (what the tests iterate over): AMX only where it
    /// is usable and `TT_ACCEL_LEVEL` does not force it off.
    pub fn available() -> Vec<IntLevel> {
        let mut v: Vec<IntLevel> = tt_accel::dispatch::available().into_iter().map(IntLevel::for_level).collect();
        v.dedup();
        if v.last() == Some(&IntLevel::Avx512Vnni) && amx_ok() && tt_accel::dispatch::process_allows_matrix_engine() {
            v.push(IntLevel::Amx);
        }
        v
    }
}

impl std::fmt::Display for IntLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// AMX usable here ([`tt_accel::amx::usable`]) and the tile kernel agreeing with the scalar
/// kernel on a product that covers its edges (two full row tiles and a partial one, an odd
/// panel, an input tail), checked once per process. The tile kernel was written on a machine
/// without AMX; should it ever disagree on a CPU that has it, the int8 products fall back to VNNI
/// with a warning on stderr instead of returning wrong numbers.
pub fn amx_ok() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if tt_accel::amx::usable().is_ok() {
            let agrees = amx_self_check();
            if !agrees {
                eprintln!(
                    "tt-quant: the AMX int8 kernel disagreed with the scalar kernel on its self-check; using VNNI"
                );
            }
            return agrees;
        }
        false
    })
}

/// The tile kernel against the scalar kernel on a 37 × 100 · (33 × 100)ᵀ product.
#[cfg(target_arch = "x86_64")]
fn amx_self_check() -> bool {
    let (rows, in_f, out_f) = (37usize, 100usize, 33usize);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    };
    let w: Vec<i8> = (0..out_f * in_f).map(|_| next() as i8).collect();
    let Ok(p) = PackedI8::new(&w, out_f, in_f) else { return false };
    let (kb, stride, cols) = (p.row_bytes(), p.row_bytes().next_multiple_of(64), p.acc_cols());
    let mut a = vec![0u8; rows * kb];
    let mut padded = vec![0u8; rows * stride];
    for r in 0..rows {
        for i in 0..in_f {
            let v = next();
            a[r * kb + i] = v;
            padded[r * stride + i] = v;
        }
    }
    let (mut want, mut got) = (vec![0i32; rows * cols], vec![1i32; rows * cols]);
    // SAFETY: `a` holds rows·row_bytes bytes and `want` rows·acc_cols values; all panels, one thread.
    unsafe { scalar_matmul(&p, &a, rows, want.as_mut_ptr(), 0..cols / PANEL) };
    // SAFETY: AMX usable (the caller checked); `padded` holds rows·stride bytes, zero past each
    // row's inputs; `got` rows·acc_cols values; all panels, one thread.
    unsafe { amx::matmul(&p, padded.as_ptr(), stride, rows, got.as_mut_ptr(), 0..cols / PANEL) };
    want == got
}

fn vnni_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An int8 `[out, in]` matrix packed for the kernels (see the module docs).
///
/// Every size the kernels' pointer arithmetic relies on — the packed length, `row_bytes`,
/// `acc_cols` — is computed once, with checked arithmetic, in [`PackedI8::new_grouped`];
/// [`PackedI8::matmul`] checks the caller's slices against them (checked products) before any
/// pointer is formed.
#[derive(Debug, Clone)]
pub struct PackedI8 {
    packed: Vec<i8>,
    out_f: usize,
    in_f: usize,
    /// Inputs per group (`in_f` for an ungrouped matrix; at least 1).
    group: usize,
    /// 4-input blocks per group: `ceil(group / 4)`.
    gk4: usize,
    /// 4-input blocks per row: `groups · gk4`.
    k4: usize,
    /// `k4·4`: bytes per activation row.
    row_bytes: usize,
    /// `out` rounded up to a multiple of [`PANEL`].
    acc_cols: usize,
}

impl PackedI8 {
    /// Packs row-major codes `w` of an `[out_f, in_f]` matrix (one group: the whole row).
    ///
    /// # Errors
    /// `w.len() != out_f·in_f`, `in_f > MAX_K` (its sums could overflow i32), or `out_f` so
    /// large that its padded width overflows `usize`.
    pub fn new(w: &[i8], out_f: usize, in_f: usize) -> Result<PackedI8> {
        Self::new_grouped(w, out_f, in_f, in_f.max(1))
    }

    /// Packs row-major codes `w` of an `[out_f, in_f]` matrix whose rows are cut into groups of
    /// `group` inputs (the last one ragged when `group` does not divide `in_f`; a group wider than
    /// the row is the row). Each group starts on a 4-input block and its padding holds 0 codes,
    /// so a group's inputs are whole blocks of the kernels' loop, never shared with the next
    /// group; activation rows follow the same layout ([`PackedI8::padded_input`]).
    ///
    /// # Errors
    /// As [`PackedI8::new`], and `group = 0`.
    pub fn new_grouped(w: &[i8], out_f: usize, in_f: usize, group: usize) -> Result<PackedI8> {
        let op = "PackedI8::new";
        if out_f.checked_mul(in_f) != Some(w.len()) {
            return Err(QuantError::arg(op, format!("{} codes for a {out_f}×{in_f} matrix", w.len())));
        }
        if in_f > MAX_K {
            return Err(QuantError::arg(
                op,
                format!("{in_f} inputs: int32 accumulation is exact only up to {MAX_K} inputs"),
            ));
        }
        if group == 0 {
            return Err(QuantError::arg(op, "group size must be at least 1"));
        }
        let group = group.min(in_f.max(1));
        let gk4 = group.div_ceil(4);
        // in_f ≤ MAX_K and k4 ≤ in_f blocks (a block per input at worst, group 1): no overflow; the
        // panel sizes can (out_f near usize::MAX with in_f = 0 passes the product check above).
        let (panels, k4) = (out_f.div_ceil(PANEL), in_f.div_ceil(group) * gk4);
        let sizes = panels.checked_mul(PANEL).zip(panels.checked_mul(k4).and_then(|n| n.checked_mul(PANEL * 4)));
        // The tile kernel reads each panel in blocks of 16 input groups: past the last panel's
        // end by up to 15 groups of 64 bytes when `k4` is not a multiple of 16 (those codes meet
        // zero activations: see `amx`). Zeros there keep the read inside the buffer.
        let slack = (k4.next_multiple_of(16) - k4) * PANEL * 4;
        let sizes = sizes.and_then(|(c, n)| Some((c, n.checked_add(slack)?)));
        let Some((acc_cols, len)) = sizes else {
            return Err(QuantError::arg(op, format!("{out_f} outputs: the padded size overflows usize")));
        };
        let mut packed = try_weight_buffer(op, len)?;
        packed.resize(len, 0i8);
        let mut p = PackedI8 { packed, out_f, in_f, group, gk4, k4, row_bytes: k4 * 4, acc_cols };
        // `chunks_exact(0)` would panic; with no inputs there is nothing to pack.
        if in_f > 0 {
            for (o, row) in w.chunks_exact(in_f).enumerate() {
                for (i, &c) in row.iter().enumerate() {
                    let at = p.index(o, i);
                    p.packed[at] = c;
                }
            }
        }
        Ok(p)
    }

    /// Where `W[o, i]` is in `packed`.
    fn index(&self, o: usize, i: usize) -> usize {
        let pi = self.padded_input(i);
        (((o / PANEL) * self.k4 + pi / 4) * PANEL + o % PANEL) * 4 + pi % 4
    }

    /// The byte of an activation row that input `i` goes to: `i` itself for an ungrouped matrix
    /// or groups of a multiple of 4 inputs, else `i` with each earlier group padded to a
    /// multiple of 4.
    pub fn padded_input(&self, i: usize) -> usize {
        (i / self.group) * self.gk4 * 4 + i % self.group
    }

    /// Inputs per group (`in` for an ungrouped matrix, at least 1).
    pub fn group(&self) -> usize {
        self.group
    }

    /// Groups per row: `ceil(in / group)` (0 with no inputs).
    pub fn groups(&self) -> usize {
        self.in_f.div_ceil(self.group)
    }

    /// Bytes of an activation row per group: `group` rounded up to a multiple of 4.
    pub fn group_bytes(&self) -> usize {
        self.gk4 * 4
    }

    /// The row-major codes, unpacked (what [`crate::QuantizedMatrix`] holds).
    pub fn unpack(&self) -> Vec<i8> {
        let mut w = Vec::with_capacity(self.out_f * self.in_f);
        for o in 0..self.out_f {
            w.extend((0..self.in_f).map(|i| self.packed[self.index(o, i)]));
        }
        w
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.out_f, self.in_f)
    }

    /// Bytes per activation row: `in` rounded up to a multiple of 4 (each group's inputs, for a
    /// grouped matrix).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Accumulator columns per row: `out` rounded up to a multiple of 16.
    pub fn acc_cols(&self) -> usize {
        self.acc_cols
    }

    /// Bytes of the packed codes (padding included).
    pub fn bytes(&self) -> usize {
        self.packed.len()
    }

    /// The code of `W[o, i]`.
    ///
    /// # Panics
    /// `o ≥ out` or `i ≥ in` (the padding is no element of the matrix).
    pub fn code(&self, o: usize, i: usize) -> i8 {
        assert!(o < self.out_f && i < self.in_f, "PackedI8::code: ({o}, {i}) outside {}×{}", self.out_f, self.in_f);
        self.packed[self.index(o, i)]
    }

    /// `acc[r·acc_cols + o] = Σ_i a[r·row_bytes + padded_input(i)]·W[o, i]` for `r < rows`, at `level`
    /// (clamped to what the CPU runs). Padding bytes of `a` must be 0 (or are multiplied by 0
    /// weights: the result is the same); columns past `out` are written with 0.
    ///
    /// # Errors
    /// `a` shorter than `rows·row_bytes()` or `acc` shorter than `rows·acc_cols()` (products
    /// that overflow included).
    pub fn matmul(&self, level: IntLevel, a: &[u8], rows: usize, acc: &mut [i32]) -> Result<()> {
        // The one check every kernel level relies on: all pointer offsets below are < these.
        let need = |have: usize, per: usize| rows.checked_mul(per).is_some_and(|n| have >= n);
        if !need(a.len(), self.row_bytes) || !need(acc.len(), self.acc_cols) {
            return Err(QuantError::arg(
                "PackedI8::matmul",
                format!(
                    "{rows} rows need {}·{rows} activation bytes and {}·{rows} accumulators; got {} and {}",
                    self.row_bytes,
                    self.acc_cols,
                    a.len(),
                    acc.len()
                ),
            ));
        }
        // No outputs: nothing to write (and a loop over `rows` empty rows could run for ever).
        if self.acc_cols == 0 {
            return Ok(());
        }
        let level = level.min(IntLevel::detected());
        // The tile kernel for enough rows; below that AMX means its fallback, VNNI.
        let stride = self.row_bytes.next_multiple_of(64);
        let tiles = level == IntLevel::Amx
            && rows >= AMX_MIN_ROWS
            && self.row_bytes > 0
            && rows.checked_mul(stride).is_some_and(|n| n <= isize::MAX as usize);
        let level = if tiles { level } else { level.without_amx() };
        tt_accel::dispatch::record_level_use("int", level.name());
        let panels = self.acc_cols / PANEL;
        let out = AccPtr(acc.as_mut_ptr());
        // The tile kernel reads activation rows in 64-byte steps: rows of another length are
        // copied, zero-padded, into a per-thread buffer first (once, before any split).
        AMX_ROWS.with(|buf| {
            let mut buf = buf.borrow_mut();
            let a: &[u8] = if tiles && stride != self.row_bytes {
                buf.clear();
                buf.resize(rows * stride, 0);
                for (dst, src) in buf.chunks_exact_mut(stride).zip(a.chunks_exact(self.row_bytes)) {
                    dst[..self.row_bytes].copy_from_slice(src);
                }
                &buf[..]
            } else {
                a
            };
            self.run_split(level, a, stride, rows, out, panels);
        });
        Ok(())
    }

    /// The product at `level` (clamped and resolved by `matmul`) over all panels, split over the
    /// installed team when it is worth a hand-off. For `IntLevel::Amx`, `a` has rows of `stride`
    /// bytes (zero-padded); otherwise of `row_bytes`.
    fn run_split(&self, level: IntLevel, a: &[u8], stride: usize, rows: usize, out: AccPtr, panels: usize) {
        let run = |range: Range<usize>| match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AMX is usable (the level is clamped to `IntLevel::detected()`, which names
            // AMX only then); `a` holds rows·stride bytes, zero-padded (`matmul`); `out` holds
            // rows·acc_cols values; `range` ⊆ 0..panels, columns no other chunk writes.
            IntLevel::Amx => unsafe { amx::matmul(self, a.as_ptr(), stride, rows, out.get(), range) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is clamped to what the CPU supports (VNNI detected); `a` holds
            // rows·row_bytes bytes and `out` rows·acc_cols values (checked above); `range` ⊆
            // 0..panels, and no other call writes its columns (the chunks below are disjoint).
            IntLevel::Avx512Vnni => unsafe { vnni::matmul(self, a, rows, out.get(), range) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, with AVX2.
            IntLevel::Avx2 => unsafe { avx2::matmul(self, a, rows, out.get(), range) },
            // SAFETY: as above (portable code).
            _ => unsafe { scalar_matmul(self, a, rows, out.get(), range) },
        };
        // Split by output panels over this thread's team when the product is worth a hand-off.
        let macs = rows.saturating_mul(self.acc_cols).saturating_mul(self.row_bytes);
        match tt_accel::team::current().filter(|t| t.size() > 1 && panels > 1 && macs >= MIN_SPLIT_MACS) {
            Some(team) => {
                let chunks = tt_accel::team::chunks_for(panels, team.size(), macs / panels);
                team.for_each(chunks, &|c| run(tt_accel::team::share(panels, chunks, c)));
            }
            None => run(0..panels),
        }
    }
}

#[cfg(target_arch = "x86_64")]
use amx::MIN_ROWS as AMX_MIN_ROWS;
/// Where the tile kernel does not exist, no row count selects it.
#[cfg(not(target_arch = "x86_64"))]
const AMX_MIN_ROWS: usize = usize::MAX;

thread_local! {
    /// Activation rows zero-padded to a multiple of 64 bytes for the tile kernel.
    static AMX_ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The smallest product (multiply-adds) [`PackedI8::matmul`] splits over the installed team: below
/// it the hand-off (about a microsecond with a sleeping member) costs more than the product.
pub const MIN_SPLIT_MACS: usize = 1 << 16;

/// The accumulators, shared by the chunks of a split product, each writing only its own panels'
/// columns.
#[derive(Clone, Copy)]
struct AccPtr(*mut i32);
// SAFETY: chunks write disjoint columns, and `matmul` returns only after every chunk is done.
unsafe impl Send for AccPtr {}
// SAFETY: as above.
unsafe impl Sync for AccPtr {}

impl AccPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(self) -> *mut i32 {
        self.0
    }
}

/// The scalar kernel over the packed layout: per row and panel of `panels`, 16 accumulators
/// summed in input order.
///
/// # Safety
/// `acc` points to `rows·acc_cols` values; `panels` ⊆ `0..acc_cols/16`; `a` holds
/// `rows·row_bytes` bytes; no other thread writes these panels' columns meanwhile.
unsafe fn scalar_matmul(w: &PackedI8, a: &[u8], rows: usize, acc: *mut i32, panels: Range<usize>) {
    let (kb, cols) = (w.row_bytes(), w.acc_cols());
    for r in 0..rows {
        let ar = &a[r * kb..(r + 1) * kb];
        for panel in panels.clone() {
            let mut sum = [0i32; PANEL];
            for k in 0..w.k4 {
                let wk = &w.packed[(panel * w.k4 + k) * PANEL * 4..][..PANEL * 4];
                let ak = &ar[k * 4..k * 4 + 4];
                for (lane, s) in sum.iter_mut().enumerate() {
                    for j in 0..4 {
                        *s = s.wrapping_add(ak[j] as i32 * wk[lane * 4 + j] as i32);
                    }
                }
            }
            // SAFETY: row r < rows, panel < acc_cols/16: 16 values inside `acc` (contract).
            unsafe { std::ptr::copy_nonoverlapping(sum.as_ptr(), acc.add(r * cols + panel * PANEL), PANEL) };
        }
    }
}

/// The plainest possible reference over unpacked row-major codes: `acc[r, o] = Σ_i a[r, i]·w[o, i]`
/// (`a` is `rows × in`, unpadded). What the tests compare every level with.
///
/// # Errors
/// `a` shorter than `rows·in_f`, `w` shorter than `out_f·in_f`, `in_f > MAX_K` (the i32 sums
/// could overflow), a `rows·out_f` result that overflows `usize` or does not fit in memory (the
/// slices bound each factor, not the product: 2²⁰ rows against 2²⁰ outputs of one input ask for
/// 4 TiB), or, with no inputs (`in_f = 0`), a result (all zeros) of more than [`MAX_UNBACKED`]
/// values.
pub fn matmul_reference(a: &[u8], w: &[i8], rows: usize, in_f: usize, out_f: usize) -> Result<Vec<i32>> {
    let op = "matmul_reference";
    let fits = |have: usize, n: usize| n.checked_mul(in_f).is_some_and(|k| have >= k);
    let out = rows.checked_mul(out_f);
    // With in_f = 0 empty inputs pass for any rows and out_f.
    let backed = in_f > 0 || out.is_some_and(|n| n <= MAX_UNBACKED);
    let n = match out {
        Some(n) if fits(a.len(), rows) && fits(w.len(), out_f) && backed && in_f <= MAX_K => n,
        _ => {
            return Err(QuantError::arg(
                op,
                format!(
                    "{} activations and {} codes for {rows} rows of a {out_f}×{in_f} matrix (at most {MAX_K} inputs)",
                    a.len(),
                    w.len()
                ),
            ))
        }
    };
    let mut acc = try_with_capacity(op, n)?;
    // An empty row (in_f = 0) has no chunks: such results are all zeros.
    if in_f == 0 {
        acc.resize(n, 0);
        return Ok(acc);
    }
    for ar in a.chunks_exact(in_f).take(rows) {
        for wo in w.chunks_exact(in_f).take(out_f) {
            acc.push(ar.iter().zip(wo).map(|(&x, &c)| x as i32 * c as i32).sum());
        }
    }
    Ok(acc)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{PackedI8, PANEL};
    use std::ops::Range;

    /// Rows per tile.
    const MR: usize = 12;

    /// 16 independent `vpdpbusd` chains, `iters` rounds (the peak measurement).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn peak_loop(iters: usize) -> i32 {
        // Opaque operands: the compiler cannot fold the chains (and nothing is stored per round).
        let a = _mm512_set1_epi32(std::hint::black_box(0x0101_0101));
        let b = _mm512_set1_epi32(std::hint::black_box(0x0102_0304));
        let mut acc = [_mm512_setzero_si512(); 16];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut t = _mm512_setzero_si512();
        for v in acc {
            t = _mm512_add_epi32(t, v);
        }
        _mm512_reduce_add_epi32(t)
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX-512 VNNI; `a` holds `rows·row_bytes` bytes and `acc` points to
    /// `rows·acc_cols` values (checked by `PackedI8::matmul`); `range` ⊆ `0..acc_cols/16`, whose
    /// columns no other thread writes meanwhile.
    pub(super) unsafe fn matmul(w: &PackedI8, a: &[u8], rows: usize, acc: *mut i32, range: Range<usize>) {
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(MR);
            // SAFETY: rows r0..r0 + r lie inside `a` and `acc` (caller's contract); CPU features
            // forwarded.
            unsafe {
                let (ap, cp) = (a.as_ptr().add(r0 * w.row_bytes()), acc.add(r0 * w.acc_cols()));
                let range = range.clone();
                // Few rows: more panels per tile, for independent accumulation chains (a GEMV
                // streams the weights once; 4 chains hide vpdpbusd's latency).
                match r {
                    1 => panels::<1, 4>(w, ap, cp, range),
                    2 => panels::<2, 4>(w, ap, cp, range),
                    3 => panels::<3, 4>(w, ap, cp, range),
                    4 => panels::<4, 4>(w, ap, cp, range),
                    5 => panels::<5, 4>(w, ap, cp, range),
                    6 => panels::<6, 4>(w, ap, cp, range),
                    7 => panels::<7, 3>(w, ap, cp, range),
                    8 => panels::<8, 3>(w, ap, cp, range),
                    9 => panels::<9, 2>(w, ap, cp, range),
                    10 => panels::<10, 2>(w, ap, cp, range),
                    11 => panels::<11, 2>(w, ap, cp, range),
                    _ => panels::<12, 2>(w, ap, cp, range),
                }
            }
            r0 += r;
        }
    }

    /// The panels `range` for `R` rows, `P` panels at a time, then one at a time.
    ///
    /// # Safety
    /// `a` holds `R` rows of `row_bytes`, `acc` `R` rows of `acc_cols`; `range` ⊆ the panels;
    /// VNNI available.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn panels<const R: usize, const P: usize>(w: &PackedI8, a: *const u8, acc: *mut i32, range: Range<usize>) {
        let panels = range.end;
        let mut p = range.start;
        while p + P <= panels {
            // SAFETY: panels p..p + P exist; forwarded contract.
            unsafe { tile::<R, P>(w, a, acc, p) };
            p += P;
        }
        while p < panels {
            // SAFETY: as above.
            unsafe { tile::<R, 1>(w, a, acc, p) };
            p += 1;
        }
    }

    /// One `R × P` register tile over the whole input dimension.
    ///
    /// # Safety
    /// As [`panels`], with `p0 + P ≤ panels`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn tile<const R: usize, const P: usize>(w: &PackedI8, a: *const u8, acc: *mut i32, p0: usize) {
        let (k4, kb, cols) = (w.k4, w.row_bytes(), w.acc_cols());
        let base = w.packed.as_ptr();
        let mut s = [[_mm512_setzero_si512(); P]; R];
        for k in 0..k4 {
            let mut wv = [_mm512_setzero_si512(); P];
            for (p, v) in wv.iter_mut().enumerate() {
                // SAFETY: panel p0 + p < panels and k < k4: 64 bytes inside `packed`.
                *v = unsafe { _mm512_loadu_si512(base.add(((p0 + p) * k4 + k) * PANEL * 4) as *const _) };
            }
            for (r, row) in s.iter_mut().enumerate() {
                // SAFETY: row r < R, bytes 4k..4k + 4 < row_bytes: inside `a`.
                let four = unsafe { (a.add(r * kb + k * 4) as *const i32).read_unaligned() };
                let av = _mm512_set1_epi32(four);
                for (acc_rp, &wp) in row.iter_mut().zip(&wv) {
                    *acc_rp = _mm512_dpbusd_epi32(*acc_rp, av, wp);
                }
            }
        }
        for (r, row) in s.iter().enumerate() {
            for (p, v) in row.iter().enumerate() {
                // SAFETY: row r, columns (p0 + p)·16 .. +16 ≤ acc_cols: inside `acc`.
                unsafe { _mm512_storeu_si512(acc.add(r * cols + (p0 + p) * PANEL) as *mut _, *v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{PackedI8, PANEL};
    use std::ops::Range;

    /// # Safety
    /// The CPU has AVX2; `a` holds `rows·row_bytes` bytes and `acc` points to `rows·acc_cols`
    /// values (checked by `PackedI8::matmul`); `range` ⊆ `0..acc_cols/16`, whose columns no
    /// other thread writes meanwhile.
    pub(super) unsafe fn matmul(w: &PackedI8, a: &[u8], rows: usize, acc: *mut i32, range: Range<usize>) {
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(2);
            for panel in range.clone() {
                // SAFETY: rows r0..r0 + r lie inside `a` and `acc`; panel < panels; AVX2 present.
                unsafe {
                    let (ap, cp) = (a.as_ptr().add(r0 * w.row_bytes()), acc.add(r0 * w.acc_cols()));
                    if r == 2 {
                        tile::<2>(w, ap, cp, panel)
                    } else {
                        tile::<1>(w, ap, cp, panel)
                    }
                }
            }
            r0 += r;
        }
    }

    /// `s[r][q] +=` the products of row `r`'s activation bytes with quarter `q` of the 64-byte
    /// weight groups `ks` of `panel`, as `vpmaddwd` pair sums: the exact i32 tile that the plain
    /// and the per-group kernels (which sum one group's blocks at a time) both accumulate.
    ///
    /// # Safety
    /// `a` holds `R` rows of `row_bytes`; panel < panels; `ks` within `0..k4`; AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_blocks<const R: usize>(
        w: &PackedI8,
        a: *const u8,
        panel: usize,
        ks: std::ops::Range<usize>,
        s: &mut [[__m256i; 4]; R],
    ) {
        let (k4, kb) = (w.k4, w.row_bytes());
        let base = w.packed.as_ptr();
        for k in ks {
            let mut av = [_mm256_setzero_si256(); R];
            for (r, v) in av.iter_mut().enumerate() {
                // SAFETY: row r < R, bytes 4k..4k + 4 inside `a`.
                let four = unsafe { (a.add(r * kb + k * 4) as *const i32).read_unaligned() };
                *v = _mm256_cvtepu8_epi16(_mm_set1_epi32(four));
            }
            // SAFETY: panel < panels and k < k4: 64 bytes inside `packed`.
            let wp = unsafe { base.add((panel * k4 + k) * PANEL * 4) };
            for q in 0..4 {
                // SAFETY: quarter q of the 64-byte group.
                let w16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(wp.add(q * 16) as *const _) });
                for r in 0..R {
                    s[r][q] = _mm256_add_epi32(s[r][q], _mm256_madd_epi16(w16, av[r]));
                }
            }
        }
    }

    /// `R` rows × one panel. Each 16-byte quarter of a 64-byte group (4 outputs × 4 inputs) is
    /// widened to 16 i16; the row's 4 activation bytes, widened and repeated, multiply it with
    /// `vpmaddwd`, giving 2 partial sums per output, added at the end.
    ///
    /// # Safety
    /// `a` holds `R` rows of `row_bytes`, `acc` `R` rows of `acc_cols`; panel < panels; AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const R: usize>(w: &PackedI8, a: *const u8, acc: *mut i32, panel: usize) {
        let cols = w.acc_cols();
        let mut s = [[_mm256_setzero_si256(); 4]; R];
        // SAFETY: as this function's contract, for the blocks 0..k4.
        unsafe { sum_blocks(w, a, panel, 0..w.k4, &mut s) };
        for (r, row) in s.iter().enumerate() {
            let mut buf = [0i32; 2 * PANEL];
            for (q, v) in row.iter().enumerate() {
                // SAFETY: `buf` holds 4 × 8 i32.
                unsafe { _mm256_storeu_si256(buf.as_mut_ptr().add(q * 8) as *mut _, *v) };
            }
            for l in 0..PANEL {
                // SAFETY: row r, column panel·16 + l < acc_cols: inside `acc`.
                unsafe { *acc.add(r * cols + panel * PANEL + l) = buf[2 * l].wrapping_add(buf[2 * l + 1]) };
            }
        }
    }
}

/// Measured int8 multiply-accumulate peak of one core, in GOP/s (2 ops per MAC): `iters` rounds
/// of 16 independent register-resident `vpdpbusd` (AVX-512 VNNI). `None` where the CPU has no
/// VNNI. What the int8 GEMM is measured against.
pub fn vnni_peak_gops(iters: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if vnni_detected() {
        let start = std::time::Instant::now();
        // SAFETY: VNNI detected just above.
        let sink = unsafe { vnni::peak_loop(iters) };
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        // 16 instructions × 16 lanes × 4 MACs × 2 ops per round.
        return Some(iters as f64 * 16.0 * 16.0 * 4.0 * 2.0 / secs.max(1e-12) / 1e9);
    }
    let _ = iters;
    None
}
