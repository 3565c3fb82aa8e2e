//! Dispatch of subcommands to stages, and the commands that are not stages.

use serde_json::json;

use crate::cli::{Cli, Command, ModelSelector, TrackingCommand};
use crate::config::LoadedConfig;
use crate::data::fetch::{self, FetchSummary};
use crate::diagnostics::stage::{DiagnoseOutput, diagnose};
use crate::predict::{self, ModelRef, PredictOutput};
use crate::preprocess::stage::{PreprocessSummary, preprocess};
use crate::tracking::{self, Metric, Stage, StageRun, StageRunSpec, Tracker, TrackingSettings};
use crate::train::stage::{MODEL_NAME, TrainRequest, TrainSummary, train};
use crate::{Error, Result};

/// What a command produced: a human summary and the same as JSON for `--json`.
#[derive(Debug)]
pub struct Outcome {
    /// Printed on stdout without `--json`.
    pub text: String,
    /// Printed on stdout with `--json`.
    pub json: serde_json::Value,
}

/// Runs `cli.command` with an already loaded and validated configuration.
pub fn execute(cli: &Cli, loaded: &LoadedConfig) -> Result<Outcome> {
    match &cli.command {
        Command::ValidateConfig => Ok(validate_config(loaded)),
        Command::Tracking(TrackingCommand::Sync) => tracking_sync(loaded),
        Command::Fetch(args) => tracked(loaded, Stage::DataCollection, "fetch", &[], |run| {
            let summary = fetch::fetch(&loaded.config, args.force)?;
            log_fetch(run, &summary)?;
            Ok(fetch::outcome(&summary))
        }),
        Command::Preprocess(args) => tracked(
            loaded,
            Stage::Preprocessing,
            "preprocess",
            &[Stage::DataCollection],
            |run| {
                let summary = preprocess(&loaded.config, args.force)?;
                log_preprocess(run, &summary)?;
                Ok(preprocess_outcome(&summary))
            },
        ),
        Command::Diagnose => {
            let out = tracked(
                loaded,
                Stage::DataDiagnostics,
                "diagnose",
                &[Stage::Preprocessing],
                |run| {
                    let out = diagnose(&loaded.config)?;
                    log_diagnose(run, &out)?;
                    Ok(out)
                },
            )?;
            if out.report.failed && loaded.config.data.validation.fail_on_invalid {
                return Err(Error::DiagnosticsFailed(out.report.warnings));
            }
            Ok(diagnose_outcome(&out))
        }
        Command::Train(args) => {
            let req = TrainRequest {
                resume: args.resume,
                progress: true,
            };
            let s = tracked(
                loaded,
                Stage::ModelTraining,
                MODEL_NAME,
                &[Stage::Preprocessing, Stage::DataDiagnostics],
                |run| train(loaded, req, run),
            )?;
            Ok(train_outcome(&s))
        }
        Command::Predict(args) => {
            let which = model_ref(&args.model);
            let range = args.start.as_deref().zip(args.end.as_deref());
            let out = predict::predict(loaded, &which, range)?;
            Ok(predict_outcome(&out))
        }
        other => Err(Error::NotImplemented(other.name())),
    }
}

fn validate_config(loaded: &LoadedConfig) -> Outcome {
    let yaml = loaded.redacted_yaml();
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("our own YAML parses");
    Outcome {
        text: format!(
            "# effective configuration of {} (valid)\n{yaml}",
            loaded.origin
        ),
        json: json!({
            "valid": true,
            "origin": loaded.origin.to_string(),
            "warnings": loaded.warnings,
            "config": config,
        }),
    }
}

fn tracking_sync(loaded: &LoadedConfig) -> Result<Outcome> {
    let _span = tracing::info_span!("tracking_sync").entered();
    let settings = TrackingSettings::from_config(&loaded.config);
    let spool = settings.effective_spool_dir();
    let report = tracking::sync(&spool, &settings)?;
    tracing::info!(
        journals = report.journals,
        replayed = report.ops_replayed,
        busy = report.journals_busy,
        "sync finished"
    );
    Ok(Outcome {
        text: format!(
            "synced {} journal(s) from {}: {} operation(s) replayed, {} already done, {} busy",
            report.journals_completed,
            spool.display(),
            report.ops_replayed,
            report.ops_already_done,
            report.journals_busy
        ),
        json: serde_json::to_value(&report).expect("report serialises"),
    })
}

