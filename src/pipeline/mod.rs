//! The pipeline: each stage inside its own MLflow run (lineage tags, redacted configuration),
//! and `run`, the stages in order under one parent run.

pub mod error;
pub mod finetune;
pub mod hpo;
pub mod lock;
pub mod replay;

use serde::Serialize;

pub use error::{Error, Result};

use crate::config::LoadedConfig;
use crate::data::fetch::{self, FetchSummary};
use crate::diagnostics::stage::{DiagnoseOutput, diagnose};
use crate::evaluate::stage::{EvaluateRequest, EvaluateSummary, evaluate};
use crate::predict::ModelRef;
use crate::preprocess::stage::{PreprocessSummary, preprocess};
use crate::tracking::{
    self, DatasetInput, Metric, Stage, StageRun, StageRunSpec, Tracker, TrackingSettings,
};
use crate::train::Split;
use crate::train::stage::{MODEL_NAME, TrainRequest, TrainSummary, train};

/// Runs stages, each in its own MLflow run, optionally nested under a parent run.
#[derive(Debug, Clone, Copy)]
pub struct Pipeline<'a> {
    loaded: &'a LoadedConfig,
    parent: Option<&'a str>,
}

impl<'a> Pipeline<'a> {
    /// Stages run alone (no parent run).
    pub fn new(loaded: &'a LoadedConfig) -> Self {
        Self {
            loaded,
            parent: None,
        }
    }

    /// `fetch`: the source into the shard cache (logged to the data-collection experiment).
    pub fn fetch(&self, force: bool) -> Result<FetchSummary> {
        tracked(
            self.loaded,
            self.parent,
            Stage::DataCollection,
            "fetch",
            &[],
            |run| {
                let summary = fetch::fetch(&self.loaded.config, force)?;
                log_fetch(run, &summary, &self.loaded.config)?;
                Ok(summary)
            },
        )
    }

    /// `preprocess`: the shard cache into the preprocessed store.
    pub fn preprocess(&self, force: bool) -> Result<PreprocessSummary> {
        tracked(
            self.loaded,
            self.parent,
            Stage::Preprocessing,
            "preprocess",
            &[Stage::DataCollection],
            |run| {
                let summary = preprocess(&self.loaded.config, force)?;
                log_preprocess(run, &summary)?;
                Ok(summary)
            },
        )
    }

    /// `diagnose`: the data checks; an error (exit 3) when they fail under `fail_on_invalid`.
    pub fn diagnose(&self) -> Result<DiagnoseOutput> {
        let out = tracked(
            self.loaded,
            self.parent,
            Stage::DataDiagnostics,
            "diagnose",
            &[Stage::Preprocessing],
            |run| {
                let out = diagnose(&self.loaded.config)?;
                log_diagnose(run, &out)?;
                Ok(out)
            },
        )?;
        if out.report.failed && self.loaded.config.data.validation.fail_on_invalid {
            return Err(Error::DiagnosticsFailed(out.report.warnings));
        }
        Ok(out)
    }

    /// `train`: the configured model on the preprocessed store; with
    /// `hyperparameter_optimization.enabled` (and not fine-tuning) a search first, whose best
    /// parameters the final training uses.
    pub fn train(&self, mut req: TrainRequest) -> Result<TrainSummary> {
        let searched;
        let loaded = if self.loaded.config.hyperparameter_optimization.enabled && req.init.is_none()
        {
            let (best, study) = hpo::search(self.loaded, self.parent)?;
            req.tags
                .push(("binance_ml.hpo_study_run".into(), study.run_id.clone()));
            req.tags.push((
                "binance_ml.hpo_best_trial".into(),
                study.best_trial.to_string(),
            ));
            searched = best;
            &searched
        } else {
            self.loaded
        };
        tracked(
            loaded,
            self.parent,
            Stage::ModelTraining,
            MODEL_NAME,
            &[Stage::Preprocessing, Stage::DataDiagnostics],
            |run| Ok(train(loaded, &req, run)?),
        )
    }

    /// `evaluate`: a trained model on the held-out split.
    pub fn evaluate(&self, req: &EvaluateRequest) -> Result<EvaluateSummary> {
        tracked(
            self.loaded,
            self.parent,
            Stage::ModelEvaluation,
            MODEL_NAME,
            &[Stage::ModelTraining],
            |run| Ok(evaluate(self.loaded, req, run)?),
        )
    }
}

