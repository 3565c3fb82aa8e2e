//! A deliberately simple long/short/flat backtest of the classifier's expected return.
//!
//! Rule: at each decision step the model's expected return is
//! `E[r] = sum_c p_c * mean_change_c` (the caller computes it, `mean_change_c` being the mean
//! relative price change of class `c` in training, as a fraction). The position is +1 when
//! `E[r] > cost`, -1 when `E[r] < -cost`, else 0 (flat): a trade is only worth taking when the
//! expected move pays for the cost of entering it. Decisions are taken every `horizon` samples
//! (the caller passes only those samples), so holding periods do not overlap and each realised
//! return is the actual relative change over one horizon (a fraction).
//!
//! Per period: `pnl = position * realised - cost * |position - previous position|`, the
//! position before the first period being 0 (entering costs once; the final position is not
//! closed, so no exit cost is charged at the end). Equity starts at `initial_capital` and
//! compounds: `equity_t = equity_{t-1} * (1 + pnl_t)`.

use serde::{Deserialize, Serialize};

/// What a backtest runs on; all returns and costs are fractions (0.001 = 0.1 % = 10 bp).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BacktestInput<'a> {
    /// The model's expected return per decision step (`sum_c p_c * mean_change_c`).
    pub expected: &'a [f64],
    /// The realised relative price change over the holding period after each decision.
    pub realised: &'a [f64],
    /// Transaction cost per unit of turnover (going from +1 to -1 is 2 units).
    pub cost: f64,
    /// Equity before the first period.
    pub initial_capital: f64,
    /// Decision periods per year, for the annualised Sharpe ratio.
    pub periods_per_year: f64,
}

/// Outcome of a backtest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacktestResult {
    /// Equity after each period, `n + 1` values starting at the initial capital.
    pub equity: Vec<f64>,
    /// `final / initial - 1` (computed from the compounded returns, so it is defined even for
    /// an initial capital of 0).
    pub total_return: f64,
    /// Annualised Sharpe ratio without a risk-free rate: mean / sample standard deviation
    /// (n - 1) of the period returns times `sqrt(periods_per_year)`; 0 when the standard
    /// deviation is 0 or there are fewer than 2 periods.
    pub sharpe: f64,
    /// Largest fall from a running peak of equity (the initial capital counts as a peak), as
    /// a positive fraction of that peak; 0 when equity never falls.
    pub max_drawdown: f64,
    /// Share of the periods holding a position (non-zero) whose pnl is > 0; 0 without any.
    pub hit_rate: f64,
    /// Sum of `|position - previous position|`, the entry from flat included.
    pub turnover: f64,
    /// Number of periods where the position changed to a non-zero value (an entry or a flip).
    pub trades: u64,
}

