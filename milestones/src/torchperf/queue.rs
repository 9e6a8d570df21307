//! The queue both systems under test share: `issue_query` enqueues and returns at once (Server
//! latency counts from the scheduled arrival, so the issuing thread must not wait), workers
//! block until there is work, take what they batch, and stop when the system is dropped.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

use tt_perf::loadgen::{QuerySample, Responder};

/// A queued sample and whom to answer.
pub struct Pending {
    pub sample: QuerySample,
    pub responder: Responder,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
    shutdown: bool,
}

/// A panic elsewhere cannot poison it for the others: its state is a plain queue, valid after
/// any partial operation, so a poisoned lock is taken as it is.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    ready: Condvar,
}

impl WorkQueue {
    pub fn push(&self, samples: &[QuerySample], responder: &Responder) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.pending.extend(samples.iter().map(|&sample| Pending { sample, responder: responder.clone() }));
        drop(s);
        self.ready.notify_all();
    }

    /// Blocks until work is queued, then returns what `take` removes from the queue (at least
    /// the oldest sample); `None` once the queue is shut down and empty.
    pub fn next_batch(&self, take: impl FnOnce(&mut VecDeque<Pending>) -> Vec<Pending>) -> Option<Vec<Pending>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.pending.is_empty() && !s.shutdown {
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.pending.is_empty() {
            return None;
        }
        Some(take(&mut s.pending))
    }

    /// Up to `n` of the oldest queued samples, without waiting (none once shut down and empty).
    pub fn try_take(&self, n: usize) -> Vec<Pending> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = n.min(s.pending.len());
        s.pending.drain(..n).collect()
    }

    pub fn shutdown(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        self.ready.notify_all();
    }
}
