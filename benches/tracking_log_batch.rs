//! Logging 100k metric points through our client vs MLflow's Python `MlflowClient.log_batch`,
//! against the same server in the same invocation.
//!
//! `BINANCE_ML_TEST_MLFLOW_URI=http://127.0.0.1:5000 \
//!  BINANCE_ML_TEST_MLFLOW_PYTHON=.venv-mlflow/bin/python cargo bench --bench tracking_log_batch`
//! (`BENCH_POINTS` overrides 100000, `BENCH_ROUNDS` 3). Prints the median points/s of both
//! clients over interleaved rounds after one warm-up round each, and their ratio.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use binance_ml::tracking::{Metric, RunStatus, Tracker, TrackingSettings};

fn main() {
    // `cargo test --all-targets` runs bench targets too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "tracking_log_batch: a benchmark; run it with `cargo bench --bench tracking_log_batch`"
        );
        return;
    }
    let (Ok(uri), Ok(python)) = (
        std::env::var("BINANCE_ML_TEST_MLFLOW_URI"),
        std::env::var("BINANCE_ML_TEST_MLFLOW_PYTHON"),
    ) else {
        eprintln!(
            "skipped: set BINANCE_ML_TEST_MLFLOW_URI and BINANCE_ML_TEST_MLFLOW_PYTHON \
             (scripts/mlflow-server.sh starts a server)"
        );
        return;
    };
    let points: usize = env_usize("BENCH_POINTS", 100_000);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    // A fresh server answers its first requests slowly (imports, sqlite cache): one unmeasured
    // round of each client warms it, then the order alternates so neither always goes first.
    rust_round(&uri, points.min(10_000));
    python_round(&python, &uri, points.min(10_000));
    let (mut rust, mut py) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            rust.push(rust_round(&uri, points));
            py.push(python_round(&python, &uri, points));
        } else {
            py.push(python_round(&python, &uri, points));
            rust.push(rust_round(&uri, points));
        }
    }
    let (rust_rate, py_rate) = (median(&mut rust), median(&mut py));
    println!(
        "log {points} metric points (1000 per request) against {uri}, median of {rounds} \
         interleaved rounds after a warm-up"
    );
    println!("  binance-ml (Rust)         {rust_rate:>10.0} points/s  {rust:.0?}");
    println!("  MlflowClient.log_batch    {py_rate:>10.0} points/s  {py:.0?}");
    println!("  ratio                     {:>10.2}x", rust_rate / py_rate);
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Our client logging `points` points into a new run; points/s, every point checked.
fn rust_round(uri: &str, points: usize) -> f64 {
    let work = std::env::temp_dir().join(format!("binance-ml-bench-{}", std::process::id()));
    let settings = TrackingSettings {
        tracking_uri: uri.to_owned(),
        workdir: work.clone(),
        ..TrackingSettings::default()
    };
    let tracker = Tracker::open(&settings).expect("opening the tracker");
    let exp = tracker
        .experiment_id(&format!(
            "bench-rust-{}",
            chrono::Utc::now().timestamp_millis()
        ))
        .expect("experiment");
    let run = tracker
        .start_run(&exp, "rust-log-batch", None, &[])
        .expect("run");
    let base = chrono::Utc::now().timestamp_millis();
    let metrics: Vec<Metric> = (0..points)
        .map(|i| {
            Metric::new(
                format!("metric_{}", i % 10),
                i as f64 * 0.001,
                base + i as i64,
                (i / 10) as i64,
            )
        })
        .collect();
    let start = Instant::now();
    tracker.log_metrics(&run.run_id, &metrics).expect("logging");
    let seconds = start.elapsed().as_secs_f64();
    tracker
        .end_run(&run.run_id, RunStatus::Finished)
        .expect("ending the run");
    let logged: usize = (0..10)
        .map(|k| {
            tracker
                .metric_history(&run.run_id, &format!("metric_{k}"))
                .map(|h| h.len())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(logged, points, "every point must arrive");
    let _ = std::fs::remove_dir_all(&work);
    points as f64 / seconds
}

/// MLflow's Python client logging the same points; points/s.
fn python_round(python: &str, uri: &str, points: usize) -> f64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tracking_log_batch.py");
    let out = Command::new(python)
        .arg(script)
        .arg(uri)
        .arg(points.to_string())
        .output()
        .expect("running the Python counterpart");
    assert!(
        out.status.success(),
        "python bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{"))
            .unwrap_or(b"{}"),
    )
    .expect("python bench output");
    py["points_per_s"].as_f64().unwrap_or(0.0)
}
