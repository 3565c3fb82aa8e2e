//! The training loop: epochs of Adam steps over a [`BatchSource`], validation, callbacks,
//! a progress bar, and a checkpoint after every epoch.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::TrainError;
use super::callbacks::{EarlyStopping, ReduceLrOnPlateau, StopDecision};
use super::checkpoint::{Checkpoint, PartialEpoch, TrainState};
use super::loss::{combine_weights, weighted_cross_entropy};
use super::memory::check_memory_budget;
use super::metrics::{ClassificationMetrics, EpochMetrics};
use super::source::{Batch, BatchSource, Split};
use crate::config::{ModelConfig, TrainingConfig};
use crate::model::artifact::{model_from_bytes, model_to_bytes};
use crate::model::{ModelSpec, Network, Rng, on_host, upload};

/// Everything the loop needs besides the model architecture and the data.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Maximum epochs.
    pub epochs: u32,
    /// Samples per batch.
    pub batch_size: usize,
    /// Initial learning rate.
    pub learning_rate: f64,
    /// Seed of weights init, dropout and shuffling.
    pub seed: u64,
    /// Per-class loss weights (`None` = all 1), e.g. from [`super::balanced_class_weights`].
    pub class_weights: Option<Vec<f32>>,
    /// Early stopping, when enabled.
    pub early_stopping: Option<EarlyStopping>,
    /// Reduce-LR-on-plateau, when enabled.
    pub reduce_lr: Option<ReduceLrOnPlateau>,
    /// `training.memory.max_bytes`.
    pub memory_budget: u64,
    /// Where to write a checkpoint after every epoch.
    pub checkpoint_path: Option<PathBuf>,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
}

impl TrainOptions {
    /// From config; class weights are left to the caller (they need the training counts).
    pub fn from_config(model: &ModelConfig, training: &TrainingConfig) -> Result<Self, TrainError> {
        if training.batch_size == 0 || training.epochs == 0 {
            return Err(TrainError::Option(
                "training.batch_size and training.epochs must be positive".into(),
            ));
        }
        Ok(Self {
            epochs: training.epochs,
            batch_size: training.batch_size as usize,
            learning_rate: model.compilation.learning_rate,
            seed: training.seed,
            class_weights: None,
            early_stopping: EarlyStopping::from_config(&training.callbacks.early_stopping)?,
            reduce_lr: ReduceLrOnPlateau::from_config(&training.callbacks.reduce_lr)?,
            memory_budget: training.memory.max_bytes,
            checkpoint_path: None,
            progress: true,
        })
    }
}

/// Receives per-epoch results (the `train` stage logs them to MLflow).
pub trait TrainObserver {
    /// Called after each epoch, with that epoch's metrics.
    fn on_epoch_end(&mut self, metrics: &EpochMetrics) {
        let _ = metrics;
    }
    /// Called after a checkpoint was written.
    fn on_checkpoint(&mut self, path: &Path, epoch: u32) {
        let _ = (path, epoch);
    }
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// What a finished training hands back.
#[derive(Debug)]
pub struct TrainOutcome {
    /// Final weights (the best epoch's when `restore_best_weights` applied), inference mode.
    pub model: Network,
    /// Metrics of every epoch.
    pub history: Vec<EpochMetrics>,
    /// Epoch (1-based) whose weights `model` holds.
    pub weights_epoch: u32,
    /// Early stopping ended training.
    pub stopped_early: bool,
}

/// What one optimisation step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// Weighted mean loss of the batch.
    pub loss: f32,
    /// Sum of the combined sample weights (to average losses over batches).
    pub weight_sum: f32,
    /// Predicted class per sample (before the update).
    pub predicted: Vec<u32>,
}

/// One step's results still on the device.
struct DeviceStep {
    /// Index of its batch in the epoch (named by a non-finite loss).
    batch: usize,
    /// The weighted mean loss, one element.
    loss: Tensor<1>,
    /// Predicted class per sample.
    predicted: Tensor<1, Int>,
    weight_sum: f32,
}

