//! Tracking exactly once, under the faults an operator meets: a proxy in front of a real
//! MLflow server loses the answer of one chosen request (the server applied it), a spool is
//! synced twice from a copy, the process is killed with -9 mid-run, the server is down for a
//! whole command. Afterwards the server holds exactly what an outage-free run leaves.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use binance_ml::tracking::open_runs::recorded_open;
use binance_ml::tracking::stage::{TAG_INPUT_RUN_PREFIX, TAG_MODEL, TAG_STAGE};
use binance_ml::tracking::{
    Metric, ModelCard, RunStatus, Stage, StageRun, StageRunSpec, TAG_CLIENT_ID, Tracker,
    TrackingSettings, sync,
};

// ---------------------------------------------------------------------------------------------
// The fault proxy

/// A request whose answer the proxy loses once: method and path prefix.
#[derive(Clone)]
struct Fault {
    method: &'static str,
    path: &'static str,
    fired: bool,
}

/// An HTTP proxy in front of `upstream` that forwards every request (one per connection)
/// and, for an armed [`Fault`], lets the server apply the request but closes the client's
/// connection instead of answering.
struct FaultProxy {
    uri: String,
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl FaultProxy {
    fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let faults: Arc<Mutex<Vec<Fault>>> = Arc::default();
        let armed = faults.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, armed) = (upstream.clone(), armed.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &armed);
                });
            }
        });
        FaultProxy { uri, faults }
    }

    /// Loses the answer of the next `method` request whose path starts with `path`.
    fn lose_answer_once(&self, method: &'static str, path: &'static str) {
        self.faults.lock().unwrap().push(Fault {
            method,
            path,
            fired: false,
        });
    }

    /// Whether every armed fault fired.
    fn all_fired(&self) -> bool {
        self.faults.lock().unwrap().iter().all(|f| f.fired)
    }
}

/// Reads one request (head + body by Content-Length or chunked), forwards it with
/// `Connection: close`, and answers or loses the answer.
fn serve(client: TcpStream, upstream: &str, faults: &Mutex<Vec<Fault>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let (mut length, mut chunked) = (0usize, false);
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.clone();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            body.extend_from_slice(size_line.as_bytes());
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(&head)?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let lose = {
        let mut faults = faults.lock().unwrap();
        match faults
            .iter_mut()
            .find(|f| !f.fired && f.method == method && path.starts_with(f.path))
        {
            Some(f) => {
                f.fired = true;
                true
            }
            None => false,
        }
    };
    let mut client = client;
    if !lose {
        client.write_all(&answer)?;
    }
    client.shutdown(Shutdown::Both)
}

// ---------------------------------------------------------------------------------------------
// A training stage's writes, and what the server holds afterwards

const API: &str = "/api/2.0/mlflow";

/// Settings for scenario `name`: its own experiments and registered model.
fn scenario_settings(uri: &str, work: &Path, name: &str) -> TrackingSettings {
    let mut s = common::settings(uri, work);
    s.max_retries = 3;
    s.experiments.training = format!("{name}-training");
    s.experiments.preprocessing = format!("{name}-preprocessing");
    s.model_name_pattern = format!("{name}_{{asset}}");
    s
}

/// What a training stage sends: a run consuming a preprocessing run, metrics, params, tags,
/// a plot, a logged and registered model, the run's end.
fn training_stage(settings: &TrackingSettings) {
    let tracker = Tracker::open(settings).unwrap();
    let pre = StageRun::start(
        &tracker,
        settings,
        &StageRunSpec {
            stage: Some(Stage::Preprocessing),
            asset: "BTCUSDT",
            model: "data",
            config_hash: "h",
            config_yaml: "a: 1\n",
            ..StageRunSpec::default()
        },
    )
    .unwrap();
    let pre_id = pre.run_id().to_string();
    pre.finish().unwrap();
    let inputs = [(Stage::Preprocessing, pre_id.as_str())];
    let run = StageRun::start(
        &tracker,
        settings,
        &StageRunSpec {
            stage: Some(Stage::ModelTraining),
            asset: "BTCUSDT",
            model: "cnn_lstm",
            config_hash: "h",
            config_yaml: "a: 1\n",
            inputs: &inputs,
            ..StageRunSpec::default()
        },
    )
    .unwrap();
    let metrics: Vec<Metric> = (0..40)
        .map(|i| Metric::new("loss", 1.0 / (i + 1) as f64, 1_700_000_000_000 + i, i))
        .collect();
    tracker
        .log_batch(
            run.run_id(),
            &metrics,
            &[binance_ml::tracking::Param::new("lr", "0.001")],
            &[binance_ml::tracking::Tag::new("phase", "fit")],
        )
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let plot = files.path().join("loss.png");
    std::fs::write(&plot, [7u8; 2048]).unwrap();
    run.log_plot(&plot).unwrap();
    let model_dir = files.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("weights.bin"), [9u8; 4096]).unwrap();
    run.log_model(
        settings,
        "BTCUSDT",
        "cnn_lstm",
        &ModelCard::default(),
        &model_dir,
        &[],
    )
    .unwrap()
    .expect("a registered version");
    run.finish().unwrap();
}

