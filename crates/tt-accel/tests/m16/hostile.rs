//! Hostile arguments to every public function whose sizes guard `unsafe` code: 0, 1,
//! `usize::MAX`, and products that wrap (rows·in, rows·out, heads·head_dim, stride·rows). Each
//! call must compute the right thing, return an error, or panic with a message naming the
//! function — never write outside its buffers (checked with sentinels around the output), crash
//! or spin through `usize::MAX` empty rows (checked with a time limit).
//!
//! In a debug build an overflowing product panics on its own (overflow checks), so the tests
//! also demand the validation's own message; in a release build a wrapped product would pass a
//! naive check, and the sentinels catch the write.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ndarray::Array2;
use proptest::prelude::*;
use tt_accel::caches::CacheSizes;
use tt_accel::dispatch::{available, with_level, Level};
use tt_accel::fused;
use tt_accel::gemm::{block_sizes, gemm, Blocking, Rung};
use tt_accel::packed::PackedF32;
use tt_accel::sparse::BlockSparseF32;
use tt_accel::team::{share, Team, MAX_SIZE};
use tt_tensor::kernels::{
    decode_attention_q8_reference, linear_rows_reference, HeadsJob, PrefillHeadsJob, Q8Head, Rows,
};
use tt_tensor::projection::{project, Projection};

use crate::common::{max_diff, random};

/// What guards the floats around an output slice.
const SENTINEL: f32 = -7.25;
/// Sentinel floats on each side of a guarded output.
const GUARD: usize = 64;

/// `len` floats with `GUARD` sentinels on each side; the output is `buf[GUARD..GUARD + len]`.
fn guarded(len: usize) -> Vec<f32> {
    let mut buf = vec![SENTINEL; len + 2 * GUARD];
    buf[GUARD..GUARD + len].fill(f32::NAN);
    buf
}

fn assert_guards_intact(buf: &[f32], what: &str) {
    let n = buf.len();
    let bad = buf[..GUARD].iter().chain(&buf[n - GUARD..]).filter(|&&v| v.to_bits() != SENTINEL.to_bits()).count();
    assert_eq!(bad, 0, "{what}: {bad} floats written outside the output");
}

/// The panic message of `f`, or `None` if it returned.
fn panic_message<R>(f: impl FnOnce() -> R) -> Option<String> {
    let p = catch_unwind(AssertUnwindSafe(f)).err()?;
    Some(
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    )
}

/// Asserts that `f` panics with a message containing `needle`.
fn assert_panics_naming<R>(needle: &str, what: &str, f: impl FnOnce() -> R) {
    match panic_message(f) {
        Some(m) => assert!(m.contains(needle), "{what}: panicked with {m:?}, expected it to name {needle:?}"),
        None => panic!("{what}: returned, expected a panic naming {needle:?}"),
    }
}

/// Runs `f` on its own thread and returns its result, asserting that it finishes within `secs`
/// (a call that spins through `usize::MAX` empty rows would not; its thread is then left behind).
fn finishes_within<R: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {secs} s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

fn matrix(out_f: usize, in_f: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_vec((out_f, in_f), random(out_f * in_f, seed)).unwrap()
}

/// The projections under test for `w`: packed at every level (alone and split across a team) and
/// block-sparse at every level.
fn projections(w: &Array2<f32>) -> Vec<(String, Arc<dyn Projection>)> {
    let team = Arc::new(Team::new(2).unwrap());
    let mut all: Vec<(String, Arc<dyn Projection>)> = Vec::new();
    for level in available() {
        all.push((format!("packed {level}"), Arc::new(PackedF32::with_level(w, level))));
        all.push((
            format!("packed {level} team"),
            Arc::new(PackedF32::with_level(w, level).with_team(Arc::clone(&team))),
        ));
        all.push((format!("block16 {level}"), Arc::new(BlockSparseF32::from_dense(w).unwrap().at_level(level))));
    }
    all
}

/// The name each projection's `forward_rows` panics with.
fn op_name(name: &str) -> &'static str {
    if name.starts_with("packed") {
        "PackedF32::forward_rows"
    } else {
        "BlockSparseF32::forward_rows"
    }
}

// ---------------------------------------------------------------------------------------------
// Projections: PackedF32 and BlockSparseF32
// ---------------------------------------------------------------------------------------------

#[test]
fn projection_forward_rows_refuses_rows_whose_product_wraps() {
    // rows·4 wraps to 0 (and rows·4 + 4 to 4), so an unchecked size test would let the kernel
    // write row after row past an empty (or one-row) output.
    for (out_f, in_f) in [(4usize, 4usize), (4, 0), (4, 1), (20, 3)] {
        let w = matrix(out_f, in_f, 1);
        for (name, p) in projections(&w) {
            for rows in [1usize << 62, (1 << 62) + 1, usize::MAX, usize::MAX / out_f + 1] {
                for have in [0usize, 1] {
                    let x = random(4 * in_f, 2);
                    let mut buf = guarded(have * out_f);
                    let what = format!("{name} {out_f}×{in_f}, {rows} rows, {have} in y");
                    assert!(
                        project(p.as_ref(), &x, rows, None, &mut buf[GUARD..GUARD + have * out_f], &mut []).is_err()
                    );
                    assert_panics_naming(op_name(&name), &what, || {
                        p.forward_rows(&x, rows, None, &mut buf[GUARD..GUARD + have * out_f], &mut [])
                    });
                    assert_guards_intact(&buf, &what);
                }
            }
        }
    }
}

