//! Many strata processes on one store at once: races on one key, on one
//! commit name, a parent's removal against a child's prepare, and a few
//! hundred mixed operations. Nothing may fail with a locked database, and
//! nothing may be lost or duplicated.

use crate::support::*;
use std::process::Output;
use std::sync::Arc;
use std::thread;

const PROCS: usize = 8;

fn run(root: &std::path::Path, args: &[String]) -> Output {
    command(root, args).output().unwrap()
}

/// Runs `args_of(i)` in PROCS processes at once; returns their outputs.
fn race(store: &Store, args_of: impl Fn(usize) -> Vec<String>) -> Vec<Output> {
    let root = Arc::new(store.root.clone());
    let barrier = Arc::new(std::sync::Barrier::new(PROCS));
    let handles: Vec<_> = (0..PROCS)
        .map(|i| {
            let root = Arc::clone(&root);
            let barrier = Arc::clone(&barrier);
            let args = args_of(i);
            thread::spawn(move || {
                barrier.wait();
                run(&root, &args)
            })
        })
        .collect();
    let outputs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for o in &outputs {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("locked"),
            "an operation hit a locked database: {err}"
        );
    }
    outputs
}

fn codes(outputs: &[Output]) -> Vec<i32> {
    let mut c: Vec<i32> = outputs
        .iter()
        .map(|o| o.status.code().unwrap_or(-1))
        .collect();
    c.sort();
    c
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn same_key_one_winner(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    for round in 0..5 {
        let key = format!("k{round}");
        let out = race(&store, |_| s(&["prepare", &key, "base"]));
        let mut want = vec![4; PROCS - 1];
        want.insert(0, 0);
        assert_eq!(codes(&out), want, "exactly one prepare of `{key}` wins");
        let out = race(&store, |_| s(&["view", &format!("v{round}"), "base"]));
        assert_eq!(codes(&out), want, "exactly one view wins");
    }
    // One commit name, eight actives: one wins, the others stay active.
    for i in 0..PROCS {
        store
            .strata(&["prepare", &format!("a{i}"), "base"])
            .success();
    }
    let out = race(&store, |i| s(&["commit", "same", &format!("a{i}")]));
    let mut want = vec![4; PROCS - 1];
    want.insert(0, 0);
    assert_eq!(codes(&out), want, "exactly one commit to `same` wins");
    let names = store.names(&["--kind", "active"]);
    assert_eq!(
        names.iter().filter(|n| n.starts_with('a')).count(),
        PROCS - 1
    );
    store.strata(&["check"]).success();
}

fn remove_parent_races_prepare_child(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    for round in 0..12 {
        let p = format!("p{round}");
        store.strata(&["prepare", "w"]).success();
        store.strata(&["commit", &p, "w"]).success();
        let out = race(&store, |i| {
            if i % 2 == 0 {
                s(&["rm", &p])
            } else {
                s(&["prepare", &format!("c{round}-{i}"), &p])
            }
        });
        let parent_exists = store.names(&[]).contains(&p);
        let children = store.names(&["--filter", &format!("parent=={p}")]);
        // Never a child whose parent is gone.
        if !parent_exists {
            assert!(children.is_empty(), "children {children:?} of removed {p}");
        }
        for (i, o) in out.iter().enumerate() {
            let code = o.status.code().unwrap();
            if i % 2 == 1 {
                assert!(matches!(code, 0 | 3), "prepare: {o:?}");
                assert_eq!(code == 0, children.contains(&format!("c{round}-{i}")));
            } else {
                assert!(matches!(code, 0 | 3 | 5), "rm: {o:?}");
            }
        }
        store.strata(&["rm", "-r", &p]);
    }
    store.strata(&["check"]).success();
}

fn mixed_operations(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    let root = Arc::new(store.root.clone());
    let per_proc = 40;
    // prune and check run all along: they must never take what a concurrent
    // operation is building.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = {
        let root = Arc::clone(&root);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = run(&root, &s(&["prune"]));
                assert!(o.status.success(), "prune: {o:?}");
                runs += 1;
            }
            runs
        })
    };
    let handles: Vec<_> = (0..PROCS)
        .map(|p| {
            let root = Arc::clone(&root);
            thread::spawn(move || {
                let mut made = Vec::new();
                let mut codes = Vec::new();
                for i in 0..per_proc / 4 {
                    let a = format!("p{p}-a{i}");
                    let c = format!("p{p}-c{i}");
                    let shared = format!("shared{}", i % 3);
                    for args in [
                        s(&["prepare", &a, "base", "--label", &format!("p={p}")]),
                        s(&["commit", &c, &a]),
                        s(&["prepare", &shared, &c]),
                        s(&["label", &c, "x=y"]),
                    ] {
                        let o = run(&root, &args);
                        let err = String::from_utf8_lossy(&o.stderr).to_string();
                        assert!(!err.contains("locked"), "{args:?}: {err}");
                        codes.push((args, o.status.code().unwrap(), err));
                    }
                    made.push(c);
                    if i % 3 == 2 {
                        let o = run(&root, &s(&["ls", "--json"]));
                        assert!(o.status.success());
                    }
                }
                (made, codes)
            })
        })
        .collect();
    let mut total = 0;
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let prunes = pruner.join().unwrap();
    assert!(prunes > 0);
    for (made, codes) in results {
        for (args, code, err) in &codes {
            total += 1;
            let ok = match args[0].as_str() {
                // Only the shared keys are contended; they may already exist.
                "prepare" if args[1].starts_with("shared") => matches!(code, 0 | 4),
                _ => *code == 0,
            };
            assert!(ok, "{args:?} exited {code}: {err}");
        }
        let names = store.names(&[]);
        for c in made {
            assert!(names.contains(&c), "{c} was lost");
        }
    }
    let names = store.names(&[]);
    let mut dedup = names.clone();
    dedup.dedup();
    assert_eq!(names, dedup, "a key is listed twice");
    assert_eq!(names.iter().filter(|n| n.starts_with("shared")).count(), 3);
    assert_eq!(
        names.iter().filter(|n| n.contains("-c")).count(),
        PROCS * per_proc / 4
    );
    eprintln!("{driver}: {total} concurrent operations, {prunes} concurrent prunes");
    store.strata(&["check"]).success();
}

