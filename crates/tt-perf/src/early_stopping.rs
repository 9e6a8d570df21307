//! MLPerf's early-stopping criterion (LoadGen `early_stopping.cc`): how many queries a run needs
//! before its percentile can be claimed with 99% confidence, given how many were over the bound.
//!
//! With `t` queries over the bound among `n = h + t`, and the true probability of a query being
//! under the bound exactly `p` (the percentile), the chance of seeing `h` or more under-bound
//! queries is the binomial tail `I_p(h, t + 1)` (the regularized incomplete beta). The run may
//! claim the percentile once that chance is below `1 − confidence`.

use crate::{PerfError, Result};

/// The confidence LoadGen uses.
pub const CONFIDENCE: f64 = 0.99;

/// `P(at least h of h + t queries under the bound | each is under with probability p)`.
pub fn odds(h: u64, t: u64, p: f64) -> f64 {
    if h == 0 {
        return 1.0;
    }
    statrs::function::beta::beta_reg(h as f64, t as f64 + 1.0, p)
}

/// The smallest `h` with `odds(h, t, p) < 1 − confidence` (LoadGen's strict comparison).
///
/// # Errors
/// `p` or `confidence` outside `(0, 1)`.
pub fn min_passing(t: u64, p: f64, confidence: f64) -> Result<u64> {
    if !(p > 0.0 && p < 1.0 && confidence > 0.0 && confidence < 1.0) {
        return Err(PerfError::Settings(format!(
            "early stopping needs p and confidence in (0, 1), got {p}, {confidence}"
        )));
    }
    // odds falls as h grows; bracket by doubling, then bisect.
    let target = 1.0 - confidence;
    let mut hi = 1u64;
    while odds(hi, t, p) >= target {
        hi *= 2;
    }
    let mut lo = hi / 2; // odds(lo) >= target, or lo == 0
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if odds(mid, t, p) < target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// Minimum query count for a latency-percentile claim at all (`t = 1`): 64 for p90, 662 for p99.
///
/// # Errors
/// As [`min_passing`].
pub fn min_queries(p: f64, confidence: f64) -> Result<u64> {
    Ok(min_passing(1, p, confidence)? + 1)
}

/// The outcome of the criterion for one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EarlyStopping {
    pub met: bool,
    /// Queries the criterion needs given what was seen (`h_min(t) + t`).
    pub queries_needed: u64,
    /// For SingleStream and MultiStream: the latency the run can claim at the percentile with the
    /// confidence (the `(n − t)`-th smallest, where `t` is the most over-bound queries `n` allows).
    pub percentile_estimate: Option<f64>,
    /// Human-readable lines, as LoadGen prints under "Early Stopping Result".
    pub lines: Vec<String>,
}

/// SingleStream / MultiStream: no latency bound is given; the criterion says how high a
/// percentile estimate the run's length supports. `sorted` are the ascending query latencies.
///
/// # Errors
/// As [`min_passing`]; no latencies.
pub fn latency_estimate(sorted: &[f64], p: f64, confidence: f64) -> Result<EarlyStopping> {
    let n = sorted.len() as u64;
    let need = min_queries(p, confidence)?;
    if n < need {
        return Ok(EarlyStopping {
            met: false,
            queries_needed: need,
            percentile_estimate: None,
            lines: vec![
                format!(" * Only processed {n} queries."),
                format!(" * Need to process at least {need} queries for early stopping."),
            ],
        });
    }
    // The largest t with n ≥ h_min(t) + t.
    let mut t = 1u64;
    while t < n && min_passing(t + 1, p, confidence)? + t < n {
        t += 1;
    }
    let estimate = sorted[(n - t) as usize];
    Ok(EarlyStopping {
        met: true,
        queries_needed: need,
        percentile_estimate: Some(estimate),
        lines: vec![
            format!(" * Processed at least {need} queries ({n})."),
            format!(" * Would discard {} highest latency queries.", t - 1),
            format!(" * Early stopping {:.0}th percentile estimate: {estimate}", p * 100.0),
        ],
    })
}

/// Server: with `over` of `n` queries above the latency bound, are there enough queries?
///
/// # Errors
/// As [`min_passing`].
pub fn server(n: u64, over: u64, p: f64, confidence: f64) -> Result<EarlyStopping> {
    let h = min_passing(over, p, confidence)?;
    let needed = h + over;
    let met = n >= needed;
    let lines = if met {
        vec![" * Run successful.".to_string()]
    } else {
        vec![
            " * Run unsuccessful.".to_string(),
            format!(" * Processed {n} queries."),
            format!(
                " * Would need to run at least {} more queries, with the run being successful if every additional query were under latency.",
                needed - n
            ),
        ]
    };
    Ok(EarlyStopping { met, queries_needed: needed, percentile_estimate: None, lines })
}