#[test]
fn projection_forward_rows_with_no_output_returns_at_once() {
    // Zero outputs: nothing to write for any number of rows, and no slice bounds `rows`.
    for in_f in [0usize, 1, 5] {
        let w = matrix(0, in_f, 3);
        for (name, p) in projections(&w) {
            let what = format!("{name} 0×{in_f}");
            // Any number of rows of an empty input: fine when in = 0, too short otherwise.
            let p2 = Arc::clone(&p);
            let returned = finishes_within(20, &what, move || {
                catch_unwind(AssertUnwindSafe(|| p2.forward_rows(&[], usize::MAX, None, &mut [], &mut []))).is_ok()
            });
            assert_eq!(returned, in_f == 0, "{what}");
            let r = project(p.as_ref(), &[], usize::MAX, None, &mut [], &mut []);
            assert_eq!(r.is_ok(), in_f == 0, "{what}");
        }
    }
}

#[test]
fn projection_forward_rows_edges_agree_with_the_reference() {
    for (out_f, in_f) in [(1usize, 1usize), (1, 0), (0, 1), (17, 1), (1, 17), (33, 0)] {
        let w = matrix(out_f, in_f, 4);
        let b = random(out_f, 5);
        for (name, p) in projections(&w) {
            for rows in [0usize, 1, 2, 5] {
                let x = random(rows * in_f, 6);
                let want = linear_rows_reference(&x, w.as_slice().unwrap(), Some(&b), rows, in_f, out_f);
                let mut buf = guarded(rows * out_f);
                p.forward_rows(&x, rows, Some(&b), &mut buf[GUARD..GUARD + rows * out_f], &mut []);
                let what = format!("{name} {out_f}×{in_f}, {rows} rows");
                assert_guards_intact(&buf, &what);
                assert!(max_diff(&buf[GUARD..GUARD + rows * out_f], &want) <= 1e-5, "{what}");
            }
            // A bias of the wrong length, and short slices by one element.
            let x = random(2 * in_f, 7);
            let (mut y, mut y_short) = (vec![0.0; 2 * out_f], vec![0.0; (2 * out_f).saturating_sub(1)]);
            if out_f > 0 {
                assert_panics_naming("bias", &name, || p.forward_rows(&x, 2, Some(&b[1..]), &mut y, &mut []));
            }
            if in_f > 0 {
                assert_panics_naming(op_name(&name), &name, || p.forward_rows(&x[1..], 2, None, &mut y, &mut []));
            }
            if out_f > 0 {
                assert_panics_naming(op_name(&name), &name, || p.forward_rows(&x, 2, None, &mut y_short, &mut []));
            }
        }
    }
}

#[test]
fn block_sparse_refuses_huge_shapes_before_allocating() {
    // Empty (no element to allocate), yet 2³⁶ block pointers if accepted.
    let wide = Array2::<f32>::zeros((1 << 40, 0));
    assert!(BlockSparseF32::from_dense(&wide).is_err(), "2^40 outputs");
    let tall = Array2::<f32>::zeros((0, 1 << 40));
    assert!(BlockSparseF32::from_dense(&tall).is_err(), "2^40 inputs");
    for (out_f, in_f) in [(usize::MAX, 6), (6, usize::MAX), (usize::MAX, usize::MAX), (1 << 40, 0), (1 << 33, 1 << 33)]
    {
        assert!(BlockSparseF32::from_parts(out_f, in_f, vec![0; 2], vec![], vec![]).is_err(), "{out_f}×{in_f}");
    }
    // The smallest shapes are fine.
    for (out_f, in_f) in [(0usize, 0usize), (1, 0), (0, 1), (1, 1)] {
        let m = BlockSparseF32::from_dense(&Array2::zeros((out_f, in_f))).unwrap();
        assert_eq!((m.shape(), m.density(), m.block_density()), ((out_f, in_f), 0.0, 0.0));
        let (ptr, cols, vals) = m.parts();
        let again = BlockSparseF32::from_parts(out_f, in_f, ptr.to_vec(), cols.to_vec(), vals.to_vec()).unwrap();
        assert_eq!(again.to_dense(), m.to_dense());
    }
}

