//! Training and inference speed of the reference workload (../shared/bench/README.md) through
//! binance-ml's own model and training step.
//!
//! usage: cargo bench --bench train_speed -- [train_steps] [infer_steps] [warmup]
//!            [--batch N] [--backend flex|tch] [--device cpu|cuda:N]
//!            [--profile | --check | --conv-sweep]
//! Prints one `RESULT backend=... train_sps=... infer_sps=...` line like the Python scripts;
//! `--profile` also times the parts of a step (conv blocks, LSTM, whole step) forward and
//! forward + backward; `--check` trains the same weights on flex and on the chosen device and
//! compares (one `CHECK` line, exit 1 when they differ); `--conv-sweep` times the conv block's
//! im2col and Winograd CPU kernels over input channel counts (`SWEEP` lines). `--backend tch`
//! needs a build with `--features tch` (benches/gpu.sh).

use std::time::Instant;

use binance_ml::config::{Backend, ModelConfig, TrainingConfig};
use binance_ml::model::conv::{conv_pool_relu, cpu, winograd};
use binance_ml::model::lstm::Lstm;
use binance_ml::model::{CnnLstm, ModelSpec, Rng, predict_proba};
use binance_ml::store::SampleShape;
use binance_ml::train::{Batch, TrainOptions, Trainer, select_device};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

const T: usize = 100;
const F: usize = 40;
const C: u32 = 8;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
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
    spec_with(ModelConfig::default())
}

/// The reference network without any dropout: a device draws its own masks, so only this
/// trains to the same weights on two devices.
fn deterministic_spec() -> ModelSpec {
    let mut cfg = ModelConfig::default();
    cfg.cnn.dropout_rates.iter_mut().for_each(|r| *r = 0.0);
    cfg.dense.dropout_rates.iter_mut().for_each(|r| *r = 0.0);
    spec_with(cfg)
}

