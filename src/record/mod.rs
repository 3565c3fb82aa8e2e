//! The `record` stage (issue 10): collects Binance order-book snapshots at every cadence
//! boundary (UTC) and writes the tall rows to the database or rotating CSV files.
//!
//! - [`book`]: the local book and Binance's diff-depth procedure (pure).
//! - [`engine`]: the books of all symbols sampled at cadence boundaries (pure).
//! - [`rest`]: depth requests with the request-weight budget, 429/418 handling.
//! - [`ws`]: the WebSocket client (`tungstenite`) with the timeouts the collector polls with.
//! - [`sink`]: idempotent batched INSERTs, rotating CSV files, the spill file, the writer.
//!
//! Threads: the collector (this thread) sends sampled books through a bounded queue to the
//! writer thread, which spills to disk while the database is down, so collection never
//! waits for the database.

pub mod book;
pub mod engine;
pub mod error;
pub mod rest;
pub mod sink;
pub mod ws;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use error::RecordError;

use self::engine::{BookSample, Engine, SymbolStats, Tick, next_boundary_after};
use self::rest::{RestClient, RestError};
use self::sink::{CsvSink, PgSink, Sink, Spill, WriterReport, WriterSettings};
use crate::config::{Config, RecordMarket, RecordOutput, SourceType, Symbol};

/// How books are collected (`record --mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    /// `GET /api/v3/depth` per symbol per tick.
    Rest,
    /// Diff-depth stream + snapshot, Binance's local-book procedure.
    Websocket,
}

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    /// Stop after this long; `None`: until SIGINT/SIGTERM.
    pub duration: Option<Duration>,
    /// Symbols; empty = the configuration's target + correlated assets.
    pub symbols: Vec<Symbol>,
    /// REST polling or WebSocket.
    pub mode: RecordMode,
}

/// The health summary at exit.
#[derive(Debug, Clone, Serialize)]
pub struct RecordSummary {
    /// rest | websocket.
    pub mode: RecordMode,
    /// Where the rows went.
    pub output: String,
    /// CSV files written (CSV output).
    pub files: Vec<PathBuf>,
    /// Symbols recorded.
    pub symbols: Vec<String>,
    /// Start (UTC).
    pub started_at: DateTime<Utc>,
    /// End (UTC).
    pub ended_at: DateTime<Utc>,
    /// `duration` or `signal`.
    pub stopped_by: String,
    /// Snapshots (symbol x boundary) written to the destination, spill drains included.
    pub snapshots_written: u64,
    /// Snapshots sampled, per symbol, with missing ticks, gaps and resyncs.
    pub per_symbol: BTreeMap<String, SymbolStats>,
    /// Ticks without a valid book, all symbols.
    pub ticks_missing: u64,
    /// Sequence gaps (WebSocket).
    pub gaps: u64,
    /// Snapshots fetched to (re)start books.
    pub resyncs: u64,
    /// Highest `X-MBX-USED-WEIGHT-1M` seen.
    pub weight_used_peak: u32,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Symbols stopped after a 418.
    pub banned: Vec<String>,
    /// Snapshots that went through the spill file.
    pub snapshots_spilled: u64,
    /// Times the database went away.
    pub database_outages: u64,
    /// Whether snapshots remain in the spill file (written by the next run).
    pub spill_pending: bool,
    /// The spill file.
    pub spill_file: PathBuf,
}

/// Parses `90s`, `10m`, `24h`, `2d` or plain seconds (`--duration`).
pub fn parse_duration(s: &str) -> Result<Duration, RecordError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        RecordError::Usage(format!(
            "--duration: expected e.g. 90s, 10m, 24h, got {s:?}"
        ))
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(RecordError::Usage(format!(
                "--duration: unknown unit {unit:?} in {s:?} (use s, m, h or d)"
            )));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

// ---------------------------------------------------------------------------------------------
// shutdown

/// When to stop.
struct Stop {
    deadline: Option<Instant>,
}