/// Steps whose results are read back together: one transfer for all their losses and one for
/// all their predictions.
#[derive(Default)]
struct PendingSteps {
    steps: Vec<DeviceStep>,
}

impl PendingSteps {
    fn push(&mut self, step: DeviceStep) {
        self.steps.push(step);
    }

    fn len(&self) -> usize {
        self.steps.len()
    }

    fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Read every pending step of `epoch` back (and forget them); a non-finite loss is an
    /// error naming its epoch and batch.
    fn read(&mut self, epoch: u32) -> Result<Vec<StepResult>, TrainError> {
        let steps = std::mem::take(&mut self.steps);
        let sizes: Vec<usize> = steps.iter().map(|s| s.predicted.dims()[0]).collect();
        let (losses, predicted): (Vec<_>, Vec<_>) = steps
            .iter()
            .map(|s| (s.loss.clone(), s.predicted.clone()))
            .unzip();
        let losses: Vec<f32> = Tensor::cat(losses, 0).into_data().iter::<f32>().collect();
        let predicted: Vec<u32> = Tensor::cat(predicted, 0)
            .into_data()
            .iter::<i64>()
            .map(|c| c as u32)
            .collect();
        if let Some((step, &loss)) = steps.iter().zip(&losses).find(|(_, l)| !l.is_finite()) {
            return Err(TrainError::NonFiniteLoss {
                loss,
                epoch,
                batch: step.batch,
            });
        }
        let mut offset = 0;
        Ok(steps
            .iter()
            .zip(sizes)
            .zip(losses)
            .map(|((step, n), loss)| {
                let result = StepResult {
                    loss,
                    weight_sum: step.weight_sum,
                    predicted: predicted[offset..offset + n].to_vec(),
                };
                offset += n;
                result
            })
            .collect())
    }
}

/// A training run in progress. Create with [`Trainer::new`] or [`Trainer::resume`], then
/// [`Trainer::fit`] (or [`Trainer::run_epoch`] one at a time).
pub struct Trainer {
    spec: ModelSpec,
    opts: TrainOptions,
    device: Device,
    model: Option<Network>,
    optim: ModuleOptimizer,
    state: TrainState,
    best: Option<Network>,
}

/// Adam's moment decay rates (PyTorch's and Keras' defaults).
const ADAM_BETAS: (f32, f32) = (0.9, 0.999);
/// PyTorch's and Keras' epsilon order of magnitude (Burn's default is 1e-5).
const ADAM_EPSILON: f32 = 1e-8;

fn adam() -> ModuleOptimizer {
    AdamConfig::new()
        .with_beta_1(ADAM_BETAS.0)
        .with_beta_2(ADAM_BETAS.1)
        .with_epsilon(ADAM_EPSILON)
        .init()
}

/// The optimizer as flat params (`optimizer.name`, `optimizer.beta1`, ...), with the
/// learning rate a run starts from.
pub fn optimizer_params(learning_rate: f64) -> Vec<(String, String)> {
    [
        ("name", "adam".to_owned()),
        ("learning_rate", learning_rate.to_string()),
        ("beta1", ADAM_BETAS.0.to_string()),
        ("beta2", ADAM_BETAS.1.to_string()),
        ("epsilon", format!("{ADAM_EPSILON:e}")),
        ("amsgrad", "false".to_owned()),
        ("weight_decay", "0".to_owned()),
        ("gradient_clipping", "none".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("optimizer.{k}"), v))
    .collect()
}

