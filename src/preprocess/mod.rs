//! Preprocessing: order books -> leakage-free, ML-ready rows, labels and sample indices.
//!
//! Correct by construction:
//! - alignment and gap filling are causal (a step takes the last snapshot at or before it);
//! - features at step t read steps <= t only; labels read at most `lookahead` steps ahead;
//! - a sample is a window END index; windows are sliced at batch time, never materialised;
//! - a sample belongs to a split only if its window and its label both lie inside it (purge);
//! - scalers are fit on training rows only.
//!
//! Interpolation is a labels-only operation: an interpolated feature would read the next
//! snapshot, so under `handle_gaps: interpolate` features are forward-filled and label prices
//! are interpolated inside short gaps.

pub mod features;
pub mod grid;
pub mod labels;
pub mod split;
pub mod stage;
pub mod temporal;
pub mod weights;

use crate::config::{ClassDefinition, Config, GapHandling, NormalizationMethod};
use crate::store::{GapCounts, Scaler, SplitRange};

use features::FeatureSpec;
use grid::{Grid, Levels, StepState};
use labels::LabelSpec;
use split::Usable;

/// Why preprocessing cannot proceed; each names the asset, feature or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// An asset has no finite mid price at all.
    #[error("asset {0}: every mid price is NaN or missing; check the source data")]
    AllNan(String),
    /// A correlated asset has no snapshot inside the target's time range.
    #[error("asset {asset}: no snapshot overlaps the target {target}'s time range")]
    NoOverlap {
        /// The correlated asset.
        asset: String,
        /// The target asset.
        target: String,
    },
    /// The target has no snapshots.
    #[error("target asset {0} has no snapshots")]
    NoData(String),
    /// The horizon reaches past the data.
    #[error(
        "targets.prediction_horizon_seconds: a look-ahead of {lookahead} steps needs more than the {steps} steps of data"
    )]
    HorizonTooLong {
        /// Steps of look-ahead.
        lookahead: usize,
        /// Steps on the grid.
        steps: usize,
    },
    /// The configured memory budget cannot hold one shard's working set.
    #[error(
        "preprocessing.memory.max_bytes is {budget} bytes but one shard needs about {needed}: raise the budget or lower data.cache.shard_seconds (fewer steps per shard)"
    )]
    MemoryBudget {
        /// Bytes needed.
        needed: u64,
        /// Bytes allowed.
        budget: u64,
    },
    /// A split is too short for one window plus its label.
    #[error(
        "preprocessing.window_steps: the {split} split has {steps} steps, fewer than window ({window}) + look-ahead ({lookahead}); use more data or a shorter window"
    )]
    WindowLongerThanSplit {
        /// Which split.
        split: &'static str,
        /// Its length in steps.
        steps: usize,
        /// Window length.
        window: usize,
        /// Label look-ahead.
        lookahead: usize,
    },
}

/// One asset's snapshots as read from the DataObject.
#[derive(Debug, Clone, Copy)]
pub struct AssetInput<'a> {
    /// Symbol, for messages and column names.
    pub symbol: &'a str,
    /// Snapshot times, UTC Unix ms, strictly increasing.
    pub ts_ms: &'a [i64],
    /// Level arrays aligned with `ts_ms`.
    pub levels: Levels<'a>,
}

/// Everything `prepare` needs from the configuration, in grid units.
#[derive(Debug, Clone)]
pub struct PrepareSpec {
    /// Per-asset features.
    pub features: FeatureSpec,
    /// Labels.
    pub labels: LabelSpec,
    /// Cyclical calendar features.
    pub temporal_local: Vec<String>,
    /// Other temporal features.
    pub temporal_global: Vec<String>,
    /// Gap handling.
    pub handling: GapHandling,
    /// Longest gap that may be filled, ms.
    pub max_gap_ms: i64,
    /// Grid cadence, ms.
    pub cadence_ms: i64,
    /// Instant `days_since_start` counts from (the start of the whole data set, so chunks
    /// agree with the whole).
    pub origin_ms: i64,
}

