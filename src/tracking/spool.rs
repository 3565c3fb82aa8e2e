//! The spool: the REST store plus a local journal, and [`sync`], which replays it.
//!
//! While the server answers, every operation goes straight to it. The first time it is
//! unreachable (connection refused/reset, timeouts, 429/502/503/504 after all retries), or
//! from the start with `offline`, the store switches to journaling for the rest of the
//! process — switching back mid-run could let a later "run FINISHED" overtake journaled
//! metrics. Journaled objects get client-generated ids; artifacts are copied into the spool.
//!
//! Layout of the spool directory:
//! ```text
//! journal-<ms>-<id>.jsonl        one operation per line {"seq":N,"op":...}, fsync'd
//! journal-<ms>-<id>.jsonl.done   seqs already replayed, one per line, fsync'd
//! ids.jsonl                      {"local":..,"server":..}: client id -> server id
//! blobs/<id>                     copies of spooled artifact files
//! synced/                        fully replayed journals, kept for audit
//! ```
//! Replay is idempotent: done seqs are skipped and ids resolved through `ids.jsonl`; a
//! journaled run/model carries a `binance_ml.client_id` tag so a create whose answer was
//! lost is found instead of repeated, and MLflow's SQL store ignores identical metric points.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::error::{Result, TrackingError};
use super::limits::{Batch, new_id, now_ms};
use super::rest::RestStore;
use super::types::*;
use super::{Store, StoreKind, TrackingSettings, store_kind};

/// One journaled operation; ids may be client ids resolved at replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Get-or-create an experiment by name.
    CreateExperiment {
        /// Client id.
        local_id: String,
        /// Name.
        name: String,
        /// Tags.
        tags: Vec<Tag>,
    },
    /// Set an experiment tag.
    SetExperimentTag {
        /// Experiment id.
        experiment_id: String,
        /// Tag.
        tag: Tag,
    },
    /// Create a run.
    CreateRun {
        /// Client id.
        local_id: String,
        /// Request.
        req: CreateRun,
    },
    /// Set a run's status/end time.
    UpdateRun {
        /// Run id.
        run_id: String,
        /// Status.
        status: RunStatus,
        /// End time.
        end_time: Option<i64>,
    },
    /// One log-batch request.
    LogBatch {
        /// Run id.
        run_id: String,
        /// Entries.
        batch: Batch,
    },
    /// Upload a spooled file as a run artifact.
    UploadArtifact {
        /// Run id.
        run_id: String,
        /// File name under `blobs/`.
        blob: String,
        /// Target artifact path.
        artifact_path: String,
    },
    /// Create a logged model.
    CreateLoggedModel {
        /// Client id.
        local_id: String,
        /// Request.
        req: CreateLoggedModel,
    },
    /// Upload a spooled file into a logged model.
    UploadModelFile {
        /// Model id.
        model_id: String,
        /// File name under `blobs/`.
        blob: String,
        /// Target path.
        path: String,
    },
    /// Mark a logged model READY / UPLOAD_FAILED.
    FinalizeLoggedModel {
        /// Model id.
        model_id: String,
        /// READY?
        ready: bool,
    },
    /// Link a model as a run output.
    LinkModelOutput {
        /// Run id.
        run_id: String,
        /// Model id.
        model_id: String,
        /// Step.
        step: i64,
    },
    /// Record datasets and logged models as inputs of a run.
    LogInputs {
        /// Run id.
        run_id: String,
        /// Datasets.
        datasets: Vec<DatasetInput>,
        /// Logged model ids.
        models: Vec<String>,
    },
    /// Create a registered model unless it exists.
    EnsureRegisteredModel {
        /// Name.
        name: String,
    },
    /// Register a model version.
    CreateModelVersion {
        /// Client id of the version.
        local_id: String,
        /// Registered model name.
        name: String,
        /// Model id.
        model_id: String,
        /// Run id.
        run_id: String,
    },
    /// Point an alias at a version.
    SetAlias {
        /// Registered model name.
        name: String,
        /// Alias.
        alias: String,
        /// Version (or its client id).
        version: String,
    },
}

