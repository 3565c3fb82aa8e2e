//! The process exit codes a script can branch on: the one vocabulary every stage's error
//! maps itself to, so it sits below them all.

use std::fmt;

/// Documented process exit codes (README "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Usage or configuration error.
    Usage = 2,
    /// Bad data or input file.
    Data = 3,
    /// An external service failed: database, MLflow, Binance.
    External = 4,
    /// Training or evaluation failed.
    Training = 5,
    /// Another run holds the work-directory lock.
    Locked = 6,
    /// Stopped by SIGINT (128 + 2).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15).
    Terminated = 143,
}

impl ExitCode {
    /// The numeric code handed to the operating system.
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}
