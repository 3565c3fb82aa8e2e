//! The error a command ends with, and its exit code (README "Exit codes"): the pipeline's
//! error or that of a command that runs outside the pipeline.

use crate::config::ConfigError;
use crate::exit::ExitCode;
use crate::pipeline;
use crate::predict::PredictError;
use crate::record::RecordError;
use crate::tracking::TrackingError;

/// Any error a command can end with; each variant knows its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pipeline stage (or the work-directory lock) failed.
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
    /// `predict` failed.
    #[error(transparent)]
    Predict(#[from] PredictError),
    /// `record` failed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// `tracking sync` failed.
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    /// `tracking sync` replayed everything it could, but the server refused some operations.
    #[error(
        "{summary}\n{failed} operation(s) could not be applied; they stay in the spool for the \
         next `binance-ml tracking sync`"
    )]
    SyncIncomplete {
        /// What the sync did, failures listed.
        summary: String,
        /// How many operations failed.
        failed: usize,
    },
}

impl Error {
    /// The exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Usage,
            Error::Pipeline(e) => e.exit_code(),
            Error::Predict(e) => e.exit_code(),
            Error::Record(e) => e.exit_code(),
            Error::Tracking(e) => e.exit_code(),
            Error::SyncIncomplete { .. } => ExitCode::External,
        }
    }
}

/// Shorthand for the commands' functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;
