//! Which way of streaming rows out of PostgreSQL suits `fetch`: `query_raw` (extended
//! protocol, binary rows; what `fetch` uses because GreptimeDB's wire protocol supports it)
//! versus `COPY (SELECT ...) TO STDOUT` in text and in binary format (PostgreSQL only:
//! GreptimeDB has no COPY TO STDOUT). Every mode decodes each row into the same values.
//!
//! ```text
//! eval "$(bash scripts/postgres.sh)"; bash benches/fetch_postgres.sh 2   # creates the table
//! cargo bench --bench pg_read_modes -- bench_obs_2d_7s_10l_10c
//! ```

use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls};

const COLUMNS: &str = "ts, symbol, level, bid_price, bid_qty, ask_price, ask_qty";

/// Sum of decoded values, so no mode can skip its work.
#[derive(Default, Debug, PartialEq)]
struct Check {
    rows: u64,
    ts: i64,
    level: i64,
    symbol_bytes: u64,
    prices: f64,
}

fn query_raw(client: &mut Client, sql: &str) -> Check {
    let mut c = Check::default();
    let no_params: [&dyn ToSql; 0] = [];
    let mut rows = client.query_raw(sql, no_params).unwrap();
    while let Some(row) = rows.next().unwrap() {
        let ts: std::time::SystemTime = row.get(0);
        let ts = ts
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let symbol: &str = row.get(1);
        let level: i32 = row.get(2);
        c.rows += 1;
        c.ts += ts % 1000;
        c.symbol_bytes += symbol.len() as u64;
        c.level += i64::from(level);
        for i in 3..7 {
            c.prices += row.get::<_, f64>(i);
        }
    }
    c
}

fn copy_text(client: &mut Client, sql: &str) -> Check {
    let mut c = Check::default();
    let reader = client.copy_out(&format!("COPY ({sql}) TO STDOUT")).unwrap();
    for line in BufReader::with_capacity(1 << 20, reader).lines() {
        let line = line.unwrap();
        let f: Vec<&str> = line.split('\t').collect();
        let ts = chrono::NaiveDateTime::parse_from_str(f[0], "%Y-%m-%d %H:%M:%S%.f").unwrap();
        c.rows += 1;
        c.ts += ts.and_utc().timestamp_millis() % 1000;
        c.symbol_bytes += f[1].len() as u64;
        c.level += f[2].parse::<i64>().unwrap();
        for v in &f[3..7] {
            c.prices += v.parse::<f64>().unwrap();
        }
    }
    c
}

fn copy_binary(client: &mut Client, sql: &str) -> Check {
    let mut c = Check::default();
    let reader = client
        .copy_out(&format!("COPY ({sql}) TO STDOUT (FORMAT binary)"))
        .unwrap();
    let mut r = BufReader::with_capacity(1 << 20, reader);
    let mut header = [0u8; 19];
    r.read_exact(&mut header).unwrap();
    let mut buf = [0u8; 64];
    loop {
        r.read_exact(&mut buf[..2]).unwrap();
        if i16::from_be_bytes([buf[0], buf[1]]) < 0 {
            break;
        }
        let field = |r: &mut BufReader<_>| -> Vec<u8> {
            let mut len = [0u8; 4];
            r.read_exact(&mut len).unwrap();
            let mut v = vec![0u8; i32::from_be_bytes(len) as usize];
            r.read_exact(&mut v).unwrap();
            v
        };
        let ts = i64::from_be_bytes(field(&mut r).try_into().unwrap());
        let symbol = field(&mut r);
        let level = i32::from_be_bytes(field(&mut r).try_into().unwrap());
        c.rows += 1;
        c.ts += (ts / 1000 + 946_684_800_000) % 1000;
        c.symbol_bytes += symbol.len() as u64;
        c.level += i64::from(level);
        for _ in 0..4 {
            c.prices += f64::from_be_bytes(field(&mut r).try_into().unwrap());
        }
    }
    c
}

/// One way of reading the query's rows.
type ReadMode = fn(&mut Client, &str) -> Check;

fn main() {
    // `cargo test --all-targets` runs bench targets too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("pg_read_modes: a benchmark; run it with `cargo bench --bench pg_read_modes`");
        return;
    }
    let table = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "bench_obs_2d_7s_10l_10c".into());
    let Ok(uri) = std::env::var("BINANCE_ML_TEST_DATABASE_URI") else {
        eprintln!("skipped: BINANCE_ML_TEST_DATABASE_URI is not set");
        return;
    };
    let mut client = Client::connect(&uri, NoTls).unwrap();
    let sql = format!("SELECT {COLUMNS} FROM {table} WHERE bid_price > 0 AND ask_price > 0");
    let modes: [(&str, ReadMode); 3] = [
        ("query_raw (binary rows)", query_raw),
        ("COPY text", copy_text),
        ("COPY binary", copy_binary),
    ];
    let mut reference = None;
    for round in 0..3 {
        for (name, mode) in modes {
            let t = Instant::now();
            let check = mode(&mut client, &sql);
            let s = t.elapsed().as_secs_f64();
            println!(
                "round {round} {name:<24} {} rows {s:.2} s {:.0} rows/s",
                check.rows,
                check.rows as f64 / s
            );
            let key = (check.rows, check.ts, check.level, check.symbol_bytes);
            assert_eq!(
                *reference.get_or_insert(key),
                key,
                "{name} decoded different rows"
            );
        }
    }
}
