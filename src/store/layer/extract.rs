//! Unpacking into `dest`: the [`Extractor`] writes each member the reader
//! parsed, reaching its parent from directory descriptors beneath `dest`
//! (never through a symlink), creating the entry and recording what this
//! layer made, so that whiteouts and opaque markers ([`whiteouts`]) only hide
//! what the layers below have. Directory metadata is set at the end.
//!
//! Apart from the reader, as it knows nothing of the tar format, and from the
//! layers below ([`super::lowers`]), which it only asks what they show at a
//! path.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::changes::xattr_call;
use super::lowers::{Below, Lowers, opaque_xattr};
use super::reader::{Member, Stream, context, header_device, header_number, not_a_number};
use super::{
    ApplyOptions, DIR_FLAGS, LayerError, OPAQUE_MARKER, Result, WHITEOUT_PREFIX, Whiteouts, cstr,
    invalid, io_err, is_overlay_xattr, path_order, show, sparse,
};

mod whiteouts;

/// The xattr namespaces Linux has: a name in any other is EOPNOTSUPP on
/// every file system.
const XATTR_NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
/// `POSIX_ACL_XATTR_VERSION`: the one version of the POSIX ACL xattr Linux
/// reads (a little-endian 32-bit header, then 8-byte entries).
const ACL_XATTR_VERSION: u32 = 2;

/// Refuses, as `invalid` naming the entry, an xattr of the layer that no
/// Linux file can have, before it is set. The kernel says EOPNOTSUPP for a
/// namespace it does not have, a POSIX ACL of another version
/// (`posix_acl_from_xattr`) and an ACL on a symlink, the same error as a
/// file system that cannot store a good xattr (which stays `unsupported`),
/// and EACCES for a default ACL on a non-directory. The ACL's entries are
/// the kernel's to judge (EINVAL, `invalid` too: [`Extractor::xattr_error`]).
fn check_xattr(entry: &str, kind: &Kind, name: &[u8], value: &[u8]) -> Result<()> {
    let refuse = |why: &str| {
        Err(invalid(format!(
            "entry `{entry}`: xattr `{}` ({} bytes): {why}",
            show(name),
            value.len()
        )))
    };
    if !XATTR_NAMESPACES.iter().any(|ns| name.starts_with(ns)) {
        return refuse(
            "Linux has no such namespace (only `user.`, `trusted.`, `security.` and `system.`)",
        );
    }
    if name != ACL_ACCESS && name != ACL_DEFAULT {
        return Ok(());
    }
    if matches!(kind, Kind::Symlink) {
        return refuse("Linux has no ACLs on symlinks");
    }
    // Empty: no ACL (the kernel removes it).
    if value.is_empty() {
        return Ok(());
    }
    if name == ACL_DEFAULT && !matches!(kind, Kind::Dir) {
        return refuse("only directories have a default ACL");
    }
    let Some((header, _)) = value
        .split_first_chunk::<4>()
        .filter(|(_, entries)| entries.len().is_multiple_of(8))
    else {
        return refuse("not a POSIX ACL (a 4-byte header and 8-byte entries)");
    };
    let version = u32::from_le_bytes(*header);
    if version != ACL_XATTR_VERSION {
        return refuse(&format!(
            "a POSIX ACL of version {version}, where Linux reads version {ACL_XATTR_VERSION}"
        ));
    }
    Ok(())
}

/// Linux's longest path, with its NUL (a symlink's target is one).
const PATH_MAX: usize = 4096;
const META_PREFIX: &[u8] = b".wh..wh.";

/// Metadata of an entry, applied after its data.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) mtime: Timespec,
    pub(super) atime: Timespec,
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
}

struct DirMeta {
    meta: Meta,
    /// The directory existed before this layer (its xattrs are replaced).
    existed: bool,
}

enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

pub(super) struct Extractor<'o> {
    opts: &'o ApplyOptions,
    dest: PathBuf,
    root: Rc<OwnedFd>,
    /// The directories last opened.
    trail: Trail,
    /// Paths this layer created (entries and implicit parents), directories
    /// that hold something it created, overlay's copies-up.
    marks: Marks,
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// Overlay: directories made in the upper only to hold whiteouts or be
    /// opaque, with nothing of this layer in them (yet): a whiteout or an
    /// opaque marker over them later removes them, as native deletes the
    /// directory they stand for. Nodes of `marks`.
    containers: HashSet<u32>,
    privileged: bool,
    proc_fd: bool,
    /// This process's effective uid and gid and its umask (None if the
    /// umask cannot be read): what a file it creates starts with.
    creator: Option<(Uid, Gid, u32)>,
    /// What a file created in the directory at this path starts with.
    new_files: Option<(Vec<u8>, Option<NewFiles>)>,
    /// Overlay driver: the layers below, when there are any.
    lowers: Option<Lowers>,
}

/// Directories of `dest` held open at the deepest levels of the trail.
const HELD: usize = 16;

/// The directories along the path last opened in `dest`: the next one,
/// mostly this one's child, parent or sibling, is reached from them by an
/// `openat` of one name a level (or a `..`, checked), however deep the path,
/// not by a walk from the root, which costs as much as the path is deep.
struct Trail {
    /// The path, `/`-separated, and the end of each of its names in it.
    rel: Vec<u8>,
    ends: Vec<usize>,
    /// The directory at each level, held only at the deepest `HELD` (and
    /// where one was reached again); always at the deepest.
    fds: Vec<Option<Rc<OwnedFd>>>,
    /// Counts the changes.
    version: u64,
}

impl Trail {
    fn new() -> Trail {
        Trail {
            rel: Vec::new(),
            ends: Vec::new(),
            fds: Vec::new(),
            version: 0,
        }
    }

    fn clear(&mut self) {
        self.truncate(0);
    }

