//! The linear baseline: multinomial logistic regression on the last step's features of every
//! asset (one store row), fit on the training split by Burn's L-BFGS (strong Wolfe line
//! search) from zero weights, with an L2 penalty on the weights. Full batch over a bounded,
//! evenly spaced sample of training rows, so the fit is deterministic and its memory bounded.

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, LBFGSConfig, LineSearchFn};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::model::infer::to_vec;

#[derive(Module, Debug)]
struct Logistic {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

impl Logistic {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze_dim::<2>(0)
    }
}

/// A fitted multinomial logistic regression.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    /// Input features.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// `[features, classes]` row-major.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
    /// Training rows it was fit on.
    pub samples: usize,
    /// Final penalised training loss.
    pub loss: f64,
}

/// Fits the model on `x` (`y.len()` rows of `features` values) by minimising the mean
/// cross-entropy plus `l2 / 2 x |W|^2`.
pub fn fit(
    x: &[f32],
    y: &[u32],
    features: usize,
    classes: usize,
    l2: f64,
    device: &Device,
) -> LinearModel {
    let n = y.len();
    let ad = device.clone().autodiff();
    let xt: Tensor<2> = Tensor::from_data(TensorData::new(x.to_vec(), [n, features]), &ad);
    let yt: Tensor<1, Int> = Tensor::from_data(
        TensorData::new(y.iter().map(|&c| i64::from(c)).collect(), [n]),
        &ad,
    );
    let model = Logistic {
        weight: Param::from_tensor(Tensor::zeros([features, classes], &ad)),
        bias: Param::from_tensor(Tensor::zeros([classes], &ad)),
    };
    let mut closure = |m: Logistic| {
        let nll = log_softmax(m.forward(xt.clone()), 1)
            .gather(1, yt.clone().reshape([n, 1]))
            .mean()
            .neg();
        let w = m.weight.val();
        let loss = nll + (w.clone() * w).sum().mul_scalar(0.5 * l2);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        (loss.into_scalar::<f64>(), grads)
    };
    let mut optimizer = LBFGSConfig::new()
        .with_max_iter(200)
        .with_line_search_fn(LineSearchFn::StrongWolfe)
        .init();
    let (model, loss) = optimizer.step(1.0, model, &mut closure);
    LinearModel {
        features,
        classes,
        weight: to_vec(model.weight.val()),
        bias: to_vec(model.bias.val()),
        samples: n,
        loss,
    }
}

impl LinearModel {
    /// Logits (`classes` per row) of `x` (rows of `features` values).
    pub fn logits(&self, x: &[f32]) -> Vec<f64> {
        x.chunks(self.features)
            .flat_map(|row| {
                (0..self.classes).map(move |c| {
                    let dot: f64 = row
                        .iter()
                        .enumerate()
                        .map(|(j, v)| f64::from(*v) * f64::from(self.weight[j * self.classes + c]))
                        .sum();
                    dot + f64::from(self.bias[c])
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_separable_rule_and_is_deterministic() {
        // Class = which of three bands x0 falls in; x1 is noise.
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..600 {
            let a = (i % 60) as f32 / 20.0 - 1.5;
            let noise = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
            x.extend([a, noise]);
            y.push(if a < -0.5 {
                0
            } else if a < 0.5 {
                1
            } else {
                2
            });
        }
        let device = Device::flex();
        let m = fit(&x, &y, 2, 3, 1e-4, &device);
        let logits = m.logits(&x);
        let correct = y
            .iter()
            .enumerate()
            .filter(|(i, c)| crate::evaluate::metrics::argmax(&logits[i * 3..i * 3 + 3]) == **c)
            .count();
        assert!(correct as f64 / 600.0 > 0.9, "{correct} of 600");
        assert!(
            m.weight[0] < m.weight[2],
            "x0 lowers class 0 and raises class 2"
        );
        assert_eq!(fit(&x, &y, 2, 3, 1e-4, &device), m);
    }
}
