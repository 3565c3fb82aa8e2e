//! The `predict` stage: a trained model + the latest order books from the configured source
//! -> class probabilities, the predicted class and the expected move, per window.
//!
//! The model artifact carries its own feature recipe (the training configuration), scaler and
//! window length; only the data location comes from the current configuration. Rows are
//! computed exactly as in training (the same `prepare`), over a span long enough for one
//! window plus the longest feature look-back.

use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::Serialize;

use crate::config::{Config, DateBound, LoadedConfig, Symbol};
use crate::data::assemble::Assembler;
use crate::data::{DataError, OrderBook, sources};
use crate::model::artifact::ModelManifest;
use crate::model::{ModelArtifact, predict_proba};
use crate::preprocess::grid::{Grid, Levels};
use crate::preprocess::{AssetInput, PrepareSpec, prepare};
use crate::tracking::{
    self, MODEL_DIR, Stage, Tracker, TrackingSettings, format_model_name, latest_successful_run,
};
use crate::train::select_device;
use crate::train::stage::MODEL_NAME;

/// Why `predict` cannot answer; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// No model was named and no training run exists for this configuration.
    #[error(
        "no trained model for this configuration: run `binance-ml train`, or name one with \
         --run-id, --model-version or --model-alias"
    )]
    NoModel,
    /// The source has too little usable data before the requested instant.
    #[error(
        "{source_desc} has no complete window of {window} steps ending in {range}: one window \
         needs {needed} consecutive usable steps ({window} + {history} of feature look-back) \
         at {cadence_s} s cadence; check data.time_range / --start/--end and the source's gaps"
    )]
    NotEnoughHistory {
        /// The source.
        source_desc: String,
        /// The instants asked for.
        range: String,
        /// Window length.
        window: usize,
        /// Feature look-back steps (the longest momentum window).
        history: usize,
        /// window + history.
        needed: usize,
        /// Cadence in seconds.
        cadence_s: f64,
    },
    /// The target asset has no snapshot before the requested instant.
    #[error("{source_desc} has no {symbol} snapshot between {start} and {end}")]
    NoData {
        /// The source.
        source_desc: String,
        /// The target.
        symbol: String,
        /// Range start (RFC 3339).
        start: String,
        /// Range end (RFC 3339).
        end: String,
    },
    /// `--start`/`--end` are malformed or reversed.
    #[error("{0}")]
    Range(String),
    /// The named run, registered version or alias does not exist on the tracking store.
    #[error("{what} does not exist on {store}: {fix}")]
    UnknownModel {
        /// What was looked up, e.g. `alias 'champion' of registered model 'x'`.
        what: String,
        /// The tracking store.
        store: String,
        /// What to run instead.
        fix: String,
    },
    /// Reading the source or the data cache.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Looking the model up on MLflow.
    #[error(transparent)]
    Tracking(#[from] crate::tracking::TrackingError),
    /// Choosing the device.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// Loading the model artifact.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Computing the model's input rows.
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::stage::StageError),
    /// Writing the model cache failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl PredictError {
    /// Exit code: 2 for usage, 3 for data.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            PredictError::NoModel | PredictError::Range(_) | PredictError::UnknownModel { .. } => {
                crate::exit::ExitCode::Usage
            }
            PredictError::Data(e) => e.exit_code(),
            PredictError::Tracking(e) => e.exit_code(),
            PredictError::Train(e) => e.exit_code(),
            PredictError::Model(e) => e.exit_code(),
            PredictError::Preprocess(e) => e.exit_code(),
            _ => crate::exit::ExitCode::Data,
        }
    }
}

/// Which model to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// The training run that produced it.
    Run(String),
    /// A registered version of `model_name_pattern`'s model.
    Version(u32),
    /// A registry alias, e.g. `champion`.
    Alias(String),
    /// The newest finished training run of this configuration.
    Latest,
}

