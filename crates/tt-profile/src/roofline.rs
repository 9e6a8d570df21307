//! The roofline model (Williams, Waterman, Patterson 2009): attainable FLOP/s
//! `= min(P_peak, I · B_peak)` for operational intensity `I = FLOPs / bytes`.
//! This module measures `P_peak` (a register-resident FMA loop, widest SIMD detected at run time)
//! and `B_peak` (STREAM triad) on the running machine.

use std::time::Instant;

use serde::Serialize;
use tt_tensor::{Result, TensorError};

fn arg(op: &'static str, reason: String) -> TensorError {
    TensorError::InvalidArgument { op, reason }
}

/// Portable fallback: 16 independent scalar multiply-add chains.
fn fma_portable(iters: usize, seed: f32) -> f32 {
    let mut acc = [seed; 16];
    let (a, b) = (0.999_999_9f32, 1e-7f32);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(a, b);
        }
    }
    acc.iter().sum::<f32>() / 16.0
}

/// 12 independent 512-bit FMA chains (latency 4 × 2 ports needs ≥ 8): 12·16·2 FLOPs per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999_9);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}

/// 12 independent 256-bit FMA chains: 12·8·2 FLOPs per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999_9);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    // SAFETY: `out` holds exactly 8 f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// FLOPs one iteration of the selected loop performs.
fn flops_per_iter() -> usize {
    match simd_level() {
        "avx512f" => 12 * 16 * 2,
        "avx2+fma" => 12 * 8 * 2,
        _ => 16 * 2,
    }
}

/// Which instruction set the peak loop used.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "baseline"
}

fn run_fma(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        match simd_level() {
            // SAFETY: the features these functions enable were detected on this CPU just above.
            "avx512f" => return unsafe { fma_avx512(iters, seed) },
            // SAFETY: as above.
            "avx2+fma" => return unsafe { fma_avx2(iters, seed) },
            _ => {}
        }
    }
    fma_portable(iters, seed)
}

/// Peak f32 GFLOP/s on `threads` threads (best of 5 runs of ~`iters` iterations each).
///
/// # Errors
/// `threads` or `iters` of 0 (nothing would be measured), or an iteration count whose FLOPs
/// overflow.
pub fn peak_gflops(threads: usize, iters: usize) -> Result<f64> {
    const OP: &str = "peak_gflops";
    if threads == 0 {
        return Err(arg(OP, "threads 0 must be at least 1".into()));
    }
    if iters == 0 {
        return Err(arg(OP, "iters 0 must be at least 1".into()));
    }
    let per_thread = iters
        .checked_mul(flops_per_iter())
        .ok_or_else(|| arg(OP, format!("iters {iters} overflows the FLOP count")))?;
    let flops_per_thread = per_thread as f64;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let sink: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|t| s.spawn(move || run_fma(iters, 1.0 + t as f32))).collect();
            hs.into_iter().map(|h| h.join().expect("peak thread")).sum()
        });
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        best = best.max(threads as f64 * flops_per_thread / secs / 1e9);
    }
    Ok(best)
}

/// STREAM triad `a = b + s·c` over `n` f32 elements per array on one thread: best of `runs`,
/// counting 12 bytes per element (two reads, one write; STREAM does not count write-allocate).
///
/// # Errors
/// `n` or `runs` of 0, or an `n` whose three arrays' byte count overflows (checked before
/// allocating).
pub fn stream_triad_gbs(n: usize, runs: usize) -> Result<f64> {
    const OP: &str = "stream_triad_gbs";
    if n == 0 {
        return Err(arg(OP, "n 0 must be at least 1".into()));
    }
    if runs == 0 {
        return Err(arg(OP, "runs 0 must be at least 1".into()));
    }
    if n.checked_mul(12).is_none_or(|b| b > isize::MAX as usize) {
        return Err(arg(OP, format!("n {n} overflows the arrays' byte count")));
    }
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut a = vec![0.0f32; n];
    let s = 3.0f32;
    let mut best = 0.0f64;
    for _ in 0..runs {
        let start = Instant::now();
        for ((ai, bi), ci) in a.iter_mut().zip(&b).zip(&c) {
            *ai = bi + s * ci;
        }
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(&a);
        best = best.max((12 * n) as f64 / secs / 1e9);
    }
    Ok(best)
}

/// Measured machine limits. Both must be positive and finite: [`Roofline::place`] checks;
/// [`Roofline::ridge`] and [`Roofline::attainable`] are plain formulas (inf/NaN otherwise).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Roofline {
    pub peak_gflops: f64,
    pub bandwidth_gbs: f64,
}

/// Where an op sits under the roof.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub intensity: f64,
    pub attainable_gflops: f64,
    pub achieved_gflops: f64,
    pub fraction: f64,
    pub bound: &'static str,
}

impl Roofline {
    /// Intensity (FLOP/byte) where the roofs meet.
    pub fn ridge(&self) -> f64 {
        self.peak_gflops / self.bandwidth_gbs
    }
    pub fn attainable(&self, intensity: f64) -> f64 {
        self.peak_gflops.min(intensity * self.bandwidth_gbs)
    }
    /// Places an op that did `flops` over `bytes` in `seconds` (`bytes` of 0 counts as 1).
    ///
    /// # Errors
    /// A roof whose peak or bandwidth is not positive and finite, or `seconds` that are not
    /// positive and finite.
    pub fn place(&self, flops: u64, bytes: u64, seconds: f64) -> Result<Placement> {
        const OP: &str = "Roofline::place";
        for (name, v) in
            [("peak_gflops", self.peak_gflops), ("bandwidth_gbs", self.bandwidth_gbs), ("seconds", seconds)]
        {
            if !(v > 0.0 && v.is_finite()) {
                return Err(arg(OP, format!("{name} {v} must be positive and finite")));
            }
        }
        let intensity = flops as f64 / bytes.max(1) as f64;
        let attainable = self.attainable(intensity);
        let achieved = flops as f64 / seconds.max(1e-12) / 1e9;
        Ok(Placement {
            intensity,
            attainable_gflops: attainable,
            achieved_gflops: achieved,
            fraction: achieved / attainable.max(1e-12),
            bound: if intensity < self.ridge() { "memory-bound" } else { "compute-bound" },
        })
    }
}
