//! Attention split by heads across the team's members: the threaded table's prefill and decode
//! kernels, and the one check of their geometry.

use super::{decode_attention_2pass, softmax_at};
use crate::bounds::strided_len;
use crate::dispatch;
use tt_tensor::kernels::{HeadsJob, PrefillHeadsJob};

/// A prefill chunk's heads split across [`crate::team::global`]'s members; each head is computed
/// by one member with `tt_tensor::kernels::attention_head_with` and the fused softmax rows (at the
/// caller's level) into its own scratch, then copied to its columns of `out` — so the result
/// equals the one-thread table's head-by-head loop bit for bit. One head per chunk; the scratch is
/// per thread, grown once to the longest prefill seen.
///
/// Panics, naming the problem, if the job's geometry is inconsistent (see [`check_heads`]) or the
/// probabilities' scratch cannot be allocated: the kernel table has no error channel, and the
/// decoder sizes every buffer itself.
pub(super) fn prefill_heads_on_team(job: &PrefillHeadsJob, out: &mut [f32], out_stride: usize) {
    use tt_tensor::kernels::{attention_head_with, Rows};
    let (hd, nh, n, slots) = (job.head_dim, job.heads, job.rows, job.slots);
    let geometry = Heads {
        heads: nh,
        head_dim: hd,
        head_stride: job.head_stride,
        slots,
        keys_len: job.keys.len(),
        values_len: job.values.len(),
        rows: n,
        q: (job.q.len(), job.q_stride),
        out: (out.len(), out_stride),
    };
    if !check_heads(&geometry).unwrap_or_else(|e| panic!("fused prefill attention heads: {e}")) {
        return;
    }
    // `n × slots` cannot overflow (checked above) but may be more than memory holds: refuse it
    // rather than abort the process inside a member.
    let scratch = |len: usize| {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .unwrap_or_else(|e| panic!("fused prefill attention heads: cannot allocate {len} floats of scratch: {e}"));
        v.resize(len, 0.0f32);
        v
    };
    // The softmax rows run at the caller's level on every member (`with_level` does not reach
    // them), so the split equals the one-thread table's result bit for bit.
    let level = dispatch::level();
    // A probability row holds `slots` values, and `check_heads` ensured slots ≥ rows ≥ 1, so the
    // one error softmax has — an empty row — cannot occur.
    let softmax_row = |row: &mut [f32]| softmax_at(level, row).expect("a softmax row is not empty");
    let head = |h: usize, probs: &mut [f32], local: &mut [f32]| {
        let span = h * job.head_stride..h * job.head_stride + slots * hd;
        let k = Rows { data: &job.keys[span.clone()], rows: slots, cols: hd, stride: hd };
        let v = Rows { data: &job.values[span], rows: slots, cols: hd, stride: hd };
        let q = Rows { data: &job.q[h * hd..], rows: n, cols: hd, stride: job.q_stride };
        attention_head_with(q, k, v, job.scale, probs, local, hd, &softmax_row);
    };
    let ptr = HeadsOut(out.as_mut_ptr(), out.len());
    let write = |h: usize, local: &[f32]| {
        for t in 0..n {
            let dst = t * out_stride + h * hd;
            // SAFETY: t < rows and h < heads, so row t's columns of head h end at most at
            // (rows − 1)·out_stride + heads·head_dim ≤ out.len() (`check_heads`); rows do not
            // overlap (out_stride ≥ heads·head_dim), so no other member writes these floats.
            unsafe { std::ptr::copy_nonoverlapping(local[t * hd..].as_ptr(), ptr.at(dst, hd), hd) };
        }
    };
    let team = heads_team().filter(|t| t.size() > 1 && nh > 1);
    let level = dispatch::level();
    // One head per chunk: a prefill head is long enough that claiming it costs nothing.
    let run = |h: usize| {
        PREFILL_SCRATCH.with(|cell| {
            let mut bufs = cell.borrow_mut();
            let (probs, local) = &mut *bufs;
            // Grown once per thread to the largest chunk seen (re-zeroing is not needed: the
            // head kernel writes every value it reads).
            if probs.len() < n * slots {
                *probs = scratch(n * slots);
            }
            if local.len() < n * hd {
                *local = scratch(n * hd);
            }
            crate::dispatch::with_level(level, |_| {
                head(h, &mut probs[..n * slots], &mut local[..n * hd]);
                write(h, &local[..n * hd]);
            });
        })
    };
    match team {
        Some(t) => t.for_each(nh, &run),
        None => (0..nh).for_each(run),
    }
}

