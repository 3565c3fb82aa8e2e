//! Spool and sync against real MLflow servers this test starts (and kills) itself.

mod common;

use std::collections::HashSet;

use binance_ml::tracking::TAG_CLIENT_ID;
use binance_ml::tracking::stage::TAG_INPUT_RUN_PREFIX;
use binance_ml::tracking::*;
use serde_json::json;

const PASSWORD: &str = "spool-Secret-password-0042";

fn creds() -> Credentials {
    Credentials {
        username: "spool-user".into(),
        password: Secret::new(PASSWORD),
    }
}

fn points(key: &str, steps: std::ops::Range<i64>) -> Vec<Metric> {
    steps
        .map(|s| Metric::new(key, s as f64 * 0.5, 1_700_000_000_000 + s, s))
        .collect()
}

#[test]
fn server_killed_mid_run_then_sync_delivers_every_point_exactly_once() {
    let Some(python) = common::python("server_killed_mid_run_then_sync") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut server = common::Server::start(&python, &data.path().join("srv"), port, false);
    let mut settings = common::settings(&server.uri, work.path());
    settings.credentials = Some(creds());
    let tracker = Tracker::open(&settings).unwrap();
    let exp = tracker.experiment_id("spool-kill").unwrap();
    let run = tracker.start_run(&exp, "survivor", None, &[]).unwrap();
    tracker
        .log_metrics(&run.run_id, &points("loss", 0..500))
        .unwrap();
    tracker
        .log_params(&run.run_id, &[("online", "yes")])
        .unwrap();

    server.kill();

    // The run goes on: everything from here is journaled.
    tracker
        .log_metrics(&run.run_id, &points("loss", 500..2000))
        .unwrap();
    tracker
        .log_metric(&run.run_id, "nan@metric", f64::NAN, 0)
        .unwrap();
    tracker
        .log_params(&run.run_id, &[("offline", "yes")])
        .unwrap();
    let config = "password: '***'\n";
    tracker
        .log_text(&run.run_id, config, CONFIG_ARTIFACT)
        .unwrap();
    let child = tracker
        .start_run(&exp, "child", Some(&run.run_id), &[])
        .unwrap();
    tracker
        .log_metrics(&child.run_id, &points("acc", 0..10))
        .unwrap();
    tracker.end_run(&child.run_id, RunStatus::Finished).unwrap();
    tracker.end_run(&run.run_id, RunStatus::Finished).unwrap();
    let spool = settings.effective_spool_dir();
    let journals: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal-"))
        .collect();
    assert_eq!(journals.len(), 2, "{journals:?}"); // the journal and its writer lock
    assert!(journals.iter().any(|n| n.ends_with(".jsonl.lock")));

    let _server = common::Server::start(&python, &data.path().join("srv"), port, false);
    // While the run's process still holds the journal, sync leaves it alone.
    let busy = sync(&spool, &settings).unwrap();
    assert_eq!((busy.journals_busy, busy.ops_replayed), (1, 0));
    drop(tracker);
    let report = sync(&spool, &settings).unwrap();
    assert_eq!(report.runs_created, 1);
    assert_eq!(report.metrics, 1500 + 1 + 10);
    assert_eq!(report.params, 1);
    assert_eq!(report.files, 1);
    assert_eq!(report.journals_completed, 1);

    // A fresh client reads it all back.
    let reader = Tracker::open(&common::settings(&_server.uri, work.path())).unwrap();
    let hist = reader.metric_history(&run.run_id, "loss").unwrap();
    let steps: Vec<i64> = hist.iter().map(|m| m.step).collect();
    let unique: HashSet<i64> = steps.iter().copied().collect();
    assert_eq!(steps.len(), 2000, "every point exactly once");
    assert_eq!(unique, (0..2000).collect::<HashSet<_>>());
    assert!(
        reader.metric_history(&run.run_id, "nan_metric").unwrap()[0]
            .value
            .is_nan()
    );
    let got = reader.get_run(&run.run_id).unwrap();
    assert_eq!(got.info.status, RunStatus::Finished);
    assert_eq!(got.data.param("online"), Some("yes"));
    assert_eq!(got.data.param("offline"), Some("yes"));
    let dl = tempfile::tempdir().unwrap();
    reader
        .download_artifacts(&run.run_id, CONFIG_ARTIFACT, dl.path())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dl.path().join(CONFIG_ARTIFACT)).unwrap(),
        config
    );
    let children = reader
        .search_runs(
            std::slice::from_ref(&exp),
            &format!("tags.mlflow.parentRunId = '{}'", run.run_id),
            &[],
        )
        .unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(
        children[0].data.tag(TAG_CLIENT_ID),
        Some(child.run_id.as_str())
    );
    assert_eq!(
        reader
            .metric_history(&children[0].info.run_id, "acc")
            .unwrap()
            .len(),
        10
    );

    // Syncing again sends nothing and creates nothing.
    let again = sync(&spool, &settings).unwrap();
    assert_eq!(again.ops_replayed, 0);
    assert_eq!(again.runs_created, 0);
    assert_eq!(reader.search_runs(&[exp], "", &[]).unwrap().len(), 2);
    assert_eq!(
        reader.metric_history(&run.run_id, "loss").unwrap().len(),
        2000
    );

    // No credential in anything the client wrote.
    assert!(common::files_containing(work.path(), PASSWORD).is_empty());
    assert!(common::files_containing(&data.path().join("srv/artifacts"), PASSWORD).is_empty());
}

