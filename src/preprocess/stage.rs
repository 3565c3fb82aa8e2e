//! The `preprocess` stage: the shard cache written by `fetch` -> the preprocessed store, in
//! memory bounded by `preprocessing.memory.max_bytes` whatever the data length.
//!
//! Two streaming passes over the shards. Pass 1 computes each shard's rows with the history
//! and look-ahead of its neighbours (so every row equals the whole-series computation),
//! writes them unscaled to a temporary file and keeps only small per-step arrays (labels,
//! price changes, usability). Then the splits are cut, samples selected, and the scaler is
//! fit by streaming the training rows. Pass 2 scales each shard into its final file. The
//! manifest is written last: a killed run never leaves a store that claims missing shards.
//! The store's layout, key and readers are [`crate::store`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::grid::{Grid, Levels, StepState};
use super::split::{self, Usable};
use super::{AssetInput, PrepareSpec, PreprocessError, weights};
use crate::config::{Config, SplitMethod};
use crate::data::cache::{CacheReader, sha256_hex, write_atomic};
use crate::data::dataobject::OrderBook;
use crate::data::npz::NpzWriter;
use crate::data::{DataError, fetch};
use crate::store::scaler::ScalerFit;
use crate::store::{
    GapCounts, RowShard, STORE_FORMAT_VERSION, Scaler, SplitRange, StoreManifest, read_manifest,
    read_rows, store_key, verify_store,
};

/// What `preprocess` produced.
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessSummary {
    /// The store directory.
    pub store_dir: PathBuf,
    /// Whether an existing store was reused.
    pub reused: bool,
    /// Samples per split.
    pub samples: [usize; 3],
    /// Feature columns.
    pub columns: usize,
    /// Steps on the grid.
    pub steps: usize,
}

/// Errors of the stage: its own, or reading the data cache.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Preprocessing rules.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// The data cache or the store's files.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A base model's scaler does not fit the rows computed now.
    #[error(
        "the base model's scaler has {expected} columns but the rows computed now have {got}: \
         the feature configuration differs from the base run's"
    )]
    FixedScaler {
        /// Columns of the scaler.
        expected: usize,
        /// Columns computed.
        got: usize,
    },
}

impl StageError {
    /// Exit code: 3 for data problems, 2 for a configuration that cannot fit the data.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            StageError::Data(e) => e.exit_code(),
            StageError::Preprocess(
                PreprocessError::AllNan(_)
                | PreprocessError::NoOverlap { .. }
                | PreprocessError::NoData(_)
                // Too little data for the configured window: a short day, not a bad config.
                | PreprocessError::WindowLongerThanSplit { .. },
            ) => crate::exit::ExitCode::Data,
            StageError::Preprocess(_) | StageError::FixedScaler { .. } => crate::exit::ExitCode::Usage,
        }
    }
}

/// Memory needed to process one shard: three shards of raw books (previous tail, current,
/// next head), their grid copy, the rows of the chunk twice (f64 features and output), and
/// the per-step arrays of the whole grid.
pub fn memory_needed(
    shard_steps: usize,
    history: usize,
    future: usize,
    assets: usize,
    depth: usize,
    columns: usize,
    total_steps: usize,
) -> u64 {
    let chunk = (shard_steps + history + future) as u64;
    let raw = 3 * shard_steps as u64 * assets as u64 * depth as u64 * 4 * 8;
    let grid = chunk * assets as u64 * depth as u64 * 4 * 8;
    let rows = chunk * columns as u64 * 8 * 2;
    // Labels, changes, volatility, usability, weights, regimes and sample indices, plus the
    // copies made while `samples.npz` is encoded (measured: ~140 bytes per step).
    let per_step = total_steps as u64 * 160;
    let robust = columns as u64 * crate::store::scaler::ROBUST_SAMPLE_CAP as u64 * 8;
    raw + grid + rows + per_step + robust
}

fn levels(book: &OrderBook) -> Levels<'_> {
    Levels {
        depth: book.bid_price.cols,
        bid_px: &book.bid_price.data,
        bid_qty: &book.bid_qty.data,
        ask_px: &book.ask_price.data,
        ask_qty: &book.ask_qty.data,
    }
}

