//! Errors of the shared state stores and of the cross-node driver.

/// What went wrong talking to the shared state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered with an error; the operation did not happen.
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with data this node cannot read (written by an incompatible version?).
    #[error("malformed shared state: {0}")]
    Malformed(String),
    /// A cross-node request got fewer answers than expected in time.
    #[error("timed out waiting for {missing} of {expected} nodes")]
    Timeout {
        /// Answers still missing when the deadline passed.
        missing: usize,
        /// Answers expected.
        expected: usize,
    },
}

impl From<fred::error::Error> for StoreError {
    fn from(e: fred::error::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;
