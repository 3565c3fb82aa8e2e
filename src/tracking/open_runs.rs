//! Runs a process has open, on disk: `<workdir>/.open-runs/<run id>.json` is written when a
//! run starts and removed when it ends. A process killed in between (kill -9, power loss)
//! leaves its files behind, and the next command on the work directory ends those runs
//! FAILED ([`fail_dead_runs`](super::fail_dead_runs)) — on the server, in the local store, or
//! in the journal when the server is away — instead of leaving them RUNNING forever.
//!
//! A file names the tracking URI without credentials (they come from the environment or
//! the configuration when the run is ended) and the process by pid and start time, so a
//! recycled pid is not taken for the live writer. Before the create, `<key>.pending.json`
//! names the run's client key ([`TAG_CLIENT_ID`](super::TAG_CLIENT_ID)) and experiment: a
//! process killed between the create and its record still has its run found, by that tag.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrackingSettings;
use super::error::{Result, TrackingError};
use super::http::split_userinfo;

/// The folder of the records inside the work directory.
pub const OPEN_RUNS_DIR: &str = ".open-runs";

/// One open run, or one about to be created (`run_id` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpenRun {
    /// The run id (empty while the create is pending).
    pub(crate) run_id: String,
    /// The client key the run is tagged with (finds a run whose id was never recorded).
    #[serde(default)]
    pub(crate) key: String,
    /// Its experiment.
    #[serde(default)]
    pub(crate) experiment_id: String,
    /// `mlflow.tracking_uri` without user-info.
    pub(crate) tracking_uri: String,
    /// Whether the run exists only in the journal (its id is a client id).
    pub(crate) journaled: bool,
    /// The writing process.
    pub(crate) pid: u32,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    started: Option<u64>,
}

/// Where a tracker records its open runs.
#[derive(Debug, Clone)]
pub(crate) struct OpenRuns {
    dir: PathBuf,
    tracking_uri: String,
}

impl OpenRuns {
    /// The records of the work directory in `settings`.
    pub(crate) fn of(settings: &TrackingSettings) -> Self {
        OpenRuns {
            dir: settings.workdir.join(OPEN_RUNS_DIR),
            tracking_uri: split_userinfo(settings.tracking_uri.trim()).0,
        }
    }

    fn path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.json"))
    }

    fn pending_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.pending.json"))
    }

    /// Records that this process is about to create the run tagged `key` in `experiment_id`.
    pub(crate) fn pending(&self, key: &str, experiment_id: &str, journaled: bool) -> Result<()> {
        self.write(
            &self.pending_path(key),
            String::new(),
            key,
            experiment_id,
            journaled,
        )
    }

    /// Records `run_id` (created with `key`) as open by this process.
    pub(crate) fn add(&self, key: &str, run_id: &str, journaled: bool) -> Result<()> {
        self.write(&self.path(run_id), run_id.to_string(), key, "", journaled)?;
        let _ = fs::remove_file(self.pending_path(key));
        Ok(())
    }

    /// Forgets a create that failed.
    pub(crate) fn abandon(&self, key: &str) {
        let _ = fs::remove_file(self.pending_path(key));
    }

    fn write(
        &self,
        path: &Path,
        run_id: String,
        key: &str,
        experiment_id: &str,
        journaled: bool,
    ) -> Result<()> {
        let pid = std::process::id();
        let record = OpenRun {
            run_id,
            key: key.to_string(),
            experiment_id: experiment_id.to_string(),
            tracking_uri: self.tracking_uri.clone(),
            journaled,
            pid,
            started: process_start(pid),
        };
        let io = |e| TrackingError::io(format!("recording the open run in {}", path.display()), e);
        fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec(&record).unwrap_or_default())
            .and_then(|_| fs::rename(&tmp, path))
            .map_err(io)
    }

    /// Forgets `run_id` (it ended).
    pub(crate) fn remove(&self, run_id: &str) {
        let _ = fs::remove_file(self.path(run_id));
    }
}

/// `/proc/<pid>/stat` field 22 (start time); `None` when the process does not exist.
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that wrote `run` still runs (same pid, same start time).
fn writer_alive(run: &OpenRun) -> bool {
    run.pid == std::process::id()
        || process_start(run.pid).is_some_and(|started| Some(started) == run.started)
}

/// The record files of `workdir` (`*.json`), sorted.
fn record_files(workdir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(workdir.join(OPEN_RUNS_DIR)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// The records of `workdir` whose process is gone: each file with what it says.
pub(crate) fn left_by_dead_processes(workdir: &Path) -> Vec<(PathBuf, OpenRun)> {
    let mut dead = Vec::new();
    for path in record_files(workdir) {
        let Some(run) = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<OpenRun>(&b).ok())
        else {
            tracing::warn!(file = %path.display(), "ignoring an unreadable open-run record");
            continue;
        };
        if !writer_alive(&run) {
            dead.push((path, run));
        }
    }
    dead
}

/// The records of `workdir` (for tests and diagnostics): run ids still recorded open, and
/// `<key>.pending` for creates not known to have happened.
pub fn recorded_open(workdir: &Path) -> Vec<String> {
    record_files(workdir)
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_recognised_and_a_recycled_pid_is_not() {
        let me = std::process::id();
        let started = process_start(me);
        assert!(started.is_some(), "/proc/self/stat readable");
        let run = |pid, started| OpenRun {
            run_id: "r".into(),
            key: "k".into(),
            experiment_id: "0".into(),
            tracking_uri: String::new(),
            journaled: false,
            pid,
            started,
        };
        assert!(writer_alive(&run(me, started)));
        // pid 1 exists, but not with our start time: a recycled pid.
        assert!(!writer_alive(&run(1, started.map(|s| s + 1))));
        assert!(!writer_alive(&run(u32::MAX - 1, started)));
    }
}