/// Pipeline stages in order, for `run --from/--until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Step {
    /// Data from the source into the shard cache.
    Fetch,
    /// Features, labels, splits.
    Preprocess,
    /// Data checks.
    Diagnose,
    /// Model training (with HPO when enabled).
    Train,
    /// Metrics and reports.
    Evaluate,
}

/// What `run` produced, stage by stage (absent: the stage was outside `--from`/`--until`).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// The parent MLflow run.
    pub run_id: String,
    /// `fetch`.
    pub fetch: Option<FetchSummary>,
    /// `preprocess`.
    pub preprocess: Option<PreprocessSummary>,
    /// `diagnose` (the report).
    pub diagnose: Option<DiagnoseOutput>,
    /// `train`.
    pub train: Option<TrainSummary>,
    /// `evaluate`.
    pub evaluate: Option<EvaluateSummary>,
}

/// `run`: the stages from `from` to `until` in order, under one parent run in the training
/// experiment. Cached outputs (shard cache, preprocessed store) are reused when their inputs
/// did not change; stages before `from` must have run before.
pub fn run(loaded: &LoadedConfig, from: Step, until: Step) -> Result<RunSummary> {
    let _span = tracing::info_span!("run").entered();
    let want = |s: Step| from <= s && s <= until;
    tracked(
        loaded,
        None,
        Stage::ModelTraining,
        "pipeline",
        &[],
        |parent| {
            let p = Pipeline {
                loaded,
                parent: Some(parent.run_id()),
            };
            let mut out = RunSummary {
                run_id: parent.run_id().to_owned(),
                fetch: None,
                preprocess: None,
                diagnose: None,
                train: None,
                evaluate: None,
            };
            if want(Step::Fetch) {
                out.fetch = Some(p.fetch(false)?);
            }
            if want(Step::Preprocess) {
                out.preprocess = Some(p.preprocess(false)?);
            }
            if want(Step::Diagnose) {
                out.diagnose = Some(p.diagnose()?);
            }
            if want(Step::Train) {
                out.train = Some(p.train(TrainRequest {
                    progress: true,
                    ..TrainRequest::default()
                })?);
            }
            if want(Step::Evaluate) {
                let model = out
                    .train
                    .as_ref()
                    .map_or(ModelRef::Latest, |t| ModelRef::Run(t.run_id.clone()));
                out.evaluate = Some(p.evaluate(&EvaluateRequest {
                    model,
                    split: Split::Test,
                    range: None,
                    store: None,
                    save_temperature: true,
                })?);
            }
            let t = parent.tracker();
            let mut tags = Vec::new();
            if let Some(tr) = &out.train {
                tags.push(("binance_ml.train_run", tr.run_id.clone()));
            }
            if let Some(ev) = &out.evaluate {
                tags.push(("binance_ml.evaluate_run", ev.run_id.clone()));
                t.log_metrics(
                    parent.run_id(),
                    &metrics(&[
                        ("test_accuracy".into(), ev.scores.accuracy),
                        ("test_macro_f1".into(), ev.scores.macro_f1),
                        ("ece_calibrated".into(), ev.ece[1]),
                    ]),
                )?;
            }
            t.set_tags(parent.run_id(), &tags)?;
            Ok(out)
        },
    )
}

