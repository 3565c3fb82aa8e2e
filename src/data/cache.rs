//! The shard cache: `<workdir>/data/<key>/` holds one NPZ per `data.cache.shard_seconds` span,
//! a `.meta.json` beside each (sha256, snapshot counts, time span, quality report) and
//! `manifest.json`, the index of a complete fetch.
//!
//! Spans are aligned to multiples of `shard_seconds` since the Unix epoch (whole UTC days by
//! default), so two time ranges over the same source share their inner shards: a fetch whose
//! range grew (nightly fine-tuning) links the shards it already has from the sibling cache of
//! the same source (same `source_key`) instead of reading them again.
//!
//! Crash safety: every file is written to a temporary name, synced and renamed; a shard's
//! meta is written after its NPZ, so an NPZ without meta is never trusted; the manifest is
//! removed before any shard is (re)written and written last, so a killed fetch never leaves a
//! manifest that claims missing shards. A shard is reused only if its bytes hash to the
//! recorded sha256; readers check the hash again and refuse a shard that fails it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::DataError;
use super::assemble::QualityReport;
use super::dataobject::{
    DATA_FORMAT_VERSION, DataObject, ExternalData, Matrix, Metadata, OrderBook, TemporalFeatures,
};
use super::npz::{NpzReader, NpzWriter};
use crate::config::{DataConfig, SourceType, Symbol};

/// File name of the index.
pub const MANIFEST: &str = "manifest.json";

/// One shard's time span; shards tile the time range from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// 0-based position.
    pub index: usize,
    /// Inclusive start, UTC Unix ms.
    pub start_ms: i64,
    /// Exclusive end, UTC Unix ms.
    pub end_ms: i64,
}

impl Span {
    /// `shard-1722729600-1722816000` (start and end in Unix seconds): the same span has the
    /// same name in every cache.
    pub fn stem(&self) -> String {
        format!(
            "shard-{}-{}",
            self.start_ms.div_euclid(1000),
            self.end_ms.div_euclid(1000)
        )
    }
}

/// Cuts `[start_ms, end_ms)` at the multiples of `shard_seconds` since the epoch (the first
/// and last span may be shorter).
pub fn plan(start_ms: i64, end_ms: i64, shard_seconds: u64) -> Vec<Span> {
    let step = (shard_seconds.max(1) as i64).saturating_mul(1000);
    let mut spans = Vec::new();
    let mut t = start_ms;
    while t < end_ms {
        let boundary = (t.div_euclid(step) + 1).saturating_mul(step);
        let end = boundary.min(end_ms);
        spans.push(Span {
            index: spans.len(),
            start_ms: t,
            end_ms: end,
        });
        t = end;
    }
    spans
}

/// What decides the content of one shard span: source, columns, symbols, depth, cadence,
/// shard length, format version and the source's `fingerprint`, but not the time range
/// (except for the synthetic market, whose path starts at `start_date`). Connection tuning,
/// the source's label and the password are not part of it. 16 hex digits of a sha256.
pub fn source_key(data: &DataConfig, fingerprint: &str) -> String {
    let source = match data.source_type {
        SourceType::Database => serde_json::json!({
            "table": data.connection.table_name,
            "columns": data.columns,
        }),
        SourceType::File => serde_json::json!({
            "files": data.files,
            "columns": data.columns,
        }),
        SourceType::Synthetic => serde_json::json!({
            "synthetic": data.synthetic,
            "start": data.time_range.start_date.start(),
        }),
    };
    let relevant = serde_json::json!({
        "format": DATA_FORMAT_VERSION,
        "source_type": data.source_type,
        "source": source,
        "fingerprint": fingerprint,
        "symbols": data.asset_pairs.all(),
        "cadence_seconds": data.time_range.cadence_seconds,
        "depth": data.order_book.depth_levels,
        "shard_seconds": data.cache.shard_seconds,
    });
    hex(&Sha256::digest(relevant.to_string().as_bytes()))[..16].to_owned()
}

