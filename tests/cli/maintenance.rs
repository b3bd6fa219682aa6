//! `prune` and `check` on hand-made damage: each kind of leftover and
//! mismatch is found, reported one line each (or as JSON), repaired where
//! safe, and a snapshot still being built is never touched.

use crate::support::*;
use std::fs;

fn store(driver: &str) -> Store {
    let s = Store::uninitialized(driver);
    s.strata(&["init", "--driver", driver]).success();
    s.strata(&["prepare", "w"]).success();
    fs::write(writable_dir(&s, "w").join("f"), vec![1u8; 10_000]).unwrap();
    s.strata(&["commit", "base", "w"]).success();
    s.strata(&["prepare", "act", "base"]).success();
    s
}

/// Which snapshot directory [`snapshot_dir`] names, by id.
enum ById {
    Oldest,
    Newest,
}
use ById::*;

/// The name under `snapshots/` of the store's oldest (`base` in [`store`])
/// or newest snapshot.
fn snapshot_dir(s: &Store, which: ById) -> String {
    let ids = s
        .snapshot_dirs()
        .into_iter()
        .filter_map(|d| d.parse::<u64>().ok());
    let id = match which {
        Oldest => ids.min(),
        Newest => ids.max(),
    };
    id.unwrap().to_string()
}

fn prune_finds_every_leftover(driver: &str) {
    let s = store(driver);
    let snaps = s.root.join("snapshots");
    fs::create_dir_all(snaps.join("999/fs")).unwrap();
    fs::write(snaps.join("999/fs/data"), vec![0u8; 50_000]).unwrap();
    fs::create_dir(snaps.join("new-1-2-3")).unwrap();
    fs::create_dir(snaps.join("rm-4-5-6")).unwrap();
    // A staging directory whose builder is alive (holds the lock) stays.
    fs::create_dir(snaps.join("new-alive")).unwrap();
    let lock = HeldLock::on(&snaps.join("new-alive"));

    let dry = s
        .strata(&["prune", "--dry-run", "-o", "json"])
        .success()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["count"], 3, "{dry}");
    assert!(dry["size"].as_u64().unwrap() >= 50_000, "{dry}");
    let kinds: Vec<&str> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    for k in ["orphan", "staging", "trash"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    assert!(snaps.join("999").exists(), "a dry run deletes nothing");

    let check = s.strata(&["check"]);
    assert_eq!(check.code, 1, "{}", check.session());
    assert_eq!(
        check.stdout.lines().count(),
        3,
        "one line per problem:\n{}",
        check.stdout
    );

    let run = s.strata(&["prune"]).success();
    assert!(run.stdout.contains("freed 3 leftovers"), "{}", run.stdout);
    assert!(
        !snaps.join("999").exists()
            && !snaps.join("new-1-2-3").exists()
            && !snaps.join("rm-4-5-6").exists()
    );
    assert!(
        snaps.join("new-alive").exists(),
        "a live builder's directory was deleted"
    );
    s.strata(&["check"]).success();
    drop(lock);
    let run = s.strata(&["prune"]).success();
    assert!(run.stdout.contains("freed 1 leftover"), "{}", run.stdout);
    assert_eq!(s.names(&[]), vec!["act", "base"]);
}

fn check_reports_and_repairs(driver: &str) {
    if !require_root_and_overlay() {
        return;
    }
    let s = store(driver);
    s.strata(&["prepare", "leaf"]).success();
    // Damage: the leaf's directory (the newest id) vanishes.
    let leaf_id = s
        .snapshot_dirs()
        .iter()
        .map(|d| d.parse::<u64>().unwrap())
        .max()
        .unwrap();
    fs::remove_dir_all(s.root.join("snapshots").join(leaf_id.to_string())).unwrap();
    // A mount record whose mount is gone.
    let m = s.mount("act");
    umount_by_hand(&m.path);
    let act_work = if driver == "overlay" {
        // The active's work directory vanishes.
        let upper = writable_dir(&s, "act");
        let work = upper.parent().unwrap().join("work");
        fs::remove_dir_all(&work).unwrap();
        Some(work)
    } else {
        None
    };

    let run = s.strata(&["check", "-o", "json"]);
    assert_eq!(run.code, 1, "{}", run.session());
    let report = run.json();
    assert_eq!(report["consistent"], false);
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"missing-directory"), "{kinds:?}");
    assert!(kinds.contains(&"stale-mount-record"), "{kinds:?}");
    if act_work.is_some() {
        assert!(kinds.contains(&"bad-shape"), "{kinds:?}");
    }
    let run = s.strata(&["check"]);
    assert!(run.stderr.contains("--repair"), "a hint: {}", run.stderr);

    let repaired = s.strata(&["check", "--repair"]);
    assert_eq!(repaired.code, 0, "{}", repaired.session());
    assert!(
        repaired.stdout.lines().all(|l| l.starts_with("repaired ")),
        "{}",
        repaired.stdout
    );
    // Each repaired line says what was done, the dropped record too.
    assert!(
        repaired
            .stdout
            .contains("which is not mounted; the record was dropped\n"),
        "{}",
        repaired.stdout
    );
    s.strata(&["check"]).success();
    assert!(
        !s.names(&[]).contains(&"leaf".to_string()),
        "the leaf's dead row was removed"
    );
    if let Some(work) = act_work {
        assert!(work.is_dir(), "the work directory was recreated");
        let m = s.mount("act");
        fs::write(m.join("x"), "x").unwrap();
    }
}

fn check_cannot_repair_a_missing_parent(driver: &str) {
    let s = store(driver);
    let base_id = snapshot_dir(&s, Oldest);
    fs::remove_dir_all(s.root.join("snapshots").join(base_id)).unwrap();
    let run = s.strata(&["check", "--repair"]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(run.stdout.contains("missing-directory"), "{}", run.stdout);
    assert!(run.stderr.contains("1 problem left"), "{}", run.stderr);
}

/// Label, mount and digest rows of a snapshot that does not exist (an index
/// edited with foreign keys off) are reported by table, and `--repair`
/// deletes them (audit: one unnamed line, and the rows stayed).
fn rows_of_no_snapshot(driver: &str) {
    let s = store(driver);
    python_sql(
        &s,
        "INSERT INTO labels (snapshot_id, key, value) VALUES (999, 'k', 'v')",
    );
    s.strata(&["check"])
        .fails_reporting(1, "1 rows of `labels` belong to no snapshot");
    let run = s.strata(&["check", "--repair"]).success();
    assert!(
        run.stdout.contains("they were deleted"),
        "{}",
        run.session()
    );
    assert_eq!(
        python_sql(&s, "SELECT count(*) FROM labels WHERE snapshot_id = 999"),
        "0"
    );
    s.strata(&["check"]).success();
}

/// A damaged index is reported as such, and nothing else is read from it or
/// repaired with it: not a bare "malformed" error (audit).
fn a_damaged_index_is_reported(driver: &str) {
    let s = store(driver);
    let page: u64 = python_sql(
        &s,
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_snapshots_1'",
    )
    .parse()
    .unwrap();
    let before = s.snapshot_dirs();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(s.root.join("index.db"))
            .unwrap();
        f.seek(SeekFrom::Start((page - 1) * 4096 + 8)).unwrap();
        f.write_all(&[0xff; 64]).unwrap();
    }
    for args in [&["check"][..], &["check", "--repair"]] {
        let run = s.strata(args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.session());
        assert!(
            run.stdout.starts_with("index-corrupt: index: "),
            "{args:?}: {}",
            run.session()
        );
        assert!(
            run.stderr.contains("restore index.db from a backup"),
            "{args:?}: {}",
            run.session()
        );
        assert!(
            run.stdout.contains("nothing else was checked or repaired"),
            "{args:?}: {}",
            run.session()
        );
    }
    assert_eq!(s.snapshot_dirs(), before);
}

