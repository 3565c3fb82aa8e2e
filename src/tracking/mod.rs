//! MLflow tracking: one interface ([`Tracker`]) over three stores.
//!
//! - [`rest::RestStore`]: an MLflow server over HTTP(S) (`http://`, `https://`).
//! - [`file_store::FileStore`]: MLflow's file-store layout on disk (`file:` URIs; the embedded
//!   default `file:<workdir>/mlruns`), readable with
//!   `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri <workdir>/mlruns`.
//! - [`spool::SpoolStore`]: the REST store plus a local journal; used for every `http(s)`
//!   URI so a run survives the server going away, and replayed later by [`spool::sync`].
//!
//! The [`Tracker`] applies MLflow's limits before anything reaches a store: keys are
//! sanitised ([`limits::sanitize_key`]), batches are chunked, params longer than 6000 chars
//! are stored as artifacts `params/<key>.txt` with a pointer as the param value.

pub mod error;
pub mod file_store;
mod http;
pub mod limits;
pub mod mlmodel;
pub mod open_runs;
pub mod rest;
pub mod spool;
pub mod stage;
mod tracker;
pub mod types;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Result, TrackingError};
pub use file_store::file_uri;
pub use http::{Credentials, RetryPolicy, Secret};
pub use limits::Batch;
pub use mlmodel::{MLMODEL_FILE, ModelCard};
pub use spool::{SyncReport, sync};
pub use stage::{
    Stage, StageRun, StageRunSpec, consumed_run_id, format_model_name, latest_successful_run,
};
pub use tracker::{Tracker, fail_dead_runs};
pub use types::*;

/// Artifact folder for training plots (loss/accuracy curves, confusion matrix, ...).
pub const PLOTS_DIR: &str = "plots";
/// Artifact folder for data diagnostics (spread stats, gap reports, sampled CSVs, ...).
pub const DIAGNOSTICS_DIR: &str = "diagnostics";
/// Artifact folder for model files when logged as run artifacts.
pub const MODEL_DIR: &str = "model";
/// Artifact name of the effective (redacted) configuration, on every stage run.
pub const CONFIG_ARTIFACT: &str = "training_config.yaml";
/// The registry alias of the model in production; the first registered version takes it.
pub const CHAMPION: &str = "champion";

/// Everything the tracking module needs from the configuration; the CLI builds it from
/// `mlflow.*` and the environment.
#[derive(Debug, Clone)]
pub struct TrackingSettings {
    /// `mlflow.tracking_uri`: `http(s)://...`, `file:<dir>`, or empty for the local store
    /// `file:<workdir>/mlruns`.
    pub tracking_uri: String,
    /// The work directory (holds `mlruns/` and the default spool).
    pub workdir: PathBuf,
    /// `--offline`: never contact the server; journal everything for `tracking sync`.
    pub offline: bool,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retries after the first attempt on connection errors, 429 and 5xx.
    pub max_retries: u32,
    /// First backoff wait; doubles per retry, capped at 10 s.
    pub retry_base: Duration,
    /// Where the journal lives; empty means `<workdir>/mlflow-spool`.
    pub spool_dir: PathBuf,
    /// Experiment name per stage.
    pub experiments: crate::config::StageExperiments,
    /// `mlflow.run_naming.pattern`; placeholders `{asset}`, `{model}`, `{timestamp}`.
    pub run_name_pattern: String,
    /// `mlflow.model_registry.model_name_pattern`; placeholders `{asset}`, `{model}`.
    pub model_name_pattern: String,
    /// `mlflow.model_registry.register_model`: register logged models as versions.
    pub register_model: bool,
    /// Basic-auth credentials; `None` reads MLFLOW_TRACKING_USERNAME/PASSWORD.
    pub credentials: Option<Credentials>,
}

impl TrackingSettings {
    /// Settings from the validated configuration (`mlflow.*`, `workdir`).
    pub fn from_config(c: &crate::config::Config) -> Self {
        let m = &c.mlflow;
        TrackingSettings {
            tracking_uri: m.tracking_uri.clone(),
            workdir: c.workdir.clone(),
            offline: m.client.offline,
            timeout: Duration::from_secs(m.client.timeout_seconds),
            max_retries: m.client.max_retries,
            experiments: m.experiments.clone(),
            run_name_pattern: m.run_naming.pattern.clone(),
            model_name_pattern: m.model_registry.model_name_pattern.clone(),
            register_model: m.model_registry.register_model,
            ..TrackingSettings::default()
        }
    }
}

impl Default for TrackingSettings {
    fn default() -> Self {
        TrackingSettings {
            tracking_uri: String::new(),
            workdir: PathBuf::from("binance-ml-work"),
            offline: false,
            timeout: Duration::from_secs(30),
            max_retries: 4,
            retry_base: Duration::from_millis(500),
            spool_dir: PathBuf::new(),
            experiments: crate::config::StageExperiments::default(),
            run_name_pattern: "{asset}_{model}_{timestamp}".into(),
            model_name_pattern: "{asset}_predictor".into(),
            register_model: true,
            credentials: None,
        }
    }
}

impl TrackingSettings {
    /// A plain REST store for `uri` from these settings (no spool); `sync` replays through it.
    pub(crate) fn rest_store(&self, uri: &str) -> Result<rest::RestStore> {
        rest::RestStore::new(
            uri,
            self.credentials_or_env(),
            self.timeout,
            self.retry_policy(),
        )
    }

