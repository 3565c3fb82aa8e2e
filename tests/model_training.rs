//! Model and training-loop behaviour on the default (flex) backend: shapes, gradients,
//! learning, reproducibility, resume equivalence, memory budget, inference.

use binance_ml::config::{Activation, InputStrategy, ModelConfig, Pooling, TrainingConfig};
use binance_ml::model::{ModelSpec, ModelSummary, Network, Rng, predict_proba};
use binance_ml::store::SampleShape;
use binance_ml::train::{
    EarlyStopping, InMemorySource, TrainError, TrainOptions, Trainer, weighted_cross_entropy,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};

fn small_config(strategy: InputStrategy) -> ModelConfig {
    let mut c = ModelConfig::default();
    c.input_representation.strategy = strategy;
    c.cnn.filters = vec![4, 6];
    c.lstm.units = 8;
    c.dense.layers = vec![8];
    c.output.num_classes = 3;
    c
}

fn shape(assets: usize, t: usize, f: usize) -> SampleShape {
    SampleShape {
        assets,
        time_steps: t,
        features: f,
    }
}

fn random_x(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed, "data");
    (0..n).map(|_| r.uniform(1.0)).collect()
}

fn logits_dims(cfg: &ModelConfig, s: SampleShape, batch: usize) -> [usize; 2] {
    let spec = ModelSpec::from_config(cfg, s).unwrap();
    let device = Device::flex();
    let model = Network::new(&spec, &mut Rng::new(1, "init"), &device);
    let x = Tensor::from_data(
        TensorData::new(
            random_x(batch * s.len(), 2),
            [batch, s.assets, s.time_steps, s.features],
        ),
        &device,
    );
    let mut rng = Rng::new(3, "dropout");
    let train_mode = model.forward(x.clone(), Some(&mut rng)).dims();
    let eval_mode = model.forward(x, None).dims();
    assert_eq!(train_mode, eval_mode);
    eval_mode
}

#[test]
fn output_shapes_for_both_representations_and_several_configs() {
    let stacked = small_config(InputStrategy::StackedChannels);
    assert_eq!(logits_dims(&stacked, shape(3, 20, 12), 5), [5, 3]);
    let separate = small_config(InputStrategy::SeparateBranches);
    assert_eq!(logits_dims(&separate, shape(3, 20, 12), 4), [4, 3]);

    // One conv layer, average pooling, uneven pools and kernels, no dense layers, tanh.
    let mut odd = small_config(InputStrategy::StackedChannels);
    odd.cnn.num_layers = 1;
    odd.cnn.filters = vec![5];
    odd.cnn.kernel_sizes = vec![[4, 2]];
    odd.cnn.pool_sizes = vec![[3, 1]];
    odd.cnn.dropout_rates = vec![0.1];
    odd.cnn.pooling = Pooling::Avg;
    odd.cnn.activation = Activation::Tanh;
    odd.dense.layers = vec![];
    odd.dense.dropout_rates = vec![];
    odd.output.num_classes = 5;
    assert_eq!(logits_dims(&odd, shape(1, 11, 7), 2), [2, 5]);

    // Three layers, separate branches, two dense layers.
    let mut deep = small_config(InputStrategy::SeparateBranches);
    deep.cnn.num_layers = 3;
    deep.cnn.filters = vec![2, 3, 4];
    deep.cnn.kernel_sizes = vec![[3, 3], [5, 1], [1, 3]];
    deep.cnn.pool_sizes = vec![[2, 1], [1, 2], [2, 2]];
    deep.cnn.dropout_rates = vec![0.0, 0.2, 0.2];
    deep.cnn.activation = Activation::Gelu;
    deep.dense.layers = vec![6, 4];
    deep.dense.dropout_rates = vec![0.1, 0.0];
    assert_eq!(logits_dims(&deep, shape(2, 16, 8), 3), [3, 3]);

    let spec = ModelSpec::from_config(&deep, shape(2, 16, 8)).unwrap();
    // T: 16 -> 8 -> 8 -> 4; F: 8 -> 8 -> 4 -> 2; 4 filters x 2 features x 2 branches.
    assert_eq!(spec.sequence(), (4, 16));
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let mut c = small_config(InputStrategy::StackedChannels);
    c.cnn.filters = vec![4];
    let e = ModelSpec::from_config(&c, shape(1, 20, 12)).unwrap_err();
    assert!(e.to_string().contains("cnn.filters has 1 entries"), "{e}");
    let c = small_config(InputStrategy::StackedChannels);
    let e = ModelSpec::from_config(&c, shape(1, 3, 12)).unwrap_err();
    assert!(e.to_string().contains("conv block 2"), "{e}");
    let mut c = small_config(InputStrategy::StackedChannels);
    c.lstm.dropout = 1.0;
    let e = ModelSpec::from_config(&c, shape(1, 20, 12)).unwrap_err();
    assert!(e.to_string().contains("lstm.dropout"), "{e}");
}

