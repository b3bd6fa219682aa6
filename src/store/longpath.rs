//! Paths longer than the kernel takes (`PATH_MAX`, 4096 bytes with its NUL).
//!
//! A layer can nest a tree that deep (`apply` unpacks it a directory at a
//! time), so every walk of a snapshot must reach such paths too: `usage`,
//! `diff` and the native driver's copy. They keep walking by full paths,
//! which nearly all are short, and reach a long one through its directory,
//! opened a piece of the path at a time.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;

/// The longest path the kernel takes, its NUL included.
const PATH_MAX: usize = 4096;

/// Pieces of at most this many bytes, cut at a `/`, are well within
/// `PATH_MAX`.
const PIECE: usize = 2048;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens a directory by its path; one longer than the kernel takes a piece
/// at a time, each piece relative to the directory before it. Short paths,
/// nearly all, take one `openat`. Symlinks are not followed at the end.
pub(crate) fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    match rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty()) {
        Err(Errno::NAMETOOLONG) => open_long(path.as_os_str().as_bytes()),
        other => other,
    }
}

/// A long directory this thread opened lately: walks open one directory
/// after another, each near one before (its child, its parent, a sibling),
/// so the next is reached from it in a few short `openat`s rather than from
/// the root (which costs as much as the path is deep, each time: a walk of
/// a deep tree would cost its depth squared). A few are kept, for walks of
/// two trees side by side (a copy, a comparison).
struct Last {
    /// Its absolute path, as asked for.
    path: Vec<u8>,
    dir: OwnedFd,
    id: (u64, u64),
}

thread_local! {
    static LAST: std::cell::RefCell<Vec<Last>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many [`Last`] a thread keeps.
const LASTS: usize = 4;

/// Going up more levels than this from the last directory costs more than
/// a walk from the root in `PIECE`s.
const MOST_UP: usize = 64;

fn identity(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Whether `path` is absolute and plain: no empty, `.` or `..` name, no
/// `/` at the end; a path reached from another must be.
fn plain(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/") else {
        return false;
    };
    !rest
        .split(|&b| b == b'/')
        .any(|n| n.is_empty() || n == b"." || n == b"..")
}

/// Opens a directory whose path is longer than the kernel takes: from the
/// last one this thread opened when that is near, else from the root.
fn open_long(path: &[u8]) -> rustix::io::Result<OwnedFd> {
    // The one sharing the most of `path`.
    let (near, used) = LAST.with(|last| {
        let last = last.borrow();
        let best = last
            .iter()
            .enumerate()
            .max_by_key(|(_, l)| common_len(&l.path, path))
            .map(|(i, _)| i);
        match best.and_then(|i| from_last(&last[i], path)?.ok().map(|d| (d, i))) {
            Some((dir, i)) => (Some(dir), Some(i)),
            None => (None, None),
        }
    });
    let dir = match near {
        Some(dir) => dir,
        None => open_in_steps(path)?,
    };
    // Remembered only when it can be checked later (a directory removed
    // meanwhile has no links, one replaced another identity).
    if plain(path)
        && let Ok(st) = rustix::fs::fstat(&dir)
        && let Ok(copy) = dir.try_clone()
    {
        let new = Last {
            path: path.to_vec(),
            dir: copy,
            id: identity(&st),
        };
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match used {
                // It moves on: the others stay where their walks are.
                Some(i) => last[i] = new,
                None => {
                    if last.len() == LASTS {
                        last.remove(0);
                    }
                    last.push(new);
                }
            }
        });
    }
    Ok(dir)
}

