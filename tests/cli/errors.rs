//! Every error kind of the SPEC with its exit code, its one-line table form and its JSON
//! form, and that failures change nothing.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// A store with `base` (committed), `child` (active on base), `look` (view of base) and
/// `solo` (active, no parent).
fn populated(driver: &str) -> Option<Store> {
    let s = Store::setup(driver)?;
    s.layer("base", None, &[file("f", "base\n", 0o644)]);
    s.strata(&["prepare", "child", "base"]).success();
    s.strata(&["view", "look", "base"]).success();
    s.strata(&["prepare", "solo"]).success();
    Some(s)
}

/// What `ls --json` and ROOT/snapshots show, to compare before and after a failure.
fn state(s: &Store) -> (Value, Vec<String>) {
    (
        s.strata(&["ls", "--json"]).success().json(),
        s.snapshot_dirs(),
    )
}

#[track_caller]
fn assert_unchanged(s: &Store, before: &(Value, Vec<String>), what: &str) {
    let after = state(s);
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&after.0),
        names(&before.0),
        "snapshots changed after {what}"
    );
    assert_eq!(after.0, before.0, "`ls --json` changed after {what}");
    assert_eq!(after.1, before.1, "ROOT/snapshots changed after {what}");
}

both_drivers!(
    not_found,
    already_exists,
    failed_precondition,
    invalid,
    failed_create_leaves_nothing,
    failed_create_with_mount_leaves_nothing,
    table_errors_are_one_line,
    outputs_inside_the_store_are_invalid,
    rm_of_immutable_files,
    arguments_the_wrong_way_round,
);

/// What strata writes at a path the user names never lands in the store:
/// a layer on the index or in a snapshot's tree (directly or through a
/// symlink), an OCI layout in the store's root or its snapshots.
fn outputs_inside_the_store_are_invalid(driver: &str) {
    let Some(s) = populated(driver) else { return };
    let before = state(&s);
    let index = s.root.join("index.db");
    let index_bytes = fs::read(&index).unwrap();
    let snapshots = s.root.join("snapshots");
    // base is the first snapshot made: directory 1.
    let tree = snapshots.join("1/fs");
    let link = s.scratch("into-store");
    std::os::unix::fs::symlink(&snapshots, &link).unwrap();
    let paths = [
        index.clone(),
        tree.join("evil.tar"),
        link.join("1/fs/evil.tar"),
    ];
    for path in &paths {
        let path = path.to_str().unwrap();
        let run = s.fails(&["diff", "base", "--output-file", path], "invalid");
        assert!(run.stderr.contains("inside the store"), "{}", run.session());
    }
    for dir in [s.root.clone(), snapshots.join("layout")] {
        s.fails(&["export", "base", dir.to_str().unwrap()], "invalid");
    }
    assert_eq!(
        fs::read(&index).unwrap(),
        index_bytes,
        "the index was touched"
    );
    assert!(!tree.join("evil.tar").exists());
    assert!(!s.root.join("index.json").exists() && !snapshots.join("layout").exists());
    // Nor through a bind mount of the store, which names it otherwise.
    let alias = s.scratch_dir("alias");
    let guard = MountGuard::new(&alias);
    sh_ok(
        &format!(
            "mount --bind {} {}",
            shell_quote(s.root.to_str().unwrap()),
            shell_quote(alias.to_str().unwrap())
        ),
        "bind the store",
    );
    let aliased = alias.join("snapshots/1/fs/evil.tar");
    let run = s.fails(
        &["diff", "base", "--output-file", aliased.to_str().unwrap()],
        "invalid",
    );
    assert!(run.stderr.contains("inside the store"), "{}", run.session());
    let layout = alias.join("snapshots/layout");
    s.fails(&["export", "base", layout.to_str().unwrap()], "invalid");
    drop(guard);
    assert!(!tree.join("evil.tar").exists() && !snapshots.join("layout").exists());
    assert_unchanged(&s, &before, "writes refused inside the store");
    s.strata(&["check"]).success();
    // An output file that is a directory is a bad value, one in a directory
    // that does not exist is not found (audit: both `internal`).
    let dir = s.scratch_dir("outdir");
    let file = s.scratch("a-file");
    fs::write(&file, "x").unwrap();
    for (path, kind, said) in [
        (dir.clone(), "invalid", "is a directory"),
        (dir.join("no/such/l.tar"), "not_found", "does not exist"),
        (file.join("l.tar"), "invalid", "is not a directory"),
    ] {
        let run = s.fails(
            &["diff", "base", "--output-file", path.to_str().unwrap()],
            kind,
        );
        assert!(run.stderr.contains(said), "{}", run.session());
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}

/// A store named by `$STRATA_ROOT` is no part of the command line: a usage
/// error shows the same usage line as with `--root` (it showed `strata view
/// --root <DIR> <KEY> <PARENT>`, as if `--root` were required).
#[test]
fn usage_lines_do_not_show_the_environment_root() {
    let s = Store::uninitialized("none");
    let root = s.root.to_str().unwrap();
    let usage = |run: Run| {
        assert_eq!(run.code, 2, "{}", run.session());
        let line = run.stderr.lines().find(|l| l.starts_with("hint: usage: "));
        line.unwrap_or_else(|| panic!("{}", run.session()))
            .to_string()
    };
    for args in [&["view", "k"][..], &["prepare"], &["ls", "--nope"]] {
        let flag = usage(s.strata(args));
        let env = usage(s.strata_with(
            args,
            With {
                env: &[("STRATA_ROOT", root)],
                no_root: true,
                ..Default::default()
            },
        ));
        assert_eq!(env, flag);
        assert!(!env.contains("--root"), "{env}");
    }
    assert!(!s.root.exists(), "a usage error created the store");
}

#[test]
fn usage_errors() {
    // No store is touched: parsing fails first. Needs neither root nor overlay.
    let s = Store::uninitialized("none");
    for args in [
        &["prepare", "--bogus", "k"][..],
        &["ls", "--nope"],
        &["frobnicate"],
        &["prepare", "-x"],
        &["ls", "--kind"],
        &["prepare", "k", "--label"],
        &["apply", "x", "--max-size="],
    ] {
        s.strata(args).fails_with(2, "");
        s.fails(args, "usage");
    }
    // A value a flag refuses is a bad value (`invalid`, exit 6), as a bad
    // filter is: one line naming it, without clap's usage lines.
    for (args, value) in [
        (&["ls", "--kind", "weird"][..], "'weird'"),
        (&["-o", "xml", "ls"], "'xml'"),
        (&["init", "--driver", "zfs"], "'zfs'"),
        (&["diff", "k", "--compression", "bogus"], "'bogus'"),
        (&["apply", "x", "--max-size", "bogus"], "'bogus'"),
        (&["completions", "tcsh"], "'tcsh'"),
    ] {
        let run = s.strata(args).fails_with(6, value);
        let mut lines = run.stderr.lines();
        assert!(
            lines.next().is_some_and(|l| l.starts_with("error: ")),
            "{}",
            run.session()
        );
        assert!(lines.all(|l| l.starts_with("hint: ")), "{}", run.session());
        if args[0] != "-o" {
            let mut json = args.to_vec();
            json.push("--json");
            s.strata(&json).fails_json("invalid");
        }
    }
    // A near miss gets a hint.
    s.strata(&["-o", "yml", "ls"])
        .fails_with(6, "hint: did you mean `yaml`?");
    for args in [
        &["prepare"][..],
        &["view", "k"],
        &["commit", "n"],
        &["mount", "k"],
        &["mounts"],
        &["info"],
        &["label", "k"],
        &["rm"],
        &["unmount"],
        &[],
    ] {
        let run = s.strata(args);
        assert_eq!(run.code, 2, "{}", run.session());
        assert!(!run.stderr.is_empty(), "{}", run.session());
        s.fails(args, "usage");
    }
    // The JSON message keeps the names clap lists below its first line.
    let run = s.fails(&["commit", "n"], "usage");
    let v: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(
        v["error"]["message"],
        "the following required arguments were not provided: <KEY>",
        "{}",
        run.session()
    );
    // `-o=json` and a config file's `output: json` ask for JSON as well.
    s.strata(&["-o=json", "prepare"]).fails_json("usage");
    let config = s.config_file("output: json\n");
    s.strata(&["--config", config.to_str().unwrap(), "prepare"])
        .fails_json("usage");
    // `-o` at the end of a cluster of short flags, as clap takes it; and a
    // flag's `table` beats the file's `json`.
    for args in [
        &["-qo", "json", "prepare"][..],
        &["-qojson", "prepare"],
        &["-vqo=json", "prepare"],
        &["--output=json", "prepare"],
    ] {
        s.strata(args).fails_json("usage");
    }
    let run = s.strata(&[
        "--config",
        config.to_str().unwrap(),
        "-qo",
        "table",
        "prepare",
    ]);
    assert!(
        run.code == 2 && run.stderr.starts_with("error:"),
        "{}",
        run.session()
    );
    // An argument that is not UTF-8 is a bad value (keys and labels are
    // UTF-8), reported like any other, not a crash.
    use std::os::unix::ffi::OsStrExt;
    for (json, args) in [
        (false, &[&b"prepare"[..], b"\xff"][..]),
        (true, &[b"-o", b"json", b"prepare", b"\xff"]),
        (
            true,
            &[b"-o", b"json", b"prepare", b"k", b"--label", b"k=\xff"],
        ),
    ] {
        let out = Command::new(BIN)
            .env_clear()
            .env("NO_COLOR", "1")
            .env(CONFIG_VAR, no_config(&s.root))
            .arg("--root")
            .arg(&s.root)
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{stderr}");
        assert!(stderr.contains("invalid UTF-8"), "{stderr}");
        if json {
            let v: Value = serde_json::from_str(stderr.trim()).unwrap();
            assert_eq!(v["error"]["kind"], "invalid", "{stderr}");
        } else {
            // One line, as every bad value gets; no usage block.
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with("error: "), "{stderr}");
        }
    }
    // Nothing was created by a command line that does not parse.
    assert!(!s.root.exists(), "a usage error created the store");
}