    fn truncate(&mut self, depth: usize) {
        self.version += 1;
        if depth < self.ends.len() {
            self.ends.truncate(depth);
            self.fds.truncate(depth);
            self.rel.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    /// How many leading names of `comps` the trail has.
    fn common(&self, comps: &[&[u8]]) -> usize {
        let mut start = 0;
        for (i, c) in comps.iter().enumerate().take(self.ends.len()) {
            if self.rel[start..self.ends[i]] != **c {
                return i;
            }
            start = self.ends[i] + 1;
        }
        comps.len().min(self.ends.len())
    }

    fn push(&mut self, name: &[u8], fd: Rc<OwnedFd>) {
        self.version += 1;
        if !self.rel.is_empty() {
            self.rel.push(b'/');
        }
        self.rel.extend_from_slice(name);
        self.ends.push(self.rel.len());
        self.fds.push(Some(fd));
        if self.fds.len() > HELD {
            let old = self.fds.len() - HELD - 1;
            self.fds[old] = None;
        }
    }

    /// Something at `rel` is removed: the trail ends above it.
    fn removed(&mut self, rel: &[u8]) {
        if self.rel.starts_with(rel) && (self.rel.len() == rel.len() || self.rel[rel.len()] == b'/')
        {
            self.truncate(rel.iter().filter(|b| **b == b'/').count());
        }
    }

    /// The trail cut to its first `depth` levels, and the directory there;
    /// None when that one is not held and too far to reach by `..`.
    fn up_to(&mut self, depth: usize, root: &Rc<OwnedFd>) -> Option<Rc<OwnedFd>> {
        if depth == 0 {
            self.clear();
            return Some(root.clone());
        }
        if depth > self.ends.len() {
            return None;
        }
        // The nearest held level at or below `depth`.
        let held = (depth..=self.ends.len())
            .take(MOST_UP + 1)
            .find(|&d| self.fds[d - 1].is_some())?;
        for d in (depth..held).rev() {
            // Level d from level d + 1 by `..`, checked to hold it under its
            // name (nothing moves directories in `dest`; this makes sure).
            let child = self.fds[d].clone()?;
            let start = self.ends[d - 1] + 1;
            let name = cstr(&self.rel[start..self.ends[d]]);
            let parent = rustix::fs::openat(&*child, c"..", DIR_FLAGS, Mode::empty()).ok()?;
            let a = rustix::fs::statat(&parent, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
            let b = rustix::fs::fstat(&*child).ok()?;
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
                return None;
            }
            self.fds[d - 1] = Some(Rc::new(parent));
        }
        self.truncate(depth);
        self.fds[depth - 1].clone()
    }
}

/// Going up more levels than this by `..` costs more than a walk from the
/// root.
const MOST_UP: usize = 64;

/// What this layer did at a path (bits of [`Marks`]).
const CREATED: u8 = 1;
/// A directory that contains something this layer created.
const HOLDS: u8 = 2;
/// Overlay: a directory made in the upper as a copy of one below.
const COPIED_UP: u8 = 4;
/// An entry of this layer that is not a directory (file, symlink, link,
/// device, FIFO): whiteouts under it are ignored. The flag can outlive
/// its entry only where an ancestor was replaced since, by a non-directory
/// (ignoring them anyway) or by a new directory (hiding all that was
/// below, so that they would hide nothing).
const NON_DIR: u8 = 8;

/// One path of [`Marks`].
struct Mark {
    parent: u32,
    depth: u32,
    name: Box<[u8]>,
    flags: u8,
}

/// Flags of the paths this layer touched, kept as a tree of names: memory
/// grows with the names, not with the depth times the path's length (each
/// parent of a deep path, made one by one, would keep its own copy of the
/// path so far). Looking up a path starts from the part it shares with the
/// one looked up before, so a path's parents cost one name each.
struct Marks {
    /// Node 0 is the root.
    nodes: Vec<Mark>,
    /// Parent (little-endian) then name, to node.
    index: HashMap<Vec<u8>, u32>,
    key: Vec<u8>,
    /// The path looked up last, and the node and end of each of its names.
    last: Vec<u8>,
    last_nodes: Vec<(usize, u32)>,
}

impl Marks {
    fn new() -> Marks {
        Marks {
            nodes: vec![Mark {
                parent: 0,
                depth: 0,
                name: Box::default(),
                flags: 0,
            }],
            index: HashMap::new(),
            key: Vec::new(),
            last: Vec::new(),
            last_nodes: Vec::new(),
        }
    }

    /// The node of `rel` (`/`-separated names), added if `add`.
    fn find(&mut self, rel: &[u8], add: bool) -> Option<u32> {
        // The names shared with the last path.
        let same = rel
            .iter()
            .zip(&self.last)
            .take_while(|(a, b)| a == b)
            .count();
        let mut k = self.last_nodes.partition_point(|&(end, _)| end <= same);
        if k > 0 {
            let end = self.last_nodes[k - 1].0;
            if end < rel.len() && rel[end] != b'/' {
                k -= 1;
            }
        }
        self.last_nodes.truncate(k);
        let (mut node, mut pos) = match self.last_nodes.last() {
            Some(&(end, id)) => (id, end),
            None => (0, 0),
        };
        self.last.clear();
        self.last.extend_from_slice(rel);
        let mut found = Some(node);
        while pos < rel.len() {
            let start = if rel[pos] == b'/' { pos + 1 } else { pos };
            let end = rel[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(rel.len(), |i| start + i);
            pos = end;
            let name = &rel[start..end];
            if name.is_empty() {
                continue;
            }
            self.key.clear();
            self.key.extend_from_slice(&node.to_le_bytes());
            self.key.extend_from_slice(name);
            node = match self.index.get(self.key.as_slice()) {
                Some(&id) => id,
                None if add => {
                    let id = u32::try_from(self.nodes.len()).expect("fewer than 2^32 paths");
                    let depth = self.nodes[node as usize].depth + 1;
                    self.nodes.push(Mark {
                        parent: node,
                        depth,
                        name: name.into(),
                        flags: 0,
                    });
                    self.index.insert(self.key.clone(), id);
                    id
                }
                None => {
                    found = None;
                    self.last.truncate(start.saturating_sub(1));
                    break;
                }
            };
            self.last_nodes.push((end, node));
            found = Some(node);
        }
        found
    }

    fn has(&mut self, rel: &[u8], flag: u8) -> bool {
        self.find(rel, false)
            .is_some_and(|id| self.nodes[id as usize].flags & flag != 0)
    }

    fn flag(&self, id: u32, flag: u8) -> bool {
        self.nodes[id as usize].flags & flag != 0
    }

    fn clear(&mut self, id: u32, flag: u8) {
        self.nodes[id as usize].flags &= !flag;
    }

    /// Sets `flag` on node `id`; false if it was set.
    fn set(&mut self, id: u32, flag: u8) -> bool {
        let was = self.nodes[id as usize].flags;
        self.nodes[id as usize].flags |= flag;
        was & flag == 0
    }

    fn parent(&self, id: u32) -> Option<u32> {
        (id != 0).then(|| self.nodes[id as usize].parent)
    }

    fn depth(&self, id: u32) -> u32 {
        self.nodes[id as usize].depth
    }

    /// Whether `id` is strictly under `top`.
    fn under(&self, mut id: u32, top: u32) -> bool {
        let depth = self.depth(top);
        while self.depth(id) > depth {
            id = self.nodes[id as usize].parent;
            if id == top {
                return true;
            }
        }
        false
    }

    /// The names of `id`'s path, root first.
    fn names(&self, mut id: u32) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(self.depth(id) as usize);
        while id != 0 {
            let m = &self.nodes[id as usize];
            out.push(&*m.name);
            id = m.parent;
        }
        out.reverse();
        out
    }
}

/// The owner and mode a regular file gets from `open(O_CREAT)` in some
/// directory. When they are already what the layer asks for, the `fchown`
/// and `fchmod` after the write are skipped (tar does both for every file;
/// they are a fifth of the system calls of unpacking small files).
#[derive(Clone, Copy)]
struct NewFiles {
    uid: Uid,
    /// The directory's group if it is setgid, else the creator's.
    gid: Gid,
    /// Permission bits `open` clears.
    umask: u32,
}

/// What a file created in `dir` by `creator` starts with; `None` when a
/// default ACL decides its mode (or the directory cannot be examined).
fn new_files(dir: BorrowedFd<'_>, creator: (Uid, Gid, u32)) -> Option<NewFiles> {
    let (uid, egid, umask) = creator;
    let st = rustix::fs::fstat(dir).ok()?;
    let gid = if st.st_mode & 0o2000 != 0 {
        Gid::from_raw(st.st_gid)
    } else {
        egid
    };
    match rustix::fs::fgetxattr(dir, c"system.posix_acl_default", &mut [0u8; 0][..]) {
        Err(Errno::NODATA | Errno::NOTSUP) => Some(NewFiles { uid, gid, umask }),
        _ => None,
    }
}

/// The umask, read without changing it (`umask(2)` can only set it, and
/// other threads may be creating files meanwhile).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Which of a new file's metadata `open` already set as the layer wants.
#[derive(Clone, Copy, Default)]
struct Preset {
    owner: bool,
    mode: bool,
}

/// Splits an archive name into its components: `.`, empty components and a
/// leading `/` are dropped; `..` and NUL are refused.
fn split_name(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("a NUL byte in the name");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a `..` component (it would escape the layer)"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// What [`Extractor::open_dir`] does with a directory missing from `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Creates it (the parents of an entry).
    Create,
    /// Creates it where the merged tree has it: on overlay, where a layer
    /// below has a directory (to hold a whiteout, or to be made opaque).
    Merged,
    /// Leaves it.
    Skip,
}

/// The error for an entry whose parent `sub` is a symlink or not a
/// directory.
fn bad_parent(entry: &str, sub: &[u8], symlink: bool) -> LayerError {
    invalid(if symlink {
        format!(
            "entry `{entry}`: its parent `{}` is a symlink (refused: it could lead outside the layer)",
            show(sub)
        )
    } else {
        format!(
            "entry `{entry}`: its parent `{}` is not a directory",
            show(sub)
        )
    })
}

/// An error met on the way to hardlink `entry`'s target `link`, about the
/// target: "entry `hl`: hardlink target `d/f`: its parent `d` is a
/// symlink", not the entry's own parent.
fn about_link_target(e: LayerError, entry: &str, link: &[u8]) -> LayerError {
    match e {
        LayerError::Invalid(msg) => {
            let prefix = format!("entry `{entry}`: ");
            match msg.strip_prefix(&prefix) {
                Some(rest) => invalid(format!("{prefix}hardlink target `{}`: {rest}", show(link))),
                None => LayerError::Invalid(msg),
            }
        }
        other => other,
    }
}

impl<'o> Extractor<'o> {
    pub(super) fn new(dest: &Path, opts: &'o ApplyOptions) -> Result<Self> {
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(format!("cannot open {}", dest.display()), e))?;
        let lowers = match &opts.whiteouts {
            Whiteouts::Overlay { user_xattr, lowers } => Lowers::open(lowers, *user_xattr)?,
            Whiteouts::Delete => None,
        };
        Ok(Extractor {
            opts,
            dest: dest.to_path_buf(),
            root: Rc::new(root),
            trail: Trail::new(),
            marks: Marks::new(),
            dirs: HashMap::new(),
            containers: HashSet::new(),
            privileged: nix::unistd::geteuid().is_root(),
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            creator: current_umask()
                .map(|m| (rustix::process::geteuid(), rustix::process::getegid(), m)),
            new_files: None,
            lowers,
        })
    }

    /// Marks `rel` as made by this layer (a directory unless it is flagged
    /// [`NON_DIR`] after); returns its node.
    fn mark_created(&mut self, rel: &[u8]) -> u32 {
        let id = self.marks.find(rel, true).expect("added");
        self.marks.set(id, CREATED);
        self.marks.clear(id, NON_DIR);
        self.containers.remove(&id);
        let mut p = id;
        while let Some(q) = self.marks.parent(p).filter(|&q| q != 0) {
            if !self.marks.set(q, HOLDS) {
                break;
            }
            // Holds an entry of this layer now: no longer only a container.
            self.containers.remove(&q);
            p = q;
        }
        id
    }

    /// Opens directory `comps` under the root, refusing symlinks and
    /// non-directories; what is done with missing ones is `missing`'s to
    /// say (None when not created).
    fn open_dir(
        &mut self,
        comps: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        if comps.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        let root = self.root.clone();
        let common = self.trail.common(comps);
        if common == comps.len()
            && common == self.trail.ends.len()
            && let Some(Some(fd)) = self.trail.fds.last()
        {
            return Ok(Some(fd.clone()));
        }
        // From the trail when its directory is near: the first `common`
        // names are directories already (the trail ends above what is
        // removed).
        let near = common > 0
            && (common..=self.trail.ends.len())
                .take(MOST_UP + 1)
                .any(|d| self.trail.fds[d - 1].is_some());
        // A short path a few names further is one `openat2` from the root.
        let short =
            comps.len() - common > 2 && comps.iter().map(|c| c.len() + 1).sum::<usize>() < 1024;
        if near
            && !short
            && let Some(fd) = self.trail.up_to(common, &root)
        {
            return self.walk_dir(fd, common, comps, missing, entry);
        }
        // Else from the root: one `openat2` for the whole path when it can.
        let rel = comps.join(&b'/');
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        self.trail.clear();
        match rustix::fs::openat2(
            &*self.root,
            cstr(&rel).as_c_str(),
            DIR_FLAGS,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => {
                let fd = Rc::new(fd);
                // The levels above are reached again by `..`.
                self.trail.version += 1;
                self.trail.rel = rel;
                let mut end = 0;
                for c in comps {
                    end += c.len();
                    self.trail.ends.push(end);
                    self.trail.fds.push(None);
                    end += 1;
                }
                *self.trail.fds.last_mut().expect("a level") = Some(fd.clone());
                Ok(Some(fd))
            }
            Err(Errno::NOENT)
            | Err(Errno::LOOP)
            | Err(Errno::NOTDIR)
            | Err(Errno::NOSYS)
            | Err(Errno::XDEV)
            | Err(Errno::AGAIN)
            | Err(Errno::NAMETOOLONG) => self.walk_dir(root, 0, comps, missing, entry),
            Err(e) => Err(io_err(
                format!("cannot open directory {}", self.path_of(&rel).display()),
                e,
            )),
        }
    }

    /// [`Self::open_dir`] one component at a time from `cur`, the directory
    /// of the first `from` ones (where the trail ends): creates what is
    /// missing and names the component at fault.
    fn walk_dir(
        &mut self,
        mut cur: Rc<OwnedFd>,
        from: usize,
        comps: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let mut version = self.trail.version;
        for i in from..comps.len() {
            match self.open_component(&cur, &comps[..=i], missing, entry)? {
                Some(fd) => {
                    // Unless opening it went elsewhere (removing containers).
                    if self.trail.version == version {
                        self.trail.push(comps[i], fd.clone());
                        version = self.trail.version;
                    }
                    cur = fd;
                }
                None => {
                    self.check_below(comps, i + 1, entry)?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(cur))
    }

    /// Refuses `comps` if, from component `from` on (missing from the
    /// upper), the layers below have a symlink or a non-directory on the
    /// way, as native refuses what its full tree has there.
    fn check_below(&mut self, comps: &[&[u8]], from: usize, entry: &str) -> Result<()> {
        for j in from..comps.len() {
            match self.below(&comps[..=j])? {
                Below::Dir => {}
                Below::Nothing => break,
                found => {
                    let sub = comps[..=j].join(&b'/');
                    return Err(bad_parent(entry, &sub, found == Below::Symlink));
                }
            }
        }
        Ok(())
    }

    /// Opens the directory `sub` in `cur`, its parent.
    fn open_component(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let name = cstr(sub[sub.len() - 1]);
        match rustix::fs::openat(cur, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Rc::new(fd))),
            Err(Errno::NOENT) => self.missing_dir(cur, sub, missing, entry),
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => self.not_a_dir(cur, sub, missing, entry),
            Err(Errno::NAMETOOLONG) => Err(invalid(format!(
                "entry `{entry}`: a name component is too long"
            ))),
            Err(e) => Err(io_err(
                format!(
                    "cannot open directory {}",
                    self.path_of(&sub.join(&b'/')).display()
                ),
                e,
            )),
        }
    }

    /// Directory `sub`, missing in `cur`: created or not as `missing` says,
    /// and refused where a layer below has a symlink or a non-directory
    /// that shows (native refuses it in its full tree; an upper directory
    /// there would replace it).
    fn missing_dir(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let below = self.below(sub)?;
        let make = match below {
            Below::Symlink | Below::Other => {
                return Err(bad_parent(entry, &sub.join(&b'/'), below == Below::Symlink));
            }
            Below::Dir => missing != Missing::Skip,
            Below::Nothing => missing == Missing::Create,
        };
        if !make {
            return Ok(None);
        }
        // As overlayfs's copy-up, a directory copied up into its parent
        // leaves the parent's times as they were (it restores them): the
        // merged tree shows no change there, and neither does the native
        // tree (audit: a layer adding `d/s/new` left `d`'s mtime the time of
        // the apply on overlay only).
        let parent_times = match below {
            Below::Dir => rustix::fs::fstat(cur).ok().map(|st| Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: st.st_mtime,
                    tv_nsec: st.st_mtime_nsec as _,
                },
            }),
            _ => None,
        };
        let fd = self.make_dir(cur, sub, missing == Missing::Merged)?;
        if below == Below::Dir {
            self.copy_up(&fd, sub)?;
            if let Some(times) = parent_times {
                rustix::fs::futimens(cur, &times).map_err(|e| {
                    io_err(
                        format!("cannot set the times of the parent of `{entry}`"),
                        e,
                    )
                })?;
            }
        }
        Ok(Some(fd))
    }

    /// A directory made in the upper over one of the layers below, with no
    /// entry of its own in the layer (its parent position implies it, or it
    /// holds a whiteout), takes that directory's owner, mode, xattrs and
    /// times, as overlayfs's copy-up gives them and as the native tree
    /// keeps them; a `0755` root-owned stand-in would show instead. An
    /// entry for it later in the layer still sets its own.
    fn copy_up(&mut self, fd: &OwnedFd, sub: &[&[u8]]) -> Result<()> {
        let Some(lowers) = &mut self.lowers else {
            return Ok(());
        };
        let Some(meta) = lowers.dir_meta(sub)? else {
            return Ok(());
        };
        let rel = sub.join(&b'/');
        self.set_meta_fd(fd.as_fd(), &meta, &rel, false, Preset::default())?;
        let id = self.marks.find(&rel, true).expect("added");
        self.marks.set(id, COPIED_UP);
        Ok(())
    }

    /// `sub` in `cur` is not a directory: refused, unless it is a whiteout
    /// this layer made on overlay. The merged tree has nothing there then,
    /// as the native tree has nothing where the whiteout deleted it.
    fn not_a_dir(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let name = cstr(sub[sub.len() - 1]);
        let st = rustix::fs::statat(cur, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
        let ft = st.map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
        let whiteout = ft == Some(rustix::fs::FileType::CharacterDevice)
            && st.is_some_and(|st| st.st_rdev == 0);
        if let Whiteouts::Overlay { user_xattr, .. } = self.opts.whiteouts
            && whiteout
        {
            if missing != Missing::Create {
                return Ok(None);
            }
            return self.replace_whiteout(cur, sub, user_xattr).map(Some);
        }
        let symlink = ft == Some(rustix::fs::FileType::Symlink);
        Err(bad_parent(entry, &sub.join(&b'/'), symlink))
    }

    /// Replaces this layer's whiteout `sub` in `cur` with a directory, made
    /// opaque as an explicit directory entry would be: deleted below, made
    /// again here.
    fn replace_whiteout(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        user_xattr: bool,
    ) -> Result<Rc<OwnedFd>> {
        let rel = sub.join(&b'/');
        self.remove(cur, cstr(sub[sub.len() - 1]).as_c_str(), &rel)?;
        let fd = self.make_dir(cur, sub, false)?;
        self.make_opaque(&fd, &rel, user_xattr)?;
        Ok(fd)
    }

    /// Creates directory `sub` in `cur`, 0755 whatever the umask; as a
    /// container (see [`Extractor::containers`]) or as made by this layer.
    fn make_dir(&mut self, cur: &OwnedFd, sub: &[&[u8]], container: bool) -> Result<Rc<OwnedFd>> {
        let rel = sub.join(&b'/');
        let name = cstr(sub[sub.len() - 1]);
        let failed = |what: &str, e| {
            io_err(
                format!("cannot {what} directory {}", self.path_of(&rel).display()),
                e,
            )
        };
        match rustix::fs::mkdirat(cur, name.as_c_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(failed("create", e)),
        }
        let fd = rustix::fs::openat(cur, name.as_c_str(), DIR_FLAGS, Mode::empty())
            .and_then(|fd| {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                Ok(fd)
            })
            .map_err(|e| failed("open", e))?;
        if container {
            let id = self.marks.find(&rel, true).expect("added");
            self.containers.insert(id);
        } else {
            self.mark_created(&rel);
        }
        Ok(Rc::new(fd))
    }

    /// Removes the containers under `rel`, and `rel` itself if `with_rel`
    /// and it is one: what they stand for is hidden now.
    fn drop_containers(&mut self, rel: &[u8], with_rel: bool, entry: &str) -> Result<()> {
        if self.containers.is_empty() {
            return Ok(());
        }
        let Some(top) = self.marks.find(rel, false) else {
            return Ok(());
        };
        let mut gone: Vec<u32> = self
            .containers
            .iter()
            .copied()
            .filter(|&c| (with_rel && c == top) || self.marks.under(c, top))
            .collect();
        // Parents first: their removal takes the children with them.
        gone.sort_by_key(|&c| self.marks.depth(c));
        for c in gone {
            if !self.containers.contains(&c) {
                continue;
            }
            let comps: Vec<Vec<u8>> = self
                .marks
                .names(c)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect();
            let comps: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
            let path = comps.join(&b'/');
            self.forget_containers(&path);
            let (last, parent) = comps.split_last().expect("a container is not the root");
            if let Some(dir) = self.open_dir(parent, Missing::Skip, entry)? {
                self.remove(&dir, cstr(last).as_c_str(), &path)?;
            }
        }
        Ok(())
    }

    fn is_container(&mut self, rel: &[u8]) -> bool {
        !self.containers.is_empty()
            && self
                .marks
                .find(rel, false)
                .is_some_and(|id| self.containers.contains(&id))
    }

    /// `rel` and what is under it are no containers (any more).
    fn forget_containers(&mut self, rel: &[u8]) {
        if self.containers.is_empty() {
            return;
        }
        let Some(top) = self.marks.find(rel, false) else {
            return;
        };
        let marks = &self.marks;
        self.containers
            .retain(|&c| c != top && !marks.under(c, top));
    }

    /// What the layers below show at `comps` (nothing on native, or with no
    /// parent).
    fn below(&mut self, comps: &[&[u8]]) -> Result<Below> {
        match &mut self.lowers {
            Some(lowers) => Ok(lowers.at(comps)?.kind),
            None => Ok(Below::Nothing),
        }
    }

    /// Whether anything of the layers below shows inside directory `comps`.
    fn shows_below(&mut self, comps: &[&[u8]]) -> Result<bool> {
        match &mut self.lowers {
            Some(lowers) => Ok(!lowers.at(comps)?.layers.is_empty()),
            None => Ok(false),
        }
    }

    /// Makes directory `rel` (open as `fd`) opaque: nothing below shows in
    /// it from here on.
    fn make_opaque(&mut self, fd: &OwnedFd, rel: &[u8], user_xattr: bool) -> Result<()> {
        set_opaque(fd, user_xattr).map_err(|e| {
            io_err(
                format!("cannot mark {} opaque", self.path_of(rel).display()),
                e,
            )
        })?;
        clear_whiteouts(fd).map_err(|e| {
            io_err(
                format!(
                    "cannot clear the whiteouts in {}",
                    self.path_of(rel).display()
                ),
                e,
            )
        })?;
        self.hide(rel);
        // What the containers under it held whiteouts for is hidden as a
        // whole now.
        self.drop_containers(rel, false, &show(rel))
    }

    /// What the layers below have at `rel` is hidden from here on.
    fn hide(&mut self, rel: &[u8]) {
        if let Some(lowers) = &mut self.lowers {
            lowers.hide(rel);
        }
    }

    fn path_of(&self, rel: &[u8]) -> PathBuf {
        self.dest.join(OsStr::from_bytes(rel))
    }

    /// A path naming `name` in directory `dir` for the path-only xattr calls
    /// (symlinks and special files cannot be opened safely).
    fn at_path(&self, dir: &OwnedFd, name: &CStr, rel: &[u8]) -> PathBuf {
        use std::os::fd::AsRawFd;
        if self.proc_fd {
            let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
            p.push(OsStr::from_bytes(name.to_bytes()));
            p
        } else {
            self.path_of(rel)
        }
    }

    /// Drops what is remembered about open directories: they may be
    /// replaced or removed from here on.
    fn forget_dirs(&mut self) {
        self.trail.clear();
        self.new_files = None;
    }

    /// What a file created in the directory `rel` (open as `dir`) starts with.
    fn new_files_in(&mut self, rel: &[u8], dir: &OwnedFd) -> Option<NewFiles> {
        let creator = self.creator?;
        if let Some((known, facts)) = &self.new_files
            && known == rel
        {
            return *facts;
        }
        let facts = new_files(dir.as_fd(), creator);
        self.new_files = Some((rel.to_vec(), facts));
        facts
    }

    /// Removes whatever is at `name` in `dir` (recursively for directories).
    fn remove(&mut self, dir: &OwnedFd, name: &CStr, rel: &[u8]) -> Result<()> {
        self.trail.removed(rel);
        self.new_files = None;
        self.dirs.remove(rel);
        self.forget_containers(rel);
        remove_all_at(dir.as_fd(), name)
            .map_err(|e| io_err(format!("cannot remove {}", self.path_of(rel).display()), e))
    }

    /// Writes the next `len` bytes of the stream to `file`, at its offset.
    fn write_data(
        &self,
        s: &mut Stream,
        file: &mut File,
        len: u64,
        name: &str,
        rel: &[u8],
        progress: &mut dyn FnMut(),
    ) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let avail = s
                .fill()
                .map_err(|e| context(e, &format!("entry `{name}`")))?;
            if avail.is_empty() {
                return Err(invalid(format!(
                    "truncated archive: entry `{name}` ends {left} bytes early"
                )));
            }
            let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            file.write_all(&avail[..n])
                .map_err(|e| io_err(format!("cannot write {}", self.path_of(rel).display()), e))?;
            s.consume(n);
            left -= n as u64;
            progress();
        }
        Ok(())
    }

    /// Writes a GNU sparse file's data where its map puts it, and leaves
    /// the rest holes: the file takes the space its data does, where Go
    /// (containerd) writes the holes out as zeros.
    fn write_sparse(
        &self,
        s: &mut Stream,
        file: &mut File,
        map: &sparse::Sparse,
        name: &str,
        rel: &[u8],
        progress: &mut dyn FnMut(),
    ) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let failed = |e| io_err(format!("cannot write {}", self.path_of(rel).display()), e);
        // The size first: every segment lies within it, so a file larger
        // than the file system allows fails here, once, and is said of the
        // entry (as an xattr the kernel refuses is), not at a seek or a
        // write past the limit.
        file.set_len(map.size).map_err(|e| {
            if e.raw_os_error() == Some(libc::EFBIG) {
                invalid(format!(
                    "entry `{name}`: a sparse file of {} bytes, larger than this file system allows",
                    map.size
                ))
            } else {
                failed(e)
            }
        })?;
        for seg in map.segments.iter().filter(|seg| seg.len > 0) {
            file.seek(SeekFrom::Start(seg.offset)).map_err(failed)?;
            self.write_data(s, file, seg.len, name, rel, progress)?;
        }
        Ok(())
    }

    pub(super) fn member(
        &mut self,
        m: Member,
        s: &mut Stream,
        progress: &mut dyn FnMut(),
    ) -> Result<()> {
        let name = show(&m.path);
        // The raw typeflag: `EntryType` reads NUL as `0`, and the two differ
        // here. An old-style (pre-POSIX) entry, NUL, whose name ends in `/`
        // is a directory, as Go's archive/tar (containerd) and Python's
        // tarfile read it; `0` is a regular file whatever its name.
        let type_byte = m.header.as_old().linkflag[0];
        let kind = match type_byte {
            b'0' | b'7' => Kind::File,
            0 if m.path.ends_with(b"/") => Kind::Dir,
            0 => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => Kind::File,
            t => {
                return Err(invalid(format!(
                    "entry `{name}`: unsupported entry type `{}`",
                    (t as char).escape_default()
                )));
            }
        };
        if m.sparse.is_some() && !matches!(kind, Kind::File) {
            return Err(invalid(format!(
                "entry `{name}`: a GNU sparse map on an entry that is not a file"
            )));
        }
        if !matches!(kind, Kind::File) && m.size != 0 {
            return Err(invalid(format!(
                "entry `{name}`: a {} entry with {} bytes of data",
                match kind {
                    Kind::Dir => "directory",
                    Kind::Symlink => "symlink",
                    Kind::Hardlink => "hardlink",
                    Kind::Char | Kind::Block => "device",
                    _ => "FIFO",
                },
                m.size
            )));
        }
        let comps = split_name(&m.path).map_err(|why| invalid(format!("entry `{name}`: {why}")))?;
        let Some((last, parent)) = comps.split_last() else {
            // The root itself: containerd ignores it, and so do we.
            if matches!(kind, Kind::Dir) {
                return Ok(());
            }
            return Err(invalid(format!(
                "entry `{name}`: a non-directory names the root of the layer"
            )));
        };
        let base: &[u8] = last;
        let rel = comps.join(&b'/');
        let parent_rel = parent.join(&b'/');

        if base.starts_with(WHITEOUT_PREFIX) {
            // Data of a whiteout (normally none) is not used.
            s.skip(m.size)
                .map_err(|e| context(e, &format!("entry `{name}`")))?;
            s.skip_padding(m.size)
                .map_err(|e| context(e, &format!("entry `{name}`")))?;
            // Under a path this layer made a non-directory (umoci writes
            // `d -> e`, then `d/.wh.x` for what directory `d` held), what
            // the layers below had is gone already: there is nothing left
            // to hide, and nothing is looked up through that path (never
            // through the symlink).
            if self.under_own_non_dir(parent) {
                return Ok(());
            }
            if base == OPAQUE_MARKER {
                return self.opaque(parent, &parent_rel, &name);
            }
            if base.starts_with(META_PREFIX) {
                return Ok(()); // aufs metadata
            }
            let target = &base[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(invalid(format!(
                    "entry `{name}`: a whiteout for an invalid name"
                )));
            }
            return self.whiteout(parent, &parent_rel, target, &name);
        }

        if matches!(kind, Kind::Char | Kind::Block) && !self.opts.allow_devices {
            return Err(invalid(format!(
                "entry `{name}`: device nodes are not allowed here (creating them needs privilege)"
            )));
        }
        if m.uid >= u64::from(u32::MAX) || m.gid >= u64::from(u32::MAX) {
            return Err(invalid(format!(
                "entry `{name}`: owner {}:{} is out of range",
                m.uid, m.gid
            )));
        }
        let mut xattrs = Vec::with_capacity(m.xattrs.len());
        for (k, v) in m.xattrs {
            if is_overlay_xattr(&k) {
                continue;
            }
            // A hardlink's are not set: its target's stand.
            if !matches!(kind, Kind::Hardlink) {
                check_xattr(&name, &kind, &k, &v)?;
            }
            xattrs.push((cstr(&k), v));
        }
        let meta = Meta {
            mode: header_number(&m.header.as_old().mode, "mode", || m.header.mode())
                .map_err(|field| not_a_number(&name, field))?
                & 0o7777,
            uid: Uid::from_raw(m.uid as u32),
            gid: Gid::from_raw(m.gid as u32),
            mtime: m.mtime,
            atime: m.atime.unwrap_or(m.mtime),
            xattrs,
        };
        let Some(dir) = self.open_dir(parent, Missing::Create, &name)? else {
            return Err(invalid(format!(
                "entry `{name}`: its parent directory vanished"
            )));
        };
        let cname = cstr(base);
        let cname = cname.as_c_str();
        match kind {
            Kind::Dir => {
                let mut existed = false;
                match rustix::fs::mkdirat(&*dir, cname, Mode::from_raw_mode(0o700)) {
                    // New in an overlay upper over a directory below: it
                    // starts as the copy-up of that one until the entry's
                    // own metadata is set at the end, as the native tree's
                    // existing directory does (a setgid one gives its group
                    // to what is made in it meanwhile).
                    Ok(()) if self.below(&comps)? == Below::Dir => {
                        let fd = rustix::fs::openat(&*dir, cname, DIR_FLAGS, Mode::empty())
                            .map_err(|e| {
                                io_err(format!("cannot open {}", self.path_of(&rel).display()), e)
                            })?;
                        self.copy_up(&fd, &comps)?;
                        existed = true;
                    }
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(&*dir, cname, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| {
                                io_err(format!("cannot stat {}", self.path_of(&rel).display()), e)
                            })?;
                        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
                        if ft == rustix::fs::FileType::Directory {
                            // A copy-up stands for the directory below:
                            // the entry replaces its xattrs, as on native.
                            existed =
                                !self.marks.has(&rel, CREATED) || self.marks.has(&rel, COPIED_UP);
                        } else {
                            let was_whiteout =
                                ft == rustix::fs::FileType::CharacterDevice && st.st_rdev == 0;
                            self.remove(&dir, cname, &rel)?;
                            rustix::fs::mkdirat(&*dir, cname, Mode::from_raw_mode(0o700)).map_err(
                                |e| {
                                    io_err(
                                        format!(
                                            "cannot create directory {}",
                                            self.path_of(&rel).display()
                                        ),
                                        e,
                                    )
                                },
                            )?;
                            // What this layer had here (a whiteout, or a
                            // file over what was below, itself maybe after
                            // a whiteout) hid the layers below; the new
                            // directory must go on hiding them.
                            let hid_below = was_whiteout || self.lowers.is_some();
                            if hid_below
                                && let Whiteouts::Overlay { user_xattr, .. } = self.opts.whiteouts
                            {
                                // Deleted below, recreated here: opaque.
                                let fd = self.open_dir(&comps, Missing::Skip, &name)?.ok_or_else(
                                    || invalid(format!("entry `{name}`: the directory vanished")),
                                )?;
                                self.make_opaque(&fd, &rel, user_xattr)?;
                            }
                        }
                    }
                    Err(Errno::NAMETOOLONG) => {
                        return Err(invalid(format!(
                            "entry `{name}`: a name component is too long"
                        )));
                    }
                    Err(e) => {
                        return Err(io_err(
                            format!("cannot create directory {}", self.path_of(&rel).display()),
                            e,
                        ));
                    }
                }
                let existed = self.dirs.get(&rel).map(|d| d.existed).unwrap_or(existed);
                self.dirs.insert(rel.clone(), DirMeta { meta, existed });
            }
            Kind::File => {
                // Created with its final mode when `open` gives exactly
                // that; else 0600 until written and owned, then chmod.
                let born = self
                    .new_files_in(&parent_rel, &dir)
                    .filter(|_| meta.mode & 0o7000 == 0);
                let preset = Preset {
                    owner: born.is_some_and(|b| b.uid == meta.uid && b.gid == meta.gid),
                    mode: born.is_some_and(|b| meta.mode & b.umask == 0),
                };
                let mode = if preset.mode { meta.mode } else { 0o600 };
                let fd = self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::openat(
                        d,
                        n,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(mode),
                    )
                })?;
                let mut file = File::from(fd);
                match &m.sparse {
                    None => self.write_data(s, &mut file, m.size, &name, &rel, progress)?,
                    Some(map) => self.write_sparse(s, &mut file, map, &name, &rel, progress)?,
                }
                s.skip_padding(m.size)
                    .map_err(|e| context(e, &format!("entry `{name}`")))?;
                self.set_meta_fd(file.as_fd(), &meta, &rel, false, preset)?;
            }
            Kind::Symlink => {
                if m.link.is_empty() || m.link.contains(&0) {
                    return Err(invalid(format!(
                        "entry `{name}`: a symlink with an empty or invalid target"
                    )));
                }
                // `symlinkat` says ENAMETOOLONG, which `create` would blame
                // on the name.
                if m.link.len() >= PATH_MAX {
                    return Err(invalid(format!(
                        "entry `{name}`: its symlink target is too long ({} bytes; Linux allows {})",
                        m.link.len(),
                        PATH_MAX - 1
                    )));
                }
                let target = cstr(&m.link);
                self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::symlinkat(target.as_c_str(), d, n)
                })?;
                self.set_meta_at(&dir, cname, &rel, &meta, false)?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (ft, dev) = match kind {
                    Kind::Char | Kind::Block => {
                        let (major, minor) =
                            header_device(&m.header).map_err(|field| not_a_number(&name, field))?;
                        // In an overlay upper directory that node is a
                        // whiteout, on the native driver a device: refused on
                        // both, so a layer means one thing everywhere.
                        if matches!(kind, Kind::Char) && major == 0 && minor == 0 {
                            return Err(invalid(format!(
                                "entry `{name}`: a character device 0/0 is an overlay whiteout, not a file; layers write whiteouts as `.wh.NAME`"
                            )));
                        }
                        let ft = if matches!(kind, Kind::Char) {
                            rustix::fs::FileType::CharacterDevice
                        } else {
                            rustix::fs::FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                    _ => (rustix::fs::FileType::Fifo, 0),
                };
                self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::mknodat(d, n, ft, Mode::from_raw_mode(0o600), dev)
                })?;
                self.set_meta_at(&dir, cname, &rel, &meta, true)?;
            }
            Kind::Hardlink => {
                let tcomps = split_name(&m.link).map_err(|why| {
                    invalid(format!(
                        "entry `{name}`: hardlink target `{}` has {why}",
                        show(&m.link)
                    ))
                })?;
                let trel = tcomps.join(&b'/');
                let inside =
                    trel.len() > rel.len() && trel.starts_with(&rel) && trel[rel.len()] == b'/';
                if trel == rel || inside || !self.marks.has(&trel, CREATED) {
                    return Err(invalid(format!(
                        "entry `{name}`: hardlink target `{}` is not an earlier entry of this layer",
                        show(&m.link)
                    )));
                }
                let (tlast, tparent) = tcomps
                    .split_last()
                    .ok_or_else(|| invalid(format!("entry `{name}`: hardlink to the root")))?;
                // What is wrong on the way is the target's: said so.
                let tdir = self
                    .open_dir(tparent, Missing::Skip, &name)
                    .map_err(|e| about_link_target(e, &name, &m.link))?
                    .ok_or_else(|| {
                        invalid(format!(
                            "entry `{name}`: hardlink target `{}` does not exist",
                            show(&m.link)
                        ))
                    })?;
                let tname = cstr(tlast);
                let st = rustix::fs::statat(&*tdir, tname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW);
                match st {
                    Ok(st)
                        if rustix::fs::FileType::from_raw_mode(st.st_mode)
                            != rustix::fs::FileType::Directory => {}
                    _ => {
                        return Err(invalid(format!(
                            "entry `{name}`: hardlink target `{}` is missing or a directory",
                            show(&m.link)
                        )));
                    }
                }
                self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::linkat(&*tdir, tname.as_c_str(), d, n, AtFlags::empty())
                })?;
            }
        }
        let id = self.mark_created(&rel);
        if !matches!(kind, Kind::Dir) {
            self.marks.set(id, NON_DIR);
        }
        Ok(())
    }

    /// Whether directory `comps`, or one above it, is a non-directory this
    /// layer made (as far as [`NON_DIR`] says).
    fn under_own_non_dir(&mut self, comps: &[&[u8]]) -> bool {
        let mut rel = Vec::new();
        for c in comps {
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(c);
            match self.marks.find(&rel, false) {
                None => return false,
                Some(id) if self.marks.flag(id, NON_DIR) => return true,
                Some(_) => {}
            }
        }
        false
    }

    /// Creates `name` in `dir` with `make`, replacing what is there.
    fn create<T>(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        entry: &str,
        make: impl Fn(BorrowedFd<'_>, &CStr) -> rustix::io::Result<T>,
    ) -> Result<T> {
        match make(dir.as_fd(), name) {
            Ok(t) => return Ok(t),
            Err(Errno::EXIST) => {}
            Err(Errno::NAMETOOLONG) => {
                return Err(invalid(format!(
                    "entry `{entry}`: a name component is too long"
                )));
            }
            Err(e) => {
                return Err(io_err(
                    format!("cannot create {}", self.path_of(rel).display()),
                    e,
                ));
            }
        }
        self.remove(dir, name, rel)?;
        make(dir.as_fd(), name)
            .map_err(|e| io_err(format!("cannot create {}", self.path_of(rel).display()), e))
    }

    fn chown_failed(&self, e: Errno) -> bool {
        e != Errno::PERM || self.privileged
    }

    fn xattr_failed(&self, e: Errno) -> bool {
        self.privileged || !matches!(e, Errno::PERM | Errno::NOTSUP | Errno::ACCESS)
    }

    /// The error for xattr `name` (value `value`) of entry `rel` that could
    /// not be set. The kernel's EINVAL (a malformed value, such as a
    /// `security.capability` or an ACL entry it cannot read), E2BIG (a value
    /// over its 64 KiB limit) and ERANGE (a name or value too long) say the
    /// layer's xattr is bad: `invalid`, naming the entry and the xattr, as
    /// other refused entries. Anything else is this side's: ENOTSUP, a file
    /// system that cannot store that xattr, stays `unsupported` (an xattr no
    /// Linux file can have, which also gives ENOTSUP, was refused before:
    /// [`check_xattr`]). Those name the entry too, not the store's path.
    fn xattr_error(&self, rel: &[u8], name: &CStr, value: &[u8], e: Errno) -> LayerError {
        let why = match e {
            Errno::INVAL => "the kernel refuses it as malformed",
            Errno::TOOBIG => "its value is larger than the kernel allows (64 KiB)",
            Errno::RANGE => "its name or value is too long",
            _ => {
                let why = if e == Errno::NOTSUP {
                    ": the store's file system cannot hold it"
                } else {
                    ""
                };
                return io_err(
                    format!(
                        "entry `{}`: cannot set its xattr `{}`{why}",
                        show(rel),
                        name.to_string_lossy(),
                    ),
                    e,
                );
            }
        };
        invalid(format!(
            "entry `{}`: xattr `{}` ({} bytes): {why}",
            show(rel),
            show(name.to_bytes()),
            value.len()
        ))
    }

    /// Ownership, xattrs, mode and times through an open descriptor.
    fn set_meta_fd(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        rel: &[u8],
        existed: bool,
        preset: Preset,
    ) -> Result<()> {
        let what = |op: &str| format!("cannot set the {op} of {}", self.path_of(rel).display());
        if !preset.owner
            && let Err(e) = rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid))
            && self.chown_failed(e)
        {
            return Err(io_err(what("owner"), e));
        }
        if existed {
            // Replace, not merge: xattrs the layer does not list are gone.
            let list = xattr_call(|b| rustix::fs::flistxattr(fd, b))
                .map_err(|e| io_err(what("xattrs"), e))?;
            for old in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                if is_overlay_xattr(old) || meta.xattrs.iter().any(|(k, _)| k.to_bytes() == old) {
                    continue;
                }
                if let Err(e) = rustix::fs::fremovexattr(fd, cstr(old).as_c_str())
                    && self.xattr_failed(e)
                {
                    return Err(io_err(what("xattrs"), e));
                }
            }
        }
        for (k, v) in &meta.xattrs {
            if let Err(e) = rustix::fs::fsetxattr(fd, k.as_c_str(), v, XattrFlags::empty())
                && self.xattr_failed(e)
            {
                return Err(self.xattr_error(rel, k, v, e));
            }
        }
        if !preset.mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| io_err(what("mode"), e))?;
        }
        rustix::fs::futimens(fd, &times(meta)).map_err(|e| io_err(what("times"), e))?;
        Ok(())
    }

    /// The same for entries that are not opened (symlinks, devices, FIFOs).
    fn set_meta_at(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let what = |op: &str| format!("cannot set the {op} of {}", self.path_of(rel).display());
        if let Err(e) = rustix::fs::chownat(
            dir,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        ) && self.chown_failed(e)
        {
            return Err(io_err(what("owner"), e));
        }
        if !meta.xattrs.is_empty() {
            let p = self.at_path(dir, name, rel);
            for (k, v) in &meta.xattrs {
                if let Err(e) = rustix::fs::lsetxattr(&p, k.as_c_str(), v, XattrFlags::empty())
                    && self.xattr_failed(e)
                {
                    return Err(self.xattr_error(rel, k, v, e));
                }
            }
        }
        if chmod {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| io_err(what("mode"), e))?;
        }
        rustix::fs::utimensat(dir, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(what("times"), e))?;
        Ok(())
    }

    /// Directory metadata, deepest first, once everything is in place.
    pub(super) fn finish(&mut self) -> Result<()> {
        self.forget_dirs();
        let mut dirs: Vec<(Vec<u8>, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by(|a, b| path_order(&b.0, &a.0));
        for (rel, d) in dirs {
            let comps: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
            // Gone if replaced by a later entry or removed by a whiteout.
            let fd = match self.open_dir(&comps, Missing::Skip, &show(&rel)) {
                Ok(Some(fd)) => fd,
                Ok(None) | Err(LayerError::Invalid(_)) => continue,
                Err(e) => return Err(e),
            };
            self.set_meta_fd(fd.as_fd(), &d.meta, &rel, d.existed, Preset::default())?;
        }
        self.forget_dirs();
        Ok(())
    }
}