impl Trainer {
    /// Fresh run: checks the memory budget, initialises weights from `opts.seed`.
    /// `device` is a plain device from [`super::select_device`]; autodiff is enabled here.
    pub fn new(spec: ModelSpec, opts: TrainOptions, device: Device) -> Result<Self, TrainError> {
        check_memory_budget(&spec, opts.batch_size, opts.memory_budget)?;
        if let Some(cw) = &opts.class_weights
            && cw.len() != spec.num_classes
        {
            return Err(TrainError::Option(format!(
                "{} class weights for {} classes",
                cw.len(),
                spec.num_classes
            )));
        }
        let model = Network::new(
            &spec,
            &mut Rng::new(opts.seed, "init"),
            &device.clone().autodiff(),
        );
        let state = TrainState {
            spec: spec.clone(),
            seed: opts.seed,
            batch_size: opts.batch_size,
            epoch: 0,
            learning_rate: opts.learning_rate,
            rng: Rng::new(opts.seed, "dropout"),
            early_stopping: opts.early_stopping.clone(),
            reduce_lr: opts.reduce_lr.clone(),
            history: Vec::new(),
            stopped: false,
            partial: None,
        };
        Ok(Self {
            spec,
            opts,
            device,
            model: Some(model),
            optim: adam(),
            state,
            best: None,
        })
    }

    /// Continue from the checkpoint at `opts.checkpoint_path`: weights, Adam state, epoch,
    /// learning rate, callback and RNG state all come from it, so the run ends exactly where
    /// an uninterrupted one would have.
    pub fn resume(spec: ModelSpec, opts: TrainOptions, device: Device) -> Result<Self, TrainError> {
        let path = opts
            .checkpoint_path
            .clone()
            .ok_or_else(|| TrainError::Option("resume needs a checkpoint path".into()))?;
        let ck = Checkpoint::load(&path)?;
        let mismatch = |what: &str| TrainError::Checkpoint {
            path: path.clone(),
            reason: format!("written for a different {what}; start a new run instead of --resume"),
        };
        if ck.state.spec != spec {
            return Err(mismatch("model architecture"));
        }
        if ck.state.seed != opts.seed || ck.state.batch_size != opts.batch_size {
            return Err(mismatch("seed or batch size"));
        }
        let mut trainer = Self::new(spec, opts, device)?;
        let ad = trainer.device.clone().autodiff();
        trainer.model = Some(model_from_bytes(&trainer.spec, &ck.model, &ad)?);
        trainer.optim = adam()
            .from_bytes(Bytes::from_bytes_vec(ck.optimizer))
            .map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        trainer.best = match &ck.best_model {
            Some(b) => Some(model_from_bytes(&trainer.spec, b, &ad)?),
            None => None,
        };
        trainer.state = ck.state;
        Ok(trainer)
    }

