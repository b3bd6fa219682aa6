//! Resource faults: a full disk in the middle of prepare, commit and the
//! native driver's copy gives a clean error and nothing half-made; a corrupt
//! index or one from a newer strata is a clear error, never rewritten.

use crate::support::*;
use std::fs;
use std::io::Write;
use std::process::Command;

/// A small tmpfs holding the store; unmounted when dropped.
struct SmallDisk {
    guard: MountGuard,
}

fn small_disk(store: &Store, size: &str) -> SmallDisk {
    let dir = store.scratch_dir("small");
    let guard = MountGuard::new(&dir);
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot mount a small tmpfs");
    SmallDisk { guard }
}

/// Fills the filesystem at `dir` until writes fail; returns the filler.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let block = vec![7u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

fn strata_at(store: &Store, root: &std::path::Path, args: &[&str]) -> Run {
    let mut all = vec!["--root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    store.strata_with(
        &all,
        With {
            no_root: true,
            ..Default::default()
        },
    )
}

#[test]
fn native_copy_on_a_full_disk_fails_cleanly() {
    if !require_root_and_overlay() {
        return;
    }
    let store = Store::uninitialized("native");
    let disk = small_disk(&store, "8m");
    let root = disk.guard.join("store");
    let s = |args: &[&str]| strata_at(&store, &root, args);
    s(&["init", "--driver", "native"]).success();
    s(&["prepare", "w"]).success();
    let dir = {
        let run = s(&["mounts", "--json", "w"]).success();
        std::path::PathBuf::from(run.json()[0]["source"].as_str().unwrap())
    };
    fs::write(dir.join("big"), vec![1u8; 3 << 20]).unwrap();
    s(&["commit", "base", "w"]).success();
    s(&["prepare", "c1", "base"]).success();
    // The second copy does not fit.
    let run = s(&["prepare", "c2", "base"]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(run.stderr.contains("No space left"), "{}", run.session());
    let ls = s(&["ls", "--json"]).success().json();
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "c1"], "nothing half-made");
    let dirs: Vec<String> = fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), 2, "no leftover directories: {dirs:?}");
    s(&["check"]).success();
    // Room again: it works.
    s(&["rm", "c1"]).success();
    s(&["prepare", "c2", "base"]).success();
}

#[test]
fn full_disk_during_prepare_and_commit_changes_nothing() {
    for driver in ["overlay", "native"] {
        if !require_root_and_overlay() {
            return;
        }
        let store = Store::uninitialized(driver);
        let disk = small_disk(&store, "4m");
        let root = disk.guard.join("store");
        let s = |args: &[&str]| strata_at(&store, &root, args);
        s(&["init", "--driver", driver]).success();
        s(&["prepare", "a"]).success();
        s(&["commit", "base", "a"]).success();
        s(&["prepare", "act", "base"]).success();
        let before = s(&["ls", "--json"]).success().stdout;
        let filler = fill(&disk.guard.path);
        let layer = store.scratch("layer.tar");
        let src = store.scratch_dir("layer-src");
        fs::write(src.join("big"), vec![3u8; 1 << 20]).unwrap();
        tar_dir(&src, &layer, &[]);
        let layer = layer.to_str().unwrap().to_string();
        for args in [
            vec!["apply", "applied", "base", &layer],
            vec!["prepare", "new", "base"],
            vec!["commit", "done", "act"],
            vec!["view", "v", "base"],
            vec!["label", "base", "k=v"],
        ] {
            let run = s(&args);
            // Either it fit (tmpfs directories need no blocks) or it failed
            // cleanly; in both cases the store stays consistent.
            assert!(matches!(run.code, 0 | 1), "{}", run.session());
            if run.code == 1 {
                assert!(run.stderr.starts_with("error: "), "{}", run.session());
            }
        }
        fs::remove_file(filler).unwrap();
        s(&["prune"]).success();
        s(&["check"]).success();
        let after = s(&["ls", "--json"]).success().json();
        for v in after.as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            assert!(
                ["base", "act", "new", "done", "v"].contains(&name),
                "{name}"
            );
        }
        // The active snapshot is still whole (or was committed whole).
        let names: Vec<&str> = after
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"act") != names.contains(&"done"),
            "{before}"
        );
    }
}

