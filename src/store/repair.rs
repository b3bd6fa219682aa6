//! `prune` and `check`: finding and removing what interrupted work left
//! behind, and verifying that the index and the disk agree.
//!
//! Both look at the snapshot directory while holding the index's write lock,
//! so no create or remove can be between its rename and its commit: a
//! numeric directory without a row is then certainly garbage. Directories
//! being built (`new-*`) are skipped while their builder holds its lock.

use super::error::{IoContext, Result};
use super::index::{self, SnapshotKind};
use super::layout::{self, STAGING_PREFIX, TRASH_PREFIX};
use super::usage::disk_usage;
use super::{Driver, Store, mount};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One leftover that prune deletes (or would, with `--dry-run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leftover {
    /// What it is: `orphan` (directory with no index row), `staging`
    /// (half-made snapshot), `trash` (half-removed snapshot), `work` (work
    /// directory of a committed snapshot), `link` (short link of a removed
    /// snapshot), `mount-record` (record of a mount that is gone).
    pub kind: &'static str,
    pub path: String,
    pub size: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub removed: Vec<Leftover>,
    pub count: u64,
    pub size: u64,
}

/// One mismatch between the index and the disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// `missing-directory`, `orphan-directory`, `leftover`, `broken-parent`,
    /// `parent-not-committed`, `bad-shape`, `stale-mount-record`,
    /// `index-corrupt`.
    pub kind: &'static str,
    /// The snapshot concerned, if any.
    pub snapshot: Option<String>,
    pub message: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub consistent: bool,
    pub problems: Vec<Problem>,
}

impl Store {
    /// Deletes leftovers of interrupted work; with `dry_run` only lists them.
    pub fn prune(&mut self, dry_run: bool) -> Result<PruneReport> {
        let mut removed = Vec::new();
        let (_, stale) = self.sort_mount_records(!dry_run)?;
        for record in stale {
            removed.push(Leftover {
                kind: "mount-record",
                path: record.target,
                size: 0,
                inodes: 0,
            });
        }
        let found = self.leftovers(!dry_run)?;
        for (kind, original, trash) in found {
            let usage = disk_usage(&trash).unwrap_or_default();
            if !dry_run {
                unmount_below(&trash);
                let gone = if kind == "link" {
                    fs::remove_file(&trash)
                } else {
                    layout::remove_tree(&trash)
                };
                gone.ctx(|| format!("cannot delete {}", trash.display()))?;
            }
            removed.push(Leftover {
                kind,
                path: original.display().to_string(),
                size: usage.size,
                inodes: usage.inodes,
            });
        }
        Ok(PruneReport {
            dry_run,
            count: removed.len() as u64,
            size: removed.iter().map(|l| l.size).sum(),
            removed,
        })
    }

    /// Finds leftovers under the write lock. With `take`, each is moved to
    /// a trash name while the lock is held (so no concurrent operation can
    /// claim it), and the returned path is the trash path to delete.
    fn leftovers(&mut self, take: bool) -> Result<Vec<(&'static str, PathBuf, PathBuf)>> {
        let snapshots = self.layout.snapshots().to_path_buf();
        let links = self.layout.links();
        let tx = self.index.write()?;
        let rows = index::all(&tx)?;
        let ids: HashMap<i64, SnapshotKind> = rows.iter().map(|r| (r.id, r.kind)).collect();
        let mut found = Vec::new();
        // Locks of dead builders' directories, held until they are moved.
        let mut claimed = Vec::new();
        let entries =
            fs::read_dir(&snapshots).ctx(|| format!("cannot read {}", snapshots.display()))?;
        for entry in entries {
            let entry = entry.ctx(|| format!("cannot read {}", snapshots.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let kind = if let Ok(id) = name.parse::<i64>() {
                match ids.get(&id) {
                    None => "orphan",
                    Some(SnapshotKind::Committed) if path.join("work").exists() => {
                        found.push(("work", path.join("work"), path.join("work")));
                        continue;
                    }
                    Some(_) => continue,
                }
            } else if name.starts_with(STAGING_PREFIX) {
                match claim(&path) {
                    Some(lock) => claimed.push(lock),
                    None => continue,
                }
                "staging"
            } else if name.starts_with(TRASH_PREFIX) {
                "trash"
            } else {
                continue;
            };
            found.push((kind, path.clone(), path));
        }
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let live = i64::from_str_radix(&name, 36)
                    .ok()
                    .is_some_and(|id| ids.contains_key(&id));
                if !live {
                    found.push(("link", entry.path(), entry.path()));
                }
            }
        }
        if take {
            for item in found.iter_mut() {
                if matches!(item.0, "orphan" | "staging") {
                    let trash = self.layout.trash_path();
                    fs::rename(&item.1, &trash)
                        .ctx(|| format!("cannot move {} aside", item.1.display()))?;
                    item.2 = trash;
                }
            }
            layout::sync_dir(&snapshots).ctx(|| format!("cannot sync {}", snapshots.display()))?;
        }
        tx.commit()?;
        drop(claimed);
        Ok(found)
    }

    /// Compares the index with the disk; with `repair`, fixes what is safe.
    pub fn check(&mut self, repair: bool) -> Result<CheckReport> {
        let mut problems = Vec::new();
        self.check_index(&mut problems)?;
        let driver = self.driver()?;
        let rows = {
            let tx = self.index.read()?;
            index::all(&tx)?
        };
        let by_id: HashMap<i64, &index::Row> = rows.iter().map(|r| (r.id, r)).collect();
        let mut children: HashSet<i64> = HashSet::new();
        for row in &rows {
            if let Some(p) = row.parent_id {
                children.insert(p);
                match by_id.get(&p) {
                    None => problems.push(problem(
                        "broken-parent",
                        Some(&row.name),
                        format!(
                            "snapshot `{}` names a parent (id {p}) that does not exist",
                            row.name
                        ),
                    )),
                    Some(parent) if parent.kind != SnapshotKind::Committed => {
                        problems.push(problem(
                            "parent-not-committed",
                            Some(&row.name),
                            format!(
                                "snapshot `{}` has parent `{}`, which is {}, not committed",
                                row.name, parent.name, parent.kind
                            ),
                        ))
                    }
                    _ => {}
                }
            }
        }
        for row in &rows {
            let dir = self.layout.dir(row.id);
            if !dir.is_dir() {
                let mut p = problem(
                    "missing-directory",
                    Some(&row.name),
                    format!(
                        "snapshot `{}` ({}) has no directory {}",
                        row.name,
                        row.kind,
                        dir.display()
                    ),
                );
                // Its data is gone either way; forgetting a leaf is safe.
                if repair && !children.contains(&row.id) {
                    let tx = self.index.write()?;
                    index::delete(&tx, row.id)?;
                    tx.commit()?;
                    p.repaired = true;
                    p.message.push_str("; its index row was removed");
                }
                problems.push(p);
                continue;
            }
            if !self.layout.fs(row.id).is_dir() {
                problems.push(problem(
                    "bad-shape",
                    Some(&row.name),
                    format!(
                        "snapshot `{}` has no tree {}",
                        row.name,
                        self.layout.fs(row.id).display()
                    ),
                ));
            }
            let work = self.layout.work(row.id);
            if driver == Some(Driver::Overlay) && row.kind == SnapshotKind::Active && !work.is_dir()
            {
                let mut p = problem(
                    "bad-shape",
                    Some(&row.name),
                    format!(
                        "active snapshot `{}` has no overlay work directory {}",
                        row.name,
                        work.display()
                    ),
                );
                if repair && fs::create_dir(&work).is_ok() {
                    p.repaired = true;
                    p.message.push_str("; it was recreated");
                }
                problems.push(p);
            }
        }
        let (_, stale) = self.sort_mount_records(repair)?;
        for r in &stale {
            let name = by_id.get(&r.snapshot_id).map(|r| r.name.clone());
            let mut p = problem(
                "stale-mount-record",
                name.as_deref(),
                format!(
                    "snapshot `{}` is recorded as mounted at {}, which is not mounted",
                    name.as_deref().unwrap_or("?"),
                    r.target
                ),
            );
            p.repaired = repair;
            problems.push(p);
        }
        // Leftovers: reported, and with --repair deleted as prune would.
        let leftovers = self.leftovers(false)?;
        if !leftovers.is_empty() {
            let fixed = if repair {
                Some(self.prune(false)?)
            } else {
                None
            };
            for (kind, path, _) in leftovers {
                let what = match kind {
                    "orphan" => "a directory with no index row",
                    "staging" => "a half-made snapshot",
                    "trash" => "a half-removed snapshot",
                    "work" => "the work directory of a committed snapshot",
                    _ => "a short link of a removed snapshot",
                };
                let mut p = problem(
                    if kind == "orphan" {
                        "orphan-directory"
                    } else {
                        "leftover"
                    },
                    None,
                    format!("{} is {what}", path.display()),
                );
                p.repaired = fixed.is_some();
                problems.push(p);
            }
        }
        Ok(CheckReport {
            consistent: problems.iter().all(|p| p.repaired),
            problems,
        })
    }

    fn check_index(&mut self, problems: &mut Vec<Problem>) -> Result<()> {
        let tx = self.index.read()?;
        let integrity: Vec<String> = {
            let mut stmt = tx.prepare("PRAGMA integrity_check")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        if integrity != ["ok"] {
            for line in integrity {
                problems.push(problem("index-corrupt", None, format!("index: {line}")));
            }
        }
        let fk: i64 = tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })?;
        if fk > 0 {
            problems.push(problem(
                "index-corrupt",
                None,
                format!("index: {fk} rows break foreign keys"),
            ));
        }
        Ok(())
    }
}

fn problem(kind: &'static str, snapshot: Option<&str>, message: String) -> Problem {
    Problem {
        kind,
        snapshot: snapshot.map(str::to_string),
        message,
        repaired: false,
    }
}

/// Locks staging directory `path` if its builder is gone (a live builder
/// holds the lock for as long as it lives); None while it is alive.
fn claim(path: &Path) -> Option<fs::File> {
    let dir = fs::File::open(path).ok()?;
    match dir.try_lock() {
        Ok(()) => Some(dir),
        Err(_) => None,
    }
}

/// Detaches anything still mounted inside a directory about to be deleted
/// (a process killed while testing overlay support, say), so deleting never
/// reaches into a mounted tree.
fn unmount_below(path: &Path) {
    let Ok(points) = mount::mount_points() else {
        return;
    };
    let mut below: Vec<&PathBuf> = points.iter().filter(|p| p.starts_with(path)).collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in below {
        let _ = mount::unmount(p, true);
    }
}
