//! The `diagnose` stage: reads the preprocessed store shard by shard and reports spreads,
//! gaps, class balance and train-vs-test drift before any training starts.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::{
    OutOfRange, Report, class_balance_from_counts, psi, report, spread_stats, write_artifacts,
};
use crate::config::Config;
use crate::data::DataError;
use crate::data::cache::write_atomic;
use crate::plot::PlotError;
use crate::store::{SplitRange, StoreManifest, load_samples, read_manifest, read_rows, store_dir};

/// Rows per split kept for the drift (PSI) estimate.
const PSI_ROWS: usize = 5_000;
/// Points per asset in the spread-over-time chart.
const CHART_POINTS: usize = 5_000;
/// Spreads per asset kept for the statistics (exact below, evenly spaced above).
const SPREAD_ROWS: usize = 200_000;

/// What `diagnose` produced.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnoseOutput {
    /// The findings.
    pub report: Report,
    /// Where the artifacts were written.
    pub artifacts_dir: PathBuf,
    /// Every artifact file.
    pub artifacts: Vec<PathBuf>,
}

/// Errors of the stage.
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    /// Reading the store.
    #[error(transparent)]
    Store(#[from] DataError),
    /// Drawing or writing artifacts.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl DiagnoseError {
    /// Exit code: the store's (3, or 4 for an unreachable source), 3 for the artifacts.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            DiagnoseError::Store(e) => e.exit_code(),
            DiagnoseError::Plot(_) => crate::exit::ExitCode::Data,
        }
    }
}

/// Every `step`-th index of `range`, at most `max` of them.
fn evenly(range: SplitRange, max: usize) -> impl Iterator<Item = usize> {
    let step = range.len().div_ceil(max.max(1)).max(1);
    (range.start..range.end).step_by(step)
}

/// Runs the diagnostics on the store built for `config`.
pub fn diagnose(config: &Config) -> Result<DiagnoseOutput, DiagnoseError> {
    let _span = tracing::info_span!("diagnose").entered();
    let dir = store_dir(config)?;
    let m: StoreManifest = read_manifest(&dir).ok_or_else(|| {
        DataError::Input(format!(
            "no preprocessed store at {} for this configuration: run `binance-ml preprocess` first",
            dir.display()
        ))
    })?;
    let samples = load_samples(&dir, &m)?;
    let n = m.columns.len();
    let spread_cols: Vec<(String, usize)> = m
        .assets
        .iter()
        .filter_map(|a| {
            let name = format!("{a}.bid_ask_spread");
            m.columns
                .iter()
                .position(|c| *c == name)
                .map(|i| (a.clone(), i))
        })
        .collect();
    let unscale = |c: usize, x: f64| x * m.scaler.scale[c] + m.scaler.center[c];
    let [train, _, test] = m.ranges;
    let psi_train: Vec<usize> = evenly(train, PSI_ROWS).collect();
    let psi_test: Vec<usize> = evenly(test, PSI_ROWS).collect();
    let range_validation: Vec<usize> = evenly(m.ranges[1], PSI_ROWS).collect();
    let chart_every = m.steps.div_ceil(CHART_POINTS).max(1);
    let spread_every = m.steps.div_ceil(SPREAD_ROWS).max(1);
    let sample_every = m
        .steps
        .div_ceil(config.diagnostics.sample_rows.max(1) as usize)
        .max(1);

    let mut spreads: Vec<Vec<f64>> = vec![Vec::new(); spread_cols.len()];
    let mut series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); spread_cols.len()];
    let mut train_values: Vec<Vec<f64>> = vec![Vec::with_capacity(psi_train.len()); n];
    let mut test_values: Vec<Vec<f64>> = vec![Vec::with_capacity(psi_test.len()); n];
    let mut validation_values: Vec<Vec<f64>> = vec![Vec::with_capacity(range_validation.len()); n];
    let target_block = 0..m.features_per_asset;
    let mut csv = String::from("time,label,price_change_pct");
    for c in target_block.clone() {
        let _ = write!(csv, ",{}", m.columns[c]);
    }
    csv.push('\n');
    for shard in &m.shards {
        let rows = read_rows(&dir.join(&shard.file), n)?;
        for (i, row) in rows.chunks_exact(n).enumerate() {
            let k = shard.first_step + i;
            for (j, (_, c)) in spread_cols.iter().enumerate() {
                let bps = unscale(*c, row[*c]);
                if k % spread_every == 0 {
                    spreads[j].push(bps);
                }
                if k % chart_every == 0 {
                    series[j].push((k as f64 * m.cadence_ms as f64 / 3.6e6, bps));
                }
            }
            if psi_train.binary_search(&k).is_ok() {
                train_values
                    .iter_mut()
                    .zip(row)
                    .for_each(|(v, x)| v.push(*x));
            }
            for (picked, values) in [
                (&psi_test, &mut test_values),
                (&range_validation, &mut validation_values),
            ] {
                if picked.binary_search(&k).is_ok() {
                    values.iter_mut().zip(row).for_each(|(v, x)| v.push(*x));
                }
            }
            if k % sample_every == 0 {
                let t = chrono::DateTime::from_timestamp_millis(
                    m.grid_start_ms + k as i64 * m.cadence_ms,
                )
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
                let _ = write!(
                    csv,
                    "{t},{},{}",
                    samples.labels[k], samples.price_changes[k]
                );
                for c in target_block.clone() {
                    let _ = write!(csv, ",{}", unscale(c, row[c]));
                }
                csv.push('\n');
            }
        }
    }
    let bins = config.diagnostics.psi_bins as usize;
    // Calendar columns drift by construction (test lies later in time): only asset features.
    let drift = m
        .columns
        .iter()
        .take(m.asset_columns)
        .enumerate()
        .map(|(c, name)| (name.clone(), psi(&train_values[c], &test_values[c], bins)))
        .collect();
    let spread_stats = spread_cols
        .iter()
        .zip(&spreads)
        .map(|((a, _), v)| {
            (
                a.clone(),
                spread_stats(v, config.diagnostics.wide_spread_bps),
            )
        })
        .collect();
    let classes = class_balance_from_counts(&m.class_names, &m.class_counts);
    let mut report = report(
        &config.diagnostics,
        spread_stats,
        m.gaps.clone(),
        classes,
        drift,
    );
    // Every column, calendar ones included: those are the usual clocks.
    report.add_out_of_range(
        m.columns
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let mut r = OutOfRange::of(
                    name,
                    &train_values[c],
                    &validation_values[c],
                    &test_values[c],
                );
                // The shares do not depend on the scaling; the range reads in raw units.
                r.train_range = r.train_range.map(|x| unscale(c, x));
                r
            })
            .collect(),
    );

    let artifacts_dir = dir.join("diagnostics");
    let named_series: Vec<(String, Vec<(f64, f64)>)> = spread_cols
        .iter()
        .map(|(a, _)| a.clone())
        .zip(series)
        .collect();
    let mut artifacts = write_artifacts(&artifacts_dir, &report, &named_series)?;
    let csv_path = artifacts_dir.join("sampled_rows.csv");
    write_atomic(&csv_path, csv.as_bytes())?;
    artifacts.push(csv_path);
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    Ok(DiagnoseOutput {
        report,
        artifacts_dir,
        artifacts,
    })
}
