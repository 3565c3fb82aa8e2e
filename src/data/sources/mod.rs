//! The three sources `fetch` reads. Each pushes the tall rows of one time span into an
//! [`Assembler`]; the cache decides which spans to ask for.

pub mod files;
pub mod postgres;
pub mod synthetic;

use indicatif::ProgressBar;

use super::DataError;
use super::assemble::Assembler;
use crate::config::{DataConfig, SourceType};

/// A source of tall order-book rows.
pub trait Source {
    /// What the source is, for messages (e.g. `table order_book_snapshots`).
    fn describe(&self) -> String;

    /// Pushes every row with `start_ms <= ts < end_ms` for the assembler's symbols,
    /// advancing `progress` by one per query chunk.
    fn read_span(
        &mut self,
        start_ms: i64,
        end_ms: i64,
        asm: &mut Assembler,
        progress: &ProgressBar,
    ) -> Result<(), DataError>;

    /// Opens a new connection after [`DataError::ConnectionLost`].
    fn reconnect(&mut self) -> Result<(), DataError> {
        Ok(())
    }

    /// Query chunks one span of `span_ms` takes (the progress bar's unit).
    fn chunks_per_span(&self, _span_ms: i64) -> u64 {
        1
    }
}

/// What identifies the source's content beyond the configuration, known without reading
/// it: the files' sizes and modification times, the database's `user@host:port/db` (never the
/// password). Part of the cache key.
pub fn fingerprint(data: &DataConfig) -> Result<String, DataError> {
    Ok(match data.source_type {
        SourceType::File => files::FileSource::open(data)?.fingerprint(),
        SourceType::Synthetic => String::new(),
        SourceType::Database => postgres::fingerprint(data)?,
    })
}

/// Opens the configured source (for a database: connects and checks table, columns and
/// that every symbol has rows).
pub fn open(data: &DataConfig) -> Result<Box<dyn Source>, DataError> {
    Ok(match data.source_type {
        SourceType::File => Box::new(files::FileSource::open(data)?),
        SourceType::Synthetic => Box::new(synthetic::SyntheticSource::new(data)),
        SourceType::Database => Box::new(postgres::PgSource::open(data)?),
    })
}
