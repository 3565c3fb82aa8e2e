//! Naive baselines a model has to beat: majority class, random draws from the training prior,
//! and persistence (the last observed move repeats).

use crate::model::Rng;
use crate::preprocess::labels::classify;

/// Index of the most frequent training class, the lowest on ties; class 0 when there are no
/// counts at all.
fn majority_class(train_counts: &[u64]) -> u32 {
    let mut best = 0;
    for (c, &count) in train_counts.iter().enumerate() {
        if count > train_counts[best] {
            best = c;
        }
    }
    best as u32
}

/// `n` predictions that are always the most frequent training class (the lowest index on
/// ties; class 0 when `train_counts` is empty).
pub fn majority(train_counts: &[u64], n: usize) -> Vec<u32> {
    vec![majority_class(train_counts); n]
}

/// `n` predictions drawn independently from the training prior `train_counts / sum`, with a
/// generator seeded by `seed` (the same seed gives the same sequence). All-zero counts draw
/// uniformly over the classes, matching [`prior_probs`]; with no classes at all every
/// prediction is 0.
pub fn prior_random(train_counts: &[u64], n: usize, seed: u64) -> Vec<u32> {
    let k = train_counts.len();
    if k == 0 {
        return vec![0; n];
    }
    let total: u64 = train_counts.iter().sum();
    let mut rng = Rng::new(seed, "evaluate.prior_random");
    (0..n)
        .map(|_| {
            if total == 0 {
                return rng.below(k) as u32;
            }
            // Multiply-shift maps 64 random bits to [0, total) with negligible bias.
            let u = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
            let mut acc = 0u64;
            for (c, &count) in train_counts.iter().enumerate() {
                acc += count;
                if u < acc {
                    return c as u32;
                }
            }
            unreachable!("u < total = the last cumulative count")
        })
        .collect()
}

/// The training prior as row-major `n x k` probabilities (the same row for every sample), so
/// that the prior baseline also gets a log loss and calibration. All-zero counts give the
/// uniform distribution; no classes give an empty vector.
pub fn prior_probs(train_counts: &[u64], n: usize) -> Vec<f64> {
    let k = train_counts.len();
    let total: u64 = train_counts.iter().sum();
    let row: Vec<f64> = if total == 0 {
        vec![1.0 / k as f64; k]
    } else {
        train_counts
            .iter()
            .map(|&c| c as f64 / total as f64)
            .collect()
    };
    let mut out = Vec::with_capacity(n * k);
    for _ in 0..n {
        out.extend_from_slice(&row);
    }
    out
}

/// Persistence: each sample is predicted to be in the class of the move observed over the
/// horizon that just ended (`previous_changes`, in the units of `boundaries`), classified
/// exactly as the labels are (`preprocess::labels::classify`: the number of boundaries at or
/// below the value). A NaN previous change (no history yet, or a gap) predicts the class
/// that contains 0.0, i.e. "no move".
pub fn persistence(previous_changes: &[f64], boundaries: &[f64]) -> Vec<u32> {
    previous_changes
        .iter()
        .map(|&v| classify(if v.is_nan() { 0.0 } else { v }, boundaries))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_takes_the_most_frequent_and_the_lowest_on_ties() {
        assert_eq!(majority(&[3, 7, 2], 4), vec![1; 4]);
        assert_eq!(majority(&[5, 1, 5], 2), vec![0, 0]);
        assert_eq!(majority(&[0, 4, 4], 1), vec![1]);
        assert_eq!(majority(&[], 3), vec![0; 3]);
        assert!(majority(&[1, 2], 0).is_empty());
    }

    #[test]
    fn prior_random_is_seeded_and_follows_the_prior() {
        let counts = [1, 0, 3];
        let a = prior_random(&counts, 20_000, 7);
        assert_eq!(a, prior_random(&counts, 20_000, 7));
        assert_ne!(a, prior_random(&counts, 20_000, 8));
        // A class with no training samples is never drawn.
        assert!(!a.contains(&1));
        let share2 = a.iter().filter(|&&c| c == 2).count() as f64 / a.len() as f64;
        assert!((share2 - 0.75).abs() < 0.02, "{share2}");
        // A single class is always drawn.
        assert_eq!(prior_random(&[0, 9], 5, 1), vec![1; 5]);
        // All-zero counts draw uniformly over the classes.
        let u = prior_random(&[0, 0], 1000, 3);
        assert!(u.contains(&0) && u.contains(&1));
        assert_eq!(prior_random(&[], 2, 1), vec![0, 0]);
    }

    #[test]
    fn prior_probs_repeat_the_prior() {
        assert_eq!(prior_probs(&[1, 3], 2), vec![0.25, 0.75, 0.25, 0.75]);
        assert_eq!(prior_probs(&[0, 0], 1), vec![0.5, 0.5]);
        assert!(prior_probs(&[], 3).is_empty());
    }

    #[test]
    fn persistence_on_a_known_sequence() {
        let b = [-1.0, 1.0];
        let prev = [-2.0, -1.0, -0.5, 0.0, 0.99, 1.0, 5.0, f64::NAN];
        assert_eq!(persistence(&prev, &b), vec![0, 1, 1, 1, 1, 2, 2, 1]);
        // NaN maps to the class holding 0.0, wherever that is.
        assert_eq!(persistence(&[f64::NAN], &[0.0, 2.0]), vec![1]);
        assert_eq!(persistence(&[f64::NAN], &[0.5]), vec![0]);
        assert_eq!(persistence(&[3.0], &[]), vec![0]);
    }
}
