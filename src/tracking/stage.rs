//! Stage integration: each pipeline stage runs in its own experiment, named by the run-name
//! pattern, tagged with the hashes it depends on and the runs it consumed, with the
//! effective (redacted) configuration attached as `training_config.yaml`.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::error::{Result, TrackingError};
use super::mlmodel::ModelCard;
use super::tracker::Tracker;
use super::types::*;
use super::{CONFIG_ARTIFACT, DIAGNOSTICS_DIR, MODEL_DIR, PLOTS_DIR, TrackingSettings};

/// Tag: which stage produced the run.
pub const TAG_STAGE: &str = "binance_ml.stage";
/// Tag: hash of the configuration sections the stage depends on.
pub const TAG_CONFIG_HASH: &str = "binance_ml.config_hash";
/// Tag: hash of the dataset the run consumed.
pub const TAG_DATASET_HASH: &str = "binance_ml.dataset_hash";
/// Tag prefix: `binance_ml.input_run.<stage>` = the run id consumed from that stage.
pub const TAG_INPUT_RUN_PREFIX: &str = "binance_ml.input_run.";
/// Tag: the asset (e.g. BTCUSDT).
pub const TAG_ASSET: &str = "binance_ml.asset";
/// Tag: the model name (e.g. cnn_lstm).
pub const TAG_MODEL: &str = "binance_ml.model";

/// Format of `{timestamp}` in run names (UTC).
pub const RUN_TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";

/// The pipeline stages that log to MLflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Recording / loading order-book snapshots.
    DataCollection,
    /// Alignment, features, labels, splits.
    Preprocessing,
    /// Spread statistics, gaps, class balance.
    DataDiagnostics,
    /// Model training.
    ModelTraining,
    /// Hyperparameter search (a study run with one nested run per trial).
    HyperparameterOptimization,
    /// Evaluation on held-out periods.
    ModelEvaluation,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::DataCollection,
        Stage::Preprocessing,
        Stage::DataDiagnostics,
        Stage::HyperparameterOptimization,
        Stage::ModelTraining,
        Stage::ModelEvaluation,
    ];

    /// The stage's key in tags and in `mlflow.experiments` (`data_collection`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Stage::DataCollection => "data_collection",
            Stage::Preprocessing => "preprocessing",
            Stage::DataDiagnostics => "diagnostics",
            Stage::ModelTraining => "training",
            Stage::HyperparameterOptimization => "hyperparameter_optimization",
            Stage::ModelEvaluation => "evaluation",
        }
    }
}

impl crate::config::StageExperiments {
    /// The experiment name of `stage`.
    pub fn name(&self, stage: Stage) -> &str {
        match stage {
            Stage::DataCollection => &self.data_collection,
            Stage::Preprocessing => &self.preprocessing,
            Stage::DataDiagnostics => &self.diagnostics,
            Stage::ModelTraining => &self.training,
            Stage::HyperparameterOptimization => &self.hyperparameter_optimization,
            Stage::ModelEvaluation => &self.evaluation,
        }
    }
}

/// Replaces `{name}` placeholders from `values`; any other `{...}` is an error naming the
/// pattern and the allowed placeholders.
fn fill(pattern: &str, what: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).ok_or_else(|| {
            TrackingError::InvalidInput(format!("{what} {pattern:?} has an unclosed '{{'"))
        })?;
        let name = &rest[start + 1..end];
        let value = values.iter().find(|(k, _)| *k == name).ok_or_else(|| {
            let allowed: Vec<String> = values.iter().map(|(k, _)| format!("{{{k}}}")).collect();
            TrackingError::InvalidInput(format!(
                "{what} {pattern:?} uses unknown placeholder {{{name}}}; allowed: {}",
                allowed.join(", ")
            ))
        })?;
        out.push_str(value.1);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies `mlflow.run_naming.pattern` (`{asset}`, `{model}`, `{timestamp}` =
/// `%Y%m%d-%H%M%S` UTC).
pub fn format_run_name(
    pattern: &str,
    asset: &str,
    model: &str,
    at: DateTime<Utc>,
) -> Result<String> {
    let ts = at.format(RUN_TIMESTAMP_FORMAT).to_string();
    fill(
        pattern,
        "mlflow.run_naming.pattern",
        &[("asset", asset), ("model", model), ("timestamp", &ts)],
    )
}

/// Applies `mlflow.model_registry.model_name_pattern` (`{asset}`, `{model}`).
pub fn format_model_name(pattern: &str, asset: &str, model: &str) -> Result<String> {
    fill(
        pattern,
        "mlflow.model_registry.model_name_pattern",
        &[("asset", asset), ("model", model)],
    )
}

/// What a stage run is about.
#[derive(Debug, Clone, Default)]
pub struct StageRunSpec<'a> {
    /// The stage (selects the experiment).
    pub stage: Option<Stage>,
    /// Asset, e.g. `BTCUSDT`.
    pub asset: &'a str,
    /// Model name, e.g. `cnn_lstm` (data stages may use `data`).
    pub model: &'a str,
    /// Hash of the config sections the stage depends on.
    pub config_hash: &'a str,
    /// Hash of the consumed dataset, if any.
    pub dataset_hash: Option<&'a str>,
    /// Runs consumed from earlier stages.
    pub inputs: &'a [(Stage, &'a str)],
    /// The effective configuration as YAML, secrets already redacted.
    pub config_yaml: &'a str,
    /// Parent run (nesting), if any.
    pub parent_run_id: Option<&'a str>,
}

