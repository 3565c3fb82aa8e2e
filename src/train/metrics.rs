//! Per-epoch classification metrics from a confusion matrix.

use serde::{Deserialize, Serialize};

/// Accumulates a confusion matrix (rows = true class, columns = predicted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    classes: usize,
    confusion: Vec<u64>,
}

impl ClassificationMetrics {
    /// Empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            confusion: vec![0; classes * classes],
        }
    }

    /// Count predictions against labels.
    pub fn update(&mut self, truth: &[u32], predicted: &[u32]) {
        for (&t, &p) in truth.iter().zip(predicted) {
            self.confusion[t as usize * self.classes + p as usize] += 1;
        }
    }

    /// The matrix, row-major `[true][predicted]`.
    pub fn confusion(&self) -> &[u64] {
        &self.confusion
    }

    /// Fraction of correct predictions (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let total: u64 = self.confusion.iter().sum();
        let correct: u64 = (0..self.classes)
            .map(|c| self.confusion[c * self.classes + c])
            .sum();
        if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        }
    }

    /// Macro-averaged (precision, recall, F1) over classes present in the labels or the
    /// predictions; a class never predicted has precision 0 (as scikit-learn's
    /// `zero_division=0`).
    pub fn macro_prf(&self) -> (f64, f64, f64) {
        let k = self.classes;
        let (mut p_sum, mut r_sum, mut f_sum, mut n) = (0.0, 0.0, 0.0, 0usize);
        for c in 0..k {
            let tp = self.confusion[c * k + c] as f64;
            let actual: u64 = (0..k).map(|p| self.confusion[c * k + p]).sum();
            let predicted: u64 = (0..k).map(|t| self.confusion[t * k + c]).sum();
            if actual == 0 && predicted == 0 {
                continue;
            }
            let p = if predicted == 0 {
                0.0
            } else {
                tp / predicted as f64
            };
            let r = if actual == 0 { 0.0 } else { tp / actual as f64 };
            let f = if p + r == 0.0 {
                0.0
            } else {
                2.0 * p * r / (p + r)
            };
            (p_sum, r_sum, f_sum, n) = (p_sum + p, r_sum + r, f_sum + f, n + 1);
        }
        if n == 0 {
            return (0.0, 0.0, 0.0);
        }
        let n = n as f64;
        (p_sum / n, r_sum / n, f_sum / n)
    }
}

/// Everything reported at the end of an epoch (logged as MLflow step metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: u32,
    /// Learning rate used during the epoch.
    pub learning_rate: f64,
    /// Weighted mean training loss.
    pub loss: f64,
    /// Training accuracy.
    pub accuracy: f64,
    /// Training macro precision.
    pub precision: f64,
    /// Training macro recall.
    pub recall: f64,
    /// Training macro F1.
    pub f1: f64,
    /// Weighted mean validation loss (`None` without validation data).
    pub val_loss: Option<f64>,
    /// Validation accuracy.
    pub val_accuracy: Option<f64>,
    /// Validation macro precision.
    pub val_precision: Option<f64>,
    /// Validation macro recall.
    pub val_recall: Option<f64>,
    /// Validation macro F1.
    pub val_f1: Option<f64>,
    /// Training samples per second over the epoch.
    pub samples_per_second: f64,
}

impl EpochMetrics {
    /// The value of a metric by its config name (`loss`, `val_loss`, `accuracy`,
    /// `val_accuracy`, `precision`, `recall`, `f1` and their `val_` forms).
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "loss" => Some(self.loss),
            "accuracy" => Some(self.accuracy),
            "precision" => Some(self.precision),
            "recall" => Some(self.recall),
            "f1" => Some(self.f1),
            "val_loss" => self.val_loss,
            "val_accuracy" => self.val_accuracy,
            "val_precision" => self.val_precision,
            "val_recall" => self.val_recall,
            "val_f1" => self.val_f1,
            _ => None,
        }
    }

    /// `(name, value)` pairs of every metric present, for logging.
    pub fn pairs(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            ("learning_rate", self.learning_rate),
            ("loss", self.loss),
            ("accuracy", self.accuracy),
            ("precision", self.precision),
            ("recall", self.recall),
            ("f1", self.f1),
            ("samples_per_second", self.samples_per_second),
        ];
        for (k, val) in [
            ("val_loss", self.val_loss),
            ("val_accuracy", self.val_accuracy),
            ("val_precision", self.val_precision),
            ("val_recall", self.val_recall),
            ("val_f1", self.val_f1),
        ] {
            if let Some(x) = val {
                v.push((k, x));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_metrics_match_a_hand_count() {
        let mut m = ClassificationMetrics::new(3);
        // truth:     0 0 0 1 1 2
        // predicted: 0 0 1 1 2 2
        m.update(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2]);
        assert!((m.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        let (p, r, f) = m.macro_prf();
        // class 0: p 2/2 r 2/3; class 1: p 1/2 r 1/2; class 2: p 1/2 r 1/1
        let ps = [1.0, 0.5, 0.5];
        let rs = [2.0 / 3.0, 0.5, 1.0];
        let fs: Vec<f64> = ps
            .iter()
            .zip(&rs)
            .map(|(p, r)| 2.0 * p * r / (p + r))
            .collect();
        assert!((p - ps.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        assert!((r - rs.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        assert!((f - fs.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    }
}
