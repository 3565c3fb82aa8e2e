//! The database source: GreptimeDB or PostgreSQL over the PostgreSQL wire protocol
//! (ARCHITECTURE.md §2), with the synchronous `postgres` crate.
//!
//! GreptimeDB compatibility decides the shape of every query: no bind parameters at all
//! (GreptimeDB 1.0 rejects int/float parameters of the extended protocol), so values are
//! inlined as literals that cannot inject anything: timestamps we format ourselves, symbols
//! that passed the strict [`Symbol`] pattern, levels as integers, and table/column names
//! that passed the configuration's identifier check. Results are read with `query_raw`
//! (extended protocol, binary rows, streamed row by row), which GreptimeDB supports;
//! `COPY ... TO STDOUT` is PostgreSQL-only and no faster: `benches/pg_read_modes.rs`
//! measured 1.5-1.7M rows/s for `query_raw`, 1.3-1.6M for binary COPY and 0.8-1.0M for text
//! COPY on the same 18M-row query (2 shared cores, PostgreSQL 15). Without `ORDER BY` the server never sorts; the
//! assembler groups rows by timestamp in any order.

use std::time::Duration;

use chrono::DateTime;
use indicatif::ProgressBar;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, ToSql, Type};
use postgres::{Client, NoTls};

use super::Source;
use crate::config::{ColumnsConfig, DataConfig, Symbol};
use crate::data::DataError;
use crate::data::assemble::{Assembler, Row};

type BoxError = Box<dyn std::error::Error + Sync + Send>;
/// Whether a column type can be decoded as the configured column's meaning.
type TypeCheck = fn(&Type) -> bool;

/// `TIMESTAMP` / `TIMESTAMPTZ` as UTC Unix milliseconds (binary format: microseconds since
/// 2000-01-01; a `TIMESTAMP` without zone is read as UTC).
struct Ts(i64);

impl<'a> FromSql<'a> for Ts {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let us = i64::from_be_bytes(raw.try_into()?);
        Ok(Ts(us.div_euclid(1000) + 946_684_800_000))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMP || *ty == Type::TIMESTAMPTZ
    }
}

/// Any integer column (`SMALLINT`, `INT`, `BIGINT`); NULL reads as 0, an invalid level.
struct Int(i64);

impl<'a> FromSql<'a> for Int {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Int(match *ty {
            Type::INT2 => i64::from(i16::from_sql(ty, raw)?),
            Type::INT4 => i64::from(i32::from_sql(ty, raw)?),
            _ => i64::from_sql(ty, raw)?,
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Int(0))
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT2, Type::INT4, Type::INT8].contains(ty)
    }
}

/// `DOUBLE PRECISION` or `REAL`; NULL reads as NaN so the quality rules count it.
struct Float(f64);

impl<'a> FromSql<'a> for Float {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Float(if *ty == Type::FLOAT4 {
            f64::from(f32::from_sql(ty, raw)?)
        } else {
            f64::from_sql(ty, raw)?
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Float(f64::NAN))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::FLOAT8 || *ty == Type::FLOAT4
    }
}

/// A connected database source.
pub struct PgSource {
    client: Client,
    data: DataConfig,
    target: String,
    table: String,
    columns: ColumnsConfig,
    symbols: Vec<Symbol>,
    depth: u32,
    chunk_ms: i64,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("target", &self.target)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// `host:port/database` of a configuration, for messages (never the password).
fn target_of(cfg: &postgres::Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                postgres::config::Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = cfg.get_ports().get(i).or(cfg.get_ports().first()).copied();
            format!("{host}:{}", port.unwrap_or(5432))
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        cfg.get_dbname().or(cfg.get_user()).unwrap_or("")
    )
}

/// Replaces the password wherever a driver message might echo it.
fn scrub(message: String, password: Option<&[u8]>) -> String {
    match password.and_then(|p| std::str::from_utf8(p).ok()) {
        Some(p) if !p.is_empty() => message.replace(p, "***"),
        _ => message,
    }
}

fn parse_uri(data: &DataConfig) -> Result<postgres::Config, DataError> {
    let uri = data.connection.database_uri.as_deref().unwrap_or_default();
    // The parser's messages never include the URI, hence no password.
    uri.parse().map_err(|e| {
        DataError::Input(format!(
            "data.connection.database_uri: not a valid postgresql:// URI: {e}"
        ))
    })
}

