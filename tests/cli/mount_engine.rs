//! The mount engine: chains up to the kernel's 500 layers mounted by strata
//! and by a pasted command, the refusal past it, the mount(2) fallback,
//! mount bookkeeping (stale records, busy unmounts) and unprivileged use.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Commits layers `from..=to` on `parent`; layer i writes `files/f{i}` and
/// overwrites `top`. Layer `delete_at` removes `files/f1` through a real
/// mount (so overlay records a whiteout).
fn build_chain(
    store: &Store,
    parent: Option<&str>,
    from: usize,
    to: usize,
    delete_at: Option<usize>,
) {
    let mut parent = parent.map(str::to_string);
    for i in from..=to {
        let key = format!("w{i}");
        let mut args = vec!["prepare".to_string(), "--".into(), key.clone()];
        args.extend(parent.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        store.strata(&args).success();
        if Some(i) == delete_at {
            let m = store.mount(&key);
            fs::remove_file(m.join("files/f1")).unwrap();
            store.unmount(&m);
        } else {
            let dir = writable_dir(store, &key);
            fs::create_dir_all(dir.join("files")).unwrap();
            fs::write(dir.join(format!("files/f{i}")), i.to_string()).unwrap();
            fs::write(dir.join("top"), i.to_string()).unwrap();
        }
        let name = format!("l{i}");
        store.strata(&["commit", &name, &key]).success();
        parent = Some(name);
    }
}

/// Checks the tree of a chain 1..=top seen at `root`.
fn check_chain(root: &Path, top: usize, deleted_f1: bool) {
    assert_eq!(
        fs::read_to_string(root.join("top")).unwrap(),
        top.to_string()
    );
    assert_eq!(
        fs::read_to_string(root.join("files/f2")).unwrap(),
        "2",
        "a file of the bottom layers"
    );
    assert_eq!(
        root.join("files/f1").exists(),
        !deleted_f1,
        "a file deleted in a middle layer stays deleted"
    );
    let n = fs::read_dir(root.join("files")).unwrap().count();
    assert_eq!(n, top - 1 - usize::from(deleted_f1));
}

#[test]
fn overlay_chain_of_500_layers_mounts_and_the_501st_is_refused() {
    let store = setup!("overlay");
    build_chain(&store, None, 1, 500, Some(250));

    // Mounted by strata: an active snapshot on top of 500 layers.
    store.strata(&["prepare", "top", "l500"]).success();
    let m = store.mount("top");
    check_chain(&m.path, 500, true);
    assert_eq!(fs::read_to_string(m.join("files/f500")).unwrap(), "500");
    fs::write(m.join("written"), "through 500 layers").unwrap();
    fs::remove_file(m.join("files/f2")).unwrap();
    store.unmount(&m);
    store.strata(&["commit", "l501", "top"]).success();

    // A view of the 501-layer chain would need 501 lowers: refused up front.
    let run = store.fails(&["view", "v501", "l501"], "unsupported");
    assert!(
        run.stderr.contains("500"),
        "names the kernel limit: {}",
        run.stderr
    );
    let run = store.fails(&["prepare", "p502", "l501"], "unsupported");
    assert!(!run.stderr.contains("alias"), "{}", run.stderr);
    assert!(!store.names(&[]).contains(&"v501".to_string()));

    // On an image alias (the empty layer pull and import put on an image's
    // top layer; a 500-layer image's is the 501st), the refusal says to
    // build on the top layer instead.
    store.strata(&["prepare", "al", "l500"]).success();
    let label = "strata.image.ref=example.com/app:1";
    store
        .strata(&["commit", "--label", label, "alias", "al"])
        .success();
    for verb in ["prepare", "view"] {
        let run = store.fails(&[verb, "app", "alias"], "unsupported");
        assert!(
            run.stderr
                .contains("`alias` is an image alias, an empty layer on the image's top layer: use `l500` as the parent"),
            "{}",
            run.stderr
        );
    }
    store.strata(&["prepare", "app", "l500"]).success();
    store.strata(&["rm", "app", "alias"]).success();
    // An image of 501 layers: its top layer is too deep as well, so no hint.
    // (Its alias is made as pull makes it, without mounting: an empty layer.)
    let empty = store.scratch("empty.tar");
    fs::write(&empty, [0u8; 1024]).unwrap();
    let empty = empty.to_str().unwrap();
    store
        .strata(&["apply", "--label", label, "alias501", "l501", empty])
        .success();
    let run = store.fails(&["prepare", "app", "alias501"], "unsupported");
    assert!(!run.stderr.contains("image alias"), "{}", run.stderr);
    store.strata(&["rm", "alias501"]).success();

    // The view of the 500-layer chain, mounted by pasting the printed command.
    let made = store.strata(&["view", "look", "l500"]).success();
    // What the create printed is what `mounts` prints for it.
    let again = store.strata(&["mounts", "look"]).success();
    assert_eq!(
        made.stdout, again.stdout,
        "view vs mounts of a 500-layer view"
    );
    let target = store.scratch_dir("pasted");
    let guard = MountGuard::new(&target);
    let printed = store
        .strata(&["mounts", "look", target.to_str().unwrap()])
        .success();
    let line = printed.stdout.trim();
    assert!(
        line.starts_with("(cd "),
        "deep chains are printed relative: {line}"
    );
    sh_ok(line, "the pasted mount command");
    check_chain(&guard.path, 500, true);
    assert!(
        fs::write(guard.join("x"), "x").is_err(),
        "a view is read-only"
    );
    drop(guard);

    // JSON always carries absolute paths, nearest parent first.
    let json = store.strata(&["mounts", "--json", "look"]).success().json();
    let lower = json[0]["options"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.as_str().unwrap().strip_prefix("lowerdir="))
        .unwrap()
        .to_string();
    let layers: Vec<&str> = lower.split(':').collect();
    assert_eq!(layers.len(), 500);
    assert!(layers.iter().all(|l| l.starts_with('/')));

    // The mount(2) fallback (forced) mounts the same chain.
    store.strata(&["view", "look2", "l500"]).success();
    let target = store.scratch("fallback");
    let guard = MountGuard::new(&target);
    let run = store.strata_with(
        &["mount", "look2", target.to_str().unwrap()],
        With {
            env: &[("STRATA_MOUNT_FALLBACK", "1")],
            ..Default::default()
        },
    );
    match run.code {
        0 => check_chain(&guard.path, 500, true),
        // Past one page even in relative form: a clear `unsupported`.
        7 => assert!(run.stderr.contains("500"), "{}", run.session()),
        _ => panic!("fallback mount failed:\n{}", run.session()),
    }
    drop(guard);

    // The whole chain commits and reads back the change made on top of it.
    store.strata(&["prepare", "check", "l500"]).success();
    let m = store.mount("check");
    assert!(!m.join("written").exists());
    drop(m);
}

#[test]
fn native_chains_are_not_limited_to_500() {
    let store = setup!("native");
    build_chain(&store, None, 1, 505, Some(3));
    store.strata(&["view", "look", "l505"]).success();
    let m = store.mount("look");
    check_chain(&m.path, 505, true);
    drop(m);
}

#[test]
fn fallback_mounts_short_chains_with_mount2() {
    for driver in ["overlay", "native"] {
        let store = setup!(driver);
        build_chain(&store, None, 1, 5, Some(4));
        store.strata(&["prepare", "top", "l5"]).success();
        let target = store.scratch("mnt");
        let guard = MountGuard::new(&target);
        store
            .strata_with(
                &["mount", "top", target.to_str().unwrap()],
                With {
                    env: &[("STRATA_MOUNT_FALLBACK", "1")],
                    ..Default::default()
                },
            )
            .success();
        check_chain(&guard.path, 5, true);
        fs::write(guard.join("new"), "new").unwrap();
        store.strata(&["commit", "c", "top"]).success();
        assert!(!is_mount_point(&guard.path), "commit unmounted it");
        let tree = store.view_tree("c");
        assert_eq!(tree.content("new").as_deref(), Some("new"));
    }
}

#[test]
fn stale_records_are_dropped_and_busy_unmounts_change_nothing() {
    let store = setup!("overlay");
    store.strata(&["prepare", "a"]).success();
    let m = store.mount("a");
    assert_eq!(store.info("a")["mounted_at"][0], m.path.to_str().unwrap());

    // Unmounted behind strata's back: the record goes.
    umount_by_hand(&m.path);
    assert_eq!(store.info("a")["mounted_at"], serde_json::json!([]));
    store.fails(&["unmount", "a"], "not_found");

    // Busy: an open file keeps it mounted, and the record stays.
    let m = store.mount("a");
    let file = fs::File::create(m.join("held")).unwrap();
    let run = store.fails(
        &["unmount", m.path.to_str().unwrap()],
        "failed_precondition",
    );
    assert!(run.stderr.contains("busy"), "{}", run.stderr);
    assert!(is_mount_point(&m.path));
    assert_eq!(store.info("a")["mounted_at"][0], m.path.to_str().unwrap());
    // commit of a busy mount fails and leaves `a` active and mounted.
    store.fails(&["commit", "c", "a"], "failed_precondition");
    assert_eq!(store.info("a")["kind"], "active");
    // rm -f cannot unmount it either, and says which snapshot it was
    // removing (audit: only the busy target was named).
    let run = store.fails(&["rm", "-f", "a"], "failed_precondition");
    let error = run.json_error();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot remove `a`: unmounting it from "),
        "{}",
        run.session()
    );
    assert!(
        error["hints"].to_string().contains("strata unmount --lazy"),
        "{}",
        run.session()
    );
    // --lazy detaches it anyway.
    store.strata(&["unmount", "--lazy", "a"]).success();
    assert!(!is_mount_point(&m.path));
    drop(file);
    assert_eq!(store.info("a")["mounted_at"], serde_json::json!([]));
    store.strata(&["commit", "c", "a"]).success();
}

