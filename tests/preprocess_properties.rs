//! Correctness properties of preprocessing: no look-ahead, scalers blind to validation/test,
//! purged splits, gaps never bridged, a hand-computed example, and the real Binance samples.

use binance_ml::config::{ClassDefinition, GapHandling, NormalizationMethod};
use binance_ml::preprocess::features::FeatureSpec;
use binance_ml::preprocess::grid::Levels;
use binance_ml::preprocess::labels::LabelSpec;
use binance_ml::preprocess::{
    AssetInput, PrepareSpec, Prepared, PreprocessError, prepare, split_and_fit, target_grid,
};

/// SplitMix64: a tiny deterministic generator, so the properties are checked on many cases
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One asset's raw snapshots: times (ms) and `[rows x depth]` arrays.
#[derive(Clone)]
struct Series {
    ts: Vec<i64>,
    depth: usize,
    bid_px: Vec<f64>,
    bid_qty: Vec<f64>,
    ask_px: Vec<f64>,
    ask_qty: Vec<f64>,
}

impl Series {
    fn input<'a>(&'a self, symbol: &'a str) -> AssetInput<'a> {
        AssetInput {
            symbol,
            ts_ms: &self.ts,
            levels: Levels {
                depth: self.depth,
                bid_px: &self.bid_px,
                bid_qty: &self.bid_qty,
                ask_px: &self.ask_px,
                ask_qty: &self.ask_qty,
            },
        }
    }

    /// A random walk book at 1 s with jittered receive times, dropped snapshots and long gaps.
    fn random(rng: &mut Rng, steps: usize, depth: usize, start_price: f64) -> Self {
        let mut s = Series {
            ts: vec![],
            depth,
            bid_px: vec![],
            bid_qty: vec![],
            ask_px: vec![],
            ask_qty: vec![],
        };
        let mut mid = start_price;
        let mut k = 0;
        while k < steps {
            if rng.unit() < 0.02 {
                k += 2 + (rng.next() % 12) as usize; // a gap, sometimes longer than max_gap
                continue;
            }
            mid *= 1.0 + (rng.unit() - 0.5) * 0.002;
            let tick = 0.01;
            let spread = tick * (1 + rng.next() % 3) as f64;
            s.ts.push(k as i64 * 1000 - (rng.next() % 900) as i64);
            for l in 0..depth {
                s.bid_px.push(mid - spread / 2.0 - l as f64 * tick);
                s.ask_px.push(mid + spread / 2.0 + l as f64 * tick);
                s.bid_qty.push(0.1 + rng.unit() * 5.0);
                s.ask_qty.push(0.1 + rng.unit() * 5.0);
            }
            k += 1;
        }
        s
    }

    /// The snapshots with `lo < ts <= hi`.
    fn between(&self, lo: i64, hi: i64) -> Series {
        let a = self.ts.partition_point(|t| *t <= lo);
        let b = self.ts.partition_point(|t| *t <= hi);
        let d = self.depth;
        Series {
            ts: self.ts[a..b].to_vec(),
            depth: d,
            bid_px: self.bid_px[a * d..b * d].to_vec(),
            bid_qty: self.bid_qty[a * d..b * d].to_vec(),
            ask_px: self.ask_px[a * d..b * d].to_vec(),
            ask_qty: self.ask_qty[a * d..b * d].to_vec(),
        }
    }

    fn rows_after(&self, t_ms: i64) -> std::ops::Range<usize> {
        let first = self.ts.partition_point(|t| *t <= t_ms);
        first..self.ts.len()
    }
}