/// An open stage run; ends FAILED if dropped without [`StageRun::finish`].
#[derive(Debug)]
pub struct StageRun<'t> {
    tracker: &'t Tracker,
    info: RunInfo,
    ended: bool,
    stage: Stage,
    config_hash: String,
}

/// A stage run this process finished: where it was tracked, its stage and config hash.
type FinishedKey = (String, Stage, String);

/// Stage runs finished by this process, so that the next stage of the same command finds its
/// input run without asking the server — which a journaling command cannot (lineage tags
/// then carry the client id, which `tracking sync` resolves).
static FINISHED: std::sync::Mutex<Vec<(FinishedKey, String)>> = std::sync::Mutex::new(Vec::new());

fn finished_runs() -> std::sync::MutexGuard<'static, Vec<(FinishedKey, String)>> {
    FINISHED.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'t> StageRun<'t> {
    /// Opens a run in the stage's experiment (created if missing), named by the pattern,
    /// tagged with stage/asset/model/hashes/inputs, with `training_config.yaml` attached.
    pub fn start(
        tracker: &'t Tracker,
        settings: &TrackingSettings,
        spec: &StageRunSpec<'_>,
    ) -> Result<Self> {
        let stage = spec
            .stage
            .ok_or_else(|| TrackingError::InvalidInput("a stage run needs a stage".into()))?;
        let experiment_id = tracker.experiment_id(settings.experiments.name(stage))?;
        let name = format_run_name(
            &settings.run_name_pattern,
            spec.asset,
            spec.model,
            Utc::now(),
        )?;
        let mut tags = vec![
            Tag::new(TAG_STAGE, stage.key()),
            Tag::new(TAG_ASSET, spec.asset),
            Tag::new(TAG_MODEL, spec.model),
            Tag::new(TAG_CONFIG_HASH, spec.config_hash),
        ];
        if let Some(h) = spec.dataset_hash {
            tags.push(Tag::new(TAG_DATASET_HASH, h));
        }
        for (s, run_id) in spec.inputs {
            tags.push(Tag::new(
                format!("{TAG_INPUT_RUN_PREFIX}{}", s.key()),
                *run_id,
            ));
        }
        let info = tracker.start_run(&experiment_id, &name, spec.parent_run_id, &tags)?;
        let run = StageRun {
            tracker,
            info,
            ended: false,
            stage,
            config_hash: spec.config_hash.to_string(),
        };
        tracker.log_text(run.run_id(), spec.config_yaml, CONFIG_ARTIFACT)?;
        Ok(run)
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.info.run_id
    }

    /// The run's metadata as created.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// The tracker this run logs through.
    pub fn tracker(&self) -> &'t Tracker {
        self.tracker
    }

    /// Uploads a plot (PNG, ...) under `plots/`.
    pub fn log_plot(&self, file: &Path) -> Result<()> {
        self.tracker.log_artifact(self.run_id(), file, PLOTS_DIR)
    }

    /// Uploads a diagnostics file under `diagnostics/`.
    pub fn log_diagnostic(&self, file: &Path) -> Result<()> {
        self.tracker
            .log_artifact(self.run_id(), file, DIAGNOSTICS_DIR)
    }

    /// Logs the model in `model_dir` as run artifacts under `model/` (an MLflow model folder:
    /// `card` is written into it as `MLmodel`), and with a server also as an MLflow 3 logged
    /// model, registered under `model_name_pattern` when `register_model` is on (returns the
    /// new version).
    pub fn log_model(
        &self,
        settings: &TrackingSettings,
        asset: &str,
        model: &str,
        card: &ModelCard,
        model_dir: &Path,
        params: &[Param],
    ) -> Result<Option<ModelVersion>> {
        // Run artifacts everywhere, so `predict --run-id` reads the same files from a server
        // and from the local store; with a server also a logged model in the registry.
        card.write(model_dir, self.run_id())?;
        self.tracker
            .log_artifacts(self.run_id(), model_dir, MODEL_DIR)?;
        if !self.tracker.supports_models() {
            return Ok(None);
        }
        let name = format_model_name(&settings.model_name_pattern, asset, model)?;
        let logged = self.tracker.log_model(
            self.run_id(),
            &self.info.experiment_id,
            &name,
            card,
            model_dir,
            params,
        )?;
        if !settings.register_model {
            return Ok(None);
        }
        self.tracker
            .register_model(&name, &logged.model_id, self.run_id())
            .map(Some)
    }

    /// Ends the run FINISHED.
    pub fn finish(mut self) -> Result<()> {
        self.ended = true;
        self.tracker.end_run(self.run_id(), RunStatus::Finished)?;
        let key = (
            self.tracker.describe(),
            self.stage,
            self.config_hash.clone(),
        );
        let mut finished = finished_runs();
        finished.retain(|(k, _)| *k != key);
        finished.push((key, self.info.run_id.clone()));
        Ok(())
    }

    /// Ends the run FAILED.
    pub fn fail(mut self) -> Result<()> {
        self.ended = true;
        self.tracker.end_run(self.run_id(), RunStatus::Failed)
    }
}

