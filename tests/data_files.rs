//! `fetch` from the real sample CSV files (wide and tall, plain and gzip) and the file
//! source's bad inputs.

mod common;

use std::io::Write;
use std::path::Path;

use binance_ml::data::DataObject;
use binance_ml::data::cache::CacheReader;
use binance_ml::data::fetch::fetch;
use flate2::write::GzEncoder;

fn files_yaml(
    workdir: &Path,
    paths: &[String],
    layout: &str,
    symbols: &[&str],
    range: (&str, &str),
) -> String {
    format!(
        "workdir: {workdir:?}\ndata:\n  source_type: file\n  files:\n    paths: {paths:?}\n    layout: {layout}\n  \
         asset_pairs:\n    target_asset: {}\n    correlated_assets: {:?}\n  time_range:\n    \
         start_date: \"{}\"\n    end_date: \"{}\"\n    cadence_seconds: 1\n",
        symbols[0],
        &symbols[1..],
        range.0,
        range.1,
    )
}

fn fetch_and_load(yaml: &str) -> DataObject {
    let summary = fetch(&common::config(yaml), false).unwrap();
    CacheReader::open(&summary.cache_dir)
        .unwrap()
        .load()
        .unwrap()
}

#[test]
fn wide_sample_files_load_into_a_valid_dataobject() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let glob = shared
        .join("binance_1s_top10/spot_*.csv")
        .display()
        .to_string();
    let yaml = files_yaml(
        dir.path(),
        &[glob],
        "wide",
        &["BTCUSDT", "ETHUSDT"],
        ("2024-08-08", "2024-08-09"),
    );
    let summary = fetch(&common::config(&yaml), false).unwrap();
    assert_eq!((summary.shards, summary.shards_fetched), (2, 2));
    assert_eq!(summary.quality.rows_read, 2 * 650 * 10);
    assert_eq!(summary.quality.rows_dropped(), 0);
    let reader = CacheReader::open(&summary.cache_dir).unwrap();
    let o = reader.load().unwrap();
    assert_eq!(o.metadata.num_samples, 650);
    assert_eq!(o.metadata.order_book_depth, 10);
    let btc = &o.order_books["BTCUSDT"];
    assert_eq!(btc.len(), 650);
    assert_eq!(o.order_books["ETHUSDT"].len(), 650);
    // First line of spot_BTCUSDT_20240808-09.csv.
    assert_eq!(btc.snapshot_timestamps[0], 1_723_161_255_000);
    assert_eq!(
        btc.snapshot_features.row(0),
        &[61824.0, 0.2566, 61824.01, 5.5308]
    );
    assert_eq!(btc.bid_price.row(0)[9], 61819.5);
    assert_eq!(btc.ask_qty.row(0)[9], 0.01497);
    // Streaming shard by shard gives the same snapshots, each shard inside its own span.
    let mut n = 0;
    for shard in reader.shards() {
        let shard = shard.unwrap();
        let start = shard.metadata.time_range.start.timestamp_millis();
        let end = shard.metadata.time_range.end.timestamp_millis();
        let ts = &shard.order_books["BTCUSDT"].snapshot_timestamps;
        assert!(ts.iter().all(|t| (start..end).contains(t)));
        n += ts.len();
    }
    assert_eq!(n, 650);
}

#[test]
fn tall_gzip_files_give_the_same_dataobject_as_the_wide_files() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wide: Vec<_> = common::sample_files(&shared)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("spot_"))
        .collect();
    // One file with Unix-second timestamps, one gzip file with date-time text, columns in
    // another order than the database's and an unused batch_id.
    for (i, path) in wide.iter().enumerate() {
        let rows = common::tall_rows(path);
        let mut text =
            String::from("symbol,level,ts,batch_id,bid_price,bid_qty,ask_price,ask_qty\n");
        for r in rows.iter().rev() {
            let ts = if i == 0 {
                r.ts_s.to_string()
            } else {
                chrono::DateTime::from_timestamp(r.ts_s, 0)
                    .unwrap()
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            };
            let [bp, bq, ap, aq] = &r.values;
            text.push_str(&format!(
                "{},{},{ts},7,{bp},{bq},{ap},{aq}\n",
                r.symbol, r.level
            ));
        }
        if i == 0 {
            std::fs::write(dir.path().join("tall-0.csv"), text).unwrap();
        } else {
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(text.as_bytes()).unwrap();
            std::fs::write(dir.path().join("tall-1.csv.gz"), gz.finish().unwrap()).unwrap();
        }
    }
    let range = ("2024-08-08", "2024-08-09");
    let tall = fetch_and_load(&files_yaml(
        &dir.path().join("w1"),
        &[dir.path().join("tall-*").display().to_string()],
        "tall",
        &["BTCUSDT", "ETHUSDT"],
        range,
    ));
    let wide = fetch_and_load(&files_yaml(
        &dir.path().join("w2"),
        &wide
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        "wide",
        &["BTCUSDT", "ETHUSDT"],
        range,
    ));
    assert_eq!(tall.order_books["BTCUSDT"].len(), 650);
    assert_eq!(tall.order_books, wide.order_books);
    assert_eq!(tall.metadata.num_samples, wide.metadata.num_samples);
}

