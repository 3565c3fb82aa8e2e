//! A single-layer LSTM written for speed on small batches.
//!
//! Burn's `Lstm` runs each gate as its own pair of small matmuls per time step. Here the input
//! projection of all time steps is ONE matmul (`[B*T, D] x [D, 4H]`), and each step does one
//! recurrent matmul (`[B, H] x [H, 4H]`) for the four gates together. Gate order is i, f, o, g so
//! that one sigmoid covers the first three.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

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
    pub fn forward(&self, x: Tensor<3>, recurrent_mask: Option<Tensor<2>>) -> Tensor<2> {
        let [b, t, d] = x.dims();
        let h_size = self.hidden();
        let proj = (x.reshape([b * t, d]).matmul(self.w_input.val())
            + self.bias.val().unsqueeze_dim::<2>(0))
        .reshape([b, t, 4 * h_size]);
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
