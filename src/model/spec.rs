//! The resolved, validated model architecture: config lists zipped into per-layer specs.

use serde::{Deserialize, Serialize};

use super::ModelError;
use crate::config::{Activation, InputStrategy, ModelConfig, Pooling};
use crate::store::SampleShape;

/// One conv block: conv ("same" padding) -> activation -> pooling -> dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Output channels.
    pub filters: usize,
    /// `[time, feature]` kernel.
    pub kernel: [usize; 2],
    /// `[time, feature]` pool window (= stride).
    pub pool: [usize; 2],
    /// Dropout after the block.
    pub dropout: f64,
}

/// One hidden dense layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseSpec {
    /// Units.
    pub units: usize,
    /// Dropout after the activation.
    pub dropout: f64,
}

/// The model families, by their `model.architecture` name: the registry. Adding a family is
/// one module (`src/model/<family>.rs`), one variant here and its arm in
/// [`crate::model::Network::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Architecture {
    /// Conv blocks over (time x feature) maps, an LSTM over time, dense layers.
    #[default]
    #[serde(rename = "CNN_LSTM_MultiClass")]
    CnnLstm,
    /// Dense layers over the last time step's features of every asset: a small, fast
    /// baseline family that uses no history.
    #[serde(rename = "MLP_LastStep")]
    MlpLastStep,
}

impl Architecture {
    /// Every family: `(model.architecture name, variant)`.
    pub const ALL: [(&'static str, Architecture); 2] = [
        ("CNN_LSTM_MultiClass", Architecture::CnnLstm),
        ("MLP_LastStep", Architecture::MlpLastStep),
    ];

    /// The family named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }
}

/// Everything needed to build (and rebuild, for loading weights) the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The model family.
    #[serde(default)]
    pub architecture: Architecture,
    /// One sample's shape.
    pub input: SampleShape,
    /// Stacked channels or one branch per asset.
    pub strategy: InputStrategy,
    /// Conv blocks, in order.
    pub conv: Vec<ConvSpec>,
    /// max | avg.
    pub pooling: Pooling,
    /// Activation of conv and dense layers.
    pub activation: Activation,
    /// LSTM hidden size.
    pub lstm_units: usize,
    /// Dropout on the LSTM output.
    pub lstm_dropout: f64,
    /// Dropout on the recurrent state (one mask per sequence, as in Keras).
    pub recurrent_dropout: f64,
    /// Hidden dense layers.
    pub dense: Vec<DenseSpec>,
    /// Output classes.
    pub num_classes: usize,
}

fn check_dropout(field: String, value: f64) -> Result<f64, ModelError> {
    if value.is_finite() && (0.0..1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ModelError::Dropout { field, value })
    }
}

fn check_len(field: &'static str, got: usize, want: usize) -> Result<(), ModelError> {
    if got == want {
        Ok(())
    } else {
        Err(ModelError::LayerListLength { field, got, want })
    }
}

