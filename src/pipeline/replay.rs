//! `replay`: the nightly policy simulated over history, one UTC day at a time, beside the
//! frozen base model and a retrain from scratch on a rolling window.
//!
//! The base model trains on the first `train_days` days of `data.time_range`. Then, for each
//! later day: the current champion, the frozen base and the rolling model (trained on the
//! `window_days` days before) are scored on that day — out of sample for all three — and the
//! champion is fine-tuned on the day (`finetune`, promotion by `training.fine_tuning.promotion`),
//! so the next day meets the winner. Every stage runs nested under one `replay` parent run,
//! one `replay-day` child per day. Progress is saved after each day: a killed replay continues
//! with the first day it had not finished, and no day is scored twice.

use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};

use super::error::{Error, ReplayError, Result};
use super::finetune::finetune;
use super::{Pipeline, tracked};
use crate::config::{DateBound, LoadedConfig};
use crate::data::cache::{sha256_hex, write_atomic};
use crate::evaluate::stage::{EvaluateRequest, EvaluateSummary};
use crate::plot::{self, Chart, Line};
use crate::predict::ModelRef;
use crate::tracking::{Metric, Stage};
use crate::train::Split;
use crate::train::stage::TrainRequest;

/// What to replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayRequest {
    /// Days the base model trains on (the first of the range).
    pub train_days: u32,
    /// Length in days of the rolling retrain's window.
    pub window_days: u32,
}

/// One policy's out-of-sample scores on one day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyScore {
    /// The training run of the model that was scored.
    pub model_run: String,
    /// Accuracy.
    pub accuracy: f64,
    /// Macro F1.
    pub macro_f1: f64,
    /// Log loss.
    pub log_loss: f64,
    /// The documented backtest's total return after costs (none when the backtest is off).
    pub backtest_return: Option<f64>,
}

impl PolicyScore {
    fn of(e: &EvaluateSummary) -> Self {
        Self {
            model_run: e.model_run_id.clone(),
            accuracy: e.scores.accuracy,
            macro_f1: e.scores.macro_f1,
            log_loss: e.scores.log_loss.unwrap_or(f64::NAN),
            backtest_return: e.backtest.as_ref().map(|b| b[0].total_return),
        }
    }
}

/// One replayed day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DayRow {
    /// The UTC day scored.
    pub day: NaiveDate,
    /// The nightly policy: the champion going into the day.
    pub nightly: PolicyScore,
    /// The frozen base model.
    pub frozen: PolicyScore,
    /// The model retrained from scratch on the window before the day.
    pub rolling: PolicyScore,
    /// The fine-tune on this day: `champion` (it leads from the next day) or `challenger`.
    pub decision: String,
    /// The champion's training run after the day.
    pub champion_after: String,
}

/// Mean scores of one policy over the replayed days.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyTotals {
    /// `nightly`, `frozen` or `rolling`.
    pub policy: &'static str,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Mean macro F1.
    pub macro_f1: f64,
    /// Mean log loss.
    pub log_loss: f64,
    /// Daily backtest returns compounded (none when the backtest is off).
    pub backtest_return: Option<f64>,
}

/// What `replay` produced.
#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    /// The parent MLflow run of this invocation.
    pub run_id: String,
    /// Table, chart and saved progress.
    pub dir: PathBuf,
    /// The base model's training run.
    pub base_run: String,
    /// Every replayed day, in order.
    pub days: Vec<DayRow>,
    /// Days taken from an earlier, interrupted invocation.
    pub resumed_days: usize,
    /// Per policy, over all days.
    pub totals: Vec<PolicyTotals>,
}

/// Saved after every day (`state.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    base_run: Option<String>,
    champion: Option<String>,
    rows: Vec<DayRow>,
}

const POLICIES: [&str; 3] = ["nightly", "frozen", "rolling"];

