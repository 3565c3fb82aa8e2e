//! The model artifact: everything inference needs, in one directory that `train` logs to
//! MLflow and `predict`/`evaluate` load back.
//!
//! ```text
//! model.json             ModelManifest: architecture, input layout, scaler, classes,
//!                        boundaries, calibration temperature, provenance, weights sha256
//! weights.bpk            Burn burnpack weights
//! training_config.yaml   the effective configuration (secrets redacted): feature recipe
//! ```
//!
//! The directory is written under a temporary name and renamed, so a reader never sees a
//! half-written model.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};

use super::{ModelError, ModelSpec, Network, Rng};
use crate::config::{ClassDefinition, Config};
use crate::data::cache::sha256_hex;
use crate::store::{RowLayout, Scaler};
use crate::tracking::ModelCard;

/// Layout version of the artifact directory.
pub const ARTIFACT_FORMAT_VERSION: &str = "1";
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "model.json";
/// The weights' file name.
pub const WEIGHTS_FILE: &str = "weights.bpk";
/// The configuration snapshot's file name.
pub const CONFIG_FILE: &str = "training_config.yaml";

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Layout version.
    pub format_version: String,
    /// `model.architecture`, e.g. `CNN_LSTM_MultiClass`.
    pub architecture: String,
    /// The resolved architecture (rebuilds the model).
    pub spec: ModelSpec,
    /// Symbols, target first.
    pub assets: Vec<String>,
    /// Store columns, in order (asset blocks, then temporal).
    pub columns: Vec<String>,
    /// How a row becomes the model input.
    pub layout: RowLayout,
    /// Window length in steps.
    pub window_steps: usize,
    /// Grid cadence, ms.
    pub cadence_ms: i64,
    /// `targets.prediction_horizon_seconds`.
    pub horizon_seconds: u64,
    /// Scaler fit on the training rows (applied to every input row).
    pub scaler: Scaler,
    /// Class names, lowest move first.
    pub class_names: Vec<String>,
    /// Class boundaries.
    pub boundaries: Vec<f64>,
    /// How boundaries are read.
    pub boundary_type: ClassDefinition,
    /// Mean relative price change (%) of each class's training samples: the expected move
    /// is the probability-weighted mean of these.
    pub class_mean_change_pct: Vec<f64>,
    /// Training samples per class (the baselines' prior on new data).
    pub train_class_counts: Vec<u64>,
    /// Softmax temperature (1.0 until `evaluate` calibrates it).
    pub temperature: f64,
    /// The preprocessed store the model was trained on.
    pub store_key: String,
    /// `binance_ml.config_hash` of the training run.
    pub config_hash: String,
    /// Epoch whose weights are stored.
    pub weights_epoch: u32,
    /// sha256 of `weights.bpk`.
    pub weights_sha256: String,
    /// When it was written (RFC 3339, UTC).
    pub created_at: String,
}

impl ModelManifest {
    /// The model as MLflow describes it (`MLmodel`): input `[batch, assets, window_steps,
    /// features]` float32 with the assets and features named in the metadata, output one
    /// probability per class.
    pub fn card(&self) -> ModelCard {
        let shape = self.layout.sample_shape(self.window_steps);
        let fa = self.layout.features_per_asset;
        // The feature axis: the target's block without its `SYMBOL.` prefix, then the
        // temporal columns (every asset's block has the same features).
        let features: Vec<&str> = self.columns[..fa]
            .iter()
            .map(|c| c.split_once('.').map_or(c.as_str(), |(_, f)| f))
            .chain(
                self.columns[self.layout.asset_columns()..]
                    .iter()
                    .map(String::as_str),
            )
            .collect();
        let metadata = BTreeMap::from([
            (
                "input_axes".to_owned(),
                serde_json::json!(["batch", "asset", "step", "feature"]),
            ),
            ("assets".to_owned(), serde_json::json!(self.assets)),
            ("features".to_owned(), serde_json::json!(features)),
            ("store_columns".to_owned(), serde_json::json!(self.columns)),
            (
                "window_steps".to_owned(),
                serde_json::json!(self.window_steps),
            ),
            (
                "cadence_seconds".to_owned(),
                serde_json::json!(self.cadence_ms as f64 / 1000.0),
            ),
            (
                "horizon_seconds".to_owned(),
                serde_json::json!(self.horizon_seconds),
            ),
            (
                "class_boundaries".to_owned(),
                serde_json::json!(self.boundaries),
            ),
            (
                "boundary_type".to_owned(),
                serde_json::json!(self.boundary_type),
            ),
            ("store_key".to_owned(), serde_json::json!(self.store_key)),
            (
                "input_scaling".to_owned(),
                serde_json::json!(format!(
                    "features are scaled by {MANIFEST_FILE}'s scaler (fit on the training \
                     split) before the model sees them"
                )),
            ),
        ]);
        ModelCard {
            model_type: self.architecture.clone(),
            input_shape: vec![shape.assets, shape.time_steps, shape.features],
            classes: self.class_names.clone(),
            files: BTreeMap::from([
                ("manifest".to_owned(), MANIFEST_FILE.to_owned()),
                ("weights".to_owned(), WEIGHTS_FILE.to_owned()),
                ("config".to_owned(), CONFIG_FILE.to_owned()),
            ]),
            metadata,
        }
    }
}