fn same_key(driver: &str) {
    same_key_one_winner(driver)
}
fn parent_removal(driver: &str) {
    remove_parent_races_prepare_child(driver)
}
fn mixed(driver: &str) {
    mixed_operations(driver)
}

/// Runs `first` paused at crash point `at` (it holds the snapshot's lock
/// there), starts `mount k TARGET` meanwhile, and lets `first` go on after
/// the mount had time to act. Asserts the mount waited (TARGET was not
/// mounted during the pause) and is not mounted at the end; returns both
/// outputs.
fn mount_during(store: &Store, first: &[&str], at: &str) -> (Output, Output) {
    let target = store.scratch("mnt");
    let _guard = MountGuard::new(&target);
    let paused = Paused::start(store, first, at);
    let root = store.root.clone();
    let mount = s(&["mount", "k", target.to_str().unwrap()]);
    let racer = thread::spawn(move || run(&root, &mount));
    thread::sleep(std::time::Duration::from_millis(400));
    assert!(
        !is_mount_point(&target),
        "the mount did not wait for `{first:?}`"
    );
    let first_out = paused.resume();
    let mount_out = racer.join().unwrap();
    assert!(!is_mount_point(&target));
    (first_out, mount_out)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A mount started while a commit of the same active is under way waits
/// for it, then finds the key gone (committed under its new name): a
/// committed snapshot is never left mounted writable.
fn commit_then_mount(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "k"]).success();
    let (commit, mount) = mount_during(&s, &["commit", "c", "k"], "commit:measured");
    assert_eq!(code(&commit), 0, "{commit:?}");
    assert_eq!(code(&mount), 3, "{mount:?}");
    assert_eq!(s.info("c")["kind"], "committed");
}

