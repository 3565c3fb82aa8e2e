//! The synthetic market's signal (`data.synthetic.signal`): without it the bytes of the plain
//! random walk; with it the target's visible queues predict its move, a regime change switches
//! that off, and the oracle's class probabilities are calibrated on the labels `preprocess`
//! computes from the generated books.

mod common;

use std::path::Path;

use binance_ml::data::DataObject;
use binance_ml::data::fetch::{fetch, open_cache};
use binance_ml::evaluate::calibration::calibration;
use binance_ml::preprocess::PrepareSpec;
use binance_ml::preprocess::stage::preprocess;
use binance_ml::store::{load_samples, read_manifest, store_dir};

fn market_yaml(workdir: &Path, days: (&str, &str), signal: &str) -> String {
    format!(
        "workdir: {workdir:?}\ndata:\n  source_type: synthetic\n  synthetic:\n    seed: 11\n{signal}  \
         asset_pairs: {{target_asset: BTCUSDT, correlated_assets: [ETHUSDT]}}\n  \
         time_range: {{start_date: \"{}\", end_date: \"{}\", cadence_seconds: 10}}\n  \
         order_book: {{depth_levels: 5}}\n  validation: {{max_gap_seconds: 60, fail_on_invalid: false}}\n\
         targets:\n  prediction_horizon_seconds: 60\n  price_classes: {{boundaries: [-0.03, 0.03]}}\n  \
         labeling: {{handle_gaps: forward_fill}}\n\
         preprocessing:\n  window_steps: 8\n  feature_engineering: {{momentum_windows: [6]}}\n\
         model:\n  output: {{num_classes: 3}}\n",
        days.0, days.1
    )
}

