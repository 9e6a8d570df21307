//! The size arithmetic behind every bounds check that guards this crate's `unsafe` code, in one
//! place and overflow-checked: a product that wraps would make a short slice look long enough,
//! and the kernels behind these checks read and write through raw pointers.

/// Elements a `rows × cols` matrix with row stride `stride` spans in a slice,
/// `(rows − 1)·stride + cols` (the last row need not be padded); 0 when it has no element.
/// `None` if that overflows `usize` (no slice can hold it).
pub(crate) fn strided_len(rows: usize, stride: usize, cols: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(stride)?.checked_add(cols)
}

/// The checks of `Projection::forward_rows` for an `out × in` matrix (its documented `# Panics`;
/// `tt_tensor::projection::project` reports the same conditions as errors first): `x` holds
/// `rows × in`, `y` holds `rows × out`, `bias` (if any) holds `out` floats. Returns whether there
/// is anything to compute — with no output element, a kernel that walks `rows` would spin through
/// up to `usize::MAX` empty rows.
///
/// # Panics
/// If a slice is too short or a size overflows `usize`, naming `op` and the sizes.
pub(crate) fn check_projection_rows(
    op: &str,
    (out_f, in_f): (usize, usize),
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &[f32],
) -> bool {
    let fits = |len: usize, per: usize| rows.checked_mul(per).is_some_and(|n| len >= n);
    assert!(
        fits(x.len(), in_f) && fits(y.len(), out_f),
        "{op}: {rows} rows of a {out_f}×{in_f} projection need {rows}·{in_f} inputs and {rows}·{out_f} \
         outputs, got {} and {}",
        x.len(),
        y.len()
    );
    if let Some(b) = bias {
        assert!(b.len() == out_f, "{op}: bias has {} entries for {out_f} outputs", b.len());
    }
    rows > 0 && out_f > 0
}
