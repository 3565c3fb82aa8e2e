//! Per-asset order-book features: stationary inputs (bps, ratios, log changes), never raw
//! prices. Every feature at step `t` reads steps `<= t` only; a step whose inputs are missing
//! (or whose look-back reaches before the data or into a missing step) is NaN, and the
//! sampler never builds a window containing a NaN row.
//!
//! Because features are causal, computing them over a chunk with `lookback()` rows of history
//! in front gives exactly the rows of the whole-series computation: preprocessing streams.

use super::grid::Levels;

/// Which features are computed, in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    /// Names from `order_book_features` and `derived_features`, in config order.
    pub names: Vec<String>,
    /// Look-back windows of the momentum features, in steps.
    pub momentum_windows: Vec<usize>,
    /// Levels summed by depth_imbalance and volume_momentum.
    pub depth_levels_used: usize,
    /// Levels per side of the book.
    pub depth: usize,
    /// Append per-level offsets from mid (bps) and log1p quantities.
    pub level_features: bool,
}

impl FeatureSpec {
    /// Column names for one asset, e.g. `bid_ask_spread`, `price_momentum_10`, `bid_off_1`.
    pub fn columns(&self) -> Vec<String> {
        let mut cols = Vec::new();
        for name in &self.names {
            match name.as_str() {
                "price_momentum" | "volume_momentum" => {
                    cols.extend(self.momentum_windows.iter().map(|w| format!("{name}_{w}")))
                }
                _ => cols.push(name.clone()),
            }
        }
        if self.level_features {
            for side in ["bid", "ask"] {
                cols.extend((1..=self.depth).map(|l| format!("{side}_off_{l}")));
                cols.extend((1..=self.depth).map(|l| format!("{side}_logqty_{l}")));
            }
        }
        cols
    }

    /// History rows a chunk needs in front of it.
    pub fn lookback(&self) -> usize {
        self.momentum_windows.iter().copied().max().unwrap_or(0)
    }
}

/// Mid price per step (NaN where the book is missing).
pub fn mid_prices(levels: Levels<'_>) -> Vec<f64> {
    let d = levels.depth;
    (0..levels.rows())
        .map(|i| (levels.bid_px[i * d] + levels.ask_px[i * d]) / 2.0)
        .collect()
}

fn bps(x: f64, reference: f64) -> f64 {
    x / reference * 1e4
}

