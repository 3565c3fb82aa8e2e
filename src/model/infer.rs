//! Inference on host buffers: logits and temperature-scaled probabilities.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};

use super::{ModelError, Network};

fn input_tensor(model: &Network, x: Vec<f32>) -> Result<(Tensor<4>, usize), ModelError> {
    let shape = model.spec().input;
    let per = shape.len();
    if per == 0 || !x.len().is_multiple_of(per) || x.is_empty() {
        return Err(ModelError::InputSize {
            got: x.len(),
            want: per * (x.len() / per.max(1)).max(1),
            batch: (x.len() / per.max(1)).max(1),
            shape: shape.to_string(),
        });
    }
    let b = x.len() / per;
    let device = model.device();
    let data = TensorData::new(x, [b, shape.assets, shape.time_steps, shape.features]);
    Ok((super::upload::floats(data, &device), b))
}

/// Logits `[batch * num_classes]` (row-major) for `x` = `batch` samples `[assets, T, F]`
/// row-major. Runs in inference mode (no dropout, no autodiff graph).
pub fn predict_logits(model: &Network, x: &[f32]) -> Result<Vec<f32>, ModelError> {
    logits(model, x.to_vec())
}

/// [`predict_logits`] taking the batch by value (no copy: `evaluate` streams millions).
pub fn logits(model: &Network, x: Vec<f32>) -> Result<Vec<f32>, ModelError> {
    let model = model.valid();
    let (input, _) = input_tensor(&model, x)?;
    Ok(to_vec(model.forward(input, None)))
}

/// Class probabilities `[batch * num_classes]`: softmax of logits / `temperature` (the
/// calibration slot; 1.0 = uncalibrated).
pub fn predict_proba(model: &Network, x: &[f32], temperature: f32) -> Result<Vec<f32>, ModelError> {
    let model = model.valid();
    let (input, _) = input_tensor(&model, x.to_vec())?;
    let logits = model.forward(input, None).div_scalar(temperature);
    Ok(to_vec(softmax(logits, 1)))
}

pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converted to f32 reads back as f32")
}