/// A mount started while `rm -f` removes the snapshot finds it gone.
fn remove_then_mount(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "k"]).success();
    let first = s.mount("k");
    let (rm, mount) = mount_during(&s, &["rm", "-f", "k"], "unmount:unmounted");
    assert_eq!(code(&rm), 0, "{rm:?}");
    assert_eq!(code(&mount), 3, "{mount:?}");
    assert!(!is_mount_point(&first.path));
    s.strata(&["check"]).success();
}

/// A commit that waited for an `rm` of the same active (it read the row
/// before the removal committed) finds the snapshot gone: `not_found`, not
/// an internal error from measuring a deleted directory.
fn remove_then_commit(driver: &str) {
    let store = setup!(driver);
    store.strata(&["prepare", "k"]).success();
    let id = store
        .snapshot_dirs()
        .into_iter()
        .find(|d| d.parse::<u64>().is_ok());
    let fs_dir = store.root.join("snapshots").join(id.unwrap()).join("fs");
    std::fs::write(fs_dir.join("f"), "x").unwrap();
    let rm = Paused::start(&store, &["rm", "k"], "rm:row-deleted");
    let root = store.root.clone();
    let racer = thread::spawn(move || run(&root, &s(&["commit", "c", "k"])));
    // Time for the commit to read the row and wait for the lock rm holds.
    thread::sleep(std::time::Duration::from_millis(400));
    let rm = rm.resume();
    let commit = racer.join().unwrap();
    assert_eq!(code(&rm), 0, "{rm:?}");
    assert_eq!(code(&commit), 3, "{commit:?}");
    assert!(store.names(&[]).is_empty());
    store.strata(&["check"]).success();
}

/// `rm -r` reads the subtree before it locks it. A child made under it, or a child
/// committed (renamed) there, in between goes with the rest: `rm -r` starts over
/// with the subtree as it is, instead of "has 1 child: use rm -r" or "removed by
/// another process".
fn rm_r_with_the_subtree_changing(driver: &str) {
    let store = setup!(driver);
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["prepare", "act", "base"]).success();
    for racer in [&["prepare", "late", "base"][..], &["commit", "done", "act"]] {
        let rm = Paused::start(&store, &["rm", "-r", "base"], "rm:read");
        store.strata(racer).success();
        let rm = rm.resume();
        assert_eq!(code(&rm), 0, "{racer:?}: {rm:?}");
        assert!(store.names(&[]).is_empty(), "{racer:?}");
        store.strata(&["check"]).success();
        store.layer("base", None, &[file("f", "x", 0o644)]);
        store.strata(&["prepare", "act", "base"]).success();
    }
}

