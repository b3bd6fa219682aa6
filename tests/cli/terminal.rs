//! Output on a terminal versus a pipe, through a real pseudo-terminal
//! (`script` from util-linux): colour only on a terminal and never with
//! NO_COLOR, tables that fit the terminal's width, progress only on a
//! terminal and not with --quiet, and a closed pipe that ends quietly.

use crate::support::*;
use std::io::Read;
use std::process::{Command, Stdio};

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    let tty = on_tty(&store, 80, &[], "info ghost");
    assert!(tty.contains("\x1b[31;1merror:\x1b[0m"), "{tty:?}");
    let no_color = on_tty(&store, 80, &[("NO_COLOR", "1")], "info ghost");
    assert!(no_color.starts_with("error: "), "{no_color:?}");
    assert!(!no_color.contains('\x1b'), "{no_color:?}");
    // Set counts, whatever the value (the SPEC's rule), empty included.
    let empty = on_tty(&store, 80, &[("NO_COLOR", "")], "info ghost");
    assert!(empty.starts_with("error: "), "{empty:?}");
    let piped = store.strata(&["info", "ghost"]);
    assert!(!piped.stderr.contains('\x1b'), "{}", piped.session());
}

#[test]
fn tables_fit_the_terminal_and_stay_plain_when_piped() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    let long = "a-rather-long-snapshot-key-that-needs-wrapping-on-narrow-terminals";
    store.strata(&["prepare", long]).success();
    store
        .strata(&["commit", "base-with-a-long-name-too", long])
        .success();
    store
        .strata(&["prepare", "child", "base-with-a-long-name-too"])
        .success();
    let tty = on_tty(&store, 60, &[("NO_COLOR", "1")], "ls");
    for line in tty.lines() {
        assert!(
            line.chars().count() <= 60,
            "wider than the terminal: {line:?}\n{tty}"
        );
    }
    assert!(tty.contains("KEY"), "{tty}");
    // A terminal of no known width (a pty given no size) gets whole lines,
    // not columns one character wide.
    let sizeless = on_tty(&store, 0, &[("NO_COLOR", "1")], "ls");
    assert!(
        sizeless
            .lines()
            .any(|l| l.starts_with("base-with-a-long-name-too") && l.contains("committed")),
        "{sizeless}"
    );
    assert!(
        sizeless
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("KEY")),
        "{sizeless}"
    );
    // Piped: one line per snapshot, whatever the width.
    let piped = store.strata(&["ls"]).success();
    assert_eq!(piped.stdout.lines().count(), 3, "{}", piped.stdout);
    assert!(
        piped
            .stdout
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("base-with-a-long-name-too")
    );
}

#[test]
fn progress_only_on_a_terminal_and_not_when_quiet() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "w"]).success();
    let dir = writable_dir(&store, "w");
    for i in 0..3000 {
        std::fs::write(dir.join(format!("f{i}")), "x").unwrap();
    }
    store.strata(&["commit", "base", "w"]).success();
    let env = [("NO_COLOR", "1"), ("STRATA_PROGRESS_DELAY_MS", "0")];
    let tty = on_tty(&store, 80, &env, "prepare c1 base");
    assert!(
        tty.contains("preparing `c1`"),
        "no progress on a terminal: {tty:?}"
    );
    let quiet = on_tty(&store, 80, &env, "--quiet prepare c2 base");
    assert!(
        !quiet.contains("preparing"),
        "progress despite --quiet: {quiet:?}"
    );
    let piped = store.strata_with(
        &["prepare", "c3", "base"],
        With {
            env: &[("STRATA_PROGRESS_DELAY_MS", "0")],
            ..Default::default()
        },
    );
    assert!(!piped.stderr.contains("preparing"), "{}", piped.session());
}

