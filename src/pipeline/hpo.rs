//! Hyperparameter search before the final training (`hyperparameter_optimization.enabled`).
//!
//! A study run in the HPO experiment holds one nested run per trial. Each trial's parameters
//! (TPE or random, `sampler`) are applied to the configuration; the model is trained on K
//! rolling folds inside the training split (each fold's validation block after its training
//! part, purged by window + horizon; the test split is never touched) and the objective is the
//! mean over folds of the best epoch's `metric`. The median pruner watches the first fold's
//! per-epoch values. The study is saved in `<workdir>/hpo/<key>/study.json` after every trial,
//! so an interrupted search resumes without repeating finished trials; the best parameters go
//! to the final training.

use std::time::Instant;

use serde::Serialize;

use super::error::{Error, Result};
use super::tracked;
use crate::config::{Config, LoadedConfig};
use crate::model::ModelSpec;
use crate::store::{read_manifest, store_dir};
use crate::tracking::{Metric, Stage, StageRun};
use crate::train::hpo::{
    HpoError, MedianPruner, ParamValue, Params, SearchSpace, Study, TrialState, rolling_folds,
    sampler_from_config, study_key,
};
use crate::train::{
    BatchSource, Split, StoreSource, TrainError, TrainOptions, Trainer, select_device,
};

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct HpoSummary {
    /// The study run.
    pub run_id: String,
    /// Trials finished (complete, pruned or failed), this call and earlier ones.
    pub trials: usize,
    /// Complete trials.
    pub complete: usize,
    /// Pruned trials.
    pub pruned: usize,
    /// Best trial number.
    pub best_trial: u32,
    /// Its objective (mean over folds).
    pub best_value: f64,
    /// Its parameters, as applied to the final training.
    pub best_params: Params,
}

fn as_usize(name: &str, v: &ParamValue) -> Result<usize, TrainError> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| {
            TrainError::Option(format!(
                "search parameter {name} = {v}: expected a positive integer"
            ))
        })
}

fn as_f64(name: &str, v: &ParamValue) -> Result<f64, TrainError> {
    v.as_f64()
        .or_else(|| v.as_i64().map(|n| n as f64))
        .ok_or_else(|| {
            TrainError::Option(format!("search parameter {name} = {v}: expected a number"))
        })
}

/// Sets layer `i` of a per-layer list, naming the parameter when the layer does not exist.
fn set_layer<T>(name: &str, list: &mut [T], i: usize, value: T) -> Result<(), TrainError> {
    let len = list.len();
    *list.get_mut(i).ok_or_else(|| {
        TrainError::Option(format!(
            "search parameter {name}: the model has {len} such layers"
        ))
    })? = value;
    Ok(())
}

/// Applies search parameters to the configuration (names as in `SEARCH_PARAMS`; `_N` is the
/// 1-based layer). Returns the window the trial uses (at most the store's).
pub fn apply(config: &mut Config, params: &Params) -> Result<usize, TrainError> {
    let mut window = config.preprocessing.window_steps as usize;
    for (name, v) in params {
        let layer = |prefix: &str| -> Option<usize> {
            name.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n >= 1)
                .map(|n| n - 1)
        };
        let m = &mut config.model;
        match name.as_str() {
            "learning_rate" => m.compilation.learning_rate = as_f64(name, v)?,
            "batch_size" => config.training.batch_size = as_usize(name, v)? as u32,
            "lstm_units" => m.lstm.units = as_usize(name, v)? as u32,
            "lstm_dropout" => m.lstm.dropout = as_f64(name, v)?,
            "window_steps" => window = as_usize(name, v)?,
            _ => {
                if let Some(i) = layer("cnn_filters_") {
                    set_layer(name, &mut m.cnn.filters, i, as_usize(name, v)? as u32)?;
                } else if let Some(i) = layer("cnn_dropout_") {
                    let x = as_f64(name, v)?;
                    set_layer(name, &mut m.cnn.dropout_rates, i, x)?;
                } else if let Some(i) = layer("dense_units_") {
                    set_layer(name, &mut m.dense.layers, i, as_usize(name, v)? as u32)?;
                } else if let Some(i) = layer("dense_dropout_") {
                    let x = as_f64(name, v)?;
                    set_layer(name, &mut m.dense.dropout_rates, i, x)?;
                } else {
                    return Err(TrainError::Option(format!(
                        "unknown search parameter {name}"
                    )));
                }
            }
        }
    }
    Ok(window)
}