fn tmpfs_at(target: &Path) {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "mine"])
        .arg(target)
        .status()
        .unwrap();
    assert!(ok.success());
    fs::write(target.join("precious"), "mine").unwrap();
}

/// A process started in a mount namespace of its own, killed when dropped.
struct InNamespace(std::process::Child);

impl Drop for InNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `unshare -m --propagation private ARGS…`, in a cleared environment
/// (STRATA_CONFIG naming no file beside `store`'s root: [`no_config`]).
fn unshared(store: &Store, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(CONFIG_VAR, no_config(&store.root))
        .args(["-m", "--propagation", "private"])
        .args(args);
    c
}

/// `strata mount KEY TARGET` run in a mount namespace of its own, which a
/// process keeps alive until the result is dropped; TARGET is returned.
fn mount_in_another_namespace(store: &Store, key: &str) -> (InNamespace, PathBuf) {
    mount_in_another_namespace_then(store, key, ":")
}

/// [`mount_in_another_namespace`], running shell command `then` there
/// after the mount (`$T` is the target).
fn mount_in_another_namespace_then(store: &Store, key: &str, then: &str) -> (InNamespace, PathBuf) {
    let t = store.scratch_dir("elsewhere");
    let ready = store.scratch("ready");
    let script = format!(
        "T='{}' && '{BIN}' --root '{}' mount '{key}' \"$T\" && {then} && : > '{}' && exec sleep 120",
        t.display(),
        store.root.display(),
        ready.display()
    );
    let child = InNamespace(unshared(store, &["sh", "-c", &script]).spawn().unwrap());
    for _ in 0..500 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ready.exists(), "the mount in the namespace did not happen");
    assert!(!is_mount_point(&t), "the namespace's mount shows here");
    (child, t)
}

/// A strata mount made in another mount namespace (`unshare -m`) cannot be seen from
/// here: while a process is in that namespace it counts as mounted (`rm`, `rm -f`,
/// `commit` and `unmount` refuse; `info` shows it), and once the namespace is gone
/// its record is stale. A read-only command run in a new namespace keeps this
/// namespace's records.
#[test]
fn mounts_of_other_mount_namespaces() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["prepare", "a", "base"]).success();
    let (child, t) = mount_in_another_namespace(&store, "a");
    let (root, t) = (store.root.to_str().unwrap(), t.to_str().unwrap());
    assert_eq!(store.info("a")["mounted_at"][0], t);
    for args in [
        &["rm", "a"][..],
        &["rm", "-f", "a"],
        &["commit", "c", "a"],
        &["unmount", t],
    ] {
        store.fails(args, "failed_precondition");
    }
    let ls = unshared(&store, &[BIN, "--root", root, "ls"])
        .output()
        .unwrap();
    assert!(ls.status.success(), "{ls:?}");
    assert_eq!(
        store.info("a")["mounted_at"][0],
        t,
        "a new namespace dropped it"
    );
    drop(child);
    // That namespace is gone, and its mount with it.
    store.strata(&["rm", "a"]).success();
}

/// A strata mount in another namespace undone there by hand (`umount`),
/// the namespace still alive: its record is stale from here too, so `rm`
/// goes through (before, it counted as mounted for as long as any process
/// was in that namespace). The mount is looked for in what the processes
/// of that namespace show.
#[test]
fn a_mount_undone_in_its_namespace_is_stale() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["prepare", "a", "base"]).success();
    store.strata(&["prepare", "b", "base"]).success();
    let (child, t) = mount_in_another_namespace_then(&store, "a", "umount \"$T\"");
    assert_eq!(store.info("a")["mounted_at"], serde_json::json!([]));
    store.strata(&["rm", "a"]).success();
    // Still mounted there: refused, as before.
    let (other, _) = mount_in_another_namespace(&store, "b");
    store.fails(&["rm", "b"], "failed_precondition");
    drop((child, other, t));
    store.strata(&["rm", "b"]).success();
}

/// `rm -r -f` of a subtree one of whose snapshots strata mounted in another
/// mount namespace refuses before anything goes, whatever batch would have
/// reached it: that mount cannot be undone from here (audit: the batches
/// before it were removed, then `rm` failed on it). Without `-f` too, and
/// the hint says where to unmount it.
#[test]
fn rm_r_of_a_subtree_mounted_in_another_namespace() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    // Leaves go first, newest first: `a`, the oldest, in the last batch.
    store.strata(&["prepare", "a", "base"]).success();
    for i in 0..40 {
        store
            .strata(&["-q", "prepare", &format!("a{i}"), "base"])
            .success();
    }
    let (child, t) = mount_in_another_namespace(&store, "a");
    let all = store.names(&[]);
    for args in [&["rm", "-r", "-f", "base"][..], &["rm", "-r", "base"]] {
        let mut json = vec!["-o", "json"];
        json.extend_from_slice(args);
        // Batches of 16.
        let run = store
            .with_file_limit(64, &json)
            .fails_json("failed_precondition");
        let error = run.json_error();
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("`a`") && message.contains("another mount namespace"),
            "{}",
            run.session()
        );
        assert!(
            error["hints"].to_string().contains("nsenter"),
            "{}",
            run.session()
        );
        assert_eq!(store.names(&[]), all, "{}", run.session());
    }
    assert_eq!(store.info("a")["mounted_at"][0], t.to_str().unwrap());
    drop(child);
    store.strata(&["rm", "-r", "base"]).success();
    store.strata(&["check"]).success();
}

