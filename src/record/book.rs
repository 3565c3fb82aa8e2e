//! The local order book and Binance's official diff-depth procedure (spot and USD-M futures):
//! buffer events, take a REST snapshot, drop what the snapshot already holds, check that the
//! first event brackets the snapshot and that every next event continues the chain, else
//! resync. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::RecordMarket;

/// A price in units of 1e-8 (Binance prints at most 8 decimals), so levels compare exactly.
pub type Price = u64;

const PRICE_SCALE: f64 = 1e8;

/// Parses a Binance decimal string (`"61824.05000000"`) into 1e-8 units.
pub fn parse_price(s: &str) -> Result<Price, String> {
    let bad = || format!("invalid price {s:?}: expected a decimal with at most 8 decimals");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || frac.len() > 8
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: u64 = int.parse().map_err(|_| bad())?;
    let mut f: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    for _ in frac.len()..8 {
        f *= 10;
    }
    int.checked_mul(100_000_000)
        .and_then(|v| v.checked_add(f))
        .ok_or_else(bad)
}

/// The price as a float (the division of two exact integers rounds like parsing the text).
pub fn price_f64(p: Price) -> f64 {
    p as f64 / PRICE_SCALE
}

fn parse_qty(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|q| q.is_finite() && *q >= 0.0)
        .ok_or_else(|| format!("invalid quantity {s:?}"))
}

/// `[["price", "qty"], ...]` as parsed levels.
fn parse_levels(raw: &[[String; 2]]) -> Result<Vec<(Price, f64)>, String> {
    raw.iter()
        .map(|[p, q]| Ok((parse_price(p)?, parse_qty(q)?)))
        .collect()
}

/// One diff-depth event (`depthUpdate`).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthUpdate {
    /// Symbol (`s`), upper case.
    pub symbol: String,
    /// First update id (`U`).
    pub first_id: u64,
    /// Last update id (`u`).
    pub last_id: u64,
    /// Last update id of the previous event (`pu`, futures only).
    pub prev_id: Option<u64>,
    /// Bid levels with absolute quantities (0 = remove).
    pub bids: Vec<(Price, f64)>,
    /// Ask levels with absolute quantities (0 = remove).
    pub asks: Vec<(Price, f64)>,
}

#[derive(Deserialize)]
struct RawUpdate {
    s: String,
    #[serde(rename = "U")]
    first: u64,
    u: u64,
    #[serde(default)]
    pu: Option<u64>,
    b: Vec<[String; 2]>,
    a: Vec<[String; 2]>,
}

/// A REST depth snapshot (`GET /api/v3/depth`, `/fapi/v1/depth`).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthSnapshot {
    /// `lastUpdateId`.
    pub last_update_id: u64,
    /// Bids, best first.
    pub bids: Vec<(Price, f64)>,
    /// Asks, best first.
    pub asks: Vec<(Price, f64)>,
}

#[derive(Deserialize)]
struct RawSnapshot {
    #[serde(rename = "lastUpdateId")]
    last_update_id: u64,
    bids: Vec<[String; 2]>,
    asks: Vec<[String; 2]>,
}

impl DepthSnapshot {
    /// Parses the JSON body of a depth request.
    pub fn parse(body: &str) -> Result<Self, String> {
        let raw: RawSnapshot =
            serde_json::from_str(body).map_err(|e| format!("not a depth snapshot: {e}"))?;
        Ok(Self {
            last_update_id: raw.last_update_id,
            bids: parse_levels(&raw.bids)?,
            asks: parse_levels(&raw.asks)?,
        })
    }
}

/// A message of a (combined) market stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamMessage {
    /// A diff-depth event.
    Depth(DepthUpdate),
    /// Any other stream (bookTicker, trade, subscription answers): ignored.
    Other,
}

#[derive(Deserialize)]
struct Combined {
    stream: String,
    data: serde_json::Value,
}

/// Parses one text frame: a combined-stream wrapper `{"stream": .., "data": ..}` or a bare
/// event.
pub fn parse_stream_message(text: &str) -> Result<StreamMessage, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let data = match serde_json::from_value::<Combined>(value.clone()) {
        Ok(c) if !c.stream.contains("@depth") => return Ok(StreamMessage::Other),
        Ok(c) => c.data,
        Err(_) => value,
    };
    if data.get("e").and_then(|e| e.as_str()) != Some("depthUpdate") {
        return Ok(StreamMessage::Other);
    }
    let raw: RawUpdate =
        serde_json::from_value(data).map_err(|e| format!("malformed depthUpdate: {e}"))?;
    Ok(StreamMessage::Depth(DepthUpdate {
        symbol: raw.s,
        first_id: raw.first,
        last_id: raw.u,
        prev_id: raw.pu,
        bids: parse_levels(&raw.b)?,
        asks: parse_levels(&raw.a)?,
    }))
}