#[test]
fn summary_of_the_reference_model_counts_params_and_flops() {
    let spec = ModelSpec::from_config(&ModelConfig::default(), shape(1, 100, 40)).unwrap();
    let s = ModelSummary::of(&spec);
    let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv1", "pool1", "conv2", "pool2", "lstm", "dense1", "logits"
        ]
    );
    // conv1 640, conv2 73,856, LSTM 4*96*(1280+96+1) = 528,768, dense 6,208, logits 520.
    assert_eq!(s.total_params(), 640 + 73_856 + 528_768 + 6_208 + 520);
    // The benchmark README's "about 178 MFLOP per sample forward".
    let mflops = s.total_flops() as f64 / 1e6;
    assert!((175.0..182.0).contains(&mflops), "{mflops}");
    assert_eq!(s.layers[3].output_shape, vec![128, 25, 10]);
    let text = s.to_string();
    assert!(
        text.contains("(None, 128, 25, 10)") && text.contains("Total params: 609992"),
        "{text}"
    );
    // The built model has exactly the counted parameters.
    let model = Network::new(&spec, &mut Rng::new(0, "init"), &Device::flex());
    assert_eq!(model.num_params() as u64, s.total_params());
}

/// Collects every float parameter's gradient magnitude.
struct GradCheck<'a> {
    grads: &'a GradientsParams,
    seen: usize,
    missing: Vec<String>,
}

impl ModuleVisitor for GradCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.seen += 1;
        let ok = self
            .grads
            .get::<D>(param.id)
            .map(|g| g.abs().sum().into_scalar::<f32>() > 0.0)
            .unwrap_or(false);
        if !ok {
            self.missing
                .push(format!("{:?} dims {:?}", param.id, param.dims()));
        }
    }
}

#[test]
fn gradients_reach_every_parameter() {
    for strategy in [
        InputStrategy::StackedChannels,
        InputStrategy::SeparateBranches,
    ] {
        let cfg = small_config(strategy);
        let s = shape(2, 12, 8);
        let spec = ModelSpec::from_config(&cfg, s).unwrap();
        let device = Device::flex().autodiff();
        let model = Network::new(&spec, &mut Rng::new(5, "init"), &device);
        let b = 6;
        let x = Tensor::from_data(
            TensorData::new(random_x(b * s.len(), 9), [b, 2, 12, 8]),
            &device,
        );
        let y =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 0, 1, 2], [b]), &device);
        let w = Tensor::from_data(TensorData::new(vec![1.0f32; b], [b]), &device);
        let loss = weighted_cross_entropy(
            model.forward(x, Some(&mut Rng::new(1, "d"))),
            y,
            w,
            b as f32,
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut check = GradCheck {
            grads: &grads,
            seen: 0,
            missing: vec![],
        };
        model.visit(&mut check);
        let branches = if strategy == InputStrategy::SeparateBranches {
            2
        } else {
            1
        };
        // Per branch 2 convs x (weight, bias); LSTM 3; dense 2; head 2.
        assert_eq!(check.seen, branches * 4 + 3 + 2 + 2);
        assert!(
            check.missing.is_empty(),
            "{strategy:?}: no gradient for {:?}",
            check.missing
        );
    }
}

