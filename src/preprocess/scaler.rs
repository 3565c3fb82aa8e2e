//! Feature scalers, fit on training rows only and applied to every split. Columns sharing a
//! group (the same feature of every asset, when `per_asset` is false) share parameters.
//!
//! A zero-variance (or constant) group gets scale 1: its values become `x - center`, i.e. 0
//! on the training data, instead of a division by zero.

use serde::{Deserialize, Serialize};

use crate::config::NormalizationMethod;

/// Fitted parameters: `scaled = (x - center) / scale` per column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// The method it was fit with.
    pub method: NormalizationMethod,
    /// Per-column center (min, mean or median).
    pub center: Vec<f64>,
    /// Per-column scale (range, std or IQR), never 0.
    pub scale: Vec<f64>,
}

impl Scaler {
    /// Fits on `rows` of the row-major matrix `data` (`groups.len()` columns); NaN values are
    /// ignored. `groups[c]` is the parameter group of column `c`.
    pub fn fit(
        method: NormalizationMethod,
        data: &[f64],
        groups: &[usize],
        rows: impl Iterator<Item = usize> + Clone,
    ) -> Self {
        let ncols = groups.len();
        let ngroups = groups.iter().copied().max().map_or(0, |g| g + 1);
        let values_of = |g: usize| {
            let cols: Vec<usize> = (0..ncols).filter(|&c| groups[c] == g).collect();
            rows.clone()
                .flat_map(move |r| cols.clone().into_iter().map(move |c| r * ncols + c))
                .map(|i| data[i])
                .filter(|x| x.is_finite())
        };
        let params: Vec<(f64, f64)> = (0..ngroups)
            .map(|g| match method {
                NormalizationMethod::MinMax => {
                    let (lo, hi) = values_of(g)
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                            (lo.min(x), hi.max(x))
                        });
                    if lo.is_finite() {
                        (lo, hi - lo)
                    } else {
                        (0.0, 1.0)
                    }
                }
                NormalizationMethod::Standard => {
                    // Welford: one pass, numerically stable.
                    let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
                    for x in values_of(g) {
                        n += 1.0;
                        let d = x - mean;
                        mean += d / n;
                        m2 += d * (x - mean);
                    }
                    (
                        mean,
                        if n > 1.0 {
                            (m2 / (n - 1.0)).sqrt()
                        } else {
                            1.0
                        },
                    )
                }
                NormalizationMethod::Robust => {
                    let mut v: Vec<f64> = values_of(g).collect();
                    v.sort_by(f64::total_cmp);
                    let q = |p: f64| {
                        if v.is_empty() {
                            0.0
                        } else {
                            let pos = p * (v.len() - 1) as f64;
                            let (i, frac) = (pos.floor() as usize, pos.fract());
                            v[i] + (v[(i + 1).min(v.len() - 1)] - v[i]) * frac
                        }
                    };
                    (q(0.5), q(0.75) - q(0.25))
                }
            })
            .map(|(c, s)| (c, if s > 0.0 && s.is_finite() { s } else { 1.0 }))
            .collect();
        Self {
            method,
            center: groups.iter().map(|&g| params[g].0).collect(),
            scale: groups.iter().map(|&g| params[g].1).collect(),
        }
    }

    /// Scales one row in place.
    pub fn transform_row(&self, row: &mut [f64]) {
        for ((x, c), s) in row.iter_mut().zip(&self.center).zip(&self.scale) {
            *x = (*x - c) / s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_each_method_on_the_given_rows_only() {
        // 2 columns; rows 0..4 train, row 4 (huge) is not used.
        let data = [1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 4.0, 5.0, 1e9, 1e9];
        let train = 0..4;
        let mm = Scaler::fit(NormalizationMethod::MinMax, &data, &[0, 1], train.clone());
        assert_eq!(
            (mm.center.clone(), mm.scale.clone()),
            (vec![1.0, 5.0], vec![3.0, 1.0])
        );
        let st = Scaler::fit(NormalizationMethod::Standard, &data, &[0, 1], train.clone());
        assert!((st.center[0] - 2.5).abs() < 1e-12);
        assert!((st.scale[0] - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(st.scale[1], 1.0, "zero variance -> scale 1");
        let rb = Scaler::fit(NormalizationMethod::Robust, &data, &[0, 1], train);
        assert_eq!((rb.center[0], rb.scale[0]), (2.5, 1.5));
        let mut row = [4.0, 5.0];
        mm.transform_row(&mut row);
        assert_eq!(row, [1.0, 0.0]);
    }

    #[test]
    fn grouped_columns_share_parameters() {
        let data = [0.0, 10.0, 2.0, 20.0];
        let s = Scaler::fit(NormalizationMethod::MinMax, &data, &[0, 0], 0..2);
        assert_eq!(s.center, vec![0.0, 0.0]);
        assert_eq!(s.scale, vec![20.0, 20.0]);
    }
}
