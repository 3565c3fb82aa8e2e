//! Issue #19, the correctness sweep: each finding from real data and fault trials, checked
//! through the binary where the user meets it (COIN-M symbols, every configuration problem at
//! once, predict's history, a corrupt store, a failed preprocess, misleading messages, a model
//! trained while MLflow was unreachable).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use binance_ml::store::{read_manifest, verify_store};
use serde_json::Value;

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn ok(dir: &Path, yaml: &str, args: &[&str]) -> String {
    let (code, out, err) = common::run_cli(dir, yaml, args);
    assert_eq!(code, 0, "{args:?} failed:\n{err}");
    out
}

/// One synthetic day at 10 s with the tiny model, trained for one epoch.
fn synthetic(work: &Path, tail: &str) -> String {
    common::tiny_config(work, "2024-08-01", "  epochs: 1", tail)
}

/// The store directory `preprocess --json` reports.
fn store_of(dir: &Path, yaml: &str) -> PathBuf {
    let p = json(&ok(dir, yaml, &["preprocess", "--json"]));
    PathBuf::from(p["store_dir"].as_str().unwrap())
}

#[test]
fn coin_m_symbols_go_through_fetch_preprocess_train_and_predict() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The USD-M captures under COIN-M perpetual names: real rows, real wide layout.
    let csv = dir.path().join("coinm");
    std::fs::create_dir_all(&csv).unwrap();
    for (from, to) in [("BTCUSDT", "BTCUSD_PERP"), ("ETHUSDT", "ETHUSD_PERP")] {
        let src = shared.join(format!("binance_1s_top10/usdm_{from}_20240718-19.csv"));
        let text = std::fs::read_to_string(src).unwrap();
        let renamed = text.replace(&format!(",{from},"), &format!(",{to},"));
        assert_eq!(renamed.matches(to).count(), text.lines().count() - 1);
        std::fs::write(csv.join(format!("coinm_{to}.csv")), renamed).unwrap();
    }
    let yaml = common::captures_config(
        &dir.path().join("work"),
        &csv.join("coinm_*.csv"),
        ["BTCUSD_PERP", "ETHUSD_PERP"],
        ["2024-07-18", "2024-07-19"],
        common::TINY_MODEL,
        "training: {epochs: 1, batch_size: 32}",
    );
    let f = json(&ok(dir.path(), &yaml, &["fetch", "--json"]));
    assert!(f.to_string().contains("BTCUSD_PERP"), "{f}");
    let store = store_of(dir.path(), &yaml);
    let m = read_manifest(&store).unwrap();
    assert_eq!(m.assets, ["BTCUSD_PERP", "ETHUSD_PERP"]);
    assert!(m.columns.iter().any(|c| c == "ETHUSD_PERP.bid_ask_spread"));
    ok(dir.path(), &yaml, &["train"]);
    let p: Vec<Value> = ok(dir.path(), &yaml, &["predict", "--json"])
        .lines()
        .map(json)
        .collect();
    assert_eq!(p.len(), 1, "{p:?}");
    // The newest window ends at the capture's last second.
    assert_eq!(p[0]["timestamp"], "2024-07-19T00:05:00.000Z", "{:?}", p[0]);
}

#[test]
fn every_problem_is_reported_at_once_with_every_bad_symbol() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = common::tiny_config(&work, "2024-08-01", "", "")
        .replace(
            "{target_asset: BTCUSDT, correlated_assets: [ETHUSDT]}",
            "{target_asset: btc-usdt, correlated_assets: [ETHUSDT, \"ETH/USDT\"]}",
        )
        .replace("output: {num_classes: 3}", "output: {num_classes: 4}")
        .replace("test_ratio: 0.15", "test_ratio: 0.25");
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["validate-config"]);
    assert_eq!(code, 2, "{err}");
    for needle in [
        "4 problems",
        "data.asset_pairs.target_asset: invalid symbol \"btc-usdt\"",
        "data.asset_pairs.correlated_assets[1]: invalid symbol \"ETH/USDT\"",
        "model.output.num_classes",
        "must be 1, got 1.1",
    ] {
        assert!(err.contains(needle), "{needle:?} missing:\n{err}");
    }
}

