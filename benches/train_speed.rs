//! Training and inference speed of the reference workload (../shared/bench/README.md) through
//! binance-ml's own model and training step, on the flex backend.
//!
//! usage: cargo bench --bench train_speed -- [train_steps] [infer_steps] [warmup] [--profile]
//! Prints one `RESULT backend=burn-flex train_sps=... infer_sps=...` line like the Python
//! scripts; `--profile` also times the conv block and the LSTM alone, forward + backward.

use std::time::Instant;

use binance_ml::config::{ModelConfig, TrainingConfig};
use binance_ml::model::lstm::Lstm;
use binance_ml::model::{CnnLstm, ModelSpec, Rng, SampleShape, predict_proba};
use binance_ml::train::{Batch, TrainOptions, Trainer};
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

const B: usize = 32;
const T: usize = 100;
const F: usize = 40;
const C: u32 = 8;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    // Roughly standard normal (sum of uniforms), like torch.randn's scale.
    (0..n)
        .map(|_| (0..4).map(|_| rng.uniform(1.0)).sum::<f32>() * 0.866)
        .collect()
}

/// The reference network: the spec's CNN+LSTM without LSTM dropout (the PyTorch and Keras
/// scripts have none there).
fn reference_spec() -> ModelSpec {
    let mut cfg = ModelConfig::default();
    cfg.lstm.dropout = 0.0;
    cfg.lstm.recurrent_dropout = 0.0;
    let shape = SampleShape {
        assets: 1,
        time_steps: T,
        features: F,
    };
    ModelSpec::from_config(&cfg, shape).expect("reference config is valid")
}

fn time_it(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    for _ in 0..reps {
        f();
    }
    t0.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn profile(rng: &mut Rng) {
    let device = Device::flex().autodiff();
    let spec = reference_spec();
    let model = CnnLstm::new(&spec, rng, &device);
    let x = Tensor::<4>::from_data(
        TensorData::new(random(B * T * F, rng), [B, 1, T, F]),
        &device,
    );
    let conv = &model.branches[0].layers;
    let conv_opts = || ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let conv_block = |x: Tensor<4>| {
        let h = conv2d(
            x,
            conv[0].weight.val(),
            Some(conv[0].bias.val()),
            conv_opts(),
        );
        let h = max_pool2d(relu(h), MaxPoolOptions::new([2, 2]));
        let h = conv2d(
            h,
            conv[1].weight.val(),
            Some(conv[1].bias.val()),
            conv_opts(),
        );
        max_pool2d(relu(h), MaxPoolOptions::new([2, 2]))
    };
    let conv_fwd = time_it(5, || {
        let _ = conv_block(x.clone()).sum().into_scalar::<f32>();
    });
    let conv_fb = time_it(5, || {
        let _ = conv_block(x.clone()).sum().backward();
    });
    let conv2_only = time_it(5, || {
        let h = Tensor::<4>::from_data(
            TensorData::new(
                random(B * 64 * 50 * 20, &mut Rng::new(1, "p")),
                [B, 64, 50, 20],
            ),
            &device,
        )
        .require_grad();
        let _ = conv2d(
            h,
            conv[1].weight.val(),
            Some(conv[1].bias.val()),
            conv_opts(),
        )
        .sum()
        .backward();
    });
    let lstm: &Lstm = &model.lstm;
    let seq = Tensor::<3>::from_data(
        TensorData::new(random(B * 25 * 1280, rng), [B, 25, 1280]),
        &device,
    )
    .require_grad();
    let lstm_fwd = time_it(5, || {
        let _ = lstm.forward(seq.clone(), None).sum().into_scalar::<f32>();
    });
    let lstm_fb = time_it(5, || {
        let _ = lstm.forward(seq.clone(), None).sum().backward();
    });
    let valid = model.valid();
    let xv = Tensor::<4>::from_data(
        TensorData::new(random(B * T * F, rng), [B, 1, T, F]),
        &Device::flex(),
    );
    let full_fwd = time_it(5, || {
        let _ = valid.forward(xv.clone(), None).sum().into_scalar::<f32>();
    });
    println!(
        "PROFILE ms/batch32: conv_block fwd={conv_fwd:.1} fwd+bwd={conv_fb:.1} (conv2 alone fwd+bwd={conv2_only:.1}); \
         lstm fwd={lstm_fwd:.1} fwd+bwd={lstm_fb:.1}; whole model inference fwd={full_fwd:.1}"
    );
}

fn main() {
    // `cargo test --all-targets` runs bench targets too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("train_speed: a benchmark; run it with `cargo bench --bench train_speed`");
        return;
    }
    // As the binary does: large tensors stay in the heap.
    binance_ml::allocator::tune();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let want_profile = args.iter().any(|a| a == "--profile");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let steps = nums.first().copied().unwrap_or(20);
    let isteps = nums.get(1).copied().unwrap_or(20);
    let warm = nums.get(2).copied().unwrap_or(3);

    let mut rng = Rng::new(0, "bench");
    let batches: Vec<Batch> = (0..4)
        .map(|_| Batch {
            x: random(B * T * F, &mut rng),
            y: (0..B).map(|_| rng.below(C as usize) as u32).collect(),
            weights: vec![1.0; B],
        })
        .collect();
    let mut training = TrainingConfig {
        batch_size: B as u32,
        ..TrainingConfig::default()
    };
    training.callbacks.early_stopping.enabled = false;
    training.callbacks.reduce_lr.enabled = false;
    let mut opts = TrainOptions::from_config(&ModelConfig::default(), &training).expect("valid");
    opts.progress = false;
    let mut trainer = Trainer::new(reference_spec(), opts, Device::flex()).expect("fits budget");

    let mut times = Vec::new();
    let mut t_all = Instant::now();
    let mut last = 0.0;
    for i in 0..warm + steps {
        if i == warm {
            t_all = Instant::now();
        }
        let t0 = Instant::now();
        last = trainer
            .train_step(&batches[i % 4], 1e-3)
            .expect("step")
            .loss;
        if i >= warm {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let train_sps = (steps * B) as f64 / t_all.elapsed().as_secs_f64();

    let model = trainer.model().valid();
    let mut itimes = Vec::new();
    for i in 0..warm + isteps {
        let t0 = Instant::now();
        let p = predict_proba(&model, &batches[i % 4].x, 1.0).expect("inference");
        std::hint::black_box(p);
        if i >= warm {
            itimes.push(t0.elapsed().as_secs_f64());
        }
    }
    let infer_sps = (isteps * B) as f64 / itimes.iter().sum::<f64>();
    // `predict` latency: one window, the model already loaded.
    let one = &batches[0].x[..T * F];
    let single: Vec<f64> = (0..warm + isteps)
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(predict_proba(&model, one, 1.0).expect("inference"));
            t0.elapsed().as_secs_f64()
        })
        .skip(warm)
        .collect();
    println!(
        "RESULT backend=burn-flex train_sps={train_sps:.1} train_step_med_ms={:.1} infer_sps={infer_sps:.1} \
         infer_step_med_ms={:.2} infer_one_window_med_ms={:.2} loss_last={last:.4} steps={steps} threads={}",
        median(times) * 1e3,
        median(itimes) * 1e3,
        median(single) * 1e3,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    if want_profile {
        profile(&mut rng);
    }
}
