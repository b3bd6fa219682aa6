//! The store: a small containerd-shaped snapshot API (prepare, view, mounts,
//! commit, remove, walk, stat, update labels, usage) over one directory and
//! its SQLite index. Nothing here prints; every failure is a typed [`Error`].
//!
//! Each operation is at most one short write transaction plus a directory
//! rename made inside it (see `layout.rs`), so a crash leaves the old state
//! or the new one. Slow work (copies, walks, mounts) happens outside
//! transactions and is re-validated when the result is recorded.

pub mod copy;
pub mod crash;
pub mod driver;
pub mod error;
pub mod exchange;
pub mod filter;
pub mod index;
pub mod interrupt;
pub mod key;
pub mod layer;
pub mod layout;
pub(crate) mod longpath;
pub mod mount;
pub mod newfile;
pub mod parallel;
pub(crate) mod remover;
pub mod repair;
pub(crate) mod target;
pub mod time;
pub mod usage;
mod vfs;

pub use driver::Driver;
pub use error::{Error, Kind, Result};
pub use index::SnapshotKind;
pub use key::Labels;
pub use mount::Mount;
pub use time::Timestamp;
pub use usage::Usage;

use error::IoContext;
use index::{Index, MountRecord, Row, Transaction};
use layout::Layout;
use rustix::fd::{AsFd, BorrowedFd};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use target::TargetPath;

/// Settings a store is opened with.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Driver for a store created by this open (None: detect).
    pub driver: Option<Driver>,
    /// Extra options for overlay mounts (never for binds).
    pub overlay_mount_options: Vec<String>,
}

/// A snapshot as shown to users (`info`, each element of `ls`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub name: String,
    pub kind: SnapshotKind,
    pub parent: Option<String>,
    pub labels: Labels,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub usage: Option<Usage>,
    pub mounted_at: Vec<String>,
}

/// The most option bytes mount(2) accepts: one page, with its NUL.
pub const MAX_MOUNT_DATA: usize = 4095;

/// Mounts to perform from a shell: from directory `dir` when set (their
/// paths are then relative to it).
#[derive(Debug, Clone)]
pub struct ShellMounts {
    pub dir: Option<PathBuf>,
    pub mounts: Vec<Mount>,
}

impl ShellMounts {
    /// `mounts` as they are (absolute paths), when each fits in one page
    /// and no path in an overlay's options holds a `,` (mount(8) and the
    /// kernel split the options there).
    pub fn absolute(mounts: Vec<Mount>) -> Option<ShellMounts> {
        let splits = |m: &Mount| m.kind == "overlay" && m.options.iter().any(|o| has_comma(o));
        (fit_one_page(&mounts) && !mounts.iter().any(splits))
            .then_some(ShellMounts { dir: None, mounts })
    }
}

/// Whether an option's value (after `NAME=`) holds a comma.
fn has_comma(option: &str) -> bool {
    option
        .split_once('=')
        .is_some_and(|(_, value)| value.contains(','))
}

/// Whether mount(2) can take each mount's options (at most one page).
fn fit_one_page(mounts: &[Mount]) -> bool {
    mounts
        .iter()
        .all(|m| m.options.join(",").len() <= MAX_MOUNT_DATA)
}

/// A snapshot just made: its store's driver, id and parent chain.
pub(crate) struct Made {
    pub driver: Driver,
    pub id: i64,
    pub chain: Vec<i64>,
}

/// What a snapshot's mounts are computed from: the store's driver, the
/// snapshot's kind and id, and its parent chain (nearest first). A create
/// returns it, so printing the new snapshot's mounts needs no second look
/// at the index (a deep chain is hundreds of lookups); [`Store::mounts_of`]
/// gives the mounts.
#[derive(Debug, Clone)]
pub struct Plan {
    driver: Driver,
    kind: SnapshotKind,
    id: i64,
    chain: Vec<i64>,
}

/// An open store.
pub struct Store {
    layout: Layout,
    index: Index,
    options: Options,
}

const DRIVER_META: &str = "driver";