/// Runs SQL on the index with another SQLite (Python's), as a tool or a
/// newer strata would; `wal_checkpoint(TRUNCATE)` first, so the main file
/// holds everything.
fn sqlite(index: &std::path::Path, sql: &str) {
    let script = format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.executescript({:?}); c.commit(); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()",
        index.to_str().unwrap(),
        sql
    );
    let ok = Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "python3 sqlite3 failed");
}

fn write_at(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// An export that runs out of room removes the layout directory it made,
/// and leaves one that was there before as it was.
#[test]
fn export_to_a_full_disk_leaves_no_half_made_layout() {
    let Some(s) = Store::setup("native") else {
        return;
    };
    s.strata(&["prepare", "w"]).success();
    let dir = {
        let run = s.strata(&["mounts", "--json", "w"]).success();
        std::path::PathBuf::from(run.json()[0]["source"].as_str().unwrap())
    };
    // Incompressible, and larger than the disk.
    let mut noise = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
    fs::write(dir.join("noise"), noise).unwrap();
    s.strata(&["commit", "c", "w"]).success();
    let disk = small_disk(&s, "256k");
    let layout = disk.guard.join("layout");
    let run = s.fails(&["export", "c", layout.to_str().unwrap()], "internal");
    assert!(run.stderr.contains("No space left"), "{}", run.session());
    assert!(
        !layout.exists(),
        "a failed export left {}",
        layout.display()
    );
    // A layout that was there keeps what it had.
    let kept = disk.guard.join("kept");
    fs::create_dir(&kept).unwrap();
    fs::write(kept.join("mine"), "mine").unwrap();
    s.fails(&["export", "c", kept.to_str().unwrap()], "internal");
    assert_eq!(fs::read_to_string(kept.join("mine")).unwrap(), "mine");
}

#[test]
fn corrupt_index_is_an_error_and_is_not_rewritten() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "a"]).success();
    let index = store.root.join("index.db");
    sqlite(&index, "");
    write_at(&index, 0, b"this is not a database, it is garbage....");
    let before = fs::read(&index).unwrap();
    let run = store.strata(&["ls"]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(run.stderr.contains("corrupt"), "{}", run.session());
    assert_eq!(
        run.stderr.lines().next().unwrap().matches("error:").count(),
        1
    );
    store.strata(&["prepare", "b"]).fails_with(1, "corrupt");
    assert_eq!(fs::read(&index).unwrap(), before, "the index was modified");
}

#[test]
fn index_from_a_newer_strata_is_refused_untouched() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "a"]).success();
    let index = store.root.join("index.db");
    sqlite(&index, "PRAGMA user_version = 99;");
    let before = fs::read(&index).unwrap();
    for args in [vec!["ls"], vec!["prepare", "b"], vec!["check"]] {
        let run = store.strata(&args);
        assert_eq!(run.code, 1, "{}", run.session());
        assert!(run.stderr.contains("newer"), "{}", run.session());
    }
    let json = store.strata(&["-o", "json", "ls"]);
    assert!(
        json.stderr.contains("\"kind\":\"internal\""),
        "{}",
        json.session()
    );
    assert_eq!(fs::read(&index).unwrap(), before, "the index was modified");
}

#[test]
fn an_older_index_is_migrated_in_place() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "a"]).success();
    store.strata(&["commit", "base", "a"]).success();
    // Back to schema 1, as the first release wrote it.
    let index = store.root.join("index.db");
    sqlite(
        &index,
        "DROP TABLE layer_digests; ALTER TABLE mounts DROP COLUMN mount_identity;
         ALTER TABLE mounts DROP COLUMN mount_id; PRAGMA user_version = 1;",
    );
    assert_eq!(store.names(&[]), vec!["base"]);
    store.strata(&["check"]).success();
    // Schema 2 is there: remembered digests work.
    let out = store.scratch("l.tar");
    store
        .strata(&["diff", "base", "--output-file", out.to_str().unwrap()])
        .success();
}

/// Bytes 18 and 19 of an SQLite file: 2 in WAL mode, 1 with a rollback journal.
fn journal_bytes(index: &std::path::Path) -> [u8; 2] {
    let header = fs::read(index).unwrap();
    [header[18], header[19]]
}

