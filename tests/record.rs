//! The `record` stage against real Binance captures (`../shared/data/binance_raw`): the
//! local-book procedure reproduces the shipped 1-second snapshots, rows written to a real
//! PostgreSQL and to CSV files read back through `fetch` to the same books, and the whole
//! recorder runs against a local HTTP + WebSocket server replaying the captures, including
//! its failure cases (429 storm, 418, sequence gap, dropped connection, the database going away
//! behind a TCP proxy and coming back).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use binance_ml::config::{RecordMarket, Symbol};
use binance_ml::data::cache::CacheReader;
use binance_ml::data::fetch::fetch;
use binance_ml::record::book::{DepthSnapshot, StreamMessage, parse_stream_message};
use binance_ml::record::engine::{BookSample, Engine, Tick};
use binance_ml::record::sink::{CsvSink, PgSink, Sink};
use binance_ml::record::{self, RecordMode, RecordRequest};
use tungstenite::Message;

type Levels = Vec<[f64; 2]>;

/// One line of a capture: receive time, symbol, the JSON, and whether it is the REST
/// snapshot body.
#[derive(Clone)]
struct Line {
    ts_ns: i64,
    symbol: String,
    text: String,
    snapshot: bool,
}

/// The capture files of `symbols` under `binance_raw/<dir>`, merged by receive time.
fn capture(shared: &Path, dir: &str, symbols: &[&str]) -> Vec<Line> {
    let mut lines = Vec::new();
    for sym in symbols {
        let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("binance_raw").join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&sym.to_lowercase())
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no capture of {sym} in {dir}");
        for f in files {
            let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(&f).unwrap());
            for line in BufReader::new(gz).lines() {
                let line = line.unwrap();
                let (ts, json) = line.split_once(' ').unwrap();
                lines.push(Line {
                    ts_ns: ts.parse().unwrap(),
                    symbol: sym.to_string(),
                    snapshot: json.starts_with("{\"lastUpdateId\""),
                    text: json.to_owned(),
                });
            }
        }
    }
    lines.sort_by_key(|l| l.ts_ns); // stable: file order within a symbol is kept
    lines
}

struct Replay {
    samples: Vec<BookSample>,
    /// Per symbol: (receive time, top levels) after every applied depth event.
    history: BTreeMap<String, Vec<(i64, Levels, Levels)>>,
    gaps: u64,
    resyncs: u64,
}

/// Feeds a capture through the engine exactly as the WebSocket transport does, with the
/// capture's receive clock.
fn replay(lines: &[Line], market: RecordMarket, symbols: &[&str], depth: usize) -> Replay {
    let names: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
    let mut e = Engine::new(market, &names, 1, depth);
    let mut out = Replay {
        samples: Vec::new(),
        history: names.iter().map(|s| (s.clone(), Vec::new())).collect(),
        gaps: 0,
        resyncs: 0,
    };
    for l in lines {
        let ms = l.ts_ns.div_euclid(1_000_000);
        let ticks = if l.snapshot {
            let t = e.advance(ms);
            let snap = DepthSnapshot::parse(&l.text).unwrap();
            e.on_snapshot(&l.symbol, &snap).unwrap();
            t
        } else {
            e.on_message(ms, &l.text).unwrap()
        };
        out.samples
            .extend(ticks.into_iter().filter_map(|t| match t {
                Tick::Book(b) => Some(b),
                Tick::Missing { .. } => None,
            }));
        let is_depth =
            l.snapshot || matches!(parse_stream_message(&l.text), Ok(StreamMessage::Depth(_)));
        if is_depth && let Some((b, a, _)) = e.top(&l.symbol, depth) {
            out.history
                .get_mut(&l.symbol)
                .unwrap()
                .push((l.ts_ns, b, a));
        }
    }
    for s in e.stats().values() {
        out.gaps += s.gaps;
        out.resyncs += s.resyncs;
    }
    out
}

/// The shipped 1-second snapshots: (ts_s, bids, asks) of the top 10 levels.
fn reference(path: &Path) -> Vec<(i64, Levels, Levels)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let v: Vec<f64> = f[2..42].iter().map(|x| x.parse().unwrap()).collect();
            let side = |off: usize| {
                (0..10)
                    .map(|k| [v[off + 2 * k], v[off + 2 * k + 1]])
                    .collect()
            };
            (f[0].parse().unwrap(), side(0), side(20))
        })
        .collect()
}

