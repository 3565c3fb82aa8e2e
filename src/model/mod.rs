//! The CNN+LSTM classifier built from `model` config, its summary, and inference helpers.
//!
//! Model code never names a backend: tensors live on whatever `burn::tensor::Device` the caller
//! picked (see `crate::train::device`).

pub mod artifact;
pub mod cnn_lstm;
pub mod conv;
pub mod infer;
pub(crate) mod kernels;
pub mod lstm;
pub mod mlp;
pub mod network;
pub mod recurrence;
pub mod rng;
pub mod spec;
pub mod summary;
pub mod upload;

pub use artifact::{ModelArtifact, ModelManifest};
pub use cnn_lstm::CnnLstm;
pub use infer::{predict_logits, predict_proba};
pub use mlp::Mlp;
pub use network::Network;
pub use rng::Rng;
pub use spec::{Architecture, ConvSpec, DenseSpec, ModelSpec};
pub use summary::{LayerSummary, ModelSummary};

/// Whether `device` (or the device an autodiff device wraps) computes in host memory, where
/// reading a tensor back costs no transfer.
pub fn on_host(device: &burn::tensor::Device) -> bool {
    use burn::backend::DispatchDevice;
    #[allow(unreachable_patterns)] // without `tch`, flex and autodiff are the only variants
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(inner.clone().inner(), DispatchDevice::Flex(_)),
        _ => false,
    }
}

impl ModelError {
    /// Exit code: 5 for unreadable weights or artifact files, 2 for the configuration.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            ModelError::Artifact { .. } => crate::exit::ExitCode::Training,
            _ => crate::exit::ExitCode::Usage,
        }
    }
}

/// Why a model could not be built from its configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// A per-layer list does not have `num_layers` entries.
    #[error("model.{field} has {got} entries but model.cnn.num_layers is {want}")]
    LayerListLength {
        /// The config key, e.g. `cnn.filters`.
        field: &'static str,
        /// Its length.
        got: usize,
        /// `num_layers` (or `dense.layers` length).
        want: usize,
    },
    /// A size that must be positive is zero.
    #[error("model.{field} must be positive")]
    Zero {
        /// The config key.
        field: String,
    },
    /// A dropout rate outside [0, 1).
    #[error("model.{field} = {value} is not in [0, 1)")]
    Dropout {
        /// The config key.
        field: String,
        /// The rate given.
        value: f64,
    },
    /// Pooling shrank the time or feature axis to nothing.
    #[error(
        "conv block {block}: pooling {pool:?} leaves a [{time} x {features}] map from the input \
         [{in_time} x {in_features}]; use smaller pool_sizes, fewer layers or a longer window"
    )]
    PooledAway {
        /// 1-based block index.
        block: usize,
        /// `[time, feature]` pool.
        pool: [usize; 2],
        /// Time steps left.
        time: usize,
        /// Features left.
        features: usize,
        /// Time steps entering the block.
        in_time: usize,
        /// Features entering the block.
        in_features: usize,
    },
    /// `model.architecture` names no known family.
    #[error("model.architecture {0:?} is not a known model family")]
    UnknownArchitecture(String),
    /// Fewer than two classes.
    #[error("model.output.num_classes must be at least 2, got {0}")]
    Classes(usize),
    /// A model's weights or artifact files could not be written or read.
    #[error("checkpoint {}: {reason}", .path.display())]
    Artifact {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A batch whose length does not match the model input.
    #[error("input has {got} values; {batch} samples of {shape} need {want}")]
    InputSize {
        /// Values given.
        got: usize,
        /// Values needed.
        want: usize,
        /// Samples in the batch.
        batch: usize,
        /// The sample shape, as text.
        shape: String,
    },
}
