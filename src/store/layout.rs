//! The on-disk layout of a store:
//!
//! ```text
//! ROOT/                 mode 0700
//!   index.db            the SQLite index (plus its rollback journal, index.db-journal)
//!   snapshots/ID/fs     a snapshot's tree (overlay: its upper directory)
//!   snapshots/ID/work   overlay work directory of an active snapshot
//!   snapshots/new-*     a snapshot being built (locked by its builder)
//!   snapshots/rm-*      a snapshot being deleted
//! ```
//!
//! IDs come from the index and are never reused; keys never become paths.
//! A snapshot directory appears under its final name only by a rename made
//! inside the index transaction that inserts its row, and leaves it by a
//! rename after the row is gone, so a crash leaves either state and at worst
//! a `new-*`/`rm-*`/row-less directory that `prune` deletes.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of directories under construction.
pub const STAGING_PREFIX: &str = "new-";
/// Prefix of directories being deleted.
pub const TRASH_PREFIX: &str = "rm-";

/// The error of [`Layout::create`] for a store that has an index but no
/// `snapshots/` directory.
#[derive(Debug)]
pub struct SnapshotsMissing;

impl std::fmt::Display for SnapshotsMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("it has an index but no snapshots/ directory")
    }
}

impl std::error::Error for SnapshotsMissing {}

/// Refuses `path` when it is a symlink to nowhere, naming where it points:
/// making the directory would fail with a bare "File exists" (review).
fn refuse_dangling(path: &Path) -> io::Result<()> {
    match fs::read_link(path) {
        Ok(dest) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is a symbolic link to {}, which does not exist",
                path.display(),
                dest.display()
            ),
        )),
        Err(_) => Ok(()),
    }
}

/// Makes directory `path` with mode 0700 exactly (`mkdir` applies the
/// umask: under 0077 the mode would be 0700 anyway, under 0777 it would be
/// 0000 and the store unusable). Another process making it meanwhile is
/// fine.
fn make_private_dir(path: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(0o700)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    snapshots: PathBuf,
    /// Whether `snapshots/` had no subdirectory when the store was opened
    /// (a link count of 2; see [`Layout::looked_bare`]).
    bare: bool,
}