impl Stop {
    fn now(&self) -> bool {
        crate::interrupt::requested().is_some()
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps up to `d`, waking early to stop.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.now() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// the stage

/// What the collectors share: settings, counters, the queue.
struct Collector<'a> {
    config: &'a Config,
    symbols: Vec<String>,
    depth: usize,
    cadence_s: u32,
    tx: SyncSender<Vec<BookSample>>,
    stop: Stop,
    rest: RestClient,
    rest_url: String,
    banned: Vec<String>,
    last_status: Instant,
}

impl Collector<'_> {
    fn send(&self, ticks: Vec<Tick>) {
        let books: Vec<BookSample> = ticks
            .into_iter()
            .filter_map(|t| match t {
                Tick::Book(b) => Some(b),
                Tick::Missing { ts_ms, symbol } => {
                    tracing::debug!(symbol = %symbol, ts_ms, "tick missing: no valid book");
                    None
                }
            })
            .collect();
        if !books.is_empty() {
            // Blocks only if the writer is more than `queue_capacity` batches behind;
            // a dead writer is reported when it is joined.
            let _ = self.tx.send(books);
        }
    }

    fn status(&mut self, stats: &BTreeMap<String, SymbolStats>) {
        let interval = Duration::from_secs(self.config.record.status_interval_seconds.max(1));
        if self.last_status.elapsed() < interval {
            return;
        }
        self.last_status = Instant::now();
        let total = |f: fn(&SymbolStats) -> u64| stats.values().map(f).sum::<u64>();
        tracing::info!(
            snapshots = total(|s| s.snapshots),
            missing = total(|s| s.missing),
            gaps = total(|s| s.gaps),
            resyncs = total(|s| s.resyncs),
            weight_used = self.rest.used_weight(),
            "recording"
        );
    }
}

fn default_urls(market: RecordMarket) -> (&'static str, &'static str) {
    match market {
        RecordMarket::Spot => ("https://api.binance.com", "wss://stream.binance.com:9443"),
        RecordMarket::UsdmFutures => ("https://fapi.binance.com", "wss://fstream.binance.com"),
        RecordMarket::CoinmFutures => ("https://dapi.binance.com", "wss://dstream.binance.com"),
    }
}

fn open_sink(config: &Config, depth: usize) -> Result<Box<dyn Sink>, RecordError> {
    let r = &config.record;
    let database = match r.output {
        RecordOutput::Database => true,
        RecordOutput::Csv => false,
        RecordOutput::Auto => config.data.source_type == SourceType::Database,
    };
    if database {
        if config
            .data
            .connection
            .database_uri
            .as_deref()
            .unwrap_or("")
            .is_empty()
        {
            return Err(RecordError::Usage(
                "record.output is database but data.connection.database_uri is not set".into(),
            ));
        }
        Ok(Box::new(PgSink::open(
            &config.data,
            r.create_table,
            r.batch_id_seconds,
            r.insert_batch_rows,
            depth,
        )?))
    } else {
        Ok(Box::new(CsvSink::open(
            &r.csv_dir,
            r.csv_gzip,
            r.rotate_seconds,
            depth,
        )?))
    }
}