fn spec(handling: GapHandling, horizon: usize, windows: &[usize], depth: usize) -> PrepareSpec {
    PrepareSpec {
        features: FeatureSpec {
            names: [
                "bid_ask_spread",
                "volume_imbalance",
                "depth_imbalance",
                "weighted_mid_price",
                "price_momentum",
                "volume_momentum",
            ]
            .map(String::from)
            .to_vec(),
            momentum_windows: windows.to_vec(),
            depth_levels_used: depth,
            depth,
            level_features: true,
        },
        labels: LabelSpec {
            definition: ClassDefinition::Adaptive,
            boundaries: vec![-0.5, 0.5],
            horizon_steps: horizon,
            smoothing_steps: 0,
            volatility_window_steps: 20,
        },
        temporal_local: vec!["hour_of_day".into(), "minute_of_hour".into()],
        temporal_global: vec!["days_since_start".into(), "market_session".into()],
        handling,
        max_gap_ms: 3_000,
        cadence_ms: 1_000,
        origin_ms: 0,
    }
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Whole-series preprocessing on the grid covering the target.
fn whole(spec: &PrepareSpec, assets: &[AssetInput<'_>]) -> Result<Prepared, PreprocessError> {
    prepare(spec, assets, target_grid(spec, assets)?)
}

fn run(spec: &PrepareSpec, target: &Series, other: &Series) -> Prepared {
    whole(spec, &[target.input("BTCUSDT"), other.input("ETHUSDT")]).expect("prepare")
}

#[test]
fn no_feature_at_or_before_t_depends_on_data_after_t() {
    let mut rng = Rng(7);
    for case in 0..24 {
        let handling = [
            GapHandling::Interpolate,
            GapHandling::ForwardFill,
            GapHandling::Skip,
        ][case % 3];
        let spec = spec(handling, 5, &[3, 10], 3);
        let target = Series::random(&mut rng, 400, 3, 60_000.0);
        let other = Series::random(&mut rng, 400, 3, 2_500.0);
        let base = run(&spec, &target, &other);
        let ncols = base.columns.len();
        let cut_step = 50 + (rng.next() % 300) as usize;
        let cut_ms = base.grid.time_ms(cut_step);

        // Three kinds of change after the cut: new prices and quantities, snapshots removed,
        // and one asset's future replaced by another's.
        let mut changed = [target.clone(), other.clone()];
        match case % 3 {
            0 => {
                for s in &mut changed {
                    for r in s.rows_after(cut_ms) {
                        for l in 0..s.depth {
                            s.bid_px[r * s.depth + l] *= 1.05;
                            s.ask_px[r * s.depth + l] *= 1.05;
                            s.bid_qty[r * s.depth + l] += 7.0;
                        }
                    }
                }
            }
            1 => {
                for s in &mut changed {
                    let keep = s.rows_after(cut_ms).start;
                    let d = s.depth;
                    s.ts.truncate(keep);
                    for v in [&mut s.bid_px, &mut s.bid_qty, &mut s.ask_px, &mut s.ask_qty] {
                        v.truncate(keep * d);
                    }
                    // Keep the grid as long as before: one far snapshot at the old end.
                    s.ts.push(*target.ts.last().unwrap() + 1);
                    let last = keep.saturating_sub(1) * d;
                    for v in [&mut s.bid_px, &mut s.bid_qty, &mut s.ask_px, &mut s.ask_qty] {
                        let tail: Vec<f64> = v[last..last + d].to_vec();
                        v.extend(tail);
                    }
                }
            }
            _ => {
                let r = changed[1].rows_after(cut_ms);
                for i in r {
                    for l in 0..3 {
                        changed[1].ask_qty[i * 3 + l] = 0.001;
                    }
                }
            }
        }
        let after = run(&spec, &changed[0], &changed[1]);
        for t in 0..=cut_step {
            for c in 0..ncols {
                let (a, b) = (base.rows[t * ncols + c], after.rows[t * ncols + c]);
                assert!(
                    same(a, b),
                    "case {case} ({handling:?}): step {t} <= cut {cut_step}, column {} changed: {a} -> {b}",
                    base.columns[c]
                );
            }
            assert!(
                same(base.volatility[t], after.volatility[t]),
                "volatility at {t}"
            );
        }
        // Labels may change only within the look-ahead before the cut.
        for t in 0..=cut_step.saturating_sub(spec.labels.lookahead()) {
            assert_eq!(base.labels[t], after.labels[t], "case {case}: label at {t}");
        }
    }
}

#[test]
fn features_computed_in_chunks_equal_the_whole_series() {
    let mut rng = Rng(11);
    let s = Series::random(&mut rng, 300, 3, 100.0);
    let spec = spec(GapHandling::ForwardFill, 5, &[4, 9], 3);
    let levels = s.input("X").levels;
    let whole = binance_ml::preprocess::features::compute(&spec.features, levels);
    let cols = spec.features.columns().len();
    let lookback = spec.features.lookback();
    let (from, to) = (120, 200);
    let chunk = |v: &[f64]| v[(from - lookback) * 3..to * 3].to_vec();
    let (b, bq, a, aq) = (
        chunk(&s.bid_px),
        chunk(&s.bid_qty),
        chunk(&s.ask_px),
        chunk(&s.ask_qty),
    );
    let part = binance_ml::preprocess::features::compute(
        &spec.features,
        Levels {
            depth: 3,
            bid_px: &b,
            bid_qty: &bq,
            ask_px: &a,
            ask_qty: &aq,
        },
    );
    let tail = &part[lookback * cols..];
    let expected = &whole[from * cols..to * cols];
    assert!(tail.iter().zip(expected).all(|(x, y)| same(*x, *y)));
}

#[test]
fn chunks_with_history_and_lookahead_equal_the_whole() {
    for handling in [
        GapHandling::Interpolate,
        GapHandling::ForwardFill,
        GapHandling::Skip,
    ] {
        let spec = spec(handling, 6, &[4, 12], 3);
        check_chunks(&spec, spec.history_steps(), Check::All, 17);
    }
}

/// A model's input (predict, evaluate on new data) reads less history than the stage: the
/// volatility window only where adaptive labels read it, and still equals the store's rows.
#[test]
fn a_model_input_needs_only_the_look_back_its_recipe_reads() {
    let adaptive = spec(GapHandling::Interpolate, 6, &[4, 12], 3);
    // Momentum 12 + gap 3 + 1; adaptive labels: volatility 20 + 1 + gap 3 + 1.
    assert_eq!(adaptive.input_history_steps(false), 16);
    assert_eq!(adaptive.input_history_steps(true), 25);
    check_chunks(&adaptive, 16, Check::Rows, 5);
    check_chunks(&adaptive, 25, Check::RowsAndLabels, 6);
    let mut percentage = adaptive.clone();
    percentage.labels.definition = ClassDefinition::Percentage;
    assert_eq!(percentage.input_history_steps(true), 16);
    assert!(
        percentage.history_steps() > 16,
        "the stage also keeps the volatility"
    );
    check_chunks(&percentage, 16, Check::RowsAndLabels, 7);
}

/// What a chunk must reproduce of the whole computation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    Rows,
    RowsAndLabels,
    All,
}

/// Chunks of a random market read with `history` steps in front and the look-ahead behind
/// equal the same steps of the whole-series computation.
fn check_chunks(spec: &PrepareSpec, history: usize, check: Check, seed: u64) {
    let mut rng = Rng(seed);
    let handling = spec.handling;
    let target = Series::random(&mut rng, 900, 3, 60_000.0);
    let other = Series::random(&mut rng, 900, 3, 2_500.0);
    let all = run(spec, &target, &other);
    let ncols = all.columns.len();
    for (k0, k1) in [(200, 400), (400, 650), (650, 850)] {
        // The streaming stage's recipe: a sub-grid with history in front and look-ahead
        // behind, fed only the snapshots inside it.
        let start = k0 - history;
        let end = (k1 + spec.future_steps()).min(all.grid.steps);
        let grid = binance_ml::preprocess::grid::Grid {
            start_ms: all.grid.time_ms(start),
            cadence_ms: all.grid.cadence_ms,
            steps: end - start,
        };
        let (lo, hi) = (
            grid.start_ms - grid.cadence_ms,
            grid.time_ms(grid.steps - 1),
        );
        let (t, o) = (target.between(lo, hi), other.between(lo, hi));
        let chunk = prepare(spec, &[t.input("BTCUSDT"), o.input("ETHUSDT")], grid).unwrap();
        for k in k0..k1 {
            let c = k - start;
            let (a, b) = (
                &all.rows[k * ncols..(k + 1) * ncols],
                &chunk.rows[c * ncols..(c + 1) * ncols],
            );
            assert!(
                a.iter().zip(b).all(|(x, y)| same(*x, *y)),
                "{handling:?}: row {k} differs"
            );
            if check == Check::All {
                assert!(
                    same(all.volatility[k], chunk.volatility[c]),
                    "{handling:?}: volatility {k}"
                );
            }
            if check != Check::Rows && k + spec.labels.lookahead() < all.grid.steps {
                assert_eq!(all.labels[k], chunk.labels[c], "{handling:?}: label {k}");
                assert!(same(all.price_changes[k], chunk.price_changes[c]));
            }
        }
    }
}

#[test]
fn scaler_ignores_validation_and_test_data() {
    let mut rng = Rng(3);
    let spec = spec(GapHandling::ForwardFill, 5, &[3], 3);
    let target = Series::random(&mut rng, 600, 3, 60_000.0);
    let other = Series::random(&mut rng, 600, 3, 2_500.0);
    for method in [
        NormalizationMethod::MinMax,
        NormalizationMethod::Standard,
        NormalizationMethod::Robust,
    ] {
        for per_asset in [true, false] {
            let fit = |t: &Series, o: &Series| {
                let p = run(&spec, t, o);
                split_and_fit(&p, 20, 5, (0.6, 0.2), method, per_asset).unwrap()
            };
            let base = fit(&target, &other);
            let train_end_ms = run(&spec, &target, &other)
                .grid
                .time_ms(base.ranges[0].end - 1);
            let mut t2 = target.clone();
            let mut o2 = other.clone();
            for s in [&mut t2, &mut o2] {
                for r in s.rows_after(train_end_ms) {
                    s.bid_qty[r * 3] *= 100.0;
                    s.ask_px[r * 3] += 50.0;
                }
            }
            let after = fit(&t2, &o2);
            assert_eq!(base.ranges, after.ranges);
            assert_eq!(
                base.scaler, after.scaler,
                "{method:?} per_asset={per_asset}"
            );
        }
    }
}

#[test]
fn no_training_window_or_label_reaches_validation_or_test_time() {
    let mut rng = Rng(5);
    let spec = spec(GapHandling::Interpolate, 7, &[3], 3);
    let target = Series::random(&mut rng, 800, 3, 60_000.0);
    let other = Series::random(&mut rng, 800, 3, 2_500.0);
    let p = run(&spec, &target, &other);
    let (window, lookahead) = (25, spec.labels.lookahead());
    let s = split_and_fit(
        &p,
        window,
        lookahead,
        (0.7, 0.15),
        NormalizationMethod::Standard,
        true,
    )
    .unwrap();
    let [train, val, test] = s.ranges;
    assert!(!s.ends[0].is_empty() && !s.ends[1].is_empty() && !s.ends[2].is_empty());
    let val_start_ms = p.grid.time_ms(val.start);
    let test_start_ms = p.grid.time_ms(test.start);
    for &e in &s.ends[0] {
        assert!(
            e + lookahead < train.end,
            "train label of {e} reaches validation"
        );
        assert!(p.grid.time_ms(e + lookahead) < val_start_ms);
    }
    for &e in &s.ends[1] {
        assert!(
            e + 1 - window >= val.start,
            "validation window of {e} starts in train"
        );
        assert!(
            p.grid.time_ms(e + lookahead) < test_start_ms,
            "validation label reaches test"
        );
    }
    for &e in &s.ends[2] {
        assert!(
            e + 1 - window >= test.start,
            "test window of {e} starts before test"
        );
    }
}

#[test]
fn gaps_longer_than_max_gap_are_never_bridged() {
    let mut rng = Rng(9);
    for handling in [
        GapHandling::Interpolate,
        GapHandling::ForwardFill,
        GapHandling::Skip,
    ] {
        let spec = spec(handling, 4, &[3], 3);
        let target = Series::random(&mut rng, 1_000, 3, 60_000.0);
        let other = Series::random(&mut rng, 1_000, 3, 2_500.0);
        let p = run(&spec, &target, &other);
        let s = split_and_fit(&p, 10, 4, (0.7, 0.15), NormalizationMethod::MinMax, true).unwrap();
        let max_gap = if handling == GapHandling::Skip {
            0
        } else {
            spec.max_gap_ms
        };
        let mut checked = 0;
        for ends in &s.ends {
            for &e in ends {
                for step in e + 1 - 10..=e + 4 {
                    let t = p.grid.time_ms(step);
                    for series in [&target, &other] {
                        // The newest snapshot at or before this step's time, by brute force.
                        let newest = series
                            .ts
                            .iter()
                            .rev()
                            .find(|x| **x <= t)
                            .expect("data before step");
                        let age = t - newest;
                        assert!(
                            age < 1_000 || age <= max_gap,
                            "{handling:?}: sample {e} uses step {step} whose newest snapshot is {age} ms old"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(
            checked > 100,
            "{handling:?}: only {checked} samples checked"
        );
        let filled: usize = p.gaps.iter().map(|(_, g)| g.filled).sum();
        let missing: usize = p.gaps.iter().map(|(_, g)| g.missing).sum();
        assert!(missing > 0, "the random series has long gaps");
        assert_eq!(filled == 0, handling == GapHandling::Skip);
    }
}

/// 20 one-level snapshots at 1 s, mids below, spread 1; the snapshot of step 8 is absent.
fn twenty_steps() -> Series {
    let mids = [
        100.0, 100.0, 101.0, 102.0, 102.0, 101.0, 100.0, 100.0, 99.0, 98.0, 99.0, 100.0, 101.0,
        101.0, 101.0, 102.0, 103.0, 103.0, 102.0, 101.0,
    ];
    let mut s = Series {
        ts: vec![],
        depth: 1,
        bid_px: vec![],
        bid_qty: vec![],
        ask_px: vec![],
        ask_qty: vec![],
    };
    for (k, m) in mids.iter().enumerate() {
        if k == 8 {
            continue;
        }
        s.ts.push(1_722_470_400_000 + k as i64 * 1000); // 2024-08-01T00:00:00Z
        s.bid_px.push(m - 0.5);
        s.ask_px.push(m + 0.5);
        s.bid_qty.push(3.0);
        s.ask_qty.push(1.0);
    }
    s
}

fn hand_spec(handling: GapHandling) -> PrepareSpec {
    PrepareSpec {
        features: FeatureSpec {
            names: vec![
                "bid_ask_spread".into(),
                "volume_imbalance".into(),
                "price_momentum".into(),
            ],
            momentum_windows: vec![2],
            depth_levels_used: 1,
            depth: 1,
            level_features: false,
        },
        labels: LabelSpec {
            definition: ClassDefinition::Percentage,
            boundaries: vec![-0.5, 0.5],
            horizon_steps: 2,
            smoothing_steps: 0,
            volatility_window_steps: 2,
        },
        temporal_local: vec![],
        temporal_global: vec![],
        handling,
        max_gap_ms: 1_000,
        cadence_ms: 1_000,
        origin_ms: 0,
    }
}

#[test]
fn hand_computed_twenty_step_example() {
    let s = twenty_steps();
    let p = whole(&hand_spec(GapHandling::ForwardFill), &[s.input("BTCUSDT")]).unwrap();
    assert_eq!(p.grid.steps, 20);
    assert_eq!(
        p.columns,
        [
            "BTCUSDT.bid_ask_spread",
            "BTCUSDT.volume_imbalance",
            "BTCUSDT.price_momentum_2"
        ]
    );
    let row = |t: usize| &p.rows[t * 3..t * 3 + 3];
    assert_eq!(row(0)[0], 100.0, "1 / 100 = 100 bps");
    assert_eq!(row(0)[1], 0.5, "(3 - 1) / (3 + 1)");
    assert!(row(1)[2].is_nan(), "no 2-step history at step 1");
    assert!(
        (row(2)[2] - 99.503_308_531_68).abs() < 1e-6,
        "ln(101/100) in bps"
    );
    // Step 8 is forward-filled from step 7 (mid 100): momentum at 10 = ln(99/100).
    assert_eq!(
        row(8)[..2],
        row(7)[..2],
        "the book of step 7 is carried forward"
    );
    assert_eq!(
        row(8)[2],
        0.0,
        "ln(100 / 100): momentum still moves with the grid"
    );
    assert!((row(10)[2] - -100.503_358_535_01).abs() < 1e-6);
    // Labels over 2 steps, boundaries +-0.5 %.
    assert_eq!(&p.labels[..8], &[2, 2, 2, 0, 0, 0, 1, 0]);
    assert!((p.price_changes[1] - 2.0).abs() < 1e-12);
    assert!(
        (p.price_changes[6] - 0.0).abs() < 1e-12,
        "100 -> filled 100"
    );
    assert_eq!(
        &p.labels[18..],
        &[u32::MAX, u32::MAX],
        "no future for the last two steps"
    );
    let ends = p
        .usable
        .sample_ends(binance_ml::store::SplitRange { start: 0, end: 20 }, 3, 2);
    assert_eq!(ends, (4..=17).collect::<Vec<_>>());

    // Interpolated label prices: step 8 = (100 + 98) / 2 = 99, so the label at 6 is -1 %.
    let p = whole(&hand_spec(GapHandling::Interpolate), &[s.input("BTCUSDT")]).unwrap();
    assert!((p.price_changes[6] - -1.0).abs() < 1e-12);
    assert_eq!(p.labels[6], 0);
    assert_eq!(
        &p.rows[8 * 3..8 * 3 + 2],
        &p.rows[7 * 3..7 * 3 + 2],
        "features are still forward-filled"
    );

    // Skip: step 8 missing; rows 8 and 10 (momentum reads 8) unusable; labels at 6..=8 undefined.
    let p = whole(&hand_spec(GapHandling::Skip), &[s.input("BTCUSDT")]).unwrap();
    assert_eq!(&p.labels[6..9], &[u32::MAX; 3]);
    let ends = p
        .usable
        .sample_ends(binance_ml::store::SplitRange { start: 0, end: 20 }, 3, 2);
    assert_eq!(ends, vec![4, 5, 13, 14, 15, 16, 17]);
}

#[test]
fn bad_inputs_name_the_asset_or_key() {
    let s = twenty_steps();
    let spec = hand_spec(GapHandling::ForwardFill);
    // An asset with no overlap with the target's time range.
    let mut late = s.clone();
    for t in &mut late.ts {
        *t += 3_600_000;
    }
    let e = whole(&spec, &[s.input("BTCUSDT"), late.input("ETHUSDT")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "asset ETHUSDT: no snapshot overlaps the target BTCUSDT's time range"
    );
    // An all-NaN asset.
    let mut nan = s.clone();
    nan.bid_px.iter_mut().for_each(|x| *x = f64::NAN);
    let e = whole(&spec, &[s.input("BTCUSDT"), nan.input("ETHUSDT")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("asset ETHUSDT: every mid price is NaN")
    );
    // A horizon longer than the data.
    let mut long = spec.clone();
    long.labels.horizon_steps = 25;
    let e = whole(&long, &[s.input("BTCUSDT")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("targets.prediction_horizon_seconds")
    );
    // A window longer than a split.
    let p = whole(&spec, &[s.input("BTCUSDT")]).unwrap();
    let e = split_and_fit(&p, 5, 2, (0.7, 0.15), NormalizationMethod::MinMax, true).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("preprocessing.window_steps: the validation split has 3 steps"),
        "{e}"
    );
    // A zero-variance feature (constant quantities -> volume_imbalance 0.5 everywhere) is
    // centred, not divided by zero.
    let p = whole(&spec, &[s.input("BTCUSDT")]).unwrap();
    let fit = split_and_fit(&p, 2, 2, (0.5, 0.25), NormalizationMethod::Standard, true).unwrap();
    assert_eq!(fit.scaler.scale[1], 1.0);
    let mut row = p.rows[3..6].to_vec();
    fit.scaler.transform_row(&mut row);
    assert_eq!(row[1], 0.0);
}

fn shared_data() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("BINANCE_ML_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("binance_1s_top10").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "shared Binance samples missing at {} (CI=true requires them)",
        dir.display()
    );
    eprintln!(
        "skipped: shared Binance samples not found at {} (set BINANCE_ML_SHARED_DATA)",
        dir.display()
    );
    None
}

/// Reads a wide 10-level sample file (`ts_s,symbol,bid_px_1,bid_qty_1,...,ask_qty_10,...`).
fn read_wide(path: &std::path::Path) -> Series {
    let text = std::fs::read_to_string(path).unwrap();
    let mut s = Series {
        ts: vec![],
        depth: 10,
        bid_px: vec![],
        bid_qty: vec![],
        ask_px: vec![],
        ask_qty: vec![],
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        s.ts.push(f[0].parse::<i64>().unwrap() * 1000);
        let num = |i: usize| f[i].parse::<f64>().unwrap();
        for l in 0..10 {
            s.bid_px.push(num(2 + 2 * l));
            s.bid_qty.push(num(3 + 2 * l));
            s.ask_px.push(num(22 + 2 * l));
            s.ask_qty.push(num(23 + 2 * l));
        }
    }
    s
}

#[test]
fn real_binance_samples_go_through_with_one_tick_spreads() {
    let Some(dir) = shared_data() else { return };
    let btc = read_wide(&dir.join("binance_1s_top10/spot_BTCUSDT_20240808-09.csv"));
    let eth = read_wide(&dir.join("binance_1s_top10/spot_ETHUSDT_20240808-09.csv"));
    let mut spec = spec(GapHandling::ForwardFill, 10, &[5, 30], 10);
    spec.labels.definition = ClassDefinition::Percentage;
    spec.labels.boundaries = vec![-0.01, 0.01];
    let p = whole(&spec, &[btc.input("BTCUSDT"), eth.input("ETHUSDT")]).unwrap();
    assert_eq!(p.grid.steps, 650);
    assert_eq!(p.gaps[0].1.missing, 0);
    // Median BTC spread: one 0.01 tick on ~61,800 = ~0.0016 bps.
    let ncols = p.columns.len();
    let mut spreads: Vec<f64> = (0..p.grid.steps).map(|t| p.rows[t * ncols]).collect();
    spreads.sort_by(f64::total_cmp);
    let median = spreads[spreads.len() / 2];
    let mid = (btc.bid_px[0] + btc.ask_px[0]) / 2.0;
    let one_tick = 0.01 / mid * 1e4;
    assert!(
        (median / one_tick - 1.0).abs() < 0.02,
        "median spread {median} bps is not one tick ({one_tick})"
    );
    let s = split_and_fit(&p, 30, 10, (0.6, 0.2), NormalizationMethod::Robust, true).unwrap();
    let total: usize = s.ends.iter().map(Vec::len).sum();
    assert!(total > 400, "only {total} samples from 650 steps");
    let classes: std::collections::BTreeSet<u32> = s.ends[0].iter().map(|&e| p.labels[e]).collect();
    assert!(
        classes.len() >= 2,
        "a 1 bp boundary at 10 s should produce more than one class"
    );
}