/// A bad command line in the table form is one `error:` line and `hint:`
/// lines, as every error is (SPEC: "one clear line"): clap's tips ("a
/// similar argument exists"), the usage line and which `--help` to read,
/// named by the command's name when the line has an alias. It was clap's
/// block: `error:`, a blank line, `Usage:`, "For more information, try
/// '--help'.". The JSON form carries the same hints. Help, version and
/// bare `strata` (help on stderr, exit 2) are not such errors.
#[test]
fn usage_errors_are_one_line_with_hints() {
    let s = Store::uninitialized("none");
    for (args, hint) in [
        (&["ls", "--nope"][..], "hint: see `strata ls --help`"),
        (
            &["prepare"],
            "hint: usage: strata prepare [OPTIONS] <KEY> [PARENT]",
        ),
        (&["remove"], "hint: see `strata rm --help`"),
        (
            &["lss"],
            "hint: some similar subcommands exist: 'list', 'ls'",
        ),
        (
            &["ls", "--fliter", "x"],
            "hint: a similar argument exists: '--filter'",
        ),
        (
            &["prepare", "-x"],
            "hint: to pass '-x' as a value, use '-- -x'",
        ),
        (&["ls", "--kind"], "hint: see `strata ls --help`"),
        (&["-v"], "hint: see `strata --help`"),
    ] {
        let run = s.strata(args).fails_with(2, hint);
        let mut lines = run.stderr.lines();
        let first = lines.next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{}", run.session());
        assert!(lines.all(|l| l.starts_with("hint: ")), "{}", run.session());
        assert!(
            !run.stderr.contains("For more information"),
            "{}",
            run.session()
        );
        let json = s.fails(args, "usage").json_error();
        let hint = hint.trim_start_matches("hint: ");
        assert!(
            json["hints"].as_array().unwrap().contains(&hint.into()),
            "{json}"
        );
    }
    // Help and version are not errors; they go to stdout.
    for args in [&["--help"][..], &["-h"], &["ls", "--help"], &["help", "ls"]] {
        let run = s.strata(args).success();
        assert!(run.stdout.contains("Usage: strata"), "{}", run.session());
        assert_eq!(run.stderr, "", "{}", run.session());
    }
    let run = s.strata(&["--version"]).success();
    assert!(run.stdout.starts_with("strata "), "{}", run.session());
    // Bare `strata` shows the help on stderr, as a usage error (exit 2).
    let out = Command::new(BIN)
        .env_clear()
        .env(CONFIG_VAR, no_config(&s.root))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "{stderr}");
    assert!(
        stderr.contains("Usage: strata") && stderr.contains("Commands:"),
        "{stderr}"
    );
    assert!(!s.root.exists(), "a usage error created the store");
}

/// The `usage:` hint of a bad command line is the command's own usage line,
/// as its `--help` shows it, whatever options the line gave: clap's named
/// them (`strata commit --quiet <NAME> <KEY>` for `commit -q`, `strata rm
/// --root <DIR> <KEY>...` for `rm --root=/x`), as if they were required,
/// and left out `[OPTIONS]` where arguments were missing (audit).
#[test]
fn usage_lines_are_the_plain_ones_whatever_the_line_gives() {
    let s = Store::uninitialized("none");
    for (args, usage) in [
        (
            &["commit", "-q"][..],
            "strata commit [OPTIONS] <NAME> <KEY>",
        ),
        (&["commit"], "strata commit [OPTIONS] <NAME> <KEY>"),
        (&["rm", "--root=/x"], "strata rm [OPTIONS] <KEY>..."),
        (&["rm", "-f", "-v"], "strata rm [OPTIONS] <KEY>..."),
        (
            &["-q", "prepare", "--label", "a=b"],
            "strata prepare [OPTIONS] <KEY> [PARENT]",
        ),
        (
            &["view", "k", "--mount", "/mnt"],
            "strata view [OPTIONS] <KEY> <PARENT>",
        ),
        (&["ls", "--kind", "active", "--nope"], "strata ls [OPTIONS]"),
        (
            &["label", "k", "-q"],
            "strata label [OPTIONS] <KEY> <K=V>...",
        ),
        (&["-q", "--nope"], "strata [OPTIONS] <COMMAND>"),
    ] {
        let run = s.strata(args).fails_with(2, "hint: usage: ");
        let want = format!("hint: usage: {usage}");
        assert!(
            run.stderr.lines().any(|l| l == want),
            "no {want:?} in\n{}",
            run.session()
        );
        let json = s
            .fails(&[args, &["--json"][..]].concat(), "usage")
            .json_error();
        let want = format!("usage: {usage}");
        assert!(
            json["hints"]
                .as_array()
                .unwrap()
                .contains(&want.as_str().into()),
            "{json}"
        );
    }
    assert!(!s.root.exists(), "a usage error created the store");
}

/// Every usage error (exit 2) has the `usage:` hint, also those clap gives
/// no usage line for: a missing value (`--root ''`, `ls --kind`) had only
/// the `see … --help` hint (audit).
#[test]
fn every_usage_error_has_a_usage_line() {
    let s = Store::uninitialized("none");
    let root = s.root.to_str().unwrap();
    for (args, usage) in [
        (&["--root", "", "ls"][..], "strata ls [OPTIONS]"),
        (&["--root=", "info", "k"], "strata info [OPTIONS] <KEY>"),
        (&["ls", "--root", ""], "strata ls [OPTIONS]"),
        (&["--root", root, "ls", "--kind"], "strata ls [OPTIONS]"),
        (&["--root", root, "ls", "--kind="], "strata ls [OPTIONS]"),
        (
            &["--root", root, "init", "--driver"],
            "strata init [OPTIONS]",
        ),
        (&["--root"], "strata [OPTIONS] <COMMAND>"),
        (&["-o"], "strata [OPTIONS] <COMMAND>"),
    ] {
        let no_root = With {
            no_root: true,
            ..Default::default()
        };
        let run = s
            .strata_with(args, no_root)
            .fails_with(2, "a value is required");
        let want = format!("hint: usage: {usage}");
        assert!(
            run.stderr.lines().any(|l| l == want),
            "no {want:?} in\n{}",
            run.session()
        );
        let mut lines = run.stderr.lines();
        assert!(
            lines.next().unwrap().starts_with("error: "),
            "{}",
            run.session()
        );
        assert!(lines.all(|l| l.starts_with("hint: ")), "{}", run.session());
    }
    assert!(!s.root.exists(), "a usage error created the store");
}

/// A value that differs from one taken only in case (`-o JSON`) is still
/// refused, as the config file refuses it (`invalid`, exit 6), but gets
/// the "did you mean" hint a near miss (`-o xml`) gets: clap compares by
/// case and suggested nothing (audit).
#[test]
fn values_in_another_case_get_did_you_mean() {
    let s = Store::uninitialized("none");
    for (args, near) in [
        (&["info", "base", "-o", "JSON"][..], "json"),
        (&["-o", "Yaml", "ls"], "yaml"),
        (&["ls", "--kind", "ACTIVE"], "active"),
        (&["init", "--driver", "Native"], "native"),
        (&["diff", "k", "--compression", "GZIP"], "gzip"),
        (&["completions", "BASH"], "bash"),
    ] {
        let run = s
            .strata(args)
            .fails_with(6, &format!("hint: did you mean `{near}`?"));
        assert_eq!(run.stderr.lines().count(), 2, "{}", run.session());
    }
    // A near miss keeps clap's suggestion; a value like none gets no hint.
    s.strata(&["info", "base", "-o", "xml"])
        .fails_with(6, "hint: did you mean `yaml`?");
    let run = s
        .strata(&["ls", "--kind", "bogus"])
        .fails_with(6, "'bogus'");
    assert!(!run.stderr.contains("did you mean"), "{}", run.session());
    assert!(!s.root.exists(), "a bad value created the store");
}

fn not_found(driver: &str) {
    let Some(s) = populated(driver) else { return };
    let before = state(&s);
    let target = s.scratch("t");
    let target = target.to_str().unwrap();
    for args in [
        &["info", "nope"][..],
        &["stat", "nope"],
        &["prepare", "k", "nope"],
        &["view", "k", "nope"],
        &["commit", "n", "nope"],
        &["mounts", "nope"],
        &["mount", "nope", target],
        &["rm", "nope"],
        &["rm", "-r", "nope"],
        &["label", "nope", "a=b"],
        &["usage", "nope"],
        &["tree", "nope"],
        &["unmount", target],
        &["unmount", "nope"],
    ] {
        s.fails(args, "not_found");
        // The table form names what is missing.
        let named = if args.contains(&target) && args[0] == "unmount" {
            target
        } else {
            "nope"
        };
        s.strata(args).fails_with(3, named);
    }
    assert_unchanged(&s, &before, "not_found errors");
    assert!(
        !std::path::Path::new(target).exists(),
        "a failed mount created its target"
    );
}

/// Two arguments in ctr's, git's or btrfs's order instead of strata's: the
/// hint gives the line the other way round, in place of a near-miss name
/// about the wrong argument; nothing changes. Where swapping would not fit
/// either, no such hint.
fn arguments_the_wrong_way_round(driver: &str) {
    let Some(s) = populated(driver) else { return };
    s.strata(&["prepare", "b"]).success();
    let before = state(&s);
    let target = s.scratch("t");
    let t = target.to_str().unwrap();
    for (args, code, hint) in [
        (
            &["commit", "solo", "solo-v1"][..],
            3,
            "hint: did you mean `strata commit solo-v1 solo`? the new name comes first".to_string(),
        ),
        (
            &["mounts", t, "child"],
            3,
            format!("hint: did you mean `strata mounts child {t}`? the snapshot comes first"),
        ),
        (
            &["mount", t, "look"],
            3,
            format!("hint: did you mean `strata mount look {t}`? the snapshot comes first"),
        ),
        (
            &["prepare", "base", "work 2"],
            4,
            "hint: did you mean `strata prepare 'work 2' base`? the new key comes first".into(),
        ),
        (
            &["view", "base", "v2"],
            4,
            "hint: did you mean `strata view v2 base`? the new key comes first".into(),
        ),
    ] {
        let run = s.strata(args).fails_with(code, &hint);
        assert_eq!(run.stderr.lines().count(), 2, "{}", run.session());
        let json = s.strata(&[&["-o", "json"], args].concat());
        assert!(
            json.stderr.contains("did you mean `strata"),
            "{}",
            json.session()
        );
    }
    // Not when the other order would not work either (`base` is no active,
    // `child` exists as well as `base`), nor a near miss for a one-letter
    // key (audit: `commit d-work d` said "did you mean `b`?").
    for args in [
        &["commit", "base", "nope"][..],
        &["commit", "d-work", "d"],
        &["prepare", "child", "base"],
        &["mounts", "nope", "base"],
    ] {
        let run = s.strata(args);
        assert!(
            run.code > 0 && !run.stderr.contains("hint:"),
            "{}",
            run.session()
        );
    }
    assert_unchanged(&s, &before, "arguments the wrong way round");
    assert!(!target.exists(), "a failed mount created its target");
}

fn already_exists(driver: &str) {
    let Some(s) = populated(driver) else { return };
    let before = state(&s);
    for args in [
        &["prepare", "child"][..],
        &["prepare", "child", "base"],
        &["prepare", "base"],
        &["prepare", "look", "base"],
        &["view", "look", "base"],
        &["view", "child", "base"],
        &["view", "base", "base"],
        &["commit", "base", "solo"],
        &["commit", "look", "solo"],
        &["commit", "child", "solo"],
    ] {
        s.fails(args, "already_exists");
        s.strata(args).fails_with(4, "");
    }
    assert_unchanged(&s, &before, "already_exists errors");
    // KEY stays active after a commit to a taken name.
    assert_eq!(s.info("solo")["kind"], "active");
}