/// A snapshot of the subtree another process removes while `rm -r` runs is
/// passed over, not a reason to give up: the user wanted it gone (audit:
/// `rm -r` failed with "was removed by another process", exit 3, 3 runs of
/// 3). If the other process took the whole subtree before this one removed
/// any of it, this one is `not_found`, as a plain `rm` that lost the race;
/// once it removed a batch, the rest going elsewhere is success.
fn rm_r_with_snapshots_removed_meanwhile(driver: &str) {
    let store = setup!(driver);
    store.layer("base", None, &[file("f", "x", 0o644)]);
    for leaf in ["x", "y"] {
        store.strata(&["prepare", leaf, "base"]).success();
    }
    store.strata(&["view", "v", "base"]).success();
    let rm = Paused::start(&store, &["rm", "-r", "base"], "rm:read");
    store.strata(&["rm", "x"]).success();
    let rm = rm.resume();
    let stderr = String::from_utf8_lossy(&rm.stderr);
    assert_eq!(code(&rm), 0, "{rm:?}");
    for name in ["y", "v", "base"] {
        assert!(stderr.contains(&format!("removed `{name}`")), "{stderr}");
    }
    assert!(!stderr.contains("removed `x`"), "{stderr}");
    assert!(store.names(&[]).is_empty());
    store.strata(&["check"]).success();

    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["prepare", "x", "base"]).success();
    let rm = Paused::start(&store, &["rm", "-r", "base"], "rm:read");
    store.strata(&["rm", "-r", "base"]).success();
    let rm = rm.resume();
    assert_eq!(code(&rm), 3, "{rm:?}");
    let stderr = String::from_utf8_lossy(&rm.stderr);
    assert!(
        stderr.contains("`base` was removed by another process"),
        "{stderr}"
    );
    store.strata(&["check"]).success();

    // In batches of 16 (under `ulimit -n 48`): paused after the first,
    // while another `rm -r` takes the rest.
    store.layer("base", None, &[file("f", "x", 0o644)]);
    for i in 0..20 {
        store
            .strata(&["-q", "prepare", &format!("a{i}"), "base"])
            .success();
    }
    let rm = Paused::start_with_file_limit(&store, 48, &["rm", "-r", "base"], "rm:committed");
    store.strata(&["rm", "-r", "base"]).success();
    let rm = rm.resume();
    let stderr = String::from_utf8_lossy(&rm.stderr);
    assert_eq!(code(&rm), 0, "{rm:?}");
    assert_eq!(stderr.matches("removed `").count(), 16, "{stderr}");
    assert!(store.names(&[]).is_empty());
    store.strata(&["check"]).success();
}