/// A file system the user mounted inside a strata mount is theirs: `unmount --lazy`
/// (which would detach it too, files and all), `unmount`, `commit` and `rm -f` refuse
/// (`failed_precondition`, naming it) until the user unmounts it.
fn mounts_inside_a_strata_mount_are_left_alone(driver: &str) {
    let store = setup!(driver);
    store.layer("base", None, &[dir("dir", 0o755)]);
    store.strata(&["prepare", "a", "base"]).success();
    let m = store.mount("a");
    let t = m.path.to_str().unwrap().to_string();
    let inner = MountGuard::new(&m.join("dir"));
    tmpfs_at(&inner.path);
    for args in [
        &["unmount", "--lazy", &t][..],
        &["unmount", &t],
        &["commit", "c", "a"],
        &["rm", "-f", "a"],
    ] {
        let run = store.fails(args, "failed_precondition");
        assert!(
            run.stderr.contains("mounted inside it"),
            "{}",
            run.session()
        );
        assert!(
            is_mount_point(&inner.path),
            "{args:?} took the user's tmpfs"
        );
        assert!(inner.join("precious").exists());
    }
    umount_by_hand(&inner.path);
    store.strata(&["unmount", &t]).success();
    assert!(!is_mount_point(&m.path));
}

/// An overlay of the user's own, mounted where strata's overlay was (unmounted by
/// hand), usually gets the freed mount id: it is still not strata's, so `rm -f` leaves
/// it mounted (every overlay is `overlay overlay /`; the layers tell them apart).
#[test]
fn another_overlay_under_a_reused_mount_id_is_left_alone() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["prepare", "a", "base"]).success();
    let m = store.mount("a");
    umount_by_hand(&m.path);
    let (one, two) = (store.scratch_dir("one"), store.scratch_dir("two"));
    fs::write(one.join("mine"), "the user's\n").unwrap();
    let theirs = MountGuard::new(&m.path);
    let lower = format!("lowerdir={}:{}", one.display(), two.display());
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &lower])
        .arg(&m.path)
        .status()
        .unwrap();
    assert!(ok.success());
    store.strata(&["rm", "-f", "a"]).success();
    assert!(
        is_mount_point(&theirs.path),
        "strata unmounted the user's overlay"
    );
    assert_eq!(
        fs::read_to_string(theirs.join("mine")).unwrap(),
        "the user's\n"
    );
}

/// A record is about one mount (its kernel id), not about a path: a
/// filesystem the user mounted on top of strata's, or at the target of a
/// mount that is gone, is never unmounted by strata.
#[test]
fn mounts_that_are_not_strata_s_are_left_alone() {
    let store = setup!("overlay");
    store.strata(&["prepare", "a"]).success();
    let m = store.mount("a");
    let t = m.path.to_str().unwrap();

    // Stacked on top of strata's mount.
    let top = MountGuard::new(&m.path);
    tmpfs_at(&m.path);
    let run = store.fails(&["unmount", t], "failed_precondition");
    assert!(run.stderr.contains("on top of strata's"), "{}", run.stderr);
    store.fails(&["rm", "-f", "a"], "failed_precondition");
    assert!(
        m.join("precious").exists(),
        "the user's mount is still there"
    );
    assert_eq!(store.info("a")["mounted_at"][0], t);
    umount_by_hand(&m.path);
    store.strata(&["unmount", t]).success();
    assert!(!is_mount_point(&m.path));

    // Strata's mount gone by hand, another one at its target: the record is
    // stale, and `rm -f` removes the snapshot without touching that mount.
    let m = store.mount("a");
    umount_by_hand(&m.path);
    tmpfs_at(&m.path);
    store.strata(&["rm", "-f", "a"]).success();
    assert!(
        m.join("precious").exists(),
        "the user's mount is still there"
    );
    drop(top);
}

/// A mount strata did not record (pasted from `strata mounts`, or left by a
/// `strata mount` killed before its record) keeps `commit` and `rm` off the
/// snapshot: committing would leave it writable on a committed layer,
/// removing would delete what it shows.
fn mounts_strata_did_not_record_block_commit_and_rm(driver: &str) {
    // With a comma in the store's path the pasted overlay is the relative
    // form (`cd` into the store, `upperdir=../snapshots/ID/fs`); a killed
    // `strata mount` leaves the absolute one.
    let Some(store) = Store::setup_named(driver, "st,ore") else {
        return;
    };
    store.layer("base", None, &[file("f", "x", 0o644)]);
    for parent in [None, Some("base")] {
        let mut args = vec!["prepare", "a"];
        args.extend(parent);
        store.strata(&args).success();
        let target = store.scratch("pasted");
        fs::create_dir(&target).unwrap();
        let guard = MountGuard::new(&target);
        let t = target.to_str().unwrap();
        let lines = store.strata(&["mounts", "a", t]).success();
        if driver == "overlay" && parent.is_some() {
            assert!(lines.stdout.starts_with("(cd "), "{}", lines.session());
        }
        sh_ok(&lines.stdout, &lines.session());
        blocked(&store, &target);
        drop(guard);
        assert!(!is_mount_point(&target));

        // Killed between its mount and its record.
        let target = store.scratch("killed");
        let guard = MountGuard::new(&target);
        let t = target.to_str().unwrap();
        let killed = store.killed_at(&["mount", "a", t], "mount:mounted");
        assert!(is_mount_point(&target), "{}", killed.session());
        assert_eq!(store.info("a")["mounted_at"], serde_json::json!([]));
        blocked(&store, &target);
        drop(guard);
        store.strata(&["commit", "c", "a"]).success();
        store.strata(&["rm", "c"]).success();
    }
}

/// `commit` and `rm -f` of `a`, mounted at `target` behind strata's back,
/// fail and change nothing.
#[track_caller]
fn blocked(store: &Store, target: &Path) {
    fs::write(target.join("through-the-mount"), "w").unwrap();
    let elsewhere = store.scratch("elsewhere");
    let elsewhere = elsewhere.to_str().unwrap();
    let mount = ["mount", "a", elsewhere];
    let mut refused = vec![&["commit", "c", "a"][..], &["rm", "a"], &["rm", "-f", "a"]];
    // Two overlays on one upper directory are undefined behaviour.
    if store.driver == "overlay" && store.info("a")["parent"] == "base" {
        refused.push(&mount);
    }
    for args in refused {
        let run = store.fails(args, "failed_precondition");
        assert!(
            run.stderr.contains("strata did not record"),
            "{}",
            run.session()
        );
    }
    assert_eq!(store.info("a")["kind"], "active");
    assert!(is_mount_point(target));
    assert_eq!(
        fs::read_to_string(target.join("through-the-mount")).unwrap(),
        "w"
    );
}

