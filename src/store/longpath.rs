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
use rustix::fs::{CWD, Mode, OFlags};
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
        Err(Errno::NAMETOOLONG) => open_in_steps(path.as_os_str().as_bytes()),
        other => other,
    }
}

fn open_in_steps(mut rest: &[u8]) -> rustix::io::Result<OwnedFd> {
    let mut dir: Option<OwnedFd> = None;
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
        // A short path is itself.
        let short = reach(tmp.path()).unwrap();
        assert_eq!(&*short, tmp.path());
        assert_eq!(
            std::fs::metadata(&*short).unwrap().ino(),
            std::fs::metadata(tmp.path()).unwrap().ino()
        );
    }
}
