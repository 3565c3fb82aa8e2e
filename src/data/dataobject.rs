//! The DataObject of spec §2.1 as serde types: metadata, per-symbol order books, temporal
//! features, targets and the `external_data` extension point.
//!
//! Timestamps are UTC Unix milliseconds (`i64`), the resolution of the `TIMESTAMP(3)` column.
//! The spec's raw `rows` of a symbol are held losslessly as the four level arrays (one row
//! per snapshot, one column per level), the "full depth tensor representation" it names.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::DataError;
use crate::config::Symbol;

/// Version of the DataObject layout and of the quality rules; part of every cache key.
pub const DATA_FORMAT_VERSION: &str = "1";

/// A dense row-major `f64` matrix (`rows x cols`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values, row by row.
    pub data: Vec<f64>,
}

impl Matrix {
    /// A matrix from its parts; `data.len()` must be `rows * cols` (checked by `validate`).
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        Self { rows, cols, data }
    }

    /// An empty matrix with `cols` columns, ready for [`Matrix::push_row`].
    pub fn with_cols(cols: usize) -> Self {
        Self {
            rows: 0,
            cols,
            data: Vec::new(),
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Appends one row of `cols` values.
    pub fn push_row(&mut self, row: &[f64]) {
        debug_assert_eq!(row.len(), self.cols);
        self.data.extend_from_slice(row);
        self.rows += 1;
    }

    /// Appends every row of `other` (same column count).
    pub fn append(&mut self, other: &Matrix) {
        debug_assert_eq!(other.cols, self.cols);
        self.data.extend_from_slice(&other.data);
        self.rows += other.rows;
    }

    fn check(&self, what: &str, rows: usize, cols: usize) -> Result<(), DataError> {
        if self.rows != rows || self.cols != cols || self.data.len() != rows * cols {
            return Err(DataError::Invalid(format!(
                "{what}: shape {}x{} with {} values, expected {rows}x{cols}",
                self.rows,
                self.cols,
                self.data.len()
            )));
        }
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(DataError::Invalid(format!(
                "{what}: non-finite value {} at row {}, column {}",
                self.data[i],
                i / cols.max(1),
                i % cols.max(1)
            )));
        }
        Ok(())
    }
}

/// `metadata.time_range`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSpan {
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
    /// Configured snapshot cadence (the data is aligned to it by `preprocess`).
    pub cadence_seconds: u32,
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Target asset first, then the correlated assets.
    pub asset_pairs: Vec<Symbol>,
    /// Time span and cadence.
    pub time_range: TimeSpan,
    /// Snapshots of the target asset.
    pub num_samples: usize,
    /// Levels per side in the level arrays.
    pub order_book_depth: u32,
    /// Dataset version: the format version and the source hash, e.g. `1-3fa4c2d19e0b7a51`.
    pub version: String,
    /// Hash of the source-relevant configuration (the cache key).
    pub source_hash: String,
    /// `database`, `file` or `synthetic`, with `data.source_name` when set.
    pub source: String,
}

/// One symbol's snapshots: `N` timestamps and `N x 4` / `N x depth` arrays aligned with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderBook {
    /// Snapshot timestamps (UTC Unix ms), strictly increasing.
    pub snapshot_timestamps: Vec<i64>,
    /// Top of book per snapshot: `[best_bid_price, best_bid_qty, best_ask_price, best_ask_qty]`.
    pub snapshot_features: Matrix,
    /// Bid prices, level 1 (best) first.
    pub bid_price: Matrix,
    /// Bid quantities.
    pub bid_qty: Matrix,
    /// Ask prices, level 1 (best) first.
    pub ask_price: Matrix,
    /// Ask quantities.
    pub ask_qty: Matrix,
}

impl OrderBook {
    /// An empty book of `depth` levels.
    pub fn empty(depth: usize) -> Self {
        Self {
            snapshot_timestamps: Vec::new(),
            snapshot_features: Matrix::with_cols(4),
            bid_price: Matrix::with_cols(depth),
            bid_qty: Matrix::with_cols(depth),
            ask_price: Matrix::with_cols(depth),
            ask_qty: Matrix::with_cols(depth),
        }
    }

    /// Number of snapshots.
    pub fn len(&self) -> usize {
        self.snapshot_timestamps.len()
    }

    /// True when there are no snapshots.
    pub fn is_empty(&self) -> bool {
        self.snapshot_timestamps.is_empty()
    }