fn failed_precondition(driver: &str) {
    let Some(s) = populated(driver) else { return };
    let before = state(&s);
    let target = s.scratch("t");
    let target = target.to_str().unwrap();
    for args in [
        &["commit", "n", "look"][..],
        &["commit", "n", "base"],
        &["mounts", "base"],
        &["mount", "base", target],
        &["rm", "base"],
    ] {
        s.fails(args, "failed_precondition");
        s.strata(args).fails_with(5, "");
    }
    assert_unchanged(&s, &before, "failed_precondition errors");
    assert!(!s.names(&[]).contains(&"n".to_string()));

    // rm of a mounted snapshot without -f: still there, still mounted.
    let m = s.mount("child");
    let look = s.mount("look");
    let before = state(&s);
    s.fails(&["rm", "child"], "failed_precondition");
    s.fails(&["rm", "look"], "failed_precondition");
    s.strata(&["rm", "look"]).fails_with(5, "look");
    assert_unchanged(&s, &before, "rm of mounted snapshots");
    assert!(is_mount_point(&m.path) && is_mount_point(&look.path));
    assert_eq!(fs::read_to_string(look.join("f")).unwrap(), "base\n");
    s.unmount(&m);
    s.unmount(&look);
}

fn invalid(driver: &str) {
    let Some(s) = populated(driver) else { return };
    let before = state(&s);
    // key and value together 4097 bytes
    let long_label = format!("k={}", "v".repeat(4096));
    for args in [
        // bad keys
        &["prepare", ""][..],
        &["prepare", "a\nb"],
        &["view", "a\tb", "base"],
        &["commit", "", "solo"],
        &["commit", "x\u{1}", "solo"],
        // bad labels
        &["prepare", "--label", "=v", "k"],
        &["prepare", "--label", "novalue", "k"],
        &["view", "--label", "=", "k", "base"],
        &["commit", "--label", "=v", "n", "solo"],
        &["prepare", "--label", &long_label, "k"],
        &["label", "solo", "=v"],
        &["label", "solo", "novalue"],
        &["label", "solo", &long_label],
        // parent not committed
        &["prepare", "k", "child"],
        &["prepare", "k", "look"],
        &["view", "k", "child"],
        &["view", "k", "look"],
        // bad filters
        &["ls", "--filter", "name=="],
        &["ls", "--filter", "foo==x"],
        &["ls", "--filter", "name~=("],
        &["ls", "--filter", ""],
        &["ls", "--filter", "name==a,,kind==active"],
        &["ls", "--filter", "labels."],
        &["ls", "--filter", "name==a,"],
        &["ls", "--filter", r#"labels."unterminated==x"#],
        &["ls", "--filter", "name==ok", "--filter", "bogus"],
    ] {
        s.fails(args, "invalid");
        s.strata(args).fails_with(6, "");
    }
    assert_unchanged(&s, &before, "invalid errors");
    assert_eq!(s.info("solo")["labels"], serde_json::json!({}));
    // An OCI layout's tag follows the ref.name grammar; nothing is created.
    let dir = s.scratch("layout");
    let dir = dir.to_str().unwrap();
    for tag in ["bad tag", "..", "a//b"] {
        s.fails(&["export", "base", dir, "--tag", tag], "invalid");
    }
    assert!(!Path::new(dir).exists(), "a refused export created {dir}");
    // The hint fits the parent: an active one can be committed, a view not.
    let hints = |args: &[&str]| {
        let run = s.fails(args, "invalid");
        let v: Value = serde_json::from_str(run.stderr.trim()).unwrap();
        v["error"]["hints"].to_string()
    };
    assert!(hints(&["prepare", "k", "child"]).contains("commit it first"));
    let view = hints(&["prepare", "k", "look"]);
    assert!(!view.contains("commit it first"), "{view}");
    assert!(view.contains("the view's parent"), "{view}");
    // So it does for what export (and push) must find committed.
    let export = |key: &str| {
        let run = s.fails(&["export", key, dir], "failed_precondition");
        assert!(!Path::new(dir).exists(), "a refused export created {dir}");
        run.stderr
    };
    let active = export("child");
    assert!(active.contains("is active") && active.contains("commit it first"));
    let view = export("look");
    assert!(view.contains("is a view") && !view.contains("commit it first"));
    assert!(view.contains("the view's parent"), "{view}");

    // The limit is inclusive: key and value together at most 4096 bytes.
    let max_label = format!("k={}", "v".repeat(4095));
    s.strata(&["label", "solo", &max_label]).success();
    assert_eq!(
        s.info("solo")["labels"]["k"].as_str().map(str::len),
        Some(4095)
    );
}

#[test]
fn init_refuses_another_driver() {
    let s = setup!("overlay");
    s.strata(&["init", "--driver", "overlay"]).success();
    s.strata(&["init"]).success();
    let run = s.strata(&["init", "--driver", "native"]);
    assert!(
        run.code > 1,
        "changing the driver must fail cleanly:\n{}",
        run.session()
    );
    // Still an overlay store.
    s.strata(&["prepare", "a"]).success();
    s.strata(&["commit", "c", "a"]).success();
    s.strata(&["prepare", "b", "c"]).success();
    let mounts = s.strata(&["mounts", "--json", "b"]).success().json();
    assert_eq!(mounts[0]["type"], "overlay");
}

/// `init`'s sentence is a note: on stderr, silent with `-q` (it was on
/// stdout, also with `-q`); JSON and YAML are data on stdout.
#[test]
fn init_says_what_it_did_in_a_note() {
    let s = Store::uninitialized("native");
    let run = s.strata(&["init", "--driver", "native"]).success();
    assert_eq!(run.stdout, "", "{}", run.session());
    assert_eq!(
        run.stderr,
        format!(
            "initialized store {} with the native driver\n",
            s.root.display()
        ),
        "{}",
        run.session()
    );
    let run = s.strata(&["init"]).success();
    assert_eq!(run.stdout, "", "{}", run.session());
    assert!(
        run.stderr.contains("uses the native driver"),
        "{}",
        run.session()
    );
    let other = Store::uninitialized("native");
    for store in [&s, &other] {
        let run = store
            .strata(&["init", "-q", "--driver", "native"])
            .success();
        assert_eq!(
            (run.stdout.as_str(), run.stderr.as_str()),
            ("", ""),
            "{}",
            run.session()
        );
    }
    let run = s.strata(&["init", "-q", "--json"]).success();
    assert_eq!(run.json()["driver"], "native", "{}", run.session());
    assert_eq!(run.stderr, "", "{}", run.session());
    let run = s.strata(&["init", "-o", "yaml"]).success();
    assert!(run.stdout.contains("driver: native"), "{}", run.session());
}

/// The config file's `driver` is the driver for new stores, for `init` as
/// for a first write; `--driver` wins, and an existing store keeps its own.
#[test]
fn init_takes_the_configured_driver() {
    let s = Store::uninitialized("native");
    let config = s.config_file("driver: native\n");
    let config = config.to_str().unwrap();
    let run = s.strata(&["--config", config, "init", "--json"]).success();
    assert_eq!(run.json()["driver"], "native", "{}", run.session());
    // Configured for new stores only: this one stays native and says so.
    fs::write(config, "driver: overlay\n").unwrap();
    let run = s.strata(&["--config", config, "init", "--json"]).success();
    assert_eq!(run.json()["driver"], "native", "{}", run.session());
    assert_eq!(run.json()["created"], false, "{}", run.session());
    // --driver wins over the file.
    let other = Store::uninitialized("native");
    let run = other
        .strata(&["--config", config, "init", "--driver", "native", "--json"])
        .success();
    assert_eq!(run.json()["driver"], "native", "{}", run.session());
}

/// A named config file that does not exist is `not_found` (as a missing input file
/// is); an empty `root` in it is `invalid` naming the key. Neither creates the store.
#[test]
fn config_file_errors() {
    let s = Store::uninitialized("none");
    let missing = s.scratch("nope.yaml");
    let run = s.fails(&["--config", missing.to_str().unwrap(), "ls"], "not_found");
    assert!(run.stderr.contains("does not exist"), "{}", run.session());
    let empty_root = s.config_file("root: \"\"\n");
    let run = s.fails(&["--config", empty_root.to_str().unwrap(), "ls"], "invalid");
    assert!(run.stderr.contains("`root` is empty"), "{}", run.session());
    assert!(!s.root.exists(), "a bad config created the store");
    // One that cannot be read is an I/O failure; one not UTF-8, a bad file.
    let dir = s.scratch_dir("config-dir");
    s.strata(&["--config", dir.to_str().unwrap(), "ls"])
        .fails_with(1, "cannot read the config file")
        .fails_with(1, "Is a directory");
    let latin1 = s.scratch("latin1.yaml");
    fs::write(&latin1, b"root: /tmp/caf\xe9\n").unwrap();
    s.strata(&["--config", latin1.to_str().unwrap(), "ls"])
        .fails_with(6, "it is not UTF-8 text");
    assert!(!s.root.exists(), "a bad config created the store");
    // `root: ~/…` is under $HOME (it made `./~/store`); a relative `root`
    // would depend on the current directory, and is refused naming the
    // file and the key. Neither creates anything where strata runs.
    let home = s.scratch_dir("home");
    let cwd = s.scratch_dir("cwd");
    let config = s.scratch("config.yaml");
    let in_cwd = |args: &[&str]| in_dir(&cwd, home.as_os_str(), &config, args);
    fs::write(&config, "root: ~/\n").unwrap();
    let v = in_cwd(&["config", "--json"]).success().json();
    assert_eq!(v["root"]["value"], home.to_str().unwrap(), "{v}");
    fs::write(&config, "root: ~/store\n").unwrap();
    let v = in_cwd(&["config", "--json"]).success().json();
    assert_eq!(
        v["root"]["value"],
        home.join("store").to_str().unwrap(),
        "{v}"
    );
    assert_eq!(v["root"]["source"], "file", "{v}");
    in_cwd(&["init", "--driver", "native"]).success();
    assert!(home.join("store/index.db").exists(), "no store under $HOME");
    for root in ["store", "./store", "~bob/store"] {
        fs::write(&config, format!("root: {root}\n")).unwrap();
        let run = in_cwd(&["ls"]).fails_with(6, "`root` is a relative path");
        assert!(
            run.stderr.contains(config.to_str().unwrap()),
            "{}",
            run.session()
        );
    }
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0, "made in the cwd");
}

