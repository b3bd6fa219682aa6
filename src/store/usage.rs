//! Disk usage of a snapshot, computed the way containerd does.
//!
//! containerd's `fs.DiskUsage` walks the tree without following symlinks and
//! counts every distinct inode `(dev, ino)` once: `inodes` is the number of
//! distinct inodes and `size` the sum of their allocated blocks
//! (`st_blocks * 512`), the root directory included. Reporting allocated
//! blocks rather than apparent sizes is what makes the figure comparable with
//! `du` and meaningful for sparse and reflinked files.
//!
//! Snapshots routinely hold 100k+ files, and the cost is almost entirely one
//! `stat` system call per entry, so the walk is built to issue those as
//! cheaply as possible and on several CPUs at once:
//!
//! * a small pool of threads (2–4, via [`std::thread::scope`]) shares a LIFO
//!   queue of work: directories to read, and batches of names to stat;
//! * each directory is opened once, read with `getdents64` into a reused
//!   buffer, and its entries are stat'ed with `fstatat` relative to the
//!   directory descriptor, so no path is built or resolved per file;
//! * a large directory is not a serial bottleneck: while reading it, a worker
//!   hands batches of its names (with a shared handle on the directory) to
//!   idle workers, so a flat directory of 100k files is stat'ed in parallel;
//! * entries that `d_type` reports as directories are not stat'ed by the
//!   parent: whoever opens them `fstat`s the open descriptor instead;
//! * hardlink deduplication only touches the shared set for non-directories
//!   with `st_nlink > 1` (directories cannot be hardlinked), so the common
//!   case takes no lock at all;
//! * a directory with no subdirectories and few entries is handled on the
//!   calling thread without spawning anything;
//! * a directory whose path is longer than `PATH_MAX` (a layer may nest that
//!   deep) is opened a piece of its path at a time (nearly every path takes
//!   the single `openat`).
//!
//! Entries that vanish while the walk runs (`ENOENT`, or a directory replaced
//! by something else) are skipped: usage of a tree that is being modified is
//! inherently approximate, and failing would be worse than a slightly stale
//! figure. A missing `root`, however, is reported as `NotFound`.

use std::collections::HashSet;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, Stat};
use rustix::io::Errno;

use super::layout::NotATree;
use super::longpath::{PathContext, open_dir, reach};

/// Space and inodes used by a directory tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Bytes allocated on disk (`st_blocks * 512`) by the distinct inodes.
    pub size: u64,
    /// Number of distinct inodes, the root directory included.
    pub inodes: u64,
}

/// Computes the disk usage of the tree rooted at `root` (see the module
/// documentation for what is counted). Symlinks are never followed; a root
/// that is itself a symlink or a file counts as that single inode.
pub fn disk_usage(root: &Path) -> io::Result<Usage> {
    disk_usage_at(CWD, root, root)
}

/// Opens snapshot tree `root` for [`tree_usage`]. It must be a directory
/// of its own: a symlink or a file in its place is a [`NotATree`] error
/// (what the open tells, at no cost), not a one-inode tree.
pub fn open_tree(root: &Path) -> io::Result<Arc<OwnedFd>> {
    match rustix::fs::openat(CWD, root, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(Arc::new(fd)),
        Err(Errno::NOTDIR | Errno::LOOP) => Err(NotATree::error(root)),
        Err(e) => Err(e).ctx(root),
    }
}

/// [`disk_usage`] of the tree [`open_tree`] opened at `root`. The caller
/// keeps `fd` (`commit` syncs through it after).
pub fn tree_usage(fd: &Arc<OwnedFd>, root: &Path) -> io::Result<Usage> {
    walk(Arc::clone(fd), root)
}

