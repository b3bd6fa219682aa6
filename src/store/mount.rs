//! Performing mounts: overlay and bind mounts described as plain data.
//!
//! Overlay mounts prefer the new mount API (`fsopen`/`fsconfig`/`fsmount`/
//! `move_mount`) and hand every lower layer to the kernel separately with the
//! `lowerdir+` key (Linux >= 6.8), so the length of a chain is limited only
//! by overlayfs itself (500 lower layers), not by the one-page option string
//! of mount(2). On older kernels, or when `STRATA_MOUNT_FALLBACK=1` is set,
//! mount(2) is used; option strings longer than one page are then shortened
//! by making the layer paths relative to their common parent directory and
//! mounting from a forked child that changed into that directory.
//!
//! Bind mounts use `open_tree`/`mount_setattr`/`move_mount`, falling back to
//! mount(2) with `MS_BIND` plus a read-only remount.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

/// The longest option string mount(2) accepts: the kernel copies one page
/// and needs the terminating NUL inside it. Longer strings are truncated and
/// fail with a misleading error (typically ENOENT for a cut-off path).
const MOUNT_DATA_MAX: usize = 4095;

/// Environment switch that forces the mount(2) code paths.
const FALLBACK_ENV: &str = "STRATA_MOUNT_FALLBACK";

/// A mount as plain data, same shape as containerd's and the OCI runtime spec's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// `"overlay"` or `"bind"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `"overlay"` for overlay, the directory for bind.
    pub source: String,
    /// e.g. `["index=off", "workdir=/…", "upperdir=/…", "lowerdir=/a:/b"]`
    /// or `["rbind", "ro"]` / `["rbind", "rw"]`.
    pub options: Vec<String>,
}

/// Perform `mounts` (in order, stacked) at `target`, which exists.
///
/// If one of them fails, the ones already mounted are unmounted again before
/// the error is returned. Errors carry the kernel's own explanation when the
/// new mount API provided one; use [`errno`] to get the errno back.
pub fn mount_all(mounts: &[Mount], target: &Path) -> io::Result<()> {
    let forced = fallback_forced(std::env::var_os(FALLBACK_ENV).as_deref());
    mount_all_with(mounts, target, forced)
}

/// [`mount_all`] with the mount(2) fallback switch passed explicitly instead
/// of read from the environment.
pub(crate) fn mount_all_with(
    mounts: &[Mount],
    target: &Path,
    force_fallback: bool,
) -> io::Result<()> {
    for (done, m) in mounts.iter().enumerate() {
        if let Err(err) = mount_one(m, target, force_fallback) {
            for _ in 0..done {
                if unmount(target, false).is_err() {
                    let _ = unmount(target, true);
                }
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Moves this process (its calling thread, and the threads it starts after)
/// into a mount namespace of its own, with every mount private, once: for
/// scratch mounts that must not outlive it. A namespace goes with its last
/// process, and its mounts with it, however the process ends (audit: a
/// `diff --parent` stopped by Ctrl-C left both its overlays mounted in the
/// store, and `rm` of a snapshot under them was refused). Private, so that
/// they do not propagate back where `/` is shared. Returns whether it is in
/// one; where it cannot be (no privilege), mounts stay in the namespace the
/// process started in, as before.
///
/// Where `/` cannot be made private (a chroot whose root is no mount
/// point), the process stays in the new namespace, whose shared mounts
/// still propagate: its scratch mounts are seen as before, and undone as
/// before when it ends normally. It does not go back with `setns`: that
/// would reset its root and working directory to the namespace's, out of
/// a chroot (review: a `diff --parent` in a chroot made a store at the
/// host's path).
pub fn private_namespace() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        use rustix::mount::{MountPropagationFlags, mount_change};
        use rustix::thread::UnshareFlags;
        // SAFETY: NEWNS (with the FS it implies) unshares no descriptor table.
        if unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }.is_err() {
            return false;
        }
        let private = MountPropagationFlags::PRIVATE | MountPropagationFlags::REC;
        mount_change("/", private).is_ok()
    })
}

/// Whether the file system mounted at `target` is read-only (statvfs).
pub fn read_only(target: &Path) -> io::Result<bool> {
    let st = rustix::fs::statvfs(target)?;
    Ok(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// Unmount `target` with umount2(2); `lazy` adds `MNT_DETACH`.
///
/// The error is the plain OS error, so `raw_os_error()` is e.g. `EBUSY`
/// when the mount is still in use.
pub fn unmount(target: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    rustix::mount::unmount(target, flags).map_err(io::Error::from)
}

/// Absolute mount points currently in /proc/self/mountinfo (field 5, with the
/// kernel's octal escapes `\040 \011 \012 \134` decoded).
pub fn mount_points() -> io::Result<HashSet<PathBuf>> {
    Ok(MountTable::read()?
        .mounts
        .into_iter()
        .map(|m| m.point)
        .collect())
}

/// The mounts of this process's namespace, from /proc/self/mountinfo.
pub struct MountTable {
    mounts: Vec<MountEntry>,
}

struct MountEntry {
    /// Field 1, what `statx` calls `stx_mnt_id`. The kernel hands a freed
    /// id to the next mount, so an id alone does not name one mount.
    id: u64,
    /// Field 2: the mount this one is mounted in.
    parent: u64,
    point: PathBuf,
    /// File system type, source and root within it, and for an overlay its
    /// super options (its layers): with the id and the point, this tells
    /// strata's overlay or bind from another file system mounted later at
    /// the same place under the same (reused) id. Every overlay is
    /// `overlay overlay /` without its layers (audit: a user's overlay
    /// mounted where strata's had been, under its freed id, was taken for
    /// strata's and unmounted by `rm -f`).
    identity: String,
    /// The identity records made before the layers were part of it give.
    legacy: String,
    /// The directory of its file system that it shows (field 4).
    root: PathBuf,
    /// An overlay's upper directory and lower layers (nearest first, data-only
    /// ones last), from its super options, as the mounter wrote them.
    upper: Option<PathBuf>,
    lowers: Vec<PathBuf>,
}

impl MountTable {
    pub fn read() -> io::Result<MountTable> {
        let data = std::fs::read("/proc/self/mountinfo")?;
        Ok(MountTable {
            mounts: parse_mountinfo(&data),
        })
    }

    /// Where `path` (which exists) is within its file system: the root of
    /// the mount it is on (mountinfo's field 4) joined with the rest of the
    /// path below that mount's point. A bind mount of a directory names it
    /// by another path; this is the same for both. None on a kernel without
    /// mount ids (before 5.8).
    pub fn within_file_system(&self, path: &Path) -> Option<PathBuf> {
        let id = mount_id(path).ok()?;
        let m = self.mounts.iter().find(|m| m.id == id)?;
        let rest = path.strip_prefix(&m.point).ok()?;
        Some(m.root.join(rest))
    }

    /// Whether mount `id` with `identity` is at `point`; with no id (a
    /// record older than schema 3), whether anything is.
    pub fn has(&self, id: Option<u64>, identity: Option<&str>, point: &Path) -> bool {
        self.mounts.iter().any(|m| {
            m.point == point
                && id.is_none_or(|id| id == m.id)
                && identity.is_none_or(|i| i == m.identity || i == m.legacy)
        })
    }

    /// Where `fs`, a snapshot's own directory, is mounted: as a bind (the
    /// mount shows `fs` itself), or as a layer of an overlay, its upper
    /// directory or one of its lower ones (a view of two or more layers
    /// mounted by hand is an overlay of lower layers only). Neither path is
    /// absolute in mountinfo (a bind's root is given within its file system,
    /// an overlay's layers as the mounter wrote them: maybe relative to where
    /// it ran, as a short link of the store's `l/`, or through
    /// `/proc/self/fd/N`), so a mount whose path only ends like `fs`
    /// (`snapshots/ID/fs`), or is `fs`'s short link name, is confirmed by the
    /// inode its root shows: `fs` itself for a bind; for an overlay on one
    /// file system, its top layer's inode number (on the overlay's device),
    /// the upper directory's or the first lower one's.
    pub fn showing(&self, fs: &Path) -> Vec<PathBuf> {
        showing_among(self.mounts.iter(), fs)
    }

    /// The first of the snapshot directories `dirs` (each given with a
    /// `T` to return) that some mount shows, as [`MountTable::showing`]
    /// says, and where; mounts at a point of `known` are passed over. The
    /// mounts are filed once by the snapshot id each path they are judged
    /// by names, so each directory costs a lookup rather than a pass over
    /// the table (audit: `rm -r` of 10,000 snapshots with 3,000 mounts).
    pub fn first_showing<T>(
        &self,
        dirs: impl IntoIterator<Item = (T, PathBuf)>,
        known: &HashSet<&Path>,
    ) -> Option<(T, PathBuf)> {
        let mut by_id: HashMap<i64, Vec<&MountEntry>> = HashMap::new();
        for m in &self.mounts {
            if known.contains(m.point.as_path()) {
                continue;
            }
            for id in m.judged_by().filter_map(named_id) {
                let filed = by_id.entry(id).or_default();
                // A chain names each layer once; this keeps one mount
                // from being judged twice for one directory all the same.
                if !filed.last().is_some_and(|last| std::ptr::eq(*last, m)) {
                    filed.push(m);
                }
            }
        }
        for (what, fs) in dirs {
            let found = match named_id(&fs) {
                Some(id) => match by_id.get(&id) {
                    Some(mounts) => showing_among(mounts.iter().copied(), &fs),
                    None => continue,
                },
                // Not under a store's root: judged against every mount.
                None => showing_among(
                    self.mounts
                        .iter()
                        .filter(|m| !known.contains(m.point.as_path())),
                    &fs,
                ),
            };
            if let Some(point) = found.into_iter().next() {
                return Some((what, point));
            }
        }
        None
    }

    /// The first mount point inside the directory `snapshots/ID` of a
    /// snapshot whose ID `wanted` takes, with that ID; `snapshots` as the
    /// kernel names it (no symlinks).
    pub fn first_inside(
        &self,
        snapshots: &Path,
        wanted: impl Fn(i64) -> bool,
    ) -> Option<(i64, &Path)> {
        self.mounts.iter().find_map(|m| {
            let rest = m.point.strip_prefix(snapshots).ok()?;
            let id = rest
                .components()
                .next()?
                .as_os_str()
                .to_str()?
                .parse()
                .ok()?;
            wanted(id).then_some((id, m.point.as_path()))
        })
    }

    /// Where the mounts inside mount `id` (mounted on a directory of it)
    /// are.
    pub fn inside(&self, id: u64) -> Vec<PathBuf> {
        self.mounts
            .iter()
            .filter(|m| m.parent == id && m.id != id)
            .map(|m| m.point.clone())
            .collect()
    }

    /// The identity of mount `id`.
    pub fn identity(&self, id: u64) -> Option<&str> {
        self.mounts
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.identity.as_str())
    }
}

impl MountEntry {
    /// The paths the mount is judged by: an overlay's layers, or the root
    /// of anything else (a bind's).
    fn judged_by(&self) -> impl Iterator<Item = &Path> {
        let layers = self.upper.iter().chain(&self.lowers);
        let root = (!self.is_overlay()).then_some(&self.root);
        layers.chain(root).map(PathBuf::as_path)
    }

    fn is_overlay(&self) -> bool {
        self.upper.is_some() || !self.lowers.is_empty()
    }

    /// The layer whose inode number an overlay's root shows (on one file
    /// system, without `xino`): the upper directory, else the first lower.
    fn top(&self) -> Option<&Path> {
        self.upper
            .as_deref()
            .or(self.lowers.first().map(PathBuf::as_path))
    }
}

/// How a mount names a snapshot directory.
enum Naming {
    /// An overlay layer whose path is the directory itself.
    Exact,
    /// An overlay layer written otherwise: confirmed by the root's inode
    /// number, which is its top layer's.
    Layer,
    /// A bind whose root ends like it: confirmed by the mount point's
    /// device and inode.
    Bind,
}

/// How `m` names `fs`, whose last names are `tail` and whose short link
/// name in the store's `l/` is `short`.
fn naming(m: &MountEntry, fs: &Path, tail: &Path, short: Option<&str>) -> Option<Naming> {
    if !m.is_overlay() {
        return m.root.ends_with(tail).then_some(Naming::Bind);
    }
    let mut found = None;
    for layer in m.upper.iter().chain(&m.lowers) {
        if layer == fs {
            return Some(Naming::Exact);
        }
        if layer.ends_with(tail) || short.is_some_and(|s| layer.as_os_str() == s) {
            found = Some(Naming::Layer);
        }
    }
    found
}

/// The body of [`MountTable::showing`], over `mounts`.
fn showing_among<'a>(mounts: impl Iterator<Item = &'a MountEntry>, fs: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    // `snapshots/ID/fs`: the path below the store's root.
    let tail = fs
        .ancestors()
        .nth(3)
        .and_then(|root| fs.strip_prefix(root).ok())
        .unwrap_or(fs);
    let short = named_id(fs).map(super::layout::link_name);
    // Looked at only once a mount's path matches (most directories have
    // none): a directory that is not there is shown by none.
    let mut own: Option<Option<std::fs::Metadata>> = None;
    let mut found = Vec::new();
    for m in mounts {
        let Some(how) = naming(m, fs, tail, short.as_deref()) else {
            continue;
        };
        let Some(own) = own.get_or_insert_with(|| std::fs::metadata(fs).ok()) else {
            return Vec::new();
        };
        let point = || std::fs::metadata(&m.point);
        let shows = match how {
            Naming::Exact => true,
            Naming::Bind => point().is_ok_and(|p| p.ino() == own.ino() && p.dev() == own.dev()),
            Naming::Layer => top_dir(m, fs)
                .and_then(|top| std::fs::metadata(top).ok())
                .is_some_and(|top| point().is_ok_and(|p| p.ino() == top.ino())),
        };
        if shows {
            found.push(m.point.clone());
        }
    }
    found
}

