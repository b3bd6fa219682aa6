//! Command semantics beyond the conformance suite: rm, commit of mounted snapshots,
//! labels, mount bookkeeping, unmount, tree, printed mount lines, aliases.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::json;

use crate::support::*;

both_drivers!(
    store_is_created_0700,
    rm_recursive_removes_leaves_first,
    rm_force_unmounts,
    rm_several_keys_one_failing,
    commit_of_mounted_key_unmounts_first,
    commit_to_taken_name_keeps_key,
    labels,
    mount_record_dropped_when_mount_disappears,
    unmount_by_key_and_by_target,
    prepare_and_view_with_mount,
    tree_table,
    ls_table,
    printed_mounts_work_in_a_shell,
    printed_mounts_work_with_a_comma_in_the_store_path,
    aliases,
);

fn store_is_created_0700(driver: &str) {
    let s = setup!(driver);
    let mode = fs::metadata(&s.root).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "store root mode {mode:o}");
    // Created on first use, too.
    let fresh = Store::uninitialized(driver);
    fresh.strata(&["ls"]).success();
    let mode = fs::metadata(&fresh.root).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "store root mode {mode:o}");
}

fn rm_recursive_removes_leaves_first(driver: &str) {
    let s = setup!(driver);
    forest(&s, false);
    let dirs_before = s.snapshot_dirs().len();
    s.strata(&["rm", "-r", "mid"]).success();
    assert_eq!(s.names(&[]), ["base", "other", "solo"]);
    assert_eq!(s.snapshot_dirs().len(), dirs_before - 3);

    s.strata(&["prepare", "leaf", "base"]).success();
    s.layer("mid", Some("base"), &[]);
    s.strata(&["view", "look", "mid"]).success();
    let run = s.strata(&["rm", "--recursive", "base"]).success();
    assert_eq!(s.names(&[]), ["solo"]);
    // Where removals are reported, every snapshot is reported after its descendants.
    let out = format!("{}{}", run.stdout, run.stderr);
    let at = |k: &str| out.find(&format!("`{k}`"));
    for (child, parent) in [
        ("look", "mid"),
        ("mid", "base"),
        ("leaf", "base"),
        ("other", "base"),
    ] {
        if let (Some(c), Some(p)) = (at(child), at(parent)) {
            assert!(
                c < p,
                "{parent} reported removed before {child}:\n{}",
                run.session()
            );
        }
    }
    assert_eq!(s.snapshot_dirs().len(), 1);
    // A key named after its ancestor went with it: not an error.
    s.layer("b2", None, &[]);
    s.layer("t2", Some("b2"), &[]);
    s.strata(&["rm", "-r", "b2", "t2"]).success();
    assert_eq!(s.names(&[]), ["solo"]);
    // Recursive rm of a leaf is a plain rm.
    s.strata(&["rm", "-r", "solo"]).success();
    assert!(s.names(&[]).is_empty() && s.snapshot_dirs().is_empty());
}

fn rm_force_unmounts(driver: &str) {
    let s = setup!(driver);
    forest(&s, false);
    let leaf = s.mount("leaf");
    let look = s.mount("look");
    s.strata(&["rm", "leaf"]).fails_with(5, "leaf");
    assert!(is_mount_point(&leaf.path));

    s.strata(&["rm", "-f", "leaf"]).success();
    assert!(!is_mount_point(&leaf.path), "rm -f left the mount");
    s.strata(&["rm", "--force", "look"]).success();
    assert!(!is_mount_point(&look.path), "rm --force left the mount");
    assert_eq!(s.names(&[]), ["base", "mid", "other", "solo"]);

    // A mounted snapshot deep in the subtree: -r alone refuses, -r -f unmounts it.
    let other = s.mount("other");
    s.strata(&["rm", "-r", "base"]).fails_with(5, "other");
    assert!(is_mount_point(&other.path));
    assert!(s.names(&[]).contains(&"other".to_string()));
    s.strata(&["rm", "-r", "-f", "base"]).success();
    assert!(!is_mount_point(&other.path));
    assert_eq!(s.names(&[]), ["solo"]);
}

