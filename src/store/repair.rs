//! `prune` and `check`: finding and removing what interrupted work left
//! behind, and verifying that the index and the disk agree.
//!
//! Both look at the disk without the index's write lock (a store of
//! 100,000 snapshots kept writers waiting for seconds), then judge what
//! they found again holding it, so no create can be between its rename and
//! its commit, and no remove between its commit and its lock's release:
//! only what is still wrong then is reported or repaired. What a live
//! process is still working on holds that process's lock, and is skipped: a
//! directory being built (`new-*`, locked by its builder), or deleted (an
//! `rm` holds the snapshot's lock from before its commit until its
//! directory, renamed `rm-*`, is gone), a committed snapshot whose work
//! directory its `commit` is removing. What stays once the process is gone
//! (killed: its locks die with it) is reported. Each leftover taken is
//! locked until deleted, so a concurrent prune or check sees it as work in
//! progress too; leftovers are taken in batches, so that any number of them
//! needs a bounded number of file descriptors.

use super::error::{IoContext, Result};
use super::index::{self, SnapshotKind};
use super::layout::{self, Layout, LinkState, STAGING_PREFIX, TRASH_PREFIX};
use super::usage::{Usage, disk_usage};
use super::{Driver, Store, crash, mount};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::Hash;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One leftover that prune deletes (or would, with `--dry-run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leftover {
    /// What it is: `orphan` (directory, or file, with no index row), `staging`
    /// (half-made snapshot), `trash` (half-removed snapshot), `work` (work
    /// directory of a committed snapshot), `link` (what is in `l/` and is
    /// no snapshot's short link: a link of a removed snapshot, a directory,
    /// a file), `mount-record` (record of a mount that is gone).
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
    /// Leftovers that could not be deleted (the others were): the command
    /// reports them and fails.
    pub failed: Vec<Undeleted>,
}

/// A leftover prune could not delete, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Undeleted {
    /// Where it is left: an orphan or a half-made snapshot is moved to an
    /// `rm-*` name first, and stays there.
    pub path: String,
    pub error: String,
}

/// One mismatch between the index and the disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// `missing-directory`, `orphan-directory`, `leftover`, `broken-parent`,
    /// `parent-not-committed`, `parent-cycle`, `bad-shape`, `bad-link`
    /// (a snapshot's short link in `l/` that is not the one strata makes),
    /// `stale-mount-record`, `index-corrupt`.
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
        let known = {
            let tx = self.index.read()?;
            index::all_own(&tx)?
                .into_iter()
                .map(|r| (r.id, r.kind))
                .collect()
        };
        let how = Sweep {
            measure: true,
            delete: !dry_run,
        };
        let mut failed = Vec::new();
        for swept in self.sweep(&known, how)? {
            let path = swept.path.display().to_string();
            match swept.error {
                None => removed.push(Leftover {
                    kind: swept.kind,
                    path,
                    size: swept.usage.size,
                    inodes: swept.usage.inodes,
                }),
                Some(error) => failed.push(Undeleted {
                    path: swept.left.display().to_string(),
                    error,
                }),
            }
        }
        failed.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(PruneReport {
            dry_run,
            count: removed.len() as u64,
            size: removed.iter().map(|l| l.size).sum(),
            removed,
            failed,
        })
    }

    /// Compares the index with the disk; with `repair`, fixes what is safe.
    pub fn check(&mut self, repair: bool) -> Result<CheckReport> {
        let mut problems = Vec::new();
        if !self.check_index(&mut problems, repair)? {
            return Ok(CheckReport {
                consistent: false,
                problems,
            });
        }
        let driver = self.driver()?;
        // One consistent reading of the index, let go before the disk is
        // looked at: a read transaction would keep writers from committing.
        let (rows, records) = {
            let tx = self.index.read()?;
            (index::all(&tx)?, index::mounts(&tx)?)
        };
        let by_id: HashMap<i64, &index::Row> = rows.iter().map(|r| (r.id, r)).collect();
        // Problems of the index alone: no transaction shows one half made.
        for row in &rows {
            if let Some(p) = row.parent_id {
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
        // No walk of a cycle of parents ends: `rm -r`, `tree`, mounts and
        // exports of the snapshots on it or below it fail.
        let parents: HashMap<i64, i64> = rows
            .iter()
            .filter_map(|r| Some((r.id, r.parent_id.filter(|p| by_id.contains_key(p))?)))
            .collect();
        for cycle in parent_cycles(&parents) {
            let names: Vec<String> = cycle.iter().map(|id| by_id[id].name.clone()).collect();
            let first = names.iter().min().cloned();
            let mut p = problem("parent-cycle", first.as_deref(), index::parent_cycle(names));
            if repair {
                p.message.push_str(
                    "; it cannot be repaired: restore the index from a backup, or correct a parent_id with sqlite3",
                );
            }
            problems.push(p);
        }
        // The walk, without the write lock (a store of 100,000 snapshots
        // kept writers waiting for seconds, past SQLite's busy timeout at a
        // few hundred thousand: audit). What it finds may be work that
        // another process finished meanwhile (an `rm` renaming a directory
        // away, a commit removing its work directory): each such row is
        // looked at again under the write lock, and only what is still wrong
        // then is a problem.
        crash::point("check:walking");
        let suspects: Vec<i64> = rows
            .iter()
            .filter(|r| look(&self.layout, r, driver).is_some())
            .map(|r| r.id)
            .collect();
        let links = wrong_links(&self.layout, &by_id)?;
        let (_, stale) = super::live_and_stale(records, None)?;
        // The kinds of the rows left (--repair may forget some).
        let mut known: HashMap<i64, SnapshotKind> = rows.iter().map(|r| (r.id, r.kind)).collect();
        if !suspects.is_empty() || !stale.is_empty() || !links.is_empty() {
            let tx = self.index.write()?;
            for id in judge_rows(&self.layout, &tx, &suspects, driver, repair, &mut problems)? {
                known.remove(&id);
            }
            judge_links(&self.layout, &tx, &links, repair, &mut problems)?;
            if !stale.is_empty() {
                judge_records(&self.layout, &tx, repair, &mut problems)?;
            }
            tx.commit()?;
        }
        // Leftovers: reported, and with --repair deleted as prune would.
        let how = Sweep {
            measure: false,
            delete: repair,
        };
        for swept in self.sweep(&known, how)? {
            let what = match swept.kind {
                "orphan" if swept.node == Node::Dir => "a directory with no index row",
                "orphan" if swept.node == Node::Symlink => "a symlink with no index row",
                "orphan" => "a file with no index row",
                "staging" => "a half-made snapshot",
                "trash" => "a half-removed snapshot",
                "work" => "the work directory of a committed snapshot",
                _ if swept.path == self.layout.links() => {
                    "not a directory: a symlink or a file in place of the short links' directory"
                }
                _ => match swept.node {
                    Node::Symlink if link_id(&swept.name()).is_some() => {
                        "a short link of a removed snapshot"
                    }
                    Node::Symlink => "a symlink among the short links, not one strata makes",
                    Node::Dir => "a directory among the short links, not a link",
                    Node::Other => "a file among the short links, not a link",
                },
            };
            let mut p = problem(
                if swept.kind == "orphan" {
                    "orphan-directory"
                } else {
                    "leftover"
                },
                None,
                format!("{} is {what}", swept.path.display()),
            );
            match swept.error {
                None if repair => {
                    p.repaired = true;
                    p.message.push_str("; it was deleted");
                }
                None => {}
                Some(error) if swept.left != swept.path => p.message.push_str(&format!(
                    "; it was moved to {} but could not be deleted: {error}",
                    swept.left.display()
                )),
                Some(error) => p.message.push_str(&format!(
                    "; it could not be {}: {error}",
                    if repair { "deleted" } else { "looked at" }
                )),
            }
            problems.push(p);
        }
        Ok(CheckReport {
            consistent: problems.iter().all(|p| p.repaired),
            problems,
        })
    }

    /// Finds leftovers (see the top) and, as `how` says, measures and
    /// deletes them. `known` is the kind of each row of a reading of the
    /// index made before: what the directory listing (made without the
    /// write lock) finds is judged again under it, in batches of
    /// [`batch_size`] leftovers, each locked from then until it is deleted
    /// (or, without `how.delete`, looked at), so any number of them is
    /// dealt with in a bounded number of file descriptors (audit: a lock
    /// held for each of 9,855 leftovers ran out of them, and those past the
    /// 1,016th were taken for work in progress and never deleted).
    fn sweep(&mut self, known: &HashMap<i64, SnapshotKind>, how: Sweep) -> Result<Vec<Swept>> {
        let snapshots = self.layout.snapshots().to_path_buf();
        let (dirs, links) = candidates(&self.layout, known)?;
        let mut swept = Vec::new();
        // Row-less ids whose directories this sweep locked (orphans), and
        // those another process holds (an `rm` between its commit and its
        // directory's rename, which deletes their links too).
        let mut ours = HashSet::new();
        let mut busy = HashSet::new();
        for batch in dirs.chunks(batch_size()) {
            let mut taken = Vec::new();
            let mut locks = Vec::new();
            let tx = self.index.write()?;
            for (kind, path, id) in batch {
                let kind = match id {
                    // A row made or removed since the listing: as it is now.
                    Some(id) => match index::find_id(&tx, *id)?.map(|r| r.kind) {
                        None => "orphan",
                        Some(SnapshotKind::Committed) if path.join("work").exists() => "work",
                        Some(_) => continue,
                    },
                    None => *kind,
                };
                crate::store::crash::point("sweep:judged");
                match claim(path) {
                    // A commit removes its work directory holding the
                    // lock, after its row says committed: one that ended
                    // since the look above took it (audit: reported as a
                    // leftover, and its deletion failed with ENOENT).
                    Claim::Held(_) if kind == "work" && !path.join("work").exists() => continue,
                    Claim::Held(lock) => locks.push(lock),
                    Claim::Busy => {
                        busy.extend(*id);
                        continue;
                    }
                    Claim::Gone => continue,
                    Claim::Failed(e) => {
                        let (path, left) = (path.clone(), path.clone());
                        swept.push(Swept::failed(kind, path, left, e.to_string()));
                        continue;
                    }
                }
                if kind == "orphan" {
                    ours.extend(*id);
                }
                let path = if kind == "work" {
                    path.join("work")
                } else {
                    path.clone()
                };
                taken.push((kind, path.clone(), path));
            }
            if how.delete {
                let mut moved = false;
                for item in taken.iter_mut() {
                    if matches!(item.0, "orphan" | "staging") {
                        let trash = self.layout.trash_path();
                        // One that cannot be moved (a mount point: EBUSY) is
                        // deleted where it is, or reported as not deleted.
                        if fs::rename(&item.1, &trash).is_ok() {
                            item.2 = trash;
                            moved = true;
                        }
                    }
                }
                if moved {
                    layout::sync_dir(&snapshots)
                        .ctx(|| format!("cannot sync {}", snapshots.display()))?;
                }
            }
            tx.commit()?;
            swept.extend(delete(taken, how));
            drop(locks);
        }
        if !links.is_empty() {
            let mut taken = Vec::new();
            let tx = self.index.write()?;
            for (id, path) in links {
                // A link is a snapshot's while its row is there, and while
                // its directory is, unless this sweep found that directory
                // an orphan: another process may be removing the snapshot
                // (or a directory made after the listing be its own).
                let live = match id {
                    Some(id) => {
                        busy.contains(&id)
                            || index::find_id(&tx, id)?.is_some()
                            || (!ours.contains(&id)
                                && fs::symlink_metadata(self.layout.dir(id)).is_ok())
                    }
                    None => false,
                };
                if !live {
                    taken.push(("link", path.clone(), path));
                }
            }
            tx.commit()?;
            swept.extend(delete(taken, how));
        }
        Ok(swept)
    }

    /// Checks the index itself; false when it is damaged, and nothing
    /// else should be read from it.
    fn check_index(&mut self, problems: &mut Vec<Problem>, repair: bool) -> Result<bool> {
        let tx = self.index.read()?;
        // SQLite lists what it finds, or (damage it cannot walk past) fails
        // the check itself: both are the report.
        let integrity = tx.prepare("PRAGMA integrity_check").and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        let lines = match integrity {
            Ok(lines) => lines,
            Err(e) => vec![e.to_string()],
        };
        if lines != ["ok"] {
            for line in lines {
                problems.push(problem("index-corrupt", None, format!("index: {line}")));
            }
            // Nothing more is read from a damaged index (a damaged table
            // fails every query on it), and nothing repaired from it.
            problems.push(problem(
                "index-corrupt",
                None,
                "index: damaged; nothing else was checked or repaired: restore index.db from a backup (or `sqlite3 index.db .recover`)".into(),
            ));
            return Ok(false);
        }
        // What SQLite's check passes but strata cannot read or trust: rows
        // edited past the types (the table is not STRICT) or past
        // constraints a table rebuilt by hand no longer has, and ids used
        // up. Only here: no other command pays for these scans.
        let unreadable = bad_rows(&tx)?;
        let cannot = if repair {
            "; it cannot be repaired: correct or delete the row with sqlite3, or restore index.db from a backup"
        } else {
            ""
        };
        for (id, name, faults) in &unreadable {
            problems.push(problem(
                "index-corrupt",
                name.as_deref(),
                format!(
                    "index: snapshot {} (id {id}) {}{cannot}",
                    name.as_deref()
                        .map_or_else(|| "with no name".to_string(), |n| format!("`{n}`")),
                    faults.join(", and ")
                ),
            ));
        }
        let bad = bad_values(&tx)?;
        for message in &bad {
            problems.push(problem("index-corrupt", None, format!("{message}{cannot}")));
        }
        for (name, ids) in duplicate_names(&tx)? {
            let mut p = problem(
                "index-corrupt",
                Some(&name),
                format!(
                    "index: {} snapshots are named `{name}` (ids {}): the index's snapshots table \
                     lost its UNIQUE constraint, and commands take either",
                    ids.len(),
                    ids.iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            if repair {
                p.message.push_str(
                    "; it cannot be repaired: rename or delete all but one of the rows with sqlite3",
                );
            }
            problems.push(p);
        }
        if let Some(last) = index::ids_used_up(&tx)? {
            let mut p = problem("index-corrupt", None, index::ids_used_up_message(last));
            if repair {
                p.message.push_str(&format!(
                    "; it cannot be repaired safely: {}",
                    index::IDS_USED_UP_HINT
                ));
            }
            problems.push(p);
        }
        if !unreadable.is_empty() || !bad.is_empty() {
            // Every reading of all the rows (or of the mount records) fails
            // on them.
            problems.push(problem(
                "index-corrupt",
                None,
                "index: rows strata cannot read; nothing else was checked or repaired: correct them with sqlite3 (or restore index.db from a backup)".into(),
            ));
            return Ok(false);
        }
        // Rows of a snapshot that does not exist (an index edited with
        // foreign keys off): meaningless, and a label one would be taken up
        // by a snapshot given that id (audit). A snapshot whose parent does
        // not exist is `broken-parent`, reported with the snapshots.
        let mut orphans = Vec::new();
        for table in ["labels", "mounts", "layer_digests"] {
            let n: i64 = tx.query_row(
                &format!("SELECT count(*) FROM pragma_foreign_key_check('{table}')"),
                [],
                |r| r.get(0),
            )?;
            if n > 0 {
                orphans.push((table, n));
            }
        }
        drop(tx);
        if orphans.is_empty() {
            return Ok(true);
        }
        let tx = if repair {
            Some(self.index.write()?)
        } else {
            None
        };
        for (table, n) in orphans {
            let mut p = problem(
                "index-corrupt",
                None,
                format!("index: {n} rows of `{table}` belong to no snapshot"),
            );
            if let Some(tx) = &tx {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE snapshot_id NOT IN (SELECT id FROM snapshots)"
                    ),
                    [],
                )?;
                p.repaired = true;
                p.message.push_str("; they were deleted");
            }
            problems.push(p);
        }
        if let Some(tx) = tx {
            tx.commit()?;
        }
        Ok(true)
    }
}

/// A row [`bad_rows`] found: its id, its name (when it is text), and what
/// is wrong with it.
type BadRow = (i64, Option<String>, Vec<String>);

/// The rows of `snapshots` that [`index`]'s reading fails on, or that hold
/// a kind strata does not know. A full scan, for `check` only.
fn bad_rows(tx: &index::Transaction<'_>) -> Result<Vec<BadRow>> {
    // Each column's type as read (`rows`), and the values shown as SQL.
    const INTEGER: &[&str] = &["integer"];
    const OPTIONAL: &[&str] = &["integer", "null"];
    const COLUMNS: [(&str, &[&str]); 5] = [
        ("parent_id", OPTIONAL),
        ("created", INTEGER),
        ("updated", INTEGER),
        ("size", OPTIONAL),
        ("inodes", OPTIONAL),
    ];
    let typed = |(column, types): &(&str, &[&str])| {
        let list: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
        format!("typeof({column}) NOT IN ({})", list.join(", "))
    };
    let sql = format!(
        "SELECT id, CASE WHEN typeof(name) = 'text' THEN name END, quote(name),
                typeof(kind) = 'text' AND kind IN ('active', 'view', 'committed'), quote(kind),
                {}
           FROM snapshots
          WHERE typeof(name) != 'text' OR typeof(kind) != 'text'
             OR kind NOT IN ('active', 'view', 'committed') OR {}",
        COLUMNS
            .iter()
            .map(|(c, _)| format!("typeof({c}), quote({c})"))
            .collect::<Vec<_>>()
            .join(", "),
        COLUMNS.iter().map(typed).collect::<Vec<_>>().join(" OR ")
    );
    let mut stmt = tx.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let name: Option<String> = r.get(1)?;
        let mut faults = Vec::new();
        if name.is_none() {
            faults.push(format!(
                "has name {}, which is not text",
                r.get::<_, String>(2)?
            ));
        }
        if !r.get::<_, bool>(3)? {
            faults.push(format!(
                "has kind {}, which is none of active, view, committed",
                r.get::<_, String>(4)?
            ));
        }
        for (at, (column, types)) in COLUMNS.iter().enumerate() {
            let kind: String = r.get(5 + 2 * at)?;
            if !types.contains(&kind.as_str()) {
                faults.push(format!(
                    "has {column} {} ({kind}), which is not {}",
                    r.get::<_, String>(6 + 2 * at)?,
                    if *column == "parent_id" {
                        "a snapshot id"
                    } else {
                        "an integer"
                    }
                ));
            }
        }
        out.push((id, name, faults));
    }
    Ok(out)
}

/// The values of the other tables whose type is not the one strata reads
/// (rows written with sqlite3 past the types: the tables are not STRICT),
/// each said as what holds it and what is wrong. A full scan of each, for
/// `check` only (review: a label value that is a blob made `ls` and `info`
/// fail while `check` said consistent).
fn bad_values(tx: &index::Transaction<'_>) -> Result<Vec<String>> {
    const TEXT: &[&str] = &["text"];
    const INTEGER: &[&str] = &["integer"];
    const OPTIONAL_TEXT: &[&str] = &["text", "null"];
    const OPTIONAL_INTEGER: &[&str] = &["integer", "null"];
    type Columns = &'static [(&'static str, &'static [&'static str])];
    const TABLES: [(&str, &str, Columns); 4] = [
        (
            "labels",
            "'label ' || quote(key) || ' of the snapshot with id ' || quote(snapshot_id)",
            &[("snapshot_id", INTEGER), ("key", TEXT), ("value", TEXT)],
        ),
        (
            "mounts",
            "'the mount record of ' || quote(target)",
            &[
                ("target", TEXT),
                ("snapshot_id", INTEGER),
                ("created", INTEGER),
                ("mount_id", OPTIONAL_INTEGER),
                ("mount_identity", OPTIONAL_TEXT),
            ],
        ),
        (
            "layer_digests",
            "'the digests ' || quote(variant) || ' of the snapshot with id ' || quote(snapshot_id)",
            &[
                ("snapshot_id", INTEGER),
                ("variant", TEXT),
                ("digest", TEXT),
                ("diff_id", TEXT),
                ("size", INTEGER),
            ],
        ),
        (
            "meta",
            "'the setting ' || quote(key)",
            &[("key", TEXT), ("value", TEXT)],
        ),
    ];
    let mut out = Vec::new();
    for (table, what, columns) in TABLES {
        for (column, types) in columns {
            let list: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
            let sql = format!(
                "SELECT {what}, quote({column}), typeof({column}) FROM {table}
                  WHERE typeof({column}) NOT IN ({})",
                list.join(", ")
            );
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "index: {} has {column} {} ({}), which is not {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    if types.contains(&"text") {
                        "text"
                    } else {
                        "an integer"
                    }
                ))
            })?;
            out.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
        }
    }
    Ok(out)
}

/// Names more than one row holds (a snapshots table rebuilt by hand
/// without its UNIQUE constraint), with their ids. For `check` only: the
/// constraint keeps every create from needing this.
fn duplicate_names(tx: &index::Transaction<'_>) -> Result<Vec<(String, Vec<i64>)>> {
    let mut stmt = tx.prepare(
        "SELECT name, group_concat(id) FROM snapshots WHERE typeof(name) = 'text'
          GROUP BY name HAVING count(*) > 1 ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        let ids: String = r.get(1)?;
        let mut ids: Vec<i64> = ids.split(',').filter_map(|i| i.parse().ok()).collect();
        ids.sort_unstable();
        Ok((r.get(0)?, ids))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Looks again, under the write lock `tx`, at the rows `suspects` whose
/// directories the walk found wrong, and reports (with `repair`,
/// repairs) what is still wrong: a row removed meanwhile, or an active
/// committed (its work directory removed), is not a problem. Returns the
/// ids of the rows forgotten.
fn judge_rows(
    layout: &Layout,
    tx: &index::Transaction<'_>,
    suspects: &[i64],
    driver: Option<Driver>,
    repair: bool,
    problems: &mut Vec<Problem>,
) -> Result<Vec<i64>> {
    let mut forgotten = Vec::new();
    let mut wrong = Vec::new();
    for &id in suspects {
        if let Some(row) = index::find_id(tx, id)?
            && let Some(found) = look(layout, &row, driver)
        {
            // Judged before any repair: only a leaf as the index had it
            // is forgotten.
            let leaf = index::children(tx, id)?.is_empty();
            wrong.push((row, found, leaf));
        }
    }
    // Only a directory that is not there (ENOENT) is missing: one that
    // cannot be looked at, or a store whose every snapshot directory is
    // gone at once (`snapshots/` on a disk not mounted yet, or moved),
    // says nothing of the data, and forgetting its row would let the
    // next `prune` delete the data once it is back (audit).
    let rows: i64 = tx.query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))?;
    let missing = wrong
        .iter()
        .filter(|(_, f, _)| matches!(f.dir, Shape::Missing))
        .count();
    let none_there = rows > 0 && missing as i64 == rows;
    for (row, found, leaf) in wrong {
        let dir = layout.dir(row.id);
        match found.dir {
            Shape::Dir => {}
            Shape::Missing => {
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
                if repair && none_there {
                    p.message.push_str(
                        "; not repaired: no snapshot of the store has its directory (is snapshots/ on a file system not mounted, or moved?)",
                    );
                } else if repair && leaf {
                    index::delete(tx, row.id)?;
                    forgotten.push(row.id);
                    p.repaired = true;
                    p.message.push_str("; its index row was removed");
                }
                problems.push(p);
                continue;
            }
            Shape::Other(what) => {
                problems.push(problem(
                    "bad-shape",
                    Some(&row.name),
                    format!(
                        "snapshot `{}`'s directory {} {what}; left as it is",
                        row.name,
                        dir.display()
                    ),
                ));
                continue;
            }
        }
        if found.tree_bad {
            problems.push(problem(
                "bad-shape",
                Some(&row.name),
                format!(
                    "snapshot `{}` has no tree {} (missing, or not a directory of its own)",
                    row.name,
                    layout.fs(row.id).display()
                ),
            ));
        }
        if found.work_missing {
            let work = layout.work(row.id);
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
    Ok(forgotten)
}

/// Reports (with `repair`, drops) the mount records stale under the
/// write lock `tx`: a target mounted again since the first look has a
/// new, live record. A record whose snapshot a commit or `rm -f`
/// unmounting it holds (it has yet to drop it) is not stale.
fn judge_records(
    layout: &Layout,
    tx: &index::Transaction<'_>,
    repair: bool,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let (_, mut stale) = super::live_and_stale(index::mounts(tx)?, None)?;
    stale.retain(|r| !held(&layout.dir(r.snapshot_id)));
    for r in &stale {
        if repair {
            index::remove_mount(tx, &r.target)?;
        }
        let name = index::find_id(tx, r.snapshot_id)?.map(|r| r.name);
        let mut p = problem(
            "stale-mount-record",
            name.as_deref(),
            format!(
                "snapshot `{}` is recorded as mounted at {}, which is not mounted",
                name.as_deref().unwrap_or("?"),
                r.target
            ),
        );
        if repair {
            p.repaired = true;
            p.message.push_str("; the record was dropped");
        }
        problems.push(p);
    }
    Ok(())
}

/// The ids of the snapshots of `rows` whose short link in `l/` is there
/// but is not the one strata makes (see [`Layout::ensure_links`]): the
/// printed mount lines of deep chains go through them. Only the names
/// strata gives are a snapshot's link; the others are leftovers.
fn wrong_links(layout: &Layout, rows: &HashMap<i64, &index::Row>) -> Result<Vec<i64>> {
    let links = layout.links();
    // An `l` that is not a directory is a leftover of the sweep's; one that
    // is, is listed through the descriptor opened without following it.
    let dir = match layout.open_links() {
        Ok(Some(dir)) => dir,
        Ok(None) => return Ok(Vec::new()),
        Err(e) if layout::NotATree::of(&e).is_some() => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("cannot read {}", links.display())),
    };
    let names = super::copy::names_in(&dir, &links, &mut Vec::new())
        .ctx(|| format!("cannot read {}", links.display()))?;
    let mut wrong = Vec::new();
    for name in names {
        let Some(id) = link_id(&name.to_string_lossy()) else {
            continue;
        };
        if rows.contains_key(&id) && !matches!(layout.link_state(id), Ok(LinkState::Right)) {
            wrong.push(id);
        }
    }
    wrong.sort_unstable();
    Ok(wrong)
}

/// The snapshot whose short link is named `name`, if strata gives that
/// name (`a`, never `A` or `0a`).
fn link_id(name: &str) -> Option<i64> {
    i64::from_str_radix(name, 36)
        .ok()
        .filter(|&id| layout::link_name(id) == name)
}

/// Reports (with `repair`, replaces) the short links of `ids` still wrong
/// under the write lock `tx`: a snapshot removed meanwhile took its link.
fn judge_links(
    layout: &Layout,
    tx: &index::Transaction<'_>,
    ids: &[i64],
    repair: bool,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    for &id in ids {
        let Some(row) = index::find_id(tx, id)? else {
            continue;
        };
        let what = match layout.link_state(id) {
            Ok(LinkState::Wrong(what)) => what,
            Ok(_) => continue,
            Err(e) => format!("cannot be looked at ({e})"),
        };
        let mut p = problem(
            "bad-link",
            Some(&row.name),
            format!(
                "snapshot `{}`'s short link {} {what}",
                row.name,
                layout.links().join(layout::link_name(id)).display()
            ),
        );
        if repair {
            match layout.repair_link(id) {
                Ok(()) => {
                    p.repaired = true;
                    p.message.push_str("; it was replaced");
                }
                Err(e) => p
                    .message
                    .push_str(&format!("; it could not be replaced: {e}")),
            }
        }
        problems.push(p);
    }
    Ok(())
}

/// What is at a snapshot's directory.
enum Shape {
    Dir,
    /// Not there (ENOENT): the directory is gone.
    Missing,
    /// Something else, or nothing that can be looked at: what, for the report.
    Other(String),
}

/// The shape of `path`, not following a symlink there (a snapshot's
/// directory that is a symlink points out of the store's layout).
fn shape(path: &Path) -> Shape {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Shape::Dir,
        Ok(m) if m.file_type().is_symlink() => Shape::Other("is a symlink".into()),
        Ok(_) => Shape::Other("is not a directory".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Shape::Missing,
        Err(e) => Shape::Other(format!("cannot be looked at ({e})")),
    }
}

/// What is wrong with the directories of a snapshot.
struct Wrong {
    /// Its directory's shape; the rest is looked at only when a directory.
    dir: Shape,
    /// Its tree is not a directory of its own.
    tree_bad: bool,
    /// An active snapshot of the overlay driver without its work directory.
    work_missing: bool,
}

/// What is wrong with row `row`'s directories, if anything.
fn look(layout: &Layout, row: &index::Row, driver: Option<Driver>) -> Option<Wrong> {
    let dir = shape(&layout.dir(row.id));
    if !matches!(dir, Shape::Dir) {
        return Some(Wrong {
            dir,
            tree_bad: false,
            work_missing: false,
        });
    }
    let tree_bad = !matches!(shape(&layout.fs(row.id)), Shape::Dir);
    let work_missing = driver == Some(Driver::Overlay)
        && row.kind == SnapshotKind::Active
        && !matches!(shape(&layout.work(row.id)), Shape::Dir);
    (tree_bad || work_missing).then_some(Wrong {
        dir,
        tree_bad,
        work_missing,
    })
}

fn problem(kind: &'static str, snapshot: Option<&str>, message: String) -> Problem {
    Problem {
        kind,
        snapshot: snapshot.map(str::to_string),
        message,
        repaired: false,
    }
}

/// What a sweep does with each leftover it finds: measures it (for prune's
/// report), deletes it; with neither, only lists it.
#[derive(Clone, Copy)]
struct Sweep {
    measure: bool,
    delete: bool,
}

/// A leftover a sweep found.
struct Swept {
    /// See [`Leftover::kind`].
    kind: &'static str,
    /// Where it was found.
    path: PathBuf,
    /// Where what could not be deleted is left: an orphan or a half-made
    /// snapshot is moved to an `rm-*` name before it is deleted.
    left: PathBuf,
    /// What it is (a file may have a snapshot's name, a directory be
    /// among the links).
    node: Node,
    /// Measured only when asked.
    usage: Usage,
    /// Why it could not be looked at or deleted; the others are.
    error: Option<String>,
}

impl Swept {
    /// The name it was found under.
    fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn failed(kind: &'static str, path: PathBuf, left: PathBuf, error: String) -> Swept {
        Swept {
            kind,
            node: Node::of(&left),
            path,
            left,
            usage: Usage::default(),
            error: Some(error),
        }
    }
}

/// A directory under `snapshots/` that may be a leftover: its kind as far
/// as the listing tells (a snapshot's is judged by its row), its path, and
/// for a snapshot's directory its id.
type Candidate = (&'static str, PathBuf, Option<i64>);

/// Lists what may be leftovers, without any lock: directories under
/// `snapshots/` (see [`Candidate`]), skipping those of the rows of `known`
/// that cannot be (all but committed ones with a work directory), and the
/// short links in `l/`, with their ids.
#[allow(clippy::type_complexity)]
fn candidates(
    layout: &Layout,
    known: &HashMap<i64, SnapshotKind>,
) -> Result<(Vec<Candidate>, Vec<(Option<i64>, PathBuf)>)> {
    let snapshots = layout.snapshots();
    let mut dirs = Vec::new();
    let entries = fs::read_dir(snapshots).ctx(|| format!("cannot read {}", snapshots.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("cannot read {}", snapshots.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        // Only the names strata gives (`7`, never `007` or `+7`): another
        // name is not a snapshot's, whatever number it reads as (audit:
        // `007` was taken for snapshot 7's, or deleted as an orphan).
        let id = name.parse::<i64>().ok().filter(|id| id.to_string() == name);
        let kind = if let Some(id) = id {
            match known.get(&id) {
                None => "orphan",
                Some(SnapshotKind::Committed) if path.join("work").exists() => "work",
                Some(_) => continue,
            }
        } else if let Some(unique) = name.strip_prefix(STAGING_PREFIX) {
            if just_made(unique) {
                continue;
            }
            "staging"
        } else if name.starts_with(TRASH_PREFIX) {
            "trash"
        } else {
            continue;
        };
        dirs.push((kind, path, id));
    }
    let mut links = Vec::new();
    let path = layout.links();
    match layout.open_links() {
        Ok(Some(dir)) => {
            let names = super::copy::names_in(&dir, &path, &mut Vec::new()).unwrap_or_default();
            for name in names {
                let name = name.to_string_lossy().into_owned();
                // A link being made to replace a wrong one, about to be renamed.
                if name.strip_prefix(STAGING_PREFIX).is_some_and(just_made) {
                    continue;
                }
                let id = link_id(&name);
                if id.is_some_and(|id| known.contains_key(&id)) {
                    continue;
                }
                links.push((id, path.join(name)));
            }
        }
        // A symlink or a file in place of `l/` is a leftover itself, deleted
        // as what it is and never followed (audit: `prune` deleted what a
        // planted `l` pointed at).
        Err(e) if layout::NotATree::of(&e).is_some() => links.push((None, path)),
        _ => {}
    }
    Ok((dirs, links))
}

/// How many leftovers a sweep locks at once (see [`super::lock_batch`]).
fn batch_size() -> usize {
    super::lock_batch(8, 1024)
}

/// Measures and deletes (as `how` says) the leftovers `taken`, each given
/// as (kind, path as found, path to delete). One that cannot be deleted is
/// returned with the reason, and the others are still deleted (audit: the
/// first failure stopped prune and check --repair, every time, with the
/// rest left).
fn delete(taken: Vec<(&'static str, PathBuf, PathBuf)>, how: Sweep) -> Vec<Swept> {
    // Read once for them all (it was read again for each: audit).
    let points = if how.delete && !taken.is_empty() {
        mount::mount_points().unwrap_or_default()
    } else {
        HashSet::new()
    };
    let mut swept = Vec::new();
    for (kind, original, trash) in taken {
        let usage = if how.measure {
            disk_usage(&trash).unwrap_or_default()
        } else {
            Usage::default()
        };
        // By what is there, not by the name: a file named like a snapshot
        // directory, a directory among the links.
        let node = Node::of(&trash);
        if how.delete {
            unmount_below(&trash, &points);
            let gone = if node == Node::Dir {
                layout::remove_tree(&trash)
            } else {
                fs::remove_file(&trash)
            };
            match gone {
                Ok(()) => {}
                // A link another prune deleted meanwhile (links have no
                // lock): not this one's.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && kind == "link" => {
                    continue;
                }
                Err(e) => {
                    swept.push(Swept::failed(kind, original, trash, e.to_string()));
                    continue;
                }
            }
        }
        swept.push(Swept {
            kind,
            path: original,
            left: trash,
            node,
            usage,
            error: None,
        });
    }
    swept
}

/// What a leftover is, by one `lstat` (not following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    Symlink,
    /// A file, or nothing that can be looked at.
    Other,
}

impl Node {
    fn of(path: &Path) -> Node {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Node::Dir,
            Ok(m) if m.file_type().is_symlink() => Node::Symlink,
            _ => Node::Other,
        }
    }
}

/// The cycles of the parent links `parent` (child to parent), each listed
/// from a member, each a child of the next. Only a damaged index has one:
/// every snapshot is made on a parent that already exists.
pub fn parent_cycles<K: Copy + Eq + Hash + Ord>(parent: &HashMap<K, K>) -> Vec<Vec<K>> {
    let mut starts: Vec<K> = parent.keys().copied().collect();
    starts.sort();
    let mut done: HashSet<K> = HashSet::new();
    let mut cycles = Vec::new();
    for start in starts {
        // The walk from `start`, and where each of its steps is in it.
        let mut path: Vec<K> = Vec::new();
        let mut on_path: HashMap<K, usize> = HashMap::new();
        let mut at = Some(start);
        while let Some(here) = at {
            if done.contains(&here) {
                break;
            }
            if let Some(&i) = on_path.get(&here) {
                cycles.push(path[i..].to_vec());
                break;
            }
            on_path.insert(here, path.len());
            path.push(here);
            at = parent.get(&here).copied();
        }
        done.extend(path);
    }
    cycles
}

/// What [`claim`] found.
enum Claim {
    /// Locked by this process, until the file is dropped.
    Held(fs::File),
    /// Another process holds its lock: it is working on it.
    Busy,
    /// Not there any more (its holder finished with it meanwhile).
    Gone,
    /// It could not be locked (out of file descriptors, say): neither work
    /// in progress nor a leftover, as far as this process can tell.
    Failed(std::io::Error),
}

/// Locks directory `path` unless another process holds its lock (it is
/// working on it) or it is gone. Only `EWOULDBLOCK` means held: any other
/// error is one (audit: running out of file descriptors made every
/// leftover past the limit look held, and prune skipped them silently).
fn claim(path: &Path) -> Claim {
    let dir = match fs::File::open(path) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Claim::Gone,
        Err(e) => return Claim::Failed(e),
    };
    match dir.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Claim::Busy,
        Err(fs::TryLockError::Error(e)) => return Claim::Failed(e),
    }
    // The holder waited for may have deleted it (another prune) between
    // the open and the lock: then the name is gone, or another's.
    match (dir.metadata(), fs::metadata(path)) {
        (Ok(held), Ok(now)) if held.dev() == now.dev() && held.ino() == now.ino() => {
            Claim::Held(dir)
        }
        (Err(e), _) => Claim::Failed(e),
        _ => Claim::Gone,
    }
}

/// Whether another process holds directory `path`'s lock.
fn held(path: &Path) -> bool {
    fs::File::open(path)
        .is_ok_and(|dir| matches!(dir.try_lock(), Err(fs::TryLockError::WouldBlock)))
}

/// How long after its `mkdir` a staging directory of a live process is left
/// alone even unlocked.
const JUST_MADE: Duration = Duration::from_secs(10);

/// Whether the staging directory named `new-UNIQUE` may be in the instant
/// between its builder's `mkdir` and its lock: made (by `UNIQUE`, `PID-NANOS-N`
/// as [`Layout::staging`] names them) moments ago by a live process. Even
/// trying its lock then would make its builder give it up, leaving it behind.
fn just_made(unique: &str) -> bool {
    let mut parts = unique.splitn(3, '-');
    let (Some(Ok(pid)), Some(Ok(nanos))) = (
        parts.next().map(str::parse::<i32>),
        parts.next().map(str::parse::<u128>),
    ) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    if pid <= 0 || now.saturating_sub(nanos) > JUST_MADE.as_nanos() {
        return false;
    }
    use nix::{errno::Errno, sys::signal, unistd::Pid};
    matches!(
        signal::kill(Pid::from_raw(pid), None),
        Ok(()) | Err(Errno::EPERM)
    ) && !is_zombie(pid)
}

/// Whether process `pid` has exited but is not reaped yet: `kill(pid, 0)`
/// still succeeds for it, but its locks died with it, and a parent that
/// never reaps (a container's PID 1, say) would keep its leftovers from
/// `prune` for the whole window. The state is the field after the command
/// name in `/proc/PID/stat` (the name may hold spaces and parentheses).
fn is_zombie(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.iter()
            .rposition(|b| *b == b')')
            .and_then(|end| stat.get(end + 2))
            .is_some_and(|state| matches!(state, b'Z' | b'X'))
    })
}

/// Detaches anything still mounted inside a directory about to be deleted
/// (a process killed while testing overlay support, say), so deleting never
/// reaches into a mounted tree; `points` are the mount points.
fn unmount_below(path: &Path, points: &HashSet<PathBuf>) {
    let mut below: Vec<&PathBuf> = points.iter().filter(|p| p.starts_with(path)).collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in below {
        let _ = mount::unmount(p, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made_now_by(pid: u32) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{pid}-{nanos}-0")
    }

    /// A staging directory made moments ago is left alone while its maker
    /// lives, and not once it has exited, even before its parent reaps it
    /// (a zombie: `kill(pid, 0)` still succeeds for it).
    #[test]
    fn a_zombie_maker_is_not_alive() {
        assert!(just_made(&made_now_by(std::process::id())));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut zombie = false;
        for _ in 0..500 {
            if is_zombie(pid as i32) {
                zombie = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let made = made_now_by(pid);
        let seen = just_made(&made);
        child.wait().unwrap();
        assert!(zombie, "`true` never became a zombie");
        assert!(
            !seen,
            "a zombie's staging directory was taken for live work"
        );
        assert!(!is_zombie(std::process::id() as i32));
    }
}