/// Features for every row of `levels`: a row-major `[rows x columns().len()]` matrix.
pub fn compute(spec: &FeatureSpec, levels: Levels<'_>) -> Vec<f64> {
    let d = levels.depth;
    let rows = levels.rows();
    let mid = mid_prices(levels);
    let used = spec.depth_levels_used.min(d);
    let depth_sum = |i: usize, qty: &[f64]| qty[i * d..i * d + used].iter().sum::<f64>();
    let total_depth: Vec<f64> = (0..rows)
        .map(|i| depth_sum(i, levels.bid_qty) + depth_sum(i, levels.ask_qty))
        .collect();
    // log change over `w` steps; NaN when the look-back leaves the data or hits a missing row.
    let log_change = |series: &[f64], i: usize, w: usize, scale: f64| {
        if i < w {
            f64::NAN
        } else {
            (series[i] / series[i - w]).ln() * scale
        }
    };

    // Resolve names once, not per row.
    #[derive(Clone, Copy)]
    enum Kind {
        Spread,
        VolumeImbalance,
        DepthImbalance,
        MicroPrice,
        PriceMomentum,
        VolumeMomentum,
    }
    let plan: Vec<Kind> = spec
        .names
        .iter()
        .map(|name| match name.as_str() {
            "bid_ask_spread" => Kind::Spread,
            "volume_imbalance" => Kind::VolumeImbalance,
            "depth_imbalance" => Kind::DepthImbalance,
            "weighted_mid_price" => Kind::MicroPrice,
            "price_momentum" => Kind::PriceMomentum,
            "volume_momentum" => Kind::VolumeMomentum,
            other => unreachable!("feature {other} passed config validation"),
        })
        .collect();
    let ncols = spec.columns().len();
    let mut out = Vec::with_capacity(rows * ncols);
    for i in 0..rows {
        let (b1, a1) = (levels.bid_px[i * d], levels.ask_px[i * d]);
        let (bq1, aq1) = (levels.bid_qty[i * d], levels.ask_qty[i * d]);
        let m = mid[i];
        for kind in &plan {
            match kind {
                Kind::Spread => out.push(bps(a1 - b1, m)),
                Kind::VolumeImbalance => out.push((bq1 - aq1) / (bq1 + aq1)),
                Kind::DepthImbalance => {
                    let (bd, ad) = (depth_sum(i, levels.bid_qty), depth_sum(i, levels.ask_qty));
                    out.push((bd - ad) / (bd + ad));
                }
                Kind::MicroPrice => {
                    // Micro-price: the mid tilted towards the side with less quantity.
                    let micro = (b1 * aq1 + a1 * bq1) / (bq1 + aq1);
                    out.push(bps(micro - m, m));
                }
                Kind::PriceMomentum => out.extend(
                    spec.momentum_windows
                        .iter()
                        .map(|&w| log_change(&mid, i, w, 1e4)),
                ),
                Kind::VolumeMomentum => out.extend(
                    spec.momentum_windows
                        .iter()
                        .map(|&w| log_change(&total_depth, i, w, 1.0)),
                ),
            }
        }
        if spec.level_features {
            for (px, qty) in [
                (levels.bid_px, levels.bid_qty),
                (levels.ask_px, levels.ask_qty),
            ] {
                out.extend(px[i * d..(i + 1) * d].iter().map(|p| bps(p - m, m)));
                out.extend(qty[i * d..(i + 1) * d].iter().map(|q| q.ln_1p()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(names: &[&str], windows: &[usize], level_features: bool) -> FeatureSpec {
        FeatureSpec {
            names: names.iter().map(|s| s.to_string()).collect(),
            momentum_windows: windows.to_vec(),
            depth_levels_used: 2,
            depth: 2,
            level_features,
        }
    }

    #[test]
    fn hand_computed_book_features() {
        // Two levels: bids 99.9 x 3, 99.8 x 5; asks 100.1 x 1, 100.2 x 1. Mid 100.
        let levels = Levels {
            depth: 2,
            bid_px: &[99.9, 99.8],
            bid_qty: &[3.0, 5.0],
            ask_px: &[100.1, 100.2],
            ask_qty: &[1.0, 1.0],
        };
        let s = spec(
            &[
                "bid_ask_spread",
                "volume_imbalance",
                "depth_imbalance",
                "weighted_mid_price",
            ],
            &[],
            true,
        );
        let f = compute(&s, levels);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(f[0], 20.0),
            "spread 0.2 on 100 = 20 bps, got {}",
            f[0]
        );
        assert!(close(f[1], 0.5), "(3-1)/(3+1)");
        assert!(close(f[2], 0.6), "(8-2)/(8+2)");
        // micro = (99.9*1 + 100.1*3)/4 = 100.05 -> +5 bps
        assert!(close(f[3], 5.0), "micro-price offset {}", f[3]);
        assert_eq!(
            s.columns()[4..].to_vec(),
            [
                "bid_off_1",
                "bid_off_2",
                "bid_logqty_1",
                "bid_logqty_2",
                "ask_off_1",
                "ask_off_2",
                "ask_logqty_1",
                "ask_logqty_2"
            ]
        );
        assert!(close(f[4], -10.0) && close(f[5], -20.0));
        assert!(close(f[6], 4f64.ln()) && close(f[7], 6f64.ln()));
        assert!(close(f[8], 10.0) && close(f[9], 20.0));
    }

    #[test]
    fn momentum_is_backward_looking_and_nan_without_history() {
        let mids = [100.0, 101.0, 102.0, 101.0];
        let bid: Vec<f64> = mids.iter().map(|m| m - 0.5).collect();
        let ask: Vec<f64> = mids.iter().map(|m| m + 0.5).collect();
        let qty = [1.0, 2.0, 4.0, 8.0];
        let levels = Levels {
            depth: 1,
            bid_px: &bid,
            bid_qty: &qty,
            ask_px: &ask,
            ask_qty: &qty,
        };
        let mut s = spec(&["price_momentum", "volume_momentum"], &[2], false);
        s.depth = 1;
        s.depth_levels_used = 1;
        let f = compute(&s, levels);
        assert_eq!(s.columns(), ["price_momentum_2", "volume_momentum_2"]);
        assert!(f[0].is_nan() && f[2].is_nan());
        assert!((f[4] - (102f64 / 100.0).ln() * 1e4).abs() < 1e-9);
        assert!((f[5] - 4f64.ln()).abs() < 1e-12);
        assert!((f[6] - (101f64 / 101.0).ln() * 1e4).abs() < 1e-9);
    }
}
