//! Faithful copy of a directory tree, used by the "native" snapshot driver.
//!
//! The native driver has no copy-on-write filesystem underneath it, so every
//! new snapshot starts life as a full copy of its parent. A snapshot is only
//! useful if it is indistinguishable from its parent, so the copy has to carry
//! everything an image layer can carry: file contents, ownership, permission
//! bits (including setuid/setgid/sticky), nanosecond timestamps, hardlinks,
//! device nodes, FIFOs and extended attributes in every namespace (file
//! capabilities live in `security.capability`, overlay metadata in
//! `trusted.*`).
//!
//! Ordering matters and is the reason this is not just `std::fs::copy`:
//!
//! * data is written before any metadata, because writing to a file clears
//!   its setuid/setgid bits and its file capabilities;
//! * ownership is set before extended attributes, because `chown` drops
//!   `security.capability`;
//! * the mode is set after ownership and after the extended attributes,
//!   because `chown` clears setuid/setgid and setting a POSIX ACL xattr
//!   rewrites the group permission bits;
//! * timestamps are set last, and for directories only once all their
//!   contents exist (post-order), because creating entries updates the
//!   parent's mtime. Directory xattrs are also applied post-order so that a
//!   default ACL on a copied directory is not inherited by the copies of its
//!   children (which carry their own ACLs, if any).
//!
//! The walk is iterative (an explicit stack of directory frames), so deep
//! trees cannot overflow the thread's stack, and each directory's entries are
//! read in full before descending, so at most one directory handle is open at
//! any time. Symlinks in the source tree are never followed.
//!
//! Nothing is fsynced here: the caller issues one `syncfs` for the whole
//! snapshot, which is far cheaper than per-file `fsync`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, fchown, lchown, symlink,
};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, RawDir, SeekFrom, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use super::longpath::{PathContext, reach};

/// Copies the contents of the directory `src` into the existing, empty
/// directory `dst`, then gives `dst` itself the mode, owner, extended
/// attributes and times of `src`.
///
/// Regular files are reflinked when the filesystem supports it (`FICLONE`),
/// otherwise copied in-kernel with `copy_file_range`, otherwise with plain
/// reads and writes. The fallbacks keep a sparse file's holes when the
/// source filesystem reports them (`SEEK_DATA`/`SEEK_HOLE`), as
/// `cp --sparse=auto` does; runs of zeros written as data stay data.
///
/// Errors name the path they concern. On error `dst` is left partially
/// populated; the caller is expected to discard it.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let src_md = fs::symlink_metadata(src).ctx(src)?;
    if !src_md.is_dir() {
        return Err(not_a_dir(src));
    }
    let dst_md = fs::symlink_metadata(dst).ctx(dst)?;
    if !dst_md.is_dir() {
        return Err(not_a_dir(dst));
    }

    let mut copier = Copier::new((dst_md.dev(), dst_md.ino()));
    // `dst` was created by the caller and may have picked up attributes of
    // its own (typically a default ACL inherited from its parent, which the
    // copied children would inherit in turn). Drop those first so that `dst`
    // ends up with exactly the xattrs of `src`.
    copier.strip_foreign_xattrs(src, dst)?;
    copier.copy_contents(src, dst, src_md)
}

/// Copies the extended attributes of directory `src` to `dst` but
/// overlayfs's own (an opaque mark on a parent's root would hide every
/// layer below the copy). For the root of an overlay active, made as its
/// parent's root (mode and owner) by `make_root_dir`: the native driver's
/// copy keeps the root's xattrs, and overlay showed none in a child or a
/// view (audit: the SPEC's "identically on both drivers"). One
/// `llistxattr` when there are none.
pub fn copy_root_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let (mut names, mut value) = (Vec::new(), Vec::new());
    let len = list_xattrs(Node::Path(src), &mut names).ctx(src)?;
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if crate::store::layer::is_overlay_xattr(name) {
            continue;
        }
        let Some(vlen) = get_xattr(Node::Path(src), name, &mut value).ctx(src)? else {
            continue;
        };
        // One this user may not set (`security.*` without the privilege)
        // is passed over: a prepare that worked before these were copied
        // must still work (containerd copies none).
        match Node::Path(dst).set_xattr(name, &value[..vlen]) {
            Ok(()) | Err(Errno::OPNOTSUPP | Errno::PERM | Errno::ACCESS) => {}
            Err(e) => return Err(io::Error::from(e)).ctx(dst),
        }
    }
    Ok(())
}

fn not_a_dir(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotADirectory,
        format!("{}: not a directory", path.display()),
    )
}

/// One directory being copied: its remaining entries and the metadata to
/// apply to the copy once all entries are done.
/// Its paths are those of the walk's (one for all frames: a frame's own
/// would make a deep tree's copy cost its depth squared in memory).
struct Frame {
    md: Metadata,
    entries: std::vec::IntoIter<OsString>,
}

