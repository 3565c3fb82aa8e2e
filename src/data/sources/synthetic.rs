//! A seeded synthetic market: correlated log-price paths (one common shock, each correlated
//! asset at `data.synthetic.correlation` with the target), calm and volatile regimes
//! (Markov switching), prices on a tick grid, spreads of one tick or more, ten-ish levels of
//! lognormal quantities growing with depth, missing snapshots (gaps) and corrupt rows that the
//! quality rules then drop and count. Same seed, same market, on every machine: the
//! generator is a hand-written SplitMix64 whose output no dependency update can change.
//!
//! With `data.synthetic.signal` the market carries a signal a quant would find in the book:
//! a latent order-flow imbalance `I` (AR(1), stationary N(0, 1)) tilts the target's queue
//! sizes on levels 1..=k (observed with noise) and drifts its next log return by
//! `strength x sigma_calm x I`; optionally the target follows the first correlated asset's
//! previous return (`lead_lag`), and the strength changes at `change_at` (a regime change).
//! The signal draws from its own random stream, so without it (or with zero strength, zero
//! lead-lag and no change) every byte is that of the plain random walk.
//!
//! Every draw is keyed by the timestamp it belongs to, and the path starts a burn-in before
//! the configured range (a day, or longer until the imbalance has forgotten its start), so a
//! moment of the market is the same whichever range contains it: two ranges that share a day
//! see the same regimes, imbalance, returns, queues, gaps and corrupt rows there, and only the
//! price level (where the burn-in's walk left it) differs. Consecutive one-day ranges are
//! consecutive days of one market, not the same day again.

use indicatif::ProgressBar;

use super::Source;
use crate::config::{
    ClassDefinition, DataConfig, SignalConfig, SourceType, Symbol, SyntheticConfig,
};
use crate::data::DataError;
use crate::data::assemble::{Assembler, Row};

const SECONDS_PER_YEAR: f64 = 365.0 * 86_400.0;
// Independent random streams, so a book never depends on how many draws a path made.
const PATH_STREAM: u64 = 1;
const BOOK_STREAM: u64 = 2;
const SIGNAL_STREAM: u64 = 3;
// Mean length in seconds of a calm spell (~4 h) and of a volatile one (~1 h), and the
// volatility multiplier of the volatile regime.
const CALM_SPELL_SECONDS: f64 = 14_400.0;
const VOLATILE_SPELL_SECONDS: f64 = 3600.0;
const VOLATILE_SCALE: f64 = 2.5;
// The burn-in before a range's start: at least a day (the regime chain has then coalesced
// with that of any earlier start, P(not) < e^-17), longer while the imbalance still carries
// more than 1e-12 of its start, at most 30 days.
const BURN_IN_SECONDS: f64 = 86_400.0;
const MAX_BURN_IN_SECONDS: f64 = 30.0 * 86_400.0;
const IMBALANCE_MEMORY: f64 = 1e-12;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn for_key(seed: u64, stream: u64, a: u64, b: u64) -> Self {
        Rng(mix(
            seed ^ mix(stream ^ mix(a ^ mix(b.wrapping_add(0x9E37_79B9))))
        ))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// 0, 1, 2, ... with P(n) = (1-p) p^n, capped.
    fn geometric(&mut self, p: f64, cap: u32) -> u32 {
        let mut n = 0;
        while n < cap && self.uniform() < p {
            n += 1;
        }
        n
    }
}

/// Starting price of well-known symbols (roughly mid 2024), else one from the name's hash.
fn initial_price(symbol: &str) -> f64 {
    match symbol {
        "BTCUSDT" => 60_000.0,
        "ETHUSDT" => 3_000.0,
        "BNBUSDT" => 550.0,
        "SOLUSDT" => 150.0,
        "ADAUSDT" => 0.35,
        "XRPUSDT" => 0.6,
        "ETHBTC" => 0.05,
        "BNBBTC" => 0.009,
        "ADABTC" => 0.000_006,
        other => {
            let h = symbol_hash(other);
            10f64.powf((h % 1000) as f64 / 250.0 - 1.0)
        }
    }
}