/// A view of two or more layers mounted by hand is an overlay of lower
/// layers only (the view's own directory is not in it): `rm -r` of the
/// chain under it is refused while it is mounted, in every form its layers
/// can be named in, and `rm -r -f` leaves it mounted (strata never undoes a
/// mount it did not record). strata's own view mounts are not taken for one.
#[test]
fn hand_made_view_mounts_keep_rm_r_off_their_layers() {
    // With a `,` in the store's path the printed line is the relative
    // `(cd STORE/l && mount …)` form, naming layers by their short links.
    // Past a batch, 16 under `ulimit -n 64` (as `rm` runs here), `rm -r`
    // looks at the whole subtree before its batches.
    for (name, relative) in [("store", false), ("st,ore", true)] {
        for crowded in [false, true] {
            let Some(store) = Store::setup_named("overlay", name) else {
                return;
            };
            view_chain(&store, crowded);
            for parent in ["mid", "top"] {
                let view = format!("v-{parent}");
                let pasted = paste_mount(&store, &view, relative);
                rm_r_refused(&store, &pasted.path);
                // strata's own mount in the subtree stays: every refusal
                // comes before `-f` undoes anything (in one batch it did).
                let own = store.mount("v-mid");
                let run = rm(&store, &["rm", "-r", "-f", "base"]);
                let run = run.fails_json("failed_precondition");
                assert!(
                    run.stderr.contains("strata did not record"),
                    "{}",
                    run.session()
                );
                assert!(is_mount_point(&own.path), "rm -r -f undid strata's mount");
                store.unmount(&own);
                umount_by_hand(&pasted.path);
                // Left by a `strata mount` killed before its record: the
                // layers as strata hands them over (`lowerdir+=`).
                let killed = MountGuard::new(&store.scratch("killed"));
                let t = killed.path.to_str().unwrap();
                store.killed_at(&["mount", &view, t], "mount:mounted");
                rm_r_refused(&store, &killed.path);
                umount_by_hand(&killed.path);
            }
            // strata's own: unmounted by `rm -r -f`, refused by `rm -r`.
            let own = store.mount("v-top");
            rm(&store, &["rm", "-r", "base"]).fails_json("failed_precondition");
            rm(&store, &["rm", "-r", "-f", "base"]).success();
            assert!(!is_mount_point(&own.path));
            assert_eq!(store.names(&[]), Vec::<String>::new());
        }
    }
}

/// Two `rm -r -f` at once never wait for each other: one (X, in batches)
/// that waited for the lock of a snapshot a `strata mount` held, then
/// found another mounted by hand, and one (Y) that took the locks of its
/// subtree in id order (review: X kept the first lock while it waited for
/// the second, which Y held while it waited for the first; both hung).
/// Both are refused for the hand-made mount, and end.
#[test]
fn racing_rm_r_f_do_not_wait_for_each_other() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    for i in 0..20 {
        store
            .strata(&["-q", "prepare", &format!("pad{i}"), "base"])
            .success();
    }
    store.layer("mid", Some("base"), &[]);
    store.strata(&["prepare", "b", "mid"]).success();
    store.strata(&["prepare", "a", "mid"]).success();
    let pasted = paste_mount(&store, "b", false);
    let target = MountGuard::new(&store.scratch("mnt"));
    let mount = Paused::start(
        &store,
        &["mount", "a", target.path.to_str().unwrap()],
        "mount:mounted",
    );
    let trace = store.scratch("trace");
    let spawn = |args: &[&str], hard: Option<u64>| {
        let mut cmd = command(&store.root, args);
        if let Some(n) = hard {
            limit_open_files(&mut cmd, n, Some(n));
        }
        cmd.env("STRATA_CRASH_TRACE", &trace)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // X: batches of 16; it waits for a's lock at its look at the subtree.
    let x = spawn(&["rm", "-r", "-f", "base"], Some(64));
    let reached = || fs::read_to_string(&trace).is_ok_and(|t| t.contains("rm:unrecorded-mount"));
    for _ in 0..3000 {
        if reached() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(reached(), "rm -r -f base did not look at the subtree");
    // Y: one batch (mid, b, a), locked in id order: it waits for a's lock.
    let y = spawn(&["rm", "-r", "-f", "mid"], None);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mount = mount.resume();
    assert_eq!(mount.status.code(), Some(0), "{mount:?}");
    for (name, child) in [("X", x), ("Y", y)] {
        let out = bounded(child, 30);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{name}: {stderr}");
        assert!(stderr.contains("strata did not record"), "{name}: {stderr}");
    }
    umount_by_hand(&pasted.path);
    store.strata(&["rm", "-r", "-f", "base"]).success();
    assert!(!is_mount_point(&target.path));
}

/// `child`'s output, once it ends within `secs` seconds; killed (and the
/// test failed) if it does not.
fn bounded(mut child: std::process::Child, secs: u64) -> std::process::Output {
    for _ in 0..secs * 20 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!("still running after {secs} s (killed): {out:?}");
}

/// `base`, `mid` and `top`, a chain of three layers, with views `v-mid`
/// and `v-top` of two and three layers; `crowded` adds actives on `base`
/// until `rm -r base` takes more than one batch of 16.
fn view_chain(store: &Store, crowded: bool) {
    store.layer("base", None, &[file("one", "1", 0o644)]);
    store.layer("mid", Some("base"), &[file("two", "2", 0o644)]);
    store.layer("top", Some("mid"), &[file("three", "3", 0o644)]);
    store.strata(&["view", "v-mid", "mid"]).success();
    store.strata(&["view", "v-top", "top"]).success();
    for i in 0..if crowded { 12 } else { 0 } {
        store
            .strata(&["prepare", &format!("a{i}"), "base"])
            .success();
    }
}

/// `strata -o json ARGS…` (an `rm`) in batches of 16 snapshots.
fn rm(store: &Store, args: &[&str]) -> Run {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    store.with_file_limit(64, &all)
}

/// `key` mounted by pasting the line `strata mounts` prints into a shell,
/// which is in the relative `(cd …)` form if `relative`.
#[track_caller]
fn paste_mount(store: &Store, key: &str, relative: bool) -> MountGuard {
    let guard = MountGuard::new(&store.scratch_dir("pasted"));
    let lines = store
        .strata(&["mounts", key, guard.path.to_str().unwrap()])
        .success();
    assert_eq!(
        lines.stdout.starts_with("(cd "),
        relative,
        "{}",
        lines.session()
    );
    sh_ok(&lines.stdout, &lines.session());
    assert!(is_mount_point(&guard.path), "{}", lines.session());
    guard
}

/// `rm -r base` and `rm -r -f base` are refused for the mount at `target`,
/// which strata did not record, remove nothing and leave it mounted.
#[track_caller]
fn rm_r_refused(store: &Store, target: &Path) {
    let before = store.names(&[]);
    for args in [&["rm", "-r", "base"][..], &["rm", "-r", "-f", "base"]] {
        let run = rm(store, args).fails_json("failed_precondition");
        let named = run.stderr.contains(target.to_str().unwrap());
        assert!(
            named && run.stderr.contains("strata did not record"),
            "{}",
            run.session()
        );
    }
    assert_eq!(store.names(&[]), before);
    assert!(is_mount_point(target));
    assert_eq!(fs::read_to_string(target.join("one")).unwrap(), "1");
    assert_eq!(fs::read_to_string(target.join("two")).unwrap(), "2");
}

/// `commit c a` refused for the file system mounted at `point` inside `a`,
/// with the hint to unmount it.
#[track_caller]
fn refused_for_mount_inside(store: &Store, point: &str) {
    refused_for_mount_inside_with_hint(store, point, "umount");
}

/// As [`refused_for_mount_inside`], with the hint naming `command` to undo it.
fn refused_for_mount_inside_with_hint(store: &Store, point: &str, command: &str) {
    let run = store.fails(&["commit", "c", "a"], "failed_precondition");
    let error = run.json_error();
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("cannot commit `a`")
            && message.contains("mounted inside it")
            && message.contains(point),
        "{}",
        run.session()
    );
    assert!(
        error["hints"]
            .to_string()
            .contains(&format!("(`{command} {point}`)")),
        "{}",
        run.session()
    );
}

