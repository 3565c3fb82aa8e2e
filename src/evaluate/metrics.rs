//! Test-set classification metrics from probabilities or hard predictions.
//!
//! Every function here is total on well-formed input and never returns NaN: a ratio whose
//! denominator is zero (a class that never occurs and is never predicted, an empty test set,
//! a constant prediction) is reported as 0, so that the values can be logged to MLflow and
//! compared across runs without special cases.

use serde::{Deserialize, Serialize};

/// Probabilities below this are clipped before the logarithm of the log loss, so that one
/// confidently wrong sample costs at most `-ln(1e-15) ≈ 34.5` instead of infinity (the value
/// scikit-learn uses).
pub const LOG_LOSS_EPS: f64 = 1e-15;

/// Precision, recall and F1 of one class (one-vs-rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// True positives / predicted positives; 0 when the class is never predicted.
    pub precision: f64,
    /// True positives / actual positives; 0 when the class never occurs.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Number of samples whose true class is this one.
    pub support: u64,
}

/// Every test-set metric of one model (or baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Number of samples scored.
    pub samples: u64,
    /// Fraction of correct predictions (0 when empty).
    pub accuracy: f64,
    /// One entry per class `0..k`.
    pub per_class: Vec<ClassScore>,
    /// Mean F1 over the classes that occur in the labels or the predictions (a class absent
    /// from both is left out, as in `train::metrics::ClassificationMetrics::macro_prf`).
    pub macro_f1: f64,
    /// F1 averaged with the supports as weights (classes that never occur weigh 0).
    pub weighted_f1: f64,
    /// Multi-class Matthews correlation (Gorodkin's R_k, as scikit-learn); 0 when undefined.
    pub mcc: f64,
    /// Cohen's kappa (unweighted); 0 when undefined (chance agreement of 1).
    pub kappa: f64,
    /// Mean negative log-likelihood of the true class, probabilities clipped to
    /// `[LOG_LOSS_EPS, 1]`; `None` when scored from hard predictions only (a baseline without
    /// probabilities), 0 for an empty set.
    pub log_loss: Option<f64>,
    /// Fraction of samples whose true class is among the two most probable ones; `None` when
    /// scored from hard predictions only.
    pub top2_accuracy: Option<f64>,
    /// `k x k` counts, row-major `[true][predicted]`.
    pub confusion: Vec<u64>,
}

/// The most probable class of one row; ties go to the lowest class so that results do not
/// depend on floating-point noise in the order of equal values. NaN entries never win (an
/// all-NaN row gives class 0).
pub fn argmax(row: &[f64]) -> u32 {
    let mut best: Option<(usize, f64)> = None;
    for (c, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((c, v)),
        }
    }
    best.map_or(0, |(c, _)| c as u32)
}

/// Argmax of every row of a row-major `n x k` matrix (see [`argmax`] for ties).
///
/// Panics if `k` is 0 while `probs` is not empty or `probs.len()` is not a multiple of `k`.
pub fn predictions(probs: &[f64], k: usize) -> Vec<u32> {
    if probs.is_empty() {
        return Vec::new();
    }
    assert!(
        k > 0 && probs.len().is_multiple_of(k),
        "{} probabilities do not form rows of {k} classes",
        probs.len()
    );
    probs.chunks_exact(k).map(argmax).collect()
}

/// All metrics of row-major `n x k` probabilities against labels in `0..k`.
///
/// Probabilities are used as given (rows are not renormalised); the predicted class is the
/// argmax with ties to the lowest class. A NaN probability counts as `LOG_LOSS_EPS` in the log
/// loss and never wins the argmax. Panics if `probs.len() != labels.len() * k` or a label is
/// `>= k` (a caller bug, not a data condition).
pub fn score(probs: &[f64], labels: &[u32], k: usize) -> Scores {
    assert_eq!(
        probs.len(),
        labels.len() * k,
        "probabilities must be labels.len() x k"
    );
    let predicted = predictions(probs, k);
    let mut scores = score_predictions(&predicted, labels, k);
    if labels.is_empty() {
        scores.log_loss = Some(0.0);
        scores.top2_accuracy = Some(0.0);
        return scores;
    }
    let mut nll = 0.0;
    let mut top2 = 0u64;
    for (row, &label) in probs.chunks_exact(k).zip(labels) {
        let l = label as usize;
        // NaN goes to the floor instead of propagating into the mean.
        let p = if row[l].is_nan() {
            LOG_LOSS_EPS
        } else {
            row[l].clamp(LOG_LOSS_EPS, 1.0)
        };
        nll -= p.ln();
        if rank(row, l) < 2 {
            top2 += 1;
        }
    }
    let n = labels.len() as f64;
    scores.log_loss = Some(nll / n);
    scores.top2_accuracy = Some(top2 as f64 / n);
    scores
}

