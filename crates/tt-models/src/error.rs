//! Errors of the loaders: each names the file and the field or tensor at fault.

use std::path::PathBuf;

/// What can go wrong reading a model or tokenizer from disk.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is not what it should be: `reason` names the field, tensor or offset.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The weights are fine but the model refused them (a config it cannot build).
    #[error(transparent)]
    Model(#[from] tt_transformer::TransformerError),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// A [`ModelError::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> ModelError {
        ModelError::Format { path: path.into(), reason: reason.into() }
    }
}
