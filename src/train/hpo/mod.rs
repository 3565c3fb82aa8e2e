//! Hyperparameter search, the pure part: the search space, Optuna-style TPE and random
//! samplers, the median pruner, a resumable study persisted as JSON, and the rolling-window
//! folds a trial is validated on. Nothing here trains a model or talks to MLflow; the caller
//! asks the [`Study`] for parameters, trains, reports per-epoch values to the
//! [`MedianPruner`], and tells the study the outcome.

pub mod error;
pub mod pruner;
pub mod space;
pub mod study;
pub mod tpe;

pub use error::HpoError;
pub use pruner::MedianPruner;
pub use space::{Dist, ParamValue, Params, SearchSpace};
pub use study::{Sampler, Study, Trial, TrialState, study_key};
pub use tpe::{RandomSampler, TpeSampler, sampler_from_config};

use crate::preprocess::split::walk_forward;
use crate::store::SplitRange;

/// `k` walk-forward folds inside `train` for rolling-window validation: `train` is cut into
/// `k + 1` consecutive blocks and fold i validates on block i + 1 after training on everything
/// before it (an anchored, growing window, as [`walk_forward`] cuts it), so every fold
/// validates on time it has not trained on and the folds' validation blocks never overlap.
///
/// Each fold's training part ends `window + lookahead` steps before its validation block: the
/// purge, so that no training window or label look-ahead reaches next to the validation time.
/// Folds whose training part the purge leaves empty are dropped, so the result can hold fewer
/// than `k` folds (none when `train` is too short); the caller decides whether that is enough.
/// Nothing returned lies outside `train`, so the test split is never touched.
pub fn rolling_folds(
    train: SplitRange,
    k: usize,
    window: usize,
    lookahead: usize,
) -> Vec<(SplitRange, SplitRange)> {
    if k == 0 || train.is_empty() {
        return Vec::new();
    }
    let gap = window + lookahead;
    walk_forward(train, k)
        .into_iter()
        .filter_map(|(fit, val)| {
            let fit = SplitRange {
                start: fit.start,
                end: fit.end.saturating_sub(gap).max(fit.start),
            };
            (!fit.is_empty() && !val.is_empty()).then_some((fit, val))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::split::chronological;

    #[test]
    fn folds_stay_in_train_purged_and_disjoint() {
        for steps in [50usize, 200, 1000, 4321] {
            let [train, _, test] = chronological(steps, 0.7, 0.15);
            for k in 1..=6 {
                for (window, lookahead) in [(1, 0), (10, 5), (50, 20), (100, 10)] {
                    let folds = rolling_folds(train, k, window, lookahead);
                    assert!(folds.len() <= k);
                    for (i, (fit, val)) in folds.iter().enumerate() {
                        let ctx = format!("steps {steps} k {k} w {window} h {lookahead} fold {i}");
                        assert!(!fit.is_empty() && !val.is_empty(), "{ctx}");
                        assert!(fit.start >= train.start && val.end <= train.end, "{ctx}");
                        assert!(val.end <= test.start, "{ctx}: touches the test split");
                        assert!(val.start >= fit.end + window + lookahead, "{ctx}: purge");
                        if i > 0 {
                            let prev = folds[i - 1].1;
                            assert!(val.start >= prev.end, "{ctx}: validation overlap");
                            assert!(fit.end > folds[i - 1].0.end, "{ctx}: not moving forward");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn folds_cover_the_tail_of_train() {
        let train = SplitRange {
            start: 100,
            end: 1100,
        };
        let folds = rolling_folds(train, 4, 20, 5);
        assert_eq!(folds.len(), 4);
        assert_eq!(folds[3].1.end, 1100);
        assert_eq!(
            folds[0],
            (
                SplitRange {
                    start: 100,
                    end: 275
                },
                SplitRange {
                    start: 300,
                    end: 500
                }
            )
        );
        // A purge longer than the first block drops that fold only.
        assert_eq!(rolling_folds(train, 4, 200, 10).len(), 3);
        assert!(rolling_folds(SplitRange { start: 0, end: 10 }, 3, 20, 5).is_empty());
        assert!(rolling_folds(train, 0, 1, 1).is_empty());
    }
}
