//! Data in: the [`DataObject`], its NPZ shard cache, and the `fetch` stage reading
//! PostgreSQL/GreptimeDB, CSV files or a synthetic market (spec §1.2, §2.1; ARCHITECTURE.md §2).
//!
//! Every source yields tall rows (snapshot x symbol x level) into an [`assemble::Assembler`]
//! for one shard's time span; the assembler applies the quality rules and produces the
//! shard's order books plus a [`assemble::QualityReport`]; [`cache`] writes them as NPZ.

pub mod assemble;
pub mod cache;
pub mod dataobject;
pub mod fetch;
pub mod npz;
pub mod sources;

use std::path::PathBuf;

pub use dataobject::{DataObject, Matrix, Metadata, OrderBook};

use crate::exit::ExitCode;

/// Why data could not be fetched, cached or read. Messages name the file, key, table or row
/// and never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of an input file is malformed.
    #[error("{file}:{line}: {message}")]
    Malformed {
        /// The input file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The input does not fit the configuration (missing column, too few levels, no files).
    #[error("{0}")]
    Input(String),
    /// A configured symbol has no rows at all in the configured time range.
    #[error(
        "symbol {symbol} has no rows in {source_desc} between {start} and {end} \
         (data.asset_pairs); check the symbol and data.time_range"
    )]
    NoRows {
        /// The symbol.
        symbol: String,
        /// The source, e.g. `table order_book_snapshots`.
        source_desc: String,
        /// Inclusive start (RFC 3339).
        start: String,
        /// Exclusive end (RFC 3339).
        end: String,
    },
    /// A cached shard or manifest fails its checks (hash, shape) and cannot be refetched here.
    #[error("corrupt cache file {path}: {message}; run `binance-ml fetch --force` to refetch")]
    Corrupt {
        /// The shard or manifest.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A file of the preprocessed store fails its checks (hash, shape): `fetch` cannot repair
    /// it, rebuilding the store does.
    #[error(
        "corrupt preprocessed file {path}: {message}; run `binance-ml preprocess --force` to \
         rebuild the store"
    )]
    CorruptStore {
        /// The row shard, `samples.npz` or manifest.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A DataObject breaks its invariants (shapes, ordering, finiteness).
    #[error("invalid DataObject: {0}")]
    Invalid(String),
    /// The database could not be reached after every retry.
    #[error(
        "cannot connect to the database at {target} after {attempts} attempt(s): {message} \
         (data.connection.database_uri)"
    )]
    Unreachable {
        /// `host:port/database` (never the password).
        target: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// The database refused the credentials.
    #[error(
        "the database at {target} rejected the login of user {user:?}: {message} \
         (check the password in data.connection.database_uri / DATABASE_URI)"
    )]
    Auth {
        /// `host:port/database`.
        target: String,
        /// The user name.
        user: String,
        /// The server's message.
        message: String,
    },
    /// The configured table or a configured column does not exist.
    #[error("{0}")]
    Schema(String),
    /// A query failed after the connection was established.
    #[error("database query failed ({context}): {message}")]
    Query {
        /// Which query, e.g. the time chunk.
        context: String,
        /// The server's or driver's message.
        message: String,
    },
    /// The connection broke during a query (network, server restart); `fetch` reconnects
    /// and refetches the shard up to `data.connection.max_retries` times.
    #[error("lost the database connection ({context}): {message}")]
    ConnectionLost {
        /// Which query.
        context: String,
        /// The driver's message.
        message: String,
    },
}

impl DataError {
    /// The exit code: 4 when the database is unreachable, refuses the login or fails a query;
    /// 3 for bad input, bad data and a broken cache.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DataError::Unreachable { .. }
            | DataError::Auth { .. }
            | DataError::Query { .. }
            | DataError::ConnectionLost { .. } => ExitCode::External,
            _ => ExitCode::Data,
        }
    }

    /// An I/O error with its context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DataError::Io {
            context: context.into(),
            source,
        }
    }
}
