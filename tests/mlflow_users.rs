//! What an MLflow user finds of our runs (issue 17), read back with MLflow's own Python client
//! from a real server after one `binance-ml run`: every hyperparameter as a flat dotted param,
//! the datasets each run used, the evaluation's metrics on the logged model's page and the
//! evaluation run linked to that model, who created the runs, the model's signature, and
//! `runs:/<id>/model` and `models:/<name>/<version>` as MLflow models.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The OS account, as the binary must find it without `$USER`/`$LOGNAME` (cron).
fn account() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `binance-ml run --json` with `yaml`, without the user variables a cron job lacks.
fn run_as_cron(dir: &Path, yaml: &str) -> Value {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_binance-ml"))
        .args(["run", "--json", "--no-color", "--config"])
        .arg(&path)
        .env_remove("BINANCE_ML_CONFIG")
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("MLFLOW_TRACKING_USERNAME")
        .env_remove("MLFLOW_TRACKING_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn child<'a>(children: &'a [Value], stage: &str) -> &'a Value {
    children
        .iter()
        .find(|c| c["tags"]["binance_ml.stage"] == stage)
        .unwrap_or_else(|| panic!("no {stage} run among {children:?}"))
}

#[test]
fn an_mlflow_user_compares_runs_sees_datasets_and_loads_the_model() {
    let test = "an_mlflow_user_compares_runs_sees_datasets_and_loads_the_model";
    let Some(uri) = common::env_or_skip("BINANCE_ML_TEST_MLFLOW_URI", test) else {
        return;
    };
    let Some(python) = common::python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tag = common::unique("users");
    let tail = common::mlflow_section(&uri, &tag);
    let work = dir.path().join("work");
    let yaml = common::tiny_config(
        &work,
        "2024-08-01",
        "  epochs: 2\n  callbacks: {early_stopping: {patience: 4}}",
        &tail,
    );
    let s = run_as_cron(dir.path(), &yaml);
    let train_run = s["train"]["run_id"].as_str().unwrap();
    let eval_run = s["evaluate"]["run_id"].as_str().unwrap();
    let name = format!("{tag}_BTCUSDT");
    let version = s["train"]["registered"][1].as_str().unwrap();

    let r = common::readback(
        &python,
        None,
        serde_json::json!({"uri": uri, "children_of": s["run_id"]}),
    );
    let children = r["children"].as_array().unwrap();
    let (fetch, train, eval) = (
        child(children, "data_collection"),
        child(children, "training"),
        child(children, "evaluation"),
    );
    assert_eq!(train["run_id"], train_run);
    assert_eq!(eval["run_id"], eval_run);

    // 1. Hyperparameters: flat dotted params a user can compare and search.
    let p = &train["params"];
    for (key, value) in [
        ("model.cnn.filters", "[4]"),
        ("model.cnn.kernel_sizes", "[[3,3]]"),
        ("model.lstm.units", "8"),
        ("model.dense.layers", "[8]"),
        ("model.cnn.dropout_rates", "[0.1]"),
        ("optimizer.name", "adam"),
        ("optimizer.beta1", "0.9"),
        ("optimizer.beta2", "0.999"),
        ("optimizer.epsilon", "1e-8"),
        ("callbacks.early_stopping.patience", "4"),
        ("training.epochs", "2"),
        ("training.batch_size", "64"),
        ("preprocessing.window_steps", "16"),
        ("targets.prediction_horizon_seconds", "60"),
        ("data.order_book.depth_levels", "5"),
    ] {
        assert_eq!(p[key], value, "param {key}: {p}");
    }

    // 2. Who and what created the runs: the OS account even without $USER (cron).
    let me = account();
    for run in [fetch, train, eval] {
        assert_eq!(run["tags"]["mlflow.user"], me.as_str(), "{run}");
        assert_eq!(run["user_id"], me.as_str(), "{run}");
        assert_eq!(run["tags"]["mlflow.source.type"], "LOCAL", "{run}");
    }

    // 4. Datasets: the store as the input of training and evaluation (same digest), the
    // source as the input of fetch.
    let dataset = |run: &Value| run["datasets"].as_array().unwrap()[0].clone();
    let (d_train, d_eval, d_fetch) = (dataset(train), dataset(eval), dataset(fetch));
    let store_key = Path::new(s["preprocess"]["store_dir"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(d_train["digest"], store_key.as_str(), "{d_train}");
    assert_eq!(d_eval["digest"], d_train["digest"]);
    assert_eq!(d_train["tags"]["mlflow.data.context"], "train");
    assert_eq!(d_eval["tags"]["mlflow.data.context"], "eval");
    let samples = &d_train["profile"]["samples"];
    assert_eq!(samples["train"], s["preprocess"]["samples"][0], "{d_train}");
    assert_eq!(samples["test"], s["preprocess"]["samples"][2]);
    let columns = d_train["schema"]["mlflow_colspec"].as_array().unwrap();
    assert_eq!(
        columns.len() as u64,
        s["preprocess"]["columns"].as_u64().unwrap()
    );
    assert!(
        columns[0]["name"].as_str().unwrap().starts_with("BTCUSDT."),
        "{columns:?}"
    );
    assert_eq!(columns[0]["type"], "float");
    let cache_dir = s["fetch"]["cache_dir"].as_str().unwrap();
    assert!(
        d_train["source"]["uri"]
            .as_str()
            .unwrap()
            .ends_with(Path::new(cache_dir).file_name().unwrap().to_str().unwrap()),
        "{d_train}"
    );
    assert_eq!(d_train["source"]["origin"], "synthetic");
    assert_eq!(d_fetch["digest"], s["fetch"]["key"]);
    assert_eq!(d_fetch["tags"]["mlflow.data.context"], "source");
    assert_eq!(d_fetch["source_type"], "synthetic");
    assert_eq!(d_fetch["source"]["origin"]["seed"], 7);
    assert_eq!(
        d_fetch["profile"]["snapshots"]["BTCUSDT"],
        s["fetch"]["snapshots"]["BTCUSDT"]
    );

    // 2. The logged model: the evaluation's metrics on its page, from the evaluation run,
    // which lists the model among its inputs.
    let model_id = train["model_outputs"][0].as_str().unwrap().to_owned();
    assert_eq!(eval["model_inputs"], serde_json::json!([model_id]));
    let m = common::readback(
        &python,
        None,
        serde_json::json!({"uri": uri, "logged_model": model_id}),
    );
    let metrics = m["logged_model"]["metrics"].as_array().unwrap();
    let accuracy = metrics
        .iter()
        .find(|x| x[0] == "test_accuracy")
        .unwrap_or_else(|| panic!("no test_accuracy on the model: {m}"));
    assert_eq!(accuracy[2], eval_run);
    assert_eq!(accuracy[3], d_eval["digest"], "measured on the store: {m}");
    assert_eq!(
        accuracy[1].as_f64().unwrap(),
        s["evaluate"]["scores"]["accuracy"].as_f64().unwrap()
    );
    assert_eq!(m["logged_model"]["params"]["model.lstm.units"], "8");
    assert_eq!(m["logged_model"]["params"]["optimizer.name"], "adam");
    assert_eq!(m["logged_model"]["tags"]["mlflow.user"], me.as_str(), "{m}");
    assert_eq!(m["logged_model"]["tags"]["mlflow.source.type"], "LOCAL");

    // 3. The signature, from the run's folder and from the registered version.
    let run_uri = format!("runs:/{train_run}/model");
    let version_uri = format!("models:/{name}/{version}");
    let i = common::readback(
        &python,
        None,
        serde_json::json!({"uri": uri, "model_info": [run_uri, version_uri]}),
    );
    for uri in [&run_uri, &version_uri] {
        let info = &i["model_info"][uri];
        assert_eq!(info["input_dtype"], "float32", "{uri}: {info}");
        let got: Vec<i64> = info["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(got[0], -1, "{uri}: {info}");
        assert_eq!(got.len(), 4, "{uri}: {info}");
        assert_eq!(got[1], 2, "two assets: {info}");
        assert_eq!(got[2], 16, "window_steps: {info}");
        let outputs = info["outputs"].as_array().unwrap();
        assert_eq!(
            outputs[0]["tensor-spec"]["shape"],
            serde_json::json!([-1, 3])
        );
        let features = info["metadata"]["features"].as_array().unwrap();
        assert_eq!(features.len() as i64, got[3], "{info}");
        assert_eq!(
            info["metadata"]["assets"],
            serde_json::json!(["BTCUSDT", "ETHUSDT"])
        );
        assert_eq!(
            info["flavors"]["binance_ml"]["classes"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(info["run_id"], train_run);
    }
    assert_eq!(i["model_info"][&version_uri]["model_id"], model_id.as_str());
}
