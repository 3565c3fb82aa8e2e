//! `finetune`: continue a base model on new data and promote it only when it is better.
//!
//! 1. The base model (run id or registry alias) and its configuration snapshot are fetched.
//! 2. The lineage's representation — what defines data, features, labels and model
//!    (`data`, `targets`, `preprocessing`, `model`) — must equal the snapshot's but for the
//!    allowed overrides (`data.source_name`, `data.time_range.start_date/end_date`) and where
//!    things run (database connection, file paths, backend/device, memory budgets); any other
//!    difference is an error listing every key with both values. How a night trains
//!    (`training`, including `training.fine_tuning`, and the optimizer in
//!    `model.compilation`) is the fine-tune's own and never compared, so the snapshot of a
//!    fine-tuned model (which records the epochs and learning rate it used) matches the same
//!    nightly configuration the next night.
//! 3. The new range is fetched and preprocessed with the BASE model's scaler (never refit), the
//!    base weights are trained on (`fine_tuning.epochs`, `fine_tuning.learning_rate`), and base
//!    and fine-tuned models are evaluated on the same new test split.
//! 4. The new version becomes `champion` only when the promotion metric improves by at least
//!    `min_improvement`; otherwise it is tagged `challenger`.
//!
//! Idempotent: a fine-tune of the same base (as named: run id or alias) with the same
//! configuration that already finished is reported, not repeated; runs of an interrupted
//! attempt are marked FAILED and its checkpoint is resumed.

use serde::Serialize;
use serde_json::Value;

use super::error::{Error, FinetuneError, Result};
use super::{Pipeline, tracked};
use crate::config::LoadedConfig;
use crate::data::cache::sha256_hex;
use crate::evaluate::stage::{EvaluateRequest, EvaluateSummary};
use crate::model::ModelArtifact;
use crate::predict::{ModelRef, locate_model, remember_alias, resolve_alias};
use crate::preprocess::stage::preprocess_with;
use crate::store::store_dir_with;
use crate::tracking::{CHAMPION, RunStatus, Stage, Tracker, TrackingSettings, format_model_name};
use crate::train::stage::{MODEL_NAME, TrainRequest, TrainSummary};
use crate::train::{Split, TrainError};

/// The sections that define a lineage's representation (data, features, labels, model): the
/// only ones compared with the base run's snapshot.
pub const REPRESENTATION: &[&str] = &["data", "targets", "preprocessing", "model"];

/// Keys of the representation the current configuration may change relative to the base.
pub const ALLOWED_OVERRIDES: &[&str] = &[
    "data.source_name",
    "data.time_range.start_date",
    "data.time_range.end_date",
];

/// Keys inside the representation about where and how the job runs, not what the model
/// means: taken from the current configuration without comparison. `model.compilation` is the
/// optimizer (the fine-tune's learning rate lands there), not the model.
pub const OPERATIONAL_KEYS: &[&str] = &[
    "data.connection",
    "data.files",
    "model.backend",
    "model.device",
    "model.compilation",
    "preprocessing.memory",
];

/// Tag carrying the idempotency key of a fine-tune.
pub const TAG_FINETUNE_KEY: &str = "binance_ml.finetune_key";

/// What a fine-tune produced.
#[derive(Debug, Serialize)]
pub struct FinetuneSummary {
    /// The parent run of this fine-tune.
    pub run_id: String,
    /// The base model's training run.
    pub base_run_id: String,
    /// The fine-tuned model's training run.
    pub new_run_id: String,
    /// Registered version of the new model (with a server).
    pub new_version: Option<String>,
    /// The promotion metric.
    pub metric: String,
    /// Its value for the base model on the new test split.
    pub base_score: f64,
    /// Its value for the fine-tuned model.
    pub new_score: f64,
    /// `champion` or `challenger`.
    pub decision: String,
    /// Whether the registry alias was moved (needs a server).
    pub alias_set: bool,
    /// True when this fine-tune had already finished and nothing was redone.
    pub already_done: bool,
}

/// Flattened differences between two JSON trees, skipping `skip` key prefixes.
fn differences(a: &Value, b: &Value, path: &str, skip: &[&str], out: &mut Vec<String>) {
    if skip
        .iter()
        .any(|s| path == *s || path.starts_with(&format!("{s}.")))
    {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &p,
                    skip,
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: base {a}, now {b}")),
        _ => {}
    }
}