/// Price levels of both sides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderBook {
    bids: BTreeMap<Price, f64>,
    asks: BTreeMap<Price, f64>,
}

impl OrderBook {
    fn from_snapshot(s: &DepthSnapshot) -> Self {
        let mut book = Self::default();
        book.apply(&s.bids, &s.asks);
        book
    }

    fn apply(&mut self, bids: &[(Price, f64)], asks: &[(Price, f64)]) {
        for (side, levels) in [(&mut self.bids, bids), (&mut self.asks, asks)] {
            for &(p, q) in levels {
                if q == 0.0 {
                    side.remove(&p);
                } else {
                    side.insert(p, q);
                }
            }
        }
    }

    /// The best `n` levels per side as `(price, qty)`, best first.
    pub fn top(&self, n: usize) -> (Vec<[f64; 2]>, Vec<[f64; 2]>) {
        let bids = self
            .bids
            .iter()
            .rev()
            .take(n)
            .map(|(&p, &q)| [price_f64(p), q])
            .collect();
        let asks = self
            .asks
            .iter()
            .take(n)
            .map(|(&p, &q)| [price_f64(p), q])
            .collect();
        (bids, asks)
    }

    /// Best bid >= best ask (only possible with corrupt input).
    pub fn is_crossed(&self) -> bool {
        matches!((self.bids.keys().next_back(), self.asks.keys().next()), (Some(b), Some(a)) if b >= a)
    }
}

/// What feeding an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// No snapshot yet: kept for when it arrives.
    Buffered,
    /// Already contained in the snapshot: dropped.
    Stale,
    /// Applied to the book.
    Applied,
    /// The chain broke: the book was discarded and must be resynced (this event starts the
    /// new buffer).
    Gap {
        /// The id the event should have continued from.
        expected: u64,
        /// What it carried (`U` spot, `pu` futures).
        got: u64,
    },
}

/// Why a snapshot could not start the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotProblem {
    /// The snapshot is older than the first buffered event: fetch another one.
    TooOld {
        /// `lastUpdateId`.
        last_update_id: u64,
        /// `U` of the first buffered event it should reach.
        first_buffered: u64,
    },
}

enum State {
    /// Waiting for a snapshot; events are buffered.
    Buffering(Vec<DepthUpdate>),
    /// Book valid up to `last_id`; `first_pending` until the first event after the
    /// snapshot was checked against it.
    Synced {
        book: OrderBook,
        last_id: u64,
        first_pending: bool,
    },
}

/// Buffer cap: a snapshot that takes longer than this many events is retried anyway.
const MAX_BUFFER: usize = 100_000;

/// One symbol's local book under Binance's procedure.
pub struct LocalBook {
    market: RecordMarket,
    state: State,
}

impl LocalBook {
    /// An unsynced book.
    pub fn new(market: RecordMarket) -> Self {
        Self {
            market,
            state: State::Buffering(Vec::new()),
        }
    }

