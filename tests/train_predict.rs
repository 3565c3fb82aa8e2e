//! `train` and `predict` end to end through the binary, on a small synthetic market and on the
//! real Binance samples: artifacts, MLflow step metrics, resume equivalence, determinism,
//! memory budget, batches from the store, and predict's rows equal to the store's.

mod common;

use std::path::Path;

use binance_ml::config::{self, LoadedConfig, Origin, Overrides};
use binance_ml::model::{ModelArtifact, predict_proba};
use binance_ml::predict::{self, ModelRef};
use binance_ml::store::{load_samples, read_manifest, read_rows_f32};
use binance_ml::train::{BatchSource, Split, StoreSource};
use serde_json::Value;

/// One synthetic day at 10 s, a tiny model: seconds per epoch.
fn tiny(work: &Path, extra: &str) -> String {
    common::tiny_config(work, "2024-08-01", extra, "")
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn ok(dir: &Path, yaml: &str, args: &[&str]) -> String {
    let (code, out, err) = common::run_cli(dir, yaml, args);
    assert_eq!(code, 0, "{args:?} failed:\n{err}");
    out
}

fn loaded(yaml: &str) -> LoadedConfig {
    config::parse(yaml, Origin::Embedded, &Overrides::default(), &|_| None).unwrap()
}

/// The model's probabilities on a fixed input: equal outputs = equal weights.
fn outputs(model_dir: &Value) -> Vec<f32> {
    let dir = Path::new(model_dir.as_str().unwrap());
    let art = ModelArtifact::load(dir, &burn::tensor::Device::flex()).unwrap();
    let n = art.manifest.spec.input.len() * 4;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    predict_proba(&art.model, &x, 1.0).unwrap()
}

#[test]
fn train_logs_epochs_saves_a_model_and_predict_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = tiny(&work, "  epochs: 2");
    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    let t = json(&ok(dir.path(), &yaml, &["train", "--json"]));
    assert_eq!(t["epochs"], 2);
    let run_id = t["run_id"].as_str().unwrap();
    let model_dir = t["model_dir"].as_str().unwrap();
    for f in ["model.json", "weights.bpk", "training_config.yaml"] {
        assert!(Path::new(model_dir).join(f).is_file(), "{f} missing");
    }
    // MLflow: per-epoch step metrics, curves, the model as run artifacts.
    let run_dir = common::files_containing(&work.join("mlruns"), run_id)
        .into_iter()
        .find_map(|p| {
            p.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == run_id))
                .map(Path::to_path_buf)
        })
        .expect("the training run is in the local store");
    let loss = std::fs::read_to_string(run_dir.join("metrics/val_loss")).unwrap();
    let steps: Vec<&str> = loss
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(steps, ["1", "2"], "{loss}");
    for a in [
        "artifacts/plots/training_loss.png",
        "artifacts/plots/training_accuracy.png",
        "artifacts/model/model.json",
        "artifacts/model/weights.bpk",
        "artifacts/model/MLmodel",
        "artifacts/model_summary.txt",
    ] {
        assert!(
            run_dir.join(a).is_file(),
            "{a} missing in {}",
            run_dir.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(run_dir.join("params/parameters")).unwrap(),
        t["parameters"].to_string()
    );
    // Hyperparameters as flat dotted params, on the local store too.
    assert_eq!(
        std::fs::read_to_string(run_dir.join("params/model.lstm.units")).unwrap(),
        "8"
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("params/optimizer.name")).unwrap(),
        "adam"
    );

    // predict: the latest window, then JSON lines for a range.
    let (code, out, err) = common::run_cli(dir.path(), &yaml, &["predict"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2024-08-01T23:59:50.000Z"), "{out}");
    let lines = ok(
        dir.path(),
        &yaml,
        &[
            "predict",
            "--json",
            "--run-id",
            run_id,
            "--start",
            "2024-08-01T20:00:00Z",
            "--end",
            "2024-08-01T20:01:00Z",
        ],
    );
    let preds: Vec<Value> = lines.lines().map(json).collect();
    assert_eq!(preds.len(), 6, "{lines}");
    for p in &preds {
        let sum: f64 = p["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-4, "{p}");
        assert_eq!(p["run_id"], run_id);
    }
    assert_eq!(preds[0]["timestamp"], "2024-08-01T20:00:00.000Z");

    // Unknown models and too-early ranges are clear errors.
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["predict", "--run-id", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    // The synthetic market has a past before the configured range as far back as its burn-in
    // (a day without a signal): a range at that edge has too few rows for one window, and a
    // month earlier there are none.
    let predict_range = |start: &str, end: &str| {
        common::run_cli(
            dir.path(),
            &yaml,
            &["predict", "--start", start, "--end", end],
        )
    };
    let (code, _, err) = predict_range("2024-07-31T00:01:00Z", "2024-07-31T00:02:00Z");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no complete window of 16 steps"), "{err}");
    let (code, _, err) = predict_range("2024-07-01T00:00:00Z", "2024-07-01T00:01:00Z");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("has no BTCUSDT snapshot"), "{err}");
}

#[test]
fn predict_rows_equal_the_store_rows_the_model_was_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = tiny(&work, "  epochs: 1");
    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    let t = json(&ok(dir.path(), &yaml, &["train", "--json"]));
    let run_id = t["run_id"].as_str().unwrap().to_owned();
    let store = Path::new(t["store_dir"].as_str().unwrap()).to_path_buf();
    let manifest = read_manifest(&store).unwrap();
    let samples = load_samples(&store, &manifest).unwrap();
    let loaded = loaded(&yaml);
    let (_, model_dir) = predict::locate_model(&loaded, &ModelRef::Run(run_id.clone())).unwrap();
    let art = ModelArtifact::load(&model_dir, &burn::tensor::Device::flex()).unwrap();

    // Three test-split windows, predicted through the source and from the store rows.
    let ends = &samples.ends[2][..3];
    let at = |k: usize| {
        chrono::DateTime::from_timestamp_millis(
            manifest.grid_start_ms + k as i64 * manifest.cadence_ms,
        )
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let out = predict::predict(
        &loaded,
        &ModelRef::Run(run_id),
        Some((&at(ends[0]), &at(ends[2] + 1))),
    )
    .unwrap();
    let n = manifest.columns.len();
    let shard = manifest
        .shards
        .iter()
        .find(|s| s.first_step + 16 <= ends[0] && ends[2] < s.first_step + s.steps)
        .expect("one shard holds the windows");
    let rows = read_rows_f32(&store.join(&shard.file), n, Some(&shard.sha256)).unwrap();
    let mut x = Vec::new();
    for &e in ends {
        manifest
            .layout()
            .push_window(&rows, e - shard.first_step, 16, &mut x);
    }
    let expected = predict_proba(&art.model, &x, 1.0).unwrap();
    let got: Vec<f64> = out
        .predictions
        .iter()
        .filter(|p| ends.iter().any(|&e| at(e) == p.timestamp))
        .flat_map(|p| p.probabilities.clone())
        .collect();
    assert_eq!(got.len(), expected.len(), "{:?}", out.predictions);
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - f64::from(*e)).abs() < 1e-5, "{got:?} vs {expected:?}");
    }
}