/// Replays one market and compares with the shipped snapshots of both symbols.
fn compare_with_shipped(shared: &Path, dir: &str, market: RecordMarket, prefix: &str) {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let lines = capture(shared, dir, &symbols);
    let r = replay(&lines, market, &symbols, 10);
    assert_eq!(r.gaps, 0, "the captures have no sequence gap");
    assert_eq!(r.resyncs, 2, "one snapshot per symbol");
    for sym in symbols {
        let file = std::fs::read_dir(shared.join("binance_1s_top10"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n.starts_with(&format!("{prefix}_{sym}_"))
            })
            .unwrap();
        let shipped = reference(&file);
        let ours: Vec<&BookSample> = r.samples.iter().filter(|s| s.symbol == sym).collect();
        // Same seconds: every whole second from the first after the snapshot to the last
        // before the capture ends.
        let our_secs: Vec<i64> = ours.iter().map(|s| s.ts_ms / 1000).collect();
        let shipped_secs: Vec<i64> = shipped.iter().map(|s| s.0).collect();
        assert_eq!(our_secs, shipped_secs, "{sym}: sampled seconds differ");
        let history = &r.history[sym];
        let (mut exact, mut near) = (0, 0);
        for ((sec, bids, asks), ours) in shipped.iter().zip(&ours) {
            // Our sample is the book after the last event received before the second.
            let i = history.partition_point(|h| h.0 < sec * 1_000_000_000) - 1;
            assert_eq!((&ours.bids, &ours.asks), (&history[i].1, &history[i].2));
            if (bids, asks) == (&ours.bids, &ours.asks) {
                exact += 1;
                continue;
            }
            // The shipped sampler cut some seconds one 100 ms update earlier or later:
            // the book it shows must still be one our procedure went through right there.
            let lo = i.saturating_sub(3);
            let hi = (i + 3).min(history.len() - 1);
            assert!(
                history[lo..=hi]
                    .iter()
                    .any(|h| (&h.1, &h.2) == (bids, asks)),
                "{sym} second {sec}: the shipped book is none of the books around it"
            );
            near += 1;
        }
        eprintln!(
            "{prefix} {sym}: {} seconds, {exact} identical at the second, {near} within 3 updates",
            shipped.len()
        );
        assert!(
            exact * 2 > shipped.len(),
            "{sym}: only {exact} identical seconds"
        );
    }
}

#[test]
fn replayed_spot_books_equal_the_shipped_snapshots() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    compare_with_shipped(&shared, "spot", RecordMarket::Spot, "spot");
}

#[test]
fn replayed_futures_books_equal_the_shipped_snapshots() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    compare_with_shipped(&shared, "usdm_2024-07", RecordMarket::UsdmFutures, "usdm");
}

fn spot_samples(shared: &Path) -> Vec<BookSample> {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    replay(
        &capture(shared, "spot", &symbols),
        RecordMarket::Spot,
        &symbols,
        10,
    )
    .samples
}

fn db_yaml(workdir: &Path, uri: &str, table: &str, extra: &str) -> String {
    format!(
        "workdir: {workdir:?}\ndata:\n  source_type: database\n  connection:\n    database_uri: {uri:?}\n    \
         table_name: {table}\n    connect_timeout_seconds: 2\n    max_retries: 2\n  asset_pairs:\n    \
         target_asset: BTCUSDT\n    correlated_assets: [ETHUSDT]\n  time_range:\n    start_date: \"2024-08-08\"\n    \
         end_date: \"2024-08-09\"\n    cadence_seconds: 1\n{extra}"
    )
}

fn file_yaml(workdir: &Path, glob: &str) -> String {
    format!(
        "workdir: {workdir:?}\ndata:\n  source_type: file\n  files:\n    paths: [{glob:?}]\n    layout: wide\n  \
         asset_pairs:\n    target_asset: BTCUSDT\n    correlated_assets: [ETHUSDT]\n  time_range:\n    \
         start_date: \"2024-08-08\"\n    end_date: \"2024-08-09\"\n    cadence_seconds: 1\n"
    )
}

