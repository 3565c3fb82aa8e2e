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

/// Feature names resolved once, so rows are written without string matches.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Spread,
    VolumeImbalance,
    DepthImbalance,
    MicroPrice,
    PriceMomentum,
    VolumeMomentum,
}

/// A [`FeatureSpec`] compiled for writing rows: one step's features straight into its slice
/// of the output row.
#[derive(Debug, Clone)]
pub struct FeaturePlan {
    kinds: Vec<Kind>,
    windows: Vec<usize>,
    used: usize,
    level_features: bool,
    columns: usize,
}

impl FeaturePlan {
    /// Resolves the names of `spec` (validated by the config, so every name is known).
    pub fn new(spec: &FeatureSpec) -> Self {
        let kinds = spec
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
        Self {
            kinds,
            windows: spec.momentum_windows.clone(),
            used: spec.depth_levels_used,
            level_features: spec.level_features,
            columns: spec.columns().len(),
        }
    }

    /// Values per step.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The series momentum looks back on, of book row `row`: mid price and the quantity
    /// summed over the used levels of both sides.
    pub fn mid_and_depth(&self, levels: Levels<'_>, row: usize) -> (f64, f64) {
        let d = levels.depth;
        let top = row * d;
        let used = self.used.min(d);
        let mid = (levels.bid_px[top] + levels.ask_px[top]) / 2.0;
        let bid: f64 = levels.bid_qty[top..top + used].iter().sum();
        let ask: f64 = levels.ask_qty[top..top + used].iter().sum();
        (mid, bid + ask)
    }

    /// Writes the features of step `k`, which takes book row `row`, into `out`
    /// (`columns()` values). `mid` and `depth` are the step series of [`Self::mid_and_depth`]
    /// (NaN at missing steps) for steps `..=k`; momentum reads them `w` steps back only.
    pub fn write(
        &self,
        levels: Levels<'_>,
        row: usize,
        k: usize,
        mid: &[f64],
        depth: &[f64],
        out: &mut [f64],
    ) {
        let d = levels.depth;
        let top = row * d;
        let (b1, a1) = (levels.bid_px[top], levels.ask_px[top]);
        let (bq1, aq1) = (levels.bid_qty[top], levels.ask_qty[top]);
        let m = mid[k];
        let used = self.used.min(d);
        // log change over `w` steps; NaN when the look-back leaves the data or hits a
        // missing step.
        let log_change = |series: &[f64], w: usize, scale: f64| {
            if k < w {
                f64::NAN
            } else {
                (series[k] / series[k - w]).ln() * scale
            }
        };
        let mut o = 0;
        for kind in &self.kinds {
            match kind {
                Kind::Spread => {
                    out[o] = bps(a1 - b1, m);
                    o += 1;
                }
                Kind::VolumeImbalance => {
                    out[o] = (bq1 - aq1) / (bq1 + aq1);
                    o += 1;
                }
                Kind::DepthImbalance => {
                    let bd: f64 = levels.bid_qty[top..top + used].iter().sum();
                    let ad: f64 = levels.ask_qty[top..top + used].iter().sum();
                    out[o] = (bd - ad) / (bd + ad);
                    o += 1;
                }
                Kind::MicroPrice => {
                    // Micro-price: the mid tilted towards the side with less quantity.
                    let micro = (b1 * aq1 + a1 * bq1) / (bq1 + aq1);
                    out[o] = bps(micro - m, m);
                    o += 1;
                }
                Kind::PriceMomentum => {
                    for &w in &self.windows {
                        out[o] = log_change(mid, w, 1e4);
                        o += 1;
                    }
                }
                Kind::VolumeMomentum => {
                    for &w in &self.windows {
                        out[o] = log_change(depth, w, 1.0);
                        o += 1;
                    }
                }
            }
        }
        if self.level_features {
            for (px, qty) in [
                (levels.bid_px, levels.bid_qty),
                (levels.ask_px, levels.ask_qty),
            ] {
                let (off, rest) = out[o..o + 2 * d].split_at_mut(d);
                for (y, p) in off.iter_mut().zip(&px[top..top + d]) {
                    *y = bps(p - m, m);
                }
                ln_1p_into(&qty[top..top + d], rest);
                o += 2 * d;
            }
        }
    }
}

