//! The `MLmodel` file that makes a folder an MLflow model: our flavor, the tensor signature
//! MLflow's UI and clients show, and metadata (feature columns, classes, ...).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::error::{Result, TrackingError};
use super::file_store::write_atomic;

/// The file MLflow reads a model folder's description from.
pub const MLMODEL_FILE: &str = "MLmodel";
/// Our flavor's name in `MLmodel`.
pub const FLAVOR: &str = "binance_ml";

/// What a model's `MLmodel` says: its kind, its input and output tensors and metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelCard {
    /// Free-form model type (the architecture), also the logged model's type.
    pub model_type: String,
    /// Input shape without the batch dimension (`[assets, steps, features]`).
    pub input_shape: Vec<usize>,
    /// Output class names, in output order.
    pub classes: Vec<String>,
    /// The model's files, by role (`weights`, `manifest`, `config`), relative to its folder.
    pub files: BTreeMap<String, String>,
    /// Anything else a reader needs (feature columns, cadence, horizon, ...).
    pub metadata: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Signature {
    inputs: String,
    outputs: String,
    params: Option<String>,
}

#[derive(Serialize)]
struct MlModel<'a> {
    artifact_path: &'a str,
    flavors: BTreeMap<&'a str, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_uuid: Option<&'a str>,
    run_id: &'a str,
    signature: Signature,
    metadata: &'a BTreeMap<String, serde_json::Value>,
    utc_time_created: String,
}

/// One tensor of a signature, as MLflow's `TensorSpec.to_json` writes it.
fn tensor(name: &str, shape: &[i64]) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "type": "tensor",
        "tensor-spec": {"dtype": "float32", "shape": shape},
    })
}

impl ModelCard {
    /// The `MLmodel` text for the model logged by `run_id` (and, once created, logged model
    /// `model_id`): input `windows` `[-1, assets, steps, features]` float32, output
    /// `probabilities` `[-1, classes]` float32.
    pub fn mlmodel_yaml(&self, run_id: &str, model_id: Option<&str>) -> Result<String> {
        let batch = std::iter::once(-1);
        let input: Vec<i64> = batch
            .clone()
            .chain(self.input_shape.iter().map(|&d| d as i64))
            .collect();
        let output: Vec<i64> = batch.chain([self.classes.len() as i64]).collect();
        let flavor = serde_json::json!({
            "model_type": self.model_type,
            "binance_ml_version": env!("CARGO_PKG_VERSION"),
            "files": self.files,
            "classes": self.classes,
        });
        let doc = MlModel {
            artifact_path: super::MODEL_DIR,
            flavors: BTreeMap::from([(FLAVOR, flavor)]),
            model_id,
            model_uuid: model_id,
            run_id,
            signature: Signature {
                inputs: serde_json::json!([tensor("windows", &input)]).to_string(),
                outputs: serde_json::json!([tensor("probabilities", &output)]).to_string(),
                params: None,
            },
            metadata: &self.metadata,
            utc_time_created: chrono::Utc::now()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string(),
        };
        serde_yaml_ng::to_string(&doc).map_err(|e| TrackingError::Corrupt {
            context: "encoding MLmodel".into(),
            message: e.to_string(),
        })
    }

    /// Writes `MLmodel` into `model_dir` (temp file + rename), making the folder an MLflow
    /// model wherever it is copied (`runs:/<id>/model`).
    pub fn write(&self, model_dir: &Path, run_id: &str) -> Result<()> {
        let text = self.mlmodel_yaml(run_id, None)?;
        write_atomic(&model_dir.join(MLMODEL_FILE), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlmodel_has_the_signature_mlflow_parses() {
        let card = ModelCard {
            model_type: "CNN_LSTM_MultiClass".into(),
            input_shape: vec![2, 32, 40],
            classes: vec!["down".into(), "flat".into(), "up".into()],
            files: BTreeMap::from([("weights".into(), "weights.bpk".into())]),
            metadata: BTreeMap::from([("feature_columns".into(), serde_json::json!(["a", "b"]))]),
        };
        let text = card.mlmodel_yaml("r1", Some("m-1")).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let inputs: serde_json::Value =
            serde_json::from_str(doc["signature"]["inputs"].as_str().unwrap()).unwrap();
        assert_eq!(
            inputs[0]["tensor-spec"]["shape"],
            serde_json::json!([-1, 2, 32, 40])
        );
        assert_eq!(inputs[0]["tensor-spec"]["dtype"], "float32");
        let outputs: serde_json::Value =
            serde_json::from_str(doc["signature"]["outputs"].as_str().unwrap()).unwrap();
        assert_eq!(
            outputs[0]["tensor-spec"]["shape"],
            serde_json::json!([-1, 3])
        );
        assert_eq!(doc["model_id"].as_str(), Some("m-1"));
        assert_eq!(doc["run_id"].as_str(), Some("r1"));
        assert_eq!(doc["flavors"][FLAVOR]["classes"][2].as_str(), Some("up"));
        assert_eq!(doc["metadata"]["feature_columns"][1].as_str(), Some("b"));
        // Without a logged model (the run's copy), no model id.
        let run_copy = card.mlmodel_yaml("r1", None).unwrap();
        assert!(!run_copy.contains("model_id"));
    }
}