fn rm_several_keys_one_failing(driver: &str) {
    let s = setup!(driver);
    forest(&s, false);
    // `mid` has children: it fails, the others are removed, exit code 5.
    let run = s
        .strata(&["rm", "solo", "mid", "other"])
        .fails_with(5, "mid");
    assert_eq!(
        s.names(&[]),
        ["base", "leaf", "look", "mid"],
        "{}",
        run.session()
    );

    s.strata(&["prepare", "a"]).success();
    s.strata(&["prepare", "b"]).success();
    // The exit code is that of the first failure in argument order.
    s.strata(&["rm", "a", "ghost", "mid", "b"])
        .fails_with(3, "ghost");
    assert_eq!(s.names(&[]), ["base", "leaf", "look", "mid"]);

    s.strata(&["prepare", "a"]).success();
    s.strata(&["prepare", "b"]).success();
    s.strata(&["rm", "a", "mid", "ghost", "b"])
        .fails_with(5, "ghost");
    assert_eq!(s.names(&[]), ["base", "leaf", "look", "mid"]);

    // With -o json, each failure is one JSON error object (one per line), and
    // no note for people comes between them (`a` is removed quietly).
    s.strata(&["prepare", "a"]).success();
    let run = s
        .strata(&["-o", "json", "rm", "mid", "a", "ghost"])
        .fails_with(5, "");
    assert!(
        !s.names(&[]).contains(&"a".to_string()),
        "{}",
        run.session()
    );
    let mut kinds: Vec<String> = run
        .stderr
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{}", run.session()));
            v["error"]["kind"].as_str().unwrap().to_string()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["failed_precondition", "not_found"],
        "{}",
        run.session()
    );
}

fn commit_of_mounted_key_unmounts_first(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "work"]).success();
    let m = s.mount("work");
    fs::write(m.join("written"), "while mounted\n").unwrap();
    s.strata(&["commit", "done", "work"]).success();
    assert!(!is_mount_point(&m.path), "commit left the active mounted");
    assert_eq!(s.info("done")["mounted_at"], json!([]));

    s.strata(&["view", "check", "done"]).success();
    let v = s.mount("check");
    assert_eq!(
        fs::read_to_string(v.join("written")).unwrap(),
        "while mounted\n"
    );
    s.unmount(&v);

    // Busy (a process has its cwd in it): the commit fails and nothing changes.
    s.strata(&["prepare", "busy", "done"]).success();
    let m = s.mount("busy");
    let mut holder = Command::new("sleep")
        .arg("30")
        .current_dir(&m.path)
        .spawn()
        .unwrap();
    let run = s.strata(&["commit", "busy-c", "busy"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    run.fails_with(5, "busy");
    assert_eq!(s.info("busy")["kind"], "active");
    assert_eq!(
        s.info("busy")["mounted_at"],
        json!([m.path.to_str().unwrap()])
    );
    assert!(is_mount_point(&m.path));
    s.fails(&["info", "busy-c"], "not_found");
    s.unmount(&m);
}

fn commit_to_taken_name_keeps_key(driver: &str) {
    let s = setup!(driver);
    s.layer("taken", None, &[]);
    s.strata(&["prepare", "work"]).success();
    let m = s.mount("work");
    fs::write(m.join("f"), "x").unwrap();
    s.fails(&["commit", "taken", "work"], "already_exists");
    assert_eq!(s.info("work")["kind"], "active");
    s.strata(&["commit", "free", "work"]).success();
    assert!(!is_mount_point(&m.path));
}

fn labels(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "--label", "a=1", "--label", "b=2", "work"])
        .success();
    assert_eq!(s.info("work")["labels"], json!({"a": "1", "b": "2"}));
    // `K=` on a create sets nothing, as `label KEY K=` removes (containerd
    // keeps no label with an empty value).
    s.strata(&[
        "prepare", "--label", "a=1", "--label", "e=", "--label", "a=", "empty",
    ])
    .success();
    assert_eq!(s.info("empty")["labels"], json!({}));
    s.strata(&["rm", "empty"]).success();

    let out = s.strata(&["label", "work", "c=3", "a="]).success();
    assert!(
        out.stdout.contains("work"),
        "label prints the snapshot:\n{}",
        out.session()
    );
    assert_eq!(s.info("work")["labels"], json!({"b": "2", "c": "3"}));
    // Values may contain `=`, spaces and UTF-8; keys may contain dots and slashes.
    s.strata(&[
        "label",
        "work",
        "eq=a=b",
        "sp=x y",
        "containerd.io/gc.root=ü",
    ])
    .success();
    assert_eq!(
        s.info("work")["labels"],
        json!({"b": "2", "c": "3", "eq": "a=b", "sp": "x y", "containerd.io/gc.root": "ü"})
    );
    // Removing a label that is not there is fine.
    s.strata(&["label", "work", "nothere="]).success();
    // A value with control characters is kept as given, and shown escaped
    // in a table, so it cannot break lines or drive the terminal.
    s.strata(&["label", "work", "ctl=a\nb\u{1b}[2J"]).success();
    assert_eq!(s.info("work")["labels"]["ctl"], "a\nb\u{1b}[2J");
    let table = s.strata(&["info", "work"]).success().stdout;
    assert!(table.contains("ctl=a\\nb\\u{1b}[2J\n"), "{table}");
    assert!(!table.contains('\u{1b}'), "{table}");
    s.strata(&["label", "work", "ctl="]).success();
    // So is a key: the SPEC asks only that it be non-empty and, with its
    // value, at most 4096 bytes (as containerd does).
    s.strata(&["label", "work", "k\tey=v"]).success();
    assert_eq!(s.info("work")["labels"]["k\tey"], "v");
    let table = s.strata(&["info", "work"]).success().stdout;
    assert!(table.contains("k\\tey=v\n"), "{table}");
    assert_eq!(s.names(&["--filter", "labels.\"k\\tey\"==v"]), ["work"]);
    s.strata(&["label", "work", "k\tey="]).success();

    // A committed snapshot gets only the labels given to commit.
    s.strata(&["commit", "--label", "x=y", "done", "work"])
        .success();
    assert_eq!(s.info("done")["labels"], json!({"x": "y"}));
    s.strata(&["prepare", "bare"]).success();
    s.strata(&["commit", "bare-c", "bare"]).success();
    assert_eq!(s.info("bare-c")["labels"], json!({}));

    // Views take labels; committed snapshots can be relabelled.
    s.strata(&["view", "--label", "v=1", "look", "done"])
        .success();
    assert_eq!(s.info("look")["labels"], json!({"v": "1"}));
    s.strata(&["label", "done", "x=", "z=9"]).success();
    assert_eq!(s.info("done")["labels"], json!({"z": "9"}));

    // Labels are searchable right away.
    assert_eq!(s.names(&["--filter", "labels.z==9"]), ["done"]);
}

