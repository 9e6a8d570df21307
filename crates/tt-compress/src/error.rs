//! The crate's error type.

use thiserror::Error;
use tt_tensor::TensorError;

/// Everything that can go wrong at tt-compress's public boundary.
#[derive(Debug, Error)]
pub enum CompressError {
    /// An argument outside its domain (an amount outside [0, 1], an unknown layer, …).
    #[error("invalid argument to {op}: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    /// An error from tt-tensor.
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Result alias used across the crate.
pub type Result<T, E = CompressError> = std::result::Result<T, E>;

impl CompressError {
    pub(crate) fn arg(op: &'static str, reason: impl Into<String>) -> Self {
        CompressError::InvalidArgument { op, reason: reason.into() }
    }
}

impl From<CompressError> for TensorError {
    fn from(e: CompressError) -> TensorError {
        match e {
            CompressError::Tensor(t) => t,
            CompressError::InvalidArgument { op, reason } => TensorError::InvalidArgument { op, reason },
        }
    }
}
