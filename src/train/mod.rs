//! Training: the loop over a [`BatchSource`], loss, metrics, callbacks, checkpoints, devices.

pub mod callbacks;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod hpo;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod source;
pub mod stage;
pub mod store;
pub mod trainer;

pub use callbacks::{EarlyStopping, Monitor, ReduceLrOnPlateau};
pub use device::{DeviceChoice, select_device};
pub use error::TrainError;
pub use loss::{balanced_class_weights, weighted_cross_entropy};
pub use memory::{MemoryEstimate, check_memory_budget};
pub use metrics::{ClassificationMetrics, EpochMetrics};
pub use source::{Batch, BatchIter, BatchSource, InMemorySource, Split, prefetch};
pub use store::StoreSource;
pub use trainer::{StepResult, TrainObserver, TrainOptions, TrainOutcome, Trainer};
