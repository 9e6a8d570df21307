//! Milestone `acceleration`, part 2 (issue 23): how the work scales with threads, what a busy
//! core does to it, and the matrix engine (AMX) against VNNI.
//!
//! - **Scaling curves**: GEMM 1024³ (the threaded rung), a 512-token prefill, decode at batch 1
//!   and batch 16 (the course GPT's shape, f32 packed weights; prefill also int8), and the
//!   server's peak valid rate over HTTP (`tito serve --threads t`), at 1, 2, … N threads, N the
//!   cores this process may use. Each workload runs on a team of `t` members installed on the
//!   calling thread (`tt_accel::team::install`), the way `--threads t` runs it. Speedup is against
//!   one thread in the same run; efficiency is speedup / t; `bound` names the memory level the
//!   workload's bytes come from (or "compute").
//! - **Five consecutive 1-vs-2-thread pairs** of GEMM, prefill and batch-1 decode, reported all
//!   five (the goal is ≥ 1.8× in every one).
//! - **Contended**: batch-1 decode at one and two threads while another process spins on a core
//!   (same priority), with the team's stall and back-off counts — how a descheduled member
//!   degrades.
//! - **AMX**: the int8 GEMM at 512³ and 1024³ (one core) with the tile kernel against VNNI, both
//!   as fractions of their measured peaks, and the int8 prefill at 512 tokens and batch-1
//!   decode with AMX on and off. Empty, with the reason, where the CPU or OS has no AMX.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tt_accel::gemm::{gemm, Rung};
use tt_accel::team::{self, Team};
use tt_kvcache::{CachedGpt, OverflowPolicy};
use tt_profile::roofline::MemoryLevels;
use tt_quant::{IntLevel, WeightConfig};
use tt_transformer::{Gpt, GptConfig};

use crate::acceleration::median;
use crate::{MilestoneError, Options, Result};

fn other(e: impl std::fmt::Display) -> MilestoneError {
    MilestoneError::Other(e.to_string())
}

/// Median milliseconds of `f` over `samples` runs (after one warm-up).
fn ms(samples: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

/// 1, 2, 4, … up to the cores this process may use, and that count itself.
pub fn thread_counts() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()).min(team::MAX_SIZE);
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2)).take_while(|&t| t < n).collect();
    v.push(n);
    v
}

/// The team for `t` threads (`None` for one).
fn team_of(t: usize) -> Result<Option<Arc<Team>>> {
    if t == 1 {
        return Ok(None);
    }
    team::sized(t).map(Some).map_err(other)
}

/// The workloads, built once: the f32 and int8 course-shape models and the GEMM operands.
struct Work {
    n: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    f32_model: Gpt,
    int8_model: Gpt,
    prefill: Vec<usize>,
    decode_steps: usize,
}

impl Work {
    fn new(opts: &Options, config: &GptConfig) -> Result<Work> {
        let n = if opts.quick { 256 } else { 1024 };
        let a: Vec<f32> = (0..n * n).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect();
        let b: Vec<f32> = (0..n * n).map(|i| ((i * 17) % 89) as f32 / 89.0 - 0.5).collect();
        let cfg = GptConfig { seed: 23, ..config.clone() };
        let mut f32_model = Gpt::new(cfg.clone()).map_err(other)?;
        tt_accel::packed::pack_linears(&mut f32_model).map_err(other)?;
        let mut int8_model = Gpt::new(cfg).map_err(other)?;
        tt_quant::quantize_dynamic(&mut int8_model, WeightConfig::PER_CHANNEL).map_err(other)?;
        let len = (if opts.quick { 64 } else { 512 }).min(config.max_seq_len - 1);
        let prefill = (0..len).map(|i| (i * 7919 + 13) % config.vocab_size).collect();
        Ok(Work { n, a, b, f32_model, int8_model, prefill, decode_steps: if opts.quick { 16 } else { 128 } })
    }

    fn gemm_ms(&self, t: usize, samples: usize) -> Result<f64> {
        let n = self.n;
        let mut c = vec![0.0f32; n * n];
        let level = tt_accel::level();
        ms(samples, || {
            gemm(Rung::Threaded, level, t, &self.a, n, &self.b, n, &mut c, n, n, n, n).map(|_| ()).map_err(other)
        })
    }

    fn engine(&self, model: &Gpt, batch: usize, threaded: bool) -> Result<CachedGpt> {
        let mut e = CachedGpt::new(model, batch, OverflowPolicy::Error).map_err(other)?;
        e.set_row_kernels(if threaded {
            tt_accel::fused::row_kernels_threaded()
        } else {
            tt_accel::fused::row_kernels()
        });
        Ok(e)
    }