    /// Starts from `model`'s weights (fine-tuning) instead of the fresh initialisation.
    pub fn with_weights(mut self, model: &Network) -> Result<Self, TrainError> {
        let bytes = model_to_bytes(model)?;
        let ad = self.device.clone().autodiff();
        self.model = Some(model_from_bytes(&self.spec, &bytes, &ad)?);
        Ok(self)
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> u32 {
        self.state.epoch
    }

    /// Metrics of the completed epochs.
    pub fn history(&self) -> &[EpochMetrics] {
        &self.state.history
    }

    /// The current weights (training mode).
    pub fn model(&self) -> &Network {
        self.model.as_ref().expect("model is present between steps")
    }

    /// Whether another epoch should run.
    pub fn finished(&self) -> bool {
        self.state.stopped || self.state.epoch >= self.opts.epochs
    }

    /// Run epochs until `epochs` or early stopping, then apply `restore_best_weights`.
    pub fn fit(
        mut self,
        source: &mut dyn BatchSource,
        observer: &mut dyn TrainObserver,
    ) -> Result<TrainOutcome, TrainError> {
        while !self.finished() {
            self.run_epoch(source, observer)?;
        }
        Ok(self.into_outcome())
    }

    /// The result so far, applying `restore_best_weights`.
    pub fn into_outcome(mut self) -> TrainOutcome {
        let last = self.state.epoch;
        let best_epoch = self
            .state
            .early_stopping
            .as_ref()
            .filter(|es| es.restore_best_weights)
            .and_then(|es| es.best_epoch);
        let (model, weights_epoch) = match (best_epoch, self.best.take()) {
            (Some(e), Some(best)) if e != last => (best, e),
            _ => (self.model.take().expect("model present"), last),
        };
        TrainOutcome {
            model: model.valid(),
            history: self.state.history,
            weights_epoch,
            stopped_early: self.state.stopped,
        }
    }

    fn tensors(
        &self,
        batch: &Batch,
        device: &Device,
    ) -> (Tensor<4>, Tensor<1, Int>, Tensor<1>, f32) {
        let s = self.spec.input;
        let n = batch.len();
        let x = upload::floats(
            TensorData::new(batch.x.clone(), [n, s.assets, s.time_steps, s.features]),
            device,
        );
        let y = upload::ints(
            TensorData::new(batch.y.iter().map(|&c| i64::from(c)).collect(), [n]),
            device,
        );
        let w = combine_weights(&batch.y, &batch.weights, self.opts.class_weights.as_deref());
        let sum: f32 = w.iter().sum();
        (x, y, upload::floats(TensorData::new(w, [n]), device), sum)
    }

    fn check_labels(&self, batch: &Batch) -> Result<(), TrainError> {
        batch.validate(self.spec.input)?;
        if let Some(bad) = batch
            .y
            .iter()
            .find(|&&c| c as usize >= self.spec.num_classes)
        {
            return Err(TrainError::Batch(format!(
                "label {bad} but the model has {} classes",
                self.spec.num_classes
            )));
        }
        Ok(())
    }

    /// One optimisation step (forward with dropout, weighted loss, backward, Adam at `lr`) on
    /// one batch, its loss and predictions read back at once. Used by the speed benchmark;
    /// [`Trainer::run_epoch`] reads several steps back together (see `PendingSteps`).
    pub fn train_step(&mut self, batch: &Batch, lr: f64) -> Result<StepResult, TrainError> {
        let mut pending = PendingSteps::default();
        pending.push(self.step_on_device(batch, 0, lr)?);
        let mut steps = pending.read(self.state.epoch + 1)?;
        Ok(steps.pop().expect("one step pushed"))
    }

    /// One optimisation step (batch `index` of the epoch) whose loss and predictions stay on
    /// the device. On the CPU a non-finite loss is caught before the update, which then does
    /// not happen (the weights stay finite); on a GPU it is caught when the step is read.
    fn step_on_device(
        &mut self,
        batch: &Batch,
        index: usize,
        lr: f64,
    ) -> Result<DeviceStep, TrainError> {
        self.check_labels(batch)?;
        let ad = self.device.clone().autodiff();
        let (x, y, w, wsum) = self.tensors(batch, &ad);
        let model = self.model.take().expect("model present");
        let logits = model.forward(x, Some(&mut self.state.rng));
        let loss = weighted_cross_entropy(logits.clone(), y, w, wsum);
        if self.read_every() == 1 {
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                self.model = Some(model);
                return Err(TrainError::NonFiniteLoss {
                    loss: value,
                    epoch: self.state.epoch + 1,
                    batch: index,
                });
            }
        }
        let detached = (
            loss.clone().inner(),
            logits.inner().argmax(1).reshape([batch.len()]),
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(lr, model, grads));
        Ok(DeviceStep {
            batch: index,
            loss: detached.0,
            predicted: detached.1,
            weight_sum: wsum,
        })
    }

    /// Steps run between two reads of their losses and predictions: every step on the CPU
    /// (reading is free there), 32 on a GPU, where each read is a device synchronisation.
    fn read_every(&self) -> usize {
        if on_host(&self.device) { 1 } else { 32 }
    }

