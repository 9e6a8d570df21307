//! The crate's error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TransformerError {
    #[error(transparent)]
    Tensor(#[from] tt_tensor::TensorError),
    /// Text the tokenizer cannot represent, or ids it does not know.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An invalid model or training configuration.
    #[error("config: {0}")]
    Config(String),
    /// A sequence longer than the model's context.
    #[error("context overflow: position {position} is past max_seq_len {max_seq_len}")]
    ContextOverflow { position: usize, max_seq_len: usize },
    /// A checkpoint that is missing, truncated, corrupt or does not match its config.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An error from an inference engine used as a next-token source (e.g. a KV-cached decoder).
    #[error("engine: {0}")]
    Engine(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = TransformerError> = std::result::Result<T, E>;
