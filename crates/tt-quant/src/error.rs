//! The crate's error type.

use thiserror::Error;
use tt_tensor::TensorError;

/// Everything that can go wrong at tt-quant's public boundary.
#[derive(Debug, Error)]
pub enum QuantError {
    /// An argument outside its domain (a NaN range, a group size of 0, a matrix too wide for
    /// int32 accumulation, …).
    #[error("invalid argument to {op}: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    /// Something this crate does not implement (said instead of approximated).
    #[error("not implemented: {0}")]
    Unsupported(String),
    /// A quantized checkpoint that cannot be saved or loaded as it is (see
    /// [`crate::checkpoint`]); `reason` names the tensor or metadata key and what is wrong.
    #[error("quantized checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// An error from tt-tensor (shapes, layers, checkpoints).
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Result alias used across the crate.
pub type Result<T, E = QuantError> = std::result::Result<T, E>;

impl QuantError {
    pub(crate) fn arg(op: &'static str, reason: impl Into<String>) -> Self {
        QuantError::InvalidArgument { op, reason: reason.into() }
    }
}

/// An empty `Vec` with room for `n` values, or an error naming `op` where that much memory cannot
/// be had: sizes a caller asks for (a reference product's `rows·out`, a weight's per-group
/// parameters) become an error instead of aborting the process (`vec![x; n]` aborts).
pub(crate) fn try_with_capacity<T>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        QuantError::arg(op, format!("{n} values of {} bytes do not fit in memory", std::mem::size_of::<T>()))
    })?;
    Ok(v)
}

/// [`try_with_capacity`] for a packed weight buffer the model keeps and every decode step
/// streams: backed by huge pages where the OS allows (see `tt_tensor::hugepages`).
pub(crate) fn try_weight_buffer<T>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v = try_with_capacity(op, n)?;
    tt_tensor::hugepages::advise_huge_pages(v.spare_capacity_mut());
    Ok(v)
}

/// Lets quantizers run inside tt-tensor's visitors (`map_linears`), whose callbacks return
/// `tt_tensor::Result`.
impl From<QuantError> for TensorError {
    fn from(e: QuantError) -> TensorError {
        match e {
            QuantError::Tensor(t) => t,
            QuantError::InvalidArgument { op, reason } => TensorError::InvalidArgument { op, reason },
            QuantError::Checkpoint { path, reason } => TensorError::File { path, reason },
            QuantError::Unsupported(what) => {
                TensorError::InvalidArgument { op: "tt-quant", reason: format!("not implemented: {what}") }
            }
        }
    }
}