/// A store an earlier strata left in WAL mode keeps working while another
/// process has it open, and switches to the rollback journal (its -wal and
/// -shm files gone) the first time a process has it to itself.
#[test]
fn a_wal_mode_index_switches_to_the_journal_when_alone() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "a"]).success();
    let index = store.root.join("index.db");
    assert_eq!(
        journal_bytes(&index),
        [1, 1],
        "a new store has a rollback journal"
    );
    sqlite(&index, "PRAGMA journal_mode = WAL;");
    assert_eq!(journal_bytes(&index), [2, 2], "the fixture is in WAL mode");

    // Another process holds the WAL-mode index open (a reader in WAL mode):
    // strata cannot switch, and works in WAL mode meanwhile.
    let holder_script = format!(
        "import sqlite3, sys; c = sqlite3.connect({:?}); c.execute('SELECT count(*) FROM snapshots').fetchall(); print('open', flush=True); sys.stdin.read()",
        index.to_str().unwrap()
    );
    let mut holder = Command::new("python3")
        .args(["-c", &holder_script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "open");
    store.strata(&["commit", "base", "a"]).success();
    store.strata(&["prepare", "b", "base"]).success();
    assert_eq!(journal_bytes(&index), [2, 2], "still WAL while shared");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());

    // Alone: the next command switches, and the data is all there.
    assert_eq!(store.names(&[]), vec!["b", "base"]);
    assert_eq!(journal_bytes(&index), [1, 1]);
    assert!(!store.root.join("index.db-wal").exists());
    assert!(!store.root.join("index.db-shm").exists());
    store.strata(&["check"]).success();
}

/// `check` finds the store consistent, and no directory is left under
/// `snapshots/` (nor any short link).
#[track_caller]
fn empty_and_consistent(store: &Store) {
    store.strata(&["check"]).success();
    assert_eq!(store.names(&[]), Vec::<String>::new());
    assert_eq!(store.snapshot_dirs(), Vec::<String>::new());
    let links = store.root.join("l");
    if links.exists() {
        assert_eq!(fs::read_dir(&links).unwrap().count(), 0, "links left");
    }
}

/// `rm -r` of a subtree of 1,500 snapshots under `ulimit -n 256`: it goes
/// in batches, each holding its own locks, so it succeeds (audit: it held
/// a lock, an open directory, on every snapshot, and failed with "No file
/// descriptors available" past ~1,000 under `ulimit -n 1024`, removing
/// nothing). A snapshot mounted anywhere in the subtree (here one the last
/// batch would reach) refuses the whole `rm -r` before anything goes.
#[test]
fn rm_r_of_a_big_subtree_under_a_low_file_limit() {
    let store = setup!("overlay");
    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    // Leaves first, then by id, newest first: `a0` is among the last to go.
    for i in 0..1_496 {
        store
            .strata(&["-q", "prepare", &format!("a{i}"), "base"])
            .success();
    }
    store.strata(&["prepare", "m", "base"]).success();
    store.strata(&["commit", "mid", "m"]).success();
    store.strata(&["prepare", "leaf", "mid"]).success();
    store.strata(&["view", "look", "mid"]).success();
    let all = store.names(&[]).len();
    assert_eq!(all, 1_500);
    let guard = store.mount("a0");
    let refused = store
        .with_file_limit(256, &["-o", "json", "rm", "-r", "base"])
        .fails_json("failed_precondition");
    let message = refused.json_error()["message"].to_string();
    assert!(message.contains("`a0` is mounted"), "{}", refused.session());
    assert_eq!(store.names(&[]).len(), all, "nothing removed");
    store.strata(&["check"]).success();

    let rm = store
        .with_file_limit(256, &["rm", "-r", "-f", "base"])
        .success();
    assert_eq!(
        rm.stderr.matches("removed `").count(),
        all,
        "{}",
        rm.session()
    );
    assert!(!is_mount_point(&guard.join(".")), "a0 still mounted");
    empty_and_consistent(&store);
}