/// Tiny fixed dataset: random inputs, random labels (pure memorisation).
fn tiny_data(n: usize, s: SampleShape, classes: u32, seed: u64) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let mut r = Rng::new(seed, "labels");
    let y = (0..n).map(|_| r.below(classes as usize) as u32).collect();
    (random_x(n * s.len(), seed), y, vec![1.0; n])
}

fn no_dropout(mut c: ModelConfig) -> ModelConfig {
    c.cnn.dropout_rates = vec![0.0; c.cnn.filters.len()];
    c.lstm.dropout = 0.0;
    c.lstm.recurrent_dropout = 0.0;
    c.dense.dropout_rates = vec![0.0; c.dense.layers.len()];
    c
}

fn options(model: &ModelConfig, epochs: u32, batch: u32, seed: u64) -> TrainOptions {
    let mut t = TrainingConfig {
        epochs,
        batch_size: batch,
        seed,
        ..TrainingConfig::default()
    };
    t.callbacks.early_stopping.enabled = false;
    t.callbacks.reduce_lr.enabled = false;
    let mut o = TrainOptions::from_config(model, &t).unwrap();
    o.progress = false;
    o
}

#[test]
fn the_model_overfits_a_tiny_fixed_dataset() {
    let s = shape(2, 8, 6);
    let mut cfg = no_dropout(small_config(InputStrategy::StackedChannels));
    cfg.cnn.filters = vec![8, 8];
    cfg.lstm.units = 24;
    cfg.dense.layers = vec![24];
    cfg.compilation.learning_rate = 0.01;
    let train = tiny_data(32, s, 3, 11);
    let (x, y) = (train.0.clone(), train.1.clone());
    let mut source = InMemorySource::new(s, train, (vec![], vec![], vec![])).unwrap();
    let spec = ModelSpec::from_config(&cfg, s).unwrap();
    let trainer = Trainer::new(spec, options(&cfg, 80, 8, 1), Device::flex()).unwrap();
    let out = trainer.fit(&mut source, &mut ()).unwrap();
    let proba = predict_proba(&out.model, &x, 1.0).unwrap();
    let correct = proba
        .chunks(3)
        .zip(&y)
        .filter(|(p, c)| {
            let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            best == **c as usize
        })
        .count();
    let acc = correct as f64 / y.len() as f64;
    assert!(
        acc >= 0.99,
        "train accuracy {acc}, history {:?}",
        out.history.last()
    );
    let first = out.history.first().unwrap().loss;
    let last = out.history.last().unwrap().loss;
    assert!(last < first / 10.0, "loss {first} -> {last}");
}

/// All parameter values in visit order.
struct Values(Vec<Vec<f32>>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(
            param
                .val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap(),
        );
    }
}

fn values(m: &Network) -> Vec<Vec<f32>> {
    let mut v = Values(vec![]);
    m.visit(&mut v);
    v.0
}

fn dropout_setup() -> (ModelConfig, SampleShape, InMemorySource) {
    let s = shape(2, 8, 6);
    let cfg = small_config(InputStrategy::SeparateBranches);
    let source = InMemorySource::new(s, tiny_data(20, s, 3, 4), tiny_data(7, s, 3, 5)).unwrap();
    (cfg, s, source)
}