/// `user@host:port/database` of the configured URI.
pub fn fingerprint(data: &DataConfig) -> Result<String, DataError> {
    let cfg = parse_uri(data)?;
    Ok(format!(
        "{}@{}",
        cfg.get_user().unwrap_or(""),
        target_of(&cfg)
    ))
}

/// Connects with `connect_timeout_seconds` per attempt and up to `max_retries` attempts
/// with exponential backoff; a login the server rejects is not retried.
pub fn connect(data: &DataConfig) -> Result<(Client, String), DataError> {
    let c = &data.connection;
    let mut cfg = parse_uri(data)?;
    cfg.connect_timeout(Duration::from_secs(c.connect_timeout_seconds.max(1)));
    cfg.application_name("binance-ml");
    let target = target_of(&cfg);
    let user = cfg.get_user().unwrap_or("").to_owned();
    let password = cfg.get_password().map(<[u8]>::to_vec);
    let attempts = c.max_retries.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let result = if cfg.get_ssl_mode() == postgres::config::SslMode::Require {
            let tls = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(c.tls_accept_invalid_certs)
                .build()
                .map_err(|e| DataError::Input(format!("cannot set up TLS: {e}")))?;
            cfg.connect(postgres_native_tls::MakeTlsConnector::new(tls))
        } else {
            // `prefer` and `disable`: plain TCP (ask for `sslmode=require` to encrypt).
            cfg.connect(NoTls)
        };
        match result {
            Ok(client) => return Ok((client, target)),
            Err(e) => {
                if let Some(db) = e.as_db_error() {
                    let message = scrub(db.message().to_owned(), password.as_deref());
                    let code = db.code();
                    if *code == SqlState::INVALID_PASSWORD
                        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    {
                        return Err(DataError::Auth {
                            target,
                            user,
                            message,
                        });
                    }
                    // Unknown database, too many connections...: the server answered, so
                    // retrying now would not help.
                    return Err(DataError::Unreachable {
                        target,
                        attempts: attempt,
                        message,
                    });
                }
                last = scrub(error_text(&e), password.as_deref());
                tracing::warn!(
                    attempt,
                    attempts,
                    target = %target,
                    "cannot connect to the database: {last}"
                );
                if attempt < attempts {
                    std::thread::sleep(Duration::from_millis(500 << (attempt - 1).min(5)));
                }
            }
        }
    }
    Err(DataError::Unreachable {
        target,
        attempts,
        message: last,
    })
}

/// The error with its causes (the driver's top-level text alone is often just "error
/// connecting to server").
fn error_text(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Maps a query error: a missing table or column is named; anything else is a failed query
/// (exit 4).
fn map_query_error(
    table: &str,
    target: &str,
    columns: &ColumnsConfig,
    context: &str,
    e: &postgres::Error,
) -> DataError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNDEFINED_TABLE {
            return DataError::Schema(format!(
                "table {} does not exist in {} (data.connection.table_name): {}",
                table,
                target,
                db.message()
            ));
        }
        if *db.code() == SqlState::UNDEFINED_COLUMN {
            let c = columns;
            let key = c
                .named()
                .into_iter()
                .find(|(_, name)| db.message().contains(&format!("\"{name}\"")))
                .map_or(String::new(), |(k, _)| format!(" (data.columns.{k})"));
            return DataError::Schema(format!("table {}: {}{key}", table, db.message()));
        }
    }
    query_failure(context, e)
}