    /// Whether the book is valid (snapshot taken, chain unbroken).
    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced { .. })
    }

    /// Update id of the first buffered event, while unsynced.
    pub fn first_buffered(&self) -> Option<u64> {
        match &self.state {
            State::Buffering(b) => b.first().map(|e| e.first_id),
            State::Synced { .. } => None,
        }
    }

    /// `u` of the last applied event (or the snapshot's `lastUpdateId`), when synced.
    pub fn last_update_id(&self) -> Option<u64> {
        match &self.state {
            State::Synced { last_id, .. } => Some(*last_id),
            State::Buffering(_) => None,
        }
    }

    /// The book, when synced.
    pub fn book(&self) -> Option<&OrderBook> {
        match &self.state {
            State::Synced { book, .. } => Some(book),
            State::Buffering(_) => None,
        }
    }

    /// Discards the book (e.g. after a reconnect): a new snapshot is needed.
    pub fn reset(&mut self) {
        self.state = State::Buffering(Vec::new());
    }

    /// Whether the event is already in a snapshot with `last_update_id` (spot: `u <= L`;
    /// futures: `u < L`, the event ending at `L` is the one that must bracket it).
    fn stale(&self, e: &DepthUpdate, last_update_id: u64) -> bool {
        match self.market {
            RecordMarket::Spot => e.last_id <= last_update_id,
            RecordMarket::UsdmFutures | RecordMarket::CoinmFutures => e.last_id < last_update_id,
        }
    }

    /// Whether the first event after a snapshot brackets it (spot: `U <= L+1 <= u`;
    /// futures: `U <= L <= u`).
    fn brackets(&self, e: &DepthUpdate, last_update_id: u64) -> bool {
        let target = match self.market {
            RecordMarket::Spot => last_update_id + 1,
            RecordMarket::UsdmFutures | RecordMarket::CoinmFutures => last_update_id,
        };
        e.first_id <= target && target <= e.last_id
    }

    /// Whether `e` continues after `last_id` (spot: `U == last + 1`; futures: `pu == last`).
    fn continues(&self, e: &DepthUpdate, last_id: u64) -> Result<(), (u64, u64)> {
        match self.market {
            RecordMarket::Spot if e.first_id == last_id + 1 => Ok(()),
            RecordMarket::Spot => Err((last_id + 1, e.first_id)),
            RecordMarket::UsdmFutures | RecordMarket::CoinmFutures => match e.prev_id {
                Some(pu) if pu == last_id => Ok(()),
                Some(pu) => Err((last_id, pu)),
                // A futures event without `pu` cannot be chained: treat as a gap.
                None => Err((last_id, 0)),
            },
        }
    }

    /// Feeds one event.
    pub fn on_update(&mut self, e: DepthUpdate) -> Applied {
        let market_stale = match &self.state {
            State::Buffering(_) => None,
            State::Synced {
                last_id,
                first_pending,
                ..
            } => Some((*last_id, *first_pending)),
        };
        match market_stale {
            None => {
                if let State::Buffering(buf) = &mut self.state {
                    if buf.len() >= MAX_BUFFER {
                        buf.remove(0);
                    }
                    buf.push(e);
                }
                Applied::Buffered
            }
            Some((last_id, true)) => {
                if self.stale(&e, last_id) {
                    return Applied::Stale;
                }
                if !self.brackets(&e, last_id) {
                    let got = e.first_id;
                    self.state = State::Buffering(vec![e]);
                    return Applied::Gap {
                        expected: last_id + 1,
                        got,
                    };
                }
                self.apply_synced(e);
                Applied::Applied
            }
            Some((last_id, false)) => {
                if let Err((expected, got)) = self.continues(&e, last_id) {
                    self.state = State::Buffering(vec![e]);
                    return Applied::Gap { expected, got };
                }
                self.apply_synced(e);
                Applied::Applied
            }
        }
    }

    fn apply_synced(&mut self, e: DepthUpdate) {
        if let State::Synced {
            book,
            last_id,
            first_pending,
        } = &mut self.state
        {
            book.apply(&e.bids, &e.asks);
            *last_id = e.last_id;
            *first_pending = false;
        }
    }

    /// Starts the book from a snapshot and replays the buffer. A snapshot older than the
    /// buffer is refused (fetch another); a gap inside the buffer leaves the book unsynced
    /// with the events after the gap buffered.
    pub fn on_snapshot(&mut self, snap: &DepthSnapshot) -> Result<Vec<Applied>, SnapshotProblem> {
        let buffer = match &mut self.state {
            State::Buffering(buf) => std::mem::take(buf),
            State::Synced { .. } => Vec::new(),
        };
        let l = snap.last_update_id;
        let fresh: Vec<DepthUpdate> = buffer.into_iter().filter(|e| !self.stale(e, l)).collect();
        if let Some(first) = fresh.first()
            && !self.brackets(first, l)
        {
            let problem = SnapshotProblem::TooOld {
                last_update_id: l,
                first_buffered: first.first_id,
            };
            self.state = State::Buffering(fresh);
            return Err(problem);
        }
        self.state = State::Synced {
            book: OrderBook::from_snapshot(snap),
            last_id: l,
            first_pending: true,
        };
        Ok(fresh.into_iter().map(|e| self.on_update(e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(first: u64, last: u64, pu: Option<u64>, bids: &[(u64, f64)]) -> DepthUpdate {
        DepthUpdate {
            symbol: "BTCUSDT".into(),
            first_id: first,
            last_id: last,
            prev_id: pu,
            bids: bids.iter().map(|&(p, q)| (p * 100_000_000, q)).collect(),
            asks: vec![(200 * 100_000_000, 1.0)],
        }
    }

    fn snap(l: u64) -> DepthSnapshot {
        DepthSnapshot {
            last_update_id: l,
            bids: vec![(100 * 100_000_000, 1.0), (99 * 100_000_000, 2.0)],
            asks: vec![(201 * 100_000_000, 3.0)],
        }
    }

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_price("61824.05000000").unwrap(), 6_182_405_000_000);
        assert_eq!(parse_price("63943.9").unwrap(), 6_394_390_000_000);
        assert_eq!(parse_price("7").unwrap(), 700_000_000);
        assert_eq!(price_f64(parse_price("61824.05000000").unwrap()), 61824.05);
        for bad in ["", "1.123456789", "-1", "1e5", "abc", ".5"] {
            assert!(parse_price(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn spot_procedure_drops_stale_checks_bracket_and_chain() {
        let mut b = LocalBook::new(RecordMarket::Spot);
        assert_eq!(
            b.on_update(ev(5, 8, None, &[(100, 5.0)])),
            Applied::Buffered
        );
        assert_eq!(
            b.on_update(ev(9, 12, None, &[(99, 0.0)])),
            Applied::Buffered
        );
        assert_eq!(
            b.on_update(ev(13, 14, None, &[(98, 1.0)])),
            Applied::Buffered
        );
        // Snapshot at 10: event 5..8 is stale, 9..12 brackets 11, 13..14 continues.
        let applied = b.on_snapshot(&snap(10)).unwrap();
        assert_eq!(applied, vec![Applied::Applied, Applied::Applied]);
        let (bids, asks) = b.book().unwrap().top(10);
        assert_eq!(bids, vec![[100.0, 1.0], [98.0, 1.0]]);
        assert_eq!(asks, vec![[200.0, 1.0], [201.0, 3.0]]);
        // A hole: 16 instead of 15.
        assert_eq!(
            b.on_update(ev(16, 17, None, &[])),
            Applied::Gap {
                expected: 15,
                got: 16
            }
        );
        assert!(!b.is_synced());
        assert_eq!(b.first_buffered(), Some(16));
    }

    #[test]
    fn spot_snapshot_older_than_the_buffer_is_refused() {
        let mut b = LocalBook::new(RecordMarket::Spot);
        b.on_update(ev(20, 25, None, &[]));
        assert_eq!(
            b.on_snapshot(&snap(10)),
            Err(SnapshotProblem::TooOld {
                last_update_id: 10,
                first_buffered: 20
            })
        );
        assert!(!b.is_synced());
        // A newer snapshot works, and the event after it must bracket L+1.
        assert_eq!(b.on_snapshot(&snap(30)).unwrap(), vec![]);
        assert_eq!(b.on_update(ev(26, 30, None, &[])), Applied::Stale);
        assert_eq!(
            b.on_update(ev(32, 33, None, &[])),
            Applied::Gap {
                expected: 31,
                got: 32
            }
        );
    }

    #[test]
    fn futures_chain_uses_pu_and_keeps_the_event_ending_at_the_snapshot() {
        for market in [RecordMarket::UsdmFutures, RecordMarket::CoinmFutures] {
            futures_chain(market);
        }
    }

    fn futures_chain(market: RecordMarket) {
        let mut b = LocalBook::new(market);
        b.on_update(ev(1, 5, Some(0), &[]));
        b.on_update(ev(6, 10, Some(5), &[(100, 7.0)]));
        b.on_update(ev(11, 20, Some(10), &[(97, 1.0)]));
        // u == L is kept and brackets L (futures: drop u < L).
        let applied = b.on_snapshot(&snap(10)).unwrap();
        assert_eq!(applied, vec![Applied::Applied, Applied::Applied]);
        assert_eq!(b.book().unwrap().top(1).0, vec![[100.0, 7.0]]);
        assert_eq!(b.on_update(ev(25, 30, Some(20), &[])), Applied::Applied);
        assert_eq!(
            b.on_update(ev(31, 32, Some(29), &[])),
            Applied::Gap {
                expected: 30,
                got: 29
            }
        );
    }

    #[test]
    fn stream_messages_parse_combined_and_ignore_other_streams() {
        let depth = r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":7,"b":[["1.50","2.0"]],"a":[]}}"#;
        match parse_stream_message(depth).unwrap() {
            StreamMessage::Depth(d) => {
                assert_eq!((d.first_id, d.last_id, d.prev_id), (5, 7, None));
                assert_eq!(d.bids, vec![(150_000_000, 2.0)]);
            }
            other => panic!("{other:?}"),
        }
        let ticker = r#"{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}}"#;
        assert_eq!(parse_stream_message(ticker).unwrap(), StreamMessage::Other);
        assert!(parse_stream_message("{").is_err());
    }
}
