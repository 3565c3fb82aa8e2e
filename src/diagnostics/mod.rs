//! Pre-training data diagnostics: spreads, gaps, class balance per split and train-vs-test
//! drift, with a plain verdict. The computations are pure; `write_artifacts` renders them
//! as PNG plots, a JSON summary and a sampled CSV for MLflow.

pub mod stage;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::DiagnosticsConfig;
use crate::plot::{self, Chart, Line, PlotError};
use crate::preprocess::labels::{class_counts, class_names};
use crate::store::GapCounts;
use crate::store::scaler::quantile;

/// Spread statistics of one asset, in basis points of the mid price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpreadStats {
    /// Snapshots measured.
    pub count: usize,
    /// Mean spread.
    pub mean_bps: f64,
    /// Median spread.
    pub median_bps: f64,
    /// 1st percentile.
    pub p1_bps: f64,
    /// 99th percentile.
    pub p99_bps: f64,
    /// Share of zero spreads (locked books).
    pub share_zero: f64,
    /// Share of negative spreads (crossed books).
    pub share_negative: f64,
    /// Share wider than `diagnostics.wide_spread_bps`.
    pub share_wide: f64,
}

/// Statistics of the finite values of `spreads_bps`.
pub fn spread_stats(spreads_bps: &[f64], wide_bps: f64) -> SpreadStats {
    let mut v: Vec<f64> = spreads_bps
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let share = |pred: &dyn Fn(f64) -> bool| {
        if n == 0 {
            0.0
        } else {
            v.iter().filter(|x| pred(**x)).count() as f64 / n as f64
        }
    };
    SpreadStats {
        count: n,
        mean_bps: if n == 0 {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / n as f64
        },
        median_bps: quantile(&v, 0.5),
        p1_bps: quantile(&v, 0.01),
        p99_bps: quantile(&v, 0.99),
        share_zero: share(&|x| x == 0.0),
        share_negative: share(&|x| x < 0.0),
        share_wide: share(&|x| x > wide_bps),
    }
}

/// Population stability index of `actual` against `expected`, with bins at the quantiles of
/// `expected` (empty bins get a small floor so the index stays finite). Above ~0.25 the
/// distributions differ materially.
pub fn psi(expected: &[f64], actual: &[f64], bins: usize) -> f64 {
    let mut e: Vec<f64> = expected.iter().copied().filter(|x| x.is_finite()).collect();
    let a: Vec<f64> = actual.iter().copied().filter(|x| x.is_finite()).collect();
    if e.is_empty() || a.is_empty() {
        return f64::NAN;
    }
    e.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..bins)
        .map(|i| quantile(&e, i as f64 / bins as f64))
        .collect();
    edges.dedup();
    let shares = |values: &[f64]| {
        let mut counts = vec![0f64; edges.len() + 1];
        for v in values {
            counts[edges.partition_point(|edge| edge <= v)] += 1.0;
        }
        counts
            .iter()
            .map(|c| (c / values.len() as f64).max(1e-4))
            .collect::<Vec<_>>()
    };
    let (pe, pa) = (shares(&e), shares(&a));
    pe.iter()
        .zip(&pa)
        .map(|(e, a)| (a - e) * (a / e).ln())
        .sum()
}

/// Samples per class in each split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassBalance {
    /// Class names, e.g. `< -0.03`, `[-0.03, 0.03)`, `>= 0.03`.
    pub classes: Vec<String>,
    /// Counts for train, validation, test.
    pub counts: [Vec<u64>; 3],
}

/// Counts labels of the samples of each split.
pub fn class_balance(boundaries: &[f64], labels: &[u32], ends: &[Vec<usize>; 3]) -> ClassBalance {
    let classes = class_names(boundaries);
    let counts = ends
        .each_ref()
        .map(|e| class_counts(classes.len(), e.iter().map(|&i| labels[i])));
    ClassBalance { classes, counts }
}

/// The balance from counts already made (the preprocessed store's manifest).
pub fn class_balance_from_counts(classes: &[String], counts: &[Vec<u64>; 3]) -> ClassBalance {
    ClassBalance {
        classes: classes.to_vec(),
        counts: counts.clone(),
    }
}