/// A failed query: a broken connection (no server error, or the server shutting the session
/// down) is worth a reconnect; anything else is final.
fn query_failure(context: &str, e: &postgres::Error) -> DataError {
    let lost = match e.as_db_error() {
        None => true,
        Some(db) => [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(db.code()),
    };
    let (context, message) = (context.to_owned(), error_text(e));
    if lost {
        DataError::ConnectionLost { context, message }
    } else {
        DataError::Query { context, message }
    }
}

/// An inline timestamp literal (UTC, millisecond precision).
fn ts_literal(ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(ms).expect("time range is valid");
    format!("'{}'", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

impl PgSource {
    /// Connects, then checks that the table and columns exist with usable types and that
    /// every symbol has at least one row in the time range.
    pub fn open(data: &DataConfig) -> Result<Self, DataError> {
        let (client, target) = connect(data)?;
        let mut source = Self {
            client,
            data: data.clone(),
            target,
            table: data.connection.table_name.clone(),
            columns: data.columns.clone(),
            symbols: data.asset_pairs.all(),
            depth: data.order_book.depth_levels,
            chunk_ms: (data.connection.query_chunk_seconds as i64).saturating_mul(1000),
        };
        source.check_schema()?;
        let start = data.time_range.start_date.start().timestamp_millis();
        let end = data.time_range.end_date.end_exclusive().timestamp_millis();
        for symbol in source.symbols.clone() {
            let sql = format!(
                "SELECT {ts} FROM {table} WHERE {sym} = '{symbol}' AND {ts} >= {} AND {ts} < {} LIMIT 1",
                ts_literal(start),
                ts_literal(end),
                ts = source.columns.ts,
                sym = source.columns.symbol,
                table = source.table,
            );
            let found = source
                .client
                .query(&sql, &[])
                .map_err(|e| source.query_error(&format!("rows of {symbol}"), &e))?;
            if found.is_empty() {
                return Err(DataError::NoRows {
                    symbol: symbol.to_string(),
                    source_desc: source.describe(),
                    start: ts_literal(start).trim_matches('\'').to_owned(),
                    end: ts_literal(end).trim_matches('\'').to_owned(),
                });
            }
        }
        Ok(source)
    }

    fn select_list(&self) -> String {
        let c = &self.columns;
        [
            &c.ts,
            &c.symbol,
            &c.level,
            &c.bid_price,
            &c.bid_qty,
            &c.ask_price,
            &c.ask_qty,
        ]
        .map(String::as_str)
        .join(", ")
    }

    fn check_schema(&mut self) -> Result<(), DataError> {
        let sql = format!("SELECT {} FROM {} LIMIT 0", self.select_list(), self.table);
        let statement = self
            .client
            .prepare(&sql)
            .map_err(|e| self.query_error("checking the table", &e))?;
        let c = &self.columns;
        let expected: [(&str, &str, TypeCheck, &str); 7] = [
            ("ts", &c.ts, Ts::accepts, "TIMESTAMP"),
            (
                "symbol",
                &c.symbol,
                |t| *t == Type::TEXT || *t == Type::VARCHAR,
                "TEXT",
            ),
            ("level", &c.level, Int::accepts, "an integer type"),
            (
                "bid_price",
                &c.bid_price,
                Float::accepts,
                "DOUBLE PRECISION",
            ),
            ("bid_qty", &c.bid_qty, Float::accepts, "DOUBLE PRECISION"),
            (
                "ask_price",
                &c.ask_price,
                Float::accepts,
                "DOUBLE PRECISION",
            ),
            ("ask_qty", &c.ask_qty, Float::accepts, "DOUBLE PRECISION"),
        ];
        for (col, (key, name, accepts, want)) in statement.columns().iter().zip(expected) {
            if !accepts(col.type_()) {
                return Err(DataError::Schema(format!(
                    "column {name} (data.columns.{key}) of table {} has type {}, expected {want}",
                    self.table,
                    col.type_()
                )));
            }
        }
        Ok(())
    }

    /// Maps a query error: a missing table or column is named; anything else is a failed
    /// query (exit 4).
    fn query_error(&self, context: &str, e: &postgres::Error) -> DataError {
        map_query_error(&self.table, &self.target, &self.columns, context, e)
    }

    /// The chunk's filters: time span, symbols, levels 1..=depth.
    fn chunk_filter(&self, start_ms: i64, end_ms: i64) -> String {
        let c = &self.columns;
        let symbols: Vec<String> = self.symbols.iter().map(|s| format!("'{s}'")).collect();
        format!(
            "{ts} >= {} AND {ts} < {} AND {sym} IN ({}) AND {lvl} >= 1 AND {lvl} <= {}",
            ts_literal(start_ms),
            ts_literal(end_ms),
            symbols.join(", "),
            self.depth,
            ts = c.ts,
            sym = c.symbol,
            lvl = c.level,
        )
    }

    /// The streaming query of one chunk, with the coarse validity filter of spec v0.4.
    pub fn chunk_query(&self, start_ms: i64, end_ms: i64) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} AND {bid} > 0 AND {ask} > 0",
            self.select_list(),
            self.table,
            self.chunk_filter(start_ms, end_ms),
            bid = self.columns.bid_price,
            ask = self.columns.ask_price,
        )
    }

    fn read_chunk(
        &mut self,
        start_ms: i64,
        end_ms: i64,
        asm: &mut Assembler,
    ) -> Result<(), DataError> {
        let context = format!(
            "{} chunk {}..{}",
            self.table,
            ts_literal(start_ms),
            ts_literal(end_ms)
        );
        // Rows the coarse filter removes are counted, not lost silently (`IS NOT TRUE` also
        // catches NULL prices, which `> 0` drops too).
        let count_sql = format!(
            "SELECT {sym}, count(*) FROM {} WHERE {} AND ({bid} > 0 AND {ask} > 0) IS NOT TRUE GROUP BY {sym}",
            self.table,
            self.chunk_filter(start_ms, end_ms),
            sym = self.columns.symbol,
            bid = self.columns.bid_price,
            ask = self.columns.ask_price,
        );
        let counts = self
            .client
            .query(&count_sql, &[])
            .map_err(|e| self.query_error(&context, &e))?;
        for row in counts {
            let symbol: &str = row.get(0);
            let n: Int = row.get(1);
            if let Some(i) = asm.symbol_index(symbol) {
                asm.count_filtered_in_source(i, n.0 as u64);
            }
        }

        let sql = self.chunk_query(start_ms, end_ms);
        let no_params: [&dyn ToSql; 0] = [];
        let mut rows = match self.client.query_raw(&sql, no_params) {
            Ok(rows) => rows,
            Err(e) => {
                return Err(map_query_error(
                    &self.table,
                    &self.target,
                    &self.columns,
                    &context,
                    &e,
                ));
            }
        };
        let err = |e: postgres::Error| query_failure(&context, &e);
        let mut last_symbol: Option<(String, usize)> = None;
        while let Some(row) = rows.next().map_err(err)? {
            let ts: Ts = row.try_get(0).map_err(err)?;
            let symbol: &str = row.try_get(1).map_err(err)?;
            let index = match &last_symbol {
                Some((s, i)) if s == symbol => *i,
                _ => {
                    let Some(i) = asm.symbol_index(symbol) else {
                        continue;
                    };
                    last_symbol = Some((symbol.to_owned(), i));
                    i
                }
            };
            let level: Int = row.try_get(2).map_err(err)?;
            let values: [Float; 4] = [
                row.try_get(3).map_err(err)?,
                row.try_get(4).map_err(err)?,
                row.try_get(5).map_err(err)?,
                row.try_get(6).map_err(err)?,
            ];
            asm.push(Row {
                ts_ms: ts.0,
                symbol: index,
                level: level.0,
                bid_price: values[0].0,
                bid_qty: values[1].0,
                ask_price: values[2].0,
                ask_qty: values[3].0,
            });
        }
        Ok(())
    }
}