    /// One epoch: training pass, validation pass, callbacks, checkpoint.
    pub fn run_epoch(
        &mut self,
        source: &mut dyn BatchSource,
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochMetrics, TrainError> {
        let epoch = self.state.epoch + 1;
        let lr = self.state.learning_rate;
        let total = source.len(Split::Train);
        let bar = self.progress_bar(epoch, total);
        let started = Instant::now();
        // An epoch a signal cut short continues after its last batch, with its tallies.
        let resumed = self.state.partial.take();
        let skip = resumed.as_ref().map_or(0, |p| p.batches);
        let earlier = resumed.as_ref().map_or(0.0, |p| p.seconds);
        let mut tally = resumed.map_or_else(
            || EpochTally::new(self.spec.num_classes),
            EpochTally::from_partial,
        );
        bar.set_position(tally.seen as u64);
        let batches = source.batches(Split::Train, epoch, self.opts.seed, self.opts.batch_size)?;
        let mut pending = PendingSteps::default();
        let mut labels: Vec<u32> = Vec::new();
        let read_every = self.read_every();
        for (i, batch) in batches.enumerate() {
            let batch = batch?;
            if i < skip {
                continue;
            }
            // Polled before each batch: a signal stops the epoch after the batch in flight.
            if let Some(signal) = crate::interrupt::requested() {
                if !pending.is_empty() {
                    tally.take(&mut pending, &mut labels, epoch, &bar)?;
                }
                bar.finish_and_clear();
                let seconds = earlier + started.elapsed().as_secs_f64();
                return Err(self.stop(signal, epoch, tally.into_partial(i, seconds)));
            }
            pending.push(self.step_on_device(&batch, i, lr)?);
            labels.extend_from_slice(&batch.y);
            tally.seen += batch.len();
            if pending.len() >= read_every {
                tally.take(&mut pending, &mut labels, epoch, &bar)?;
            }
        }
        if !pending.is_empty() {
            tally.take(&mut pending, &mut labels, epoch, &bar)?;
        }
        bar.finish_and_clear();
        let EpochTally {
            metrics,
            loss_sum,
            weight_sum,
            seen,
        } = tally;
        if seen == 0 {
            return Err(TrainError::Batch(
                "the training split yielded no batches".into(),
            ));
        }
        let elapsed = earlier + started.elapsed().as_secs_f64();
        let (p, r, f1) = metrics.macro_prf();
        let mut m = EpochMetrics {
            epoch,
            learning_rate: lr,
            loss: loss_sum / weight_sum.max(f64::MIN_POSITIVE),
            accuracy: metrics.accuracy(),
            precision: p,
            recall: r,
            f1,
            val_loss: None,
            val_accuracy: None,
            val_precision: None,
            val_recall: None,
            val_f1: None,
            samples_per_second: seen as f64 / elapsed.max(1e-9),
        };
        self.validate(source, epoch, &mut m)?;
        self.end_of_epoch(&m)?;
        observer.on_epoch_end(&m);
        if let Some(path) = self.opts.checkpoint_path.clone() {
            self.checkpoint().save(&path)?;
            observer.on_checkpoint(&path, epoch);
        }
        Ok(m)
    }

    /// Saves the state after a signal (weights, Adam, RNG, the epoch so far) and names it in
    /// the error the stage ends with.
    fn stop(
        &mut self,
        signal: crate::interrupt::Signal,
        epoch: u32,
        partial: PartialEpoch,
    ) -> TrainError {
        let batch = partial.batches;
        self.state.partial = Some(partial);
        let checkpoint = match self.opts.checkpoint_path.clone() {
            Some(path) => match self.checkpoint().save(&path) {
                Ok(()) => Some(path),
                Err(e) => return e,
            },
            None => None,
        };
        tracing::warn!(
            signal = signal.name(),
            epoch,
            batch,
            "training stopped by a signal"
        );
        TrainError::Interrupted {
            signal,
            epoch,
            batch,
            checkpoint,
        }
    }

    fn validate(
        &self,
        source: &mut dyn BatchSource,
        epoch: u32,
        m: &mut EpochMetrics,
    ) -> Result<(), TrainError> {
        if source.len(Split::Validation) == 0 {
            return Ok(());
        }
        let model = self.model().valid();
        let mut metrics = ClassificationMetrics::new(self.spec.num_classes);
        let (mut loss_sum, mut weight_sum) = (0.0f64, 0.0f64);
        for batch in source.batches(
            Split::Validation,
            epoch,
            self.opts.seed,
            self.opts.batch_size,
        )? {
            let batch = batch?;
            self.check_labels(&batch)?;
            let (x, y, w, wsum) = self.tensors(&batch, &self.device);
            let logits = model.forward(x, None);
            let loss = weighted_cross_entropy(logits.clone(), y, w, wsum).into_scalar::<f32>();
            metrics.update(&batch.y, &argmax(logits));
            loss_sum += f64::from(loss) * f64::from(wsum);
            weight_sum += f64::from(wsum);
        }
        let (p, r, f1) = metrics.macro_prf();
        m.val_loss = Some(loss_sum / weight_sum.max(f64::MIN_POSITIVE));
        m.val_accuracy = Some(metrics.accuracy());
        m.val_precision = Some(p);
        m.val_recall = Some(r);
        m.val_f1 = Some(f1);
        Ok(())
    }

    fn end_of_epoch(&mut self, m: &EpochMetrics) -> Result<(), TrainError> {
        self.state.epoch = m.epoch;
        self.state.history.push(m.clone());
        if let Some(r) = self.state.reduce_lr.as_mut() {
            self.state.learning_rate = r.on_epoch_end(m, self.state.learning_rate)?;
        }
        if let Some(es) = self.state.early_stopping.as_mut() {
            match es.on_epoch_end(m)? {
                StopDecision::Continue { improved: true } if es.restore_best_weights => {
                    self.best = Some(self.model().clone());
                }
                StopDecision::Continue { .. } => {}
                StopDecision::Stop => self.state.stopped = true,
            }
        }
        Ok(())
    }

    fn checkpoint(&self) -> Checkpoint {
        let enc = |m: &Network| model_to_bytes(m).expect("in-memory weights serialise");
        Checkpoint {
            state: self.state.clone(),
            model: enc(self.model()),
            optimizer: self
                .optim
                .into_bytes()
                .expect("in-memory optimizer state serialises")
                .to_vec(),
            best_model: self.best.as_ref().map(enc),
        }
    }

    fn progress_bar(&self, epoch: u32, total: usize) -> ProgressBar {
        if !self.opts.progress || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} samples {per_sec} ETA {eta} {msg}",
            )
            .expect("static template parses")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{}", self.opts.epochs));
        bar
    }
}