/// Runs `body` inside an MLflow run of `stage`'s experiment, tagged with the config hash and
/// the latest successful runs of the `consumed` stages for the same configuration (lineage),
/// and holding the redacted configuration; the run ends FINISHED on success, FAILED on error.
fn tracked<T>(
    loaded: &LoadedConfig,
    stage: Stage,
    model: &str,
    consumed: &[Stage],
    body: impl FnOnce(&StageRun<'_>) -> Result<T>,
) -> Result<T> {
    let settings = TrackingSettings::from_config(&loaded.config);
    let tracker = Tracker::open(&settings)?;
    let config_hash = loaded.config_hash();
    let mut input_ids = Vec::new();
    for s in consumed {
        match tracking::latest_successful_run(&tracker, &settings, *s, &config_hash) {
            Ok(Some(run)) => input_ids.push((*s, run.info.run_id)),
            Ok(None) => {}
            // Lineage is worth a warning, not a failed stage.
            Err(e) => tracing::warn!(
                "cannot look up the {} run this stage consumed: {e}",
                s.key()
            ),
        }
    }
    let inputs: Vec<(Stage, &str)> = input_ids.iter().map(|(s, id)| (*s, id.as_str())).collect();
    let yaml = loaded.redacted_yaml();
    let asset = loaded.config.data.asset_pairs.target_asset.to_string();
    let spec = StageRunSpec {
        stage: Some(stage),
        asset: &asset,
        model,
        config_hash: &config_hash,
        config_yaml: &yaml,
        inputs: &inputs,
        ..StageRunSpec::default()
    };
    let run = StageRun::start(&tracker, &settings, &spec)?;
    tracing::info!(run_id = run.run_id(), tracking = %tracker.describe(), "MLflow run started");
    match body(&run) {
        Ok(v) => {
            run.finish()?;
            Ok(v)
        }
        Err(e) => {
            // The stage's own error is the one to report; a failure to mark the run is logged.
            if let Err(t) = run.fail() {
                tracing::warn!("could not mark the MLflow run FAILED: {t}");
            }
            Err(e)
        }
    }
}

fn metrics(pairs: &[(String, f64)]) -> Vec<Metric> {
    let now = chrono::Utc::now().timestamp_millis();
    pairs
        .iter()
        .map(|(k, v)| Metric::new(k, *v, now, 0))
        .collect()
}

fn log_fetch(run: &StageRun<'_>, s: &FetchSummary) -> Result<()> {
    let t = run.tracker();
    t.set_tags(run.run_id(), &[("binance_ml.dataset_hash", s.key.as_str())])?;
    t.log_params(
        run.run_id(),
        &[
            ("cache_dir", s.cache_dir.display().to_string()),
            ("shards", s.shards.to_string()),
        ],
    )?;
    let mut m: Vec<(String, f64)> = s
        .snapshots
        .iter()
        .map(|(sym, n)| (format!("snapshots_{sym}"), *n as f64))
        .collect();
    m.push(("shards_fetched".into(), s.shards_fetched as f64));
    m.push(("shards_reused".into(), s.shards_reused as f64));
    m.push(("rows_dropped".into(), s.quality.rows_dropped() as f64));
    m.push((
        "snapshots_dropped".into(),
        s.quality.snapshots_dropped() as f64,
    ));
    t.log_metrics(run.run_id(), &metrics(&m))?;
    Ok(())
}

fn log_preprocess(run: &StageRun<'_>, s: &PreprocessSummary) -> Result<()> {
    let t = run.tracker();
    let key = s
        .store_dir
        .file_name()
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default();
    t.set_tags(run.run_id(), &[("binance_ml.dataset_hash", key.as_str())])?;
    t.log_params(
        run.run_id(),
        &[
            ("store_dir", s.store_dir.display().to_string()),
            ("columns", s.columns.to_string()),
            ("steps", s.steps.to_string()),
        ],
    )?;
    let m = [("train", 0), ("validation", 1), ("test", 2)]
        .map(|(n, i)| (format!("samples_{n}"), s.samples[i] as f64));
    t.log_metrics(run.run_id(), &metrics(&m))?;
    t.log_artifact(
        run.run_id(),
        &s.store_dir.join("manifest.json"),
        "preprocessing",
    )?;
    Ok(())
}

fn preprocess_outcome(s: &PreprocessSummary) -> Outcome {
    Outcome {
        text: format!(
            "{}\n{} steps, {} feature columns; samples: train {}, validation {}, test {}{}",
            s.store_dir.display(),
            s.steps,
            s.columns,
            s.samples[0],
            s.samples[1],
            s.samples[2],
            if s.reused { " (reused)" } else { "" }
        ),
        json: serde_json::to_value(s).expect("summary serialises"),
    }
}

fn log_diagnose(run: &StageRun<'_>, out: &DiagnoseOutput) -> Result<()> {
    let t = run.tracker();
    let r = &out.report;
    let mut m = Vec::new();
    for (asset, st) in &r.spreads {
        m.push((format!("{asset}_spread_median_bps"), st.median_bps));
        m.push((format!("{asset}_spread_mean_bps"), st.mean_bps));
        m.push((format!("{asset}_spread_p99_bps"), st.p99_bps));
        m.push((format!("{asset}_spread_share_zero"), st.share_zero));
        m.push((format!("{asset}_spread_share_wide"), st.share_wide));
    }
    let max_psi = r
        .psi
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    m.push(("psi_max".into(), max_psi));
    m.push(("warnings".into(), r.warnings.len() as f64));
    t.log_metrics(run.run_id(), &metrics(&m))?;
    t.set_tags(
        run.run_id(),
        &[(
            "binance_ml.diagnostics_failed",
            if r.failed { "true" } else { "false" },
        )],
    )?;
    for file in &out.artifacts {
        run.log_diagnostic(file)?;
    }
    Ok(())
}

fn diagnose_outcome(out: &DiagnoseOutput) -> Outcome {
    let text = format!(
        "{}\n{}",
        out.artifacts_dir.display(),
        crate::diagnostics::summary_text(&out.report)
    );
    Outcome {
        text,
        json: serde_json::to_value(out).expect("report serialises"),
    }
}

fn train_outcome(s: &TrainSummary) -> Outcome {
    let mut text = format!(
        "{}\nrun {} on {}: {} epoch(s), weights of epoch {}{}{}",
        s.model_dir.display(),
        s.run_id,
        s.device,
        s.epochs,
        s.weights_epoch,
        if s.stopped_early {
            " (early stopping)"
        } else {
            ""
        },
        s.resumed_after_epoch
            .map(|e| format!(", resumed after epoch {e}"))
            .unwrap_or_default(),
    );
    if let Some(m) = &s.metrics {
        text.push_str(&format!(
            "\ntrain loss {:.4} accuracy {:.3}",
            m.loss, m.accuracy
        ));
        if let (Some(l), Some(a), Some(f)) = (m.val_loss, m.val_accuracy, m.val_f1) {
            text.push_str(&format!(
                "; validation loss {l:.4} accuracy {a:.3} macro F1 {f:.3}"
            ));
        }
    }
    if let Some((name, version)) = &s.registered {
        text.push_str(&format!("\nregistered as {name} version {version}"));
    }
    Outcome {
        text,
        json: serde_json::to_value(s).expect("summary serialises"),
    }
}

fn model_ref(m: &ModelSelector) -> ModelRef {
    match (&m.run_id, m.model_version, &m.model_alias) {
        (Some(id), _, _) => ModelRef::Run(id.clone()),
        (_, Some(v), _) => ModelRef::Version(v),
        (_, _, Some(a)) => ModelRef::Alias(a.clone()),
        _ => ModelRef::Latest,
    }
}

/// Table on stdout; with `--json` one JSON object per window (JSON lines).
fn predict_outcome(out: &PredictOutput) -> Outcome {
    let lines = out
        .predictions
        .iter()
        .map(|p| {
            let probs: serde_json::Map<String, serde_json::Value> = out
                .classes
                .iter()
                .zip(&p.probabilities)
                .map(|(c, v)| (c.clone(), json!(v)))
                .collect();
            json!({
                "timestamp": p.timestamp,
                "probabilities": probs,
                "predicted_class": p.predicted_class,
                "expected_move_pct": p.expected_move_pct,
                "horizon_seconds": out.horizon_seconds,
                "run_id": out.run_id,
            })
        })
        .collect();
    Outcome {
        text: predict::table(out),
        json: serde_json::Value::Array(lines),
    }
}