/// `m`'s top layer as a directory of the store `fs` is in (a layer named
/// otherwise, by a relative path or a short link, is looked for there).
fn top_dir(m: &MountEntry, fs: &Path) -> Option<PathBuf> {
    let id = named_id(m.top()?)?;
    let snapshots = fs.parent()?.parent()?;
    Some(snapshots.join(id.to_string()).join("fs"))
}

/// The snapshot id a path names: `…/snapshots/ID/fs` (a snapshot's own
/// directory, absolute or relative), or `ID` in base 36 alone (the short
/// link `l/ID` to it, which the printed `(cd STORE/l && mount …)` form
/// names relative to `l/`).
fn named_id(path: &Path) -> Option<i64> {
    let mut names = path.components().rev();
    let last = names.next()?;
    let Some(dir) = names.next() else {
        let name = last.as_os_str().to_str()?;
        let id = i64::from_str_radix(name, 36).ok()?;
        return (super::layout::link_name(id) == name).then_some(id);
    };
    let snapshots = names.next()?;
    if last.as_os_str() != "fs" || snapshots.as_os_str() != "snapshots" {
        return None;
    }
    let name = dir.as_os_str().to_str()?;
    let id: i64 = name.parse().ok()?;
    // As the store spells its directories: `snapshots/07/fs` is not one.
    (id.to_string() == name).then_some(id)
}

/// The id of the mount on top at `path` (`statx` with `STATX_MNT_ID`).
pub fn mount_id(path: &Path) -> io::Result<u64> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let st = statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(io::Error::other(
            "the kernel gives no mount id (Linux < 5.8)",
        ));
    }
    Ok(st.stx_mnt_id)
}

/// Does the running kernel expose the overlay `index` parameter
/// (/sys/module/overlay/parameters/index)?
pub fn overlay_has_index_param() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

/// The inode of this process's mount namespace (`/proc/self/ns/mnt`).
pub fn own_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/mnt").ok().map(|m| m.ino())
}

/// What other mount namespaces show, looked at through the processes in
/// them (`/proc/PID/ns/mnt`, `/proc/PID/mountinfo`), each read at most
/// once per command.
#[derive(Default)]
pub struct Namespaces {
    /// The processes in each namespace asked about; None when /proc
    /// cannot be listed.
    members: HashMap<u64, Option<Vec<PathBuf>>>,
    tables: HashMap<PathBuf, Seen>,
}

/// A process's mount table, as far as it could be read.
enum Seen {
    Table(MountTable),
    /// Exited since it was listed: it shows nothing.
    Gone,
    /// Not ours to read: it may show anything.
    Hidden,
}

impl Namespaces {
    /// Whether mount `id` with `identity` is still mounted in namespace
    /// `ns`, as one of the processes in it shows it. A namespace with no
    /// process in it is gone, with its mounts (unless something pins it);
    /// a process this one may not look into, or one in a `chroot` (which
    /// shows only the mounts below its root), counts as showing it. The
    /// mount is looked for by its id and identity, not its path, and every
    /// process is asked before a mount counts as gone. Without an id
    /// and identity (a record older than schema 3) a live namespace is all
    /// there is to go by.
    ///
    /// (Before, only whether a process was in a namespace of that inode
    /// number: a mount undone there by hand stayed "mounted" for as long
    /// as the namespace lived, and the kernel hands a freed namespace's
    /// inode number to the next namespace made, flaky-test review.)
    pub fn shows(&mut self, ns: u64, id: Option<u64>, identity: Option<&str>) -> bool {
        let Some(members) = self.members.entry(ns).or_insert_with(|| processes_in(ns)) else {
            return true;
        };
        let (Some(id), Some(identity)) = (id, identity) else {
            return !members.is_empty();
        };
        members.iter().any(|proc| {
            let seen = self
                .tables
                .entry(proc.clone())
                .or_insert_with(|| read_table(proc));
            match seen {
                Seen::Table(t) => t
                    .mounts
                    .iter()
                    .any(|m| m.id == id && (identity == m.identity || identity == m.legacy)),
                Seen::Gone => false,
                Seen::Hidden => true,
            }
        })
    }
}

/// What process `proc` (`/proc/PID`) shows of its namespace's mounts.
fn read_table(proc: &Path) -> Seen {
    // A process in a `chroot` shows only the mounts below its root: what it
    // does not show may still be mounted (review). Only a process whose root
    // is its namespace's own is trusted to show everything.
    match std::fs::read_link(proc.join("root")) {
        Ok(root) if root == Path::new("/") => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Seen::Gone,
        _ => return Seen::Hidden,
    }
    match std::fs::read(proc.join("mountinfo")) {
        Ok(data) => Seen::Table(MountTable {
            mounts: parse_mountinfo(&data),
        }),
        // Gone, or exiting (its mountinfo then reads as EINVAL, review).
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)) =>
        {
            Seen::Gone
        }
        Err(_) => Seen::Hidden,
    }
}

/// The `/proc/PID` of every process in mount namespace `ino`; None when
/// /proc cannot be listed.
fn processes_in(ino: u64) -> Option<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let procs = std::fs::read_dir("/proc").ok()?;
    let pid = |name: &std::ffi::OsStr| name.as_encoded_bytes().iter().all(u8::is_ascii_digit);
    Some(
        procs
            .flatten()
            .filter(|p| {
                pid(&p.file_name())
                    && std::fs::metadata(p.path().join("ns/mnt")).is_ok_and(|m| m.ino() == ino)
            })
            .map(|p| p.path())
            .collect(),
    )
}