#[test]
fn offline_stage_runs_sync_with_lineage_resolved() {
    let Some(python) = common::python("offline_stage_runs_sync_with_lineage_resolved") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        &python,
        &data.path().join("srv"),
        common::free_port(),
        false,
    );
    let mut settings = common::settings(&server.uri, work.path());
    settings.offline = true;
    settings.credentials = Some(creds());
    let tracker = Tracker::open(&settings).unwrap();
    let yaml = "data:\n  source: csv\n";
    let pre = StageRun::start(
        &tracker,
        &settings,
        &StageRunSpec {
            stage: Some(Stage::Preprocessing),
            asset: "ETHUSDT",
            model: "data",
            config_hash: "h1",
            config_yaml: yaml,
            ..StageRunSpec::default()
        },
    )
    .unwrap();
    let pre_local = pre.run_id().to_string();
    tracker.log_metric(&pre_local, "rows", 1234.0, 0).unwrap();
    pre.finish().unwrap();
    let inputs = [(Stage::Preprocessing, pre_local.as_str())];
    let train = StageRun::start(
        &tracker,
        &settings,
        &StageRunSpec {
            stage: Some(Stage::ModelTraining),
            asset: "ETHUSDT",
            model: "cnn_lstm",
            config_hash: "h2",
            inputs: &inputs,
            config_yaml: yaml,
            ..StageRunSpec::default()
        },
    )
    .unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::write(model_dir.path().join("weights.bin"), [9u8; 100]).unwrap();
    let version = train
        .log_model(
            &settings,
            "ETHUSDT",
            "cnn_lstm",
            &ModelCard::default(),
            model_dir.path(),
            &[],
        )
        .unwrap()
        .unwrap();
    tracker
        .set_alias(&version.name, "champion", &version.version)
        .unwrap();
    let train_local = train.run_id().to_string();
    train.finish().unwrap();
    // An evaluation while offline scores the journaled model: its metric and its inputs name
    // the model by the client id, which the sync maps to the server's.
    let model_local = tracker
        .model_of_run(&train_local)
        .unwrap()
        .expect("the model this process logged");
    let eval = StageRun::start(
        &tracker,
        &settings,
        &StageRunSpec {
            stage: Some(Stage::ModelEvaluation),
            asset: "ETHUSDT",
            model: "cnn_lstm",
            config_hash: "h3",
            config_yaml: yaml,
            ..StageRunSpec::default()
        },
    )
    .unwrap();
    let dataset = Dataset {
        name: "ETHUSDT_preprocessed".into(),
        digest: "0123456789abcdef".into(),
        source_type: "local".into(),
        source: r#"{"uri": "file:///tmp/cache"}"#.into(),
        schema: None,
        profile: Some(r#"{"samples": {"test": 7}}"#.into()),
    };
    tracker
        .log_inputs(
            eval.run_id(),
            &[DatasetInput::new(dataset, "eval")],
            std::slice::from_ref(&model_local),
        )
        .unwrap();
    tracker
        .log_metrics(
            eval.run_id(),
            &[Metric::new("test_accuracy", 0.625, 1_700_000_000_000, 0)
                .scoring(Some(&model_local), None)],
        )
        .unwrap();
    let eval_local = eval.run_id().to_string();
    eval.finish().unwrap();
    drop(tracker);
    // Nothing reached the server yet.
    let online = Tracker::open(&common::settings(&server.uri, work.path())).unwrap();
    assert!(
        online
            .store()
            .experiment_by_name("binance-model-training")
            .unwrap()
            .is_none()
    );

    let report = sync(&settings.effective_spool_dir(), &settings).unwrap();
    assert_eq!(report.runs_created, 3);
    // three configs; weights.bin and MLmodel as run artifacts and in the logged model
    assert_eq!(report.files, 7);
    let server_id = |local: &str| {
        report
            .ids
            .iter()
            .find(|m| m.local == local)
            .map(|m| m.server.clone())
            .unwrap_or_else(|| panic!("{local} not mapped: {:?}", report.ids))
    };

    let training = latest_successful_run(&online, &settings, Stage::ModelTraining, "h2")
        .unwrap()
        .expect("synced training run");
    let pre_server = latest_successful_run(&online, &settings, Stage::Preprocessing, "h1")
        .unwrap()
        .expect("synced preprocessing run");
    // The consumed-run tag now holds the server id, not the client id.
    assert_eq!(
        training
            .data
            .tag(&format!("{TAG_INPUT_RUN_PREFIX}preprocessing")),
        Some(pre_server.info.run_id.as_str())
    );
    let champion = online
        .version_by_alias("ETHUSDT_predictor", "champion")
        .unwrap();
    assert_eq!(champion.run_id, training.info.run_id);
    let py = common::readback(
        &python,
        None,
        json!({"uri": server.uri, "model_name": "ETHUSDT_predictor", "alias": "champion",
               "run_id": pre_server.info.run_id, "metric_keys": ["rows"]}),
    );
    assert_eq!(py["version"]["run_id"], training.info.run_id.as_str());
    assert_eq!(py["history"]["rows"][0][1], "1234.0");
    let (model_id, eval_id) = (server_id(&model_local), server_id(&eval_local));
    let py = common::readback(
        &python,
        None,
        json!({"uri": server.uri, "logged_model": model_id}),
    );
    assert_eq!(
        py["logged_model"]["metrics"],
        json!([["test_accuracy", 0.625, eval_id, null]]),
        "{py}"
    );
    let py = common::readback(&python, None, json!({"uri": server.uri, "run_id": eval_id}));
    let eval = &py["described"];
    assert_eq!(eval["model_inputs"], json!([model_id]), "{py}");
    assert_eq!(eval["datasets"][0]["digest"], "0123456789abcdef", "{py}");
    assert_eq!(eval["datasets"][0]["tags"]["mlflow.data.context"], "eval");
    assert_eq!(py["run"]["status"], "FINISHED");
    let again = sync(&settings.effective_spool_dir(), &settings).unwrap();
    assert_eq!((again.ops_replayed, again.runs_created), (0, 0));
    assert!(common::files_containing(work.path(), PASSWORD).is_empty());
}
