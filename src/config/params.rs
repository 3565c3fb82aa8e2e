//! The configuration's hyperparameters as flat, dotted names (`model.cnn.filters`,
//! `callbacks.early_stopping.patience`, ...): what MLflow shows, compares and searches as
//! params.

use serde::Serialize;
use serde_json::Value;

use super::Config;

/// Every leaf of `section` as `(prefix.path.to.leaf, value)`: strings and numbers as written,
/// lists in compact JSON (`[8,16]`), unset options as `none`.
pub fn flatten(prefix: &str, section: &impl Serialize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The schema's types always serialize; a failure would be a bug in a derive.
    let value = serde_json::to_value(section).expect("configuration sections serialize");
    leaves(prefix, &value, &mut out);
    out
}

fn leaves(path: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                leaves(&format!("{path}.{k}"), v, out);
            }
        }
        Value::Null => out.push((path.to_owned(), "none".to_owned())),
        Value::String(s) => out.push((path.to_owned(), s.clone())),
        other => out.push((path.to_owned(), other.to_string())),
    }
}

impl Config {
    /// The hyperparameters a training run depends on, flat: the whole `model` section,
    /// `training` (its callbacks as `callbacks.*`, as Keras users know them),
    /// `preprocessing`, `targets`, and the data representation (`data.order_book`,
    /// `data.temporal_features`, `data.asset_pairs`, `data.time_range.cadence_seconds`).
    /// No section here holds a secret.
    pub fn hyperparameters(&self) -> Vec<(String, String)> {
        let mut training =
            serde_json::to_value(&self.training).expect("configuration sections serialize");
        if let Value::Object(map) = &mut training {
            map.remove("callbacks");
        }
        let d = &self.data;
        [
            flatten("model", &self.model),
            flatten("training", &training),
            flatten("callbacks", &self.training.callbacks),
            flatten("preprocessing", &self.preprocessing),
            flatten("targets", &self.targets),
            flatten("data.order_book", &d.order_book),
            flatten("data.temporal_features", &d.temporal_features),
            flatten("data.asset_pairs", &d.asset_pairs),
            flatten(
                "data.time_range.cadence_seconds",
                &d.time_range.cadence_seconds,
            ),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hyperparameters_are_flat_dotted_and_complete() {
        let c = crate::config::load(None, &Default::default(), &|_| None)
            .unwrap()
            .config;
        let p: std::collections::BTreeMap<String, String> =
            c.hyperparameters().into_iter().collect();
        assert_eq!(p["model.cnn.filters"], "[8,16]");
        assert_eq!(p["model.cnn.kernel_sizes"], "[[3,3],[3,3]]");
        assert_eq!(p["model.lstm.units"], "16");
        assert_eq!(p["model.lstm.dropout"], "0.3");
        assert_eq!(p["model.dense.layers"], "[16]");
        assert_eq!(p["model.compilation.learning_rate"], "0.001");
        assert_eq!(p["callbacks.early_stopping.patience"], "3");
        assert_eq!(p["callbacks.reduce_lr.patience"], "2");
        assert_eq!(p["training.batch_size"], "64");
        assert_eq!(p["training.fine_tuning.base_model_run_id"], "none");
        assert_eq!(p["preprocessing.window_steps"], "32");
        assert_eq!(p["preprocessing.normalization.method"], "standard");
        assert_eq!(p["targets.price_classes.boundaries"], "[-0.03,0.03]");
        assert_eq!(p["data.order_book.depth_levels"], "5");
        assert_eq!(p["data.asset_pairs.correlated_assets"], "[\"ETHUSDT\"]");
        assert_eq!(p["data.time_range.cadence_seconds"], "10");
        assert!(!p.keys().any(|k| k.starts_with("training.callbacks")));
        // Only the representation of the data: never its connection (secrets live there).
        assert!(
            !p.keys()
                .any(|k| k.contains("connection") || k.contains("uri"))
        );
        assert!(p.len() > 60, "{} params", p.len());
    }
}