/// Runs (or resumes) the study of this configuration and returns the configuration with the
/// best parameters applied.
pub fn search(loaded: &LoadedConfig, parent: Option<&str>) -> Result<(LoadedConfig, HpoSummary)> {
    let _span = tracing::info_span!("hpo").entered();
    let c = &loaded.config;
    let h = &c.hyperparameter_optimization;
    let space = SearchSpace::from_config(&h.search_space)?;
    let dir = store_dir(c)?;
    let manifest = read_manifest(&dir).ok_or_else(|| TrainError::NoStore { dir: dir.clone() })?;
    let full = StoreSource::open(
        &dir,
        manifest.clone(),
        c.training.shuffle_buffer as usize,
        c.training.prefetch_batches as usize,
    )?;
    let data_key = format!(
        "{}/{}",
        manifest.key,
        crate::data::cache::sha256_hex(
            serde_json::to_string(&(&c.model, &c.training))
                .expect("config serialises")
                .as_bytes()
        )
    );
    let key = study_key(h, &data_key);
    let mut study = Study::load_or_new(
        &c.workdir.join("hpo").join(&key).join("study.json"),
        &key,
        h.direction,
    )?;
    let folds = rolling_folds(
        manifest.ranges[0],
        h.n_folds.max(1) as usize,
        manifest.window_steps,
        manifest.lookahead_steps,
    );
    if folds.is_empty() {
        return Err(HpoError::Space {
            param: "hyperparameter_optimization.n_folds".into(),
            reason: "the training split is too short for one fold plus its purge gap".into(),
        }
        .into());
    }
    let mut sampler = sampler_from_config(h);
    let pruner = MedianPruner::from_config(&h.pruning, h.direction);
    let device = select_device(c.model.backend, &c.model.device)?;
    let started = Instant::now();
    let summary = tracked(
        loaded,
        parent,
        Stage::HyperparameterOptimization,
        "study",
        &[Stage::Preprocessing],
        |study_run| {
            study_run.tracker().set_tags(
                study_run.run_id(),
                &[
                    ("binance_ml.study_key", key.as_str()),
                    ("binance_ml.study_file", &study.path().display().to_string()),
                ],
            )?;
            while study.n_done() < h.n_trials as usize {
                if h.timeout_seconds
                    .is_some_and(|t| started.elapsed().as_secs() >= t)
                {
                    tracing::warn!(
                        "hyperparameter_optimization.timeout_seconds reached: no new trials"
                    );
                    break;
                }
                let number = study.ask(sampler.as_mut(), &space)?;
                let params = study.trial(number).expect("asked trial").params.clone();
                let outcome = tracked(
                    loaded,
                    Some(study_run.run_id()),
                    Stage::HyperparameterOptimization,
                    "trial",
                    &[],
                    |trial_run| {
                        study.set_run_id(number, trial_run.run_id())?;
                        run_trial(
                            loaded,
                            trial_run,
                            &mut study,
                            number,
                            &params,
                            &full,
                            &folds,
                            &pruner,
                            &device.device,
                        )
                    },
                );
                match outcome {
                    Ok(()) => {}
                    // A trial whose parameters cannot train (too large for the budget, a
                    // pooled-away map...) fails; the study goes on.
                    Err(Error::Train(e)) => {
                        tracing::warn!(trial = number, "trial failed: {e}");
                        study.fail(number, &e.to_string())?;
                    }
                    Err(e) => return Err(e),
                }
            }
            let best = study.best().ok_or_else(|| HpoError::Trial {
                number: 0,
                reason: "no trial completed; see the trial runs for their errors".into(),
            })?;
            let count = |s: TrialState| study.trials.iter().filter(|t| t.state == s).count();
            let out = HpoSummary {
                run_id: study_run.run_id().to_owned(),
                trials: study.n_done(),
                complete: count(TrialState::Complete),
                pruned: count(TrialState::Pruned),
                best_trial: best.number,
                best_value: best.value.unwrap_or(f64::NAN),
                best_params: best.params.clone(),
            };
            let t = study_run.tracker();
            let best_params: Vec<(String, String)> = out
                .best_params
                .iter()
                .map(|(k, v)| (format!("best_{k}"), v.to_string()))
                .collect();
            t.log_params(study_run.run_id(), &best_params)?;
            let now = chrono::Utc::now().timestamp_millis();
            t.log_metrics(
                study_run.run_id(),
                &[
                    Metric::new(format!("best_{}", h.metric), out.best_value, now, 0),
                    Metric::new("trials_complete", out.complete as f64, now, 0),
                    Metric::new("trials_pruned", out.pruned as f64, now, 0),
                ],
            )?;
            Ok(out)
        },
    )?;
    let mut best = loaded.clone();
    let window = apply(&mut best.config, &summary.best_params)?;
    if window != c.preprocessing.window_steps as usize {
        // The final training uses the store's windows; a shorter best window is reported.
        tracing::warn!(
            window,
            store = c.preprocessing.window_steps,
            "the best window_steps differs from the store's; set preprocessing.window_steps to it and rerun preprocess to train on it"
        );
    }
    tracing::info!(trial = summary.best_trial, value = summary.best_value, params = ?summary.best_params, "best trial");
    Ok((best, summary))
}