fn policy<'a>(row: &'a DayRow, name: &str) -> &'a PolicyScore {
    match name {
        "nightly" => &row.nightly,
        "frozen" => &row.frozen,
        _ => &row.rolling,
    }
}

/// `loaded` restricted to the UTC days `from..=to`.
fn with_days(loaded: &LoadedConfig, from: NaiveDate, to: NaiveDate) -> Result<LoadedConfig> {
    let bound = |d: NaiveDate| {
        DateBound::parse(&d.format("%Y-%m-%d").to_string())
            .map_err(|e| ReplayError::State(format!("day {d}: {e}")))
    };
    let mut c = loaded.clone();
    c.config.data.time_range.start_date = bound(from)?;
    c.config.data.time_range.end_date = bound(to)?;
    Ok(c)
}

/// The UTC days of `data.time_range` (a partial first or last day counts).
fn days_of(loaded: &LoadedConfig) -> Vec<NaiveDate> {
    let r = &loaded.config.data.time_range;
    let first = r.start_date.start().date_naive();
    let last = (r.end_date.end_exclusive() - chrono::Duration::milliseconds(1)).date_naive();
    first.iter_days().take_while(|d| *d <= last).collect()
}

fn load_progress(path: &Path) -> Result<Progress> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ReplayError::State(format!(
                "{} is not a replay's saved progress ({e}); remove it to start over",
                path.display()
            ))
            .into()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Progress::default()),
        Err(e) => Err(Error::Io {
            context: format!("reading {}", path.display()),
            source: e,
        }),
    }
}

fn save_progress(path: &Path, p: &Progress) -> Result<()> {
    let json = serde_json::to_vec_pretty(p).expect("progress serialises");
    Ok(write_atomic(path, &json)?)
}

/// Trains a model from scratch on `cfg` (fetch, preprocess, train) under `parent`.
fn train_fresh(cfg: &LoadedConfig, parent: &str) -> Result<String> {
    let p = Pipeline {
        loaded: cfg,
        parent: Some(parent),
    };
    p.fetch(false)?;
    p.preprocess(false)?;
    Ok(p.train(TrainRequest {
        resume_existing: true,
        ..TrainRequest::default()
    })?
    .run_id)
}

