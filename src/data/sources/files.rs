//! CSV files (gzip when the name ends in `.gz`) in the tall layout (the database's columns,
//! `data.columns`) or the wide layout (`ts_s,symbol,bid_px_1,bid_qty_1,...,ask_qty_N`, extra
//! columns ignored), from paths or glob patterns.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime};
use flate2::read::MultiGzDecoder;
use indicatif::ProgressBar;

use super::Source;
use crate::config::{ColumnsConfig, DataConfig, FileLayout};
use crate::data::DataError;
use crate::data::assemble::{Assembler, Row};

/// The file source.
#[derive(Debug)]
pub struct FileSource {
    files: Vec<PathBuf>,
    layout: FileLayout,
    columns: ColumnsConfig,
    depth: usize,
    // Time span (min, max ms) of each file once read in full: later shards skip files
    // that cannot hold their rows.
    spans: HashMap<PathBuf, Option<(i64, i64)>>,
}

impl FileSource {
    /// Expands `data.files.paths`; a pattern matching nothing is an error.
    pub fn open(data: &DataConfig) -> Result<Self, DataError> {
        let mut files = Vec::new();
        for (i, pattern) in data.files.paths.iter().enumerate() {
            let key = format!("data.files.paths[{i}]");
            let matched: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
                let paths = glob::glob(pattern).map_err(|e| {
                    DataError::Input(format!("{key}: bad glob pattern {pattern:?}: {e}"))
                })?;
                let mut v: Vec<PathBuf> = paths
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect();
                v.sort();
                v
            } else if Path::new(pattern).is_file() {
                vec![PathBuf::from(pattern)]
            } else if Path::new(pattern).is_dir() {
                return Err(DataError::Input(format!(
                    "{key}: {}",
                    crate::config::validate::directory_path_message(pattern)
                )));
            } else {
                Vec::new()
            };
            if matched.is_empty() {
                return Err(DataError::Input(format!(
                    "{key}: {pattern:?} matches no file"
                )));
            }
            for f in matched {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
        Ok(Self {
            files,
            layout: data.files.layout,
            columns: data.columns.clone(),
            depth: data.order_book.depth_levels as usize,
            spans: HashMap::new(),
        })
    }

    /// The files, in reading order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn read_file(
        &self,
        path: &Path,
        start_ms: i64,
        end_ms: i64,
        asm: &mut Assembler,
    ) -> Result<Option<(i64, i64)>, DataError> {
        let file = File::open(path)
            .map_err(|e| DataError::io(format!("cannot open {}", path.display()), e))?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(reader);
        let malformed = |line: u64, message: String| DataError::Malformed {
            file: path.to_owned(),
            line,
            message,
        };
        let headers = csv
            .byte_headers()
            .map_err(|e| malformed(1, format!("cannot read the header: {e}")))?
            .clone();
        if headers.as_slice().is_empty() {
            return Err(DataError::Input(format!(
                "{}: the file is empty; expected a header line and rows ({:?} layout)",
                path.display(),
                self.layout
            )));
        }
        let find = |name: &str| headers.iter().position(|h| h == name.as_bytes());
        let need = |name: &str, what: &str| {
            find(name).ok_or_else(|| {
                malformed(
                    1,
                    format!(
                        "header has no column {name:?} ({what}, {:?} layout)",
                        self.layout
                    ),
                )
            })
        };
        let c = &self.columns;
        let (ts_col, sym_col) = match self.layout {
            FileLayout::Wide => (
                find("ts_s")
                    .map_or_else(|| need(&c.ts, "timestamp: ts_s or data.columns.ts"), Ok)?,
                need(&c.symbol, "data.columns.symbol")?,
            ),
            FileLayout::Tall => (
                need(&c.ts, "data.columns.ts")?,
                need(&c.symbol, "data.columns.symbol")?,
            ),
        };
        // Column indices of [bid_px, bid_qty, ask_px, ask_qty] per level (wide) or once (tall).
        let value_cols: Vec<[usize; 4]> = match self.layout {
            FileLayout::Wide => (1..=self.depth)
                .map(|k| {
                    Ok([
                        need(&format!("bid_px_{k}"), "data.order_book.depth_levels")?,
                        need(&format!("bid_qty_{k}"), "data.order_book.depth_levels")?,
                        need(&format!("ask_px_{k}"), "data.order_book.depth_levels")?,
                        need(&format!("ask_qty_{k}"), "data.order_book.depth_levels")?,
                    ])
                })
                .collect::<Result<_, DataError>>()?,
            FileLayout::Tall => vec![[
                need(&c.bid_price, "data.columns.bid_price")?,
                need(&c.bid_qty, "data.columns.bid_qty")?,
                need(&c.ask_price, "data.columns.ask_price")?,
                need(&c.ask_qty, "data.columns.ask_qty")?,
            ]],
        };
        let level_col = match self.layout {
            FileLayout::Tall => Some(need(&c.level, "data.columns.level")?),
            FileLayout::Wide => None,
        };
        let names: Vec<String> = headers
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect();

        let mut span: Option<(i64, i64)> = None;
        let mut record = csv::ByteRecord::new();
        // The last line read: an I/O error (a truncated gzip) carries no position of its own.
        let mut line = 1;
        loop {
            match csv.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let (line, message) = match e.kind() {
                        csv::ErrorKind::UnequalLengths {
                            expected_len, len, ..
                        } => (
                            e.position().map_or(line + 1, |p| p.line()),
                            format!("{len} fields, the header has {expected_len}"),
                        ),
                        csv::ErrorKind::Io(io) => (
                            line + 1,
                            format!(
                                "cannot read past line {line}: {io} (a truncated or corrupt file?)"
                            ),
                        ),
                        _ => (e.position().map_or(line + 1, |p| p.line()), e.to_string()),
                    };
                    return Err(malformed(line, message));
                }
            }
            line = record.position().map_or(line + 1, |p| p.line());
            let ts_ms = parse_ts(&record[ts_col]).ok_or_else(|| {
                malformed(
                    line,
                    format!(
                        "column {}: expected Unix seconds or a date-time, got {:?}",
                        names[ts_col],
                        String::from_utf8_lossy(&record[ts_col])
                    ),
                )
            })?;
            span = Some(span.map_or((ts_ms, ts_ms), |(a, b)| (a.min(ts_ms), b.max(ts_ms))));
            if ts_ms < start_ms || ts_ms >= end_ms {
                continue;
            }
            let Some(symbol) = std::str::from_utf8(&record[sym_col])
                .ok()
                .and_then(|s| asm.symbol_index(s))
            else {
                continue; // a symbol that is not configured
            };
            let number = |col: usize| -> Result<f64, DataError> {
                let raw = &record[col];
                if raw.is_empty() {
                    // An empty cell is a missing value: counted by the quality rules.
                    return Ok(f64::NAN);
                }
                std::str::from_utf8(raw)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| {
                        malformed(
                            line,
                            format!(
                                "column {}: expected a number, got {:?}",
                                names[col],
                                String::from_utf8_lossy(raw)
                            ),
                        )
                    })
            };
            let level_of = |k: usize| -> Result<i64, DataError> {
                match level_col {
                    None => Ok(k as i64 + 1),
                    Some(col) => std::str::from_utf8(&record[col])
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .ok_or_else(|| {
                            malformed(
                                line,
                                format!(
                                    "column {}: expected an integer level, got {:?}",
                                    names[col],
                                    String::from_utf8_lossy(&record[col])
                                ),
                            )
                        }),
                }
            };
            for (k, cols) in value_cols.iter().enumerate() {
                asm.push(Row {
                    ts_ms,
                    symbol,
                    level: level_of(k)?,
                    bid_price: number(cols[0])?,
                    bid_qty: number(cols[1])?,
                    ask_price: number(cols[2])?,
                    ask_qty: number(cols[3])?,
                });
            }
        }
        if line == 1 {
            // A recorder's freshly rotated file holds only its header: not an error, but the
            // file is named in case it was meant to hold the data.
            tracing::warn!("{}: the file has a header but no rows", path.display());
        }
        Ok(span)
    }
}

