//! Deleting a directory tree with a bounded number of open directories.
//!
//! std's `remove_dir_all` keeps one directory open per level it descends
//! (audit: a snapshot whose tree nests 1,100 directories could not be
//! removed under `ulimit -n 1024`, "os error 24", and the `rm-*` directory it
//! left could not be pruned either). This walk keeps at most [`OPEN`]
//! directories open: going deeper closes the shallowest one open (after
//! noting its identity), and coming back up reopens it as the `..` of its
//! child, checked to be the directory that was closed. A closed directory's
//! listing is read again from its start when it is reopened: what it lists
//! by then is only what is still to delete.
//!
//! Like std's, it never follows a symlink (a symlink is unlinked, whatever
//! it points to), reaches every path relative to an open directory (so
//! paths longer than `PATH_MAX` are no matter), and tolerates entries that
//! vanish meanwhile (prune may be deleting the same tree). A directory that
//! forbids the deletion of its entries (e.g. 0555, for a user without
//! `CAP_DAC_OVERRIDE`) is made 0700 first.

use std::ffi::{CStr, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::longpath;

/// At most this many directories of the tree are open at once.
pub(crate) const OPEN: usize = 16;

/// Bytes of directory entries read by one `getdents`.
const LISTING: usize = 32 * 1024;

/// How often a directory found not empty after its listing ended (something
/// was created in it meanwhile) is listed again before giving up.
const RELISTS: u8 = 8;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What an entry's listing says it is.
const IS_DIR: u8 = 1;
const IS_OTHER: u8 = 2;
const UNKNOWN: u8 = 3;

/// A directory on the way down from the tree's root.
struct Frame {
    /// Its name in its parent, NUL-terminated (empty for the root).
    name: Vec<u8>,
    /// None while closed (more than [`OPEN`] levels below it are open).
    fd: Option<OwnedFd>,
    /// Its device and inode, noted when it is closed.
    id: (u64, u64),
    /// Entries listed and not yet deleted: a kind byte, the name, a NUL.
    pending: Vec<u8>,
    pos: usize,
    /// Its listing has ended (since it was last opened).
    listed: bool,
    /// It was made 0700 already.
    opened_up: bool,
    /// How many times it was listed again (see [`RELISTS`]).
    relisted: u8,
}

impl Frame {
    fn new(fd: OwnedFd, name: &[u8], relisted: u8) -> Frame {
        Frame {
            name: name.to_vec(),
            fd: Some(fd),
            id: (0, 0),
            pending: Vec::new(),
            pos: 0,
            listed: false,
            opened_up: false,
            relisted,
        }
    }

    fn name(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.name).expect("a NUL-terminated name")
    }

    fn fd(&self) -> &OwnedFd {
        self.fd.as_ref().expect("an open directory")
    }
}

/// Removes the tree at `path` (a directory; a symlink there is unlinked, not
/// followed). Nothing there is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    remove_counting(path).map(|_| ())
}

/// [`remove_tree`], returning the most directories it had open at once.
fn remove_counting(path: &Path) -> io::Result<usize> {
    let mut most = 0;
    for relisted in 0..=RELISTS {
        let root = match open_root(path)? {
            Some(fd) => fd,
            None => return Ok(most),
        };
        let mut walk = Walk {
            root: path,
            frames: vec![Frame::new(root, b"\0", relisted)],
            lo: 0,
            most: 1,
            name: Vec::new(),
            listing: Vec::with_capacity(LISTING),
        };
        walk.listing.resize(LISTING, MaybeUninit::uninit());
        walk.run()?;
        most = most.max(walk.most);
        drop(walk);
        match remove_dir(path) {
            Ok(()) | Err(Errno::NOENT) => return Ok(most),
            // Something was made in it meanwhile: once more.
            Err(Errno::NOTEMPTY | Errno::EXIST) => continue,
            Err(e) => return Err(at(path, e)),
        }
    }
    Err(at(path, Errno::NOTEMPTY))
}