impl Source for PgSource {
    fn describe(&self) -> String {
        format!("table {} at {}", self.table, self.target)
    }

    fn reconnect(&mut self) -> Result<(), DataError> {
        self.client = connect(&self.data)?.0;
        Ok(())
    }

    fn chunks_per_span(&self, span_ms: i64) -> u64 {
        (span_ms.max(1) as u64).div_ceil(self.chunk_ms.max(1) as u64)
    }

    fn read_span(
        &mut self,
        start_ms: i64,
        end_ms: i64,
        asm: &mut Assembler,
        progress: &ProgressBar,
    ) -> Result<(), DataError> {
        let mut t = start_ms;
        while t < end_ms {
            let next = t.saturating_add(self.chunk_ms).min(end_ms);
            self.read_chunk(t, next, asm)?;
            progress.inc(1);
            t = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_literals_never_carry_secrets_or_quotes() {
        let cfg: postgres::Config = "postgresql://u:s3cret@db.example:4003/public?sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(target_of(&cfg), "db.example:4003/public");
        assert_eq!(
            scrub("password s3cret is wrong".into(), cfg.get_password()),
            "password *** is wrong"
        );
        assert_eq!(ts_literal(1_723_161_255_250), "'2024-08-08T23:54:15.250Z'");
    }
}