fn symbol_hash(symbol: &str) -> u64 {
    symbol.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// Per-symbol constants.
#[derive(Debug, Clone)]
struct Asset {
    // Prices are `ticks / inv_tick`, so they print as short decimals.
    inv_tick: f64,
    inv_lot: f64,
    initial_log_price: f64,
    base_qty: f64,
    vol_scale: f64,
}

/// Path state at one grid step.
#[derive(Debug, Clone)]
struct State {
    /// Steps since the path's origin (the burn-in's start).
    step: u64,
    log_price: Vec<f64>,
    volatile: bool,
    /// The latent order-flow imbalance `I` (0 without a signal).
    imbalance: f64,
    /// The first correlated asset's last log return (what the target follows with lead-lag),
    /// kept as drawn rather than as a difference of log prices, so that it does not depend on
    /// the price level.
    lead_return: f64,
}

/// The active signal and the first step of its second regime.
#[derive(Debug, Clone)]
struct Signal {
    config: SignalConfig,
    change_step: Option<u64>,
}

impl Signal {
    /// The signal of `synthetic`, or `None` when it would change nothing (the plain walk).
    fn of(synthetic: &SyntheticConfig, origin_ms: i64, cadence_ms: i64) -> Option<Self> {
        let config = synthetic.signal.clone()?;
        let after = config.strength_after.unwrap_or(0.0);
        if config.strength == 0.0 && after == 0.0 && config.lead_lag == 0.0 {
            return None;
        }
        let change_step = config.change_at.as_ref().map(|t| {
            let ms = t.start().timestamp_millis() - origin_ms;
            (ms.max(0) as u64).div_ceil(cadence_ms as u64)
        });
        Some(Self {
            config,
            change_step,
        })
    }

    /// The drift strength used by the return from `step` to `step + 1`.
    fn strength_at(&self, step: u64) -> f64 {
        match (self.change_step, self.config.strength_after) {
            (Some(c), Some(after)) if step >= c => after,
            _ => self.config.strength,
        }
    }
}

/// The synthetic source.
#[derive(Debug)]
pub struct SyntheticSource {
    config: SyntheticConfig,
    symbols: Vec<Symbol>,
    assets: Vec<Asset>,
    depth: usize,
    /// Where the path starts: the range's start less the burn-in, on the range's grid.
    origin_ms: i64,
    cadence_ms: i64,
    signal: Option<Signal>,
    state: State,
}

impl SyntheticSource {
    /// A market for the configured symbols, time range, cadence and depth.
    pub fn new(data: &DataConfig) -> Self {
        let symbols = data.asset_pairs.all();
        let assets: Vec<Asset> = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = initial_price(s.as_str());
                let magnitude = p.log10().floor();
                // About 20k USDT per level, in the quote currency of the pair.
                let quote_value = if s.as_str().ends_with("BTC") {
                    20_000.0 / 60_000.0
                } else {
                    20_000.0
                };
                let base_qty = quote_value / p;
                Asset {
                    inv_tick: 10f64.powf(5.0 - magnitude),
                    inv_lot: 10f64.powf(3.0 - base_qty.log10().floor()),
                    initial_log_price: p.ln(),
                    base_qty,
                    vol_scale: if i == 0 { 1.0 } else { 1.2 },
                }
            })
            .collect();
        let start_ms = data.time_range.start_date.start().timestamp_millis();
        let cadence_ms = i64::from(data.time_range.cadence_seconds.seconds()) * 1000;
        let origin_ms = start_ms - burn_in_steps(&data.synthetic, cadence_ms) * cadence_ms;
        let mut source = Self {
            config: data.synthetic.clone(),
            symbols,
            assets,
            depth: data.order_book.depth_levels as usize,
            origin_ms,
            cadence_ms,
            signal: Signal::of(&data.synthetic, origin_ms, cadence_ms),
            state: State {
                step: 0,
                log_price: Vec::new(),
                volatile: false,
                imbalance: 0.0,
                lead_return: 0.0,
            },
        };
        source.state = source.initial_state();
        source
    }

    /// The random-stream key of `step`: its timestamp.
    fn key(&self, step: u64) -> u64 {
        (self.origin_ms + step as i64 * self.cadence_ms) as u64
    }

    fn initial_state(&self) -> State {
        // I starts from its stationary law (a draw of its own: the steps use sub-keys 0, 1).
        let imbalance = match self.signal {
            Some(_) => Rng::for_key(self.config.seed, SIGNAL_STREAM, self.key(0), 2).normal(),
            None => 0.0,
        };
        State {
            step: 0,
            log_price: self.assets.iter().map(|a| a.initial_log_price).collect(),
            volatile: false,
            imbalance,
            lead_return: 0.0,
        }
    }

    /// Calm one-step volatility of asset `i`.
    fn calm_sigma(&self, i: usize) -> f64 {
        self.config.base_volatility
            * self.assets[i].vol_scale
            * (self.cadence_seconds() / SECONDS_PER_YEAR).sqrt()
    }

    fn cadence_seconds(&self) -> f64 {
        self.cadence_ms as f64 / 1000.0
    }

    /// Moves the path one step: regime switch, then correlated shocks, then the signal's
    /// drift and the next imbalance.
    fn advance(&mut self) {
        let c = &self.config;
        let dt = self.cadence_seconds();
        let mut rng = Rng::for_key(c.seed, PATH_STREAM, self.key(self.state.step), 0);
        let switch = if self.state.volatile {
            dt / VOLATILE_SPELL_SECONDS
        } else {
            dt / CALM_SPELL_SECONDS
        };
        if rng.uniform() < switch {
            self.state.volatile = !self.state.volatile;
        }
        let regime = if self.state.volatile {
            VOLATILE_SCALE
        } else {
            1.0
        };
        let mut lead_return = 0.0;
        let common = rng.normal();
        let rho = c.correlation;
        for (i, asset) in self.assets.iter().enumerate() {
            let z = if i == 0 {
                common
            } else {
                rho * common + (1.0 - rho * rho).max(0.0).sqrt() * rng.normal()
            };
            let sigma =
                c.base_volatility * regime * asset.vol_scale * (dt / SECONDS_PER_YEAR).sqrt();
            let r = -0.5 * sigma * sigma + sigma * z;
            self.state.log_price[i] += r;
            if i == 1 {
                lead_return = r;
            }
        }
        let calm = self.calm_sigma(0);
        if let Some(signal) = &self.signal {
            let s = &signal.config;
            let step = self.state.step;
            self.state.log_price[0] += signal.strength_at(step) * calm * self.state.imbalance
                + s.lead_lag * self.state.lead_return;
            let mut srng = Rng::for_key(c.seed, SIGNAL_STREAM, self.key(step), 0);
            self.state.imbalance = s.persistence * self.state.imbalance
                + (1.0 - s.persistence * s.persistence).sqrt() * srng.normal();
            self.state.lead_return = lead_return;
        }
        self.state.step += 1;
    }

    /// Per level of the target's book, the shift of log(bid qty) (ask: minus it): half the
    /// tilt of the noisy observed imbalance on levels 1..=k, else 0.
    fn queue_shifts(&self, i: usize) -> Vec<f64> {
        let mut shifts = vec![0.0; self.depth];
        if let (0, Some(signal)) = (i, &self.signal) {
            let s = &signal.config;
            let key = self.key(self.state.step);
            let mut rng = Rng::for_key(self.config.seed, SIGNAL_STREAM, key, 1);
            for shift in shifts.iter_mut().take(s.levels as usize) {
                let observed = self.state.imbalance + s.observation_noise * rng.normal();
                *shift = 0.5 * s.tilt * observed;
            }
        }
        shifts
    }

    /// Pushes the rows of every symbol's book at the current step.
    fn emit(&self, asm: &mut Assembler) {
        let c = &self.config;
        let key = self.key(self.state.step);
        let ts_ms = key as i64;
        for (i, asset) in self.assets.iter().enumerate() {
            let Some(symbol) = asm.symbol_index(self.symbols[i].as_str()) else {
                continue;
            };
            let mut rng = Rng::for_key(c.seed, BOOK_STREAM, key, i as u64);
            if rng.uniform() < c.gap_probability {
                continue;
            }
            let mid_ticks = self.state.log_price[i].exp() * asset.inv_tick;
            let spread = 1 + rng.geometric(if self.state.volatile { 0.6 } else { 0.35 }, 20);
            let mut bid = (mid_ticks - f64::from(spread) / 2.0).floor().max(1.0);
            let mut ask = bid + f64::from(spread);
            let shifts = self.queue_shifts(i);
            let mut rows = Vec::with_capacity(self.depth);
            for level in 1..=self.depth {
                if level > 1 {
                    bid = (bid - 1.0 - f64::from(rng.geometric(0.3, 10))).max(1.0);
                    ask += 1.0 + f64::from(rng.geometric(0.3, 10));
                }
                // A zero shift leaves the walk's bytes unchanged (x + 0.0 == x).
                let qty = |rng: &mut Rng, shift: f64| {
                    let q = asset.base_qty
                        * (1.0 + 0.15 * level as f64)
                        * (0.8 * rng.normal() - 0.32 + shift).exp();
                    ((q * asset.inv_lot).round().max(1.0)) / asset.inv_lot
                };
                let bid_qty = qty(&mut rng, shifts[level - 1]);
                let ask_qty = qty(&mut rng, -shifts[level - 1]);
                rows.push(Row {
                    ts_ms,
                    symbol,
                    level: level as i64,
                    bid_price: bid / asset.inv_tick,
                    bid_qty,
                    ask_price: ask / asset.inv_tick,
                    ask_qty,
                });
            }
            let mut duplicate = None;
            for k in 0..rows.len() {
                if rng.uniform() >= c.bad_row_probability {
                    continue;
                }
                // The corruptions seen in real feeds: NaN, zero/negative prices, crossed
                // tops, repeated rows.
                match rng.next_u64() % 5 {
                    0 => rows[k].bid_qty = f64::NAN,
                    1 => rows[k].bid_price = 0.0,
                    2 => rows[k].ask_price = -rows[k].ask_price,
                    3 => rows[0].bid_price = rows[0].ask_price + 1.0 / asset.inv_tick,
                    _ => duplicate = Some(rows[k]),
                }
            }
            for row in rows.into_iter().chain(duplicate) {
                asm.push(row);
            }
        }
    }
}

