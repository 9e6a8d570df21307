//! The int8 tile kernel: `acc = a · Wᵀ` with AMX `tdpbusd` over [`PackedI8`]'s layout, exactly
//! equal to the VNNI kernel (integer sums; the order of i32 additions cannot change an exact
//! result that never overflows, see [`super::MAX_K`]).
//!
//! ## Why the packed layout is already a tile layout
//! `tdpbusd tmmC, tmmA, tmmB` adds to each i32 `C[m][n]` the dot products
//! `Σ_k Σ_j A[m][4k + j] · B[k][4n + j]` (A unsigned bytes, B signed, 4 bytes per lane). A B tile
//! of 16 rows × 64 bytes is 16 groups of 4 inputs for 16 outputs — row `k`, bytes `4n..4n+4` =
//! `W[n, 4k..4k+4]` — which is exactly 16 consecutive 64-byte groups of one 16-output panel of
//! the packed weights (module docs of [`super`]). So B tiles load straight from the packed
//! weights with a 64-byte stride, no repacking, and A tiles straight from the activation rows.
//!
//! ## Blocking
//! Two row tiles (32 rows) × two panels (32 outputs) per call: four C tiles (`tmm0`–`tmm3`) stay
//! in the engine while each 64-input step loads two A tiles (`tmm4`, `tmm5`) and two B tiles
//! (`tmm6`, `tmm7`) and issues four `tdpbusd` — each A tile serves two panels, each B tile two row
//! tiles. A call configures the tiles (`ldtilecfg`), zeroes C, runs the input loop, stores C to a
//! 4 KiB scratch and releases the tiles (`tilerelease`): all tile state lives and dies inside one
//! `asm!` block, since Rust knows nothing of tile registers between blocks. The scratch is then
//! copied to the valid rows and columns of `acc` in plain Rust. A missing second row tile (16 or
//! fewer rows left) uses the one-row-tile variant; a missing second panel repeats the first
//! (its copy is skipped).
//!
//! ## Edges
//! Rows: a partial last row tile is configured with fewer rows. Inputs: the input loop runs
//! `ceil(row_bytes / 64)` steps of 64 bytes, so activation rows must be padded with zeros to a
//! multiple of 64 ([`PackedI8::matmul`] copies them when they are not); the last B tile of a panel
//! then reads up to 15 groups past the panel's end — into the next panel, or the zero slack
//! [`PackedI8::new_grouped`] leaves after the last — and those codes meet zero activations.
//!
//! Performance was not measured on the machine this was written on (AMD, no AMX); the tests
//! comparing it with VNNI run wherever AMX is usable and say so where it is not.

use std::ops::Range;

use super::{PackedI8, PANEL};

/// The fewest rows the tile kernel is used for: below a full row tile, most of each `tdpbusd`
/// would multiply padding, and one row's product is bound by reading the weights, which VNNI
/// does as fast (llama.cpp found AMX no faster for one row).
pub const MIN_ROWS: usize = 16;

/// Bytes of one tile row: 64 (16 i32 lanes, or 64 u8/i8 values).
const ROW: usize = 64;

/// The 64-byte tile configuration `ldtilecfg` reads (palette 1).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// C tiles 0, 1 and A tile 4 of `m0` rows; C tiles 2, 3 and A tile 5 of `m1` rows; B tiles
    /// 6, 7 of 16 rows; all 64 bytes wide.
    fn new(m0: usize, m1: usize) -> TileConfig {
        debug_assert!((1..=16).contains(&m0) && (1..=16).contains(&m1));
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1; byte 1 (start row) 0
        for (t, rows) in [m0, m0, m1, m1, m0, m1, 16, 16].into_iter().enumerate() {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(ROW as u16).to_le_bytes());
            c[48 + t] = rows as u8;
        }
        TileConfig(c)
    }
}

/// Four C tiles, 16 rows × 16 i32 each, as `tilestored` leaves them.
#[repr(C, align(64))]
struct Scratch([[i32; 256]; 4]);

