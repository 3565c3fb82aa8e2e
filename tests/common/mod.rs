//! Helpers shared by the integration tests: where the real sample data, the test database
//! and the MLflow servers are (skip locally, fail under `CI=true`), configurations from YAML,
//! running the binary, MLflow server processes and the Python read-back script.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use binance_ml::config::{self, Config, Origin, Overrides};
use binance_ml::tracking::{Credentials, Secret, TrackingSettings};

/// True under CI, where a missing prerequisite is a failure, not a skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip_or_fail(what: &str) {
    assert!(!in_ci(), "CI=true but {what}");
    eprintln!("skipped: {what}");
}

/// POSTs JSON `body` to `url` straight to the server (a non-2xx answer fails the test) and
/// parses the JSON answer.
pub fn post_json(url: &str, body: &serde_json::Value) -> serde_json::Value {
    let answer = reqwest::blocking::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap()
        .error_for_status()
        .unwrap();
    serde_json::from_slice(&answer.bytes().unwrap()).unwrap()
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

/// The value of `var`; when unset, prints a skip line and returns `None` — except under
/// `CI=true`, where a missing server is a failure.
pub fn env_or_skip(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip_or_fail(&format!(
                "{test}: {var} is not set (scripts/mlflow-server.sh starts the server)"
            ));
            None
        }
    }
}

/// The MLflow virtualenv's python (BINANCE_ML_TEST_MLFLOW_PYTHON).
pub fn python(test: &str) -> Option<String> {
    env_or_skip("BINANCE_ML_TEST_MLFLOW_PYTHON", test)
}

/// Settings for a test: its own workdir/spool, quick retries.
pub fn settings(uri: &str, workdir: &Path) -> TrackingSettings {
    TrackingSettings {
        tracking_uri: uri.to_string(),
        workdir: workdir.to_path_buf(),
        timeout: Duration::from_secs(30),
        max_retries: 2,
        retry_base: Duration::from_millis(50),
        credentials: None,
        ..TrackingSettings::default()
    }
}

/// Admin credentials of the auth server from the environment.
pub fn admin_credentials(test: &str) -> Option<Credentials> {
    let user = env_or_skip("BINANCE_ML_TEST_MLFLOW_AUTH_USER", test)?;
    let pass = env_or_skip("BINANCE_ML_TEST_MLFLOW_AUTH_PASSWORD", test)?;
    Some(Credentials {
        username: user,
        password: Secret::new(pass),
    })
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `mlflow:` section logging to the server at `uri`, with experiments and registered model
/// names prefixed by `tag` (from [`unique`]), so tests sharing one server never collide.
pub fn mlflow_section(uri: &str, tag: &str) -> String {
    format!(
        r#"
mlflow:
  tracking_uri: {uri:?}
  experiments: {{data_collection: "{tag}-data", preprocessing: "{tag}-pre", diagnostics: "{tag}-diag", training: "{tag}-train", evaluation: "{tag}-eval"}}
  model_registry: {{model_name_pattern: "{tag}_{{asset}}"}}
"#
    )
}

/// A unique name so tests sharing one server never collide.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", binance_ml::tracking::limits::new_id())
}

/// Runs `script` (`python -c`) with `args`, which must succeed; its standard output.
pub fn python_stdout<A: AsRef<std::ffi::OsStr>>(python: &str, script: &str, args: &[A]) -> String {
    let out = Command::new(python)
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the Python read-back script with `request` and parses its JSON answer.
pub fn readback(
    python: &str,
    creds: Option<&Credentials>,
    request: serde_json::Value,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/mlflow_readback.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(request.to_string());
    cmd.env_remove("MLFLOW_TRACKING_USERNAME")
        .env_remove("MLFLOW_TRACKING_PASSWORD");
    if let Some(c) = creds {
        cmd.env("MLFLOW_TRACKING_USERNAME", &c.username)
            .env("MLFLOW_TRACKING_PASSWORD", c.password.expose());
    }
    let out = cmd.output().expect("running the python read-back script");
    assert!(
        out.status.success(),
        "read-back failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad read-back output {stdout:?}: {e}"))
}

/// A real `mlflow server` process we started (its own process group, killed on drop).
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub uri: String,
    /// The data directory (sqlite db + artifacts, or the file store).
    pub dir: PathBuf,
    /// The port.
    pub port: u16,
}