#[test]
fn same_seed_same_weights_and_different_seed_different_weights() {
    let (cfg, s, mut source) = dropout_setup();
    let spec = ModelSpec::from_config(&cfg, s).unwrap();
    let run = |seed: u64, source: &mut InMemorySource| {
        let t = Trainer::new(spec.clone(), options(&cfg, 2, 6, seed), Device::flex()).unwrap();
        t.fit(source, &mut ()).unwrap()
    };
    let a = run(7, &mut source);
    let b = run(7, &mut source);
    let c = run(8, &mut source);
    assert_eq!(values(&a.model), values(&b.model));
    assert_eq!(a.history[1].val_loss, b.history[1].val_loss);
    assert_ne!(values(&a.model), values(&c.model));
}

#[test]
fn resume_after_a_crash_gives_the_same_result_as_an_uninterrupted_run() {
    let (cfg, s, mut source) = dropout_setup();
    let spec = ModelSpec::from_config(&cfg, s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&cfg, 4, 6, 3);
    // Callbacks with state in play: LR reduction every epoch without improvement, and early
    // stopping tracking the best epoch (patience large enough not to stop).
    let mut t = TrainingConfig::default();
    t.callbacks.reduce_lr.patience = 1;
    t.callbacks.reduce_lr.monitor = "val_accuracy".into();
    t.callbacks.early_stopping.patience = 10;
    let o = TrainOptions::from_config(&cfg, &t).unwrap();
    opts.reduce_lr = o.reduce_lr;
    opts.early_stopping = o.early_stopping;

    let straight_path = dir.path().join("straight/checkpoint.bin");
    let mut straight_opts = opts.clone();
    straight_opts.checkpoint_path = Some(straight_path.clone());
    let straight = Trainer::new(spec.clone(), straight_opts, Device::flex())
        .unwrap()
        .fit(&mut source, &mut ())
        .unwrap();

    let path = dir.path().join("crashed/checkpoint.bin");
    opts.checkpoint_path = Some(path.clone());
    {
        let mut first = Trainer::new(spec.clone(), opts.clone(), Device::flex()).unwrap();
        first.run_epoch(&mut source, &mut ()).unwrap();
        first.run_epoch(&mut source, &mut ()).unwrap();
        // "Crash": everything in memory is dropped here.
    }
    let resumed = Trainer::resume(spec.clone(), opts.clone(), Device::flex()).unwrap();
    assert_eq!(resumed.epochs_done(), 2);
    let resumed = resumed.fit(&mut source, &mut ()).unwrap();

    assert_eq!(values(&straight.model), values(&resumed.model));
    assert_eq!(straight.weights_epoch, resumed.weights_epoch);
    assert_eq!(straight.history.len(), 4);
    for (a, b) in straight.history.iter().zip(&resumed.history) {
        assert_eq!(
            (a.loss, a.val_loss, a.accuracy, a.val_f1, a.learning_rate),
            (b.loss, b.val_loss, b.accuracy, b.val_f1, b.learning_rate),
            "epoch {}",
            a.epoch
        );
    }
    // Both checkpoints end identical in content (weights, LR, callback and RNG state).
    let a = binance_ml::train::checkpoint::Checkpoint::load(&straight_path).unwrap();
    let b = binance_ml::train::checkpoint::Checkpoint::load(&path).unwrap();
    assert_eq!(a.state.rng, b.state.rng);
    assert_eq!(a.state.learning_rate, b.state.learning_rate);
    assert_eq!(a.state.early_stopping, b.state.early_stopping);
    // No temporary file is left behind by the atomic write.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("checkpoint.bin")]);
}

