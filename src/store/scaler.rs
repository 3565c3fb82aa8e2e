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

/// Quantile `q` of sorted values, interpolating linearly between neighbours; NaN when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    sorted[i] + (sorted[(i + 1).min(sorted.len() - 1)] - sorted[i]) * frac
}

/// Parameter groups of `ncols` columns: every column its own (`per_asset`), or feature f of
/// every asset block sharing one; columns after the asset blocks are always their own.
pub fn groups(
    ncols: usize,
    asset_columns: usize,
    per_asset_block: usize,
    per_asset: bool,
) -> Vec<usize> {
    (0..ncols)
        .map(|c| {
            if per_asset || c >= asset_columns || per_asset_block == 0 {
                c
            } else {
                c % per_asset_block
            }
        })
        .collect()
}

/// Values kept per group for the robust scaler's quantiles; beyond it the kept values are
/// thinned to an evenly spaced subsample (exact below the cap, approximate above).
pub const ROBUST_SAMPLE_CAP: usize = 1 << 16;

/// Rows the standard scaler summarises at a time (two passes over a block that stays in
/// cache), before merging the block into the running moments.
const BLOCK_ROWS: usize = 64;

/// Streaming accumulator of one parameter group.
#[derive(Debug, Clone)]
enum Acc {
    MinMax {
        lo: f64,
        hi: f64,
    },
    Moments {
        n: f64,
        mean: f64,
        m2: f64,
    },
    Sample {
        kept: Vec<f64>,
        stride: u64,
        seen: u64,
    },
}

impl Acc {
    fn push(&mut self, x: f64) {
        match self {
            Acc::MinMax { lo, hi } => {
                *lo = lo.min(x);
                *hi = hi.max(x);
            }
            Acc::Moments { .. } => unreachable!("moments are merged per block"),
            Acc::Sample { kept, stride, seen } => {
                if *seen % *stride == 0 {
                    if kept.len() == ROBUST_SAMPLE_CAP {
                        // Keep every other value and sample half as often from now on.
                        let mut i = 0;
                        kept.retain(|_| {
                            i += 1;
                            i % 2 == 1
                        });
                        *stride *= 2;
                    }
                    if *seen % *stride == 0 {
                        kept.push(x);
                    }
                }
                *seen += 1;
            }
        }
    }

    /// `(center, scale)`, with scale 1 for constant or empty groups.
    fn finish(self) -> (f64, f64) {
        let (center, scale) = match self {
            Acc::MinMax { lo, hi } if lo.is_finite() => (lo, hi - lo),
            Acc::MinMax { .. } => (0.0, 1.0),
            Acc::Moments { n, mean, m2 } => (
                mean,
                if n > 1.0 {
                    (m2 / (n - 1.0)).sqrt()
                } else {
                    1.0
                },
            ),
            Acc::Sample { kept, .. } if kept.is_empty() => (0.0, 1.0),
            Acc::Sample { mut kept, .. } => {
                kept.sort_by(f64::total_cmp);
                let q = |p| quantile(&kept, p);
                (q(0.5), q(0.75) - q(0.25))
            }
        };
        (
            center,
            if scale > 0.0 && scale.is_finite() {
                scale
            } else {
                1.0
            },
        )
    }
}

/// Fits a [`Scaler`] from rows streamed in any number of chunks, in bounded memory. The
/// result does not depend on how the rows are chunked.
#[derive(Debug, Clone)]
pub struct ScalerFit {
    method: NormalizationMethod,
    groups: Vec<usize>,
    accs: Vec<Acc>,
    /// Standard: rows of the block not complete yet, so blocks never depend on chunking.
    pending: Vec<f64>,
}

/// Count, mean and sum of squared deviations per column of one block of rows (finite values
/// only), by two passes: stable, and columnar so the loops vectorise. Each column is shifted
/// by its first finite value, so a constant column gets exactly its value and zero spread.
#[derive(Debug, Clone, Default)]
struct BlockMoments {
    shift: Vec<f64>,
    n: Vec<f64>,
    sum: Vec<f64>,
    m2: Vec<f64>,
}