/// How many classes rank strictly ahead of class `l` in `row` under the argmax order (higher
/// probability first, ties to the lower class), so that top-k agrees with [`argmax`].
fn rank(row: &[f64], l: usize) -> usize {
    let pl = row[l];
    if pl.is_nan() {
        // NaN ranks behind every number and behind lower-indexed NaNs.
        return row
            .iter()
            .enumerate()
            .filter(|&(c, v)| !v.is_nan() || c < l)
            .count();
    }
    row.iter()
        .enumerate()
        .filter(|&(c, &v)| v > pl || (v == pl && c < l))
        .count()
}

/// The metrics that need only hard predictions (for baselines such as majority class or
/// persistence): `log_loss` and `top2_accuracy` are `None`.
///
/// Panics if the slices differ in length or a label or prediction is `>= k`.
pub fn score_predictions(predicted: &[u32], labels: &[u32], k: usize) -> Scores {
    assert_eq!(
        predicted.len(),
        labels.len(),
        "one prediction per label is required"
    );
    let mut confusion = vec![0u64; k * k];
    for (&t, &p) in labels.iter().zip(predicted) {
        assert!(
            (t as usize) < k && (p as usize) < k,
            "class out of range 0..{k}: label {t}, prediction {p}"
        );
        confusion[t as usize * k + p as usize] += 1;
    }
    from_confusion(confusion, k)
}

/// Derives every count-based metric from the confusion matrix.
fn from_confusion(confusion: Vec<u64>, k: usize) -> Scores {
    let actual: Vec<u64> = (0..k)
        .map(|t| confusion[t * k..(t + 1) * k].iter().sum())
        .collect();
    let predicted: Vec<u64> = (0..k)
        .map(|p| (0..k).map(|t| confusion[t * k + p]).sum())
        .collect();
    let correct: u64 = (0..k).map(|c| confusion[c * k + c]).sum();
    let samples: u64 = actual.iter().sum();

    let per_class: Vec<ClassScore> = (0..k)
        .map(|c| {
            let tp = confusion[c * k + c] as f64;
            let precision = ratio(tp, predicted[c] as f64);
            let recall = ratio(tp, actual[c] as f64);
            ClassScore {
                precision,
                recall,
                f1: ratio(2.0 * precision * recall, precision + recall),
                support: actual[c],
            }
        })
        .collect();

    let present: Vec<&ClassScore> = per_class
        .iter()
        .enumerate()
        .filter(|&(c, _)| actual[c] > 0 || predicted[c] > 0)
        .map(|(_, s)| s)
        .collect();
    let macro_f1 = ratio(present.iter().map(|s| s.f1).sum(), present.len() as f64);
    let weighted_f1 = ratio(
        per_class.iter().map(|s| s.f1 * s.support as f64).sum(),
        samples as f64,
    );

    // Gorodkin's R_k in scikit-learn's covariance form; f64 throughout since s^2 overflows
    // u64 only for absurd sizes but the products of sums are large.
    let s = samples as f64;
    let c = correct as f64;
    let t_dot_p: f64 = actual
        .iter()
        .zip(&predicted)
        .map(|(&t, &p)| t as f64 * p as f64)
        .sum();
    let t_sq: f64 = actual.iter().map(|&t| (t as f64).powi(2)).sum();
    let p_sq: f64 = predicted.iter().map(|&p| (p as f64).powi(2)).sum();
    let cov_tp = c * s - t_dot_p;
    let cov_pp = s * s - p_sq;
    let cov_tt = s * s - t_sq;
    let mcc = ratio(cov_tp, (cov_tt * cov_pp).sqrt());

    let (po, pe) = if samples == 0 {
        (0.0, 0.0)
    } else {
        (c / s, t_dot_p / (s * s))
    };
    let kappa = ratio(po - pe, 1.0 - pe);

    Scores {
        samples,
        accuracy: ratio(c, s),
        per_class,
        macro_f1,
        weighted_f1,
        mcc,
        kappa,
        log_loss: None,
        top2_accuracy: None,
        confusion,
    }
}

/// `num / den`, 0 when the denominator is 0 (the "undefined is 0" convention of this module).
fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 { 0.0 } else { num / den }
}

