//! A single-layer LSTM written for speed on small batches.
//!
//! Burn's `Lstm` runs each gate as its own pair of small matmuls per time step. Here the input
//! projection of all time steps is ONE matmul (`[B*T, D] x [D, 4H]`), and each step does one
//! recurrent matmul (`[B, H] x [H, 4H]`) for the four gates together. Gate order is i, f, o, g so
//! that one sigmoid covers the first three.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::on_host;
use super::recurrence::lstm_recurrence;
use super::rng::Rng;

/// LSTM weights: input projection, recurrent projection and one bias (as Keras).
#[derive(Module, Debug)]
pub struct Lstm {
    /// `[d_input, 4 * hidden]`.
    pub w_input: Param<Tensor<2>>,
    /// `[hidden, 4 * hidden]`.
    pub w_recurrent: Param<Tensor<2>>,
    /// `[4 * hidden]`.
    pub bias: Param<Tensor<1>>,
}

/// Uniform(-k, k) parameter tensor drawn from `rng`.
///
/// Its id is the generator's next value, peeked before the draws (so the weights stay what
/// they were): Burn's default ids are random and end up in the weights file, which would make
/// the same training give different bytes.
pub(crate) fn uniform_param<const D: usize>(
    shape: [usize; D],
    k: f32,
    rng: &mut Rng,
    device: &Device,
) -> Param<Tensor<D>> {
    let id = ParamId::from(rng.clone().next_u64());
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.uniform(k)).collect();
    let mut param = Param::from_tensor(Tensor::from_data(
        burn::tensor::TensorData::new(values, shape),
        device,
    ));
    param.id = id;
    param
}

impl Lstm {
    /// New LSTM with PyTorch's init, U(-1/sqrt(H), 1/sqrt(H)) for every weight.
    pub fn new(d_input: usize, hidden: usize, rng: &mut Rng, device: &Device) -> Self {
        let k = 1.0 / (hidden as f32).sqrt();
        Self {
            w_input: uniform_param([d_input, 4 * hidden], k, rng, device),
            w_recurrent: uniform_param([hidden, 4 * hidden], k, rng, device),
            bias: uniform_param([4 * hidden], k, rng, device),
        }
    }

    /// Hidden size H.
    pub fn hidden(&self) -> usize {
        self.w_recurrent.dims()[0]
    }

    /// Run over `x` `[batch, time, d_input]` and return the last hidden state `[batch, H]`.
    /// `recurrent_mask` (`[batch, H]`, already scaled by 1/keep) multiplies the state fed back
    /// into the recurrent matmul, the same mask at every step.
    ///
    /// On the CPU (flex) the steps after the input projection are one operation
    /// ([`lstm_recurrence`]); elsewhere they are composed of tensor ops.
    pub fn forward(&self, x: Tensor<3>, recurrent_mask: Option<Tensor<2>>) -> Tensor<2> {
        let [b, t, d] = x.dims();
        let h_size = self.hidden();
        let proj = (x.reshape([b * t, d]).matmul(self.w_input.val())
            + self.bias.val().unsqueeze_dim::<2>(0))
        .reshape([b, t, 4 * h_size]);
        if t > 0 && on_host(&proj.device()) {
            let mask = recurrent_mask.unwrap_or_else(|| Tensor::ones([b, h_size], &proj.device()));
            return lstm_recurrence(proj, self.w_recurrent.val(), mask);
        }
        self.recur_composed(proj, recurrent_mask)
    }

