//! The `train` stage: the preprocessed store -> a trained model artifact, with per-epoch
//! metrics, training curves and the model logged to MLflow.
//!
//! Checkpoints live in `<workdir>/training/<key>/checkpoint.bin`, where the key hashes the
//! store, `model` and `training` (less `epochs`, so a resumed run may be given more epochs);
//! `train --resume` continues from there. The artifact goes to `<workdir>/models/<run_id>/`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::trainer::optimizer_params;
use super::{
    BatchSource, EpochMetrics, Split, StoreSource, TrainError, TrainObserver, TrainOptions,
    Trainer, select_device,
};
use crate::config::{Config, LoadedConfig};
use crate::data::cache::sha256_hex;
use crate::model::{ModelArtifact, ModelManifest, ModelSpec, ModelSummary};
use crate::plot::{self, Chart, Line};
use crate::store::{read_manifest, store_dir};
use crate::tracking::{DatasetInput, Metric, Param, StageRun, TrackingSettings};

/// Model name used in run names, tags and the registry pattern's `{model}`.
pub const MODEL_NAME: &str = "cnn_lstm";

/// What the caller decides besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainRequest {
    /// Continue from the checkpoint of an interrupted run with the same configuration.
    pub resume: bool,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// The preprocessed store (default: this configuration's).
    pub store: Option<PathBuf>,
    /// Continue a checkpoint of this same configuration when there is one (else start fresh).
    pub resume_existing: bool,
    /// Start from this model artifact's weights instead of a fresh initialisation.
    pub init: Option<PathBuf>,
    /// Extra tags on the training run (lineage of fine-tunes).
    pub tags: Vec<(String, String)>,
}

/// What `train` produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The MLflow run.
    pub run_id: String,
    /// The model artifact directory.
    pub model_dir: PathBuf,
    /// The preprocessed store trained on.
    pub store_dir: PathBuf,
    /// Backend and device.
    pub device: String,
    /// Trainable parameters.
    pub parameters: u64,
    /// Forward FLOPs per sample.
    pub flops_per_sample: u64,
    /// Training and validation samples.
    pub samples: [usize; 2],
    /// Epochs completed (including those before a resume).
    pub epochs: u32,
    /// Epoch whose weights the model holds.
    pub weights_epoch: u32,
    /// Early stopping ended the run.
    pub stopped_early: bool,
    /// Epochs the checkpoint already had when resuming.
    pub resumed_after_epoch: Option<u32>,
    /// Metrics of the epoch whose weights were kept.
    pub metrics: Option<EpochMetrics>,
    /// Registered model name and version, when a registry was used.
    pub registered: Option<(String, String)>,
}

/// The checkpoint directory for this configuration and store.
fn training_dir(loaded: &LoadedConfig, store_key: &str, init: Option<&Path>) -> PathBuf {
    let c = &loaded.config;
    let mut training = serde_json::to_value(&c.training).expect("config serialises");
    training["epochs"] = serde_json::Value::Null;
    let relevant = serde_json::json!({
        "store": store_key,
        "init": init,
        "model": c.model,
        "training": training,
    });
    let key = &sha256_hex(relevant.to_string().as_bytes())[..16];
    c.workdir.join("training").join(key)
}

/// Logs each epoch's metrics to the run as step metrics (step = epoch).
struct MlflowObserver<'r, 't> {
    run: &'r StageRun<'t>,
    error: Option<crate::tracking::TrackingError>,
}