/// [`disk_usage`] of the tree at `rel` under directory `base`, whose path is
/// `root` (for its subdirectories and for errors). Measuring thousands of
/// small trees under one directory (`usage` of every snapshot) this way
/// saves resolving the long common prefix for each of them.
pub fn disk_usage_at(base: BorrowedFd<'_>, rel: &Path, root: &Path) -> io::Result<Usage> {
    match rustix::fs::openat(base, rel, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => walk(Arc::new(fd), root),
        // Not a directory: that single inode.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            let st = rustix::fs::statat(base, rel, AtFlags::SYMLINK_NOFOLLOW).ctx(root)?;
            let mut usage = Usage::default();
            count(&mut usage, &st, &Mutex::default());
            Ok(usage)
        }
        Err(e) => Err(e).ctx(root),
    }
}

/// The usage of the tree of open directory `fd`, whose path is `root`.
fn walk(fd: Arc<OwnedFd>, root: &Path) -> io::Result<Usage> {
    let shared = Shared {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        links: Mutex::new(HashSet::new()),
    };
    let mut main = Worker::new();
    let st = rustix::fs::fstat(&fd).ctx(root)?;
    count(&mut main.usage, &st, &shared.links);

    // Read the root on this thread first. Until helpers exist, every full
    // batch of names is queued for them rather than stat'ed here, so a large
    // flat root is still stat'ed in parallel; a small one never pays for
    // spawning threads.
    main.read(fd, root, &shared)?;
    {
        let mut q = lock(&shared.queue);
        q.work.extend(main.found.drain(..).map(Work::Dir));
        if q.work.is_empty() {
            return Ok(main.usage);
        }
        q.spawned = true;
    }

    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    // `main.run` returns everything `main` counted, root included.
    let mut total = Usage::default();
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                // Failing to spawn only costs parallelism: the calling
                // thread drains the queue on its own if need be.
                std::thread::Builder::new()
                    .spawn_scoped(scope, || Worker::new().run(&shared))
                    .ok()
            })
            .collect();
        let mut add = |u: Usage| {
            total.size += u.size;
            total.inodes += u.inodes;
        };
        add(main.run(&shared));
        for helper in helpers {
            // A worker only panics on a bug; its share of the count would
            // be missing, so propagate rather than under-report.
            match helper.join() {
                Ok(u) => add(u),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });

    match lock(&shared.queue).error.take() {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// How every directory of the walk is opened.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Number of names in a batch that can be handed to another worker. Large
/// enough that the hand-off (one lock, one wake-up) is noise next to the
/// stat calls, small enough to spread a 100k-entry directory evenly.
const BATCH: usize = 256;

/// A directory waiting to be read.
struct Dir {
    path: PathBuf,
    /// Whether its own inode was already counted (because the parent had to
    /// stat it to learn that it is a directory).
    counted: bool,
}

/// Names of one directory waiting to be stat'ed.
struct Names {
    dir: Arc<OwnedFd>,
    path: Arc<Path>,
    /// NUL-terminated names, back to back.
    list: Vec<u8>,
}

enum Work {
    Dir(Dir),
    Names(Names),
}

#[derive(Default)]
struct Queue {
    work: Vec<Work>,
    /// Workers currently processing an item (and so possibly about to push
    /// more work). The walk is over when this is 0 and `work` is empty.
    busy: usize,
    /// Workers waiting for work; batches are only handed out when some are.
    idle: usize,
    /// Whether helper threads were started. Before that, full batches are
    /// always queued, for the helpers about to be started.
    spawned: bool,
    /// First error met; makes every worker stop.
    error: Option<io::Error>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// `(dev, ino)` of the multiply-linked inodes already counted.
    links: Mutex<HashSet<(u64, u64)>>,
}

/// Locks a mutex, ignoring poisoning: the protected data stays consistent
/// because no code holding these locks can panic midway.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Worker {
    usage: Usage,
    /// Subdirectories found and not yet queued.
    found: Vec<Dir>,
    /// `getdents64` buffer, reused for every directory.
    buf: Vec<u8>,
}

