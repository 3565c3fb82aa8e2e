//! The REST store against a real MLflow 3.17.2 server (BINANCE_ML_TEST_MLFLOW_URI), read back
//! through our client and through MLflow's Python client.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use binance_ml::exit::ExitCode;
use binance_ml::tracking::rest::RestStore;
use binance_ml::tracking::stage::{TAG_CONFIG_HASH, TAG_INPUT_RUN_PREFIX};
use binance_ml::tracking::*;
use serde_json::json;

fn server(test: &str) -> Option<(String, String)> {
    let uri = common::env_or_skip("BINANCE_ML_TEST_MLFLOW_URI", test)?;
    let python = common::python(test)?;
    Some((uri, python))
}

#[test]
fn runs_params_metrics_tags_artifacts_round_trip() {
    let Some((uri, python)) = server("runs_params_metrics_tags_artifacts_round_trip") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(&common::settings(&uri, work.path())).unwrap();
    let exp_name = common::unique("rest-roundtrip");
    let exp = tracker.experiment_id(&exp_name).unwrap();
    assert_eq!(
        tracker.experiment_id(&exp_name).unwrap(),
        exp,
        "get, not create again"
    );
    tracker
        .set_experiment_tag(&exp, "owner@team", "ci")
        .unwrap();
    let e = tracker
        .store()
        .experiment_by_name(&exp_name)
        .unwrap()
        .unwrap();
    assert!(
        e.tags.contains(&Tag::new("owner_team", "ci")),
        "{:?}",
        e.tags
    );
    let parent = tracker.start_run(&exp, "parent", None, &[]).unwrap();
    let child = tracker
        .start_run(
            &exp,
            "child",
            Some(&parent.run_id),
            &[Tag::new("note", "hello")],
        )
        .unwrap();
    let run = &child.run_id;

    // 1.5 MB param, a key with '@', 2500 points (3 chunks), non-finite values.
    let big: String = "0123456789abcdef".repeat(1_500_000 / 16);
    tracker
        .log_params(run, &[("lr", "0.001"), ("a@b", "x"), ("big", big.as_str())])
        .unwrap();
    let loss: Vec<Metric> = (0..2500)
        .map(|i| Metric::new("loss", 1.0 / (i as f64 + 1.0), 1_700_000_000_000 + i, i))
        .collect();
    tracker.log_metrics(run, &loss).unwrap();
    tracker.log_metric(run, "acc@val", 0.75, 3).unwrap();
    for (step, v) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        tracker.log_metric(run, "weird", v, step as i64).unwrap();
    }
    let art = tempfile::tempdir().unwrap();
    std::fs::write(art.path().join("a.txt"), "alpha").unwrap();
    std::fs::create_dir_all(art.path().join("sub dir")).unwrap();
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(art.path().join("sub dir/b.bin"), &bin).unwrap();
    tracker.log_artifacts(run, art.path(), PLOTS_DIR).unwrap();
    tracker.set_tags(run, &[("stage note", "late")]).unwrap();
    tracker.end_run(run, RunStatus::Finished).unwrap();
    tracker
        .end_run(&parent.run_id, RunStatus::Finished)
        .unwrap();

    // Our client.
    let got = tracker.get_run(run).unwrap();
    assert_eq!(got.info.status, RunStatus::Finished);
    assert_eq!(got.info.run_name, "child");
    assert!(got.info.end_time.is_some());
    assert_eq!(got.data.param("lr"), Some("0.001"));
    assert_eq!(got.data.param("a_b"), Some("x"));
    let pointer = got.data.param("big").unwrap();
    assert!(
        pointer.starts_with("<1500000 chars, stored as artifact params/big.txt"),
        "{pointer}"
    );
    assert_eq!(
        got.data.tag("mlflow.parentRunId"),
        Some(parent.run_id.as_str())
    );
    assert_eq!(got.data.tag("mlflow.runName"), Some("child"));
    assert!(
        got.data
            .tag("mlflow.source.name")
            .unwrap()
            .starts_with("binance-ml")
    );
    assert_eq!(got.data.tag("note"), Some("hello"));
    assert_eq!(got.data.tag("stage note"), Some("late"));
    let hist = tracker.metric_history(run, "loss").unwrap();
    assert_eq!(hist.len(), 2500);
    let mut steps: Vec<i64> = hist.iter().map(|m| m.step).collect();
    steps.sort();
    assert_eq!(steps, (0..2500).collect::<Vec<_>>());
    assert_eq!(
        tracker.metric_history(run, "acc@val").unwrap()[0].value,
        0.75
    );
    let mut weird = tracker.metric_history(run, "weird").unwrap();
    weird.sort_by_key(|m| m.step);
    assert!(weird[0].value.is_nan());
    // The SQL store keeps infinities as +-f64::MAX (measured on 3.17.2).
    assert!(weird[1].value >= f64::MAX);
    assert!(weird[2].value <= -f64::MAX);

    let dl = tempfile::tempdir().unwrap();
    let files = tracker.download_artifacts(run, "", dl.path()).unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(
        std::fs::read_to_string(dl.path().join("plots/a.txt")).unwrap(),
        "alpha"
    );
    assert_eq!(
        std::fs::read(dl.path().join("plots/sub dir/b.bin")).unwrap(),
        bin
    );
    assert_eq!(
        std::fs::read_to_string(dl.path().join("params/big.txt")).unwrap(),
        big
    );
    let one = tempfile::tempdir().unwrap();
    tracker
        .download_artifacts(run, "plots/a.txt", one.path())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(one.path().join("plots/a.txt")).unwrap(),
        "alpha"
    );

    // MLflow's own Python client.
    let dst = tempfile::tempdir().unwrap();
    let py = common::readback(
        &python,
        None,
        json!({"uri": uri, "run_id": run, "metric_keys": ["loss", "acc_val", "weird"],
               "artifact_path": "plots", "dst": dst.path()}),
    );
    assert_eq!(py["run"]["status"], "FINISHED");
    assert_eq!(py["run"]["params"]["lr"], "0.001");
    assert_eq!(py["run"]["params"]["a_b"], "x");
    assert_eq!(
        py["run"]["tags"]["mlflow.parentRunId"],
        parent.run_id.as_str()
    );
    assert_eq!(py["history"]["loss"].as_array().unwrap().len(), 2500);
    assert_eq!(py["history"]["acc_val"][0][1], "0.75");
    assert_eq!(py["history"]["weird"][0][1], "nan");
    assert_eq!(py["files"], json!(["a.txt", "sub dir/b.bin"]));
}

