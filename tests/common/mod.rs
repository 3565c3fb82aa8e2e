//! Helpers shared by the data tests: where the real sample data and the test database are,
//! configurations from YAML, and running the binary.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

use binance_ml::config::{self, Config, Origin, Overrides};

/// True under CI, where a missing prerequisite is a failure, not a skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip_or_fail(what: &str) {
    assert!(!in_ci(), "CI=true but {what}");
    eprintln!("skipped: {what}");
}

/// `$BINANCE_ML_SHARED_DATA` or `<crate>/../shared/data`; `None` (test skipped) when absent.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("BINANCE_ML_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("binance_1s_top10").is_dir() {
        Some(dir)
    } else {
        skip_or_fail(&format!(
            "the shared sample data is not at {} (set BINANCE_ML_SHARED_DATA)",
            dir.display()
        ));
        None
    }
}

/// `$BINANCE_ML_TEST_DATABASE_URI` (a role that may create tables); `None` (test skipped)
/// when unset.
pub fn database_uri() -> Option<String> {
    match std::env::var("BINANCE_ML_TEST_DATABASE_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            skip_or_fail(
                "BINANCE_ML_TEST_DATABASE_URI is not set (eval \"$(bash scripts/postgres.sh)\")",
            );
            None
        }
    }
}

/// A validated configuration from YAML (no environment interpolation).
pub fn config(yaml: &str) -> Config {
    config::parse(yaml, Origin::Embedded, &Overrides::default(), &|_| None)
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"))
        .config
}

/// Writes `yaml` into `dir`, runs `binance-ml <args> --config <file>`, returns
/// (exit code, stdout, stderr).
pub fn run_cli(dir: &Path, yaml: &str, args: &[&str]) -> (i32, String, String) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_binance-ml"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .arg("--no-color")
        .env_remove("BINANCE_ML_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One tall row as text, exactly as in the source file.
#[derive(Debug, Clone)]
pub struct TallRow {
    /// Unix seconds.
    pub ts_s: i64,
    /// Symbol.
    pub symbol: String,
    /// Level, 1 = best.
    pub level: u32,
    /// bid_price, bid_qty, ask_price, ask_qty as written in the file.
    pub values: [String; 4],
}

/// The wide sample file turned into tall rows (levels 1..=10), written independently of the
/// crate's reader so the two can be compared.
pub fn tall_rows(wide_csv: &Path) -> Vec<TallRow> {
    let text = std::fs::read_to_string(wide_csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        for level in 1..=10u32 {
            let v = |p: &str| f[col(&format!("{p}_{level}"))].to_owned();
            rows.push(TallRow {
                ts_s: f[col("ts_s")].parse().unwrap(),
                symbol: f[col("symbol")].to_owned(),
                level,
                values: [v("bid_px"), v("bid_qty"), v("ask_px"), v("ask_qty")],
            });
        }
    }
    rows
}

/// The four wide sample files.
pub fn sample_files(shared: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(shared.join("binance_1s_top10"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        4,
        "expected the four sample files in {}",
        shared.display()
    );
    v
}
