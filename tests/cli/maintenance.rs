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

fn prune_finds_every_leftover(driver: &str) {
    let s = store(driver);
    let snaps = s.root.join("snapshots");
    fs::create_dir_all(snaps.join("999/fs")).unwrap();
    fs::write(snaps.join("999/fs/data"), vec![0u8; 50_000]).unwrap();
    fs::create_dir(snaps.join("new-1-2-3")).unwrap();
    fs::create_dir(snaps.join("rm-4-5-6")).unwrap();
    // A staging directory whose builder is alive (holds the lock) stays.
    fs::create_dir(snaps.join("new-alive")).unwrap();
    let lock = fs::File::open(snaps.join("new-alive")).unwrap();
    lock.try_lock().unwrap();

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
    assert!(
        std::process::Command::new("umount")
            .arg(&m.path)
            .status()
            .unwrap()
            .success()
    );
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
    let base_id = s
        .snapshot_dirs()
        .iter()
        .map(|d| d.parse::<u64>().unwrap())
        .min()
        .unwrap();
    fs::remove_dir_all(s.root.join("snapshots").join(base_id.to_string())).unwrap();
    let run = s.strata(&["check", "--repair"]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(run.stdout.contains("missing-directory"), "{}", run.stdout);
    assert!(run.stderr.contains("1 problem left"), "{}", run.stderr);
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
        let _ = fs::remove_file(&index);
    }
}

both_drivers!(
    a_lost_index_is_refused,
    prune_finds_every_leftover,
    check_reports_and_repairs,
    check_cannot_repair_a_missing_parent
);

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
    assert!(init.stdout.contains("overlay"), "{}", init.session());
}
