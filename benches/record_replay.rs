//! The recorder's figure (issue 10): 20 symbols' diff-depth streams, 10 minutes of market time,
//! replayed at 10x real time by a local Binance (REST depth + combined WebSocket stream) to
//! `binance-ml record --mode websocket` (release build, pinned to one core), 20 levels at a 1 s
//! cadence; reports wall and CPU time, peak RSS, missing ticks and whether it kept up.
//!
//! The streams are the real spot captures (`../shared/data/binance_raw/spot`, BTCUSDT and
//! ETHUSDT depth@100ms): each is replayed under 10 symbol names (`BTC00USDT`..`BTC09USDT`,
//! `ETH00USDT`..), replica k starting k x 3 s later in the capture, so the 20 books differ and
//! their updates do not arrive in lock step. Every stream keeps its real update ids, so the
//! recorder runs Binance's full local-book procedure on each.
//!
//! ```text
//! bash benches/record_replay.sh            # builds, runs CSV (and PostgreSQL if configured)
//! ```
//!
//! Without `--bench` (as under `cargo test --all-targets`) it returns at once. Settings come
//! from the environment: `RECORD_REPLAY_BIN` (the binance-ml binary), `RECORD_REPLAY_OUT`
//! (work folder), `RECORD_REPLAY_OUTPUT` (`csv` or `database`; the database URI is read by the
//! recorder from `$BINANCE_ML_TEST_DATABASE_URI` through config interpolation, never printed),
//! `RECORD_REPLAY_SYMBOLS` (20), `RECORD_REPLAY_MINUTES` (10), `RECORD_REPLAY_SPEED` (10),
//! `RECORD_REPLAY_DEPTH` (20), `RECORD_REPLAY_CPU` (`0`: taskset core, empty: no pinning).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use binance_ml::config::RecordMarket;
use binance_ml::record::book::DepthSnapshot;
use binance_ml::record::engine::Engine;
use tungstenite::Message;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// One source capture: its depth messages (receive ns, JSON) after the REST snapshot, and
/// the lines up to the snapshot that start a book.
struct Source {
    base: String,
    preamble: Vec<(bool, String)>,
    events: Vec<(i64, String)>,
}

fn load(dir: &Path, base: &str) -> Source {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&base.to_lowercase())
        })
        .collect();
    files.sort();
    let mut lines: Vec<(i64, bool, String)> = Vec::new();
    for f in files {
        let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(&f).unwrap());
        for line in BufReader::new(gz).lines() {
            let line = line.unwrap();
            let (ts, json) = line.split_once(' ').unwrap();
            let snapshot = json.starts_with("{\"lastUpdateId\"");
            if snapshot || json.contains("@depth@100ms") {
                lines.push((ts.parse().unwrap(), snapshot, json.to_owned()));
            }
        }
    }
    lines.sort_by_key(|l| l.0);
    let start = lines.iter().rposition(|l| l.1).expect("a snapshot") + 1;
    let events = lines.split_off(start);
    Source {
        base: base.to_owned(),
        preamble: lines.into_iter().map(|(_, s, t)| (s, t)).collect(),
        events: events.into_iter().map(|(t, _, j)| (t, j)).collect(),
    }
}

/// One replayed symbol: a source stream from `first` on, under another name.
struct Replica {
    name: String,
    source: usize,
    first: usize,
    /// The server's book and how many of this replica's events it has applied / sent.
    engine: Engine,
    applied: usize,
    sent: usize,
}

impl Replica {
    fn rename(&self, sources: &[Source], text: &str) -> String {
        let base = &sources[self.source].base;
        text.replacen(
            &format!("\"{}@", base.to_lowercase()),
            &format!("\"{}@", self.name.to_lowercase()),
            1,
        )
        .replacen(
            &format!("\"s\":\"{base}\""),
            &format!("\"s\":\"{}\"", self.name),
            1,
        )
    }
}

