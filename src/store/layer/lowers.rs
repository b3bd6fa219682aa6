//! The layers below, for the overlay driver: the parent chain's upper
//! directories, merged as overlayfs merges them (the nearest layer with an
//! entry decides, a whiteout hides what is under it, an opaque directory
//! hides the content of the layers under it), and only read. The extractor
//! asks them what shows at a path (to refuse a path through a symlink or a
//! file below, and to make whiteouts and opaque markers only where they hide
//! something) and what a directory's metadata is (for a copy-up).
//!
//! Apart from the extractor: they are never written, and neither a root
//! layer nor the native driver opens them.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, ResolveFlags, Timespec, Uid};
use rustix::io::Errno;

use super::changes::{lstat, xattrs_fd, xattrs_of};
use super::extract::{Found, Meta, list_entries};
use super::{DIR_FLAGS, LayerError, Result, cstr, io_err};

/// What the merged lower layers show at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Below {
    Nothing,
    Dir,
    Symlink,
    /// Any other non-directory.
    Other,
}

/// What one lower layer has at a path.
enum Probe {
    Missing,
    Whiteout,
    Dir { opaque: bool },
    Symlink,
    Other,
}

/// The merged lowers at one directory of the path last looked up.
pub(super) struct Level {
    /// The component (empty for the root).
    name: Vec<u8>,
    pub(super) kind: Below,
    /// The layers whose directory here shows through, nearest first, down to
    /// the first opaque one; none when this layer hid the path.
    pub(super) layers: Vec<usize>,
    /// Those directories, open (at the deepest levels, and when few): the
    /// level under is probed through them, a name each, not by its path
    /// from the layers' roots, which costs as much as it is deep.
    fds: Option<Vec<OwnedFd>>,
}

/// Levels of [`Lowers::path`] whose directories are held open.
const LEVELS_HELD: usize = 2;

/// Lower layers kept open (the nearest); deeper ones are opened when
/// needed: a committed chain may be deeper than the open-file limit.
const HELD_LOWERS: usize = 64;

/// The parent chain's trees, nearest first: what the overlay applier needs
/// to know of the layers below (overlayfs's own lookup rules: the first
/// layer with an entry decides, a whiteout hides the layers under it, an
/// opaque directory hides their content). Never written to.
pub(super) struct Lowers {
    paths: Vec<PathBuf>,
    held: Vec<OwnedFd>,
    opaque_xattr: &'static CStr,
    /// Paths this layer made opaque directories or whiteouts: the lowers
    /// show nothing at or under them.
    hidden: HashSet<Vec<u8>>,
    /// The path last looked up, root first: consecutive entries of an
    /// archive mostly share their directories.
    path: Vec<Level>,
}