#[test]
fn a_closed_pipe_ends_quietly_with_success() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    for i in 0..300 {
        store
            .strata(&["prepare", &format!("snapshot-{i:04}")])
            .success();
    }
    // `strata ls | head -1`, with the reader gone before strata writes.
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env(CONFIG_VAR, no_config(&store.root))
        .arg("--root")
        .arg(&store.root)
        .args(["ls", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}, stderr {stderr:?}");
    assert_eq!(stderr, "");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BIN} --root {} ls | head -1",
            store.root.display()
        ))
        .env(CONFIG_VAR, no_config(&store.root))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn verbose_shows_the_cause_chain_and_hints_help() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "w"]).success();
    store.strata(&["commit", "base-v2", "w"]).success();
    store.strata(&["prepare", "c", "base-v2"]).success();
    let run = store.strata(&["prepare", "x", "base-v3"]);
    assert_eq!(run.code, 3);
    assert!(
        run.stderr.contains("hint: did you mean `base-v2`?"),
        "{}",
        run.session()
    );
    let run = store.strata(&["rm", "base-v2"]);
    assert!(
        run.stderr.contains("hint: remove it first, or use `rm -r`"),
        "{}",
        run.session()
    );
    assert!(run.stderr.contains("has 1 child"), "{}", run.session());
    // -v adds the cause chain of an internal error: here a mount target
    // that cannot be created (procfs makes no directories).
    let target = "/proc/strata-no-such-dir/sub";
    let quiet = store.strata(&["mount", "c", target]);
    let verbose = store.strata(&["-v", "mount", "c", target]);
    assert_eq!(quiet.code, 1, "{}", quiet.session());
    // Without -v, one line that ends with the root cause (SPEC: "one clear
    // line"; `-v` adds the cause chain).
    let lines: Vec<&str> = quiet.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", quiet.session());
    assert!(lines[0].starts_with("error: "), "{}", quiet.session());
    assert!(lines[0].ends_with("(os error 2)"), "{}", quiet.session());
    assert!(
        verbose.stderr.contains("caused by:"),
        "{}",
        verbose.session()
    );
    // One level of detail: `-vv` and `-vvv` show what `-v` shows.
    for more in ["-vv", "-vvv"] {
        let run = store.strata(&[more, "mount", "c", target]);
        assert_eq!(run.code, 1, "{}", run.session());
        assert_eq!(run.stderr, verbose.stderr, "{}", run.session());
    }
}

/// `-v`'s help says what it shows, and that repeating it shows nothing more
/// (the SPEC has it "repeatable"; there is one level of detail).
#[test]
fn verbose_help_says_what_each_level_shows() {
    let store = Store::uninitialized("native");
    for args in [&["--help"][..], &["ls", "--help"]] {
        let help = store.strata(args).success().stdout;
        let (_, verbose) = help.split_once("--verbose").unwrap();
        let verbose = verbose.split("\n\n").take(2).collect::<Vec<_>>().join(" ");
        let verbose = verbose.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(verbose.contains("`caused by:` line"), "{verbose}");
        assert!(
            verbose.contains("`-vv` and more show what `-v` shows"),
            "{verbose}"
        );
    }
}

#[test]
fn apply_and_diff_show_progress_on_a_terminal() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    let src = store.scratch_dir("layer");
    for i in 0..200 {
        std::fs::write(src.join(format!("f{i}")), vec![i as u8; 100_000]).unwrap();
    }
    let layer = store.scratch("layer.tar");
    tar_dir(&src, &layer, &[]);
    let env = [("NO_COLOR", "1"), ("STRATA_PROGRESS_DELAY_MS", "0")];
    let tty = on_tty(
        &store,
        80,
        &env,
        &format!("apply big < {}", layer.display()),
    );
    assert!(
        tty.contains("applying `big`"),
        "no progress on a terminal: {tty:?}"
    );
    // Bytes are counted in units people read ("12.50 MiB (0s)").
    assert!(tty.contains("B ("), "a byte count: {tty:?}");
    let out = store.scratch("out.tar");
    let tty = on_tty(
        &store,
        80,
        &env,
        &format!("diff big --output-file {}", out.display()),
    );
    assert!(tty.contains("writing the changes of `big`"), "{tty:?}");
    let quiet = on_tty(
        &store,
        80,
        &env,
        &format!("-q apply big2 < {}", layer.display()),
    );
    assert!(
        !quiet.contains("applying"),
        "progress despite --quiet: {quiet:?}"
    );
}

/// `usage` of all snapshots counts them as they are measured on its
/// progress bar (it showed "measuring 0" to the end): held after the first
/// is measured (`STRATA_PAUSE_AT`), the bar shows a count above zero.
#[test]
fn usage_of_all_counts_on_its_progress_bar() {
    let store = Store::uninitialized("native");
    store.strata(&["init", "--driver", "native"]).success();
    store.strata(&["prepare", "w"]).success();
    store.strata(&["commit", "base", "w"]).success();
    for key in ["a", "b", "c"] {
        store.strata(&["prepare", key, "base"]).success();
    }
    let flag = store.scratch("pause");
    let env = [
        ("NO_COLOR", "1"),
        ("STRATA_PROGRESS_DELAY_MS", "0"),
        ("STRATA_PAUSE_AT", "usage:measured"),
        ("STRATA_PAUSE_FILE", flag.to_str().unwrap()),
    ];
    let child = tty_command(&store, 80, &env, "usage")
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    for _ in 0..3000 {
        if flag.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(flag.exists(), "usage never measured a snapshot");
    // A few ticks of the bar (one each 120 ms) while it is held.
    std::thread::sleep(std::time::Duration::from_millis(600));
    std::fs::remove_file(&flag).unwrap();
    let tty = tty_text(&child.wait_with_output().unwrap());
    let counted = tty
        .match_indices("measuring ")
        .any(|(at, m)| tty[at + m.len()..].starts_with(|c: char| ('1'..='9').contains(&c)));
    assert!(counted, "no count above zero: {tty:?}");
    assert!(tty.contains("INODES"), "{tty:?}");
}
