//! Ablation studies: factors with levels, every combination (or a named subset) measured on the
//! same queries, main effects and interactions from pairs of configurations that differ only in
//! the factors concerned, and the Pareto front over (quality ↑, latency ↓, bytes ↓).
//!
//! Effects are computed from matched pairs rather than by averaging whole levels, so they stay
//! correct on a partial design: a pair counts only if both of its configurations were run.
//!
//! Latency is compared on [`Measurement::latency_ms`]: time per output token for a system that
//! generates tokens (an answer's length changes with the model, so time per answer would credit
//! a variant for answering with fewer tokens), else the p50 per sample. [`run_rounds`] measures
//! every configuration in several rounds, each in its own seeded shuffled order (so drift on a
//! noisy machine does not favour whatever ran first), and keeps the median and range of each.

use std::collections::HashMap;

use serde::Serialize;

use crate::{PerfError, Result};

/// A factor and its levels; level 0 is the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Factor {
    pub name: String,
    pub levels: Vec<String>,
}

impl Factor {
    pub fn new(name: &str, levels: &[&str]) -> Factor {
        Factor { name: name.into(), levels: levels.iter().map(|s| s.to_string()).collect() }
    }
}

/// One level index per factor.
pub type Config = Vec<usize>;

/// The most configurations [`full_factorial`] lists: each is a whole measured run, and the list
/// is built in memory, so a design beyond this is a mistake (twenty two-level factors).
pub const MAX_CONFIGURATIONS: u64 = 1 << 20;

/// Every combination, the first factor varying slowest.
///
/// # Errors
/// [`PerfError::TooLarge`] when the product of the level counts is above
/// [`MAX_CONFIGURATIONS`], found before anything is allocated.
pub fn full_factorial(factors: &[Factor]) -> Result<Vec<Config>> {
    // Saturating: once past the limit the exact product no longer matters.
    let count = factors.iter().fold(1u128, |n, f| n.saturating_mul(f.levels.len() as u128));
    if count > u128::from(MAX_CONFIGURATIONS) {
        return Err(PerfError::TooLarge {
            what: format!("the full factorial of {} factors", factors.len()),
            count,
            limit: MAX_CONFIGURATIONS,
        });
    }
    let mut out: Vec<Config> = vec![Vec::new()];
    for f in factors {
        out = out.into_iter().flat_map(|c| (0..f.levels.len()).map(move |l| [c.clone(), vec![l]].concat())).collect();
    }
    Ok(out)
}

