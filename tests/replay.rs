//! `binance-ml replay` through the binary: on a market whose signal flips sign mid-range the
//! nightly policy (fine-tune + promotion) beats the frozen base after the change; on an
//! unchanged market it does not lose to it by more than noise; killed mid-replay, it continues
//! where it stopped, with no day scored twice.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The tiny setup over `days`, reading a synthetic market with `signal` that was generated
/// once into a PostgreSQL table (so that every day read is the same market's), fine-tuned 2
/// epochs at 0.002. `None` (test skipped) without a test database.
fn config(work: &Path, days: [&str; 2], signal: &str) -> Option<String> {
    let db = common::database_uri()?;
    let table = common::unique("replay").replace('-', "_");
    common::synthetic_table(&db, &table, &work.join("generate"), days, signal, None);
    let yaml = common::tiny_config(
        work,
        days[0],
        "  epochs: 2\n  fine_tuning: {epochs: 2, learning_rate: 0.002, promotion: {metric: accuracy, min_improvement: 0.0}}",
        "evaluation: {backtesting: {enabled: true}, explainability: {n_samples: 16, permutation: {n_samples: 64, repeats: 1}}}",
    )
    .replace(
        &format!("end_date: \"{}\"", days[0]),
        &format!("end_date: \"{}\"", days[1]),
    )
    .replace(
        "  source_type: synthetic\n  synthetic: {seed: 7}\n",
        &format!(
            "  source_type: database\n  connection: {{database_uri: {db:?}, table_name: {table}}}\n"
        ),
    );
    assert!(yaml.contains("source_type: database"), "{yaml}");
    Some(yaml)
}

fn replay(dir: &Path, yaml: &str) -> Value {
    let (code, out, err) = common::run_cli(dir, yaml, &["replay", "--train-days", "2", "--json"]);
    assert_eq!(code, 0, "replay failed:\n{err}");
    let r: Value = serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    // The table, for whoever reads the test log.
    let table = Path::new(r["dir"].as_str().unwrap()).join("replay.md");
    eprintln!("{}", std::fs::read_to_string(table).unwrap_or_default());
    r
}

fn mean(days: &[Value], policy: &str) -> f64 {
    days.iter()
        .map(|d| d[policy]["accuracy"].as_f64().unwrap())
        .sum::<f64>()
        / days.len() as f64
}

#[test]
fn after_a_regime_change_the_nightly_policy_beats_the_frozen_model_and_a_kill_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    // The signal flips sign at the start of the second replayed day.
    let Some(yaml) = config(
        &work,
        ["2024-08-01", "2024-08-06"],
        "{strength: 0.6, persistence: 0.95, observation_noise: 0.5, change_at: \"2024-08-04\", strength_after: -0.6}",
    ) else {
        return;
    };

    // Killed (-9) once the first day is saved; the rerun keeps it and does the rest.
    let cfg = dir.path().join("replay.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_binance-ml"))
        .args(["replay", "--train-days", "2", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    let saved_days = || -> usize {
        glob::glob(&format!("{}/replay/*/state.json", work.display()))
            .unwrap()
            .flatten()
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["rows"].as_array().map_or(0, Vec::len))
            .max()
            .unwrap_or(0)
    };
    while saved_days() < 1 {
        assert!(Instant::now() < deadline, "no replayed day saved in time");
        assert!(child.try_wait().unwrap().is_none(), "replay ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let r = replay(dir.path(), &yaml);
    assert!(r["resumed_days"].as_u64().unwrap() >= 1, "{r}");
    let days = r["days"].as_array().unwrap();
    let names: Vec<&str> = days.iter().map(|d| d["day"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["2024-08-03", "2024-08-04", "2024-08-05", "2024-08-06"],
        "each day once, in order"
    );
    // Every policy is scored on every window of the day, out of sample.
    for d in days {
        for p in ["nightly", "frozen", "rolling"] {
            let acc = d[p]["accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc), "{d}");
        }
        assert_eq!(d["frozen"]["model_run"], r["base_run"]);
    }
    // After the change (the nightly model has seen one day of the new regime from 08-05 on)
    // the frozen model predicts the old sign.
    let after = &days[2..];
    let (nightly, frozen) = (mean(after, "nightly"), mean(after, "frozen"));
    assert!(
        nightly > frozen + 0.02,
        "after the change: nightly {nightly:.4} vs frozen {frozen:.4}\n{r}"
    );
    // Before it, the frozen model knew the market.
    let before = days[0]["frozen"]["accuracy"].as_f64().unwrap();
    assert!(before > frozen, "frozen before {before} vs after {frozen}");

    let out = Path::new(r["dir"].as_str().unwrap());
    let csv = std::fs::read_to_string(out.join("replay.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4 * 3, "{csv}");
    assert!(
        std::fs::read_to_string(out.join("replay.md"))
            .unwrap()
            .contains("| nightly |")
    );
    assert!(std::fs::metadata(out.join("replay.png")).unwrap().len() > 1000);
}

#[test]
fn on_an_unchanged_market_the_nightly_policy_does_not_lose_beyond_noise() {
    let dir = tempfile::tempdir().unwrap();
    let Some(yaml) = config(
        &dir.path().join("work"),
        ["2024-08-01", "2024-08-04"],
        "{strength: 0.6, persistence: 0.95, observation_noise: 0.5}",
    ) else {
        return;
    };
    let r = replay(dir.path(), &yaml);
    let days = r["days"].as_array().unwrap();
    assert_eq!(days.len(), 2);
    // Each day scores all 8,640 windows; neighbours overlap, so the effective sample is a
    // few hundred horizons: 0.03 is about two standard errors of a difference in accuracy.
    let (nightly, frozen) = (mean(days, "nightly"), mean(days, "frozen"));
    assert!(
        nightly > frozen - 0.03,
        "nightly {nightly:.4} vs frozen {frozen:.4}\n{r}"
    );
}
