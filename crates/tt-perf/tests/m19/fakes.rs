//! Deterministic systems for the LoadGen tests: latencies known exactly on a manual clock.

use std::sync::{Arc, Mutex};

use tt_perf::clock::ManualClock;
use tt_perf::loadgen::{QuerySample, QuerySampleLibrary, QuerySampleResponse, Responder, SystemUnderTest};

/// A library of `total` samples, `perf` of which fit at once; records what is loaded.
pub struct Library {
    pub total: usize,
    pub perf: usize,
    pub loaded: Vec<usize>,
    pub loads: usize,
}

impl Library {
    pub fn new(total: usize, perf: usize) -> Library {
        Library { total, perf, loaded: Vec::new(), loads: 0 }
    }
}

impl QuerySampleLibrary for Library {
    fn name(&self) -> String {
        format!("fake-{}", self.total)
    }
    fn total_sample_count(&self) -> usize {
        self.total
    }
    fn performance_sample_count(&self) -> usize {
        self.perf
    }
    fn load_samples(&mut self, indices: &[usize]) -> tt_perf::Result<()> {
        assert!(self.loaded.is_empty(), "load before unload");
        self.loaded = indices.to_vec();
        self.loads += 1;
        Ok(())
    }
    fn unload_samples(&mut self, indices: &[usize]) -> tt_perf::Result<()> {
        assert_eq!(self.loaded, indices);
        self.loaded.clear();
        Ok(())
    }
}

/// Serial system on a manual clock: each query takes `latency(response id)` ns, its samples
/// answered together; answers carry the sample index.
pub struct Serial {
    pub clock: Arc<ManualClock>,
    pub latency: Box<dyn Fn(u64) -> u64 + Send + Sync>,
    pub seen: Mutex<Vec<usize>>,
}

impl Serial {
    pub fn new(clock: Arc<ManualClock>, latency: impl Fn(u64) -> u64 + Send + Sync + 'static) -> Serial {
        Serial { clock, latency: Box::new(latency), seen: Mutex::new(Vec::new()) }
    }
}

impl SystemUnderTest for Serial {
    fn name(&self) -> String {
        "serial-fake".into()
    }
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        self.seen.lock().unwrap().extend(samples.iter().map(|s| s.index));
        // Each sample in turn; the query's latency is its slowest (the last).
        for s in samples {
            self.clock.advance((self.latency)(s.id));
            responder.complete(&[QuerySampleResponse {
                id: s.id,
                data: (s.index as u32).to_le_bytes().to_vec(),
                tokens: None,
            }]);
        }
    }
}

/// Unlimited parallelism, simulated: sample `id` completes `latency(id)` ns after it is issued.
pub struct Parallel {
    pub latency: Box<dyn Fn(u64) -> u64 + Send + Sync>,
}

impl SystemUnderTest for Parallel {
    fn name(&self) -> String {
        "parallel-fake".into()
    }
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        let now = responder.now_ns();
        for s in samples {
            responder.complete_at(
                &[QuerySampleResponse { id: s.id, data: vec![], tokens: None }],
                now + (self.latency)(s.id),
            );
        }
    }
}

/// A single-server queue with a fixed service time, simulated: what a real serial system does
/// under Poisson load.
pub struct Queue {
    pub service_ns: u64,
    pub free_at: Mutex<u64>,
}

impl SystemUnderTest for Queue {
    fn name(&self) -> String {
        "queue-fake".into()
    }
    fn issue_query(&self, samples: &[QuerySample], responder: &Responder) {
        let now = responder.now_ns();
        let mut free = self.free_at.lock().unwrap();
        for s in samples {
            *free = (*free).max(now) + self.service_ns;
            responder.complete_at(&[QuerySampleResponse { id: s.id, data: vec![], tokens: None }], *free);
        }
    }
}
