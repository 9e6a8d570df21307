//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong at tt-tensor's public boundary.
#[derive(Debug, Error)]
pub enum TensorError {
    /// Two shapes that had to agree did not.
    #[error("shape mismatch in {op}: {lhs:?} vs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },
    /// A shape that is invalid on its own (wrong rank, zero-size where not allowed, ...).
    #[error("invalid shape in {op}: {shape:?} ({reason})")]
    InvalidShape { op: &'static str, shape: Vec<usize>, reason: String },
    /// An axis or index out of range.
    #[error("{what} {index} out of range for {op} (limit {limit})")]
    OutOfRange { op: &'static str, what: &'static str, index: usize, limit: usize },
    /// An argument outside its domain (probability > 1, negative learning rate, ...).
    #[error("invalid argument to {op}: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    /// Autograd misuse, e.g. backward() on a non-scalar without an explicit gradient.
    #[error("autograd: {0}")]
    Autograd(String),
    /// A state dict that does not fit the module it is loaded into.
    #[error("state dict: {0}")]
    StateDict(String),
    /// A checkpoint or data file that is missing, truncated or corrupt.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    /// Plain I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias used across the crate.
pub type Result<T, E = TensorError> = std::result::Result<T, E>;

impl TensorError {
    pub(crate) fn shape(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Self {
        TensorError::ShapeMismatch { op, lhs: lhs.to_vec(), rhs: rhs.to_vec() }
    }
    pub(crate) fn invalid_shape(op: &'static str, shape: &[usize], reason: impl Into<String>) -> Self {
        TensorError::InvalidShape { op, shape: shape.to_vec(), reason: reason.into() }
    }
    pub(crate) fn arg(op: &'static str, reason: impl Into<String>) -> Self {
        TensorError::InvalidArgument { op, reason: reason.into() }
    }
}
