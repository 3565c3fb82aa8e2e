//! `evaluate` and `run` end to end through the binary (artifacts, MLflow metrics and tags, the
//! temperature saved with the model and used by `predict`, parent/child runs), and saliency
//! finding a planted signal.

mod common;

use std::path::{Path, PathBuf};

use binance_ml::config::{ModelConfig, TrainingConfig};
use binance_ml::evaluate::saliency::Saliency;
use binance_ml::model::{ModelSpec, Rng};
use binance_ml::store::SampleShape;
use binance_ml::store::{load_samples, read_manifest};
use binance_ml::train::{InMemorySource, TrainOptions, Trainer};
use burn::tensor::Device;
use serde_json::Value;

/// One synthetic day at 10 s, a tiny model, backtest and few saliency samples.
fn tiny(work: &Path) -> String {
    common::tiny_config(
        work,
        "2024-08-01",
        "  epochs: 1",
        "evaluation:\n  backtesting: {enabled: true, transaction_cost: 0.0002}\n  explainability: {n_samples: 64}",
    )
}

fn ok(dir: &Path, yaml: &str, args: &[&str]) -> Value {
    let (code, out, err) = common::run_cli(dir, yaml, args);
    assert_eq!(code, 0, "{args:?} failed:\n{err}");
    serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The local store's directory of run `id`.
fn run_dir(mlruns: &Path, id: &str) -> PathBuf {
    std::fs::read_dir(mlruns)
        .unwrap()
        .map(|e| e.unwrap().path().join(id))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("run {id} not in {}", mlruns.display()))
}

fn tag(run: &Path, name: &str) -> String {
    std::fs::read_to_string(run.join("tags").join(name)).unwrap_or_default()
}

