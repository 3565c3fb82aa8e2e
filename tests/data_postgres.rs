//! `fetch` from a real PostgreSQL server (`BINANCE_ML_TEST_DATABASE_URI`, started by
//! `scripts/postgres.sh`), filled by the tests from the real sample files.

mod common;

use std::path::Path;

use binance_ml::data::cache::CacheReader;
use binance_ml::data::fetch::fetch;

fn db_yaml(
    workdir: &Path,
    uri: &str,
    table: &str,
    symbols: &[&str],
    range: (&str, &str),
    extra: &str,
) -> String {
    format!(
        "workdir: {workdir:?}\ndata:\n  source_type: database\n  connection:\n    database_uri: {uri:?}\n    \
         table_name: {table}\n    query_chunk_seconds: 3600\n    connect_timeout_seconds: 2\n    max_retries: 2\n{extra}  \
         asset_pairs:\n    target_asset: {}\n    correlated_assets: {:?}\n  time_range:\n    start_date: \"{}\"\n    \
         end_date: \"{}\"\n    cadence_seconds: 1\n",
        symbols[0],
        &symbols[1..],
        range.0,
        range.1
    )
}

fn with_password(uri: &str, password: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap();
    let (userinfo, host) = rest.rsplit_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    format!("{scheme}://{user}:{password}@{host}")
}

#[test]
fn fetched_from_postgres_equals_the_csv_files() {
    let (Some(shared), Some(uri)) = (common::shared_data(), common::database_uri()) else {
        return;
    };
    let files = common::sample_files(&shared);
    let rows: Vec<_> = files.iter().flat_map(|f| common::tall_rows(f)).collect();
    assert_eq!(rows.len(), (650 + 650 + 479 + 479) * 10);
    common::create_table(&uri, "t_equal", &rows);
    let dir = tempfile::tempdir().unwrap();
    // Spot (Aug 8-9) and futures (Jul 18-19) files share the symbols: 23 daily shards,
    // hourly query chunks, most of them empty.
    let range = ("2024-07-18", "2024-08-09");
    let yaml = db_yaml(
        &dir.path().join("db"),
        &uri,
        "t_equal",
        &["BTCUSDT", "ETHUSDT"],
        range,
        "",
    );
    let s = fetch(&common::config(&yaml), false).unwrap();
    assert_eq!((s.shards, s.shards_fetched), (23, 23));
    assert_eq!(s.quality.rows_read, rows.len() as u64);
    assert_eq!(
        s.quality.rows_dropped() + s.quality.rows_filtered_in_source,
        0
    );
    let from_db = CacheReader::open(&s.cache_dir).unwrap().load().unwrap();

    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let file_yaml = format!(
        "workdir: {:?}\ndata:\n  source_type: file\n  files:\n    paths: {paths:?}\n  asset_pairs:\n    \
         target_asset: BTCUSDT\n    correlated_assets: [ETHUSDT]\n  time_range:\n    start_date: \"{}\"\n    \
         end_date: \"{}\"\n    cadence_seconds: 1\n",
        dir.path().join("files"),
        range.0,
        range.1
    );
    let f = fetch(&common::config(&file_yaml), false).unwrap();
    let from_files = CacheReader::open(&f.cache_dir).unwrap().load().unwrap();
    assert_eq!(from_db.order_books["BTCUSDT"].len(), 650 + 479);
    assert_eq!(from_db.order_books, from_files.order_books);
    assert_eq!(
        from_db.metadata.num_samples,
        from_files.metadata.num_samples
    );
    assert_eq!(from_db.metadata.time_range, from_files.metadata.time_range);

    // A second fetch reuses every shard without reading the table.
    let again = fetch(&common::config(&yaml), false).unwrap();
    assert_eq!((again.shards_fetched, again.shards_reused), (0, 23));
}

