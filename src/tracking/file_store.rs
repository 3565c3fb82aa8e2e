//! MLflow's file-store layout on local disk, so `MLFLOW_ALLOW_FILE_STORE=true mlflow ui
//! --backend-store-uri <dir>` (and `mlflow migrate-filestore`) read what we write:
//!
//! ```text
//! <root>/<exp_id>/meta.yaml                 experiment (name, artifact_location, ...)
//! <root>/<exp_id>/tags/<key>                experiment tags
//! <root>/<exp_id>/<run_id>/meta.yaml        run (run_id, status as int, times, ...)
//! <root>/<exp_id>/<run_id>/metrics/<key>    lines `<timestamp_ms> <value> <step>`
//! <root>/<exp_id>/<run_id>/params/<key>     the value
//! <root>/<exp_id>/<run_id>/tags/<key>       the value
//! <root>/<exp_id>/<run_id>/artifacts/...    artifact files
//! ```
//! Keys containing `/` become sub-folders, as MLflow does. Deleted experiments live in
//! `<root>/.trash/<exp_id>`. Logged models and the registry need a server.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Store;
use super::error::{Result, TrackingError};
use super::limits::{Batch, clean_artifact_path, now_ms};
use super::types::*;

/// The local MLflow file store rooted at one directory.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    // Serialises experiment-id allocation and metric appends within this process.
    lock: Mutex<()>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct ExperimentMeta {
    artifact_location: String,
    creation_time: i64,
    experiment_id: String,
    last_update_time: i64,
    lifecycle_stage: String,
    name: String,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct RunMeta {
    artifact_uri: String,
    end_time: Option<i64>,
    entry_point_name: String,
    experiment_id: String,
    lifecycle_stage: String,
    run_id: String,
    run_name: String,
    run_uuid: String,
    source_name: String,
    source_type: i64,
    source_version: String,
    start_time: Option<i64>,
    status: i64,
    tags: Vec<String>,
    user_id: String,
    deleted_time: Option<i64>,
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> TrackingError {
    let context = format!("{what} {}", path.display());
    move |e| TrackingError::io(context, e)
}

/// `file:///a/b`, `file:/a/b` or `/a/b` -> `/a/b` (percent-escapes decoded).
pub(crate) fn path_of_file_uri(uri: &str) -> PathBuf {
    let p = uri.strip_prefix("file:").unwrap_or(uri);
    let p = p.strip_prefix("//").unwrap_or(p);
    PathBuf::from(
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The `file://` URI of `path`, made absolute against the working directory (no file
/// system access): how MLflow names local artifact roots and dataset sources.
pub fn file_uri(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", abs.display())
}

/// Copies `from` to `to` through a temporary file (never a half-written artifact).
pub(crate) fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    let tmp = to.with_extension("part.tmp");
    fs::copy(from, &tmp).map_err(io_err("copying to", &tmp))?;
    fs::rename(&tmp, to).map_err(io_err("renaming into", to))
}

/// Lists `dir/rel` with paths relative to `dir`.
pub(crate) fn list_dir(dir: &Path, rel: &str) -> Result<Vec<FileInfo>> {
    let folder = dir.join(rel);
    if !folder.exists() {
        return Ok(Vec::new());
    }
    if folder.is_file() {
        // Listing a file lists the file itself (what a download of one file needs).
        let len = fs::metadata(&folder)
            .map_err(io_err("reading", &folder))?
            .len();
        return Ok(vec![FileInfo {
            path: rel.to_string(),
            is_dir: false,
            file_size: Some(len as i64),
        }]);
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&folder).map_err(io_err("listing", &folder))? {
        let entry = entry.map_err(io_err("listing", &folder))?;
        let meta = entry.metadata().map_err(io_err("reading", &entry.path()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push(FileInfo {
            path: if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            },
            is_dir: meta.is_dir(),
            file_size: (!meta.is_dir()).then_some(meta.len() as i64),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Writes `content` to `path` atomically (temp + rename).
pub(crate) fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    // Appended, not replacing an extension: `mlflow.runName` and `mlflow.user` get their own.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp-write");
    let tmp = path.with_file_name(name);
    fs::write(&tmp, content).map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("renaming into", path))
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    serde_yaml_ng::from_str(&text).map_err(|e| TrackingError::Corrupt {
        context: format!("MLflow meta file {}", path.display()),
        message: e.to_string(),
    })
}

fn write_yaml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_yaml_ng::to_string(value).map_err(|e| TrackingError::Corrupt {
        context: format!("encoding {}", path.display()),
        message: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

/// A 32-hex-digit id derived from `parts` (the same parts give the same id, as MLflow's own
/// dataset and input ids do).
fn id_of(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads every file under `dir` as `(relative key, content)`; keys with `/` are sub-folders.
fn read_key_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err("listing", &d))? {
            let path = entry.map_err(io_err("listing", &d))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                let content = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
                out.push((key, content));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Python's spelling of non-finite floats, which MLflow's reader (`float()`) parses.
fn metric_value_text(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v == f64::INFINITY {
        "inf".into()
    } else if v == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{v:?}")
    }
}

fn parse_metric_lines(key: &str, text: &str, path: &Path) -> Result<Vec<Metric>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let bad = || TrackingError::Corrupt {
                context: format!("metric file {}", path.display()),
                message: format!("malformed line {line:?}"),
            };
            if parts.len() < 2 {
                return Err(bad());
            }
            Ok(Metric::new(
                key,
                parts[1].parse().map_err(|_| bad())?,
                parts[0].parse().map_err(|_| bad())?,
                parts
                    .get(2)
                    .map_or(Ok(0), |s| s.parse())
                    .map_err(|_| bad())?,
            ))
        })
        .collect()
}

impl FileStore {
    /// Opens (creating if needed) the store at `root`, with MLflow's default experiment `0`.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(io_err("creating the MLflow file store", root))?;
        let root = root
            .canonicalize()
            .map_err(io_err("resolving the MLflow file store", root))?;
        let store = FileStore {
            root,
            lock: Mutex::new(()),
        };
        if !store.root.join("0").join("meta.yaml").exists() {
            store.write_experiment("0", "Default", &[])?;
        }
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write_experiment(&self, id: &str, name: &str, tags: &[Tag]) -> Result<()> {
        let dir = self.root.join(id);
        let now = now_ms();
        write_yaml(
            &dir.join("meta.yaml"),
            &ExperimentMeta {
                artifact_location: file_uri(&dir),
                creation_time: now,
                experiment_id: id.to_string(),
                last_update_time: now,
                lifecycle_stage: "active".into(),
                name: name.to_string(),
            },
        )?;
        for t in tags {
            write_atomic(&dir.join("tags").join(&t.key), t.value.as_bytes())?;
        }
        Ok(())
    }

    /// Experiment folders: active ones under the root, deleted ones under `.trash`.
    fn experiment_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for base in [self.root.clone(), self.root.join(".trash")] {
            if !base.exists() {
                continue;
            }
            for entry in fs::read_dir(&base).map_err(io_err("listing", &base))? {
                let path = entry.map_err(io_err("listing", &base))?.path();
                if path.join("meta.yaml").is_file() {
                    out.push(path);
                }
            }
        }
        Ok(out)
    }

    fn read_experiment(&self, dir: &Path) -> Result<Experiment> {
        let meta: ExperimentMeta = read_yaml(&dir.join("meta.yaml"))?;
        let tags = read_key_files(&dir.join("tags"))?
            .into_iter()
            .map(|(key, value)| Tag { key, value })
            .collect();
        Ok(Experiment {
            experiment_id: meta.experiment_id,
            name: meta.name,
            artifact_location: meta.artifact_location,
            lifecycle_stage: meta.lifecycle_stage,
            tags,
        })
    }

    fn run_dir(&self, run_id: &str) -> Result<PathBuf> {
        if run_id.is_empty() || !run_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(TrackingError::NotFound {
                what: format!("run {run_id:?} in {}", self.describe()),
            });
        }
        for exp in self.experiment_dirs()? {
            let dir = exp.join(run_id);
            if dir.join("meta.yaml").is_file() {
                return Ok(dir);
            }
        }
        Err(TrackingError::NotFound {
            what: format!("run {run_id} in {}", self.describe()),
        })
    }

    fn read_run(&self, dir: &Path) -> Result<Run> {
        let meta: RunMeta = read_yaml(&dir.join("meta.yaml"))?;
        let mut metrics = Vec::new();
        for (key, text) in read_key_files(&dir.join("metrics"))? {
            let points = parse_metric_lines(&key, &text, &dir.join("metrics").join(&key))?;
            // MLflow's "latest" value: highest step, then latest timestamp.
            if let Some(last) = points
                .into_iter()
                .max_by(|a, b| (a.step, a.timestamp).cmp(&(b.step, b.timestamp)))
            {
                metrics.push(last);
            }
        }
        let kv = |sub: &str| -> Result<Vec<Tag>> {
            Ok(read_key_files(&dir.join(sub))?
                .into_iter()
                .map(|(key, value)| Tag { key, value })
                .collect())
        };
        Ok(Run {
            info: RunInfo {
                run_id: meta.run_id,
                experiment_id: meta.experiment_id,
                run_name: meta.run_name,
                user_id: meta.user_id,
                status: RunStatus::from_file_store_code(meta.status).unwrap_or_default(),
                start_time: meta.start_time,
                end_time: meta.end_time,
                artifact_uri: meta.artifact_uri,
                lifecycle_stage: meta.lifecycle_stage,
            },
            data: RunData {
                metrics,
                params: kv("params")?,
                tags: kv("tags")?,
            },
        })
    }

    fn unsupported(&self, operation: &'static str) -> TrackingError {
        TrackingError::Unsupported {
            operation,
            store: self.describe(),
            hint: "logged models and the model registry need an MLflow server: set \
                   mlflow.tracking_uri to http(s)://...; model files are kept as run \
                   artifacts under model/ meanwhile",
        }
    }
}

impl Store for FileStore {
    fn describe(&self) -> String {
        format!("the local MLflow file store at {}", self.root.display())
    }

    fn experiment_by_name(&self, name: &str) -> Result<Option<Experiment>> {
        for dir in self.experiment_dirs()? {
            let e = self.read_experiment(&dir)?;
            if e.name == name {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    fn create_experiment(&self, name: &str, tags: &[Tag]) -> Result<String> {
        let _guard = self.lock.lock().expect("file-store lock poisoned");
        if let Some(e) = self.experiment_by_name(name)? {
            return Err(TrackingError::InvalidInput(format!(
                "experiment '{name}' already exists (id {}) in {}",
                e.experiment_id,
                self.describe()
            )));
        }
        let next = self
            .experiment_dirs()?
            .iter()
            .filter_map(|d| d.file_name()?.to_str()?.parse::<u64>().ok())
            .max()
            .map_or(1, |m| m + 1);
        let id = next.to_string();
        self.write_experiment(&id, name, tags)?;
        Ok(id)
    }

    fn set_experiment_tag(&self, experiment_id: &str, tag: &Tag) -> Result<()> {
        let dir = self.root.join(experiment_id);
        if !dir.join("meta.yaml").is_file() {
            return Err(TrackingError::NotFound {
                what: format!("experiment {experiment_id} in {}", self.describe()),
            });
        }
        write_atomic(&dir.join("tags").join(&tag.key), tag.value.as_bytes())
    }

    fn create_run(&self, req: &CreateRun) -> Result<RunInfo> {
        let exp_dir = self.root.join(&req.experiment_id);
        if !exp_dir.join("meta.yaml").is_file() {
            return Err(TrackingError::NotFound {
                what: format!(
                    "active experiment {} in {}",
                    req.experiment_id,
                    self.describe()
                ),
            });
        }
        let run_id = super::limits::new_id();
        let dir = exp_dir.join(&run_id);
        for sub in ["metrics", "params", "tags", "artifacts"] {
            fs::create_dir_all(dir.join(sub)).map_err(io_err("creating", &dir.join(sub)))?;
        }
        let meta = RunMeta {
            artifact_uri: file_uri(&dir.join("artifacts")),
            end_time: None,
            experiment_id: req.experiment_id.clone(),
            lifecycle_stage: "active".into(),
            run_id: run_id.clone(),
            run_name: req.run_name.clone(),
            run_uuid: run_id.clone(),
            source_type: 4,
            start_time: Some(req.start_time),
            status: RunStatus::Running.file_store_code(),
            user_id: req.user_id.clone(),
            ..RunMeta::default()
        };
        // Tags first: a run is visible once its meta.yaml exists, so a process killed mid-create
        // leaves either no run or one carrying its client key, which the next command finds
        // and ends FAILED (a meta.yaml without tags would stay RUNNING, found by nothing).
        for t in &req.tags {
            write_atomic(&dir.join("tags").join(&t.key), t.value.as_bytes())?;
        }
        write_yaml(&dir.join("meta.yaml"), &meta)?;
        Ok(self.read_run(&dir)?.info)
    }

    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()> {
        let dir = self.run_dir(run_id)?;
        let path = dir.join("meta.yaml");
        let mut meta: RunMeta = read_yaml(&path)?;
        meta.status = status.file_store_code();
        if end_time.is_some() {
            meta.end_time = end_time;
        }
        write_yaml(&path, &meta)
    }

    fn get_run(&self, run_id: &str) -> Result<Run> {
        let dir = self.run_dir(run_id)?;
        self.read_run(&dir)
    }

    fn search_runs(&self, req: &SearchRuns) -> Result<RunsPage> {
        let filter = search::parse_filter(&req.filter)?;
        let order = search::parse_order(&req.order_by)?;
        let mut runs = Vec::new();
        for exp_id in &req.experiment_ids {
            let exp_dir = self.root.join(exp_id);
            if !exp_dir.exists() {
                continue;
            }
            for entry in fs::read_dir(&exp_dir).map_err(io_err("listing", &exp_dir))? {
                let dir = entry.map_err(io_err("listing", &exp_dir))?.path();
                if dir.join("meta.yaml").is_file() {
                    let run = self.read_run(&dir)?;
                    if run.info.lifecycle_stage == "active"
                        && filter.iter().all(|c| c.matches(&run))
                    {
                        runs.push(run);
                    }
                }
            }
        }
        search::sort_runs(&mut runs, &order);
        let offset: usize = match &req.page_token {
            Some(t) => t.parse().map_err(|_| {
                TrackingError::InvalidInput(format!("bad page token {t:?} for {}", self.describe()))
            })?,
            None => 0,
        };
        let size = if req.max_results == 0 {
            1000
        } else {
            req.max_results as usize
        };
        let end = (offset + size).min(runs.len());
        let next_page_token = (end < runs.len()).then(|| end.to_string());
        Ok(RunsPage {
            runs: runs.drain(offset.min(end)..end).collect(),
            next_page_token,
        })
    }

    fn log_batch(&self, run_id: &str, batch: &Batch) -> Result<()> {
        let dir = self.run_dir(run_id)?;
        for p in &batch.params {
            let path = dir.join("params").join(&p.key);
            if let Ok(old) = fs::read_to_string(&path) {
                if old != p.value {
                    return Err(TrackingError::InvalidInput(format!(
                        "param '{}' of run {run_id} is already {old:?}; MLflow params cannot \
                         change (new value {:?})",
                        p.key, p.value
                    )));
                }
                continue;
            }
            write_atomic(&path, p.value.as_bytes())?;
        }
        for t in &batch.tags {
            write_atomic(&dir.join("tags").join(&t.key), t.value.as_bytes())?;
        }
        let _guard = self.lock.lock().expect("file-store lock poisoned");
        let mut by_key: Vec<(&str, String)> = Vec::new();
        for m in &batch.metrics {
            let line = format!(
                "{} {} {}\n",
                m.timestamp,
                metric_value_text(m.value),
                m.step
            );
            match by_key.iter_mut().find(|(k, _)| *k == m.key) {
                Some((_, text)) => text.push_str(&line),
                None => by_key.push((&m.key, line)),
            }
        }
        for (key, text) in by_key {
            let path = dir.join("metrics").join(key);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
            }
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(io_err("appending to", &path))?;
        }
        Ok(())
    }

    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>> {
        let path = self.run_dir(run_id)?.join("metrics").join(key);
        match fs::read_to_string(&path) {
            Ok(text) => parse_metric_lines(key, &text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(TrackingError::io(format!("reading {}", path.display()), e)),
        }
    }

    fn upload_artifact(&self, run_id: &str, local: &Path, artifact_path: &str) -> Result<()> {
        let rel = clean_artifact_path(artifact_path)?;
        let root = path_of_file_uri(&self.get_run(run_id)?.info.artifact_uri);
        copy_file(local, &root.join(rel))
    }

    fn list_artifacts(&self, run_id: &str, path: &str) -> Result<Vec<FileInfo>> {
        let rel = clean_artifact_path(path)?;
        let root = path_of_file_uri(&self.get_run(run_id)?.info.artifact_uri);
        list_dir(&root, &rel)
    }

    fn download_artifact(&self, run_id: &str, artifact_path: &str, dest: &Path) -> Result<()> {
        let rel = clean_artifact_path(artifact_path)?;
        let root = path_of_file_uri(&self.get_run(run_id)?.info.artifact_uri);
        copy_file(&root.join(rel), dest)
    }

    fn create_logged_model(&self, _: &CreateLoggedModel) -> Result<LoggedModel> {
        Err(self.unsupported("logging an MLflow 3 model"))
    }
    fn upload_model_file(&self, _: &str, _: &Path, _: &str) -> Result<()> {
        Err(self.unsupported("uploading model files"))
    }
    fn finalize_logged_model(&self, _: &str, _: bool) -> Result<()> {
        Err(self.unsupported("finalizing a logged model"))
    }
    fn link_model_output(&self, _: &str, _: &str, _: i64) -> Result<()> {
        Err(self.unsupported("linking a model to a run"))
    }
    fn search_logged_models(&self, _: &[String], _: &str) -> Result<Vec<LoggedModel>> {
        Err(self.unsupported("searching logged models"))
    }
    fn models_of_run(&self, _: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// MLflow's layout: the dataset once per experiment under `datasets/<id>/meta.yaml`, the
    /// run's use of it under `<run>/inputs/<id>/meta.yaml`. Logged models do not exist here.
    fn log_inputs(&self, run_id: &str, datasets: &[DatasetInput], _: &[String]) -> Result<()> {
        let run_dir = self.run_dir(run_id)?;
        let experiment_dir = run_dir.parent().expect("a run sits in its experiment");
        for input in datasets {
            let d = &input.dataset;
            let dataset_id = id_of(&[&d.name, &d.digest]);
            let meta = experiment_dir
                .join("datasets")
                .join(&dataset_id)
                .join("meta.yaml");
            if !meta.is_file() {
                write_yaml(&meta, d)?;
            }
            let tags: std::collections::BTreeMap<&str, &str> = input
                .tags
                .iter()
                .map(|t| (t.key.as_str(), t.value.as_str()))
                .collect();
            write_yaml(
                &run_dir
                    .join("inputs")
                    .join(id_of(&[&dataset_id, run_id]))
                    .join("meta.yaml"),
                &serde_json::json!({
                    "source_type": "DATASET",
                    "source_id": dataset_id,
                    "destination_type": "RUN",
                    "destination_id": run_id,
                    "tags": tags,
                }),
            )?;
        }
        Ok(())
    }
    fn ensure_registered_model(&self, _: &str) -> Result<()> {
        Err(self.unsupported("the model registry"))
    }
    fn create_model_version(&self, _: &str, _: &str, _: &str) -> Result<ModelVersion> {
        Err(self.unsupported("the model registry"))
    }
    fn set_alias(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Err(self.unsupported("the model registry"))
    }
    fn version_by_alias(&self, _: &str, _: &str) -> Result<ModelVersion> {
        Err(self.unsupported("the model registry"))
    }
    fn model_version(&self, _: &str, _: &str) -> Result<ModelVersion> {
        Err(self.unsupported("the model registry"))
    }
    fn supports_models(&self) -> bool {
        false
    }
}

/// The subset of MLflow's search syntax the local store evaluates: clauses joined by `and`,
/// each `tags.<k>`, `params.<k>`, `metrics.<k>` or `attributes.<status|run_name|run_id>`
/// (the `attributes.` prefix optional, keys optionally in backticks) compared with
/// `=`/`!=` (and `<`, `<=`, `>`, `>=` for metrics) to a quoted string or a number.
mod search {
    use super::super::error::{Result, TrackingError};
    use super::super::types::Run;

    pub(super) enum Field {
        Tag(String),
        Param(String),
        Metric(String),
        Status,
        RunName,
        RunId,
    }

    pub(super) struct Clause {
        field: Field,
        op: String,
        value: String,
    }

    fn bad(filter: &str, why: &str) -> TrackingError {
        TrackingError::InvalidInput(format!(
            "search filter {filter:?} is not supported by the local store: {why}"
        ))
    }

    pub(super) fn parse_filter(filter: &str) -> Result<Vec<Clause>> {
        let mut clauses = Vec::new();
        let mut rest = filter.trim();
        while !rest.is_empty() {
            let (ident, after) = take_ident(rest).ok_or_else(|| bad(filter, "expected a key"))?;
            let after = after.trim_start();
            let op_len = ["!=", "<=", ">=", "=", "<", ">"]
                .iter()
                .find(|op| after.starts_with(*op))
                .map(|op| op.len())
                .ok_or_else(|| bad(filter, "expected =, !=, <, <=, > or >="))?;
            let op = after[..op_len].to_string();
            let after = after[op_len..].trim_start();
            let (value, after) =
                take_value(after).ok_or_else(|| bad(filter, "expected a value"))?;
            let field = match ident.split_once('.') {
                Some(("tags" | "tag", k)) => Field::Tag(unquote(k)),
                Some(("params" | "param", k)) => Field::Param(unquote(k)),
                Some(("metrics" | "metric", k)) => Field::Metric(unquote(k)),
                Some(("attributes" | "attribute" | "attr" | "run", a)) => attribute(a, filter)?,
                None => attribute(&ident, filter)?,
                Some(_) => return Err(bad(filter, "unknown key prefix")),
            };
            if !matches!(field, Field::Metric(_)) && !matches!(op.as_str(), "=" | "!=") {
                return Err(bad(filter, "only = and != compare strings"));
            }
            clauses.push(Clause { field, op, value });
            rest = after.trim_start();
            if rest.is_empty() {
                break;
            }
            let lower = rest.to_ascii_lowercase();
            if !lower.starts_with("and ") {
                return Err(bad(filter, "clauses must be joined by AND"));
            }
            rest = rest[4..].trim_start();
        }
        Ok(clauses)
    }

    fn attribute(name: &str, filter: &str) -> Result<Field> {
        match unquote(name).as_str() {
            "status" => Ok(Field::Status),
            "run_name" => Ok(Field::RunName),
            "run_id" => Ok(Field::RunId),
            _ => Err(bad(filter, "unknown attribute")),
        }
    }

    fn unquote(s: &str) -> String {
        s.trim_matches('`').trim_matches('"').to_string()
    }

    fn take_ident(s: &str) -> Option<(String, &str)> {
        let mut in_tick = false;
        for (i, c) in s.char_indices() {
            if c == '`' {
                in_tick = !in_tick;
            } else if !in_tick && (c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>')) {
                return (i > 0).then(|| (s[..i].to_string(), &s[i..]));
            }
        }
        None
    }

    fn take_value(s: &str) -> Option<(String, &str)> {
        let q = s.chars().next()?;
        if q == '\'' || q == '"' {
            let end = s[1..].find(q)? + 1;
            return Some((s[1..end].to_string(), &s[end + 1..]));
        }
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        Some((s[..end].to_string(), &s[end..]))
    }

    impl Clause {
        pub(super) fn matches(&self, run: &Run) -> bool {
            let actual: Option<String> = match &self.field {
                Field::Tag(k) => run.data.tag(k).map(str::to_string),
                Field::Param(k) => run.data.param(k).map(str::to_string),
                Field::Status => Some(run.info.status.as_str().to_string()),
                Field::RunName => Some(run.info.run_name.clone()),
                Field::RunId => Some(run.info.run_id.clone()),
                Field::Metric(k) => {
                    let Some(m) = run.data.metrics.iter().find(|m| &m.key == k) else {
                        return false;
                    };
                    let Ok(want) = self.value.parse::<f64>() else {
                        return false;
                    };
                    return match self.op.as_str() {
                        "=" => m.value == want,
                        "!=" => m.value != want,
                        "<" => m.value < want,
                        "<=" => m.value <= want,
                        ">" => m.value > want,
                        _ => m.value >= want,
                    };
                }
            };
            match (actual, self.op.as_str()) {
                (Some(a), "=") => a == self.value,
                (Some(a), _) => a != self.value,
                (None, _) => false,
            }
        }
    }

    /// `(field, descending)`; MLflow's default is start_time descending.
    pub(super) fn parse_order(order_by: &[String]) -> Result<(String, bool)> {
        let Some(first) = order_by.first() else {
            return Ok(("start_time".into(), true));
        };
        let mut parts = first.split_whitespace();
        let field = parts.next().unwrap_or("");
        let field = field.strip_prefix("attributes.").unwrap_or(field);
        let desc = parts.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
        match field {
            "start_time" | "end_time" | "run_name" => Ok((field.to_string(), desc)),
            _ => Err(TrackingError::InvalidInput(format!(
                "order_by {first:?} is not supported by the local store (use start_time, \
                 end_time or run_name)"
            ))),
        }
    }

    pub(super) fn sort_runs(runs: &mut [Run], (field, desc): &(String, bool)) {
        runs.sort_by(|a, b| {
            let ord = match field.as_str() {
                "end_time" => a.info.end_time.cmp(&b.info.end_time),
                "run_name" => a.info.run_name.cmp(&b.info.run_name),
                _ => a.info.start_time.cmp(&b.info.start_time),
            }
            .then_with(|| a.info.run_id.cmp(&b.info.run_id));
            if *desc { ord.reverse() } else { ord }
        });
    }

    #[cfg(test)]
    mod tests {
        use super::super::super::types::{Metric, Run, RunStatus, Tag};
        use super::*;

        #[test]
        fn filters_match_tags_status_and_metrics() {
            let mut run = Run::default();
            run.info.status = RunStatus::Finished;
            run.data
                .tags
                .push(Tag::new("binance_ml.config_hash", "abc"));
            run.data.metrics.push(Metric::new("acc", 0.8, 0, 0));
            let ok = |f: &str| parse_filter(f).unwrap().iter().all(|c| c.matches(&run));
            assert!(ok(
                "tags.`binance_ml.config_hash` = 'abc' and attributes.status = 'FINISHED'"
            ));
            assert!(ok(
                "tags.binance_ml.config_hash = \"abc\" AND metrics.acc > 0.5"
            ));
            assert!(!ok("tags.binance_ml.config_hash = 'abd'"));
            assert!(!ok("status != 'FINISHED'"));
            assert!(!ok("metrics.missing > 0"));
            assert!(ok(""));
            assert!(parse_filter("tags.x LIKE 'a%'").is_err());
            assert!(parse_filter("tags.x = 'a' or tags.y = 'b'").is_err());
        }
    }
}
