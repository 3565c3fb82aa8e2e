//! Why a hyperparameter search could not be set up or its study file used.

use std::path::PathBuf;

/// Why a search could not be set up or its study file used.
#[derive(Debug, thiserror::Error)]
pub enum HpoError {
    /// A search-space entry is malformed.
    #[error("hyperparameter_optimization.search_space.{param}: {reason}")]
    Space {
        /// The parameter's name.
        param: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The study file could not be read, parsed or written.
    #[error("study file {}: {reason}", .path.display())]
    StudyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The study file belongs to another search (other space, data, metric or direction).
    #[error(
        "study file {} was written for another search ({what}: found `{found}`, expected \
         `{expected}`); delete it to start a new study, or restore the configuration it was \
         made with to resume it",
        .path.display()
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs: `key` or `direction`.
        what: String,
        /// What the file says.
        found: String,
        /// What this run expects.
        expected: String,
    },
    /// A trial number that the study does not hold, or a trial that is no longer running.
    #[error("trial {number}: {reason}")]
    Trial {
        /// The trial's number.
        number: u32,
        /// What is wrong.
        reason: String,
    },
}

impl HpoError {
    /// Exit code: 2 for what the user must change (search space, a study file of another
    /// search), 5 otherwise.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            HpoError::Space { .. } | HpoError::Mismatch { .. } => crate::exit::ExitCode::Usage,
            HpoError::StudyFile { .. } | HpoError::Trial { .. } => crate::exit::ExitCode::Training,
        }
    }
}