impl Op {
    /// The operation's name in journals and reports.
    fn name(&self) -> &'static str {
        match self {
            Op::CreateExperiment { .. } => "create_experiment",
            Op::SetExperimentTag { .. } => "set_experiment_tag",
            Op::CreateRun { .. } => "create_run",
            Op::UpdateRun { .. } => "update_run",
            Op::LogBatch { .. } => "log_batch",
            Op::UploadArtifact { .. } => "upload_artifact",
            Op::CreateLoggedModel { .. } => "create_logged_model",
            Op::UploadModelFile { .. } => "upload_model_file",
            Op::FinalizeLoggedModel { .. } => "finalize_logged_model",
            Op::LinkModelOutput { .. } => "link_model_output",
            Op::LogInputs { .. } => "log_inputs",
            Op::EnsureRegisteredModel { .. } => "ensure_registered_model",
            Op::CreateModelVersion { .. } => "create_model_version",
            Op::SetAlias { .. } => "set_alias",
        }
    }

    /// The client id this operation creates, if it is a create.
    fn creates(&self) -> Option<&str> {
        match self {
            Op::CreateExperiment { local_id, .. }
            | Op::CreateRun { local_id, .. }
            | Op::CreateLoggedModel { local_id, .. }
            | Op::CreateModelVersion { local_id, .. } => Some(local_id),
            _ => None,
        }
    }

    /// The ids this operation refers to (experiment, run, model, version).
    fn refers_to(&self) -> Vec<&str> {
        match self {
            Op::CreateExperiment { .. } | Op::EnsureRegisteredModel { .. } => Vec::new(),
            Op::SetExperimentTag { experiment_id, .. } => vec![experiment_id],
            Op::CreateRun { req, .. } => vec![&req.experiment_id],
            Op::UpdateRun { run_id, .. } | Op::UploadArtifact { run_id, .. } => vec![run_id],
            // Metrics may score a logged model that is itself journaled.
            Op::LogBatch { run_id, batch } => std::iter::once(run_id.as_str())
                .chain(batch.metrics.iter().filter_map(|m| m.model_id.as_deref()))
                .collect(),
            Op::LogInputs { run_id, models, .. } => std::iter::once(run_id.as_str())
                .chain(models.iter().map(String::as_str))
                .collect(),
            Op::CreateLoggedModel { req, .. } => vec![&req.experiment_id, &req.source_run_id],
            Op::UploadModelFile { model_id, .. } | Op::FinalizeLoggedModel { model_id, .. } => {
                vec![model_id]
            }
            Op::LinkModelOutput {
                run_id, model_id, ..
            }
            | Op::CreateModelVersion {
                run_id, model_id, ..
            } => vec![run_id, model_id],
            Op::SetAlias { version, .. } => vec![version],
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    seq: u64,
    #[serde(flatten)]
    op: Op,
}

/// A client id and the server id it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// The client id (what a journaling command printed).
    pub local: String,
    /// The server's id.
    pub server: String,
}

struct Journal {
    file: File,
    next_seq: u64,
    // `<journal>.lock` holds our pid while we may still append; `sync` leaves such a
    // journal alone so it never archives a file that is still being written.
    lock: PathBuf,
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.lock);
    }
}

fn lock_path(journal: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", journal.display()))
}

/// Whether the process that wrote `journal`'s lock file is still running (Linux `/proc`).
fn writer_alive(journal: &Path) -> bool {
    fs::read_to_string(lock_path(journal))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Servers this process found unreachable: a spool opened later (the next stage of the same
/// command) journals at once instead of waiting out its own retries — one outage, one wait.
static UNREACHABLE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether this process journaled anything: the run and version ids it printed are then
/// provisional client ids until `tracking sync` (which prints what each became).
static JOURNALED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process wrote to a journal (ids it reported are provisional).
pub fn journaled_in_this_process() -> bool {
    JOURNALED.load(std::sync::atomic::Ordering::SeqCst)
}

fn unreachable_servers() -> std::sync::MutexGuard<'static, Vec<String>> {
    UNREACHABLE.lock().unwrap_or_else(|p| p.into_inner())
}

struct State {
    online: bool,
    journal: Option<Journal>,
    local_experiments: HashMap<String, String>,
}

/// REST store with a journal to fall back on (see module docs).
pub struct SpoolStore {
    rest: RestStore,
    dir: PathBuf,
    state: Mutex<State>,
}

fn append_synced(file: &mut File, line: &str, path: &Path) -> Result<()> {
    file.write_all(line.as_bytes())
        .and_then(|_| file.write_all(b"\n"))
        .and_then(|_| file.sync_data())
        .map_err(|e| TrackingError::io(format!("appending to {}", path.display()), e))
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrackingError::io(format!("opening {}", path.display()), e))
}

