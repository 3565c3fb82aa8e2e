//! PNG charts for MLflow artifacts: line charts, grouped bars, histograms and heatmaps.
//!
//! Text is drawn with the embedded DejaVu Sans font, so charts render the same on any machine
//! without system fonts. Every chart is written to a temporary file and renamed into place.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing or encoding failed.
    #[error("cannot draw chart {path}: {message}")]
    Draw {
        /// The chart's destination.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
    /// Moving the finished file into place failed.
    #[error("cannot write chart {path}: {source}")]
    Io {
        /// The chart's destination.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Titles of a chart.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    /// Caption above the plot.
    pub title: &'a str,
    /// X-axis description.
    pub x_label: &'a str,
    /// Y-axis description.
    pub y_label: &'a str,
}

/// One named line of a line chart.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// Legend entry.
    pub name: &'a str,
    /// Points in x order; non-finite points are skipped.
    pub points: &'a [(f64, f64)],
}

const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; a failure here would be a packaging bug.
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans font is invalid"));
        plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans Bold font is invalid"));
    });
}

/// Draws into a temporary PNG next to `path`, then renames it over `path`.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    register_fonts();
    let tmp = path.with_extension("tmp.png");
    let err = |message: String| PlotError::Draw {
        path: path.to_owned(),
        message,
    };
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(&root).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|source| PlotError::Io {
        path: path.to_owned(),
        source,
    })
}

fn finite_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// Cells `i` span `[i - 0.5, i + 0.5]`, so integer key points fall on cell centres.
fn centred(n: usize) -> std::ops::Range<f64> {
    -0.5..n as f64 - 0.5
}

/// The label of the cell at key point `x`; blank between cells.
fn cell_label(labels: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 {
        labels.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// A line chart with a legend (training curves, degradation over time, equity curves).
pub fn line_chart(path: &Path, chart: Chart<'_>, lines: &[Line<'_>]) -> Result<(), PlotError> {
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = finite_range(all().map(|p| p.0));
    let (y0, y1) = finite_range(all().map(|p| p.1));
    render(path, SIZE, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(chart.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, line) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points = line
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite());
            c.draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(line.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())
    })
}

/// Grouped vertical bars: one group per category, one bar per named series.
pub fn bar_chart(
    path: &Path,
    chart: Chart<'_>,
    categories: &[String],
    series: &[(&str, &[f64])],
) -> Result<(), PlotError> {
    let (lo, hi) = finite_range(series.iter().flat_map(|s| s.1.iter().copied()).chain([0.0]));
    let n = categories.len().max(1);
    let k = series.len().max(1) as f64;
    render(path, SIZE, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(chart.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(64)
            .y_label_area_size(72)
            .build_cartesian_2d(centred(n), lo.min(0.0)..hi)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .x_labels(n)
            .x_label_formatter(&|x| cell_label(categories, *x))
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (j, (name, values)) in series.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            let bars = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| {
                    let left = i as f64 - 0.4 + 0.8 * j as f64 / k;
                    Rectangle::new([(left, 0.0), (left + 0.8 / k, *v)], color.filled())
                });
            c.draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        if series.len() > 1 {
            c.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A histogram of `values` (non-finite values ignored) in `bins` equal-width bins.
pub fn histogram(
    path: &Path,
    chart: Chart<'_>,
    values: &[f64],
    bins: usize,
) -> Result<(), PlotError> {
    let bins = bins.max(1);
    let (lo, hi) = finite_range(values.iter().copied());
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0f64; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1.0;
    }
    let top = counts.iter().copied().fold(1.0, f64::max) * 1.05;
    render(path, SIZE, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(chart.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(lo..hi, 0f64..top)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        let color = Palette99::pick(0).to_rgba();
        c.draw_series(counts.iter().enumerate().map(|(i, n)| {
            let x = lo + i as f64 * width;
            Rectangle::new([(x, 0.0), (x + width, *n)], color.filled())
        }))
        .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// A heatmap of a row-major `rows x cols` matrix, optionally with each value written in its
/// cell (confusion matrices); colours run from white (minimum) to dark blue (maximum).
pub fn heatmap(
    path: &Path,
    chart: Chart<'_>,
    row_labels: &[String],
    col_labels: &[String],
    values: &[f64],
    annotate: bool,
) -> Result<(), PlotError> {
    let (rows, cols) = (row_labels.len().max(1), col_labels.len().max(1));
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    render(path, (960, 720), |root| {
        let mut c = ChartBuilder::on(root)
            .caption(chart.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(64)
            .y_label_area_size(110)
            .build_cartesian_2d(centred(cols), centred(rows))
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .disable_mesh()
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .x_labels(cols)
            .y_labels(rows)
            .x_label_formatter(&|x| cell_label(col_labels, *x))
            // Row 0 at the top, as in a printed matrix.
            .y_label_formatter(&|y| cell_label(row_labels, rows as f64 - 1.0 - *y))
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        let cell = |r: usize, col: usize| values.get(r * cols + col).copied().unwrap_or(f64::NAN);
        c.draw_series((0..rows).flat_map(|r| {
            (0..cols).map(move |col| {
                let v = cell(r, col);
                let t = if v.is_finite() { (v - lo) / span } else { 0.0 };
                let color = RGBColor(
                    (255.0 * (1.0 - 0.85 * t)) as u8,
                    (255.0 * (1.0 - 0.7 * t)) as u8,
                    (255.0 * (1.0 - 0.35 * t)) as u8,
                );
                let y = (rows - 1 - r) as f64;
                let x = col as f64;
                Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], color.filled())
            })
        }))
        .map_err(|e| e.to_string())?;
        if annotate {
            c.draw_series((0..rows).flat_map(|r| {
                (0..cols).map(move |col| {
                    let v = cell(r, col);
                    let text = if v.fract() == 0.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    };
                    let t = if v.is_finite() { (v - lo) / span } else { 0.0 };
                    let color = if t > 0.6 { WHITE } else { BLACK };
                    let style = (FONT, 15)
                        .into_font()
                        .color(&color)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    Text::new(text, (col as f64, (rows - 1 - r) as f64), style)
                })
            }))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is not a PNG",
            path.display()
        );
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn every_chart_kind_writes_a_png_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
        };
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, (i as f64 / 5.0).sin()))
            .collect();
        let p = dir.path().join("line.png");
        line_chart(
            &p,
            chart,
            &[Line {
                name: "sin",
                points: &pts,
            }],
        )
        .unwrap();
        assert_eq!(png_size(&p), (960, 600));
        let p = dir.path().join("bars.png");
        let cats = vec!["a".to_string(), "b".into()];
        bar_chart(
            &p,
            chart,
            &cats,
            &[("train", &[3.0, 1.0]), ("test", &[2.0, f64::NAN])],
        )
        .unwrap();
        assert_eq!(png_size(&p), (960, 600));
        let p = dir.path().join("hist.png");
        histogram(&p, chart, &[1.0, 2.0, 2.0, f64::NAN, 3.0], 3).unwrap();
        let p = dir.path().join("heat.png");
        heatmap(&p, chart, &cats, &cats, &[5.0, 1.0, 0.0, 7.0], true).unwrap();
        assert_eq!(png_size(&p), (960, 720));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains(".tmp.")),
            "temporary files left: {names:?}"
        );
    }
}