impl Worker {
    fn new() -> Self {
        Worker {
            usage: Usage::default(),
            found: Vec::new(),
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Takes work from the shared queue until the walk is complete or has
    /// failed; returns this worker's share of the usage.
    fn run(mut self, shared: &Shared) -> Usage {
        loop {
            let work = {
                let mut q = lock(&shared.queue);
                loop {
                    if q.error.is_some() {
                        return self.usage;
                    }
                    if let Some(work) = q.work.pop() {
                        q.busy += 1;
                        break work;
                    }
                    if q.busy == 0 {
                        return self.usage;
                    }
                    q.idle += 1;
                    q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                    q.idle -= 1;
                }
            };
            let result = match work {
                Work::Dir(dir) => self.visit(dir, shared),
                Work::Names(names) => stat_names(
                    &names.dir,
                    &names.path,
                    &names.list,
                    &mut self.usage,
                    &mut self.found,
                    &shared.links,
                ),
            };
            let mut q = lock(&shared.queue);
            q.busy -= 1;
            match result {
                Ok(()) => {
                    let pushed = self.found.len();
                    q.work.extend(self.found.drain(..).map(Work::Dir));
                    // This thread takes one item itself; wake others for the
                    // rest, or everyone if the walk just finished.
                    if pushed > 1 || (q.busy == 0 && q.work.is_empty()) {
                        shared.wake.notify_all();
                    }
                }
                Err(e) => {
                    self.found.clear();
                    q.error.get_or_insert(e);
                    shared.wake.notify_all();
                }
            }
        }
    }

    /// Counts one directory and its entries, collecting its subdirectories
    /// into `self.found` (or handing them out with batches of names).
    fn visit(&mut self, dir: Dir, shared: &Shared) -> io::Result<()> {
        let fd: OwnedFd = match open_dir(&dir.path) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Replaced by a non-directory since it was listed: count what is
            // there now, if it was not counted already.
            Err(Errno::NOTDIR | Errno::LOOP) => {
                if !dir.counted {
                    match stat_path(&dir.path) {
                        Ok(st) => count(&mut self.usage, &st, &shared.links),
                        Err(Errno::NOENT) => {}
                        Err(e) => return Err(e).ctx(&dir.path),
                    }
                }
                return Ok(());
            }
            Err(e) => return Err(e).ctx(&dir.path),
        };
        if !dir.counted {
            let st = rustix::fs::fstat(&fd).ctx(&dir.path)?;
            count(&mut self.usage, &st, &shared.links);
        }
        self.read(Arc::new(fd), &dir.path, shared)
    }

    /// Counts the entries of open directory `fd` (at `path`), collecting its
    /// subdirectories into `self.found` (or handing them out with batches of
    /// names).
    fn read(&mut self, fd: Arc<OwnedFd>, path: &Path, shared: &Shared) -> io::Result<()> {
        let mut shared_path: Option<Arc<Path>> = None;
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_len = 0;
        let Worker { usage, found, buf } = self;
        let mut entries = RawDir::new(&*fd, buf.spare_capacity_mut());
        while let Some(entry) = entries.next() {
            let entry = entry.ctx(path)?;
            let name = entry.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            if entry.file_type() == FileType::Directory {
                found.push(Dir {
                    path: path.join(OsStr::from_bytes(&name[..name.len() - 1])),
                    counted: false,
                });
                continue;
            }
            pending.extend_from_slice(name);
            pending_len += 1;
            if pending_len < BATCH {
                continue;
            }
            pending_len = 0;
            let mut q = lock(&shared.queue);
            if q.idle > 0 || !q.spawned {
                let path = shared_path.get_or_insert_with(|| Arc::from(path));
                q.work.push(Work::Names(Names {
                    dir: Arc::clone(&fd),
                    path: Arc::clone(path),
                    list: std::mem::take(&mut pending),
                }));
                q.work.extend(found.drain(..).map(Work::Dir));
                shared.wake.notify_all();
            } else {
                drop(q);
                stat_names(&fd, path, &pending, usage, found, &shared.links)?;
                pending.clear();
            }
        }
        stat_names(&fd, path, &pending, usage, found, &shared.links)
    }
}

/// `lstat` of a path of the walk, however long.
fn stat_path(path: &Path) -> rustix::io::Result<Stat> {
    let at = reach(path).map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    rustix::fs::statat(CWD, &*at, AtFlags::SYMLINK_NOFOLLOW)
}

/// Stats each NUL-terminated name of `list` relative to `dir` and counts it;
/// directories among them (whose `d_type` was unknown) go to `found`.
fn stat_names(
    dir: &OwnedFd,
    path: &Path,
    list: &[u8],
    usage: &mut Usage,
    found: &mut Vec<Dir>,
    links: &Mutex<HashSet<(u64, u64)>>,
) -> io::Result<()> {
    let mut rest = list;
    while !rest.is_empty() {
        let Ok(name) = CStr::from_bytes_until_nul(rest) else {
            break;
        };
        let bytes = name.to_bytes();
        rest = &rest[bytes.len() + 1..];
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e).ctx(&path.join(OsStr::from_bytes(bytes))),
        };
        count(usage, &st, links);
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            found.push(Dir {
                path: path.join(OsStr::from_bytes(bytes)),
                counted: true,
            });
        }
    }
    Ok(())
}

