//! Finding and reading a preprocessed store: its key and directory, the manifest, the row
//! files and the samples, each checked against the hashes the manifest recorded.

use std::path::{Path, PathBuf};

use super::manifest::{STORE_FORMAT_VERSION, StoreManifest};
use super::scaler::Scaler;
use crate::config::Config;
use crate::data::DataError;
use crate::data::cache::{CacheReader, sha256_hex};
use crate::data::fetch;
use crate::data::npz::NpzReader;

/// The store's key: hash of everything that decides its content (a fixed scaler included).
pub fn store_key(config: &Config, data_key: &str, fixed: Option<&Scaler>) -> String {
    let relevant = serde_json::json!({
        "fixed_scaler": fixed,
        "format": STORE_FORMAT_VERSION,
        "data": data_key,
        "targets": config.targets,
        "temporal": config.data.temporal_features,
        "max_gap_seconds": config.data.validation.max_gap_seconds,
        "preprocessing": {
            "window_steps": config.preprocessing.window_steps,
            "normalization": config.preprocessing.normalization,
            "feature_engineering": config.preprocessing.feature_engineering,
            "train_test_split": config.preprocessing.train_test_split,
            "time_weighting": config.preprocessing.time_weighting,
            "regime_detection": config.preprocessing.regime_detection,
        },
    });
    sha256_hex(relevant.to_string().as_bytes())[..16].to_owned()
}

/// The store directory for `config`: `<workdir>/preprocessed/<key>`.
pub fn store_dir(config: &Config) -> Result<PathBuf, DataError> {
    store_dir_with(config, None)
}

/// The store directory for `config` with rows scaled by `fixed` instead of a scaler fit here.
pub fn store_dir_with(config: &Config, fixed: Option<&Scaler>) -> Result<PathBuf, DataError> {
    let data_dir = fetch::cache_dir(config)?;
    let reader = CacheReader::open(&data_dir)?;
    Ok(config
        .workdir
        .join("preprocessed")
        .join(store_key(config, &reader.manifest().key, fixed)))
}

/// Reads a row file's values as f64 (row-major, `ncols` columns).
pub fn read_rows(path: &Path, ncols: usize) -> Result<Vec<f64>, DataError> {
    Ok(read_rows_f32(path, ncols, None)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Reads a row file's float32 values (row-major, `ncols` columns), checking its sha256 when
/// `sha256` is given.
pub fn read_rows_f32(
    path: &Path,
    ncols: usize,
    sha256: Option<&str>,
) -> Result<Vec<f32>, DataError> {
    let bytes =
        std::fs::read(path).map_err(|e| DataError::io(format!("reading {}", path.display()), e))?;
    let corrupt = |message: String| DataError::CorruptStore {
        path: path.to_owned(),
        message,
    };
    if let Some(want) = sha256 {
        check_hash(path, &bytes, want)?;
    }
    let (_, cols, rows) = NpzReader::new(&bytes)
        .and_then(|mut r| r.read_matrix::<f32>("rows"))
        .map_err(|e| corrupt(e.to_string()))?;
    if cols != ncols {
        return Err(corrupt(format!(
            "array rows has {cols} columns, expected {ncols}"
        )));
    }
    Ok(rows)
}

/// The manifest of a complete store, if there is one.
pub fn read_manifest(dir: &Path) -> Option<StoreManifest> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Checks every file of the store at `dir` against `m`'s hashes; returns its samples.
pub fn verify_store(dir: &Path, m: &StoreManifest) -> Result<StoreSamples, DataError> {
    for shard in &m.shards {
        let path = dir.join(&shard.file);
        let bytes = std::fs::read(&path)
            .map_err(|e| DataError::io(format!("reading {}", path.display()), e))?;
        check_hash(&path, &bytes, &shard.sha256)?;
    }
    load_samples(dir, m)
}

/// A store file's bytes must hash to what the manifest recorded.
fn check_hash(path: &Path, bytes: &[u8], want: &str) -> Result<(), DataError> {
    if sha256_hex(bytes) == want {
        return Ok(());
    }
    Err(DataError::CorruptStore {
        path: path.to_owned(),
        message: "sha256 does not match the store manifest".into(),
    })
}

/// Sample indices and per-step arrays of a store.
#[derive(Debug, Clone)]
pub struct StoreSamples {
    /// Window ends of train, validation, test.
    pub ends: [Vec<usize>; 3],
    /// Class per step (`-1` where undefined).
    pub labels: Vec<i64>,
    /// Relative price change in percent over the horizon.
    pub price_changes: Vec<f64>,
    /// Time-decay weight per step.
    pub weights: Vec<f64>,
    /// Volatility regime per step.
    pub regimes: Vec<i64>,
}

/// Reads `samples.npz`, checking its hash against the manifest.
pub fn load_samples(dir: &Path, m: &StoreManifest) -> Result<StoreSamples, DataError> {
    let path = dir.join("samples.npz");
    let bytes = std::fs::read(&path)
        .map_err(|e| DataError::io(format!("reading {}", path.display()), e))?;
    let corrupt = |message: String| DataError::CorruptStore {
        path: path.clone(),
        message,
    };
    check_hash(&path, &bytes, &m.samples_sha256)?;
    let mut r = NpzReader::new(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut i64s = |name: &str| r.read_vector(name).map_err(|e| corrupt(e.to_string()));
    let ends = [i64s("train")?, i64s("validation")?, i64s("test")?]
        .map(|v| v.into_iter().map(|x: i64| x as usize).collect());
    let labels = i64s("label")?;
    let regimes = i64s("regime")?;
    // Per-step float columns are stored as `[steps x 1]`.
    let mut f64s = |name: &str| {
        r.read_matrix(name)
            .map(|(_, _, data)| data)
            .map_err(|e| corrupt(e.to_string()))
    };
    Ok(StoreSamples {
        ends,
        labels,
        price_changes: f64s("price_change")?,
        weights: f64s("weight")?,
        regimes,
    })
}