#[test]
fn logged_model_registry_and_alias() {
    let Some((uri, python)) = server("logged_model_registry_and_alias") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(&common::settings(&uri, work.path())).unwrap();
    assert!(tracker.supports_models());
    let exp = tracker
        .experiment_id(&common::unique("rest-models"))
        .unwrap();
    let run = tracker.start_run(&exp, "train", None, &[]).unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::write(model_dir.path().join("weights.bin"), vec![7u8; 4096]).unwrap();
    std::fs::write(model_dir.path().join("config.json"), "{\"layers\":3}").unwrap();
    let model = tracker
        .log_model(
            &run.run_id,
            &exp,
            "BTCUSDT_predictor",
            &ModelCard {
                model_type: "cnn_lstm".into(),
                ..ModelCard::default()
            },
            model_dir.path(),
            &[Param::new("hidden", "64")],
        )
        .unwrap();
    assert!(model.model_id.starts_with("m-"));
    assert_eq!(model.status, "LOGGED_MODEL_READY");
    let name = common::unique("BTCUSDT_predictor");
    let v1 = tracker
        .register_model(&name, &model.model_id, &run.run_id)
        .unwrap();
    assert_eq!(v1.version, "1");
    assert_eq!(v1.source, format!("models:/{}", model.model_id));
    // Registering again makes version 2 of the same registered model.
    let v2 = tracker
        .register_model(&name, &model.model_id, &run.run_id)
        .unwrap();
    assert_eq!(v2.version, "2");
    tracker.set_alias(&name, "champion", &v1.version).unwrap();
    let champ = tracker.version_by_alias(&name, "champion").unwrap();
    assert_eq!(champ.version, "1");
    assert_eq!(champ.aliases, vec!["champion".to_string()]);
    let found = tracker
        .search_logged_models(std::slice::from_ref(&exp), "")
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].status, "LOGGED_MODEL_READY");
    assert_eq!(found[0].params, vec![Param::new("hidden", "64")]);
    tracker.end_run(&run.run_id, RunStatus::Finished).unwrap();

    let dst = tempfile::tempdir().unwrap();
    let py = common::readback(
        &python,
        None,
        json!({"uri": uri, "experiment_ids": [exp], "model_name": name, "alias": "champion",
               "model_id": model.model_id, "model_dst": dst.path()}),
    );
    assert_eq!(py["models"][0]["model_id"], model.model_id.as_str());
    assert_eq!(py["models"][0]["source_run_id"], run.run_id.as_str());
    assert!(
        py["models"][0]["status"]
            .as_str()
            .unwrap()
            .contains("READY")
    );
    assert_eq!(py["version"]["version"], "1");
    assert_eq!(py["version"]["run_id"], run.run_id.as_str());
    // The Python client adds its own `registered_model_meta` next to our files.
    let files: Vec<&str> = py["model_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    for f in ["MLmodel", "config.json", "weights.bin"] {
        assert!(files.contains(&f), "{f} missing from {files:?}");
    }
}

