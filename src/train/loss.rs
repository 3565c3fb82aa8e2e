//! Weighted cross-entropy and class weights.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Weighted mean cross-entropy: `sum_i w_i * -log softmax(logits_i)[y_i] / sum_i w_i`, where
/// `w_i` = class weight of `y_i` x the sample's own (time) weight. Normalising by the weight
/// sum (as PyTorch's `CrossEntropyLoss(weight=...)` does) keeps the loss scale, and so the
/// useful learning rate, independent of how large the weights are.
///
/// `weights` are the combined per-sample weights, `weight_sum` their sum (kept on the host so
/// the division adds nothing to the graph).
pub fn weighted_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    weights: Tensor<1>,
    weight_sum: f32,
) -> Tensor<1> {
    let [b, _] = logits.dims();
    let nll = log_softmax(logits, 1)
        .gather(1, targets.reshape([b, 1]))
        .reshape([b])
        .neg();
    (nll * weights).sum().div_scalar(weight_sum)
}

/// Combined weight per sample: `class_weights[y] * sample_weights` (class weight 1 when `None`).
pub fn combine_weights(
    y: &[u32],
    sample_weights: &[f32],
    class_weights: Option<&[f32]>,
) -> Vec<f32> {
    y.iter()
        .zip(sample_weights)
        .map(|(&c, &w)| class_weights.map_or(1.0, |cw| cw[c as usize]) * w)
        .collect()
}

/// Inverse-frequency ("balanced") class weights from training class counts:
/// `w_c = N / (K * n_c)`, so a balanced split gets all ones. Classes absent from training get
/// weight 0: nothing to learn from, and no division by zero.
pub fn balanced_class_weights(counts: &[u64]) -> Vec<f32> {
    let total: u64 = counts.iter().sum();
    let k = counts.len() as f64;
    counts
        .iter()
        .map(|&n| {
            if n == 0 {
                0.0
            } else {
                (total as f64 / (k * n as f64)) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn ce(logits: Vec<f32>, y: Vec<i64>, w: Vec<f32>) -> f32 {
        let d = Device::flex();
        let b = y.len();
        let k = logits.len() / b;
        let sum: f32 = w.iter().sum();
        weighted_cross_entropy(
            Tensor::from_data(TensorData::new(logits, [b, k]), &d),
            Tensor::from_data(TensorData::new(y, [b]), &d),
            Tensor::from_data(TensorData::new(w, [b]), &d),
            sum,
        )
        .into_scalar::<f32>()
    }

    #[test]
    fn class_weights_change_the_loss_as_computed_by_hand() {
        // Sample 0: logits [2, 0, 0], label 0 -> -log(e^2 / (e^2 + 2)) = 0.239545
        // Sample 1: logits [0, 1, 0], label 2 -> -log(1 / (2 + e))   = 1.551445
        let logits = vec![2.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let (l0, l1) = (0.239_545_f32, 1.551_445_f32);
        let unweighted = ce(logits.clone(), vec![0, 2], vec![1.0, 1.0]);
        assert!((unweighted - (l0 + l1) / 2.0).abs() < 1e-5, "{unweighted}");
        // Class weights [1, 1, 3]: sample 1 counts three times.
        let w = combine_weights(&[0, 2], &[1.0, 1.0], Some(&[1.0, 1.0, 3.0]));
        assert_eq!(w, vec![1.0, 3.0]);
        let weighted = ce(logits.clone(), vec![0, 2], w);
        assert!(
            (weighted - (l0 + 3.0 * l1) / 4.0).abs() < 1e-5,
            "{weighted}"
        );
        // Time weights multiply class weights: 0.5 * 1 and 2 * 3.
        let w = combine_weights(&[0, 2], &[0.5, 2.0], Some(&[1.0, 1.0, 3.0]));
        let both = ce(logits, vec![0, 2], w);
        assert!((both - (0.5 * l0 + 6.0 * l1) / 6.5).abs() < 1e-5, "{both}");
    }

    #[test]
    fn balanced_weights_follow_inverse_frequency() {
        assert_eq!(balanced_class_weights(&[10, 10]), vec![1.0, 1.0]);
        assert_eq!(
            balanced_class_weights(&[30, 10, 0]),
            vec![40.0 / 90.0, 40.0 / 30.0, 0.0]
        );
    }
}