/// One trial: every fold trained with `params`, the objective the mean of each fold's best
/// epoch; pruned early on the first fold's curve.
#[allow(clippy::too_many_arguments)]
fn run_trial(
    loaded: &LoadedConfig,
    run: &StageRun<'_>,
    study: &mut Study,
    number: u32,
    params: &Params,
    full: &StoreSource,
    folds: &[(crate::store::SplitRange, crate::store::SplitRange)],
    pruner: &MedianPruner,
    device: &burn::tensor::Device,
) -> Result<()> {
    let h = &loaded.config.hyperparameter_optimization;
    let mut config = loaded.config.clone();
    let window = apply(&mut config, params)?;
    let t = run.tracker();
    let logged: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    t.log_params(run.run_id(), &logged)?;
    t.set_tags(run.run_id(), &[("binance_ml.trial", number.to_string())])?;
    let mut opts = TrainOptions::from_config(&config.model, &config.training)?;
    opts.progress = false;
    opts.class_weights = config.training.class_weights.compute_from_train.then(|| {
        full.manifest()
            .class_weights
            .iter()
            .map(|w| *w as f32)
            .collect()
    });
    let mut fold_values = Vec::new();
    for (i, (train, validation)) in folds.iter().enumerate() {
        let mut source = full.fold(*train, *validation, window)?;
        if source.len(Split::Train) == 0 || source.len(Split::Validation) == 0 {
            continue;
        }
        let spec = ModelSpec::from_config(&config.model, source.sample_shape())
            .map_err(TrainError::from)?;
        source.check_budget(&spec, opts.batch_size, opts.memory_budget)?;
        let mut trainer = Trainer::new(spec, opts.clone(), device.clone())?;
        let mut best: Option<f64> = None;
        while !trainer.finished() {
            let m = trainer.run_epoch(&mut source, &mut ())?;
            let value = m.get(&h.metric).unwrap_or(f64::NAN);
            let now = chrono::Utc::now().timestamp_millis();
            t.log_metrics(
                run.run_id(),
                &[Metric::new(
                    format!("fold{}_{}", i + 1, h.metric),
                    value,
                    now,
                    i64::from(m.epoch),
                )],
            )?;
            if best.is_none_or(|b| h.direction.better(value, b)) && value.is_finite() {
                best = Some(value);
            }
            if i == 0 {
                study.report(number, m.epoch, value)?;
                let trial = study.trial(number).expect("running trial");
                if pruner.should_prune(&trial.intermediate, &study.trials) {
                    tracing::info!(trial = number, epoch = m.epoch, "trial pruned");
                    study.prune(number)?;
                    t.set_tags(run.run_id(), &[("binance_ml.trial_state", "pruned")])?;
                    return Ok(());
                }
            }
        }
        fold_values.push(best.unwrap_or(f64::NAN));
    }
    if fold_values.is_empty() {
        return Err(
            TrainError::Option("no fold has training and validation samples".into()).into(),
        );
    }
    let mean = fold_values.iter().sum::<f64>() / fold_values.len() as f64;
    let std = (fold_values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
        / fold_values.len() as f64)
        .sqrt();
    let now = chrono::Utc::now().timestamp_millis();
    t.log_metrics(
        run.run_id(),
        &[
            Metric::new(format!("mean_{}", h.metric), mean, now, 0),
            Metric::new(format!("std_{}", h.metric), std, now, 0),
        ],
    )?;
    tracing::info!(
        trial = number,
        params = ?params,
        "{}: mean {mean:.4} (std {std:.4}) over {} fold(s)",
        h.metric,
        fold_values.len()
    );
    study.complete(number, mean, fold_values)?;
    t.set_tags(run.run_id(), &[("binance_ml.trial_state", "complete")])?;
    Ok(())
}
