//! Epoch-end callbacks: early stopping and reduce-LR-on-plateau (Burn has neither as a
//! plateau-driven callback). Their state is plain data so checkpoints can carry it.

use serde::{Deserialize, Serialize};

use super::TrainError;
use super::metrics::EpochMetrics;
use crate::config::{EarlyStoppingConfig, ReduceLrConfig};

/// A watched metric and whether lower is better (names containing `loss`) or higher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    /// Metric name, e.g. `val_loss`.
    pub name: String,
    /// True when a lower value is an improvement.
    pub minimize: bool,
}

impl Monitor {
    /// Check the name against the metrics the loop reports.
    pub fn new(name: &str) -> Result<Self, TrainError> {
        const KNOWN: &[&str] = crate::config::validate::EPOCH_METRICS;
        if !KNOWN.contains(&name) {
            return Err(TrainError::Option(format!(
                "monitor `{name}` is not a reported metric; use one of {}",
                KNOWN.join(", ")
            )));
        }
        Ok(Self {
            name: name.to_string(),
            minimize: name.ends_with("loss"),
        })
    }

    /// Whether `value` beats `best` (strictly; `None` = nothing seen yet).
    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => value.is_finite(),
            Some(b) if self.minimize => value < b,
            Some(b) => value > b,
        }
    }

    fn read(&self, m: &EpochMetrics) -> Result<f64, TrainError> {
        m.get(&self.name).ok_or_else(|| {
            TrainError::Option(format!(
                "monitor `{}` has no value: the validation split is empty",
                self.name
            ))
        })
    }
}

/// What early stopping decided at an epoch end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopDecision {
    /// Keep training; `improved` = this epoch is the new best.
    Continue {
        /// This epoch is the best so far.
        improved: bool,
    },
    /// Patience exhausted: stop after this epoch.
    Stop,
}

/// Stop when the monitored metric has not improved for `patience` epochs (Keras semantics,
/// `min_delta` 0). The best epoch is tracked so the loop can restore its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    monitor: Monitor,
    patience: u32,
    /// Restore the best weights at the end of training.
    pub restore_best_weights: bool,
    best: Option<f64>,
    /// 1-based epoch of the best value.
    pub best_epoch: Option<u32>,
    wait: u32,
}

impl EarlyStopping {
    /// From `training.callbacks.early_stopping`; `None` when disabled.
    pub fn from_config(cfg: &EarlyStoppingConfig) -> Result<Option<Self>, TrainError> {
        if !cfg.enabled {
            return Ok(None);
        }
        Ok(Some(Self {
            monitor: Monitor::new(&cfg.monitor)?,
            patience: cfg.patience,
            restore_best_weights: cfg.restore_best_weights,
            best: None,
            best_epoch: None,
            wait: 0,
        }))
    }

    /// Feed one epoch's metrics.
    pub fn on_epoch_end(&mut self, m: &EpochMetrics) -> Result<StopDecision, TrainError> {
        let value = self.monitor.read(m)?;
        if self.monitor.improves(value, self.best) {
            self.best = Some(value);
            self.best_epoch = Some(m.epoch);
            self.wait = 0;
            return Ok(StopDecision::Continue { improved: true });
        }
        self.wait += 1;
        if self.wait >= self.patience.max(1) {
            Ok(StopDecision::Stop)
        } else {
            Ok(StopDecision::Continue { improved: false })
        }
    }
}

/// Multiply the learning rate by `factor` when the monitored metric has not improved for
/// `patience` epochs, never below `min_lr` (Keras' `ReduceLROnPlateau`, cooldown 0,
/// `min_delta` 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    monitor: Monitor,
    factor: f64,
    patience: u32,
    min_lr: f64,
    best: Option<f64>,
    wait: u32,
}

impl ReduceLrOnPlateau {
    /// From `training.callbacks.reduce_lr`; `None` when disabled.
    pub fn from_config(cfg: &ReduceLrConfig) -> Result<Option<Self>, TrainError> {
        if !cfg.enabled {
            return Ok(None);
        }
        if !(cfg.factor > 0.0 && cfg.factor < 1.0) {
            return Err(TrainError::Option(format!(
                "reduce_lr.factor = {} must be in (0, 1)",
                cfg.factor
            )));
        }
        Ok(Some(Self {
            monitor: Monitor::new(&cfg.monitor)?,
            factor: cfg.factor,
            patience: cfg.patience,
            min_lr: cfg.min_lr,
            best: None,
            wait: 0,
        }))
    }

