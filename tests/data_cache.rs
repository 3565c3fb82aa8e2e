//! The shard cache (reuse, --force, tampered/truncated shards, interrupted fetches) and the
//! synthetic market, which needs nothing installed.

mod common;

use std::path::Path;

use binance_ml::data::DataError;
use binance_ml::data::cache::{CacheReader, MANIFEST};
use binance_ml::data::fetch::{cache_dir, fetch, open_cache};
use binance_ml::exit::ExitCode;

fn synthetic_yaml(workdir: &Path, seed: u64, gap: f64, bad: f64) -> String {
    format!(
        "workdir: {workdir:?}\ndata:\n  source_type: synthetic\n  synthetic:\n    seed: {seed}\n    \
         gap_probability: {gap}\n    bad_row_probability: {bad}\n  asset_pairs:\n    target_asset: BTCUSDT\n    \
         correlated_assets: [ETHUSDT, ADAUSDT]\n  time_range:\n    start_date: \"2024-08-01T00:00:00Z\"\n    \
         end_date: \"2024-08-01T12:00:00Z\"\n    cadence_seconds: 10\n  order_book:\n    depth_levels: 5\n  \
         cache:\n    shard_seconds: 10800\n"
    )
}

fn shard_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "npz"))
        .collect();
    v.sort();
    v
}

#[test]
fn same_seed_same_market_and_valid_shards_are_reused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = fetch(
        &common::config(&synthetic_yaml(a.path(), 7, 0.001, 0.001)),
        false,
    )
    .unwrap();
    assert_eq!(
        (first.shards, first.shards_fetched, first.shards_reused),
        (4, 4, 0)
    );
    let again = fetch(
        &common::config(&synthetic_yaml(a.path(), 7, 0.001, 0.001)),
        false,
    )
    .unwrap();
    assert_eq!((again.shards_fetched, again.shards_reused), (0, 4));
    let other_dir = fetch(
        &common::config(&synthetic_yaml(b.path(), 7, 0.001, 0.001)),
        false,
    )
    .unwrap();
    let m1 = CacheReader::open(&first.cache_dir)
        .unwrap()
        .manifest()
        .clone();
    let m2 = CacheReader::open(&other_dir.cache_dir)
        .unwrap()
        .manifest()
        .clone();
    assert_eq!(m1.key, m2.key);
    let hashes = |m: &binance_ml::data::cache::Manifest| {
        m.shards
            .iter()
            .map(|s| s.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(hashes(&m1), hashes(&m2));
    // Another seed is another market under another key.
    let seed8 = fetch(
        &common::config(&synthetic_yaml(b.path(), 8, 0.001, 0.001)),
        false,
    )
    .unwrap();
    let m3 = CacheReader::open(&seed8.cache_dir)
        .unwrap()
        .manifest()
        .clone();
    assert_ne!(m3.key, m1.key);
    assert!(hashes(&m3).iter().zip(hashes(&m1)).all(|(x, y)| *x != y));
    // --force rewrites every shard, with the same bytes.
    let forced = fetch(
        &common::config(&synthetic_yaml(a.path(), 7, 0.001, 0.001)),
        true,
    )
    .unwrap();
    assert_eq!((forced.shards_fetched, forced.shards_reused), (4, 0));
    assert_eq!(
        hashes(CacheReader::open(&forced.cache_dir).unwrap().manifest()),
        hashes(&m1)
    );
}

#[test]
fn a_longer_time_range_links_the_shards_it_shares_with_an_earlier_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let short = synthetic_yaml(dir.path(), 5, 0.001, 0.001);
    let long = short.replace("2024-08-01T12:00:00Z", "2024-08-01T18:00:00Z");
    let a = fetch(&common::config(&short), false).unwrap();
    let b = fetch(&common::config(&long), false).unwrap();
    assert_ne!(a.cache_dir, b.cache_dir);
    assert_eq!((b.shards, b.shards_linked, b.shards_fetched), (6, 4, 2));
    let (ma, mb) = (
        CacheReader::open(&a.cache_dir).unwrap().manifest().clone(),
        CacheReader::open(&b.cache_dir).unwrap().manifest().clone(),
    );
    assert_eq!(ma.source_key, mb.source_key);
    for (x, y) in ma.shards.iter().zip(&mb.shards) {
        assert_eq!((&x.file, &x.sha256), (&y.file, &y.sha256));
    }
    // The linked shards hold what a fresh fetch of the long range would hold.
    let fresh = tempfile::tempdir().unwrap();
    let c = fetch(
        &common::config(
            &synthetic_yaml(fresh.path(), 5, 0.001, 0.001)
                .replace("2024-08-01T12:00:00Z", "2024-08-01T18:00:00Z"),
        ),
        false,
    )
    .unwrap();
    assert_eq!(c.shards_linked, 0);
    let load = |d: &Path| CacheReader::open(d).unwrap().load().unwrap();
    assert_eq!(load(&b.cache_dir), load(&c.cache_dir));
    // Both caches stay valid on their own.
    assert_eq!(
        load(&a.cache_dir).order_books["BTCUSDT"].len(),
        a.snapshots["BTCUSDT"] as usize
    );
}

