//! Keys are names, never paths: hostile keys are valid and stay inside the store; empty,
//! too long and control-character keys are `invalid`.

use std::fs;

use crate::support::*;

both_drivers!(
    hostile_keys_are_just_names,
    hostile_keys_full_cycle,
    invalid_keys,
    key_length_limit
);

/// Entries of the store root and of its parent directory, to show nothing was created
/// beside them.
fn surroundings(s: &Store) -> (Vec<String>, Vec<String>) {
    let list = |p: &std::path::Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    (list(&s.root), list(s.tmp()))
}

#[track_caller]
fn assert_only_numeric_dirs(s: &Store) {
    for d in s.snapshot_dirs() {
        assert!(
            !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()),
            "ROOT/snapshots holds {d:?}: {:?}",
            s.snapshot_dirs()
        );
    }
}

const HOSTILE: &[&str] = &[
    "../../etc",
    "..",
    ".",
    "a/b",
    "a/b/c",
    "/etc/passwd",
    "-x",
    "--force",
    "with space",
    "  leading and trailing  ",
    "sha256:abc",
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "$(touch pwned)",
    "`touch pwned`",
    "*",
    "'quoted\"",
    "snapshots",
    "index.db",
    "1",
    "ключ/キー/🙂",
    "back\\slash",
];

