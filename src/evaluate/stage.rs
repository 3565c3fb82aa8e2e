//! The `evaluate` stage: a trained model on the held-out split of the store it was trained
//! on — metrics before and after temperature scaling, baselines side by side, calibration,
//! degradation over consecutive test slices, a cost-aware backtest, gradient x input saliency,
//! and a one-page `summary.md` — all logged to the evaluation experiment.
//!
//! Windows stream from the store in batches (`evaluation.batch_size`); only the logits
//! (`samples x classes`) are kept, so memory grows with the classes, not the window size.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use burn::tensor::Device;

use super::backtest::{self, BacktestInput, BacktestResult};
use super::calibration::{self, Calibration};
use super::linear::{self, LinearModel};
use super::metrics::{self, Scores};
use super::permutation::{self, Importance};
use super::{EvaluateError, baselines, saliency::Saliency};
use crate::config::{Config, LoadedConfig};
use crate::data::DataError;
use crate::data::cache::write_atomic;
use crate::model::{ModelArtifact, Network, infer};
use crate::plot::{self, Chart, Line};
use crate::predict::{ModelInput, ModelRef, locate_model, parse_range};
use crate::preprocess::PrepareSpec;
use crate::store::{
    SplitRange, StoreManifest, StoreSamples, load_samples, read_manifest, read_rows_f32, store_dir,
};
use crate::tracking::{Dataset, DatasetInput, Metric, StageRun};
use crate::train::{BatchSource, Split, StoreSource, TrainError, select_device};

/// What the caller decides besides the configuration.
#[derive(Debug, Clone)]
pub struct EvaluateRequest {
    /// The model.
    pub model: ModelRef,
    /// `Split::Test` (default) or `Split::Validation` of the store.
    pub split: Split,
    /// New data instead of a split: `--start`, `--end`.
    pub range: Option<(String, String)>,
    /// The preprocessed store (default: this configuration's).
    pub store: Option<PathBuf>,
    /// Write a fitted temperature into the model (off when scoring a base model for
    /// comparison: its calibration stays its own).
    pub save_temperature: bool,
}

/// One baseline's scores.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineResult {
    /// Name.
    pub name: String,
    /// Accuracy.
    pub accuracy: f64,
    /// Macro F1.
    pub macro_f1: f64,
    /// Log loss, for baselines with probabilities.
    pub log_loss: Option<f64>,
    /// Whether the model beats it: higher accuracy and, where the baseline has probabilities,
    /// lower log loss.
    pub model_beats_it: bool,
}

/// The Bayes ceiling of the synthetic market on the same samples.
#[derive(Debug, Clone, Serialize)]
pub struct OracleResult {
    /// Accuracy.
    pub accuracy: f64,
    /// Macro F1.
    pub macro_f1: f64,
    /// Log loss.
    pub log_loss: f64,
    /// `(model - majority) / (oracle - majority)` on accuracy: the share of the achievable
    /// edge over the majority class the model captured.
    pub edge_captured: f64,
}

/// What `evaluate` produced.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluateSummary {
    /// The evaluation run.
    pub run_id: String,
    /// The training run of the model.
    pub model_run_id: String,
    /// The split scored.
    pub split: String,
    /// Samples scored.
    pub samples: usize,
    /// Temperature applied for the calibrated scores.
    pub temperature: f64,
    /// Whether it was fit now (on the validation split) or is the one stored with the model.
    pub temperature_fitted: bool,
    /// Model scores before calibration.
    pub scores: Scores,
    /// Model scores after temperature scaling.
    pub calibrated_scores: Scores,
    /// ECE before / after.
    pub ece: [f64; 2],
    /// MCE before / after.
    pub mce: [f64; 2],
    /// Baselines on the same samples.
    pub baselines: Vec<BaselineResult>,
    /// Training windows the logistic regression baseline was fit on, or why it is absent.
    pub linear_baseline: Result<usize, String>,
    /// The oracle ceiling (synthetic data only), or why there is none.
    pub oracle: Result<OracleResult, String>,
    /// Permutation importance, most important first (empty when explainability is off).
    pub permutation: Vec<Importance>,
    /// Test windows the permutation importance was measured on.
    pub permutation_samples: usize,
    /// Accuracy per consecutive slice, oldest first.
    pub degradation_accuracy: Vec<f64>,
    /// Least-squares slope of accuracy per slice.
    pub degradation_slope: f64,
    /// Backtest of the model, always-long and always-flat.
    pub backtest: Option<[BacktestResult; 3]>,
    /// Local artifact directory.
    pub artifacts_dir: PathBuf,
}

impl EvaluateSummary {
    /// Names of the baselines the model does not beat (empty: it beats them all).
    pub fn baselines_not_beaten(&self) -> Vec<&str> {
        self.baselines
            .iter()
            .filter(|b| !b.model_beats_it)
            .map(|b| b.name.as_str())
            .collect()
    }
}