/// Quantiles of the training values that bound a feature's training range.
pub const TRAIN_RANGE_QUANTILES: [f64; 2] = [0.005, 0.995];
/// Share of validation or test rows outside the training range above which a feature is
/// "mostly outside" (a clock or a trend: the model extrapolates on it).
pub const MOSTLY_OUTSIDE: f64 = 0.5;

/// How much of the validation and test rows of one feature lies outside its training range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutOfRange {
    /// Column name.
    pub feature: String,
    /// [`TRAIN_RANGE_QUANTILES`] of the training values.
    pub train_range: [f64; 2],
    /// Share of validation rows outside it.
    pub validation_share: f64,
    /// Share of test rows outside it.
    pub test_share: f64,
}

impl OutOfRange {
    /// The shares of `validation` and `test` outside the training range of `train` (NaNs
    /// ignored; NaN shares when a split has no finite value).
    pub fn of(feature: &str, train: &[f64], validation: &[f64], test: &[f64]) -> Self {
        let mut t: Vec<f64> = train.iter().copied().filter(|x| x.is_finite()).collect();
        t.sort_by(f64::total_cmp);
        let train_range = TRAIN_RANGE_QUANTILES.map(|q| quantile(&t, q));
        let share = |v: &[f64]| {
            let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            let outside = finite
                .iter()
                .filter(|x| **x < train_range[0] || **x > train_range[1])
                .count();
            outside as f64 / finite.len() as f64
        };
        Self {
            feature: feature.to_owned(),
            train_range,
            validation_share: share(validation),
            test_share: share(test),
        }
    }

    /// True when most validation or test rows lie outside the training range.
    pub fn mostly_outside(&self) -> bool {
        self.validation_share > MOSTLY_OUTSIDE || self.test_share > MOSTLY_OUTSIDE
    }
}

/// Everything `diagnose` found, as written to `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Spread statistics per asset.
    pub spreads: Vec<(String, SpreadStats)>,
    /// Grid steps real / filled / missing per asset.
    pub gaps: Vec<(String, GapCounts)>,
    /// Class balance per split.
    pub classes: ClassBalance,
    /// PSI of each feature, train vs test.
    pub psi: Vec<(String, f64)>,
    /// Per feature, the validation and test rows outside the training range.
    pub out_of_range: Vec<OutOfRange>,
    /// Plain-language findings, most serious first.
    pub warnings: Vec<String>,
    /// True when a finding makes training pointless (a class below the minimum).
    pub failed: bool,
}

const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// Builds the report and its verdict.
pub fn report(
    cfg: &DiagnosticsConfig,
    spreads: Vec<(String, SpreadStats)>,
    gaps: Vec<(String, GapCounts)>,
    classes: ClassBalance,
    psi: Vec<(String, f64)>,
) -> Report {
    let mut warnings = Vec::new();
    let mut failed = false;
    for (split, counts) in SPLITS.iter().zip(&classes.counts) {
        for (name, &n) in classes.classes.iter().zip(counts) {
            if n < cfg.min_class_samples {
                failed = true;
                warnings.push(format!(
                    "class {name} has {n} {split} samples, fewer than diagnostics.min_class_samples ({}): \
                     the horizon is too short or the boundaries too wide for this data",
                    cfg.min_class_samples
                ));
            }
        }
    }
    for (asset, s) in &spreads {
        if s.share_negative > 0.0 {
            warnings.push(format!(
                "{asset}: {:.2}% of spreads are negative (crossed books)",
                s.share_negative * 100.0
            ));
        }
        if s.share_wide > 0.01 {
            warnings.push(format!(
                "{asset}: {:.2}% of spreads are wider than {} bps",
                s.share_wide * 100.0,
                cfg.wide_spread_bps
            ));
        }
    }
    for (asset, g) in &gaps {
        let total = g.real + g.filled + g.missing;
        if total > 0 && g.missing * 100 > total {
            warnings.push(format!(
                "{asset}: {} of {total} grid steps are missing (gaps longer than max_gap_seconds)",
                g.missing
            ));
        }
    }
    let drifting: Vec<&str> = psi
        .iter()
        .filter(|(_, v)| *v > 0.25)
        .map(|(n, _)| n.as_str())
        .collect();
    if !drifting.is_empty() {
        let shown = drifting.len().min(8);
        let more = if drifting.len() > shown {
            format!(" and {} more", drifting.len() - shown)
        } else {
            String::new()
        };
        warnings.push(format!(
            "{} features drift between train and test (PSI > 0.25): {}{more}",
            drifting.len(),
            drifting[..shown].join(", ")
        ));
    }
    Report {
        spreads,
        gaps,
        classes,
        psi,
        out_of_range: Vec::new(),
        warnings,
        failed,
    }
}