/// `v` where `x` is finite, else 0: bit masks rather than a branch, so loops vectorise.
fn where_finite(x: f64, v: f64) -> f64 {
    let keep = 0u64.wrapping_sub(u64::from(x.is_finite()));
    f64::from_bits(v.to_bits() & keep)
}

impl BlockMoments {
    fn compute(&mut self, block: &[f64], ncols: usize) {
        for v in [&mut self.n, &mut self.sum, &mut self.m2] {
            v.clear();
            v.resize(ncols, 0.0);
        }
        self.shift.clear();
        self.shift.resize(ncols, f64::NAN);
        let shift = &mut self.shift[..ncols];
        // Usually the first row is complete and this loop runs once.
        for row in block.chunks_exact(ncols) {
            for (k, &x) in shift.iter_mut().zip(&row[..ncols]) {
                if !k.is_finite() {
                    *k = x;
                }
            }
            if shift.iter().all(|k| k.is_finite()) {
                break;
            }
        }
        let (n, sum) = (&mut self.n[..ncols], &mut self.sum[..ncols]);
        for row in block.chunks_exact(ncols) {
            let row = &row[..ncols];
            for c in 0..ncols {
                let x = row[c];
                n[c] += where_finite(x, 1.0);
                sum[c] += where_finite(x, x - shift[c]);
            }
        }
        // From here on `sum` holds the block mean.
        for c in 0..ncols {
            sum[c] = if n[c] > 0.0 {
                shift[c] + sum[c] / n[c]
            } else {
                0.0
            };
        }
        let m2 = &mut self.m2[..ncols];
        for row in block.chunks_exact(ncols) {
            let row = &row[..ncols];
            for c in 0..ncols {
                let d = where_finite(row[c], row[c] - sum[c]);
                m2[c] += d * d;
            }
        }
    }
}

impl ScalerFit {
    /// `groups[c]` is the parameter group of column `c`.
    pub fn new(method: NormalizationMethod, groups: Vec<usize>) -> Self {
        let n = groups.iter().copied().max().map_or(0, |g| g + 1);
        let acc = match method {
            NormalizationMethod::MinMax => Acc::MinMax {
                lo: f64::INFINITY,
                hi: f64::NEG_INFINITY,
            },
            NormalizationMethod::Standard => Acc::Moments {
                n: 0.0,
                mean: 0.0,
                m2: 0.0,
            },
            NormalizationMethod::Robust => Acc::Sample {
                kept: Vec::new(),
                stride: 1,
                seen: 0,
            },
        };
        Self {
            method,
            groups,
            accs: vec![acc; n],
            pending: Vec::new(),
        }
    }

    /// Adds row-major rows of `groups.len()` columns; NaN values are ignored.
    pub fn update(&mut self, mut rows: &[f64]) {
        let ncols = self.groups.len();
        if ncols == 0 {
            return;
        }
        if self.method != NormalizationMethod::Standard {
            for row in rows.chunks_exact(ncols) {
                for (x, g) in row.iter().zip(&self.groups) {
                    if x.is_finite() {
                        self.accs[*g].push(*x);
                    }
                }
            }
            return;
        }
        let block = BLOCK_ROWS * ncols;
        let mut moments = BlockMoments::default();
        if !self.pending.is_empty() {
            let take = (block - self.pending.len()).min(rows.len());
            self.pending.extend_from_slice(&rows[..take]);
            rows = &rows[take..];
            if self.pending.len() < block {
                return;
            }
            let pending = std::mem::take(&mut self.pending);
            self.merge_block(&pending, &mut moments);
        }
        let mut blocks = rows.chunks_exact(block);
        for b in &mut blocks {
            self.merge_block(b, &mut moments);
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    /// Merges the moments of one block into the groups (Chan et al.'s pairwise update).
    fn merge_block(&mut self, block: &[f64], moments: &mut BlockMoments) {
        moments.compute(block, self.groups.len());
        for (c, g) in self.groups.iter().enumerate() {
            let nb = moments.n[c];
            if nb == 0.0 {
                continue;
            }
            let (mb, m2b) = (moments.sum[c], moments.m2[c]);
            if let Acc::Moments { n, mean, m2 } = &mut self.accs[*g] {
                let total = *n + nb;
                let d = mb - *mean;
                *mean += d * (nb / total);
                *m2 += m2b + d * d * (*n * nb / total);
                *n = total;
            }
        }
    }

    /// The fitted scaler.
    pub fn finish(mut self) -> Scaler {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.merge_block(&pending, &mut BlockMoments::default());
        }
        let params: Vec<(f64, f64)> = self.accs.into_iter().map(Acc::finish).collect();
        Scaler {
            method: self.method,
            center: self.groups.iter().map(|&g| params[g].0).collect(),
            scale: self.groups.iter().map(|&g| params[g].1).collect(),
        }
    }
}

impl Scaler {
    /// Fits on `rows` of the row-major matrix `data` (`groups.len()` columns); NaN values are
    /// ignored. `groups[c]` is the parameter group of column `c`.
    pub fn fit(
        method: NormalizationMethod,
        data: &[f64],
        groups: &[usize],
        rows: impl Iterator<Item = usize>,
    ) -> Self {
        let n = groups.len();
        let mut fit = ScalerFit::new(method, groups.to_vec());
        // Consecutive rows go in as one slice: fewer, larger updates.
        let mut run: Option<std::ops::Range<usize>> = None;
        for r in rows {
            run = match run {
                Some(span) if span.end == r => Some(span.start..r + 1),
                Some(span) => {
                    fit.update(&data[span.start * n..span.end * n]);
                    Some(r..r + 1)
                }
                None => Some(r..r + 1),
            };
        }
        if let Some(span) = run {
            fit.update(&data[span.start * n..span.end * n]);
        }
        fit.finish()
    }