/// The snapshots of `book` with `lo < ts <= hi`.
fn between(book: &OrderBook, lo: i64, hi: i64) -> OrderBook {
    let ts = &book.snapshot_timestamps;
    let (a, b) = (
        ts.partition_point(|t| *t <= lo),
        ts.partition_point(|t| *t <= hi),
    );
    let mut out = OrderBook::empty(book.bid_price.cols);
    let rows = |m: &crate::data::dataobject::Matrix| m.data[a * m.cols..b * m.cols].to_vec();
    out.snapshot_timestamps = ts[a..b].to_vec();
    for (dst, src) in [
        (&mut out.snapshot_features, &book.snapshot_features),
        (&mut out.bid_price, &book.bid_price),
        (&mut out.bid_qty, &book.bid_qty),
        (&mut out.ask_price, &book.ask_price),
        (&mut out.ask_qty, &book.ask_qty),
    ] {
        dst.data = rows(src);
        dst.rows = b - a;
    }
    out
}

/// Runs the stage for `config`, reusing a complete store with the same key unless `force`.
pub fn preprocess(config: &Config, force: bool) -> Result<PreprocessSummary, StageError> {
    preprocess_with(config, force, None)
}

/// Like [`preprocess`], but scaling with `fixed` (a base model's scaler, for fine-tuning: the
/// new rows must mean what the base model learned) instead of fitting one on the training rows.
pub fn preprocess_with(
    config: &Config,
    force: bool,
    fixed: Option<&Scaler>,
) -> Result<PreprocessSummary, StageError> {
    let _span = tracing::info_span!("preprocess").entered();
    let data_dir = fetch::cache_dir(config)?;
    let reader = CacheReader::open(&data_dir)?;
    let key = store_key(config, &reader.manifest().key, fixed);
    let dir = config.workdir.join("preprocessed").join(&key);
    if !force && let Some(m) = read_manifest(&dir) {
        // Reused only when every file still has the bytes the manifest hashed, as the fetch
        // cache does: a damaged store is rebuilt here, not found by `train` later.
        match verify_store(&dir, &m) {
            Ok(samples) => {
                return Ok(PreprocessSummary {
                    store_dir: dir,
                    reused: true,
                    samples: samples.ends.each_ref().map(Vec::len),
                    columns: m.columns.len(),
                    steps: m.steps,
                });
            }
            Err(e) => tracing::warn!("{e}: rebuilding the preprocessed store"),
        }
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| DataError::io(format!("creating {}", dir.display()), e))?;
    // The manifest goes first, so a store being rebuilt is never mistaken for a complete one.
    let _ = std::fs::remove_file(dir.join("manifest.json"));
    let built = build(config, fixed, &reader, data_dir, key, &dir);
    if built.is_err() {
        // Nothing half-written stays behind: without its manifest the directory is no store.
        let _ = std::fs::remove_dir_all(&dir);
    }
    built
}