fn count_rows(uri: &str, table: &str) -> i64 {
    let mut c = postgres::Client::connect(uri, postgres::NoTls).unwrap();
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

fn drop_table(uri: &str, table: &str) {
    let mut c = postgres::Client::connect(uri, postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .unwrap();
}

#[test]
fn recorded_rows_read_back_through_fetch_from_postgres_and_csv() {
    let (Some(shared), Some(uri)) = (common::shared_data(), common::database_uri()) else {
        return;
    };
    let samples = spot_samples(&shared);
    assert_eq!(samples.len(), 2 * 650);
    let dir = tempfile::tempdir().unwrap();
    let table = "t_record_roundtrip";
    drop_table(&uri, table);
    let config = common::config(&db_yaml(&dir.path().join("db"), &uri, table, ""));
    let mut pg = PgSink::open(&config.data, true, 600, 700, 10).unwrap();
    pg.write(&samples).unwrap();
    // A restarted recorder writing the same snapshots again adds nothing.
    pg.write(&samples[..100]).unwrap();
    assert_eq!(count_rows(&uri, table), 2 * 650 * 10);

    let csv_dir = dir.path().join("csv");
    let mut csv = CsvSink::open(&csv_dir, true, 300, 10).unwrap();
    csv.write(&samples).unwrap();
    csv.finish().unwrap();
    assert_eq!(csv.files().len(), 4, "5-minute files from 23:50 to 00:05");

    let from_db = fetch(&config, false).unwrap();
    let from_csv = fetch(
        &common::config(&file_yaml(
            &dir.path().join("files"),
            &format!("{}/*.csv.gz", csv_dir.display()),
        )),
        false,
    )
    .unwrap();
    assert_eq!(from_db.snapshots["BTCUSDT"], 650);
    assert_eq!(from_db.quality.rows_dropped(), 0);
    let db = CacheReader::open(&from_db.cache_dir)
        .unwrap()
        .load()
        .unwrap();
    let files = CacheReader::open(&from_csv.cache_dir)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(db.order_books, files.order_books);
    // And they are the recorded books: compare one snapshot level by level.
    let first = samples.iter().find(|s| s.symbol == "ETHUSDT").unwrap();
    let book = &db.order_books["ETHUSDT"];
    let json = serde_json::to_value(book).unwrap();
    let text = json.to_string();
    for [p, q] in first.bids.iter().chain(&first.asks) {
        assert!(text.contains(&format!("{p}")) && text.contains(&format!("{q}")));
    }
    drop_table(&uri, table);
}

// ---------------------------------------------------------------------------------------------
// A local Binance: REST depth + combined diff-depth stream, replaying the spot captures.

#[derive(Clone, Copy)]
enum Fault {
    None,
    /// The first `n` depth requests answer 429 with `Retry-After: 1`.
    Storm429(usize),
    /// Every depth request answers 418.
    Banned,
    /// The stream silently skips its `n`-th depth event (a sequence gap).
    GapAt(usize),
    /// The first connection is cut after `n` messages.
    DropAt(usize),
}

/// REST on one port, the stream (tungstenite's server side) on another.
struct Server {
    rest_port: u16,
    ws_port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for port in [self.rest_port, self.ws_port] {
            let _ = TcpStream::connect(("127.0.0.1", port)); // wakes the accept loop
        }
    }
}

struct Shared {
    lines: Vec<Line>,
    /// The server's own book, at the position the stream reached.
    engine: Engine,
    position: usize,
    depth_sent: usize,
    requests: usize,
    connections: usize,
    fault: Fault,
}

/// Starts the server: 20x real time, from the first message after the capture's snapshots.
fn serve(lines: Vec<Line>, fault: Fault) -> Server {
    let symbols = vec!["BTCUSDT".to_string(), "ETHUSDT".to_string()];
    let mut engine = Engine::new(RecordMarket::Spot, &symbols, 1, 1000);
    let start = lines.iter().rposition(|l| l.snapshot).unwrap() + 1;
    for l in &lines[..start] {
        if l.snapshot {
            let s = DepthSnapshot::parse(&l.text).unwrap();
            engine.on_snapshot(&l.symbol, &s).unwrap();
        } else {
            engine.on_message(0, &l.text).unwrap();
        }
    }
    let shared = Arc::new(Mutex::new(Shared {
        lines,
        engine,
        position: start,
        depth_sent: 0,
        requests: 0,
        connections: 0,
        fault,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let rest_port = listen(&shared, &stop, |conn, shared, _| handle_rest(conn, shared));
    let ws_port = listen(&shared, &stop, handle_stream);
    Server {
        rest_port,
        ws_port,
        stop,
    }
}

/// Serves each connection of a new local port on its own thread until `stop`.
fn listen(
    shared: &Arc<Mutex<Shared>>,
    stop: &Arc<AtomicBool>,
    handle: fn(TcpStream, &Mutex<Shared>, &AtomicBool),
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (shared, stop) = (shared.clone(), stop.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || handle(conn, &shared, &stop));
        }
    });
    port
}

fn handle_rest(mut conn: TcpStream, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
    }
    let path = head[0].split(' ').nth(1).unwrap_or("/").to_owned();
    let symbol = path
        .split("symbol=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let mut s = shared.lock().unwrap();
    s.requests += 1;
    let (status, extra, body) = match s.fault {
        Fault::Storm429(n) if s.requests <= n => (
            "429 Too Many Requests",
            "Retry-After: 1\r\n",
            r#"{"code":-1003,"msg":"Too many requests."}"#.to_owned(),
        ),
        Fault::Banned => (
            "418 I'm a teapot",
            "Retry-After: 3600\r\n",
            r#"{"code":-1003,"msg":"Way too many requests; IP banned."}"#.to_owned(),
        ),
        _ => {
            let (bids, asks, last) = s.engine.top(symbol, 1000).unwrap();
            let side = |v: &Levels| {
                v.iter()
                    .map(|[p, q]| format!("[\"{p}\",\"{q}\"]"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            (
                "200 OK",
                "",
                format!(
                    "{{\"lastUpdateId\":{last},\"bids\":[{}],\"asks\":[{}]}}",
                    side(&bids),
                    side(&asks)
                ),
            )
        }
    };
    let weight = s.requests * 50;
    drop(s);
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-MBX-USED-WEIGHT-1M: {weight}\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The WebSocket upgrade, then the stream.
fn handle_stream(conn: TcpStream, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let Ok(mut ws) = tungstenite::accept(conn) else {
        return;
    };
    let first_connection = {
        let mut s = shared.lock().unwrap();
        s.connections += 1;
        s.connections == 1
    };
    let mut sent = 0;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (text, wait, skip) = {
            let mut s = shared.lock().unwrap();
            let Some(l) = s.lines.get(s.position).cloned() else {
                return;
            };
            let next_ts = s.lines.get(s.position + 1).map_or(l.ts_ns, |n| n.ts_ns);
            s.position += 1;
            let is_depth = matches!(parse_stream_message(&l.text), Ok(StreamMessage::Depth(_)));
            let mut skip = false;
            if is_depth {
                s.depth_sent += 1;
                skip = matches!(s.fault, Fault::GapAt(n) if n == s.depth_sent);
                s.engine.on_message(0, &l.text).unwrap();
            }
            (
                l.text,
                Duration::from_nanos(((next_ts - l.ts_ns) / 20).max(0) as u64),
                skip,
            )
        };
        if !skip && ws.send(Message::text(text)).is_err() {
            return;
        }
        sent += 1;
        if first_connection && matches!(shared.lock().unwrap().fault, Fault::DropAt(n) if n == sent)
        {
            let _ = ws.get_ref().shutdown(std::net::Shutdown::Both);
            return;
        }
        std::thread::sleep(wait);
    }
}

fn record_yaml(dir: &Path, server: &Server) -> String {
    format!(
        "workdir: {:?}\ndata:\n  source_type: file\n  files:\n    paths: [unused.csv]\n  asset_pairs:\n    \
         target_asset: BTCUSDT\n    correlated_assets: [ETHUSDT]\n  time_range:\n    start_date: \"2024-08-08\"\n    \
         end_date: \"2024-08-09\"\n    cadence_seconds: 1\nrecord:\n  rest_url: http://127.0.0.1:{}\n  \
         ws_url: ws://127.0.0.1:{}\n  output: csv\n  csv_dir: {:?}\n  request_timeout_seconds: 2\n  \
         max_backoff_seconds: 1\n  status_interval_seconds: 1\n",
        dir.join("work"),
        server.rest_port,
        server.ws_port,
        dir.join("csv")
    )
}

/// Every row of the recorded CSV files as (symbol, bids, asks).
fn recorded_rows(dir: &Path) -> Vec<(String, Levels, Levels)> {
    let mut rows = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let mut text = String::new();
        std::fs::File::open(e.unwrap().path())
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let v: Vec<f64> = f[2..42].iter().map(|x| x.parse().unwrap()).collect();
            let side = |off: usize| {
                (0..10)
                    .map(|k| [v[off + 2 * k], v[off + 2 * k + 1]])
                    .collect()
            };
            rows.push((f[1].to_owned(), side(0), side(20)));
        }
    }
    rows
}

fn websocket_run(fault: Fault) -> Option<(record::RecordSummary, usize)> {
    let shared = common::shared_data()?;
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let lines = capture(&shared, "spot", &symbols);
    let truth = replay(&lines, RecordMarket::Spot, &symbols, 10);
    let server = serve(lines, fault);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&record_yaml(dir.path(), &server));
    let req = RecordRequest {
        duration: Some(Duration::from_secs(5)),
        symbols: vec![],
        mode: RecordMode::Websocket,
    };
    let summary = record::record(&config, &req).unwrap();
    let rows = recorded_rows(&dir.path().join("csv"));
    assert!(!rows.is_empty(), "nothing recorded: {summary:?}");
    // Every recorded book is one the official procedure goes through on the capture.
    for (sym, bids, asks) in &rows {
        assert!(
            truth.history[sym]
                .iter()
                .any(|h| (&h.1, &h.2) == (bids, asks)),
            "{sym}: recorded a book the capture never had"
        );
    }
    assert_eq!(summary.snapshots_written as usize, rows.len());
    Some((summary, rows.len()))
}

#[test]
fn websocket_recorder_against_the_replay_server_records_true_books() {
    let Some((s, _)) = websocket_run(Fault::None) else {
        return;
    };
    assert_eq!((s.gaps, s.resyncs), (0, 2), "{s:?}");
}

#[test]
fn a_sequence_gap_is_reported_and_resynced() {
    let Some((s, _)) = websocket_run(Fault::GapAt(300)) else {
        return;
    };
    assert_eq!(s.gaps, 1, "{s:?}");
    assert_eq!(s.resyncs, 3, "{s:?}");
}

#[test]
fn a_dropped_connection_reconnects_and_resyncs_every_book() {
    let Some((s, _)) = websocket_run(Fault::DropAt(500)) else {
        return;
    };
    assert_eq!(s.gaps, 0, "{s:?}");
    assert_eq!(s.resyncs, 4, "{s:?}");
}

fn rest_run(
    fault: Fault,
    secs: u64,
) -> Option<(Result<record::RecordSummary, record::RecordError>, usize)> {
    let shared = common::shared_data()?;
    let lines = capture(&shared, "spot", &["BTCUSDT", "ETHUSDT"]);
    let server = serve(lines, fault);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&record_yaml(dir.path(), &server));
    let req = RecordRequest {
        duration: Some(Duration::from_secs(secs)),
        symbols: vec![
            Symbol::new("BTCUSDT").unwrap(),
            Symbol::new("ETHUSDT").unwrap(),
        ],
        mode: RecordMode::Rest,
    };
    let result = record::record(&config, &req);
    let rows = if dir.path().join("csv").is_dir() {
        recorded_rows(&dir.path().join("csv")).len()
    } else {
        0
    };
    Some((result, rows))
}