#[test]
fn stage_runs_and_latest_successful_run() {
    let Some((uri, python)) = server("stage_runs_and_latest_successful_run") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut settings = common::settings(&uri, work.path());
    settings.experiments.preprocessing = common::unique("binance-preprocessing");
    settings.experiments.training = common::unique("binance-model-training");
    // The shared server keeps registered models between test runs.
    settings.model_name_pattern = common::unique("{asset}_predictor");
    let tracker = Tracker::open(&settings).unwrap();
    let yaml = "mlflow:\n  tracking_uri: http://example\n  password: '***'\n";

    let pre = StageRun::start(
        &tracker,
        &settings,
        &StageRunSpec {
            stage: Some(Stage::Preprocessing),
            asset: "BTCUSDT",
            model: "data",
            config_hash: "cfg1",
            dataset_hash: Some("ds1"),
            config_yaml: yaml,
            ..StageRunSpec::default()
        },
    )
    .unwrap();
    let pre_id = pre.run_id().to_string();
    pre.finish().unwrap();

    let inputs = [(Stage::Preprocessing, pre_id.as_str())];
    let spec = StageRunSpec {
        stage: Some(Stage::ModelTraining),
        asset: "BTCUSDT",
        model: "cnn_lstm",
        config_hash: "cfg2",
        dataset_hash: Some("ds1"),
        inputs: &inputs,
        config_yaml: yaml,
        parent_run_id: None,
    };
    let ok = StageRun::start(&tracker, &settings, &spec).unwrap();
    let ok_id = ok.run_id().to_string();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::write(model_dir.path().join("weights.bin"), [1u8, 2, 3]).unwrap();
    let version = ok
        .log_model(
            &settings,
            "BTCUSDT",
            "cnn_lstm",
            &ModelCard::default(),
            model_dir.path(),
            &[],
        )
        .unwrap()
        .expect("a server registers the model");
    assert_eq!(version.version, "1");
    assert!(
        version.name.starts_with("BTCUSDT_predictor-"),
        "{}",
        version.name
    );
    ok.finish().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // A later failed run with the same hash must not be picked; dropping marks it FAILED.
    let failed = StageRun::start(&tracker, &settings, &spec).unwrap();
    let failed_id = failed.run_id().to_string();
    drop(failed);

    let got = tracker.get_run(&ok_id).unwrap();
    let name = &got.info.run_name;
    assert!(
        name.starts_with("BTCUSDT_cnn_lstm_") && name.len() == "BTCUSDT_cnn_lstm_".len() + 15,
        "{name}"
    );
    assert_eq!(got.data.tag(TAG_CONFIG_HASH), Some("cfg2"));
    assert_eq!(got.data.tag("binance_ml.dataset_hash"), Some("ds1"));
    assert_eq!(
        got.data
            .tag(&format!("{TAG_INPUT_RUN_PREFIX}preprocessing")),
        Some(pre_id.as_str())
    );
    assert_eq!(
        tracker.get_run(&failed_id).unwrap().info.status,
        RunStatus::Failed
    );
    let latest = latest_successful_run(&tracker, &settings, Stage::ModelTraining, "cfg2")
        .unwrap()
        .unwrap();
    assert_eq!(latest.info.run_id, ok_id);
    assert!(
        latest_successful_run(&tracker, &settings, Stage::ModelTraining, "other")
            .unwrap()
            .is_none()
    );
    settings.experiments.data_collection = common::unique("never-created");
    assert!(
        latest_successful_run(&tracker, &settings, Stage::DataCollection, "cfg2")
            .unwrap()
            .is_none()
    );

    let dst = tempfile::tempdir().unwrap();
    let py = common::readback(
        &python,
        None,
        json!({"uri": uri, "run_id": ok_id, "artifact_path": CONFIG_ARTIFACT, "dst": dst.path()}),
    );
    assert_eq!(py["files"], json!([CONFIG_ARTIFACT]));
    assert_eq!(
        std::fs::read_to_string(dst.path().join(CONFIG_ARTIFACT)).unwrap(),
        yaml
    );
}