/// The position for each expected return: +1 above `cost`, -1 below `-cost`, else 0. A NaN
/// expected return stays flat.
pub fn positions_from_expected(expected: &[f64], cost: f64) -> Vec<f64> {
    expected
        .iter()
        .map(|&e| {
            if e > cost {
                1.0
            } else if e < -cost {
                -1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// Backtest of the model: positions from `input.expected` (see the module rule), evaluated
/// on `input.realised`. Panics if the two slices differ in length.
pub fn backtest(input: &BacktestInput<'_>) -> BacktestResult {
    assert_eq!(
        input.expected.len(),
        input.realised.len(),
        "one expected return per realised return is required"
    );
    let positions = positions_from_expected(input.expected, input.cost);
    backtest_positions(&positions, input)
}

/// Reference: long (+1) in every period, so the entry cost is paid once; `input.expected` is
/// ignored.
pub fn always_long(input: &BacktestInput<'_>) -> BacktestResult {
    backtest_positions(&vec![1.0; input.realised.len()], input)
}

/// Reference: flat in every period, which returns exactly 0 with no trades;
/// `input.expected` is ignored.
pub fn always_flat(input: &BacktestInput<'_>) -> BacktestResult {
    backtest_positions(&vec![0.0; input.realised.len()], input)
}

/// Backtest of given positions (any real exposure, usually -1, 0, +1) against
/// `input.realised`, with the cost, capital and annualisation of `input`; `input.expected` is
/// ignored. Panics if `positions` and `input.realised` differ in length.
pub fn backtest_positions(positions: &[f64], input: &BacktestInput<'_>) -> BacktestResult {
    assert_eq!(
        positions.len(),
        input.realised.len(),
        "one position per realised return is required"
    );
    let n = positions.len();
    let mut returns = Vec::with_capacity(n);
    let mut turnover = 0.0;
    let mut trades = 0u64;
    let (mut held, mut won) = (0u64, 0u64);
    let mut previous = 0.0;
    for (&pos, &realised) in positions.iter().zip(input.realised) {
        let change = (pos - previous).abs();
        let pnl = pos * realised - input.cost * change;
        turnover += change;
        if change > 0.0 && pos != 0.0 {
            trades += 1;
        }
        if pos != 0.0 {
            held += 1;
            if pnl > 0.0 {
                won += 1;
            }
        }
        returns.push(pnl);
        previous = pos;
    }

    // Growth of one unit of capital, so that drawdown and total return do not depend on the
    // capital (and stay defined for a capital of 0).
    let mut growth = 1.0f64;
    let mut peak = 1.0f64;
    let mut max_drawdown = 0.0f64;
    let mut equity = Vec::with_capacity(n + 1);
    equity.push(input.initial_capital);
    for &r in &returns {
        growth *= 1.0 + r;
        equity.push(input.initial_capital * growth);
        peak = peak.max(growth);
        max_drawdown = max_drawdown.max((peak - growth) / peak);
    }

    BacktestResult {
        equity,
        total_return: growth - 1.0,
        sharpe: sharpe(&returns, input.periods_per_year),
        max_drawdown,
        hit_rate: if held == 0 {
            0.0
        } else {
            won as f64 / held as f64
        },
        turnover,
        trades,
    }
}

/// Annualised Sharpe ratio of period returns (sample standard deviation); 0 when undefined.
fn sharpe(returns: &[f64], periods_per_year: f64) -> f64 {
    if returns.len() < 2 {
        return 0.0;
    }
    let n = returns.len() as f64;
    let mean = returns.iter().sum::<f64>() / n;
    let var = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let std = var.sqrt();
    if std == 0.0 {
        0.0
    } else {
        mean / std * periods_per_year.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64 for reproducible test data.
    struct XorShift(u64);

    impl XorShift {
        fn unit(&mut self) -> f64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Uniform in [-a, a).
        fn sym(&mut self, a: f64) -> f64 {
            (self.unit() * 2.0 - 1.0) * a
        }
    }

    fn input<'a>(expected: &'a [f64], realised: &'a [f64], cost: f64) -> BacktestInput<'a> {
        BacktestInput {
            expected,
            realised,
            cost,
            initial_capital: 100.0,
            periods_per_year: 4.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn positions_follow_the_cost_threshold() {
        let p = positions_from_expected(&[0.002, 0.001, 0.0, -0.001, -0.0011, f64::NAN], 0.001);
        assert_eq!(p, vec![1.0, 0.0, 0.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn hand_computed_four_periods_without_cost() {
        // Long throughout: equity 100 -> 110 -> 88 -> 92.4 -> 101.64.
        let realised = [0.10, -0.20, 0.05, 0.10];
        let r = backtest(&input(&[1.0; 4], &realised, 0.0));
        let expected_equity = [100.0, 110.0, 88.0, 92.4, 101.64];
        for (a, b) in r.equity.iter().zip(expected_equity) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        assert!((r.total_return - 0.0164).abs() < 1e-12);
        // Peak 110, trough 88.
        assert!(close(r.max_drawdown, 0.2));
        // mean 0.0125; squared deviations sum to 0.061875, sample variance 0.020625.
        assert!(close(r.sharpe, 0.0125 / 0.020625f64.sqrt() * 2.0));
        assert_eq!(r.turnover, 1.0);
        assert_eq!(r.trades, 1);
        assert!(close(r.hit_rate, 0.75));
    }

    #[test]
    fn hand_computed_four_periods_with_cost() {
        // Positions +1, +1, 0, -1 at cost 0.01: pnl 0.09, -0.20, -0.01, -0.11.
        let realised = [0.10, -0.20, 0.05, 0.10];
        let r = backtest(&input(&[0.05, 0.05, 0.0, -0.05], &realised, 0.01));
        let expected_equity = [100.0, 109.0, 87.2, 86.328, 76.831_92];
        for (a, b) in r.equity.iter().zip(expected_equity) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        assert!(close(r.max_drawdown, (109.0 - 76.831_92) / 109.0));
        // mean -0.0575; squared deviations sum to 0.047075, sample variance 0.047075 / 3.
        assert!(close(r.sharpe, -0.0575 / (0.047075f64 / 3.0).sqrt() * 2.0));
        assert_eq!(r.turnover, 3.0);
        assert_eq!(r.trades, 2);
        assert!(close(r.hit_rate, 1.0 / 3.0));
        assert!(close(r.total_return, 76.831_92 / 100.0 - 1.0));
    }

    #[test]
    fn always_flat_returns_exactly_zero() {
        let realised = [0.1, -0.3, 0.2];
        let r = always_flat(&input(&[9.0, 9.0, 9.0], &realised, 0.01));
        assert_eq!(r.total_return, 0.0);
        assert_eq!(r.equity, vec![100.0; 4]);
        assert_eq!(
            (r.sharpe, r.max_drawdown, r.hit_rate, r.turnover, r.trades),
            (0.0, 0.0, 0.0, 0.0, 0)
        );
    }

    #[test]
    fn always_long_pays_the_entry_cost_once() {
        let realised = [0.01, 0.02];
        let r = always_long(&input(&[], &realised, 0.001));
        assert!(close(r.total_return, (1.009 * 1.02) - 1.0));
        assert_eq!((r.turnover, r.trades), (1.0, 1));
    }

    #[test]
    fn a_perfect_oracle_makes_money() {
        let mut rng = XorShift(42);
        let cost = 0.0005;
        let realised: Vec<f64> = (0..1000).map(|_| rng.sym(0.005)).collect();
        let r = backtest(&BacktestInput {
            expected: &realised,
            realised: &realised,
            cost,
            initial_capital: 1000.0,
            periods_per_year: 365.0 * 24.0,
        });
        assert!(r.total_return > 0.5, "{}", r.total_return);
        assert!(r.sharpe > 0.0);
        assert!(r.hit_rate > 0.8, "{}", r.hit_rate);
        assert!(r.max_drawdown < 0.05, "{}", r.max_drawdown);
        assert!(*r.equity.last().unwrap() > 1000.0);
    }

    #[test]
    fn a_random_model_loses_about_the_costs() {
        let mut rng = XorShift(0xDEAD_BEEF);
        let cost = 0.0002;
        let n = 2000;
        let realised: Vec<f64> = (0..n).map(|_| rng.sym(0.0005)).collect();
        let expected: Vec<f64> = (0..n).map(|_| rng.sym(0.001)).collect();
        let r = backtest(&BacktestInput {
            expected: &expected,
            realised: &realised,
            cost,
            initial_capital: 1.0,
            periods_per_year: 365.0 * 24.0,
        });
        let drag = cost * r.turnover;
        assert!(r.turnover > 0.5 * n as f64, "{}", r.turnover);
        assert!(r.total_return < 0.0, "{}", r.total_return);
        // Returns compound, so the sum of the period pnls is the log growth: it should be
        // about minus the costs paid, plus zero-mean market noise of about
        // 0.0003 * sqrt(1600 held periods) ≈ 0.012 around a drag of about 0.38.
        let log_growth = r.total_return.ln_1p();
        assert!(
            (log_growth + drag).abs() < 0.1 * drag,
            "log growth {log_growth} vs drag {drag}"
        );
        // Compounded, the loss is smaller than the linear drag but of the same order.
        assert!(r.total_return > -drag && r.total_return < -0.5 * drag);
    }

    #[test]
    fn empty_input_is_neutral() {
        let r = backtest(&input(&[], &[], 0.01));
        assert_eq!(r.equity, vec![100.0]);
        assert_eq!((r.total_return, r.sharpe, r.max_drawdown), (0.0, 0.0, 0.0));
    }
}