/// `strata --config CONFIG ARGS…` without `--root`, run in `cwd` with
/// `HOME=home` in a cleared environment.
fn in_dir(cwd: &Path, home: &std::ffi::OsStr, config: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("HOME", home)
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    Run {
        cmdline: format!(
            "cd {}; HOME={} strata {}",
            cwd.display(),
            home.to_string_lossy(),
            args.join(" ")
        ),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A config file's `root: ~/…` with a relative $HOME cannot be expanded:
/// said as that (`invalid`, as the relative `root` it would make was), not
/// as a relative `root` the file does not have. Nothing is created.
#[test]
fn config_root_tilde_needs_an_absolute_home() {
    let s = Store::uninitialized("none");
    let cwd = s.scratch_dir("cwd");
    let config = s.config_file("root: ~/store\n");
    for home in ["rel", "./rel", "."] {
        let run = |args: &[&str]| in_dir(&cwd, home.as_ref(), &config, args);
        let ls = run(&["ls"]).fails_with(
            6,
            &format!("`~`, which cannot be expanded: $HOME (`{home}`) is not an absolute path"),
        );
        assert!(
            ls.stderr.contains(config.to_str().unwrap()),
            "{}",
            ls.session()
        );
        assert!(!ls.stderr.contains("relative path"), "{}", ls.session());
        let json = run(&["-o", "json", "init"]).fails_json("invalid");
        assert!(!json.stderr.contains("relative path"), "{}", json.session());
    }
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0, "made in the cwd");
}

/// A config file is read up to 1 MiB and an auth file up to 4 MiB: a
/// larger one is `invalid`, one line naming the file and the limit
/// (audit: `--config /dev/zero`, `STRATA_CONFIG=/dev/zero` and
/// `REGISTRY_AUTH_FILE=/dev/zero` grew without bound, 8 GB in 8 s). Run
/// with 1 GiB of address space, so that they fail rather than eat the
/// machine's memory if they read on. A pipe (`--config <(…)`) still works.
#[test]
fn config_and_auth_files_are_read_up_to_a_limit() {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    let limited = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = command(&s.root, args);
        cmd.envs(env.iter().copied());
        limit_memory(&mut cmd, 1 << 30);
        let out = cmd.output().unwrap();
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        Run {
            cmdline: format!("{}strata {}", env.concat(), args.join(" ")),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    // One byte over, and YAML that would parse (a comment).
    let over = s.scratch("over.yaml");
    let mut text = "# ".to_string() + &"x".repeat((1 << 20) - 2) + "\n";
    fs::write(&over, &text).unwrap();
    let over = over.to_str().unwrap();
    let too_large = |run: Run, file: &str, limit: &str| {
        let run = run.fails_with(6, &format!("{file}: it is larger than {limit}"));
        let error_lines = run.stderr.lines().filter(|l| l.starts_with("error:"));
        assert_eq!(error_lines.count(), 1, "{}", run.session());
    };
    for config in ["/dev/zero", over] {
        too_large(limited(&[], &["--config", config, "ls"]), config, "1 MiB");
        too_large(limited(&[(CONFIG_VAR, config)], &["ls"]), config, "1 MiB");
    }
    // At the limit it is read.
    text.pop();
    fs::write(over, &text).unwrap();
    limited(&[], &["--config", over, "ls"]).success();
    let script = format!(
        "{BIN} --root {} --config <(echo 'output: json') config",
        s.root.display()
    );
    let out = run_ok(
        Command::new("bash").args(["-c", &script]),
        "strata --config <(…)",
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["output"]["source"], "file", "{v}");
    // An auth file is read before any connection: none is needed here.
    let auth = s.scratch("auth.json");
    fs::write(
        &auth,
        format!("{{\"auths\": {{}}, \"x\": \"{}\"}}", "x".repeat(4 << 20)),
    )
    .unwrap();
    for file in ["/dev/zero", auth.to_str().unwrap()] {
        let env = [("REGISTRY_AUTH_FILE", file)];
        let pull = ["pull", "--plain-http", "127.0.0.1:9/app:v1"];
        too_large(limited(&env, &pull), file, "4 MiB");
        too_large(limited(&env, &["logout", "127.0.0.1:9"]), file, "4 MiB");
    }
}

/// A config file with more than 64 `[` and `{` is `invalid` before it is
/// parsed: the parser takes time quadratic in how deep they nest (audit:
/// `root: [[[…]]]` 100,000 deep, 200 KB, took over 30 s).
#[test]
fn a_config_file_nested_deep_is_refused_at_once() {
    let s = Store::uninitialized("native");
    let deep = s.config_file(&format!(
        "root: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    ));
    let started = std::time::Instant::now();
    let run = s
        .strata(&["--config", deep.to_str().unwrap(), "ls"])
        .fails_with(
            6,
            "it opens 100000 lists and maps (`[`, `{`), more than the 64 strata parses",
        );
    assert!(
        run.stderr.contains(deep.to_str().unwrap()),
        "{}",
        run.session()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // 64 are parsed (and this `root` is a list, not a path).
    let config = s.config_file(&format!("root: {}{}\n", "[".repeat(64), "]".repeat(64)));
    s.strata(&["--config", config.to_str().unwrap(), "ls"])
        .fails_with(6, "root: invalid type: sequence");
    assert!(!s.root.exists(), "a bad config created the store");
    // Brackets that do not nest, or in comments, are not counted against it
    // (review: every bracket of the file was).
    let many = s.config_file(&format!(
        "# {}\noverlay:\n  mount_options: [xino=off]\ndriver: native\n",
        "[x] ".repeat(100)
    ));
    let flat = format!("{}\n", "# [a] {b}\n".repeat(100));
    let flat = s.config_file(&format!("{flat}driver: native\n"));
    for config in [&many, &flat] {
        s.strata(&["--config", config.to_str().unwrap(), "config", "--json"])
            .success();
    }
    // Closers in quoted strings do not hide the nesting (review: `["]",`
    // 60,000 times nested all the same, and took 16 s).
    let quoted = s.config_file(&format!(
        "driver: {}1{}\n",
        "[\"]\",".repeat(100),
        "]".repeat(100)
    ));
    s.strata(&["--config", quoted.to_str().unwrap(), "config", "--json"])
        .fails_with(6, "it opens 100 lists and maps");
}

/// `config` reports an existing store's driver, the one it recorded (source
/// `store`), over the config file's (for new stores, said in a note) and
/// the default "detect"; it does not create a store to ask.
#[test]
fn config_shows_the_store_s_driver() {
    let s = Store::uninitialized("native");
    let config = s.config_file("driver: overlay\n");
    let config = config.to_str().unwrap();
    let driver = |run: &Run| run.json()["driver"].clone();
    // (with the config file?, its driver as `config` shows it)
    let shows = |with_file: bool, want: serde_json::Value| {
        let mut args = vec!["config", "--json"];
        if with_file {
            args.splice(0..0, ["--config", config]);
        }
        let run = s.strata(&args).success();
        assert_eq!(driver(&run), want, "{}", run.session());
        run
    };
    shows(
        false,
        serde_json::json!({"value": null, "source": "default"}),
    );
    assert!(!s.root.exists(), "config created the store");
    shows(
        true,
        serde_json::json!({"value": "overlay", "source": "file"}),
    );
    assert!(!s.root.exists(), "config created the store");
    s.strata(&["init", "--driver", "native"]).success();
    let native = serde_json::json!({"value": "native", "source": "store"});
    shows(false, native.clone());
    shows(true, native);
    let run = s.strata(&["--config", config, "config"]).success();
    let row = run.stdout.lines().find(|l| l.starts_with("driver "));
    let row: Vec<&str> = row.unwrap().split_whitespace().collect();
    assert_eq!(row, ["driver", "native", "store"], "{}", run.session());
    assert!(
        run.stderr.contains("driver (overlay) is for new stores"),
        "{}",
        run.session()
    );
    // A store whose index cannot be read: `config` still shows the
    // settings, with a warning (review: it failed).
    fs::write(s.root.join("index.db"), "not a database").unwrap();
    let run = shows(
        true,
        serde_json::json!({"value": "overlay", "source": "file"}),
    );
    assert!(
        run.stderr
            .contains("warning: cannot read the driver of the store"),
        "{}",
        run.session()
    );
}

/// `$STRATA_CONFIG` names the config file read without `--config`, in
/// place of the default one, and like it may be missing (no file is read
/// then); `--config` wins over it. `config` names the file and says it
/// came from the variable.
#[test]
fn strata_config_names_the_config_file() {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    s.strata(&["prepare", "a"]).success();
    let json_file = s.config_file("output: json\n");
    let json_file = json_file.to_str().unwrap();
    let with_config = |value: &str, args: &[&str]| {
        let env = [(CONFIG_VAR, value)];
        s.strata_with(
            args,
            With {
                env: &env,
                ..With::default()
            },
        )
    };
    // The file it names is read: `ls` prints JSON, and so does a bad
    // command line (read before clap's error is printed).
    let run = with_config(json_file, &["ls"]).success();
    assert_eq!(run.json()[0]["name"], "a", "{}", run.session());
    with_config(json_file, &["prepare"]).fails_json("usage");
    let v = with_config(json_file, &["config"]).success().json();
    assert_eq!(v["config_file"], json_file, "{v}");
    assert_eq!(
        v["output"],
        serde_json::json!({"value": "json", "source": "file"}),
        "{v}"
    );
    let run = with_config(json_file, &["config", "-o", "table"]).success();
    assert_eq!(
        run.stdout.lines().next(),
        Some(format!("config file: {json_file} ($STRATA_CONFIG)").as_str()),
        "{}",
        run.session()
    );
    // A missing one is no error: no file is read.
    let missing = s.scratch("missing.yaml");
    let missing = missing.to_str().unwrap();
    let run = with_config(missing, &["ls"]).success();
    assert!(run.stdout.starts_with("KEY "), "{}", run.session());
    let v = with_config(missing, &["config", "--json"]).success().json();
    assert_eq!(v["config_file"], serde_json::Value::Null, "{v}");
    let run = with_config(missing, &["config"]).success();
    assert_eq!(
        run.stdout.lines().next(),
        Some(
            format!("config file: none ($STRATA_CONFIG names {missing}, which does not exist)")
                .as_str()
        ),
        "{}",
        run.session()
    );
    // `--config` wins, and a missing one is still `not_found`.
    let yaml_file = s.config_file("output: yaml\n");
    let yaml_file = yaml_file.to_str().unwrap();
    let run = with_config(json_file, &["--config", yaml_file, "ls"]).success();
    assert!(run.stdout.starts_with("- name: a\n"), "{}", run.session());
    let run = with_config(json_file, &["--config", yaml_file, "config"]).success();
    assert!(
        run.stdout
            .starts_with(&format!("config_file: {yaml_file}\n")),
        "{}",
        run.session()
    );
    let run = with_config(json_file, &["--config", missing, "ls"]);
    run.fails_with(exit_code("not_found"), "does not exist");
    // Its errors are the file's: an unknown key is `invalid`, naming it.
    let bad = s.config_file("outptu: json\n");
    let run = with_config(bad.to_str().unwrap(), &["-o", "json", "ls"]).fails_json("invalid");
    assert!(
        run.stderr.contains(bad.to_str().unwrap()),
        "{}",
        run.session()
    );
}

/// Without `$STRATA_CONFIG`, or with it empty, a user's config file is
/// the default one, `${XDG_CONFIG_HOME:-~/.config}/strata/config.yaml`
/// (every other test sets the variable: `no_config`); set, it replaces
/// that file, even when it names none that exists. Run as user 65534,
/// whose default is not the host's /etc/strata/config.yaml.
#[test]
fn a_user_s_default_config_file_and_strata_config() {
    let Some(s) = store_for_nobody("native", 0o755) else {
        return;
    };
    let home = s.scratch_dir("home");
    let in_home = home.join(".config/strata/config.yaml");
    fs::create_dir_all(in_home.parent().unwrap()).unwrap();
    fs::write(&in_home, "driver: overlay\n").unwrap();
    let xdg = s.scratch_dir("xdg");
    let in_xdg = xdg.join("strata/config.yaml");
    fs::create_dir_all(in_xdg.parent().unwrap()).unwrap();
    fs::write(&in_xdg, "driver: native\n").unwrap();
    let missing = s.scratch("missing.yaml");
    let missing = missing.to_str().unwrap();
    // `config --json` as nobody, with each variable set (Some) or unset.
    let config = |env: &[(&str, Option<&str>)]| {
        let args = ["config", "--json"];
        let mut cmd = nobody_command(&s.root, &home, &args);
        for (name, value) in env {
            match value {
                Some(value) => cmd.env(name, value),
                None => cmd.env_remove(name),
            };
        }
        run_as_nobody(&mut cmd, &args).success().json()
    };
    let from_file = |driver: &str| serde_json::json!({"value": driver, "source": "file"});
    for unset in [None, Some("")] {
        let v = config(&[(CONFIG_VAR, unset)]);
        assert_eq!(v["config_file"], in_home.to_str().unwrap(), "{v}");
        assert_eq!(v["driver"], from_file("overlay"), "{v}");
        let v = config(&[(CONFIG_VAR, unset), ("XDG_CONFIG_HOME", xdg.to_str())]);
        assert_eq!(v["config_file"], in_xdg.to_str().unwrap(), "{v}");
        assert_eq!(v["driver"], from_file("native"), "{v}");
    }
    let v = config(&[(CONFIG_VAR, Some(missing))]);
    assert_eq!(v["config_file"], serde_json::Value::Null, "{v}");
    assert_eq!(v["driver"]["source"], "default", "{v}");
    let v = config(&[(CONFIG_VAR, in_xdg.to_str())]);
    assert_eq!(v["config_file"], in_xdg.to_str().unwrap(), "{v}");
    assert_eq!(v["driver"], from_file("native"), "{v}");
}

/// A user's default store and config file are under an absolute home:
/// `$HOME` when absolute, else (unset, empty, relative) the passwd
/// entry's, else none, and a store that needs one is `invalid`, saying to
/// give `--root`. A relative `XDG_DATA_HOME` or `XDG_CONFIG_HOME` is
/// ignored, as the XDG spec says (audit: `HOME=` made the store
/// `.local/share/strata`, `HOME=rel` `rel/.local/share/strata`,
/// `XDG_DATA_HOME=x` `x/strata`, all in the current directory, where `ls`
/// made them). Run as user 65534, and as a user without a passwd entry.
#[test]
fn a_user_s_defaults_need_an_absolute_home() {
    let Some(s) = store_for_nobody("native", 0o777) else {
        return;
    };
    let cwd = s.scratch_dir("cwd");
    fs::set_permissions(&cwd, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let home = s.scratch_dir("home");
    let home = home.to_str().unwrap();
    let passwd = sh_ok("getent passwd 65534", "nobody's passwd entry");
    let passwd_home = passwd.trim().split(':').nth(5).unwrap().to_string();
    assert!(passwd_home.starts_with('/'), "{passwd}");
    // `strata ARGS…` without --root or $STRATA_CONFIG as user `uid`, in
    // `cwd`, with `env` (None: unset).
    let run = |uid: u32, env: &[(&str, Option<&str>)], args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            BIN.into(),
        ])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("NO_COLOR", "1")
        .current_dir(&cwd);
        for (name, value) in env {
            if let Some(value) = value {
                cmd.env(name, value);
            }
        }
        let out = cmd.output().unwrap();
        let env: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={} ", v.unwrap_or("(unset)")))
            .collect();
        Run {
            cmdline: format!(
                "{}setpriv --reuid={uid} … strata {}",
                env.concat(),
                args.join(" ")
            ),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let root_of = |env: &[(&str, Option<&str>)]| {
        let run = run(65534, env, &["config", "--json"]).success();
        let v = run.json();
        assert_eq!(v["root"]["source"], "default", "{}", run.session());
        v["root"]["value"].as_str().unwrap().to_string()
    };
    let from_passwd = format!("{passwd_home}/.local/share/strata");
    for bad in [None, Some(""), Some("rel"), Some("./rel")] {
        assert_eq!(root_of(&[("HOME", bad)]), from_passwd);
        // `ls` does not make a store in the current directory.
        run(65534, &[("HOME", bad)], &["ls"]);
    }
    assert_eq!(
        root_of(&[("HOME", Some(home)), ("XDG_DATA_HOME", Some("xrel"))]),
        format!("{home}/.local/share/strata")
    );
    assert_eq!(
        root_of(&[("HOME", Some(home)), ("XDG_DATA_HOME", Some("/x"))]),
        "/x/strata"
    );
    // A relative XDG_CONFIG_HOME is not looked in: the home's file is read.
    for dir in [
        format!("{home}/.config/strata"),
        cwd.join("crel/strata").to_str().unwrap().into(),
    ] {
        fs::create_dir_all(&dir).unwrap();
        fs::write(format!("{dir}/config.yaml"), "driver: overlay\n").unwrap();
    }
    let v = run(
        65534,
        &[("HOME", Some(home)), ("XDG_CONFIG_HOME", Some("crel"))],
        &["config", "--json"],
    )
    .success()
    .json();
    assert_eq!(
        v["config_file"],
        format!("{home}/.config/strata/config.yaml"),
        "{v}"
    );
    fs::remove_dir_all(cwd.join("crel")).unwrap();
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0, "made in the cwd");
    // A user the passwd database does not know, without a home: refused,
    // unless the store is given.
    let stranger = 54_321;
    if Command::new("getent")
        .args(["passwd", "54321"])
        .output()
        .unwrap()
        .status
        .success()
    {
        panic!("user {stranger} has a passwd entry: pick another for this test");
    }
    for bad in [None, Some(""), Some("rel")] {
        let ls = run(stranger, &[("HOME", bad)], &["ls"])
            .fails_with(6, "no home directory for the default store: $HOME is ")
            .fails_with(6, "hint: give the store with --root DIR or STRATA_ROOT=DIR");
        assert_eq!(ls.stderr.lines().count(), 2, "{}", ls.session());
        let given = s.root.to_str().unwrap();
        let v = run(
            stranger,
            &[("HOME", bad), ("STRATA_ROOT", Some(given))],
            &["config", "--json"],
        )
        .success()
        .json();
        assert_eq!(v["root"]["value"], given, "{v}");
        let table = run(stranger, &[("HOME", bad)], &["--root", given, "config"]).success();
        assert!(
            table
                .stdout
                .starts_with("config file: none (no home directory to look in)\n"),
            "{}",
            table.session()
        );
    }
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0, "made in the cwd");
}

/// A temporary file that cannot be made names the directory, and that it
/// came from `$TMPDIR` (audit: "cannot create a temporary file: No such
/// file or directory"), one line and a hint; `export` makes one for
/// each layer.
#[test]
fn a_bad_tmpdir_is_named() {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    s.strata(&["prepare", "a"]).success();
    s.strata(&["commit", "c", "a"]).success();
    let file = s.config_file("");
    let missing = s.scratch("missing");
    let layout = s.scratch("layout");
    for (tmpdir, why) in [
        (missing.to_str().unwrap(), "No such file or directory"),
        ("rel", "No such file or directory"),
        (file.to_str().unwrap(), "Not a directory"),
    ] {
        let env = [("TMPDIR", tmpdir)];
        let with = With {
            env: &env,
            ..With::default()
        };
        let run = s
            .strata_with(&["export", "c", layout.to_str().unwrap()], with)
            .fails_with(
                1,
                &format!(
                    "error: cannot create a temporary file in `{tmpdir}` (from $TMPDIR): {why}"
                ),
            )
            .fails_with(1, "hint: set TMPDIR to a directory this user can write");
        assert_eq!(run.stderr.lines().count(), 2, "{}", run.session());
        assert!(!layout.exists(), "{}", run.session());
    }
}

#[test]
fn unsupported_mount_without_privilege() {
    // Reachable by running strata as an unprivileged user (via util-linux setpriv).
    let Some(s) = nobodys_store_with_a() else {
        return;
    };
    let tmp = s.tmp().to_path_buf();
    let nobody = |args: &[&str]| as_nobody(&s.root, &tmp, args);
    let target = tmp.join("m");
    let _guard = MountGuard::new(&target);
    nobody(&["-o", "json", "mount", "a", target.to_str().unwrap()]).fails_json("unsupported");
    nobody(&["mount", "a", target.to_str().unwrap()]).fails_with(7, "");
    assert!(!is_mount_point(&target));
    // The directories strata made for a mount that failed go with it.
    assert!(
        !target.exists(),
        "the failed mount left {}",
        target.display()
    );
    let deep = tmp.join("n/deep");
    nobody(&["prepare", "b", "--mount", deep.to_str().unwrap()]).fails_with(7, "");
    assert!(
        !tmp.join("n").exists(),
        "the failed prepare --mount left its target"
    );
    let listed = nobody(&["ls", "--json"]).success().json();
    assert!(!listed.to_string().contains(r#""b""#), "{listed}");

    let s2 = store_for_nobody("overlay", 0o777).expect("checked above");
    as_nobody(
        &s2.root,
        s2.tmp(),
        &["-o", "json", "init", "--driver", "overlay"],
    )
    .fails_json("unsupported");
    // Refused before anything is made: no store without a driver, no
    // directories above it, no scratch directory of the test mount.
    let deep = s2.tmp().join("above/store");
    as_nobody(&deep, s2.tmp(), &["init", "--driver", "overlay"])
        .fails_with(7, "a test overlay mount failed");
    let left: Vec<_> = fs::read_dir(s2.tmp())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !s2.root.exists(),
        "the refused init made {}",
        s2.root.display()
    );
    assert!(
        !left
            .iter()
            .any(|n| n == "above" || n.to_string_lossy().starts_with(".strata")),
        "the refused init left {left:?}"
    );
}

fn failed_create_leaves_nothing(driver: &str) {
    let Some(s) = populated(driver) else { return };
    let before = state(&s);
    for args in [
        &["prepare", "child"][..],
        &["prepare", "k", "nope"],
        &["prepare", "k", "child"],
        &["view", "k", "look"],
        &["view", "look", "base"],
        &["prepare", "--label", "=x", "k", "base"],
        &["prepare", "", "base"],
        &["view", "k\n", "base"],
    ] {
        let run = s.strata(args);
        assert!(run.code > 1, "expected a failure:\n{}", run.session());
        assert_unchanged(&s, &before, &run.cmdline);
    }
}

fn failed_create_with_mount_leaves_nothing(driver: &str) {
    let Some(s) = populated(driver) else { return };
    let before = state(&s);
    // A create whose --mount cannot be performed fails as a whole, leaving nothing.
    let not_a_dir = s.scratch("file");
    fs::write(&not_a_dir, "").unwrap();
    for args in [
        &[
            "prepare",
            "k",
            "base",
            "--mount",
            not_a_dir.to_str().unwrap(),
        ][..],
        &["view", "k", "base", "--mount", not_a_dir.to_str().unwrap()],
        &["prepare", "k", "--mount", "/proc/no/such/dir"],
    ] {
        let run = s.strata(args);
        assert!(run.code != 0, "expected a failure:\n{}", run.session());
        assert_unchanged(&s, &before, &run.cmdline);
    }
}

fn table_errors_are_one_line(driver: &str) {
    let Some(s) = populated(driver) else { return };
    // One clear line naming the snapshot (hints may follow on their own lines, but the
    // first line says it all), nothing on stdout.
    for (args, code, name) in [
        (&["info", "ghost"][..], 3, "ghost"),
        (&["prepare", "child"], 4, "child"),
        (&["commit", "n", "look"], 5, "look"),
        (&["prepare", "k", "child"], 6, "child"),
    ] {
        let run = s.strata(args).fails_with(code, name);
        assert!(run.stdout.is_empty(), "{}", run.session());
        let first = run.stderr.lines().next().unwrap();
        assert!(
            first.contains(name),
            "first line does not name `{name}`:\n{}",
            run.session()
        );
        assert!(
            !run.stderr.contains('\u{1b}'),
            "colours with NO_COLOR:\n{}",
            run.session()
        );
        // JSON errors: exactly one object on stderr, nothing on stdout.
        let mut json_args = vec!["-o", "json"];
        json_args.extend_from_slice(args);
        let run = s.strata(&json_args);
        assert!(run.stdout.is_empty(), "{}", run.session());
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.session());
        let v: Value = serde_json::from_str(run.stderr.trim()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains(name));
        // --json is the same as -o json, also for errors.
        let mut short = vec!["--json"];
        short.extend_from_slice(args);
        assert_eq!(s.strata(&short).stderr, run.stderr);
    }
}

/// An error line quotes what the user, a file or a registry gave, escaped:
/// a newline or an escape code in it neither splits the line nor reaches
/// the terminal.
#[test]
fn error_lines_escape_what_they_quote() {
    let s = native_with_base();
    let path = s.tmp().join("no\nsuch\x1b[2Jlayer.tar");
    let run = s.strata(&["apply", "x", "base", path.to_str().unwrap()]);
    let run = run.fails_with(3, "does not exist");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.session());
    assert!(!run.stderr.contains('\x1b'), "{}", run.session());
    assert!(
        run.stderr.contains("no\\nsuch\\u{1b}[2Jlayer.tar"),
        "{}",
        run.session()
    );
}

/// What is missing is named, in the user's terms (audit): a layer FILE
/// that does not exist; a PARENT that is a file, the trap of `apply NAME
/// FILE` (the second argument is always PARENT); and a directory missing
/// for `diff --output-file`, without the temporary name strata tried in it.
#[test]
fn missing_inputs_are_named_as_the_user_gave_them() {
    let s = native_with_base();
    let missing = s.tmp().join("missing.tar");
    let m = missing.to_str().unwrap();
    s.strata(&["apply", "x", "base", m])
        .fails_with(3, &format!("error: the layer {m} does not exist"));
    let layer = s.tmp().join("layer.tar");
    std::fs::write(&layer, "").unwrap();
    let l = layer.to_str().unwrap();
    s.strata(&["apply", "x", l])
        .fails_with(3, &format!("parent snapshot `{l}` does not exist"))
        .fails_with(3, "is a file, but the second argument is always PARENT")
        .fails_with(3, &format!("strata apply x < {l}"));
    // A parent that is no file gets no such hint.
    let run = s
        .strata(&["apply", "x", "nothing-here"])
        .fails_with(3, "does not exist");
    assert!(!run.stderr.contains("hint:"), "{}", run.session());
    let out = s.tmp().join("no-dir/layer.tar");
    let run = s.strata(&["diff", "base", "--output-file", out.to_str().unwrap()]);
    let run = run.fails_with(3, "no-dir does not exist");
    assert!(!run.stderr.contains(".tmp"), "{}", run.session());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.session());
}

/// Another user's store is said to be out of reach, not "cannot create
/// the store" (audit: as uid 65534 on root's existing store), with a hint
/// to use one's own.
#[test]
fn another_users_store_is_out_of_reach() {
    // Root, to act as another user.
    let Some(s) = store_for_nobody("native", 0o755) else {
        return;
    };
    s.strata(&["init", "--driver", "native"]).success();
    let out_of_reach = |args: &[&str]| {
        // The config named outside the directory made unsearchable below.
        let mut cmd = nobody_command(&s.root, Path::new("/nonexistent"), args);
        let run = run_as_nobody(cmd.env(CONFIG_VAR, "/nonexistent/strata.yaml"), args);
        let stderr = &run.stderr;
        assert_eq!(run.code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: cannot open the store"),
            "{stderr}"
        );
        assert!(stderr.contains("Permission denied"), "{stderr}");
        assert!(
            stderr.contains("hint: the store, or a directory above it, belongs to another user"),
            "{stderr}"
        );
    };
    out_of_reach(&["ls"]);
    // Behind a directory the user cannot search, the store is still there,
    // not missing (review: `check` said "there is no store").
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(s.tmp(), fs::Permissions::from_mode(0o700)).unwrap();
    out_of_reach(&["ls"]);
    out_of_reach(&["check"]);
}

/// Root uses another user's store only when that user is the one who ran
/// `sudo` (`SUDO_UID`), as git does: its owner could swap what is in it for
/// symlinks while root works (audit: root's `prepare` wrote the copied
/// files outside the store and gave root's directories there to the owner).
#[test]
fn root_refuses_another_users_store() {
    let Some(s) = nobodys_store_with_a() else {
        return;
    };
    let with_sudo = |uid: Option<&str>, args: &[&str]| {
        let env: Vec<(&str, &str)> = uid.map(|u| ("SUDO_UID", u)).into_iter().collect();
        s.strata_with(
            args,
            With {
                env: &env,
                ..Default::default()
            },
        )
    };
    for uid in [None, Some("1000"), Some("x")] {
        for args in [&["ls"][..], &["prepare", "b", "a"], &["prune"]] {
            with_sudo(uid, args).fails_with(5, "belongs to another user (uid 65534)");
        }
    }
    assert!(
        !with_sudo(Some("65534"), &["ls"])
            .success()
            .stdout
            .is_empty()
    );
    // Its owner is not refused, nor is root its own store.
    let tmp = s.tmp().to_path_buf();
    as_nobody(&s.root, &tmp, &["ls"]).success();
    let own = Store::uninitialized("native");
    own.strata(&["init", "--driver", "native"]).success();
    own.strata(&["ls"]).success();
    // Nor root's store on a way another user can change (review: under a
    // user's directory, the user renamed the store aside and put its own
    // in place while root's prepare ran): a directory above it that another
    // user owns, or that others may write without the sticky bit. A new
    // store there is not made.
    use std::os::unix::fs::PermissionsExt;
    let theirs = s.tmp().join("theirs");
    let open = s.tmp().join("open");
    fs::create_dir(&theirs).unwrap();
    fs::create_dir(&open).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    // `strata --root STORE ARGS…` as root, with `SUDO_UID` set or not.
    let at = |store: &Path, sudo: Option<&str>, args: &[&str]| {
        let mut all = vec!["--root", store.to_str().unwrap()];
        all.extend_from_slice(args);
        let env: Vec<(&str, &str)> = sudo.map(|u| ("SUDO_UID", u)).into_iter().collect();
        s.strata_with(
            &all,
            With {
                no_root: true,
                env: &env,
                ..Default::default()
            },
        )
    };
    for (dir, why) in [
        (&theirs, "belongs to another user (uid 65534)"),
        (&open, "may be changed by other users (mode 777)"),
    ] {
        let store = dir.join("store");
        at(&store, None, &["init", "--driver", "native"]).fails_with(5, why);
        assert!(!store.exists(), "a store was made under {}", dir.display());
    }
    let store = theirs.join("store");
    at(&store, Some("65534"), &["init", "--driver", "native"]).success();
    at(&store, None, &["ls"]).fails_with(5, "belongs to another user (uid 65534)");
    // Root in a user namespace of its own (`unshare -r` as nobody) is that
    // user, with that user's stores (review: every store was refused, all
    // files it does not map showing as the overflow uid).
    if require(&["unshare"]) {
        let own = s.tmp().join("rootless");
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "unshare",
                "-r",
            ])
            .arg(BIN)
            .arg("--root")
            .arg(&own)
            .args(["init", "--driver", "native"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env(CONFIG_VAR, no_config(&own))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A `snapshots/` that is root's symlink to root's directory is judged by
    // that directory (review: "mode 777", the link's own).
    let linked = Store::uninitialized("native");
    let elsewhere = linked.scratch_dir("snapshots-elsewhere");
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(&linked.root).unwrap();
    std::os::unix::fs::symlink(&elsewhere, linked.root.join("snapshots")).unwrap();
    linked.strata(&["init", "--driver", "native"]).success();
    linked.strata(&["prepare", "a"]).success();
    // `snapshots/` given to another user.
    let mine = Store::uninitialized("native");
    mine.strata(&["init", "--driver", "native"]).success();
    std::os::unix::fs::chown(mine.root.join("snapshots"), Some(65534), None).unwrap();
    mine.strata(&["ls"])
        .fails_with(5, "snapshots belongs to another user (uid 65534)");
}

/// A store the kernel will not let anyone make (sysfs refuses `mkdir` with
/// EPERM even to root) is an I/O failure with the kernel's reason, and not
/// another user's (audit: exit 7, no reason, and that user's hint).
#[test]
fn a_store_no_one_can_make_is_not_another_users() {
    // Root, for whom EACCES cannot be the answer.
    if !require_root_and_overlay() {
        return;
    }
    if !Path::new("/sys/kernel").is_dir() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "no /sys");
        eprintln!("skipped: /sys is not mounted");
        return;
    }
    let out = Command::new(BIN)
        .env_clear()
        .env("NO_COLOR", "1")
        .env(CONFIG_VAR, "/nonexistent/strata.yaml")
        .args(["--root", "/sys/kernel/strata-test", "ls"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: cannot create the store /sys/kernel/strata-test: Operation not permitted (os error 1)\n"
    );
}

/// A store path that is a file, or is under one (itself, or through a
/// symlink to one), is `invalid`, one line naming the path that is not a
/// directory (audit: `STRATA_ROOT=/a/file/x` said "File exists (os error
/// 17)"); nothing is made.
#[test]
fn a_store_path_under_a_file_is_invalid() {
    let s = Store::uninitialized("native");
    let file = s.config_file("");
    let link = s.scratch("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let f = file.to_str().unwrap();
    let l = link.to_str().unwrap();
    for (root, culprit) in [
        (format!("{f}/x"), f),
        (format!("{f}/x/y"), f),
        (format!("{l}/x"), l),
        ("/dev/null/x".to_string(), "/dev/null"),
    ] {
        let env = [("STRATA_ROOT", root.as_str())];
        let with = |env| With {
            env,
            no_root: true,
            ..With::default()
        };
        let run = s.strata_with(&["ls"], with(&env)).fails_with(
            6,
            &format!("error: cannot use the store {root}: {culprit} is not a directory\n"),
        );
        assert_eq!(run.stderr.lines().count(), 2, "{}", run.session());
        assert!(
            run.stderr.contains("hint: give --root"),
            "{}",
            run.session()
        );
        s.strata_with(&["-o", "json", "init"], with(&env))
            .fails_json("invalid");
    }
    s.strata_with(
        &["ls"],
        With {
            env: &[("STRATA_ROOT", f)],
            no_root: true,
            ..With::default()
        },
    )
    .fails_with(
        6,
        &format!("error: cannot use the store {f}: it is not a directory\n"),
    );
    assert_eq!(fs::read(&file).unwrap(), b"", "the file was changed");
}

/// Mounting an active of a store on a read-only file system (here a
/// read-only bind of the store's directory) says so, with a hint, not
/// overlayfs's bare "Invalid argument (os error 22)" (audit); nothing is
/// left mounted or made.
#[test]
fn a_mount_in_a_read_only_store_says_so() {
    let Some(s) = Store::setup("overlay") else {
        return;
    };
    s.strata(&["prepare", "a"]).success();
    s.strata(&["commit", "base", "a"]).success();
    s.strata(&["prepare", "c", "base"]).success();
    let ro = s.scratch_dir("ro");
    let _ro = MountGuard::new(&ro);
    sh_ok(
        &format!("mount --bind -o ro {} {}", s.root.display(), ro.display()),
        "a read-only bind of the store",
    );
    let target = s.scratch("target");
    let _target = MountGuard::new(&target);
    let t = target.to_str().unwrap();
    let run = command(&ro, &["mount", "c", t]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: cannot mount `c` at {t}: the store {} is on a read-only file system\n\
             hint: the store's file system is mounted read-only: remount it read-write \
             (mount -o remount,rw), or use a store on a writable disk\n",
            ro.display()
        )
    );
    assert!(!is_mount_point(&target), "{stderr}");
    assert!(!target.exists(), "the failed mount left its target");
}

/// EPERM from a file, not from mount(2), is an I/O failure (1), not
/// `unsupported` (7), which says to use root or the native driver (audit: an
/// immutable output file gave 7). An unmount without privilege stays 7.
#[test]
fn eperm_is_unsupported_only_for_mounting() {
    // The store is the unprivileged user's, for it to try an unmount.
    let Some(s) = nobodys_store_with_a() else {
        return;
    };
    let tmp = s.tmp().to_path_buf();
    let nobody = |args: &[&str]| as_nobody(&s.root, &tmp, args);
    nobody(&["commit", "base", "a"]).success();
    nobody(&["view", "v", "base"]).success();
    let out = s.scratch("immutable.tar");
    fs::write(&out, "").unwrap();
    let chattr = |flag: &str| {
        let status = Command::new("chattr").arg(flag).arg(&out).status();
        assert!(status.is_ok_and(|s| s.success()), "chattr {flag}");
    };
    // Root acts on nobody's store as `sudo` from nobody's account would.
    let as_sudo = |args: &[&str]| {
        s.strata_with(
            args,
            With {
                env: &[("SUDO_UID", "65534")],
                ..Default::default()
            },
        )
    };
    chattr("+i");
    let run = as_sudo(&["diff", "base", "--output-file", out.to_str().unwrap()]);
    chattr("-i");
    run.fails_with(1, "Operation not permitted");

    let m = MountGuard::new(&s.scratch("mnt"));
    as_sudo(&["mount", "v", m.path.to_str().unwrap()]).success();
    nobody(&["unmount", m.path.to_str().unwrap()])
        .fails_with(7, "cannot unmount")
        .fails_with(7, "hint: unmounting needs root");
    assert!(is_mount_point(&m.path));
}

/// A store made under a umask that masks the owner's bits is still its
/// owner's to use: the store and what is in it are made 0700/0600, the
/// directories above it as `mkdir -p` makes them (audit: `snapshots/` was
/// left mode 0000, and with it the store). Other users' bits stay masked.
#[test]
fn a_umask_of_0777_leaves_a_usable_store() {
    let Some(s) = store_for_nobody("native", 0o777) else {
        return;
    };
    let root = s.tmp().join("above/store");
    let run = |umask: &str, args: &str| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(format!("umask {umask}; exec \"$0\" --root \"$1\" {args}"))
            .arg(BIN)
            .arg(&root)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env(CONFIG_VAR, "/nonexistent/strata.yaml")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "umask {umask}; strata {args}: {stderr}"
        );
    };
    run("0777", "init --driver native");
    run("0777", "prepare a");
    run("0022", "commit b a");
    run("0022", "ls");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("snapshots")), 0o700);
    assert_eq!(mode(&root.join("index.db")), 0o600);
    assert_eq!(mode(&s.tmp().join("above")), 0o700);
}