#[test]
fn numpy_loads_the_shards() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    // The MLflow virtualenv of the test services has numpy (an MLflow dependency); else
    // whatever python3 is on PATH.
    let candidates = std::env::var("BINANCE_ML_TEST_MLFLOW_PYTHON")
        .into_iter()
        .chain(["python3".to_owned()]);
    let Some(python) = candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import numpy"])
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        eprintln!("skipped: no python with numpy (pip install numpy)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let glob = shared
        .join("binance_1s_top10/usdm_*.csv")
        .display()
        .to_string();
    let yaml = files_yaml(
        dir.path(),
        &[glob],
        "wide",
        &["ETHUSDT", "BTCUSDT"],
        ("2024-07-18", "2024-07-19"),
    );
    let summary = fetch(&common::config(&yaml), false).unwrap();
    let o = CacheReader::open(&summary.cache_dir)
        .unwrap()
        .load()
        .unwrap();
    let script = r#"
import glob, sys, numpy as np
n, total, first = 0, 0.0, None
for f in sorted(glob.glob(sys.argv[1] + "/*.npz")):
    z = np.load(f)
    ts, bp = z["ETHUSDT/snapshot_timestamps"], z["ETHUSDT/bid_price"]
    assert ts.dtype == np.int64 and bp.dtype == np.float64 and bp.shape == (len(ts), 10)
    assert z["ETHUSDT/snapshot_features"].shape == (len(ts), 4)
    if first is None and len(ts):
        first = int(ts[0])
    n += len(ts)
    total += float(bp.sum())
print(n, first, repr(total))
"#;
    let text = common::python_stdout(&python, script, &[&summary.cache_dir]);
    let eth = &o.order_books["ETHUSDT"];
    // numpy sums shard by shard in its own order: compare within rounding.
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f[0].parse::<usize>().unwrap(), 479);
    assert_eq!(f[1].parse::<i64>().unwrap(), eth.snapshot_timestamps[0]);
    let ours: f64 = eth.bid_price.data.iter().sum();
    assert!((f[2].parse::<f64>().unwrap() - ours).abs() < 1e-6 * ours);
}

#[test]
fn a_malformed_line_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = String::from("ts_s,symbol");
    for side in ["bid", "ask"] {
        for k in 1..=5 {
            header.push_str(&format!(",{side}_px_{k},{side}_qty_{k}"));
        }
    }
    let values = "100,1,99,1,98,1,97,1,96,1,101,1,102,1,103,1,104,1,105,1";
    let good = format!("1723161255,BTCUSDT,{values}");
    let cases = [
        (
            format!(
                "{header}\n{good}\n1723161256,BTCUSDT,100,1,abc,1,98,1,97,1,96,1,101,1,102,1,103,1,104,1,105,1\n"
            ),
            "bad.csv:3: column bid_px_2: expected a number, got \"abc\"",
        ),
        (
            format!("{header}\n{good}\n{good}\n1723161257,BTCUSDT,100\n"),
            "bad.csv:4: 3 fields, the header has 22",
        ),
        (
            format!("{header}\nsoon,BTCUSDT,{values}\n"),
            "bad.csv:2: column ts_s: expected Unix seconds or a date-time",
        ),
        (
            "ts_s,symbol,bid_px_1\n".to_owned(),
            "bad.csv:1: header has no column \"bid_qty_1\"",
        ),
    ];
    for (content, expected) in cases {
        std::fs::write(dir.path().join("bad.csv"), content).unwrap();
        let yaml = files_yaml(
            dir.path(),
            &[dir.path().join("bad.csv").display().to_string()],
            "wide",
            &["BTCUSDT"],
            ("2024-08-08", "2024-08-09"),
        )
        .replace(
            "cadence_seconds: 1\n",
            "cadence_seconds: 1\n  order_book:\n    depth_levels: 5\n",
        );
        let (code, _, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
        assert_eq!(code, 3, "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
        assert!(
            !dir.path().join("data").read_dir().unwrap().any(|d| d
                .unwrap()
                .path()
                .join("manifest.json")
                .exists())
        );
    }
}

#[test]
fn a_pattern_without_files_and_a_symbol_without_rows_are_named() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-*.csv").display().to_string();
    let yaml = files_yaml(
        dir.path(),
        &[missing],
        "wide",
        &["BTCUSDT"],
        ("2024-08-08", "2024-08-09"),
    );
    let (code, _, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
    assert_eq!(code, 3);
    assert!(
        stderr.contains("data.files.paths[0]") && stderr.contains("matches no file"),
        "{stderr}"
    );

    let glob = shared
        .join("binance_1s_top10/spot_*.csv")
        .display()
        .to_string();
    let yaml = files_yaml(
        dir.path(),
        &[glob],
        "wide",
        &["BTCUSDT", "XRPUSDT"],
        ("2024-08-08", "2024-08-09"),
    );
    let (code, _, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("symbol XRPUSDT has no rows"), "{stderr}");
}
