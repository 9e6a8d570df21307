//! `tito report`: measure each selected page's milestone (or read its saved data) and rewrite the
//! page's regions. The work is `milestones::report`'s; this loop adds the selection and progress.

use std::path::Path;

use milestones::report::{self, Page};

/// Regenerates the pages of `only` (every page if empty) under `docs`.
///
/// # Errors
/// The first failure — a page or directory that is not there, a marker error, a milestone's
/// error — stops the run; pages already written stay written.
pub fn run(docs: &Path, only: &[String], quick: bool, from_data: bool) -> milestones::Result<()> {
    let pages = report::select(only)?;
    report::preflight(docs, &pages, quick, !from_data)?;
    let opts = milestones::Options {
        json: true, // the human report goes to stderr, as progress
        quick,
        progress: false,
        serve_exe: std::env::current_exe().ok(),
        ..Default::default()
    };
    for page in pages {
        let data = if from_data { report::from_data(docs, page)? } else { measure(docs, page, &opts)? };
        let path = report::write_page(docs, page, &data)?;
        eprintln!("tito: report: wrote {}", path.display());
    }
    Ok(())
}

fn measure(docs: &Path, page: &Page, opts: &milestones::Options) -> milestones::Result<serde_json::Value> {
    eprintln!("tito: report: measuring {} for {}", page.milestone, page.doc);
    report::measure(docs, page, opts)
}