/// Records until `req.duration` has passed or SIGINT/SIGTERM arrives, then flushes what was
/// collected and returns the health summary.
pub fn record(config: &Config, req: &RecordRequest) -> Result<RecordSummary, RecordError> {
    let _span = tracing::info_span!("record").entered();
    let started_at = Utc::now();
    let symbols: Vec<String> = if req.symbols.is_empty() {
        config.data.asset_pairs.all()
    } else {
        req.symbols.clone()
    }
    .iter()
    .map(|s| s.as_str().to_owned())
    .collect();
    let mut unique = symbols.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != symbols.len() {
        return Err(RecordError::Usage(format!(
            "--symbols lists a symbol twice: {}",
            symbols.join(",")
        )));
    }
    let r = &config.record;
    let depth = config.data.order_book.depth_levels as usize;
    let (rest_default, ws_default) = default_urls(r.market);
    let rest_url = if r.rest_url.is_empty() {
        rest_default.to_owned()
    } else {
        r.rest_url.clone()
    };
    let ws_url = if r.ws_url.is_empty() {
        ws_default.to_owned()
    } else {
        r.ws_url.clone()
    };

    let rest = RestClient::new(
        &rest_url,
        r.market,
        Duration::from_secs(r.request_timeout_seconds.max(1)),
        r.weight_limit_per_minute,
    )
    .map_err(|e| RecordError::Http {
        url: rest_url.clone(),
        message: e.to_string(),
    })?;

    let sink = open_sink(config, depth)?;
    let output = sink.describe();
    let files_hint = (!matches!(r.output, RecordOutput::Database)).then(|| r.csv_dir.clone());
    let spill_dir = if r.spill_dir.as_os_str().is_empty() {
        config.workdir.join("record").join("spill")
    } else {
        r.spill_dir.clone()
    };
    let spill = Spill::new(&spill_dir);
    let spill_file = spill.path().to_owned();
    let (tx, rx) = sync_channel::<Vec<BookSample>>(r.queue_capacity.max(1));
    let settings = WriterSettings {
        batch_samples: (r.insert_batch_rows / depth.max(1)).max(1),
        flush_interval: Duration::from_secs(1),
        retry_interval: Duration::from_secs(r.db_retry_seconds.max(1)),
    };
    let parent = tracing::Span::current();
    let writer = std::thread::Builder::new()
        .name("record-writer".into())
        .spawn(move || {
            let _entered = parent.enter();
            sink::run_writer(sink, rx, spill, settings)
        })
        .map_err(|e| RecordError::io("cannot start the writer thread", e))?;

    let _signals = crate::interrupt::Guard::install();
    tracing::info!(
        mode = ?req.mode,
        symbols = %symbols.join(","),
        cadence_s = config.data.time_range.cadence_seconds.seconds(),
        depth,
        output = %output,
        "record starts"
    );
    let mut collector = Collector {
        config,
        symbols: symbols.clone(),
        depth,
        cadence_s: config.data.time_range.cadence_seconds.seconds().max(1),
        tx,
        stop: Stop {
            deadline: req.duration.map(|d| Instant::now() + d),
        },
        rest,
        rest_url: rest_url.clone(),
        banned: Vec::new(),
        last_status: Instant::now(),
    };
    let collected = match req.mode {
        RecordMode::Rest => run_rest(&mut collector),
        RecordMode::Websocket => run_ws(&mut collector, &ws_url),
    };
    let stopped_by = if crate::interrupt::requested().is_some() {
        "signal"
    } else {
        "duration"
    };
    let Collector {
        tx, rest, banned, ..
    } = collector;
    drop(tx); // lets the writer drain the queue and finish
    let written: Result<WriterReport, RecordError> = writer
        .join()
        .map_err(|_| RecordError::Writer("panicked".into()))?;
    let per_symbol = collected?;
    let report = written?;
    let files = match files_hint {
        Some(dir) if !output.starts_with("table") => {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            v.sort();
            v
        }
        _ => Vec::new(),
    };
    let total = |f: fn(&SymbolStats) -> u64| per_symbol.values().map(f).sum::<u64>();
    let summary = RecordSummary {
        mode: req.mode,
        output,
        files,
        symbols,
        started_at,
        ended_at: Utc::now(),
        stopped_by: stopped_by.into(),
        snapshots_written: report.samples_written,
        ticks_missing: total(|s| s.missing),
        gaps: total(|s| s.gaps),
        resyncs: total(|s| s.resyncs),
        per_symbol,
        weight_used_peak: rest.peak_weight,
        rate_limited: rest.rate_limited,
        banned,
        snapshots_spilled: report.samples_spilled,
        database_outages: report.outages,
        spill_pending: report.spill_pending,
        spill_file,
    };
    tracing::info!(
        snapshots_written = summary.snapshots_written,
        missing = summary.ticks_missing,
        gaps = summary.gaps,
        resyncs = summary.resyncs,
        weight_peak = summary.weight_used_peak,
        rate_limited = summary.rate_limited,
        banned = summary.banned.len(),
        spilled = summary.snapshots_spilled,
        "record done"
    );
    Ok(summary)
}

/// A 418 stops the symbol for good; every symbol stopped ends the run with exit 4.
fn ban(c: &mut Collector<'_>, symbol: &str, e: &RestError) -> Result<(), RecordError> {
    if !c.banned.iter().any(|s| s == symbol) {
        tracing::error!(symbol, url = %c.rest_url, "{e}: Binance banned this IP; {symbol} is no longer recorded");
        c.banned.push(symbol.to_owned());
    }
    if c.banned.len() == c.symbols.len() {
        return Err(RecordError::AllBanned {
            symbols: c.banned.clone(),
            url: c.rest_url.clone(),
        });
    }
    Ok(())
}

