//! Rung 5: the packed algorithm of rung 4 on `threads` rayon workers.
//!
//! Per KC×NC panel of B, two parallel phases on a dedicated pool:
//! 1. the workers pack B̃ together (each KC×NR micro-panel is independent);
//! 2. the rows of the MC block are cut into `threads` contiguous ranges of whole MR-row panels
//!    (sizes differ by at most one panel) and each worker runs loops 2–1 on its range: it packs
//!    its own panels of Ã (during the first NC panel, into its own disjoint part of the shared
//!    buffer) and calls the same microkernel on the shared B̃, which each core reads into its
//!    own private L2.
//!
//! Splitting rows rather than columns means B̃ is packed once and shared (read-only), and each
//! worker writes a disjoint set of C rows (safe `split_at_mut`, no locks). Each element of C is
//! computed by one worker, with the same KC partition and kernel as rung 4, hence bit-identical
//! results for any thread count. The end of each phase is the only synchronization: two
//! fork-joins per KC×NC panel of B (16 at 1024³: 2 KC blocks × 4 NC panels).
//!
//! Cost and gain, measured on the course machine (2 cores; rough, shared): handing the work to
//! the pool and joining costs a few tens of µs per product (thread wake-ups, one fork-join per
//! B̃ panel), so at 128³ (20 µs on one core) two threads are *slower* than one; at 256³ they
//! are ~1.8× faster, at 512³ ~1.87× and at 1024³ ~1.99×. With `threads = 1` the caller runs the
//! product itself, exactly rung 4.
//!
//! Pools are built once per thread count and kept (starting threads per call would cost tens of
//! microseconds, several percent of a 512³ product); at most a few thread counts at a time. The
//! dispatch level is resolved on the calling thread and handed to the workers as a kernel
//! token, so a [`with_level`](crate::dispatch::with_level) override on the caller applies to
//! the workers too.

use super::packed_simd;
use super::{invalid, Args};
use crate::dispatch::Level;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tt_tensor::TensorError;

/// The most workers rung 5 accepts.
pub const MAX_THREADS: usize = 256;

pub(super) fn threaded(level: Level, threads: usize, x: Args<'_>) -> Result<(), TensorError> {
    if threads == 1 {
        // One worker: let the caller be it; a pool would only add a cross-thread wake-up.
        packed_simd::run(level, None, x);
        return Ok(());
    }
    let pool = pool(threads)?;
    packed_simd::run(level, Some((&pool, threads)), x);
    Ok(())
}

/// Pools kept at once. A sweep uses a few thread counts; a caller cycling through all of
/// `1..=MAX_THREADS` would otherwise leave tens of thousands of idle threads behind.
const KEPT_POOLS: usize = 8;

/// The pool with exactly `threads` workers, built on first use.
fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>, TensorError> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Ok(Arc::clone(p));
    }
    if pools.len() >= KEPT_POOLS {
        // A pool still in use lives on in its user's `Arc` and stops when that is dropped.
        pools.clear();
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tt-gemm-{i}"))
        .build()
        .map_err(|e| invalid(format!("could not start {threads} threads: {e}")))?;
    let p = Arc::new(p);
    pools.insert(threads, Arc::clone(&p));
    Ok(p)
}
