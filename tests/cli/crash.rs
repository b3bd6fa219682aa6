//! Crash safety by fault injection: every operation is killed (SIGKILL) at
//! each of its named crash points in turn; then `prune` and `check` must
//! find the store consistent, every snapshot that existed before must be
//! intact, and the interrupted operation must have fully happened or left
//! nothing a user can see. Then real SIGKILLs at random moments.

use crate::support::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The fixture every case starts from:
/// base (committed) <- mid (committed) <- act (active), view v of mid,
/// busy (active, mounted).
struct Fixture {
    store: Store,
    target: PathBuf,
    layer: PathBuf,
    _mounted: MountGuard,
}

fn fixture(driver: &str) -> Option<Fixture> {
    if !require_root_and_overlay() {
        return None;
    }
    let store = Store::setup(driver)?;
    write_layer(&store, "base", None, &[("a", "base a"), ("d/x", "base x")]);
    write_layer(
        &store,
        "mid",
        Some("base"),
        &[("b", "mid b"), ("a", "mid a")],
    );
    store.strata(&["prepare", "act", "mid"]).success();
    fs::write(writable_dir(&store, "act").join("c"), "act c").unwrap();
    store.strata(&["view", "v", "mid"]).success();
    store.strata(&["prepare", "busy"]).success();
    let mounted = store.mount("busy");
    fs::write(mounted.join("m"), "mounted").unwrap();
    let target = store.scratch("target");
    // A layer to apply: the change of `mid` written by GNU tar.
    let layer = store.scratch("layer.tar");
    let src = store.scratch_dir("layer-src");
    fs::write(src.join("new-file"), "from a layer").unwrap();
    tar_dir(&src, &layer, &[]);
    Some(Fixture {
        store,
        target,
        layer,
        _mounted: mounted,
    })
}

/// Commits `name` on `parent` with `files` written straight into its layer.
fn write_layer(store: &Store, name: &str, parent: Option<&str>, files: &[(&str, &str)]) {
    let key = format!("{name}-w");
    let mut args = vec!["prepare", key.as_str()];
    args.extend(parent);
    store.strata(&args).success();
    let dir = writable_dir(store, &key);
    for (path, content) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    store.strata(&["commit", name, &key]).success();
}

/// name -> (kind, parent, labels) of every snapshot.
fn state(store: &Store) -> BTreeMap<String, (String, String, String)> {
    let ls = store.strata(&["ls", "--json"]).success().json();
    ls.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                (
                    s["kind"].as_str().unwrap().to_string(),
                    s["parent"].as_str().unwrap_or("").to_string(),
                    s["labels"].to_string(),
                ),
            )
        })
        .collect()
}

/// The tree of committed `name`, read through a mounted view.
fn contents(store: &Store, name: &str) -> BTreeMap<String, String> {
    let tree = store.view_tree(name);
    tree.entries
        .keys()
        .filter_map(|k| {
            tree.content(k)
                .filter(|c| !c.is_empty())
                .map(|c| (k.clone(), c))
        })
        .collect()
}

fn run_op(store: &Store, op: &[String], env: &[(&str, &str)]) -> std::process::ExitStatus {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NO_COLOR", "1")
        .env(CONFIG_VAR, no_config(&store.root))
        .arg("--root")
        .arg(&store.root)
        .args(op)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.status().unwrap()
}