/// Runs the replay (see the module docs).
pub fn replay(loaded: &LoadedConfig, req: ReplayRequest) -> Result<ReplaySummary> {
    let _span = tracing::info_span!("replay").entered();
    if req.train_days == 0 {
        return Err(ReplayError::Zero("train-days").into());
    }
    if req.window_days == 0 {
        return Err(ReplayError::Zero("window-days").into());
    }
    let days = days_of(loaded);
    let n_train = req.train_days as usize;
    if days.len() <= n_train {
        return Err(ReplayError::TooFewDays {
            days: days.len(),
            train_days: req.train_days,
        }
        .into());
    }
    let key = sha256_hex(
        format!(
            "{}\n{}\n{}",
            loaded.config_hash(),
            req.train_days,
            req.window_days
        )
        .as_bytes(),
    )[..16]
        .to_owned();
    let dir = loaded.config.workdir.join("replay").join(&key);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        context: format!("creating {}", dir.display()),
        source: e,
    })?;
    let state_path = dir.join("state.json");
    let mut progress = load_progress(&state_path)?;
    let resumed_days = progress.rows.len();
    if resumed_days > 0 {
        tracing::info!(
            days = resumed_days,
            "resuming a replay: its finished days are kept"
        );
    }

    tracked(
        loaded,
        None,
        Stage::ModelEvaluation,
        "replay",
        &[],
        |parent| {
            let pid = parent.run_id();
            let base = match progress.base_run.clone() {
                Some(b) => b,
                None => {
                    let cfg = with_days(loaded, days[0], days[n_train - 1])?;
                    let b = train_fresh(&cfg, pid)?;
                    progress.base_run = Some(b.clone());
                    progress.champion = Some(b.clone());
                    save_progress(&state_path, &progress)?;
                    b
                }
            };
            for &day in &days[n_train..] {
                if progress.rows.iter().any(|r| r.day == day) {
                    continue;
                }
                let champion = progress.champion.clone().unwrap_or_else(|| base.clone());
                let day_cfg = with_days(loaded, day, day)?;
                let row = tracked(
                    &day_cfg,
                    Some(pid),
                    Stage::ModelEvaluation,
                    "replay-day",
                    &[],
                    |run| {
                        let rid = run.run_id();
                        let from = day
                            .checked_sub_days(Days::new(u64::from(req.window_days)))
                            .map_or(days[0], |d| d.max(days[0]));
                        let to = day
                            .pred_opt()
                            .expect("a day after the first has a previous one");
                        let rolling = if (from, to) == (days[0], days[n_train - 1]) {
                            base.clone()
                        } else {
                            train_fresh(&with_days(loaded, from, to)?, rid)?
                        };
                        let p = Pipeline {
                            loaded: &day_cfg,
                            parent: Some(rid),
                        };
                        let d = day.format("%Y-%m-%d").to_string();
                        let score = |model: &str| -> Result<PolicyScore> {
                            let e = p.evaluate(&EvaluateRequest {
                                model: ModelRef::Run(model.to_owned()),
                                split: Split::Test,
                                range: Some((d.clone(), d.clone())),
                                store: None,
                                save_temperature: false,
                            })?;
                            Ok(PolicyScore::of(&e))
                        };
                        let (nightly, frozen, rolling) =
                            (score(&champion)?, score(&base)?, score(&rolling)?);
                        let ft = finetune(&day_cfg, Some(rid), Some(&champion), None)?;
                        let champion_after = if ft.decision == crate::tracking::CHAMPION {
                            ft.new_run_id.clone()
                        } else {
                            champion.clone()
                        };
                        let now = chrono::Utc::now().timestamp_millis();
                        let mut m = Vec::new();
                        for (name, s) in [
                            ("nightly", &nightly),
                            ("frozen", &frozen),
                            ("rolling", &rolling),
                        ] {
                            for (k, v) in [
                                ("accuracy", s.accuracy),
                                ("macro_f1", s.macro_f1),
                                ("log_loss", s.log_loss),
                                ("backtest_return", s.backtest_return.unwrap_or(f64::NAN)),
                            ] {
                                m.push(Metric::new(format!("{name}_{k}"), v, now, 0));
                            }
                        }
                        run.tracker().log_metrics(rid, &m)?;
                        run.tracker().set_tags(
                            rid,
                            &[
                                ("binance_ml.replay_day", d.as_str()),
                                ("binance_ml.promotion", ft.decision.as_str()),
                                ("binance_ml.champion_after", champion_after.as_str()),
                            ],
                        )?;
                        Ok(DayRow {
                            day,
                            nightly,
                            frozen,
                            rolling,
                            decision: ft.decision,
                            champion_after,
                        })
                    },
                )?;
                progress.champion = Some(row.champion_after.clone());
                progress.rows.push(row);
                save_progress(&state_path, &progress)?;
            }

            let totals: Vec<PolicyTotals> = POLICIES
                .iter()
                .map(|&name| {
                    let n = progress.rows.len() as f64;
                    let mean = |f: fn(&PolicyScore) -> f64| {
                        progress
                            .rows
                            .iter()
                            .map(|r| f(policy(r, name)))
                            .sum::<f64>()
                            / n
                    };
                    PolicyTotals {
                        policy: name,
                        accuracy: mean(|s| s.accuracy),
                        macro_f1: mean(|s| s.macro_f1),
                        log_loss: mean(|s| s.log_loss),
                        backtest_return: progress
                            .rows
                            .iter()
                            .map(|r| policy(r, name).backtest_return.map(|x| 1.0 + x))
                            .product::<Option<f64>>()
                            .map(|g| g - 1.0),
                    }
                })
                .collect();
            write_outputs(&dir, &progress.rows, &totals)?;
            let t = parent.tracker();
            let mut m = Vec::new();
            let now = chrono::Utc::now().timestamp_millis();
            for (i, r) in progress.rows.iter().enumerate() {
                for name in POLICIES {
                    m.push(Metric::new(
                        format!("{name}_accuracy"),
                        policy(r, name).accuracy,
                        now,
                        i as i64,
                    ));
                }
            }
            for tot in &totals {
                m.push(Metric::new(
                    format!("mean_{}_accuracy", tot.policy),
                    tot.accuracy,
                    now,
                    0,
                ));
                if let Some(ret) = tot.backtest_return {
                    m.push(Metric::new(
                        format!("total_{}_return", tot.policy),
                        ret,
                        now,
                        0,
                    ));
                }
            }
            t.log_metrics(pid, &m)?;
            for f in ["replay.csv", "replay.md", "replay.png"] {
                t.log_artifact(pid, &dir.join(f), "replay")?;
            }
            Ok(ReplaySummary {
                run_id: pid.to_owned(),
                dir: dir.clone(),
                base_run: base,
                days: progress.rows.clone(),
                resumed_days,
                totals,
            })
        },
    )
}