impl SpoolStore {
    /// Wraps `rest`, journaling under `dir`; `offline` journals from the start.
    pub fn open(rest: RestStore, dir: &Path, offline: bool) -> Result<Self> {
        fs::create_dir_all(dir.join("blobs"))
            .map_err(|e| TrackingError::io(format!("creating the spool {}", dir.display()), e))?;
        let known_down = unreachable_servers().contains(&rest.describe());
        if known_down && !offline {
            tracing::info!(server = %rest.describe(), "MLflow was unreachable earlier in this command: journaling");
        }
        Ok(SpoolStore {
            rest,
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                online: !offline && !known_down,
                journal: None,
                local_experiments: HashMap::new(),
            }),
        })
    }

    /// Whether operations still go to the server (false once journaling).
    pub fn is_online(&self) -> bool {
        self.state.lock().expect("spool state poisoned").online
    }

    /// Journals from now on, and tells later spools of this process to do the same.
    fn go_offline(&self, st: &mut State, error: &TrackingError) {
        tracing::warn!(error = %error, "switching to the local MLflow spool");
        st.online = false;
        let mut down = unreachable_servers();
        let server = self.rest.describe();
        if !down.contains(&server) {
            down.push(server);
        }
    }

    fn append(&self, st: &mut State, op: &Op) -> Result<()> {
        JOURNALED.store(true, std::sync::atomic::Ordering::SeqCst);
        if st.journal.is_none() {
            let path = self
                .dir
                .join(format!("journal-{:013}-{}.jsonl", now_ms(), &new_id()[..8]));
            let lock = lock_path(&path);
            fs::write(&lock, std::process::id().to_string())
                .map_err(|e| TrackingError::io(format!("writing {}", lock.display()), e))?;
            st.journal = Some(Journal {
                file: open_append(&path)?,
                next_seq: 0,
                lock,
            });
            tracing::warn!(journal = %path.display(), "MLflow unavailable: journaling; replay with `binance-ml tracking sync`");
        }
        let j = st.journal.as_mut().expect("journal just opened");
        let line = serde_json::to_string(&Entry {
            seq: j.next_seq,
            op: op.clone(),
        })
        .map_err(|e| TrackingError::Corrupt {
            context: "encoding a journal entry".into(),
            message: e.to_string(),
        })?;
        append_synced(&mut j.file, &line, &self.dir)?;
        j.next_seq += 1;
        Ok(())
    }

    fn blob(&self, local: &Path) -> Result<String> {
        let name = new_id();
        super::file_store::copy_file(local, &self.dir.join("blobs").join(&name))?;
        Ok(name)
    }

    /// Runs `online` while the server answers; otherwise (or once it turns out unreachable)
    /// journals the op `offline` builds and returns its local result.
    fn write<T>(
        &self,
        online: impl FnOnce(&RestStore) -> Result<T>,
        offline: impl FnOnce(&Self, &mut State) -> Result<(Op, T)>,
    ) -> Result<T> {
        let mut st = self.state.lock().expect("spool state poisoned");
        if st.online {
            match online(&self.rest) {
                Err(e) if e.is_unreachable() => self.go_offline(&mut st, &e),
                other => return other,
            }
        }
        let (op, value) = offline(self, &mut st)?;
        self.append(&mut st, &op)?;
        Ok(value)
    }

    fn read<T>(&self, f: impl FnOnce(&RestStore) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock().expect("spool state poisoned");
        if st.online {
            let answer = f(&self.rest);
            if let Err(e) = &answer
                && e.is_unreachable()
            {
                self.go_offline(&mut st, e);
            }
            return answer;
        }
        Err(TrackingError::Unreachable {
            url: self.rest.describe(),
            attempts: 0,
            reason: format!(
                "offline: writes are journaled in {} until `binance-ml tracking sync`; reads \
                 need the server",
                self.dir.display()
            ),
            timed_out: false,
        })
    }
}

impl Store for SpoolStore {
    fn describe(&self) -> String {
        format!("{} (spool {})", self.rest.describe(), self.dir.display())
    }

    fn experiment_by_name(&self, name: &str) -> Result<Option<Experiment>> {
        let mut st = self.state.lock().expect("spool state poisoned");
        if st.online {
            match self.rest.experiment_by_name(name) {
                Err(e) if e.is_unreachable() => self.go_offline(&mut st, &e),
                other => return other,
            }
        }
        Ok(st.local_experiments.get(name).map(|id| Experiment {
            experiment_id: id.clone(),
            name: name.to_string(),
            lifecycle_stage: "active".into(),
            ..Experiment::default()
        }))
    }

    fn create_experiment(&self, name: &str, tags: &[Tag]) -> Result<String> {
        self.write(
            |r| r.create_experiment(name, tags),
            |_, st| {
                let id = new_id();
                st.local_experiments.insert(name.to_string(), id.clone());
                Ok((
                    Op::CreateExperiment {
                        local_id: id.clone(),
                        name: name.to_string(),
                        tags: tags.to_vec(),
                    },
                    id,
                ))
            },
        )
    }