#[test]
fn predict_counts_only_the_look_back_its_recipe_uses() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Percentage labels at 1 s: the default 3600 s volatility window is read by nothing.
    let yaml = common::real_samples_config(
        &dir.path().join("work"),
        &shared,
        common::TINY_MODEL,
        "training: {epochs: 1, batch_size: 32}",
    );
    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    ok(dir.path(), &yaml, &["train"]);
    // The capture starts at 23:54:15 without gaps; with momentum windows of 20 steps the
    // first complete 30-step window ends 20 + 30 - 1 steps later, at 23:55:04.
    let range = |a: &str, b: &str| {
        [
            "predict".to_owned(),
            "--json".into(),
            "--start".into(),
            format!("2024-08-08T23:55:{a}Z"),
            "--end".into(),
            format!("2024-08-08T23:55:{b}Z"),
        ]
    };
    let args = range("04", "06");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p: Vec<Value> = ok(dir.path(), &yaml, &args).lines().map(json).collect();
    let times: Vec<&str> = p.iter().map(|p| p["timestamp"].as_str().unwrap()).collect();
    assert_eq!(
        times,
        ["2024-08-08T23:55:04.000Z", "2024-08-08T23:55:05.000Z"]
    );
    let args = range("00", "04");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &args);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("needs 50 consecutive usable steps (30 + 20 of feature look-back)"),
        "{err}"
    );
}

#[test]
fn predict_help_json_order_and_a_range_without_end() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = synthetic(&work, "");
    let (_, help, _) = common::run_cli(dir.path(), &yaml, &["predict", "--help"]);
    assert!(help.contains("requires --end"), "{help}");
    assert!(help.contains("requires --start"), "{help}");
    let (code, _, err) = common::run_cli(
        dir.path(),
        &yaml,
        &["predict", "--start", "2024-08-01T20:00:00Z"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--end"), "{err}");

    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    ok(dir.path(), &yaml, &["train"]);
    let p = json(&ok(dir.path(), &yaml, &["predict", "--json"]));
    let classes: Vec<&str> = p["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // Class order is move order (lowest first), not the name order of the keyed object.
    let mut sorted = classes.clone();
    sorted.sort();
    assert_ne!(
        classes, sorted,
        "the test needs names that sort differently"
    );
    let list = p["class_probabilities"].as_array().unwrap();
    assert_eq!(list.len(), classes.len());
    for (c, v) in classes.iter().zip(list) {
        assert_eq!(&p["probabilities"][c], v, "{p}");
    }
}

#[test]
fn a_corrupt_store_is_rebuilt_by_preprocess_and_named_by_train() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = synthetic(&work, "");
    ok(dir.path(), &yaml, &["fetch"]);
    let store = store_of(dir.path(), &yaml);
    let rows = store.join("rows-0000.npz");
    let flip = || {
        let mut bytes = std::fs::read(&rows).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&rows, bytes).unwrap();
    };
    let manifest = read_manifest(&store).unwrap();

    flip();
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["train"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&rows.display().to_string()), "{err}");
    assert!(err.contains("preprocess --force"), "{err}");
    assert!(!err.contains("fetch --force"), "{err}");

    // preprocess rebuilds what fails its hash instead of reusing it.
    let (code, out, err) = common::run_cli(dir.path(), &yaml, &["preprocess"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("(reused)"), "{out}");
    assert!(err.contains("rebuilding the preprocessed store"), "{err}");
    let rebuilt = read_manifest(&store).unwrap();
    verify_store(&store, &rebuilt).unwrap();
    assert_eq!(
        rebuilt.shards, manifest.shards,
        "the rebuild gives the same bytes"
    );

    // So does `run`, which then trains on the repaired store.
    flip();
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["run", "--until", "train"]);
    assert_eq!(code, 0, "{err}");
    verify_store(&store, &read_manifest(&store).unwrap()).unwrap();
    let (_, out, _) = common::run_cli(dir.path(), &yaml, &["preprocess"]);
    assert!(out.contains("(reused)"), "{out}");
}