/// One Gaussian component of the label's log move: weight, mean and variance parts that do
/// not depend on the step's state.
#[derive(Debug, Clone, Copy)]
struct Component {
    weight: f64,
    mean: f64,
    variance: f64,
}

/// The Bayes classifier of the synthetic market: the exact law of the next label given the
/// generator's state at a step (latent imbalance, regime, price, the lead asset's last
/// return), so the class probabilities no model can beat.
///
/// The label's log move `L = sum_i w_i dx_i` (w = 1 over the horizon; with smoothing over k
/// steps, w_i = (k - i + 1) / k) is Gaussian given the regime path, with a mean linear in
/// `I` and the lead asset's return. Regime paths with at most one switch inside the
/// look-ahead are summed exactly; paths with two or more switches (probability below
/// `(look-ahead x switch rate x cadence)^2 / 2`, 0.01 % for the quickstart) are dropped and
/// the weights renormalised. Also approximated, each below 0.05 bp of the move: the future
/// mid's rounding to the tick, gaps (filled by preprocess), and with smoothing the mean of
/// prices read as the exponential of the mean log price. Adaptive classes (trailing
/// volatility of the observed mids) have no exact oracle here.
#[derive(Debug)]
pub struct Oracle {
    path: SyntheticSource,
    weights: Vec<f64>,
    boundaries: Vec<f64>,
    absolute: bool,
    /// Components per current regime (calm, volatile), without the imbalance part.
    components: [Vec<Component>; 2],
}