/// A strata mount of another snapshot inside strata's mount of `a` refuses
/// `a`'s commit, and the hint says to undo it with `strata unmount`, which also
/// forgets its record (review: it said `umount`).
#[test]
fn a_strata_mount_inside_is_undone_with_strata_unmount() {
    let store = setup!("overlay");
    store.layer("base", None, &[dir("dir", 0o755)]);
    store.strata(&["prepare", "a", "base"]).success();
    store.strata(&["view", "b", "base"]).success();
    let outer = store.mount("a");
    let inner = MountGuard::new(&outer.join("dir"));
    let point = inner.path.to_str().unwrap();
    store.strata(&["mount", "b", point]).success();
    refused_for_mount_inside_with_hint(&store, point, "strata unmount");
    // And `unmount` of the outer one says the same (review: `umount`).
    let run = store.fails(
        &["unmount", outer.path.to_str().unwrap()],
        "failed_precondition",
    );
    assert!(
        run.json_error()["hints"]
            .to_string()
            .contains(&format!("(`strata unmount {point}`)")),
        "{}",
        run.session()
    );
    store.strata(&["unmount", point]).success();
    store.strata(&["commit", "c", "a"]).success();
    assert!(!is_mount_point(&outer.path));
}

/// A file system mounted by hand inside an active snapshot's directory (the native
/// driver's tree, the overlay's upper directory) refuses its `commit`, as it refuses
/// its `rm`, before anything changes: the snapshot stays active and mounted where
/// strata mounted it (audit: the commit went through and counted the tmpfs's files as
/// the layer's usage).
fn commit_of_a_snapshot_with_a_mount_inside(driver: &str) {
    let store = setup!(driver);
    store.layer("base", None, &[dir("dir", 0o755)]);
    store.strata(&["prepare", "a", "base"]).success();
    let m = store.mount("a");
    // Made through the mount: in the overlay's upper directory too.
    fs::create_dir(m.join("sub")).unwrap();
    let inner = MountGuard::new(&writable_dir(&store, "a").join("sub"));
    tmpfs_at(&inner.path);
    fs::write(inner.join("big"), vec![0u8; 4 << 20]).unwrap();
    let point = inner.path.to_str().unwrap();
    refused_for_mount_inside(&store, point);
    assert_eq!(store.names(&[]), ["a", "base"]);
    let info = store.info("a");
    assert_eq!(info["kind"], "active");
    assert_eq!(info["mounted_at"][0], m.path.to_str().unwrap());
    assert!(is_mount_point(&m.path), "the commit undid strata's mount");
    assert!(is_mount_point(&inner.path) && inner.join("precious").exists());
    umount_by_hand(&inner.path);
    store.strata(&["commit", "c", "a"]).success();
    assert!(store.info("c")["usage"]["size"].as_u64().unwrap() < 1 << 20);
    assert!(!is_mount_point(&m.path));
    store.strata(&["check"]).success();
}

/// A native snapshot mounted twice, with a file system mounted by hand inside the mount
/// strata would undo last: `commit`, `rm -f` and `rm -r -f` refuse before they undo
/// either (audit: they unmounted the first, then failed on the second, `commit`
/// saying to close what uses it).
#[test]
fn commit_or_rm_with_a_mount_inside_a_second_strata_mount() {
    let store = setup!("native");
    store.layer("base", None, &[dir("dir", 0o755)]);
    store.strata(&["prepare", "a", "base"]).success();
    let (one, two) = (store.mount("a"), store.mount("a"));
    // Undone in the order of their targets: the tmpfs goes in the later one.
    let last = if one.path < two.path { &two } else { &one };
    let inner = MountGuard::new(&last.join("dir"));
    tmpfs_at(&inner.path);
    let point = inner.path.to_str().unwrap();
    refused_for_mount_inside(&store, point);
    let still = || {
        assert_eq!(store.info("a")["kind"], "active");
        assert_eq!(store.info("a")["mounted_at"].as_array().unwrap().len(), 2);
        assert!(is_mount_point(&one.path) && is_mount_point(&two.path));
        assert!(is_mount_point(&inner.path) && inner.join("precious").exists());
    };
    still();
    // `rm -f` the same, before it undoes a mount (review: it undid the first).
    for args in [&["rm", "-f", "a"][..], &["rm", "-r", "-f", "base"]] {
        let run = store.fails(args, "failed_precondition");
        let message = run.json_error()["message"].to_string();
        assert!(
            message.contains("cannot remove `a`") && message.contains(point),
            "{}",
            run.session()
        );
        still();
    }
    umount_by_hand(&inner.path);
    store.strata(&["commit", "c", "a"]).success();
    assert!(!is_mount_point(&one.path) && !is_mount_point(&two.path));
}

both_drivers!(
    mounts_strata_did_not_record_block_commit_and_rm,
    mounts_inside_a_strata_mount_are_left_alone,
    commit_of_a_snapshot_with_a_mount_inside,
    the_root_s_xattrs_reach_children_and_views
);

/// The xattrs of a snapshot's root directory are in its children and views, on
/// both drivers, as its mode and owner are (audit: overlay showed none, native
/// all); overlayfs's own are not carried up.
fn the_root_s_xattrs_reach_children_and_views(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "a"]).success();
    let m = s.mount("a");
    set_xattr(&m.path, "user.k", b"v");
    set_xattr(&m.path, "trusted.t", b"w");
    fs::write(m.join("f"), "x").unwrap();
    s.unmount(&m);
    s.strata(&["commit", "ac", "a"]).success();
    s.strata(&["prepare", "b", "ac"]).success();
    let b = s.mount("b");
    fs::write(b.join("g"), "y").unwrap();
    s.unmount(&b);
    s.strata(&["commit", "bc", "b"]).success();
    s.strata(&["prepare", "c", "bc"]).success();
    s.strata(&["view", "v", "bc"]).success();
    for key in ["c", "v"] {
        let m = s.mount(key);
        let got = xattrs(&m.path);
        s.unmount(&m);
        assert_eq!(
            got,
            [
                ("trusted.t".to_string(), b"w".to_vec()),
                ("user.k".to_string(), b"v".to_vec())
            ],
            "{driver} {key}"
        );
    }
}

/// Sets xattr `name` of `path` to `value`.
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &[u8]| std::ffi::CString::new(p).unwrap();
    let (p, n) = (c(path.as_os_str().as_bytes()), c(name.as_bytes()));
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

/// The xattrs of `path` (not following a symlink), sorted by name.
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "{}", std::io::Error::last_os_error());
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let c = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 4096];
        let v = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                c.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(v >= 0, "{}", std::io::Error::last_os_error());
        value.truncate(v as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    out
}

