//! Why training (or reading a model or checkpoint for it) failed, and the exit code of each.

/// Why training could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model could not be built from its config.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The requested backend is not in this build.
    #[error("backend `{backend}` is not compiled into this binary: {hint}")]
    BackendNotCompiled {
        /// flex | tch | cuda.
        backend: String,
        /// How to get it.
        hint: String,
    },
    /// The device string is malformed or names no usable device.
    #[error("device `{device}`: {reason}")]
    Device {
        /// What was asked for, e.g. `cuda:1`.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// One batch (plus model and optimizer state) does not fit the memory budget.
    #[error(
        "training.memory.max_bytes = {budget} bytes cannot hold one training batch: about \
         {needed} bytes are needed ({detail}); raise the budget or lower training.batch_size"
    )]
    MemoryBudget {
        /// Bytes needed.
        needed: u64,
        /// Bytes allowed.
        budget: u64,
        /// Breakdown.
        detail: String,
    },
    /// A batch from the source is malformed.
    #[error("bad batch: {0}")]
    Batch(String),
    /// The data source failed.
    #[error("batch source: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A training option is invalid.
    #[error("training option: {0}")]
    Option(String),
    /// The loss became NaN or infinite.
    #[error("loss is not finite ({loss}) at epoch {epoch}, batch {batch}; lower the learning rate")]
    NonFiniteLoss {
        /// The value.
        loss: f32,
        /// 1-based epoch.
        epoch: u32,
        /// 0-based batch index.
        batch: usize,
    },
    /// There is no preprocessed store for this configuration.
    #[error(
        "no preprocessed data for this configuration at {}: run `binance-ml preprocess` first",
        .dir.display()
    )]
    NoStore {
        /// Where the store was looked for.
        dir: std::path::PathBuf,
    },
    /// A plot, summary or model file could not be written.
    #[error("writing {}: {reason}", .path.display())]
    Output {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Reading the preprocessed store or the data cache.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Logging the run to MLflow.
    #[error(transparent)]
    Tracking(#[from] crate::tracking::TrackingError),
    /// SIGINT/SIGTERM stopped training after a batch.
    #[error(
        "training stopped by {} in epoch {epoch} after batch {batch}{}",
        .signal.name(),
        match .checkpoint {
            Some(p) => format!(
                "; the checkpoint {} holds the epoch so far: `binance-ml train --resume` \
                 continues from the next batch (`finetune` resumes by itself)",
                p.display()
            ),
            None => String::new(),
        }
    )]
    Interrupted {
        /// The signal.
        signal: crate::interrupt::Signal,
        /// 1-based epoch.
        epoch: u32,
        /// Batches of it done.
        batch: usize,
        /// Where the state was saved.
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl TrainError {
    /// Exit code: 2 for what the user must change in config/flags (backend, device, budget,
    /// model shape), 3 for a store file that fails its checks, 5 for failures while training.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            TrainError::Model(e) => e.exit_code(),
            TrainError::Data(e) => e.exit_code(),
            TrainError::Tracking(e) => e.exit_code(),
            TrainError::BackendNotCompiled { .. }
            | TrainError::Device { .. }
            | TrainError::MemoryBudget { .. }
            | TrainError::Option(_) => crate::exit::ExitCode::Usage,
            TrainError::NoStore { .. } => crate::exit::ExitCode::Data,
            TrainError::Interrupted { signal, .. } => signal.exit_code(),
            // A damaged store file is bad input (3), not a failed training.
            TrainError::Source(e) => e
                .downcast_ref::<crate::data::DataError>()
                .map_or(crate::exit::ExitCode::Training, |d| d.exit_code()),
            _ => crate::exit::ExitCode::Training,
        }
    }
}