impl MlflowObserver<'_, '_> {
    fn log(&mut self, m: &EpochMetrics) {
        if self.error.is_some() {
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let metrics: Vec<Metric> = m
            .pairs()
            .into_iter()
            .map(|(k, v)| Metric::new(k, v, now, i64::from(m.epoch)))
            .collect();
        if let Err(e) = self.run.tracker().log_metrics(self.run.run_id(), &metrics) {
            // Training goes on; the error fails the stage once the model is saved locally.
            tracing::warn!("could not log epoch {} metrics: {e}", m.epoch);
            self.error = Some(e);
        }
    }
}

impl TrainObserver for MlflowObserver<'_, '_> {
    fn on_epoch_end(&mut self, m: &EpochMetrics) {
        tracing::info!(
            epoch = m.epoch,
            loss = format!("{:.4}", m.loss),
            val_loss = m.val_loss.map(|v| format!("{v:.4}")).unwrap_or_default(),
            val_accuracy = m
                .val_accuracy
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
            lr = m.learning_rate,
            samples_per_s = format!("{:.0}", m.samples_per_second),
            "epoch done"
        );
        self.log(m);
    }
}

/// Trains the configured model on this configuration's preprocessed store inside `run`.
pub fn train(
    loaded: &LoadedConfig,
    req: &TrainRequest,
    run: &StageRun<'_>,
) -> Result<TrainSummary, TrainError> {
    let _span = tracing::info_span!("train").entered();
    let c = &loaded.config;
    let dir = match &req.store {
        Some(d) => d.clone(),
        None => store_dir(c)?,
    };
    let manifest = read_manifest(&dir).ok_or_else(|| TrainError::NoStore { dir: dir.clone() })?;
    let store_key = manifest.key.clone();
    let t = &c.training;
    let mut source = StoreSource::open(
        &dir,
        manifest,
        t.shuffle_buffer as usize,
        t.prefetch_batches as usize,
    )?;
    let spec = ModelSpec::from_config(&c.model, source.sample_shape()).map_err(TrainError::from)?;
    let summary = ModelSummary::of(&spec);
    let mut opts = TrainOptions::from_config(&c.model, t)?;
    source.check_budget(&spec, opts.batch_size, opts.memory_budget)?;
    if t.class_weights.compute_from_train {
        opts.class_weights = Some(
            source
                .manifest()
                .class_weights
                .iter()
                .map(|w| *w as f32)
                .collect(),
        );
    }
    let work = training_dir(loaded, &store_key, req.init.as_deref());
    let checkpoint = work.join("checkpoint.bin");
    opts.checkpoint_path = Some(checkpoint.clone());
    opts.progress = req.progress;
    let device = select_device(c.model.backend, &c.model.device)?;
    tracing::info!(
        device = %device.description,
        parameters = summary.total_params(),
        train = source.len(Split::Train),
        validation = source.len(Split::Validation),
        "training {MODEL_NAME}"
    );
    let resume = req.resume || (req.resume_existing && checkpoint.is_file());
    let trainer = if resume {
        if !checkpoint.is_file() {
            return Err(TrainError::Option(format!(
                "--resume: no checkpoint at {} for this configuration; train without --resume",
                checkpoint.display()
            )));
        }
        Trainer::resume(spec.clone(), opts.clone(), device.device.clone())?
    } else {
        let t = Trainer::new(spec.clone(), opts.clone(), device.device.clone())?;
        match &req.init {
            Some(base) => {
                let art = ModelArtifact::load(base, &device.device)?;
                if art.manifest.spec != spec {
                    return Err(TrainError::Option(format!(
                        "the base model in {} has another architecture or input shape than \
                         this configuration builds",
                        base.display()
                    )));
                }
                t.with_weights(&art.model)?
            }
            None => t,
        }
    };
    let resumed_after_epoch = resume.then(|| trainer.epochs_done());
    if let Some(e) = resumed_after_epoch {
        tracing::info!(checkpoint = %checkpoint.display(), "resuming after epoch {e}");
    }

    // Lineage first: a run killed mid-training is still findable by its tags.
    run.tracker().set_tags(run.run_id(), &req.tags)?;
    log_setup(run, c, &source, &spec, &summary, &opts, &device.description)?;
    let mut observer = MlflowObserver { run, error: None };
    for m in trainer.history() {
        observer.log(m);
    }
    let outcome = trainer.fit(&mut source, &mut observer)?;

    let metrics = outcome
        .history
        .iter()
        .find(|m| m.epoch == outcome.weights_epoch)
        .cloned();
    let model_dir = c.workdir.join("models").join(run.run_id());
    let class_names = source.manifest().class_names.clone();
    let m = source.manifest();
    let artifact = ModelManifest {
        format_version: crate::model::artifact::ARTIFACT_FORMAT_VERSION.into(),
        architecture: c.model.architecture.clone(),
        spec: spec.clone(),
        assets: m.assets.clone(),
        columns: m.columns.clone(),
        layout: m.layout(),
        window_steps: m.window_steps,
        cadence_ms: m.cadence_ms,
        horizon_seconds: c.targets.prediction_horizon_seconds,
        scaler: m.scaler.clone(),
        class_names,
        boundaries: c.targets.price_classes.boundaries.clone(),
        boundary_type: c.targets.price_classes.definition_type,
        class_mean_change_pct: source.class_mean_change_pct().to_vec(),
        train_class_counts: m.class_counts[0].clone(),
        temperature: 1.0,
        store_key: store_key.clone(),
        config_hash: loaded.config_hash(),
        weights_epoch: outcome.weights_epoch,
        weights_sha256: String::new(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    ModelArtifact::save(
        &model_dir,
        &artifact,
        &outcome.model,
        &loaded.redacted_yaml(),
    )?;
    let plots = curves(&work.join("plots"), &outcome.history)?;
    if let Some(e) = observer.error {
        return Err(e.into());
    }
    for p in &plots {
        run.log_plot(p)?;
    }
    let tracker = run.tracker();
    tracker.set_tags(
        run.run_id(),
        &[
            ("binance_ml.dataset_hash", store_key.as_str()),
            (
                "binance_ml.weights_epoch",
                &outcome.weights_epoch.to_string(),
            ),
            (
                "binance_ml.stopped_early",
                if outcome.stopped_early {
                    "true"
                } else {
                    "false"
                },
            ),
        ],
    )?;
    let settings = TrackingSettings::from_config(c);
    let asset = c.data.asset_pairs.target_asset.to_string();
    // The logged model's page lists what it is: the model section and its optimizer.
    let params: Vec<Param> = [
        ("architecture".to_owned(), c.model.architecture.clone()),
        ("parameters".to_owned(), summary.total_params().to_string()),
        (
            "weights_epoch".to_owned(),
            outcome.weights_epoch.to_string(),
        ),
    ]
    .into_iter()
    .chain(crate::config::flatten("model", &c.model))
    .chain(optimizer_params(opts.learning_rate))
    .map(|(k, v)| Param::new(k, v))
    .collect();
    let version = run.log_model(
        &settings,
        &asset,
        MODEL_NAME,
        &artifact.card(),
        &model_dir,
        &params,
    )?;
    Ok(TrainSummary {
        run_id: run.run_id().to_owned(),
        model_dir,
        store_dir: dir,
        device: device.description,
        parameters: summary.total_params(),
        flops_per_sample: summary.total_flops(),
        samples: [source.len(Split::Train), source.len(Split::Validation)],
        epochs: outcome.history.last().map_or(0, |m| m.epoch),
        weights_epoch: outcome.weights_epoch,
        stopped_early: outcome.stopped_early,
        resumed_after_epoch,
        metrics,
        registered: version.map(|v| (v.name, v.version)),
    })
}

fn log_setup(
    run: &StageRun<'_>,
    config: &Config,
    source: &StoreSource,
    spec: &ModelSpec,
    summary: &ModelSummary,
    opts: &TrainOptions,
    device: &str,
) -> Result<(), TrainError> {
    let t = run.tracker();
    let shape = source.sample_shape();
    let class_weights = opts
        .class_weights
        .as_ref()
        .map(|w| {
            w.iter()
                .map(|x| format!("{x:.4}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "none".into());
    t.log_params(
        run.run_id(),
        &[
            ("device", device.to_owned()),
            ("input_shape", shape.to_string()),
            ("input_strategy", format!("{:?}", spec.strategy)),
            ("parameters", summary.total_params().to_string()),
            ("flops_per_sample", summary.total_flops().to_string()),
            ("batch_size", opts.batch_size.to_string()),
            ("epochs", opts.epochs.to_string()),
            ("learning_rate", opts.learning_rate.to_string()),
            ("seed", opts.seed.to_string()),
            ("class_weights", class_weights),
            ("samples_train", source.len(Split::Train).to_string()),
            (
                "samples_validation",
                source.len(Split::Validation).to_string(),
            ),
        ],
    )?;
    // Every hyperparameter as a flat dotted param, so runs compare and search in the UI;
    // `optimizer.learning_rate` is the rate this run starts from (a fine-tune's own).
    t.log_params(
        run.run_id(),
        &[
            config.hyperparameters(),
            optimizer_params(opts.learning_rate),
        ]
        .concat(),
    )?;
    t.log_inputs(
        run.run_id(),
        &[DatasetInput::new(source.manifest().dataset(), "train")],
        &[],
    )?;
    t.log_text(run.run_id(), &summary.to_string(), "model_summary.txt")?;
    Ok(())
}

/// Loss and accuracy curves, training and validation, as PNGs in `dir`.
fn curves(dir: &Path, history: &[EpochMetrics]) -> Result<Vec<PathBuf>, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Output {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut written = Vec::new();
    for (metric, label) in [("loss", "weighted cross-entropy"), ("accuracy", "accuracy")] {
        let series = |name: &str| -> Vec<(f64, f64)> {
            history
                .iter()
                .filter_map(|m| m.get(name).map(|v| (f64::from(m.epoch), v)))
                .collect()
        };
        let (train, val) = (series(metric), series(&format!("val_{metric}")));
        let path = dir.join(format!("training_{metric}.png"));
        let title = format!("training curve: {metric}");
        plot::line_chart(
            &path,
            Chart {
                title: &title,
                x_label: "epoch",
                y_label: label,
            },
            &[
                Line {
                    name: "train",
                    points: &train,
                },
                Line {
                    name: "validation",
                    points: &val,
                },
            ],
        )
        .map_err(|e| TrainError::Output {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        written.push(path);
    }
    Ok(written)
}