impl Layout {
    /// The layout of the store at `root` (absolute), without touching disk.
    pub fn at(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            snapshots: root.join("snapshots"),
            bare: false,
        }
    }

    /// Creates the store's directories if missing. `root` must be absolute.
    pub fn create(root: &Path) -> io::Result<Layout> {
        let mut layout = Layout::at(root);
        if !root.exists() {
            refuse_dangling(root)?;
            // Directories above the store as `mkdir -p` makes them (the
            // umask's mode); the store alone is 0700.
            if let Some(parent) = root.parent() {
                fs::create_dir_all(parent)?;
            }
            make_private_dir(root)?;
        }
        // Made when missing; any other error (a store of another user:
        // permission denied) is returned as it is, not hidden by a mkdir.
        match fs::metadata(&layout.snapshots) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                super::crash::point("layout:no-snapshots");
                refuse_dangling(&layout.snapshots)?;
                // An index without `snapshots/`: the directories are on a
                // file system not mounted yet, or lost. An empty one made
                // here would take new snapshots onto the wrong disk and
                // show the old ones missing (audit).
                // Looked for again once the index is seen: a process making
                // the store makes `snapshots/` before its index, so one
                // that did both since the first look is not a lost
                // directory (it failed 1 run in 10 of 5 first uses at once).
                if fs::symlink_metadata(layout.index()).is_ok()
                    && fs::symlink_metadata(&layout.snapshots).is_err()
                {
                    return Err(io::Error::new(io::ErrorKind::NotFound, SnapshotsMissing));
                }
                make_private_dir(&layout.snapshots)?;
                layout.bare = true;
            }
            Err(e) => return Err(e),
            Ok(meta) => layout.bare = meta.nlink() == 2,
        }
        Ok(layout)
    }

    /// Whether `snapshots/` had no subdirectory (no snapshot, and no work
    /// in progress) when the store was opened: its link count was 2, read
    /// from the `stat` opening makes anyway. A file system that does not
    /// count subdirectories (btrfs: 1) never looks bare.
    pub fn looked_bare(&self) -> bool {
        self.bare
    }

    /// This layout, with [`Layout::looked_bare`] as `other` found it.
    pub fn bare_as(mut self, other: &Layout) -> Layout {
        self.bare = other.bare;
        self
    }

    /// Once a snapshot is made, `snapshots/` is not bare.
    pub fn not_bare(&mut self) {
        self.bare = false;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn index(&self) -> PathBuf {
        self.root.join("index.db")
    }
    pub fn snapshots(&self) -> &Path {
        &self.snapshots
    }
    pub fn dir(&self, id: i64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }
    pub fn fs(&self, id: i64) -> PathBuf {
        // One allocation and no formatting machinery: a deep chain or `usage`
        // of a big store makes thousands of these.
        let mut path = Vec::with_capacity(self.snapshots.as_os_str().len() + 24);
        path.extend_from_slice(self.snapshots.as_os_str().as_bytes());
        path.push(b'/');
        if id < 0 {
            path.push(b'-');
        }
        path.extend_from_slice(digits(id.unsigned_abs(), 10, &mut [0; 20]));
        path.extend_from_slice(b"/fs");
        PathBuf::from(OsString::from_vec(path))
    }
    /// [`Layout::fs`] relative to [`Layout::snapshots`].
    pub fn fs_under_snapshots(id: i64) -> PathBuf {
        Path::new(&id.to_string()).join("fs")
    }
    pub fn work(&self, id: i64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// The directory of short links to snapshot trees, for printed mount
    /// commands that must fit in one page.
    pub fn links(&self) -> PathBuf {
        self.root.join("l")
    }

    /// Creates `l/<short id>` -> `../snapshots/ID/fs` for each of `ids`
    /// where missing. Links are derived data: made on demand, removed with
    /// their snapshot. A deep chain's links are mostly there already (its
    /// parent's prepare made them), so `l/` is read once when that is cheaper
    /// than a `symlinkat` per layer that finds its link (see [`worth_listing`]);
    /// the rest get one `symlinkat` each, relative to `l/` opened once.
    ///
    /// A link that is there is trusted: reading each one back cost a deep
    /// chain's `prepare` 5% (0.11 ms at 480 layers). One edited by hand to
    /// point elsewhere is `check`'s `bad-link`, which `--repair` replaces.
    pub fn ensure_links(&self, ids: &[i64]) -> io::Result<()> {
        let path = self.links();
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let dir = self
            .open_links()?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let present: HashSet<OsString> = if worth_listing(&dir, ids.len())? {
            super::copy::names_in(&dir, &path, &mut Vec::new())?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        let mut want = Vec::new();
        for &id in ids {
            // Spelled on the stack: no allocation per layer.
            let mut buf = [0; 20];
            let name = OsStr::from_bytes(digits(id.unsigned_abs(), 36, &mut buf));
            if present.contains(name) {
                continue;
            }
            link_target_into(id, &mut want);
            match rustix::fs::symlinkat(want.as_slice(), &dir, name) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The short links' directory `l/`, opened without following a symlink
    /// in its place (`None` when there is none): a link there would take
    /// the links made, listed and deleted to wherever it points (audit:
    /// `prune` emptied the directory a planted `l` pointed at).
    pub fn open_links(&self) -> io::Result<Option<File>> {
        let path = self.links();
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC;
        match rustix::fs::open(&path, flags, rustix::fs::Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => Err(NotATree::error(&path)),
            Err(e) => Err(e.into()),
        }
    }

    /// What is at snapshot `id`'s short link, next to what strata makes.
    pub fn link_state(&self, id: i64) -> io::Result<LinkState> {
        let mut want = Vec::new();
        link_target_into(id, &mut want);
        let path = self.links().join(link_name(id));
        let want_shown = String::from_utf8_lossy(&want);
        match fs::read_link(&path) {
            Ok(target) if target.as_os_str().as_bytes() == want.as_slice() => Ok(LinkState::Right),
            Ok(target) => Ok(LinkState::Wrong(format!(
                "points to {}, not {want_shown}",
                target.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LinkState::Missing),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let what = match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => "is a directory",
                    Ok(m) if m.is_file() => "is a file",
                    _ => "is not a symlink",
                };
                Ok(LinkState::Wrong(format!(
                    "{what}, not a link to {want_shown}"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces snapshot `id`'s short link with the one strata makes. A
    /// link cannot be renamed over a directory (`EISDIR`): one there is
    /// moved aside to an `rm-*` name first, and deleted once the link is
    /// made (review: it could not be replaced, and the printed mount lines
    /// took it for the layer).
    pub fn repair_link(&self, id: i64) -> io::Result<()> {
        let dir = self
            .open_links()?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut want = Vec::new();
        link_target_into(id, &mut want);
        let name = link_name(id);
        match replace_link(&dir, OsStr::new(&name), &want) {
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
            done => return done,
        }
        let trash = format!("{TRASH_PREFIX}{}", unique());
        rustix::fs::renameat(&dir, name.as_str(), &dir, trash.as_str())?;
        replace_link(&dir, OsStr::new(&name), &want)?;
        // What is not deleted now is a leftover in `l/`, which `prune` and
        // `check`'s sweep (after this repair) report and delete.
        let _ = remove_tree(&self.links().join(trash));
        Ok(())
    }

    /// A fresh, locked staging directory for a snapshot being built.
    ///
    /// The builder holds an exclusive lock on the directory for as long as
    /// it lives; prune deletes only staging directories it can lock. Prune
    /// may lock (and take away) a directory in the instant between its
    /// `mkdir` and our lock, so after locking we check that the name still
    /// holds the directory we locked, and start over if not.
    pub fn staging(&self) -> io::Result<Staging> {
        let mut last = None;
        for _ in 0..16 {
            let path = self.snapshots.join(format!("{STAGING_PREFIX}{}", unique()));
            fs::DirBuilder::new().mode(0o700).create(&path)?;
            let lock = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => continue,
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
            let same = match (lock.metadata(), fs::symlink_metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if same {
                return Ok(Staging {
                    path: Some(path),
                    _lock: lock,
                });
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("could not claim a staging directory")))
    }

    /// Moves a built staging directory to its final name `snapshots/ID`.
    /// Call inside the index transaction that inserts row `id`.
    pub fn install(&self, mut staging: Staging, id: i64) -> io::Result<()> {
        let dest = self.dir(id);
        // A directory under this id can only be a leftover of a transaction
        // that rolled back after its rename (the id was handed out again):
        // it has no row, so it is garbage.
        if dest.symlink_metadata().is_ok() {
            self.discard_path(&dest)?;
        }
        let src = staging.path.take().expect("staging path");
        fs::rename(&src, &dest)?;
        sync_dir(&self.snapshots)
    }

    /// Takes snapshot `id`'s lock (`flock` on its directory), waiting for
    /// the holder. `mount`, `commit` and `rm` hold it throughout, so none of
    /// them acts on a snapshot another one is changing (a mount recorded
    /// after a commit's or an rm's check of the mounts). Released when the
    /// file is dropped or the process dies.
    pub fn lock(&self, id: i64) -> io::Result<File> {
        let path = self.dir(id);
        // Not through a symlink or onto a file (a FIFO would hang the open):
        // a damaged store, said as such.
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => NotATree::error(&path),
                _ => e,
            })?;
        dir.lock()?;
        // The holder waited for may have been an `rm`, which renamed the
        // directory away and emptied it: then it is gone, as at the open.
        let held = dir.metadata()?;
        match path.symlink_metadata() {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(dir),
            Ok(_) => Err(io::ErrorKind::NotFound.into()),
            Err(e) => Err(e),
        }
    }

    /// Deletes snapshot directory `id`: first renamed out of the way (so a
    /// crash leaves only an `rm-*` name), then removed. Nothing is synced:
    /// the row is already gone, so whichever name a power loss leaves the
    /// directory under (`rm-*` or its own, row-less), `prune` deletes it.
    pub fn discard(&self, id: i64) -> io::Result<()> {
        // An `l` that is not a directory is `check`'s to report, and never
        // written through (one `lstat` more than the `unlink` alone; the
        // only users who could swap `l` meanwhile are the store's owner and
        // root, and root uses no store another user can change).
        let links = self.links();
        match fs::symlink_metadata(&links) {
            Ok(m) if m.is_dir() => match fs::remove_file(links.join(link_name(id))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.discard_path(&self.dir(id))
    }

    /// Whether this process may move directories out of `snapshots/`, the
    /// first step of deleting a snapshot's files: asked before `rm` deletes
    /// any row, so that a `snapshots/` it cannot write (another owner's
    /// mode, `chattr +i`) refuses the `rm` whole (audit: the rows went, then
    /// the files could not, and `check` found orphan directories).
    pub fn may_discard(&self) -> io::Result<()> {
        use rustix::fs::Access;
        rustix::fs::access(&self.snapshots, Access::WRITE_OK | Access::EXEC_OK).map_err(Into::into)
    }

    /// A fresh `rm-*` name to move a doomed directory to.
    pub fn trash_path(&self) -> PathBuf {
        self.snapshots.join(format!("{TRASH_PREFIX}{}", unique()))
    }

    fn discard_path(&self, path: &Path) -> io::Result<()> {
        let trash = self.trash_path();
        match fs::rename(path, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        super::crash::point("discard:renamed");
        remove_tree(&trash)
    }
}

/// A snapshot directory under construction. Dropped without being
/// installed, it removes itself.
pub struct Staging {
    path: Option<PathBuf>,
    _lock: File,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("staging path")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = remove_tree(&path);
        }
    }
}

/// A private scratch directory outside any store, deleted when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Makes `.strata-scratch-<unique>` (mode 0700) in `dir`.
    pub fn make(dir: &Path) -> io::Result<Scratch> {
        let path = dir.join(format!(".strata-scratch-{}", unique()));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Scratch(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// Removes a tree, tolerating entries that vanish meanwhile (prune may be
/// deleting the same tree), with a bounded number of directories open
/// however deep it is (see [`super::remover`]).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    super::remover::remove_tree(path)
}

/// Makes directory `path` with the owner and mode of `like` (a parent
/// snapshot's root), and with `xattrs` its extended attributes but
/// overlayfs's own; or root-owned 0755 for a snapshot without a parent.
/// A `like` that is not a directory (a symlink out of the store put in
/// place of a parent's tree) is a [`NotATree`] error: `lstat` instead of
/// `stat` tells it at no cost.
pub fn make_root_dir(path: &Path, like: Option<&Path>, xattrs: bool) -> io::Result<()> {
    let like_md = match like {
        Some(like) => {
            let m = like.symlink_metadata()?;
            if !m.is_dir() {
                return Err(NotATree::error(like));
            }
            Some(m)
        }
        None => None,
    };
    fs::create_dir(path)?;
    // Before its mode is the parent's: a `user.*` xattr needs write
    // permission on the directory, which a mode such as 0555 takes from
    // its (unprivileged) owner (review).
    if let (true, Some(like)) = (xattrs, like) {
        super::copy::copy_root_xattrs(like, path)?;
    }
    let (mode, uid, gid) = match like_md {
        Some(m) => (m.mode() & 0o7777, Some(m.uid()), Some(m.gid())),
        None => (0o755, None, None),
    };
    if uid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A snapshot's tree (`snapshots/ID/fs`) that is not a directory: a
/// symlink or a file put in its place. Mounting or committing it would
/// take whatever it points at as the layer, so it is refused as a damaged
/// store (`check` reports it as `bad-shape`).
#[derive(Debug)]
pub struct NotATree(pub PathBuf);

impl NotATree {
    pub fn error(path: &Path) -> io::Error {
        io::Error::new(io::ErrorKind::NotADirectory, NotATree(path.to_path_buf()))
    }

    /// The path of the tree `e` is about, if it is one.
    pub fn of(e: &io::Error) -> Option<&Path> {
        let inner = e.get_ref()?.downcast_ref::<NotATree>()?;
        Some(&inner.0)
    }
}

impl std::fmt::Display for NotATree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not a directory (a symlink or a file in its place)",
            self.0.display()
        )
    }
}

impl std::error::Error for NotATree {}

/// Sets the modification time of `path` (not following a symlink), leaving
/// its access time alone.
pub fn set_mtime(path: &Path, when: super::Timestamp) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT};
    let (secs, nanos) = when.split();
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: nanos.into(),
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// fsync a directory so a rename or new entry in it survives power loss.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The short name of snapshot `id`'s link: its id in base 36.
pub fn link_name(id: i64) -> String {
    let mut buf = [0; 20];
    let name = digits(id.unsigned_abs(), 36, &mut buf);
    std::str::from_utf8(name).expect("ascii").to_owned()
}

/// What [`Layout::link_state`] found at a snapshot's short link.
pub enum LinkState {
    /// The link strata makes.
    Right,
    /// No link (made on demand: not a problem).
    Missing,
    /// Something else, said for a report: where it points, or what it is.
    Wrong(String),
}

/// Writes into `out` the target of snapshot `id`'s short link,
/// `../snapshots/ID/fs`, relative to `l/`.
fn link_target_into(id: i64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"../snapshots/");
    if id < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(digits(id.unsigned_abs(), 10, &mut [0; 20]));
    out.extend_from_slice(b"/fs");
}

/// Puts link `name` -> `target` in directory `dir` in place of what is
/// there, in one step: made under a staging name, then renamed over it, so
/// a concurrent mount line never finds the name missing or half made.
/// `prune` leaves a staging name alone while its maker may still rename it.
fn replace_link(dir: &File, name: &OsStr, target: &[u8]) -> io::Result<()> {
    let temp = format!("{STAGING_PREFIX}{}", unique());
    rustix::fs::symlinkat(target, dir, temp.as_str())?;
    if let Err(e) = rustix::fs::renameat(dir, temp.as_str(), dir, name) {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), rustix::fs::AtFlags::empty());
        return Err(e.into());
    }
    Ok(())
}

/// `n` written in `base` (at most 36) at the end of `buf`, which holds any
/// u64 in base 10 or more.
fn digits(mut n: u64, base: u64, buf: &mut [u8; 20]) -> &[u8] {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = DIGITS[(n % base) as usize];
        n /= base;
        if n == 0 {
            break;
        }
    }
    &buf[start..]
}

/// Whether reading the link directory `dir` costs less than one
/// `symlinkat` for each of `wanted` links. A directory's size is its blocks,
/// and a 4 KiB block of ext4 holds ~170 short links; reading an entry costs
/// a fraction of a `symlinkat` that finds its link, so the directory is read
/// unless it holds many times more links than are wanted.
fn worth_listing(dir: &File, wanted: usize) -> io::Result<bool> {
    let entries = dir.metadata()?.len() / 24;
    Ok(entries <= 4 * wanted as u64)
}

/// A name unique among concurrent processes: pid, time and a counter.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_link_names_spell_ids() {
        let layout = Layout::at(Path::new("/s"));
        for id in [0, 7, 10, 35, 36, 1295, 1296, i64::MAX] {
            assert_eq!(
                layout.fs(id),
                PathBuf::from(format!("/s/snapshots/{id}/fs"))
            );
            assert_eq!(i64::from_str_radix(&link_name(id), 36), Ok(id));
        }
        assert_eq!(link_name(35), "z");
        assert_eq!(link_name(36), "10");
        assert_eq!(link_name(i64::MAX), "1y2p0ij32e8e7");
    }

    fn link(layout: &Layout, id: i64) -> Option<PathBuf> {
        fs::read_link(layout.links().join(link_name(id))).ok()
    }

    /// Missing links are made and present ones kept, wrong ones too (see
    /// `ensure_links`), whether `l/` is read first (a few links, a long
    /// chain) or not (many links, a short one); a wrong one (another
    /// snapshot's tree, out of the store, a file, a directory) is what
    /// `check` finds and `repair_link` replaces, leaving no staging or
    /// trash name behind.
    #[test]
    fn ensure_links_makes_the_missing_ones_and_check_finds_wrong_ones() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let chain: Vec<i64> = (1..=300).collect();
        layout.ensure_links(&chain[..100]).unwrap();
        let at = |id| layout.links().join(link_name(id));
        fs::remove_file(at(7)).unwrap();
        std::os::unix::fs::symlink("../snapshots/8/fs", at(7)).unwrap();
        fs::remove_file(at(9)).unwrap();
        std::os::unix::fs::symlink("/etc", at(9)).unwrap();
        fs::remove_file(at(11)).unwrap();
        fs::write(at(11), "").unwrap();
        // A directory cannot be renamed over: it is moved aside.
        fs::remove_file(at(13)).unwrap();
        fs::create_dir(at(13)).unwrap();
        fs::write(at(13).join("f"), "").unwrap();
        let listed = File::open(layout.links()).unwrap();
        assert!(worth_listing(&listed, chain.len()).unwrap());
        // Trusted as they are (reading each back cost deep prepares 5%):
        // `check` finds them.
        let as_is = || {
            (
                link(&layout, 7),
                link(&layout, 9),
                fs::read(at(11)).ok(),
                fs::read(at(13).join("f")).ok(),
            )
        };
        let wrong_ones = as_is();
        layout.ensure_links(&chain).unwrap();
        assert_eq!(as_is(), wrong_ones);
        let wrong = |id| match layout.link_state(id).unwrap() {
            LinkState::Wrong(w) => w,
            _ => panic!("link {id} is not wrong"),
        };
        assert_eq!(
            wrong(7),
            "points to ../snapshots/8/fs, not ../snapshots/7/fs"
        );
        assert_eq!(wrong(11), "is a file, not a link to ../snapshots/11/fs");
        assert_eq!(
            wrong(13),
            "is a directory, not a link to ../snapshots/13/fs"
        );
        for id in [7, 9, 11, 13] {
            layout.repair_link(id).unwrap();
        }
        for &id in &chain {
            let want = PathBuf::from(format!("../snapshots/{id}/fs"));
            assert_eq!(link(&layout, id), Some(want), "{id}");
            assert!(matches!(layout.link_state(id).unwrap(), LinkState::Right));
        }
        assert!(matches!(
            layout.link_state(400).unwrap(),
            LinkState::Missing
        ));
        let names = fs::read_dir(layout.links()).unwrap().count();
        assert_eq!(names, chain.len(), "a staging or trash name was left");
        let many: Vec<i64> = (1000..6000).collect();
        layout.ensure_links(&many).unwrap();
        let listed = File::open(layout.links()).unwrap();
        assert!(!worth_listing(&listed, 3).unwrap());
        // Not listed: the `symlinkat` that finds a name there trusts it too.
        fs::remove_file(at(2)).unwrap();
        std::os::unix::fs::symlink("/etc", at(2)).unwrap();
        layout.ensure_links(&[1, 2, 9000]).unwrap();
        assert_eq!(link(&layout, 2), Some(PathBuf::from("/etc")));
        assert_eq!(
            link(&layout, 9000),
            Some(PathBuf::from("../snapshots/9000/fs"))
        );
    }
}