/// The tree's root, opened; None when nothing is there. A symlink there is
/// unlinked (None); a file is not a tree (`ENOTDIR`), as with std.
fn open_root(path: &Path) -> io::Result<Option<OwnedFd>> {
    let mut opened_up = false;
    loop {
        match longpath::open_dir(path) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) => return Ok(None),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                let (parent, name) = parent_of(path)?;
                return match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                        match rustix::fs::unlinkat(&parent, name, AtFlags::empty()) {
                            Ok(()) | Err(Errno::NOENT) => Ok(None),
                            Err(e) => Err(at(path, e)),
                        }
                    }
                    Err(Errno::NOENT) => Ok(None),
                    _ => Err(at(path, e)),
                };
            }
            Err(Errno::ACCESS) if !opened_up => {
                opened_up = true;
                let (parent, name) = parent_of(path)?;
                open_up(&parent, name).map_err(|e| at(path, e))?;
            }
            Err(e) => return Err(at(path, e)),
        }
    }
}

/// `rmdir(path)`, for a path of any length.
fn remove_dir(path: &Path) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(CWD, path, AtFlags::REMOVEDIR) {
        Err(Errno::NAMETOOLONG) => {
            let (parent, name) = parent_of(path).map_err(|_| Errno::NAMETOOLONG)?;
            rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)
        }
        other => other,
    }
}

/// The directory holding `path`, opened, and `path`'s last name.
fn parent_of(path: &Path) -> io::Result<(OwnedFd, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no name to remove"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fd = longpath::open_dir(parent).map_err(|e| at(parent, e))?;
    Ok((fd, name))
}

/// Makes directory `name` in `dir` 0700, without following a symlink: it is
/// opened as a path (`O_PATH`, which needs no permission on it) and changed
/// through `/proc/self/fd`.
fn open_up(dir: &OwnedFd, name: impl rustix::path::Arg) -> rustix::io::Result<()> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(0o700))
}

/// An error of `path`, keeping its kind.
/// Opens directory `name` in `dir`, never onto another mount (a bind
/// mount inside a snapshot's tree): deleting through it would delete what
/// it shows, outside the store (audit: `rm` emptied a bind mount's source).
/// Such a directory is `EXDEV`. Without `openat2` (before Linux 5.6), a
/// plain open.
fn open_below(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<OwnedFd> {
    use rustix::fs::ResolveFlags;
    match rustix::fs::openat2(dir, name, DIR_FLAGS, Mode::empty(), ResolveFlags::NO_XDEV) {
        Err(Errno::NOSYS) => rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()),
        other => other,
    }
}

fn at(path: &Path, e: Errno) -> io::Error {
    let failed = PathError {
        path: path.to_path_buf(),
        errno: e,
    };
    io::Error::new(io::Error::from(e).kind(), failed)
}

/// An error of one path of the tree. It keeps the errno, which an
/// `io::Error` made with a message loses, for [`held_by_attribute`].
#[derive(Debug)]
struct PathError {
    path: PathBuf,
    errno: Errno,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.path.display(),
            io::Error::from(self.errno)
        )
    }
}

impl std::error::Error for PathError {}

/// When [`remove_tree`] failed with `EPERM` on a path that is immutable or
/// append-only (`chattr +i`, `+a`), or that is in a directory that is: the
/// path or directory with the flag. Such a flag stops root too, until it
/// is taken off.
pub(crate) fn held_by_attribute(e: &io::Error) -> Option<PathBuf> {
    let failed = e.get_ref()?.downcast_ref::<PathError>()?;
    if failed.errno != Errno::PERM {
        return None;
    }
    let path = failed.path.as_path();
    [Some(path), path.parent()]
        .into_iter()
        .flatten()
        .find(|p| has_blocking_attribute(p))
        .map(Path::to_path_buf)
}