/// The training pass's running totals: predictions, weighted loss, samples.
struct EpochTally {
    metrics: ClassificationMetrics,
    loss_sum: f64,
    weight_sum: f64,
    seen: usize,
}

impl EpochTally {
    fn new(classes: usize) -> Self {
        EpochTally {
            metrics: ClassificationMetrics::new(classes),
            loss_sum: 0.0,
            weight_sum: 0.0,
            seen: 0,
        }
    }

    fn from_partial(p: PartialEpoch) -> Self {
        EpochTally {
            metrics: p.metrics,
            loss_sum: p.loss_sum,
            weight_sum: p.weight_sum,
            seen: p.seen,
        }
    }

    fn into_partial(self, batches: usize, seconds: f64) -> PartialEpoch {
        PartialEpoch {
            batches,
            seen: self.seen,
            loss_sum: self.loss_sum,
            weight_sum: self.weight_sum,
            metrics: self.metrics,
            seconds,
        }
    }

    /// Reads the pending steps back and adds them (`labels`: their batches' labels).
    fn take(
        &mut self,
        pending: &mut PendingSteps,
        labels: &mut Vec<u32>,
        epoch: u32,
        bar: &ProgressBar,
    ) -> Result<(), TrainError> {
        let mut offset = 0;
        for step in pending.read(epoch)? {
            let n = step.predicted.len();
            self.metrics
                .update(&labels[offset..offset + n], &step.predicted);
            offset += n;
            self.loss_sum += f64::from(step.loss) * f64::from(step.weight_sum);
            self.weight_sum += f64::from(step.weight_sum);
            bar.inc(n as u64);
        }
        labels.clear();
        bar.set_message(format!(
            "loss {:.4}",
            self.loss_sum / self.weight_sum.max(f64::MIN_POSITIVE)
        ));
        Ok(())
    }
}

