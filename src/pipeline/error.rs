//! The pipeline's error: what any stage it runs can end with, and the exit code of each.
//! It wraps the stages' own errors (each from a layer below), as the caller of them all.

use crate::config::ConfigError;
use crate::data::DataError;
use crate::diagnostics::stage::DiagnoseError;
use crate::evaluate::EvaluateError;
use crate::exit::ExitCode;
use crate::model::ModelError;
use crate::predict::PredictError;
use crate::preprocess::stage::StageError;
use crate::tracking::TrackingError;
use crate::train::TrainError;
use crate::train::hpo::HpoError;

use super::lock::LockError;

/// Any error a pipeline stage can end with; each variant knows its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Fetching, caching or reading data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// MLflow tracking (server, local store or spool) failed.
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    /// Preprocessing failed.
    #[error(transparent)]
    Preprocess(#[from] StageError),
    /// Diagnostics could not run.
    #[error(transparent)]
    Diagnose(#[from] DiagnoseError),
    /// Diagnostics ran and found the data unfit for training (`fail_on_invalid`).
    #[error("diagnostics failed (data.validation.fail_on_invalid is true):\n  - {}", .0.join("\n  - "))]
    DiagnosticsFailed(Vec<String>),
    /// Building, training or loading a model failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Loading a model artifact failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The hyperparameter search failed.
    #[error(transparent)]
    Hpo(#[from] HpoError),
    /// A fine-tune cannot start.
    #[error(transparent)]
    Finetune(#[from] FinetuneError),
    /// A replay cannot start or continue.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The work directory is in use by another process.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Evaluation could not run.
    #[error(transparent)]
    Evaluate(#[from] EvaluateError),
    /// Prediction (or finding a model) failed.
    #[error(transparent)]
    Predict(#[from] PredictError),
    /// SIGINT/SIGTERM arrived between two stages: the next one was not started.
    #[error("stopped by {} before the {stage} stage", .signal.name())]
    Interrupted {
        /// The signal.
        signal: crate::interrupt::Signal,
        /// The stage that was not started.
        stage: &'static str,
    },
    /// Writing a result failed.
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
            Error::Config(_) | Error::Finetune(_) => ExitCode::Usage,
            Error::Interrupted { signal, .. } => signal.exit_code(),
            Error::Io { .. } | Error::DiagnosticsFailed(_) => ExitCode::Data,
            Error::Data(e) => e.exit_code(),
            Error::Tracking(e) => e.exit_code(),
            Error::Preprocess(e) => e.exit_code(),
            Error::Diagnose(e) => e.exit_code(),
            Error::Train(e) => e.exit_code(),
            Error::Model(e) => e.exit_code(),
            Error::Hpo(e) => e.exit_code(),
            Error::Replay(e) => e.exit_code(),
            Error::Lock(e) => e.exit_code(),
            Error::Evaluate(e) => e.exit_code(),
            Error::Predict(e) => e.exit_code(),
        }
    }
}

/// Shorthand for the pipeline's functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a fine-tune cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// No base model was named.
    #[error(
        "finetune needs a base model: --base-run-id or --base-model-alias (or \
         training.fine_tuning.base_model_run_id / base_model_alias)"
    )]
    NoBase,
    /// The configuration changes keys outside the allowed overrides.
    #[error(
        "the configuration differs from the base run's snapshot outside the allowed overrides \
         ({}):\n  - {}",
        .allowed.join(", "),
        .differences.join("\n  - ")
    )]
    Forbidden {
        /// The keys a fine-tune may change.
        allowed: &'static [&'static str],
        /// Each difference found, as `key: base X, now Y`.
        differences: Vec<String>,
    },
}

/// Why a replay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The range holds no day after the training days.
    #[error(
        "data.time_range holds {days} UTC day(s); replay needs more than --train-days ({train_days}): \
         the days after the training days are the ones replayed"
    )]
    TooFewDays {
        /// Days in the range.
        days: usize,
        /// Days the base trains on.
        train_days: u32,
    },
    /// A zero-length option.
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    /// The saved progress cannot be read or written.
    #[error("{0}")]
    State(String),
}

impl ReplayError {
    /// Exit code: 3 when the saved progress is unreadable, 2 for the options.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ReplayError::State(_) => ExitCode::Data,
            _ => ExitCode::Usage,
        }
    }
}
