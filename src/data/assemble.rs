//! Groups tall rows into per-symbol snapshots (strictly by timestamp; `batch_id` is not an
//! id) and applies the quality rules, counting every row or snapshot it drops.
//!
//! Rows may arrive in any order (a database returns them unordered without `ORDER BY`, which
//! we avoid so the server need not sort). One assembler holds one shard's snapshots.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::dataobject::OrderBook;
use crate::config::Symbol;

/// One tall row: snapshot x symbol x level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Snapshot timestamp, UTC Unix milliseconds.
    pub ts_ms: i64,
    /// Index of the symbol in [`Assembler::symbols`].
    pub symbol: usize,
    /// Book level, 1 = best.
    pub level: i64,
    /// Bid price at the level.
    pub bid_price: f64,
    /// Bid quantity at the level.
    pub bid_qty: f64,
    /// Ask price at the level.
    pub ask_price: f64,
    /// Ask quantity at the level.
    pub ask_qty: f64,
}

/// Per-symbol counts of a quality report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolQuality {
    /// Rows the source delivered for the symbol.
    pub rows_read: u64,
    /// Rows the database's coarse filter (`bid_price > 0 AND ask_price > 0`) removed.
    pub rows_filtered_in_source: u64,
    /// Snapshots kept.
    pub snapshots_kept: u64,
}

/// What the quality rules dropped, written next to every shard and summed in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Rows delivered by the source for the configured symbols and time span.
    pub rows_read: u64,
    /// Rows removed by the database's coarse SQL filter (non-positive prices), counted
    /// by a separate `count(*)` so nothing is lost silently.
    pub rows_filtered_in_source: u64,
    /// Rows with a NaN or infinite price or quantity (dropped).
    pub rows_dropped_nan: u64,
    /// Rows with a zero or negative price (dropped).
    pub rows_dropped_nonpositive_price: u64,
    /// Rows with a negative quantity (dropped).
    pub rows_dropped_negative_qty: u64,
    /// Rows with a level below 1 (dropped).
    pub rows_dropped_bad_level: u64,
    /// Rows repeating an already seen (ts, symbol, level) (dropped).
    pub rows_dropped_duplicate: u64,
    /// Rows deeper than `data.order_book.depth_levels` (not needed, ignored).
    pub rows_beyond_depth: u64,
    /// Distinct (symbol, ts) snapshots seen.
    pub snapshots_read: u64,
    /// Snapshots kept.
    pub snapshots_kept: u64,
    /// Snapshots dropped because a level 1..=depth was absent or its row dropped.
    pub snapshots_dropped_missing_levels: u64,
    /// Snapshots dropped because duplicate rows of a level disagreed.
    pub snapshots_dropped_conflicting_duplicates: u64,
    /// Snapshots dropped because best bid >= best ask.
    pub snapshots_dropped_crossed: u64,
    /// Snapshots dropped because bid prices do not fall or ask prices do not rise with level.
    pub snapshots_dropped_unsorted_levels: u64,
    /// Counts per symbol.
    pub per_symbol: BTreeMap<String, SymbolQuality>,
}

impl QualityReport {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &QualityReport) {
        self.rows_read += other.rows_read;
        self.rows_filtered_in_source += other.rows_filtered_in_source;
        self.rows_dropped_nan += other.rows_dropped_nan;
        self.rows_dropped_nonpositive_price += other.rows_dropped_nonpositive_price;
        self.rows_dropped_negative_qty += other.rows_dropped_negative_qty;
        self.rows_dropped_bad_level += other.rows_dropped_bad_level;
        self.rows_dropped_duplicate += other.rows_dropped_duplicate;
        self.rows_beyond_depth += other.rows_beyond_depth;
        self.snapshots_read += other.snapshots_read;
        self.snapshots_kept += other.snapshots_kept;
        self.snapshots_dropped_missing_levels += other.snapshots_dropped_missing_levels;
        self.snapshots_dropped_conflicting_duplicates +=
            other.snapshots_dropped_conflicting_duplicates;
        self.snapshots_dropped_crossed += other.snapshots_dropped_crossed;
        self.snapshots_dropped_unsorted_levels += other.snapshots_dropped_unsorted_levels;
        for (s, q) in &other.per_symbol {
            let e = self.per_symbol.entry(s.clone()).or_default();
            e.rows_read += q.rows_read;
            e.rows_filtered_in_source += q.rows_filtered_in_source;
            e.snapshots_kept += q.snapshots_kept;
        }
    }

    /// Rows dropped by the rules here (not counting the source's own filter).
    pub fn rows_dropped(&self) -> u64 {
        self.rows_dropped_nan
            + self.rows_dropped_nonpositive_price
            + self.rows_dropped_negative_qty
            + self.rows_dropped_bad_level
            + self.rows_dropped_duplicate
    }

    /// Snapshots dropped.
    pub fn snapshots_dropped(&self) -> u64 {
        self.snapshots_read - self.snapshots_kept
    }
}

