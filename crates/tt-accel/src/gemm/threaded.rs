//! Rung 5: the packed algorithm of rung 4 split over a [`Team`] of `threads` members.
//!
//! Per KC×NC panel of B, two parallel phases:
//! 1. the members pack B̃ together (each group of KC×NR micro-panels is an independent chunk);
//! 2. the rows of the MC block are cut into about four chunks per member of whole MR-row panels,
//!    and whichever member claims a chunk runs loops 2–1 on it: it packs those rows' panels of Ã
//!    (during the first NC panel, into their own disjoint part of the shared buffer) and calls
//!    the same microkernel on the shared B̃, which each core reads into its own private L2.
//!
//! Splitting rows rather than columns means B̃ is packed once and shared (read-only), and each
//! chunk writes a disjoint set of C rows (`split_at_mut`, no unsafe). Each element of C is
//! computed by one chunk, with the same KC partition and kernel as rung 4, hence bit-identical
//! results for any thread count. The end of each phase is the only synchronization: two
//! hand-offs per KC×NC panel of B (16 at 1024³: 2 KC blocks × 4 NC panels).
//!
//! Chunks are claimed, not assigned (see [`crate::team`]): a member that the OS has descheduled
//! leaves its share to the others instead of holding the product up. With `threads = 1` the
//! caller runs the product itself, exactly rung 4. The team is the process's own
//! ([`crate::team::global`]) when `threads` is its size — the one pool the decoder uses too —
//! and otherwise one kept per size for measurements ([`crate::team::sized`]). The dispatch
//! level is resolved on the calling thread and handed to the members as a kernel token, so a
//! [`with_level`](crate::dispatch::with_level) override on the caller applies to them too.

use super::packed_simd;
use super::{invalid, Args};
use crate::dispatch::Level;
use crate::team::Team;
use tt_tensor::TensorError;

/// The most members rung 5 accepts.
pub const MAX_THREADS: usize = crate::team::MAX_SIZE;

pub(super) fn threaded(level: Level, threads: usize, x: Args<'_>) -> Result<(), TensorError> {
    if threads == 1 {
        // One member: let the caller be it.
        packed_simd::run(level, None, x);
        return Ok(());
    }
    let team = crate::team::sized(threads).map_err(|e| invalid(format!("could not start {threads} threads: {e}")))?;
    packed_simd::run(level, Some(&*team as &Team), x);
    Ok(())
}