    /// Appends one snapshot; `levels` holds `[bid_px, bid_qty, ask_px, ask_qty]` per level.
    pub fn push(&mut self, ts_ms: i64, levels: &[[f64; 4]]) {
        self.snapshot_timestamps.push(ts_ms);
        self.snapshot_features.push_row(&levels[0]);
        for (m, k) in [
            (&mut self.bid_price, 0),
            (&mut self.bid_qty, 1),
            (&mut self.ask_price, 2),
            (&mut self.ask_qty, 3),
        ] {
            m.data.extend(levels.iter().map(|l| l[k]));
            m.rows += 1;
        }
    }

    /// Appends every snapshot of `other` (a later shard of the same symbol).
    pub fn append(&mut self, other: &OrderBook) {
        self.snapshot_timestamps
            .extend_from_slice(&other.snapshot_timestamps);
        self.snapshot_features.append(&other.snapshot_features);
        self.bid_price.append(&other.bid_price);
        self.bid_qty.append(&other.bid_qty);
        self.ask_price.append(&other.ask_price);
        self.ask_qty.append(&other.ask_qty);
    }

    /// Checks shapes, strictly increasing timestamps, finite values, and that
    /// `snapshot_features` equals level 1.
    pub fn validate(&self, symbol: &str, depth: usize) -> Result<(), DataError> {
        let n = self.len();
        if let Some(w) = self
            .snapshot_timestamps
            .windows(2)
            .position(|w| w[1] <= w[0])
        {
            return Err(DataError::Invalid(format!(
                "order_books.{symbol}.snapshot_timestamps not strictly increasing at index {}: {} then {}",
                w + 1,
                self.snapshot_timestamps[w],
                self.snapshot_timestamps[w + 1]
            )));
        }
        self.snapshot_features
            .check(&format!("order_books.{symbol}.snapshot_features"), n, 4)?;
        for (name, m) in [
            ("bid_price", &self.bid_price),
            ("bid_qty", &self.bid_qty),
            ("ask_price", &self.ask_price),
            ("ask_qty", &self.ask_qty),
        ] {
            m.check(&format!("order_books.{symbol}.{name}"), n, depth)?;
        }
        for i in 0..n {
            let top = [
                self.bid_price.row(i)[0],
                self.bid_qty.row(i)[0],
                self.ask_price.row(i)[0],
                self.ask_qty.row(i)[0],
            ];
            if self.snapshot_features.row(i) != top {
                return Err(DataError::Invalid(format!(
                    "order_books.{symbol}.snapshot_features row {i} differs from level 1"
                )));
            }
        }
        Ok(())
    }
}

/// `temporal_features` (filled by `preprocess`; empty after `fetch`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TemporalFeatures {
    /// `N x local_feature_dim` cyclical calendar features.
    pub local: Matrix,
    /// `N x global_feature_dim` features.
    pub global: Matrix,
}

/// `targets` (filled by `preprocess`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// The predicted asset.
    pub asset: Symbol,
    /// `N` class labels.
    pub labels: Vec<u32>,
    /// `N` actual price changes over the horizon.
    pub price_changes: Vec<f64>,
    /// Prediction horizon in seconds.
    pub delta_t_seconds: u64,
}

/// `external_data`: the typed, empty extension point of spec §2.1, carried through caches.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExternalData {
    /// Named extra series, each `N x k`; no source fills it yet.
    pub series: BTreeMap<String, Matrix>,
}

/// The model-agnostic container shared by every downstream stage (spec §2.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataObject {
    /// What the data is.
    pub metadata: Metadata,
    /// One order book per symbol of `metadata.asset_pairs`.
    pub order_books: BTreeMap<Symbol, OrderBook>,
    /// Calendar features aligned with the target's snapshots (empty until `preprocess`).
    pub temporal_features: TemporalFeatures,
    /// Labels (absent until `preprocess`).
    pub targets: Option<Targets>,
    /// Extension point.
    pub external_data: ExternalData,
}