/// The length of the common start of `a` and `b`.
fn common_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 64 <= n && a[i..i + 64] == b[i..i + 64] {
        i += 64;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// `path` reached from `last`: up to their common directory, each step a
/// `..` checked to hold the directory it came from under its name, then
/// down. None when they are too far apart or `last` is stale.
fn from_last(last: &Last, path: &[u8]) -> Option<rustix::io::Result<OwnedFd>> {
    if !plain(path) {
        return None;
    }
    let had = &last.path[..];
    let same = common_len(path, had);
    let at_end = |p: &[u8]| p.len() == same || p[same] == b'/';
    // Where their common directory's path ends.
    let common = if at_end(path) && at_end(had) {
        same
    } else {
        path[..same].iter().rposition(|&b| b == b'/')?
    };
    let up: Vec<&[u8]> = had[common..]
        .rsplit(|&b| b == b'/')
        .filter(|n| !n.is_empty())
        .take(MOST_UP + 1)
        .collect();
    // Reaching the root by `..` would cost more than the path's own walk.
    if up.len() > MOST_UP || common == 0 {
        return None;
    }
    let st = rustix::fs::fstat(&last.dir).ok()?;
    if identity(&st) != last.id || st.st_nlink == 0 {
        return None;
    }
    let mut dir = last.dir.try_clone().ok()?;
    let mut id = last.id;
    for name in up {
        let parent = rustix::fs::openat(&dir, c"..", DIR_FLAGS, Mode::empty()).ok()?;
        let child = rustix::fs::statat(&parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW);
        if child.ok().map(|st| identity(&st)) != Some(id) {
            return None;
        }
        id = identity(&rustix::fs::fstat(&parent).ok()?);
        dir = parent;
    }
    let rest = path[common..].strip_prefix(b"/").unwrap_or(&path[common..]);
    if rest.is_empty() {
        return Some(Ok(dir));
    }
    Some(steps_from(Some(dir), rest))
}

fn open_in_steps(rest: &[u8]) -> rustix::io::Result<OwnedFd> {
    steps_from(None, rest)
}

/// [`open_in_steps`] from `dir` (None: the current directory).
fn steps_from(mut dir: Option<OwnedFd>, mut rest: &[u8]) -> rustix::io::Result<OwnedFd> {
    while !rest.is_empty() {
        let cut = if rest.len() <= PIECE {
            rest.len()
        } else {
            // A name is at most 255 bytes, so a `/` is always found.
            rest[..PIECE]
                .iter()
                .rposition(|&b| b == b'/')
                .filter(|&i| i > 0)
                .ok_or(Errno::NAMETOOLONG)?
        };
        let piece = OsStr::from_bytes(&rest[..cut]);
        let next = match &dir {
            Some(fd) => rustix::fs::openat(fd, piece, DIR_FLAGS, Mode::empty())?,
            None => rustix::fs::openat(CWD, piece, DIR_FLAGS, Mode::empty())?,
        };
        dir = Some(next);
        rest = &rest[cut..];
        while let [b'/', tail @ ..] = rest {
            rest = tail;
        }
    }
    dir.ok_or(Errno::NOENT)
}

/// Attaches the offending path to an error, keeping its kind: the walks
/// that reach long paths report which one failed.
pub(crate) trait PathContext<T> {
    fn ctx(self, path: &Path) -> io::Result<T>;
}

impl<T, E: Into<io::Error>> PathContext<T> for Result<T, E> {
    fn ctx(self, path: &Path) -> io::Result<T> {
        self.map_err(|e| {
            let e: io::Error = e.into();
            io::Error::new(e.kind(), format!("{}: {}", path.display(), e))
        })
    }
}

/// A path the kernel takes for `path`: `path` itself when it is short
/// enough, else its last name under `/proc/self/fd/N`, N its directory. The
/// directory stays open as long as this does; the `l…` calls (`lstat`,
/// `lgetxattr`, `O_NOFOLLOW`) still do not follow that last name.
pub(crate) struct Reach<'p> {
    path: Cow<'p, Path>,
    _dir: Option<OwnedFd>,
}

impl std::ops::Deref for Reach<'_> {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// See [`Reach`]: no system call for a short path.
pub(crate) fn reach(path: &Path) -> io::Result<Reach<'_>> {
    if path.as_os_str().len() < PATH_MAX {
        return Ok(Reach {
            path: path.into(),
            _dir: None,
        });
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Errno::NAMETOOLONG.into());
    };
    let dir = open_dir(parent)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    Ok(Reach {
        path: short.into(),
        _dir: Some(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn long_paths_are_reached_through_their_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let name = "d".repeat(200);
        let mut dir = rustix::fs::open(tmp.path(), DIR_FLAGS, Mode::empty()).unwrap();
        for _ in 0..30 {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = rustix::fs::openat(&dir, name.as_str(), DIR_FLAGS, Mode::empty()).unwrap();
        }
        rustix::fs::symlinkat("target", &dir, "link").unwrap();
        let deep: PathBuf = std::iter::repeat_n(name.as_str(), 30).collect();
        let deep = tmp.path().join(deep);
        assert_eq!(
            std::fs::symlink_metadata(&deep).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        // A directory: opened in steps, or reached and listed.
        open_dir(&deep).unwrap();
        let reached = reach(&deep).unwrap();
        assert!(
            reached.starts_with("/proc/self/fd"),
            "{}",
            reached.display()
        );
        assert_eq!(std::fs::read_dir(&*reached).unwrap().count(), 1);
        // A symlink: reached, not followed.
        let link = deep.join("link");
        let md = std::fs::symlink_metadata(&*reach(&link).unwrap()).unwrap();
        assert!(md.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(&*reach(&link).unwrap()).unwrap(),
            Path::new("target")
        );
        // Near the last one: its parent, a sibling, a child, each the
        // directory a walk from the root finds; one removed is not used.
        let ino = |fd: &OwnedFd| rustix::fs::fstat(fd).unwrap().st_ino;
        let parent = deep.parent().unwrap();
        rustix::fs::mkdirat(open_dir(parent).unwrap(), "sib", Mode::from_raw_mode(0o755)).unwrap();
        rustix::fs::mkdirat(open_dir(&deep).unwrap(), "sub", Mode::from_raw_mode(0o755)).unwrap();
        for p in [
            parent.to_path_buf(),
            parent.join("sib"),
            deep.join("sub"),
            deep.clone(),
        ] {
            let bytes = p.as_os_str().as_bytes();
            assert_eq!(
                ino(&open_dir(&p).unwrap()),
                ino(&open_in_steps(bytes).unwrap())
            );
        }
        let sub = deep.join("sub");
        open_dir(&sub).unwrap();
        rustix::fs::unlinkat(open_dir(&deep).unwrap(), "sub", AtFlags::REMOVEDIR).unwrap();
        assert_eq!(open_dir(&sub).unwrap_err(), Errno::NOENT);
        rustix::fs::mkdirat(open_dir(&deep).unwrap(), "sub", Mode::from_raw_mode(0o755)).unwrap();
        assert_eq!(
            ino(&open_dir(&sub).unwrap()),
            ino(&open_in_steps(sub.as_os_str().as_bytes()).unwrap())
        );
        // A short path is itself.
        let short = reach(tmp.path()).unwrap();
        assert_eq!(&*short, tmp.path());
        assert_eq!(
            std::fs::metadata(&*short).unwrap().ino(),
            std::fs::metadata(tmp.path()).unwrap().ino()
        );
    }
}