#[test]
fn search_pages_through_all_runs() {
    let Some((uri, _)) = server("search_pages_through_all_runs") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(&common::settings(&uri, work.path())).unwrap();
    let exp = tracker
        .experiment_id(&common::unique("rest-search"))
        .unwrap();
    for i in 0..5 {
        let r = tracker
            .start_run(
                &exp,
                &format!("r{i}"),
                None,
                &[Tag::new("parity", (i % 2).to_string())],
            )
            .unwrap();
        tracker.end_run(&r.run_id, RunStatus::Finished).unwrap();
    }
    let mut req = SearchRuns {
        experiment_ids: vec![exp.clone()],
        filter: "tags.parity = '0'".into(),
        max_results: 2,
        ..SearchRuns::default()
    };
    let first = tracker.search_runs_page(&req).unwrap();
    assert_eq!(first.runs.len(), 2);
    req.page_token = first.next_page_token.clone();
    let second = tracker.search_runs_page(&req).unwrap();
    assert_eq!(second.runs.len(), 1);
    let all = tracker
        .search_runs(&[exp], "tags.parity = '0'", &[])
        .unwrap();
    let mut names: Vec<String> = all.iter().map(|r| r.info.run_name.clone()).collect();
    names.sort();
    assert_eq!(names, ["r0", "r2", "r4"]);
}

#[test]
fn unknown_run_and_deleted_experiment_are_clear_errors() {
    let Some((uri, _)) = server("unknown_run_and_deleted_experiment_are_clear_errors") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(&common::settings(&uri, work.path())).unwrap();
    let err = tracker
        .get_run("0123456789abcdef0123456789abcdef")
        .unwrap_err();
    assert!(matches!(err, TrackingError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("0123456789abcdef0123456789abcdef"),
        "{err}"
    );
    assert_eq!(
        binance_ml::commands::Error::from(err).exit_code(),
        ExitCode::Usage
    );

    let name = common::unique("rest-deleted");
    let exp = tracker.experiment_id(&name).unwrap();
    let run = tracker.start_run(&exp, "r", None, &[]).unwrap();
    common::post_json(
        &format!("{uri}/api/2.0/mlflow/experiments/delete"),
        &json!({"experiment_id": exp}),
    );
    // Logging into a run of the deleted experiment: MLflow's message says why.
    let err = tracker.log_metric(&run.run_id, "m", 1.0, 0).unwrap_err();
    assert!(
        matches!(err, TrackingError::Server { status: 400, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("deleted"), "{err}");
    assert_eq!(err.exit_code(), ExitCode::External);
    // Opening the experiment again names the fix.
    let err = tracker.experiment_id(&name).unwrap_err();
    assert!(
        matches!(err, TrackingError::ExperimentDeleted { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("mlflow experiments restore"),
        "{err}"
    );
    assert_eq!(err.exit_code(), ExitCode::Usage);
}

/// A real HTTP server on a free port that answers every request with an HTML page, like a
/// login proxy or the wrong service would.
fn html_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let body = "<!DOCTYPE html><html><body>Please log in</body></html>";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://127.0.0.1:{}", addr.port())
}

#[test]
fn html_instead_of_json_is_a_clear_error() {
    let uri = html_server();
    let work = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(&common::settings(&uri, work.path())).unwrap();
    let err = tracker.experiment_id("x").unwrap_err();
    assert!(
        matches!(err, TrackingError::NotJson { status: 200, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("text/html") && msg.contains("<!DOCTYPE html>"),
        "{msg}"
    );
    assert_eq!(
        binance_ml::commands::Error::from(err).exit_code(),
        ExitCode::External
    );
}

#[test]
fn unreachable_server_is_retried_then_reported() {
    let port = common::free_port();
    let store = RestStore::new(
        &format!("http://127.0.0.1:{port}"),
        None,
        std::time::Duration::from_secs(2),
        RetryPolicy {
            max_retries: 2,
            base: std::time::Duration::from_millis(10),
            cap: std::time::Duration::from_millis(40),
        },
    )
    .unwrap();
    let err = store.get_run("abc").unwrap_err();
    match &err {
        TrackingError::Unreachable { attempts, .. } => assert_eq!(*attempts, 3),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(err.exit_code(), ExitCode::External);
}