fn mount_record_dropped_when_mount_disappears(driver: &str) {
    let s = setup!(driver);
    forest(&s, false);
    let m = s.mount("leaf");
    assert_eq!(
        s.info("leaf")["mounted_at"],
        json!([m.path.to_str().unwrap()])
    );
    let st = Command::new("/bin/umount").arg(&m.path).status().unwrap();
    assert!(st.success());

    let ls = s.strata(&["ls", "--json"]).success().json();
    let leaf = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "leaf")
        .unwrap();
    assert_eq!(
        leaf["mounted_at"],
        json!([]),
        "stale mount record: {leaf:#}"
    );
    assert_eq!(s.info("leaf")["mounted_at"], json!([]));
    let table = s.strata(&["ls"]).success();
    assert!(
        !table.stdout.contains(m.path.to_str().unwrap()),
        "{}",
        table.session()
    );
    // Not mounted any more, so a plain rm works.
    s.strata(&["rm", "leaf"]).success();
}

fn unmount_by_key_and_by_target(driver: &str) {
    let s = setup!(driver);
    forest(&s, false);
    // A view can be mounted many times (an active overlay only once).
    let a = s.mount("look");
    let b = s.mount("look");
    let v = s.mount("leaf");
    let mut want = vec![a.path.to_str().unwrap(), b.path.to_str().unwrap()];
    want.sort();
    let mut got: Vec<String> = s.info("look")["mounted_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want);

    // By key: every mount of that snapshot.
    s.strata(&["unmount", "look"]).success();
    assert!(!is_mount_point(&a.path) && !is_mount_point(&b.path));
    assert!(is_mount_point(&v.path));
    assert_eq!(s.info("look")["mounted_at"], json!([]));

    // By target, with the `umount` alias.
    s.strata(&["umount", v.path.to_str().unwrap()]).success();
    assert!(!is_mount_point(&v.path));
    assert_eq!(s.info("leaf")["mounted_at"], json!([]));

    // Nothing mounted there any more.
    s.fails(&["unmount", v.path.to_str().unwrap()], "not_found");
    // A mount strata did not make is not strata's to undo.
    let foreign = s.scratch_dir("foreign");
    let _g = MountGuard::new(&foreign);
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&foreign)
        .status()
        .unwrap();
    assert!(st.success());
    s.fails(&["unmount", foreign.to_str().unwrap()], "not_found");
    assert!(is_mount_point(&foreign));
}