struct State {
    sources: Vec<Source>,
    replicas: Vec<Replica>,
    /// (market offset ns, replica, event index in its source), in time order.
    timeline: Vec<(i64, usize, usize)>,
    position: usize,
    started: Option<Instant>,
    max_lag: Duration,
    finished_lag: Option<Duration>,
    snapshot_requests: usize,
    connections: usize,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let bin = PathBuf::from(env_or("RECORD_REPLAY_BIN", "target/release/binance-ml"));
    let out = PathBuf::from(env_or("RECORD_REPLAY_OUT", "target/record_replay"));
    let output = env_or("RECORD_REPLAY_OUTPUT", "csv");
    let n_symbols: usize = env_or("RECORD_REPLAY_SYMBOLS", "20").parse().unwrap();
    let minutes: f64 = env_or("RECORD_REPLAY_MINUTES", "10").parse().unwrap();
    let speed: f64 = env_or("RECORD_REPLAY_SPEED", "10").parse().unwrap();
    let depth: usize = env_or("RECORD_REPLAY_DEPTH", "20").parse().unwrap();
    let cpu = env_or("RECORD_REPLAY_CPU", "0");
    let shared = std::env::var_os("BINANCE_ML_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();

    // The streams.
    let spot = shared.join("binance_raw/spot");
    let sources = vec![load(&spot, "BTCUSDT"), load(&spot, "ETHUSDT")];
    let market_ns = (minutes * 60e9) as i64;
    let per_source = n_symbols.div_ceil(sources.len());
    let mut replicas = Vec::new();
    let mut timeline = Vec::new();
    for k in 0..per_source {
        for (j, src) in sources.iter().enumerate() {
            if replicas.len() == n_symbols {
                break;
            }
            let t0 = src.events[0].0 + k as i64 * 3_000_000_000;
            let first = src.events.partition_point(|e| e.0 < t0);
            let span = src.events.last().unwrap().0 - src.events[first].0;
            assert!(
                span >= market_ns,
                "the {} capture holds {:.0} s from replica {k}'s start, {minutes} min needed",
                src.base,
                span as f64 / 1e9
            );
            let name = format!("{}{k:02}USDT", &src.base[..3]);
            let mut engine = Engine::new(RecordMarket::Spot, std::slice::from_ref(&name), 1, 1000);
            let r = Replica {
                name,
                source: j,
                first,
                engine: Engine::new(RecordMarket::Spot, &[], 1, 1),
                applied: 0,
                sent: 0,
            };
            for (snapshot, text) in &src.preamble {
                if *snapshot {
                    engine
                        .on_snapshot(&r.name, &DepthSnapshot::parse(text).unwrap())
                        .unwrap();
                } else {
                    engine.on_message(0, &r.rename(&sources, text)).unwrap();
                }
            }
            for (_, text) in &src.events[..first] {
                engine.on_message(0, &r.rename(&sources, text)).unwrap();
            }
            let start = src.events[first].0;
            let idx = replicas.len();
            for (i, e) in src.events.iter().enumerate().skip(first) {
                if e.0 - start >= market_ns {
                    break;
                }
                timeline.push((e.0 - start, idx, i));
            }
            replicas.push(Replica { engine, ..r });
        }
    }
    timeline.sort();
    let bytes: usize = timeline
        .iter()
        .map(|&(_, r, i)| sources[replicas[r].source].events[i].1.len())
        .sum();
    let names: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
    eprintln!(
        "{} symbols, {} depth events ({:.1} MB) over {minutes} min of market time, replayed at {speed}x",
        names.len(),
        timeline.len(),
        bytes as f64 / 1e6
    );

    let state = Arc::new(Mutex::new(State {
        sources,
        replicas,
        timeline,
        position: 0,
        started: None,
        max_lag: Duration::ZERO,
        finished_lag: None,
        snapshot_requests: 0,
        connections: 0,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let rest_port = listen(&state, &stop, move |conn, state, _| {
        handle_rest(conn, state)
    });
    let ws_port = listen(&state, &stop, move |conn, state, stop| {
        handle_stream(conn, state, stop, speed)
    });

    // The recorder.
    let database = output == "database";
    let table = "record_replay_bench";
    let source = if database {
        format!(
            "  source_type: database\n  connection:\n    database_uri: \"${{BINANCE_ML_TEST_DATABASE_URI}}\"\n    \
             table_name: {table}\n"
        )
    } else {
        "  source_type: file\n  files:\n    paths: [unused.csv]\n".to_owned()
    };
    if database {
        let uri = std::env::var("BINANCE_ML_TEST_DATABASE_URI")
            .expect("RECORD_REPLAY_OUTPUT=database needs BINANCE_ML_TEST_DATABASE_URI");
        let mut c = postgres::Client::connect(&uri, postgres::NoTls).unwrap();
        c.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .unwrap();
    }
    let yaml = format!(
        "workdir: {work:?}\ndata:\n{source}  asset_pairs:\n    target_asset: {t}\n    correlated_assets: []\n  \
         time_range:\n    start_date: \"2024-08-08\"\n    end_date: \"2024-08-09\"\n    cadence_seconds: 1\n  \
         order_book:\n    depth_levels: {depth}\nrecord:\n  rest_url: http://127.0.0.1:{rest_port}\n  \
         ws_url: ws://127.0.0.1:{ws_port}\n  output: {output}\n  csv_dir: {csv:?}\n  status_interval_seconds: 10\n  \
         request_timeout_seconds: 2\n",
        work = out.join("work"),
        t = names[0],
        csv = out.join("csv"),
    );
    let config = out.join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let wall_s = minutes * 60.0 / speed;
    // The stream starts when the recorder connects (a few ms after it starts), so the
    // recorder stops with the replay's last events; an idle stream would only delay its exit
    // by a read timeout (`request_timeout_seconds`).
    let duration = format!("{}s", wall_s.ceil() as u64);
    let time_file = out.join("time.txt");
    let mut cmd = if cpu.is_empty() {
        Command::new("/usr/bin/time")
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", &cpu, "/usr/bin/time"]);
        c
    };
    cmd.arg("-v")
        .arg("-o")
        .arg(&time_file)
        .arg(&bin)
        .args(["record", "--mode", "websocket", "--duration", &duration])
        .arg("--symbols")
        .arg(names.join(","))
        .arg("--config")
        .arg(&config)
        .args(["--json", "--no-color"])
        .env_remove("BINANCE_ML_CONFIG")
        .env("RUST_LOG", "warn");
    let result = cmd.output().expect("runs the recorder");
    stop.store(true, Ordering::SeqCst);
    for port in [rest_port, ws_port] {
        let _ = TcpStream::connect(("127.0.0.1", port)); // wakes the accept loop
    }
    std::fs::write(out.join("recorder.stderr"), &result.stderr).unwrap();
    assert!(
        result.status.success(),
        "the recorder failed ({}); see {}",
        result.status,
        out.join("recorder.stderr").display()
    );
    let summary: serde_json::Value = serde_json::from_slice(
        result
            .stdout
            .split(|&b| b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .expect("a JSON summary"),
    )
    .unwrap();
    let time = std::fs::read_to_string(&time_file).unwrap();
    let field = |name: &str| -> String {
        time.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name:?} in {time}"))
    };
    let user: f64 = field("User time (seconds):").parse().unwrap();
    let sys: f64 = field("System time (seconds):").parse().unwrap();
    let rss_kib: f64 = field("Maximum resident set size (kbytes):")
        .parse()
        .unwrap();
    let elapsed = field("Elapsed (wall clock) time (h:mm:ss or m:ss):");
    let wall: f64 = elapsed
        .split(':')
        .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap());

    let s = state.lock().unwrap();
    let sent = s.position;
    let total = s.timeline.len();
    let written = summary["snapshots_written"].as_u64().unwrap();
    let missing = summary["ticks_missing"].as_u64().unwrap();
    let gaps = summary["gaps"].as_u64().unwrap();
    let resyncs = summary["resyncs"].as_u64().unwrap();
    let mut rows = String::new();
    if database {
        let uri = std::env::var("BINANCE_ML_TEST_DATABASE_URI").unwrap();
        let mut c = postgres::Client::connect(&uri, postgres::NoTls).unwrap();
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0);
        rows = format!(", {n} rows in {table}");
        c.batch_execute(&format!("DROP TABLE {table}")).unwrap();
    }
    let cpu_s = user + sys;
    let lag = s.finished_lag.unwrap_or(Duration::MAX);
    let kept_up = sent == total && lag < Duration::from_secs(1) && gaps == 0;
    println!(
        "output {output}{}: {} symbols x {depth} levels, {minutes} min of market time at {speed}x \
         ({} events, {:.1} MB, {:.0} events/s)",
        if cpu.is_empty() {
            String::new()
        } else {
            format!(", recorder on core {cpu}")
        },
        names.len(),
        total,
        bytes as f64 / 1e6,
        total as f64 / (minutes * 60.0 / speed)
    );
    println!(
        "| output | wall | CPU user+sys | CPU / wall | peak RSS | snapshots written | ticks missing | gaps | resyncs | stream lag (max / at end) | kept up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {output} | {wall:.1} s | {cpu_s:.2} s ({user:.2} + {sys:.2}) | {:.1} % | {:.1} MiB | {written}{rows} | {missing} | {gaps} | {resyncs} | {} ms / {} ms | {} |",
        100.0 * cpu_s / wall,
        rss_kib / 1024.0,
        s.max_lag.as_millis(),
        lag.as_millis().min(u128::from(u32::MAX)),
        if kept_up { "yes" } else { "NO" }
    );
    eprintln!(
        "{} stream connection(s), {} snapshot request(s), {sent}/{total} events sent",
        s.connections, s.snapshot_requests
    );
}

/// Serves each connection of a new local port on its own thread until `stop`.
fn listen(
    state: &Arc<Mutex<State>>,
    stop: &Arc<AtomicBool>,
    handle: impl Fn(TcpStream, &Mutex<State>, &AtomicBool) + Copy + Send + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (state, stop) = (state.clone(), stop.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || handle(conn, &state, &stop));
        }
    });
    port
}

