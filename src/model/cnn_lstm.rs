//! The configurable CNN+LSTM: conv blocks over (time x feature) maps, a sequence over time,
//! an LSTM, dense layers, logits.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, leaky_relu, relu, silu};
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::conv::{conv_pool, conv_pool_relu};
use super::lstm::{Lstm, uniform_param};
use super::on_host;
use super::rng::Rng;
use super::spec::{ConvSpec, ModelSpec};
use crate::config::{Activation, Pooling};

/// A 2-D convolution with "same" padding.
#[derive(Module, Debug)]
pub struct Conv {
    /// `[out, in, kt, kf]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

/// A fully connected layer.
#[derive(Module, Debug)]
pub struct Dense {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    fn new(d_in: usize, d_out: usize, rng: &mut Rng, device: &Device) -> Self {
        let k = 1.0 / (d_in as f32).sqrt();
        Self {
            weight: uniform_param([d_in, d_out], k, rng, device),
            bias: uniform_param([d_out], k, rng, device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze_dim::<2>(0)
    }
}

/// The conv layers of one branch.
#[derive(Module, Debug)]
pub struct ConvBranch {
    /// One per conv block.
    pub layers: Vec<Conv>,
}

/// The classifier. Build with [`CnnLstm::new`]; the architecture is in [`ModelSpec`].
#[derive(Module, Debug)]
pub struct CnnLstm {
    /// One branch (stacked channels) or one per asset (separate branches).
    pub branches: Vec<ConvBranch>,
    /// Recurrent block.
    pub lstm: Lstm,
    /// Hidden dense layers.
    pub dense: Vec<Dense>,
    /// Output layer (logits).
    pub head: Dense,
    #[module(skip)]
    spec: ModelSpec,
}

/// Apply the configured activation.
fn activate<const D: usize>(x: Tensor<D>, act: Activation) -> Tensor<D> {
    match act {
        Activation::Relu => relu(x),
        Activation::Gelu => gelu(x),
        Activation::Tanh => x.tanh(),
        Activation::Silu => silu(x),
        Activation::LeakyRelu => leaky_relu(x, 0.01),
    }
}

/// Whether the activation is non-decreasing (GELU and SiLU dip below zero, so they are not).
fn monotone(act: Activation) -> bool {
    matches!(
        act,
        Activation::Relu | Activation::LeakyRelu | Activation::Tanh
    )
}

/// An inverted-dropout mask of `shape`: 0 with probability `p`, else 1/(1-p); `None` when
/// `rng` is `None` (inference) or `p` is zero.
///
/// On the CPU (flex) it is drawn from `rng` itself: host memory is the device's, and the
/// stream is exactly resumable. On any other device (a GPU) it is drawn there, from the
/// backend's generator seeded with the next value of `rng`, so that no mask crosses
/// host->device and a resumed run still draws what an uninterrupted one would.
fn dropout_mask<const D: usize>(
    shape: [usize; D],
    p: f64,
    rng: Option<&mut Rng>,
    device: &Device,
) -> Option<Tensor<D>> {
    let rng = rng.filter(|_| p > 0.0)?;
    let n: usize = shape.iter().product();
    let keep = 1.0 - p as f32;
    let scale = 1.0 / keep;
    let flat = if on_host(device) {
        // Branch-free (a fraction p of the draws drop, which a branch mispredicts), and the
        // same values as `if draw < keep { scale } else { 0.0 }`, also when `keep` rounds to 0
        // and `scale` is infinite.
        let values: Vec<f32> = (0..n)
            .map(|_| [0.0, scale][usize::from(rng.next_f32() < keep)])
            .collect();
        Tensor::from_data(TensorData::new(values, [n]), device)
    } else {
        device_mask(n, keep, rng.next_u64(), device)
    };
    Some(flat.reshape(shape))
}

/// A mask of `n` values drawn on `device`: 1/keep with probability `keep`, else 0.
fn device_mask(n: usize, keep: f32, seed: u64, device: &Device) -> Tensor<1> {
    device.seed(seed);
    Tensor::<1>::random([n], Distribution::Bernoulli(f64::from(keep)), device).div_scalar(keep)
}

/// Inverted dropout; identity when `rng` is `None` (inference) or `p` is zero.
fn dropout<const D: usize>(x: Tensor<D>, p: f64, rng: Option<&mut Rng>) -> Tensor<D> {
    match dropout_mask(x.dims(), p, rng, &x.device()) {
        Some(mask) => x * mask,
        None => x,
    }
}

/// Conv ("same") -> activation -> pooling -> dropout (training: `rng` is `Some`).
///
/// Max pooling commutes with a non-decreasing activation, so then the pool is folded into the
/// conv operation ([`conv_pool`]: GEMMs per sample, the full-resolution map never
/// materialised) and the activation runs on a map `pool` times smaller; ReLU and the dropout
/// mask are part of the operation ([`conv_pool_relu`]), the mask drawn as [`dropout`] would.
/// Otherwise (GELU, SiLU, average pooling) the conv runs alone and Burn pools the activated
/// map.
fn conv_block(
    x: Tensor<4>,
    conv: &Conv,
    c: &ConvSpec,
    pooling: Pooling,
    act: Activation,
    rng: Option<&mut Rng>,
) -> Tensor<4> {
    let (w, b) = (conv.weight.val(), conv.bias.val());
    if pooling == Pooling::Max && act == Activation::Relu {
        let [n, _, t, f] = x.dims();
        let out = [n, c.filters, t / c.pool[0], f / c.pool[1]];
        let mask = dropout_mask(out, c.dropout, rng, &x.device());
        return conv_pool_relu(x, w, b, c.pool, mask);
    }
    let y = match pooling {
        Pooling::Max if monotone(act) => activate(conv_pool(x, w, b, c.pool), act),
        Pooling::Max => max_pool2d(
            activate(conv_pool(x, w, b, [1, 1]), act),
            MaxPoolOptions::new(c.pool),
        ),
        Pooling::Avg => avg_pool2d(
            activate(conv_pool(x, w, b, [1, 1]), act),
            AvgPoolOptions::new(c.pool),
        ),
    };
    dropout(y, c.dropout, rng)
}

impl CnnLstm {
    /// Build a freshly initialised model on `device`, weights drawn from `rng`
    /// (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch does).
    pub fn new(spec: &ModelSpec, rng: &mut Rng, device: &Device) -> Self {
        let branches = (0..spec.branches())
            .map(|_| {
                let mut c_in = spec.branch_in_channels();
                let layers = spec
                    .conv
                    .iter()
                    .map(|c| {
                        let fan_in = c_in * c.kernel[0] * c.kernel[1];
                        let k = 1.0 / (fan_in as f32).sqrt();
                        let conv = Conv {
                            weight: uniform_param(
                                [c.filters, c_in, c.kernel[0], c.kernel[1]],
                                k,
                                rng,
                                device,
                            ),
                            bias: uniform_param([c.filters], k, rng, device),
                        };
                        c_in = c.filters;
                        conv
                    })
                    .collect();
                ConvBranch { layers }
            })
            .collect();
        let (_, width) = spec.sequence();
        let lstm = Lstm::new(width, spec.lstm_units, rng, device);
        let (dense, head) = head_layers(spec, spec.lstm_units, rng, device);
        Self {
            branches,
            lstm,
            dense,
            head,
            spec: spec.clone(),
        }
    }

