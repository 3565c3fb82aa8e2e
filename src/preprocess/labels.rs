//! Labels: the price change over the horizon, and its class. Labels are the only values that
//! read the future, and only up to `lookahead()` steps.

use crate::config::{ClassDefinition, DataConfig, GapHandling};
use crate::data::sources::synthetic::Oracle;

use super::grid::StepState;

/// How labels are computed, in grid steps.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpec {
    /// percentage | absolute | adaptive.
    pub definition: ClassDefinition,
    /// Strictly increasing; class k holds values in `[boundaries[k-1], boundaries[k])`.
    pub boundaries: Vec<f64>,
    /// Horizon in steps.
    pub horizon_steps: usize,
    /// Smoothed labels: the mean of the next k prices instead of the price at the horizon.
    pub smoothing_steps: usize,
    /// Trailing window (steps) of the volatility used by `adaptive`.
    pub volatility_window_steps: usize,
}

impl LabelSpec {
    /// Steps after `t` a label at `t` reads.
    pub fn lookahead(&self) -> usize {
        if self.smoothing_steps > 0 {
            self.smoothing_steps
        } else {
            self.horizon_steps
        }
    }

    /// The Bayes classifier of these labels on the synthetic market `data` describes; `Err`
    /// says why there is none.
    pub fn oracle(&self, data: &DataConfig) -> Result<Oracle, String> {
        Oracle::new(
            data,
            self.definition,
            &self.boundaries,
            self.lookahead(),
            self.smoothing_steps > 0,
        )
    }
}

/// Human-readable class names from the boundaries.
pub fn class_names(boundaries: &[f64]) -> Vec<String> {
    let n = boundaries.len();
    (0..=n)
        .map(|k| match k {
            0 => format!("< {}", boundaries[0]),
            k if k == n => format!(">= {}", boundaries[n - 1]),
            k => format!("[{}, {})", boundaries[k - 1], boundaries[k]),
        })
        .collect()
}

/// Samples per class of `labels`.
pub fn class_counts(n_classes: usize, labels: impl Iterator<Item = u32>) -> Vec<u64> {
    let mut c = vec![0u64; n_classes];
    for l in labels {
        c[l as usize] += 1;
    }
    c
}

/// Prices the labels are computed from: the (causally filled) mid, except that under
/// `interpolate` the filled steps of a short gap are interpolated linearly between the real
/// snapshots around it — allowed here because labels may read the future.
pub fn label_prices(mid: &[f64], state: &[StepState], handling: GapHandling) -> Vec<f64> {
    let mut prices = mid.to_vec();
    if handling != GapHandling::Interpolate {
        return prices;
    }
    let mut k = 0;
    while k < state.len() {
        if state[k] != StepState::Filled {
            k += 1;
            continue;
        }
        let end = (k..state.len())
            .find(|&j| state[j] != StepState::Filled)
            .unwrap_or(state.len());
        // A run of filled steps ends at a real step (short gap) or a missing one (then the
        // forward-filled values stay).
        if k > 0 && end < state.len() && state[end] == StepState::Real {
            let (a, b) = (mid[k - 1], mid[end]);
            let span = (end - (k - 1)) as f64;
            for (j, p) in prices.iter_mut().enumerate().take(end).skip(k) {
                *p = a + (b - a) * (j - (k - 1)) as f64 / span;
            }
        }
        k = end;
    }
    prices
}

/// Standard deviation of one-step log returns over the trailing window ending at each step
/// (past data only); NaN until the window is full or when it contains a missing price.
pub fn trailing_volatility(prices: &[f64], window: usize) -> Vec<f64> {
    let n = prices.len();
    let mut out = vec![f64::NAN; n];
    if window < 2 {
        return out;
    }
    let r: Vec<f64> = (0..n)
        .map(|i| {
            if i == 0 {
                f64::NAN
            } else {
                (prices[i] / prices[i - 1]).ln()
            }
        })
        .collect();
    // bad_before[i] = non-finite returns in r[..i]: a window's check is one subtraction.
    let mut bad_before = vec![0usize; n + 1];
    for (i, x) in r.iter().enumerate() {
        bad_before[i + 1] = bad_before[i] + usize::from(!x.is_finite());
    }
    for (t, o) in out.iter_mut().enumerate().skip(window) {
        if bad_before[t + 1] != bad_before[t + 1 - window] {
            continue;
        }
        let w = &r[t + 1 - window..=t];
        let mean = lane_sum(w, |x| x) / window as f64;
        let var = lane_sum(w, |x| (x - mean) * (x - mean)) / (window - 1) as f64;
        *o = var.sqrt();
    }
    out
}

/// Sum of `f(x)` in eight interleaved partial sums: the loop vectorises (a strict
/// left-to-right sum is latency bound), and the order depends only on the values, so a
/// window's result does not depend on where the series starts.
fn lane_sum(xs: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += f(*x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|x| f(*x)).sum();
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        + tail
}