/// The geometry of a heads-parallel attention job: `heads` heads of `head_dim`, head `h`'s
/// `slots` cached rows at `h·head_stride` in `keys` and `values`, `rows` queries per head
/// (`q`: `(len, stride)`, head `h` at column `h·head_dim`), outputs likewise in `out`.
#[derive(Debug)]
struct Heads {
    heads: usize,
    head_dim: usize,
    head_stride: usize,
    slots: usize,
    keys_len: usize,
    values_len: usize,
    rows: usize,
    q: (usize, usize),
    out: (usize, usize),
}

/// The one place the heads-parallel kernels' sizes are checked, with overflow-checked arithmetic,
/// before any member forms a pointer into the output. `Ok(false)`: nothing to compute (no head,
/// no column or no query).
///
/// # Errors
/// A size that overflows `usize`, more queries than cached positions, a buffer too short for
/// every head, or output rows that overlap (`out` stride below `heads·head_dim` with several
/// rows: members writing different heads of overlapping rows would race).
fn check_heads(g: &Heads) -> std::result::Result<bool, String> {
    if g.heads == 0 || g.head_dim == 0 || g.rows == 0 {
        return Ok(false);
    }
    let overflow = |what: &str| format!("{what} overflows usize in {g:?}");
    let width = g.heads.checked_mul(g.head_dim).ok_or_else(|| overflow("heads × head_dim"))?;
    if g.rows > g.slots {
        return Err(format!("{} queries over {} cached positions", g.rows, g.slots));
    }
    g.rows.checked_mul(g.slots).ok_or_else(|| overflow("rows × slots (the probabilities)"))?;
    let kv = g
        .slots
        .checked_mul(g.head_dim)
        .and_then(|per_head| strided_len(g.heads, g.head_stride, per_head))
        .ok_or_else(|| overflow("the cache's extent"))?;
    if g.keys_len < kv || g.values_len < kv {
        return Err(format!("keys and values hold {} and {} floats, the heads need {kv}", g.keys_len, g.values_len));
    }
    let ((q_len, q_stride), (out_len, out_stride)) = (g.q, g.out);
    let need_q = strided_len(g.rows, q_stride, width).ok_or_else(|| overflow("the queries' extent"))?;
    if q_len < need_q {
        return Err(format!("q holds {q_len} floats, {} rows of {width} with stride {q_stride} need {need_q}", g.rows));
    }
    if g.rows > 1 && out_stride < width {
        return Err(format!("out stride {out_stride} is less than the {width} columns of a row: rows would overlap"));
    }
    let need_out = strided_len(g.rows, out_stride, width).ok_or_else(|| overflow("the output's extent"))?;
    if out_len < need_out {
        return Err(format!(
            "out holds {out_len} floats, {} rows of {width} with stride {out_stride} need {need_out}",
            g.rows
        ));
    }
    Ok(true)
}

/// Output buffer shared by team members that write disjoint heads.
#[derive(Clone, Copy)]
struct HeadsOut(*mut f32, usize);

// SAFETY: each member writes only the `head_dim` floats of its own heads, and `Team::run` returns
// only after every member is done, while the buffer is still borrowed.
unsafe impl Send for HeadsOut {}

// SAFETY: as above.
unsafe impl Sync for HeadsOut {}

impl HeadsOut {
    /// The element at `offset`, with `len` elements after it in bounds.
    ///
    /// # Safety
    /// `offset + len` ≤ the buffer's length.
    unsafe fn at(&self, offset: usize, len: usize) -> *mut f32 {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.1));
        // SAFETY: forwarded contract.
        unsafe { self.0.add(offset) }
    }

    /// Head `h`'s output.
    ///
    /// # Safety
    /// `h·hd + hd` ≤ the buffer's length, and no one else uses these floats meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn head(&self, h: usize, hd: usize) -> &mut [f32] {
        // SAFETY: forwarded contract. `h·hd` cannot wrap: callers pass h < heads, and
        // `check_heads` proved `heads·hd` fits the buffer before any member started.
        unsafe { std::slice::from_raw_parts_mut(self.at(h * hd, hd), hd) }
    }
}

