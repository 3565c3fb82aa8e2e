//! A seeded synthetic market: correlated log-price paths (one common shock, each correlated
//! asset at `data.synthetic.correlation` with the target), calm and volatile regimes
//! (Markov switching), prices on a tick grid, spreads of one tick or more, ten-ish levels of
//! lognormal quantities growing with depth, missing snapshots (gaps) and corrupt rows that the
//! quality rules then drop and count. Same seed, same market, on every machine: the
//! generator is a hand-written SplitMix64 whose output no dependency update can change.

use indicatif::ProgressBar;

use super::Source;
use crate::config::{DataConfig, Symbol, SyntheticConfig};
use crate::data::DataError;
use crate::data::assemble::{Assembler, Row};

const SECONDS_PER_YEAR: f64 = 365.0 * 86_400.0;
// Independent random streams, so a book never depends on how many draws a path made.
const PATH_STREAM: u64 = 1;
const BOOK_STREAM: u64 = 2;

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
    step: u64,
    log_price: Vec<f64>,
    volatile: bool,
}

/// The synthetic source.
#[derive(Debug)]
pub struct SyntheticSource {
    config: SyntheticConfig,
    symbols: Vec<Symbol>,
    assets: Vec<Asset>,
    depth: usize,
    start_ms: i64,
    cadence_ms: i64,
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
        let state = State {
            step: 0,
            log_price: assets.iter().map(|a| a.initial_log_price).collect(),
            volatile: false,
        };
        Self {
            config: data.synthetic.clone(),
            symbols,
            assets,
            depth: data.order_book.depth_levels as usize,
            start_ms: data.time_range.start_date.start().timestamp_millis(),
            cadence_ms: i64::from(data.time_range.cadence_seconds.seconds()) * 1000,
            state,
        }
    }

    fn cadence_seconds(&self) -> f64 {
        self.cadence_ms as f64 / 1000.0
    }

    /// Moves the path one step: regime switch, then correlated shocks.
    fn advance(&mut self) {
        let c = &self.config;
        let dt = self.cadence_seconds();
        let mut rng = Rng::for_key(c.seed, PATH_STREAM, self.state.step, 0);
        // Calm spells last ~4 h, volatile ones ~1 h.
        let switch = if self.state.volatile {
            dt / 3600.0
        } else {
            dt / 14_400.0
        };
        if rng.uniform() < switch {
            self.state.volatile = !self.state.volatile;
        }
        let regime = if self.state.volatile { 2.5 } else { 1.0 };
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
            self.state.log_price[i] += -0.5 * sigma * sigma + sigma * z;
        }
        self.state.step += 1;
    }

    /// Pushes the rows of every symbol's book at the current step.
    fn emit(&self, asm: &mut Assembler) {
        let c = &self.config;
        let step = self.state.step;
        let ts_ms = self.start_ms + step as i64 * self.cadence_ms;
        for (i, asset) in self.assets.iter().enumerate() {
            let Some(symbol) = asm.symbol_index(self.symbols[i].as_str()) else {
                continue;
            };
            let mut rng = Rng::for_key(c.seed, BOOK_STREAM, step, i as u64);
            if rng.uniform() < c.gap_probability {
                continue;
            }
            let mid_ticks = self.state.log_price[i].exp() * asset.inv_tick;
            let spread = 1 + rng.geometric(if self.state.volatile { 0.6 } else { 0.35 }, 20);
            let mut bid = (mid_ticks - f64::from(spread) / 2.0).floor().max(1.0);
            let mut ask = bid + f64::from(spread);
            let mut rows = Vec::with_capacity(self.depth);
            for level in 1..=self.depth {
                if level > 1 {
                    bid = (bid - 1.0 - f64::from(rng.geometric(0.3, 10))).max(1.0);
                    ask += 1.0 + f64::from(rng.geometric(0.3, 10));
                }
                let qty = |rng: &mut Rng| {
                    let q = asset.base_qty
                        * (1.0 + 0.15 * level as f64)
                        * (0.8 * rng.normal() - 0.32).exp();
                    ((q * asset.inv_lot).round().max(1.0)) / asset.inv_lot
                };
                let bid_qty = qty(&mut rng);
                let ask_qty = qty(&mut rng);
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
        let first = ((start_ms - self.start_ms).max(0) as u64).div_ceil(self.cadence_ms as u64);
        let end = ((end_ms - self.start_ms).max(0) as u64).div_ceil(self.cadence_ms as u64);
        if self.state.step > first {
            // Asked for an earlier span: replay the path from the start.
            self.state = State {
                step: 0,
                log_price: self.assets.iter().map(|a| a.initial_log_price).collect(),
                volatile: false,
            };
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
