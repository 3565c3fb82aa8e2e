//! [`Tracker`]: the one interface stages use, over any [`Store`].

use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::{Result, TrackingError};
use super::file_store::FileStore;
use super::http::split_userinfo;
use super::limits::{self, MAX_PARAM_VALUE_LEN, MAX_TAG_VALUE_LEN, chunk_batch, sanitize_key};
use super::mlmodel::{MLMODEL_FILE, ModelCard};
use super::open_runs::{OpenRun, OpenRuns, left_by_dead_processes};
use super::spool::SpoolStore;
use super::types::*;
use super::{Store, StoreKind, TrackingSettings, store_kind};

/// Tag MLflow uses for a run's display name.
pub const TAG_RUN_NAME: &str = "mlflow.runName";
/// Tag MLflow uses to nest a run under its parent.
pub const TAG_PARENT_RUN: &str = "mlflow.parentRunId";
/// Tag MLflow shows as the run's source.
pub const TAG_SOURCE_NAME: &str = "mlflow.source.name";
/// Tag MLflow shows as the run's user ("Created by").
pub const TAG_USER: &str = "mlflow.user";
/// Tag MLflow shows as the kind of the run's source.
pub const TAG_SOURCE_TYPE: &str = "mlflow.source.type";
/// The longest dataset digest MLflow stores.
const MAX_DATASET_DIGEST_LEN: usize = 36;

/// The tracking client: sanitises keys, chunks batches, moves long params to artifacts, and
/// hands the rest to its store.
pub struct Tracker {
    store: Box<dyn Store>,
    /// Where open runs are recorded (so a killed process's runs end FAILED later); `None`
    /// for a tracker over an explicit store.
    open_runs: Option<OpenRuns>,
    /// Who creates runs (`mlflow.user`).
    user: String,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("store", &self.store.describe())
            .finish()
    }
}

impl Tracker {
    /// Opens the store the settings select: the local file store for an empty or `file:`
    /// URI, otherwise the REST store wrapped in the spool (journal when unreachable or
    /// offline).
    pub fn open(settings: &TrackingSettings) -> Result<Self> {
        let store: Box<dyn Store> = match store_kind(&settings.tracking_uri, &settings.workdir)? {
            StoreKind::File(root) => Box::new(FileStore::open(&root)?),
            StoreKind::Rest(uri) => Box::new(SpoolStore::open(
                settings.rest_store(&uri)?,
                &settings.effective_spool_dir(),
                settings.offline,
            )?),
        };
        // The tracking account when there is one (what the server's auth knows runs by).
        let username = settings
            .credentials
            .as_ref()
            .map(|c| c.username.clone())
            .or_else(|| split_userinfo(&settings.tracking_uri).1.map(|c| c.username));
        Ok(Tracker {
            store,
            open_runs: Some(OpenRuns::of(settings)),
            user: username.unwrap_or_else(os_user),
        })
    }