/// The notes of `mount`, `unmount` and `prepare`/`view --mount` show a target's
/// control characters escaped, as errors and `ls` do: one line per note, no raw
/// newline or escape sequence (review: "mounted `a` at …" came out as two lines, an
/// escape code sent to the terminal). A plain target is shown as it is.
#[test]
fn notes_escape_control_characters_of_a_target() {
    let store = setup!("overlay");
    store.layer("base", None, &[dir("dir", 0o755)]);
    store.strata(&["prepare", "a", "base"]).success();
    let odd = store.scratch("nl\n\x1b[31mred");
    let shown = odd
        .to_str()
        .unwrap()
        .replace('\n', "\\n")
        .replace('\x1b', "\\u{1b}");
    let one_note = |run: &Run, want: &str| {
        assert_eq!(run.stderr, format!("{want}\n"), "{}", run.session());
        assert!(!run.stderr.contains('\x1b'), "{}", run.session());
    };

    let guard = MountGuard::new(&odd);
    let t = odd.to_str().unwrap();
    let run = store.strata(&["mount", "a", t]).success();
    one_note(&run, &format!("mounted `a` at {shown}"));
    assert!(is_mount_point(&odd));
    let run = store.strata(&["unmount", t]).success();
    one_note(&run, &format!("unmounted {shown}"));
    assert!(!is_mount_point(&odd));

    let run = store
        .strata(&["prepare", "b", "base", "--mount", t])
        .success();
    one_note(&run, &format!("mounted `b` at {shown}"));
    let run = store.strata(&["unmount", "b"]).success();
    one_note(&run, &format!("unmounted {shown}"));

    let run = store.strata(&["view", "v", "base", "--mount", t]).success();
    one_note(&run, &format!("mounted `v` at {shown}"));
    let run = store.strata(&["unmount", "v"]).success();
    one_note(&run, &format!("unmounted {shown}"));
    drop(guard);

    // A target that needs no escaping is shown byte for byte.
    let plain = MountGuard::new(&store.scratch("plain"));
    let p = plain.path.to_str().unwrap();
    let run = store.strata(&["mount", "a", p]).success();
    one_note(&run, &format!("mounted `a` at {p}"));
    let run = store.strata(&["unmount", p]).success();
    one_note(&run, &format!("unmounted {p}"));
}

/// Targets that are not a directory, inside the store, the store itself or
/// above it are refused before anything is mounted or created.
#[test]
fn bad_mount_targets_are_invalid() {
    let store = setup!("overlay");
    store.strata(&["prepare", "a"]).success();
    let file = store.scratch("file");
    fs::write(&file, "x").unwrap();
    let inside = store.root.join("snapshots/new-target");
    let root = store.root.to_str().unwrap();
    // A way into the store through a symlink is judged where it leads.
    let sneaky = store.scratch("sneaky");
    std::os::unix::fs::symlink(store.root.join("snapshots"), &sneaky).unwrap();
    let through_link = sneaky.join("x");
    let under_file = file.join("x");
    let up_from_missing = store.tmp().join("missing/../elsewhere");
    // A symlink to nowhere, as the target or on the way to it.
    let dangling = store.scratch("dangling");
    std::os::unix::fs::symlink(store.tmp().join("nowhere"), &dangling).unwrap();
    let under_dangling = dangling.join("x");
    for target in [
        dangling.to_str().unwrap(),
        under_dangling.to_str().unwrap(),
        file.to_str().unwrap(),
        under_file.to_str().unwrap(),
        up_from_missing.to_str().unwrap(),
        inside.to_str().unwrap(),
        through_link.to_str().unwrap(),
        root,
        "/",
    ] {
        let run = store.fails(&["mount", "a", target], "invalid");
        assert!(run.stderr.contains("cannot mount `a`"), "{}", run.stderr);
    }
    assert!(!inside.exists(), "nothing was created in the store");
    assert!(
        !store.root.join("snapshots/x").exists(),
        "nothing was created in the store through the symlink"
    );
    assert!(!store.tmp().join("missing").exists() && !store.tmp().join("elsewhere").exists());
    assert!(
        !store.tmp().join("nowhere").exists(),
        "a symlink's destination was made"
    );
    // A target that is not UTF-8 could not be recorded (nor named in JSON).
    use std::os::unix::ffi::OsStrExt;
    let odd = store.tmp().join(std::ffi::OsStr::from_bytes(b"m-\xff"));
    let out = Command::new(BIN)
        .env_clear()
        .env("NO_COLOR", "1")
        .env(CONFIG_VAR, no_config(&store.root))
        .arg("--root")
        .arg(&store.root)
        .args(["mount", "a"])
        .arg(&odd)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    assert!(!odd.exists(), "the refused target was created");
    assert_eq!(store.info("a")["mounted_at"], serde_json::json!([]));
    store.strata(&["check"]).success();

    // The store, or a directory above it, under another name (a bind mount):
    // judged by what it is, not its path (audit: `mount v ALIAS/snapshots`
    // covered the store's own `snapshots/` where `/` is shared).
    let alias = store.scratch_dir("alias");
    let alias_guard = MountGuard::new(&alias);
    sh_ok(
        &format!(
            "mount --bind {} {}",
            shell_quote(root),
            shell_quote(alias.to_str().unwrap())
        ),
        "bind the store",
    );
    let above = store.scratch_dir("above");
    let above_guard = MountGuard::new(&above);
    let tmp = store.tmp().to_str().unwrap().to_string();
    sh_ok(
        &format!(
            "mount --bind {} {}",
            shell_quote(&tmp),
            shell_quote(above.to_str().unwrap())
        ),
        "bind the store's directory",
    );
    // A bind of a directory inside the store, too (review: a mount at a bind
    // of `snapshots/` covered it).
    let inner = store.scratch_dir("inner");
    let inner_guard = MountGuard::new(&inner);
    sh_ok(
        &format!(
            "mount --bind {} {}",
            shell_quote(store.root.join("snapshots").to_str().unwrap()),
            shell_quote(inner.to_str().unwrap())
        ),
        "bind the store's snapshots/",
    );
    for target in [
        alias.clone(),
        alias.join("snapshots"),
        alias.join("snapshots/new-target"),
        above.clone(),
        inner.clone(),
        inner.join("new-target"),
    ] {
        let run = store.fails(&["mount", "a", target.to_str().unwrap()], "invalid");
        assert!(run.stderr.contains("under another name"), "{}", run.stderr);
    }
    assert!(!inside.exists(), "nothing was created in the store");
    // A directory beside the store, on the same file system, is fine.
    let beside = store.scratch_dir("beside");
    store
        .strata(&["mount", "a", beside.to_str().unwrap()])
        .success();
    store
        .strata(&["unmount", beside.to_str().unwrap()])
        .success();
    drop(inner_guard);
    drop(above_guard);
    drop(alias_guard);
    assert_eq!(store.info("a")["mounted_at"], serde_json::json!([]));
}

#[test]
fn unmount_by_key_undoes_every_mount_of_the_snapshot() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.strata(&["view", "v", "base"]).success();
    let a = store.mount("v");
    let b = store.mount("v");
    let run = store.strata(&["ls", "--json"]).success().json();
    let v = run
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "v")
        .unwrap()
        .clone();
    assert_eq!(v["mounted_at"].as_array().unwrap().len(), 2);
    store.strata(&["unmount", "v"]).success();
    assert!(!is_mount_point(&a.path) && !is_mount_point(&b.path));
    // A second mount at a target strata already uses is refused.
    let c = store.mount("v");
    store.fails(&["mount", "v", c.path.to_str().unwrap()], "already_exists");
}