/// Paths are shown with control characters escaped: a leftover named with
/// a newline is one line of `check` and of `prune`, and cannot fake a
/// `consistent` line (audit).
fn control_characters_in_reports(driver: &str) {
    let s = store(driver);
    fs::create_dir(s.root.join("snapshots/rm-x\nconsistent\x1b[2J")).unwrap();
    let run = s.strata(&["check"]);
    assert_eq!(run.code, 1, "{}", run.session());
    let lines = run.stdout_lines();
    assert_eq!(lines.len(), 1, "{}", run.session());
    assert!(
        lines[0].contains("rm-x\\nconsistent\\u{1b}[2J"),
        "{}",
        run.session()
    );
    let run = s.strata(&["prune"]).success();
    assert_eq!(run.stdout_lines().len(), 2, "{}", run.session());
    assert!(!run.stdout.contains('\x1b'), "{}", run.session());
    s.strata(&["check"]).success();
}

/// A kind strata does not know (an index edited past its constraints) is
/// `index-corrupt` for `check` and an error naming the snapshot for every
/// other command, never taken for `active`: `check --repair` gave that
/// committed layer a work directory and `mount` mounted it read-write
/// (audit).
fn an_unknown_kind_is_not_active(driver: &str) {
    let s = store(driver);
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1])\n\
                  c.execute('PRAGMA ignore_check_constraints = ON')\n\
                  c.execute(\"UPDATE snapshots SET kind = 'Committed' WHERE name = 'base'\")\n\
                  c.commit()";
    run_ok(
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(s.root.join("index.db")),
        "edit the kind",
    );
    // `check` sees the broken constraint in SQLite's integrity check, and
    // stops there.
    s.strata(&["check", "--repair"])
        .fails_reporting(1, "CHECK constraint failed");
    for args in [&["info", "base"][..], &["mounts", "base"]] {
        let run = s.strata(args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.session());
        assert!(
            run.stderr.contains("has kind \"Committed\""),
            "{args:?}: {}",
            run.session()
        );
    }
    let base = snapshot_dir(&s, Oldest);
    assert!(!s.root.join("snapshots").join(base).join("work").exists());
}

/// A leftover is deleted by what it is, not by its name: a file named like a
/// half-removed snapshot, a directory among the short links. (Audit: each
/// made prune and `check --repair` fail every time, with the rest left.)
fn leftovers_of_the_wrong_type(driver: &str) {
    let s = store(driver);
    let snaps = s.root.join("snapshots");
    fs::write(snaps.join("rm-file"), "junk").unwrap();
    fs::write(snaps.join("99"), "junk").unwrap();
    fs::create_dir_all(snaps.join("77/fs")).unwrap();
    fs::create_dir_all(s.root.join("l/zz")).unwrap();
    std::os::unix::fs::symlink("/etc", snaps.join("98")).unwrap();
    // Each called what it is (audit: a file was "a directory", a symlink
    // "a file").
    let snaps_at = snaps.display();
    s.strata(&["check"])
        .fails_reporting(1, &format!("{snaps_at}/99 is a file with no index row\n"))
        .fails_reporting(
            1,
            &format!("{snaps_at}/98 is a symlink with no index row\n"),
        )
        .fails_reporting(
            1,
            &format!("{snaps_at}/77 is a directory with no index row\n"),
        );
    let run = s.strata(&["prune", "--json"]).success();
    let report = run.json();
    assert_eq!(report["count"], 5, "{}", run.session());
    assert_eq!(report["failed"], serde_json::json!([]), "{}", run.session());
    assert!(std::path::Path::new("/etc/passwd").exists());
    for gone in [
        snaps.join("rm-file"),
        snaps.join("99"),
        snaps.join("98"),
        snaps.join("77"),
        s.root.join("l/zz"),
    ] {
        assert!(
            fs::symlink_metadata(&gone).is_err(),
            "{} is left",
            gone.display()
        );
    }
    fs::write(snaps.join("rm-again"), "junk").unwrap();
    let repaired = s.strata(&["check", "--repair"]).success();
    let line = format!(
        "repaired leftover: {snaps_at}/rm-again is a half-removed snapshot; it was deleted\n"
    );
    assert!(repaired.stdout.contains(&line), "{}", repaired.session());
    s.strata(&["check"]).success();
    assert_eq!(s.names(&[]), ["act", "base"]);
    // Names strata never gives are not snapshots' (`007` read as 7 was
    // taken for snapshot 7's directory, or deleted as an orphan).
    let base = snapshot_dir(&s, Oldest);
    for name in [format!("00{base}"), format!("+{base}"), "0099".to_string()] {
        fs::create_dir(snaps.join(&name)).unwrap();
        fs::write(snaps.join(&name).join("mine"), "mine").unwrap();
    }
    s.strata(&["prune"]).success();
    s.strata(&["check"]).success();
    for name in [format!("00{base}"), format!("+{base}"), "0099".to_string()] {
        assert!(
            snaps.join(&name).join("mine").exists(),
            "{name} was deleted"
        );
    }
}