    /// The architecture this model was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Conv blocks of one branch: `[B, C, T, F]` -> `[B, T', C' * F']` sequence.
    fn branch_forward(
        &self,
        branch: &ConvBranch,
        mut x: Tensor<4>,
        mut rng: Option<&mut Rng>,
    ) -> Tensor<3> {
        for (conv, c) in branch.layers.iter().zip(&self.spec.conv) {
            x = conv_block(
                x,
                conv,
                c,
                self.spec.pooling,
                self.spec.activation,
                rng.as_deref_mut(),
            );
        }
        let [b, ch, t, f] = x.dims();
        x.permute([0, 2, 1, 3]).reshape([b, t, ch * f])
    }

    /// Logits `[batch, num_classes]` for `x` `[batch, assets, T, features]`.
    ///
    /// `rng` = `Some` is training mode: dropout masks (conv, LSTM output, recurrent state,
    /// dense) are drawn from it. `None` is inference.
    pub fn forward(&self, x: Tensor<4>, mut rng: Option<&mut Rng>) -> Tensor<2> {
        let [b, a, t, f] = x.dims();
        let seq = if self.branches.len() == 1 {
            self.branch_forward(&self.branches[0], x, rng.as_deref_mut())
        } else {
            let parts = self
                .branches
                .iter()
                .enumerate()
                .map(|(i, br)| {
                    let xi = x.clone().narrow(1, i, 1).reshape([b, 1, t, f]);
                    self.branch_forward(br, xi, rng.as_deref_mut())
                })
                .collect();
            debug_assert_eq!(a, self.branches.len());
            Tensor::cat(parts, 2)
        };
        let units = self.spec.lstm_units;
        let recurrent_mask = dropout_mask(
            [b, units],
            self.spec.recurrent_dropout,
            rng.as_deref_mut(),
            &seq.device(),
        );
        let mut h = self.lstm.forward(seq, recurrent_mask);
        h = dropout(h, self.spec.lstm_dropout, rng.as_deref_mut());
        head_forward(&self.dense, &self.head, &self.spec, h, rng)
    }
}

/// The dense layers of `spec` on inputs of width `d_in`, and the logits layer after them.
pub(crate) fn head_layers(
    spec: &ModelSpec,
    mut d_in: usize,
    rng: &mut Rng,
    device: &Device,
) -> (Vec<Dense>, Dense) {
    let dense = spec
        .dense
        .iter()
        .map(|d| {
            let layer = Dense::new(d_in, d.units, rng, device);
            d_in = d.units;
            layer
        })
        .collect();
    (dense, Dense::new(d_in, spec.num_classes, rng, device))
}

/// Dense layers (activation, dropout in training) then logits.
pub(crate) fn head_forward(
    dense: &[Dense],
    head: &Dense,
    spec: &ModelSpec,
    mut h: Tensor<2>,
    mut rng: Option<&mut Rng>,
) -> Tensor<2> {
    for (layer, d) in dense.iter().zip(&spec.dense) {
        h = activate(layer.forward(h), spec.activation);
        h = dropout(h, d.dropout, rng.as_deref_mut());
    }
    head.forward(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_hold_zero_and_one_over_keep() {
        let device = Device::flex();
        let mut rng = Rng::new(4, "mask");
        let mask = dropout_mask([1000], 0.3, Some(&mut rng), &device).unwrap();
        let values = mask.into_data().try_to_vec::<f32>().unwrap();
        let kept = values.iter().filter(|&&v| v == 1.0 / 0.7).count();
        assert_eq!(kept + values.iter().filter(|&&v| v == 0.0).count(), 1000);
        assert!(
            (650..750).contains(&kept),
            "{kept} of 1000 kept at rate 0.3"
        );
        // A rate the config accepts (< 1) whose keep probability rounds to 0 in f32: every
        // value drops, none is 0 * inf = NaN.
        let mask = dropout_mask([64], 1.0 - 1e-9, Some(&mut rng), &device).unwrap();
        let values = mask.into_data().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|&v| v == 0.0), "{values:?}");
        assert!(dropout_mask([8], 0.3, None, &device).is_none());
    }