impl DataObject {
    /// Checks every invariant: one book per symbol, shapes, strictly increasing timestamps
    /// inside the time range, finite values, `num_samples`, and the optional sections'
    /// lengths.
    pub fn validate(&self) -> Result<(), DataError> {
        let m = &self.metadata;
        let depth = m.order_book_depth as usize;
        let start = m.time_range.start.timestamp_millis();
        let end = m.time_range.end.timestamp_millis();
        let listed: Vec<&Symbol> = m.asset_pairs.iter().collect();
        let present: Vec<&Symbol> = self.order_books.keys().collect();
        let mut sorted = listed.clone();
        sorted.sort();
        if sorted != present {
            return Err(DataError::Invalid(format!(
                "order_books has {present:?}, metadata.asset_pairs lists {listed:?}"
            )));
        }
        for (symbol, book) in &self.order_books {
            book.validate(symbol.as_str(), depth)?;
            if let (Some(&first), Some(&last)) = (
                book.snapshot_timestamps.first(),
                book.snapshot_timestamps.last(),
            ) && (first < start || last >= end)
            {
                return Err(DataError::Invalid(format!(
                    "order_books.{symbol}: snapshots {first}..={last} ms outside the time range {start}..{end} ms"
                )));
            }
        }
        let n = m
            .asset_pairs
            .first()
            .and_then(|s| self.order_books.get(s))
            .map_or(0, OrderBook::len);
        if m.num_samples != n {
            return Err(DataError::Invalid(format!(
                "metadata.num_samples is {}, the target has {n} snapshots",
                m.num_samples
            )));
        }
        for (name, f) in [
            ("temporal_features.local", &self.temporal_features.local),
            ("temporal_features.global", &self.temporal_features.global),
        ] {
            if f.rows != 0 {
                f.check(name, n, f.cols)?;
            }
        }
        if let Some(t) = &self.targets
            && (t.labels.len() != n || t.price_changes.len() != n)
        {
            return Err(DataError::Invalid(format!(
                "targets: {} labels and {} price changes for {n} samples",
                t.labels.len(),
                t.price_changes.len()
            )));
        }
        for (name, s) in &self.external_data.series {
            s.check(&format!("external_data.{name}"), n, s.cols)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> DataObject {
        let s = Symbol::new("BTCUSDT").unwrap();
        let mut book = OrderBook::empty(2);
        book.push(1_000, &[[10.0, 1.0, 11.0, 2.0], [9.0, 1.0, 12.0, 2.0]]);
        book.push(2_000, &[[10.5, 1.0, 11.5, 2.0], [9.5, 1.0, 12.5, 2.0]]);
        DataObject {
            metadata: Metadata {
                asset_pairs: vec![s.clone()],
                time_range: TimeSpan {
                    start: DateTime::from_timestamp_millis(0).unwrap(),
                    end: DateTime::from_timestamp_millis(10_000).unwrap(),
                    cadence_seconds: 1,
                },
                num_samples: 2,
                order_book_depth: 2,
                version: "1-x".into(),
                source_hash: "x".into(),
                source: "synthetic".into(),
            },
            order_books: [(s, book)].into(),
            temporal_features: TemporalFeatures::default(),
            targets: None,
            external_data: ExternalData::default(),
        }
    }

    #[test]
    fn a_consistent_object_validates_and_round_trips_through_json() {
        let o = object();
        o.validate().unwrap();
        assert_eq!(
            o.order_books.values().next().unwrap().bid_qty.row(1),
            &[1.0, 1.0]
        );
        let json = serde_json::to_string(&o).unwrap();
        let back: DataObject = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn validate_names_each_broken_invariant() {
        type Breaker = fn(&mut DataObject);
        let cases: [(Breaker, &str); 6] = [
            (
                |o| {
                    o.order_books
                        .values_mut()
                        .next()
                        .unwrap()
                        .snapshot_timestamps[1] = 1_000
                },
                "not strictly increasing at index 1",
            ),
            (
                |o| o.order_books.values_mut().next().unwrap().ask_qty.data[3] = f64::NAN,
                "order_books.BTCUSDT.ask_qty: non-finite value NaN at row 1, column 1",
            ),
            (
                |o| {
                    o.order_books
                        .values_mut()
                        .next()
                        .unwrap()
                        .bid_price
                        .data
                        .pop()
                        .map(drop)
                        .unwrap()
                },
                "order_books.BTCUSDT.bid_price: shape 2x2 with 3 values",
            ),
            (|o| o.metadata.num_samples = 3, "num_samples is 3"),
            (
                |o| o.metadata.time_range.end = DateTime::from_timestamp_millis(2_000).unwrap(),
                "outside the time range",
            ),
            (
                |o| {
                    o.order_books
                        .values_mut()
                        .next()
                        .unwrap()
                        .snapshot_features
                        .data[0] = 1.0
                },
                "snapshot_features row 0 differs from level 1",
            ),
        ];
        for (break_it, expected) in cases {
            let mut o = object();
            break_it(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }
}