/// Every representation key (outside the allowed and operational ones) whose value differs
/// between the base snapshot and the current configuration, both redacted YAML.
pub fn forbidden_changes(base_yaml: &str, current_yaml: &str) -> Result<Vec<String>, String> {
    let parse = |y: &str| -> Result<Value, String> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(y).map_err(|e| e.to_string())?;
        serde_json::to_value(v).map_err(|e| e.to_string())
    };
    let skip: Vec<&str> = ALLOWED_OVERRIDES
        .iter()
        .chain(OPERATIONAL_KEYS)
        .copied()
        .collect();
    let (base, current) = (parse(base_yaml)?, parse(current_yaml)?);
    let mut out = Vec::new();
    for section in REPRESENTATION {
        let get = |v: &Value| v.get(section).cloned().unwrap_or(Value::Null);
        differences(&get(&base), &get(&current), section, &skip, &mut out);
    }
    out.sort();
    Ok(out)
}

/// The promotion metric's value in evaluation scores (`cohen_kappa` is `kappa` there).
fn promotion_value(s: &EvaluateSummary, metric: &str) -> f64 {
    let name = if metric == "cohen_kappa" {
        "kappa"
    } else {
        metric
    };
    s.scores
        .pairs()
        .into_iter()
        .find(|(k, _)| k == name)
        .map_or(f64::NAN, |(_, v)| v)
}

