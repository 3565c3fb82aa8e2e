//! A model of any registered family (see [`Architecture`]): what training, checkpoints,
//! artifacts, inference and saliency work with.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::rng::Rng;
use super::spec::{Architecture, ModelSpec};
use super::{CnnLstm, Mlp};

/// One network, of the family its spec names.
// A handful of networks live at a time: the size difference of the variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// `CNN_LSTM_MultiClass`.
    CnnLstm(CnnLstm),
    /// `MLP_LastStep`.
    Mlp(Mlp),
}

impl Network {
    /// A freshly initialised network of `spec.architecture`.
    pub fn new(spec: &ModelSpec, rng: &mut Rng, device: &Device) -> Self {
        match spec.architecture {
            Architecture::CnnLstm => Network::CnnLstm(CnnLstm::new(spec, rng, device)),
            Architecture::MlpLastStep => Network::Mlp(Mlp::new(spec, rng, device)),
        }
    }

    /// The architecture it was built from.
    pub fn spec(&self) -> &ModelSpec {
        match self {
            Network::CnnLstm(m) => m.spec(),
            Network::Mlp(m) => m.spec(),
        }
    }

    /// Logits `[batch, num_classes]`; `rng` = `Some` is training mode (dropout).
    pub fn forward(&self, x: Tensor<4>, rng: Option<&mut Rng>) -> Tensor<2> {
        match self {
            Network::CnnLstm(m) => m.forward(x, rng),
            Network::Mlp(m) => m.forward(x, rng),
        }
    }

    /// The device its weights live on.
    pub fn device(&self) -> Device {
        match self {
            Network::CnnLstm(m) => m.head.bias.device(),
            Network::Mlp(m) => m.head.bias.device(),
        }
    }
}