/// `rm -f KEY` and `rm -r -f` of a subtree holding KEY, started while a
/// `strata mount` of KEY is between its mount(2) and its record (it holds
/// KEY's lock there), wait for that mount and unmount it as strata's own:
/// it is not a mount strata did not record (audit: `rm -r -f` refused it
/// as one, 4 runs of 12). Each `rm` is let to reach where it judges (trace
/// point `at`) before the mount goes on.
fn rm_f_during_a_mount(driver: &str) {
    let store = setup!(driver);
    store.layer("base", None, &[file("f", "x", 0o644)]);
    for i in 0..20 {
        store
            .strata(&["-q", "prepare", &format!("c{i}"), "base"])
            .success();
    }
    // `rm -f a` reads the mount records before it waits for a's lock;
    // `rm -r -f base` (batches of 16 under `ulimit -n 48`) looks at the
    // whole subtree before any batch.
    for (args, at) in [
        (&["rm", "-f", "a"][..], "rm:read"),
        (&["rm", "-r", "-f", "base"], "rm:unrecorded-mount"),
    ] {
        store.strata(&["prepare", "a", "base"]).success();
        let target = store.scratch("mnt");
        let _guard = MountGuard::new(&target);
        let t = target.to_str().unwrap();
        let mount = Paused::start(&store, &["mount", "a", t], "mount:mounted");
        let trace = store.scratch("trace");
        let mut rm = command(&store.root, args);
        limit_open_files(&mut rm, 48, Some(48));
        let mut rm = rm
            .env("STRATA_CRASH_TRACE", &trace)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let reached = || std::fs::read_to_string(&trace).is_ok_and(|t| t.contains(at));
        for _ in 0..3000 {
            if reached() || rm.try_wait().unwrap().is_some() {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        let mount = mount.resume();
        assert_eq!(code(&mount), 0, "{mount:?}");
        let rm = rm.wait_with_output().unwrap();
        assert_eq!(code(&rm), 0, "{args:?}: {rm:?}");
        assert!(!is_mount_point(&target), "{args:?} left it mounted");
        assert!(!store.names(&[]).contains(&"a".to_string()), "{args:?}");
    }
    assert!(store.names(&[]).is_empty());
    store.strata(&["check"]).success();

    // A `strata mount` killed there holds no lock: its mount is still one
    // strata did not record, and the whole `rm -r -f` is refused.
    store.layer("base", None, &[file("f", "x", 0o644)]);
    for i in 0..20 {
        store
            .strata(&["-q", "prepare", &format!("c{i}"), "base"])
            .success();
    }
    store.strata(&["prepare", "a", "base"]).success();
    let target = store.scratch("mnt");
    let guard = MountGuard::new(&target);
    store.killed_at(&["mount", "a", target.to_str().unwrap()], "mount:mounted");
    let all = store.names(&[]);
    store
        .with_file_limit(48, &["rm", "-r", "-f", "base"])
        .fails_with(5, "strata did not record");
    assert_eq!(store.names(&[]), all);
    drop(guard);
    store.strata(&["rm", "-r", "base"]).success();
    store.strata(&["check"]).success();
}

/// `commit` while a `strata mount` of its key is between its mount(2) and
/// its record (it holds the key's lock): the commit, which read the mount
/// records before it waited for that lock, reads them again and unmounts
/// the mount as strata's own, rather than refusing it as one strata did not
/// record (review: `rm` had this fixed, `commit` not).
fn commit_during_a_mount(driver: &str) {
    let store = setup!(driver);
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["prepare", "a", "base"]).success();
    let target = store.scratch("mnt");
    let _guard = MountGuard::new(&target);
    let mount = Paused::start(
        &store,
        &["mount", "a", target.to_str().unwrap()],
        "mount:mounted",
    );
    let trace = store.scratch("trace");
    let mut commit = command(&store.root, &["commit", "c", "a"])
        .env("STRATA_CRASH_TRACE", &trace)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reached = || std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("commit:read"));
    for _ in 0..3000 {
        if reached() || commit.try_wait().unwrap().is_some() {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(reached(), "the commit did not get to its read");
    let mount = mount.resume();
    assert_eq!(code(&mount), 0, "{mount:?}");
    let commit = commit.wait_with_output().unwrap();
    assert_eq!(code(&commit), 0, "{commit:?}");
    assert!(!is_mount_point(&target), "the commit left it mounted");
    assert_eq!(store.info("c")["kind"], "committed");
    store.strata(&["check"]).success();
}

/// A command dropping stale mount records judges them again under the
/// write lock: `prune` that found a record stale, paused while the target
/// is mounted again (another snapshot), keeps the new, live record, so
/// `unmount` still knows the mount and `rm` still refuses the snapshot.
/// (Audit: it deleted the new record by its target.)
#[test]
fn stale_records_are_judged_again_before_they_go() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["view", "v1", "base"]).success();
    store.strata(&["view", "v2", "base"]).success();
    let target = store.scratch("mnt");
    let _guard = MountGuard::new(&target);
    let t = target.to_str().unwrap();
    store.strata(&["mount", "v1", t]).success();
    sh_ok(&format!("umount {}", shell_quote(t)), "umount by hand");
    let prune = Paused::start(&store, &["prune"], "mounts:judged");
    store.strata(&["mount", "v2", t]).success();
    let prune = prune.resume();
    assert_eq!(code(&prune), 0, "{prune:?}");
    assert_eq!(store.info("v2")["mounted_at"], serde_json::json!([t]));
    store.fails(&["rm", "v2"], "failed_precondition");
    store.strata(&["unmount", t]).success();
    assert!(!is_mount_point(&target));
    store.strata(&["check"]).success();
}

/// A diff whose snapshot an `rm` deletes under it (reading takes no lock)
/// reports the snapshot gone (`not_found`), not a failed read.
fn remove_during_diff(driver: &str) {
    let store = setup!(driver);
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.layer("top", Some("base"), &[file("g", "y", 0o644)]);
    let out = store.scratch("layer.tar");
    let args = ["diff", "top", "--output-file", out.to_str().unwrap()];
    let diff = Paused::start(&store, &args, "diff:read");
    store.strata(&["rm", "top"]).success();
    let diff = diff.resume();
    assert_eq!(code(&diff), 3, "{diff:?}");
    assert!(
        String::from_utf8_lossy(&diff.stderr).contains("`top` was removed"),
        "{diff:?}"
    );
    assert!(!out.exists(), "a failed diff left its output");
    store.strata(&["check"]).success();
}