/// `check --repair` forgets a leaf only when its directory is not there:
/// not when every snapshot's directory is gone at once (`snapshots/` moved,
/// or on a disk not mounted yet), and not when the directory is something
/// else (a symlink out of the layout). Once `snapshots/` is back, nothing
/// was lost. (Audit: it forgot every leaf, and the next `prune` deleted
/// their data when it came back.)
fn check_forgets_no_snapshot_whose_data_may_be_there(driver: &str) {
    let s = store(driver);
    let snaps = s.root.join("snapshots");
    let away = s.root.join("snapshots.away");
    fs::rename(&snaps, &away).unwrap();
    // Not made again empty, for new snapshots to land on the wrong disk
    // (audit: `prepare` made it and went on).
    for args in [&["prepare", "new"][..], &["ls"], &["check"]] {
        s.strata(args)
            .fails_with(1, "it has an index but no snapshots/ directory")
            .fails_with(1, "`strata check` then lists with `strata rm -r`");
    }
    assert!(!snaps.exists(), "snapshots/ was made again");
    fs::create_dir(&snaps).unwrap();
    // An empty `snapshots/` (a mount point whose disk is not mounted) takes
    // no new snapshot either, whether on a parent or not.
    for args in [&["prepare", "new"][..], &["prepare", "new", "base"]] {
        s.strata(args)
            .fails_with(1, "holds none of their directories")
            .fails_with(1, "mount it;");
    }
    assert_eq!(
        fs::read_dir(&snaps).unwrap().count(),
        0,
        "a snapshot was made"
    );
    s.strata(&["check", "--repair"]).fails_reporting(
        1,
        "not repaired: no snapshot of the store has its directory",
    );
    assert_eq!(s.names(&[]), ["act", "base"]);
    fs::remove_dir(&snaps).unwrap();
    fs::rename(&away, &snaps).unwrap();
    s.strata(&["prune"]).success();
    s.strata(&["check"]).success();
    let base = snapshot_dir(&s, Oldest);
    assert_eq!(
        fs::read(snaps.join(base).join("fs/f")).unwrap(),
        vec![1u8; 10_000]
    );

    // The active's directory swapped for a symlink to a copy elsewhere.
    let act = snapshot_dir(&s, Newest);
    let elsewhere = s.scratch("elsewhere");
    fs::rename(snaps.join(&act), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, snaps.join(&act)).unwrap();
    s.strata(&["check", "--repair"])
        .fails_reporting(1, "is a symlink; left as it is");
    assert_eq!(s.names(&[]), ["act", "base"]);
    fs::remove_file(snaps.join(&act)).unwrap();
    fs::rename(&elsewhere, snaps.join(&act)).unwrap();
    s.strata(&["check"]).success();
}

/// An index that is gone or emptied is not a new store: nothing is created
/// over the snapshot directories still there, whatever the command.
fn a_lost_index_is_refused(driver: &str) {
    let s = store(driver);
    let index = s.root.join("index.db");
    let dirs = s.snapshot_dirs();
    for lose in ["remove", "empty"] {
        match lose {
            "remove" => fs::remove_file(&index).unwrap(),
            _ => fs::write(&index, b"").unwrap(),
        }
        for args in [&["prepare", "z"][..], &["ls"], &["init"]] {
            s.strata(args).fails_with(
                1,
                "is missing or empty, but the store holds snapshot directories",
            );
        }
        assert_eq!(s.snapshot_dirs(), dirs, "{lose}: no directory touched");
        if lose == "remove" {
            assert!(!index.exists(), "a refused command made an empty index");
        }
        let _ = fs::remove_file(&index);
    }
}

/// Runs `statement` on the store's index with python3's sqlite3 module;
/// returns the first column of the first row, if any.
fn python_sql(s: &Store, statement: &str) -> String {
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1])\n\
                  r = c.execute(sys.argv[2]).fetchone()\n\
                  c.commit()\n\
                  print(r[0] if r else '')";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(s.root.join("index.db"))
        .arg(statement)
        .output()
        .expect("neither sqlite3 nor python3 to edit the index");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Edits the index by hand: the `sqlite3` shell, or python3's sqlite3.
fn sql(s: &Store, statement: &str) {
    let shell = std::process::Command::new("sqlite3")
        .arg(s.root.join("index.db"))
        .arg(statement)
        .status();
    match shell {
        Ok(status) => assert!(status.success(), "sqlite3 {statement}"),
        Err(_) => {
            python_sql(s, statement);
        }
    }
}

/// What another process holds the lock of is work in progress, not damage:
/// a `new-*` being built, a row-less directory an `rm` has yet to rename
/// (and its link), an `rm-*` it is deleting, the work directory a `commit`
/// is removing. `check` (even `--repair`) and `prune` leave them alone; once
/// the locks are gone (as when their process is killed) they are leftovers,
/// reported and deleted.
fn locked_work_in_progress_is_left_alone(driver: &str) {
    let s = store(driver);
    let snaps = s.root.join("snapshots");
    // The oldest snapshot.
    let base = snapshot_dir(&s, Oldest);
    fs::create_dir_all(snaps.join("999/fs")).unwrap();
    fs::create_dir_all(s.root.join("l")).unwrap();
    // 999 in base 36.
    std::os::unix::fs::symlink("../snapshots/999/fs", s.root.join("l/rr")).unwrap();
    fs::create_dir_all(snaps.join("rm-by-hand/fs")).unwrap();
    fs::create_dir_all(snaps.join("new-by-hand/fs")).unwrap();
    fs::create_dir(snaps.join(&base).join("work")).unwrap();
    let held = ["999", "rm-by-hand", "new-by-hand", &base];
    let locks: Vec<HeldLock> = held.iter().map(|d| HeldLock::on(&snaps.join(d))).collect();

    let check = s.strata(&["check"]).success();
    assert_eq!(check.stdout, "consistent\n", "{}", check.session());
    s.strata(&["check", "--repair"]).success();
    let run = s.strata(&["prune"]).success();
    assert!(run.stdout.contains("freed 0 leftovers"), "{}", run.stdout);
    for d in held {
        assert!(snaps.join(d).is_dir(), "{d} was touched");
    }
    assert!(snaps.join(&base).join("work").is_dir());
    assert!(s.root.join("l/rr").symlink_metadata().is_ok());

    drop(locks);
    let run = s.strata(&["check", "-o", "json"]);
    assert_eq!(run.code, 1, "{}", run.session());
    let report = run.json();
    let mut kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "leftover",
            "leftover",
            "leftover",
            "leftover",
            "orphan-directory"
        ],
        "{report}"
    );
    let run = s.strata(&["prune"]).success();
    assert!(run.stdout.contains("freed 5 leftovers"), "{}", run.stdout);
    s.strata(&["check"]).success();
    assert_eq!(s.names(&[]), vec!["act", "base"]);
}

