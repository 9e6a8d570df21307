//! The op-level profiler: installs an observer on tt-tensor's op hook, records every op (name,
//! phase, layer, input shapes, FLOPs, bytes, wall time), and summarizes like `torch.profiler`.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;
use tt_tensor::hook::{set_observer, OpEvent, OpObserver, Phase};

/// One recorded op call.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub name: &'static str,
    pub backward: bool,
    pub layer: String,
    pub input_shapes: Vec<Vec<usize>>,
    pub flops: u64,
    pub bytes: u64,
    /// Start, microseconds since the profile began.
    pub start_us: f64,
    pub duration_us: f64,
}

struct Collector {
    origin: Instant,
    records: RefCell<Vec<Record>>,
}

impl OpObserver for Collector {
    fn on_op(&self, e: OpEvent) {
        self.records.borrow_mut().push(Record {
            name: e.name,
            backward: e.phase == Phase::Backward,
            layer: e.layer,
            input_shapes: e.input_shapes,
            flops: e.flops,
            bytes: e.bytes,
            start_us: e.start.duration_since(self.origin).as_secs_f64() * 1e6,
            duration_us: e.duration.as_secs_f64() * 1e6,
        });
    }
}

/// Everything recorded while profiling.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub records: Vec<Record>,
    /// Wall time of the profiled closure.
    pub wall_us: f64,
}

/// Runs `f` with the profiler installed on this thread and returns its result and the profile.
/// Ops run on other threads are not recorded (profile single-threaded code).
pub fn profile<R>(f: impl FnOnce() -> R) -> (R, Profile) {
    let c = Rc::new(Collector { origin: Instant::now(), records: RefCell::new(Vec::new()) });
    let prev = set_observer(Some(c.clone()));
    let start = Instant::now();
    let out = f();
    let wall_us = start.elapsed().as_secs_f64() * 1e6;
    set_observer(prev);
    let records = c.records.borrow().clone();
    (out, Profile { records, wall_us })
}

/// One row of the summary table.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub op: String,
    pub calls: usize,
    /// Time inside the op's kernel (ops do not nest, so self time = total time).
    pub total_us: f64,
    pub percent: f64,
    pub flops: u64,
    pub gflops_per_s: f64,
}

/// How to sort the summary.
#[derive(Debug, Clone, Copy)]
pub enum SortBy {
    Time,
    Calls,
    Flops,
}

impl Profile {
    /// Total FLOPs of forward ops (backward ops report none; see their time instead).
    pub fn forward_flops(&self) -> u64 {
        self.records.iter().filter(|r| !r.backward).map(|r| r.flops).sum()
    }

    /// Per-op summary (`op` or `op (backward)`), sorted.
    pub fn summary(&self, sort: SortBy) -> Vec<OpSummary> {
        let mut rows: Vec<OpSummary> = Vec::new();
        for r in &self.records {
            let op = if r.backward { format!("{} (backward)", r.name) } else { r.name.to_string() };
            match rows.iter_mut().find(|s| s.op == op) {
                Some(s) => {
                    s.calls += 1;
                    s.total_us += r.duration_us;
                    s.flops += r.flops;
                }
                None => rows.push(OpSummary {
                    op,
                    calls: 1,
                    total_us: r.duration_us,
                    percent: 0.0,
                    flops: r.flops,
                    gflops_per_s: 0.0,
                }),
            }
        }
        let all: f64 = rows.iter().map(|s| s.total_us).sum();
        for s in &mut rows {
            s.percent = 100.0 * s.total_us / all.max(1e-9);
            s.gflops_per_s = if s.total_us > 0.0 { s.flops as f64 / (s.total_us * 1e3) } else { 0.0 };
        }
        match sort {
            SortBy::Time => rows.sort_by(|a, b| b.total_us.total_cmp(&a.total_us)),
            SortBy::Calls => rows.sort_by_key(|r| std::cmp::Reverse(r.calls)),
            SortBy::Flops => rows.sort_by_key(|r| std::cmp::Reverse(r.flops)),
        }
        rows
    }

    /// FLOPs and time per layer path (forward only), in first-seen order.
    pub fn per_layer(&self) -> Vec<(String, u64, f64)> {
        let mut out: Vec<(String, u64, f64)> = Vec::new();
        for r in self.records.iter().filter(|r| !r.backward) {
            match out.iter_mut().find(|(l, _, _)| l == &r.layer) {
                Some(e) => {
                    e.1 += r.flops;
                    e.2 += r.duration_us;
                }
                None => out.push((r.layer.clone(), r.flops, r.duration_us)),
            }
        }
        out
    }

    /// The summary as a text table.
    pub fn table(&self, sort: SortBy) -> String {
        // No op runs inside another op's scope, so self time equals total time; both columns are
        // shown so the table reads like torch.profiler's.
        let mut s = format!(
            "{:<26} {:>7} {:>12} {:>12} {:>7} {:>14} {:>9}\n",
            "op", "calls", "self (µs)", "total (µs)", "%", "FLOPs", "GFLOP/s"
        );
        for r in self.summary(sort) {
            s += &format!(
                "{:<26} {:>7} {:>12.1} {:>12.1} {:>6.1}% {:>14} {:>9.2}\n",
                r.op, r.calls, r.total_us, r.total_us, r.percent, r.flops, r.gflops_per_s
            );
        }
        s
    }

    /// Chrome trace JSON (`chrome://tracing`, Perfetto): one complete ("X") event per op.
    pub fn chrome_trace(&self) -> serde_json::Value {
        let events: Vec<serde_json::Value> = self
            .records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": if r.backward { format!("{} (backward)", r.name) } else { r.name.to_string() },
                    "cat": if r.backward { "backward" } else { "forward" },
                    "ph": "X",
                    "ts": r.start_us,
                    "dur": r.duration_us,
                    "pid": 1,
                    "tid": 1,
                    "args": { "layer": r.layer, "shapes": r.input_shapes, "flops": r.flops, "bytes": r.bytes },
                })
            })
            .collect();
        serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
    }

    /// Writes the Chrome trace atomically.
    pub fn write_chrome_trace(&self, path: &Path) -> tt_tensor::Result<()> {
        let bytes = serde_json::to_vec(&self.chrome_trace()).expect("JSON values serialize");
        tt_tensor::serialize::atomic_write(path, &bytes)
    }
}