fn get(uri: &str, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
    get_json(reqwest::Url::parse_with_params(&format!("{uri}{API}{path}"), query).unwrap())
}

/// GETs `url` (a non-2xx answer fails the test) and parses its JSON.
fn get_json(url: reqwest::Url) -> serde_json::Value {
    let answer = reqwest::blocking::get(url)
        .unwrap()
        .error_for_status()
        .unwrap();
    serde_json::from_slice(&answer.bytes().unwrap()).unwrap()
}

fn post(uri: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    common::post_json(&format!("{uri}{API}{path}"), &body)
}

fn count_artifacts(uri: &str, run: &serde_json::Value, path: &str) -> usize {
    let root = run["info"]["artifact_uri"].as_str().unwrap();
    let base = root
        .trim_start_matches("mlflow-artifacts:")
        .trim_matches('/');
    let full = if path.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{path}")
    };
    let listing = get_json(
        reqwest::Url::parse_with_params(
            &format!("{uri}/api/2.0/mlflow-artifacts/artifacts"),
            [("path", &full)],
        )
        .unwrap(),
    );
    let mut n = 0;
    for f in listing["files"].as_array().cloned().unwrap_or_default() {
        let name = f["path"].as_str().unwrap();
        let child = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}/{name}")
        };
        n += if f["is_dir"].as_bool() == Some(true) {
            count_artifacts(uri, run, &child)
        } else {
            1
        };
    }
    n
}

/// What the server holds for scenario `name`, as counts (ids and times left out).
fn holdings(uri: &str, name: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for stage in ["preprocessing", "training"] {
        let exp = get(
            uri,
            "/experiments/get-by-name",
            &[("experiment_name", &format!("{name}-{stage}"))],
        );
        let id = exp["experiment"]["experiment_id"]
            .as_str()
            .unwrap()
            .to_string();
        let runs = post(
            uri,
            "/runs/search",
            serde_json::json!({"experiment_ids": [id]}),
        );
        let runs = runs["runs"].as_array().cloned().unwrap_or_default();
        out.insert(format!("{stage}.runs"), runs.len());
        for run in &runs {
            let status = run["info"]["status"].as_str().unwrap();
            *out.entry(format!("{stage}.runs.{status}")).or_default() += 1;
            let data = &run["data"];
            for part in ["params", "tags"] {
                *out.entry(format!("{stage}.{part}")).or_default() +=
                    data[part].as_array().map_or(0, Vec::len);
            }
            let run_id = run["info"]["run_id"].as_str().unwrap();
            let history = get(
                uri,
                "/metrics/get-history",
                &[("run_id", run_id), ("metric_key", "loss")],
            );
            *out.entry(format!("{stage}.loss_points")).or_default() +=
                history["metrics"].as_array().map_or(0, Vec::len);
            *out.entry(format!("{stage}.artifacts")).or_default() += count_artifacts(uri, run, "");
            let outputs = get(uri, "/runs/get", &[("run_id", run_id)]);
            *out.entry(format!("{stage}.model_outputs")).or_default() += outputs["run"]["outputs"]
                ["model_outputs"]
                .as_array()
                .map_or(0, Vec::len);
        }
        if stage == "training" {
            let models = post(
                uri,
                "/logged-models/search",
                serde_json::json!({"experiment_ids": [id]}),
            );
            let models = models["models"].as_array().cloned().unwrap_or_default();
            out.insert("logged_models".into(), models.len());
            let ready = models
                .iter()
                .filter(|m| m["info"]["status"] == "LOGGED_MODEL_READY")
                .count();
            out.insert("logged_models.ready".into(), ready);
        }
    }
    let versions = get(
        uri,
        "/model-versions/search",
        &[("filter", &format!("name = '{name}_BTCUSDT'"))],
    );
    out.insert(
        "model_versions".into(),
        versions["model_versions"].as_array().map_or(0, Vec::len),
    );
    out
}