/// Whether the overlay module's parameter `name` (a boolean such as
/// `metacopy` or `redirect_dir`, the default of the mount option of that
/// name) is on.
pub fn overlay_param_on(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/module/overlay/parameters/{name}"))
        .is_ok_and(|v| v.trim() == "Y")
}

/// True when this process runs in a non-initial user namespace (the initial
/// one maps the full range: /proc/self/uid_map is `0 0 4294967295`).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => uid_map_is_userns(&map),
        Err(_) => false,
    }
}

/// The errno behind a mount error: `raw_os_error()` for plain OS errors, or
/// the errno wrapped together with the kernel's message by this module.
pub fn errno(err: &io::Error) -> Option<i32> {
    err.raw_os_error().or_else(|| {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<MountError>())
            .and_then(|m| m.errno.raw_os_error())
    })
}

// ---------------------------------------------------------------------------
// Errors

/// A failed system call together with what we were doing and what the kernel
/// wrote into the fs context's log.
#[derive(Debug)]
struct MountError {
    context: String,
    errno: io::Error,
    log: Vec<String>,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.errno)?;
        if !self.log.is_empty() {
            write!(f, " (kernel: {})", self.log.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for MountError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.errno)
    }
}

fn mount_error(context: String, errno: io::Error, log: Vec<String>) -> io::Error {
    io::Error::new(
        errno.kind(),
        MountError {
            context,
            errno,
            log,
        },
    )
}

fn errno_error(context: String, e: Errno, log: Vec<String>) -> io::Error {
    mount_error(context, io::Error::from_raw_os_error(e.raw_os_error()), log)
}

/// Drain the fs context's message log: each read(2) returns one line such as
/// `e overlay: too many lower directories, limit is 500`.
fn read_fs_log(fs: &OwnedFd) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    // The log keeps only a handful of messages; the bound is a safety net.
    for _ in 0..64 {
        match rustix::io::read(fs, &mut buf[..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                let line = line.trim_end();
                let text = match line.split_once(' ') {
                    Some(("e", rest)) => rest.to_string(),
                    Some(("w", rest)) => format!("warning: {rest}"),
                    Some(("i", rest)) => format!("info: {rest}"),
                    _ => line.to_string(),
                };
                lines.push(text);
            }
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// Dispatch

fn fallback_forced(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| v == "1")
}

fn mount_one(m: &Mount, target: &Path, force_fallback: bool) -> io::Result<()> {
    match m.kind.as_str() {
        "overlay" => mount_overlay(m, target, force_fallback),
        "bind" => mount_bind(m, target, force_fallback),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot mount {} at {}: unsupported mount type {other:?} (expected \"overlay\" or \"bind\")",
                m.source,
                target.display()
            ),
        )),
    }
}

/// Outcome of trying the new mount API.
enum Attempt {
    Mounted,
    /// The new API cannot express this mount here; the reason is reported if
    /// the fallback cannot do it either.
    Unavailable(String),
}

/// Generic per-mount flags: (`MOUNT_ATTR_*`, `MS_*`, changes the atime mode).
fn vfs_flag(opt: &str) -> Option<(u64, libc::c_ulong, bool)> {
    Some(match opt {
        "ro" => (MOUNT_ATTR_RDONLY, libc::MS_RDONLY, false),
        "rw" | "suid" | "dev" | "exec" | "atime" | "diratime" => (0, 0, false),
        "nosuid" => (MOUNT_ATTR_NOSUID, libc::MS_NOSUID, false),
        "nodev" => (MOUNT_ATTR_NODEV, libc::MS_NODEV, false),
        "noexec" => (MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC, false),
        "noatime" => (MOUNT_ATTR_NOATIME, libc::MS_NOATIME, true),
        "relatime" => (MOUNT_ATTR_RELATIME, libc::MS_RELATIME, true),
        "strictatime" => (MOUNT_ATTR_STRICTATIME, libc::MS_STRICTATIME, true),
        "nodiratime" => (MOUNT_ATTR_NODIRATIME, libc::MS_NODIRATIME, false),
        _ => return None,
    })
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x0000_0070;
const MOUNT_ATTR_RELATIME: u64 = 0x0000_0000;
const MOUNT_ATTR_NOATIME: u64 = 0x0000_0010;
const MOUNT_ATTR_STRICTATIME: u64 = 0x0000_0020;
const MOUNT_ATTR_NODIRATIME: u64 = 0x0000_0080;

fn cstring(what: &str, s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

fn path_cstring(p: &Path) -> io::Result<CString> {
    cstring("path", p.as_os_str().as_bytes())
}

/// Plain mount(2).
fn sys_mount(
    source: &CString,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
) -> io::Result<()> {
    // SAFETY: every pointer is either null or a valid NUL-terminated string
    // that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// Overlay

/// One lower layer of a `lowerdir=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layer {
    /// The path with mount(2)'s backslash escapes removed.
    path: String,
    /// A data-only layer (after `::`).
    data: bool,
}

/// Split a `lowerdir=` value on unescaped `:`; `::` starts the data-only
/// layers. Backslash escapes (`\:`, `\,`, `\\`) are removed from the paths.
fn split_lowerdir(value: &str) -> Vec<Layer> {
    let mut layers = Vec::new();
    if value.is_empty() {
        return layers;
    }
    let mut current = String::new();
    let mut data = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ':' => {
                layers.push(Layer {
                    path: std::mem::take(&mut current),
                    data,
                });
                if chars.peek() == Some(&':') {
                    chars.next();
                    data = true;
                }
            }
            c => current.push(c),
        }
    }
    layers.push(Layer {
        path: current,
        data,
    });
    layers
}

/// Remove mount(2)'s backslash escapes from an option value.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Escape a path for use inside a mount(2) overlay option value.
///
/// The values of [`Mount`]'s overlay options are in mount(2)'s form: the
/// kernel splits the option string at unescaped `,` and `lowerdir=` at
/// unescaped `:`, then removes one `\` before any character in
/// `lowerdir`, `upperdir` and `workdir` paths. So `\`, `:` and `,` are
/// escaped in all three.
fn escape_layer_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn join_lowerdir(layers: &[Layer]) -> String {
    let mut out = String::new();
    for (i, layer) in layers.iter().enumerate() {
        if i > 0 {
            out.push(':');
            if layer.data && !layers[i - 1].data {
                out.push(':');
            }
        }
        out.push_str(&escape_layer_path(&layer.path));
    }
    out
}

/// An overlay option `KEY=PATH` (`upperdir`, `workdir`) with the path
/// escaped as mount(2) takes it (see [`escape_layer_path`]).
pub fn overlay_path_option(key: &str, path: &Path) -> String {
    format!("{key}={}", escape_layer_path(&path.to_string_lossy()))
}

/// `lowerdir=` listing `layers` (nearest first), each escaped as mount(2)
/// takes it. Written into one string: a chain may have 500 layers.
pub fn lowerdir_option<P: AsRef<Path>>(layers: &[P]) -> String {
    let mut out = String::with_capacity(10 + layers.len() * 48);
    out.push_str("lowerdir=");
    for (i, layer) in layers.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let path = layer.as_ref().to_string_lossy();
        // Store paths nearly always need no escape.
        if path.contains(['\\', ':', ',']) {
            out.push_str(&escape_layer_path(&path));
        } else {
            out.push_str(&path);
        }
    }
    out
}

/// The most bytes fsconfig(FSCONFIG_SET_STRING) takes in a value: the kernel
/// copies at most 256 with the NUL and fails a longer one with EINVAL.
const FSCONFIG_VALUE_MAX: usize = 255;

/// `path` as the value of an overlay path key given to fsconfig. `upperdir`
/// and `workdir` remove backslash escapes there too (`unescapes`: a `\` is
/// doubled); `lowerdir+` and `datadir+` take the path literally, and `:`
/// and `,` need no escape in either.
///
/// A value longer than fsconfig takes names the path through an `O_PATH`
/// descriptor of one of its ancestors instead, `/proc/self/fd/N/REST`, which
/// the kernel resolves like any path while the descriptor (returned with
/// it) is open. REST keeps as many of the last components as fit, so the
/// mount table still shows e.g. `…/snapshots/ID/fs` for an upper directory.
fn fsconfig_path(path: &str, unescapes: bool) -> io::Result<(String, Option<OwnedFd>)> {
    let escape = |s: &str| {
        if unescapes {
            s.replace('\\', r"\\")
        } else {
            s.to_string()
        }
    };
    let value = escape(path);
    if value.len() <= FSCONFIG_VALUE_MAX {
        return Ok((value, None));
    }
    let path = std::path::absolute(path)?;
    // Room for `/proc/self/fd/N/` with any descriptor number.
    let room = FSCONFIG_VALUE_MAX - "/proc/self/fd/2147483647/".len();
    let rest_of = |dir: &Path| path.strip_prefix(dir).map(|r| escape(&r.to_string_lossy()));
    let mut dir = path.as_path();
    for ancestor in path.ancestors().skip(1) {
        match rest_of(ancestor) {
            Ok(rest) if rest.len() <= room => dir = ancestor,
            _ => break,
        }
    }
    let fd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut value = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let rest = rest_of(dir).unwrap_or_default();
    if !rest.is_empty() {
        value.push('/');
        value.push_str(&rest);
    }
    Ok((value, Some(fd)))
}

fn mount_overlay(m: &Mount, target: &Path, force_fallback: bool) -> io::Result<()> {
    let why = if force_fallback {
        format!("mount(2) was forced with {FALLBACK_ENV}=1")
    } else {
        match overlay_new_api(m, target)? {
            Attempt::Mounted => return Ok(()),
            Attempt::Unavailable(why) => why,
        }
    };
    overlay_mount2(m, target, &why)
}