#[test]
fn rest_mode_honours_a_429_storm_and_records_after_it() {
    let Some((result, rows)) = rest_run(Fault::Storm429(2), 8) else {
        return;
    };
    let s = result.unwrap();
    // Each 429 pauses every symbol for Retry-After (those ticks are missing), then
    // recording resumes.
    assert_eq!(s.rate_limited, 2, "{s:?}");
    assert!(s.ticks_missing >= 2, "{s:?}");
    assert!(rows > 0 && rows as u64 == s.snapshots_written, "{s:?}");
    assert!(s.weight_used_peak > 0);
}

#[test]
fn rest_mode_stops_with_exit_4_when_every_symbol_is_banned() {
    let Some((result, rows)) = rest_run(Fault::Banned, 10) else {
        return;
    };
    let e = result.unwrap_err();
    assert_eq!(e.exit_code(), binance_ml::exit::ExitCode::External, "{e}");
    assert!(e.to_string().contains("BTCUSDT, ETHUSDT"), "{e}");
    assert_eq!(rows, 0);
}

// ---------------------------------------------------------------------------------------------
// The database going away and coming back, through a TCP proxy in front of the real PostgreSQL.

/// Forwards TCP connections to the database; `cut` drops every open connection and refuses
/// new ones (accepted, then closed at once) until `restore`.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Whether cut, and the open sockets (both ends of every forwarded connection).
    state: Arc<Mutex<(bool, Vec<TcpStream>)>>,
    /// Local ports of the proxy's connections to the database (`pg_stat_activity.client_port`).
    upstream_ports: Arc<Mutex<Vec<u16>>>,
}