impl Store {
    /// Opens the store at `root`, creating it (mode 0700) on first use.
    pub fn open(root: &Path, options: Options) -> Result<Store> {
        let root = std::path::absolute(root)
            .ctx(|| format!("cannot resolve the store path {}", root.display()))?;
        refuse_unusable_root(&root)?;
        // Not there, rather than there but out of reach (another user's).
        let found = std::fs::metadata(&root);
        let existed = !matches!(&found, Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        refuse_non_directory(&root, &found)?;
        // An existing store is resolved before anything is made in it, so
        // that a symlink to a path that is not UTF-8 is refused first
        // (review); a new one once it is made. One resolution either way.
        let real = if existed {
            root.canonicalize().ok()
        } else {
            None
        };
        if let Some(real) = &real {
            refuse_unusable_root(real)?;
        }
        // As root, the way to the store is judged before anything is made:
        // the store itself, or the nearest directory above a new one. Root
        // uses only stores no other user can change (but the `sudo` user),
        // as git refuses a repository another user owns: an audit made
        // root's `prepare` on a user's store write the copied files outside
        // it, by swapping `new-*` for a symlink while the copy ran.
        if euid() == 0 {
            let base = match &real {
                Some(real) => Some(real.clone()),
                None => root.ancestors().skip(1).find_map(|a| a.canonicalize().ok()),
            };
            if let Some(base) = base {
                refuse_unsafe_way(&root, base.ancestors())?;
            }
        }
        let made = Layout::create(real.as_deref().unwrap_or(&root)).map_err(|e| {
            let verb = if existed { "open" } else { "create" };
            // EACCES is another user's directory; EPERM (a read-only kernel
            // file system such as /sys) is not, and neither is a failure of
            // the kernel's: the store is just not usable there.
            let denied = e.raw_os_error() == Some(libc::EACCES);
            let what = format!("cannot {verb} the store {}", root.display());
            let missing = e.get_ref().is_some_and(|e| e.is::<layout::SnapshotsMissing>());
            let err = Error::new(Kind::Internal, what).with_source(e);
            if missing {
                return err.with_hint(snapshots_lost_hint(
                    &root.join("snapshots"),
                    "make it again (mode 0700), and remove the snapshots `strata check` then lists",
                ));
            }
            match denied {
                true => err.with_hint(
                    "the store, or a directory above it, belongs to another user (root's store is /var/lib/strata): use a store of your own, with --root or STRATA_ROOT",
                ),
                false => err,
            }
        })?;
        // Absolute, symlink-free paths: printed mounts must work from anywhere.
        let judged = real.is_some();
        let root = match real {
            Some(real) => real,
            None => root
                .canonicalize()
                .ctx(|| format!("cannot resolve the store path {}", root.display()))?,
        };
        refuse_unusable_root(&root)?;
        // And once made: its `snapshots/`, which another user may have been
        // given, and a new store, which another user may have made meanwhile
        // (an existing one was judged above).
        if euid() == 0 {
            let snapshots = root.join("snapshots");
            // A new one with every directory above it again: the first
            // judgement was of the way as it was before the store was made,
            // which a user may have changed since (review: a symlink on the
            // way flipped between the two made stores in a user's
            // directory).
            let new = root.ancestors().take(if judged { 0 } else { usize::MAX });
            refuse_unsafe_way(&root, new.chain([snapshots.as_path()]))?;
        }
        let layout = Layout::at(&root).bare_as(&made);
        let index = Index::open_guarded(&layout.index(), layout.snapshots())?;
        Ok(Store {
            layout,
            index,
            options,
        })
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Ends this process's use of the store (see [`Index::close_at_exit`]).
    pub fn close_at_exit(self) {
        self.index.close_at_exit();
    }

    /// A second handle on the same store, with the same options, for work
    /// on another thread (each handle has its own index connection).
    pub fn reopen(&self) -> Result<Store> {
        Store::open(self.root(), self.options.clone())
    }

    /// The driver recorded in the store, if one was chosen yet.
    pub fn driver(&mut self) -> Result<Option<Driver>> {
        let tx = self.index.read()?;
        read_driver(&tx)
    }

    /// Creates the store explicitly with `driver` (or else the configured
    /// driver for new stores, or else the best supported one). Returns the
    /// store's driver and whether this call chose it. Refuses to change the
    /// driver of an existing store when `driver` asks another (the
    /// configured one is only for new stores).
    pub fn init(&mut self, driver: Option<Driver>) -> Result<(Driver, bool)> {
        if let Some(current) = self.driver()? {
            return Ok((self.driver_as_asked(current, driver)?, false));
        }
        let wanted = match driver.or(self.options.driver) {
            Some(Driver::Overlay) => {
                if !self.overlay_works()? {
                    return Err(Store::overlay_refused(self.root()));
                }
                Driver::Overlay
            }
            Some(d) => d,
            None => self.detect_driver()?,
        };
        let (recorded, chosen) = self.record_driver(wanted)?;
        // Another process may have chosen meanwhile.
        Ok((self.driver_as_asked(recorded, driver)?, chosen))
    }

    /// The error of `init --driver overlay` where overlay does not work.
    pub fn overlay_refused(root: &Path) -> Error {
        Error::unsupported(format!(
            "the overlay driver cannot be used for {}: a test overlay mount failed",
            root.display()
        ))
        .with_hint("run as root on a kernel with overlayfs, or use --driver native")
    }

    /// `current`, unless the caller asked for another driver.
    fn driver_as_asked(&self, current: Driver, asked: Option<Driver>) -> Result<Driver> {
        match asked {
            Some(asked) if asked != current => Err(Error::precondition(format!(
                "the store {} already uses the {} driver, not {}",
                self.root().display(),
                current.as_str(),
                asked.as_str()
            ))
            .with_hint("a store's driver never changes: use another --root for a new store")),
            _ => Ok(current),
        }
    }

    /// The store's driver, choosing and recording one on the first write.
    fn ensure_driver(&mut self) -> Result<Driver> {
        if let Some(d) = self.driver()? {
            return Ok(d);
        }
        let wanted = match self.options.driver {
            Some(d) => d,
            None => self.detect_driver()?,
        };
        Ok(self.record_driver(wanted)?.0)
    }

    fn record_driver(&mut self, wanted: Driver) -> Result<(Driver, bool)> {
        let tx = self.index.write()?;
        // Another process may have chosen first; its choice stands.
        if let Some(d) = read_driver(&tx)? {
            return Ok((d, false));
        }
        index::set_meta(&tx, DRIVER_META, wanted.as_str())?;
        tx.commit()?;
        Ok((wanted, true))
    }

    fn detect_driver(&self) -> Result<Driver> {
        Ok(if self.overlay_works()? {
            Driver::Overlay
        } else {
            Driver::Native
        })
    }

    /// Tries an overlay mount in a scratch directory of the store
    /// ([`overlay_mounts_in`]). A store that cannot even hold the scratch directories is
    /// an error, not a "no": the driver is recorded for good, and a broken
    /// store must not make it native.
    fn overlay_works(&self) -> Result<bool> {
        let staging = self
            .layout
            .staging()
            .ctx(|| "cannot test overlay support in the store".to_string())?;
        overlay_mounts_in(staging.path())
            .ctx(|| "cannot test overlay support in the store".to_string())
    }

    /// Whether the overlay driver would work for a store not made yet at
    /// `root`, tried in a scratch directory in the nearest directory above it
    /// that exists, so that `init --driver overlay` refused there leaves
    /// nothing behind: a store once made may already be in use by another
    /// process and cannot be taken back. `None` when no scratch directory
    /// can be made there; opening the store then says why.
    pub fn overlay_works_for_new(root: &Path) -> Option<bool> {
        let root = std::path::absolute(root).ok()?;
        let mut above = root.parent()?;
        while std::fs::symlink_metadata(above).is_err() {
            above = above.parent()?;
        }
        // Root makes it only where no other user could swap it for a
        // symlink (its overlay's work directory is emptied by the kernel).
        if euid() == 0 {
            let above = above.canonicalize().ok()?;
            refuse_unsafe_way(&above, above.ancestors()).ok()?;
        }
        let scratch = layout::Scratch::make(above).ok()?;
        overlay_mounts_in(scratch.path()).ok()
    }

    /// Creates active snapshot `key` on `parent` and returns its mounts.
    pub fn prepare(&mut self, key: &str, parent: Option<&str>, labels: &Labels) -> Result<Plan> {
        self.create(SnapshotKind::Active, key, parent, labels)
    }

    /// Creates read-only view `key` of committed `parent`; returns its mounts.
    pub fn view(&mut self, key: &str, parent: &str, labels: &Labels) -> Result<Plan> {
        self.create(SnapshotKind::View, key, Some(parent), labels)
    }

    fn create(
        &mut self,
        kind: SnapshotKind,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<Plan> {
        let made = self.make(kind, key, parent, labels, &mut |_, _| Ok(()))?;
        Ok(Plan {
            driver: made.driver,
            kind,
            id: made.id,
            chain: made.chain,
        })
    }

    /// Makes snapshot `key` of `kind` on `parent`: checks, builds it under a
    /// staging name, lets `fill` write into its tree (apply unpacks a layer
    /// there; for a committed snapshot it also gets the parent chain's
    /// trees, nearest first), then records it and renames it into place in
    /// one transaction. A committed snapshot made this way gets its usage.
    pub(crate) fn make(
        &mut self,
        kind: SnapshotKind,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
        fill: &mut dyn FnMut(&Path, &[PathBuf]) -> Result<()>,
    ) -> Result<Made> {
        key::validate_key(key)?;
        for (k, v) in labels {
            key::validate_label(k, v)?;
        }
        if self.layout.looked_bare() {
            self.refuse_bare_snapshots()?;
        }
        // Check first without the write lock, so the common errors are cheap.
        let (recorded, parent_row, chain) = {
            let tx = self.index.read()?;
            let recorded = read_driver(&tx)?;
            if index::find(&tx, key)?.is_some() {
                return Err(exists(key));
            }
            let parent_row = match parent {
                Some(p) => Some(committed_parent(&tx, p)?),
                None => None,
            };
            let chain = index::layers_on(&tx, parent_row.as_ref().map(|p| p.id))?;
            (recorded, parent_row, chain)
        };
        // A store's first snapshot chooses its driver.
        let driver = match recorded {
            Some(d) => d,
            None => self.ensure_driver()?,
        };
        // Only what gets mounted is limited; a committed layer may be deep.
        if kind != SnapshotKind::Committed
            && let Err(why) = driver.check_depth(chain.len())
        {
            return Err(Error::unsupported(format!(
                "cannot {} `{key}` on `{}`: {why}",
                if kind == SnapshotKind::View {
                    "view"
                } else {
                    "prepare"
                },
                parent.unwrap_or_default()
            ))
            .with_hint("commit fewer, larger layers, or use a store with the native driver"));
        }
        let parent_fs = parent_row.as_ref().map(|p| self.layout.fs(p.id));
        // The trees read (the parent's, copied or its root's xattrs; apply's
        // lowers) are the store's own, not what a symlink points at.
        // A prepare's or a view's parent tree itself is judged by the
        // `lstat` its root's mode is taken with (`make_root_dir`): only its
        // snapshot directory is looked at here, one `lstat`.
        let bad = match kind {
            SnapshotKind::Committed => self.bad_tree(chain.iter().copied()),
            _ => chain
                .first()
                .map(|&id| self.layout.dir(id))
                .filter(|d| not_a_dir(d)),
        };
        if let Some(tree) = bad {
            let on = parent.unwrap_or_default();
            return Err(not_a_tree(format!("cannot make `{key}` on `{on}`"), &tree));
        }
        crash::point("create:validated");
        // The long steps (a copy of the parent, a layer unpacked) stop at a
        // caught Ctrl-C, and the staging directory goes with
        // the error.
        if kind == SnapshotKind::Committed
            || (driver == Driver::Native && kind != SnapshotKind::View && parent_fs.is_some())
        {
            interrupt::catch();
        }
        let staging = self.layout.staging().ctx(|| {
            format!(
                "cannot create a directory in {}",
                self.layout.snapshots().display()
            )
        })?;
        crash::point("create:staging-made");
        if let Err(e) = driver.build(staging.path(), kind, parent_fs.as_deref()) {
            // A parent removed meanwhile explains the failure better.
            if let (Some(p), Some(name)) = (&parent_row, parent) {
                self.parent_still_there(p.id, name, key)?;
            }
            if let Some(tree) = layout::NotATree::of(&e) {
                let on = parent.unwrap_or_default();
                return Err(not_a_tree(format!("cannot make `{key}` on `{on}`"), tree));
            }
            return Err(Error::io(format!("cannot build snapshot `{key}`"), e));
        }
        crash::point("create:built");
        let tree = staging.path().join("fs");
        // Only apply fills a tree (a committed snapshot's); prepare and view
        // do not pay for the paths.
        let lowers: Vec<PathBuf> = match kind {
            SnapshotKind::Committed => chain.iter().map(|&id| self.layout.fs(id)).collect(),
            _ => Vec::new(),
        };
        if let Err(e) = fill(&tree, &lowers) {
            // A parent removed meanwhile (its tree read by `fill`) explains
            // the failure better.
            if let (Some(p), Some(name)) = (&parent_row, parent) {
                self.parent_still_there(p.id, name, key)?;
            }
            return Err(e);
        }
        // Stamped after filling: an empty active's root keeps this mtime
        // until an entry is added to it (see `untouched_usage`).
        let created = Timestamp::now();
        if kind == SnapshotKind::Active && starts_empty(driver, parent_fs.is_some()) {
            layout::set_mtime(&tree, created).ctx(|| format!("cannot build snapshot `{key}`"))?;
        }
        let usage = match kind {
            SnapshotKind::Committed => Some(
                usage::disk_usage(&tree)
                    .ctx(|| format!("cannot measure the disk usage of `{key}`"))?,
            ),
            _ => None,
        };
        let copied = driver == Driver::Native && kind != SnapshotKind::View && parent_fs.is_some();
        if copied || kind == SnapshotKind::Committed {
            syncfs(staging.path()).ctx(|| format!("cannot sync snapshot `{key}`"))?;
        } else {
            layout::sync_dir(staging.path()).ctx(|| format!("cannot sync snapshot `{key}`"))?;
        }

        let tx = self.index.write()?;
        // Re-validate under the lock: another process may have taken the key
        // or removed the parent while we built.
        if index::find(&tx, key)?.is_some() {
            return Err(exists(key));
        }
        if let (Some(p), Some(name)) = (&parent_row, parent) {
            same_parent(&tx, p.id, name, key)?;
        }
        let parent_id = parent_row.as_ref().map(|p| p.id);
        let id = index::insert(&tx, key, kind, parent_id, labels, created)?;
        if let Some(u) = usage {
            index::set_usage(&tx, id, u.size, u.inodes)?;
        }
        crash::point("create:row-inserted");
        self.layout
            .install(staging, id)
            .ctx(|| format!("cannot install snapshot `{key}`"))?;
        crash::point("create:installed");
        if let Err(e) = tx.commit() {
            let _ = self.layout.discard(id);
            return Err(e.into());
        }
        crash::point("create:committed");
        self.layout.not_bare();
        Ok(Made { driver, id, chain })
    }

    /// Errs when `snapshots/` holds no snapshot directory while the index
    /// lists snapshots: a mount point whose file system is not mounted, so
    /// that a new snapshot would land on the disk below it and be lost from
    /// view when it is mounted, or directories lost. Asked only when
    /// `snapshots/` looked bare as the store was opened (see
    /// [`Layout::looked_bare`]), so a store with snapshots pays nothing for
    /// it. Decided under the write lock: the index is then current, and a
    /// row's directory is installed before its insert commits and removed
    /// only after its delete does (review: in WAL mode a read could show a
    /// row whose directory an `rm` had since removed, and refuse a healthy
    /// store).
    fn refuse_bare_snapshots(&mut self) -> Result<()> {
        let snapshots = self.layout.snapshots().to_path_buf();
        let root = self.root().to_path_buf();
        let tx = self.index.write()?;
        if !index::any(&tx)? {
            return Ok(());
        }
        let has_dirs = std::fs::read_dir(&snapshots)
            .map_err(|e| Error::io(format!("cannot read {}", snapshots.display()), e))?
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        if has_dirs {
            return Ok(());
        }
        Err(Error::internal(format!(
            "the store {} lists snapshots in its index, but {} holds none of their directories",
            root.display(),
            snapshots.display()
        ))
        .with_hint(snapshots_lost_hint(
            &snapshots,
            "remove the snapshots `strata check` lists",
        )))
    }

    fn parent_still_there(&mut self, id: i64, name: &str, key: &str) -> Result<()> {
        let tx = self.index.read()?;
        same_parent(&tx, id, name, key)
    }

    /// The mounts `plan` gives, with absolute paths.
    pub fn mounts_of(&self, plan: &Plan) -> Vec<Mount> {
        let chain: Vec<PathBuf> = plan.chain.iter().map(|&p| self.layout.fs(p)).collect();
        plan.driver.mounts(
            plan.kind,
            &self.layout.dir(plan.id),
            &chain,
            &self.options.overlay_mount_options,
        )
    }

    /// The mounts of an active snapshot or a view.
    pub fn mounts(&mut self, key: &str) -> Result<Vec<Mount>> {
        let plan = self.mount_plan(key)?;
        Ok(self.mounts_of(&plan))
    }

    fn mount_plan(&mut self, key: &str) -> Result<Plan> {
        let tx = self.index.read()?;
        let driver = read_driver(&tx)?.unwrap_or(Driver::Native);
        let row = mountable(&tx, key)?;
        let chain = index::layers_on(&tx, row.parent_id)?;
        Ok(Plan {
            driver,
            kind: row.kind,
            id: row.id,
            chain,
        })
    }

    /// The mounts of `key` in a form a shell's `mount` can perform.
    /// mount(2) copies at most one page of options; when the absolute form
    /// is longer, the overlay is given relative to the store's `l/`
    /// directory of short links (`l/<id in base 36>` -> `../snapshots/ID/fs`),
    /// to be run from there. `dir` is then that directory.
    pub fn shell_mounts(&mut self, key: &str) -> Result<ShellMounts> {
        let plan = self.mount_plan(key)?;
        self.shell_mounts_of(key, plan)
    }

    /// [`Store::shell_mounts`] from a plan already in hand (a create's).
    pub fn shell_mounts_of(&mut self, key: &str, plan: Plan) -> Result<ShellMounts> {
        if self.absolute_may_fit(&plan)
            && let Some(shell) = ShellMounts::absolute(self.mounts_of(&plan))
        {
            return Ok(shell);
        }
        self.layout.ensure_links(&plan.chain).map_err(|e| {
            let what = format!("cannot create the short links of the layers of `{key}`");
            match layout::NotATree::of(&e) {
                Some(links) => Error::internal(format!(
                    "{what}: {} is not a directory (a symlink or a file in its place)",
                    links.display()
                ))
                .with_hint(
                    "`strata prune` deletes it; strata makes the directory again when it needs it",
                ),
                None => Error::io(what, e),
            }
        })?;
        let short: Vec<PathBuf> = plan
            .chain
            .iter()
            .map(|&id| PathBuf::from(layout::link_name(id)))
            .collect();
        let own = Path::new("..").join("snapshots").join(plan.id.to_string());
        let mounts =
            plan.driver
                .mounts(plan.kind, &own, &short, &self.options.overlay_mount_options);
        if !fit_one_page(&mounts) {
            return Err(Error::unsupported(format!(
                "the mount of `{key}` ({} layers) cannot be written within one page of mount options, even with short relative paths",
                plan.chain.len()
            ))
            .with_hint(format!("mount it with strata, which has no such limit: strata mount {key} TARGET")));
        }
        Ok(ShellMounts {
            dir: Some(self.layout.links()),
            mounts,
        })
    }

    /// Whether `plan`'s mounts with absolute paths may fit in one page. Only
    /// an overlay lists the chain; each lower layer takes at least
    /// `SNAPSHOTS/N/fs` and a separator, so a deep chain is known not to fit
    /// without building its paths.
    fn absolute_may_fit(&self, plan: &Plan) -> bool {
        let shortest = self.layout.snapshots().as_os_str().len() + "/1/fs:".len();
        plan.driver != Driver::Overlay || plan.chain.len() * shortest <= MAX_MOUNT_DATA + 1
    }

    /// Refuses to mount `plan` when a tree it mounts (its own, or a layer
    /// of its chain) is not a directory: the kernel would follow a symlink
    /// put in its place and mount what it points at. One `lstat` per tree,
    /// next to the path walk the mount makes of each anyway.
    fn refuse_bad_trees(&self, key: &str, plan: &Plan) -> Result<()> {
        let own = (plan.kind == SnapshotKind::Active).then_some(plan.id);
        // Native mounts one tree: an active's own, a view's parent.
        let layers = match plan.driver {
            Driver::Overlay => plan.chain.len(),
            Driver::Native => usize::from(plan.kind == SnapshotKind::View),
        };
        let trees = own
            .into_iter()
            .chain(plan.chain.iter().take(layers).copied());
        // An overlay's work directory too: the kernel empties it at the
        // mount, through a symlink as well (audit: a `work` linked
        // elsewhere had that directory's files deleted).
        let work = match plan.driver {
            Driver::Overlay if plan.kind == SnapshotKind::Active && !plan.chain.is_empty() => {
                Some(self.layout.dir(plan.id).join("work"))
            }
            _ => None,
        };
        let bad = self
            .bad_tree(trees)
            .or_else(|| work.filter(|w| not_a_dir(w)));
        match bad {
            Some(tree) => Err(not_a_tree(format!("cannot mount `{key}`"), &tree)),
            None => Ok(()),
        }
    }

    /// The first tree of snapshots `ids` that is not a directory (a
    /// symlink or a file in its place), or whose snapshot directory is not
    /// one (the tree would be read through the symlink; audit: a linked
    /// `snapshots/ID` was mounted, exported and diffed), by two `lstat`s
    /// each. A tree that is not there is not one: the work that follows
    /// fails, and says so.
    fn bad_tree(&self, ids: impl IntoIterator<Item = i64>) -> Option<PathBuf> {
        ids.into_iter().find_map(|id| {
            let dir = self.layout.dir(id);
            if not_a_dir(&dir) {
                return Some(dir);
            }
            let tree = self.layout.fs(id);
            not_a_dir(&tree).then_some(tree)
        })
    }

    /// Mounts `key` at `target` (created if missing) and records the mount.
    /// Returns the absolute target.
    pub fn mount(&mut self, key: &str, target: &Path) -> Result<PathBuf> {
        let id = self.mount_plan(key)?.id;
        let _lock = self.lock(id, key)?;
        // Read again under the lock: a commit or rm may have gone first.
        let plan = self.mount_plan(key)?;
        if plan.id != id {
            return Err(replaced(key));
        }
        let live = self.live_mounts()?;
        // A parentless active is a bind of its directory even on the
        // overlay driver, and binds may be made any number of times (as on
        // the native driver: the SPEC has both drivers behave alike but for
        // their mounts).
        let overlay_upper = plan.kind == SnapshotKind::Active
            && plan.driver == Driver::Overlay
            && !plan.chain.is_empty();
        if overlay_upper && let Some(rec) = live.iter().find(|r| r.snapshot_id == id) {
            // Two overlays on one upper directory: the kernel warns that
            // using both is undefined behaviour.
            return Err(Error::precondition(format!(
                "snapshot `{key}` is already mounted at {}: an active snapshot on the overlay driver is mounted once",
                rec.target
            ))
            .with_hint(format!(
                "use that mount, or unmount it first: strata unmount {}",
                key::shell_quote(&rec.target)
            )));
        }
        if overlay_upper {
            self.refuse_other_mounts(&mount_table()?, [(id, key)], &[], "mount")?;
        }
        self.refuse_bad_trees(key, &plan)?;
        let mounts = self.mounts_of(&plan);
        // Checked before anything is created, and again once resolved.
        let not_a_dir = || {
            Error::invalid(format!(
                "cannot mount `{key}` at {}: it is not a directory",
                target.display()
            ))
        };
        let resolved = match TargetPath::resolve(target) {
            Ok(resolved) => resolved,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Err(not_a_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                let why = format!("cannot mount `{key}` at {}: {e}", target.display());
                return Err(Error::invalid(why));
            }
            Err(e) => {
                let what = format!("cannot resolve the mount target {}", target.display());
                return Err(Error::io(what, e));
            }
        };
        // The target itself is judged by identity under the write lock,
        // after the check that says it is a strata mount already: another
        // process may be mounting there now (review: two mounts racing for
        // one target gave `invalid`). Its directory is judged here, before
        // anything is made in it.
        usable_target(self.layout.root(), key, &resolved.path, Judge::Directory)?;
        if target.metadata().is_ok_and(|m| !m.is_dir()) {
            return Err(not_a_dir());
        }
        // Directories made for the target go again if the mount fails.
        let made = resolved
            .create()
            .ctx(|| format!("cannot create the mount target {}", target.display()))?;
        let mounted = self.mount_made(key, &mounts, target);
        if mounted.is_err() {
            made.undo();
        }
        mounted
    }

    /// The rest of [`Store::mount`], once the target directory exists. The
    /// check that no live strata mount is at the target, the mount and its
    /// record are one write transaction of the index: two mounts of other
    /// snapshots at one target (each holding only its own snapshot's lock)
    /// both passed the check before, stacked, and the one record left named
    /// the hidden one, which `rm -f` then deleted while mounted (audit).
    fn mount_made(&mut self, key: &str, mounts: &[Mount], target: &Path) -> Result<PathBuf> {
        let target = target
            .canonicalize()
            .ctx(|| format!("cannot resolve the mount target {}", target.display()))?;
        let tx = self.index.write()?;
        let at_target: Vec<MountRecord> = index::mounts(&tx)?
            .into_iter()
            .filter(|r| Path::new(&r.target) == target)
            .collect();
        // A stale record is replaced by this mount's (`add_mount`).
        let (live, _) = live_and_stale(at_target, None)?;
        if let Some(rec) = live.first() {
            let name = index::find_id(&tx, rec.snapshot_id)?.map(|r| r.name);
            return Err(Error::already_exists(format!(
                "{} is already a strata mount of `{}`",
                target.display(),
                name.unwrap_or_default()
            ))
            .with_hint(format!(
                "unmount it first: strata unmount {}",
                key::shell_quote(&target.to_string_lossy())
            )));
        }
        // By identity once no strata mount is there (see `usable_target`).
        usable_target(self.layout.root(), key, &target, Judge::Identity)?;
        let row = mountable(&tx, key)?;
        mount::mount_all(mounts, &target).map_err(|e| {
            // overlayfs refuses an upper directory on a read-only mount
            // with EINVAL only (audit: "Invalid argument (os error 22)" for
            // a store bind-mounted read-only).
            let root = self.layout.root();
            let rofs = matches!(mount::errno(&e), Some(libc::EINVAL | libc::EROFS))
                && mount::read_only(root).unwrap_or(false);
            if !rofs {
                return mount_error(key, &target, e);
            }
            // Not with the kernel's EINVAL as its cause: that is not why.
            Error::internal(format!(
                "cannot mount `{key}` at {}: the store {} is on a read-only file system",
                target.display(),
                root.display()
            ))
            .with_hint(STORE_READ_ONLY_HINT)
        })?;
        // overlayfs mounts an upper directory read-only, with only a line
        // in the kernel log, when it cannot make `work/work` (a full disk):
        // an active must be writable (audit: "mounted" with exit 0, and
        // read-only until mounted again).
        if row.kind == SnapshotKind::Active && mount::read_only(&target).unwrap_or(false) {
            let _ = mount::unmount(&target, false);
            return Err(Error::internal(format!(
                "cannot mount `{key}` at {}: the kernel mounted it read-only",
                target.display()
            ))
            .with_hint(
                "overlayfs does that when it cannot write its work directory: is the store's disk full, or its file system read-only? (see dmesg)",
            ));
        }
        crash::point("mount:mounted");
        // Without an id (a kernel before 5.8) the record is of the target.
        let table = mount::MountTable::read().ok();
        let identity = mount::mount_id(&target).ok().and_then(|id| {
            let identity = table.as_ref()?.identity(id)?;
            Some((
                id,
                MountRecord::identity_in(mount::own_namespace(), identity),
            ))
        });
        let identity = identity.as_ref().map(|(id, i)| (*id, i.as_str()));
        let recorded = index::add_mount(&tx, row.id, &target.display().to_string(), identity)
            .and_then(|()| Ok(tx.commit()?));
        if let Err(e) = recorded {
            let _ = mount::unmount(&target, false);
            return Err(e);
        }
        crash::point("mount:recorded");
        Ok(target)
    }

    /// Unmounts a mount made by strata, given its target or a key (all of
    /// that snapshot's mounts), and forgets it. Returns the targets.
    pub fn unmount(&mut self, what: &str, lazy: bool) -> Result<Vec<PathBuf>> {
        let live = self.live_mounts()?;
        let as_path = Path::new(what).canonicalize().ok();
        let records: Vec<MountRecord> = match as_path
            .as_ref()
            .and_then(|p| live.iter().find(|r| Path::new(&r.target) == p))
        {
            Some(rec) => vec![rec.clone()],
            None => {
                let tx = self.index.read()?;
                let Some(row) = index::find(&tx, what)? else {
                    // Neither a live target nor a key: a text no key could
                    // be is reported as such.
                    key::validate_key(what)?;
                    return Err(Error::not_found(format!(
                        "`{what}` is neither a mount made by strata nor a snapshot"
                    ))
                    .with_hint("see where snapshots are mounted with `strata ls`"));
                };
                let records: Vec<MountRecord> = live
                    .into_iter()
                    .filter(|r| r.snapshot_id == row.id)
                    .collect();
                if records.is_empty() {
                    return Err(Error::not_found(format!(
                        "snapshot `{what}` is not mounted"
                    )));
                }
                records
            }
        };
        for rec in &records {
            self.unmount_target(rec, lazy)?;
        }
        Ok(records
            .into_iter()
            .map(|r| PathBuf::from(r.target))
            .collect())
    }

    /// Unmounts the mount of `rec` and drops the record. Whatever another
    /// mount stacked on it is left alone (`failed_precondition`): it is not
    /// strata's to unmount.
    fn unmount_target(&mut self, rec: &MountRecord, lazy: bool) -> Result<()> {
        let target = Path::new(&rec.target);
        // What is at that path here is not that mount.
        if let Some(ns) = foreign(rec, mount::own_namespace()) {
            return Err(Error::precondition(format!(
                "cannot unmount {}: strata mounted it in another mount namespace (mnt:[{ns}])",
                target.display()
            ))
            .with_hint(
                "unmount it from a shell in that namespace (nsenter --mount=/proc/PID/ns/mnt)",
            ));
        }
        if let (Some(ours), Ok(top)) = (rec.mount_id, mount::mount_id(target))
            && ours != top
        {
            // Records are only handled once found live: strata's mount is
            // below this one.
            let hint = self.unmount_first(target);
            return Err(Error::precondition(format!(
                "cannot unmount {}: another file system is mounted on top of strata's mount there",
                target.display()
            ))
            .with_hint(hint));
        }
        // A mount inside strata's is someone else's: a lazy unmount would
        // detach it too, and its files with it (audit: a tmpfs the user
        // mounted in a snapshot's mount). A plain one would fail as busy.
        if let Some(ours) = rec.mount_id {
            let table = mount_table()?;
            if let Some(inner) = table.inside(ours).first() {
                let hint = self.unmount_first(inner);
                return Err(Error::precondition(format!(
                    "cannot unmount {}: another file system is mounted inside it, at {}",
                    target.display(),
                    inner.display()
                ))
                .with_hint(hint));
            }
        }
        match mount::unmount(target, lazy) {
            Ok(()) => {}
            // Not mounted any more: only the record is left to drop.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Error::precondition(format!(
                    "cannot unmount {}: it is busy",
                    target.display()
                ))
                .with_hint("close the files and shells that use it, or use `strata unmount --lazy`")
                .with_source(e));
            }
            Err(e) => {
                let what = format!("cannot unmount {}", target.display());
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM) => Error::unsupported(what)
                        .with_hint("unmounting needs root, as mounting does")
                        .with_source(e),
                    _ => Error::io(what, e),
                });
            }
        }
        crash::point("unmount:unmounted");
        let tx = self.index.write()?;
        index::remove_mount(&tx, &target.display().to_string())?;
        tx.commit()?;
        crash::point("unmount:forgotten");
        Ok(())
    }

    /// Refuses `path`, where this process is to write `what`, when it lies
    /// inside the store: only strata's own bookkeeping goes there (a file
    /// written into a snapshot's tree would change the snapshot, one on
    /// the index would replace it). A path that cannot be resolved is left
    /// to fail when it is written.
    pub fn refuse_inside(&self, path: &Path, what: &str) -> Result<()> {
        let root = self.layout.root();
        match TargetPath::resolve(path) {
            Ok(resolved)
                if resolved.path.starts_with(root)
                    || in_store_by_identity(root, &resolved.path) =>
            {
                Err(Error::invalid(format!(
                    "cannot write {what} to {}: it is inside the store {}",
                    path.display(),
                    root.display()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Takes snapshot `id`'s lock (see [`Layout::lock`]); `key` names it
    /// in errors.
    fn lock(&self, id: i64, key: &str) -> Result<std::fs::File> {
        match self.layout.lock(id) {
            Ok(lock) => Ok(lock),
            // A symlink or a file in the directory's place (audit: it was
            // "removed by another process").
            Err(e) if layout::NotATree::of(&e).is_some() => Err(not_a_tree(
                format!("cannot lock snapshot `{key}`"),
                &self.layout.dir(id),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(replaced(key)),
            Err(e) => Err(Error::io(format!("cannot lock snapshot `{key}`"), e)),
        }
    }

    /// `row`'s lock, or None when another process removed it, or when a
    /// symlink or a file is in its directory's place: that has no lock to
    /// take, and removing it unlinks it, never following it (the review
    /// found such a snapshot could not be removed).
    fn lock_if_there(&self, row: &Row) -> Result<Option<std::fs::File>> {
        match self.lock(row.id, &row.name) {
            Ok(lock) => Ok(Some(lock)),
            Err(e) if e.kind() == Kind::NotFound => Ok(None),
            Err(_) if not_a_dir(&self.layout.dir(row.id)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The locks of `rows` still there, taken in id order (so two `rm -r`
    /// of overlapping trees cannot each wait for the other). A snapshot
    /// whose directory is gone was removed by another process (its row
    /// went first) and has no lock to take.
    fn lock_remaining(&self, rows: &[Row]) -> Result<Vec<std::fs::File>> {
        let mut rows: Vec<&Row> = rows.iter().collect();
        rows.sort_by_key(|r| r.id);
        let mut locks = Vec::with_capacity(rows.len());
        for row in rows {
            locks.extend(self.lock_if_there(row)?);
        }
        Ok(locks)
    }

    /// Mount records whose mounts still exist; records of mounts that are
    /// gone (unmounted by hand, lost in a reboot) are dropped.
    fn live_mounts(&mut self) -> Result<Vec<MountRecord>> {
        Ok(self.sort_mount_records(true)?.0)
    }

    /// The live ones of mount records already read (the stale ones are
    /// dropped from the index).
    fn live_among(&mut self, records: Vec<MountRecord>) -> Result<Vec<MountRecord>> {
        Ok(self.sort_these_records(records, true, None)?.0)
    }

    /// [`Store::live_among`] against `table`, the mount table the caller
    /// has just read for its own checks (one read of mountinfo, not two).
    fn live_among_in(
        &mut self,
        table: &mount::MountTable,
        records: Vec<MountRecord>,
    ) -> Result<Vec<MountRecord>> {
        Ok(self.sort_these_records(records, true, Some(table))?.0)
    }

    /// Mount records split into (live, stale) against /proc/self/mountinfo;
    /// with `drop_stale`, the stale ones are deleted from the index.
    fn sort_mount_records(
        &mut self,
        drop_stale: bool,
    ) -> Result<(Vec<MountRecord>, Vec<MountRecord>)> {
        let records = {
            let tx = self.index.read()?;
            index::mounts(&tx)?
        };
        self.sort_these_records(records, drop_stale, None)
    }

    /// [`Store::sort_mount_records`] of records already read, against
    /// `table` if given (else mountinfo read now).
    fn sort_these_records(
        &mut self,
        records: Vec<MountRecord>,
        drop_stale: bool,
        table: Option<&mount::MountTable>,
    ) -> Result<(Vec<MountRecord>, Vec<MountRecord>)> {
        let (live, stale) = live_and_stale(records, table)?;
        if drop_stale && !stale.is_empty() {
            // Judged again under the write lock, and only those dropped: a
            // target unmounted and mounted again since the first look has
            // a new record, which is live (audit: `prune` dropped the
            // record of a mount made in between, by its target, and
            // `unmount` and `rm` then no longer knew the mount).
            crash::point("mounts:judged");
            let tx = self.index.write()?;
            let (_, stale_now) = live_and_stale(index::mounts(&tx)?, None)?;
            for r in &stale_now {
                index::remove_mount(&tx, &r.target)?;
            }
            tx.commit()?;
            return Ok((live, stale_now));
        }
        Ok((live, stale))
    }

    /// Refuses to `op` snapshots `rows` (id, key) while a mount that strata
    /// did not record shows the own directory of one, as a tree of its own
    /// or as a layer of an overlay (a view's are all lower layers): one
    /// pasted from `strata mounts`, or one a `strata mount` killed before
    /// its record left. Committing would leave it writable on a committed
    /// layer, removing would delete what it shows. strata's own mounts are
    /// unmounted before this is asked, or are among `theirs` (their
    /// targets). `table` is read once by the caller (audit: `rm -r` read
    /// /proc/self/mountinfo again for each snapshot, 93 s for 10,000 of
    /// them with a 462 KB mount table).
    fn refuse_other_mounts<'k>(
        &self,
        table: &mount::MountTable,
        rows: impl IntoIterator<Item = (i64, &'k str)>,
        theirs: &[MountRecord],
        op: &str,
    ) -> Result<()> {
        let dirs = rows.into_iter().map(|(id, key)| (key, self.layout.fs(id)));
        let known: HashSet<&Path> = theirs.iter().map(|r| Path::new(&r.target)).collect();
        let Some((key, point)) = table.first_showing(dirs, &known) else {
            return Ok(());
        };
        Err(Error::precondition(format!(
            "cannot {op} `{key}`: it is mounted at {}, by a mount strata did not record",
            point.display()
        ))
        .with_hint(format!(
            "unmount it first (`umount {}`); a mount made from `strata mounts` or left by a killed `strata mount` is not strata's to undo",
            key::shell_quote(&point.to_string_lossy())
        )))
    }

    /// Refuses to `op` snapshots `rows` while another file system is
    /// mounted inside the directory of one (a bind mount made by hand in
    /// its tree). A removal would stop there, after the row was gone (the
    /// tree remover never deletes through a mount; audit: it did, and
    /// emptied the bind's source); a commit would count what that file
    /// system holds as the layer's usage and leave it mounted, writable,
    /// in a committed layer.
    ///
    /// Also inside one of strata's own mounts of them, `mounted`
    /// ([`mount_inside_ours`]), so every such refusal comes before
    /// any of those mounts is undone.
    fn refuse_mounts_inside(
        &mut self,
        table: &mount::MountTable,
        rows: &[Row],
        mounted: &[MountRecord],
        op: &str,
    ) -> Result<()> {
        // The store's root was made symlink-free when it was opened, as
        // mountinfo names paths.
        let snapshots = self.layout.snapshots();
        let ids: HashMap<i64, &str> = rows.iter().map(|r| (r.id, r.name.as_str())).collect();
        let (message, point) = match table.first_inside(snapshots, |id| ids.contains_key(&id)) {
            Some((id, point)) => {
                let message = format!(
                    "cannot {op} `{}`: a file system is mounted inside it, at {}",
                    ids[&id],
                    point.display()
                );
                (message, point.to_path_buf())
            }
            None => match mount_inside_ours(table, rows, mounted) {
                Some((key, inner, outer)) => {
                    let message = format!(
                        "cannot {op} `{key}`: a file system is mounted inside it, at {} (in strata's mount of it at {outer})",
                        inner.display()
                    );
                    (message, inner)
                }
                None => return Ok(()),
            },
        };
        let hint = self.unmount_first(&point);
        Err(Error::precondition(message).with_hint(hint))
    }

    /// The hint to undo the mount at `point` first: with `strata unmount`
    /// when it is strata's own (of another snapshot), which also forgets
    /// its record (review: `umount` left the record stale), else `umount`.
    fn unmount_first(&mut self, point: &Path) -> String {
        let strata_mount = self
            .read_mounts()
            .is_ok_and(|records| records.iter().any(|r| Path::new(&r.target) == point));
        let command = if strata_mount {
            "strata unmount"
        } else {
            "umount"
        };
        let point = key::shell_quote(&point.to_string_lossy());
        format!("unmount it first (`{command} {point}`)")
    }

    /// Turns active `key` into committed `name`, recording its usage.
    /// A mounted `key` is unmounted first.
    pub fn commit(&mut self, name: &str, key: &str, labels: &Labels) -> Result<()> {
        key::validate_key(name)?;
        for (k, v) in labels {
            key::validate_label(k, v)?;
        }
        let (row, records) = {
            let tx = self.index.read()?;
            let row = active(&tx, key, "commit")?;
            if index::find(&tx, name)?.is_some() {
                return Err(exists(name));
            }
            (row, index::mounts(&tx)?)
        };
        crash::point("commit:read");
        let _lock = self.lock(row.id, key)?;
        // Opened (for the usage walk and the sync) before anything is
        // changed: a tree that is not a directory is refused with its
        // mounts and their records kept (review: they were undone, and
        // nothing committed).
        let path = self.layout.fs(row.id);
        let tree = usage::open_tree(&path).map_err(|e| match layout::NotATree::of(&e) {
            Some(tree) => not_a_tree(format!("cannot commit `{key}`"), tree),
            None => Error::io(format!("cannot measure the disk usage of `{key}`"), e),
        })?;
        let table = mount_table()?;
        // Read before the lock: a `strata mount` that held it, recorded
        // since, would look like a mount strata did not record (as in
        // `rm`; its mount(2) came before its record, so the table shows it).
        let records = match shows_any(&table, &self.layout, std::slice::from_ref(&row)) {
            true => self.read_mounts()?,
            false => records,
        };
        let mounted: Vec<MountRecord> = self
            .live_among_in(&table, records)?
            .into_iter()
            .filter(|r| r.snapshot_id == row.id)
            .collect();
        // Refused before strata's own mounts are undone: a file system
        // mounted inside the snapshot's directory, or inside one of
        // strata's mounts of it (whose unmount would fail after others
        // were undone).
        self.refuse_other_mounts(&table, [(row.id, key)], &mounted, "commit")?;
        self.refuse_mounts_inside(&table, std::slice::from_ref(&row), &mounted, "commit")?;
        drop(table);
        for rec in &mounted {
            self.unmount_target(rec, false).map_err(|e| {
                Error::precondition(format!(
                    "cannot commit `{key}`: unmounting it from {} failed: {}",
                    rec.target,
                    e.message()
                ))
                .with_hint("close what uses the mount, then commit again")
            })?;
        }
        crash::point("commit:unmounted");
        let usage = usage::tree_usage(&tree, &path)
            .ctx(|| format!("cannot measure the disk usage of `{key}`"))?;
        crash::point("commit:measured");
        // Committed content must be on disk before the index says so.
        rustix::fs::syncfs(&*tree)
            .map_err(std::io::Error::from)
            .ctx(|| format!("cannot sync `{key}`"))?;
        drop(tree);
        let tx = self.index.write()?;
        let now = active(&tx, key, "commit")?;
        if now.id != row.id {
            return Err(Error::not_found(format!(
                "snapshot `{key}` was replaced while it was being committed"
            )));
        }
        if index::find(&tx, name)?.is_some() {
            return Err(exists(name));
        }
        // Under the lock no mount can start; one recorded before this
        // process took the lock shows here.
        if let Some(target) = index::mounted_at(&tx, row.id)? {
            return Err(mounted_meanwhile(key, &target));
        }
        index::commit(&tx, row.id, name, labels, usage.size, usage.inodes)?;
        crash::point("commit:row-updated");
        tx.commit()?;
        crash::point("commit:committed");
        // The work directory is only needed while the snapshot is writable.
        let _ = layout::remove_tree(&self.layout.work(row.id));
        crash::point("commit:work-removed");
        Ok(())
    }

    /// Removes `key`; with `recursive` its whole subtree (leaves first);
    /// with `force` unmounting what is mounted. Returns removed names.
    ///
    /// The subtree is read before its snapshots are locked, so a child made
    /// or committed under it in between shows only under the write lock:
    /// `rm -r` then starts over with the subtree as it is now (audit: it
    /// failed with "has 1 child … use rm -r", or said a child it had just
    /// seen committed was removed). A few times: processes that keep
    /// making children inside the subtree could starve it, and then what
    /// changed is said. A snapshot of it another process removed meanwhile
    /// is passed over (audit: `rm -r` failed with "was removed by another
    /// process"); if that took `key` too and this call removed nothing, it
    /// is `not_found`, as a plain `rm` that lost the race.
    ///
    /// A big subtree goes in batches (see [`Store::remove_once`]); an error
    /// after some were removed says so in a hint. A snapshot whose files
    /// cannot all be deleted once its row is gone does not stop the rest:
    /// the first such failure is the error once the rest is removed.
    pub fn remove(&mut self, key: &str, recursive: bool, force: bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        self.remove_into(key, recursive, force, &mut removed)?;
        Ok(removed)
    }

    /// [`Store::remove`], adding the names removed to `removed` also when
    /// it fails after some were (review: `rm -r base top` then said `top`
    /// was not found, when `base`'s removal had taken it and failed later,
    /// on files it could not delete).
    pub fn remove_into(
        &mut self,
        key: &str,
        recursive: bool,
        force: bool,
        removed: &mut Vec<String>,
    ) -> Result<()> {
        let mut done = Removed::default();
        let result = self.remove_all(key, recursive, force, &mut done);
        removed.extend(done.names.iter().cloned());
        result.and_then(|()| done.into_result(key))
    }

    /// The body of [`Store::remove_into`]; what it removes is in `done`.
    fn remove_all(
        &mut self,
        key: &str,
        recursive: bool,
        force: bool,
        done: &mut Removed,
    ) -> Result<()> {
        let mut tries = 1;
        let error = loop {
            match self.remove_once(key, recursive, force, tries > 1, done) {
                Ok(Removal::Done) if done.names.is_empty() => break replaced(key),
                Ok(Removal::Done) => return Ok(()),
                Ok(Removal::Changed(e)) if !recursive || tries == 5 => break e,
                Ok(Removal::Changed(_)) => tries += 1,
                Err(e) => break e,
            }
        };
        let error = match done.names.len() {
            0 => error,
            n => error.with_hint(format!(
                "{n} snapshot{} of the subtree of `{key}` (those built on others of it first) {} removed before this; the rest, `{key}` with it, is still there",
                if n == 1 { "" } else { "s" },
                if n == 1 { "was" } else { "were" },
            )),
        };
        Err(match done.leftovers.first() {
            Some(first) => error.with_hint(format!(
                "also, {}; `strata prune` deletes what is left of it",
                first.message()
            )),
            None => error,
        })
    }

    /// One attempt of [`Store::remove`] (`again`: not the first). The
    /// snapshots go in batches of [`rm_batch`], leaves first: each batch is
    /// locked, unmounted (with `force`), deleted in one transaction and
    /// discarded before the next (audit: `rm -r` of 1,100 snapshots held a
    /// lock, an open directory, on each, and failed under `ulimit -n
    /// 1024`). Before the first batch, the mounts of the whole subtree are
    /// looked at: a mounted snapshot anywhere in it refuses the `rm`
    /// (without `force`) before anything is removed. What is removed is
    /// added to `done`.
    fn remove_once(
        &mut self,
        key: &str,
        recursive: bool,
        force: bool,
        again: bool,
        done: &mut Removed,
    ) -> Result<Removal> {
        let (rows, records) = {
            let tx = self.index.read()?;
            let row = match index::find(&tx, key)? {
                Some(row) => row,
                // An earlier attempt saw it: another process removed it.
                None if again => return Ok(Removal::Done),
                None => return Err(missing(&tx, key, "snapshot")),
            };
            let children = index::children(&tx, row.id)?;
            if !children.is_empty() && !recursive {
                return Err(has_children(key, &children));
            }
            let rows = if recursive {
                index::subtree(&tx, row.id)?
            } else {
                vec![row]
            };
            (rows, index::mounts(&tx)?)
        };
        crash::point("rm:read");
        // A plain `rm` does not ask the limit.
        let batch = if rows.len() == 1 { 1 } else { rm_batch() };
        if rows.len() <= batch {
            return self.remove_batch(key, &rows, Some(records), force, done);
        }
        // The whole subtree, before any of it goes (each batch looks again
        // under its locks).
        self.refuse_subtree_mounts(key, &rows, records, force)?;
        for part in rows.chunks(batch) {
            // Each batch reads the mount records again once it holds its
            // locks: one recorded since the first look is unmounted too.
            if let changed @ Removal::Changed(_) =
                self.remove_batch(key, part, None, force, done)?
            {
                return Ok(changed);
            }
        }
        Ok(Removal::Done)
    }

    /// Refuses `rm -r` of `rows` (a whole subtree, `records` the mount
    /// records read with it) before any of it is removed, when one of them
    /// is mounted: by strata (without `force`; in another mount namespace,
    /// with it too), or by a mount strata did not record, or has a file
    /// system mounted inside. strata's own mounts (`force`) are left to
    /// the batches to unmount.
    ///
    /// A mount found unrecorded may be a `strata mount` between its
    /// mount(2) and its record, which holds the snapshot's lock all along:
    /// that lock is taken (waiting for the mount to finish) and let go,
    /// and the records and the mount table read again, once per
    /// snapshot (audit: `rm -r -f` refused such a mount as one strata did
    /// not record, 4 runs of 12).
    fn refuse_subtree_mounts(
        &mut self,
        key: &str,
        rows: &[Row],
        mut records: Vec<MountRecord>,
        force: bool,
    ) -> Result<()> {
        let mut waited = HashSet::new();
        loop {
            let table = mount_table()?;
            let mounted = self.mounted_among(key, &table, rows, records, force)?;
            let known: HashSet<&Path> = mounted.iter().map(|r| Path::new(&r.target)).collect();
            let dirs = rows.iter().map(|r| (r, self.layout.fs(r.id)));
            match table.first_showing(dirs, &known) {
                Some((row, _)) if waited.insert(row.id) => {
                    crash::point("rm:unrecorded-mount");
                    // Taken only to wait for a mount in progress (which
                    // records before it lets go), then let go at once:
                    // holding it while waiting for another snapshot's lock
                    // would take locks out of id order, and an `rm` taking
                    // them in order could then wait for this one forever
                    // (review: two `rm -r -f` hung).
                    drop(self.lock_if_there(row)?);
                    records = self.read_mounts()?;
                }
                _ => {
                    let rows_named = rows.iter().map(|r| (r.id, &*r.name));
                    self.refuse_other_mounts(&table, rows_named, &mounted, "remove")?;
                    return self.refuse_mounts_inside(&table, rows, &mounted, "remove");
                }
            }
        }
    }

    /// Removes `rows`, which hold every snapshot built on one of them
    /// (leaves first), in one transaction; `records` are the mount records
    /// read with them (None: read once the rows are locked). Those another
    /// process removed meanwhile are passed over; what is removed here is
    /// added to `done`.
    fn remove_batch(
        &mut self,
        key: &str,
        rows: &[Row],
        records: Option<Vec<MountRecord>>,
        force: bool,
        done: &mut Removed,
    ) -> Result<Removal> {
        let _locks = self.lock_remaining(rows)?;
        let table = mount_table()?;
        let records = match records {
            // Read before the locks: a `strata mount` that held one of
            // them, recorded since, would look like a mount strata did not
            // record (its mount(2) came before its record, so the table
            // read now shows it either way).
            Some(_) if shows_any(&table, &self.layout, rows) => self.read_mounts()?,
            Some(records) => records,
            None => self.read_mounts()?,
        };
        let mounted = self.mounted_among(key, &table, rows, records, force)?;
        // Every refusal before any unmount: `rm -f` refused for a mount
        // strata did not record leaves strata's own mounts as they were
        // (audit: they were undone first).
        let rows_named = rows.iter().map(|r| (r.id, &*r.name));
        self.refuse_other_mounts(&table, rows_named, &mounted, "remove")?;
        self.refuse_mounts_inside(&table, rows, &mounted, "remove")?;
        drop(table);
        for rec in &mounted {
            self.unmount_target(rec, false)
                .map_err(|e| unmount_failed(rows, rec, key, e))?;
        }
        let names: HashSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let mut deleted = Vec::with_capacity(rows.len());
        self.layout
            .may_discard()
            .map_err(|e| files_kept(rows, key, self.layout.snapshots(), e))?;
        let tx = self.index.write()?;
        for row in rows {
            match index::find_id(&tx, row.id)? {
                Some(now) if now.name == row.name => {}
                Some(now) => {
                    return Ok(Removal::Changed(Error::not_found(format!(
                        "snapshot `{}` was committed as `{}` by another process",
                        row.name, now.name
                    ))));
                }
                // Removed by another process: what this one was to do.
                None => continue,
            }
            // Its children in the subtree came before it: in this batch,
            // or removed with an earlier one.
            let outside: Vec<String> = index::children(&tx, row.id)?
                .into_iter()
                .filter(|c| !names.contains(c.as_str()))
                .collect();
            if !outside.is_empty() {
                return Ok(Removal::Changed(has_children(&row.name, &outside)));
            }
            if let Some(target) = index::mounted_at(&tx, row.id)? {
                return Err(mounted_meanwhile(&row.name, &target));
            }
            index::delete(&tx, row.id)?;
            crash::point("rm:row-deleted");
            deleted.push(row);
        }
        tx.commit()?;
        crash::point("rm:committed");
        // Each one's files, also after one that fails: their rows are gone
        // (audit: the rest of the batch was left as row-less directories).
        for row in deleted {
            if let Err(e) = self.layout.discard(row.id) {
                done.leftovers.push(files_left(&row.name, e));
            }
            crash::point("rm:files-deleted");
            done.names.push(row.name.clone());
        }
        Ok(Removal::Done)
    }

    /// strata's live mounts of `rows` among `records`, which `rm` is to
    /// undo; refused (before any is undone) without `force`, or when one
    /// is in another mount namespace.
    fn mounted_among(
        &mut self,
        key: &str,
        table: &mount::MountTable,
        rows: &[Row],
        records: Vec<MountRecord>,
        force: bool,
    ) -> Result<Vec<MountRecord>> {
        let ids: HashSet<i64> = rows.iter().map(|r| r.id).collect();
        let mounted: Vec<MountRecord> = self
            .live_among_in(table, records)?
            .into_iter()
            .filter(|r| ids.contains(&r.snapshot_id))
            .collect();
        refuse_foreign_mounts(rows, &mounted)?;
        match mounted.first() {
            Some(first) if !force => Err(mounted_error(rows, first, key)),
            _ => Ok(mounted),
        }
    }

    /// The mount records, as the index has them now.
    fn read_mounts(&mut self) -> Result<Vec<MountRecord>> {
        let tx = self.index.read()?;
        index::mounts(&tx)
    }

    /// Every snapshot, in byte order of names.
    pub fn list(&mut self) -> Result<Vec<Info>> {
        let live = self.live_mounts()?;
        let tx = self.index.read()?;
        let rows = index::all(&tx)?;
        let mut labels = index::all_labels(&tx)?;
        let mut mounted = mounted_by_id(&live);
        Ok(rows
            .into_iter()
            .map(|row| {
                let labels = take(&mut labels, row.id);
                let at = take(&mut mounted, row.id);
                info(row, labels, at)
            })
            .collect())
    }

    /// One snapshot's details.
    pub fn stat(&mut self, key: &str) -> Result<Info> {
        // One read for the row, its labels and the mount records.
        let (row, labels, records) = {
            let tx = self.index.read()?;
            let row = existing(&tx, key)?;
            let labels = index::labels(&tx, row.id)?;
            (row, labels, index::mounts(&tx)?)
        };
        self.info_with_mounts(row, labels, records)
    }

    /// The details of `row`, mounted where the live ones of `records` say
    /// (the stale ones are dropped from the index).
    fn info_with_mounts(
        &mut self,
        row: Row,
        labels: Labels,
        records: Vec<MountRecord>,
    ) -> Result<Info> {
        let live = self.live_among(records)?;
        let at = mounted_by_id(&live).remove(&row.id).unwrap_or_default();
        Ok(info(row, labels, at))
    }

    /// The kind of snapshot `key`, if there is one: one indexed lookup, for
    /// callers that need no more of it (no labels, no mount records).
    pub fn kind_of(&mut self, key: &str) -> Result<Option<SnapshotKind>> {
        let tx = self.index.read()?;
        Ok(index::find(&tx, key)?.map(|row| row.kind))
    }

    /// Whether anything (a committed snapshot, an active, a view) is built
    /// on `key`: what makes [`Store::remove`] refuse it, asked without
    /// removing (one indexed lookup).
    pub fn has_children(&mut self, key: &str) -> Result<bool> {
        let tx = self.index.read()?;
        let row = existing(&tx, key)?;
        index::has_children(&tx, row.id)
    }

    /// Sets labels of `key`; an empty value removes a label.
    pub fn update_labels(&mut self, key: &str, changes: &Labels) -> Result<Info> {
        for (k, v) in changes {
            key::validate_label(k, v)?;
        }
        // The result is read in the same transaction, after the change.
        let (row, labels, records) = {
            let tx = self.index.write()?;
            let row = existing(&tx, key)?;
            index::update_labels(&tx, row.id, changes)?;
            crash::point("label:updated");
            let row = existing(&tx, key)?;
            let labels = index::labels(&tx, row.id)?;
            let records = index::mounts(&tx)?;
            tx.commit()?;
            crash::point("label:committed");
            (row, labels, records)
        };
        self.info_with_mounts(row, labels, records)
    }

    /// Whether the driver can mount a snapshot made on `parent`: its chain
    /// of layers is within what the driver stacks.
    pub fn can_stack_on(&mut self, parent: &str) -> Result<bool> {
        let tx = self.index.read()?;
        let row = existing(&tx, parent)?;
        let chain = index::layers_on(&tx, Some(row.id))?;
        Ok(read_driver(&tx)?.is_none_or(|d| d.check_depth(chain.len()).is_ok()))
    }

    /// Disk usage of `key`: recorded at commit for a committed snapshot,
    /// measured for an active one (its own layer only), zero for a view.
    pub fn usage(&mut self, key: &str) -> Result<Usage> {
        let (row, driver) = {
            let tx = self.index.read()?;
            (existing(&tx, key)?, read_driver(&tx)?)
        };
        usage_of(&self.layout, driver, &row, None)
    }

    /// Usage of every snapshot, in byte order of names. Committed ones are
    /// an index read; active ones are walked, several at once. `measured`
    /// is called (from the walking threads) each time a snapshot is done.
    pub fn usage_all(&mut self, measured: &(dyn Fn() + Sync)) -> Result<Vec<(String, Usage)>> {
        let (rows, driver) = {
            let tx = self.index.read()?;
            (index::all_own(&tx)?, read_driver(&tx)?)
        };
        crash::point("usage:listed");
        let workers = std::thread::available_parallelism()
            .map(|n| n.get().min(4))
            .unwrap_or(2);
        let layout = &self.layout;
        // Actives are measured relative to the snapshots directory, opened once.
        let snapshots = rustix::fs::open(
            layout.snapshots(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .ctx(|| format!("cannot open {}", layout.snapshots().display()))?;
        let snapshots = snapshots.as_fd();
        let results = parallel::run(
            vec![(); workers],
            rows.len(),
            |_, i| {
                let usage = usage_of(layout, driver, &rows[i], Some(snapshots));
                measured();
                crash::point("usage:measured");
                usage
            },
            |_| false,
        );
        let mut out = Vec::with_capacity(rows.len());
        for (row, r) in rows.into_iter().zip(results) {
            match r.unwrap_or_else(|| Err(Error::internal("a usage worker failed"))) {
                Ok(usage) => out.push((row.name, usage)),
                // An active that another process removed while it was
                // measured is left out, as if listed after the removal; one
                // still in the index has lost its directory, which is an
                // error (`check` says more).
                Err(e) if e.kind() == Kind::NotFound && self.is_gone(row.id)? => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Whether snapshot `id` is no longer in the index.
    fn is_gone(&mut self, id: i64) -> Result<bool> {
        let tx = self.index.read()?;
        Ok(index::find_id(&tx, id)?.is_none())
    }
}

/// Disk usage of one snapshot: recorded at commit for a committed one,
/// measured for an active one (its own layer only), zero for a view.
/// `snapshots`, when given, is the open snapshots directory.
fn usage_of(
    layout: &Layout,
    driver: Option<Driver>,
    row: &Row,
    snapshots: Option<BorrowedFd<'_>>,
) -> Result<Usage> {
    let tree = layout.fs(row.id);
    let measured = || {
        // Relative to the open snapshots directory when there is one.
        let rel = Layout::fs_under_snapshots(row.id);
        let (base, at) = match snapshots {
            Some(dir) => (dir, rel.as_path()),
            None => (rustix::fs::CWD, tree.as_path()),
        };
        if driver.is_some_and(|d| starts_empty(d, row.parent_id.is_some()))
            && let Some(u) = untouched_usage(base, at, row.created)
        {
            return Ok(u);
        }
        usage::disk_usage_at(base, at, &tree)
    };
    match row.kind {
        SnapshotKind::Committed => Ok(row.recorded_usage().unwrap_or_default()),
        SnapshotKind::View => Ok(Usage::default()),
        SnapshotKind::Active => match measured() {
            // Removed by another process meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found(format!(
                "snapshot `{}` was removed while being measured",
                row.name
            ))),
            other => other.ctx(|| format!("cannot measure the disk usage of `{}`", row.name)),
        },
    }
}

/// Whether an active snapshot of this driver starts with an empty tree: an
/// overlay upper directory always does; a native one only without a parent
/// (otherwise it starts as a copy of the parent).
fn starts_empty(driver: Driver, has_parent: bool) -> bool {
    driver == Driver::Overlay || !has_parent
}

/// The usage of an active tree that is still exactly as it was made, found
/// with one `stat` instead of a walk; `None` when it must be walked.
///
/// An empty active's root gets `created` (to the nanosecond) as its mtime
/// when it is made. Adding, removing or renaming any entry in a directory
/// sets its mtime to the current time, so while the root's mtime still
/// equals `created` the root has no entries and the tree is that one
/// directory. Only an explicit `touch -d` to that very nanosecond defeats
/// this; a file system that keeps coarser times never matches (the stored
/// mtime is rounded), and neither does a `created` of a whole second.
fn untouched_usage(base: BorrowedFd<'_>, rel: &Path, created: Timestamp) -> Option<Usage> {
    let (secs, nanos) = created.split();
    if nanos == 0 {
        return None;
    }
    let st = rustix::fs::statat(base, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
    (is_dir && st.st_mtime as i64 == secs && st.st_mtime_nsec as i64 == i64::from(nanos)).then(
        || Usage {
            size: st.st_blocks as u64 * 512,
            inodes: 1,
        },
    )
}

/// Whether mount target `target` is in store `root` or is the store or a
/// directory above it, by identity (device and inode) rather than by name:
/// a bind mount of the store (or of a directory above it) names the same
/// directories by other paths, and a mount there covers the store's own
/// (audit: `mount v ALIAS/snapshots`, with `/` shared, covered the store's
/// `snapshots/`). Paths that cannot be read are passed over: the name check
/// and the mount itself judge them.
fn reaches_by_identity(root: &Path, target: &Path) -> bool {
    in_store_within_file_system(root, target, true).unwrap_or_else(|| {
        // Above it: the target is one of the store's ancestors.
        store_on_the_way(root, target)
            || identity(target)
                .is_some_and(|t| root.ancestors().skip(1).any(|a| identity(a) == Some(t)))
    })
}

/// Whether `path` is in store `root` by identity (see
/// [`reaches_by_identity`]).
fn in_store_by_identity(root: &Path, path: &Path) -> bool {
    in_store_within_file_system(root, path, false).unwrap_or_else(|| store_on_the_way(root, path))
}

/// Whether the store's directory is `path` or one of its ancestors, by
/// device and inode: where mountinfo cannot tell (see
/// [`in_store_within_file_system`]).
fn store_on_the_way(root: &Path, path: &Path) -> bool {
    identity(root).is_some_and(|store| path.ancestors().any(|a| identity(a) == Some(store)))
}

/// Whether `path` (which may not exist yet) is in store `root`, or with
/// `or_above` is the store or a directory above it, by where both are
/// within their file system (see [`mount::MountTable::within_file_system`]):
/// a bind mount of any directory of the store, `snapshots/` or a tree as
/// well as the store itself, names it by another path (review: a mount at
/// a bind of `snapshots/` covered it). None where that cannot be told (no
/// mount ids, an unreadable mount table); the caller then compares
/// identities.
fn in_store_within_file_system(root: &Path, path: &Path, or_above: bool) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let mut existing = path;
    let mut below = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        below.push(existing.file_name()?);
        existing = existing.parent()?;
    }
    let table = mount::MountTable::read().ok()?;
    let dev = |p: &Path| std::fs::metadata(p).ok().map(|m| m.dev());
    if dev(existing)? != dev(root)? {
        return Some(false);
    }
    let store = table.within_file_system(root)?;
    let mut at = table.within_file_system(existing)?;
    at.extend(below.iter().rev());
    Some(at.starts_with(&store) || (or_above && below.is_empty() && store.starts_with(&at)))
}

/// A directory's device and inode, if it can be read.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The user who ran `sudo`, trusted by root as the owner of a store and
/// of the directories above it.
fn sudo_uid() -> Option<u32> {
    std::env::var("SUDO_UID").ok()?.parse().ok()
}

/// Whether the process is root in a user namespace other than the
/// first, where it has only its user's powers.
fn rootless() -> bool {
    mount::in_user_namespace()
}

/// The process's effective uid, asked of the kernel once.
pub fn euid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// Refuses root the store at `root` when one of `dirs` (the store, the
/// directories above it, its `snapshots/`) could be changed by a user other
/// than root (or the `sudo` user): owned by one, or writable by group or
/// others without the sticky bit (the rule OpenSSH and sudo apply to the
/// files they trust). Such a user could rename a directory on the way and
/// put a symlink in its place while root works (review: root's `prepare`
/// in a store under a user's directory wrote into a directory outside the
/// store). One `lstat` each; a directory not there is not judged.
fn refuse_unsafe_way<'a>(root: &Path, dirs: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let trusted = sudo_uid();
    for dir in dirs {
        let Ok(link) = std::fs::symlink_metadata(dir) else {
            continue;
        };
        // A symlink (a `snapshots/` on another disk) by its owner, then by
        // the directory it leads to (review: "mode 777", the link's own).
        let meta = match link.file_type().is_symlink() {
            true if link.uid() == 0 || Some(link.uid()) == trusted => {
                match std::fs::metadata(dir) {
                    Ok(meta) => meta,
                    Err(_) => continue,
                }
            }
            _ => link,
        };
        let owner = meta.uid();
        let why = if owner != 0 && Some(owner) != trusted {
            format!("{} belongs to another user (uid {owner})", dir.display())
        } else if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            format!(
                "{} may be changed by other users (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            )
        } else {
            continue;
        };
        // Root in a user namespace of its own has no more power than the
        // user it maps to, and every file it does not map shows as owned
        // by the overflow uid (review: every store was refused). Asked only
        // here, where it would refuse.
        if rootless() {
            return Ok(());
        }
        return Err(Error::precondition(format!(
            "root uses the store {} only where no other user can change the way to it: {why}",
            root.display()
        ))
        .with_hint(
            "use a store under directories only root may change (as /var/lib/strata), or run strata as that user, or through sudo from that user's account (SUDO_UID is trusted, as git does)",
        ));
    }
    Ok(())
}

/// Refuses a store path that is not UTF-8 or too long, before anything is
/// made there. Not UTF-8: mount options, printed mount lines and JSON name its directories as
/// text, and a lossy name is another path (audit: `mount` failed with a
/// bare ENOENT, `mounts` printed a path that does not exist with exit 0,
/// and the overlay test mount failed, so the store was made native).
fn refuse_unusable_root(root: &Path) -> Result<()> {
    let Some(text) = root.to_str() else {
        return Err(
            Error::invalid(format!("the store path {} is not UTF-8", root.display())).with_hint(
                "mounts name the store's directories as text: use a UTF-8 path for --root",
            ),
        );
    };
    // Checked before anything is made: past it, `mkdir -p` would make the
    // directories above the store and then fail on the store itself.
    if text.len() > MAX_ROOT_LEN {
        return Err(Error::invalid(format!(
            "the store path {} is too long: {} bytes, at most {MAX_ROOT_LEN}",
            key::shorten(text),
            text.len()
        ))
        .with_hint("SQLite opens files by paths of at most 512 bytes: use a shorter --root"));
    }
    Ok(())
}

/// Refuses store `root` (`found`, its metadata) when it, or a path above
/// it, is there but not a directory: `invalid`, as such a mount target
/// is, naming that path (audit: `STRATA_ROOT=/a/file/x` said "File exists
/// (os error 17)", from `mkdir -p`).
fn refuse_non_directory(root: &Path, found: &std::io::Result<std::fs::Metadata>) -> Result<()> {
    let not_a_dir = match found {
        Ok(m) if !m.is_dir() => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            let mut above = root.ancestors().skip(1);
            match above.find(|p| std::fs::metadata(p).is_ok()) {
                Some(p) if !p.is_dir() => p,
                _ => return Ok(()),
            }
        }
        _ => return Ok(()),
    };
    let what = if not_a_dir == root {
        "it is not a directory".to_string()
    } else {
        format!("{} is not a directory", not_a_dir.display())
    };
    Err(
        Error::invalid(format!("cannot use the store {}: {what}", root.display()))
            .with_hint("give --root or STRATA_ROOT a directory, or a path to make one at"),
    )
}

/// The longest store path: SQLite's unix VFS takes paths of at most 512
/// bytes (`MAX_PATHNAME`, fixed in its source), and the longest it opens is
/// the journal's. A longer root failed with "unable to open database file"
/// after making the directories (measured: 495 bytes work, 496 do not).
const MAX_ROOT_LEN: usize = 512 - "/index.db-journal".len();

/// How far [`usable_target`] judges a target beyond its name.
#[derive(Clone, Copy, PartialEq)]
enum Judge {
    /// Its directory by identity, in the store (a bind of it).
    Directory,
    /// Itself by identity, in the store or above it.
    Identity,
}

/// Refuses a mount target that is not UTF-8 (its record, `ls` and JSON
/// name it as text), or is inside store `root` (it would cover
/// snapshots), the store itself or a directory above it (it would hide
/// the store from every later command): by name, and as `judge` says by
/// identity (see [`reaches_by_identity`]).
fn usable_target(root: &Path, key: &str, target: &Path, judge: Judge) -> Result<()> {
    if target.to_str().is_none() {
        return Err(Error::invalid(format!(
            "cannot mount `{key}` at {}: the target's path is not UTF-8",
            target.display()
        )));
    }
    let by_name = target.starts_with(root) || root.starts_with(target);
    let by_identity = match judge {
        Judge::Directory => target
            .parent()
            .is_some_and(|dir| in_store_by_identity(root, dir)),
        Judge::Identity => reaches_by_identity(root, target),
    };
    if by_name || by_identity {
        return Err(Error::invalid(format!(
            "cannot mount `{key}` at {}: the target must be outside the store {}, and not above it{}",
            target.display(),
            root.display(),
            if by_name {
                ""
            } else {
                " (it is there under another name: a bind mount of the store or above it)"
            }
        )));
    }
    Ok(())
}

/// The hint for a `snapshots/` directory that is missing or bare while the
/// index lists snapshots: mount its disk, or, the snapshots lost, `then`
/// (what to do) with `strata rm -r`.
fn snapshots_lost_hint(snapshots: &Path, then: &str) -> String {
    format!(
        "if {} is on a file system not mounted yet, mount it; if the snapshots are lost, {then} with `strata rm -r`",
        snapshots.display()
    )
}

fn read_driver(tx: &Transaction<'_>) -> Result<Option<Driver>> {
    match index::get_meta(tx, DRIVER_META)? {
        None => Ok(None),
        Some(text) => Driver::parse(&text).map(Some).ok_or_else(|| {
            Error::internal(format!("the store records an unknown driver `{text}`"))
        }),
    }
}

fn info(row: Row, labels: Labels, mounted_at: Vec<String>) -> Info {
    let usage = row.recorded_usage();
    Info {
        name: row.name,
        kind: row.kind,
        parent: row.parent,
        labels,
        created: row.created,
        updated: row.updated,
        usage,
        mounted_at,
    }
}

/// `map`'s entry for `id`, taken out, or an empty one. An empty map (most
/// stores have few labels and mounts) is not hashed into for each row.
fn take<V: Default>(map: &mut HashMap<i64, V>, id: i64) -> V {
    if map.is_empty() {
        return V::default();
    }
    map.remove(&id).unwrap_or_default()
}

fn mounted_by_id(records: &[MountRecord]) -> HashMap<i64, Vec<String>> {
    let mut map: HashMap<i64, Vec<String>> = HashMap::new();
    for r in records {
        map.entry(r.snapshot_id).or_default().push(r.target.clone());
    }
    map
}

fn exists(key: &str) -> Error {
    Error::already_exists(format!("snapshot `{key}` already exists"))
}

/// What [`Store::remove`] has done so far.
#[derive(Default)]
struct Removed {
    /// The snapshots removed, in order.
    names: Vec<String>,
    /// One error for each snapshot removed whose files could not all be
    /// deleted.
    leftovers: Vec<Error>,
}

impl Removed {
    /// The result of a removal of `key` that went to the end.
    fn into_result(self, key: &str) -> Result<()> {
        let n = self.names.len();
        let mut leftovers = self.leftovers.into_iter();
        let Some(first) = leftovers.next() else {
            return Ok(());
        };
        let more = leftovers.count();
        Err(match (n, more) {
            (1, _) => first,
            (n, 0) => first.with_hint(format!(
                "the other {} snapshot{} of the subtree of `{key}` went with it",
                n - 1,
                if n == 2 { "" } else { "s" }
            )),
            (n, more) => first.with_hint(format!(
                "all {n} snapshots of the subtree of `{key}` were removed; {more} more left files behind (`strata prune` lists them)"
            )),
        })
    }
}

/// The error of an `rm` of `key` refused before any of `rows` went, for
/// their files could not be moved out of `snapshots`.
fn files_kept(rows: &[Row], key: &str, snapshots: &Path, e: std::io::Error) -> Error {
    let name = rows.first().map_or(key, |r| r.name.as_str());
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) => format!(
            "{} is immutable or append-only (`lsattr -d` shows it): take that off with `chattr -i -a`",
            snapshots.display()
        ),
        _ => format!(
            "the store's snapshots/ directory must be writable to remove a snapshot: run as its owner ({})",
            snapshots.display()
        ),
    };
    Error::io(
        format!(
            "cannot remove `{name}`: its files cannot be moved out of {}",
            snapshots.display()
        ),
        e,
    )
    .with_hint(hint)
}

/// The error of snapshot `name`, removed from the index, whose files could
/// not all be deleted (`e`): what is left is an `rm-*` directory, or its
/// own without a row, which `prune` deletes once what refused is fixed.
fn files_left(name: &str, e: std::io::Error) -> Error {
    let hint = match remover::held_by_attribute(&e) {
        Some(path) => format!(
            "{} is immutable or append-only (`lsattr -d` shows it): take that off with `chattr -i -a`, then `strata prune` deletes what is left of the snapshot",
            path.display()
        ),
        None => "`strata prune` deletes what is left of it once what refused is fixed".into(),
    };
    Error::io(
        format!("snapshot `{name}` was removed, but deleting its files failed"),
        e,
    )
    .with_hint(hint)
}

/// How one attempt of [`Store::remove`] ended.
enum Removal {
    /// What there was to remove is gone.
    Done,
    /// The subtree changed between its reading and the write lock: the
    /// error to give if it is not read again.
    Changed(Error),
}

fn has_children(key: &str, children: &[String]) -> Error {
    let n = children.len();
    Error::precondition(format!(
        "snapshot `{key}` has {n} {}: {}",
        if n == 1 { "child" } else { "children" },
        children
            .iter()
            .take(5)
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
            + if n > 5 { ", …" } else { "" }
    ))
    .with_hint(match n {
        1 => "remove it first, or use `rm -r`",
        _ => "remove them first, or use `rm -r`",
    })
}

/// A snapshot that must exist.
pub(crate) fn existing(tx: &Transaction<'_>, key: &str) -> Result<Row> {
    match index::find(tx, key)? {
        Some(row) => Ok(row),
        None => Err(missing(tx, key, "snapshot")),
    }
}

/// A not-found error, with a "did you mean" hint for a near-miss key; an
/// `invalid` one for a key that no snapshot could have (checked only here,
/// so a lookup that finds its row pays nothing for it).
fn missing(tx: &Transaction<'_>, key: &str, what: &str) -> Error {
    if let Err(invalid) = key::validate_key(key) {
        return invalid;
    }
    let err = Error::not_found(format!("{what} `{key}` does not exist"));
    let Ok(rows) = index::all(tx) else {
        return err;
    };
    let best = rows
        .iter()
        .map(|r| (edit_distance(key, &r.name), &r.name))
        // A third of the longer name may differ: none of a one- or
        // two-letter name (audit: `d` was "did you mean `b`?").
        .filter(|(d, name)| *d <= key.chars().count().max(name.chars().count()) / 3)
        .min();
    match best {
        Some((_, name)) => err.with_hint(format!("did you mean `{name}`?")),
        None => err,
    }
}

/// A parent that must exist and be committed.
pub(crate) fn committed_parent(tx: &Transaction<'_>, name: &str) -> Result<Row> {
    let row = match index::find(tx, name)? {
        Some(row) => row,
        None => return Err(missing(tx, name, "parent snapshot")),
    };
    if row.kind != SnapshotKind::Committed {
        let err = Error::invalid(format!(
            "parent snapshot `{name}` is {}, not committed",
            article(row.kind)
        ));
        return Err(err.with_hint(format!(
            "only committed snapshots can be parents; {}",
            to_commit(row.kind, name)
        )));
    }
    Ok(row)
}

/// What to do with snapshot `key` of `kind` where a committed one is
/// needed: commit an active one; a view cannot be committed, and what it
/// shows is its parent.
pub(crate) fn to_commit(kind: SnapshotKind, key: &str) -> String {
    match kind {
        SnapshotKind::View => "a view cannot be committed, so use the view's parent".into(),
        _ => format!("commit it first: strata commit NAME {key}"),
    }
}

/// Checks that parent `name` is still the snapshot `id` it was when a
/// create started.
fn same_parent(tx: &Transaction<'_>, id: i64, name: &str, key: &str) -> Result<()> {
    match index::find(tx, name)? {
        Some(now) if now.id == id => Ok(()),
        _ => Err(Error::not_found(format!(
            "parent snapshot `{name}` was removed while `{key}` was being made"
        ))),
    }
}

/// A snapshot that must be active (for commit).
fn active(tx: &Transaction<'_>, key: &str, op: &str) -> Result<Row> {
    let row = existing(tx, key)?;
    if row.kind != SnapshotKind::Active {
        return Err(Error::precondition(format!(
            "cannot {op} `{key}`: it is {}, not active",
            article(row.kind)
        )));
    }
    Ok(row)
}

/// A snapshot that has mounts: an active one or a view.
fn mountable(tx: &Transaction<'_>, key: &str) -> Result<Row> {
    let row = existing(tx, key)?;
    if row.kind == SnapshotKind::Committed {
        return Err(Error::precondition(format!(
            "snapshot `{key}` is committed and has no mounts of its own"
        ))
        .with_hint(format!("mount a view of it: strata view VIEW {key}")));
    }
    Ok(row)
}

/// The first file system mounted inside one of strata's mounts
/// `mounted` of `rows`: the snapshot's key, where it is, and strata's
/// mount it is in. A commit or removal is refused while there is one: the
/// unmount of that mount would refuse (see [`Store::unmount_target`]),
/// after the mounts before it were undone (audit: a native snapshot
/// mounted twice lost its first mount, and the error's hint said to close
/// what uses the mount; `rm -f` the same, review).
fn mount_inside_ours<'a>(
    table: &mount::MountTable,
    rows: &'a [Row],
    mounted: &'a [MountRecord],
) -> Option<(&'a str, PathBuf, &'a str)> {
    // One of another mount namespace is not in `table`: its unmount
    // refuses on its own, and no mount of this one is inside it.
    let own = mount::own_namespace();
    for rec in mounted.iter().filter(|r| foreign(r, own).is_none()) {
        let Some(ours) = rec.mount_id else { continue };
        if let Some(inner) = table.inside(ours).first() {
            let key = rows
                .iter()
                .find(|r| r.id == rec.snapshot_id)
                .map_or("", |r| r.name.as_str());
            return Some((key, inner.clone(), rec.target.as_str()));
        }
    }
    None
}

fn mounted_meanwhile(key: &str, target: &str) -> Error {
    Error::precondition(format!(
        "snapshot `{key}` was mounted at {target} by another process meanwhile; nothing was changed"
    ))
    .with_hint(format!(
        "unmount it (`strata unmount {}`) and try again",
        key::shell_quote(target)
    ))
}

/// /proc/self/mountinfo, read.
fn mount_table() -> Result<mount::MountTable> {
    mount::MountTable::read().ctx(|| "cannot read /proc/self/mountinfo".into())
}

/// Raises this process's soft limit on open files to its hard limit, as
/// Go's runtime does for every program (and so `ctr` and containerd): the
/// soft limit is kept low (often 1,024) for programs that use `select`,
/// which strata does not. For the commands that hold many files at once
/// (`rm`, `prune`, `check`), not for every command: it costs two system
/// calls, and a short command's start is counted (docs/benchmarks.md).
/// strata starts no other program from these commands, so none inherits
/// the raised limit. A failure leaves the limit as it was: the batches
/// are sized by the limit in force.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

/// Open files a batch of locks leaves, besides the tree remover's
/// directories: standard streams, the index and its journal files, the
/// mount table and namespace files being read, with room to spare (a
/// `rm -r` of deep trees needs about 6 beside its locks and the remover's).
const RESERVED_FILES: usize = 16;

/// How many snapshots a batch of `rm -r`, `prune` or `check` locks at once
/// (each lock is an open directory, held until its snapshot is gone): a
/// quarter of the soft limit on open files, the rest left for deleting and
/// measuring them and for the index, within `min..=max`; but never more
/// than leaves room for the remover's directories and the reserve, so
/// under a tiny limit a batch is smaller than `min`, down to 1 (audit:
/// batches of 16 under `ulimit -n 32` failed with "No file descriptors
/// available" after some were removed).
pub(crate) fn lock_batch(min: usize, max: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    batch_within(limit, min, max)
}

/// [`lock_batch`] under a soft limit of `limit` open files.
fn batch_within(limit: usize, min: usize, max: usize) -> usize {
    let room = limit.saturating_sub(remover::OPEN + RESERVED_FILES).max(1);
    (limit / 4).clamp(min, max).min(room)
}

/// How many snapshots `rm -r` removes at a time: 256 under the usual
/// `ulimit -n 1024` (which `rm` raises to the hard limit), 16 or more
/// unless the limit is tiny. A batch is a transaction and a read of the
/// mount table: bigger ones save little.
fn rm_batch() -> usize {
    lock_batch(16, 256)
}

/// Whether a mount shows the own directory of one of `rows` (strata's
/// or not).
fn shows_any(table: &mount::MountTable, layout: &Layout, rows: &[Row]) -> bool {
    let dirs = rows.iter().map(|r| ((), layout.fs(r.id)));
    table.first_showing(dirs, &HashSet::new()).is_some()
}

/// The error of `rm -f` of `rows` when undoing `rec` failed (busy): it
/// names the snapshot, as the error of `commit` does (audit: "cannot
/// unmount T: it is busy" said nothing of what was being removed).
fn unmount_failed(rows: &[Row], rec: &MountRecord, key: &str, e: Error) -> Error {
    let name = rows
        .iter()
        .find(|r| r.id == rec.snapshot_id)
        .map(|r| r.name.as_str())
        .unwrap_or(key);
    let err = Error::precondition(format!(
        "cannot remove `{name}`: unmounting it from {} failed: {}",
        rec.target,
        e.message()
    ));
    match e.hints() {
        [] => err.with_hint("close what uses the mount, then remove it again"),
        hints => hints.iter().fold(err, |err, h| err.with_hint(h.clone())),
    }
}

/// The error of `rm` without `force` of `rows`, `first` of whose mounts
/// is live.
fn mounted_error(rows: &[Row], first: &MountRecord, key: &str) -> Error {
    let name = rows
        .iter()
        .find(|r| r.id == first.snapshot_id)
        .map(|r| r.name.as_str())
        .unwrap_or(key);
    Error::precondition(format!("snapshot `{name}` is mounted at {}", first.target)).with_hint(
        format!(
            "unmount it first (`strata unmount {}`), or use `rm -f`",
            key::shell_quote(&first.target)
        ),
    )
}

/// Refuses to remove `rows` while one of `mounted` (their live mount
/// records) was made by strata in another mount namespace: no `rm`, `-f`
/// or not, can undo that mount from here (see [`Store::unmount_target`]),
/// so it is found before anything is unmounted or removed (audit: `rm -r
/// -f` removed the batches before that snapshot's, then failed on it).
fn refuse_foreign_mounts(rows: &[Row], mounted: &[MountRecord]) -> Result<()> {
    let own = mount::own_namespace();
    let Some((rec, ns)) = mounted
        .iter()
        .find_map(|r| foreign(r, own).map(|ns| (r, ns)))
    else {
        return Ok(());
    };
    let name = rows
        .iter()
        .find(|r| r.id == rec.snapshot_id)
        .map_or("", |r| r.name.as_str());
    Err(Error::precondition(format!(
        "cannot remove `{name}`: strata mounted it at {} in another mount namespace (mnt:[{ns}]), which cannot be unmounted from here",
        rec.target
    ))
    .with_hint(format!(
        "unmount it from a shell in that namespace (nsenter --mount=/proc/PID/ns/mnt strata unmount {}), then remove it again",
        key::shell_quote(&rec.target)
    )))
}

/// Mount records split into those whose mount still exists and the stale
/// ones (unmounted by hand, lost in a reboot).
///
/// A mount made in another mount namespace (a `unshare -m` shell, a
/// service with a private /tmp) is not in this one's table: it is judged
/// by what the processes of that namespace show ([`mount::Namespaces`];
/// audit: from the host, `rm` deleted a snapshot such a mount was writing
/// to, and a read-only `ls` in a new namespace dropped the host's
/// records). `table` is this namespace's, when the caller has read it.
fn live_and_stale(
    records: Vec<MountRecord>,
    table: Option<&mount::MountTable>,
) -> Result<(Vec<MountRecord>, Vec<MountRecord>)> {
    if records.is_empty() {
        return Ok((records, Vec::new()));
    }
    let read;
    let table = match table {
        Some(table) => table,
        None => {
            read = mount_table()?;
            &read
        }
    };
    let own = mount::own_namespace();
    let mut others = mount::Namespaces::default();
    Ok(records.into_iter().partition(|r| match foreign(r, own) {
        Some(ns) => others.shows(ns, r.mount_id, r.mount_identity()),
        None => table.has(r.mount_id, r.mount_identity(), Path::new(&r.target)),
    }))
}

/// The other mount namespace a record's mount was made in, if it was.
fn foreign(r: &MountRecord, own: Option<u64>) -> Option<u64> {
    r.namespace().filter(|ns| own.is_some_and(|own| own != *ns))
}

/// Whether `path` is there but not a directory: a symlink (not followed)
/// or a file in its place.
fn not_a_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir())
}

/// A snapshot's tree at `tree` that is not a directory: the store is
/// damaged, and `what` (the operation) is refused.
fn not_a_tree(what: String, tree: &Path) -> Error {
    Error::internal(format!(
        "{what}: {} is not a directory (a symlink or a file in its place); the store is damaged",
        tree.display()
    ))
    .with_hint("run `strata check`, which reports it; put the snapshot's directory back, or remove the snapshots concerned")
}

fn replaced(key: &str) -> Error {
    Error::not_found(format!("snapshot `{key}` was removed by another process"))
}

fn article(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Active => "active",
        SnapshotKind::View => "a view",
        SnapshotKind::Committed => "committed",
    }
}

/// The hint for a store on a read-only file system, where a snapshot is
/// to be written or mounted.
const STORE_READ_ONLY_HINT: &str = "the store's file system is mounted read-only: remount it read-write (mount -o remount,rw), or use a store on a writable disk";

fn mount_error(key: &str, target: &Path, e: std::io::Error) -> Error {
    let msg = format!("cannot mount `{key}` at {}", target.display());
    match mount::errno(&e) {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::unsupported(msg)
            .with_hint("mounting needs root (or a user namespace with overlay support); `strata mounts` prints the mounts to perform elsewhere")
            .with_source(e),
        Some(libc::ENODEV) => Error::unsupported(msg)
            .with_hint("this kernel has no overlayfs; use a store with the native driver")
            .with_source(e),
        _ => Error::io(msg, e),
    }
}

/// Flushes the filesystem holding `path` (after a native copy: one call
/// instead of an fsync per file).
fn syncfs(path: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(path)?;
    rustix::fs::syncfs(&dir)?;
    Ok(())
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Mounts a two-lower overlay in scratch directory `dir`: the only reliable
/// test of overlay support on its file system, kernel and privilege.
fn overlay_mounts_in(dir: &Path) -> std::io::Result<bool> {
    for name in ["l1", "l2", "upper", "work", "merged"] {
        std::fs::create_dir(dir.join(name))?;
    }
    let m = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        // Escaped as the store's own mounts are: its path may hold a
        // `:`, `,` or `\`.
        options: vec![
            mount::overlay_path_option("workdir", &dir.join("work")),
            mount::overlay_path_option("upperdir", &dir.join("upper")),
            mount::lowerdir_option(&[dir.join("l1"), dir.join("l2")]),
        ],
    };
    let merged = dir.join("merged");
    let ok = mount::mount_all(std::slice::from_ref(&m), &merged).is_ok();
    if ok {
        let _ = mount::unmount(&merged, true);
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::batch_within;

    #[test]
    fn batches_leave_room_for_the_remover_and_the_index() {
        // rm's batches: a quarter of the limit, 16 to 256.
        assert_eq!(batch_within(1024, 16, 256), 256);
        assert_eq!(batch_within(256, 16, 256), 64);
        assert_eq!(batch_within(64, 16, 256), 16);
        // Below 48 files, 16 locks and the remover's 16 directories leave
        // too little for the rest: smaller batches, down to one.
        assert_eq!(batch_within(40, 16, 256), 8);
        assert_eq!(batch_within(32, 16, 256), 1);
        assert_eq!(batch_within(10, 16, 256), 1);
        assert_eq!(batch_within(usize::MAX, 8, 1024), 1024);
    }
}