impl PrepareSpec {
    /// Reads the relevant configuration sections.
    pub fn from_config(c: &Config) -> Self {
        let cadence = u64::from(c.data.time_range.cadence_seconds.seconds());
        let fe = &c.preprocessing.feature_engineering;
        let pc = &c.targets.price_classes;
        Self {
            features: FeatureSpec {
                names: fe
                    .order_book_features
                    .iter()
                    .chain(&fe.derived_features)
                    .cloned()
                    .collect(),
                momentum_windows: fe.momentum_windows.iter().map(|w| *w as usize).collect(),
                depth_levels_used: fe.depth_imbalance_levels as usize,
                depth: c.data.order_book.depth_levels as usize,
                level_features: fe.level_features,
            },
            labels: LabelSpec {
                definition: pc.definition_type,
                boundaries: pc.boundaries.clone(),
                horizon_steps: (c.targets.prediction_horizon_seconds / cadence) as usize,
                smoothing_steps: c.targets.labeling.smoothing_steps as usize,
                volatility_window_steps: (pc.volatility_window_seconds / cadence).max(2) as usize,
            },
            temporal_local: c.data.temporal_features.local.clone(),
            temporal_global: c.data.temporal_features.global.clone(),
            handling: c.targets.labeling.handle_gaps,
            max_gap_ms: c.data.validation.max_gap_seconds as i64 * 1000,
            cadence_ms: cadence as i64 * 1000,
            origin_ms: c.data.time_range.start_date.start().timestamp_millis(),
        }
    }
}

impl PrepareSpec {
    /// Grid steps of history a chunk needs in front of its first step for its rows to equal
    /// the whole computation: the longest look-back plus the longest gap that may be filled.
    pub fn history_steps(&self) -> usize {
        let lookback = self
            .features
            .lookback()
            .max(self.labels.volatility_window_steps + 1);
        lookback + self.max_gap_steps() + 1
    }

    /// Steps of history a row's features read (the longest momentum window): a window of
    /// `w` steps needs `w` + this many consecutive usable steps.
    pub fn feature_lookback(&self) -> usize {
        self.features.lookback()
    }

    /// Grid steps to read in front of the first window of a model's input for its rows (and,
    /// with `labels`, its labels) to equal the store's. Unlike [`Self::history_steps`] the
    /// trailing-volatility window counts only where something reads it: `adaptive` labels.
    /// (The stored per-step volatility, for regimes, needs it in preprocessing only.)
    pub fn input_history_steps(&self, labels: bool) -> usize {
        let volatility = if labels && self.labels.definition == ClassDefinition::Adaptive {
            self.labels.volatility_window_steps + 1
        } else {
            0
        };
        self.feature_lookback().max(volatility) + self.max_gap_steps() + 1
    }

    /// Grid steps a chunk needs behind its last step for its labels to equal the whole
    /// computation: the look-ahead plus the gap an interpolated label price may span.
    pub fn future_steps(&self) -> usize {
        self.labels.lookahead() + self.max_gap_steps() + 1
    }

    fn max_gap_steps(&self) -> usize {
        (self.max_gap_ms / self.cadence_ms.max(1)) as usize
    }
}

/// Unscaled rows, labels and usability of every grid step.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The cadence grid (covering the target's snapshots).
    pub grid: Grid,
    /// Column names: `<SYMBOL>.<feature>` per asset, then the temporal features.
    pub columns: Vec<String>,
    /// Features per asset block (the same for every asset).
    pub features_per_asset: usize,
    /// Columns of all asset blocks; the temporal columns follow.
    pub asset_columns: usize,
    /// `[steps x columns]`, row-major, unscaled; NaN where undefined.
    pub rows: Vec<f64>,
    /// Relative price change over the horizon in percent (NaN where undefined).
    pub price_changes: Vec<f64>,
    /// Class per step (`u32::MAX` where the label is undefined).
    pub labels: Vec<u32>,
    /// Trailing volatility of the target (regime tags).
    pub volatility: Vec<f64>,
    /// Gap counts per asset, in input order.
    pub gaps: Vec<(String, GapCounts)>,
    /// Step states per asset, in input order.
    pub states: Vec<Vec<StepState>>,
    /// Which rows/labels can be used in samples.
    pub usable: Usable,
}

