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

/// Sums `data` with 64 independent lanes (4 × 16): wide enough that loads, not adds, limit it.
fn read_sum_portable(data: &[f32]) -> f32 {
    let mut acc = [0.0f32; 64];
    let chunks = data.chunks_exact(64);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// AVX-512 read kernel: 4 independent 512-bit accumulators, 64 floats per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn read_sum_avx512(data: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 4];
    let chunks = data.chunks_exact(64);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 64 floats; 16·k + 16 ≤ 64.
            *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(c.as_ptr().add(16 * k)) });
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s) + tail
}

fn read_sum(data: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { read_sum_avx512(data) };
    }
    read_sum_portable(data)
}

/// Read-only bandwidth (GB/s, 1 thread) over a working set of `bytes`: the array is summed
/// repeatedly (at least ~64 MiB of reads per run, so small sets are timed over many passes);
/// the best of `runs`. Sizes that fit a cache level measure that level.
///
/// # Errors
/// `bytes` < 256 or `runs` of 0.
pub fn read_bandwidth_gbs(bytes: usize, runs: usize) -> Result<f64> {
    const OP: &str = "read_bandwidth_gbs";
    if bytes < 256 {
        return Err(arg(OP, format!("bytes {bytes} must be at least 256")));
    }
    if runs == 0 {
        return Err(arg(OP, "runs 0 must be at least 1".into()));
    }
    let n = bytes / 4;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let passes = (64 << 20) / bytes + 1;
    std::hint::black_box(read_sum(&data)); // warm: bring the set into its cache level
    let mut best = 0.0f64;
    for _ in 0..runs {
        let start = Instant::now();
        let mut s = 0.0f32;
        for _ in 0..passes {
            s += read_sum(std::hint::black_box(&data));
        }
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((passes * n * 4) as f64 / secs / 1e9);
    }
    Ok(best)
}

/// The cache sizes live with the kernels whose block sizes they set (tt-accel): one detection.
pub use tt_accel::caches::{parse_cache_size, CacheSizes};

/// Read bandwidth of each level of the memory hierarchy, measured with working sets chosen from
/// this machine's cache sizes ([`CacheSizes::detect`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryLevels {
    /// Working set of 2/3 of L1d.
    pub l1_read_gbs: f64,
    /// Half of L2.
    pub l2_read_gbs: f64,
    /// 8 MiB (or a quarter of L3 if that is smaller), past L2.
    pub l3_read_gbs: f64,
    /// 256 MiB (64 MiB in quick mode).
    pub dram_read_gbs: f64,
    /// The cache sizes the working sets and the placement thresholds come from.
    pub caches: CacheSizes,
}

impl MemoryLevels {
    /// Working-set sizes measured for `caches`: L1, L2, L3, DRAM.
    pub fn sizes(caches: CacheSizes) -> [usize; 4] {
        let l3 = (8usize << 20).min(caches.l3 / 4).max(4 * caches.l2);
        [caches.l1d * 2 / 3, caches.l2 / 2, l3, 256 << 20]
    }

    /// Measures every level (a few seconds; `quick` uses a 64 MiB DRAM set and fewer runs).
    ///
    /// # Errors
    /// Never for these sizes; kept fallible like the other measurements.
    pub fn measure(quick: bool) -> Result<MemoryLevels> {
        let caches = CacheSizes::detect();
        let sizes = Self::sizes(caches);
        let runs = if quick { 2 } else { 5 };
        let dram = if quick { 64 << 20 } else { sizes[3] };
        Ok(MemoryLevels {
            l1_read_gbs: read_bandwidth_gbs(sizes[0].max(256), runs)?,
            l2_read_gbs: read_bandwidth_gbs(sizes[1].max(256), runs)?,
            l3_read_gbs: read_bandwidth_gbs(sizes[2].max(256), runs)?,
            dram_read_gbs: read_bandwidth_gbs(dram, runs.min(3))?,
            caches,
        })
    }

    /// The read bandwidth of the smallest level a working set of `bytes` fits in (half of each
    /// cache, leaving room for everything else that lives there).
    pub fn for_working_set(&self, bytes: usize) -> (&'static str, f64) {
        let c = self.caches;
        if bytes <= c.l1d / 2 {
            ("L1", self.l1_read_gbs)
        } else if bytes <= c.l2 / 2 {
            ("L2", self.l2_read_gbs)
        } else if bytes <= c.l3 / 2 {
            ("L3", self.l3_read_gbs)
        } else {
            ("DRAM", self.dram_read_gbs)
        }
    }

    /// Upper bound on decode tokens/s when each token must read `bytes_per_token` (weights plus
    /// the KV cache it attends over) from the level that working set fits in.
    pub fn decode_bound_tok_s(&self, bytes_per_token: usize) -> (&'static str, f64) {
        let (level, gbs) = self.for_working_set(bytes_per_token);
        (level, gbs * 1e9 / bytes_per_token.max(1) as f64)
    }
}