#[test]
fn run_executes_every_stage_under_one_parent_and_evaluate_calibrates_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = tiny(&work);
    let r = ok(dir.path(), &yaml, &["run", "--json"]);
    let parent = r["run_id"].as_str().unwrap();
    let train = r["train"]["run_id"].as_str().unwrap();
    let eval = &r["evaluate"];
    let eval_id = eval["run_id"].as_str().unwrap();
    let mlruns = work.join("mlruns");
    for key in ["fetch", "preprocess", "diagnose", "train", "evaluate"] {
        assert!(!r[key].is_null(), "{key} did not run");
    }
    // Every stage run hangs under the parent; evaluate links the training run.
    let e = run_dir(&mlruns, eval_id);
    assert_eq!(tag(&e, "mlflow.parentRunId"), parent);
    assert_eq!(tag(&run_dir(&mlruns, train), "mlflow.parentRunId"), parent);
    assert_eq!(tag(&e, "binance_ml.input_run.training"), train);
    assert_eq!(
        tag(&run_dir(&mlruns, parent), "binance_ml.evaluate_run"),
        eval_id
    );

    // Artifacts of the evaluation run.
    for a in [
        "evaluation/summary.md",
        "evaluation/metrics.json",
        "evaluation/confusion_matrix.csv",
        "evaluation/feature_importance.csv",
        "plots/confusion_matrix.png",
        "plots/confusion_matrix_normalized.png",
        "plots/reliability_diagram.png",
        "plots/degradation.png",
        "plots/equity_curve.png",
        "plots/saliency_BTCUSDT.png",
        "plots/saliency_ETHUSDT.png",
    ] {
        assert!(e.join("artifacts").join(a).is_file(), "{a} missing");
    }
    let summary = std::fs::read_to_string(e.join("artifacts/evaluation/summary.md")).unwrap();
    assert!(summary.contains("## Verdict"), "{summary}");
    assert!(summary.contains("calibrated"), "{summary}");
    assert!(summary.contains("last observed move"), "{summary}");

    // Metrics are consistent: calibration keeps the argmax and the accuracy; log loss of the
    // calibrated model is not worse on the split the temperature was fit on.
    let test_acc: f64 = metric(&e, "test_accuracy");
    assert_eq!(test_acc, metric(&e, "test_calibrated_accuracy"));
    assert_eq!(test_acc, eval["scores"]["accuracy"].as_f64().unwrap());
    assert_eq!(eval["degradation_accuracy"].as_array().unwrap().len(), 4);
    let samples = eval["samples"].as_u64().unwrap();
    let confusion: u64 = eval["scores"]["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(confusion, samples);
    let flat = &eval["backtest"][2];
    assert_eq!(flat["total_return"], 0.0);

    // The temperature travels with the model: model.json locally and on the training run,
    // and predict applies it.
    let t = eval["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && t != 1.0, "{t}");
    let model_json: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir(&mlruns, train).join("artifacts/model/model.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(model_json["temperature"].as_f64().unwrap(), t);
    let p = ok(dir.path(), &yaml, &["predict", "--json"]);
    assert_eq!(p["temperature"].as_f64().unwrap(), t);
    assert_eq!(p["run_id"], train);

    // Validation split, and the same model by run id.
    let v = ok(
        dir.path(),
        &yaml,
        &["evaluate", "--json", "--split", "val", "--run-id", train],
    );
    assert_eq!(v["split"], "validation");
    assert_eq!(v["model_run_id"], train);

    // New data by time range: the test split's span from the source gives the same samples
    // and scores as the store (rows equal, labels equal), with the stored temperature.
    let store = Path::new(r["preprocess"]["store_dir"].as_str().unwrap()).to_path_buf();
    let manifest = read_manifest(&store).unwrap();
    let samples = load_samples(&store, &manifest).unwrap();
    let at = |k: usize| {
        chrono::DateTime::from_timestamp_millis(
            manifest.grid_start_ms + k as i64 * manifest.cadence_ms,
        )
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let test_ends = &samples.ends[2];
    let (first, last) = (test_ends[0], test_ends[test_ends.len() - 1]);
    let by_range = ok(
        dir.path(),
        &yaml,
        &[
            "evaluate",
            "--json",
            "--run-id",
            train,
            "--start",
            &at(first),
            "--end",
            &at(last + 1),
        ],
    );
    assert_eq!(by_range["samples"].as_u64().unwrap(), samples_in(test_ends));
    // Batches differ (the range is cut into its own batches): log loss to float rounding.
    let (mut a, mut b) = (by_range["scores"].clone(), eval["scores"].clone());
    let (la, lb) = (a["log_loss"].take(), b["log_loss"].take());
    assert_eq!(a, b);
    assert!((la.as_f64().unwrap() - lb.as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(by_range["temperature_fitted"], false);
    assert_eq!(by_range["temperature"].as_f64().unwrap(), t);

    // `run --from train` reuses the cached data and trains a new model.
    let again = ok(dir.path(), &yaml, &["run", "--json", "--from", "train"]);
    assert!(again["fetch"].is_null() && again["preprocess"].is_null());
    assert_ne!(again["train"]["run_id"], train);
}

fn samples_in(ends: &[usize]) -> u64 {
    ends.len() as u64
}

fn metric(run: &Path, name: &str) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics").join(name)).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn saliency_ranks_first_the_one_feature_that_carries_the_signal() {
    // Two assets x 5 features x 8 steps; the class is the sign of asset 1's feature 3 at the
    // last step. Everything else is noise.
    let shape = SampleShape {
        assets: 2,
        time_steps: 8,
        features: 5,
    };
    let n = 600;
    let mut r = Rng::new(5, "planted");
    let mut x = Vec::with_capacity(n * shape.len());
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let start = x.len();
        x.extend((0..shape.len()).map(|_| r.uniform(1.0)));
        let signal = x[start + (8 + 7) * 5 + 3];
        y.push(u32::from(signal > 0.0));
    }
    let mut cfg = ModelConfig::default();
    cfg.cnn.num_layers = 1;
    cfg.cnn.filters = vec![8];
    cfg.cnn.kernel_sizes = vec![[3, 3]];
    cfg.cnn.pool_sizes = vec![[1, 1]];
    cfg.cnn.dropout_rates = vec![0.0];
    cfg.lstm.units = 16;
    cfg.lstm.dropout = 0.0;
    cfg.dense.layers = vec![16];
    cfg.dense.dropout_rates = vec![0.0];
    cfg.output.num_classes = 2;
    cfg.compilation.learning_rate = 0.005;
    let spec = ModelSpec::from_config(&cfg, shape).unwrap();
    let mut t = TrainingConfig {
        epochs: 15,
        batch_size: 32,
        ..TrainingConfig::default()
    };
    t.callbacks.early_stopping.enabled = false;
    t.callbacks.reduce_lr.enabled = false;
    let mut opts = TrainOptions::from_config(&cfg, &t).unwrap();
    opts.progress = false;
    let weights = vec![1.0; n];
    let mut source = InMemorySource::new(
        shape,
        (x.clone(), y.clone(), weights),
        (Vec::new(), Vec::new(), Vec::new()),
    )
    .unwrap();
    let out = Trainer::new(spec.clone(), opts, Device::flex())
        .unwrap()
        .fit(&mut source, &mut ())
        .unwrap();
    let acc = out.history.last().unwrap().accuracy;
    assert!(
        acc > 0.9,
        "the model did not learn the planted signal: {acc}"
    );

    let ad = Device::flex().autodiff();
    let bytes = binance_ml::model::artifact::model_to_bytes(&out.model).unwrap();
    let grad_model = binance_ml::model::artifact::model_from_bytes(&spec, &bytes, &ad).unwrap();
    let mut sal = Saliency::new(&grad_model);
    sal.add(&grad_model, &x[..200 * shape.len()], &ad);
    assert_eq!(sal.samples, 200);
    let per = sal.per_feature();
    let best = per
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(best, 5 + 3, "per (asset, feature): {per:?}");
    let steps = sal.per_time_step();
    let last = steps.len() - 1;
    assert!(
        steps[..last].iter().all(|v| *v < steps[last]),
        "the last step matters most: {steps:?}"
    );
}

#[test]
fn a_second_model_family_trains_evaluates_and_predicts_through_the_same_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = tiny(&work).replace("model:\n", "model:\n  architecture: MLP_LastStep\n");
    let r = ok(dir.path(), &yaml, &["run", "--json"]);
    // Dense over the last step of 2 assets x features: no conv, no LSTM parameters.
    let features = r["preprocess"]["columns"].as_u64().unwrap();
    let params = r["train"]["parameters"].as_u64().unwrap();
    assert!(params < 2 * features * 8 + 200, "{params} parameters");
    assert!(r["evaluate"]["scores"]["accuracy"].as_f64().unwrap() > 0.0);
    let p = ok(dir.path(), &yaml, &["predict", "--json"]);
    assert_eq!(p["run_id"], r["train"]["run_id"]);
    let model: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(r["train"]["model_dir"].as_str().unwrap()).join("model.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(model["spec"]["architecture"], "MLP_LastStep");

    // An unknown family is a configuration error naming the known ones.
    let bad = yaml.replace("MLP_LastStep", "Transformer");
    let (code, _, err) = common::run_cli(dir.path(), &bad, &["validate-config"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("model.architecture")
            && err.contains("CNN_LSTM_MultiClass")
            && err.contains("MLP_LastStep"),
        "{err}"
    );
}
