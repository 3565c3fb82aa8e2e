//! The `preprocess` and `diagnose` stages through the binary: the quickstart, the real Binance
//! samples, reuse, the memory budget, and the diagnostics verdict.

mod common;

use std::path::Path;

use serde_json::Value;

const QUICKSTART: &str = include_str!("../config/quickstart.yaml");

fn quickstart_in(dir: &Path) -> String {
    QUICKSTART.replace(
        "workdir: \"${BINANCE_ML_WORKDIR:-binance-ml-work}\"",
        &format!("workdir: {:?}", dir.join("work")),
    )
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn ok(dir: &Path, yaml: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = common::run_cli(dir, yaml, &a);
    assert_eq!(code, 0, "{args:?} failed:\n{err}");
    json(&out)
}

#[test]
fn quickstart_preprocesses_reuses_and_diagnoses() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = quickstart_in(dir.path());
    ok(dir.path(), &yaml, &["fetch"]);
    let first = ok(dir.path(), &yaml, &["preprocess"]);
    assert_eq!(first["reused"], false);
    let store = Path::new(first["store_dir"].as_str().unwrap()).to_owned();
    let samples: Vec<u64> = first["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(samples.iter().all(|n| *n > 1000), "samples {samples:?}");

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(store.join("manifest.json")).unwrap()).unwrap();
    let ranges = manifest["ranges"].as_array().unwrap();
    assert_eq!(ranges[0]["end"], ranges[1]["start"]);
    assert_eq!(
        manifest["columns"].as_array().unwrap().len(),
        first["columns"].as_u64().unwrap() as usize
    );
    assert_eq!(manifest["class_counts"][0].as_array().unwrap().len(), 3);
    // Standard scaling fit on train: the train rows of a column have mean ~0, std ~1.
    let rows = binance_ml::store::read_rows(
        &store.join("rows-0000.npz"),
        manifest["columns"].as_array().unwrap().len(),
    )
    .unwrap();
    let ncols = manifest["columns"].as_array().unwrap().len();
    let spread: Vec<f64> = rows
        .chunks_exact(ncols)
        .map(|r| r[0])
        .filter(|x| x.is_finite())
        .collect();
    let mean = spread.iter().sum::<f64>() / spread.len() as f64;
    assert!(
        mean.abs() < 0.5,
        "first shard is training data: scaled mean {mean}"
    );

    // Same config: reused, same store.
    let again = ok(dir.path(), &yaml, &["preprocess"]);
    assert_eq!(again["reused"], true);
    assert_eq!(again["store_dir"], first["store_dir"]);

    let diag = ok(dir.path(), &yaml, &["diagnose"]);
    assert_eq!(diag["report"]["failed"], false);
    for f in [
        "summary.json",
        "class_distribution.png",
        "psi.png",
        "sampled_rows.csv",
        "spread_histogram_BTCUSDT.png",
    ] {
        assert!(
            store.join("diagnostics").join(f).is_file(),
            "missing artifact {f}"
        );
    }
    // Every stage logged a run to the local MLflow store, linked to the run it consumed.
    let mlruns = dir.path().join("work/mlruns");
    let runs_of = |experiment: &str| -> Vec<std::path::PathBuf> {
        let exp = std::fs::read_dir(&mlruns)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                std::fs::read_to_string(p.join("meta.yaml"))
                    .is_ok_and(|m| m.contains(&format!("name: {experiment}")))
            })
            .unwrap_or_else(|| panic!("no experiment {experiment}"));
        std::fs::read_dir(exp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("meta.yaml").is_file())
            .collect()
    };
    let tag = |run: &Path, key: &str| std::fs::read_to_string(run.join("tags").join(key)).ok();
    let fetch_runs = runs_of("binance-data-collection");
    assert_eq!(fetch_runs.len(), 1);
    let fetch_id = fetch_runs[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let pre_runs = runs_of("binance-preprocessing");
    assert_eq!(pre_runs.len(), 2, "two preprocess runs (built, reused)");
    for run in &pre_runs {
        assert_eq!(
            tag(run, "binance_ml.input_run.data_collection").as_deref(),
            Some(fetch_id.as_str())
        );
    }
    let diag_runs = runs_of("binance-data-diagnostics");
    let consumed = tag(&diag_runs[0], "binance_ml.input_run.preprocessing").expect("lineage tag");
    assert!(
        pre_runs.iter().any(|r| r.ends_with(&consumed)),
        "diagnose consumed {consumed}"
    );
    assert!(tag(&diag_runs[0], "binance_ml.config_hash").is_some());
}