    fn set_experiment_tag(&self, experiment_id: &str, tag: &Tag) -> Result<()> {
        self.write(
            |r| r.set_experiment_tag(experiment_id, tag),
            |_, _| {
                Ok((
                    Op::SetExperimentTag {
                        experiment_id: experiment_id.into(),
                        tag: tag.clone(),
                    },
                    (),
                ))
            },
        )
    }

    fn create_run(&self, req: &CreateRun) -> Result<RunInfo> {
        // The key goes with the first attempt, so a create the server applied while the answer
        // was lost is found again when the journal is replayed.
        let mut req = req.clone();
        let id = client_id(&mut req.tags, new_id);
        self.write(
            |r| r.create_run(&req),
            |_, _| {
                let info = RunInfo {
                    run_id: id.clone(),
                    experiment_id: req.experiment_id.clone(),
                    run_name: req.run_name.clone(),
                    user_id: req.user_id.clone(),
                    status: RunStatus::Running,
                    start_time: Some(req.start_time),
                    lifecycle_stage: "active".into(),
                    ..RunInfo::default()
                };
                Ok((
                    Op::CreateRun {
                        local_id: id,
                        req: req.clone(),
                    },
                    info,
                ))
            },
        )
    }

    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()> {
        self.write(
            |r| r.update_run(run_id, status, end_time),
            |_, _| {
                Ok((
                    Op::UpdateRun {
                        run_id: run_id.into(),
                        status,
                        end_time,
                    },
                    (),
                ))
            },
        )
    }

    fn get_run(&self, run_id: &str) -> Result<Run> {
        self.read(|r| r.get_run(run_id))
    }

    fn search_runs(&self, req: &SearchRuns) -> Result<RunsPage> {
        self.read(|r| r.search_runs(req))
    }

    fn log_batch(&self, run_id: &str, batch: &Batch) -> Result<()> {
        self.write(
            |r| r.log_batch(run_id, batch),
            |_, _| {
                Ok((
                    Op::LogBatch {
                        run_id: run_id.into(),
                        batch: batch.clone(),
                    },
                    (),
                ))
            },
        )
    }

    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>> {
        self.read(|r| r.metric_history(run_id, key))
    }

    fn upload_artifact(&self, run_id: &str, local: &Path, artifact_path: &str) -> Result<()> {
        self.write(
            |r| r.upload_artifact(run_id, local, artifact_path),
            |s, _| {
                Ok((
                    Op::UploadArtifact {
                        run_id: run_id.into(),
                        blob: s.blob(local)?,
                        artifact_path: artifact_path.into(),
                    },
                    (),
                ))
            },
        )
    }

    fn list_artifacts(&self, run_id: &str, path: &str) -> Result<Vec<FileInfo>> {
        self.read(|r| r.list_artifacts(run_id, path))
    }

    fn download_artifact(&self, run_id: &str, artifact_path: &str, dest: &Path) -> Result<()> {
        self.read(|r| r.download_artifact(run_id, artifact_path, dest))
    }

    fn create_logged_model(&self, req: &CreateLoggedModel) -> Result<LoggedModel> {
        let mut req = req.clone();
        let id = client_id(&mut req.tags, || format!("m-{}", new_id()));
        self.write(
            |r| r.create_logged_model(&req),
            |_, _| {
                let model = LoggedModel {
                    model_id: id.clone(),
                    experiment_id: req.experiment_id.clone(),
                    name: req.name.clone(),
                    status: "LOGGED_MODEL_PENDING".into(),
                    source_run_id: req.source_run_id.clone(),
                    tags: req.tags.clone(),
                    params: req.params.clone(),
                    ..LoggedModel::default()
                };
                Ok((
                    Op::CreateLoggedModel {
                        local_id: id,
                        req: req.clone(),
                    },
                    model,
                ))
            },
        )
    }

    fn upload_model_file(&self, model_id: &str, local: &Path, path: &str) -> Result<()> {
        self.write(
            |r| r.upload_model_file(model_id, local, path),
            |s, _| {
                Ok((
                    Op::UploadModelFile {
                        model_id: model_id.into(),
                        blob: s.blob(local)?,
                        path: path.into(),
                    },
                    (),
                ))
            },
        )
    }

    fn finalize_logged_model(&self, model_id: &str, ready: bool) -> Result<()> {
        self.write(
            |r| r.finalize_logged_model(model_id, ready),
            |_, _| {
                Ok((
                    Op::FinalizeLoggedModel {
                        model_id: model_id.into(),
                        ready,
                    },
                    (),
                ))
            },
        )
    }

    fn link_model_output(&self, run_id: &str, model_id: &str, step: i64) -> Result<()> {
        self.write(
            |r| r.link_model_output(run_id, model_id, step),
            |_, _| {
                Ok((
                    Op::LinkModelOutput {
                        run_id: run_id.into(),
                        model_id: model_id.into(),
                        step,
                    },
                    (),
                ))
            },
        )
    }

