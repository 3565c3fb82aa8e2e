//! Calibration: reliability bins, expected/maximum calibration error, and temperature
//! scaling fitted on held-out logits.

use serde::{Deserialize, Serialize};

use super::metrics::argmax;

/// One equal-width bin of the reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Lower edge (inclusive).
    pub lower: f64,
    /// Upper edge (exclusive, except the last bin, which includes 1.0).
    pub upper: f64,
    /// Samples whose top-label confidence falls in the bin.
    pub count: u64,
    /// Mean top-label confidence of those samples; 0 for an empty bin.
    pub confidence: f64,
    /// Fraction of those samples predicted correctly; 0 for an empty bin.
    pub accuracy: f64,
}

/// Calibration summary of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error: `sum_b count_b / n * |accuracy_b - confidence_b|`.
    pub ece: f64,
    /// Maximum calibration error: the largest `|accuracy_b - confidence_b|` over non-empty bins
    /// (an empty bin has no gap to speak of and would otherwise always count as 0).
    pub mce: f64,
    /// Every bin, empty ones included, so that plots have a fixed x axis.
    pub bins: Vec<ReliabilityBin>,
}

/// Top-label calibration of row-major `n x k` probabilities against labels: the confidence of
/// a sample is its largest probability, it is correct when the argmax (ties to the lowest
/// class) equals the label, and samples are grouped into `n_bins` equal-width bins over
/// `[0, 1]` (bin `floor(confidence * n_bins)`, with 1.0 in the last bin; confidences outside
/// `[0, 1]` are clamped, a NaN one counts as 0).
///
/// `n_bins == 0` is treated as 1. An empty input gives ECE = MCE = 0 and all bins empty.
/// Panics if `probs.len() != labels.len() * k`.
pub fn calibration(probs: &[f64], labels: &[u32], k: usize, n_bins: usize) -> Calibration {
    assert_eq!(
        probs.len(),
        labels.len() * k,
        "probabilities must be labels.len() x k"
    );
    let n_bins = n_bins.max(1);
    let mut count = vec![0u64; n_bins];
    let mut conf_sum = vec![0.0f64; n_bins];
    let mut correct = vec![0u64; n_bins];
    if k > 0 {
        for (row, &label) in probs.chunks_exact(k).zip(labels) {
            let pred = argmax(row);
            let conf = row[pred as usize];
            // Only an all-NaN row gives a NaN confidence: it lands in the first bin.
            let conf = if conf.is_nan() {
                0.0
            } else {
                conf.clamp(0.0, 1.0)
            };
            let b = ((conf * n_bins as f64) as usize).min(n_bins - 1);
            count[b] += 1;
            conf_sum[b] += conf;
            if pred == label {
                correct[b] += 1;
            }
        }
    }
    let n: u64 = count.iter().sum();
    let mut ece = 0.0;
    let mut mce = 0.0f64;
    let bins = (0..n_bins)
        .map(|b| {
            let (confidence, accuracy) = if count[b] == 0 {
                (0.0, 0.0)
            } else {
                let c = count[b] as f64;
                let mean_conf = conf_sum[b] / c;
                let acc = correct[b] as f64 / c;
                let gap = (acc - mean_conf).abs();
                ece += c / n as f64 * gap;
                mce = mce.max(gap);
                (mean_conf, acc)
            };
            ReliabilityBin {
                lower: b as f64 / n_bins as f64,
                upper: (b + 1) as f64 / n_bins as f64,
                count: count[b],
                confidence,
                accuracy,
            }
        })
        .collect();
    Calibration { ece, mce, bins }
}

/// Row-wise softmax of `logits / temperature` over rows of `k`, numerically stable (the row
/// maximum is subtracted before `exp`, so large logits do not overflow).
///
/// `temperature` must be positive and finite; 1.0 is the plain softmax. Returns an empty
/// vector when `k` is 0. Panics if `logits.len()` is not a multiple of `k`.
pub fn softmax(logits: &[f64], k: usize, temperature: f64) -> Vec<f64> {
    if k == 0 {
        return Vec::new();
    }
    assert!(
        logits.len().is_multiple_of(k),
        "{} logits do not form rows of {k} classes",
        logits.len()
    );
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(k) {
        let max = row
            .iter()
            .map(|&z| z / temperature)
            .fold(f64::NEG_INFINITY, f64::max);
        let start = out.len();
        let mut sum = 0.0;
        for &z in row {
            let e = (z / temperature - max).exp();
            sum += e;
            out.push(e);
        }
        for p in &mut out[start..] {
            *p /= sum;
        }
    }
    out
}

/// Smallest and largest temperatures [`fit_temperature`] considers: beyond them the model is
/// either degenerate (almost one-hot) or almost uniform, and a fit at the edge signals a
/// problem rather than a useful scaling.
pub const TEMPERATURE_RANGE: (f64, f64) = (0.05, 20.0);