    /// A tracker over an explicit store.
    pub fn with_store(store: Box<dyn Store>) -> Self {
        Tracker {
            store,
            open_runs: None,
            user: os_user(),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Where this tracker writes (for log lines; never with credentials).
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The id of the active experiment `name`, creating it if missing.
    ///
    /// A deleted experiment of that name is an error ([`TrackingError::ExperimentDeleted`]):
    /// MLflow refuses both new runs in it and a new experiment with its name.
    pub fn experiment_id(&self, name: &str) -> Result<String> {
        match self.store.experiment_by_name(name)? {
            Some(e) if e.lifecycle_stage == "deleted" => Err(TrackingError::ExperimentDeleted {
                name: name.to_string(),
                experiment_id: e.experiment_id,
            }),
            Some(e) => Ok(e.experiment_id),
            None => self.store.create_experiment(name, &[]),
        }
    }

    /// Sets a tag on an experiment.
    pub fn set_experiment_tag(&self, experiment_id: &str, key: &str, value: &str) -> Result<()> {
        self.store
            .set_experiment_tag(experiment_id, &clean_tag(key, value))
    }

    /// Starts a run named `run_name`, nested under `parent_run_id` when given, with
    /// `mlflow.runName`, `mlflow.source.name` (this program), `mlflow.source.type` and
    /// `mlflow.user` set.
    pub fn start_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        parent_run_id: Option<&str>,
        tags: &[Tag],
    ) -> Result<RunInfo> {
        let user = self.user.clone();
        let mut all = vec![Tag::new(TAG_RUN_NAME, run_name)];
        all.extend(self.source_tags());
        if let Some(p) = parent_run_id {
            all.push(Tag::new(TAG_PARENT_RUN, p));
        }
        all.extend(tags.iter().map(|t| clean_tag(&t.key, &t.value)));
        // The client key goes on every run: a lost create answer, a replayed journal and a
        // process killed before it recorded the run id all find the run by it.
        let key = client_id(&mut all, limits::new_id);
        let journaling = self.store.journaling();
        if let Some(open) = &self.open_runs {
            open.pending(&key, experiment_id, journaling)?;
        }
        let created = self.store.create_run(&CreateRun {
            experiment_id: experiment_id.to_string(),
            run_name: run_name.to_string(),
            start_time: limits::now_ms(),
            tags: all,
            user_id: user,
        });
        match (&self.open_runs, &created) {
            (Some(open), Ok(info)) => open.add(&key, &info.run_id, self.store.journaling())?,
            (Some(open), Err(_)) => open.abandon(&key),
            (None, _) => {}
        }
        created
    }

    /// `mlflow.source.name` (this program), `mlflow.source.type` and `mlflow.user`: who and
    /// what created a run or a logged model.
    fn source_tags(&self) -> Vec<Tag> {
        vec![
            Tag::new(
                TAG_SOURCE_NAME,
                concat!("binance-ml ", env!("CARGO_PKG_VERSION")),
            ),
            Tag::new(TAG_SOURCE_TYPE, "LOCAL"),
            Tag::new(TAG_USER, self.user.clone()),
        ]
    }

    /// Ends a run with `status` now; a run failing because SIGINT/SIGTERM stopped the process
    /// ends KILLED.
    pub fn end_run(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let status = match status {
            RunStatus::Failed if crate::interrupt::requested().is_some() => RunStatus::Killed,
            other => other,
        };
        self.store
            .update_run(run_id, status, Some(limits::now_ms()))?;
        if let Some(open) = &self.open_runs {
            open.remove(run_id);
        }
        Ok(())
    }

    /// Reads a run.
    pub fn get_run(&self, run_id: &str) -> Result<Run> {
        self.store.get_run(run_id)
    }

    /// Every point of metric `key` (sanitised like when logging).
    pub fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>> {
        self.store.metric_history(run_id, &sanitize_key(key))
    }

    /// One page of a run search.
    pub fn search_runs_page(&self, req: &SearchRuns) -> Result<RunsPage> {
        self.store.search_runs(req)
    }

    /// All runs matching `filter` in `experiment_ids`, following page tokens.
    pub fn search_runs(
        &self,
        experiment_ids: &[String],
        filter: &str,
        order_by: &[&str],
    ) -> Result<Vec<Run>> {
        let mut req = SearchRuns {
            experiment_ids: experiment_ids.to_vec(),
            filter: filter.to_string(),
            order_by: order_by.iter().map(|s| s.to_string()).collect(),
            max_results: 1000,
            page_token: None,
        };
        let mut out = Vec::new();
        loop {
            let page = self.store.search_runs(&req)?;
            out.extend(page.runs);
            match page.next_page_token {
                Some(t) if !t.is_empty() => req.page_token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Logs metrics, params and tags: keys sanitised, non-finite values kept (sent as
    /// "NaN"/"Infinity"), params over 6000 chars moved to artifacts `params/<key>.txt`, tag
    /// values over 8000 chars cut (with a warning), chunked at the server limits.
    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[Param],
        tags: &[Tag],
    ) -> Result<()> {
        let metrics: Vec<Metric> = metrics
            .iter()
            .map(|m| Metric {
                key: sanitize_key(&m.key),
                ..m.clone()
            })
            .collect();
        let mut clean_params = Vec::with_capacity(params.len());
        for p in params {
            let key = sanitize_key(&p.key);
            let value = if p.value.chars().count() > MAX_PARAM_VALUE_LEN {
                self.long_param_to_artifact(run_id, &key, &p.value)?
            } else {
                p.value.clone()
            };
            clean_params.push(Param { key, value });
        }
        let tags: Vec<Tag> = tags.iter().map(|t| clean_tag(&t.key, &t.value)).collect();
        for chunk in chunk_batch(&metrics, &clean_params, &tags) {
            self.store.log_batch(run_id, &chunk)?;
        }
        Ok(())
    }

    /// Logs metrics only.
    pub fn log_metrics(&self, run_id: &str, metrics: &[Metric]) -> Result<()> {
        self.log_batch(run_id, metrics, &[], &[])
    }

    /// Logs one metric point now.
    pub fn log_metric(&self, run_id: &str, key: &str, value: f64, step: i64) -> Result<()> {
        self.log_batch(
            run_id,
            &[Metric::new(key, value, limits::now_ms(), step)],
            &[],
            &[],
        )
    }

    /// Logs params from `(key, value)` pairs.
    pub fn log_params<K: AsRef<str>, V: AsRef<str>>(
        &self,
        run_id: &str,
        params: &[(K, V)],
    ) -> Result<()> {
        let params: Vec<Param> = params
            .iter()
            .map(|(k, v)| Param::new(k.as_ref(), v.as_ref()))
            .collect();
        self.log_batch(run_id, &[], &params, &[])
    }

    /// Sets tags from `(key, value)` pairs.
    pub fn set_tags<K: AsRef<str>, V: AsRef<str>>(
        &self,
        run_id: &str,
        tags: &[(K, V)],
    ) -> Result<()> {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::new(k.as_ref(), v.as_ref()))
            .collect();
        self.log_batch(run_id, &[], &[], &tags)
    }

    // MLflow silently truncates params over 6000 chars; keep the whole value as an artifact
    // and make the param say where it is (with a checksum to match them up).
    fn long_param_to_artifact(&self, run_id: &str, key: &str, value: &str) -> Result<String> {
        let path = format!("params/{key}.txt");
        self.log_text(run_id, value, &path)?;
        let digest = Sha256::digest(value.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!(
            "<{} chars, stored as artifact {path}, sha256 {hex}>",
            value.chars().count()
        ))
    }

    /// Uploads one file as `<artifact_dir>/<file name>` (`artifact_dir` "" = the root).
    pub fn log_artifact(&self, run_id: &str, local: &Path, artifact_dir: &str) -> Result<()> {
        let name = local
            .file_name()
            .ok_or_else(|| {
                TrackingError::InvalidInput(format!("{} is not a file", local.display()))
            })?
            .to_string_lossy();
        let dir = artifact_dir.trim_matches('/');
        let target = if dir.is_empty() {
            name.into_owned()
        } else {
            format!("{dir}/{name}")
        };
        self.store.upload_artifact(run_id, local, &target)
    }

    /// Uploads every file under `local_dir` to `<artifact_dir>/<relative path>`.
    pub fn log_artifacts(&self, run_id: &str, local_dir: &Path, artifact_dir: &str) -> Result<()> {
        for (file, rel) in walk_files(local_dir)? {
            let dir = artifact_dir.trim_matches('/');
            let target = if dir.is_empty() {
                rel
            } else {
                format!("{dir}/{rel}")
            };
            self.store.upload_artifact(run_id, &file, &target)?;
        }
        Ok(())
    }

    /// Stores `text` as artifact `artifact_path` (e.g. `training_config.yaml`).
    pub fn log_text(&self, run_id: &str, text: &str, artifact_path: &str) -> Result<()> {
        let tmp = tempfile_path(artifact_path);
        std::fs::write(&tmp, text)
            .map_err(|e| TrackingError::io(format!("writing {}", tmp.display()), e))?;
        let res = self.store.upload_artifact(run_id, &tmp, artifact_path);
        let _ = std::fs::remove_file(&tmp);
        res
    }

    /// Lists one artifact folder ("" = root).
    pub fn list_artifacts(&self, run_id: &str, path: &str) -> Result<Vec<FileInfo>> {
        self.store.list_artifacts(run_id, path)
    }

    /// Downloads artifact `path` (a file or a whole folder, "" = everything) into `dest`,
    /// keeping relative paths; returns the files written.
    pub fn download_artifacts(
        &self,
        run_id: &str,
        path: &str,
        dest: &Path,
    ) -> Result<Vec<std::path::PathBuf>> {
        let path = limits::clean_artifact_path(path)?;
        let listing = self.store.list_artifacts(run_id, &path)?;
        let mut written = Vec::new();
        // A file lists as nothing (or as itself); a folder lists its entries.
        if listing.is_empty()
            || (listing.len() == 1 && listing[0].path == path && !listing[0].is_dir)
        {
            let target = dest.join(&path);
            self.store.download_artifact(run_id, &path, &target)?;
            written.push(target);
            return Ok(written);
        }
        let mut stack = listing;
        while let Some(f) = stack.pop() {
            if f.is_dir {
                stack.extend(self.store.list_artifacts(run_id, &f.path)?);
            } else {
                let target = dest.join(&f.path);
                self.store.download_artifact(run_id, &f.path, &target)?;
                written.push(target);
            }
        }
        written.sort();
        Ok(written)
    }

    /// Whether logged models and the registry are available (not on the local file store).
    pub fn supports_models(&self) -> bool {
        self.store.supports_models()
    }

    /// Logs an MLflow 3 model: creates it (PENDING), links it as an output of `run_id`,
    /// uploads every file of `model_dir` (its `MLmodel` rewritten from `card` with the model's
    /// id), and marks it READY (or UPLOAD_FAILED if an upload fails).
    pub fn log_model(
        &self,
        run_id: &str,
        experiment_id: &str,
        name: &str,
        card: &ModelCard,
        model_dir: &Path,
        params: &[Param],
    ) -> Result<LoggedModel> {
        let model_type = card.model_type.as_str();
        let model = self.store.create_logged_model(&CreateLoggedModel {
            experiment_id: experiment_id.to_string(),
            name: name.to_string(),
            model_type: model_type.to_string(),
            source_run_id: run_id.to_string(),
            params: params
                .iter()
                .map(|p| Param::new(sanitize_key(&p.key), p.value.clone()))
                .collect(),
            // What MLflow's UI shows as the model's "Created by" and "Logged from".
            tags: self.source_tags(),
        })?;
        self.store.link_model_output(run_id, &model.model_id, 0)?;
        remember_model(&self.describe(), run_id, &model.model_id);
        let upload = || -> Result<()> {
            for (file, rel) in walk_files(model_dir)? {
                if rel != MLMODEL_FILE {
                    self.store.upload_model_file(&model.model_id, &file, &rel)?;
                }
            }
            let mlmodel = card.mlmodel_yaml(run_id, Some(&model.model_id))?;
            let tmp = tempfile_path("MLmodel");
            std::fs::write(&tmp, mlmodel)
                .map_err(|e| TrackingError::io(format!("writing {}", tmp.display()), e))?;
            let res = self
                .store
                .upload_model_file(&model.model_id, &tmp, "MLmodel");
            let _ = std::fs::remove_file(&tmp);
            res
        };
        match upload() {
            Ok(()) => {
                self.store.finalize_logged_model(&model.model_id, true)?;
                Ok(LoggedModel {
                    status: "LOGGED_MODEL_READY".into(),
                    ..model
                })
            }
            Err(e) => {
                let _ = self.store.finalize_logged_model(&model.model_id, false);
                Err(e)
            }
        }
    }

    /// The logged model run `run_id` produced, if any: known without a request when this
    /// process logged it (also while journaling), else the run's outputs on the server.
    pub fn model_of_run(&self, run_id: &str) -> Result<Option<String>> {
        if let Some(id) = remembered_model(&self.describe(), run_id) {
            return Ok(Some(id));
        }
        if !self.supports_models() {
            return Ok(None);
        }
        Ok(self.store.models_of_run(run_id)?.into_iter().next())
    }

    /// Records datasets (and logged models) as inputs of `run_id`.
    pub fn log_inputs(
        &self,
        run_id: &str,
        datasets: &[DatasetInput],
        models: &[String],
    ) -> Result<()> {
        if let Some(d) = datasets
            .iter()
            .find(|d| d.dataset.digest.len() > MAX_DATASET_DIGEST_LEN)
        {
            return Err(TrackingError::InvalidInput(format!(
                "dataset {:?}: digest {:?} is longer than MLflow's {MAX_DATASET_DIGEST_LEN} \
                 characters",
                d.dataset.name, d.dataset.digest
            )));
        }
        let models = if self.supports_models() { models } else { &[] };
        if datasets.is_empty() && models.is_empty() {
            return Ok(());
        }
        self.store.log_inputs(run_id, datasets, models)
    }

    /// Logged models in `experiment_ids` matching `filter` (MLflow syntax, "" = all).
    pub fn search_logged_models(
        &self,
        experiment_ids: &[String],
        filter: &str,
    ) -> Result<Vec<LoggedModel>> {
        self.store.search_logged_models(experiment_ids, filter)
    }

    /// Registers `models:/<model_id>` under `name` (creating the registered model if needed).
    /// While `name` has no `champion`, the new version takes it: one `run` is all a nightly
    /// fine-tune (`base_model_alias: champion`) needs to start from.
    pub fn register_model(&self, name: &str, model_id: &str, run_id: &str) -> Result<ModelVersion> {
        self.store.ensure_registered_model(name)?;
        let mut version = self.store.create_model_version(name, model_id, run_id)?;
        match self.store.version_by_alias(name, super::CHAMPION) {
            Err(TrackingError::NotFound { .. }) => {
                self.store
                    .set_alias(name, super::CHAMPION, &version.version)?;
                version.aliases.push(super::CHAMPION.to_owned());
                tracing::info!(
                    model = name,
                    version = %version.version,
                    "the first registered version becomes {}",
                    super::CHAMPION
                );
            }
            Err(e) => tracing::warn!(
                model = name,
                "could not check for a {} alias ({e}); none was set",
                super::CHAMPION
            ),
            Ok(_) => {}
        }
        Ok(version)
    }

    /// Points `alias` (e.g. `champion`) of `name` at `version`.
    pub fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        self.store.set_alias(name, alias, version)
    }

    /// The version `alias` points at.
    pub fn version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion> {
        self.store.version_by_alias(name, alias)
    }

    /// Version `version` of the registered model `name`.
    pub fn model_version(&self, name: &str, version: &str) -> Result<ModelVersion> {
        self.store.model_version(name, version)
    }
}

fn clean_tag(key: &str, value: &str) -> Tag {
    let key = sanitize_key(key);
    let value = if value.chars().count() > MAX_TAG_VALUE_LEN {
        tracing::warn!(tag = %key, len = value.len(), "tag value over 8000 chars cut to fit MLflow");
        value.chars().take(MAX_TAG_VALUE_LEN).collect()
    } else {
        value.to_string()
    };
    Tag { key, value }
}

/// Every file under `dir` with its `/`-separated relative path, sorted.
fn walk_files(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| TrackingError::io(format!("listing {}", d.display()), e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| TrackingError::io(format!("listing {}", d.display()), e))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// A unique temporary file whose name ends like `artifact_path`'s file name.
fn tempfile_path(artifact_path: &str) -> std::path::PathBuf {
    let name = artifact_path.rsplit('/').next().unwrap_or("artifact");
    std::env::temp_dir().join(format!("binance-ml-{}-{name}", limits::new_id()))
}

/// Models logged by this process, by (store, run): what evaluation links its metrics to
/// without asking a server, which a journaling process cannot.
static LOGGED_MODELS: std::sync::Mutex<Vec<(String, String, String)>> =
    std::sync::Mutex::new(Vec::new());

fn remember_model(store: &str, run_id: &str, model_id: &str) {
    let mut models = LOGGED_MODELS.lock().unwrap_or_else(|p| p.into_inner());
    models.retain(|(s, r, _)| !(s == store && r == run_id));
    models.push((store.to_owned(), run_id.to_owned(), model_id.to_owned()));
}

fn remembered_model(store: &str, run_id: &str) -> Option<String> {
    let models = LOGGED_MODELS.lock().unwrap_or_else(|p| p.into_inner());
    models
        .iter()
        .find(|(s, r, _)| s == store && r == run_id)
        .map(|(_, _, m)| m.clone())
}

/// The OS account running this process: `$USER`, `$LOGNAME`, else the password database's
/// name for the effective uid (cron jobs and containers often set neither variable).
fn os_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    let uid = unsafe { libc::geteuid() };
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live local of the size passed; the name is read
    // before `buf` goes out of scope.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() && !pw.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name points at a NUL-terminated name in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    format!("uid {uid}")
}

/// Ends FAILED every run a dead process of this work directory left open, and returns how
/// many it ended. A run that cannot be ended now (its server refuses) keeps its record for
/// the next command; the failure is logged, never fatal.
pub fn fail_dead_runs(settings: &TrackingSettings) -> usize {
    let mut ended = 0;
    for (path, run) in left_by_dead_processes(&settings.workdir) {
        match fail_run(settings, &run) {
            Ok(true) => {
                tracing::warn!(run_id = %run.run_id, key = %run.key, pid = run.pid, "marked FAILED a run its killed process left RUNNING");
                ended += 1;
                let _ = std::fs::remove_file(&path);
            }
            Ok(false) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                tracing::warn!(run_id = %run.run_id, key = %run.key, error = %e, "could not mark a dead process's run FAILED; trying again next time")
            }
        }
    }
    ended
}

/// Ends `run` FAILED; `Ok(false)` when there is nothing to end (a create that never
/// happened, a run that ended after all).
fn fail_run(settings: &TrackingSettings, run: &OpenRun) -> Result<bool> {
    let mut settings = settings.clone();
    if split_userinfo(settings.tracking_uri.trim()).0 != run.tracking_uri {
        // Recorded under another URI: that store, with the environment's credentials.
        settings.tracking_uri = run.tracking_uri.clone();
        settings.credentials = None;
    }
    // A journaled run exists only as a client id: its end goes to the journal as well, and
    // reaches the server after the run itself (`tracking sync`).
    settings.offline |= run.journaled;
    let tracker = Tracker::open(&settings)?;
    let run_id = if run.run_id.is_empty() {
        if run.journaled {
            // Its create, if it happened, is in the journal under the key: end it there too.
            run.key.clone()
        } else {
            let found = tracker.search_runs(
                std::slice::from_ref(&run.experiment_id),
                &client_id_filter(&run.key),
                &[],
            )?;
            match found.into_iter().next() {
                Some(r) if r.info.status == RunStatus::Running => r.info.run_id,
                _ => return Ok(false),
            }
        }
    } else if run.journaled {
        run.run_id.clone()
    } else {
        // Killed between ending the run and forgetting its record: it stays as it ended.
        match tracker.get_run(&run.run_id) {
            Ok(r) if r.info.status != RunStatus::Running => return Ok(false),
            Err(TrackingError::NotFound { .. }) => return Ok(false),
            _ => run.run_id.clone(),
        }
    };
    tracker.end_run(&run_id, RunStatus::Failed)?;
    Ok(true)
}