/// The crash points `op` passes through on the fixture.
fn points_of(driver: &str, op: &[String]) -> Vec<String> {
    let Some(fx) = fixture(driver) else {
        return Vec::new();
    };
    let trace = fx.store.scratch("trace");
    let op = retarget(op, &fx);
    let _guard = MountGuard::new(&fx.target);
    let status = run_op(
        &fx.store,
        &op,
        &[("STRATA_CRASH_TRACE", trace.to_str().unwrap())],
    );
    assert!(status.success(), "{op:?} fails without a crash");
    fs::read_to_string(&trace)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `op` with the placeholders TARGET and LAYER filled from the fixture.
fn retarget(op: &[String], fx: &Fixture) -> Vec<String> {
    op.iter()
        .map(|a| match a.as_str() {
            "TARGET" => fx.target.to_str().unwrap().to_string(),
            "LAYER" => fx.layer.to_str().unwrap().to_string(),
            _ => a.clone(),
        })
        .collect()
}

/// The operations walked (TARGET and LAYER are filled in per fixture).
fn operations() -> Vec<Vec<String>> {
    let t = "TARGET";
    let ops: Vec<Vec<&str>> = vec![
        vec!["prepare", "new", "mid", "--label", "x=1"],
        vec!["prepare", "root2"],
        vec!["view", "v2", "base"],
        vec!["prepare", "newm", "mid", "--mount", t],
        vec!["commit", "done", "act", "--label", "y=2"],
        vec!["commit", "busy-c", "busy"],
        vec!["rm", "v"],
        vec!["rm", "-r", "mid"],
        vec!["rm", "-f", "busy"],
        vec!["label", "mid", "z=3", "a="],
        vec!["mount", "act", t],
        vec!["unmount", "busy"],
        vec!["apply", "lay", "mid", "LAYER"],
        vec!["apply", "--label", "l=1", "lay2", "base", "LAYER"],
    ];
    ops.into_iter()
        .map(|o| o.into_iter().map(str::to_string).collect())
        .collect()
}

fn crash_every_point(driver: &str) {
    if !require_root_and_overlay() {
        return;
    }
    let ops = operations();
    let mut walked = 0;
    for op in ops {
        let points = points_of(driver, &op);
        assert!(!points.is_empty(), "{op:?} passes no crash point");
        let mut seen = std::collections::HashSet::new();
        for point in points {
            if !seen.insert(point.clone()) {
                continue;
            }
            crash_at(driver, &op, &point);
            walked += 1;
        }
    }
    eprintln!("{driver}: crashed at {walked} points");
    assert!(walked >= 30, "only {walked} crash points walked");
}

fn crash_at(driver: &str, op: &[String], point: &str) {
    let fx = fixture(driver).unwrap();
    let store = &fx.store;
    let before = state(store);
    let base_before = contents(store, "base");
    let mid_before = contents(store, "mid");
    let op = retarget(op, &fx);
    let _target_guard = MountGuard::new(&fx.target);
    let status = run_op(store, &op, &[("STRATA_CRASH_AT", point)]);
    let what = format!("{driver}: {op:?} killed at {point}");
    assert_eq!(status.signal(), Some(9), "{what}: not killed ({status:?})");

    // A mount made just before the crash is the user's to see; undo it so
    // only the store's own state is judged.
    if op[0] != "unmount" && is_mount_point(&fx.target) {
        Command::new("umount")
            .arg("-l")
            .arg(&fx.target)
            .status()
            .unwrap();
    }
    store.strata(&["prune"]).success();
    let check = store.strata(&["check"]);
    assert_eq!(
        check.code,
        0,
        "{what}: check after prune:\n{}",
        check.session()
    );

    let after = state(store);
    let happened = judge(&op, &before, &after, &what);
    // Everything that existed before and was not the operation's target is
    // intact, content included.
    if after.contains_key("base") {
        assert_eq!(contents(store, "base"), base_before, "{what}: base changed");
    }
    if after.contains_key("mid") {
        assert_eq!(contents(store, "mid"), mid_before, "{what}: mid changed");
    }
    // The store stays usable: the operation can be run (again) to the end,
    // or, if it happened, is refused as done.
    let again = run_op(store, &op, &[]);
    if !happened {
        assert!(
            again.success(),
            "{what}: running it again after the crash failed"
        );
    }
    store.strata(&["check"]).success();
    // No directory is left that the index does not know.
    for d in store.snapshot_dirs() {
        assert!(d.parse::<u64>().is_ok(), "{what}: leftover {d} after prune");
    }
}

/// Asserts the operation fully happened or left no trace; returns which.
fn judge(
    op: &[String],
    before: &BTreeMap<String, (String, String, String)>,
    after: &BTreeMap<String, (String, String, String)>,
    what: &str,
) -> bool {
    let mut expect = before.clone();
    match op[0].as_str() {
        "prepare" | "view" => {
            let kind = if op[0] == "view" { "view" } else { "active" };
            let parent = op
                .get(2)
                .filter(|p| !p.starts_with('-'))
                .cloned()
                .unwrap_or_default();
            let labels = if op.contains(&"x=1".to_string()) {
                r#"{"x":"1"}"#
            } else {
                "{}"
            };
            expect.insert(op[1].clone(), (kind.into(), parent, labels.into()));
        }
        "commit" => {
            let (_, parent, _) = expect.remove(&op[2]).unwrap();
            let labels = if op.contains(&"y=2".to_string()) {
                r#"{"y":"2"}"#
            } else {
                "{}"
            };
            expect.insert(op[1].clone(), ("committed".into(), parent, labels.into()));
        }
        "rm" => {
            let key = op.last().unwrap();
            expect.remove(key);
            if op.contains(&"-r".to_string()) {
                // the whole subtree, in one transaction
                expect.retain(|_, (_, parent, _)| parent != key && parent != "act");
                expect.retain(|k, (_, parent, _)| !(parent == "mid" || k == "act" || k == "v"));
            }
        }
        "apply" => {
            let args: Vec<&String> = op
                .iter()
                .filter(|a| !a.starts_with('-') && *a != "l=1")
                .collect();
            let labels = if op.contains(&"l=1".to_string()) {
                r#"{"l":"1"}"#
            } else {
                "{}"
            };
            expect.insert(
                args[1].clone(),
                ("committed".into(), args[2].clone(), labels.into()),
            );
        }
        "label" => {
            expect.get_mut(&op[1]).unwrap().2 = r#"{"z":"3"}"#.into();
        }
        _ => return after == before, // mount / unmount: no snapshot changes
    }
    if after == &expect {
        true
    } else {
        assert_eq!(after, before, "{what}: neither done nor untouched");
        false
    }
}

#[test]
fn overlay_crash_at_every_point() {
    crash_every_point("overlay");
}

#[test]
fn native_crash_at_every_point() {
    crash_every_point("native");
}

/// Real SIGKILLs at random moments: a few hundred operations on one store,
/// each killed after a random delay, then prune + check.
#[test]
fn random_sigkills_leave_a_consistent_store() {
    let Some(fx) = fixture("overlay") else {
        return;
    };
    let store = &fx.store;
    let base_before = contents(store, "base");
    let mut seed: u64 = 0x5eed_1234_abcd;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut killed = 0;
    let ops = 240;
    for i in 0..ops {
        let k = format!("r{}", rand(12));
        let op: Vec<String> = match rand(6) {
            0 => vec!["prepare".into(), k, "mid".into()],
            1 => vec!["commit".into(), format!("c{}", rand(12)), k],
            2 => vec!["rm".into(), "-r".into(), k],
            3 => vec!["view".into(), k, "base".into()],
            4 => vec!["label".into(), k, format!("i={i}")],
            _ => vec!["rm".into(), "-r".into(), format!("c{}", rand(12))],
        };
        let mut child = Command::new(BIN)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env(CONFIG_VAR, no_config(&store.root))
            .arg("--root")
            .arg(&store.root)
            .args(&op)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(rand(15_000)));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            killed += 1;
        }
        child.wait().unwrap();
    }
    eprintln!("random kills: {killed} of {ops} operations killed");
    store.strata(&["prune"]).success();
    store.strata(&["check"]).success();
    assert_eq!(contents(store, "base"), base_before);
    // Every snapshot left is whole: its mounts can be computed and an
    // active one mounted.
    for (name, (kind, _, _)) in state(store) {
        if kind != "committed" {
            store.strata(&["mounts", "--", &name]).success();
        }
    }
}