fn bps(x: f64, reference: f64) -> f64 {
    x / reference * 1e4
}

/// Features for every row of `levels`: a row-major `[rows x columns().len()]` matrix.
pub fn compute(spec: &FeatureSpec, levels: Levels<'_>) -> Vec<f64> {
    let plan = FeaturePlan::new(spec);
    let rows = levels.rows();
    let (mid, depth): (Vec<f64>, Vec<f64>) =
        (0..rows).map(|i| plan.mid_and_depth(levels, i)).unzip();
    let n = plan.columns();
    let mut out = vec![0.0; rows * n];
    for (i, row) in out.chunks_exact_mut(n.max(1)).enumerate().take(rows) {
        plan.write(levels, i, i, &mid, &depth, row);
    }
    out
}

/// `ln(1 + x)` of every `x` into `out`, equal to `f64::ln_1p` within 1 ulp (the fdlibm
/// algorithm). Written branch-free so the loop vectorises: the level quantities make this the
/// most frequent function in preprocessing, and the libm call dominated it.
pub fn ln_1p_into(x: &[f64], out: &mut [f64]) {
    for (y, &v) in out.iter_mut().zip(x) {
        *y = ln_1p_fast(v);
    }
    // Rare inputs outside the fast path's domain (NaN, inf, <= -1, 1 + x subnormal).
    for (y, &v) in out.iter_mut().zip(x) {
        let u = 1.0 + v;
        if !(f64::MIN_POSITIVE..f64::INFINITY).contains(&u) {
            *y = v.ln_1p();
        }
    }
}

/// fdlibm `log1p` (s_log1p.c) for `1 + x` normal and finite, with its branches turned into
/// selects.
#[inline(always)]
fn ln_1p_fast(x: f64) -> f64 {
    // fdlibm's constants, by their bits.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const LP: [f64; 7] = [
        f64::from_bits(0x3fe5_5555_5555_5593),
        f64::from_bits(0x3fd9_9999_9997_fa04),
        f64::from_bits(0x3fd2_4924_9422_9359),
        f64::from_bits(0x3fcc_71c5_1d8e_78af),
        f64::from_bits(0x3fc7_4664_96cb_03de),
        f64::from_bits(0x3fc3_9a09_d078_c69f),
        f64::from_bits(0x3fc2_f112_df3e_5244),
    ];
    const MANTISSA: u64 = (1 << 52) - 1;
    // Mantissa bits of sqrt(2): above them u is halved so that f = u - 1 is small.
    const SQRT2_MANTISSA: u64 = 0x6a09e << 32;
    // 2^52 as bits: OR-ing a small integer into its mantissa and subtracting 2^52 converts
    // it to f64 without an integer-to-float instruction.
    const TWO52: u64 = 0x4330_0000_0000_0000;
    let u = 1.0 + x;
    let bits = u.to_bits();
    let raw_k = f64::from_bits(TWO52 | (bits >> 52)) - (4_503_599_627_370_496.0 + 1023.0);
    // The rounding error of 1 + x, relative to u (0 once x dwarfs 1).
    let c = if raw_k > 0.0 {
        1.0 - (u - x)
    } else {
        x - (u - 1.0)
    };
    let c = if raw_k < 54.0 { c / u } else { 0.0 };
    let m = bits & MANTISSA;
    let (k, f) = if m < SQRT2_MANTISSA {
        (raw_k, f64::from_bits(m | 0x3ff0_0000_0000_0000) - 1.0)
    } else {
        (raw_k + 1.0, f64::from_bits(m | 0x3fe0_0000_0000_0000) - 1.0)
    };
    // Near 0, x itself is f (no rounding of 1 + x to correct).
    let small = x > -0.292_893_218_813_452_4 && x < 0.414_213_562_373_095_1;
    let (k, f, c) = if small { (0.0, x, 0.0) } else { (k, f, c) };
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let r = z
        * (LP[0] + z * (LP[1] + z * (LP[2] + z * (LP[3] + z * (LP[4] + z * (LP[5] + z * LP[6]))))));
    k * LN2_HI - ((hfsq - (s * (hfsq + r) + (k * LN2_LO + c))) - f)
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