impl Scores {
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.per_class.len()
    }

    /// The confusion matrix with every row divided by its sum (the recall view: row `t` is the
    /// distribution of predictions for true class `t`); a row with no samples is all 0.
    pub fn confusion_normalized(&self) -> Vec<f64> {
        let k = self.classes();
        let mut out = Vec::with_capacity(k * k);
        for row in self.confusion.chunks_exact(k.max(1)) {
            let total: u64 = row.iter().sum();
            out.extend(row.iter().map(|&x| ratio(x as f64, total as f64)));
        }
        out
    }

    /// Flat `(name, value)` pairs for MLflow: `samples`, `accuracy`, `macro_f1`,
    /// `weighted_f1`, `mcc`, `kappa`, `log_loss` and `top2_accuracy` (when present), then
    /// `precision_<i>`, `recall_<i>`, `f1_<i>`, `support_<i>` for every class `i`. The caller
    /// adds a prefix (split, baseline name) if it needs one.
    pub fn pairs(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = vec![
            ("samples".into(), self.samples as f64),
            ("accuracy".into(), self.accuracy),
            ("macro_f1".into(), self.macro_f1),
            ("weighted_f1".into(), self.weighted_f1),
            ("mcc".into(), self.mcc),
            ("kappa".into(), self.kappa),
        ];
        if let Some(x) = self.log_loss {
            v.push(("log_loss".into(), x));
        }
        if let Some(x) = self.top2_accuracy {
            v.push(("top2_accuracy".into(), x));
        }
        for (i, s) in self.per_class.iter().enumerate() {
            v.push((format!("precision_{i}"), s.precision));
            v.push((format!("recall_{i}"), s.recall));
            v.push((format!("f1_{i}"), s.f1));
            v.push((format!("support_{i}"), s.support as f64));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn no_nan(s: &Scores) {
        for (name, v) in s.pairs() {
            assert!(v.is_finite(), "{name} = {v}");
        }
        assert!(s.confusion_normalized().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn hand_computed_three_classes() {
        // truth:     0 0 0 1 1 2
        // predicted: 0 0 1 1 2 2
        let s = score_predictions(&[0, 0, 1, 1, 2, 2], &[0, 0, 0, 1, 1, 2], 3);
        assert_eq!(s.samples, 6);
        assert_eq!(s.confusion, vec![2, 1, 0, 0, 1, 1, 0, 0, 1]);
        assert!(close(s.accuracy, 4.0 / 6.0));
        let ps = [1.0, 0.5, 0.5];
        let rs = [2.0 / 3.0, 0.5, 1.0];
        let fs = [0.8, 0.5, 2.0 / 3.0];
        for c in 0..3 {
            assert!(close(s.per_class[c].precision, ps[c]));
            assert!(close(s.per_class[c].recall, rs[c]));
            assert!(close(s.per_class[c].f1, fs[c]));
        }
        assert_eq!(
            s.per_class.iter().map(|c| c.support).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert!(close(s.macro_f1, (0.8 + 0.5 + 2.0 / 3.0) / 3.0));
        assert!(close(
            s.weighted_f1,
            (3.0 * 0.8 + 2.0 * 0.5 + 2.0 / 3.0) / 6.0
        ));
        // MCC: t = (3,2,1), p = (2,2,2), c = 4, s = 6.
        // cov_tp = 24 - 12 = 12; cov_pp = 36 - 12 = 24; cov_tt = 36 - 14 = 22.
        assert!(close(s.mcc, 12.0 / (22.0f64 * 24.0).sqrt()));
        // kappa: po = 4/6, pe = 12/36.
        assert!(close(s.kappa, (4.0 / 6.0 - 1.0 / 3.0) / (1.0 - 1.0 / 3.0)));
        assert_eq!(s.log_loss, None);
        assert_eq!(s.top2_accuracy, None);
        no_nan(&s);
    }

    #[test]
    fn binary_mcc_matches_the_textbook_formula() {
        // tp 3, fn 1, fp 2, tn 4 with class 1 as positive.
        let labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
        let pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0];
        let s = score_predictions(&pred, &labels, 2);
        let (tp, tn, fp, fn_) = (3.0, 4.0, 2.0, 1.0);
        let mcc = (tp * tn - fp * fn_) / f64::sqrt((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_));
        assert!(close(s.mcc, mcc));
    }

    #[test]
    fn a_class_that_never_occurs_gives_no_nan() {
        // Class 1 of 3 never occurs and is never predicted.
        let s = score_predictions(&[0, 2, 2, 0], &[0, 2, 0, 2], 3);
        assert_eq!(
            s.per_class[1],
            ClassScore {
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
                support: 0
            }
        );
        // Classes 0 and 2 each have p = r = f1 = 0.5; class 1 is left out of the macro mean.
        assert!(close(s.macro_f1, 0.5));
        assert!(close(s.weighted_f1, 0.5));
        assert!(close(s.accuracy, 0.5));
        // Confusion [[1,0,1],[0,0,0],[1,0,1]]: MCC and kappa are exactly 0 (chance level).
        assert!(close(s.mcc, 0.0));
        assert!(close(s.kappa, 0.0));
        let norm = s.confusion_normalized();
        assert_eq!(&norm[3..6], &[0.0, 0.0, 0.0]);
        assert_eq!(&norm[0..3], &[0.5, 0.0, 0.5]);
        no_nan(&s);
    }

    #[test]
    fn a_class_predicted_but_never_true_counts_in_the_macro_mean() {
        // Class 2 is predicted once but never occurs: precision 0, recall 0, in the macro mean.
        let s = score_predictions(&[0, 1, 2], &[0, 1, 1], 3);
        assert_eq!(s.per_class[2].support, 0);
        assert!(close(s.per_class[2].precision, 0.0));
        assert!(close(s.macro_f1, (1.0 + 2.0 / 3.0 + 0.0) / 3.0));
        no_nan(&s);
    }

    #[test]
    fn undefined_mcc_and_kappa_are_zero() {
        // Constant prediction: cov_pp = 0.
        let s = score_predictions(&[1, 1, 1], &[0, 1, 2], 3);
        assert_eq!(s.mcc, 0.0);
        assert!(close(s.kappa, 0.0));
        no_nan(&s);
        // A single class everywhere, predicted perfectly: pe = 1.
        let s = score_predictions(&[0, 0], &[0, 0], 2);
        assert_eq!(s.mcc, 0.0);
        assert_eq!(s.kappa, 0.0);
        assert_eq!(s.accuracy, 1.0);
        no_nan(&s);
        // Empty input.
        let s = score(&[], &[], 3);
        assert_eq!(s.samples, 0);
        assert_eq!(s.log_loss, Some(0.0));
        no_nan(&s);
    }

    #[test]
    fn perfect_predictions_score_one() {
        let s = score_predictions(&[0, 1, 2, 1], &[0, 1, 2, 1], 3);
        assert_eq!(s.accuracy, 1.0);
        assert!(close(s.mcc, 1.0));
        assert!(close(s.kappa, 1.0));
        assert!(close(s.macro_f1, 1.0));
    }

    #[test]
    fn log_loss_top2_and_ties_from_probabilities() {
        let probs = [
            0.7, 0.2, 0.1, // label 0: correct, rank 0
            0.4, 0.4, 0.2, // label 1: tie with 0 -> predicted 0, label ranks 2nd
            0.5, 0.3, 0.2, // label 2: rank 3rd
            0.0, 1.0, 0.0, // label 0: p = 0 clipped to 1e-15; ties class 2, ranks 2nd
        ];
        let labels = [0, 1, 2, 0];
        let s = score(&probs, &labels, 3);
        assert_eq!(predictions(&probs, 3), vec![0, 0, 0, 1]);
        assert!(close(s.accuracy, 0.25));
        let ll = -(0.7f64.ln() + 0.4f64.ln() + 0.2f64.ln() + 1e-15f64.ln()) / 4.0;
        assert!(close(s.log_loss.unwrap(), ll));
        assert!(close(s.top2_accuracy.unwrap(), 0.75));
        no_nan(&s);
    }

    #[test]
    fn ties_break_to_the_lowest_class() {
        assert_eq!(argmax(&[0.25, 0.25, 0.25, 0.25]), 0);
        assert_eq!(argmax(&[0.1, 0.45, 0.45]), 1);
        assert_eq!(argmax(&[f64::NAN, 0.2, 0.8]), 2);
        assert_eq!(argmax(&[f64::NAN, f64::NAN]), 0);
        // Equal top-2 at classes 1 and 2: class 2 is second, class 0 third.
        assert_eq!(rank(&[0.2, 0.4, 0.4], 2), 1);
        assert_eq!(rank(&[0.2, 0.4, 0.4], 0), 2);
    }

    #[test]
    fn pairs_name_every_metric() {
        let s = score(&[0.9, 0.1, 0.3, 0.7], &[0, 1], 2);
        let names: Vec<String> = s.pairs().into_iter().map(|(n, _)| n).collect();
        for n in [
            "samples",
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "mcc",
            "kappa",
            "log_loss",
            "top2_accuracy",
            "precision_0",
            "recall_1",
            "f1_1",
            "support_0",
        ] {
            assert!(names.iter().any(|x| x == n), "missing {n}");
        }
        let hard = score_predictions(&[0, 1], &[0, 1], 2);
        assert!(!hard.pairs().iter().any(|(n, _)| n == "log_loss"));
    }

    #[test]
    #[should_panic(expected = "class out of range")]
    fn out_of_range_labels_panic() {
        score_predictions(&[0], &[3], 3);
    }
}