/// The paths a command `fsync`s (or `fdatasync`s), in order, as `strace -y`
/// names their descriptors.
fn synced_paths(store: &Store, args: &[&str]) -> Vec<String> {
    traced(store, args, "fsync,fdatasync")
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// The system calls of `calls` that `strata ARGS` makes, in order, each
/// with the path it concerns: a sync's descriptor's path (`-y`), a
/// rename's destination.
fn traced(store: &Store, args: &[&str], calls: &str) -> Vec<(String, String)> {
    let log = store.scratch("strace");
    let status = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", &format!("trace={calls}"), "-o"])
        .arg(&log)
        .arg(BIN)
        .arg("--root")
        .arg(&store.root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(CONFIG_VAR, no_config(&store.root))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "strace strata {args:?}: {status}");
    let log = fs::read_to_string(&log).unwrap();
    log.lines()
        .filter_map(|line| {
            // `PID call(args) = result`
            let (_, call) = line.split_once(' ')?;
            let (name, args) = call.trim_start().split_once('(')?;
            let path = if name.starts_with("rename") {
                args.rsplit('"').nth(1)?
            } else {
                args.split_once('<')?.1.split_once('>')?.0
            };
            Some((name.to_string(), path.to_string()))
        })
        .collect()
}

/// `export` makes its layout durable in order: each blob's data is synced
/// before the rename that names it, the blob directories before
/// `index.json` is replaced, `index.json`'s data before its rename, and
/// the layout directory after it. A power loss then leaves the old layout
/// or the new one, never an `index.json` naming a blob the disk lacks or
/// replaced by an empty file (which would lose every image in it).
#[test]
fn export_syncs_what_it_names_before_it_names_it() {
    if !require(&["strace"]) {
        return;
    }
    let Some(store) = Store::setup("native") else {
        return;
    };
    write_layer(&store, "base", None, &[("a", "base a")]);
    write_layer(&store, "app", Some("base"), &[("b", "app b")]);
    let layout = store.scratch_dir("layout");
    let dir = layout.to_str().unwrap().to_string();
    let sha = format!("{dir}/blobs/sha256");
    let calls = traced(
        &store,
        &["export", "app", &dir],
        "fsync,fdatasync,rename,renameat,renameat2",
    );
    let (mut data_synced, mut blobs, mut sha_synced, mut index) = (false, 0, false, None);
    for (i, (call, path)) in calls.iter().enumerate() {
        let in_sha = path.starts_with(&format!("{sha}/"));
        if call.starts_with("rename") {
            assert!(
                data_synced,
                "{path} renamed before its data was synced: {calls:#?}"
            );
            data_synced = false;
            if in_sha {
                blobs += 1;
            } else if path == &format!("{dir}/index.json") {
                assert!(sha_synced, "index.json before {sha} was synced: {calls:#?}");
                index = Some(i);
            }
        } else if in_sha
            || path.starts_with(&format!("{dir}/#"))
            || path.starts_with(&format!("{dir}/."))
        {
            // A file being written (unnamed, or a temporary).
            data_synced = true;
        } else if path == &sha {
            sha_synced = true;
        }
    }
    // Two layers, their config and the manifest.
    assert_eq!(blobs, 4, "{calls:#?}");
    let index = index.expect("index.json replaced");
    assert!(
        calls[index..]
            .iter()
            .any(|(call, path)| call.starts_with("fsync") && path == &dir),
        "the layout directory is synced after index.json: {calls:#?}"
    );
}

/// SQLite syncs the directory of a rollback journal it opens with the
/// create flag, so that a new journal is found after a power loss. The
/// index keeps its journal between transactions, and strata's VFS
/// (src/store/vfs.rs) opens one that has been written before without that
/// flag: a write then syncs the journal and the index but not the store
/// directory, while a journal made anew still gets its directory synced.
#[test]
fn the_store_directory_is_synced_only_for_a_new_journal() {
    if !require(&["strace"]) {
        return;
    }
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "a"]).success();
    let root = store.root.to_str().unwrap().to_string();
    let journal = format!("{root}/index.db-journal");
    let db = format!("{root}/index.db");
    let count = |synced: &[String], path: &str| synced.iter().filter(|p| *p == path).count();

    let synced = synced_paths(&store, &["label", "a", "x=1"]);
    assert_eq!(count(&synced, &root), 0, "{synced:?}");
    assert_eq!(count(&synced, &db), 1, "{synced:?}");
    assert!(count(&synced, &journal) >= 2, "{synced:?}");

    fs::remove_file(&journal).unwrap();
    let synced = synced_paths(&store, &["label", "a", "x=2"]);
    assert_eq!(count(&synced, &root), 1, "{synced:?}");
    let position = |path: &str| synced.iter().position(|p| p == path).unwrap();
    assert!(
        position(&root) < position(&db),
        "the new journal's directory is synced before the index is written: {synced:?}"
    );
    assert_eq!(store.info("a")["labels"]["x"], "2");
    store.strata(&["check"]).success();
}