/// Any number of leftovers is listed, deleted and checked with few file
/// descriptors: 1,500 row-less directories (100 with their short links),
/// 100 half-made and 100 half-removed snapshots, under `ulimit -n 256`.
/// (Audit: prune held each leftover's lock until all were deleted; past the
/// limit the rest were taken for work in progress, so `prune --dry-run`
/// listed 1,016 of 9,855, `check` reported as many, and `prune` failed on
/// those and freed none, every run.)
fn many_leftovers_in_few_files(driver: &str) {
    let s = store(driver);
    let snaps = s.root.join("snapshots");
    let links = s.root.join("l");
    fs::create_dir_all(&links).unwrap();
    for i in 0..1500u64 {
        let id = 100_000 + i;
        fs::create_dir_all(snaps.join(format!("{id}/fs/d"))).unwrap();
        fs::write(snaps.join(format!("{id}/fs/d/f")), "x").unwrap();
        if i < 100 {
            // `id` in base 36.
            let (mut n, mut name) = (id, Vec::new());
            while n > 0 {
                name.insert(
                    0,
                    b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize],
                );
                n /= 36;
            }
            let name = String::from_utf8(name).unwrap();
            std::os::unix::fs::symlink(format!("../snapshots/{id}/fs"), links.join(name)).unwrap();
        }
    }
    for i in 0..100 {
        fs::create_dir_all(snaps.join(format!("new-1-2-{i}/fs"))).unwrap();
        fs::create_dir_all(snaps.join(format!("rm-1-2-{i}/fs"))).unwrap();
    }
    let all = 1500 + 100 + 100 + 100;

    let dry = s
        .with_file_limit(256, &["prune", "--dry-run", "-o", "json"])
        .success();
    let report = dry.json();
    assert_eq!(report["count"], all, "{}", dry.session());
    assert_eq!(report["failed"], serde_json::json!([]), "{}", dry.session());
    let check = s.with_file_limit(256, &["check"]);
    assert_eq!(check.code, 1, "{}", check.session());
    assert_eq!(check.stdout.lines().count(), all, "{}", check.session());

    let run = s.with_file_limit(256, &["prune", "-o", "json"]).success();
    let report = run.json();
    assert_eq!(report["count"], all, "{}", run.session());
    assert_eq!(report["failed"], serde_json::json!([]), "{}", run.session());
    assert_eq!(s.snapshot_dirs().len(), 2, "{:?}", s.snapshot_dirs());
    assert_eq!(fs::read_dir(&links).unwrap().count(), 0);
    s.with_file_limit(256, &["check"]).success();
    assert_eq!(s.names(&[]), vec!["act", "base"]);

    // And `check --repair` deletes them as prune does.
    for i in 0..600 {
        fs::create_dir_all(snaps.join(format!("{}/fs", 200_000 + i))).unwrap();
    }
    let run = s.with_file_limit(256, &["check", "--repair"]).success();
    assert_eq!(run.stdout.lines().count(), 600, "{}", run.session());
    s.with_file_limit(256, &["check"]).success();
    assert_eq!(s.snapshot_dirs().len(), 2, "{:?}", s.snapshot_dirs());
}