/// Finds the model's artifact directory: the work directory's copy when this machine trained
/// it, otherwise downloaded from the run's `model/` artifacts. Returns `(run_id, dir)`.
pub fn locate_model(
    loaded: &LoadedConfig,
    which: &ModelRef,
) -> Result<(String, PathBuf), PredictError> {
    let config = &loaded.config;
    let settings = TrackingSettings::from_config(config);
    let asset = config.data.asset_pairs.target_asset.to_string();
    let tracker = Tracker::open(&settings)?;
    let registered = |v: tracking::ModelVersion| v.run_id;
    let name = || format_model_name(&settings.model_name_pattern, &asset, MODEL_NAME);
    // A name that does not exist is the user's to fix (exit 2), saying what to run.
    let store = &tracker;
    let unknown = |what: String, fix: &'static str| {
        move |e: tracking::TrackingError| match e {
            tracking::TrackingError::NotFound { .. } => PredictError::UnknownModel {
                what,
                store: store.describe(),
                fix: fix.to_owned(),
            },
            e => e.into(),
        }
    };
    let run_id = match which {
        ModelRef::Run(id) => id.clone(),
        ModelRef::Version(v) => {
            let name = name()?;
            registered(
                tracker
                    .model_version(&name, &v.to_string())
                    .map_err(unknown(
                        format!("version {v} of registered model '{name}'"),
                        "name an existing version (the MLflow UI's Models page lists them), or use \
                 --model-alias champion",
                    ))?,
            )
        }
        ModelRef::Alias(a) => {
            let name = name()?;
            registered(resolve_alias(&tracker, &config.workdir, &name, a).map_err(unknown(
                format!("alias '{a}' of registered model '{name}'"),
                "train a model against this MLflow server first (`binance-ml run` or `binance-ml \
                 train`: the first registered version becomes `champion`), or name a model by \
                 --run-id / --base-run-id",
            ))?)
        }
        ModelRef::Latest => {
            let hash = loaded.config_hash();
            match latest_successful_run(&tracker, &settings, Stage::ModelTraining, &hash) {
                Ok(Some(run)) => run.info.run_id,
                Ok(None) => {
                    let why = format!(
                        "{} has no finished training run of this configuration",
                        tracker.describe()
                    );
                    return local_latest(config, &hash, &why);
                }
                Err(e) if e.is_unreachable() => {
                    return local_latest(config, &hash, &format!("MLflow is unreachable ({e})"));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let local = config.workdir.join("models").join(&run_id);
    if local.join(crate::model::artifact::MANIFEST_FILE).is_file() {
        return Ok((run_id, local));
    }
    let cache = config.workdir.join("model-cache").join(&run_id);
    let dir = cache.join(MODEL_DIR);
    if !dir.join(crate::model::artifact::MANIFEST_FILE).is_file() {
        // Download next to the cache and rename, so an interrupted download is never used.
        let tmp = config
            .workdir
            .join("model-cache")
            .join(format!(".{run_id}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        tracker
            .download_artifacts(&run_id, MODEL_DIR, &tmp)
            .map_err(unknown(
                format!("a model of run '{run_id}'"),
                "check the run id (`binance-ml run`/`train` print it; the MLflow UI lists runs)",
            ))?;
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::rename(&tmp, &cache).map_err(|e| PredictError::Io {
            context: format!("moving the downloaded model to {}", cache.display()),
            source: e,
        })?;
    }
    Ok((run_id, dir))
}

/// The version `alias` of `name` points at. Each answer from the server is remembered under
/// `<workdir>/model-cache/aliases/`, so that a night with MLflow unreachable still fine-tunes
/// the champion it last saw (with a warning) and journals its runs for `tracking sync`.
pub fn resolve_alias(
    tracker: &Tracker,
    workdir: &Path,
    name: &str,
    alias: &str,
) -> tracking::Result<tracking::ModelVersion> {
    match tracker.version_by_alias(name, alias) {
        Ok(v) => {
            remember_alias(workdir, alias, &v);
            Ok(v)
        }
        Err(e) if e.is_unreachable() => {
            let Some(v) = std::fs::read(alias_memo(workdir, name, alias))
                .ok()
                .and_then(|b| serde_json::from_slice::<tracking::ModelVersion>(&b).ok())
            else {
                return Err(e);
            };
            tracing::warn!(
                model = name,
                alias,
                version = %v.version,
                run_id = %v.run_id,
                "MLflow is unreachable ({e}): using the version this alias pointed at when last seen"
            );
            Ok(v)
        }
        Err(e) => Err(e),
    }
}

/// Remembers that `alias` points at `version` (see [`resolve_alias`]). Best effort: a memo that
/// cannot be written only costs the offline fallback.
pub fn remember_alias(workdir: &Path, alias: &str, version: &tracking::ModelVersion) {
    let memo = alias_memo(workdir, &version.name, alias);
    if let (Ok(json), Some(dir)) = (serde_json::to_vec(version), memo.parent()) {
        let _ =
            std::fs::create_dir_all(dir).map(|()| crate::data::cache::write_atomic(&memo, &json));
    }
}

fn alias_memo(workdir: &Path, name: &str, alias: &str) -> PathBuf {
    workdir
        .join("model-cache")
        .join("aliases")
        .join(format!("{}.{alias}.json", sanitize_file_name(name)))
}

/// `name` with anything but ASCII letters, digits, `-`, `_` and `.` replaced by `_`.
fn sanitize_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The newest model under `<workdir>/models/` trained by the configuration whose hash is
/// `hash`: a model trained while MLflow was unreachable is on disk, its run in the spool.
fn local_latest(config: &Config, hash: &str, why: &str) -> Result<(String, PathBuf), PredictError> {
    let models = config.workdir.join("models");
    let newest = std::fs::read_dir(&models)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let text =
                std::fs::read_to_string(e.path().join(crate::model::artifact::MANIFEST_FILE))
                    .ok()?;
            let m: ModelManifest = serde_json::from_str(&text).ok()?;
            let run_id = e.file_name().into_string().ok()?;
            (m.config_hash == hash).then_some((m.created_at, run_id, e.path()))
        })
        .max();
    let Some((_, run_id, dir)) = newest else {
        return Err(PredictError::NoModel);
    };
    tracing::warn!(
        "{why}: using the newest model this configuration trained locally, run {run_id} in {} \
         (`binance-ml tracking sync` uploads its spooled run once the server is back)",
        dir.display()
    );
    Ok((run_id, dir))
}

/// One prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// End of the window (UTC, RFC 3339): the prediction is for the move after it.
    pub timestamp: String,
    /// Probability per class, in `classes` order.
    pub probabilities: Vec<f64>,
    /// The most likely class.
    pub predicted_class: String,
    /// Probability-weighted mean of the classes' mean training moves, in percent.
    pub expected_move_pct: f64,
}

/// What `predict` produced.
#[derive(Debug, Clone, Serialize)]
pub struct PredictOutput {
    /// The training run of the model.
    pub run_id: String,
    /// The artifact directory used.
    pub model_dir: PathBuf,
    /// Class names.
    pub classes: Vec<String>,
    /// Horizon of the predicted move, seconds.
    pub horizon_seconds: u64,
    /// Calibration temperature applied.
    pub temperature: f64,
    /// One per window, oldest first.
    pub predictions: Vec<Prediction>,
}

/// Rows computed from the configured source with a model's own recipe and scaler.
#[derive(Debug)]
pub struct SourceRows {
    /// The grid the rows lie on.
    pub grid: Grid,
    /// Scaled rows, `[steps x columns]` row-major.
    pub scaled: Vec<f32>,
    /// Whether each row is complete (finite).
    pub ok: Vec<bool>,
    /// Class per step (`u32::MAX` where the label is undefined).
    pub labels: Vec<u32>,
    /// Relative price change in percent over the horizon (NaN where undefined).
    pub price_changes: Vec<f64>,
}

impl SourceRows {
    /// Steps in `[from, to]` (ms) that end a window of `window` complete rows.
    pub fn window_ends(&self, window: usize, from: i64, to: i64) -> Vec<usize> {
        let mut run = 0usize;
        let mut ends = Vec::new();
        for (k, good) in self.ok.iter().enumerate() {
            run = if *good { run + 1 } else { 0 };
            let t = self.grid.time_ms(k);
            if run >= window && t >= from && t <= to {
                ends.push(k);
            }
        }
        ends
    }
}

/// Reads the configured source and computes rows exactly as preprocessing did for `art`.
pub struct ModelInput<'a> {
    art: &'a ModelArtifact,
    spec: PrepareSpec,
    symbols: Vec<Symbol>,
    depth: usize,
    source: Box<dyn sources::Source>,
}

impl<'a> ModelInput<'a> {
    /// The current configuration's source, the model's recipe (its training configuration).
    pub fn open(
        config: &Config,
        art: &'a ModelArtifact,
        trained: &Config,
    ) -> Result<Self, PredictError> {
        let symbols = art
            .manifest
            .assets
            .iter()
            .map(|s| Symbol::new(s).map_err(DataError::Input))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            art,
            spec: PrepareSpec::from_config(trained),
            symbols,
            depth: trained.data.order_book.depth_levels as usize,
            source: sources::open(&config.data)?,
        })
    }

    /// Steps of history to read in front of a window for its rows and labels (feature
    /// look-back, the volatility window of adaptive labels, gap filling).
    pub fn history_steps(&self) -> usize {
        self.spec.input_history_steps(true)
    }

    /// Steps of history to read in front of a window for its rows only (what `predict`
    /// needs: it reads no label).
    pub fn row_history_steps(&self) -> usize {
        self.spec.input_history_steps(false)
    }

    /// Steps of feature look-back a row needs (the longest momentum window).
    pub fn feature_lookback(&self) -> usize {
        self.spec.feature_lookback()
    }

    /// Steps a label looks ahead (the span of each step's price change).
    pub fn lookahead_steps(&self) -> usize {
        self.spec.labels.lookahead()
    }

    /// Steps behind a step its label needs.
    pub fn future_steps(&self) -> usize {
        self.spec.future_steps()
    }

    /// The source, for messages.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    fn books(&mut self, a: i64, b: i64) -> Result<Vec<OrderBook>, DataError> {
        let mut asm = Assembler::new(self.symbols.clone(), self.depth);
        self.source
            .read_span(a, b, &mut asm, &ProgressBar::hidden())?;
        let (mut books, _) = asm.finish();
        Ok(self
            .symbols
            .iter()
            .map(|s| {
                books
                    .remove(s)
                    .unwrap_or_else(|| OrderBook::empty(self.depth))
            })
            .collect())
    }

    /// Time of the newest target snapshot in `[floor, end)`, scanning back in growing
    /// chunks (a live database is asked for minutes, not years).
    pub fn last_snapshot(&mut self, floor: i64, end: i64, chunk: i64) -> Result<i64, PredictError> {
        let (mut hi, mut len) = (end, chunk.max(1));
        while hi > floor {
            let lo = (hi - len).max(floor);
            if let Some(&t) = self.books(lo, hi)?[0].snapshot_timestamps.last() {
                return Ok(t);
            }
            hi = lo;
            len *= 4;
        }
        Err(PredictError::NoData {
            source_desc: self.describe(),
            symbol: self.art.manifest.assets[0].clone(),
            start: rfc3339(floor),
            end: rfc3339(end),
        })
    }

    /// Rows of the grid covering the target's snapshots in `[a, b)`; `None` when the span
    /// holds too few steps to compute anything.
    pub fn rows(&mut self, a: i64, b: i64) -> Result<Option<SourceRows>, PredictError> {
        let m = &self.art.manifest;
        let books = self.books(a, b)?;
        let target = &books[0];
        let (Some(&first), Some(&last)) = (
            target.snapshot_timestamps.first(),
            target.snapshot_timestamps.last(),
        ) else {
            return Err(PredictError::NoData {
                source_desc: self.describe(),
                symbol: m.assets[0].clone(),
                start: rfc3339(a),
                end: rfc3339(b),
            });
        };
        let grid = Grid::covering(first, last, m.cadence_ms);
        // `prepare` also computes labels, which need more steps than their look-ahead.
        if grid.steps <= self.spec.labels.lookahead() {
            return Ok(None);
        }
        let inputs: Vec<AssetInput<'_>> = m
            .assets
            .iter()
            .zip(&books)
            .map(|(s, b)| AssetInput {
                symbol: s,
                ts_ms: &b.snapshot_timestamps,
                levels: Levels {
                    depth: b.bid_price.cols,
                    bid_px: &b.bid_price.data,
                    bid_qty: &b.bid_qty.data,
                    ask_px: &b.ask_price.data,
                    ask_qty: &b.ask_qty.data,
                },
            })
            .collect();
        let p = prepare(&self.spec, &inputs, grid)
            .map_err(crate::preprocess::stage::StageError::from)?;
        if p.columns != m.columns {
            return Err(DataError::Input(format!(
                "the rows computed now have columns {:?}, the model was trained on {:?}",
                p.columns, m.columns
            ))
            .into());
        }
        let n = p.columns.len();
        let mut rows = p.rows;
        m.scaler.transform_rows(&mut rows);
        let ok = rows
            .chunks_exact(n)
            .map(|r| r.iter().all(|x| x.is_finite()))
            .collect();
        let scaled = rows.iter().map(|x| *x as f32).collect();
        Ok(Some(SourceRows {
            grid,
            scaled,
            ok,
            labels: p.labels,
            price_changes: p.price_changes,
        }))
    }
}

