//! The `evaluate` stage: metrics, baselines, calibration, degradation, backtest, saliency.

pub mod backtest;
pub mod baselines;
pub mod calibration;
pub mod linear;
pub mod metrics;
pub mod permutation;
pub mod saliency;
pub mod stage;

/// Why `evaluate` cannot run; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The store's rows do not mean what the model learned (other columns, window or scaler).
    #[error(
        "model run {model_run} was trained on preprocessed store {model_store}, whose columns, \
         window or scaler differ from this configuration's store {store}: evaluate with the \
         configuration it was trained with (its training_config.yaml artifact), or use \
         --start/--end to compute the rows with the model's own recipe"
    )]
    StoreMismatch {
        /// The model's training run.
        model_run: String,
        /// The store key in the model artifact.
        model_store: String,
        /// This configuration's store key.
        store: String,
    },
    /// The split has no samples.
    #[error("the {0} split has no samples to evaluate")]
    NoSamples(&'static str),
    /// Reading the store, the data cache or the source.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Finding the model or logging to MLflow.
    #[error(transparent)]
    Tracking(#[from] crate::tracking::TrackingError),
    /// Choosing the device or reading batches.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// Loading the model artifact.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Finding the model or computing rows with its recipe.
    #[error(transparent)]
    Predict(#[from] crate::predict::PredictError),
}

impl EvaluateError {
    /// Exit code: 2 for what the user must change, 3 for data.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            EvaluateError::NoSamples(_) => crate::exit::ExitCode::Data,
            EvaluateError::Data(e) => e.exit_code(),
            EvaluateError::Tracking(e) => e.exit_code(),
            EvaluateError::Train(e) => e.exit_code(),
            EvaluateError::Model(e) => e.exit_code(),
            EvaluateError::Predict(e) => e.exit_code(),
            EvaluateError::StoreMismatch { .. } => crate::exit::ExitCode::Usage,
        }
    }
}
