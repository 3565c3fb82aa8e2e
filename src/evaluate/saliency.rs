//! Gradient x input saliency: how much each input value moves the logit of the class the
//! model predicts, aggregated as mean |gradient x input| over samples.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::model::Network;
use crate::model::infer::to_vec;

/// Mean |gradient x input| per input position, `[assets, T, features]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Saliency {
    /// Assets.
    pub assets: usize,
    /// Time steps per window.
    pub time_steps: usize,
    /// Features per asset channel.
    pub features: usize,
    /// Values, `[assets, T, features]`.
    pub values: Vec<f64>,
    /// Samples averaged.
    pub samples: usize,
}

impl Saliency {
    /// Empty accumulator for `model`'s input shape.
    pub fn new(model: &Network) -> Self {
        let s = model.spec().input;
        Self {
            assets: s.assets,
            time_steps: s.time_steps,
            features: s.features,
            values: vec![0.0; s.len()],
            samples: 0,
        }
    }

    /// Adds a batch `x` (`n` samples `[assets, T, features]`); `model` must live on an
    /// autodiff device.
    pub fn add(&mut self, model: &Network, x: &[f32], device: &Device) {
        let per = self.values.len();
        let n = x.len() / per;
        if n == 0 {
            return;
        }
        let input: Tensor<4> = Tensor::from_data(
            TensorData::new(x.to_vec(), [n, self.assets, self.time_steps, self.features]),
            device,
        )
        .require_grad();
        let logits = model.forward(input.clone(), None);
        let [_, k] = logits.dims();
        // The predicted class's logit per sample, summed: each sample's gradient is its own.
        let predicted: Tensor<1, Int> = logits.clone().argmax(1).reshape([n]);
        let onehot: Tensor<2> = predicted.one_hot::<2>(k).float();
        let grads = (logits * onehot).sum().backward();
        let g = input
            .grad(&grads)
            .expect("the input takes part in the graph");
        let gx = to_vec(g);
        for (i, (g, v)) in gx.iter().zip(x).enumerate() {
            self.values[i % per] += f64::from((g * v).abs());
        }
        self.samples += n;
    }

    /// Mean over samples, `[assets, T, features]`.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.samples.max(1) as f64;
        self.values.iter().map(|v| v / n).collect()
    }

    /// Importance per (asset, feature): the mean summed over time steps, `[assets, features]`.
    pub fn per_feature(&self) -> Vec<f64> {
        let m = self.mean();
        let (t, f) = (self.time_steps, self.features);
        let mut out = vec![0.0; self.assets * f];
        for a in 0..self.assets {
            for s in 0..t {
                for j in 0..f {
                    out[a * f + j] += m[(a * t + s) * f + j];
                }
            }
        }
        out
    }

    /// Importance per time step (summed over assets and features), oldest first.
    pub fn per_time_step(&self) -> Vec<f64> {
        let m = self.mean();
        let (t, f) = (self.time_steps, self.features);
        let mut out = vec![0.0; t];
        for a in 0..self.assets {
            for (s, o) in out.iter_mut().enumerate() {
                *o += m[(a * t + s) * f..(a * t + s + 1) * f].iter().sum::<f64>();
            }
        }
        out
    }
}
