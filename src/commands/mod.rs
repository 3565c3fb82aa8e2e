//! Dispatch of subcommands to stages, and the commands that are not stages.

pub mod error;

use serde_json::json;

pub use error::{Error, Result};

use crate::cli::{Cli, Command, EvalSplit, ModelSelector, TrackingCommand};
use crate::config::{LoadedConfig, Symbol};
use crate::data::fetch::FetchSummary;
use crate::diagnostics::stage::DiagnoseOutput;
use crate::evaluate::stage::{EvaluateRequest, EvaluateSummary};
use crate::pipeline::finetune::{self, FinetuneSummary};
use crate::pipeline::lock::WorkdirLock;
use crate::pipeline::replay::{self, ReplayRequest, ReplaySummary};
use crate::pipeline::{self, Pipeline, RunSummary, Step};
use crate::predict::{self, ModelRef, PredictOutput};
use crate::preprocess::stage::PreprocessSummary;
use crate::record::{self, RecordError, RecordRequest, RecordSummary};
use crate::tracking::{self, TrackingSettings};
use crate::train::Split;
use crate::train::stage::{TrainRequest, TrainSummary};

/// What a command produced: a human summary and the same as JSON for `--json`.
#[derive(Debug)]
pub struct Outcome {
    /// Printed on stdout without `--json`.
    pub text: String,
    /// Printed on stdout with `--json`.
    pub json: serde_json::Value,
}

impl Outcome {
    /// `text` for people and `summary` serialised for `--json`.
    fn of(text: String, summary: &impl serde::Serialize) -> Self {
        Outcome {
            text,
            json: serde_json::to_value(summary).expect("summaries serialise"),
        }
    }
}

/// Runs `cli.command` with an already loaded and validated configuration.
pub fn execute(cli: &Cli, loaded: &LoadedConfig) -> Result<Outcome> {
    let p = Pipeline::new(loaded);
    // Stages that write to the work directory take its lock (predict and the read-only
    // commands do not; record writes to the database or its own files).
    let lock = match &cli.command {
        Command::Fetch(_)
        | Command::Preprocess(_)
        | Command::Diagnose
        | Command::Train(_)
        | Command::Finetune(_)
        | Command::Evaluate(_)
        | Command::Run(_)
        | Command::Replay(_) => Some(
            WorkdirLock::acquire(&loaded.config.workdir, cli.command.name())
                .map_err(pipeline::Error::from)?,
        ),
        _ => None,
    };
    if lock.is_some() {
        // Runs a killed process of this work directory left RUNNING end FAILED now.
        tracking::fail_dead_runs(&TrackingSettings::from_config(&loaded.config));
    }
    let outcome = dispatch(cli, loaded, &p)?;
    drop(lock);
    Ok(note_provisional_ids(outcome))
}

/// Appends, when this command journaled MLflow writes, that the ids it printed are
/// provisional and how to learn the server's.
fn note_provisional_ids(mut outcome: Outcome) -> Outcome {
    if !tracking::spool::journaled_in_this_process() {
        return outcome;
    }
    outcome.text.push_str(
        "\nMLflow was not reached: its writes are journaled, and the run ids and model versions \
         above are provisional. `binance-ml tracking sync` sends them and prints the server id \
         of each (every synced run carries its provisional id in the tag binance_ml.client_id).",
    );
    if let serde_json::Value::Object(map) = &mut outcome.json {
        map.insert("provisional_ids".into(), json!(true));
    }
    outcome
}