/// Whether `path` (not followed if a symlink) is immutable or append-only.
fn has_blocking_attribute(path: &Path) -> bool {
    use rustix::fs::{StatxAttributes, StatxFlags};
    let Ok((dir, name)) = parent_of(path) else {
        return false;
    };
    let blocking = StatxAttributes::IMMUTABLE | StatxAttributes::APPEND;
    rustix::fs::statx(&dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::empty())
        .is_ok_and(|st| st.stx_attributes.intersects(blocking))
}

struct Walk<'p> {
    root: &'p Path,
    /// From the root down to the directory being emptied.
    frames: Vec<Frame>,
    /// `frames[lo..]` are open, the others closed.
    lo: usize,
    /// The most directories open at once.
    most: usize,
    /// The name being handled, NUL-terminated.
    name: Vec<u8>,
    /// The `getdents` buffer.
    listing: Vec<MaybeUninit<u8>>,
}

impl Walk<'_> {
    /// Empties the root (it stays, for the caller to remove).
    fn run(&mut self) -> io::Result<()> {
        while let Some(top) = self.frames.len().checked_sub(1) {
            match self.next(top)? {
                Some(kind) => self.entry(top, kind)?,
                None if top == 0 => break,
                None => self.up()?,
            }
        }
        Ok(())
    }

    /// The path of `frames[..=i]`, for errors and for reopening by path.
    fn path(&self, i: usize) -> std::path::PathBuf {
        let mut path = self.root.as_os_str().as_bytes().to_vec();
        for f in &self.frames[1..=i] {
            path.push(b'/');
            path.extend_from_slice(f.name().to_bytes());
        }
        std::path::PathBuf::from(OsStr::from_bytes(&path))
    }

    fn error(&self, i: usize, e: Errno) -> io::Error {
        at(&self.path(i), e)
    }

    fn error_in(&self, i: usize, e: Errno) -> io::Error {
        let name = CStr::from_bytes_with_nul(&self.name).expect("a NUL-terminated name");
        at(&self.path(i).join(OsStr::from_bytes(name.to_bytes())), e)
    }

    /// The next entry of `frames[top]` into `self.name`, and its kind; None
    /// at the end of its listing.
    fn next(&mut self, top: usize) -> io::Result<Option<u8>> {
        loop {
            let f = &mut self.frames[top];
            if f.pos < f.pending.len() {
                let kind = f.pending[f.pos];
                let start = f.pos + 1;
                let end = start
                    + f.pending[start..]
                        .iter()
                        .position(|&b| b == 0)
                        .expect("a NUL-terminated name");
                self.name.clear();
                self.name.extend_from_slice(&f.pending[start..=end]);
                f.pos = end + 1;
                return Ok(Some(kind));
            }
            if f.listed {
                return Ok(None);
            }
            self.list(top)?;
        }
    }

    /// Reads the next `getdents` of `frames[top]` into its pending entries.
    fn list(&mut self, top: usize) -> io::Result<()> {
        let Walk {
            frames, listing, ..
        } = self;
        let f = &mut frames[top];
        f.pending.clear();
        f.pos = 0;
        let fd = f.fd.as_ref().expect("an open directory");
        let mut dir = RawDir::new(fd, &mut listing[..]);
        let failed = loop {
            let entry = match dir.next() {
                None => {
                    f.listed = true;
                    return Ok(());
                }
                Some(Ok(entry)) => entry,
                Some(Err(e)) => break e,
            };
            let name = entry.file_name().to_bytes_with_nul();
            if name != b".\0" && name != b"..\0" {
                f.pending.push(match entry.file_type() {
                    FileType::Directory => IS_DIR,
                    FileType::Unknown => UNKNOWN,
                    _ => IS_OTHER,
                });
                f.pending.extend_from_slice(name);
            }
            if dir.is_buffer_empty() && !f.pending.is_empty() {
                return Ok(());
            }
        };
        Err(self.error(top, failed))
    }

    /// Handles entry `self.name` of `frames[top]`.
    fn entry(&mut self, top: usize, kind: u8) -> io::Result<()> {
        let dir = self.frames[top].fd();
        let name = CStr::from_bytes_with_nul(&self.name).expect("a NUL-terminated name");
        let is_dir = match kind {
            IS_DIR => true,
            IS_OTHER => false,
            _ => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                Err(Errno::NOENT) => return Ok(()),
                Err(e) => return Err(self.error_in(top, e)),
            },
        };
        if is_dir {
            self.down(top)
        } else {
            self.unlink(top)
        }
    }

    /// Unlinks `self.name` in `frames[top]` (not a directory).
    fn unlink(&mut self, top: usize) -> io::Result<()> {
        loop {
            let name = CStr::from_bytes_with_nul(&self.name).expect("a NUL-terminated name");
            match rustix::fs::unlinkat(self.frames[top].fd(), name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                // A directory after all (made in place of what was listed).
                Err(Errno::ISDIR) => return self.down(top),
                Err(e @ (Errno::ACCESS | Errno::PERM)) => self.open_up_frame(top, e)?,
                Err(e) => return Err(self.error_in(top, e)),
            }
        }
    }

    /// Makes `frames[i]` 0700 so its entries can be deleted; `e` is the
    /// error to give when it was already.
    fn open_up_frame(&mut self, i: usize, e: Errno) -> io::Result<()> {
        if self.frames[i].opened_up {
            return Err(self.error_in(i, e));
        }
        self.frames[i].opened_up = true;
        rustix::fs::fchmod(self.frames[i].fd(), Mode::from_raw_mode(0o700))
            .map_err(|_| self.error_in(i, e))
    }

    /// Opens directory `self.name` of `frames[top]` and goes into it.
    fn down(&mut self, top: usize) -> io::Result<()> {
        let mut tried = false;
        let fd = loop {
            let name = CStr::from_bytes_with_nul(&self.name).expect("a NUL-terminated name");
            let dir = self.frames[top].fd();
            match open_below(dir, name) {
                Ok(fd) => break fd,
                Err(Errno::NOENT) => return Ok(()),
                Err(Errno::XDEV) => {
                    let name = CStr::from_bytes_with_nul(&self.name).expect("NUL");
                    let path = self.path(top).join(OsStr::from_bytes(name.to_bytes()));
                    return Err(io::Error::new(
                        io::Error::from(Errno::XDEV).kind(),
                        format!(
                            "{}: another file system is mounted there; nothing is deleted through it",
                            path.display()
                        ),
                    ));
                }
                // Not a directory any more: unlinked as what it is.
                Err(Errno::NOTDIR | Errno::LOOP) => return self.unlink(top),
                Err(e @ Errno::ACCESS) if !tried => {
                    tried = true;
                    // Searching it or listing it is not allowed.
                    if !self.frames[top].opened_up {
                        self.open_up_frame(top, e)?;
                    }
                    let name = CStr::from_bytes_with_nul(&self.name).expect("NUL");
                    match open_up(self.frames[top].fd(), name) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(_) => return Err(self.error_in(top, e)),
                    }
                }
                Err(e) => return Err(self.error_in(top, e)),
            }
        };
        self.push(fd, 0)
    }

    /// Goes into directory `fd`, named `self.name`, closing the shallowest
    /// open one if [`OPEN`] are.
    fn push(&mut self, fd: OwnedFd, relisted: u8) -> io::Result<()> {
        if self.frames.len() - self.lo == OPEN {
            let lo = self.lo;
            let st = rustix::fs::fstat(self.frames[lo].fd()).map_err(|e| self.error(lo, e))?;
            let f = &mut self.frames[lo];
            f.id = (st.st_dev, st.st_ino);
            f.fd = None;
            // Listed again from its start when it is reopened.
            f.pending = Vec::new();
            f.pos = 0;
            f.listed = false;
            self.lo += 1;
        }
        self.frames.push(Frame::new(fd, &self.name, relisted));
        self.most = self.most.max(self.frames.len() - self.lo);
        Ok(())
    }

    /// `frames[top]` is empty: removes it, back in its parent.
    fn up(&mut self) -> io::Result<()> {
        let top = self.frames.len() - 1;
        if self.lo == top && !self.reopen_parent(top)? {
            // Its parent is gone, so it is too: another process removed
            // them. On with the closest directory still there.
            self.frames.truncate(top - 1);
            return self.reopen_top();
        }
        let mut child = self.frames.pop().expect("a frame");
        child.fd = None;
        let parent = top - 1;
        loop {
            match rustix::fs::unlinkat(self.frames[parent].fd(), child.name(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                Err(e @ (Errno::NOTEMPTY | Errno::EXIST)) => {
                    // Something was made in it meanwhile: listed again.
                    if child.relisted >= RELISTS {
                        self.name = child.name.clone();
                        return Err(self.error_in(parent, e));
                    }
                    let fd = match rustix::fs::openat(
                        self.frames[parent].fd(),
                        child.name(),
                        DIR_FLAGS,
                        Mode::empty(),
                    ) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) => return Ok(()),
                        Err(e) => {
                            self.name = child.name.clone();
                            return Err(self.error_in(parent, e));
                        }
                    };
                    self.name = child.name.clone();
                    return self.push(fd, child.relisted + 1);
                }
                Err(e @ (Errno::ACCESS | Errno::PERM)) => {
                    self.name = child.name.clone();
                    self.open_up_frame(parent, e)?;
                }
                Err(e) => {
                    self.name = child.name.clone();
                    return Err(self.error_in(parent, e));
                }
            }
        }
    }

    /// Reopens the closed parent of open `frames[top]`: as its `..`, or
    /// else by its path, either checked to be the directory closed. False
    /// when it is gone.
    fn reopen_parent(&mut self, top: usize) -> io::Result<bool> {
        let parent = top - 1;
        let want = self.frames[parent].id;
        let by_dotdot = rustix::fs::openat(self.frames[top].fd(), c"..", DIR_FLAGS, Mode::empty())
            .ok()
            .filter(|fd| rustix::fs::fstat(fd).is_ok_and(|st| (st.st_dev, st.st_ino) == want));
        let fd = match by_dotdot {
            Some(fd) => fd,
            None => match self.reopen_by_path(parent)? {
                Some(fd) => fd,
                None => return Ok(false),
            },
        };
        self.frames[parent].fd = Some(fd);
        self.lo = parent;
        Ok(true)
    }

    /// Opens closed `frames[i]` by its path; None when it is gone, an error
    /// when another directory is there (the tree was moved meanwhile).
    fn reopen_by_path(&self, i: usize) -> io::Result<Option<OwnedFd>> {
        let path = self.path(i);
        match longpath::open_dir(&path) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| at(&path, e))?;
                if (st.st_dev, st.st_ino) == self.frames[i].id {
                    Ok(Some(fd))
                } else {
                    Err(io::Error::other(format!(
                        "{}: another directory took its place while it was being removed",
                        path.display()
                    )))
                }
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(at(&path, e)),
        }
    }

    /// After directories were found gone: reopens the deepest one of
    /// `frames` still there, dropping those that are not.
    fn reopen_top(&mut self) -> io::Result<()> {
        while let Some(top) = self.frames.len().checked_sub(1) {
            if self.frames[top].fd.is_some() {
                return Ok(());
            }
            match self.reopen_by_path(top)? {
                Some(fd) => {
                    self.frames[top].fd = Some(fd);
                    self.lo = top;
                    return Ok(());
                }
                None => {
                    self.frames.pop();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn mkdir_in(dir: &OwnedFd, name: &str) -> OwnedFd {
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)).unwrap();
        rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()).unwrap()
    }

    /// Descriptors of this process open on `tree` or below it. Only those:
    /// other tests run in parallel threads and open and close their own
    /// (a count of all of them made this test fail in CI now and then).
    fn open_fds_in(tree: &Path) -> usize {
        let tree = tree.as_os_str().as_encoded_bytes();
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.as_os_str().as_encoded_bytes().starts_with(tree))
            .count()
    }

    /// A tree deeper than std's walk could remove under a low descriptor
    /// limit, with paths far longer than `PATH_MAX`, files and symlinks at
    /// every level, wide directories and read-only ones: all gone, with at
    /// most `OPEN` directories open at once, and what the symlinks point
    /// to (outside the tree, and inside it) untouched.
    #[test]
    fn removes_deep_long_trees_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "kept").unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).unwrap();
        let name = "n".repeat(100);
        let mut dir = rustix::fs::open(&tree, DIR_FLAGS, Mode::empty()).unwrap();
        let depth = 1_500;
        for level in 0..depth {
            rustix::fs::symlinkat(&outside, &dir, "out").unwrap();
            rustix::fs::symlinkat("out/keep", &dir, "keep-link").unwrap();
            if level % 100 == 0 {
                // A wide directory beside the chain, and one read-only.
                let wide = mkdir_in(&dir, "wide");
                for i in 0..300 {
                    let f = rustix::fs::openat(
                        &wide,
                        format!("f{i}").as_str(),
                        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .unwrap();
                    drop(f);
                }
                let ro = mkdir_in(&dir, "ro");
                drop(mkdir_in(&ro, "inner"));
                rustix::fs::fchmod(&ro, Mode::from_raw_mode(0o555)).unwrap();
            }
            dir = mkdir_in(&dir, &name);
        }
        drop(dir);
        let deep: std::path::PathBuf = std::iter::repeat_n(name.as_str(), depth).collect();
        assert!(tree.join(&deep).as_os_str().len() > 4096);
        let most = remove_counting(&tree).unwrap();
        // However deep the tree: a handful, not one per level.
        assert!(most <= 32, "{most} directories open at once");
        assert!(most > 1, "{most}");
        assert_eq!(open_fds_in(&tree), 0, "descriptors left open");
        assert!(!tree.exists());
        assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "kept");
        // Nothing there, or a symlink there (to a directory): no error, and
        // the symlink alone goes.
        remove_tree(&tree).unwrap();
        std::os::unix::fs::symlink(&outside, &tree).unwrap();
        remove_tree(&tree).unwrap();
        assert!(tree.symlink_metadata().is_err());
        assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "kept");
        // A file is not a tree.
        fs::write(&tree, "").unwrap();
        assert_eq!(
            remove_tree(&tree).unwrap_err().kind(),
            io::ErrorKind::NotADirectory
        );
    }

    /// A file system mounted inside the tree stops the removal there with
    /// an error naming it; what it shows is untouched (audit: `rm` emptied
    /// a bind mount's source).
    #[test]
    fn never_deletes_through_a_mount() {
        if !rustix::process::geteuid().is_root() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "needs root");
            eprintln!("skipping never_deletes_through_a_mount: mounting needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("sub/precious"), "keep").unwrap();
        let tree = tmp.path().join("tree");
        let point = tree.join("a/mnt");
        std::fs::create_dir_all(&point).unwrap();
        std::fs::write(tree.join("a/other"), "x").unwrap();
        rustix::mount::mount_bind(&source, &point).unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let guard = Unmount(&point);
        let err = remove_tree(&tree).unwrap_err();
        assert!(err.to_string().contains("mounted there"), "{err}");
        assert!(err.to_string().contains("a/mnt"), "{err}");
        assert_eq!(
            std::fs::read_to_string(source.join("sub/precious")).unwrap(),
            "keep"
        );
        drop(guard);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(source.join("sub/precious").exists());
    }

    /// A shallow tree is walked with one directory open per level.
    #[test]
    fn shallow_trees_keep_few_open() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("t");
        fs::create_dir_all(tree.join("a/b/c")).unwrap();
        fs::write(tree.join("a/b/c/f"), "").unwrap();
        fs::write(tree.join("a/f"), "").unwrap();
        assert_eq!(remove_counting(&tree).unwrap(), 4);
        assert!(!tree.exists());
    }
}