    /// The steps after the input projection, as tensor ops (any backend).
    fn recur_composed(&self, proj: Tensor<3>, recurrent_mask: Option<Tensor<2>>) -> Tensor<2> {
        let [b, t, _] = proj.dims();
        let h_size = self.hidden();
        let w_rec = self.w_recurrent.val();
        let mut state: Option<(Tensor<2>, Tensor<2>)> = None;
        for step in 0..t {
            let x_t = proj.clone().narrow(1, step, 1).reshape([b, 4 * h_size]);
            // At step 0 the state is zero: skip the recurrent matmul and the forget term.
            let gates = match &state {
                None => x_t,
                Some((h, _)) => {
                    let h = match &recurrent_mask {
                        Some(m) => h.clone() * m.clone(),
                        None => h.clone(),
                    };
                    x_t + h.matmul(w_rec.clone())
                }
            };
            let ifo = sigmoid(gates.clone().narrow(1, 0, 3 * h_size));
            let g = gates.narrow(1, 3 * h_size, h_size).tanh();
            let i = ifo.clone().narrow(1, 0, h_size);
            let o = ifo.clone().narrow(1, 2 * h_size, h_size);
            let c = match state {
                None => i * g,
                Some((_, c)) => ifo.narrow(1, h_size, h_size) * c + i * g,
            };
            let h = o * c.clone().tanh();
            state = Some((h, c));
        }
        match state {
            Some((h, _)) => h,
            None => Tensor::zeros([b, h_size], &self.bias.device()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{random, rel_err};
    use burn::tensor::TensorData;

    #[test]
    fn the_fused_recurrence_equals_the_composed_one_forward_and_backward() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(3, "lstm");
        // (batch, time, input, hidden, recurrent mask)
        for (b, t, d, h, masked) in [
            (3, 5, 7, 4, false),
            (1, 1, 3, 2, false),
            (2, 6, 5, 3, true),
            (4, 25, 16, 8, true),
        ] {
            let lstm = Lstm::new(d, h, &mut rng, &device);
            let x = random([b, t, d], &mut rng, &device).require_grad();
            let mask = masked.then(|| {
                let keep: Vec<f32> = (0..b * h)
                    .map(|_| if rng.next_f32() < 0.7 { 1.0 / 0.7 } else { 0.0 })
                    .collect();
                Tensor::<2>::from_data(TensorData::new(keep, [b, h]), &device)
            });
            let r = random([b, h], &mut rng, &device);
            let fused = lstm.forward(x.clone(), mask.clone());
            let g1 = (fused.clone() * r.clone()).sum().backward();
            let proj = (x.clone().reshape([b * t, d]).matmul(lstm.w_input.val())
                + lstm.bias.val().unsqueeze_dim::<2>(0))
            .reshape([b, t, 4 * h]);
            let composed = lstm.recur_composed(proj, mask);
            let g2 = (composed.clone() * r).sum().backward();
            let label = format!("b{b} t{t} d{d} h{h} mask {masked}");
            let errs = [
                ("h", rel_err(fused.inner(), composed.inner())),
                ("dx", rel_err(x.grad(&g1).unwrap(), x.grad(&g2).unwrap())),
                (
                    "dw_input",
                    rel_err(
                        lstm.w_input.val().grad(&g1).unwrap(),
                        lstm.w_input.val().grad(&g2).unwrap(),
                    ),
                ),
            ];
            // One step never reads the recurrent weights: the composed graph has no gradient
            // for them, the fused op a zero one.
            let w = lstm.w_recurrent.val();
            let zero = || Tensor::zeros(w.dims(), &device).inner();
            let (dw1, dw2) = (w.grad(&g1).unwrap(), w.grad(&g2).unwrap_or_else(zero));
            let errs = errs.into_iter().chain([(
                "dw_recurrent",
                if t == 1 {
                    dw1.abs().max().into_scalar::<f32>()
                } else {
                    rel_err(dw1, dw2)
                },
            )]);
            for (what, err) in errs {
                assert!(err < 1e-4, "{label}: {what} relative error {err}");
            }
            let err = rel_err(
                lstm.bias.val().grad(&g1).unwrap(),
                lstm.bias.val().grad(&g2).unwrap(),
            );
            assert!(err < 1e-4, "{label}: dbias relative error {err}");
        }
    }
}