/// `check` and `prune` of a store that does not exist (a mistyped root) say
/// so, and make nothing (audit: they made an empty store and called it
/// consistent).
#[test]
fn check_and_prune_need_a_store() {
    let s = Store::uninitialized("native");
    let missing = s.tmp().join("typo");
    for args in [&["check"][..], &["prune", "--dry-run"], &["prune"]] {
        let out = Command::new(BIN)
            .env_clear()
            .env("NO_COLOR", "1")
            .env(CONFIG_VAR, "/nonexistent/strata.yaml")
            .arg("--root")
            .arg(&missing)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "error: there is no store at {}\nhint: name the store with --root or STRATA_ROOT\n",
                missing.display()
            )
        );
        assert!(!missing.exists(), "{args:?} made the store");
    }
}

/// `diff` to a reader that stops early fails: its stdout is the layer, and
/// what the reader got is cut off (audit: exit 0, as for `ls | head`, which
/// still ends quietly and successfully).
#[test]
fn a_layer_cut_off_on_stdout_is_a_failure() {
    let s = native_with_base();
    s.strata(&["prepare", "w", "base"]).success();
    // More than the pipe and strata's buffer hold.
    let mut noise = vec![0u8; 8 << 20];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
    fs::write(writable_dir(&s, "w").join("big"), &noise).unwrap();
    s.strata(&["commit", "big", "w"]).success();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("NO_COLOR", "1")
        .env(CONFIG_VAR, "/nonexistent/strata.yaml")
        .arg("--root")
        .arg(&s.root)
        .args(["diff", "big"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: the layer written to standard output was cut off: its reader closed the pipe\n"
    );
}

/// A native store made by user 65534 in a temporary directory open to all,
/// with an active `a`; `None` as for [`store_for_nobody`].
fn nobodys_store_with_a() -> Option<Store> {
    let s = store_for_nobody("native", 0o777)?;
    let tmp = s.tmp().to_path_buf();
    as_nobody(&s.root, &tmp, &["init", "--driver", "native"]).success();
    as_nobody(&s.root, &tmp, &["prepare", "a"]).success();
    Some(s)
}

/// A store path, or its `snapshots/`, that is a symlink to nowhere is named as
/// such, by every command, `check` too (review: "File exists"; "no
/// snapshots/ directory").
#[test]
fn a_store_or_snapshots_that_is_a_dangling_symlink_is_named() {
    let s = Store::uninitialized("native");
    let link = s.scratch("link");
    let nowhere = s.tmp().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &link).unwrap();
    let run = |root: &Path, args: &[&str]| {
        let out = Command::new(BIN)
            .env_clear()
            .env("NO_COLOR", "1")
            .env(CONFIG_VAR, "/nonexistent/strata.yaml")
            .arg("--root")
            .arg(root)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [&["ls"][..], &["check"]] {
        let (code, stderr) = run(&link, args);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(
            stderr,
            format!(
                "error: cannot create the store {0}: {0} is a symbolic link to {1}, which does not exist\n",
                link.display(),
                nowhere.display()
            )
        );
    }
    assert!(!nowhere.exists(), "made where the link points");
    s.strata(&["init", "--driver", "native"]).success();
    let snapshots = s.root.join("snapshots");
    fs::remove_dir(&snapshots).unwrap();
    std::os::unix::fs::symlink(&nowhere, &snapshots).unwrap();
    let (code, stderr) = run(&s.root, &["ls"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is a symbolic link to {}, which does not exist",
            snapshots.display(),
            nowhere.display()
        )),
        "{stderr}"
    );
}