    fn prefill_ms(&self, model: &Gpt, t: usize, samples: usize) -> Result<f64> {
        let mut e = self.engine(model, 1, t > 1)?;
        let ids = &self.prefill;
        ms(samples, || e.prefill(ids, ids.len()).map(|_| ()).map_err(other))
    }

    /// Milliseconds per decode step of `batch` sequences (after a 16-token prompt each).
    fn decode_ms(&self, t: usize, batch: usize, samples: usize) -> Result<f64> {
        let mut e = self.engine(&self.f32_model, batch, t > 1)?;
        let prompt: Vec<usize> = self.prefill.iter().copied().cycle().take(16 * batch).collect();
        let steps = self.decode_steps;
        let vocab = model_vocab(&self.f32_model);
        let per_run = ms(samples, || {
            e.prefill(&prompt, 16).map_err(other)?;
            for s in 0..steps {
                let next: Vec<usize> = (0..batch).map(|r| (s * 31 + r * 7) % vocab).collect();
                e.decode_step(&next).map_err(other)?;
            }
            Ok(())
        })?;
        Ok(per_run / steps as f64)
    }
}

fn model_vocab(m: &Gpt) -> usize {
    m.config.vocab_size
}

/// The scaling curves, the five 1-vs-2 pairs and the contended decode.
pub fn run(opts: &Options, config: &GptConfig, mem: &MemoryLevels) -> Result<Value> {
    let work = Work::new(opts, config)?;
    let counts = thread_counts();
    let samples = if opts.quick { 1 } else { 3 };
    let weights_f32: usize = work.engine(&work.f32_model, 1, false)?.projection_formats().iter().map(|f| f.2).sum();
    let s = work.engine(&work.f32_model, 1, false)?.cache().shape();
    let kv_per_seq = 2 * s.layers * s.heads * s.head_dim * 4 * (16 + work.decode_steps / 2);
    let level = |bytes: usize| mem.for_working_set(bytes).0;
    let p = work.prefill.len();
    let workloads: Vec<(String, String)> = vec![
        (format!("gemm {0}x{0}x{0}", work.n), "compute".into()),
        (format!("prefill {p} f32"), "compute".into()),
        (format!("prefill {p} int8"), "compute".into()),
        ("decode batch 1 f32".into(), level(weights_f32 + kv_per_seq).into()),
        ("decode batch 16 f32".into(), level(weights_f32 + 16 * kv_per_seq).into()),
    ];
    opts.say(format!(
        "\nscaling with threads (cores this process may use: {}; ms per GEMM / prefill / decode step, median of {samples}; speedup vs 1 thread in this run):",
        counts.last().copied().unwrap_or(1)
    ));
    opts.say(format!(
        "  {:<22} {:>7} {:>10} {:>8} {:>10}  {}",
        "workload", "threads", "ms", "speedup", "per thread", "bound by"
    ));
    let mut rows = Vec::new();
    for (i, (name, bound)) in workloads.iter().enumerate() {
        let mut one = f64::NAN;
        for &t in &counts {
            let team = team_of(t)?;
            let m = team::install(team, || match i {
                0 => work.gemm_ms(t, samples),
                1 => work.prefill_ms(&work.f32_model, t, samples),
                2 => work.prefill_ms(&work.int8_model, t, samples),
                3 => work.decode_ms(t, 1, samples),
                _ => work.decode_ms(t, 16, samples),
            })?;
            if t == 1 {
                one = m;
            }
            let speedup = one / m;
            opts.say(format!(
                "  {name:<22} {t:>7} {m:>10.3} {speedup:>7.2}x {:>9.0}%  {bound}",
                100.0 * speedup / t as f64
            ));
            rows.push(json!({"workload": name, "threads": t, "ms": m, "speedup": speedup,
                "efficiency": speedup / t as f64, "bound": bound}));
        }
    }
    // Before the server's runs (whose load generator leaves threads behind in this process).
    let pairs = pairs(opts, &work)?;
    let contended = contended(opts, &work)?;
    // The server: its peak valid rate over HTTP at each thread count (full runs only: each point
    // is a LoadGen peak search).
    if opts.quick {
        opts.say("  server peak: measured in full runs only (a LoadGen peak search per thread count)");
    } else {
        let peaks = crate::serving::peak_by_threads(opts, &counts)?;
        let one = peaks.first().map_or(f64::NAN, |p| p.1);
        for (t, qps) in peaks {
            let speedup = qps / one;
            opts.say(format!(
                "  {:<22} {t:>7} {:>10.3} {speedup:>7.2}x {:>9.0}%  compute (and the load generator on the same cores)",
                "server peak (qps)",
                1e3 / qps.max(f64::MIN_POSITIVE),
                100.0 * speedup / t as f64
            ));
            rows.push(json!({"workload": "server peak", "threads": t, "ms": 1e3 / qps.max(f64::MIN_POSITIVE),
                "qps": qps, "speedup": speedup, "efficiency": speedup / t as f64,
                "bound": "compute (load generator on the same cores)"}));
        }
    }
    Ok(json!({"scaling": rows, "pairs_2v1": pairs, "contended": contended}))
}