fn server(test: &str) -> Option<(common::Server, tempfile::TempDir)> {
    let python = common::python(test)?;
    let data = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        &python,
        &data.path().join("srv"),
        common::free_port(),
        false,
    );
    Some((server, data))
}

#[test]
fn a_lost_answer_creates_nothing_twice() {
    let Some((server, _data)) = server("a_lost_answer_creates_nothing_twice") else {
        return;
    };
    let clean = tempfile::tempdir().unwrap();
    training_stage(&scenario_settings(&server.uri, clean.path(), "clean"));
    let expected = holdings(&server.uri, "clean");
    assert_eq!(expected["model_versions"], 1);
    assert_eq!(expected["training.loss_points"], 40);
    assert_eq!(expected["training.model_outputs"], 1);
    assert_eq!(expected.get("training.runs.RUNNING"), None);

    let faults: [(&str, &'static str, &'static str); 6] = [
        ("runs-create", "POST", "/api/2.0/mlflow/runs/create"),
        (
            "version-create",
            "POST",
            "/api/2.0/mlflow/model-versions/create",
        ),
        ("link-output", "POST", "/api/2.0/mlflow/runs/outputs"),
        ("log-batch", "POST", "/api/2.0/mlflow/runs/log-batch"),
        ("logged-model", "POST", "/api/2.0/mlflow/logged-models"),
        (
            "artifact-put",
            "PUT",
            "/api/2.0/mlflow-artifacts/artifacts/",
        ),
    ];
    for (name, method, path) in faults {
        let proxy = FaultProxy::start(&server.uri);
        proxy.lose_answer_once(method, path);
        let work = tempfile::tempdir().unwrap();
        training_stage(&scenario_settings(&proxy.uri, work.path(), name));
        assert!(proxy.all_fired(), "{name}: the fault never fired");
        assert_eq!(
            holdings(&server.uri, name),
            expected,
            "{name}: the server's holdings differ from an outage-free run"
        );
        // Nothing was journaled: one lost answer is not an outage.
        assert!(
            !work.path().join("mlflow-spool").exists()
                || std::fs::read_dir(work.path().join("mlflow-spool"))
                    .unwrap()
                    .flatten()
                    .all(|e| !e.file_name().to_string_lossy().starts_with("journal-")),
            "{name}: journaled"
        );
    }
}

#[test]
fn a_spool_synced_twice_from_a_copy_and_through_lost_answers_lands_once() {
    let Some((server, _data)) =
        server("a_spool_synced_twice_from_a_copy_and_through_lost_answers_lands_once")
    else {
        return;
    };
    let clean = tempfile::tempdir().unwrap();
    training_stage(&scenario_settings(&server.uri, clean.path(), "ref"));
    let expected = holdings(&server.uri, "ref");

    let work = tempfile::tempdir().unwrap();
    let mut settings = scenario_settings(&server.uri, work.path(), "copy");
    settings.offline = true;
    training_stage(&settings);
    let spool = settings.effective_spool_dir();
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(&spool)
        .arg(copy.path().join("spool"))
        .status()
        .unwrap();
    assert!(status.success());
    settings.offline = false;
    let first = sync(&spool, &settings).unwrap();
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    assert_eq!(first.runs_created, 2);
    // The provisional ids the command printed, and the server ids they became.
    assert!(
        first
            .ids
            .iter()
            .any(|m| m.local.len() == 32 && m.server.len() == 32)
    );
    let second = sync(&copy.path().join("spool"), &settings).unwrap();
    assert!(second.failed.is_empty(), "{:?}", second.failed);
    assert_eq!(
        second.runs_created, 0,
        "the copy found the runs by their client ids"
    );
    assert_eq!(holdings(&server.uri, "copy"), expected);

    // A journal replayed through lost answers: the creates are found, not repeated.
    let work = tempfile::tempdir().unwrap();
    let mut settings = scenario_settings(&server.uri, work.path(), "lossy");
    settings.offline = true;
    training_stage(&settings);
    let proxy = FaultProxy::start(&server.uri);
    for (method, path) in [
        ("POST", "/api/2.0/mlflow/runs/create"),
        ("POST", "/api/2.0/mlflow/model-versions/create"),
        ("POST", "/api/2.0/mlflow/runs/outputs"),
    ] {
        proxy.lose_answer_once(method, path);
    }
    let mut through = settings.clone();
    through.tracking_uri = proxy.uri.clone();
    through.offline = false;
    let report = sync(&settings.effective_spool_dir(), &through).unwrap();
    assert!(proxy.all_fired());
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(holdings(&server.uri, "lossy"), expected);
}