/// Does fsopen("overlay") give a legacy fs context (Linux < 6.5), which
/// accepts any key, queues it into a mount(2)-style page and fails only at
/// create time? Probed once with a key no real overlay accepts.
fn overlay_context_is_legacy() -> bool {
    static LEGACY: OnceLock<bool> = OnceLock::new();
    *LEGACY.get_or_init(
        || match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
            Ok(fs) => rustix::mount::fsconfig_set_flag(&fs, "strata-probe-unknown-key").is_ok(),
            Err(_) => false,
        },
    )
}

fn overlay_new_api(m: &Mount, target: &Path) -> io::Result<Attempt> {
    let at = || format!("mounting overlay at {}", target.display());
    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(Errno::NOSYS) => {
            return Ok(Attempt::Unavailable(
                "this kernel lacks fsopen(2) (Linux < 5.2, or it is filtered)".into(),
            ));
        }
        Err(e) => return Err(errno_error(format!("{}: fsopen", at()), e, Vec::new())),
    };
    if overlay_context_is_legacy() {
        return Ok(Attempt::Unavailable(
            "this kernel's overlayfs predates the new mount API and `lowerdir+` (Linux < 6.8)"
                .into(),
        ));
    }
    let fail =
        |what: String, e: Errno| errno_error(format!("{}: {what}", at()), e, read_fs_log(&fs));

    rustix::mount::fsconfig_set_string(&fs, "source", m.source.as_str())
        .map_err(|e| fail(format!("fsconfig source={:?}", m.source), e))?;

    let mut attrs = 0u64;
    let mut first_layer = true;
    for opt in &m.options {
        if let Some((attr, _, _)) = vfs_flag(opt) {
            attrs |= attr;
            continue;
        }
        match opt.split_once('=') {
            Some(("lowerdir", value)) => {
                let layers = split_lowerdir(value);
                let total = layers.len();
                for (i, layer) in layers.iter().enumerate() {
                    let key = if layer.data { "datadir+" } else { "lowerdir+" };
                    let (value, _dir) = fsconfig_path(&layer.path, false).map_err(|e| {
                        mount_error(
                            format!("{}: cannot open the layer {:?}", at(), layer.path),
                            e,
                            Vec::new(),
                        )
                    })?;
                    match rustix::mount::fsconfig_set_string(&fs, key, value.as_str()) {
                        Ok(()) => {}
                        Err(Errno::INVAL) if first_layer => {
                            let log = read_fs_log(&fs);
                            if log.is_empty() || log.iter().any(|l| l.contains("Unknown parameter"))
                            {
                                return Ok(Attempt::Unavailable(
                                    "this kernel's overlayfs does not accept `lowerdir+` (Linux < 6.8)"
                                        .into(),
                                ));
                            }
                            return Err(errno_error(
                                format!(
                                    "{}: fsconfig {key} {:?} (layer 1 of {total})",
                                    at(),
                                    layer.path
                                ),
                                Errno::INVAL,
                                log,
                            ));
                        }
                        Err(e) => {
                            return Err(fail(
                                format!(
                                    "fsconfig {key} {:?} (layer {} of {total})",
                                    layer.path,
                                    i + 1
                                ),
                                e,
                            ));
                        }
                    }
                    first_layer = false;
                }
            }
            // Paths in mount(2)'s escaped form: unescaped, then given as
            // fsconfig takes them (shortened where too long).
            Some((key @ ("upperdir" | "workdir"), value)) => {
                let path = unescape(value);
                let (arg, _dir) = fsconfig_path(&path, true).map_err(|e| {
                    mount_error(
                        format!("{}: cannot open the {key} {path:?}", at()),
                        e,
                        Vec::new(),
                    )
                })?;
                rustix::mount::fsconfig_set_string(&fs, key, arg.as_str())
                    .map_err(|e| fail(format!("fsconfig {key}={path:?}"), e))?
            }
            Some((key, value)) => rustix::mount::fsconfig_set_string(&fs, key, value)
                .map_err(|e| fail(format!("fsconfig {key}={value:?}"), e))?,
            None => rustix::mount::fsconfig_set_flag(&fs, opt.as_str())
                .map_err(|e| fail(format!("fsconfig flag {opt:?}"), e))?,
        }
    }

    rustix::mount::fsconfig_create(&fs).map_err(|e| fail("fsconfig create".into(), e))?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::from_bits_retain(attrs as u32),
    )
    .map_err(|e| fail("fsmount".into(), e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| errno_error(format!("{}: move_mount", at()), e, Vec::new()))?;
    Ok(Attempt::Mounted)
}

/// The overlay options rewritten with lowerdir/upperdir/workdir relative to
/// their longest common parent directory.
struct RelativeOptions {
    dir: PathBuf,
    options: Vec<String>,
    /// How many lower layers (nearest first) fit into one page.
    layers_fitting: usize,
    layers_total: usize,
}

fn relativize(options: &[String]) -> io::Result<Option<RelativeOptions>> {
    // Absolute forms of every path-valued option, to find the common parent.
    let mut abs: Vec<(usize, Vec<(PathBuf, bool)>)> = Vec::new();
    for (i, opt) in options.iter().enumerate() {
        let paths: Vec<(String, bool)> = match opt.split_once('=') {
            Some(("lowerdir", v)) => split_lowerdir(v)
                .into_iter()
                .map(|l| (l.path, l.data))
                .collect(),
            Some(("upperdir" | "workdir", v)) => vec![(unescape(v), false)],
            _ => continue,
        };
        let mut list = Vec::with_capacity(paths.len());
        for (p, data) in paths {
            list.push((std::path::absolute(&p)?, data));
        }
        abs.push((i, list));
    }
    let mut common: Option<Vec<Component<'_>>> = None;
    for (_, list) in &abs {
        for (p, _) in list {
            let comps: Vec<Component<'_>> = p
                .components()
                .take_while(|c| matches!(c, Component::RootDir | Component::Normal(_)))
                .collect();
            common = Some(match common {
                None => comps,
                Some(prev) => prev
                    .iter()
                    .zip(comps.iter())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| *a)
                    .collect(),
            });
        }
    }
    let Some(common) = common else {
        return Ok(None);
    };
    let dir: PathBuf = common.iter().collect();
    let rel = |p: &Path| -> io::Result<String> {
        let r = p.strip_prefix(&dir).unwrap_or(p);
        let s = r.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "overlay path is not valid UTF-8",
            )
        })?;
        Ok(if s.is_empty() {
            ".".to_string()
        } else {
            s.to_string()
        })
    };

    let mut out = options.to_vec();
    let mut lowers: Vec<Layer> = Vec::new();
    let mut lower_index = None;
    for (i, list) in &abs {
        let key = options[*i]
            .split_once('=')
            .map(|(k, _)| k)
            .unwrap_or_default();
        let layers = list
            .iter()
            .map(|(p, data)| {
                Ok(Layer {
                    path: rel(p)?,
                    data: *data,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        out[*i] = format!("{key}={}", join_lowerdir(&layers));
        if key == "lowerdir" {
            lowers = layers;
            lower_index = Some(*i);
        }
    }

    // How many layers would fit: everything but lowerdir, then layer by layer.
    let layers_total = lowers.len();
    let mut layers_fitting = layers_total;
    if let Some(li) = lower_index {
        let others: Vec<&str> = out
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != li)
            .map(|(_, o)| o.as_str())
            .collect();
        let mut len = others.iter().map(|o| o.len() + 1).sum::<usize>() + "lowerdir=".len();
        layers_fitting = 0;
        for (n, layer) in lowers.iter().enumerate() {
            let sep = match n {
                0 => 0,
                _ if layer.data && !lowers[n - 1].data => 2,
                _ => 1,
            };
            len += sep + escape_layer_path(&layer.path).len();
            if len > MOUNT_DATA_MAX {
                break;
            }
            layers_fitting = n + 1;
        }
    }
    Ok(Some(RelativeOptions {
        dir,
        options: out,
        layers_fitting,
        layers_total,
    }))
}

fn overlay_mount2(m: &Mount, target: &Path, why: &str) -> io::Result<()> {
    let at = format!("mounting overlay at {} with mount(2)", target.display());
    let mut flags: libc::c_ulong = 0;
    let mut data_opts = Vec::new();
    for opt in &m.options {
        match vfs_flag(opt) {
            Some((_, ms, _)) => flags |= ms,
            None => data_opts.push(opt.clone()),
        }
    }
    let data = data_opts.join(",");
    let source = cstring("overlay source", m.source.as_str())?;
    let fstype = cstring("fstype", "overlay")?;
    if data.len() <= MOUNT_DATA_MAX {
        let c_target = path_cstring(target)?;
        let c_data = cstring("overlay options", data)?;
        return sys_mount(&source, &c_target, Some(&fstype), flags, Some(&c_data))
            .map_err(|e| mount_error(at, e, Vec::new()));
    }

    let too_long = |rel_len: Option<(usize, &RelativeOptions)>| {
        let mut msg = format!(
            "cannot mount overlay at {}: its mount(2) option string is {} bytes, but mount(2) takes at most {MOUNT_DATA_MAX} (one page)",
            target.display(),
            data.len()
        );
        match rel_len {
            Some((len, rel)) => msg.push_str(&format!(
                "; even with paths relative to {} it is {len} bytes: {} lower layers were asked, only {} fit in one page",
                rel.dir.display(),
                rel.layers_total,
                rel.layers_fitting
            )),
            None => msg.push_str("; the paths cannot be shortened"),
        }
        msg.push_str(&format!(
            "; the new mount API, which passes each layer separately with fsconfig `lowerdir+` and has no such limit, was not used because {why}"
        ));
        io::Error::new(io::ErrorKind::Unsupported, msg)
    };

    let Some(rel) = relativize(&data_opts)? else {
        return Err(too_long(None));
    };
    let rel_data = rel.options.join(",");
    if rel_data.len() > MOUNT_DATA_MAX {
        return Err(too_long(Some((rel_data.len(), &rel))));
    }
    let abs_target = std::path::absolute(target)?;
    let c_target = path_cstring(&abs_target)?;
    let c_data = cstring("overlay options", rel_data)?;
    mount_from_dir(&rel.dir, &source, &c_target, &fstype, flags, &c_data).map_err(|e| {
        mount_error(
            format!(
                "{at} (paths relative to {}, from a child process)",
                rel.dir.display()
            ),
            e,
            Vec::new(),
        )
    })
}

/// mount(2) from a forked child whose working directory is `dir`, so that
/// relative paths in `data` resolve there while our own cwd stays untouched.
fn mount_from_dir(
    dir: &Path,
    source: &CString,
    target: &CString,
    fstype: &CString,
    flags: libc::c_ulong,
    data: &CString,
) -> io::Result<()> {
    let dirfd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let raw_dir = dirfd.as_fd().as_raw_fd();
    // SAFETY: the child only makes async-signal-safe system calls on data
    // prepared before the fork and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; all pointers are valid NUL-terminated strings.
        unsafe {
            let ok = libc::fchdir(raw_dir) == 0
                && libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    flags,
                    data.as_ptr().cast(),
                ) == 0;
            let code = if ok {
                0
            } else {
                io::Error::last_os_error()
                    .raw_os_error()
                    .filter(|e| (1..=255).contains(e))
                    .unwrap_or(255)
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for the child we just forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    drop(dirfd);
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            code => Err(io::Error::from_raw_os_error(code)),
        }
    } else {
        Err(io::Error::other(format!(
            "mount child process ended abnormally (wait status {status:#x})"
        )))
    }
}

// ---------------------------------------------------------------------------
// Bind

/// `struct mount_attr` for mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn mount_setattr(fd: &OwnedFd, recursive: bool, attr_set: u64, attr_clr: u64) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: fd is a valid mount fd, the path is an empty C string and attr
    // is a properly sized, initialized struct mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::INVAL))
    }
}

