//! MLflow entities as they travel over the REST API (field names as MLflow spells them).
//!
//! MLflow omits empty lists and unset fields from its answers, so every answer type is
//! `#[serde(default)]`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key/value tag on a run, experiment or logged model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Tag {
    /// Tag key.
    pub key: String,
    /// Tag value.
    pub value: String,
}

impl Tag {
    /// A tag from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Tag carrying the client-generated key of a run or logged model: a create whose answer was
/// lost is found by it instead of repeated (online and when a journal is replayed), and a
/// journaled run's provisional id is this key.
pub const TAG_CLIENT_ID: &str = "binance_ml.client_id";

/// The client key in `tags` ([`TAG_CLIENT_ID`]); `fresh()` is added when there is none.
pub fn client_id(tags: &mut Vec<Tag>, fresh: impl FnOnce() -> String) -> String {
    if let Some(t) = tags.iter().find(|t| t.key == TAG_CLIENT_ID) {
        return t.value.clone();
    }
    let id = fresh();
    tags.push(Tag::new(TAG_CLIENT_ID, id.clone()));
    id
}

/// The search filter that finds the run or logged model carrying client key `key`.
pub fn client_id_filter(key: &str) -> String {
    format!("tags.`{TAG_CLIENT_ID}` = '{key}'")
}

/// A run parameter (same shape as a tag, but immutable once logged).
pub type Param = Tag;

/// One metric point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Metric {
    /// Metric key.
    pub key: String,
    /// Value; non-finite values travel as the strings "NaN", "Infinity", "-Infinity".
    #[serde(
        serialize_with = "ser_metric_value",
        deserialize_with = "de_metric_value"
    )]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Step (epoch, batch, ...).
    pub step: i64,
    /// The logged model the point scores (MLflow 3): the server records it on the run and on
    /// the model's page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Name of the dataset the point was measured on (MLflow 3; shown with model metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
    /// Digest of that dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_digest: Option<String>,
}

impl Metric {
    /// A metric point.
    pub fn new(key: impl Into<String>, value: f64, timestamp: i64, step: i64) -> Self {
        Metric {
            key: key.into(),
            value,
            timestamp,
            step,
            model_id: None,
            dataset_name: None,
            dataset_digest: None,
        }
    }

    /// The same point, scoring logged model `model_id` on `dataset`.
    pub fn scoring(self, model_id: Option<&str>, dataset: Option<&Dataset>) -> Self {
        Metric {
            model_id: model_id.map(str::to_owned),
            dataset_name: dataset.map(|d| d.name.clone()),
            dataset_digest: dataset.map(|d| d.digest.clone()),
            ..self
        }
    }
}

/// A dataset as MLflow records it (`runs/log-inputs`): `source`, `schema` and `profile` are
/// JSON documents in strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Dataset {
    /// Name shown in the UI.
    pub name: String,
    /// Content hash (at most 36 characters).
    pub digest: String,
    /// Kind of source, e.g. `local`.
    pub source_type: String,
    /// Where the data lives (JSON).
    pub source: String,
    /// Columns (JSON, MLflow's `mlflow_colspec`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Summary figures (JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// MLflow's tag naming what a run used a dataset for (`train`, `eval`, ...).
pub const TAG_DATASET_CONTEXT: &str = "mlflow.data.context";

/// A dataset used by a run, with the input's tags (its context).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct DatasetInput {
    /// Input tags, e.g. [`TAG_DATASET_CONTEXT`].
    pub tags: Vec<Tag>,
    /// The dataset.
    pub dataset: Dataset,
}

impl DatasetInput {
    /// `dataset` used by a run as `context` (`train`, `eval`, `source`, ...).
    pub fn new(dataset: Dataset, context: &str) -> Self {
        DatasetInput {
            tags: vec![Tag::new(TAG_DATASET_CONTEXT, context)],
            dataset,
        }
    }
}

// MLflow's JSON parser takes "NaN"/"Infinity"/"-Infinity" strings; serde_json would write
// `null`, which the server rejects with a 400 (ARCHITECTURE §4).
fn ser_metric_value<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_str("NaN")
    } else if *v == f64::INFINITY {
        s.serialize_str("Infinity")
    } else if *v == f64::NEG_INFINITY {
        s.serialize_str("-Infinity")
    } else {
        s.serialize_f64(*v)
    }
}

fn de_metric_value<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(v) => Ok(v),
        NumOrStr::Str(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            other => other
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("bad metric value {other:?}"))),
        },
    }
}

/// Run status as MLflow names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Still running (MLflow's default).
    #[default]
    Running,
    /// Scheduled, not started.
    Scheduled,
    /// Ended successfully.
    Finished,
    /// Ended with an error.
    Failed,
    /// Stopped from outside.
    Killed,
}

