//! The `fetch` stage: source -> quality rules -> shard cache, reusing valid shards.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::DataError;
use super::assemble::{Assembler, QualityReport};
use super::cache::{self, CacheReader, Manifest, ShardCache, ShardMeta};
use super::dataobject::{
    DATA_FORMAT_VERSION, DataObject, ExternalData, Metadata, TemporalFeatures, TimeSpan,
};
use super::sources::{self, Source};
use crate::config::{Config, SourceType};
use crate::tracking::{Dataset, file_uri};

/// What a fetch did.
#[derive(Debug, Clone, Serialize)]
pub struct FetchSummary {
    /// The cache directory (holds `manifest.json`).
    pub cache_dir: PathBuf,
    /// The cache key.
    pub key: String,
    /// Shards in the time range.
    pub shards: usize,
    /// Shards reused from an earlier fetch (including linked ones).
    pub shards_reused: usize,
    /// Of those, shards linked from the cache of another time range of the same source.
    pub shards_linked: usize,
    /// Shards fetched now.
    pub shards_fetched: usize,
    /// Snapshots kept per symbol.
    pub snapshots: BTreeMap<String, u64>,
    /// The summed data-quality report.
    pub quality: QualityReport,
}

impl FetchSummary {
    /// What was fetched, as an MLflow dataset: named by the source, digest = the cache key,
    /// source = where it came from (table, files or seed; never a connection string) and the
    /// cache holding it, schema = the source's columns, profile = snapshots and rows dropped.
    pub fn dataset(&self, config: &Config) -> Dataset {
        let d = &config.data;
        let (kind, origin) = match d.source_type {
            SourceType::Database => (
                "database",
                serde_json::json!({"table": d.connection.table_name}),
            ),
            SourceType::File => ("file", serde_json::json!({"paths": d.files.paths})),
            SourceType::Synthetic => ("synthetic", serde_json::json!({"seed": d.synthetic.seed})),
        };
        let source = serde_json::json!({
            "uri": file_uri(&self.cache_dir),
            "origin": origin,
            "start": d.time_range.start_date.start().to_rfc3339(),
            "end": d.time_range.end_date.end_exclusive().to_rfc3339(),
        });
        let c = &d.columns;
        let schema = serde_json::json!({"mlflow_colspec": [
            {"name": c.ts, "type": "long"},
            {"name": c.symbol, "type": "string"},
            {"name": c.level, "type": "integer"},
            {"name": c.bid_price, "type": "double"},
            {"name": c.bid_qty, "type": "double"},
            {"name": c.ask_price, "type": "double"},
            {"name": c.ask_qty, "type": "double"},
        ]});
        let profile = serde_json::json!({
            "snapshots": self.snapshots,
            "rows_read": self.quality.rows_read,
            "rows_dropped": self.quality.rows_dropped(),
            "snapshots_dropped": self.quality.snapshots_dropped(),
            "shards": self.shards,
            "depth_levels": d.order_book.depth_levels,
            "cadence_seconds": d.time_range.cadence_seconds.seconds(),
        });
        Dataset {
            name: source_label(config),
            digest: self.key.clone(),
            source_type: kind.into(),
            source: source.to_string(),
            schema: Some(schema.to_string()),
            profile: Some(profile.to_string()),
        }
    }
}