/// Mean negative log-likelihood of `softmax(logits / temperature)` at the labels (natural
/// log), computed as log-sum-exp minus the true logit so that no probability underflows.
///
/// 0 for an empty input. Panics if `logits.len() != labels.len() * k` or a label is `>= k`.
pub fn mean_nll(logits: &[f64], labels: &[u32], k: usize, temperature: f64) -> f64 {
    assert_eq!(
        logits.len(),
        labels.len() * k,
        "logits must be labels.len() x k"
    );
    if labels.is_empty() {
        return 0.0;
    }
    let mut total = 0.0;
    for (row, &label) in logits.chunks_exact(k).zip(labels) {
        let max = row
            .iter()
            .map(|&z| z / temperature)
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = max
            + row
                .iter()
                .map(|&z| (z / temperature - max).exp())
                .sum::<f64>()
                .ln();
        total += lse - row[label as usize] / temperature;
    }
    total / labels.len() as f64
}

/// Temperature `T` in [`TEMPERATURE_RANGE`] minimising the mean NLL of
/// `softmax(logits / T)` (temperature scaling, Guo et al. 2017): `T > 1` softens an
/// over-confident model, `T < 1` sharpens an under-confident one; the argmax, and so
/// accuracy, does not change.
///
/// The NLL is convex in `1/T`, hence unimodal in `ln T`, so a golden-section search over
/// `ln T` finds the minimum without derivatives and deterministically (fixed iteration
/// count; the search also compares the interval ends so that a minimum at a bound is
/// returned exactly). Returns 1.0 for an empty input. Panics if
/// `logits.len() != labels.len() * k` or a label is `>= k`.
pub fn fit_temperature(logits: &[f64], labels: &[u32], k: usize) -> f64 {
    assert_eq!(
        logits.len(),
        labels.len() * k,
        "logits must be labels.len() x k"
    );
    if labels.is_empty() || k == 0 {
        return 1.0;
    }
    let f = |u: f64| mean_nll(logits, labels, k, u.exp());
    let (mut a, mut b) = (TEMPERATURE_RANGE.0.ln(), TEMPERATURE_RANGE.1.ln());
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - inv_phi * (b - a);
    let mut d = a + inv_phi * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    // ln(400) * 0.618^60 < 1e-11: far below any meaningful temperature difference.
    for _ in 0..60 {
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - inv_phi * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + inv_phi * (b - a);
            fd = f(d);
        }
    }
    let mut best = if fc <= fd {
        (c.exp(), fc)
    } else {
        (d.exp(), fd)
    };
    for t in [TEMPERATURE_RANGE.0, TEMPERATURE_RANGE.1] {
        let ft = mean_nll(logits, labels, k, t);
        if ft < best.1 {
            best = (t, ft);
        }
    }
    best.0.clamp(TEMPERATURE_RANGE.0, TEMPERATURE_RANGE.1)
}