/// Five consecutive 1-vs-2-thread pairs (two in quick runs) of GEMM, prefill and batch-1 decode.
fn pairs(opts: &Options, work: &Work) -> Result<Value> {
    let runs = if opts.quick { 2 } else { 5 };
    let two = team_of(2)?;
    let mut out = Vec::new();
    opts.say(format!("\n2 threads vs 1, {runs} consecutive pairs (goal: >= 1.8x in every one):"));
    for (i, name) in ["gemm", "prefill f32", "decode batch 1 f32"].into_iter().enumerate() {
        let mut ratios = Vec::new();
        for _ in 0..runs {
            let at = |t: usize| -> Result<f64> {
                let team = if t == 1 { None } else { two.clone() };
                team::install(team, || match i {
                    0 => work.gemm_ms(t, 1),
                    1 => work.prefill_ms(&work.f32_model, t, 1),
                    _ => work.decode_ms(t, 1, 1),
                })
            };
            let (a, b) = (at(1)?, at(2)?);
            ratios.push(a / b);
        }
        let text: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
        let met = ratios.iter().all(|&r| r >= 1.8);
        opts.say(format!("  {name:<20} {}  {}", text.join(" "), if met { "met" } else { "not met" }));
        out.push(json!({"workload": name, "ratios": ratios, "all_at_least_1_8": met}));
    }
    Ok(Value::Array(out))
}

/// A busy-looping process (same priority) for the length of the guard.
struct Competitor(std::process::Child);

impl Competitor {
    fn start() -> Result<Competitor> {
        std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .map(Competitor)
            .map_err(|e| other(format!("cannot start a competing process: {e}")))
    }
}

impl Drop for Competitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Batch-1 decode at 1 and 2 threads, idle and with a competing process, and the team's counts.
fn contended(opts: &Options, work: &Work) -> Result<Value> {
    let two = team_of(2)?.ok_or_else(|| other("no team of two"))?;
    let samples = if opts.quick { 1 } else { 5 };
    let run = |t: usize| -> Result<f64> {
        team::install((t == 2).then(|| Arc::clone(&two)), || work.decode_ms(t, 1, samples))
    };
    let (idle1, idle2) = (run(1)?, run(2)?);
    let before = two.stats();
    let (busy1, busy2) = {
        let _c = Competitor::start()?;
        // Let the scheduler place it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        (run(1)?, run(2)?)
    };
    let after = two.stats();
    let (stalls, solo, shared) = (
        after.stalls - before.stalls,
        after.caller_only_jobs - before.caller_only_jobs,
        after.shared_jobs - before.shared_jobs,
    );
    opts.say(format!(
        "\ndecode batch 1 with a competing busy process (same priority) on this machine's cores:\n  idle: 1 thread {idle1:.3} ms/token, 2 threads {idle2:.3} ({:.2}x)\n  contended: 1 thread {busy1:.3} ms/token, 2 threads {busy2:.3} ({:.2}x of contended 1 thread); team: {shared} shared jobs, {stalls} stalls, {solo} jobs on the caller alone (back-off)",
        idle1 / idle2,
        busy1 / busy2
    ));
    Ok(json!({
        "competitor": "one busy-looping process, same priority",
        "idle_1_thread_ms": idle1, "idle_2_threads_ms": idle2,
        "contended_1_thread_ms": busy1, "contended_2_threads_ms": busy2,
        "contended_speedup": busy1 / busy2,
        "shared_jobs": shared, "stalls": stalls, "caller_only_jobs": solo,
    }))
}

