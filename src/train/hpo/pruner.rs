//! Optuna's median pruner: stop a trial whose best value so far is worse than the median of
//! the complete trials' values at the same step.

use super::study::{Trial, TrialState};
use crate::config::{Direction, PruningConfig};

/// `MedianPruner(n_startup_trials, n_warmup_steps)` over per-epoch values.
#[derive(Debug, Clone, PartialEq)]
pub struct MedianPruner {
    /// Off: never prunes.
    pub enabled: bool,
    /// Complete trials needed before anything is pruned, so the median means something.
    pub n_startup_trials: usize,
    /// Steps (1-based epochs) of a trial that are never pruned: early epochs are noisy and
    /// a slow starter may still win.
    pub n_warmup_steps: u32,
    /// Whether higher or lower values are better.
    pub direction: Direction,
}

impl MedianPruner {
    /// From `hyperparameter_optimization.pruning` and the study's direction.
    pub fn from_config(cfg: &PruningConfig, direction: Direction) -> Self {
        Self {
            enabled: cfg.enabled,
            n_startup_trials: cfg.n_startup_trials as usize,
            n_warmup_steps: cfg.n_warmup_steps,
            direction,
        }
    }

    /// Whether a running trial with these `(step, value)` reports (the latest last) should
    /// stop, judged against the complete trials in `trials` (others, including the trial
    /// itself if present, are ignored). As in Optuna, a trial whose values are all NaN is
    /// pruned, and a step no complete trial reached prunes nothing.
    pub fn should_prune(&self, intermediate: &[(u32, f64)], trials: &[Trial]) -> bool {
        if !self.enabled {
            return false;
        }
        let complete: Vec<&Trial> = trials
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .collect();
        if complete.len() < self.n_startup_trials {
            return false;
        }
        let Some(&(step, _)) = intermediate.last() else {
            return false;
        };
        if step <= self.n_warmup_steps {
            return false;
        }
        let values = intermediate.iter().map(|(_, v)| *v).filter(|v| !v.is_nan());
        let best = match self.direction {
            Direction::Maximize => values.reduce(f64::max),
            Direction::Minimize => values.reduce(f64::min),
        };
        let Some(best) = best else {
            return true;
        };
        let mut at_step: Vec<f64> = complete
            .iter()
            .filter_map(|t| t.value_at(step))
            .filter(|v| !v.is_nan())
            .collect();
        let Some(median) = median(&mut at_step) else {
            return false;
        };
        match self.direction {
            Direction::Maximize => best < median,
            Direction::Minimize => best > median,
        }
    }
}

/// The median (mean of the two middle values for an even count), as NumPy computes it.
fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len().is_multiple_of(2) {
        0.5 * (xs[m - 1] + xs[m])
    } else {
        xs[m]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::hpo::Params;

    fn trial(number: u32, state: TrialState, curve: &[f64]) -> Trial {
        Trial {
            number,
            params: Params::new(),
            state,
            value: curve.last().copied(),
            intermediate: curve
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u32 + 1, *v))
                .collect(),
            fold_values: Vec::new(),
            run_id: None,
            error: None,
            retry_of: None,
            requeued: false,
        }
    }

    /// Five complete trials with accuracy curves whose medians are 0.5, 0.6, 0.7, 0.8.
    fn history() -> Vec<Trial> {
        let mut h: Vec<Trial> = [0.3, 0.4, 0.5, 0.6, 0.7]
            .iter()
            .enumerate()
            .map(|(i, base)| {
                let c: Vec<f64> = (0..4).map(|s| base + 0.1 * f64::from(s)).collect();
                trial(i as u32, TrialState::Complete, &c)
            })
            .collect();
        // A pruned trial with great values does not count toward the median.
        h.push(trial(5, TrialState::Pruned, &[0.99, 0.99, 0.99]));
        h
    }

    fn pruner() -> MedianPruner {
        MedianPruner::from_config(&PruningConfig::default(), Direction::Maximize)
    }

    #[test]
    fn prunes_the_worse_keeps_the_better() {
        let h = history();
        let p = pruner();
        assert_eq!((p.n_startup_trials, p.n_warmup_steps), (5, 2));
        let bad = [(1, 0.1), (2, 0.15), (3, 0.2)];
        let good = [(1, 0.1), (2, 0.15), (3, 0.75)];
        assert!(p.should_prune(&bad, &h), "0.2 < median 0.7 at step 3");
        assert!(!p.should_prune(&good, &h));
        // Best so far counts, not the latest value.
        assert!(!p.should_prune(&[(1, 0.9), (2, 0.9), (3, 0.1)], &h));
        // All NaN: pruned; a step no complete trial reached: kept.
        assert!(p.should_prune(&[(1, f64::NAN), (2, f64::NAN), (3, f64::NAN)], &h));
        assert!(!p.should_prune(&[(9, 0.0)], &h));
        // Minimising the negated values is the same decision.
        let neg = |c: &[(u32, f64)]| c.iter().map(|(s, v)| (*s, -v)).collect::<Vec<_>>();
        let hn: Vec<Trial> = h
            .iter()
            .map(|t| Trial {
                intermediate: neg(&t.intermediate),
                ..t.clone()
            })
            .collect();
        let pm = MedianPruner {
            direction: Direction::Minimize,
            ..p
        };
        assert!(pm.should_prune(&neg(&bad), &hn));
        assert!(!pm.should_prune(&neg(&good), &hn));
    }

    #[test]
    fn respects_startup_warmup_and_enabled() {
        let h = history();
        let p = pruner();
        // Warm-up: steps 1 and 2 are never pruned, however bad.
        assert!(!p.should_prune(&[(1, 0.0)], &h));
        assert!(!p.should_prune(&[(1, 0.0), (2, 0.0)], &h));
        assert!(p.should_prune(&[(1, 0.0), (2, 0.0), (3, 0.0)], &h));
        // Startup: four complete trials are not enough.
        assert!(!p.should_prune(&[(1, 0.0), (2, 0.0), (3, 0.0)], &h[1..]));
        assert!(!p.should_prune(&[], &h));
        let off = MedianPruner {
            enabled: false,
            ..p
        };
        assert!(!off.should_prune(&[(1, 0.0), (2, 0.0), (3, 0.0)], &h));
    }
}