/// A matrix with no inputs has no element, so it stores nothing per row block (a `u32::MAX × 0`
/// matrix once allocated 1 GiB of block pointers), and every output is its bias at every level.
#[test]
fn block_sparse_with_no_inputs_stores_no_block_pointers() {
    let huge = BlockSparseF32::from_dense(&Array2::zeros((u32::MAX as usize, 0))).unwrap();
    assert_eq!((huge.shape(), huge.parts().0, huge.storage_bytes()), ((u32::MAX as usize, 0), &[0u32][..], 4));
    assert!(BlockSparseF32::from_parts(u32::MAX as usize, 0, vec![0], vec![], vec![]).is_ok());
    assert!(BlockSparseF32::from_parts(20, 0, vec![0; 3], vec![], vec![]).is_err(), "pointers for no block");
    let bias: Vec<f32> = (0..20).map(|o| o as f32).collect();
    for level in available() {
        let m = BlockSparseF32::from_dense_with_level(&Array2::zeros((20, 0)), level).unwrap();
        assert_eq!(m.to_dense(), Array2::<f32>::zeros((20, 0)));
        let mut y = vec![f32::NAN; 3 * 20];
        project(&m, &[], 3, Some(&bias), &mut y, &mut []).unwrap();
        assert_eq!(y, bias.repeat(3), "{level}: the bias");
        project(&m, &[], 3, None, &mut y, &mut []).unwrap();
        assert_eq!(y, vec![0.0; 3 * 20], "{level}: zeros without a bias");
    }
}

// ---------------------------------------------------------------------------------------------
// The heads-parallel attention kernels (reached through the row-kernel table)
// ---------------------------------------------------------------------------------------------

/// A consistent prefill job: `heads` heads of `hd`, `slots` cached rows, `rows` queries.
struct Prefill {
    q: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    heads: usize,
    hd: usize,
    slots: usize,
    rows: usize,
}

impl Prefill {
    fn new(heads: usize, hd: usize, slots: usize, rows: usize, seed: u64) -> Prefill {
        Prefill {
            q: random(rows * heads * hd, seed),
            keys: random(heads * slots * hd, seed + 1),
            values: random(heads * slots * hd, seed + 2),
            heads,
            hd,
            slots,
            rows,
        }
    }

    fn job(&self) -> PrefillHeadsJob<'_> {
        PrefillHeadsJob {
            q: &self.q,
            q_stride: self.heads * self.hd,
            rows: self.rows,
            keys: &self.keys,
            values: &self.values,
            heads: self.heads,
            head_dim: self.hd,
            head_stride: self.slots * self.hd,
            slots: self.slots,
            scale: 0.5,
        }
    }

    /// Head by head with `attention_head_with` and the fused softmax, rows `out_stride` apart (what the kernel must equal).
    fn reference(&self, out_stride: usize) -> Vec<f32> {
        let (hd, n, slots) = (self.hd, self.rows, self.slots);
        let mut out = vec![f32::NAN; (n - 1) * out_stride + self.heads * hd];
        let mut probs = vec![0.0; n * slots];
        for h in 0..self.heads {
            let span = h * slots * hd..(h + 1) * slots * hd;
            let k = Rows { data: &self.keys[span.clone()], rows: slots, cols: hd, stride: hd };
            let v = Rows { data: &self.values[span], rows: slots, cols: hd, stride: hd };
            let q = Rows { data: &self.q[h * hd..], rows: n, cols: hd, stride: self.heads * hd };
            // The head-by-head loop with the fused softmax rows, as the one-thread table runs it.
            let softmax = |row: &mut [f32]| fused::softmax(row).unwrap();
            tt_tensor::kernels::attention_head_with(q, k, v, 0.5, &mut probs, &mut out[h * hd..], out_stride, &softmax);
        }
        out
    }
}

fn prefill_kernel() -> tt_tensor::kernels::PrefillHeadsFn {
    fused::row_kernels_threaded().prefill_attention_heads.expect("the threaded table has a prefill kernel")
}

fn decode_kernel() -> tt_tensor::kernels::DecodeHeadsFn {
    fused::row_kernels_threaded().decode_attention_heads.expect("the threaded table has a decode kernel")
}

#[test]
fn prefill_heads_refuse_an_out_stride_that_wraps() {
    let job = Prefill::new(2, 4, 3, 2, 10);
    // (rows − 1)·stride + 8 wraps to 7, 8, 0: an unchecked test would pass with 8 floats of output.
    for stride in [usize::MAX, usize::MAX - 7, usize::MAX / 2 + 1, 1 << 63] {
        let mut buf = guarded(8);
        let what = format!("out_stride {stride}");
        assert_panics_naming("prefill attention heads", &what, || {
            prefill_kernel()(&job.job(), &mut buf[GUARD..GUARD + 8], stride)
        });
        assert_guards_intact(&buf, &what);
    }
}

