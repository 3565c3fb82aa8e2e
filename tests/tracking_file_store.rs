//! The local MLflow file store: our own read-back, then a real `mlflow server` started on it
//! (MLFLOW_ALLOW_FILE_STORE=true) read through our REST client and MLflow's Python client.

mod common;

use binance_ml::exit::ExitCode;
use binance_ml::tracking::rest::RestStore;
use binance_ml::tracking::*;
use serde_json::json;

/// Logs two stage runs into a fresh local store; returns (settings, training run id,
/// preprocessing run id).
fn populate(work: &std::path::Path) -> (TrackingSettings, String, String) {
    let settings = common::settings("", work);
    let tracker = Tracker::open(&settings).unwrap();
    assert!(tracker.describe().contains("mlruns"));
    let pre = StageRun::start(
        &tracker,
        &settings,
        &StageRunSpec {
            stage: Some(Stage::Preprocessing),
            asset: "BTCUSDT",
            model: "data",
            config_hash: "pre-h",
            config_yaml: "a: 1\n",
            ..StageRunSpec::default()
        },
    )
    .unwrap();
    let pre_id = pre.run_id().to_string();
    pre.finish().unwrap();
    let inputs = [(Stage::Preprocessing, pre_id.as_str())];
    let train = StageRun::start(
        &tracker,
        &settings,
        &StageRunSpec {
            stage: Some(Stage::ModelTraining),
            asset: "BTCUSDT",
            model: "cnn_lstm",
            config_hash: "train-h",
            dataset_hash: Some("ds-h"),
            inputs: &inputs,
            config_yaml: "a: 1\n",
            parent_run_id: None,
        },
    )
    .unwrap();
    let id = train.run_id().to_string();
    let loss: Vec<Metric> = (0..1200)
        .map(|i| Metric::new("train/loss", 1.0 / (1.0 + i as f64), 1_000 + i, i))
        .collect();
    tracker.log_metrics(&id, &loss).unwrap();
    tracker.log_metric(&id, "weird@x", f64::NAN, 0).unwrap();
    tracker
        .log_metric(&id, "weird@x", f64::NEG_INFINITY, 1)
        .unwrap();
    tracker
        .log_params(&id, &[("lr", "0.01"), ("long", "x".repeat(7000).as_str())])
        .unwrap();
    // A dataset input, in MLflow's datasets/ + inputs/ layout; logging it again adds nothing.
    let dataset = DatasetInput::new(
        Dataset {
            name: "BTCUSDT_preprocessed".into(),
            digest: "ds-h".into(),
            source_type: "local".into(),
            source: r#"{"uri": "file:///tmp/cache"}"#.into(),
            schema: Some(
                r#"{"mlflow_colspec": [{"name": "BTCUSDT.spread", "type": "float"}]}"#.into(),
            ),
            profile: Some(r#"{"samples": {"train": 70}}"#.into()),
        },
        "train",
    );
    for _ in 0..2 {
        tracker
            .log_inputs(&id, std::slice::from_ref(&dataset), &[])
            .unwrap();
    }
    let plot = work.join("loss.png");
    std::fs::write(&plot, [0x89, b'P', b'N', b'G']).unwrap();
    train.log_plot(&plot).unwrap();
    let model_dir = work.join("model-out");
    std::fs::create_dir_all(model_dir.join("ckpt")).unwrap();
    std::fs::write(model_dir.join("ckpt/weights.bin"), [1u8; 64]).unwrap();
    // No registry on the file store: the model lands in the run's model/ folder.
    assert_eq!(
        train
            .log_model(
                &settings,
                "BTCUSDT",
                "cnn_lstm",
                &ModelCard::default(),
                &model_dir,
                &[],
            )
            .unwrap(),
        None
    );
    train.finish().unwrap();
    (settings, id, pre_id)
}

#[test]
fn local_store_writes_mlflow_layout_and_reads_it_back() {
    let work = tempfile::tempdir().unwrap();
    let (settings, id, pre_id) = populate(work.path());
    let tracker = Tracker::open(&settings).unwrap();
    let run = tracker.get_run(&id).unwrap();
    assert_eq!(run.info.status, RunStatus::Finished);
    assert_eq!(run.data.param("lr"), Some("0.01"));
    assert!(
        run.data
            .param("long")
            .unwrap()
            .starts_with("<7000 chars, stored as artifact params/long.txt")
    );
    assert_eq!(
        run.data.tag("binance_ml.input_run.preprocessing"),
        Some(pre_id.as_str())
    );
    assert_eq!(
        tracker.metric_history(&id, "train/loss").unwrap().len(),
        1200
    );
    let weird = tracker.metric_history(&id, "weird@x").unwrap();
    assert!(weird[0].value.is_nan() && weird[1].value == f64::NEG_INFINITY);

    // MLflow's layout, byte for byte where it matters.
    let exp_dir = std::path::Path::new(&run.info.artifact_uri.replace("file://", ""))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let run_dir = exp_dir.join(&id);
    let meta = std::fs::read_to_string(run_dir.join("meta.yaml")).unwrap();
    for key in [
        "run_id:",
        "experiment_id:",
        "user_id:",
        "status: 3",
        "start_time:",
        "end_time:",
        "lifecycle_stage: active",
        "run_name:",
        "artifact_uri: file://",
    ] {
        assert!(meta.contains(key), "{key} missing from meta.yaml:\n{meta}");
    }
    let lines = std::fs::read_to_string(run_dir.join("metrics/weird_x")).unwrap();
    assert_eq!(
        lines,
        "1000 nan 0\n1001 -inf 1\n"
            .replace("1000", &weird[0].timestamp.to_string())
            .replace("1001", &weird[1].timestamp.to_string())
    );
    assert!(run_dir.join("metrics/train/loss").is_file());
    assert_eq!(
        std::fs::read_to_string(run_dir.join("params/lr")).unwrap(),
        "0.01"
    );
    assert!(run_dir.join("artifacts/plots/loss.png").is_file());
    assert!(run_dir.join("artifacts/model/ckpt/weights.bin").is_file());
    assert_eq!(
        std::fs::read_to_string(run_dir.join("artifacts/training_config.yaml")).unwrap(),
        "a: 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("artifacts/params/long.txt"))
            .unwrap()
            .len(),
        7000
    );

    tracker
        .set_experiment_tag(&run.info.experiment_id, "team", "ml")
        .unwrap();
    let exp = tracker
        .store()
        .experiment_by_name("binance-model-training")
        .unwrap()
        .unwrap();
    assert_eq!(exp.tags, vec![Tag::new("team", "ml")]);
    assert_eq!(
        std::fs::read_to_string(exp_dir.join("tags/team")).unwrap(),
        "ml"
    );
    // Params are immutable, as on a server.
    let err = tracker.log_params(&id, &[("lr", "0.02")]).unwrap_err();
    assert!(err.to_string().contains("already \"0.01\""), "{err}");
    // Lineage lookups and search work locally.
    let latest = latest_successful_run(&tracker, &settings, Stage::ModelTraining, "train-h")
        .unwrap()
        .unwrap();
    assert_eq!(latest.info.run_id, id);
    assert!(
        latest_successful_run(&tracker, &settings, Stage::ModelTraining, "nope")
            .unwrap()
            .is_none()
    );
    let err = tracker
        .get_run("ffffffffffffffffffffffffffffffff")
        .unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::Usage);
    let err = tracker
        .search_runs(
            std::slice::from_ref(&run.info.experiment_id),
            "tags.x LIKE 'a'",
            &[],
        )
        .unwrap_err();
    assert!(matches!(err, TrackingError::InvalidInput(_)));
    let files = tracker
        .download_artifacts(&id, "model", &work.path().join("dl"))
        .unwrap();
    assert_eq!(
        files,
        vec![
            work.path().join("dl/model/MLmodel"),
            work.path().join("dl/model/ckpt/weights.bin")
        ]
    );
    let one = tracker
        .download_artifacts(&id, "plots/loss.png", &work.path().join("one"))
        .unwrap();
    assert_eq!(std::fs::read(&one[0]).unwrap(), [0x89, b'P', b'N', b'G']);
}

