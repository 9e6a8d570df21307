use thiserror::Error;

/// Everything tt-perf can refuse or fail at.
#[derive(Debug, Error)]
pub enum PerfError {
    /// A test setting or an argument is out of range; the message names it.
    #[error("invalid setting: {0}")]
    Settings(String),
    /// A field of [`crate::loadgen::TestSettings`] is out of range, or would overflow the run's
    /// arithmetic (a duration beyond the clock's `u64` nanoseconds, a rate that is not a positive
    /// number, a count beyond [`crate::loadgen::MAX_SAMPLES`]); `field` is the field's name.
    #[error("invalid setting {field}: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    /// A count claimed by a library or a caller is beyond what a run may allocate; refused
    /// before allocating.
    #[error("{what} is {count}, above the limit of {limit}")]
    TooLarge { what: String, count: u128, limit: u64 },
    /// What a run would retain is beyond its memory budget
    /// ([`crate::loadgen::TestSettings::max_record_bytes`]): refused before allocating when the
    /// samples it must issue cannot fit, or the run stopped cleanly when its issued samples or the
    /// responses kept for an accuracy log grew past it. `samples` and `bytes` are what it would
    /// have held.
    #[error(
        "{what}: {samples} samples would retain about {bytes} bytes, above the budget of {limit} bytes (TestSettings::max_record_bytes)"
    )]
    OverBudget { what: String, samples: u64, bytes: u128, limit: u64 },
    /// The allocator refused memory within the budget (the machine has less free than the
    /// budget assumes): an error, not an abort.
    #[error("allocating {bytes} bytes for {what} failed")]
    Alloc { what: &'static str, bytes: u128 },
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