/// State shared across the whole copy.
struct Copier {
    /// `(dev, ino)` of the destination root. If `dst` lies inside `src`, the
    /// walk would otherwise copy the copy into itself forever.
    dst_root: (u64, u64),
    /// First destination path of every multiply-linked source inode, so later
    /// names of the same inode become hardlinks instead of copies.
    links: HashMap<(u64, u64), PathBuf>,
    /// Cleared after the first "not supported here" answer so that a tree of
    /// 100k files on e.g. ext4 does not pay a failing ioctl per file. This
    /// only affects speed: every method falls back correctly per file.
    try_reflink: bool,
    try_copy_range: bool,
    /// Reused scratch buffers (xattr names, xattr values, read/write data).
    names: Vec<u8>,
    value: Vec<u8>,
    data: Vec<u8>,
    dirbuf: Vec<u8>,
}

impl Copier {
    fn new(dst_root: (u64, u64)) -> Self {
        Copier {
            dst_root,
            links: HashMap::new(),
            try_reflink: true,
            try_copy_range: true,
            names: Vec::new(),
            value: Vec::new(),
            data: Vec::new(),
            dirbuf: Vec::new(),
        }
    }

    /// Iterative post-order walk: a directory's attributes are applied when
    /// its frame is popped, i.e. after everything inside it exists.
    fn copy_contents(&mut self, src: &Path, dst: &Path, md: Metadata) -> io::Result<()> {
        // The paths of the directory of the top frame.
        let (mut src_dir, mut dst_dir) = (src.to_path_buf(), dst.to_path_buf());
        let mut stack = vec![Frame {
            md,
            entries: read_names(src, &mut self.dirbuf)?.into_iter(),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.entries.next() else {
                if let Some(done) = stack.pop() {
                    self.apply_attrs(&src_dir, &dst_dir, &done.md)?;
                    src_dir.pop();
                    dst_dir.pop();
                }
                continue;
            };
            super::interrupt::check()?;
            let s = src_dir.join(&name);
            let d = dst_dir.join(&name);
            let md = fs::symlink_metadata(&*reach(&s).ctx(&s)?).ctx(&s)?;
            if md.is_dir() {
                if (md.dev(), md.ino()) == self.dst_root {
                    continue;
                }
                // 0700 while we fill it; the real mode is applied post-order.
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&*reach(&d).ctx(&d)?)
                    .ctx(&d)?;
                let entries = read_names(&s, &mut self.dirbuf)?.into_iter();
                stack.push(Frame { md, entries });
                (src_dir, dst_dir) = (s, d);
            } else {
                self.copy_non_dir(&s, &d, &md)?;
            }
        }
        Ok(())
    }

