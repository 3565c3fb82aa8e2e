//! The books of every recorded symbol, sampled at each cadence boundary (UTC). Pure: time
//! comes in with each call (the local receive clock in production, the capture's receive
//! timestamps in the replay tests), so live and replayed data take the same path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::book::{Applied, DepthSnapshot, DepthUpdate, LocalBook, SnapshotProblem, StreamMessage};
use crate::config::RecordMarket;

/// One sampled book: the best `depth` levels per side at a cadence boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookSample {
    /// The boundary, UTC Unix milliseconds (a multiple of the cadence).
    pub ts_ms: i64,
    /// Symbol.
    pub symbol: String,
    /// `[price, qty]`, best first.
    pub bids: Vec<[f64; 2]>,
    /// `[price, qty]`, best first.
    pub asks: Vec<[f64; 2]>,
}

/// `[price, qty]` levels, best first.
pub type Levels = Vec<[f64; 2]>;

/// Per-symbol counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SymbolStats {
    /// Boundaries sampled from a valid book.
    pub snapshots: u64,
    /// Boundaries without a valid book (not synced, disconnected, banned, late).
    pub missing: u64,
    /// Sequence gaps that discarded the book.
    pub gaps: u64,
    /// Snapshots fetched to (re)start the book.
    pub resyncs: u64,
}

/// What happened at a boundary for one symbol.
#[derive(Debug, Clone, PartialEq)]
pub enum Tick {
    /// The book was valid.
    Book(BookSample),
    /// No valid book at `ts_ms`: counted, never back-filled.
    Missing {
        /// The boundary.
        ts_ms: i64,
        /// Symbol.
        symbol: String,
    },
}

/// The books of all symbols plus the boundary clock.
pub struct Engine {
    cadence_ms: i64,
    depth: usize,
    books: BTreeMap<String, LocalBook>,
    stats: BTreeMap<String, SymbolStats>,
    next_boundary: Option<i64>,
}

/// The first boundary strictly after `t_ms`.
pub fn next_boundary_after(t_ms: i64, cadence_ms: i64) -> i64 {
    (t_ms.div_euclid(cadence_ms) + 1) * cadence_ms
}