fn status_error(symbol: &str, status: u16, body: &str) -> RecordError {
    if status == 400 {
        RecordError::Usage(format!(
            "Binance rejected symbol {symbol} (--symbols / data.asset_pairs): HTTP 400 {body}"
        ))
    } else {
        RecordError::Malformed {
            symbol: symbol.into(),
            message: format!("HTTP {status}: {body}"),
        }
    }
}

/// REST mode: one depth request per symbol per boundary; an answer later than the next
/// boundary is a missing tick, never back-filled.
fn run_rest(c: &mut Collector<'_>) -> Result<BTreeMap<String, SymbolStats>, RecordError> {
    let cadence_ms = i64::from(c.cadence_s) * 1000;
    let market = c.config.record.market;
    let limit = rest::depth_limit(market, c.depth as u32);
    let weight = rest::depth_weight(market, limit);
    let max_backoff = Duration::from_secs(c.config.record.max_backoff_seconds.max(1));
    let mut stats: BTreeMap<String, SymbolStats> = c
        .symbols
        .iter()
        .map(|s| (s.clone(), SymbolStats::default()))
        .collect();
    let mut boundary = next_boundary_after(now_ms(), cadence_ms);
    loop {
        let wait = boundary - now_ms();
        if wait > 0 {
            c.stop.sleep(Duration::from_millis(wait as u64));
        }
        if c.stop.now() {
            break;
        }
        let deadline = boundary + cadence_ms;
        let mut samples = Vec::new();
        for symbol in c.symbols.clone() {
            if c.banned.contains(&symbol) {
                stats.get_mut(&symbol).expect("known").missing += 1;
                continue;
            }
            let mut backoff = Duration::from_millis(200);
            let got = loop {
                if c.stop.now() || now_ms() >= deadline {
                    break None;
                }
                if !c.rest.fits(weight) {
                    tracing::warn!(symbol = %symbol, used = c.rest.used_weight(), "request weight budget or Retry-After pause: tick skipped");
                    break None;
                }
                match c.rest.depth(&symbol, limit) {
                    Ok(snap) => break Some(snap),
                    Err(e @ RestError::RateLimited { .. }) => {
                        tracing::warn!(symbol = %symbol, "{e}");
                        break None;
                    }
                    Err(e @ RestError::Banned { .. }) => {
                        ban(c, &symbol, &e)?;
                        break None;
                    }
                    Err(RestError::Status { status, body }) => {
                        return Err(status_error(&symbol, status, &body));
                    }
                    Err(RestError::Malformed(m)) => {
                        return Err(RecordError::Malformed { symbol, message: m });
                    }
                    Err(e @ RestError::Network(_)) => {
                        tracing::warn!(symbol = %symbol, "{e}; retrying in {} ms", backoff.as_millis());
                        let left = Duration::from_millis((deadline - now_ms()).max(0) as u64);
                        c.stop.sleep(backoff.min(left));
                        backoff = (backoff * 2).min(max_backoff);
                    }
                }
            };
            let s = stats.get_mut(&symbol).expect("known");
            match got {
                Some(snap) if now_ms() < deadline => {
                    let mut book = book::LocalBook::new(market);
                    let _ = book.on_snapshot(&snap);
                    let (bids, asks) = book.book().map(|b| b.top(c.depth)).unwrap_or_default();
                    s.snapshots += 1;
                    samples.push(BookSample {
                        ts_ms: boundary,
                        symbol: symbol.clone(),
                        bids,
                        asks,
                    });
                }
                _ => {
                    s.missing += 1;
                    tracing::info!(symbol = %symbol, ts_ms = boundary, "tick missing");
                }
            }
        }
        c.send(samples.into_iter().map(Tick::Book).collect());
        c.status(&stats);
        boundary += cadence_ms;
        // Fell behind (slow answers, long pause): skip to the next reachable boundary,
        // counting the skipped ones as missing.
        let now = now_ms();
        if now >= boundary + cadence_ms {
            let next = next_boundary_after(now, cadence_ms);
            let skipped = ((next - boundary) / cadence_ms) as u64;
            for s in stats.values_mut() {
                s.missing += skipped;
            }
            boundary = next;
        }
    }
    Ok(stats)
}