fn spec_with(mut cfg: ModelConfig) -> ModelSpec {
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

/// Wall time of the parts of one step at batch `b`, ms.
fn profile(rng: &mut Rng, device: &Device, b: usize) {
    let device_ad = device.clone().autodiff();
    let spec = reference_spec();
    let model = CnnLstm::new(&spec, rng, &device_ad);
    let sync = |t: Tensor<1>| {
        let _ = t.into_scalar::<f32>();
    };
    let x = Tensor::<4>::from_data(
        TensorData::new(random(b * T * F, rng), [b, 1, T, F]),
        &device_ad,
    );
    let conv = &model.branches[0].layers;
    let block = |x: Tensor<4>, i: usize| {
        conv_pool_relu(x, conv[i].weight.val(), conv[i].bias.val(), [2, 2], None)
    };
    let conv_fwd = time_it(5, || sync(block(block(x.clone(), 0), 1).sum()));
    let conv_fb = time_it(5, || {
        let _ = block(block(x.clone(), 0), 1).sum().backward();
    });
    let h = Tensor::<4>::from_data(
        TensorData::new(random(b * 64 * 50 * 20, rng), [b, 64, 50, 20]),
        &device_ad,
    )
    .require_grad();
    let conv2_fb = time_it(5, || {
        let _ = block(h.clone(), 1).sum().backward();
    });
    let lstm: &Lstm = &model.lstm;
    let seq = Tensor::<3>::from_data(
        TensorData::new(random(b * 25 * 1280, rng), [b, 25, 1280]),
        &device_ad,
    )
    .require_grad();
    let lstm_fwd = time_it(5, || sync(lstm.forward(seq.clone(), None).sum()));
    let lstm_fb = time_it(5, || {
        let _ = lstm.forward(seq.clone(), None).sum().backward();
    });
    let valid = model.valid();
    let xv = Tensor::<4>::from_data(
        TensorData::new(random(b * T * F, rng), [b, 1, T, F]),
        device,
    );
    let full_fwd = time_it(5, || sync(valid.forward(xv.clone(), None).sum()));
    println!(
        "PROFILE ms/batch{b}: conv blocks fwd={conv_fwd:.1} fwd+bwd={conv_fb:.1} (conv2 alone fwd+bwd={conv2_fb:.1}); \
         lstm fwd={lstm_fwd:.1} fwd+bwd={lstm_fb:.1}; whole model inference fwd={full_fwd:.1}"
    );
}

/// `--check`: the same weights trained on the same batches on flex (the CPU kernels) and on
/// `device` (another backend's composed ops, its batch uploads) must give the same losses and
/// predictions within `TOLERANCE` relative. Prints one `CHECK` line; false when they differ.
fn check(device: &Device, description: &str, batches: &[Batch], options: &TrainOptions) -> bool {
    const STEPS: usize = 8;
    const TOLERANCE: f64 = 2e-3;
    let run = |device: Device| {
        let mut trainer =
            Trainer::new(deterministic_spec(), options.clone(), device).expect("fits budget");
        let losses: Vec<f64> = (0..STEPS)
            .map(|i| {
                f64::from(
                    trainer
                        .train_step(&batches[i % batches.len()], 1e-3)
                        .expect("step")
                        .loss,
                )
            })
            .collect();
        let p = predict_proba(&trainer.model().valid(), &batches[0].x, 1.0).expect("inference");
        (losses, p)
    };
    let (cpu_loss, cpu_p) = run(Device::flex());
    let (dev_loss, dev_p) = run(device.clone());
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-6);
    let loss_err = cpu_loss
        .iter()
        .zip(&dev_loss)
        .map(|(&a, &b)| rel(a, b))
        .fold(0.0, f64::max);
    let p_err = cpu_p
        .iter()
        .zip(&dev_p)
        .map(|(&a, &b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let ok = loss_err < TOLERANCE && p_err < TOLERANCE;
    println!(
        "CHECK {} device={description} steps={STEPS} loss_first={:.5}/{:.5} loss_last={:.5}/{:.5} \
         max_loss_rel_err={loss_err:.2e} max_prob_abs_err={p_err:.2e} (flex/device, tolerance {TOLERANCE:.0e})",
        if ok { "ok" } else { "FAILED" },
        cpu_loss[0],
        dev_loss[0],
        cpu_loss[STEPS - 1],
        dev_loss[STEPS - 1],
    );
    ok
}

/// The value after `flag` on the command line.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The conv block's two CPU kernels side by side, forward and both gradients at batch `b` (64
/// filters, 3x3, 2x2 pool), over input channel counts: where Winograd starts to pay.
fn conv_sweep(b: usize) {
    let post = cpu::Post {
        relu: true,
        mask: None,
    };
    for (c, t, f) in [1, 2, 4, 8, 16, 32, 64]
        .map(|c| (c, 50, 20))
        .into_iter()
        .chain([(1, T, F)])
    {
        let g = cpu::Geometry {
            n: b,
            c,
            t,
            f,
            o: 64,
            kernel: [3, 3],
            pool: [2, 2],
        };
        let mut rng = Rng::new(c as u64, "sweep");
        let x = random(b * c * t * f, &mut rng);
        let w = random(64 * c * 9, &mut rng);
        let bias = random(64, &mut rng);
        let len = b * 64 * (t / 2) * (f / 2);
        let grad = random(len, &mut rng);
        let (mut y, mut arg) = (vec![0.0f32; len], vec![0i32; len]);
        let mut pass = |wino: bool| {
            if wino {
                winograd::forward(&x, &w, &bias, &g, post, &mut y, &mut arg);
            } else {
                cpu::forward(&x, &w, &bias, &g, post, &mut y, &mut arg);
            }
            let gate = Some(cpu::Gate {
                output: &y,
                mask: None,
            });
            if wino {
                winograd::weight_backward(&x, &grad, &arg, &g, gate);
                winograd::x_backward(&w, &grad, &arg, &g, gate);
            } else {
                cpu::weight_backward(&x, &grad, &arg, &g, gate);
                cpu::x_backward(&w, &grad, &arg, &g, gate);
            }
        };
        // Alternating, medians of 5 each.
        let (mut im2col, mut wino) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            im2col.push(time_it(1, || pass(false)));
            wino.push(time_it(1, || pass(true)));
        }
        println!(
            "SWEEP channels={c} map={t}x{f} im2col_ms={:.1} winograd_ms={:.1} taken={}",
            median(im2col),
            median(wino),
            if winograd::applies(&g) {
                "winograd"
            } else {
                "im2col"
            }
        );
    }
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
    let b: usize = flag_value(&args, "--batch").map_or(32, |v| v.parse().expect("--batch N"));
    let backend = match flag_value(&args, "--backend").unwrap_or("flex") {
        "flex" => Backend::Flex,
        "tch" => Backend::Tch,
        other => panic!("--backend {other}: expected flex or tch"),
    };
    let choice = select_device(backend, flag_value(&args, "--device").unwrap_or("cpu"))
        .unwrap_or_else(|e| panic!("{e}"));
    let device = choice.device;
    // Positional numbers only: the values after flags are not step counts.
    let nums: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !args[i - 1].starts_with("--"))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let steps = nums.first().copied().unwrap_or(20);
    let isteps = nums.get(1).copied().unwrap_or(20);
    let warm = nums.get(2).copied().unwrap_or(3);

    let mut rng = Rng::new(0, "bench");
    let batches: Vec<Batch> = (0..4)
        .map(|_| Batch {
            x: random(b * T * F, &mut rng),
            y: (0..b).map(|_| rng.below(C as usize) as u32).collect(),
            weights: vec![1.0; b],
        })
        .collect();
    let mut training = TrainingConfig {
        batch_size: b as u32,
        ..TrainingConfig::default()
    };
    training.callbacks.early_stopping.enabled = false;
    training.callbacks.reduce_lr.enabled = false;
    let mut opts = TrainOptions::from_config(&ModelConfig::default(), &training).expect("valid");
    opts.progress = false;
    if args.iter().any(|a| a == "--conv-sweep") {
        conv_sweep(b);
        return;
    }
    if args.iter().any(|a| a == "--check") {
        let description = choice.description.replace(' ', "-");
        let ok = check(&device, &description, &batches, &opts);
        std::process::exit(if ok { 0 } else { 1 });
    }
    let mut trainer = Trainer::new(reference_spec(), opts, device.clone()).expect("fits budget");

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
    let train_sps = (steps * b) as f64 / t_all.elapsed().as_secs_f64();

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
    let infer_sps = (isteps * b) as f64 / itimes.iter().sum::<f64>();
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
        "RESULT backend={} batch={b} train_sps={train_sps:.1} train_step_med_ms={:.1} infer_sps={infer_sps:.1} \
         infer_step_med_ms={:.2} infer_one_window_med_ms={:.2} loss_last={last:.4} steps={steps} threads={}",
        choice.description.replace(' ', "-"),
        median(times) * 1e3,
        median(itimes) * 1e3,
        median(single) * 1e3,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    if want_profile {
        profile(&mut rng, &device, b);
    }
}
