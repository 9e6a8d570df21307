use thiserror::Error;

/// Everything tt-perf can refuse or fail at.
#[derive(Debug, Error)]
pub enum PerfError {
    /// A test setting or an argument is out of range; the message names it.
    #[error("invalid setting: {0}")]
    Settings(String),
    /// The system under test answered wrongly: an unknown or repeated response id, a missing response.
    #[error("system under test: {0}")]
    Sut(String),
    /// The system under test did not answer every sample within the completion timeout.
    #[error("system under test: {0}")]
    Timeout(String),
    /// A statistic was asked of data that cannot give it (no samples, a NaN latency).
    #[error("statistics: {0}")]
    Stats(String),
    /// Writing a log or report failed.
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, PerfError>;