/// `usage` of every snapshot, racing an `rm` of an active it listed (the
/// read takes no lock): the removed snapshot is left out, as if listed after
/// the removal, and the others are measured.
fn remove_during_usage(driver: &str) {
    let store = setup!(driver);
    store.strata(&["prepare", "gone"]).success();
    store.strata(&["prepare", "stays"]).success();
    let usage = Paused::start(&store, &["usage", "--json"], "usage:listed");
    store.strata(&["rm", "gone"]).success();
    let usage = usage.resume();
    assert_eq!(code(&usage), 0, "{usage:?}");
    let listed: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stays"], "{usage:?}");
}

/// Two `init`s asking for different drivers on a new store: the one whose
/// driver was not recorded is refused (`failed_precondition`), as it is
/// when it runs second.
#[test]
fn init_races_for_the_driver() {
    if !require_root_and_overlay() {
        return;
    }
    for round in 0..8 {
        let store = Store::uninitialized("none");
        let asks = ["native", "overlay"];
        let handles: Vec<_> = asks
            .iter()
            .map(|driver| {
                let root = store.root.clone();
                let args = s(&["init", "--driver", driver]);
                thread::spawn(move || run(&root, &args))
            })
            .collect();
        let outs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let now = store.strata(&["init", "--json"]).success().json();
        let recorded = now["driver"].as_str().unwrap().to_string();
        for (driver, out) in asks.iter().zip(&outs) {
            let want = if *driver == recorded { 0 } else { 5 };
            assert_eq!(
                code(out),
                want,
                "round {round}, {driver} (store is {recorded}): {out:?}"
            );
        }
    }
}

/// Several commands making a new store at once (no `init`): every one succeeds. The
/// index is created by one of them while the others open it; SQLite's read-only
/// fallback once turned a racer's connection read-only (1 round in 40 failed).
#[test]
fn first_use_races() {
    for round in 0..40 {
        let store = Store::uninitialized("none");
        let start = std::sync::Arc::new(std::sync::Barrier::new(5));
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let root = store.root.clone();
                let args = if i == 4 {
                    s(&["ls"])
                } else {
                    s(&["prepare", &format!("k{i}")])
                };
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    run(&root, &args)
                })
            })
            .collect();
        for out in handles.into_iter().map(|h| h.join().unwrap()) {
            assert_eq!(code(&out), 0, "round {round}: {out:?}");
        }
        let names = store.names(&[]);
        assert_eq!(names, ["k0", "k1", "k2", "k3"], "round {round}");
    }
}

/// A process that finds no `snapshots/` in a store another process is making, and
/// then finds its index, made since, goes on: `snapshots/` is made first, so it is
/// there (it failed "it has an index but no snapshots/ directory", 1 run in 10 of
/// [`first_use_races`] on a busy host).
#[test]
fn a_store_made_meanwhile_is_no_lost_snapshots_dir() {
    let store = Store::uninitialized("none");
    let first = Paused::start(&store, &["prepare", "a"], "layout:no-snapshots");
    store.strata(&["prepare", "b"]).success();
    let out = first.resume();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(store.names(&[]), ["a", "b"]);
}