#[test]
fn mlflow_server_reads_the_local_store() {
    let Some(python) = common::python("mlflow_server_reads_the_local_store") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (settings, id, _) = populate(work.path());
    let root = settings.workdir.join("mlruns");
    let server = common::Server::start(&python, &root, common::free_port(), true);
    let rest = RestStore::new(
        &server.uri,
        None,
        std::time::Duration::from_secs(30),
        settings.retry_policy(),
    )
    .unwrap();
    let tracker = Tracker::with_store(Box::new(rest));
    let run = tracker.get_run(&id).unwrap();
    assert_eq!(run.info.status, RunStatus::Finished);
    assert_eq!(run.info.run_name.len(), "BTCUSDT_cnn_lstm_".len() + 15);
    assert_eq!(run.data.param("lr"), Some("0.01"));
    assert_eq!(run.data.tag("binance_ml.dataset_hash"), Some("ds-h"));
    assert_eq!(
        tracker.metric_history(&id, "train/loss").unwrap().len(),
        1200
    );
    let exp = tracker
        .store()
        .experiment_by_name("binance-model-training")
        .unwrap()
        .unwrap();
    let found = tracker
        .search_runs(
            &[exp.experiment_id],
            "tags.`binance_ml.config_hash` = 'train-h'",
            &[],
        )
        .unwrap();
    assert_eq!(found.len(), 1);

    let dst = tempfile::tempdir().unwrap();
    let py = common::readback(
        &python,
        None,
        json!({"uri": server.uri, "run_id": id, "metric_keys": ["train/loss", "weird_x"],
               "artifact_path": "model", "dst": dst.path()}),
    );
    assert_eq!(py["run"]["status"], "FINISHED");
    assert_eq!(py["history"]["train/loss"].as_array().unwrap().len(), 1200);
    assert_eq!(py["history"]["weird_x"][0][1], "nan");
    assert_eq!(py["history"]["weird_x"][1][1], "-inf");
    // The model folder is an MLflow model: MLmodel beside the files.
    assert_eq!(py["files"], json!(["MLmodel", "ckpt/weights.bin"]));
    let datasets = &py["described"]["datasets"];
    assert_eq!(datasets.as_array().unwrap().len(), 1, "{py}");
    assert_eq!(datasets[0]["digest"], "ds-h");
    assert_eq!(datasets[0]["profile"]["samples"]["train"], 70);
    assert_eq!(
        datasets[0]["schema"]["mlflow_colspec"][0]["name"],
        "BTCUSDT.spread"
    );
    assert_eq!(datasets[0]["tags"]["mlflow.data.context"], "train");
}