#[test]
fn bad_rows_are_filtered_and_counted_in_the_quality_report() {
    let Some(uri) = common::database_uri() else {
        return;
    };
    let row = |ts_s: i64, level: u32, v: [&str; 4]| common::TallRow {
        ts_s,
        symbol: "BTCUSDT".into(),
        level,
        values: v.map(String::from),
    };
    let t0 = 1_722_470_400; // 2024-08-01
    let mut rows = Vec::new();
    for (i, ts) in (t0..t0 + 7).enumerate() {
        let mut l1 = ["100", "1", "101", "1"];
        let mut l2 = ["99", "1", "102", "1"];
        match i {
            1 => l2[1] = "NaN",   // NaN quantity
            2 => l1[0] = "0",     // zero price: removed by the SQL filter
            3 => l2[2] = "-102",  // negative price: removed by the SQL filter
            4 => l1[0] = "101.5", // crossed book
            _ => {}
        }
        if i == 5 {
            // NULL quantity (\N in COPY's text format).
            rows.push(row(ts, 1, l1));
            rows.push(row(ts, 2, ["99", "\\N", "102", "1"]));
            continue;
        }
        rows.push(row(ts, 1, l1));
        rows.push(row(ts, 2, l2));
        if i == 6 {
            rows.push(row(ts, 2, l2)); // exact duplicate: harmless
        }
    }
    rows.push(row(t0 + 7, 1, ["100", "1", "101", "1"])); // level 2 missing
    rows.push(row(t0 + 8, 1, ["100", "1", "101", "1"]));
    rows.push(row(t0 + 8, 2, ["99", "1", "102", "1"]));
    rows.push(row(t0 + 8, 2, ["99", "2", "102", "1"])); // conflicting duplicate
    common::create_table(&uri, "t_bad_rows", &rows);
    let dir = tempfile::tempdir().unwrap();
    let yaml = db_yaml(
        dir.path(),
        &uri,
        "t_bad_rows",
        &["BTCUSDT"],
        ("2024-08-01", "2024-08-01"),
        "",
    ) + "  order_book:\n    depth_levels: 2\n";
    let yaml = yaml + "preprocessing:\n  feature_engineering:\n    depth_imbalance_levels: 2\n";
    let s = fetch(&common::config(&yaml), false).unwrap();
    let q = &s.quality;
    assert_eq!(q.rows_filtered_in_source, 2, "{q:#?}");
    assert_eq!(q.rows_read, 19 - 2);
    assert_eq!(q.rows_dropped_nan, 2, "NaN and NULL quantities: {q:#?}");
    assert_eq!(q.rows_dropped_duplicate, 2, "{q:#?}");
    assert_eq!(q.snapshots_read, 9, "{q:#?}");
    assert_eq!(q.snapshots_kept, 2, "{q:#?}"); // t0 and t0+6
    // NaN, zero price, negative price, NULL, absent level 2.
    assert_eq!(q.snapshots_dropped_missing_levels, 5, "{q:#?}");
    assert_eq!(q.snapshots_dropped_crossed, 1);
    assert_eq!(q.snapshots_dropped_conflicting_duplicates, 1);
    let o = CacheReader::open(&s.cache_dir).unwrap().load().unwrap();
    assert_eq!(
        o.order_books["BTCUSDT"].snapshot_timestamps,
        vec![t0 * 1000, (t0 + 6) * 1000]
    );
    let meta =
        std::fs::read_to_string(s.cache_dir.join("shard-1722470400-1722556800.meta.json")).unwrap();
    assert!(meta.contains("\"rows_filtered_in_source\": 2"), "{meta}");
}

#[test]
fn an_unreachable_database_is_retried_then_exit_4_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1; the test needs no server.
    let uri = "postgresql://someone:Sup3rSecretPw@127.0.0.1:1/nowhere";
    let yaml = db_yaml(
        dir.path(),
        uri,
        "t",
        &["BTCUSDT"],
        ("2024-08-01", "2024-08-01"),
        "",
    );
    let (code, stdout, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the database at 127.0.0.1:1/nowhere after 2 attempt(s)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("attempt=1"),
        "the retry is logged: {stderr}"
    );
    assert!(
        !stderr.contains("Sup3rSecretPw") && !stdout.contains("Sup3rSecretPw"),
        "{stderr}"
    );
}

