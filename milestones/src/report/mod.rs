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
//!
//! The driver ([`measure`], [`from_data`], [`write_page`]) adds one region of its own to every
//! page, `stamp` ([`stamp::markdown`]), and keeps each page's summary with its stamp in
//! `docs/data/<milestone>.json`, the JSON a reader can check every table against.

pub mod acceleration;
pub mod compression;
pub mod kv_cache;
pub mod llama;
pub mod memory;
pub mod profile;
pub mod quantization;
pub mod regions;
pub mod serving;
pub mod stamp;
pub mod torchperf;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{MilestoneError, Options, Result};

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
    Page { milestone: "llama", doc: "13-llama.md", render: llama::render, figures: llama::FIGURES },
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
    Page { milestone: "memory", doc: "17-memory.md", render: memory::render, figures: memory::FIGURES },
    Page {
        milestone: "compression",
        doc: "18-compression.md",
        render: compression::render,
        figures: compression::FIGURES,
    },
    Page { milestone: "torchperf", doc: "19-benchmarking.md", render: torchperf::render, figures: torchperf::FIGURES },
    Page { milestone: "serving", doc: "19-serving.md", render: serving::render, figures: serving::FIGURES },
];

/// The region every page carries, written by the driver rather than the page's renderer.
pub const STAMP: &str = "stamp";

/// The workspace's `docs/`, where `cargo tito report` writes by default.
pub fn workspace_docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("docs"), |root| root.join("docs"))
}

/// The pages named in `only` (milestone names), in [`PAGES`] order; all of them if `only` is empty.
///
/// # Errors
/// A name that is no page's milestone; the error lists the pages.
pub fn select(only: &[String]) -> Result<Vec<&'static Page>> {
    if let Some(bad) = only.iter().find(|n| !PAGES.iter().any(|p| p.milestone == n.as_str())) {
        let names: Vec<&str> = PAGES.iter().map(|p| p.milestone).collect();
        return Err(MilestoneError::Other(format!("report: no page for '{bad}' (pages: {})", names.join(", "))));
    }
    Ok(PAGES.iter().filter(|p| only.is_empty() || only.iter().any(|n| n == p.milestone)).collect())
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> MilestoneError {
    MilestoneError::Other(format!("report: {what} {}: {e}", path.display()))
}

/// Where a page's summary and stamp are kept: `docs/data/<milestone>.json`.
pub fn data_path(docs: &Path, page: &Page) -> PathBuf {
    docs.join("data").join(format!("{}.json", page.milestone))
}

/// Checks, before anything is measured, that `docs` may receive these pages: the directory and
/// each page exist and their markers are balanced; quick settings go only to a directory other
/// than the workspace's `docs/`, and a debug build measures nothing for it.
///
/// # Errors
/// The first problem found, naming the directory, page or marker.
pub fn preflight(docs: &Path, pages: &[&Page], quick: bool, measuring: bool) -> Result<()> {
    if !docs.is_dir() {
        return Err(io_err("the docs directory", docs, "not found (give an existing one with --docs)"));
    }
    let into_workspace = std::fs::canonicalize(docs).ok() == std::fs::canonicalize(workspace_docs()).ok();
    if into_workspace && quick {
        return Err(MilestoneError::Other(format!(
            "report: --quick figures never go into {}: name another directory with --docs",
            workspace_docs().display()
        )));
    }
    if into_workspace && measuring && cfg!(debug_assertions) {
        return Err(MilestoneError::Other(
            "report: a debug build does not measure for docs/: run `cargo tito report` (release)".into(),
        ));
    }
    for page in pages {
        let path = docs.join(page.doc);
        let doc = std::fs::read_to_string(&path).map_err(|e| io_err("cannot read the page", &path, e))?;
        regions::spans(page.doc, &doc)?;
    }
    Ok(())
}