    fn copy_non_dir(&mut self, s: &Path, d: &Path, md: &Metadata) -> io::Result<()> {
        let key = (md.dev(), md.ino());
        if md.nlink() > 1
            && let Some(first) = self.links.get(&key)
        {
            // Another name of an inode already copied: link to the copy.
            // `link(2)` does not dereference symlinks, so hardlinked
            // symlinks stay symlinks.
            return fs::hard_link(&*reach(first).ctx(first)?, &*reach(d).ctx(d)?).ctx(d);
        }
        let ft = md.file_type();
        if ft.is_file() {
            self.copy_file(s, d, md)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&*reach(s).ctx(s)?).ctx(s)?;
            symlink(&target, &*reach(d).ctx(d)?).ctx(d)?;
            self.apply_attrs(s, d, md)?;
        } else {
            let kind = if ft.is_char_device() {
                FileType::CharacterDevice
            } else if ft.is_block_device() {
                FileType::BlockDevice
            } else if ft.is_fifo() {
                FileType::Fifo
            } else {
                // Unix sockets are meaningless without their listener, but a
                // socket inode can still be created so the tree matches.
                FileType::Socket
            };
            let at = reach(d).ctx(d)?;
            rustix::fs::mknodat(CWD, &*at, kind, Mode::from_raw_mode(0o600), md.rdev()).ctx(d)?;
            self.apply_attrs(s, d, md)?;
        }
        if md.nlink() > 1 {
            self.links.insert(key, d.to_path_buf());
        }
        Ok(())
    }

    fn copy_file(&mut self, s: &Path, d: &Path, md: &Metadata) -> io::Result<()> {
        let src = open_source(s)?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&*reach(d).ctx(d)?)
            .ctx(d)?;
        if md.len() > 0 {
            self.copy_data(&src, &dst, md).ctx(d)?;
        }
        // Same order as `apply_attrs`, but through the open descriptors,
        // which saves a path lookup per call.
        fchown(&dst, Some(md.uid()), Some(md.gid())).ctx(d)?;
        self.copy_xattrs(Node::Fd(src.as_fd()), Node::Fd(dst.as_fd()))
            .ctx(d)?;
        rustix::fs::fchmod(&dst, mode_of(md)).ctx(d)?;
        rustix::fs::futimens(&dst, &times_of(md)).ctx(d)?;
        Ok(())
    }

    /// Reflink, else in-kernel copy, else read/write (see `copy_segment`);
    /// a file with holes keeps them (see `copy_sparse`).
    fn copy_data(&mut self, src: &File, dst: &File, md: &Metadata) -> io::Result<()> {
        let len = md.len();
        if self.try_reflink {
            match rustix::fs::ioctl_ficlone(dst, src) {
                Ok(()) => return Ok(()),
                Err(Errno::OPNOTSUPP | Errno::NOTTY | Errno::XDEV) => self.try_reflink = false,
                // Per-file refusal (e.g. btrfs files with differing
                // checksum flags): fall back for this file only.
                Err(Errno::INVAL) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Without hole reporting the whole file is copied.
        if may_have_holes(md) && self.copy_sparse(src, dst, len)? {
            return Ok(());
        }
        // Up to the size lstat saw, not to EOF: that saves a syscall per
        // file, and the source is an immutable snapshot.
        self.copy_segment(src, dst, 0, len).map(drop)
    }

    /// Copies only the data segments of `src` (of size `len`), each to the
    /// same offset in `dst`, then sets `dst`'s size, so that holes stay
    /// holes. Returns false, having written nothing, if the filesystem
    /// cannot report holes.
    fn copy_sparse(&mut self, src: &File, dst: &File, mut len: u64) -> io::Result<bool> {
        let Some(segments) = data_segments(src, len)? else {
            return Ok(false);
        };
        for (start, end) in segments {
            let reached = self.copy_segment(src, dst, start, end)?;
            if reached < end {
                // The source ended early: copy what there was, as the full
                // copy does.
                len = reached;
                break;
            }
        }
        // Gives `dst` its trailing hole, if any.
        rustix::fs::ftruncate(dst, len)?;
        Ok(true)
    }

    /// Copies bytes `start..end` of `src` to the same offsets of `dst`,
    /// in-kernel if possible. Returns the offset reached: `end`, or less if
    /// the source ended first. Both methods take explicit offsets (never the
    /// file offsets, which the hole walk moves), so a `copy_file_range` that
    /// gives up midway is continued by `pread`/`pwrite` where it stopped.
    fn copy_segment(&mut self, src: &File, dst: &File, start: u64, end: u64) -> io::Result<u64> {
        let mut at = start;
        if self.try_copy_range {
            while at < end {
                let chunk = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
                // Copies: the kernel advances the offsets it is given.
                let (mut off_in, mut off_out) = (at, at);
                let (i, o) = (Some(&mut off_in), Some(&mut off_out));
                match rustix::fs::copy_file_range(src, i, dst, o, chunk) {
                    // EOF before the expected end, or a filesystem that
                    // reports 0 instead of an error (some virtual ones):
                    // let pread/pwrite settle it.
                    Ok(0) => break,
                    Ok(n) => at += n as u64,
                    Err(Errno::INTR) => {}
                    Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        self.try_copy_range = false;
                        break;
                    }
                    Err(Errno::INVAL) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if at < end && self.data.is_empty() {
            self.data = vec![0; 128 * 1024];
        }
        while at < end {
            let want =
                usize::try_from(end - at).map_or(self.data.len(), |n| n.min(self.data.len()));
            let n = match src.read_at(&mut self.data[..want], at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            dst.write_all_at(&self.data[..n], at)?;
            at += n as u64;
        }
        Ok(at)
    }

    /// Gives a non-regular-file node (directory, symlink, device, FIFO,
    /// socket) the ownership, xattrs, mode and times of its source.
    fn apply_attrs(&mut self, s: &Path, d: &Path, md: &Metadata) -> io::Result<()> {
        let (rs, rd) = (reach(s).ctx(s)?, reach(d).ctx(d)?);
        lchown(&*rd, Some(md.uid()), Some(md.gid())).ctx(d)?;
        self.copy_xattrs(Node::Path(&rs), Node::Path(&rd)).ctx(d)?;
        // Symlink permission bits are fixed on Linux and cannot be changed.
        if !md.is_symlink() {
            rustix::fs::chmodat(CWD, &*rd, mode_of(md), AtFlags::empty()).ctx(d)?;
        }
        rustix::fs::utimensat(CWD, &*rd, &times_of(md), AtFlags::SYMLINK_NOFOLLOW).ctx(d)
    }

    /// Copies every extended attribute of `src` to `dst`. Attributes the
    /// destination filesystem does not support at all (`ENOTSUP`) are
    /// skipped; any other failure is an error.
    fn copy_xattrs(&mut self, src: Node<'_>, dst: Node<'_>) -> io::Result<()> {
        let len = list_xattrs(src, &mut self.names)?;
        if len == 0 {
            return Ok(());
        }
        let names = std::mem::take(&mut self.names);
        let result = (|| {
            for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let Some(vlen) = get_xattr(src, name, &mut self.value)? else {
                    // Removed since it was listed.
                    continue;
                };
                match dst.set_xattr(name, &self.value[..vlen]) {
                    Ok(()) | Err(Errno::OPNOTSUPP) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })();
        self.names = names;
        result
    }

    /// Removes xattrs present on `dst` but absent from `src`.
    fn strip_foreign_xattrs(&mut self, src: &Path, dst: &Path) -> io::Result<()> {
        let dlen = list_xattrs(Node::Path(dst), &mut self.names).ctx(dst)?;
        if dlen == 0 {
            return Ok(());
        }
        let dst_names: Vec<Vec<u8>> = self.names[..dlen]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let slen = list_xattrs(Node::Path(src), &mut self.names).ctx(src)?;
        let src_names: Vec<&[u8]> = self.names[..slen].split(|&b| b == 0).collect();
        for name in dst_names {
            if src_names.contains(&name.as_slice()) {
                continue;
            }
            let cname = to_cstring(&name);
            match rustix::fs::lremovexattr(dst, cname.as_c_str()) {
                Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => {}
                Err(e) => return Err(e).ctx(dst),
            }
        }
        Ok(())
    }
}

/// Lists the names in directory `path` (without `.` and `..`).
///
/// The directory is opened with `O_NOFOLLOW` (a symlink swapped in for a
/// directory is not followed) and, when permitted, `O_NOATIME`: copying a
/// snapshot must not modify it, and a source directory whose atime changed
/// mid-copy would no longer match the copy.
fn read_names(path: &Path, buf: &mut Vec<u8>) -> io::Result<Vec<OsString>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let at = reach(path).ctx(path)?;
    let fd = match rustix::fs::openat(CWD, &*at, flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership of the directory or CAP_FOWNER.
        Err(Errno::PERM) => rustix::fs::openat(CWD, &*at, flags, Mode::empty()),
        r => r,
    }
    .ctx(path)?;
    names_in(&fd, path, buf)
}

/// The names in open directory `fd` (at `path`, for errors), read from its
/// current position with `buf` as the `getdents` buffer.
pub(super) fn names_in(fd: impl AsFd, path: &Path, buf: &mut Vec<u8>) -> io::Result<Vec<OsString>> {
    if buf.capacity() < 32 * 1024 {
        *buf = Vec::with_capacity(32 * 1024);
    }
    let mut names = Vec::new();
    let mut dir = RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(entry) = dir.next() {
        let entry = entry.ctx(path)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Opens a source file for reading without following a symlink that may
/// have replaced it, and without touching its atime when permitted.
fn open_source(path: &Path) -> io::Result<File> {
    let at = reach(path).ctx(path)?;
    let open = |extra: i32| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | extra)
            .open(&*at)
    };
    match open(libc::O_NOATIME) {
        // O_NOATIME needs ownership of the file or CAP_FOWNER.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
    .ctx(path)
}

fn mode_of(md: &Metadata) -> Mode {
    Mode::from_raw_mode(md.mode() & 0o7777)
}

fn times_of(md: &Metadata) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        },
    }
}

fn to_cstring(name: &[u8]) -> std::ffi::CString {
    // Names come from a NUL-separated list, so they contain no NUL.
    std::ffi::CString::new(name).unwrap_or_default()
}

/// A filesystem object addressed either by path (never following a final
/// symlink) or by an open descriptor.
#[derive(Clone, Copy)]
enum Node<'a> {
    Path(&'a Path),
    Fd(BorrowedFd<'a>),
}

impl Node<'_> {
    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            Node::Path(p) => rustix::fs::llistxattr(p, buf),
            Node::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        }
    }

    fn list_len(self) -> rustix::io::Result<usize> {
        match self {
            Node::Path(p) => rustix::fs::llistxattr_query(p),
            Node::Fd(fd) => rustix::fs::flistxattr_query(fd),
        }
    }

    fn get(self, name: &std::ffi::CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            Node::Path(p) => rustix::fs::lgetxattr(p, name, buf),
            Node::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
        }
    }

    fn get_len(self, name: &std::ffi::CStr) -> rustix::io::Result<usize> {
        match self {
            Node::Path(p) => rustix::fs::lgetxattr_query(p, name),
            Node::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
        }
    }

    fn set_xattr(self, name: &[u8], value: &[u8]) -> rustix::io::Result<()> {
        let name = to_cstring(name);
        match self {
            Node::Path(p) => rustix::fs::lsetxattr(p, name.as_c_str(), value, XattrFlags::empty()),
            Node::Fd(fd) => rustix::fs::fsetxattr(fd, name.as_c_str(), value, XattrFlags::empty()),
        }
    }
}