#[test]
fn prefill_heads_refuse_overlapping_rows_and_short_buffers() {
    let p = Prefill::new(3, 4, 5, 3, 20);
    let width = 12;
    let mut out = vec![0.0; 64];
    // Rows closer than a row's width: two members would write the same floats.
    for stride in [0usize, 1, 4, width - 1] {
        assert_panics_naming("overlap", &format!("stride {stride}"), || prefill_kernel()(&p.job(), &mut out, stride));
    }
    let bad = |f: &dyn Fn(&mut PrefillHeadsJob), needle: &str| {
        let mut job = p.job();
        f(&mut job);
        let mut out = vec![0.0; 3 * width];
        assert_panics_naming(needle, needle, || prefill_kernel()(&job, &mut out, width));
    };
    bad(&|j| j.q = &j.q[..j.q.len() - 1], "q holds");
    bad(&|j| j.keys = &j.keys[..j.keys.len() - 1], "keys and values");
    bad(&|j| j.values = &j.values[..j.values.len() - 1], "keys and values");
    bad(&|j| j.head_stride = usize::MAX, "overflows");
    bad(&|j| j.q_stride = usize::MAX, "overflows");
    bad(&|j| j.slots = usize::MAX, "overflows");
    bad(&|j| j.heads = usize::MAX, "overflows");
    bad(&|j| j.rows = 6, "queries over");
    let mut short = vec![0.0; 3 * width - 1];
    assert_panics_naming("out holds", "short out", || prefill_kernel()(&p.job(), &mut short, width));
    // Nothing to compute: no heads, no columns, no queries.
    let nothing: [fn(&mut PrefillHeadsJob); 3] = [|j| j.heads = 0, |j| j.head_dim = 0, |j| j.rows = 0];
    for f in nothing {
        let mut job = p.job();
        f(&mut job);
        prefill_kernel()(&job, &mut [], usize::MAX);
    }
}

#[test]
fn decode_heads_refuse_heads_times_head_dim_that_wraps() {
    let (q, kv) = (vec![0.5f32; 8], vec![0.5f32; 16]);
    for (heads, hd) in [(1usize << 32, 1usize << 32), (usize::MAX, 2), (2, usize::MAX), (1 << 62, 4)] {
        let job = HeadsJob { q: &q, keys: &kv, values: &kv, heads, head_dim: hd, head_stride: 0, slots: 1, scale: 0.5 };
        let mut buf = guarded(8);
        let what = format!("{heads} heads of {hd}");
        assert_panics_naming("overflows", &what, || decode_kernel()(&job, &mut buf[GUARD..GUARD + 8]));
        assert_guards_intact(&buf, &what);
    }
    // Consistent but for one thing each: named before any member starts.
    let job =
        |slots, scale| HeadsJob { q: &q, keys: &kv, values: &kv, heads: 2, head_dim: 4, head_stride: 8, slots, scale };
    let mut out = vec![0.0; 8];
    assert_panics_naming("queries over 0", "no slots", || decode_kernel()(&job(0, 0.5), &mut out));
    assert_panics_naming("keys and values", "3 slots", || decode_kernel()(&job(3, 0.5), &mut out));
    assert_panics_naming("not finite", "NaN scale", || decode_kernel()(&job(2, f32::NAN), &mut out));
    assert_panics_naming("out holds", "short out", || decode_kernel()(&job(2, 0.5), &mut out[..7]));
    // Each head equals the one-head kernel.
    decode_kernel()(&job(2, 0.5), &mut out);
    for h in 0..2 {
        let mut want = vec![0.0; 4];
        let span = h * 8..h * 8 + 8;
        fused::decode_attention_2pass(
            &q[h * 4..h * 4 + 4],
            &kv[span.clone()],
            &kv[span],
            0.5,
            &mut [0.0; 2],
            &mut want,
        )
        .unwrap();
        assert_eq!(&out[h * 4..h * 4 + 4], &want[..]);
    }
}

// ---------------------------------------------------------------------------------------------
// The single-head fused kernels
// ---------------------------------------------------------------------------------------------

#[test]
fn fused_row_kernels_at_zero_and_one() {
    for level in available() {
        with_level(level, |_| {
            fused::softmax(&mut []).unwrap();
            let mut one = [3.0f32];
            fused::softmax(&mut one).unwrap();
            assert_eq!(one, [1.0]);
            fused::bias_gelu(&mut [], &[]).unwrap();
            assert!(fused::bias_gelu(&mut [1.0], &[]).is_err(), "an empty bias fits only an empty y");
            assert!(fused::bias_gelu(&mut [1.0; 3], &[0.0; 2]).is_err());
            fused::gelu(&mut []);
            assert!(fused::layer_norm(&[], &[], &[], 1e-5, &mut []).is_err());
            let mut out = [f32::NAN];
            fused::layer_norm(&[2.0], &[1.0], &[0.5], 1e-5, &mut out).unwrap();
            assert_eq!(out, [0.5]);
            // One key: the output is its value.
            let mut out = [f32::NAN; 3];
            fused::decode_attention(&[1.0, 2.0, 3.0], &[0.1; 3], &[4.0, 5.0, 6.0], 1.0, &mut out).unwrap();
            assert!(max_diff(&out, &[4.0, 5.0, 6.0]) <= 1e-6);
            let mut scores = [f32::NAN; 1];
            fused::decode_attention_2pass(&[1.0; 3], &[0.1; 3], &[4.0, 5.0, 6.0], 1.0, &mut scores, &mut out).unwrap();
            assert!(max_diff(&out, &[4.0, 5.0, 6.0]) <= 1e-6);
            assert!(fused::decode_attention_2pass(&[1.0; 3], &[0.1; 6], &[0.0; 6], 1.0, &mut scores, &mut out).is_err());
        });
    }
}