// Per-level state of a snapshot slot.
const ABSENT: u8 = 0;
const OK: u8 = 1;
const BAD: u8 = 2;
const CONFLICT: u8 = 3;

/// Collects one shard's rows and turns them into order books.
#[derive(Debug)]
pub struct Assembler {
    symbols: Vec<Symbol>,
    depth: usize,
    slots: HashMap<(usize, i64), usize>,
    last: Option<((usize, i64), usize)>,
    // Slot i's values at [i*depth .. (i+1)*depth], states likewise.
    values: Vec<[f64; 4]>,
    states: Vec<u8>,
    keys: Vec<(usize, i64)>,
    report: QualityReport,
}

impl Assembler {
    /// An empty assembler for `symbols` (in configuration order) and `depth` levels.
    pub fn new(symbols: Vec<Symbol>, depth: usize) -> Self {
        let per_symbol = symbols
            .iter()
            .map(|s| (s.to_string(), SymbolQuality::default()))
            .collect();
        Self {
            symbols,
            depth,
            slots: HashMap::new(),
            last: None,
            values: Vec::new(),
            states: Vec::new(),
            keys: Vec::new(),
            report: QualityReport {
                per_symbol,
                ..QualityReport::default()
            },
        }
    }

    /// The symbols, in the order rows refer to them by index.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// The index of `symbol`, or `None` for a symbol not configured.
    pub fn symbol_index(&self, symbol: &str) -> Option<usize> {
        self.symbols.iter().position(|s| s.as_str() == symbol)
    }

    /// Books rows the source's own filter removed for `symbol` (index).
    pub fn count_filtered_in_source(&mut self, symbol: usize, rows: u64) {
        let name = self.symbols[symbol].as_str();
        self.report.rows_filtered_in_source += rows;
        if let Some(q) = self.report.per_symbol.get_mut(name) {
            q.rows_filtered_in_source += rows;
        }
    }

    /// Takes one row.
    pub fn push(&mut self, row: Row) {
        let r = &mut self.report;
        r.rows_read += 1;
        r.per_symbol
            .get_mut(self.symbols[row.symbol].as_str())
            .expect("every symbol has an entry")
            .rows_read += 1;
        if row.level < 1 {
            r.rows_dropped_bad_level += 1;
            return;
        }
        if row.level > self.depth as i64 {
            r.rows_beyond_depth += 1;
            return;
        }
        let key = (row.symbol, row.ts_ms);
        let slot = match self.last {
            Some((k, s)) if k == key => s,
            _ => {
                let next = self.keys.len();
                let s = *self.slots.entry(key).or_insert(next);
                if s == next {
                    self.keys.push(key);
                    self.values
                        .resize(self.values.len() + self.depth, [f64::NAN; 4]);
                    self.states.resize(self.states.len() + self.depth, ABSENT);
                }
                self.last = Some((key, s));
                s
            }
        };
        let i = slot * self.depth + (row.level - 1) as usize;
        let v = [row.bid_price, row.bid_qty, row.ask_price, row.ask_qty];
        let r = &mut self.report;
        let verdict = if v.iter().any(|x| !x.is_finite()) {
            r.rows_dropped_nan += 1;
            BAD
        } else if v[0] <= 0.0 || v[2] <= 0.0 {
            r.rows_dropped_nonpositive_price += 1;
            BAD
        } else if v[1] < 0.0 || v[3] < 0.0 {
            r.rows_dropped_negative_qty += 1;
            BAD
        } else {
            OK
        };
        match self.states[i] {
            ABSENT => {
                self.states[i] = verdict;
                self.values[i] = v;
            }
            seen => {
                // A repeated (ts, symbol, level): an exact copy of a good row is harmless;
                // anything else leaves the level ambiguous, so the snapshot goes.
                if verdict == OK {
                    r.rows_dropped_duplicate += 1;
                }
                if !(seen == OK && verdict == OK && self.values[i] == v) {
                    self.states[i] = CONFLICT;
                }
            }
        }
    }

