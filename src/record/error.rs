//! Why `record` failed, and the exit code of each.

use crate::data::DataError;
use crate::exit::ExitCode;

/// Why `record` failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Bad request or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The database could not be used.
    #[error(transparent)]
    Database(DataError),
    /// A local file could not be written (exit 3).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Binance sent something that is not its documented format (exit 3).
    #[error("malformed Binance data for {symbol}: {message}")]
    Malformed {
        /// Symbol.
        symbol: String,
        /// What is wrong.
        message: String,
    },
    /// Every symbol was stopped by HTTP 418 (IP banned) (exit 4).
    #[error(
        "every symbol is stopped: Binance answered HTTP 418 (IP banned) for {}; wait for the ban to expire \
         (record.rest_url {url})", .symbols.join(", ")
    )]
    AllBanned {
        /// The symbols.
        symbols: Vec<String>,
        /// The REST base URL.
        url: String,
    },
    /// The HTTP client for Binance REST could not be set up (exit 4).
    #[error("cannot send requests to {url}: {message}")]
    Http {
        /// The REST base URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The writer thread died.
    #[error("the writer thread failed: {0}")]
    Writer(String),
}

impl RecordError {
    /// 4 when every symbol is banned, HTTP cannot be set up, or the database refuses/cannot
    /// be reached, 3 for data and files, 2 for usage.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RecordError::Usage(_) => ExitCode::Usage,
            RecordError::Database(e) => e.exit_code(),
            RecordError::AllBanned { .. } | RecordError::Http { .. } => ExitCode::External,
            RecordError::Io { .. } | RecordError::Malformed { .. } | RecordError::Writer(_) => {
                ExitCode::Data
            }
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RecordError::Io {
            context: context.into(),
            source,
        }
    }
}