impl Oracle {
    /// The oracle of the market `data` describes, for labels of class `definition` with
    /// `boundaries` that read `lookahead` steps ahead (the mean of those steps' prices when
    /// `smoothed`); `Err` says why there is none (not the synthetic source, adaptive classes).
    pub fn new(
        data: &DataConfig,
        definition: ClassDefinition,
        boundaries: &[f64],
        lookahead: usize,
        smoothed: bool,
    ) -> Result<Self, String> {
        if data.source_type != SourceType::Synthetic {
            return Err("the data does not come from the synthetic market".into());
        }
        let absolute = match definition {
            ClassDefinition::Percentage => false,
            ClassDefinition::Absolute => true,
            ClassDefinition::Adaptive => {
                return Err("adaptive classes depend on the trailing volatility of the \
                            observed mids, which has no exact oracle"
                    .into());
            }
        };
        let path = SyntheticSource::new(data);
        let h = lookahead.max(1);
        let weights: Vec<f64> = if smoothed {
            (1..=h).map(|i| (h - i + 1) as f64 / h as f64).collect()
        } else {
            vec![1.0; h]
        };
        let lead_lag = path.signal.as_ref().map_or(0.0, |s| s.config.lead_lag);
        let (s0, s1) = (
            path.calm_sigma(0),
            if path.assets.len() > 1 {
                path.calm_sigma(1)
            } else {
                0.0
            },
        );
        let rho = path.config.correlation;
        // Per look-ahead step j (1-based), the calm variance and drift it adds: the target's
        // own shock and, through lead-lag, the lead asset's shock of that step (which moves
        // the target one step later).
        let w = |j: usize| weights.get(j.wrapping_sub(1)).copied().unwrap_or(0.0);
        let per_step: Vec<(f64, f64)> = (1..=h)
            .map(|j| {
                let common = w(j) * s0 + lead_lag * w(j + 1) * s1 * rho;
                let own = lead_lag * w(j + 1) * s1;
                let variance = common * common + own * own * (1.0 - rho * rho);
                let drift = -0.5 * s0 * s0 * w(j) - 0.5 * lead_lag * s1 * s1 * w(j + 1);
                (variance, drift)
            })
            .collect();
        let dt = path.cadence_seconds();
        let scale = [1.0, VOLATILE_SCALE * VOLATILE_SCALE];
        let rate = [
            (dt / CALM_SPELL_SECONDS).min(1.0),
            (dt / VOLATILE_SPELL_SECONDS).min(1.0),
        ];
        let components = [0usize, 1].map(|a| {
            let b = 1 - a;
            // Regime g_j of look-ahead step j: a before the switch step, b from it on.
            let component = |switch: usize, weight: f64| {
                let (mut mean, mut variance) = (0.0, 0.0);
                for (j, (v, d)) in per_step.iter().enumerate() {
                    let g = if j + 1 >= switch { scale[b] } else { scale[a] };
                    variance += g * v;
                    mean += g * d;
                }
                Component {
                    weight,
                    mean,
                    variance,
                }
            };
            let mut list = vec![component(h + 1, (1.0 - rate[a]).powi(h as i32))];
            for i in 1..=h {
                let p = (1.0 - rate[a]).powi(i as i32 - 1)
                    * rate[a]
                    * (1.0 - rate[b]).powi((h - i) as i32);
                list.push(component(i, p));
            }
            let total: f64 = list.iter().map(|c| c.weight).sum();
            for c in &mut list {
                c.weight /= total;
            }
            list
        });
        Ok(Self {
            path,
            weights,
            boundaries: boundaries.to_vec(),
            absolute,
            components,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.boundaries.len() + 1
    }

    /// Mean coefficient of `I_t` and the variance the future imbalance adds to `L`, for the
    /// drift strength `strength(i)` of look-ahead step i (0-based).
    fn imbalance_moments(&self, strength: impl Fn(usize) -> f64) -> (f64, f64) {
        let Some(signal) = &self.path.signal else {
            return (0.0, 0.0);
        };
        let phi = signal.config.persistence;
        let s0 = self.path.calm_sigma(0);
        let coef: Vec<f64> = self
            .weights
            .iter()
            .enumerate()
            .map(|(i, w)| w * strength(i) * s0)
            .collect();
        // L's imbalance part is sum_i coef_i I_{t+i}, with I_{t+m} = phi^m I_t + innovations.
        let mean = coef
            .iter()
            .enumerate()
            .map(|(i, c)| c * phi.powi(i as i32))
            .sum();
        let mut variance = 0.0;
        for l in 1..coef.len() {
            let x: f64 = (l..coef.len())
                .map(|i| coef[i] * phi.powi((i - l) as i32))
                .sum();
            variance += x * x;
        }
        (mean, variance * (1.0 - phi * phi))
    }

    /// [`Self::imbalance_moments`] at `step`: computed again only when the look-ahead
    /// spans the change of strength.
    fn moments_at(&self, step: u64, fixed: &[(f64, f64); 2]) -> (f64, f64) {
        let Some(signal) = &self.path.signal else {
            return (0.0, 0.0);
        };
        let h = self.weights.len() as u64;
        match signal.change_step {
            Some(c) if step >= c => fixed[1],
            Some(c) if step + h > c => {
                self.imbalance_moments(|i| signal.strength_at(step + i as u64))
            }
            _ => fixed[0],
        }
    }

    /// Class probabilities (`classes()` per timestamp) at each of `ts_ms`, which must be
    /// increasing and on the market's grid; the path is replayed from its origin.
    pub fn probabilities(&mut self, ts_ms: &[i64]) -> Result<Vec<f64>, String> {
        let k = self.classes();
        let mut out = Vec::with_capacity(ts_ms.len() * k);
        self.path.state = self.path.initial_state();
        let (origin, cadence) = (self.path.origin_ms, self.path.cadence_ms);
        let fixed = self.path.signal.as_ref().map_or([(0.0, 0.0); 2], |g| {
            let after = g.config.strength_after.unwrap_or(g.config.strength);
            [
                self.imbalance_moments(|_| g.config.strength),
                self.imbalance_moments(|_| after),
            ]
        });
        for &ts in ts_ms {
            let offset = ts - origin;
            if offset < 0 || offset % cadence != 0 {
                return Err(format!(
                    "timestamp {ts} ms is not on the synthetic grid (origin {origin} ms, \
                     cadence {cadence} ms)"
                ));
            }
            let step = (offset / cadence) as u64;
            if step < self.path.state.step {
                return Err(format!("timestamps not increasing at {ts} ms"));
            }
            while self.path.state.step < step {
                self.path.advance();
            }
            let (mean_coef, var_i) = self.moments_at(step, &fixed);
            let st = &self.path.state;
            let lead_lag = self.path.signal.as_ref().map_or(0.0, |s| s.config.lead_lag);
            let known = mean_coef * st.imbalance + lead_lag * self.weights[0] * st.lead_return;
            let price = st.log_price[0].exp();
            let cut = |b: f64| {
                let x = if self.absolute { b / price } else { b / 100.0 };
                if 1.0 + x <= 0.0 {
                    f64::NEG_INFINITY
                } else {
                    (1.0 + x).ln()
                }
            };
            let cuts: Vec<f64> = self.boundaries.iter().map(|b| cut(*b)).collect();
            let mut p = vec![0.0; k];
            for c in &self.components[usize::from(st.volatile)] {
                let mean = known + c.mean;
                let sd = (c.variance + var_i).sqrt();
                let mut below = 0.0;
                for (j, cutoff) in cuts.iter().enumerate() {
                    let cdf = normal_cdf((cutoff - mean) / sd);
                    p[j] += c.weight * (cdf - below);
                    below = cdf;
                }
                p[k - 1] += c.weight * (1.0 - below);
            }
            out.extend(p);
        }
        Ok(out)
    }
}

/// Steps of burn-in before a range's start (see [`BURN_IN_SECONDS`]).
fn burn_in_steps(config: &SyntheticConfig, cadence_ms: i64) -> i64 {
    let cadence = cadence_ms as f64 / 1000.0;
    let memory = config.signal.as_ref().map_or(0.0, |s| {
        // Steps until persistence^n < IMBALANCE_MEMORY (0 for a memoryless imbalance).
        if s.persistence > 0.0 {
            IMBALANCE_MEMORY.ln() / s.persistence.ln() * cadence
        } else {
            0.0
        }
    });
    let seconds = memory.clamp(BURN_IN_SECONDS, MAX_BURN_IN_SECONDS);
    (seconds / cadence).ceil() as i64
}

/// Standard normal CDF.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

impl Source for SyntheticSource {
    fn describe(&self) -> String {
        format!("the synthetic market (seed {})", self.config.seed)
    }

    fn read_span(
        &mut self,
        start_ms: i64,
        end_ms: i64,
        asm: &mut Assembler,
        progress: &ProgressBar,
    ) -> Result<(), DataError> {
        let first = ((start_ms - self.origin_ms).max(0) as u64).div_ceil(self.cadence_ms as u64);
        let end = ((end_ms - self.origin_ms).max(0) as u64).div_ceil(self.cadence_ms as u64);
        if self.state.step > first {
            // Asked for an earlier span: replay the path from the start.
            self.state = self.initial_state();
        }
        while self.state.step < first {
            self.advance();
        }
        while self.state.step < end {
            self.emit(asm);
            self.advance();
        }
        progress.inc(1);
        Ok(())
    }
}