/// Runs a fine-tune (see the module docs), its runs nested under `parent` when given.
/// `base_run_id`/`base_alias` come from the command line and win over `training.fine_tuning`.
pub fn finetune(
    loaded: &LoadedConfig,
    parent: Option<&str>,
    base_run_id: Option<&str>,
    base_alias: Option<&str>,
) -> Result<FinetuneSummary> {
    let _span = tracing::info_span!("finetune").entered();
    let ft = &loaded.config.training.fine_tuning;
    let base_ref = match (
        base_run_id.or(ft.base_model_run_id.as_deref()),
        base_alias.or(ft.base_model_alias.as_deref()),
    ) {
        (Some(id), _) => ModelRef::Run(id.to_owned()),
        (None, Some(alias)) => ModelRef::Alias(alias.to_owned()),
        (None, None) => return Err(FinetuneError::NoBase.into()),
    };
    let (base_run, base_dir) = locate_model(loaded, &base_ref)?;
    let base = ModelArtifact::load(&base_dir, &burn::tensor::Device::flex())?;
    let forbidden = forbidden_changes(&base.config_yaml, &loaded.redacted_yaml())
        .map_err(|e| TrainError::Option(format!("reading the base run's snapshot: {e}")))?;
    if !forbidden.is_empty() {
        return Err(FinetuneError::Forbidden {
            allowed: ALLOWED_OVERRIDES,
            differences: forbidden,
        }
        .into());
    }

    // The effective configuration: the current one (equal to the base on every compared key)
    // with the fine-tuning epochs and learning rate.
    let mut effective = loaded.clone();
    let c = &mut effective.config;
    c.training.epochs = ft.epochs.unwrap_or(c.training.epochs);
    c.model.compilation.learning_rate = ft
        .learning_rate
        .unwrap_or(c.model.compilation.learning_rate);
    // Keyed by the base as named, not as resolved: once a night has moved `champion`, the
    // same night again must still find itself.
    let named_base = match &base_ref {
        ModelRef::Alias(a) => format!("alias:{a}"),
        _ => base_run.clone(),
    };
    let key = sha256_hex(format!("{named_base}\n{}", effective.config_hash()).as_bytes())[..16]
        .to_owned();
    let settings = TrackingSettings::from_config(&effective.config);
    let tracker = Tracker::open(&settings)?;
    // The parent run (model `finetune`) finishes last: only then is the fine-tune complete.
    let finished = previous(&tracker, &settings, &key, RunStatus::Finished)?;
    if let Some(done) = finished
        .iter()
        .find(|r| r.data.tag("binance_ml.model") == Some("finetune"))
    {
        tracing::info!(run_id = %done.info.run_id, "this fine-tune already finished; nothing redone");
        let tag = |k: &str| done.data.tag(k).unwrap_or_default().to_owned();
        let num = |k: &str| tag(k).parse().unwrap_or(f64::NAN);
        return Ok(FinetuneSummary {
            run_id: done.info.run_id.clone(),
            base_run_id: tag("binance_ml.base_run"),
            new_run_id: tag("binance_ml.train_run"),
            new_version: Some(tag("binance_ml.new_version")).filter(|v| !v.is_empty()),
            metric: ft.promotion.metric.clone(),
            base_score: num("binance_ml.base_score"),
            new_score: num("binance_ml.new_score"),
            decision: tag("binance_ml.promotion"),
            alias_set: tag("binance_ml.alias_set") == "true",
            already_done: true,
        });
    }
    // An interrupted attempt: its runs end FAILED; its checkpoint is resumed below.
    for stale in previous(&tracker, &settings, &key, RunStatus::Running)? {
        tracing::warn!(run_id = %stale.info.run_id, "marking a run of an interrupted fine-tune FAILED");
        tracker.end_run(&stale.info.run_id, RunStatus::Failed)?;
    }

    let base_version = match &base_ref {
        ModelRef::Alias(a) => {
            let name = format_model_name(
                &settings.model_name_pattern,
                &effective.config.data.asset_pairs.target_asset.to_string(),
                MODEL_NAME,
            )?;
            Some(resolve_alias(&tracker, &effective.config.workdir, &name, a)?.version)
        }
        _ => None,
    };
    let effective = &effective;
    tracked(
        effective,
        parent,
        Stage::ModelTraining,
        "finetune",
        &[],
        |parent| {
            let t = parent.tracker();
            let mut lineage = vec![
                (TAG_FINETUNE_KEY.to_owned(), key.clone()),
                ("binance_ml.base_run".to_owned(), base_run.clone()),
            ];
            if let Some(v) = &base_version {
                lineage.push(("binance_ml.base_model_version".into(), v.clone()));
            }
            t.set_tags(parent.run_id(), &lineage)?;
            let p = Pipeline {
                loaded: effective,
                parent: Some(parent.run_id()),
            };
            p.fetch(false)?;
            let cfg = &effective.config;
            let store = store_dir_with(cfg, Some(&base.manifest.scaler))?;
            // The same tracked wrapper as `preprocess`, with the base scaler.
            super::tracked(
                effective,
                Some(parent.run_id()),
                Stage::Preprocessing,
                "preprocess",
                &[Stage::DataCollection],
                |run| {
                    let s = preprocess_with(cfg, false, Some(&base.manifest.scaler))?;
                    super::log_preprocess(run, &s)?;
                    Ok(s)
                },
            )?;
            // A checkpoint left by an interrupted attempt of this same fine-tune is continued.
            let trained: TrainSummary = p.train(TrainRequest {
                progress: true,
                store: Some(store.clone()),
                init: Some(base_dir.clone()),
                resume_existing: true,
                tags: lineage.clone(),
                ..TrainRequest::default()
            })?;
            let eval = |model: ModelRef, save_temperature: bool| {
                p.evaluate(&EvaluateRequest {
                    model,
                    split: Split::Test,
                    range: None,
                    store: Some(store.clone()),
                    save_temperature,
                })
            };
            let base_eval = eval(ModelRef::Run(base_run.clone()), false)?;
            let new_eval = eval(ModelRef::Run(trained.run_id.clone()), true)?;
            let metric = &cfg.training.fine_tuning.promotion.metric;
            let (b, n) = (
                promotion_value(&base_eval, metric),
                promotion_value(&new_eval, metric),
            );
            // A registered model that had no champion gave it to this version (its first).
            let bootstrapped = trained.registered.as_ref().is_some_and(|(name, v)| {
                t.version_by_alias(name, CHAMPION)
                    .is_ok_and(|c| &c.version == v)
            });
            let promote =
                bootstrapped || n - b >= cfg.training.fine_tuning.promotion.min_improvement;
            let decision = if promote { CHAMPION } else { "challenger" };
            let mut alias_set = false;
            if let Some((name, version)) = &trained.registered {
                t.set_alias(name, decision, version)?;
                // Journaled or applied: either way the champion this machine knows now.
                remember_alias(
                    &cfg.workdir,
                    decision,
                    &crate::tracking::ModelVersion {
                        name: name.clone(),
                        version: version.clone(),
                        run_id: trained.run_id.clone(),
                        ..Default::default()
                    },
                );
                alias_set = true;
            } else {
                tracing::warn!(
                    "no model registry on this tracking store: the {decision} alias was not set"
                );
            }
            tracing::info!(metric = %metric, base = b, new = n, decision, "promotion decision");
            let new_version = trained.registered.as_ref().map(|(_, v)| v.clone());
            let mut tags = vec![
                ("binance_ml.train_run".to_owned(), trained.run_id.clone()),
                ("binance_ml.promotion".to_owned(), decision.to_owned()),
                ("binance_ml.alias_set".to_owned(), alias_set.to_string()),
                ("binance_ml.base_score".to_owned(), b.to_string()),
                ("binance_ml.new_score".to_owned(), n.to_string()),
            ];
            if let Some(v) = &new_version {
                tags.push(("binance_ml.new_version".into(), v.clone()));
            }
            t.set_tags(parent.run_id(), &tags)?;
            t.set_tags(
                &trained.run_id,
                &[("binance_ml.promotion", decision.to_owned())],
            )?;
            Ok(FinetuneSummary {
                run_id: parent.run_id().to_owned(),
                base_run_id: base_run.clone(),
                new_run_id: trained.run_id.clone(),
                new_version,
                metric: metric.clone(),
                base_score: b,
                new_score: n,
                decision: decision.into(),
                alias_set,
                already_done: false,
            })
        },
    )
}

