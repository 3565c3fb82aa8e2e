//! Writers of sampled books: tall rows into PostgreSQL/GreptimeDB with batched, idempotent
//! multi-row INSERTs, or rotating wide CSV files (the layout `fetch` reads); plus the spill
//! file that keeps samples while the database is down, and the writer thread.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use chrono::DateTime;
use serde::Serialize;

use super::RecordError;
use super::engine::BookSample;
use crate::config::{ColumnsConfig, DataConfig};
use crate::data::DataError;
use crate::data::sources::postgres as pg;

/// Why a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// The destination is unreachable for now: keep the rows (spill) and retry later.
    Down(String),
    /// The destination refuses the rows (schema, permissions, disk): stop.
    Fatal(RecordError),
}

/// A destination of sampled books.
pub trait Sink: Send {
    /// Writes the samples (all or nothing as far as the caller is concerned: a retry after
    /// `Down` must not duplicate rows).
    fn write(&mut self, samples: &[BookSample]) -> Result<(), WriteError>;
    /// Re-establishes the connection after `Down`.
    fn reconnect(&mut self) -> Result<(), WriteError>;
    /// Flushes buffered bytes (CSV) at shutdown.
    fn finish(&mut self) -> Result<(), WriteError>;
    /// Where the rows go, for logs and the summary (never a password).
    fn describe(&self) -> String;
}

/// A timestamp literal (UTC, milliseconds) as the reader writes them.
fn ts_literal(ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(ms).unwrap_or_default();
    format!("'{}'", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

fn float_literal(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:?}"),
        _ => "NULL".into(),
    }
}

/// Whether an error the server sent means the session (not the rows) is gone: connection
/// exceptions (class 08), the server shutting down or restarting, or terminating this backend
/// (`pg_terminate_backend`, class 57P), too many connections. The client may not have seen the
/// socket close yet when the query's error arrives, so `is_closed()` alone misses these; treating
/// them as fatal would stop an unattended recorder on a database restart.
pub fn lost_connection(code: &postgres::error::SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") || c.starts_with("57P") || c == "53300"
}

/// The tall table in PostgreSQL (or GreptimeDB over the wire protocol).
pub struct PgSink {
    data: DataConfig,
    client: Option<postgres::Client>,
    target: String,
    batch_id_seconds: i64,
    batch_rows: usize,
    depth: usize,
}