#[test]
fn tampered_or_truncated_shards_are_refused_by_readers_and_refetched_by_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synthetic_yaml(dir.path(), 1, 0.0, 0.0);
    let s = fetch(&common::config(&yaml), false).unwrap();
    let original = CacheReader::open(&s.cache_dir).unwrap().load().unwrap();
    let shards = shard_files(&s.cache_dir);

    // Flip one byte of the data of shard 1, truncate shard 2.
    let mut bytes = std::fs::read(&shards[1]).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&shards[1], &bytes).unwrap();
    let len = std::fs::metadata(&shards[2]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shards[2])
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let err = CacheReader::open(&s.cache_dir).unwrap().load().unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    assert_eq!(err.exit_code(), ExitCode::Data);
    let text = err.to_string();
    assert!(
        text.contains("shard-1722481200-1722492000.npz")
            && text.contains("does not match the manifest"),
        "{text}"
    );

    let again = fetch(&common::config(&yaml), false).unwrap();
    assert_eq!((again.shards_fetched, again.shards_reused), (2, 2));
    assert_eq!(
        CacheReader::open(&s.cache_dir).unwrap().load().unwrap(),
        original
    );
}

#[test]
fn an_interrupted_fetch_leaves_no_manifest_and_resumes_with_the_missing_shards() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synthetic_yaml(dir.path(), 3, 0.0, 0.0);
    let s = fetch(&common::config(&yaml), false).unwrap();
    let original = CacheReader::open(&s.cache_dir).unwrap().load().unwrap();
    // What a kill during shard 3 leaves: no manifest (removed before any shard is written),
    // shard 3's NPZ half-written under a temporary name, no meta for it, an orphan NPZ for 2.
    std::fs::remove_file(s.cache_dir.join(MANIFEST)).unwrap();
    let shards = shard_files(&s.cache_dir);
    std::fs::rename(
        &shards[3],
        s.cache_dir.join("shard-1722502800-1722513600.npz.tmp-999"),
    )
    .unwrap();
    std::fs::remove_file(shards[3].with_extension("meta.json")).unwrap();
    std::fs::remove_file(shards[2].with_extension("meta.json")).unwrap();

    let err = open_cache(&common::config(&yaml)).unwrap_err().to_string();
    assert!(err.contains("no complete cache"), "{err}");
    assert_eq!(cache_dir(&common::config(&yaml)).unwrap(), s.cache_dir);
    let resumed = fetch(&common::config(&yaml), false).unwrap();
    assert_eq!((resumed.shards_fetched, resumed.shards_reused), (2, 2));
    assert_eq!(
        CacheReader::open(&s.cache_dir).unwrap().load().unwrap(),
        original
    );
    let leftovers: Vec<_> = std::fs::read_dir(&s.cache_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_synthetic_market_is_realistic_and_its_bad_rows_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = fetch(
        &common::config(&synthetic_yaml(dir.path(), 42, 0.01, 0.01)),
        false,
    )
    .unwrap();
    let q = &s.quality;
    // 12 h at 10 s = 4320 steps x 3 symbols, 1% gaps.
    assert!((12_600..12_960).contains(&q.snapshots_read), "{q:?}");
    assert!(
        q.rows_dropped_nan > 0
            && q.rows_dropped_nonpositive_price > 0
            && q.rows_dropped_duplicate > 0,
        "{q:?}"
    );
    assert!(
        q.snapshots_dropped_crossed > 0 && q.snapshots_dropped_missing_levels > 0,
        "{q:?}"
    );
    assert_eq!(
        q.snapshots_dropped(),
        q.snapshots_dropped_missing_levels
            + q.snapshots_dropped_crossed
            + q.snapshots_dropped_conflicting_duplicates
            + q.snapshots_dropped_unsorted_levels
    );
    // Each shard's report is written beside it.
    let meta =
        std::fs::read_to_string(s.cache_dir.join("shard-1722470400-1722481200.meta.json")).unwrap();
    assert!(meta.contains("\"rows_dropped_nan\""), "{meta}");

    let o = CacheReader::open(&s.cache_dir).unwrap().load().unwrap();
    let btc = &o.order_books["BTCUSDT"];
    let eth = &o.order_books["ETHUSDT"];
    // Spreads of at least one tick (0.1 for BTCUSDT), on the tick grid.
    for i in 0..btc.len() {
        let spread = btc.ask_price.row(i)[0] - btc.bid_price.row(i)[0];
        assert!(spread > 0.099, "row {i}: spread {spread}");
        let ticks = btc.bid_price.row(i)[0] * 10.0;
        assert!((ticks - ticks.round()).abs() < 1e-6);
    }
    // Returns of target and correlated asset correlate about as configured (0.7).
    let returns = |b: &binance_ml::data::OrderBook, ts: &[i64]| -> Vec<f64> {
        let mid: std::collections::HashMap<i64, f64> = (0..b.len())
            .map(|i| {
                (
                    b.snapshot_timestamps[i],
                    (b.bid_price.row(i)[0] + b.ask_price.row(i)[0]) / 2.0,
                )
            })
            .collect();
        ts.windows(2)
            .map(|w| (mid[&w[1]] / mid[&w[0]]).ln())
            .collect()
    };
    let common_ts: Vec<i64> = btc
        .snapshot_timestamps
        .iter()
        .copied()
        .filter(|t| eth.snapshot_timestamps.binary_search(t).is_ok())
        .collect();
    let (x, y) = (returns(btc, &common_ts), returns(eth, &common_ts));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mx, my) = (mean(&x), mean(&y));
    let cov: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    let corr = cov / (vx * vy).sqrt();
    assert!((0.5..0.8).contains(&corr), "correlation {corr}");
}