fn dispatch(cli: &Cli, loaded: &LoadedConfig, p: &Pipeline<'_>) -> Result<Outcome> {
    match &cli.command {
        Command::ValidateConfig => Ok(validate_config(loaded)),
        Command::Tracking(TrackingCommand::Sync) => tracking_sync(loaded),
        Command::Fetch(args) => Ok(fetch_outcome(&p.fetch(args.force)?)),
        Command::Preprocess(args) => Ok(preprocess_outcome(&p.preprocess(args.force)?)),
        Command::Diagnose => Ok(diagnose_outcome(&p.diagnose()?)),
        Command::Train(args) => Ok(train_outcome(&p.train(TrainRequest {
            resume: args.resume,
            progress: true,
            ..TrainRequest::default()
        })?)),
        Command::Evaluate(args) => {
            let req = EvaluateRequest {
                model: model_ref(&args.model),
                split: match args.split {
                    EvalSplit::Test => Split::Test,
                    EvalSplit::Val => Split::Validation,
                },
                range: args.start.clone().zip(args.end.clone()),
                store: None,
                save_temperature: true,
            };
            Ok(evaluate_outcome(&p.evaluate(&req)?))
        }
        Command::Predict(args) => {
            let which = model_ref(&args.model);
            let range = args.start.as_deref().zip(args.end.as_deref());
            let out = predict::predict(loaded, &which, range)?;
            Ok(predict_outcome(&out))
        }
        Command::Finetune(args) => {
            let s = finetune::finetune(
                loaded,
                None,
                args.base_run_id.as_deref(),
                args.base_model_alias.as_deref(),
            )?;
            Ok(finetune_outcome(&s))
        }
        Command::Run(args) => {
            let s = pipeline::run(
                loaded,
                args.from.unwrap_or(Step::Fetch),
                args.until.unwrap_or(Step::Evaluate),
            )?;
            Ok(run_outcome(&s))
        }
        Command::Replay(args) => {
            let s = replay::replay(
                loaded,
                ReplayRequest {
                    train_days: args.train_days,
                    window_days: args.window_days.unwrap_or(args.train_days),
                },
            )?;
            Ok(replay_outcome(&s))
        }
        Command::Record(args) => {
            let duration = args
                .duration
                .as_deref()
                .map(record::parse_duration)
                .transpose()?;
            let symbols = args
                .symbols
                .iter()
                .map(|s| Symbol::new(s).map_err(|e| RecordError::Usage(format!("--symbols: {e}"))))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let req = RecordRequest {
                duration,
                symbols,
                mode: args.mode,
            };
            Ok(record_outcome(&record::record(&loaded.config, &req)?))
        }
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
        failed = report.failed.len(),
        "sync finished"
    );
    let mut text = format!(
        "synced {} journal(s) from {}: {} operation(s) replayed, {} already done, {} busy",
        report.journals_completed,
        spool.display(),
        report.ops_replayed,
        report.ops_already_done,
        report.journals_busy
    );
    if !report.ids.is_empty() {
        text.push_str("\nprovisional id -> server id:");
        for m in &report.ids {
            text.push_str(&format!("\n  {} -> {}", m.local, m.server));
        }
    }
    if report.failed.is_empty() {
        return Ok(Outcome::of(text, &report));
    }
    for f in &report.failed {
        text.push_str(&format!(
            "\nnot applied: {} #{} {}: {}",
            f.journal, f.seq, f.op, f.error
        ));
    }
    if report.ops_waiting_on_failed > 0 {
        text.push_str(&format!(
            "\n{} operation(s) wait for one of those",
            report.ops_waiting_on_failed
        ));
    }
    Err(Error::SyncIncomplete {
        summary: text,
        failed: report.failed.len(),
    })
}

/// The summary as printed: the cache path first (for scripts), then the counts.
fn fetch_outcome(s: &FetchSummary) -> Outcome {
    let q = &s.quality;
    let mut text = format!(
        "{}\nshards: {} ({} fetched, {} reused, of which {} from another time range)\n",
        s.cache_dir.display(),
        s.shards,
        s.shards_fetched,
        s.shards_reused,
        s.shards_linked
    );
    for (symbol, n) in &s.snapshots {
        text.push_str(&format!("{symbol}: {n} snapshots\n"));
    }
    text.push_str(&format!(
        "quality: {} rows read, {} dropped, {} filtered by the source; {} of {} snapshots dropped \
         ({} missing levels, {} crossed, {} conflicting duplicates, {} unsorted levels)\n",
        q.rows_read,
        q.rows_dropped(),
        q.rows_filtered_in_source,
        q.snapshots_dropped(),
        q.snapshots_read,
        q.snapshots_dropped_missing_levels,
        q.snapshots_dropped_crossed,
        q.snapshots_dropped_conflicting_duplicates,
        q.snapshots_dropped_unsorted_levels,
    ));
    Outcome::of(text, s)
}

fn preprocess_outcome(s: &PreprocessSummary) -> Outcome {
    Outcome::of(
        format!(
            "{}\n{} steps, {} feature columns; samples: train {}, validation {}, test {}{}",
            s.store_dir.display(),
            s.steps,
            s.columns,
            s.samples[0],
            s.samples[1],
            s.samples[2],
            if s.reused { " (reused)" } else { "" }
        ),
        s,
    )
}

fn diagnose_outcome(out: &DiagnoseOutput) -> Outcome {
    let text = format!(
        "{}\n{}",
        out.artifacts_dir.display(),
        crate::diagnostics::summary_text(&out.report)
    );
    Outcome::of(text, out)
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
    Outcome::of(text, s)
}

fn model_ref(m: &ModelSelector) -> ModelRef {
    match (&m.run_id, m.model_version, &m.model_alias) {
        (Some(id), _, _) => ModelRef::Run(id.clone()),
        (_, Some(v), _) => ModelRef::Version(v),
        (_, _, Some(a)) => ModelRef::Alias(a.clone()),
        _ => ModelRef::Latest,
    }
}