impl RunStatus {
    /// MLflow's name, as used in search filters.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }

    /// The integer the MLflow file store writes in a run's meta.yaml.
    pub fn file_store_code(self) -> i64 {
        match self {
            RunStatus::Running => 1,
            RunStatus::Scheduled => 2,
            RunStatus::Finished => 3,
            RunStatus::Failed => 4,
            RunStatus::Killed => 5,
        }
    }

    /// Inverse of [`RunStatus::file_store_code`].
    pub fn from_file_store_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => RunStatus::Running,
            2 => RunStatus::Scheduled,
            3 => RunStatus::Finished,
            4 => RunStatus::Failed,
            5 => RunStatus::Killed,
            _ => return None,
        })
    }
}

/// An experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Experiment {
    /// Experiment id (a decimal string).
    pub experiment_id: String,
    /// Unique name.
    pub name: String,
    /// Root URI of its runs' artifacts.
    pub artifact_location: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: String,
    /// Experiment tags.
    pub tags: Vec<Tag>,
}

/// Run metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RunInfo {
    /// Run id (32 hex chars).
    pub run_id: String,
    /// Owning experiment.
    pub experiment_id: String,
    /// Display name.
    pub run_name: String,
    /// Who started it.
    pub user_id: String,
    /// Current status.
    pub status: RunStatus,
    /// Milliseconds since the epoch.
    pub start_time: Option<i64>,
    /// Milliseconds since the epoch, once ended.
    pub end_time: Option<i64>,
    /// Root URI of the run's artifacts.
    pub artifact_uri: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: String,
}

/// Run data: latest metric values, params, tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RunData {
    /// Latest value of each metric.
    pub metrics: Vec<Metric>,
    /// Params.
    pub params: Vec<Param>,
    /// Tags.
    pub tags: Vec<Tag>,
}

impl RunData {
    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }

    /// The value of param `key`, if set.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }
}

/// A run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Run {
    /// Metadata.
    pub info: RunInfo,
    /// Metrics, params, tags.
    pub data: RunData,
}

/// One page of a run search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RunsPage {
    /// Runs on this page.
    pub runs: Vec<Run>,
    /// Token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A run search request (MLflow's `runs/search`).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct SearchRuns {
    /// Experiments to search.
    pub experiment_ids: Vec<String>,
    /// MLflow filter string, e.g. `tags.x = 'y' and attributes.status = 'FINISHED'`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub filter: String,
    /// Order, e.g. `attributes.start_time DESC`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub order_by: Vec<String>,
    /// Page size (MLflow's default 1000, max 50000).
    pub max_results: u32,
    /// Token from the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
}

/// A file or directory in an artifact listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FileInfo {
    /// Path relative to the listed root.
    pub path: String,
    /// Directory?
    pub is_dir: bool,
    /// Size in bytes for files.
    pub file_size: Option<i64>,
}

/// What to create a run with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CreateRun {
    /// Owning experiment.
    pub experiment_id: String,
    /// Display name.
    pub run_name: String,
    /// Milliseconds since the epoch.
    pub start_time: i64,
    /// Initial tags (already sanitised).
    pub tags: Vec<Tag>,
    /// Who starts it.
    pub user_id: String,
}

/// An MLflow 3 logged model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct LoggedModel {
    /// `m-<hex>`.
    pub model_id: String,
    /// Owning experiment.
    pub experiment_id: String,
    /// Model name.
    pub name: String,
    /// Root URI of the model's files.
    pub artifact_uri: String,
    /// `LOGGED_MODEL_PENDING`, `LOGGED_MODEL_READY`, `LOGGED_MODEL_UPLOAD_FAILED`.
    pub status: String,
    /// The run that produced it.
    pub source_run_id: String,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Params (filled from the answer's `data.params`).
    pub params: Vec<Param>,
}

/// What to create a logged model with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CreateLoggedModel {
    /// Owning experiment.
    pub experiment_id: String,
    /// Model name.
    pub name: String,
    /// Free-form type, e.g. `cnn-lstm`.
    pub model_type: String,
    /// The run that produced it.
    pub source_run_id: String,
    /// Params.
    pub params: Vec<Param>,
    /// Tags.
    pub tags: Vec<Tag>,
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ModelVersion {
    /// Registered model name.
    pub name: String,
    /// Version number as a string.
    pub version: String,
    /// `models:/<model_id>`.
    pub source: String,
    /// The run that produced it.
    pub run_id: String,
    /// `READY` once usable.
    pub status: String,
    /// Aliases pointing at this version.
    pub aliases: Vec<String>,
}