fn out_err(path: &Path, e: impl ToString) -> TrainError {
    TrainError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Logits `samples x classes` of a batch of windows, in inference mode.
fn forward(model: &Network, x: Vec<f32>) -> Result<Vec<f64>, TrainError> {
    Ok(infer::logits(model, x)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Which samples saliency uses: `want` evenly spaced ones out of `n`.
fn saliency_pick(n: usize, want: usize) -> impl Fn(usize) -> bool {
    let stride = (n / want.max(1)).max(1);
    let want = want.min(n);
    move |i| i % stride == 0 && i / stride < want
}

/// Sample picks: saliency's, then permutation importance's.
type Picks<'a> = [&'a dyn Fn(usize) -> bool; 2];

/// Logits of every sample of `split` in order, and the windows of the samples each pick
/// keeps.
fn store_logits(
    model: &Network,
    source: &mut dyn BatchSource,
    split: Split,
    batch_size: usize,
    picks: Picks<'_>,
) -> Result<(Vec<f64>, [Vec<f32>; 2]), TrainError> {
    let per = source.sample_shape().len();
    let (mut out, mut kept) = (Vec::new(), [Vec::new(), Vec::new()]);
    let mut i = 0;
    for batch in source.batches(split, 1, 0, batch_size)? {
        let batch = batch?;
        for j in 0..batch.len() {
            for (pick, kept) in picks.iter().zip(&mut kept) {
                if pick(i + j) {
                    kept.extend_from_slice(&batch.x[j * per..(j + 1) * per]);
                }
            }
        }
        i += batch.len();
        out.extend(forward(model, batch.x)?);
    }
    Ok((out, kept))
}

/// Calls `f(i, row)` with the store row of each `steps[i]`, reading one row shard at a time.
fn for_rows_at(
    store: &Path,
    m: &StoreManifest,
    steps: &[usize],
    mut f: impl FnMut(usize, &[f32]),
) -> Result<(), DataError> {
    let n = m.columns.len();
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by_key(|&i| steps[i]);
    let mut next = 0;
    for shard in &m.shards {
        let end = shard.first_step + shard.steps;
        if next == order.len() {
            break;
        }
        if steps[order[next]] >= end {
            continue;
        }
        let rows = read_rows_f32(&store.join(&shard.file), n, Some(&shard.sha256))?;
        while next < order.len() && steps[order[next]] < end {
            let k = steps[order[next]] - shard.first_step;
            f(order[next], &rows[k * n..(k + 1) * n]);
            next += 1;
        }
    }
    Ok(())
}

/// The logistic regression baseline fit on an evenly spaced sample of the store's training
/// windows (their last rows).
fn fit_linear(
    c: &Config,
    store: &Path,
    m: &StoreManifest,
    samples: &StoreSamples,
) -> Result<LinearModel, DataError> {
    let train = &samples.ends[0];
    let want = (c.evaluation.linear_baseline.max_train_samples as usize).min(train.len());
    let picked: Vec<usize> = (0..want).map(|i| train[i * train.len() / want]).collect();
    let n = m.columns.len();
    let mut x = vec![0f32; picked.len() * n];
    for_rows_at(store, m, &picked, |i, row| {
        x[i * n..(i + 1) * n].copy_from_slice(row)
    })?;
    let y: Vec<u32> = picked.iter().map(|&e| samples.labels[e] as u32).collect();
    let k = m.class_names.len();
    Ok(linear::fit(
        &x,
        &y,
        n,
        k,
        c.evaluation.linear_baseline.l2,
        &Device::flex(),
    ))
}

/// The samples to score and everything the analysis needs about them.
struct EvalSet {
    split: String,
    /// Window end step of each sample (store steps or the range's grid steps).
    ends: Vec<usize>,
    labels: Vec<u32>,
    logits: Vec<f64>,
    /// Steps each label's price change spans (the horizon, or the smoothing window).
    lookahead_steps: usize,
    /// Realised move over the label's look-ahead after each sample, percent.
    realised_pct: Vec<f64>,
    /// The same move that ended at each sample's end, percent (known then).
    previous_pct: Vec<f64>,
    /// Consecutive step ranges for the degradation report.
    slices: Vec<SplitRange>,
    /// Validation logits and labels to fit the temperature on (the store only).
    validation: Option<(Vec<f64>, Vec<u32>)>,
    train_counts: Vec<u64>,
    /// Windows for saliency.
    saliency_x: Vec<f32>,
    /// Windows for permutation importance, and their positions among the samples.
    permutation_x: Vec<f32>,
    permutation_idx: Vec<usize>,
    /// Instant of each sample's window end (UTC ms).
    ts_ms: Vec<i64>,
    /// Logits of the logistic regression baseline and its training windows, or why not.
    linear: Result<(Vec<f64>, usize), String>,
    /// The preprocessed store the samples came from (none for a range read from the source).
    dataset: Option<Dataset>,
}

/// Evenly spaced picks of `want` of `n` samples, and their indices.
fn picks(n: usize, want: u32) -> (impl Fn(usize) -> bool, Vec<usize>) {
    let pick = saliency_pick(n, want as usize);
    let idx = (0..n).filter(|&i| pick(i)).collect();
    (pick, idx)
}

fn store_set(
    loaded: &LoadedConfig,
    art: &ModelArtifact,
    model_run: &str,
    req: &EvaluateRequest,
) -> Result<EvalSet, EvaluateError> {
    let c = &loaded.config;
    let split = req.split;
    let store = match &req.store {
        Some(d) => d.clone(),
        None => store_dir(c)?,
    };
    let manifest =
        read_manifest(&store).ok_or_else(|| TrainError::NoStore { dir: store.clone() })?;
    // Rows mean what the model learned only with its columns, window and scaler.
    let m = &art.manifest;
    if manifest.columns != m.columns
        || manifest.window_steps != m.window_steps
        || manifest.scaler != m.scaler
    {
        return Err(EvaluateError::StoreMismatch {
            model_run: model_run.to_owned(),
            model_store: art.manifest.store_key.clone(),
            store: manifest.key.clone(),
        });
    }
    let samples = load_samples(&store, &manifest)?;
    let mut source = StoreSource::with_samples(
        &store,
        manifest.clone(),
        &samples,
        c.training.shuffle_buffer as usize,
        c.training.prefetch_batches as usize,
    )?;
    let batch = c.evaluation.batch_size.max(1) as usize;
    let (name, idx) = match split {
        Split::Validation => ("validation", 1),
        _ => ("test", 2),
    };
    let ends = samples.ends[idx].clone();
    if ends.is_empty() {
        return Err(EvaluateError::NoSamples(name));
    }
    let labels_of =
        |ends: &[usize]| -> Vec<u32> { ends.iter().map(|&e| samples.labels[e] as u32).collect() };
    let ex = &c.evaluation.explainability;
    let pick = saliency_pick(ends.len(), ex.n_samples as usize);
    let (perm_pick, permutation_idx) = picks(ends.len(), ex.permutation.n_samples);
    let none = |_: usize| false;
    let (val_logits, val_x) = store_logits(
        &art.model,
        &mut source,
        Split::Validation,
        batch,
        if idx == 1 {
            [&pick, &perm_pick]
        } else {
            [&none, &none]
        },
    )?;
    let (logits, [saliency_x, permutation_x]) = if idx == 1 {
        (val_logits.clone(), val_x)
    } else {
        store_logits(
            &art.model,
            &mut source,
            Split::Test,
            batch,
            [&pick, &perm_pick],
        )?
    };
    let linear = if samples.ends[0].is_empty() {
        Err("the store has no training windows to fit it on".to_owned())
    } else {
        let model = fit_linear(c, &store, &manifest, &samples)?;
        let k = manifest.class_names.len();
        let mut out = vec![0.0; ends.len() * k];
        for_rows_at(&store, &manifest, &ends, |i, row| {
            out[i * k..(i + 1) * k].copy_from_slice(&model.logits(row))
        })?;
        Ok((out, model.samples))
    };
    let h = manifest.lookahead_steps;
    let slices = if idx == 2 && !manifest.degradation_slices.is_empty() {
        manifest.degradation_slices.clone()
    } else {
        manifest.ranges[idx]
            .slices(c.preprocessing.train_test_split.degradation_slices.max(1) as usize)
    };
    Ok(EvalSet {
        dataset: Some(manifest.dataset()),
        split: name.into(),
        lookahead_steps: h,
        labels: labels_of(&ends),
        logits,
        realised_pct: ends.iter().map(|&e| samples.price_changes[e]).collect(),
        previous_pct: ends
            .iter()
            .map(|&e| {
                e.checked_sub(h)
                    .map_or(f64::NAN, |p| samples.price_changes[p])
            })
            .collect(),
        slices,
        validation: Some((val_logits, labels_of(&samples.ends[1]))),
        train_counts: manifest.class_counts[0].clone(),
        saliency_x,
        permutation_x,
        permutation_idx,
        ts_ms: ends
            .iter()
            .map(|&e| manifest.grid_start_ms + e as i64 * manifest.cadence_ms)
            .collect(),
        linear,
        ends,
    })
}

/// New data: windows ending in `[start, end)` computed from the configured source with the
/// model's own recipe and scaler (the store is not needed).
fn range_set(
    loaded: &LoadedConfig,
    art: &ModelArtifact,
    dir: &Path,
    (start, end): (&str, &str),
) -> Result<EvalSet, EvaluateError> {
    let c = &loaded.config;
    let (a, b) = parse_range(start, end)?;
    let trained = art.config(dir)?;
    let m = &art.manifest;
    let mut input = ModelInput::open(c, art, &trained)?;
    let (w, cadence) = (m.window_steps, m.cadence_ms);
    let before = (w + input.history_steps() + 1) as i64 * cadence;
    let after = (input.future_steps() + 1) as i64 * cadence;
    let no_samples = || EvaluateError::NoSamples("requested time range");
    let rows = input.rows(a - before, b + after)?.ok_or_else(no_samples)?;
    let ends: Vec<usize> = rows
        .window_ends(w, a, b - 1)
        .into_iter()
        .filter(|&k| rows.labels[k] != u32::MAX)
        .collect();
    if ends.is_empty() {
        return Err(no_samples());
    }
    let shape = m.layout.sample_shape(w);
    let ex = &c.evaluation.explainability;
    let pick = saliency_pick(ends.len(), ex.n_samples as usize);
    let (perm_pick, permutation_idx) = picks(ends.len(), ex.permutation.n_samples);
    let batch = c.evaluation.batch_size.max(1) as usize;
    let (mut logits, mut saliency_x, mut permutation_x) = (Vec::new(), Vec::new(), Vec::new());
    for (ci, chunk) in ends.chunks(batch).enumerate() {
        let mut x = Vec::with_capacity(chunk.len() * shape.len());
        for (j, &k) in chunk.iter().enumerate() {
            m.layout.push_window(&rows.scaled, k, w, &mut x);
            let window = &x[j * shape.len()..];
            if pick(ci * batch + j) {
                saliency_x.extend_from_slice(window);
            }
            if perm_pick(ci * batch + j) {
                permutation_x.extend_from_slice(window);
            }
        }
        logits.extend(forward(&art.model, x)?);
    }
    // The baseline is fit on this configuration's store when it holds the model's rows.
    let cols = m.columns.len();
    let linear = match store_dir(c)
        .ok()
        .and_then(|d| read_manifest(&d).map(|s| (d, s)))
    {
        Some((dir, store)) if store.columns == m.columns && store.scaler == m.scaler => {
            let samples = load_samples(&dir, &store)?;
            let model = fit_linear(c, &dir, &store, &samples)?;
            let out = ends
                .iter()
                .flat_map(|&k| model.logits(&rows.scaled[k * cols..(k + 1) * cols]))
                .collect();
            Ok((out, model.samples))
        }
        _ => Err(
            "no preprocessed store of this configuration with the model's columns and \
                  scaler to fit it on (run `binance-ml preprocess`)"
                .to_owned(),
        ),
    };
    // A price change spans the labels' look-ahead: the previous one ends exactly at k.
    let h = input.lookahead_steps();
    let span = SplitRange {
        start: ends[0],
        end: ends[ends.len() - 1] + 1,
    };
    Ok(EvalSet {
        dataset: None,
        split: format!("{start} .. {end}"),
        lookahead_steps: h,
        labels: ends.iter().map(|&k| rows.labels[k]).collect(),
        logits,
        realised_pct: ends.iter().map(|&k| rows.price_changes[k]).collect(),
        previous_pct: ends
            .iter()
            .map(|&k| k.checked_sub(h).map_or(f64::NAN, |p| rows.price_changes[p]))
            .collect(),
        slices: span.slices(c.preprocessing.train_test_split.degradation_slices.max(1) as usize),
        validation: None,
        train_counts: m.train_class_counts.clone(),
        saliency_x,
        permutation_x,
        permutation_idx,
        ts_ms: ends.iter().map(|&k| rows.grid.time_ms(k)).collect(),
        linear,
        ends,
    })
}

/// The oracle's scores on the samples of `set` when the data is the synthetic market;
/// `Err` says why there is none. Labels follow the model's training configuration.
fn oracle_scores(c: &Config, trained: &Config, set: &EvalSet, k: usize) -> Result<Scores, String> {
    let mut oracle = PrepareSpec::from_config(trained).labels.oracle(&c.data)?;
    if oracle.classes() != k {
        return Err(format!(
            "the oracle has {} classes, the model {k}",
            oracle.classes()
        ));
    }
    let probs = oracle.probabilities(&set.ts_ms)?;
    Ok(metrics::score(&probs, &set.labels, k))
}

/// Least-squares slope of `y` against 0, 1, 2, ...
fn slope(y: &[f64]) -> f64 {
    let n = y.len() as f64;
    if y.len() < 2 {
        return 0.0;
    }
    let mx = (n - 1.0) / 2.0;
    let my = y.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        num += (i as f64 - mx) * (v - my);
        den += (i as f64 - mx).powi(2);
    }
    num / den
}

/// Evaluates the model inside `run`: on a split of this configuration's store, or on the
/// time range of `req.range` read from the configured source.
pub fn evaluate(
    loaded: &LoadedConfig,
    req: &EvaluateRequest,
    run: &StageRun<'_>,
) -> Result<EvaluateSummary, EvaluateError> {
    let _span = tracing::info_span!("evaluate").entered();
    let c = &loaded.config;
    let e = &c.evaluation;
    let (model_run, model_dir) = locate_model(loaded, &req.model)?;
    let device = select_device(c.model.backend, &c.model.device)?;
    let mut art = ModelArtifact::load(&model_dir, &device.device)?;
    let set = match &req.range {
        Some((a, b)) => range_set(loaded, &art, &model_dir, (a, b))?,
        None => store_set(loaded, &art, &model_run, req)?,
    };
    let k = art.manifest.class_names.len();
    let (ends, labels, n) = (&set.ends, &set.labels, set.labels.len());
    let cal_cfg = &e.calibration_analysis;
    // The temperature is fit on the store's validation split; new data uses the stored one.
    let fitted = match &set.validation {
        Some((vl, vy)) if cal_cfg.temperature_scaling && !vy.is_empty() => {
            Some(calibration::fit_temperature(vl, vy, k))
        }
        _ => None,
    };
    if let Some(w) = fitted.and_then(calibration::bound_warning) {
        tracing::warn!("{w}");
    }
    let temperature = fitted.unwrap_or(art.manifest.temperature);
    let raw = calibration::softmax(&set.logits, k, 1.0);
    let cal = calibration::softmax(&set.logits, k, temperature);
    let scores = metrics::score(&raw, labels, k);
    let calibrated_scores = metrics::score(&cal, labels, k);
    let n_bins = cal_cfg.n_bins.max(1) as usize;
    let (cal_raw, cal_fit) = (
        calibration::calibration(&raw, labels, k, n_bins),
        calibration::calibration(&cal, labels, k, n_bins),
    );

    // Baselines on the same samples. Persistence: the class of the move over the horizon
    // that ended at the window's end, known at that time.
    let baseline_scores = [
        ("majority class", baselines::majority(&set.train_counts, n)),
        (
            "train-prior random",
            baselines::prior_random(&set.train_counts, n, c.training.seed),
        ),
        (
            "last observed move",
            baselines::persistence(&set.previous_pct, &art.manifest.boundaries),
        ),
    ]
    .map(|(name, predicted)| (name, metrics::score_predictions(&predicted, labels, k)));
    let linear_scores = set.linear.as_ref().ok().map(|(logits, _)| {
        (
            "logistic regression",
            metrics::score(&calibration::softmax(logits, k, 1.0), labels, k),
        )
    });
    let baselines: Vec<BaselineResult> = baseline_scores
        .iter()
        .chain(linear_scores.as_ref())
        .map(|(name, s)| BaselineResult {
            name: (*name).into(),
            accuracy: s.accuracy,
            macro_f1: s.macro_f1,
            log_loss: s.log_loss,
            // Accuracy, and the proper score where the baseline has probabilities. Not macro
            // F1: argmax of the true law (the oracle) need not beat persistence on it.
            model_beats_it: scores.accuracy > s.accuracy
                && match (s.log_loss, scores.log_loss) {
                    (Some(theirs), Some(ours)) => ours < theirs,
                    _ => true,
                },
        })
        .collect();
    let oracle = oracle_scores(c, &art.config(&model_dir)?, &set, k).map(|o| OracleResult {
        edge_captured: (scores.accuracy - baselines[0].accuracy)
            / (o.accuracy - baselines[0].accuracy),
        accuracy: o.accuracy,
        macro_f1: o.macro_f1,
        log_loss: o.log_loss.unwrap_or(f64::NAN),
    });
    if let Err(why) = &oracle {
        tracing::info!("no oracle row: {why}");
    }

    let degradation_accuracy: Vec<f64> = set
        .slices
        .iter()
        .map(|s| {
            let idx: Vec<usize> = (0..n)
                .filter(|&i| ends[i] >= s.start && ends[i] < s.end)
                .collect();
            let p: Vec<f64> = idx
                .iter()
                .flat_map(|&i| cal[i * k..(i + 1) * k].iter().copied())
                .collect();
            let l: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
            metrics::score(&p, &l, k).accuracy
        })
        .collect();
    let degradation_slope = slope(&degradation_accuracy);

    // Backtest: one decision per look-ahead (non-overlapping holding periods).
    let h = set.lookahead_steps.max(1);
    let backtest = e.backtesting.enabled.then(|| {
        let mut picked = Vec::new();
        let mut next = 0usize;
        for (i, &end) in ends.iter().enumerate() {
            if end >= next && set.realised_pct[i].is_finite() {
                picked.push(i);
                next = end + h;
            }
        }
        let means = &art.manifest.class_mean_change_pct;
        let expected: Vec<f64> = picked
            .iter()
            .map(|&i| {
                cal[i * k..(i + 1) * k]
                    .iter()
                    .zip(means)
                    .map(|(p, m)| p * m / 100.0)
                    .sum()
            })
            .collect();
        let realised: Vec<f64> = picked
            .iter()
            .map(|&i| set.realised_pct[i] / 100.0)
            .collect();
        let input = BacktestInput {
            expected: &expected,
            realised: &realised,
            cost: e.backtesting.transaction_cost,
            initial_capital: e.backtesting.initial_capital,
            periods_per_year: 365.25 * 86_400_000.0 / (h as i64 * art.manifest.cadence_ms) as f64,
        };
        [
            backtest::backtest(&input),
            backtest::always_long(&input),
            backtest::always_flat(&input),
        ]
    });

    let permutation = if e.explainability.enabled && !set.permutation_idx.is_empty() {
        let y: Vec<u32> = set.permutation_idx.iter().map(|&i| labels[i]).collect();
        let m = &art.manifest;
        permutation::importance(
            &art.model,
            &set.permutation_x,
            &y,
            &permutation::targets(&m.columns, &m.assets, m.layout.features_per_asset),
            e.explainability.permutation.repeats,
            c.training.seed,
            e.batch_size.max(1) as usize,
        )?
    } else {
        Vec::new()
    };

    let saliency = if e.explainability.enabled && !set.saliency_x.is_empty() {
        let ad = device.device.clone().autodiff();
        let grad_model = ModelArtifact::load(&model_dir, &ad)?.model;
        let mut sal = Saliency::new(&grad_model);
        let per = sal.values.len();
        for chunk in set.saliency_x.chunks(per * 64) {
            sal.add(&grad_model, chunk, &ad);
        }
        Some(sal)
    } else {
        None
    };

    // Save a fitted temperature with the model, locally and on the training run.
    if let Some(t) = fitted.filter(|_| req.save_temperature) {
        art.manifest.temperature = t;
        let path = model_dir.join(crate::model::artifact::MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&art.manifest).expect("manifest serialises");
        write_atomic(&path, &json)?;
        run.tracker()
            .log_artifact(&model_run, &path, crate::tracking::MODEL_DIR)?;
    }

    let dir = c.workdir.join("evaluation").join(run.run_id());
    std::fs::create_dir_all(&dir).map_err(|e| out_err(&dir, e))?;
    let summary = EvaluateSummary {
        run_id: run.run_id().to_owned(),
        model_run_id: model_run.clone(),
        split: set.split.clone(),
        samples: n,
        temperature,
        temperature_fitted: fitted.is_some(),
        scores,
        calibrated_scores,
        ece: [cal_raw.ece, cal_fit.ece],
        mce: [cal_raw.mce, cal_fit.mce],
        baselines,
        linear_baseline: set.linear.as_ref().map(|l| l.1).map_err(Clone::clone),
        oracle,
        permutation,
        permutation_samples: set.permutation_idx.len(),
        degradation_accuracy,
        degradation_slope,
        backtest,
        artifacts_dir: dir.clone(),
    };
    let plots = write_artifacts(
        &dir,
        &summary,
        &art,
        &[&cal_raw, &cal_fit],
        saliency.as_ref(),
    )?;
    // The logged model scored here gets the metrics on its own page (servers only).
    let model_id = run.tracker().model_of_run(&model_run).unwrap_or_else(|e| {
        tracing::warn!(
            model_run = %model_run,
            "could not look up the logged model of the training run ({e}); the metrics \
             stay on the evaluation run only"
        );
        None
    });
    let scored = Scored {
        model_run: &model_run,
        model_id: model_id.as_deref(),
        which: &req.model,
        dataset: set.dataset.as_ref(),
    };
    log_run(run, &summary, &scored, &dir, &plots)?;
    Ok(summary)
}

fn write_artifacts(
    dir: &Path,
    s: &EvaluateSummary,
    art: &ModelArtifact,
    cal: &[&Calibration; 2],
    saliency: Option<&Saliency>,
) -> Result<Vec<PathBuf>, TrainError> {
    let m = &art.manifest;
    let k = m.class_names.len();
    let mut plots = Vec::new();
    let write = |name: &str, text: &str| -> Result<(), TrainError> {
        let p = dir.join(name);
        write_atomic(&p, text.as_bytes()).map_err(|e| out_err(&p, e))
    };
    // Confusion matrices: counts and row-normalised.
    let mut csv = String::from("true\\predicted");
    for c in &m.class_names {
        let _ = write!(csv, ",{c}");
    }
    csv.push('\n');
    let norm = s.scores.confusion_normalized();
    for (i, c) in m.class_names.iter().enumerate() {
        let _ = write!(csv, "{c}");
        for j in 0..k {
            let _ = write!(csv, ",{}", s.scores.confusion[i * k + j]);
        }
        csv.push('\n');
    }
    write("confusion_matrix.csv", &csv)?;
    let counts: Vec<f64> = s.scores.confusion.iter().map(|v| *v as f64).collect();
    for (file, values, title) in [
        ("confusion_matrix.png", &counts, "confusion matrix (counts)"),
        (
            "confusion_matrix_normalized.png",
            &norm,
            "confusion matrix (row-normalised)",
        ),
    ] {
        let p = dir.join(file);
        plot::heatmap(
            &p,
            Chart {
                title,
                x_label: "predicted",
                y_label: "true",
            },
            &m.class_names,
            &m.class_names,
            values,
            true,
        )
        .map_err(|e| out_err(&p, e))?;
        plots.push(p);
    }
    // Reliability diagram: accuracy against confidence per bin, before and after scaling.
    let points = |c: &Calibration| -> Vec<(f64, f64)> {
        c.bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.confidence, b.accuracy))
            .collect()
    };
    let (before, after) = (points(cal[0]), points(cal[1]));
    let diagonal = [(0.0, 0.0), (1.0, 1.0)];
    let p = dir.join("reliability_diagram.png");
    let after_name = format!("temperature {:.2}", s.temperature);
    plot::line_chart(
        &p,
        Chart {
            title: "reliability diagram",
            x_label: "confidence",
            y_label: "accuracy",
        },
        &[
            Line {
                name: "uncalibrated",
                points: &before,
            },
            Line {
                name: &after_name,
                points: &after,
            },
            Line {
                name: "perfect",
                points: &diagonal,
            },
        ],
    )
    .map_err(|e| out_err(&p, e))?;
    plots.push(p);
    let deg: Vec<(f64, f64)> = s
        .degradation_accuracy
        .iter()
        .enumerate()
        .map(|(i, a)| ((i + 1) as f64, *a))
        .collect();
    let p = dir.join("degradation.png");
    plot::line_chart(
        &p,
        Chart {
            title: "accuracy per consecutive slice",
            x_label: "slice (oldest first)",
            y_label: "accuracy",
        },
        &[Line {
            name: "model",
            points: &deg,
        }],
    )
    .map_err(|e| out_err(&p, e))?;
    plots.push(p);
    if let Some(bt) = &s.backtest {
        let curve = |r: &BacktestResult| -> Vec<(f64, f64)> {
            r.equity
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v))
                .collect()
        };
        let (a, b, c) = (curve(&bt[0]), curve(&bt[1]), curve(&bt[2]));
        let p = dir.join("equity_curve.png");
        plot::line_chart(
            &p,
            Chart {
                title: "backtest equity (after costs)",
                x_label: "decision",
                y_label: "equity",
            },
            &[
                Line {
                    name: "model",
                    points: &a,
                },
                Line {
                    name: "always long",
                    points: &b,
                },
                Line {
                    name: "always flat",
                    points: &c,
                },
            ],
        )
        .map_err(|e| out_err(&p, e))?;
        plots.push(p);
    }
    if !s.permutation.is_empty() {
        let mut csv = String::from(
            "rank,name,group,accuracy_drop,accuracy_drop_sd,log_loss_rise,log_loss_rise_sd\n",
        );
        for (i, r) in s.permutation.iter().enumerate() {
            let _ = writeln!(
                csv,
                "{},{},{},{:.6},{:.6},{:.6},{:.6}",
                i + 1,
                r.name,
                r.group,
                r.accuracy_drop,
                r.accuracy_drop_sd,
                r.log_loss_rise,
                r.log_loss_rise_sd
            );
        }
        write("permutation_importance.csv", &csv)?;
        let top: Vec<&Importance> = s.permutation.iter().take(20).collect();
        let names: Vec<String> = top.iter().map(|r| r.name.clone()).collect();
        let drops: Vec<f64> = top.iter().map(|r| r.accuracy_drop).collect();
        let rises: Vec<f64> = top.iter().map(|r| r.log_loss_rise).collect();
        let p = dir.join("permutation_importance.png");
        plot::bar_chart(
            &p,
            Chart {
                title: "permutation importance (test windows)",
                x_label: "feature or group shuffled",
                y_label: "drop in accuracy / rise in log loss",
            },
            &names,
            &[("accuracy drop", &drops), ("log-loss rise", &rises)],
        )
        .map_err(|e| out_err(&p, e))?;
        plots.push(p);
    }
    let mut ranking = Vec::new();
    if let Some(sal) = saliency {
        let fa = m.layout.features_per_asset;
        let temporal: Vec<String> = m.columns[m.layout.asset_columns()..].to_vec();
        let feature_names = |a: usize| -> Vec<String> {
            m.columns[a * fa..(a + 1) * fa]
                .iter()
                .cloned()
                .chain(temporal.iter().cloned())
                .collect()
        };
        let mean = sal.mean();
        let (t, f) = (sal.time_steps, sal.features);
        for (a, asset) in m.assets.iter().enumerate().take(sal.assets) {
            // Time x feature map of this asset channel (rows = time steps, newest last).
            let values = &mean[a * t * f..(a + 1) * t * f];
            let rows: Vec<String> = (0..t).map(|s| format!("t-{}", t - 1 - s)).collect();
            let p = dir.join(format!("saliency_{asset}.png"));
            let title = format!("saliency |grad x input|: {asset}");
            plot::heatmap(
                &p,
                Chart {
                    title: &title,
                    x_label: "feature",
                    y_label: "time step",
                },
                &rows,
                &feature_names(a),
                values,
                false,
            )
            .map_err(|e| out_err(&p, e))?;
            plots.push(p);
        }
        let per = sal.per_feature();
        for a in 0..sal.assets {
            let names = feature_names(a);
            for j in 0..f {
                let label = if j < fa {
                    names[j].clone()
                } else {
                    format!("{}@{}", names[j], m.assets[a])
                };
                ranking.push((label, per[a * f + j]));
            }
        }
        ranking.sort_by(|x, y| y.1.total_cmp(&x.1));
        let mut csv = String::from("rank,feature,importance\n");
        for (i, (name, v)) in ranking.iter().enumerate() {
            let _ = writeln!(csv, "{},{name},{v:.6e}", i + 1);
        }
        write("feature_importance.csv", &csv)?;
    }
    write(
        "metrics.json",
        &serde_json::to_string_pretty(s).expect("summary serialises"),
    )?;
    write("summary.md", &summary_markdown(s, art, &ranking))?;
    Ok(plots)
}

