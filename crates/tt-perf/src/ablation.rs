//! Ablation studies: factors with levels, every combination (or a named subset) measured on the
//! same queries, main effects and interactions from pairs of configurations that differ only in
//! the factors concerned, and the Pareto front over (quality ↑, latency ↓, bytes ↓).
//!
//! Effects are computed from matched pairs rather than by averaging whole levels, so they stay
//! correct on a partial design: a pair counts only if both of its configurations were run.

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

/// What one configuration measured.
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub config: Config,
    pub name: String,
    pub measured: Measurement,
    /// On the Pareto front over (quality ↑, p50 latency ↓, model bytes ↓).
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
    /// Geometric mean of p50 latency ratios (new / old): below 1 is faster.
    pub latency_ratio: f64,
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
}

/// Measure each configuration with `measure`, then analyse.
///
/// # Errors
/// A configuration with the wrong number of factors or a level out of range, a repeated
/// configuration, or `measure`'s own error.
pub fn run(
    factors: &[Factor],
    configs: &[Config],
    mut measure: impl FnMut(&[usize]) -> Result<Measurement>,
) -> Result<Study> {
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
    let mut rows = Vec::with_capacity(configs.len());
    for c in configs {
        let measured = measure(c)?;
        rows.push(Row { config: c.clone(), name: config_name(factors, c), measured, pareto: false });
    }
    analyse(factors, rows)
}

/// Main effects, interactions and the Pareto front of measured rows.
///
/// # Errors
/// A row whose configuration does not match the factors.
pub fn analyse(factors: &[Factor], mut rows: Vec<Row>) -> Result<Study> {
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
        rows.iter().map(|r| (r.measured.quality, r.measured.p50_ms, r.measured.model_bytes as f64)).collect();
    for (r, on) in rows.iter_mut().zip(pareto_front(&points)) {
        r.pareto = on;
    }
    let index: HashMap<&Config, &Measurement> = rows.iter().map(|r| (&r.config, &r.measured)).collect();
    let mut main_effects = Vec::new();
    for (fi, f) in factors.iter().enumerate() {
        for to in 1..f.levels.len() {
            let (mut n, mut dq, mut lr, mut br) = (0usize, 0.0, 0.0, 0.0);
            for r in rows.iter().filter(|r| r.config[fi] == 0) {
                let mut other = r.config.clone();
                other[fi] = to;
                if let Some(m) = index.get(&other) {
                    n += 1;
                    dq += m.quality - r.measured.quality;
                    lr += (m.p50_ms / r.measured.p50_ms).ln();
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
                    li += (y11.p50_ms / y01.p50_ms).ln() - (y10.p50_ms / y00.p50_ms).ln();
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
    Ok(Study { factors: factors.to_vec(), rows, main_effects, interactions })
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
    pub p50_ms: f64,
    pub model_bytes: u64,
    /// Previous step's p50 / this step's: how much faster this step made it.
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
        let (prev_p50, prev_q) = out.last().map_or((m.p50_ms, m.quality), |p| (p.p50_ms, p.quality));
        let base = out.first().map_or(m.p50_ms, |b| b.p50_ms);
        out.push(WalkStep {
            step: label.to_string(),
            name: r.name.clone(),
            quality: m.quality,
            p50_ms: m.p50_ms,
            model_bytes: m.model_bytes,
            speedup_over_previous: prev_p50 / m.p50_ms,
            speedup_over_baseline: base / m.p50_ms,
            quality_delta: m.quality - prev_q,
        });
    }
    Ok(out)
}

/// A Markdown table of the study's rows.
pub fn markdown(study: &Study) -> String {
    let mut s = String::from("| configuration | quality | p50 ms | p90 ms | p99 ms | samples/s | model bytes | Pareto |\n|---|---|---|---|---|---|---|---|\n");
    for r in &study.rows {
        let m = &r.measured;
        s.push_str(&format!(
            "| {} | {:.4} | {:.3} | {:.3} | {:.3} | {:.1} | {} | {} |\n",
            r.name,
            m.quality,
            m.p50_ms,
            m.p90_ms,
            m.p99_ms,
            m.throughput,
            m.model_bytes,
            if r.pareto { "yes" } else { "" }
        ));
    }
    s.push_str("\n| factor | from → to | pairs | quality Δ | latency × | bytes × |\n|---|---|---|---|---|---|\n");
    for e in &study.main_effects {
        s.push_str(&format!(
            "| {} | {} → {} | {} | {:+.4} | {:.3} | {:.3} |\n",
            e.factor, e.from, e.to, e.pairs, e.quality_delta, e.latency_ratio, e.bytes_ratio
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
