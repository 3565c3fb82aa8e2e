//! Windows by index: how a row of the preprocessed store becomes the model input
//! `[assets, T, features]`, sliced at batch time and never materialised in the store.
//!
//! A store row holds every asset's block of features, then the temporal columns. The model
//! sees, per asset channel, that asset's block followed by the temporal columns (the same
//! calendar values for every asset), so `features = features_per_asset + temporal`.

use serde::{Deserialize, Serialize};

/// One sample's shape: `[assets, time_steps, features_per_asset]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleShape {
    /// Assets (target first, then correlated ones): conv input channels when stacked.
    pub assets: usize,
    /// Window length T.
    pub time_steps: usize,
    /// Features per asset and time step.
    pub features: usize,
}

impl SampleShape {
    /// Values in one sample.
    pub fn len(&self) -> usize {
        self.assets * self.time_steps * self.features
    }

    /// Whether a sample holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for SampleShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}, {}, {}]",
            self.assets, self.time_steps, self.features
        )
    }
}

/// Where each asset's features sit in a store row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowLayout {
    /// Assets, target first.
    pub assets: usize,
    /// Columns per asset block.
    pub features_per_asset: usize,
    /// Columns of a whole row (asset blocks, then temporal).
    pub columns: usize,
}

impl RowLayout {
    /// Columns of all asset blocks; the temporal columns follow.
    pub fn asset_columns(&self) -> usize {
        self.assets * self.features_per_asset
    }

    /// Temporal columns at the end of each row.
    pub fn temporal(&self) -> usize {
        self.columns - self.asset_columns()
    }

    /// The model input shape for windows of `window` steps.
    pub fn sample_shape(&self, window: usize) -> SampleShape {
        SampleShape {
            assets: self.assets,
            time_steps: window,
            features: self.features_per_asset + self.temporal(),
        }
    }

    /// Appends the window of `window` rows ending at row `end` (inclusive) of `rows`
    /// (row-major, `columns` wide) to `out` as `[assets, window, features]`.
    pub fn push_window(&self, rows: &[f32], end: usize, window: usize, out: &mut Vec<f32>) {
        let (fa, ac, n) = (self.features_per_asset, self.asset_columns(), self.columns);
        let first = end + 1 - window;
        for a in 0..self.assets {
            for t in first..=end {
                let row = &rows[t * n..(t + 1) * n];
                out.extend_from_slice(&row[a * fa..(a + 1) * fa]);
                out.extend_from_slice(&row[ac..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_put_each_asset_block_with_the_temporal_columns() {
        // 2 assets x 2 features + 1 temporal column; value = 10 * step + column.
        let layout = RowLayout {
            assets: 2,
            features_per_asset: 2,
            columns: 5,
        };
        let rows: Vec<f32> = (0..4)
            .flat_map(|t| (0..5).map(move |c| (10 * t + c) as f32))
            .collect();
        let mut out = Vec::new();
        layout.push_window(&rows, 2, 2, &mut out);
        assert_eq!(layout.sample_shape(2).features, 3);
        assert_eq!(
            out,
            vec![
                10., 11., 14., 20., 21., 24., // asset 0, steps 1..=2
                12., 13., 14., 22., 23., 24., // asset 1
            ]
        );
    }
}
