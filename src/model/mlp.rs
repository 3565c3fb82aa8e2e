//! `MLP_LastStep`: dense layers over the last time step's features of every asset. It sees
//! no history, so it tells how much the CNN+LSTM gains from the window.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::cnn_lstm::{Dense, head_forward, head_layers};
use super::rng::Rng;
use super::spec::ModelSpec;

/// The classifier. Build with [`Mlp::new`].
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden dense layers (`model.dense`).
    pub dense: Vec<Dense>,
    /// Output layer (logits).
    pub head: Dense,
    #[module(skip)]
    spec: ModelSpec,
}

impl Mlp {
    /// A freshly initialised model on `device`, weights drawn from `rng`.
    pub fn new(spec: &ModelSpec, rng: &mut Rng, device: &Device) -> Self {
        let (dense, head) = head_layers(spec, spec.input.assets * spec.input.features, rng, device);
        Self {
            dense,
            head,
            spec: spec.clone(),
        }
    }

    /// The architecture this model was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Logits `[batch, num_classes]` for `x` `[batch, assets, T, features]`; `rng` = `Some`
    /// is training mode (dropout).
    pub fn forward(&self, x: Tensor<4>, rng: Option<&mut Rng>) -> Tensor<2> {
        let [b, a, t, f] = x.dims();
        let h = x.narrow(2, t - 1, 1).reshape([b, a * f]);
        head_forward(&self.dense, &self.head, &self.spec, h, rng)
    }
}