/// The AMX rows (`{"rows": [...], "reason": ...}`; no rows, and the reason, where AMX is not
/// usable or forced off).
pub fn amx(opts: &Options, config: &GptConfig) -> Result<Value> {
    if !tt_quant::kernels::amx_ok() {
        let reason = tt_accel::amx::describe();
        opts.say(format!("\nAMX int8 GEMM: not measured — {reason}"));
        return Ok(json!({"rows": [], "reason": reason}));
    }
    if !tt_accel::dispatch::process_allows_matrix_engine() {
        let reason = "TT_ACCEL_LEVEL forces AMX off".to_string();
        opts.say(format!("\nAMX int8 GEMM: not measured — {reason}"));
        return Ok(json!({"rows": [], "reason": reason}));
    }
    let iters = if opts.quick { 20_000 } else { 2_000_000 };
    let amx_peak = tt_quant::kernels::amx::peak_gops(iters / 4).unwrap_or(f64::NAN);
    let vnni_peak = tt_quant::kernels::vnni_peak_gops(iters).unwrap_or(f64::NAN);
    opts.say(format!(
        "\nAMX int8 GEMM, one core (GOP/s; peaks measured now: tdpbusd {amx_peak:.0}, vpdpbusd {vnni_peak:.0}):"
    ));
    let mut rows = Vec::new();
    let sizes: &[usize] = if opts.quick { &[128] } else { &[512, 1024] };
    let samples = if opts.quick { 1 } else { 5 };
    for &n in sizes {
        let w: Vec<i8> = (0..n * n).map(|i| ((i * 37) % 255) as i8).collect();
        let p = tt_quant::kernels::PackedI8::new(&w, n, n).map_err(other)?;
        let a: Vec<u8> = (0..n * p.row_bytes()).map(|i| (i * 13 % 251) as u8).collect();
        let mut acc = vec![0i32; n * p.acc_cols()];
        let mut at = |level: IntLevel| ms(samples, || p.matmul(level, &a, n, &mut acc).map_err(other));
        let (vnni_ms, amx_ms) = (at(IntLevel::Avx512Vnni)?, at(IntLevel::Amx)?);
        let ops = 2.0 * (n * n * n) as f64;
        let (vg, ag) = (ops / vnni_ms / 1e6, ops / amx_ms / 1e6);
        opts.say(format!(
            "  {n:>5}³  vnni {vg:>8.0} ({:.0}% of its peak)  amx {ag:>8.0} ({:.0}% of its peak)  {:.2}x",
            100.0 * vg / vnni_peak,
            100.0 * ag / amx_peak,
            ag / vg
        ));
        rows.push(json!({"n": n, "vnni_gops": vg, "amx_gops": ag, "speedup_vs_vnni": ag / vg,
            "pct_of_amx_peak": 100.0 * ag / amx_peak, "pct_of_vnni_peak": 100.0 * vg / vnni_peak}));
    }
    // The int8 course-shape model: prefill of 512 tokens and batch-1 decode, AMX on and off (a
    // model built inside `with_level` keeps VNNI).
    let work_cfg = GptConfig { seed: 29, ..config.clone() };
    let build = || -> Result<Gpt> {
        let mut m = Gpt::new(work_cfg.clone()).map_err(other)?;
        tt_quant::quantize_dynamic(&mut m, WeightConfig::PER_CHANNEL).map_err(other)?;
        Ok(m)
    };
    let with_amx = build()?;
    let without = tt_accel::with_level(tt_accel::dispatch::detected(), |_| build())?;
    let len = (if opts.quick { 64 } else { 512 }).min(config.max_seq_len - 1);
    let ids: Vec<usize> = (0..len).map(|i| (i * 7919 + 13) % config.vocab_size).collect();
    let prefill = |m: &Gpt| -> Result<f64> {
        let mut e = CachedGpt::new(m, 1, OverflowPolicy::Error).map_err(other)?;
        e.set_row_kernels(tt_accel::fused::row_kernels());
        ms(samples, || e.prefill(&ids, ids.len()).map(|_| ()).map_err(other))
    };
    let (pv, pa) = (prefill(&without)?, prefill(&with_amx)?);
    let decode = |m: &Gpt| -> Result<f64> {
        let mut e = CachedGpt::new(m, 1, OverflowPolicy::Error).map_err(other)?;
        e.set_row_kernels(tt_accel::fused::row_kernels());
        let per = ms(samples, || {
            e.prefill(&ids[..16.min(ids.len())], 16.min(ids.len())).map_err(other)?;
            for s in 0..64 {
                e.decode_step(&[(s * 31) % m.config.vocab_size]).map_err(other)?;
            }
            Ok(())
        })?;
        Ok(per / 64.0)
    };
    let (dv, da) = (decode(&without)?, decode(&with_amx)?);
    opts.say(format!(
        "  int8 prefill of {len} tokens: vnni {pv:.2} ms, amx {pa:.2} ms ({:.2}x); decode batch 1: vnni {dv:.3} ms/token, amx {da:.3} ({:.2}x: one row stays on VNNI by design)",
        pv / pa,
        dv / da
    ));
    Ok(json!({"rows": rows, "amx_peak_gops": amx_peak, "vnni_peak_gops": vnni_peak,
        "prefill": {"tokens": len, "vnni_ms": pv, "amx_ms": pa, "speedup": pv / pa},
        "decode_batch1": {"vnni_ms_per_token": dv, "amx_ms_per_token": da, "speedup": dv / da}}))
}
