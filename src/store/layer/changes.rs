//! What goes into a layer being written: the [`Item`]s of an overlay upper
//! directory ([`walk_upper`]) or of the comparison of two trees
//! ([`walk_compare`]), and the reading of paths, metadata, xattrs and file
//! contents those walks need (paths longer than `PATH_MAX` are reached
//! through [`longpath`]).
//!
//! Apart from the tar writer, which only turns the sorted items into tar
//! entries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::store::layout::NotATree;
use crate::store::{copy, longpath};

use super::reader::read_up_to;
use super::{
    LayerError, OPAQUE_MARKER, Pairs, Result, Unfit, WHITEOUT_PREFIX, cstr, io_err,
    is_overlay_xattr, join, show,
};

pub(super) enum Item {
    /// An empty marker file (`.wh.NAME` or `.wh..wh..opq`), by tar path.
    Marker(Vec<u8>),
    /// A filesystem object: its path in the layer (and under the tree the
    /// layer is written from), and lstat.
    Node(Vec<u8>, Metadata),
}

impl Item {
    pub(super) fn rel(&self) -> &[u8] {
        match self {
            Item::Marker(r) | Item::Node(r, _) => r,
        }
    }
}

fn read_err(p: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |e| io_err(format!("cannot read {}", p.display()), e)
}

/// [`longpath::reach`], with the error naming `p`.
fn reach(p: &Path) -> Result<longpath::Reach<'_>> {
    longpath::reach(p).map_err(read_err(p))
}

/// Sorted names of a directory's entries.
pub(super) fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for ent in std::fs::read_dir(&*reach(dir)?).map_err(read_err(dir))? {
        names.push(ent.map_err(read_err(dir))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Sorted names of directory `dir` of a walk, at `rel` in it: the root
/// (`rel` empty) through [`tree_names`].
fn names_at(dir: &Path, rel: &[u8]) -> Result<Vec<std::ffi::OsString>> {
    if rel.is_empty() {
        tree_names(dir)
    } else {
        sorted_names(dir)
    }
}

/// Sorted names in `root`, the root of a tree a layer is read from (a
/// snapshot's tree or upper directory), opened without following a
/// symlink: one put in the tree's place (or a file) is a [`NotATree`]
/// error, not the tree it points at (audit: `diff` wrote a symlink's
/// target's files as the layer, and `push` published them). The open is
/// the one `read_dir` makes, with `O_NOFOLLOW`.
fn tree_names(root: &Path) -> Result<Vec<std::ffi::OsString>> {
    let fd = match longpath::open_dir(root) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOTDIR) => return Err(read_err(root)(NotATree::error(root))),
        Err(e) => return Err(read_err(root)(e.into())),
    };
    let mut names = copy::names_in(&fd, root, &mut Vec::new()).map_err(read_err(root))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

pub(super) fn lstat(p: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(&*reach(p)?).map_err(read_err(p))
}

pub(super) fn read_link(p: &Path) -> Result<PathBuf> {
    std::fs::read_link(&*reach(p)?).map_err(read_err(p))
}

/// Opens a regular file of the walk for reading.
pub(super) fn open_file(p: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&*reach(p)?)
        .map_err(read_err(p))
}

