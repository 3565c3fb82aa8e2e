//! Preprocessing throughput: time steps per second through alignment, features, labels and
//! scaling, on a synthetic 7-asset x 10-level book. Writes the same raw arrays to an NPZ so
//! `benches/preprocess_pandas.py` computes the same features with pandas/numpy on the same data;
//! `benches/compare_preprocess.sh` runs both and prints the ratio.
//!
//! `cargo bench --bench preprocess_throughput -- [steps] [npz-out]`

use std::time::Instant;

use binance_ml::config::{ClassDefinition, GapHandling, NormalizationMethod};
use binance_ml::data::npz::NpzWriter;
use binance_ml::preprocess::features::FeatureSpec;
use binance_ml::preprocess::grid::Levels;
use binance_ml::preprocess::labels::LabelSpec;
use binance_ml::preprocess::{
    AssetInput, PrepareSpec, prepare_reusing, split_and_fit, target_grid,
};

const ASSETS: usize = 7;
const DEPTH: usize = 10;

struct Book {
    ts: Vec<i64>,
    bid_px: Vec<f64>,
    bid_qty: Vec<f64>,
    ask_px: Vec<f64>,
    ask_qty: Vec<f64>,
}

fn book(steps: usize, seed: u64) -> Book {
    let mut x = seed;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut b = Book {
        ts: vec![],
        bid_px: vec![],
        bid_qty: vec![],
        ask_px: vec![],
        ask_qty: vec![],
    };
    let mut mid = 100.0 + seed as f64;
    for k in 0..steps {
        mid *= 1.0 + (rnd() - 0.5) * 1e-3;
        b.ts.push(1_722_470_400_000 + k as i64 * 10_000);
        for l in 0..DEPTH {
            b.bid_px.push(mid - 0.005 - l as f64 * 0.01);
            b.ask_px.push(mid + 0.005 + l as f64 * 0.01);
            b.bid_qty.push(0.1 + rnd() * 5.0);
            b.ask_qty.push(0.1 + rnd() * 5.0);
        }
    }
    b
}

fn main() {
    // `cargo test --all-targets` runs bench targets too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "preprocess_throughput: a benchmark; run it with `cargo bench --bench preprocess_throughput`"
        );
        return;
    }
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let books: Vec<Book> = (0..ASSETS).map(|a| book(steps, a as u64 + 1)).collect();
    if let Some(out) = args.get(2) {
        let mut w = NpzWriter::new();
        for (a, b) in books.iter().enumerate() {
            w.add_vector(&format!("a{a}/ts"), &b.ts).unwrap();
            for (name, v) in [
                ("bid_px", &b.bid_px),
                ("bid_qty", &b.bid_qty),
                ("ask_px", &b.ask_px),
                ("ask_qty", &b.ask_qty),
            ] {
                w.add_matrix(&format!("a{a}/{name}"), v, steps, DEPTH)
                    .unwrap();
            }
        }
        std::fs::write(out, w.finish().unwrap()).unwrap();
    }
    let spec = PrepareSpec {
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
            momentum_windows: vec![10, 60],
            depth_levels_used: 5,
            depth: DEPTH,
            level_features: true,
        },
        labels: LabelSpec {
            definition: ClassDefinition::Percentage,
            boundaries: vec![-0.05, 0.05],
            horizon_steps: 30,
            smoothing_steps: 0,
            volatility_window_steps: 360,
        },
        temporal_local: vec![
            "hour_of_day".into(),
            "day_of_week".into(),
            "minute_of_hour".into(),
        ],
        temporal_global: vec!["days_since_start".into(), "market_session".into()],
        handling: GapHandling::ForwardFill,
        max_gap_ms: 60_000,
        cadence_ms: 10_000,
        origin_ms: books[0].ts[0],
    };
    let names: Vec<String> = (0..ASSETS).map(|a| format!("A{a}")).collect();
    // Fresh buffers every run (a one-shot call), then the rows buffer of the previous run
    // reused (how a stream of chunks runs): the difference is the kernel zeroing new pages.
    for (label, reuse) in [("binance-ml", false), ("binance-ml-reuse", true)] {
        let mut best = f64::INFINITY;
        let mut spare = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let inputs: Vec<AssetInput<'_>> = books
                .iter()
                .zip(&names)
                .map(|(b, n)| AssetInput {
                    symbol: n,
                    ts_ms: &b.ts,
                    levels: Levels {
                        depth: DEPTH,
                        bid_px: &b.bid_px,
                        bid_qty: &b.bid_qty,
                        ask_px: &b.ask_px,
                        ask_qty: &b.ask_qty,
                    },
                })
                .collect();
            let grid = target_grid(&spec, &inputs).unwrap();
            let mut p = prepare_reusing(&spec, &inputs, grid, std::mem::take(&mut spare)).unwrap();
            let fit = split_and_fit(
                &p,
                100,
                30,
                (0.7, 0.15),
                NormalizationMethod::Standard,
                true,
            )
            .unwrap();
            fit.scaler.transform_rows(&mut p.rows);
            std::hint::black_box(&p.rows);
            best = best.min(t0.elapsed().as_secs_f64());
            if reuse {
                spare = p.rows;
            }
        }
        println!(
            "RESULT impl={label} steps={steps} assets={ASSETS} levels={DEPTH} seconds={best:.3} steps_per_s={:.0}",
            steps as f64 / best
        );
    }
}