/// Runs `body` inside an MLflow run of `stage`'s experiment, tagged with the config hash and
/// the latest successful runs of the `consumed` stages for the same configuration (lineage),
/// and holding the redacted configuration; the run ends FINISHED on success, FAILED on error.
pub(crate) fn tracked<T>(
    loaded: &LoadedConfig,
    parent: Option<&str>,
    stage: Stage,
    model: &str,
    consumed: &[Stage],
    body: impl FnOnce(&StageRun<'_>) -> Result<T>,
) -> Result<T> {
    if let Some(signal) = crate::interrupt::requested() {
        return Err(Error::Interrupted {
            signal,
            stage: stage.key(),
        });
    }
    let settings = TrackingSettings::from_config(&loaded.config);
    let tracker = Tracker::open(&settings)?;
    let config_hash = loaded.config_hash();
    let mut input_ids = Vec::new();
    for s in consumed {
        match tracking::consumed_run_id(&tracker, &settings, *s, &config_hash) {
            Ok(Some(id)) => input_ids.push((*s, id)),
            Ok(None) => {}
            // Lineage is worth a warning, not a failed stage.
            Err(e) => tracing::warn!(
                "cannot look up the {} run this stage consumed: {e}",
                s.key()
            ),
        }
    }
    let inputs: Vec<(Stage, &str)> = input_ids.iter().map(|(s, id)| (*s, id.as_str())).collect();
    let yaml = loaded.redacted_yaml();
    let asset = loaded.config.data.asset_pairs.target_asset.to_string();
    let spec = StageRunSpec {
        stage: Some(stage),
        asset: &asset,
        model,
        config_hash: &config_hash,
        config_yaml: &yaml,
        inputs: &inputs,
        parent_run_id: parent,
        ..StageRunSpec::default()
    };
    let run = StageRun::start(&tracker, &settings, &spec)?;
    tracing::info!(run_id = run.run_id(), tracking = %tracker.describe(), "MLflow run started");
    match body(&run) {
        Ok(v) => {
            run.finish()?;
            Ok(v)
        }
        Err(e) => {
            // The stage's own error is the one to report; a failure to mark the run is logged.
            if let Err(t) = run.fail() {
                tracing::warn!("could not mark the MLflow run FAILED: {t}");
            }
            Err(e)
        }
    }
}

fn metrics(pairs: &[(String, f64)]) -> Vec<Metric> {
    let now = chrono::Utc::now().timestamp_millis();
    pairs
        .iter()
        .map(|(k, v)| Metric::new(k, *v, now, 0))
        .collect()
}

fn log_fetch(run: &StageRun<'_>, s: &FetchSummary, config: &crate::config::Config) -> Result<()> {
    let t = run.tracker();
    t.set_tags(run.run_id(), &[("binance_ml.dataset_hash", s.key.as_str())])?;
    t.log_inputs(
        run.run_id(),
        &[DatasetInput::new(s.dataset(config), "source")],
        &[],
    )?;
    t.log_params(
        run.run_id(),
        &[
            ("cache_dir", s.cache_dir.display().to_string()),
            ("shards", s.shards.to_string()),
        ],
    )?;
    let mut m: Vec<(String, f64)> = s
        .snapshots
        .iter()
        .map(|(sym, n)| (format!("snapshots_{sym}"), *n as f64))
        .collect();
    m.push(("shards_fetched".into(), s.shards_fetched as f64));
    m.push(("shards_reused".into(), s.shards_reused as f64));
    m.push(("rows_dropped".into(), s.quality.rows_dropped() as f64));
    m.push((
        "snapshots_dropped".into(),
        s.quality.snapshots_dropped() as f64,
    ));
    t.log_metrics(run.run_id(), &metrics(&m))?;
    Ok(())
}

pub(crate) fn log_preprocess(run: &StageRun<'_>, s: &PreprocessSummary) -> Result<()> {
    let t = run.tracker();
    let key = s
        .store_dir
        .file_name()
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default();
    t.set_tags(run.run_id(), &[("binance_ml.dataset_hash", key.as_str())])?;
    t.log_params(
        run.run_id(),
        &[
            ("store_dir", s.store_dir.display().to_string()),
            ("columns", s.columns.to_string()),
            ("steps", s.steps.to_string()),
        ],
    )?;
    let m = [("train", 0), ("validation", 1), ("test", 2)]
        .map(|(n, i)| (format!("samples_{n}"), s.samples[i] as f64));
    t.log_metrics(run.run_id(), &metrics(&m))?;
    t.log_artifact(
        run.run_id(),
        &s.store_dir.join("manifest.json"),
        "preprocessing",
    )?;
    Ok(())
}

fn log_diagnose(run: &StageRun<'_>, out: &DiagnoseOutput) -> Result<()> {
    let t = run.tracker();
    let r = &out.report;
    let mut m = Vec::new();
    for (asset, st) in &r.spreads {
        m.push((format!("{asset}_spread_median_bps"), st.median_bps));
        m.push((format!("{asset}_spread_mean_bps"), st.mean_bps));
        m.push((format!("{asset}_spread_p99_bps"), st.p99_bps));
        m.push((format!("{asset}_spread_share_zero"), st.share_zero));
        m.push((format!("{asset}_spread_share_wide"), st.share_wide));
    }
    let max_psi = r
        .psi
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    m.push(("psi_max".into(), max_psi));
    m.push(("warnings".into(), r.warnings.len() as f64));
    t.log_metrics(run.run_id(), &metrics(&m))?;
    t.set_tags(
        run.run_id(),
        &[(
            "binance_ml.diagnostics_failed",
            if r.failed { "true" } else { "false" },
        )],
    )?;
    for file in &out.artifacts {
        run.log_diagnostic(file)?;
    }
    Ok(())
}