    fn search_logged_models(
        &self,
        experiment_ids: &[String],
        filter: &str,
    ) -> Result<Vec<LoggedModel>> {
        self.read(|r| r.search_logged_models(experiment_ids, filter))
    }

    fn models_of_run(&self, run_id: &str) -> Result<Vec<String>> {
        self.read(|r| r.models_of_run(run_id))
    }

    fn log_inputs(&self, run_id: &str, datasets: &[DatasetInput], models: &[String]) -> Result<()> {
        self.write(
            |r| r.log_inputs(run_id, datasets, models),
            |_, _| {
                Ok((
                    Op::LogInputs {
                        run_id: run_id.into(),
                        datasets: datasets.to_vec(),
                        models: models.to_vec(),
                    },
                    (),
                ))
            },
        )
    }

    fn ensure_registered_model(&self, name: &str) -> Result<()> {
        self.write(
            |r| r.ensure_registered_model(name),
            |_, _| Ok((Op::EnsureRegisteredModel { name: name.into() }, ())),
        )
    }

    fn create_model_version(
        &self,
        name: &str,
        model_id: &str,
        run_id: &str,
    ) -> Result<ModelVersion> {
        self.write(
            |r| r.create_model_version(name, model_id, run_id),
            |_, _| {
                let id = format!("local-{}", new_id());
                let version = ModelVersion {
                    name: name.into(),
                    version: id.clone(),
                    source: format!("models:/{model_id}"),
                    run_id: run_id.into(),
                    status: "PENDING_SYNC".into(),
                    aliases: Vec::new(),
                };
                Ok((
                    Op::CreateModelVersion {
                        local_id: id,
                        name: name.into(),
                        model_id: model_id.into(),
                        run_id: run_id.into(),
                    },
                    version,
                ))
            },
        )
    }

    fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        self.write(
            |r| r.set_alias(name, alias, version),
            |_, _| {
                Ok((
                    Op::SetAlias {
                        name: name.into(),
                        alias: alias.into(),
                        version: version.into(),
                    },
                    (),
                ))
            },
        )
    }

    fn version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion> {
        self.read(|r| r.version_by_alias(name, alias))
    }

    fn model_version(&self, name: &str, version: &str) -> Result<ModelVersion> {
        self.read(|r| r.model_version(name, version))
    }

    fn supports_models(&self) -> bool {
        true
    }

    fn journaling(&self) -> bool {
        !self.is_online()
    }
}

/// What a [`sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Journals looked at.
    pub journals: usize,
    /// Journals fully replayed (moved to `synced/`).
    pub journals_completed: usize,
    /// Journals skipped because the process writing them is still running.
    pub journals_busy: usize,
    /// Operations sent now.
    pub ops_replayed: usize,
    /// Operations skipped because an earlier sync did them.
    pub ops_already_done: usize,
    /// Runs created on the server now.
    pub runs_created: usize,
    /// Metric points sent now.
    pub metrics: usize,
    /// Params sent now.
    pub params: usize,
    /// Tags sent now (log-batch tags).
    pub tags: usize,
    /// Artifact and model files uploaded now.
    pub files: usize,
    /// Operations the server refused now (not proven applied before): kept in their journal
    /// for the next sync, while everything else went on.
    pub failed: Vec<FailedOp>,
    /// Operations left for the next sync because they refer to a create that failed.
    pub ops_waiting_on_failed: usize,
    /// Client id -> server id of every entity created (or found already applied) now: the
    /// provisional ids a journaling command printed, and what they became.
    pub ids: Vec<IdMapping>,
}

/// One operation `sync` could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedOp {
    /// The journal file.
    pub journal: String,
    /// Its sequence number there.
    pub seq: u64,
    /// The operation, e.g. `log_batch`.
    pub op: String,
    /// What the server said.
    pub error: String,
}

/// Replays every journal in `spool_dir` to the server of `settings.tracking_uri`.
///
/// Idempotent: a second call finds everything done and sends nothing. On an error the work
/// done so far is recorded and the next call resumes after it.
pub fn sync(spool_dir: &Path, settings: &TrackingSettings) -> Result<SyncReport> {
    let uri = match store_kind(&settings.tracking_uri, &settings.workdir)? {
        StoreKind::Rest(uri) => uri,
        StoreKind::File(_) => {
            return Err(TrackingError::InvalidInput(
                "`tracking sync` needs mlflow.tracking_uri to be an http(s):// MLflow server"
                    .into(),
            ));
        }
    };
    sync_to(&settings.rest_store(&uri)?, spool_dir)
}