#[test]
fn q8_attention_refuses_inconsistent_shapes_at_every_level() {
    let q = [0.5f32; 4];
    let (codes, scales) = (vec![3i8; 8], vec![0.1f32; 2]);
    let kv = |keys: usize, ks: usize, values: usize, vs: usize| Q8Head {
        keys: &codes[..keys],
        key_scales: &scales[..ks],
        values: &codes[..values],
        value_scales: &scales[..vs],
    };
    for level in available() {
        let mut out = [0.0f32; 4];
        let mut scores = [0.0f32; 2];
        for head in [kv(7, 2, 8, 2), kv(8, 2, 7, 2), kv(8, 2, 8, 1), kv(8, 1, 8, 1), kv(0, 0, 0, 0), kv(8, 0, 8, 0)] {
            assert!(fused::decode_attention_q8(&q, &head, 0.5, &mut out).is_err());
            assert!(fused::decode_attention_q8_2pass_at(level, &q, &head, 0.5, &mut scores, &mut out).is_err());
        }
        assert!(
            fused::decode_attention_q8_2pass_at(level, &q, &kv(8, 2, 8, 2), 0.5, &mut scores[..1], &mut out).is_err()
        );
        assert!(fused::decode_attention_q8(&[], &kv(0, 2, 0, 2), 0.5, &mut []).is_err());
        fused::decode_attention_q8_2pass_at(level, &q, &kv(8, 2, 8, 2), 0.5, &mut scores, &mut out).unwrap();
        let mut want = [0.0f32; 4];
        decode_attention_q8_reference(&q, &kv(8, 2, 8, 2), 0.5, &mut [0.0; 2], &mut want);
        assert!(max_diff(&out, &want) <= 1e-6, "{level}");
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------------

#[test]
fn gemm_with_an_empty_c_returns_at_once_whatever_m() {
    for rung in Rung::ALL {
        // No slice bounds m when n = k = 0: every operand is empty.
        finishes_within(20, rung.name(), move || {
            for (m, n) in [(usize::MAX, 0), (0, usize::MAX), (usize::MAX, 0)] {
                let mut c = [];
                gemm(rung, Level::Avx512, 2, &[], 0, &[], n, &mut c, n, m, 0, n).unwrap();
            }
        });
    }
}

#[test]
fn gemm_refuses_sizes_and_strides_that_wrap() {
    let (a, b) = (random(64, 1), random(64, 2));
    for rung in Rung::ALL {
        let mut buf = guarded(16);
        {
            let c = &mut buf[GUARD..GUARD + 16];
            let mut call = |lda: usize, ldb: usize, ldc: usize, m: usize, k: usize, n: usize| {
                gemm(rung, Level::Avx512, 2, &a, lda, &b, ldb, &mut *c, ldc, m, k, n).is_err()
            };
            // (m − 1)·ldc + n wraps to a small number for these.
            assert!(call(4, 4, usize::MAX, 2, 4, 4), "{rung}: ldc = MAX");
            assert!(call(4, 4, 1 << 63, 3, 4, 4), "{rung}: ldc = 2^63");
            assert!(call(usize::MAX, 4, 4, 2, 4, 4), "{rung}: lda = MAX");
            assert!(call(5, 1 << 62, 4, 4, 5, 4), "{rung}: ldb·4 wraps");
            assert!(call(4, 4, 4, usize::MAX, 4, 4), "{rung}: m = MAX");
            assert!(call(usize::MAX, usize::MAX, usize::MAX, 2, usize::MAX, usize::MAX), "{rung}: everything MAX");
            // A stride shorter than its row.
            assert!(call(3, 4, 4, 4, 4, 4), "{rung}: lda < k");
            // 1×1×1.
            assert!(!call(1, 1, 1, 1, 1, 1), "{rung}: 1×1×1");
        }
        assert_guards_intact(&buf, rung.name());
        assert_eq!(buf[GUARD], a[0] * b[0], "{rung}: 1×1×1");
        assert!(buf[GUARD + 1..GUARD + 16].iter().all(|v| v.is_nan()), "{rung}: only C's one element written");
    }
    // Threads outside 1..=MAX_THREADS.
    for threads in [0, usize::MAX] {
        assert!(gemm(Rung::Threaded, Level::Scalar, threads, &a, 1, &b, 1, &mut [0.0], 1, 1, 1, 1).is_err());
    }
}

/// Threads of this process (Linux), or `None` where `/proc` does not say.
fn process_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

#[test]
fn threaded_gemm_keeps_only_a_few_pools() {
    let Some(before) = process_threads() else { return };
    let (a, b) = (random(4, 1), random(4, 2));
    // One pool per thread count, 299 threads in all if every pool were kept.
    for threads in 2..=24 {
        gemm(Rung::Threaded, Level::Scalar, threads, &a, 2, &b, 2, &mut [0.0; 4], 2, 2, 2, 2).unwrap();
    }
    // At most the last 8 counts' pools remain (164 threads); dropped pools' threads exit
    // asynchronously, and other tests start threads too, hence the margin and the wait.
    let bound = before + 200;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while process_threads().is_some_and(|n| n > bound) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = process_threads().unwrap_or(0);
    assert!(after <= bound, "{after} threads after cycling through 23 pool sizes, {before} before");
}

#[test]
fn blocking_derive_never_divides_by_zero() {
    for (mr, nr) in [(0usize, 0usize), (1, 1), (usize::MAX, usize::MAX), (1 << 20, 1 << 20), (12, 32)] {
        let b = Blocking::derive(mr, nr, CacheSizes::FALLBACK);
        assert!(b.mr >= 1 && b.nr >= 1 && b.kc >= 1 && b.nc >= b.nr && b.mc >= b.mr, "{mr}×{nr}: {b:?}");
    }
    let here = CacheSizes::detect();
    assert_eq!(Blocking::derive(12, 32, here), Blocking::for_level(Level::Avx512), "the real shapes are unchanged");
    // Caches too small to hold one tile still give usable blocks.
    let tiny = CacheSizes { l1d: 1, l2: 1, l3: 1, detected: false };
    let b = Blocking::derive(12, 32, tiny);
    assert!(b.kc >= 1 && b.nc >= b.nr && b.mc >= b.mr, "{b:?}");
    assert_eq!(block_sizes(tiny), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// Team
// ---------------------------------------------------------------------------------------------

#[test]
fn share_is_exact_for_any_n() {
    for n in [0usize, 1, 10, usize::MAX / 3, usize::MAX - 1, usize::MAX] {
        for parts in [0usize, 1, 2, 3, 7, usize::MAX] {
            let p = parts.max(1);
            // Contiguous, covering 0..n, sizes differing by at most one (checked at both ends and
            // a few indices in between for huge `parts`).
            let idx: Vec<usize> = if p <= 8 { (0..p).collect() } else { vec![0, 1, p / 2, p - 2, p - 1] };
            for &i in &idx {
                let r = share(n, parts, i);
                assert!(r.start <= r.end && r.end <= n, "share({n}, {parts}, {i}) = {r:?}");
                assert_eq!(r.end, share(n, parts, i + 1).start, "share({n}, {parts}, {i}) is contiguous");
                let size = r.end - r.start;
                assert!(size == n / p || size == n / p + 1, "share({n}, {parts}, {i}) = {r:?}");
            }
            assert_eq!(share(n, parts, 0).start, 0);
            assert_eq!(share(n, parts, p - 1).end, n, "share({n}, {parts}, last) ends at n");
            for past in [p, p.saturating_add(1), usize::MAX] {
                assert_eq!(share(n, parts, past), n..n, "share({n}, {parts}, {past}) is empty");
            }
        }
    }
}

#[test]
fn a_nested_team_run_does_not_deadlock() {
    let team = Arc::new(Team::new(2).unwrap());
    let other = Arc::new(Team::new(2).unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let (t, o, h) = (Arc::clone(&team), Arc::clone(&other), Arc::clone(&hits));
    finishes_within(20, "nested run", move || {
        // The same team inside its own job, and another team inside that.
        t.run(&|_| {
            t.run(&|_| {
                o.run(&|_| {
                    h.fetch_add(1, Ordering::Relaxed);
                })
            })
        });
    });
    assert_eq!(hits.load(Ordering::Relaxed), 8, "every share of every level ran once");
    // A packed projection split across a team, called from inside that team's job.
    let w = matrix(40, 8, 9);
    let p = Arc::new(PackedF32::new(&w).with_team(Arc::clone(&team)));
    let (t, p2) = (Arc::clone(&team), Arc::clone(&p));
    finishes_within(20, "projection inside a job", move || {
        let x = random(8, 1);
        t.run(&|_| {
            let mut y = vec![0.0; 40];
            p2.forward_rows(&x, 1, None, &mut y, &mut []);
            let want = linear_rows_reference(&x, w.as_slice().unwrap(), None, 1, 8, 40);
            assert!(max_diff(&y, &want) <= 1e-5);
        });
    });
    // The team still works normally afterwards.
    let n = AtomicUsize::new(0);
    team.run(&|_| {
        n.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(n.load(Ordering::Relaxed), 2);
}

#[test]
fn team_new_refuses_an_absurd_size_before_starting_threads() {
    for size in [MAX_SIZE + 1, usize::MAX] {
        let e = Team::new(size).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{size}");
    }
    assert_eq!(Team::new(0).unwrap().size(), 1);
    assert_eq!(Team::new(1).unwrap().size(), 1);
}

// ---------------------------------------------------------------------------------------------
// Properties over the public kernels, with extreme-but-allocatable sizes
// ---------------------------------------------------------------------------------------------

/// A claimed row count: the real one, one more, or one whose products wrap.
fn claim(rows: usize, out_f: usize, pick: u8) -> usize {
    match pick % 5 {
        0 | 1 => rows,
        2 => rows + 1,
        3 => usize::MAX,
        _ => usize::MAX / out_f.max(2) + 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every projection either agrees with the plain reference (when the slices hold the claimed
    /// rows) or panics naming itself — with nothing written outside the output either way.
    #[test]
    fn projections_agree_or_refuse(out_f in 0usize..40, in_f in 0usize..40, rows in 0usize..7, pick in any::<u8>(), seed in any::<u64>()) {
        let w = matrix(out_f, in_f, seed);
        let b = random(out_f, seed ^ 1);
        let x = random(rows * in_f, seed ^ 2);
        let claimed = claim(rows, out_f, pick);
        let fits = |len: usize, per: usize| claimed.checked_mul(per).is_some_and(|n| n <= len);
        let ok = fits(x.len(), in_f) && fits(rows * out_f, out_f);
        for (name, p) in projections(&w) {
            let mut buf = guarded(rows * out_f);
            let r = panic_message(|| p.forward_rows(&x, claimed, Some(&b), &mut buf[GUARD..GUARD + rows * out_f], &mut []));
            assert_guards_intact(&buf, &name);
            match r {
                None => {
                    prop_assert!(ok, "{name}: {claimed} rows accepted");
                    let n = claimed.min(rows);
                    let want = linear_rows_reference(&x, w.as_slice().unwrap(), Some(&b), n, in_f, out_f);
                    prop_assert!(max_diff(&buf[GUARD..GUARD + n * out_f], &want) <= 1e-5, "{name}");
                }
                Some(m) => prop_assert!(!ok && m.contains(op_name(&name)), "{name}: {m}"),
            }
        }
    }

    /// Every GEMM rung at every level agrees with the naive one, or refuses strides that do not
    /// fit; C's gaps and surroundings are never written.
    #[test]
    fn gemm_agrees_or_refuses(m in 0usize..20, k in 0usize..20, n in 0usize..20, pads in any::<[u8; 3]>(), seed in any::<u64>()) {
        let ld = |cols: usize, pad: u8| match pad % 8 {
            0 => usize::MAX,
            1 => cols.saturating_sub(1),
            p => cols + p as usize - 2,
        };
        let (lda, ldb, ldc) = (ld(k, pads[0]), ld(n, pads[1]), ld(n, pads[2]));
        let len = |rows: usize, ld: usize, cols: usize| if rows == 0 || cols == 0 { 0 } else { (rows - 1).saturating_mul(ld).saturating_add(cols).min(4096) };
        let a = random(len(m, lda, k), seed);
        let b = random(len(k, ldb, n), seed ^ 1);
        let c_len = len(m, ldc, n);
        let mut want = vec![f32::NAN; c_len];
        let reference = gemm(Rung::Naive, Level::Scalar, 1, &a, lda, &b, ldb, &mut want, ldc, m, k, n);
        for level in available() {
            for rung in Rung::ALL {
                let mut buf = guarded(c_len);
                let r = gemm(rung, level, 2, &a, lda, &b, ldb, &mut buf[GUARD..GUARD + c_len], ldc, m, k, n);
                assert_guards_intact(&buf, rung.name());
                prop_assert_eq!(r.is_ok(), reference.is_ok(), "{} at {}", rung, level);
                if r.is_ok() {
                    for i in 0..m {
                        for j in 0..n {
                            let (got, w) = (buf[GUARD + i * ldc + j], want[i * ldc + j]);
                            prop_assert!((got - w).abs() <= 1e-4, "{} at {} ({}, {}): {} vs {}", rung, level, i, j, got, w);
                        }
                        // The gap after row i is untouched (NaN as filled).
                        if n > 0 && i + 1 < m {
                            prop_assert!(buf[GUARD + i * ldc + n..GUARD + (i + 1) * ldc].iter().all(|v| v.is_nan()));
                        }
                    }
                }
            }
        }
    }

    /// The threaded prefill kernel equals the head-by-head loop for any consistent job, and
    /// refuses, naming itself, any output stride or buffer that does not fit.
    #[test]
    fn prefill_heads_agree_or_refuse(heads in 1usize..5, hd in 1usize..12, slots in 1usize..12, rows_pick in any::<usize>(), stride_pick in 0u8..6, seed in any::<u64>()) {
        let rows = 1 + rows_pick % slots;
        let p = Prefill::new(heads, hd, slots, rows, seed);
        let width = heads * hd;
        let out_stride = match stride_pick {
            0 | 1 => width,
            2 => width + 3,
            3 => width - 1,
            4 => usize::MAX,
            _ => usize::MAX / rows.max(2) + 1,
        };
        let ok = rows == 1 || (out_stride >= width && (rows - 1).checked_mul(out_stride).is_some_and(|n| n < 1 << 20));
        let len = if ok { (rows - 1) * out_stride + width } else { rows * width };
        let mut buf = guarded(len);
        let r = panic_message(|| prefill_kernel()(&p.job(), &mut buf[GUARD..GUARD + len], out_stride));
        assert_guards_intact(&buf, "prefill heads");
        match r {
            None => {
                prop_assert!(ok, "stride {} accepted", out_stride);
                let want = p.reference(out_stride);
                for t in 0..rows {
                    let row = t * out_stride..t * out_stride + width;
                    prop_assert_eq!(&buf[GUARD + row.start..GUARD + row.end], &want[row]);
                }
            }
            Some(m) => prop_assert!(!ok && m.contains("prefill attention heads"), "{}", m),
        }
    }

    /// The threaded decode kernel equals the one-head kernel head by head for any consistent job
    /// (heads may share their cache: stride 0), and refuses, naming itself, a cache or output too
    /// short for every head.
    #[test]
    fn decode_heads_agree_or_refuse(heads in 1usize..6, hd in 1usize..40, slots in 1usize..40, stride_pick in 0u8..4, short in any::<bool>(), seed in any::<u64>()) {
        let per_head = slots * hd;
        let head_stride = match stride_pick {
            0 | 1 => per_head,
            2 => per_head + 5,
            _ => 0,
        };
        let kv_len = (heads - 1) * head_stride + per_head;
        let (q, keys, values) = (random(heads * hd, seed), random(kv_len, seed ^ 1), random(kv_len, seed ^ 2));
        let job = HeadsJob { q: &q, keys: &keys[..kv_len - short as usize], values: &values, heads, head_dim: hd, head_stride, slots, scale: 0.25 };
        let mut buf = guarded(heads * hd);
        let r = panic_message(|| decode_kernel()(&job, &mut buf[GUARD..GUARD + heads * hd]));
        assert_guards_intact(&buf, "decode heads");
        match r {
            None => {
                prop_assert!(!short, "a short cache accepted");
                for h in 0..heads {
                    let span = h * head_stride..h * head_stride + per_head;
                    let mut want = vec![0.0; hd];
                    fused::decode_attention_2pass(&q[h * hd..(h + 1) * hd], &keys[span.clone()], &values[span], 0.25, &mut vec![0.0; slots], &mut want).unwrap();
                    prop_assert_eq!(&buf[GUARD + h * hd..GUARD + (h + 1) * hd], &want[..]);
                }
            }
            Some(m) => prop_assert!(short && m.contains("decode attention heads"), "{}", m),
        }
    }

    /// The fused one-query kernels (f32 and int8) agree with their references at every level for
    /// any `head_dim` and cache length, including 1.
    #[test]
    fn decode_attention_agrees_at_any_size(hd in 1usize..70, slots in 1usize..70, seed in any::<u64>()) {
        let q = random(hd, seed);
        let (k, v) = (random(slots * hd, seed ^ 1), random(slots * hd, seed ^ 2));
        let mut probs = vec![0.0; slots];
        let mut want = vec![0.0; hd];
        fused::unfused::decode_attention(&q, &k, &v, 0.3, &mut probs, &mut want).unwrap();
        let codes = |x: &[f32]| x.iter().map(|v| (v * 100.0) as i8).collect::<Vec<_>>();
        let (kc, vc, sc) = (codes(&k), codes(&v), vec![0.01f32; slots]);
        let head = Q8Head { keys: &kc, key_scales: &sc, values: &vc, value_scales: &sc };
        let mut want_q8 = vec![0.0; hd];
        decode_attention_q8_reference(&q, &head, 0.3, &mut probs, &mut want_q8);
        for level in available() {
            let mut out = vec![f32::NAN; hd];
            fused::decode_attention_at(level, &q, &k, &v, 0.3, &mut out).unwrap();
            prop_assert!(max_diff(&out, &want) <= 2e-6, "{}", level);
            fused::decode_attention_2pass_at(level, &q, &k, &v, 0.3, &mut vec![f32::NAN; slots], &mut out).unwrap();
            prop_assert!(max_diff(&out, &want) <= 2e-6, "{} two-pass", level);
            fused::decode_attention_q8_2pass_at(level, &q, &head, 0.3, &mut vec![f32::NAN; slots], &mut out).unwrap();
            prop_assert!(max_diff(&out, &want_q8) <= 1e-5, "{} int8", level);
        }
    }
}

/// Packing a matrix with 2⁴⁰ rows and no columns copies nothing and must not walk the rows.
#[test]
fn packing_a_huge_empty_matrix_does_not_walk_its_rows() {
    let p = finishes_within(20, "PackedF32::new((2^40, 0))", || PackedF32::new(&Array2::zeros((1usize << 40, 0))));
    assert_eq!((p.shape(), p.storage_bytes()), ((1 << 40, 0), 0));
}

/// Packing the stored weight of a layer with a forward transform would be silently wrong.
#[test]
fn packing_refuses_a_layer_that_carries_a_forward_transform() {
    let mut m = tt_tensor::nn::Sequential::new().layer(tt_tensor::nn::Linear::new(4, 3, true, 0));
    tt_tensor::nn::map_linears(&mut m, |_, l| {
        l.set_transform(Some(Arc::new(tt_tensor::testing::DoubledWeight)));
        Ok(())
    })
    .unwrap();
    let e = tt_accel::packed::pack_linears(&mut m).unwrap_err().to_string();
    assert!(e.contains("\"0\"") && e.contains("doubled"), "{e}");
}