/// `strata ARGS…` killed if it runs 20 s: a walk that never ends fails the
/// test instead of hanging it.
fn bounded(s: &Store, args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NO_COLOR", "1")
        .env(CONFIG_VAR, no_config(&s.root))
        .arg("--root")
        .arg(&s.root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A cycle of parents (a hand-edited index) is a problem `check` names and
/// `--repair` leaves; every walk through it (`rm -r`, `tree`, a mount's
/// chain, export) fails as `internal` instead of running forever.
fn a_parent_cycle_is_reported_and_walks_end(driver: &str) {
    let s = store(driver);
    for (w, c, parent) in [("w1", "a", "base"), ("w2", "b", "a")] {
        s.strata(&["prepare", w, parent]).success();
        s.strata(&["commit", c, w]).success();
    }
    s.strata(&["view", "v", "b"]).success();
    sql(
        &s,
        "UPDATE snapshots SET parent_id = (SELECT id FROM snapshots WHERE name = 'b') \
         WHERE name = 'a'",
    );

    let run = s.strata(&["check"]);
    assert_eq!(run.code, 1, "{}", run.session());
    let cycles: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("parent-cycle: "))
        .collect();
    assert_eq!(cycles.len(), 1, "{}", run.stdout);
    assert!(
        cycles[0].contains("`a`") && cycles[0].contains("`b`"),
        "{}",
        cycles[0]
    );
    let report = s.strata(&["check", "-o", "json"]).json();
    let cycle: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "parent-cycle")
        .collect();
    assert_eq!(cycle.len(), 1, "{report}");
    assert_eq!(cycle[0]["snapshot"], "a", "{report}");
    assert_eq!(cycle[0]["repaired"], false, "{report}");
    let run = s.strata(&["check", "--repair"]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(
        run.stdout.starts_with("parent-cycle: ") && run.stdout.contains("cannot be repaired"),
        "{}",
        run.stdout
    );

    let export = s.scratch("export");
    for args in [
        &["rm", "-r", "a"][..],
        &["tree"],
        &["tree", "a"],
        &["mounts", "v"],
        &["export", "b", export.to_str().unwrap()],
    ] {
        let out = bounded(&s, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            err.contains("cycle") && err.contains("`a`") && err.contains("`b`"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(s.names(&[]), vec!["a", "act", "b", "base", "v"]);
}

/// A parent id with no row (an index edited with foreign keys off) stops every
/// walk of the chain as `internal`, naming the snapshot: a mount of what is
/// built on it would lack the lower layers (audit: `mounts`, `prepare` and
/// `info` went on as if it had no parent). `check` names it.
fn a_parent_with_no_row_stops_every_walk(driver: &str) {
    let s = store(driver);
    s.strata(&["prepare", "w2", "base"]).success();
    s.strata(&["commit", "mid", "w2"]).success();
    s.strata(&["view", "v", "mid"]).success();
    python_sql(
        &s,
        "UPDATE snapshots SET parent_id = 4242 WHERE name = 'mid'",
    );
    let export = s.scratch("export");
    for args in [
        &["mounts", "v"][..],
        &["prepare", "x", "mid"],
        &["export", "mid", export.to_str().unwrap()],
    ] {
        s.strata(args).fails_with(
            1,
            "error: the index is damaged: the parent of snapshot `mid` (id 4242) does not exist",
        );
    }
    assert!(!s.names(&[]).contains(&"x".to_string()), "half-made");
    let run = s.strata(&["check"]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(run.stdout.contains("broken-parent"), "{}", run.session());
}

both_drivers!(
    a_parent_with_no_row_stops_every_walk,
    a_tree_that_is_a_symlink_is_refused,
    a_lost_index_is_refused,
    prune_finds_every_leftover,
    check_reports_and_repairs,
    check_cannot_repair_a_missing_parent,
    check_forgets_no_snapshot_whose_data_may_be_there,
    leftovers_of_the_wrong_type,
    an_unknown_kind_is_not_active,
    control_characters_in_reports,
    rows_of_no_snapshot,
    a_damaged_index_is_reported,
    locked_work_in_progress_is_left_alone,
    many_leftovers_in_few_files,
    a_parent_cycle_is_reported_and_walks_end
);

/// A commit that ends while `check`, `check --repair` or `prune` sweeps (its row
/// committed, its work directory still there when the sweep looked, gone once the
/// sweep holds its lock) is no leftover: nothing reported, exit 0. (Audit: `check`
/// reported the work directory, and the others failed to delete it, exit 1.)
#[test]
fn a_commit_ending_during_a_sweep_is_no_leftover() {
    let Some(s) = Store::setup("overlay") else {
        return;
    };
    s.layer("base", None, &[file("f", "x", 0o644)]);
    for (n, sweep) in [&["check"][..], &["check", "--repair"], &["prune"]]
        .into_iter()
        .enumerate()
    {
        let act = format!("act{n}");
        s.strata(&["prepare", &act, "base"]).success();
        let name = format!("c{n}");
        let commit = Paused::start(&s, &["commit", &name, &act], "commit:committed");
        let sweeping = Paused::start(&s, sweep, "sweep:judged");
        let committed = commit.resume();
        assert!(committed.status.success(), "{committed:?}");
        let out = sweeping.resume();
        assert!(
            out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("work"),
            "{sweep:?}: {out:?}"
        );
        assert_eq!(s.info(&name)["kind"], "committed");
    }
    s.strata(&["check"]).success();
}

/// A snapshot's tree that is a symlink (`snapshots/ID/fs -> /elsewhere`,
/// which `check` calls `bad-shape`) is refused as a damaged store by
/// `mount` and `commit` of that snapshot, and by `prepare`, `view` and
/// the mounts on it when it is a parent's: the kernel would follow it and
/// the layer would be what it points at. (Audit: `mount` showed
/// /elsewhere, and `commit` made a layer of it with a usage of 0 B.)
/// `commit` of it mounted is refused before the mount is undone (review:
/// the mount was lost). So are `diff` and `export` of it, and of a
/// snapshot whose layer is read
/// against it (native: its child; overlay: a diff against another
/// snapshot, which mounts both chains), writing no layer and no blob
/// (review: `diff` wrote /elsewhere's files, and `push` published them).
fn a_tree_that_is_a_symlink_is_refused(driver: &str) {
    if !require_root_and_overlay() {
        return;
    }
    let s = store(driver);
    let elsewhere = s.scratch_dir("elsewhere");
    fs::write(elsewhere.join("outside"), "x").unwrap();
    let snaps = s.root.join("snapshots");
    // Puts the symlink in place of snapshot `id`'s tree; undone when dropped.
    struct Swapped(std::path::PathBuf);
    impl Drop for Swapped {
        fn drop(&mut self) {
            fs::remove_file(self.0.join("fs")).unwrap();
            fs::rename(self.0.join("fs.real"), self.0.join("fs")).unwrap();
        }
    }
    let swap = |id: String| {
        let dir = snaps.join(id);
        fs::rename(dir.join("fs"), dir.join("fs.real")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("fs")).unwrap();
        Swapped(dir)
    };
    let refused = |args: &[&str]| {
        let run = s.strata(args).fails_json("internal");
        let error = run.json_error();
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(" is not a directory (a symlink") && message.contains("damaged"),
            "{}",
            run.session()
        );
        assert!(
            error["hints"].to_string().contains("strata check"),
            "{}",
            run.session()
        );
    };
    let target = s.scratch("mnt");
    let t = target.to_str().unwrap();
    let _guard = MountGuard::new(&target);
    let usage = s.strata(&["usage", "--json", "act"]).success().json()[0].clone();
    // `diff KEY [--parent P]` to a file, refused, the file not written.
    let out = s.scratch("layer.tar");
    let diff_refused = |key: &str, parent: &[&str]| {
        let o = out.to_str().unwrap();
        refused(&[&["--json", "diff", key, "--output-file", o], parent].concat());
        assert!(!out.exists(), "diff {key} {parent:?} wrote a layer");
    };
    // An existing layout gets no blob; a new one is not left behind.
    let layout = s.scratch_dir("layout");
    let export_refused = |key: &str| {
        refused(&["--json", "export", key, layout.to_str().unwrap()]);
        let blobs = fs::read_dir(layout.join("blobs/sha256")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0, "export {key} wrote a blob");
        let fresh = s.scratch("fresh-layout");
        refused(&["--json", "export", key, fresh.to_str().unwrap()]);
        assert!(!fresh.exists(), "export {key} left a layout");
    };
    // Swapped while mounted: commit refuses before it unmounts anything.
    let m = s.mount("act");
    {
        let _act = swap(snapshot_dir(&s, Newest));
        refused(&["--json", "commit", "c", "act"]);
        assert!(is_mount_point(&m.path), "commit unmounted `act`");
    }
    // Looked at once the tree is back: a native bind mount of the renamed
    // tree is not the one recorded (its root in mountinfo moved with it).
    assert_eq!(s.info("act")["kind"], "active");
    // Its record kept: strata unmounts it.
    s.unmount(&m);
    {
        let _act = swap(snapshot_dir(&s, Newest));
        refused(&["--json", "mount", "act", t]);
        assert!(!is_mount_point(&target));
        refused(&["--json", "commit", "c", "act"]);
        assert_eq!(s.info("act")["kind"], "active");
        diff_refused("act", &[]);
        diff_refused("act", &["--parent", "base"]);
        s.strata(&["check"]).fails_reporting(1, "bad-shape");
    }
    s.strata(&["commit", "c", "act"]).success();
    assert_eq!(s.info("c")["usage"]["inodes"], usage["inodes"]);
    s.strata(&["prepare", "act", "base"]).success();
    s.strata(&["prepare", "w2", "c"]).success();
    s.strata(&["commit", "c2", "w2"]).success();
    {
        let _base = swap(snapshot_dir(&s, Oldest));
        refused(&["--json", "prepare", "p", "base"]);
        refused(&["--json", "view", "v", "base"]);
        if driver == "overlay" {
            refused(&["--json", "mount", "act", t]);
        }
        diff_refused("base", &[]);
        export_refused("base");
        // The image of `c` holds `base`'s layer.
        export_refused("c");
        if driver == "native" {
            // A native layer is its tree compared with its parent's.
            diff_refused("c", &[]);
        } else {
            // An overlay layer is its upper directory alone; against
            // another snapshot, both chains are mounted and compared.
            let o = out.to_str().unwrap();
            s.strata(&["diff", "c", "--output-file", o]).success();
            fs::remove_file(&out).unwrap();
            diff_refused("c2", &["--parent", "base"]);
            diff_refused("act", &["--parent", "c"]);
        }
        assert_eq!(s.names(&[]), ["act", "base", "c", "c2"]);
    }
    // The snapshot's directory itself a symlink to one with a tree (audit:
    // it was followed: `view --mount`, `export` and `diff` showed what it
    // points at).
    struct Moved(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Moved {
        fn drop(&mut self) {
            fs::remove_file(&self.0).unwrap();
            fs::rename(&self.1, &self.0).unwrap();
        }
    }
    let other = s.scratch_dir("other-snapshot");
    fs::create_dir(other.join("fs")).unwrap();
    fs::write(other.join("fs/outside"), "x").unwrap();
    let swap_dir = |id: String| {
        let dir = snaps.join(&id);
        let aside = s.scratch(&format!("aside-{id}"));
        fs::rename(&dir, &aside).unwrap();
        std::os::unix::fs::symlink(&other, &dir).unwrap();
        Moved(dir, aside)
    };
    {
        let _base = swap_dir(snapshot_dir(&s, Oldest));
        refused(&["--json", "prepare", "p", "base"]);
        refused(&["--json", "view", "v", "base"]);
        if driver == "overlay" {
            refused(&["--json", "mount", "act", t]);
        }
        diff_refused("base", &[]);
        export_refused("c");
        s.strata(&["check"]).fails_reporting(1, "bad-shape");
    }
    // A new active on `base`: the newest snapshot.
    s.strata(&["prepare", "act2", "base"]).success();
    {
        let _act = swap_dir(snapshot_dir(&s, Newest));
        refused(&["--json", "mount", "act2", t]);
        refused(&["--json", "commit", "c3", "act2"]);
        assert!(!is_mount_point(&target));
    }
    // An overlay active's work directory a symlink: the kernel would empty
    // what it points at (audit: that directory's files were deleted).
    if driver == "overlay" {
        let work = snaps.join(snapshot_dir(&s, Newest)).join("work");
        let victim = s.scratch_dir("victim");
        fs::create_dir_all(victim.join("work/sub")).unwrap();
        fs::write(victim.join("work/sub/f"), "x").unwrap();
        fs::remove_dir_all(&work).unwrap();
        std::os::unix::fs::symlink(&victim, &work).unwrap();
        refused(&["--json", "mount", "act2", t]);
        assert!(!is_mount_point(&target));
        assert!(
            victim.join("work/sub/f").exists(),
            "the mount emptied {}",
            victim.display()
        );
        fs::remove_file(&work).unwrap();
        fs::create_dir(&work).unwrap();
    }
    // `rm` of such a snapshot removes its row and unlinks the symlink,
    // never following it (review: it could not be removed at all).
    s.strata(&["prepare", "act3", "base"]).success();
    let dir = snaps.join(snapshot_dir(&s, Newest));
    fs::rename(&dir, s.scratch("act3-aside")).unwrap();
    std::os::unix::fs::symlink(&other, &dir).unwrap();
    s.strata(&["rm", "act3"]).success();
    assert!(
        other.join("fs/outside").exists(),
        "rm deleted through the link"
    );
    assert!(fs::symlink_metadata(&dir).is_err());
    s.strata(&["prepare", "p", "base"]).success();
    s.strata(&["view", "v", "base"]).success();
    let m = s.mount("v");
    assert!(m.join("f").exists() && !m.join("outside").exists());
    s.unmount(&m);
    s.strata(&["check"]).success();
}

/// An overlay store whose path holds a comma, so `mounts` prints the
/// relative form through the short links in `l/` however short the chain:
/// layers `l1` ← `l2` ← `l3`, layer i writing `f{i}` and `top` (= i), and
/// active `top` on `l3`. Returns the store and the ids of `l1`, `l2`, `l3`.
fn store_with_short_links() -> Option<(Store, Vec<u64>)> {
    let s = Store::setup_named("overlay", "st,ore")?;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let key = format!("w{i}");
        let mut args = vec!["prepare".to_string(), key.clone()];
        if i > 1 {
            args.push(format!("l{}", i - 1));
        }
        s.strata(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .success();
        // Mount options escape the store's comma.
        let dir = writable_dir(&s, &key).to_str().unwrap().replace("\\,", ",");
        let dir = std::path::Path::new(&dir);
        fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
        fs::write(dir.join("top"), i.to_string()).unwrap();
        let id = dir.parent().unwrap().file_name().unwrap().to_str().unwrap();
        ids.push(id.parse().unwrap());
        s.strata(&["commit", &format!("l{i}"), &key]).success();
    }
    s.strata(&["prepare", "top", "l3"]).success();
    Some((s, ids))
}

/// `l/NAME` of snapshot `id`: its id in base 36.
fn short_link(s: &Store, id: u64) -> std::path::PathBuf {
    let mut name = String::new();
    let mut n = id;
    loop {
        name.insert(0, char::from_digit((n % 36) as u32, 36).unwrap());
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.root.join("l").join(name)
}

/// Points `l1`'s short link at `l2`'s tree and `l2`'s at /etc.
fn corrupt_short_links(s: &Store, ids: &[u64]) {
    let (l1, l2) = (short_link(s, ids[0]), short_link(s, ids[1]));
    fs::remove_file(&l1).unwrap();
    std::os::unix::fs::symlink(format!("../snapshots/{}/fs", ids[1]), &l1).unwrap();
    fs::remove_file(&l2).unwrap();
    std::os::unix::fs::symlink("/etc", &l2).unwrap();
}

/// Mounts `top` by pasting what `strata mounts` prints (the relative form,
/// through `l/`) and asserts it shows the chain's files, not /etc's.
#[track_caller]
fn pasted_shows_the_chain(s: &Store) {
    let guard = MountGuard::new(&s.scratch_dir("pasted"));
    let lines = s
        .strata(&["mounts", "top", guard.path.to_str().unwrap()])
        .success();
    assert!(lines.stdout.starts_with("(cd "), "{}", lines.session());
    sh_ok(&lines.stdout, &lines.session());
    for (file, content) in [("f1", "1"), ("f2", "2"), ("f3", "3"), ("top", "3")] {
        assert_eq!(
            fs::read_to_string(guard.join(file)).ok().as_deref(),
            Some(content),
            "{file} through {}",
            lines.stdout
        );
    }
    assert!(
        !guard.join("passwd").exists(),
        "/etc shows through the mount"
    );
    drop(guard);
}

/// `check` verifies the short links in `l/` that the printed mount lines
/// go through: one pointing at another snapshot's tree, or out of the
/// store, is a `bad-link` (exit 1), and `--repair` puts back the link
/// strata makes. (Audit: `check` said consistent, and the pasted line
/// mounted /etc's files.)
/// An `l` that is a symlink (to a directory with files named like short
/// links) is never followed: `check` reports it as a leftover, `prune`
/// deletes the link alone, `rm` does not delete through it, and a mount
/// line that needs the short links is refused until it is gone (audit:
/// `prune` emptied the directory it pointed at, root's too).
#[test]
fn a_links_directory_that_is_a_symlink_is_not_followed() {
    let Some((s, ids)) = store_with_short_links() else {
        return;
    };
    let victim = s.scratch_dir("victim");
    fs::create_dir(victim.join("sub")).unwrap();
    for id in &ids {
        fs::write(victim.join(format!("{id}")), "x").unwrap();
    }
    let l = s.root.join("l");
    fs::remove_dir_all(&l).unwrap();
    std::os::unix::fs::symlink(&victim, &l).unwrap();
    let entries = || fs::read_dir(&victim).unwrap().count();
    s.strata(&["check"])
        .fails_reporting(1, "in place of the short links' directory");
    // The JSON form names the trees themselves; the shell form needs `l/`.
    s.strata(&["--json", "mounts", "top"]).success();
    s.strata(&["mounts", "top"]).fails_with(1, "strata prune");
    s.strata(&["prepare", "x", "l3"])
        .fails_with(1, "is not a directory");
    s.strata(&["rm", "x"]).success();
    assert_eq!(entries(), ids.len() + 1);
    s.strata(&["prune"]).success();
    assert_eq!(entries(), ids.len() + 1, "prune deleted through the link");
    assert!(
        fs::symlink_metadata(&l).is_err(),
        "the planted link is still there"
    );
    s.strata(&["check"]).success();
    pasted_shows_the_chain(&s);
}

#[test]
fn check_finds_and_replaces_wrong_short_links() {
    let Some((s, ids)) = store_with_short_links() else {
        return;
    };
    pasted_shows_the_chain(&s);
    corrupt_short_links(&s, &ids);
    let run = s.strata(&["check", "-o", "json"]).fails_json("internal");
    let report = run.json();
    assert_eq!(report["consistent"], false, "{}", run.session());
    let bad: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "bad-link")
        .collect();
    assert_eq!(bad.len(), 2, "{}", run.session());
    for (p, snapshot, points) in [
        (
            bad[0],
            "l1",
            format!("points to ../snapshots/{}/fs", ids[1]),
        ),
        (bad[1], "l2", "points to /etc".to_string()),
    ] {
        assert_eq!(p["snapshot"], snapshot, "{p}");
        assert_eq!(p["repaired"], false, "{p}");
        let message = p["message"].as_str().unwrap();
        assert!(message.contains(&points), "{message}");
    }
    // One line each in the table, saying where the link points.
    let table = s.strata(&["check"]);
    let line = format!("points to /etc, not ../snapshots/{}/fs\n", ids[1]);
    table
        .fails_reporting(1, "bad-link: snapshot `l2`'s short link")
        .fails_reporting(1, &line);

    let repaired = s.strata(&["check", "--repair", "-o", "json"]).success();
    let problems = repaired.json()["problems"].clone();
    assert_eq!(
        problems.as_array().unwrap().len(),
        2,
        "{}",
        repaired.session()
    );
    for p in problems.as_array().unwrap() {
        assert_eq!(p["kind"], "bad-link", "{p}");
        assert_eq!(p["repaired"], true, "{p}");
        assert!(
            p["message"]
                .as_str()
                .unwrap()
                .ends_with("; it was replaced"),
            "{p}"
        );
    }
    s.strata(&["check"]).success();
    for (id, link) in ids.iter().map(|&id| (id, short_link(&s, id))) {
        assert_eq!(
            fs::read_link(&link).unwrap(),
            std::path::PathBuf::from(format!("../snapshots/{id}/fs"))
        );
    }
    pasted_shows_the_chain(&s);
}

/// A directory or a file in place of a short link is a `bad-link` that
/// says what it is, and `--repair` replaces both (a directory cannot be
/// renamed over: it is moved aside and deleted), so the pasted mount line
/// shows the chain, not the empty directory. A directory at the link name
/// of no snapshot is a leftover called a directory. (Review: "is not a
/// symlink, not ../snapshots/…; it could not be replaced: Is a
/// directory", and "a short link of a removed snapshot".)
#[test]
fn check_replaces_a_directory_or_a_file_at_a_short_link() {
    let Some((s, ids)) = store_with_short_links() else {
        return;
    };
    let (l1, l2) = (short_link(&s, ids[0]), short_link(&s, ids[1]));
    fs::remove_file(&l1).unwrap();
    fs::create_dir(&l1).unwrap();
    fs::write(l1.join("passwd"), "x").unwrap();
    fs::remove_file(&l2).unwrap();
    fs::write(&l2, "x").unwrap();
    // No snapshot has id 46655 (`zzz`).
    let stray = s.root.join("l").join("zzz");
    fs::create_dir(&stray).unwrap();
    fs::write(stray.join("f"), "x").unwrap();
    let table = s.strata(&["check"]);
    let said = |p: &std::path::Path, what: &str| format!("{} {what}\n", p.display());
    table
        .fails_reporting(
            1,
            &said(
                &l1,
                &format!("is a directory, not a link to ../snapshots/{}/fs", ids[0]),
            ),
        )
        .fails_reporting(
            1,
            &said(
                &l2,
                &format!("is a file, not a link to ../snapshots/{}/fs", ids[1]),
            ),
        )
        .fails_reporting(
            1,
            &said(&stray, "is a directory among the short links, not a link"),
        );
    let repaired = s.strata(&["check", "--repair", "-o", "json"]).success();
    let problems = repaired.json()["problems"].clone();
    let problems = problems.as_array().unwrap();
    assert_eq!(problems.len(), 3, "{}", repaired.session());
    assert!(
        problems.iter().all(|p| p["repaired"] == true),
        "{}",
        repaired.session()
    );
    s.strata(&["check"]).success();
    let names: Vec<String> = fs::read_dir(s.root.join("l"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("rm-") && n != "zzz"),
        "{names:?}"
    );
    pasted_shows_the_chain(&s);
}

/// The driver is chosen by the first write and recorded for good: a store
/// that cannot hold the overlay test's scratch directories fails that write,
/// and does not make the store native.
#[test]
fn a_broken_store_does_not_choose_the_driver() {
    if !require_root_and_overlay() {
        return;
    }
    let s = Store::uninitialized("none");
    s.strata(&["ls"]).success();
    let snaps = s.root.join("snapshots");
    fs::remove_dir(&snaps).unwrap();
    fs::write(&snaps, "").unwrap();
    let run = s.fails(&["prepare", "a"], "internal");
    assert!(
        run.stderr.contains("cannot test overlay support"),
        "{}",
        run.session()
    );
    fs::remove_file(&snaps).unwrap();
    fs::create_dir(&snaps).unwrap();
    s.strata(&["prepare", "a"]).success();
    let init = s.strata(&["init"]).success();
    // A note, on stderr.
    assert!(init.stderr.contains("overlay driver"), "{}", init.session());
}

/// A `parent_id` holding text (the table is not STRICT, and SQLite's
/// integrity check passes it) is a row `check` names as `index-corrupt`,
/// which `--repair` says it cannot fix; other commands name the snapshot
/// (audit: `ls`, `tree` and `check` all failed with "Invalid column type
/// Text … parent_id").
#[test]
fn check_names_a_row_it_cannot_read() {
    let s = store("native");
    sql(
        &s,
        "INSERT INTO snapshots VALUES (50, 'tp', 'active', '../../etc', 0, 0, NULL, NULL)",
    );
    fs::create_dir_all(s.root.join("snapshots/50/fs")).unwrap();
    let named = "index-corrupt: index: snapshot `tp` (id 50) has parent_id '../../etc' (text), \
                 which is not a snapshot id";
    s.strata(&["check"]).fails_reporting(1, named);
    s.strata(&["check", "--repair"])
        .fails_reporting(1, named)
        .fails_reporting(1, "it cannot be repaired");
    let report = s.strata(&["check", "--json"]).json();
    assert_eq!(report["problems"][0]["snapshot"], "tp", "{report}");
    assert_eq!(report["problems"][0]["kind"], "index-corrupt", "{report}");
    for args in [&["ls"][..], &["tree"]] {
        let run = s.strata(args);
        assert_eq!(run.code, 1, "{}", run.session());
        assert!(
            run.stderr
                .contains("snapshot `tp` has a parent_id of type Text")
                && run.stderr.contains("`strata check` names it"),
            "{}",
            run.session()
        );
    }
    sql(&s, "UPDATE snapshots SET parent_id = NULL WHERE id = 50");
    s.strata(&["check"]).success();
    // A value of another table strata cannot read (review: a label value
    // that is a blob made `ls` and `info` fail, and `check` said consistent).
    sql(&s, "INSERT INTO labels VALUES (50, 'k', x'ff00')");
    s.strata(&["check"]).fails_reporting(
        1,
        "index-corrupt: index: label 'k' of the snapshot with id 50 has value X'FF00' (blob), which is not text",
    );
    s.strata(&["info", "tp"])
        .fails_with(1, "`strata check` names it");
    sql(&s, "UPDATE labels SET value = 'v' WHERE snapshot_id = 50");
    s.strata(&["check"]).success();
    sql(
        &s,
        "INSERT INTO mounts VALUES ('/nowhere', 50, 0, NULL, x'00ff')",
    );
    s.strata(&["check"]).fails_reporting(
        1,
        "index: the mount record of '/nowhere' has mount_identity X'00FF' (blob), which is not text",
    );
    sql(&s, "DELETE FROM mounts");
    s.strata(&["check"]).success();
}

/// A snapshots table rebuilt by hand without its constraints: two rows of
/// one name are reported (audit: `check` said consistent, and `info`
/// took either), and a kind strata does not know is `index-corrupt`, not
/// a raw error.
#[test]
fn check_finds_duplicate_names_and_unknown_kinds() {
    let s = store("native");
    for statement in [
        "CREATE TABLE s2 (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, \
         kind TEXT NOT NULL, parent_id INTEGER, created INTEGER NOT NULL, \
         updated INTEGER NOT NULL, size INTEGER, inodes INTEGER)",
        "INSERT INTO s2 SELECT * FROM snapshots",
        "DROP TABLE snapshots",
        "ALTER TABLE s2 RENAME TO snapshots",
        "CREATE INDEX snapshots_parent ON snapshots(parent_id)",
        "INSERT INTO snapshots (id, name, kind, created, updated) VALUES (60, 'base', 'active', 0, 0)",
    ] {
        sql(&s, statement);
    }
    fs::create_dir_all(s.root.join("snapshots/60/fs")).unwrap();
    let base = python_sql(&s, "SELECT min(id) FROM snapshots WHERE name = 'base'");
    let twice = format!("index-corrupt: index: 2 snapshots are named `base` (ids {base}, 60)");
    let run = s.strata(&["check"]).fails_reporting(1, &twice);
    assert_eq!(run.stdout_lines().len(), 1, "{}", run.session());
    s.strata(&["check", "--repair"])
        .fails_reporting(1, &twice)
        .fails_reporting(1, "it cannot be repaired");

    sql(
        &s,
        "INSERT INTO snapshots (id, name, kind, created, updated) VALUES (61, 'odd', 'bogus', 0, 0)",
    );
    fs::create_dir_all(s.root.join("snapshots/61/fs")).unwrap();
    s.strata(&["check"])
        .fails_reporting(
            1,
            "index-corrupt: index: snapshot `odd` (id 61) has kind 'bogus', which is none of \
             active, view, committed",
        )
        .fails_reporting(1, &twice);
    sql(&s, "DELETE FROM snapshots WHERE id IN (60, 61)");
    fs::remove_dir_all(s.root.join("snapshots/60")).unwrap();
    fs::remove_dir_all(s.root.join("snapshots/61")).unwrap();
    s.strata(&["check"]).success();
}

/// A row given the largest id, even deleted since, leaves AUTOINCREMENT
/// no id to give: `prepare` says so (audit: "its disk is full … free some
/// space"), and `check` reports it (it said consistent).
#[test]
fn used_up_ids_are_said_to_be() {
    let s = store("native");
    sql(
        &s,
        "INSERT INTO snapshots (id, name, kind, created, updated) \
         VALUES (9223372036854775807, 'huge', 'active', 0, 0)",
    );
    sql(&s, "DELETE FROM snapshots WHERE name = 'huge'");
    let before = s.snapshot_dirs();
    for args in [&["prepare", "x"][..], &["view", "y", "base"]] {
        let run = s.strata(args);
        assert_eq!(run.code, 1, "{}", run.session());
        assert!(
            run.stderr
                .contains("no snapshot can be made: the snapshot ids are used up")
                && !run.stderr.contains("disk is full"),
            "{}",
            run.session()
        );
    }
    assert_eq!(s.snapshot_dirs(), before);
    let used = "index-corrupt: index: the snapshot ids are used up: the last one given is \
                9223372036854775807";
    s.strata(&["check"]).fails_reporting(1, used);
    s.strata(&["check", "--repair"])
        .fails_reporting(1, used)
        .fails_reporting(1, "it cannot be repaired safely");
    sql(
        &s,
        "UPDATE sqlite_sequence SET seq = (SELECT max(id) FROM snapshots) WHERE name = 'snapshots'",
    );
    s.strata(&["check"]).success();
    s.strata(&["prepare", "x"]).success();
}