#[test]
fn resume_ends_where_an_uninterrupted_run_ends_and_seeds_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let two = tiny(&work, "  epochs: 2");
    ok(dir.path(), &two, &["fetch"]);
    ok(dir.path(), &two, &["preprocess"]);
    let full = json(&ok(dir.path(), &two, &["train", "--json"]));
    let again = json(&ok(dir.path(), &two, &["train", "--json"]));
    let reference = outputs(&full["model_dir"]);
    assert_eq!(reference, outputs(&again["model_dir"]));
    // Not only the same weights: the same bytes and weights_sha256 (parameter ids included).
    assert_same_files(&full["model_dir"], &again["model_dir"]);

    // "Crash" after epoch 1 (a 1-epoch run writes the same checkpoint), then resume to 2.
    let one = tiny(&work, "  epochs: 1");
    let first = json(&ok(dir.path(), &one, &["train", "--json"]));
    assert_ne!(reference, outputs(&first["model_dir"]));
    let resumed = json(&ok(dir.path(), &two, &["train", "--resume", "--json"]));
    assert_eq!(resumed["resumed_after_epoch"], 1);
    assert_eq!(resumed["epochs"], 2);
    assert_eq!(reference, outputs(&resumed["model_dir"]));
    assert_same_files(&full["model_dir"], &resumed["model_dir"]);
    assert_eq!(
        without_speed(&resumed["metrics"]),
        without_speed(&full["metrics"])
    );

    // A different seed trains different weights.
    let other = tiny(&work, "  epochs: 2\n  seed: 43");
    let o = json(&ok(dir.path(), &other, &["train", "--json"]));
    assert_ne!(reference, outputs(&o["model_dir"]));
}

