//! `cargo tito report`: the measured regions of docs/14–19, regenerated from the milestones' JSON.
//!
//! Each page of docs/ marks what a command measured with
//! `<!-- report:NAME -->` … `<!-- /report:NAME -->`; everything between the two is rewritten
//! from the JSON summary of the page's milestone, run in the same process, and stamped with the
//! machine (CPU model, cores, caches) and the date. Prose outside the regions is hand-written and
//! may cite the regions, never copy their numbers.
//!
//! The contract each renderer module keeps (one module per milestone):
//! - `pub fn render(summary: &serde_json::Value) -> crate::Result<Vec<Region>>` — one [`Region`]
//!   per marked block of its page, every figure read from `summary` (a missing key is an error
//!   naming it, never a default);
//! - `pub const FIGURES: &[(&str, &str)]` — charts the milestone wrote, as (path relative to the
//!   cache directory, file name under `docs/figures/`).

pub mod acceleration;
pub mod compression;
pub mod kv_cache;
pub mod profile;
pub mod quantization;
pub mod torchperf;

use serde_json::Value;

use crate::{MilestoneError, Result};

/// One generated block: the markdown that goes between `<!-- report:{name} -->` and
/// `<!-- /report:{name} -->` on its page.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: &'static str,
    pub markdown: String,
}

/// A docs page and how its milestone's summary becomes its regions.
pub struct Page {
    /// The milestone whose `--json` summary feeds the page.
    pub milestone: &'static str,
    /// File name under `docs/`.
    pub doc: &'static str,
    pub render: fn(&Value) -> Result<Vec<Region>>,
    /// (path relative to the cache directory, file name under `docs/figures/`).
    pub figures: &'static [(&'static str, &'static str)],
}

/// The pages `cargo tito report` regenerates, in the order their milestones run.
pub const PAGES: &[Page] = &[
    Page { milestone: "kv_cache", doc: "14-kv-caching.md", render: kv_cache::render, figures: kv_cache::FIGURES },
    Page { milestone: "profile", doc: "15-profiling.md", render: profile::render, figures: profile::FIGURES },
    Page {
        milestone: "acceleration",
        doc: "16-acceleration.md",
        render: acceleration::render,
        figures: acceleration::FIGURES,
    },
    Page {
        milestone: "quantization",
        doc: "17-quantization.md",
        render: quantization::render,
        figures: quantization::FIGURES,
    },
    Page {
        milestone: "compression",
        doc: "18-compression.md",
        render: compression::render,
        figures: compression::FIGURES,
    },
    Page { milestone: "torchperf", doc: "19-benchmarking.md", render: torchperf::render, figures: torchperf::FIGURES },
];

/// The value at JSON pointer `path` (e.g. `/decode/tok_s`) of a summary.
///
/// # Errors
/// No value there: the error names the path, so a renamed key fails the report loudly.
pub fn get<'a>(summary: &'a Value, path: &str) -> Result<&'a Value> {
    summary.pointer(path).ok_or_else(|| MilestoneError::Other(format!("report: the summary has no {path}")))
}

/// The number at `path`.
///
/// # Errors
/// No value there, or it is not a number.
pub fn num(summary: &Value, path: &str) -> Result<f64> {
    get(summary, path)?
        .as_f64()
        .ok_or_else(|| MilestoneError::Other(format!("report: {path} is not a number in the summary")))
}

/// The array at `path`.
///
/// # Errors
/// No value there, or it is not an array.
pub fn array<'a>(summary: &'a Value, path: &str) -> Result<&'a [Value]> {
    get(summary, path)?
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| MilestoneError::Other(format!("report: {path} is not an array in the summary")))
}

/// A markdown table: a header row, its separator, then one line per row. A cell is the text
/// given (no escaping beyond `|`, which would split a cell).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.map(|c| c.replace('|', "\\|")).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut s = line(&mut header.iter().map(|h| h.to_string()));
    s.push_str(&line(&mut header.iter().map(|_| "---".to_string())));
    for r in rows {
        s.push_str(&line(&mut r.iter().cloned()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_escapes_pipes_and_lines_up() {
        let t = table(&["a", "b"], &[vec!["1".into(), "x|y".into()]]);
        assert_eq!(t, "| a | b |\n| --- | --- |\n| 1 | x\\|y |\n");
    }

    #[test]
    fn a_missing_key_is_an_error_naming_it() {
        let v = serde_json::json!({"decode": {"tok_s": 3.5}});
        assert_eq!(num(&v, "/decode/tok_s").unwrap(), 3.5);
        let e = num(&v, "/decode/ms").unwrap_err().to_string();
        assert!(e.contains("/decode/ms"), "{e}");
    }
}
