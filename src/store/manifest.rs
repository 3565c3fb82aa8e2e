//! What the preprocessed store holds: `manifest.json` and the value types it records.
//!
//! Store layout (`<workdir>/preprocessed/<key>/`): `rows-NNNN.npz` (`rows`: float32
//! `[steps x columns]`, scaled), `samples.npz` (window ends per split, per-step labels,
//! price changes, weights, regimes), `manifest.json` (columns, grid, splits, scaler, class
//! counts and weights, config hash, each file's sha256).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layout::RowLayout;
use super::scaler::Scaler;

/// Layout version of the preprocessed store.
pub const STORE_FORMAT_VERSION: &str = "1";

/// A half-open range of grid steps `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitRange {
    /// First step.
    pub start: usize,
    /// One past the last step.
    pub end: usize,
}

impl SplitRange {
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when the range holds no step.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Cuts the range into `k` consecutive parts of (nearly) equal length.
    pub fn slices(&self, k: usize) -> Vec<SplitRange> {
        let k = k.max(1);
        (0..k)
            .map(|i| SplitRange {
                start: self.start + self.len() * i / k,
                end: self.start + self.len() * (i + 1) / k,
            })
            .collect()
    }
}

/// Counts for the gap report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GapCounts {
    /// Steps holding a snapshot of their own.
    pub real: usize,
    /// Steps filled from the past.
    pub filled: usize,
    /// Steps left missing (gap longer than `max_gap`, or `skip`).
    pub missing: usize,
}

/// One file of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowShard {
    /// File name.
    pub file: String,
    /// First grid step it holds.
    pub first_step: usize,
    /// Steps it holds.
    pub steps: usize,
    /// sha256 of its bytes.
    pub sha256: String,
}

/// `manifest.json` of the preprocessed store: everything a consumer needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreManifest {
    /// Layout version.
    pub format_version: String,
    /// Hash of the configuration sections and the data this store was built from.
    pub key: String,
    /// The fetch cache it was built from.
    pub data_cache: PathBuf,
    /// Symbols, target first.
    pub assets: Vec<String>,
    /// Column names: `<SYMBOL>.<feature>` per asset, then temporal features.
    pub columns: Vec<String>,
    /// Columns per asset block.
    pub features_per_asset: usize,
    /// Columns of all asset blocks (temporal columns follow).
    pub asset_columns: usize,
    /// The cadence grid (start, cadence, steps).
    pub grid_start_ms: i64,
    /// Milliseconds between steps.
    pub cadence_ms: i64,
    /// Steps on the grid.
    pub steps: usize,
    /// Window length in steps.
    pub window_steps: usize,
    /// Label look-ahead in steps.
    pub lookahead_steps: usize,
    /// Train, validation and test step ranges.
    pub ranges: [SplitRange; 3],
    /// Walk-forward folds (train, validation) when `train_test_split.method` is walk_forward.
    pub folds: Vec<(SplitRange, SplitRange)>,
    /// Consecutive test slices for the degradation report.
    pub degradation_slices: Vec<SplitRange>,
    /// Scaler fit on the training rows.
    pub scaler: Scaler,
    /// Class names from the boundaries.
    pub class_names: Vec<String>,
    /// Samples per class in train, validation, test.
    pub class_counts: [Vec<u64>; 3],
    /// Loss weights per class, from the training counts.
    pub class_weights: Vec<f64>,
    /// Volatility thresholds between regimes (fit on training samples).
    pub regime_thresholds: Vec<f64>,
    /// Grid steps real / filled / missing per asset.
    pub gaps: Vec<(String, GapCounts)>,
    /// Row files in step order.
    pub shards: Vec<RowShard>,
    /// `samples.npz`'s sha256.
    pub samples_sha256: String,
}

impl StoreManifest {
    /// Where each asset's features sit in a row.
    pub fn layout(&self) -> RowLayout {
        RowLayout {
            assets: self.assets.len(),
            features_per_asset: self.features_per_asset,
            columns: self.columns.len(),
        }
    }
}