    /// Feed one epoch's metrics and the current LR; returns the LR for the next epoch.
    pub fn on_epoch_end(&mut self, m: &EpochMetrics, lr: f64) -> Result<f64, TrainError> {
        let value = self.monitor.read(m)?;
        if self.monitor.improves(value, self.best) {
            self.best = Some(value);
            self.wait = 0;
            return Ok(lr);
        }
        self.wait += 1;
        if self.wait >= self.patience.max(1) && lr > self.min_lr {
            self.wait = 0;
            return Ok((lr * self.factor).max(self.min_lr));
        }
        Ok(lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: u32, val_loss: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            learning_rate: 0.0,
            loss: val_loss,
            accuracy: 0.0,
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
            val_loss: Some(val_loss),
            val_accuracy: Some(1.0 - val_loss),
            val_precision: None,
            val_recall: None,
            val_f1: None,
            samples_per_second: 0.0,
        }
    }

    #[test]
    fn early_stopping_triggers_after_patience_on_a_scripted_curve() {
        let mut es = EarlyStopping::from_config(&EarlyStoppingConfig {
            enabled: true,
            monitor: "val_loss".into(),
            patience: 2,
            restore_best_weights: true,
        })
        .unwrap()
        .unwrap();
        let curve = [1.0, 0.8, 0.6, 0.65, 0.61, 0.7];
        let decisions: Vec<StopDecision> = curve
            .iter()
            .enumerate()
            .map(|(i, v)| es.on_epoch_end(&epoch(i as u32 + 1, *v)).unwrap())
            .take_while(|d| *d != StopDecision::Stop)
            .collect();
        // Best at epoch 3 (0.6); epochs 4 and 5 do not improve -> stop at epoch 5.
        assert_eq!(decisions.len(), 4);
        assert_eq!(es.best_epoch, Some(3));
        assert!(matches!(
            decisions[2],
            StopDecision::Continue { improved: true }
        ));
    }

    #[test]
    fn early_stopping_on_a_maximised_metric() {
        let mut es = EarlyStopping::from_config(&EarlyStoppingConfig {
            enabled: true,
            monitor: "val_accuracy".into(),
            patience: 1,
            restore_best_weights: false,
        })
        .unwrap()
        .unwrap();
        // val_accuracy = 1 - val_loss: 0.5, 0.7, 0.6 -> stop at epoch 3, best epoch 2.
        assert!(matches!(
            es.on_epoch_end(&epoch(1, 0.5)).unwrap(),
            StopDecision::Continue { improved: true }
        ));
        es.on_epoch_end(&epoch(2, 0.3)).unwrap();
        assert_eq!(es.on_epoch_end(&epoch(3, 0.4)).unwrap(), StopDecision::Stop);
        assert_eq!(es.best_epoch, Some(2));
    }

    #[test]
    fn reduce_lr_steps_down_on_plateaus_and_respects_the_floor() {
        let mut r = ReduceLrOnPlateau::from_config(&ReduceLrConfig {
            enabled: true,
            monitor: "val_loss".into(),
            factor: 0.5,
            patience: 2,
            min_lr: 0.0003,
        })
        .unwrap()
        .unwrap();
        let curve = [
            1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.8, 0.85, 0.86, 0.87, 0.88,
        ];
        let mut lr = 0.001;
        let mut lrs = Vec::new();
        for (i, v) in curve.iter().enumerate() {
            lr = r.on_epoch_end(&epoch(i as u32 + 1, *v), lr).unwrap();
            lrs.push(lr);
        }
        // Plateau after 0.9 (epochs 3, 4) -> 0.0005 at epoch 4; epochs 5, 6 still not below
        // 0.9 -> 0.00025 clamped to 0.0003; 0.8 improves; then two bad epochs at the floor
        // change nothing.
        let want = [
            0.001, 0.001, 0.001, 0.0005, 0.0005, 0.0003, 0.0003, 0.0003, 0.0003, 0.0003, 0.0003,
        ];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    fn unknown_monitor_and_bad_factor_are_refused() {
        let bad = ReduceLrOnPlateau::from_config(&ReduceLrConfig {
            monitor: "val_auc".into(),
            ..ReduceLrConfig::default()
        });
        assert!(bad.unwrap_err().to_string().contains("val_auc"));
        let bad = ReduceLrOnPlateau::from_config(&ReduceLrConfig {
            factor: 1.5,
            ..ReduceLrConfig::default()
        });
        assert!(bad.unwrap_err().to_string().contains("(0, 1)"));
    }
}