/// Unix seconds (fractions allowed), `YYYY-MM-DD HH:MM:SS[.fff]` (UTC) or RFC 3339.
fn parse_ts(raw: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs.is_finite().then(|| (secs * 1000.0).round() as i64);
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl FileSource {
    /// Paths, sizes and modification times of the files.
    pub fn fingerprint(&self) -> String {
        // Changing a file (size or modification time) must not reuse shards cut from it.
        self.files
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok();
                let len = meta.as_ref().map_or(0, |m| m.len());
                let modified = meta
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{}:{len}:{modified}", f.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!("{} file(s) ({:?} layout)", self.files.len(), self.layout).to_lowercase()
    }

    fn read_span(
        &mut self,
        start_ms: i64,
        end_ms: i64,
        asm: &mut Assembler,
        progress: &ProgressBar,
    ) -> Result<(), DataError> {
        for path in self.files.clone() {
            if let Some(known) = self.spans.get(&path) {
                match known {
                    Some((lo, hi)) if *hi >= start_ms && *lo < end_ms => {}
                    _ => continue,
                }
            }
            let span = self.read_file(&path, start_ms, end_ms, asm)?;
            self.spans.insert(path, span);
        }
        progress.inc(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_accepted_form() {
        assert_eq!(parse_ts(b"1723161255"), Some(1_723_161_255_000));
        assert_eq!(parse_ts(b"1723161255.5"), Some(1_723_161_255_500));
        assert_eq!(parse_ts(b"2024-08-08 23:54:15"), Some(1_723_161_255_000));
        assert_eq!(
            parse_ts(b"2024-08-08 23:54:15.250"),
            Some(1_723_161_255_250)
        );
        assert_eq!(parse_ts(b"2024-08-08T23:54:15Z"), Some(1_723_161_255_000));
        assert_eq!(
            parse_ts(b"2024-08-09T01:54:15+02:00"),
            Some(1_723_161_255_000)
        );
        assert_eq!(parse_ts(b"yesterday"), None);
    }
}