/// The grid covering the target's snapshots (the first asset's), for whole-series use.
pub fn target_grid(spec: &PrepareSpec, assets: &[AssetInput<'_>]) -> Result<Grid, PreprocessError> {
    let target = assets[0];
    match (target.ts_ms.first(), target.ts_ms.last()) {
        (Some(f), Some(l)) => Ok(Grid::covering(*f, *l, spec.cadence_ms)),
        _ => Err(PreprocessError::NoData(target.symbol.to_owned())),
    }
}

/// Aligns every asset (target first) onto `grid` and computes features and labels.
///
/// Everything is causal except labels, so a chunk computed with enough history in front
/// (`history_steps`) and look-ahead behind equals the same steps of the whole computation.
pub fn prepare(
    spec: &PrepareSpec,
    assets: &[AssetInput<'_>],
    grid: Grid,
) -> Result<Prepared, PreprocessError> {
    prepare_reusing(spec, assets, grid, Vec::new())
}

/// [`prepare`], writing the rows into `spare` (e.g. the `rows` of a previous, no longer
/// needed [`Prepared`]) when it is large enough. Streaming many chunks this way skips the
/// kernel's zeroing of fresh pages, which costs about as much as computing the rows.
pub fn prepare_reusing(
    spec: &PrepareSpec,
    assets: &[AssetInput<'_>],
    grid: Grid,
    spare: Vec<f64>,
) -> Result<Prepared, PreprocessError> {
    let target = assets[0];
    if target.ts_ms.is_empty() {
        return Err(PreprocessError::NoData(target.symbol.to_owned()));
    }
    let (first, last) = (
        grid.start_ms - grid.cadence_ms,
        grid.time_ms(grid.steps.saturating_sub(1)),
    );
    let lookahead = spec.labels.lookahead();
    if grid.steps <= lookahead {
        return Err(PreprocessError::HorizonTooLong {
            lookahead,
            steps: grid.steps,
        });
    }
    let plan = features::FeaturePlan::new(&spec.features);
    let temporal_plan = temporal::TemporalPlan::new(&spec.temporal_local, &spec.temporal_global);
    let asset_cols = spec.features.columns();
    let temporal_cols = temporal::columns(&spec.temporal_local, &spec.temporal_global);
    let fa = plan.columns();
    let ncols = fa * assets.len() + temporal_plan.columns();
    for asset in &assets[1..] {
        if !asset.ts_ms.iter().any(|t| *t > first && *t <= last) {
            return Err(PreprocessError::NoOverlap {
                asset: asset.symbol.to_owned(),
                target: target.symbol.to_owned(),
            });
        }
    }
    // Assets are independent until their rows are interleaved: one thread each aligns its
    // snapshots and builds the step series momentum looks back on.
    let per_asset: Vec<AssetSteps> = std::thread::scope(|s| {
        let handles: Vec<_> = assets
            .iter()
            .map(|asset| {
                let plan = &plan;
                s.spawn(move || {
                    let aligned = grid::align(asset.ts_ms, grid, spec.handling, spec.max_gap_ms);
                    let (mid, depth) = aligned
                        .source
                        .iter()
                        .map(|&r| match r {
                            grid::NO_ROW => (f64::NAN, f64::NAN),
                            r => plan.mid_and_depth(asset.levels, r as usize),
                        })
                        .unzip();
                    AssetSteps {
                        aligned,
                        mid,
                        depth,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut step_state = vec![StepState::Real; grid.steps];
    for (asset, steps) in assets.iter().zip(&per_asset) {
        if !steps.mid.iter().any(|m| m.is_finite()) {
            return Err(PreprocessError::AllNan(asset.symbol.to_owned()));
        }
        // A step is as good as its worst asset.
        for (merged, s) in step_state.iter_mut().zip(&steps.aligned.state) {
            if *s == StepState::Missing {
                *merged = StepState::Missing;
            } else if *s == StepState::Filled && *merged == StepState::Real {
                *merged = StepState::Filled;
            }
        }
    }

    // Rows are written straight into the output, in contiguous step ranges (one per core),
    // so each thread streams through its own memory; the labels of the target run beside.
    let mut rows = row_buffer(grid.steps * ncols, spare);
    let mut row_ok = vec![true; grid.steps];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = grid.steps.div_ceil(threads).max(1);
    let write_rows = |first: usize, rows: &mut [f64], ok: &mut [bool]| {
        for (j, (row, ok)) in rows.chunks_exact_mut(ncols.max(1)).zip(ok).enumerate() {
            let k = first + j;
            let (asset_part, temporal_part) = row.split_at_mut(fa * assets.len());
            for ((asset, steps), out) in assets
                .iter()
                .zip(&per_asset)
                .zip(asset_part.chunks_exact_mut(fa.max(1)))
            {
                match steps.aligned.source[k] {
                    grid::NO_ROW => out.fill(f64::NAN),
                    r => plan.write(asset.levels, r as usize, k, &steps.mid, &steps.depth, out),
                }
            }
            temporal_plan.write(spec.origin_ms, grid.time_ms(k), temporal_part);
            *ok = all_finite(row);
        }
    };
    let target_mid = &per_asset[0].mid;
    let (price_changes, labels, volatility) = std::thread::scope(|s| {
        let labels = s.spawn(|| {
            let prices = labels::label_prices(target_mid, &step_state, spec.handling);
            let (price_changes, values) = labels::changes(&spec.labels, &prices, &step_state);
            let labels: Vec<u32> = values
                .iter()
                .map(|v| {
                    if v.is_finite() {
                        labels::classify(*v, &spec.labels.boundaries)
                    } else {
                        u32::MAX
                    }
                })
                .collect();
            let volatility =
                labels::trailing_volatility(target_mid, spec.labels.volatility_window_steps);
            (price_changes, labels, volatility)
        });
        for (i, (rows, ok)) in rows
            .chunks_mut(per_thread * ncols.max(1))
            .zip(row_ok.chunks_mut(per_thread))
            .enumerate()
        {
            let write_rows = &write_rows;
            s.spawn(move || write_rows(i * per_thread, rows, ok));
        }
        labels
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    let usable = Usable::new(&row_ok, labels.iter().map(|l| *l != u32::MAX).collect());
    let (gaps, states) = assets
        .iter()
        .zip(per_asset)
        .map(|(asset, steps)| {
            (
                (asset.symbol.to_owned(), steps.aligned.counts()),
                steps.aligned.state,
            )
        })
        .unzip();

    let columns = assets
        .iter()
        .flat_map(|a| asset_cols.iter().map(move |c| format!("{}.{c}", a.symbol)))
        .chain(temporal_cols)
        .collect();
    Ok(Prepared {
        grid,
        columns,
        features_per_asset: fa,
        asset_columns: fa * assets.len(),
        rows,
        price_changes,
        labels,
        volatility,
        gaps,
        states,
        usable,
    })
}

/// One asset aligned on the grid, with the step series its momentum features look back on.
struct AssetSteps {
    aligned: grid::AlignedAsset,
    mid: Vec<f64>,
    depth: Vec<f64>,
}

/// Every value of `xs` is finite: an OR over exponent tests, which vectorises (an
/// early-exit `all` does not).
fn all_finite(xs: &[f64]) -> bool {
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    xs.iter().fold(0, |bad, x| {
        bad | u64::from(x.to_bits() & EXPONENT == EXPONENT)
    }) == 0
}

/// A buffer of `len` row values, every one to be overwritten: `spare` when it has the
/// capacity, else a zeroed one whose pages are not touched yet, so the writer threads fault
/// them in in parallel. On Linux that is advised onto transparent huge pages, as numpy does
/// for large arrays: faulting 4 KiB pages, each zeroed by the kernel, cost more than computing
/// the features (~100 ms for 100,000 rows of 346 columns, against ~20 ms).
fn row_buffer(len: usize, mut spare: Vec<f64>) -> Vec<f64> {
    if spare.capacity() >= len {
        spare.truncate(len);
        spare.resize(len, 0.0);
        return spare;
    }
    let mut rows = vec![0.0; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&mut rows);
    rows
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &mut [f64]) {
    const HUGE_PAGE: usize = 2 << 20;
    const MADV_HUGEPAGE: i32 = 14;
    unsafe extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    let start = buf.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let (from, to) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if to > from {
        // SAFETY: [from, to) lies inside `buf`'s allocation, and the advice changes only how
        // its pages are backed, never their contents. Advice is optional: the result is
        // ignored.
        unsafe {
            madvise(from as *mut std::ffi::c_void, to - from, MADV_HUGEPAGE);
        }
    }
}

/// Sample window ends per split, and the scaler fit on the training rows.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Train, validation, test step ranges.
    pub ranges: [SplitRange; 3],
    /// Window ends per split.
    pub ends: [Vec<usize>; 3],
    /// Fit on rows of the training range only.
    pub scaler: Scaler,
}

const SPLIT_NAMES: [&str; 3] = ["train", "validation", "test"];

/// Cuts chronological splits, selects purged samples and fits the scaler on training rows.
pub fn split_and_fit(
    p: &Prepared,
    window: usize,
    lookahead: usize,
    ratios: (f64, f64),
    method: NormalizationMethod,
    per_asset: bool,
) -> Result<Samples, PreprocessError> {
    let ranges = split::chronological(p.grid.steps, ratios.0, ratios.1);
    for (range, name) in ranges.iter().zip(SPLIT_NAMES) {
        if range.len() < window + lookahead {
            return Err(PreprocessError::WindowLongerThanSplit {
                split: name,
                steps: range.len(),
                window,
                lookahead,
            });
        }
    }
    let ends = ranges.map(|r| p.usable.sample_ends(r, window, lookahead));
    let ncols = p.columns.len();
    // per_asset: every column its own group; global: feature f of every asset shares one.
    let groups =
        crate::store::scaler::groups(ncols, p.asset_columns, p.features_per_asset, per_asset);
    let train = ranges[0];
    let scaler = Scaler::fit(method, &p.rows, &groups, train.start..train.end);
    Ok(Samples {
        ranges,
        ends,
        scaler,
    })
}