struct BindSpec {
    recursive: bool,
    attrs: u64,
    atime: bool,
    ms: libc::c_ulong,
}

fn mount_bind(m: &Mount, target: &Path, force_fallback: bool) -> io::Result<()> {
    let mut spec = BindSpec {
        recursive: false,
        attrs: 0,
        atime: false,
        ms: 0,
    };
    for opt in &m.options {
        match opt.as_str() {
            "rbind" => spec.recursive = true,
            "bind" => {}
            other => match vfs_flag(other) {
                Some((attr, ms, atime)) => {
                    spec.attrs |= attr;
                    spec.ms |= ms;
                    spec.atime |= atime;
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "cannot bind-mount {} at {}: unsupported option {other:?}",
                            m.source,
                            target.display()
                        ),
                    ));
                }
            },
        }
    }
    if !force_fallback && let Attempt::Mounted = bind_new_api(m, target, &spec)? {
        return Ok(());
    }
    bind_mount2(m, target, &spec)
}

fn bind_new_api(m: &Mount, target: &Path, spec: &BindSpec) -> io::Result<Attempt> {
    let at = || format!("bind-mounting {} at {}", m.source, target.display());
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if spec.recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = match rustix::mount::open_tree(CWD, m.source.as_str(), flags) {
        Ok(fd) => fd,
        Err(Errno::NOSYS) => return Ok(Attempt::Unavailable("no open_tree(2)".into())),
        Err(e) => return Err(errno_error(format!("{}: open_tree", at()), e, Vec::new())),
    };
    if spec.attrs != 0 || spec.atime {
        let clr = if spec.atime { MOUNT_ATTR_ATIME_MASK } else { 0 };
        match mount_setattr(&tree, spec.recursive, spec.attrs, clr) {
            Ok(()) => {}
            Err(Errno::NOSYS) => return Ok(Attempt::Unavailable("no mount_setattr(2)".into())),
            Err(e) => {
                return Err(errno_error(
                    format!("{}: mount_setattr", at()),
                    e,
                    Vec::new(),
                ));
            }
        }
    }
    rustix::mount::move_mount(
        &tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| errno_error(format!("{}: move_mount", at()), e, Vec::new()))?;
    Ok(Attempt::Mounted)
}

