//! Errors of the tracking module; each names what failed, where, and what was expected.

use crate::exit::ExitCode;

/// Anything that can go wrong while talking to MLflow or writing the local store/spool.
///
/// No variant ever carries a credential: URLs are stored with their user-info removed and
/// request headers are never included.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// The server rejected the credentials (HTTP 401/403).
    #[error(
        "MLflow at {url} answered HTTP {status} (not authorised): set MLFLOW_TRACKING_USERNAME \
         and MLFLOW_TRACKING_PASSWORD to a user with access to this server"
    )]
    Auth {
        /// The request URL, without credentials.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// No connection could be made (or the server kept answering 429/502/503/504) after all
    /// retries; the spool store journals the operation instead of failing.
    #[error("MLflow at {url} is unreachable after {attempts} attempt(s): {reason}")]
    Unreachable {
        /// The request URL, without credentials.
        url: String,
        /// How many times the request was tried.
        attempts: u32,
        /// The last transport error or status.
        reason: String,
        /// Whether the last try timed out before an answer: the server may still be working
        /// on it, so a look-up must wait for it to finish.
        timed_out: bool,
    },
    /// The server answered something that is not MLflow's JSON (an HTML login page, a proxy
    /// error page, a different service on that port).
    #[error(
        "MLflow at {url} answered HTTP {status} with {content_type:?} instead of JSON; is the \
         tracking URI right? body starts with: {snippet:?}"
    )]
    NotJson {
        /// The request URL, without credentials.
        url: String,
        /// HTTP status of the answer.
        status: u16,
        /// The Content-Type header, empty if absent.
        content_type: String,
        /// The first bytes of the body (lossy UTF-8).
        snippet: String,
    },
    /// The object asked for does not exist (HTTP 404 / RESOURCE_DOES_NOT_EXIST, or a local
    /// store without it).
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for, e.g. `run 1234` at `http://host/...`.
        what: String,
    },
    /// The experiment exists but is deleted; MLflow refuses new runs in it and refuses to
    /// create another experiment with the same name.
    #[error(
        "MLflow experiment '{name}' (id {experiment_id}) is deleted: restore it \
         (`mlflow experiments restore --experiment-id {experiment_id}`) or configure another \
         experiment name"
    )]
    ExperimentDeleted {
        /// Experiment name.
        name: String,
        /// Experiment id.
        experiment_id: String,
    },
    /// The server answered with an MLflow error other than the ones above.
    #[error("MLflow at {url} answered HTTP {status} {error_code}: {message}")]
    Server {
        /// The request URL, without credentials.
        url: String,
        /// HTTP status.
        status: u16,
        /// MLflow's `error_code`, e.g. `INVALID_PARAMETER_VALUE`.
        error_code: String,
        /// MLflow's message.
        message: String,
    },
    /// A transport problem that retrying cannot fix (bad URI, TLS setup).
    #[error("HTTP request to {url} failed: {reason}")]
    Http {
        /// The request URL, without credentials.
        url: String,
        /// What the HTTP client reported.
        reason: String,
    },
    /// Our own input is invalid: a malformed tracking URI, an unknown placeholder in a naming
    /// pattern, an unsupported search filter.
    #[error("{0}")]
    InvalidInput(String),
    /// The store cannot do this operation (e.g. the model registry on the local file store).
    #[error("{operation} is not supported by {store}: {hint}")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
        /// The store, e.g. `the local MLflow file store at /w/mlruns`.
        store: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// Reading or writing a local file (file store, spool, artifact) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A local file (meta.yaml, journal line, JSON answer) could not be parsed.
    #[error("{context}: {message}")]
    Corrupt {
        /// Which file or answer, naming the path/URL.
        context: String,
        /// The parser's message.
        message: String,
    },
}

impl TrackingError {
    /// The process exit code this error maps to: server/transport problems are an external
    /// service failure (4), bad user input is a usage error (2), broken local files are data
    /// errors (3).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            TrackingError::Auth { .. }
            | TrackingError::Unreachable { .. }
            | TrackingError::NotJson { .. }
            | TrackingError::Server { .. }
            | TrackingError::Http { .. } => ExitCode::External,
            TrackingError::NotFound { .. }
            | TrackingError::ExperimentDeleted { .. }
            | TrackingError::InvalidInput(_)
            | TrackingError::Unsupported { .. } => ExitCode::Usage,
            TrackingError::Io { .. } | TrackingError::Corrupt { .. } => ExitCode::Data,
        }
    }

    /// Whether this error means "server not reachable right now" (the spool's trigger).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TrackingError::Unreachable { .. })
    }

    /// Whether the request timed out before an answer (see `Unreachable::timed_out`).
    pub(crate) fn timed_out(&self) -> bool {
        matches!(
            self,
            TrackingError::Unreachable {
                timed_out: true,
                ..
            }
        )
    }

    /// Whether the request may have reached the server and been applied although no answer
    /// came back (a transport failure, a 5xx): a create must then be looked up, not repeated.
    pub fn may_have_been_applied(&self) -> bool {
        matches!(
            self,
            TrackingError::Unreachable { .. } | TrackingError::Server { status: 500.., .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TrackingError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Shorthand for tracking results.
pub type Result<T, E = TrackingError> = std::result::Result<T, E>;
