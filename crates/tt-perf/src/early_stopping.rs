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
///
/// NaN — no answer — when `p` is not a probability (outside `[0, 1]`, or NaN), or when statrs'
/// incomplete beta comes out outside `[0, 1]`, as it can near the distribution's centre once
/// `h + t` passes about 10⁶ (its continued fraction stops at 140 terms; there it also drifts
/// within `[0, 1]`, which no check can see; the searches below compare against `1 − confidence`
/// in the tail, where it is accurate, and near the centre the odds are far above that, so a drift
/// there does not flip a comparison).
pub fn odds(h: u64, t: u64, p: f64) -> f64 {
    if h == 0 {
        return 1.0;
    }
    // statrs' unchecked beta_reg panics on such a p.
    statrs::function::beta::checked_beta_reg(h as f64, t as f64 + 1.0, p)
        .ok()
        .filter(|o| (0.0..=1.0).contains(o))
        .unwrap_or(f64::NAN)
}

/// The smallest `h` with `odds(h, t, p) < 1 − confidence` (LoadGen's strict comparison).
///
/// # Errors
/// `p` or `confidence` outside `(0, 1)`; an `h` that does not fit `u64` (a huge `t`, or `p`
/// within rounding of 1); odds with no answer ([`odds`] is NaN) on the way, refused rather than
/// bisected on.
pub fn min_passing(t: u64, p: f64, confidence: f64) -> Result<u64> {
    smallest_passing(t, p, confidence, u64::MAX)?.ok_or_else(|| {
        PerfError::Settings(format!(
            "early stopping with {t} queries over the bound at p = {p} needs more than u64::MAX passing queries"
        ))
    })
}

/// [`min_passing`] searched only up to `cap`: `None` when even `h = cap` fails. Searching no
/// further than needed keeps the odds in the tail, where they are accurate.
fn smallest_passing(t: u64, p: f64, confidence: f64, cap: u64) -> Result<Option<u64>> {
    if !(p > 0.0 && p < 1.0 && confidence > 0.0 && confidence < 1.0) {
        return Err(PerfError::Settings(format!(
            "early stopping needs p and confidence in (0, 1), got {p}, {confidence}"
        )));
    }
    let target = 1.0 - confidence;
    let passes = |h: u64| -> Result<bool> {
        let o = odds(h, t, p);
        if o.is_nan() {
            return Err(PerfError::Stats(format!(
                "early stopping odds for h = {h}, t = {t}, p = {p} are beyond the incomplete beta's precision"
            )));
        }
        Ok(o < target)
    };
    // odds falls as h grows; bracket by doubling (hi strictly grows to cap: at most 64 times),
    // then bisect (at most 63 halvings of the bracket).
    let mut hi = 1u64;
    while !passes(hi)? {
        if hi >= cap {
            return Ok(None);
        }
        hi = hi.saturating_mul(2).min(cap);
    }
    let mut lo = hi / 2; // fails, or lo == 0
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if passes(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// Minimum query count for a latency-percentile claim at all (`t = 1`): 64 for p90, 662 for p99.
///
/// # Errors
/// As [`min_passing`].
pub fn min_queries(p: f64, confidence: f64) -> Result<u64> {
    min_passing(1, p, confidence)?
        .checked_add(1)
        .ok_or_else(|| PerfError::Settings(format!("early stopping at p = {p} needs more than u64::MAX queries")))
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
/// As [`min_passing`].
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
    // The largest t with h_min(t) + t ≤ n. h_min is nondecreasing in t (the binomial tail grows
    // with t), so h_min(t) + t is increasing: bisect between t = 1 (≤ n, checked above) and
    // t = n (> n, since h_min ≥ 1) — at most 64 steps, where counting up would take n. Each
    // search stops at h = n − t, so it never wanders where the odds are inaccurate.
    let (mut t, mut over) = (1u64, n);
    while over - t > 1 {
        let mid = t + (over - t) / 2;
        if smallest_passing(mid, p, confidence, n - mid)?.is_some() {
            t = mid;
        } else {
            over = mid;
        }
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
    let needed = min_passing(over, p, confidence)?.checked_add(over).ok_or_else(|| {
        PerfError::Settings(format!("early stopping with {over} queries over the bound needs more than u64::MAX"))
    })?;
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