/// Adds one inode to `usage`, unless it is a multiply-linked inode that was
/// already counted under another name.
fn count(usage: &mut Usage, st: &Stat, links: &Mutex<HashSet<(u64, u64)>>) {
    #[allow(clippy::unnecessary_cast)] // field types differ across arches
    let (dev, ino, nlink, blocks) = (
        st.st_dev as u64,
        st.st_ino as u64,
        st.st_nlink as u64,
        st.st_blocks as u64,
    );
    if nlink > 1
        && FileType::from_raw_mode(st.st_mode) != FileType::Directory
        && !lock(links).insert((dev, ino))
    {
        return;
    }
    usage.size += blocks * 512;
    usage.inodes += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::process::Command;

    fn blocks(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().blocks() * 512
    }

    /// `du -s` with the given unit option, first field of its output.
    fn du(path: &Path, option: &str) -> u64 {
        let out = Command::new("du")
            .arg("-s")
            .arg(option)
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// `disk_usage` of `root` agrees with `du`, and is the same across runs
    /// despite the parallel walk.
    fn assert_matches_du(root: &Path) {
        let usage = disk_usage(root).unwrap();
        assert_eq!(usage.size, du(root, "--block-size=1"));
        assert_eq!(usage.inodes, du(root, "--inodes"));
        for _ in 0..5 {
            assert_eq!(disk_usage(root).unwrap(), usage);
        }
    }

    #[test]
    fn empty_dir_counts_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let usage = disk_usage(tmp.path()).unwrap();
        assert_eq!(
            usage,
            Usage {
                size: blocks(tmp.path()),
                inodes: 1
            }
        );
    }

    #[test]
    fn hardlinked_file_counted_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("a"), vec![7u8; 20_000]).unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::hard_link(root.join("a"), root.join("sub/c")).unwrap();
        let usage = disk_usage(root).unwrap();
        assert_eq!(usage.inodes, 3, "root, sub and one file");
        assert_eq!(
            usage.size,
            blocks(root) + blocks(&root.join("sub")) + blocks(&root.join("a"))
        );
        assert!(blocks(&root.join("a")) >= 20_000);
    }

    /// Makes `depth` nested directories of 200-byte names under `root`
    /// (far past PATH_MAX), each with a file, one `mkdirat` at a time.
    fn make_deep(root: &Path, depth: usize) {
        let name = "d".repeat(200);
        let mut dir = rustix::fs::open(root, DIR_FLAGS, Mode::empty()).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            let file = rustix::fs::openat(
                &dir,
                "f",
                OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            rustix::io::write(&file, &[1u8; 5000]).unwrap();
            dir = rustix::fs::openat(&dir, name.as_str(), DIR_FLAGS, Mode::empty()).unwrap();
        }
    }

    #[test]
    fn paths_longer_than_path_max() {
        let tmp = tempfile::tempdir().unwrap();
        make_deep(tmp.path(), 60); // 60 * 201 bytes: three times PATH_MAX
        let usage = disk_usage(tmp.path()).unwrap();
        assert_eq!(usage.inodes, 1 + 60 + 60);
        assert_matches_du(tmp.path());
        // The walk's own helpers, on a path of that length.
        let deep: PathBuf = std::iter::repeat_n("d".repeat(200), 60).collect();
        let deep = tmp.path().join(deep);
        assert_eq!(
            rustix::fs::open(&deep, DIR_FLAGS, Mode::empty()).err(),
            Some(Errno::NAMETOOLONG)
        );
        open_dir(&deep).unwrap();
        assert!(
            stat_path(&deep.join("f")).is_err(),
            "the deepest has no file"
        );
        assert!(
            stat_path(&deep.parent().unwrap().join("f"))
                .unwrap()
                .st_size
                == 5000
        );
    }

    #[test]
    fn symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("big"), vec![1u8; 100_000]).unwrap();
        symlink(&elsewhere, root.join("dirlink")).unwrap();
        symlink(elsewhere.join("big"), root.join("filelink")).unwrap();
        let usage = disk_usage(&root).unwrap();
        assert_eq!(usage.inodes, 3);
        assert_eq!(
            usage.size,
            blocks(&root) + blocks(&root.join("dirlink")) + blocks(&root.join("filelink"))
        );

        // A root that is a symlink is that one inode.
        let usage = disk_usage(&root.join("dirlink")).unwrap();
        assert_eq!(usage.inodes, 1);
        // So is a root that is a file.
        let usage = disk_usage(&elsewhere.join("big")).unwrap();
        assert_eq!(usage.inodes, 1);
        assert_eq!(usage.size, blocks(&elsewhere.join("big")));
    }

    #[test]
    fn missing_root_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let err = disk_usage(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn matches_du_on_a_generated_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        let mut files = 0;
        for a in 0..12 {
            for b in 0..(a % 5 + 1) {
                let dir = root.join(format!("d{a}")).join(format!("e{b}")).join("f");
                fs::create_dir_all(&dir).unwrap();
                for i in 0..120 {
                    let path = dir.join(format!("file{i}"));
                    // Sizes from empty to a few blocks, some well past
                    // the inline-data / single-block range.
                    fs::write(&path, vec![b'x'; (i * 997 + a * 31) % 40_000]).unwrap();
                    files += 1;
                    if i % 17 == 0 {
                        fs::hard_link(&path, root.join(format!("link-{a}-{b}-{i}"))).unwrap();
                    }
                    if i % 29 == 0 {
                        symlink(&path, dir.join(format!("sym{i}"))).unwrap();
                    }
                }
            }
            fs::create_dir_all(root.join(format!("empty{a}/x/y"))).unwrap();
        }
        assert!(files > 3000);
        // A file with many links in one directory.
        fs::write(root.join("multi"), vec![1u8; 9000]).unwrap();
        for i in 0..50 {
            fs::hard_link(root.join("multi"), root.join(format!("multi{i}"))).unwrap();
        }

        assert_matches_du(&root);
    }

    /// Large directories are split into batches of names shared between
    /// threads, both in the root (before helpers exist) and below it.
    #[test]
    fn matches_du_on_flat_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("flat");
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        for (dir, n) in [("", 1500), ("sub", 2500), ("sub/deeper", 700)] {
            for i in 0..n {
                let path = root.join(dir).join(format!("f{i}"));
                fs::write(&path, vec![b'y'; (i * 131) % 9000]).unwrap();
                if i % 7 == 0 {
                    // Links to the same inode from different directories
                    // are likely stat'ed by different threads.
                    fs::hard_link(&path, root.join(format!("{}-l{i}", dir.replace('/', "-"))))
                        .unwrap();
                }
                if i % 300 == 0 {
                    fs::create_dir(root.join(dir).join(format!("d{i}"))).unwrap();
                }
            }
        }
        assert_matches_du(&root);
    }

    #[test]
    fn usage_is_serde() {
        fn assert_serde<T: serde::Serialize + serde::de::DeserializeOwned>() {}
        assert_serde::<Usage>();
    }
}