    #[test]
    fn pooling_before_a_monotone_activation_gives_the_same_map() {
        let device = Device::flex();
        let mut rng = Rng::new(2, "x");
        let values: Vec<f32> = (0..2 * 3 * 6 * 4).map(|_| rng.uniform(2.0)).collect();
        let x = Tensor::<4>::from_data(TensorData::new(values, [2, 3, 6, 4]), &device);
        for act in [Activation::Relu, Activation::LeakyRelu, Activation::Tanh] {
            assert!(monotone(act));
            let pool = || MaxPoolOptions::new([2, 2]);
            let a = max_pool2d(activate(x.clone(), act), pool()).into_data();
            let b = activate(max_pool2d(x.clone(), pool()), act).into_data();
            assert_eq!(a, b, "{act:?}");
        }
        assert!(!monotone(Activation::Gelu) && !monotone(Activation::Silu));
    }

    #[test]
    fn device_drawn_masks_have_the_rate_and_scale_and_repeat_per_seed() {
        // The GPU path, run on flex: what a non-host device draws.
        let device = Device::flex();
        assert!(on_host(&device) && on_host(&device.clone().autodiff()));
        let n = 200_000;
        let values = |seed| {
            device_mask(n, 0.7, seed, &device)
                .into_data()
                .iter::<f32>()
                .collect::<Vec<_>>()
        };
        let a = values(9);
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.7).abs() < 0.005, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        assert_eq!(a, values(9));
        assert_ne!(a, values(10));
    }
}