#[test]
fn a_failed_preprocess_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    // 8640 steps: a 2000-step window fits no 15 % split, found after the rows are written.
    let yaml = synthetic(&work, "").replace("window_steps: 16", "window_steps: 2000");
    ok(dir.path(), &yaml, &["fetch"]);
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["preprocess"]);
    // Too little data for the window: a data error (a short nightly day is the same case).
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("preprocessing.window_steps"), "{err}");
    let left: Vec<PathBuf> = std::fs::read_dir(work.join("preprocessed"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A file-source configuration over `paths` (BTCUSDT only).
fn files_yaml(work: &Path, paths: &[String]) -> String {
    format!(
        "workdir: {work:?}\ndata:\n  source_type: file\n  files: {{paths: {paths:?}, layout: wide}}\n  \
         asset_pairs: {{target_asset: BTCUSDT}}\n  time_range: {{start_date: \"2024-08-08\", \
         end_date: \"2024-08-09\", cadence_seconds: 1}}\n  order_book: {{depth_levels: 10}}\n"
    )
}

#[test]
fn file_problems_say_what_they_are() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let sample =
        std::fs::read(shared.join("binance_1s_top10/spot_BTCUSDT_20240808-09.csv")).unwrap();
    let fetch = |path: &Path| {
        let yaml = files_yaml(&work, &[path.display().to_string()]);
        common::run_cli(dir.path(), &yaml, &["fetch", "--force"])
    };

    // A truncated gzip: the line after the last one read, not line 0.
    let gz = dir.path().join("truncated.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&sample).unwrap();
    let full = enc.finish().unwrap();
    std::fs::write(&gz, &full[..full.len() / 2]).unwrap();
    let (code, _, err) = fetch(&gz);
    assert_eq!(code, 3, "{err}");
    let at = format!("{}:", gz.display());
    let line: u64 = err[err.find(&at).unwrap() + at.len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(line > 1, "{err}");
    assert!(err.contains("truncated or corrupt"), "{err}");

    // A directory is called one, at validation time already.
    let (code, _, err) = fetch(&shared.join("binance_1s_top10"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("data.files.paths[0]") && err.contains("is a directory"),
        "{err}"
    );

    // An empty file is called empty.
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = fetch(&empty);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("{}: the file is empty", empty.display())),
        "{err}"
    );

    // A header-only file is named.
    let header = dir.path().join("header.csv");
    let first_line = sample.split(|b| *b == b'\n').next().unwrap();
    std::fs::write(&header, [first_line, b"\n"].concat()).unwrap();
    let (code, _, err) = fetch(&header);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "{}: the file has a header but no rows",
            header.display()
        )),
        "{err}"
    );
    assert!(err.contains("symbol BTCUSDT has no rows"), "{err}");
}

#[test]
fn relative_file_paths_resolve_against_the_configuration_file() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        shared.join("binance_1s_top10/spot_BTCUSDT_20240808-09.csv"),
        data.join("btc.csv"),
    )
    .unwrap();
    let yaml = files_yaml(&dir.path().join("work"), &["data/*.csv".into()]);
    // run_cli writes the configuration into `dir` and runs from the crate's directory.
    let (code, out, err) = common::run_cli(dir.path(), &yaml, &["validate-config", "--json"]);
    assert_eq!(code, 0, "{err}");
    let paths = &json(&out)["config"]["data"]["files"]["paths"];
    assert_eq!(paths[0], data.join("*.csv").display().to_string());
    assert!(!err.contains("matches no file"), "{err}");
    ok(dir.path(), &yaml, &["fetch"]);

    // A pattern that matches nothing yet (record writes the files) is a warning only.
    let later = files_yaml(&dir.path().join("work"), &["recordings/*.csv".into()]);
    let (code, _, err) = common::run_cli(dir.path(), &later, &["validate-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("data.files.paths[0]") && err.contains("matches no file (yet)"),
        "{err}"
    );
}

#[test]
fn out_of_range_numbers_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    for (training, key, value) in [
        (
            "  shuffle_buffer: 1000000000000",
            "training.shuffle_buffer",
            "1000000000000",
        ),
        (
            "  epochs: 100000000000000000000",
            "training.epochs",
            "100000000000000000000",
        ),
    ] {
        let yaml = common::tiny_config(&work, "2024-08-01", training, "")
            .replace("  shuffle_buffer: 500\n", "");
        let (code, _, err) = common::run_cli(dir.path(), &yaml, &["validate-config"]);
        assert_eq!(code, 2, "{err}");
        assert!(!err.contains("syntax error"), "{err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(err.contains("out of range"), "{key}: {err}");
        assert!(err.contains(value), "{key}: {err}");
    }
}

#[test]
fn predict_and_evaluate_fall_back_to_local_models_when_mlflow_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    // A port nobody listens on: every MLflow call fails to connect, training spools.
    let port = common::free_port();
    let yaml = synthetic(
        &work,
        &format!(
            "mlflow:\n  tracking_uri: http://127.0.0.1:{port}\n  client: {{timeout_seconds: 2, max_retries: 0}}\n"
        ),
    );
    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    let t = json(&ok(dir.path(), &yaml, &["train", "--json"]));
    let run_id = t["run_id"].as_str().unwrap();
    let (code, out, err) = common::run_cli(dir.path(), &yaml, &["predict", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["run_id"], run_id);
    assert!(err.contains("trained locally"), "{err}");
    assert!(err.contains(&format!("run {run_id}")), "{err}");
    let (code, out, err) = common::run_cli(dir.path(), &yaml, &["evaluate", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["model_run_id"], run_id);
    assert!(err.contains("trained locally"), "{err}");
}