/// `replay.csv` (one line per day and policy), `replay.md` (the table and totals) and
/// `replay.png` (accuracy per day per policy), each written atomically.
fn write_outputs(dir: &Path, rows: &[DayRow], totals: &[PolicyTotals]) -> Result<()> {
    let mut csv = String::from(
        "day,policy,model_run,accuracy,macro_f1,log_loss,backtest_return,decision,champion_after\n",
    );
    let mut md = String::from(
        "| day | nightly acc | frozen acc | rolling acc | nightly return | frozen return | rolling return | fine-tune |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        for name in POLICIES {
            let s = policy(r, name);
            let ret = s.backtest_return.map_or(String::new(), |x| x.to_string());
            csv.push_str(&format!(
                "{},{name},{},{},{},{},{ret},{},{}\n",
                r.day,
                s.model_run,
                s.accuracy,
                s.macro_f1,
                s.log_loss,
                r.decision,
                r.champion_after
            ));
        }
        md.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {} | {} | {} | {} |\n",
            r.day,
            r.nightly.accuracy,
            r.frozen.accuracy,
            r.rolling.accuracy,
            signed(r.nightly.backtest_return),
            signed(r.frozen.backtest_return),
            signed(r.rolling.backtest_return),
            r.decision
        ));
    }
    md.push_str("\n| policy | mean accuracy | mean macro F1 | mean log loss | compounded return |\n|---|---|---|---|---|\n");
    for t in totals {
        md.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {} |\n",
            t.policy,
            t.accuracy,
            t.macro_f1,
            t.log_loss,
            signed(t.backtest_return)
        ));
    }
    write_atomic(&dir.join("replay.csv"), csv.as_bytes())?;
    write_atomic(&dir.join("replay.md"), md.as_bytes())?;
    let series: Vec<Vec<(f64, f64)>> = POLICIES
        .iter()
        .map(|&name| {
            rows.iter()
                .enumerate()
                .map(|(i, r)| (i as f64 + 1.0, policy(r, name).accuracy))
                .collect()
        })
        .collect();
    let lines: Vec<Line<'_>> = POLICIES
        .iter()
        .zip(&series)
        .map(|(name, points)| Line { name, points })
        .collect();
    plot::line_chart(
        &dir.join("replay.png"),
        Chart {
            title: "Out-of-sample accuracy per replayed day",
            x_label: "replayed day",
            y_label: "accuracy",
        },
        &lines,
    )
    .map_err(|e| ReplayError::State(e.to_string()))?;
    Ok(())
}

/// `+0.0123`, or `–` when there is no backtest.
pub fn signed(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_owned(), |v| format!("{v:+.4}"))
}
