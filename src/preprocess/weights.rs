//! Sample weights: class weights from training counts, exponential time decay, and a
//! past-only volatility-regime tag.

/// Inverse-frequency weights `total / (classes_present * count)`, mean 1 over the training
/// samples; a class absent from training gets weight 0 (it contributes no loss term).
pub fn class_weights(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    let present = counts.iter().filter(|c| **c > 0).count() as f64;
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                total as f64 / (present * c as f64)
            }
        })
        .collect()
}

/// `0.5^((newest - t) / half_life)` per sample time.
pub fn time_decay(times_ms: &[i64], newest_ms: i64, half_life_days: f64) -> Vec<f64> {
    let half_life_ms = half_life_days * 86_400_000.0;
    times_ms
        .iter()
        .map(|&t| 0.5f64.powf((newest_ms - t) as f64 / half_life_ms))
        .collect()
}

/// Regime thresholds: the `n - 1` inner quantiles of trailing volatility over training samples.
pub fn regime_thresholds(train_vol: &[f64], n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = train_vol
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Vec::new();
    }
    (1..n)
        .map(|i| v[(v.len() * i / n).min(v.len() - 1)])
        .collect()
}

/// The regime (0 = calmest) of a trailing volatility.
pub fn regime(vol: f64, thresholds: &[f64]) -> u8 {
    thresholds.partition_point(|t| *t <= vol) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_weights_balance_the_loss() {
        let w = class_weights(&[10, 30, 0, 60]);
        // total 100, 3 classes present.
        assert!((w[0] - 100.0 / 30.0).abs() < 1e-12);
        assert!((w[1] - 100.0 / 90.0).abs() < 1e-12);
        assert_eq!(w[2], 0.0);
        let weighted: f64 = [10.0, 30.0, 0.0, 60.0]
            .iter()
            .zip(&w)
            .map(|(c, w)| c * w)
            .sum();
        assert!(
            (weighted - 100.0).abs() < 1e-9,
            "mean weight 1 over samples"
        );
    }

    #[test]
    fn decay_halves_per_half_life() {
        let day = 86_400_000;
        let w = time_decay(&[0, 30 * day, 60 * day], 60 * day, 30.0);
        assert_eq!(w, vec![0.25, 0.5, 1.0]);
    }

    #[test]
    fn regimes_from_train_quantiles() {
        let t = regime_thresholds(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, f64::NAN], 3);
        assert_eq!(t, vec![3.0, 5.0]);
        assert_eq!(
            (regime(0.5, &t), regime(3.0, &t), regime(9.0, &t)),
            (0, 1, 2)
        );
    }
}