/// A store not made yet, for a test that runs strata as user 65534, its
/// temporary directory opened to `mode`; `None` (the test is skipped, or
/// fails in CI) without root and overlay or without util-linux `setpriv`.
fn store_for_nobody(driver: &str, mode: u32) -> Option<Store> {
    if !require_root_and_overlay() || !require(&["setpriv"]) {
        return None;
    }
    let s = Store::uninitialized(driver);
    // World-writable with the sticky bit, as /tmp is: root may still use a
    // store there (see `root_refuses_another_users_store`).
    let mode = if mode & 0o002 != 0 {
        mode | 0o1000
    } else {
        mode
    };
    fs::set_permissions(s.tmp(), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    Some(s)
}

/// `strata --root ROOT ARGS…` as user and group 65534 (util-linux
/// `setpriv`), in a cleared environment with `HOME` set to `home`.
fn as_nobody(root: &Path, home: &Path, args: &[&str]) -> Run {
    run_as_nobody(&mut nobody_command(root, home, args), args)
}

/// The command [`as_nobody`] runs, to change its environment first.
fn nobody_command(root: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "--root",
    ])
    .arg(root)
    .args(args)
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("NO_COLOR", "1")
    .env("HOME", home)
    .env(CONFIG_VAR, no_config(root));
    cmd
}