/// Per step: the relative price change in percent over the horizon (kept for the backtest)
/// and the value classified by the boundaries. NaN where the label is undefined: the
/// look-ahead leaves the data, or touches a missing step (a long gap is never spanned).
pub fn changes(spec: &LabelSpec, prices: &[f64], state: &[StepState]) -> (Vec<f64>, Vec<f64>) {
    let n = prices.len();
    let h = spec.lookahead();
    // missing_before[i] = missing steps in [0, i).
    let mut missing_before = vec![0usize; n + 1];
    for i in 0..n {
        missing_before[i + 1] = missing_before[i] + usize::from(state[i] == StepState::Missing);
    }
    let vol = match spec.definition {
        ClassDefinition::Adaptive => trailing_volatility(prices, spec.volatility_window_steps),
        _ => Vec::new(),
    };
    let mut pct = vec![f64::NAN; n];
    let mut value = vec![f64::NAN; n];
    for t in 0..n.saturating_sub(h) {
        if missing_before[t + h + 1] - missing_before[t] > 0 {
            continue;
        }
        let p0 = prices[t];
        let future = if spec.smoothing_steps > 0 {
            prices[t + 1..=t + h].iter().sum::<f64>() / h as f64
        } else {
            prices[t + h]
        };
        pct[t] = (future - p0) / p0 * 100.0;
        value[t] = match spec.definition {
            ClassDefinition::Percentage => pct[t],
            ClassDefinition::Absolute => future - p0,
            ClassDefinition::Adaptive => {
                (future / p0).ln() / (vol[t] * (spec.horizon_steps as f64).sqrt())
            }
        };
    }
    (pct, value)
}

/// The class of `value`: the number of boundaries at or below it.
pub fn classify(value: f64, boundaries: &[f64]) -> u32 {
    boundaries.partition_point(|b| *b <= value) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepState::*;

    fn spec(definition: ClassDefinition, h: usize) -> LabelSpec {
        LabelSpec {
            definition,
            boundaries: vec![-1.0, 1.0],
            horizon_steps: h,
            smoothing_steps: 0,
            volatility_window_steps: 3,
        }
    }

    #[test]
    fn classes_follow_the_boundaries() {
        let b = [-10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0];
        assert_eq!(classify(-11.0, &b), 0);
        assert_eq!(classify(-10.0, &b), 1);
        assert_eq!(classify(-0.1, &b), 3);
        assert_eq!(classify(0.0, &b), 4);
        assert_eq!(classify(12.0, &b), 7);
    }

    #[test]
    fn interpolation_only_inside_short_gaps() {
        let mid = [10.0, 10.0, 10.0, 16.0, 16.0, f64::NAN, 20.0];
        let state = [Real, Filled, Filled, Real, Filled, Missing, Real];
        let p = label_prices(&mid, &state, GapHandling::Interpolate);
        assert_eq!(&p[..4], &[10.0, 12.0, 14.0, 16.0]);
        assert_eq!(
            p[4], 16.0,
            "a run ending in a missing step keeps the filled value"
        );
        assert_eq!(
            label_prices(&mid, &state, GapHandling::ForwardFill)[1],
            10.0
        );
    }

    #[test]
    fn changes_never_span_missing_steps() {
        let prices = [100.0, 101.0, 102.0, f64::NAN, 104.0, 105.0];
        let state = [Real, Real, Real, Missing, Real, Real];
        let (pct, value) = changes(&spec(ClassDefinition::Percentage, 1), &prices, &state);
        assert!((pct[0] - 1.0).abs() < 1e-12);
        assert!(pct[2].is_nan() && pct[3].is_nan());
        assert!((pct[4] - (105.0 / 104.0 - 1.0) * 100.0).abs() < 1e-12);
        assert!(pct[5].is_nan(), "no future for the last step");
        assert_eq!(pct[0], value[0]);
        let (_, abs) = changes(&spec(ClassDefinition::Absolute, 2), &prices, &state);
        assert_eq!(abs[0], 2.0);
        assert!(abs[1].is_nan() && abs[2].is_nan());
    }

    #[test]
    fn smoothed_and_adaptive_labels() {
        let prices = [100.0, 102.0, 104.0, 100.0, 101.0, 99.0, 100.0];
        let state = [Real; 7];
        let mut s = spec(ClassDefinition::Percentage, 2);
        s.smoothing_steps = 2;
        let (pct, _) = changes(&s, &prices, &state);
        assert!((pct[0] - 3.0).abs() < 1e-12, "mean(102, 104) vs 100");
        let s = spec(ClassDefinition::Adaptive, 1);
        let (_, z) = changes(&s, &prices, &state);
        assert!(z[2].is_nan(), "volatility window not full yet");
        let vol = trailing_volatility(&prices, 3)[3];
        assert!((z[3] - (101f64 / 100.0).ln() / vol).abs() < 1e-12);
    }
}
