//! Checkpoints: model weights, Adam state, epoch, learning rate, callback state, RNG state and
//! history in ONE file, written atomically (temporary file, fsync, rename) so a crash leaves
//! either the previous checkpoint or the new one, never a torn one.
//!
//! Layout: magic `BMLCKPT1`, four little-endian u64 lengths (state JSON, model, optimizer,
//! best model or 0), then the four blobs. Weights and optimizer state are Burn's burnpack bytes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use super::callbacks::{EarlyStopping, ReduceLrOnPlateau};
use super::metrics::{ClassificationMetrics, EpochMetrics};
use crate::model::{ModelSpec, Rng};

const MAGIC: &[u8; 8] = b"BMLCKPT1";

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The architecture (a resume must rebuild the same model).
    pub spec: ModelSpec,
    /// The training seed.
    pub seed: u64,
    /// The batch size (a different one changes every later step).
    pub batch_size: usize,
    /// Epochs completed.
    pub epoch: u32,
    /// Learning rate for the next epoch.
    pub learning_rate: f64,
    /// Dropout RNG, as left after the last completed epoch.
    pub rng: Rng,
    /// Early-stopping state.
    pub early_stopping: Option<EarlyStopping>,
    /// Reduce-LR state.
    pub reduce_lr: Option<ReduceLrOnPlateau>,
    /// Metrics of every completed epoch.
    pub history: Vec<EpochMetrics>,
    /// Early stopping fired.
    pub stopped: bool,
    /// The epoch a stop signal cut short after a batch, if any: `--resume` continues it
    /// from the next batch (the epoch's batch order and the RNG are the same).
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
}

/// How far an interrupted epoch got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Batches of the epoch done.
    pub batches: usize,
    /// Training samples seen.
    pub seen: usize,
    /// Sum of the batches' weighted losses times their weights.
    pub loss_sum: f64,
    /// Sum of the weights.
    pub weight_sum: f64,
    /// Training predictions so far.
    pub metrics: ClassificationMetrics,
    /// Seconds the epoch ran before the stop.
    pub seconds: f64,
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Scalars and callback state.
    pub state: TrainState,
    /// Model weights (burnpack).
    pub model: Vec<u8>,
    /// Optimizer state (burnpack).
    pub optimizer: Vec<u8>,
    /// Best-epoch weights kept for `restore_best_weights`.
    pub best_model: Option<Vec<u8>>,
}

fn ck_err(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Checkpoint {
    /// Write atomically to `path` (parent directories are created).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| ck_err(path, e))?;
        }
        let json = serde_json::to_vec(&self.state).map_err(|e| ck_err(path, e))?;
        let best = self.best_model.as_deref().unwrap_or(&[]);
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            for len in [
                json.len(),
                self.model.len(),
                self.optimizer.len(),
                best.len(),
            ] {
                f.write_all(&(len as u64).to_le_bytes())?;
            }
            for blob in [&json[..], &self.model, &self.optimizer, best] {
                f.write_all(blob)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ck_err(path, e)
        })
    }

    /// Read and check a checkpoint file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let data = fs::read(path).map_err(|e| ck_err(path, e))?;
        if data.len() < 40 || &data[..8] != MAGIC {
            return Err(ck_err(path, "not a binance-ml checkpoint (bad header)"));
        }
        let mut lens = [0usize; 4];
        for (i, len) in lens.iter_mut().enumerate() {
            let raw: [u8; 8] = data[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes");
            *len = u64::from_le_bytes(raw) as usize;
        }
        if 40 + lens.iter().sum::<usize>() != data.len() {
            return Err(ck_err(path, "truncated or corrupt (lengths do not add up)"));
        }
        let mut at = 40;
        let mut take = |n: usize| {
            let s = &data[at..at + n];
            at += n;
            s.to_vec()
        };
        let json = take(lens[0]);
        let model = take(lens[1]);
        let optimizer = take(lens[2]);
        let best = take(lens[3]);
        let state = serde_json::from_slice(&json).map_err(|e| ck_err(path, e))?;
        Ok(Self {
            state,
            model,
            optimizer,
            best_model: (!best.is_empty()).then_some(best),
        })
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn floats_read_back_from_a_checkpoint_are_the_values_written() {
        // serde_json's default parser read this validation loss back 1 ulp off, so a resumed
        // run's history differed from the uninterrupted run's.
        for x in [
            1.0971842833927699_f64,
            0.1 + 0.2,
            1e-300,
            123_456.789_012_345_67,
        ] {
            let json = serde_json::to_vec(&x).unwrap();
            assert_eq!(serde_json::from_slice::<f64>(&json).unwrap(), x, "{x:?}");
        }
    }
}