fn times(meta: &Meta) -> Timestamps {
    Timestamps {
        last_access: meta.atime,
        last_modification: meta.mtime,
    }
}

fn set_opaque(fd: &OwnedFd, user_xattr: bool) -> rustix::io::Result<()> {
    rustix::fs::fsetxattr(fd, opaque_xattr(user_xattr), b"y", XattrFlags::empty())
}

/// What a directory entry is, as far as unpacking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Dir,
    /// An overlay whiteout: a character device 0/0.
    Whiteout,
    Other,
}

/// The entries of a directory and what each is; `stat` only where the
/// entry's type does not tell (unknown, or a character device).
pub(super) fn list_entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, Found)>> {
    use rustix::fs::FileType;
    let mut out = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(ent) = entries.read() {
        let ent = ent?;
        let name = ent.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let (kind, rdev) = match ent.file_type() {
            FileType::Unknown | FileType::CharacterDevice => {
                let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                (FileType::from_raw_mode(st.st_mode), st.st_rdev)
            }
            kind => (kind, 0),
        };
        let found = match kind {
            FileType::Directory => Found::Dir,
            FileType::CharacterDevice if rdev == 0 => Found::Whiteout,
            _ => Found::Other,
        };
        out.push((name.to_owned(), found));
    }
    Ok(out)
}

