//! Fail-fast memory budget check: does one training batch fit `training.memory.max_bytes`?

use super::TrainError;
use crate::model::{ModelSpec, ModelSummary};

/// Estimated peak bytes of one training step, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The batch on the host plus its copy on the device.
    pub batch: u64,
    /// Activations kept for backward, their gradients and dropout masks.
    pub activations: u64,
    /// Weights, gradients and Adam's two moments.
    pub model_and_optimizer: u64,
}

impl MemoryEstimate {
    /// Estimate for `batch_size` samples of `spec`'s model, f32 everywhere.
    pub fn of(spec: &ModelSpec, batch_size: usize) -> Self {
        let b = batch_size as u64;
        let summary = ModelSummary::of(spec);
        let sample = spec.input.len() as u64;
        // Each conv/pool/dense output is held forward, gets a gradient of the same size, and
        // conv outputs also keep their activation output: 3 copies is the working estimate.
        let layer_values: u64 = summary
            .layers
            .iter()
            .filter(|l| l.name != "lstm")
            .map(|l| l.output_shape.iter().product::<usize>() as u64)
            .sum();
        // The LSTM keeps, per step, its 4H gate pre-activations, their sigmoid/tanh outputs and
        // the cell and hidden states, each with a gradient.
        let (steps, width) = spec.sequence();
        let h = spec.lstm_units as u64;
        let lstm = steps as u64 * (2 * (8 * h + 4 * h)) + steps as u64 * width as u64 * 2;
        let per_sample = 3 * layer_values + lstm + 3 * sample;
        Self {
            batch: 2 * b * sample * 4,
            activations: b * per_sample * 4,
            model_and_optimizer: summary.total_params() * 4 * 4,
        }
    }

    /// Sum of the parts.
    pub fn total(&self) -> u64 {
        self.batch + self.activations + self.model_and_optimizer
    }
}

/// Error with the needed size when `budget` bytes cannot hold one training step.
pub fn check_memory_budget(
    spec: &ModelSpec,
    batch_size: usize,
    budget: u64,
) -> Result<MemoryEstimate, TrainError> {
    let est = MemoryEstimate::of(spec, batch_size);
    if est.total() > budget {
        return Err(TrainError::MemoryBudget {
            needed: est.total(),
            budget,
            detail: format!(
                "batch {} + activations {} + weights/gradients/Adam state {}, at batch_size {}",
                est.batch, est.activations, est.model_and_optimizer, batch_size
            ),
        });
    }
    Ok(est)
}