/// REST depth snapshots of the replicas' current books.
fn handle_rest(mut conn: TcpStream, state: &Mutex<State>) {
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
        .unwrap_or("")
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let mut s = state.lock().unwrap();
    s.snapshot_requests += 1;
    let State {
        sources, replicas, ..
    } = &mut *s;
    let Some(r) = replicas.iter_mut().find(|r| r.name == symbol) else {
        let _ = write!(
            conn,
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    // Catch the server's book up with what the stream has sent.
    while r.applied < r.sent {
        let text = r.rename(sources, &sources[r.source].events[r.first + r.applied].1);
        r.engine.on_message(0, &text).unwrap();
        r.applied += 1;
    }
    let (bids, asks, last) = r.engine.top(&symbol, 1000).unwrap();
    drop(s);
    let side = |v: &Vec<[f64; 2]>| {
        v.iter()
            .map(|[p, q]| format!("[\"{p}\",\"{q}\"]"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let body = format!(
        "{{\"lastUpdateId\":{last},\"bids\":[{}],\"asks\":[{}]}}",
        side(&bids),
        side(&asks)
    );
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-MBX-USED-WEIGHT-1M: 250\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The WebSocket upgrade, then the combined stream.
fn handle_stream(conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool, speed: f64) {
    let Ok(mut ws) = tungstenite::accept(conn) else {
        return;
    };
    let start = {
        let mut s = state.lock().unwrap();
        s.connections += 1;
        *s.started.get_or_insert_with(Instant::now)
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // Everything due now, in one flush.
        let now = Instant::now();
        let mut batch_due = None;
        let mut texts = Vec::new();
        let next_due = {
            let mut s = state.lock().unwrap();
            loop {
                let Some(&(t, r, i)) = s.timeline.get(s.position) else {
                    break None;
                };
                let due = start + Duration::from_nanos((t as f64 / speed) as u64);
                if due > now {
                    break Some(due);
                }
                batch_due.get_or_insert(due);
                let State {
                    sources, replicas, ..
                } = &mut *s;
                texts.push(replicas[r].rename(sources, &sources[replicas[r].source].events[i].1));
                replicas[r].sent += 1;
                s.position += 1;
            }
        };
        if !texts.is_empty() {
            let written = texts
                .into_iter()
                .try_for_each(|t| ws.write(Message::text(t)))
                .and_then(|()| ws.flush());
            if written.is_err() {
                return;
            }
            // How late the oldest of these events reached the recorder's socket.
            let lag = Instant::now().saturating_duration_since(batch_due.unwrap());
            let mut s = state.lock().unwrap();
            s.max_lag = s.max_lag.max(lag);
            if next_due.is_none() {
                s.finished_lag = Some(lag);
            }
        }
        match next_due {
            Some(due) => std::thread::sleep(due.saturating_duration_since(Instant::now())),
            // The replay is over: keep the connection open until the recorder stops.
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
