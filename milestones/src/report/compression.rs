//! The measured regions of the compression milestone's docs page.

use serde_json::Value;

use super::Region;
use crate::Result;

/// Charts the milestone writes: (path relative to the cache directory, name under docs/figures/).
pub const FIGURES: &[(&str, &str)] = &[];

/// # Errors
/// A key the page needs is missing from the summary.
pub fn render(_summary: &Value) -> Result<Vec<Region>> {
    Err(crate::MilestoneError::Other("report: the compression page has no renderer yet".into()))
}