/// WebSocket mode: the combined diff-depth stream of every symbol, with a REST snapshot per
/// symbol whenever its book needs one; reconnects on errors and before Binance's 24 h limit.
fn run_ws(
    c: &mut Collector<'_>,
    ws_url: &str,
) -> Result<BTreeMap<String, SymbolStats>, RecordError> {
    let market = c.config.record.market;
    let mut engine = Engine::new(market, &c.symbols, c.cadence_s, c.depth);
    let streams: Vec<String> = c
        .symbols
        .iter()
        .map(|s| format!("{}@depth@100ms", s.to_lowercase()))
        .collect();
    let url = format!(
        "{}/stream?streams={}",
        ws_url.trim_end_matches('/'),
        streams.join("/")
    );
    let timeout = Duration::from_secs(c.config.record.request_timeout_seconds.max(1));
    let reconnect_after = Duration::from_secs(c.config.record.reconnect_after_seconds.max(1));
    let max_backoff = Duration::from_secs(c.config.record.max_backoff_seconds.max(1));
    let snapshot_limit = rest::depth_limit(market, (c.depth as u32).max(1000));
    let mut backoff = Duration::from_millis(200);
    while !c.stop.now() {
        let mut client = match ws::WsClient::connect(&url, timeout) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(url = %url, "cannot connect the stream: {e}; retrying in {} ms", backoff.as_millis());
                c.stop.sleep(backoff);
                backoff = (backoff * 2).min(max_backoff);
                let ticks = engine.advance(now_ms());
                c.send(ticks);
                continue;
            }
        };
        tracing::info!(url = %url, "stream connected");
        let connected = Instant::now();
        let mut last_message = Instant::now();
        let mut last_snapshot_try: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            if c.stop.now() {
                c.send(engine.advance(now_ms()));
                client.close();
                break;
            }
            if connected.elapsed() >= reconnect_after {
                tracing::info!("reconnecting before Binance's 24 h connection limit");
                client.close();
                break;
            }
            match client.read() {
                Ok(ws::WsMessage::Text(text)) => {
                    last_message = Instant::now();
                    backoff = Duration::from_millis(200);
                    match engine.on_message(now_ms(), &text) {
                        Ok(ticks) => c.send(ticks),
                        Err(m) => tracing::warn!("ignoring an unreadable stream message: {m}"),
                    }
                }
                Ok(ws::WsMessage::Closed(code, reason)) => {
                    tracing::warn!(?code, reason = %reason, "the server closed the stream; reconnecting");
                    break;
                }
                Ok(ws::WsMessage::Idle) => {
                    c.send(engine.advance(now_ms()));
                    if last_message.elapsed() >= timeout {
                        tracing::warn!("no message for {} s; reconnecting", timeout.as_secs());
                        client.close();
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("stream error: {e}; reconnecting");
                    break;
                }
            }
            for symbol in engine.needing_snapshot() {
                if c.banned.contains(&symbol)
                    || last_snapshot_try
                        .get(&symbol)
                        .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
                {
                    continue;
                }
                last_snapshot_try.insert(symbol.clone(), Instant::now());
                match c.rest.depth(&symbol, snapshot_limit) {
                    Ok(snap) => match engine.on_snapshot(&symbol, &snap) {
                        Ok(_) if engine.is_synced(&symbol) => {
                            tracing::info!(symbol = %symbol, last_update_id = snap.last_update_id, "book synced");
                        }
                        Ok(_) => {}
                        Err(p) => {
                            tracing::info!(symbol = %symbol, ?p, "snapshot older than the stream; fetching another")
                        }
                    },
                    Err(e @ RestError::Banned { .. }) => ban(c, &symbol, &e)?,
                    Err(RestError::Status { status, body }) => {
                        return Err(status_error(&symbol, status, &body));
                    }
                    Err(e) => tracing::warn!(symbol = %symbol, "snapshot request failed: {e}"),
                }
            }
            c.status(engine.stats());
        }
        // Events may have been lost with the connection: every book starts over.
        engine.reset_all();
        if !c.stop.now() {
            c.stop.sleep(backoff);
            backoff = (backoff * 2).min(max_backoff);
        }
    }
    Ok(engine.stats().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitCode;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(RecordError::Usage("x".into()).exit_code(), ExitCode::Usage);
    }
}