/// The one-page summary a person reads.
pub fn summary_markdown(
    s: &EvaluateSummary,
    art: &ModelArtifact,
    ranking: &[(String, f64)],
) -> String {
    let m = &art.manifest;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Evaluation of {} ({} split)\n\nModel: training run `{}`, {} classes {:?}, horizon {} s, window {} steps. Samples scored: {}.\n",
        m.assets[0],
        s.split,
        s.model_run_id,
        m.class_names.len(),
        m.class_names,
        m.horizon_seconds,
        m.window_steps,
        s.samples
    );
    let lost = s.baselines_not_beaten();
    let verdict = if lost.is_empty() {
        "**The model beats every baseline** on accuracy (and on log loss where the baseline \
         gives probabilities)."
            .to_owned()
    } else {
        format!(
            "**The model does NOT beat: {}** (its accuracy must be higher and, where the \
             baseline gives probabilities, its log loss lower).",
            lost.join(", ")
        )
    };
    let _ = writeln!(md, "## Verdict\n\n{verdict}\n");
    match (
        &s.linear_baseline,
        s.baselines.iter().find(|b| b.name == "logistic regression"),
    ) {
        (Ok(n), Some(b)) => {
            let _ = writeln!(
                md,
                "Against the linear baseline (multinomial logistic regression on the last step's features of every asset, fit on {n} training windows): the model is **{}** (accuracy {:.4} vs {:.4}, log loss {:.4} vs {:.4}).\n",
                if b.model_beats_it {
                    "better"
                } else {
                    "NOT better"
                },
                s.scores.accuracy,
                b.accuracy,
                s.scores.log_loss.unwrap_or(f64::NAN),
                b.log_loss.unwrap_or(f64::NAN)
            );
        }
        (Err(why), _) => {
            let _ = writeln!(md, "No linear baseline: {why}.\n");
        }
        _ => {}
    }
    match &s.oracle {
        Ok(o) => {
            let _ = writeln!(
                md,
                "Oracle ceiling (the synthetic market's true class probabilities): accuracy {:.4}. **Edge captured: {:.2}** = (model − majority) / (oracle − majority) on accuracy.\n",
                o.accuracy, o.edge_captured
            );
        }
        Err(why) => {
            let _ = writeln!(md, "No oracle ceiling: {why}.\n");
        }
    }
    let how = if s.temperature_fitted {
        "fit on the validation split"
    } else {
        "stored with the model"
    };
    let calibrated = if s.ece[1] <= 0.05 {
        format!(
            "After temperature scaling (T = {:.3}, {how}) the probabilities are **well calibrated** (ECE {:.4} <= 0.05).",
            s.temperature, s.ece[1]
        )
    } else {
        format!(
            "Even after temperature scaling (T = {:.3}, {how}) the probabilities are **not well calibrated** (ECE {:.4} > 0.05): treat them as scores.",
            s.temperature, s.ece[1]
        )
    };
    let _ = writeln!(
        md,
        "{calibrated} Before scaling: ECE {:.4}, MCE {:.4}; after: MCE {:.4}.\n",
        s.ece[0], s.mce[0], s.mce[1]
    );
    if let Some(w) = calibration::bound_warning(s.temperature).filter(|_| s.temperature_fitted) {
        let _ = writeln!(md, "**Warning:** {w}.\n");
    }
    let _ = writeln!(
        md,
        "## Model vs baselines\n\n| | accuracy | macro F1 | log loss |\n|---|---|---|---|"
    );
    let ll = |v: Option<f64>| v.map_or("–".to_owned(), |x| format!("{x:.4}"));
    let _ = writeln!(
        md,
        "| model | {:.4} | {:.4} | {} |",
        s.scores.accuracy,
        s.scores.macro_f1,
        ll(s.scores.log_loss)
    );
    for b in &s.baselines {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {:.4} | {} |",
            b.name,
            b.accuracy,
            b.macro_f1,
            ll(b.log_loss)
        );
    }
    if let Ok(o) = &s.oracle {
        let _ = writeln!(
            md,
            "| oracle (ceiling) | {:.4} | {:.4} | {:.4} |",
            o.accuracy, o.macro_f1, o.log_loss
        );
    }
    let _ = writeln!(
        md,
        "\n## Metrics (before / after temperature scaling)\n\n| metric | before | after |\n|---|---|---|"
    );
    for ((name, a), (_, b)) in s.scores.pairs().iter().zip(s.calibrated_scores.pairs()) {
        let _ = writeln!(md, "| {name} | {a:.4} | {b:.4} |");
    }
    let _ = writeln!(
        md,
        "\n## Degradation over time\n\nAccuracy per consecutive slice: {}; slope {:+.4} per slice{}.\n",
        s.degradation_accuracy
            .iter()
            .map(|a| format!("{a:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.degradation_slope,
        if s.degradation_slope < 0.0 {
            " (decaying)"
        } else {
            ""
        }
    );
    if let Some(bt) = &s.backtest {
        let _ = writeln!(
            md,
            "## Backtest (after costs)\n\nRule: expected return = sum of class probability x the class's mean training move; long when it exceeds the transaction cost, short below minus the cost, flat otherwise; one decision per horizon.\n\n| | total return | Sharpe | max drawdown | hit rate | turnover | trades |\n|---|---|---|---|---|---|---|"
        );
        for (name, r) in ["model", "always long", "always flat"].iter().zip(bt) {
            let _ = writeln!(
                md,
                "| {name} | {:.4} | {:.3} | {:.4} | {:.3} | {:.1} | {} |",
                r.total_return, r.sharpe, r.max_drawdown, r.hit_rate, r.turnover, r.trades
            );
        }
        md.push('\n');
    }
    if !s.permutation.is_empty() {
        let _ = writeln!(
            md,
            "## What the model looks at (permutation importance)\n\nEach feature (or group) shuffled across {} evenly spaced test windows; mean ± standard deviation over the repeats (seeds). A feature the model does not use scores about 0.\n\n| rank | shuffled | accuracy drop | log-loss rise |\n|---|---|---|---|",
            s.permutation_samples
        );
        let groups = s.permutation.iter().filter(|r| r.group);
        let features = s.permutation.iter().filter(|r| !r.group).take(15);
        for (i, r) in features.chain(groups).enumerate() {
            let name = if r.group {
                format!("group: {}", r.name)
            } else {
                r.name.clone()
            };
            let _ = writeln!(
                md,
                "| {} | {name} | {:+.4} ± {:.4} | {:+.4} ± {:.4} |",
                i + 1,
                r.accuracy_drop,
                r.accuracy_drop_sd,
                r.log_loss_rise,
                r.log_loss_rise_sd
            );
        }
        md.push('\n');
    }
    if !ranking.is_empty() {
        let _ = writeln!(
            md,
            "## Gradient x input (secondary view)\n\nLarge constant inputs score high here whether or not they matter; trust the permutation table above.\n"
        );
        for (i, (name, v)) in ranking.iter().take(10).enumerate() {
            let _ = writeln!(md, "{}. {name} ({v:.3e})", i + 1);
        }
    }
    md
}

/// What an evaluation scored: the model (its training run, and its logged model on a server)
/// and the samples.
struct Scored<'a> {
    model_run: &'a str,
    model_id: Option<&'a str>,
    which: &'a ModelRef,
    dataset: Option<&'a Dataset>,
}