/// Table on stdout; with `--json` one JSON object per window (JSON lines). `probabilities`
/// is keyed by class name (a JSON object has no order: readers look classes up by name);
/// `classes` and `class_probabilities` hold the same in class order, lowest move first.
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
                "classes": out.classes,
                "class_probabilities": p.probabilities,
                "predicted_class": p.predicted_class,
                "expected_move_pct": p.expected_move_pct,
                "horizon_seconds": out.horizon_seconds,
                "temperature": out.temperature,
                "run_id": out.run_id,
            })
        })
        .collect();
    Outcome {
        text: predict::table(out),
        json: serde_json::Value::Array(lines),
    }
}

fn evaluate_outcome(s: &EvaluateSummary) -> Outcome {
    let lost = s.baselines_not_beaten();
    let text = format!(
        "{}\nrun {} ({} split, {} samples, model run {}): accuracy {:.4}, macro F1 {:.4}; {}\n\
         ECE {:.4} -> {:.4} with temperature {:.3}; accuracy slope over slices {:+.4}",
        s.artifacts_dir.join("summary.md").display(),
        s.run_id,
        s.split,
        s.samples,
        s.model_run_id,
        s.scores.accuracy,
        s.scores.macro_f1,
        if lost.is_empty() {
            "beats every baseline".to_owned()
        } else {
            format!("does NOT beat: {}", lost.join(", "))
        },
        s.ece[0],
        s.ece[1],
        s.temperature,
        s.degradation_slope,
    );
    Outcome::of(text, s)
}

fn replay_outcome(s: &ReplaySummary) -> Outcome {
    let mut text = format!(
        "replay run {} ({} day(s), {} resumed; base {})\n",
        s.run_id,
        s.days.len(),
        s.resumed_days,
        s.base_run
    );
    for t in &s.totals {
        text.push_str(&format!(
            "  {:<8} mean accuracy {:.4}, macro F1 {:.4}, log loss {:.4}, compounded return {}\n",
            t.policy,
            t.accuracy,
            t.macro_f1,
            t.log_loss,
            replay::signed(t.backtest_return)
        ));
    }
    text.push_str(&format!("  table and chart: {}", s.dir.display()));
    Outcome::of(text, s)
}

fn run_outcome(s: &RunSummary) -> Outcome {
    let mut parts = vec![format!("pipeline run {}", s.run_id)];
    if let Some(f) = &s.fetch {
        parts.push(format!("fetch: {}", f.cache_dir.display()));
    }
    if let Some(p) = &s.preprocess {
        parts.push(format!("preprocess: {}", p.store_dir.display()));
    }
    if let Some(d) = &s.diagnose {
        parts.push(format!(
            "diagnose: {} warning(s), {}",
            d.report.warnings.len(),
            d.artifacts_dir.display()
        ));
    }
    if let Some(t) = &s.train {
        parts.push(format!(
            "train: {}",
            train_outcome(t).text.replace('\n', "\n  ")
        ));
    }
    if let Some(e) = &s.evaluate {
        parts.push(format!(
            "evaluate: {}",
            evaluate_outcome(e).text.replace('\n', "\n  ")
        ));
    }
    Outcome::of(parts.join("\n"), s)
}

fn finetune_outcome(s: &FinetuneSummary) -> Outcome {
    let text = if s.already_done {
        format!(
            "fine-tune {} of base run {} had already finished: model run {}, {} ({} {} vs {}); nothing redone",
            s.run_id, s.base_run_id, s.new_run_id, s.decision, s.metric, s.new_score, s.base_score
        )
    } else {
        format!(
            "fine-tune {}: base run {} -> model run {}{}\n{} on the new test split: base {:.4}, fine-tuned {:.4} -> {}{}",
            s.run_id,
            s.base_run_id,
            s.new_run_id,
            s.new_version
                .as_ref()
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default(),
            s.metric,
            s.base_score,
            s.new_score,
            s.decision,
            if s.alias_set {
                ""
            } else {
                " (no registry: alias not set)"
            },
        )
    };
    Outcome::of(text, s)
}

fn record_outcome(s: &RecordSummary) -> Outcome {
    let mut text = format!(
        "{}\n{} snapshot(s) written ({:?} mode, stopped by {}); {} tick(s) missing, {} gap(s), \
         {} resync(s); peak weight {}, {} rate-limited, banned: [{}]",
        s.output,
        s.snapshots_written,
        s.mode,
        s.stopped_by,
        s.ticks_missing,
        s.gaps,
        s.resyncs,
        s.weight_used_peak,
        s.rate_limited,
        s.banned.join(", ")
    );
    for (sym, st) in &s.per_symbol {
        text.push_str(&format!(
            "\n{sym}: {} snapshots, {} missing, {} gaps, {} resyncs",
            st.snapshots, st.missing, st.gaps, st.resyncs
        ));
    }
    if s.spill_pending {
        text.push_str(&format!(
            "\nsnapshots remain in {} (written by the next run)",
            s.spill_file.display()
        ));
    }
    Outcome::of(text, s)
}