#[test]
fn a_refused_operation_is_reported_and_the_rest_of_the_spool_still_lands() {
    let Some((server, _data)) =
        server("a_refused_operation_is_reported_and_the_rest_of_the_spool_still_lands")
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut settings = scenario_settings(&server.uri, work.path(), "refused");
    settings.offline = true;
    training_stage(&settings);
    // A run whose journal holds two values for one param: MLflow refuses the second.
    let tracker = Tracker::open(&settings).unwrap();
    let exp = tracker.experiment_id("refused-extra").unwrap();
    let run = tracker.start_run(&exp, "extra", None, &[]).unwrap();
    tracker.log_params(&run.run_id, &[("k", "1")]).unwrap();
    tracker.log_params(&run.run_id, &[("k", "2")]).unwrap();
    tracker.end_run(&run.run_id, RunStatus::Finished).unwrap();
    drop(tracker);
    settings.offline = false;
    let report = sync(&settings.effective_spool_dir(), &settings).unwrap();
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].op, "log_batch");
    assert!(
        report.failed[0].error.contains("400"),
        "{:?}",
        report.failed
    );
    // Everything else arrived: the training stage in full, the extra run FINISHED.
    let h = holdings(&server.uri, "refused");
    assert_eq!(h["model_versions"], 1);
    assert_eq!(h["training.runs.FINISHED"], 1);
    assert_eq!(h["logged_models.ready"], 1);
    let again = sync(&settings.effective_spool_dir(), &settings).unwrap();
    assert_eq!(
        again.failed.len(),
        1,
        "kept and reported again, nothing else resent"
    );
    assert_eq!(again.ops_replayed, 0);
}

// ---------------------------------------------------------------------------------------------
// Through the binary

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_binance-ml"))
}