fn log_run(
    run: &StageRun<'_>,
    s: &EvaluateSummary,
    scored: &Scored<'_>,
    dir: &Path,
    plots: &[PathBuf],
) -> Result<(), EvaluateError> {
    let t = run.tracker();
    let (model_run, which) = (scored.model_run, scored.which);
    let datasets: Vec<DatasetInput> = scored
        .dataset
        .map(|d| DatasetInput::new(d.clone(), "eval"))
        .into_iter()
        .collect();
    let models: Vec<String> = scored.model_id.map(str::to_owned).into_iter().collect();
    t.log_inputs(run.run_id(), &datasets, &models)?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut m: Vec<Metric> = Vec::new();
    let mut push = |k: String, v: f64| {
        m.push(Metric::new(&k, v, now, 0).scoring(scored.model_id, scored.dataset))
    };
    for (k, v) in s.scores.pairs() {
        push(format!("{}_{k}", s.split), v);
    }
    for (k, v) in s.calibrated_scores.pairs() {
        push(format!("{}_calibrated_{k}", s.split), v);
    }
    push("temperature".into(), s.temperature);
    push("ece".into(), s.ece[0]);
    push("ece_calibrated".into(), s.ece[1]);
    push("mce".into(), s.mce[0]);
    push("mce_calibrated".into(), s.mce[1]);
    push("degradation_slope".into(), s.degradation_slope);
    for b in &s.baselines {
        let key = b.name.replace([' ', '-'], "_");
        push(format!("baseline_{key}_accuracy"), b.accuracy);
        push(format!("baseline_{key}_macro_f1"), b.macro_f1);
        if let Some(v) = b.log_loss {
            push(format!("baseline_{key}_log_loss"), v);
        }
    }
    if let Ok(o) = &s.oracle {
        push("oracle_accuracy".into(), o.accuracy);
        push("oracle_macro_f1".into(), o.macro_f1);
        push("oracle_log_loss".into(), o.log_loss);
        push("edge_captured".into(), o.edge_captured);
    }
    if let Some(bt) = &s.backtest {
        for (name, r) in ["model", "always_long", "always_flat"].iter().zip(bt) {
            push(format!("backtest_{name}_total_return"), r.total_return);
            push(format!("backtest_{name}_sharpe"), r.sharpe);
            push(format!("backtest_{name}_max_drawdown"), r.max_drawdown);
            push(format!("backtest_{name}_hit_rate"), r.hit_rate);
            push(format!("backtest_{name}_trades"), r.trades as f64);
        }
    }
    t.log_metrics(run.run_id(), &m)?;
    let degradation: Vec<Metric> = s
        .degradation_accuracy
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Metric::new("degradation_accuracy", *a, now, i as i64 + 1)
                .scoring(scored.model_id, scored.dataset)
        })
        .collect();
    t.log_metrics(run.run_id(), &degradation)?;
    let mut tags = vec![
        (
            "binance_ml.input_run.training".to_owned(),
            model_run.to_owned(),
        ),
        (
            "binance_ml.beats_baselines".to_owned(),
            s.baselines_not_beaten().is_empty().to_string(),
        ),
    ];
    match which {
        ModelRef::Version(v) => tags.push(("binance_ml.model_version".into(), v.to_string())),
        ModelRef::Alias(a) => tags.push(("binance_ml.model_alias".into(), a.clone())),
        _ => {}
    }
    t.set_tags(run.run_id(), &tags)?;
    t.log_params(
        run.run_id(),
        &[
            ("model_run_id", model_run.to_owned()),
            ("split", s.split.clone()),
            ("samples", s.samples.to_string()),
        ],
    )?;
    for p in plots {
        run.log_plot(p)?;
    }
    for f in [
        "summary.md",
        "metrics.json",
        "confusion_matrix.csv",
        "feature_importance.csv",
        "permutation_importance.csv",
    ] {
        let p = dir.join(f);
        if p.is_file() {
            t.log_artifact(run.run_id(), &p, "evaluation")?;
        }
    }
    Ok(())
}
