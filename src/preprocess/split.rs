//! Chronological splits and walk-forward folds over grid steps, purged by construction: a
//! sample belongs to a split only when its whole window AND its label's look-ahead lie inside
//! that split, so no training window or label ever touches validation or test time.

use crate::store::SplitRange;

/// Train / validation / test ranges cut by ratio (test takes the remainder).
pub fn chronological(steps: usize, train_ratio: f64, validation_ratio: f64) -> [SplitRange; 3] {
    let train_end = (steps as f64 * train_ratio).round() as usize;
    let val_end = ((steps as f64 * (train_ratio + validation_ratio)).round() as usize).min(steps);
    [
        SplitRange {
            start: 0,
            end: train_end,
        },
        SplitRange {
            start: train_end,
            end: val_end,
        },
        SplitRange {
            start: val_end,
            end: steps,
        },
    ]
}

/// Walk-forward folds over `span`: cut into `k + 1` blocks; fold i trains on blocks 0..=i and
/// validates on block i + 1. Each fold's validation block lies after its training part.
pub fn walk_forward(span: SplitRange, k: usize) -> Vec<(SplitRange, SplitRange)> {
    let blocks = span.slices(k + 1);
    (0..k)
        .map(|i| {
            (
                SplitRange {
                    start: span.start,
                    end: blocks[i].end,
                },
                blocks[i + 1],
            )
        })
        .collect()
}

/// Which steps can be part of a sample: `row_ok[t]` (every feature of step t finite) and
/// `label_ok[t]` (the label at t is defined).
#[derive(Debug, Clone)]
pub struct Usable {
    bad_rows_before: Vec<usize>,
    label_ok: Vec<bool>,
}

impl Usable {
    /// From per-step flags (same length).
    pub fn new(row_ok: &[bool], label_ok: Vec<bool>) -> Self {
        let mut bad_rows_before = vec![0; row_ok.len() + 1];
        for (i, ok) in row_ok.iter().enumerate() {
            bad_rows_before[i + 1] = bad_rows_before[i] + usize::from(!ok);
        }
        Self {
            bad_rows_before,
            label_ok,
        }
    }

    /// Window ends `e` in `range` whose window `[e - window + 1, e]` has only usable rows,
    /// whose label is defined, and whose window and look-ahead `[e, e + lookahead]` both lie
    /// inside `range` (the purge).
    pub fn sample_ends(&self, range: SplitRange, window: usize, lookahead: usize) -> Vec<usize> {
        let first = range.start + window.saturating_sub(1);
        let Some(last) = range.end.checked_sub(lookahead + 1) else {
            return Vec::new();
        };
        (first..=last)
            .filter(|&e| {
                self.label_ok[e]
                    && self.bad_rows_before[e + 1] == self.bad_rows_before[e + 1 - window]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_cut_the_steps() {
        let [tr, va, te] = chronological(100, 0.7, 0.15);
        assert_eq!((tr.start, tr.end, va.end, te.end), (0, 70, 85, 100));
        let s = SplitRange { start: 10, end: 20 }.slices(3);
        assert_eq!(
            s.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
            [(10, 13), (13, 16), (16, 20)]
        );
    }

    #[test]
    fn folds_move_forward() {
        let folds = walk_forward(SplitRange { start: 0, end: 100 }, 3);
        assert_eq!(folds.len(), 3);
        for (i, (train, val)) in folds.iter().enumerate() {
            assert_eq!(train.start, 0);
            assert_eq!(train.end, val.start, "fold {i}");
            if i > 0 {
                assert!(
                    val.start >= folds[i - 1].1.end,
                    "validation blocks do not overlap"
                );
            }
        }
        assert_eq!(folds[2].1.end, 100);
    }

    #[test]
    fn samples_stay_inside_their_range() {
        let row_ok = vec![true; 30];
        let mut label_ok = vec![true; 30];
        label_ok[12] = false;
        let mut rows = row_ok.clone();
        rows[5] = false;
        let u = Usable::new(&rows, label_ok);
        let ends = u.sample_ends(SplitRange { start: 0, end: 20 }, 4, 3);
        // windows of 4 need e >= 3; row 5 is bad -> e in 5..=8 excluded; label 12 undefined;
        // look-ahead of 3 inside [0, 20) -> e <= 16.
        assert_eq!(ends, vec![3, 4, 9, 10, 11, 13, 14, 15, 16]);
        assert!(
            u.sample_ends(SplitRange { start: 0, end: 3 }, 4, 3)
                .is_empty()
        );
    }
}