/// Two overlays on one upper directory are undefined behaviour, so an
/// active overlay snapshot is mounted once; a view (and a bind) any number
/// of times, a parentless active too, which is a bind on either driver
/// (audit: the overlay driver refused its second mount, the native one
/// did not).
fn second_mount(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "w"]).success();
    let w1 = s.mount("w");
    let w2 = s.mount("w");
    std::fs::write(w1.join("f"), "one").unwrap();
    assert_eq!(std::fs::read_to_string(w2.join("f")).unwrap(), "one");
    s.unmount(&w2);
    s.unmount(&w1);
    s.strata(&["commit", "base", "w"]).success();
    s.strata(&["prepare", "k", "base"]).success();
    s.strata(&["view", "v", "base"]).success();
    let first = s.mount("k");
    let target = s.scratch("mnt");
    let guard = MountGuard::new(&target);
    let run = s.strata(&["mount", "k", target.to_str().unwrap()]);
    if driver == "overlay" {
        run.fails_with(5, "already mounted at");
        assert!(!is_mount_point(&target));
    } else {
        run.success();
        s.unmount(&guard);
    }
    let v1 = s.mount("v");
    let v2 = s.mount("v");
    for m in [&v2, &v1, &first] {
        s.unmount(m);
    }
    drop(guard);
}

/// `check` (and `check --repair`, which then has nothing to do) while an
/// operation is paused between its steps: what it is in the middle of (a
/// staging directory, a row-less directory not yet renamed, an `rm-*` being
/// deleted, a committed snapshot's work directory not yet removed) is not a
/// problem.
fn check_during_each_step(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    let steps: [(&[&str], &str); 6] = [
        (&["prepare", "p", "base"], "create:staging-made"),
        (&["prepare", "p2", "base"], "create:built"),
        (&["rm", "gone"], "rm:committed"),
        (&["rm", "gone"], "discard:renamed"),
        (&["commit", "c", "k"], "commit:committed"),
        (&["commit", "c2", "k"], "commit:work-removed"),
    ];
    for (args, at) in steps {
        if args[0] == "rm" {
            store.strata(&["prepare", "gone", "base"]).success();
        }
        if args[0] == "commit" {
            store.strata(&["prepare", "k", "base"]).success();
        }
        let paused = Paused::start(&store, args, at);
        for check in [&["check"][..], &["check", "--repair"]] {
            let o = run(&store.root, &s(check));
            assert!(o.status.success(), "{check:?} at {at}: {o:?}");
        }
        let o = paused.resume();
        assert!(o.status.success(), "{args:?}: {o:?}");
        store.strata(&["check"]).success();
    }
}

/// `check` looks at the snapshot directories without the index's write
/// lock: a `prepare` made while it walks them (paused there) completes at
/// once, and is no problem for the check. (Audit: on a store of 100,000
/// snapshots a check held the lock for 12-21 s, with writers waiting; at a
/// few hundred thousand they would have failed with "database is locked".)
fn check_walks_without_the_write_lock(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    let checks: [&[&str]; 2] = [&["check"], &["check", "--repair"]];
    for (i, check) in checks.into_iter().enumerate() {
        let paused = Paused::start(&store, check, "check:walking");
        let root = store.root.clone();
        let key = format!("p{i}");
        let (sent, done) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let _ = sent.send(run(&root, &s(&["prepare", &key, "base"])));
        });
        let prepared = done.recv_timeout(std::time::Duration::from_secs(15));
        // Resumed whatever happened: the prepare may be waiting for it.
        let checked = paused.resume();
        let prepared = prepared.unwrap_or_else(|_| {
            panic!("a prepare waited for {check:?} paused in its walk: {checked:?}")
        });
        assert!(prepared.status.success(), "{prepared:?}");
        assert!(checked.status.success(), "{check:?}: {checked:?}");
    }
    store.strata(&["check"]).success();
    assert_eq!(store.names(&[]), vec!["base", "p0", "p1"]);
}