/// A warning when a fitted `temperature` ended on a bound of [`TEMPERATURE_RANGE`]: the best
/// scaling lies outside the search, so it is a symptom, not a calibration.
pub fn bound_warning(temperature: f64) -> Option<String> {
    let (lo, hi) = TEMPERATURE_RANGE;
    let on = |bound: f64| (temperature - bound).abs() <= bound * 1e-6;
    let what = if on(hi) {
        "the model is far more confident than it is right (its logits may carry no signal)"
    } else if on(lo) {
        "the model is far less confident than it is right"
    } else {
        return None;
    };
    Some(format!(
        "the calibration temperature T = {temperature:.3} ended on the bound of its search \
         ({lo} .. {hi}): {what}; the calibrated probabilities are not to be trusted"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: enough randomness for test data, no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn hand_computed_ece_on_four_samples() {
        // Five bins of width 0.2. Top-label confidences 0.9 (right), 0.9 (wrong) -> bin 4 with
        // conf 0.9, acc 0.5, gap 0.4; 0.7 (right), 0.65 (right) -> bin 3 with conf 0.675,
        // acc 1, gap 0.325. ECE = 0.5 * 0.4 + 0.5 * 0.325 = 0.3625, MCE = 0.4.
        let probs = [0.9, 0.1, 0.1, 0.9, 0.3, 0.7, 0.65, 0.35];
        let labels = [0, 0, 1, 0];
        let c = calibration(&probs, &labels, 2, 5);
        assert!((c.ece - 0.3625).abs() < 1e-12, "{}", c.ece);
        assert!((c.mce - 0.4).abs() < 1e-12);
        assert_eq!(
            c.bins.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![0, 0, 0, 2, 2]
        );
        assert!((c.bins[3].confidence - 0.675).abs() < 1e-12);
        assert_eq!(c.bins[3].accuracy, 1.0);
        assert_eq!(c.bins[4].accuracy, 0.5);
        assert_eq!(c.bins[0].confidence, 0.0);
        assert!((c.bins[3].lower - 0.6).abs() < 1e-12 && (c.bins[3].upper - 0.8).abs() < 1e-12);
        assert_eq!(c.bins[4].upper, 1.0);
    }

    #[test]
    fn confidence_one_is_in_the_last_bin_and_empty_input_is_zero() {
        let c = calibration(&[1.0, 0.0], &[0], 2, 10);
        assert_eq!(c.bins[9].count, 1);
        assert_eq!(c.ece, 0.0);
        let c = calibration(&[], &[], 3, 0);
        assert_eq!(c.bins.len(), 1);
        assert_eq!((c.ece, c.mce), (0.0, 0.0));
    }

    #[test]
    fn softmax_is_stable_and_respects_temperature() {
        let p = softmax(&[1000.0, 1000.0, 0.0, 0.0, 1.0, 2.0], 3, 1.0);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((p[0] - 0.5).abs() < 1e-12 && (p[1] - 0.5).abs() < 1e-12 && p[2] == 0.0);
        let row: f64 = p[3..].iter().sum();
        assert!((row - 1.0).abs() < 1e-12);
        let e = [1f64, 1f64.exp(), 2f64.exp()];
        let s: f64 = e.iter().sum();
        for c in 0..3 {
            assert!((p[3 + c] - e[c] / s).abs() < 1e-12);
        }
        // T = 2 on logits (0, 2) equals T = 1 on (0, 1).
        let a = softmax(&[0.0, 2.0], 2, 2.0);
        let b = softmax(&[0.0, 1.0], 2, 1.0);
        assert!((a[0] - b[0]).abs() < 1e-12);
        assert!(softmax(&[], 0, 1.0).is_empty());
    }

    /// Logits of a calibrated model and labels drawn from its own probabilities.
    fn calibrated_sample(n: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<u32>) {
        let mut rng = XorShift(seed);
        let mut logits = Vec::with_capacity(n * k);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let row: Vec<f64> = (0..k).map(|_| rng.unit() * 3.0 - 1.5).collect();
            let p = softmax(&row, k, 1.0);
            let u = rng.unit();
            let mut acc = 0.0;
            let mut label = k - 1;
            for (c, pc) in p.iter().enumerate() {
                acc += pc;
                if u < acc {
                    label = c;
                    break;
                }
            }
            logits.extend(row);
            labels.push(label as u32);
        }
        (logits, labels)
    }

    #[test]
    fn temperature_scaling_fixes_an_over_confident_model() {
        let (k, n) = (3, 5000);
        let (logits, labels) = calibrated_sample(n, k, 0x9E37_79B9_7F4A_7C15);
        let hot: Vec<f64> = logits.iter().map(|z| z * 5.0).collect();
        let t = fit_temperature(&hot, &labels, k);
        assert!(t > 1.0, "T = {t}");
        // The data are calibrated at T = 5 by construction; the fit recovers it roughly.
        assert!((3.5..7.0).contains(&t), "T = {t}");
        let before = calibration(&softmax(&hot, k, 1.0), &labels, k, 15);
        let after = calibration(&softmax(&hot, k, t), &labels, k, 15);
        assert!(after.ece < before.ece, "{} vs {}", after.ece, before.ece);
        assert!(after.ece < 0.05, "{}", after.ece);
        assert!(mean_nll(&hot, &labels, k, t) < mean_nll(&hot, &labels, k, 1.0));
        // Deterministic.
        assert_eq!(t, fit_temperature(&hot, &labels, k));
    }

    #[test]
    fn temperature_of_a_calibrated_model_is_near_one() {
        let (logits, labels) = calibrated_sample(5000, 4, 12345);
        let t = fit_temperature(&logits, &labels, 4);
        assert!((0.8..1.25).contains(&t), "T = {t}");
    }

    #[test]
    fn temperature_is_bounded_and_one_for_empty_input() {
        assert_eq!(fit_temperature(&[], &[], 3), 1.0);
        // Logits that always point at the right class with a tiny margin want T -> 0.
        let logits = [0.0, 0.01, 0.01, 0.0];
        let t = fit_temperature(&logits, &[1, 0], 2);
        assert_eq!(t, TEMPERATURE_RANGE.0);
        // Logits that always point at the wrong class want T -> infinity.
        let t = fit_temperature(&logits, &[0, 1], 2);
        assert_eq!(t, TEMPERATURE_RANGE.1);
    }

    #[test]
    fn a_temperature_on_a_search_bound_is_warned_about() {
        let (lo, hi) = TEMPERATURE_RANGE;
        assert!(bound_warning(hi).unwrap().contains("T = 20.000"));
        assert!(bound_warning(lo).unwrap().contains("less confident"));
        assert_eq!(bound_warning(1.3), None);
        assert_eq!(bound_warning(hi * 0.999), None);
        // Logits that carry no signal: the fit runs to the upper bound, and is flagged.
        let logits = [2.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0];
        let t = fit_temperature(&logits, &[1, 0, 0, 1], 2);
        assert!(bound_warning(t).is_some(), "T = {t}");
    }

    #[test]
    fn mean_nll_matches_softmax() {
        let logits = [0.5, -1.0, 2.0, 0.0, 0.0, 0.0];
        let labels = [2, 1];
        let p = softmax(&logits, 3, 1.5);
        let expected = -(p[2].ln() + p[4].ln()) / 2.0;
        assert!((mean_nll(&logits, &labels, 3, 1.5) - expected).abs() < 1e-12);
    }
}