impl PgSink {
    /// Connects (with `data.connection`'s retries) and, with `create_table`, creates the
    /// table with a primary key on (ts, symbol, level), which the idempotent INSERT needs.
    pub fn open(
        data: &DataConfig,
        create_table: bool,
        batch_id_seconds: u64,
        batch_rows: usize,
        depth: usize,
    ) -> Result<Self, RecordError> {
        let (mut client, target) = pg::connect(data).map_err(RecordError::Database)?;
        if create_table {
            let c = &data.columns;
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {t} ({ts} TIMESTAMP(3) NOT NULL, {b} BIGINT, \
                 {s} TEXT NOT NULL, {l} INT NOT NULL, {bp} DOUBLE PRECISION, {bq} DOUBLE PRECISION, \
                 {ap} DOUBLE PRECISION, {aq} DOUBLE PRECISION, PRIMARY KEY ({ts}, {s}, {l}))",
                t = data.connection.table_name,
                ts = c.ts,
                b = c.batch_id,
                s = c.symbol,
                l = c.level,
                bp = c.bid_price,
                bq = c.bid_qty,
                ap = c.ask_price,
                aq = c.ask_qty,
            );
            client.batch_execute(&sql).map_err(|e| {
                RecordError::Database(DataError::Query {
                    context: format!(
                        "creating table {} (record.create_table)",
                        data.connection.table_name
                    ),
                    message: e.to_string(),
                })
            })?;
        }
        Ok(Self {
            data: data.clone(),
            client: Some(client),
            target,
            batch_id_seconds: batch_id_seconds.max(1) as i64,
            batch_rows: batch_rows.max(1),
            depth,
        })
    }

    /// The INSERT statements for `samples`, at most `batch_rows` rows each.
    pub fn insert_statements(
        samples: &[BookSample],
        table: &str,
        c: &ColumnsConfig,
        batch_id_seconds: i64,
        batch_rows: usize,
        depth: usize,
    ) -> Vec<String> {
        let head = format!(
            "INSERT INTO {table} ({}, {}, {}, {}, {}, {}, {}, {}) VALUES ",
            c.ts, c.batch_id, c.symbol, c.level, c.bid_price, c.bid_qty, c.ask_price, c.ask_qty
        );
        let tail = format!(
            " ON CONFLICT ({}, {}, {}) DO NOTHING",
            c.ts, c.symbol, c.level
        );
        let mut statements = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for s in samples {
            // Symbols come from the strict Symbol pattern; assert it before inlining.
            debug_assert!(s.symbol.bytes().all(|b| b.is_ascii_alphanumeric()));
            let levels = s.bids.len().max(s.asks.len()).min(depth);
            for level in 0..levels {
                let bid = s.bids.get(level);
                let ask = s.asks.get(level);
                values.push(format!(
                    "({}, {}, '{}', {}, {}, {}, {}, {})",
                    ts_literal(s.ts_ms),
                    s.ts_ms.div_euclid(1000).div_euclid(batch_id_seconds),
                    s.symbol,
                    level + 1,
                    float_literal(bid.map(|l| l[0])),
                    float_literal(bid.map(|l| l[1])),
                    float_literal(ask.map(|l| l[0])),
                    float_literal(ask.map(|l| l[1])),
                ));
                if values.len() >= batch_rows {
                    statements.push(format!("{head}{}{tail}", values.join(", ")));
                    values.clear();
                }
            }
        }
        if !values.is_empty() {
            statements.push(format!("{head}{}{tail}", values.join(", ")));
        }
        statements
    }
}

impl Sink for PgSink {
    fn write(&mut self, samples: &[BookSample]) -> Result<(), WriteError> {
        let Some(client) = self.client.as_mut() else {
            return Err(WriteError::Down("not connected".into()));
        };
        let statements = Self::insert_statements(
            samples,
            &self.data.connection.table_name,
            &self.data.columns,
            self.batch_id_seconds,
            self.batch_rows,
            self.depth,
        );
        for sql in statements {
            if let Err(e) = client.batch_execute(&sql) {
                let lost =
                    client.is_closed() || e.as_db_error().is_none_or(|d| lost_connection(d.code()));
                let message = format!(
                    "insert into {} at {}: {e}",
                    self.data.connection.table_name, self.target
                );
                if lost {
                    self.client = None;
                    return Err(WriteError::Down(message));
                }
                return Err(WriteError::Fatal(RecordError::Database(DataError::Query {
                    context: format!(
                        "inserting into {} (data.connection.table_name; the table needs a unique key on ts, symbol, level)",
                        self.data.connection.table_name
                    ),
                    // `Display` of a server error is only "db error": give its text and code.
                    message: e.as_db_error().map_or_else(
                        || e.to_string(),
                        |d| format!("{} (SQLSTATE {})", d.message(), d.code().code()),
                    ),
                })));
            }
        }
        Ok(())
    }

    fn reconnect(&mut self) -> Result<(), WriteError> {
        // One attempt per call: the writer paces the retries itself.
        let mut data = self.data.clone();
        data.connection.max_retries = 1;
        match pg::connect(&data) {
            Ok((client, _)) => {
                self.client = Some(client);
                Ok(())
            }
            Err(e @ DataError::Auth { .. }) => Err(WriteError::Fatal(RecordError::Database(e))),
            Err(e) => Err(WriteError::Down(e.to_string())),
        }
    }

    fn finish(&mut self) -> Result<(), WriteError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "table {} at {}",
            self.data.connection.table_name, self.target
        )
    }
}