/// Writes the store for `key` into `dir` (which holds no manifest), the manifest last.
fn build(
    config: &Config,
    fixed: Option<&Scaler>,
    reader: &CacheReader,
    data_dir: PathBuf,
    key: String,
    dir: &Path,
) -> Result<PreprocessSummary, StageError> {
    let spec = PrepareSpec::from_config(config);
    let symbols: Vec<String> = config
        .data
        .asset_pairs
        .all()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let grid = global_grid(reader, &symbols[0], spec.cadence_ms)?;
    let shard_spans: Vec<(i64, i64)> = reader
        .manifest()
        .shards
        .iter()
        .map(|s| (s.start_ms, s.end_ms))
        .collect();
    let ncols_probe = spec.features.columns().len() * symbols.len() + 16;
    let max_shard_steps = shard_spans
        .iter()
        .map(|(a, b)| ((b - a) / spec.cadence_ms) as usize + 1)
        .max()
        .unwrap_or(0);
    let needed = memory_needed(
        max_shard_steps,
        spec.history_steps(),
        spec.future_steps(),
        symbols.len(),
        spec.features.depth,
        ncols_probe,
        grid.steps,
    );
    let budget = config.preprocessing.memory.max_bytes;
    if needed > budget {
        return Err(PreprocessError::MemoryBudget { needed, budget }.into());
    }

    // Pass 1: unscaled rows per shard, small per-step arrays for the whole grid.
    let pass1 = pass_one(reader, &spec, &symbols, grid, &shard_spans, dir)?;
    let lookahead = spec.labels.lookahead();
    let window = config.preprocessing.window_steps as usize;
    let s = &config.preprocessing.train_test_split;
    let ranges = split::chronological(grid.steps, s.train_ratio, s.validation_ratio);
    for (range, name) in ranges.iter().zip(["train", "validation", "test"]) {
        if range.len() < window + lookahead {
            return Err(PreprocessError::WindowLongerThanSplit {
                split: name,
                steps: range.len(),
                window,
                lookahead,
            }
            .into());
        }
    }
    let usable = Usable::new(
        &pass1.row_ok,
        pass1.labels.iter().map(|l| *l != u32::MAX).collect(),
    );
    let ends = ranges.map(|r| usable.sample_ends(r, window, lookahead));
    let folds = match s.method {
        SplitMethod::WalkForward => split::walk_forward(
            SplitRange {
                start: 0,
                end: ranges[1].end,
            },
            s.n_folds as usize,
        ),
        SplitMethod::Chronological => Vec::new(),
    };
    let degradation_slices = ranges[2].slices(s.degradation_slices as usize);

    // The scaler sees training rows only.
    let groups = crate::store::scaler::groups(
        pass1.columns.len(),
        pass1.asset_columns,
        pass1.features_per_asset,
        config.preprocessing.normalization.per_asset,
    );
    let mut fit = ScalerFit::new(config.preprocessing.normalization.method, groups);
    for shard in pass1.shards.iter().filter(|_| fixed.is_none()) {
        let train = SplitRange {
            start: shard.first_step,
            end: shard.first_step + shard.steps,
        };
        let (a, b) = (
            train.start.max(ranges[0].start),
            train.end.min(ranges[0].end),
        );
        if a >= b {
            continue;
        }
        let rows = read_rows(&dir.join(&shard.file), pass1.columns.len())?;
        let n = pass1.columns.len();
        fit.update(&rows[(a - shard.first_step) * n..(b - shard.first_step) * n]);
    }
    let scaler = match fixed {
        Some(s) if s.center.len() == pass1.columns.len() => s.clone(),
        Some(s) => {
            return Err(StageError::FixedScaler {
                expected: s.center.len(),
                got: pass1.columns.len(),
            });
        }
        None => fit.finish(),
    };

    let class_names = super::labels::class_names(&spec.labels.boundaries);
    let class_counts = ends.each_ref().map(|e| {
        super::labels::class_counts(class_names.len(), e.iter().map(|&i| pass1.labels[i]))
    });
    let class_weights = weights::class_weights(&class_counts[0]);
    let tw = &config.preprocessing.time_weighting;
    let step_weights: Vec<f64> = if tw.enabled {
        let times: Vec<i64> = (0..grid.steps).map(|k| grid.time_ms(k)).collect();
        let newest = ends[0].last().map_or(grid.start_ms, |&e| grid.time_ms(e));
        weights::time_decay(&times, newest, tw.half_life_days)
    } else {
        vec![1.0; grid.steps]
    };
    let rd = &config.preprocessing.regime_detection;
    let regime_thresholds = if rd.enabled {
        let train_vol: Vec<f64> = ends[0].iter().map(|&e| pass1.volatility[e]).collect();
        weights::regime_thresholds(&train_vol, rd.n_regimes as usize)
    } else {
        Vec::new()
    };
    let regimes: Vec<i64> = pass1
        .volatility
        .iter()
        .map(|v| i64::from(weights::regime(*v, &regime_thresholds)))
        .collect();

    // Pass 2: scale each shard into its final file.
    let mut shards = Vec::with_capacity(pass1.shards.len());
    for (i, tmp) in pass1.shards.iter().enumerate() {
        let n = pass1.columns.len();
        let mut rows = read_rows(&dir.join(&tmp.file), n)?;
        scaler.transform_rows(&mut rows);
        let file = format!("rows-{i:04}.npz");
        let sha256 = write_rows(&dir.join(&file), &rows, n)?;
        let _ = std::fs::remove_file(dir.join(&tmp.file));
        shards.push(RowShard {
            file,
            first_step: tmp.first_step,
            steps: tmp.steps,
            sha256,
        });
    }
    let samples_sha256 = write_samples(dir, &ends, &pass1, &step_weights, &regimes)?;
    let manifest = StoreManifest {
        format_version: STORE_FORMAT_VERSION.into(),
        key,
        data_cache: data_dir,
        assets: symbols,
        columns: pass1.columns.clone(),
        features_per_asset: pass1.features_per_asset,
        asset_columns: pass1.asset_columns,
        grid_start_ms: grid.start_ms,
        cadence_ms: grid.cadence_ms,
        steps: grid.steps,
        window_steps: window,
        lookahead_steps: lookahead,
        ranges,
        folds,
        degradation_slices,
        scaler,
        class_names,
        class_counts,
        class_weights,
        regime_thresholds,
        gaps: pass1.gaps.into_iter().collect(),
        shards,
        samples_sha256,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_atomic(&dir.join("manifest.json"), &json)?;
    Ok(PreprocessSummary {
        store_dir: dir.to_path_buf(),
        reused: false,
        samples: ends.each_ref().map(Vec::len),
        columns: manifest.columns.len(),
        steps: grid.steps,
    })
}

/// The grid from the target's first to its last snapshot.
fn global_grid(reader: &CacheReader, target: &str, cadence_ms: i64) -> Result<Grid, StageError> {
    let with_target: Vec<usize> = reader
        .manifest()
        .shards
        .iter()
        .enumerate()
        .filter(|(_, s)| s.snapshots.get(target).is_some_and(|n| *n > 0))
        .map(|(i, _)| i)
        .collect();
    let (Some(&first), Some(&last)) = (with_target.first(), with_target.last()) else {
        return Err(PreprocessError::NoData(target.to_owned()).into());
    };
    let ts = |i: usize, pick_last: bool| -> Result<i64, StageError> {
        let shard = reader.shard(i)?;
        let t = &shard
            .order_books
            .iter()
            .find(|(s, _)| s.as_str() == target)
            .expect("target in shard")
            .1
            .snapshot_timestamps;
        Ok(if pick_last {
            *t.last().expect("non-empty")
        } else {
            t[0]
        })
    };
    Ok(Grid::covering(
        ts(first, false)?,
        ts(last, true)?,
        cadence_ms,
    ))
}

struct PassOne {
    columns: Vec<String>,
    features_per_asset: usize,
    asset_columns: usize,
    labels: Vec<u32>,
    price_changes: Vec<f64>,
    volatility: Vec<f64>,
    row_ok: Vec<bool>,
    gaps: BTreeMap<String, GapCounts>,
    shards: Vec<RowShard>,
}

fn pass_one(
    reader: &CacheReader,
    spec: &PrepareSpec,
    symbols: &[String],
    grid: Grid,
    spans: &[(i64, i64)],
    dir: &Path,
) -> Result<PassOne, StageError> {
    let n = grid.steps;
    let mut out = PassOne {
        columns: Vec::new(),
        features_per_asset: 0,
        asset_columns: 0,
        labels: vec![u32::MAX; n],
        price_changes: vec![f64::NAN; n],
        volatility: vec![f64::NAN; n],
        row_ok: vec![false; n],
        gaps: symbols
            .iter()
            .map(|s| (s.clone(), GapCounts::default()))
            .collect(),
        shards: Vec::new(),
    };
    let (history, future) = (spec.history_steps() as i64, spec.future_steps() as i64);
    let mut prev: Option<Vec<OrderBook>> = None;
    let mut spare: Vec<f64> = Vec::new();
    let mut current: Option<Vec<OrderBook>> = None;
    let books = |i: usize| -> Result<Vec<OrderBook>, StageError> {
        let mut shard = reader.shard(i)?;
        Ok(symbols
            .iter()
            .map(|s| {
                shard
                    .order_books
                    .iter_mut()
                    .find(|(k, _)| k.as_str() == s)
                    .map(|(_, b)| std::mem::replace(b, OrderBook::empty(spec.features.depth)))
                    .unwrap_or_else(|| OrderBook::empty(spec.features.depth))
            })
            .collect())
    };
    for (i, &(span_start, span_end)) in spans.iter().enumerate() {
        let cur = match current.take() {
            Some(c) => c,
            None => books(i)?,
        };
        let next = if i + 1 < spans.len() {
            Some(books(i + 1)?)
        } else {
            None
        };
        // The grid steps this shard owns: times in [span_start, span_end).
        let k0 = ((span_start - grid.start_ms).max(0) + grid.cadence_ms - 1) / grid.cadence_ms;
        let k1 = (((span_end - grid.start_ms) + grid.cadence_ms - 1) / grid.cadence_ms)
            .clamp(0, n as i64);
        if k0 >= k1 {
            prev = Some(cur);
            current = next;
            continue;
        }
        let (k0, k1) = (k0 as usize, k1 as usize);
        let start = k0.saturating_sub(history as usize);
        let end = (k1 + future as usize).min(n);
        let sub = Grid {
            start_ms: grid.time_ms(start),
            cadence_ms: grid.cadence_ms,
            steps: end - start,
        };
        let (lo, hi) = (sub.start_ms - sub.cadence_ms, sub.time_ms(sub.steps - 1));
        let joined: Vec<OrderBook> = (0..symbols.len())
            .map(|a| {
                let mut b = OrderBook::empty(spec.features.depth);
                for part in [
                    prev.as_ref().map(|p| &p[a]),
                    Some(&cur[a]),
                    next.as_ref().map(|x| &x[a]),
                ]
                .into_iter()
                .flatten()
                {
                    b.append(&between(part, lo, hi));
                }
                b
            })
            .collect();
        let inputs: Vec<AssetInput<'_>> = symbols
            .iter()
            .zip(&joined)
            .map(|(s, b)| AssetInput {
                symbol: s,
                ts_ms: &b.snapshot_timestamps,
                levels: levels(b),
            })
            .collect();
        // The previous shard's row buffer is reused: no fresh pages to zero per shard.
        let p = super::prepare_reusing(spec, &inputs, sub, std::mem::take(&mut spare))?;
        let ncols = p.columns.len();
        let (from, to) = (k0 - start, k1 - start);
        for k in k0..k1 {
            let c = k - start;
            out.labels[k] = p.labels[c];
            out.price_changes[k] = p.price_changes[c];
            out.volatility[k] = p.volatility[c];
            out.row_ok[k] = p.rows[c * ncols..(c + 1) * ncols]
                .iter()
                .all(|x| x.is_finite());
        }
        for (a, states) in p.states.iter().enumerate() {
            let g = out.gaps.get_mut(&symbols[a]).expect("symbol");
            for s in &states[from..to] {
                match s {
                    StepState::Real => g.real += 1,
                    StepState::Filled => g.filled += 1,
                    StepState::Missing => g.missing += 1,
                }
            }
        }
        let file = format!("unscaled-{i:04}.npz");
        let sha256 = write_rows(&dir.join(&file), &p.rows[from * ncols..to * ncols], ncols)?;
        out.shards.push(RowShard {
            file,
            first_step: k0,
            steps: k1 - k0,
            sha256,
        });
        if out.columns.is_empty() {
            out.columns = p.columns.clone();
            out.features_per_asset = p.features_per_asset;
            out.asset_columns = p.asset_columns;
        }
        spare = p.rows;
        prev = Some(cur);
        current = next;
    }
    Ok(out)
}

fn write_rows(path: &Path, rows: &[f64], ncols: usize) -> Result<String, DataError> {
    let mut w = NpzWriter::new();
    let f32s: Vec<f32> = rows.iter().map(|x| *x as f32).collect();
    w.add_matrix("rows", &f32s, rows.len() / ncols.max(1), ncols)
        .map_err(|e| DataError::io(format!("encoding {}", path.display()), e))?;
    let bytes = w
        .finish()
        .map_err(|e| DataError::io(format!("encoding {}", path.display()), e))?;
    write_atomic(path, &bytes)?;
    Ok(sha256_hex(&bytes))
}

fn write_samples(
    dir: &Path,
    ends: &[Vec<usize>; 3],
    p: &PassOne,
    weights: &[f64],
    regimes: &[i64],
) -> Result<String, DataError> {
    let path = dir.join("samples.npz");
    let io = |e| DataError::io(format!("encoding {}", path.display()), e);
    let mut w = NpzWriter::new();
    for (name, e) in ["train", "validation", "test"].iter().zip(ends) {
        w.add_vector(name, &e.iter().map(|x| *x as i64).collect::<Vec<_>>())
            .map_err(io)?;
    }
    let labels: Vec<i64> = p
        .labels
        .iter()
        .map(|l| if *l == u32::MAX { -1 } else { i64::from(*l) })
        .collect();
    w.add_vector("label", &labels).map_err(io)?;
    w.add_vector("regime", regimes).map_err(io)?;
    for (name, v) in [
        ("price_change", &p.price_changes[..]),
        ("weight", weights),
        ("volatility", &p.volatility),
    ] {
        w.add_matrix(name, v, v.len(), 1).map_err(io)?;
    }
    let bytes = w.finish().map_err(io)?;
    write_atomic(&path, &bytes)?;
    Ok(sha256_hex(&bytes))
}