/// Removing a snapshot whose tree nests 1,500 directories, its paths far
/// longer than `PATH_MAX`, under `ulimit -n 256` (audit: std's
/// `remove_dir_all` keeps a directory open per level, so `rm` failed with
/// "os error 24" past ~1,000 levels under `ulimit -n 1024`, and left an
/// `rm-*` directory that prune could not delete either).
fn rm_of_a_deep_tree_under_a_low_file_limit(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    store.strata(&["prepare", "uc"]).success();
    let top = writable_dir(&store, "uc");
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY;
    let mode = rustix::fs::Mode::from_raw_mode(0o755);
    let mut dir = rustix::fs::open(&top, flags, rustix::fs::Mode::empty()).unwrap();
    for _ in 0..1_500 {
        let file = rustix::fs::openat(
            &dir,
            "f",
            rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
            mode,
        )
        .unwrap();
        drop(file);
        rustix::fs::mkdirat(&dir, "level-12345", mode).unwrap();
        dir = rustix::fs::openat(&dir, "level-12345", flags, rustix::fs::Mode::empty()).unwrap();
    }
    drop(dir);
    store.with_file_limit(256, &["rm", "uc"]).success();
    empty_and_consistent(&store);
}

/// `rm -r` of a subtree of 100 snapshots whose trees each nest 20
/// directories, so that deleting one keeps the remover's 16 directories
/// open: under a soft limit of 32 open files (the hard one kept), which
/// strata raises to the hard limit as Go does for every program; and
/// under `ulimit -n 36`, soft and hard, where batches are sized so that a
/// batch's locks, the remover's directories and the index fit (audit: a
/// batch of 16 locks did not, and `rm -r` failed with "No file
/// descriptors available" after some batches).
fn rm_r_of_deep_trees_under_a_tiny_file_limit(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    let deep: std::path::PathBuf = (1..=20).map(|i| i.to_string()).collect();
    // Soft 32 (hard kept), then soft and hard 36.
    for hard in [false, true] {
        store.strata(&["prepare", "b"]).success();
        store.strata(&["commit", "base", "b"]).success();
        for i in 0..100 {
            let key = format!("a{i}");
            store.strata(&["-q", "prepare", &key, "base"]).success();
            fs::create_dir_all(writable_dir(&store, &key).join(&deep)).unwrap();
        }
        let run = if hard {
            store.with_file_limit(36, &["rm", "-r", "base"])
        } else {
            store.with_open_files(32, &["rm", "-r", "base"])
        };
        let run = run.success();
        assert_eq!(run.stderr.matches("removed `").count(), 101);
        empty_and_consistent(&store);
    }
}

both_drivers!(
    rm_of_a_deep_tree_under_a_low_file_limit,
    rm_r_of_deep_trees_under_a_tiny_file_limit,
    rm_of_a_snapshot_with_a_mount_inside
);

/// A file system mounted by hand inside a snapshot's tree refuses its `rm`
/// (and `rm -r` of a subtree holding it) before anything is removed; what
/// the mount shows is untouched, and once it is unmounted the `rm` goes
/// through (audit: `rm` deleted every file of the bind's source, then
/// failed with the row gone and an `rm-*` directory left).
fn rm_of_a_snapshot_with_a_mount_inside(driver: &str) {
    let store = setup!(driver);
    let source = store.scratch_dir("source");
    fs::write(source.join("precious"), "keep").unwrap();
    store.strata(&["prepare", "base-work"]).success();
    store.strata(&["commit", "base", "base-work"]).success();
    store.strata(&["prepare", "a", "base"]).success();
    let point = writable_dir(&store, "a").join("mnt");
    fs::create_dir(&point).unwrap();
    let guard = MountGuard::new(&point);
    let status = Command::new("mount")
        .args(["--bind", source.to_str().unwrap(), point.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    for args in [&["rm", "a"][..], &["rm", "-r", "-f", "base"]] {
        let run = store.fails(args, "failed_precondition");
        assert!(
            run.stderr.contains("mounted inside it"),
            "{}",
            run.session()
        );
        assert_eq!(store.names(&[]), ["a", "base"], "{}", run.session());
        assert_eq!(fs::read_to_string(source.join("precious")).unwrap(), "keep");
    }
    drop(guard);
    store.strata(&["rm", "-r", "base"]).success();
    assert!(store.names(&[]).is_empty());
    assert_eq!(fs::read_to_string(source.join("precious")).unwrap(), "keep");
    store.strata(&["check"]).success();
}