fn bind_mount2(m: &Mount, target: &Path, spec: &BindSpec) -> io::Result<()> {
    let at = format!(
        "bind-mounting {} at {} with mount(2)",
        m.source,
        target.display()
    );
    let source = cstring("bind source", m.source.as_str())?;
    let c_target = path_cstring(target)?;
    let mut flags = libc::MS_BIND;
    if spec.recursive {
        flags |= libc::MS_REC;
    }
    sys_mount(&source, &c_target, None, flags, None)
        .map_err(|e| mount_error(at.clone(), e, Vec::new()))?;
    if spec.ms != 0 {
        let none = cstring("source", "none")?;
        let remount = libc::MS_REMOUNT | libc::MS_BIND | spec.ms;
        if let Err(e) = sys_mount(&none, &c_target, None, remount, None) {
            if unmount(target, false).is_err() {
                let _ = unmount(target, true);
            }
            return Err(mount_error(
                format!("{at}: read-only/flags remount"),
                e,
                Vec::new(),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// /proc parsing

fn parse_mountinfo(data: &[u8]) -> Vec<MountEntry> {
    data.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let id = std::str::from_utf8(fields.first()?).ok()?.parse().ok()?;
            let parent = std::str::from_utf8(fields.get(1)?).ok()?.parse().ok()?;
            let root = fields.get(3)?;
            let point = unescape_octal(fields.get(4)?);
            // Optional fields end at "-", then type and source.
            let dash = fields.iter().position(|f| *f == b"-")?;
            let (fstype, source) = (fields.get(dash + 1)?, fields.get(dash + 2)?);
            let legacy = [*fstype, *source, *root]
                .map(String::from_utf8_lossy)
                .join(" ");
            let overlay_options = (*fstype == b"overlay")
                .then(|| fields.get(dash + 3))
                .flatten();
            let identity = match overlay_options {
                Some(options) => format!("{legacy} {}", String::from_utf8_lossy(options)),
                None => legacy.clone(),
            };
            let (upper, lowers) = overlay_options
                .map(|o| overlay_layers(o))
                .unwrap_or_default();
            (point.first() == Some(&b'/')).then(|| MountEntry {
                id,
                parent,
                point: path_of(point),
                identity,
                legacy,
                root: path_of(unescape_octal(root)),
                upper,
                lowers,
            })
        })
        .collect()
}

fn path_of(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// An overlay's upper directory and lower layers (nearest first, then the
/// data-only ones) from its super options. mountinfo writes each `,` in an
/// option as `\054` and each value as the mounter gave it: `upperdir=` and
/// `lowerdir=` with mount(2)'s escapes (`\,` `\:` `\\`, which fsconfig
/// takes in `upperdir` too), the layers of `lowerdir=` split at an
/// unescaped `:` (`::` before the data-only ones); fsconfig's `lowerdir+=`
/// and `datadir+=`, one layer each, literally (strata's own mounts use
/// them).
fn overlay_layers(options: &[u8]) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut upper = None;
    let mut lowers = Vec::new();
    for option in options.split(|&b| b == b',') {
        let Some(eq) = option.iter().position(|&b| b == b'=') else {
            continue;
        };
        let value = unescape_octal(&option[eq + 1..]);
        match &option[..eq] {
            b"upperdir" => upper = split_escaped(&value, false).pop().map(path_of),
            b"lowerdir" => lowers.extend(split_escaped(&value, true).into_iter().map(path_of)),
            b"lowerdir+" | b"datadir+" => lowers.push(path_of(value)),
            _ => {}
        }
    }
    (upper, lowers)
}

/// `value` with mount(2)'s backslash escapes removed, split at each
/// unescaped `:` if `at_colons`; empty parts (`::`) are left out.
fn split_escaped(value: &[u8], at_colons: bool) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = value.iter().copied();
    while let Some(b) = bytes.next() {
        let part = parts.last_mut().expect("one part at least");
        match b {
            b'\\' => part.extend(bytes.next()),
            b':' if at_colons => parts.push(Vec::new()),
            b => part.push(b),
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// Decode the kernel's `\ooo` escapes (used for space, tab, newline and
/// backslash in /proc/self/mountinfo).
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn uid_map_is_userns(map: &str) -> bool {
    let Some(first) = map.lines().next() else {
        return false;
    };
    let fields: Vec<&str> = first.split_whitespace().collect();
    fields != ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    /// Mount tests need root. Outside CI they are skipped without it; in CI
    /// (CI=true) a missing privilege is a failure.
    fn have_root(test: &str) -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: mount tests need root and CI=true forbids skipping");
        }
        eprintln!("skipping {test}: mounting needs root (run as root, or set CI=true to fail)");
        false
    }

    /// Lazily unmounts everything stacked at a path when dropped, so a failing
    /// test never leaves mounts behind. Declare it after the tempdir so it is
    /// dropped first.
    struct Unmounter(PathBuf);

    impl Drop for Unmounter {
        fn drop(&mut self) {
            for _ in 0..16 {
                if unmount(&self.0, true).is_err() {
                    break;
                }
            }
        }
    }

    fn mkdir(p: &Path) -> PathBuf {
        fs::create_dir_all(p).unwrap();
        p.to_path_buf()
    }

    fn write(p: &Path, content: &str) {
        fs::write(p, content).unwrap();
    }

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    fn is_mounted(p: &Path) -> bool {
        mount_points().unwrap().contains(p)
    }

    /// Overlay options in containerd's order; `lowers` are nearest first.
    fn overlay(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Mount {
        let mut options = Vec::new();
        if overlay_has_index_param() {
            options.push("index=off".to_string());
        }
        if let Some((upper, work)) = upper {
            options.push(format!("workdir={}", s(work)));
            options.push(format!("upperdir={}", s(upper)));
        }
        let lower: Vec<String> = lowers.iter().map(|l| escape_layer_path(&s(l))).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }
    }

    fn bind(source: &Path, options: &[&str]) -> Mount {
        Mount {
            kind: "bind".into(),
            source: s(source),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    /// `n` layers under `base/<name(i)>`, layer 0 nearest: every layer has
    /// `who` naming itself and `only-<i>` of its own.
    fn make_layers(base: &Path, n: usize, name: impl Fn(usize) -> String) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let dir = mkdir(&base.join(name(i)));
                write(&dir.join("who"), &format!("layer {i}"));
                write(&dir.join(format!("only-{i}")), &i.to_string());
                dir
            })
            .collect()
    }

    fn assert_chain(target: &Path, n: usize) {
        assert_eq!(fs::read_to_string(target.join("who")).unwrap(), "layer 0");
        assert_eq!(
            fs::read_to_string(target.join(format!("only-{}", n - 1))).unwrap(),
            (n - 1).to_string()
        );
        assert_eq!(fs::read_dir(target).unwrap().count(), n + 1);
    }

    #[test]
    fn overlay_two_lowers_with_upper() {
        if !have_root("overlay_two_lowers_with_upper") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let l1 = mkdir(&tmp.path().join("l1"));
        let l2 = mkdir(&tmp.path().join("l2"));
        let upper = mkdir(&tmp.path().join("upper"));
        let work = mkdir(&tmp.path().join("work"));
        let target = mkdir(&tmp.path().join("target"));
        write(&l1.join("a"), "from l1");
        write(&l1.join("shared"), "l1 wins");
        write(&l2.join("b"), "from l2");
        write(&l2.join("shared"), "l2 hidden");
        let _guard = Unmounter(target.clone());

        mount_all_with(
            &[overlay(&[l1.clone(), l2.clone()], Some((&upper, &work)))],
            &target,
            false,
        )
        .unwrap();
        assert!(is_mounted(&target));
        assert_eq!(fs::read_to_string(target.join("a")).unwrap(), "from l1");
        assert_eq!(fs::read_to_string(target.join("b")).unwrap(), "from l2");
        assert_eq!(
            fs::read_to_string(target.join("shared")).unwrap(),
            "l1 wins"
        );

        write(&target.join("new"), "written");
        fs::OpenOptions::new()
            .append(true)
            .open(target.join("b"))
            .unwrap()
            .write_all(b" changed")
            .unwrap();
        assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "written");
        assert_eq!(
            fs::read_to_string(upper.join("b")).unwrap(),
            "from l2 changed"
        );
        assert_eq!(fs::read_to_string(l2.join("b")).unwrap(), "from l2");
        assert!(!l1.join("new").exists());

        unmount(&target, false).unwrap();
        assert!(!is_mounted(&target));
    }

    /// Mounts 500 short-named layers under an upper directory: one page of
    /// options cannot hold them, so this takes `lowerdir+` (or, forced, the
    /// relative form).
    fn mount_500_layers(force_fallback: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let layers = make_layers(&tmp.path().join("l"), 500, |i| format!("{i:03}"));
        let upper = mkdir(&tmp.path().join("upper"));
        let work = mkdir(&tmp.path().join("work"));
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());

        let m = overlay(&layers, Some((&upper, &work)));
        assert!(m.options.join(",").len() > MOUNT_DATA_MAX);
        mount_all_with(&[m], &target, force_fallback).unwrap();
        assert_chain(&target, 500);
        unmount(&target, false).unwrap();
    }

    #[test]
    fn overlay_500_layers_with_lowerdir_plus() {
        if have_root("overlay_500_layers_with_lowerdir_plus") {
            mount_500_layers(false);
        }
    }

    #[test]
    fn overlay_501_layers_fail_with_kernel_reason() {
        if !have_root("overlay_501_layers_fail_with_kernel_reason") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layers = make_layers(&tmp.path().join("layers"), 501, |i| format!("{i:03}"));
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());

        let err = mount_all_with(&[overlay(&layers, None)], &target, false).unwrap_err();
        eprintln!("501 layers: {err}");
        assert_eq!(errno(&err), Some(libc::EINVAL), "{err}");
        assert!(err.to_string().contains("layer 501 of 501"), "{err}");
        assert!(err.to_string().contains("kernel:"), "{err}");
        assert!(!is_mounted(&target));
    }

    #[test]
    fn overlay_error_includes_kernel_log() {
        if !have_root("overlay_error_includes_kernel_log") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let l1 = mkdir(&tmp.path().join("l1"));
        let not_dir = tmp.path().join("file");
        write(&not_dir, "x");
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());

        // A genuine EINVAL on the first `lowerdir+` must not be mistaken for
        // an old kernel: the kernel's reason is reported instead.
        for lowers in [[not_dir.clone(), l1.clone()], [l1.clone(), not_dir.clone()]] {
            let err = mount_all_with(&[overlay(&lowers, None)], &target, false).unwrap_err();
            eprintln!("lower is a file: {err}");
            assert_eq!(errno(&err), Some(libc::EINVAL), "{err}");
            assert!(err.to_string().contains("not a directory"), "{err}");
        }
        assert!(!is_mounted(&target));
    }

    #[test]
    fn fallback_short_options_mounts_directly() {
        if !have_root("fallback_short_options_mounts_directly") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layers = make_layers(&tmp.path().join("layers"), 2, |i| {
            format!("with:colon,comma {i}")
        });
        let upper = mkdir(&tmp.path().join("upper"));
        let work = mkdir(&tmp.path().join("work"));
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());

        let mut m = overlay(&layers, Some((&upper, &work)));
        m.options.push("ro".into());
        mount_all_with(&[m], &target, true).unwrap();
        assert_chain(&target, 2);
        let err = fs::write(target.join("x"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        unmount(&target, false).unwrap();
    }

    #[test]
    fn lowerdir_plus_takes_escaped_paths_literally() {
        if !have_root("lowerdir_plus_takes_escaped_paths_literally") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layers = make_layers(&tmp.path().join("layers"), 3, |i| {
            format!("with:colon,comma\\ {i}")
        });
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());

        let mut m = overlay(&layers, None);
        m.options.push("ro".into());
        mount_all_with(&[m], &target, false).unwrap();
        assert_chain(&target, 3);
        let err = fs::write(target.join("x"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }

    #[test]
    fn escaped_upper_and_work_paths() {
        if !have_root("escaped_upper_and_work_paths") {
            return;
        }
        for force in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let layers = make_layers(&tmp.path().join("l"), 2, |i| format!("{i}"));
            let upper = mkdir(&tmp.path().join("up:per,x\\y"));
            let work = mkdir(&tmp.path().join("wo:rk,x\\y"));
            let target = mkdir(&tmp.path().join("target"));
            let _guard = Unmounter(target.clone());
            let mut m = overlay(&layers, None);
            m.options
                .push(format!("workdir={}", escape_layer_path(&s(&work))));
            m.options
                .push(format!("upperdir={}", escape_layer_path(&s(&upper))));
            mount_all_with(&[m], &target, force).unwrap();
            assert_chain(&target, 2);
            write(&target.join("new"), "up");
            assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "up");
            unmount(&target, false).unwrap();
        }
    }

    #[test]
    fn long_paths_are_shortened_for_fsconfig() {
        let tmp = tempfile::tempdir().unwrap();
        let base = mkdir(&tmp.path().join("a".repeat(150)).join("b\\:,".repeat(40)));
        let deep = mkdir(&base.join("snapshots/12/fs"));
        let d = s(&deep);
        assert!(d.len() > FSCONFIG_VALUE_MAX);
        for unescapes in [false, true] {
            let (value, fd) = fsconfig_path(&d, unescapes).unwrap();
            assert!(value.len() <= FSCONFIG_VALUE_MAX, "{value}");
            let fd = fd.expect("a descriptor names the long path");
            let rest = value
                .strip_prefix(&format!("/proc/self/fd/{}/", fd.as_raw_fd()))
                .unwrap();
            // As many of the last components as fit: all below the a… one.
            let want = s(deep.strip_prefix(base.parent().unwrap()).unwrap());
            let want = if unescapes {
                want.replace('\\', r"\\")
            } else {
                want
            };
            assert_eq!(rest, want);
            let literal = if unescapes { unescape(&value) } else { value };
            assert!(Path::new(&literal).is_dir(), "{literal}");
        }
        // Short paths are given as they are (a `\` doubled where the key
        // unescapes).
        let (value, fd) = fsconfig_path(r"/x/a\b:c,d", true).unwrap();
        assert!(fd.is_none());
        assert_eq!(value, r"/x/a\\b:c,d");
        let (value, _) = fsconfig_path(r"/x/a\b:c,d", false).unwrap();
        assert_eq!(value, r"/x/a\b:c,d");
    }

    #[test]
    fn overlay_with_paths_longer_than_fsconfig_takes() {
        if !have_root("overlay_with_paths_longer_than_fsconfig_takes") {
            return;
        }
        for force in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let base = tmp.path().join("a".repeat(200)).join("b:\\,".repeat(30));
            let layers = make_layers(&base.join("l"), 3, |i| format!("{i}"));
            let upper = mkdir(&base.join("upper"));
            let work = mkdir(&base.join("work"));
            assert!(s(&upper).len() > FSCONFIG_VALUE_MAX);
            let target = mkdir(&tmp.path().join("target"));
            let _guard = Unmounter(target.clone());
            let mut m = overlay(&layers, None);
            m.options.push(overlay_path_option("workdir", &work));
            m.options.push(overlay_path_option("upperdir", &upper));
            mount_all_with(&[m], &target, force).unwrap();
            assert_chain(&target, 3);
            write(&target.join("new"), "up");
            assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "up");
            unmount(&target, false).unwrap();
        }
    }

    #[test]
    fn fallback_relative_form_200_long_layers() {
        if !have_root("fallback_relative_form_200_long_layers") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("a".repeat(120)).join("b".repeat(120));
        let layers = make_layers(&base.join("layers"), 200, |i| format!("{i:03}"));
        let upper = mkdir(&base.join("upper"));
        let work = mkdir(&base.join("work"));
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());

        let m = overlay(&layers, Some((&upper, &work)));
        assert!(m.options.join(",").len() > 10 * MOUNT_DATA_MAX);
        let cwd = std::env::current_dir().unwrap();
        mount_all_with(&[m], &target, true).unwrap();
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        assert_chain(&target, 200);
        write(&target.join("new"), "up");
        assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "up");
        unmount(&target, false).unwrap();
    }

    #[test]
    fn fallback_relative_form_500_short_layers() {
        if have_root("fallback_relative_form_500_short_layers") {
            mount_500_layers(true);
        }
    }

    #[test]
    fn fallback_too_long_is_unsupported() {
        // No mount happens (the option string is rejected up front), but keep
        // the guard in case one does.
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("chain");
        let layers: Vec<PathBuf> = (0..300)
            .map(|i| base.join(format!("layers/a-rather-long-layer-name-{i:03}")))
            .collect();
        let upper = base.join("upper");
        let work = base.join("work");
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());

        let err =
            mount_all_with(&[overlay(&layers, Some((&upper, &work)))], &target, true).unwrap_err();
        eprintln!("too long: {err}");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        let msg = err.to_string();
        assert!(msg.contains("300 lower layers were asked"), "{msg}");
        // Cross-check the reported count against the relative form itself.
        let rel = |k: usize| {
            let mut m = overlay(&layers[..k], Some((&upper, &work)));
            let prefix = format!("{}/", s(&base));
            for o in &mut m.options {
                *o = o.replace(&prefix, "");
            }
            m.options.join(",").len()
        };
        let fit = (1..=300).take_while(|&k| rel(k) <= MOUNT_DATA_MAX).count();
        assert!(fit > 100 && rel(fit + 1) > MOUNT_DATA_MAX);
        assert!(
            msg.contains(&format!("only {fit} fit in one page")),
            "{msg}"
        );
        assert!(msg.contains(FALLBACK_ENV), "{msg}");
        assert!(!is_mounted(&target));
    }

    fn check_bind_ro(force_fallback: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let src = mkdir(&tmp.path().join("src"));
        let sub_src = mkdir(&tmp.path().join("sub-src"));
        write(&src.join("file"), "hello");
        write(&sub_src.join("inner"), "nested");
        let sub = mkdir(&src.join("sub"));
        let _sub_guard = Unmounter(sub.clone());
        mount_all_with(&[bind(&sub_src, &["bind", "rw"])], &sub, force_fallback).unwrap();
        let ro = mkdir(&tmp.path().join("ro"));
        let rw = mkdir(&tmp.path().join("rw"));
        let _ro_guard = Unmounter(ro.clone());
        let _rw_guard = Unmounter(rw.clone());

        mount_all_with(&[bind(&src, &["rbind", "ro"])], &ro, force_fallback).unwrap();
        assert_eq!(fs::read_to_string(ro.join("file")).unwrap(), "hello");
        assert_eq!(fs::read_to_string(ro.join("sub/inner")).unwrap(), "nested");
        let err = fs::write(ro.join("file"), "changed").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let err = fs::write(ro.join("new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        if !force_fallback {
            // mount_setattr with AT_RECURSIVE makes the submount read-only too.
            let err = fs::write(ro.join("sub/inner"), "x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        }
        // The source stays writable.
        write(&src.join("file"), "changed at source");
        assert_eq!(
            fs::read_to_string(ro.join("file")).unwrap(),
            "changed at source"
        );

        mount_all_with(&[bind(&src, &["bind", "rw"])], &rw, force_fallback).unwrap();
        write(&rw.join("via-rw"), "yes");
        assert_eq!(fs::read_to_string(src.join("via-rw")).unwrap(), "yes");
        // Non-recursive: the submount is not carried over.
        assert!(!rw.join("sub/inner").exists());

        unmount(&rw, false).unwrap();
        // rbind carried the submount along; detach the whole tree.
        unmount(&ro, true).unwrap();
        unmount(&sub, false).unwrap();
    }

    #[test]
    fn bind_ro_is_read_only() {
        if have_root("bind_ro_is_read_only") {
            check_bind_ro(false);
        }
    }

    #[test]
    fn bind_ro_is_read_only_with_fallback() {
        if have_root("bind_ro_is_read_only_with_fallback") {
            check_bind_ro(true);
        }
    }

    #[test]
    fn unmount_busy_then_ok() {
        if !have_root("unmount_busy_then_ok") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = mkdir(&tmp.path().join("src"));
        write(&src.join("file"), "x");
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());
        mount_all_with(&[bind(&src, &["rbind", "rw"])], &target, false).unwrap();

        let open = fs::File::open(target.join("file")).unwrap();
        let err = unmount(&target, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
        assert!(is_mounted(&target));
        drop(open);
        unmount(&target, false).unwrap();
        assert!(!is_mounted(&target));
    }

    #[test]
    fn mount_points_decodes_escapes() {
        if !have_root("mount_points_decodes_escapes") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = mkdir(&tmp.path().join("src"));
        let target = mkdir(
            &tmp.path()
                .join("with space\tand tab\\and backslash\nand newline"),
        );
        let _guard = Unmounter(target.clone());
        assert!(!is_mounted(&target));
        mount_all_with(&[bind(&src, &["bind", "ro"])], &target, false).unwrap();
        assert!(is_mounted(&target));
        unmount(&target, false).unwrap();
        assert!(!is_mounted(&target));
    }

    #[test]
    fn later_failure_unmounts_earlier_mounts() {
        if !have_root("later_failure_unmounts_earlier_mounts") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = mkdir(&tmp.path().join("src"));
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());
        let missing = tmp.path().join("missing");
        let mounts = [
            bind(&src, &["rbind", "rw"]),
            bind(&src, &["rbind", "ro"]),
            overlay(&[missing.clone(), missing], None),
        ];
        for force in [false, true] {
            let err = mount_all_with(&mounts, &target, force).unwrap_err();
            eprintln!("force_fallback={force}: {err}");
            assert_eq!(errno(&err), Some(libc::ENOENT), "{err}");
            assert!(!is_mounted(&target));
        }
    }

    #[test]
    fn stacked_mounts_at_one_target() {
        if !have_root("stacked_mounts_at_one_target") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let a = mkdir(&tmp.path().join("a"));
        let b = mkdir(&tmp.path().join("b"));
        write(&a.join("which"), "a");
        write(&b.join("which"), "b");
        let target = mkdir(&tmp.path().join("target"));
        let _guard = Unmounter(target.clone());
        mount_all_with(
            &[bind(&a, &["rbind", "rw"]), bind(&b, &["rbind", "ro"])],
            &target,
            false,
        )
        .unwrap();
        assert_eq!(fs::read_to_string(target.join("which")).unwrap(), "b");
        unmount(&target, false).unwrap();
        assert_eq!(fs::read_to_string(target.join("which")).unwrap(), "a");
        unmount(&target, false).unwrap();
        assert!(!is_mounted(&target));
    }

    #[test]
    fn invalid_input_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path();
        let m = Mount {
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec![],
        };
        let err = mount_all_with(&[m], target, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = mount_all_with(&[bind(target, &["rbind", "bogus"])], target, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn split_lowerdir_handles_escapes_and_data_layers() {
        let layers = split_lowerdir(r"/a\:b:/c\,d\\e::/data1::/data2");
        let got: Vec<(&str, bool)> = layers.iter().map(|l| (l.path.as_str(), l.data)).collect();
        assert_eq!(
            got,
            [
                ("/a:b", false),
                ("/c,d\\e", false),
                ("/data1", true),
                ("/data2", true)
            ]
        );
        assert_eq!(join_lowerdir(&layers), r"/a\:b:/c\,d\\e::/data1:/data2");
        assert!(split_lowerdir("").is_empty());
        assert_eq!(split_lowerdir("/only").len(), 1);
    }

    #[test]
    fn relativize_uses_common_parent() {
        let opts = vec![
            "index=off".to_string(),
            "workdir=/s/snap/9/work".to_string(),
            "upperdir=/s/snap/9/fs".to_string(),
            "lowerdir=/s/snap/2/fs:/s/snap/1/fs".to_string(),
        ];
        let rel = relativize(&opts).unwrap().unwrap();
        assert_eq!(rel.dir, Path::new("/s/snap"));
        assert_eq!(
            rel.options,
            [
                "index=off",
                "workdir=9/work",
                "upperdir=9/fs",
                "lowerdir=2/fs:1/fs"
            ]
        );
        assert_eq!((rel.layers_total, rel.layers_fitting), (2, 2));

        let opts = vec!["lowerdir=/x/y:/x/y/z".to_string()];
        let rel = relativize(&opts).unwrap().unwrap();
        assert_eq!(rel.dir, Path::new("/x/y"));
        assert_eq!(rel.options, ["lowerdir=.:z"]);

        // upperdir/workdir are single paths: an escaped ':' is not a separator.
        let opts = vec![
            r"upperdir=/x/u\:p\,1".to_string(),
            r"workdir=/x/w:k".to_string(),
            "lowerdir=/x/l/1::/x/d/1".to_string(),
        ];
        let rel = relativize(&opts).unwrap().unwrap();
        assert_eq!(rel.dir, Path::new("/x"));
        assert_eq!(
            rel.options,
            [r"upperdir=u\:p\,1", r"workdir=w\:k", "lowerdir=l/1::d/1"]
        );

        let opts = vec!["lowerdir=/x/y:/x/y/z".to_string()];
        let rel = relativize(&opts).unwrap().unwrap();
        assert_eq!(rel.options, ["lowerdir=.:z"]);
        assert!(relativize(&["index=off".to_string()]).unwrap().is_none());
    }

    #[test]
    fn mountinfo_parsing() {
        let info = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            40 22 0:5 / /tmp/with\\040space\\011tab\\134back\\012nl rw - tmpfs tmpfs rw\n\
            41 22 0:6 / /odd\\9 rw - tmpfs tmpfs rw\n";
        let table = MountTable {
            mounts: parse_mountinfo(info),
        };
        assert!(table.has(Some(22), None, Path::new("/")));
        assert!(table.has(None, None, Path::new("/tmp/with space\ttab\\back\nnl")));
        assert!(table.has(Some(41), Some("tmpfs tmpfs /"), Path::new("/odd\\9")));
        assert!(
            !table.has(Some(41), None, Path::new("/")),
            "an id is one mount"
        );
        assert!(
            !table.has(Some(41), Some("overlay overlay /"), Path::new("/odd\\9")),
            "a reused id at the same place is another mount"
        );
        assert_eq!(table.identity(22), Some("ext4 /dev/sda1 /"));
        assert_eq!(table.mounts.len(), 3);

        // Overlays differ by their layers: another overlay under the same
        // (reused) id at the same place is not strata's. A record made
        // before the layers were part of the identity still matches.
        let info = b"50 22 0:45 / /m rw - overlay overlay rw,lowerdir=/a,upperdir=/u,workdir=/w\n";
        let table = MountTable {
            mounts: parse_mountinfo(info),
        };
        let ours = "overlay overlay / rw,lowerdir=/a,upperdir=/u,workdir=/w";
        assert_eq!(table.identity(50), Some(ours));
        assert!(table.has(Some(50), Some(ours), Path::new("/m")));
        assert!(table.has(Some(50), Some("overlay overlay /"), Path::new("/m")));
        let theirs = "overlay overlay / ro,lowerdir=/mine:/other";
        assert!(!table.has(Some(50), Some(theirs), Path::new("/m")));
    }

    #[test]
    fn mounts_showing_a_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = tmp.path().join("st,x/snapshots/4/fs");
        std::fs::create_dir_all(&fs).unwrap();
        let escaped = |p: &Path| p.display().to_string().replace(',', "\\054");
        let info = format!(
            "44 27 0:39 / /mnt/o rw - overlay overlay rw,lowerdir+=/l,upperdir={},workdir=/w\n\
             45 27 254:0 /elsewhere/snapshots/4/fs /mnt/b rw - ext4 /dev/vda rw\n\
             46 27 0:40 / /mnt/other rw - overlay overlay rw,upperdir={}/x\n",
            escaped(&fs),
            escaped(&fs),
        );
        let table = MountTable {
            mounts: parse_mountinfo(info.as_bytes()),
        };
        assert_eq!(table.mounts[0].upper.as_deref(), Some(fs.as_path()));
        // The bind's root ends like the snapshot's directory, but the mount
        // point (missing here) does not show its inode.
        assert_eq!(table.showing(&fs), [PathBuf::from("/mnt/o")]);
        let bind = format!(
            "45 27 254:0 /x/snapshots/4/fs {} rw - ext4 /dev/vda rw\n",
            fs.display()
        );
        let table = MountTable {
            mounts: parse_mountinfo(bind.replace(',', "\\054").as_bytes()),
        };
        assert_eq!(table.showing(&fs), vec![fs.clone()], "its own inode");
        // A pasted overlay names its upper relative to where it ran: the
        // root's inode number decides.
        let relative = format!(
            "47 27 0:41 / {} rw - overlay overlay rw,upperdir=../snapshots/4/fs\n\
             48 27 0:42 / {} rw - overlay overlay rw,upperdir=../snapshots/4/fs\n",
            escaped(&fs),
            tmp.path().display(),
        );
        let table = MountTable {
            mounts: parse_mountinfo(relative.as_bytes()),
        };
        assert_eq!(table.showing(&fs), vec![fs.clone()]);

        // Many directories at once, as `rm -r` asks: the same answer, the
        // first directory shown; a mount at a known point is passed over.
        let other = tmp.path().join("st,x/snapshots/5/fs");
        std::fs::create_dir_all(&other).unwrap();
        let none = HashSet::new();
        let dirs = || [(5, other.clone()), (4, fs.clone())];
        assert_eq!(table.first_showing(dirs(), &none), Some((4, fs.clone())));
        assert_eq!(table.first_showing([(5, other.clone())], &none), None);
        let known = HashSet::from([fs.as_path()]);
        assert_eq!(table.first_showing(dirs(), &known), None);
        let table = MountTable {
            mounts: parse_mountinfo(info.as_bytes()),
        };
        assert_eq!(
            table.first_showing(dirs(), &none),
            Some((4, PathBuf::from("/mnt/o")))
        );
    }

    /// An overlay's layers as mountinfo shows them for each way of
    /// mounting it: mount(2)'s `lowerdir=` with its escapes (a `\` is
    /// `\134` in mountinfo, a `,` is `\054`) and `::` before data-only
    /// layers, fsconfig's `lowerdir+=`/`datadir+=` taken literally, an
    /// `upperdir=` with escapes.
    #[test]
    fn overlay_layers_in_every_form() {
        let paths = |v: Vec<PathBuf>| v.into_iter().map(|p| s(&p)).collect::<Vec<_>>();
        let (upper, lowers) = overlay_layers(
            br"ro,lowerdir=/s\134\054t\134:o\040re\134\134x/snapshots/2/fs:1::/d,redirect_dir=on",
        );
        assert_eq!(upper, None);
        assert_eq!(paths(lowers), [r"/s,t:o re\x/snapshots/2/fs", "1", "/d"]);
        let (upper, lowers) = overlay_layers(
            br"rw,lowerdir+=/s\054t:o\134x/snapshots/2/fs,lowerdir+=2,datadir+=/d,upperdir=../snapshots/4/fs\134\134,workdir=/w",
        );
        assert_eq!(upper.map(|u| s(&u)).as_deref(), Some(r"../snapshots/4/fs\"));
        assert_eq!(paths(lowers), [r"/s,t:o\x/snapshots/2/fs", "2", "/d"]);
        assert_eq!(
            overlay_layers(b"rw,lowerdir=,upperdir="),
            (None, Vec::new())
        );

        for (path, id) in [
            ("/s/snapshots/12/fs", Some(12)),
            ("../snapshots/12/fs", Some(12)),
            ("c", Some(12)),
            ("2s", Some(100)),
            ("C", None),
            ("0c", None),
            ("/c", None),
            ("..", None),
            ("/s/snapshots/012/fs", None),
            ("/s/other/12/fs", None),
            ("/s/snapshots/12/work", None),
        ] {
            assert_eq!(named_id(Path::new(path)), id, "{path}");
        }
    }

    /// A view mounted by hand names its layers only as lowers: found for
    /// each of them, whether written absolute (as it is, no check), or
    /// relative or as a short link of `l/` (when the root shows the top
    /// layer's inode number: here the mount point is that directory).
    #[test]
    fn mounts_using_a_snapshot_as_a_lower_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let snapshots = tmp.path().join("st,x/snapshots");
        let fs_of = |id: i64| snapshots.join(id.to_string()).join("fs");
        for id in [1, 2, 36] {
            std::fs::create_dir_all(fs_of(id)).unwrap();
        }
        let dirs = || [(1, fs_of(1)), (2, fs_of(2)), (36, fs_of(36))];
        let none = HashSet::new();
        let escaped = |p: &Path| p.display().to_string().replace(',', "\\134\\054");
        let table = |line: String| MountTable {
            mounts: parse_mountinfo(line.as_bytes()),
        };
        let absolute = table(format!(
            "60 27 0:51 / /mnt/v ro - overlay overlay ro,lowerdir={}:{}\n",
            escaped(&fs_of(2)),
            escaped(&fs_of(1))
        ));
        assert_eq!(absolute.showing(&fs_of(1)), [PathBuf::from("/mnt/v")]);
        assert_eq!(absolute.first_showing([(36, fs_of(36))], &none), None);
        let known = HashSet::from([Path::new("/mnt/v")]);
        assert_eq!(absolute.first_showing(dirs(), &known), None);

        // A mount point's `,` is not escaped in mountinfo.
        let top = fs_of(36).display().to_string();
        let short = table(format!(
            "61 27 0:52 / {top} ro - overlay overlay ro,lowerdir=10:2:1\n\
             62 27 0:53 / /elsewhere ro - overlay overlay ro,lowerdir=2:1\n"
        ));
        assert_eq!(short.showing(&fs_of(1)), [fs_of(36)], "not /elsewhere");
        assert_eq!(short.first_showing(dirs(), &none), Some((1, fs_of(36))));
        let plus = table(format!(
            "63 27 0:54 / {top} ro - overlay overlay ro,lowerdir+=/proc/self/fd/5/snapshots/36/fs,\
             lowerdir+=../snapshots/2/fs,datadir+=/proc/self/fd/5/snapshots/1/fs\n"
        ));
        assert_eq!(plus.showing(&fs_of(2)), [fs_of(36)]);
        assert_eq!(plus.showing(&fs_of(1)), [fs_of(36)], "a data-only layer");
    }

    #[test]
    fn environment_helpers() {
        assert!(!uid_map_is_userns("         0          0 4294967295\n"));
        assert!(uid_map_is_userns("         0       1000          1\n"));
        assert!(!uid_map_is_userns(""));
        assert_eq!(
            overlay_has_index_param(),
            Path::new("/sys/module/overlay/parameters/index").exists()
        );
        let _ = in_user_namespace();
        assert!(fallback_forced(Some(OsStr::new("1"))));
        assert!(!fallback_forced(Some(OsStr::new("0"))));
        assert!(!fallback_forced(None));
    }
}