/// A few `check`s and `prune`s run while writers apply, prepare, commit
/// and remove: every check finds the store consistent.
fn check_alongside_writers(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    let src = store.scratch_dir("layer");
    std::fs::write(src.join("f"), "mid").unwrap();
    let tar = Arc::new(store.scratch("mid.tar"));
    tar_dir(&src, &tar, &[]);
    let root = Arc::new(store.root.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let root = Arc::clone(&root);
            let tar = Arc::clone(&tar);
            thread::spawn(move || {
                for i in 0..5 {
                    let (x, a, c) = (
                        format!("x{w}-{i}"),
                        format!("a{w}-{i}"),
                        format!("c{w}-{i}"),
                    );
                    let o = command(&root, &["apply", &x, "base"])
                        .stdin(std::fs::File::open(&*tar).unwrap())
                        .output()
                        .unwrap();
                    assert!(o.status.success(), "apply: {o:?}");
                    for args in [
                        s(&["rm", &x]),
                        s(&["prepare", &a, "base"]),
                        s(&["commit", &c, &a]),
                        s(&["rm", &c]),
                    ] {
                        let o = run(&root, &args);
                        assert!(o.status.success(), "{args:?}: {o:?}");
                    }
                }
            })
        })
        .collect();
    let lookers: Vec<_> = [s(&["check"]), s(&["prune"])]
        .into_iter()
        .map(|args| {
            let root = Arc::clone(&root);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let o = run(&root, &args);
                    assert!(o.status.success(), "{args:?} alongside writers: {o:?}");
                    runs += 1;
                }
                runs
            })
        })
        .collect();
    let written: Vec<_> = writers.into_iter().map(|h| h.join()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs: Vec<usize> = lookers.into_iter().map(|h| h.join().unwrap()).collect();
    for w in written {
        w.unwrap();
    }
    assert!(runs.iter().all(|&n| n > 0), "{runs:?}");
    store.strata(&["check"]).success();
    assert_eq!(store.names(&[]), vec!["base"]);
}

/// The mounts at `target` in this process's mount table.
fn mounts_at(target: &std::path::Path) -> usize {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = target.to_str().unwrap();
    table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(target))
        .count()
}

/// `mount` of PROCS other snapshots at one target at once: one mounts it
/// and the others are `already_exists`; one mount is there, the record
/// names it, and what is seen through the target is its snapshot's (audit:
/// all mounted, stacked, and the one record left could name a hidden one,
/// which `rm -f` then deleted while mounted).
fn one_target_one_mount(driver: &str) {
    let store = setup!(driver);
    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    for i in 0..PROCS {
        let key = format!("k{i}");
        store.strata(&["prepare", &key, "base"]).success();
        let m = store.mount(&key);
        std::fs::write(m.join("who"), &key).unwrap();
        store.unmount(&m);
    }
    let target = store.scratch_dir("one");
    let guard = MountGuard::new(&target);
    let at = target.to_str().unwrap().to_string();
    for round in 0..3 {
        let outputs = race(&store, |i| s(&["mount", &format!("k{i}"), &at]));
        let won: Vec<usize> = (0..PROCS).filter(|&i| code(&outputs[i]) == 0).collect();
        assert_eq!(won.len(), 1, "round {round}: {outputs:?}");
        let winner = format!("k{}", won[0]);
        for (i, o) in outputs.iter().enumerate() {
            if i != won[0] {
                assert_eq!(code(o), 4, "round {round}, k{i}: {o:?}");
            }
        }
        assert_eq!(mounts_at(&target), 1, "round {round}: stacked mounts");
        assert_eq!(std::fs::read_to_string(target.join("who")).unwrap(), winner);
        let listed = store.strata(&["ls", "--json"]).success().json();
        let mounted: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| !i["mounted_at"].as_array().unwrap().is_empty())
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(mounted, [winner.as_str()], "round {round}");
        store.unmount(&guard);
    }
    store.strata(&["check"]).success();
}

both_drivers!(
    one_target_one_mount,
    same_key,
    parent_removal,
    mixed,
    commit_then_mount,
    remove_then_mount,
    remove_then_commit,
    remove_during_diff,
    remove_during_usage,
    rm_r_with_the_subtree_changing,
    rm_r_with_snapshots_removed_meanwhile,
    rm_f_during_a_mount,
    second_mount,
    commit_during_a_mount,
    check_during_each_step,
    check_walks_without_the_write_lock,
    check_alongside_writers
);
