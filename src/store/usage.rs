//! Disk usage of a snapshot, computed the way containerd does.
//!
//! containerd's `fs.DiskUsage` walks the tree without following symlinks and
//! counts every distinct inode `(dev, ino)` once: `inodes` is the number of
//! distinct inodes and `size` the sum of their allocated blocks
//! (`st_blocks * 512`), the root directory included. Reporting allocated
//! blocks rather than apparent sizes is what makes the figure comparable with
//! `du` and meaningful for sparse and reflinked files.
//!
//! Snapshots routinely hold 100k+ files, so the walk is built for speed:
//!
//! * a small pool of threads (2–4, via [`std::thread::scope`]) shares a LIFO
//!   queue of directories; stat latency, not CPU, dominates, and several
//!   threads keep several lookups in flight;
//! * each directory is opened once and its entries are read with `getdents64`
//!   into a reused buffer and stat'ed with `fstatat` relative to the
//!   directory descriptor, so no path is built or resolved per file;
//! * entries reported as directories by `d_type` are not stat'ed by the
//!   parent: the thread that opens them `fstat`s the open descriptor instead,
//!   saving one path lookup per directory;
//! * hardlink deduplication only touches the shared set for entries with
//!   `st_nlink > 1` (directories never need it: they cannot be hardlinked),
//!   so the common case takes no lock at all.
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
use std::sync::{Condvar, Mutex, MutexGuard};

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, Stat};
use rustix::io::Errno;

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
    let st = rustix::fs::statat(CWD, root, AtFlags::SYMLINK_NOFOLLOW).ctx(root)?;
    let shared = Shared {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        links: Mutex::new(HashSet::new()),
    };
    let mut main = Worker::new();
    count(&mut main.usage, &st, &shared.links);
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(main.usage);
    }

    // Read the root on this thread first: a small snapshot never pays for
    // spawning threads.
    main.visit(
        Dir {
            path: root.to_path_buf(),
            counted: true,
        },
        &shared,
    )?;
    if main.found.is_empty() {
        return Ok(main.usage);
    }
    lock(&shared.queue).dirs.append(&mut main.found);

    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    let mut total = main.usage;
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
            // be missing, so surface that rather than under-report.
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

/// A directory waiting to be read.
struct Dir {
    path: PathBuf,
    /// Whether its own inode was already counted (because the parent had to
    /// stat it to learn that it is a directory).
    counted: bool,
}

#[derive(Default)]
struct Queue {
    dirs: Vec<Dir>,
    /// Workers currently reading a directory (and so possibly about to push
    /// more work). The walk is over when this is 0 and `dirs` is empty.
    busy: usize,
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
    /// Subdirectories found in the directory being read.
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

    /// Takes directories from the shared queue until the walk is complete
    /// or has failed; returns this worker's share of the usage.
    fn run(mut self, shared: &Shared) -> Usage {
        loop {
            let dir = {
                let mut q = lock(&shared.queue);
                loop {
                    if q.error.is_some() {
                        return self.usage;
                    }
                    if let Some(dir) = q.dirs.pop() {
                        q.busy += 1;
                        break dir;
                    }
                    if q.busy == 0 {
                        return self.usage;
                    }
                    q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let result = self.visit(dir, shared);
            let mut q = lock(&shared.queue);
            q.busy -= 1;
            match result {
                Ok(()) => {
                    let pushed = self.found.len();
                    q.dirs.append(&mut self.found);
                    // This thread takes one of them itself; wake others for
                    // the rest, or everyone if the walk just finished.
                    if pushed > 1 || (q.busy == 0 && q.dirs.is_empty()) {
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

    /// Counts the entries of one directory and collects its subdirectories
    /// into `self.found`.
    fn visit(&mut self, dir: Dir, shared: &Shared) -> io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd: OwnedFd = match rustix::fs::openat(CWD, &dir.path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Replaced by a non-directory since it was listed: count what is
            // there now, if it was not counted already.
            Err(Errno::NOTDIR | Errno::LOOP) => {
                if !dir.counted {
                    match rustix::fs::statat(CWD, &dir.path, AtFlags::SYMLINK_NOFOLLOW) {
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

        let Worker { usage, found, buf } = self;
        let mut entries = RawDir::new(&fd, buf.spare_capacity_mut());
        while let Some(entry) = entries.next() {
            let entry = entry.ctx(&dir.path)?;
            let name: &CStr = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            if entry.file_type() == FileType::Directory {
                found.push(Dir {
                    path: dir.path.join(OsStr::from_bytes(bytes)),
                    counted: false,
                });
                continue;
            }
            let st = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e).ctx(&dir.path.join(OsStr::from_bytes(bytes))),
            };
            count(usage, &st, &shared.links);
            // `d_type` may be DT_UNKNOWN on some filesystems; the stat
            // settles it.
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                found.push(Dir {
                    path: dir.path.join(OsStr::from_bytes(bytes)),
                    counted: true,
                });
            }
        }
        Ok(())
    }
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

/// Attaches the offending path to an error, keeping its kind.
trait Ctx<T> {
    fn ctx(self, path: &Path) -> io::Result<T>;
}

impl<T, E: Into<io::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, path: &Path) -> io::Result<T> {
        self.map_err(|e| {
            let e: io::Error = e.into();
            io::Error::new(e.kind(), format!("{}: {}", path.display(), e))
        })
    }
}