pub(super) fn is_whiteout_dev(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

#[cfg(test)]
pub(super) fn is_opaque(p: &Path) -> Result<bool> {
    Ok(overlay_marks(p)?.opaque)
}

/// What overlayfs left on an upper entry, from one listing of its xattrs.
#[derive(Default)]
struct OverlayMarks {
    /// `opaque=y`: the directory hides what is below it.
    opaque: bool,
    /// A redirect (`redirect_dir=on`): a renamed directory whose content is
    /// still below, under its old name.
    redirect: bool,
}

fn overlay_marks(p: &Path) -> Result<OverlayMarks> {
    let at = reach(p)?;
    let list = match xattr_call(|b| rustix::fs::llistxattr(&*at, b)) {
        Ok(list) => list,
        Err(Errno::NOTSUP) => return Ok(OverlayMarks::default()),
        Err(e) => {
            return Err(io_err(
                format!("cannot list the xattrs of {}", p.display()),
                e,
            ));
        }
    };
    let mut marks = OverlayMarks::default();
    for name in list.split(|b| *b == 0) {
        let Some(mark) = name
            .strip_prefix(b"trusted.overlay.")
            .or_else(|| name.strip_prefix(b"user.overlay."))
        else {
            continue;
        };
        match mark {
            b"redirect" => marks.redirect = true,
            b"opaque" => {
                let mut v = [0u8; 4];
                let name = cstr(name);
                marks.opaque |= matches!(
                    rustix::fs::lgetxattr(&*at, name.as_c_str(), &mut v[..]),
                    Ok(1) if v[0] == b'y'
                );
            }
            _ => {}
        }
    }
    Ok(marks)
}

/// Refuses an upper entry that is not the change it looks like: a
/// directory renamed with `redirect_dir=on` (its content is still below,
/// under the old name) or a file changed with `metacopy=on` (its data is
/// still below). Written as they are, they would be an empty directory and
/// a file of zeros.
pub(super) fn left_below(rel: &[u8], option: &str) -> LayerError {
    LayerError::Precondition(format!(
        "`{}` in its upper directory was left by an overlay mount with {option}=on: \
         its {} is still in a lower layer, so the upper directory is not the \
         snapshot's change",
        show(rel),
        if option == "metacopy" {
            "data"
        } else {
            "content"
        }
    ))
}

/// The opaque marker an upper directory adds, if any, after refusing a
/// redirected one ([`left_below`]). Files are checked for a metacopy where
/// their xattrs are read anyway (`TarWriter::node`, in the writer).
fn upper_dir_marker(p: &Path, rel: &[u8]) -> Result<Option<Item>> {
    let marks = overlay_marks(p)?;
    if marks.redirect {
        return Err(left_below(rel, "redirect_dir"));
    }
    Ok(marks.opaque.then(|| {
        Item::Marker(if rel == b"." {
            OPAQUE_MARKER.to_vec()
        } else {
            join(rel, OPAQUE_MARKER)
        })
    }))
}

/// The whiteout for `name` of directory `dir`, deleted. A name that is
/// itself a `.wh.` one cannot be deleted by a layer: its whiteout would be
/// `.wh..wh.NAME`, which readers skip as aufs metadata (and the whiteout
/// of `.wh..opq` would be the opaque marker).
fn whiteout(dir: &[u8], name: &[u8]) -> Result<Item> {
    if name.starts_with(WHITEOUT_PREFIX) {
        return Err(LayerError::Reserved {
            path: join(dir, name),
            unfit: Unfit::Deleted,
        });
    }
    Ok(Item::Marker(join(dir, &[WHITEOUT_PREFIX, name].concat())))
}

/// Refuses the first entry (in `items`' order) whose name begins with
/// `.wh.`, or that is a character device 0/0: a layer cannot carry it,
/// since every reader takes it for a whiteout or an opaque marker and
/// deletes what it names (or refuses the device). An overlay upper's
/// devices 0/0 are its whiteouts, made markers before this.
pub(super) fn refuse_reserved(items: &[Item]) -> Result<()> {
    for item in items {
        if let Item::Node(rel, md) = item {
            let base = rel.rsplit(|b| *b == b'/').next().unwrap_or(rel);
            let unfit = if base.starts_with(WHITEOUT_PREFIX) {
                Unfit::Named
            } else if is_whiteout_dev(md) {
                Unfit::WhiteoutDevice
            } else {
                continue;
            };
            return Err(LayerError::Reserved {
                path: rel.clone(),
                unfit,
            });
        }
    }
    Ok(())
}

pub(super) fn walk_upper(upper: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    items.extend(upper_dir_marker(upper, b".")?);
    let mut stack = vec![(Vec::new(), upper.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        for name in names_at(&dir, &rel)? {
            let path = dir.join(&name);
            let md = lstat(&path)?;
            let crel = join(&rel, name.as_bytes());
            if is_whiteout_dev(&md) {
                items.push(whiteout(&rel, name.as_bytes())?);
                continue;
            }
            // A socket is never in a layer, but in an upper directory it
            // hides whatever the layers below have under its name: that is
            // a deletion, written as one (audit: a file or directory
            // replaced by a socket came back in the layer's image, where
            // the native driver, comparing trees, writes the whiteout). A
            // lower may have nothing there; the whiteout then deletes
            // nothing.
            if md.file_type().is_socket() {
                items.push(whiteout(&rel, name.as_bytes())?);
                continue;
            }
            if md.is_dir() {
                items.extend(upper_dir_marker(&path, &crel)?);
                stack.push((crel.clone(), path.clone()));
            }
            items.push(Item::Node(crel, md));
        }
    }
    Ok(items)
}

/// Runs an xattr call with a small buffer, then a 64 KiB one (the kernel's
/// limit for names and values) when that is too small.
pub(super) fn xattr_call(
    mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut small = [0u8; 1024];
    match f(&mut small) {
        Ok(n) => Ok(small[..n].to_vec()),
        Err(Errno::RANGE) => {
            let mut big = vec![0u8; 64 * 1024];
            let n = f(&mut big)?;
            big.truncate(n);
            Ok(big)
        }
        Err(e) => Err(e),
    }
}

/// Non-overlay xattrs of `p`, sorted by name.
pub(super) fn xattrs_of(p: &Path) -> Result<Pairs> {
    Ok(xattrs_listed(p)?.0)
}

/// Non-overlay xattrs of `p`, sorted by name, and whether overlay's
/// `metacopy` is among the others.
pub(super) fn xattrs_listed(p: &Path) -> Result<(Pairs, bool)> {
    let at = reach(p)?;
    let list = match xattr_call(|b| rustix::fs::llistxattr(&*at, b)) {
        Ok(list) => list,
        Err(Errno::NOTSUP) => return Ok((Vec::new(), false)),
        Err(e) => {
            return Err(io_err(
                format!("cannot list the xattrs of {}", p.display()),
                e,
            ));
        }
    };
    let (mut out, mut metacopy) = (Vec::new(), false);
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if is_overlay_xattr(name) {
            metacopy |= name.ends_with(b".overlay.metacopy");
            continue;
        }
        let cname = cstr(name);
        match xattr_call(|b| rustix::fs::lgetxattr(&*at, cname.as_c_str(), b)) {
            Ok(value) => out.push((name.to_vec(), value)),
            // Removed meanwhile.
            Err(Errno::NODATA) => {}
            Err(e) => {
                return Err(io_err(
                    format!("cannot read xattr `{}` of {}", show(name), p.display()),
                    e,
                ));
            }
        }
    }
    out.sort();
    Ok((out, metacopy))
}

/// Non-overlay xattrs of an open file, sorted by name.
pub(super) fn xattrs_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<Pairs> {
    let list = match xattr_call(|b| rustix::fs::flistxattr(fd, b)) {
        Ok(list) => list,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if is_overlay_xattr(name) {
            continue;
        }
        let cname = cstr(name);
        match xattr_call(|b| rustix::fs::fgetxattr(fd, cname.as_c_str(), b)) {
            Ok(value) => out.push((name.to_vec(), value)),
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Whether files `a` and `b`, of `len` bytes each, hold the same bytes.
/// When one has holes and both have them in the same places (a native copy
/// keeps them), only their data is read: a sparse file of terabytes with a
/// few bytes of data is compared in microseconds, not hours.
pub(super) fn same_content(a: &Path, b: &Path, len: u64, sparse: bool) -> Result<bool> {
    let mut fa = open_file(a)?;
    let mut fb = open_file(b)?;
    if sparse {
        if let Some(data) = same_data_map(&fa, &fb, len).map_err(read_err(a))? {
            return same_ranges(&fa, &fb, &data).map_err(read_err(a));
        }
        // The walk moved the file offsets the whole comparison reads from.
        use std::io::Seek;
        fa.rewind().map_err(read_err(a))?;
        fb.rewind().map_err(read_err(b))?;
    }
    let mut ba = vec![0u8; 128 * 1024];
    let mut bb = vec![0u8; 128 * 1024];
    loop {
        let na = read_up_to(&mut fa, &mut ba).map_err(read_err(a))?;
        let nb = read_up_to(&mut fb, &mut bb).map_err(read_err(b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// The data segments (offset, end) of `a` and `b` if both have the same
/// ones below `len`; None if they differ, or the file system cannot tell
/// holes (then the whole files are compared).
fn same_data_map(a: &File, b: &File, len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let ours = copy::data_segments(a, len)?;
    let theirs = copy::data_segments(b, len)?;
    Ok(if ours == theirs { ours } else { None })
}

/// Whether `a` and `b` hold the same bytes in each of `ranges`.
fn same_ranges(a: &File, b: &File, ranges: &[(u64, u64)]) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut ba = vec![0u8; 128 * 1024];
    let mut bb = vec![0u8; 128 * 1024];
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).map_or(ba.len(), |n| n.min(ba.len()));
            // A file cut short while being read (an active's) differs.
            match (
                a.read_exact_at(&mut ba[..n], at),
                b.read_exact_at(&mut bb[..n], at),
            ) {
                (Ok(()), Ok(())) if ba[..n] == bb[..n] => {}
                (Err(e), _) | (_, Err(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
                    return Err(e);
                }
                _ => return Ok(false),
            }
            at += n as u64;
        }
    }
    Ok(true)
}

/// Whether `new` differs from `old` (same name in the two trees).
fn changed(old: &Path, om: &Metadata, new: &Path, nm: &Metadata) -> Result<bool> {
    let (ot, nt) = (om.file_type(), nm.file_type());
    let same_type = ot.is_dir() == nt.is_dir()
        && ot.is_file() == nt.is_file()
        && ot.is_symlink() == nt.is_symlink()
        && ot.is_char_device() == nt.is_char_device()
        && ot.is_block_device() == nt.is_block_device()
        && ot.is_fifo() == nt.is_fifo();
    if !same_type
        || om.mode() != nm.mode()
        || om.uid() != nm.uid()
        || om.gid() != nm.gid()
        || om.mtime() != nm.mtime()
        || om.mtime_nsec() != nm.mtime_nsec()
        || (!nt.is_dir() && om.size() != nm.size())
        || ((nt.is_char_device() || nt.is_block_device()) && om.rdev() != nm.rdev())
    {
        return Ok(true);
    }
    if nt.is_symlink() {
        let ol = read_link(old)?;
        let nl = read_link(new)?;
        if ol != nl {
            return Ok(true);
        }
    }
    if xattrs_of(old)? != xattrs_of(new)? {
        return Ok(true);
    }
    if nt.is_file() && !(om.dev() == nm.dev() && om.ino() == nm.ino()) {
        let holes = copy::may_have_holes(om) || copy::may_have_holes(nm);
        return Ok(!same_content(old, new, nm.size(), holes)?);
    }
    Ok(false)
}

/// The multiply-linked non-directories of one tree: the names of each
/// inode, and the inode of each name.
#[derive(Default)]
struct Links {
    groups: HashMap<(u64, u64), Vec<Vec<u8>>>,
    inode_of: HashMap<Vec<u8>, (u64, u64)>,
}

impl Links {
    fn note(&mut self, rel: &[u8], md: &Metadata) {
        if !md.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            self.groups.entry(key).or_default().push(rel.to_vec());
            self.inode_of.insert(rel.to_vec(), key);
        }
    }

    /// Whether `names` are exactly the names of one inode here.
    fn one_group(&self, names: &[Vec<u8>]) -> bool {
        let Some(key) = names.first().and_then(|n| self.inode_of.get(n)) else {
            return false;
        };
        self.groups[key].len() == names.len()
            && names.iter().all(|n| self.inode_of.get(n) == Some(key))
    }
}

/// The names of `new` whose link partners are not those they had in `old`:
/// a group of `new` that was not one group in `old`, and the names still in
/// `new` of a group of `old` that is not one group in `new`. One pass per
/// group; nothing for trees without multiply-linked files.
fn relinked(new_links: &Links, old: &Links, new: &Path) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for group in new_links.groups.values() {
        if !old.one_group(group) {
            names.extend(group.iter().cloned());
        }
    }
    for group in old.groups.values() {
        if new_links.one_group(group) {
            continue;
        }
        for n in group {
            // Gone from `new`: its whiteout is written already.
            if lstat(&new.join(OsStr::from_bytes(n))).is_ok() {
                names.push(n.clone());
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

pub(super) fn walk_compare(old: Option<&Path>, new: &Path) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::new();
    // Every multiply-linked non-directory of `new`, by inode.
    let mut links = Links::default();
    let mut stack: Vec<(Vec<u8>, Option<PathBuf>, PathBuf)> =
        vec![(Vec::new(), old.map(Path::to_path_buf), new.to_path_buf())];
    // And of `old`, for the names the walk visits there: a name whose link
    // partners differ between the trees changed, even where its inode's
    // content and metadata did not.
    let mut old_links = Links::default();
    while let Some((rel, odir, ndir)) = stack.pop() {
        let nnames = names_at(&ndir, &rel)?;
        let onames = match &odir {
            Some(o) => names_at(o, &rel)?,
            None => Vec::new(),
        };
        // Sockets are never in a layer: treat them as absent on both sides.
        let mut olive: BTreeMap<Vec<u8>, (PathBuf, Metadata)> = BTreeMap::new();
        if let Some(o) = &odir {
            for n in onames {
                let p = o.join(&n);
                let md = lstat(&p)?;
                if !md.file_type().is_socket() {
                    if !md.is_dir() && md.nlink() > 1 {
                        old_links.note(&join(&rel, n.as_bytes()), &md);
                    }
                    olive.insert(n.as_bytes().to_vec(), (p, md));
                }
            }
        }
        for n in nnames {
            let np = ndir.join(&n);
            let nm = lstat(&np)?;
            if nm.file_type().is_socket() {
                continue;
            }
            let crel = join(&rel, n.as_bytes());
            links.note(&crel, &nm);
            match olive.remove(n.as_bytes()) {
                None => {
                    if nm.is_dir() {
                        stack.push((crel.clone(), None, np.clone()));
                    }
                    items.push(Item::Node(crel, nm));
                }
                Some((op, om)) => {
                    let is_changed = changed(&op, &om, &np, &nm)?;
                    if nm.is_dir() {
                        stack.push((crel.clone(), om.is_dir().then_some(op), np.clone()));
                    }
                    if is_changed {
                        items.push(Item::Node(crel, nm));
                    }
                }
            }
        }
        for gone in olive.into_keys() {
            items.push(whiteout(&rel, &gone)?);
        }
    }
    // Names linked otherwise than in `old` (made or broken links between
    // files that are otherwise the same: audit, the native layer was empty).
    let relinked = relinked(&links, &old_links, new)?;
    if !relinked.is_empty() {
        let present: HashSet<&[u8]> = items.iter().map(Item::rel).collect();
        let add: Vec<Vec<u8>> = relinked
            .into_iter()
            .filter(|r| !present.contains(r.as_slice()))
            .collect();
        drop(present);
        for r in add {
            let md = lstat(&new.join(OsStr::from_bytes(&r)))?;
            items.push(Item::Node(r, md));
        }
    }
    // The paths emitted, borrowed from the items (no copy of each path).
    let mut have: HashSet<&[u8]> = items.iter().map(Item::rel).collect();
    // Every link of a changed multiply-linked file, each group once (audit:
    // once per link, quadratic: 285 s for 65,000 links to one inode).
    let mut extra = Vec::new();
    let mut expanded: HashSet<(u64, u64)> = HashSet::new();
    for item in &items {
        if let Item::Node(_, md) = item
            && let Some(group) = links.groups.get(&(md.dev(), md.ino()))
            && expanded.insert((md.dev(), md.ino()))
        {
            for r in group {
                if have.insert(r) {
                    let p = new.join(OsStr::from_bytes(r));
                    extra.push(Item::Node(r.clone(), lstat(&p)?));
                }
            }
        }
    }
    // Every parent directory of an emitted entry.
    let mut parents = Vec::new();
    for item in items.iter().chain(&extra) {
        let mut r = item.rel();
        while let Some(i) = r.iter().rposition(|b| *b == b'/') {
            r = &r[..i];
            if !have.insert(r) {
                break;
            }
            let p = new.join(OsStr::from_bytes(r));
            parents.push(Item::Node(r.to_vec(), lstat(&p)?));
        }
    }
    drop(have);
    items.extend(extra);
    items.extend(parents);
    Ok(items)
}