#[test]
fn sigterm_stops_training_after_a_batch_with_a_checkpoint_and_resume_matches() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let three = tiny(&work, "  epochs: 3");
    ok(dir.path(), &three, &["fetch"]);
    ok(dir.path(), &three, &["preprocess"]);
    let full = json(&ok(dir.path(), &three, &["train", "--json"]));

    // SIGTERM a little after epoch 1 ended: training stops after the batch in flight.
    let config = dir.path().join("config.yaml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_binance-ml"))
        .args(["train", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "train ended early:\n{log}"
        );
        log.push_str(&line);
        if line.contains("epoch done epoch=1 ") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(
        log.contains("training stopped by SIGTERM in epoch"),
        "{log}"
    );
    assert!(log.contains("--resume"), "{log}");
    let killed = binance_ml::tracking::Tracker::open(&binance_ml::tracking::TrackingSettings {
        workdir: work.clone(),
        ..binance_ml::tracking::TrackingSettings::default()
    })
    .unwrap();
    let exp = killed
        .store()
        .experiment_by_name("binance-model-training")
        .unwrap()
        .unwrap();
    let statuses: Vec<_> = killed
        .search_runs(&[exp.experiment_id], "", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.info.status)
        .collect();
    assert!(
        statuses.contains(&binance_ml::tracking::RunStatus::Killed),
        "{statuses:?}"
    );
    assert!(!statuses.contains(&binance_ml::tracking::RunStatus::Running));

    // Resuming continues the cut epoch from its next batch: the same model, bit for bit.
    let resumed = json(&ok(dir.path(), &three, &["train", "--resume", "--json"]));
    assert_eq!(resumed["epochs"], 3);
    assert_same_files(&full["model_dir"], &resumed["model_dir"]);
    assert_eq!(
        without_speed(&resumed["metrics"]),
        without_speed(&full["metrics"])
    );
}

/// Two model directories hold the same `weights.bpk` bytes and `weights_sha256`.
fn assert_same_files(a: &Value, b: &Value) {
    let read = |d: &Value| {
        let dir = Path::new(d.as_str().unwrap());
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap())
                .unwrap();
        (
            std::fs::read(dir.join("weights.bpk")).unwrap(),
            m["weights_sha256"].clone(),
        )
    };
    let ((wa, sa), (wb, sb)) = (read(a), read(b));
    assert!(wa == wb, "weights.bpk of {a} and {b} differ");
    assert_eq!(sa, sb);
}

/// Epoch metrics without the wall-clock speed (the only value a resume may change).
fn without_speed(m: &Value) -> Value {
    let mut m = m.clone();
    m["samples_per_second"] = Value::Null;
    m
}

#[test]
fn store_batches_cover_each_sample_once_in_an_order_set_by_epoch_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = tiny(&work, "  epochs: 1");
    ok(dir.path(), &yaml, &["fetch"]);
    let p = json(&ok(dir.path(), &yaml, &["preprocess", "--json"]));
    let store = Path::new(p["store_dir"].as_str().unwrap()).to_path_buf();
    let manifest = read_manifest(&store).unwrap();
    let samples = load_samples(&store, &manifest).unwrap();
    let mut source = StoreSource::open(&store, manifest.clone(), 300, 2).unwrap();
    assert_eq!(source.len(Split::Train), samples.ends[0].len());
    let labels = |s: &mut StoreSource, epoch| -> (Vec<u32>, Vec<usize>) {
        let batches: Vec<_> = s
            .batches(Split::Train, epoch, 11, 50)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        (
            batches.iter().flat_map(|b| b.y.clone()).collect(),
            batches.iter().map(|b| b.len()).collect(),
        )
    };
    let (e1, sizes) = labels(&mut source, 1);
    assert_eq!(e1, labels(&mut source, 1).0);
    assert_ne!(e1, labels(&mut source, 2).0);
    assert_eq!(sizes.iter().sum::<usize>(), samples.ends[0].len());
    assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == 50));
    let mut want: Vec<u32> = samples.ends[0]
        .iter()
        .map(|&e| samples.labels[e] as u32)
        .collect();
    let mut got = e1.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);

    // Validation is in time order; its first window is the store's rows, sliced.
    let first = source
        .batches(Split::Validation, 1, 11, 1)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let end = samples.ends[1][0];
    let shard = manifest
        .shards
        .iter()
        .find(|s| s.first_step + 16 <= end && end < s.first_step + s.steps)
        .unwrap();
    let rows = read_rows_f32(&store.join(&shard.file), manifest.columns.len(), None).unwrap();
    let mut x = Vec::new();
    manifest
        .layout()
        .push_window(&rows, end - shard.first_step, 16, &mut x);
    assert_eq!(first.x, x);
    assert_eq!(first.y, vec![samples.labels[end] as u32]);
    assert!((first.weights[0] - samples.weights[end] as f32).abs() < 1e-6);
}