/// `--start`/`--end` as `[a, b)` in ms.
pub fn parse_range(start: &str, end: &str) -> Result<(i64, i64), PredictError> {
    let parse = |s: &str| DateBound::parse(s).map_err(PredictError::Range);
    let (a, b) = (
        parse(start)?.start().timestamp_millis(),
        parse(end)?.end_exclusive().timestamp_millis(),
    );
    if a >= b {
        return Err(PredictError::Range(format!(
            "--start must be before --end (got {} .. {})",
            rfc3339(a),
            rfc3339(b)
        )));
    }
    Ok((a, b))
}

/// Predicts for the latest window (or every window ending in `range`).
pub fn predict(
    loaded: &LoadedConfig,
    which: &ModelRef,
    range: Option<(&str, &str)>,
) -> Result<PredictOutput, PredictError> {
    let _span = tracing::info_span!("predict").entered();
    let config: &Config = &loaded.config;
    let (run_id, dir) = locate_model(loaded, which)?;
    let device = select_device(config.model.backend, &config.model.device)?;
    let artifact = ModelArtifact::load(&dir, &device.device)?;
    let trained = artifact.config(&dir)?;
    let m = &artifact.manifest;
    let mut input = ModelInput::open(config, &artifact, &trained)?;
    let cadence = m.cadence_ms;
    let w = m.window_steps;
    let span_steps = (w + input.row_history_steps() + 1) as i64;
    let (from, to) = match range {
        Some((a, b)) => {
            let (a, b) = parse_range(a, b)?;
            (a, b - 1)
        }
        None => {
            let end = config
                .data
                .time_range
                .end_date
                .end_exclusive()
                .timestamp_millis()
                .min(chrono::Utc::now().timestamp_millis());
            let floor = config.data.time_range.start_date.start().timestamp_millis();
            let last = input.last_snapshot(floor, end, span_steps * cadence)?;
            (last, last)
        }
    };
    let source_desc = input.describe();
    let lookback_steps = input.feature_lookback();
    let not_enough = || PredictError::NotEnoughHistory {
        source_desc: source_desc.clone(),
        range: if from == to {
            rfc3339(from)
        } else {
            format!("{} .. {}", rfc3339(from), rfc3339(to))
        },
        window: w,
        history: lookback_steps,
        needed: w + lookback_steps,
        cadence_s: cadence as f64 / 1000.0,
    };
    // The label look-ahead also needs steps: read at least that many in front.
    let lookback = span_steps.max(input.future_steps() as i64 + 1) * cadence;
    let Some(rows) = input.rows(from - lookback, to + 1)? else {
        return Err(not_enough());
    };
    let ends = rows.window_ends(w, from, to);
    if ends.is_empty() {
        return Err(not_enough());
    }
    let temperature = m.temperature;
    let classes = m.class_names.len();
    let mut predictions = Vec::with_capacity(ends.len());
    for chunk in ends.chunks(256) {
        let mut x = Vec::with_capacity(chunk.len() * m.layout.sample_shape(w).len());
        for &k in chunk {
            m.layout.push_window(&rows.scaled, k, w, &mut x);
        }
        let probs = predict_proba(&artifact.model, &x, temperature as f32)
            .map_err(crate::train::TrainError::from)?;
        for (&k, p) in chunk.iter().zip(probs.chunks_exact(classes)) {
            let probabilities: Vec<f64> = p.iter().map(|v| f64::from(*v)).collect();
            let best = probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            predictions.push(Prediction {
                timestamp: rfc3339(rows.grid.time_ms(k)),
                expected_move_pct: probabilities
                    .iter()
                    .zip(&m.class_mean_change_pct)
                    .map(|(p, c)| p * c)
                    .sum(),
                predicted_class: m.class_names[best].clone(),
                probabilities,
            });
        }
    }
    Ok(PredictOutput {
        run_id,
        model_dir: dir,
        classes: m.class_names.clone(),
        horizon_seconds: m.horizon_seconds,
        temperature,
        predictions,
    })
}

/// Milliseconds since the epoch as RFC 3339 UTC (ms precision).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A fixed-width table of predictions for the terminal.
pub fn table(out: &PredictOutput) -> String {
    let mut s = format!("{:<25}", "timestamp");
    for c in &out.classes {
        s.push_str(&format!(" {c:>14}"));
    }
    s.push_str(&format!(" {:>14} {:>16}\n", "predicted", "expected_move_%"));
    for p in &out.predictions {
        s.push_str(&format!("{:<25}", p.timestamp));
        for v in &p.probabilities {
            s.push_str(&format!(" {v:>14.4}"));
        }
        s.push_str(&format!(
            " {:>14} {:>16.5}\n",
            p.predicted_class, p.expected_move_pct
        ));
    }
    s.push_str(&format!(
        "model run {} ({}), horizon {} s, temperature {}",
        out.run_id,
        out.model_dir.display(),
        out.horizon_seconds,
        out.temperature
    ));
    s
}