/// Runs of this fine-tune (by key) in the training experiment with `status`. With the server
/// unreachable (the job then journals to the spool) there is nothing to compare with: none.
fn previous(
    tracker: &Tracker,
    settings: &TrackingSettings,
    key: &str,
    status: RunStatus,
) -> Result<Vec<crate::tracking::Run>> {
    match lookup(tracker, settings, key, status) {
        Err(Error::Tracking(e)) if e.is_unreachable() => {
            tracing::warn!(
                "MLflow unreachable: cannot check for an earlier run of this fine-tune ({e})"
            );
            Ok(Vec::new())
        }
        other => other,
    }
}

fn lookup(
    tracker: &Tracker,
    settings: &TrackingSettings,
    key: &str,
    status: RunStatus,
) -> Result<Vec<crate::tracking::Run>> {
    let Some(exp) = tracker
        .store()
        .experiment_by_name(settings.experiments.name(Stage::ModelTraining))?
    else {
        return Ok(Vec::new());
    };
    let filter = format!(
        "tags.`{TAG_FINETUNE_KEY}` = '{key}' and attributes.status = '{}'",
        status.as_str()
    );
    Ok(tracker.search_runs(
        &[exp.experiment_id],
        &filter,
        &["attributes.start_time DESC"],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_and_operational_keys_may_differ() {
        let base = "workdir: a\ndata:\n  source_name: x\n  time_range: {start_date: '2024-08-01', end_date: '2024-08-01', cadence_seconds: 10}\n  connection: {database_uri: '***'}\ntargets: {prediction_horizon_seconds: 60}\nmodel: {lstm: {units: 8}, device: cpu}\n";
        let ok = "workdir: b\ndata:\n  source_name: y\n  time_range: {start_date: '2024-08-02', end_date: '2024-08-02', cadence_seconds: 10}\n  connection: {database_uri: 'other'}\ntargets: {prediction_horizon_seconds: 60}\nmodel: {lstm: {units: 8}, device: cuda:0}\n";
        assert_eq!(forbidden_changes(base, ok).unwrap(), Vec::<String>::new());
        let bad = ok
            .replace(
                "prediction_horizon_seconds: 60",
                "prediction_horizon_seconds: 300",
            )
            .replace("units: 8", "units: 16")
            .replace("cadence_seconds: 10", "cadence_seconds: 1");
        let d = forbidden_changes(base, &bad).unwrap();
        assert_eq!(
            d,
            vec![
                "data.time_range.cadence_seconds: base 10, now 1",
                "model.lstm.units: base 8, now 16",
                "targets.prediction_horizon_seconds: base 60, now 300",
            ]
        );
    }

    #[test]
    fn a_fine_tuned_snapshot_matches_the_unchanged_nightly_configuration() {
        // Night 1's model records what it used: 3 epochs at 0.0002, fine-tuning enabled.
        let night1 = "training: {epochs: 3, fine_tuning: {enabled: true, epochs: 3, learning_rate: 0.0002}}\nmodel: {compilation: {learning_rate: 0.0002}, lstm: {units: 8}}\nevaluation: {x: 1}\n";
        let nightly = "training: {epochs: 5, fine_tuning: {enabled: true, epochs: 3, learning_rate: 0.0002}}\nmodel: {compilation: {learning_rate: 0.001}, lstm: {units: 8}}\nevaluation: {x: 2}\nhyperparameter_optimization: {enabled: true}\n";
        assert_eq!(
            forbidden_changes(night1, nightly).unwrap(),
            Vec::<String>::new()
        );
        let changed = nightly.replace("units: 8", "units: 9");
        assert_eq!(
            forbidden_changes(night1, &changed).unwrap(),
            vec!["model.lstm.units: base 8, now 9"]
        );
    }
}
