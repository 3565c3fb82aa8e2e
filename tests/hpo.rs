//! Hyperparameter search through `train`: a study run with nested trial runs in the HPO
//! experiment, rolling folds, the final model built with the best trial's parameters, and a
//! rerun that resumes the finished study instead of repeating it.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn ok(dir: &Path, yaml: &str, args: &[&str]) -> Value {
    let (code, out, err) = common::run_cli(dir, yaml, args);
    assert_eq!(code, 0, "{args:?} failed:\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs of the local store's experiment `name`: (run dir, tags dir).
fn runs(mlruns: &Path, name: &str) -> Vec<PathBuf> {
    for exp in std::fs::read_dir(mlruns).unwrap() {
        let exp = exp.unwrap().path();
        let meta = std::fs::read_to_string(exp.join("meta.yaml")).unwrap_or_default();
        if meta.contains(&format!("name: {name}")) {
            return std::fs::read_dir(&exp)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.join("meta.yaml").is_file())
                .collect();
        }
    }
    Vec::new()
}

fn tag(run: &Path, name: &str) -> String {
    std::fs::read_to_string(run.join("tags").join(name)).unwrap_or_default()
}

#[test]
fn train_with_a_search_runs_nested_trials_and_uses_the_best_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let yaml = common::tiny_config(
        &work,
        "2024-08-01",
        "  epochs: 3",
        r#"hyperparameter_optimization:
  enabled: true
  n_trials: 4
  n_folds: 2
  metric: val_accuracy
  direction: maximize
  sampler: tpe
  seed: 3
  pruning: {n_startup_trials: 2, n_warmup_steps: 1}
  search_space:
    learning_rate: {type: float, low: 0.0005, high: 0.01, log: true}
    dense_units_1: [4, 16]"#,
    );
    ok(dir.path(), &yaml, &["fetch", "--json"]);
    ok(dir.path(), &yaml, &["preprocess", "--json"]);
    let t = ok(dir.path(), &yaml, &["train", "--json"]);
    let mlruns = work.join("mlruns");
    let hpo = runs(&mlruns, "binance-hyperparameter-optimization");
    let study: Vec<&PathBuf> = hpo
        .iter()
        .filter(|r| tag(r, "binance_ml.model") == "study")
        .collect();
    assert_eq!(study.len(), 1);
    let study_id = study[0].file_name().unwrap().to_str().unwrap();
    let trials: Vec<&PathBuf> = hpo
        .iter()
        .filter(|r| tag(r, "binance_ml.model") == "trial")
        .collect();
    assert_eq!(trials.len(), 4);
    for trial in &trials {
        assert_eq!(tag(trial, "mlflow.parentRunId"), study_id);
        let state = tag(trial, "binance_ml.trial_state");
        assert!(state == "complete" || state == "pruned", "{state}");
        assert!(trial.join("params/learning_rate").is_file());
        // Fold 1's curve is there, one point per epoch run.
        assert!(trial.join("metrics/fold1_val_accuracy").is_file());
    }
    let complete: Vec<&&PathBuf> = trials
        .iter()
        .filter(|r| tag(r, "binance_ml.trial_state") == "complete")
        .collect();
    assert!(!complete.is_empty());
    for trial in &complete {
        assert!(trial.join("metrics/fold2_val_accuracy").is_file());
        assert!(trial.join("metrics/mean_val_accuracy").is_file());
    }
    // The final model is built with the best trial's dense width.
    let best_units: usize = std::fs::read_to_string(study[0].join("params/best_dense_units_1"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let model: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(t["model_dir"].as_str().unwrap()).join("model.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(model["spec"]["dense"][0]["units"], best_units);
    let train_run = runs(&mlruns, "binance-model-training")
        .into_iter()
        .find(|r| r.file_name().unwrap() == t["run_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(tag(&train_run, "binance_ml.hpo_study_run"), study_id);

    // Again: the finished study is resumed, not repeated (no new trial runs).
    ok(dir.path(), &yaml, &["train", "--json"]);
    let after = runs(&mlruns, "binance-hyperparameter-optimization");
    assert_eq!(
        after
            .iter()
            .filter(|r| tag(r, "binance_ml.model") == "trial")
            .count(),
        4
    );
}