#[test]
fn overlay_mount_options_come_from_the_config_file() {
    let store = setup!("overlay");
    store.layer("base", None, &[file("f", "x", 0o644)]);
    store.layer("app", Some("base"), &[file("g", "y", 0o644)]);
    let config = store.config_file("overlay:\n  mount_options: [\"xino=off\", \"index=on\"]\n");
    let config = config.to_str().unwrap();
    store.strata(&["prepare", "p", "app"]).success();
    store.strata(&["prepare", "r"]).success();
    let opts = |key: &str| -> Vec<String> {
        let json = store
            .strata(&["--config", config, "mounts", "--json", key])
            .success()
            .json();
        json[0]["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().to_string())
            .collect()
    };
    let overlay = opts("p");
    assert!(overlay.contains(&"xino=off".to_string()), "{overlay:?}");
    assert!(overlay.contains(&"index=on".to_string()), "{overlay:?}");
    assert!(
        !overlay.contains(&"index=off".to_string()),
        "a configured index= wins: {overlay:?}"
    );
    let bind = opts("r");
    assert_eq!(bind, vec!["rbind", "rw"], "never applied to binds");
    // `config` names the setting as the file does, in every form.
    let shown = store
        .strata(&["--config", config, "config", "--json"])
        .success()
        .json();
    let want = serde_json::json!({"value": ["xino=off", "index=on"], "source": "file"});
    assert_eq!(shown["overlay"]["mount_options"], want, "{shown}");
    // And as first released: fields are only ever added.
    assert_eq!(shown["overlay_mount_options"], want, "{shown}");
    let table = store
        .strata(&["--config", config, "config"])
        .success()
        .stdout;
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["overlay.mount_options", "xino=off,index=on", "file"]),
        "{table}"
    );
    // And the mount really takes them.
    let target = store.scratch("mnt");
    let guard = MountGuard::new(&target);
    store
        .strata(&["--config", config, "mount", "p", target.to_str().unwrap()])
        .success();
    assert_eq!(fs::read_to_string(guard.join("f")).unwrap(), "x");
    let bad = store.config_file("overlay:\n  mount_option: [x]\n");
    let run = store.fails(&["--config", bad.to_str().unwrap(), "ls"], "invalid");
    assert!(run.stderr.contains("mount_option"), "{}", run.stderr);
    // With these an upper directory is no longer a snapshot's change (a
    // file's data, a renamed directory's content stay below): refused.
    for option in [
        "metacopy=on",
        "redirect_dir=on",
        "verity=on",
        "verity=require",
    ] {
        let bad = store.config_file(&format!("overlay:\n  mount_options: [{option}]\n"));
        let run = store.fails(&["--config", bad.to_str().unwrap(), "ls"], "invalid");
        assert!(run.stderr.contains(option), "{}", run.stderr);
    }
    // Each element is one option, and not one strata sets: refused when the
    // file loads, for every command (audit: a comma smuggled `metacopy=on`
    // into the printed line; `lowerdir=/etc` added /etc as a layer).
    for (option, why) in [
        ("'xino=off,metacopy=on'", "holds a comma"),
        ("''", "is empty"),
        ("'index=on '", "holds a space"),
        ("lowerdir=/etc", "strata sets itself"),
        ("'upperdir=/tmp'", "strata sets itself"),
        ("workdir=/tmp", "strata sets itself"),
        ("datadir+=/tmp", "strata sets itself"),
        ("ro", "views are read-only already"),
    ] {
        let bad = store.config_file(&format!("overlay:\n  mount_options: [{option}]\n"));
        for args in [&["mounts", "p"][..], &["prepare", "q", "app"]] {
            let mut all = vec!["--config", bad.to_str().unwrap()];
            all.extend_from_slice(args);
            let run = store.fails(&all, "invalid");
            assert!(run.stderr.contains(why), "{option}: {}", run.stderr);
        }
    }
    assert!(!store.names(&[]).contains(&"q".to_string()));
}

/// `unshare --user --map-root-user --mount`: overlay in a user namespace,
/// with `userxattr` added automatically.
#[test]
fn user_namespace_mounts_overlay_with_userxattr() {
    if !require_root_and_overlay() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let script = format!(
        r#"set -e
S="{bin} --root {root}"
$S init
$S prepare a --mount {t}/a
echo bottom > {t}/a/f
mkdir {t}/a/d && echo gone > {t}/a/d/x
$S commit a1 a
$S prepare b a1 --mount {t}/b
rm {t}/b/d/x
echo top > {t}/b/g
$S mounts b
$S commit b1 b
$S view v b1 --mount {t}/v
cat {t}/v/f {t}/v/g
test ! -e {t}/v/d/x
$S unmount v
"#,
        bin = BIN,
        root = root.display(),
        t = tmp.path().display()
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env(CONFIG_VAR, no_config(&root))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && stderr.contains("unshare failed")
        && std::env::var("CI").as_deref() != Ok("true")
    {
        eprintln!("skipped: user namespaces are not available: {stderr}");
        return;
    }
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("userxattr"), "{stdout}");
    assert!(stdout.contains("bottom\ntop\n"), "{stdout}");
}