/// Rotating wide CSV files `book_<UTC start>.csv[.gz]`, one per `rotate_seconds` bucket.
pub struct CsvSink {
    dir: PathBuf,
    gzip: bool,
    rotate_ms: i64,
    depth: usize,
    current: Option<(i64, Box<dyn Write + Send>)>,
    files: Vec<PathBuf>,
}

impl CsvSink {
    /// Creates `dir` if needed.
    pub fn open(
        dir: &Path,
        gzip: bool,
        rotate_seconds: u64,
        depth: usize,
    ) -> Result<Self, RecordError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            RecordError::io(format!("cannot create record.csv_dir {}", dir.display()), e)
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            gzip,
            rotate_ms: rotate_seconds.max(1) as i64 * 1000,
            depth,
            current: None,
            files: Vec::new(),
        })
    }

    /// The files written so far.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The wide header for `depth` levels.
    pub fn header(depth: usize) -> String {
        let mut h = vec!["ts_s".to_owned(), "symbol".to_owned()];
        for side in ["bid", "ask"] {
            for k in 1..=depth {
                h.push(format!("{side}_px_{k}"));
                h.push(format!("{side}_qty_{k}"));
            }
        }
        h.join(",")
    }

    fn writer_for(&mut self, ts_ms: i64) -> Result<&mut Box<dyn Write + Send>, RecordError> {
        let bucket = ts_ms.div_euclid(self.rotate_ms) * self.rotate_ms;
        if self.current.as_ref().is_none_or(|(b, _)| *b != bucket) {
            if let Some((_, mut w)) = self.current.take() {
                w.flush()
                    .map_err(|e| RecordError::io("flushing a CSV file", e))?;
            }
            let stamp = DateTime::from_timestamp_millis(bucket)
                .unwrap_or_default()
                .format("%Y%m%dT%H%M%SZ");
            let name = format!("book_{stamp}.csv{}", if self.gzip { ".gz" } else { "" });
            let path = self.dir.join(name);
            // A restarted recorder appends (gzip: a new member, which readers concatenate).
            let existed = path.metadata().is_ok_and(|m| m.len() > 0);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| RecordError::io(format!("cannot open {}", path.display()), e))?;
            let mut w: Box<dyn Write + Send> = if self.gzip {
                Box::new(flate2::write::GzEncoder::new(
                    BufWriter::new(file),
                    flate2::Compression::default(),
                ))
            } else {
                Box::new(BufWriter::new(file))
            };
            if !existed {
                writeln!(w, "{}", Self::header(self.depth))
                    .map_err(|e| RecordError::io(format!("writing {}", path.display()), e))?;
            }
            self.files.push(path);
            self.current = Some((bucket, w));
        }
        Ok(&mut self.current.as_mut().expect("just set").1)
    }
}

impl Sink for CsvSink {
    fn write(&mut self, samples: &[BookSample]) -> Result<(), WriteError> {
        for s in samples {
            let depth = self.depth;
            let mut line = format!("{},{}", s.ts_ms.div_euclid(1000), s.symbol);
            for side in [&s.bids, &s.asks] {
                for k in 0..depth {
                    match side.get(k) {
                        Some([p, q]) => line.push_str(&format!(",{p},{q}")),
                        None => line.push_str(",,"),
                    }
                }
            }
            let w = self.writer_for(s.ts_ms).map_err(WriteError::Fatal)?;
            writeln!(w, "{line}")
                .map_err(|e| WriteError::Fatal(RecordError::io("writing a CSV row", e)))?;
        }
        Ok(())
    }

    fn reconnect(&mut self) -> Result<(), WriteError> {
        Ok(())
    }