/// `binance-ml <command...> --config <config>`, which must succeed; its output.
fn succeed(command: &[&str], config: &Path) -> std::process::Output {
    let out = binary()
        .args(command)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs of every stage experiment in the local store, by status.
fn local_statuses(work: &Path) -> BTreeMap<String, usize> {
    let settings = TrackingSettings {
        workdir: work.to_path_buf(),
        ..TrackingSettings::default()
    };
    let tracker = Tracker::open(&settings).unwrap();
    let mut out = BTreeMap::new();
    for stage in Stage::ALL {
        let Some(exp) = tracker
            .store()
            .experiment_by_name(settings.experiments.name(stage))
            .unwrap()
        else {
            continue;
        };
        for run in tracker.search_runs(&[exp.experiment_id], "", &[]).unwrap() {
            *out.entry(format!("{:?}", run.info.status)).or_default() += 1;
        }
    }
    out
}

/// Records of created runs (a pending one may name a create that never happened).
fn created_open(work: &Path) -> Vec<String> {
    recorded_open(work)
        .into_iter()
        .filter(|r| !r.ends_with(".pending"))
        .collect()
}

/// When to kill, judged from the work directory.
type KillPoint = fn(&Path) -> bool;

#[test]
fn runs_a_killed_process_left_running_end_failed_with_the_next_command() {
    let work = tempfile::tempdir().unwrap();
    let yaml = common::tiny_config(work.path(), "2024-08-01", "  epochs: 8", "");
    let config = work.path().join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    // Kill points: the first open run (fetch), then once training has written a checkpoint
    // directory (the training run is open).
    let points: [(&str, KillPoint); 2] = [
        ("a stage run open", |w| !created_open(w).is_empty()),
        ("training", |w| {
            w.join("training").exists() && !created_open(w).is_empty()
        }),
    ];
    for (what, ready) in points {
        let mut child = binary()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !ready(work.path()) {
            assert!(Instant::now() < deadline, "{what}: never reached");
            assert!(
                child.try_wait().unwrap().is_none(),
                "{what}: finished before the kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let ghosts = created_open(work.path());
        assert!(!ghosts.is_empty(), "{what}");
        assert!(
            local_statuses(work.path())
                .get("Running")
                .copied()
                .unwrap_or(0)
                >= ghosts.len(),
            "{what}: the killed run is RUNNING in the store before the next command"
        );
        // The next command on the work directory ends them FAILED.
        succeed(&["fetch"], &config);
        let statuses = local_statuses(work.path());
        assert_eq!(statuses.get("Running"), None, "{what}: {statuses:?}");
        assert!(statuses.get("Failed").copied().unwrap_or(0) >= ghosts.len());
        assert!(recorded_open(work.path()).is_empty());
    }
    // And the pipeline still completes afterwards.
    succeed(&["run"], &config);
    assert_eq!(local_statuses(work.path()).get("Running"), None);
}

#[test]
fn a_run_ended_before_its_record_was_forgotten_stays_as_it_ended() {
    let work = tempfile::tempdir().unwrap();
    let settings = TrackingSettings {
        workdir: work.path().to_path_buf(),
        ..TrackingSettings::default()
    };
    let tracker = Tracker::open(&settings).unwrap();
    let exp = tracker.experiment_id("ended").unwrap();
    let run = tracker.start_run(&exp, "done", None, &[]).unwrap();
    // The process ends the run, then dies before it forgets the run's record.
    tracker
        .store()
        .update_run(&run.run_id, RunStatus::Finished, Some(1))
        .unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let record = work
        .path()
        .join(".open-runs")
        .join(format!("{}.json", run.run_id));
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    json["pid"] = dead_pid.into();
    std::fs::write(&record, json.to_string()).unwrap();

    assert_eq!(binance_ml::tracking::fail_dead_runs(&settings), 0);
    let after = tracker.get_run(&run.run_id).unwrap();
    assert_eq!(after.info.status, RunStatus::Finished);
    assert!(recorded_open(work.path()).is_empty());
}

#[test]
fn an_outage_costs_one_wait_and_lineage_survives_the_spool() {
    let Some(python) = common::python("an_outage_costs_one_wait_and_lineage_survives_the_spool")
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let tail = format!(
        "mlflow:\n  tracking_uri: \"{uri}\"\n  client: {{max_retries: 2, timeout_seconds: 5}}\n"
    );
    let yaml = common::tiny_config(work.path(), "2024-08-01", "  epochs: 2", &tail);
    let config = work.path().join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    // Nothing listens on the port: MLflow is down for the whole command.
    let out = succeed(&["run"], &config);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        stderr
            .matches("switching to the local MLflow spool")
            .count(),
        1,
        "one stage found the server down, the others journaled at once:\n{stderr}"
    );
    assert!(stdout.contains("provisional"), "{stdout}");
    assert!(stdout.contains("tracking sync"), "{stdout}");

    let data = tempfile::tempdir().unwrap();
    let _server = common::Server::start(&python, &data.path().join("srv"), port, false);
    let out = succeed(&["tracking", "sync"], &config);
    let synced = String::from_utf8_lossy(&out.stdout);
    assert!(synced.contains("provisional id -> server id"), "{synced}");

    // Lineage: every consuming stage names the server id of the run it consumed.
    let settings = common::settings(&uri, work.path());
    let tracker = Tracker::open(&settings).unwrap();
    let run_of = |stage: Stage| {
        let exp = tracker
            .store()
            .experiment_by_name(settings.experiments.name(stage))
            .unwrap()
            .unwrap();
        // The stage's own run (the pipeline's parent run shares its experiment and stage).
        let runs: Vec<_> = tracker
            .search_runs(&[exp.experiment_id], "", &[])
            .unwrap()
            .into_iter()
            .filter(|r| r.data.tag(TAG_STAGE) == Some(stage.key()))
            .filter(|r| r.data.tag(TAG_MODEL) != Some("pipeline"))
            .collect();
        assert_eq!(runs.len(), 1, "{stage:?}");
        runs.into_iter().next().unwrap()
    };
    let fetch = run_of(Stage::DataCollection);
    let pre = run_of(Stage::Preprocessing);
    let train = run_of(Stage::ModelTraining);
    let diagnose = run_of(Stage::DataDiagnostics);
    let eval = run_of(Stage::ModelEvaluation);
    let input = |run: &binance_ml::tracking::Run, stage: &str| {
        run.data
            .tag(&format!("{TAG_INPUT_RUN_PREFIX}{stage}"))
            .map(str::to_string)
    };
    assert_eq!(
        input(&pre, "data_collection"),
        Some(fetch.info.run_id.clone())
    );
    assert_eq!(
        input(&diagnose, "preprocessing"),
        Some(pre.info.run_id.clone())
    );
    assert_eq!(
        input(&train, "preprocessing"),
        Some(pre.info.run_id.clone())
    );
    assert_eq!(
        input(&train, "diagnostics"),
        Some(diagnose.info.run_id.clone())
    );
    assert_eq!(input(&eval, "training"), Some(train.info.run_id.clone()));
    // The provisional id the command printed is the run's client-id tag.
    assert!(train.data.tag(TAG_CLIENT_ID).is_some());
    assert!(
        stdout.contains(train.data.tag(TAG_CLIENT_ID).unwrap()),
        "{stdout}"
    );
    for run in [&fetch, &pre, &diagnose, &train, &eval] {
        assert_eq!(run.info.status, RunStatus::Finished);
    }
}