impl Proxy {
    fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new((false, Vec::new())));
        let upstream_ports = Arc::new(Mutex::new(Vec::new()));
        let (stop2, state2, ports2) = (stop.clone(), state.clone(), upstream_ports.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let mut s = state2.lock().unwrap();
                if s.0 {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                ports2
                    .lock()
                    .unwrap()
                    .push(server.local_addr().unwrap().port());
                s.1.push(client.try_clone().unwrap());
                s.1.push(server.try_clone().unwrap());
                drop(s);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self {
            port,
            stop,
            state,
            upstream_ports,
        }
    }

    fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        for c in s.1.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.state.lock().unwrap().0 = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.cut();
    }
}

/// `uri` with its host:port replaced by `127.0.0.1:port`, and the address it named.
fn through_proxy(uri: &str, port: u16) -> (String, std::net::SocketAddr) {
    use std::net::ToSocketAddrs;
    let cfg: postgres::Config = uri.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test database must be reached over TCP, not {other:?}"),
    };
    let db_port = cfg.get_ports().first().copied().unwrap_or(5432);
    let addr = (host.as_str(), db_port)
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let scheme_end = uri.find("://").unwrap() + 3;
    let rest = &uri[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let userinfo_end = rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
    let proxied = format!(
        "{}{}127.0.0.1:{port}{}",
        &uri[..scheme_end],
        &rest[..userinfo_end],
        &rest[authority_end..]
    );
    (proxied, addr)
}

