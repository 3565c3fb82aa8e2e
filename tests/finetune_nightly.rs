//! The nightly scenario against a real MLflow server: day 1 `run` (base), days 2 and 3
//! `finetune`; versions, aliases and lineage read back through MLflow's REST API; a repeated
//! night changes nothing; a forbidden override is rejected; two concurrent fine-tunes (one gets
//! exit 6).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;

use binance_ml::tracking::Tracker;
use serde_json::Value;

/// The tiny synthetic setup on `day`, logging to `uri` under experiments named by `tag`.
fn config(work: &Path, uri: &str, tag: &str, day: &str, extra: &str) -> String {
    let tail = format!(
        "evaluation: {{explainability: {{n_samples: 16}}}}{}",
        common::mlflow_section(uri, tag)
    );
    common::tiny_config(work, day, &format!("  epochs: 1\n{extra}"), &tail)
}

fn fine_tuning(base: &str, min_improvement: f64) -> String {
    format!(
        "  fine_tuning:\n    enabled: true\n    {base}\n    epochs: 1\n    promotion: {{metric: macro_f1, min_improvement: {min_improvement}}}"
    )
}

fn ok(dir: &Path, yaml: &str, args: &[&str]) -> Value {
    let (code, out, err) = common::run_cli(dir, yaml, args);
    assert_eq!(code, 0, "{args:?} failed:\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn three_nights_of_finetunes_promote_version_lineage_and_stay_idempotent() {
    let Some(uri) = common::env_or_skip(
        "BINANCE_ML_TEST_MLFLOW_URI",
        "three_nights_of_finetunes_promote_version_lineage_and_stay_idempotent",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let tag = common::unique("nightly");
    let name = format!("{tag}_BTCUSDT");
    let tracker = Tracker::open(&common::settings(&uri, dir.path())).unwrap();

    // Day 1: the base.
    let day1 = config(&work, &uri, &tag, "2024-08-01", "");
    let base = ok(dir.path(), &day1, &["run", "--json"]);
    let base_run = base["train"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(base["train"]["registered"][1], "1");

    // Day 2: fine-tune the base run, always promoted (min_improvement -1).
    let day2 = config(
        &work,
        &uri,
        &tag,
        "2024-08-02",
        &fine_tuning(&format!("base_model_run_id: {base_run}"), -1.0),
    );
    let d2 = ok(dir.path(), &day2, &["finetune", "--json"]);
    assert_eq!(d2["base_run_id"], base_run.as_str());
    assert_eq!(d2["decision"], "champion");
    assert_eq!(d2["new_version"], "2");
    let champion = tracker.version_by_alias(&name, "champion").unwrap();
    assert_eq!(champion.version, "2");
    assert_eq!(champion.run_id, d2["new_run_id"].as_str().unwrap());

    // Day 3: fine-tune the champion, never promoted (min_improvement 1): challenger.
    let day3 = config(
        &work,
        &uri,
        &tag,
        "2024-08-03",
        &fine_tuning("base_model_alias: champion", 1.0),
    );
    let d3 = ok(dir.path(), &day3, &["finetune", "--json"]);
    assert_eq!(d3["base_run_id"], d2["new_run_id"]);
    assert_eq!(d3["decision"], "challenger");
    assert_eq!(d3["new_version"], "3");
    assert_eq!(
        tracker.version_by_alias(&name, "champion").unwrap().version,
        "2"
    );
    assert_eq!(
        tracker
            .version_by_alias(&name, "challenger")
            .unwrap()
            .version,
        "3"
    );
    // Lineage on the runs, read back from the server.
    let parent = tracker.get_run(d3["run_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        parent.data.tag("binance_ml.base_run"),
        d2["new_run_id"].as_str()
    );
    assert_eq!(parent.data.tag("binance_ml.base_model_version"), Some("2"));
    let trained = tracker.get_run(d3["new_run_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        trained.data.tag("mlflow.parentRunId"),
        d3["run_id"].as_str()
    );
    assert_eq!(trained.data.tag("binance_ml.promotion"), Some("challenger"));

    // The same night again: nothing redone, no version 4.
    let again = ok(dir.path(), &day3, &["finetune", "--json"]);
    assert_eq!(again["already_done"], true);
    assert_eq!(again["new_run_id"], d3["new_run_id"]);
    assert!(tracker.model_version(&name, "4").is_err());

    // A forbidden override: the horizon changes the labels.
    let forbidden = day3.replace(
        "prediction_horizon_seconds: 60",
        "prediction_horizon_seconds: 120",
    );
    let (code, _, err) = common::run_cli(dir.path(), &forbidden, &["finetune"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("targets.prediction_horizon_seconds: base 60, now 120"),
        "{err}"
    );

    // Two fine-tunes of a new night at once: one runs, the other exits 6 naming the holder.
    let day4 = config(
        &work,
        &uri,
        &tag,
        "2024-08-04",
        &fine_tuning("base_model_alias: champion", 1.0),
    );
    let cfg = dir.path().join("day4.yaml");
    std::fs::write(&cfg, &day4).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_binance-ml"))
            .args(["finetune", "--no-color", "--config"])
            .arg(&cfg)
            .env_remove("BINANCE_ML_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    codes.sort_unstable();
    assert_eq!(codes, vec![0, 6], "{outs:?}");
    let loser = outs.iter().find(|o| o.status.code() == Some(6)).unwrap();
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(
        err.contains("in use by `binance-ml finetune` (pid"),
        "{err}"
    );
    assert!(tracker.model_version(&name, "4").is_ok());

    // kill -9 in the middle of training, then the same night again: it resumes the
    // checkpoint, marks the killed runs FAILED, and registers exactly one version.
    let day5 = config(
        &work,
        &uri,
        &tag,
        "2024-08-05",
        &fine_tuning("base_model_alias: champion", 1.0).replace("epochs: 1", "epochs: 30"),
    );
    let cfg = dir.path().join("day5.yaml");
    std::fs::write(&cfg, &day5).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_binance-ml"))
        .args(["finetune", "--no-color", "--config"])
        .arg(&cfg)
        .env_remove("BINANCE_ML_CONFIG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut killed_parent = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if killed_parent.is_none() && line.contains("MLflow run started run_id=") {
            killed_parent = line
                .split("run_id=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned);
        }
        if line.contains("epoch done epoch=2 ") {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    let (code, out, err) = common::run_cli(dir.path(), &day5, &["finetune", "--json"]);
    assert_eq!(code, 0, "{err}");
    // The checkpoint of epoch 1 or 2 (the kill may beat the epoch-2 checkpoint write).
    assert!(err.contains("resuming after epoch"), "{err}");
    // Both runs of the killed attempt end FAILED: by the work directory's open-run records
    // (any command), or by finetune's own search for its interrupted attempt.
    assert_eq!(
        err.matches("marking a run of an interrupted fine-tune FAILED")
            .count()
            + err
                .matches("marked FAILED a run its killed process left RUNNING")
                .count(),
        2,
        "{err}"
    );
    let d5: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d5["new_version"], "5");
    assert!(tracker.model_version(&name, "6").is_err());
    let killed = tracker.get_run(&killed_parent.unwrap()).unwrap();
    assert_eq!(killed.info.status.as_str(), "FAILED");
}

#[test]
fn a_night_with_mlflow_down_is_journaled_and_lands_after_sync() {
    let test = "a_night_with_mlflow_down_is_journaled_and_lands_after_sync";
    let Some(python) = common::python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let port = common::free_port();
    let mut server = common::Server::start(&python, &server_dir, port, false);
    let uri = server.uri.clone();
    let work = dir.path().join("work");
    let tag = common::unique("down");
    let name = format!("{tag}_BTCUSDT");

    let day1 = config(&work, &uri, &tag, "2024-08-01", "");
    let base = ok(dir.path(), &day1, &["run", "--json"]);
    let base_run = base["train"]["run_id"].as_str().unwrap().to_owned();

    // The server dies; the night runs anyway (base by run id, present in the work directory).
    server.kill();
    let day2 = config(
        &work,
        &uri,
        &tag,
        "2024-08-02",
        &fine_tuning(&format!("base_model_run_id: {base_run}"), -1.0),
    );
    // Fail over to the spool at once instead of retrying a dead server.
    let down = day2.replace(
        "mlflow:\n",
        "mlflow:\n  client: {max_retries: 0, timeout_seconds: 2}\n",
    );
    let d2 = ok(dir.path(), &down, &["finetune", "--json"]);
    assert_eq!(d2["decision"], "champion");
    let pending = d2["new_version"].as_str().unwrap().to_owned();
    assert!(pending.starts_with("local-"), "{pending}");

    // Back up: one sync replays the night; a second has nothing left to do.
    let server = common::Server::start(&python, &server_dir, port, false);
    let s = ok(dir.path(), &day2, &["tracking", "sync", "--json"]);
    assert!(s["ops_replayed"].as_u64().unwrap() > 0, "{s}");
    let again = ok(dir.path(), &day2, &["tracking", "sync", "--json"]);
    assert_eq!(again["ops_replayed"], 0, "{again}");
    let tracker = Tracker::open(&common::settings(&server.uri, dir.path())).unwrap();
    let champion = tracker.version_by_alias(&name, "champion").unwrap();
    assert_eq!(champion.version, "2");
    // Offline, the job reported its journal's client ids; the server runs carry them.
    let trained = tracker.get_run(&champion.run_id).unwrap();
    assert_eq!(
        trained.data.tag("binance_ml.client_id"),
        d2["new_run_id"].as_str()
    );
    let parent = tracker
        .get_run(trained.data.tag("mlflow.parentRunId").unwrap())
        .unwrap();
    assert_eq!(
        parent.data.tag("binance_ml.client_id"),
        d2["run_id"].as_str()
    );
    assert_eq!(parent.info.status.as_str(), "FINISHED");
    assert_eq!(
        parent.data.tag("binance_ml.base_run"),
        Some(base_run.as_str())
    );
    assert_eq!(parent.data.tag("binance_ml.promotion"), Some("champion"));
}