    fn finish(&mut self) -> Result<(), WriteError> {
        if let Some((_, mut w)) = self.current.take() {
            w.flush()
                .map_err(|e| WriteError::Fatal(RecordError::io("flushing a CSV file", e)))?;
            // Dropping a GzEncoder writes the gzip trailer.
            drop(w);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("CSV files in {}", self.dir.display())
    }
}

/// Samples kept on disk (JSON lines) while the database is down.
pub struct Spill {
    path: PathBuf,
}

impl Spill {
    /// The spill file under `dir` (created on first use).
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("spill.jsonl"),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Samples waiting in the file.
    pub fn pending(&self) -> bool {
        self.path.metadata().is_ok_and(|m| m.len() > 0)
    }

    /// Appends and syncs, so a crash loses nothing that was acknowledged.
    pub fn append(&self, samples: &[BookSample]) -> Result<(), RecordError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| RecordError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| RecordError::io(format!("cannot open {}", self.path.display()), e))?;
        let mut w = BufWriter::new(file);
        for s in samples {
            serde_json::to_writer(&mut w, s).expect("samples serialise");
            w.write_all(b"\n")
                .map_err(|e| RecordError::io(format!("writing {}", self.path.display()), e))?;
        }
        let file = w.into_inner().map_err(|e| {
            RecordError::io(format!("writing {}", self.path.display()), e.into_error())
        })?;
        file.sync_all()
            .map_err(|e| RecordError::io(format!("syncing {}", self.path.display()), e))
    }

    /// Writes the file's samples into `sink` in chunks and removes it. The INSERTs are
    /// idempotent, so a drain interrupted half way is simply repeated.
    pub fn drain(&self, sink: &mut dyn Sink, chunk: usize) -> Result<u64, WriteError> {
        if !self.pending() {
            return Ok(0);
        }
        let file = File::open(&self.path).map_err(|e| {
            WriteError::Fatal(RecordError::io(
                format!("cannot open {}", self.path.display()),
                e,
            ))
        })?;
        let mut batch = Vec::with_capacity(chunk);
        let mut n = 0;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| {
                WriteError::Fatal(RecordError::io(
                    format!("reading {}", self.path.display()),
                    e,
                ))
            })?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<BookSample>(&line) {
                Ok(s) => batch.push(s),
                // A torn last line (crash mid-append) is skipped, not fatal.
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), line = i + 1, "skipping unreadable spill line: {e}")
                }
            }
            if batch.len() >= chunk {
                sink.write(&batch)?;
                n += batch.len() as u64;
                batch.clear();
            }
        }
        sink.write(&batch)?;
        n += batch.len() as u64;
        std::fs::remove_file(&self.path).map_err(|e| {
            WriteError::Fatal(RecordError::io(
                format!("removing {}", self.path.display()),
                e,
            ))
        })?;
        Ok(n)
    }
}

/// What the writer thread did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterReport {
    /// Samples written to the destination (including drained spill).
    pub samples_written: u64,
    /// Samples that went through the spill file.
    pub samples_spilled: u64,
    /// Times the destination went down.
    pub outages: u64,
    /// Samples still in the spill file at exit (drained by the next run).
    pub spill_pending: bool,
    /// The spill file.
    pub spill_file: PathBuf,
}

/// Writer settings.
pub struct WriterSettings {
    /// Samples per write.
    pub batch_samples: usize,
    /// Longest time a sample waits before being written.
    pub flush_interval: Duration,
    /// Time between reconnect attempts while down.
    pub retry_interval: Duration,
}