/// Runs `cmd`, a [`nobody_command`] for `args`.
fn run_as_nobody(cmd: &mut Command, args: &[&str]) -> Run {
    let out = cmd.output().unwrap();
    Run {
        cmdline: format!("setpriv … strata {}", args.join(" ")),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Takes the immutable and append-only flags off everything under a path
/// when dropped, however the test ends, so its temporary directory can be
/// deleted.
struct Unflag(std::path::PathBuf);

impl Drop for Unflag {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .args(["-R", "-f", "-i", "-a"])
            .arg(&self.0)
            .status();
    }
}

/// Whether `chattr +i` works on the file system of `dir` (as root); if
/// not, prints why the test is skipped, or panics with `CI=true`, whose
/// temporary directory is on ext4, where it does.
fn chattr_works(dir: &Path) -> bool {
    let probe = dir.join("chattr-probe");
    fs::write(&probe, "").unwrap();
    let _unflag = Unflag(probe.clone());
    let out = Command::new("chattr").arg("+i").arg(&probe).output();
    match out {
        Ok(o) if o.status.success() => true,
        other => {
            let why = format!("chattr +i does not work in {}: {other:?}", dir.display());
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {why}"
            );
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// `rm` of a snapshot whose tree holds an immutable file (`chattr +i`), and
/// `rm -r` of a subtree one of whose snapshots has an append-only directory
/// (`chattr +a`): the snapshots are removed from the store, their files
/// deleted but for what the flag holds, which is left for `prune`; the
/// error says which path holds it and what to do (audit: one line without
/// a hint, and `rm -r` left the directories of the rest of its batch).
fn rm_of_immutable_files(driver: &str) {
    let store = Store::uninitialized(driver);
    store.strata(&["init", "--driver", driver]).success();
    let unflag = Unflag(store.root.clone());
    if !chattr_works(store.tmp()) {
        return;
    }
    store.strata(&["prepare", "a"]).success();
    let sub = writable_dir(&store, "a").join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("f"), "x").unwrap();
    sh_ok(
        &format!("chattr +i {}", shell_quote(sub.join("f").to_str().unwrap())),
        "chattr",
    );
    let run = store.fails(&["rm", "a"], "internal");
    let error = run.json_error();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`a` was removed, but deleting its files failed"),
        "{}",
        run.session()
    );
    let hints = error["hints"].to_string();
    assert!(
        hints.contains("sub/f is immutable or append-only"),
        "{}",
        run.session()
    );
    assert!(
        hints.contains("chattr -i -a") && hints.contains("strata prune"),
        "{hints}"
    );
    assert!(store.names(&[]).is_empty());

    store.strata(&["prepare", "b"]).success();
    store.strata(&["commit", "base", "b"]).success();
    for leaf in ["x", "y", "z"] {
        store.strata(&["prepare", leaf, "base"]).success();
    }
    let sub = writable_dir(&store, "y").join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("f"), "x").unwrap();
    sh_ok(
        &format!("chattr +a {}", shell_quote(sub.to_str().unwrap())),
        "chattr",
    );
    // `z`, on base, went with it: no "not found" for it (review: the
    // names removed were lost with the error).
    let run = store.fails(&["rm", "-r", "base", "z"], "internal");
    let error = run.json_error();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`y` was removed"),
        "{}",
        run.session()
    );
    assert!(
        error["hints"]
            .to_string()
            .contains("/sub is immutable or append-only"),
        "{}",
        run.session()
    );
    assert!(store.names(&[]).is_empty(), "{}", run.session());
    let dirs = store.snapshot_dirs();
    assert!(
        dirs.len() == 2 && dirs.iter().all(|d| d.starts_with("rm-")),
        "only the leftovers of a and y: {dirs:?}"
    );
    store.fails(&["prune"], "internal");
    drop(unflag);
    store.strata(&["prune"]).success();
    store.strata(&["check"]).success();
    assert_eq!(store.snapshot_dirs(), Vec::<String>::new());

    // An immutable `snapshots/` refuses the `rm` before any row goes
    // (audit: "removed `c`", then its files could not be moved).
    let _unflag = Unflag(store.root.clone());
    store.strata(&["prepare", "c"]).success();
    let snaps = shell_quote(store.root.join("snapshots").to_str().unwrap());
    sh_ok(&format!("chattr +i {snaps}"), "chattr");
    let run = store.fails(&["rm", "c"], "internal");
    let error = run.json_error();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("cannot remove `c`: its files cannot be moved out of"),
        "{}",
        run.session()
    );
    assert!(
        error["hints"].to_string().contains("chattr -i -a"),
        "{}",
        run.session()
    );
    sh_ok(&format!("chattr -i {snaps}"), "chattr");
    assert_eq!(store.names(&[]), vec!["c".to_string()]);
    store.strata(&["check"]).success();
}