/// The cache key (directory name): the source key plus the time range.
pub fn cache_key(source_key: &str, data: &DataConfig) -> String {
    let relevant = serde_json::json!({
        "source_key": source_key,
        "start": data.time_range.start_date.start(),
        "end": data.time_range.end_date.end_exclusive(),
    });
    hex(&Sha256::digest(relevant.to_string().as_bytes()))[..16].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes` as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// What is recorded about one shard (its `.meta.json` and its manifest entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// The NPZ's file name.
    pub file: String,
    /// Position in this cache's time range.
    pub index: usize,
    /// The [`source_key`] the shard was cut from.
    pub source_key: String,
    /// Inclusive start, UTC Unix ms.
    pub start_ms: i64,
    /// Exclusive end, UTC Unix ms.
    pub end_ms: i64,
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
    /// sha256 of the NPZ bytes.
    pub sha256: String,
    /// Size of the NPZ in bytes.
    pub bytes: u64,
    /// Snapshots per symbol.
    pub snapshots: BTreeMap<String, usize>,
    /// The data-quality report of the shard.
    pub quality: QualityReport,
}

/// `manifest.json`: the index of a complete cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of the cache.
    pub format_version: String,
    /// The cache key (directory name).
    pub key: String,
    /// The source key shared by caches of other time ranges of the same source.
    pub source_key: String,
    /// The DataObject's metadata over all shards.
    pub metadata: Metadata,
    /// Every shard, in time order.
    pub shards: Vec<ShardMeta>,
    /// The quality reports of all shards, summed.
    pub quality: QualityReport,
    /// The DataObject's extension point, carried through the cache.
    pub external_data: ExternalData,
    /// When the manifest was written.
    pub created_at: DateTime<Utc>,
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_file_name(format!(
        "{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io(format!("cannot write {}", path.display()), e)
    })
}

/// The cache directory of one key.
#[derive(Debug, Clone)]
pub struct ShardCache {
    dir: PathBuf,
}

impl ShardCache {
    /// `<workdir>/data/<key>`, created if missing (stale temporary files are removed).
    pub fn create(workdir: &Path, key: &str) -> Result<Self, DataError> {
        let dir = Self::dir_of(workdir, key);
        fs::create_dir_all(&dir)
            .map_err(|e| DataError::io(format!("cannot create {}", dir.display()), e))?;
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(".tmp-") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self { dir })
    }

    /// `<workdir>/data/<key>`.
    pub fn dir_of(workdir: &Path, key: &str) -> PathBuf {
        workdir.join("data").join(key)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta_path(&self, span: &Span) -> PathBuf {
        self.dir.join(format!("{}.meta.json", span.stem()))
    }

    fn npz_path(&self, span: &Span) -> PathBuf {
        self.dir.join(format!("{}.npz", span.stem()))
    }

    /// The shard's meta if the shard is complete and its bytes match the recorded sha256;
    /// `Err` with the reason otherwise (missing, truncated, tampered).
    pub fn check_shard(&self, span: &Span) -> Result<ShardMeta, String> {
        let text =
            fs::read_to_string(self.meta_path(span)).map_err(|_| "not fetched yet".to_owned())?;
        let meta: ShardMeta =
            serde_json::from_str(&text).map_err(|e| format!("unreadable meta: {e}"))?;
        if (meta.start_ms, meta.end_ms) != (span.start_ms, span.end_ms) {
            return Err("meta describes another span".into());
        }
        let bytes = fs::read(self.npz_path(span)).map_err(|e| format!("cannot read NPZ: {e}"))?;
        let actual = sha256_hex(&bytes);
        if actual != meta.sha256 {
            return Err(format!(
                "sha256 {actual} of {} bytes does not match the recorded {} ({} bytes)",
                bytes.len(),
                meta.sha256,
                meta.bytes
            ));
        }
        Ok(ShardMeta {
            index: span.index,
            ..meta
        })
    }

    /// Links the valid shard of `span` from a sibling cache of the same `source_key` (hard
    /// link, else copy) and returns its meta; `None` when no sibling has it.
    pub fn adopt(&self, span: &Span, source_key: &str) -> Option<ShardMeta> {
        let parent = self.dir.parent()?;
        for entry in fs::read_dir(parent).ok()?.flatten() {
            let other = ShardCache { dir: entry.path() };
            if other.dir == self.dir || !other.meta_path(span).exists() {
                continue;
            }
            let Ok(meta) = other.check_shard(span) else {
                continue;
            };
            if meta.source_key != source_key {
                continue;
            }
            let target = self.npz_path(span);
            let tmp =
                target.with_file_name(format!("{}.npz.tmp-{}", span.stem(), std::process::id()));
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(self.meta_path(span));
            let linked = fs::hard_link(other.npz_path(span), &tmp)
                .or_else(|_| fs::copy(other.npz_path(span), &tmp).map(drop))
                .and_then(|()| fs::rename(&tmp, &target));
            let json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
            if linked.is_err() || write_atomic(&self.meta_path(span), &json).is_err() {
                let _ = fs::remove_file(&tmp);
                continue;
            }
            tracing::debug!(shard = %span.stem(), from = %other.dir.display(), "shard linked");
            return Some(meta);
        }
        None
    }

    /// Writes one shard (NPZ, then its meta) and returns the meta.
    pub fn write_shard(
        &self,
        span: &Span,
        source_key: &str,
        books: &BTreeMap<Symbol, OrderBook>,
        quality: QualityReport,
    ) -> Result<ShardMeta, DataError> {
        let npz_path = self.npz_path(span);
        let _ = fs::remove_file(self.meta_path(span));
        let mut w = NpzWriter::new();
        let io = |e| DataError::io(format!("cannot encode {}", npz_path.display()), e);
        for (symbol, book) in books {
            w.add_vector(
                &format!("{symbol}/snapshot_timestamps"),
                &book.snapshot_timestamps,
            )
            .map_err(io)?;
            for (name, m) in [
                ("snapshot_features", &book.snapshot_features),
                ("bid_price", &book.bid_price),
                ("bid_qty", &book.bid_qty),
                ("ask_price", &book.ask_price),
                ("ask_qty", &book.ask_qty),
            ] {
                w.add_matrix(&format!("{symbol}/{name}"), &m.data, m.rows, m.cols)
                    .map_err(io)?;
            }
        }
        let bytes = w.finish().map_err(io)?;
        write_atomic(&npz_path, &bytes)?;
        let meta = ShardMeta {
            file: format!("{}.npz", span.stem()),
            index: span.index,
            source_key: source_key.to_owned(),
            start_ms: span.start_ms,
            end_ms: span.end_ms,
            start: DateTime::from_timestamp_millis(span.start_ms).expect("valid span"),
            end: DateTime::from_timestamp_millis(span.end_ms).expect("valid span"),
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
            snapshots: books
                .iter()
                .map(|(s, b)| (s.to_string(), b.len()))
                .collect(),
            quality,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
        write_atomic(&self.meta_path(span), &json)?;
        Ok(meta)
    }

    /// Removes the manifest (before shards change).
    pub fn remove_manifest(&self) -> Result<(), DataError> {
        match fs::remove_file(self.dir.join(MANIFEST)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io(
                format!("cannot remove {}", self.dir.join(MANIFEST).display()),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Writes the manifest (last).
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), DataError> {
        let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        write_atomic(&self.dir.join(MANIFEST), &json)
    }
}

/// Reads a complete cache shard by shard.
#[derive(Debug, Clone)]
pub struct CacheReader {
    dir: PathBuf,
    manifest: Manifest,
}

impl CacheReader {
    /// Opens the cache in `dir` (its manifest must exist: only a complete fetch writes it).
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|e| {
            DataError::io(
                format!(
                    "cannot read {} (no complete cache: run `binance-ml fetch`)",
                    path.display()
                ),
                e,
            )
        })?;
        let manifest = serde_json::from_str(&text).map_err(|e| DataError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Each shard as a DataObject covering the shard's span, in time order; a shard whose
    /// bytes fail the recorded sha256 or shapes is an error, never data.
    pub fn shards(&self) -> impl Iterator<Item = Result<DataObject, DataError>> + '_ {
        self.manifest.shards.iter().map(|s| self.read_shard(s))
    }

    /// Shard `index` of the manifest (hash-checked like every read).
    pub fn shard(&self, index: usize) -> Result<DataObject, DataError> {
        self.read_shard(&self.manifest.shards[index])
    }

    /// Every shard concatenated into one DataObject (validated).
    pub fn load(&self) -> Result<DataObject, DataError> {
        let m = &self.manifest.metadata;
        let depth = m.order_book_depth as usize;
        let mut books: BTreeMap<Symbol, OrderBook> = m
            .asset_pairs
            .iter()
            .map(|s| (s.clone(), OrderBook::empty(depth)))
            .collect();
        for shard in self.shards() {
            for (symbol, book) in shard?.order_books {
                books.get_mut(&symbol).expect("symbols match").append(&book);
            }
        }
        let object = DataObject {
            metadata: m.clone(),
            order_books: books,
            temporal_features: TemporalFeatures::default(),
            targets: None,
            external_data: self.manifest.external_data.clone(),
        };
        object.validate()?;
        Ok(object)
    }

    fn read_shard(&self, meta: &ShardMeta) -> Result<DataObject, DataError> {
        let path = self.dir.join(&meta.file);
        let corrupt = |message: String| DataError::Corrupt {
            path: path.clone(),
            message,
        };
        let bytes = fs::read(&path).map_err(|e| corrupt(format!("cannot read: {e}")))?;
        let actual = sha256_hex(&bytes);
        if actual != meta.sha256 {
            return Err(corrupt(format!(
                "sha256 {actual} does not match the manifest's {}",
                meta.sha256
            )));
        }
        let m = &self.manifest.metadata;
        let mut npz = NpzReader::new(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut order_books = BTreeMap::new();
        for symbol in &m.asset_pairs {
            let f64s = |npz: &mut NpzReader, name: &str| {
                npz.read_matrix(&format!("{symbol}/{name}"))
                    .map(|(rows, cols, data)| Matrix::new(rows, cols, data))
                    .map_err(|e| corrupt(e.to_string()))
            };
            let snapshot_timestamps = npz
                .read_vector(&format!("{symbol}/snapshot_timestamps"))
                .map_err(|e| corrupt(e.to_string()))?;
            let book = OrderBook {
                snapshot_timestamps,
                snapshot_features: f64s(&mut npz, "snapshot_features")?,
                bid_price: f64s(&mut npz, "bid_price")?,
                bid_qty: f64s(&mut npz, "bid_qty")?,
                ask_price: f64s(&mut npz, "ask_price")?,
                ask_qty: f64s(&mut npz, "ask_qty")?,
            };
            order_books.insert(symbol.clone(), book);
        }
        let mut metadata = m.clone();
        metadata.time_range.start = meta.start;
        metadata.time_range.end = meta.end;
        metadata.num_samples = m
            .asset_pairs
            .first()
            .and_then(|s| order_books.get(s))
            .map_or(0, OrderBook::len);
        let object = DataObject {
            metadata,
            order_books,
            temporal_features: TemporalFeatures::default(),
            targets: None,
            external_data: self.manifest.external_data.clone(),
        };
        object.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_tile_the_range_on_epoch_aligned_boundaries() {
        let spans = plan(500_000, 2_500_000, 1_000);
        let bounds: Vec<(i64, i64)> = spans.iter().map(|s| (s.start_ms, s.end_ms)).collect();
        assert_eq!(
            bounds,
            [
                (500_000, 1_000_000),
                (1_000_000, 2_000_000),
                (2_000_000, 2_500_000)
            ]
        );
        assert_eq!(spans[1].index, 1);
        assert_eq!(spans[1].stem(), "shard-1000-2000");
        assert!(plan(5, 5, 10).is_empty());
    }
}
