//! Alignment of each asset's snapshots onto one cadence grid, and causal gap handling.
//!
//! Grid step `k` is the instant `start + k * cadence`. It takes the last snapshot received in
//! `(t_k - cadence, t_k]` — never a later one. A step without a snapshot is filled from the
//! past (forward fill) only while the last real snapshot is at most `max_gap` old; beyond that
//! the step stays missing, so no window or label can bridge a gap longer than `max_gap`.
//! Under `skip` nothing is filled.

use crate::config::GapHandling;
use crate::store::GapCounts;

/// Order-book level arrays, row-major: row `i` holds levels 1..=depth of snapshot `i`.
#[derive(Debug, Clone, Copy)]
pub struct Levels<'a> {
    /// Levels per side.
    pub depth: usize,
    /// Bid prices, best first.
    pub bid_px: &'a [f64],
    /// Bid quantities.
    pub bid_qty: &'a [f64],
    /// Ask prices, best first.
    pub ask_px: &'a [f64],
    /// Ask quantities.
    pub ask_qty: &'a [f64],
}

impl Levels<'_> {
    /// Number of snapshots.
    pub fn rows(&self) -> usize {
        self.bid_px.len() / self.depth.max(1)
    }
}

/// What a grid step holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// A snapshot received in this step's cadence interval.
    Real,
    /// No snapshot; the last real one (at most `max_gap` old) was carried forward.
    Filled,
    /// No usable data: NaN everywhere, and no window or label may contain the step.
    Missing,
}

/// `AlignedAsset::source` of a step without a book row.
pub const NO_ROW: u32 = u32::MAX;

/// One asset on the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedAsset {
    /// Book row (index into the asset's snapshots) each step takes, `NO_ROW` where missing.
    /// Indices rather than copied levels: features read the snapshots in place.
    pub source: Vec<u32>,
    /// State per step.
    pub state: Vec<StepState>,
}

impl AlignedAsset {
    /// Counts of each step state.
    pub fn counts(&self) -> GapCounts {
        let mut c = GapCounts::default();
        for s in &self.state {
            match s {
                StepState::Real => c.real += 1,
                StepState::Filled => c.filled += 1,
                StepState::Missing => c.missing += 1,
            }
        }
        c
    }
}

/// The cadence grid: `steps` instants from `start_ms`, `cadence_ms` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Instant of step 0 (UTC Unix ms).
    pub start_ms: i64,
    /// Milliseconds between steps.
    pub cadence_ms: i64,
    /// Number of steps.
    pub steps: usize,
}

impl Grid {
    /// The grid covering `[first, last]` with steps on cadence boundaries (UTC).
    pub fn covering(first_ms: i64, last_ms: i64, cadence_ms: i64) -> Self {
        let start_ms = first_ms.div_euclid(cadence_ms) * cadence_ms
            + if first_ms.rem_euclid(cadence_ms) == 0 {
                0
            } else {
                cadence_ms
            };
        let steps = if last_ms < start_ms {
            0
        } else {
            ((last_ms - start_ms) / cadence_ms) as usize + 1
        };
        Self {
            start_ms,
            cadence_ms,
            steps,
        }
    }

    /// Instant of step `k`.
    pub fn time_ms(&self, k: usize) -> i64 {
        self.start_ms + k as i64 * self.cadence_ms
    }
}

/// Aligns one asset's snapshots (`ts_ms` strictly increasing) onto `grid`.
pub fn align(ts_ms: &[i64], grid: Grid, handling: GapHandling, max_gap_ms: i64) -> AlignedAsset {
    let n = grid.steps;
    let mut source = vec![NO_ROW; n];
    let mut state = vec![StepState::Missing; n];
    let mut src = 0;
    let mut last_real: Option<(usize, i64)> = None; // (source row, its ts)
    for (k, (step_state, step_source)) in state.iter_mut().zip(&mut source).enumerate() {
        let t = grid.time_ms(k);
        // Every snapshot with ts <= t; the last one in (t - cadence, t] is this step's.
        let mut taken = None;
        while src < ts_ms.len() && ts_ms[src] <= t {
            if ts_ms[src] > t - grid.cadence_ms {
                taken = Some(src);
            }
            last_real = Some((src, ts_ms[src]));
            src += 1;
        }
        let row = match (taken, last_real) {
            (Some(r), _) => {
                *step_state = StepState::Real;
                Some(r)
            }
            (None, Some((r, ts))) if handling != GapHandling::Skip && t - ts <= max_gap_ms => {
                *step_state = StepState::Filled;
                Some(r)
            }
            _ => None,
        };
        if let Some(r) = row {
            *step_source = r as u32;
        }
    }
    AlignedAsset { source, state }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_starts_on_a_cadence_boundary() {
        let g = Grid::covering(1_001, 10_000, 1_000);
        assert_eq!((g.start_ms, g.steps), (2_000, 9));
        let g = Grid::covering(1_000, 1_000, 1_000);
        assert_eq!((g.start_ms, g.steps), (1_000, 1));
    }

    #[test]
    fn steps_take_the_last_snapshot_of_their_interval_and_fill_only_short_gaps() {
        // Snapshots at 0, 1000, 1500 (supersedes 1000... no: 1500 belongs to step 2), then a
        // 2 s gap (steps 3, 4), then 5000, then a 4 s gap (steps 6..=8), then 9000.
        let ts = [0, 1_000, 1_500, 2_000, 5_000, 9_000];
        let grid = Grid::covering(0, 9_000, 1_000);
        let al = align(&ts, grid, GapHandling::ForwardFill, 2_000);
        use StepState::*;
        assert_eq!(
            al.state,
            vec![
                Real, Real, Real, Filled, Filled, Real, Filled, Filled, Missing, Real
            ]
        );
        // Step 2 (t=2000) takes the snapshot at 2000 (row 3), not the superseded one at 1500.
        assert_eq!(al.source[2], 3);
        assert_eq!(al.source[3], 3);
        assert_eq!(al.source[8], NO_ROW);
        assert_eq!(
            al.counts(),
            GapCounts {
                real: 5,
                filled: 4,
                missing: 1
            }
        );

        let al = align(&ts, grid, GapHandling::Skip, 2_000);
        assert_eq!(al.counts().filled, 0);
        assert_eq!(al.state[3], Missing);
    }
}