/// A `snapshots/` its user cannot write refuses `rm` before any row goes
/// (audit: the row went, then "deleting its files failed", and `check`
/// found an orphan directory).
#[test]
fn rm_where_snapshots_is_not_writable_removes_nothing() {
    let Some(s) = nobodys_store_with_a() else {
        return;
    };
    let tmp = s.tmp().to_path_buf();
    let nobody = |args: &[&str]| as_nobody(&s.root, &tmp, args);
    let snaps = s.root.join("snapshots");
    let mode = |m: u32| {
        fs::set_permissions(&snaps, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(0o500);
    let run = nobody(&["rm", "a"]);
    mode(0o700);
    run.fails_with(1, "cannot remove `a`: its files cannot be moved out of");
    assert!(nobody(&["ls"]).success().stdout.contains("a "));
    nobody(&["check"]).success();
    nobody(&["rm", "a"]).success();
}

/// A leftover prune cannot delete (an immutable file in it) is reported
/// where it is left: an orphan `snapshots/50` is moved to an `rm-*` name
/// before it is deleted, and stays there (audit: `failed[].path` named
/// `snapshots/50`, which was gone, while the error named the new path;
/// the table said `not deleted  PATH` with two spaces).
#[test]
fn a_failed_prune_names_what_is_left() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    let _unflag = Unflag(store.root.clone());
    if !chattr_works(store.tmp()) {
        return;
    }
    let snaps = store.root.join("snapshots");
    let orphan = |id: &str| {
        let sub = snaps.join(id).join("fs/sub");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("f"), "x").unwrap();
        let f = sub.join("f");
        sh_ok(
            &format!("chattr +i {}", shell_quote(f.to_str().unwrap())),
            "chattr",
        );
    };
    orphan("50");
    let run = store.strata(&["prune", "--json"]).fails_json("internal");
    let failed = run.json()["failed"].clone();
    let left = failed[0]["path"].as_str().unwrap().to_string();
    assert_eq!(failed.as_array().unwrap().len(), 1, "{}", run.session());
    assert!(
        left.starts_with(&format!("{}/rm-", snaps.display())),
        "{}",
        run.session()
    );
    assert!(fs::symlink_metadata(&left).is_ok(), "{left} is not there");
    assert!(!snaps.join("50").exists());
    assert!(
        run.json_error()["message"]
            .as_str()
            .unwrap()
            .contains(&left)
    );

    orphan("51");
    let run = store.strata(&["prune"]);
    assert_eq!(run.code, 1, "{}", run.session());
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("not deleted"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", run.session());
    for line in lines {
        let path = line
            .strip_prefix("not deleted ")
            .and_then(|rest| rest.split(": ").next())
            .unwrap();
        assert!(
            path.starts_with(&format!("{}/rm-", snaps.display())),
            "{}",
            run.session()
        );
        assert!(fs::symlink_metadata(path).is_ok(), "{}", run.session());
    }
    // `check --repair` says what such a leftover needs, not that data is
    // missing (audit: it got the hint about restoring from a backup).
    let run = store.strata(&["check", "--repair"]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(
        run.stderr
            .contains("hint: a leftover that could not be deleted is named")
            && !run.stderr.contains("backup"),
        "{}",
        run.session()
    );
}

/// A native store holding committed `base` (empty).
fn native_with_base() -> Store {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    s.strata(&["prepare", "a"]).success();
    s.strata(&["commit", "base", "a"]).success();
    s
}

/// A store path that is not UTF-8 is `invalid`, from `--root` or
/// `$STRATA_ROOT`, and nothing is made there (audit: the store was made, its
/// mounts named a lossy path that does not exist, and the overlay test mount
/// failed, so it became native).
#[test]
fn a_store_path_that_is_not_utf8_is_invalid() {
    use std::os::unix::ffi::OsStrExt;
    let s = Store::uninitialized("none");
    let odd = s.tmp().join(std::ffi::OsStr::from_bytes(b"st-\xff"));
    for via_env in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("NO_COLOR", "1")
            .env(CONFIG_VAR, no_config(&s.root));
        if via_env {
            cmd.env("STRATA_ROOT", &odd);
        } else {
            cmd.arg("--root").arg(&odd);
        }
        let out = cmd.args(["prepare", "a"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{stderr}");
        assert!(stderr.contains("is not UTF-8"), "{stderr}");
        assert!(!odd.exists(), "the store was made");
    }
    // Nor through a symlink to one (review: `snapshots/` was made there
    // before the path was refused).
    fs::create_dir(&odd).unwrap();
    let link = s.tmp().join("link");
    std::os::unix::fs::symlink(&odd, &link).unwrap();
    let run = s.strata_with(
        &["--root", link.to_str().unwrap(), "prepare", "a"],
        With {
            no_root: true,
            ..Default::default()
        },
    );
    let run = run.fails_with(6, "is not UTF-8");
    assert_eq!(fs::read_dir(&odd).unwrap().count(), 0, "{}", run.session());
}

/// A store path longer than SQLite can open (495 bytes with the journal's
/// name) is `invalid` before anything is made (audit: the directories above
/// it were made, then "unable to open database file"); one of 495 bytes works.
#[test]
fn a_store_path_too_long_for_the_index_is_invalid() {
    let s = Store::uninitialized("native");
    let at = |len: usize| {
        let base = s.tmp().join("long");
        let mut path = base.to_str().unwrap().to_string();
        while path.len() < len {
            let room = (len - path.len() - 1).min(100);
            path = format!("{path}/{}", "d".repeat(room.max(1)));
        }
        assert_eq!(path.len(), len);
        path
    };
    let run = |root: &str, args: &[&str]| {
        let mut all = vec!["--root", root];
        all.extend_from_slice(args);
        s.strata_with(
            &all,
            With {
                no_root: true,
                ..Default::default()
            },
        )
    };
    let long = at(496);
    run(&long, &["init", "--driver", "native"])
        .fails_with(6, "is too long: 496 bytes, at most 495");
    assert!(
        !s.tmp().join("long").exists(),
        "the refused store made its directories"
    );
    let longest = at(495);
    run(&longest, &["init", "--driver", "native"]).success();
    run(&longest, &["prepare", "a"]).success();
    run(&longest, &["commit", "b", "a"]).success();
    let listed = run(&longest, &["ls", "--json"]).success().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

/// An index the machine keeps from being opened or written is said to be that,
/// not corrupt, with what to look at (audit: out of descriptors was "corrupt or
/// not a strata index"; every write on a read-only store was "the store's index
/// failed: Error code 8").
#[test]
fn an_index_that_cannot_be_opened_or_written_says_why() {
    if !require_root_and_overlay() {
        return;
    }
    let tmpfs = Disk::tmpfs("size=16m");
    let disk = &tmpfs.path;
    let root = disk.join("store");
    let run = |args: &[&str], files: Option<u64>| {
        let mut cmd = command(&root, args);
        if let Some(n) = files {
            limit_open_files(&mut cmd, n, None);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["prepare", "a"], None).0, Some(0));
    assert_eq!(run(&["commit", "base", "a"], None).0, Some(0));
    let (code, stderr) = run(&["ls"], Some(4));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the store's index cannot be opened") && !stderr.contains("corrupt"),
        "{stderr}"
    );
    sh_ok(
        &format!("mount -o remount,ro {}", disk.display()),
        "read-only",
    );
    let (code, stderr) = run(&["label", "base", "x=1"], None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("it is read-only"), "{stderr}");
    assert!(
        stderr.contains("hint: the store's file system is mounted read-only"),
        "{stderr}"
    );
    // Reads still work, and so does an export, which only reads the store
    // (audit: it failed remembering the layer's digests).
    assert_eq!(run(&["ls"], None).0, Some(0));
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let (code, stderr) = run(&["export", "base", layout.to_str().unwrap()], None);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(layout.join("index.json").exists());
}

/// Help and version to a stdout that cannot be written fail as every
/// command's output does: one line, exit 1 (audit: exit 0). A reader that
/// goes away is no failure.
#[test]
fn help_to_a_full_stdout_fails() {
    if !Path::new("/dev/full").exists() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "no /dev/full");
        eprintln!("skipped: no /dev/full");
        return;
    }
    for args in [
        &["--help"][..],
        &["--version"],
        &["help", "ls"],
        &["ls", "--help"],
    ] {
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(BIN)
            .env_clear()
            .env("NO_COLOR", "1")
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().next(),
            Some("error: cannot write to standard output: No space left on device (os error 28)"),
            "{args:?}"
        );
    }
}