fn prepare_and_view_with_mount(driver: &str) {
    let s = setup!(driver);
    let t = s.scratch("new/nested/target"); // created if missing
    let g = MountGuard::new(&t);
    let run = s
        .strata(&["prepare", "work", "--mount", t.to_str().unwrap()])
        .success();
    assert!(is_mount_point(&t), "{}", run.session());
    assert_eq!(s.info("work")["mounted_at"], json!([t.to_str().unwrap()]));
    fs::write(t.join("f"), "via --mount").unwrap();
    s.strata(&["commit", "c", "work"]).success();
    drop(g);

    let t = s.scratch("view-target");
    let _g = MountGuard::new(&t);
    s.strata(&["view", "look", "c", "--mount", t.to_str().unwrap()])
        .success();
    assert_eq!(fs::read_to_string(t.join("f")).unwrap(), "via --mount");
    s.strata(&["unmount", "look"]).success();
    assert!(!is_mount_point(&t));
}

fn tree_table(driver: &str) {
    let s = setup!(driver);
    forest(&s, false);
    s.layer("zroot", None, &[]);
    let m = s.mount("leaf");
    let tree = s.strata(&["tree"]).success();
    let mounted = format!(" [mounted at {}]", m.path.display());
    let want = format!(
        "base\n\
         ├── mid\n\
         │   ├── leaf (active){mounted}\n\
         │   └── look (view)\n\
         └── other (active)\n\
         solo (active)\n\
         zroot\n"
    );
    assert_eq!(tree.stdout, want, "{}", tree.session());
    s.unmount(&m);

    let sub = s.strata(&["tree", "mid"]).success();
    assert_eq!(
        sub.stdout,
        "mid\n├── leaf (active)\n└── look (view)\n",
        "{}",
        sub.session()
    );
    let empty = setup!(driver);
    assert_eq!(empty.strata(&["tree"]).success().stdout, "");
}

fn ls_table(driver: &str) {
    let s = setup!(driver);
    forest(&s, false);
    let m = s.mount("leaf");
    let ls = s.strata(&["ls"]).success();
    let lines = ls.stdout_lines();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["KEY", "PARENT", "KIND", "SIZE", "CREATED", "MOUNTED", "AT"]
    );
    let keys: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(keys, ["base", "leaf", "look", "mid", "other", "solo"]);
    let leaf = lines.iter().find(|l| l.starts_with("leaf ")).unwrap();
    assert!(
        leaf.contains(" mid ")
            && leaf.contains(" active ")
            && leaf.ends_with(m.path.to_str().unwrap()),
        "{leaf}"
    );
    let base = lines.iter().find(|l| l.starts_with("base ")).unwrap();
    assert!(
        base.contains(" committed ") && base.contains("KiB"),
        "human sizes: {base}"
    );
    assert!(!ls.stdout.contains('\u{1b}'));
    s.unmount(&m);

    let kind = s.strata(&["ls", "--kind", "view"]).success();
    assert_eq!(kind.stdout_lines().len(), 2, "{}", kind.session());
    assert!(kind.stdout_lines()[1].starts_with("look "));
    // info as a table names the fields.
    let info = s.strata(&["info", "base"]).success();
    for field in ["base", "committed"] {
        assert!(info.stdout.contains(field), "{}", info.session());
    }
}

fn printed_mounts_work_in_a_shell(driver: &str) {
    let s = setup!(driver);
    pasted_mounts_work(&s);
}

/// mount(8) and the kernel split an overlay's options at commas: with one in
/// the store's path, the printed lines take the relative form.
fn printed_mounts_work_with_a_comma_in_the_store_path(driver: &str) {
    let Some(s) = Store::setup_named(driver, "st,ore") else {
        return;
    };
    pasted_mounts_work(&s);
    let run = s.strata(&["mounts", "top"]).success();
    if driver == "overlay" {
        assert!(run.stdout.starts_with("(cd "), "{}", run.session());
    }
}

/// Pastes the printed mounts of a chain's snapshots into a shell and checks
/// the mounted trees.
fn pasted_mounts_work(s: &Store) {
    s.layer("c1", None, &[file("one", "1", 0o644)]);
    s.layer("c2", Some("c1"), &[file("two", "2", 0o644)]);
    s.layer(
        "c3",
        Some("c2"),
        &[file("three", "3", 0o644), remove_all("one")],
    );
    s.strata(&["prepare", "root"]).success();
    s.strata(&["prepare", "top", "c3"]).success();
    s.strata(&["view", "single", "c1"]).success();
    s.strata(&["view", "deep", "c3"]).success();

    for (key, want, writable) in [
        ("root", vec![], true),
        ("top", vec!["three", "two"], true),
        ("single", vec!["one"], false),
        ("deep", vec!["three", "two"], false),
    ] {
        // A target with a space checks the quoting.
        let target = s.scratch(&format!("pasted {key}"));
        fs::create_dir(&target).unwrap();
        let _g = MountGuard::new(&target);
        let lines = s
            .strata(&["mounts", key, target.to_str().unwrap()])
            .success();
        assert!(
            lines
                .stdout
                .lines()
                .all(|l| l.starts_with("mount ") || l.starts_with("(cd ")),
            "{}",
            lines.session()
        );
        sh_ok(&lines.stdout, &lines.session());
        assert!(is_mount_point(&target), "{}", lines.session());
        let mut names: Vec<String> = fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, want, "{}", lines.session());
        let write = fs::write(target.join("new"), "x");
        assert_eq!(write.is_ok(), writable, "{write:?}");
        umount_by_hand(&target);
    }

    // Without TARGET, a placeholder is printed.
    let run = s.strata(&["mounts", "top"]).success();
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("mount -t ") && l.contains(" TARGET")),
        "{}",
        run.session()
    );
}