impl Drop for StageRun<'_> {
    // A stage that returns early with `?` or panics must not leave a RUNNING run behind.
    fn drop(&mut self) {
        if !self.ended
            && let Err(e) = self.tracker.end_run(&self.info.run_id, RunStatus::Failed)
        {
            tracing::warn!(run_id = %self.info.run_id, error = %e, "could not mark the run FAILED");
        }
    }
}

/// The id of the run of `stage` (with `config_hash`) that a stage consumes: the one this
/// process finished last, else the most recent FINISHED one in the store.
pub fn consumed_run_id(
    tracker: &Tracker,
    settings: &TrackingSettings,
    stage: Stage,
    config_hash: &str,
) -> Result<Option<String>> {
    let key = (tracker.describe(), stage, config_hash.to_string());
    if let Some((_, id)) = finished_runs().iter().rev().find(|(k, _)| *k == key) {
        return Ok(Some(id.clone()));
    }
    Ok(latest_successful_run(tracker, settings, stage, config_hash)?.map(|r| r.info.run_id))
}

/// The most recent FINISHED run of `stage` whose config hash is `config_hash`, if any.
pub fn latest_successful_run(
    tracker: &Tracker,
    settings: &TrackingSettings,
    stage: Stage,
    config_hash: &str,
) -> Result<Option<Run>> {
    if config_hash.contains(['\'', '"', '`']) {
        return Err(TrackingError::InvalidInput(format!(
            "config hash {config_hash:?} must not contain quotes"
        )));
    }
    let Some(exp) = tracker
        .store()
        .experiment_by_name(settings.experiments.name(stage))?
    else {
        return Ok(None);
    };
    let page = tracker.search_runs_page(&SearchRuns {
        experiment_ids: vec![exp.experiment_id],
        filter: format!(
            "tags.`{TAG_CONFIG_HASH}` = '{config_hash}' and attributes.status = 'FINISHED'"
        ),
        order_by: vec!["attributes.start_time DESC".into()],
        max_results: 1,
        page_token: None,
    })?;
    Ok(page.runs.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn run_names_follow_the_pattern_exactly() {
        let at = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap();
        assert_eq!(
            format_run_name("{asset}_{model}_{timestamp}", "BTCUSDT", "cnn_lstm", at).unwrap(),
            "BTCUSDT_cnn_lstm_20260304-050607"
        );
        let err = format_run_name("{asset}_{date}", "A", "m", at).unwrap_err();
        assert!(err.to_string().contains("{date}"), "{err}");
        assert!(format_run_name("{asset", "A", "m", at).is_err());
        assert_eq!(
            format_model_name("{asset}_predictor", "ETHUSDT", "m").unwrap(),
            "ETHUSDT_predictor"
        );
        assert!(format_model_name("{timestamp}", "A", "m").is_err());
    }

    #[test]
    fn every_stage_has_a_distinct_default_experiment() {
        let e = crate::config::StageExperiments::default();
        let names: std::collections::HashSet<&str> =
            Stage::ALL.iter().map(|s| e.name(*s)).collect();
        assert_eq!(names.len(), 6);
        assert_eq!(e.name(Stage::ModelTraining), "binance-model-training");
    }
}