impl Lowers {
    /// None without lowers: a root layer pays nothing.
    pub(super) fn open(paths: &[PathBuf], user_xattr: bool) -> Result<Option<Lowers>> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut held = Vec::with_capacity(paths.len().min(HELD_LOWERS));
        for p in paths.iter().take(HELD_LOWERS) {
            held.push(open_lower(p)?);
        }
        let root = Level {
            name: Vec::new(),
            kind: Below::Dir,
            layers: (0..paths.len()).collect(),
            fds: None,
        };
        Ok(Some(Lowers {
            paths: paths.to_vec(),
            held,
            opaque_xattr: opaque_xattr(user_xattr),
            hidden: HashSet::new(),
            path: vec![root],
        }))
    }

    /// Runs `f` on the root of lower layer `i`.
    fn with_root<T>(&self, i: usize, f: impl FnOnce(BorrowedFd<'_>) -> Result<T>) -> Result<T> {
        match self.held.get(i) {
            Some(fd) => f(fd.as_fd()),
            None => f(open_lower(&self.paths[i])?.as_fd()),
        }
    }

    /// The merged lowers at directory `comps`.
    pub(super) fn at(&mut self, comps: &[&[u8]]) -> Result<&Level> {
        let mut keep = 1;
        while keep < self.path.len()
            && keep <= comps.len()
            && self.path[keep].name == comps[keep - 1]
        {
            keep += 1;
        }
        self.path.truncate(keep);
        for i in keep - 1..comps.len() {
            let level = self.step(&self.path[i], i, comps)?;
            self.path.push(level);
            if let Some(old) = self.path.len().checked_sub(LEVELS_HELD + 1) {
                self.path[old].fds = None;
            }
        }
        Ok(&self.path[comps.len()])
    }

    /// The merged lowers at `comps[..=i]`, under `parent`, the level of
    /// `comps[..i]`.
    fn step(&self, parent: &Level, i: usize, comps: &[&[u8]]) -> Result<Level> {
        let name = comps[i];
        let rel = || comps[..=i].join(&b'/');
        let mut level = Level {
            name: name.to_vec(),
            kind: Below::Nothing,
            layers: Vec::new(),
            fds: (parent.layers.len() <= HELD_LOWERS).then(Vec::new),
        };
        let cname = cstr(name);
        for (j, &l) in parent.layers.iter().enumerate() {
            let (probe, fd) = if i == 0 {
                self.with_root(l, |root| self.probe_in(l, root, &cname, &rel))?
            } else if let Some(fds) = &parent.fds {
                self.probe_in(l, fds[j].as_fd(), &cname, &rel)?
            } else {
                self.probe(l, &rel())?
            };
            match probe {
                Probe::Missing => continue,
                Probe::Dir { opaque } => {
                    level.kind = Below::Dir;
                    level.layers.push(l);
                    if let (Some(fds), Some(fd)) = (&mut level.fds, fd) {
                        fds.push(fd);
                    } else {
                        level.fds = None;
                    }
                    if opaque {
                        break;
                    }
                }
                // A whiteout ends the search, and so does a non-directory
                // (hidden by a directory found above, if any).
                found => {
                    if level.kind == Below::Nothing {
                        level.kind = match found {
                            Probe::Symlink => Below::Symlink,
                            Probe::Other => Below::Other,
                            _ => Below::Nothing,
                        };
                    }
                    break;
                }
            }
        }
        if !self.hidden.is_empty() && self.hidden.contains(&rel()) {
            level.kind = Below::Nothing;
            level.layers.clear();
            level.fds = None;
        }
        Ok(level)
    }

    /// What lower layer `l` has at `name` in its directory `dir` (at
    /// `rel()`, for errors), and that directory open if it is one.
    fn probe_in(
        &self,
        l: usize,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: &dyn Fn() -> Vec<u8>,
    ) -> Result<(Probe, Option<OwnedFd>)> {
        let failed = |e: Errno| self.unreadable(l, &rel(), e);
        let opened = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty());
        self.classify(
            opened,
            || rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
            &failed,
        )
    }

    /// What lower layer `i` itself has at `rel`, by its path.
    fn probe(&self, i: usize, rel: &[u8]) -> Result<(Probe, Option<OwnedFd>)> {
        let c = cstr(rel);
        let failed = |e: Errno| self.unreadable(i, rel, e);
        self.with_root(i, |root| {
            let opened = open_beneath(root, &c, OFlags::RDONLY | OFlags::DIRECTORY);
            let stat = || rustix::fs::fstat(open_beneath(root, &c, OFlags::PATH)?);
            self.classify(opened, stat, &failed)
        })
    }

    /// A probe's answer from its attempt to open the entry as a directory
    /// (`opened`) and, when it is not one, the entry's own `stat`.
    fn classify(
        &self,
        opened: rustix::io::Result<OwnedFd>,
        stat: impl FnOnce() -> rustix::io::Result<rustix::fs::Stat>,
        failed: &dyn Fn(Errno) -> LayerError,
    ) -> Result<(Probe, Option<OwnedFd>)> {
        match opened {
            Ok(fd) => {
                let opaque = has_opaque_xattr(&fd, self.opaque_xattr).map_err(failed)?;
                Ok((Probe::Dir { opaque }, Some(fd)))
            }
            Err(Errno::NOENT) => Ok((Probe::Missing, None)),
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let st = stat().map_err(failed)?;
                let probe = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                    rustix::fs::FileType::CharacterDevice if st.st_rdev == 0 => Probe::Whiteout,
                    rustix::fs::FileType::Symlink => Probe::Symlink,
                    _ => Probe::Other,
                };
                Ok((probe, None))
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// The error of a failed read in lower layer `l` at `rel`.
    fn unreadable(&self, l: usize, rel: &[u8], e: Errno) -> LayerError {
        io_err(
            format!(
                "cannot read {}",
                self.paths[l].join(OsStr::from_bytes(rel)).display()
            ),
            e,
        )
    }

    /// Owner, mode, times and xattrs (overlay's own left out) of the
    /// directory the merged lowers show at `comps`, if they show one: the
    /// nearest layer's, as overlayfs copies it up.
    pub(super) fn dir_meta(&mut self, comps: &[&[u8]]) -> Result<Option<Meta>> {
        self.at(comps)?;
        let level = &self.path[comps.len()];
        let (Below::Dir, Some(&i)) = (level.kind, level.layers.first()) else {
            return Ok(None);
        };
        let p = || self.paths[i].join(OsStr::from_bytes(&comps.join(&b'/')));
        let (md, xattrs) = match &level.fds {
            // The directory itself, open.
            Some(fds) => {
                let fd = fds[0].as_fd();
                let md = rustix::fs::fstat(fd)
                    .map_err(|e| io_err(format!("cannot read {}", p().display()), e))?;
                let xattrs = xattrs_fd(fd).map_err(|e| {
                    io_err(format!("cannot read the xattrs of {}", p().display()), e)
                })?;
                let t = |s: i64, n: u64| (s, n as i64);
                let meta = (
                    md.st_mode,
                    md.st_uid,
                    md.st_gid,
                    t(md.st_mtime as i64, md.st_mtime_nsec as u64),
                    t(md.st_atime as i64, md.st_atime_nsec as u64),
                );
                (meta, xattrs)
            }
            // No symlink on the way: `at` opened every component beneath.
            None => {
                let p = p();
                let md = lstat(&p)?;
                let meta = (
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    (md.mtime(), md.mtime_nsec()),
                    (md.atime(), md.atime_nsec()),
                );
                (meta, xattrs_of(&p)?)
            }
        };
        let xattrs = xattrs.into_iter().map(|(k, v)| (cstr(&k), v)).collect();
        let (mode, uid, gid, mtime, atime) = md;
        let time = |sec: i64, nsec: i64| Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        Ok(Some(Meta {
            mode: mode & 0o7777,
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mtime: time(mtime.0, mtime.1),
            atime: time(atime.0, atime.1),
            xattrs,
        }))
    }

    /// The names the merged lowers show in the root.
    pub(super) fn root_names(&self) -> Result<Vec<CString>> {
        // Name -> whether it shows: the nearest layer having it decides.
        let mut seen: HashMap<CString, bool> = HashMap::new();
        for i in 0..self.paths.len() {
            let failed =
                |e: io::Error| io_err(format!("cannot read {}", self.paths[i].display()), e);
            self.with_root(i, |root| {
                for (name, found) in list_entries(root).map_err(failed)? {
                    seen.entry(name).or_insert(found != Found::Whiteout);
                }
                Ok(())
            })?;
        }
        let mut names: Vec<CString> = seen
            .into_iter()
            .filter_map(|(name, shows)| shows.then_some(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// What was hidden at and under `rel` shows again (the upper directory
    /// that hid it is gone).
    pub(super) fn unhide(&mut self, rel: &[u8]) {
        let inside = [rel, b"/"].concat();
        self.hidden
            .retain(|h| h.as_slice() != rel && !h.starts_with(&inside));
        let depth = rel.iter().filter(|b| **b == b'/').count() + 1;
        self.path.truncate(depth);
    }

    /// From here on the lowers show nothing at or under `rel` (this layer
    /// made it opaque or a whiteout).
    pub(super) fn hide(&mut self, rel: &[u8]) {
        self.hidden.insert(rel.to_vec());
        // Levels of shorter paths stay true.
        let depth = rel.iter().filter(|b| **b == b'/').count() + 1;
        self.path.truncate(depth);
    }
}

fn open_lower(p: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(format!("cannot open the lower layer {}", p.display()), e))
}

/// Opens `rel` beneath `root` without following any symlink (the final
/// one included: `O_PATH` gives the link itself).
fn open_beneath(root: BorrowedFd<'_>, rel: &CStr, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
        // No openat2 (before Linux 5.6), a rename raced it, or `rel` is
        // longer than PATH_MAX: one component at a time.
        Err(Errno::NOSYS | Errno::AGAIN | Errno::NAMETOOLONG) => {}
        other => return other,
    }
    let mut cur: Option<OwnedFd> = None;
    let mut parts = rel.to_bytes().split(|b| *b == b'/').peekable();
    while let Some(part) = parts.next() {
        let how = if parts.peek().is_some() {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        } else {
            flags
        };
        let at = cur.as_ref().map_or(root, |fd| fd.as_fd());
        cur = Some(rustix::fs::openat(
            at,
            cstr(part).as_c_str(),
            how,
            Mode::empty(),
        )?);
    }
    cur.ok_or(Errno::INVAL)
}

pub(super) fn opaque_xattr(user_xattr: bool) -> &'static CStr {
    if user_xattr {
        c"user.overlay.opaque"
    } else {
        c"trusted.overlay.opaque"
    }
}

fn has_opaque_xattr(fd: &OwnedFd, name: &CStr) -> rustix::io::Result<bool> {
    let mut v = [0u8; 1];
    match rustix::fs::fgetxattr(fd, name, &mut v[..]) {
        Ok(n) => Ok(n == 1 && v[0] == b'y'),
        Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => Ok(false),
        Err(e) => Err(e),
    }
}