    /// Applies the snapshot rules and returns the books (one per symbol, timestamps sorted)
    /// and the quality report.
    pub fn finish(self) -> (BTreeMap<Symbol, OrderBook>, QualityReport) {
        let Self {
            symbols,
            depth,
            values,
            states,
            keys,
            mut report,
            ..
        } = self;
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&s| keys[s]);
        let mut books: BTreeMap<Symbol, OrderBook> = symbols
            .iter()
            .map(|s| (s.clone(), OrderBook::empty(depth)))
            .collect();
        report.snapshots_read = keys.len() as u64;
        for s in order {
            let st = &states[s * depth..(s + 1) * depth];
            let lv = &values[s * depth..(s + 1) * depth];
            if st.contains(&CONFLICT) {
                report.snapshots_dropped_conflicting_duplicates += 1;
            } else if st.iter().any(|&x| x != OK) {
                report.snapshots_dropped_missing_levels += 1;
            } else if lv[0][0] >= lv[0][2] {
                report.snapshots_dropped_crossed += 1;
            } else if lv
                .windows(2)
                .any(|w| w[1][0] >= w[0][0] || w[1][2] <= w[0][2])
            {
                report.snapshots_dropped_unsorted_levels += 1;
            } else {
                let (sym, ts) = keys[s];
                let symbol = &symbols[sym];
                books.get_mut(symbol).expect("book per symbol").push(ts, lv);
                report.snapshots_kept += 1;
                report
                    .per_symbol
                    .get_mut(symbol.as_str())
                    .expect("entry per symbol")
                    .snapshots_kept += 1;
            }
        }
        (books, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts: i64, symbol: usize, level: i64, bid: f64, ask: f64) -> Row {
        Row {
            ts_ms: ts,
            symbol,
            level,
            bid_price: bid,
            bid_qty: 1.0,
            ask_price: ask,
            ask_qty: 2.0,
        }
    }

    fn good(a: &mut Assembler, ts: i64, symbol: usize) {
        a.push(row(ts, symbol, 2, 99.0, 102.0));
        a.push(row(ts, symbol, 1, 100.0, 101.0));
    }

    #[test]
    fn rows_in_any_order_group_by_ts_and_every_drop_is_counted() {
        let syms = vec![
            Symbol::new("BTCUSDT").unwrap(),
            Symbol::new("ETHUSDT").unwrap(),
        ];
        let mut a = Assembler::new(syms, 2);
        good(&mut a, 3_000, 0);
        good(&mut a, 1_000, 0);
        good(&mut a, 1_000, 1);
        // NaN quantity at level 2 -> row dropped, snapshot missing a level.
        a.push(row(4_000, 0, 1, 100.0, 101.0));
        a.push(Row {
            bid_qty: f64::NAN,
            ..row(4_000, 0, 2, 99.0, 102.0)
        });
        // Zero and negative price.
        a.push(row(5_000, 0, 1, 0.0, 101.0));
        a.push(row(5_000, 0, 2, 99.0, -1.0));
        // Crossed book.
        a.push(row(6_000, 0, 1, 101.0, 101.0));
        a.push(row(6_000, 0, 2, 99.0, 102.0));
        // Exact duplicate is harmless; a conflicting one drops the snapshot.
        good(&mut a, 7_000, 1);
        a.push(row(7_000, 1, 1, 100.0, 101.0));
        good(&mut a, 8_000, 1);
        a.push(row(8_000, 1, 1, 100.5, 101.0));
        // Unsorted levels, a bad level and one beyond depth.
        a.push(row(9_000, 1, 1, 100.0, 101.0));
        a.push(row(9_000, 1, 2, 100.0, 102.0));
        a.push(row(9_000, 1, 0, 100.0, 102.0));
        a.push(row(9_000, 1, 3, 98.0, 103.0));
        let (books, q) = a.finish();
        assert_eq!(books["BTCUSDT"].snapshot_timestamps, vec![1_000, 3_000]);
        assert_eq!(books["ETHUSDT"].snapshot_timestamps, vec![1_000, 7_000]);
        assert_eq!(
            books["BTCUSDT"].bid_price.data,
            vec![100.0, 99.0, 100.0, 99.0]
        );
        assert_eq!(
            books["BTCUSDT"].snapshot_features.row(0),
            &[100.0, 1.0, 101.0, 2.0]
        );
        assert_eq!(q.rows_read, 22);
        assert_eq!(q.rows_dropped_nan, 1);
        assert_eq!(q.rows_dropped_nonpositive_price, 2);
        assert_eq!(q.rows_dropped_duplicate, 2);
        assert_eq!(q.rows_dropped_bad_level, 1);
        assert_eq!(q.rows_beyond_depth, 1);
        assert_eq!(q.snapshots_read, 9);
        assert_eq!(q.snapshots_kept, 4);
        assert_eq!(q.snapshots_dropped_missing_levels, 2);
        assert_eq!(q.snapshots_dropped_crossed, 1);
        assert_eq!(q.snapshots_dropped_conflicting_duplicates, 1);
        assert_eq!(q.snapshots_dropped_unsorted_levels, 1);
        assert_eq!(q.per_symbol["ETHUSDT"].snapshots_kept, 2);
        assert_eq!(q.snapshots_dropped(), 5);
    }
}
