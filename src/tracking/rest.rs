//! The REST store: MLflow's `/api/2.0/mlflow` API plus the artifact proxy
//! (`mlflow-artifacts:` URIs -> `/api/2.0/mlflow-artifacts/artifacts/<path>`) and `file:`
//! artifact roots (a server started without `--serve-artifacts` on this machine).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::error::{Result, TrackingError};
use super::http::{Credentials, HttpClient, RetryPolicy, enc_path};
use super::limits::{Batch, backoff_delay, clean_artifact_path, new_id};
use super::types::*;
use super::{Store, file_store};

const API: &str = "/api/2.0/mlflow";
const ARTIFACTS_API: &str = "/api/2.0/mlflow-artifacts/artifacts";

/// An MLflow tracking server over HTTP(S).
#[derive(Debug)]
pub struct RestStore {
    http: HttpClient,
    // Artifact roots of runs and models seen so far, to avoid a GET before each upload.
    roots: Mutex<HashMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExperimentAnswer {
    experiment: Experiment,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateExperimentAnswer {
    experiment_id: String,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct RunAnswer {
    run: Run,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct HistoryAnswer {
    metrics: Vec<Metric>,
    next_page_token: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct FilesAnswer {
    files: Vec<FileInfo>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct ModelData {
    params: Vec<Param>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct ModelWire {
    info: LoggedModel,
    data: ModelData,
}
impl ModelWire {
    fn into_model(self) -> LoggedModel {
        LoggedModel {
            params: self.data.params,
            ..self.info
        }
    }
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct ModelAnswer {
    model: ModelWire,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct ModelsAnswer {
    models: Vec<ModelWire>,
    next_page_token: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct VersionAnswer {
    model_version: ModelVersion,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct VersionsAnswer {
    model_versions: Vec<ModelVersion>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct ModelOutput {
    model_id: String,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct RunOutputs {
    model_outputs: Vec<ModelOutput>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct RunWithOutputs {
    outputs: RunOutputs,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct RunOutputsAnswer {
    run: RunWithOutputs,
}
#[derive(Deserialize)]
struct Empty {}

/// Where an artifact root points.
enum ArtifactRoot {
    /// Through the server's artifact proxy, at this path under the proxy API.
    Proxy(String),
    /// A local directory.
    Local(PathBuf),
}

impl RestStore {
    /// A store talking to `uri`.
    pub fn new(
        uri: &str,
        creds: Option<Credentials>,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self> {
        Ok(RestStore {
            http: HttpClient::new(uri, creds, timeout, retry)?,
            roots: Mutex::new(HashMap::new()),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str, q: &[(&str, &str)]) -> Result<T> {
        self.http
            .json(Method::GET, &format!("{API}{path}"), q, None::<&()>)
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        self.http
            .json(Method::POST, &format!("{API}{path}"), &[], Some(body))
    }

    /// This store trying every request once: the look-ups between a create's attempts (the
    /// create's own loop does the waiting).
    fn single_attempt(&self) -> RestStore {
        RestStore {
            http: self.http.with_retries(0),
            roots: Mutex::new(HashMap::new()),
        }
    }

    /// A create that must not happen twice. The POST is sent one attempt at a time; after a
    /// failure that may have been applied with its answer lost (transport error, 5xx),
    /// `existing` looks the entity up by its client key, and only a look-up that finds nothing
    /// lets the POST go again. Waits between attempts follow the retry policy; after a timeout
    /// the look-up first waits one more timeout, as the server may still be working on the
    /// request. When the POST went out more than once, `remove_twins` deletes any other
    /// entity with the same key that a slow server created meanwhile.
    fn create_once<T>(
        &self,
        what: &str,
        send: impl Fn(&RestStore) -> Result<T>,
        existing: impl Fn(&RestStore) -> Result<Option<T>>,
        remove_twins: impl Fn(&RestStore, &T) -> Result<()>,
    ) -> Result<T> {
        let once = self.single_attempt();
        let policy = self.http.retry_policy();
        let mut attempts = 0;
        let mut unknown = false;
        let mut sends = 0;
        loop {
            let error = if unknown {
                match existing(&once) {
                    Ok(Some(v)) => {
                        tracing::info!(
                            what,
                            "MLflow applied a create whose answer was lost; found it by its key"
                        );
                        return Ok(v);
                    }
                    Ok(None) => {
                        unknown = false;
                        continue;
                    }
                    Err(e) => e,
                }
            } else {
                sends += 1;
                match send(&once) {
                    Ok(v) => {
                        if sends > 1 {
                            remove_twins(&once, &v)?;
                        }
                        return Ok(v);
                    }
                    Err(e) => {
                        unknown = e.may_have_been_applied();
                        if e.timed_out() {
                            std::thread::sleep(self.http.timeout());
                        }
                        e
                    }
                }
            };
            if !error.may_have_been_applied() || attempts >= policy.max_retries {
                return Err(match error {
                    TrackingError::Unreachable {
                        url,
                        reason,
                        timed_out,
                        ..
                    } => TrackingError::Unreachable {
                        url,
                        attempts: attempts + 1,
                        reason,
                        timed_out,
                    },
                    other => other,
                });
            }
            let delay = backoff_delay(attempts, policy.base, policy.cap);
            tracing::debug!(
                what,
                attempts,
                ?delay,
                "MLflow create failed; looking it up before retrying"
            );
            std::thread::sleep(delay);
            attempts += 1;
        }
    }

    /// The runs of `experiment_id` carrying client key `key` (normally one at most).
    fn runs_with_key(&self, experiment_id: &str, key: &str) -> Result<Vec<Run>> {
        let page = self.search_runs(&SearchRuns {
            experiment_ids: vec![experiment_id.to_string()],
            filter: client_id_filter(key),
            max_results: 100,
            ..SearchRuns::default()
        })?;
        Ok(page.runs)
    }

    /// The run of `experiment_id` carrying client key `key`, if the server has one.
    pub(crate) fn find_run(&self, experiment_id: &str, key: &str) -> Result<Option<RunInfo>> {
        Ok(self
            .runs_with_key(experiment_id, key)?
            .into_iter()
            .next()
            .map(|r| r.info))
    }

    /// Deletes the runs of `experiment_id` tagged `key` other than `keep` (twins a slow
    /// server created from a create that was sent twice).
    fn delete_run_twins(&self, experiment_id: &str, key: &str, keep: &str) -> Result<()> {
        let runs = self.runs_with_key(experiment_id, key)?;
        for twin in runs.iter().filter(|r| r.info.run_id != keep) {
            tracing::warn!(run_id = %twin.info.run_id, "deleting a run a retried create made twice");
            self.post::<Empty>("/runs/delete", &json!({"run_id": twin.info.run_id}))?;
        }
        Ok(())
    }

    /// The logged model of `experiment_id` carrying client key `key`, if any.
    pub(crate) fn find_logged_model(
        &self,
        experiment_id: &str,
        key: &str,
    ) -> Result<Option<LoggedModel>> {
        let found =
            self.search_logged_models(&[experiment_id.to_string()], &client_id_filter(key))?;
        Ok(found.into_iter().next())
    }

    /// The version of registered model `name` made from logged model `model_id` by `run_id`,
    /// if any (a logged model is registered once, so its source is the version's key).
    pub(crate) fn find_model_version(
        &self,
        name: &str,
        model_id: &str,
        run_id: &str,
    ) -> Result<Option<ModelVersion>> {
        // Run ids are hex, names may hold anything: filter by the run, match the rest here.
        let filter = format!("run_id = '{run_id}'");
        let a: VersionsAnswer = self.get(
            "/model-versions/search",
            &[("filter", &filter), ("max_results", "1000")],
        )?;
        let source = format!("models:/{model_id}");
        Ok(a.model_versions
            .into_iter()
            .find(|v| v.name == name && v.source == source))
    }

    /// Whether `model_id` is among `run_id`'s model outputs.
    fn has_model_output(&self, run_id: &str, model_id: &str) -> Result<bool> {
        Ok(self.models_of_run(run_id)?.iter().any(|m| m == model_id))
    }

    fn remember_root(&self, id: &str, uri: &str) {
        if !uri.is_empty() {
            self.roots
                .lock()
                .expect("artifact-root cache poisoned")
                .insert(id.to_string(), uri.to_string());
        }
    }

    fn cached_root(&self, id: &str) -> Option<String> {
        self.roots
            .lock()
            .expect("artifact-root cache poisoned")
            .get(id)
            .cloned()
    }

    fn run_root(&self, run_id: &str) -> Result<ArtifactRoot> {
        let uri = match self.cached_root(run_id) {
            Some(u) => u,
            None => self.get_run(run_id)?.info.artifact_uri,
        };
        self.resolve_root(&uri)
    }

    fn model_root(&self, model_id: &str) -> Result<ArtifactRoot> {
        let uri = match self.cached_root(model_id) {
            Some(u) => u,
            None => {
                let a: ModelAnswer = self.get(&format!("/logged-models/{model_id}"), &[])?;
                let m = a.model.into_model();
                self.remember_root(model_id, &m.artifact_uri);
                m.artifact_uri
            }
        };
        self.resolve_root(&uri)
    }

    fn resolve_root(&self, uri: &str) -> Result<ArtifactRoot> {
        if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts:/1/<run>/artifacts` or `mlflow-artifacts://host:port/1/...`;
            // either way the path after the authority is relative to the proxy root.
            let path = match rest.strip_prefix("//") {
                Some(r) => r.split_once('/').map(|x| x.1).unwrap_or(""),
                None => rest,
            };
            return Ok(ArtifactRoot::Proxy(path.trim_matches('/').to_string()));
        }
        if uri.starts_with("file:") || uri.starts_with('/') {
            return Ok(ArtifactRoot::Local(file_store::path_of_file_uri(uri)));
        }
        Err(TrackingError::Unsupported {
            operation: "artifact transfer",
            store: format!("artifact root {uri:?} of MLflow at {}", self.http.base()),
            hint: "start the server with --serve-artifacts so artifacts go through its proxy",
        })
    }

    fn upload_to(&self, root: ArtifactRoot, local: &Path, artifact_path: &str) -> Result<()> {
        let rel = clean_artifact_path(artifact_path)?;
        match root {
            ArtifactRoot::Proxy(base) => self.http.put_file(
                &format!("{ARTIFACTS_API}/{}", enc_path(&format!("{base}/{rel}"))),
                local,
            ),
            ArtifactRoot::Local(dir) => file_store::copy_file(local, &dir.join(rel)),
        }
    }
}

impl Store for RestStore {
    fn describe(&self) -> String {
        format!("the MLflow server at {}", self.http.base())
    }

    fn experiment_by_name(&self, name: &str) -> Result<Option<Experiment>> {
        match self.get::<ExperimentAnswer>("/experiments/get-by-name", &[("experiment_name", name)])
        {
            Ok(a) => Ok(Some(a.experiment)),
            Err(TrackingError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_experiment(&self, name: &str, tags: &[Tag]) -> Result<String> {
        match self.post::<CreateExperimentAnswer>(
            "/experiments/create",
            &json!({"name": name, "tags": tags}),
        ) {
            Ok(a) => Ok(a.experiment_id),
            // Created meanwhile (by another process, or by our own attempt whose answer was
            // lost): the experiment of that name is the one asked for.
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_ALREADY_EXISTS" =>
            {
                match self.experiment_by_name(name)? {
                    Some(e) if e.lifecycle_stage == "deleted" => {
                        Err(TrackingError::ExperimentDeleted {
                            name: name.to_string(),
                            experiment_id: e.experiment_id,
                        })
                    }
                    Some(e) => Ok(e.experiment_id),
                    None => Err(TrackingError::NotFound {
                        what: format!("experiment '{name}' after MLflow said it exists"),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn set_experiment_tag(&self, experiment_id: &str, tag: &Tag) -> Result<()> {
        self.post::<Empty>(
            "/experiments/set-experiment-tag",
            &json!({"experiment_id": experiment_id, "key": tag.key, "value": tag.value}),
        )
        .map(drop)
    }

    fn create_run(&self, req: &CreateRun) -> Result<RunInfo> {
        let mut req = req.clone();
        let key = client_id(&mut req.tags, new_id);
        let body = serde_json::to_value(&req).unwrap_or_default();
        let info = self.create_once(
            "run",
            |s| {
                s.post::<RunAnswer>("/runs/create", &body)
                    .map(|a| a.run.info)
            },
            |s| s.find_run(&req.experiment_id, &key),
            |s, info| s.delete_run_twins(&req.experiment_id, &key, &info.run_id),
        )?;
        self.remember_root(&info.run_id, &info.artifact_uri);
        Ok(info)
    }

    fn update_run(&self, run_id: &str, status: RunStatus, end_time: Option<i64>) -> Result<()> {
        let mut body = json!({"run_id": run_id, "status": status});
        if let Some(t) = end_time {
            body["end_time"] = json!(t);
        }
        self.post::<serde_json::Value>("/runs/update", &body)
            .map(drop)
    }

    fn get_run(&self, run_id: &str) -> Result<Run> {
        let a: RunAnswer = self.get("/runs/get", &[("run_id", run_id)])?;
        self.remember_root(run_id, &a.run.info.artifact_uri);
        Ok(a.run)
    }

    fn search_runs(&self, req: &SearchRuns) -> Result<RunsPage> {
        self.post(
            "/runs/search",
            &serde_json::to_value(req).unwrap_or_default(),
        )
    }

    fn log_batch(&self, run_id: &str, batch: &Batch) -> Result<()> {
        self.post::<Empty>(
            "/runs/log-batch",
            &json!({"run_id": run_id, "metrics": batch.metrics, "params": batch.params,
                    "tags": batch.tags}),
        )
        .map(drop)
    }

    fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ];
            if !token.is_empty() {
                q.push(("page_token", token.as_str()));
            }
            let a: HistoryAnswer = self.get("/metrics/get-history", &q)?;
            out.extend(a.metrics);
            match a.next_page_token {
                Some(t) if !t.is_empty() => token = t,
                _ => return Ok(out),
            }
        }
    }

    fn upload_artifact(&self, run_id: &str, local: &Path, artifact_path: &str) -> Result<()> {
        let root = self.run_root(run_id)?;
        self.upload_to(root, local, artifact_path)
    }

    fn list_artifacts(&self, run_id: &str, path: &str) -> Result<Vec<FileInfo>> {
        let rel = clean_artifact_path(path)?;
        match self.run_root(run_id)? {
            ArtifactRoot::Proxy(base) => {
                let full = if rel.is_empty() {
                    base
                } else {
                    format!("{base}/{rel}")
                };
                let a: FilesAnswer =
                    self.http
                        .json(Method::GET, ARTIFACTS_API, &[("path", &full)], None::<&()>)?;
                // The proxy lists names relative to the folder; make them root-relative.
                Ok(a.files
                    .into_iter()
                    .map(|f| FileInfo {
                        path: if rel.is_empty() {
                            f.path
                        } else {
                            format!("{rel}/{}", f.path)
                        },
                        ..f
                    })
                    .collect())
            }
            ArtifactRoot::Local(dir) => file_store::list_dir(&dir, &rel),
        }
    }

    fn download_artifact(&self, run_id: &str, artifact_path: &str, dest: &Path) -> Result<()> {
        let rel = clean_artifact_path(artifact_path)?;
        match self.run_root(run_id)? {
            ArtifactRoot::Proxy(base) => self.http.get_to_file(
                &format!("{ARTIFACTS_API}/{}", enc_path(&format!("{base}/{rel}"))),
                dest,
            ),
            ArtifactRoot::Local(dir) => file_store::copy_file(&dir.join(rel), dest),
        }
    }

    fn create_logged_model(&self, req: &CreateLoggedModel) -> Result<LoggedModel> {
        let mut req = req.clone();
        let key = client_id(&mut req.tags, || format!("m-{}", new_id()));
        let body = serde_json::to_value(&req).unwrap_or_default();
        let m = self.create_once(
            "logged model",
            |s| {
                s.post::<ModelAnswer>("/logged-models", &body)
                    .map(|a| a.model.into_model())
            },
            |s| s.find_logged_model(&req.experiment_id, &key),
            // A twin logged model would stay PENDING with no files; versions point at ours.
            |_, _| Ok(()),
        )?;
        self.remember_root(&m.model_id, &m.artifact_uri);
        Ok(m)
    }

    fn upload_model_file(&self, model_id: &str, local: &Path, path: &str) -> Result<()> {
        let root = self.model_root(model_id)?;
        self.upload_to(root, local, path)
    }

    fn finalize_logged_model(&self, model_id: &str, ready: bool) -> Result<()> {
        let status = if ready {
            "LOGGED_MODEL_READY"
        } else {
            "LOGGED_MODEL_UPLOAD_FAILED"
        };
        // 3.17.2 reads the id from the body, not from the path (measured).
        self.http
            .json::<serde_json::Value>(
                Method::PATCH,
                &format!("{API}/logged-models/{model_id}"),
                &[],
                Some(&json!({"model_id": model_id, "status": status})),
            )
            .map(drop)
    }

    fn link_model_output(&self, run_id: &str, model_id: &str, step: i64) -> Result<()> {
        match self.post::<Empty>(
            "/runs/outputs",
            &json!({"run_id": run_id, "models": [{"model_id": model_id, "step": step}]}),
        ) {
            Ok(_) => Ok(()),
            // A link made before (a replay, a retry after a lost answer) is refused with 400
            // (UNIQUE constraint); it is done if the run lists the model among its outputs.
            Err(e @ TrackingError::Server { status: 400, .. }) => {
                if self.has_model_output(run_id, model_id)? {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn models_of_run(&self, run_id: &str) -> Result<Vec<String>> {
        let a: RunOutputsAnswer = self.get("/runs/get", &[("run_id", run_id)])?;
        Ok(a.run
            .outputs
            .model_outputs
            .into_iter()
            .map(|m| m.model_id)
            .collect())
    }

    fn log_inputs(&self, run_id: &str, datasets: &[DatasetInput], models: &[String]) -> Result<()> {
        // Idempotent on the server: a dataset or model already an input of the run is kept once.
        let models: Vec<serde_json::Value> =
            models.iter().map(|m| json!({"model_id": m})).collect();
        self.post::<Empty>(
            "/runs/log-inputs",
            &json!({"run_id": run_id, "datasets": datasets, "models": models}),
        )
        .map(drop)
    }

    fn search_logged_models(
        &self,
        experiment_ids: &[String],
        filter: &str,
    ) -> Result<Vec<LoggedModel>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({"experiment_ids": experiment_ids, "max_results": 100});
            if !filter.is_empty() {
                body["filter"] = json!(filter);
            }
            if let Some(t) = &token {
                body["page_token"] = json!(t);
            }
            let a: ModelsAnswer = self.post("/logged-models/search", &body)?;
            out.extend(a.models.into_iter().map(ModelWire::into_model));
            match a.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    fn ensure_registered_model(&self, name: &str) -> Result<()> {
        match self.post::<serde_json::Value>("/registered-models/create", &json!({"name": name})) {
            Ok(_) => Ok(()),
            Err(TrackingError::Server { error_code, .. })
                if error_code == "RESOURCE_ALREADY_EXISTS" =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn create_model_version(
        &self,
        name: &str,
        model_id: &str,
        run_id: &str,
    ) -> Result<ModelVersion> {
        let body = json!({"name": name, "source": format!("models:/{model_id}"),
                          "run_id": run_id, "model_id": model_id});
        self.create_once(
            "model version",
            |s| {
                s.post::<VersionAnswer>("/model-versions/create", &body)
                    .map(|a| a.model_version)
            },
            |s| s.find_model_version(name, model_id, run_id),
            |_, _| Ok(()),
        )
    }

    fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        self.post::<Empty>(
            "/registered-models/alias",
            &json!({"name": name, "alias": alias, "version": version}),
        )
        .map(drop)
    }

    fn version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion> {
        match self.get::<VersionAnswer>(
            "/registered-models/alias",
            &[("name", name), ("alias", alias)],
        ) {
            Ok(a) => Ok(a.model_version),
            // MLflow answers a missing alias (or model) with 400 INVALID_PARAMETER_VALUE
            // "Registered model alias champion not found.": nothing external failed.
            Err(TrackingError::Server {
                status: 400,
                message,
                ..
            }) if message.contains("not found") => Err(TrackingError::NotFound {
                what: format!("alias '{alias}' of registered model '{name}' ({message})"),
            }),
            Err(e) => Err(e),
        }
    }

    fn model_version(&self, name: &str, version: &str) -> Result<ModelVersion> {
        let a: VersionAnswer = self.get(
            "/model-versions/get",
            &[("name", name), ("version", version)],
        )?;
        Ok(a.model_version)
    }

    fn supports_models(&self) -> bool {
        true
    }
}