/// Runs the page's milestone in this process and saves its summary with this machine's stamp
/// (`docs/data/<milestone>.json`, written before rendering, so a renderer's error loses no
/// measurement), and copies the milestone's charts into `docs/figures/`. Returns what it saved.
///
/// # Errors
/// The milestone's own error, a chart it did not write, or a file that cannot be written.
pub fn measure(docs: &Path, page: &Page, opts: &Options) -> Result<Value> {
    let stamp = stamp::this_machine(opts.quick);
    let summary = crate::run(page.milestone, opts)
        .map_err(|e| MilestoneError::Other(format!("report: milestone {}: {e}", page.milestone)))?;
    let data = json!({ "stamp": stamp, "summary": summary });
    let text = serde_json::to_string_pretty(&data).expect("JSON values serialize") + "\n";
    tt_tensor::serialize::atomic_write(&data_path(docs, page), text.as_bytes())?;
    for (from, name) in page.figures {
        let src = opts.cache_dir.join(from);
        let bytes = std::fs::read(&src).map_err(|e| io_err("the milestone's chart", &src, e))?;
        tt_tensor::serialize::atomic_write(&docs.join("figures").join(name), &bytes)?;
    }
    Ok(data)
}

/// The saved summary and stamp of a page (`docs/data/<milestone>.json`), for re-rendering
/// without measuring.
///
/// # Errors
/// No saved data (the page was never measured into this directory), or a file that is not
/// JSON with a `stamp` and a `summary`.
pub fn from_data(docs: &Path, page: &Page) -> Result<Value> {
    let path = data_path(docs, page);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io_err("no saved measurement (run without --from-data first):", &path, e))?;
    let data: Value = serde_json::from_str(&text).map_err(|e| io_err("not JSON:", &path, e))?;
    for key in ["/stamp", "/summary"] {
        get(&data, key).map_err(|_| io_err("saved data lacks", &path, key))?;
    }
    Ok(data)
}

/// Renders the page's regions from `data` (a summary and its stamp) and rewrites them in place,
/// atomically. Returns the page's path.
///
/// # Errors
/// Settings that must not go to `docs` (quick ones into the workspace's docs/), a renderer's
/// error (a missing key), a renderer making the driver's `stamp` region, a marker error, or a
/// file that cannot be read or written.
pub fn write_page(docs: &Path, page: &Page, data: &Value) -> Result<PathBuf> {
    let (stamp, summary) = (get(data, "/stamp")?, get(data, "/summary")?);
    if get(stamp, "/settings")?.as_str() == Some("quick") {
        preflight(docs, &[page], true, false)?;
    }
    let mut rendered = (page.render)(summary)?;
    if rendered.iter().any(|r| r.name == STAMP) {
        return Err(MilestoneError::Other(format!(
            "report: {}: the renderer made the driver's `{STAMP}` region",
            page.doc
        )));
    }
    rendered.push(Region { name: STAMP, markdown: stamp::markdown(stamp)? });
    let path = docs.join(page.doc);
    let doc = std::fs::read_to_string(&path).map_err(|e| io_err("cannot read the page", &path, e))?;
    let new = regions::rewrite(page.doc, &doc, &rendered)?;
    tt_tensor::serialize::atomic_write(&path, new.as_bytes())?;
    Ok(path)
}

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

/// The string at `path`.
///
/// # Errors
/// No value there, or it is not a string.
pub fn text<'a>(summary: &'a Value, path: &str) -> Result<&'a str> {
    get(summary, path)?
        .as_str()
        .ok_or_else(|| MilestoneError::Other(format!("report: {path} is not a string in the summary")))
}

/// The boolean at `path`.
///
/// # Errors
/// No value there, or it is not a boolean.
pub fn flag(summary: &Value, path: &str) -> Result<bool> {
    get(summary, path)?
        .as_bool()
        .ok_or_else(|| MilestoneError::Other(format!("report: {path} is not a boolean in the summary")))
}

/// `x` with `decimals` digits after the point and commas between thousands: `12,345.6`.
pub fn grouped(x: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, x.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    if x.is_sign_negative() && s.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        out.insert(0, '-');
    }
    out
}

/// A count with thousands separators: `3526144` → `3,526,144`.
pub fn grouped_int(x: f64) -> String {
    grouped(x, 0)
}