/// Consumes samples until the channel closes; spills while the sink is down and drains the
/// spill (older samples first) when it is back.
pub fn run_writer(
    mut sink: Box<dyn Sink>,
    rx: Receiver<Vec<BookSample>>,
    spill: Spill,
    settings: WriterSettings,
) -> Result<WriterReport, RecordError> {
    let mut report = WriterReport {
        spill_file: spill.path().to_owned(),
        ..WriterReport::default()
    };
    let mut down = spill.pending(); // a previous run left samples: drain them first
    let mut next_retry = Instant::now();
    let mut pending: Vec<BookSample> = Vec::new();
    let mut last_flush = Instant::now();
    let mut open = true;
    while open || !pending.is_empty() {
        match rx.recv_timeout(settings.flush_interval.min(Duration::from_millis(200))) {
            Ok(batch) => pending.extend(batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let due = pending.len() >= settings.batch_samples
            || last_flush.elapsed() >= settings.flush_interval
            || !open;
        if down && Instant::now() >= next_retry {
            next_retry = Instant::now() + settings.retry_interval;
            match sink
                .reconnect()
                .and_then(|()| spill.drain(&mut *sink, settings.batch_samples))
            {
                Ok(n) => {
                    report.samples_written += n;
                    if n > 0 {
                        tracing::info!(samples = n, sink = %sink.describe(), "destination back; spill file drained");
                    }
                    down = false;
                }
                Err(WriteError::Down(m)) => tracing::warn!("destination still down: {m}"),
                Err(WriteError::Fatal(e)) => return Err(e),
            }
        }
        if !due || pending.is_empty() {
            continue;
        }
        last_flush = Instant::now();
        if !down {
            match sink.write(&pending) {
                Ok(()) => {
                    report.samples_written += pending.len() as u64;
                    pending.clear();
                    continue;
                }
                Err(WriteError::Down(m)) => {
                    report.outages += 1;
                    tracing::error!(spill = %spill.path().display(), "cannot write to {}: {m}; spilling to disk", sink.describe());
                    down = true;
                    next_retry = Instant::now() + settings.retry_interval;
                }
                Err(WriteError::Fatal(e)) => return Err(e),
            }
        }
        spill.append(&pending)?;
        report.samples_spilled += pending.len() as u64;
        pending.clear();
    }
    if down {
        // One last try so a short outage does not leave a spill file behind.
        if let Ok(n) = sink
            .reconnect()
            .and_then(|()| spill.drain(&mut *sink, settings.batch_samples))
        {
            report.samples_written += n;
        }
    }
    if let Err(WriteError::Fatal(e)) = sink.finish() {
        return Err(e);
    }
    report.spill_pending = spill.pending();
    if report.spill_pending {
        tracing::error!(spill = %spill.path().display(), "the destination is still down; samples stay in the spill file and are written by the next `record` run");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_are_batched_idempotent_and_null_for_missing_levels() {
        let s = BookSample {
            ts_ms: 1_723_161_255_000,
            symbol: "BTCUSDT".into(),
            bids: vec![[61824.0, 0.2566], [61822.04, 9e-5]],
            asks: vec![[61824.01, 5.5308]],
        };
        let sql = PgSink::insert_statements(&[s], "t", &ColumnsConfig::default(), 600, 1, 10);
        assert_eq!(sql.len(), 2);
        assert_eq!(
            sql[0],
            "INSERT INTO t (ts, batch_id, symbol, level, bid_price, bid_qty, ask_price, ask_qty) VALUES \
             ('2024-08-08T23:54:15.000Z', 2871935, 'BTCUSDT', 1, 61824.0, 0.2566, 61824.01, 5.5308) \
             ON CONFLICT (ts, symbol, level) DO NOTHING"
        );
        assert!(sql[1].contains("'BTCUSDT', 2, 61822.04, 9e-5, NULL, NULL)"));
    }

    #[test]
    fn session_errors_are_outages_and_row_errors_are_fatal() {
        use postgres::error::SqlState;
        for down in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::TOO_MANY_CONNECTIONS,
        ] {
            assert!(lost_connection(&down), "{down:?}");
        }
        for fatal in [
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_COLUMN_REFERENCE,
            SqlState::DISK_FULL,
        ] {
            assert!(!lost_connection(&fatal), "{fatal:?}");
        }
    }

    #[test]
    fn csv_rows_have_the_wide_layout() {
        assert_eq!(
            CsvSink::header(1),
            "ts_s,symbol,bid_px_1,bid_qty_1,ask_px_1,ask_qty_1"
        );
    }
}
