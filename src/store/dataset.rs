//! The preprocessed store as an MLflow dataset: what training and evaluation runs record as
//! their input.

use super::manifest::StoreManifest;
use crate::data::cache::CacheReader;
use crate::tracking::{Dataset, file_uri};

/// Split names in manifest order.
const SPLITS: [&str; 3] = ["train", "validation", "test"];

impl StoreManifest {
    /// The store as an MLflow dataset: digest = the store key, source = the fetch cache it
    /// was built from and that cache's origin, schema = the row columns (float32), profile =
    /// samples and class counts per split.
    pub fn dataset(&self) -> Dataset {
        // A cache deleted since is only a poorer description, not an error.
        let (origin, cache_key) = CacheReader::open(&self.data_cache)
            .map(|r| {
                let m = r.manifest();
                (m.metadata.source.clone(), m.key.clone())
            })
            .unwrap_or_else(|_| ("unknown (fetch cache missing)".into(), String::new()));
        let source = serde_json::json!({
            "uri": file_uri(&self.data_cache),
            "cache_key": cache_key,
            "origin": origin,
        });
        let schema = serde_json::json!({
            "mlflow_colspec": self.columns.iter()
                .map(|c| serde_json::json!({"name": c, "type": "float", "required": true}))
                .collect::<Vec<_>>(),
        });
        let per_split = |f: &dyn Fn(usize) -> serde_json::Value| {
            SPLITS
                .iter()
                .enumerate()
                .map(|(i, s)| ((*s).to_owned(), f(i)))
                .collect::<serde_json::Map<_, _>>()
        };
        let profile = serde_json::json!({
            "samples": per_split(&|i| self.class_counts[i].iter().sum::<u64>().into()),
            "class_counts": per_split(&|i| serde_json::json!(self.class_counts[i])),
            "classes": self.class_names,
            "assets": self.assets,
            "window_steps": self.window_steps,
            "cadence_ms": self.cadence_ms,
            "grid_steps": self.steps,
        });
        Dataset {
            name: format!("{}_preprocessed", self.assets.join("_")),
            digest: self.key.clone(),
            source_type: "local".into(),
            source: source.to_string(),
            schema: Some(schema.to_string()),
            profile: Some(profile.to_string()),
        }
    }
}