impl Server {
    /// Starts `mlflow server` from the venv of `python`: `sqlite` mode uses `dir/mlflow.db`
    /// and the artifact proxy to `dir/artifacts`; `filestore` mode serves the MLflow file
    /// store at `dir`.
    pub fn start(python: &str, dir: &Path, port: u16, filestore: bool) -> Server {
        use std::os::unix::process::CommandExt;
        let mlflow = Path::new(python).with_file_name("mlflow");
        let mut cmd = Command::new(mlflow);
        cmd.args([
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--workers",
            "1",
        ]);
        if filestore {
            cmd.env("MLFLOW_ALLOW_FILE_STORE", "true")
                .args(["--backend-store-uri", dir.to_str().unwrap()]);
        } else {
            cmd.args([
                "--backend-store-uri",
                &format!("sqlite:///{}/mlflow.db", dir.display()),
                "--serve-artifacts",
                "--artifacts-destination",
                &format!("{}/artifacts", dir.display()),
            ]);
        }
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap();
        cmd.stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        cmd.process_group(0);
        let child = cmd.spawn().expect("starting mlflow server");
        let server = Server {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            port,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        while Instant::now() < deadline {
            let answer = client.get(format!("{}/health", self.uri)).send();
            if answer.is_ok_and(|a| a.status().is_success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let log = std::fs::read_to_string(self.dir.join(format!("server-{}.log", self.port)))
            .unwrap_or_default();
        panic!("mlflow server on {} never became healthy:\n{log}", self.uri);
    }

    /// Kills the whole process group (server and its uvicorn worker) and waits.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        // Wait until the port is free again so a restart can bind it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// One synthetic UTC `day` at 10 s for BTCUSDT + ETHUSDT and a tiny CNN+LSTM: seconds per
/// stage. `training` lines go inside the `training:` block (indented two spaces), `tail` is
/// appended as more top-level sections.
pub fn tiny_config(work: &Path, day: &str, training: &str, tail: &str) -> String {
    format!(
        r#"
workdir: {work:?}
data:
  source_type: synthetic
  synthetic: {{seed: 7}}
  asset_pairs: {{target_asset: BTCUSDT, correlated_assets: [ETHUSDT]}}
  time_range: {{start_date: "{day}", end_date: "{day}", cadence_seconds: 10}}
  order_book: {{depth_levels: 5}}
  validation: {{max_gap_seconds: 60, fail_on_invalid: false}}
targets:
  prediction_horizon_seconds: 60
  price_classes: {{boundaries: [-0.03, 0.03]}}
preprocessing:
  window_steps: 16
  feature_engineering: {{momentum_windows: [6], depth_imbalance_levels: 5}}
  train_test_split: {{train_ratio: 0.7, validation_ratio: 0.15, test_ratio: 0.15, degradation_slices: 4}}
model:
  cnn: {{num_layers: 1, filters: [4], kernel_sizes: [[3, 3]], pool_sizes: [[2, 1]], dropout_rates: [0.1]}}
  lstm: {{units: 8}}
  dense: {{layers: [8], dropout_rates: [0.1]}}
  output: {{num_classes: 3}}
training:
  batch_size: 64
  shuffle_buffer: 500
{training}
diagnostics: {{min_class_samples: 1}}
{tail}
"#
    )
}

/// The smallest CNN+LSTM, as `model:` lines for [`real_samples_config`]: seconds per epoch.
pub const TINY_MODEL: &str = "  cnn: {num_layers: 1, filters: [4], kernel_sizes: [[3, 3]], pool_sizes: [[2, 1]], dropout_rates: [0.1]}\n  lstm: {units: 8}\n  dense: {layers: [8], dropout_rates: [0.1]}";

/// The shipped BTCUSDT + ETHUSDT spot captures at 1 s (`shared` = the shared data dir), 3
/// classes at ±0.005 % over 10 s. `model` lines go inside `model:` (before `output`), `tail`
/// is appended as more top-level sections.
pub fn real_samples_config(work: &Path, shared: &Path, model: &str, tail: &str) -> String {
    let pattern = shared.join("binance_1s_top10/spot_*.csv");
    captures_config(
        work,
        &pattern,
        ["BTCUSDT", "ETHUSDT"],
        ["2024-08-08", "2024-08-09"],
        model,
        tail,
    )
}

/// [`real_samples_config`] over the wide CSV files `pattern` matches, for the `target` and
/// `correlated` symbols and the `start`..`end` dates.
pub fn captures_config(
    work: &Path,
    pattern: &Path,
    [target, correlated]: [&str; 2],
    [start, end]: [&str; 2],
    model: &str,
    tail: &str,
) -> String {
    format!(
        r#"
workdir: {work:?}
data:
  source_type: file
  files: {{paths: [{pattern:?}], layout: wide}}
  asset_pairs: {{target_asset: {target}, correlated_assets: [{correlated}]}}
  time_range: {{start_date: "{start}", end_date: "{end}", cadence_seconds: 1}}
  order_book: {{depth_levels: 10}}
  validation: {{max_gap_seconds: 5, fail_on_invalid: false}}
targets:
  prediction_horizon_seconds: 10
  price_classes: {{boundaries: [-0.005, 0.005]}}
preprocessing:
  window_steps: 30
  feature_engineering: {{momentum_windows: [5, 20]}}
  normalization: {{method: robust}}
  train_test_split: {{train_ratio: 0.6, validation_ratio: 0.2, test_ratio: 0.2}}
model:
{model}
  output: {{num_classes: 3}}
diagnostics: {{min_class_samples: 5}}
{tail}
"#
    )
}

/// The order-book table as the recorder writes it (tall: one row per snapshot and level).
const ORDER_BOOK_DDL: &str = "(ts TIMESTAMP(3) NOT NULL, batch_id BIGINT, symbol TEXT NOT NULL, level INT NOT NULL, \
                   bid_price DOUBLE PRECISION, bid_qty DOUBLE PRECISION, \
                   ask_price DOUBLE PRECISION, ask_qty DOUBLE PRECISION)";

/// A fresh table `name` holding `rows` (text values, loaded with COPY).
pub fn create_table(uri: &str, name: &str, rows: &[TallRow]) {
    let mut client = postgres::Client::connect(uri, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name} CASCADE; CREATE TABLE {name} {ORDER_BOOK_DDL}"
        ))
        .unwrap();
    let mut w = client
        .copy_in(&format!(
            "COPY {name} (ts, batch_id, symbol, level, bid_price, bid_qty, ask_price, ask_qty) FROM STDIN"
        ))
        .unwrap();
    for r in rows {
        let ts = chrono::DateTime::from_timestamp(r.ts_s, 0)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S");
        let [bp, bq, ap, aq] = &r.values;
        // batch_id: a coarse 10-minute bucket, deliberately not unique per snapshot.
        writeln!(
            w,
            "{ts}\t{}\t{}\t{}\t{bp}\t{bq}\t{ap}\t{aq}",
            r.ts_s / 600,
            r.symbol,
            r.level
        )
        .unwrap();
    }
    w.finish().unwrap();
}

/// One synthetic market (data.synthetic.signal = `signal`) over `days`, generated once and
/// written to the table `table` as the recorder would: every range read from it sees the
/// same market (the synthetic source itself starts its path at each configured start).
/// `thin_day` keeps only its first two minutes.
pub fn synthetic_table(
    uri: &str,
    table: &str,
    work: &Path,
    days: [&str; 2],
    signal: &str,
    thin_day: Option<&str>,
) {
    let yaml = tiny_config(work, days[0], "", "")
        .replace(
            &format!("end_date: \"{}\"", days[0]),
            &format!("end_date: \"{}\"", days[1]),
        )
        .replace("{seed: 7}", &format!("{{seed: 7, signal: {signal}}}"));
    let s = binance_ml::data::fetch::fetch(&config(&yaml), false).unwrap();
    let data = binance_ml::data::cache::CacheReader::open(&s.cache_dir)
        .unwrap()
        .load()
        .unwrap();
    let thin = thin_day.map_or(i64::MIN / 2, |d| {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp()
    });
    let mut rows = Vec::new();
    for (symbol, book) in &data.order_books {
        for (i, &ts_ms) in book.snapshot_timestamps.iter().enumerate() {
            let ts_s = ts_ms / 1000;
            // The thin day keeps 2 minutes: fewer steps than one window needs.
            if (thin + 120..thin + 86_400).contains(&ts_s) {
                continue;
            }
            for level in 0..book.bid_price.cols {
                let v = |m: &binance_ml::data::Matrix| m.row(i)[level].to_string();
                rows.push(TallRow {
                    ts_s,
                    symbol: symbol.to_string(),
                    level: level as u32 + 1,
                    values: [
                        v(&book.bid_price),
                        v(&book.bid_qty),
                        v(&book.ask_price),
                        v(&book.ask_qty),
                    ],
                });
            }
        }
    }
    create_table(uri, table, &rows);
}