/// Waits for `cond` up to `secs` seconds (a generous deadline, not a speed assertion).
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_database_going_away_and_back_loses_and_duplicates_no_row() {
    let (Some(shared), Some(uri)) = (common::shared_data(), common::database_uri()) else {
        return;
    };
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let lines = capture(&shared, "spot", &symbols);
    let truth = replay(&lines, RecordMarket::Spot, &symbols, 10);
    let server = serve(lines, Fault::None);
    let proxy = Proxy::start(through_proxy(&uri, 0).1);
    let (proxied, _) = through_proxy(&uri, proxy.port);
    let table = "t_record_outage";
    drop_table(&uri, table);
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("work");
    let extra = format!(
        "record:\n  rest_url: http://127.0.0.1:{}\n  ws_url: ws://127.0.0.1:{}\n  output: database\n  \
         db_retry_seconds: 1\n  request_timeout_seconds: 2\n  max_backoff_seconds: 1\n  \
         status_interval_seconds: 1\n",
        server.rest_port, server.ws_port
    );
    let config = common::config(&db_yaml(&workdir, &proxied, table, &extra));
    let spill_file = workdir.join("record/spill/spill.jsonl");

    // The outage, driven by what the recorder does: once rows arrive, cut the proxy until
    // the recorder has spilled, then restore it; once the spill is drained, the server
    // terminates the recorder's session in the middle of an INSERT (an error sent by
    // PostgreSQL, not a dropped socket).
    let events = std::thread::scope(|scope| {
        let control = scope.spawn(|| {
            let rows = || {
                let mut c = postgres::Client::connect(&uri, postgres::NoTls).unwrap();
                c.query_opt(&format!("SELECT count(*) FROM {table}"), &[])
                    .ok()
                    .flatten()
                    .map_or(0, |r| r.get::<_, i64>(0))
            };
            wait_for(30, "the first rows", || rows() > 0);
            proxy.cut();
            wait_for(30, "the spill file", || {
                spill_file.metadata().is_ok_and(|m| m.len() > 0)
            });
            std::thread::sleep(Duration::from_millis(1500)); // more samples spill
            let spilled_rows = rows();
            proxy.restore();
            wait_for(30, "the spill file to be drained", || !spill_file.exists());
            // Hold the table locked so the recorder's next INSERT waits, then terminate its
            // backend: the error reaches the INSERT itself (SQLSTATE 57P01, admin_shutdown).
            let mut c = postgres::Client::connect(&uri, postgres::NoTls).unwrap();
            let mut locker = postgres::Client::connect(&uri, postgres::NoTls).unwrap();
            let mut lock = locker.transaction().unwrap();
            lock.batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                .unwrap();
            let ports: Vec<i32> = proxy
                .upstream_ports
                .lock()
                .unwrap()
                .iter()
                .map(|&p| i32::from(p))
                .collect();
            let waiting = "FROM pg_stat_activity WHERE client_addr = '127.0.0.1' \
                           AND client_port = ANY($1) AND wait_event_type = 'Lock'";
            wait_for(30, "the recorder's INSERT to wait on the lock", || {
                let n: i64 = c
                    .query_one(&format!("SELECT count(*) {waiting}"), &[&ports])
                    .unwrap()
                    .get(0);
                n > 0
            });
            let terminated: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) {waiting}) t"),
                    &[&ports],
                )
                .unwrap()
                .get(0);
            lock.rollback().unwrap();
            (spilled_rows, terminated)
        });
        let req = RecordRequest {
            duration: Some(Duration::from_secs(18)),
            symbols: vec![],
            mode: RecordMode::Websocket,
        };
        let summary = record::record(&config, &req).unwrap();
        (summary, control.join().unwrap())
    });
    let (s, (rows_during_outage, terminated)) = events;
    eprintln!("{s:?}");
    assert_eq!(
        terminated, 1,
        "the recorder's session was open and terminated"
    );
    assert!(s.database_outages >= 2, "cut + terminated session: {s:?}");
    assert!(s.snapshots_spilled > 0, "{s:?}");
    assert!(!s.spill_pending && !spill_file.exists(), "{s:?}");
    assert!(
        rows_during_outage > 0,
        "recording started before the outage"
    );

    // Every sampled snapshot x level is in the table exactly once.
    let sampled: u64 = s.per_symbol.values().map(|x| x.snapshots).sum();
    assert!(sampled >= 2 * 10, "{s:?}");
    assert_eq!(s.snapshots_written, sampled, "{s:?}");
    let mut c = postgres::Client::connect(&uri, postgres::NoTls).unwrap();
    let total: i64 = c
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(total as u64, sampled * 10);
    let mut books: BTreeMap<(String, i64), (Levels, Levels)> = BTreeMap::new();
    for row in c
        .query(
            &format!(
                "SELECT symbol, (extract(epoch FROM ts) * 1000)::bigint, level, bid_price, bid_qty, \
                 ask_price, ask_qty FROM {table} ORDER BY symbol, ts, level"
            ),
            &[],
        )
        .unwrap()
    {
        let key = (row.get::<_, String>(0), row.get::<_, i64>(1));
        let level: i32 = row.get(2);
        let b = books.entry(key).or_default();
        assert_eq!(b.0.len() as i32 + 1, level, "levels 1..10 once each");
        b.0.push([row.get(3), row.get(4)]);
        b.1.push([row.get(5), row.get(6)]);
    }
    for sym in symbols {
        let ts: Vec<i64> = books.keys().filter(|k| k.0 == sym).map(|k| k.1).collect();
        let st = &s.per_symbol[sym];
        assert_eq!(ts.len() as u64, st.snapshots, "{sym}");
        // No hole across the outage: once synced, every boundary has its snapshot.
        assert!(
            ts.windows(2).all(|w| w[1] - w[0] == 1000),
            "{sym}: boundaries missing in {ts:?}"
        );
        assert_eq!((st.gaps, st.resyncs), (0, 1), "{sym}: {st:?}");
    }
    for ((sym, _), (bids, asks)) in &books {
        assert_eq!((bids.len(), asks.len()), (10, 10));
        assert!(
            truth.history[sym]
                .iter()
                .any(|h| (&h.1, &h.2) == (bids, asks)),
            "{sym}: a stored book the capture never had"
        );
    }
    drop_table(&uri, table);
}