#[test]
fn numpy_reads_the_store_files() {
    let Some(python) = common::python("numpy_reads_the_store_files") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = quickstart_in(dir.path());
    ok(dir.path(), &yaml, &["fetch"]);
    let first = ok(dir.path(), &yaml, &["preprocess"]);
    let store = Path::new(first["store_dir"].as_str().unwrap()).to_owned();
    let m = binance_ml::store::read_manifest(&store).unwrap();
    let rows_file = store.join(&m.shards[0].file);
    let rows = binance_ml::store::read_rows_f32(&rows_file, m.columns.len(), None).unwrap();
    let s = binance_ml::store::load_samples(&store, &m).unwrap();

    // numpy prints each array's dtype, shape and the sha256 of its values; ours must match.
    let script = r#"
import hashlib, sys, numpy as np
def show(name, a):
    digest = hashlib.sha256(a.astype(a.dtype.newbyteorder("<")).tobytes())
    print(name, a.dtype, "x".join(map(str, a.shape)), digest.hexdigest())
show("rows", np.load(sys.argv[1])["rows"])
z = np.load(sys.argv[2])
for name in ["train", "validation", "test", "label", "regime", "price_change", "weight"]:
    show(name, z[name])
"#;
    let out = common::python_stdout(&python, script, &[rows_file, store.join("samples.npz")]);
    let hash = |bytes: Vec<u8>| binance_ml::data::cache::sha256_hex(&bytes);
    let i64s = |v: &[i64]| hash(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    let f64s = |v: &[f64]| hash(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    let mut want = vec![format!(
        "rows float32 {}x{} {}",
        rows.len() / m.columns.len(),
        m.columns.len(),
        hash(rows.iter().flat_map(|x| x.to_le_bytes()).collect())
    )];
    for (name, ends) in ["train", "validation", "test"].iter().zip(&s.ends) {
        let ends: Vec<i64> = ends.iter().map(|&e| e as i64).collect();
        want.push(format!("{name} int64 {} {}", ends.len(), i64s(&ends)));
    }
    for (name, v) in [("label", &s.labels), ("regime", &s.regimes)] {
        want.push(format!("{name} int64 {} {}", v.len(), i64s(v)));
    }
    for (name, v) in [("price_change", &s.price_changes), ("weight", &s.weights)] {
        want.push(format!("{name} float64 {}x1 {}", v.len(), f64s(v)));
    }
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}

#[test]
fn rare_classes_fail_diagnostics_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    // +-5 % over 60 s never happens: the outer classes are empty.
    let yaml = quickstart_in(dir.path())
        .replace("boundaries: [-0.03, 0.03]", "boundaries: [-5, 5]")
        .replace("fail_on_invalid: false", "fail_on_invalid: true");
    ok(dir.path(), &yaml, &["fetch"]);
    ok(dir.path(), &yaml, &["preprocess"]);
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["diagnose"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("class < -5 has 0 train samples"), "{err}");
}

#[test]
fn diagnose_before_preprocess_and_a_small_budget_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = quickstart_in(dir.path());
    ok(dir.path(), &yaml, &["fetch"]);
    let (code, _, err) = common::run_cli(dir.path(), &yaml, &["diagnose"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("run `binance-ml preprocess` first"), "{err}");

    let small = yaml.replace(
        "preprocessing:\n",
        "preprocessing:\n  memory:\n    max_bytes: 100000\n",
    );
    let (code, _, err) = common::run_cli(dir.path(), &small, &["preprocess"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("preprocessing.memory.max_bytes is 100000 bytes but one shard needs about"),
        "{err}"
    );
}

#[test]
fn real_binance_samples_preprocess_and_diagnose() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::real_samples_config(&dir.path().join("work"), &shared, "", "");
    ok(dir.path(), &yaml, &["fetch"]);
    let p = ok(dir.path(), &yaml, &["preprocess"]);
    assert_eq!(p["steps"], 650);
    let d = ok(dir.path(), &yaml, &["diagnose"]);
    let btc = &d["report"]["spreads"][0];
    assert_eq!(btc[0], "BTCUSDT");
    // One 0.01 tick on ~61,800 is ~0.0016 bps: the median spread is one tick.
    let median = btc[1]["median_bps"].as_f64().unwrap();
    assert!(
        (median - 0.0016).abs() < 0.0002,
        "BTC median spread {median} bps"
    );
    assert_eq!(d["report"]["gaps"][0][1]["missing"], 0);
}
