//! Ctrl-C, SIGTERM and SIGHUP during the long steps of the commands that
//! build something (`apply`, `import`, `pull`, `prepare` and `view` where
//! the native driver copies a tree, `diff` and `export` writing their
//! output): the first such signal asks the work to stop at its next step,
//! so that what it made (a `new-*` directory, a temporary output file) is
//! deleted as on any error, and the binary then dies of that signal, as
//! the shell expects (a script's loop stops). A second one kills at once:
//! the handler is reset by the first (`SA_RESETHAND`).
//!
//! The binary [`allow`]s it for those commands; the library [`catch`]es
//! the signals only when a long step starts, so a command that never gets
//! there (an overlay `prepare`) keeps the default action and pays nothing.
//! A step blocked waiting for input looks at the signal at least every
//! [`POLL`]: a layer read from a pipe ([`Stoppable`]), a download
//! ([`stopped`]).
//!
//! Without this, a Ctrl-C in the middle of an `apply` left its `new-*`
//! directory for `prune`, and `check` reported it until then (audit).

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// The signal received, or 0.
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// Whether the command may catch the signals (see [`allow`]).
static ALLOWED: AtomicBool = AtomicBool::new(false);
/// Whether [`catch`] has installed the handlers.
static INSTALLED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How often a step waiting for input looks at the signal.
pub const POLL: Duration = Duration::from_millis(100);

extern "C" fn note(signal: libc::c_int) {
    CAUGHT.store(signal, Ordering::Relaxed);
}

/// Lets the library catch the signals at the long steps of this command.
pub fn allow() {
    ALLOWED.store(true, Ordering::Relaxed);
}

/// Catches the signals from now on, if the command [`allow`]s it; once
/// per process. A signal the process ignores (a command started with
/// `nohup`, or in the background by a shell without job control) stays
/// ignored. One `sigaction` per signal (two for an ignored one).
pub fn catch() {
    if !ALLOWED.load(Ordering::Relaxed) || INSTALLED.swap(true, Ordering::Relaxed) {
        return;
    }
    for signal in SIGNALS {
        // SAFETY: sigaction(2) with zeroed structs filled in; the handler
        // only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
            new.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, &new, &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN {
                libc::sigaction(signal, &old, std::ptr::null_mut());
            }
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

/// A reader (or writer) of a pipe, a terminal or a file that looks at the
/// signal while it waits for input (or room) (a layer piped from a stalled producer would
/// otherwise keep a caught Ctrl-C waiting as long as the producer): it
/// waits with `poll` for at most [`POLL`] at a time, once the signals are
/// caught. A regular file is always ready: one `poll` per read.
pub struct Stoppable<R>(pub R);

impl<R: Read + AsFd> Read for Stoppable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        wait_for(&self.0, rustix::event::PollFlags::IN)?;
        self.0.read(buf)
    }
}

impl<W: io::Write + AsFd> io::Write for Stoppable<W> {
    /// Waits for room as a read waits for input (review: a `diff` into a
    /// pipe no one read kept a caught SIGTERM waiting for the reader).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        wait_for(&self.0, rustix::event::PollFlags::OUT)?;
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Waits until `fd` is ready for `what` (or at its end, or failed: the
/// read or write then says which), looking at the signal every [`POLL`]
/// once the signals are caught; returns at once before.
fn wait_for(fd: &impl AsFd, what: rustix::event::PollFlags) -> io::Result<()> {
    while INSTALLED.load(Ordering::Relaxed) {
        check()?;
        let mut fds = [rustix::event::PollFd::new(fd, what)];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: POLL.as_nanos() as _,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            _ => break,
        }
    }
    Ok(())
}

/// Waits until a signal is caught, looking every [`POLL`]: raced against
/// a download's next chunk, so that a stalled registry does not keep a
/// caught Ctrl-C waiting for its timeout.
pub async fn stopped() {
    while caught().is_none() {
        tokio::time::sleep(POLL).await;
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
