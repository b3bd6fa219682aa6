//! Reading what its owner may not read: a store used by a user other than
//! root holds that user's files with the modes the layers gave them, and a
//! layer may well have a file of mode 0000 (`etc/shadow` in Fedora's
//! images) or a directory without its owner's search bit. Root reads them
//! anyway; their owner may not, but may change their mode. So when an
//! operation on a path fails with `EACCES` and this process owns what
//! stands in its way (the entry itself, for an open; a directory on its
//! path without the owner's search bit), strata lends itself the owner's
//! bits it needs, repeats the one operation, and puts the exact modes back
//! at once (on failure too), as GNU tar and rsync, in effect, do with what
//! they own. What it does not own is never changed.
//!
//! The normal case costs nothing: the operation is tried first, and only
//! its `EACCES` leads to the lending. Each lent mode is set through an
//! `O_PATH` descriptor of the inode (`/proc/self/fd/N`), so a path swapped
//! meanwhile changes nothing else; the mode it is put back to is the one
//! that descriptor's `fstat` read.
//!
//! The window: from the `chmod` to the one that puts the mode back, one
//! system call (an `open`, an `lstat`, an xattr read). A process killed
//! there (`SIGKILL`, a power loss) leaves the entry with its owner's
//! read or search bit added. Another thread of this process that reads the
//! metadata meanwhile waits for the mode to be back ([`settled`]); another
//! process reading the same entry at that moment may see the lent mode.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fd::OwnedFd;
use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::longpath::reach;

/// The owner's read bit, to open a file or list a directory.
pub(crate) const READ: u32 = 0o400;

/// Nothing of the entry itself: only the search bits of the directories
/// on its way (an `lstat`, a `readlink`, a `link`).
pub(crate) const WAY: u32 = 0;

/// Whether an error is "permission denied".
pub(crate) trait Denied {
    fn denied(&self) -> bool;
}

impl Denied for io::Error {
    fn denied(&self) -> bool {
        self.raw_os_error() == Some(libc::EACCES)
    }
}

impl Denied for Errno {
    fn denied(&self) -> bool {
        *self == Errno::ACCESS
    }
}

/// Runs `op` on `path`; if it is denied, lends the owner's search bit to
/// the directories on `path`'s way and `bits` to `path` itself, where this
/// process owns them and they lack those bits, runs `op` once more, and
/// puts the modes back. Root has no need of it and never lends.
pub(crate) fn retry<T, E: Denied>(
    path: &Path,
    bits: u32,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    match op() {
        Err(e) if e.denied() => again(path, bits, e, op),
        other => other,
    }
}

/// [`retry`] after `op` failed with `err`, for a caller that tried it
/// itself (and names `path` only then).
pub(crate) fn again<T, E: Denied>(
    path: &Path,
    bits: u32,
    err: E,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    if !err.denied() || is_root() {
        return Err(err);
    }
    let _serial = lock();
    let lent = lend_along(path, bits);
    if lent.modes.is_empty() {
        return Err(err);
    }
    op()
}

/// Runs `op`, which reads metadata (modes) of entries, again once no
/// thread of this process lends a mode, if one did while it ran: what it
/// read then may hold the lent bits. Two atomic loads when none did.
pub(crate) fn settled<T>(mut op: impl FnMut() -> T) -> T {
    let before = LENDINGS.load(Ordering::SeqCst);
    let first = op();
    if before.is_multiple_of(2) && LENDINGS.load(Ordering::SeqCst) == before {
        return first;
    }
    let _serial = lock();
    op()
}

/// Counts the starts and the ends of lendings (one at a time, under
/// [`SERIAL`]): odd while one is under way, and changed by any that
/// began or ended meanwhile.
static LENDINGS: AtomicUsize = AtomicUsize::new(0);

/// One lending at a time in this process: two threads lending the same
/// directory would each put back what the other lent, or the lent mode.
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds [`SERIAL`]: a [`settled`] read again
    /// under it may lend ([`again`]) without waiting for itself.
    static HOLDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`SERIAL`], unless this thread holds it already.
struct Serial(Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for Serial {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            HOLDS.with(|h| h.set(false));
        }
    }
}

fn lock() -> Serial {
    if HOLDS.with(std::cell::Cell::get) {
        return Serial(None);
    }
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    HOLDS.with(|h| h.set(true));
    Serial(Some(guard))
}

fn euid() -> u32 {
    super::euid()
}

fn is_root() -> bool {
    euid() == 0
}

/// Modes lent, put back (the last lent first) when dropped.
#[derive(Default)]
struct Lent {
    modes: Vec<(OwnedFd, u32)>,
    /// Whether this lending's start is counted in [`LENDINGS`].
    counted: bool,
}

impl Drop for Lent {
    fn drop(&mut self) {
        while let Some((fd, mode)) = self.modes.pop() {
            // It was changed through this descriptor a moment ago, by its
            // owner: putting it back cannot fail for want of permission.
            let _ = chmod_fd(&fd, mode);
        }
        if self.counted {
            LENDINGS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn chmod_fd(fd: &OwnedFd, mode: u32) -> rustix::io::Result<()> {
    let proc = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    rustix::fs::chmod(&proc, Mode::from_raw_mode(mode))
}

/// Lends the search bit to each directory on `path`'s way that this
/// process owns and cannot search, then `bits` to `path` itself. Stops at
/// the first thing it cannot look at: the operation repeated then fails as
/// it did.
fn lend_along(path: &Path, bits: u32) -> Lent {
    let mut lent = Lent::default();
    let mut way = PathBuf::new();
    let mut names = path.components().peekable();
    while let Some(name) = names.next() {
        way.push(name);
        let want = if names.peek().is_none() { bits } else { 0o100 };
        if want == 0 || lend(&way, want, &mut lent).is_err() {
            break;
        }
    }
    lent
}

/// Adds `bits` to the mode of `path` if this process owns it and they are
/// missing; not through a symlink.
fn lend(path: &Path, bits: u32, lent: &mut Lent) -> io::Result<()> {
    let at = reach(path)?;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, &*at, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    let mode = st.st_mode & 0o7777;
    if st.st_uid != euid()
        || FileType::from_raw_mode(st.st_mode) == FileType::Symlink
        || mode & bits == bits
    {
        return Ok(());
    }
    // Counted before the change, so that a thread reading this mode after
    // it finds the lending under way.
    if !lent.counted {
        LENDINGS.fetch_add(1, Ordering::SeqCst);
        lent.counted = true;
    }
    chmod_fd(&fd, mode | bits)?;
    lent.modes.push((fd, mode));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn what_the_owner_may_not_read_is_read_and_its_mode_kept() {
        if is_root() {
            // Root reads it without lending; nothing to see.
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, PermissionsExt::from_mode(0o4000)).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o1000)).unwrap();
        let read = retry(&file, READ, || std::fs::read(&file)).unwrap();
        assert_eq!(read, b"x");
        assert_eq!(mode(tmp.path().join("d").as_path()), 0o1000);
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o700)).unwrap();
        assert_eq!(mode(&file), 0o4000);
        assert_eq!(LENDINGS.load(Ordering::SeqCst) % 2, 0);
    }
}