fn aliases(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "a"]).success();
    assert_eq!(
        s.strata(&["stat", "--json", "a"]).success().stdout,
        s.strata(&["info", "--json", "a"]).success().stdout
    );
    assert_eq!(
        s.strata(&["list", "--json"]).success().stdout,
        s.strata(&["ls", "--json"]).success().stdout
    );
    s.strata(&["remove", "a"]).success();
    assert!(s.names(&[]).is_empty());
}

#[test]
fn store_from_environment() {
    let s = setup!("native");
    let root = s.root.to_str().unwrap();
    let with = With {
        env: &[("STRATA_ROOT", root)],
        no_root: true,
        ..Default::default()
    };
    s.strata_with(&["prepare", "from-env"], with).success();
    assert_eq!(s.names(&[]), ["from-env"]);
    // An empty STRATA_ROOT is unset (the default store); an empty --root is
    // a bad command line.
    let home = s.scratch_dir("home");
    let home = home.to_str().unwrap();
    let empty = With {
        env: &[("STRATA_ROOT", ""), ("HOME", home)],
        no_root: true,
        ..Default::default()
    };
    let run = s.strata_with(&["config", "--json"], empty).success();
    assert_eq!(run.json()["root"]["source"], "default", "{}", run.session());
    let flag = With {
        no_root: true,
        ..Default::default()
    };
    s.strata_with(&["--root", "", "ls"], flag)
        .fails_with(2, "--root");
}

/// `tree` of a chain of 20,000 layers in every format, in bounded stack and
/// in memory and output that grow with the layers, not their square
/// (audit: `-o yaml` and `--json` died of a stack overflow, SIGSEGV, and
/// the table of a chain of 69,000 took 9.3 GB). The table starts again at
/// the left every 32 levels after `[+N] `; YAML goes to flow style 32
/// levels down; JSON stops indenting (its nested shape is the same).
#[test]
fn tree_of_a_very_deep_chain() {
    const N: usize = 20_000;
    let s = setup!("native");
    chain_by_sql(&s, N);
    let started = std::time::Instant::now();

    let table = s.strata(&["tree"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), N);
    assert_eq!(lines[0], "l0");
    assert_eq!(lines[1], "└── l1");
    assert_eq!(lines[32], format!("{}└── l32", " ".repeat(4 * 31)));
    assert_eq!(lines[33], "[+32] └── l33");
    assert_eq!(lines[34], "[+32]     └── l34");
    assert_eq!(lines[65], "[+64] └── l65");
    let widest = lines.iter().map(|l| l.chars().count()).max().unwrap();
    assert!(widest < 150, "a line of {widest} characters");

    let json = s.strata(&["tree", "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let mut want = String::from("[");
    for i in 0..N {
        want.push_str(&format!(
            r#"{{"name":"l{i}","kind":"committed","children":["#
        ));
    }
    want.push_str(&"]}".repeat(N));
    want.push(']');
    let bare: String = json.stdout.split_whitespace().collect();
    assert!(bare == want, "not the nested chain");
    assert!(json.stdout.len() < 500 * N, "{} bytes", json.stdout.len());

    let yaml = s.strata(&["tree", "-o", "yaml"]);
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    let mut want = String::new();
    for d in 0..32 {
        let pad = " ".repeat(2 * d + 2);
        want.push_str(&format!(
            "{}- name: l{d}\n{pad}kind: committed\n{pad}children:{}",
            &pad[2..],
            if d < 31 { "\n" } else { " [" }
        ));
    }
    let pad = " ".repeat(66);
    for d in 32..N {
        want.push_str(&format!(
            "\n{pad}{{name: l{d}, kind: committed, children: ["
        ));
    }
    want.push_str(&"]}".repeat(N - 32));
    want.push_str("]\n");
    assert!(yaml.stdout == want, "{}", &yaml.stdout[..2000]);

    let took = started.elapsed();
    assert!(took.as_secs() < 20, "{took:?}");
}