    /// The spool directory actually used.
    pub fn effective_spool_dir(&self) -> PathBuf {
        if self.spool_dir.as_os_str().is_empty() {
            self.workdir.join("mlflow-spool")
        } else {
            self.spool_dir.clone()
        }
    }

    /// The retry policy from these settings.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base: self.retry_base,
            cap: Duration::from_secs(10),
        }
    }

    pub(crate) fn credentials_or_env(&self) -> Option<Credentials> {
        self.credentials.clone().or_else(Credentials::from_env)
    }
}

/// Which backend a tracking URI selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// An MLflow server.
    Rest(String),
    /// A file-store root directory.
    File(PathBuf),
}

/// Resolves `mlflow.tracking_uri` (empty = `<workdir>/mlruns`).
pub fn store_kind(uri: &str, workdir: &Path) -> Result<StoreKind> {
    let uri = uri.trim();
    if uri.is_empty() {
        return Ok(StoreKind::File(workdir.join("mlruns")));
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(StoreKind::Rest(uri.to_string()));
    }
    if let Some(rest) = uri.strip_prefix("file:") {
        // file:///abs, file:/abs and file:rel all name a directory.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        return Ok(StoreKind::File(PathBuf::from(path)));
    }
    Err(TrackingError::InvalidInput(format!(
        "mlflow.tracking_uri {:?} is not supported: use http(s)://host:port, file:<dir>, or \
         leave it empty for the local store under the work directory",
        http::split_userinfo(uri).0
    )))
}

/// The operations every store implements. Inputs are already sanitised and within MLflow's
/// per-request limits (the [`Tracker`] takes care of that).
pub trait Store: Send + Sync {
    /// Where this store writes, for messages (never with credentials).
    fn describe(&self) -> String;
    /// Looks an experiment up by name (active or deleted).
    fn experiment_by_name(&self, name: &str) -> Result<Option<Experiment>>;
    /// Creates an experiment, returning its id.
    fn create_experiment(&self, name: &str, tags: &[Tag]) -> Result<String>;
    /// Sets a tag on an experiment.
    fn set_experiment_tag(&self, experiment_id: &str, tag: &Tag) -> Result<()>;
    /// Creates a run.
    fn create_run(&self, req: &CreateRun) -> Result<RunInfo>;
    /// Sets status and end time.
    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()>;
    /// Reads a run.
    fn get_run(&self, run_id: &str) -> Result<Run>;
    /// One page of a run search.
    fn search_runs(&self, req: &SearchRuns) -> Result<RunsPage>;
    /// One `log-batch` request's worth of entries.
    fn log_batch(&self, run_id: &str, batch: &Batch) -> Result<()>;
    /// Every point of one metric.
    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>>;
    /// Uploads one file to `artifact_path` (relative, including the file name).
    fn upload_artifact(&self, run_id: &str, local: &Path, artifact_path: &str) -> Result<()>;
    /// Lists one artifact folder ("" = root); paths are relative to the artifact root.
    fn list_artifacts(&self, run_id: &str, path: &str) -> Result<Vec<FileInfo>>;
    /// Downloads one artifact file to `dest`.
    fn download_artifact(&self, run_id: &str, artifact_path: &str, dest: &Path) -> Result<()>;
    /// Creates an MLflow 3 logged model (status PENDING).
    fn create_logged_model(&self, req: &CreateLoggedModel) -> Result<LoggedModel>;
    /// Uploads one file into a logged model's artifacts.
    fn upload_model_file(&self, model_id: &str, local: &Path, path: &str) -> Result<()>;
    /// Marks a logged model READY (or UPLOAD_FAILED).
    fn finalize_logged_model(&self, model_id: &str, ready: bool) -> Result<()>;
    /// Records the model as an output of the run (`runs/outputs`).
    fn link_model_output(&self, run_id: &str, model_id: &str, step: i64) -> Result<()>;
    /// The logged models the run lists as its outputs.
    fn models_of_run(&self, run_id: &str) -> Result<Vec<String>>;
    /// Records datasets and logged models as inputs of the run (`runs/log-inputs`).
    fn log_inputs(&self, run_id: &str, datasets: &[DatasetInput], models: &[String]) -> Result<()>;
    /// Searches logged models.
    fn search_logged_models(
        &self,
        experiment_ids: &[String],
        filter: &str,
    ) -> Result<Vec<LoggedModel>>;
    /// Creates the registered model unless it exists.
    fn ensure_registered_model(&self, name: &str) -> Result<()>;
    /// Registers `models:/<model_id>` as a new version.
    fn create_model_version(
        &self,
        name: &str,
        model_id: &str,
        run_id: &str,
    ) -> Result<ModelVersion>;
    /// Points `alias` at `version`.
    fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()>;
    /// The version `alias` points at.
    fn version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion>;
    /// Version `version` of the registered model `name`.
    fn model_version(&self, name: &str, version: &str) -> Result<ModelVersion>;
    /// Whether logged models and the registry work here (not on the local file store).
    fn supports_models(&self) -> bool;
    /// Whether writes go to a journal now (ids created now are client ids).
    fn journaling(&self) -> bool {
        false
    }
}