/// The entries of a directory: (name, is a directory).
fn list_dir(fd: &OwnedFd) -> io::Result<Vec<(CString, bool)>> {
    Ok(list_entries(fd.as_fd())?
        .into_iter()
        .map(|(name, found)| (name, found == Found::Dir))
        .collect())
}

/// Removes the whiteouts anywhere under directory `dir`, just made opaque:
/// nothing merges under an opaque directory, so they hide nothing, and
/// overlayfs would list them (as names `lstat` cannot find).
fn clear_whiteouts(dir: &OwnedFd) -> io::Result<()> {
    // (parent, name) of directories still to clear; parents are shared, so
    // the descriptors held grow with the depth, not the width.
    let mut stack: Vec<(Rc<OwnedFd>, Option<CString>)> = vec![(Rc::new(dir.try_clone()?), None)];
    while let Some((parent, name)) = stack.pop() {
        let fd = match name {
            Some(name) => Rc::new(rustix::fs::openat(
                &*parent,
                name.as_c_str(),
                DIR_FLAGS,
                Mode::empty(),
            )?),
            None => parent,
        };
        for (name, found) in list_entries(fd.as_fd())? {
            match found {
                Found::Dir => stack.push((Rc::clone(&fd), Some(name))),
                Found::Whiteout => rustix::fs::unlinkat(&*fd, name.as_c_str(), AtFlags::empty())?,
                Found::Other => {}
            }
        }
    }
    Ok(())
}

/// Removes `name` in `dir`, recursively, without following symlinks and
/// without recursion on the call stack.
fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let how = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top = rustix::fs::openat(dir, name, how, Mode::empty())?;
    let mut frames: Vec<(OwnedFd, CString)> = vec![(top, name.to_owned())];
    while let Some((fd, _)) = frames.last() {
        let mut descend = None;
        for (child, is_dir) in list_dir(fd)? {
            if is_dir {
                descend = Some(child);
                break;
            }
            match rustix::fs::unlinkat(fd, child.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    descend = Some(child);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        match descend {
            Some(child) => {
                let sub = rustix::fs::openat(fd, child.as_c_str(), how, Mode::empty())?;
                frames.push((sub, child));
            }
            None => {
                let (fd, n) = frames.pop().expect("a frame");
                drop(fd);
                let parent = match frames.last() {
                    Some((p, _)) => p.as_fd(),
                    None => dir,
                };
                match rustix::fs::unlinkat(parent, n.as_c_str(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}
