//! The crate-wide error and the process exit codes a script can branch on.

use std::fmt;

/// Documented process exit codes (README "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Usage or configuration error.
    Usage = 2,
    /// Bad data or input file.
    Data = 3,
    /// An external service failed: database, MLflow, Binance.
    External = 4,
    /// Training or evaluation failed.
    Training = 5,
    /// Another run holds the work-directory lock.
    Locked = 6,
}

impl ExitCode {
    /// The numeric code handed to the operating system.
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Any error a command can end with; each variant knows its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Fetching, caching or reading data failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// MLflow tracking (server, local store or spool) failed.
    #[error(transparent)]
    Tracking(#[from] crate::tracking::TrackingError),
    /// Preprocessing failed.
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::stage::StageError),
    /// Diagnostics could not run.
    #[error(transparent)]
    Diagnose(#[from] crate::diagnostics::stage::DiagnoseError),
    /// Diagnostics ran and found the data unfit for training (`fail_on_invalid`).
    #[error("diagnostics failed (data.validation.fail_on_invalid is true):\n  - {}", .0.join("\n  - "))]
    DiagnosticsFailed(Vec<String>),
    /// Building, training or loading a model failed.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// Recording order books failed.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// The hyperparameter search failed.
    #[error(transparent)]
    Hpo(#[from] crate::train::hpo::HpoError),
    /// A fine-tune cannot start.
    #[error(transparent)]
    Finetune(#[from] crate::pipeline::finetune::FinetuneError),
    /// A replay cannot start or continue.
    #[error(transparent)]
    Replay(#[from] crate::pipeline::replay::ReplayError),
    /// The work directory is in use by another process.
    #[error(transparent)]
    Lock(#[from] crate::pipeline::lock::LockError),
    /// Evaluation could not run.
    #[error(transparent)]
    Evaluate(#[from] crate::evaluate::EvaluateError),
    /// Prediction could not run.
    #[error(transparent)]
    Predict(#[from] crate::predict::PredictError),
    /// Writing a result or log failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Usage,
            Error::Io { .. } => ExitCode::Data,
            Error::Tracking(e) => e.exit_code(),
            Error::Data(e) => e.exit_code(),
            Error::Preprocess(e) => e.exit_code(),
            Error::Diagnose(crate::diagnostics::stage::DiagnoseError::Store(e)) => e.exit_code(),
            Error::Diagnose(_) | Error::DiagnosticsFailed(_) => ExitCode::Data,
            Error::Train(e) => e.exit_code(),
            Error::Predict(e) => e.exit_code(),
            Error::Evaluate(e) => e.exit_code(),
            Error::Lock(crate::pipeline::lock::LockError::Busy { .. }) => ExitCode::Locked,
            Error::Lock(_) => ExitCode::Data,
            Error::Finetune(_) => ExitCode::Usage,
            Error::Replay(crate::pipeline::replay::ReplayError::State(_)) => ExitCode::Data,
            Error::Replay(_) => ExitCode::Usage,
            Error::Hpo(e) => e.exit_code(),
            Error::Record(e) => e.exit_code(),
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