#[test]
fn train_needs_a_store_and_a_budget_that_holds_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = tiny(&work, "  epochs: 1");
    ok(dir.path(), &yaml, &["fetch"]);
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["train"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("run `binance-ml preprocess` first"), "{err}");
    ok(dir.path(), &yaml, &["preprocess"]);
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["train", "--resume"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no checkpoint"), "{err}");
    let small = tiny(&work, "  epochs: 1\n  memory: {max_bytes: 200000}");
    let (code, _, err) = common::run_cli(dir.path(), &small, &["train"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("training.memory.max_bytes = 200000 bytes cannot hold one training batch")
            && err.contains("training.shuffle_buffer"),
        "{err}"
    );
}

#[test]
fn real_binance_samples_train_and_predict() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::real_samples_config(
        &dir.path().join("work"),
        &shared,
        common::TINY_MODEL,
        "training: {epochs: 2, batch_size: 32}",
    );
    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    let t = json(&ok(dir.path(), &yaml, &["train", "--json"]));
    assert_eq!(t["epochs"], 2);
    let p: Vec<Value> = ok(dir.path(), &yaml, &["predict", "--json"])
        .lines()
        .map(json)
        .collect();
    assert_eq!(p.len(), 1);
    // The window ends at the newest BTC snapshot of the capture.
    let btc = std::fs::read_to_string(shared.join("binance_1s_top10/spot_BTCUSDT_20240808-09.csv"))
        .unwrap();
    let newest: i64 = btc
        .lines()
        .last()
        .and_then(|l| l.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let ts = chrono::DateTime::parse_from_rfc3339(p[0]["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(ts.timestamp(), newest, "{:?}", p[0]);
}

#[test]
fn with_a_server_the_model_is_registered_and_predict_loads_it_by_version_and_alias() {
    let Some(uri) = common::env_or_skip(
        "BINANCE_ML_TEST_MLFLOW_URI",
        "with_a_server_the_model_is_registered_and_predict_loads_it_by_version_and_alias",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tag = common::unique("train");
    let mlflow = common::mlflow_section(&uri, &tag);
    let yaml = tiny(&dir.path().join("work"), "  epochs: 1") + &mlflow;
    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    let t = json(&ok(dir.path(), &yaml, &["train", "--json"]));
    let name = format!("{tag}_BTCUSDT");
    assert_eq!(t["registered"][0], name.as_str());
    assert_eq!(t["registered"][1], "1");
    let run_id = t["run_id"].as_str().unwrap();

    // A machine that did not train: the model comes from the server's run artifacts.
    let elsewhere = tiny(&dir.path().join("other"), "  epochs: 1") + &mlflow;
    let by_version = ok(
        dir.path(),
        &elsewhere,
        &["predict", "--json", "--model-version", "1"],
    );
    let p = json(by_version.lines().next().unwrap());
    assert_eq!(p["run_id"], run_id);
    assert!(
        dir.path()
            .join(format!("other/model-cache/{run_id}/model/weights.bpk"))
            .is_file()
    );
    let settings = common::settings(&uri, dir.path());
    let tracker = binance_ml::tracking::Tracker::open(&settings).unwrap();
    tracker.set_alias(&name, "champion", "1").unwrap();
    let by_alias = ok(
        dir.path(),
        &elsewhere,
        &["predict", "--json", "--model-alias", "champion"],
    );
    assert_eq!(by_alias, by_version);
    let (code, _, err) = common::run_cli(
        dir.path(),
        &elsewhere,
        &["predict", "--model-alias", "nobody"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("nobody"), "{err}");
}