/// `acc[r, o] = Σ a[r, ·]·W[o, ·]` for all `rows` and the outputs of panels `range`.
///
/// # Safety
/// [`tt_accel::amx::usable`] returned `Ok` in this process (the CPU and OS run AMX-INT8 and the
/// permission is granted); `w.row_bytes() > 0`; `a` points to `rows` rows of `stride` bytes,
/// `stride ≥ w.row_bytes().next_multiple_of(64)`, zero past each row's `row_bytes`; `acc` points
/// to `rows · acc_cols` writable i32; `range ⊆ 0..acc_cols/16`, and no other thread accesses those
/// panels' columns of `acc` meanwhile.
pub(super) unsafe fn matmul(
    w: &PackedI8,
    a: *const u8,
    stride: usize,
    rows: usize,
    acc: *mut i32,
    range: Range<usize>,
) {
    // The B reads of the last step end within the slack `new_grouped` leaves (≤ 15 groups).
    let steps = w.row_bytes().div_ceil(ROW);
    debug_assert!(steps > 0 && stride >= steps * ROW);
    let cols = w.acc_cols();
    let panel_bytes = w.k4 * PANEL * 4;
    let base = w.packed.as_ptr();
    let mut scratch = Scratch([[0; 256]; 4]);
    let mut r0 = 0;
    while r0 < rows {
        let m0 = (rows - r0).min(16);
        let m1 = (rows - r0 - m0).min(16);
        let cfg = TileConfig::new(m0, m1.max(1));
        // SAFETY: rows r0..r0 + m0 (+ m1) < rows: inside `a` (contract).
        let (a0, a1) = unsafe { (a.add(r0 * stride), a.add((r0 + m0) * stride)) };
        let mut p = range.start;
        while p < range.end {
            let two = p + 1 < range.end;
            // SAFETY: panel p (and p + 1 when `two`) < panels; each B tile read ends at most
            // 15 groups past its panel's end, inside the next panel or the zero slack.
            let (b0, b1) = unsafe { (base.add(p * panel_bytes), base.add((p + usize::from(two)) * panel_bytes)) };
            // SAFETY: `usable()` (contract) granted the tile state; the A reads stay in rows
            // r0..r0 + m0 + m1, `steps · 64 ≤ stride` bytes of each, the B reads as above,
            // the stores in `scratch`.
            unsafe {
                if m1 > 0 {
                    tiles_2x2(&cfg, a0, a1, stride, b0.cast(), b1.cast(), steps, &mut scratch);
                } else {
                    tiles_1x2(&cfg, a0, stride, b0.cast(), b1.cast(), steps, &mut scratch);
                }
            }
            // Scratch tile t = 2·(row tile) + panel: copy its valid rows to `acc`.
            for (t, tile) in scratch.0.iter().enumerate() {
                let (rt, pt) = (t / 2, t % 2);
                let m = if rt == 0 { m0 } else { m1 };
                if pt == 1 && !two {
                    continue;
                }
                for i in 0..m {
                    let r = r0 + rt * 16 + i;
                    // SAFETY: r < rows and panel p + pt < acc_cols/16: 16 i32 inside `acc`, in a
                    // panel of `range` (contract).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            tile[i * 16..].as_ptr(),
                            acc.add(r * cols + (p + pt) * PANEL),
                            PANEL,
                        )
                    };
                }
            }
            p += 1 + usize::from(two);
        }
        r0 += m0 + m1;
    }
}

/// Two row tiles × two panels over `steps` 64-input steps; C tiles stored to `out` in order
/// (rows 0, panel 0), (rows 0, panel 1), (rows 1, panel 0), (rows 1, panel 1).
///
/// # Safety
/// AMX usable and permitted; `a0`/`a1` readable for the configured rows × `steps · 64` bytes at
/// `stride`; `b0`/`b1` readable for `steps · 1024` bytes.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_2x2(
    cfg: &TileConfig,
    a0: *const u8,
    a1: *const u8,
    stride: usize,
    b0: *const i8,
    b1: *const i8,
    steps: usize,
    out: &mut Scratch,
) {
    // SAFETY: the caller's contract; every tile register used is declared clobbered, the tiles
    // are configured, used and released inside this block.
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{out} + {s64}*1], tmm0",
            "tilestored [{out} + {s64}*1 + 1024], tmm1",
            "tilestored [{out} + {s64}*1 + 2048], tmm2",
            "tilestored [{out} + {s64}*1 + 3072], tmm3",
            "tilerelease",
            cfg = in(reg) cfg.0.as_ptr(),
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            sa = in(reg) stride,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            s64 = in(reg) ROW,
            n = inout(reg) steps => _,
            out = in(reg) out.0.as_mut_ptr(),
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// One row tile × two panels; C tiles stored to `out`'s first two slots.
///
/// # Safety
/// As [`tiles_2x2`], without `a1`.
unsafe fn tiles_1x2(
    cfg: &TileConfig,
    a0: *const u8,
    stride: usize,
    b0: *const i8,
    b1: *const i8,
    steps: usize,
    out: &mut Scratch,
) {
    // SAFETY: as in `tiles_2x2`.
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilezero tmm1",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "add {a0}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{out} + {s64}*1], tmm0",
            "tilestored [{out} + {s64}*1 + 1024], tmm1",
            "tilerelease",
            cfg = in(reg) cfg.0.as_ptr(),
            a0 = inout(reg) a0 => _,
            sa = in(reg) stride,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            s64 = in(reg) ROW,
            n = inout(reg) steps => _,
            out = in(reg) out.0.as_mut_ptr(),
            out("tmm0") _, out("tmm1") _, out("tmm4") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// One core's measured `tdpbusd` peak in GOP/s (2 ops per multiply-add): `iters` rounds of four
/// register-resident `tdpbusd` on full 16×64 tiles (no loads in the loop). `None` where AMX is not
/// usable. What the tile kernel is measured against.
pub fn peak_gops(iters: usize) -> Option<f64> {
    tt_accel::amx::usable().ok()?;
    let cfg = TileConfig::new(16, 16);
    let zeros = Scratch([[0; 256]; 4]);
    let start = std::time::Instant::now();
    // SAFETY: AMX usable (checked above); the loads read `zeros` (4 KiB: two 1 KiB tiles at a
    // 64-byte stride from its start), the tiles are configured and released inside the block.
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{z} + {s64}*1]",
            "tileloadd tmm5, [{z} + {s64}*1]",
            "tileloadd tmm6, [{z} + {s64}*1 + 1024]",
            "tileloadd tmm7, [{z} + {s64}*1 + 1024]",
            "2:",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "dec {n}",
            "jnz 2b",
            "tilerelease",
            cfg = in(reg) cfg.0.as_ptr(),
            z = in(reg) zeros.0.as_ptr(),
            s64 = in(reg) ROW,
            n = inout(reg) iters.max(1) => _,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack, readonly),
        );
    }
    let secs = start.elapsed().as_secs_f64();
    // 4 tdpbusd × 16 rows × 16 lanes × 64 multiply-adds × 2 ops per round.
    Some(iters.max(1) as f64 * 4.0 * 16.0 * 16.0 * 64.0 * 2.0 / secs.max(1e-12) / 1e9)
}