fn shard_bytes(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "npz"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn zero_strength_is_the_plain_random_walk_byte_for_byte() {
    let days = ("2024-08-01", "2024-08-01");
    let plain = tempfile::tempdir().unwrap();
    let a = fetch(&common::config(&market_yaml(plain.path(), days, "")), false).unwrap();
    let zero = tempfile::tempdir().unwrap();
    let block =
        "    signal: {strength: 0.0, persistence: 0.9, levels: 5, observation_noise: 0.1}\n";
    let b = fetch(
        &common::config(&market_yaml(zero.path(), days, block)),
        false,
    )
    .unwrap();
    let (x, y) = (shard_bytes(&a.cache_dir), shard_bytes(&b.cache_dir));
    assert_eq!(x.len(), 1);
    assert!(x == y, "a zero-strength signal changed the shards");
    // And a signal does change them.
    let on = tempfile::tempdir().unwrap();
    let c = fetch(
        &common::config(&market_yaml(
            on.path(),
            days,
            "    signal: {strength: 0.3}\n",
        )),
        false,
    )
    .unwrap();
    assert!(shard_bytes(&c.cache_dir) != x);
}

/// Per consecutive snapshot pair (t, t + h) of the target: the mean log queue ratio of the
/// tilted levels at t, and the log mid move to t + h; split at `split_ms`.
fn imbalance_vs_move(
    o: &DataObject,
    levels: usize,
    h: usize,
    split_ms: i64,
) -> [Vec<(f64, f64)>; 2] {
    let book = o.order_books.values().next().unwrap();
    assert_eq!(o.order_books.keys().next().unwrap().as_str(), "BTCUSDT");
    let ts = &book.snapshot_timestamps;
    let mid = |i: usize| (book.bid_price.row(i)[0] + book.ask_price.row(i)[0]) / 2.0;
    let mut out = [Vec::new(), Vec::new()];
    for t in 0..ts.len().saturating_sub(h) {
        if ts[t + h] - ts[t] != h as i64 * 10_000 {
            continue;
        }
        let ratio: f64 = (0..levels)
            .map(|l| (book.bid_qty.row(t)[l] / book.ask_qty.row(t)[l]).ln())
            .sum::<f64>()
            / levels as f64;
        out[usize::from(ts[t] >= split_ms)].push((ratio, (mid(t + h) / mid(t)).ln()));
    }
    out
}

fn correlation(xy: &[(f64, f64)]) -> f64 {
    let n = xy.len() as f64;
    let (mx, my) = (
        xy.iter().map(|p| p.0).sum::<f64>() / n,
        xy.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xy {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    sxy / (sxx * syy).sqrt()
}

#[test]
fn the_visible_queues_predict_the_move_until_the_regime_change() {
    let dir = tempfile::tempdir().unwrap();
    let block = "    signal: {strength: 0.3, change_at: \"2024-08-02\", strength_after: 0.0}\n";
    let config = common::config(&market_yaml(
        dir.path(),
        ("2024-08-01", "2024-08-02"),
        block,
    ));
    fetch(&config, false).unwrap();
    let object = open_cache(&config).unwrap().load().unwrap();
    let change_ms = 1_722_556_800_000; // 2024-08-02T00:00:00Z
    let [before, after] = imbalance_vs_move(&object, 3, 6, change_ms);
    assert!(before.len() > 8000 && after.len() > 8000);
    let (b, a) = (correlation(&before), correlation(&after));
    eprintln!("queue imbalance vs next move: correlation {b:.3} before, {a:.3} after the change");
    // Expected about 0.4 before; after, zero within sampling error (8,600 overlapping
    // six-step moves: standard error about 0.03).
    assert!(b > 0.25, "correlation before the change {b}");
    assert!(a.abs() < 0.1, "correlation after the change {a}");
    // Deeper levels do not carry the imbalance.
    let book = object.order_books.values().next().unwrap();
    let deep: Vec<(f64, f64)> = (0..book.len() - 6)
        .map(|t| {
            (
                (book.bid_qty.row(t)[4] / book.ask_qty.row(t)[4]).ln(),
                (book.bid_qty.row(t)[0] / book.ask_qty.row(t)[0]).ln(),
            )
        })
        .collect();
    assert!(correlation(&deep).abs() < 0.05, "level 5 is tilted");
}

/// Expected calibration error of the oracle on the labels preprocess computed, over every
/// labelled step of the store.
fn oracle_ece(yaml: &str) -> (usize, f64, f64) {
    let config = common::config(yaml);
    fetch(&config, false).unwrap();
    preprocess(&config, false).unwrap();
    let store = store_dir(&config).unwrap();
    let manifest = read_manifest(&store).unwrap();
    let samples = load_samples(&store, &manifest).unwrap();
    let steps: Vec<usize> = (0..samples.labels.len())
        .filter(|&i| samples.labels[i] >= 0)
        .collect();
    let ts: Vec<i64> = steps
        .iter()
        .map(|&i| manifest.grid_start_ms + i as i64 * manifest.cadence_ms)
        .collect();
    let mut oracle = PrepareSpec::from_config(&config)
        .labels
        .oracle(&config.data)
        .unwrap();
    let k = oracle.classes();
    let probs = oracle.probabilities(&ts).unwrap();
    let labels: Vec<u32> = steps.iter().map(|&i| samples.labels[i] as u32).collect();
    let accuracy = labels
        .iter()
        .enumerate()
        .filter(|(i, y)| {
            let p = &probs[i * k..(i + 1) * k];
            let best = (0..k).max_by(|a, b| p[*a].total_cmp(&p[*b])).unwrap();
            best == **y as usize
        })
        .count() as f64
        / labels.len() as f64;
    let ece = calibration(&probs, &labels, k, 10).ece;
    eprintln!(
        "oracle on {} steps: ECE {ece:.4}, accuracy {accuracy:.4}",
        labels.len()
    );
    (labels.len(), ece, accuracy)
}

#[test]
fn the_oracle_is_calibrated_on_its_own_market() {
    let dir = tempfile::tempdir().unwrap();
    // Six days at 10 s: 51,840 steps; signal, lead-lag and a regime change all active.
    let block = "    signal: {strength: 0.3, lead_lag: 0.2, change_at: \"2024-08-04T12:00:00Z\", strength_after: 0.1}\n";
    let (n, ece, accuracy) = oracle_ece(&market_yaml(
        dir.path(),
        ("2024-08-01", "2024-08-06"),
        block,
    ));
    assert!(n >= 50_000, "{n} labelled steps");
    assert!(ece <= 0.02, "oracle ECE {ece} over {n} steps");
    assert!(accuracy > 0.45, "oracle accuracy {accuracy}");
}

#[test]
fn the_oracle_follows_smoothed_and_absolute_labels() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = market_yaml(
        dir.path(),
        ("2024-08-01", "2024-08-06"),
        "    signal: {strength: 0.3}\n",
    )
    .replace(
        "price_classes: {boundaries: [-0.03, 0.03]}",
        "price_classes: {definition_type: absolute, boundaries: [-15.0, 15.0]}",
    )
    .replace(
        "labeling: {handle_gaps: forward_fill}",
        "labeling: {handle_gaps: forward_fill, smoothing_steps: 6}",
    );
    let (n, ece, _) = oracle_ece(&yaml);
    assert!(n >= 50_000);
    assert!(ece <= 0.02, "oracle ECE {ece} over {n} steps");
}

/// The target's book of `days`, fetched as its own range.
fn target_book(days: (&str, &str)) -> binance_ml::data::OrderBook {
    let dir = tempfile::tempdir().unwrap();
    let signal = "    signal: {strength: 0.3, persistence: 0.98, lead_lag: 0.2}\n";
    let config = common::config(&market_yaml(dir.path(), days, signal));
    fetch(&config, false).unwrap();
    let mut object = open_cache(&config).unwrap().load().unwrap();
    object.order_books.remove("BTCUSDT").unwrap()
}

#[test]
fn a_day_is_the_same_market_in_every_range_that_contains_it() {
    let long = target_book(("2024-08-01", "2024-08-03"));
    let day = target_book(("2024-08-02", "2024-08-02"));
    let (from, to) = (1_722_556_800_000, 1_722_643_200_000); // 2024-08-02, 08-03
    let rows: Vec<usize> = (0..long.len())
        .filter(|&i| (from..to).contains(&long.snapshot_timestamps[i]))
        .collect();
    // The same snapshots (gaps and dropped corrupt rows included) and the same queues.
    let in_long: Vec<i64> = rows.iter().map(|&i| long.snapshot_timestamps[i]).collect();
    assert_eq!(in_long, day.snapshot_timestamps);
    assert!(day.len() > 8000, "{} snapshots", day.len());
    for (j, &i) in rows.iter().enumerate() {
        assert_eq!(
            long.bid_qty.row(i),
            day.bid_qty.row(j),
            "bid queues at row {j}"
        );
        assert_eq!(
            long.ask_qty.row(i),
            day.ask_qty.row(j),
            "ask queues at row {j}"
        );
    }
    // The same returns: only the price level differs (to the tick's rounding, 0.1 / 60k).
    let mid = |b: &binance_ml::data::OrderBook, i: usize| {
        (b.bid_price.row(i)[0] + b.ask_price.row(i)[0]) / 2.0
    };
    let ratios: Vec<f64> = rows
        .iter()
        .enumerate()
        .map(|(j, &i)| (mid(&long, i) / mid(&day, j)).ln())
        .collect();
    let level = ratios[0];
    let drift = ratios.iter().map(|r| (r - level).abs()).fold(0.0, f64::max);
    assert!(
        drift < 1e-5,
        "the log price gap moves by {drift} over the day"
    );

    // Consecutive one-day ranges are consecutive days, not the same day again.
    let next = target_book(("2024-08-03", "2024-08-03"));
    let same = (0..day.len().min(next.len()))
        .filter(|&i| day.bid_qty.row(i) == next.bid_qty.row(i))
        .count();
    assert!(same < day.len() / 100, "{same} rows of 08-03 repeat 08-02");
}
