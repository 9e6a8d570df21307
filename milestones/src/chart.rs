//! What every milestone chart shares: an SVG canvas in its directory, errors that name the
//! file, and the legend box. Each chart draws its own series.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{MilestoneError, Result};

/// A drawing error, naming the chart's file.
pub fn err(path: &Path, e: impl std::fmt::Display) -> MilestoneError {
    MilestoneError::Other(format!("chart {}: {e}", path.display()))
}

/// A white SVG canvas of `size` pixels at `path`, its directory created.
///
/// # Errors
/// The directory cannot be created, or the canvas cannot be filled.
pub fn canvas(path: &Path, size: (u32, u32)) -> Result<DrawingArea<SVGBackend<'_>, Shift>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
    }
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    Ok(root)
}

/// Draws the legend of `chart`'s labelled series at `position`, on a light box.
///
/// # Errors
/// Drawing fails.
pub fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    path: &Path,
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))
}