/// [`sync`] through an explicit store.
pub fn sync_to(rest: &RestStore, spool_dir: &Path) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    if !spool_dir.exists() {
        return Ok(report);
    }
    let ids_path = spool_dir.join("ids.jsonl");
    let mut ids = read_ids(&ids_path)?;
    let mut ids_file = open_append(&ids_path)?;
    let mut journals: Vec<PathBuf> = fs::read_dir(spool_dir)
        .map_err(|e| TrackingError::io(format!("listing {}", spool_dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".jsonl"))
        })
        .collect();
    journals.sort();
    // Journals replay oldest first; one that needs an id another journal creates (a model
    // version registered by a later stage of the same job) waits and is retried after the
    // others, until a pass makes no progress.
    let mut pending = journals;
    let mut revisit = std::collections::HashSet::new();
    // Client ids whose create failed in this sync: what refers to them waits too.
    let mut failed_ids = HashSet::new();
    loop {
        let mut waiting = Vec::new();
        let mut progressed = false;
        for journal in pending {
            report.journals += 1;
            if writer_alive(&journal) {
                tracing::warn!(journal = %journal.display(), "journal still open by a running process; left for a later sync");
                report.journals_busy += 1;
                continue;
            }
            let entries = read_journal(&journal)?;
            let done_path = PathBuf::from(format!("{}.done", journal.display()));
            let done = read_done(&done_path)?;
            let mut done_file = open_append(&done_path)?;
            let mut blocked = false;
            let mut incomplete = false;
            for entry in &entries {
                if done.contains(&entry.seq) {
                    // Done by an earlier sync (not by this one's previous pass).
                    if !revisit.contains(&journal) {
                        report.ops_already_done += 1;
                    }
                    continue;
                }
                let mut replay = Replay {
                    rest,
                    spool_dir,
                    ids: &mut ids,
                    ids_file: &mut ids_file,
                    ids_path: &ids_path,
                    report: &mut report,
                };
                if entry
                    .op
                    .refers_to()
                    .iter()
                    .any(|id| failed_ids.contains(*id))
                {
                    report.ops_waiting_on_failed += 1;
                    incomplete = true;
                    if let Some(id) = entry.op.creates() {
                        failed_ids.insert(id.to_string());
                    }
                    continue;
                }
                if replay.waits_for_another_journal(&entry.op) {
                    blocked = true;
                    break;
                }
                match replay.apply(&entry.op) {
                    Ok(()) => {
                        append_synced(&mut done_file, &entry.seq.to_string(), &done_path)?;
                        report.ops_replayed += 1;
                        progressed = true;
                    }
                    // The server is gone or refuses us: stop here; the next sync resumes.
                    Err(e @ (TrackingError::Unreachable { .. } | TrackingError::Auth { .. })) => {
                        return Err(e);
                    }
                    // Refused, and not found applied before: reported and kept; the rest of
                    // the spool must not wait behind one operation.
                    Err(e) => {
                        tracing::warn!(journal = %journal.display(), seq = entry.seq, op = entry.op.name(), error = %e, "operation not applied; kept for the next sync");
                        report.failed.push(FailedOp {
                            journal: journal.display().to_string(),
                            seq: entry.seq,
                            op: entry.op.name().into(),
                            error: e.to_string(),
                        });
                        if let Some(id) = entry.op.creates() {
                            failed_ids.insert(id.to_string());
                        }
                        incomplete = true;
                    }
                }
            }
            if blocked {
                report.journals -= 1;
                revisit.insert(journal.clone());
                waiting.push(journal);
                continue;
            }
            if incomplete {
                continue;
            }
            // Everything replayed: archive the journal, drop its blob copies.
            let synced = spool_dir.join("synced");
            fs::create_dir_all(&synced)
                .map_err(|e| TrackingError::io(format!("creating {}", synced.display()), e))?;
            for e in &entries {
                if let Op::UploadArtifact { blob, .. } | Op::UploadModelFile { blob, .. } = &e.op {
                    let _ = fs::remove_file(spool_dir.join("blobs").join(blob));
                }
            }
            let _ = fs::remove_file(lock_path(&journal));
            for p in [&journal, &done_path] {
                let target = synced.join(p.file_name().unwrap_or_default());
                fs::rename(p, &target)
                    .map_err(|e| TrackingError::io(format!("archiving {}", p.display()), e))?;
            }
            report.journals_completed += 1;
            progressed = true;
        }
        if waiting.is_empty() {
            break;
        }
        if !progressed {
            return Err(TrackingError::InvalidInput(format!(
                "{} journal(s) wait for a model version no journal creates: {}",
                waiting.len(),
                waiting
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        pending = waiting;
    }
    if report.failed.is_empty() && report.ops_waiting_on_failed == 0 && report.journals_busy == 0 {
        // Every journal is on the server and every client id resolved: a spool this process
        // opens from now on may talk to the server again.
        unreachable_servers().retain(|s| *s != rest.describe());
    }
    Ok(report)
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    match File::open(path) {
        Ok(f) => BufReader::new(f)
            .lines()
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| TrackingError::io(format!("reading {}", path.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TrackingError::io(format!("reading {}", path.display()), e)),
    }
}

fn read_journal(path: &Path) -> Result<Vec<Entry>> {
    let lines = read_lines(path)?;
    let n = lines.len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => out.push(e),
            // A crash mid-append leaves a torn last line; that op was never acknowledged.
            Err(_) if i + 1 == n => {
                tracing::warn!(journal = %path.display(), "ignoring a torn last journal line")
            }
            Err(e) => {
                return Err(TrackingError::Corrupt {
                    context: format!("journal {} line {}", path.display(), i + 1),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn read_done(path: &Path) -> Result<HashSet<u64>> {
    Ok(read_lines(path)?
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

fn read_ids(path: &Path) -> Result<HashMap<String, String>> {
    Ok(read_lines(path)?
        .iter()
        .filter_map(|l| serde_json::from_str::<IdMapping>(l).ok())
        .map(|m| (m.local, m.server))
        .collect())
}

/// Replays one operation, resolving client ids and recording new ones.
struct Replay<'a> {
    rest: &'a RestStore,
    spool_dir: &'a Path,
    ids: &'a mut HashMap<String, String>,
    ids_file: &'a mut File,
    ids_path: &'a Path,
    report: &'a mut SyncReport,
}

impl Replay<'_> {
    fn id(&self, id: &str) -> String {
        self.ids.get(id).cloned().unwrap_or_else(|| id.to_string())
    }

    fn record(&mut self, local: &str, server: &str) -> Result<()> {
        let line = serde_json::to_string(&IdMapping {
            local: local.into(),
            server: server.into(),
        })
        .unwrap_or_default();
        append_synced(self.ids_file, &line, self.ids_path)?;
        self.ids.insert(local.into(), server.into());
        self.report.ids.push(IdMapping {
            local: local.into(),
            server: server.into(),
        });
        Ok(())
    }

    // Tag values can hold client ids (parent run, consumed input runs).
    fn tags(&self, tags: &[Tag]) -> Vec<Tag> {
        tags.iter()
            .map(|t| Tag::new(t.key.clone(), self.id(&t.value)))
            .collect()
    }

    /// Whether `op` refers to a model version another journal creates and that is not
    /// replayed yet (a process journals its stages through several trackers).
    fn waits_for_another_journal(&self, op: &Op) -> bool {
        matches!(op, Op::SetAlias { version, .. }
            if version.starts_with("local-") && !self.ids.contains_key(version))
    }

    fn apply(&mut self, op: &Op) -> Result<()> {
        let rest = self.rest;
        match op {
            Op::CreateExperiment {
                local_id,
                name,
                tags,
            } => {
                if self.ids.contains_key(local_id) {
                    return Ok(());
                }
                let id = match rest.experiment_by_name(name)? {
                    Some(e) if e.lifecycle_stage == "deleted" => {
                        return Err(TrackingError::ExperimentDeleted {
                            name: name.clone(),
                            experiment_id: e.experiment_id,
                        });
                    }
                    Some(e) => e.experiment_id,
                    None => rest.create_experiment(name, tags)?,
                };
                self.record(local_id, &id)
            }
            Op::SetExperimentTag { experiment_id, tag } => {
                rest.set_experiment_tag(&self.id(experiment_id), tag)
            }
            Op::CreateRun { local_id, req } => {
                if self.ids.contains_key(local_id) {
                    return Ok(());
                }
                let experiment_id = self.id(&req.experiment_id);
                let server_id = match rest.find_run(&experiment_id, local_id)? {
                    Some(run) => run.run_id,
                    None => {
                        let mut tags = self.tags(&req.tags);
                        client_id(&mut tags, || local_id.clone());
                        self.report.runs_created += 1;
                        rest.create_run(&CreateRun {
                            experiment_id,
                            tags,
                            ..req.clone()
                        })?
                        .run_id
                    }
                };
                self.record(local_id, &server_id)
            }
            Op::UpdateRun {
                run_id,
                status,
                end_time,
            } => rest.update_run(&self.id(run_id), *status, *end_time),
            Op::LogBatch { run_id, batch } => {
                let batch = Batch {
                    tags: self.tags(&batch.tags),
                    metrics: batch
                        .metrics
                        .iter()
                        .map(|m| Metric {
                            model_id: m.model_id.as_deref().map(|id| self.id(id)),
                            ..m.clone()
                        })
                        .collect(),
                    ..batch.clone()
                };
                rest.log_batch(&self.id(run_id), &batch)?;
                self.report.metrics += batch.metrics.len();
                self.report.params += batch.params.len();
                self.report.tags += batch.tags.len();
                Ok(())
            }
            Op::UploadArtifact {
                run_id,
                blob,
                artifact_path,
            } => {
                rest.upload_artifact(
                    &self.id(run_id),
                    &self.spool_dir.join("blobs").join(blob),
                    artifact_path,
                )?;
                self.report.files += 1;
                Ok(())
            }
            Op::CreateLoggedModel { local_id, req } => {
                if self.ids.contains_key(local_id) {
                    return Ok(());
                }
                let experiment_id = self.id(&req.experiment_id);
                let server_id = match rest.find_logged_model(&experiment_id, local_id)? {
                    Some(m) => m.model_id,
                    None => {
                        let mut tags = self.tags(&req.tags);
                        client_id(&mut tags, || local_id.clone());
                        rest.create_logged_model(&CreateLoggedModel {
                            experiment_id,
                            source_run_id: self.id(&req.source_run_id),
                            tags,
                            ..req.clone()
                        })?
                        .model_id
                    }
                };
                self.record(local_id, &server_id)
            }
            Op::UploadModelFile {
                model_id,
                blob,
                path,
            } => {
                rest.upload_model_file(
                    &self.id(model_id),
                    &self.spool_dir.join("blobs").join(blob),
                    path,
                )?;
                self.report.files += 1;
                Ok(())
            }
            Op::FinalizeLoggedModel { model_id, ready } => {
                rest.finalize_logged_model(&self.id(model_id), *ready)
            }
            Op::LinkModelOutput {
                run_id,
                model_id,
                step,
            } => rest.link_model_output(&self.id(run_id), &self.id(model_id), *step),
            Op::LogInputs {
                run_id,
                datasets,
                models,
            } => {
                let models: Vec<String> = models.iter().map(|m| self.id(m)).collect();
                rest.log_inputs(&self.id(run_id), datasets, &models)
            }
            Op::EnsureRegisteredModel { name } => rest.ensure_registered_model(name),
            Op::CreateModelVersion {
                local_id,
                name,
                model_id,
                run_id,
            } => {
                if self.ids.contains_key(local_id) {
                    return Ok(());
                }
                let (model_id, run_id) = (self.id(model_id), self.id(run_id));
                let v = match rest.find_model_version(name, &model_id, &run_id)? {
                    Some(v) => v,
                    None => rest.create_model_version(name, &model_id, &run_id)?,
                };
                self.record(local_id, &v.version)
            }
            Op::SetAlias {
                name,
                alias,
                version,
            } => rest.set_alias(name, alias, &self.id(version)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_round_trip_and_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal-1.jsonl");
        let ops = [
            Op::LogBatch {
                run_id: "r".into(),
                batch: Batch {
                    metrics: vec![Metric::new("m", f64::NAN, 1, 2)],
                    ..Batch::default()
                },
            },
            Op::UpdateRun {
                run_id: "r".into(),
                status: RunStatus::Finished,
                end_time: Some(5),
            },
        ];
        let mut text = String::new();
        for (i, op) in ops.iter().enumerate() {
            text.push_str(
                &serde_json::to_string(&Entry {
                    seq: i as u64,
                    op: op.clone(),
                })
                .unwrap(),
            );
            text.push('\n');
        }
        text.push_str("{\"seq\":2,\"op\":\"log_ba");
        fs::write(&path, text).unwrap();
        let entries = read_journal(&path).unwrap();
        assert_eq!(entries.len(), 2);
        match &entries[0].op {
            Op::LogBatch { batch, .. } => assert!(batch.metrics[0].value.is_nan()),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(entries[1].op, ops[1]);
    }

    #[test]
    fn done_and_id_bookkeeping_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("j.done");
        let ids = dir.path().join("ids.jsonl");
        let mut f = open_append(&done).unwrap();
        append_synced(&mut f, "0", &done).unwrap();
        append_synced(&mut f, "3", &done).unwrap();
        assert_eq!(read_done(&done).unwrap(), HashSet::from([0, 3]));
        let mut f = open_append(&ids).unwrap();
        let line = serde_json::to_string(&IdMapping {
            local: "a".into(),
            server: "b".into(),
        })
        .unwrap();
        append_synced(&mut f, &line, &ids).unwrap();
        assert_eq!(
            read_ids(&ids).unwrap().get("a").map(String::as_str),
            Some("b")
        );
        assert!(read_done(&dir.path().join("missing")).unwrap().is_empty());
    }
}