/// A plain non-root user: the store is native, everything but mounting
/// works, and mounting is `unsupported` with a hint.
#[test]
fn plain_user_gets_native_store_and_unsupported_mounts() {
    if !require_root_and_overlay() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let script = format!(
        r#"S={bin}
$S init || exit 10
$S prepare a || exit 11
$S mount a {home}/m; echo "mount=$?"
d=$($S mounts a -o json | sed -n 's/.*"source": "\(.*\)".*/\1/p')
echo hello > "$d/f" || exit 12
$S commit a1 a || exit 13
$S prepare b a1 || exit 14
$S ls || exit 15
$S usage a1 -o json || exit 16
$S rm -r a1 || exit 17
"#,
        bin = BIN,
        home = home.display()
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["env", "-i", "PATH=/usr/bin:/bin", "NO_COLOR=1"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("{CONFIG_VAR}={}", no_config(&home).display()))
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // `init`'s note, on stderr.
    assert!(stderr.contains("native driver"), "{stderr}");
    assert!(stdout.contains("mount=7"), "{stdout}");
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(stdout.contains("\"inodes\": 2"), "{stdout}");
    assert!(home.join(".local/share/strata/index.db").exists());
}

/// A store at `name` (inside the test's temporary directory; parents are
/// created), made by `init` without a driver: the driver it detects.
fn odd_store(name: &str) -> Option<Store> {
    if !require_root_and_overlay() {
        return None;
    }
    let mut store = Store::uninitialized("overlay");
    store.root = store.tmp().join(name);
    fs::create_dir_all(store.root.parent().unwrap()).unwrap();
    let init = store.strata(&["init", "--json"]).success().json();
    assert_eq!(init["driver"], "overlay", "detected for {name:?}");
    store.strata(&["init", "--driver", "overlay"]).success();
    Some(store)
}

/// The kernel reads `:` in `lowerdir` as a separator, `,` as the end of an
/// option and `\` as an escape, and fsconfig takes at most 255 bytes a
/// value: a store whose path holds any of these (or is that long) still
/// gets the overlay driver, strata mounts its snapshots (with the new mount
/// API and with mount(2)), and its printed `mounts` lines work in a shell.
fn store_paths_the_kernel_reads_specially(name: &str, printed_absolute: bool) {
    let Some(store) = odd_store(name) else {
        return;
    };
    store.layer("base", None, &[file("f", "from base", 0o644)]);
    store.layer("mid", Some("base"), &[file("g", "from mid", 0o644)]);
    store.strata(&["prepare", "child", "mid"]).success();
    store.strata(&["view", "look", "mid"]).success();

    // Mounted by strata: the parents' files read through the overlay.
    for fallback in ["0", "1"] {
        let target = store.scratch("mnt");
        let guard = MountGuard::new(&target);
        store
            .strata_with(
                &["mount", "child", target.to_str().unwrap()],
                With {
                    env: &[("STRATA_MOUNT_FALLBACK", fallback)],
                    ..Default::default()
                },
            )
            .success();
        assert!(is_mount_point(&target));
        assert_eq!(fs::read_to_string(guard.join("f")).unwrap(), "from base");
        assert_eq!(fs::read_to_string(guard.join("g")).unwrap(), "from mid");
        fs::write(guard.join(&format!("new-{fallback}")), "w").unwrap();
        // Strata knows its mount (the upper directory is found in the
        // mount table however the kernel was handed its path).
        assert_eq!(
            store.info("child")["mounted_at"][0],
            target.to_str().unwrap()
        );
        store.unmount(&guard);
        drop(guard);
    }
    let json = store
        .strata(&["mounts", "--json", "child"])
        .success()
        .json();
    assert_eq!(json[0]["type"], "overlay", "{json}");

    // Pasted into a shell.
    for key in ["child", "look"] {
        let target = store.scratch_dir("pasted");
        let guard = MountGuard::new(&target);
        let printed = store
            .strata(&["mounts", key, target.to_str().unwrap()])
            .success();
        assert_eq!(
            !printed.stdout.starts_with("(cd "),
            printed_absolute,
            "{}",
            printed.session()
        );
        sh_ok(&printed.stdout, &printed.session());
        assert!(is_mount_point(&target), "{}", printed.session());
        assert_eq!(fs::read_to_string(guard.join("f")).unwrap(), "from base");
        assert_eq!(fs::read_to_string(guard.join("g")).unwrap(), "from mid");
        if key == "child" {
            assert_eq!(fs::read_to_string(guard.join("new-1")).unwrap(), "w");
            // Found in the mount table although strata did not record it.
            let run = store.fails(&["commit", "top", "child"], "failed_precondition");
            assert!(
                run.stderr.contains("strata did not record"),
                "{}",
                run.session()
            );
        }
        umount_by_hand(&target);
        drop(guard);
    }
    store.strata(&["commit", "top", "child"]).success();
    let tree = store.view_tree("top");
    assert_eq!(tree.content("new-0").as_deref(), Some("w"));
    store.strata(&["check"]).success();
}

#[test]
fn store_path_with_colon_backslash_and_space() {
    // No comma: the printed lines carry the escaped absolute paths.
    store_paths_the_kernel_reads_specially("st:o re\\x", true);
}

#[test]
fn store_path_with_comma_colon_backslash_and_space() {
    // A comma: the printed lines take the relative form.
    store_paths_the_kernel_reads_specially("s,t:o re\\x", false);
}

#[test]
fn store_path_longer_than_fsconfig_takes() {
    let name = format!("{}/{}:\\x", "a".repeat(150), "b".repeat(120));
    assert!(std::env::temp_dir().join(&name).as_os_str().len() > 255);
    store_paths_the_kernel_reads_specially(&name, true);
}

/// The command lines hints give for a mount point are quoted for a shell: a
/// target with a space and a quote pastes as one word (audit: `strata
/// unmount /tmp/sp ace's` was two words and an open quote).
#[test]
fn hints_quote_the_mount_points_they_name() {
    let store = setup!("overlay");
    store.strata(&["prepare", "a"]).success();
    let target = store.scratch("sp ace's");
    let t = target.to_str().unwrap();
    let _guard = MountGuard::new(&target);
    store.strata(&["mount", "a", t]).success();
    let quoted = shell_quote(t);
    assert_ne!(quoted, t);
    store.strata(&["mount", "a", t]).fails_with(
        4,
        &format!("hint: unmount it first: strata unmount {quoted}\n"),
    );
    store
        .strata(&["rm", "a"])
        .fails_with(5, &format!("(`strata unmount {quoted}`), or use `rm -f`"));
    // The quoted line works as it is.
    sh_ok(
        &format!(
            "{BIN} --root {} unmount {quoted}",
            shell_quote(store.root.to_str().unwrap())
        ),
        "the hint's line",
    );
    assert_eq!(store.info("a")["mounted_at"], serde_json::json!([]));
}

/// An active whose overlay the kernel mounts read-only, because it cannot make
/// its work directory on a full disk, is not said to be mounted: `internal`, the
/// mount undone, no record; once there is room it mounts writable. (Audit:
/// "mounted" with exit 0, and read-only until mounted again.)
#[test]
fn an_active_the_kernel_mounts_read_only_is_refused() {
    if !require_root_and_overlay() {
        return;
    }
    let tmpfs = Disk::tmpfs("size=4m,nr_inodes=48");
    let disk = &tmpfs.path;
    let root = disk.join("store");
    let strata = |args: &[&str]| {
        let out = command(&root, args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(strata(&["init", "--driver", "overlay"]).0, Some(0));
    assert_eq!(strata(&["prepare", "a"]).0, Some(0));
    assert_eq!(strata(&["commit", "base", "a"]).0, Some(0));
    assert_eq!(strata(&["prepare", "b", "base"]).0, Some(0));
    // Every inode taken.
    let mut n = 0;
    while fs::write(disk.join(format!("fill{n}")), "").is_ok() {
        n += 1;
    }
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("mnt");
    let _target = MountGuard::new(&target);
    let (code, stderr) = strata(&["mount", "b", target.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the kernel mounted it read-only"),
        "{stderr}"
    );
    assert!(!is_mount_point(&target), "the read-only mount was left");
    for i in 0..n {
        fs::remove_file(disk.join(format!("fill{i}"))).unwrap();
    }
    assert_eq!(strata(&["mount", "b", target.to_str().unwrap()]).0, Some(0));
    fs::write(target.join("f"), "x").unwrap();
    assert_eq!(strata(&["unmount", target.to_str().unwrap()]).0, Some(0));
}

/// A store's owner who is not root prepares on an overlay parent whose root is
/// read-only to them and has a `user.*` xattr: the xattr is copied before the
/// root takes the parent's mode (review: EACCES, where the prepare had always
/// worked).
#[test]
fn a_read_only_parent_root_with_xattrs_is_prepared_on_by_its_owner() {
    if !require_root_and_overlay() || !require(&["setpriv"]) {
        return;
    }
    let s = setup!("overlay");
    s.strata(&["prepare", "a"]).success();
    s.strata(&["commit", "base", "a"]).success();
    let tree = s.root.join("snapshots/1/fs");
    set_xattr(&tree, "user.x", b"1");
    sh_ok(
        &format!(
            "chmod 0555 {t} && chown -R 65534:65534 {r}",
            t = shell_quote(tree.to_str().unwrap()),
            r = shell_quote(s.root.to_str().unwrap())
        ),
        "a read-only parent root",
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .env_clear()
        .env(CONFIG_VAR, no_config(&s.root))
        .arg("--root")
        .arg(&s.root)
        .args(["prepare", "b", "base"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let root_b = s.root.join("snapshots/2/fs");
    let got = xattrs(&root_b);
    assert_eq!(got, [("user.x".to_string(), b"1".to_vec())]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&root_b).unwrap().permissions().mode() & 0o7777,
        0o555
    );
}