#[test]
fn a_corrupt_or_foreign_checkpoint_is_refused() {
    let (cfg, s, _) = dropout_setup();
    let spec = ModelSpec::from_config(&cfg, s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.bin");
    std::fs::write(&path, b"BMLCKPT1 but then garbage").unwrap();
    let mut opts = options(&cfg, 2, 4, 1);
    opts.checkpoint_path = Some(path.clone());
    let e = Trainer::resume(spec, opts, Device::flex()).err().unwrap();
    assert!(e.to_string().contains("checkpoint"), "{e}");
}

#[test]
fn early_stopping_ends_training_and_restores_the_best_weights() {
    let (cfg, s, mut source) = dropout_setup();
    let spec = ModelSpec::from_config(&cfg, s).unwrap();
    let mut opts = options(&cfg, 30, 5, 2);
    // A learning rate this high makes validation loss worsen quickly on random labels.
    opts.learning_rate = 0.05;
    let mut t = TrainingConfig::default();
    t.callbacks.early_stopping.patience = 2;
    opts.early_stopping = EarlyStopping::from_config(&t.callbacks.early_stopping).unwrap();
    let out = Trainer::new(spec, opts, Device::flex())
        .unwrap()
        .fit(&mut source, &mut ())
        .unwrap();
    assert!(out.stopped_early, "ran {} epochs", out.history.len());
    let best = out
        .history
        .iter()
        .min_by(|a, b| a.val_loss.unwrap().total_cmp(&b.val_loss.unwrap()))
        .unwrap();
    assert_eq!(out.weights_epoch, best.epoch);
    assert_eq!(out.history.len() as u32, best.epoch + 2);
}

#[test]
fn a_budget_that_cannot_hold_one_batch_fails_fast_with_the_needed_size() {
    let spec = ModelSpec::from_config(&ModelConfig::default(), shape(1, 100, 40)).unwrap();
    let mut opts = options(&ModelConfig::default(), 1, 32, 1);
    opts.memory_budget = 10 * 1024 * 1024;
    let e = Trainer::new(spec.clone(), opts.clone(), Device::flex())
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(matches!(e, TrainError::MemoryBudget { .. }));
    assert!(
        msg.contains("max_bytes = 10485760") && msg.contains("batch_size 32"),
        "{msg}"
    );
    let TrainError::MemoryBudget { needed, .. } = e else {
        unreachable!()
    };
    // Weights + gradients + Adam moments alone are 16 bytes per parameter.
    assert!(needed > 609_992 * 16, "{needed}");
    opts.memory_budget = needed;
    assert!(Trainer::new(spec, opts, Device::flex()).is_ok());
}

#[test]
fn probabilities_sum_to_one_and_temperature_flattens_them() {
    let cfg = small_config(InputStrategy::StackedChannels);
    let s = shape(1, 10, 6);
    let spec = ModelSpec::from_config(&cfg, s).unwrap();
    let model = Network::new(&spec, &mut Rng::new(1, "init"), &Device::flex());
    let x = random_x(4 * s.len(), 1);
    let p1 = predict_proba(&model, &x, 1.0).unwrap();
    assert_eq!(p1.len(), 12);
    for row in p1.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let hot = predict_proba(&model, &x, 1000.0).unwrap();
    for row in hot.chunks(3) {
        assert!(row.iter().all(|p| (p - 1.0 / 3.0).abs() < 1e-3), "{row:?}");
    }
    let e = predict_proba(&model, &x[..7], 1.0).unwrap_err();
    assert!(e.to_string().contains("input has 7 values"), "{e}");
}

/// The libtorch backend (feature `tch`) trains the same model through the same loop.
#[cfg(feature = "tch")]
#[test]
fn libtorch_cpu_trains_and_matches_the_input_contract() {
    use binance_ml::config::Backend;
    use binance_ml::train::select_device;
    let (cfg, s, mut source) = dropout_setup();
    let spec = ModelSpec::from_config(&cfg, s).unwrap();
    let device = select_device(Backend::Tch, "cpu").unwrap();
    assert!(device.description.contains("libtorch"));
    let out = Trainer::new(spec, options(&cfg, 2, 6, 1), device.device)
        .unwrap()
        .fit(&mut source, &mut ())
        .unwrap();
    assert_eq!(out.history.len(), 2);
    assert!(out.history.iter().all(|m| m.loss.is_finite()));
    let x = random_x(3 * s.len(), 1);
    assert_eq!(predict_proba(&out.model, &x, 1.0).unwrap().len(), 9);
}