impl Engine {
    /// Books for `symbols` (upper case), sampled every `cadence_s` seconds, `depth` levels.
    pub fn new(market: RecordMarket, symbols: &[String], cadence_s: u32, depth: usize) -> Self {
        Self {
            cadence_ms: i64::from(cadence_s.max(1)) * 1000,
            depth,
            books: symbols
                .iter()
                .map(|s| (s.clone(), LocalBook::new(market)))
                .collect(),
            stats: symbols
                .iter()
                .map(|s| (s.clone(), SymbolStats::default()))
                .collect(),
            next_boundary: None,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &BTreeMap<String, SymbolStats> {
        &self.stats
    }

    /// Mutable counters (transports count missing ticks they detect themselves).
    pub fn stats_mut(&mut self) -> &mut BTreeMap<String, SymbolStats> {
        &mut self.stats
    }

    /// Emits every boundary `<= now_ms` not yet emitted, each with the books as they are
    /// now, i.e. built from events received strictly before the boundary (call this before
    /// applying a message received at `now_ms`).
    pub fn advance(&mut self, now_ms: i64) -> Vec<Tick> {
        let Some(mut b) = self.next_boundary else {
            self.next_boundary = Some(next_boundary_after(now_ms, self.cadence_ms));
            return Vec::new();
        };
        let mut ticks = Vec::new();
        while b <= now_ms {
            for (symbol, book) in &self.books {
                let stats = self.stats.get_mut(symbol).expect("same keys");
                match book.book() {
                    Some(ob) => {
                        let (bids, asks) = ob.top(self.depth);
                        stats.snapshots += 1;
                        ticks.push(Tick::Book(BookSample {
                            ts_ms: b,
                            symbol: symbol.clone(),
                            bids,
                            asks,
                        }));
                    }
                    None => {
                        stats.missing += 1;
                        ticks.push(Tick::Missing {
                            ts_ms: b,
                            symbol: symbol.clone(),
                        });
                    }
                }
            }
            b += self.cadence_ms;
        }
        self.next_boundary = Some(b);
        ticks
    }

    /// Feeds one diff-depth event; events of symbols not recorded are ignored.
    pub fn on_update(&mut self, e: DepthUpdate) -> Option<Applied> {
        let symbol = e.symbol.clone();
        let applied = self.books.get_mut(&symbol)?.on_update(e);
        if let Applied::Gap { expected, got } = applied {
            self.stats.get_mut(&symbol).expect("same keys").gaps += 1;
            tracing::warn!(symbol = %symbol, expected, got, "sequence gap in the depth stream; resyncing");
        }
        Some(applied)
    }

    /// Advances to `now_ms`, then feeds one stream text message.
    pub fn on_message(&mut self, now_ms: i64, text: &str) -> Result<Vec<Tick>, String> {
        let ticks = self.advance(now_ms);
        if let StreamMessage::Depth(e) = super::book::parse_stream_message(text)? {
            self.on_update(e);
        }
        Ok(ticks)
    }

    /// Starts `symbol`'s book from a snapshot (counted as a resync).
    pub fn on_snapshot(
        &mut self,
        symbol: &str,
        snap: &DepthSnapshot,
    ) -> Result<Vec<Applied>, SnapshotProblem> {
        let Some(book) = self.books.get_mut(symbol) else {
            return Ok(Vec::new());
        };
        self.stats.get_mut(symbol).expect("same keys").resyncs += 1;
        let applied = book.on_snapshot(snap)?;
        for a in &applied {
            if let Applied::Gap { expected, got } = a {
                self.stats.get_mut(symbol).expect("same keys").gaps += 1;
                tracing::warn!(
                    symbol,
                    expected,
                    got,
                    "sequence gap inside the buffered events; resyncing"
                );
            }
        }
        Ok(applied)
    }

    /// Symbols whose book waits for a snapshot and already buffered an event (the
    /// procedure takes the snapshot after the stream started).
    pub fn needing_snapshot(&self) -> Vec<String> {
        self.books
            .iter()
            .filter(|(_, b)| !b.is_synced() && b.first_buffered().is_some())
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Discards every book (after a disconnect the stream may have lost events).
    pub fn reset_all(&mut self) {
        for b in self.books.values_mut() {
            b.reset();
        }
    }

    /// The best `n` levels of `symbol`'s book and its last update id, when synced.
    pub fn top(&self, symbol: &str, n: usize) -> Option<(Levels, Levels, u64)> {
        let b = self.books.get(symbol)?;
        let (bids, asks) = b.book()?.top(n);
        Some((bids, asks, b.last_update_id()?))
    }

    /// Whether `symbol`'s book is valid.
    pub fn is_synced(&self, symbol: &str) -> bool {
        self.books.get(symbol).is_some_and(LocalBook::is_synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_utc_aligned_and_missing_until_synced() {
        let mut e = Engine::new(RecordMarket::Spot, &["BTCUSDT".into()], 2, 5);
        assert!(e.advance(10_500).is_empty()); // starts the clock: next boundary 12_000
        assert!(e.advance(11_999).is_empty());
        let t = e.advance(14_000);
        assert_eq!(
            t,
            vec![
                Tick::Missing {
                    ts_ms: 12_000,
                    symbol: "BTCUSDT".into()
                },
                Tick::Missing {
                    ts_ms: 14_000,
                    symbol: "BTCUSDT".into()
                }
            ]
        );
        let upd = r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":11,"u":12,"b":[["10.0","1"]],"a":[["11.0","2"]]}}"#;
        e.on_message(14_100, upd).unwrap();
        let snap =
            DepthSnapshot::parse(r#"{"lastUpdateId":10,"bids":[["9.5","1"]],"asks":[]}"#).unwrap();
        assert_eq!(
            e.on_snapshot("BTCUSDT", &snap).unwrap(),
            vec![Applied::Applied]
        );
        let t = e.advance(16_000);
        assert_eq!(
            t,
            vec![Tick::Book(BookSample {
                ts_ms: 16_000,
                symbol: "BTCUSDT".into(),
                bids: vec![[10.0, 1.0], [9.5, 1.0]],
                asks: vec![[11.0, 2.0]],
            })]
        );
        let s = &e.stats()["BTCUSDT"];
        assert_eq!((s.snapshots, s.missing, s.resyncs, s.gaps), (1, 2, 1, 0));
    }
}