    /// Scales one row in place.
    pub fn transform_row(&self, row: &mut [f64]) {
        for ((x, c), s) in row.iter_mut().zip(&self.center).zip(&self.scale) {
            *x = (*x - c) / s;
        }
    }

    /// Scales row-major rows in place, equal to [`Self::transform_row`] on each row, in
    /// parallel over contiguous row ranges (the pass is bound by memory bandwidth).
    pub fn transform_rows(&self, rows: &mut [f64]) {
        let ncols = self.center.len();
        if ncols == 0 {
            return;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = (rows.len() / ncols).div_ceil(threads).max(1) * ncols;
        std::thread::scope(|s| {
            for part in rows.chunks_mut(per_thread) {
                s.spawn(move || {
                    for row in part.chunks_exact_mut(ncols) {
                        self.transform_row(row);
                    }
                });
            }
        });
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
    fn robust_sample_is_exact_below_the_cap_and_close_above() {
        let n = ROBUST_SAMPLE_CAP * 5 + 123;
        // A shuffled-looking but deterministic sequence of 0..n.
        let data: Vec<f64> = (0..n).map(|i| ((i * 7_919) % n) as f64).collect();
        let s = Scaler::fit(NormalizationMethod::Robust, &data, &[0], 0..n);
        let exact_median = (n - 1) as f64 / 2.0;
        assert!(
            (s.center[0] - exact_median).abs() / exact_median < 0.01,
            "median {}",
            s.center[0]
        );
        assert!(
            (s.scale[0] / (n as f64 / 2.0) - 1.0).abs() < 0.01,
            "IQR {}",
            s.scale[0]
        );
    }

    #[test]
    fn chunked_updates_equal_one_update() {
        let data: Vec<f64> = (0..300).map(|i| (i as f64 * 0.37).sin() * 10.0).collect();
        for method in [
            NormalizationMethod::MinMax,
            NormalizationMethod::Standard,
            NormalizationMethod::Robust,
        ] {
            let mut one = ScalerFit::new(method, vec![0, 1, 2]);
            one.update(&data);
            let mut chunked = ScalerFit::new(method, vec![0, 1, 2]);
            for c in data.chunks(30) {
                chunked.update(c);
            }
            assert_eq!(one.finish(), chunked.finish(), "{method:?}");
        }
    }

    #[test]
    fn grouped_columns_share_parameters() {
        let data = [0.0, 10.0, 2.0, 20.0];
        let s = Scaler::fit(NormalizationMethod::MinMax, &data, &[0, 0], 0..2);
        assert_eq!(s.center, vec![0.0, 0.0]);
        assert_eq!(s.scale, vec![20.0, 20.0]);
    }
}