/// Predicted class per row of `[batch, classes]` logits.
fn argmax(logits: Tensor<2>) -> Vec<u32> {
    let [b, _] = logits.dims();
    logits
        .argmax(1)
        .reshape([b])
        .into_data()
        .iter::<i64>()
        .map(|c| c as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(batch: usize, loss: f32, predicted: &[i64], device: &Device) -> DeviceStep {
        DeviceStep {
            batch,
            loss: Tensor::from_data(TensorData::new(vec![loss], [1]), device),
            predicted: Tensor::from_data(
                TensorData::new(predicted.to_vec(), [predicted.len()]),
                device,
            ),
            weight_sum: predicted.len() as f32,
        }
    }

    #[test]
    fn pending_steps_read_back_in_order_and_name_a_non_finite_step() {
        let device = Device::flex();
        let mut pending = PendingSteps::default();
        pending.push(step(0, 0.5, &[1, 2, 0], &device));
        pending.push(step(1, 0.25, &[3], &device));
        pending.push(step(2, 1.5, &[2, 2], &device));
        let read = pending.read(1).unwrap();
        assert!(pending.is_empty());
        let got: Vec<(f32, Vec<u32>, f32)> = read
            .into_iter()
            .map(|s| (s.loss, s.predicted, s.weight_sum))
            .collect();
        assert_eq!(
            got,
            vec![
                (0.5, vec![1, 2, 0], 3.0),
                (0.25, vec![3], 1.0),
                (1.5, vec![2, 2], 2.0)
            ]
        );

        pending.push(step(32, 0.5, &[1], &device));
        pending.push(step(33, 0.5, &[1], &device));
        pending.push(step(34, f32::NAN, &[1], &device));
        match pending.read(4) {
            Err(TrainError::NonFiniteLoss { epoch, batch, .. }) => {
                assert_eq!((epoch, batch), (4, 34))
            }
            other => panic!(
                "expected a non-finite loss, got {:?}",
                other.map(|v| v.len())
            ),
        }
    }

    #[test]
    fn on_the_cpu_a_non_finite_loss_stops_before_the_update() {
        let mut model = ModelConfig::default();
        model.cnn.filters = vec![2, 2];
        model.lstm.units = 4;
        let shape = crate::store::SampleShape {
            assets: 1,
            time_steps: 8,
            features: 4,
        };
        let spec = ModelSpec::from_config(&model, shape).unwrap();
        let mut opts = TrainOptions::from_config(&model, &TrainingConfig::default()).unwrap();
        opts.progress = false;
        let mut trainer = Trainer::new(spec, opts, Device::flex()).unwrap();
        let mut x = vec![0.5f32; 2 * 8 * 4];
        x[3] = f32::NAN;
        let batch = Batch {
            x,
            y: vec![0, 1],
            weights: vec![1.0; 2],
        };
        let before = model_to_bytes(trainer.model()).unwrap();
        match trainer.train_step(&batch, 1e-3) {
            Err(TrainError::NonFiniteLoss { epoch, batch, .. }) => {
                assert_eq!((epoch, batch), (1, 0))
            }
            other => panic!(
                "expected a non-finite loss, got {:?}",
                other.map(|s| s.loss)
            ),
        }
        assert_eq!(model_to_bytes(trainer.model()).unwrap(), before);
    }
}