/// Lists xattr names into `buf` (NUL-separated), growing it as needed.
/// Returns the used length; 0 when the filesystem has no xattr support.
fn list_xattrs(node: Node<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.is_empty() {
        buf.resize(1024, 0);
    }
    loop {
        match node.list(buf) {
            Ok(n) => return Ok(n),
            Err(Errno::RANGE) => {
                let need = node.list_len()?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(Errno::OPNOTSUPP) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads one xattr value into `buf`, growing it as needed. `None` if the
/// attribute disappeared after being listed.
fn get_xattr(node: Node<'_>, name: &[u8], buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let name = to_cstring(name);
    if buf.is_empty() {
        buf.resize(1024, 0);
    }
    loop {
        match node.get(&name, buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::RANGE) => {
                let need = node.get_len(&name)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a file may have holes: fewer allocated blocks than its size,
/// the only cheap sign, from the `lstat` already done (files without one,
/// nearly all, pay no `lseek` for holes).
pub(crate) fn may_have_holes(md: &Metadata) -> bool {
    md.blocks().saturating_mul(512) < md.len()
}

/// The data segments (offset, end) of `f` below `len`, the rest being
/// holes; None if its file system cannot report holes. Moves `f`'s file
/// offset.
pub(crate) fn data_segments(f: &File, len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut segments = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(start) if start < len => start,
            // No data at or after `pos`: the rest is one hole.
            Ok(_) | Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // There is always a hole at the end of the file, so this only
        // fails if hole reporting does.
        let end = match rustix::fs::seek(f, SeekFrom::Hole(start)) {
            Ok(end) => end.min(len),
            Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        segments.push((start, end));
        pos = end;
    }
    Ok(Some(segments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    /// Everything `copy_tree` promises to preserve about one node, gathered
    /// without reading file contents or symlink targets (which would bump
    /// atimes under relatime) and with directories read `O_NOATIME`.
    #[derive(PartialEq, Eq)]
    struct Attrs {
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        size: u64,
        nlink: u64,
        atime: (i64, i64),
        mtime: (i64, i64),
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    impl std::fmt::Debug for Attrs {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let xattrs: Vec<_> = self
                .xattrs
                .iter()
                .map(|(k, v)| format!("{}({}B)", String::from_utf8_lossy(k), v.len()))
                .collect();
            write!(
                f,
                "mode={:o} owner={}:{} rdev={} size={} nlink={} atime={:?} mtime={:?} xattrs={:?}",
                self.mode,
                self.uid,
                self.gid,
                self.rdev,
                self.size,
                self.nlink,
                self.atime,
                self.mtime,
                xattrs
            )
        }
    }

    /// Human-readable differences between two snapshots.
    fn diff(a: &BTreeMap<PathBuf, Attrs>, b: &BTreeMap<PathBuf, Attrs>) -> Vec<String> {
        let mut out = Vec::new();
        for (rel, x) in a {
            match b.get(rel) {
                None => out.push(format!("{rel:?}: missing")),
                Some(y) if x != y => out.push(format!("{rel:?}:\n  want {x:?}\n  got  {y:?}")),
                Some(_) => {}
            }
        }
        for rel in b.keys().filter(|k| !a.contains_key(*k)) {
            out.push(format!("{rel:?}: unexpected"));
        }
        out
    }

    fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut names = Vec::new();
        let len = list_xattrs(Node::Path(path), &mut names).unwrap();
        let mut out = BTreeMap::new();
        for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let mut value = Vec::new();
            let n = get_xattr(Node::Path(path), name, &mut value)
                .unwrap()
                .unwrap();
            out.insert(name.to_vec(), value[..n].to_vec());
        }
        out
    }

    fn snapshot(root: &Path) -> BTreeMap<PathBuf, Attrs> {
        let mut out = BTreeMap::new();
        let mut todo = vec![PathBuf::new()];
        let mut buf = Vec::new();
        while let Some(rel) = todo.pop() {
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).unwrap();
            let rdev = if md.file_type().is_char_device() || md.file_type().is_block_device() {
                md.rdev()
            } else {
                0
            };
            out.insert(
                rel.clone(),
                Attrs {
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    rdev,
                    // Directory sizes depend on the fs's history, not on
                    // what the copy did.
                    size: if md.is_dir() { 0 } else { md.len() },
                    nlink: md.nlink(),
                    atime: (md.atime(), md.atime_nsec()),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    xattrs: xattrs_of(&path),
                },
            );
            if md.is_dir() {
                for name in read_names(&path, &mut buf).unwrap() {
                    todo.push(rel.join(name));
                }
            }
        }
        out
    }

    fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
        let ts = Timestamps {
            last_access: Timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1 as _,
            },
            last_modification: Timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1 as _,
            },
        };
        rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A v2 `vfs_cap_data` granting CAP_NET_BIND_SERVICE (effective,
    /// permitted), as `setcap cap_net_bind_service+ep` would write it.
    fn capability() -> Vec<u8> {
        let mut v = Vec::new();
        for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
            v.extend_from_slice(&word.to_le_bytes());
        }
        v
    }

    fn build_tree(src: &Path) {
        fs::create_dir(src).unwrap();
        fs::write(src.join("regular"), b"hello, world\n").unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        fs::write(src.join("big"), &big).unwrap();

        fs::create_dir(src.join("private")).unwrap();
        fs::write(src.join("private/secret"), b"s").unwrap();
        chmod(&src.join("private"), 0o700);
        fs::create_dir(src.join("shared")).unwrap();
        chmod(&src.join("shared"), 0o2775);
        lchown(src.join("shared"), Some(0), Some(5678)).unwrap();
        fs::create_dir(src.join("tmp")).unwrap();
        chmod(&src.join("tmp"), 0o1777);
        fs::create_dir(src.join("readonly")).unwrap();
        fs::write(src.join("readonly/file"), b"ro").unwrap();
        chmod(&src.join("readonly"), 0o555);

        symlink("regular", src.join("link")).unwrap();
        symlink("/nonexistent/target", src.join("dangling")).unwrap();
        lchown(src.join("dangling"), Some(1234), Some(5678)).unwrap();
        set_xattr(&src.join("dangling"), "trusted.linkattr", b"on a symlink");
        set_times(
            &src.join("dangling"),
            (1_400_000_000, 111),
            (1_300_000_000, 222),
        );

        fs::write(src.join("hard1"), b"linked content").unwrap();
        fs::hard_link(src.join("hard1"), src.join("hard2")).unwrap();
        fs::hard_link(src.join("hard1"), src.join("shared/hard3")).unwrap();
        symlink("hard1", src.join("symhard1")).unwrap();
        fs::hard_link(src.join("symhard1"), src.join("symhard2")).unwrap();

        let mk = |name: &str, kind, mode, dev| {
            rustix::fs::mknodat(CWD, src.join(name), kind, Mode::from_raw_mode(mode), dev).unwrap()
        };
        mk("fifo", FileType::Fifo, 0o640, 0);
        mk(
            "null",
            FileType::CharacterDevice,
            0o666,
            rustix::fs::makedev(1, 3),
        );
        mk(
            "loop9",
            FileType::BlockDevice,
            0o660,
            rustix::fs::makedev(7, 9),
        );
        mk("sock", FileType::Socket, 0o755, 0);
        lchown(src.join("null"), Some(0), Some(5)).unwrap();

        fs::write(src.join("setuid"), b"#!/bin/sh\n").unwrap();
        chmod(&src.join("setuid"), 0o4755);
        // chown clears setuid/setgid, so this one checks the ordering.
        fs::write(src.join("setuid-owned"), b"#!/bin/sh\n").unwrap();
        lchown(src.join("setuid-owned"), Some(1234), Some(5678)).unwrap();
        chmod(&src.join("setuid-owned"), 0o6750);

        fs::write(src.join("owned"), b"mine").unwrap();
        lchown(src.join("owned"), Some(1234), Some(5678)).unwrap();
        // chown also drops file capabilities.
        set_xattr(&src.join("owned"), "security.capability", &capability());
        set_xattr(&src.join("owned"), "user.note", b"kept");

        fs::write(src.join("xattrs"), b"x").unwrap();
        set_xattr(&src.join("xattrs"), "user.empty", b"");
        // Bigger than the initial buffers, to exercise their growth.
        set_xattr(&src.join("xattrs"), "user.big", &vec![b'v'; 1200]);
        set_xattr(&src.join("xattrs"), "trusted.overlay.opaque", b"y");
        for i in 0..20 {
            let name = format!("user.a-rather-long-attribute-name-to-fill-the-list.{i:03}");
            set_xattr(&src.join("xattrs"), &name, b"1");
        }
        set_xattr(&src.join("private"), "user.dirattr", b"d");
        set_xattr(&src.join("private"), "trusted.dirattr", b"t");

        fs::write(src.join("timed"), b"t").unwrap();
        set_times(
            &src.join("timed"),
            (1_500_000_000, 987_654_321),
            (1_600_000_000, 123_456_789),
        );

        fs::create_dir_all(src.join("a/b/c")).unwrap();
        fs::write(src.join("a/b/c/leaf"), b"leaf").unwrap();
        set_times(
            &src.join("a/b/c"),
            (1_100_000_000, 5),
            (1_200_000_000, 999_999_999),
        );
        set_times(&src.join("a/b"), (1_000_000_000, 1), (1_000_000_001, 2));

        chmod(src, 0o2751);
        lchown(src, Some(1234), Some(5678)).unwrap();
        set_xattr(src, "user.root", b"r");
        set_xattr(src, "trusted.root", b"t");
        set_times(src, (1_700_000_000, 42), (1_650_000_000, 43));
    }

    #[test]
    fn copies_every_kind_and_attribute() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        build_tree(&src);
        fs::create_dir(&dst).unwrap();
        set_xattr(&dst, "user.foreign", b"must go");

        let before = snapshot(&src);
        copy_tree(&src, &dst).unwrap();
        let after = snapshot(&dst);
        let differences = diff(&before, &after);
        assert!(differences.is_empty(), "{}", differences.join("\n"));

        // Reading files and directories must not touch the source; only
        // symlink atimes move (readlink(2) has no O_NOATIME).
        let mut source_now = snapshot(&src);
        for (rel, attrs) in source_now.iter_mut() {
            if attrs.mode & libc::S_IFMT == libc::S_IFLNK {
                attrs.atime = before[rel].atime;
            }
        }
        let differences = diff(&before, &source_now);
        assert!(
            differences.is_empty(),
            "source modified: {}",
            differences.join("\n")
        );

        // Spot checks that the comparison really covered what matters.
        let root = &after[Path::new("")];
        assert_eq!(root.mode & 0o7777, 0o2751);
        assert!(!root.xattrs.contains_key(b"user.foreign".as_slice()));
        assert_eq!(after[Path::new("setuid-owned")].mode & 0o7777, 0o6750);
        assert_eq!(after[Path::new("shared")].mode & 0o7777, 0o2775);
        assert_eq!(after[Path::new("tmp")].mode & 0o7777, 0o1777);
        assert_eq!(
            after[Path::new("owned")].xattrs[b"security.capability".as_slice()],
            capability()
        );
        assert_eq!(
            after[Path::new("timed")].mtime,
            (1_600_000_000, 123_456_789)
        );
        assert_eq!(
            after[Path::new("timed")].atime,
            (1_500_000_000, 987_654_321)
        );
        assert_eq!(
            after[Path::new("a/b/c")].mtime,
            (1_200_000_000, 999_999_999)
        );
        assert_eq!(after[Path::new("a/b")].mtime, (1_000_000_001, 2));
        assert_eq!(after[Path::new("null")].rdev, rustix::fs::makedev(1, 3));
        assert_eq!(after[Path::new("hard1")].nlink, 3);
        assert_eq!(after[Path::new("dangling")].uid, 1234);

        let ft = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().file_type();
        assert!(ft("fifo").is_fifo());
        assert!(ft("null").is_char_device());
        assert!(ft("loop9").is_block_device());
        assert!(ft("sock").is_socket());
        assert!(ft("link").is_symlink());
        assert!(ft("symhard1").is_symlink());

        let ino = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().ino();
        assert_eq!(ino("hard1"), ino("hard2"));
        assert_eq!(ino("hard1"), ino("shared/hard3"));
        assert_eq!(ino("symhard1"), ino("symhard2"));
        assert_ne!(
            ino("hard1"),
            fs::symlink_metadata(src.join("hard1")).unwrap().ino()
        );

        for file in ["regular", "empty", "big", "hard2", "owned", "a/b/c/leaf"] {
            assert_eq!(
                fs::read(dst.join(file)).unwrap(),
                fs::read(src.join(file)).unwrap(),
                "contents of {file}"
            );
        }
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("regular")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("/nonexistent/target")
        );
    }

    /// Creates a file of `size` bytes holding `data` at the given offsets
    /// and holes everywhere else.
    fn write_sparse(path: &Path, size: u64, data: &[(u64, &[u8])]) {
        let file = File::create(path).unwrap();
        file.set_len(size).unwrap();
        for (at, bytes) in data {
            file.write_all_at(bytes, *at).unwrap();
        }
    }

    /// Copies one file as the walk does, minus reflink (which would keep
    /// holes by itself where the filesystem has it), and with or without
    /// `copy_file_range`.
    fn copy_one(src: &Path, dst: &Path, copy_range: bool) {
        let mut copier = Copier::new((0, 0));
        copier.try_reflink = false;
        copier.try_copy_range = copy_range;
        let md = fs::symlink_metadata(src).unwrap();
        copier.copy_file(src, dst, &md).unwrap();
    }

    fn assert_same_contents(src: &Path, dst: &Path) {
        let (s, d) = (fs::metadata(src).unwrap(), fs::metadata(dst).unwrap());
        assert_eq!(d.len(), s.len(), "size of {dst:?}");
        assert!(
            fs::read(dst).unwrap() == fs::read(src).unwrap(),
            "contents of {dst:?} differ from {src:?}"
        );
    }

    /// `dst` has the contents of `src` and, if `src` really has holes, no
    /// more blocks than `src` (give or take a little metadata).
    fn assert_copied_sparse(src: &Path, dst: &Path) {
        assert_same_contents(src, dst);
        let (s, d) = (fs::metadata(src).unwrap(), fs::metadata(dst).unwrap());
        if s.blocks() * 512 >= s.len() {
            eprintln!(
                "not checking the blocks of {dst:?}: the source has no holes on this \
                 filesystem ({} blocks for {} bytes)",
                s.blocks(),
                s.len()
            );
            return;
        }
        assert!(
            d.blocks() <= s.blocks() + 8,
            "{dst:?} has {} blocks, its source {}",
            d.blocks(),
            s.blocks()
        );
        assert!(
            d.blocks() < d.len() / 512,
            "{dst:?} has {} blocks for {} bytes: its holes were filled",
            d.blocks(),
            d.len()
        );
    }

    /// Files with holes at the start, in the middle and at the end, with
    /// only holes, and ending in data (whose names it returns), and one
    /// without holes, "dense".
    fn build_sparse_files(src: &Path) -> [&'static str; 3] {
        const MIB: u64 = 1 << 20;
        fs::create_dir(src).unwrap();
        let pattern: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
        write_sparse(
            &src.join("holes"),
            8 * MIB,
            &[
                (MIB, &pattern[..100_000]),
                // Unaligned, and with zeros written as data inside.
                (3 * MIB + 123, &pattern[..5_000]),
                (3 * MIB + 5_123, &[0; 3_000]),
                (3 * MIB + 8_123, &pattern[..7]),
            ],
        );
        write_sparse(&src.join("only-hole"), 4 * MIB, &[]);
        write_sparse(
            &src.join("ends-in-data"),
            2 * MIB,
            &[(2 * MIB - 10, b"0123456789")],
        );
        fs::write(src.join("dense"), &pattern).unwrap();
        ["holes", "only-hole", "ends-in-data"]
    }

    /// A root's xattrs are copied but overlayfs's own: an opaque mark on a
    /// parent's root would hide every layer below the child.
    #[test]
    fn root_xattrs_but_overlay_s() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        set_xattr(&src, "user.k", b"v");
        set_xattr(&src, "user.overlay.opaque", b"y");
        set_xattr(&src, "trusted.overlay.opaque", b"y");
        copy_root_xattrs(&src, &dst).unwrap();
        let got: Vec<Vec<u8>> = xattrs_of(&dst).into_keys().collect();
        assert_eq!(got, [b"user.k".to_vec()]);
    }

    #[test]
    fn keeps_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let files = build_sparse_files(&src);
        let dst = tmp.path().join("dst");
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        // Before reading the contents, which moves atimes.
        let differences = diff(&snapshot(&src), &snapshot(&dst));
        assert!(differences.is_empty(), "{}", differences.join("\n"));
        for name in files {
            assert_copied_sparse(&src.join(name), &dst.join(name));
        }
        assert_same_contents(&src.join("dense"), &dst.join("dense"));
    }

    #[test]
    fn keeps_holes_in_both_fallbacks() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let files = build_sparse_files(&src);
        for copy_range in [true, false] {
            let dst = tmp.path().join(format!("dst-{copy_range}"));
            fs::create_dir(&dst).unwrap();
            for name in files {
                copy_one(&src.join(name), &dst.join(name), copy_range);
                assert_copied_sparse(&src.join(name), &dst.join(name));
            }
            copy_one(&src.join("dense"), &dst.join("dense"), copy_range);
            assert_same_contents(&src.join("dense"), &dst.join("dense"));
        }
    }

    #[test]
    fn copies_deep_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        let mut deep = src.clone();
        for _ in 0..600 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("bottom"), b"deep").unwrap();
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        let copied = dst.join(deep.strip_prefix(&src).unwrap()).join("bottom");
        assert_eq!(fs::read(copied).unwrap(), b"deep");
    }

    #[test]
    fn does_not_copy_into_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"f").unwrap();
        let dst = src.join("copy");
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read(dst.join("sub/f")).unwrap(), b"f");
        assert!(!dst.join("copy").exists());
    }

    #[test]
    fn errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let dst = tmp.path().join("dst");
        fs::create_dir(&dst).unwrap();
        let err = copy_tree(&missing, &dst).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );

        // A destination entry in the way.
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("clash"), b"1").unwrap();
        fs::write(dst.join("clash"), b"2").unwrap();
        let err = copy_tree(&src, &dst).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(
            err.to_string()
                .contains(&*dst.join("clash").to_string_lossy()),
            "{err}"
        );

        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = copy_tree(&file, &dst).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
    }
}