/// A loaded model artifact.
#[derive(Debug)]
pub struct ModelArtifact {
    /// The manifest.
    pub manifest: ModelManifest,
    /// The network, inference mode.
    pub model: Network,
    /// The training configuration snapshot (redacted).
    pub config_yaml: String,
}

fn art_err(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Artifact {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Model weights as burnpack bytes (also the model artifact's weights file).
pub fn model_to_bytes(model: &Network) -> Result<Vec<u8>, ModelError> {
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| art_err(Path::new("<memory>"), e))?;
    Ok(bytes.to_vec())
}

/// Rebuild `spec`'s model on `device` and load weights from burnpack bytes.
pub fn model_from_bytes(
    spec: &ModelSpec,
    bytes: &[u8],
    device: &Device,
) -> Result<Network, ModelError> {
    let blank = Network::new(spec, &mut Rng::new(0, "blank"), device);
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| art_err(Path::new("<weights>"), e))?;
    blank
        .try_load_record(record)
        .map_err(|e| art_err(Path::new("<weights>"), e))
}

impl ModelArtifact {
    /// Writes the artifact to `dir` atomically (any previous content is replaced).
    pub fn save(
        dir: &Path,
        manifest: &ModelManifest,
        model: &Network,
        config_yaml: &str,
    ) -> Result<(), ModelError> {
        let weights = model_to_bytes(model)?;
        let mut manifest = manifest.clone();
        manifest.weights_sha256 = sha256_hex(&weights);
        let tmp = sibling(dir, "tmp");
        let _ = fs::remove_dir_all(&tmp);
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&tmp)?;
            fs::write(tmp.join(WEIGHTS_FILE), &weights)?;
            fs::write(tmp.join(CONFIG_FILE), config_yaml)?;
            let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
            fs::write(tmp.join(MANIFEST_FILE), json)?;
            let old = sibling(dir, "old");
            if dir.exists() {
                let _ = fs::remove_dir_all(&old);
                fs::rename(dir, &old)?;
            }
            fs::rename(&tmp, dir)?;
            let _ = fs::remove_dir_all(&old);
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            art_err(dir, e)
        })
    }

    /// Reads and checks the artifact in `dir`, loading the weights onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|e| {
            art_err(
                &path,
                format!("{e} (not a binance-ml model directory: it needs {MANIFEST_FILE})"),
            )
        })?;
        let manifest: ModelManifest = serde_json::from_str(&text).map_err(|e| art_err(&path, e))?;
        if manifest.format_version != ARTIFACT_FORMAT_VERSION {
            return Err(art_err(
                &path,
                format!(
                    "format version {} is not {ARTIFACT_FORMAT_VERSION}; retrain the model",
                    manifest.format_version
                ),
            ));
        }
        let wpath = dir.join(WEIGHTS_FILE);
        let weights = fs::read(&wpath).map_err(|e| art_err(&wpath, e))?;
        if sha256_hex(&weights) != manifest.weights_sha256 {
            return Err(art_err(&wpath, "sha256 does not match model.json"));
        }
        let model =
            model_from_bytes(&manifest.spec, &weights, device).map_err(|e| art_err(&wpath, e))?;
        let cpath = dir.join(CONFIG_FILE);
        let config_yaml = fs::read_to_string(&cpath).map_err(|e| art_err(&cpath, e))?;
        Ok(Self {
            manifest,
            model,
            config_yaml,
        })
    }

    /// The training configuration, parsed (secrets are masked in it).
    pub fn config(&self, dir: &Path) -> Result<Config, ModelError> {
        serde_yaml_ng::from_str(&self.config_yaml).map_err(|e| art_err(&dir.join(CONFIG_FILE), e))
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}-{}", std::process::id()));
    dir.with_file_name(name)
}
