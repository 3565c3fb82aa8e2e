//! SIGINT and SIGTERM as a flag the long loops poll, so a command stops cleanly: training
//! finishes its batch and writes a checkpoint, `record` flushes what it holds, MLflow runs
//! end KILLED, and the process exits 130 (SIGINT) or 143 (SIGTERM). A second signal exits at
//! once; [`exit_if_still_running_after`] covers loops that do not poll.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::exit::ExitCode;

/// The first signal received (0 = none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if SIGNAL.swap(sig, Ordering::SeqCst) != 0 {
        // Asked twice: leave now. `_exit` is async-signal-safe.
        // SAFETY: terminates the process without running anything else.
        unsafe { libc::_exit(128 + sig) }
    }
}

/// A stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, systemd, cron timeouts).
    Terminate,
}

impl Signal {
    /// The conventional exit code, 128 + the signal number.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Signal::Interrupt => ExitCode::Interrupted,
            Signal::Terminate => ExitCode::Terminated,
        }
    }

    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// The stop signal received since [`Guard::install`], if any.
pub fn requested() -> Option<Signal> {
    match SIGNAL.load(Ordering::SeqCst) {
        libc::SIGINT => Some(Signal::Interrupt),
        libc::SIGTERM => Some(Signal::Terminate),
        _ => None,
    }
}

/// SIGINT/SIGTERM set the flag while this lives; the previous handlers come back on drop.
#[derive(Debug)]
pub struct Guard {
    previous: [(libc::c_int, libc::sighandler_t); 2],
}

impl Guard {
    /// Installs the handlers and clears the flag.
    pub fn install() -> Self {
        SIGNAL.store(0, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic (and `_exit`), both async-signal-safe.
        let previous =
            [libc::SIGINT, libc::SIGTERM].map(|sig| (sig, unsafe { libc::signal(sig, handler) }));
        Guard { previous }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (sig, h) in self.previous {
            // SAFETY: restores the handler that was installed before.
            unsafe {
                libc::signal(sig, h);
            }
        }
    }
}

/// Watches for a signal from a background thread: once one arrived, the process exits with
/// its code `grace` later unless it ended by itself first (a stage with no loop that polls).
/// Files stay whole (every write is to a temporary file and a rename); MLflow runs left open
/// are ended FAILED by the next command on the work directory.
pub fn exit_if_still_running_after(grace: Duration) {
    std::thread::spawn(move || {
        let signal = loop {
            if let Some(s) = requested() {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(grace);
        tracing::warn!(
            signal = signal.name(),
            "still running {} s after the signal; exiting",
            grace.as_secs()
        );
        std::process::exit(signal.exit_code().code());
    });
}
