//! Ctrl-C, SIGTERM and SIGHUP during the commands that build something
//! (`apply`, `import`, `pull`, a native `prepare`'s copy, `diff` and
//! `export` writing their output): the first such signal asks the work to
//! stop at its next step, so that what it made (a `new-*` directory, a
//! temporary output file) is deleted as on any error, and the binary then
//! dies of that signal, as the shell expects. A second one kills at once:
//! the handler is reset by the first (`SA_RESETHAND`).
//!
//! Without this, a Ctrl-C in the middle of an `apply` left its `new-*`
//! directory for `prune`, and `check` reported it until then (audit).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received, or 0.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn note(signal: libc::c_int) {
    CAUGHT.store(signal, Ordering::Relaxed);
}

/// Catches the signals from now on. A signal the process ignores (a
/// command started with `nohup`, or in the background by a shell without
/// job control) stays ignored.
pub fn catch() {
    for signal in SIGNALS {
        // SAFETY: sigaction(2) with a zeroed struct filled in; the handler
        // only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction == libc::SIG_IGN
            {
                continue;
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
            new.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(signal, &new, std::ptr::null_mut());
        }
    }
}

/// The signal caught, if one was.
pub fn caught() -> Option<libc::c_int> {
    match CAUGHT.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// An error once a signal was caught: called between the steps of long
/// work. Not `ErrorKind::Interrupted`, which `write_all` and `io::copy`
/// retry forever.
pub fn check() -> io::Result<()> {
    match caught() {
        None => Ok(()),
        Some(_) => Err(io::Error::other(Interrupted)),
    }
}

/// Ends the process by `signal` with its default action, as a process
/// that did not catch it would have ended (the shell then says so, and a
/// script's `$?` is 128 + the signal).
pub fn die_of(signal: libc::c_int) -> ! {
    // SAFETY: restoring the default action and raising the signal on
    // ourselves; the default action of SIGINT, SIGTERM and SIGHUP ends the
    // process, and `_exit` is there only should it not.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
        libc::_exit(128 + signal)
    }
}

/// The cause of the error [`check`] returns.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted by a signal")
    }
}

impl std::error::Error for Interrupted {}