fn source_label(config: &Config) -> String {
    let kind = match config.data.source_type {
        SourceType::Database => "database",
        SourceType::File => "file",
        SourceType::Synthetic => "synthetic",
    };
    match &config.data.source_name {
        Some(name) => format!("{kind}:{name}"),
        None => kind.to_owned(),
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    // Drawn only on a terminal; logs and pipes stay clean.
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("fetch [{bar:40}] {pos}/{len} chunks {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Reads one shard; when the connection breaks, reconnects (with backoff) and reads the
/// whole shard again into a fresh assembler, so no row is counted twice.
fn read_with_retries(
    source: &mut dyn Source,
    span: &cache::Span,
    symbols: &[crate::config::Symbol],
    depth: usize,
    max_retries: u32,
    bar: &ProgressBar,
) -> Result<Assembler, DataError> {
    let mut retry = 0;
    loop {
        let mut asm = Assembler::new(symbols.to_vec(), depth);
        let position = bar.position();
        match source.read_span(span.start_ms, span.end_ms, &mut asm, bar) {
            Ok(()) => return Ok(asm),
            Err(e @ DataError::ConnectionLost { .. }) if retry < max_retries => {
                retry += 1;
                tracing::warn!(shard = %span.stem(), retry, max_retries, "{e}; reconnecting");
                std::thread::sleep(std::time::Duration::from_millis(500 << (retry - 1).min(5)));
                source.reconnect()?;
                bar.set_position(position);
            }
            Err(e) => return Err(e),
        }
    }
}

fn join(
    handle: std::thread::ScopedJoinHandle<'_, Result<ShardMeta, DataError>>,
) -> Result<ShardMeta, DataError> {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Applies the quality rules to one shard's rows and writes the shard.
fn finish_shard(
    store: &ShardCache,
    span: &cache::Span,
    source_key: &str,
    asm: Assembler,
    depth: usize,
    started: std::time::Instant,
    read_ms: u64,
) -> Result<ShardMeta, DataError> {
    let (books, quality) = asm.finish();
    for (symbol, book) in &books {
        book.validate(symbol.as_str(), depth)?;
    }
    let meta = store.write_shard(span, source_key, &books, quality)?;
    let q = &meta.quality;
    tracing::info!(
        shard = %span.stem(),
        rows = q.rows_read,
        snapshots = q.snapshots_kept,
        rows_dropped = q.rows_dropped(),
        rows_filtered_in_source = q.rows_filtered_in_source,
        snapshots_dropped = q.snapshots_dropped(),
        read_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "shard written"
    );
    Ok(meta)
}

/// The cache directory `fetch` writes for `config` (`<workdir>/data/<key>`), computed
/// without reading the source; it holds `manifest.json` once a fetch completed.
pub fn cache_dir(config: &Config) -> Result<PathBuf, DataError> {
    let source_key = cache::source_key(&config.data, &sources::fingerprint(&config.data)?);
    let key = cache::cache_key(&source_key, &config.data);
    Ok(ShardCache::dir_of(&config.workdir, &key))
}

/// Opens the complete cache of `config` for reading (an error naming `fetch` if there is
/// none: a stage never reads a partial or foreign cache).
pub fn open_cache(config: &Config) -> Result<CacheReader, DataError> {
    CacheReader::open(&cache_dir(config)?)
}

/// Fetches the configured time range into the shard cache under `config.workdir`; with
/// `force`, every shard is refetched.
pub fn fetch(config: &Config, force: bool) -> Result<FetchSummary, DataError> {
    let _span = tracing::info_span!("fetch").entered();
    let data = &config.data;
    let symbols = data.asset_pairs.all();
    let depth = data.order_book.depth_levels as usize;
    let start = data.time_range.start_date.start();
    let end = data.time_range.end_date.end_exclusive();
    let spans = cache::plan(
        start.timestamp_millis(),
        end.timestamp_millis(),
        data.cache.shard_seconds,
    );
    let source_key = cache::source_key(data, &sources::fingerprint(data)?);
    let key = cache::cache_key(&source_key, data);
    let store = ShardCache::create(&config.workdir, &key)?;
    tracing::info!(cache = %store.dir().display(), shards = spans.len(), "fetch starts");

    let mut metas: Vec<Option<ShardMeta>> = Vec::with_capacity(spans.len());
    for span in &spans {
        if force {
            metas.push(None);
            continue;
        }
        match store.check_shard(span) {
            Ok(meta) => metas.push(Some(meta)),
            Err(reason) => {
                if reason != "not fetched yet" {
                    tracing::warn!(shard = %span.stem(), "refetching shard: {reason}");
                }
                metas.push(None);
            }
        }
    }
    let mut missing: Vec<usize> = (0..spans.len()).filter(|&i| metas[i].is_none()).collect();
    let mut linked = 0;
    if !missing.is_empty() {
        store.remove_manifest()?;
    }
    if !force {
        // Shards another time range of the same source already holds.
        missing.retain(|&i| match store.adopt(&spans[i], &source_key) {
            Some(meta) => {
                metas[i] = Some(meta);
                linked += 1;
                false
            }
            None => true,
        });
    }
    let reused = spans.len() - missing.len();
    if !missing.is_empty() {
        let mut source: Box<dyn Source> = sources::open(data)?;
        let max_retries = data.connection.max_retries;
        tracing::info!(source = %source.describe(), shards = missing.len(), reused, "fetching");
        let total: u64 = missing
            .iter()
            .map(|&i| source.chunks_per_span(spans[i].end_ms - spans[i].start_ms))
            .sum();
        let bar = progress_bar(total);
        // Each shard is finished (quality rules, NPZ, sha256, fsync) on a second thread
        // while the next one streams in: at most two shards are in memory.
        let fetch_span = tracing::Span::current();
        std::thread::scope(|scope| -> Result<(), DataError> {
            let mut pending = None;
            for &i in &missing {
                let span = spans[i];
                bar.set_message(span.stem());
                let started = std::time::Instant::now();
                let asm =
                    read_with_retries(&mut *source, &span, &symbols, depth, max_retries, &bar)?;
                let read_ms = started.elapsed().as_millis() as u64;
                if let Some((j, handle)) = pending.take() {
                    metas[j] = Some(join(handle)?);
                }
                let (store, parent, source_key) = (&store, fetch_span.clone(), &source_key);
                let handle = scope.spawn(move || {
                    let _entered = parent.enter();
                    finish_shard(store, &span, source_key, asm, depth, started, read_ms)
                });
                pending = Some((i, handle));
            }
            if let Some((j, handle)) = pending.take() {
                metas[j] = Some(join(handle)?);
            }
            Ok(())
        })?;
        bar.finish_and_clear();
    }
    let shards: Vec<ShardMeta> = metas.into_iter().map(|m| m.expect("every shard")).collect();

    let mut quality = QualityReport::default();
    for s in &shards {
        quality.add(&s.quality);
    }
    for symbol in &symbols {
        let q = quality
            .per_symbol
            .get(symbol.as_str())
            .cloned()
            .unwrap_or_default();
        if q.rows_read + q.rows_filtered_in_source == 0 {
            // A file source is named by its files: one of them may be empty or header-only.
            let source_desc = match config.data.source_type {
                SourceType::File => format!("data.files.paths {:?}", config.data.files.paths),
                _ => source_label(config),
            };
            return Err(DataError::NoRows {
                symbol: symbol.to_string(),
                source_desc,
                start: start.to_rfc3339(),
                end: end.to_rfc3339(),
            });
        }
        if q.snapshots_kept == 0 {
            tracing::warn!(symbol = %symbol, "every snapshot was dropped by the quality rules");
        }
    }
    let num_samples = quality
        .per_symbol
        .get(symbols[0].as_str())
        .map_or(0, |q| q.snapshots_kept as usize);
    let metadata = Metadata {
        asset_pairs: symbols.clone(),
        time_range: TimeSpan {
            start,
            end,
            cadence_seconds: data.time_range.cadence_seconds.seconds(),
        },
        num_samples,
        order_book_depth: data.order_book.depth_levels,
        version: format!("{DATA_FORMAT_VERSION}-{key}"),
        source_hash: key.clone(),
        source: source_label(config),
    };
    // The metadata must describe a valid (empty-bodied) DataObject before it is published.
    DataObject {
        metadata: Metadata {
            num_samples: 0,
            ..metadata.clone()
        },
        order_books: symbols
            .iter()
            .map(|s| (s.clone(), super::OrderBook::empty(depth)))
            .collect(),
        temporal_features: TemporalFeatures::default(),
        targets: None,
        external_data: ExternalData::default(),
    }
    .validate()?;
    let manifest = Manifest {
        format_version: DATA_FORMAT_VERSION.to_owned(),
        key: key.clone(),
        source_key,
        metadata,
        shards,
        quality: quality.clone(),
        external_data: ExternalData::default(),
        created_at: Utc::now(),
    };
    store.write_manifest(&manifest)?;
    let snapshots = quality
        .per_symbol
        .iter()
        .map(|(s, q)| (s.clone(), q.snapshots_kept))
        .collect();
    tracing::info!(
        rows = quality.rows_read,
        snapshots = quality.snapshots_kept,
        rows_dropped = quality.rows_dropped(),
        rows_filtered_in_source = quality.rows_filtered_in_source,
        snapshots_dropped = quality.snapshots_dropped(),
        shards_reused = reused,
        shards_fetched = missing.len(),
        "fetch done"
    );
    Ok(FetchSummary {
        cache_dir: store.dir().to_owned(),
        key,
        shards: spans.len(),
        shards_reused: reused,
        shards_linked: linked,
        shards_fetched: missing.len(),
        snapshots,
        quality,
    })
}