fn hostile_keys_are_just_names(driver: &str) {
    let s = setup!(driver);
    let (root_before, tmp_before) = surroundings(&s);
    for key in HOSTILE {
        s.strata(&["prepare", "--", key]).success();
        let info = s.info(key);
        assert_eq!(info["name"], *key);
        assert_eq!(info["kind"], "active");
    }
    let mut want: Vec<String> = HOSTILE.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(s.names(&[]), want, "ls lists every key, in byte order");
    assert_only_numeric_dirs(&s);
    assert_eq!(s.snapshot_dirs().len(), HOSTILE.len());
    assert_eq!(
        surroundings(&s),
        (root_before, tmp_before),
        "files appeared beside the store"
    );
    assert!(!s.tmp().join("pwned").exists() && !s.root.join("pwned").exists());

    // `-x` without `--` is a flag, not a key.
    s.strata(&["prepare", "-y"]).fails_with(2, "");
    // Filters find them too.
    assert_eq!(
        s.names(&["--filter", r#"name=="../../etc""#]),
        ["../../etc"]
    );

    for key in HOSTILE {
        s.strata(&["rm", "--", key]).success();
    }
    assert!(s.names(&[]).is_empty());
    assert!(s.snapshot_dirs().is_empty());
}

fn hostile_keys_full_cycle(driver: &str) {
    let s = setup!(driver);
    let (root_before, tmp_before) = surroundings(&s);

    s.strata(&["prepare", "--label", "k=v", "--", "-x"])
        .success();
    let m = s.mount("-x");
    fs::write(m.join("hello"), "from -x\n").unwrap();
    s.unmount(&m);
    s.strata(&["commit", "--", "../../etc", "-x"]).success();
    s.strata(&["prepare", "--", "a/b", "../../etc"]).success();
    let m = s.mount("a/b");
    assert_eq!(fs::read_to_string(m.join("hello")).unwrap(), "from -x\n");
    fs::write(m.join("second"), "from a/b\n").unwrap();
    s.unmount(&m);
    s.strata(&["commit", "--", "sha256:abc", "a/b"]).success();
    s.strata(&["view", "--", "..", "sha256:abc"]).success();
    s.strata(&["view", "--", "with space", "../../etc"])
        .success();
    s.strata(&["label", "--", "..", "x=y"]).success();

    let m = s.mount("..");
    assert_eq!(fs::read_to_string(m.join("hello")).unwrap(), "from -x\n");
    assert_eq!(fs::read_to_string(m.join("second")).unwrap(), "from a/b\n");
    s.unmount(&m);
    // Keys print as given in mounts, tree and info.
    assert_eq!(s.info("..")["parent"], "sha256:abc");
    assert_eq!(s.info("sha256:abc")["parent"], "../../etc");
    let tree = s.strata(&["tree"]).success();
    assert!(
        tree.stdout.contains("sha256:abc") && tree.stdout.contains("with space (view)"),
        "{}",
        tree.session()
    );
    s.strata(&["mounts", "--", "with space"]).success();

    assert_only_numeric_dirs(&s);
    assert_eq!(surroundings(&s).0, root_before);
    // Only the mount targets this test made appear beside the store.
    let extra: Vec<String> = surroundings(&s)
        .1
        .into_iter()
        .filter(|e| !tmp_before.contains(e))
        .collect();
    assert!(extra.iter().all(|e| e.starts_with("mnt-")), "{extra:?}");
    assert!(!std::path::Path::new("/etc/hello").exists());

    s.strata(&["rm", "-r", "--", "../../etc"]).success();
    assert!(s.names(&[]).is_empty());
    assert!(s.snapshot_dirs().is_empty());
}

fn invalid_keys(driver: &str) {
    let s = setup!(driver);
    s.layer("base", None, &[]);
    s.strata(&["prepare", "work"]).success();
    let before = (
        s.strata(&["ls", "--json"]).success().json(),
        s.snapshot_dirs(),
    );
    let target = s.scratch("t");
    let target = target.to_str().unwrap();
    let ten_kb = "k".repeat(10 * 1024);
    let bad: Vec<String> = vec![
        String::new(),
        "a\nb".into(),
        "\n".into(),
        "tab\there".into(),
        "bell\u{7}".into(),
        "\u{1b}[31mred".into(),
        "del\u{7f}".into(),
        "c1\u{85}control".into(),
        "cr\r".into(),
        "k".repeat(1025),
        ten_kb,
    ];
    for key in &bad {
        s.fails(&["prepare", "--", key], "invalid");
        s.strata(&["prepare", "--", key]).fails_with(6, "");
        s.fails(&["prepare", "--", key, "base"], "invalid");
        s.fails(&["view", "--", key, "base"], "invalid");
        s.fails(&["commit", "--", key, "work"], "invalid");
        // Looked up, a key no snapshot could have is invalid, not missing.
        s.fails(&["prepare", "ok", "--", key], "invalid");
        s.fails(&["view", "ok", "--", key], "invalid");
        s.fails(&["commit", "ok", "--", key], "invalid");
        for cmd in ["info", "mounts", "rm", "usage", "tree", "diff", "unmount"] {
            s.fails(&[cmd, "--", key], "invalid");
        }
        s.fails(&["label", "--", key, "a=b"], "invalid");
        s.fails(&["mount", "--", key, target], "invalid");
    }
    let after = (
        s.strata(&["ls", "--json"]).success().json(),
        s.snapshot_dirs(),
    );
    assert_eq!(after, before, "an invalid key left something behind");
    assert_eq!(s.info("work")["kind"], "active");
}

fn key_length_limit(driver: &str) {
    let s = setup!(driver);
    // 1..=1024 bytes of UTF-8: bytes count, not characters.
    let max = "k".repeat(1024);
    let max_multibyte = "é".repeat(512); // 1024 bytes
    let over_multibyte = "é".repeat(513); // 1026 bytes, 513 characters
    s.strata(&["prepare", "--", &max]).success();
    s.strata(&["prepare", "--", &max_multibyte]).success();
    s.strata(&["prepare", "x"]).success();
    s.fails(&["prepare", "--", &over_multibyte], "invalid");
    s.strata(&["commit", "--", &format!("c{}", "k".repeat(1023)), "x"])
        .success();
    let m = s.mount(&max);
    fs::write(m.join("f"), "long").unwrap();
    s.unmount(&m);
    let mut names = s.names(&[]);
    names.sort();
    let mut want = vec![format!("c{}", "k".repeat(1023)), max, max_multibyte];
    want.sort();
    assert_eq!(names, want);
    assert_only_numeric_dirs(&s);
}

/// A label may start with `-`: `--label -x=1` takes it (clap refused it as
/// an unexpected argument, though `--label=-x=1` worked) on prepare, view,
/// commit and apply, and the options after it are still options. A
/// `--label` left without its value takes the next option as one, which is
/// refused with a hint. `label KEY K=V…` takes them after `--`, its labels
/// being positional (there a hyphen value would take every option after it).
#[test]
fn labels_may_start_with_a_hyphen() {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    let labels = |key: &str| s.info(key)["labels"].clone();
    let run = s
        .strata(&["prepare", "a", "--label", "-x=1", "--json"])
        .success();
    run.json();
    assert_eq!(labels("a"), serde_json::json!({"-x": "1"}));
    let run = s
        .strata(&["prepare", "b", "--label", "--y=2", "--label", "z=3", "-q"])
        .success();
    assert!(run.stdout.starts_with("mount "), "{}", run.session());
    assert_eq!(labels("b"), serde_json::json!({"--y": "2", "z": "3"}));
    s.strata(&["commit", "c", "b", "--label", "-c=1", "-q"])
        .success();
    assert_eq!(labels("c"), serde_json::json!({"-c": "1"}));
    s.strata(&["view", "--label", "-v=1", "v", "c", "--json"])
        .success()
        .json();
    assert_eq!(labels("v"), serde_json::json!({"-v": "1"}));
    let layer = s.scratch("layer.tar");
    tar_dir(&s.scratch_dir("empty"), &layer, &[]);
    s.strata(&[
        "apply",
        "n",
        "c",
        layer.to_str().unwrap(),
        "--label",
        "-n=1",
    ])
    .success();
    assert_eq!(labels("n"), serde_json::json!({"-n": "1"}));
    // A missing value: the next option is taken, and refused with a hint.
    s.strata(&["prepare", "d", "--label", "--json"])
        .fails_with(6, "`--json` was taken as the value of --label");
    s.strata(&["prepare", "d", "--label"])
        .fails_with(2, "--label");
    assert_eq!(s.names(&[]), ["a", "c", "n", "v"]);
    // `label`: after `--`; and options after its labels stay options.
    s.strata(&["label", "a", "--", "-w=4"]).success();
    s.strata(&["label", "a", "k=5", "--json"]).success().json();
    assert_eq!(
        labels("a"),
        serde_json::json!({"-w": "4", "-x": "1", "k": "5"})
    );
}

/// `--` ends the options, also right after a `--label` (whose values may
/// start with `-`): that `--label` has no value, reported as one that ends
/// the line is (`usage`, exit 2, one `error:` line), not as the label `--`
/// (exit 6) or, before `-x`, as an unexpected `-x` with clap's tip to write
/// `-- -x`. Nothing is created.
#[test]
fn double_dash_is_not_a_label_value() {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    let missing = "a value is required for '--label <K=V>' but none was supplied";
    let alone = s
        .strata(&["prepare", "d", "--label"])
        .fails_with(2, missing);
    for args in [
        &["prepare", "d", "--label", "--"][..],
        &["prepare", "d", "--label", "--", "-x"],
        &["prepare", "--label", "--", "-x"],
        &["prepare", "d", "--label=a=1", "--label", "--", "-x"],
        &["view", "v", "base", "--label", "--"],
        &["commit", "--label", "--", "n", "k"],
        &["apply", "n", "--label", "--"],
    ] {
        let run = s.strata(args).fails_with(2, missing);
        // The same error line; the hints name the command's help.
        let error = |stderr: &str| stderr.lines().next().map(String::from);
        assert_eq!(
            error(&run.stderr),
            error(&alone.stderr),
            "{}",
            run.session()
        );
        let errors = run.stderr.lines().filter(|l| l.starts_with("error:"));
        assert_eq!(errors.count(), 1, "{}", run.session());
        assert!(!run.stderr.contains("to pass"), "{}", run.session());
        s.fails(args, "usage");
    }
    // A `--label` value `--label` does not end the options; a `--` after
    // it does.
    s.strata(&["prepare", "d", "--label", "--label", "--", "-x"])
        .fails_with(6, "`--label` was taken as the value of --label");
    assert!(s.names(&[]).is_empty(), "{:?}", s.names(&[]));
}

/// The hint that a `--label` took the next option as its value is for a
/// value given as the next argument (`--label --json`); one written with
/// `=` (`--label=--json`) was written as the value, and is refused as any
/// bad label is, without it. The hint is about the label refused.
#[test]
fn a_label_given_with_equals_gets_no_hint() {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    let taken = "was taken as the value of --label";
    s.strata(&["prepare", "d", "--label", "--json"])
        .fails_with(6, "`--json` was taken as the value of --label");
    for (args, label) in [
        (&["prepare", "d", "--label=--json"][..], "\"--json\""),
        (&["view", "--label=-v", "v", "base"], "\"-v\""),
        (&["commit", "n", "k", "--label=--"], "\"--\""),
        // The first bad label is refused: `-x`, written with `=`.
        (
            &["prepare", "d", "--label=-x", "--label", "--json"],
            "\"-x\"",
        ),
        // The same text again, apart: the one refused is still the first.
        (&["prepare", "d", "--label=-x", "--label", "-x"], "\"-x\""),
    ] {
        let run = s.strata(args).fails_with(6, label);
        assert!(
            run.stderr.starts_with("error: invalid label "),
            "{}",
            run.session()
        );
        assert!(!run.stderr.contains(taken), "{}", run.session());
        assert!(!run.stderr.contains("hint:"), "{}", run.session());
        let run = s.fails(args, "invalid");
        assert_eq!(
            run.json_error()["hints"],
            serde_json::json!([]),
            "{}",
            run.session()
        );
    }
    assert!(s.names(&[]).is_empty(), "{:?}", s.names(&[]));
}