#[test]
fn a_wrong_password_is_exit_4_with_a_clear_message() {
    let Some(uri) = common::database_uri() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bad = with_password(&uri, "WrongPw12345");
    let yaml = db_yaml(
        dir.path(),
        &bad,
        "t",
        &["BTCUSDT"],
        ("2024-08-01", "2024-08-01"),
        "",
    );
    let (code, _, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("rejected the login of user \"binance_ml\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("WrongPw12345"), "{stderr}");
    assert!(
        !stderr.contains("attempt=1"),
        "a rejected login is not retried: {stderr}"
    );
}

#[test]
fn a_missing_table_column_or_symbol_is_named() {
    let Some(uri) = common::database_uri() else {
        return;
    };
    let rows: Vec<common::TallRow> = (1..=10)
        .map(|level| common::TallRow {
            ts_s: 1_722_470_400,
            symbol: "BTCUSDT".into(),
            level,
            values: [
                format!("{}", 100 - level),
                "1".into(),
                format!("{}", 100 + level),
                "1".into(),
            ],
        })
        .collect();
    common::create_table(&uri, "t_named", &rows);
    let dir = tempfile::tempdir().unwrap();
    let range = ("2024-08-01", "2024-08-01");
    let cases = [
        (
            db_yaml(dir.path(), &uri, "t_no_such_table", &["BTCUSDT"], range, ""),
            "table t_no_such_table does not exist",
        ),
        (
            db_yaml(
                dir.path(),
                &uri,
                "t_named",
                &["BTCUSDT"],
                range,
                "  columns:\n    bid_price: bid_px\n",
            ),
            "table t_named: column \"bid_px\" does not exist (data.columns.bid_price)",
        ),
        (
            db_yaml(
                dir.path(),
                &uri,
                "t_named",
                &["BTCUSDT", "ETHUSDT"],
                range,
                "",
            ),
            "symbol ETHUSDT has no rows in table t_named at 127.0.0.1:5432/binance_ml_test",
        ),
        (
            db_yaml(
                dir.path(),
                &uri,
                "t_named",
                &["BTCUSDT"],
                range,
                "  columns:\n    level: symbol\n",
            ),
            "column symbol (data.columns.level) of table t_named has type text, expected an integer type",
        ),
    ];
    for (yaml, expected) in cases {
        let (code, _, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
        assert_eq!(code, 3, "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
    // The table itself fetches fine.
    let yaml = db_yaml(dir.path(), &uri, "t_named", &["BTCUSDT"], range, "");
    let (code, stdout, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("BTCUSDT: 1 snapshots"), "{stdout}");
}

#[test]
fn tls_with_sslmode_require() {
    let Some(uri) = common::database_uri() else {
        return;
    };
    let rows: Vec<common::TallRow> = (1..=10)
        .map(|level| common::TallRow {
            ts_s: 1_722_470_400,
            symbol: "BTCUSDT".into(),
            level,
            values: [
                format!("{}", 100 - level),
                "1".into(),
                format!("{}", 100 + level),
                "1".into(),
            ],
        })
        .collect();
    common::create_table(&uri, "t_tls", &rows);
    let dir = tempfile::tempdir().unwrap();
    let sep = if uri.contains('?') { '&' } else { '?' };
    let tls_uri = format!("{uri}{sep}sslmode=require");
    let range = ("2024-08-01", "2024-08-01");
    // The Debian server's certificate is self-signed: verification fails unless allowed.
    let yaml = db_yaml(dir.path(), &tls_uri, "t_tls", &["BTCUSDT"], range, "");
    let (code, _, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let yaml = db_yaml(dir.path(), &tls_uri, "t_tls", &["BTCUSDT"], range, "").replace(
        "    max_retries: 2\n",
        "    max_retries: 2\n    tls_accept_invalid_certs: true\n",
    );
    let (code, stdout, stderr) = common::run_cli(dir.path(), &yaml, &["fetch"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("BTCUSDT: 1 snapshots"), "{stdout}");
}

#[test]
fn a_connection_lost_mid_fetch_is_reconnected_and_the_shard_read_again() {
    let (Some(shared), Some(uri)) = (common::shared_data(), common::database_uri()) else {
        return;
    };
    let file = shared.join("binance_1s_top10/spot_BTCUSDT_20240808-09.csv");
    common::create_table(&uri, "t_flaky_data", &common::tall_rows(&file));
    // A view whose 1000th evaluated row makes the server end the session (what a restart or
    // a network cut looks like to the client); a sequence counts across the reconnect.
    let mut client = postgres::Client::connect(&uri, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "DROP VIEW IF EXISTS t_flaky; DROP SEQUENCE IF EXISTS t_flaky_seq;
             CREATE SEQUENCE t_flaky_seq;
             CREATE OR REPLACE FUNCTION t_flaky_gate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
             BEGIN
               IF nextval('t_flaky_seq') = 1000 THEN
                 PERFORM pg_terminate_backend(pg_backend_pid());
               END IF;
               RETURN true;
             END $$;
             CREATE VIEW t_flaky AS SELECT * FROM t_flaky_data WHERE t_flaky_gate();",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let range = ("2024-08-08", "2024-08-09");
    let flaky = db_yaml(
        &dir.path().join("a"),
        &uri,
        "t_flaky",
        &["BTCUSDT"],
        range,
        "",
    );
    let s = fetch(&common::config(&flaky), false).unwrap();
    let seq: i64 = client
        .query_one("SELECT last_value FROM t_flaky_seq", &[])
        .unwrap()
        .get(0);
    assert!(seq > 1000, "the session was never cut (sequence at {seq})");
    assert_eq!(
        s.quality.rows_read, 6500,
        "no row counted twice: {:#?}",
        s.quality
    );
    let steady = db_yaml(
        &dir.path().join("b"),
        &uri,
        "t_flaky_data",
        &["BTCUSDT"],
        range,
        "",
    );
    let t = fetch(&common::config(&steady), false).unwrap();
    let load = |dir: &Path| CacheReader::open(dir).unwrap().load().unwrap().order_books;
    assert_eq!(load(&s.cache_dir), load(&t.cache_dir));
}