/// A byte count in binary units: `32 KiB`, `1 MiB`, `21.3 KiB` (one decimal when not whole).
pub fn iec(bytes: f64) -> String {
    let (v, unit) =
        if bytes >= (1u64 << 20) as f64 { (bytes / (1u64 << 20) as f64, "MiB") } else { (bytes / 1024.0, "KiB") };
    if v.fract() == 0.0 {
        format!("{v} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// How a cell was summarised over `runs` runs: "one run" or "the median of N runs".
pub fn median_of(runs: f64) -> String {
    if runs == 1.0 {
        "one run".into()
    } else {
        format!("the median of {runs} runs")
    }
}

/// "yes" or "**no**" (a failed check stands out in a table).
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

/// The boolean at `path` as [`yes_no`]; `null` (not judged) as "n/a".
///
/// # Errors
/// No value there, or neither a boolean nor `null`.
pub fn yes_no_at(summary: &Value, path: &str) -> Result<&'static str> {
    match get(summary, path)? {
        Value::Bool(b) => Ok(yes_no(*b)),
        Value::Null => Ok("n/a"),
        _ => Err(MilestoneError::Other(format!("report: {path} is not a boolean in the summary"))),
    }
}

/// A fraction as a percentage with `decimals` places: `0.98333` → `98.33%`.
pub fn pct(x: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, 100.0 * x)
}

/// Milliseconds at `path`, or `—` where the summary holds `null` there (a latency the system
/// does not have, such as time to first token for a classifier). The key must exist.
///
/// # Errors
/// No value at `path`, or one that is neither a number nor `null`.
pub fn opt_ms(summary: &Value, path: &str, decimals: usize) -> Result<String> {
    match get(summary, path)? {
        Value::Null => Ok("—".into()),
        v => v
            .as_f64()
            .map(|x| format!("{x:.decimals$}"))
            .ok_or_else(|| MilestoneError::Other(format!("report: {path} is neither a number nor null"))),
    }
}

/// The one element of `rows` that has every `(key, value)` of `conds`; `what` names the array in
/// the error.
///
/// # Errors
/// None or several match.
pub fn find<'a>(rows: &'a [Value], what: &str, conds: &[(&str, Value)]) -> Result<&'a Value> {
    let mut hits = rows.iter().filter(|r| conds.iter().all(|(k, v)| &r[*k] == v));
    match (hits.next(), hits.next()) {
        (Some(r), None) => Ok(r),
        (None, _) => Err(MilestoneError::Other(format!("report: no row of {what} with {conds:?}"))),
        _ => Err(MilestoneError::Other(format!("report: several rows of {what} with {conds:?}"))),
    }
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
    fn grouped_numbers() {
        assert_eq!(grouped(3286.4, 0), "3,286");
        assert_eq!(grouped(1234567.891, 2), "1,234,567.89");
        assert_eq!(grouped(-999.0, 1), "-999.0");
        assert_eq!(grouped(-0.01, 1), "0.0");
        assert_eq!(grouped(65.0, 0), "65");
        assert_eq!(iec(32768.0), "32 KiB");
        assert_eq!(iec(21845.0), "21.3 KiB");
        assert_eq!(iec(33554432.0), "32 MiB");
    }

    #[test]
    fn a_missing_key_is_an_error_naming_it() {
        let v = serde_json::json!({"decode": {"tok_s": 3.5}});
        assert_eq!(num(&v, "/decode/tok_s").unwrap(), 3.5);
        let e = num(&v, "/decode/ms").unwrap_err().to_string();
        assert!(e.contains("/decode/ms"), "{e}");
    }

    #[test]
    fn numbers_read_as_the_pages_print_them() {
        assert_eq!(grouped_int(3_526_144.0), "3,526,144");
        assert_eq!(grouped_int(999.0), "999");
        assert_eq!(grouped_int(-1234.4), "-1,234");
        assert_eq!(pct(0.98333, 2), "98.33%");
        let v = serde_json::json!({"a": null, "b": 1.23456});
        assert_eq!(opt_ms(&v, "/a", 2).unwrap(), "—");
        assert_eq!(opt_ms(&v, "/b", 2).unwrap(), "1.23");
        assert!(opt_ms(&v, "/c", 2).is_err());
    }
}