impl ModelSpec {
    /// Resolve `model` config for inputs of `input` shape, checking every list and size.
    pub fn from_config(cfg: &ModelConfig, input: SampleShape) -> Result<Self, ModelError> {
        let architecture = Architecture::from_name(&cfg.architecture)
            .ok_or_else(|| ModelError::UnknownArchitecture(cfg.architecture.clone()))?;
        if architecture == Architecture::MlpLastStep {
            // Only the dense head applies; conv and LSTM keys are ignored.
            let mut dense_only = cfg.clone();
            dense_only.architecture = "CNN_LSTM_MultiClass".into();
            dense_only.cnn.num_layers = 0;
            dense_only.cnn.filters.clear();
            dense_only.cnn.kernel_sizes.clear();
            dense_only.cnn.pool_sizes.clear();
            dense_only.cnn.dropout_rates.clear();
            let base = Self::from_config(&dense_only, input)?;
            return Ok(Self {
                architecture,
                lstm_units: 0,
                lstm_dropout: 0.0,
                recurrent_dropout: 0.0,
                ..base
            });
        }
        let cnn = &cfg.cnn;
        let n = cnn.num_layers as usize;
        check_len("cnn.filters", cnn.filters.len(), n)?;
        check_len("cnn.kernel_sizes", cnn.kernel_sizes.len(), n)?;
        check_len("cnn.pool_sizes", cnn.pool_sizes.len(), n)?;
        check_len("cnn.dropout_rates", cnn.dropout_rates.len(), n)?;
        check_len(
            "dense.dropout_rates",
            cfg.dense.dropout_rates.len(),
            cfg.dense.layers.len(),
        )?;
        for (field, v) in [
            ("input assets", input.assets),
            ("input time steps", input.time_steps),
            ("input features", input.features),
            ("lstm.units", cfg.lstm.units as usize),
        ] {
            if v == 0 {
                return Err(ModelError::Zero {
                    field: field.into(),
                });
            }
        }
        let mut conv = Vec::with_capacity(n);
        let (mut t, mut f) = (input.time_steps, input.features);
        for i in 0..n {
            let kernel = cnn.kernel_sizes[i].map(|k| k as usize);
            let pool = cnn.pool_sizes[i].map(|p| p as usize);
            let filters = cnn.filters[i] as usize;
            if filters == 0 || kernel.contains(&0) || pool.contains(&0) {
                return Err(ModelError::Zero {
                    field: format!("cnn layer {} filters/kernel_sizes/pool_sizes", i + 1),
                });
            }
            let (nt, nf) = (t / pool[0], f / pool[1]);
            if nt == 0 || nf == 0 {
                return Err(ModelError::PooledAway {
                    block: i + 1,
                    pool,
                    time: nt,
                    features: nf,
                    in_time: t,
                    in_features: f,
                });
            }
            (t, f) = (nt, nf);
            conv.push(ConvSpec {
                filters,
                kernel,
                pool,
                dropout: check_dropout(format!("cnn.dropout_rates[{i}]"), cnn.dropout_rates[i])?,
            });
        }
        let mut dense = Vec::new();
        for (i, (&units, &rate)) in cfg
            .dense
            .layers
            .iter()
            .zip(&cfg.dense.dropout_rates)
            .enumerate()
        {
            if units == 0 {
                return Err(ModelError::Zero {
                    field: format!("dense.layers[{i}]"),
                });
            }
            dense.push(DenseSpec {
                units: units as usize,
                dropout: check_dropout(format!("dense.dropout_rates[{i}]"), rate)?,
            });
        }
        let num_classes = cfg.output.num_classes as usize;
        if num_classes < 2 {
            return Err(ModelError::Classes(num_classes));
        }
        Ok(Self {
            architecture,
            input,
            strategy: cfg.input_representation.strategy,
            conv,
            pooling: cnn.pooling,
            activation: cnn.activation,
            lstm_units: cfg.lstm.units as usize,
            lstm_dropout: check_dropout("lstm.dropout".into(), cfg.lstm.dropout)?,
            recurrent_dropout: check_dropout(
                "lstm.recurrent_dropout".into(),
                cfg.lstm.recurrent_dropout,
            )?,
            dense,
            num_classes,
        })
    }

    /// Conv branches: one over all assets stacked as channels, or one per asset.
    pub fn branches(&self) -> usize {
        match self.strategy {
            InputStrategy::StackedChannels => 1,
            InputStrategy::SeparateBranches => self.input.assets,
        }
    }

    /// Input channels of the first conv layer of each branch.
    pub fn branch_in_channels(&self) -> usize {
        match self.strategy {
            InputStrategy::StackedChannels => self.input.assets,
            InputStrategy::SeparateBranches => 1,
        }
    }

    /// `[time, features]` of the map after conv block `i` (0-based); `None` = the input.
    pub fn map_after(&self, block: Option<usize>) -> [usize; 2] {
        let (mut t, mut f) = (self.input.time_steps, self.input.features);
        if let Some(b) = block {
            for c in &self.conv[..=b] {
                t /= c.pool[0];
                f /= c.pool[1];
            }
        }
        [t, f]
    }

    /// LSTM sequence length and width per step (all branches concatenated).
    pub fn sequence(&self) -> (usize, usize) {
        let last = self.conv.len().checked_sub(1);
        let [t, f] = self.map_after(last);
        let channels = self
            .conv
            .last()
            .map_or(self.branch_in_channels(), |c| c.filters);
        (t, channels * f * self.branches())
    }
}