impl Report {
    /// Records the out-of-range check: every feature mostly outside its training range is
    /// a warning naming it (first: it invalidates what the model learned from it) and fails
    /// the verdict.
    pub fn add_out_of_range(&mut self, ranges: Vec<OutOfRange>) {
        let loud: Vec<String> = ranges
            .iter()
            .filter(|r| r.mostly_outside())
            .map(|r| {
                format!(
                    "feature {} is mostly outside its training range [{:.4}, {:.4}] (p0.5..p99.5): \
                     {:.0}% of validation and {:.0}% of test rows; the model would extrapolate on \
                     a clock or a trend: drop it (data.temporal_features for calendar columns) or \
                     use a longer span",
                    r.feature,
                    r.train_range[0],
                    r.train_range[1],
                    r.validation_share * 100.0,
                    r.test_share * 100.0
                )
            })
            .collect();
        if !loud.is_empty() {
            self.failed = true;
            self.warnings.splice(0..0, loud);
        }
        self.out_of_range = ranges;
    }
}

/// Renders the report into `dir`: `summary.json`, `spread_histogram_<asset>.png`,
/// `spread_over_time_<asset>.png`, `class_distribution.png`, `psi.png`. `spread_series`
/// holds per asset the `(hours since start, spread bps)` points plotted over time.
pub fn write_artifacts(
    dir: &Path,
    report: &Report,
    spread_series: &[(String, Vec<(f64, f64)>)],
) -> Result<Vec<PathBuf>, PlotError> {
    let io = |path: &Path, source| PlotError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    for (asset, points) in spread_series {
        let values: Vec<f64> = points.iter().map(|p| p.1).collect();
        let p = dir.join(format!("spread_histogram_{asset}.png"));
        let title = format!("{asset} spread");
        plot::histogram(
            &p,
            Chart {
                title: &title,
                x_label: "spread (bps)",
                y_label: "snapshots",
            },
            &values,
            50,
        )?;
        written.push(p);
        let p = dir.join(format!("spread_over_time_{asset}.png"));
        plot::line_chart(
            &p,
            Chart {
                title: &title,
                x_label: "hours since start",
                y_label: "spread (bps)",
            },
            &[Line {
                name: asset,
                points,
            }],
        )?;
        written.push(p);
    }
    let counts: Vec<Vec<f64>> = report
        .classes
        .counts
        .iter()
        .map(|c| c.iter().map(|x| *x as f64).collect())
        .collect();
    let p = dir.join("class_distribution.png");
    plot::bar_chart(
        &p,
        Chart {
            title: "Samples per class",
            x_label: "class (price change over the horizon)",
            y_label: "samples",
        },
        &report.classes.classes,
        &[
            ("train", &counts[0]),
            ("validation", &counts[1]),
            ("test", &counts[2]),
        ],
    )?;
    written.push(p);
    if !report.psi.is_empty() {
        let p = dir.join("psi.png");
        let names: Vec<String> = report.psi.iter().map(|(n, _)| n.clone()).collect();
        let values: Vec<f64> = report.psi.iter().map(|(_, v)| *v).collect();
        plot::bar_chart(
            &p,
            Chart {
                title: "Train vs test drift",
                x_label: "feature",
                y_label: "PSI",
            },
            &names,
            &[("psi", &values)],
        )?;
        written.push(p);
    }
    let p = dir.join("summary.json");
    let json = serde_json::to_vec_pretty(report).expect("report serialises");
    write_atomic(&p, &json).map_err(|e| io(&p, e))?;
    written.push(p);
    Ok(written)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// One line per finding, for the terminal.
pub fn summary_text(report: &Report) -> String {
    let mut s = String::new();
    for (asset, st) in &report.spreads {
        let _ = writeln!(
            s,
            "{asset}: spread median {:.4} bps (p1 {:.4}, p99 {:.4}), {:.2}% zero, {:.2}% wide",
            st.median_bps,
            st.p1_bps,
            st.p99_bps,
            st.share_zero * 100.0,
            st.share_wide * 100.0
        );
    }
    for (split, counts) in SPLITS.iter().zip(&report.classes.counts) {
        let _ = writeln!(s, "{split}: {counts:?} samples per class");
    }
    for w in &report.warnings {
        let _ = writeln!(s, "WARNING: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_statistics_by_hand() {
        let s = spread_stats(&[0.0, 1.0, 1.0, 2.0, -1.0, 100.0, f64::NAN], 50.0);
        assert_eq!(s.count, 6);
        assert!((s.mean_bps - 103.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.median_bps, 1.0);
        assert!((s.share_zero - 1.0 / 6.0).abs() < 1e-12);
        assert!((s.share_negative - 1.0 / 6.0).abs() < 1e-12);
        assert!((s.share_wide - 1.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn psi_is_zero_for_identical_and_large_for_shifted_data() {
        let a: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        assert!(psi(&a, &a, 10).abs() < 1e-9);
        let shifted: Vec<f64> = a.iter().map(|x| x + 500.0).collect();
        assert!(psi(&a, &shifted, 10) > 1.0);
        assert!(psi(&a, &[], 10).is_nan());
    }

    #[test]
    fn a_rare_class_fails_the_verdict() {
        let classes = class_balance(
            &[-1.0, 1.0],
            &[0, 1, 1, 2, 1, 1],
            &[vec![0, 1, 2, 3], vec![4], vec![5]],
        );
        assert_eq!(classes.classes, ["< -1", "[-1, 1)", ">= 1"]);
        assert_eq!(classes.counts[0], vec![1, 2, 1]);
        let cfg = DiagnosticsConfig {
            min_class_samples: 2,
            ..Default::default()
        };
        let r = report(&cfg, vec![], vec![], classes, vec![]);
        assert!(r.failed);
        assert!(r.warnings[0].starts_with("class < -1 has 1 train samples"));
    }

    #[test]
    fn a_trend_is_out_of_range_and_fails_the_verdict_a_stationary_feature_is_not() {
        let trend: Vec<f64> = (0..1000).map(f64::from).collect();
        let r = OutOfRange::of(
            "days_since_start",
            &trend[..700],
            &trend[700..850],
            &trend[850..],
        );
        assert_eq!((r.validation_share, r.test_share), (1.0, 1.0));
        assert!(r.mostly_outside());
        let wave: Vec<f64> = (0..1000).map(|i| (f64::from(i) * 0.37).sin()).collect();
        let w = OutOfRange::of("imbalance", &wave[..700], &wave[700..850], &wave[850..]);
        assert!(w.test_share < 0.05 && !w.mostly_outside(), "{w:?}");
        let classes = class_balance(&[0.0], &[0, 1], &[vec![0, 1], vec![0], vec![1]]);
        // No class minimum: only the out-of-range check can fail this report.
        let cfg = DiagnosticsConfig {
            min_class_samples: 0,
            ..Default::default()
        };
        let mut report = report(&cfg, vec![], vec![], classes, vec![]);
        assert!(!report.failed);
        report.add_out_of_range(vec![w, r]);
        assert!(report.failed);
        assert_eq!(report.warnings.len(), 1);
        assert!(report.warnings[0].starts_with("feature days_since_start is mostly outside"));
    }

    #[test]
    fn artifacts_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let classes = class_balance(&[0.0], &[0, 1], &[vec![0, 1], vec![0], vec![1]]);
        let r = report(
            &DiagnosticsConfig::default(),
            vec![("BTCUSDT".into(), spread_stats(&[1.0, 2.0], 50.0))],
            vec![],
            classes,
            vec![("BTCUSDT.bid_ask_spread".into(), 0.01)],
        );
        let files = write_artifacts(
            dir.path(),
            &r,
            &[("BTCUSDT".into(), vec![(0.0, 1.0), (1.0, 2.0)])],
        )
        .unwrap();
        assert_eq!(files.len(), 5);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(json["failed"], true);
        assert_eq!(json["spreads"][0][1]["median_bps"], 1.5);
    }
}