/// `"kv=on kernels=accel …"`. A level out of its factor's range is shown as `name=#level?`
/// (the name is used in the errors that report such configurations).
pub fn config_name(factors: &[Factor], config: &[usize]) -> String {
    factors
        .iter()
        .zip(config)
        .map(|(f, &l)| match f.levels.get(l) {
            Some(level) => format!("{}={level}", f.name),
            None => format!("{}=#{l}?", f.name),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one configuration measured (with [`run_rounds`], the median over its rounds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// Higher is better (accuracy, exact match).
    pub quality: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Samples per second.
    pub throughput: f64,
    pub model_bytes: u64,
    /// Median time to the first output token, for a system that generates tokens.
    pub ttft_ms: Option<f64>,
    /// Median time per output token after the first, for a system that generates tokens.
    pub tpot_ms: Option<f64>,
}

impl Measurement {
    /// The latency every comparison uses: time per output token where there is one, else p50.
    pub fn latency_ms(&self) -> f64 {
        self.tpot_ms.unwrap_or(self.p50_ms)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub config: Config,
    pub name: String,
    pub measured: Measurement,
    /// Rounds it was measured in.
    pub rounds: usize,
    /// Smallest and largest [`Measurement::latency_ms`] over the rounds.
    pub latency_range_ms: (f64, f64),
    /// On the Pareto front over (quality ↑, latency ↓, model bytes ↓).
    pub pareto: bool,
}

/// The effect of moving one factor from its baseline level to another, everything else fixed.
#[derive(Debug, Clone, Serialize)]
pub struct MainEffect {
    pub factor: String,
    pub from: String,
    pub to: String,
    /// Matched pairs it averages over.
    pub pairs: usize,
    /// Mean change in quality (points of the metric).
    pub quality_delta: f64,
    /// Geometric mean of [`Measurement::latency_ms`] ratios (new / old): below 1 is faster.
    pub latency_ratio: f64,
    /// Pairs whose two latency ranges over the rounds overlap: the change is within what
    /// repeating the same measurement varies by. Most pairs overlapping means the effect is noise.
    pub pairs_within_noise: usize,
    /// Geometric mean of model-bytes ratios.
    pub bytes_ratio: f64,
}

/// Two-factor interaction on latency, multiplicative: the geometric mean over 2×2 squares of
/// `(y₁₁/y₀₁) / (y₁₀/y₀₀)` — 1 when the factors' speedups simply multiply.
#[derive(Debug, Clone, Serialize)]
pub struct Interaction {
    pub factors: (String, String),
    pub squares: usize,
    pub latency_interaction: f64,
    /// Additive quality interaction `(y₁₁ − y₀₁) − (y₁₀ − y₀₀)`, averaged.
    pub quality_interaction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Study {
    pub factors: Vec<Factor>,
    pub rows: Vec<Row>,
    pub main_effects: Vec<MainEffect>,
    /// Sorted by how far the latency interaction is from 1, largest first.
    pub interactions: Vec<Interaction>,
    /// What every latency comparison used: `"per output token"` when every row has one, else
    /// `"p50 per sample"` — one unit for the whole study.
    pub latency_unit: &'static str,
}

/// Measure each configuration once with `measure`, in the given order, then analyse.
///
/// # Errors
/// As [`run_rounds`].
pub fn run(
    factors: &[Factor],
    configs: &[Config],
    measure: impl FnMut(&[usize]) -> Result<Measurement>,
) -> Result<Study> {
    run_rounds(factors, configs, 1, None, measure)
}

/// The most rounds [`run_rounds`] takes (each round measures every configuration).
pub const MAX_ROUNDS: usize = 100;

/// Measure every configuration `rounds` times — each round in an order shuffled from `seed`
/// (`None` keeps the given order) — and analyse the median of each figure over the rounds, with
/// the range of [`Measurement::latency_ms`] kept per row.
///
/// # Errors
/// A configuration with the wrong number of factors or a level out of range, a repeated
/// configuration, `rounds` of 0 or above [`MAX_ROUNDS`], or `measure`'s own error.
pub fn run_rounds(
    factors: &[Factor],
    configs: &[Config],
    rounds: usize,
    seed: Option<u64>,
    mut measure: impl FnMut(&[usize]) -> Result<Measurement>,
) -> Result<Study> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if !(1..=MAX_ROUNDS).contains(&rounds) {
        return Err(PerfError::Settings(format!("{rounds} rounds: need 1 to {MAX_ROUNDS}")));
    }
    let mut seen = HashMap::new();
    for c in configs {
        if c.len() != factors.len() || c.iter().zip(factors).any(|(&l, f)| l >= f.levels.len()) {
            return Err(PerfError::Settings(format!(
                "configuration {c:?} does not match the {} factors",
                factors.len()
            )));
        }
        if seen.insert(c.clone(), ()).is_some() {
            return Err(PerfError::Settings(format!("configuration {} appears twice", config_name(factors, c))));
        }
    }
    let mut measured: Vec<Vec<Measurement>> = vec![Vec::with_capacity(rounds); configs.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if let Some(seed) = seed {
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(round as u64)));
        }
        for i in order {
            measured[i].push(measure(&configs[i])?);
        }
    }
    // One latency unit for the whole study: if any run had no per-token time (answers of fewer
    // than two tokens), every comparison uses the per-sample p50 instead, so no ratio or range
    // mixes the two.
    if measured.iter().flatten().any(|m| m.tpot_ms.is_none()) {
        measured.iter_mut().flatten().for_each(|m| m.tpot_ms = None);
    }
    let rows = configs
        .iter()
        .zip(measured)
        .map(|(c, ms)| {
            let lat: Vec<f64> = ms.iter().map(Measurement::latency_ms).collect();
            let range = (
                lat.iter().copied().fold(f64::INFINITY, f64::min),
                lat.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            );
            Row {
                config: c.clone(),
                name: config_name(factors, c),
                measured: median_of(&ms),
                rounds: ms.len(),
                latency_range_ms: range,
                pareto: false,
            }
        })
        .collect();
    analyse(factors, rows)
}

/// The median of each figure over `ms` (non-empty); model bytes from the first.
fn median_of(ms: &[Measurement]) -> Measurement {
    let med = |f: &dyn Fn(&Measurement) -> f64| {
        let mut v: Vec<f64> = ms.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let opt = |f: &dyn Fn(&Measurement) -> Option<f64>| {
        ms.iter().all(|m| f(m).is_some()).then(|| med(&|m| f(m).unwrap_or(f64::NAN)))
    };
    Measurement {
        quality: med(&|m| m.quality),
        p50_ms: med(&|m| m.p50_ms),
        p90_ms: med(&|m| m.p90_ms),
        p99_ms: med(&|m| m.p99_ms),
        throughput: med(&|m| m.throughput),
        model_bytes: ms[0].model_bytes,
        ttft_ms: opt(&|m| m.ttft_ms),
        tpot_ms: opt(&|m| m.tpot_ms),
    }
}

/// Main effects, interactions and the Pareto front of measured rows.
///
/// # Errors
/// A row whose configuration does not match the factors, or rows of which some have a time per
/// output token and others not (two latency units).
pub fn analyse(factors: &[Factor], mut rows: Vec<Row>) -> Result<Study> {
    let per_token = rows.iter().filter(|r| r.measured.tpot_ms.is_some()).count();
    if per_token != 0 && per_token != rows.len() {
        return Err(PerfError::Settings(format!(
            "{per_token} of {} rows have a time per output token: latencies in two units cannot be compared",
            rows.len()
        )));
    }
    let latency_unit = if per_token > 0 { "per output token" } else { "p50 per sample" };
    if let Some(r) = rows
        .iter()
        .find(|r| r.config.len() != factors.len() || r.config.iter().zip(factors).any(|(&l, f)| l >= f.levels.len()))
    {
        return Err(PerfError::Settings(format!(
            "row {} has configuration {:?}, not one of the {} factors' levels",
            r.name,
            r.config,
            factors.len()
        )));
    }
    let points: Vec<(f64, f64, f64)> =
        rows.iter().map(|r| (r.measured.quality, r.measured.latency_ms(), r.measured.model_bytes as f64)).collect();
    for (r, on) in rows.iter_mut().zip(pareto_front(&points)) {
        r.pareto = on;
    }
    let index: HashMap<&Config, &Measurement> = rows.iter().map(|r| (&r.config, &r.measured)).collect();
    let ranges: HashMap<&Config, (f64, f64)> = rows.iter().map(|r| (&r.config, r.latency_range_ms)).collect();
    let mut main_effects = Vec::new();
    for (fi, f) in factors.iter().enumerate() {
        for to in 1..f.levels.len() {
            let (mut n, mut noise, mut dq, mut lr, mut br) = (0usize, 0usize, 0.0, 0.0, 0.0);
            for r in rows.iter().filter(|r| r.config[fi] == 0) {
                let mut other = r.config.clone();
                other[fi] = to;
                if let (Some(m), Some(&(lo, hi))) = (index.get(&other), ranges.get(&other)) {
                    n += 1;
                    let (a, b) = r.latency_range_ms;
                    noise += usize::from(lo <= b && a <= hi);
                    dq += m.quality - r.measured.quality;
                    lr += (m.latency_ms() / r.measured.latency_ms()).ln();
                    br += (m.model_bytes as f64 / r.measured.model_bytes as f64).ln();
                }
            }
            if n > 0 {
                main_effects.push(MainEffect {
                    factor: f.name.clone(),
                    from: f.levels[0].clone(),
                    to: f.levels[to].clone(),
                    pairs: n,
                    quality_delta: dq / n as f64,
                    latency_ratio: (lr / n as f64).exp(),
                    pairs_within_noise: noise,
                    bytes_ratio: (br / n as f64).exp(),
                });
            }
        }
    }
    let mut interactions = Vec::new();
    for a in 0..factors.len() {
        for b in a + 1..factors.len() {
            let (mut n, mut li, mut qi) = (0usize, 0.0, 0.0);
            for r in rows.iter().filter(|r| r.config[a] == 0 && r.config[b] == 0) {
                let at = |la: usize, lb: usize| {
                    let mut c = r.config.clone();
                    c[a] = la;
                    c[b] = lb;
                    index.get(&c).copied()
                };
                // Level 1 of each factor against its baseline (the two-level case the course uses).
                if let (Some(y00), Some(y10), Some(y01), Some(y11)) = (at(0, 0), at(1, 0), at(0, 1), at(1, 1)) {
                    n += 1;
                    li += (y11.latency_ms() / y01.latency_ms()).ln() - (y10.latency_ms() / y00.latency_ms()).ln();
                    qi += (y11.quality - y01.quality) - (y10.quality - y00.quality);
                }
            }
            if n > 0 {
                interactions.push(Interaction {
                    factors: (factors[a].name.clone(), factors[b].name.clone()),
                    squares: n,
                    latency_interaction: (li / n as f64).exp(),
                    quality_interaction: qi / n as f64,
                });
            }
        }
    }
    interactions.sort_by(|x, y| y.latency_interaction.ln().abs().total_cmp(&x.latency_interaction.ln().abs()));
    Ok(Study { factors: factors.to_vec(), rows, main_effects, interactions, latency_unit })
}

/// Which points no other point dominates, for (quality ↑, latency ↓, bytes ↓): `j` dominates `i`
/// when it is at least as good in all three and strictly better in one. Ties stay on the front.
pub fn pareto_front(points: &[(f64, f64, f64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(q, l, b)| {
            !points.iter().any(|&(q2, l2, b2)| q2 >= q && l2 <= l && b2 <= b && (q2 > q || l2 < l || b2 < b))
        })
        .collect()
}

/// One step of a cumulative walk (baseline → +KV cache → …): its measurement and what the step
/// changed against the previous one.
#[derive(Debug, Clone, Serialize)]
pub struct WalkStep {
    pub step: String,
    pub name: String,
    pub quality: f64,
    /// [`Measurement::latency_ms`] of the step (per output token where there are tokens).
    pub latency_ms: f64,
    /// Its range over the rounds.
    pub latency_range_ms: (f64, f64),
    /// p50 per sample (per answer), beside the per-token figure.
    pub p50_ms: f64,
    pub model_bytes: u64,
    /// Previous step's latency / this step's: how much faster this step made it.
    pub speedup_over_previous: f64,
    pub speedup_over_baseline: f64,
    pub quality_delta: f64,
}

/// The walk through `steps` (label, configuration), read from measured rows.
///
/// # Errors
/// A step's configuration that was not measured.
pub fn walk(study: &Study, steps: &[(&str, Config)]) -> Result<Vec<WalkStep>> {
    let mut out: Vec<WalkStep> = Vec::new();
    for (label, c) in steps {
        let r = study.rows.iter().find(|r| &r.config == c).ok_or_else(|| {
            PerfError::Settings(format!("walk step {label}: {} was not measured", config_name(&study.factors, c)))
        })?;
        let m = &r.measured;
        let lat = m.latency_ms();
        let (prev_lat, prev_q) = out.last().map_or((lat, m.quality), |p| (p.latency_ms, p.quality));
        let base = out.first().map_or(lat, |b| b.latency_ms);
        out.push(WalkStep {
            step: label.to_string(),
            name: r.name.clone(),
            quality: m.quality,
            latency_ms: lat,
            latency_range_ms: r.latency_range_ms,
            p50_ms: m.p50_ms,
            model_bytes: m.model_bytes,
            speedup_over_previous: prev_lat / lat,
            speedup_over_baseline: base / lat,
            quality_delta: m.quality - prev_q,
        });
    }
    Ok(out)
}

/// A Markdown table of the study's rows.
pub fn markdown(study: &Study) -> String {
    let opt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.4}"));
    let mut s = String::from("| configuration | quality | latency ms (median) | range over rounds | TTFT ms | p50 ms per sample | p99 ms | model bytes | Pareto |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in &study.rows {
        let m = &r.measured;
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4}–{:.4} ({} rounds) | {} | {:.3} | {:.3} | {} | {} |\n",
            r.name,
            m.quality,
            m.latency_ms(),
            r.latency_range_ms.0,
            r.latency_range_ms.1,
            r.rounds,
            opt(m.ttft_ms),
            m.p50_ms,
            m.p99_ms,
            m.model_bytes,
            if r.pareto { "yes" } else { "" }
        ));
    }
    s.push_str("\n| factor | from → to | pairs | within noise | quality Δ | latency × | bytes × |\n|---|---|---|---|---|---|---|\n");
    for e in &study.main_effects {
        s.push_str(&format!(
            "| {} | {} → {} | {} | {} | {:+.4} | {:.3} | {:.3} |\n",
            e.factor, e.from, e.to, e.pairs, e.pairs_within_noise, e.quality_delta, e.latency_ratio, e.bytes_ratio
        ));
    }
    s.push_str("\n| interaction | squares | latency (1 = independent) | quality |\n|---|---|---|---|\n");
    for i in &study.interactions {
        s.push_str(&format!(
            "| {} × {} | {} | {:.3} | {:+.4} |\n",
            i.factors.0, i.factors.1, i.squares, i.latency_interaction, i.quality_interaction
        ));
    }
    s
}
