//! One writer per work directory: an OS file lock (`flock`) on `<workdir>/.binance-ml.lock`,
//! whose content names the holder. A second process gets exit code 6 with the holder's pid and
//! start time. The OS drops the lock when its process dies (kill -9, crash), so a stale lock
//! is taken over without anyone deleting files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the lock file inside the work directory.
pub const LOCK_FILE: &str = ".binance-ml.lock";

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// The subcommand, e.g. `finetune`.
    pub command: String,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error(
        "the work directory {} is in use by `binance-ml {}` (pid {}, started {}); wait for it \
         to finish, or remove {} if that process is gone",
        .dir.display(), .holder.command, .holder.pid, .holder.started_at, .path.display()
    )]
    Busy {
        /// The work directory.
        dir: PathBuf,
        /// The lock file.
        path: PathBuf,
        /// Its holder.
        holder: Holder,
    },
    /// The lock file could not be written or read.
    #[error("lock file {}: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Held until dropped (the OS releases it with the file).
#[derive(Debug)]
pub struct WorkdirLock {
    _file: File,
}

impl LockError {
    /// Exit code: 6 while another process holds the lock, 3 when its file is unusable.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            LockError::Busy { .. } => crate::exit::ExitCode::Locked,
            LockError::Io { .. } => crate::exit::ExitCode::Data,
        }
    }
}

impl WorkdirLock {
    /// Takes the lock of `workdir` (created if missing) for `command`.
    pub fn acquire(workdir: &Path, command: &str) -> Result<Self, LockError> {
        let path = workdir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(workdir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // The holder writes its name right after locking: give it a moment.
                let mut holder = None;
                for _ in 0..20 {
                    let mut text = String::new();
                    let _ = File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
                    holder = serde_json::from_str::<Holder>(&text).ok();
                    if holder.is_some() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                return Err(LockError::Busy {
                    dir: workdir.to_path_buf(),
                    path: path.clone(),
                    holder: holder.unwrap_or_else(|| Holder {
                        pid: 0,
                        started_at: "unknown".into(),
                        command: "unknown".into(),
                    }),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        if let Ok(old) = serde_json::from_str::<Holder>(&previous) {
            tracing::debug!(pid = old.pid, command = %old.command, "lock free again (previous holder ended)");
        }
        let me = Holder {
            pid: std::process::id(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            command: command.to_owned(),
        };
        let json = serde_json::to_vec(&me).expect("holder serialises");
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(&json))
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = WorkdirLock::acquire(dir.path(), "finetune").unwrap();
        // flock is per open file description: a second open in this process conflicts too.
        let err = WorkdirLock::acquire(dir.path(), "run").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains("`binance-ml finetune`"),
            "{msg}"
        );
        drop(first);
        // Released (as when the holder dies): the next one takes it and names itself.
        let _second = WorkdirLock::acquire(dir.path(), "run").unwrap();
        let now: Holder =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap())
                .unwrap();
        assert_eq!(now.command, "run");
    }
}