/// The team the threaded table splits heads over: the one [`install`](crate::team::install)ed on
/// this thread, else the process's.
fn heads_team() -> Option<std::sync::Arc<crate::team::Team>> {
    crate::team::current().or_else(|| crate::team::global().cloned())
}

/// Cache lengths whose heads-parallel scores row fits on a member's stack (16 KiB).
const STACK_SLOTS: usize = 4096;

thread_local! {
    /// A prefill head's probabilities (`rows × slots`) and outputs (`rows × head_dim`) on each
    /// thread that runs one, grown to the largest seen.
    static PREFILL_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// Scores scratch of the heads-parallel attention on each team member, past STACK_SLOTS.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One decode step's heads split across [`crate::team::global`]'s members.
///
/// Panics, naming the problem, if the job's geometry is inconsistent (see [`check_heads`]) or its
/// scale is not finite: the kernel table has no error channel, and the decoder sizes every
/// buffer itself.
pub(super) fn attention_heads_on_team(job: &HeadsJob, out: &mut [f32]) {
    let (hd, nh) = (job.head_dim, job.heads);
    let geometry = Heads {
        heads: nh,
        head_dim: hd,
        head_stride: job.head_stride,
        slots: job.slots,
        keys_len: job.keys.len(),
        values_len: job.values.len(),
        rows: 1,
        q: (job.q.len(), nh.saturating_mul(hd)),
        out: (out.len(), nh.saturating_mul(hd)),
    };
    if !check_heads(&geometry).unwrap_or_else(|e| panic!("fused decode attention heads: {e}")) {
        return;
    }
    // The one condition the per-head kernel checks beyond the geometry: failing it here names
    // it, where a member's panic would only be reported as a failed share.
    assert!(job.scale.is_finite(), "fused decode attention heads: scale {} is not finite", job.scale);
    let head = |h: usize, o: &mut [f32]| {
        let kv = h * job.head_stride..h * job.head_stride + job.slots * hd;
        // The same two-pass kernel as the one-thread table (so the split changes no bit). Its
        // scores row lives on the member's stack up to STACK_SLOTS positions — no allocation in a
        // decode step; longer caches use a per-thread row that grows once to the longest seen.
        let (q, keys, values) = (&job.q[h * hd..(h + 1) * hd], &job.keys[kv.clone()], &job.values[kv]);
        // Checked above: the widths agree and the scale is finite, so this cannot fail.
        let attend = |scores: &mut [f32], o: &mut [f32]| {
            decode_attention_2pass(q, keys, values, job.scale, scores, o)
                .unwrap_or_else(|e| panic!("fused decode attention heads: {e}"))
        };
        if job.slots <= STACK_SLOTS {
            attend(&mut [0.0f32; STACK_SLOTS], o);
        } else {
            SCRATCH.with(|s| {
                let mut scores = s.borrow_mut();
                if scores.len() < job.slots {
                    scores.resize(job.slots, 0.0);
                }
                attend(&mut scores, o);
            });
        }
    };
    let Some(team) = heads_team().filter(|t| t.size() > 1 && nh > 1) else {
        for (h, o) in out.chunks_exact_mut(hd).take(nh).enumerate() {
            head(h, o);
        }
        return;
    };
    let chunks = crate::team::chunks_for(nh, team.size(), job.slots.saturating_mul(hd).saturating_mul(2));
    let ptr = HeadsOut(out.as_mut_ptr(), out.len());
    let level = dispatch::level();
    team.for_each(chunks, &|c| {
        // Workers run at the caller's level, so every head is computed the same way.
        crate::dispatch::with_level(level, |_| {
            for h in crate::team::share(nh, chunks, c) {
                // SAFETY: h < heads, so the head's floats lie inside the buffer (heads·head_dim
                // ≤ out.len(), `check_heads`), and no other chunk writes head h.
                head(h, unsafe { ptr.head(h, hd) });
            }
        });
    });
}
